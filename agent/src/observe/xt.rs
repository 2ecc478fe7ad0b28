//! Decoders of x_tables match and target blobs (`xt_tcp`, `xt_multiport`, `xt_comment`,
//! `xt_addrtype`, `nf_nat_range2`, ...). Shared by the iptables-legacy reader and the nftables
//! decoder (iptables-nft stores the same blobs in `match`/`target` expressions). Pure functions.
//!
//! Layouts are the kernel's structs from `linux/netfilter/*.h` in host byte order, except NAT
//! addresses and `nf_conntrack_man_proto` ports, which are network order. The kernel pads every
//! blob to 8 bytes (`XT_ALIGN`), so blobs may be longer than the struct: only a blob SHORTER than
//! the struct is malformed. Malformed or unknown blobs never fail: they become `Opaque`.
//!
//! Quirks handled here:
//! - a `tcp`/`udp` port range of 0-65535 is iptables' "no port given": it is not a condition;
//! - `multiport` with `--ports` (either direction) has no single direction in the model, so it is
//!   kept as [`Match::Opaque`] describing the ports;
//! - `addrtype` types are the kernel's bit mask (`1 << RTN_*`: UNSPEC 1, UNICAST 2, LOCAL 4, ...).

use crate::model::ruleset::{Action, Direction, Family, Match, NatRange, PortRange, Verdict};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What one xt match blob means. `comment` is returned apart because it is not a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedMatch {
    Conditions(Vec<Match>),
    Comment(String),
}

const XT_TCP_INV_SRCPT: u8 = 0x01;
const XT_TCP_INV_DSTPT: u8 = 0x02;
const XT_MULTIPORT_SOURCE: u8 = 0;
const XT_MULTIPORT_DESTINATION: u8 = 1;
const XT_MULTI_PORTS: usize = 15;
const XT_ADDRTYPE_INVERT_SOURCE: u32 = 0x1;
const XT_ADDRTYPE_INVERT_DEST: u32 = 0x2;

/// `nf_nat_range*` flag: the NAT rewrites addresses.
pub const NF_NAT_RANGE_MAP_IPS: u32 = 1 << 0;
/// `nf_nat_range*` flag: the NAT rewrites ports.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn be16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// A NUL-terminated C string from a fixed-size field (lossy UTF-8).
pub(crate) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn opaque_match(name: &str) -> DecodedMatch {
    DecodedMatch::Conditions(vec![Match::Opaque {
        description: format!("-m {name}"),
    }])
}

/// Decodes an xt match `name` at `revision` with its `info` blob, for tables of `family`
/// (`Family::Ip` or `Family::Ip6`; the layout of some blobs depends on it). Never fails: unknown or
/// malformed blobs come back as [`Match::Opaque`] naming the match.
pub fn decode_match(name: &str, revision: u8, info: &[u8], family: Family) -> DecodedMatch {
    let _ = family; // no decoded match depends on the family today
    let decoded = match (name, revision) {
        ("comment", _) if info.len() >= 256 => Some(DecodedMatch::Comment(c_string(&info[..256]))),
        ("tcp", 0) if info.len() >= 12 => Some(decode_tcp_udp(info, info[11])),
        ("udp", 0) if info.len() >= 10 => Some(decode_tcp_udp(info, info[8])),
        ("multiport", 0) => decode_multiport_v0(info),
        ("multiport", 1) => decode_multiport_v1(info),
        ("addrtype", 0) => decode_addrtype_v0(info),
        ("addrtype", 1) => decode_addrtype_v1(info),
        ("mark", 1) => decode_mark_match(info),
        _ => None,
    };
    decoded.unwrap_or_else(|| opaque_match(name))
}

/// `xt_tcp` / `xt_udp`: `spts[2]`, `dpts[2]` (host order) then flags; `invflags` passed in.
fn decode_tcp_udp(info: &[u8], invflags: u8) -> DecodedMatch {
    let mut out = Vec::new();
    for (direction, off, inv) in [
        (Direction::Source, 0, XT_TCP_INV_SRCPT),
        (Direction::Destination, 4, XT_TCP_INV_DSTPT),
    ] {
        let (Some(first), Some(last)) = (u16_at(info, off), u16_at(info, off + 2)) else {
            continue;
        };
        let negated = invflags & inv != 0;
        if first == 0 && last == u16::MAX && !negated {
            continue;
        }
        out.push(Match::Ports {
            direction,
            ranges: vec![PortRange { first, last }],
            negated,
        });
    }
    DecodedMatch::Conditions(out)
}

