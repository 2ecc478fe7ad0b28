//! End-to-end tests of `netmend check` in fresh network namespaces, with rules made by the real
//! `iptables-nft`, `iptables-legacy` and `nft` binaries, shaped like the field reports. Fixes are
//! applied by the binary and the result read back with the real tools.

use netmend_e2e::{
    findings_of, fresh_state_dir, json_of, kube_proxy_nft_fixture, kube_proxy_ruleset,
    node_with_lan, require_tool, write_config, NetNs,
};
use serde_json::Value;

/// The node and LAN namespaces of these tests (nft is used too).
fn node(tag: &str) -> (NetNs, NetNs) {
    require_tool("nft");
    node_with_lan(tag)
}

/// `netmend check --window 0s --apply --output json --config CONFIG` with a fresh state dir.
fn check_and_apply(ns: &NetNs, config: &str) -> Value {
    check_and_apply_in(ns, config, &fresh_state_dir(ns))
}

/// The same with the state dir `state` (kept between runs).
fn check_and_apply_in(ns: &NetNs, config: &str, state: &str) -> Value {
    json_of(&ns.netmend(&[
        "check",
        "--window",
        "0s",
        "--apply",
        "--output",
        "json",
        "--config",
        config,
        "--state-dir",
        state,
    ]))
}

/// Cilium's feeder rules and its live masquerade chain, plus the stale backup chain of
/// k3s-cilium-gotchas.md whose address was corrupted by version skew.
const CILIUM_NAT: &str = r#"*nat
:CILIUM_POST_nat - [0:0]
:OLD_CILIUM_POST_nat - [0:0]
:CILIUM_PRE_nat - [0:0]
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" -j CILIUM_PRE_nat
-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CILIUM_POST_nat -m mark --mark 0xa00/0xe00 -m comment --comment "exclude proxy return traffic from masquerade" -j ACCEPT
-A CILIUM_POST_nat -s 127.0.0.1/32 -o cilium_host -m comment --comment "cilium host->cluster from 127.0.0.1 masquerade" -j SNAT --to-source 10.42.0.167
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 99.105.108.105/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A OLD_CILIUM_POST_nat -m mark --mark 0xa00/0xe00 -m comment --comment "exclude proxy return traffic from masquerade" -j ACCEPT
-A OLD_CILIUM_POST_nat ! -s 10.42.0.0/24 ! -d 10.42.0.0/24 -o cilium_host -m comment --comment "cilium host->cluster masquerade" -j SNAT --to-source 10.42.0.167
-A OLD_CILIUM_POST_nat -s 127.0.0.1/32 -o cilium_host -m comment --comment "cilium host->cluster from 127.0.0.1 masquerade" -j SNAT --to-source 10.42.0.167
-A OLD_CILIUM_POST_nat -o cilium_host -m mark --mark 0xf00/0xf00 -m conntrack --ctstate DNAT -m comment --comment "hairpin traffic that originated from a local pod" -j SNAT --to-source 10.42.0.167
COMMIT
"#;

