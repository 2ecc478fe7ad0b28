//! Links over rtnetlink, read-only: one RTM_GETLINK dump (or a single-link get) in the calling
//! thread's network namespace, and a [`LinkWatcher`] on the RTNLGRP_LINK multicast group that
//! yields decoded RTM_NEWLINK/RTM_DELLINK changes. Needs no capability. The `ifinfomsg` decoder
//! [`decode_link`] is pure and tested on RTM_NEWLINK messages captured from the kernel
//! (agent/testdata/l2/).
//!
//! Kernel quirks handled: `ifi_flags` carries only the administrative IFF_PROMISC (the kernel
//! reports `dev->gflags` for PROMISC/ALLMULTI), while packet-socket promiscuity shows only in
//! `IFLA_PROMISCUITY`; both are decoded. Every flag or counter change arrives as an RTM_NEWLINK
//! event, so a watcher sees promisc loss without polling. A full event queue (ENOBUFS) loses
//! events: [`LinksError::Overflow`] tells the caller to re-dump. The kernel omits `IFLA_LINK` when
//! it equals the link's own index, which happens for a veth whose peer in another namespace has
//! the same ifindex: `link_netnsid` is then the only hint of a peer.

use crate::model::l2::{Link, LinkChange, MacAddr, OperState};
use crate::observe::netlink::{
    split_messages, Attrs, Message, MessageBuilder, NetlinkError, NetlinkSocket, NLMSG_ERROR,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::sys;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTNLGRP_LINK: u32 = 1;
pub const IFINFOMSG_LEN: usize = 16;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_OPERSTATE: u16 = 16;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_PROMISCUITY: u16 = 30;
pub const IFLA_LINK_NETNSID: u16 = 37;
pub const IFLA_PARENT_DEV_NAME: u16 = 56;
pub const IFLA_INFO_KIND: u16 = 1;
const DUMP_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("listing links (RTM_GETLINK dump): {0}")]
    Dump(NetlinkError),
    #[error("reading link {selector}: {source}")]
    Get {
        selector: String,
        source: NetlinkError,
    },
    #[error("link {selector} does not exist (ENODEV)")]
    NoSuchLink { selector: String },
    #[error("decoding an RTM_NEWLINK message: {0}")]
    Decode(#[from] DecodeError),
    #[error("watching links (RTNLGRP_LINK): {0}")]
    Watch(NetlinkError),
    #[error("link events were lost (ENOBUFS, the socket queue overflowed): re-dump the links")]
    Overflow,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ifinfomsg needs {IFINFOMSG_LEN} bytes, got {0}")]
    Short(usize),
    #[error("link {ifindex} has no IFLA_IFNAME")]
    NoName { ifindex: u32 },
    #[error("link {ifindex}: truncated attribute")]
    Truncated { ifindex: u32 },
}

/// How a link is named by a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSelector {
    Index(u32),
    Name(String),
}

impl std::fmt::Display for LinkSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkSelector::Index(i) => write!(f, "ifindex {i}"),
            LinkSelector::Name(n) => write!(f, "{n}"),
        }
    }
}

impl From<u32> for LinkSelector {
    fn from(i: u32) -> Self {
        LinkSelector::Index(i)
    }
}

impl From<&str> for LinkSelector {
    fn from(n: &str) -> Self {
        LinkSelector::Name(n.to_string())
    }
}

impl From<String> for LinkSelector {
    fn from(n: String) -> Self {
        LinkSelector::Name(n)
    }
}

