//! Lifting netmend's own cordon: a node netmend cordoned (the Node carries
//! `netmend.io/cordoned-by: <check>`) is uncordoned once that check has judged the node and
//! reported nothing for the check's `persist_for` (its `staleAfter`) without a break. Reported:
//! a difference younger than its persistence (kube-proxy one sync behind after a change) does not
//! hold the cordon, or a busy cluster would never get its node back. A check that cannot
//! judge the node (no API, not listed yet) does not count as quiet. A cordon without netmend's
//! annotation is someone else's and never lifted; one netmend made for a check that no longer
//! exists is lifted at once.
//!
//! The uncordon is the revert of `cordon-node`: journaled as `reverted` (an Event on the Node), run
//! without a fix slot (it only gives back what netmend took) and whether or not the fix is still
//! enabled, so a cordon never outlives its reason.

use crate::config::Config;
use crate::detect;
use crate::journal::JournalEntry;
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::runtime::cluster::{Cluster, ClusterActError, Cordon};
use std::time::{Duration, SystemTime};

/// The subject of the uncordon in the journal and its Event.
pub const SUBJECT: &str = "node";

/// Since when the check that netmend's cordon is for has been quiet.
#[derive(Debug, Default)]
pub struct CordonRelease {
    quiet_since: Option<SystemTime>,
}

impl CordonRelease {
    /// One pass: `quiet(check)` says whether the check judged this node and reported nothing.
    /// Returns the journal line when an uncordon was tried.
    pub fn step(
        &mut self,
        cluster: &mut dyn Cluster,
        config: &Config,
        quiet: &dyn Fn(CheckId) -> bool,
        now: SystemTime,
    ) -> Option<JournalEntry> {
        let by = match cluster.cordon() {
            Some(Cordon::Ours { by }) | Some(Cordon::LiftedByOthers { by }) => by,
            _ => {
                self.quiet_since = None;
                return None;
            }
        };
        let check = detect::check_named(&by);
        let (id, wait_for) = match check {
            Some(c) => (Some(c.id()), c.persist_for(config)),
            None => (None, Duration::ZERO),
        };
        if id.is_some_and(|id| !quiet(id)) {
            self.quiet_since = None;
            return None;
        }
        let since = *self.quiet_since.get_or_insert(now);
        if now.duration_since(since).unwrap_or_default() < wait_for {
            return None;
        }
        // Tried once per quiet period: a failure waits for another one.
        self.quiet_since = Some(now);
        let action = FixAction::UncordonNode { by: by.clone() };
        let wait = config.kubernetes.request_timeout * 3 + Duration::from_millis(500);
        let quiet_text = match check {
            Some(_) => format!(
                "{by} has reported nothing for {}",
                humantime::format_duration(wait_for)
            ),
            None => format!("{by} is no check netmend has any more"),
        };
        let (outcome, detail) = match cluster.act_on_cluster(&action, wait) {
            Ok(acted) if acted.reached => (
                Outcome::Reverted,
                format!("uncordoned the node netmend cordoned: {quiet_text}"),
            ),
            Ok(acted) => (
                Outcome::Failed,
                format!("uncordon written but read back: {}", acted.after),
            ),
            Err(ClusterActError::Moved(why)) => {
                (Outcome::Blocked, format!("not uncordoned: {why}"))
            }
            Err(e) => (
                Outcome::Failed,
                format!("uncordon failed: {e}; tried again later"),
            ),
        };
        let key = format!("{}|{SUBJECT}", id.map(|i| i.as_str()).unwrap_or(&by));
        let fix = crate::remediate::fixes::fix_owning(&action)
            .map(|f| f.id())
            .unwrap_or_else(|| FixId::new("unregistered"));
        Some(JournalEntry::new(
            now, id, fix, SUBJECT, &key, outcome, &detail,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cluster::{
        ClusterActed, ClusterReport, Connection, NodeMode, SlotDecision,
    };
    use std::net::IpAddr;

    /// A cluster whose Node is only its cordon; acting moves it as the API would.
    struct NodeOnly {
        cordon: Cordon,
        acted: Vec<FixAction>,
    }

    impl Cluster for NodeOnly {
        fn publish(&mut self, _report: ClusterReport) {}
        fn node_mode(&self) -> NodeMode {
            NodeMode::Configured
        }
        fn acquire_slot(&mut self, _fix: FixId, _cuts: bool, _wait: Duration) -> SlotDecision {
            SlotDecision::Unlimited
        }
        fn release_slot(&mut self) {}
        fn pod_owner(&self, _ip: IpAddr) -> Option<String> {
            None
        }
        fn connection(&self) -> Connection {
            Connection::default()
        }
        fn cordon(&self) -> Option<Cordon> {
            Some(self.cordon.clone())
        }
        fn act_on_cluster(
            &mut self,
            action: &FixAction,
            _wait: Duration,
        ) -> Result<ClusterActed, ClusterActError> {
            self.acted.push(action.clone());
            let wrote = self.cordon.admits(action).map_err(ClusterActError::Moved)?;
            if wrote {
                self.cordon = Cordon::Schedulable;
            }
            Ok(ClusterActed {
                wrote,
                reached: self.cordon.reached(action),
                after: self.cordon.to_string(),
            })
        }
    }

    fn config(stale_after: &str) -> Config {
        Config::from_yaml(&format!(
            "checks:\n  kube-proxy-endpoint-drift:\n    staleAfter: {stale_after}\n"
        ))
        .unwrap()
    }

    const DRIFT: &str = "kube-proxy-endpoint-drift";

    #[test]
    fn netmends_cordon_is_lifted_after_the_check_was_quiet_for_its_stale_after() {
        let config = config("30s");
        let mut cluster = NodeOnly {
            cordon: Cordon::Ours { by: DRIFT.into() },
            acted: Vec::new(),
        };
        let mut release = CordonRelease::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let quiet = |_: CheckId| true;
        let noisy = |_: CheckId| false;
        assert!(release.step(&mut cluster, &config, &quiet, t0).is_none());
        // a finding in between starts the quiet period again
        assert!(release
            .step(&mut cluster, &config, &noisy, t0 + Duration::from_secs(20))
            .is_none());
        assert!(release
            .step(&mut cluster, &config, &quiet, t0 + Duration::from_secs(25))
            .is_none());
        assert!(release
            .step(&mut cluster, &config, &quiet, t0 + Duration::from_secs(50))
            .is_none());
        assert!(cluster.acted.is_empty());
        let line = release
            .step(&mut cluster, &config, &quiet, t0 + Duration::from_secs(55))
            .expect("uncordoned");
        assert_eq!(line.outcome(), Some(Outcome::Reverted));
        assert_eq!(cluster.cordon, Cordon::Schedulable);
        assert_eq!(
            cluster.acted,
            vec![FixAction::UncordonNode { by: DRIFT.into() }]
        );
        // nothing more to do
        assert!(release
            .step(&mut cluster, &config, &quiet, t0 + Duration::from_secs(200))
            .is_none());
    }

    #[test]
    fn someone_elses_cordon_is_never_lifted() {
        let config = config("1s");
        let mut cluster = NodeOnly {
            cordon: Cordon::Others,
            acted: Vec::new(),
        };
        let mut release = CordonRelease::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for s in 0..100 {
            assert!(release
                .step(
                    &mut cluster,
                    &config,
                    &|_| true,
                    t0 + Duration::from_secs(s)
                )
                .is_none());
        }
        assert!(cluster.acted.is_empty());
        assert_eq!(cluster.cordon, Cordon::Others);
    }
}
