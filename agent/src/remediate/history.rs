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
}
