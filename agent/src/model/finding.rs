//! Findings (what a check saw) and fix plans/outcomes (what a fix would do, and what happened).
//! Pure data with the stable ids of docs/checks.md and docs/interface.md: check ids, fix ids, fix
//! states and outcome labels come from closed sets so they can be metric labels.

use crate::model::ruleset::{Backend, Family};
use serde::Serialize;
use std::fmt;

/// A check's stable id (config key, JSON `check`, metric label). Each check defines its own as an
/// associated constant in its file (`CheckId::HOSTPORT_HIJACK` in `detect/hostport_hijack.rs`);
/// the registry in `detect` lists the checks, so nothing else enumerates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckId(&'static str);

impl CheckId {
    /// An id: lowercase words joined by `-`.
    pub const fn new(id: &'static str) -> CheckId {
        CheckId(id)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// The id in PascalCase (`hostport-hijack` -> `HostportHijack`), as Kubernetes names it in
    /// condition types and reasons.
    pub fn pascal_case(self) -> String {
        self.0
            .split('-')
            .filter(|word| !word.is_empty())
            .map(|word| {
                let mut chars = word.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            })
            .collect()
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// A fix's stable id, defined beside the fix in `remediate/fixes/` like [`CheckId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixId(&'static str);

impl FixId {
    pub const fn new(id: &'static str) -> FixId {
        FixId(id)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for FixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for FixId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// A rule addressed for deletion: its chain and handle (nft) or 1-based position (legacy), and
/// the rule as rendered in its table's syntax (iptables-save syntax without `-A CHAIN` for
/// legacy). The legacy writer deletes by this content, never by position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    pub chain: String,
    pub handle: u64,
    pub spec: String,
}

/// Where a ruleset fix acts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TableRef {
    pub backend: Backend,
    pub family: Family,
    pub table: String,
}

/// The concrete change a fix would make, computed from the snapshot by the check. Compared on a
/// fresh snapshot right before acting: if it differs, the state moved and nothing is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum FixAction {
    /// Flush `chain` (removing `rules` rules); delete it too when `delete_chain`.
    FlushChain {
        table: TableRef,
        chain: String,
        rules: usize,
        delete_chain: bool,
        /// Hash of the chain's rendered rules: the content the decision was made on.
        content_hash: u64,
    },
    /// Narrow these jumps' destination-port lists, delete these rules, then flush and delete
    /// these chains, as one change.
    RemoveRules {
        table: TableRef,
        rules: Vec<RuleRef>,
        delete_chains: Vec<String>,
        content_hash: u64,
        /// Rules whose `multiport --dports` list loses the hijacked ports (applied first).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        narrow: Vec<NarrowPorts>,
    },
    /// Set IFF_PROMISC on an interface.
    SetPromisc { interface: String, ifindex: u32 },
    /// Clear IFF_PROMISC again: the revert of a `SetPromisc` that did not help.
    ClearPromisc { interface: String },
    /// Mark this node unschedulable through the Kubernetes API, annotated
    /// `netmend.io/cordoned-by: <by>` (the check it was done for). Carried out by the cluster,
    /// not the kernel.
    CordonNode { by: String },
    /// Lift the cordon netmend made for `by` (never one it did not make): the revert of a
    /// `CordonNode` once its fault has been gone long enough.
    UncordonNode { by: String },
    /// Put a Service (the API server's, `default/kubernetes`) back in the wanted type and
    /// annotations through the Kubernetes API, under the resourceVersion read. Carried out by the
    /// cluster, only by the agent that holds the keeper's Lease.
    SetServiceShape {
        namespace: String,
        name: String,
        wanted: crate::model::api_service::WantedShape,
    },
}

impl FixAction {
    /// Whether the action acts on the Kubernetes API (through the cluster) rather than the
    /// kernel (through the `Actuator`).
    pub fn acts_on_cluster(&self) -> bool {
        matches!(
            self,
            FixAction::CordonNode { .. }
                | FixAction::UncordonNode { .. }
                | FixAction::SetServiceShape { .. }
        )
    }

    /// Whether `other` makes the same change as `self`. Equal actions do; in a legacy table a
    /// rule's position is not part of the change (another writer inserting above it moves it, the
    /// legacy writer finds it by content), so legacy rule refs compare by chain and spec only.
    pub fn same_change(&self, other: &FixAction) -> bool {
        match (self, other) {
            (
                FixAction::RemoveRules {
                    table,
                    rules,
                    delete_chains,
                    content_hash,
                    narrow,
                },
                FixAction::RemoveRules {
                    table: table2,
                    rules: rules2,
                    delete_chains: delete_chains2,
                    content_hash: content_hash2,
                    narrow: narrow2,
                },
            ) if table.backend == Backend::Legacy => {
                let same_rule = |a: &RuleRef, b: &RuleRef| a.chain == b.chain && a.spec == b.spec;
                table == table2
                    && delete_chains == delete_chains2
                    && content_hash == content_hash2
                    && rules.len() == rules2.len()
                    && rules.iter().zip(rules2).all(|(a, b)| same_rule(a, b))
                    && narrow.len() == narrow2.len()
                    && narrow.iter().zip(narrow2).all(|(a, b)| {
                        same_rule(&a.rule, &b.rule)
                            && a.keep == b.keep
                            && a.rule_spec == b.rule_spec
                    })
            }
            _ => self == other,
        }
    }
}

/// A rule whose destination-port match is rewritten to keep only `keep` (a CNI portmap jump that
/// loses a hijacked host port and keeps the pod's other ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NarrowPorts {
    pub rule: RuleRef,
    /// The port list the decision was made on (the writer refuses a rule that differs).
    pub ports: Vec<crate::model::ruleset::PortRange>,
    pub keep: Vec<crate::model::ruleset::PortRange>,
    /// The rewritten rule in iptables-save syntax without `-A CHAIN` (the legacy writer's input).
    pub rule_spec: String,
}

/// What a fix would do for one finding, or why it cannot act on it at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixProposal {
    pub fix: FixId,
    /// None when the check knows this finding cannot be mended safely (then `detail` says why).
    pub action: Option<FixAction>,
    /// "would flush 5 rules and delete the chain", or why it is blocked.
    pub detail: String,
}

