//! A recording fake of the node for engine tests: a probe that returns the current in-memory
//! snapshot and an actuator that applies fix actions to it (or fails as scripted), recording every
//! call; and a scripted cluster that records what the engine told it and answers slot requests
//! as scripted. Test-only.

use crate::model::finding::FixAction;
use crate::model::snapshot::NodeSnapshot;
use crate::runtime::{ActError, ActReport, Actuator, NodeReader, ProbeFatal};
use std::cell::RefCell;
use std::rc::Rc;

/// Shared state of the fake node.
#[derive(Debug)]
pub struct FakeState {
    pub snapshot: NodeSnapshot,
    pub snapshots_taken: usize,
    pub applied: Vec<(FixAction, Option<u32>)>,
    /// Error the next apply returns instead of acting.
    pub fail_next: Option<ActError>,
    /// Applied actions do not change the snapshot (the fault "comes back" at once).
    pub ineffective: bool,
    /// Called on each snapshot, to change the node between reads (a racing writer).
    pub on_snapshot: Option<fn(&mut NodeSnapshot, usize)>,
    /// The fake's clock: moves only when a window is observed.
    pub clock: std::time::SystemTime,
    /// Full re-reads requested by the engine.
    pub resyncs: usize,
}

#[derive(Debug, Clone)]
pub struct FakeNode(pub Rc<RefCell<FakeState>>);

impl FakeNode {
    pub fn new(snapshot: NodeSnapshot) -> FakeNode {
        FakeNode(Rc::new(RefCell::new(FakeState {
            snapshot,
            clock: std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_800_000_000),
            snapshots_taken: 0,
            applied: Vec::new(),
            fail_next: None,
            ineffective: false,
            on_snapshot: None,
            resyncs: 0,
        })))
    }
}

impl NodeReader for FakeNode {
    fn snapshot(&mut self) -> Result<NodeSnapshot, ProbeFatal> {
        let mut state = self.0.borrow_mut();
        state.snapshots_taken += 1;
        let n = state.snapshots_taken;
        if let Some(hook) = state.on_snapshot {
            hook(&mut state.snapshot, n);
        }
        Ok(state.snapshot.clone())
    }

    fn resync(&mut self) {
        self.0.borrow_mut().resyncs += 1;
    }

    fn observe(&mut self, window: std::time::Duration) {
        let mut state = self.0.borrow_mut();
        state.clock += window;
    }
}

impl Actuator for FakeNode {
    fn apply(
        &mut self,
        action: &FixAction,
        nft_generation: Option<u32>,
    ) -> Result<ActReport, ActError> {
        let mut state = self.0.borrow_mut();
        state.applied.push((action.clone(), nft_generation));
        if let Some(error) = state.fail_next.take() {
            return Err(error);
        }
        if state.ineffective {
            return Ok(ActReport {
                detail: "did it".into(),
                was_promisc_before: None,
            });
        }
        let table = match action {
            FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => table,
            FixAction::SetPromisc { .. } => {
                return Ok(ActReport {
                    detail: "set promisc".into(),
                    was_promisc_before: Some(false),
                })
            }
            FixAction::ClearPromisc { .. } => {
                return Ok(ActReport {
                    detail: "cleared promisc".into(),
                    was_promisc_before: Some(true),
                })
            }
            FixAction::CordonNode { .. }
            | FixAction::UncordonNode { .. }
            | FixAction::SetServiceShape { .. } => {
                return Err(ActError::Failed(
                    "a cluster action reached the kernel actuator".into(),
                ))
            }
        };
        let ruleset = match table.backend {
            crate::model::ruleset::Backend::Nft => state.snapshot.nftables.as_mut(),
            crate::model::ruleset::Backend::Legacy => state.snapshot.legacy.as_mut(),
        }
        .map(std::sync::Arc::make_mut)
        .expect("ruleset present");
        if let Some(g) = ruleset.generation.as_mut() {
            *g += 1;
        }
        let tables = ruleset
            .tables
            .iter_mut()
            .filter(|t| t.id.name == table.table);
        let detail = match action {
            FixAction::FlushChain {
                chain,
                delete_chain,
                ..
            } => {
                for t in tables {
                    if *delete_chain {
                        t.chains.retain(|c| c.name != *chain);
                    } else if let Some(c) = t.chains.iter_mut().find(|c| c.name == *chain) {
                        c.rules.clear();
                    }
                }
                format!("flushed {chain}")
            }
            FixAction::RemoveRules {
                rules,
                delete_chains,
                ..
            } => {
                for t in tables {
                    for r in rules {
                        if let Some(c) = t.chains.iter_mut().find(|c| c.name == r.chain) {
                            c.rules.retain(|x| x.handle != r.handle);
                        }
                    }
                    t.chains.retain(|c| !delete_chains.contains(&c.name));
                }
                format!("removed {} rules", rules.len())
            }
            FixAction::SetPromisc { .. }
            | FixAction::ClearPromisc { .. }
            | FixAction::CordonNode { .. }
            | FixAction::UncordonNode { .. }
            | FixAction::SetServiceShape { .. } => {
                unreachable!("handled above")
            }
        };
        Ok(ActReport {
            detail,
            was_promisc_before: None,
        })
    }
}

