//! Decoding of one nftables rule (a NEWRULE message) into a [`Rule`]: the expression list is run
//! through a small model of the register file so that loads (`payload`, `meta`, `ct`, `fib`,
//! `numgen`, `immediate` data) are known when a `cmp`, `range`, `lookup` or `nat` consumes them.
//! Pure and allocation-light: this is the hot path of an 80,000-rule dump.
//!
//! Kernel quirks handled here:
//! - Registers come in two numberings: the legacy 128-bit `NFT_REG_1..4` and the 32-bit
//!   `NFT_REG32_00..15` (8..23) that nft and kube-proxy use. `NFT_REG_N` is the same storage as
//!   `NFT_REG32_{(N-1)*4}`, so both are mapped onto the 32-bit space; register 0 is the verdict.
//! - A concatenation (`ip daddr . meta l4proto . th dport`) is loaded into consecutive 32-bit
//!   registers, each component padded to 4 bytes; a lookup names only the first register.
//! - iptables-nft matches a byte-aligned prefix (`-d 10.42.0.0/24`) by loading fewer bytes
//!   (`payload load 3b`), other prefixes with a `bitwise` mask; an interface wildcard (`-o cilium_+`)
//!   is a `cmp` on the name without its terminating NUL.
//! - `fib ... type` yields the route type as a host-order u32 (RTN_LOCAL = 2).
//!
//! Whatever is not understood becomes [`Match::Opaque`] / [`Action::Opaque`]; an unknown expression
//! also forgets every register so that nothing stale is misread.
//!
//! Long because it decodes every nftables expression netmend understands, with the register
//! tracking that turns expression sequences into matches; one table of cases.

use super::{attr_str_ref, decode_verdict, NFTA_DATA_VALUE, NFTA_DATA_VERDICT};
use crate::model::ruleset::{
    Action, Cidr, Direction, Family, Field, Match, NatRange, PortRange, Rule, Set, Verdict,
};
use crate::observe::netlink::{Attr, Attrs};
use crate::observe::xt::{decode_match, decode_target_with_notes, DecodedMatch};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// `NFTNL_UDATA_RULE_COMMENT`: the TLV type of a native rule comment in the rule's userdata.
const UDATA_RULE_COMMENT: u8 = 0;

/// Number of 32-bit registers, verdict register included (0..=23).
const REGISTERS: usize = 24;

/// What a rule decoder needs from the table around the rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    pub family: Family,
    /// The table's sets (for the number of key components of a lookup).
    pub sets: &'a BTreeMap<String, Set>,
}

/// A decoded rule with the table and chain it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRule<'a> {
    pub table: &'a str,
    pub chain: &'a str,
    pub rule: Rule,
}

/// Decodes a NEWRULE payload (after the 4-byte nfgenmsg). `None` only when the table, chain or
/// handle is missing; malformed expressions become opaque matches.
pub fn decode_rule<'a>(attrs: &'a [u8], ctx: &RuleContext<'_>) -> Option<DecodedRule<'a>> {
    let mut table = None;
    let mut chain = None;
    let mut handle = None;
    let mut expressions = None;
    let mut userdata = None;
    let mut walker = Attrs::new(attrs);
    for attr in walker.by_ref() {
        match attr.kind {
            NFTA_RULE_TABLE => table = Some(attr_str_ref(&attr)),
            NFTA_RULE_CHAIN => chain = Some(attr_str_ref(&attr)),
            NFTA_RULE_HANDLE => handle = attr.u64_be(),
            NFTA_RULE_EXPRESSIONS => expressions = Some(attr.value),
            NFTA_RULE_USERDATA => userdata = Some(attr.value),
            _ => {}
        }
    }
    let mut decoder = RuleDecoder::new(*ctx);
    if let Some(expressions) = expressions {
        let mut list = Attrs::new(expressions);
        for elem in list.by_ref() {
            if elem.kind == NFTA_LIST_ELEM {
                decoder.expression(elem.value);
            }
        }
        if list.malformed() {
            decoder.opaque_match("truncated expression list");
        }
    }
    if walker.malformed() {
        decoder.opaque_match("truncated rule attributes");
    }
    let mut rule = decoder.finish(handle?);
    if let Some(text) = userdata.and_then(userdata_comment) {
        rule.comment = Some(text);
    }
    Some(DecodedRule {
        table: table?,
        chain: chain?,
        rule,
    })
}

/// The comment TLV of a rule's userdata (type 0, NUL-terminated).
fn userdata_comment(mut data: &[u8]) -> Option<String> {
    while data.len() >= 2 {
        let (kind, len) = (data[0], data[1] as usize);
        let value = data.get(2..2 + len)?;
        if kind == UDATA_RULE_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        data = &data[2 + len..];
    }
    None
}

