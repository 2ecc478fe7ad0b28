//! End-to-end tests of `netmend run`: the agent started inside a node namespace holding a k3s-like
//! ruleset, faults injected with the real `iptables-nft` while it runs, every assertion made
//! through its HTTP API (inside the namespace, on its loopback).

use netmend_e2e::{kube_proxy_ruleset, require_tool, wait_for, Background, NetNs};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const HIJACK: &str = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-3499088e1adba268a4e0c - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"8e92d16f\\\"\" -m multiport --dports 6443 -j CNI-DN-3499088e1adba268a4e0c\n-A CNI-DN-3499088e1adba268a4e0c -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443\nCOMMIT\n";
const REMOVE_HIJACK: &str = "iptables-nft -t nat -D CNI-HOSTPORT-DNAT 1 && iptables-nft -t nat -F CNI-DN-3499088e1adba268a4e0c && iptables-nft -t nat -X CNI-DN-3499088e1adba268a4e0c";

struct Agent {
    ns: NetNs,
    port: u16,
    dir: PathBuf,
    process: Option<Background>,
}

impl Agent {
    fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    fn write_config(&self, text: &str) {
        // Like a ConfigMap update: write aside, then rename over the file atomically.
        let tmp = self.dir.join("config.yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    fn start(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let config = self.config_path().display().to_string();
        let state = self.dir.join("state").display().to_string();
        let log = self.dir.join(format!("agent-{}.log", std::process::id()));
        self.process = Some(self.ns.spawn_netmend(
            &[
                "run",
                "--config",
                &config,
                "--listen",
                &listen,
                "--state-dir",
                &state,
            ],
            &log,
        ));
        let ready = wait_for(Duration::from_secs(20), || {
            match self.ns.http_get(self.port, "/readyz") {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        });
        assert!(ready.is_some(), "agent not ready; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
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

    /// Waits until some finding of `check` satisfies `pred`.
    fn wait_finding(&self, check: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(20), || {
            let status = self.status();
            status["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["check"] == check && pred(f))
                .cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "no matching {check} finding; status {:#}\nlog:\n{}",
                self.status(),
                self.log()
            )
        })
    }

    fn wait_no_finding(&self, check: &str) {
        let gone = wait_for(Duration::from_secs(20), || {
            let status = self.status();
            (!status["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["check"] == check))
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "{check} still reported: {:#}",
            self.status()
        );
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut process = self.process.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the agent");
        let status = wait_for(Duration::from_secs(25), || {
            process.0.try_wait().ok().flatten()
        })
        .expect("agent stops within the grace period");
        std::mem::forget(process);
        status
    }
}

fn agent(tag: &str, port: u16, config: &str) -> Agent {
    for tool in ["iptables-nft-restore", "nsenter"] {
        require_tool(tool);
    }
    let ns = NetNs::new(tag);
    // A node address besides loopback: traffic from outside (the prerouting hook) reaches the
    // node there; loopback is reachable only from the node itself.
    ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 192.168.1.233/24 dev eth0 && ip link set eth0 up")
        .unwrap();
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(200, 2))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("netmend-agent-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Agent {
        ns,
        port,
        dir,
        process: None,
    };
    agent.write_config(config);
    agent.start();
    agent
}

#[test]
fn a_hijack_shows_on_status_clears_and_is_mended_after_a_live_switch_to_enforce() {
    let mut agent = agent("run-hijack", 9810, "mode: dry-run\n");
    let status = agent.status();
    assert_eq!(status["findings"], serde_json::json!([]), "{status:#}");
    assert_eq!(status["config"]["valid"], true);
    assert!(agent.metrics().contains("netmend_ready 1"));
    assert_eq!(agent.ns.http_get(agent.port, "/healthz").unwrap().0, 200);

    agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    let f = agent.wait_finding("hostport-hijack", |_| true);
    assert_eq!(f["subject"], "ip nat CNI-DN-3499088e1adba268a4e0c");
    assert_eq!(f["fix"]["state"], "dry-run");
    assert!(agent
        .metrics()
        .contains("netmend_findings{check=\"hostport-hijack\"} 1"));

    agent.ns.sh(REMOVE_HIJACK).unwrap();
    agent.wait_no_finding("hostport-hijack");

    // Live reload to enforce: mended without a restart.
    agent.write_config(
        "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true, confirmFor: 0s }\n",
    );
    wait_for(Duration::from_secs(10), || {
        (agent.status()["config"]["mode"] == "enforce").then_some(())
    })
    .expect("config reloaded");
    agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    wait_for(Duration::from_secs(20), || {
        let saved = agent.ns.sh("iptables-nft-save -t nat").unwrap();
        (!saved.contains("CNI-DN-3499088e1adba268a4e0c")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not mended; status {:#}\nlog:\n{}",
            agent.status(),
            agent.log()
        )
    });
    let journal = wait_for(Duration::from_secs(10), || {
        let status = agent.status();
        status["journal"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "verified")
            .then_some(status["journal"].clone())
    });
    assert!(journal.is_some(), "{:#}", agent.status());
    assert!(agent
        .metrics()
        .contains("netmend_fix_attempts_total{fix=\"remove-hijack-rule\",outcome=\"applied\"} 1"));
    let status = agent.stop();
    assert!(status.success(), "SIGTERM exits 0: {status}");
}

#[test]
fn a_fault_readded_again_and_again_opens_the_breaker_which_survives_a_restart() {
    let config = "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true, confirmFor: 0s, cooldown: 1s, maxAttempts: 2 }\n";
    let mut agent = agent("run-breaker", 9811, config);
    for round in 0..2 {
        agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
        wait_for(Duration::from_secs(20), || {
            let saved = agent.ns.sh("iptables-nft-save -t nat").unwrap();
            (!saved.contains("CNI-DN-3499088e1adba268a4e0c")).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round} not mended: {:#}\n{}",
                agent.status(),
                agent.log()
            )
        });
        std::thread::sleep(Duration::from_millis(1200));
    }
    agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    let f = agent.wait_finding("hostport-hijack", |f| f["fix"]["state"] == "circuit-open");
    assert!(
        f["fix"]["detail"]
            .as_str()
            .unwrap()
            .contains("re-added by iptables-nft"),
        "{f:#}"
    );
    assert!(agent
        .metrics()
        .contains("netmend_circuit_open{fix=\"remove-hijack-rule\"} 1"));
    assert!(agent.stop().success());

    // Restarted with the same state dir: the breaker holds, the journal is there.
    agent.start();
    let f = agent.wait_finding("hostport-hijack", |f| f["fix"]["state"] == "circuit-open");
    assert_eq!(f["subject"], "ip nat CNI-DN-3499088e1adba268a4e0c");
    let status = agent.status();
    let applied = status["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "applied")
        .count();
    assert_eq!(applied, 2, "{status:#}");
    assert!(agent
        .ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .contains("CNI-DN-3499088e1adba268a4e0c"));
    assert!(agent.stop().success());
}

#[test]
fn an_invalid_config_is_rejected_while_the_agent_keeps_running() {
    let mut agent = agent("run-badconfig", 9812, "mode: dry-run\n");
    agent.write_config("mode: enforce\nfixes:\n  set-promisc: { enabld: true }\n");
    let status = wait_for(Duration::from_secs(10), || {
        let status = agent.status();
        (status["config"]["valid"] == false).then_some(status)
    })
    .expect("invalid config reported");
    assert!(status["config"]["error"]
        .as_str()
        .unwrap()
        .contains("fixes.set-promisc.enabld"));
    assert_eq!(
        status["config"]["mode"], "dry-run",
        "the last good config stays"
    );
    assert!(agent
        .metrics()
        .contains("netmend_config_reloads_total{result=\"invalid\"} 1"));
    // Still working: a fault is still detected.
    agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    let f = agent.wait_finding("hostport-hijack", |_| true);
    assert_eq!(f["fix"]["state"], "dry-run");
    assert!(agent.stop().success());
}

#[test]
fn a_bad_config_at_start_is_exit_status_2() {
    let ns = NetNs::new("run-badstart");
    let path = std::env::temp_dir().join(format!("netmend-bad-{}.yaml", ns.name));
    std::fs::write(&path, "mode: sometimes\n").unwrap();
    let out = ns.netmend(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:9813",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode"));
}

/// A second hijack (kubelet's port) in its own chain, with the rule that jumps to it.
const HIJACK_KUBELET: &str = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-77aa00bb11cc22dd33ee4 - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"77aa00bb\\\"\" -m multiport --dports 10250 -j CNI-DN-77aa00bb11cc22dd33ee4\n-A CNI-DN-77aa00bb11cc22dd33ee4 -p tcp -m tcp --dport 10250 -j DNAT --to-destination 10.42.0.245:10250\nCOMMIT\n";

fn journal_lines(agent: &Agent) -> Vec<Value> {
    std::fs::read_to_string(agent.dir.join("state/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn check_apply_while_the_agent_runs_shares_one_journal_and_the_agents_cooldown_holds() {
    // The agent confirms for 8 s, so the one-shot (no confirmation) acts on the second hijack
    // first; both keep an hour of cooldown.
    let config = "mode: enforce\nfixes:\n  remove-hijack-rule: { enabled: true, confirmFor: 8s, cooldown: 1h }\n";
    let mut agent = agent("run-oneshot", 9814, config);
    // The agent mends the first hijack itself.
    agent.ns.restore("iptables-nft-restore", HIJACK).unwrap();
    wait_for(Duration::from_secs(30), || {
        let saved = agent.ns.sh("iptables-nft-save -t nat").unwrap();
        (!saved.contains("CNI-DN-3499088e1adba268a4e0c")).then_some(())
    })
    .unwrap_or_else(|| panic!("not mended: {:#}\n{}", agent.status(), agent.log()));

    // A second one, mended by `check --apply` while the agent still confirms it.
    agent
        .ns
        .restore("iptables-nft-restore", HIJACK_KUBELET)
        .unwrap();
    let state = agent.dir.join("state").display().to_string();
    let config_path = agent.config_path().display().to_string();
    let out = agent.ns.netmend(&[
        "check",
        "--window",
        "0s",
        "--apply",
        "--output",
        "json",
        "--config",
        &config_path,
        "--state-dir",
        &state,
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --apply: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        !agent
            .ns
            .sh("iptables-nft-save -t nat")
            .unwrap()
            .contains("CNI-DN-77aa00bb11cc22dd33ee4"),
        "check --apply mended it: {report:#}"
    );

    // Both processes' actions are in the one file, and the agent shows the one-shot's.
    let lines = journal_lines(&agent);
    let applied_for = |chain: &str| {
        lines
            .iter()
            .filter(|e| e["outcome"] == "applied" && e["subject"].as_str().unwrap().contains(chain))
            .count()
    };
    assert_eq!(applied_for("3499088e1adba268a4e0c"), 1, "{lines:#?}");
    assert_eq!(applied_for("77aa00bb11cc22dd33ee4"), 1, "{lines:#?}");
    wait_for(Duration::from_secs(10), || {
        let status = agent.status();
        (status["journalHealth"]["pickedUp"].as_u64() >= Some(1)
            && status["journal"].as_array().unwrap().iter().any(|e| {
                e["outcome"] == "applied"
                    && e["subject"]
                        .as_str()
                        .unwrap()
                        .contains("77aa00bb11cc22dd33ee4")
            }))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent did not pick up the one-shot's entries: {:#}",
            agent.status()
        )
    });

    // The fault comes back: the agent's cooldown counts the one-shot's action and holds.
    agent
        .ns
        .restore("iptables-nft-restore", HIJACK_KUBELET)
        .unwrap();
    let f = wait_for(Duration::from_secs(30), || {
        agent.status()["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["subject"] == "ip nat CNI-DN-77aa00bb11cc22dd33ee4"
                    && f["fix"]["state"] == "cooldown"
            })
            .cloned()
    })
    .unwrap_or_else(|| panic!("no cooldown: {:#}\n{}", agent.status(), agent.log()));
    assert!(
        f["fix"]["detail"].as_str().unwrap().contains("cooldown"),
        "{f:#}"
    );
    // Past the agent's confirmation time the hijack is still there: held back, not mended.
    std::thread::sleep(Duration::from_secs(10));
    assert!(agent
        .ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .contains("CNI-DN-77aa00bb11cc22dd33ee4"));
    assert_eq!(
        journal_lines(&agent)
            .iter()
            .filter(|e| e["outcome"] == "applied")
            .count(),
        2
    );
    assert!(agent.stop().success());
}

#[test]
fn a_journal_with_a_corrupt_line_and_an_unknown_outcome_is_counted_on_status_and_metrics() {
    for tool in ["iptables-nft-restore", "nsenter"] {
        require_tool(tool);
    }
    let ns = NetNs::new("run-corrupt");
    let dir = std::env::temp_dir().join(format!("netmend-agent-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let line = |outcome: &str, time: u64| {
        serde_json::json!({
            "time": time, "check": "hostport-hijack", "fix": "remove-hijack-rule",
            "subject": "ip nat CNI-DN-3499088e1adba268a4e0c",
            "key": "hostport-hijack|ip nat CNI-DN-3499088e1adba268a4e0c",
            "outcome": outcome, "detail": "from an earlier run"
        })
        .to_string()
    };
    std::fs::write(
        dir.join("state/journal.jsonl"),
        format!(
            "{}\n{{\"time\": 17, this is not json\n{}\n{}\n",
            line("applied", 1_700_000_000),
            line("quarantined", 1_700_000_001),
            line("verified", 1_700_000_002)
        ),
    )
    .unwrap();
    let mut agent = Agent {
        ns,
        port: 9815,
        dir,
        process: None,
    };
    agent.write_config("mode: dry-run\n");
    agent.start();
    let status = agent.status();
    let health = &status["journalHealth"];
    assert_eq!(health["skippedLines"]["corrupt"], 1, "{status:#}");
    assert_eq!(health["skippedLines"]["unknown-outcome"], 1, "{status:#}");
    assert_eq!(health["entries"], 3, "{status:#}");
    let outcomes: Vec<&str> = status["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["applied", "quarantined", "verified"]);
    let metrics = agent.metrics();
    for needle in [
        "netmend_journal_skipped_lines_total{reason=\"corrupt\"} 1",
        "netmend_journal_skipped_lines_total{reason=\"unknown-outcome\"} 1",
        "netmend_journal_skipped_lines_total{reason=\"torn\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    // Each source's health is on /status too.
    assert_eq!(
        status["sourceHealth"]["nftables"]["readOnce"], true,
        "{status:#}"
    );
    assert!(agent.stop().success());
}
