//! Fix `set-promisc`: set IFF_PROMISC on an interface (proposed by `arp-unanswered` and
//! `promisc-lost`). Its own settings: the interfaces it may touch besides physical devices, and
//! how long an unanswered-ARP fix has to prove itself before it is reverted.

use crate::config::{
    duration_or, validate_interfaces, Config, ConfigError, HumanDuration, Settings,
};
use crate::model::finding::FixId;
use crate::remediate::fixes::Fix;
use std::time::Duration;

pub struct SetPromisc;

impl FixId {
    pub const SET_PROMISC: FixId = FixId::new("set-promisc");
}

/// `fixes.set-promisc` settings besides the guards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromiscFixSettings {
    /// Interfaces the fix may touch besides physical devices.
    pub interfaces: Vec<String>,
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub verify_within: Duration,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPromiscFix {
    interfaces: Option<Vec<String>>,
    verify_within: Option<HumanDuration>,
}

/// The settings of `set-promisc` in `config`.
pub fn settings(config: &Config) -> &PromiscFixSettings {
    config
        .fix_section(FixId::SET_PROMISC)
        .settings
        .get::<PromiscFixSettings>()
}

impl Fix for SetPromisc {
    fn id(&self) -> FixId {
        FixId::SET_PROMISC
    }

    fn description(&self) -> &'static str {
        "set IFF_PROMISC on the interface (physical devices only unless allowed), verify replies, revert if useless"
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawPromiscFix| {
            let verify_within = duration_or(r.verify_within, 60);
            if verify_within.is_zero() {
                return Err(ConfigError::new("verifyWithin", "must be longer than 0s"));
            }
            Ok(PromiscFixSettings {
                interfaces: validate_interfaces("interfaces", r.interfaces.unwrap_or_default())?,
                verify_within,
            })
        })
    }
}
