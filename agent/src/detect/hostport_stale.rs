//! Check `hostport-stale`: a CNI portmap per-container chain (`CNI-DN-*`) left behind when its
//! pod died uncleanly (the CNI DEL never ran or failed). `CNI-HOSTPORT-DNAT` jumps to the chains
//! in order and the first DNAT for a host port wins, so the left-over keeps sending the port to
//! an address no pod has, and the hostPort of the pod that took the port since silently does not
//! work. Proposes `remove-stale-hostport`: delete the jumps to the chain and the chain, in one
//! transaction.
//!
//! A chain is stale when (`model::portmap::stale_chains`):
//! - **no pod** on this node has the address it sends to. Judged only while the pods are known
//!   (`CheckContext::pods_known`: listed by the pod watch, API and watch healthy; never in
//!   node-local mode or `netmend check`), and only for a CNI network that is a pod network (one
//!   of its chains sends to a pod of this node, or it is listed in `podNetworks`): another
//!   container runtime using portmap on the node has no pods;
//! - **superseded**: a chain jumped to later, for the same pod address on the same network, sends
//!   every host port of this one to the same place. An address belongs to one sandbox at a time
//!   and portmap appends each new container's jump, so the later chain is the current sandbox's
//!   and this one a left-over. Removing it changes where no packet goes, so this is judged
//!   without the pods.
//!
//! Without the pods only superseded chains are reported: a missing pod in an incomplete view
//! proves nothing, and removing a live pod's hostPort is worse than leaving a left-over.
//!
//! A finding must last `staleAfter` (default 2m) before it counts: a new pod's chain exists a few
//! seconds before the kubelet publishes the pod's address, and that report can lag under the
//! kubelet's API rate limit. The fix's re-check right before writing judges again on a fresh read
//! with the pods as known then, and its action is fingerprinted with what it touches (the chain,
//! every jump to it), so nothing of a live pod is touched.
//!
//! Not covered: portmap's nftables backend (table `cni_hostport`, no `CNI-DN-*` chains) and DNATs
//! written straight into `CNI-HOSTPORT-DNAT` (portmap never writes them).

use crate::config::{duration_or, Config, ConfigError, HumanDuration, Settings};
use crate::detect::{Check, CheckContext, Inputs, Pods};
use crate::model::finding::{
    CheckId, Finding, FixAction, FixId, FixProposal, RuleRef, Severity, TableRef,
};
use crate::model::graph::TableGraph;
use crate::model::portmap::{
    stale_chains, table_container_chains, ContainerChain, PodsOnNode, StaleChain, Staleness,
    DISPATCH_CHAIN,
};
use crate::model::render::{action_fingerprint, render_rule, rule_spec};
use crate::model::ruleset::{Backend, Table};
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;

/// The check, for the registry.
pub struct HostportStale;

impl CheckId {
    pub const HOSTPORT_STALE: CheckId = CheckId::new("hostport-stale");
}

/// `checks.hostport-stale` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostportStaleSettings {
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub stale_after: Duration,
    /// CNI network names (the `name` of portmap's comment) whose chains belong to pods, besides
    /// those seen sending to a pod of this node.
    pub pod_networks: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHostportStale {
    stale_after: Option<HumanDuration>,
    pod_networks: Option<Vec<String>>,
}

/// The default of `staleAfter`, in seconds.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 120;

