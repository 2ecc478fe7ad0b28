//! This node as the API has it, watched: the opt-out label `netmend.io/mode` (`dry-run` or `off`;
//! another value is logged and counts as unset), the node's uid (for Events' `regarding`) and its
//! conditions (what an earlier run left) and its cordon (`spec.unschedulable` and netmend's
//! annotation). One watch on `nodes` with the field selector
//! `metadata.name=<node>`; kube's watcher re-lists after a 410 and backs off after errors.

use crate::cluster::client::{ApiCalls, WATCH_SECONDS};
use crate::runtime::cluster::NodeMode;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The node label that opts a node out.
pub const MODE_LABEL: &str = "netmend.io/mode";

/// What netmend needs to know about its node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub uid: Option<String>,
    pub mode: NodeMode,
    /// The value of the mode label when it is not one netmend knows (it counts as unset).
    pub unknown_mode: Option<String>,
    pub conditions: Vec<NodeCondition>,
    /// Whether the node is cordoned, and by whom.
    pub cordon: crate::runtime::cluster::Cordon,
}

/// The mode a label value asks for; `Err` with the value when netmend does not know it.
pub fn mode_of(label: Option<&str>) -> Result<NodeMode, String> {
    match label.map(str::trim) {
        None | Some("") => Ok(NodeMode::Configured),
        Some("dry-run") => Ok(NodeMode::DryRun),
        Some("off") => Ok(NodeMode::Off),
        Some(other) => Err(other.to_string()),
    }
}

impl NodeFacts {
    pub fn of(node: &Node) -> NodeFacts {
        let label = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MODE_LABEL))
            .map(String::as_str);
        let (mode, unknown_mode) = match mode_of(label) {
            Ok(mode) => (mode, None),
            Err(value) => (NodeMode::Configured, Some(value)),
        };
        NodeFacts {
            uid: node.metadata.uid.clone(),
            mode,
            unknown_mode,
            conditions: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default(),
            cordon: crate::cluster::cordon::cordon_of(node),
        }
    }
}

/// Watches the node until `cancel`, publishing its facts on `facts`.
pub async fn watch_node(
    calls: ApiCalls,
    node: String,
    facts: watch::Sender<Option<NodeFacts>>,
    cancel: CancellationToken,
) {
    let api: Api<Node> = Api::all(calls.watches.clone());
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={node}"))
        .timeout(WATCH_SECONDS);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let what = format!("nodes/{node} (watch)");
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            None => return,
            Some(Err(error)) => calls.watch_failed(&what, &error),
            Some(Ok(event)) => {
                if !matches!(event, Event::Init) {
                    // `Init` comes before the list is even sent; the rest are answers.
                    calls.watch_item();
                }
                match event {
                    Event::Apply(n) | Event::InitApply(n) => publish(&facts, NodeFacts::of(&n)),
                    Event::Delete(_) => {
                        tracing::warn!(node = %node, "this node was deleted from the API");
                        facts.send_replace(Some(NodeFacts::default()));
                    }
                    Event::Init | Event::InitDone => {}
                }
            }
        }
    }
}

