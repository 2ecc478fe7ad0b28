//! The CNI portmap plugin's hostPort plumbing, read back from the `nat` tables: per `CNI-DN-*`
//! chain, the container that owns it (from the jump's `dnat name: "<network>" id: "<id>"`
//! comment), where it is jumped to from `CNI-HOSTPORT-DNAT` (in order: for one host port only
//! the first jump is live), and the host ports it sends to which pod address. And which of those
//! chains are stale: their pod address belongs to no pod on this node, or a chain earlier in
//! `CNI-HOSTPORT-DNAT` already takes every one of their host ports. Pure: the pods come from the
//! caller.
//!
//! The plugin writes, per container (iptables mode of `plugins/meta/portmap`):
//! `-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: ..." -m multiport --dports 80,443
//! -j CNI-DN-<hash>`, and in `CNI-DN-<hash>` per host port the SETMARK rules for hairpin and
//! local traffic, then `-p tcp --dport 80 -j DNAT --to-destination <pod>:<port>` (with `-d <host
//! IP>` when the hostPort names one).

use crate::model::ruleset::{Action, Direction, Family, Match, Rule, Ruleset, Table, TableId};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// The chain portmap jumps to every container's chain from.
pub const DISPATCH_CHAIN: &str = "CNI-HOSTPORT-DNAT";

/// One host port a container chain DNATs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostPort {
    pub protocol: u8,
    pub port: u16,
    /// The host address the hostPort is bound to, when it names one.
    pub host_ip: Option<IpAddr>,
}

/// One `CNI-DN-*` chain and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerChain {
    pub table: TableId,
    pub chain: String,
    /// CNI network name and container (sandbox) id, from the jump's comment.
    pub network: String,
    pub container_id: String,
    /// Positions (0-based) of the jumps to it in `CNI-HOSTPORT-DNAT`.
    pub jump_positions: Vec<usize>,
    /// Host ports and where each is sent.
    pub ports: Vec<(HostPort, SocketAddr)>,
}

impl ContainerChain {
    /// The pod addresses this chain sends traffic to.
    pub fn pod_ips(&self) -> BTreeSet<IpAddr> {
        self.ports.iter().map(|(_, to)| to.ip()).collect()
    }

    fn first_jump(&self) -> usize {
        self.jump_positions
            .iter()
            .copied()
            .min()
            .unwrap_or(usize::MAX)
    }
}

/// Every portmap container chain reached from `CNI-HOSTPORT-DNAT` in `ruleset`'s `nat` tables.
pub fn container_chains(ruleset: &Ruleset) -> Vec<ContainerChain> {
    ruleset
        .tables
        .iter()
        .flat_map(table_container_chains)
        .collect()
}

/// The portmap container chains of one table (none unless it is an `ip` or `ip6` `nat` table).
pub fn table_container_chains(table: &Table) -> Vec<ContainerChain> {
    let mut out = Vec::new();
    if table.id.name == "nat" && matches!(table.id.family, Family::Ip | Family::Ip6) {
        read_table(table, &mut out);
    }
    out
}

