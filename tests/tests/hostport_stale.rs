//! End-to-end tests of the check `hostport-stale` and its fix `remove-stale-hostport`: the real
//! `netmend run` in a node namespace, the project's fake API server inside the same namespace with
//! the node's Pods (which change during a test), and CNI portmap rules written the way the plugin
//! writes them (a `CNI-DN-*` chain per container, jumped to from `CNI-HOSTPORT-DNAT` with the
//! `dnat name: "<network>" id: "<container>"` comment), with iptables-nft and with
//! iptables-legacy.
//!
//! What the agent did is read from the rules; what it saw from its `/status`.

use netmend_e2e::fake_apiserver::{objects, FakeApiServer, Fault, NAMESPACES, NODES, PODS};
use netmend_e2e::{require_tool, wait_for, Background, NetNs};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODE: &str = "node-a";
const NAMESPACE: &str = "netmend";
const PORT: u16 = 9311;

/// One container's hostPorts as portmap writes them: the chain, the container id and network
/// of the jump's comment, and `(host port, pod address, container port)` per mapping.
struct Container {
    chain: &'static str,
    id: &'static str,
    ports: &'static [(u16, &'static str, u16)],
}

/// A DaemonSet pod with hostPort 8126 restarted and its old sandbox's chain (10.42.0.31) left
/// first; the new pod (10.42.0.57) behind it.
const DEAD: Container = Container {
    chain: "CNI-DN-2340674fa9a846ba6cee5",
    id: "770c07dfd094fa98f07ed00c04920cc32b8f3be77d02d803b54b84cc1af77bb0",
    ports: &[(8126, "10.42.0.31", 8126)],
};
const NEW: Container = Container {
    chain: "CNI-DN-98502136a6caa3b998bdb",
    id: "b57a45acaad108d4e72d396cef6f9f2bf4a354b6aac7c93c9ac5812e35495d40",
    ports: &[(8126, "10.42.0.57", 8126)],
};
/// A healthy ingress pod with 80 and 443.
const INGRESS: Container = Container {
    chain: "CNI-DN-5a1c0ffee0aa11bb22cc3",
    id: "0f3c9a7d1e2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5",
    ports: &[(80, "10.42.0.9", 80), (443, "10.42.0.9", 443)],
};
/// Two sandboxes that had the address 10.42.0.70 in turn, both for host port 9100 to it: the
/// first is the left-over, the second the live pod's.
const EARLIER: Container = Container {
    chain: "CNI-DN-0e1d2c3b4a5968778695a",
    id: "4b1c9e2f7a3d5b6c8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f",
    ports: &[(9100, "10.42.0.70", 9100)],
};
const LATER: Container = Container {
    chain: "CNI-DN-c4f1e2d3b4a5968778695",
    id: "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9",
    ports: &[(9100, "10.42.0.70", 9100)],
};
/// A pod that is starting: its chain is there before the API knows its address.
const STARTING: Container = Container {
    chain: "CNI-DN-7b7b7b7b7b7b7b7b7b7b7",
    id: "e3d2c1b0a9f8e7d6c5b4a3928170f6e5d4c3b2a19080706f5e4d3c2b1a090807",
    ports: &[(8200, "10.42.0.80", 8200)],
};

/// The `nat` table portmap leaves with these containers, in this order of their jumps, as
/// `iptables-restore --noflush` input.
fn portmap_rules(containers: &[&Container]) -> String {
    let mut out = String::from(
        "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n",
    );
    for c in containers {
        out += &format!(":{} - [0:0]\n", c.chain);
    }
    out += "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n";
    out += "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n";
    out += "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n";
    out += "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000\n";
    out += "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\n";
    for c in containers {
        let ports: Vec<String> = c.ports.iter().map(|(p, _, _)| p.to_string()).collect();
        out += &format!(
            "-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"{}\\\"\" -m multiport --dports {} -j {}\n",
            c.id,
            ports.join(","),
            c.chain
        );
    }
    for c in containers {
        for (host_port, ip, port) in c.ports {
            out += &format!(
                "-A {} -s {ip}/32 -p tcp -m tcp --dport {host_port} -j CNI-HOSTPORT-SETMARK\n",
                c.chain
            );
            out += &format!(
                "-A {} -s 127.0.0.1/32 -p tcp -m tcp --dport {host_port} -j CNI-HOSTPORT-SETMARK\n",
                c.chain
            );
            out += &format!(
                "-A {} -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {ip}:{port}\n",
                c.chain
            );
        }
    }
    out + "COMMIT\n"
}

