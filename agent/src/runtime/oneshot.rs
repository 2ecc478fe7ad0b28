//! `netmend check`: observe for a window, evaluate every enabled check once, and with `--apply`
//! run the fixes through the same guards as the agent (so in dry-run it reports and changes
//! nothing).
//!
//! Persistence in one-shot mode: a finding that needs to persist (`staleAfter`) must be present at
//! both ends of the window; with `--window 0s` the single snapshot is both ends, so instantaneous
//! evaluation still reports it.

use crate::config::Config;
use crate::journal::Journal;
use crate::model::finding::{CheckId, Finding};
use crate::remediate::guard::{decide, GuardScope};
use crate::remediate::history::FixHistory;
use crate::remediate::tracker::{persistent, Tracker};
use crate::report::{FindingReport, Report};
use crate::runtime::pass::{evaluate, execute};
use crate::runtime::{Actuator, NodeProbe, ProbeFatal};
use std::time::{Duration, SystemTime};

/// Options of one check run.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    pub window: Duration,
    pub apply: bool,
}

/// How long a finding must persist in a one-shot run before it is reported.
fn one_shot_min_age(finding: &Finding, config: &Config, window: Duration) -> Duration {
    match finding.check {
        CheckId::CiliumStaleBackupChain => config
            .checks
            .cilium_stale_backup_chain
            .stale_after
            .min(window),
        _ => Duration::ZERO,
    }
}

/// What a check run reads, writes and waits with.
pub struct CheckEnv<'a> {
    pub probe: &'a mut dyn NodeProbe,
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
    tracker.observe(evaluate(&first, config, &held), t0);
    let last = if options.window.is_zero() {
        first
    } else {
        probe.observe(options.window);
        probe.snapshot()?
    };
    let t1 = if options.window.is_zero() { t0 } else { now() };
    let tracked = tracker.observe(evaluate(&last, config, &held), t1);
    let mut findings = persistent(tracked, t1, |f| one_shot_min_age(f, config, options.window));
    findings.sort_by(|a, b| {
        b.finding
            .severity
            .cmp(&a.finding.severity)
            .then_with(|| a.finding.check.cmp(&b.finding.check))
            .then_with(|| a.finding.subject.cmp(&b.finding.subject))
    });

    let history = journal.as_ref().map(|j| history_of(j)).unwrap_or_default();
    let mut reports = Vec::with_capacity(findings.len());
    for tracked in &findings {
        let Some(decision) = decide(tracked, config, &history, t1, GuardScope::OneShot) else {
            reports.push(FindingReport::new(tracked, None));
            continue;
        };
        let fix = if options.apply {
            let execution = execute(decision, tracked, config, &held, probe, actuator, now);
            if let Some(journal) = journal.as_deref_mut() {
                for entry in execution.journal {
                    if let Err(e) = journal.append(entry) {
                        tracing::error!(error = %e, "journal write failed");
                    }
                }
            }
            execution.report
        } else {
            // Without --apply nothing is tried: report what the guards would decide.
            match decision {
                crate::remediate::guard::Decision::Skip {
                    fix,
                    outcome,
                    detail,
                } => crate::model::finding::FixReport {
                    name: fix,
                    state: outcome.state(),
                    detail,
                },
                crate::remediate::guard::Decision::Apply { fix, .. } => {
                    crate::model::finding::FixReport {
                        name: fix,
                        state: crate::model::finding::FixState::Pending,
                        detail: format!(
                            "{}; run with --apply to apply",
                            tracked
                                .finding
                                .proposal
                                .as_ref()
                                .map(|p| p.detail.as_str())
                                .unwrap_or("")
                        ),
                    }
                }
            }
        };
        reports.push(FindingReport::new(tracked, Some(fix)));
    }
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

    fn enforce() -> Config {
        Config::from_yaml("mode: enforce\nfixes:\n  flush-stale-chain: { enabled: true }\n")
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
