//! ARP accounting, read-only: one `AF_PACKET` tap per watched interface counting, per IPv4
//! address, the who-has requests received, the replies sent and received, and who asked. The
//! frame decoder [`decode_arp_frame`] and the bookkeeping [`account`] are pure and tested on
//! frames captured from the kernel (agent/testdata/l2/). Needs CAP_NET_RAW.
//!
//! Kernel quirks handled, in the order the socket is set up:
//! - the socket is created with protocol 0 so it receives nothing until `bind`;
//! - a classic BPF filter accepting only ethertype 0x0806 (also behind one 802.1Q tag) is attached
//!   BEFORE `bind`, so no unfiltered frame is ever queued;
//! - `bind` uses ETH_P_ALL on the ifindex: binding ETH_P_ARP sees only received frames and misses
//!   the node's own replies; `sll_pkttype == PACKET_OUTGOING` tells sent from received;
//! - taps run before tc and netfilter ingress, so requests a filter drops later are still counted;
//!   replies sent with XDP_TX never reach taps (Cilium's responder counter is the only view);
//! - `PACKET_STATISTICS` resets on every read: drops are accumulated;
//! - when the interface goes down or is deleted the socket reports ENETDOWN once; a deleted
//!   interface then shows ifindex -1 in `getsockname`, which tells "gone" from "down".
//!
//! Memory is bounded and ages ([`TargetMemory`]): at most [`DEFAULT_MAX_TARGETS`] unwatched
//! addresses per interface; a new address takes the place of the least recently seen unwatched
//! one (counted in `evicted`), so a new VIP is counted however many addresses were asked for
//! before. Watched addresses (configured targets, the responder map's keys) are never aged out
//! and do not count against the cap. At most [`crate::model::l2::MAX_REQUESTERS`] requesters are
//! kept per address.
//! Gratuitous ARP (sender address = target address) is an announcement, not a question or an
//! answer: it is counted only in `frames`.
//!
//! One file on purpose: the ARP frame decoder, the packet tap's classic BPF filter, the bounded
//! ageing memory and the window accounting are one source.

use crate::model::l2::{ArpCounters, MacAddr, Requester, TargetCounts, WatchedInterface};
use crate::sys;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const PACKET_OUTGOING: u8 = 4;
/// Default cap on tracked unwatched addresses per interface.
pub const DEFAULT_MAX_TARGETS: usize = 4096;
const ETH_HLEN: usize = 14;
const ARP_LEN: usize = 28;
const SNAPLEN: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("opening an AF_PACKET socket for {interface}: {source}")]
    Socket {
        interface: String,
        source: io::Error,
    },
    #[error("attaching the ARP filter to the socket of {interface}: {source}")]
    Filter {
        interface: String,
        source: io::Error,
    },
    #[error("binding the ARP tap to {interface} (ifindex {ifindex}): {source}")]
    Bind {
        interface: String,
        ifindex: u32,
        source: io::Error,
    },
}

impl ArpError {
    /// True when the interface does not exist (any more).
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            ArpError::Bind { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO))
        )
    }
}

/// A decoded IPv4-over-Ethernet ARP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub op: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

