//! The one netlink layer of netmend: a raw `AF_NETLINK` socket, request building, dump reading
//! with 32 KiB reads, ack/error handling, and a zero-copy attribute walker. Used by the nftables,
//! rtnetlink (links, addresses) and sock_diag probes, and by the nftables writer.
//!
//! It owns no protocol knowledge beyond the netlink header; decoding of message bodies lives with
//! each source. Attribute walking is hand-written (a TLV walk is a few lines) because generic parsers
//! cost too much on an 80,000-rule dump.
//!
//! Long because it is the whole netlink framing layer (messages, attributes, nested attributes,
//! errors, dumps) the other readers build on.

use crate::sys;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// The kernel hands at most about 32 KiB per dump batch; reading less costs extra syscalls.
pub const DUMP_READ_SIZE: usize = 32 * 1024;

/// Errors of the netlink layer, saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open netlink socket (protocol {protocol}): {source}")]
    Open { protocol: i32, source: io::Error },
    #[error("netlink {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("netlink {what}: the kernel answered {}", errno_name(*.errno))]
    Kernel { what: String, errno: i32 },
    #[error("netlink {what}: malformed message: {detail}")]
    Malformed { what: String, detail: String },
    #[error("netlink {what}: the dump was interrupted by a concurrent change")]
    DumpInterrupted { what: String },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. } | NetlinkError::Open { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// True when the failure is a missing privilege (EPERM / EACCES).
    pub fn is_permission(&self) -> bool {
        matches!(self.errno(), Some(libc::EPERM) | Some(libc::EACCES))
    }
}

/// `EPERM` -> "EPERM (operation not permitted)" and so on.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOBUFS => "ENOBUFS",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EINTR => "EINTR",
        libc::ENODEV => "ENODEV",
        libc::ERANGE => "ERANGE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text
        .split(" (os error")
        .next()
        .unwrap_or(&text)
        .to_lowercase();
    if name.is_empty() {
        format!("errno {errno} ({text})")
    } else {
        format!("{name} ({text})")
    }
}

/// One received netlink message, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the 16-byte netlink header.
    pub payload: &'a [u8],
}

/// Splits a buffer into netlink messages. Stops (with an error) at a truncated header.
pub fn split_messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, String>> {
    let mut offset = 0usize;
    std::iter::from_fn(move || {
        if offset >= buf.len() {
            return None;
        }
        let rest = &buf[offset..];
        if rest.len() < NLMSG_HDRLEN {
            offset = buf.len();
            return Some(Err(format!("{} trailing bytes, no header", rest.len())));
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            offset = buf.len();
            return Some(Err(format!(
                "message length {len} outside 16..={}",
                rest.len()
            )));
        }
        let msg = Message {
            msg_type: u16::from_ne_bytes(rest[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(rest[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(rest[8..12].try_into().unwrap()),
            pid: u32::from_ne_bytes(rest[12..16].try_into().unwrap()),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        offset += align4(len);
        Some(Ok(msg))
    })
}

pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// A netlink attribute: type (without the nested/byte-order flags) and value.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub kind: u16,
    pub nested: bool,
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn u8(&self) -> Option<u8> {
        self.value.first().copied()
    }
    /// Host-order u16 (rtnetlink style).
    pub fn u16_ne(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.value.get(..2)?.try_into().ok()?))
    }
    /// Host-order u32 (rtnetlink style).
    pub fn u32_ne(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.value.get(..4)?.try_into().ok()?))
    }
    /// Network-order u16 (nftables style).
    pub fn u16_be(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.value.get(..2)?.try_into().ok()?))
    }
    /// Network-order u32 (nftables style).
    pub fn u32_be(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.get(..4)?.try_into().ok()?))
    }
    /// Network-order u64 (nftables style).
    pub fn u64_be(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.value.get(..8)?.try_into().ok()?))
    }
    /// A NUL-terminated string (lossy UTF-8; the terminator and anything after it dropped).
    pub fn string(&self) -> String {
        let end = self
            .value
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.value.len());
        String::from_utf8_lossy(&self.value[..end]).into_owned()
    }
    /// Same as [`Attr::string`] but borrowed when possible.
    pub fn str(&self) -> &'a str {
        let end = self
            .value
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.value.len());
        std::str::from_utf8(&self.value[..end]).unwrap_or("")
    }
    /// The attributes nested inside this one.
    pub fn nested_attrs(&self) -> Attrs<'a> {
        Attrs::new(self.value)
    }
}