/// One detected problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub check: CheckId,
    /// `<family> <table> <chain>` for ruleset findings; the interface (with `@<ip>`) for links.
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    /// Check-specific evidence, a JSON object.
    pub evidence: serde_json::Value,
    #[serde(skip)]
    pub proposal: Option<FixProposal>,
    /// Distinguishes findings of the same check and subject in different backends.
    #[serde(skip)]
    pub discriminator: Option<String>,
}

impl Finding {
    /// The identity used to track a finding over time: check, subject and discriminator.
    pub fn key(&self) -> String {
        match &self.discriminator {
            Some(d) => format!("{}|{}|{}", self.check, self.subject, d),
            None => format!("{}|{}", self.check, self.subject),
        }
    }
}

/// The state of a fix for a finding, as shown in JSON (`fix.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FixState {
    Disabled,
    DryRun,
    Pending,
    Applied,
    Verified,
    Ineffective,
    Reverted,
    Failed,
    Cooldown,
    CircuitOpen,
    Blocked,
    /// A write whose commit could not be known and could not be settled by a re-read.
    Unknown,
}

impl FixState {
    pub fn as_str(self) -> &'static str {
        match self {
            FixState::Disabled => "disabled",
            FixState::DryRun => "dry-run",
            FixState::Pending => "pending",
            FixState::Applied => "applied",
            FixState::Verified => "verified",
            FixState::Ineffective => "ineffective",
            FixState::Reverted => "reverted",
            FixState::Failed => "failed",
            FixState::Cooldown => "cooldown",
            FixState::CircuitOpen => "circuit-open",
            FixState::Blocked => "blocked",
            FixState::Unknown => "unknown",
        }
    }
}

/// Outcome labels of `netmend_fix_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Verified,
    Ineffective,
    Reverted,
    Failed,
    Blocked,
    SkippedDisabled,
    SkippedDryRun,
    SkippedCooldown,
    SkippedCircuitOpen,
    SkippedBudget,
    SkippedUnconfirmed,
    SkippedPreconditionMoved,
    /// In `mode: enforce` with the Kubernetes API in use: no cluster-wide fix slot was free (all
    /// taken, or the API did not answer), so the fix was not applied.
    SkippedNoSlot,
    /// The write was sent but whether it committed is not known (nft ack lost, timed out or
    /// malformed; legacy restore killed or timed out): counted for the breaker as an attempt, then
    /// settled by a re-read.
    Unknown,
}

impl Outcome {
    pub const ALL: [Outcome; 15] = [
        Outcome::Applied,
        Outcome::Verified,
        Outcome::Ineffective,
        Outcome::Reverted,
        Outcome::Failed,
        Outcome::Blocked,
        Outcome::SkippedDisabled,
        Outcome::SkippedDryRun,
        Outcome::SkippedCooldown,
        Outcome::SkippedCircuitOpen,
        Outcome::SkippedBudget,
        Outcome::SkippedUnconfirmed,
        Outcome::SkippedPreconditionMoved,
        Outcome::SkippedNoSlot,
        Outcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Verified => "verified",
            Outcome::Ineffective => "ineffective",
            Outcome::Reverted => "reverted",
            Outcome::Failed => "failed",
            Outcome::Blocked => "blocked",
            Outcome::SkippedDisabled => "skipped_disabled",
            Outcome::SkippedDryRun => "skipped_dry_run",
            Outcome::SkippedCooldown => "skipped_cooldown",
            Outcome::SkippedCircuitOpen => "skipped_circuit_open",
            Outcome::SkippedBudget => "skipped_budget",
            Outcome::SkippedUnconfirmed => "skipped_unconfirmed",
            Outcome::SkippedPreconditionMoved => "skipped_precondition_moved",
            Outcome::SkippedNoSlot => "skipped_no_slot",
            Outcome::Unknown => "unknown",
        }
    }

    /// The `fix.state` a finding shows after this outcome.
    pub fn state(self) -> FixState {
        match self {
            Outcome::Applied => FixState::Applied,
            Outcome::Verified => FixState::Verified,
            Outcome::Ineffective => FixState::Ineffective,
            Outcome::Reverted => FixState::Reverted,
            Outcome::Failed => FixState::Failed,
            Outcome::Blocked | Outcome::SkippedPreconditionMoved => FixState::Blocked,
            Outcome::SkippedDisabled => FixState::Disabled,
            Outcome::SkippedDryRun => FixState::DryRun,
            // Held back by a budget, the node's hourly one or the cluster's fix slots: it runs
            // once the budget allows.
            Outcome::SkippedCooldown | Outcome::SkippedBudget | Outcome::SkippedNoSlot => {
                FixState::Cooldown
            }
            Outcome::SkippedCircuitOpen => FixState::CircuitOpen,
            Outcome::SkippedUnconfirmed => FixState::Pending,
            Outcome::Unknown => FixState::Unknown,
        }
    }
}

/// The fix part of a reported finding (`fix` in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixReport {
    pub name: FixId,
    pub state: FixState,
    pub detail: String,
}
