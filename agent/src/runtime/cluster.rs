//! The engine's one window onto the cluster: what it tells the Kubernetes API about this node
//! (per-check state for NodeConditions, findings and fix outcomes for Events), what it asks of it
//! (the node's opt-out label, a cluster-wide fix slot, the pod behind an IP). The engine is
//! synchronous and never waits on the API for longer than a call's bounded timeout; the
//! implementation behind this trait (`crate::cluster`) runs on its own tokio tasks.
//!
//! [`NodeLocal`] is the node-local answer when there is no API: no opt-out, no cluster limit, no
//! pod names.

use crate::model::api_service::{
    differences, ApiServiceView, Leadership, WantedShape, API_SERVICE_NAME, API_SERVICE_NAMESPACE,
    KEEPER_LEASE,
};
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::model::service_intent::ClusterIntent;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The label on the Node by which a node opts out: `dry-run` or `off`.
pub const NODE_MODE_LABEL: &str = "netmend.io/mode";

/// The node's own opt-out, from the label `netmend.io/mode` on the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeMode {
    /// No label (or an unknown value, which is logged): the configuration decides.
    #[default]
    Configured,
    /// `dry-run`: this node never applies fixes.
    DryRun,
    /// `off`: no checks run on this node.
    Off,
}

/// One check's state on this node after a pass, for its NodeCondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    pub check: CheckId,
    /// The check has at least one finding now.
    pub failing: bool,
    /// The findings' subjects with their fix state, already short; the condition's message is
    /// cut to 1024 characters by the reporter.
    pub summary: String,
}

/// Something that happened on this node, for an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    FindingRaised {
        check: CheckId,
        subject: String,
        message: String,
    },
    FindingCleared {
        check: CheckId,
        subject: String,
    },
    /// A fix outcome worth an Event: applied, verified, ineffective, failed, reverted, or the
    /// breaker opening.
    Fix {
        check: CheckId,
        subject: String,
        fix: FixId,
        outcome: Outcome,
        detail: String,
    },
}

/// After a pass: every enabled check's state (a check missing here is disabled or gone and its
/// condition is removed) and the events of the pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    pub checks: Vec<CheckState>,
    pub events: Vec<NodeEvent>,
}

/// The answer to "may this node apply a fix now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// No cluster limit applies (node-local mode, `fixSlots: 0`, or the exception for a fault
    /// that cuts this node off from the API).
    Unlimited,
    /// This node holds slot `index` until [`Cluster::release_slot`].
    Held { index: u32 },
    /// No slot: the fix is not applied (`skipped_no_slot`), with the reason.
    NoSlot { reason: String },
}

/// The API connection as `/status` and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The API answered the last request (or watch) in time.
    pub connected: bool,
    /// Why not, or why node-local mode ("no in-cluster service account, no --kubeconfig, no
    /// KUBECONFIG").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The fix slot this node holds now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_held: Option<u32>,
    /// Failed requests since start, by verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`) and HTTP status code ("timeout" and "connect" when there was no answer,
    /// "invalid" when the answer could not be read): `(verb, code) -> count`.
    #[serde(skip)]
    pub request_errors: std::collections::BTreeMap<(String, String), u64>,
}

/// This node's cordon, as its spec (`unschedulable`) and netmend's annotation
/// `netmend.io/cordoned-by` say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cordon {
    /// Schedulable, no annotation of netmend's.
    #[default]
    Schedulable,
    /// Unschedulable without netmend's annotation: someone else's cordon, never touched.
    Others,
    /// Cordoned by netmend for the check `by`.
    Ours { by: String },
    /// netmend's annotation (for `by`) on a schedulable node: someone lifted netmend's cordon.
    LiftedByOthers { by: String },
}

impl std::fmt::Display for Cordon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cordon::Schedulable => write!(f, "schedulable"),
            Cordon::Others => write!(f, "cordoned by someone else"),
            Cordon::Ours { by } => write!(f, "cordoned by netmend for {by}"),
            Cordon::LiftedByOthers { by } => write!(
                f,
                "schedulable again: someone uncordoned it after netmend cordoned it for {by}"
            ),
        }
    }
}

