//! netmend: a per-node network self-healing agent for Kubernetes nodes.
//!
//! The flow: `observe` (kernel, read-only) -> [`model::snapshot::NodeSnapshot`] -> `detect` (pure)
//! -> findings -> `remediate` (pure policy and guards) -> `act` (the only kernel writes) -> verify.
//! Every system call goes through `sys`, the only module allowed `unsafe` code.

#![deny(unsafe_code)]

pub mod act;
pub mod arp_probe;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod fault_knobs;
pub mod fuzz;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod remediate;
pub mod report;
pub mod runtime;
#[allow(unsafe_code)]
pub mod sys;

#[cfg(test)]
pub(crate) mod testutil;
