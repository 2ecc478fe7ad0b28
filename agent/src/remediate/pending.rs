//! Verification of a set-promisc fix for unanswered ARP, as a pure state machine the engine steps
//! once a pass: replies for the target leaving the interface (or the responder's counter moving)
//! prove the fix; requests still arriving unanswered after the deadline disprove it; neither
//! within a second verification window means it timed out. A verification resumed from the
//! journal after a restart has no counters yet: the first observation becomes its baseline (the
//! ARP watch restarted with the process), and its deadline stays the journaled one.

use std::net::Ipv4Addr;
use std::time::SystemTime;

/// ARP counters for the target on the interface, as the watch reports them (cumulative since
/// the watch started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub requests: u64,
    pub replies: u64,
    /// The in-kernel responder's answers, when it runs.
    pub responses: Option<u64>,
}

/// A set-promisc waiting for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingVerification {
    pub key: String,
    pub subject: String,
    pub interface: String,
    pub target: Ipv4Addr,
    pub applied_at: SystemTime,
    /// Replies must have proved the fix by then, or requests disproved it.
    pub deadline: SystemTime,
    /// Counters the verdict is measured from; `None` until first observed after a restart.
    pub baseline: Option<Counters>,
}

/// What to do with a pending verification now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet.
    Wait,
    /// Replies (or responder answers) seen since the baseline.
    Verified { answers: u64 },
    /// At least `min_requests` requests arrived since the baseline, none answered, past the
    /// deadline: revert.
    Ineffective { unanswered: u64 },
    /// Neither proved nor disproved a whole verification window after the deadline: release the
    /// flag rather than hold it on no evidence.
    TimedOut,
}

impl PendingVerification {
    /// A verification started now, with the counters observed at apply time.
    pub fn started(
        key: &str,
        subject: &str,
        interface: &str,
        target: Ipv4Addr,
        applied_at: SystemTime,
        deadline: SystemTime,
        baseline: Counters,
    ) -> PendingVerification {
        PendingVerification {
            key: key.to_string(),
            subject: subject.to_string(),
            interface: interface.to_string(),
            target,
            applied_at,
            deadline,
            baseline: Some(baseline),
        }
    }

    /// A verification read back from the journal: counters are taken at the next observation.
    pub fn resumed(
        key: &str,
        subject: &str,
        interface: &str,
        target: Ipv4Addr,
        applied_at: SystemTime,
        deadline: SystemTime,
    ) -> PendingVerification {
        PendingVerification {
            key: key.to_string(),
            subject: subject.to_string(),
            interface: interface.to_string(),
            target,
            applied_at,
            deadline,
            baseline: None,
        }
    }

    /// When the verification gives up: one more verification window after the deadline.
    pub fn times_out_at(&self) -> SystemTime {
        let window = self
            .deadline
            .duration_since(self.applied_at)
            .unwrap_or_default();
        self.deadline + window
    }

