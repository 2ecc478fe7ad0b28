//! The nftables writer: deletes rules, flushes and deletes chains in ONE atomic nf_tables batch
//! (BATCH_BEGIN ... BATCH_END: the kernel commits all of it or none of it), over raw netlink.
//!
//! Kernel behaviour relied on, measured on this project's kernels:
//! - `NFNL_BATCH_GENID` in BATCH_BEGIN makes the kernel refuse the whole batch with ERESTART when
//!   the generation moved since the ruleset was read: a decision made on a stale view never applies.
//!   That refusal is answered on the BATCH_BEGIN message itself.
//! - Deleting a chain that a rule still jumps to fails with EBUSY. Callers put the DeleteRule ops
//!   of the referencing rules first in the same batch; the kernel resolves the batch in order.
//! - A flush is a DELRULE naming only table and chain.
//! - The kernel keeps processing a failed batch to report every error, then aborts it; the first
//!   failing op (by sequence number) is the one reported.
//! - Once the batch is sent, a missing answer (ack timeout, a receive error) or a malformed one
//!   says nothing about the commit: the batch may have applied. That is
//!   [`NftWriteError::CommitUnknown`], never "nothing applied"; the caller re-reads to settle it.
//! - NEWRULE with NLM_F_REPLACE and a handle swaps one rule in place (same handle position). A rule
//!   with an x_tables compat match must carry NFTA_RULE_COMPAT (its layer-4 protocol) or
//!   `xt_multiport`'s checkentry refuses it; a rule dump does not return that attribute.
//!
//! [`prepare_narrow`] reads one rule written by iptables-nft (GETRULE by handle) and rewrites the
//! port list of its `multiport` compat match, keeping every other expression and the comment
//! (rule userdata) byte for byte: the pod's remaining host ports, in a rule otherwise identical.
//!
//! One file on purpose: the batch encoder, the generation guard, the acknowledgement reader and the
//! in-place rewrite of a narrowed rule are one netlink write protocol sharing its message helpers.

use crate::model::ruleset::{Family, PortRange};
use crate::observe::netlink::{
    errno_name, error_code, split_messages, Attrs, MessageBuilder, NetlinkError, NetlinkSocket,
    NLA_F_NESTED, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST,
};
use std::fmt;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_BATCH_GENID: u16 = 1;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NLM_F_REPLACE: u16 = 0x100;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_COMPAT: u16 = 5;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_RULE_COMPAT_PROTO: u16 = 1;
const NFTA_RULE_COMPAT_FLAGS: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_REV: u16 = 2;
const NFTA_MATCH_INFO: u16 = 3;
/// `XT_MULTIPORT_DESTINATION`.
const MULTIPORT_DESTINATION: u8 = 1;
const MULTIPORT_SLOTS: usize = 15;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
/// How long to wait for the acknowledgements of a batch.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn set_receive_timeout(socket: &NetlinkSocket, timeout: std::time::Duration) {
    // Failure only loses the timeout.
    let _ = crate::sys::socket::set_receive_timeout(std::os::fd::AsFd::as_fd(socket), timeout);
}

fn is_timeout(error: &NetlinkError) -> bool {
    matches!(error.errno(), Some(libc::EAGAIN))
}

/// The errno nf_tables answers a batch whose NFNL_BATCH_GENID is not the current generation.
const ERESTART: i32 = 85;

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftOp {
    DeleteRule {
        family: Family,
        table: String,
        chain: String,
        handle: u64,
    },
    /// Deletes every rule of the chain, keeping the chain.
    FlushChain {
        family: Family,
        table: String,
        chain: String,
    },
    /// Deletes an (empty, unreferenced) chain.
    DeleteChain {
        family: Family,
        table: String,
        chain: String,
    },
    /// Replaces the rule at `handle` by `rule`.
    ReplaceRule {
        family: Family,
        table: String,
        chain: String,
        handle: u64,
        rule: Box<RuleBody>,
    },
}

/// The content of a rule to write: its NFTA_RULE_EXPRESSIONS content, compat protocol and
/// userdata (the comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleBody {
    pub expressions: Vec<u8>,
    pub compat_proto: Option<u32>,
    pub userdata: Option<Vec<u8>>,
}