/// Maps a register number of either numbering onto the 32-bit space (0 = verdict).
fn register_index(number: u32) -> Option<usize> {
    match number {
        0 => Some(0),
        1..=4 => Some(8 + (number as usize - 1) * 4),
        8..=23 => Some(number as usize),
        _ => None,
    }
}

/// How many 32-bit registers a value of `len` bytes occupies.
fn register_span(len: usize) -> usize {
    len.div_ceil(4).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L3 {
    V4,
    V6,
}

/// A packet field held in a register.
#[derive(Debug, Clone, PartialEq)]
struct Loaded {
    field: Field,
    /// Bytes loaded.
    len: u8,
    /// For addresses: family and prefix length the loaded bytes stand for.
    address: Option<(L3, u8)>,
    /// A `bitwise` mask applied after the load (host-order u32 of the first 4 mask bytes).
    mask: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
enum Register {
    Unknown,
    Loaded(Loaded),
    Data { bytes: [u8; 16], len: u8 },
}

/// The attributes of one expression, indexed by type for O(1) access.
struct ExprAttrs<'a> {
    values: [Option<Attr<'a>>; 16],
    malformed: bool,
}

impl<'a> ExprAttrs<'a> {
    fn new(data: &'a [u8]) -> ExprAttrs<'a> {
        let mut values: [Option<Attr<'a>>; 16] = [None; 16];
        let mut walker = Attrs::new(data);
        for attr in walker.by_ref() {
            if let Some(slot) = values.get_mut(attr.kind as usize) {
                *slot = Some(attr);
            }
        }
        ExprAttrs {
            values,
            malformed: walker.malformed(),
        }
    }
    fn get(&self, kind: u16) -> Option<&Attr<'a>> {
        self.values.get(kind as usize).and_then(|a| a.as_ref())
    }
    fn u32(&self, kind: u16) -> Option<u32> {
        self.get(kind).and_then(|a| a.u32_be())
    }
    fn u64(&self, kind: u16) -> Option<u64> {
        self.get(kind).and_then(|a| a.u64_be())
    }
    fn str(&self, kind: u16) -> Option<&'a str> {
        self.get(kind).map(attr_str_ref)
    }
    fn register(&self, kind: u16) -> Option<Option<usize>> {
        self.u32(kind).map(register_index)
    }
    /// The `NFTA_DATA_VALUE` inside a nested data attribute.
    fn data_value(&self, kind: u16) -> Option<&'a [u8]> {
        let attr = self.get(kind)?;
        Attrs::new(attr.value)
            .find(|a| a.kind == NFTA_DATA_VALUE)
            .map(|a| a.value)
    }
}

struct RuleDecoder<'c> {
    ctx: RuleContext<'c>,
    registers: [Register; REGISTERS],
    l3: Option<L3>,
    matches: Vec<Match>,
    action: Option<Action>,
    statements: Vec<String>,
    comment: Option<String>,
    counters: Option<(u64, u64)>,
}

