//! Watch streams: one JSON line per event (`{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
//! "object": ...}`) in a chunked response, as the real server sends them.
//!
//! A watch from resourceVersion `N` gets the changes after `N`; from `0` or none, first an
//! `ADDED` for every object there is now; with `sendInitialEvents=true`, that too, then a
//! bookmark annotated `k8s.io/initial-events-end`. A resourceVersion older than the kept history
//! gets an `ERROR` event carrying a 410 `Expired` Status (what makes kube's watcher list again),
//! and so does a watch that falls behind the history. With `allowWatchBookmarks=true` a bookmark
//! carrying the current resourceVersion comes every bookmark interval. The stream ends cleanly at
//! `timeoutSeconds`, and is cut (no last chunk) when the server stops listening or a test closes
//! the watches.

use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::store::{Change, ChangeKind};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which objects a watch (or list) is about.
pub struct Filter {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The watch lines of `changes` for this watch.
    fn lines_for(&self, changes: &[Change]) -> Vec<Bytes> {
        changes
            .iter()
            .filter_map(|c| self.event_for(c).map(|t| line(t, &c.object)))
            .collect()
    }

    /// The event a change is for this watch: an object that starts matching is `ADDED`, one
    /// that stops matching is `DELETED`.
    fn event_for(&self, change: &Change) -> Option<&'static str> {
        if change.resource.group != self.resource.group
            || change.resource.plural != self.resource.plural
        {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => Some("ADDED"),
            (ChangeKind::Modified, true, true) => Some("MODIFIED"),
            (ChangeKind::Modified, false, true) => Some("ADDED"),
            (ChangeKind::Modified, true, false) => Some("DELETED"),
            (ChangeKind::Deleted, b, n) if b || n => Some("DELETED"),
            _ => None,
        }
    }
}

/// Where a watch starts.
pub enum Start {
    /// `resourceVersion` unset or `0`: the objects there are now, then changes.
    Now,
    /// The changes after this resourceVersion.
    After(u64),
}

/// What the request asked of the stream.
pub struct WatchRequest {
    pub filter: Filter,
    pub start: Start,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": event_type, "object": object}))
        .expect("a JSON value serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(resource: &ResourceType, resource_version: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata})
}

/// Streams the watch into `sender` until the timeout, the client leaves, or `cut` is cancelled.
pub async fn stream(
    shared: Arc<Shared>,
    request: WatchRequest,
    sender: mpsc::Sender<Bytes>,
    cut: CancellationToken,
) {
    let mut changed = shared.changed.subscribe();
    let resource = request.filter.resource;
    // The first lines and the resourceVersion they bring the watch to, read under one lock.
    let opening = {
        let store = shared.store.lock().expect("store lock");
        match request.start {
            // The changes made between `version` and now come first.
            Start::After(version) if !request.send_initial_events => store
                .changes_after(version)
                .map(|changes| (request.filter.lines_for(&changes), store.resource_version())),
            _ => {
                let objects = store.select(resource, request.filter.namespace.as_deref(), |o| {
                    request.filter.matches(o)
                });
                let lines: Vec<Bytes> = objects.iter().map(|o| line("ADDED", o)).collect();
                Ok((lines, store.resource_version()))
            }
        }
    };
    let (mut first, mut seen) = match opening {
        Ok(opening) => opening,
        Err(expired) => {
            let _ = sender.send(line("ERROR", &expired.to_status())).await;
            return;
        }
    };
    if request.send_initial_events {
        first.push(line("BOOKMARK", &bookmark(resource, seen, true)));
    }
    for bytes in first {
        if sender.send(bytes).await.is_err() {
            return;
        }
    }
    let bookmark_every = shared.bookmark_interval;
    let mut next_bookmark = tokio::time::Instant::now() + bookmark_every;
    let deadline = request.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        tokio::select! {
            _ = cut.cancelled() => return,
            _ = sender.closed() => return,
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => return,
            _ = tokio::time::sleep_until(next_bookmark), if request.bookmarks => {
                next_bookmark = tokio::time::Instant::now() + bookmark_every;
                // Every change up to `seen` went out; later ones come with the next wake-up,
                // so the bookmark says no more than `seen`.
                if sender.send(line("BOOKMARK", &bookmark(resource, seen, false))).await.is_err() {
                    return;
                }
                continue;
            }
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
            }
        }
        let lines = {
            let store = shared.store.lock().expect("store lock");
            store.changes_after(seen).map(|changes| {
                seen = store.resource_version();
                request.filter.lines_for(&changes)
            })
        };
        match lines {
            Ok(lines) => {
                for bytes in lines {
                    if sender.send(bytes).await.is_err() {
                        return;
                    }
                }
            }
            Err(expired) => {
                // Fell behind the history: the client must list again.
                let _ = sender.send(line("ERROR", &expired.to_status())).await;
                return;
            }
        }
    }
}
