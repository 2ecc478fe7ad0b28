//! Check `arp-unanswered` (docs/checks.md): ARP requests for an address this node should answer
//! arrive on its interface and no reply leaves. Pure: works on ARP counters of one window, the
//! responder map read at both ends of that window, and the link list. No I/O.
//!
//! Targets are the union of the configured ones (`192.168.1.51@wlan0`) and the keys of Cilium's
//! `cilium_l2_responder_v4` map (resolved to interface names through the link list).
//!
//! Only targets this node is expected to answer are judged, the owned ones:
//! - the address is assigned to the target's interface (rtnetlink addresses of the snapshot);
//! - or Cilium's responder map has (address, ifindex) in its latest read (the lease holder);
//! - or the configured target is marked always owned (`!always`, `alwaysOwned: true`).
//!
//! Any other configured target is an HA standby's VIP (keepalived, kube-vip): the standby sees
//! the requests and correctly stays silent, so it gives no finding. When the node's addresses
//! could not be read, unmarked configured targets are not judged either: never guess ownership.
//!
//! Signal, per target: at least `min_requests` requests for it were received on its interface, no
//! reply for it left that interface, and its `responses_sent` counter did not move (when the map
//! has the key at both ends of the window; replies sent with XDP_TX bypass packet taps, so a
//! moving counter proves the target is answered). A target whose interface is missing or whose
//! counters are incomplete (the interface vanished mid-window) is not judged.
//!
//! Fix: `set-promisc` when the interface is allowed (a physical NIC per
//! [`Link::class`], or listed in `allowed_interfaces`) and not already promiscuous; otherwise the
//! proposal carries no action and says why.
//!
//! Longer than most checks: it also owns its target syntax (`IP@IF[!always]` or an object) and who
//! owns a target (assigned, responder map, configured), which nothing else uses.

use crate::config::{
    duration_or, validate_interface_name, Config, ConfigError, HumanDuration, Settings,
};
use crate::detect::{Check, CheckContext, Inputs, Verification};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity};
use crate::model::l2::WatchedInterface;
use crate::model::l2::{flag_names, ArpCounters, ArpTarget, Link, LinkClass, ResponderMap};
use crate::model::snapshot::{LocalAddress, NodeSnapshot};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// A configured target and whether it is always this node's to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredTarget {
    pub target: ArpTarget,
    pub always_owned: bool,
}

/// What the check reads from one snapshot.
#[derive(Debug, Clone, Copy)]
pub struct ArpInputs<'a> {
    pub targets: &'a [ConfiguredTarget],
    /// ARP accounting of the window, one entry per watched interface.
    pub counters: &'a [ArpCounters],
    /// The responder map at the start of the window and at its end.
    pub responder: Option<&'a ResponderMap>,
    pub responder_after: Option<&'a ResponderMap>,
    pub links: &'a [Link],
    /// The node's addresses; None when that source failed.
    pub addresses: Option<&'a [LocalAddress]>,
}

/// Why this node is expected to answer for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The address is assigned to the target's interface.
    Assigned,
    /// Cilium's L2 responder map holds (address, ifindex): this node holds the lease.
    ResponderMap,
    /// Configured as always owned.
    Configured,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Assigned => "assigned",
            Ownership::ResponderMap => "responder-map",
            Ownership::Configured => "always-owned",
        }
    }
}

/// Whether this node is expected to answer ARP for `target` on `link`, and why; None for a
/// standby (or when that cannot be told).
pub fn ownership(
    inputs: &ArpInputs<'_>,
    target: &ArpTarget,
    link: &Link,
    always_owned: bool,
) -> Option<Ownership> {
    let assigned = inputs.addresses.is_some_and(|addrs| {
        addrs
            .iter()
            .any(|a| a.ifindex == link.ifindex && a.address == IpAddr::V4(target.ip))
    });
    if assigned {
        return Some(Ownership::Assigned);
    }
    let latest = inputs.responder_after.or(inputs.responder);
    if latest.is_some_and(|m| m.responses_sent(target.ip, link.ifindex).is_some()) {
        return Some(Ownership::ResponderMap);
    }
    always_owned.then_some(Ownership::Configured)
}

