//! Check `cilium-stale-backup-chain`: an `OLD_CILIUM_*` backup chain that Cilium failed to remove
//! (its `-D` replay could not match a rule back), after which every Cilium reconcile fails and
//! pods lose egress. Proposes `flush-stale-chain`: flush it, and delete it when nothing
//! references it (a referenced chain cannot be deleted: EBUSY).
//!
//! This check only recognises the chains; "stale" (still there after `staleAfter`, or at both ends
//! of the one-shot window) is decided by the tracker that keeps `since`.

use crate::config::{duration_or, Config, ConfigError, HumanDuration, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity, TableRef};
use crate::model::graph::TableGraph;
use crate::model::render::{action_fingerprint, render_rule};
use crate::model::ruleset::{Backend, Table};
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
                    findings.push(finding_for(table, &graph, index));
                }
            }
        }
    }
    findings
}

fn finding_for(table: &Table, graph: &TableGraph<'_>, index: usize) -> Finding {
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
    let live_exists = table.chain(live).is_some();
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
            "liveChainPresent": live_exists,
            "ruleset": rendered,
        }),
        proposal: Some(FixProposal {
            fix: FixId::FLUSH_STALE_CHAIN,
            action: Some(action),
            detail,
        }),
        discriminator: Some(table.id.backend.as_str().to_string()),
    }
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
:OLD_CILIUM_POST_nat -
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
        let unreferenced = iptables_table(Backend::Nft, "nat", ":OLD_CILIUM_POST_nat -\n");
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
}
