//! The kernel-backed [`NodeReader`]: reads every source of a [`NodeSnapshot`] in the calling
//! thread's network namespace, times each one, and tells a degraded source (reported on its
//! status, the other checks go on) from a fatal one (a missing privilege or kernel feature, which
//! `netmend check` turns into exit status 2).
//!
//! Two ways to read nftables: [`NftView::Fresh`] dumps every time (the one-shot check), while
//! [`NftView::Cached`] keeps the ruleset current from change notifications
//! ([`nftables::NftTracker`]: cost proportional to the change, one tiny GETGEN request a pass to
//! confirm the generation) and dumps in full only at start, on an event overflow, on a
//! notification it cannot apply, on a generation mismatch and on [`NodeReader::resync`].

use crate::model::ruleset::Ruleset;
use crate::model::snapshot::{ListeningSocket, NodeSnapshot, ProcessInfo, SourceStatus};
use crate::observe::{addresses, iptables_legacy, nftables, sockets};
use crate::runtime::{NodeReader, ProbeFatal};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How nftables is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftView {
    Fresh,
    Cached,
}

/// Reads the node through netlink and getsockopt.
pub struct KernelReader {
    view: NftView,
    /// The incremental reader (cached view only).
    tracker: nftables::NftTracker,
    /// Full dumps done (for metrics and tests).
    pub dumps: u64,
    /// Notification messages applied to the cached ruleset.
    pub events_applied: u64,
    /// Links, the responder map and ARP accounting.
    l2: crate::observe::l2_watch::L2Watch,
    /// The legacy tables, decoded only when they changed (cached view), or read fresh.
    legacy: Option<crate::observe::legacy_cache::LegacyCache>,
    /// The ports NAT rules match, with the ruleset versions they were computed from.
    nat_ports: Option<(NatPortsInputs, BTreeSet<u16>)>,
    /// Listener owners resolved so far, by socket inode (None: held by no visible process).
    socket_owners: BTreeMap<u64, Option<ProcessInfo>>,
    /// Processes whose descriptors the last owner scan could not read.
    owners_refused: usize,
}

/// What the NAT-matched ports were computed from: the nftables generation and the identity of
/// the legacy ruleset.
type NatPortsInputs = (Option<Option<u32>>, Option<std::sync::Weak<Ruleset>>);

/// Where the host's /proc is: `NETMEND_HOST_PROC` (a hostPath mount) or `/proc` (with hostPID).
fn proc_root() -> PathBuf {
    std::env::var_os("NETMEND_HOST_PROC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc"))
}

