//! Fixes that act on the Node through the API: cordon (`spec.unschedulable: true` with the
//! annotation `netmend.io/cordoned-by: <check>`) and uncordon (only a cordon netmend made).
//!
//! Each reads the Node first and acts only from the state the action expects: a node someone
//! else cordoned (unschedulable without the annotation) is never touched, nor one someone
//! uncordoned after netmend cordoned it (the annotation without `unschedulable`; uncordon then
//! only removes the annotation). The patch carries the resourceVersion just read, so a change in
//! between is refused by the API (409) instead of overwritten. The Node is read once more
//! afterwards: that is the proof.

use crate::cluster::client::ApiCalls;
use crate::model::finding::FixAction;
use crate::remediate::fixes::cordon_node::CORDONED_BY_ANNOTATION;
use crate::runtime::cluster::{ClusterActError, ClusterActed, Cordon};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::json;

/// The cordon state of `node` as its spec and annotations say.
pub fn cordon_of(node: &Node) -> Cordon {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ours = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CORDONED_BY_ANNOTATION))
        .cloned();
    match (unschedulable, ours) {
        (false, None) => Cordon::Schedulable,
        (true, None) => Cordon::Others,
        (true, Some(by)) => Cordon::Ours { by },
        (false, Some(by)) => Cordon::LiftedByOthers { by },
    }
}

/// The merge patch that moves the node from the state read (at `resource_version`) to what
/// `action` wants; `None` when it is there already; an error when the node must not be touched.
pub fn patch_for(
    action: &FixAction,
    now: &Cordon,
    resource_version: &str,
) -> Result<Option<serde_json::Value>, ClusterActError> {
    if !now.admits(action).map_err(ClusterActError::Moved)? {
        return Ok(None);
    }
    Ok(Some(match (action, now) {
        (FixAction::CordonNode { by }, _) => json!({
            "metadata": {"resourceVersion": resource_version,
                         "annotations": {CORDONED_BY_ANNOTATION: by}},
            "spec": {"unschedulable": true}
        }),
        // Someone lifted netmend's cordon already: only netmend's mark goes.
        (FixAction::UncordonNode { .. }, Cordon::LiftedByOthers { .. }) => json!({
            "metadata": {"resourceVersion": resource_version,
                         "annotations": {CORDONED_BY_ANNOTATION: null}}
        }),
        _ => json!({
            "metadata": {"resourceVersion": resource_version,
                         "annotations": {CORDONED_BY_ANNOTATION: null}},
            "spec": {"unschedulable": false}
        }),
    }))
}