/// Why a frame is not IPv4-over-Ethernet ARP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short for Ethernet + ARP")]
    Short(usize),
    #[error("ethertype {0:#06x} is not ARP")]
    NotArp(u16),
    #[error(
        "ARP for hardware {htype} / protocol {ptype:#06x} ({hlen}/{plen} bytes), not Ethernet/IPv4"
    )]
    NotIpv4OverEthernet {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Decodes an Ethernet frame carrying ARP (optionally behind one 802.1Q tag).
pub fn decode_arp_frame(frame: &[u8]) -> Result<ArpFrame, FrameError> {
    if frame.len() < ETH_HLEN {
        return Err(FrameError::Short(frame.len()));
    }
    let mut off = 12;
    let mut ethertype = be16(frame, off);
    if ethertype == ETH_P_8021Q {
        if frame.len() < ETH_HLEN + 4 {
            return Err(FrameError::Short(frame.len()));
        }
        off += 4;
        ethertype = be16(frame, off);
    }
    if ethertype != ETH_P_ARP {
        return Err(FrameError::NotArp(ethertype));
    }
    let arp = &frame[off + 2..];
    if arp.len() < ARP_LEN {
        return Err(FrameError::Short(frame.len()));
    }
    let (htype, ptype, hlen, plen) = (be16(arp, 0), be16(arp, 2), arp[4], arp[5]);
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
        return Err(FrameError::NotIpv4OverEthernet {
            htype,
            ptype,
            hlen,
            plen,
        });
    }
    let mac = |at: usize| MacAddr(arp[at..at + 6].try_into().unwrap_or_default());
    Ok(ArpFrame {
        eth_dst: MacAddr(frame[0..6].try_into().unwrap_or_default()),
        eth_src: MacAddr(frame[6..12].try_into().unwrap_or_default()),
        op: be16(arp, 6),
        sender_mac: mac(8),
        sender_ip: ip4(&arp[14..18]),
        target_mac: mac(18),
        target_ip: ip4(&arp[24..28]),
    })
}

/// Builds a broadcast who-has frame (42 bytes; the driver pads to 60).
pub fn who_has_frame(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + ARP_LEN);
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// Which addresses one tap keeps counts for: every watched address, plus up to `max_unwatched`
/// others, aging out the least recently seen of those to admit a new one.
#[derive(Debug, Clone, Default)]
pub struct TargetMemory {
    max_unwatched: usize,
    watched: BTreeSet<Ipv4Addr>,
    /// Frames seen so far: the clock of `admitted` / `last_seen`.
    clock: u64,
    /// Unwatched tracked addresses by the frame number that last mentioned them, oldest first.
    by_age: BTreeMap<u64, Ipv4Addr>,
}

impl TargetMemory {
    pub fn new(max_unwatched: usize) -> TargetMemory {
        TargetMemory {
            max_unwatched,
            ..TargetMemory::default()
        }
    }

    pub fn watched(&self) -> &BTreeSet<Ipv4Addr> {
        &self.watched
    }

    /// Replaces the watched set. Addresses no longer watched become unwatched entries with their
    /// age; the oldest are aged out if that overfills the cap.
    pub fn set_watched(&mut self, c: &mut ArpCounters, watched: &[Ipv4Addr]) {
        let new: BTreeSet<Ipv4Addr> = watched.iter().copied().collect();
        for ip in self.watched.difference(&new) {
            if let Some(t) = c.targets.get(ip) {
                self.by_age.insert(t.last_seen, *ip);
            }
        }
        for ip in new.difference(&self.watched) {
            if let Some(t) = c.targets.get(ip) {
                self.by_age.remove(&t.last_seen);
            }
        }
        self.watched = new;
        while self.by_age.len() > self.max_unwatched {
            self.evict_oldest(c);
        }
    }

