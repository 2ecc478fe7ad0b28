//! NodeConditions: one per enabled check on this node, type `Netmend<CheckId in PascalCase>`,
//! status `True` while the check has findings, reason from the check (`HijackPresent` /
//! `NoHijack`), message the findings' subjects and fix state (at most 1024 characters).
//!
//! [`ConditionBook`] is the policy (pure, time passed in): which conditions the node should
//! carry, when to write (a status, reason or message changed; a `Netmend*` condition is on the
//! node for a check no longer reported, including ones an earlier run left; the 5-minute
//! heartbeat), and `lastTransitionTime` kept unless the status changes. [`ConditionsReporter`]
//! is the task: it learns what the node carries at start, then writes a strategic merge patch on
//! `nodes/<node>/status` that names only netmend's conditions (entries merged by `type`, removals
//! by `$patch: delete`), at most once a second, and backs off after a failure.
//!
//! Its tests (the policy, the wire format, churn, heartbeat and failures in paused time) make
//! this file long.

use crate::cluster::client::{ApiCalls, CallError};
use crate::cluster::node_watch::NodeFacts;
use crate::cluster::{time, WallClock};
use crate::detect::ConditionReasons;
use crate::runtime::backoff::Backoff;
use crate::runtime::cluster::CheckState;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every netmend condition type starts with this.
pub const TYPE_PREFIX: &str = "Netmend";
/// The conditions are written at least this often, changed or not.
pub const HEARTBEAT: Duration = Duration::from_secs(300);
/// And never more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest message, in characters.
pub const MESSAGE_LIMIT: usize = 1024;
/// The field manager netmend writes as.
pub const FIELD_MANAGER: &str = "netmend";

/// The condition type of a check.
pub fn condition_type(check: crate::model::finding::CheckId) -> String {
    format!("{TYPE_PREFIX}{}", check.pascal_case())
}

/// One condition as netmend wants it on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Wanted {
    pub fn of(state: &CheckState) -> Wanted {
        let reasons = crate::detect::check(state.check)
            .map(|c| c.condition_reasons())
            .unwrap_or_else(|| ConditionReasons::derived(state.check));
        let summary = state.summary.trim();
        let message = match (state.failing, summary.is_empty()) {
            (_, false) => summary.to_string(),
            (true, true) => "findings present".to_string(),
            (false, true) => "no findings".to_string(),
        };
        Wanted {
            kind: condition_type(state.check),
            status: state.failing,
            reason: if state.failing {
                reasons.failing
            } else {
                reasons.passing
            }
            .into_owned(),
            message: cut(&message, MESSAGE_LIMIT),
        }
    }
}

/// `text` cut to `limit` characters, marked when cut.
pub fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let kept: String = text.chars().take(limit.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// A netmend condition as the node carries it.
#[derive(Debug, Clone, PartialEq)]
struct OnNode {
    status: bool,
    reason: String,
    message: String,
    last_transition: Option<Time>,
}

/// One write: the conditions to set and the types to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    pub set: Vec<NodeCondition>,
    pub delete: Vec<String>,
}

impl StatusPatch {
    /// The strategic merge patch: `status.conditions` only, merged by `type`.
    pub fn body(&self) -> serde_json::Value {
        let mut entries: Vec<serde_json::Value> = self
            .set
            .iter()
            .map(|c| serde_json::to_value(c).expect("conditions serialise"))
            .collect();
        entries.extend(
            self.delete
                .iter()
                .map(|kind| serde_json::json!({"type": kind, "$patch": "delete"})),
        );
        serde_json::json!({"status": {"conditions": entries}})
    }
}

/// What netmend's conditions on the node are, and when they are written next.
#[derive(Debug, Default)]
pub struct ConditionBook {
    on_node: BTreeMap<String, OnNode>,
    baseline: bool,
    last_written: Option<Instant>,
}

impl ConditionBook {
    /// Takes the node's conditions as they are at start: the `Netmend*` ones are netmend's.
    pub fn learn(&mut self, conditions: &[NodeCondition]) {
        self.on_node = conditions
            .iter()
            .filter(|c| c.type_.starts_with(TYPE_PREFIX))
            .map(|c| {
                (
                    c.type_.clone(),
                    OnNode {
                        status: c.status == "True",
                        reason: c.reason.clone().unwrap_or_default(),
                        message: c.message.clone().unwrap_or_default(),
                        last_transition: c.last_transition_time.clone(),
                    },
                )
            })
            .collect();
        self.baseline = true;
    }

