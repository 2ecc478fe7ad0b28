//! The vocabulary of netmend, pure data shared by every layer: the node snapshot (rulesets,
//! sockets, addresses, links), findings and fix plans/outcomes. No I/O, no tokio, no processes.

pub mod api_service;
pub mod finding;
pub mod graph;
pub mod kube_proxy;
pub mod l2;
pub mod portmap;
pub mod render;
pub mod ruleset;
pub mod ruleset_changes;
pub mod service_intent;
pub mod snapshot;