/// The check on one snapshot.
pub fn detect(
    snapshot: &crate::model::snapshot::NodeSnapshot,
    settings: &HostportStaleSettings,
    pods: &Pods<'_>,
) -> Vec<Finding> {
    let has_pod = |ip: IpAddr| (pods.owner)(ip).is_some();
    let judged = PodsOnNode {
        has_pod: pods.known.then_some(&has_pod as &dyn Fn(IpAddr) -> bool),
        networks: &settings.pod_networks,
    };
    // Judged together: a network seen with a pod in one table (IPv4) is a pod network in the
    // others (IPv6, the other backend); chains are compared only within their own table.
    let tables: Vec<&Table> = [Backend::Nft, Backend::Legacy]
        .into_iter()
        .filter_map(|backend| snapshot.ruleset(backend))
        .flat_map(|ruleset| ruleset.tables.iter())
        .collect();
    let chains: Vec<ContainerChain> = tables
        .iter()
        .flat_map(|table| table_container_chains(table))
        .collect();
    if chains.is_empty() {
        return Vec::new();
    }
    let stale = stale_chains(&chains, &judged);
    let mut findings = Vec::with_capacity(stale.len());
    for table in tables {
        let mut here = stale
            .iter()
            .filter(|s| s.chain.table == table.id)
            .peekable();
        if here.peek().is_none() {
            continue;
        }
        let graph = TableGraph::new(table);
        findings.extend(here.map(|s| finding_for(&graph, s, pods)));
    }
    findings
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

fn ports_text(chain: &ContainerChain) -> String {
    chain
        .ports
        .iter()
        .map(|(port, to)| {
            let host = port.host_ip.map(|ip| format!("{ip} ")).unwrap_or_default();
            format!(
                "{host}{}/{} -> {to}",
                protocol_name(port.protocol),
                port.port
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn finding_for(graph: &TableGraph<'_>, stale: &StaleChain, pods: &Pods<'_>) -> Finding {
    let table = graph.table;
    let chain = &stale.chain;
    let index = graph.chain_index(&chain.chain);
    let jumps: Vec<(usize, usize)> = index
        .map(|i| graph.referrers(i).to_vec())
        .unwrap_or_default();
    let render_at = |(ci, ri): (usize, usize)| {
        let from = graph.chain(ci);
        render_rule(table, &from.name, &from.rules[ri])
    };
    let pod_ips: Vec<String> = chain.pod_ips().iter().map(IpAddr::to_string).collect();
    let (reason, message) = match &stale.why {
        Staleness::NoPod { .. } => (
            json!({"kind": "noPod"}),
            format!(
                "CNI portmap chain {} (container {}, network {}) sends {} but no pod on this node has {}{}: a left-over of a pod that died uncleanly",
                chain.chain,
                short(&chain.container_id),
                chain.network,
                ports_text(chain),
                pod_ips.join(", "),
                if stale.shadows.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it comes first in {DISPATCH_CHAIN}, so the hostPort of {} does not work",
                        stale.shadows.join(", ")
                    )
                }
            ),
        ),
        Staleness::Superseded { by } => (
            json!({"kind": "superseded", "by": by}),
            format!(
                "CNI portmap chain {} (container {}, network {}) sends {} like the later chain {} for the same pod address{}: a left-over of an earlier sandbox",
                chain.chain,
                short(&chain.container_id),
                chain.network,
                ports_text(chain),
                by,
                chain
                    .pod_ips()
                    .iter()
                    .find_map(|ip| (pods.owner)(*ip))
                    .map(|pod| format!(" (pod {pod})"))
                    .unwrap_or_default()
            ),
        ),
    };
    let foreign: Vec<String> = jumps
        .iter()
        .filter(|(ci, _)| graph.chain(*ci).name != DISPATCH_CHAIN)
        .map(|j| render_at(*j))
        .collect();
    let proposal = if index.is_none() || jumps.is_empty() {
        FixProposal {
            fix: FixId::REMOVE_STALE_HOSTPORT,
            action: None,
            detail: "blocked: the chain or its jumps could not be found again".into(),
        }
    } else if !foreign.is_empty() {
        FixProposal {
            fix: FixId::REMOVE_STALE_HOSTPORT,
            action: None,
            detail: format!(
                "blocked: the chain is also jumped to from outside {DISPATCH_CHAIN} ({}): not only portmap's",
                foreign.join("; ")
            ),
        }
    } else {
        let rules: Vec<RuleRef> = jumps
            .iter()
            .map(|&(ci, ri)| {
                let from = graph.chain(ci);
                RuleRef {
                    chain: from.name.clone(),
                    handle: from.rules[ri].handle,
                    spec: rule_spec(table, &from.name, &from.rules[ri]),
                }
            })
            .collect();
        let mut action = FixAction::RemoveRules {
            table: TableRef {
                backend: table.id.backend,
                family: table.id.family,
                table: table.id.name.clone(),
            },
            rules,
            delete_chains: vec![chain.chain.clone()],
            content_hash: 0,
            narrow: Vec::new(),
        };
        let hash = action_fingerprint(table, &action);
        if let FixAction::RemoveRules { content_hash, .. } = &mut action {
            *content_hash = hash;
        }
        FixProposal {
            fix: FixId::REMOVE_STALE_HOSTPORT,
            action: Some(action),
            detail: format!(
                "would delete {} jump(s) from {DISPATCH_CHAIN} to {} and the chain ({} rules), in one transaction",
                jumps.len(),
                chain.chain,
                index.map_or(0, |i| graph.chain(i).rules.len())
            ),
        }
    };
    let ports: Vec<serde_json::Value> = chain
        .ports
        .iter()
        .map(|(port, to)| {
            json!({
                "protocol": protocol_name(port.protocol),
                "hostPort": port.port,
                "hostIp": port.host_ip,
                "to": to.to_string(),
            })
        })
        .collect();
    Finding {
        check: CheckId::HOSTPORT_STALE,
        subject: format!("{} {} {}", table.id.family, table.id.name, chain.chain),
        severity: Severity::Warning,
        message,
        evidence: json!({
            "backend": table.id.backend,
            "family": table.id.family,
            "table": table.id.name,
            "chain": chain.chain,
            "network": chain.network,
            "containerId": chain.container_id,
            "podIps": pod_ips,
            "ports": ports,
            "reason": reason,
            "shadows": stale.shadows,
            "podsKnown": pods.known,
            "jumps": jumps.iter().map(|j| render_at(*j)).collect::<Vec<_>>(),
            "ruleset": index
                .map(|i| {
                    let c = graph.chain(i);
                    c.rules
                        .iter()
                        .map(|r| render_rule(table, &c.name, r))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        }),
        proposal: Some(proposal),
        discriminator: Some(table.id.backend.as_str().to_string()),
    }
}

fn validate_networks(networks: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for (i, name) in networks.iter().enumerate() {
        if name.is_empty() || name.len() > 256 || name.contains('"') {
            return Err(ConfigError::new(
                format!("podNetworks[{i}]"),
                "must be a CNI network name: 1 to 256 characters, no `\"`",
            ));
        }
    }
    Ok(networks)
}

impl Check for HostportStale {
    fn id(&self) -> CheckId {
        CheckId::HOSTPORT_STALE
    }

    fn description(&self) -> &'static str {
        "CNI portmap chain (CNI-DN-*) left behind by a pod that died uncleanly: its DNAT comes first and a new pod's hostPort silently does not work"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("StaleHostportPresent", "NoStaleHostport")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Ruleset
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawHostportStale| {
            Ok(HostportStaleSettings {
                stale_after: duration_or(r.stale_after, DEFAULT_STALE_AFTER_SECS),
                pod_networks: validate_networks(r.pod_networks.unwrap_or_default())?,
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::REMOVE_STALE_HOSTPORT)
    }

    fn persist_for(&self, config: &Config) -> Duration {
        settings(config).stale_after
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect(
            context.snapshot,
            settings(context.config),
            &Pods {
                owner: context.pod_owner,
                known: context.pods_known,
            },
        )
    }
}

/// The settings of `hostport-stale` in `config`.
pub fn settings(config: &Config) -> &HostportStaleSettings {
    config
        .check(CheckId::HOSTPORT_STALE)
        .settings
        .get::<HostportStaleSettings>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::snapshot::NodeSnapshot;

    const OLD_ID: &str = "770c07dfd094fa98f07ed00c04920cc32b8f3be77d02d803b54b84cc1af77bb0";

    /// A DaemonSet pod with hostPort 8126 restarted: the old sandbox's chain (10.42.0.31) was
    /// never torn down and still comes first; the new pod (10.42.0.57) has its chain behind it.
    /// An ingress pod with 80/443 on another address is healthy. Rules as the portmap plugin
    /// writes them, in iptables-save form.
    fn restarted() -> String {
        format!(
            r#"
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-2340674fa9a846ba6cee5 - [0:0]
:CNI-DN-98502136a6caa3b998bdb - [0:0]
:CNI-DN-5a1c0ffee0aa11bb22cc3 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"{OLD_ID}\"" -m multiport --dports 8126 -j CNI-DN-2340674fa9a846ba6cee5
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"b57a45acaad108d4e72d396cef6f9f2bf4a354b6aac7c93c9ac5812e35495d40\"" -m multiport --dports 8126 -j CNI-DN-98502136a6caa3b998bdb
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0f3c9a7d1e2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5\"" -m multiport --dports 80,443 -j CNI-DN-5a1c0ffee0aa11bb22cc3
-A CNI-DN-2340674fa9a846ba6cee5 -s 10.42.0.31/32 -p tcp -m tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2340674fa9a846ba6cee5 -s 127.0.0.1/32 -p tcp -m tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2340674fa9a846ba6cee5 -p tcp -m tcp --dport 8126 -j DNAT --to-destination 10.42.0.31:8126
-A CNI-DN-98502136a6caa3b998bdb -s 10.42.0.57/32 -p tcp -m tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-98502136a6caa3b998bdb -s 127.0.0.1/32 -p tcp -m tcp --dport 8126 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-98502136a6caa3b998bdb -p tcp -m tcp --dport 8126 -j DNAT --to-destination 10.42.0.57:8126
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -s 10.42.0.0/24 -p tcp -m tcp --dport 80 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -s 127.0.0.1/32 -p tcp -m tcp --dport 80 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.42.0.9:80
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -s 10.42.0.0/24 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -s 127.0.0.1/32 -p tcp -m tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-5a1c0ffee0aa11bb22cc3 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.0.9:443
"#
        )
    }

    fn node(backend: Backend, text: &str) -> NodeSnapshot {
        let table = iptables_table(backend, "nat", text);
        match backend {
            Backend::Nft => snapshot_with(Some(vec![table]), None),
            Backend::Legacy => snapshot_with(None, Some(vec![table])),
        }
    }

    fn settings() -> HostportStaleSettings {
        let config = Config::default();
        super::settings(&config).clone()
    }

    fn run(snapshot: &NodeSnapshot, live: &[(&str, &str)], known: bool) -> Vec<Finding> {
        let live: Vec<(IpAddr, String)> = live
            .iter()
            .map(|(ip, pod)| (ip.parse().unwrap(), pod.to_string()))
            .collect();
        let owner = move |ip: IpAddr| {
            live.iter()
                .find(|(p, _)| *p == ip)
                .map(|(_, pod)| pod.clone())
        };
        detect(
            snapshot,
            &settings(),
            &Pods {
                owner: &owner,
                known,
            },
        )
    }

    const LIVE: &[(&str, &str)] = &[
        ("10.42.0.57", "monitoring/datadog-agent-x7k2p"),
        ("10.42.0.9", "ingress/nginx-7d9f"),
    ];

    #[test]
    fn a_dead_pods_chain_first_for_a_port_is_found_with_its_owner_and_the_pod_it_blocks() {
        for backend in [Backend::Nft, Backend::Legacy] {
            let snapshot = node(backend, &restarted());
            let findings = run(&snapshot, LIVE, true);
            assert_eq!(findings.len(), 1, "{findings:#?}");
            let f = &findings[0];
            assert_eq!(f.subject, "ip nat CNI-DN-2340674fa9a846ba6cee5");
            assert_eq!(f.discriminator.as_deref(), Some(backend.as_str()));
            assert_eq!(f.evidence["containerId"], OLD_ID);
            assert_eq!(f.evidence["network"], "cbr0");
            assert_eq!(f.evidence["podIps"], json!(["10.42.0.31"]));
            assert_eq!(f.evidence["reason"]["kind"], "noPod");
            assert_eq!(
                f.evidence["ports"],
                json!([{"protocol": "tcp", "hostPort": 8126, "hostIp": null, "to": "10.42.0.31:8126"}])
            );
            assert_eq!(
                f.evidence["shadows"],
                json!(["CNI-DN-98502136a6caa3b998bdb"])
            );
            assert!(
                f.message.contains("tcp/8126 -> 10.42.0.31:8126"),
                "{}",
                f.message
            );
            assert!(
                f.message.contains("container 770c07dfd094"),
                "{}",
                f.message
            );
            assert!(
                f.message
                    .contains("the hostPort of CNI-DN-98502136a6caa3b998bdb does not work"),
                "{}",
                f.message
            );
            let proposal = f.proposal.as_ref().unwrap();
            assert_eq!(proposal.fix, FixId::REMOVE_STALE_HOSTPORT);
            let Some(FixAction::RemoveRules {
                table,
                rules,
                delete_chains,
                narrow,
                content_hash,
            }) = &proposal.action
            else {
                panic!("{proposal:?}")
            };
            assert_eq!(table.backend, backend);
            assert_eq!(
                delete_chains,
                &vec!["CNI-DN-2340674fa9a846ba6cee5".to_string()]
            );
            assert!(narrow.is_empty());
            assert_ne!(*content_hash, 0);
            // Only the jump to the stale chain: nothing of the live pods.
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0].chain, "CNI-HOSTPORT-DNAT");
            assert!(rules[0].spec.contains(OLD_ID), "{}", rules[0].spec);
            assert!(rules[0].spec.ends_with("-j CNI-DN-2340674fa9a846ba6cee5"));
        }
    }

    #[test]
    fn a_healthy_node_has_no_finding() {
        // The left-over gone: two live pods, each with its own host ports.
        let text: String = restarted()
            .lines()
            .filter(|l| !l.contains("2340674fa9a846ba6cee5"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(run(&node(Backend::Legacy, &text), LIVE, true), vec![]);
        // No portmap at all.
        assert_eq!(
            run(&node(Backend::Nft, ":PREROUTING ACCEPT [0:0]\n"), &[], true),
            vec![]
        );
    }

    #[test]
    fn every_chain_of_a_live_pod_is_kept() {
        // The old address was given to a new pod since: it is live, and so is its chain.
        let mut live = LIVE.to_vec();
        live.push(("10.42.0.31", "batch/worker-0"));
        assert_eq!(run(&node(Backend::Nft, &restarted()), &live, true), vec![]);
    }

    #[test]
    fn without_the_pods_a_missing_pod_is_not_judged() {
        assert_eq!(run(&node(Backend::Nft, &restarted()), &[], false), vec![]);
        // Pods "known" but none listed yet for the pod network: no network is a pod network.
        assert_eq!(run(&node(Backend::Nft, &restarted()), &[], true), vec![]);
    }

    #[test]
    fn the_older_chain_to_the_same_pod_address_is_found_without_the_pods() {
        // The address 10.42.0.31 went to the new sandbox: both chains send 8126 to it.
        let text = restarted().replace("10.42.0.57", "10.42.0.31");
        for known in [false, true] {
            let live = [
                ("10.42.0.31", "monitoring/datadog-agent-x7k2p"),
                ("10.42.0.9", "ingress/nginx-7d9f"),
            ];
            let findings = run(&node(Backend::Legacy, &text), &live, known);
            assert_eq!(findings.len(), 1, "{findings:#?}");
            let f = &findings[0];
            assert_eq!(f.subject, "ip nat CNI-DN-2340674fa9a846ba6cee5");
            assert_eq!(
                f.evidence["reason"],
                json!({"kind": "superseded", "by": "CNI-DN-98502136a6caa3b998bdb"})
            );
            assert!(f.proposal.as_ref().unwrap().action.is_some());
            if known {
                assert!(
                    f.message.contains("(pod monitoring/datadog-agent-x7k2p)"),
                    "{}",
                    f.message
                );
            }
        }
    }

    #[test]
    fn a_chain_jumped_to_from_elsewhere_is_reported_but_not_removed() {
        let text = restarted().replace(
            "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
            "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A OUTPUT -p tcp -m tcp --dport 8126 -j CNI-DN-2340674fa9a846ba6cee5",
        );
        let findings = run(&node(Backend::Legacy, &text), LIVE, true);
        assert_eq!(findings.len(), 1);
        let proposal = findings[0].proposal.as_ref().unwrap();
        assert_eq!(proposal.action, None);
        assert!(
            proposal.detail.starts_with("blocked:"),
            "{}",
            proposal.detail
        );
    }

    /// The upstream plugin's own test shape: one container with tcp and udp host ports (one jump
    /// per protocol), a host-IP-bound port, and the pod subnet as the hairpin source.
    fn upstream_shape(pod: &str) -> String {
        let id = "icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y";
        let mut text = format!(
            ":PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-DN-67e92b96e692a494b6b85 - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"test\\\" id: \\\"{id}\\\"\" -m multiport --dports 8080,8081,8083 -j CNI-DN-67e92b96e692a494b6b85\n-A CNI-HOSTPORT-DNAT -p udp -m comment --comment \"dnat name: \\\"test\\\" id: \\\"{id}\\\"\" -m multiport --dports 8080,8082 -j CNI-DN-67e92b96e692a494b6b85\n"
        );
        for (proto, host_port, host_ip, port) in [
            ("tcp", 8080, "", 80),
            ("tcp", 8081, "", 80),
            ("udp", 8080, "", 81),
            ("udp", 8082, "", 82),
            ("tcp", 8083, "-d 192.168.0.2/32 ", 83),
        ] {
            let chain = "-A CNI-DN-67e92b96e692a494b6b85";
            text += &format!("{chain} {host_ip}-s 10.0.0.0/24 -p {proto} -m {proto} --dport {host_port} -j CNI-HOSTPORT-SETMARK\n");
            text += &format!("{chain} {host_ip}-s 127.0.0.1/32 -p {proto} -m {proto} --dport {host_port} -j CNI-HOSTPORT-SETMARK\n");
            text += &format!("{chain} {host_ip}-p {proto} -m {proto} --dport {host_port} -j DNAT --to-destination {pod}:{port}\n");
        }
        text
    }

    #[test]
    fn the_upstream_shape_is_read_whole_and_removed_with_both_jumps() {
        let snapshot = node(Backend::Legacy, &upstream_shape("10.0.0.2"));
        // Its pod is live: nothing, also with the pod network named.
        let mut with_network = settings();
        with_network.pod_networks = vec!["test".into()];
        let owner = |ip: IpAddr| (ip.to_string() == "10.0.0.2").then(|| "ns/web".to_string());
        let live = Pods {
            owner: &owner,
            known: true,
        };
        assert_eq!(detect(&snapshot, &with_network, &live), vec![]);
        // Gone: reported with every port, and both jumps go with the chain.
        let nobody = |_: IpAddr| None;
        let gone = Pods {
            owner: &nobody,
            known: true,
        };
        let findings = detect(&snapshot, &with_network, &gone);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.evidence["network"], "test");
        assert_eq!(f.evidence["ports"].as_array().unwrap().len(), 5);
        assert_eq!(
            f.evidence["ports"][4],
            json!({"protocol": "tcp", "hostPort": 8083, "hostIp": "192.168.0.2", "to": "10.0.0.2:83"})
        );
        assert_eq!(
            f.evidence["ports"][2],
            json!({"protocol": "udp", "hostPort": 8080, "hostIp": null, "to": "10.0.0.2:81"})
        );
        let Some(FixAction::RemoveRules { rules, .. }) = &f.proposal.as_ref().unwrap().action
        else {
            panic!("{f:?}")
        };
        assert_eq!(rules.len(), 2, "{rules:#?}");
        assert!(rules[0].spec.starts_with("-p tcp"), "{}", rules[0].spec);
        assert!(rules[1].spec.starts_with("-p udp"), "{}", rules[1].spec);
        // Without a network seen with a pod nor named, the same chain is left alone.
        assert_eq!(detect(&snapshot, &settings(), &gone), vec![]);
    }

    #[test]
    fn settings_default_and_validate() {
        let config = Config::default();
        assert_eq!(HostportStale.persist_for(&config), Duration::from_secs(120));
        assert!(
            !config
                .fix_section(FixId::REMOVE_STALE_HOSTPORT)
                .guard
                .enabled
        );
        assert!(settings().pod_networks.is_empty());
        let parsed = HostportStale
            .parse_settings(json!({"staleAfter": "5m", "podNetworks": ["k8s-pod-network"]}))
            .unwrap();
        let parsed = parsed.get::<HostportStaleSettings>();
        assert_eq!(parsed.stale_after, Duration::from_secs(300));
        assert_eq!(parsed.pod_networks, vec!["k8s-pod-network"]);
        let error = HostportStale
            .parse_settings(json!({"podNetworks": ["ok", ""]}))
            .unwrap_err();
        assert!(error.to_string().contains("podNetworks[1]"), "{error}");
        assert!(HostportStale
            .parse_settings(json!({"stale": "1m"}))
            .is_err());
    }
}
