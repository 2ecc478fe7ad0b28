//! Findings (what a check saw) and fix plans/outcomes (what a fix would do, and what happened).
//! Pure data with the stable ids of CHECKS.md and INTERFACE.md: check ids, fix ids, fix states and
//! outcome labels come from closed sets so they can be metric labels.

use crate::model::ruleset::{Backend, Family};
use serde::Serialize;
use std::fmt;

/// Every check netmend has, listed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum CheckId {
    #[serde(rename = "cilium-stale-backup-chain")]
    CiliumStaleBackupChain,
    #[serde(rename = "hostport-hijack")]
    HostportHijack,
    #[serde(rename = "iptables-backend-split")]
    IptablesBackendSplit,
    #[serde(rename = "arp-unanswered")]
    ArpUnanswered,
    #[serde(rename = "promisc-lost")]
    PromiscLost,
}

impl CheckId {
    pub const ALL: [CheckId; 5] = [
        CheckId::CiliumStaleBackupChain,
        CheckId::HostportHijack,
        CheckId::IptablesBackendSplit,
        CheckId::ArpUnanswered,
        CheckId::PromiscLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::CiliumStaleBackupChain => "cilium-stale-backup-chain",
            CheckId::HostportHijack => "hostport-hijack",
            CheckId::IptablesBackendSplit => "iptables-backend-split",
            CheckId::ArpUnanswered => "arp-unanswered",
            CheckId::PromiscLost => "promisc-lost",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            CheckId::CiliumStaleBackupChain => {
                "Cilium OLD_CILIUM_* backup chain left behind; Cilium's reconcile fails and pods lose egress"
            }
            CheckId::HostportHijack => {
                "DNAT/REDIRECT reachable from a nat hook captures a protected node port (API server, kubelet, ssh, ...)"
            }
            CheckId::IptablesBackendSplit => {
                "rules of one owner (kube-proxy, Cilium, flannel, CNI, Calico) split across iptables-legacy and iptables-nft"
            }
            CheckId::ArpUnanswered => {
                "ARP requests for an announced VIP arrive on its interface and no reply leaves"
            }
            CheckId::PromiscLost => {
                "an interface that must stay promiscuous lost IFF_PROMISC (link reset, driver reload, reboot)"
            }
        }
    }

    /// The fix a finding of this check may trigger.
    pub fn fix(self) -> Option<FixId> {
        match self {
            CheckId::CiliumStaleBackupChain => Some(FixId::FlushStaleChain),
            CheckId::HostportHijack => Some(FixId::RemoveHijackRule),
            CheckId::IptablesBackendSplit => None,
            CheckId::ArpUnanswered | CheckId::PromiscLost => Some(FixId::SetPromisc),
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every fix netmend has, listed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FixId {
    #[serde(rename = "flush-stale-chain")]
    FlushStaleChain,
    #[serde(rename = "remove-hijack-rule")]
    RemoveHijackRule,
    #[serde(rename = "set-promisc")]
    SetPromisc,
}

impl FixId {
    pub const ALL: [FixId; 3] = [
        FixId::FlushStaleChain,
        FixId::RemoveHijackRule,
        FixId::SetPromisc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FixId::FlushStaleChain => "flush-stale-chain",
            FixId::RemoveHijackRule => "remove-hijack-rule",
            FixId::SetPromisc => "set-promisc",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            FixId::FlushStaleChain => {
                "flush the stale chain (and delete it when nothing references it), in one transaction"
            }
            FixId::RemoveHijackRule => {
                "delete a hijacking rule of CNI portmap (or of an owner listed in fixes.remove-hijack-rule.owners): only the hijacked ports' rules, narrowing the jump to the pod's other host ports, in one transaction"
            }
            FixId::SetPromisc => {
                "set IFF_PROMISC on the interface (physical devices only unless allowed), verify replies, revert if useless"
            }
        }
    }
}

impl fmt::Display for FixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// A rule addressed for deletion: its chain and handle (nft) or 1-based position (legacy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    pub chain: String,
    pub handle: u64,
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
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
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
            Outcome::SkippedCooldown | Outcome::SkippedBudget => FixState::Cooldown,
            Outcome::SkippedCircuitOpen => FixState::CircuitOpen,
            Outcome::SkippedUnconfirmed => FixState::Pending,
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
