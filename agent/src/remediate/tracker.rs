//! Keeps `since` for every finding across passes, and decides which findings are old enough to be
//! reported (a check's own persistence rule, e.g. `staleAfter` for Cilium backup chains).
//!
//! State transitions of one finding key, per pass:
//! - absent -> seen: `since = now`.
//! - seen -> seen: `since` kept (the finding persists).
//! - seen -> absent: forgotten at once; if it comes back, `since` starts again. A fault that
//!   flaps therefore never reaches its confirmation time, which is what we want: only persistent
//!   findings may trigger a fix.

use crate::model::finding::Finding;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// A finding with the time it was first seen in an unbroken run of passes.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFinding {
    pub finding: Finding,
    pub since: SystemTime,
}

impl TrackedFinding {
    /// How long the finding has persisted at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.since).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    since: HashMap<String, SystemTime>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Records one pass's findings (all of them: a pass reports every finding it sees) and returns
    /// them with their `since`.
    pub fn observe(&mut self, findings: Vec<Finding>, now: SystemTime) -> Vec<TrackedFinding> {
        let mut next: HashMap<String, SystemTime> = HashMap::with_capacity(findings.len());
        let tracked = findings
            .into_iter()
            .map(|finding| {
                let key = finding.key();
                let since = self.since.get(&key).copied().unwrap_or(now);
                next.insert(key, since);
                TrackedFinding { finding, since }
            })
            .collect();
        self.since = next;
        tracked
    }

    /// When the finding with `key` was first seen, if it is present.
    pub fn since(&self, key: &str) -> Option<SystemTime> {
        self.since.get(key).copied()
    }
}

/// Keeps the findings whose check's persistence rule is met: `min_age(check)` returns how long a
/// finding of that check must have been seen before it is reported.
pub fn persistent(
    tracked: Vec<TrackedFinding>,
    now: SystemTime,
    min_age: impl Fn(&Finding) -> Duration,
) -> Vec<TrackedFinding> {
    tracked
        .into_iter()
        .filter(|t| t.age(now) >= min_age(&t.finding))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::finding::{CheckId, Severity};

    fn finding(subject: &str) -> Finding {
        Finding {
            check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
            subject: subject.into(),
            severity: Severity::Warning,
            message: String::new(),
            evidence: serde_json::json!({}),
            proposal: None,
            discriminator: None,
        }
    }

    #[test]
    fn since_is_kept_while_present_and_reset_after_a_gap() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut tracker = Tracker::new();
        let a = tracker.observe(vec![finding("a")], t0);
        assert_eq!(a[0].since, t0);
        let a = tracker.observe(
            vec![finding("a"), finding("b")],
            t0 + Duration::from_secs(10),
        );
        assert_eq!(a[0].since, t0);
        assert_eq!(a[1].since, t0 + Duration::from_secs(10));
        tracker.observe(vec![finding("b")], t0 + Duration::from_secs(20));
        assert_eq!(tracker.since(&finding("a").key()), None);
        let a = tracker.observe(vec![finding("a")], t0 + Duration::from_secs(30));
        assert_eq!(a[0].since, t0 + Duration::from_secs(30));
    }

    #[test]
    fn persistence_filter_uses_the_checks_minimum_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut tracker = Tracker::new();
        tracker.observe(vec![finding("old")], t0);
        let now = t0 + Duration::from_secs(30);
        let tracked = tracker.observe(vec![finding("old"), finding("new")], now);
        let kept = persistent(tracked, now, |_| Duration::from_secs(30));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].finding.subject, "old");
    }
}