impl Cordon {
    /// Whether a cordon or uncordon `action` has something to do from this state (`Ok(true)`),
    /// is done already (`Ok(false)`), or must leave the node alone (`Err`, why).
    pub fn admits(&self, action: &FixAction) -> Result<bool, String> {
        match (action, self) {
            (FixAction::CordonNode { .. }, Cordon::Schedulable) => Ok(true),
            (FixAction::CordonNode { by }, Cordon::Ours { by: had }) if had == by => Ok(false),
            (FixAction::CordonNode { .. }, Cordon::Ours { by: had }) => {
                Err(format!("the node is already cordoned by netmend for {had}"))
            }
            (FixAction::CordonNode { .. }, Cordon::LiftedByOthers { by: had }) => Err(format!(
                "someone uncordoned the node netmend had cordoned for {had}: not cordoned again while the annotation netmend.io/cordoned-by stays"
            )),
            (FixAction::UncordonNode { by }, Cordon::Ours { by: had })
            | (FixAction::UncordonNode { by }, Cordon::LiftedByOthers { by: had })
                if had == by =>
            {
                Ok(true)
            }
            (FixAction::UncordonNode { .. }, Cordon::Schedulable) => Ok(false),
            (FixAction::UncordonNode { .. }, Cordon::Ours { by: had })
            | (FixAction::UncordonNode { .. }, Cordon::LiftedByOthers { by: had }) => Err(format!(
                "the node's cordon is netmend's for {had}, not for this check: left as it is"
            )),
            (_, Cordon::Others) => {
                Err("the node is cordoned by someone else (no netmend.io/cordoned-by annotation): left to them".into())
            }
            (other, _) => Err(format!("{other:?} does not act on the Node")),
        }
    }

    /// Whether this state is what `action` wants.
    pub fn reached(&self, action: &FixAction) -> bool {
        match action {
            FixAction::CordonNode { by } => *self == Cordon::Ours { by: by.clone() },
            FixAction::UncordonNode { .. } => *self == Cordon::Schedulable,
            _ => false,
        }
    }
}

impl Cordon {
    /// What a cordon or uncordon `action` has to do from this state.
    pub fn precheck(&self, action: &FixAction) -> Precheck {
        match self.admits(action) {
            Ok(true) => Precheck::Act,
            Ok(false) => Precheck::Done {
                state: format!("the node is {self}"),
            },
            Err(why) => Precheck::Refuse { why },
        }
    }
}

/// What setting the API server's Service to `wanted` has to do, from the keeper's view: only the
/// agent holding the keeper's Lease acts, and only on a Service it has read.
pub fn service_precheck(view: &ApiServiceView, wanted: &WantedShape) -> Precheck {
    match (&view.leadership, &view.service) {
        (Leadership::Leading, Some(Some(shape))) => {
            if differences(shape, wanted).is_empty() {
                Precheck::Done {
                    state: format!(
                        "{API_SERVICE_NAMESPACE}/{API_SERVICE_NAME} is {} as wanted",
                        shape.service_type
                    ),
                }
            } else {
                Precheck::Act
            }
        }
        (Leadership::Leading, Some(None)) => Precheck::Refuse {
            why: format!("the Service {API_SERVICE_NAMESPACE}/{API_SERVICE_NAME} does not exist"),
        },
        (Leadership::Leading, None) => Precheck::Refuse {
            why: format!(
                "the Service {API_SERVICE_NAMESPACE}/{API_SERVICE_NAME} has not been read yet"
            ),
        },
        (Leadership::Following { holder }, _) => Precheck::Refuse {
            why: format!("the agent on {holder} keeps the Service (Lease {KEEPER_LEASE})"),
        },
        (Leadership::Unknown { reason }, _) => Precheck::Refuse {
            why: format!("this agent does not hold the Lease {KEEPER_LEASE}: {reason}"),
        },
    }
}

/// What acting on the cluster did: whether it wrote, whether the object read back afterwards is
/// what the action wants (the proof), and that state in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterActed {
    pub wrote: bool,
    pub reached: bool,
    pub after: String,
}

/// Whether an action on the cluster has anything to do, judged from what the watches last saw
/// (the action itself reads the object again before it writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck {
    /// Something to do.
    Act,
    /// Done already: the object is as wanted (`state` says how).
    Done { state: String },
    /// The object must be left alone (someone else's cordon, another agent leads), with why.
    Refuse { why: String },
}

/// Why an action on the cluster was not (or not provably) carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterActError {
    /// The object is not in a state the action may act from (someone else's cordon, a change
    /// since it was read, another agent leads): nothing done.
    #[error("{0}")]
    Moved(String),
    /// No API, or it did not answer before anything was written: nothing done.
    #[error("{0}")]
    Unavailable(String),
    /// The API refused the write: nothing changed.
    #[error("{0}")]
    Failed(String),
    /// The write was sent but whether it applied is not known.
    #[error("{0}")]
    Unknown(String),
}

/// The cluster as the engine sees it.
pub trait Cluster: Send {
    /// Hands over the state after a pass; never blocks (the reporter folds, rate-limits and
    /// patches in the background).
    fn publish(&mut self, report: ClusterReport);

