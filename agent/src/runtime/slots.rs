//! The engine's side of the cluster-wide fix slots: which fixes use the slot this node holds, when
//! to ask for one and when to give it back. The node holds at most one slot at a time, shared by
//! every fix it runs meanwhile; the slot is released when the last of them is over (right after an
//! action that needs no later proof, when a pending proof settles, or when the action was blocked
//! or failed), never kept across passes otherwise. After a refusal the API is not asked again for
//! [`NO_SLOT_RETRY`], so a slow or unreachable API costs a pass at most one bounded wait now and
//! then instead of one per pass.

use crate::model::finding::FixId;
use crate::runtime::cluster::{Cluster, SlotDecision};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// How long the engine waits for a slot before the fix is skipped for this pass.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);
/// How long after a refusal the engine keeps answering "no slot" without asking the API again.
pub const NO_SLOT_RETRY: Duration = Duration::from_secs(5);

/// May a fix run now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Yes: under the slot this node holds, or with no cluster limit.
    Go,
    /// No slot: the fix is not applied; the reason says why.
    NoSlot(String),
}

/// The slot this node holds and the fixes (by finding key) that use it.
#[derive(Debug, Default)]
pub struct SlotGate {
    held: Option<u32>,
    users: BTreeSet<String>,
    /// After a refusal: until when, and why.
    refused: Option<(SystemTime, String)>,
}

impl SlotGate {
    /// Asks whether the fix of finding `key` may run at `now`. `cuts_off_api`: the fault cuts the
    /// node off from the API (the contract's exception; always asked, never held back by an
    /// earlier refusal).
    pub fn admit(
        &mut self,
        cluster: &mut dyn Cluster,
        key: &str,
        fix: FixId,
        cuts_off_api: bool,
        now: SystemTime,
    ) -> Admission {
        if self.held.is_some() {
            // One slot per node: a fix that starts while another one's proof is pending runs
            // under the same slot.
            self.users.insert(key.to_string());
            return Admission::Go;
        }
        if !cuts_off_api {
            if let Some((until, why)) = &self.refused {
                // A clock that jumped back never stretches the wait beyond NO_SLOT_RETRY.
                let left = until.duration_since(now).unwrap_or_default();
                if !left.is_zero() && left <= NO_SLOT_RETRY {
                    return Admission::NoSlot(why.clone());
                }
            }
        }
        match cluster.acquire_slot(fix, cuts_off_api, SLOT_WAIT) {
            SlotDecision::Unlimited => Admission::Go,
            SlotDecision::Held { index } => {
                self.refused = None;
                self.held = Some(index);
                self.users.insert(key.to_string());
                Admission::Go
            }
            SlotDecision::NoSlot { reason } => {
                if !cuts_off_api {
                    self.refused = Some((now + NO_SLOT_RETRY, reason.clone()));
                }
                Admission::NoSlot(reason)
            }
        }
    }

    /// The fix of finding `key` is over: the slot goes back when no other fix uses it.
    pub fn finished(&mut self, cluster: &mut dyn Cluster, key: &str) {
        self.users.remove(key);
        self.release_if_unused(cluster);
    }

    /// Keeps the slot only for the fixes `still_running` says are not over (their proof is
    /// pending); the others are finished.
    pub fn retain(&mut self, cluster: &mut dyn Cluster, still_running: impl Fn(&str) -> bool) {
        self.users.retain(|key| still_running(key));
        self.release_if_unused(cluster);
    }

    /// Gives the slot back whatever uses it (shutdown).
    pub fn release_all(&mut self, cluster: &mut dyn Cluster) {
        self.users.clear();
        self.release_if_unused(cluster);
    }

    /// The slot this node holds now.
    pub fn held(&self) -> Option<u32> {
        self.held
    }

    fn release_if_unused(&mut self, cluster: &mut dyn Cluster) {
        if self.users.is_empty() && self.held.take().is_some() {
            cluster.release_slot();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::ScriptedCluster;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn one_slot_serves_every_fix_until_the_last_one_is_over() {
        let mut cluster = ScriptedCluster::default();
        cluster
            .script()
            .slots
            .push_back(SlotDecision::Held { index: 0 });
        let mut keeper = SlotGate::default();
        let fix = FixId::new("f");
        assert_eq!(
            keeper.admit(&mut cluster, "a", fix, false, t(0)),
            Admission::Go
        );
        assert_eq!(
            keeper.admit(&mut cluster, "b", fix, false, t(0)),
            Admission::Go
        );
        assert_eq!(
            cluster.script().acquired.len(),
            1,
            "the held slot is reused"
        );
        keeper.finished(&mut cluster, "a");
        assert_eq!(cluster.script().released, 0);
        assert_eq!(keeper.held(), Some(0));
        keeper.retain(&mut cluster, |_| false);
        assert_eq!(cluster.script().released, 1);
        assert_eq!(keeper.held(), None);
        keeper.release_all(&mut cluster);
        assert_eq!(
            cluster.script().released,
            1,
            "nothing held, nothing released"
        );
    }

    #[test]
    fn a_refusal_is_remembered_for_a_while_except_for_a_fault_that_cuts_off_the_api() {
        let mut cluster = ScriptedCluster::default();
        cluster.script().slots.push_back(SlotDecision::NoSlot {
            reason: "all 1 slots taken".into(),
        });
        let mut keeper = SlotGate::default();
        let fix = FixId::new("f");
        let no = Admission::NoSlot("all 1 slots taken".into());
        assert_eq!(keeper.admit(&mut cluster, "a", fix, false, t(0)), no);
        assert_eq!(keeper.admit(&mut cluster, "a", fix, false, t(1)), no);
        assert_eq!(
            cluster.script().acquired.len(),
            1,
            "not asked again within the retry time"
        );
        // The exception is asked at once (the fake answers it without a limit).
        assert_eq!(
            keeper.admit(&mut cluster, "b", fix, true, t(1)),
            Admission::Go
        );
        assert_eq!(cluster.script().acquired.len(), 2);
        // The wall clock jumped back an hour: asked again rather than waiting for it.
        cluster.script().slots.push_back(SlotDecision::NoSlot {
            reason: "still taken".into(),
        });
        let back = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 - 3600);
        assert_eq!(
            keeper.admit(&mut cluster, "a", fix, false, back),
            Admission::NoSlot("still taken".into())
        );
        assert_eq!(cluster.script().acquired.len(), 3);
        cluster
            .script()
            .slots
            .push_back(SlotDecision::Held { index: 2 });
        assert_eq!(
            keeper.admit(&mut cluster, "a", fix, false, t(6)),
            Admission::Go
        );
        assert_eq!(keeper.held(), Some(2));
        keeper.release_all(&mut cluster);
        assert_eq!(cluster.script().released, 1);
    }
}