/// What the scripted cluster was told and will answer.
#[derive(Debug, Default)]
pub struct ClusterScript {
    /// Answers to slot requests in order (a fault that cuts off the API is answered
    /// `Unlimited` without using one, as the contract says); `Unlimited` once they run out.
    pub slots: std::collections::VecDeque<crate::runtime::cluster::SlotDecision>,
    /// Every slot request: the fix and whether it cut off the API.
    pub acquired: Vec<(crate::model::finding::FixId, bool)>,
    pub released: usize,
    pub mode: crate::runtime::cluster::NodeMode,
    pub pods: std::collections::HashMap<std::net::IpAddr, String>,
    /// Whether `pods` is the node's complete set.
    pub pods_known: bool,
    pub published: Vec<crate::runtime::cluster::ClusterReport>,
    pub connection: crate::runtime::cluster::Connection,
    /// The API server's Service as the keeper shows it (`None`: not followed or no API).
    pub api_service: Option<crate::model::api_service::ApiServiceView>,
    /// Whether the engine asked to follow the API server's Service on its last pass.
    pub api_service_followed: bool,
    /// Every action carried out on the cluster; a Service action sets the view's Service to the
    /// wanted shape, as the API would.
    pub acted: Vec<crate::model::finding::FixAction>,
}

/// A scripted fake of the cluster for engine tests: records every call, answers as scripted.
#[derive(Debug, Clone, Default)]
pub struct ScriptedCluster(pub std::sync::Arc<std::sync::Mutex<ClusterScript>>);

impl ScriptedCluster {
    pub fn script(&self) -> std::sync::MutexGuard<'_, ClusterScript> {
        self.0.lock().expect("cluster script lock")
    }

    /// Every event published so far.
    pub fn events(&self) -> Vec<crate::runtime::cluster::NodeEvent> {
        self.script()
            .published
            .iter()
            .flat_map(|r| r.events.clone())
            .collect()
    }
}

impl crate::runtime::cluster::Cluster for ScriptedCluster {
    fn publish(&mut self, report: crate::runtime::cluster::ClusterReport) {
        self.script().published.push(report);
    }

    fn node_mode(&self) -> crate::runtime::cluster::NodeMode {
        self.script().mode
    }

    fn acquire_slot(
        &mut self,
        fix: crate::model::finding::FixId,
        cuts_off_api: bool,
        _wait: std::time::Duration,
    ) -> crate::runtime::cluster::SlotDecision {
        use crate::runtime::cluster::SlotDecision;
        let mut script = self.script();
        script.acquired.push((fix, cuts_off_api));
        if cuts_off_api {
            return SlotDecision::Unlimited;
        }
        script.slots.pop_front().unwrap_or(SlotDecision::Unlimited)
    }

    fn release_slot(&mut self) {
        self.script().released += 1;
    }

    fn pod_owner(&self, ip: std::net::IpAddr) -> Option<String> {
        self.script().pods.get(&ip).cloned()
    }

    fn pods_known(&self) -> bool {
        self.script().pods_known
    }

    fn follow_api_service(&mut self, wanted: bool) {
        self.script().api_service_followed = wanted;
    }

    fn api_service(&self) -> Option<std::sync::Arc<crate::model::api_service::ApiServiceView>> {
        self.script().api_service.clone().map(std::sync::Arc::new)
    }

    fn act_on_cluster(
        &mut self,
        action: &crate::model::finding::FixAction,
        _wait: std::time::Duration,
    ) -> Result<crate::runtime::cluster::ClusterActed, crate::runtime::cluster::ClusterActError>
    {
        use crate::model::finding::FixAction;
        let mut script = self.script();
        script.acted.push(action.clone());
        let FixAction::SetServiceShape { wanted, .. } = action else {
            return Err(crate::runtime::cluster::ClusterActError::Failed(
                "the scripted cluster acts on Services only".into(),
            ));
        };
        let shape = script
            .api_service
            .as_mut()
            .and_then(|v| v.service.as_mut())
            .and_then(|s| s.as_mut())
            .expect("a Service to act on");
        shape.service_type = wanted.service_type.clone();
        shape.annotations.extend(wanted.annotations.clone());
        Ok(crate::runtime::cluster::ClusterActed {
            wrote: true,
            reached: true,
            after: format!("the Service is {}", shape.service_type),
        })
    }

    fn connection(&self) -> crate::runtime::cluster::Connection {
        self.script().connection.clone()
    }
}