    /// The node's opt-out label as last seen.
    fn node_mode(&self) -> NodeMode;

    /// Asks for a fix slot before applying `fix`, waiting at most `wait`. `cuts_off_api`: the
    /// fault itself cuts this node off from the API (the contract's one exception).
    fn acquire_slot(&mut self, fix: FixId, cuts_off_api: bool, wait: Duration) -> SlotDecision;

    /// The fix and its verification are over: frees the slot this node holds, if any.
    fn release_slot(&mut self);

    /// The pod (`namespace/name`) on this node that has `ip`, when known.
    fn pod_owner(&self, ip: IpAddr) -> Option<String>;

    /// Whether [`Cluster::pod_owner`] answers from a complete, current view of this node's pods,
    /// so that `None` means "no pod on this node has that IP": the pods were listed and the API
    /// and the pod watch are healthy. False without an API (the default).
    fn pods_known(&self) -> bool {
        false
    }

    /// The API connection now.
    fn connection(&self) -> Connection;

    /// Keeps the cluster's intent for kube-proxy (Services and EndpointSlices) current while
    /// `wanted` (an enabled check reads it): asked every pass, the watch starts and stops with it.
    fn follow_service_intent(&mut self, _wanted: bool) {}

    /// The cluster's intent for kube-proxy while it is followed; `None` without an API.
    fn service_intent(&self) -> Option<Arc<ClusterIntent>> {
        None
    }

    /// This node's cordon as the node watch last saw it; `None` when not known (node-local
    /// mode, or not read yet).
    fn cordon(&self) -> Option<Cordon> {
        None
    }

    /// Whether an action on the cluster (`FixAction::acts_on_cluster`) has anything to do, from
    /// what the watches last saw; `None` when not known (the action reads the object anyway).
    fn precheck(&self, action: &FixAction) -> Option<Precheck> {
        match action {
            FixAction::CordonNode { .. } | FixAction::UncordonNode { .. } => {
                self.cordon().map(|c| c.precheck(action))
            }
            FixAction::SetServiceShape { wanted, .. } => self
                .api_service()
                .map(|view| service_precheck(&view, wanted)),
            _ => None,
        }
    }

    /// Carries out an action on the cluster (`FixAction::acts_on_cluster`), waiting at most
    /// `wait`: reads the object, writes only from a state the action may act from, under the
    /// resourceVersion read, and reads it back.
    fn act_on_cluster(
        &mut self,
        _action: &FixAction,
        _wait: Duration,
    ) -> Result<ClusterActed, ClusterActError> {
        Err(ClusterActError::Unavailable(
            "node-local mode: no Kubernetes API to act on".into(),
        ))
    }

    /// Keeps the API server's Service (`default/kubernetes`) in view while `wanted` (an enabled
    /// check keeps it): asked every pass; the keeper's Lease is contended for and, while this
    /// agent holds it, the Service is watched. Stopped (and the Lease given back) when not wanted.
    fn follow_api_service(&mut self, _wanted: bool) {}

    /// The API server's Service and who keeps it, while followed; `None` without an API.
    fn api_service(&self) -> Option<Arc<ApiServiceView>> {
        None
    }

    /// The agent is stopping: frees the slot held (waiting at most `within`) and stops talking
    /// to the API. Called once, from the engine's thread, while the async runtime still runs.
    fn shutdown(&mut self, _within: Duration) {}
}

/// No API: the node decides alone.
#[derive(Debug, Default)]
pub struct NodeLocal;

impl Cluster for NodeLocal {
    fn publish(&mut self, _report: ClusterReport) {}

    fn node_mode(&self) -> NodeMode {
        NodeMode::Configured
    }

    fn acquire_slot(&mut self, _fix: FixId, _cuts_off_api: bool, _wait: Duration) -> SlotDecision {
        SlotDecision::Unlimited
    }

    fn release_slot(&mut self) {}

    fn pod_owner(&self, _ip: IpAddr) -> Option<String> {
        None
    }

    fn connection(&self) -> Connection {
        Connection {
            connected: false,
            reason: Some("node-local mode: no Kubernetes API configured".into()),
            ..Connection::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_never_limits_and_knows_no_pods() {
        let mut local = NodeLocal;
        assert_eq!(local.node_mode(), NodeMode::Configured);
        assert_eq!(
            local.acquire_slot(FixId::new("x"), false, Duration::from_secs(1)),
            SlotDecision::Unlimited
        );
        assert_eq!(local.pod_owner("10.42.0.5".parse().unwrap()), None);
        assert!(!local.pods_known());
    }
}
