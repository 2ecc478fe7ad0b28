//! Read-only probes of the kernel, one file per source. Nothing here changes kernel state. Wire
//! decoding lives in pure functions beside each probe and is tested on captured bytes.

pub mod addresses;
pub mod arp;
pub mod bpf;
pub mod ipset;
pub mod iptables_legacy;
pub mod l2_watch;
pub mod legacy_cache;
pub mod links;
pub mod netlink;
pub mod nft_events;
pub mod nftables;
pub mod node;
pub mod sockets;
pub mod xt;
