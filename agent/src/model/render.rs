//! Renders normalised rules back into text people know: iptables-save syntax for tables written by
//! iptables (legacy, or iptables-nft's classic tables) and nft syntax for native nftables tables.
//! Used in evidence and for the content hashes that guard fixes. Pure.

use crate::model::finding::FixAction;
use crate::model::ruleset::{
    Action, Backend, Direction, Family, Field, Match, PortRange, Rule, Table,
};
use std::fmt::Write;

/// Tables iptables-nft creates; their rules are shown in iptables-save syntax.
const IPTABLES_TABLE_NAMES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Whether a table is best shown in iptables-save syntax.
pub fn uses_iptables_syntax(table: &Table) -> bool {
    table.id.backend == Backend::Legacy
        || (matches!(table.id.family, Family::Ip | Family::Ip6)
            && IPTABLES_TABLE_NAMES.contains(&table.id.name.as_str()))
}

/// Renders `rule` of `chain` in the syntax that suits `table`.
pub fn render_rule(table: &Table, chain: &str, rule: &Rule) -> String {
    if uses_iptables_syntax(table) {
        render_iptables(chain, rule)
    } else {
        render_nft(rule)
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

fn ports_text(ranges: &[PortRange], sep: &str, range_sep: &str) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}{range_sep}{}", r.first, r.last)
            }
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn bang(negated: bool) -> &'static str {
    if negated {
        "! "
    } else {
        ""
    }
}

