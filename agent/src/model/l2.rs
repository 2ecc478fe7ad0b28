//! Link-layer vocabulary, pure data: links (flags, promiscuity, kind) and their classification
//! (physical or virtual), ARP accounting counters per interface and target address, ARP targets
//! (`192.168.1.51@wlan0`), and entries of Cilium's L2 responder map. No I/O.
//!
//! Kernel quirk reflected here: `ifi_flags & IFF_PROMISC` is only the administrative flag
//! (`ip link set promisc on`); promiscuity held by packet sockets (tcpdump) shows only in the
//! `IFLA_PROMISCUITY` counter. Both are kept, and only the admin flag counts as "set".

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

pub const IFF_UP: u32 = 0x1;
pub const IFF_BROADCAST: u32 = 0x2;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_POINTOPOINT: u32 = 0x10;
pub const IFF_RUNNING: u32 = 0x40;
pub const IFF_NOARP: u32 = 0x80;
pub const IFF_PROMISC: u32 = 0x100;
pub const IFF_ALLMULTI: u32 = 0x200;
pub const IFF_MULTICAST: u32 = 0x1000;
pub const IFF_LOWER_UP: u32 = 0x10000;

/// `ARPHRD_ETHER`: Ethernet and Wi-Fi (as seen by the stack).
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_LOOPBACK`.
pub const ARPHRD_LOOPBACK: u16 = 772;

const FLAG_NAMES: [(u32, &str); 10] = [
    (IFF_UP, "UP"),
    (IFF_BROADCAST, "BROADCAST"),
    (IFF_LOOPBACK, "LOOPBACK"),
    (IFF_POINTOPOINT, "POINTOPOINT"),
    (IFF_RUNNING, "RUNNING"),
    (IFF_NOARP, "NOARP"),
    (IFF_PROMISC, "PROMISC"),
    (IFF_ALLMULTI, "ALLMULTI"),
    (IFF_MULTICAST, "MULTICAST"),
    (IFF_LOWER_UP, "LOWER_UP"),
];

/// The names of the set flags, `ip link` style (`["UP", "BROADCAST", "PROMISC"]`).
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// A 48-bit hardware address, shown `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// From the first 6 bytes of `bytes`; None when shorter.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        Some(MacAddr(bytes.get(..6)?.try_into().ok()?))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

impl OperState {
    pub fn from_u8(v: u8) -> OperState {
        match v {
            1 => OperState::NotPresent,
            2 => OperState::Down,
            3 => OperState::LowerLayerDown,
            4 => OperState::Testing,
            5 => OperState::Dormant,
            6 => OperState::Up,
            _ => OperState::Unknown,
        }
    }
}

