//! Reaching the Kubernetes API: where it is (in-cluster service account, `--kubeconfig`,
//! `KUBECONFIG`, or nowhere: node-local mode), who this node is (`--node-name`, `NODE_NAME`, the
//! host name), where netmend's own objects live (`POD_NAMESPACE`, else `netmend`), the clients
//! (explicit connect/read/write timeouts, no retry layer), and [`ApiCalls`]: the one door every
//! request goes through, which bounds it in time, classifies its failure and counts it by verb
//! and code into the [`ConnectionBook`] that `/status` and the metrics read.
//!
//! Its tests (against real plain-HTTP and TLS servers on the loopback) make this file long.

use crate::runtime::cluster::{ClusterActError, Connection};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the namespace of netmend's own objects comes from when `POD_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "netmend";

/// How long the API server keeps a watch open before the client opens the next one (kube's and
/// client-go's order of magnitude: cheap for the API server with a watch per node); the watch
/// client's read timeout is a little longer, so a connection that died silently is noticed.
pub const WATCH_SECONDS: u32 = 290;

/// Why the API could not be used although it was configured.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("in-cluster service account: {0}")]
    InCluster(String),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("no Kubernetes API found ({0}) but kubernetes.{1} is true")]
    Missing(String, &'static str),
    #[error("cannot tell this node's name: {0}; set --node-name or NODE_NAME")]
    NodeName(String),
    #[error("cannot build the API client: {0}")]
    Client(String),
    #[error("cannot start the Kubernetes tasks: {0}")]
    Start(String),
}

/// Where the API is said to be, in the contract's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    InCluster,
    /// One kubeconfig file (`--kubeconfig`) or the files listed in `KUBECONFIG`.
    Kubeconfig(Vec<PathBuf>),
    /// None: node-local mode, with the reason.
    Nowhere(String),
}

/// Chooses where the API is: the in-cluster service account when `KUBERNETES_SERVICE_HOST` is
/// set, else `kubeconfig` (the `--kubeconfig` flag), else the `KUBECONFIG` list.
pub fn api_source(kubeconfig: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> ApiSource {
    if env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) {
        return ApiSource::InCluster;
    }
    if let Some(path) = kubeconfig {
        return ApiSource::Kubeconfig(vec![path.to_path_buf()]);
    }
    if let Some(list) = env("KUBECONFIG") {
        let paths: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return ApiSource::Kubeconfig(paths);
        }
    }
    ApiSource::Nowhere(
        "node-local mode: no in-cluster service account (KUBERNETES_SERVICE_HOST), no \
         --kubeconfig, no KUBECONFIG"
            .to_string(),
    )
}

/// The client configuration for `source`, `None` for [`ApiSource::Nowhere`]. A source that is
/// named but unusable (no token, unreadable or invalid kubeconfig) is an error.
pub async fn load_config(source: &ApiSource) -> Result<Option<kube::Config>, ClusterError> {
    match source {
        ApiSource::Nowhere(_) => Ok(None),
        ApiSource::InCluster => kube::Config::incluster()
            .map(Some)
            .map_err(|e| ClusterError::InCluster(e.to_string())),
        ApiSource::Kubeconfig(paths) => {
            let shown = paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let bad = |reason: String| ClusterError::Kubeconfig {
                path: shown.clone(),
                reason,
            };
            let mut merged: Option<Kubeconfig> = None;
            for path in paths {
                let file = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                merged = Some(match merged {
                    None => file,
                    Some(m) => m.merge(file).map_err(|e| bad(e.to_string()))?,
                });
            }
            let merged = merged.ok_or_else(|| bad("no file".into()))?;
            kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
                .await
                .map(Some)
                .map_err(|e| bad(e.to_string()))
        }
    }
}

