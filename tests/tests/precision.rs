//! End-to-end tests of issue 9's precision items, in fresh network namespaces with the real
//! tools: a Cilium backup chain that is the only copy is not flushed; an HA standby's VIP gives no
//! finding; a new VIP is judged after 5,000 other addresses were asked for; owners split across
//! backends through hook jumps or across tables are found, while kubelet's canaries are not.

use netmend::model::l2::MacAddr;
use netmend::observe::arp::ArpMonitor;
use netmend_e2e::{
    findings_of, fresh_state_dir, json_of, require_tool, veth_pair, wait_for, write_config, NetNs,
};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `netmend check --window 0s --apply` in enforce mode with flush-stale-chain enabled.
fn enforce_stale_chain(ns: &NetNs) -> Value {
    let config = write_config(
        ns,
        "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true }\n",
    );
    json_of(&ns.netmend(&[
        "check",
        "--window",
        "0s",
        "--apply",
        "--output",
        "json",
        "--config",
        &config,
        "--state-dir",
        &fresh_state_dir(ns),
    ]))
}

/// Cilium renamed its live chain to the backup (`iptables -E`, so the feeder jump follows it) and
/// died before re-creating CILIUM_POST_nat: the backup is the masquerade pods use.
const ONLY_COPY: &str = r#"*nat
:OLD_CILIUM_POST_nat - [0:0]
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j OLD_CILIUM_POST_nat
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A OLD_CILIUM_POST_nat -m mark --mark 0xa00/0xe00 -m comment --comment "exclude proxy return traffic from masquerade" -j ACCEPT
COMMIT
"#;

fn old_chain_rules(ns: &NetNs, save: &str) -> usize {
    ns.sh(&format!("{save} -t nat"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("-A OLD_CILIUM_POST_nat"))
        .count()
}

#[test]
fn a_cilium_backup_without_a_hooked_live_chain_is_not_flushed() {
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "ip"] {
        require_tool(tool);
    }
    let ns = NetNs::new("cilium-copy");
    // nft backend: the live chain is missing. legacy backend: it exists but nothing in
    // POSTROUTING reaches it yet.
    ns.restore("iptables-nft-restore", ONLY_COPY).unwrap();
    ns.restore("iptables-legacy-restore", ONLY_COPY).unwrap();
    ns.sh("iptables-legacy -t nat -N CILIUM_POST_nat && iptables-legacy -t nat -A CILIUM_POST_nat -j RETURN")
        .unwrap();

    let report = enforce_stale_chain(&ns);
    let stale = findings_of(&report, "cilium-stale-backup-chain");
    assert_eq!(stale.len(), 2, "{report:#}");
    for f in &stale {
        assert_eq!(f["fix"]["state"], "blocked", "{f:#}");
        let detail = f["fix"]["detail"].as_str().unwrap();
        assert!(detail.contains("the backup is the only copy"), "{detail}");
        assert_eq!(f["evidence"]["liveChainHooked"], false);
        match f["evidence"]["backend"].as_str().unwrap() {
            "nft" => {
                assert!(detail.contains("CILIUM_POST_nat is missing"), "{detail}");
                assert_eq!(f["evidence"]["liveChainPresent"], false);
            }
            _ => {
                assert!(detail.contains("CILIUM_POST_nat is unhooked"), "{detail}");
                assert_eq!(f["evidence"]["liveChainPresent"], true);
            }
        }
    }
    assert_eq!(old_chain_rules(&ns, "iptables-nft-save"), 2);
    assert_eq!(old_chain_rules(&ns, "iptables-legacy-save"), 2);

    // Cilium comes back: the live chain is re-created and hooked in both backends. Now the
    // backup is a copy and is flushed (still referenced by the old feeder, so it stays).
    for bin in ["iptables-nft", "iptables-legacy"] {
        ns.sh(&format!(
            "{bin} -t nat -N CILIUM_POST_nat 2>/dev/null; {bin} -t nat -A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -j MASQUERADE && {bin} -t nat -I POSTROUTING 1 -j CILIUM_POST_nat"
        ))
        .unwrap();
    }
    let report = enforce_stale_chain(&ns);
    let stale = findings_of(&report, "cilium-stale-backup-chain");
    assert_eq!(stale.len(), 2, "{report:#}");
    for f in &stale {
        assert_eq!(f["fix"]["state"], "verified", "{f:#}");
        assert_eq!(f["evidence"]["liveChainHooked"], true);
    }
    assert_eq!(old_chain_rules(&ns, "iptables-nft-save"), 0);
    assert_eq!(old_chain_rules(&ns, "iptables-legacy-save"), 0);
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        let after = ns.sh(&format!("{save} -t nat")).unwrap();
        assert!(
            after.contains(
                "-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -j MASQUERADE"
            ),
            "{after}"
        );
    }
}