/// One network interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `ifi_flags`; `IFF_PROMISC` here is the administrative flag only.
    pub flags: u32,
    /// `IFLA_PROMISCUITY`: how many holders (admin flag, packet sockets, bridges) want promisc.
    pub promiscuity: u32,
    pub operstate: OperState,
    /// `IFLA_INFO_KIND` (veth, bridge, vxlan, tun, macvlan, ...); None for real devices.
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    /// `ifi_type` (ARPHRD_*).
    pub link_type: u16,
    pub mtu: Option<u32>,
    /// `IFLA_LINK`: the peer or lower device's ifindex (in `link_netnsid` when set).
    pub parent_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer lives in another namespace (veth to a pod, ...).
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge or bond this device is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_PARENT_DEV_NAME`: the bus device (PCI address, USB path, SDIO) of a real NIC.
    pub parent_dev: Option<String>,
}

/// Whether a fix may treat an interface as a physical NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "class", content = "why")]
pub enum LinkClass {
    Physical,
    /// Virtual, with the reason: the link kind (`veth`), `loopback`, the hardware type, or the
    /// CNI/tunnel name pattern that matched (`name cilium_*`).
    Virtual(String),
}

/// Name patterns of CNI, tunnel and container devices that may show no `IFLA_INFO_KIND` to us
/// (other namespaces, older kernels, out-of-tree drivers). A trailing `*` is a prefix match.
pub const VIRTUAL_NAME_PATTERNS: &[&str] = &[
    "lo",
    "cni*",
    "flannel*",
    "cilium_*",
    "lxc*",
    "veth*",
    "vxlan*",
    "tunl*",
    "tun*",
    "tap*",
    "kube-ipvs*",
    "kube-bridge",
    "docker*",
    "br-*",
    "virbr*",
    "cali*",
    "weave*",
    "genev_sys_*",
    "vx-*",
    "nodelocaldns",
    "wg*",
];

fn name_pattern(name: &str) -> Option<&'static str> {
    VIRTUAL_NAME_PATTERNS
        .iter()
        .copied()
        .find(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *p,
        })
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// The administrative IFF_PROMISC flag (what `set-promisc` sets).
    pub fn is_promisc(&self) -> bool {
        self.flags & IFF_PROMISC != 0
    }

    /// The classification used by the `set-promisc` allow rule. In order:
    /// 1. loopback (`IFF_LOOPBACK` or ARPHRD_LOOPBACK) is virtual;
    /// 2. any `IFLA_INFO_KIND` (veth, bridge, vxlan, tun, macvlan, ...) is virtual: real NIC
    ///    drivers register no rtnl_link_ops, so they report no kind;
    /// 3. a hardware type other than Ethernet (tunnels, IP-in-IP, ...) is virtual;
    /// 4. a name matching [`VIRTUAL_NAME_PATTERNS`] (cni0, flannel.1, cilium_host, lxc*, ...) is
    ///    virtual even without a kind;
    /// 5. everything else is physical (eth0, enp0s8, wlan0, end0).
    pub fn class(&self) -> LinkClass {
        if self.flags & IFF_LOOPBACK != 0 || self.link_type == ARPHRD_LOOPBACK {
            return LinkClass::Virtual("loopback".into());
        }
        if let Some(kind) = &self.kind {
            return LinkClass::Virtual(kind.clone());
        }
        if self.link_type != ARPHRD_ETHER {
            return LinkClass::Virtual(format!("hardware type {}", self.link_type));
        }
        if let Some(pattern) = name_pattern(&self.name) {
            return LinkClass::Virtual(format!("name {pattern}"));
        }
        LinkClass::Physical
    }
}

/// A change of a link reported by RTNLGRP_LINK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// RTM_NEWLINK: created or changed (flags, promiscuity, operstate, ...).
    Changed(Link),
    /// RTM_DELLINK.
    Deleted(Link),
}

/// An (interface, IPv4) pair this node should answer ARP for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ArpTarget {
    pub interface: String,
    pub ip: Ipv4Addr,
}

/// Why a target string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArpTargetError {
    #[error("ARP target {0:?}: expected IPV4@INTERFACE, e.g. 192.168.1.51@wlan0")]
    MissingAt(String),
    #[error("ARP target {text:?}: {address:?} is not an IPv4 address")]
    BadAddress { text: String, address: String },
    #[error("ARP target {text:?}: interface name {name:?} is {why}")]
    BadInterface {
        text: String,
        name: String,
        why: &'static str,
    },
}

impl ArpTarget {
    /// Parses `192.168.1.51@wlan0` (the config form).
    pub fn parse(text: &str) -> Result<ArpTarget, ArpTargetError> {
        let trimmed = text.trim();
        let (address, name) = trimmed
            .split_once('@')
            .ok_or_else(|| ArpTargetError::MissingAt(text.to_string()))?;
        let ip: Ipv4Addr = address.parse().map_err(|_| ArpTargetError::BadAddress {
            text: text.to_string(),
            address: address.to_string(),
        })?;
        let bad = |why| ArpTargetError::BadInterface {
            text: text.to_string(),
            name: name.to_string(),
            why,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 15 {
            return Err(bad("longer than 15 bytes (IFNAMSIZ)"));
        }
        if name == "." || name == ".." {
            return Err(bad("reserved"));
        }
        if name
            .chars()
            .any(|c| c == '/' || c == '@' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(bad("containing '/', '@', ':' or whitespace"));
        }
        Ok(ArpTarget {
            interface: name.to_string(),
            ip,
        })
    }

    /// The finding subject, `wlan0@192.168.1.51`.
    pub fn subject(&self) -> String {
        format!("{}@{}", self.interface, self.ip)
    }
}

impl fmt::Display for ArpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.ip, self.interface)
    }
}

/// An interface whose ARP traffic is counted, and the addresses on it that are watched (the
/// configured targets and the responder map's keys): their counts are never aged out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchedInterface {
    pub ifindex: u32,
    pub interface: String,
    pub targets: Vec<Ipv4Addr>,
}

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Requester {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// At most this many distinct requesters are kept per target.
pub const MAX_REQUESTERS: usize = 8;

/// ARP traffic about one IPv4 address on one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCounts {
    /// who-has this address, received.
    pub requests_received: u64,
    /// replies with this address as sender, leaving the interface.
    pub replies_sent: u64,
    /// replies with this address as sender, received (another host answers for it).
    pub replies_received: u64,
    /// who-has this address, sent by this node.
    pub requests_sent: u64,
    /// Distinct requesters, at most [`MAX_REQUESTERS`].
    pub requesters: Vec<Requester>,
    /// Requesters not kept because the list was full.
    pub requesters_dropped: u64,
    /// The tap's frame number when this entry was created: an address aged out and counted
    /// again starts from zero, and window differences must not subtract the old entry.
    #[serde(skip)]
    pub admitted: u64,
    /// The tap's frame number of the last frame about this address (its age).
    #[serde(skip)]
    pub last_seen: u64,
}

impl TargetCounts {
    pub fn add_requester(&mut self, r: Requester) {
        if self.requesters.contains(&r) {
            return;
        }
        if self.requesters.len() < MAX_REQUESTERS {
            self.requesters.push(r);
        } else {
            self.requesters_dropped += 1;
        }
    }
}

/// ARP accounting of one interface over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArpCounters {
    pub ifindex: u32,
    pub interface: String,
    pub targets: BTreeMap<Ipv4Addr, TargetCounts>,
    /// ARP frames seen (both directions).
    pub frames: u64,
    /// Frames that were not decodable ARP for IPv4 over Ethernet.
    pub malformed: u64,
    /// Frames about addresses not tracked at all (no room even after aging out: a cap of 0).
    pub overflow: u64,
    /// Unwatched addresses aged out (least recently seen first) to make room for new ones; their
    /// counts were dropped.
    pub evicted: u64,
    /// Frames the kernel dropped before we read them (PACKET_STATISTICS).
    pub kernel_drops: u64,
    /// The interface went down during the window (ENETDOWN); counting resumed when it came back.
    pub went_down: bool,
    /// Set when the interface vanished (or could not be watched): why; the counts stop there.
    pub gone: Option<String>,
    /// Length of the observation in milliseconds.
    pub window_ms: u64,
}

impl ArpCounters {
    pub fn new(ifindex: u32, interface: &str) -> ArpCounters {
        ArpCounters {
            ifindex,
            interface: interface.to_string(),
            ..ArpCounters::default()
        }
    }

    pub fn target(&self, ip: Ipv4Addr) -> Option<&TargetCounts> {
        self.targets.get(&ip)
    }
}

/// One entry of `cilium_l2_responder_v4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponderEntry {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub responses_sent: u64,
}

