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

use crate::model::ruleset::Family;
use crate::observe::netlink::{
    errno_name, error_code, split_messages, MessageBuilder, NetlinkError, NetlinkSocket,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST,
};
use std::fmt;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_BATCH_GENID: u16 = 1;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
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
        }
    }
}

/// Why a batch did not apply. In every case nothing was changed.
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
}

impl NftWriteError {
    /// True when the batch was refused because the ruleset moved (the caller's precondition).
    pub fn is_precondition_moved(&self) -> bool {
        matches!(self, NftWriteError::RulesetChanged { .. })
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

    // Every op asked for an ack; a refused generation is answered once, on BEGIN.
    let mut answered = vec![false; op_seqs.len()];
    let mut first_failure: Option<(usize, i32)> = None;
    while answered.iter().any(|a| !a) {
        let len = match socket.recv("read batch acknowledgements") {
            Ok(len) => len,
            // The kernel answers every op of a batch; should it ever stop early, the first
            // failure already seen is the answer rather than a hang.
            Err(error) if is_timeout(&error) && first_failure.is_some() => break,
            Err(error) => return Err(error.into()),
        };
        for msg in split_messages(socket.received(len)) {
            let msg = msg.map_err(|detail| NetlinkError::Malformed {
                what: "batch acknowledgement".into(),
                detail,
            })?;
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
}
