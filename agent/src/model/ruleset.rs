//! The packet-filtering vocabulary: tables, chains, rules and sets of both backends (nftables and
//! iptables-legacy) normalised into one shape the checks can read. Pure data: no I/O.
//!
//! A rule is kept as a list of [`Match`]es (conditions every packet must meet) followed by one
//! [`Action`]. Decoders turn nftables expressions and x_tables blobs into this shape; whatever they
//! do not understand becomes [`Match::Opaque`] or [`Action::Opaque`] so that one odd rule never fails
//! a chain, a table or the snapshot.
//!
//! Long because it is the whole vocabulary of both backends' rules (tables, chains, rules, matches,
//! actions, sets); it has no logic beyond small accessors.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Which kernel subsystem holds a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// nf_tables (written by `nft`, `iptables-nft`, kube-proxy nftables mode, ...).
    Nft,
    /// x_tables (written by `iptables-legacy`).
    Legacy,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// nftables table families (the numbers are the kernel's NFPROTO_* values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Ip,
    Arp,
    Netdev,
    Bridge,
    Ip6,
}

impl Family {
    pub fn from_nfproto(value: u8) -> Option<Family> {
        Some(match value {
            1 => Family::Inet,
            2 => Family::Ip,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ip6,
            _ => return None,
        })
    }

    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ip6 => 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
            Family::Bridge => "bridge",
            Family::Ip6 => "ip6",
        }
    }

    /// Whether IPv4 traffic traverses tables of this family.
    pub fn carries_ipv4(self) -> bool {
        matches!(self, Family::Ip | Family::Inet)
    }

    /// Whether IPv6 traffic traverses tables of this family.
    pub fn carries_ipv6(self) -> bool {
        matches!(self, Family::Ip6 | Family::Inet)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Netfilter hook points a base chain can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Egress,
}

impl HookPoint {
    /// Maps NF_INET_* hook numbers (for the netdev family 0 is ingress, 1 egress).
    pub fn from_number(family: Family, hook: u32) -> Option<HookPoint> {
        if family == Family::Netdev {
            return match hook {
                0 => Some(HookPoint::Ingress),
                1 => Some(HookPoint::Egress),
                _ => None,
            };
        }
        Some(match hook {
            0 => HookPoint::Prerouting,
            1 => HookPoint::Input,
            2 => HookPoint::Forward,
            3 => HookPoint::Output,
            4 => HookPoint::Postrouting,
            5 => HookPoint::Ingress,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
            HookPoint::Ingress => "ingress",
            HookPoint::Egress => "egress",
        }
    }

    /// The iptables builtin chain name for this hook.
    pub fn iptables_chain(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "PREROUTING",
            HookPoint::Input => "INPUT",
            HookPoint::Forward => "FORWARD",
            HookPoint::Output => "OUTPUT",
            HookPoint::Postrouting => "POSTROUTING",
            HookPoint::Ingress => "INGRESS",
            HookPoint::Egress => "EGRESS",
        }
    }
}

/// How a base chain is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseChain {
    pub hook: HookPoint,
    pub priority: i32,
    /// `filter`, `nat` or `route` for nftables; for legacy, the table name's kind.
    pub chain_type: String,
    /// Default verdict when the chain runs off its end (accept unless set to drop).
    pub policy: Verdict,
}

/// Terminal or control-flow verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict", content = "chain")]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Queue,
    Jump(String),
    Goto(String),
}

impl Verdict {
    pub fn target_chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Queue => f.write_str("queue"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// An address with a prefix length (a host address has the full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Direction of an address, port or interface match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Source,
    Destination,
}

/// What a packet field loaded into a register (or a set-lookup key component) stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Field {
    /// IPv4 or IPv6 address (which one follows from the length).
    Address(Direction),
    /// Transport protocol number (`meta l4proto`, `ip protocol`, `ip6 nexthdr`).
    L4Proto,
    /// Transport port (`th dport`, `tcp dport`, ...).
    Port(Direction),
    /// Input or output interface name (`Source` = iifname, `Destination` = oifname).
    Interface(Direction),
    /// Packet mark.
    Mark,
    /// Connection tracking state bits.
    CtState,
    /// `fib daddr type` / `fib saddr type` result (route type, 2 = local).
    FibAddrType(Direction),
    /// `numgen random/inc mod N` result.
    Numgen,
    /// Anything else, described for people (e.g. `payload nh 9 1`, `meta 22`).
    Other(String),
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Match {
    L4Proto {
        proto: u8,
        negated: bool,
    },
    Address {
        direction: Direction,
        cidr: Cidr,
        negated: bool,
    },
    Ports {
        direction: Direction,
        ranges: Vec<PortRange>,
        negated: bool,
    },
    Interface {
        direction: Direction,
        /// Interface name; a trailing `+` is a prefix wildcard as in iptables.
        name: String,
        negated: bool,
    },
    /// iptables `-m addrtype` (bit set of RTN_* types as in `xt_addrtype`: LOCAL = 2) or nft
    /// `fib daddr type local`.
    AddrType {
        direction: Direction,
        /// Bit mask of address types, `1 << RTN_*` (LOCAL is `1 << 2`).
        types: u16,
        negated: bool,
    },
    /// Membership of the concatenated `key` fields in a named or anonymous set.
    SetLookup {
        set: String,
        key: Vec<Field>,
        negated: bool,
    },
    /// Anything else, described. From an x_tables blob the description is the exact
    /// `iptables-save` text (`-m socket --transparent`; one starting with `--` continues the match
    /// before it); from an nft expression it is nft syntax (`ct status & 0x20 == 0x20`); one
    /// starting with [`crate::model::render::NOT_EXPRESSIBLE_MARK`] names what netmend could not
    /// decode. [`crate::model::render`] turns each into text or says the rule is not expressible.
    Opaque {
        description: String,
    },
}

/// NAT address/port range as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatRange {
    /// First and last address of the range, if the NAT rewrites the address.
    pub addresses: Option<(IpAddr, IpAddr)>,
    /// Port range, if the NAT rewrites the port.
    pub ports: Option<PortRange>,
}

