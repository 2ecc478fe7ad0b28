//! nftables change notifications: a socket joined to `NFNLGRP_NFTABLES` (needs CAP_NET_ADMIN).
//! Each transaction arrives as table/chain/rule/set messages followed by one NEWGEN carrying the
//! new generation id and the pid and name of the process that committed it (`iptables-nft`,
//! `cilium-agent`, `kube-proxy`...). Events are hints: a bulk load overflows any socket buffer
//! (ENOBUFS), after which the only correct view is a new dump.
//!
//! Attribution: the decoder keeps the chains each transaction created or changed (its NEWCHAIN
//! and NEWRULE messages) until the NEWGEN that commits them, and [`ChainWriters`] remembers, per
//! chain, the last process that committed such a transaction, so "re-added by" names the writer
//! of this chain, never merely the last process that changed anything.

use crate::model::ruleset::Family;
use crate::observe::netlink::{split_messages, Attrs, NetlinkError, NetlinkSocket};
use crate::sys;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNLGRP_NFTABLES: u32 = 7;
pub const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
/// Chains remembered for one transaction not committed yet; a bigger one names only these.
const MAX_OPEN_CHAINS: usize = 4096;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;

/// A committed nftables transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub id: u32,
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// Chains the transaction created or changed, as finding subjects (`family table chain`),
    /// first touch first, each once.
    pub chains: Vec<String>,
}

impl Generation {
    /// Who committed it, as "re-added by" shows it: `name (pid N)`; `None` when the kernel did not
    /// say.
    pub fn writer(&self) -> Option<String> {
        let process = self.process.as_deref().filter(|p| !p.is_empty())?;
        Some(match self.pid {
            Some(pid) => format!("{process} (pid {pid})"),
            None => process.to_string(),
        })
    }
}

/// What one read of the event socket brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftEvent {
    /// Object messages (tables, chains, rules, sets) seen, not yet committed by a NEWGEN.
    Changes(usize),
    /// A transaction was committed.
    Committed(Generation),
    /// The kernel dropped notifications (socket buffer full): the cached view is stale.
    Overflow,
}

/// Decodes the body of a NEWGEN message (after the netlink header).
pub fn decode_newgen(payload: &[u8]) -> Option<Generation> {
    let attrs = payload.get(NFGENMSG_LEN..)?;
    let mut generation = Generation {
        id: 0,
        pid: None,
        process: None,
        chains: Vec::new(),
    };
    let mut have_id = false;
    for attr in Attrs::new(attrs) {
        match attr.kind {
            NFTA_GEN_ID => {
                generation.id = attr.u32_be()?;
                have_id = true;
            }
            NFTA_GEN_PROC_PID => generation.pid = attr.u32_be(),
            NFTA_GEN_PROC_NAME => generation.process = Some(attr.string()),
            _ => {}
        }
    }
    have_id.then_some(generation)
}

/// The chain a NEWCHAIN or NEWRULE message is about, as a finding subject.
fn chain_subject(kind: u16, payload: &[u8]) -> Option<String> {
    let family = Family::from_nfproto(*payload.first()?)?;
    let (table_attr, chain_attr) = match kind {
        NFT_MSG_NEWCHAIN => (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME),
        NFT_MSG_NEWRULE => (NFTA_RULE_TABLE, NFTA_RULE_CHAIN),
        _ => return None,
    };
    let (mut table, mut chain) = (None, None);
    for attr in Attrs::new(payload.get(NFGENMSG_LEN..)?) {
        if attr.kind == table_attr {
            table = Some(attr.string());
        } else if attr.kind == chain_attr {
            chain = Some(attr.string());
        }
    }
    Some(format!("{family} {} {}", table?, chain?))
}

/// Turns datagrams into events, keeping the chains of a transaction whose messages and NEWGEN
/// arrive in different datagrams.
#[derive(Debug, Default)]
pub struct EventDecoder {
    open: Vec<String>,
}

impl EventDecoder {
    /// Notifications were lost: what was gathered for the open transaction is incomplete.
    pub fn lost(&mut self) {
        self.open.clear();
    }

