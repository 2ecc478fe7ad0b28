//! End-to-end tests of the Raspberry Pi / Wi-Fi incident through the `netmend` binary: a client
//! namespace sends ARP requests with the real `arping` for a VIP held by a node namespace, whose
//! "filtering driver" (a netdev ingress nftables chain) drops them while the interface is not
//! promiscuous. `netmend check` reports it; the agent sets promisc, verifies replies, restores the
//! flag when it is cleared by hand, and reverts a fix that did not help.

use netmend_e2e::{json_of, require_tool, veth_pair, wait_for, Background, NetNs};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const VIP: &str = "10.99.0.51";
const FILTER: &str = "nft add table netdev nmdriver && nft add chain netdev nmdriver in '{ type filter hook ingress device eth0 priority 0; }' && nft add rule netdev nmdriver in arp operation request arp daddr ip 10.99.0.51 drop";
/// The emulated driver stops filtering once the interface is promiscuous (what the NICs of the
/// field report do).
const DRIVER_LIFTS_ON_PROMISC: &str = "sh -c 'while true; do if ip link show eth0 | grep -q PROMISC; then nft delete table netdev nmdriver 2>/dev/null; fi; sleep 0.1; done'";

struct Lan {
    node: NetNs,
    client: NetNs,
    dir: PathBuf,
}

