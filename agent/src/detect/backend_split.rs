//! Check `iptables-backend-split`: rules of one owner (kube-proxy, Cilium, flannel, the CNI
//! plugins, Calico) written partly with iptables-legacy and partly with iptables-nft. Both sets
//! are live and packets traverse both, so symptoms look random. Report only: which half is right
//! depends on which binary the owner ships, which a node agent cannot know.
//!
//! What counts, per address family (`ip`, `ip6`; every table of that family together):
//! - an owner's rules are the rules in chains named with its prefix (`KUBE-`, `CILIUM_` and
//!   `OLD_CILIUM_`, `FLANNEL-`, `CNI-`, `cali-`) plus the rules in built-in (base) chains that
//!   jump or go to one of its chains: `-A PREROUTING -j KUBE-SERVICES` is kube-proxy's hook;
//! - an owner is split when it has at least one such rule in BOTH backends, in any tables of the
//!   family: hooks in one backend and chains in the other, `nat` in one and `filter` in the
//!   other, or the same table in both.
//!
//! What is not a split:
//! - empty chains: a jump to an owner's chain needs the chain in the same table, so a hook
//!   leaves an empty chain behind; kubelet's canaries (`KUBE-KUBELET-CANARY`,
//!   `KUBE-PROXY-CANARY`) and hint (`KUBE-IPTABLES-HINT`) are empty by design and exist in
//!   whichever backend each component's iptables binary picks;
//! - kubelet's own chains, written with kubelet's iptables whatever backend kube-proxy or the
//!   CNI use (upstream `pkg/kubelet/kubelet_network_linux.go`): [`KUBELET_CHAINS`] and the
//!   built-in chains' jumps to them (`-A INPUT -j KUBE-FIREWALL`, the localnet martian drop).
//!   Kubelets before the iptables ownership cleanup (KEP-3178) also wrote `KUBE-MARK-DROP`,
//!   `KUBE-MARK-MASQ` and `KUBE-POSTROUTING`, which kube-proxy of that era used: those count as
//!   `KUBE-`, so such a kubelet in the other backend than kube-proxy is reported (kube-proxy's
//!   marks then go nowhere);
//! - `inet`, `arp`, `bridge` and `netdev` tables: iptables never writes them (native nftables
//!   owners such as kube-proxy's nftables mode use their own table names).

use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, Severity};
use crate::model::ruleset::{Action, Backend, Family, Rule, Ruleset, Table};
use crate::model::snapshot::NodeSnapshot;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Owners and the chain-name prefixes that identify them; the first prefix names the owner in
/// the finding's subject.
pub const OWNERS: [&[&str]; 5] = [
    &["KUBE-"],
    &["CILIUM_", "OLD_CILIUM_"],
    &["FLANNEL-"],
    &["CNI-"],
    &["cali-"],
];

/// Chains kubelet itself maintains (not kube-proxy): present in kubelet's backend whatever the
/// other components use, so never evidence of a split.
pub const KUBELET_CHAINS: [&str; 4] = [
    "KUBE-FIREWALL",
    "KUBE-KUBELET-CANARY",
    "KUBE-PROXY-CANARY",
    "KUBE-IPTABLES-HINT",
];

/// The owner (its first prefix) of a chain name, kubelet's chains excluded.
pub fn owner_of(chain: &str) -> Option<&'static str> {
    if KUBELET_CHAINS.contains(&chain) {
        return None;
    }
    OWNERS
        .iter()
        .find(|prefixes| prefixes.iter().any(|p| chain.starts_with(p)))
        .map(|prefixes| prefixes[0])
}

/// One owner's rules in one backend and family.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnerCount {
    /// Rules in the owner's chains.
    pub rules: usize,
    /// Owner chains that hold rules.
    pub chains: usize,
    /// Rules in built-in chains that continue into the owner's chains (its hooks).
    pub hooks: usize,
    /// Tables holding any of the above.
    pub tables: BTreeSet<String>,
}

impl OwnerCount {
    fn total(&self) -> usize {
        self.rules + self.hooks
    }
}

/// The chains a rule continues into, by name: its jump or goto, or every verdict of its verdict
/// map. (The kernel refuses a jump to a chain that does not exist, so no lookup is needed.)
fn continuations<'a>(table: &'a Table, rule: &'a Rule) -> impl Iterator<Item = &'a str> + 'a {
    let direct = match &rule.action {
        Action::Verdict { verdict } => verdict.target_chain(),
        _ => None,
    };
    let mapped = match &rule.action {
        Action::VerdictMap { set, .. } => table.sets.get(set),
        _ => None,
    };
    direct.into_iter().chain(
        mapped
            .into_iter()
            .flat_map(|set| set.elements.iter())
            .filter_map(|element| element.verdict.as_ref()?.target_chain()),
    )
}

