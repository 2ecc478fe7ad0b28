//! What the engine tells the cluster after a pass, built from what the pass reported: every
//! enabled check's state (failing, and a short summary of its findings' subjects and fix states)
//! and the events of the pass. Events are transitions only: a finding raised when it first
//! becomes reported, cleared when it is no longer there, and a fix outcome when it is journaled,
//! never the same event on every pass. Pure.

use crate::config::Config;
use crate::journal::JournalEntry;
use crate::model::finding::{CheckId, Finding, FixReport, Outcome};
use crate::runtime::cluster::{CheckState, NodeEvent};
use std::collections::BTreeMap;

/// How many subjects a check's summary names before it says how many more there are.
const SUMMARY_SUBJECTS: usize = 5;

/// One finding as the pass reported it, with its fix state.
pub struct Reported<'a> {
    pub finding: &'a Finding,
    pub fix: Option<&'a FixReport>,
}

/// Every enabled check's state after a pass (checks in catalog order). A check that could not
/// judge the node (`not_judged`, with why) is not failing and its summary says why.
pub fn check_states(
    config: &Config,
    reported: &[Reported<'_>],
    not_judged: &[(CheckId, String)],
) -> Vec<CheckState> {
    crate::detect::CHECKS
        .iter()
        .map(|c| c.id())
        .filter(|id| config.check_enabled(*id))
        .map(|check| {
            let mine: Vec<&Reported<'_>> = reported
                .iter()
                .filter(|r| r.finding.check == check)
                .collect();
            let why_not = not_judged.iter().find(|(c, _)| *c == check);
            CheckState {
                check,
                failing: !mine.is_empty(),
                summary: match why_not {
                    Some((_, why)) if mine.is_empty() => format!("not judged on this node: {why}"),
                    _ => summary(&mine),
                },
            }
        })
        .collect()
}

/// `ip nat CNI-DN-1 (remove-hijack-rule: verified); ...; and 3 more`, or that there is nothing.
fn summary(findings: &[&Reported<'_>]) -> String {
    if findings.is_empty() {
        return "no findings on this node".to_string();
    }
    let mut parts: Vec<String> = findings
        .iter()
        .take(SUMMARY_SUBJECTS)
        .map(|r| match r.fix {
            Some(fix) => format!(
                "{} ({}: {})",
                r.finding.subject,
                fix.name,
                fix.state.as_str()
            ),
            None => r.finding.subject.clone(),
        })
        .collect();
    if findings.len() > SUMMARY_SUBJECTS {
        parts.push(format!("and {} more", findings.len() - SUMMARY_SUBJECTS));
    }
    parts.join("; ")
}

/// The findings reported on the last pass, to tell which ones are new and which are gone.
#[derive(Debug, Default)]
pub struct FindingTransitions {
    /// Finding key -> (check, subject).
    reported: BTreeMap<String, (CheckId, String)>,
}

impl FindingTransitions {
    /// Raised and cleared events between the last pass and this one. A finding of a check that
    /// is no longer enabled is forgotten without a cleared event: its fault was not mended, and
    /// its condition is removed with the check.
    pub fn next(&mut self, config: &Config, reported: &[Reported<'_>]) -> Vec<NodeEvent> {
        let mut now: BTreeMap<String, (CheckId, String)> = BTreeMap::new();
        let mut events = Vec::new();
        for r in reported {
            let key = r.finding.key();
            if !self.reported.contains_key(&key) && !now.contains_key(&key) {
                events.push(NodeEvent::FindingRaised {
                    check: r.finding.check,
                    subject: r.finding.subject.clone(),
                    message: r.finding.message.clone(),
                });
            }
            now.insert(key, (r.finding.check, r.finding.subject.clone()));
        }
        for (key, (check, subject)) in std::mem::take(&mut self.reported) {
            if !now.contains_key(&key) && config.check_enabled(check) {
                events.push(NodeEvent::FindingCleared { check, subject });
            }
        }
        self.reported = now;
        events
    }

    /// Forgets every finding without an event (the checks stopped running on this node).
    pub fn forget(&mut self) {
        self.reported.clear();
    }
}

/// The event of a journaled fix outcome, for the outcomes worth one: applied, verified,
/// ineffective, failed, reverted, and the breaker opening.
pub fn fix_event(entry: &JournalEntry) -> Option<NodeEvent> {
    let outcome = entry.outcome()?;
    if !matches!(
        outcome,
        Outcome::Applied
            | Outcome::Verified
            | Outcome::Ineffective
            | Outcome::Failed
            | Outcome::Reverted
            | Outcome::SkippedCircuitOpen
    ) {
        return None;
    }
    Some(NodeEvent::Fix {
        check: crate::detect::check_named(entry.check.as_deref()?)?.id(),
        subject: entry.subject.clone(),
        fix: crate::remediate::fixes::fix_named(&entry.fix)?.id(),
        outcome,
        detail: entry.detail.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::finding::{FixId, FixState, Severity};
    use std::time::SystemTime;

    fn finding(check: CheckId, subject: &str) -> Finding {
        Finding {
            check,
            subject: subject.into(),
            severity: Severity::Warning,
            message: format!("{subject} is broken"),
            evidence: serde_json::json!({}),
            proposal: None,
            discriminator: None,
        }
    }

    #[test]
    fn every_enabled_check_has_a_state_and_a_disabled_one_none() {
        let config = Config::from_yaml("checks:\n  promisc-lost: { enabled: false }\n").unwrap();
        let stale = finding(
            CheckId::CILIUM_STALE_BACKUP_CHAIN,
            "ip nat OLD_CILIUM_POST_nat",
        );
        let fix = FixReport {
            name: FixId::FLUSH_STALE_CHAIN,
            state: FixState::DryRun,
            detail: "would flush".into(),
        };
        let states = check_states(
            &config,
            &[Reported {
                finding: &stale,
                fix: Some(&fix),
            }],
            &[(
                CheckId::HOSTPORT_STALE,
                "needs the Kubernetes API (pods)".into(),
            )],
        );
        let enabled: Vec<CheckId> = crate::detect::CHECKS
            .iter()
            .map(|c| c.id())
            .filter(|id| config.check_enabled(*id))
            .collect();
        assert_eq!(states.iter().map(|s| s.check).collect::<Vec<_>>(), enabled);
        assert!(!states.iter().any(|s| s.check == CheckId::PROMISC_LOST));
        let stale_state = states
            .iter()
            .find(|s| s.check == CheckId::CILIUM_STALE_BACKUP_CHAIN)
            .unwrap();
        assert!(stale_state.failing);
        assert_eq!(
            stale_state.summary,
            "ip nat OLD_CILIUM_POST_nat (flush-stale-chain: dry-run)"
        );
        let hijack = states
            .iter()
            .find(|s| s.check == CheckId::HOSTPORT_HIJACK)
            .unwrap();
        assert!(!hijack.failing);
        assert_eq!(hijack.summary, "no findings on this node");
        let unjudged = states
            .iter()
            .find(|s| s.check == CheckId::HOSTPORT_STALE)
            .unwrap();
        assert!(!unjudged.failing);
        assert_eq!(
            unjudged.summary,
            "not judged on this node: needs the Kubernetes API (pods)"
        );
    }

    #[test]
    fn a_long_list_of_subjects_is_cut_short() {
        let findings: Vec<Finding> = (0..8)
            .map(|i| finding(CheckId::HOSTPORT_HIJACK, &format!("ip nat C{i}")))
            .collect();
        let reported: Vec<Reported<'_>> = findings
            .iter()
            .map(|finding| Reported { finding, fix: None })
            .collect();
        let states = check_states(&Config::default(), &reported, &[]);
        let hijack = states
            .iter()
            .find(|s| s.check == CheckId::HOSTPORT_HIJACK)
            .unwrap();
        assert_eq!(
            hijack.summary,
            "ip nat C0; ip nat C1; ip nat C2; ip nat C3; ip nat C4; and 3 more"
        );
    }

    #[test]
    fn raised_and_cleared_only_on_transitions() {
        let config = Config::default();
        let a = finding(CheckId::HOSTPORT_HIJACK, "a");
        let b = finding(CheckId::HOSTPORT_HIJACK, "b");
        let mut transitions = FindingTransitions::default();
        fn one(finding: &Finding) -> Reported<'_> {
            Reported { finding, fix: None }
        }
        let events = transitions.next(&config, &[one(&a)]);
        assert_eq!(
            events,
            vec![NodeEvent::FindingRaised {
                check: CheckId::HOSTPORT_HIJACK,
                subject: "a".into(),
                message: "a is broken".into(),
            }]
        );
        assert!(transitions.next(&config, &[one(&a)]).is_empty());
        let events = transitions.next(&config, &[one(&b)]);
        assert_eq!(
            events,
            vec![
                NodeEvent::FindingRaised {
                    check: CheckId::HOSTPORT_HIJACK,
                    subject: "b".into(),
                    message: "b is broken".into(),
                },
                NodeEvent::FindingCleared {
                    check: CheckId::HOSTPORT_HIJACK,
                    subject: "a".into(),
                }
            ]
        );
        assert!(transitions.next(&config, &[one(&b)]).is_empty());
        // The check is disabled: its findings go without a cleared event.
        let off = Config::from_yaml("checks:\n  hostport-hijack: { enabled: false }\n").unwrap();
        assert!(transitions.next(&off, &[]).is_empty());
    }

    #[test]
    fn fix_events_for_the_outcomes_worth_one() {
        let entry = |outcome: Outcome| {
            JournalEntry::new(
                SystemTime::UNIX_EPOCH,
                Some(CheckId::CILIUM_STALE_BACKUP_CHAIN),
                FixId::FLUSH_STALE_CHAIN,
                "ip nat OLD_CILIUM_POST_nat",
                "k",
                outcome,
                "flushed 5 rules",
            )
        };
        assert_eq!(
            fix_event(&entry(Outcome::Verified)),
            Some(NodeEvent::Fix {
                check: CheckId::CILIUM_STALE_BACKUP_CHAIN,
                subject: "ip nat OLD_CILIUM_POST_nat".into(),
                fix: FixId::FLUSH_STALE_CHAIN,
                outcome: Outcome::Verified,
                detail: "flushed 5 rules".into(),
            })
        );
        for outcome in [
            Outcome::Applied,
            Outcome::Ineffective,
            Outcome::Failed,
            Outcome::Reverted,
            Outcome::SkippedCircuitOpen,
        ] {
            assert!(fix_event(&entry(outcome)).is_some(), "{outcome:?}");
        }
        for outcome in [
            Outcome::Blocked,
            Outcome::SkippedBudget,
            Outcome::SkippedNoSlot,
            Outcome::SkippedPreconditionMoved,
            Outcome::Unknown,
        ] {
            assert!(fix_event(&entry(outcome)).is_none(), "{outcome:?}");
        }
    }
}
