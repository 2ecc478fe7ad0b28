//! Fix `remove-hijack-rule`: delete a rule that captures a protected port (proposed by
//! `hostport-hijack`). It acts only on plumbing netmend knows how to mend: CNI portmap's
//! per-container chains (only the hijacked ports' rules go; the jump is narrowed to the pod's
//! other host ports) and rules of owners listed in its `owners` setting. Anything else (Docker,
//! kube-proxy, an unknown writer) is reported as blocked, with the reason.

use crate::config::{Config, ConfigError, Settings};
use crate::model::finding::FixId;
use crate::remediate::fixes::Fix;

pub struct RemoveHijackRule;

impl FixId {
    pub const REMOVE_HIJACK_RULE: FixId = FixId::new("remove-hijack-rule");
}

/// `fixes.remove-hijack-rule` settings besides the guards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HijackFixSettings {
    /// Owners besides CNI portmap whose rules the fix may remove: `chain:NAME` or
    /// `comment:TEXT`, a trailing `*` matching any rest.
    pub owners: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHijackFix {
    owners: Option<Vec<String>>,
}

/// The settings of `remove-hijack-rule` in `config`.
pub fn settings(config: &Config) -> &HijackFixSettings {
    config
        .fix_section(FixId::REMOVE_HIJACK_RULE)
        .settings
        .get::<HijackFixSettings>()
}

fn validate_owners(owners: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for (i, owner) in owners.iter().enumerate() {
        let pattern = owner
            .strip_prefix("chain:")
            .or_else(|| owner.strip_prefix("comment:"));
        let reason = match pattern {
            None => Some("must start with `chain:` or `comment:` (e.g. chain:MY-HOSTPORTS-*)"),
            Some("") | Some("*") => Some("the pattern after the prefix must name something"),
            Some(p) if p.len() > 256 => Some("the pattern is longer than 256 bytes"),
            Some(p) if p.trim_end_matches('*').contains('*') => {
                Some("`*` is allowed only at the end of the pattern")
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return Err(ConfigError::new(format!("owners[{i}]"), reason));
        }
    }
    Ok(owners)
}

impl Fix for RemoveHijackRule {
    fn id(&self) -> FixId {
        FixId::REMOVE_HIJACK_RULE
    }

    fn description(&self) -> &'static str {
        "delete a hijacking rule of CNI portmap (or of an owner listed in fixes.remove-hijack-rule.owners): only the hijacked ports' rules, narrowing the jump to the pod's other host ports, in one transaction"
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawHijackFix| {
            Ok(HijackFixSettings {
                owners: validate_owners(r.owners.unwrap_or_default())?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_validated_and_belong_to_this_fix_only() {
        let c = Config::from_yaml(
            "fixes:\n  remove-hijack-rule:\n    enabled: true\n    owners: [\"chain:MY-HOSTPORTS-*\", \"comment:managed by ops*\"]\n",
        )
        .unwrap();
        assert_eq!(
            settings(&c).owners,
            vec!["chain:MY-HOSTPORTS-*", "comment:managed by ops*"]
        );
        assert!(c.fix(FixId::REMOVE_HIJACK_RULE).enabled);
        assert!(settings(&Config::default()).owners.is_empty());
        for (bad, why) in [
            ("DOCKER", "must start with `chain:` or `comment:`"),
            ("chain:", "must name something"),
            ("chain:*", "must name something"),
            ("chain:A*B", "only at the end"),
        ] {
            let err = Config::from_yaml(&format!(
                "fixes:\n  remove-hijack-rule:\n    owners: [\"{bad}\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("fixes.remove-hijack-rule.owners[0]") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(Config::from_yaml("fixes:\n  flush-stale-chain:\n    owners: []\n").is_err());
    }
}
