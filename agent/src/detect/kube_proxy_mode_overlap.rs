//! Check `kube-proxy-mode-overlap`: Service rules of two kube-proxy modes are live at once, the
//! iptables mode's (`KUBE-SERVICES` in the nat table jumping to `KUBE-SVC-*`/`KUBE-EXT-*`, in
//! either iptables backend) and the nftables mode's (`table ip kube-proxy` with per-Service
//! `service-*` chains), for the same address family. One set is left over from a mode switch (or a
//! second kube-proxy runs): packets meet the old set first or as well, and Services answer with
//! endpoints that are long gone. Report only: which set is current is kube-proxy's to say, and
//! `kube-proxy --cleanup` (or a restart of the current mode, which removes the other mode's rules
//! in recent versions) is the mend.
//!
//! Only chains that carry Services count: kube-proxy's empty canary and bookkeeping chains exist
//! in every mode and are not a second ruleset.

use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, Severity};
use crate::model::ruleset::{Action, Backend, Family, Table};
use crate::model::snapshot::NodeSnapshot;
use serde_json::json;

/// The check, for the registry.
pub struct KubeProxyModeOverlap;

impl CheckId {
    pub const KUBE_PROXY_MODE_OVERLAP: CheckId = CheckId::new("kube-proxy-mode-overlap");
}

/// Services the iptables mode programs in `table`: rules of `KUBE-SERVICES` that jump to a
/// Service chain.
fn iptables_mode_services(table: &Table) -> usize {
    if table.id.name != "nat" {
        return 0;
    }
    table.chain("KUBE-SERVICES").map_or(0, |chain| {
        chain
            .rules
            .iter()
            .filter(|rule| match &rule.action {
                Action::Verdict { verdict } => verdict
                    .target_chain()
                    .is_some_and(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-EXT-")),
                _ => false,
            })
            .count()
    })
}

/// Services the nftables mode programs in `table`: its `service-*` chains with rules.
fn nftables_mode_services(table: &Table) -> usize {
    if table.id.backend != Backend::Nft || table.id.name != "kube-proxy" {
        return 0;
    }
    table
        .chains
        .iter()
        .filter(|c| c.name.starts_with("service-") && !c.rules.is_empty())
        .count()
}

pub fn detect(snapshot: &NodeSnapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let mut iptables_mode: Vec<(Backend, usize)> = Vec::new();
        let mut nftables_mode = 0;
        for backend in [Backend::Nft, Backend::Legacy] {
            let Some(ruleset) = snapshot.ruleset(backend) else {
                continue;
            };
            for table in ruleset.tables.iter().filter(|t| t.id.family == family) {
                let services = iptables_mode_services(table);
                if services > 0 {
                    iptables_mode.push((backend, services));
                }
                nftables_mode += nftables_mode_services(table);
            }
        }
        if iptables_mode.is_empty() || nftables_mode == 0 {
            continue;
        }
        let iptables_total: usize = iptables_mode.iter().map(|(_, n)| n).sum();
        let backends: Vec<&str> = iptables_mode.iter().map(|(b, _)| b.as_str()).collect();
        findings.push(Finding {
            check: CheckId::KUBE_PROXY_MODE_OVERLAP,
            subject: format!("{family} kube-proxy"),
            severity: Severity::Warning,
            message: format!(
                "kube-proxy rules of two modes are live for {family}: iptables mode ({iptables_total} Service rules in nat KUBE-SERVICES, {}) and nftables mode ({nftables_mode} Service chains in table {family} kube-proxy); one is left over from a mode switch: run `kube-proxy --cleanup` for the mode not in use",
                backends.join(" and ")
            ),
            evidence: json!({
                "family": family.to_string(),
                "iptablesMode": iptables_mode
                    .iter()
                    .map(|(b, n)| json!({"backend": b.as_str(), "serviceRules": n}))
                    .collect::<Vec<_>>(),
                "nftablesMode": {"table": format!("{family} kube-proxy"), "serviceChains": nftables_mode},
            }),
            proposal: None,
            discriminator: None,
        });
    }
    findings
}

impl Check for KubeProxyModeOverlap {
    fn id(&self) -> CheckId {
        CheckId::KUBE_PROXY_MODE_OVERLAP
    }

    fn description(&self) -> &'static str {
        "Service rules of kube-proxy's iptables and nftables modes are both live (left over from a mode switch)"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("ModeOverlap", "NoModeOverlap")
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
    use crate::model::ruleset::{Chain, Rule, TableId, Verdict};