/// kube-proxy's nat rules (iptables mode) as iptables-save prints them.
const KUBE_PROXY_CHAINS: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-ZP3FB6NMPNCO4VBJ - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 192.168.1.233:6443" -j KUBE-SEP-ZP3FB6NMPNCO4VBJ
-A KUBE-SEP-ZP3FB6NMPNCO4VBJ -s 192.168.1.233/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-ZP3FB6NMPNCO4VBJ -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 192.168.1.233:6443
COMMIT
"#;

/// kube-proxy's service hooks, written with the other binary (it creates the empty target).
const KUBE_PROXY_HOOKS: &str = r#"*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"#;

/// kubelet's own chains (upstream kubelet_network_linux.go) and the canaries.
const KUBELET: &str = r#"*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
"#;

fn split_findings(ns: &NetNs) -> Vec<Value> {
    let report = json_of(&ns.netmend(&["check", "--window", "0s", "--output", "json"]));
    findings_of(&report, "iptables-backend-split")
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn backend_split_through_hook_jumps_and_across_tables_is_found_and_kubelet_is_not() {
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "ip"] {
        require_tool(tool);
    }
    // Healthy: kube-proxy all in iptables-nft; kubelet's firewall and canaries in
    // iptables-legacy (kubelet's binary), kube-proxy's canary in both.
    let healthy = NetNs::new("split-ok");
    healthy
        .restore("iptables-nft-restore", KUBE_PROXY_CHAINS)
        .unwrap();
    healthy
        .restore("iptables-nft-restore", KUBE_PROXY_HOOKS)
        .unwrap();
    healthy
        .restore(
            "iptables-nft-restore",
            "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n",
        )
        .unwrap();
    healthy.restore("iptables-legacy-restore", KUBELET).unwrap();
    let found = split_findings(&healthy);
    assert!(found.is_empty(), "{found:#?}");

    // Hooks in iptables-nft, chains in iptables-legacy.
    let hooks = NetNs::new("split-hooks");
    hooks
        .restore("iptables-nft-restore", KUBE_PROXY_HOOKS)
        .unwrap();
    hooks
        .restore("iptables-legacy-restore", KUBE_PROXY_CHAINS)
        .unwrap();
    let found = split_findings(&hooks);
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = &found[0];
    assert_eq!(f["subject"], "ip KUBE-*");
    assert_eq!(f["evidence"]["nft"]["rules"], 0);
    assert_eq!(f["evidence"]["nft"]["hookRules"], 2);
    assert_eq!(f["evidence"]["legacy"]["rules"], 8);
    assert_eq!(f["evidence"]["legacy"]["hookRules"], 1);

    // nat in iptables-legacy, filter in iptables-nft.
    let tables = NetNs::new("split-tables");
    tables
        .restore("iptables-legacy-restore", KUBE_PROXY_CHAINS)
        .unwrap();
    tables
        .restore("iptables-legacy-restore", KUBE_PROXY_HOOKS)
        .unwrap();
    tables
        .restore(
            "iptables-nft-restore",
            "*filter\n:KUBE-FORWARD - [0:0]\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
    let found = split_findings(&tables);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0]["evidence"]["nft"]["tables"],
        serde_json::json!(["filter"])
    );
    assert_eq!(
        found[0]["evidence"]["legacy"]["tables"],
        serde_json::json!(["nat"])
    );
}

