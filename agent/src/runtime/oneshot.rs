//! `netmend check`: observe for a window, evaluate every enabled check once, and with `--apply`
//! run the fixes through the same guards as the agent (so in dry-run it reports and changes
//! nothing).
//!
//! A one-shot run is node-local: it neither reports into the Kubernetes API nor takes a fix slot
//! (the agent on the same node does both); `runtime::cluster::NodeLocal` answers for the cluster.
//!
//! Persistence in one-shot mode: a finding that needs to persist (`staleAfter`) must be present at
//! both ends of the window; with `--window 0s` the single snapshot is both ends, so instantaneous
//! evaluation still reports it.

use crate::config::Config;
use crate::detect;
use crate::journal::Journal;
use crate::model::finding::Finding;
use crate::remediate::guard::GuardScope;
use crate::remediate::history::FixHistory;
use crate::remediate::tracker::{persistent, Tracker};
use crate::report::{FindingReport, Report};
use crate::runtime::cluster::{Cluster, NodeLocal, NodeMode};
use crate::runtime::decide::{decide_and_act, ClusterSide, Round};
use crate::runtime::pass::evaluate;
use crate::runtime::slots::SlotGate;
use crate::runtime::{Actuator, NodeReader, ProbeFatal};
use std::time::{Duration, SystemTime};

/// Options of one check run.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    pub window: Duration,
    pub apply: bool,
}

/// How long a finding must persist in a one-shot run before it is reported: the check's own
/// persistence, capped at the window (present at both ends of it counts).
fn one_shot_min_age(finding: &Finding, config: &Config, window: Duration) -> Duration {
    detect::check(finding.check)
        .map(|c| c.persist_for(config).min(window))
        .unwrap_or_default()
}

/// What a check run reads, writes and waits with.
pub struct CheckEnv<'a> {
    pub probe: &'a mut dyn NodeReader,
    pub actuator: &'a mut dyn Actuator,
    /// The journal, when fixes may be applied.
    pub journal: Option<&'a mut Journal>,
    pub now: &'a dyn Fn() -> SystemTime,
}

