//! The fixes: what each one is called, what it says it does and the settings it has besides the
//! guards every fix shares (`enabled`, `confirmFor`, `cooldown`, `maxAttempts`). A fix is a type
//! implementing [`Fix`], in one file here, listed once in [`FIXES`]. Pure: the kernel writes
//! themselves are the [`crate::model::finding::FixAction`]s a check proposes, carried out by `act`.

pub mod cordon_node;
pub mod flush_stale_chain;
pub mod remove_hijack_rule;
pub mod remove_stale_hostport;
pub mod restore_service_type;
pub mod set_promisc;

use crate::config::{ConfigError, Settings};
use crate::model::finding::{FixAction, FixId};

/// Every fix netmend has, in the order the catalog lists them.
pub static FIXES: &[&dyn Fix] = &[
    &flush_stale_chain::FlushStaleChain,
    &remove_hijack_rule::RemoveHijackRule,
    &set_promisc::SetPromisc,
    &remove_stale_hostport::RemoveStaleHostport,
    &cordon_node::CordonNode,
    &restore_service_type::RestoreServiceType,
];

/// One fix. Implementations are unit structs listed in [`FIXES`].
pub trait Fix: Sync {
    fn id(&self) -> FixId;
    /// One line for the catalog.
    fn description(&self) -> &'static str;
    /// Parses and validates the fix's own settings (the section without the guard keys); error
    /// paths are relative to the section.
    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::none(raw)
    }
    /// Whether `action` is this fix's to carry out or to revert (the engine journals a revert it
    /// runs on its own, such as lifting a cordon, under the fix that owns the action).
    fn owns(&self, _action: &FixAction) -> bool {
        false
    }
}

/// The registered fix that owns `action`.
pub fn fix_owning(action: &FixAction) -> Option<&'static dyn Fix> {
    FIXES.iter().copied().find(|f| f.owns(action))
}

/// The registered fix with this id.
pub fn fix(id: FixId) -> Option<&'static dyn Fix> {
    FIXES.iter().copied().find(|f| f.id() == id)
}

/// The registered fix whose id is `text`.
pub fn fix_named(text: &str) -> Option<&'static dyn Fix> {
    FIXES.iter().copied().find(|f| f.id().as_str() == text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::api_service::WantedShape;

    #[test]
    fn every_action_on_the_cluster_has_one_owning_fix() {
        let actions = [
            FixAction::CordonNode { by: "c".into() },
            FixAction::UncordonNode { by: "c".into() },
            FixAction::SetServiceShape {
                namespace: "default".into(),
                name: "kubernetes".into(),
                wanted: WantedShape {
                    service_type: "LoadBalancer".into(),
                    annotations: Default::default(),
                },
            },
        ];
        for action in &actions {
            let owners: Vec<FixId> = FIXES
                .iter()
                .filter(|f| f.owns(action))
                .map(|f| f.id())
                .collect();
            assert_eq!(owners.len(), 1, "{action:?}: {owners:?}");
            assert_eq!(fix_owning(action).map(|f| f.id()), owners.first().copied());
        }
        assert_eq!(
            fix_owning(&FixAction::UncordonNode { by: "c".into() }).map(|f| f.id().to_string()),
            Some("cordon-node".to_string())
        );
    }
}