impl fmt::Display for NftOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftOp::DeleteRule {
                family,
                table,
                chain,
                handle,
            } => write!(f, "delete rule {family}/{table}/{chain} handle {handle}"),
            NftOp::FlushChain {
                family,
                table,
                chain,
            } => write!(f, "flush chain {family}/{table}/{chain}"),
            NftOp::DeleteChain {
                family,
                table,
                chain,
            } => write!(f, "delete chain {family}/{table}/{chain}"),
            NftOp::ReplaceRule {
                family,
                table,
                chain,
                handle,
                ..
            } => write!(f, "replace rule {family}/{table}/{chain} handle {handle}"),
        }
    }
}

/// Why a batch did not apply: nothing was changed, except for [`NftWriteError::CommitUnknown`].
#[derive(Debug, thiserror::Error)]
pub enum NftWriteError {
    #[error("nothing applied: the nftables ruleset changed since it was read (expected generation {expected}); re-read and decide again")]
    RulesetChanged { expected: u32 },
    #[error("nothing applied: failed to {op}: {}", errno_name(*.errno))]
    OpRefused { op: NftOp, errno: i32 },
    #[error("nothing applied: writing nftables needs CAP_NET_ADMIN ({what} was refused)")]
    PermissionDenied { what: String },
    #[error("nothing applied: the kernel refused the batch itself: {}", errno_name(*.errno))]
    BatchRefused { errno: i32 },
    #[error("nftables batch: {0}")]
    Netlink(#[from] NetlinkError),
    /// The batch was sent; its acknowledgements did not come or could not be read.
    #[error("nftables batch sent but whether it committed is unknown: {detail}")]
    CommitUnknown { detail: String },
}

impl NftWriteError {
    /// True when the batch was refused because the ruleset moved (the caller's precondition).
    pub fn is_precondition_moved(&self) -> bool {
        matches!(self, NftWriteError::RulesetChanged { .. })
    }

    /// True when the batch was sent and its commit is unknown.
    pub fn is_commit_unknown(&self) -> bool {
        matches!(self, NftWriteError::CommitUnknown { .. })
    }
}

/// Where the acknowledgements of a sent batch come from: the netlink socket, or a scripted
/// source in tests. Each call returns the bytes of one receive.
pub trait AckSource {
    fn receive(&mut self) -> Result<Vec<u8>, NetlinkError>;
}

impl AckSource for NetlinkSocket {
    fn receive(&mut self) -> Result<Vec<u8>, NetlinkError> {
        let len = self.recv("read batch acknowledgements")?;
        Ok(self.received(len).to_vec())
    }
}

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let res = res_id.to_be_bytes();
    [family, 0, res[0], res[1]]
}

fn op_message(op: &NftOp, seq: u32) -> Vec<u8> {
    let kind = |msg: u16| (NFNL_SUBSYS_NFTABLES << 8) | msg;
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    match op {
        NftOp::DeleteRule {
            family,
            table,
            chain,
            handle,
        } => MessageBuilder::new(kind(NFT_MSG_DELRULE), flags, seq)
            .raw(&nfgenmsg(family.nfproto(), 0))
            .attr_str(NFTA_RULE_TABLE, table)
            .attr_str(NFTA_RULE_CHAIN, chain)
            .attr_u64_be(NFTA_RULE_HANDLE, *handle)
            .finish(),
        NftOp::FlushChain {
            family,
            table,
            chain,
        } => MessageBuilder::new(kind(NFT_MSG_DELRULE), flags, seq)
            .raw(&nfgenmsg(family.nfproto(), 0))
            .attr_str(NFTA_RULE_TABLE, table)
            .attr_str(NFTA_RULE_CHAIN, chain)
            .finish(),
        NftOp::DeleteChain {
            family,
            table,
            chain,
        } => MessageBuilder::new(kind(NFT_MSG_DELCHAIN), flags, seq)
            .raw(&nfgenmsg(family.nfproto(), 0))
            .attr_str(NFTA_CHAIN_TABLE, table)
            .attr_str(NFTA_CHAIN_NAME, chain)
            .finish(),
        NftOp::ReplaceRule {
            family,
            table,
            chain,
            handle,
            rule,
        } => {
            let RuleBody {
                expressions,
                compat_proto,
                userdata,
            } = rule.as_ref();
            let mut m = MessageBuilder::new(kind(NFT_MSG_NEWRULE), flags | NLM_F_REPLACE, seq)
                .raw(&nfgenmsg(family.nfproto(), 0))
                .attr_str(NFTA_RULE_TABLE, table)
                .attr_str(NFTA_RULE_CHAIN, chain)
                .attr_u64_be(NFTA_RULE_HANDLE, *handle)
                .begin_nested(NFTA_RULE_EXPRESSIONS)
                .raw(expressions)
                .end_nested();
            if let Some(proto) = compat_proto {
                m = m
                    .begin_nested(NFTA_RULE_COMPAT)
                    .attr_u32_be(NFTA_RULE_COMPAT_PROTO, *proto)
                    .attr_u32_be(NFTA_RULE_COMPAT_FLAGS, 0)
                    .end_nested();
            }
            if let Some(data) = userdata {
                m = m.attr(NFTA_RULE_USERDATA, data);
            }
            m.finish()
        }
    }
}

