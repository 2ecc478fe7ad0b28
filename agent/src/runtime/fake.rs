//! A recording fake of the node for engine tests: a probe that returns the current in-memory
//! snapshot and an actuator that applies fix actions to it (or fails as scripted), recording every
//! call. Test-only.

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
            FixAction::SetPromisc { .. } | FixAction::ClearPromisc { .. } => {
                unreachable!("handled above")
            }
        };
        Ok(ActReport {
            detail,
            was_promisc_before: None,
        })
    }
}
