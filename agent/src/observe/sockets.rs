//! TCP listening sockets of the calling thread's network namespace, read over NETLINK_SOCK_DIAG
//! (`SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2` per address family, TCP, state LISTEN). Needs
//! no capability. The decoder of `inet_diag_msg` is a pure function tested on captured bytes.
//!
//! Wire facts: `inet_diag_msg` is 72 bytes (family, state, timer, retrans, then the 48-byte
//! `inet_diag_sockid` whose ports and addresses are network order; an IPv4 address fills only the
//! first 4 of the 16 address bytes). An IPv6 socket bound to `::` that also accepts IPv4 is
//! reported once, as `::`. `idiag_inode` (bytes 68..72) names the socket for owner resolution.
//!
//! Owner resolution ([`socket_owners`]) maps socket inodes to the process holding them by reading
//! the `socket:[inode]` links under `<proc>/<pid>/fd`. It runs only for the inodes asked for (the
//! listeners on ports some NAT rule matches), stops as soon as all are found, and is bounded in
//! processes and descriptors visited. Without the host's /proc (no hostPID, no host /proc mount)
//! owners stay unknown and a listener counts as an ordinary host service.
//!
//! Under least privilege (the chart's NET_ADMIN, NET_RAW, BPF) the kernel refuses to show the
//! descriptors of a process holding capabilities netmend lacks (docker-proxy, kube-proxy and most
//! host daemons run with all of them): that would take CAP_SYS_PTRACE, which would also open their
//! memory. Command lines stay readable, and docker-proxy's names what it publishes
//! (`-proto tcp -host-ip H -host-port P`): [`docker_proxy_publishing`] finds the owner of such a
//! listener that way. Other owners behind refused descriptors stay unknown, and the sockets
//! source says how many processes refused ([`Owners::refused`]).

use crate::model::ruleset::{Action, Backend, Direction, KeyValue, Match, Ruleset};
use crate::model::snapshot::{ListeningSocket, ProcessInfo};
use crate::observe::netlink::{
    Message, MessageBuilder, NetlinkError, NetlinkSocket, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_MSG_LEN: usize = 72;
const DUMP_RETRIES: usize = 3;
/// Processes one owner scan visits at most.
const MAX_PROCESSES: usize = 65_536;
/// Descriptors of one process an owner scan visits at most.
const MAX_FDS_PER_PROCESS: usize = 65_536;
/// Bytes of a command line kept.
const MAX_CMDLINE: usize = 4096;

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
    let inode = u32::from_ne_bytes(payload[68..72].try_into().ok()?);
    Some(ListeningSocket {
        address,
        port,
        inode: u64::from(inode),
        owner: None,
    })
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
    out.sort_by_key(|l| (l.address, l.port, l.inode));
    out.dedup();
    Ok(out)
}

