//! Pure remediation policy: which findings persist (the tracker), and whether a fix may act on a
//! finding now (the guards of docs/checks.md), each decision with a typed reason that doubles as a
//! metric label. No I/O: the journal's history arrives as a [`history::FixHistory`] value and time
//! as an argument, so every rule here is tested with plain values.

pub mod fixes;
pub mod guard;
pub mod history;
pub mod pending;
pub mod tracker;