const VIP: &str = "10.99.0.51";
/// The "filtering driver" of the field report: a netdev ingress chain that drops requests for
/// the VIP, so an owned VIP goes unanswered.
const FILTER: &str = "nft add table netdev nmdriver && nft add chain netdev nmdriver in '{ type filter hook ingress device eth0 priority 0; }' && nft add rule netdev nmdriver in arp operation request arp daddr ip 10.99.0.51 drop";

/// A node (eth0, 10.99.0.1/24) and a client (cl0, 10.99.0.2/24) on one segment; the VIP is not
/// assigned anywhere yet.
fn segment(tag: &str) -> (NetNs, NetNs) {
    for tool in ["arping", "nft", "ip"] {
        require_tool(tool);
    }
    let node = NetNs::new(tag);
    let client = NetNs::new(&format!("{tag}-cl"));
    veth_pair(&node, "eth0", &client, "cl0").unwrap();
    node.sh("ip addr add 10.99.0.1/24 dev eth0").unwrap();
    client.sh("ip addr add 10.99.0.2/24 dev cl0").unwrap();
    (node, client)
}

/// `netmend check --window WINDOW` on the node while the client asks for the VIP; the
/// arp-unanswered findings.
fn check_while_asked(node: &NetNs, client: &NetNs, config: &str, window: &str) -> Vec<Value> {
    check_report_while_asked(node, client, config, window).1
}

/// Like [`check_while_asked`], also returning the `arp` source's detail.
fn check_report_while_asked(
    node: &NetNs,
    client: &NetNs,
    config: &str,
    window: &str,
) -> (String, Vec<Value>) {
    let asking = client.spawn(&format!("arping -i cl0 -W 0.2 -c 40 {VIP}"));
    let out = node.netmend(&[
        "check", "--window", window, "--output", "json", "--config", config,
    ]);
    drop(asking);
    let report = json_of(&out);
    assert!(
        report["sources"]["arp"]["ok"].as_bool().unwrap_or(false),
        "{report:#}"
    );
    let detail = report["sources"]["arp"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let found = findings_of(&report, "arp-unanswered")
        .into_iter()
        .cloned()
        .collect();
    (detail, found)
}

#[test]
fn a_standby_vip_gives_no_finding_and_is_judged_once_owned() {
    let (node, client) = segment("standby");
    // keepalived / kube-vip standby: the VIP is configured, but the active node holds it. The
    // requests arrive here and this node correctly stays silent.
    let config = write_config(
        &node,
        "checks:\n  arp-unanswered: { targets: [\"10.99.0.51@eth0\"], minRequests: 3 }\n",
    );
    let (detail, found) = check_report_while_asked(&node, &client, &config, "3s");
    assert!(found.is_empty(), "a standby is not broken: {found:#?}");
    assert!(
        detail.contains("standby, not this node's to answer (not judged): 10.99.0.51@eth0"),
        "{detail}"
    );

    // The same VIP marked always owned (this node must answer whatever the addresses say) is
    // judged: requests arrived, nothing answered.
    let always = write_config(
        &node,
        "checks:\n  arp-unanswered:\n    targets:\n      - { ip: 10.99.0.51, interface: eth0, alwaysOwned: true }\n",
    );
    let found = check_while_asked(&node, &client, &always, "3s");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["evidence"]["owned"], "always-owned");

    // Failover: the VIP moves here but the driver filters its requests: now it is a finding.
    node.sh(&format!("ip addr add {VIP}/32 dev eth0")).unwrap();
    node.sh(FILTER).unwrap();
    let found = check_while_asked(&node, &client, &config, "3s");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["subject"], "eth0@10.99.0.51");
    assert_eq!(found[0]["evidence"]["owned"], "assigned");
    assert!(found[0]["evidence"]["requests"].as_u64().unwrap() >= 3);
}