    fn evict_oldest(&mut self, c: &mut ArpCounters) -> bool {
        match self.by_age.pop_first() {
            Some((_, ip)) => {
                c.targets.remove(&ip);
                c.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// The entry counting `ip`, admitted (aging out another if needed) and marked as just seen;
    /// None when there is no room at all.
    fn entry<'c>(&mut self, c: &'c mut ArpCounters, ip: Ipv4Addr) -> Option<&'c mut TargetCounts> {
        self.clock += 1;
        let now = self.clock;
        let watched = self.watched.contains(&ip);
        match c.targets.get(&ip).map(|t| t.last_seen) {
            Some(last) => {
                if !watched {
                    self.by_age.remove(&last);
                    self.by_age.insert(now, ip);
                }
            }
            None => {
                if !watched {
                    if self.max_unwatched == 0 {
                        c.overflow += 1;
                        return None;
                    }
                    while self.by_age.len() >= self.max_unwatched && self.evict_oldest(c) {}
                    self.by_age.insert(now, ip);
                }
                c.targets.insert(
                    ip,
                    TargetCounts {
                        admitted: now,
                        ..TargetCounts::default()
                    },
                );
            }
        }
        let t = c.targets.get_mut(&ip)?;
        t.last_seen = now;
        Some(t)
    }
}

/// Counts one decoded frame. `outgoing` is `sll_pkttype == PACKET_OUTGOING`.
pub fn account(c: &mut ArpCounters, memory: &mut TargetMemory, f: &ArpFrame, outgoing: bool) {
    c.frames += 1;
    if f.sender_ip == f.target_ip {
        return; // gratuitous: an announcement
    }
    let key = match f.op {
        ARP_REQUEST => f.target_ip,
        ARP_REPLY => f.sender_ip,
        _ => return,
    };
    let Some(t) = memory.entry(c, key) else {
        return;
    };
    match (f.op, outgoing) {
        (ARP_REQUEST, false) => {
            t.requests_received += 1;
            t.add_requester(Requester {
                mac: f.sender_mac,
                ip: f.sender_ip,
            });
        }
        (ARP_REQUEST, true) => t.requests_sent += 1,
        (ARP_REPLY, true) => t.replies_sent += 1,
        _ => t.replies_received += 1,
    }
}

/// Classic BPF: accept ARP (also behind one 802.1Q tag), `SNAPLEN` bytes; drop the rest.
fn arp_filter() -> [libc::sock_filter; 7] {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_H_ABS: u16 = 0x28;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    [
        ins(LD_H_ABS, 0, 0, 12),
        ins(JEQ_K, 3, 0, u32::from(ETH_P_ARP)),
        ins(JEQ_K, 0, 3, u32::from(ETH_P_8021Q)),
        ins(LD_H_ABS, 0, 0, 16),
        ins(JEQ_K, 0, 1, u32::from(ETH_P_ARP)),
        ins(RET_K, 0, 0, SNAPLEN),
        ins(RET_K, 0, 0, 0),
    ]
}

/// Opens an AF_PACKET SOCK_RAW socket with the ARP filter attached, bound to `ifindex` with
/// `protocol` (ETH_P_ALL for the tap, ETH_P_ARP for the prober).
pub(crate) fn open_arp_socket(
    ifindex: u32,
    name: &str,
    protocol: u16,
) -> Result<OwnedFd, ArpError> {
    let fd = sys::socket::socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(|source| {
        ArpError::Socket {
            interface: name.to_string(),
            source,
        }
    })?;
    sys::socket::attach_filter(fd.as_fd(), &arp_filter()).map_err(|source| ArpError::Filter {
        interface: name.to_string(),
        source,
    })?;
    // Failure only means the default buffer.
    let _ = sys::socket::set_int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
    sys::packet::bind(fd.as_fd(), ifindex, protocol).map_err(|source| ArpError::Bind {
        interface: name.to_string(),
        ifindex,
        source,
    })?;
    Ok(fd)
}

/// Receives one frame without blocking: `Ok(None)` when nothing is queued; else (pkttype, len).
pub(crate) fn recv_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(u8, usize)>> {
    loop {
        match sys::packet::recv_from(fd, buf, libc::MSG_DONTWAIT) {
            Ok((len, pkttype)) => return Ok(Some((pkttype, len))),
            Err(err) => match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(err),
            },
        }
    }
}

/// The ifindex the packet socket is bound to now (-1 once the device was unregistered).
fn bound_ifindex(fd: BorrowedFd<'_>) -> Option<i32> {
    sys::packet::bound_ifindex(fd).ok()
}

/// One raw frame as the tap saw it (for recording test data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub outgoing: bool,
    pub pkttype: u8,
    pub bytes: Vec<u8>,
}