/// Why a rule cannot be narrowed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NarrowError {
    #[error("nothing applied: reading rule {family}/{table}/{chain} handle {handle}: {source}")]
    Read {
        family: Family,
        table: String,
        chain: String,
        handle: u64,
        source: NetlinkError,
    },
    #[error("nothing applied: rule {chain} handle {handle} {reason}")]
    Shape {
        chain: String,
        handle: u64,
        reason: String,
    },
}

/// One netlink attribute, padded.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len + 3);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

/// The port ranges of an `xt_multiport` (rev 0) or `xt_multiport_v1` (rev 1) blob, when it
/// matches destination ports without inversion.
pub fn multiport_ranges(rev: u32, info: &[u8]) -> Option<Vec<PortRange>> {
    let (flags, count) = (*info.first()?, usize::from(*info.get(1)?));
    if flags != MULTIPORT_DESTINATION || count > MULTIPORT_SLOTS {
        return None;
    }
    let port = |i: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(
            info.get(2 + 2 * i..4 + 2 * i)?.try_into().ok()?,
        ))
    };
    let mut out = Vec::new();
    match rev {
        0 => {
            for i in 0..count {
                out.push(PortRange::single(port(i)?));
            }
        }
        1 => {
            let pflag = |i: usize| info.get(32 + i).copied();
            if info.get(47).copied()? != 0 {
                return None;
            }
            let mut i = 0;
            while i < count {
                if pflag(i)? != 0 {
                    out.push(PortRange {
                        first: port(i)?,
                        last: port(i + 1)?,
                    });
                    i += 2;
                } else {
                    out.push(PortRange::single(port(i)?));
                    i += 1;
                }
            }
        }
        _ => return None,
    }
    Some(out)
}

/// A multiport blob of `len` bytes (the kernel's padded size) for destination `ports`.
pub fn multiport_blob(rev: u32, len: usize, ports: &[PortRange]) -> Option<Vec<u8>> {
    let mut slots: Vec<(u16, u8)> = Vec::new();
    for r in ports {
        if r.first == r.last {
            slots.push((r.first, 0));
        } else if rev == 1 {
            slots.push((r.first, 1));
            slots.push((r.last, 0));
        } else {
            return None;
        }
    }
    if slots.is_empty() || slots.len() > MULTIPORT_SLOTS {
        return None;
    }
    let mut out = vec![0u8; len.max(if rev == 1 { 48 } else { 32 })];
    out[0] = MULTIPORT_DESTINATION;
    out[1] = slots.len() as u8;
    for (i, (port, pflag)) in slots.iter().enumerate() {
        out[2 + 2 * i..4 + 2 * i].copy_from_slice(&port.to_ne_bytes());
        if rev == 1 {
            out[32 + i] = *pflag;
        }
    }
    Some(out)
}

