//! Least privilege, proven: the agent's end-to-end exercise (every check's source read, every fix
//! kind detected, applied and verified, in both rule back-ends) runs under exactly the
//! capabilities the Helm chart grants, as the container runtime gives them to a uid-0 container
//! with `drop: [ALL]` and `add: [...]` and `allowPrivilegeEscalation: false`: `setpriv` limits the
//! bounding set to them (a uid-0 `execve` then holds exactly those, permitted and effective),
//! clears the inheritable and ambient sets and sets no_new_privs. The process's
//! `/proc/<pid>/status` is checked to hold exactly that set.
//!
//! A second test fails when the chart's set (`chart/values.yaml` → `capabilities`, added after
//! `drop: ["ALL"]` in the DaemonSet) differs from [`PROVEN`], and a third shows that the agent
//! cannot work without NET_ADMIN or NET_RAW, each refusal naming the capability. Why each one is
//! needed is in docs/operating.md ("Capabilities").

use netmend_e2e::agent_process::AgentProcess;
use netmend_e2e::{docker_proxy, require_tool, veth_pair, Background, NetNs};
use std::path::PathBuf;
use std::time::Duration;

/// The capabilities this file proves sufficient, as the chart spells them.
const PROVEN: [&str; 3] = ["NET_ADMIN", "NET_RAW", "BPF"];

fn cap_number(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "BPF" => 39,
        other => panic!("capability {other} is not known to this test: prove it first"),
    }
}

/// `setpriv` arguments that leave a uid-0 process exactly `caps`.
fn setpriv(caps: &[&str]) -> Vec<String> {
    let keep: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{keep}"),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--no-new-privs".into(),
    ]
}

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../chart")
}

