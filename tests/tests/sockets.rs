//! End-to-end tests of the sock_diag listener probe and the rtnetlink address probe in fresh
//! network namespaces.

use netmend::observe::addresses::{addresses_request, read_addresses};
use netmend::observe::netlink::NetlinkSocket;
use netmend::observe::sockets::{listeners_request, read_listeners};
use netmend_e2e::{require_tool, NetNs};
use std::net::IpAddr;

#[test]
fn sees_ipv4_and_ipv6_listeners_with_ports() {
    require_tool("python3");
    let ns = NetNs::new("sock");
    ns.sh("ip addr add fd00:99::1/64 dev lo nodad").unwrap();
    let before = ns.run(read_listeners).expect("read listeners");
    assert!(
        before.is_empty(),
        "fresh namespace has listeners: {before:?}"
    );
    let _v4 = ns.listen_tcp("127.0.0.1", 9999);
    let _v6 = ns.listen_tcp("fd00:99::1", 6443);
    let got = ns.run(read_listeners).expect("read listeners");
    let pairs: Vec<(IpAddr, u16)> = got.iter().map(|l| (l.address, l.port)).collect();
    assert_eq!(
        pairs,
        vec![
            ("127.0.0.1".parse().unwrap(), 9999),
            ("fd00:99::1".parse().unwrap(), 6443)
        ]
    );
}

#[test]
fn reads_namespace_addresses() {
    let ns = NetNs::new("addr");
    ns.sh("ip link add nm-a type veth peer name nm-b && ip link set nm-a up && ip addr add 10.42.0.1/24 dev nm-a && ip addr add 192.168.7.1 peer 192.168.7.2/32 dev nm-a && ip addr add fd00:42::1/64 dev nm-a nodad")
        .unwrap();
    let ifindex: u32 = ns
        .sh("cat /sys/class/net/nm-a/ifindex")
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    let got = ns.run(read_addresses).expect("read addresses");
    let find = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        got.iter()
            .find(|a| a.address == ip)
            .unwrap_or_else(|| panic!("{ip} missing from {got:?}"))
            .clone()
    };
    let lo = find("127.0.0.1");
    assert_eq!((lo.prefix, lo.ifindex), (8, 1));
    let a = find("10.42.0.1");
    assert_eq!(a.prefix, 24);
    if ifindex != 0 {
        assert_eq!(a.ifindex, ifindex);
    }
    // Point-to-point: IFA_LOCAL (our side) wins over IFA_ADDRESS (the peer).
    assert_eq!(find("192.168.7.1").prefix, 32);
    assert!(!got
        .iter()
        .any(|x| x.address == "192.168.7.2".parse::<IpAddr>().unwrap()));
    assert_eq!(find("fd00:42::1").prefix, 64);
    assert!(got
        .iter()
        .any(|x| x.address == "::1".parse::<IpAddr>().unwrap()));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints raw reply payloads for the unit tests of the pure decoders. Run with
/// `cargo test -p netmend-e2e --test sockets -- --ignored --nocapture capture_payloads`.
#[test]
#[ignore]
fn capture_payloads() {
    let ns = NetNs::new("cap");
    ns.sh("ip link add nm-a type veth peer name nm-b && ip addr add 192.168.7.1 peer 192.168.7.2/32 dev nm-a && ip addr add fd00:42::1/64 dev nm-a nodad").unwrap();
    let _v4 = ns.listen_tcp("127.0.0.1", 9999);
    let _v6 = ns.listen_tcp("::", 6443);
    ns.run(|| {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut s = NetlinkSocket::open(4).unwrap();
            let seq = s.next_seq();
            s.dump(&listeners_request(family, seq), "capture", |m| {
                println!("sock_diag {}", hex(m.payload));
                Ok(())
            })
            .unwrap();
        }
        let mut s = NetlinkSocket::open(libc::NETLINK_ROUTE).unwrap();
        let seq = s.next_seq();
        s.dump(&addresses_request(seq), "capture", |m| {
            println!("ifaddr {}", hex(m.payload));
            Ok(())
        })
        .unwrap();
    });
}
