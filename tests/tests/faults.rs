//! Fault injection, end to end: the real `netmend run` in a node namespace, a fault injected while
//! it works, and every time the same four questions: nothing half-applied, nothing lost, a clear
//! error, and the agent keeps serving (`/healthz`, `/status`).
//!
//! This file is the one list of the faults netmend is tested against. Those tested here:
//!
//! | fault | test |
//! |---|---|
//! | the nftables notification socket overflows (4 KiB receive buffer, a 25,000-rule burst) | [`a_notification_socket_overflow_rereads_the_ruleset_and_misses_nothing`] |
//! | a chain, then a whole table, vanishes between the decision and the write | [`a_chain_or_table_vanishing_between_decision_and_action_changes_nothing`] |
//! | the state directory is full (a 256 KiB tmpfs filled up) | [`a_full_state_directory_loses_no_journal_entry`] |
//! | the state directory is read-only (the tmpfs remounted `ro`), also at start | [`a_read_only_state_directory_loses_no_journal_entry`] |
//! | the config file disappears | [`the_config_file_disappearing_keeps_the_last_good_config`] |
//! | Cilium's responder map is unpinned mid-run, then a map of another layout pinned there | [`the_responder_map_unpinned_mid_run_is_not_an_error_and_a_wrong_one_is`] |
//! | the interface is deleted while a set-promisc waits to be written | [`an_interface_deleted_before_a_pending_set_promisc_is_written_fails_cleanly`] |
//! | the interface is deleted while a set-promisc waits for its proof | [`an_interface_deleted_during_a_set_promisc_verification_releases_it`] |
//! | SIGTERM arrives while a fix is being written | [`sigterm_during_an_action_finishes_and_journals_it`] |
//!
//! Closer to the kernel, the same faults are also tested on the library's own calls:
//! `incremental.rs` (`overflow_resyncs_once_and_matches_a_dump`: the cache equals a fresh dump
//! after an overflow), `nftables.rs` (`a_stale_generation_is_refused_and_changes_nothing`,
//! `a_missing_rule_fails_the_whole_batch`, `deleting_a_referenced_chain_fails_with_ebusy_and_changes_nothing`),
//! `legacy.rs` (`a_batch_whose_rule_changed_under_it_has_no_effect`: the iptables-legacy
//! write re-checks under the xtables lock), `l2.rs` (`an_interface_deleted_mid_watch_is_marked_gone`),
//! `agent.rs` (`an_invalid_config_is_rejected_while_the_agent_keeps_running`, a torn and corrupt
//! journal), `l2_mend.rs` (`an_agent_restarted_during_a_promisc_verification_finishes_it`: killed
//! with SIGKILL mid-proof).
//!
//! The windows "between the decision and the write" are opened with the test-only
//! `NETMEND_TEST_ACT_DELAY` (a pause after the last re-check, right before the write); the small
//! socket buffer with `NETMEND_NFT_EVENT_BUFFER` (see docs/interface.md).

use netmend_e2e::agent_process::AgentProcess;
use netmend_e2e::{kube_proxy_ruleset, require_tool, veth_pair, Background, NetNs};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const ENFORCE_HIJACK: &str = "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true, confirmFor: 0s }\nkubernetes: { enabled: false }\n";
/// What the agent logs when `NETMEND_TEST_ACT_DELAY` holds a write back.
const PAUSED: &str = "NETMEND_TEST_ACT_DELAY: pausing before the write";

/// A CNI-portmap hostport that hijacks the API server port 6443, in chain `chain`.
fn hijack(chain: &str) -> String {
    format!(
        "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:{chain} - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"8e92d16f\\\"\" -m multiport --dports 6443 -j {chain}\n-A {chain} -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443\nCOMMIT\n"
    )
}

/// A node namespace with a node address and a 200-service kube-proxy ruleset (iptables-nft).
fn node(tag: &str) -> NetNs {
    for tool in [
        "iptables-nft-restore",
        "iptables-nft-save",
        "nsenter",
        "nft",
    ] {
        require_tool(tool);
    }
    let ns = NetNs::new(tag);
    ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 192.168.1.233/24 dev eth0 && ip link set eth0 up")
        .unwrap();
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(200, 2))
        .unwrap();
    ns
}

