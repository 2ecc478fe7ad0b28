//! Fix `restore-service-type`: put the API server's Service (`default/kubernetes`) back in the
//! type and annotations `apiserver-service-type` is configured with, through the Kubernetes API
//! (proposed by that check). Off by default. Only the agent holding the keeper's Lease acts: the
//! cluster carries it out (a `FixAction::SetServiceShape`), re-checking the Lease and reading the
//! Service right before the write, patching under the resourceVersion read (a Service changed in
//! between is refused with 409, never overwritten) and reading it back as the proof.
//!
//! When something keeps resetting the Service (k3s does on every server join or restart), each
//! reset is one more attempt: after `maxAttempts` within the breaker window the breaker opens and
//! the journal and an Event say so, instead of fighting forever.

use crate::model::finding::{FixAction, FixId};
use crate::remediate::fixes::Fix;

pub struct RestoreServiceType;

impl FixId {
    pub const RESTORE_SERVICE_TYPE: FixId = FixId::new("restore-service-type");
}

impl Fix for RestoreServiceType {
    fn id(&self) -> FixId {
        FixId::RESTORE_SERVICE_TYPE
    }

    fn description(&self) -> &'static str {
        "set the API server's Service back to the configured type and annotations through the Kubernetes API (by the one agent holding the keeper's Lease), proven by reading it back"
    }

    fn owns(&self, action: &FixAction) -> bool {
        matches!(action, FixAction::SetServiceShape { .. })
    }
}
