//! Renders normalised rules back into text people know: iptables-save syntax for tables written by
//! iptables (legacy, or iptables-nft's classic tables) and nft syntax for native nftables tables.
//! Used in evidence and for the content hashes that guard fixes. Pure.
//!
//! Long because it speaks two syntaxes (iptables-save and nft) for every match and action the model
//! has; both renderers share the field and value helpers.

use crate::model::finding::FixAction;
use crate::model::ruleset::{
    Action, Backend, Direction, Family, Field, Match, PortRange, Rule, Table,
};
use std::borrow::Cow;
use std::fmt::Write;

/// Longest text [`printable`] shows whole (counted after escaping); longer text keeps its head
/// and tail.
pub const PRINTABLE_MAX_CHARS: usize = 240;

/// Text taken from outside (kernel object names, config keys and values) made safe to put in an
/// error or a log line: control characters (a newline, an escape sequence) are shown escaped
/// (`\u{1b}`), and text that would print longer than [`PRINTABLE_MAX_CHARS`] is cut in the middle
/// (its head and its tail, which usually says what is wrong, are kept). Anything else is kept as
/// is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.len() <= PRINTABLE_MAX_CHARS && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let escape = |c: char| {
        if c.is_control() {
            c.escape_unicode().to_string()
        } else {
            c.to_string()
        }
    };
    let pieces: Vec<String> = text.chars().map(escape).collect();
    let shown = |piece: &String| piece.chars().count();
    if pieces.iter().map(shown).sum::<usize>() <= PRINTABLE_MAX_CHARS {
        return Cow::Owned(pieces.concat());
    }
    let (head_max, tail_max) = (160, 60);
    let (mut head, mut head_len) = (0, 0);
    while head < pieces.len() && head_len + shown(&pieces[head]) <= head_max {
        head_len += shown(&pieces[head]);
        head += 1;
    }
    let (mut tail, mut tail_len) = (pieces.len(), 0);
    while tail > head && tail_len + shown(&pieces[tail - 1]) <= tail_max {
        tail -= 1;
        tail_len += shown(&pieces[tail]);
    }
    let mut out = pieces[..head].concat();
    let _ = write!(out, " [{} characters cut] ", tail - head);
    out.push_str(&pieces[tail..].concat());
    Cow::Owned(out)
}

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
///
/// The text is what `iptables-save` prints for the rule, so that it can be pasted back into
/// `iptables-restore`. A rule with anything iptables cannot say (an nft expression, an xt blob
/// netmend does not decode, a set whose name is unknown) is rendered as a comment line:
/// `# not expressible in iptables syntax (<what>): -A ...`, which `iptables-restore` ignores.
pub fn render_iptables(chain: &str, rule: &Rule) -> String {
    let mut out = format!("-A {chain}");
    let mut missing: Vec<String> = Vec::new();
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
    // The module of the last `-m` written, which a continuation (`--tcp-flags ...`) extends.
    let mut module: Option<String> = None;
    // The rule's first comment precedes any further `-m comment` kept among the matches.
    let mut comment_written = false;
    let mut write_comment = |out: &mut String| {
        if let (Some(comment), false) = (&rule.comment, comment_written) {
            let _ = write!(out, " -m comment --comment {}", save_string(comment));
        }
        comment_written = true;
    };
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
                module = None;
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
                module = None;
            }
            Match::L4Proto { proto, negated } => {
                let _ = write!(out, " {}-p {}", bang(*negated), proto_name(*proto));
                module = None;
            }
            Match::Ports {
                direction,
                ranges,
                negated,
            } => {
                let Some(name) = proto.filter(|p| matches!(p, 6 | 17 | 132 | 33 | 136)) else {
                    missing.push("a port match without a transport protocol".into());
                    continue;
                };
                let name = proto_name(name);
                let source = *direction == Direction::Source;
                if ranges.len() == 1 {
                    let flag = if source { "--sport" } else { "--dport" };
                    let _ = write!(
                        out,
                        " -m {name} {}{flag} {}",
                        bang(*negated),
                        ports_text(ranges, ",", ":")
                    );
                    module = Some(name);
                } else {
                    let flag = if source { "--sports" } else { "--dports" };
                    let _ = write!(
                        out,
                        " -m multiport {}{flag} {}",
                        bang(*negated),
                        ports_text(ranges, ",", ":")
                    );
                    module = Some("multiport".into());
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
                module = Some("addrtype".into());
            }
            Match::SetLookup { set, key, negated } => {
                let dirs: Option<Vec<&str>> = key
                    .iter()
                    .map(|f| match f {
                        Field::Other(d) if d == "src" || d == "dst" => Some(d.as_str()),
                        _ => None,
                    })
                    .collect();
                match dirs {
                    Some(dirs) if !dirs.is_empty() && !set.starts_with(SET_INDEX_PREFIX) => {
                        let _ = write!(
                            out,
                            " -m set {}--match-set {set} {}",
                            bang(*negated),
                            dirs.join(",")
                        );
                        module = Some("set".into());
                    }
                    Some(_) => missing.push(format!(
                        "ipset with kernel index {} (its name could not be read)",
                        set.trim_start_matches(SET_INDEX_PREFIX)
                    )),
                    None => missing.push(render_nft(&Rule {
                        handle: 0,
                        matches: vec![m.clone()],
                        action: Action::None,
                        comment: None,
                        counters: None,
                    })),
                }
            }
            Match::Opaque { description } => {
                let text = description.as_str();
                if let Some(what) = text.strip_prefix(NOT_EXPRESSIBLE_MARK) {
                    missing.push(what.to_string());
                } else if let Some(rest) = text.strip_prefix("-m ") {
                    if rest.starts_with("comment ") {
                        write_comment(&mut out);
                    }
                    let _ = write!(out, " {text}");
                    module = rest.split_whitespace().next().map(str::to_string);
                } else if text.starts_with("--") || text.starts_with("! --") {
                    if module.is_some() {
                        let _ = write!(out, " {text}");
                    } else {
                        missing.push(text.to_string());
                    }
                } else if let Some((piece, piece_module)) = iptables_of_nft(text, module.as_deref())
                {
                    let _ = write!(out, " {piece}");
                    module = Some(piece_module);
                } else {
                    missing.push(text.to_string());
                }
            }
        }
    }
    write_comment(&mut out);
    match &rule.action {
        Action::None => {}
        Action::Verdict { verdict } => {
            use crate::model::ruleset::Verdict;
            let text = match verdict {
                Verdict::Accept => Some("-j ACCEPT".to_string()),
                Verdict::Drop => Some("-j DROP".to_string()),
                Verdict::Return => Some("-j RETURN".to_string()),
                // x_tables' standard QUEUE verdict (NFQUEUE is a target of its own).
                Verdict::Queue => Some("-j QUEUE".to_string()),
                Verdict::Continue => None,
                Verdict::Jump(c) => Some(format!("-j {c}")),
                Verdict::Goto(c) => Some(format!("-g {c}")),
            };
            match text {
                Some(text) => {
                    let _ = write!(out, " {text}");
                }
                None => missing.push(format!("verdict {verdict}")),
            }
        }
        Action::VerdictMap { set, key } => {
            missing.push(format!("{} vmap @{set}", key_text(key)));
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
            if let Some(what) = description.strip_prefix(NOT_EXPRESSIBLE_MARK) {
                missing.push(what.to_string());
            } else if description.starts_with("-j ") {
                let _ = write!(out, " {description}");
            } else if let Some(text) = nflog_of_nft(description) {
                let _ = write!(out, " {text}");
            } else {
                missing.push(description.clone());
            }
        }
    }
    if missing.is_empty() {
        out
    } else {
        format!(
            "# not expressible in iptables syntax ({}): {out}",
            missing.join("; ")
        )
    }
}