fn nat(ns: &NetNs) -> String {
    ns.sh("iptables-nft-save -t nat").unwrap()
}

fn pauses(agent: &AgentProcess) -> usize {
    agent.log().matches(PAUSED).count()
}

fn has_hijack_finding(agent: &AgentProcess, chain: &str) -> bool {
    agent
        .findings("hostport-hijack")
        .iter()
        .any(|f| f["subject"].as_str().unwrap_or("").contains(chain))
}

#[test]
fn a_notification_socket_overflow_rereads_the_ruleset_and_misses_nothing() {
    let ns = node("fovf");
    let mut agent = AgentProcess::new(&ns, 9860, "kubernetes: { enabled: false }\n")
        .with_env("NETMEND_NFT_EVENT_BUFFER", "4096");
    agent.start();
    // One transaction of ~25,000 rules: far more notifications than 4 KiB hold.
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(2500, 2))
        .unwrap();
    ns.restore("iptables-nft-restore", &hijack("CNI-DN-overflow"))
        .unwrap();
    agent.wait("the hijack written after the burst", WAIT, |a| {
        has_hijack_finding(a, "CNI-DN-overflow")
    });
    let metrics = agent.metrics();
    assert!(
        metrics.contains("netmend_resyncs_total{result=\"event-overflow\"}"),
        "the overflow was not counted as one: {metrics}"
    );
    // The re-read matches the kernel: the hijack's removal is seen too.
    ns.sh("iptables-nft -t nat -F CNI-DN-overflow && iptables-nft -t nat -D CNI-HOSTPORT-DNAT 1 && iptables-nft -t nat -X CNI-DN-overflow")
        .unwrap();
    agent.wait("the finding to clear", WAIT, |a| {
        !has_hijack_finding(a, "CNI-DN-overflow")
    });
    assert!(agent.healthy());
    assert!(agent.terminate().success());
}

#[test]
fn a_chain_or_table_vanishing_between_decision_and_action_changes_nothing() {
    let ns = node("fvan");
    let mut agent =
        AgentProcess::new(&ns, 9861, ENFORCE_HIJACK).with_env("NETMEND_TEST_ACT_DELAY", "3s");
    agent.start();
    // First a chain (the hijack's own, as its writer removes it), then the whole nat table.
    let vanish = [
        ("CNI-DN-vanish1", "iptables-nft -t nat -F CNI-DN-vanish1 && iptables-nft -t nat -D CNI-HOSTPORT-DNAT 1 && iptables-nft -t nat -X CNI-DN-vanish1"),
        ("CNI-DN-vanish2", "nft delete table ip nat"),
    ];
    for (round, (chain, remove)) in vanish.into_iter().enumerate() {
        ns.restore("iptables-nft-restore", &hijack(chain)).unwrap();
        agent.wait("the write to be paused", WAIT, |a| pauses(a) > round);
        ns.sh(remove).unwrap();
        let before = ns.sh("nft list ruleset").unwrap();
        agent.wait("the refused write to be journaled", WAIT, |a| {
            !a.journaled(chain, "skipped_precondition_moved").is_empty()
        });
        let entry = &agent.journaled(chain, "skipped_precondition_moved")[0];
        let detail = entry["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("the ruleset changed since it was read")
                && detail.ends_with("nothing done"),
            "{entry:#}"
        );
        assert_eq!(
            ns.sh("nft list ruleset").unwrap(),
            before,
            "the agent wrote something"
        );
        assert!(agent.journaled(chain, "applied").is_empty());
        agent.wait("the finding to clear", WAIT, |a| {
            !has_hijack_finding(a, chain)
        });
        assert!(agent.healthy());
    }
    assert!(agent.terminate().success());
}

/// A tmpfs mounted on the agent's state directory, unmounted on drop.
struct StateMount(std::path::PathBuf);

impl StateMount {
    fn new(agent: &AgentProcess) -> StateMount {
        let dir = agent.state_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "netmend-fault"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        StateMount(dir)
    }

