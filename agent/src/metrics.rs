//! The Prometheus registry of the agent (names of docs/interface.md) and one function per
//! occurrence that both counts and logs it, so a metric and its log line never disagree. Label
//! values come only from closed sets (check ids, fix ids, outcomes, source names).

use crate::model::finding::{CheckId, FixId, Outcome};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Source names, a closed set.
pub const SOURCES: [&str; 7] = [
    "nftables",
    "iptables-legacy",
    "sockets",
    "addresses",
    "links",
    "arp",
    "bpf",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FixOutcomeLabels {
    pub fix: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FixLabel {
    pub fix: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestErrorLabels {
    pub verb: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    findings: Family<CheckLabel, Gauge>,
    fix_attempts: Family<FixOutcomeLabels, Counter>,
    circuit_open: Family<FixLabel, Gauge>,
    source_up: Family<SourceLabel, Gauge>,
    snapshot_duration: Family<SourceLabel, Histogram>,
    config_reloads: Family<ResultLabel, Counter>,
    ready: Gauge,
    nft_events: Counter,
    resyncs: Family<ResultLabel, Counter>,
    journal_skipped: Family<ReasonLabel, Counter>,
    kube_up: Gauge,
    kube_request_errors: Family<RequestErrorLabels, Counter>,
    fix_slot_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("netmend");
        let findings = Family::<CheckLabel, Gauge>::default();
        registry.register("findings", "Findings active now", findings.clone());
        let fix_attempts = Family::<FixOutcomeLabels, Counter>::default();
        registry.register(
            "fix_attempts",
            "Fix decisions and their outcomes",
            fix_attempts.clone(),
        );
        let circuit_open = Family::<FixLabel, Gauge>::default();
        registry.register(
            "circuit_open",
            "Subjects whose fix breaker is open",
            circuit_open.clone(),
        );
        let source_up = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_up",
            "Whether a source was read successfully on the last pass",
            source_up.clone(),
        );
        let snapshot_duration = Family::<SourceLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "snapshot_duration_seconds",
            "Time to read a source",
            snapshot_duration.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register("build_info", "Build information", build_info.clone());
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once every ruleset source the node uses was read once (latched)",
            ready.clone(),
        );
        let nft_events = Counter::default();
        registry.register(
            "nftables_events",
            "nftables change notifications received",
            nft_events.clone(),
        );
        let resyncs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "resyncs",
            "Full re-reads of the rulesets, by reason",
            resyncs.clone(),
        );
        let journal_skipped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "journal_skipped_lines",
            "Journal lines not used by the guards, by reason (corrupt, torn, unknown-outcome)",
            journal_skipped.clone(),
        );
        for reason in crate::journal::SKIP_REASONS {
            journal_skipped
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc_by(0);
        }
        let kube_up = Gauge::default();
        registry.register(
            "kube_up",
            "1 while the Kubernetes API answers in time (0 in node-local mode)",
            kube_up.clone(),
        );
        let kube_request_errors = Family::<RequestErrorLabels, Counter>::default();
        registry.register(
            "kube_request_errors",
            "Failed requests to the Kubernetes API, by verb and HTTP status code (timeout, connect when there was no answer)",
            kube_request_errors.clone(),
        );
        let fix_slot_held = Gauge::default();
        registry.register(
            "fix_slot_held",
            "1 while this node holds a cluster-wide fix slot",
            fix_slot_held.clone(),
        );
        // Zero series for the closed sets, so dashboards and alerts see them before they move.
        for check in crate::detect::CHECKS {
            findings
                .get_or_create(&CheckLabel {
                    check: check.id().as_str().into(),
                })
                .set(0);
        }
        for fix in crate::remediate::fixes::FIXES {
            circuit_open
                .get_or_create(&FixLabel {
                    fix: fix.id().as_str().into(),
                })
                .set(0);
        }
        for result in ["ok", "invalid"] {
            config_reloads
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc_by(0);
        }
        Metrics {
            registry,
            findings,
            fix_attempts,
            circuit_open,
            source_up,
            snapshot_duration,
            config_reloads,
            ready,
            nft_events,
            resyncs,
            journal_skipped,
            kube_up,
            kube_request_errors,
            fix_slot_held,
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Sets the active finding count of every check (absent checks to 0).
    pub fn set_findings(&self, counts: &[(CheckId, usize)]) {
        for check in crate::detect::CHECKS.iter().map(|c| c.id()) {
            let n = counts
                .iter()
                .find(|(c, _)| *c == check)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            self.findings
                .get_or_create(&CheckLabel {
                    check: check.as_str().into(),
                })
                .set(n as i64);
        }
    }

    /// Counts and logs one fix outcome.
    pub fn fix_outcome(&self, fix: FixId, outcome: Outcome, subject: &str, detail: &str) {
        self.fix_attempts
            .get_or_create(&FixOutcomeLabels {
                fix: fix.as_str().into(),
                outcome: outcome.as_str().into(),
            })
            .inc();
        match outcome {
            Outcome::Failed | Outcome::Ineffective | Outcome::Unknown => {
                tracing::warn!(fix = %fix, outcome = outcome.as_str(), subject, detail, "fix")
            }
            Outcome::Applied
            | Outcome::Verified
            | Outcome::Reverted
            | Outcome::SkippedCircuitOpen => {
                tracing::info!(fix = %fix, outcome = outcome.as_str(), subject, detail, "fix")
            }
            _ => tracing::debug!(fix = %fix, outcome = outcome.as_str(), subject, detail, "fix"),
        }
    }

    /// Number of subjects with an open breaker per fix.
    pub fn set_circuit_open(&self, fix: FixId, open: usize) {
        self.circuit_open
            .get_or_create(&FixLabel {
                fix: fix.as_str().into(),
            })
            .set(open as i64);
    }

    /// Records a source read.
    pub fn source(&self, source: &str, up: bool, took: Duration) {
        let label = SourceLabel {
            source: source.to_string(),
        };
        self.source_up.get_or_create(&label).set(i64::from(up));
        self.snapshot_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Counts and logs a configuration reload.
    pub fn config_reload(&self, ok: bool, detail: &str) {
        let result = if ok { "ok" } else { "invalid" };
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        if ok {
            tracing::info!(detail, "configuration reloaded");
        } else {
            tracing::error!(
                error = detail,
                "configuration rejected; the last good one stays"
            );
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn nft_events(&self, n: u64) {
        self.nft_events.inc_by(n);
    }

    /// Brings `netmend_journal_skipped_lines_total` up to the journal's counts since open (a
    /// counter only moves up: a lower count is ignored). Logs the lines newly skipped.
    pub fn journal_skipped(&self, counts: &std::collections::BTreeMap<String, u64>) {
        for (reason, total) in counts {
            let Some(reason) = crate::journal::SKIP_REASONS
                .into_iter()
                .find(|r| r == reason)
            else {
                continue;
            };
            let counter = self.journal_skipped.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
            let seen = counter.get();
            if *total > seen {
                counter.inc_by(total - seen);
                tracing::warn!(
                    reason,
                    lines = total - seen,
                    "journal lines skipped by the guards"
                );
            }
        }
    }

    /// Shows the Kubernetes API connection: up or not, the slot, and the request errors brought
    /// up to the connection's totals since start (a counter only moves up). The verb and code come
    /// from the client's closed sets (HTTP verbs, status codes, `timeout`, `connect`).
    pub fn kube_connection(&self, connection: &crate::runtime::cluster::Connection) {
        self.kube_up.set(i64::from(connection.connected));
        self.fix_slot_held
            .set(i64::from(connection.slot_held.is_some()));
        for ((verb, code), total) in &connection.request_errors {
            let counter = self.kube_request_errors.get_or_create(&RequestErrorLabels {
                verb: verb.clone(),
                code: code.clone(),
            });
            let seen = counter.get();
            if *total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// Counts and logs a full re-read of the rulesets.
    pub fn resync(&self, reason: &'static str) {
        self.resyncs
            .get_or_create(&ResultLabel {
                result: reason.into(),
            })
            .inc();
        tracing::debug!(reason, "full ruleset resync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_interface_names() {
        let m = Metrics::new();
        m.set_findings(&[(CheckId::HOSTPORT_HIJACK, 2)]);
        m.fix_outcome(FixId::REMOVE_HIJACK_RULE, Outcome::SkippedDryRun, "s", "d");
        m.source("nftables", true, Duration::from_millis(12));
        m.config_reload(false, "bad");
        m.set_ready(true);
        m.journal_skipped(&[("corrupt".to_string(), 2)].into_iter().collect());
        m.journal_skipped(&[("corrupt".to_string(), 3)].into_iter().collect());
        let mut connection = crate::runtime::cluster::Connection {
            connected: true,
            slot_held: Some(0),
            ..Default::default()
        };
        connection
            .request_errors
            .insert(("patch".into(), "403".into()), 2);
        m.kube_connection(&connection);
        connection
            .request_errors
            .insert(("patch".into(), "403".into()), 5);
        m.kube_connection(&connection);
        let text = m.encode();
        for needle in [
            "netmend_findings{check=\"hostport-hijack\"} 2",
            "netmend_findings{check=\"promisc-lost\"} 0",
            "netmend_fix_attempts_total{fix=\"remove-hijack-rule\",outcome=\"skipped_dry_run\"} 1",
            "netmend_source_up{source=\"nftables\"} 1",
            "netmend_snapshot_duration_seconds_bucket{le=\"0.05\",source=\"nftables\"} 1",
            "netmend_config_reloads_total{result=\"invalid\"} 1",
            "netmend_build_info{version=",
            "netmend_ready 1",
            "netmend_circuit_open{fix=\"set-promisc\"} 0",
            "netmend_journal_skipped_lines_total{reason=\"corrupt\"} 3",
            "netmend_journal_skipped_lines_total{reason=\"unknown-outcome\"} 0",
            "netmend_kube_up 1",
            "netmend_fix_slot_held 1",
            "netmend_kube_request_errors_total{verb=\"patch\",code=\"403\"} 5",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
