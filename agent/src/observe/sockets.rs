//! TCP listening sockets of the calling thread's network namespace, read over NETLINK_SOCK_DIAG
//! (`SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2` per address family, TCP, state LISTEN). Needs
//! no capability. The decoder of `inet_diag_msg` is a pure function tested on captured bytes.
//!
//! Wire facts: `inet_diag_msg` is 72 bytes (family, state, timer, retrans, then the 48-byte
//! `inet_diag_sockid` whose ports and addresses are network order; an IPv4 address fills only the
//! first 4 of the 16 address bytes). An IPv6 socket bound to `::` that also accepts IPv4 is
//! reported once, as `::`.

use crate::model::snapshot::ListeningSocket;
use crate::observe::netlink::{
    Message, MessageBuilder, NetlinkError, NetlinkSocket, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_MSG_LEN: usize = 72;
const DUMP_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    #[error("listing TCP listeners over sock_diag ({family}): {source}")]
    Netlink {
        family: &'static str,
        source: NetlinkError,
    },
}

/// Builds the `inet_diag_req_v2` dump request for TCP listeners of `family` (AF_INET/AF_INET6).
pub fn listeners_request(family: u8, seq: u32) -> Vec<u8> {
    let mut req = [0u8; 56];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    MessageBuilder::new(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .raw(&req)
        .finish()
}

/// Decodes one `inet_diag_msg` payload; None when it is too short or not IPv4/IPv6.
pub fn decode_inet_diag_msg(payload: &[u8]) -> Option<ListeningSocket> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let port = u16::from_be_bytes([payload[4], payload[5]]);
    let address = match i32::from(payload[0]) {
        libc::AF_INET => {
            let b: [u8; 4] = payload[8..12].try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        libc::AF_INET6 => {
            let b: [u8; 16] = payload[8..24].try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(ListeningSocket { address, port })
}

/// Reads the TCP listeners (IPv4 and IPv6) of the calling thread's network namespace, sorted.
pub fn read_listeners() -> Result<Vec<ListeningSocket>, SocketsError> {
    let mut out = Vec::new();
    for (family, name) in [
        (libc::AF_INET as u8, "ipv4"),
        (libc::AF_INET6 as u8, "ipv6"),
    ] {
        let wrap = |source| SocketsError::Netlink {
            family: name,
            source,
        };
        let mut attempt = 0;
        loop {
            let mut sock = NetlinkSocket::open(NETLINK_SOCK_DIAG).map_err(wrap)?;
            let seq = sock.next_seq();
            let mut found = Vec::new();
            let res = sock.dump(
                &listeners_request(family, seq),
                "sock_diag dump",
                |m: Message<'_>| {
                    if m.msg_type == SOCK_DIAG_BY_FAMILY {
                        found.extend(decode_inet_diag_msg(m.payload));
                    }
                    Ok(())
                },
            );
            match res {
                Ok(()) => {
                    out.extend(found);
                    break;
                }
                Err(NetlinkError::DumpInterrupted { .. }) if attempt + 1 < DUMP_RETRIES => {
                    attempt += 1;
                }
                // A kernel without IPv6 answers the AF_INET6 request with an error: no sockets.
                Err(e)
                    if family == libc::AF_INET6 as u8 && e.errno() == Some(libc::EAFNOSUPPORT) =>
                {
                    break
                }
                Err(e) => return Err(wrap(e)),
            }
        }
    }
    out.sort_by_key(|l| (l.address, l.port));
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::unhex;

    // Captured from SOCK_DIAG_BY_FAMILY replies in a namespace with python listeners on
    // 127.0.0.1:9999 and [::]:6443 (see tests/tests/sockets.rs, capture_payloads).
    const V4: &str = "020a0000270f00007f0000010000000000000000000000000000000000000000000000000000000000000000010000000000000000000000000000008000000000000000ea740000050008000000000008000f00000000000c00150001000000000000000600160052000000";
    const V6: &str = "0a0a0000192b0000000000000000000000000000000000000000000000000000000000000000000000000000021000000000000000000000000000008000000000000000e6710000050008000000000005000b000000000008000f00000000000c00150001000000000000000600160012000000";

    #[test]
    fn decodes_captured_listeners() {
        assert_eq!(
            decode_inet_diag_msg(&unhex(V4)),
            Some(ListeningSocket {
                address: "127.0.0.1".parse().unwrap(),
                port: 9999
            })
        );
        assert_eq!(
            decode_inet_diag_msg(&unhex(V6)),
            Some(ListeningSocket {
                address: "::".parse().unwrap(),
                port: 6443
            })
        );
    }

    #[test]
    fn short_or_foreign_messages_are_skipped() {
        let v4 = unhex(V4);
        for len in 0..INET_DIAG_MSG_LEN {
            assert_eq!(decode_inet_diag_msg(&v4[..len]), None);
        }
        let mut unix = v4.clone();
        unix[0] = libc::AF_UNIX as u8;
        assert_eq!(decode_inet_diag_msg(&unix), None);
    }

    #[test]
    fn request_asks_for_tcp_listen_only() {
        let req = listeners_request(libc::AF_INET6 as u8, 7);
        assert_eq!(req.len(), 16 + 56);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(
            &req[16..18],
            &[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8]
        );
        assert_eq!(&req[20..24], &(1u32 << 10).to_ne_bytes());
    }
}