/// The destination ports the NAT rules of these rulesets match on (port matches of rules in nat
/// tables, and port components of set elements in tables that have a nat base chain): the only
/// listeners whose owner matters to `hostport-hijack`.
pub fn nat_matched_ports<'a>(rulesets: impl IntoIterator<Item = &'a Ruleset>) -> BTreeSet<u16> {
    // One bit per port while reading (tens of thousands of rules name a port at 10,000
    // Services: a tree insert each cost more than the rest of the read).
    let mut bits = vec![0u64; 1 << 10];
    let mut insert = |port: u16| bits[usize::from(port >> 6)] |= 1 << (port & 63);
    for ruleset in rulesets {
        for table in &ruleset.tables {
            let nat = table
                .chains
                .iter()
                .filter_map(|c| c.base.as_ref())
                .any(|b| b.chain_type == "nat")
                || (table.id.backend == Backend::Legacy && table.id.name == "nat");
            if !nat {
                continue;
            }
            for rule in table.chains.iter().flat_map(|c| &c.rules) {
                for m in &rule.matches {
                    if let Match::Ports {
                        direction: Direction::Destination,
                        ranges,
                        negated: false,
                    } = m
                    {
                        for r in ranges.iter().filter(|r| r.last - r.first < 1024) {
                            (r.first..=r.last).for_each(&mut insert);
                        }
                    }
                }
                if let Action::Dnat { range } | Action::Snat { range } = &rule.action {
                    if let Some(p) = range.ports {
                        insert(p.first);
                    }
                }
            }
            for set in table.sets.values() {
                for element in &set.elements {
                    for k in &element.key {
                        if let KeyValue::Port(p) = k {
                            insert(*p);
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for (word_index, word) in bits.iter().enumerate().filter(|(_, w)| **w != 0) {
        let base = (word_index as u16) << 6;
        out.extend(
            (0..64u16)
                .filter(|bit| word & (1 << bit) != 0)
                .map(|bit| base | bit),
        );
    }
    out
}

/// The inode of a `socket:[12345]` descriptor link target.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Splits a `/proc/<pid>/cmdline` blob at its NULs (a trailing NUL ends the last argument).
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Reads pid, comm and command line of one process under `proc_root`.
pub fn read_process(proc_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let dir = proc_root.join(pid.to_string());
    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
    let mut cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    cmdline.truncate(MAX_CMDLINE);
    Some(ProcessInfo {
        pid,
        comm: comm.trim_end_matches('\n').to_string(),
        args: split_cmdline(&cmdline),
    })
}

/// What an owner scan found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Owners {
    /// The process holding each inode found.
    pub found: BTreeMap<u64, ProcessInfo>,
    /// Processes whose descriptors the kernel refused to show (they hold capabilities netmend
    /// lacks).
    pub refused: usize,
}

/// Finds the process holding each socket inode of `inodes` by walking `<proc_root>/*/fd`. Stops
/// when every inode is found; inodes held by no visible process are absent from the answer.
pub fn socket_owners(proc_root: &Path, inodes: &BTreeSet<u64>) -> Owners {
    let mut owners = Owners::default();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return owners;
    };
    let found = &mut owners.found;
    for entry in entries.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let fds = match std::fs::read_dir(entry.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    owners.refused += 1;
                }
                continue;
            }
        };
        let mut holds: Vec<u64> = Vec::new();
        for fd in fds.flatten().take(MAX_FDS_PER_PROCESS) {
            let target = match std::fs::read_link(fd.path()) {
                Ok(target) => target,
                // The directory lists, its links do not resolve: the whole process refuses.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    owners.refused += 1;
                    break;
                }
                Err(_) => continue,
            };
            if let Some(inode) = target.to_str().and_then(parse_socket_link) {
                if inodes.contains(&inode) && !found.contains_key(&inode) {
                    holds.push(inode);
                }
            }
        }
        if holds.is_empty() {
            continue;
        }
        if let Some(process) = read_process(proc_root, pid) {
            for inode in holds {
                found.insert(inode, process.clone());
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    owners
}

/// The docker-proxy process whose command line publishes TCP `address:port`
/// (`-host-ip address -host-port port`, `-proto tcp` or no `-proto`), found from command lines
/// alone: they are readable where descriptors are not.
pub fn docker_proxy_publishing(
    proc_root: &Path,
    address: IpAddr,
    port: u16,
) -> Option<ProcessInfo> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let is_docker_proxy = std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == "docker-proxy");
        if !is_docker_proxy {
            continue;
        }
        let Some(process) = read_process(proc_root, pid) else {
            continue;
        };
        if publishes(&process.args, address, port) {
            return Some(process);
        }
    }
    None
}

/// Whether docker-proxy arguments publish TCP `address:port`.
fn publishes(args: &[String], address: IpAddr, port: u16) -> bool {
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    arg("-proto").is_none_or(|p| p == "tcp")
        && arg("-host-ip").and_then(|a| a.parse::<IpAddr>().ok()) == Some(address)
        && arg("-host-port").and_then(|p| p.parse::<u16>().ok()) == Some(port)
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
    fn docker_proxy_arguments_name_what_they_publish() {
        let args: Vec<String> = "/usr/bin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2 -container-port 80"
            .split(' ')
            .map(String::from)
            .collect();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(publishes(&args, any, 8080));
        assert!(
            !publishes(&args, any, 80),
            "the container port is not published"
        );
        assert!(!publishes(&args, "127.0.0.1".parse().unwrap(), 8080));
        let udp: Vec<String> = args
            .iter()
            .map(|a| {
                if a == "tcp" {
                    "udp".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        assert!(!publishes(&udp, any, 8080));
    }

    #[test]
    fn decodes_captured_listeners() {
        assert_eq!(
            decode_inet_diag_msg(&unhex(V4)),
            Some(ListeningSocket {
                address: "127.0.0.1".parse().unwrap(),
                port: 9999,
                inode: 0x74ea,
                owner: None,
            })
        );
        assert_eq!(
            decode_inet_diag_msg(&unhex(V6)),
            Some(ListeningSocket {
                address: "::".parse().unwrap(),
                port: 6443,
                inode: 0x71e6,
                owner: None,
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
    fn socket_links_and_command_lines_parse() {
        assert_eq!(parse_socket_link("socket:[123456]"), Some(123456));
        assert_eq!(parse_socket_link("pipe:[123456]"), None);
        assert_eq!(parse_socket_link("socket:[12x]"), None);
        assert_eq!(
            split_cmdline(b"/usr/bin/docker-proxy\0-proto\0tcp\0"),
            vec!["/usr/bin/docker-proxy", "-proto", "tcp"]
        );
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn nat_ports_come_from_nat_tables_only() {
        use crate::detect::test_support::iptables_table;
        let nat = iptables_table(
            Backend::Legacy,
            "nat",
            ":PREROUTING ACCEPT\n:DOCKER -\n-A PREROUTING -j DOCKER\n-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n-A DOCKER -p tcp -m multiport --dports 80,443 -j RETURN\n",
        );
        let filter = iptables_table(
            Backend::Legacy,
            "filter",
            ":INPUT ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n",
        );
        let ruleset = Ruleset {
            tables: vec![nat, filter],
            generation: None,
        };
        let ports: Vec<u16> = nat_matched_ports([&ruleset]).into_iter().collect();
        assert_eq!(ports, vec![80, 443, 8080]);
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