fn multiport_match(flags: u8, ranges: Vec<PortRange>, negated: bool) -> Match {
    let direction = match flags {
        XT_MULTIPORT_SOURCE => Direction::Source,
        XT_MULTIPORT_DESTINATION => Direction::Destination,
        _ => {
            let list: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
            let bang = if negated { "! " } else { "" };
            return Match::Opaque {
                description: format!("-m multiport {bang}--ports {}", list.join(",")),
            };
        }
    };
    Match::Ports {
        direction,
        ranges,
        negated,
    }
}

/// `xt_multiport`: `u8 flags; u8 count; u16 ports[15]`.
fn decode_multiport_v0(info: &[u8]) -> Option<DecodedMatch> {
    if info.len() < 32 {
        return None;
    }
    let count = usize::from(info[1]).min(XT_MULTI_PORTS);
    let ranges = (0..count)
        .map(|i| u16_at(info, 2 + 2 * i).map(PortRange::single))
        .collect::<Option<Vec<_>>>()?;
    Some(DecodedMatch::Conditions(vec![multiport_match(
        info[0], ranges, false,
    )]))
}

/// `xt_multiport_v1`: `u8 flags; u8 count; u16 ports[15]; u8 pflags[15]; u8 invert`. `pflags[i]`
/// set means `ports[i]..=ports[i+1]` is a range.
fn decode_multiport_v1(info: &[u8]) -> Option<DecodedMatch> {
    if info.len() < 48 {
        return None;
    }
    let count = usize::from(info[1]).min(XT_MULTI_PORTS);
    let pflags = &info[32..47];
    let negated = info[47] != 0;
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < count {
        let first = u16_at(info, 2 + 2 * i)?;
        if pflags[i] != 0 && i + 1 < count {
            let last = u16_at(info, 2 + 2 * (i + 1))?;
            ranges.push(PortRange { first, last });
            i += 2;
        } else {
            ranges.push(PortRange::single(first));
            i += 1;
        }
    }
    Some(DecodedMatch::Conditions(vec![multiport_match(
        info[0], ranges, negated,
    )]))
}

fn addrtype_matches(source: u16, dest: u16, inv_src: bool, inv_dst: bool) -> DecodedMatch {
    let mut out = Vec::new();
    if source != 0 {
        out.push(Match::AddrType {
            direction: Direction::Source,
            types: source,
            negated: inv_src,
        });
    }
    if dest != 0 {
        out.push(Match::AddrType {
            direction: Direction::Destination,
            types: dest,
            negated: inv_dst,
        });
    }
    DecodedMatch::Conditions(out)
}

/// `xt_addrtype_info`: `u16 source; u16 dest; u32 invert_source; u32 invert_dest`.
fn decode_addrtype_v0(info: &[u8]) -> Option<DecodedMatch> {
    Some(addrtype_matches(
        u16_at(info, 0)?,
        u16_at(info, 2)?,
        u32_at(info, 4)? != 0,
        u32_at(info, 8)? != 0,
    ))
}

/// `xt_addrtype_info_v1`: `u16 source; u16 dest; u32 flags` (INVERT_SOURCE 1, INVERT_DEST 2,
/// LIMIT_IFACE_IN 4, LIMIT_IFACE_OUT 8; the interface limits do not change the types).
fn decode_addrtype_v1(info: &[u8]) -> Option<DecodedMatch> {
    let flags = u32_at(info, 4)?;
    Some(addrtype_matches(
        u16_at(info, 0)?,
        u16_at(info, 2)?,
        flags & XT_ADDRTYPE_INVERT_SOURCE != 0,
        flags & XT_ADDRTYPE_INVERT_DEST != 0,
    ))
}

/// `xt_mark_mtinfo1`: `u32 mark, mask; u8 invert` (kept opaque, described like iptables-save).
fn decode_mark_match(info: &[u8]) -> Option<DecodedMatch> {
    let mark = u32_at(info, 0)?;
    let mask = u32_at(info, 4)?;
    let bang = if *info.get(8)? != 0 { "! " } else { "" };
    Some(DecodedMatch::Conditions(vec![Match::Opaque {
        description: format!("-m mark {bang}--mark {mark:#x}/{mask:#x}"),
    }]))
}

