//! End-to-end tests of `hostport-hijack`'s precision in fresh network namespaces, with rules made
//! by the real `iptables-nft` and `iptables-legacy` binaries and real sockets: a Docker published
//! port is not a hijack (its listener is docker-proxy), a pod with hostPorts 443 and 6443 loses only
//! 6443 to the fix (443 still DNATs real traffic), and on an IPVS node a hostPort 443 capturing the
//! API server's Service address (local on kube-ipvs0) is found.

use netmend_e2e::{
    docker_proxy, node_with_lan, require_tool, veth_pair, wait_listening, Background, NetNs,
};
use serde_json::Value;
use std::process::{Command, Output, Stdio};

/// The node and LAN namespaces of these tests (listeners are checked with ss, run by python3).
fn node(tag: &str) -> (NetNs, NetNs) {
    require_tool("ss");
    require_tool("python3");
    node_with_lan(tag)
}

fn netmend_with_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .arg(netmend_e2e::netmend_binary())
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run netmend")
}

fn report_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netmend printed no JSON ({e}); status {}; stdout {}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn hijacks(report: &Value) -> Vec<Value> {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["check"] == "hostport-hijack")
        .cloned()
        .collect()
}

fn check(ns: &NetNs, env: &[(&str, &str)]) -> Value {
    report_of(&netmend_with_env(
        ns,
        &["check", "--window", "0s", "--output", "json"],
        env,
    ))
}