/// How many requesters are listed in the evidence.
const EVIDENCE_REQUESTERS: usize = 5;

/// The targets named by the responder map's keys, for links present in `links`.
pub fn targets_from_responder(map: &ResponderMap, links: &[Link]) -> Vec<ArpTarget> {
    map.entries
        .iter()
        .filter_map(|e| {
            links
                .iter()
                .find(|l| l.ifindex == e.ifindex)
                .map(|l| ArpTarget {
                    interface: l.name.clone(),
                    ip: e.ip,
                })
        })
        .collect()
}

/// The `set-promisc` proposal for a link, or why there is none to make.
pub fn promisc_proposal(link: &Link, allowed_interfaces: &[String]) -> FixProposal {
    let blocked = |detail: String| FixProposal {
        fix: FixId::SET_PROMISC,
        action: None,
        detail,
    };
    if link.is_promisc() {
        return blocked(format!(
            "{} is already promiscuous: promisc is not the cure here",
            link.name
        ));
    }
    let listed = allowed_interfaces.iter().any(|i| i == &link.name);
    match link.class() {
        LinkClass::Virtual(why) if !listed => blocked(format!(
            "{} is a virtual interface ({why}); list it under fixes.set-promisc.interfaces to allow",
            link.name
        )),
        class => FixProposal {
            fix: FixId::SET_PROMISC,
            action: Some(FixAction::SetPromisc {
                interface: link.name.clone(),
                ifindex: link.ifindex,
            }),
            detail: match class {
                LinkClass::Physical => format!("would set {} promiscuous", link.name),
                LinkClass::Virtual(why) => format!(
                    "would set {} promiscuous (virtual: {why}, allowed by configuration)",
                    link.name
                ),
            },
        },
    }
}

/// Runs the check on the owned targets (see the module documentation).
pub fn arp_unanswered(
    inputs: &ArpInputs<'_>,
    min_requests: u32,
    allowed_interfaces: &[String],
) -> Vec<Finding> {
    let ArpInputs {
        counters,
        responder,
        responder_after,
        links,
        ..
    } = *inputs;
    // Target -> always owned; the same target from config and map is judged once.
    let mut all: BTreeMap<ArpTarget, bool> = BTreeMap::new();
    for t in inputs.targets {
        *all.entry(t.target.clone()).or_default() |= t.always_owned;
    }
    for map in [responder, responder_after].into_iter().flatten() {
        for t in targets_from_responder(map, links) {
            all.entry(t).or_default();
        }
    }
    let mut findings = Vec::new();
    for (target, always_owned) in &all {
        let Some(link) = links.iter().find(|l| l.name == target.interface) else {
            continue;
        };
        let Some(owned) = ownership(inputs, target, link, *always_owned) else {
            continue; // a standby: silence is correct
        };
        let Some(c) = counters
            .iter()
            .find(|c| c.ifindex == link.ifindex || c.interface == link.name)
        else {
            continue;
        };
        if c.gone.is_some() {
            continue;
        }
        let counts = c.target(target.ip).cloned().unwrap_or_default();
        if counts.requests_received < u64::from(min_requests.max(1)) || counts.replies_sent > 0 {
            continue;
        }
        let before = responder.and_then(|m| m.responses_sent(target.ip, link.ifindex));
        let after = responder_after.and_then(|m| m.responses_sent(target.ip, link.ifindex));
        let delta = match (before, after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        if delta.is_some_and(|d| d > 0) {
            continue;
        }
        let requesters: Vec<_> = counts
            .requesters
            .iter()
            .take(EVIDENCE_REQUESTERS)
            .map(|r| json!({"mac": r.mac.to_string(), "ip": r.ip.to_string()}))
            .collect();
        let evidence = json!({
            "interface": link.name,
            "ifindex": link.ifindex,
            "target": target.ip.to_string(),
            "owned": owned.as_str(),
            "requests": counts.requests_received,
            "repliesSent": counts.replies_sent,
            "repliesReceived": counts.replies_received,
            "responderCounter": {
                "before": before,
                "after": after,
                "delta": delta,
            },
            "requesters": requesters,
            "requestersTotal": counts.requesters.len() as u64 + counts.requesters_dropped,
            "windowMs": c.window_ms,
            "kernelDrops": c.kernel_drops,
            "flags": flag_names(link.flags),
            "promisc": link.is_promisc(),
            "promiscuity": link.promiscuity,
            "operstate": link.operstate,
            "class": link.class(),
        });
        let counter_note = match delta {
            Some(_) => ", and the L2 responder counter did not move",
            None => "",
        };
        findings.push(Finding {
            check: CheckId::ARP_UNANSWERED,
            subject: target.subject(),
            severity: Severity::Warning,
            message: format!(
                "{} ARP requests for {} arrived on {} and no reply left{counter_note}",
                counts.requests_received, target.ip, link.name
            ),
            evidence,
            proposal: Some(promisc_proposal(link, allowed_interfaces)),
            discriminator: None,
        });
    }
    findings
}

/// The check, for the registry.
pub struct ArpUnanswered;

impl CheckId {
    pub const ARP_UNANSWERED: CheckId = CheckId::new("arp-unanswered");
}

/// Default pin path of Cilium's L2 responder map.
pub const DEFAULT_RESPONDER_MAP_PATH: &str = "/sys/fs/bpf/tc/globals/cilium_l2_responder_v4";

/// `checks.arp-unanswered` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArpConfig {
    pub targets: Vec<ArpTargetConfig>,
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub window: Duration,
    pub min_requests: u32,
    pub responder_map_path: String,
}

