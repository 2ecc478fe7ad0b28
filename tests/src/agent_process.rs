//! `netmend run` as a test drives it: started inside a namespace with a config file, a state
//! directory and a log in a directory of its own, optionally behind a wrapper (`setpriv` to hold
//! fewer capabilities) and with extra environment; asked through its HTTP API on the namespace's
//! loopback; stopped with SIGTERM like the kubelet does.

use crate::{netmend_binary, wait_for, Background, NetNs};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// An agent process and the files it uses.
pub struct AgentProcess<'a> {
    pub ns: &'a NetNs,
    pub port: u16,
    /// Holds `config.yaml`, `state/` and `agent.log`.
    pub dir: PathBuf,
    /// Extra environment of the process.
    pub env: Vec<(String, String)>,
    /// A command the agent runs under (its arguments first), e.g. `setpriv ...`.
    pub wrapper: Vec<String>,
    process: Option<Background>,
}

impl<'a> AgentProcess<'a> {
    /// An agent for `ns` on `127.0.0.1:port`, with a fresh directory and `config` written.
    pub fn new(ns: &'a NetNs, port: u16, config: &str) -> AgentProcess<'a> {
        let dir = std::env::temp_dir().join(format!("netmend-agent-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = AgentProcess {
            ns,
            port,
            dir,
            env: Vec::new(),
            wrapper: Vec::new(),
            process: None,
        };
        agent.write_config(config);
        agent
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Replaces the config file atomically, as a ConfigMap update does.
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.join("config.yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    /// The process id (the agent itself: nsenter and setpriv exec it).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").0.id()
    }

    /// Starts the agent and waits until `/readyz` answers 200.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.ns.path().display()))
            .args(&self.wrapper)
            .arg(netmend_binary())
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(self.state_dir())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.process = Some(Background(command.spawn().expect("spawn netmend")));
        let ready = wait_for(Duration::from_secs(30), || {
            matches!(self.ns.http_get(self.port, "/readyz"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "agent not ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Value {
        let (code, body) = self
            .ns
            .http_get(self.port, "/status")
            .unwrap_or_else(|e| panic!("GET /status: {e}; log:\n{}", self.log()));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    pub fn metrics(&self) -> String {
        self.ns.http_get(self.port, "/metrics").expect("/metrics").1
    }

    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        matches!(self.ns.http_get(self.port, "/healthz"), Ok((200, _)))
    }

    /// The findings of `check` on `/status`.
    pub fn findings(&self, check: &str) -> Vec<Value> {
        self.status()["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["check"] == check)
            .cloned()
            .collect()
    }

    /// Every journal line in the state directory's file, parsed.
    pub fn journal_file(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("journal line"))
            .collect()
    }

    /// Journal lines in the file with `outcome` for a subject containing `subject`.
    pub fn journaled(&self, subject: &str, outcome: &str) -> Vec<Value> {
        self.journal_file()
            .into_iter()
            .filter(|e| {
                e["outcome"] == outcome && e["subject"].as_str().unwrap_or("").contains(subject)
            })
            .collect()
    }

    /// Waits up to `timeout` for `what`, failing with the status and the log.
    pub fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let done = wait_for(timeout, || f(self).then_some(()));
        if done.is_none() {
            let status = self
                .ns
                .http_get(self.port, "/status")
                .map(|(_, b)| b)
                .unwrap_or_else(|e| format!("no /status: {e}"));
            panic!(
                "timed out waiting for {what}\nstatus: {status}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// Sends SIGTERM and waits for the exit (the agent's grace period is 20 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the agent");
        let status = wait_for(Duration::from_secs(25), || {
            process.0.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("the agent did not stop within 25 s; log:\n{}", self.log()));
        std::mem::forget(process);
        status
    }
}