fn read_table(table: &Table, out: &mut Vec<ContainerChain>) {
    let Some(dispatch) = table.chain(DISPATCH_CHAIN) else {
        return;
    };
    // The `CNI-DN-*` chains by name: the only jump targets read here (an index of every chain
    // cost more than the rest of this read on 30,000-chain tables). A repeated name resolves to
    // its last chain, as in the jump graph.
    let container_chains: HashMap<&str, usize> = table
        .chains
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name.starts_with("CNI-DN-"))
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (position, rule) in dispatch.rules.iter().enumerate() {
        let Some(owner) = rule.comment.as_deref().and_then(cni_owner) else {
            continue;
        };
        for target in jump_targets(table, rule) {
            let Some(&index) = container_chains.get(target) else {
                continue;
            };
            let chain = &table.chains[index];
            if let Some(&known) = seen.get(chain.name.as_str()) {
                out[known].jump_positions.push(position);
                continue;
            }
            seen.insert(&chain.name, out.len());
            let ports = chain
                .rules
                .iter()
                .filter_map(|rule| {
                    let Action::Dnat { range } = &rule.action else {
                        return None;
                    };
                    let (first, last) = range.addresses?;
                    let to_port = range.ports.map(|p| p.first)?;
                    if first != last {
                        return None;
                    }
                    let mut protocol = None;
                    let mut port = None;
                    let mut host_ip = None;
                    for m in &rule.matches {
                        match m {
                            Match::L4Proto {
                                proto,
                                negated: false,
                            } => protocol = Some(*proto),
                            Match::Ports {
                                direction: Direction::Destination,
                                ranges,
                                negated: false,
                            } if ranges.len() == 1 && ranges[0].first == ranges[0].last => {
                                port = Some(ranges[0].first)
                            }
                            Match::Address {
                                direction: Direction::Destination,
                                cidr,
                                negated: false,
                            } if cidr.prefix == if cidr.addr.is_ipv4() { 32 } else { 128 } => {
                                host_ip = Some(cidr.addr)
                            }
                            _ => {}
                        }
                    }
                    Some((
                        HostPort {
                            protocol: protocol?,
                            port: port?,
                            host_ip,
                        },
                        SocketAddr::new(first, to_port),
                    ))
                })
                .collect();
            out.push(ContainerChain {
                table: table.id.clone(),
                chain: chain.name.clone(),
                network: owner.0.clone(),
                container_id: owner.1.clone(),
                jump_positions: vec![position],
                ports,
            });
        }
    }
}

/// The chain names a rule continues into: its jump or goto, or every verdict of its map (in the
/// map's order), as [`crate::model::graph::TableGraph::edges`] follows them.
fn jump_targets<'t>(table: &'t Table, rule: &'t Rule) -> Vec<&'t str> {
    match &rule.action {
        Action::Verdict { verdict } => verdict.target_chain().into_iter().collect(),
        Action::VerdictMap { set, .. } => table
            .sets
            .get(set)
            .into_iter()
            .flat_map(|s| &s.elements)
            .filter_map(|e| e.verdict.as_ref()?.target_chain())
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses portmap's comment `dnat name: "cbr0" id: "<container id>"`.
pub fn cni_owner(comment: &str) -> Option<(String, String)> {
    let rest = comment.strip_prefix("dnat name: \"")?;
    let (network, rest) = rest.split_once('"')?;
    let rest = rest.trim_start().strip_prefix("id: \"")?;
    let (id, _) = rest.split_once('"')?;
    Some((network.to_string(), id.to_string()))
}

/// Why a container chain is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Staleness {
    /// No pod on this node has the address the chain sends to (judged only with a complete view
    /// of the node's pods, and only on a pod network).
    NoPod { pod_ips: BTreeSet<IpAddr> },
    /// A chain jumped to later in `CNI-HOSTPORT-DNAT`, for the same pod address on the same CNI
    /// network, sends every host port of this one to the same place. A pod address belongs to
    /// one sandbox at a time and portmap appends each new container's jump, so the later chain
    /// is the current sandbox's and this one the left-over of an earlier one. Removing it changes
    /// where no packet goes (the later chain does the same), so this is judged without the pods.
    Superseded { by: String },
}

/// A stale chain, and the live pod's chains it keeps from working (chains later in
/// `CNI-HOSTPORT-DNAT` that want one of its host ports and send elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleChain {
    pub chain: ContainerChain,
    pub why: Staleness,
    pub shadows: Vec<String>,
}