/// Runs one check.
pub fn run_check(
    options: CheckOptions,
    config: &Config,
    node: &str,
    env: CheckEnv<'_>,
) -> Result<Report, ProbeFatal> {
    let CheckEnv {
        probe,
        actuator,
        mut journal,
        now,
    } = env;
    probe.configure(config);
    let held: Vec<String> = journal
        .as_ref()
        .map(|j| j.promisc_interfaces().into_iter().map(|(i, _)| i).collect())
        .unwrap_or_default();
    let mut tracker = Tracker::new();
    let first = probe.snapshot()?;
    let t0 = now();
    tracker.observe(
        evaluate(&first, config, &held, crate::detect::Pods::unknown()),
        t0,
    );
    let last = if options.window.is_zero() {
        first
    } else {
        probe.observe(options.window);
        probe.snapshot()?
    };
    let t1 = if options.window.is_zero() { t0 } else { now() };
    let tracked = tracker.observe(
        evaluate(&last, config, &held, crate::detect::Pods::unknown()),
        t1,
    );
    let mut findings = persistent(tracked, t1, |f| one_shot_min_age(f, config, options.window));
    // With a journal, since when each finding has been seen counts across runs: a fix whose
    // check asks for persistence (staleAfter) waits for it even with `--window 0s`.
    if let Some(journal) = journal.as_deref_mut() {
        let present: Vec<(String, SystemTime)> = findings
            .iter()
            .map(|t| (t.finding.key(), t.since))
            .collect();
        match journal.remember_first_seen(&present) {
            Ok(remembered) => {
                for t in &mut findings {
                    if let Some(since) = remembered.get(&t.finding.key()) {
                        t.since = t.since.min(*since);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot remember when findings were first seen"),
        }
    }

    let mut history = journal.as_ref().map(|j| history_of(j)).unwrap_or_default();
    let round = Round {
        config,
        scope: GuardScope::OneShot,
        act: options.apply,
        promisc_held: &held,
        readded_by: &|_| None,
        node_mode: NodeMode::Configured,
    };
    let mut append = |entry| {
        if let Some(journal) = journal.as_deref_mut() {
            if let Err(e) = journal.append(entry) {
                tracing::error!(error = %e, "journal write failed");
            }
        }
    };
    let mut cluster = NodeLocal;
    let mut slots = SlotGate::default();
    let decided = decide_and_act(
        findings,
        &round,
        &mut history,
        t1,
        probe,
        actuator,
        ClusterSide {
            cluster: &mut cluster,
            slots: &mut slots,
        },
        now,
        &mut append,
    );
    // Nothing waits for a later proof in a one-shot run.
    slots.release_all(&mut cluster as &mut dyn Cluster);
    let reports = decided
        .iter()
        .map(|d| FindingReport::new(&d.tracked, d.step.report()))
        .collect();
    Ok(Report {
        node: node.to_string(),
        findings: reports,
        sources: last.sources,
    })
}

/// The guards' view of a journal.
pub fn history_of(journal: &Journal) -> FixHistory {
    let attempts: Vec<_> = journal
        .entries()
        .iter()
        .filter_map(|e| e.attempt())
        .collect();
    FixHistory::from_attempts(&attempts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::finding::{FixState, Outcome};
    use crate::model::ruleset::Backend;
    use crate::model::snapshot::NodeSnapshot;
    use crate::runtime::fake::FakeNode;
    use crate::runtime::ActError;

    fn stale_node() -> NodeSnapshot {
        snapshot_with(
            Some(vec![iptables_table(
                Backend::Nft,
                "nat",
                ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\n",
            )]),
            None,
        )
    }

    /// Enforcing, with no persistence asked of the backup chain (the tests of persistence set
    /// their own).
    fn enforce() -> Config {
        Config::from_yaml("mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true }\n")
            .unwrap()
    }

    /// `check --window 0s --apply` with `journal`, on the fake node's clock.
    fn apply_once(node: &FakeNode, config: &Config, journal: &mut Journal) -> Report {
        let mut probe = node.clone();
        let mut actuator = node.clone();
        let clock = node.clone();
        run_check(
            CheckOptions {
                window: Duration::ZERO,
                apply: true,
            },
            config,
            "node-a",
            CheckEnv {
                probe: &mut probe,
                actuator: &mut actuator,
                journal: Some(journal),
                now: &|| clock.0.borrow().clock,
            },
        )
        .unwrap()
    }

    fn run(node: &FakeNode, config: &Config, window: Duration, apply: bool) -> Report {
        let mut probe = node.clone();
        let mut actuator = node.clone();
        // The fake's clock moves only when the window is observed.
        let clock = node.clone();
        run_check(
            CheckOptions { window, apply },
            config,
            "node-a",
            CheckEnv {
                probe: &mut probe,
                actuator: &mut actuator,
                journal: None,
                now: &|| clock.0.borrow().clock,
            },
        )
        .unwrap()
    }

    #[test]
    fn dry_run_reports_and_changes_nothing_even_with_apply() {
        let node = FakeNode::new(stale_node());
        let report = run(&node, &Config::default(), Duration::ZERO, true);
        assert_eq!(report.findings.len(), 1);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::DryRun);
        assert!(node.0.borrow().applied.is_empty());
        assert_eq!(node.0.borrow().snapshots_taken, 1, "window 0s reads once");
    }

    #[test]
    fn enforce_with_apply_rechecks_acts_and_verifies() {
        let node = FakeNode::new(stale_node());
        let report = run(&node, &enforce(), Duration::from_secs(5), true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Verified, "{fix:?}");
        let state = node.0.borrow();
        assert_eq!(state.applied.len(), 1);
        assert_eq!(
            state.applied[0].1,
            Some(1),
            "the batch carries the generation it was decided on"
        );
        // start, end of window, precondition re-check, verification
        assert_eq!(state.snapshots_taken, 4);
    }

    #[test]
    fn apply_stops_at_the_hourly_budget_within_one_run_and_across_runs() {
        let two_stale = snapshot_with(
            Some(vec![iptables_table(
                Backend::Nft,
                "nat",
                ":POSTROUTING ACCEPT\n:OUTPUT ACCEPT\n:CILIUM_POST_nat -\n:CILIUM_OUTPUT_nat -\n:OLD_CILIUM_POST_nat -\n:OLD_CILIUM_OUTPUT_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A OUTPUT -j CILIUM_OUTPUT_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\n-A OLD_CILIUM_OUTPUT_nat -j ACCEPT\n",
            )]),
            None,
        );
        let node = FakeNode::new(two_stale);
        let config = Config::from_yaml(
            "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, cooldown: 0s }\nbudget: { fixesPerHour: 1 }\n",
        )
        .unwrap();
        let dir =
            std::env::temp_dir().join(format!("netmend-oneshot-budget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut journal = Journal::open(&dir).unwrap();
        let report = apply_once(&node, &config, &mut journal);
        let states: Vec<FixState> = report
            .findings
            .iter()
            .map(|f| f.fix.as_ref().unwrap().state)
            .collect();
        assert_eq!(
            states,
            vec![FixState::Verified, FixState::Cooldown],
            "{report:?}"
        );
        assert_eq!(
            node.0.borrow().applied.len(),
            1,
            "one fix within the budget of 1 per hour"
        );
        // A second run reads the first one's action back from the journal.
        let report = apply_once(&node, &config, &mut journal);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(
            report.findings[0].fix.as_ref().unwrap().state,
            FixState::Cooldown
        );
        assert_eq!(node.0.borrow().applied.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fix_waits_for_stale_after_across_runs_even_with_a_zero_window() {
        let node = FakeNode::new(stale_node());
        let config = Config::from_yaml(
            "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 30s }\nfixes:\n  flush-stale-chain: { enabled: true }\n",
        )
        .unwrap();
        let dir =
            std::env::temp_dir().join(format!("netmend-oneshot-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut journal = Journal::open(&dir).unwrap();
        let check = |journal: &mut Journal| apply_once(&node, &config, journal);
        let first = check(&mut journal);
        let fix = first.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Pending, "{fix:?}");
        assert!(fix.detail.contains("persisted 30s"), "{fix:?}");
        node.0.borrow_mut().clock += Duration::from_secs(20);
        assert_eq!(
            check(&mut journal).findings[0].fix.as_ref().unwrap().state,
            FixState::Pending,
            "20s of 30s, counted from the first run"
        );
        assert!(node.0.borrow().applied.is_empty());
        node.0.borrow_mut().clock += Duration::from_secs(11);
        let third = check(&mut journal);
        assert_eq!(
            third.findings[0].fix.as_ref().unwrap().state,
            FixState::Verified
        );
        assert_eq!(node.0.borrow().applied.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_apply_nothing_is_tried() {
        let node = FakeNode::new(stale_node());
        let report = run(&node, &enforce(), Duration::ZERO, false);
        assert_eq!(
            report.findings[0].fix.as_ref().unwrap().state,
            FixState::Pending
        );
        assert!(node.0.borrow().applied.is_empty());
    }

    #[test]
    fn a_chain_that_changed_before_acting_is_left_alone() {
        let node = FakeNode::new(stale_node());
        // The third read (the re-check) sees one more rule in the backup chain.
        node.0.borrow_mut().on_snapshot = Some(|s, n| {
            if n == 3 {
                let t = &mut std::sync::Arc::make_mut(s.nftables.as_mut().unwrap()).tables[0];
                let c = t
                    .chains
                    .iter_mut()
                    .find(|c| c.name == "OLD_CILIUM_POST_nat")
                    .unwrap();
                let mut extra = c.rules[0].clone();
                extra.handle = 99;
                c.rules.push(extra);
            }
        });
        let report = run(&node, &enforce(), Duration::from_secs(1), true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, Outcome::SkippedPreconditionMoved.state());
        assert!(node.0.borrow().applied.is_empty());
    }

    #[test]
    fn a_cilium_live_chain_unhooked_right_before_acting_stops_the_flush() {
        let node = FakeNode::new(stale_node());
        // The re-check's read (the 2nd with a 0s window) sees Cilium's feeder rule gone: the
        // backup became the only copy, so the flush decided on the first read is not made.
        node.0.borrow_mut().on_snapshot = Some(|s, n| {
            if n == 2 {
                let t = &mut std::sync::Arc::make_mut(s.nftables.as_mut().unwrap()).tables[0];
                let post = t
                    .chains
                    .iter_mut()
                    .find(|c| c.name == "POSTROUTING")
                    .unwrap();
                post.rules.clear();
            }
        });
        let report = run(&node, &enforce(), Duration::ZERO, true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(
            fix.state,
            Outcome::SkippedPreconditionMoved.state(),
            "{fix:?}"
        );
        assert!(node.0.borrow().applied.is_empty(), "nothing flushed");
    }

    #[test]
    fn kernel_refusals_are_reported_not_retried() {
        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().fail_next = Some(ActError::StateMoved("ERESTART".into()));
        let report = run(&node, &enforce(), Duration::ZERO, true);
        assert_eq!(
            report.findings[0].fix.as_ref().unwrap().state,
            FixState::Blocked
        );

        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().fail_next = Some(ActError::Failed("EBUSY".into()));
        let report = run(&node, &enforce(), Duration::ZERO, true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Failed);
        assert!(fix.detail.contains("EBUSY"));

        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().ineffective = true;
        let report = run(&node, &enforce(), Duration::ZERO, true);
        assert_eq!(
            report.findings[0].fix.as_ref().unwrap().state,
            FixState::Ineffective
        );
    }

    #[test]
    fn a_write_of_unknown_commit_is_settled_by_a_re_read() {
        // The ack was lost but the batch committed: the re-read (third read) finds the backup
        // chain gone, so the write applied.
        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().fail_next = Some(ActError::Unknown(
            "nftables batch sent but whether it committed is unknown: no ack".into(),
        ));
        node.0.borrow_mut().on_snapshot = Some(|s, n| {
            if n == 3 {
                let t = &mut std::sync::Arc::make_mut(s.nftables.as_mut().unwrap()).tables[0];
                t.chains.retain(|c| c.name != "OLD_CILIUM_POST_nat");
            }
        });
        let report = run(&node, &enforce(), Duration::ZERO, true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Verified, "{fix:?}");
        assert!(fix.detail.contains("no ack"), "{}", fix.detail);
        assert!(fix
            .detail
            .contains("the subject is gone, so the write applied"));
        assert_eq!(node.0.borrow().snapshots_taken, 3);

        // The ack was lost and the batch did not commit: the same content is still there.
        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().fail_next = Some(ActError::Unknown("restore killed".into()));
        let report = run(&node, &enforce(), Duration::ZERO, true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Failed, "{fix:?}");
        assert!(
            fix.detail
                .contains("the write did not apply; nothing changed"),
            "{}",
            fix.detail
        );

        // Something else changed the subject meanwhile: it stays unknown.
        let node = FakeNode::new(stale_node());
        node.0.borrow_mut().fail_next = Some(ActError::Unknown("restore killed".into()));
        node.0.borrow_mut().on_snapshot = Some(|s, n| {
            if n == 3 {
                let t = &mut std::sync::Arc::make_mut(s.nftables.as_mut().unwrap()).tables[0];
                let c = t
                    .chains
                    .iter_mut()
                    .find(|c| c.name == "OLD_CILIUM_POST_nat")
                    .unwrap();
                let mut extra = c.rules[0].clone();
                extra.handle = 99;
                c.rules.push(extra);
            }
        });
        let report = run(&node, &enforce(), Duration::ZERO, true);
        let fix = report.findings[0].fix.as_ref().unwrap();
        assert_eq!(fix.state, FixState::Unknown, "{fix:?}");
        assert!(fix.detail.contains("still unknown"), "{}", fix.detail);
    }

    #[test]
    fn a_backup_chain_that_appears_during_the_window_is_not_yet_stale() {
        let node = FakeNode::new(snapshot_with(Some(vec![]), None));
        node.0.borrow_mut().on_snapshot = Some(|s, n| {
            if n == 2 {
                *s = stale_node();
            }
        });
        let report = run(&node, &Config::default(), Duration::from_secs(5), false);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
    }
}