fn lan(tag: &str) -> Lan {
    for tool in ["arping", "nft", "ip"] {
        require_tool(tool);
    }
    let node = NetNs::new(tag);
    let client = NetNs::new(&format!("{tag}-cl"));
    veth_pair(&node, "eth0", &client, "cl0").unwrap();
    node.sh(&format!(
        "ip addr add 10.99.0.1/24 dev eth0 && ip addr add {VIP}/32 dev eth0"
    ))
    .unwrap();
    client.sh("ip addr add 10.99.0.2/24 dev cl0").unwrap();
    node.sh(FILTER).unwrap();
    let dir = std::env::temp_dir().join(format!("netmend-l2-{}", node.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Lan { node, client, dir }
}

impl Lan {
    fn config(&self, text: &str) -> String {
        let path = self.dir.join("config.yaml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// The client asks for the VIP every 200 ms for a while.
    fn client_asks(&self) -> Background {
        self.client
            .spawn(&format!("arping -i cl0 -W 0.2 -c 600 {VIP}"))
    }

    fn promisc(&self) -> bool {
        self.node
            .sh("ip link show eth0")
            .unwrap()
            .contains("PROMISC")
    }
}

#[test]
fn check_reports_the_unanswered_vip_and_not_an_answered_one() {
    let lan = lan("l2check");
    let config = lan.config("checks:\n  arp-unanswered: { targets: [\"10.99.0.51@eth0\"] }\n");
    let _asking = lan.client_asks();
    let out = lan.node.netmend(&[
        "check", "--window", "3s", "--output", "json", "--config", &config,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "arp-unanswered")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(f["subject"], "eth0@10.99.0.51");
    assert!(f["evidence"]["requests"].as_u64().unwrap() >= 3, "{f:#}");
    assert_eq!(f["evidence"]["repliesSent"], 0, "{f:#}");
    assert_eq!(f["fix"]["state"], "blocked", "veth is virtual: {f:#}");
    assert!(f["fix"]["detail"]
        .as_str()
        .unwrap()
        .contains("fixes.set-promisc.interfaces"));
    assert!(report["sources"]["arp"]["ok"].as_bool().unwrap());
    assert!(report["sources"]["bpf"]["detail"]
        .as_str()
        .unwrap()
        .contains("not pinned"));

    // The prober sees the same: no answer while filtered (exit 1).
    let probe = lan.client.netmend(&[
        "probe",
        "arp",
        VIP,
        "--interface",
        "cl0",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(
        probe.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // Without the filter the VIP is answered: nothing to report.
    lan.node.sh("nft delete table netdev nmdriver").unwrap();
    let out = lan.node.netmend(&[
        "check", "--window", "2s", "--output", "json", "--config", &config,
    ]);
    let report = json_of(&out);
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    assert_eq!(out.status.code(), Some(0));
    let probe = lan
        .client
        .netmend(&["probe", "arp", VIP, "--interface", "cl0"]);
    assert_eq!(
        probe.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(String::from_utf8_lossy(&probe.stdout).contains("10.99.0.51 is-at"));
}

struct Agent {
    process: Option<Background>,
    port: u16,
}

fn start_agent(lan: &Lan, port: u16, config: &str) -> Agent {
    let config = lan.config(config);
    let state = lan.dir.join("state").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let process = lan.node.spawn_netmend(
        &[
            "run",
            "--config",
            &config,
            "--listen",
            &listen,
            "--state-dir",
            &state,
        ],
        &lan.dir.join("agent.log"),
    );
    wait_for(Duration::from_secs(20), || {
        matches!(lan.node.http_get(port, "/readyz"), Ok((200, _))).then_some(())
    })
    .expect("agent ready");
    Agent {
        process: Some(process),
        port,
    }
}

fn status(lan: &Lan, agent: &Agent) -> Value {
    let (_, body) = lan.node.http_get(agent.port, "/status").unwrap();
    serde_json::from_str(&body).unwrap()
}

fn journal_has(lan: &Lan, agent: &Agent, check: &str, outcome: &str) -> bool {
    status(lan, agent)["journal"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["check"] == check && e["outcome"] == outcome)
}

fn agent_log(lan: &Lan) -> String {
    std::fs::read_to_string(lan.dir.join("agent.log")).unwrap_or_default()
}

const ENFORCE: &str = r#"mode: enforce
checks:
  arp-unanswered: { targets: ["10.99.0.51@eth0"], window: 5s, minRequests: 3 }
fixes:
  set-promisc: { enabled: true, interfaces: ["eth0"], confirmFor: 0s, cooldown: 1h, verifyWithin: 3s }
"#;

#[test]
fn the_agent_sets_promisc_verifies_replies_and_restores_a_cleared_flag() {
    let lan = lan("l2mend");
    let _driver = lan.node.spawn(DRIVER_LIFTS_ON_PROMISC);
    let _asking = lan.client_asks();
    let mut agent = start_agent(&lan, 9820, ENFORCE);

    wait_for(Duration::from_secs(30), || {
        journal_has(&lan, &agent, "arp-unanswered", "verified").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not verified: {:#}\n{}",
            status(&lan, &agent),
            agent_log(&lan)
        )
    });
    assert!(lan.promisc());
    // The client now gets answers.
    let answered = lan
        .client
        .sh_output(&format!("arping -i cl0 -c 2 -w 3 {VIP}"))
        .unwrap();
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stdout)
    );

    // Cleared by hand (a link reset): promisc-lost restores it.
    lan.node.sh("ip link set eth0 promisc off").unwrap();
    wait_for(Duration::from_secs(20), || lan.promisc().then_some(())).unwrap_or_else(|| {
        panic!(
            "not restored: {:#}\n{}",
            status(&lan, &agent),
            agent_log(&lan)
        )
    });
    wait_for(Duration::from_secs(10), || {
        journal_has(&lan, &agent, "promisc-lost", "verified").then_some(())
    })
    .unwrap_or_else(|| panic!("restore not journaled: {:#}", status(&lan, &agent)));
    let metrics = lan.node.http_get(agent.port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("netmend_fix_attempts_total{fix=\"set-promisc\",outcome=\"verified\"} 2"),
        "{metrics}"
    );

    let process = agent.process.take().unwrap();
    drop(process);
}

#[test]
fn a_promisc_fix_that_does_not_help_is_reverted() {
    let lan = lan("l2revert");
    // The filter stays whatever the flag: promisc is not the cure here.
    let _asking = lan.client_asks();
    let mut agent = start_agent(&lan, 9821, ENFORCE);
    wait_for(Duration::from_secs(30), || {
        journal_has(&lan, &agent, "arp-unanswered", "reverted").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not reverted: {:#}\n{}",
            status(&lan, &agent),
            agent_log(&lan)
        )
    });
    assert!(!lan.promisc(), "the flag was turned off again");
    let status = status(&lan, &agent);
    assert!(
        !status["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "promisc-lost"),
        "a reverted interface is not held promiscuous: {status:#}"
    );
    drop(agent.process.take());
}

#[test]
fn an_agent_restarted_during_a_promisc_verification_finishes_it() {
    let lan = lan("l2restart");
    // The filter stays whatever the flag: the fix is ineffective and must be reverted, by
    // whichever run of the agent is there when the verification window ends.
    let _asking = lan.client_asks();
    let config = ENFORCE.replace("verifyWithin: 3s", "verifyWithin: 12s");
    let mut agent = start_agent(&lan, 9822, &config);
    wait_for(Duration::from_secs(30), || {
        journal_has(&lan, &agent, "arp-unanswered", "applied").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not applied: {:#}\n{}",
            status(&lan, &agent),
            agent_log(&lan)
        )
    });
    assert!(lan.promisc());
    let applied = status(&lan, &agent)["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["check"] == "arp-unanswered" && e["outcome"] == "applied")
        .cloned()
        .unwrap();
    assert!(
        applied["verify"]["deadline"].as_f64().is_some(),
        "{applied:#}"
    );
    // Killed mid-verification (no chance to clean up), then started again.
    let mut process = agent.process.take().unwrap();
    process.0.kill().unwrap();
    process.0.wait().unwrap();
    drop(process);
    assert!(lan.promisc(), "still set while nobody runs");
    let agent = start_agent(&lan, 9822, &config);
    wait_for(Duration::from_secs(40), || {
        journal_has(&lan, &agent, "arp-unanswered", "reverted").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the restarted agent did not finish the verification: {:#}\n{}",
            status(&lan, &agent),
            agent_log(&lan)
        )
    });
    assert!(!lan.promisc(), "the flag was turned off again");
    let log = agent_log(&lan);
    assert!(log.contains("resuming a set-promisc verification"), "{log}");
}
