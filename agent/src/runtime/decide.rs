//! The one decision loop, shared by `netmend check --apply` and `netmend run`: findings in one
//! order (most severe first, then check, then subject), each through the guards, the allowed ones
//! executed (re-check, act, verify), and the guards' history updated after every action so the
//! next decision in the same pass already counts it (the hourly budget, cooldowns, the breaker).
//! The cluster has the last word: a node labelled `dry-run` applies nothing, and a fix runs only
//! under a cluster-wide fix slot (`runtime::slots`), released as soon as the fix is over unless
//! its proof is still pending. A fix that acts on the Kubernetes API (a cordon) goes through the
//! same guards and slot, and is carried out and proven by the cluster instead of the kernel.
//! What the caller does with the results (print them, count them, show them on /status) is its
//! own business.

use crate::config::Config;
use crate::journal::JournalEntry;
use crate::model::finding::{FixId, FixReport, FixState, Outcome};
use crate::remediate::guard::{decide, Decision, GuardScope};
use crate::remediate::history::FixHistory;
use crate::remediate::tracker::TrackedFinding;
use crate::runtime::cluster::{Cluster, NodeMode, Precheck, NODE_MODE_LABEL};
use crate::runtime::pass::{execute, execute_on_cluster, Execution};
use crate::runtime::slots::{Admission, SlotGate};
use crate::runtime::{Actuator, NodeReader};
use std::time::SystemTime;

/// What happened to one finding's fix.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The check proposes no fix for it.
    NoFix,
    /// A guard held the fix back, or the check blocked it.
    Held {
        fix: FixId,
        outcome: Outcome,
        detail: String,
    },
    /// Every guard passed but acting was not asked for (`check` without `--apply`).
    WouldApply { fix: FixId, detail: String },
    /// The fix ran (re-check, act, verify): see its outcomes.
    Executed(Execution),
}

impl Step {
    /// The `fix` part of the finding's report.
    pub fn report(&self) -> Option<FixReport> {
        match self {
            Step::NoFix => None,
            Step::Held {
                fix,
                outcome,
                detail,
            } => Some(FixReport {
                name: *fix,
                state: outcome.state(),
                detail: detail.clone(),
            }),
            Step::WouldApply { fix, detail } => Some(FixReport {
                name: *fix,
                state: FixState::Pending,
                detail: detail.clone(),
            }),
            Step::Executed(execution) => Some(execution.report.clone()),
        }
    }
}

/// One finding and what was decided for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub tracked: TrackedFinding,
    pub step: Step,
}

/// How one round of decisions runs.
pub struct Round<'a> {
    pub config: &'a Config,
    pub scope: GuardScope,
    /// Whether an allowed fix is carried out (false: report what would be done).
    pub act: bool,
    pub promisc_held: &'a [String],
    /// Who re-created a finding's subject, asked on a repeat application ("re-added by").
    pub readded_by: &'a dyn Fn(&crate::model::finding::Finding) -> Option<String>,
    /// The node's opt-out label: `DryRun` applies nothing.
    pub node_mode: NodeMode,
}

/// The cluster as one round of decisions uses it: the fix slots.
pub struct ClusterSide<'a> {
    pub cluster: &'a mut dyn Cluster,
    pub slots: &'a mut SlotGate,
}

/// The order findings are decided and shown in: most severe first, then check, then subject.
pub fn sort(findings: &mut [TrackedFinding]) {
    findings.sort_by(|a, b| {
        b.finding
            .severity
            .cmp(&a.finding.severity)
            .then_with(|| a.finding.check.cmp(&b.finding.check))
            .then_with(|| a.finding.subject.cmp(&b.finding.subject))
    });
}