fn ifindex_and_mac(ns: &NetNs, name: &'static str) -> (u32, MacAddr) {
    ns.run(move || {
        let link = netmend::observe::links::read_links()
            .unwrap()
            .into_iter()
            .find(|l| l.name == name)
            .expect("link exists");
        (link.ifindex, link.mac.expect("a MAC"))
    })
}

/// Writes who-has frames for `count` distinct addresses 10.98.x.y from a packet socket on
/// `ifindex`, paced so the veth does not drop them.
fn ask_for_many(ifindex: u32, mac: MacAddr, count: u32) {
    use std::os::fd::AsFd;
    let fd =
        netmend::sys::socket::socket(libc::AF_PACKET, libc::SOCK_RAW, 0).expect("AF_PACKET socket");
    let client_ip = Ipv4Addr::new(10, 99, 0, 2);
    for i in 0..count {
        let target = Ipv4Addr::new(10, 98, (i >> 8) as u8, i as u8);
        let frame = netmend::observe::arp::who_has_frame(mac, client_ip, target);
        let sent = netmend::sys::packet::send_to(fd.as_fd(), &frame, ifindex, 0, [0xff; 6])
            .expect("sendto");
        assert_eq!(sent, frame.len(), "sendto");
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn a_new_vip_is_judged_after_5000_other_addresses_were_asked_for() {
    let (node, client) = segment("busy");
    node.sh(&format!("ip addr add {VIP}/32 dev eth0")).unwrap();
    node.sh(FILTER).unwrap();
    let (node_if, _) = ifindex_and_mac(&node, "eth0");
    let (client_if, client_mac) = ifindex_and_mac(&client, "cl0");

    // The agent's tap, opened before the VIP was a target (nothing watched): a busy segment
    // asks for 5,000 distinct addresses, more than the 4,096 kept; then the new VIP is asked for.
    let counters = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tap = s.spawn(|| {
            node.run(move || {
                let mut m = ArpMonitor::open(node_if, "eth0").unwrap();
                let mut snapshot_after_noise = None;
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    m.poll(Duration::from_millis(100));
                    if snapshot_after_noise.is_none() && rx.try_recv().is_ok() {
                        m.drain();
                        snapshot_after_noise = Some(m.snapshot());
                    }
                    if snapshot_after_noise.is_some() && rx.try_recv().is_ok() {
                        break;
                    }
                }
                m.drain();
                (snapshot_after_noise.expect("noise was sent"), m.snapshot())
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        client.run(move || ask_for_many(client_if, client_mac, 5000));
        std::thread::sleep(Duration::from_millis(500));
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let out = client
            .sh_output(&format!("arping -c 4 -w 3 -I cl0 {VIP}"))
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("Unicast reply"),
            "the filter let a reply through"
        );
        tx.send(()).unwrap();
        tap.join().unwrap()
    });
    let (noise, after) = counters;
    assert!(noise.frames >= 5000, "frames {}", noise.frames);
    assert_eq!(noise.targets.len(), 4096, "bounded");
    assert!(noise.evicted >= 5000 - 4096, "evicted {}", noise.evicted);
    assert_eq!(after.targets.len(), 4096);
    println!(
        "tap after 5,000 addresses: {} frames, {} tracked, {} aged out, {} overflow, {} kernel drops",
        noise.frames,
        noise.targets.len(),
        noise.evicted,
        noise.overflow,
        noise.kernel_drops
    );
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let t = after.target(vip).expect("the new VIP is counted");
    assert!(t.requests_received >= 3, "{t:?}");
    assert_eq!(t.replies_sent, 0);

    // Judged: the VIP is assigned on eth0, requests arrived, no reply left.
    let links = node.run(|| netmend::observe::links::read_links().unwrap());
    let addresses = node.run(|| netmend::observe::addresses::read_addresses().unwrap());
    use netmend::detect::arp_unanswered::{arp_unanswered, ArpInputs, ConfiguredTarget};
    let targets = [ConfiguredTarget {
        target: netmend::model::l2::ArpTarget::parse("10.99.0.51@eth0").unwrap(),
        always_owned: false,
    }];
    let findings = arp_unanswered(
        &ArpInputs {
            targets: &targets,
            counters: std::slice::from_ref(&after),
            responder: None,
            responder_after: None,
            links: &links,
            addresses: Some(&addresses),
        },
        3,
        &[],
    );
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].subject, "eth0@10.99.0.51");

    // The binary's one-shot window does the same with the VIP configured (watched: pinned):
    // 5,000 other addresses first, then the VIP.
    let config = write_config(
        &node,
        "checks:\n  arp-unanswered: { targets: [\"10.99.0.51@eth0\"] }\n",
    );
    let report = std::thread::scope(|s| {
        let check = s.spawn(|| {
            node.netmend(&[
                "check", "--window", "6s", "--output", "json", "--config", &config,
            ])
        });
        std::thread::sleep(Duration::from_millis(800));
        client.run(move || ask_for_many(client_if, client_mac, 5000));
        let _ = client.sh_output(&format!("arping -c 4 -w 3 -I cl0 {VIP}"));
        json_of(&check.join().unwrap())
    });
    let found = findings_of(&report, "arp-unanswered");
    assert_eq!(found.len(), 1, "{report:#}");
    println!(
        "one-shot after 5,000 addresses: arp source: {}; finding: {}",
        report["sources"]["arp"]["detail"], found[0]["message"]
    );
    assert!(
        report["sources"]["arp"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("aged out"),
        "{report:#}"
    );
}

fn agent_arp_findings(node: &NetNs, port: u16) -> Vec<Value> {
    let (_, body) = node.http_get(port, "/status").unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    findings_of(&status, "arp-unanswered")
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn the_agent_does_not_hold_a_standbys_silence_against_it_after_failover() {
    let (node, client) = segment("failover");
    let config = write_config(
        &node,
        "checks:\n  arp-unanswered: { targets: [\"10.99.0.51@eth0\"], window: 8s, minRequests: 3 }\n",
    );
    let dir = std::env::temp_dir().join(format!("netmend-failover-{}", node.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state").display().to_string();
    let port = 9831;
    let listen = format!("127.0.0.1:{port}");
    let _agent = node.spawn_netmend(
        &[
            "run",
            "--config",
            &config,
            "--listen",
            &listen,
            "--state-dir",
            &state,
        ],
        &dir.join("agent.log"),
    );
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    wait_for(Duration::from_secs(20), || {
        matches!(node.http_get(port, "/readyz"), Ok((200, _))).then_some(())
    })
    .unwrap_or_else(|| panic!("agent not ready: {}", log()));

    // The active node is gone: clients ask for the VIP and nobody answers. This node is still
    // the standby, so its silence is right.
    let _ = client.sh_output(&format!("arping -i cl0 -W 0.2 -c 12 {VIP}"));
    std::thread::sleep(Duration::from_millis(1500));
    let found = agent_arp_findings(&node, port);
    assert!(found.is_empty(), "standby: {found:#?}");

    // keepalived takes over: the VIP is assigned here; clients learned the new owner from its
    // gratuitous ARP and do not ask again. The standby-time requests are still inside the
    // window, but they are not this node's failure.
    node.sh(&format!("ip addr add {VIP}/32 dev eth0")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let found = agent_arp_findings(&node, port);
        assert!(found.is_empty(), "after failover: {found:#?}\n{}", log());
        std::thread::sleep(Duration::from_millis(250));
    }

    // Now owned, a driver that filters the VIP's requests is this node's failure: found.
    node.sh(FILTER).unwrap();
    let _asking = client.spawn(&format!("arping -i cl0 -W 0.2 -c 60 {VIP}"));
    let found = wait_for(Duration::from_secs(15), || {
        let found = agent_arp_findings(&node, port);
        (!found.is_empty()).then_some(found)
    })
    .unwrap_or_else(|| panic!("not found once owned: {}", log()));
    assert_eq!(found[0]["evidence"]["owned"], "assigned");
}