/// One configured ARP target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArpTargetConfig {
    pub ip: std::net::Ipv4Addr,
    pub interface: String,
    /// This node must always answer for `ip`, even when the address is not assigned to the
    /// interface (a proxy-ARP or XDP responder). Unmarked targets are judged only while this
    /// node owns them (assigned on the interface, or in Cilium's responder map): elsewhere they
    /// are an HA standby's VIP, which must stay silent.
    pub always_owned: bool,
}

/// An ARP target as written: `IPV4@INTERFACE[!always]`, or `{ip, interface, alwaysOwned}`.
#[derive(Debug)]
enum RawArpTarget {
    Text(String),
    Object(RawArpTargetObject),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArpTargetObject {
    ip: String,
    interface: String,
    always_owned: Option<bool>,
}

impl<'de> serde::Deserialize<'de> for RawArpTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawArpTarget;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an ARP target: \"IPV4@INTERFACE\" (\"!always\" appended marks it always owned) or {ip, interface, alwaysOwned}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawArpTarget, E> {
                Ok(RawArpTarget::Text(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawArpTarget, A::Error> {
                <RawArpTargetObject as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )
                .map(RawArpTarget::Object)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArp {
    targets: Option<Vec<RawArpTarget>>,
    window: Option<HumanDuration>,
    min_requests: Option<u32>,
    responder_map_path: Option<String>,
}

/// The settings of `arp-unanswered` in `config`.
pub fn settings(config: &Config) -> &ArpConfig {
    config
        .check(CheckId::ARP_UNANSWERED)
        .settings
        .get::<ArpConfig>()
}

/// Parses `192.168.1.51@wlan0` or `192.168.1.51@wlan0!always` (always owned).
pub fn parse_arp_target_config(text: &str) -> Result<ArpTargetConfig, String> {
    let (target, always_owned) = match text.split_once('!') {
        Some((target, "always")) => (target, true),
        Some((_, mark)) => {
            return Err(format!(
                "{text:?}: unknown mark {mark:?} (the only mark is \"!always\")"
            ))
        }
        None => (text, false),
    };
    let (ip, interface) = parse_arp_target(target)?;
    Ok(ArpTargetConfig {
        ip,
        interface,
        always_owned,
    })
}

/// Parses `192.168.1.51@wlan0`.
pub fn parse_arp_target(text: &str) -> Result<(std::net::Ipv4Addr, String), String> {
    let (ip, interface) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?} must be IPV4@INTERFACE, e.g. 192.168.1.51@wlan0"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} in {text:?} is not an IPv4 address"))?;
    validate_interface_name(interface)?;
    Ok((ip, interface.to_string()))
}

