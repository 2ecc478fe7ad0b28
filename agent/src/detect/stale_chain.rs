//! Check `cilium-stale-backup-chain`: an `OLD_CILIUM_*` backup chain that Cilium failed to remove
//! (its `-D` replay could not match a rule back), after which every Cilium reconcile fails and
//! pods lose egress. Proposes `flush-stale-chain`: flush it, and delete it when nothing
//! references it (a referenced chain cannot be deleted: EBUSY).
//!
//! The fix acts only while the backup is a copy: its live counterpart (the name without `OLD_`)
//! exists in the same table AND is hooked, i.e. reachable from the built-in chain of its hook
//! (`CILIUM_POST_nat` from `POSTROUTING`, ...). If Cilium died between renaming the live chain to
//! `OLD_*` and re-creating it, the backup is the only masquerade left: flushing it would cut pod
//! egress, so the proposal carries no action and says why (fix state `blocked`). The re-check on a
//! fresh read right before acting evaluates this again, so a live chain that vanished or was
//! unhooked in between blocks the flush.
//!
//! This check only recognises the chains; "stale" (still there after `staleAfter`, or at both ends
//! of the one-shot window) is decided by the tracker that keeps `since`.

use crate::config::{duration_or, Config, ConfigError, HumanDuration, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity, TableRef};
use crate::model::graph::TableGraph;
use crate::model::render::{action_fingerprint, render_rule};
use crate::model::ruleset::{Backend, HookPoint, Table};
use crate::model::snapshot::NodeSnapshot;
use serde_json::json;
use std::time::Duration;

/// Cilium's chain names (docs/checks.md) whose `OLD_` backups are recognised.
pub const CILIUM_CHAINS: [&str; 12] = [
    "CILIUM_POST_nat",
    "CILIUM_PRE_nat",
    "CILIUM_OUTPUT_nat",
    "CILIUM_INPUT",
    "CILIUM_OUTPUT",
    "CILIUM_FORWARD",
    "CILIUM_POST_mangle",
    "CILIUM_PRE_mangle",
    "CILIUM_PRE_raw",
    "CILIUM_OUTPUT_raw",
    "CILIUM_POST",
    "CILIUM_TRANSIENT_FORWARD",
];

/// The hook whose built-in chain feeds Cilium's chain `live` (Cilium's feeder rules).
pub fn live_chain_hook(live: &str) -> Option<HookPoint> {
    Some(match live {
        "CILIUM_POST_nat" | "CILIUM_POST_mangle" | "CILIUM_POST" => HookPoint::Postrouting,
        "CILIUM_PRE_nat" | "CILIUM_PRE_mangle" | "CILIUM_PRE_raw" => HookPoint::Prerouting,
        "CILIUM_OUTPUT_nat" | "CILIUM_OUTPUT" | "CILIUM_OUTPUT_raw" => HookPoint::Output,
        "CILIUM_INPUT" => HookPoint::Input,
        "CILIUM_FORWARD" | "CILIUM_TRANSIENT_FORWARD" => HookPoint::Forward,
        _ => return None,
    })
}

/// The state of a backup chain's live counterpart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveChain {
    Missing,
    /// Present, but no rule reachable from the built-in chain of its hook continues into it.
    Unhooked,
    /// Present and reachable from these base chains.
    Hooked(Vec<String>),
}

/// Whether Cilium's live chain `live` exists in the table of `graph` and is reachable from a
/// base chain attached to its hook.
pub fn live_chain_state(graph: &TableGraph<'_>, live: &str) -> LiveChain {
    let Some(target) = graph.chain_index(live) else {
        return LiveChain::Missing;
    };
    let Some(hook) = live_chain_hook(live) else {
        return LiveChain::Unhooked;
    };
    let mut from = Vec::new();
    for (start, chain) in graph.table.chains.iter().enumerate() {
        if chain.base.as_ref().is_none_or(|b| b.hook != hook) {
            continue;
        }
        let mut seen = vec![false; graph.table.chains.len()];
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            for rule in &graph.chain(i).rules {
                stack.extend(graph.edges(rule).map(|e| e.target));
            }
        }
        if seen[target] {
            from.push(chain.name.clone());
        }
    }
    if from.is_empty() {
        LiveChain::Unhooked
    } else {
        LiveChain::Hooked(from)
    }
}

/// Whether `name` is the backup of one of Cilium's chains.
pub fn is_cilium_backup_chain(name: &str) -> bool {
    name.strip_prefix("OLD_")
        .is_some_and(|rest| CILIUM_CHAINS.contains(&rest))
}