/// Rewrites the expressions of a rule (the content of its NFTA_RULE_EXPRESSIONS) so that its one
/// destination `multiport` match lists `keep` instead of `expected`. Pure.
pub fn narrow_expressions(
    expressions: &[u8],
    expected: &[PortRange],
    keep: &[PortRange],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expressions.len());
    let mut rewritten = 0;
    for elem in Attrs::new(expressions) {
        let mut name = "";
        let mut data: Option<&[u8]> = None;
        for a in elem.nested_attrs() {
            match a.kind {
                NFTA_EXPR_NAME => name = a.str(),
                NFTA_EXPR_DATA => data = Some(a.value),
                _ => {}
            }
        }
        let multiport = name == "match"
            && data.is_some_and(|d| {
                Attrs::new(d).any(|a| a.kind == NFTA_MATCH_NAME && a.str() == "multiport")
            });
        if !multiport {
            out.extend(nla(elem.kind | NLA_F_NESTED, elem.value));
            continue;
        }
        let data = data.unwrap_or_default();
        let rev = Attrs::new(data)
            .find(|a| a.kind == NFTA_MATCH_REV)
            .and_then(|a| a.u32_be())
            .ok_or("has a multiport match without a revision")?;
        let info = Attrs::new(data)
            .find(|a| a.kind == NFTA_MATCH_INFO)
            .map(|a| a.value)
            .ok_or("has a multiport match without its data")?;
        let current = multiport_ranges(rev, info)
            .ok_or("has a multiport match that is not a plain destination-port list")?;
        if current != expected {
            return Err(format!(
                "lists ports {} now, not {} as decided",
                ports_text(&current),
                ports_text(expected)
            ));
        }
        let blob = multiport_blob(rev, info.len(), keep)
            .ok_or("cannot hold the remaining ports in one multiport match")?;
        let mut match_data = Vec::new();
        match_data.extend(nla(NFTA_MATCH_NAME, b"multiport\0"));
        match_data.extend(nla(NFTA_MATCH_REV, &rev.to_be_bytes()));
        match_data.extend(nla(NFTA_MATCH_INFO, &blob));
        let mut expr = nla(NFTA_EXPR_NAME, b"match\0");
        expr.extend(nla(NFTA_EXPR_DATA | NLA_F_NESTED, &match_data));
        out.extend(nla(NFTA_LIST_ELEM | NLA_F_NESTED, &expr));
        rewritten += 1;
    }
    if rewritten != 1 {
        return Err(format!("has {rewritten} multiport matches, not one"));
    }
    Ok(out)
}

