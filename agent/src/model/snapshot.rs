//! `NodeSnapshot`: everything the checks read about one node (or one network namespace) at one
//! moment, and the health of each source that fed it. Built by `observe`, read by `detect`.

use crate::model::l2::{ArpCounters, Link, ResponderMap};
use crate::model::ruleset::{Backend, Ruleset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A TCP socket in LISTEN state in the observed namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListeningSocket {
    pub address: IpAddr,
    pub port: u16,
    /// The socket's inode (sock_diag `idiag_inode`); 0 when unknown.
    #[serde(skip_serializing_if = "is_zero")]
    pub inode: u64,
    /// The process holding the socket, when it was resolved (only for the ports a NAT rule of
    /// the node matches; needs the host's /proc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<ProcessInfo>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl ListeningSocket {
    /// A listener with no inode and no resolved owner.
    pub fn new(address: IpAddr, port: u16) -> ListeningSocket {
        ListeningSocket {
            address,
            port,
            inode: 0,
            owner: None,
        }
    }
}

/// A process as /proc shows it: pid, `comm` and the command line split at NULs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub args: Vec<String>,
}

/// An address configured on one of the node's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalAddress {
    pub address: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
}

/// Health of one source of the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<usize>,
    #[serde(rename = "durationMs")]
    pub duration_ms: u64,
    /// Why the source is degraded or absent ("map not pinned", "no legacy tables loaded").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `Some(false)` when the node does not use the source (nf_tables absent from the kernel, no
    /// iptables-legacy table loaded): readiness does not wait for it.
    #[serde(rename = "inUse", skip_serializing_if = "Option::is_none")]
    pub in_use: Option<bool>,
}

impl SourceStatus {
    pub fn ok(duration: Duration) -> SourceStatus {
        SourceStatus {
            ok: true,
            rules: None,
            chains: None,
            duration_ms: duration.as_millis() as u64,
            detail: None,
            in_use: None,
        }
    }

    pub fn failed(duration: Duration, detail: impl Into<String>) -> SourceStatus {
        SourceStatus {
            ok: false,
            rules: None,
            chains: None,
            duration_ms: duration.as_millis() as u64,
            detail: Some(detail.into()),
            in_use: None,
        }
    }
}

/// Everything one observation pass saw.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    /// nf_tables state (None when the source failed). Shared: the agent keeps it between passes.
    pub nftables: Option<Arc<Ruleset>>,
    /// What the notifications said each nftables transaction since the last full read touched,
    /// when the ruleset comes from the incremental reader (None: a full read every time).
    pub nft_changes: Option<Arc<crate::model::ruleset_changes::RulesetChanges>>,
    /// x_tables state (None when the source failed; empty when no legacy table is loaded).
    pub legacy: Option<Arc<Ruleset>>,
    /// TCP listeners (None when the source failed).
    pub listeners: Option<Vec<ListeningSocket>>,
    /// Addresses of the node (None when the source failed).
    pub addresses: Option<Vec<LocalAddress>>,
    /// The node's interfaces (None when the source failed).
    pub links: Option<Vec<Link>>,
    /// ARP accounting over the observation window, one entry per watched interface (None when
    /// nothing was watched, e.g. `--window 0s`).
    pub arp: Option<Vec<ArpCounters>>,
    /// ARP accounting since each watch started (the agent verifies set-promisc against it).
    pub arp_cumulative: Option<Vec<ArpCounters>>,
    /// Cilium's L2 responder map at the start and at the end of the window.
    pub responder: Option<ResponderMap>,
    pub responder_after: Option<ResponderMap>,
    /// The API server's Service address and port as the pod environment names it
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT`: the `default/kubernetes` ClusterIP), when known.
    pub kube_api_service: Option<(IpAddr, u16)>,
    /// Per-source status keyed by the source names of docs/interface.md (`nftables`,
    /// `iptables-legacy`, `sockets`, `addresses`, `links`, `arp`, `bpf`).
    pub sources: BTreeMap<String, SourceStatus>,
}

impl NodeSnapshot {
    pub fn ruleset(&self, backend: Backend) -> Option<&Ruleset> {
        match backend {
            Backend::Nft => self.nftables.as_deref(),
            Backend::Legacy => self.legacy.as_deref(),
        }
    }

    /// Whether `ip` is one of the node's own addresses (loopback counts).
    pub fn is_local_address(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return true;
        }
        self.addresses
            .as_ref()
            .is_some_and(|addrs| addrs.iter().any(|a| a.address == ip))
    }
}