/// This node's name: `explicit` (`--node-name`), else `NODE_NAME`, else the host name.
pub fn node_name(
    explicit: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    hostname: &dyn Fn() -> std::io::Result<String>,
) -> Result<String, ClusterError> {
    if let Some(name) = explicit.filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    if let Some(name) = env("NODE_NAME").filter(|n| !n.is_empty()) {
        return Ok(name);
    }
    match hostname() {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_string()),
        Ok(_) => Err(ClusterError::NodeName("the host name is empty".into())),
        Err(e) => Err(ClusterError::NodeName(format!(
            "cannot read the host name: {e}"
        ))),
    }
}

/// The host name as the kernel has it.
pub fn kernel_hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

/// The namespace of netmend's own objects (the fix slots' Leases).
pub fn namespace(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("POD_NAMESPACE")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The process environment, for the functions above.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The two clients: one for requests (every read and write bounded by `timeout`) and one for
/// watches (reads may wait a whole watch window). Neither retries: kube's default stack retries
/// 429/503/504 with backoff, which would stretch one call far past its timeout; a failed call
/// here is retried by its caller on its own schedule.
pub fn build_clients(
    mut config: kube::Config,
    timeout: Duration,
) -> Result<(kube::Client, kube::Client), ClusterError> {
    config.default_retry = false;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let requests =
        kube::Client::try_from(config.clone()).map_err(|e| ClusterError::Client(e.to_string()))?;
    config.read_timeout = Some(Duration::from_secs(u64::from(WATCH_SECONDS) + 15));
    let watches =
        kube::Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))?;
    Ok((requests, watches))
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The API answered with an error status.
    #[error("{code} {reason}: {message}")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer in time.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// No answer at all (connection refused, TLS, DNS, credentials).
    #[error("cannot reach the API: {0}")]
    Unreachable(String),
    /// An answer that could not be read.
    #[error("unreadable answer: {0}")]
    Invalid(String),
}

impl CallError {
    /// Classifies a client error; `kube::Error` is not `Clone`, this is.
    pub fn from_kube(error: &kube::Error) -> CallError {
        match error {
            kube::Error::Api(status) => CallError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            kube::Error::SerdeError(e) => CallError::Invalid(e.to_string()),
            kube::Error::FromUtf8(e) => CallError::Invalid(e.to_string()),
            other if timed_out(other) => CallError::Unreachable(format!("timed out: {other}")),
            other => CallError::Unreachable(other.to_string()),
        }
    }

    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The `code` label of the error counters: the HTTP status, or `timeout`, `connect`,
    /// `invalid` when there was no usable answer.
    pub fn code_label(&self) -> String {
        match self {
            CallError::Status { code, .. } => code.to_string(),
            CallError::Timeout(_) => "timeout".into(),
            CallError::Unreachable(text) if text.starts_with("timed out") => "timeout".into(),
            CallError::Unreachable(_) => "connect".into(),
            CallError::Invalid(_) => "invalid".into(),
        }
    }

    /// Whether the API is unusable after this (no answer, server errors, refused credentials),
    /// as opposed to an answer that is part of the conversation (404, 409, 410, 422).
    pub fn disconnects(&self) -> bool {
        match self {
            CallError::Status { code, .. } => *code >= 500 || *code == 401 || *code == 403,
            _ => true,
        }
    }
}

