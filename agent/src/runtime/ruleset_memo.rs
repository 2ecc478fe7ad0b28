//! The ruleset checks' last result and what it was computed from: the nftables generation, the
//! legacy ruleset (the probe keeps the same `Arc` while its content is unchanged), listeners,
//! addresses, the configuration, whether the pods are known and the pod names the checks asked
//! for (the cluster may learn a pod's name after its rules appeared). While none moved, an idle pass costs no walk over the rules.
//! When only the cluster's intent for kube-proxy moved (its generation), only the checks that
//! read it run again; the others' findings are kept.
//! The memo holds no strong reference to a ruleset, so the incremental cache can keep changing
//! its own in place without a copy.
//!
//! When only the nftables ruleset moved and its reader's change log says which chains and sets
//! did, the checks that do not read the intent run through [`detect::Check::detect_incremental`]
//! with that change and the memory they kept from the previous evaluation; whenever anything
//! else moved (or the log cannot say), their memories are dropped and they start afresh.

use crate::config::Config;
use crate::detect::{self, CheckContext, CheckMemory, Inputs, Pods};
use crate::model::finding::{CheckId, Finding};
use crate::model::ruleset::Ruleset;
use crate::model::ruleset_changes::ChangedSince;
use crate::model::service_intent::ClusterIntent;
use crate::model::snapshot::{ListeningSocket, LocalAddress, NodeSnapshot};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

/// Inputs and result of the last ruleset evaluation.
#[derive(Default)]
pub struct RulesetMemo {
    last: Option<Memo>,
    /// What each check kept from the last evaluation, for an incremental one.
    memories: HashMap<CheckId, CheckMemory>,
}

struct Memo {
    nft_generation: Option<Option<u32>>,
    /// The full read the nftables change log started from.
    nft_origin: Option<u64>,
    legacy: Option<Weak<Ruleset>>,
    listeners: Option<Vec<ListeningSocket>>,
    addresses: Option<Vec<LocalAddress>>,
    config: Config,
    pods_known: bool,
    /// The IPs the checks asked the pod names of, with the answers they got.
    pods_asked: Vec<(IpAddr, Option<String>)>,
    /// The intent's generation the intent-reading checks ran on.
    intent_generation: Option<u64>,
    /// The findings of the checks that do not read the intent, and of those that do.
    findings: Vec<Finding>,
    intent_findings: Vec<Finding>,
}