    /// Splits one datagram of notifications into events.
    pub fn decode(&mut self, buf: &[u8]) -> Vec<NftEvent> {
        let mut events = Vec::new();
        let mut changes = 0usize;
        for msg in split_messages(buf) {
            let Ok(msg) = msg else {
                // A torn datagram: treat as lost notifications.
                events.push(NftEvent::Overflow);
                self.lost();
                break;
            };
            if msg.msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let kind = msg.msg_type & 0xff;
            if kind == NFT_MSG_NEWGEN {
                if changes > 0 {
                    events.push(NftEvent::Changes(std::mem::take(&mut changes)));
                }
                let chains = std::mem::take(&mut self.open);
                match decode_newgen(msg.payload) {
                    Some(mut generation) => {
                        generation.chains = chains;
                        events.push(NftEvent::Committed(generation));
                    }
                    None => events.push(NftEvent::Overflow),
                }
            } else {
                changes += 1;
                if let Some(subject) = chain_subject(kind, msg.payload) {
                    if self.open.len() < MAX_OPEN_CHAINS && !self.open.contains(&subject) {
                        self.open.push(subject);
                    }
                }
            }
        }
        if changes > 0 {
            events.push(NftEvent::Changes(changes));
        }
        events
    }
}

/// Splits one self-contained datagram of notifications into events.
pub fn decode_datagram(buf: &[u8]) -> Vec<NftEvent> {
    EventDecoder::default().decode(buf)
}

/// Per chain (a finding subject), the last process that committed a transaction creating or
/// changing it. Bounded: past `capacity` chains the least recently written is forgotten.
#[derive(Debug, Clone)]
pub struct ChainWriters {
    capacity: usize,
    next: u64,
    by_chain: HashMap<String, (u64, String)>,
    order: VecDeque<(u64, String)>,
}

impl Default for ChainWriters {
    fn default() -> Self {
        ChainWriters::with_capacity(4096)
    }
}

