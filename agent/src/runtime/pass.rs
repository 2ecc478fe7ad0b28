//! One evaluation pass and the execution of a fix decision, shared by `netmend check` and
//! `netmend run`: detect on a snapshot, then for a decision to apply: re-check the precondition on
//! a fresh snapshot, act through the [`Actuator`], verify on another snapshot, and say what to
//! journal. Everything kernel-facing goes through the traits.

use crate::config::Config;
use crate::detect::{self, Verification};
use crate::journal::JournalEntry;
use crate::model::finding::{FixAction, FixId, FixReport, Outcome};
use crate::model::ruleset::Backend;
use crate::model::snapshot::NodeSnapshot;
use crate::remediate::guard::Decision;
use crate::remediate::tracker::TrackedFinding;
use crate::runtime::{ActError, Actuator, NodeReader};
use std::time::SystemTime;

/// Every enabled check on one snapshot; `promisc_held` are the interfaces netmend made
/// promiscuous (from the journal), `pods` what the cluster says about the node's pods now.
pub fn evaluate(
    snapshot: &NodeSnapshot,
    config: &Config,
    promisc_held: &[String],
    pods: detect::Pods<'_>,
) -> Vec<crate::model::finding::Finding> {
    detect::run_checks_with_pods(snapshot, config, promisc_held, pods)
}

/// The result of executing one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// The outcomes in order (e.g. applied then verified), each counted once in metrics.
    pub outcomes: Vec<Outcome>,
    pub report: FixReport,
    /// Lines for the journal.
    pub journal: Vec<JournalEntry>,
}

impl Execution {
    fn skipped(fix: FixId, outcome: Outcome, detail: String) -> Execution {
        Execution {
            outcomes: vec![outcome],
            report: FixReport {
                name: fix,
                state: outcome.state(),
                detail,
            },
            journal: Vec::new(),
        }
    }

    pub fn final_outcome(&self) -> Outcome {
        *self.outcomes.last().expect("an execution has an outcome")
    }
}

fn nft_generation(action: &FixAction, snapshot: &NodeSnapshot) -> Option<u32> {
    match action {
        FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. }
            if table.backend == Backend::Nft =>
        {
            snapshot.nftables.as_ref().and_then(|r| r.generation)
        }
        _ => None,
    }
}

