//! The outward shape of findings (docs/interface.md): the JSON of `check --output json` and
//! `GET /status`, and the text people read from `netmend check`. Pure formatting.

use crate::model::finding::{FixReport, Severity};
use crate::model::snapshot::SourceStatus;
use crate::remediate::tracker::TrackedFinding;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

/// One finding as reported.
#[derive(Debug, Clone, Serialize)]
pub struct FindingReport {
    pub check: String,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    pub since: String,
    pub evidence: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<FixReport>,
}

impl FindingReport {
    pub fn new(tracked: &TrackedFinding, fix: Option<FixReport>) -> FindingReport {
        let f = &tracked.finding;
        FindingReport {
            check: f.check.as_str().to_string(),
            subject: f.subject.clone(),
            severity: f.severity,
            message: f.message.clone(),
            since: rfc3339(tracked.since),
            evidence: f.evidence.clone(),
            fix,
        }
    }
}

/// The report of one check run (and the core of /status).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node: String,
    pub findings: Vec<FindingReport>,
    pub sources: BTreeMap<String, SourceStatus>,
}

/// `2026-11-22T10:00:00Z`
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "INFO",
        Severity::Warning => "WARNING",
        Severity::Critical => "CRITICAL",
    }
}

/// The text form: one block per finding, then the sources.
pub fn render_text(report: &Report, window: std::time::Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "netmend check on {} (window {}): {}",
        report.node,
        humantime::format_duration(window),
        match report.findings.len() {
            0 => "no findings".to_string(),
            1 => "1 finding".to_string(),
            n => format!("{n} findings"),
        }
    );
    for f in &report.findings {
        let _ = writeln!(
            out,
            "\n{:<8} {}  {}",
            severity_label(f.severity),
            f.check,
            f.subject
        );
        let _ = writeln!(out, "  {}", f.message);
        if let Some(fix) = &f.fix {
            let _ = writeln!(
                out,
                "  fix {}: {} - {}",
                fix.name,
                fix.state.as_str(),
                fix.detail
            );
        }
        for key in ["ruleset", "rules", "paths"] {
            if let Some(serde_json::Value::Array(lines)) = f.evidence.get(key) {
                for line in lines.iter().take(8) {
                    if let Some(line) = line.as_str() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                if lines.len() > 8 {
                    let _ = writeln!(out, "    ... {} more", lines.len() - 8);
                }
            }
        }
    }
    let _ = writeln!(out, "\nsources:");
    for (name, s) in &report.sources {
        let mut line = format!("  {name}: {}", if s.ok { "ok" } else { "DOWN" });
        if let Some(r) = s.rules {
            let _ = write!(line, ", {r} rules");
        }
        if let Some(c) = s.chains {
            let _ = write!(line, " in {c} chains");
        }
        let _ = write!(line, ", {} ms", s.duration_ms);
        if let Some(d) = &s.detail {
            let _ = write!(line, " ({d})");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_341_600);
        assert_eq!(rfc3339(t), "2026-11-22T10:00:00Z");
    }
}