/// `-j NFLOG ...` for the `log ... group N` statement iptables-nft writes for it natively.
fn nflog_of_nft(text: &str) -> Option<String> {
    let rest = text.strip_prefix("log")?;
    let mut words = Vec::new();
    let mut chars = rest.trim_start().chars().peekable();
    while chars.peek().is_some() {
        let mut word = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    '"' => break,
                    _ => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                word.push(c);
            }
        }
        chars.next_if(|c| *c == ' ');
        words.push(word);
    }
    let mut prefix = None;
    let mut group = None;
    let mut snaplen = None;
    let mut threshold = None;
    for pair in words.chunks(2) {
        match pair {
            [key, value] if key == "prefix" => prefix = Some(value.clone()),
            [key, value] if key == "group" => group = Some(value.parse::<u16>().ok()?),
            [key, value] if key == "snaplen" => snaplen = Some(value.parse::<u32>().ok()?),
            [key, value] if key == "queue-threshold" => {
                threshold = Some(value.parse::<u16>().ok()?)
            }
            _ => return None,
        }
    }
    let group = group?;
    let mut out = String::from("-j NFLOG");
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        let _ = write!(out, " --nflog-prefix {}", save_string(&prefix));
    }
    if group != 0 {
        let _ = write!(out, " --nflog-group {group}");
    }
    if let Some(snaplen) = snaplen {
        let _ = write!(out, " --nflog-size {snaplen}");
    }
    if let Some(threshold) = threshold.filter(|t| *t != 0) {
        let _ = write!(out, " --nflog-threshold {threshold}");
    }
    Some(out)
}

