//! The ARP prober behind `netmend probe arp ADDRESS --interface IF`: sends one broadcast who-has
//! for an IPv4 address out of an interface on an `AF_PACKET` socket and waits for the matching
//! reply. The source address is the interface's first IPv4 address (read over rtnetlink) unless
//! given. Needs CAP_NET_RAW. Runs in the calling thread's network namespace.
//!
//! Kernel quirks handled: the socket is filtered to ARP before it is bound (no unrelated frame is
//! queued), and bound with ETH_P_ARP, which is enough here because only received replies matter.
//! A reply counts when its sender address is the target and it is addressed to our MAC (or
//! broadcast): replies to other hosts' requests on the same segment are ignored. An interface
//! without an IPv4 address asks with sender 0.0.0.0 (an RFC 5227 probe), which the kernel answers.

use crate::model::l2::MacAddr;
use crate::observe::addresses::{read_addresses, AddressesError};
use crate::observe::arp::{
    decode_arp_frame, open_arp_socket, recv_frame, who_has_frame, ArpError, ARP_REPLY, ETH_P_ARP,
    PACKET_OUTGOING,
};
use crate::observe::links::{get_link, LinkSelector, LinksError};
use crate::sys;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probing {target} on {interface}: {source}")]
    Link {
        interface: String,
        target: Ipv4Addr,
        source: LinksError,
    },
    #[error("probing {target} on {interface}: the interface has no Ethernet address")]
    NoMac { interface: String, target: Ipv4Addr },
    #[error("probing {target} on {interface}: reading its addresses: {source}")]
    Addresses {
        interface: String,
        target: Ipv4Addr,
        source: AddressesError,
    },
    #[error("probing {target} on {interface}: {source}")]
    Socket {
        interface: String,
        target: Ipv4Addr,
        source: ArpError,
    },
    #[error("probing {target} on {interface}: sending the who-has: {source}")]
    Send {
        interface: String,
        target: Ipv4Addr,
        source: io::Error,
    },
    #[error("probing {target} on {interface}: receiving: {source}")]
    Recv {
        interface: String,
        target: Ipv4Addr,
        source: io::Error,
    },
}

/// The outcome of one probe. `answered_by` None means no reply within the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub interface: String,
    pub target: Ipv4Addr,
    pub sender_ip: Ipv4Addr,
    pub answered_by: Option<MacAddr>,
    /// Time from sending to the reply; the timeout when unanswered.
    pub rtt: Duration,
}

/// True when `frame` is a reply from `target` meant for us.
pub fn is_answer(frame: &[u8], target: Ipv4Addr, our_mac: MacAddr) -> Option<MacAddr> {
    let f = decode_arp_frame(frame).ok()?;
    (f.op == ARP_REPLY
        && f.sender_ip == target
        && (f.eth_dst == our_mac || f.eth_dst == MacAddr::BROADCAST))
        .then_some(f.sender_mac)
}

/// Sends a who-has for `target` from `interface` and waits up to `timeout` for the reply.
pub fn probe_arp(
    interface: &str,
    target: Ipv4Addr,
    timeout: Duration,
    sender_ip: Option<Ipv4Addr>,
) -> Result<ProbeResult, ProbeError> {
    let link = get_link(&LinkSelector::Name(interface.to_string())).map_err(|source| {
        ProbeError::Link {
            interface: interface.to_string(),
            target,
            source,
        }
    })?;
    let mac = link.mac.ok_or_else(|| ProbeError::NoMac {
        interface: interface.to_string(),
        target,
    })?;
    let sender_ip = match sender_ip {
        Some(ip) => ip,
        None => read_addresses()
            .map_err(|source| ProbeError::Addresses {
                interface: interface.to_string(),
                target,
                source,
            })?
            .into_iter()
            .filter(|a| a.ifindex == link.ifindex)
            .find_map(|a| match a.address {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let fd = open_arp_socket(link.ifindex, interface, ETH_P_ARP).map_err(|source| {
        ProbeError::Socket {
            interface: interface.to_string(),
            target,
            source,
        }
    })?;
    let frame = who_has_frame(mac, sender_ip, target);
    let sent_at = Instant::now();
    sys::packet::send_to(
        fd.as_fd(),
        &frame,
        link.ifindex,
        ETH_P_ARP,
        MacAddr::BROADCAST.0,
    )
    .map_err(|source| ProbeError::Send {
        interface: interface.to_string(),
        target,
        source,
    })?;
    let deadline = sent_at + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        match recv_frame(fd.as_fd(), &mut buf) {
            Ok(Some((pkttype, len))) => {
                if pkttype == PACKET_OUTGOING {
                    continue;
                }
                if let Some(by) = is_answer(&buf[..len], target, mac) {
                    return Ok(ProbeResult {
                        interface: interface.to_string(),
                        target,
                        sender_ip,
                        answered_by: Some(by),
                        rtt: sent_at.elapsed(),
                    });
                }
                continue;
            }
            Ok(None) => {}
            Err(source) => {
                return Err(ProbeError::Recv {
                    interface: interface.to_string(),
                    target,
                    source,
                })
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ProbeResult {
                interface: interface.to_string(),
                target,
                sender_ip,
                answered_by: None,
                rtt: timeout,
            });
        }
        let _ = sys::poll::wait_one(fd.as_fd(), left.max(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::unhex;

    const REQUEST: &str = include_str!("../testdata/l2/arp-request.hex");
    const REPLY: &str = include_str!("../testdata/l2/arp-reply-outgoing.hex");

    #[test]
    fn only_the_reply_from_the_target_to_us_is_an_answer() {
        let vip = Ipv4Addr::new(10, 99, 0, 51);
        let reply = unhex(REPLY);
        let asker = decode_arp_frame(&unhex(REQUEST)).unwrap().sender_mac;
        let answerer = decode_arp_frame(&reply).unwrap().sender_mac;
        assert_eq!(is_answer(&reply, vip, asker), Some(answerer));
        // For someone else, or about another address: not ours.
        assert_eq!(is_answer(&reply, vip, MacAddr([2, 9, 9, 9, 9, 9])), None);
        assert_eq!(is_answer(&reply, Ipv4Addr::new(10, 99, 0, 52), asker), None);
        // A request is never an answer.
        assert_eq!(is_answer(&unhex(REQUEST), vip, asker), None);
        assert_eq!(is_answer(&[1, 2, 3], vip, asker), None);
    }
}