fn ports_text(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(PortRange::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads rule `handle` of `chain` and returns the op that replaces it by the same rule with its
/// destination `multiport` list narrowed from `expected` to `keep`. Nothing is written.
pub fn prepare_narrow(
    family: Family,
    table: &str,
    chain: &str,
    handle: u64,
    expected: &[PortRange],
    keep: &[PortRange],
) -> Result<NftOp, NarrowError> {
    let read_error = |source| NarrowError::Read {
        family,
        table: table.to_string(),
        chain: chain.to_string(),
        handle,
        source,
    };
    let shape = |reason: String| NarrowError::Shape {
        chain: chain.to_string(),
        handle,
        reason,
    };
    let mut socket = NetlinkSocket::open(libc::NETLINK_NETFILTER).map_err(read_error)?;
    set_receive_timeout(&socket, ACK_TIMEOUT);
    let seq = socket.next_seq();
    let request = MessageBuilder::new(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
        NLM_F_REQUEST,
        seq,
    )
    .raw(&nfgenmsg(family.nfproto(), 0))
    .attr_str(NFTA_RULE_TABLE, table)
    .attr_str(NFTA_RULE_CHAIN, chain)
    .attr_u64_be(NFTA_RULE_HANDLE, handle)
    .finish();
    socket
        .send(&request, "read the rule to narrow")
        .map_err(read_error)?;
    loop {
        let len = socket.recv("read the rule to narrow").map_err(read_error)?;
        let mut payload: Option<Vec<u8>> = None;
        for msg in split_messages(socket.received(len)) {
            let msg = msg.map_err(|detail| {
                read_error(NetlinkError::Malformed {
                    what: "GETRULE reply".into(),
                    detail,
                })
            })?;
            if msg.seq != seq {
                continue;
            }
            if msg.msg_type == NLMSG_ERROR {
                let errno = -error_code(msg.payload);
                if errno != 0 {
                    return Err(read_error(NetlinkError::Kernel {
                        what: "GETRULE".into(),
                        errno,
                    }));
                }
                continue;
            }
            if msg.msg_type == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
                payload = Some(msg.payload.to_vec());
            }
        }
        let Some(payload) = payload else { continue };
        let attrs = Attrs::new(payload.get(4..).unwrap_or_default());
        let mut expressions: Option<&[u8]> = None;
        let mut userdata: Option<Vec<u8>> = None;
        for a in attrs {
            match a.kind {
                NFTA_RULE_EXPRESSIONS => expressions = Some(a.value),
                NFTA_RULE_USERDATA => userdata = Some(a.value.to_vec()),
                _ => {}
            }
        }
        let expressions = expressions.ok_or_else(|| shape("has no expressions".into()))?;
        let narrowed = narrow_expressions(expressions, expected, keep).map_err(shape)?;
        return Ok(NftOp::ReplaceRule {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            handle,
            rule: Box::new(RuleBody {
                expressions: narrowed,
                compat_proto: Some(libc::IPPROTO_TCP as u32),
                userdata,
            }),
        });
    }
}

/// The bytes of one batch: BEGIN (with the generation when given), the ops, END. Returns the
/// sequence number of BEGIN and of each op.
pub fn build_batch(
    ops: &[NftOp],
    expected_generation: Option<u32>,
    first_seq: u32,
) -> (Vec<u8>, u32, Vec<u32>) {
    let mut seq = first_seq;
    let begin_seq = seq;
    let mut begin = MessageBuilder::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq)
        .raw(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES));
    if let Some(generation) = expected_generation {
        begin = begin.attr_u32_be(NFNL_BATCH_GENID, generation);
    }
    let mut batch = begin.finish();
    let mut op_seqs = Vec::with_capacity(ops.len());
    for op in ops {
        seq = seq.wrapping_add(1);
        op_seqs.push(seq);
        batch.extend_from_slice(&op_message(op, seq));
    }
    seq = seq.wrapping_add(1);
    batch.extend_from_slice(
        &MessageBuilder::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq)
            .raw(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES))
            .finish(),
    );
    (batch, begin_seq, op_seqs)
}

/// Applies `ops` in one atomic batch in the calling thread's network namespace. With
/// `expected_generation`, the kernel refuses the batch if the ruleset changed since that generation
/// ([`NftWriteError::RulesetChanged`]). An empty `ops` does nothing.
pub fn apply_batch(ops: &[NftOp], expected_generation: Option<u32>) -> Result<(), NftWriteError> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut socket = NetlinkSocket::open(libc::NETLINK_NETFILTER)?;
    let first_seq = socket.next_seq();
    let (batch, begin_seq, op_seqs) = build_batch(ops, expected_generation, first_seq);
    for _ in 0..=op_seqs.len() {
        socket.next_seq();
    }
    set_receive_timeout(&socket, ACK_TIMEOUT);
    socket.send(&batch, "send batch")?;

    read_acks(&mut socket, ops, expected_generation, begin_seq, &op_seqs)
}