/// The ARP tap of one interface.
#[derive(Debug)]
pub struct ArpMonitor {
    fd: OwnedFd,
    counters: ArpCounters,
    memory: TargetMemory,
    buf: Vec<u8>,
    started: Instant,
}

impl AsFd for ArpMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ArpMonitor {
    /// Opens the tap on `ifindex` (named `name` in reports) in the calling thread's namespace.
    pub fn open(ifindex: u32, name: &str) -> Result<ArpMonitor, ArpError> {
        Self::with_max_targets(ifindex, name, DEFAULT_MAX_TARGETS)
    }

    /// Like [`ArpMonitor::open`] with a different cap on tracked unwatched addresses.
    pub fn with_max_targets(
        ifindex: u32,
        name: &str,
        max_targets: usize,
    ) -> Result<ArpMonitor, ArpError> {
        Ok(ArpMonitor {
            fd: open_arp_socket(ifindex, name, ETH_P_ALL)?,
            counters: ArpCounters::new(ifindex, name),
            memory: TargetMemory::new(max_targets),
            buf: vec![0u8; 2048],
            started: Instant::now(),
        })
    }

    /// Sets the watched addresses on this interface: never aged out of the accounting.
    pub fn set_watched(&mut self, targets: &[Ipv4Addr]) {
        self.memory.set_watched(&mut self.counters, targets);
    }

    /// True once the interface vanished; the monitor then counts nothing more.
    pub fn is_gone(&self) -> bool {
        self.counters.gone.is_some()
    }

    /// Handles a receive error: marks down or gone, never fails.
    fn on_error(&mut self, err: io::Error) {
        match err.raw_os_error() {
            Some(libc::ENETDOWN) => {
                self.counters.went_down = true;
                self.check_unbound();
            }
            Some(libc::ENODEV) | Some(libc::ENXIO) => {
                self.counters.gone = Some(format!(
                    "{} vanished while watched ({err})",
                    self.counters.interface
                ));
            }
            _ => {
                self.counters.gone = Some(format!(
                    "reading ARP frames on {} failed: {err}",
                    self.counters.interface
                ));
            }
        }
    }