/// What is known of the pods on this node when judging chains.
pub struct PodsOnNode<'a> {
    /// Whether some pod on this node has the address; `None` when the pods are not known (no
    /// API, the pod watch not listed yet or failing): then only superseded chains are judged.
    pub has_pod: Option<&'a dyn Fn(IpAddr) -> bool>,
    /// CNI network names whose chains belong to pods. Besides these, a network counts as a pod
    /// network when one of its chains sends to a pod of this node: a chain of a network never
    /// seen with a pod (another container runtime using portmap on the node) is not judged.
    pub networks: &'a [String],
}

fn same_port(a: &HostPort, b: &HostPort) -> bool {
    a.protocol == b.protocol
        && a.port == b.port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// The stale chains among `chains` (as [`container_chains`] read them), judged with `pods`.
/// Linear in the chains but for the shadows of the chains found without a pod.
pub fn stale_chains(chains: &[ContainerChain], pods: &PodsOnNode<'_>) -> Vec<StaleChain> {
    let addresses: Vec<BTreeSet<IpAddr>> = chains.iter().map(ContainerChain::pod_ips).collect();
    let live: Vec<Option<bool>> = addresses
        .iter()
        .map(|ips| {
            pods.has_pod
                .map(|has_pod| ips.iter().any(|ip| has_pod(*ip)))
        })
        .collect();
    let pod_networks: BTreeSet<&str> = pods
        .networks
        .iter()
        .map(String::as_str)
        .chain(
            chains
                .iter()
                .zip(&live)
                .filter(|(_, live)| **live == Some(true))
                .map(|(c, _)| c.network.as_str()),
        )
        .collect();
    // The chains of each table, network and pod address, in jump order.
    type Key<'c> = (&'c TableId, &'c str, &'c BTreeSet<IpAddr>);
    let mut by_address: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    for (i, chain) in chains.iter().enumerate() {
        by_address
            .entry((&chain.table, &chain.network, &addresses[i]))
            .or_default()
            .push(i);
    }
    for same in by_address.values_mut() {
        same.sort_by_key(|&i| chains[i].first_jump());
    }
    let mut out = Vec::new();
    for (i, chain) in chains.iter().enumerate() {
        if chain.ports.is_empty() {
            continue;
        }
        if live[i] == Some(false) && pod_networks.contains(chain.network.as_str()) {
            let shadows = chains
                .iter()
                .filter(|later| later.table == chain.table && later.chain != chain.chain)
                .filter(|later| later.first_jump() > chain.first_jump())
                .filter(|later| {
                    later.ports.iter().any(|(p, to)| {
                        chain
                            .ports
                            .iter()
                            .any(|(q, to2)| same_port(p, q) && to != to2)
                    })
                })
                .map(|later| later.chain.clone())
                .collect();
            out.push(StaleChain {
                chain: chain.clone(),
                why: Staleness::NoPod {
                    pod_ips: addresses[i].clone(),
                },
                shadows,
            });
            continue;
        }
        let superseded_by = by_address[&(&chain.table, chain.network.as_str(), &addresses[i])]
            .iter()
            .map(|&j| &chains[j])
            .filter(|later| later.chain != chain.chain && later.first_jump() > chain.first_jump())
            .find(|later| {
                chain
                    .ports
                    .iter()
                    .all(|mapping| later.ports.contains(mapping))
            });
        if let Some(later) = superseded_by {
            out.push(StaleChain {
                chain: chain.clone(),
                why: Staleness::Superseded {
                    by: later.chain.clone(),
                },
                shadows: Vec::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::iptables_table;
    use crate::model::ruleset::Backend;

    /// A dead pod's chain (10.42.0.5, host port 8080) left first in `CNI-HOSTPORT-DNAT`, the new
    /// pod's chain for the same host port behind it, and an unrelated live pod on 9000.
    const LEFT_BEHIND: &str = r#"
:PREROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-DN-dead00000000000000000 - [0:0]
:CNI-DN-new000000000000000000 - [0:0]
:CNI-DN-other0000000000000000 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"deadbeef\"" -m multiport --dports 8080 -j CNI-DN-dead00000000000000000
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"c0ffee\"" -m multiport --dports 8080 -j CNI-DN-new000000000000000000
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"abc123\"" -m multiport --dports 9000 -j CNI-DN-other0000000000000000
-A CNI-DN-dead00000000000000000 -s 10.42.0.0/24 -p tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-dead00000000000000000 -p tcp --dport 8080 -j DNAT --to-destination 10.42.0.5:80
-A CNI-DN-new000000000000000000 -s 10.42.0.0/24 -p tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-new000000000000000000 -p tcp --dport 8080 -j DNAT --to-destination 10.42.0.17:80
-A CNI-DN-other0000000000000000 -p tcp -d 192.168.1.10/32 --dport 9000 -j DNAT --to-destination 10.42.0.9:9000
"#;

    fn ruleset(text: &str) -> Ruleset {
        Ruleset {
            tables: vec![iptables_table(Backend::Legacy, "nat", text)],
            generation: None,
        }
    }

    fn pods(list: &'static [&'static str]) -> impl Fn(IpAddr) -> bool {
        move |ip| list.iter().any(|p| p.parse::<IpAddr>().unwrap() == ip)
    }

    fn judge(chains: &[ContainerChain], live: &'static [&'static str]) -> Vec<StaleChain> {
        let has_pod = pods(live);
        stale_chains(
            chains,
            &PodsOnNode {
                has_pod: Some(&has_pod),
                networks: &[],
            },
        )
    }

    fn judge_without_pods(chains: &[ContainerChain]) -> Vec<StaleChain> {
        stale_chains(
            chains,
            &PodsOnNode {
                has_pod: None,
                networks: &[],
            },
        )
    }

    #[test]
    fn reads_each_container_chain_with_its_owner_jumps_and_ports() {
        let chains = container_chains(&ruleset(LEFT_BEHIND));
        assert_eq!(chains.len(), 3);
        let other = &chains[2];
        assert_eq!(other.chain, "CNI-DN-other0000000000000000");
        assert_eq!(
            (other.network.as_str(), other.container_id.as_str()),
            ("cbr0", "abc123")
        );
        assert_eq!(other.jump_positions, vec![2]);
        assert_eq!(
            other.ports,
            vec![(
                HostPort {
                    protocol: 6,
                    port: 9000,
                    host_ip: Some("192.168.1.10".parse().unwrap())
                },
                "10.42.0.9:9000".parse().unwrap()
            )]
        );
    }

    #[test]
    fn a_dead_pods_chain_is_stale_and_names_the_live_chain_it_shadows() {
        let chains = container_chains(&ruleset(LEFT_BEHIND));
        let stale = judge(&chains, &["10.42.0.17", "10.42.0.9"]);
        assert_eq!(stale.len(), 1, "{stale:#?}");
        assert_eq!(stale[0].chain.chain, "CNI-DN-dead00000000000000000");
        assert!(matches!(stale[0].why, Staleness::NoPod { .. }));
        assert_eq!(stale[0].shadows, vec!["CNI-DN-new000000000000000000"]);
        assert_eq!(
            judge_without_pods(&chains),
            vec![],
            "without the pods a missing pod proves nothing"
        );
    }

    #[test]
    fn a_chain_of_another_network_does_not_supersede() {
        let text = LEFT_BEHIND
            .replace("10.42.0.5:80", "10.42.0.17:80")
            .replace(
                "dnat name: \\\"cbr0\\\" id: \\\"c0ffee\\\"",
                "dnat name: \\\"macvlan-net\\\" id: \\\"c0ffee\\\"",
            );
        let chains = container_chains(&ruleset(&text));
        assert_eq!(chains[1].network, "macvlan-net");
        assert_eq!(judge_without_pods(&chains), vec![]);
    }

    #[test]
    fn a_network_never_seen_with_a_pod_is_not_judged_unless_named() {
        let text = LEFT_BEHIND.replace(
            "dnat name: \\\"cbr0\\\" id: \\\"deadbeef\\\"",
            "dnat name: \\\"podman\\\" id: \\\"deadbeef\\\"",
        );
        let chains = container_chains(&ruleset(&text));
        assert_eq!(chains[0].network, "podman");
        assert_eq!(judge(&chains, &["10.42.0.17", "10.42.0.9"]), vec![]);
        let has_pod = pods(&["10.42.0.17", "10.42.0.9"]);
        let named = stale_chains(
            &chains,
            &PodsOnNode {
                has_pod: Some(&has_pod),
                networks: &["podman".to_string()],
            },
        );
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].chain.chain, "CNI-DN-dead00000000000000000");
    }

    #[test]
    fn every_live_pods_chain_is_kept() {
        let chains = container_chains(&ruleset(LEFT_BEHIND));
        let stale = judge(&chains, &["10.42.0.5", "10.42.0.17", "10.42.0.9"]);
        assert_eq!(
            stale,
            vec![],
            "two live pods wanting one host port is a conflict, not a left-over"
        );
    }

    #[test]
    fn the_older_of_two_chains_to_the_same_pod_address_is_superseded() {
        // The address went from the first sandbox to the second: the first chain still takes
        // the traffic (same target), the second is the current sandbox's.
        let text = LEFT_BEHIND.replace("10.42.0.5:80", "10.42.0.17:80");
        let chains = container_chains(&ruleset(&text));
        for stale in [
            judge(&chains, &["10.42.0.17", "10.42.0.9"]),
            judge_without_pods(&chains),
        ] {
            assert_eq!(stale.len(), 1, "{stale:#?}");
            assert_eq!(stale[0].chain.chain, "CNI-DN-dead00000000000000000");
            assert_eq!(
                stale[0].why,
                Staleness::Superseded {
                    by: "CNI-DN-new000000000000000000".into()
                }
            );
        }
    }

    #[test]
    fn a_chain_is_superseded_only_when_the_later_one_does_all_it_does() {
        // Same pod address, another container port: removing the first would move traffic.
        let text = LEFT_BEHIND.replace("10.42.0.5:80", "10.42.0.17:8080");
        let chains = container_chains(&ruleset(&text));
        assert_eq!(judge_without_pods(&chains), vec![]);
        assert_eq!(judge(&chains, &["10.42.0.17", "10.42.0.9"]), vec![]);
        // The later chain does more (one more host port): the earlier is still superseded, and
        // the later one is never judged superseded by an earlier one.
        let text = LEFT_BEHIND.replace("10.42.0.5:80", "10.42.0.17:80").replace(
            "-A CNI-DN-new000000000000000000 -p tcp --dport 8080 -j DNAT --to-destination 10.42.0.17:80",
            "-A CNI-DN-new000000000000000000 -p tcp --dport 8080 -j DNAT --to-destination 10.42.0.17:80\n-A CNI-DN-new000000000000000000 -p tcp --dport 8443 -j DNAT --to-destination 10.42.0.17:443",
        );
        let chains = container_chains(&ruleset(&text));
        let stale = judge_without_pods(&chains);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].chain.chain, "CNI-DN-dead00000000000000000");
    }

    #[test]
    fn no_portmap_no_chains_and_foreign_comments_are_ignored() {
        assert!(container_chains(&ruleset(":PREROUTING ACCEPT [0:0]")).is_empty());
        let text = LEFT_BEHIND.replace(
            "dnat name: \\\"cbr0\\\" id: \\\"abc123\\\"",
            "something else",
        );
        assert_eq!(container_chains(&ruleset(&text)).len(), 2);
        assert_eq!(
            cni_owner("dnat name: \"cbr0\" id: \"x\""),
            Some(("cbr0".into(), "x".into()))
        );
        assert_eq!(cni_owner("dnat name: cbr0"), None);
    }
}