impl fmt::Display for NatRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addresses {
            Some((a, b)) if a == b => match a {
                IpAddr::V6(_) if self.ports.is_some() => write!(f, "[{a}]")?,
                _ => write!(f, "{a}")?,
            },
            Some((a, b)) => write!(f, "{a}-{b}")?,
            None => {}
        }
        if let Some(p) = self.ports {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// What a rule does once all its matches hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    /// No verdict (counter-only or side-effect-only rule): evaluation continues.
    None,
    Verdict {
        verdict: Verdict,
    },
    /// Verdict taken from a map: `<key> vmap @set`.
    VerdictMap {
        set: String,
        key: Vec<Field>,
    },
    Dnat {
        range: NatRange,
    },
    Snat {
        range: NatRange,
    },
    Masquerade {
        ports: Option<PortRange>,
    },
    Redirect {
        ports: Option<PortRange>,
    },
    /// Targets the model does not interpret (MARK, LOG, REJECT, TPROXY, ...): the exact
    /// `iptables-save` text (`-j TPROXY --on-port ...`), nft syntax for nft statements, or a
    /// description behind [`crate::model::render::NOT_EXPRESSIBLE_MARK`].
    Opaque {
        description: String,
    },
}

impl Action {
    /// Chains this action may continue into (jump/goto, or every verdict of a map).
    pub fn is_nat_redirection(&self) -> bool {
        matches!(self, Action::Dnat { .. } | Action::Redirect { .. })
    }
}

/// One rule, normalised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// nftables rule handle; for legacy, the 1-based position in the chain.
    pub handle: u64,
    pub matches: Vec<Match>,
    pub action: Action,
    pub comment: Option<String>,
    /// (packets, bytes) when the rule has a counter.
    pub counters: Option<(u64, u64)>,
}

/// A chain and its rules in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chain {
    pub name: String,
    /// nftables chain handle (0 for legacy).
    pub handle: u64,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// Key or data type of one component of a set key (decoded from NFTA_SET_KEY_TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetDataType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Mark,
    IfName,
    Verdict,
    Integer,
    Other(u32),
}

impl SetDataType {
    /// Maps nftables' datatype numbers (nftables' `enum datatypes`).
    pub fn from_nft(value: u32) -> SetDataType {
        match value {
            1 => SetDataType::Verdict,
            4 => SetDataType::Integer,
            7 => SetDataType::Ipv4Addr,
            8 => SetDataType::Ipv6Addr,
            12 => SetDataType::InetProto,
            13 => SetDataType::InetService,
            19 => SetDataType::Mark,
            41 => SetDataType::IfName,
            other => SetDataType::Other(other),
        }
    }

    /// Size of this type inside a key, unpadded.
    pub fn width(self) -> Option<usize> {
        Some(match self {
            SetDataType::Ipv4Addr => 4,
            SetDataType::Ipv6Addr => 16,
            SetDataType::InetProto => 1,
            SetDataType::InetService => 2,
            SetDataType::Mark => 4,
            SetDataType::IfName => 16,
            SetDataType::Integer | SetDataType::Verdict | SetDataType::Other(_) => return None,
        })
    }
}

/// One decoded component of a set element key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum KeyValue {
    Address(Cidr),
    Proto(u8),
    Port(u16),
    Raw(Vec<u8>),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Address(c) if c.prefix == 32 || c.prefix == 128 => write!(f, "{}", c.addr),
            KeyValue::Address(c) => write!(f, "{c}"),
            KeyValue::Proto(6) => f.write_str("tcp"),
            KeyValue::Proto(17) => f.write_str("udp"),
            KeyValue::Proto(132) => f.write_str("sctp"),
            KeyValue::Proto(p) => write!(f, "{p}"),
            KeyValue::Port(p) => write!(f, "{p}"),
            KeyValue::Raw(bytes) => {
                f.write_str("0x")?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// One set element: its key components (a range element has `key_end`), and for maps its verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetElement {
    pub key: Vec<KeyValue>,
    /// Upper bound of an interval element (same shape as `key`).
    pub key_end: Option<Vec<KeyValue>>,
    pub verdict: Option<Verdict>,
}

/// A named or anonymous set or map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Set {
    pub name: String,
    pub anonymous: bool,
    pub key_types: Vec<SetDataType>,
    pub is_verdict_map: bool,
    pub interval: bool,
    pub elements: Vec<SetElement>,
}

/// Identity of a table: the backend, family and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableId {
    pub backend: Backend,
    pub family: Family,
    pub name: String,
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// A table with its chains (in kernel order) and sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub id: TableId,
    /// nftables table handle (0 for legacy).
    pub handle: u64,
    pub chains: Vec<Chain>,
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// The whole filtering state of one backend as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    /// nftables generation id the dump is consistent with (None for legacy).
    pub generation: Option<u32>,
}

impl Ruleset {
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum()
    }

    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }
}