/// Whether the responder map was there to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponderStatus {
    Read,
    /// Nothing pinned at the path: Cilium L2 announcements are not in use on this node. A source
    /// that is absent, not an error.
    NotPinned,
}

/// A read of Cilium's L2 responder map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponderMap {
    pub path: String,
    pub status: ResponderStatus,
    pub entries: Vec<ResponderEntry>,
}

impl ResponderMap {
    pub fn not_pinned(path: &str) -> ResponderMap {
        ResponderMap {
            path: path.to_string(),
            status: ResponderStatus::NotPinned,
            entries: Vec::new(),
        }
    }

    /// `responses_sent` of (ip, ifindex), when the map has that key.
    pub fn responses_sent(&self, ip: Ipv4Addr, ifindex: u32) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.ip == ip && e.ifindex == ifindex)
            .map(|e| e.responses_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, flags: u32, link_type: u16) -> Link {
        Link {
            ifindex: 3,
            name: name.into(),
            flags,
            promiscuity: 0,
            operstate: OperState::Up,
            kind: kind.map(str::to_string),
            mac: Some(MacAddr([0xdc, 0xa6, 0x32, 1, 2, 3])),
            link_type,
            mtu: Some(1500),
            parent_ifindex: None,
            link_netnsid: None,
            master: None,
            parent_dev: None,
        }
    }

    #[test]
    fn classification_follows_the_documented_rule() {
        let up = IFF_UP | IFF_BROADCAST | IFF_MULTICAST;
        assert_eq!(
            link("wlan0", None, up, ARPHRD_ETHER).class(),
            LinkClass::Physical
        );
        assert_eq!(
            link("enp0s8", None, up, ARPHRD_ETHER).class(),
            LinkClass::Physical
        );
        assert_eq!(
            link("lo", None, IFF_UP | IFF_LOOPBACK, ARPHRD_LOOPBACK).class(),
            LinkClass::Virtual("loopback".into())
        );
        assert_eq!(
            link("eth0", Some("veth"), up, ARPHRD_ETHER).class(),
            LinkClass::Virtual("veth".into())
        );
        assert_eq!(
            link("cilium_host", None, up, ARPHRD_ETHER).class(),
            LinkClass::Virtual("name cilium_*".into())
        );
        assert_eq!(
            link("flannel.1", None, up, ARPHRD_ETHER).class(),
            LinkClass::Virtual("name flannel*".into())
        );
        assert_eq!(
            link("lxc12ab", None, up, ARPHRD_ETHER).class(),
            LinkClass::Virtual("name lxc*".into())
        );
        assert_eq!(
            link("tunl0", None, IFF_UP, 768).class(),
            LinkClass::Virtual("hardware type 768".into())
        );
        // "lo" is an exact pattern: "lora0" is not loopback by name.
        assert_eq!(
            link("lora0", None, up, ARPHRD_ETHER).class(),
            LinkClass::Physical
        );
    }

    #[test]
    fn targets_parse_with_clear_errors() {
        let t = ArpTarget::parse("192.168.1.51@wlan0").unwrap();
        assert_eq!(t.ip, Ipv4Addr::new(192, 168, 1, 51));
        assert_eq!(t.interface, "wlan0");
        assert_eq!(t.subject(), "wlan0@192.168.1.51");
        assert_eq!(t.to_string(), "192.168.1.51@wlan0");
        assert_eq!(
            ArpTarget::parse("192.168.1.51").unwrap_err(),
            ArpTargetError::MissingAt("192.168.1.51".into())
        );
        let e = ArpTarget::parse("fd00::1@eth0").unwrap_err().to_string();
        assert!(e.contains("not an IPv4 address"), "{e}");
        let e = ArpTarget::parse("10.0.0.1@").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = ArpTarget::parse("10.0.0.1@averyveryverylongname")
            .unwrap_err()
            .to_string();
        assert!(e.contains("IFNAMSIZ"), "{e}");
        assert!(ArpTarget::parse("10.0.0.1@a@b").is_err());
        assert!(ArpTarget::parse("10.0.0.1@eth 0").is_err());
    }

    #[test]
    fn requesters_are_bounded() {
        let mut c = TargetCounts::default();
        for i in 0..20u8 {
            c.add_requester(Requester {
                mac: MacAddr([2, 0, 0, 0, 0, i]),
                ip: Ipv4Addr::new(10, 0, 0, i),
            });
        }
        c.add_requester(c.requesters[0]);
        assert_eq!(c.requesters.len(), MAX_REQUESTERS);
        assert_eq!(c.requesters_dropped, 12);
    }

    #[test]
    fn flags_and_macs_render() {
        assert_eq!(
            flag_names(IFF_UP | IFF_PROMISC | IFF_LOWER_UP),
            vec!["UP", "PROMISC", "LOWER_UP"]
        );
        assert_eq!(
            MacAddr([0xdc, 0xa6, 0x32, 1, 2, 0xff]).to_string(),
            "dc:a6:32:01:02:ff"
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }
}