pub fn detect(snapshot: &NodeSnapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(ruleset) = snapshot.ruleset(backend) else {
            continue;
        };
        for table in &ruleset.tables {
            if !table.chains.iter().any(|c| is_cilium_backup_chain(&c.name)) {
                continue;
            }
            let graph = TableGraph::new(table);
            for (index, chain) in table.chains.iter().enumerate() {
                // An empty backup chain that is still jumped to is harmless (the jump returns at
                // once) and nothing is left for the fix to do: only report chains with rules, or
                // empty ones that can be deleted.
                let mendable = !chain.rules.is_empty() || graph.referrers(index).is_empty();
                if is_cilium_backup_chain(&chain.name) && mendable {
                    let other = match backend {
                        Backend::Nft => Backend::Legacy,
                        Backend::Legacy => Backend::Nft,
                    };
                    let live = chain.name.trim_start_matches("OLD_");
                    // Where the live chain is when it is not here: Cilium switched backends.
                    let live_elsewhere = snapshot.ruleset(other).is_some_and(|r| {
                        r.tables.iter().any(|t| {
                            t.id.family == table.id.family
                                && t.id.name == table.id.name
                                && t.chain(live).is_some()
                        })
                    });
                    findings.push(finding_for(
                        table,
                        &graph,
                        index,
                        live_elsewhere.then_some(other),
                    ));
                }
            }
        }
    }
    findings
}

fn finding_for(
    table: &Table,
    graph: &TableGraph<'_>,
    index: usize,
    live_in_other_backend: Option<Backend>,
) -> Finding {
    let chain = graph.chain(index);
    let rendered: Vec<String> = chain
        .rules
        .iter()
        .map(|r| render_rule(table, &chain.name, r))
        .collect();
    let references: Vec<String> = graph
        .referrers(index)
        .iter()
        .map(|&(ci, ri)| {
            let from = graph.chain(ci);
            render_rule(table, &from.name, &from.rules[ri])
        })
        .collect();
    let delete_chain = references.is_empty() && chain.base.is_none();
    let subject = format!("{} {} {}", table.id.family, table.id.name, chain.name);
    let live = chain.name.trim_start_matches("OLD_");
    let live_state = live_chain_state(graph, live);
    let hook_name = live_chain_hook(live).map_or("its built-in chain", |h| h.iptables_chain());
    let message = format!(
        "Cilium backup chain {} ({} rules, {}) was left behind in {} {} ({}); Cilium's iptables reconcile fails until it is gone (manual fix: iptables -t {} -F {})",
        chain.name,
        chain.rules.len(),
        if references.is_empty() {
            "unreferenced".to_string()
        } else {
            format!("{} references", references.len())
        },
        table.id.family,
        table.id.name,
        table.id.backend.as_str(),
        table.id.name,
        chain.name,
    );
    let detail = match (chain.rules.len(), delete_chain) {
        (0, true) => "would delete the empty chain".to_string(),
        (n, true) => format!("would flush {n} rules and delete the chain"),
        (n, false) => format!(
            "would flush {n} rules; the chain stays because {} rule(s) still reference it",
            references.len()
        ),
    };
    let blocked = match &live_state {
        LiveChain::Hooked(_) => None,
        LiveChain::Missing => Some(format!(
            "blocked: the backup is the only copy: the live chain {live} is missing{}; flushing {} could cut pod egress",
            match live_in_other_backend {
                Some(other) => format!(
                    " here (it exists in the {} backend: did Cilium change iptables mode?)",
                    other.as_str()
                ),
                None => String::new(),
            },
            chain.name
        )),
        LiveChain::Unhooked => Some(format!(
            "blocked: the backup is the only copy: the live chain {live} is unhooked (nothing in {hook_name} reaches it); flushing {} could cut pod egress",
            chain.name
        )),
    };
    Finding {
        check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
        subject,
        severity: Severity::Warning,
        message,
        evidence: json!({
            "backend": table.id.backend,
            "family": table.id.family,
            "table": table.id.name,
            "chain": chain.name,
            "rules": chain.rules.len(),
            "references": references.len(),
            "referencedBy": references,
            "liveChain": live,
            "liveChainPresent": live_state != LiveChain::Missing,
            "liveChainHooked": matches!(live_state, LiveChain::Hooked(_)),
            "ruleset": rendered,
        }),
        proposal: Some(match blocked {
            Some(reason) => FixProposal {
                fix: FixId::FLUSH_STALE_CHAIN,
                action: None,
                detail: reason,
            },
            None => FixProposal {
                fix: FixId::FLUSH_STALE_CHAIN,
                action: Some(flush_action(table, chain, delete_chain)),
                detail,
            },
        }),
        discriminator: Some(table.id.backend.as_str().to_string()),
    }
}

