//! What the agent shows and counts per finding between passes: the last fix state of each finding
//! (so a skip is counted and journaled when it changes, not on every pass: a dry-run finding seen
//! for a week is one `skipped_dry_run`, not 3 million), and the report of an applied fix, which
//! stays shown while the guards hold the next attempt back.

use crate::model::finding::{FixId, FixReport, Outcome};
use std::collections::{HashMap, HashSet};

/// Per-finding memory of fix states.
#[derive(Debug, Default)]
pub struct FixLedger {
    last_state: HashMap<String, Outcome>,
    last_reports: HashMap<String, FixReport>,
}

/// How a held-back fix is shown, and whether its state changed since the last pass.
pub struct Shown {
    pub report: FixReport,
    pub changed: bool,
}

impl FixLedger {
    /// A guard held `fix` back with `outcome` this pass.
    pub fn held(&mut self, key: &str, fix: FixId, outcome: Outcome, detail: &str) -> Shown {
        let report = match (outcome, self.last_reports.get(key)) {
            // After an apply, keep showing its result while the cooldown holds it back.
            (Outcome::SkippedCooldown, Some(previous)) => FixReport {
                detail: format!("{}; {detail}", previous.detail),
                ..previous.clone()
            },
            _ => FixReport {
                name: fix,
                state: outcome.state(),
                detail: detail.to_string(),
            },
        };
        let changed = self.last_state.get(key) != Some(&outcome);
        if changed {
            self.last_state.insert(key.to_string(), outcome);
        }
        Shown { report, changed }
    }

    /// A fix ran (or a pending one settled) with `report` as its final state.
    pub fn acted(&mut self, key: &str, outcome: Outcome, report: FixReport) {
        self.last_state.insert(key.to_string(), outcome);
        self.last_reports.insert(key.to_string(), report);
    }

    /// Forgets findings that are gone.
    pub fn retain(&mut self, present: &HashSet<String>) {
        self.last_state.retain(|k, _| present.contains(k));
        self.last_reports.retain(|k, _| present.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_new_once_and_an_apply_stays_shown_through_the_cooldown() {
        let fix = FixId::new("f");
        let mut ledger = FixLedger::default();
        assert!(ledger.held("k", fix, Outcome::SkippedDryRun, "d").changed);
        assert!(!ledger.held("k", fix, Outcome::SkippedDryRun, "d").changed);
        ledger.acted(
            "k",
            Outcome::Verified,
            FixReport {
                name: fix,
                state: Outcome::Verified.state(),
                detail: "flushed".into(),
            },
        );
        let shown = ledger.held("k", fix, Outcome::SkippedCooldown, "cooldown 4m left");
        assert!(shown.changed);
        assert_eq!(shown.report.state, Outcome::Verified.state());
        assert_eq!(shown.report.detail, "flushed; cooldown 4m left");
        ledger.retain(&HashSet::new());
        let shown = ledger.held("k", fix, Outcome::SkippedCooldown, "x");
        assert_eq!(shown.report.state, Outcome::SkippedCooldown.state());
    }
}