/// An `ifinfomsg` header: family, type, index, flags, change.
pub fn ifinfomsg(ifindex: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// Decodes one RTM_NEWLINK/RTM_DELLINK payload (`ifinfomsg` + attributes).
pub fn decode_link(payload: &[u8]) -> Result<Link, DecodeError> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(DecodeError::Short(payload.len()));
    }
    let link_type = u16::from_ne_bytes([payload[2], payload[3]]);
    let ifindex = i32::from_ne_bytes(payload[4..8].try_into().unwrap_or_default()) as u32;
    let flags = u32::from_ne_bytes(payload[8..12].try_into().unwrap_or_default());
    let mut link = Link {
        ifindex,
        name: String::new(),
        flags,
        promiscuity: 0,
        operstate: OperState::Unknown,
        kind: None,
        mac: None,
        link_type,
        mtu: None,
        parent_ifindex: None,
        link_netnsid: None,
        master: None,
        parent_dev: None,
    };
    let mut have_name = false;
    let mut attrs = Attrs::new(&payload[IFINFOMSG_LEN..]);
    for attr in attrs.by_ref() {
        match attr.kind {
            IFLA_IFNAME => {
                link.name = attr.string();
                have_name = true;
            }
            IFLA_ADDRESS if attr.value.len() == 6 => link.mac = MacAddr::from_slice(attr.value),
            IFLA_MTU => link.mtu = attr.u32_ne(),
            IFLA_LINK => link.parent_ifindex = attr.u32_ne(),
            IFLA_MASTER => link.master = attr.u32_ne(),
            IFLA_OPERSTATE => link.operstate = OperState::from_u8(attr.u8().unwrap_or(0)),
            IFLA_PROMISCUITY => link.promiscuity = attr.u32_ne().unwrap_or(0),
            IFLA_LINK_NETNSID => link.link_netnsid = attr.u32_ne().map(|v| v as i32),
            IFLA_PARENT_DEV_NAME => link.parent_dev = Some(attr.string()),
            IFLA_LINKINFO => {
                link.kind = attr
                    .nested_attrs()
                    .find(|a| a.kind == IFLA_INFO_KIND)
                    .map(|a| a.string())
                    .filter(|k| !k.is_empty());
            }
            _ => {}
        }
    }
    if attrs.malformed() {
        return Err(DecodeError::Truncated { ifindex });
    }
    if !have_name {
        return Err(DecodeError::NoName { ifindex });
    }
    Ok(link)
}

/// The RTM_GETLINK dump request.
pub fn links_request(seq: u32) -> Vec<u8> {
    MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .raw(&ifinfomsg(0, 0, 0))
        .finish()
}

/// The raw RTM_NEWLINK payloads of a dump (for recording test data).
pub fn read_link_payloads() -> Result<Vec<Vec<u8>>, LinksError> {
    let mut attempt = 0;
    loop {
        let mut sock = NetlinkSocket::open(libc::NETLINK_ROUTE).map_err(LinksError::Dump)?;
        let seq = sock.next_seq();
        let mut found = Vec::new();
        let res = sock.dump(&links_request(seq), "RTM_GETLINK dump", |m: Message<'_>| {
            if m.msg_type == RTM_NEWLINK {
                found.push(m.payload.to_vec());
            }
            Ok(())
        });
        match res {
            Ok(()) => return Ok(found),
            Err(NetlinkError::DumpInterrupted { .. }) if attempt + 1 < DUMP_RETRIES => attempt += 1,
            Err(e) => return Err(LinksError::Dump(e)),
        }
    }
}

/// Every link of the calling thread's network namespace.
pub fn read_links() -> Result<Vec<Link>, LinksError> {
    read_link_payloads()?
        .iter()
        .map(|p| decode_link(p).map_err(LinksError::from))
        .collect()
}

