//! End-to-end tests of `kube-proxy-endpoint-drift` and its fix `cordon-node`: the real
//! `netmend run` binary in a node namespace holding kube-proxy's iptables-mode rules (the
//! project's generator, loaded with the real `iptables-nft-restore`), the project's fake API
//! server in the same namespace serving the matching Services and EndpointSlices, and both
//! changed over time the way a cluster and its kube-proxy change them: a slice moves to a new pod,
//! and kube-proxy's rules follow (within the window: no finding) or never do (a finding naming the
//! Service port and the missing and extra endpoints once it lasted `staleAfter`).
//!
//! The cordon: with the fix enabled the node is cordoned (annotated, under the fix slot, an
//! Event, journaled) and uncordoned once the drift has been gone for `staleAfter`; a node a human
//! cordoned is never touched, before or after.

use netmend_e2e::fake_apiserver::{
    objects, FakeApiServer, PatchFormat, ENDPOINT_SLICES, EVENTS, LEASES, NAMESPACES, NODES,
    SERVICES,
};
use netmend_e2e::{
    kube_proxy_nftables, kube_proxy_ruleset, require_tool, wait_for, Background, NetNs,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODE: &str = "node-a";
const NAMESPACE: &str = "netmend";
const CHECK: &str = "kube-proxy-endpoint-drift";
const CONDITION: &str = "NetmendKubeProxyEndpointDrift";
const ANNOTATION: &str = "netmend.io/cordoned-by";
/// The generator's Services: `ns{i}/svc{i}:http`, two endpoints each.
const SERVICES_COUNT: usize = 6;
const ENDPOINTS: usize = 2;
const STALE_AFTER: Duration = Duration::from_secs(3);

/// The generator's endpoint `j` of Service `i`: 10.42.0.2 + i * endpoints + j.
fn endpoint(i: usize, j: usize) -> String {
    let n = 2 + i * ENDPOINTS + j;
    format!("10.42.{}.{}", n / 256, n % 256)
}

fn service_port(i: usize) -> String {
    format!("ns{}/svc{i}:http/tcp", i % 50)
}

/// The Service `i` of the generator as the API has it.
fn service(i: usize) -> Value {
    let mut s = objects::service(
        &format!("ns{}", i % 50),
        &format!("svc{i}"),
        &format!("10.43.0.{}", 10 + i),
        80,
    );
    s["spec"]["ports"][0]["name"] = json!("http");
    s
}

/// Its EndpointSlice with ready endpoints at `addresses` (port 8080, named `http`).
fn slice(i: usize, addresses: &[String]) -> Value {
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let mut s = objects::endpoint_slice(&format!("ns{}", i % 50), &format!("svc{i}"), &refs, 8080);
    s["ports"][0]["name"] = json!("http");
    s
}

/// A node namespace with kube-proxy's rules, the API with the matching Services and slices, and
/// the agent (once started) pointed at it.
struct DriftNode {
    agent: Option<Background>,
    api: FakeApiServer,
    ns: NetNs,
    dir: PathBuf,
    /// The rules kube-proxy programmed last (the generator's, with endpoints moved).
    rules: String,
}

const PORT: u16 = 9310;

impl DriftNode {
    /// kube-proxy in iptables mode (iptables-nft).
    fn new(tag: &str) -> DriftNode {
        for tool in ["iptables-nft-restore", "iptables-nft-save"] {
            require_tool(tool);
        }
        let rules = kube_proxy_ruleset(SERVICES_COUNT, ENDPOINTS);
        let node = DriftNode::bare(tag, rules);
        node.ns
            .restore("iptables-nft-restore", &node.rules)
            .unwrap();
        for i in 0..SERVICES_COUNT {
            node.api
                .put(&NAMESPACES, objects::namespace(&format!("ns{}", i % 50)));
            node.api.put(&SERVICES, service(i));
            let addresses: Vec<String> = (0..ENDPOINTS).map(|j| endpoint(i, j)).collect();
            node.api.put(&ENDPOINT_SLICES, slice(i, &addresses));
        }
        node
    }

    /// kube-proxy in nftables mode: the generator's Services `ns{i}/svc{i}:p80` (i from 1), the
    /// sixth kind without endpoints; endpoint `j` of Service `i` is 10.(180+j).0.i, port 80.
    fn nftables_mode(tag: &str) -> DriftNode {
        require_tool("nft");
        let rules = kube_proxy_nftables(SERVICES_COUNT, ENDPOINTS);
        let node = DriftNode::bare(tag, rules);
        node.ns.nft_file(&node.rules).unwrap();
        for i in 1..=SERVICES_COUNT {
            let ns = format!("ns{i}");
            node.api.put(&NAMESPACES, objects::namespace(&ns));
            let mut service =
                objects::service(&ns, &format!("svc{i}"), &format!("10.43.1.{i}"), 80);
            service["spec"]["ports"][0]["name"] = json!("p80");
            node.api.put(&SERVICES, service);
            let addresses: Vec<String> = if i % 6 == 0 {
                Vec::new()
            } else {
                (0..ENDPOINTS)
                    .map(|j| format!("10.{}.0.{i}", 180 + j))
                    .collect()
            };
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let mut slice = objects::endpoint_slice(&ns, &format!("svc{i}"), &refs, 80);
            slice["ports"][0]["name"] = json!("p80");
            node.api.put(&ENDPOINT_SLICES, slice);
        }
        node
    }

    /// The namespace with `rules` (not loaded yet) and the API with this node.
    fn bare(tag: &str, rules: String) -> DriftNode {
        require_tool("nsenter");
        let ns = NetNs::new(tag);
        ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 192.168.1.233/24 dev eth0 && ip link set eth0 up")
            .unwrap();
        let api = FakeApiServer::start_in(&ns.path());
        api.put(&NAMESPACES, objects::namespace(NAMESPACE));
        api.put(&NODES, objects::node(NODE));
        let dir = std::env::temp_dir().join(format!("netmend-drift-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE)
            .unwrap();
        DriftNode {
            agent: None,
            api,
            ns,
            dir,
            rules,
        }
    }

    fn start(&mut self, config: &str) {
        std::fs::write(self.dir.join("config.yaml"), config).unwrap();
        self.agent = Some(
            self.ns
                .spawn_netmend_on_cluster(&self.dir, PORT, NODE, NAMESPACE),
        );
        self.wait(
            "the agent ready and judging",
            Duration::from_secs(20),
            || {
                let status = self.try_status()?;
                (status["kubernetes"]["connected"] == true && status.get("notJudged").is_none())
                    .then_some(())
            },
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn try_status(&self) -> Option<Value> {
        let (code, body) = self.ns.http_get(PORT, "/status").ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    fn status(&self) -> Value {
        self.try_status().expect("GET /status")
    }

    fn wait<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, f).unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}\nstatus: {:#}\nnode: {:#}\nlog:\n{}",
                self.try_status().unwrap_or_default(),
                self.node(),
                self.log()
            )
        })
    }

    fn node(&self) -> Value {
        self.api.get(&NODES, "", NODE).expect("the node exists")
    }

    fn drift_findings(&self) -> Vec<Value> {
        self.status()["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f["check"] == CHECK)
            .collect()
    }

    /// The cluster moves Service `i`'s endpoint `j` to a new pod at `to`.
    fn move_endpoint_in_api(&self, i: usize, j: usize, to: &str) {
        let mut addresses: Vec<String> = (0..ENDPOINTS).map(|k| endpoint(i, k)).collect();
        addresses[j] = to.to_string();
        let ns = format!("ns{}", i % 50);
        let name = format!("svc{i}-abcde");
        let wanted = slice(i, &addresses);
        self.api
            .modify(&ENDPOINT_SLICES, &ns, &name, |s| {
                s["endpoints"] = wanted["endpoints"].clone()
            })
            .unwrap();
    }

    /// kube-proxy catches up: its rules send Service `i`'s endpoint `j` to `to`, written as
    /// kube-proxy writes them (one restore of its tables).
    fn move_endpoint_in_rules(&mut self, i: usize, j: usize, to: &str) {
        let from = endpoint(i, j);
        self.rules = self
            .rules
            .replace(&format!("{from}:"), &format!("{to}:"))
            .replace(&format!("{from}/"), &format!("{to}/"));
        self.ns
            .restore("iptables-nft-restore", &self.rules)
            .unwrap();
    }

    fn cordon(&self) -> (bool, Option<String>) {
        let node = self.node();
        (
            node["spec"]["unschedulable"] == true,
            node["metadata"]["annotations"][ANNOTATION]
                .as_str()
                .map(str::to_string),
        )
    }

    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("state/journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn journal_outcomes(&self) -> Vec<String> {
        self.journal()
            .iter()
            .filter(|e| e["fix"] == "cordon-node")
            .map(|e| e["outcome"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn node_patches(&self) -> usize {
        self.api
            .requests_to("PATCH", &format!("/api/v1/nodes/{NODE}"))
            .len()
    }
}

impl Drop for DriftNode {
    fn drop(&mut self) {
        self.agent.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(cordon: bool) -> String {
    let mut text = format!(
        "mode: enforce\nkubernetes:\n  requestTimeout: 1s\n  slotLease: 5s\nchecks:\n  {CHECK}:\n    staleAfter: {}s\n",
        STALE_AFTER.as_secs()
    );
    if cordon {
        text.push_str("fixes:\n  cordon-node: { enabled: true, confirmFor: 0s }\n");
    }
    text
}

/// The drift of Service 2 (endpoint 0 moved to 10.42.9.2, kube-proxy never told), waited for.
fn wait_drift_finding(node: &DriftNode) -> Value {
    node.wait("the drift finding", STALE_AFTER * 4, || {
        node.drift_findings().into_iter().next()
    })
}

#[test]
fn drift_is_found_after_stale_after_and_kube_proxy_catching_up_in_time_is_not() {
    let mut node = DriftNode::new("drift-find");
    node.start(&config(false));
    assert!(node.drift_findings().is_empty(), "{:#}", node.status());

    // kube-proxy behind by one sync: the rules follow within a second, well within staleAfter
    node.move_endpoint_in_api(1, 1, "10.42.9.1");
    std::thread::sleep(Duration::from_millis(700));
    node.move_endpoint_in_rules(1, 1, "10.42.9.1");
    let quiet_until = Instant::now() + STALE_AFTER * 2;
    while Instant::now() < quiet_until {
        assert!(
            node.drift_findings().is_empty(),
            "kube-proxy caught up in time, yet: {:#}",
            node.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // kube-proxy never hears: a finding, but only after staleAfter
    let changed = Instant::now();
    node.move_endpoint_in_api(2, 0, "10.42.9.2");
    let finding = wait_drift_finding(&node);
    assert!(
        changed.elapsed() >= STALE_AFTER,
        "reported after {:?}",
        changed.elapsed()
    );
    assert_eq!(finding["subject"], service_port(2));
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("missing from the rules (10.42.9.2:8080)"),
        "{message}"
    );
    assert!(
        message.contains(&format!("gone or not ready ({}:8080)", endpoint(2, 0))),
        "{message}"
    );
    assert_eq!(finding["evidence"]["missing"], json!(["10.42.9.2:8080"]));
    assert_eq!(finding["fix"]["name"], "cordon-node");
    assert_eq!(finding["fix"]["state"], "disabled", "{finding:#}");
    node.wait("the NodeCondition", Duration::from_secs(10), || {
        node.node()["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == CONDITION && c["status"] == "True")
            .cloned()
    });
    // the fix is off by default: the node is left schedulable
    assert_eq!(node.cordon(), (false, None));

    // kube-proxy catches up: the finding clears
    node.move_endpoint_in_rules(2, 0, "10.42.9.2");
    node.wait("the finding cleared", Duration::from_secs(10), || {
        node.drift_findings().is_empty().then_some(())
    });
    assert_eq!(node.node_patches(), 0);
}

#[test]
fn with_the_fix_enabled_the_node_is_cordoned_under_a_slot_and_uncordoned_after_the_drift() {
    let mut node = DriftNode::new("drift-cordon");
    node.start(&config(true));
    node.move_endpoint_in_api(3, 1, "10.42.9.3");
    wait_drift_finding(&node);
    node.wait("the cordon", Duration::from_secs(10), || {
        (node.cordon() == (true, Some(CHECK.to_string()))).then_some(())
    });
    // under the fix slot, given back after
    let lease = node
        .api
        .get(&LEASES, NAMESPACE, "netmend-fix-slot-0")
        .expect("the slot Lease was taken");
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 0);
    node.wait("the slot released", Duration::from_secs(10), || {
        let lease = node.api.get(&LEASES, NAMESPACE, "netmend-fix-slot-0")?;
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_none_or(str::is_empty)
            .then_some(())
    });
    node.wait(
        "applied and verified in the journal",
        Duration::from_secs(5),
        || {
            let outcomes = node.journal_outcomes();
            (outcomes == ["applied", "verified"]).then_some(())
        },
    );
    node.wait("the Event of the cordon", Duration::from_secs(10), || {
        node.api.list(&EVENTS, None).into_iter().find(|e| {
            e["regarding"]["name"] == NODE
                && e["note"].as_str().is_some_and(|n| n.contains("cordon"))
        })
    });
    // the drift goes on: no second cordon is written
    std::thread::sleep(STALE_AFTER);
    assert_eq!(node.node_patches(), 1);

    // kube-proxy catches up: the cordon is lifted once the drift has been gone for staleAfter
    node.move_endpoint_in_rules(3, 1, "10.42.9.3");
    let gone = Instant::now();
    node.wait("the uncordon", STALE_AFTER * 4, || {
        (node.cordon() == (false, None)).then_some(())
    });
    assert!(
        gone.elapsed() >= STALE_AFTER,
        "lifted after {:?}",
        gone.elapsed()
    );
    // journaled right after the Node was written
    node.wait("reverted in the journal", Duration::from_secs(5), || {
        (node.journal_outcomes() == ["applied", "verified", "reverted"]).then_some(())
    });
    assert_eq!(node.node_patches(), 2);
}

#[test]
fn a_cordon_someone_else_made_is_never_touched() {
    let mut node = DriftNode::new("drift-human");
    // `kubectl cordon` before netmend starts
    node.api
        .patch(
            &NODES,
            "",
            NODE,
            PatchFormat::StrategicMerge,
            &json!({"spec": {"unschedulable": true}}),
        )
        .unwrap();
    node.start(&config(true));
    node.move_endpoint_in_api(4, 0, "10.42.9.4");
    wait_drift_finding(&node);
    let finding = node.wait("the fix held back", Duration::from_secs(10), || {
        let f = node.drift_findings().into_iter().next()?;
        (f["fix"]["state"] == "blocked").then_some(f)
    });
    assert!(
        finding["fix"]["detail"]
            .as_str()
            .unwrap()
            .contains("cordoned by someone else"),
        "{finding:#}"
    );
    // the drift is gone for longer than staleAfter: the human's cordon stays
    node.move_endpoint_in_rules(4, 0, "10.42.9.4");
    node.wait("the finding cleared", Duration::from_secs(10), || {
        node.drift_findings().is_empty().then_some(())
    });
    std::thread::sleep(STALE_AFTER * 2);
    assert_eq!(node.cordon(), (true, None));
    assert_eq!(node.node_patches(), 0);
    assert!(
        !node
            .journal_outcomes()
            .iter()
            .any(|o| o == "applied" || o == "reverted"),
        "{:?}",
        node.journal_outcomes()
    );
}

#[test]
fn without_the_api_the_check_judges_nothing_and_says_why() {
    let node = DriftNode::new("drift-local");
    // the Services would say svc5 moved; the agent cannot know without the API
    node.move_endpoint_in_api(5, 0, "10.42.9.5");
    std::fs::write(node.dir.join("config.yaml"), config(true)).unwrap();
    let listen = format!("127.0.0.1:{PORT}");
    let config = node.dir.join("config.yaml").display().to_string();
    let state = node.dir.join("state").display().to_string();
    let _agent = node.ns.spawn_netmend_with_env(
        &[
            "run",
            "--config",
            &config,
            "--listen",
            &listen,
            "--state-dir",
            &state,
            "--node-name",
            NODE,
        ],
        &[("KUBECONFIG", "")],
        &node.dir.join("agent.log"),
    );
    let why = node.wait("notJudged on /status", Duration::from_secs(20), || {
        node.try_status()?["notJudged"][CHECK]
            .as_str()
            .map(str::to_string)
    });
    assert!(why.contains("node-local mode"), "{why}");
    std::thread::sleep(STALE_AFTER + Duration::from_secs(1));
    assert!(node.drift_findings().is_empty(), "{:#}", node.status());
    assert_eq!(
        node.api.requests().len(),
        0,
        "the agent never asked the API"
    );
}

#[test]
fn drift_is_found_in_kube_proxys_nftables_mode() {
    let mut node = DriftNode::nftables_mode("drift-nftmode");
    node.start(&config(false));
    std::thread::sleep(STALE_AFTER + Duration::from_secs(1));
    assert!(node.drift_findings().is_empty(), "{:#}", node.status());
    // svc2 scaled from two endpoints to one new one; kube-proxy never heard
    node.api
        .modify(
            &ENDPOINT_SLICES,
            "ns2",
            "svc2-abcde",
            |s| {
                s["endpoints"] =
                    json!([{"addresses": ["10.180.7.2"], "conditions": {"ready": true}}])
            },
        )
        .unwrap();
    let finding = wait_drift_finding(&node);
    assert_eq!(finding["subject"], "ns2/svc2:p80/tcp");
    assert_eq!(finding["evidence"]["missing"], json!(["10.180.7.2:80"]));
    assert_eq!(
        finding["evidence"]["extra"],
        json!(["10.180.0.2:80", "10.181.0.2:80"])
    );
    assert_eq!(node.drift_findings().len(), 1, "{:#}", node.status());
}

#[test]
fn a_node_someone_uncordoned_is_not_cordoned_again_and_netmends_mark_goes_with_the_drift() {
    let mut node = DriftNode::new("drift-lifted");
    // no cooldown: every pass the guards allow another cordon, and the Node's state decides
    node.start(&config(true).replace("confirmFor: 0s }", "confirmFor: 0s, cooldown: 0s }"));
    node.move_endpoint_in_api(0, 0, "10.42.9.10");
    wait_drift_finding(&node);
    node.wait("the cordon", Duration::from_secs(10), || {
        (node.cordon() == (true, Some(CHECK.to_string()))).then_some(())
    });
    // `kubectl uncordon` while the drift goes on
    node.api
        .patch(
            &NODES,
            "",
            NODE,
            PatchFormat::StrategicMerge,
            &json!({"spec": {"unschedulable": false}}),
        )
        .unwrap();
    let finding = node.wait("the fix held back", Duration::from_secs(10), || {
        let f = node.drift_findings().into_iter().next()?;
        (f["fix"]["state"] == "blocked").then_some(f)
    });
    assert!(
        finding["fix"]["detail"]
            .as_str()
            .unwrap()
            .contains("someone uncordoned"),
        "{finding:#}"
    );
    std::thread::sleep(STALE_AFTER);
    assert_eq!(node.cordon(), (false, Some(CHECK.to_string())));
    assert_eq!(node.node_patches(), 1);
    // the drift ends: only netmend's annotation is removed, the node stays as the human left it
    node.move_endpoint_in_rules(0, 0, "10.42.9.10");
    node.wait("netmend's mark removed", STALE_AFTER * 4, || {
        (node.cordon() == (false, None)).then_some(())
    });
    assert_eq!(node.node_patches(), 2);
}
