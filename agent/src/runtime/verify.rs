//! Fixes whose proof takes time: a `set-promisc` applied for unanswered ARP is proven by replies
//! for the target leaving the interface (or the responder counter moving), disproven when
//! requests keep arriving unanswered past its deadline, and released when neither happened a
//! whole verification window later. The decision is the pure state machine of
//! [`crate::remediate::pending`]; this file feeds it the ARP counters of each snapshot and carries
//! out a revert through the [`Actuator`] (unless the flag was already set before netmend acted).
//! Pending verifications are journaled with their deadline, so a restarted agent resumes them.

use crate::detect::{self, Verification};
use crate::journal::{epoch_secs, VerifySpec};
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::model::snapshot::NodeSnapshot;
use crate::remediate::pending::{Counters, PendingVerification, Verdict};
use crate::remediate::tracker::TrackedFinding;
use crate::runtime::Actuator;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// A fix waiting for its proof, with the check and fix it belongs to.
#[derive(Debug, Clone)]
struct Waiting {
    check: CheckId,
    fix: FixId,
    min_requests: u32,
    pending: PendingVerification,
}

/// How a pending fix ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub check: CheckId,
    pub fix: FixId,
    pub key: String,
    pub subject: String,
    pub interface: String,
    /// Outcomes in order: `verified`; or `ineffective` then `reverted` (or `failed`); or
    /// `reverted` alone when it timed out.
    pub outcomes: Vec<Outcome>,
    pub detail: String,
}

/// The fixes waiting for proof.
#[derive(Debug, Default)]
pub struct PendingVerifications {
    waiting: Vec<Waiting>,
}

/// (requests received, replies sent) for `target` on `interface` since the watch started, and
/// the responder's answers.
fn observed(snapshot: &NodeSnapshot, interface: &str, target: Ipv4Addr) -> Counters {
    let (requests, replies) = snapshot
        .arp_cumulative
        .iter()
        .flatten()
        .find(|c| c.interface == interface)
        .and_then(|c| c.target(target))
        .map(|t| (t.requests_received, t.replies_sent))
        .unwrap_or((0, 0));
    let responses = snapshot
        .links
        .iter()
        .flatten()
        .find(|l| l.name == interface)
        .and_then(|link| {
            snapshot
                .responder_after
                .as_ref()
                .or(snapshot.responder.as_ref())?
                .responses_sent(target, link.ifindex)
        });
    Counters {
        requests,
        replies,
        responses,
    }
}

/// The check and fix a journal key (`check|subject...`) belongs to, and its proof settings.
fn owner_of(key: &str, config: &crate::config::Config) -> Option<(CheckId, FixId, u32)> {
    let check = detect::check_named(key.split('|').next()?)?;
    match check.verification(config) {
        Verification::ArpReplies { min_requests, .. } => {
            Some((check.id(), check.fix()?, min_requests))
        }
        Verification::Reread => None,
    }
}

impl PendingVerifications {
    /// Verifications a previous run journaled and did not settle, resumed.
    pub fn resume(
        journaled: Vec<PendingVerification>,
        config: &crate::config::Config,
    ) -> PendingVerifications {
        let waiting = journaled
            .into_iter()
            .filter_map(|pending| {
                let (check, fix, min_requests) = owner_of(&pending.key, config)?;
                tracing::info!(
                    interface = %pending.interface,
                    target = %pending.target,
                    "resuming a {fix} verification left open by a previous run"
                );
                Some(Waiting {
                    check,
                    fix,
                    min_requests,
                    pending,
                })
            })
            .collect();
        PendingVerifications { waiting }
    }