/// Carries out `decision` for `tracked`. Skips come back as they are; an apply re-checks,
/// acts and verifies, each time with what the cluster says about the pods then (`pods`).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    decision: Decision,
    tracked: &TrackedFinding,
    config: &Config,
    promisc_held: &[String],
    pods: detect::Pods<'_>,
    probe: &mut dyn NodeReader,
    actuator: &mut dyn Actuator,
    now: impl Fn() -> SystemTime,
) -> Execution {
    let (fix, action) = match decision {
        Decision::Skip {
            fix,
            outcome,
            detail,
        } => return Execution::skipped(fix, outcome, detail),
        Decision::Apply { fix, action } => (fix, action),
    };
    let finding = &tracked.finding;
    let key = finding.key();
    let entry = |outcome: Outcome, detail: &str| {
        JournalEntry::new(
            now(),
            Some(finding.check),
            fix,
            &finding.subject,
            &key,
            outcome,
            detail,
        )
    };

    // Guard 3: the precondition, re-checked on fresh state right before acting.
    let fresh = match probe.snapshot() {
        Ok(s) => s,
        Err(e) => {
            let detail = format!("could not re-read the node before acting: {e}; nothing done");
            return Execution {
                outcomes: vec![Outcome::Failed],
                journal: vec![entry(Outcome::Failed, &detail)],
                report: FixReport {
                    name: fix,
                    state: Outcome::Failed.state(),
                    detail,
                },
            };
        }
    };
    let still_same = evaluate(&fresh, config, promisc_held, pods)
        .into_iter()
        .any(|f| {
            f.key() == key
                && f.proposal
                    .as_ref()
                    .and_then(|p| p.action.as_ref())
                    .is_some_and(|a| a.same_change(&action))
        });
    if !still_same {
        let detail =
            "the state changed since it was read (gone or different); nothing done".to_string();
        return Execution {
            outcomes: vec![Outcome::SkippedPreconditionMoved],
            journal: vec![entry(Outcome::SkippedPreconditionMoved, &detail)],
            report: FixReport {
                name: fix,
                state: Outcome::SkippedPreconditionMoved.state(),
                detail,
            },
        };
    }

    let generation = nft_generation(&action, &fresh);
    crate::fault_knobs::pause_before_acting();
    let applied = match actuator.apply(&action, generation) {
        Ok(report) => report,
        Err(ActError::Unknown(why)) => {
            return settle_unknown(
                &why,
                fix,
                &key,
                &action,
                Evaluation {
                    config,
                    promisc_held,
                    pods,
                },
                probe,
                entry,
            )
        }
        Err(error) => {
            let (outcome, detail) = match &error {
                ActError::StateMoved(_) => (
                    Outcome::SkippedPreconditionMoved,
                    format!("{error}; nothing done"),
                ),
                ActError::Unavailable(_) => (Outcome::Blocked, format!("blocked: {error}")),
                ActError::Failed(_) => {
                    (Outcome::Failed, format!("failed: {error}; nothing changed"))
                }
                // Settled above; kept total so no arm can panic.
                ActError::Unknown(_) => (Outcome::Unknown, error.to_string()),
            };
            return Execution {
                outcomes: vec![outcome],
                journal: vec![entry(outcome, &detail)],
                report: FixReport {
                    name: fix,
                    state: outcome.state(),
                    detail,
                },
            };
        }
    };
    let mut applied_entry = entry(Outcome::Applied, &applied.detail);
    if let FixAction::SetPromisc { interface, .. } = &action {
        applied_entry.interface = Some(interface.clone());
        applied_entry.was_promisc_before = applied.was_promisc_before;
    }
    if let Some(Verification::ArpReplies { within, .. }) =
        detect::check(finding.check).map(|c| c.verification(config))
    {
        // Verification needs ARP traffic over `within`: the agent does it later.
        return Execution {
            outcomes: vec![Outcome::Applied],
            journal: vec![applied_entry],
            report: FixReport {
                name: fix,
                state: Outcome::Applied.state(),
                detail: format!(
                    "{}; verifying within {}",
                    applied.detail,
                    humantime::format_duration(within)
                ),
            },
        };
    }

    // Guard 5: verify on fresh state.
    let (outcome, detail) = match probe.snapshot() {
        Ok(after) => {
            if evaluate(&after, config, promisc_held, pods)
                .iter()
                .any(|f| f.key() == key)
            {
                (
                    Outcome::Ineffective,
                    format!("{}; the finding is still there afterwards", applied.detail),
                )
            } else {
                (
                    Outcome::Verified,
                    format!("{}; verified gone", applied.detail),
                )
            }
        }
        Err(e) => (
            Outcome::Ineffective,
            format!("{}; could not verify: {e}", applied.detail),
        ),
    };
    Execution {
        outcomes: vec![Outcome::Applied, outcome],
        journal: vec![applied_entry, entry(outcome, &detail)],
        report: FixReport {
            name: fix,
            state: outcome.state(),
            detail,
        },
    }
}

/// What a re-read is evaluated with.
struct Evaluation<'a> {
    config: &'a Config,
    promisc_held: &'a [String],
    pods: detect::Pods<'a>,
}