/// The ARP watch list: the interfaces of configured targets and of the responder map's keys
/// (links present now, each once), with the addresses watched on each (which the accounting
/// never ages out).
pub fn watch_list(snapshot: &NodeSnapshot, config: &Config) -> Vec<WatchedInterface> {
    let links = snapshot.links.as_deref().unwrap_or_default();
    let mut wanted: Vec<ArpTarget> = settings(config)
        .targets
        .iter()
        .map(|t| ArpTarget {
            interface: t.interface.clone(),
            ip: t.ip,
        })
        .collect();
    for map in [&snapshot.responder, &snapshot.responder_after]
        .into_iter()
        .flatten()
    {
        wanted.extend(targets_from_responder(map, links));
    }
    let mut out: Vec<WatchedInterface> = Vec::new();
    for target in wanted {
        let Some(link) = links.iter().find(|l| l.name == target.interface) else {
            continue;
        };
        let slot = match out.iter().position(|w| w.ifindex == link.ifindex) {
            Some(i) => i,
            None => {
                out.push(WatchedInterface {
                    ifindex: link.ifindex,
                    interface: link.name.clone(),
                    targets: Vec::new(),
                });
                out.len() - 1
            }
        };
        if !out[slot].targets.contains(&target.ip) {
            out[slot].targets.push(target.ip);
        }
    }
    out
}

impl Check for ArpUnanswered {
    fn id(&self) -> CheckId {
        CheckId::ARP_UNANSWERED
    }