/// Carries out `action` on `node`: read, patch (when needed) with the resourceVersion read,
/// read again. Returns whether it wrote and the cordon state read afterwards.
pub async fn act_on_node(
    calls: &ApiCalls,
    node: &str,
    action: &FixAction,
) -> Result<ClusterActed, ClusterActError> {
    let nodes: Api<Node> = Api::all(calls.requests.clone());
    let what = format!("nodes/{node}");
    let (wrote, after) = calls
        .read_patch_read(
            &nodes,
            node,
            &what,
            |e| ClusterActError::Unavailable(format!("reading {what}: {e}")),
            |read| {
                let resource_version = read.metadata.resource_version.clone().unwrap_or_default();
                patch_for(action, &cordon_of(read), &resource_version)
            },
        )
        .await?;
    let after = cordon_of(&after);
    Ok(ClusterActed {
        wrote,
        reached: after.reached(action),
        after: format!("the node is {after}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::FakeApi;
    use std::time::Duration;

    fn cordon(by: &str) -> FixAction {
        FixAction::CordonNode { by: by.into() }
    }

    fn uncordon(by: &str) -> FixAction {
        FixAction::UncordonNode { by: by.into() }
    }

    #[test]
    fn the_state_is_read_from_the_spec_and_netmends_annotation() {
        let node = |json: serde_json::Value| -> Node { serde_json::from_value(json).unwrap() };
        assert_eq!(
            cordon_of(&node(json!({"metadata": {"name": "n"}}))),
            Cordon::Schedulable
        );
        assert_eq!(
            cordon_of(&node(
                json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}})
            )),
            Cordon::Others
        );
        assert_eq!(
            cordon_of(&node(json!({"metadata": {"name": "n",
                "annotations": {"netmend.io/cordoned-by": "x"}}, "spec": {"unschedulable": true}}))),
            Cordon::Ours { by: "x".into() }
        );
        assert_eq!(
            cordon_of(&node(json!({"metadata": {"name": "n",
                "annotations": {"netmend.io/cordoned-by": "x"}}}))),
            Cordon::LiftedByOthers { by: "x".into() }
        );
    }

    #[test]
    fn a_cordon_that_is_not_netmends_is_never_touched() {
        for action in [cordon("x"), uncordon("x")] {
            assert!(matches!(
                patch_for(&action, &Cordon::Others, "7"),
                Err(ClusterActError::Moved(_))
            ));
        }
        // netmend's cordon for another check is not lifted for this one
        assert!(matches!(
            patch_for(&uncordon("x"), &Cordon::Ours { by: "y".into() }, "7"),
            Err(ClusterActError::Moved(_))
        ));
        // a human lifted netmend's cordon: not cordoned again
        assert!(matches!(
            patch_for(
                &cordon("x"),
                &Cordon::LiftedByOthers { by: "x".into() },
                "7"
            ),
            Err(ClusterActError::Moved(_))
        ));
        // done already: nothing to write
        assert_eq!(
            patch_for(&cordon("x"), &Cordon::Ours { by: "x".into() }, "7").unwrap(),
            None
        );
        assert_eq!(
            patch_for(&uncordon("x"), &Cordon::Schedulable, "7").unwrap(),
            None
        );
        assert_eq!(
            patch_for(&cordon("x"), &Cordon::Schedulable, "7").unwrap(),
            Some(json!({"metadata": {"resourceVersion": "7",
                "annotations": {"netmend.io/cordoned-by": "x"}},
                "spec": {"unschedulable": true}}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cordon_and_uncordon_through_the_api_with_the_resource_version_read() {
        let fake = FakeApi::default();
        fake.add_node("node-a", json!({}), json!([]));
        let (calls, _) = fake.calls(Duration::from_secs(5));
        let acted = act_on_node(&calls, "node-a", &cordon("x")).await.unwrap();
        assert_eq!(
            acted,
            ClusterActed {
                wrote: true,
                reached: true,
                after: "the node is cordoned by netmend for x".into()
            }
        );
        let patches = fake.requests("PATCH", "/api/v1/nodes/node-a");
        assert_eq!(patches.len(), 1);
        assert_eq!(
            patches[0].content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        let node = fake.node("node-a");
        assert_eq!(node["spec"]["unschedulable"], true);
        assert_eq!(
            node["metadata"]["annotations"]["netmend.io/cordoned-by"],
            "x"
        );
        // cordoning again writes nothing
        assert!(
            !act_on_node(&calls, "node-a", &cordon("x"))
                .await
                .unwrap()
                .wrote
        );
        assert_eq!(fake.requests("PATCH", "/api/v1/nodes/node-a").len(), 1);
        let acted = act_on_node(&calls, "node-a", &uncordon("x")).await.unwrap();
        assert!(acted.reached, "{acted:?}");
        assert_eq!(acted.after, "the node is schedulable");
        let node = fake.node("node-a");
        assert_eq!(node["spec"]["unschedulable"], false);
        assert!(node["metadata"]["annotations"]
            .get("netmend.io/cordoned-by")
            .is_none());
        // someone else cordons it: left alone by both actions
        fake.state.lock().unwrap().nodes.get_mut("node-a").unwrap()["spec"]["unschedulable"] =
            json!(true);
        for action in [cordon("x"), uncordon("x")] {
            assert!(matches!(
                act_on_node(&calls, "node-a", &action).await,
                Err(ClusterActError::Moved(_))
            ));
        }
        assert_eq!(fake.requests("PATCH", "/api/v1/nodes/node-a").len(), 2);
        assert_eq!(fake.node("node-a")["spec"]["unschedulable"], true);
    }
}
