//! Fix `remove-hijack-rule`: delete a rule that captures a protected port (proposed by
//! `hostport-hijack`).

use crate::model::finding::FixId;
use crate::remediate::fixes::Fix;

pub struct RemoveHijackRule;

impl FixId {
    pub const REMOVE_HIJACK_RULE: FixId = FixId::new("remove-hijack-rule");
}

impl Fix for RemoveHijackRule {
    fn id(&self) -> FixId {
        FixId::REMOVE_HIJACK_RULE
    }

    fn description(&self) -> &'static str {
        "delete the hijacking rule; for a CNI-DN-* chain delete the jumps to it and the chain, in one transaction"
    }
}
