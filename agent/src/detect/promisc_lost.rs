//! Check `promisc-lost` (docs/checks.md): an interface that must stay promiscuous (netmend set it,
//! as its journal records, or configuration lists it) has lost the administrative IFF_PROMISC flag
//! (link reset, driver reload, reboot). Pure: works on the list of such interfaces and the link
//! list. No I/O.
//!
//! Only the admin flag counts: promiscuity held by packet sockets (tcpdump, `IFLA_PROMISCUITY`)
//! goes away with them, so it is shown as evidence but never satisfies the check. An interface
//! that does not exist (unplugged adapter, renamed device) yields no finding: there is nothing to
//! set, and it is found again when it comes back.

use crate::config::{validate_interfaces, ConfigError, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity};
use crate::model::l2::{flag_names, Link};
use serde::Serialize;
use serde_json::json;

/// Why an interface must be promiscuous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromiscReason {
    /// netmend set it (the journal records a verified `set-promisc`).
    Journal,
    /// Listed in configuration.
    Config,
}

/// An interface that must keep IFF_PROMISC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MustBePromisc {
    pub interface: String,
    pub reason: PromiscReason,
}

pub fn promisc_lost(must_be_promisc: &[MustBePromisc], links: &[Link]) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    for m in must_be_promisc {
        let Some(link) = links.iter().find(|l| l.name == m.interface) else {
            continue;
        };
        if link.is_promisc() || findings.iter().any(|f| f.subject == link.name) {
            continue;
        }
        let why = match m.reason {
            PromiscReason::Journal => "netmend set it earlier",
            PromiscReason::Config => "configuration requires it",
        };
        findings.push(Finding {
            check: CheckId::PROMISC_LOST,
            subject: link.name.clone(),
            severity: Severity::Warning,
            message: format!("{} lost its promiscuous flag ({why})", link.name),
            evidence: json!({
                "interface": link.name,
                "ifindex": link.ifindex,
                "reason": m.reason,
                "flags": flag_names(link.flags),
                "promiscuity": link.promiscuity,
                "heldByOthers": link.promiscuity > 0,
                "operstate": link.operstate,
            }),
            proposal: Some(FixProposal {
                fix: FixId::SET_PROMISC,
                action: Some(FixAction::SetPromisc {
                    interface: link.name.clone(),
                    ifindex: link.ifindex,
                }),
                detail: format!("would set {} promiscuous again", link.name),
            }),
            discriminator: None,
        });
    }
    findings
}

/// The check, for the registry.
pub struct PromiscLost;

impl CheckId {
    pub const PROMISC_LOST: CheckId = CheckId::new("promisc-lost");
}

/// `checks.promisc-lost` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromiscLostConfig {
    /// Interfaces that must always be promiscuous.
    pub interfaces: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPromiscLost {
    interfaces: Option<Vec<String>>,
}

impl Check for PromiscLost {
    fn id(&self) -> CheckId {
        CheckId::PROMISC_LOST
    }

    fn description(&self) -> &'static str {
        "an interface that must stay promiscuous lost IFF_PROMISC (link reset, driver reload, reboot)"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("PromiscLost", "PromiscHeld")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Links
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawPromiscLost| {
            Ok(PromiscLostConfig {
                interfaces: validate_interfaces("interfaces", r.interfaces.unwrap_or_default())?,
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::SET_PROMISC)
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        let Some(links) = context.snapshot.links.as_deref() else {
            return Vec::new();
        };
        let configured = &context
            .config
            .check(self.id())
            .settings
            .get::<PromiscLostConfig>()
            .interfaces;
        let must: Vec<MustBePromisc> = context
            .promisc_held
            .iter()
            .map(|interface| MustBePromisc {
                interface: interface.clone(),
                reason: PromiscReason::Journal,
            })
            .chain(configured.iter().map(|interface| MustBePromisc {
                interface: interface.clone(),
                reason: PromiscReason::Config,
            }))
            .collect();
        promisc_lost(&must, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::l2::{MacAddr, OperState, ARPHRD_ETHER, IFF_PROMISC, IFF_UP};

    fn link(name: &str, flags: u32, promiscuity: u32) -> Link {
        Link {
            ifindex: 3,
            name: name.into(),
            flags,
            promiscuity,
            operstate: OperState::Up,
            kind: None,
            mac: Some(MacAddr([0xdc, 0xa6, 0x32, 1, 2, 3])),
            link_type: ARPHRD_ETHER,
            mtu: Some(1500),
            parent_ifindex: None,
            link_netnsid: None,
            master: None,
            parent_dev: None,
        }
    }

    fn must(name: &str, reason: PromiscReason) -> MustBePromisc {
        MustBePromisc {
            interface: name.into(),
            reason,
        }
    }

    #[test]
    fn a_reboot_that_cleared_the_flag_is_found() {
        let links = [link("wlan0", IFF_UP, 0)];
        let f = promisc_lost(&[must("wlan0", PromiscReason::Journal)], &links);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].check, CheckId::PROMISC_LOST);
        assert_eq!(f[0].subject, "wlan0");
        assert_eq!(f[0].evidence["reason"], "journal");
        assert_eq!(
            f[0].proposal.as_ref().unwrap().action,
            Some(FixAction::SetPromisc {
                interface: "wlan0".into(),
                ifindex: 3
            })
        );
    }

    #[test]
    fn tcpdump_holding_promiscuity_does_not_count() {
        let links = [link("wlan0", IFF_UP, 1)];
        let f = promisc_lost(&[must("wlan0", PromiscReason::Config)], &links);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence["heldByOthers"], true);
        assert!(f[0].message.contains("configuration"));
    }

    #[test]
    fn set_flag_or_missing_interface_gives_nothing() {
        let links = [link("wlan0", IFF_UP | IFF_PROMISC, 1)];
        assert!(promisc_lost(&[must("wlan0", PromiscReason::Journal)], &links).is_empty());
        assert!(promisc_lost(&[must("eth1", PromiscReason::Config)], &links).is_empty());
        assert!(promisc_lost(&[], &links).is_empty());
    }

    #[test]
    fn listed_twice_is_reported_once() {
        let links = [link("wlan0", IFF_UP, 0)];
        let f = promisc_lost(
            &[
                must("wlan0", PromiscReason::Journal),
                must("wlan0", PromiscReason::Config),
            ],
            &links,
        );
        assert_eq!(f.len(), 1);
    }
}
