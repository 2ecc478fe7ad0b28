//! End-to-end tests of issue 9's precision items, in fresh network namespaces with the real
//! tools: a Cilium backup chain that is the only copy is not flushed; an HA standby's VIP gives no
//! finding; a new VIP is judged after 5,000 other addresses were asked for; owners split across
//! backends through hook jumps or across tables are found, while kubelet's canaries are not.

use netmend_e2e::{require_tool, NetNs};
use serde_json::Value;
use std::process::Output;

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netmend printed no JSON ({e}); status {}; stdout {}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn findings_of<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

fn write_config(ns: &NetNs, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("netmend-config-{}.yaml", ns.name));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn fresh_state_dir(ns: &NetNs) -> String {
    let path = std::env::temp_dir().join(format!("netmend-state-{}", ns.name));
    let _ = std::fs::remove_dir_all(&path);
    path.display().to_string()
}

/// `netmend check --window 0s --apply` in enforce mode with flush-stale-chain enabled.
fn enforce_stale_chain(ns: &NetNs) -> Value {
    let config = write_config(
        ns,
        "mode: enforce\nfixes:\n  flush-stale-chain: { enabled: true }\n",
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