    fn description(&self) -> &'static str {
        "ARP requests for a VIP this node owns arrive on its interface and no reply leaves"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("ArpUnanswered", "ArpAnswered")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Links
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawArp| {
            let mut targets: Vec<ArpTargetConfig> = Vec::new();
            for (i, t) in r.targets.unwrap_or_default().iter().enumerate() {
                let path = format!("targets[{i}]");
                let target = match t {
                    RawArpTarget::Text(text) => parse_arp_target_config(text),
                    RawArpTarget::Object(o) => {
                        parse_arp_target(&format!("{}@{}", o.ip.trim(), o.interface)).map(
                            |(ip, interface)| ArpTargetConfig {
                                ip,
                                interface,
                                always_owned: o.always_owned.unwrap_or(false),
                            },
                        )
                    }
                }
                .map_err(|reason| ConfigError::new(path.clone(), reason))?;
                if targets
                    .iter()
                    .any(|t| t.ip == target.ip && t.interface == target.interface)
                {
                    return Err(ConfigError::new(
                        path,
                        format!("{}@{} is listed twice", target.ip, target.interface),
                    ));
                }
                targets.push(target);
            }
            let min_requests = r.min_requests.unwrap_or(3);
            if min_requests == 0 {
                return Err(ConfigError::new("minRequests", "must be at least 1"));
            }
            let window = duration_or(r.window, 30);
            if window.is_zero() {
                return Err(ConfigError::new("window", "must be longer than 0s"));
            }
            let responder_map_path = r
                .responder_map_path
                .unwrap_or_else(|| DEFAULT_RESPONDER_MAP_PATH.to_string());
            if !responder_map_path.starts_with('/') {
                return Err(ConfigError::new(
                    "responderMapPath",
                    "must be an absolute path",
                ));
            }
            Ok(ArpConfig {
                targets,
                window,
                min_requests,
                responder_map_path,
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::SET_PROMISC)
    }

    fn verification(&self, config: &Config) -> Verification {
        Verification::ArpReplies {
            within: crate::remediate::fixes::set_promisc::settings(config).verify_within,
            min_requests: settings(config).min_requests,
        }
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        let Some(counters) = &context.snapshot.arp else {
            return Vec::new();
        };
        let arp = settings(context.config);
        let targets: Vec<ConfiguredTarget> = arp
            .targets
            .iter()
            .map(|t| ConfiguredTarget {
                target: ArpTarget {
                    interface: t.interface.clone(),
                    ip: t.ip,
                },
                always_owned: t.always_owned,
            })
            .collect();
        arp_unanswered(
            &ArpInputs {
                targets: &targets,
                counters,
                responder: context.snapshot.responder.as_ref(),
                responder_after: context.snapshot.responder_after.as_ref(),
                links: context.snapshot.links.as_deref().unwrap_or_default(),
                addresses: context.snapshot.addresses.as_deref(),
            },
            arp.min_requests,
            &crate::remediate::fixes::set_promisc::settings(context.config).interfaces,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::l2::{
        MacAddr, OperState, Requester, ResponderEntry, ResponderStatus, TargetCounts, ARPHRD_ETHER,
        IFF_BROADCAST, IFF_MULTICAST, IFF_PROMISC, IFF_UP,
    };
    use std::net::Ipv4Addr;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 51);

    fn link(name: &str, ifindex: u32, kind: Option<&str>, promisc: bool) -> Link {
        Link {
            ifindex,
            name: name.into(),
            flags: IFF_UP | IFF_BROADCAST | IFF_MULTICAST | if promisc { IFF_PROMISC } else { 0 },
            promiscuity: u32::from(promisc),
            operstate: OperState::Up,
            kind: kind.map(str::to_string),
            mac: Some(MacAddr([0xdc, 0xa6, 0x32, 0x11, 0x22, 0x33])),
            link_type: ARPHRD_ETHER,
            mtu: Some(1500),
            parent_ifindex: None,
            link_netnsid: None,
            master: None,
            parent_dev: Some("mmc1:0001:1".into()),
        }
    }

    fn counters(ifindex: u32, name: &str, requests: u64, replies: u64) -> ArpCounters {
        let mut c = ArpCounters::new(ifindex, name);
        let mut t = TargetCounts {
            requests_received: requests,
            replies_sent: replies,
            ..TargetCounts::default()
        };
        t.add_requester(Requester {
            mac: MacAddr([0x3c, 0x7c, 0x3f, 1, 2, 3]),
            ip: Ipv4Addr::new(192, 168, 1, 20),
        });
        c.targets.insert(VIP, t);
        c.window_ms = 30_000;
        c
    }

    fn map(sent: u64) -> ResponderMap {
        ResponderMap {
            path: "/sys/fs/bpf/tc/globals/cilium_l2_responder_v4".into(),
            status: ResponderStatus::Read,
            entries: vec![ResponderEntry {
                ip: VIP,
                ifindex: 3,
                responses_sent: sent,
            }],
        }
    }

    fn configured(text: &str, always_owned: bool) -> ConfiguredTarget {
        ConfiguredTarget {
            target: ArpTarget::parse(text).unwrap(),
            always_owned,
        }
    }

    fn target() -> Vec<ConfiguredTarget> {
        vec![configured("192.168.1.51@wlan0", false)]
    }

    /// The VIP assigned to ifindex 3 (this node is the active one).
    fn assigned() -> Vec<LocalAddress> {
        vec![LocalAddress {
            address: IpAddr::V4(VIP),
            prefix: 32,
            ifindex: 3,
        }]
    }

    /// The check with the VIP assigned on ifindex 3.
    fn judge(
        targets: &[ConfiguredTarget],
        counters: &[ArpCounters],
        responder: Option<&ResponderMap>,
        responder_after: Option<&ResponderMap>,
        links: &[Link],
        min_requests: u32,
        allowed: &[String],
    ) -> Vec<Finding> {
        let addresses = assigned();
        arp_unanswered(
            &ArpInputs {
                targets,
                counters,
                responder,
                responder_after,
                links,
                addresses: Some(&addresses),
            },
            min_requests,
            allowed,
        )
    }

    #[test]
    fn the_raspberry_pi_incident_is_found_with_a_promisc_fix() {
        // The field report: wlan0 (ifindex 3), responses_sent stuck at 0, requests arriving.
        let links = [link("lo", 1, None, false), link("wlan0", 3, None, false)];
        let f = judge(
            &[],
            &[counters(3, "wlan0", 5, 0)],
            Some(&map(0)),
            Some(&map(0)),
            &links,
            3,
            &[],
        );
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.check, CheckId::ARP_UNANSWERED);
        assert_eq!(f.subject, "wlan0@192.168.1.51");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.evidence["requests"], 5);
        assert_eq!(f.evidence["repliesSent"], 0);
        assert_eq!(f.evidence["responderCounter"]["delta"], 0);
        assert_eq!(f.evidence["requesters"][0]["ip"], "192.168.1.20");
        assert_eq!(f.evidence["promisc"], false);
        assert!(f.message.contains("did not move"), "{}", f.message);
        let p = f.proposal.as_ref().unwrap();
        assert_eq!(
            p.action,
            Some(FixAction::SetPromisc {
                interface: "wlan0".into(),
                ifindex: 3
            })
        );
    }

