//! The promiscuous-mode action: set or clear the administrative IFF_PROMISC flag of one link with
//! RTM_NEWLINK (`ifi_change = IFF_PROMISC`, so no other flag is touched), then read the link back
//! to verify. Idempotent: setting a flag that is already set changes nothing and says so. Needs
//! CAP_NET_ADMIN.
//!
//! Kernel quirk handled: the kernel keeps a promiscuity COUNTER; the admin flag is one holder among
//! packet sockets and bridges. `ifi_flags` read back shows only the admin flag, which is what is
//! verified here; clearing it leaves the counter held by others untouched (and promiscuous in
//! effect while they hold it).

use crate::model::l2::{Link, IFF_PROMISC};
use crate::observe::links::{get_link, ifinfomsg, LinkSelector, LinksError, RTM_NEWLINK};
use crate::observe::netlink::{
    MessageBuilder, NetlinkError, NetlinkSocket, NLM_F_ACK, NLM_F_REQUEST,
};

#[derive(Debug, thiserror::Error)]
pub enum LinkActError {
    #[error("cannot set {link} promisc {state}: no such interface (ENODEV)")]
    NoSuchLink { link: String, state: &'static str },
    #[error("cannot set {link} promisc {state}: reading the link: {source}")]
    Read {
        link: String,
        state: &'static str,
        source: LinksError,
    },
    #[error("cannot set {link} promisc {state}: {source}")]
    Change {
        link: String,
        state: &'static str,
        source: NetlinkError,
    },
    #[error("set {link} promisc {state}: the kernel accepted it but the flag reads back {}", if *.now_set { "on" } else { "off" })]
    NotApplied {
        link: String,
        state: &'static str,
        now_set: bool,
    },
}

impl LinkActError {
    /// True when the interface vanished (before or during the change).
    pub fn is_gone(&self) -> bool {
        matches!(self, LinkActError::NoSuchLink { .. })
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromiscChange {
    pub ifindex: u32,
    pub interface: String,
    /// The admin flag before the change (needed to decide whether a revert may clear it).
    pub was_set_before: bool,
    /// False when the flag was already as asked: nothing was sent.
    pub changed: bool,
    /// The link as read back after the change.
    pub after: Link,
}

/// The RTM_NEWLINK request that sets (`on`) or clears the admin IFF_PROMISC of `ifindex`.
pub fn promisc_request(ifindex: u32, on: bool, seq: u32) -> Vec<u8> {
    let flags = if on { IFF_PROMISC } else { 0 };
    MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&ifinfomsg(ifindex, flags, IFF_PROMISC))
        .finish()
}

fn read(selector: &LinkSelector, shown: &str, state: &'static str) -> Result<Link, LinkActError> {
    get_link(selector).map_err(|source| match source {
        LinksError::NoSuchLink { .. } => LinkActError::NoSuchLink {
            link: shown.to_string(),
            state,
        },
        source => LinkActError::Read {
            link: shown.to_string(),
            state,
            source,
        },
    })
}

/// Sets (`on`) or clears the admin IFF_PROMISC of the link named by index or name, in the calling
/// thread's network namespace, and verifies it by reading the link back.
pub fn set_promisc(link: impl Into<LinkSelector>, on: bool) -> Result<PromiscChange, LinkActError> {
    let selector = link.into();
    let state = if on { "on" } else { "off" };
    let shown = selector.to_string();
    let before = read(&selector, &shown, state)?;
    let was_set_before = before.is_promisc();
    let shown = before.name.clone();
    if was_set_before == on {
        return Ok(PromiscChange {
            ifindex: before.ifindex,
            interface: before.name.clone(),
            was_set_before,
            changed: false,
            after: before,
        });
    }
    let change_err = |source: NetlinkError| {
        if source.errno() == Some(libc::ENODEV) {
            LinkActError::NoSuchLink {
                link: shown.clone(),
                state,
            }
        } else {
            LinkActError::Change {
                link: shown.clone(),
                state,
                source,
            }
        }
    };
    let mut sock = NetlinkSocket::open(libc::NETLINK_ROUTE).map_err(change_err)?;
    let seq = sock.next_seq();
    sock.transact(
        &promisc_request(before.ifindex, on, seq),
        &[seq],
        &format!("RTM_NEWLINK {} promisc {state}", before.name),
    )
    .map_err(change_err)?;
    let after = read(&LinkSelector::Index(before.ifindex), &shown, state)?;
    if after.is_promisc() != on {
        return Err(LinkActError::NotApplied {
            link: shown,
            state,
            now_set: after.is_promisc(),
        });
    }
    Ok(PromiscChange {
        ifindex: before.ifindex,
        interface: before.name,
        was_set_before,
        changed: true,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::netlink::{split_messages, NLM_F_ACK};

    #[test]
    fn the_request_changes_only_the_promisc_bit() {
        let on = promisc_request(7, true, 9);
        let m = split_messages(&on).next().unwrap().unwrap();
        assert_eq!(m.msg_type, RTM_NEWLINK);
        assert!(m.flags & NLM_F_ACK != 0);
        assert_eq!(m.payload.len(), 16);
        assert_eq!(i32::from_ne_bytes(m.payload[4..8].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(m.payload[8..12].try_into().unwrap()),
            IFF_PROMISC
        );
        assert_eq!(
            u32::from_ne_bytes(m.payload[12..16].try_into().unwrap()),
            IFF_PROMISC
        );
        let off = promisc_request(7, false, 10);
        let m = split_messages(&off).next().unwrap().unwrap();
        assert_eq!(u32::from_ne_bytes(m.payload[8..12].try_into().unwrap()), 0);
        assert_eq!(
            u32::from_ne_bytes(m.payload[12..16].try_into().unwrap()),
            IFF_PROMISC
        );
    }

    #[test]
    fn errors_say_what_was_done_to_what() {
        let e = LinkActError::NoSuchLink {
            link: "wlan0".into(),
            state: "on",
        };
        assert!(e.is_gone());
        assert_eq!(
            e.to_string(),
            "cannot set wlan0 promisc on: no such interface (ENODEV)"
        );
        let e = LinkActError::NotApplied {
            link: "wlan0".into(),
            state: "on",
            now_set: false,
        };
        assert!(e.to_string().contains("reads back off"));
    }
}
