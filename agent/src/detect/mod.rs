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
use crate::model::l2::{ArpTarget, WatchedInterface};
use crate::model::snapshot::NodeSnapshot;
use promisc_lost::{MustBePromisc, PromiscReason};

/// Runs every enabled check on one snapshot. `promisc_held` lists the interfaces netmend made
/// promiscuous (from its journal), which `promisc-lost` keeps so.
pub fn run_checks(
    snapshot: &NodeSnapshot,
    config: &Config,
    promisc_held: &[String],
) -> Vec<Finding> {
    let mut findings = run_ruleset_checks(snapshot, config);
    findings.extend(run_l2_checks(snapshot, config, promisc_held));
    findings
}

/// The link and ARP checks only (cheap: the agent runs them every pass).
pub fn run_l2_checks(
    snapshot: &NodeSnapshot,
    config: &Config,
    promisc_held: &[String],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let links = snapshot.links.as_deref().unwrap_or_default();
    if config.check_enabled(CheckId::ArpUnanswered) {
        if let Some(counters) = &snapshot.arp {
            let arp = &config.checks.arp_unanswered;
            let targets: Vec<arp_unanswered::ConfiguredTarget> = arp
                .targets
                .iter()
                .map(|t| arp_unanswered::ConfiguredTarget {
                    target: ArpTarget {
                        interface: t.interface.clone(),
                        ip: t.ip,
                    },
                    always_owned: t.always_owned,
                })
                .collect();
            findings.extend(arp_unanswered::arp_unanswered(
                &arp_unanswered::ArpInputs {
                    targets: &targets,
                    counters,
                    responder: snapshot.responder.as_ref(),
                    responder_after: snapshot.responder_after.as_ref(),
                    links,
                    addresses: snapshot.addresses.as_deref(),
                },
                arp.min_requests,
                &config.fixes.set_promisc.interfaces,
            ));
        }
    }
    if config.check_enabled(CheckId::PromiscLost) && snapshot.links.is_some() {
        let mut must: Vec<MustBePromisc> = promisc_held
            .iter()
            .map(|interface| MustBePromisc {
                interface: interface.clone(),
                reason: PromiscReason::Journal,
            })
            .collect();
        must.extend(
            config
                .checks
                .promisc_lost
                .interfaces
                .iter()
                .map(|interface| MustBePromisc {
                    interface: interface.clone(),
                    reason: PromiscReason::Config,
                }),
        );
        findings.extend(promisc_lost::promisc_lost(&must, links));
    }
    findings
}

/// The ARP watch list: the interfaces of configured targets and of the responder map's keys
/// (links present now, each once), with the addresses watched on each (which the accounting
/// never ages out).
pub fn arp_watch_list(snapshot: &NodeSnapshot, config: &Config) -> Vec<WatchedInterface> {
    let links = snapshot.links.as_deref().unwrap_or_default();
    let mut wanted: Vec<ArpTarget> = config
        .checks
        .arp_unanswered
        .targets
        .iter()
        .map(|t| ArpTarget {
            interface: t.interface.clone(),
            ip: t.ip,
        })
        .collect();
    for map in [&snapshot.responder, &snapshot.responder_after]
        .into_iter()
        .flatten()
    {
        wanted.extend(arp_unanswered::targets_from_responder(map, links));
    }
    let mut out: Vec<WatchedInterface> = Vec::new();
    for target in wanted {
        let Some(link) = links.iter().find(|l| l.name == target.interface) else {
            continue;
        };
        let slot = match out.iter().position(|w| w.ifindex == link.ifindex) {
            Some(i) => i,
            None => {
                out.push(WatchedInterface {
                    ifindex: link.ifindex,
                    interface: link.name.clone(),
                    targets: Vec::new(),
                });
                out.len() - 1
            }
        };
        if !out[slot].targets.contains(&target.ip) {
            out[slot].targets.push(target.ip);
        }
    }
    out
}

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

pub mod arp_unanswered;
pub mod promisc_lost;
#[cfg(test)]
pub(crate) mod test_support;