fn publish(facts: &watch::Sender<Option<NodeFacts>>, new: NodeFacts) {
    let old = facts.borrow().clone().unwrap_or_default();
    if new.mode != old.mode {
        tracing::info!(mode = ?new.mode, "node mode from the label {MODE_LABEL}");
    }
    if new.unknown_mode.is_some() && new.unknown_mode != old.unknown_mode {
        tracing::warn!(
            value = new.unknown_mode.as_deref().unwrap_or_default(),
            "unknown value of the label {MODE_LABEL} (dry-run or off): ignored"
        );
    }
    facts.send_replace(Some(new));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{mock_calls, next_request, reply, status_body, Responder};
    use kube::client::Body;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn the_label_values() {
        assert_eq!(mode_of(None), Ok(NodeMode::Configured));
        assert_eq!(mode_of(Some("dry-run")), Ok(NodeMode::DryRun));
        assert_eq!(mode_of(Some("off")), Ok(NodeMode::Off));
        assert_eq!(mode_of(Some("")), Ok(NodeMode::Configured));
        assert_eq!(mode_of(Some("of")), Err("of".to_string()));
    }

    fn node(rv: &str, mode: Option<&str>) -> serde_json::Value {
        let labels = match mode {
            Some(m) => json!({"kubernetes.io/hostname": "node-a", "netmend.io/mode": m}),
            None => json!({"kubernetes.io/hostname": "node-a"}),
        };
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "uid": "u-1", "resourceVersion": rv, "labels": labels},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn stream(send: Responder, events: &[serde_json::Value]) {
        let mut body = Vec::new();
        for e in events {
            body.extend(serde_json::to_vec(e).unwrap());
            body.push(b'\n');
        }
        send.send_response(
            http::Response::builder()
                .status(200)
                .body(Body::from(body))
                .unwrap(),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_label_is_read_at_start_and_followed_through_watches_and_a_410() {
        let (calls, mut api) = mock_calls(Duration::from_secs(10));
        let (facts_tx, mut facts) = watch::channel(None);
        let cancel = CancellationToken::new();
        tokio::spawn(watch_node(
            calls.clone(),
            "node-a".into(),
            facts_tx,
            cancel.clone(),
        ));

        let (list, send) = next_request(&mut api).await;
        assert_eq!(
            (list.method.as_str(), list.path.as_str()),
            ("GET", "/api/v1/nodes")
        );
        let params = list.params();
        assert_eq!(params["fieldSelector"], "metadata.name=node-a");
        assert!(!params.contains_key("watch"));
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"},
                   "items": [node("9", Some("dry-run"))]}),
        );
        facts.wait_for(|f| f.is_some()).await.unwrap();
        let seen = facts.borrow().clone().unwrap();
        assert_eq!(seen.mode, NodeMode::DryRun);
        assert_eq!(seen.uid.as_deref(), Some("u-1"));
        assert_eq!(seen.conditions[0].type_, "Ready");

        let (watch, send) = next_request(&mut api).await;
        let params = watch.params();
        assert_eq!(params["watch"], "true");
        assert_eq!(params["resourceVersion"], "10");
        assert_eq!(params["fieldSelector"], "metadata.name=node-a");
        assert_eq!(params["timeoutSeconds"], "290");
        assert_eq!(params["allowWatchBookmarks"], "true");
        stream(
            send,
            &[
                json!({"type": "MODIFIED", "object": node("11", Some("off"))}),
                json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Node",
                        "metadata": {"resourceVersion": "15"}}}),
            ],
        );
        facts
            .wait_for(|f| f.as_ref().is_some_and(|f| f.mode == NodeMode::Off))
            .await
            .unwrap();

        // the stream ended: the next watch resumes from the bookmark, and a 410 re-lists
        let (watch, send) = next_request(&mut api).await;
        assert_eq!(watch.params()["resourceVersion"], "15");
        stream(
            send,
            &[
                json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}),
            ],
        );
        let (relist, send) = next_request(&mut api).await;
        assert!(!relist.params().contains_key("watch"), "{relist:?}");
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "30"},
                   "items": [node("29", Some("sometimes"))]}),
        );
        facts
            .wait_for(|f| f.as_ref().is_some_and(|f| f.unknown_mode.is_some()))
            .await
            .unwrap();
        assert_eq!(facts.borrow().as_ref().unwrap().mode, NodeMode::Configured);
        let errors = calls.book.snapshot().request_errors;
        assert_eq!(errors[&("watch".to_string(), "410".to_string())], 1);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_list_is_counted_and_retried_with_backoff() {
        let (calls, mut api) = mock_calls(Duration::from_secs(10));
        let (facts_tx, facts) = watch::channel(None);
        let cancel = CancellationToken::new();
        tokio::spawn(watch_node(
            calls.clone(),
            "node-a".into(),
            facts_tx,
            cancel.clone(),
        ));
        let (_, send) = next_request(&mut api).await;
        reply(
            send,
            503,
            status_body(503, "ServiceUnavailable", "etcd is sad"),
        );
        let failed_at = tokio::time::Instant::now();
        let (again, send) = next_request(&mut api).await;
        assert!(tokio::time::Instant::now() > failed_at);
        assert_eq!(again.path, "/api/v1/nodes");
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "3"},
                   "items": [node("2", None)]}),
        );
        let mut facts = facts;
        facts.wait_for(|f| f.is_some()).await.unwrap();
        assert_eq!(facts.borrow().as_ref().unwrap().mode, NodeMode::Configured);
        let c = calls.book.snapshot();
        assert_eq!(
            c.request_errors[&("list".to_string(), "503".to_string())],
            1
        );
        assert!(c.connected);
        cancel.cancel();
    }
}
