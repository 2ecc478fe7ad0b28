//! The node's own addresses, read with one RTM_GETADDR dump over rtnetlink in the calling thread's
//! network namespace. Needs no capability. The `ifaddrmsg` decoder is a pure function tested on
//! captured bytes.
//!
//! Kernel quirk handled: on point-to-point IPv4 links `IFA_ADDRESS` is the PEER address and
//! `IFA_LOCAL` the local one, so `IFA_LOCAL` is preferred when present; IPv6 sends only
//! `IFA_ADDRESS` (the local address).

use crate::model::snapshot::LocalAddress;
use crate::observe::netlink::{
    Attrs, Message, MessageBuilder, NetlinkError, NetlinkSocket, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFADDRMSG_LEN: usize = 8;
const DUMP_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum AddressesError {
    #[error("listing the node's addresses (RTM_GETADDR dump): {0}")]
    Netlink(#[from] NetlinkError),
}

/// Builds the RTM_GETADDR dump request for all families.
pub fn addresses_request(seq: u32) -> Vec<u8> {
    MessageBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .raw(&[0u8; IFADDRMSG_LEN])
        .finish()
}

fn ip_from(family: u8, value: &[u8]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => {
            let b: [u8; 4] = value.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        libc::AF_INET6 => {
            let b: [u8; 16] = value.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Decodes one RTM_NEWADDR payload (`ifaddrmsg` + attributes); None when it carries no IPv4/IPv6
/// address or is malformed.
pub fn decode_ifaddrmsg(payload: &[u8]) -> Option<LocalAddress> {
    if payload.len() < IFADDRMSG_LEN {
        return None;
    }
    let family = payload[0];
    let prefix = payload[1];
    let ifindex = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut address = None;
    let mut local = None;
    for attr in Attrs::new(&payload[IFADDRMSG_LEN..]) {
        match attr.kind {
            IFA_ADDRESS => address = ip_from(family, attr.value),
            IFA_LOCAL => local = ip_from(family, attr.value),
            _ => {}
        }
    }
    Some(LocalAddress {
        address: local.or(address)?,
        prefix,
        ifindex,
    })
}

/// Reads every IPv4 and IPv6 address of the calling thread's network namespace.
pub fn read_addresses() -> Result<Vec<LocalAddress>, AddressesError> {
    let mut attempt = 0;
    loop {
        let mut sock = NetlinkSocket::open(libc::NETLINK_ROUTE)?;
        let seq = sock.next_seq();
        let mut found = Vec::new();
        let res = sock.dump(
            &addresses_request(seq),
            "RTM_GETADDR dump",
            |m: Message<'_>| {
                if m.msg_type == RTM_NEWADDR {
                    found.extend(decode_ifaddrmsg(m.payload));
                }
                Ok(())
            },
        );
        match res {
            Ok(()) => return Ok(found),
            Err(NetlinkError::DumpInterrupted { .. }) if attempt + 1 < DUMP_RETRIES => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::unhex;

    // RTM_NEWADDR payloads captured in a namespace (see tests/tests/sockets.rs, capture_payloads).
    const LO4: &str = "020880fe01000000080001007f000001080002007f000001070003006c6f0000080008008000000014000600ffffffffffffffffe50f0800e50f0800";
    /// `ip addr add 192.168.7.1 peer 192.168.7.2/32 dev nm-a`: IFA_ADDRESS is the peer.
    const PTP4: &str = "022080000300000008000100c0a8070208000200c0a80701090003006e6d2d6100000000080008008000000014000600ffffffffffffffffed0f0800ed0f0800";
    const V6: &str = "0a4082000300000014000100fd00004200000000000000000000000114000600ffffffffffffffffee0f0800ee0f08000800080082000000";

    fn addr(ip: &str, prefix: u8, ifindex: u32) -> Option<LocalAddress> {
        Some(LocalAddress {
            address: ip.parse().unwrap(),
            prefix,
            ifindex,
        })
    }

    #[test]
    fn decodes_captured_addresses() {
        assert_eq!(decode_ifaddrmsg(&unhex(LO4)), addr("127.0.0.1", 8, 1));
        assert_eq!(decode_ifaddrmsg(&unhex(PTP4)), addr("192.168.7.1", 32, 3));
        assert_eq!(decode_ifaddrmsg(&unhex(V6)), addr("fd00:42::1", 64, 3));
    }

    #[test]
    fn truncated_payloads_never_panic() {
        for s in [LO4, PTP4, V6] {
            let b = unhex(s);
            for len in 0..b.len() {
                let _ = decode_ifaddrmsg(&b[..len]);
            }
        }
        assert_eq!(decode_ifaddrmsg(&[2, 8, 0]), None);
        // An ifaddrmsg without any address attribute carries nothing.
        assert_eq!(decode_ifaddrmsg(&unhex("0208000001000000")), None);
    }
}
