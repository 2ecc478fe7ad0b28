//! The engine against a scripted cluster: the fix slot gate, the node's opt-out label, what is
//! published after a pass (check states, events on transitions only), owner names, and what
//! `/status`, the metrics and readiness show of the API connection. Test-only; over 500 lines
//! because each scenario builds its own node (ruleset, links, ARP counters) in the open.

use crate::config::Config;
use crate::detect::test_support::{iptables_table, snapshot_with};
use crate::http::{ConfigState, Shared};
use crate::journal::Journal;
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::model::l2::{
    ArpCounters, Link, MacAddr, OperState, TargetCounts, ARPHRD_ETHER, IFF_BROADCAST, IFF_UP,
};
use crate::model::ruleset::Backend;
use crate::model::snapshot::{LocalAddress, NodeSnapshot};
use crate::runtime::agent::{ConfigSource, Engine};
use crate::runtime::cluster::{Connection, NodeEvent, NodeMode, SlotDecision};
use crate::runtime::fake::{FakeNode, ScriptedCluster};
use crate::runtime::ActError;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

struct Rig {
    engine: Engine<FakeNode, FakeNode>,
    node: FakeNode,
    cluster: ScriptedCluster,
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl Rig {
    fn new(tag: &str, snapshot: NodeSnapshot, config: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!(
            "netmend-engine-cluster-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let node = FakeNode::new(snapshot);
        let cluster = ScriptedCluster::default();
        let shared = Arc::new(Shared::new("n".into(), ConfigState::default()));
        let engine = Engine::new(
            Config::from_yaml(config).unwrap(),
            ConfigSource::new(None, None),
            Journal::open(&dir).unwrap(),
            shared.clone(),
            node.clone(),
            node.clone(),
        )
        .with_cluster(Box::new(cluster.clone()));
        Rig {
            engine,
            node,
            cluster,
            shared,
            dir,
        }
    }

    fn pass(&mut self, secs: u64) {
        self.engine.pass(t(secs));
    }

    fn applied(&self) -> usize {
        self.node.0.borrow().applied.len()
    }

    /// The first finding's fix state and detail on /status.
    fn fix(&self) -> Option<(String, String)> {
        let doc = self.shared.status.read().unwrap();
        doc.report
            .findings
            .first()
            .and_then(|f| f.fix.as_ref())
            .map(|f| (f.state.as_str().to_string(), f.detail.clone()))
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.shared.status.read().unwrap()).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn stale_node() -> NodeSnapshot {
    snapshot_with(
        Some(vec![iptables_table(
            Backend::Nft,
            "nat",
            ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\n",
        )]),
        None,
    )
}

const ENFORCE_FLUSH: &str = "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 0s, cooldown: 0s }\n";

/// A ServiceLB pod's hostPort 6443 published by CNI portmap: it takes the API server's port.
const PORTMAP_6443: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:CNI-HOSTPORT-DNAT -
:CNI-HOSTPORT-SETMARK -
:CNI-DN-3499088e1adba268a4e0c -
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"8e92d16fab\"" -m multiport --dports 6443 -j CNI-DN-3499088e1adba268a4e0c
-A CNI-DN-3499088e1adba268a4e0c -s 10.42.0.0/24 -p tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-3499088e1adba268a4e0c -p tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
"#;

fn hijack_node(ports_rules: &str) -> NodeSnapshot {
    let mut snapshot = snapshot_with(
        Some(vec![iptables_table(Backend::Nft, "nat", ports_rules)]),
        None,
    );
    snapshot.addresses = Some(vec![LocalAddress {
        address: "192.168.1.233".parse().unwrap(),
        prefix: 24,
        ifindex: 2,
    }]);
    snapshot
}

const ENFORCE_HIJACK: &str =
    "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true, confirmFor: 0s }\n";

#[test]
fn no_slot_means_skipped_no_slot_and_nothing_applied_until_one_is_free() {
    let mut rig = Rig::new("noslot", stale_node(), ENFORCE_FLUSH);
    rig.cluster.script().slots.push_back(SlotDecision::NoSlot {
        reason: "all 1 slots taken (netmend-fix-slot-0 by node-b)".into(),
    });
    rig.pass(0);
    assert_eq!(rig.applied(), 0);
    let (state, detail) = rig.fix().unwrap();
    assert_eq!(state, "cooldown");
    assert!(
        detail.contains(
            "not applied: no fix slot (all 1 slots taken (netmend-fix-slot-0 by node-b))"
        ),
        "{detail}"
    );
    // The refusal holds for a few seconds without asking the API again, counted once.
    rig.pass(1);
    assert_eq!(rig.cluster.script().acquired.len(), 1);
    let text = rig.shared.metrics.encode();
    assert!(
        text.contains(
            "netmend_fix_attempts_total{fix=\"flush-stale-chain\",outcome=\"skipped_no_slot\"} 1"
        ),
        "{text}"
    );
    assert_eq!(rig.applied(), 0);
    // A slot frees up: the fix runs under it, is verified at once, and the slot goes back.
    rig.cluster
        .script()
        .slots
        .push_back(SlotDecision::Held { index: 0 });
    rig.pass(10);
    assert_eq!(rig.applied(), 1);
    assert_eq!(rig.fix().unwrap().0, "verified");
    let script = rig.cluster.script();
    assert_eq!(
        script.acquired,
        vec![
            (FixId::FLUSH_STALE_CHAIN, false),
            (FixId::FLUSH_STALE_CHAIN, false)
        ]
    );
    assert_eq!(script.released, 1);
}

#[test]
fn a_blocked_action_gives_the_slot_back() {
    let mut rig = Rig::new("blocked", stale_node(), ENFORCE_FLUSH);
    rig.cluster
        .script()
        .slots
        .push_back(SlotDecision::Held { index: 0 });
    rig.node.0.borrow_mut().fail_next = Some(ActError::Unavailable("no iptables-legacy".into()));
    rig.pass(0);
    assert_eq!(rig.fix().unwrap().0, "blocked");
    assert_eq!(rig.cluster.script().released, 1);
}

#[test]
fn a_fault_that_cuts_off_the_api_is_mended_without_a_slot_and_names_its_pod() {
    let mut rig = Rig::new("cutoff", hijack_node(PORTMAP_6443), ENFORCE_HIJACK);
    {
        let mut script = rig.cluster.script();
        // Every other fix would find the slots taken.
        script.slots.push_back(SlotDecision::NoSlot {
            reason: "the API did not answer".into(),
        });
        script.pods.insert(
            "10.42.0.244".parse().unwrap(),
            "kube-system/svclb-apiproxy-x7k2p".into(),
        );
    }
    rig.pass(0);
    assert_eq!(rig.applied(), 1, "{:?}", rig.fix());
    assert_eq!(
        rig.cluster.script().acquired,
        vec![(FixId::REMOVE_HIJACK_RULE, true)]
    );
    assert_eq!(rig.cluster.script().released, 0, "no slot was taken");
    // The journal and the events name what happened.
    let events = rig.cluster.events();
    let raised = events
        .iter()
        .find_map(|e| match e {
            NodeEvent::FindingRaised { message, .. } => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        raised.contains("pod kube-system/svclb-apiproxy-x7k2p with hostPort 6443"),
        "{raised}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        NodeEvent::Fix {
            outcome: Outcome::Applied,
            fix: FixId::REMOVE_HIJACK_RULE,
            ..
        }
    )));
}

#[test]
fn a_pod_name_learned_later_reaches_the_finding_without_a_ruleset_change() {
    let config = "checks:\n  hostport-hijack: {}\n";
    let mut rig = Rig::new("podlater", hijack_node(PORTMAP_6443), config);
    rig.pass(0);
    let status = rig.status_json();
    assert!(status["findings"][0]["evidence"].get("pod").is_none());
    assert_eq!(status["findings"][0]["evidence"]["cutsOffApi"], true);
    rig.cluster.script().pods.insert(
        "10.42.0.244".parse().unwrap(),
        "kube-system/svclb-apiproxy-x7k2p".into(),
    );
    rig.pass(1);
    let status = rig.status_json();
    assert_eq!(
        status["findings"][0]["evidence"]["pod"],
        "kube-system/svclb-apiproxy-x7k2p"
    );
}

#[test]
fn a_node_labelled_dry_run_applies_nothing_and_asks_for_no_slot() {
    let mut rig = Rig::new("labeldry", stale_node(), ENFORCE_FLUSH);
    rig.cluster.script().mode = NodeMode::DryRun;
    rig.pass(0);
    rig.pass(1);
    assert_eq!(rig.applied(), 0);
    let (state, detail) = rig.fix().unwrap();
    assert_eq!(state, "dry-run");
    assert!(
        detail.contains("this node is labelled netmend.io/mode=dry-run"),
        "{detail}"
    );
    assert!(rig.cluster.script().acquired.is_empty());
    assert_eq!(rig.status_json()["kubernetes"]["nodeMode"], "dry-run");
    // The label goes: the configuration decides again.
    rig.cluster.script().mode = NodeMode::Configured;
    rig.pass(2);
    assert_eq!(rig.applied(), 1);
    assert!(rig.status_json()["kubernetes"].get("nodeMode").is_none());
}

#[test]
fn a_node_labelled_off_runs_no_check() {
    let mut rig = Rig::new("labeloff", stale_node(), ENFORCE_FLUSH);
    rig.cluster.script().mode = NodeMode::Off;
    rig.pass(0);
    assert_eq!(rig.applied(), 0);
    let status = rig.status_json();
    assert_eq!(status["findings"], serde_json::json!([]));
    assert_eq!(status["kubernetes"]["nodeMode"], "off");
    let script = rig.cluster.script();
    let last = script.published.last().unwrap();
    assert!(last.checks.is_empty(), "{last:?}");
    assert!(last.events.is_empty(), "{last:?}");
}

#[test]
fn events_are_published_on_transitions_only() {
    // Dry-run first: the finding is raised once, however many passes see it.
    let mut rig = Rig::new(
        "events",
        stale_node(),
        "checks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\n",
    );
    for i in 0..3 {
        rig.pass(i);
    }
    let raised = |events: &[NodeEvent]| {
        events
            .iter()
            .filter(|e| matches!(e, NodeEvent::FindingRaised { .. }))
            .count()
    };
    assert_eq!(raised(&rig.cluster.events()), 1);
    assert_eq!(rig.cluster.events().len(), 1, "{:?}", rig.cluster.events());
    let published = rig.cluster.script().published.len();
    assert_eq!(published, 3, "one report per pass");
    // Enforced: applied and verified, then cleared on the next pass, each once.
    rig.engine.config = Config::from_yaml(ENFORCE_FLUSH).unwrap();
    rig.pass(3);
    rig.pass(4);
    rig.pass(5);
    let events = rig.cluster.events();
    let fix_outcomes: Vec<Outcome> = events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Fix { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect();
    assert_eq!(fix_outcomes, vec![Outcome::Applied, Outcome::Verified]);
    assert_eq!(
        events.last(),
        Some(&NodeEvent::FindingCleared {
            check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
            subject: "ip nat OLD_CILIUM_POST_nat".into(),
        })
    );
    assert_eq!(events.len(), 4, "{events:?}");
}

#[test]
fn every_enabled_check_is_reported_and_a_disabled_one_is_absent() {
    let mut rig = Rig::new(
        "disabled",
        stale_node(),
        "checks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\n  promisc-lost: { enabled: false }\n",
    );
    rig.pass(0);
    let script = rig.cluster.script();
    let report = script.published.last().unwrap();
    let checks: Vec<CheckId> = report.checks.iter().map(|c| c.check).collect();
    assert!(!checks.contains(&CheckId::PROMISC_LOST), "{checks:?}");
    assert!(checks.contains(&CheckId::HOSTPORT_HIJACK));
    let stale = report
        .checks
        .iter()
        .find(|c| c.check == CheckId::CILIUM_STALE_BACKUP_CHAIN)
        .unwrap();
    assert!(stale.failing);
    assert_eq!(
        stale.summary,
        "ip nat OLD_CILIUM_POST_nat (flush-stale-chain: dry-run)"
    );
    assert!(report
        .checks
        .iter()
        .filter(|c| c.check != CheckId::CILIUM_STALE_BACKUP_CHAIN)
        .all(|c| !c.failing));
}

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 51);

fn wlan0() -> Link {
    Link {
        ifindex: 3,
        name: "wlan0".into(),
        flags: IFF_UP | IFF_BROADCAST,
        promiscuity: 0,
        operstate: OperState::Up,
        kind: None,
        mac: Some(MacAddr([0xdc, 0xa6, 0x32, 0x11, 0x22, 0x33])),
        link_type: ARPHRD_ETHER,
        mtu: Some(1500),
        parent_ifindex: None,
        link_netnsid: None,
        master: None,
        parent_dev: Some("mmc1:0001:1".into()),
    }
}

fn arp(requests: u64, replies: u64) -> Vec<ArpCounters> {
    let mut counters = ArpCounters::new(3, "wlan0");
    counters.targets.insert(
        VIP,
        TargetCounts {
            requests_received: requests,
            replies_sent: replies,
            ..TargetCounts::default()
        },
    );
    counters.window_ms = 30_000;
    vec![counters]
}

/// ARP for the VIP on wlan0 going unanswered (the window and the counts since start).
fn unanswered_node() -> NodeSnapshot {
    NodeSnapshot {
        links: Some(vec![wlan0()]),
        arp: Some(arp(5, 0)),
        arp_cumulative: Some(arp(5, 0)),
        ..snapshot_with(None, None)
    }
}

#[test]
fn a_fix_awaiting_its_proof_keeps_the_slot_until_the_proof_settles() {
    let mut rig = Rig::new(
        "proof",
        unanswered_node(),
        "mode: enforce\nchecks:\n  arp-unanswered: { targets: [\"192.168.1.51@wlan0!always\"] }\nfixes:\n  set-promisc: { enabled: true, confirmFor: 0s, verifyWithin: 60s }\n",
    );
    rig.cluster
        .script()
        .slots
        .push_back(SlotDecision::Held { index: 0 });
    rig.pass(0);
    assert_eq!(
        rig.node.0.borrow().applied.first().map(|(a, _)| a.clone()),
        Some(FixAction::SetPromisc {
            interface: "wlan0".into(),
            ifindex: 3
        })
    );
    assert_eq!(rig.fix().unwrap().0, "applied");
    assert_eq!(rig.cluster.script().released, 0, "held while verifying");
    // Another pass with the proof still open keeps it.
    rig.pass(5);
    assert_eq!(rig.cluster.script().released, 0);
    // Replies leave: verified, and the slot goes back.
    {
        let mut state = rig.node.0.borrow_mut();
        state.snapshot.arp = Some(arp(5, 3));
        state.snapshot.arp_cumulative = Some(arp(10, 3));
    }
    rig.pass(10);
    assert_eq!(rig.cluster.script().released, 1);
    assert!(rig.cluster.events().iter().any(|e| matches!(
        e,
        NodeEvent::Fix {
            outcome: Outcome::Verified,
            ..
        }
    )));
}

#[test]
fn shutting_down_gives_back_a_slot_held_for_a_pending_proof() {
    let mut rig = Rig::new(
        "shutdown",
        unanswered_node(),
        "mode: enforce\nchecks:\n  arp-unanswered: { targets: [\"192.168.1.51@wlan0!always\"] }\nfixes:\n  set-promisc: { enabled: true, confirmFor: 0s }\n",
    );
    rig.cluster
        .script()
        .slots
        .push_back(SlotDecision::Held { index: 0 });
    rig.pass(0);
    assert_eq!(rig.cluster.script().released, 0);
    rig.engine.shut_down();
    assert_eq!(rig.cluster.script().released, 1);
}

#[test]
fn status_metrics_and_readiness_show_the_api_connection() {
    let mut rig = Rig::new(
        "connection",
        stale_node(),
        "kubernetes: { required: true }\n",
    );
    rig.cluster.script().connection = Connection {
        connected: false,
        reason: Some("GET /api/v1/nodes/n: timed out after 10s".into()),
        ..Connection::default()
    };
    rig.pass(0);
    let why = rig.shared.not_ready().unwrap();
    assert!(why.contains("kubernetes.required"), "{why}");
    assert_eq!(
        rig.status_json()["kubernetes"],
        serde_json::json!({"connected": false, "reason": "GET /api/v1/nodes/n: timed out after 10s"})
    );
    {
        let mut script = rig.cluster.script();
        script.connection = Connection {
            connected: true,
            reason: None,
            slot_held: Some(0),
            ..Connection::default()
        };
        script
            .connection
            .request_errors
            .insert(("patch".into(), "403".into()), 2);
    }
    rig.pass(1);
    assert_eq!(rig.shared.not_ready(), None);
    assert_eq!(
        rig.status_json()["kubernetes"],
        serde_json::json!({"connected": true, "slotHeld": 0})
    );
    let text = rig.shared.metrics.encode();
    for needle in [
        "netmend_kube_up 1",
        "netmend_fix_slot_held 1",
        "netmend_kube_request_errors_total{verb=\"patch\",code=\"403\"} 2",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
}

/// A restarted hostPort pod: the old sandbox's portmap chain (10.42.0.31) first, the new pod's
/// (10.42.0.57) behind it.
const PORTMAP_LEFT_OVER: &str = r#"
:PREROUTING ACCEPT
:CNI-HOSTPORT-DNAT -
:CNI-HOSTPORT-SETMARK -
:CNI-DN-2340674fa9a846ba6cee5 -
:CNI-DN-98502136a6caa3b998bdb -
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"770c07dfd094\"" -m multiport --dports 8126 -j CNI-DN-2340674fa9a846ba6cee5
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"b57a45acaad1\"" -m multiport --dports 8126 -j CNI-DN-98502136a6caa3b998bdb
-A CNI-DN-2340674fa9a846ba6cee5 -s 10.42.0.31/32 -p tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2340674fa9a846ba6cee5 -p tcp --dport 8126 -j DNAT --to-destination 10.42.0.31:8126
-A CNI-DN-98502136a6caa3b998bdb -s 10.42.0.57/32 -p tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-98502136a6caa3b998bdb -p tcp --dport 8126 -j DNAT --to-destination 10.42.0.57:8126
"#;

#[test]
fn a_stale_hostport_is_judged_and_removed_only_while_the_pods_are_known() {
    let config = "mode: enforce\nchecks:\n  hostport-stale: { staleAfter: 0s }\nfixes:\n  remove-stale-hostport: { enabled: true, confirmFor: 0s }\n";
    let node = snapshot_with(
        Some(vec![iptables_table(Backend::Nft, "nat", PORTMAP_LEFT_OVER)]),
        None,
    );
    let mut rig = Rig::new("hpstale", node, config);
    rig.cluster.script().pods.insert(
        "10.42.0.57".parse().unwrap(),
        "monitoring/datadog-agent-x7k2p".into(),
    );
    // The pod watch has not listed the pods yet: a missing pod proves nothing.
    rig.pass(0);
    assert_eq!(rig.status_json()["findings"], serde_json::json!([]));
    assert_eq!(rig.applied(), 0);
    // Listed: the same ruleset is judged again (the memo knows the pods changed), and the
    // re-check right before writing asks the cluster again and finds the same.
    rig.cluster.script().pods_known = true;
    rig.pass(1);
    assert_eq!(rig.applied(), 1, "{:#}", rig.status_json());
    let (action, generation) = rig.node.0.borrow().applied[0].clone();
    let FixAction::RemoveRules {
        rules,
        delete_chains,
        ..
    } = action
    else {
        panic!("{action:?}")
    };
    assert_eq!(delete_chains, vec!["CNI-DN-2340674fa9a846ba6cee5"]);
    assert_eq!(rules.len(), 1);
    assert!(rules[0].spec.contains("770c07dfd094"), "{}", rules[0].spec);
    assert_eq!(
        generation,
        Some(1),
        "one batch with the generation it was read on"
    );
    assert_eq!(rig.fix().unwrap().0, "verified");
}

fn api_service_view(
    leadership: crate::model::api_service::Leadership,
    service_type: &str,
) -> crate::model::api_service::ApiServiceView {
    crate::model::api_service::ApiServiceView {
        leadership,
        service: Some(Some(crate::model::api_service::ServiceShape {
            service_type: service_type.into(),
            annotations: Default::default(),
            resource_version: "9".into(),
        })),
        generation: 1,
    }
}

const KEEP_LOAD_BALANCER: &str = "mode: enforce\nchecks:\n  apiserver-service-type: { enabled: true }\nfixes:\n  restore-service-type: { enabled: true, confirmFor: 0s, cooldown: 0s, maxAttempts: 2 }\n";

#[test]
fn the_api_service_is_kept_by_the_lease_holder_until_resets_open_the_breaker() {
    use crate::model::api_service::Leadership;
    let mut rig = Rig::new("apiservice", stale_node(), KEEP_LOAD_BALANCER);
    rig.cluster.script().api_service = Some(api_service_view(Leadership::Leading, "ClusterIP"));
    rig.pass(0);
    assert!(rig.cluster.script().api_service_followed);
    let reset = |rig: &Rig| {
        let mut script = rig.cluster.script();
        let shape = script
            .api_service
            .as_mut()
            .unwrap()
            .service
            .as_mut()
            .unwrap();
        shape.as_mut().unwrap().service_type = "ClusterIP".into();
    };
    assert_eq!(rig.cluster.script().acted.len(), 1);
    assert_eq!(
        rig.fix().map(|(state, _)| state),
        Some("verified".to_string())
    );
    rig.pass(1);
    assert_eq!(rig.cluster.script().acted.len(), 1, "as wanted: no finding");
    // k3s resets it (a server restarted): restored again, the second attempt in the window.
    reset(&rig);
    rig.pass(2);
    assert_eq!(rig.cluster.script().acted.len(), 2);
    // And again: the breaker opens instead of fighting.
    reset(&rig);
    rig.pass(3);
    rig.pass(4);
    assert_eq!(rig.cluster.script().acted.len(), 2);
    let (state, detail) = rig.fix().unwrap();
    assert_eq!(state, "circuit-open", "{detail}");
    assert!(detail.contains("no longer fixed"), "{detail}");
    let outcomes: Vec<Outcome> = rig
        .cluster
        .events()
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Fix { fix, outcome, .. } if *fix == FixId::RESTORE_SERVICE_TYPE => {
                Some(*outcome)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            Outcome::Verified,
            Outcome::Applied,
            Outcome::Verified,
            Outcome::SkippedCircuitOpen
        ]
    );
}

#[test]
fn a_follower_neither_judges_nor_acts_and_says_who_keeps_the_service() {
    use crate::model::api_service::Leadership;
    let mut rig = Rig::new("apifollower", stale_node(), KEEP_LOAD_BALANCER);
    rig.cluster.script().api_service = Some(api_service_view(
        Leadership::Following {
            holder: "server-1".into(),
        },
        "ClusterIP",
    ));
    rig.pass(0);
    rig.pass(1);
    assert!(rig.cluster.script().acted.is_empty());
    let status = rig.status_json();
    let why = status["notJudged"]["apiserver-service-type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("the agent on server-1 keeps"), "{status}");
    // Disabled: the engine stops following the Service (the Lease is given back).
    rig.engine.config = Config::from_yaml("mode: enforce\n").unwrap();
    rig.pass(2);
    assert!(!rig.cluster.script().api_service_followed);
}