/// The iptables-save text of an nft expression that iptables-nft writes natively for a classic
/// match (`meta mark & 0xf00 == 0x200` is `-m mark --mark 0x200/0xf00`), with the module it
/// opens; None for anything iptables has no words for.
fn iptables_of_nft(text: &str, module: Option<&str>) -> Option<(String, String)> {
    let number = |t: &str| -> Option<u32> {
        match t.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => t.parse().ok(),
        }
    };
    // `<field> [& MASK] ==|!= VALUE`
    let compare = |rest: &str| -> Option<(Option<u32>, bool, u32)> {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (mask, words) = match words.as_slice() {
            ["&", mask, tail @ ..] => (Some(number(mask)?), tail.to_vec()),
            _ => (None, words),
        };
        match words.as_slice() {
            ["==", value] => Some((mask, false, number(value)?)),
            ["!=", value] => Some((mask, true, number(value)?)),
            _ => None,
        }
    };
    if let Some(rest) = text.strip_prefix("meta mark ") {
        let (mask, negated, value) = compare(rest)?;
        let text = format!(
            "-m mark {}--mark {}",
            bang(negated),
            mark_text(value, mask.unwrap_or(u32::MAX))
        );
        return Some((text, "mark".into()));
    }
    if let Some(rest) = text.strip_prefix("tcp flags ") {
        let (mask, negated, value) = compare(rest)?;
        let mask = u8::try_from(mask?).ok()?;
        let value = u8::try_from(value).ok()?;
        let option = format!(
            "{}--tcp-flags {} {}",
            bang(negated),
            tcp_flag_names(mask),
            tcp_flag_names(value)
        );
        let text = if module == Some("tcp") {
            option
        } else {
            format!("-m tcp {option}")
        };
        return Some((text, "tcp".into()));
    }
    if let Some(rest) = text.strip_prefix("limit rate ") {
        // `limit rate 5/minute burst 7 packets` (iptables-nft writes `-m limit` natively).
        let words: Vec<&str> = rest.split_whitespace().collect();
        let ([rate_unit, "burst", burst, "packets"] | [rate_unit, "burst", burst, "packets", ..]) =
            words.as_slice()
        else {
            return None;
        };
        let (rate, unit) = rate_unit.split_once('/')?;
        let rate: u64 = rate.parse().ok()?;
        let seconds: u64 = match unit {
            "second" => 1,
            "minute" => 60,
            "hour" => 3600,
            "day" => 86400,
            _ => return None,
        };
        let avg = u32::try_from(10_000 * seconds / rate.max(1)).ok()?;
        let burst: u32 = burst.parse().ok()?;
        let mut text = format!("-m limit --limit {}", limit_rate_text(avg)?);
        if burst != 5 {
            let _ = write!(text, " --limit-burst {burst}");
        }
        return Some((text, "limit".into()));
    }
    None
}

/// Prefix of an opaque description netmend cannot render in any syntax (an xt blob it does not
/// decode). The renderers show such a rule as not expressible.
pub const NOT_EXPRESSIBLE_MARK: &str = "?";