    pub fn has_baseline(&self) -> bool {
        self.baseline
    }

    /// The write that brings the node to `checks` at `now`, if one is due.
    pub fn plan(
        &self,
        checks: &[CheckState],
        now: Instant,
        wall: SystemTime,
    ) -> Option<StatusPatch> {
        let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
        for state in checks {
            let w = Wanted::of(state);
            wanted.insert(w.kind.clone(), w);
        }
        let delete: Vec<String> = self
            .on_node
            .keys()
            .filter(|kind| !wanted.contains_key(*kind))
            .cloned()
            .collect();
        let changed = wanted.values().any(|w| {
            self.on_node.get(&w.kind).is_none_or(|c| {
                c.status != w.status || c.reason != w.reason || c.message != w.message
            })
        });
        let heartbeat = !wanted.is_empty()
            && self
                .last_written
                .is_none_or(|at| now.saturating_duration_since(at) >= HEARTBEAT);
        if !changed && delete.is_empty() && !heartbeat {
            return None;
        }
        let stamp = time(wall);
        let set = wanted
            .into_values()
            .map(|w| {
                let transition = match self.on_node.get(&w.kind) {
                    Some(c) if c.status == w.status && c.last_transition.is_some() => {
                        c.last_transition.clone()
                    }
                    _ => Some(stamp.clone()),
                };
                NodeCondition {
                    type_: w.kind,
                    status: if w.status { "True" } else { "False" }.to_string(),
                    reason: Some(w.reason),
                    message: Some(w.message),
                    last_heartbeat_time: Some(stamp.clone()),
                    last_transition_time: transition,
                }
            })
            .collect();
        Some(StatusPatch { set, delete })
    }

    /// `patch` was written at `now`.
    pub fn written(&mut self, patch: &StatusPatch, now: Instant) {
        for kind in &patch.delete {
            self.on_node.remove(kind);
        }
        for c in &patch.set {
            self.on_node.insert(
                c.type_.clone(),
                OnNode {
                    status: c.status == "True",
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                    last_transition: c.last_transition_time.clone(),
                },
            );
        }
        self.last_written = Some(now);
    }

    /// When the next heartbeat is due (none while netmend has no condition on the node).
    pub fn heartbeat_due(&self) -> Option<Instant> {
        if self.on_node.is_empty() {
            return None;
        }
        Some(
            self.last_written
                .map_or_else(Instant::now, |at| at + HEARTBEAT),
        )
    }
}

/// Keeps the node's netmend conditions in step with the engine's latest report.
pub struct ConditionsReporter {
    calls: ApiCalls,
    nodes: Api<Node>,
    node: String,
    wall: WallClock,
    facts: watch::Receiver<Option<NodeFacts>>,
    book: ConditionBook,
}

/// The checks' states of the latest pass (`None` before the first).
pub type Reports = watch::Receiver<Option<Arc<Vec<CheckState>>>>;

impl ConditionsReporter {
    pub fn new(
        calls: ApiCalls,
        node: String,
        wall: WallClock,
        facts: watch::Receiver<Option<NodeFacts>>,
    ) -> ConditionsReporter {
        let nodes = Api::all(calls.requests.clone());
        ConditionsReporter {
            calls,
            nodes,
            node,
            wall,
            facts,
            book: ConditionBook::default(),
        }
    }