    /// Steps the verification with what is observed now. Takes the baseline when there is none
    /// and starts it again when the counters went backwards (the watch restarted).
    pub fn step(&mut self, now: SystemTime, observed: Counters, min_requests: u64) -> Verdict {
        let baseline = match self.baseline {
            Some(b) if observed.requests >= b.requests && observed.replies >= b.replies => b,
            _ => {
                self.baseline = Some(observed);
                return if now >= self.times_out_at() {
                    Verdict::TimedOut
                } else {
                    Verdict::Wait
                };
            }
        };
        let replies = observed.replies - baseline.replies;
        let responses = match (baseline.responses, observed.responses) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        if replies > 0 || responses > 0 {
            return Verdict::Verified {
                answers: replies.max(responses),
            };
        }
        let unanswered = observed.requests - baseline.requests;
        if now >= self.deadline && unanswered >= min_requests {
            return Verdict::Ineffective { unanswered };
        }
        if now >= self.times_out_at() {
            return Verdict::TimedOut;
        }
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn counters(requests: u64, replies: u64) -> Counters {
        Counters {
            requests,
            replies,
            responses: None,
        }
    }

    fn started(baseline: Counters) -> PendingVerification {
        PendingVerification::started(
            "k",
            "eth1@10.0.0.5",
            "eth1",
            Ipv4Addr::new(10, 0, 0, 5),
            t(0),
            t(60),
            baseline,
        )
    }

    #[test]
    fn a_reply_proves_it_at_once() {
        let mut p = started(counters(10, 0));
        assert_eq!(p.step(t(5), counters(12, 0), 3), Verdict::Wait);
        assert_eq!(
            p.step(t(6), counters(13, 2), 3),
            Verdict::Verified { answers: 2 }
        );
    }

    #[test]
    fn responder_answers_prove_it_too() {
        let mut p = started(Counters {
            requests: 0,
            replies: 0,
            responses: Some(4),
        });
        let observed = Counters {
            requests: 1,
            replies: 0,
            responses: Some(5),
        };
        assert_eq!(p.step(t(1), observed, 3), Verdict::Verified { answers: 1 });
    }

    #[test]
    fn unanswered_requests_past_the_deadline_disprove_it() {
        let mut p = started(counters(10, 0));
        assert_eq!(p.step(t(59), counters(20, 0), 3), Verdict::Wait);
        assert_eq!(
            p.step(t(60), counters(20, 0), 3),
            Verdict::Ineffective { unanswered: 10 }
        );
        // Too few requests: not disproved, it waits.
        let mut p = started(counters(10, 0));
        assert_eq!(p.step(t(61), counters(11, 0), 3), Verdict::Wait);
    }

    #[test]
    fn no_evidence_either_way_times_out_a_window_after_the_deadline() {
        let mut p = started(counters(10, 0));
        assert_eq!(p.step(t(119), counters(10, 0), 3), Verdict::Wait);
        assert_eq!(p.step(t(120), counters(10, 0), 3), Verdict::TimedOut);
        assert_eq!(p.times_out_at(), t(120));
    }

    #[test]
    fn a_resumed_verification_takes_its_baseline_then_keeps_the_journaled_deadline() {
        let mut p = PendingVerification::resumed(
            "k",
            "eth1@10.0.0.5",
            "eth1",
            Ipv4Addr::new(10, 0, 0, 5),
            t(0),
            t(60),
        );
        // First sight after the restart: counters of the new watch become the baseline.
        assert_eq!(p.step(t(30), counters(2, 0), 3), Verdict::Wait);
        assert_eq!(p.baseline, Some(counters(2, 0)));
        assert_eq!(p.step(t(40), counters(9, 0), 3), Verdict::Wait);
        assert_eq!(
            p.step(t(60), counters(9, 0), 3),
            Verdict::Ineffective { unanswered: 7 }
        );
        // Resumed and answered.
        let mut p = PendingVerification::resumed(
            "k",
            "eth1@10.0.0.5",
            "eth1",
            Ipv4Addr::new(10, 0, 0, 5),
            t(0),
            t(60),
        );
        assert_eq!(p.step(t(30), counters(2, 0), 3), Verdict::Wait);
        assert_eq!(
            p.step(t(31), counters(3, 1), 3),
            Verdict::Verified { answers: 1 }
        );
    }

    #[test]
    fn a_resumed_verification_long_past_its_window_times_out_at_once() {
        let mut p = PendingVerification::resumed(
            "k",
            "eth1@10.0.0.5",
            "eth1",
            Ipv4Addr::new(10, 0, 0, 5),
            t(0),
            t(60),
        );
        assert_eq!(p.step(t(500), counters(0, 0), 3), Verdict::TimedOut);
    }

    #[test]
    fn counters_going_backwards_start_the_baseline_again() {
        let mut p = started(counters(10, 5));
        assert_eq!(p.step(t(10), counters(1, 0), 3), Verdict::Wait);
        assert_eq!(p.baseline, Some(counters(1, 0)));
        assert_eq!(
            p.step(t(11), counters(2, 1), 3),
            Verdict::Verified { answers: 1 }
        );
    }
}