/// Prefix of the set name of an `-m set` match until the reader resolved the kernel's set index to
/// the set's name (`ipset#3`).
pub const SET_INDEX_PREFIX: &str = "ipset#";

/// `--mark 0x4000/0x4000`, or `--mark 0x1` when the mask is all ones (as iptables-save prints).
pub fn mark_text(mark: u32, mask: u32) -> String {
    if mask == u32::MAX {
        format!("{mark:#x}")
    } else {
        format!("{mark:#x}/{mask:#x}")
    }
}

/// TCP flag bits as iptables names them (`FIN,SYN,RST,ACK`; `NONE` for none).
pub fn tcp_flag_names(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "NONE".into()
    } else {
        names.join(",")
    }
}

/// The `--limit` value iptables prints for an `avg` (libxt_limit's print_rate).
pub fn limit_rate_text(avg: u32) -> Option<String> {
    const SCALE: u32 = 10_000;
    const RATES: [(&str, u32); 4] = [
        ("day", SCALE * 24 * 60 * 60),
        ("hour", SCALE * 60 * 60),
        ("min", SCALE * 60),
        ("sec", SCALE),
    ];
    if avg == 0 {
        return None;
    }
    let mut i = 1;
    while i < RATES.len() {
        let mult = RATES[i].1;
        if avg > mult || mult / avg < mult % avg {
            break;
        }
        i += 1;
    }
    let (name, mult) = RATES[i - 1];
    Some(format!("{}/{name}", mult / avg))
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
            // An undecoded xt blob reads as nft lists it (`xt match "u32"`).
            Match::Opaque { description } => description
                .strip_prefix(NOT_EXPRESSIBLE_MARK)
                .unwrap_or(description)
                .to_string(),
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
        Action::Opaque { description } => parts.push(
            description
                .strip_prefix(NOT_EXPRESSIBLE_MARK)
                .unwrap_or(description)
                .to_string(),
        ),
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
        FixAction::SetPromisc { .. }
        | FixAction::ClearPromisc { .. }
        | FixAction::CordonNode { .. }
        | FixAction::UncordonNode { .. }
        | FixAction::SetServiceShape { .. } => Vec::new(),
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

    #[test]
    fn printable_escapes_control_characters_and_cuts_long_text() {
        assert!(matches!(printable("KUBE-SVC-ÄÖ x"), Cow::Borrowed(_)));
        assert_eq!(printable("firewal\u{8}"), "firewal\\u{8}");
        assert_eq!(printable("a\nb\x1b[31m"), "a\\u{a}b\\u{1b}[31m");
        let long = format!("{}: not an address", "1".repeat(1000));
        let shown = printable(&long);
        assert!(shown.starts_with(&"1".repeat(160)));
        assert!(shown.contains(&format!(" [{} characters cut] ", long.len() - 220)));
        assert!(shown.ends_with("1111: not an address"));
        assert!(shown.chars().count() < 300);
        // Counted after escaping: 1,000 tabs print as at most 240 characters plus the note.
        let tabs = "\t".repeat(1000);
        let shown = printable(&tabs);
        assert!(shown.starts_with("\\u{9}\\u{9}"));
        assert!(shown.chars().count() < 260, "{}", shown.chars().count());
        assert!(shown.contains(&format!(" [{} characters cut] ", 1000 - 32 - 12)));
    }

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

    fn rule(matches: Vec<Match>, action: Action, comment: Option<&str>) -> Rule {
        Rule {
            handle: 1,
            matches,
            action,
            comment: comment.map(str::to_string),
            counters: None,
        }
    }

    fn opaque(text: &str) -> Match {
        Match::Opaque {
            description: text.into(),
        }
    }

    #[test]
    fn iptables_nft_native_expressions_are_written_as_their_matches() {
        let tcp = Match::L4Proto {
            proto: 6,
            negated: false,
        };
        let port = Match::Ports {
            direction: Direction::Destination,
            ranges: vec![PortRange::single(80)],
            negated: false,
        };
        let r = rule(
            vec![
                tcp.clone(),
                port,
                opaque("tcp flags & 0x6 == 0x02"),
                opaque("meta mark & 0xf00 != 0x200"),
                opaque("limit rate 5/minute burst 7 packets"),
            ],
            Action::Opaque {
                description: "log prefix \"API0|x\" group 1".into(),
            },
            Some("cali:abc"),
        );
        assert_eq!(
            render_iptables("C", &r),
            "-A C -p tcp -m tcp --dport 80 --tcp-flags SYN,RST SYN -m mark ! --mark 0x200/0xf00 -m limit --limit 5/min --limit-burst 7 -m comment --comment \"cali:abc\" -j NFLOG --nflog-prefix \"API0|x\" --nflog-group 1"
        );
        // Flags without a port open their own `-m tcp`; an all-ones mark mask is not printed.
        let r = rule(
            vec![
                tcp,
                opaque("tcp flags & 0x17 == 0x02"),
                opaque("meta mark == 0x1"),
            ],
            Action::None,
            None,
        );
        assert_eq!(
            render_iptables("C", &r),
            "-A C -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m mark --mark 0x1"
        );
    }

    #[test]
    fn what_iptables_cannot_say_is_a_comment_naming_it() {
        let cases = [
            (
                rule(
                    vec![opaque("ct status & 0x20 == 0x20")],
                    Action::Verdict {
                        verdict: Verdict::Accept,
                    },
                    None,
                ),
                "# not expressible in iptables syntax (ct status & 0x20 == 0x20): -A C -j ACCEPT",
            ),
            (
                rule(
                    vec![opaque("?xt match \"u32\" revision 0")],
                    Action::None,
                    None,
                ),
                "# not expressible in iptables syntax (xt match \"u32\" revision 0): -A C",
            ),
            (
                rule(
                    vec![Match::SetLookup {
                        set: "ipset#4".into(),
                        key: vec![Field::Other("dst".into())],
                        negated: false,
                    }],
                    Action::None,
                    None,
                ),
                "# not expressible in iptables syntax (ipset with kernel index 4 (its name could not be read)): -A C",
            ),
            (
                rule(
                    vec![],
                    Action::VerdictMap {
                        set: "service-ips".into(),
                        key: vec![Field::Address(Direction::Destination)],
                    },
                    None,
                ),
                "# not expressible in iptables syntax (ip daddr vmap @service-ips): -A C",
            ),
            (
                rule(
                    vec![Match::Ports {
                        direction: Direction::Destination,
                        ranges: vec![PortRange::single(53)],
                        negated: false,
                    }],
                    Action::None,
                    None,
                ),
                "# not expressible in iptables syntax (a port match without a transport protocol): -A C",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(render_iptables("C", &r), want);
        }
    }

    #[test]
    fn undecoded_xt_blobs_read_in_nft_syntax_as_nft_lists_them() {
        let r = rule(
            vec![opaque("?xt match \"u32\" revision 0")],
            Action::Opaque {
                description: "?xt target \"IDLETIMER\" revision 1".into(),
            },
            None,
        );
        assert_eq!(
            render_nft(&r),
            "xt match \"u32\" revision 0 xt target \"IDLETIMER\" revision 1"
        );
    }

    #[test]
    fn resolved_sets_and_second_comments_keep_their_place() {
        let r = rule(
            vec![
                Match::SetLookup {
                    set: "KUBE-CLUSTER-IP".into(),
                    key: vec![Field::Other("dst".into()), Field::Other("dst".into())],
                    negated: true,
                },
                opaque("--return-nomatch"),
                opaque("-m comment --comment \"Unknown interface\""),
            ],
            Action::Verdict {
                verdict: Verdict::Drop,
            },
            Some("cali:xyz"),
        );
        assert_eq!(
            render_iptables("C", &r),
            "-A C -m set ! --match-set KUBE-CLUSTER-IP dst,dst --return-nomatch -m comment --comment \"cali:xyz\" -m comment --comment \"Unknown interface\" -j DROP"
        );
    }

    #[test]
    fn content_hash_is_stable_and_order_sensitive() {
        assert_eq!(content_hash(["a", "b"]), content_hash(["a", "b"]));
        assert_ne!(content_hash(["a", "b"]), content_hash(["b", "a"]));
        assert_ne!(content_hash(["ab"]), content_hash(["a", "b"]));
    }
}