    /// Runs until `cancel`. When the sender of `reports` is gone, the last report stays the
    /// goal (a fixed empty report removes every netmend condition and then rests).
    pub async fn run(mut self, mut reports: Reports, cancel: CancellationToken) {
        let seed = u64::from(std::process::id()).rotate_left(29) ^ 0x5eed;
        let mut backoff = Backoff::new(MIN_INTERVAL, Duration::from_secs(60), seed);
        let mut not_before = Instant::now();
        let mut sender_gone = false;
        loop {
            let now = Instant::now();
            let latest = reports.borrow_and_update().clone();
            let mut wake = None;
            if let Some(checks) = latest {
                if now < not_before {
                    wake = Some(not_before);
                } else if !self.book.has_baseline() {
                    if self.learn_baseline().await.is_err() {
                        not_before = Instant::now() + backoff.failed(now.into_std());
                    }
                    continue;
                } else if let Some(patch) = self.book.plan(&checks, now, (self.wall)()) {
                    match self.write(&patch).await {
                        Ok(()) => {
                            self.book.written(&patch, now);
                            backoff.succeeded();
                            not_before = now + MIN_INTERVAL;
                        }
                        Err(_) => {
                            not_before = Instant::now() + backoff.failed(now.into_std());
                        }
                    }
                    continue;
                } else {
                    wake = self.book.heartbeat_due();
                }
            }
            let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                changed = reports.changed(), if !sender_gone => {
                    if changed.is_err() {
                        sender_gone = true;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// What the node carries now: from the node watch when it has seen the node, else read.
    async fn learn_baseline(&mut self) -> Result<(), CallError> {
        let known = self.facts.borrow().as_ref().map(|f| f.conditions.clone());
        let conditions = match known {
            Some(conditions) => conditions,
            None => {
                let what = format!("nodes/{}", self.node);
                let node = self
                    .calls
                    .call("get", &what, self.nodes.get(&self.node))
                    .await?;
                node.status.and_then(|s| s.conditions).unwrap_or_default()
            }
        };
        self.book.learn(&conditions);
        Ok(())
    }

    async fn write(&self, patch: &StatusPatch) -> Result<(), CallError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let what = format!("nodes/{}/status", self.node);
        self.calls
            .call(
                "patch",
                &what,
                self.nodes
                    .patch_status(&self.node, &params, &Patch::Strategic(patch.body())),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{mock_calls, next_request, reply, status_body, FakeApi, Fault};
    use crate::model::finding::CheckId;
    use serde_json::json;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn state(check: CheckId, failing: bool, summary: &str) -> CheckState {
        CheckState {
            check,
            failing,
            summary: summary.into(),
        }
    }

    fn wall_at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_check_state_becomes_its_condition() {
        let w = Wanted::of(&state(
            CheckId::HOSTPORT_HIJACK,
            true,
            "tcp/6443 -> 10.0.0.9 (fix skipped_dry_run)",
        ));
        assert_eq!(
            w,
            Wanted {
                kind: "NetmendHostportHijack".into(),
                status: true,
                reason: "HijackPresent".into(),
                message: "tcp/6443 -> 10.0.0.9 (fix skipped_dry_run)".into(),
            }
        );
        let w = Wanted::of(&state(CheckId::CILIUM_STALE_BACKUP_CHAIN, false, ""));
        assert_eq!(w.kind, "NetmendCiliumStaleBackupChain");
        assert_eq!(
            (w.reason.as_str(), w.message.as_str()),
            ("NoStaleChain", "no findings")
        );
        let unknown = Wanted::of(&state(CheckId::new("later-check"), true, ""));
        assert_eq!(unknown.reason, "LaterCheckFound");
        let long = "x".repeat(5000);
        let w = Wanted::of(&state(CheckId::PROMISC_LOST, true, &long));
        assert_eq!(w.message.chars().count(), 1024);
        assert!(w.message.ends_with("..."));
        assert_eq!(cut("ééé", 3), "ééé");
    }

    #[test]
    fn writes_on_change_keep_the_transition_time_and_heartbeat_every_five_minutes() {
        let mut book = ConditionBook::default();
        book.learn(&[]);
        let t0 = Instant::now();
        let checks = vec![state(CheckId::HOSTPORT_HIJACK, false, "")];
        let first = book.plan(&checks, t0, wall_at(0)).expect("first write");
        assert_eq!(first.set[0].last_transition_time, Some(time(wall_at(0))));
        book.written(&first, t0);
        // nothing changed: nothing to write until the heartbeat
        assert_eq!(
            book.plan(&checks, t0 + Duration::from_secs(299), wall_at(299)),
            None
        );
        assert_eq!(book.heartbeat_due(), Some(t0 + HEARTBEAT));
        let beat = book
            .plan(&checks, t0 + HEARTBEAT, wall_at(300))
            .expect("heartbeat");
        assert_eq!(beat.set[0].last_heartbeat_time, Some(time(wall_at(300))));
        assert_eq!(beat.set[0].last_transition_time, Some(time(wall_at(0))));
        book.written(&beat, t0 + HEARTBEAT);
        // a message change keeps the transition time, a status change moves it
        let t1 = t0 + HEARTBEAT + Duration::from_secs(1);
        let failing = vec![state(CheckId::HOSTPORT_HIJACK, true, "tcp/22")];
        let up = book.plan(&failing, t1, wall_at(301)).unwrap();
        assert_eq!(up.set[0].status, "True");
        assert_eq!(up.set[0].reason.as_deref(), Some("HijackPresent"));
        assert_eq!(up.set[0].last_transition_time, Some(time(wall_at(301))));
        book.written(&up, t1);
        let other = vec![state(CheckId::HOSTPORT_HIJACK, true, "tcp/22, tcp/6443")];
        let msg = book.plan(&other, t1, wall_at(302)).unwrap();
        assert_eq!(msg.set[0].last_transition_time, Some(time(wall_at(301))));
    }

    #[test]
    fn conditions_of_checks_no_longer_reported_are_removed_with_earlier_runs_leftovers() {
        let mut book = ConditionBook::default();
        let earlier = |kind: &str, status: &str| NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some("Whatever".into()),
            message: Some("m".into()),
            last_heartbeat_time: None,
            last_transition_time: Some(time(wall_at(0))),
        };
        book.learn(&[
            earlier("Ready", "True"),
            earlier("NetmendHostportHijack", "False"),
            earlier("NetmendRetiredCheck", "True"),
        ]);
        let checks = vec![state(CheckId::HOSTPORT_HIJACK, false, "")];
        let patch = book.plan(&checks, Instant::now(), wall_at(10)).unwrap();
        assert_eq!(patch.delete, vec!["NetmendRetiredCheck".to_string()]);
        // the status did not change across the restart: the transition time stays
        assert_eq!(patch.set[0].last_transition_time, Some(time(wall_at(0))));
        assert_eq!(
            patch.body()["status"]["conditions"][1],
            json!({"type": "NetmendRetiredCheck", "$patch": "delete"})
        );
        book.written(&patch, Instant::now());
        // every check disabled: all of netmend's conditions go, then nothing more is written
        let gone = book.plan(&[], Instant::now(), wall_at(11)).unwrap();
        assert!(gone.set.is_empty());
        assert_eq!(gone.delete, vec!["NetmendHostportHijack".to_string()]);
        book.written(&gone, Instant::now());
        assert_eq!(
            book.plan(&[], Instant::now() + HEARTBEAT * 2, wall_at(900)),
            None
        );
        assert_eq!(book.heartbeat_due(), None);
    }

    type Inputs = (
        watch::Sender<Option<Arc<Vec<CheckState>>>>,
        watch::Sender<Option<NodeFacts>>,
        CancellationToken,
    );

    fn spawn_reporter(calls: ApiCalls, wall: WallClock) -> Inputs {
        let (facts_tx, facts_rx) = watch::channel(None);
        let (reports_tx, reports_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let reporter = ConditionsReporter::new(calls, "node-a".into(), wall, facts_rx);
        tokio::spawn(reporter.run(reports_rx, cancel.clone()));
        (reports_tx, facts_tx, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn the_patch_is_a_strategic_merge_of_netmends_conditions_only() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let wall: WallClock = Arc::new(|| wall_at(0));
        let (reports, _facts, cancel) = spawn_reporter(calls, wall);
        reports.send_replace(Some(Arc::new(vec![
            state(CheckId::HOSTPORT_HIJACK, true, "tcp/6443 -> 10.0.0.9:8443"),
            state(CheckId::PROMISC_LOST, false, ""),
        ])));
        // no node watch yet: the node is read first
        let (get, send) = next_request(&mut api).await;
        assert_eq!(
            (get.method.as_str(), get.path.as_str()),
            ("GET", "/api/v1/nodes/node-a")
        );
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                   "status": {"conditions": [
                       {"type": "Ready", "status": "True"},
                       {"type": "NetmendOldCheck", "status": "True"}]}}),
        );
        let (patch, send) = next_request(&mut api).await;
        assert_eq!(patch.method, "PATCH");
        assert_eq!(patch.path, "/api/v1/nodes/node-a/status");
        assert_eq!(patch.query, "&fieldManager=netmend");
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        let stamp = "2023-11-14T22:13:20Z";
        assert_eq!(
            patch.body,
            json!({"status": {"conditions": [
                {"type": "NetmendHostportHijack", "status": "True", "reason": "HijackPresent",
                 "message": "tcp/6443 -> 10.0.0.9:8443",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
                {"type": "NetmendPromiscLost", "status": "False", "reason": "PromiscHeld",
                 "message": "no findings",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
                {"type": "NetmendOldCheck", "$patch": "delete"}
            ]}})
        );
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}),
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn churn_is_coalesced_to_one_patch_a_second_and_failures_back_off() {
        let fake = FakeApi::default();
        fake.add_node(
            "node-a",
            json!({}),
            json!([{"type": "Ready", "status": "True"}]),
        );
        let (calls, faults) = fake.calls(TIMEOUT);
        let (reports, _facts, cancel) = spawn_reporter(calls, Arc::new(SystemTime::now));
        let patches = || fake.requests("PATCH", "/api/v1/nodes/node-a/status").len();
        let start = Instant::now();
        // 100 passes in 2 seconds, alternating states
        for i in 0..100u32 {
            reports.send_replace(Some(Arc::new(vec![state(
                CheckId::HOSTPORT_HIJACK,
                i % 2 == 0,
                &format!("pass {i}"),
            )])));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let written = patches();
        let elapsed = (Instant::now() - start).as_secs();
        assert!(
            written >= 2 && written as u64 <= elapsed + 1,
            "{written} patches in {elapsed}s"
        );
        let on_node = fake.conditions("node-a");
        assert_eq!(on_node["Ready"]["status"], "True");
        assert_eq!(on_node["NetmendHostportHijack"]["message"], "pass 99");
        // the API fails: retries back off instead of one per second
        faults.set(Some(Fault::Status(500)));
        reports.send_replace(Some(Arc::new(vec![state(
            CheckId::HOSTPORT_HIJACK,
            true,
            "down",
        )])));
        let before = fake.requests("PATCH", "/api").len();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let failed = fake.requests("PATCH", "/api").len() - before;
        assert!((3..=8).contains(&failed), "{failed} attempts in a minute");
        faults.set(None);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(
            fake.conditions("node-a")["NetmendHostportHijack"]["message"],
            "down"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_rewrites_the_conditions_every_five_minutes() {
        let fake = FakeApi::default();
        fake.add_node("node-a", json!({}), json!([]));
        let (calls, _) = fake.calls(TIMEOUT);
        let (reports, facts, cancel) = spawn_reporter(calls, Arc::new(SystemTime::now));
        facts.send_replace(Some(NodeFacts::default()));
        reports.send_replace(Some(Arc::new(vec![state(
            CheckId::PROMISC_LOST,
            false,
            "",
        )])));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let patches = || fake.requests("PATCH", "/api/v1/nodes/node-a/status").len();
        // the node watch knew the node: no GET
        assert_eq!(fake.requests("GET", "/api/v1/nodes/node-a").len(), 0);
        assert_eq!(patches(), 1);
        tokio::time::sleep(HEARTBEAT - Duration::from_secs(1)).await;
        assert_eq!(patches(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(patches(), 2);
        tokio::time::sleep(HEARTBEAT).await;
        assert_eq!(patches(), 3);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_patch_is_counted_and_retried_later() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let book = calls.book.clone();
        let (reports, facts, cancel) = spawn_reporter(calls, Arc::new(|| wall_at(0)));
        facts.send_replace(Some(NodeFacts::default()));
        reports.send_replace(Some(Arc::new(vec![state(
            CheckId::PROMISC_LOST,
            false,
            "",
        )])));
        let (_, send) = next_request(&mut api).await;
        let at = Instant::now();
        reply(
            send,
            403,
            status_body(403, "Forbidden", "nodes \"node-a\" is forbidden"),
        );
        let (again, send) = next_request(&mut api).await;
        assert_eq!(again.method, "PATCH");
        assert!(Instant::now() - at >= Duration::from_millis(800));
        let c = book.snapshot();
        assert_eq!(
            c.request_errors[&("patch".to_string(), "403".to_string())],
            1
        );
        assert!(!c.connected);
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(book.snapshot().connected);
        cancel.cancel();
    }
}