/// Which iptables the rules are written with.
#[derive(Clone, Copy)]
enum Iptables {
    Nft,
    Legacy,
}

impl Iptables {
    fn restore(self) -> &'static str {
        match self {
            Iptables::Nft => "iptables-nft-restore",
            Iptables::Legacy => "iptables-legacy-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Iptables::Nft => "iptables-nft-save -t nat",
            Iptables::Legacy => "iptables-legacy-save -t nat",
        }
    }
}

/// A node namespace with the fake API (the node and its pods) and, once started, the agent.
struct Node {
    // Dropped in this order: the agent, then its API, then the namespace.
    agent: Option<Background>,
    api: FakeApiServer,
    ns: NetNs,
    iptables: Iptables,
    dir: PathBuf,
}

impl Node {
    fn new(tag: &str, iptables: Iptables) -> Node {
        for tool in [iptables.restore(), "nsenter"] {
            require_tool(tool);
        }
        let ns = NetNs::new(tag);
        ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 192.168.1.233/24 dev eth0 && ip link set eth0 up")
            .unwrap();
        let api = FakeApiServer::start_in(&ns.path());
        for namespace in [NAMESPACE, "monitoring", "ingress", "batch"] {
            api.put(&NAMESPACES, objects::namespace(namespace));
        }
        api.put(&NODES, objects::node(NODE));
        // A pod on another node with the dead pod's address: it does not count here.
        api.put(
            &PODS,
            objects::pod("monitoring", "agent-elsewhere", "node-b", "10.42.0.31"),
        );
        let dir = std::env::temp_dir().join(format!("netmend-hostport-stale-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE)
            .unwrap();
        Node {
            agent: None,
            api,
            ns,
            iptables,
            dir,
        }
    }

    fn add_pod(&self, namespace: &str, name: &str, ip: &str) {
        self.api.put(&PODS, objects::pod(namespace, name, NODE, ip));
    }

    fn write_rules(&self, containers: &[&Container]) {
        self.ns
            .restore(self.iptables.restore(), &portmap_rules(containers))
            .unwrap();
    }

    fn saved(&self) -> String {
        self.ns.sh(self.iptables.save()).unwrap()
    }

    /// Starts the agent (enforce, the check's `settings`, the fix on when `fix`) and waits until
    /// it is ready.
    fn start(&mut self, settings: &str, fix: bool) {
        let config = format!(
            "mode: enforce\nchecks:\n  hostport-stale: {{ {settings} }}\nfixes:\n  remove-stale-hostport: {{ enabled: {fix}, confirmFor: 0s }}\nkubernetes:\n  requestTimeout: 1s\n"
        );
        std::fs::write(self.dir.join("config.yaml"), config).unwrap();
        self.agent = Some(
            self.ns
                .spawn_netmend_on_cluster(&self.dir, PORT, NODE, NAMESPACE),
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
            if matches!(self.ns.http_get(PORT, "/readyz"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent is not ready after 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let (code, body) = self.ns.http_get(PORT, "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    fn findings(&self) -> Vec<Value> {
        self.status()["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f["check"] == "hostport-stale")
            .collect()
    }

    fn wait<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, f).unwrap_or_else(|| {
            let status = self
                .ns
                .http_get(PORT, "/status")
                .map(|(_, b)| b)
                .unwrap_or_default();
            panic!(
                "timed out waiting for {what}\nrules:\n{}\nstatus: {status}\nlog:\n{}",
                self.saved(),
                self.log()
            )
        })
    }

    /// `chain` stays in the rules and no finding names it for `span`.
    fn stays(&self, chain: &str, span: Duration, why: &str) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            assert!(
                self.saved().contains(chain),
                "{chain} was removed although {why}\nlog:\n{}",
                self.log()
            );
            let named: Vec<Value> = self
                .findings()
                .into_iter()
                .filter(|f| f["evidence"]["chain"] == chain)
                .collect();
            assert!(named.is_empty(), "{why}, yet: {named:#?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `chain` and every jump to it are gone.
    fn wait_removed(&self, chain: &str) {
        let chain = chain.to_string();
        self.wait(&format!("{chain} removed"), Duration::from_secs(30), || {
            (!self.saved().contains(&chain)).then_some(())
        });
    }

    /// Connects to the node's address on host port `port` from the node itself (portmap's
    /// `OUTPUT` jump takes it through `CNI-HOSTPORT-DNAT`).
    fn host_port_answers(&self, port: u16) -> Result<String, String> {
        self.ns
            .sh(&format!(
                "python3 -c \"import socket; socket.create_connection(('192.168.1.233', {port}), timeout=2)\""
            ))
            .map_err(|e| e.to_string())
    }

    /// The DNAT targets for host port `port`, in the order they are reached.
    fn dnat_order(&self, port: u16) -> Vec<String> {
        let saved = self.saved();
        let chains: Vec<String> = saved
            .lines()
            .filter(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "))
            .filter_map(|l| l.rsplit("-j ").next().map(str::to_string))
            .collect();
        chains
            .iter()
            .flat_map(|chain| {
                let prefix = format!("-A {chain} ");
                saved
                    .lines()
                    .filter(|l| l.starts_with(&prefix))
                    .filter(|l| l.contains(&format!("--dport {port} -j DNAT")))
                    .filter_map(|l| l.rsplit("--to-destination ").next().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The journal lines the fix wrote.
fn journal(node: &Node) -> Vec<Value> {
    std::fs::read_to_string(node.dir.join("state/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| e["fix"] == "remove-stale-hostport")
        .collect()
}

#[test]
fn a_dead_pods_chain_is_removed_with_iptables_nft_and_the_live_pods_keep_theirs() {
    let mut node = Node::new("hpstale-nft", Iptables::Nft);
    node.add_pod("monitoring", "datadog-agent-x7k2p", "10.42.0.57");
    node.add_pod("ingress", "nginx-7d9f", "10.42.0.9");
    node.write_rules(&[&DEAD, &NEW, &INGRESS]);
    // The new pod, stood in for by a listener on its address.
    node.ns.sh("ip addr add 10.42.0.57/32 dev lo").unwrap();
    let _pod = node.ns.listen_tcp("10.42.0.57", 8126);
    // Only the first DNAT for a port is live: the new pod's hostPort goes to the dead address.
    assert_eq!(
        node.dnat_order(8126),
        vec!["10.42.0.31:8126", "10.42.0.57:8126"]
    );
    assert!(
        node.host_port_answers(8126).is_err(),
        "the hostPort reached the new pod although the left-over comes first"
    );
    node.start("staleAfter: 2s", true);
    node.wait_removed(DEAD.chain);
    node.host_port_answers(8126)
        .expect("the new pod's hostPort works once the left-over is gone");
    let saved = node.saved();
    assert!(!saved.contains(DEAD.id), "the jump went too:\n{saved}");
    for live in [&NEW, &INGRESS] {
        assert!(saved.contains(live.chain), "{} kept:\n{saved}", live.chain);
        assert!(
            saved.contains(live.id),
            "{} jump kept:\n{saved}",
            live.chain
        );
    }
    assert_eq!(node.dnat_order(8126), vec!["10.42.0.57:8126"]);
    assert_eq!(
        node.dnat_order(443),
        vec!["10.42.0.9:443"],
        "the ingress pod's rules are untouched"
    );
    let entries = node.wait("the fix verified", Duration::from_secs(10), || {
        let entries = journal(&node);
        entries
            .iter()
            .any(|e| e["outcome"] == "verified")
            .then_some(entries)
    });
    assert_eq!(
        entries[0]["subject"],
        format!("ip nat {}", DEAD.chain),
        "{entries:#?}"
    );
    // Nothing is left to report.
    node.wait("the finding gone", Duration::from_secs(10), || {
        node.findings().is_empty().then_some(())
    });
}

#[test]
fn with_iptables_legacy_the_dead_and_the_superseded_chains_go_and_nothing_else() {
    require_tool("iptables-legacy-save");
    let mut node = Node::new("hpstale-leg", Iptables::Legacy);
    node.add_pod("monitoring", "datadog-agent-x7k2p", "10.42.0.57");
    node.add_pod("ingress", "nginx-7d9f", "10.42.0.9");
    node.add_pod("monitoring", "node-exporter-q9z", "10.42.0.70");
    node.write_rules(&[&DEAD, &EARLIER, &NEW, &INGRESS, &LATER]);
    node.start("staleAfter: 2s", true);
    node.wait_removed(DEAD.chain);
    node.wait_removed(EARLIER.chain);
    let saved = node.saved();
    for live in [&NEW, &INGRESS, &LATER] {
        assert!(saved.contains(live.chain), "{} kept:\n{saved}", live.chain);
        assert!(
            saved.contains(live.id),
            "{} jump kept:\n{saved}",
            live.chain
        );
    }
    assert_eq!(node.dnat_order(8126), vec!["10.42.0.57:8126"]);
    assert_eq!(node.dnat_order(9100), vec!["10.42.0.70:9100"]);
    // The journal is written once the pass is over: wait for both proofs.
    let mut verified = node.wait("both fixes verified", Duration::from_secs(10), || {
        let subjects: Vec<String> = journal(&node)
            .iter()
            .filter(|e| e["outcome"] == "verified")
            .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
            .collect();
        (subjects.len() >= 2).then_some(subjects)
    });
    verified.sort();
    assert_eq!(
        verified,
        vec![
            format!("ip nat {}", EARLIER.chain),
            format!("ip nat {}", DEAD.chain)
        ]
    );
}

#[test]
fn a_pod_that_appears_within_stale_after_keeps_its_chain_until_it_dies_uncleanly() {
    let mut node = Node::new("hpstale-new", Iptables::Nft);
    node.add_pod("ingress", "nginx-7d9f", "10.42.0.9");
    // The sandbox and its chain exist; the kubelet has not reported the pod's address yet.
    node.write_rules(&[&INGRESS, &STARTING]);
    node.start("staleAfter: 4s", true);
    std::thread::sleep(Duration::from_secs(1));
    node.add_pod("batch", "worker-0", "10.42.0.80");
    node.stays(STARTING.chain, Duration::from_secs(6), "its pod appeared");
    // The pod is gone from the API, its sandbox never torn down: the chain is stale.
    node.api.delete(&PODS, "batch", "worker-0").unwrap();
    node.wait_removed(STARTING.chain);
    assert!(node.saved().contains(INGRESS.chain));
}

#[test]
fn without_the_pods_a_missing_pod_is_never_judged_and_the_fix_off_reports_only() {
    let mut node = Node::new("hpstale-unk", Iptables::Nft);
    node.add_pod("monitoring", "datadog-agent-x7k2p", "10.42.0.57");
    node.add_pod("monitoring", "node-exporter-q9z", "10.42.0.70");
    // The pods cannot be listed: the agent knows none of them.
    node.api.fail(
        Fault::status(500)
            .path("/api/v1/pods")
            .message("etcd timeout"),
    );
    node.write_rules(&[&DEAD, &EARLIER, &NEW, &LATER]);
    // cbr0 named a pod network: only the missing pod knowledge holds the check back.
    node.start("staleAfter: 1s, podNetworks: [cbr0]", false);
    // The superseded chain is judged without the pods; the fix is off: reported only.
    let f = node.wait(
        "the superseded chain reported",
        Duration::from_secs(15),
        || {
            node.findings().into_iter().find(|f| {
                f["evidence"]["chain"] == EARLIER.chain && f["fix"]["state"] == "disabled"
            })
        },
    );
    assert_eq!(f["evidence"]["reason"]["kind"], "superseded");
    assert_eq!(f["evidence"]["podsKnown"], false);
    node.stays(DEAD.chain, Duration::from_secs(3), "the pods are not known");
    assert!(node.saved().contains(EARLIER.chain), "the fix is off");
    // The API answers again: the dead pod's chain is found too, still only reported.
    node.api.clear_faults();
    let f = node.wait(
        "the dead pod's chain reported",
        Duration::from_secs(90),
        || {
            node.findings()
                .into_iter()
                .find(|f| f["evidence"]["chain"] == DEAD.chain)
        },
    );
    assert_eq!(f["evidence"]["reason"]["kind"], "noPod");
    assert_eq!(f["evidence"]["containerId"], DEAD.id);
    assert_eq!(f["fix"]["state"], "disabled");
    assert!(node.saved().contains(DEAD.chain));
}

/// The upstream plugin's test shape for a dead pod: tcp and udp host ports (one jump per
/// protocol), one bound to a host address, the pod subnet as hairpin source; and its IPv6 twin.
/// A live dual-stack ingress pod keeps its chains in both families.
const DEAD_V4: &str = "CNI-DN-67e92b96e692a494b6b85";
const DEAD_V6: &str = "CNI-DN-5e0fd2c1a4b3968778695";
const LIVE_V6: &str = "CNI-DN-1f2e3d4c5b6a798897a6b";

fn upstream_v4() -> String {
    let id = "icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y";
    let mut out = format!(
        "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:{DEAD_V4} - [0:0]\n"
    );
    for (proto, ports) in [("tcp", "8080,8081,8083"), ("udp", "8080,8082")] {
        out += &format!("-A CNI-HOSTPORT-DNAT -p {proto} -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"{id}\\\"\" -m multiport --dports {ports} -j {DEAD_V4}\n");
    }
    for (proto, host_port, host_ip, port) in [
        ("tcp", 8080, "", 80),
        ("tcp", 8081, "", 80),
        ("udp", 8080, "", 81),
        ("udp", 8082, "", 82),
        ("tcp", 8083, "-d 192.168.1.233/32 ", 83),
    ] {
        out += &format!("-A {DEAD_V4} {host_ip}-s 10.42.0.0/24 -p {proto} -m {proto} --dport {host_port} -j CNI-HOSTPORT-SETMARK\n");
        out += &format!("-A {DEAD_V4} {host_ip}-s 127.0.0.1/32 -p {proto} -m {proto} --dport {host_port} -j CNI-HOSTPORT-SETMARK\n");
        out += &format!("-A {DEAD_V4} {host_ip}-p {proto} -m {proto} --dport {host_port} -j DNAT --to-destination 10.42.0.2:{port}\n");
    }
    out + "COMMIT\n"
}

/// In IPv6 portmap writes no localhost rule; the dead pod's chain first, the live one behind.
fn ipv6() -> String {
    let mut out = format!("*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:{DEAD_V6} - [0:0]\n:{LIVE_V6} - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n");
    for (chain, id) in [(DEAD_V6, "5c2d7e1f90ab"), (LIVE_V6, INGRESS.id)] {
        out += &format!("-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"{id}\\\"\" -m multiport --dports 8080 -j {chain}\n");
    }
    for (chain, pod) in [(DEAD_V6, "fd00:42::2"), (LIVE_V6, "fd00:42::9")] {
        out += &format!(
            "-A {chain} -s fd00:42::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK\n"
        );
        out += &format!(
            "-A {chain} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [{pod}]:8080\n"
        );
    }
    out + "COMMIT\n"
}

#[test]
fn the_upstream_shape_and_its_ipv6_twin_go_whole_and_the_dual_stack_pod_keeps_its_chains() {
    for tool in ["ip6tables-nft-restore", "ip6tables-nft-save"] {
        require_tool(tool);
    }
    let mut node = Node::new("hpstale-v6", Iptables::Nft);
    let mut ingress = objects::pod("ingress", "nginx-7d9f", NODE, "10.42.0.9");
    ingress["status"]["podIPs"] = serde_json::json!([{"ip": "10.42.0.9"}, {"ip": "fd00:42::9"}]);
    node.api.put(&PODS, ingress);
    node.write_rules(&[&INGRESS]);
    node.ns
        .restore("iptables-nft-restore", &upstream_v4())
        .unwrap();
    node.ns.restore("ip6tables-nft-restore", &ipv6()).unwrap();
    node.start("staleAfter: 2s", true);
    node.wait_removed(DEAD_V4);
    let saved = node.saved();
    assert!(
        !saved.contains("icee6giejonei6sohng6ahngee7"),
        "both jumps (tcp and udp) went:\n{saved}"
    );
    assert!(saved.contains(INGRESS.chain), "{saved}");
    let v6 = || node.ns.sh("ip6tables-nft-save -t nat").unwrap();
    node.wait(
        "the IPv6 left-over removed",
        Duration::from_secs(30),
        || (!v6().contains(DEAD_V6)).then_some(()),
    );
    let saved6 = v6();
    assert!(saved6.contains(LIVE_V6), "{saved6}");
    assert!(saved6.contains("[fd00:42::9]:8080"), "{saved6}");
    assert!(!saved6.contains("5c2d7e1f90ab"), "{saved6}");
}