/// Decodes an xt target `name` at `revision` with its `info` blob. Never fails: unknown or
/// malformed blobs come back as [`Action::Opaque`] naming the target.
///
/// The standard target (name `""` or `"standard"`) is decoded only for builtin verdicts; a jump
/// offset needs the whole table and is resolved by the legacy walker.
pub fn decode_target(name: &str, revision: u8, info: &[u8], family: Family) -> Action {
    let v6 = family == Family::Ip6;
    let decoded = match name {
        "" | "standard" => u32_at(info, 0)
            .and_then(|v| standard_verdict(v as i32))
            .map(|verdict| Action::Verdict { verdict }),
        "DNAT" | "SNAT" => decode_nat(revision, info, v6).map(|range| {
            if name == "DNAT" {
                Action::Dnat { range }
            } else {
                Action::Snat { range }
            }
        }),
        "MASQUERADE" | "REDIRECT" => {
            let range = if v6 {
                decode_nat_range(info, true, false)
            } else {
                decode_nat_compat(info)
            };
            range.map(|r| {
                if name == "MASQUERADE" {
                    Action::Masquerade { ports: r.ports }
                } else {
                    Action::Redirect { ports: r.ports }
                }
            })
        }
        "ACCEPT" => Some(Action::Verdict {
            verdict: Verdict::Accept,
        }),
        "DROP" => Some(Action::Verdict {
            verdict: Verdict::Drop,
        }),
        "RETURN" => Some(Action::Verdict {
            verdict: Verdict::Return,
        }),
        "MARK" if revision == 2 => {
            u32_at(info, 0)
                .zip(u32_at(info, 4))
                .map(|(mark, mask)| Action::Opaque {
                    description: format!("-j MARK --set-xmark {mark:#x}/{mask:#x}"),
                })
        }
        _ => None,
    };
    decoded.unwrap_or_else(|| Action::Opaque {
        description: format!("-j {name}"),
    })
}

/// Maps a builtin standard-target verdict (`-NF_x - 1`) to a [`Verdict`]; None for jump offsets
/// (>= 0) and unknown values.
pub fn standard_verdict(verdict: i32) -> Option<Verdict> {
    match verdict {
        -1 => Some(Verdict::Drop),   // -NF_DROP - 1
        -2 => Some(Verdict::Accept), // -NF_ACCEPT - 1
        -4 => Some(Verdict::Queue),  // -NF_QUEUE - 1
        -5 => Some(Verdict::Return), // XT_RETURN = -NF_REPEAT - 1
        _ => None,
    }
}

fn decode_nat(revision: u8, info: &[u8], v6: bool) -> Option<NatRange> {
    match revision {
        // rev 0 exists for IPv4 only (nf_nat_ipv4_multi_range_compat).
        0 if !v6 => decode_nat_compat(info),
        1 => decode_nat_range(info, v6, false),
        2 => decode_nat_range(info, v6, true),
        _ => None,
    }
}

/// `nf_nat_ipv4_multi_range_compat`: `u32 rangesize; { u32 flags; be32 min_ip, max_ip; be16 min,
/// max; }` (24 bytes). Only the first range is meaningful (rangesize is always 1).
fn decode_nat_compat(info: &[u8]) -> Option<NatRange> {
    if info.len() < 24 || u32_at(info, 0)? == 0 {
        return None;
    }
    let flags = u32_at(info, 4)?;
    let ip = |off: usize| -> Option<IpAddr> {
        let b: [u8; 4] = info.get(off..off + 4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    };
    Some(NatRange {
        addresses: if flags & NF_NAT_RANGE_MAP_IPS != 0 {
            Some((ip(8)?, ip(12)?))
        } else {
            None
        },
        ports: if flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
            Some(PortRange {
                first: be16_at(info, 16)?,
                last: be16_at(info, 18)?,
            })
        } else {
            None
        },
    })
}