    /// kube-proxy's iptables mode with one ClusterIP Service (the shape its proxier writes).
    const IPTABLES_MODE: &str = "\
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:KUBE-SERVICES -
:KUBE-SVC-NPX46M4PTMTKRN6Y -
:KUBE-SEP-ZX7GRIZKSNUQ3LAJ -
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment \"default/kubernetes:https -> 192.168.1.10:6443\" -j KUBE-SEP-ZX7GRIZKSNUQ3LAJ
-A KUBE-SEP-ZX7GRIZKSNUQ3LAJ -p tcp -m comment --comment \"default/kubernetes:https\" -m tcp -j DNAT --to-destination 192.168.1.10:6443
";

    /// The nftables mode's table with one Service chain, as its proxier names them.
    fn nftables_mode(family: Family) -> Table {
        let rule = |handle, verdict| Rule {
            handle,
            matches: Vec::new(),
            action: Action::Verdict { verdict },
            comment: None,
            counters: None,
        };
        let chain = |name: &str, rules| Chain {
            name: name.into(),
            handle: 0,
            base: None,
            rules,
        };
        Table {
            id: TableId {
                backend: Backend::Nft,
                family,
                name: "kube-proxy".into(),
            },
            handle: 1,
            chains: vec![
                chain("services", Vec::new()),
                chain(
                    "service-2QRHZV4L-default/kubernetes/tcp/https",
                    vec![rule(
                        7,
                        Verdict::Goto(
                            "endpoint-GSE7RJJX-default/kubernetes/tcp/https__192.168.1.10/6443"
                                .into(),
                        ),
                    )],
                ),
                chain("cluster-ips-check", Vec::new()),
            ],
            sets: Default::default(),
        }
    }

    #[test]
    fn both_modes_live_in_one_family_is_reported_naming_each() {
        let mut nat = iptables_table(Backend::Nft, "nat", IPTABLES_MODE);
        nat.id.family = Family::Ip;
        let snapshot = snapshot_with(Some(vec![nat, nftables_mode(Family::Ip)]), None);
        let findings = detect(&snapshot);
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.check, CheckId::KUBE_PROXY_MODE_OVERLAP);
        assert!(f.proposal.is_none(), "report only");
        assert_eq!(f.evidence["iptablesMode"][0]["serviceRules"], 1);
        assert_eq!(f.evidence["nftablesMode"]["serviceChains"], 1);
        assert!(f.message.contains("kube-proxy --cleanup"), "{}", f.message);
    }

    #[test]
    fn the_legacy_backend_counts_for_the_iptables_mode() {
        let snapshot = snapshot_with(
            Some(vec![nftables_mode(Family::Ip)]),
            Some(vec![iptables_table(Backend::Legacy, "nat", IPTABLES_MODE)]),
        );
        let findings = detect(&snapshot);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].evidence["iptablesMode"][0]["backend"], "legacy");
    }

    #[test]
    fn one_mode_alone_or_modes_in_different_families_are_healthy() {
        let iptables_only = snapshot_with(
            Some(vec![iptables_table(Backend::Nft, "nat", IPTABLES_MODE)]),
            None,
        );
        assert!(detect(&iptables_only).is_empty());
        let nftables_only = snapshot_with(Some(vec![nftables_mode(Family::Ip)]), None);
        assert!(detect(&nftables_only).is_empty());
        // IPv4 in iptables mode, IPv6 in nftables mode: two rulesets, no overlap.
        let split_families = snapshot_with(
            Some(vec![
                iptables_table(Backend::Nft, "nat", IPTABLES_MODE),
                nftables_mode(Family::Ip6),
            ]),
            None,
        );
        assert!(detect(&split_families).is_empty());
    }

    #[test]
    fn kube_proxys_empty_chains_of_the_other_mode_are_not_a_ruleset() {
        // The canary and an empty KUBE-SERVICES stay behind in every mode.
        let empty = ":PREROUTING ACCEPT\n:KUBE-SERVICES -\n:KUBE-PROXY-CANARY -\n";
        let snapshot = snapshot_with(
            Some(vec![
                iptables_table(Backend::Nft, "nat", empty),
                nftables_mode(Family::Ip),
            ]),
            None,
        );
        assert!(detect(&snapshot).is_empty());
    }
}