/// Reads the answers to a sent batch from `source` and says how it ended. Every op asked for an
/// ack; a refused generation is answered once, on BEGIN. A receive error or a malformed answer
/// before every op was answered leaves the commit unknown.
pub fn read_acks(
    source: &mut dyn AckSource,
    ops: &[NftOp],
    expected_generation: Option<u32>,
    begin_seq: u32,
    op_seqs: &[u32],
) -> Result<(), NftWriteError> {
    let mut answered = vec![false; op_seqs.len()];
    let mut first_failure: Option<(usize, i32)> = None;
    while answered.iter().any(|a| !a) {
        let bytes = match source.receive() {
            Ok(bytes) => bytes,
            // The kernel answers every op of a batch; should it ever stop early, the first
            // failure already seen is the answer rather than a hang (a failed op aborts the
            // whole batch, so nothing applied).
            Err(error) if is_timeout(&error) && first_failure.is_some() => break,
            Err(error) => {
                return Err(NftWriteError::CommitUnknown {
                    detail: format!(
                        "{error} ({} of {} ops answered)",
                        answered.iter().filter(|a| **a).count(),
                        answered.len()
                    ),
                })
            }
        };
        for msg in split_messages(&bytes) {
            let msg = match msg {
                Ok(msg) => msg,
                // A failed op already aborts the whole batch: that stays the answer.
                Err(_) if first_failure.is_some() => break,
                Err(detail) => {
                    return Err(NftWriteError::CommitUnknown {
                        detail: format!("malformed acknowledgement: {detail}"),
                    })
                }
            };
            if msg.msg_type != NLMSG_ERROR {
                continue;
            }
            let errno = -error_code(msg.payload);
            // The echoed request header follows the error code; its seq names the message.
            let seq = msg
                .payload
                .get(12..16)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(msg.seq);
            if seq == begin_seq {
                if errno == 0 {
                    continue;
                }
                return Err(match (errno, expected_generation) {
                    (ERESTART, Some(expected)) => NftWriteError::RulesetChanged { expected },
                    (libc::EPERM, _) => NftWriteError::PermissionDenied {
                        what: "the nftables batch".into(),
                    },
                    _ => NftWriteError::BatchRefused { errno },
                });
            }
            let Some(index) = op_seqs.iter().position(|s| *s == seq) else {
                continue;
            };
            answered[index] = true;
            if errno != 0 && first_failure.is_none_or(|(i, _)| index < i) {
                first_failure = Some((index, errno));
            }
        }
    }
    match first_failure {
        None => Ok(()),
        Some((_, libc::EPERM)) => Err(NftWriteError::PermissionDenied {
            what: "the nftables batch".into(),
        }),
        Some((index, errno)) => Err(NftWriteError::OpRefused {
            op: ops[index].clone(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::netlink::Attrs;

    fn ip_nat_chain(chain: &str) -> NftOp {
        NftOp::DeleteChain {
            family: Family::Ip,
            table: "nat".into(),
            chain: chain.into(),
        }
    }

    /// Scripted receives: each item is one receive's bytes or error.
    struct Scripted(std::collections::VecDeque<Result<Vec<u8>, NetlinkError>>);

    impl AckSource for Scripted {
        fn receive(&mut self) -> Result<Vec<u8>, NetlinkError> {
            self.0.pop_front().unwrap_or_else(|| Err(timeout()))
        }
    }

    fn timeout() -> NetlinkError {
        NetlinkError::Io {
            what: "read batch acknowledgements".into(),
            source: std::io::Error::from_raw_os_error(libc::EAGAIN),
        }
    }

    /// The kernel's answer to message `seq`: NLMSG_ERROR with `errno` (0 = ack) and the echoed
    /// request header.
    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut echoed = Vec::new();
        echoed.extend_from_slice(&20u32.to_ne_bytes());
        echoed.extend_from_slice(&((10u16 << 8) | NFT_MSG_DELRULE).to_ne_bytes());
        echoed.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        echoed.extend_from_slice(&seq.to_ne_bytes());
        echoed.extend_from_slice(&0u32.to_ne_bytes());
        MessageBuilder::new(NLMSG_ERROR, 0, seq)
            .raw(&(-errno).to_ne_bytes())
            .raw(&echoed)
            .finish()
    }

    fn two_ops() -> Vec<NftOp> {
        vec![
            NftOp::DeleteRule {
                family: Family::Ip,
                table: "nat".into(),
                chain: "CNI-HOSTPORT-DNAT".into(),
                handle: 9,
            },
            ip_nat_chain("CNI-DN-abc"),
        ]
    }

    fn run(receives: Vec<Result<Vec<u8>, NetlinkError>>) -> Result<(), NftWriteError> {
        let mut source = Scripted(receives.into());
        read_acks(&mut source, &two_ops(), Some(7), 100, &[101, 102])
    }

    #[test]
    fn every_op_acked_is_applied() {
        let mut both = ack(101, 0);
        both.extend(ack(102, 0));
        run(vec![Ok(both)]).unwrap();
        run(vec![Ok(ack(101, 0)), Ok(ack(102, 0))]).unwrap();
    }

    #[test]
    fn a_lost_or_garbled_ack_after_sending_is_unknown_not_nothing_applied() {
        // One op answered, then the acknowledgements stop: the batch may have committed.
        let err = run(vec![Ok(ack(101, 0))]).unwrap_err();
        assert!(err.is_commit_unknown(), "{err}");
        assert!(err.to_string().contains("1 of 2 ops answered"), "{err}");
        assert!(!err.to_string().contains("nothing applied"), "{err}");
        // Nothing answered at all.
        assert!(run(vec![]).unwrap_err().is_commit_unknown());
        // Another receive error.
        let other = NetlinkError::Io {
            what: "read batch acknowledgements".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
        };
        assert!(run(vec![Err(other)]).unwrap_err().is_commit_unknown());
        // A malformed answer (a header claiming more bytes than there are).
        let mut garbled = ack(101, 0);
        garbled.truncate(10);
        let err = run(vec![Ok(garbled)]).unwrap_err();
        assert!(err.is_commit_unknown(), "{err}");
        assert!(
            err.to_string().contains("malformed acknowledgement"),
            "{err}"
        );
    }

    #[test]
    fn a_refused_op_stays_a_known_refusal_even_if_later_acks_are_lost() {
        let err = run(vec![Ok(ack(102, libc::EBUSY))]).unwrap_err();
        assert!(
            matches!(
                err,
                NftWriteError::OpRefused {
                    errno: libc::EBUSY,
                    ..
                }
            ),
            "{err}"
        );
        let err = run(vec![Ok(ack(100, ERESTART))]).unwrap_err();
        assert!(err.is_precondition_moved(), "{err}");
    }

    #[test]
    fn errors_name_the_op_that_failed() {
        let error = NftWriteError::OpRefused {
            op: ip_nat_chain("CNI-DN-abc"),
            errno: libc::EBUSY,
        };
        assert_eq!(
            error.to_string(),
            "nothing applied: failed to delete chain ip/nat/CNI-DN-abc: EBUSY (device or resource busy)"
        );
        assert!(NftWriteError::RulesetChanged { expected: 7 }.is_precondition_moved());
        assert!(!error.is_precondition_moved());
    }

    #[test]
    fn batch_is_begin_ops_end_with_generation_and_acks() {
        let ops = [
            NftOp::DeleteRule {
                family: Family::Ip,
                table: "nat".into(),
                chain: "CNI-HOSTPORT-DNAT".into(),
                handle: 9,
            },
            NftOp::FlushChain {
                family: Family::Ip6,
                table: "nat".into(),
                chain: "X".into(),
            },
            ip_nat_chain("CNI-DN-abc"),
        ];
        let (bytes, begin, seqs) = build_batch(&ops, Some(42), 100);
        assert_eq!((begin, seqs.clone()), (100, vec![101, 102, 103]));
        let messages: Vec<_> = split_messages(&bytes).map(|m| m.unwrap()).collect();
        assert_eq!(messages.len(), 5);
        assert_eq!(messages[0].msg_type, NFNL_MSG_BATCH_BEGIN);
        // res_id is the nf_tables subsystem in network order.
        assert_eq!(&messages[0].payload[..4], &[0, 0, 0, 10]);
        let genid = Attrs::new(&messages[0].payload[4..])
            .find(|a| a.kind == NFNL_BATCH_GENID)
            .and_then(|a| a.u32_be());
        assert_eq!(genid, Some(42));
        assert_eq!(messages[1].msg_type, (10 << 8) | NFT_MSG_DELRULE);
        assert_eq!(messages[1].flags, NLM_F_REQUEST | NLM_F_ACK);
        let handle = Attrs::new(&messages[1].payload[4..])
            .find(|a| a.kind == NFTA_RULE_HANDLE)
            .and_then(|a| a.u64_be());
        assert_eq!(handle, Some(9));
        // The flush names only table and chain, in the ip6 family.
        assert_eq!(messages[2].payload[0], 10);
        assert_eq!(Attrs::new(&messages[2].payload[4..]).count(), 2);
        assert_eq!(messages[3].msg_type, (10 << 8) | NFT_MSG_DELCHAIN);
        assert_eq!(messages[4].msg_type, NFNL_MSG_BATCH_END);
        let (without_generation, _, _) = build_batch(&ops, None, 1);
        let first = split_messages(&without_generation).next().unwrap().unwrap();
        assert_eq!(first.payload.len(), 4);
    }

    /// One compat `match` expression element, as a dump returns it.
    fn match_elem(name: &[u8], rev: u32, info: &[u8]) -> Vec<u8> {
        let mut data = nla(NFTA_MATCH_NAME, name);
        data.extend(nla(NFTA_MATCH_REV, &rev.to_be_bytes()));
        data.extend(nla(NFTA_MATCH_INFO, info));
        let mut expr = nla(NFTA_EXPR_NAME, b"match\0");
        expr.extend(nla(NFTA_EXPR_DATA | NLA_F_NESTED, &data));
        nla(NFTA_LIST_ELEM | NLA_F_NESTED, &expr)
    }

    fn immediate_elem() -> Vec<u8> {
        let mut expr = nla(NFTA_EXPR_NAME, b"immediate\0");
        expr.extend(nla(
            NFTA_EXPR_DATA | NLA_F_NESTED,
            &nla(1, &0u32.to_be_bytes()),
        ));
        nla(NFTA_LIST_ELEM | NLA_F_NESTED, &expr)
    }

    #[test]
    fn multiport_v1_blob_round_trips_ranges() {
        let ports = [
            PortRange::single(443),
            PortRange {
                first: 8000,
                last: 8010,
            },
        ];
        let blob = multiport_blob(1, 48, &ports).unwrap();
        assert_eq!(blob.len(), 48);
        assert_eq!((blob[0], blob[1]), (MULTIPORT_DESTINATION, 3));
        assert_eq!(&blob[32..35], &[0, 1, 0]);
        assert_eq!(multiport_ranges(1, &blob).unwrap(), ports);
        // Rev 0 has no ranges; more than 15 slots do not fit.
        assert!(multiport_blob(0, 32, &ports).is_none());
        let many: Vec<PortRange> = (1..=16).map(PortRange::single).collect();
        assert!(multiport_blob(1, 48, &many).is_none());
        assert!(multiport_blob(1, 48, &[]).is_none());
        // A source-port or inverted list is not a destination list.
        let mut source = blob.clone();
        source[0] = 0;
        assert!(multiport_ranges(1, &source).is_none());
        let mut inverted = blob;
        inverted[47] = 1;
        assert!(multiport_ranges(1, &inverted).is_none());
    }

    #[test]
    fn narrowing_rewrites_only_the_multiport_match() {
        let both =
            multiport_blob(1, 48, &[PortRange::single(443), PortRange::single(6443)]).unwrap();
        let mut exprs = immediate_elem();
        exprs.extend(match_elem(b"multiport\0", 1, &both));
        exprs.extend(immediate_elem());
        let keep = [PortRange::single(443)];
        let out = narrow_expressions(
            &exprs,
            &[PortRange::single(443), PortRange::single(6443)],
            &keep,
        )
        .unwrap();
        let mut expected = immediate_elem();
        expected.extend(match_elem(
            b"multiport\0",
            1,
            &multiport_blob(1, 48, &keep).unwrap(),
        ));
        expected.extend(immediate_elem());
        assert_eq!(out, expected);
        // The rule moved since the decision: refused.
        let err = narrow_expressions(&exprs, &[PortRange::single(80)], &keep).unwrap_err();
        assert_eq!(err, "lists ports 443,6443 now, not 80 as decided");
        // No multiport match at all: refused.
        let err = narrow_expressions(&immediate_elem(), &keep, &keep).unwrap_err();
        assert_eq!(err, "has 0 multiport matches, not one");
    }
}