/// Carries out an apply `decision` whose action acts on the Kubernetes API (a cordon) through
/// `cluster`, for `tracked`: the cluster reads the Node, acts only from a state the action may act
/// from, and reads it back, which is the proof. Journaled like a kernel fix (`applied`, then
/// `verified` or `ineffective`); a Node already in the wanted state is not written to and not
/// journaled.
pub fn execute_on_cluster(
    decision: Decision,
    tracked: &TrackedFinding,
    config: &Config,
    cluster: &mut dyn crate::runtime::cluster::Cluster,
    now: impl Fn() -> SystemTime,
) -> Execution {
    use crate::runtime::cluster::ClusterActError;
    let (fix, action) = match decision {
        Decision::Skip {
            fix,
            outcome,
            detail,
        } => return Execution::skipped(fix, outcome, detail),
        Decision::Apply { fix, action } => (fix, action),
    };
    let finding = &tracked.finding;
    let key = finding.key();
    let entry = |outcome: Outcome, detail: &str| {
        JournalEntry::new(
            now(),
            Some(finding.check),
            fix,
            &finding.subject,
            &key,
            outcome,
            detail,
        )
    };
    let single = |outcome: Outcome, detail: String, journaled: bool| Execution {
        outcomes: vec![outcome],
        journal: if journaled {
            vec![entry(outcome, &detail)]
        } else {
            Vec::new()
        },
        report: FixReport {
            name: fix,
            state: outcome.state(),
            detail,
        },
    };
    // A read, a write and a read back, each bounded by the request timeout.
    let wait = config.kubernetes.request_timeout * 3 + std::time::Duration::from_millis(500);
    let what = crate::act::kernel::describe(&action);
    match cluster.act_on_cluster(&action, wait) {
        Ok(acted) if !acted.wrote => single(
            Outcome::SkippedPreconditionMoved,
            format!("{what}: already done ({}); nothing written", acted.after),
            false,
        ),
        Ok(acted) => {
            let (outcome, detail) = if acted.reached {
                (
                    Outcome::Verified,
                    format!("{what}: done; read back: {}", acted.after),
                )
            } else {
                (
                    Outcome::Ineffective,
                    format!("{what}: written, but read back: {}", acted.after),
                )
            };
            Execution {
                outcomes: vec![Outcome::Applied, outcome],
                journal: vec![entry(Outcome::Applied, &what), entry(outcome, &detail)],
                report: FixReport {
                    name: fix,
                    state: outcome.state(),
                    detail,
                },
            }
        }
        Err(ClusterActError::Moved(why)) => single(
            Outcome::SkippedPreconditionMoved,
            format!("{what}: {why}; nothing done"),
            true,
        ),
        Err(ClusterActError::Unavailable(why)) => single(
            Outcome::Blocked,
            format!("blocked: {what}: {why}; nothing done"),
            true,
        ),
        Err(ClusterActError::Failed(why)) => single(
            Outcome::Failed,
            format!("failed: {what}: {why}; nothing changed"),
            true,
        ),
        Err(ClusterActError::Unknown(why)) => {
            single(Outcome::Unknown, format!("{what}: {why}"), true)
        }
    }
}

/// A write whose commit is unknown: journal `unknown` (it counts for the breaker as an attempt),
/// re-read, and decide from what the kernel now holds: the finding gone means the write applied
/// (`verified`); the same change still to make means it did not (`failed`, nothing changed);
/// anything else, or no re-read, stays `unknown`.
fn settle_unknown(
    why: &str,
    fix: FixId,
    key: &str,
    action: &FixAction,
    evaluation: Evaluation<'_>,
    probe: &mut dyn NodeReader,
    entry: impl Fn(Outcome, &str) -> JournalEntry,
) -> Execution {
    let first = format!("{why}; re-reading to settle it");
    let (settled, detail) = match probe.snapshot() {
        Err(e) => (
            None,
            format!("{why}; the re-read failed too ({e}): still unknown"),
        ),
        Ok(after) => {
            let now = evaluate(
                &after,
                evaluation.config,
                evaluation.promisc_held,
                evaluation.pods,
            );
            let same = now.iter().find(|f| f.key() == key);
            match same {
                None => (
                    Some(Outcome::Verified),
                    format!("{why}; re-read: the subject is gone, so the write applied"),
                ),
                Some(f)
                    if f.proposal
                        .as_ref()
                        .and_then(|p| p.action.as_ref())
                        .is_some_and(|a| a.same_change(action)) =>
                {
                    (
                        Some(Outcome::Failed),
                        format!("{why}; re-read: the kernel still holds the same content, so the write did not apply; nothing changed"),
                    )
                }
                Some(_) => (
                    None,
                    format!("{why}; re-read: the subject is still there but changed: still unknown"),
                ),
            }
        }
    };
    let mut outcomes = vec![Outcome::Unknown];
    let mut journal = vec![entry(Outcome::Unknown, &first)];
    let last = match settled {
        Some(outcome) => {
            outcomes.push(outcome);
            journal.push(entry(outcome, &detail));
            outcome
        }
        None => {
            journal[0] = entry(Outcome::Unknown, &detail);
            Outcome::Unknown
        }
    };
    Execution {
        outcomes,
        journal,
        report: FixReport {
            name: fix,
            state: last.state(),
            detail,
        },
    }
}
