//! The guards every fix passes (docs/checks.md), in order, as one pure decision with a typed
//! reason:
//!
//! 1. the check proposed a concrete action (else `blocked`, with the check's reason);
//! 2. `mode: dry-run` reports what would be done (`dry-run`); in `enforce` a fix that is not
//!    `enabled` is `disabled`;
//! 3. the finding has persisted as long as its check asks (`staleAfter`; in one-shot runs counted
//!    from the first run that saw it) and, in the agent, for the fix's `confirmFor` (else
//!    `pending`);
//! 4. the circuit breaker: a fault fixed `maxAttempts` times within the breaker window that is back
//!    again is no longer fixed (`circuit-open`, naming who re-added it when known);
//! 5. per-subject cooldown since the last attempt (`cooldown`);
//! 6. the node-wide hourly budget (`cooldown` with outcome `skipped_budget`).
//!
//! Passing all of them gives [`Decision::Apply`]; the caller still re-checks the precondition on a
//! fresh snapshot right before acting, and verifies afterwards.

use crate::config::{Config, Mode};
use crate::model::finding::{FixAction, FixId, Outcome};
use crate::remediate::history::FixHistory;
use crate::remediate::tracker::TrackedFinding;
use std::time::SystemTime;

/// What to do with one finding's fix now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Apply {
        fix: FixId,
        action: FixAction,
    },
    Skip {
        fix: FixId,
        outcome: Outcome,
        detail: String,
    },
}

impl Decision {
    pub fn fix(&self) -> FixId {
        match self {
            Decision::Apply { fix, .. } | Decision::Skip { fix, .. } => *fix,
        }
    }
}

/// How the guards are applied: the agent uses every guard; the one-shot `check --apply` has no
/// history to confirm a finding over, so it skips the confirmation guard (its window already
/// required the finding to persist where the check asks for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardScope {
    Agent,
    OneShot,
}

