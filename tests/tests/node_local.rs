//! End-to-end tests of `netmend run` without a Kubernetes API: node-local mode is not an error,
//! `/status` and the metrics say so, `--node-name` names the node, and `kubernetes.required: true`
//! refuses to start. The agent runs in its own network namespace with no in-cluster service
//! account and no kubeconfig in its environment.

use netmend_e2e::{netmend_binary, require_tool, wait_for, NetNs};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `netmend run ARGS` in `ns` with no way to find an API server.
fn netmend_without_api(ns: &NetNs, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .arg(netmend_binary())
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .stdin(Stdio::null());
    command
}

fn state_dir(ns: &NetNs) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("netmend-nodelocal-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn without_an_api_the_agent_runs_node_local_and_says_so() {
    require_tool("nsenter");
    let ns = NetNs::new("nodelocal");
    let dir = state_dir(&ns);
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let listen = "127.0.0.1:9813".to_string();
    let state = dir.join("state").display().to_string();
    let mut child = netmend_without_api(
        &ns,
        &[
            "run",
            "--listen",
            &listen,
            "--state-dir",
            &state,
            "--node-name",
            "e2e-node-7",
        ],
    )
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    let status: Option<Value> = wait_for(Duration::from_secs(20), || {
        match ns.http_get(9813, "/readyz") {
            Ok((200, _)) => ns
                .http_get(9813, "/status")
                .ok()
                .and_then(|(_, body)| serde_json::from_str(&body).ok()),
            _ => None,
        }
    });
    let metrics = ns.http_get(9813, "/metrics").map(|(_, m)| m);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("agent not ready; log:\n{log}"));
    assert_eq!(status["node"], "e2e-node-7", "{status:#}");
    let kubernetes = &status["kubernetes"];
    assert_eq!(kubernetes["connected"], false, "{status:#}");
    assert!(
        kubernetes["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{status:#}"
    );
    assert!(kubernetes.get("slotHeld").is_none(), "{status:#}");
    let metrics = metrics.unwrap();
    for needle in ["netmend_kube_up 0", "netmend_fix_slot_held 0"] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kubernetes_required_without_an_api_is_exit_status_2() {
    require_tool("nsenter");
    let ns = NetNs::new("nodelocal-req");
    let dir = state_dir(&ns);
    let config = dir.join("config.yaml");
    std::fs::write(&config, "kubernetes:\n  required: true\n").unwrap();
    let out = netmend_without_api(
        &ns,
        &[
            "run",
            "--config",
            &config.display().to_string(),
            "--listen",
            "127.0.0.1:9814",
            "--state-dir",
            &dir.join("state").display().to_string(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("kubernetes.required"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
