//! Fix `cordon-node`: mark this node unschedulable through the Kubernetes API, annotated
//! `netmend.io/cordoned-by: <check>`, so that no new pods land on a node whose rules cannot be
//! trusted (proposed by `kube-proxy-endpoint-drift`). Off by default. It acts on the API, not the
//! kernel: the cluster carries it out (a `FixAction::CordonNode`), after reading the Node again,
//! and proves it by reading the Node once more.
//!
//! A node someone else cordoned is left alone (no annotation: not netmend's), and so is a node
//! someone uncordoned after netmend cordoned it. netmend lifts its own cordon once the check has
//! had no finding for its `staleAfter`, and never anyone else's.

use crate::model::finding::{FixAction, FixId};
use crate::remediate::fixes::Fix;

/// The annotation on the Node that says netmend cordoned it, and for which check.
pub const CORDONED_BY_ANNOTATION: &str = "netmend.io/cordoned-by";

pub struct CordonNode;

impl FixId {
    pub const CORDON_NODE: FixId = FixId::new("cordon-node");
}

impl Fix for CordonNode {
    fn id(&self) -> FixId {
        FixId::CORDON_NODE
    }

    fn description(&self) -> &'static str {
        "cordon the node through the Kubernetes API (annotated netmend.io/cordoned-by), and uncordon it when the fault has been gone for staleAfter"
    }

    fn owns(&self, action: &FixAction) -> bool {
        matches!(
            action,
            FixAction::CordonNode { .. } | FixAction::UncordonNode { .. }
        )
    }
}
