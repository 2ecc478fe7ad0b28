//! End-to-end tests of `netmend run` with the Kubernetes API: the real binary in a node
//! namespace, the project's fake API server (`netmend_e2e::fake_apiserver`) listening on
//! 127.0.0.1 inside the same namespace, a kubeconfig pointing at it, `--node-name node-a` and
//! `POD_NAMESPACE=netmend`. The fault is a real one the agent mends: a CNI portmap DNAT that
//! hijacks the kubelet's port 10250 to a pod (not the API server's port, so the contract's
//! exception for faults that cut the node off from the API does not apply).
//!
//! What the cluster sees is read from the fake (the Node's conditions, Events, Leases, the log of
//! requests); what the agent did is read from the rules and its HTTP API.
//!
//! Over 500 lines: one node fixture shared by every test of the cluster side, each test one
//! promise of the contract (conditions, events, fix slots, API down, opt-out, patch rate).

use netmend_e2e::fake_apiserver::store::now_micro_timestamp;
use netmend_e2e::fake_apiserver::{
    objects, FakeApiServer, Fault, PatchFormat, EVENTS, LEASES, NAMESPACES, NODES, PODS,
};
use netmend_e2e::{kube_proxy_ruleset, require_tool, wait_for, Background, NetNs};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NODE: &str = "node-a";
const NAMESPACE: &str = "netmend";
const SLOT: &str = "netmend-fix-slot-0";
const CONDITION: &str = "NetmendHostportHijack";
const CHAIN: &str = "CNI-DN-7d2f0c41e9b3a5c86f14d";
/// A hostPort DNAT of the kubelet's port to the pod `default/hijacker`.
const HIJACK: &str = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-7d2f0c41e9b3a5c86f14d - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"5b1e09c2\\\"\" -m multiport --dports 10250 -j CNI-DN-7d2f0c41e9b3a5c86f14d\n-A CNI-DN-7d2f0c41e9b3a5c86f14d -p tcp -m tcp --dport 10250 -j DNAT --to-destination 10.42.0.244:10250\nCOMMIT\n";
const REMOVE_HIJACK: &str = "iptables-nft -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT && iptables-nft -t nat -F CNI-HOSTPORT-DNAT && iptables-nft -t nat -X CNI-HOSTPORT-DNAT && iptables-nft -t nat -F CNI-DN-7d2f0c41e9b3a5c86f14d && iptables-nft -t nat -X CNI-DN-7d2f0c41e9b3a5c86f14d";

/// Short timeouts so that slots expire within a test: requests 1 s, slots 3 s.
const KUBE_TIMING: &str = "kubernetes:\n  requestTimeout: 1s\n  slotLease: 3s\n";

fn dry_run() -> String {
    format!("mode: dry-run\n{KUBE_TIMING}")
}

fn enforce() -> String {
    format!("mode: enforce\nfixes:\n  remove-hijack-rule: {{ enabled: true, confirmFor: 0s }}\n{KUBE_TIMING}")
}

/// Clears the flag when dropped, also when a test fails: a helper thread looping on it stops.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A node namespace with a small kube-proxy ruleset, the fake API listening inside it with the
/// node registered by its kubelet, and the agent (once started) pointed at it.
struct KubeNode {
    // Dropped in this order: the agent, then its API, then the namespace.
    agent: Option<Background>,
    api: FakeApiServer,
    ns: NetNs,
    port: u16,
    dir: PathBuf,
}