fn check_and_apply(ns: &NetNs, env: &[(&str, &str)]) -> Value {
    let config = std::env::temp_dir().join(format!("netmend-config-{}.yaml", ns.name));
    std::fs::write(
        &config,
        "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true }\n",
    )
    .unwrap();
    let state = std::env::temp_dir().join(format!("netmend-state-{}", ns.name));
    let _ = std::fs::remove_dir_all(&state);
    report_of(&netmend_with_env(
        ns,
        &[
            "check",
            "--window",
            "0s",
            "--apply",
            "--output",
            "json",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        env,
    ))
}

/// The nat rules `docker run -p 8080:80` and `docker run -p 127.0.0.1:8081:80` leave on a Docker
/// host (as iptables-save prints them).
const DOCKER_NAT: &str = r#"*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.17.0.3:80
COMMIT
"#;

fn docker_published_ports(backend_restore: &str, tag: &str) {
    let (ns, _lan) = node(tag);
    ns.restore(backend_restore, DOCKER_NAT).unwrap();
    {
        let _a = docker_proxy(&ns, "0.0.0.0", 8080, "172.17.0.2", 80);
        let _b = docker_proxy(&ns, "127.0.0.1", 8081, "172.17.0.3", 80);
        let report = check(&ns, &[]);
        assert_eq!(hijacks(&report), Vec::<Value>::new(), "{report:#}");
    }
    // The same rules with an ordinary service on 8080 instead: Docker's rule shadows it.
    let _service = ns.listen_tcp("0.0.0.0", 8080);
    let report = check(&ns, &[]);
    let found = hijacks(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(found[0]["subject"], "ip nat DOCKER");
    assert_eq!(found[0]["evidence"]["ports"], serde_json::json!([8080]));
    assert_eq!(found[0]["fix"]["state"], "blocked", "{report:#}");
    assert!(found[0]["fix"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("blocked: the rule is Docker's"));
    let because = found[0]["evidence"]["protectedBecause"][0]
        .as_str()
        .unwrap();
    assert!(
        because.starts_with("8080 (python3 pid "),
        "owner resolved: {because}"
    );
}

#[test]
fn a_docker_published_port_is_not_a_hijack_nft() {
    docker_published_ports("iptables-nft-restore", "hp-docker-nft");
}

#[test]
fn a_docker_published_port_is_not_a_hijack_legacy() {
    docker_published_ports("iptables-legacy-restore", "hp-docker-leg");
}

/// A TCP server in `ns` on `addr:port` that greets every client with `banner`.
fn banner_server(ns: &NetNs, addr: &str, port: u16, banner: &str) -> Background {
    let guard = ns.spawn(&format!(
        "python3 -c \"import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('{addr}', {port})); s.listen()\nwhile True:\n    c, _ = s.accept(); c.sendall(b'{banner}'); c.close()\""
    ));
    wait_listening(ns, port);
    guard
}

/// The banner a client in `ns` reads from `addr:port` (None when it cannot connect).
fn greet(ns: &NetNs, addr: &str, port: u16) -> Option<String> {
    ns.sh(&format!(
        "python3 -c \"import socket; s=socket.create_connection(('{addr}', {port}), timeout=3); print(s.recv(64).decode())\""
    ))
    .ok()
    .map(|s| s.trim().to_string())
}

/// CNI portmap's rules for one pod (10.42.0.5) with hostPorts 443 and 6443, as the plugin writes
/// them (hairpin and localhost SETMARK rules included).
const TWO_PORTS_NAT: &str = r#"*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-0f5e2a7b9c1d3e4f5a6b7 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"5eed0a1b2c3d\"" -m multiport --dports 443,6443 -j CNI-DN-0f5e2a7b9c1d3e4f5a6b7
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -s 10.42.0.0/24 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -s 127.0.0.1/32 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.0.5:443
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -s 10.42.0.0/24 -p tcp -m tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -s 127.0.0.1/32 -p tcp -m tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0f5e2a7b9c1d3e4f5a6b7 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.5:6443
COMMIT
"#;

fn two_host_ports(restore: &str, save: &str, tag: &str) {
    let (ns, lan) = node(tag);
    let pod = NetNs::new(&format!("{tag}-pod"));
    veth_pair(&ns, "veth-pod", &pod, "eth0").unwrap();
    ns.sh("ip addr add 10.42.0.1/24 dev veth-pod && sysctl -qw net.ipv4.ip_forward=1")
        .unwrap();
    pod.sh("ip addr add 10.42.0.5/24 dev eth0 && ip route add default via 10.42.0.1")
        .unwrap();
    let _pod443 = banner_server(&pod, "0.0.0.0", 443, "pod-443");
    let _pod6443 = banner_server(&pod, "0.0.0.0", 6443, "pod-6443");
    // The node's own API server.
    let _api = banner_server(&ns, "0.0.0.0", 6443, "node-6443");
    ns.restore(restore, TWO_PORTS_NAT).unwrap();
    assert_eq!(
        greet(&lan, "192.168.1.233", 443).as_deref(),
        Some("pod-443")
    );
    assert_eq!(
        greet(&lan, "192.168.1.233", 6443).as_deref(),
        Some("pod-6443"),
        "the pod hijacks the API port before the fix"
    );

    let report = check_and_apply(&ns, &[]);
    let found = hijacks(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(found[0]["evidence"]["ports"], serde_json::json!([6443]));
    assert_eq!(found[0]["fix"]["state"], "verified", "{report:#}");

    let saved = ns.sh(&format!("{save} -t nat")).unwrap();
    assert!(
        saved.contains("-m multiport --dports 443 ")
            && saved.contains("-j CNI-DN-0f5e2a7b9c1d3e4f5a6b7"),
        "jump narrowed to 443:\n{saved}"
    );
    assert!(!saved.contains("--dports 443,6443"), "{saved}");
    assert!(!saved.contains("--dport 6443"), "{saved}");
    assert!(
        saved.contains("-p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.0.5:443"),
        "{saved}"
    );
    assert!(saved.contains("-s 127.0.0.1/32 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK"));
    assert!(
        saved.contains("dnat name: \\\"cbr0\\\" id: \\\"5eed0a1b2c3d\\\""),
        "the portmap comment stays on the jump:\n{saved}"
    );
    // Real traffic: 443 still reaches the pod, 6443 is the node's again.
    assert_eq!(
        greet(&lan, "192.168.1.233", 443).as_deref(),
        Some("pod-443")
    );
    assert_eq!(
        greet(&lan, "192.168.1.233", 6443).as_deref(),
        Some("node-6443")
    );
    let report = check(&ns, &[]);
    assert_eq!(hijacks(&report), Vec::<Value>::new(), "{report:#}");
}

#[test]
fn a_pod_with_host_ports_443_and_6443_keeps_443_after_the_fix_nft() {
    two_host_ports("iptables-nft-restore", "iptables-nft-save", "hp-two-nft");
}

#[test]
fn a_pod_with_host_ports_443_and_6443_keeps_443_after_the_fix_legacy() {
    two_host_ports(
        "iptables-legacy-restore",
        "iptables-legacy-save",
        "hp-two-leg",
    );
}

/// A kube-proxy IPVS node: no per-Service iptables rules, ClusterIPs on the kube-ipvs0 interface
/// and in the KUBE-CLUSTER-IP ipset, accepted in KUBE-SERVICES; a pod's hostPort 443 through CNI
/// portmap with `--dst-type LOCAL`, its jumps after kube-proxy's.
const IPVS_HOSTPORT_NAT: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-MARK-MASQ - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-2c4e6a8b0d1f3a5c7e9b1 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"k8s-pod-network\" id: \"9a8b7c6d\"" -m multiport --dports 443 -j CNI-DN-2c4e6a8b0d1f3a5c7e9b1
-A CNI-DN-2c4e6a8b0d1f3a5c7e9b1 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.244.1.7:8443
COMMIT
"#;

fn ipvs_api_service(restore: &str, save: &str, tag: &str) {
    require_tool("ipset");
    let (ns, _lan) = node(tag);
    ns.sh("ipset create KUBE-CLUSTER-IP hash:ip,port && ipset add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 && ipset add KUBE-CLUSTER-IP 10.96.0.10,udp:53")
        .unwrap();
    ns.sh("ip link add kube-ipvs0 type veth peer name ipvs-peer && ip link set kube-ipvs0 up && ip addr add 10.96.0.1/32 dev kube-ipvs0 && ip addr add 10.96.0.10/32 dev kube-ipvs0")
        .unwrap();
    ns.restore(restore, IPVS_HOSTPORT_NAT).unwrap();
    // Nothing on the node listens on 443: without the API Service address it is the pod's port.
    let report = check(&ns, &[]);
    assert_eq!(hijacks(&report), Vec::<Value>::new(), "{report:#}");

    let env = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ];
    // kube-proxy's jumps come first: its ClusterIP ACCEPT keeps the API Service address safe.
    let report = check(&ns, &env);
    assert_eq!(hijacks(&report), Vec::<Value>::new(), "{report:#}");
    // Portmap re-inserts its jumps at the top (e.g. after a restart): the hostPort now captures
    // 10.96.0.1:443.
    let tool = restore.trim_end_matches("-restore");
    for hook in ["PREROUTING", "OUTPUT"] {
        ns.sh(&format!(
            "{tool} -w -t nat -D {hook} -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT && {tool} -w -t nat -I {hook} 1 -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        ))
        .unwrap();
    }
    let report = check(&ns, &env);
    let found = hijacks(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(found[0]["subject"], "ip nat CNI-DN-2c4e6a8b0d1f3a5c7e9b1");
    assert_eq!(
        found[0]["evidence"]["protectedBecause"],
        serde_json::json!([
            "443 (the API server's Service address 10.96.0.1:443, from the pod environment)"
        ])
    );
    let report = check_and_apply(&ns, &env);
    assert_eq!(
        hijacks(&report)[0]["fix"]["state"],
        "verified",
        "{report:#}"
    );
    let saved = ns.sh(&format!("{save} -t nat")).unwrap();
    assert!(!saved.contains("CNI-DN-2c4e6a8b0d1f3a5c7e9b1"), "{saved}");
    assert!(saved.contains("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"));
    assert!(saved.contains("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"));
}

#[test]
fn ipvs_host_port_capturing_the_api_service_address_is_found_nft() {
    ipvs_api_service("iptables-nft-restore", "iptables-nft-save", "hp-ipvs-nft");
}

#[test]
fn ipvs_host_port_capturing_the_api_service_address_is_found_legacy() {
    ipvs_api_service(
        "iptables-legacy-restore",
        "iptables-legacy-save",
        "hp-ipvs-leg",
    );
}