/// `nf_nat_range` (40 bytes) / `nf_nat_range2` (44 bytes, adds `base_proto`): `u32 flags; union
/// nf_inet_addr min_addr, max_addr (16 bytes each); be16 min_proto, max_proto`.
fn decode_nat_range(info: &[u8], v6: bool, rev2: bool) -> Option<NatRange> {
    if info.len() < if rev2 { 42 } else { 40 } {
        return None;
    }
    let flags = u32_at(info, 0)?;
    let addr = |off: usize| -> Option<IpAddr> {
        if v6 {
            let b: [u8; 16] = info.get(off..off + 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        } else {
            let b: [u8; 4] = info.get(off..off + 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
    };
    Some(NatRange {
        addresses: if flags & NF_NAT_RANGE_MAP_IPS != 0 {
            Some((addr(4)?, addr(20)?))
        } else {
            None
        },
        ports: if flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
            Some(PortRange {
                first: be16_at(info, 36)?,
                last: be16_at(info, 38)?,
            })
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/xt/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn conditions(d: DecodedMatch) -> Vec<Match> {
        match d {
            DecodedMatch::Conditions(c) => c,
            other => panic!("expected conditions, got {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn comment_from_kernel_blob() {
        let d = decode_match("comment", 0, &blob("ipv4-match-comment-r0"), Family::Ip);
        assert_eq!(
            d,
            DecodedMatch::Comment("cilium-feeder: CILIUM_POST_nat".into())
        );
    }

    #[test]
    fn tcp_and_udp_ports_from_kernel_blobs() {
        // `-p tcp -m tcp --dport 6443`: the source range 0-65535 is no condition.
        let want_tcp = vec![Match::Ports {
            direction: Direction::Destination,
            ranges: vec![PortRange::single(6443)],
            negated: false,
        }];
        assert_eq!(
            conditions(decode_match(
                "tcp",
                0,
                &blob("ipv4-match-tcp-r0"),
                Family::Ip
            )),
            want_tcp
        );
        let v6 = conditions(decode_match(
            "tcp",
            0,
            &blob("ipv6-match-tcp-r0"),
            Family::Ip6,
        ));
        assert_eq!(
            v6,
            vec![Match::Ports {
                direction: Direction::Destination,
                ranges: vec![PortRange::single(443)],
                negated: false,
            }]
        );
        // `-p udp -m udp --sport 53`.
        assert_eq!(
            conditions(decode_match(
                "udp",
                0,
                &blob("ipv4-match-udp-r0"),
                Family::Ip
            )),
            vec![Match::Ports {
                direction: Direction::Source,
                ranges: vec![PortRange::single(53)],
                negated: false,
            }]
        );
    }

    #[test]
    fn tcp_inverted_port_is_negated() {
        // xt_tcp { spts 0-65535, dpts 22-22, option 0, flg_mask 0, flg_cmp 0, invflags DSTPT }.
        let mut b = Vec::new();
        for v in [0u16, 65535, 22, 22] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&[0, 0, 0, XT_TCP_INV_DSTPT, 0, 0, 0, 0]);
        assert_eq!(
            conditions(decode_match("tcp", 0, &b, Family::Ip)),
            vec![Match::Ports {
                direction: Direction::Destination,
                ranges: vec![PortRange::single(22)],
                negated: true,
            }]
        );
    }

    #[test]
    fn multiport_v1_ranges_from_kernel_blob() {
        // `-m multiport --dports 80,8000:8100`.
        assert_eq!(
            conditions(decode_match(
                "multiport",
                1,
                &blob("ipv4-match-multiport-r1"),
                Family::Ip
            )),
            vec![Match::Ports {
                direction: Direction::Destination,
                ranges: vec![
                    PortRange::single(80),
                    PortRange {
                        first: 8000,
                        last: 8100
                    }
                ],
                negated: false,
            }]
        );
    }

    #[test]
    fn multiport_v0_and_either_direction() {
        let mut b = vec![XT_MULTIPORT_SOURCE, 2];
        for p in [53u16, 853].iter().chain([0u16; 13].iter()) {
            b.extend_from_slice(&p.to_ne_bytes());
        }
        assert_eq!(
            conditions(decode_match("multiport", 0, &b, Family::Ip)),
            vec![Match::Ports {
                direction: Direction::Source,
                ranges: vec![PortRange::single(53), PortRange::single(853)],
                negated: false,
            }]
        );
        b[0] = 2; // XT_MULTIPORT_EITHER
        assert_eq!(
            conditions(decode_match("multiport", 0, &b, Family::Ip)),
            vec![Match::Opaque {
                description: "-m multiport --ports 53,853".into()
            }]
        );
    }

    #[test]
    fn addrtype_from_kernel_blob_and_rev0() {
        // `-m addrtype --dst-type LOCAL`: XT_ADDRTYPE_LOCAL is 1 << 2 (RTN_LOCAL = 2).
        assert_eq!(
            conditions(decode_match(
                "addrtype",
                1,
                &blob("ipv4-match-addrtype-r1"),
                Family::Ip
            )),
            vec![Match::AddrType {
                direction: Direction::Destination,
                types: 1 << 2,
                negated: false,
            }]
        );
        // rev 0: source LOCAL inverted, no dest.
        let mut b = Vec::new();
        b.extend_from_slice(&4u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            conditions(decode_match("addrtype", 0, &b, Family::Ip)),
            vec![Match::AddrType {
                direction: Direction::Source,
                types: 4,
                negated: true,
            }]
        );
    }

    #[test]
    fn opaque_matches_are_described() {
        assert_eq!(
            conditions(decode_match(
                "mark",
                1,
                &blob("ipv4-match-mark-r1"),
                Family::Ip
            )),
            vec![Match::Opaque {
                description: "-m mark --mark 0x4000/0x4000".into()
            }]
        );
        assert_eq!(
            conditions(decode_match(
                "statistic",
                0,
                &blob("ipv4-match-statistic-r0"),
                Family::Ip
            )),
            vec![Match::Opaque {
                description: "-m statistic".into()
            }]
        );
    }

    #[test]
    fn nat_targets_from_kernel_blobs() {
        assert_eq!(
            decode_target("DNAT", 2, &blob("ipv4-target-DNAT-r2"), Family::Ip),
            Action::Dnat {
                range: NatRange {
                    addresses: Some((ip("10.42.0.244"), ip("10.42.0.244"))),
                    ports: Some(PortRange::single(6443)),
                }
            }
        );
        assert_eq!(
            decode_target("DNAT", 2, &blob("ipv6-target-DNAT-r2"), Family::Ip6),
            Action::Dnat {
                range: NatRange {
                    addresses: Some((ip("fd00:42::5"), ip("fd00:42::5"))),
                    ports: Some(PortRange::single(8443)),
                }
            }
        );
        assert_eq!(
            decode_target("SNAT", 0, &blob("ipv4-target-SNAT-r0"), Family::Ip),
            Action::Snat {
                range: NatRange {
                    addresses: Some((ip("192.168.1.10"), ip("192.168.1.10"))),
                    ports: None,
                }
            }
        );
        assert_eq!(
            decode_target(
                "MASQUERADE",
                0,
                &blob("ipv4-target-MASQUERADE-r0"),
                Family::Ip
            ),
            Action::Masquerade { ports: None }
        );
        assert_eq!(
            decode_target(
                "MASQUERADE",
                0,
                &blob("ipv6-target-MASQUERADE-r0"),
                Family::Ip6
            ),
            Action::Masquerade { ports: None }
        );
        assert_eq!(
            decode_target("LOG", 0, &blob("ipv4-target-LOG-r0"), Family::Ip),
            Action::Opaque {
                description: "-j LOG".into()
            }
        );
    }

    /// `nf_nat_range` (rev 1): flags, min/max nf_inet_addr, min/max proto (network order).
    fn nat_range_v1(flags: u32, min: [u8; 16], max: [u8; 16], ports: (u16, u16)) -> Vec<u8> {
        let mut b = flags.to_ne_bytes().to_vec();
        b.extend_from_slice(&min);
        b.extend_from_slice(&max);
        b.extend_from_slice(&ports.0.to_be_bytes());
        b.extend_from_slice(&ports.1.to_be_bytes());
        b
    }

    #[test]
    fn nat_rev1_and_redirect_ports() {
        let mut min = [0u8; 16];
        min[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut max = [0u8; 16];
        max[..4].copy_from_slice(&[10, 0, 0, 9]);
        let b = nat_range_v1(3, min, max, (8000, 8100));
        assert_eq!(
            decode_target("DNAT", 1, &b, Family::Ip),
            Action::Dnat {
                range: NatRange {
                    addresses: Some((ip("10.0.0.1"), ip("10.0.0.9"))),
                    ports: Some(PortRange {
                        first: 8000,
                        last: 8100
                    }),
                }
            }
        );
        // Addresses ignored without NF_NAT_RANGE_MAP_IPS.
        let b = nat_range_v1(NF_NAT_RANGE_PROTO_SPECIFIED, min, max, (15001, 15001));
        assert_eq!(
            decode_target("REDIRECT", 0, &b, Family::Ip6),
            Action::Redirect {
                ports: Some(PortRange::single(15001))
            }
        );
        // IPv4 compat REDIRECT --to-ports 15001: rangesize 1, flags, min_ip, max_ip, ports.
        let mut c = 1u32.to_ne_bytes().to_vec();
        c.extend_from_slice(&NF_NAT_RANGE_PROTO_SPECIFIED.to_ne_bytes());
        c.extend_from_slice(&[0; 8]);
        c.extend_from_slice(&15001u16.to_be_bytes());
        c.extend_from_slice(&15001u16.to_be_bytes());
        c.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_target("REDIRECT", 0, &c, Family::Ip),
            Action::Redirect {
                ports: Some(PortRange::single(15001))
            }
        );
    }

    #[test]
    fn standard_verdicts() {
        assert_eq!(standard_verdict(-1), Some(Verdict::Drop));
        assert_eq!(standard_verdict(-2), Some(Verdict::Accept));
        assert_eq!(standard_verdict(-5), Some(Verdict::Return));
        assert_eq!(standard_verdict(152), None);
        assert_eq!(
            decode_target("", 0, &(-2i32).to_ne_bytes(), Family::Ip),
            Action::Verdict {
                verdict: Verdict::Accept
            }
        );
    }

    #[test]
    fn truncated_and_garbage_blobs_never_panic() {
        let cases: Vec<(&str, u8, bool, Family, Vec<u8>)> = vec![
            (
                "comment",
                0,
                false,
                Family::Ip,
                blob("ipv4-match-comment-r0"),
            ),
            ("tcp", 0, false, Family::Ip, blob("ipv4-match-tcp-r0")),
            ("udp", 0, false, Family::Ip, blob("ipv4-match-udp-r0")),
            (
                "multiport",
                1,
                false,
                Family::Ip,
                blob("ipv4-match-multiport-r1"),
            ),
            ("multiport", 0, false, Family::Ip, vec![1; 32]),
            (
                "addrtype",
                1,
                false,
                Family::Ip,
                blob("ipv4-match-addrtype-r1"),
            ),
            ("addrtype", 0, false, Family::Ip, vec![0xff; 12]),
            ("mark", 1, false, Family::Ip, blob("ipv4-match-mark-r1")),
            ("DNAT", 2, true, Family::Ip, blob("ipv4-target-DNAT-r2")),
            ("DNAT", 2, true, Family::Ip6, blob("ipv6-target-DNAT-r2")),
            ("SNAT", 0, true, Family::Ip, blob("ipv4-target-SNAT-r0")),
            (
                "MASQUERADE",
                0,
                true,
                Family::Ip,
                blob("ipv4-target-MASQUERADE-r0"),
            ),
            (
                "MASQUERADE",
                0,
                true,
                Family::Ip6,
                blob("ipv6-target-MASQUERADE-r0"),
            ),
        ];
        for (name, rev, is_target, family, full) in cases {
            // Every strict prefix shorter than the struct is malformed -> Opaque naming it.
            for len in 0..full.len().min(8) {
                let short = &full[..len];
                if is_target {
                    let a = decode_target(name, rev, short, family);
                    assert_eq!(
                        a,
                        Action::Opaque {
                            description: format!("-j {name}")
                        },
                        "{name} truncated to {len}"
                    );
                } else {
                    let m = decode_match(name, rev, short, family);
                    assert_eq!(
                        m,
                        DecodedMatch::Conditions(vec![Match::Opaque {
                            description: format!("-m {name}")
                        }]),
                        "{name} truncated to {len}"
                    );
                }
            }
            // Any length and any content: no panic.
            let mut garbage = full.clone();
            for (i, b) in garbage.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(151).wrapping_add(7);
            }
            for len in 0..=garbage.len() {
                let _ = decode_match(name, rev, &garbage[..len], family);
                let _ = decode_target(name, rev, &garbage[..len], family);
            }
        }
        // A multiport count beyond 15 is clamped, not indexed out of bounds.
        let mut m = vec![1u8, 200];
        m.resize(48, 0xff);
        let _ = decode_match("multiport", 1, &m, Family::Ip);
        let _ = decode_match("multiport", 0, &m, Family::Ip);
    }
}