    #[test]
    fn answered_or_quiet_targets_are_fine() {
        let links = [link("wlan0", 3, None, false)];
        // A reply left.
        assert!(judge(
            &target(),
            &[counters(3, "wlan0", 5, 1)],
            None,
            None,
            &links,
            3,
            &[]
        )
        .is_empty());
        // Too few requests.
        assert!(judge(
            &target(),
            &[counters(3, "wlan0", 2, 0)],
            None,
            None,
            &links,
            3,
            &[]
        )
        .is_empty());
        // The responder counter moved (XDP_TX replies never reach the tap).
        assert!(judge(
            &target(),
            &[counters(3, "wlan0", 5, 0)],
            Some(&map(10)),
            Some(&map(13)),
            &links,
            3,
            &[]
        )
        .is_empty());
        // The interface vanished mid-window: not judged.
        let mut gone = counters(3, "wlan0", 5, 0);
        gone.gone = Some("wlan0 was deleted".into());
        assert!(judge(&target(), &[gone], None, None, &links, 3, &[]).is_empty());
        // No such interface, or no counters for it.
        assert!(judge(
            &target(),
            &[counters(3, "wlan0", 5, 0)],
            None,
            None,
            &[],
            3,
            &[]
        )
        .is_empty());
        assert!(judge(&target(), &[], None, None, &links, 3, &[]).is_empty());
    }