/// The flush of `chain`, with the fingerprint of what it touches (the writer re-computes it on a
/// fresh read, under the xtables lock for legacy tables).
fn flush_action(
    table: &Table,
    chain: &crate::model::ruleset::Chain,
    delete_chain: bool,
) -> FixAction {
    let mut action = FixAction::FlushChain {
        table: TableRef {
            backend: table.id.backend,
            family: table.id.family,
            table: table.id.name.clone(),
        },
        chain: chain.name.clone(),
        rules: chain.rules.len(),
        delete_chain,
        content_hash: 0,
    };
    let hash = action_fingerprint(table, &action);
    if let FixAction::FlushChain { content_hash, .. } = &mut action {
        *content_hash = hash;
    }
    action
}

/// The check, for the registry.
pub struct CiliumStaleBackupChain;

impl CheckId {
    pub const CILIUM_STALE_BACKUP_CHAIN: CheckId = CheckId::new("cilium-stale-backup-chain");
}

/// `checks.cilium-stale-backup-chain` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleChainSettings {
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub stale_after: Duration,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStaleChain {
    stale_after: Option<HumanDuration>,
}

impl Check for CiliumStaleBackupChain {
    fn id(&self) -> CheckId {
        CheckId::CILIUM_STALE_BACKUP_CHAIN
    }

    fn description(&self) -> &'static str {
        "Cilium OLD_CILIUM_* backup chain left behind; Cilium's reconcile fails and pods lose egress"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("StaleChainPresent", "NoStaleChain")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Ruleset
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawStaleChain| {
            Ok(StaleChainSettings {
                stale_after: duration_or(r.stale_after, 30),
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::FLUSH_STALE_CHAIN)
    }

    fn persist_for(&self, config: &Config) -> Duration {
        config
            .check(self.id())
            .settings
            .get::<StaleChainSettings>()
            .stale_after
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect(context.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};

    #[test]
    fn recognises_only_cilium_backup_names() {
        assert!(is_cilium_backup_chain("OLD_CILIUM_POST_nat"));
        assert!(is_cilium_backup_chain("OLD_CILIUM_TRANSIENT_FORWARD"));
        assert!(!is_cilium_backup_chain("CILIUM_POST_nat"));
        assert!(!is_cilium_backup_chain("OLD_CILIUM_SOMETHING"));
        assert!(!is_cilium_backup_chain("OLD_KUBE-SERVICES"));
    }

    #[test]
    fn field_report_chain_is_found_with_evidence_and_fix() {
        // The chain of k3s-cilium-gotchas.md, as iptables-save prints it.
        let table = iptables_table(
            Backend::Legacy,
            "nat",
            r#"
:POSTROUTING ACCEPT
:CILIUM_POST_nat -
:OLD_CILIUM_POST_nat -
-A POSTROUTING -j CILIUM_POST_nat
-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -j MASQUERADE
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 99.105.108.105/24 ! -o cilium_+ -j MASQUERADE
-A OLD_CILIUM_POST_nat -j ACCEPT
"#,
        );
        let findings = detect(&snapshot_with(None, Some(vec![table])));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.subject, "ip nat OLD_CILIUM_POST_nat");
        assert_eq!(f.evidence["backend"], "legacy");
        assert_eq!(f.evidence["rules"], 2);
        assert_eq!(f.evidence["references"], 0);
        assert_eq!(f.evidence["liveChainPresent"], true);
        assert_eq!(
            f.evidence["ruleset"][0],
            "-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 99.105.108.105/24 ! -o cilium_+ -j MASQUERADE"
        );
        let proposal = f.proposal.as_ref().unwrap();
        assert_eq!(proposal.detail, "would flush 2 rules and delete the chain");
        match proposal.action.as_ref().unwrap() {
            FixAction::FlushChain {
                chain,
                rules,
                delete_chain,
                ..
            } => {
                assert_eq!(chain, "OLD_CILIUM_POST_nat");
                assert_eq!(*rules, 2);
                assert!(*delete_chain);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn referenced_backup_is_flushed_not_deleted() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            r#"
:POSTROUTING ACCEPT
:CILIUM_POST_nat -
:OLD_CILIUM_POST_nat -
-A POSTROUTING -j CILIUM_POST_nat
-A POSTROUTING -j OLD_CILIUM_POST_nat
-A OLD_CILIUM_POST_nat -j ACCEPT
"#,
        );
        let findings = detect(&snapshot_with(Some(vec![table]), None));
        assert_eq!(findings.len(), 1);
        let proposal = findings[0].proposal.as_ref().unwrap();
        assert!(matches!(
            proposal.action,
            Some(FixAction::FlushChain {
                delete_chain: false,
                ..
            })
        ));
        assert_eq!(findings[0].evidence["references"], 1);
        assert_eq!(
            findings[0].evidence["referencedBy"][0],
            "-A POSTROUTING -j OLD_CILIUM_POST_nat"
        );
    }

    #[test]
    fn an_empty_referenced_backup_is_left_alone() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":POSTROUTING ACCEPT\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j OLD_CILIUM_POST_nat\n",
        );
        assert!(detect(&snapshot_with(Some(vec![table]), None)).is_empty());
        let unreferenced = iptables_table(
            Backend::Nft,
            "nat",
            ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n",
        );
        let findings = detect(&snapshot_with(Some(vec![unreferenced]), None));
        assert_eq!(
            findings[0].proposal.as_ref().unwrap().detail,
            "would delete the empty chain"
        );
    }

