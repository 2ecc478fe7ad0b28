//! Fix `remove-stale-hostport`: delete a CNI portmap container chain left behind by a pod that
//! died uncleanly (proposed by `hostport-stale`): every jump to it from `CNI-HOSTPORT-DNAT` and
//! the chain itself, in one transaction (one nftables batch carrying the generation the decision
//! was made on; for iptables-legacy one restore under the xtables lock, the rules found by their
//! content and the fingerprint of the chain and its jumps checked first). No settings beyond the
//! guards; off by default like every fix. Portmap's own DEL for the container, should it ever
//! run, finds nothing to delete and does not fail.

use crate::model::finding::FixId;
use crate::remediate::fixes::Fix;

pub struct RemoveStaleHostport;

impl FixId {
    pub const REMOVE_STALE_HOSTPORT: FixId = FixId::new("remove-stale-hostport");
}

impl Fix for RemoveStaleHostport {
    fn id(&self) -> FixId {
        FixId::REMOVE_STALE_HOSTPORT
    }

    fn description(&self) -> &'static str {
        "delete a stale CNI portmap chain (CNI-DN-*) and every jump to it from CNI-HOSTPORT-DNAT, in one transaction; a live pod's chains are never touched"
    }
}