    #[test]
    fn config_targets_without_a_map_are_judged_on_counters_alone() {
        let links = [link("wlan0", 3, None, false)];
        let f = judge(
            &target(),
            &[counters(3, "wlan0", 3, 0)],
            None,
            None,
            &links,
            3,
            &[],
        );
        assert_eq!(f.len(), 1);
        assert!(f[0].evidence["responderCounter"]["delta"].is_null());
        // The same target from config and map is reported once.
        let f = judge(
            &target(),
            &[counters(3, "wlan0", 3, 0)],
            Some(&map(0)),
            Some(&map(0)),
            &links,
            3,
            &[],
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn virtual_interfaces_get_no_action_unless_allowed() {
        let links = [link("veth0", 3, Some("veth"), false)];
        let t = vec![configured("192.168.1.51@veth0", false)];
        let c = [counters(3, "veth0", 4, 0)];
        let f = judge(&t, &c, None, None, &links, 3, &[]);
        let p = f[0].proposal.as_ref().unwrap();
        assert_eq!(p.action, None);
        assert_eq!(
            p.detail,
            "veth0 is a virtual interface (veth); list it under fixes.set-promisc.interfaces to allow"
        );
        let f = judge(&t, &c, None, None, &links, 3, &["veth0".to_string()]);
        assert!(f[0].proposal.as_ref().unwrap().action.is_some());
    }

    #[test]
    fn already_promiscuous_gets_no_fix() {
        let links = [link("wlan0", 3, None, true)];
        let f = judge(
            &target(),
            &[counters(3, "wlan0", 9, 0)],
            None,
            None,
            &links,
            3,
            &[],
        );
        let p = f[0].proposal.as_ref().unwrap();
        assert_eq!(p.action, None);
        assert!(p.detail.contains("already promiscuous"), "{}", p.detail);
        assert_eq!(f[0].evidence["promisc"], true);
        assert!(f[0].evidence["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("PROMISC")));
    }

    #[test]
    fn map_keys_on_unknown_ifindexes_are_ignored() {
        let links = [link("wlan0", 3, None, false)];
        let mut m = map(0);
        m.entries[0].ifindex = 42;
        assert!(targets_from_responder(&m, &links).is_empty());
        assert_eq!(
            targets_from_responder(&map(0), &links),
            vec![ArpTarget::parse("192.168.1.51@wlan0").unwrap()]
        );
    }

    fn standby_check(
        targets: &[ConfiguredTarget],
        responder: Option<&ResponderMap>,
        addresses: Option<&[LocalAddress]>,
    ) -> Vec<Finding> {
        let links = [link("wlan0", 3, None, false)];
        arp_unanswered(
            &ArpInputs {
                targets,
                counters: &[counters(3, "wlan0", 9, 0)],
                responder,
                responder_after: responder,
                links: &links,
                addresses,
            },
            3,
            &[],
        )
    }

    #[test]
    fn a_standby_vip_gives_no_finding() {
        // keepalived/kube-vip standby: the VIP is configured, requests for it arrive, it is not
        // assigned here and not in the responder map: staying silent is correct.
        let other = [LocalAddress {
            address: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 233)),
            prefix: 24,
            ifindex: 3,
        }];
        assert!(standby_check(&target(), None, Some(&other)).is_empty());
        // Assigned, but on another interface: not this interface's to answer.
        let elsewhere = [LocalAddress {
            address: IpAddr::V4(VIP),
            prefix: 32,
            ifindex: 7,
        }];
        assert!(standby_check(&target(), None, Some(&elsewhere)).is_empty());
        // The node's addresses could not be read: ownership unknown, not judged.
        assert!(standby_check(&target(), None, None).is_empty());
    }

    #[test]
    fn owned_vips_are_judged_and_say_why() {
        let f = standby_check(&target(), None, Some(&assigned()));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence["owned"], "assigned");
        let f = standby_check(&[configured("192.168.1.51@wlan0", true)], None, Some(&[]));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence["owned"], "always-owned");
        // The responder map names the lease holder: owned without an address (XDP responder).
        let f = standby_check(&target(), Some(&map(0)), None);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence["owned"], "responder-map");
    }

    #[test]
    fn a_vip_that_left_the_responder_map_during_the_window_is_not_judged() {
        // Cilium moved the lease to another node mid-window: the latest map has no key.
        let links = [link("wlan0", 3, None, false)];
        let empty = ResponderMap {
            entries: Vec::new(),
            ..map(0)
        };
        let f = arp_unanswered(
            &ArpInputs {
                targets: &[],
                counters: &[counters(3, "wlan0", 9, 0)],
                responder: Some(&map(0)),
                responder_after: Some(&empty),
                links: &links,
                addresses: Some(&[]),
            },
            3,
            &[],
        );
        assert!(f.is_empty(), "{f:#?}");
    }
}