/// Decides for one tracked finding. None when the check has no fix.
pub fn decide(
    tracked: &TrackedFinding,
    config: &Config,
    history: &FixHistory,
    now: SystemTime,
    scope: GuardScope,
) -> Option<Decision> {
    let proposal = tracked.finding.proposal.as_ref()?;
    let fix = proposal.fix;
    let key = tracked.finding.key();
    let skip = |outcome: Outcome, detail: String| {
        Some(Decision::Skip {
            fix,
            outcome,
            detail,
        })
    };
    let Some(action) = proposal.action.clone() else {
        return skip(Outcome::Blocked, proposal.detail.clone());
    };
    let guard = config.fix(fix);
    if config.mode == Mode::DryRun {
        let note = if guard.enabled {
            String::new()
        } else {
            format!(" (and fixes.{fix}.enabled is false)")
        };
        return skip(
            Outcome::SkippedDryRun,
            format!("{}; mode is dry-run{note}", proposal.detail),
        );
    }
    if !guard.enabled {
        return skip(
            Outcome::SkippedDisabled,
            format!(
                "{}; set fixes.{fix}.enabled: true to apply",
                proposal.detail
            ),
        );
    }
    // A finding whose check asks it to persist (a Cilium backup lives for milliseconds while
    // Cilium works) is not mended before it has: in the agent the tracker already holds it back;
    // in a one-shot run its age is counted from when `netmend check` first saw it, across runs.
    let persist_for = crate::detect::check(tracked.finding.check)
        .map(|c| c.persist_for(config))
        .unwrap_or_default();
    let age = tracked.age(now);
    if age < persist_for {
        return skip(
            Outcome::SkippedUnconfirmed,
            format!(
                "{}; not before the finding has persisted {} (seen for {})",
                proposal.detail,
                humantime::format_duration(persist_for),
                humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
            ),
        );
    }
    if scope == GuardScope::Agent && age < guard.confirm_for {
        return skip(
            Outcome::SkippedUnconfirmed,
            format!(
                "waiting for the finding to persist {} (seen for {})",
                humantime::format_duration(guard.confirm_for),
                humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
            ),
        );
    }
    let attempts = history.applied_within_window(&key, now);
    if attempts >= guard.max_attempts {
        let who = history
            .readded_by(&key)
            .map(|by| format!("; re-added by {by}"))
            .unwrap_or_default();
        return skip(
            Outcome::SkippedCircuitOpen,
            format!(
                "fixed {attempts} times and back again: no longer fixed (circuit open){who}; find what re-creates it"
            ),
        );
    }
    if let Some(last) = history.last_attempt(&key) {
        let since = now.duration_since(last).unwrap_or_default();
        if since < guard.cooldown {
            let left = guard.cooldown - since;
            return skip(
                Outcome::SkippedCooldown,
                format!(
                    "last attempt {} ago; cooldown {} left",
                    humantime::format_duration(std::time::Duration::from_secs(since.as_secs())),
                    humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
                ),
            );
        }
    }
    let spent = history.applied_last_hour(now);
    if spent >= config.fixes_per_hour {
        return skip(
            Outcome::SkippedBudget,
            format!(
                "node-wide budget of {} fixes per hour spent",
                config.fixes_per_hour
            ),
        );
    }
    Some(Decision::Apply { fix, action })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::finding::{CheckId, Finding, FixProposal, Severity, TableRef};
    use crate::model::ruleset::{Backend, Family};
    use crate::remediate::history::Attempt;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn action() -> FixAction {
        FixAction::FlushChain {
            table: TableRef {
                backend: Backend::Nft,
                family: Family::Ip,
                table: "nat".into(),
            },
            chain: "OLD_CILIUM_POST_nat".into(),
            rules: 5,
            delete_chain: true,
            content_hash: 42,
        }
    }

    fn tracked(since: SystemTime, action: Option<FixAction>) -> TrackedFinding {
        TrackedFinding {
            finding: Finding {
                check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
                subject: "ip nat OLD_CILIUM_POST_nat".into(),
                severity: Severity::Warning,
                message: String::new(),
                evidence: serde_json::json!({}),
                proposal: Some(FixProposal {
                    fix: FixId::FLUSH_STALE_CHAIN,
                    action,
                    detail: "would flush 5 rules and delete the chain".into(),
                }),
                discriminator: None,
            },
            since,
        }
    }

    fn enforce() -> Config {
        let mut config = Config::from_yaml(
            "mode: enforce\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 30s, cooldown: 5m, maxAttempts: 3 }\nbudget: { fixesPerHour: 4 }\n",
        )
        .unwrap();
        config.fixes_per_hour = 4;
        config
    }

    fn outcome(d: Option<Decision>) -> Outcome {
        match d.unwrap() {
            Decision::Skip { outcome, .. } => outcome,
            Decision::Apply { .. } => Outcome::Applied,
        }
    }

    fn applied(key: &str, at: SystemTime) -> Attempt {
        Attempt {
            key: key.into(),
            at,
            outcome: Outcome::Applied,
            readded_by: None,
        }
    }

    #[test]
    fn defaults_are_dry_run_and_say_what_would_happen() {
        let d = decide(
            &tracked(t(0), Some(action())),
            &Config::default(),
            &FixHistory::default(),
            t(100),
            GuardScope::Agent,
        );
        match d.unwrap() {
            Decision::Skip {
                outcome, detail, ..
            } => {
                assert_eq!(outcome, Outcome::SkippedDryRun);
                assert_eq!(
                    detail,
                    "would flush 5 rules and delete the chain; mode is dry-run (and fixes.flush-stale-chain.enabled is false)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn enforce_without_enabled_is_disabled_and_blocked_proposals_stay_blocked() {
        let mut config = enforce();
        config
            .fixes
            .get_mut(&FixId::FLUSH_STALE_CHAIN)
            .unwrap()
            .guard
            .enabled = false;
        let h = FixHistory::default();
        assert_eq!(
            outcome(decide(
                &tracked(t(0), Some(action())),
                &config,
                &h,
                t(100),
                GuardScope::Agent
            )),
            Outcome::SkippedDisabled
        );
        assert_eq!(
            outcome(decide(
                &tracked(t(0), None),
                &enforce(),
                &h,
                t(100),
                GuardScope::Agent
            )),
            Outcome::Blocked
        );
    }

    #[test]
    fn confirmation_time_applies_to_the_agent_only() {
        let h = FixHistory::default();
        let young = tracked(t(90), Some(action()));
        assert_eq!(
            outcome(decide(&young, &enforce(), &h, t(100), GuardScope::Agent)),
            Outcome::SkippedUnconfirmed
        );
        // One-shot runs skip confirmFor; the check's own persistence (staleAfter) still holds.
        let no_stale_after = {
            let mut config = enforce();
            let yaml = "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 30s }\n";
            let parsed = Config::from_yaml(yaml).unwrap();
            config.checks = parsed.checks;
            config
        };
        assert_eq!(
            outcome(decide(
                &young,
                &no_stale_after,
                &h,
                t(100),
                GuardScope::OneShot
            )),
            Outcome::Applied
        );
        assert_eq!(
            outcome(decide(&young, &enforce(), &h, t(100), GuardScope::OneShot)),
            Outcome::SkippedUnconfirmed,
            "seen for 10s of the 30s staleAfter"
        );
        assert_eq!(
            outcome(decide(
                &tracked(t(70), Some(action())),
                &enforce(),
                &h,
                t(100),
                GuardScope::Agent
            )),
            Outcome::Applied
        );
    }

    #[test]
    fn cooldown_then_breaker_then_it_closes_after_the_window() {
        let f = tracked(t(0), Some(action()));
        let key = f.finding.key();
        let mut h = FixHistory::default();
        h.record(&applied(&key, t(100)));
        assert_eq!(
            outcome(decide(&f, &enforce(), &h, t(200), GuardScope::Agent)),
            Outcome::SkippedCooldown
        );
        assert_eq!(
            outcome(decide(&f, &enforce(), &h, t(401), GuardScope::Agent)),
            Outcome::Applied
        );
        h.record(&applied(&key, t(401)));
        h.record(&Attempt {
            readded_by: Some("cilium-agent".into()),
            ..applied(&key, t(702))
        });
        match decide(&f, &enforce(), &h, t(1003), GuardScope::Agent).unwrap() {
            Decision::Skip {
                outcome, detail, ..
            } => {
                assert_eq!(outcome, Outcome::SkippedCircuitOpen);
                assert!(detail.contains("re-added by cilium-agent"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let a_day_later =
            t(702) + crate::remediate::history::BREAKER_WINDOW + Duration::from_secs(1);
        assert_eq!(
            outcome(decide(&f, &enforce(), &h, a_day_later, GuardScope::Agent)),
            Outcome::Applied
        );
    }

    #[test]
    fn node_budget_caps_fixes_per_hour() {
        let f = tracked(t(0), Some(action()));
        let mut h = FixHistory::default();
        for i in 0..4 {
            h.record(&applied(&format!("other-{i}"), t(100 + i)));
        }
        assert_eq!(
            outcome(decide(&f, &enforce(), &h, t(200), GuardScope::Agent)),
            Outcome::SkippedBudget
        );
        assert_eq!(
            outcome(decide(&f, &enforce(), &h, t(3800), GuardScope::Agent)),
            Outcome::Applied
        );
    }
}