impl RulesetMemo {
    /// The findings of every enabled ruleset check on `snapshot`, re-run only when an input
    /// changed.
    pub fn findings(
        &mut self,
        snapshot: &NodeSnapshot,
        config: &Config,
        pods: Pods<'_>,
        service_intent: Option<&ClusterIntent>,
    ) -> Vec<Finding> {
        let pod_owner = pods.owner;
        let nft_generation = snapshot.nftables.as_ref().map(|r| r.generation);
        let legacy = snapshot.legacy.as_ref().map(Arc::downgrade);
        let intent_generation = service_intent.map(|i| i.generation);
        let reads_intent = |c: &dyn detect::Check| c.reads_service_intent();
        let nft_changes = snapshot.nft_changes.as_deref();
        // Set when only the nftables ruleset moved and its change log says how.
        let mut changed: Option<ChangedSince> = None;
        let mut asked_before: Vec<(IpAddr, Option<String>)> = Vec::new();
        if let Some(memo) = &mut self.last {
            let same_legacy = match (&memo.legacy, &legacy) {
                (Some(a), Some(b)) => a.ptr_eq(b),
                (None, None) => true,
                _ => false,
            };
            let others_unchanged = same_legacy
                && memo.listeners == snapshot.listeners
                && memo.addresses == snapshot.addresses
                && memo.config == *config
                && memo.pods_known == pods.known
                && memo
                    .pods_asked
                    .iter()
                    .all(|(ip, answer)| pod_owner(*ip) == *answer);
            let rest_unchanged = others_unchanged
                && memo.nft_generation == nft_generation
                && nft_generation.is_some_and(|g| g.is_some());
            if others_unchanged && !rest_unchanged {
                changed = match (memo.nft_origin, memo.nft_generation, nft_changes) {
                    (Some(origin), Some(Some(from)), Some(log)) if nft_generation.is_some() => {
                        log.since(origin, from)
                    }
                    _ => None,
                };
                if changed.is_some() {
                    // A check answering from its memory may not ask again for a pod it named.
                    asked_before = memo.pods_asked.clone();
                }
            }
            if rest_unchanged {
                if memo.intent_generation != intent_generation {
                    let context = CheckContext {
                        snapshot,
                        config,
                        promisc_held: &[],
                        pod_owner,
                        pods_known: pods.known,
                        service_intent,
                        api_service: None,
                    };
                    memo.intent_findings =
                        detect::run_some(Inputs::Ruleset, &context, reads_intent);
                    memo.intent_generation = intent_generation;
                }
                let mut findings = memo.findings.clone();
                findings.extend(memo.intent_findings.iter().cloned());
                return findings;
            }
        }
        if changed.is_none() {
            self.memories.clear();
        }
        let asked = RefCell::new(asked_before);
        let recording = |ip: IpAddr| {
            let answer = pod_owner(ip);
            asked.borrow_mut().push((ip, answer.clone()));
            answer
        };
        let context = CheckContext {
            snapshot,
            config,
            promisc_held: &[],
            pod_owner: &recording,
            pods_known: pods.known,
            service_intent,
            api_service: None,
        };
        let findings = detect::run_some_incremental(
            Inputs::Ruleset,
            &context,
            |c| !reads_intent(c),
            changed.as_ref(),
            &mut self.memories,
        );
        let intent_findings = detect::run_some(Inputs::Ruleset, &context, reads_intent);
        let mut pods_asked = asked.into_inner();
        pods_asked.sort();
        pods_asked.dedup();
        self.last = Some(Memo {
            nft_generation,
            nft_origin: nft_changes.map(|log| log.origin),
            legacy,
            listeners: snapshot.listeners.clone(),
            addresses: snapshot.addresses.clone(),
            config: config.clone(),
            pods_known: pods.known,
            pods_asked,
            intent_generation,
            findings: findings.clone(),
            intent_findings: intent_findings.clone(),
        });
        let mut all = findings;
        all.extend(intent_findings);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::ruleset::Backend;
    use crate::model::service_intent::IntentIndex;
    use std::cell::Cell;

    /// kube-proxy's iptables mode for `shop/web:http` with one endpoint, 10.42.0.7:8080.
    const WEB: &str = r#"
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.43.0.50/32 -p tcp -m comment --comment "shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -m comment --comment "shop/web:http -> 10.42.0.7:8080" -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment "shop/web:http" -m tcp -j DNAT --to-destination 10.42.0.7:8080
"#;

    fn index_with(endpoint: &str) -> IntentIndex {
        let mut index = IntentIndex::default();
        index.replace_services(vec![serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.50", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()]);
        index.replace_slices(vec![slice(endpoint)]);
        index
    }

    fn slice(endpoint: &str) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [endpoint]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn hijack_memory(memo: &RulesetMemo) -> &crate::detect::hostport_hijack::WalkMemory {
        memo.memories
            .get(&crate::model::finding::CheckId::HOSTPORT_HIJACK)
            .and_then(|m| m.as_ref())
            .and_then(|m| m.downcast_ref())
            .expect("the hijack check's memory")
    }

    /// The nat table of a node whose PREROUTING may jump to a portmap-style hijack of 6443.
    fn nat_with(hijack: bool) -> crate::model::ruleset::Table {
        let mut text = String::from(
            ":PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n\
             -A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.9:6443\n",
        );
        text.push_str(WEB.trim_start().split_once('\n').unwrap().1);
        if hijack {
            text.push_str("-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n");
        }
        iptables_table(Backend::Nft, "nat", &text)
    }

    #[test]
    fn after_an_nftables_change_the_log_names_the_incremental_findings_equal_a_full_run() {
        use crate::model::ruleset_changes::{RulesetChanges, Touched};
        use crate::model::snapshot::LocalAddress;
        let config = Config::default();
        let mut log = RulesetChanges::new(42, 1);
        let mut memo = RulesetMemo::default();
        for (generation, hijack) in [(1, false), (2, true), (3, true), (4, false), (5, true)] {
            let table = nat_with(hijack);
            if generation > 1 {
                log.record(
                    generation,
                    vec![Touched::Chain(table.id.clone(), "PREROUTING".into())],
                );
            }
            let mut snapshot = snapshot_with(Some(vec![table]), None);
            if let Some(ruleset) = snapshot.nftables.as_mut() {
                Arc::make_mut(ruleset).generation = Some(generation);
            }
            snapshot.addresses = Some(vec![LocalAddress {
                address: "192.168.1.10".parse().unwrap(),
                prefix: 24,
                ifindex: 2,
            }]);
            snapshot.nft_changes = Some(Arc::new(log.clone()));
            let full = detect::run_checks(&snapshot, &config, &[]);
            let remembered = memo.findings(&snapshot, &config, Pods::unknown(), None);
            assert_eq!(remembered, full, "generation {generation}");
            assert_eq!(remembered.len(), usize::from(hijack), "{remembered:#?}");
        }
        // The hijack check went on from what it walked in the previous pass.
        assert!(hijack_memory(&memo).went_on_from_a_previous_walk());
        // Another full read (a new log origin): the memory starts afresh.
        let mut snapshot = snapshot_with(Some(vec![nat_with(true)]), None);
        if let Some(ruleset) = snapshot.nftables.as_mut() {
            Arc::make_mut(ruleset).generation = Some(6);
        }
        snapshot.addresses = Some(vec![LocalAddress {
            address: "192.168.1.10".parse().unwrap(),
            prefix: 24,
            ifindex: 2,
        }]);
        // (a log that would answer for generation 5, but of another read)
        let mut other_read = RulesetChanges::new(43, 5);
        other_read.record(6, Vec::new());
        snapshot.nft_changes = Some(Arc::new(other_read));
        assert_eq!(
            memo.findings(&snapshot, &config, Pods::unknown(), None),
            detect::run_checks(&snapshot, &config, &[])
        );
        assert!(!hijack_memory(&memo).went_on_from_a_previous_walk());
    }

    #[test]
    fn a_change_of_the_intent_alone_reruns_the_checks_that_read_it() {
        let snapshot = snapshot_with(Some(vec![iptables_table(Backend::Nft, "nat", WEB)]), None);
        let config = Config::default();
        let asked = Cell::new(0);
        let pod_owner = |_ip: IpAddr| {
            asked.set(asked.get() + 1);
            None
        };
        let pods = Pods {
            owner: &pod_owner,
            known: false,
        };
        let mut memo = RulesetMemo::default();
        let mut index = index_with("10.42.0.7");
        let in_step = memo.findings(&snapshot, &config, pods, Some(&index.view()));
        assert!(in_step.is_empty(), "{in_step:#?}");
        // the cluster moves the endpoint; kube-proxy's rules stay
        index.apply_slice(slice("10.42.3.3"));
        let drift = memo.findings(&snapshot, &config, pods, Some(&index.view()));
        assert_eq!(drift.len(), 1, "{drift:#?}");
        assert_eq!(drift[0].subject, "shop/web:http/tcp");
        // nothing moved: the same answer from the memo
        let again = memo.findings(&snapshot, &config, pods, Some(&index.view()));
        assert_eq!(again, drift);
        // the cluster goes back: the finding goes with it
        index.apply_slice(slice("10.42.0.7"));
        assert!(memo
            .findings(&snapshot, &config, pods, Some(&index.view()))
            .is_empty());
        // without the intent (node-local) nothing is judged
        assert!(memo.findings(&snapshot, &config, pods, None).is_empty());
    }
}
