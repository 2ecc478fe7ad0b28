//! What the guards need to know of the past, distilled from the journal: per finding key the last
//! attempt and how many fixes were applied within the breaker window, and node-wide how many
//! fixes were applied in the last hour. Pure: built from journal entries by the caller.

use crate::model::finding::Outcome;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Attempts older than this no longer count towards a circuit breaker: a breaker that opened
/// closes (and the fix is tried again) a day after its last attempt.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One past fix attempt, as the journal recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub key: String,
    pub at: SystemTime,
    pub outcome: Outcome,
    /// The process that re-created the fault after this attempt, when events named it.
    pub readded_by: Option<String>,
}

/// Counters the guards read.
#[derive(Debug, Clone, Default)]
pub struct FixHistory {
    /// key -> times a fix changed the kernel for it (applied, in the breaker window).
    applied: HashMap<String, Vec<SystemTime>>,
    /// key -> last time a fix was tried (applied or failed).
    last_attempt: HashMap<String, SystemTime>,
    /// every application on the node (for the hourly budget).
    node_applied: Vec<SystemTime>,
    /// key -> who re-added the fault last, when known.
    readded_by: HashMap<String, String>,
}

impl FixHistory {
    pub fn from_attempts<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> FixHistory {
        let mut history = FixHistory::default();
        for attempt in attempts {
            history.record(attempt);
        }
        history
    }

    /// Adds one attempt.
    pub fn record(&mut self, attempt: &Attempt) {
        // An unknown commit may have changed the kernel: it counts as an application (once; what
        // the re-read found is journaled after it as verified or failed, which do not count again).
        let changed_kernel = matches!(
            attempt.outcome,
            Outcome::Applied
                | Outcome::Verified
                | Outcome::Ineffective
                | Outcome::Reverted
                | Outcome::Unknown
        );
        let tried = changed_kernel || attempt.outcome == Outcome::Failed;
        if matches!(attempt.outcome, Outcome::Applied | Outcome::Unknown) {
            self.applied
                .entry(attempt.key.clone())
                .or_default()
                .push(attempt.at);
            self.node_applied.push(attempt.at);
        }
        if tried {
            let last = self
                .last_attempt
                .entry(attempt.key.clone())
                .or_insert(attempt.at);
            if attempt.at > *last {
                *last = attempt.at;
            }
        }
        if let Some(by) = &attempt.readded_by {
            self.readded_by.insert(attempt.key.clone(), by.clone());
        }
    }

    /// Fixes applied for `key` within the breaker window before `now`.
    pub fn applied_within_window(&self, key: &str, now: SystemTime) -> u32 {
        self.applied
            .get(key)
            .map(|times| {
                times
                    .iter()
                    .filter(|t| within(**t, now, BREAKER_WINDOW))
                    .count() as u32
            })
            .unwrap_or(0)
    }

    pub fn last_attempt(&self, key: &str) -> Option<SystemTime> {
        self.last_attempt.get(key).copied()
    }

    /// Fixes applied on the node in the hour before `now`.
    pub fn applied_last_hour(&self, now: SystemTime) -> u32 {
        self.node_applied
            .iter()
            .filter(|t| within(**t, now, Duration::from_secs(3600)))
            .count() as u32
    }

    pub fn readded_by(&self, key: &str) -> Option<&str> {
        self.readded_by.get(key).map(String::as_str)
    }

    /// Forgets what no guard can need any more: applications older than the breaker window (the
    /// hourly budget's hour is inside it) and last attempts older than `keep_attempts` (the
    /// longest cooldown, at least the breaker window), so a long-running agent's history stays
    /// as small as the last day's activity.
    pub fn prune(&mut self, now: SystemTime, keep_attempts: Duration) {
        let keep_attempts = keep_attempts.max(BREAKER_WINDOW);
        self.applied.retain(|_, times| {
            times.retain(|t| within(*t, now, BREAKER_WINDOW));
            !times.is_empty()
        });
        self.node_applied
            .retain(|t| within(*t, now, Duration::from_secs(3600)));
        self.last_attempt
            .retain(|_, t| within(*t, now, keep_attempts));
        let applied = &self.applied;
        let last_attempt = &self.last_attempt;
        self.readded_by
            .retain(|k, _| applied.contains_key(k) || last_attempt.contains_key(k));
    }

    /// Number of keys the history remembers (for tests and /status).
    pub fn len(&self) -> usize {
        self.last_attempt.len().max(self.applied.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn within(at: SystemTime, now: SystemTime, span: Duration) -> bool {
    match now.duration_since(at) {
        Ok(age) => age < span,
        // A time after now (clock stepped back): count it, to stay on the safe side.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at: u64, outcome: Outcome) -> Attempt {
        Attempt {
            key: "k".into(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            outcome,
            readded_by: None,
        }
    }

    fn keyed_attempt(key: &str, at: SystemTime, outcome: Outcome) -> Attempt {
        Attempt {
            key: key.into(),
            at,
            outcome,
            readded_by: Some("kube-proxy".into()),
        }
    }

    #[test]
    fn an_unknown_commit_counts_once_for_the_breaker_whatever_the_re_read_found() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        // unknown then settled as verified (it applied), and unknown then failed (it did not).
        let history = FixHistory::from_attempts(&[
            attempt(100, Outcome::Unknown),
            attempt(101, Outcome::Verified),
            attempt(200, Outcome::Unknown),
            attempt(201, Outcome::Failed),
        ]);
        assert_eq!(history.applied_within_window("k", now), 2);
        assert_eq!(history.applied_last_hour(now), 2);
        assert_eq!(
            history.last_attempt("k"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(201))
        );
        // A refusal before anything was sent does not count as an application.
        let refused = FixHistory::from_attempts(&[attempt(100, Outcome::Failed)]);
        assert_eq!(refused.applied_within_window("k", now), 0);
    }

    #[test]
    fn pruning_keeps_what_the_guards_still_count() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(24 * 3600);
        let mut h = FixHistory::default();
        h.record(&keyed_attempt("old", t0, Outcome::Applied));
        h.record(&keyed_attempt("recent", t0 + day, Outcome::Applied));
        h.record(&keyed_attempt(
            "recent",
            t0 + day + Duration::from_secs(7200),
            Outcome::Applied,
        ));
        let now = t0 + day + Duration::from_secs(7200 + 60);
        let before = (
            h.applied_within_window("recent", now),
            h.applied_last_hour(now),
            h.last_attempt("recent"),
        );
        h.prune(now, Duration::from_secs(300));
        assert_eq!(
            before,
            (
                h.applied_within_window("recent", now),
                h.applied_last_hour(now),
                h.last_attempt("recent")
            )
        );
        assert_eq!(h.applied_within_window("recent", now), 2);
        assert_eq!(h.applied_last_hour(now), 1);
        assert_eq!(h.last_attempt("old"), None, "older than a day");
        assert_eq!(h.readded_by("old"), None);
        assert_eq!(h.readded_by("recent"), Some("kube-proxy"));
        assert_eq!(h.len(), 1);
        // A cooldown longer than a day keeps its last attempt.
        let mut h = FixHistory::default();
        h.record(&keyed_attempt("slow", t0, Outcome::Failed));
        h.prune(t0 + day + day / 2, day * 2);
        assert_eq!(h.last_attempt("slow"), Some(t0));
    }
}
