//! The checks: pure functions from a [`NodeSnapshot`] to [`Finding`]s, one file per check, listed
//! once in [`run_ruleset_checks`]. No I/O, no tokio, no processes: everything a check needs is in
//! the snapshot or the configuration.
//!
//! Persistence (a finding must last `staleAfter` before it counts) is not decided here: checks
//! report what the snapshot shows, and the tracker in `remediate` keeps `since` across passes.

pub mod backend_split;
pub mod hostport_hijack;
pub mod stale_chain;

use crate::config::Config;
use crate::model::finding::{CheckId, Finding};
use crate::model::snapshot::NodeSnapshot;

/// Runs every enabled ruleset check on one snapshot.
pub fn run_ruleset_checks(snapshot: &NodeSnapshot, config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    if config.check_enabled(CheckId::CiliumStaleBackupChain) {
        findings.extend(stale_chain::detect(snapshot));
    }
    if config.check_enabled(CheckId::HostportHijack) {
        findings.extend(hostport_hijack::detect(
            snapshot,
            &config.checks.hostport_hijack,
        ));
    }
    if config.check_enabled(CheckId::IptablesBackendSplit) {
        findings.extend(backend_split::detect(snapshot));
    }
    findings
}

#[cfg(test)]
pub(crate) mod test_support;
pub mod arp_unanswered;
pub mod promisc_lost;
