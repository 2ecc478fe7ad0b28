//! Fixes whose proof takes time: a `set-promisc` applied for unanswered ARP is proven by replies
//! for the target leaving the interface (or the responder counter moving), and disproven when
//! requests keep arriving unanswered for the check's verification time; a disproven fix is
//! reverted through the [`Actuator`] (unless the flag was already set before netmend acted).

use crate::detect::{self, Verification};
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::model::snapshot::NodeSnapshot;
use crate::remediate::tracker::TrackedFinding;
use crate::runtime::Actuator;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// A fix applied for an unanswered target, waiting for its proof.
#[derive(Debug, Clone)]
struct Pending {
    check: CheckId,
    fix: FixId,
    key: String,
    subject: String,
    interface: String,
    target: Ipv4Addr,
    applied_at: SystemTime,
    within: Duration,
    min_requests: u32,
    requests_at_apply: u64,
    replies_at_apply: u64,
    responses_at_apply: Option<u64>,
}

/// How a pending fix ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub check: CheckId,
    pub fix: FixId,
    pub key: String,
    pub subject: String,
    pub interface: String,
    /// Outcomes in order: `verified`; or `ineffective` then `reverted` (or `failed`).
    pub outcomes: Vec<Outcome>,
    pub detail: String,
}

/// The fixes waiting for proof.
#[derive(Debug, Default)]
pub struct PendingVerifications {
    pending: Vec<Pending>,
}

/// (requests received, replies sent) for `target` on `interface` since the watch started.
fn arp_totals(snapshot: &NodeSnapshot, interface: &str, target: Ipv4Addr) -> (u64, u64) {
    snapshot
        .arp_cumulative
        .iter()
        .flatten()
        .find(|c| c.interface == interface)
        .and_then(|c| c.target(target))
        .map(|t| (t.requests_received, t.replies_sent))
        .unwrap_or((0, 0))
}

fn responses_sent(snapshot: &NodeSnapshot, interface: &str, target: Ipv4Addr) -> Option<u64> {
    let ifindex = snapshot
        .links
        .iter()
        .flatten()
        .find(|l| l.name == interface)?
        .ifindex;
    snapshot
        .responder_after
        .as_ref()
        .or(snapshot.responder.as_ref())?
        .responses_sent(target, ifindex)
}

impl PendingVerifications {
    /// Starts waiting for the proof of a fix applied now on `interface` for `tracked`, when its
    /// check verifies by ARP replies.
    pub fn start(
        &mut self,
        tracked: &TrackedFinding,
        fix: FixId,
        interface: &str,
        snapshot: &NodeSnapshot,
        config: &crate::config::Config,
        now: SystemTime,
    ) {
        let Some(Verification::ArpReplies {
            within,
            min_requests,
        }) = detect::check(tracked.finding.check).map(|c| c.verification(config))
        else {
            return;
        };
        let target = tracked
            .finding
            .subject
            .split_once('@')
            .and_then(|(_, ip)| ip.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (requests, replies) = arp_totals(snapshot, interface, target);
        self.pending.push(Pending {
            check: tracked.finding.check,
            fix,
            key: tracked.finding.key(),
            subject: tracked.finding.subject.clone(),
            interface: interface.to_string(),
            target,
            applied_at: now,
            within,
            min_requests,
            requests_at_apply: requests,
            replies_at_apply: replies,
            responses_at_apply: responses_sent(snapshot, interface, target),
        });
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
        let mut still_pending = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            let (requests, replies) = arp_totals(snapshot, &pending.interface, pending.target);
            let counter_moved = match (
                pending.responses_at_apply,
                responses_sent(snapshot, &pending.interface, pending.target),
            ) {
                (Some(before), Some(after)) => after > before,
                _ => false,
            };
            let new_requests = requests.saturating_sub(pending.requests_at_apply);
            let answered = replies > pending.replies_at_apply || counter_moved;
            let waited = now.duration_since(pending.applied_at).unwrap_or_default();
            let (outcomes, detail) = if answered {
                (
                    vec![Outcome::Verified],
                    format!(
                        "{} answers for {} since {} was set promiscuous",
                        replies.saturating_sub(pending.replies_at_apply),
                        pending.target,
                        pending.interface
                    ),
                )
            } else if waited >= pending.within && new_requests >= u64::from(pending.min_requests) {
                let revert = if was_promisc_before(&pending.interface) {
                    Ok("left promiscuous: it already was before netmend acted".to_string())
                } else {
                    actuator
                        .apply(
                            &FixAction::ClearPromisc {
                                interface: pending.interface.clone(),
                            },
                            None,
                        )
                        .map(|report| report.detail)
                        .map_err(|e| e.to_string())
                };
                match revert {
                    Ok(text) => (
                        vec![Outcome::Ineffective, Outcome::Reverted],
                        format!(
                            "ineffective: {new_requests} requests for {} still unanswered after {}; {text}",
                            pending.target,
                            humantime::format_duration(pending.within)
                        ),
                    ),
                    Err(e) => (
                        vec![Outcome::Ineffective, Outcome::Failed],
                        format!("ineffective, and reverting failed: {e}"),
                    ),
                }
            } else {
                still_pending.push(pending);
                continue;
            };
            settled.push(Settled {
                check: pending.check,
                fix: pending.fix,
                key: pending.key,
                subject: pending.subject,
                interface: pending.interface,
                outcomes,
                detail,
            });
        }
        self.pending = still_pending;
        settled
    }
}
