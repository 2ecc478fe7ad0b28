//! netmend: a per-node network self-healing agent for Kubernetes nodes.
//!
//! The flow: `observe` (kernel, read-only) -> [`model::snapshot::NodeSnapshot`] -> `detect` (pure)
//! -> findings -> `remediate` (pure policy and guards) -> `act` (the only kernel writes) -> verify.

pub mod config;
pub mod detect;
pub mod model;
pub mod observe;
pub mod remediate;
pub mod journal;
pub mod report;
pub mod runtime;
pub mod metrics;
pub mod http;
pub mod act;
pub mod probe;
