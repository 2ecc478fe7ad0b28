//! The only code that changes kernel state: each action idempotent, nftables writes in one atomic
//! batch. Everything that decides what to change lives in `remediate` (pure).

pub mod iptables_legacy;
pub mod kernel;
pub mod link;
pub mod nftables;
