//! Running the pipeline: the narrow traits behind which every kernel effect sits ([`NodeReader`]
//! reads, [`Actuator`] writes), the pass shared by `netmend check` and `netmend run` (detect ->
//! track -> guard -> re-check -> act -> verify -> journal), and the one-shot driver.
//!
//! The kernel implementations of the traits live in `observe` and `act`; tests drive the same code
//! with recording fakes.

pub mod agent;
pub mod backoff;
pub mod cluster;
pub mod cluster_report;
pub mod config_source;
pub mod cordon_release;
pub mod decide;
pub mod oneshot;
pub mod pass;
pub mod reporting;
pub mod ruleset_memo;
pub mod serve;
pub mod slots;
pub mod sources;
pub mod verify;
pub mod wiring;

use crate::model::finding::FixAction;
use crate::model::snapshot::NodeSnapshot;

/// A failure that makes observation impossible rather than degraded: a missing privilege or
/// kernel feature. `netmend check` exits 2 with this one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeFatal(pub String);

/// Reads the node. Each call returns a fresh snapshot of every source.
pub trait NodeReader {
    fn snapshot(&mut self) -> Result<NodeSnapshot, ProbeFatal>;

    /// Takes the settings that shape what is read (ARP targets, the responder map's path, the
    /// ARP window). Called at start and on every configuration change.
    fn configure(&mut self, _config: &crate::config::Config) {}

    /// Observes the node for `window` (the kernel probe counts ARP meanwhile); the next snapshot
    /// carries what was seen.
    fn observe(&mut self, window: std::time::Duration) {
        std::thread::sleep(window);
    }

    /// Makes the next snapshot re-read every source in full instead of trusting what is kept
    /// up to date incrementally (called every `resyncInterval`).
    fn resync(&mut self) {}
}

/// Why an action did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// Nothing was done because the state moved since it was read: the nftables generation
    /// changed, or what a legacy fix touches changed (re-checked under the xtables lock).
    #[error("the ruleset changed since it was read: {0}")]
    StateMoved(String),
    /// The action cannot run on this node (e.g. no iptables-legacy binary for a legacy table).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// The write was sent and whether it committed is not known (nft ack lost, timed out or
    /// malformed; legacy restore killed or timed out): the caller re-reads to settle it.
    #[error("{0}")]
    Unknown(String),
}

/// What an applied action changed, for the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActReport {
    pub detail: String,
    /// For set-promisc: whether the flag was already set before.
    pub was_promisc_before: Option<bool>,
}

/// Changes the node. Every action is applied whole or not at all.
pub trait Actuator {
    /// Applies `action`; `nft_generation` is the nftables generation the decision was made on, so
    /// the kernel can refuse a batch built on a stale view.
    fn apply(
        &mut self,
        action: &FixAction,
        nft_generation: Option<u32>,
    ) -> Result<ActReport, ActError>;
}

#[cfg(test)]
mod engine_cluster_tests;
#[cfg(test)]
pub(crate) mod fake;