    #[test]
    fn healthy_cilium_chains_give_nothing() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n",
        );
        assert!(detect(&snapshot_with(Some(vec![table]), None)).is_empty());
    }

    fn proposal_of(table: Table) -> (Finding, FixProposal) {
        let findings = detect(&snapshot_with(Some(vec![table]), None));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let proposal = findings[0].proposal.clone().unwrap();
        (findings[0].clone(), proposal)
    }

    /// The backup of the field report (as Cilium leaves it after renaming the live chain).
    const BACKUP: &str =
        "-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -j MASQUERADE\n";

    #[test]
    fn a_backup_without_its_live_chain_is_the_only_copy_and_is_blocked() {
        // Cilium died after `-E CILIUM_POST_nat OLD_CILIUM_POST_nat` and before re-creating the
        // live chain: the backup is the masquerade pods use.
        let table = iptables_table(
            Backend::Nft,
            "nat",
            &format!(":POSTROUTING ACCEPT\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j OLD_CILIUM_POST_nat\n{BACKUP}"),
        );
        let (f, p) = proposal_of(table);
        assert_eq!(p.action, None);
        assert_eq!(
            p.detail,
            "blocked: the backup is the only copy: the live chain CILIUM_POST_nat is missing; flushing OLD_CILIUM_POST_nat could cut pod egress"
        );
        assert_eq!(f.evidence["liveChainPresent"], false);
        assert_eq!(f.evidence["liveChainHooked"], false);
    }

    #[test]
    fn a_live_chain_in_the_other_backend_is_named_but_does_not_unblock() {
        let legacy = iptables_table(
            Backend::Legacy,
            "nat",
            &format!(":POSTROUTING ACCEPT\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j OLD_CILIUM_POST_nat\n{BACKUP}"),
        );
        let nft = iptables_table(
            Backend::Nft,
            "nat",
            ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A CILIUM_POST_nat -j RETURN\n",
        );
        let findings = detect(&snapshot_with(Some(vec![nft]), Some(vec![legacy])));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let p = findings[0].proposal.as_ref().unwrap();
        assert_eq!(p.action, None);
        assert!(
            p.detail.contains(
                "CILIUM_POST_nat is missing here (it exists in the nft backend: did Cilium change iptables mode?)"
            ),
            "{}",
            p.detail
        );
    }

    #[test]
    fn a_live_chain_nothing_jumps_to_does_not_count() {
        // Re-created but its feeder rule not yet inserted; a jump from another hook's chain
        // (PREROUTING) is not its built-in chain.
        let table = iptables_table(
            Backend::Legacy,
            "nat",
            &format!(":PREROUTING ACCEPT\n:POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A PREROUTING -j CILIUM_POST_nat\n-A CILIUM_POST_nat -j RETURN\n{BACKUP}"),
        );
        let (f, p) = proposal_of(table);
        assert_eq!(p.action, None);
        assert!(
            p.detail.contains(
                "the live chain CILIUM_POST_nat is unhooked (nothing in POSTROUTING reaches it)"
            ),
            "{}",
            p.detail
        );
        assert_eq!(f.evidence["liveChainPresent"], true);
        assert_eq!(f.evidence["liveChainHooked"], false);
    }

    #[test]
    fn a_live_chain_reached_through_another_chain_is_hooked() {
        let hooked_via = |via: &str| {
            iptables_table(
                Backend::Nft,
                "nat",
                &format!(":POSTROUTING ACCEPT\n:{via} -\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j {via}\n-A {via} -j CILIUM_POST_nat\n{BACKUP}"),
            )
        };
        let (f, p) = proposal_of(hooked_via("KUBE-POSTROUTING"));
        assert_eq!(f.evidence["liveChainHooked"], true);
        assert!(p.action.is_some(), "hooked: the fix may act");
        // The same backup, read again after the live chain lost its hook: the proposal has no
        // action, so the re-check right before acting (which compares actions) does nothing.
        let unhooked = iptables_table(
            Backend::Nft,
            "nat",
            &format!(":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n{BACKUP}"),
        );
        let (_, p2) = proposal_of(unhooked);
        assert_ne!(p.action, p2.action);
        assert_eq!(p2.action, None);
    }
}
