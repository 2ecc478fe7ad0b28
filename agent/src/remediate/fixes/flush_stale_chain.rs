//! Fix `flush-stale-chain`: flush a stale chain, and delete it when nothing references it, in one
//! transaction (proposed by `cilium-stale-backup-chain`).

use crate::model::finding::FixId;
use crate::remediate::fixes::Fix;

pub struct FlushStaleChain;

impl FixId {
    pub const FLUSH_STALE_CHAIN: FixId = FixId::new("flush-stale-chain");
}

impl Fix for FlushStaleChain {
    fn id(&self) -> FixId {
        FixId::FLUSH_STALE_CHAIN
    }

    fn description(&self) -> &'static str {
        "flush the stale chain (and delete it when nothing references it), in one transaction"
    }
}