/// The API server's Service address from the pod environment every pod gets.
fn kube_api_service() -> Option<(IpAddr, u16)> {
    let host: IpAddr = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()?
        .parse()
        .ok()?;
    let port: u16 = std::env::var("KUBERNETES_SERVICE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(443);
    Some((host, port))
}

impl KernelReader {
    pub fn new(view: NftView) -> KernelReader {
        KernelReader {
            view,
            tracker: nftables::NftTracker::new(),
            dumps: 0,
            events_applied: 0,
            l2: crate::observe::l2_watch::L2Watch::new(),
            legacy: (view == NftView::Cached).then(crate::observe::legacy_cache::LegacyCache::new),
            socket_owners: BTreeMap::new(),
            owners_refused: 0,
            nat_ports: None,
        }
    }

    /// Fills the owner of every listener on a port some NAT rule matches, scanning /proc only for
    /// sockets not seen before (an inode keeps its owner for the socket's life).
    fn resolve_owners(&mut self, snapshot: &NodeSnapshot, listeners: &mut [ListeningSocket]) {
        // The ports NAT rules match, walked again only when a ruleset changed (the nftables
        // generation moved, or the legacy cache handed out another ruleset).
        // (A Weak keeps its allocation alive, so a later ruleset cannot reuse its address.)
        let inputs = (
            snapshot.nftables.as_ref().map(|r| r.generation),
            snapshot.legacy.as_ref().map(Arc::downgrade),
        );
        let unchanged = |seen: &NatPortsInputs| {
            seen.0 == inputs.0
                && inputs.0.is_none_or(|g| g.is_some())
                && match (&seen.1, &inputs.1) {
                    (Some(a), Some(b)) => a.ptr_eq(b),
                    (None, None) => true,
                    _ => false,
                }
        };
        let ports = match &self.nat_ports {
            Some((seen, ports)) if unchanged(seen) => ports.clone(),
            _ => {
                let ports = sockets::nat_matched_ports(
                    [snapshot.nftables.as_deref(), snapshot.legacy.as_deref()]
                        .into_iter()
                        .flatten(),
                );
                self.nat_ports = Some((inputs, ports.clone()));
                ports
            }
        };
        let live: BTreeSet<u64> = listeners.iter().map(|l| l.inode).collect();
        self.socket_owners.retain(|inode, _| live.contains(inode));
        let wanted: BTreeSet<u64> = listeners
            .iter()
            .filter(|l| l.inode != 0 && ports.contains(&l.port))
            .map(|l| l.inode)
            .filter(|inode| !self.socket_owners.contains_key(inode))
            .collect();
        if !wanted.is_empty() {
            let mut owners = sockets::socket_owners(&proc_root(), &wanted);
            for inode in wanted {
                let mut owner = owners.found.remove(&inode);
                if owner.is_none() && owners.refused > 0 {
                    // Its holder may be one of the processes that refused: docker-proxy still
                    // says on its command line what it publishes.
                    owner = listeners.iter().find(|l| l.inode == inode).and_then(|l| {
                        sockets::docker_proxy_publishing(&proc_root(), l.address, l.port)
                    });
                }
                self.socket_owners.insert(inode, owner);
            }
            self.owners_refused = owners.refused;
        }
        for l in listeners.iter_mut() {
            if ports.contains(&l.port) {
                l.owner = self.socket_owners.get(&l.inode).cloned().flatten();
            }
        }
    }

    /// Makes the next snapshot dump nftables in full.
    pub fn invalidate(&mut self) {
        self.tracker.resync("invalidated");
    }

    fn read_nftables(&mut self) -> Result<(Arc<Ruleset>, SourceStatus), nftables::NftablesError> {
        let started = Instant::now();
        if self.view == NftView::Cached {
            let result = self.tracker.refresh();
            self.dumps = self.tracker.stats.dumps;
            self.events_applied = self.tracker.stats.events_applied;
            let (ruleset, dumped) = result?;
            let mut status = nft_status(&ruleset, started.elapsed());
            if let Some(why) = dumped.filter(|why| why != "start") {
                status.detail = Some(format!("full re-read: {why}"));
            }
            return Ok((ruleset, status));
        }
        let (ruleset, stats) = nftables::read_ruleset()?;
        self.dumps += 1;
        let ruleset = Arc::new(ruleset);
        let mut status = nft_status(&ruleset, stats.duration);
        if stats.retries > 0 {
            status.detail = Some(format!(
                "{} dump(s) redone: the ruleset changed while being read",
                stats.retries
            ));
        }
        Ok((ruleset, status))
    }
}

fn nft_status(ruleset: &Ruleset, took: Duration) -> SourceStatus {
    SourceStatus {
        rules: Some(ruleset.rule_count()),
        chains: Some(ruleset.chain_count()),
        ..SourceStatus::ok(took)
    }
}

impl NodeReader for KernelReader {
    fn resync(&mut self) {
        self.tracker.resync("periodic resync");
        if let Some(legacy) = self.legacy.as_mut() {
            legacy.resync();
        }
    }

    fn configure(&mut self, config: &crate::config::Config) {
        self.l2.configure(config);
    }

    fn observe(&mut self, window: Duration) {
        self.l2.observe_window(window);
    }

    fn snapshot(&mut self) -> Result<NodeSnapshot, ProbeFatal> {
        let mut snapshot = NodeSnapshot::default();

        let started = Instant::now();
        match self.read_nftables() {
            Ok((ruleset, status)) => {
                snapshot.nftables = Some(ruleset);
                if self.view == NftView::Cached {
                    snapshot.nft_changes = self.tracker.changes();
                }
                snapshot.sources.insert("nftables".into(), status);
            }
            Err(e @ nftables::NftablesError::PermissionDenied { .. }) => {
                return Err(ProbeFatal(format!("missing privilege: {e}")));
            }
            Err(e @ nftables::NftablesError::Unavailable { .. }) => {
                // No nf_tables in this kernel or namespace: the node does not use it (it may use
                // iptables-legacy only), so this is not fatal and readiness does not wait for it.
                let mut status = SourceStatus::failed(started.elapsed(), e.to_string());
                status.in_use = Some(false);
                snapshot.sources.insert("nftables".into(), status);
            }
            Err(e) => {
                snapshot.sources.insert(
                    "nftables".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
            }
        }

        let started = Instant::now();
        let read = match self.legacy.as_mut() {
            Some(cache) => cache.read(),
            None => iptables_legacy::read_ruleset().map(Arc::new),
        };
        match read {
            Ok(ruleset) => {
                let mut status = SourceStatus::ok(started.elapsed());
                status.rules = Some(ruleset.rule_count());
                status.chains = Some(ruleset.chain_count());
                if ruleset.tables.is_empty() {
                    status.detail = Some("no iptables-legacy table is loaded".into());
                    status.in_use = Some(false);
                }
                // The cache hands out the same Arc while nothing changed, so the engine can tell
                // by identity and skip re-running the ruleset checks.
                snapshot.legacy = Some(ruleset);
                snapshot.sources.insert("iptables-legacy".into(), status);
            }
            Err(e @ iptables_legacy::LegacyError::Permission { .. }) => {
                return Err(ProbeFatal(format!("missing privilege: {e}")));
            }
            Err(e) => {
                snapshot.sources.insert(
                    "iptables-legacy".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
            }
        }

        let started = Instant::now();
        match sockets::read_listeners() {
            Ok(mut listeners) => {
                self.resolve_owners(&snapshot, &mut listeners);
                snapshot.listeners = Some(listeners);
                let mut status = SourceStatus::ok(started.elapsed());
                if self.owners_refused > 0 {
                    status.detail = Some(format!(
                        "{} processes did not show their sockets (they hold privileges netmend lacks): their listeners count as host services, except docker-proxy's (read from its command line)",
                        self.owners_refused
                    ));
                }
                snapshot.sources.insert("sockets".into(), status);
            }
            Err(e) => {
                snapshot.sources.insert(
                    "sockets".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
            }
        }

        let started = Instant::now();
        match addresses::read_addresses() {
            Ok(addrs) => {
                snapshot.addresses = Some(addrs);
                snapshot
                    .sources
                    .insert("addresses".into(), SourceStatus::ok(started.elapsed()));
            }
            Err(e) => {
                snapshot.sources.insert(
                    "addresses".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
            }
        }
        snapshot.kube_api_service = kube_api_service();
        match self.view {
            NftView::Fresh => self.l2.fill_once(&mut snapshot),
            NftView::Cached => self.l2.fill(&mut snapshot),
        }
        Ok(snapshot)
    }
}