#[test]
fn stale_cilium_backup_chains_are_found_in_both_backends_and_flushed() {
    let (ns, _lan) = node("stale");
    ns.restore("iptables-nft-restore", CILIUM_NAT).unwrap();
    ns.restore("iptables-legacy-restore", CILIUM_NAT).unwrap();

    let out = ns.netmend(&["check", "--window", "0s", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let stale = findings_of(&report, "cilium-stale-backup-chain");
    assert_eq!(stale.len(), 2, "{report:#}");
    let mut backends: Vec<&str> = stale
        .iter()
        .map(|f| f["evidence"]["backend"].as_str().unwrap())
        .collect();
    backends.sort();
    assert_eq!(backends, ["legacy", "nft"]);
    for f in &stale {
        assert_eq!(f["subject"], "ip nat OLD_CILIUM_POST_nat");
        assert_eq!(f["evidence"]["rules"], 5);
        assert_eq!(f["evidence"]["references"], 0);
        assert_eq!(f["fix"]["name"], "flush-stale-chain");
        assert_eq!(f["fix"]["state"], "dry-run");
        let rules = f["evidence"]["ruleset"].as_array().unwrap();
        assert!(
            rules[0]
                .as_str()
                .unwrap()
                .contains("-s 10.42.0.0/24 ! -d 99.105.108.0/24 ! -o cilium_+"),
            "{rules:?}"
        );
    }
    // Same owner in both backends is a split, reported too.
    let split = findings_of(&report, "iptables-backend-split");
    assert!(
        split.iter().any(|f| f["subject"] == "ip CILIUM_*"),
        "{report:#}"
    );
    assert!(report["sources"]["nftables"]["ok"].as_bool().unwrap());

    // Dry-run with --apply changes nothing.
    let out = ns.netmend(&[
        "check",
        "--window",
        "0s",
        "--apply",
        "--state-dir",
        &fresh_state_dir(&ns),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .contains(":OLD_CILIUM_POST_nat"));

    // Enforce: both backup chains flushed and deleted; the live chain untouched.
    let before_live: Vec<String> = ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("-A CILIUM_POST_nat"))
        .map(String::from)
        .collect();
    // Even with `--window 0s`, a backup chain is flushed only once it has been there for
    // staleAfter, counted from the first run that saw it (kept in the state dir).
    let config = write_config(
        &ns,
        "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 2s }\nfixes:\n  flush-stale-chain: { enabled: true }\n",
    );
    let state = fresh_state_dir(&ns);
    let first = check_and_apply_in(&ns, &config, &state);
    let stale = findings_of(&first, "cilium-stale-backup-chain");
    assert_eq!(stale.len(), 2, "{first:#}");
    for f in stale {
        assert_eq!(f["fix"]["state"], "pending", "{f:#}");
    }
    assert!(ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .contains(":OLD_CILIUM_POST_nat"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let report = check_and_apply_in(&ns, &config, &state);
    for f in findings_of(&report, "cilium-stale-backup-chain") {
        assert_eq!(f["fix"]["state"], "verified", "{f:#}");
    }
    let nft_after = ns.sh("iptables-nft-save -t nat").unwrap();
    let legacy_after = ns.sh("iptables-legacy-save -t nat").unwrap();
    assert!(!nft_after.contains("OLD_CILIUM_POST_nat"), "{nft_after}");
    assert!(
        !legacy_after.contains("OLD_CILIUM_POST_nat"),
        "{legacy_after}"
    );
    let after_live: Vec<String> = nft_after
        .lines()
        .filter(|l| l.starts_with("-A CILIUM_POST_nat"))
        .map(String::from)
        .collect();
    assert_eq!(before_live, after_live);
    assert_eq!(after_live.len(), 3);
    assert!(legacy_after.contains("-A CILIUM_POST_nat -s 10.42.0.0/24"));
}

#[test]
fn a_referenced_backup_chain_is_flushed_and_kept() {
    let (ns, _lan) = node("stale-ref");
    ns.restore(
        "iptables-nft-restore",
        "*nat\n:CILIUM_POST_nat - [0:0]\n:OLD_CILIUM_POST_nat - [0:0]\n-A POSTROUTING -j CILIUM_POST_nat\n-A POSTROUTING -j OLD_CILIUM_POST_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\nCOMMIT\n",
    )
    .unwrap();
    let config = write_config(
        &ns,
        "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true }\n",
    );
    let report = check_and_apply(&ns, &config);
    let stale = findings_of(&report, "cilium-stale-backup-chain");
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["fix"]["state"], "verified", "{report:#}");
    // Flushed but kept: something still jumps to it.
    let after = ns.sh("iptables-nft-save -t nat").unwrap();
    assert!(after.contains(":OLD_CILIUM_POST_nat"), "{after}");
    assert!(!after.contains("-A OLD_CILIUM_POST_nat"), "{after}");
    assert!(
        after.contains("-A POSTROUTING -j OLD_CILIUM_POST_nat"),
        "{after}"
    );
}

/// k3s ServiceLB through the CNI portmap plugin: the API server's 6443 captured, plus Traefik's
/// 80/443 (legitimate) and a hijacked port on which a host process listens.
const PORTMAP_NAT: &str = r#"*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-3499088e1adba268a4e0c - [0:0]
:CNI-DN-7f1c0ffee0aa11bb22cc3 - [0:0]
:CNI-DN-b7a2d9a0e4f1c2d3e4f50 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"8e92d16f0a1b2c3d\"" -m multiport --dports 6443 -j CNI-DN-3499088e1adba268a4e0c
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"77aa0bb1cc2dd3ee\"" -m multiport --dports 80,443 -j CNI-DN-7f1c0ffee0aa11bb22cc3
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"99ff88ee77dd66cc\"" -m multiport --dports 8443 -j CNI-DN-b7a2d9a0e4f1c2d3e4f50
-A CNI-DN-3499088e1adba268a4e0c -s 10.42.0.0/24 -p tcp -m tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-3499088e1adba268a4e0c -s 127.0.0.1/32 -p tcp -m tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-3499088e1adba268a4e0c -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
-A CNI-DN-7f1c0ffee0aa11bb22cc3 -s 10.42.0.0/24 -p tcp -m tcp --dport 80 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-7f1c0ffee0aa11bb22cc3 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.42.0.9:80
-A CNI-DN-7f1c0ffee0aa11bb22cc3 -s 10.42.0.0/24 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-7f1c0ffee0aa11bb22cc3 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.0.9:443
-A CNI-DN-b7a2d9a0e4f1c2d3e4f50 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.42.0.31:8443
COMMIT
"#;

#[test]
fn portmap_hijack_of_the_api_port_and_of_a_listening_port_is_found_and_removed() {
    let (ns, _lan) = node("hijack");
    ns.restore("iptables-nft-restore", PORTMAP_NAT).unwrap();
    let _listener = ns.listen_tcp("0.0.0.0", 8443);

    let out = ns.netmend(&["check", "--window", "0s", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let hijacks = findings_of(&report, "hostport-hijack");
    let subjects: Vec<&str> = hijacks
        .iter()
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [
            "ip nat CNI-DN-3499088e1adba268a4e0c",
            "ip nat CNI-DN-b7a2d9a0e4f1c2d3e4f50"
        ],
        "{report:#}"
    );
    let api = hijacks[0];
    assert_eq!(api["severity"], "critical");
    assert_eq!(api["evidence"]["ports"], serde_json::json!([6443]));
    assert_eq!(
        api["evidence"]["targets"],
        serde_json::json!(["10.42.0.244:6443"])
    );
    assert_eq!(api["evidence"]["owner"]["containerId"], "8e92d16f0a1b2c3d");
    assert_eq!(
        api["evidence"]["paths"][0],
        "PREROUTING -> CNI-HOSTPORT-DNAT -> CNI-DN-3499088e1adba268a4e0c"
    );
    let listener = hijacks[1];
    assert_eq!(listener["evidence"]["ports"], serde_json::json!([8443]));
    assert!(listener["evidence"]["protectedBecause"][0]
        .as_str()
        .unwrap()
        .contains("listens on 0.0.0.0:8443"));

    let config = write_config(
        &ns,
        "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true }\n",
    );
    let report = check_and_apply(&ns, &config);
    for f in findings_of(&report, "hostport-hijack") {
        assert_eq!(f["fix"]["state"], "verified", "{f:#}");
    }
    let after = ns.sh("iptables-nft-save -t nat").unwrap();
    assert!(!after.contains("CNI-DN-3499088e1adba268a4e0c"), "{after}");
    assert!(!after.contains("CNI-DN-b7a2d9a0e4f1c2d3e4f50"), "{after}");
    // Traefik's host ports and the portmap scaffolding stay.
    assert!(after.contains("-A CNI-DN-7f1c0ffee0aa11bb22cc3 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.0.9:443"), "{after}");
    assert!(after.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"));

    let out = ns.netmend(&["check", "--window", "0s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn legacy_hijack_is_removed_with_iptables_legacy() {
    let (ns, _lan) = node("hijack-leg");
    ns.restore("iptables-legacy-restore", PORTMAP_NAT).unwrap();
    let config = write_config(
        &ns,
        "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true }\n",
    );
    let report = check_and_apply(&ns, &config);
    let hijacks = findings_of(&report, "hostport-hijack");
    assert_eq!(hijacks.len(), 1, "{report:#}");
    assert_eq!(hijacks[0]["evidence"]["backend"], "legacy");
    assert_eq!(hijacks[0]["fix"]["state"], "verified", "{report:#}");
    let after = ns.sh("iptables-legacy-save -t nat").unwrap();
    assert!(!after.contains("CNI-DN-3499088e1adba268a4e0c"), "{after}");
    assert!(after.contains("CNI-DN-7f1c0ffee0aa11bb22cc3"), "{after}");
}

#[test]
fn kube_proxy_nftables_mode_is_healthy_until_a_nodeport_takes_a_protected_port() {
    let (ns, _lan) = node("kpnft");
    ns.nft_file(&kube_proxy_nft_fixture()).unwrap();
    // The node's own address is a NodePort address, as kube-proxy sets it.
    ns.sh("nft add element ip kube-proxy nodeport-ips '{ 192.168.1.233 }'")
        .unwrap();
    let out = ns.netmend(&["check", "--window", "0s", "--output", "json"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert!(
        report["sources"]["nftables"]["rules"].as_u64().unwrap() >= 40,
        "{report:#}"
    );

    ns.sh("nft add element ip kube-proxy service-nodeports '{ tcp . 10250 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }'")
        .unwrap();
    let out = ns.netmend(&["check", "--window", "0s", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    let hijacks = findings_of(&report, "hostport-hijack");
    assert_eq!(hijacks.len(), 1, "{report:#}");
    let f = hijacks[0];
    assert_eq!(
        f["subject"],
        "ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"
    );
    assert_eq!(f["evidence"]["ports"], serde_json::json!([10250]));
    assert_eq!(
        f["evidence"]["targets"],
        serde_json::json!(["10.180.0.2:80"])
    );
    assert!(
        f["evidence"]["paths"][0]
            .as_str()
            .unwrap()
            .starts_with("nat-prerouting -> services -> external-42NFTM6N-ns2/svc2/tcp/p80"),
        "{f:#}"
    );
    assert_eq!(f["fix"]["state"], "blocked");
}

const FLANNEL: &str = r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"#;

/// The `kubernetes` Service of k3s: its endpoint is the node itself on 6443 (not a hijack).
const KUBERNETES_SERVICE: &str = r#"*nat
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-MKZ5TTJEI3R5D5SV - [0:0]
-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 192.168.1.233:6443" -j KUBE-SEP-MKZ5TTJEI3R5D5SV
-A KUBE-SEP-MKZ5TTJEI3R5D5SV -s 192.168.1.233/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-MKZ5TTJEI3R5D5SV -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 192.168.1.233:6443
COMMIT
"#;

#[test]
fn a_healthy_k3s_node_gives_no_findings() {
    let (ns, _lan) = node("healthy");
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(1000, 2))
        .unwrap();
    ns.restore("iptables-nft-restore", KUBERNETES_SERVICE)
        .unwrap();
    ns.restore("iptables-nft-restore", FLANNEL).unwrap();
    // Traefik's ServiceLB host ports 80/443 only.
    let traefik: String = PORTMAP_NAT
        .lines()
        .filter(|l| !l.contains("3499088e1adba268a4e0c") && !l.contains("b7a2d9a0e4f1c2d3e4f50"))
        .collect::<Vec<_>>()
        .join("\n");
    ns.restore("iptables-nft-restore", &format!("{traefik}\n"))
        .unwrap();
    // The API server and kubelet listen on the node, as they do on k3s.
    let _api = ns.listen_tcp("0.0.0.0", 6443);
    let _kubelet = ns.listen_tcp("::", 10250);

    let out = ns.netmend(&["check", "--window", "0s", "--output", "json"]);
    let report = json_of(&out);
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    assert_eq!(out.status.code(), Some(0));
    let rules = report["sources"]["nftables"]["rules"].as_u64().unwrap();
    assert!(rules > 7000, "kube-proxy rules read: {rules}");
    assert!(
        report["sources"]["iptables-legacy"]["ok"]
            .as_bool()
            .unwrap(),
        "{report:#}"
    );
    assert!(
        !ns.sh("cat /proc/net/ip_tables_names")
            .unwrap()
            .contains("nat"),
        "reading legacy state must not create legacy tables"
    );
}

#[test]
fn the_window_requires_a_backup_chain_to_persist() {
    let (ns, _lan) = node("window");
    ns.restore("iptables-nft-restore", CILIUM_NAT).unwrap();
    // A chain present for the whole window is stale.
    let out = ns.netmend(&["check", "--window", "300ms", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        findings_of(&json_of(&out), "cilium-stale-backup-chain").len(),
        1
    );
    // A chain that Cilium removes during the window is not.
    let child = ns.spawn("sh -c 'sleep 0.4; iptables-nft -t nat -F OLD_CILIUM_POST_nat; iptables-nft -t nat -X OLD_CILIUM_POST_nat'");
    let out = ns.netmend(&["check", "--window", "1500ms", "--output", "json"]);
    drop(child);
    let report = json_of(&out);
    assert!(
        findings_of(&report, "cilium-stale-backup-chain").is_empty(),
        "{report:#}"
    );
}

#[test]
fn text_output_is_readable_and_json_matches_the_contract() {
    let (ns, _lan) = node("text");
    ns.restore("iptables-nft-restore", CILIUM_NAT).unwrap();
    let out = ns.netmend(&["check", "--window", "0s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 finding"), "{text}");
    assert!(
        text.contains("cilium-stale-backup-chain  ip nat OLD_CILIUM_POST_nat"),
        "{text}"
    );
    assert!(text.contains("fix flush-stale-chain: dry-run"), "{text}");
    assert!(text.contains("nftables: ok"), "{text}");

    let report = json_of(&ns.netmend(&["check", "--window", "0s", "--output", "json"]));
    let f = &report["findings"][0];
    for key in [
        "check", "subject", "severity", "message", "since", "evidence", "fix",
    ] {
        assert!(f.get(key).is_some(), "finding lacks {key}: {f:#}");
    }
    assert!(report["node"].is_string());
    assert!(report["sources"]["nftables"]["durationMs"].is_u64());
}

#[test]
fn bad_input_exits_2_with_one_clear_line() {
    let (ns, _lan) = node("errors");
    let config = write_config(
        &ns,
        "mode: enforce\nfixes:\n  set-promisc:\n    enabld: true\n",
    );
    let out = ns.netmend(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("fixes.set-promisc.enabld"), "{stderr}");

    let out = ns.netmend(&["validate-config", &config]);
    assert_eq!(out.status.code(), Some(2));
    let good = write_config(&ns, "mode: dry-run\n");
    let out = ns.netmend(&["validate-config", &good]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ns.netmend(&["check", "--netns", "nm-no-such-namespace"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = ns.netmend(&["check", "--window", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_privilege_is_named() {
    require_tool("setpriv");
    let (ns, _lan) = node("noprivs");
    let out = ns
        .sh_output(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} check --window 0s",
            netmend_e2e::netmend_binary().display()
        ))
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn check_inspects_another_namespace_with_netns() {
    let (ns, _lan) = node("netns");
    ns.restore("iptables-nft-restore", CILIUM_NAT).unwrap();
    let out = std::process::Command::new(netmend_e2e::netmend_binary())
        .args([
            "check", "--window", "0s", "--output", "json", "--netns", &ns.name,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        findings_of(&json_of(&out), "cilium-stale-backup-chain").len(),
        1
    );
}

#[test]
fn the_catalog_lists_every_check_and_fix() {
    let out = std::process::Command::new(netmend_e2e::netmend_binary())
        .arg("checks")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for id in [
        "cilium-stale-backup-chain",
        "hostport-hijack",
        "iptables-backend-split",
        "arp-unanswered",
        "promisc-lost",
        "flush-stale-chain",
        "remove-hijack-rule",
        "set-promisc",
    ] {
        assert!(text.contains(id), "{id} missing from:\n{text}");
    }
}