/// Decides for every finding in order; executes allowed fixes (each under a fix slot from
/// `cluster`); records every journal line into `history` and hands it to `journal`. A fix whose
/// proof is still pending when this returns (its final outcome is `applied`) keeps its slot: the
/// caller finishes it when the proof settles.
#[allow(clippy::too_many_arguments)]
pub fn decide_and_act(
    mut findings: Vec<TrackedFinding>,
    round: &Round<'_>,
    history: &mut FixHistory,
    now: SystemTime,
    probe: &mut dyn NodeReader,
    actuator: &mut dyn Actuator,
    cluster: ClusterSide<'_>,
    clock: &dyn Fn() -> SystemTime,
    journal: &mut dyn FnMut(JournalEntry),
) -> Vec<Decided> {
    sort(&mut findings);
    let mut decided = Vec::with_capacity(findings.len());
    for tracked in findings {
        let proposal = tracked.finding.proposal.as_ref();
        let proposed = || proposal.map(|p| p.detail.as_str()).unwrap_or("");
        let decision = match proposal {
            // The label holds back every fix that could be applied, as `mode: dry-run` does.
            Some(p) if round.node_mode == NodeMode::DryRun && p.action.is_some() => {
                Some(Decision::Skip {
                    fix: p.fix,
                    outcome: Outcome::SkippedDryRun,
                    detail: format!(
                        "{}; this node is labelled {NODE_MODE_LABEL}=dry-run",
                        p.detail
                    ),
                })
            }
            _ => decide(&tracked, round.config, history, now, round.scope),
        };
        // An action on the cluster that the guards allow is judged from what the watches last
        // saw: a node netmend cordoned already, someone else's cordon, a Service another agent
        // keeps, is no new attempt.
        let decision = match decision {
            Some(Decision::Apply { fix, action }) if action.acts_on_cluster() => {
                match cluster.cluster.precheck(&action) {
                    Some(Precheck::Done { state }) => Some(Decision::Skip {
                        fix,
                        outcome: Outcome::SkippedPreconditionMoved,
                        detail: format!("already done: {state}"),
                    }),
                    Some(Precheck::Refuse { why }) => Some(Decision::Skip {
                        fix,
                        outcome: Outcome::Blocked,
                        detail: why,
                    }),
                    _ => Some(Decision::Apply { fix, action }),
                }
            }
            other => other,
        };
        let step = match decision {
            None => Step::NoFix,
            Some(Decision::Skip {
                fix,
                outcome,
                detail,
            }) => Step::Held {
                fix,
                outcome,
                detail,
            },
            Some(Decision::Apply { fix, .. }) if !round.act => Step::WouldApply {
                fix,
                detail: format!("{}; run with --apply to apply", proposed()),
            },
            Some(apply @ Decision::Apply { .. }) => {
                let key = tracked.finding.key();
                let fix = apply.fix();
                let cuts_off_api = crate::detect::cuts_off_api(&tracked.finding);
                if let Admission::NoSlot(reason) =
                    cluster
                        .slots
                        .admit(cluster.cluster, &key, fix, cuts_off_api, now)
                {
                    let detail = format!("{}; not applied: no fix slot ({reason})", proposed());
                    decided.push(Decided {
                        tracked,
                        step: Step::Held {
                            fix,
                            outcome: Outcome::SkippedNoSlot,
                            detail,
                        },
                    });
                    continue;
                }
                let on_cluster =
                    matches!(&apply, Decision::Apply { action, .. } if action.acts_on_cluster());
                let mut execution = if on_cluster {
                    execute_on_cluster(apply, &tracked, round.config, cluster.cluster, clock)
                } else {
                    let knows: &dyn Cluster = &*cluster.cluster;
                    let owner = |ip| knows.pod_owner(ip);
                    let pods = crate::detect::Pods {
                        owner: &owner,
                        known: knows.pods_known(),
                    };
                    execute(
                        apply,
                        &tracked,
                        round.config,
                        round.promisc_held,
                        pods,
                        probe,
                        actuator,
                        clock,
                    )
                };
                // A repeat application means the fault came back: say who did it, when known.
                let readded = (history.applied_within_window(&key, now) > 0)
                    .then(|| (round.readded_by)(&tracked.finding))
                    .flatten();
                for mut entry in std::mem::take(&mut execution.journal) {
                    entry.readded_by = readded.clone();
                    record(history, &entry);
                    journal(entry);
                }
                // Over unless its proof is pending: the slot goes back now.
                if execution.final_outcome() != Outcome::Applied {
                    cluster.slots.finished(cluster.cluster, &key);
                }
                Step::Executed(execution)
            }
        };
        decided.push(Decided { tracked, step });
    }
    decided
}

/// Records a journal line in the guards' history.
pub fn record(history: &mut FixHistory, entry: &JournalEntry) {
    if let Some(attempt) = entry.attempt() {
        history.record(&attempt);
    }
}