    /// The next frame, waiting up to `timeout`; None on timeout or once the interface is gone.
    /// Not counted: for recording frames.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + timeout;
        while !self.is_gone() {
            match recv_frame(self.fd.as_fd(), &mut self.buf) {
                Ok(Some((pkttype, len))) => {
                    return Some(RawFrame {
                        outgoing: pkttype == PACKET_OUTGOING,
                        pkttype,
                        bytes: self.buf[..len].to_vec(),
                    })
                }
                Ok(None) => {}
                Err(e) => self.on_error(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = sys::poll::wait_one(self.fd.as_fd(), left.max(Duration::from_millis(1)));
        }
        None
    }

    /// After ENETDOWN the device may still be unregistering: once it is gone the socket's bound
    /// ifindex reads -1.
    fn check_unbound(&mut self) {
        if self.counters.went_down
            && self.counters.gone.is_none()
            && bound_ifindex(self.fd.as_fd()) == Some(-1)
        {
            self.counters.gone = Some(format!(
                "{} was deleted while watched (ENETDOWN, socket unbound)",
                self.counters.interface
            ));
        }
    }

    /// True after ENETDOWN (the interface went down or is being deleted).
    pub fn went_down(&self) -> bool {
        self.counters.went_down
    }

    /// Counts every queued frame without blocking; returns how many were read.
    pub fn drain(&mut self) -> usize {
        self.check_unbound();
        let mut n = 0;
        while !self.is_gone() {
            match recv_frame(self.fd.as_fd(), &mut self.buf) {
                Ok(Some((pkttype, len))) => {
                    n += 1;
                    match decode_arp_frame(&self.buf[..len]) {
                        Ok(f) => account(
                            &mut self.counters,
                            &mut self.memory,
                            &f,
                            pkttype == PACKET_OUTGOING,
                        ),
                        Err(_) => {
                            self.counters.frames += 1;
                            self.counters.malformed += 1;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => self.on_error(e),
            }
        }
        n
    }

    /// Waits up to `timeout` for frames, then counts everything queued.
    pub fn poll(&mut self, timeout: Duration) -> usize {
        if self.is_gone() {
            return 0;
        }
        let _ = sys::poll::wait_one(self.fd.as_fd(), timeout.max(Duration::from_millis(1)));
        self.drain()
    }

    /// The counters so far (kernel drops folded in; PACKET_STATISTICS resets on read).
    pub fn snapshot(&mut self) -> ArpCounters {
        if let Ok((_, drops)) = sys::packet::statistics(self.fd.as_fd()) {
            self.counters.kernel_drops += u64::from(drops);
        }
        self.counters.window_ms = self.started.elapsed().as_millis() as u64;
        self.counters.clone()
    }
}

/// Watches `interfaces` (ifindex, name) for `window` and returns one [`ArpCounters`] each, in
/// order. An interface that does not exist or vanishes mid-window yields counters with `gone`
/// set; other setup failures (no CAP_NET_RAW) are errors.
pub fn observe_window(
    interfaces: &[(u32, String)],
    window: Duration,
) -> Result<Vec<ArpCounters>, ArpError> {
    let interfaces: Vec<WatchedInterface> = interfaces
        .iter()
        .map(|(ifindex, name)| WatchedInterface {
            ifindex: *ifindex,
            interface: name.clone(),
            targets: Vec::new(),
        })
        .collect();
    observe_window_watching(&interfaces, window)
}

/// Like [`observe_window`], keeping each interface's watched addresses from aging out.
pub fn observe_window_watching(
    interfaces: &[WatchedInterface],
    window: Duration,
) -> Result<Vec<ArpCounters>, ArpError> {
    let mut slots: Vec<Result<ArpMonitor, ArpCounters>> = Vec::with_capacity(interfaces.len());
    for w in interfaces {
        let (ifindex, name) = (&w.ifindex, &w.interface);
        match ArpMonitor::open(*ifindex, name) {
            Ok(mut m) => {
                m.set_watched(&w.targets);
                slots.push(Ok(m))
            }
            Err(e) if e.is_gone() => {
                let mut c = ArpCounters::new(*ifindex, name);
                c.gone = Some(format!("not watched: {e}"));
                slots.push(Err(c));
            }
            Err(e) => return Err(e),
        }
    }
    let deadline = Instant::now() + window;
    loop {
        let live: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Ok(m) if !m.is_gone()))
            .map(|(i, _)| i)
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if live.is_empty() || left.is_zero() {
            break;
        }
        let fds: Vec<BorrowedFd<'_>> = live
            .iter()
            .filter_map(|&i| slots[i].as_ref().ok())
            .map(|m| m.as_fd())
            .collect();
        // A monitor that saw ENETDOWN is re-checked every 250 ms: a deleted device no longer wakes
        // the poll.
        let any_down = live
            .iter()
            .any(|&i| matches!(&slots[i], Ok(m) if m.went_down()));
        let wait = if any_down {
            left.min(Duration::from_millis(250))
        } else {
            left
        };
        let ready = sys::poll::wait_readable(&fds, wait.max(Duration::from_millis(1)))
            .unwrap_or_else(|_| vec![false; fds.len()]);
        for (k, &i) in live.iter().enumerate() {
            if let Ok(m) = &mut slots[i] {
                if ready[k] || m.went_down() {
                    m.drain();
                }
            }
        }
    }
    Ok(slots
        .into_iter()
        .map(|s| match s {
            Ok(mut m) => {
                m.drain();
                m.snapshot()
            }
            Err(c) => c,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::unhex;

    // Frames captured by the tap on a veth while `arping` asked for 10.99.0.51 and the kernel
    // answered (see agent/testdata/l2/README.md).
    const REQUEST: &str = include_str!("../../testdata/l2/arp-request.hex");
    const REPLY_OUT: &str = include_str!("../../testdata/l2/arp-reply-outgoing.hex");

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 51);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

    #[test]
    fn decodes_captured_frames() {
        let req = decode_arp_frame(&unhex(REQUEST)).unwrap();
        assert_eq!(req.op, ARP_REQUEST);
        assert_eq!(req.target_ip, VIP);
        assert_eq!(req.sender_ip, CLIENT);
        assert_eq!(req.eth_dst, MacAddr::BROADCAST);
        let rep = decode_arp_frame(&unhex(REPLY_OUT)).unwrap();
        assert_eq!(rep.op, ARP_REPLY);
        assert_eq!(rep.sender_ip, VIP);
        assert_eq!(rep.target_ip, CLIENT);
        assert_eq!(rep.target_mac, req.sender_mac);
    }

    #[test]
    fn counts_requests_replies_and_requesters() {
        let req = decode_arp_frame(&unhex(REQUEST)).unwrap();
        let rep = decode_arp_frame(&unhex(REPLY_OUT)).unwrap();
        let mut c = ArpCounters::new(2, "eth0");
        let mut mem = TargetMemory::new(16);
        for _ in 0..3 {
            account(&mut c, &mut mem, &req, false);
        }
        account(&mut c, &mut mem, &rep, true);
        account(&mut c, &mut mem, &rep, false);
        let t = c.target(VIP).unwrap();
        assert_eq!(t.requests_received, 3);
        assert_eq!(t.replies_sent, 1);
        assert_eq!(t.replies_received, 1);
        assert_eq!(t.requesters.len(), 1);
        assert_eq!(t.requesters[0].ip, CLIENT);
        assert_eq!(c.frames, 5);
        // The node's own outgoing request is not a request received.
        let mut mine = req;
        mine.target_ip = Ipv4Addr::new(10, 99, 0, 1);
        account(&mut c, &mut mem, &mine, true);
        assert_eq!(c.target(mine.target_ip).unwrap().requests_sent, 1);
        assert_eq!(c.target(mine.target_ip).unwrap().requests_received, 0);
    }

    #[test]
    fn gratuitous_arp_is_not_a_question() {
        let mut g = decode_arp_frame(&unhex(REQUEST)).unwrap();
        g.sender_ip = VIP;
        let mut c = ArpCounters::new(2, "eth0");
        let mut mem = TargetMemory::new(16);
        account(&mut c, &mut mem, &g, false);
        assert!(c.targets.is_empty());
        assert_eq!(c.frames, 1);
    }

    fn asked(req: &ArpFrame, ip: Ipv4Addr) -> ArpFrame {
        let mut f = *req;
        f.target_ip = ip;
        f
    }

    #[test]
    fn memory_ages_out_the_least_recently_seen_unwatched_address() {
        let req = decode_arp_frame(&unhex(REQUEST)).unwrap();
        let mut c = ArpCounters::new(2, "eth0");
        let mut mem = TargetMemory::new(10);
        mem.set_watched(&mut c, &[VIP]);
        account(&mut c, &mut mem, &req, false);
        // A busy segment: 5,000 distinct addresses asked for, more than the cap.
        for i in 0..5000u32 {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i);
            account(&mut c, &mut mem, &asked(&req, ip), false);
        }
        // Bounded: 10 unwatched + the watched VIP; the rest aged out, none lost silently.
        assert_eq!(c.targets.len(), 11);
        assert_eq!(c.evicted, 4990);
        assert_eq!(c.overflow, 0);
        // The watched VIP was never aged out and kept its count.
        assert_eq!(c.target(VIP).unwrap().requests_received, 1);
        // The most recent unwatched addresses are the ones kept.
        assert!(c.target(Ipv4Addr::new(10, 1, 19, 135)).is_some());
        assert!(c.target(Ipv4Addr::new(10, 1, 0, 0)).is_none());
        // A new address after all that is counted (the old cumulative cap left it as overflow).
        let new_vip = Ipv4Addr::new(10, 99, 0, 77);
        for _ in 0..3 {
            account(&mut c, &mut mem, &asked(&req, new_vip), false);
        }
        assert_eq!(c.target(new_vip).unwrap().requests_received, 3);
        assert_eq!(c.targets.len(), 11);
    }

    #[test]
    fn a_recently_seen_address_stays_and_unwatched_targets_become_evictable() {
        let req = decode_arp_frame(&unhex(REQUEST)).unwrap();
        let mut c = ArpCounters::new(2, "eth0");
        let mut mem = TargetMemory::new(2);
        let a = Ipv4Addr::new(10, 1, 0, 1);
        let b = Ipv4Addr::new(10, 1, 0, 2);
        let d = Ipv4Addr::new(10, 1, 0, 3);
        account(&mut c, &mut mem, &asked(&req, a), false);
        account(&mut c, &mut mem, &asked(&req, b), false);
        account(&mut c, &mut mem, &asked(&req, a), false); // a is now the most recent
        account(&mut c, &mut mem, &asked(&req, d), false); // ages out b
        assert!(c.target(b).is_none());
        assert_eq!(c.target(a).unwrap().requests_received, 2);
        // Re-admitted entries say so, so window differences do not subtract the old entry.
        let first = c.target(d).unwrap().admitted;
        account(&mut c, &mut mem, &asked(&req, b), false); // ages out a
        account(&mut c, &mut mem, &asked(&req, a), false); // ages out d
        account(&mut c, &mut mem, &asked(&req, d), false); // ages out b
        assert_ne!(c.target(d).unwrap().admitted, first);
        // Watching pins; unwatching puts the address back among the ageable ones.
        mem.set_watched(&mut c, &[VIP, a]);
        for i in 0..50u8 {
            account(
                &mut c,
                &mut mem,
                &asked(&req, Ipv4Addr::new(10, 2, 0, i)),
                false,
            );
        }
        assert!(c.target(a).is_some());
        assert_eq!(mem.watched().len(), 2);
        mem.set_watched(&mut c, &[VIP]);
        assert!(c.target(a).is_none(), "a is the oldest once unwatched");
        assert_eq!(c.targets.len(), 2);
    }

    #[test]
    fn a_zero_cap_counts_unwatched_frames_as_overflow() {
        let req = decode_arp_frame(&unhex(REQUEST)).unwrap();
        let mut c = ArpCounters::new(2, "eth0");
        let mut mem = TargetMemory::new(0);
        mem.set_watched(&mut c, &[VIP]);
        account(
            &mut c,
            &mut mem,
            &asked(&req, Ipv4Addr::new(10, 1, 0, 1)),
            false,
        );
        account(&mut c, &mut mem, &req, false);
        assert_eq!(c.overflow, 1);
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.target(VIP).unwrap().requests_received, 1);
    }

    #[test]
    fn built_who_has_round_trips_and_vlan_is_understood() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let f = who_has_frame(mac, CLIENT, VIP);
        let d = decode_arp_frame(&f).unwrap();
        assert_eq!(
            (d.op, d.sender_mac, d.sender_ip, d.target_ip),
            (1, mac, CLIENT, VIP)
        );
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(decode_arp_frame(&tagged).unwrap().target_ip, VIP);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let req = unhex(REQUEST);
        for len in 0..req.len() {
            let _ = decode_arp_frame(&req[..len]);
        }
        assert_eq!(decode_arp_frame(&req[..20]), Err(FrameError::Short(20)));
        let mut ip = req.clone();
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(decode_arp_frame(&ip), Err(FrameError::NotArp(0x0800)));
        let mut v6 = req.clone();
        v6[16..18].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(
            decode_arp_frame(&v6),
            Err(FrameError::NotIpv4OverEthernet { .. })
        ));
    }
}