/// Address type names of `xt_addrtype` bits.
fn addrtype_names(types: u16) -> String {
    const NAMES: [&str; 12] = [
        "UNSPEC",
        "UNICAST",
        "LOCAL",
        "BROADCAST",
        "ANYCAST",
        "MULTICAST",
        "BLACKHOLE",
        "UNREACHABLE",
        "PROHIBIT",
        "THROW",
        "NAT",
        "XRESOLVE",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| types & (1 << bit) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// A string argument as iptables-save prints it (libxtables `xtables_save_string`): bare when it
/// is non-empty and only `[A-Za-z0-9_-]`, otherwise in double quotes with `"`, `\` and `'`
/// escaped by a backslash.
pub fn save_string(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `-A CHAIN -s 10.0.0.0/8 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443`
pub fn render_iptables(chain: &str, rule: &Rule) -> String {
    let mut out = format!("-A {chain}");
    let proto = rule.matches.iter().find_map(|m| match m {
        Match::L4Proto { proto, .. } => Some(*proto),
        _ => None,
    });
    // iptables-save prints the fixed part first (-s, -d, -i, -o, -p), then the matches in order.
    let fixed_rank = |m: &Match| match m {
        Match::Address {
            direction: Direction::Source,
            ..
        } => 0,
        Match::Address { .. } => 1,
        Match::Interface {
            direction: Direction::Source,
            ..
        } => 2,
        Match::Interface { .. } => 3,
        Match::L4Proto { .. } => 4,
        _ => 5,
    };
    let mut ordered: Vec<&Match> = rule.matches.iter().collect();
    ordered.sort_by_key(|m| fixed_rank(m));
    for m in ordered {
        match m {
            Match::Address {
                direction,
                cidr,
                negated,
            } => {
                let flag = if *direction == Direction::Source {
                    "-s"
                } else {
                    "-d"
                };
                let _ = write!(out, " {}{flag} {cidr}", bang(*negated));
            }
            Match::Interface {
                direction,
                name,
                negated,
            } => {
                let flag = if *direction == Direction::Source {
                    "-i"
                } else {
                    "-o"
                };
                let _ = write!(out, " {}{flag} {name}", bang(*negated));
            }
            Match::L4Proto { proto, negated } => {
                let _ = write!(out, " {}-p {}", bang(*negated), proto_name(*proto));
            }
            Match::Ports {
                direction,
                ranges,
                negated,
            } => {
                let module = proto.map(proto_name).unwrap_or_else(|| "tcp".into());
                if ranges.len() == 1 {
                    let flag = if *direction == Direction::Source {
                        "--sport"
                    } else {
                        "--dport"
                    };
                    let _ = write!(
                        out,
                        " -m {module} {}{flag} {}",
                        bang(*negated),
                        ports_text(ranges, ",", ":")
                    );
                } else {
                    let flag = if *direction == Direction::Source {
                        "--sports"
                    } else {
                        "--dports"
                    };
                    let _ = write!(
                        out,
                        " -m multiport {}{flag} {}",
                        bang(*negated),
                        ports_text(ranges, ",", ":")
                    );
                }
            }
            Match::AddrType {
                direction,
                types,
                negated,
            } => {
                let flag = if *direction == Direction::Source {
                    "--src-type"
                } else {
                    "--dst-type"
                };
                let _ = write!(
                    out,
                    " -m addrtype {}{flag} {}",
                    bang(*negated),
                    addrtype_names(*types)
                );
            }
            Match::SetLookup { set, negated, .. } => {
                let _ = write!(out, " -m set {}--match-set {set}", bang(*negated));
            }
            Match::Opaque { description } => {
                let _ = write!(out, " {description}");
            }
        }
    }
    if let Some(comment) = &rule.comment {
        let _ = write!(out, " -m comment --comment {}", save_string(comment));
    }
    match &rule.action {
        Action::None => {}
        Action::Verdict { verdict } => {
            use crate::model::ruleset::Verdict;
            let text = match verdict {
                Verdict::Accept => "-j ACCEPT".to_string(),
                Verdict::Drop => "-j DROP".to_string(),
                Verdict::Return => "-j RETURN".to_string(),
                Verdict::Queue => "-j NFQUEUE".to_string(),
                Verdict::Continue => "-j CONTINUE".to_string(),
                Verdict::Jump(c) => format!("-j {c}"),
                Verdict::Goto(c) => format!("-g {c}"),
            };
            let _ = write!(out, " {text}");
        }
        Action::VerdictMap { set, .. } => {
            let _ = write!(out, " vmap @{set}");
        }
        Action::Dnat { range } => {
            let _ = write!(out, " -j DNAT --to-destination {range}");
        }
        Action::Snat { range } => {
            let _ = write!(out, " -j SNAT --to-source {range}");
        }
        Action::Masquerade { ports } => {
            out.push_str(" -j MASQUERADE");
            if let Some(p) = ports {
                let _ = write!(out, " --to-ports {p}");
            }
        }
        Action::Redirect { ports } => {
            out.push_str(" -j REDIRECT");
            if let Some(p) = ports {
                let _ = write!(out, " --to-ports {p}");
            }
        }
        Action::Opaque { description } => {
            let _ = write!(out, " {description}");
        }
    }
    out
}

/// How people write a field in nft syntax.
pub fn field_text(field: &Field) -> String {
    match field {
        Field::Address(Direction::Source) => "ip saddr".into(),
        Field::Address(Direction::Destination) => "ip daddr".into(),
        Field::L4Proto => "meta l4proto".into(),
        Field::Port(Direction::Source) => "th sport".into(),
        Field::Port(Direction::Destination) => "th dport".into(),
        Field::Interface(Direction::Source) => "iifname".into(),
        Field::Interface(Direction::Destination) => "oifname".into(),
        Field::Mark => "meta mark".into(),
        Field::CtState => "ct state".into(),
        Field::FibAddrType(Direction::Source) => "fib saddr type".into(),
        Field::FibAddrType(Direction::Destination) => "fib daddr type".into(),
        Field::Numgen => "numgen".into(),
        Field::Other(text) => text.clone(),
    }
}

fn key_text(key: &[Field]) -> String {
    key.iter().map(field_text).collect::<Vec<_>>().join(" . ")
}

/// `meta l4proto tcp th dport 6443 dnat to 10.42.0.244:6443`
pub fn render_nft(rule: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    let neq = |negated: bool| if negated { "!= " } else { "" };
    for m in &rule.matches {
        parts.push(match m {
            Match::L4Proto { proto, negated } => {
                format!("meta l4proto {}{}", neq(*negated), proto_name(*proto))
            }
            Match::Address {
                direction,
                cidr,
                negated,
            } => {
                let ip = if cidr.addr.is_ipv4() { "ip" } else { "ip6" };
                let dir = if *direction == Direction::Source {
                    "saddr"
                } else {
                    "daddr"
                };
                let full = if cidr.addr.is_ipv4() { 32 } else { 128 };
                if cidr.prefix == full {
                    format!("{ip} {dir} {}{}", neq(*negated), cidr.addr)
                } else {
                    format!("{ip} {dir} {}{cidr}", neq(*negated))
                }
            }
            Match::Ports {
                direction,
                ranges,
                negated,
            } => {
                let dir = if *direction == Direction::Source {
                    "sport"
                } else {
                    "dport"
                };
                if ranges.len() == 1 {
                    format!(
                        "th {dir} {}{}",
                        neq(*negated),
                        ports_text(ranges, ", ", "-")
                    )
                } else {
                    format!(
                        "th {dir} {}{{ {} }}",
                        neq(*negated),
                        ports_text(ranges, ", ", "-")
                    )
                }
            }
            Match::Interface {
                direction,
                name,
                negated,
            } => {
                let key = if *direction == Direction::Source {
                    "iifname"
                } else {
                    "oifname"
                };
                let name = name
                    .strip_suffix('+')
                    .map(|p| format!("{p}*"))
                    .unwrap_or(name.clone());
                format!("{key} {}\"{name}\"", neq(*negated))
            }
            Match::AddrType {
                direction,
                types,
                negated,
            } => {
                let dir = if *direction == Direction::Source {
                    "saddr"
                } else {
                    "daddr"
                };
                format!(
                    "fib {dir} type {}{}",
                    neq(*negated),
                    addrtype_names(*types).to_lowercase()
                )
            }
            Match::SetLookup { set, key, negated } => {
                format!("{} {}@{set}", key_text(key), neq(*negated))
            }
            Match::Opaque { description } => description.clone(),
        });
    }
    match &rule.action {
        Action::None => {}
        Action::Verdict { verdict } => parts.push(verdict.to_string()),
        Action::VerdictMap { set, key } => parts.push(format!("{} vmap @{set}", key_text(key))),
        Action::Dnat { range } => parts.push(format!("dnat to {range}")),
        Action::Snat { range } => parts.push(format!("snat to {range}")),
        Action::Masquerade { ports } => parts.push(match ports {
            Some(p) => format!("masquerade to :{p}"),
            None => "masquerade".into(),
        }),
        Action::Redirect { ports } => parts.push(match ports {
            Some(p) => format!("redirect to :{p}"),
            None => "redirect".into(),
        }),
        Action::Opaque { description } => parts.push(description.clone()),
    }
    if let Some(comment) = &rule.comment {
        parts.push(format!("comment \"{comment}\""));
    }
    parts.join(" ")
}

/// A rule as a [`RuleRef`](crate::model::finding::RuleRef) spec: rendered in the table's syntax,
/// without the leading `-A CHAIN` of iptables syntax (what follows `-D CHAIN` when deleting it).
pub fn rule_spec(table: &Table, chain: &str, rule: &Rule) -> String {
    let text = render_rule(table, chain, rule);
    if uses_iptables_syntax(table) {
        let prefix = format!("-A {chain}");
        match text.strip_prefix(&prefix) {
            Some(rest) => rest.trim_start().to_string(),
            None => text,
        }
    } else {
        text
    }
}

/// The fingerprint of the content a ruleset fix acts on in `table`: the spec of every rule it
/// deletes (as the action carries it), then for every chain it flushes or deletes, that chain's
/// rules and every rule jumping or going to it, rendered from `table`. Positions and handles are
/// not part of it, so another writer inserting elsewhere does not change it; any change to what
/// the fix touches does. Computed by the checks when they decide and by the writer again right
/// before writing (the legacy writer: under the xtables lock).
pub fn action_fingerprint(table: &Table, action: &FixAction) -> u64 {
    let mut lines: Vec<String> = Vec::new();
    let chains: Vec<&str> = match action {
        FixAction::FlushChain { chain, .. } => vec![chain.as_str()],
        FixAction::RemoveRules {
            rules,
            delete_chains,
            narrow,
            ..
        } => {
            lines.extend(
                rules
                    .iter()
                    .map(|r| format!("rule {}: {}", r.chain, r.spec)),
            );
            lines.extend(narrow.iter().map(|n| {
                format!(
                    "narrow {}: {} -> {}",
                    n.rule.chain, n.rule.spec, n.rule_spec
                )
            }));
            delete_chains.iter().map(String::as_str).collect()
        }
        FixAction::SetPromisc { .. } | FixAction::ClearPromisc { .. } => Vec::new(),
    };
    for name in chains {
        match table.chain(name) {
            Some(chain) => {
                lines.push(format!("chain {name}"));
                lines.extend(chain.rules.iter().map(|r| render_rule(table, name, r)));
            }
            None => lines.push(format!("no chain {name}")),
        }
        lines.push(format!("referenced by {name}"));
        for from in &table.chains {
            for rule in &from.rules {
                let target = match &rule.action {
                    Action::Verdict { verdict } => verdict.target_chain(),
                    _ => None,
                };
                if target == Some(name) {
                    lines.push(render_rule(table, &from.name, rule));
                }
            }
        }
    }
    content_hash(lines.iter().map(String::as_str))
}

/// A stable 64-bit hash (FNV-1a) of text: content fingerprints that survive restarts.
pub fn content_hash<'a>(lines: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ruleset::{Cidr, NatRange, Verdict};

    fn hostport_rule() -> Rule {
        Rule {
            handle: 7,
            matches: vec![
                Match::Address {
                    direction: Direction::Source,
                    cidr: Cidr {
                        addr: "10.42.0.0".parse().unwrap(),
                        prefix: 24,
                    },
                    negated: true,
                },
                Match::L4Proto {
                    proto: 6,
                    negated: false,
                },
                Match::Ports {
                    direction: Direction::Destination,
                    ranges: vec![PortRange::single(6443)],
                    negated: false,
                },
            ],
            action: Action::Dnat {
                range: NatRange {
                    addresses: Some((
                        "10.42.0.244".parse().unwrap(),
                        "10.42.0.244".parse().unwrap(),
                    )),
                    ports: Some(PortRange::single(6443)),
                },
            },
            comment: Some("dnat name: \"cbr0\" id: \"abc\"".into()),
            counters: None,
        }
    }

    #[test]
    fn iptables_syntax_reads_like_iptables_save() {
        assert_eq!(
            render_iptables("CNI-DN-1", &hostport_rule()),
            "-A CNI-DN-1 ! -s 10.42.0.0/24 -p tcp -m tcp --dport 6443 -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"abc\\\"\" -j DNAT --to-destination 10.42.0.244:6443"
        );
    }

    #[test]
    fn nft_syntax_reads_like_nft() {
        let mut rule = hostport_rule();
        rule.comment = None;
        assert_eq!(
            render_nft(&rule),
            "ip saddr != 10.42.0.0/24 meta l4proto tcp th dport 6443 dnat to 10.42.0.244:6443"
        );
        let jump = Rule {
            handle: 1,
            matches: vec![Match::AddrType {
                direction: Direction::Destination,
                types: 1 << 2,
                negated: false,
            }],
            action: Action::Verdict {
                verdict: Verdict::Jump("CNI-HOSTPORT-DNAT".into()),
            },
            comment: None,
            counters: None,
        };
        assert_eq!(
            render_nft(&jump),
            "fib daddr type local jump CNI-HOSTPORT-DNAT"
        );
        assert_eq!(
            render_iptables("PREROUTING", &jump),
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        );
    }

    #[test]
    fn content_hash_is_stable_and_order_sensitive() {
        assert_eq!(content_hash(["a", "b"]), content_hash(["a", "b"]));
        assert_ne!(content_hash(["a", "b"]), content_hash(["b", "a"]));
        assert_ne!(content_hash(["ab"]), content_hash(["a", "b"]));
    }
}
