//! The agent's read-only HTTP surface (axum): `/healthz` (every loop alive), `/readyz` (every
//! ruleset source in use read once, latched; and the Kubernetes API connected when
//! `kubernetes.required`), `/metrics` (OpenMetrics), `/status` (the JSON of docs/interface.md plus
//! the journal, its health, each source's health, the config state and the API connection). No
//! endpoint changes anything.

use crate::journal::{JournalEntry, JournalHealth};
use crate::metrics::Metrics;
use crate::report::Report;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// State of the configuration as /status shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ConfigState {
    /// The file path, or "built-in defaults".
    pub source: String,
    /// sha256 of the file content in force (hex, first 16 chars).
    pub hash: String,
    /// Whether the file on disk is valid (false: the last good config stays in force).
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub mode: String,
    /// The configuration in force.
    pub effective: serde_json::Value,
}

/// The Kubernetes API as `/status` shows it: the connection and slot, and the node's opt-out.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesState {
    #[serde(flatten)]
    pub connection: crate::runtime::cluster::Connection,
    /// The node's `netmend.io/mode` label when it holds netmend back: `dry-run` (no fix is
    /// applied) or `off` (no check runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_mode: Option<&'static str>,
}

/// The document of `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDocument {
    #[serde(flatten)]
    pub report: Report,
    pub journal: Vec<JournalEntry>,
    /// The journal's size and the lines it skipped, by reason.
    #[serde(rename = "journalHealth")]
    pub journal_health: JournalHealth,
    /// Each source's last error and since when, and whether readiness waits for it.
    #[serde(rename = "sourceHealth")]
    pub source_health: BTreeMap<String, crate::runtime::sources::SourceHealth>,
    pub config: ConfigState,
    pub kubernetes: KubernetesState,
    /// Enabled checks that cannot judge this node now, with the reason (node-local mode for a
    /// check that needs the cluster, a kube-proxy mode it does not read).
    #[serde(rename = "notJudged", skip_serializing_if = "BTreeMap::is_empty")]
    pub not_judged: BTreeMap<String, String>,
}

/// Liveness: each loop beats; a loop silent for longer than its allowance is dead.
#[derive(Debug, Default)]
pub struct Heartbeats {
    beats: Mutex<BTreeMap<&'static str, (Instant, Duration)>>,
}

impl Heartbeats {
    /// Records that `loop_name` is alive and will beat again within `allowance`.
    pub fn beat(&self, loop_name: &'static str, allowance: Duration) {
        self.beats
            .lock()
            .expect("heartbeat lock")
            .insert(loop_name, (Instant::now(), allowance));
    }

    /// Loops that missed their allowance.
    pub fn stale(&self) -> Vec<&'static str> {
        let now = Instant::now();
        self.beats
            .lock()
            .expect("heartbeat lock")
            .iter()
            .filter(|(_, (at, allowance))| now.duration_since(*at) > *allowance)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Everything the HTTP handlers read.
pub struct Shared {
    pub status: RwLock<StatusDocument>,
    pub metrics: Metrics,
    pub heartbeats: Heartbeats,
    pub ready: AtomicBool,
    /// Why the agent is not ready although its sources were read (`kubernetes.required` and no
    /// API connection); cleared when it connects.
    pub kube_unready: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(node: String, config: ConfigState) -> Shared {
        Shared {
            status: RwLock::new(StatusDocument {
                report: Report {
                    node,
                    findings: Vec::new(),
                    sources: BTreeMap::new(),
                },
                journal: Vec::new(),
                journal_health: JournalHealth::default(),
                source_health: BTreeMap::new(),
                config,
                kubernetes: KubernetesState::default(),
                not_judged: BTreeMap::new(),
            }),
            metrics: Metrics::new(),
            heartbeats: Heartbeats::default(),
            ready: AtomicBool::new(false),
            kube_unready: Mutex::new(None),
        }
    }

    /// Why `/readyz` answers 503, or `None` when ready.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::SeqCst) {
            return Some(
                "a ruleset source the node uses was not read yet (see sourceHealth on /status)"
                    .to_string(),
            );
        }
        self.kube_unready.lock().expect("readiness lock").clone()
    }

    /// Latches readiness.
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            self.metrics.set_ready(true);
            tracing::info!("ready: every ruleset source in use was read");
        }
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let stale = shared.heartbeats.stale();
    if stale.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("loops not alive: {}\n", stale.join(", ")),
        )
            .into_response()
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.not_ready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let body = {
        let doc = shared.status.read().expect("status lock");
        serde_json::to_string_pretty(&*doc).expect("status serialises")
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