/// The `capabilities:` list of the chart's values.yaml.
fn chart_capabilities() -> Vec<String> {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let mut lines = values.lines().skip_while(|l| *l != "capabilities:");
    assert_eq!(
        lines.next(),
        Some("capabilities:"),
        "chart/values.yaml has no top-level `capabilities:` list"
    );
    lines
        .take_while(|l| l.starts_with("  - "))
        .map(|l| {
            l.trim_start_matches("  - ")
                .split('#')
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn the_chart_grants_exactly_the_proven_capabilities() {
    let mut granted = chart_capabilities();
    granted.sort();
    let mut proven: Vec<String> = PROVEN.iter().map(|c| c.to_string()).collect();
    proven.sort();
    assert_eq!(
        granted, proven,
        "chart/values.yaml grants other capabilities than this file proves: prove the new set here (and justify it in docs/operating.md), or grant only the proven one"
    );
    // The DaemonSet adds that list after dropping everything, as uid 0 without escalation.
    let daemonset = std::fs::read_to_string(chart_dir().join("templates/daemonset.yaml")).unwrap();
    for line in [
        "drop: [\"ALL\"]",
        "{{- toYaml .Values.capabilities | nindent 16 }}",
        "runAsUser: 0",
        "privileged: false",
        "allowPrivilegeEscalation: false",
    ] {
        assert!(
            daemonset.contains(line),
            "chart/templates/daemonset.yaml lost `{line}`"
        );
    }
    let docs = std::fs::read_to_string(chart_dir().join("../docs/operating.md")).unwrap();
    for cap in PROVEN {
        assert!(
            docs.contains(&format!("`CAP_{cap}`")),
            "docs/operating.md does not justify CAP_{cap}"
        );
    }
}

/// The capability mask of `caps`.
fn mask(caps: &[&str]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1u64 << cap_number(c))
}

/// A `/proc/<pid>/status` capability field as a mask.
fn status_caps(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const VIP: &str = "10.99.0.51";
/// Cilium's live masquerade chain and a stale backup copy of it (flush-stale-chain).
const CILIUM_NAT: &str = "*nat\n:CILIUM_POST_nat - [0:0]\n:OLD_CILIUM_POST_nat - [0:0]\n-A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat\n-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE\n-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 99.105.108.105/24 ! -o cilium_+ -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE\nCOMMIT\n";

fn hijack(chain: &str) -> String {
    format!(
        "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:{chain} - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"8e92d16f\\\"\" -m multiport --dports 6443 -j {chain}\n-A {chain} -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443\nCOMMIT\n"
    )
}

/// A bpffs pin removed on drop.
struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn le_hex(v: u32) -> String {
    v.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_agent_detects_and_mends_every_fix_kind_with_only_the_charts_capabilities() {
    for tool in [
        "setpriv",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "arping",
        "bpftool",
        "nft",
    ] {
        require_tool(tool);
    }
    let node = NetNs::new("lpnode");
    let client = NetNs::new("lpnode-cl");
    veth_pair(&node, "eth0", &client, "cl0").unwrap();
    node.sh(&format!("ip addr add 10.99.0.1/24 dev eth0 && ip addr add {VIP}/32 dev eth0 && ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up"))
        .unwrap();
    client.sh("ip addr add 10.99.0.2/24 dev cl0").unwrap();
    // The filtering driver (requests for the VIP dropped while eth0 is not promiscuous).
    node.sh(&format!("nft add table netdev nmdriver && nft add chain netdev nmdriver in '{{ type filter hook ingress device eth0 priority 0; }}' && nft add rule netdev nmdriver in arp operation request arp daddr ip {VIP} drop")).unwrap();
    let _driver = node.spawn("sh -c 'while true; do if ip link show eth0 | grep -q PROMISC; then nft delete table netdev nmdriver 2>/dev/null; fi; sleep 0.1; done'");
    // Docker publishing a port through a docker-proxy that holds every capability (its
    // descriptors are closed to the agent): healthy, no finding.
    node.restore(
        "iptables-nft-restore",
        "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -i docker0 -j RETURN\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\nCOMMIT\n",
    )
    .unwrap();
    let _proxy = docker_proxy(&node, "0.0.0.0", 8080, "172.17.0.2", 80);
    // Cilium's L2 responder map, pinned (another VIP: read, not judged here).
    let pin = Pin(PathBuf::from(format!(
        "/sys/fs/bpf/netmend-lp-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_file(&pin.0);
    let ifindex: u32 = node
        .sh("cat /sys/class/net/eth0/ifindex")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    node.sh(&format!("bpftool map create {p} type hash key 8 value 8 entries 64 name cilium_l2_respo && bpftool map update pinned {p} key hex 0a 63 00 34 {} value hex {} 00 00 00 00", le_hex(ifindex), le_hex(3), p = pin.0.display()))
        .unwrap();

    let config = format!(
        "mode: enforce\nchecks:\n  cilium-stale-backup-chain: {{ staleAfter: 0s }}\n  arp-unanswered: {{ targets: [\"{VIP}@eth0\"], window: 3s, minRequests: 3, responderMapPath: {} }}\nfixes:\n  flush-stale-chain: {{ enabled: true, confirmFor: 0s }}\n  remove-hijack-rule: {{ enabled: true, confirmFor: 0s }}\n  set-promisc: {{ enabled: true, interfaces: [\"eth0\"], confirmFor: 0s, verifyWithin: 5s }}\nbudget: {{ fixesPerHour: 100 }}\nkubernetes: {{ enabled: false }}\n",
        pin.0.display()
    );
    let wrapper = setpriv(&PROVEN);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut agent = AgentProcess::new(&node, 9870, &config).with_wrapper(&wrapper);
    agent.start();

    // Exactly the chart's capabilities, and no way to gain more.
    let pid = agent.pid();
    let expected = mask(&PROVEN);
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            status_caps(pid, field),
            expected,
            "{field} of the agent is not exactly {PROVEN:?}"
        );
    }
    assert_eq!(status_caps(pid, "CapInh"), 0);
    assert_eq!(status_caps(pid, "CapAmb"), 0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // Every fix kind, in both back-ends.
    node.restore("iptables-nft-restore", CILIUM_NAT).unwrap();
    node.restore("iptables-nft-restore", &hijack("CNI-DN-lpnft"))
        .unwrap();
    node.restore("iptables-legacy-restore", &hijack("CNI-DN-lplegacy"))
        .unwrap();
    let _asking: Background = client.spawn(&format!("arping -i cl0 -W 0.2 -c 600 {VIP}"));
    for subject in [
        "OLD_CILIUM_POST_nat",
        "CNI-DN-lpnft",
        "CNI-DN-lplegacy",
        VIP,
    ] {
        agent.wait(
            &format!("{subject} mended and verified"),
            Duration::from_secs(40),
            |a| !a.journaled(subject, "verified").is_empty(),
        );
    }
    for outcome in ["failed", "unknown"] {
        let journal = agent.journal_file();
        assert!(
            !journal.iter().any(|e| e["outcome"] == outcome),
            "{outcome} in the journal: {journal:#?}"
        );
    }
    let nft = node.sh("iptables-nft-save -t nat").unwrap();
    assert!(!nft.contains("CNI-DN-lpnft"), "{nft}");
    assert!(!nft.contains("-A OLD_CILIUM_POST_nat"), "{nft}");
    let legacy = node.sh("iptables-legacy-save -t nat").unwrap();
    assert!(!legacy.contains("CNI-DN-lplegacy"), "{legacy}");
    assert!(node.sh("ip link show eth0").unwrap().contains("PROMISC"));

    // No source failed for want of a privilege, and the Docker host is no hijack.
    let status = agent.status();
    for (name, health) in status["sourceHealth"].as_object().unwrap() {
        assert_eq!(health["ok"], true, "source {name}: {health:#}");
        assert!(health["lastError"].is_null(), "source {name}: {health:#}");
    }
    let findings = status["findings"].as_array().unwrap();
    assert!(
        !findings
            .iter()
            .any(|f| f["check"] == "hostport-hijack" && f["subject"] == "ip nat DOCKER"),
        "docker-proxy's own DNAT reported as a hijack: {status:#}"
    );
    assert!(agent.terminate().success());
}

#[test]
fn without_net_admin_or_net_raw_the_agent_says_which_is_missing() {
    require_tool("setpriv");
    require_tool("iptables-legacy-restore");
    let node = NetNs::new("lpmiss");
    node.restore(
        "iptables-legacy-restore",
        "*nat\n:X - [0:0]\n-A PREROUTING -j X\nCOMMIT\n",
    )
    .unwrap();
    let state = netmend_e2e::fresh_state_dir(&node);
    let cases = [
        ("NET_ADMIN", "reading nftables needs CAP_NET_ADMIN"),
        (
            "NET_RAW",
            "reading iptables-legacy needs CAP_NET_ADMIN and CAP_NET_RAW",
        ),
    ];
    for (missing, message) in cases {
        let kept: Vec<&str> = PROVEN.iter().copied().filter(|c| *c != missing).collect();
        let mut args: Vec<String> = setpriv(&kept);
        args.push(netmend_e2e::netmend_binary().display().to_string());
        args.extend(
            [
                "check",
                "--window",
                "0s",
                "--output",
                "json",
                "--state-dir",
                &state,
            ]
            .map(String::from),
        );
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "without {missing}: {stderr}");
        assert!(stderr.contains(message), "without {missing}: {stderr}");
    }
}