/// Iterator over the attributes of a buffer. A truncated attribute ends the walk and sets
/// [`Attrs::malformed`], so decoders can report it instead of failing.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    offset: usize,
    malformed: bool,
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs {
            buf,
            offset: 0,
            malformed: false,
        }
    }

    /// True once a truncated or impossible attribute header was met.
    pub fn malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let rest = self.buf.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            self.malformed = true;
            self.offset = self.buf.len();
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let raw_kind = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            self.malformed = true;
            self.offset = self.buf.len();
            return None;
        }
        self.offset += align4(len);
        Some(Attr {
            kind: raw_kind & NLA_TYPE_MASK,
            nested: raw_kind & NLA_F_NESTED != 0,
            value: &rest[4..len],
        })
    }
}

/// Builds one netlink message: header, fixed family header, then attributes (nests supported).
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl MessageBuilder {
    pub fn new(msg_type: u16, flags: u16, seq: u32) -> MessageBuilder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        MessageBuilder {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends raw bytes (the family header), padded to 4.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    pub fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(self, kind: u16, value: &str) -> Self {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    pub fn attr_u32_be(self, kind: u16, value: u32) -> Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn attr_u64_be(self, kind: u16, value: u64) -> Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn attr_u32_ne(self, kind: u16, value: u32) -> Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    pub fn begin_nested(mut self, kind: u16) -> Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(mut self) -> Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        while !self.nests.is_empty() {
            self = self.end_nested();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A bound netlink socket.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    protocol: i32,
    seq: u32,
    buf: Vec<u8>,
}

impl AsFd for NetlinkSocket {
    /// The socket, for a poller that also waits on other descriptors.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetlinkSocket {
    /// Opens and binds a socket of `protocol` (NETLINK_NETFILTER, NETLINK_ROUTE, ...) in the calling
    /// thread's network namespace.
    pub fn open(protocol: i32) -> Result<NetlinkSocket, NetlinkError> {
        let fd = sys::socket::netlink_socket(protocol)
            .map_err(|source| NetlinkError::Open { protocol, source })?;
        let mut socket = NetlinkSocket {
            fd,
            protocol,
            seq: 0,
            buf: vec![0u8; DUMP_READ_SIZE],
        };
        // Ask for extended acks and strict checking where supported; failures are harmless.
        socket
            .set_int_option(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)
            .ok();
        Ok(socket)
    }

    pub fn protocol(&self) -> i32 {
        self.protocol
    }

    /// The next sequence number for a request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn set_int_option(&mut self, level: i32, name: i32, value: i32) -> io::Result<()> {
        sys::socket::set_int_option(self.fd.as_fd(), level, name, value)
    }

    /// Sets the receive buffer, forcing past rmem_max when privileged.
    pub fn set_receive_buffer(&mut self, bytes: i32) -> io::Result<()> {
        self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .or_else(|_| self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
    }

    /// Joins a multicast group (for events).
    pub fn join_group(&mut self, group: u32) -> io::Result<()> {
        self.set_int_option(
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            group as i32,
        )
    }

    /// Sends one buffer holding one or more messages.
    pub fn send(&self, bytes: &[u8], what: &str) -> Result<(), NetlinkError> {
        sys::socket::netlink_send(self.fd.as_fd(), bytes).map_err(|source| NetlinkError::Io {
            what: what.to_string(),
            source,
        })?;
        Ok(())
    }

    /// Reads one datagram into the internal buffer and returns its length. EINTR is retried.
    pub fn recv(&mut self, what: &str) -> Result<usize, NetlinkError> {
        loop {
            match sys::socket::recv(self.fd.as_fd(), &mut self.buf, 0) {
                Ok(len) => return Ok(len),
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                Err(source) => {
                    return Err(NetlinkError::Io {
                        what: what.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Like [`NetlinkSocket::recv`] but without blocking: `Ok(None)` when nothing is queued.
    pub fn try_recv(&mut self, what: &str) -> Result<Option<usize>, NetlinkError> {
        match sys::socket::recv(self.fd.as_fd(), &mut self.buf, libc::MSG_DONTWAIT) {
            Ok(len) => Ok(Some(len)),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                Ok(None)
            }
            Err(source) => Err(NetlinkError::Io {
                what: what.to_string(),
                source,
            }),
        }
    }

    /// The bytes of the last datagram read.
    pub fn received(&self, len: usize) -> &[u8] {
        &self.buf[..len]
    }

    /// Sends a dump request and hands every reply message's payload to `on_message`, until
    /// NLMSG_DONE. Fails with [`NetlinkError::DumpInterrupted`] when the kernel flags the dump as
    /// inconsistent (NLM_F_DUMP_INTR) so that the caller re-dumps.
    pub fn dump<F>(
        &mut self,
        request: &[u8],
        what: &str,
        mut on_message: F,
    ) -> Result<(), NetlinkError>
    where
        F: FnMut(Message<'_>) -> Result<(), NetlinkError>,
    {
        self.send(request, what)?;
        let seq = u32::from_ne_bytes(request[8..12].try_into().unwrap());
        let mut interrupted = false;
        loop {
            let len = self.recv(what)?;
            let buf = &self.buf[..len];
            for msg in split_messages(buf) {
                let msg = msg.map_err(|detail| NetlinkError::Malformed {
                    what: what.to_string(),
                    detail,
                })?;
                if msg.seq != seq {
                    // A stale reply of an earlier, abandoned request: skip it.
                    continue;
                }
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.msg_type {
                    NLMSG_DONE => {
                        if interrupted {
                            return Err(NetlinkError::DumpInterrupted {
                                what: what.to_string(),
                            });
                        }
                        return Ok(());
                    }
                    NLMSG_ERROR => {
                        let errno = error_code(msg.payload);
                        if errno == 0 {
                            continue;
                        }
                        return Err(NetlinkError::Kernel {
                            what: what.to_string(),
                            errno: -errno,
                        });
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => continue,
                    _ => on_message(msg)?,
                }
            }
        }
    }

    /// Sends a request (or a batch) that asks for acks and waits until every sequence number in
    /// `expected_seqs` was acknowledged or one failed. Returns the first error.
    pub fn transact(
        &mut self,
        request: &[u8],
        expected_seqs: &[u32],
        what: &str,
    ) -> Result<(), NetlinkError> {
        self.send(request, what)?;
        let mut pending: Vec<u32> = expected_seqs.to_vec();
        let mut first_error: Option<NetlinkError> = None;
        while !pending.is_empty() {
            let len = self.recv(what)?;
            let buf = &self.buf[..len];
            for msg in split_messages(buf) {
                let msg = msg.map_err(|detail| NetlinkError::Malformed {
                    what: what.to_string(),
                    detail,
                })?;
                if msg.msg_type == NLMSG_ERROR {
                    let errno = error_code(msg.payload);
                    // The echoed header's seq sits right after the error code.
                    let seq = msg
                        .payload
                        .get(12..16)
                        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(msg.seq);
                    pending.retain(|s| *s != seq);
                    if errno != 0 && first_error.is_none() {
                        first_error = Some(NetlinkError::Kernel {
                            what: what.to_string(),
                            errno: -errno,
                        });
                        // After an error in a batch the kernel aborts the rest: stop waiting.
                        pending.clear();
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The (negative) errno of an NLMSG_ERROR payload; 0 is an ack.
pub fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(-libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_walker_round_trip() {
        let msg = MessageBuilder::new(0x0a04, NLM_F_REQUEST | NLM_F_DUMP, 7)
            .raw(&[2, 0, 0, 0])
            .attr_str(1, "nat")
            .begin_nested(2)
            .attr_u32_be(1, 0xdead_beef)
            .end_nested()
            .finish();
        let messages: Vec<_> = split_messages(&msg).collect();
        assert_eq!(messages.len(), 1);
        let m = messages[0].as_ref().unwrap();
        assert_eq!(m.msg_type, 0x0a04);
        assert_eq!(m.seq, 7);
        let attrs: Vec<_> = Attrs::new(&m.payload[4..]).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].string(), "nat");
        assert!(attrs[1].nested);
        let inner: Vec<_> = attrs[1].nested_attrs().collect();
        assert_eq!(inner[0].u32_be(), Some(0xdead_beef));
    }

    #[test]
    fn truncated_attribute_is_reported_not_panicking() {
        let bytes = [8u8, 0, 1, 0, 1, 2];
        let mut attrs = Attrs::new(&bytes);
        assert!(attrs.next().is_none());
        assert!(attrs.malformed());
    }

    #[test]
    fn truncated_message_is_an_error() {
        let mut msg = MessageBuilder::new(3, 0, 1).finish();
        msg[0] = 200;
        let first = split_messages(&msg).next().unwrap();
        assert!(first.is_err());
    }

    #[test]
    fn errno_names_read_well() {
        assert_eq!(errno_name(libc::EBUSY), "EBUSY (device or resource busy)");
        assert!(errno_name(9999).starts_with("errno 9999"));
    }
}
