//! Events on the Node (events.k8s.io/v1): findings raised and cleared, fix outcomes, the breaker
//! opening. `regarding` is the Node (with its uid when known), `reportingController` is
//! `netmend.io/agent`, `reportingInstance` the node name; the note names the check, the subject
//! and the fix.
//!
//! Repeats of the same reason, check and subject within [`FOLD_WINDOW`] of the last one are
//! folded into the first Event's `series` (count, lastObservedTime), written by PATCH: the first
//! repeat at once, later ones at most every [`SERIES_REFRESH`]. All writes share a token bucket
//! ([`BURST`], one more every [`REFILL`]) and back off after a failure. Memory is bounded: at most
//! [`MAX_SERIES`] series are remembered (the least recently seen is forgotten first).
//!
//! [`EventFolder`] is the policy (pure, time passed in); [`EventsReporter`] is the task. Its
//! tests (folding, budget, the wire format, an outage) make this file long.

use crate::cluster::client::{ApiCalls, CallError};
use crate::cluster::node_watch::NodeFacts;
use crate::cluster::{micro_time, WallClock};
use crate::model::finding::{CheckId, Outcome};
use crate::runtime::backoff::Backoff;
use crate::runtime::cluster::NodeEvent;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const REPORTING_CONTROLLER: &str = "netmend.io/agent";
/// Node events live in the `default` namespace, as the kubelet's do.
pub const EVENT_NAMESPACE: &str = "default";
pub const FOLD_WINDOW: Duration = Duration::from_secs(360);
pub const SERIES_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_SERIES: usize = 256;
pub const BURST: u32 = 20;
pub const REFILL: Duration = Duration::from_secs(3);
/// The longest note, in characters.
pub const NOTE_LIMIT: usize = 1024;

/// One thing that happened, as an Event says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub reason: &'static str,
    pub warning: bool,
    pub action: String,
    pub note: String,
    pub check: CheckId,
    pub subject: String,
}

/// The Event for `event`, or `None` for fix outcomes that make none (skips, blocks, unknown).
pub fn occurrence(event: &NodeEvent) -> Option<Occurrence> {
    match event {
        NodeEvent::FindingRaised {
            check,
            subject,
            message,
        } => Some(Occurrence {
            reason: "FindingRaised",
            warning: true,
            action: "Detect".into(),
            note: crate::cluster::conditions::cut(
                &format!("{check}: {subject}: {message}"),
                NOTE_LIMIT,
            ),
            check: *check,
            subject: subject.clone(),
        }),
        NodeEvent::FindingCleared { check, subject } => Some(Occurrence {
            reason: "FindingCleared",
            warning: false,
            action: "Detect".into(),
            note: crate::cluster::conditions::cut(
                &format!("{check}: {subject}: cleared"),
                NOTE_LIMIT,
            ),
            check: *check,
            subject: subject.clone(),
        }),
        NodeEvent::Fix {
            check,
            subject,
            fix,
            outcome,
            detail,
        } => {
            let (reason, warning) = match outcome {
                Outcome::Applied => ("FixApplied", false),
                Outcome::Verified => ("FixVerified", false),
                Outcome::Ineffective => ("FixIneffective", true),
                Outcome::Failed => ("FixFailed", true),
                Outcome::Reverted => ("FixReverted", true),
                Outcome::SkippedCircuitOpen => ("CircuitOpen", true),
                _ => return None,
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            Some(Occurrence {
                reason,
                warning,
                action: "Mend".into(),
                note: crate::cluster::conditions::cut(
                    &format!("{check}: {fix} on {subject} {}{detail}", outcome.as_str()),
                    NOTE_LIMIT,
                ),
                check: *check,
                subject: subject.clone(),
            })
        }
    }
}

type Key = (&'static str, CheckId, String);

#[derive(Debug, Clone)]
struct Series {
    occurrence: Occurrence,
    /// The Event's name once created.
    name: Option<String>,
    count: u32,
    /// The count the API has.
    written: u32,
    first_observed: SystemTime,
    last_observed: SystemTime,
    last_seen: Instant,
    last_write: Option<Instant>,
}

/// A write the folder wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create {
        key: KeyRef,
        event: Box<Event>,
    },
    Series {
        key: KeyRef,
        name: String,
        count: u32,
        last_observed: SystemTime,
    },
}

/// A series' key, as handed out with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef(Key);

