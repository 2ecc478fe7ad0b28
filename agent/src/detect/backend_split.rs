//! Check `iptables-backend-split`: rules of one owner (kube-proxy, Cilium, flannel, the CNI
//! plugins, Calico) written partly with iptables-legacy and partly with iptables-nft. Both sets
//! are live and packets traverse both, so symptoms look random. Report only: which half is right
//! depends on which binary the owner ships, which a node agent cannot know.

use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, Severity};
use crate::model::ruleset::{Backend, Family, Ruleset};
use crate::model::snapshot::NodeSnapshot;
use serde_json::json;
use std::collections::BTreeMap;

/// Chain-name prefixes that identify an owner.
pub const OWNER_PREFIXES: [&str; 6] = [
    "KUBE-",
    "CILIUM_",
    "OLD_CILIUM_",
    "FLANNEL-",
    "CNI-",
    "cali-",
];

/// Rule counts per (family, table, owner prefix) for one backend; chains without rules are
/// ignored (kubelet's canary chains are empty on purpose).
fn owner_rule_counts(
    ruleset: &Ruleset,
) -> BTreeMap<(Family, String, &'static str), (usize, usize)> {
    let mut counts: BTreeMap<(Family, String, &'static str), (usize, usize)> = BTreeMap::new();
    for table in &ruleset.tables {
        if !matches!(table.id.family, Family::Ip | Family::Ip6) {
            continue;
        }
        for chain in &table.chains {
            if chain.rules.is_empty() {
                continue;
            }
            // OLD_CILIUM_ starts with neither of the others, so the first match is the owner.
            if let Some(prefix) = OWNER_PREFIXES.iter().find(|p| chain.name.starts_with(**p)) {
                let entry = counts
                    .entry((table.id.family, table.id.name.clone(), prefix))
                    .or_default();
                entry.0 += chain.rules.len();
                entry.1 += 1;
            }
        }
    }
    counts
}

pub fn detect(snapshot: &NodeSnapshot) -> Vec<Finding> {
    let (Some(nft), Some(legacy)) = (
        snapshot.ruleset(Backend::Nft),
        snapshot.ruleset(Backend::Legacy),
    ) else {
        return Vec::new();
    };
    let nft_counts = owner_rule_counts(nft);
    let legacy_counts = owner_rule_counts(legacy);
    let mut findings = Vec::new();
    for (key, (nft_rules, nft_chains)) in &nft_counts {
        let Some((legacy_rules, legacy_chains)) = legacy_counts.get(key) else {
            continue;
        };
        let (family, table, prefix) = key;
        findings.push(Finding {
            check: CheckId::IPTABLES_BACKEND_SPLIT,
            subject: format!("{family} {table} {prefix}*"),
            severity: Severity::Warning,
            message: format!(
                "{prefix}* rules in {family} {table} are split across backends: {nft_rules} in iptables-nft, {legacy_rules} in iptables-legacy; packets traverse both. Make every component use the same iptables mode"
            ),
            evidence: json!({
                "family": family,
                "table": table,
                "owner": prefix,
                "nft": { "rules": nft_rules, "chains": nft_chains },
                "legacy": { "rules": legacy_rules, "chains": legacy_chains },
            }),
            proposal: None,
            discriminator: None,
        });
    }
    findings
}

/// The check, for the registry.
pub struct IptablesBackendSplit;

impl CheckId {
    pub const IPTABLES_BACKEND_SPLIT: CheckId = CheckId::new("iptables-backend-split");
}

impl Check for IptablesBackendSplit {
    fn id(&self) -> CheckId {
        CheckId::IPTABLES_BACKEND_SPLIT
    }

    fn description(&self) -> &'static str {
        "rules of one owner (kube-proxy, Cilium, flannel, CNI, Calico) split across iptables-legacy and iptables-nft"
    }

    fn inputs(&self) -> Inputs {
        Inputs::Ruleset
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
    fn kube_rules_in_both_backends_are_reported() {
        let nft = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n:KUBE-SERVICES -\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -d 10.43.0.1/32 -j ACCEPT\n-A KUBE-SERVICES -d 10.43.0.2/32 -j ACCEPT\n",
        );
        let legacy = iptables_table(
            Backend::Legacy,
            "nat",
            ":POSTROUTING ACCEPT\n:KUBE-POSTROUTING -\n:FLANNEL-POSTRTG -\n-A KUBE-POSTROUTING -j MASQUERADE\n-A FLANNEL-POSTRTG -j RETURN\n",
        );
        let findings = detect(&snapshot_with(Some(vec![nft]), Some(vec![legacy])));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].subject, "ip nat KUBE-*");
        assert_eq!(findings[0].evidence["nft"]["rules"], 2);
        assert_eq!(findings[0].evidence["legacy"]["rules"], 1);
        assert!(findings[0].proposal.is_none());
    }

    #[test]
    fn empty_canary_chains_and_other_tables_do_not_count() {
        let nft = iptables_table(
            Backend::Nft,
            "nat",
            ":KUBE-SERVICES -\n-A KUBE-SERVICES -d 10.43.0.1/32 -j ACCEPT\n",
        );
        let legacy_canary = iptables_table(Backend::Legacy, "nat", ":KUBE-KUBELET-CANARY -\n");
        let legacy_mangle = iptables_table(
            Backend::Legacy,
            "mangle",
            ":KUBE-MARK -\n-A KUBE-MARK -j ACCEPT\n",
        );
        let findings = detect(&snapshot_with(
            Some(vec![nft]),
            Some(vec![legacy_canary, legacy_mangle]),
        ));
        assert!(findings.is_empty(), "{findings:#?}");
    }
}