impl<'c> RuleDecoder<'c> {
    fn new(ctx: RuleContext<'c>) -> RuleDecoder<'c> {
        let l3 = match ctx.family {
            Family::Ip => Some(L3::V4),
            Family::Ip6 => Some(L3::V6),
            _ => None,
        };
        RuleDecoder {
            ctx,
            registers: std::array::from_fn(|_| Register::Unknown),
            l3,
            matches: Vec::with_capacity(4),
            action: None,
            statements: Vec::new(),
            comment: None,
            counters: None,
        }
    }

    fn finish(mut self, handle: u64) -> Rule {
        let action = match self.action.take() {
            Some(action) => {
                for statement in self.statements.drain(..) {
                    self.matches.push(Match::Opaque {
                        description: statement,
                    });
                }
                action
            }
            None if !self.statements.is_empty() => Action::Opaque {
                description: self.statements.join("; "),
            },
            None => Action::None,
        };
        // Exact capacity: 80,000 rules with spare match slots cost tens of MiB.
        self.matches.shrink_to_fit();
        Rule {
            handle,
            matches: self.matches,
            action,
            comment: self.comment,
            counters: self.counters,
        }
    }

    fn opaque_match(&mut self, description: impl Into<String>) {
        self.matches.push(Match::Opaque {
            description: description.into(),
        });
    }

    fn set_action(&mut self, action: Action) {
        if self.action.is_none() {
            self.action = Some(action);
        } else {
            let text = match &action {
                Action::Opaque { description } => description.clone(),
                other => format!("{other:?}"),
            };
            self.statements.push(text);
        }
    }

    fn forget_registers(&mut self) {
        for register in self.registers.iter_mut() {
            *register = Register::Unknown;
        }
    }

    fn store(&mut self, index: Option<usize>, value: Register, len: usize) {
        let Some(index) = index else {
            return;
        };
        let span = register_span(len);
        for slot in index..(index + span).min(REGISTERS) {
            self.registers[slot] = Register::Unknown;
        }
        if index < REGISTERS {
            self.registers[index] = value;
        }
    }

    fn load(&mut self, index: Option<usize>, field: Field, len: usize, address: Option<(L3, u8)>) {
        self.store(
            index,
            Register::Loaded(Loaded {
                field,
                len: len.min(255) as u8,
                address,
                mask: None,
            }),
            len,
        );
    }

    fn register(&self, index: Option<usize>) -> &Register {
        index
            .and_then(|i| self.registers.get(i))
            .unwrap_or(&Register::Unknown)
    }

    /// `width` bytes of immediate data held at `index`.
    fn register_bytes(&self, index: Option<usize>, width: usize) -> Option<&[u8]> {
        match self.register(index) {
            Register::Data { bytes, len } if *len as usize >= width => Some(&bytes[..width]),
            _ => None,
        }
    }

    fn expression(&mut self, elem: &[u8]) {
        let mut name = None;
        let mut data: &[u8] = &[];
        for attr in Attrs::new(elem) {
            match attr.kind {
                NFTA_EXPR_NAME => name = Some(attr_str_ref(&attr)),
                NFTA_EXPR_DATA => data = attr.value,
                _ => {}
            }
        }
        let Some(name) = name else {
            self.forget_registers();
            self.opaque_match("expression without a name");
            return;
        };
        let attrs = ExprAttrs::new(data);
        if attrs.malformed {
            self.forget_registers();
            self.opaque_match(format!("{name} (truncated)"));
            return;
        }
        match name {
            "payload" => self.payload(&attrs),
            "meta" => self.meta(&attrs),
            "cmp" => self.cmp(&attrs),
            "bitwise" => self.bitwise(&attrs),
            "range" => self.range(&attrs),
            "lookup" => self.lookup(&attrs),
            "immediate" => self.immediate(&attrs),
            "nat" => self.nat(&attrs),
            "masq" => {
                let ports = self.port_range(&attrs, 2, 3);
                self.set_action(Action::Masquerade { ports });
            }
            "redir" => {
                let ports = self.port_range(&attrs, 1, 2);
                self.set_action(Action::Redirect { ports });
            }
            "fib" => self.fib(&attrs),
            "ct" => self.ct(&attrs),
            "numgen" => {
                let dreg = attrs.register(1).flatten();
                self.load(dreg, Field::Numgen, 4, None);
            }
            "hash" => {
                let dreg = attrs.register(2).flatten();
                self.load(dreg, Field::Other("hash".into()), 4, None);
            }
            "rt" | "exthdr" | "socket" | "osf" | "xfrm" => {
                // All of these load into NFTA_*_DREG = 1 (socket: 3).
                let dreg = attrs
                    .register(if name == "socket" { 3 } else { 1 })
                    .flatten();
                self.load(dreg, Field::Other(name.to_string()), 4, None);
            }
            "counter" => {
                self.counters = Some((attrs.u64(2).unwrap_or(0), attrs.u64(1).unwrap_or(0)));
            }
            "match" => self.xt_match(&attrs),
            "target" => self.xt_target(&attrs),
            "dynset" => self.dynset(&attrs),
            "objref" => {
                let name = attrs.str(2).unwrap_or("?");
                self.statements.push(format!("objref {name}"));
            }
            "log" => self.statements.push(log_text(&attrs)),
            "reject" => self.set_action(Action::Opaque {
                description: "reject".into(),
            }),
            "queue" => self.set_action(Action::Verdict {
                verdict: Verdict::Queue,
            }),
            "notrack" => self.statements.push("notrack".into()),
            "limit" => {
                let text = limit_text(&attrs);
                self.opaque_match(text);
            }
            "quota" | "connlimit" => self.opaque_match(name),
            "last" => {}
            other => {
                self.forget_registers();
                self.opaque_match(other);
            }
        }
    }

    fn payload(&mut self, a: &ExprAttrs<'_>) {
        const BASE_NETWORK: u32 = 1;
        const BASE_TRANSPORT: u32 = 2;
        let Some(dreg) = a.register(1) else {
            self.statements.push("payload write".into());
            return;
        };
        let (base, offset, len) = (
            a.u32(2).unwrap_or(u32::MAX),
            a.u32(3).unwrap_or(u32::MAX),
            a.u32(4).unwrap_or(0) as usize,
        );
        let (field, address) = match base {
            BASE_NETWORK => self.network_field(offset, len),
            BASE_TRANSPORT => match (offset, len) {
                (0, 2) => (Field::Port(Direction::Source), None),
                (2, 2) => (Field::Port(Direction::Destination), None),
                // iptables-nft writes `--tcp-flags` as a load of this byte.
                (13, 1) => (Field::Other("tcp flags".into()), None),
                _ => (Field::Other(format!("payload th {offset} {len}")), None),
            },
            _ => (
                Field::Other(format!("payload base {base} {offset} {len}")),
                None,
            ),
        };
        self.load(dreg, field, len, address);
    }

    fn network_field(&self, offset: u32, len: usize) -> (Field, Option<(L3, u8)>) {
        // An arp table's network header is the ARP header: no IP field lives at these offsets.
        let guess_allowed = self.ctx.family != Family::Arp;
        let l3 = self.l3.or(match (offset, len) {
            _ if !guess_allowed => None,
            (12 | 16, 1..=4) | (9, 1) => Some(L3::V4),
            (8 | 24, 1..=16) | (6, 1) => Some(L3::V6),
            _ => None,
        });
        let prefix = (len * 8).min(128) as u8;
        match (l3, offset, len) {
            (Some(L3::V4), 9, 1) | (Some(L3::V6), 6, 1) => (Field::L4Proto, None),
            (Some(L3::V4), 12, 1..=4) => {
                (Field::Address(Direction::Source), Some((L3::V4, prefix)))
            }
            (Some(L3::V4), 16, 1..=4) => (
                Field::Address(Direction::Destination),
                Some((L3::V4, prefix)),
            ),
            (Some(L3::V6), 8, 1..=16) => {
                (Field::Address(Direction::Source), Some((L3::V6, prefix)))
            }
            (Some(L3::V6), 24, 1..=16) => (
                Field::Address(Direction::Destination),
                Some((L3::V6, prefix)),
            ),
            _ => (Field::Other(format!("payload nh {offset} {len}")), None),
        }
    }

    fn meta(&mut self, a: &ExprAttrs<'_>) {
        let key = a.u32(2).unwrap_or(u32::MAX);
        let Some(dreg) = a.register(1) else {
            self.statements
                .push(format!("meta {} set", meta_key_name(key)));
            return;
        };
        let (field, len) = match key {
            16 => (Field::L4Proto, 1),
            6 => (Field::Interface(Direction::Source), 16),
            7 => (Field::Interface(Direction::Destination), 16),
            3 => (Field::Mark, 4),
            _ => (Field::Other(format!("meta {}", meta_key_name(key))), 4),
        };
        self.load(dreg, field, len, None);
    }

    fn ct(&mut self, a: &ExprAttrs<'_>) {
        let key = a.u32(2).unwrap_or(u32::MAX);
        let Some(dreg) = a.register(1) else {
            self.statements.push(format!("ct {} set", ct_key_name(key)));
            return;
        };
        let field = match key {
            0 => Field::CtState,
            _ => Field::Other(format!("ct {}", ct_key_name(key))),
        };
        self.load(dreg, field, 4, None);
    }

    fn fib(&mut self, a: &ExprAttrs<'_>) {
        const RESULT_ADDRTYPE: u32 = 3;
        const FLAG_SADDR: u32 = 1;
        let dreg = a.register(1).flatten();
        let result = a.u32(2).unwrap_or(0);
        let flags = a.u32(3).unwrap_or(0);
        let direction = if flags & FLAG_SADDR != 0 {
            Direction::Source
        } else {
            Direction::Destination
        };
        let field = if result == RESULT_ADDRTYPE {
            Field::FibAddrType(direction)
        } else {
            Field::Other(format!("fib result {result} flags {flags:#x}"))
        };
        self.load(dreg, field, 4, None);
    }

    fn bitwise(&mut self, a: &ExprAttrs<'_>) {
        let sreg = a.register(1).flatten();
        let dreg = a.register(2).flatten();
        let op = a.u32(6).unwrap_or(0);
        let mask = a.data_value(4);
        let xor = a.data_value(5);
        let source = self.register(sreg).clone();
        let result = match (source, op, mask) {
            (Register::Loaded(mut loaded), 0, Some(mask)) => {
                let xor_is_zero = xor.is_none_or(|x| x.iter().all(|&b| b == 0));
                match loaded.address {
                    Some((l3, prefix)) if xor_is_zero => {
                        loaded.address = Some((l3, prefix.min(mask_prefix(mask))));
                    }
                    _ => {
                        let mut word = [0u8; 4];
                        let n = mask.len().min(4);
                        word[..n].copy_from_slice(&mask[..n]);
                        loaded.mask = Some(u32::from_ne_bytes(word));
                        if !xor_is_zero {
                            loaded.field =
                                Field::Other(format!("{} (rewritten)", field_text(&loaded.field)));
                        }
                    }
                }
                Register::Loaded(loaded)
            }
            _ => Register::Unknown,
        };
        let len = a.u32(3).unwrap_or(4) as usize;
        self.store(dreg, result, len);
    }

    fn cmp(&mut self, a: &ExprAttrs<'_>) {
        const OP_EQ: u32 = 0;
        const OP_NEQ: u32 = 1;
        let sreg = a.register(1).flatten();
        let op = a.u32(2).unwrap_or(u32::MAX);
        let Some(data) = a.data_value(3) else {
            self.opaque_match("cmp without data");
            return;
        };
        let negated = op == OP_NEQ;
        let eq_or_neq = op == OP_EQ || op == OP_NEQ;
        let Register::Loaded(loaded) = self.register(sreg) else {
            self.opaque_match(format!("cmp {} {}", cmp_op_text(op), hex(data)));
            return;
        };
        let decoded = match (&loaded.field, loaded.mask) {
            (Field::L4Proto, None) if eq_or_neq && !data.is_empty() => Some(Match::L4Proto {
                proto: data[0],
                negated,
            }),
            (Field::Address(direction), None) if eq_or_neq => loaded
                .address
                .and_then(|(l3, prefix)| address_match(*direction, l3, prefix, data, negated)),
            (Field::Port(direction), None) if data.len() == 2 => {
                let port = u16::from_be_bytes([data[0], data[1]]);
                port_cmp(op, port).map(|(range, negated)| Match::Ports {
                    direction: *direction,
                    ranges: vec![range],
                    negated,
                })
            }
            (Field::Interface(direction), None) if eq_or_neq => Some(Match::Interface {
                direction: *direction,
                name: interface_name(data),
                negated,
            }),
            (Field::FibAddrType(direction), None) if eq_or_neq && data.len() >= 4 => {
                let value = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                (value < 16).then(|| Match::AddrType {
                    direction: *direction,
                    types: 1 << value,
                    negated,
                })
            }
            _ => None,
        };
        if let Some(decoded) = decoded {
            self.matches.push(decoded);
            return;
        }
        let description = self.cmp_description(loaded, op, data);
        if let Some(l3) = l3_hint(loaded, op, data) {
            self.l3 = Some(l3);
        }
        self.opaque_match(description);
    }

    fn cmp_description(&self, loaded: &Loaded, op: u32, data: &[u8]) -> String {
        let op_text = cmp_op_text(op);
        match (&loaded.field, loaded.mask) {
            (Field::CtState, Some(mask)) if data.iter().all(|&b| b == 0) && op == 1 => {
                format!("ct state {}", ct_state_names(mask))
            }
            (Field::CtState, Some(mask)) if data.iter().all(|&b| b == 0) && op == 0 => {
                format!("ct state != {}", ct_state_names(mask))
            }
            (Field::Other(name), _) if name == "meta nfproto" && data.len() == 1 => {
                let family = match data[0] {
                    2 => "ipv4".to_string(),
                    10 => "ipv6".to_string(),
                    n => n.to_string(),
                };
                format!("meta nfproto {op_text} {family}")
            }
            (field, Some(mask)) => {
                let value = host_word_text(field, data);
                format!("{} & {mask:#x} {op_text} {value}", field_text(field))
            }
            (field, None) => {
                let value = host_word_text(field, data);
                format!("{} {op_text} {value}", field_text(field))
            }
        }
    }

    fn range(&mut self, a: &ExprAttrs<'_>) {
        let sreg = a.register(1).flatten();
        let negated = a.u32(2) == Some(1);
        let (Some(from), Some(to)) = (a.data_value(3), a.data_value(4)) else {
            self.opaque_match("range");
            return;
        };
        if let Register::Loaded(Loaded {
            field: Field::Port(direction),
            mask: None,
            ..
        }) = self.register(sreg)
        {
            if from.len() == 2 && to.len() == 2 {
                let range = PortRange {
                    first: u16::from_be_bytes([from[0], from[1]]),
                    last: u16::from_be_bytes([to[0], to[1]]),
                };
                let direction = *direction;
                self.matches.push(Match::Ports {
                    direction,
                    ranges: vec![range],
                    negated,
                });
                return;
            }
        }
        let field = match self.register(sreg) {
            Register::Loaded(loaded) => field_text(&loaded.field),
            _ => "?".into(),
        };
        let bang = if negated { "!= " } else { "" };
        self.opaque_match(format!("{field} {bang}{}-{}", hex(from), hex(to)));
    }

    /// The fields of a (possibly concatenated) key starting at `sreg`.
    fn key_fields(&self, sreg: Option<usize>, set: &str) -> Vec<Field> {
        let components = self.ctx.sets.get(set).map(|s| s.key_types.len());
        let mut fields = Vec::with_capacity(components.unwrap_or(1));
        let Some(mut index) = sreg else {
            return fields;
        };
        while index < REGISTERS && components.is_none_or(|n| fields.len() < n) {
            match &self.registers[index] {
                Register::Loaded(loaded) => {
                    fields.push(loaded.field.clone());
                    index += register_span(loaded.len as usize);
                }
                Register::Data { len, .. } => {
                    fields.push(Field::Other("constant".into()));
                    index += register_span(*len as usize);
                }
                Register::Unknown => {
                    if components.is_some() {
                        fields.push(Field::Other("unknown".into()));
                        index += 1;
                    } else {
                        break;
                    }
                }
            }
            if components.is_none() && fields.len() == 1 {
                break;
            }
        }
        fields
    }

    fn lookup(&mut self, a: &ExprAttrs<'_>) {
        const LOOKUP_F_INV: u32 = 1;
        let set = match (a.str(1), a.u32(4)) {
            (Some(name), _) => name.to_string(),
            (None, Some(id)) => format!("set id {id}"),
            (None, None) => {
                self.opaque_match("lookup without a set");
                return;
            }
        };
        let key = self.key_fields(a.register(2).flatten(), &set);
        match a.register(3) {
            Some(Some(0)) => self.set_action(Action::VerdictMap { set, key }),
            Some(dreg) => {
                let text = format!("{} map @{set}", keys_text(&key));
                self.load(dreg, Field::Other(text), 16, None);
            }
            None => self.matches.push(Match::SetLookup {
                set,
                key,
                negated: a.u32(5).unwrap_or(0) & LOOKUP_F_INV != 0,
            }),
        }
    }

    fn immediate(&mut self, a: &ExprAttrs<'_>) {
        let dreg = a.register(1).flatten();
        let Some(data) = a.get(2) else {
            self.opaque_match("immediate without data");
            return;
        };
        for inner in Attrs::new(data.value) {
            match inner.kind {
                NFTA_DATA_VERDICT => match decode_verdict(inner.value) {
                    Some(verdict) if dreg == Some(0) => {
                        self.set_action(Action::Verdict { verdict })
                    }
                    _ => self.opaque_match("immediate verdict"),
                },
                NFTA_DATA_VALUE => {
                    let mut bytes = [0u8; 16];
                    let len = inner.value.len().min(16);
                    bytes[..len].copy_from_slice(&inner.value[..len]);
                    self.store(
                        dreg,
                        Register::Data {
                            bytes,
                            len: len as u8,
                        },
                        len,
                    );
                }
                _ => {}
            }
        }
    }

    fn port_range(&self, a: &ExprAttrs<'_>, min_kind: u16, max_kind: u16) -> Option<PortRange> {
        let min = self.register_bytes(a.register(min_kind)?, 2)?;
        let first = u16::from_be_bytes([min[0], min[1]]);
        let last = a
            .register(max_kind)
            .and_then(|r| self.register_bytes(r, 2))
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(first);
        Some(PortRange { first, last })
    }

    fn nat(&mut self, a: &ExprAttrs<'_>) {
        let is_dnat = a.u32(1) == Some(1);
        let kind = if is_dnat { "dnat" } else { "snat" };
        let width = if a.u32(2) == Some(10) { 16 } else { 4 };
        let mut addresses = None;
        if let Some(min_reg) = a.register(3) {
            let min = self.register_bytes(min_reg, width).and_then(ip_from);
            let max = match a.register(4) {
                Some(r) => self.register_bytes(r, width).and_then(ip_from),
                None => min,
            };
            match (min, max) {
                (Some(min), Some(max)) => addresses = Some((min, max)),
                _ => {
                    let source = match self.register(min_reg) {
                        Register::Loaded(loaded) => field_text(&loaded.field),
                        _ => "a register".into(),
                    };
                    self.set_action(Action::Opaque {
                        description: format!("{kind} to {source}"),
                    });
                    return;
                }
            }
        }
        let ports = self.port_range(a, 5, 6);
        let range = NatRange { addresses, ports };
        self.set_action(if is_dnat {
            Action::Dnat { range }
        } else {
            Action::Snat { range }
        });
    }

    fn xt_match(&mut self, a: &ExprAttrs<'_>) {
        let name = a.str(1).unwrap_or("?");
        let revision = a.u32(2).unwrap_or(0).min(255) as u8;
        let info = a.get(3).map(|i| i.value).unwrap_or(&[]);
        match decode_match(name, revision, info, self.ctx.family) {
            DecodedMatch::Conditions(conditions) => self.matches.extend(conditions),
            DecodedMatch::Comment(text) => {
                if self.comment.is_none() {
                    self.comment = Some(text);
                } else {
                    // A second comment stays where it is, as iptables-save prints it.
                    self.matches.push(crate::observe::xt::extra_comment(&text));
                }
            }
        }
    }

    fn xt_target(&mut self, a: &ExprAttrs<'_>) {
        let name = a.str(1).unwrap_or("?");
        let revision = a.u32(2).unwrap_or(0).min(255) as u8;
        let info = a.get(3).map(|i| i.value).unwrap_or(&[]);
        let (action, note) = decode_target_with_notes(name, revision, info, self.ctx.family);
        self.matches.extend(note);
        self.set_action(action);
    }

    fn dynset(&mut self, a: &ExprAttrs<'_>) {
        let set = a.str(1).unwrap_or("?");
        let op = match a.u32(3) {
            Some(0) => "add",
            Some(1) => "update",
            Some(2) => "delete",
            _ => "dynset",
        };
        let key = self.key_fields(a.register(4).flatten(), set);
        self.statements
            .push(format!("{op} @{set} {{ {} }}", keys_text(&key)));
    }
}

/// `log prefix "x" group 1 snaplen 64 queue-threshold 2 level info` (as nft lists it) from NFTA_LOG_GROUP (1, be16),
/// _PREFIX (2), _SNAPLEN (3), _QTHRESHOLD (4, be16), _LEVEL (5).
fn log_text(a: &ExprAttrs<'_>) -> String {
    let mut text = String::from("log");
    if let Some(prefix) = a.str(2) {
        let _ = write!(text, " prefix \"{}\"", prefix.replace('"', "\\\""));
    }
    let be16 = |kind: u16| {
        a.get(kind)
            .and_then(|attr| attr.value.get(..2))
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    if let Some(group) = be16(1) {
        let _ = write!(text, " group {group}");
    }
    if let Some(snaplen) = a.u32(3) {
        let _ = write!(text, " snaplen {snaplen}");
    }
    if let Some(threshold) = be16(4) {
        let _ = write!(text, " queue-threshold {threshold}");
    }
    // Level 4 (warn) is the default nft does not print.
    const LEVELS: [&str; 9] = [
        "emerg", "alert", "crit", "err", "warn", "notice", "info", "debug", "audit",
    ];
    match a.u32(5) {
        None | Some(4) => {}
        Some(level) => match LEVELS.get(level as usize) {
            Some(name) => {
                let _ = write!(text, " level {name}");
            }
            None => {
                let _ = write!(text, " level {level}");
            }
        },
    }
    text
}

/// `limit rate [over] 5/minute burst 7 packets` from NFTA_LIMIT_RATE (1), _UNIT (2, seconds),
/// _BURST (3), _TYPE (4: 0 packets, 1 bytes) and _FLAGS (5: 1 inverts).
fn limit_text(a: &ExprAttrs<'_>) -> String {
    let (Some(rate), Some(unit)) = (a.u64(1), a.u64(2)) else {
        return "limit".into();
    };
    let unit = match unit {
        1 => "second".to_string(),
        60 => "minute".to_string(),
        3600 => "hour".to_string(),
        86400 => "day".to_string(),
        604800 => "week".to_string(),
        other => format!("{other} seconds"),
    };
    let over = if a.u32(5).unwrap_or(0) & 1 != 0 {
        "over "
    } else {
        ""
    };
    let kind = if a.u32(4) == Some(1) {
        "bytes"
    } else {
        "packets"
    };
    format!(
        "limit rate {over}{rate}/{unit} burst {} {kind}",
        a.u32(3).unwrap_or(0)
    )
}

/// `meta nfproto ipv4` / `meta protocol ip` tell which family later payload loads of an inet
/// table read.
fn l3_hint(loaded: &Loaded, op: u32, data: &[u8]) -> Option<L3> {
    if op != 0 {
        return None;
    }
    match (&loaded.field, data) {
        (Field::Other(name), [2, ..]) if name == "meta nfproto" => Some(L3::V4),
        (Field::Other(name), [10, ..]) if name == "meta nfproto" => Some(L3::V6),
        (Field::Other(name), [0x08, 0x00, ..]) if name == "meta protocol" => Some(L3::V4),
        (Field::Other(name), [0x86, 0xdd, ..]) if name == "meta protocol" => Some(L3::V6),
        _ => None,
    }
}

fn address_match(
    direction: Direction,
    l3: L3,
    prefix: u8,
    data: &[u8],
    negated: bool,
) -> Option<Match> {
    let addr = match l3 {
        L3::V4 => {
            let mut bytes = [0u8; 4];
            let n = data.len().min(4);
            bytes[..n].copy_from_slice(&data[..n]);
            IpAddr::V4(Ipv4Addr::from(bytes))
        }
        L3::V6 => {
            let mut bytes = [0u8; 16];
            let n = data.len().min(16);
            bytes[..n].copy_from_slice(&data[..n]);
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    Some(Match::Address {
        direction,
        cidr: Cidr { addr, prefix },
        negated,
    })
}

/// A port comparison as an inclusive range (and negation) where it is one.
fn port_cmp(op: u32, port: u16) -> Option<(PortRange, bool)> {
    Some(match op {
        0 => (PortRange::single(port), false),
        1 => (PortRange::single(port), true),
        2 if port > 0 => (
            PortRange {
                first: 0,
                last: port - 1,
            },
            false,
        ),
        3 => (
            PortRange {
                first: 0,
                last: port,
            },
            false,
        ),
        4 if port < u16::MAX => (
            PortRange {
                first: port + 1,
                last: u16::MAX,
            },
            false,
        ),
        5 => (
            PortRange {
                first: port,
                last: u16::MAX,
            },
            false,
        ),
        _ => return None,
    })
}

/// An interface name compared without its NUL is a prefix match: shown with iptables' `+`.
fn interface_name(data: &[u8]) -> String {
    match data.iter().position(|&b| b == 0) {
        Some(end) => String::from_utf8_lossy(&data[..end]).into_owned(),
        None => format!("{}+", String::from_utf8_lossy(data)),
    }
}

/// Length of the leading run of one bits of a mask.
fn mask_prefix(mask: &[u8]) -> u8 {
    let mut prefix = 0u32;
    for &byte in mask {
        prefix += byte.leading_ones();
        if byte != 0xff {
            break;
        }
    }
    prefix.min(128) as u8
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// Marks and ct values are host-order words: shown as numbers; anything else as bytes.
fn host_word_text(field: &Field, data: &[u8]) -> String {
    let word = matches!(field, Field::Mark | Field::CtState)
        || matches!(field, Field::Other(name) if name.starts_with("ct ") || name.starts_with("meta "));
    match <[u8; 4]>::try_from(data) {
        Ok(bytes) if word => format!("{:#x}", u32::from_ne_bytes(bytes)),
        _ => hex(data),
    }
}

fn hex(data: &[u8]) -> String {
    let mut text = String::with_capacity(2 + data.len() * 2);
    text.push_str("0x");
    for byte in data {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn cmp_op_text(op: u32) -> &'static str {
    match op {
        0 => "==",
        1 => "!=",
        2 => "<",
        3 => "<=",
        4 => ">",
        5 => ">=",
        _ => "?",
    }
}

fn meta_key_name(key: u32) -> String {
    let name = match key {
        0 => "length",
        1 => "protocol",
        2 => "priority",
        3 => "mark",
        4 => "iif",
        5 => "oif",
        6 => "iifname",
        7 => "oifname",
        8 => "iiftype",
        9 => "oiftype",
        10 => "skuid",
        11 => "skgid",
        12 => "nftrace",
        15 => "nfproto",
        16 => "l4proto",
        19 => "pkttype",
        _ => return format!("key {key}"),
    };
    name.to_string()
}

fn ct_key_name(key: u32) -> String {
    let name = match key {
        0 => "state",
        1 => "direction",
        2 => "status",
        3 => "mark",
        7 => "expiration",
        8 => "helper",
        9 => "l3protocol",
        10 => "saddr",
        11 => "daddr",
        12 => "protocol",
        13 => "proto-src",
        14 => "proto-dst",
        _ => return format!("key {key}"),
    };
    name.to_string()
}

fn ct_state_names(mask: u32) -> String {
    const NAMES: [(u32, &str); 5] = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        format!("{mask:#x}")
    } else {
        names.join(",")
    }
}

/// How people write a field in nft syntax (shared with the evidence renderer).
pub use crate::model::render::field_text;

fn keys_text(key: &[Field]) -> String {
    key.iter().map(field_text).collect::<Vec<_>>().join(" . ")
}
