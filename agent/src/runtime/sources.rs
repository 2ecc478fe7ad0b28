//! Each source's read health across passes, for `/status` (the last error and since when) and for
//! `/readyz`: the agent is ready once every ruleset source the node actually uses has been read
//! once. A source the node does not use (nf_tables absent from the kernel, no iptables-legacy
//! table loaded) does not hold readiness back, so a node that only uses iptables-legacy becomes
//! ready even though reading nftables keeps failing there.

use crate::model::snapshot::SourceStatus;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The sources readiness waits for.
pub const RULESET_SOURCES: [&str; 2] = ["nftables", "iptables-legacy"];

/// One source as `/status` shows it under `sourceHealth`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceHealth {
    /// The last read succeeded.
    pub ok: bool,
    /// Read successfully at least once since start.
    pub read_once: bool,
    /// Whether the node uses the source (false: there is nothing to read).
    pub in_use: bool,
    /// The last error, kept after the source recovers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last error was seen (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// While failing: when the current run of failures began (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
}

/// Per-source health, fed with every pass's source statuses.
#[derive(Debug, Clone, Default)]
pub struct SourceBook {
    sources: BTreeMap<String, SourceHealth>,
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl SourceBook {
    /// Records one pass's statuses.
    pub fn observe(&mut self, statuses: &BTreeMap<String, SourceStatus>, now: SystemTime) {
        for (name, status) in statuses {
            let health = self.sources.entry(name.clone()).or_default();
            health.in_use = status.in_use != Some(false);
            if status.ok {
                health.ok = true;
                health.read_once = true;
                health.failing_since = None;
            } else {
                let error = status
                    .detail
                    .clone()
                    .unwrap_or_else(|| "read failed".to_string());
                self.fail(name, &error, now, status.in_use != Some(false));
            }
        }
    }

    /// Records a failure of every ruleset source (observation impossible this pass).
    pub fn fail_all(&mut self, error: &str, now: SystemTime) {
        for name in RULESET_SOURCES {
            let in_use = self.sources.get(name).is_none_or(|h| h.in_use);
            self.fail(name, error, now, in_use);
        }
    }

    fn fail(&mut self, name: &str, error: &str, now: SystemTime, in_use: bool) {
        let health = self.sources.entry(name.to_string()).or_default();
        let at = rfc3339(now);
        if health.ok || health.failing_since.is_none() {
            health.failing_since = Some(at.clone());
        }
        health.ok = false;
        health.in_use = in_use;
        health.last_error = Some(error.to_string());
        health.last_error_at = Some(at);
    }

    /// `Ok` once every ruleset source in use was read once; otherwise the sources still waited
    /// for. A source never reported is not one the probe reads.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let waiting: Vec<String> = RULESET_SOURCES
            .into_iter()
            .filter(|name| {
                self.sources
                    .get(*name)
                    .is_some_and(|h| h.in_use && !h.read_once)
            })
            .map(str::to_string)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    pub fn view(&self) -> BTreeMap<String, SourceHealth> {
        self.sources.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn statuses(nft: SourceStatus, legacy: SourceStatus) -> BTreeMap<String, SourceStatus> {
        [
            ("nftables".to_string(), nft),
            ("iptables-legacy".to_string(), legacy),
        ]
        .into_iter()
        .collect()
    }

    fn not_in_use(mut s: SourceStatus) -> SourceStatus {
        s.in_use = Some(false);
        s
    }

    #[test]
    fn a_legacy_only_node_is_ready_while_nftables_is_absent() {
        let mut book = SourceBook::default();
        let nft = not_in_use(SourceStatus::failed(
            Duration::ZERO,
            "nf_tables is not available",
        ));
        book.observe(&statuses(nft, SourceStatus::ok(Duration::ZERO)), t(0));
        assert_eq!(book.ready(), Ok(()));
        let view = book.view();
        assert!(!view["nftables"].in_use);
        assert_eq!(
            view["nftables"].last_error.as_deref(),
            Some("nf_tables is not available")
        );
        assert_eq!(
            view["nftables"].failing_since.as_deref(),
            Some("2027-01-15T08:00:00Z")
        );
    }

    #[test]
    fn a_used_source_that_keeps_failing_holds_readiness_back_until_read_once() {
        let mut book = SourceBook::default();
        let failing = || SourceStatus::failed(Duration::ZERO, "inconsistent dumps");
        book.observe(&statuses(failing(), SourceStatus::ok(Duration::ZERO)), t(0));
        book.observe(&statuses(failing(), SourceStatus::ok(Duration::ZERO)), t(5));
        assert_eq!(book.ready(), Err(vec!["nftables".to_string()]));
        let view = book.view();
        assert_eq!(
            view["nftables"].failing_since.as_deref(),
            Some("2027-01-15T08:00:00Z"),
            "since the first failure of the run"
        );
        assert_eq!(
            view["nftables"].last_error_at.as_deref(),
            Some("2027-01-15T08:00:05Z")
        );
        book.observe(
            &statuses(
                SourceStatus::ok(Duration::ZERO),
                SourceStatus::ok(Duration::ZERO),
            ),
            t(6),
        );
        assert_eq!(book.ready(), Ok(()));
        let view = book.view();
        assert!(view["nftables"].ok);
        assert_eq!(view["nftables"].failing_since, None);
        assert_eq!(
            view["nftables"].last_error.as_deref(),
            Some("inconsistent dumps"),
            "the last error stays visible"
        );
        // A later failure does not take readiness back (it is latched by the caller anyway).
        book.fail_all("missing privilege", t(7));
        assert_eq!(book.ready(), Ok(()));
    }

    #[test]
    fn legacy_with_tables_that_cannot_be_read_holds_readiness_back() {
        let mut book = SourceBook::default();
        book.observe(
            &statuses(
                SourceStatus::ok(Duration::ZERO),
                SourceStatus::failed(Duration::ZERO, "getsockopt failed"),
            ),
            t(0),
        );
        assert_eq!(book.ready(), Err(vec!["iptables-legacy".to_string()]));
    }
}