    fn sh(&self, script: &str) {
        let script = script.replace("{state}", &self.0.display().to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for StateMount {
    fn drop(&mut self) {
        // Twice: a test may have stacked a second mount on the first.
        for _ in 0..2 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .output();
        }
    }
}

/// The agent mends a hijack while its journal cannot be written (`break_it`): the fix happens
/// once, the error shows on /status, the entries wait in memory and reach the file, in order,
/// once `heal` makes it writable again.
fn journal_survives(tag: &str, port: u16, break_it: &str, heal: &str, error: &str) {
    let ns = node(tag);
    let mut agent = AgentProcess::new(&ns, port, ENFORCE_HIJACK);
    let mount = StateMount::new(&agent);
    agent.start();
    mount.sh(break_it);
    let chain = format!("CNI-DN-{tag}");
    ns.restore("iptables-nft-restore", &hijack(&chain)).unwrap();
    agent.wait("the hijack to be removed", WAIT, |_| {
        !nat(&ns).contains(&chain)
    });
    agent.wait("the write error on /status", WAIT, |a| {
        let health = &a.status()["journalHealth"];
        health["unwritten"].as_u64() == Some(2)
            && health["writeError"]
                .as_str()
                .is_some_and(|e| e.contains(error))
    });
    assert!(agent.healthy());
    assert!(agent.journal_file().is_empty(), "nothing could be written");
    assert!(
        agent.log().contains("journal write failed"),
        "{}",
        agent.log()
    );

    mount.sh(heal);
    agent.wait("the kept entries to be written", WAIT, |a| {
        a.status()["journalHealth"]["unwritten"].as_u64() == Some(0)
    });
    let outcomes: Vec<String> = agent
        .journal_file()
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&chain))
        .map(|e| e["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["applied", "verified"]);
    let status = agent.status();
    assert!(
        status["journalHealth"]["writeError"].is_null(),
        "{status:#}"
    );
    assert!(!has_hijack_finding(&agent, &chain));
    assert!(agent.terminate().success());
}

#[test]
fn a_full_state_directory_loses_no_journal_entry() {
    journal_survives(
        "ffull",
        9862,
        "dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null; test -s {state}/filler",
        "rm {state}/filler",
        "No space left on device",
    );
}

#[test]
fn a_read_only_state_directory_loses_no_journal_entry() {
    // The volume behind the directory swapped for a read-only one holding the same files (a
    // file system with files open for writing cannot be remounted read-only in place).
    journal_survives(
        "fro",
        9863,
        "cp -a {state} {state}.copy && mount -t tmpfs -o size=256k netmend-ro {state} && cp -a {state}.copy/. {state}/ && mount -o remount,ro {state}",
        "umount {state}",
        "Read-only file system",
    );
    // Read-only from the start: the agent refuses to run without its journal, and says why.
    let ns = node("fro-start");
    let agent = AgentProcess::new(&ns, 9864, ENFORCE_HIJACK);
    let mount = StateMount::new(&agent);
    mount.sh("mount -o remount,ro {state}");
    let config = agent.config_path().display().to_string();
    let state = agent.state_dir().display().to_string();
    let out = ns.netmend(&[
        "run",
        "--config",
        &config,
        "--listen",
        "127.0.0.1:9864",
        "--state-dir",
        &state,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot open journal") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}

#[test]
fn the_config_file_disappearing_keeps_the_last_good_config() {
    let ns = node("fcfg");
    let mut agent = AgentProcess::new(&ns, 9865, ENFORCE_HIJACK);
    agent.start();
    std::fs::remove_file(agent.config_path()).unwrap();
    agent.wait("the unreadable file on /status", WAIT, |a| {
        let config = &a.status()["config"];
        config["valid"] == false
            && config["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("cannot read") && e.contains("No such file"))
    });
    let status = agent.status();
    assert_eq!(status["config"]["mode"], "enforce", "{status:#}");
    // The last good config is still in force: a hijack is mended.
    ns.restore("iptables-nft-restore", &hijack("CNI-DN-noconfig"))
        .unwrap();
    agent.wait("the hijack to be removed", WAIT, |a| {
        a.journaled("CNI-DN-noconfig", "verified").len() == 1
    });
    assert!(!nat(&ns).contains("CNI-DN-noconfig"));
    assert!(agent
        .metrics()
        .contains("netmend_config_reloads_total{result=\"invalid\"} 1"));
    agent.write_config(ENFORCE_HIJACK);
    agent.wait("the file to be valid again", WAIT, |a| {
        a.status()["config"]["valid"] == true
    });
    assert!(agent.healthy());
    assert!(agent.terminate().success());
}

/// A bpffs pin removed on drop.
struct Pin(std::path::PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_responder_map_unpinned_mid_run_is_not_an_error_and_a_wrong_one_is() {
    require_tool("bpftool");
    let ns = node("fbpf");
    let pin = Pin(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/netmend-fault-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_file(&pin.0);
    let ifindex: u32 = ns
        .sh("cat /sys/class/net/eth0/ifindex")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let le = |v: u32| {
        v.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let path = pin.0.display().to_string();
    ns.sh(&format!("bpftool map create {path} type hash key 8 value 8 entries 64 name cilium_l2_respo && bpftool map update pinned {path} key hex c0 a8 01 33 {} value hex {} 00 00 00 00", le(ifindex), le(7)))
        .unwrap();
    let config = format!("checks:\n  arp-unanswered: {{ targets: [\"192.168.1.51@eth0\"], window: 2s, responderMapPath: {path} }}\nkubernetes: {{ enabled: false }}\n");
    let mut agent = AgentProcess::new(&ns, 9866, &config);
    agent.start();
    let l2_health = |a: &AgentProcess| {
        a.status()["sourceHealth"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.as_str() == "bpf")
            .map(|(name, h)| (name.clone(), h.clone()))
            .collect::<Vec<_>>()
    };
    agent.wait("the map to be read", WAIT, |a| {
        let health = l2_health(a);
        !health.is_empty() && health.iter().all(|(_, h)| h["ok"] == true)
    });
    std::fs::remove_file(&pin.0).unwrap();
    // Unpinned (Cilium restarting, or gone): nothing to read, which is no error.
    std::thread::sleep(Duration::from_secs(3));
    for (name, health) in l2_health(&agent) {
        assert_eq!(health["ok"], true, "{name}: {health:#}");
    }
    assert!(agent.healthy());
    // A map of another layout pinned there: a clear error, and the agent serves on.
    ns.sh(&format!(
        "bpftool map create {path} type array key 4 value 8 entries 4 name not_a_responder"
    ))
    .unwrap();
    agent.wait("the wrong map's error on /status", WAIT, |a| {
        l2_health(a).iter().any(|(_, h)| {
            h["ok"] == false
                && h["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("is not an L2 responder map"))
        })
    });
    assert!(agent.healthy());
    std::fs::remove_file(&pin.0).unwrap();
    agent.wait("the error to clear once it is gone", WAIT, |a| {
        l2_health(a).iter().all(|(_, h)| h["ok"] == true)
    });
    assert!(agent.terminate().success());
}

const VIP: &str = "10.99.0.51";

/// A node namespace answering for the VIP on eth0 behind a "filtering driver" that drops the
/// requests for it (an ingress chain), and a client asking for the VIP every 200 ms.
fn filtered_lan(tag: &str) -> (NetNs, NetNs, Background) {
    for tool in ["arping", "nft", "ip"] {
        require_tool(tool);
    }
    let node = NetNs::new(tag);
    let client = NetNs::new(&format!("{tag}-cl"));
    veth_pair(&node, "eth0", &client, "cl0").unwrap();
    node.sh(&format!("ip addr add 10.99.0.1/24 dev eth0 && ip addr add {VIP}/32 dev eth0 && nft add table netdev nmdriver && nft add chain netdev nmdriver in '{{ type filter hook ingress device eth0 priority 0; }}' && nft add rule netdev nmdriver in arp operation request arp daddr ip {VIP} drop"))
        .unwrap();
    client.sh("ip addr add 10.99.0.2/24 dev cl0").unwrap();
    let asking = client.spawn(&format!("arping -i cl0 -W 0.2 -c 600 {VIP}"));
    (node, client, asking)
}

fn enforce_promisc(verify_within: &str) -> String {
    format!("mode: enforce\nchecks:\n  arp-unanswered: {{ targets: [\"{VIP}@eth0\"], window: 3s, minRequests: 3 }}\nfixes:\n  set-promisc: {{ enabled: true, interfaces: [\"eth0\"], confirmFor: 0s, cooldown: 1h, verifyWithin: {verify_within} }}\nkubernetes: {{ enabled: false }}\n")
}

#[test]
fn an_interface_deleted_before_a_pending_set_promisc_is_written_fails_cleanly() {
    let (node, _client, _asking) = filtered_lan("fpre");
    let mut agent = AgentProcess::new(&node, 9867, &enforce_promisc("5s"))
        .with_env("NETMEND_TEST_ACT_DELAY", "3s");
    agent.start();
    agent.wait("the set-promisc write to be paused", WAIT, |a| {
        pauses(a) > 0
    });
    node.sh("ip link del eth0").unwrap();
    agent.wait("the failure to be journaled", WAIT, |a| {
        !a.journaled(VIP, "failed").is_empty()
    });
    let entry = &agent.journaled(VIP, "failed")[0];
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .contains("cannot set eth0 promisc on: no such interface (ENODEV)"),
        "{entry:#}"
    );
    assert!(agent.journaled(VIP, "applied").is_empty());
    agent.wait("the findings to clear", WAIT, |a| {
        a.findings("arp-unanswered").is_empty() && a.findings("promisc-lost").is_empty()
    });
    assert!(agent.healthy());
    assert!(agent.terminate().success());
}

#[test]
fn an_interface_deleted_during_a_set_promisc_verification_releases_it() {
    let (node, client, asking) = filtered_lan("fmid");
    let mut agent = AgentProcess::new(&node, 9868, &enforce_promisc("6s"));
    agent.start();
    agent.wait("the set-promisc to be applied", WAIT, |a| {
        !a.journaled(VIP, "applied").is_empty()
    });
    node.sh("ip link del eth0").unwrap();
    agent.wait("the verification to settle", WAIT, |a| {
        !a.journaled(VIP, "reverted").is_empty() || !a.journaled(VIP, "failed").is_empty()
    });
    let entry = &agent.journaled(VIP, "reverted")[0];
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .ends_with("eth0 no longer exists: its promiscuous flag went with it"),
        "{entry:#}"
    );
    // The interface comes back (a driver reload, a replug): netmend holds no promisc on it, so
    // it neither reports promisc-lost nor sets the flag on its own.
    drop(asking);
    veth_pair(&node, "eth0", &client, "cl1").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.findings("promisc-lost").is_empty());
    assert!(!node.sh("ip link show eth0").unwrap().contains("PROMISC"));
    assert_eq!(agent.journaled(VIP, "applied").len(), 1);
    assert!(agent.healthy());
    assert!(agent.terminate().success());
}

#[test]
fn sigterm_during_an_action_finishes_and_journals_it() {
    let ns = node("fterm");
    let mut agent =
        AgentProcess::new(&ns, 9869, ENFORCE_HIJACK).with_env("NETMEND_TEST_ACT_DELAY", "3s");
    agent.start();
    ns.restore("iptables-nft-restore", &hijack("CNI-DN-term"))
        .unwrap();
    agent.wait("the write to be paused", WAIT, |a| pauses(a) > 0);
    let status = agent.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    // The action in progress was finished and journaled, not cut in half.
    assert!(!nat(&ns).contains("CNI-DN-term"));
    let outcomes: Vec<String> = agent
        .journal_file()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["applied", "verified"], "{}", agent.log());
    // The next run starts clean: nothing to do, nothing done twice.
    agent.env.clear();
    agent.start();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!has_hijack_finding(&agent, "CNI-DN-term"));
    assert_eq!(agent.journaled("CNI-DN-term", "applied").len(), 1);
    assert!(agent.healthy());
    assert!(agent.terminate().success());
}