impl KubeNode {
    fn new(tag: &str, port: u16) -> KubeNode {
        for tool in ["iptables-nft-restore", "iptables-nft", "nsenter"] {
            require_tool(tool);
        }
        let ns = NetNs::new(tag);
        ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 192.168.1.233/24 dev eth0 && ip link set eth0 up")
            .unwrap();
        ns.restore("iptables-nft-restore", &kube_proxy_ruleset(20, 2))
            .unwrap();
        let api = FakeApiServer::start_in(&ns.path());
        api.put(&NAMESPACES, objects::namespace(NAMESPACE));
        let mut node = objects::node(NODE);
        // Another tool's condition, which netmend must leave alone like kubelet's.
        node["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock", "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}));
        api.put(&NODES, node);
        api.put(
            &PODS,
            objects::pod("default", "hijacker", NODE, "10.42.0.244"),
        );
        api.put(
            &PODS,
            objects::pod("default", "elsewhere", "node-b", "10.42.1.9"),
        );
        let dir = std::env::temp_dir().join(format!("netmend-kube-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE)
            .unwrap();
        KubeNode {
            agent: None,
            api,
            ns,
            port,
            dir,
        }
    }

    fn write_config(&self, text: &str) {
        let tmp = self.dir.join("config.yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.join("config.yaml")).unwrap();
    }

    /// Starts the agent with `config` and waits until it is ready; with `connected`, also until
    /// it says the API is connected.
    fn start(&mut self, config: &str, connected: bool) {
        self.write_config(config);
        self.agent = Some(
            self.ns
                .spawn_netmend_on_cluster(&self.dir, self.port, NODE, NAMESPACE),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self
                .agent
                .as_mut()
                .and_then(|a| a.0.try_wait().ok().flatten())
            {
                panic!("the agent exited at start ({exit}); log:\n{}", self.log());
            }
            if matches!(self.ns.http_get(self.port, "/readyz"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent is not ready after 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if connected {
            self.wait("the API connected", Duration::from_secs(20), || {
                (self.status()["kubernetes"]["connected"] == true).then_some(())
            });
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let (code, body) = self.ns.http_get(self.port, "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    fn metrics(&self) -> String {
        self.ns
            .http_get(self.port, "/metrics")
            .expect("GET /metrics")
            .1
    }

    /// The value of the metric sample `sample` (name and labels, as printed).
    fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }

    /// Polls `f` until it answers; on timeout fails showing the agent's status and log.
    fn wait<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, f).unwrap_or_else(|| {
            let status = self
                .ns
                .http_get(self.port, "/status")
                .map(|(_, b)| b)
                .unwrap_or_default();
            panic!(
                "timed out waiting for {what}\nstatus: {status}\nnode: {:#}\nlog:\n{}",
                self.node(),
                self.log()
            )
        })
    }

    fn node(&self) -> Value {
        self.api.get(&NODES, "", NODE).expect("the node exists")
    }

    fn condition(&self, kind: &str) -> Option<Value> {
        self.node()["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
    }

    fn inject_hijack(&self) {
        self.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    }

    fn remove_hijack(&self) {
        self.ns.sh(REMOVE_HIJACK).unwrap();
    }

    fn hijack_present(&self) -> bool {
        self.ns
            .sh("iptables-nft-save -t nat")
            .unwrap()
            .contains(CHAIN)
    }

    fn wait_mended(&self) {
        self.wait("the hijack mended", Duration::from_secs(20), || {
            (!self.hijack_present()).then_some(())
        });
    }

    /// The hostport-hijack finding on /status, when there is one.
    fn finding(&self) -> Option<Value> {
        self.status()["findings"]
            .as_array()?
            .iter()
            .find(|f| f["check"] == "hostport-hijack")
            .cloned()
    }

    fn skipped_no_slot(&self) -> f64 {
        self.metric(
            "netmend_fix_attempts_total{fix=\"remove-hijack-rule\",outcome=\"skipped_no_slot\"}",
        )
        .unwrap_or(0.0)
    }

    /// Events (events.k8s.io) about this node, in any namespace.
    fn events(&self) -> Vec<Value> {
        self.api
            .list(&EVENTS, None)
            .into_iter()
            .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == NODE)
            .collect()
    }

    fn events_with_reason(&self, reason: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    /// Holds this node's agent to its word: `/healthz` answers 200 for `span`.
    fn stays_healthy(&self, span: Duration) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            let (code, body) = self
                .ns
                .http_get(self.port, "/healthz")
                .expect("GET /healthz");
            assert_eq!(code, 200, "{body}\nlog:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The hijack stays in place for `span` (the agent holds back).
    fn hijack_stays(&self, span: Duration, why: &str) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            assert!(
                self.hijack_present(),
                "the hijack was mended although {why}\nstatus: {:#}\nlog:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_condition_is_raised_and_cleared_and_kubelets_ready_stays_untouched() {
    let mut node = KubeNode::new("kube-cond", 9830);
    let before = node.node()["status"]["conditions"].clone();
    node.start(&dry_run(), true);

    // Every enabled check has its condition, False while it finds nothing.
    let clear = node.wait("the condition False", Duration::from_secs(20), || {
        node.condition(CONDITION).filter(|c| c["status"] == "False")
    });
    assert_eq!(clear["reason"], "NoHijack", "{clear:#}");
    assert!(clear["lastHeartbeatTime"].is_string(), "{clear:#}");
    assert!(node.condition("NetmendCiliumStaleBackupChain").is_some());

    node.inject_hijack();
    let raised = node.wait("the condition True", Duration::from_secs(20), || {
        node.condition(CONDITION).filter(|c| c["status"] == "True")
    });
    assert_eq!(raised["reason"], "HijackPresent", "{raised:#}");
    let message = raised["message"].as_str().unwrap();
    assert!(message.contains(CHAIN), "{message}");
    assert!(message.chars().count() <= 1024);
    // The pod behind the DNAT is named from the watch of this node's pods.
    let finding = node.finding().expect("the finding on /status");
    assert_eq!(
        finding["evidence"]["pod"], "default/hijacker",
        "{finding:#}"
    );

    node.remove_hijack();
    node.wait("the condition False again", Duration::from_secs(20), || {
        node.condition(CONDITION)
            .filter(|c| c["status"] == "False" && c["reason"] == "NoHijack")
    });

    // kubelet's and the other tool's conditions are exactly as they were.
    let after = node.node()["status"]["conditions"].clone();
    for kind in [
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "Ready",
        "KernelDeadlock",
    ] {
        let find = |all: &Value| {
            all.as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == kind)
                .cloned()
        };
        assert_eq!(find(&after), find(&before), "{kind} changed");
    }
    // netmend wrote only its own conditions, through strategic merge patches of the status.
    for condition in after.as_array().unwrap() {
        let kind = condition["type"].as_str().unwrap();
        assert!(
            kind.starts_with("Netmend") || before.to_string().contains(kind),
            "{kind}"
        );
    }
    let writes: Vec<_> = node
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/nodes") && r.method != "GET")
        .collect();
    assert!(!writes.is_empty());
    for write in &writes {
        assert_eq!(
            (write.method.as_str(), write.path.as_str()),
            ("PATCH", "/api/v1/nodes/node-a/status"),
            "{write:?}"
        );
        assert_eq!(
            write.content_type.as_deref(),
            Some("application/strategic-merge-patch+json"),
            "{write:?}"
        );
        for condition in write.json().unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
        {
            assert!(
                condition["type"].as_str().unwrap().starts_with("Netmend"),
                "{condition}"
            );
        }
    }
}

#[test]
fn a_disabled_check_takes_its_condition_off_the_node() {
    let mut node = KubeNode::new("kube-gone", 9831);
    node.start(&dry_run(), true);
    node.wait("the condition", Duration::from_secs(20), || {
        node.condition(CONDITION)
    });
    node.write_config(&format!(
        "{}checks:\n  hostport-hijack:\n    enabled: false\n",
        dry_run()
    ));
    node.wait("the condition removed", Duration::from_secs(20), || {
        node.condition(CONDITION).is_none().then_some(())
    });
    assert!(node.condition("Ready").is_some());
    assert!(node.condition("NetmendCiliumStaleBackupChain").is_some());
}

/// Writes (creates and patches) of Events so far.
fn event_writes(node: &KubeNode) -> usize {
    node.api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/events") || r.path.contains("/events/"))
        .filter(|r| r.method != "GET")
        .count()
}

#[test]
fn findings_and_fixes_are_events_folded_into_series() {
    let mut node = KubeNode::new("kube-events", 9832);
    node.start(&dry_run(), true);

    // A finding that stays for many passes is one Event, written once.
    node.inject_hijack();
    node.wait("the finding", Duration::from_secs(20), || node.finding());
    let raised = node.wait("FindingRaised", Duration::from_secs(10), || {
        let raised = node.events_with_reason("FindingRaised");
        (!raised.is_empty()).then_some(raised)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        event_writes(&node),
        1,
        "one write for one finding over many passes"
    );
    let event = &raised[0];
    assert_eq!(event["metadata"]["namespace"], "default", "{event:#}");
    assert_eq!(
        event["reportingController"], "netmend.io/agent",
        "{event:#}"
    );
    assert_eq!(event["regarding"]["name"], NODE);
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("hostport-hijack") && note.contains(CHAIN),
        "{note}"
    );

    // Raised and cleared twice more: still one Event per reason, its series counting.
    node.remove_hijack();
    node.wait("the finding gone", Duration::from_secs(20), || {
        node.finding().is_none().then_some(())
    });
    for _ in 0..2 {
        node.inject_hijack();
        node.wait("the finding", Duration::from_secs(20), || node.finding());
        node.remove_hijack();
        node.wait("the finding gone", Duration::from_secs(20), || {
            node.finding().is_none().then_some(())
        });
    }
    for reason in ["FindingRaised", "FindingCleared"] {
        node.wait(
            &format!("{reason} in a series"),
            Duration::from_secs(10),
            || {
                let found = node.events_with_reason(reason);
                (found.len() == 1 && found[0]["series"]["count"].as_u64() >= Some(2)).then_some(())
            },
        );
    }

    // Enforced: the fix's outcomes are Events too.
    node.write_config(&enforce());
    node.inject_hijack();
    node.wait_mended();
    for reason in ["FixApplied", "FixVerified"] {
        let found = node.wait(reason, Duration::from_secs(20), || {
            let found = node.events_with_reason(reason);
            (!found.is_empty()).then_some(found)
        });
        let note = found[0]["note"].as_str().unwrap();
        assert!(note.contains("remove-hijack-rule"), "{reason}: {note}");
    }
}

#[test]
fn a_slot_held_by_another_node_blocks_the_fix_until_it_is_freed() {
    let mut node = KubeNode::new("kube-slot", 9833);
    node.api
        .put(&LEASES, objects::lease(NAMESPACE, SLOT, "node-b", 3));
    node.start(&enforce(), true);

    // node-b renews its slot every half second while the test holds it.
    let renewing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let renewer = scope.spawn(|| {
            while renewing.load(Ordering::SeqCst) {
                node.api
                    .modify(&LEASES, NAMESPACE, SLOT, |l| {
                        l["spec"]["renewTime"] = json!(now_micro_timestamp())
                    })
                    .unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let _stop = StopOnDrop(&renewing);
        node.inject_hijack();
        node.wait("skipped_no_slot", Duration::from_secs(20), || {
            (node.skipped_no_slot() >= 1.0).then_some(())
        });
        let finding = node.finding().expect("the finding");
        assert_eq!(finding["fix"]["state"], "cooldown", "{finding:#}");
        // Held for twice the slot's lease: renewed, so never free.
        node.hijack_stays(Duration::from_secs(6), "node-b held the only slot");
        assert_eq!(
            node.api.get(&LEASES, NAMESPACE, SLOT).unwrap()["spec"]["holderIdentity"],
            "node-b"
        );
        drop(_stop);
        renewer.join().unwrap();
    });

    // node-b is done and frees the slot: node-a takes it, mends, and gives it back.
    let freed_at = Instant::now();
    node.api
        .modify(&LEASES, NAMESPACE, SLOT, |l| {
            l["spec"]["holderIdentity"] = Value::Null
        })
        .unwrap();
    node.wait_mended();
    let took: Vec<_> = node
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(SLOT) && matches!(r.method.as_str(), "PUT" | "PATCH"))
        .filter(|r| r.status == Some(200))
        .filter(|r| {
            r.json()
                .is_some_and(|b| b["spec"]["holderIdentity"] == NODE)
        })
        .collect();
    assert!(!took.is_empty(), "node-a never took the slot");
    assert!(
        took.iter().all(|r| r.at >= freed_at),
        "node-a wrote itself into the slot while node-b held it"
    );
    node.wait("the slot given back", Duration::from_secs(20), || {
        let lease = node.api.get(&LEASES, NAMESPACE, SLOT)?;
        let holder = &lease["spec"]["holderIdentity"];
        (holder.is_null() || holder == "").then_some(())
    });
    assert_eq!(
        node.metric("netmend_fix_attempts_total{fix=\"remove-hijack-rule\",outcome=\"applied\"}"),
        Some(1.0)
    );
}

#[test]
fn a_slot_its_holder_stopped_renewing_expires_and_the_fix_goes_ahead() {
    let mut node = KubeNode::new("kube-expiry", 9834);
    // node-b took the slot and died: nobody renews it.
    node.api
        .put(&LEASES, objects::lease(NAMESPACE, SLOT, "node-b", 3));
    node.start(&enforce(), true);
    node.inject_hijack();
    node.wait_mended();
    let lease = node.api.get(&LEASES, NAMESPACE, SLOT).unwrap();
    assert_ne!(lease["spec"]["holderIdentity"], "node-b", "{lease:#}");
}

#[test]
fn with_the_api_down_nothing_is_fixed_the_agent_stays_healthy_and_mends_once_it_is_back() {
    let mut node = KubeNode::new("kube-down", 9835);
    node.start(&enforce(), true);
    node.api.stop_listening();
    node.wait("the API seen down", Duration::from_secs(20), || {
        (node.status()["kubernetes"]["connected"] == false).then_some(())
    });
    node.inject_hijack();
    node.wait("skipped_no_slot", Duration::from_secs(20), || {
        (node.skipped_no_slot() >= 1.0).then_some(())
    });
    node.stays_healthy(Duration::from_secs(4));
    assert!(
        node.hijack_present(),
        "mended without a slot while the API was down"
    );
    let status = node.status();
    assert!(
        status["kubernetes"]["reason"].is_string(),
        "{:#}",
        status["kubernetes"]
    );

    node.api.start_listening();
    node.wait_mended();
    node.wait("the API connected again", Duration::from_secs(20), || {
        (node.status()["kubernetes"]["connected"] == true).then_some(())
    });
}

#[test]
fn with_the_api_refusing_or_hanging_nothing_is_fixed_and_nothing_stalls() {
    let mut node = KubeNode::new("kube-hang", 9836);
    node.start(&enforce(), true);
    // The slot is forbidden (403): no slot, no fix.
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
    node.api.fail(Fault::status(403).path(&leases));
    node.inject_hijack();
    node.wait("skipped_no_slot", Duration::from_secs(20), || {
        (node.skipped_no_slot() >= 1.0).then_some(())
    });
    node.hijack_stays(Duration::from_secs(2), "the slot was forbidden");
    // Then every new request hangs past the client's timeout (open watches stay open, silent).
    node.api.set_faults(vec![Fault::hang()]);
    node.stays_healthy(Duration::from_secs(4));
    assert!(
        node.hijack_present(),
        "mended without a slot while the API hung"
    );
    assert_eq!(node.status()["findings"].as_array().unwrap().len(), 1);
    node.api.clear_faults();
    node.wait_mended();
}

#[test]
fn the_opt_out_label_holds_the_node_back() {
    let mut node = KubeNode::new("kube-optout", 9837);
    node.start(&enforce(), true);
    // A human labels the node, as `kubectl label node node-a netmend.io/mode=dry-run` does.
    node.api
        .patch(
            &NODES,
            "",
            NODE,
            PatchFormat::StrategicMerge,
            &json!({"metadata": {"labels": {"netmend.io/mode": "dry-run"}}}),
        )
        .unwrap();
    node.wait("the label seen", Duration::from_secs(20), || {
        (node.status()["kubernetes"]["nodeMode"] == "dry-run").then_some(())
    });
    node.inject_hijack();
    let finding = node.wait("the finding in dry-run", Duration::from_secs(20), || {
        node.finding().filter(|f| f["fix"]["state"] == "dry-run")
    });
    assert!(
        finding["fix"]["detail"]
            .as_str()
            .unwrap()
            .contains("netmend.io/mode=dry-run"),
        "{finding:#}"
    );
    node.hijack_stays(Duration::from_secs(3), "the node is labelled dry-run");
    assert!(
        !node
            .api
            .requests()
            .iter()
            .any(|r| r.path.contains("/leases") && r.method != "GET"),
        "a dry-run node asked for a fix slot"
    );

    // `off`: no checks at all.
    node.api
        .patch(
            &NODES,
            "",
            NODE,
            PatchFormat::StrategicMerge,
            &json!({"metadata": {"labels": {"netmend.io/mode": "off"}}}),
        )
        .unwrap();
    node.wait(
        "no findings with the node off",
        Duration::from_secs(20),
        || (node.status()["findings"] == json!([])).then_some(()),
    );
    assert!(node.hijack_present());

    // The label goes: the fix is applied.
    node.api
        .patch(
            &NODES,
            "",
            NODE,
            PatchFormat::StrategicMerge,
            &json!({"metadata": {"labels": {"netmend.io/mode": null}}}),
        )
        .unwrap();
    node.wait_mended();
}

#[test]
fn a_churning_ruleset_gets_at_most_about_one_status_patch_a_second() {
    let mut node = KubeNode::new("kube-churn", 9838);
    node.start(&dry_run(), true);
    node.wait("the first conditions", Duration::from_secs(20), || {
        node.condition(CONDITION)
    });
    // For 6 s: a harmless rule added and removed 20 times a second, and the hijack flapping
    // every 200 ms (five condition changes a second).
    let hijack_file = node.dir.join("hijack.rules");
    std::fs::write(&hijack_file, HIJACK).unwrap();
    let churn = node.ns.spawn(
        "sh -c 'while true; do iptables-nft -t filter -A INPUT -p tcp --dport 4242 -j ACCEPT; sleep 0.05; iptables-nft -t filter -D INPUT -p tcp --dport 4242 -j ACCEPT; sleep 0.05; done'",
    );
    let flap = node.ns.spawn(&format!(
        "sh -c 'while true; do iptables-nft-restore -w --noflush < {}; sleep 0.2; {REMOVE_HIJACK}; sleep 0.2; done'",
        hijack_file.display()
    ));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let end = Instant::now();
    drop(flap);
    drop(churn);
    let patches = node
        .api
        .requests_to("PATCH", "/api/v1/nodes/node-a/status")
        .into_iter()
        .filter(|r| r.at >= start && r.at <= end)
        .count();
    let seconds = (end - start).as_secs_f64().ceil() as usize;
    assert!(
        patches <= seconds + 1,
        "{patches} status patches in {seconds} s of churn"
    );
    assert!(
        patches >= 2,
        "the flapping hijack was never reported ({patches} patches)"
    );
    // The events of the flapping finding are folded: one object per reason.
    assert!(node.events_with_reason("FindingRaised").len() <= 1);
    assert!(node.events_with_reason("FindingCleared").len() <= 1);
    assert_eq!(node.ns.http_get(node.port, "/healthz").unwrap().0, 200);
}