/// Folds occurrences into series and decides which write is due.
#[derive(Debug)]
pub struct EventFolder {
    node: String,
    series: HashMap<Key, Series>,
    /// Keys waiting for their first create, oldest first.
    creates: VecDeque<Key>,
    tokens: f64,
    refilled_at: Instant,
    blocked_until: Option<Instant>,
    backoff: Backoff,
    names: u64,
    forgotten: u64,
}

impl EventFolder {
    pub fn new(node: String, now: Instant) -> EventFolder {
        EventFolder {
            node,
            series: HashMap::new(),
            creates: VecDeque::new(),
            tokens: f64::from(BURST),
            refilled_at: now,
            blocked_until: None,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0x00e7_e175),
            names: 0,
            forgotten: 0,
        }
    }

    /// Takes one occurrence at `now`.
    pub fn observe(&mut self, occurrence: Occurrence, now: Instant, wall: SystemTime) {
        self.expire(now);
        let key: Key = (
            occurrence.reason,
            occurrence.check,
            occurrence.subject.clone(),
        );
        if let Some(series) = self.series.get_mut(&key) {
            series.count = series.count.saturating_add(1);
            series.last_seen = now;
            series.last_observed = wall;
            series.occurrence = occurrence;
            return;
        }
        if self.series.len() >= MAX_SERIES {
            self.forget_oldest();
        }
        self.series.insert(
            key.clone(),
            Series {
                occurrence,
                name: None,
                count: 1,
                written: 0,
                first_observed: wall,
                last_observed: wall,
                last_seen: now,
                last_write: None,
            },
        );
        self.creates.push_back(key);
    }

    /// Forgets series not seen for the fold window (once the API has their count).
    fn expire(&mut self, now: Instant) {
        self.series.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < FOLD_WINDOW
                || (s.name.is_some() && s.written < s.count)
                || s.name.is_none()
        });
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .series
            .iter()
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(k, _)| k.clone())
        {
            self.series.remove(&oldest);
            self.creates.retain(|k| *k != oldest);
            self.forgotten += 1;
            if self.forgotten == 1 || self.forgotten.is_multiple_of(100) {
                tracing::warn!(
                    forgotten = self.forgotten,
                    "too many distinct events: the oldest are forgotten"
                );
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / REFILL.as_secs_f64()).min(f64::from(BURST));
        self.refilled_at = now;
    }

    /// The next write due at `now` and allowed by the budget, taking its token.
    pub fn next_write(&mut self, now: Instant, uid: Option<&str>) -> Option<Write> {
        self.expire(now);
        self.refill(now);
        if self.blocked_until.is_some_and(|until| now < until) || self.tokens < 1.0 {
            return None;
        }
        let write = self.due(now, uid)?;
        self.tokens -= 1.0;
        Some(write)
    }

    fn due(&mut self, now: Instant, uid: Option<&str>) -> Option<Write> {
        while let Some(key) = self.creates.front().cloned() {
            if let Some(series) = self.series.get(&key).cloned() {
                let event = self.event(&series, uid);
                return Some(Write::Create {
                    key: KeyRef(key),
                    event: Box::new(event),
                });
            }
            self.creates.pop_front();
        }
        self.series
            .iter()
            .filter(|(_, s)| s.name.is_some() && s.written < s.count && series_due(s, now))
            .min_by_key(|(_, s)| s.last_write)
            .map(|(key, s)| Write::Series {
                key: KeyRef(key.clone()),
                name: s.name.clone().unwrap_or_default(),
                count: s.count,
                last_observed: s.last_observed,
            })
    }

    /// When the next write may be due (for the task's sleep).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let pending = !self.creates.is_empty()
            || self
                .series
                .values()
                .any(|s| s.name.is_some() && s.written < s.count);
        if !pending {
            return None;
        }
        let token_at = if self.tokens >= 1.0 {
            now
        } else {
            now + REFILL.mul_f64(1.0 - self.tokens)
        };
        let series_at = if self.creates.is_empty() {
            self.series
                .values()
                .filter(|s| s.name.is_some() && s.written < s.count)
                .map(|s| s.last_write.map_or(now, |at| at + SERIES_REFRESH))
                .min()
                .unwrap_or(now)
        } else {
            now
        };
        Some(
            token_at
                .max(series_at)
                .max(self.blocked_until.unwrap_or(now)),
        )
    }

    /// The outcome of `write` at `now`.
    pub fn done(&mut self, write: &Write, outcome: Result<(), CallError>, now: Instant) {
        match (write, outcome) {
            (Write::Create { key, event }, Ok(())) => {
                self.backoff.succeeded();
                self.creates.retain(|k| *k != key.0);
                if let Some(s) = self.series.get_mut(&key.0) {
                    s.name = event.metadata.name.clone();
                    s.written = event.series.as_ref().map_or(1, |x| x.count as u32);
                    s.last_write = Some(now);
                }
            }
            (Write::Series { key, count, .. }, Ok(())) => {
                self.backoff.succeeded();
                if let Some(s) = self.series.get_mut(&key.0) {
                    s.written = *count;
                    s.last_write = Some(now);
                }
            }
            (Write::Series { key, .. }, Err(e)) if e.status() == Some(404) => {
                // The Event expired in the API: start a new one.
                if let Some(s) = self.series.get_mut(&key.0) {
                    s.name = None;
                    s.written = 0;
                    s.count = 1;
                    s.first_observed = s.last_observed;
                    self.creates.push_back(key.0.clone());
                }
            }
            (Write::Create { key, .. }, Err(e))
                if e.status().is_some_and(|c| {
                    (400..500).contains(&c) && c != 409 && c != 429 && c != 403
                }) =>
            {
                tracing::warn!(error = %e, reason = key.0 .0, "the API refused an Event: dropped");
                self.series.remove(&key.0);
                self.creates.retain(|k| *k != key.0);
            }
            (_, Err(_)) => {
                let delay = self.backoff.failed(now.into_std());
                self.blocked_until = Some(now + delay);
            }
        }
    }

    fn event(&mut self, series: &Series, uid: Option<&str>) -> Event {
        self.names += 1;
        let stamp = series
            .first_observed
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let prefix: String = self.node.chars().take(200).collect();
        let o = &series.occurrence;
        Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{prefix}.{stamp:x}{:04x}", self.names & 0xffff)),
                namespace: Some(EVENT_NAMESPACE.to_string()),
                ..Default::default()
            },
            event_time: Some(micro_time(series.first_observed)),
            series: (series.count > 1).then(|| EventSeries {
                count: series.count as i32,
                last_observed_time: micro_time(series.last_observed),
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
            reporting_instance: Some(self.node.chars().take(128).collect()),
            action: Some(o.action.clone()),
            reason: Some(o.reason.to_string()),
            note: Some(o.note.clone()),
            type_: Some(if o.warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                uid: uid.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn remembered(&self) -> usize {
        self.series.len()
    }
}

fn series_due(series: &Series, now: Instant) -> bool {
    // The first repeat is written at once; later ones at most every SERIES_REFRESH.
    series.written <= 1
        || series
            .last_write
            .is_none_or(|at| now >= at + SERIES_REFRESH)
}

/// Writes the Events of the engine's passes.
pub struct EventsReporter {
    calls: ApiCalls,
    events: Api<Event>,
    facts: watch::Receiver<Option<NodeFacts>>,
    wall: WallClock,
    folder: EventFolder,
}

impl EventsReporter {
    pub fn new(
        calls: ApiCalls,
        node: String,
        wall: WallClock,
        facts: watch::Receiver<Option<NodeFacts>>,
    ) -> EventsReporter {
        let events = Api::namespaced(calls.requests.clone(), EVENT_NAMESPACE);
        EventsReporter {
            calls,
            events,
            facts,
            wall,
            folder: EventFolder::new(node, Instant::now()),
        }
    }

    pub async fn run(mut self, mut incoming: mpsc::Receiver<NodeEvent>, cancel: CancellationToken) {
        let mut open = true;
        loop {
            let now = Instant::now();
            let uid = self.facts.borrow().as_ref().and_then(|f| f.uid.clone());
            if let Some(write) = self.folder.next_write(now, uid.as_deref()) {
                let outcome = self.write(&write).await;
                self.folder.done(&write, outcome, Instant::now());
                continue;
            }
            let wake = self
                .folder
                .next_due(now)
                .unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                event = incoming.recv(), if open => match event {
                    Some(event) => {
                        if let Some(o) = occurrence(&event) {
                            self.folder.observe(o, Instant::now(), (self.wall)());
                        }
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn write(&self, write: &Write) -> Result<(), CallError> {
        match write {
            Write::Create { event, .. } => {
                let what = format!(
                    "events/{}",
                    event.metadata.name.as_deref().unwrap_or_default()
                );
                self.calls
                    .call(
                        "create",
                        &what,
                        self.events.create(&PostParams::default(), event),
                    )
                    .await
                    .map(|_| ())
            }
            Write::Series {
                name,
                count,
                last_observed,
                ..
            } => {
                let body = serde_json::json!({"series": EventSeries {
                    count: *count as i32,
                    last_observed_time: micro_time(*last_observed),
                }});
                let what = format!("events/{name}");
                self.calls
                    .call(
                        "patch",
                        &what,
                        self.events
                            .patch(name, &PatchParams::default(), &Patch::Strategic(body)),
                    )
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{mock_calls, next_request, reply, FakeApi, Fault};
    use crate::model::finding::FixId;
    use serde_json::json;
    use std::sync::Arc;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn raised(subject: &str) -> NodeEvent {
        NodeEvent::FindingRaised {
            check: CheckId::HOSTPORT_HIJACK,
            subject: subject.into(),
            message: "DNAT captures tcp/6443".into(),
        }
    }

    fn wall_at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn reasons_and_types_follow_the_contract() {
        let fix = |outcome| NodeEvent::Fix {
            check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
            subject: "OLD_CILIUM_INPUT".into(),
            fix: FixId::FLUSH_STALE_CHAIN,
            outcome,
            detail: String::new(),
        };
        let of = |e: &NodeEvent| occurrence(e).map(|o| (o.reason, o.warning));
        assert_eq!(of(&raised("x")), Some(("FindingRaised", true)));
        assert_eq!(
            of(&NodeEvent::FindingCleared {
                check: CheckId::HOSTPORT_HIJACK,
                subject: "x".into()
            }),
            Some(("FindingCleared", false))
        );
        assert_eq!(of(&fix(Outcome::Applied)), Some(("FixApplied", false)));
        assert_eq!(of(&fix(Outcome::Verified)), Some(("FixVerified", false)));
        assert_eq!(
            of(&fix(Outcome::Ineffective)),
            Some(("FixIneffective", true))
        );
        assert_eq!(of(&fix(Outcome::Failed)), Some(("FixFailed", true)));
        assert_eq!(of(&fix(Outcome::Reverted)), Some(("FixReverted", true)));
        assert_eq!(
            of(&fix(Outcome::SkippedCircuitOpen)),
            Some(("CircuitOpen", true))
        );
        assert_eq!(of(&fix(Outcome::SkippedCooldown)), None);
        assert_eq!(of(&fix(Outcome::Blocked)), None);
        let note = occurrence(&fix(Outcome::Applied)).unwrap().note;
        assert_eq!(
            note,
            "cilium-stale-backup-chain: flush-stale-chain on OLD_CILIUM_INPUT applied"
        );
    }

    #[test]
    fn repeats_fold_into_one_series_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut folder = EventFolder::new("node-a".into(), t0);
        folder.observe(occurrence(&raised("tcp/6443")).unwrap(), t0, wall_at(0));
        let Some(Write::Create { key, event }) = folder.next_write(t0, Some("u-1")) else {
            panic!("a create")
        };
        assert!(event.series.is_none());
        assert_eq!(
            event.regarding.as_ref().unwrap().uid.as_deref(),
            Some("u-1")
        );
        folder.done(
            &Write::Create {
                key,
                event: event.clone(),
            },
            Ok(()),
            t0,
        );
        // three repeats: the first is written at once, the rest wait for the refresh
        for i in 1..=3 {
            folder.observe(occurrence(&raised("tcp/6443")).unwrap(), t0, wall_at(i));
            if i == 1 {
                let Some(w @ Write::Series { count: 2, .. }) = folder.next_write(t0, None) else {
                    panic!("the first repeat")
                };
                folder.done(&w, Ok(()), t0);
            }
        }
        assert_eq!(folder.next_write(t0, None), None);
        assert_eq!(folder.next_due(t0), Some(t0 + SERIES_REFRESH));
        let later = t0 + SERIES_REFRESH;
        match folder.next_write(later, None) {
            Some(Write::Series {
                name,
                count,
                last_observed,
                ..
            }) => {
                assert_eq!(Some(name), event.metadata.name);
                assert_eq!(count, 4);
                assert_eq!(last_observed, wall_at(3));
            }
            other => panic!("{other:?}"),
        }
        // a different subject is a different Event; past the window, the same subject too
        let mut folder = EventFolder::new("node-a".into(), t0);
        for i in 0..(MAX_SERIES as u64 + 10) {
            folder.observe(
                occurrence(&raised(&format!("tcp/{i}"))).unwrap(),
                t0 + Duration::from_millis(i),
                wall_at(i),
            );
        }
        assert_eq!(folder.remembered(), MAX_SERIES);
    }

    #[test]
    fn the_budget_and_backoff_hold_writes_back() {
        let t0 = Instant::now();
        let mut folder = EventFolder::new("node-a".into(), t0);
        for i in 0..30 {
            folder.observe(
                occurrence(&raised(&format!("s{i}"))).unwrap(),
                t0,
                wall_at(0),
            );
        }
        let mut written = 0;
        while let Some(w) = folder.next_write(t0, None) {
            folder.done(&w, Ok(()), t0);
            written += 1;
        }
        assert_eq!(written, BURST);
        assert_eq!(folder.next_due(t0), Some(t0 + REFILL));
        assert!(folder.next_write(t0 + REFILL / 2, None).is_none());
        // a failure blocks every write for the backoff (1s, give or take a fifth)
        let t1 = t0 + REFILL * 10;
        let w = folder.next_write(t1, None).unwrap();
        let unavailable = CallError::Status {
            code: 503,
            reason: String::new(),
            message: String::new(),
        };
        folder.done(&w, Err(unavailable), t1);
        assert!(folder
            .next_write(t1 + Duration::from_millis(700), None)
            .is_none());
        assert!(folder
            .next_write(t1 + Duration::from_millis(1300), None)
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_event_on_the_wire_and_its_series_patch() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let (facts_tx, facts) = watch::channel(Some(NodeFacts {
            uid: Some("u-1".into()),
            ..NodeFacts::default()
        }));
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let reporter = EventsReporter::new(calls, "node-a".into(), Arc::new(|| wall_at(0)), facts);
        tokio::spawn(reporter.run(rx, cancel.clone()));
        tx.send(raised("tcp/6443")).await.unwrap();
        let (create, send) = next_request(&mut api).await;
        assert_eq!(create.method, "POST");
        assert_eq!(
            create.path,
            "/apis/events.k8s.io/v1/namespaces/default/events"
        );
        assert_eq!(create.content_type.as_deref(), Some("application/json"));
        let name = create.body["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(name.starts_with("node-a."), "{name}");
        assert_eq!(
            create.body,
            json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": name, "namespace": "default"},
                "eventTime": "2023-11-14T22:13:20.000000Z",
                "reportingController": "netmend.io/agent", "reportingInstance": "node-a",
                "action": "Detect", "reason": "FindingRaised", "type": "Warning",
                "note": "hostport-hijack: tcp/6443: DNAT captures tcp/6443",
                "regarding": {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "u-1"}
            })
        );
        reply(send, 201, create.body.clone());
        tx.send(raised("tcp/6443")).await.unwrap();
        let (patch, send) = next_request(&mut api).await;
        assert_eq!(patch.method, "PATCH");
        assert_eq!(
            patch.path,
            format!("/apis/events.k8s.io/v1/namespaces/default/events/{name}")
        );
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        assert_eq!(
            patch.body,
            json!({"series": {"count": 2, "lastObservedTime": "2023-11-14T22:13:20.000000Z"}})
        );
        reply(send, 200, create.body.clone());
        drop(facts_tx);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_repeats_is_a_handful_of_writes_and_an_outage_is_caught_up() {
        let fake = FakeApi::default();
        let (calls, faults) = fake.calls(TIMEOUT);
        let (_facts_tx, facts) = watch::channel(None);
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let reporter =
            EventsReporter::new(calls, "node-a".into(), Arc::new(SystemTime::now), facts);
        tokio::spawn(reporter.run(rx, cancel.clone()));
        for _ in 0..300 {
            tx.send(raised("tcp/6443")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(SERIES_REFRESH * 2).await;
        let events = fake.state.lock().unwrap().events.clone();
        assert_eq!(events.len(), 1);
        let event = events.values().next().unwrap();
        assert_eq!(event["series"]["count"], 300);
        let writes = fake.requests("PATCH", "/apis/events.k8s.io").len();
        assert!(writes <= 3, "{writes} series patches for 60s of repeats");
        // during an outage nothing is lost within the bounds; it is written when the API is back
        faults.set(Some(Fault::Status(503)));
        tx.send(NodeEvent::FindingCleared {
            check: CheckId::HOSTPORT_HIJACK,
            subject: "tcp/6443".into(),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        faults.set(None);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let events = fake.state.lock().unwrap().events.clone();
        assert_eq!(events.len(), 2);
        assert!(events.values().any(|e| e["reason"] == "FindingCleared"));
        cancel.cancel();
    }
}