    /// Starts waiting for the proof of `fix` applied now on `interface` for `tracked`, when its
    /// check verifies by ARP replies. Returns what the journal keeps of it.
    pub fn start(
        &mut self,
        tracked: &TrackedFinding,
        fix: FixId,
        interface: &str,
        snapshot: &NodeSnapshot,
        config: &crate::config::Config,
        now: SystemTime,
    ) -> Option<VerifySpec> {
        let Verification::ArpReplies {
            within,
            min_requests,
        } = detect::check(tracked.finding.check)?.verification(config)
        else {
            return None;
        };
        let target = tracked
            .finding
            .subject
            .split_once('@')
            .and_then(|(_, ip)| ip.parse().ok())?;
        let pending = PendingVerification::started(
            &tracked.finding.key(),
            &tracked.finding.subject,
            interface,
            target,
            now,
            now + within,
            observed(snapshot, interface, target),
        );
        let spec = VerifySpec {
            target,
            deadline: epoch_secs(pending.deadline),
        };
        self.waiting.push(Waiting {
            check: tracked.finding.check,
            fix,
            min_requests,
            pending,
        });
        Some(spec)
    }

    /// Whether the fix of finding `key` still waits for its proof.
    pub fn waits_for(&self, key: &str) -> bool {
        self.waiting.iter().any(|w| w.pending.key == key)
    }

    /// Settles what can be settled on `snapshot`. `was_promisc_before` tells whether an
    /// interface already had the flag before netmend set it (then it is left on).
    pub fn settle(
        &mut self,
        snapshot: &NodeSnapshot,
        now: SystemTime,
        actuator: &mut dyn Actuator,
        was_promisc_before: impl Fn(&str) -> bool,
    ) -> Vec<Settled> {
        let mut settled = Vec::new();
        let mut still_waiting = Vec::new();
        for mut waiting in std::mem::take(&mut self.waiting) {
            let p = &mut waiting.pending;
            let verdict = p.step(
                now,
                observed(snapshot, &p.interface, p.target),
                u64::from(waiting.min_requests),
            );
            let window = p.deadline.duration_since(p.applied_at).unwrap_or_default();
            let (mut outcomes, because) = match verdict {
                Verdict::Wait => {
                    still_waiting.push(waiting);
                    continue;
                }
                Verdict::Verified { answers } => {
                    settled.push(Settled {
                        check: waiting.check,
                        fix: waiting.fix,
                        key: p.key.clone(),
                        subject: p.subject.clone(),
                        interface: p.interface.clone(),
                        outcomes: vec![Outcome::Verified],
                        detail: format!(
                            "{answers} answers for {} since {} was set promiscuous",
                            p.target, p.interface
                        ),
                    });
                    continue;
                }
                Verdict::Ineffective { unanswered } => (
                    vec![Outcome::Ineffective],
                    format!(
                        "ineffective: {unanswered} requests for {} still unanswered after {}",
                        p.target,
                        humantime::format_duration(window)
                    ),
                ),
                Verdict::TimedOut => (
                    Vec::new(),
                    format!(
                        "timed out: neither replies nor enough requests for {} seen by {}",
                        p.target,
                        humantime::format_duration(Duration::from_secs(
                            p.times_out_at()
                                .duration_since(p.applied_at)
                                .unwrap_or_default()
                                .as_secs()
                        ))
                    ),
                ),
            };
            let revert = if was_promisc_before(&p.interface) {
                Ok("left promiscuous: it already was before netmend acted".to_string())
            } else {
                actuator
                    .apply(
                        &FixAction::ClearPromisc {
                            interface: p.interface.clone(),
                        },
                        None,
                    )
                    .map(|report| report.detail)
                    .map_err(|e| e.to_string())
            };
            let detail = match revert {
                Ok(text) => {
                    outcomes.push(Outcome::Reverted);
                    format!("{because}; {text}")
                }
                Err(e) => {
                    outcomes.push(Outcome::Failed);
                    format!("{because}, and reverting failed: {e}")
                }
            };
            settled.push(Settled {
                check: waiting.check,
                fix: waiting.fix,
                key: p.key.clone(),
                subject: p.subject.clone(),
                interface: p.interface.clone(),
                outcomes,
                detail,
            });
        }
        self.waiting = still_waiting;
        settled
    }
}