impl ChainWriters {
    pub fn with_capacity(capacity: usize) -> ChainWriters {
        ChainWriters {
            capacity: capacity.max(1),
            next: 0,
            by_chain: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records a committed transaction: its chains' writer is its process, or no longer known
    /// when the kernel did not name one.
    pub fn record(&mut self, generation: &Generation) {
        let writer = generation.writer();
        for chain in &generation.chains {
            match &writer {
                Some(writer) => {
                    self.next += 1;
                    self.by_chain
                        .insert(chain.clone(), (self.next, writer.clone()));
                    self.order.push_back((self.next, chain.clone()));
                }
                None => {
                    self.by_chain.remove(chain);
                }
            }
        }
        while self.by_chain.len() > self.capacity {
            let Some((seq, chain)) = self.order.pop_front() else {
                break;
            };
            if self.by_chain.get(&chain).is_some_and(|(s, _)| *s == seq) {
                self.by_chain.remove(&chain);
            }
        }
        if self.order.len() > 2 * self.capacity {
            let by_chain = &self.by_chain;
            self.order
                .retain(|(seq, chain)| by_chain.get(chain).is_some_and(|(s, _)| s == seq));
        }
    }

    /// Notifications were lost: a chain's writer may have changed unseen.
    pub fn forget_all(&mut self) {
        self.by_chain.clear();
        self.order.clear();
    }

    /// The last writer of `subject` (`family table chain`), when known.
    pub fn writer_of(&self, subject: &str) -> Option<&str> {
        self.by_chain.get(subject).map(|(_, w)| w.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_chain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_chain.is_empty()
    }
}

/// A subscription to nftables notifications in the calling thread's network namespace.
pub struct NftEventSocket {
    socket: NetlinkSocket,
    decoder: EventDecoder,
}

impl AsFd for NftEventSocket {
    /// The socket's descriptor, for a poller that also waits on other sockets.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl NftEventSocket {
    pub fn open() -> Result<NftEventSocket, NetlinkError> {
        // A large buffer (8 MiB unless `NETMEND_NFT_EVENT_BUFFER` says otherwise) rides out
        // ordinary bursts; overflow is still handled (a re-dump).
        NftEventSocket::open_with_buffer(crate::fault_knobs::nft_event_buffer())
    }

    /// Like [`NftEventSocket::open`] with a receive buffer of `bytes` (tests force overflows
    /// with a small one).
    pub fn open_with_buffer(bytes: i32) -> Result<NftEventSocket, NetlinkError> {
        let mut socket = NetlinkSocket::open(libc::NETLINK_NETFILTER)?;
        let _ = socket.set_receive_buffer(bytes);
        socket
            .join_group(NFNLGRP_NFTABLES)
            .map_err(|source| NetlinkError::Io {
                what: "join the nftables notification group (needs CAP_NET_ADMIN)".into(),
                source,
            })?;
        Ok(NftEventSocket {
            socket,
            decoder: EventDecoder::default(),
        })
    }

    /// Waits up to `timeout` for notifications, then hands every queued datagram (raw netlink
    /// messages) to `on_read` without blocking further; a lost batch (ENOBUFS) is `None`.
    /// Returns the number of reads handed over.
    pub fn drain_raw(
        &mut self,
        timeout: Duration,
        mut on_read: impl FnMut(Option<&[u8]>),
    ) -> Result<usize, NetlinkError> {
        if !sys::poll::wait_one(self.socket.as_fd(), timeout).unwrap_or(false) {
            return Ok(0);
        }
        let mut reads = 0;
        loop {
            match self.socket.try_recv("read nftables notifications") {
                Ok(Some(len)) => on_read(Some(self.socket.received(len))),
                Ok(None) => break,
                Err(e) if e.errno() == Some(libc::ENOBUFS) => on_read(None),
                Err(e) => return Err(e),
            }
            reads += 1;
        }
        Ok(reads)
    }

    /// Waits up to `timeout` for notifications and returns what arrived (empty on timeout).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<NftEvent>, NetlinkError> {
        if !sys::poll::wait_one(self.socket.as_fd(), timeout).unwrap_or(false) {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        loop {
            match self.socket.try_recv("read nftables notifications") {
                Ok(Some(len)) => events.extend(self.decoder.decode(self.socket.received(len))),
                Ok(None) => break,
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                    self.decoder.lost();
                    events.push(NftEvent::Overflow);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::netlink::MessageBuilder;

    fn newgen(id: u32, pid: u32, name: &str) -> Vec<u8> {
        MessageBuilder::new((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 0)
            .raw(&[0, 0, 0, 0])
            .attr_u32_be(NFTA_GEN_ID, id)
            .attr_u32_be(NFTA_GEN_PROC_PID, pid)
            .attr_str(NFTA_GEN_PROC_NAME, name)
            .finish()
    }

    #[test]
    fn a_transaction_is_changes_then_a_named_commit() {
        let mut buf = MessageBuilder::new((NFNL_SUBSYS_NFTABLES << 8) | 6, 0, 0)
            .raw(&[2, 0, 0, 0])
            .attr_str(1, "nat")
            .finish();
        buf.extend(newgen(42, 1234, "iptables-nft"));
        assert_eq!(
            decode_datagram(&buf),
            vec![
                NftEvent::Changes(1),
                NftEvent::Committed(Generation {
                    id: 42,
                    pid: Some(1234),
                    process: Some("iptables-nft".into()),
                    chains: Vec::new(),
                })
            ]
        );
    }

    #[test]
    fn a_torn_datagram_counts_as_overflow() {
        let mut buf = newgen(1, 1, "x");
        buf.truncate(buf.len() - 3);
        let len = buf.len() as u32 + 8;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(decode_datagram(&buf), vec![NftEvent::Overflow]);
    }
}

#[cfg(test)]
mod attribution {
    use super::*;
    use crate::observe::netlink::split_messages;

    fn capture(tag: &str) -> Vec<u8> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nft/events");
        std::fs::read(dir.join(format!("{tag}.events.bin"))).unwrap()
    }

    fn commits(events: Vec<NftEvent>) -> Vec<Generation> {
        events
            .into_iter()
            .filter_map(|e| match e {
                NftEvent::Committed(g) => Some(g),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_chain_is_attributed_to_the_process_that_wrote_it_not_the_last_one() {
        let mut decoder = EventDecoder::default();
        let mut writers = ChainWriters::default();
        for tag in [
            "01-append",
            "04-new_chain",
            "10-restore_--noflush_batch",
            "21-one_transaction__many_kinds",
        ] {
            for generation in commits(decoder.decode(&capture(tag))) {
                writers.record(&generation);
            }
        }
        // The last transaction was nft's, but it did not touch the kube-proxy chains.
        assert_eq!(
            writers.writer_of("ip nat KUBE-SERVICES"),
            Some("iptables-nft-re (pid 947)")
        );
        assert_eq!(
            writers.writer_of("ip nat KUBE-SVC-NEWSERVICE0000001"),
            Some("iptables-nft-re (pid 947)")
        );
        assert_eq!(
            writers.writer_of("ip nat TEST-CHAIN"),
            Some("iptables-nft (pid 912)")
        );
        assert_eq!(writers.writer_of("ip t3 c"), Some("nft (pid 1015)"));
        assert_eq!(writers.writer_of("ip t3 d"), Some("nft (pid 1015)"));
        assert_eq!(writers.writer_of("ip nat OLD_CILIUM_POST_nat"), None);
        assert_eq!(writers.len(), 5);
    }

    #[test]
    fn deletions_name_no_writer() {
        let generations = commits(decode_datagram(&capture("09-flush_and_delete_chain")));
        assert_eq!(generations.len(), 2);
        assert!(generations.iter().all(|g| g.chains.is_empty()));
    }

    #[test]
    fn a_transaction_split_over_datagrams_keeps_its_chains() {
        let bytes = capture("21-one_transaction__many_kinds");
        // Cut before the NEWGEN (the last message).
        let lengths: Vec<usize> = split_messages(&bytes)
            .map(|m| m.unwrap().payload.len())
            .collect();
        assert!(lengths.len() >= 2);
        let mut offset = 0;
        let mut cut = 0;
        while offset < bytes.len() {
            let len = u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            cut = offset;
            offset += (len + 3) & !3;
        }
        let mut decoder = EventDecoder::default();
        assert!(commits(decoder.decode(&bytes[..cut])).is_empty());
        let generations = commits(decoder.decode(&bytes[cut..]));
        assert_eq!(generations[0].chains, ["ip t3 c", "ip t3 d"]);
        // Lost notifications drop what was gathered: the next commit names only its own chains.
        decoder.decode(&bytes[..cut]);
        decoder.lost();
        let generations = commits(decoder.decode(&bytes[cut..]));
        assert!(generations[0].chains.is_empty());
    }

    #[test]
    fn an_unnamed_commit_makes_the_writer_unknown_and_the_map_is_bounded() {
        let named = |chain: &str, process: Option<&str>| Generation {
            id: 1,
            pid: Some(7),
            process: process.map(str::to_string),
            chains: vec![chain.to_string()],
        };
        let mut writers = ChainWriters::with_capacity(3);
        writers.record(&named("ip nat A", Some("kube-proxy")));
        assert_eq!(writers.writer_of("ip nat A"), Some("kube-proxy (pid 7)"));
        writers.record(&named("ip nat A", None));
        assert_eq!(writers.writer_of("ip nat A"), None, "unknown, not a guess");
        for i in 0..10 {
            writers.record(&named(&format!("ip nat C{i}"), Some("cilium-agent")));
        }
        assert_eq!(writers.len(), 3);
        assert_eq!(writers.writer_of("ip nat C0"), None, "oldest forgotten");
        assert_eq!(writers.writer_of("ip nat C9"), Some("cilium-agent (pid 7)"));
        writers.forget_all();
        assert!(writers.is_empty());
    }
}

#[cfg(test)]
mod two_writers {
    use super::*;

    /// Captured with the real `nft` and `iptables-nft` (see the README beside the file).
    #[test]
    fn a_captured_stream_of_two_programs_names_each_chains_own_writer() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/nft/attribution/two_writers.events.bin");
        let mut writers = ChainWriters::default();
        let mut committed = Vec::new();
        for event in EventDecoder::default().decode(&std::fs::read(path).unwrap()) {
            if let NftEvent::Committed(generation) = event {
                writers.record(&generation);
                committed.push(generation.process.unwrap_or_default());
            }
        }
        assert_eq!(committed, ["nft", "iptables-nft", "iptables-nft", "nft"]);
        assert_eq!(writers.writer_of("ip t a"), Some("nft (pid 24720)"));
        assert_eq!(
            writers.writer_of("ip nat KUBE-X"),
            Some("iptables-nft (pid 24728)"),
            "the last of the two iptables-nft runs that wrote it"
        );
        assert_eq!(writers.writer_of("ip t b"), Some("nft (pid 24729)"));
    }
}