/// One link, by index or name (RTM_GETLINK without NLM_F_DUMP). A missing link is
/// [`LinksError::NoSuchLink`].
pub fn get_link(selector: &LinkSelector) -> Result<Link, LinksError> {
    let get_err = |source| LinksError::Get {
        selector: selector.to_string(),
        source,
    };
    let mut sock = NetlinkSocket::open(libc::NETLINK_ROUTE).map_err(get_err)?;
    let seq = sock.next_seq();
    let builder = MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST, seq);
    let request = match selector {
        LinkSelector::Index(i) => builder.raw(&ifinfomsg(*i, 0, 0)).finish(),
        LinkSelector::Name(n) => builder
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, n)
            .finish(),
    };
    let what = format!("RTM_GETLINK {selector}");
    sock.send(&request, &what).map_err(get_err)?;
    loop {
        let len = sock.recv(&what).map_err(get_err)?;
        for msg in split_messages(sock.received(len)) {
            let msg = msg.map_err(|detail| {
                get_err(NetlinkError::Malformed {
                    what: what.clone(),
                    detail,
                })
            })?;
            if msg.seq != seq {
                continue;
            }
            match msg.msg_type {
                RTM_NEWLINK => return Ok(decode_link(msg.payload)?),
                NLMSG_ERROR => {
                    let errno = -crate::observe::netlink::error_code(msg.payload);
                    if errno == libc::ENODEV {
                        return Err(LinksError::NoSuchLink {
                            selector: selector.to_string(),
                        });
                    }
                    return Err(get_err(NetlinkError::Kernel {
                        what: what.clone(),
                        errno,
                    }));
                }
                _ => {}
            }
        }
    }
}

/// Decodes one RTNLGRP_LINK event message; None for other message types.
pub fn decode_link_event(msg_type: u16, payload: &[u8]) -> Option<Result<LinkChange, DecodeError>> {
    match msg_type {
        RTM_NEWLINK => Some(decode_link(payload).map(LinkChange::Changed)),
        RTM_DELLINK => Some(decode_link(payload).map(LinkChange::Deleted)),
        _ => None,
    }
}

/// Link events of the calling thread's network namespace (the socket keeps that namespace).
#[derive(Debug)]
pub struct LinkWatcher {
    sock: NetlinkSocket,
}

impl AsFd for LinkWatcher {
    /// The socket's descriptor, for an external poller.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl LinkWatcher {
    /// Joins RTNLGRP_LINK. Events start from this moment: dump afterwards for the current state.
    pub fn open() -> Result<LinkWatcher, LinksError> {
        let mut sock = NetlinkSocket::open(libc::NETLINK_ROUTE).map_err(LinksError::Watch)?;
        sock.set_receive_buffer(1 << 20).ok();
        sock.join_group(RTNLGRP_LINK).map_err(|source| {
            LinksError::Watch(NetlinkError::Io {
                what: "joining RTNLGRP_LINK".into(),
                source,
            })
        })?;
        Ok(LinkWatcher { sock })
    }

    /// Every queued change, without blocking (empty when nothing is queued).
    pub fn try_changes(&mut self) -> Result<Vec<LinkChange>, LinksError> {
        let mut out = Vec::new();
        loop {
            let len = match self.sock.try_recv("reading link events") {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(out),
                Err(e) if e.errno() == Some(libc::ENOBUFS) => return Err(LinksError::Overflow),
                Err(e) => return Err(LinksError::Watch(e)),
            };
            for msg in split_messages(self.sock.received(len)).flatten() {
                if let Some(change) = decode_link_event(msg.msg_type, msg.payload) {
                    out.push(change?);
                }
            }
        }
    }