/// Counts one table's rules per owner. Linear in the rules and cheap: it runs on every ruleset
/// change, over tens of thousands of chains.
fn count_table(table: &Table, counts: &mut BTreeMap<(Family, &'static str), OwnerCount>) {
    let mut here: BTreeMap<&'static str, OwnerCount> = BTreeMap::new();
    for chain in &table.chains {
        if chain.base.is_some() {
            for rule in &chain.rules {
                let mut owners: Vec<&'static str> =
                    continuations(table, rule).filter_map(owner_of).collect();
                owners.sort_unstable();
                owners.dedup();
                for owner in owners {
                    here.entry(owner).or_default().hooks += 1;
                }
            }
            continue;
        }
        if chain.rules.is_empty() {
            continue;
        }
        if let Some(owner) = owner_of(&chain.name) {
            let entry = here.entry(owner).or_default();
            entry.rules += chain.rules.len();
            entry.chains += 1;
        }
    }
    for (owner, count) in here {
        let entry = counts.entry((table.id.family, owner)).or_default();
        entry.rules += count.rules;
        entry.chains += count.chains;
        entry.hooks += count.hooks;
        entry.tables.insert(table.id.name.clone());
    }
}

/// Rule counts per (family, owner) for one backend, over every `ip`/`ip6` table.
pub fn owner_counts(ruleset: &Ruleset) -> BTreeMap<(Family, &'static str), OwnerCount> {
    let mut counts = BTreeMap::new();
    for table in &ruleset.tables {
        if matches!(table.id.family, Family::Ip | Family::Ip6) {
            count_table(table, &mut counts);
        }
    }
    counts
}

fn side(c: &OwnerCount) -> serde_json::Value {
    json!({
        "rules": c.rules,
        "chains": c.chains,
        "hookRules": c.hooks,
        "tables": c.tables,
    })
}

fn describe(c: &OwnerCount) -> String {
    let tables: Vec<&str> = c.tables.iter().map(String::as_str).collect();
    format!(
        "{} rules in {} chains + {} hook rules ({})",
        c.rules,
        c.chains,
        c.hooks,
        tables.join(", ")
    )
}

pub fn detect(snapshot: &NodeSnapshot) -> Vec<Finding> {
    let (Some(nft), Some(legacy)) = (
        snapshot.ruleset(Backend::Nft),
        snapshot.ruleset(Backend::Legacy),
    ) else {
        return Vec::new();
    };
    // The legacy side first: usually empty, and then the nftables side need not be counted.
    let legacy_counts = owner_counts(legacy);
    if legacy_counts.is_empty() {
        return Vec::new();
    }
    let nft_counts = owner_counts(nft);
    let mut findings = Vec::new();
    for (key, n) in &nft_counts {
        let Some(l) = legacy_counts.get(key) else {
            continue;
        };
        if n.total() == 0 || l.total() == 0 {
            continue;
        }
        let (family, prefix) = key;
        findings.push(Finding {
            check: CheckId::IPTABLES_BACKEND_SPLIT,
            subject: format!("{family} {prefix}*"),
            severity: Severity::Warning,
            message: format!(
                "{prefix}* rules of family {family} are split across backends: iptables-nft has {}, iptables-legacy has {}; packets traverse both. Make every component use the same iptables mode",
                describe(n),
                describe(l)
            ),
            evidence: json!({
                "family": family,
                "owner": prefix,
                "nft": side(n),
                "legacy": side(l),
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

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("BackendSplit", "NoBackendSplit")
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

    /// kubelet's own rules (upstream kubelet_network_linux.go), as iptables-save prints them.
    const KUBELET_FILTER: &str = r#"
:INPUT ACCEPT
:OUTPUT ACCEPT
:KUBE-FIREWALL -
:KUBE-KUBELET-CANARY -
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
"#;
    const CANARIES: &str = ":KUBE-IPTABLES-HINT -\n:KUBE-KUBELET-CANARY -\n:KUBE-PROXY-CANARY -\n";

    /// kube-proxy (iptables mode) nat rules.
    const KUBE_PROXY_NAT: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:KUBE-SERVICES -
:KUBE-POSTROUTING -
:KUBE-MARK-MASQ -
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
"#;

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
        assert_eq!(findings[0].subject, "ip KUBE-*");
        assert_eq!(findings[0].evidence["nft"]["rules"], 2);
        assert_eq!(findings[0].evidence["nft"]["hookRules"], 1);
        assert_eq!(findings[0].evidence["legacy"]["rules"], 1);
        assert_eq!(findings[0].evidence["legacy"]["hookRules"], 0);
        assert!(findings[0].proposal.is_none());
    }

    #[test]
    fn hooks_in_one_backend_and_chains_in_the_other_are_a_split() {
        // kube-proxy's hooks were written with iptables-nft (leaving empty chains there, as a
        // jump needs its target in the same table); its chains live in iptables-legacy.
        let nft = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n:OUTPUT ACCEPT\n:KUBE-SERVICES -\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        let mut legacy_nat = KUBE_PROXY_NAT.to_string();
        legacy_nat = legacy_nat
            .lines()
            .filter(|l| !l.starts_with("-A PREROUTING") && !l.starts_with("-A OUTPUT"))
            .collect::<Vec<_>>()
            .join("\n");
        let legacy = iptables_table(Backend::Legacy, "nat", &legacy_nat);
        let findings = detect(&snapshot_with(Some(vec![nft]), Some(vec![legacy])));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.subject, "ip KUBE-*");
        assert_eq!(f.evidence["nft"]["rules"], 0);
        assert_eq!(f.evidence["nft"]["hookRules"], 2);
        assert_eq!(f.evidence["legacy"]["rules"], 4);
        assert_eq!(f.evidence["legacy"]["hookRules"], 1);
        assert!(
            f.message
                .contains("iptables-nft has 0 rules in 0 chains + 2 hook rules (nat)"),
            "{}",
            f.message
        );
    }

    #[test]
    fn one_owner_across_different_tables_of_a_family_is_a_split() {
        let nft = iptables_table(Backend::Nft, "nat", KUBE_PROXY_NAT);
        let legacy_filter = iptables_table(
            Backend::Legacy,
            "filter",
            ":FORWARD ACCEPT\n:KUBE-FORWARD -\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        );
        let findings = detect(&snapshot_with(Some(vec![nft]), Some(vec![legacy_filter])));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].evidence["nft"]["tables"], json!(["nat"]));
        assert_eq!(findings[0].evidence["legacy"]["tables"], json!(["filter"]));
    }

    #[test]
    fn kubelet_chains_and_canaries_in_the_other_backend_are_healthy() {
        // kube-proxy uses iptables-nft; kubelet (another iptables binary) wrote its firewall,
        // hint and canaries with iptables-legacy; kube-proxy's canary is in both.
        let nft = vec![
            iptables_table(Backend::Nft, "nat", KUBE_PROXY_NAT),
            iptables_table(Backend::Nft, "mangle", ":KUBE-PROXY-CANARY -\n"),
            iptables_table(
                Backend::Nft,
                "filter",
                ":INPUT ACCEPT\n:KUBE-PROXY-FIREWALL -\n:KUBE-PROXY-CANARY -\n-A INPUT -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            ),
        ];
        let legacy = vec![
            iptables_table(Backend::Legacy, "filter", KUBELET_FILTER),
            iptables_table(Backend::Legacy, "mangle", CANARIES),
            iptables_table(Backend::Legacy, "nat", ":KUBE-KUBELET-CANARY -\n"),
        ];
        let findings = detect(&snapshot_with(Some(nft), Some(legacy)));
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn other_families_and_empty_chains_do_not_count() {
        let nft = iptables_table(
            Backend::Nft,
            "nat",
            ":KUBE-SERVICES -\n-A KUBE-SERVICES -d 10.43.0.1/32 -j ACCEPT\n",
        );
        let mut legacy_v6 = iptables_table(
            Backend::Legacy,
            "nat",
            ":KUBE-SERVICES -\n-A KUBE-SERVICES -j RETURN\n",
        );
        legacy_v6.id.family = Family::Ip6;
        let legacy_empty = iptables_table(Backend::Legacy, "filter", ":KUBE-FORWARD -\n");
        let findings = detect(&snapshot_with(
            Some(vec![nft]),
            Some(vec![legacy_v6, legacy_empty]),
        ));
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn old_cilium_backups_count_as_cilium() {
        assert_eq!(owner_of("OLD_CILIUM_POST_nat"), Some("CILIUM_"));
        assert_eq!(owner_of("KUBE-FIREWALL"), None);
        assert_eq!(owner_of("KUBE-PROXY-FIREWALL"), Some("KUBE-"));
        assert_eq!(owner_of("DOCKER"), None);
    }
}
