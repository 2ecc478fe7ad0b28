//! nftables change notifications: a socket joined to `NFNLGRP_NFTABLES` (needs CAP_NET_ADMIN).
//! Each transaction arrives as table/chain/rule/set messages followed by one NEWGEN carrying the
//! new generation id and the pid and name of the process that committed it (`iptables-nft`,
//! `cilium-agent`, `kube-proxy`...). Events are hints: a bulk load overflows any socket buffer
//! (ENOBUFS), after which the only correct view is a new dump.

use crate::observe::netlink::{split_messages, Attrs, NetlinkError, NetlinkSocket};
use crate::sys;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNLGRP_NFTABLES: u32 = 7;
pub const NFT_MSG_NEWGEN: u16 = 15;
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

/// Splits one datagram of notifications into events.
pub fn decode_datagram(buf: &[u8]) -> Vec<NftEvent> {
    let mut events = Vec::new();
    let mut changes = 0usize;
    for msg in split_messages(buf) {
        let Ok(msg) = msg else {
            // A torn datagram: treat as lost notifications.
            events.push(NftEvent::Overflow);
            break;
        };
        if msg.msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        if msg.msg_type & 0xff == NFT_MSG_NEWGEN {
            if changes > 0 {
                events.push(NftEvent::Changes(std::mem::take(&mut changes)));
            }
            match decode_newgen(msg.payload) {
                Some(generation) => events.push(NftEvent::Committed(generation)),
                None => events.push(NftEvent::Overflow),
            }
        } else {
            changes += 1;
        }
    }
    if changes > 0 {
        events.push(NftEvent::Changes(changes));
    }
    events
}

/// A subscription to nftables notifications in the calling thread's network namespace.
pub struct NftEventSocket {
    socket: NetlinkSocket,
}

impl AsFd for NftEventSocket {
    /// The socket's descriptor, for a poller that also waits on other sockets.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl NftEventSocket {
    pub fn open() -> Result<NftEventSocket, NetlinkError> {
        // A large buffer rides out ordinary bursts; overflow is still handled (a re-dump).
        NftEventSocket::open_with_buffer(8 << 20)
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
        Ok(NftEventSocket { socket })
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
                Ok(Some(len)) => events.extend(decode_datagram(self.socket.received(len))),
                Ok(None) => break,
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {
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
                    process: Some("iptables-nft".into())
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