fn timed_out(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// The API connection as the calls found it: connected or not and why, the slot held, and the
/// failed requests by verb and code. Shared by every task; read by `/status` and the metrics.
#[derive(Debug)]
pub struct ConnectionBook {
    state: Mutex<Connection>,
}

impl Default for ConnectionBook {
    fn default() -> ConnectionBook {
        ConnectionBook {
            state: Mutex::new(Connection {
                connected: false,
                reason: Some("no answer from the Kubernetes API yet".into()),
                ..Connection::default()
            }),
        }
    }
}

impl ConnectionBook {
    /// The API answered.
    pub fn answered(&self) {
        let mut state = self.lock();
        if !state.connected {
            tracing::info!("Kubernetes API connected");
        }
        state.connected = true;
        state.reason = None;
    }

    /// `verb` on `what` failed with `error`.
    pub fn failed(&self, verb: &str, what: &str, error: &CallError) {
        let mut state = self.lock();
        *state
            .request_errors
            .entry((verb.to_string(), error.code_label()))
            .or_default() += 1;
        if error.disconnects() {
            if state.connected {
                tracing::warn!(verb, what, %error, "Kubernetes API request failed");
            } else {
                tracing::debug!(verb, what, %error, "Kubernetes API request failed");
            }
            state.connected = false;
            state.reason = Some(format!("{verb} {what}: {error}"));
        } else {
            tracing::debug!(verb, what, %error, "Kubernetes API answered with an error");
            state.connected = true;
            state.reason = None;
        }
    }

    pub fn set_slot_held(&self, slot: Option<u32>) {
        self.lock().slot_held = slot;
    }

    pub fn snapshot(&self) -> Connection {
        self.lock().clone()
    }

    /// Whether the API answered the last request or watch in time.
    pub fn connected(&self) -> bool {
        self.lock().connected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one door to the API: the clients, the timeout every request is bounded by, and the book
/// every outcome is counted in.
#[derive(Clone)]
pub struct ApiCalls {
    pub requests: kube::Client,
    pub watches: kube::Client,
    pub timeout: Duration,
    pub book: Arc<ConnectionBook>,
}

impl ApiCalls {
    pub fn new(requests: kube::Client, watches: kube::Client, timeout: Duration) -> ApiCalls {
        ApiCalls {
            requests,
            watches,
            timeout,
            book: Arc::new(ConnectionBook::default()),
        }
    }

    /// Runs one request (`verb` on `what`, for the counters and logs), bounded by the timeout.
    pub async fn call<T>(
        &self,
        verb: &'static str,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CallError> {
        let outcome = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(CallError::Timeout(self.timeout)),
            Ok(result) => result.map_err(|e| CallError::from_kube(&e)),
        };
        match &outcome {
            Ok(_) => self.book.answered(),
            Err(error) => self.book.failed(verb, what, error),
        }
        outcome
    }

    /// The one way netmend writes an object of the cluster: reads `name` through `api`, asks
    /// `patch_for` what to change from the object read (`None`: nothing; an error: leave it
    /// alone), sends that JSON merge patch (which carries the resourceVersion read, so a change
    /// in between is refused with 409 instead of overwritten), and reads the object back, the
    /// proof. A failed read is what `read_failed` makes of it, a 409 `Moved`, another refusal
    /// `Failed`, a failed read back `Unknown`. Returns whether it wrote and the object read back.
    pub async fn read_patch_read<K>(
        &self,
        api: &kube::Api<K>,
        name: &str,
        what: &str,
        read_failed: impl FnOnce(CallError) -> ClusterActError,
        patch_for: impl FnOnce(&K) -> Result<Option<serde_json::Value>, ClusterActError>,
    ) -> Result<(bool, K), ClusterActError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let read = self
            .call("get", what, api.get(name))
            .await
            .map_err(read_failed)?;
        let patch = patch_for(&read)?;
        let wrote = patch.is_some();
        if let Some(patch) = patch {
            let params = kube::api::PatchParams::default();
            self.call(
                "patch",
                what,
                api.patch(name, &params, &kube::api::Patch::Merge(&patch)),
            )
            .await
            .map_err(|e| match e.status() {
                Some(409) => ClusterActError::Moved(format!(
                    "{what} changed since it was read (409 Conflict): {e}"
                )),
                _ => ClusterActError::Failed(format!("patching {what}: {e}")),
            })?;
        }
        let after = self.call("get", what, api.get(name)).await.map_err(|e| {
            ClusterActError::Unknown(format!(
                "the patch was sent but {what} could not be read back: {e}"
            ))
        })?;
        Ok((wrote, after))
    }

    /// A watch stream (`what`) delivered an item.
    pub fn watch_item(&self) {
        self.book.answered();
    }

    /// A watch stream (`what`) failed: its list, its watch request, or an error in the stream.
    pub fn watch_failed(&self, what: &str, error: &kube::runtime::watcher::Error) {
        use kube::runtime::watcher::Error as W;
        let (verb, error) = match error {
            W::InitialListFailed(e) => ("list", CallError::from_kube(e)),
            W::WatchStartFailed(e) | W::WatchFailed(e) => ("watch", CallError::from_kube(e)),
            W::WatchError(status) => (
                "watch",
                CallError::Status {
                    code: status.code,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                },
            ),
            W::NoResourceVersion => (
                "list",
                CallError::Invalid("a list or watch event without a resourceVersion".into()),
            ),
        };
        self.book.failed(verb, what, &error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn the_api_is_found_in_the_contracts_order() {
        let flag = Path::new("/etc/flag.kubeconfig");
        let all = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBECONFIG", "/a:/b"),
        ]);
        assert_eq!(api_source(Some(flag), &all), ApiSource::InCluster);
        let no_sa = env_of(&[("KUBECONFIG", "/a::/b")]);
        assert_eq!(
            api_source(Some(flag), &no_sa),
            ApiSource::Kubeconfig(vec![flag.to_path_buf()])
        );
        assert_eq!(
            api_source(None, &no_sa),
            ApiSource::Kubeconfig(vec!["/a".into(), "/b".into()])
        );
        let empty = env_of(&[("KUBERNETES_SERVICE_HOST", ""), ("KUBECONFIG", "")]);
        match api_source(None, &empty) {
            ApiSource::Nowhere(reason) => {
                assert!(reason.contains("KUBECONFIG"), "{reason}");
                assert!(reason.contains("--kubeconfig"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_node_name_comes_from_the_flag_the_environment_or_the_host() {
        let host = || Ok("host-1\n".to_string());
        let env = env_of(&[("NODE_NAME", "node-env")]);
        assert_eq!(
            node_name(Some("node-flag"), &env, &host).unwrap(),
            "node-flag"
        );
        assert_eq!(node_name(None, &env, &host).unwrap(), "node-env");
        assert_eq!(node_name(Some(""), &env_of(&[]), &host).unwrap(), "host-1");
        let broken = || Err(std::io::Error::other("no /proc"));
        let err = node_name(None, &env_of(&[]), &broken).unwrap_err();
        assert!(
            err.to_string().contains("--node-name or NODE_NAME"),
            "{err}"
        );
    }

    #[test]
    fn the_namespace_is_the_pods_or_netmend() {
        assert_eq!(namespace(&env_of(&[("POD_NAMESPACE", "ops")])), "ops");
        assert_eq!(namespace(&env_of(&[])), "netmend");
    }

    #[tokio::test]
    async fn an_unusable_kubeconfig_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("netmend-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let err = load_config(&ApiSource::Kubeconfig(vec![missing.clone()]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, "clusters: 42\n").unwrap();
        let err = load_config(&ApiSource::Kubeconfig(vec![garbage]))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("kubeconfig "), "{err}");
        assert!(load_config(&ApiSource::Nowhere("x".into()))
            .await
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_are_labelled_by_code_and_only_some_disconnect() {
        let status = |code| CallError::Status {
            code,
            reason: String::new(),
            message: String::new(),
        };
        assert_eq!(status(409).code_label(), "409");
        assert!(!status(409).disconnects());
        assert!(!status(404).disconnects());
        assert!(status(403).disconnects());
        assert!(status(503).disconnects());
        assert_eq!(
            CallError::Timeout(Duration::from_secs(1)).code_label(),
            "timeout"
        );
        assert_eq!(
            CallError::Unreachable("refused".into()).code_label(),
            "connect"
        );
        let book = ConnectionBook::default();
        assert!(!book.snapshot().connected);
        book.answered();
        assert!(book.snapshot().connected);
        book.failed("get", "leases/x", &status(404));
        assert!(book.snapshot().connected);
        book.failed("patch", "nodes/n/status", &status(503));
        book.failed("patch", "nodes/n/status", &status(503));
        let c = book.snapshot();
        assert!(!c.connected);
        assert!(c.reason.unwrap().starts_with("patch nodes/n/status: 503"));
        assert_eq!(c.request_errors[&("patch".into(), "503".into())], 2);
        assert_eq!(c.request_errors[&("get".into(), "404".into())], 1);
    }

    /// A one-trick HTTP/1.1 server on 127.0.0.1: answers every request with `status` and
    /// `body` (or never, with `None`), and keeps the request heads it saw.
    async fn tiny_server(answer: Option<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).to_string());
                    let Some((status, body)) = answer else {
                        // hold the connection open, never answer
                        let _ = socket.read(&mut byte).await;
                        return;
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (format!("127.0.0.1:{}", addr.port()), heads)
    }

    fn kubeconfig(server: &str, extra_cluster: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "netmend-kc-{}-{}",
            std::process::id(),
            server.replace([':', '/', '.'], "-")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
                 clusters:\n- name: t\n  cluster:\n    server: {server}\n{extra_cluster}\
                 contexts:\n- name: t\n  context: {{cluster: t, user: t}}\n\
                 users:\n- name: t\n  user: {{token: sekret}}\n"
            ),
        )
        .unwrap();
        path
    }

    async fn calls_for(server: &str, extra: &str, timeout: Duration) -> ApiCalls {
        let path = kubeconfig(server, extra);
        let config = load_config(&ApiSource::Kubeconfig(vec![path.clone()]))
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        let (requests, watches) = build_clients(config, timeout).unwrap();
        ApiCalls::new(requests, watches, timeout)
    }

    #[tokio::test]
    async fn a_plain_http_api_from_a_kubeconfig_is_spoken_to() {
        let (addr, heads) = tiny_server(Some((
            200,
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","uid":"u-1"}}"#,
        )))
        .await;
        let calls = calls_for(&format!("http://{addr}"), "", Duration::from_secs(5)).await;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(calls.requests.clone());
        let node = calls
            .call("get", "nodes/node-a", nodes.get("node-a"))
            .await
            .unwrap();
        assert_eq!(node.metadata.uid.as_deref(), Some("u-1"));
        let head = heads.lock().unwrap()[0].to_lowercase();
        assert!(
            head.starts_with("get /api/v1/nodes/node-a http/1.1"),
            "{head}"
        );
        assert!(head.contains("authorization: bearer sekret"), "{head}");
        assert!(calls.book.snapshot().connected);
    }

    #[tokio::test]
    async fn a_server_error_is_not_retried_behind_the_callers_back() {
        let (addr, heads) = tiny_server(Some((
            503,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":503,"reason":"ServiceUnavailable","message":"later"}"#,
        )))
        .await;
        let calls = calls_for(&format!("http://{addr}"), "", Duration::from_secs(5)).await;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(calls.requests.clone());
        let err = calls
            .call("get", "nodes/node-a", nodes.get("node-a"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert_eq!(heads.lock().unwrap().len(), 1, "kube's retry layer is off");
        let c = calls.book.snapshot();
        assert_eq!(c.request_errors[&("get".to_string(), "503".to_string())], 1);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        let (addr, heads) = tiny_server(None).await;
        let calls = calls_for(&format!("http://{addr}"), "", Duration::from_millis(300)).await;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(calls.requests.clone());
        let err = calls
            .call("get", "nodes/node-a", nodes.get("node-a"))
            .await
            .unwrap_err();
        assert_eq!(err.code_label(), "timeout", "{err}");
        assert_eq!(heads.lock().unwrap().len(), 1);
        assert!(!calls.book.snapshot().connected);
    }

    #[tokio::test]
    async fn https_goes_through_rustls_and_a_failed_handshake_is_a_connect_error() {
        // a listener that closes every connection: the TLS handshake fails
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let calls = calls_for(
            &format!("https://127.0.0.1:{port}"),
            "    insecure-skip-tls-verify: true\n",
            Duration::from_secs(5),
        )
        .await;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(calls.requests.clone());
        let err = calls
            .call("get", "nodes/node-a", nodes.get("node-a"))
            .await
            .unwrap_err();
        assert_eq!(err.code_label(), "connect", "{err}");
        assert!(!calls.book.snapshot().connected);
    }
}