    /// Waits up to `timeout` for at least one change and returns what is queued then.
    pub fn next_changes(&mut self, timeout: Duration) -> Result<Vec<LinkChange>, LinksError> {
        let deadline = Instant::now() + timeout;
        loop {
            let changes = self.try_changes()?;
            if !changes.is_empty() {
                return Ok(changes);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(changes);
            }
            let _ = sys::poll::wait_one(self.sock.as_fd(), left.max(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::l2::{LinkClass, IFF_LOOPBACK, IFF_PROMISC, IFF_UP};

    use crate::testutil::unhex;

    // RTM_NEWLINK payloads captured from the kernel (see agent/testdata/l2/README.md).
    const LO: &str = include_str!("../../testdata/l2/link-lo.hex");
    const VETH: &str = include_str!("../../testdata/l2/link-veth.hex");
    const BRIDGE: &str = include_str!("../../testdata/l2/link-bridge.hex");
    const VXLAN: &str = include_str!("../../testdata/l2/link-vxlan.hex");
    const VETH_PROMISC: &str = include_str!("../../testdata/l2/link-veth-promisc.hex");

    #[test]
    fn decodes_captured_links() {
        let lo = decode_link(&unhex(LO)).unwrap();
        assert_eq!(lo.name, "lo");
        assert_eq!(lo.ifindex, 1);
        assert!(lo.flags & IFF_LOOPBACK != 0 && lo.is_up());
        assert_eq!(lo.kind, None);
        assert_eq!(lo.class(), LinkClass::Virtual("loopback".into()));

        let veth = decode_link(&unhex(VETH)).unwrap();
        assert_eq!(veth.name, "nm-veth0");
        assert_eq!(veth.kind.as_deref(), Some("veth"));
        assert!(veth.mac.is_some());
        // The peer lives in another namespace; there it has the same ifindex (2), and the kernel
        // omits IFLA_LINK when it equals the link's own index: only the netnsid tells.
        assert!(veth.link_netnsid.is_some());
        assert_eq!(veth.class(), LinkClass::Virtual("veth".into()));
        assert!(!veth.is_promisc());

        let br = decode_link(&unhex(BRIDGE)).unwrap();
        assert_eq!(br.name, "nm-br0");
        assert_eq!(br.kind.as_deref(), Some("bridge"));

        let vx = decode_link(&unhex(VXLAN)).unwrap();
        assert_eq!(vx.name, "nm-vx0");
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(vx.mtu, Some(1500)); // no lower device: the default MTU
    }

    #[test]
    fn admin_flag_and_packet_socket_promiscuity_are_told_apart() {
        // Captured after `ip link set nm-veth0 promisc on` while a packet socket also held it.
        let l = decode_link(&unhex(VETH_PROMISC)).unwrap();
        assert!(l.flags & IFF_PROMISC != 0);
        assert!(l.flags & IFF_UP != 0);
        assert!(l.promiscuity >= 1);
        // The plain capture: no admin flag, no holders.
        let plain = decode_link(&unhex(VETH)).unwrap();
        assert_eq!(plain.promiscuity, 0);
    }

    #[test]
    fn a_physical_nic_is_a_veth_capture_without_its_kind() {
        // This kernel cannot create a real NIC: forge one from the captured veth by removing
        // IFLA_LINKINFO and renaming it, the attributes a real driver reports.
        let mut l = decode_link(&unhex(VETH)).unwrap();
        l.kind = None;
        l.name = "wlan0".into();
        l.parent_ifindex = None;
        l.link_netnsid = None;
        l.parent_dev = Some("mmc1:0001:1".into());
        assert_eq!(l.class(), LinkClass::Physical);
        l.name = "cni0".into();
        assert_eq!(l.class(), LinkClass::Virtual("name cni*".into()));
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        for s in [LO, VETH, BRIDGE, VXLAN] {
            let b = unhex(s);
            for len in 0..b.len() {
                let _ = decode_link(&b[..len]);
            }
        }
        assert_eq!(decode_link(&[0; 4]), Err(DecodeError::Short(4)));
        assert_eq!(
            decode_link(&ifinfomsg(7, 0, 0)),
            Err(DecodeError::NoName { ifindex: 7 })
        );
        let mut b = ifinfomsg(7, 0, 0).to_vec();
        b.extend_from_slice(&[40, 0, 3, 0, b'x']);
        assert_eq!(decode_link(&b), Err(DecodeError::Truncated { ifindex: 7 }));
    }

    #[test]
    fn events_decode_by_type() {
        let veth = unhex(VETH);
        assert!(matches!(
            decode_link_event(RTM_DELLINK, &veth),
            Some(Ok(LinkChange::Deleted(l))) if l.name == "nm-veth0"
        ));
        assert!(matches!(
            decode_link_event(RTM_NEWLINK, &veth),
            Some(Ok(LinkChange::Changed(_)))
        ));
        assert!(decode_link_event(20, &veth).is_none());
    }
}
