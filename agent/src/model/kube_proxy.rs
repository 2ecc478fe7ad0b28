//! What kube-proxy programmed on this node, read back from its rules: per Service port, the
//! endpoints its rules send new connections to. The check that compares this with the cluster's
//! EndpointSlices (`kube-proxy-endpoint-drift`) reads it; so can anything else that needs to know
//! which Services a node serves. Pure: no I/O.
//!
//! Both kube-proxy modes that write rules are read:
//! - **iptables mode** (`nat` tables, either backend): a `KUBE-SVC-*` or `KUBE-SVL-*` chain per
//!   Service port jumps to one `KUBE-SEP-*` chain per endpoint, whose DNAT carries the Service
//!   port's name in its comment (`namespace/name:port`, or `namespace/name` for an unnamed port).
//!   A Service port without endpoints has no chain of its own: a REJECT commented
//!   `namespace/name:port has no endpoints` in the `filter` table's `KUBE-SERVICES` or
//!   `KUBE-EXTERNAL-SERVICES`.
//!   Only `KUBE-SEP-*` chains some service chain still jumps to count: a left-over endpoint chain
//!   carries no traffic.
//! - **nftables mode** (table `kube-proxy`, families `ip` and `ip6`): a chain
//!   `service-<hash>-<namespace>/<name>/<protocol>/<port>` picks one chain
//!   `endpoint-<hash>-<namespace>/<name>/<protocol>/<port>__<address>/<port>` through a `numgen`
//!   verdict map; the endpoint chain's DNAT gives the address, its name the fallback.
//!
//! IPVS mode programs no per-endpoint rules (the endpoints are IPVS real servers): it is not read
//! here, and [`ProgrammedServices::mode`] says which mode was found.

use crate::model::graph::TableGraph;
use crate::model::ruleset::{Action, Family, Match, Rule, Ruleset, Table};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A Service port as kube-proxy names it: `namespace/name:port` plus the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name in the Service (empty for an unnamed single port).
    pub port: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// Which kube-proxy mode the rules come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

/// The Service ports one mode's rules program, each with its endpoints (empty: the Service port is
/// programmed to reject, it has no endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgrammedServices {
    pub mode: Option<ProxyMode>,
    pub services: BTreeMap<ServicePort, BTreeSet<SocketAddr>>,
}

impl ProgrammedServices {
    fn add(&mut self, mode: ProxyMode, port: ServicePort, endpoint: Option<SocketAddr>) {
        self.mode = Some(mode);
        let endpoints = self.services.entry(port).or_default();
        if let Some(endpoint) = endpoint {
            endpoints.insert(endpoint);
        }
    }
}

/// Reads every Service port kube-proxy programmed in `ruleset` (one backend's tables).
pub fn programmed_services(ruleset: &Ruleset) -> ProgrammedServices {
    let mut found = ProgrammedServices::default();
    for table in &ruleset.tables {
        let family_ok = matches!(table.id.family, Family::Ip | Family::Ip6);
        if !family_ok {
            continue;
        }
        match table.id.name.as_str() {
            "nat" => read_iptables_mode(table, &mut found),
            "filter" => read_rejected_service_ports(table, &mut found),
            "kube-proxy" => read_nftables_mode(table, &mut found),
            _ => {}
        }
    }
    found
}

fn protocol_name(number: u8) -> Option<&'static str> {
    Some(match number {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => return None,
    })
}

fn rule_protocol(rule: &Rule) -> Option<&'static str> {
    rule.matches.iter().find_map(|m| match m {
        Match::L4Proto {
            proto,
            negated: false,
        } => protocol_name(*proto),
        _ => None,
    })
}

/// `namespace/name:port` or `namespace/name` (kube-proxy's `ServicePortName` text).
fn parse_port_name(text: &str, protocol: &str) -> Option<ServicePort> {
    let (namespace, rest) = text.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    let (name, port) = match rest.split_once(':') {
        Some((name, port)) if valid(port) => (name, port),
        Some(_) => return None,
        None => (rest, ""),
    };
    if !valid(namespace) || !valid(name) {
        return None;
    }
    Some(ServicePort {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port: port.to_string(),
        protocol: protocol.to_string(),
    })
}

fn dnat_endpoint(rule: &Rule) -> Option<SocketAddr> {
    match &rule.action {
        Action::Dnat { range } => {
            let (first, last) = range.addresses?;
            let ports = range.ports?;
            (first == last && ports.first == ports.last)
                .then(|| SocketAddr::new(first, ports.first))
        }
        _ => None,
    }
}

fn read_iptables_mode(table: &Table, found: &mut ProgrammedServices) {
    let graph = TableGraph::new(table);
    for chain in &table.chains {
        let service_chain =
            chain.name.starts_with("KUBE-SVC-") || chain.name.starts_with("KUBE-SVL-");
        if service_chain {
            for rule in &chain.rules {
                for edge in graph.edges(rule) {
                    let endpoint_chain = graph.chain(edge.target);
                    if !endpoint_chain.name.starts_with("KUBE-SEP-") {
                        continue;
                    }
                    for sep_rule in &endpoint_chain.rules {
                        let Some(endpoint) = dnat_endpoint(sep_rule) else {
                            continue;
                        };
                        let port = sep_rule
                            .comment
                            .as_deref()
                            .and_then(|comment| parse_port_name(comment, rule_protocol(sep_rule)?));
                        if let Some(port) = port {
                            found.add(ProxyMode::Iptables, port, Some(endpoint));
                        }
                    }
                }
            }
        }
    }
}

/// The Service ports kube-proxy rejects because they have no endpoints.
fn read_rejected_service_ports(table: &Table, found: &mut ProgrammedServices) {
    for chain in &table.chains {
        if chain.name == "KUBE-SERVICES" || chain.name == "KUBE-EXTERNAL-SERVICES" {
            for rule in &chain.rules {
                let port = rule.comment.as_deref().and_then(|comment| {
                    let text = comment.strip_suffix(" has no endpoints")?;
                    parse_port_name(text, rule_protocol(rule)?)
                });
                if let Some(port) = port {
                    found.add(ProxyMode::Iptables, port, None);
                }
            }
        }
    }
}

/// `<namespace>/<name>/<protocol>/<port>` after the `service-<hash>-`/`endpoint-<hash>-` prefix.
fn parse_nft_service(text: &str) -> Option<ServicePort> {
    let mut parts = text.splitn(4, '/');
    let namespace = parts.next()?;
    let name = parts.next()?;
    let protocol = parts.next()?;
    let port = parts.next()?;
    if !matches!(protocol, "tcp" | "udp" | "sctp") {
        return None;
    }
    let joined = if port.is_empty() {
        format!("{namespace}/{name}")
    } else {
        format!("{namespace}/{name}:{port}")
    };
    parse_port_name(&joined, protocol)
}

/// Strips `<prefix><8-character hash>-` from a kube-proxy nftables chain name.
fn strip_hashed_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    let (hash, rest) = rest.split_once('-')?;
    (!hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric())).then_some(rest)
}

/// The endpoint a kube-proxy nftables endpoint chain's name gives: `...__<address>/<port>`.
fn endpoint_from_chain_name(name: &str) -> Option<SocketAddr> {
    let (_, endpoint) = name.rsplit_once("__")?;
    let (address, port) = endpoint.rsplit_once('/')?;
    Some(SocketAddr::new(
        address.parse::<IpAddr>().ok()?,
        port.parse().ok()?,
    ))
}

fn read_nftables_mode(table: &Table, found: &mut ProgrammedServices) {
    let graph = TableGraph::new(table);
    for chain in &table.chains {
        let Some(service) =
            strip_hashed_prefix(&chain.name, "service-").and_then(parse_nft_service)
        else {
            continue;
        };
        let mut any = false;
        for rule in &chain.rules {
            for edge in graph.edges(rule) {
                let endpoint_chain = graph.chain(edge.target);
                if strip_hashed_prefix(&endpoint_chain.name, "endpoint-").is_none() {
                    continue;
                }
                let endpoint = endpoint_chain
                    .rules
                    .iter()
                    .find_map(dnat_endpoint)
                    .or_else(|| endpoint_from_chain_name(&endpoint_chain.name));
                if let Some(endpoint) = endpoint {
                    any = true;
                    found.add(ProxyMode::Nftables, service.clone(), Some(endpoint));
                }
            }
        }
        if !any {
            found.add(ProxyMode::Nftables, service, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::iptables_table;
    use crate::model::ruleset::{
        Backend, Chain, KeyValue, NatRange, PortRange, Set, SetDataType, SetElement, TableId,
        Verdict,
    };

    fn port(ns: &str, name: &str, port: &str, protocol: &str) -> ServicePort {
        ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol: protocol.into(),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// kube-proxy iptables mode as it writes a Service with two endpoints, one with one endpoint,
    /// one without endpoints, and a left-over endpoint chain nothing jumps to.
    const IPTABLES_MODE: &str = r#"
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-LEFTOVERLEFTOVER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.5:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.7:8080" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 192.168.1.10:6443" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -s 10.244.1.5/32 -m comment --comment "ns1/svc1:p80" -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -s 10.244.2.7/32 -m comment --comment "ns1/svc1:p80" -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.244.2.7:8080
-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 192.168.1.10:6443
-A KUBE-SEP-LEFTOVERLEFTOVER -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.244.9.9:8080
"#;

    /// The `filter` table's side: a Service port without endpoints is rejected there.
    const IPTABLES_MODE_FILTER: &str = r#"
:INPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.40/32 -p udp -m comment --comment "ns1/empty has no endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp --dport 30080 -j DROP
"#;

    fn ruleset(tables: Vec<Table>) -> Ruleset {
        Ruleset {
            tables,
            generation: None,
        }
    }

    #[test]
    fn iptables_mode_reads_each_service_ports_live_endpoints() {
        let table = iptables_table(Backend::Legacy, "nat", IPTABLES_MODE);
        let filter = iptables_table(Backend::Legacy, "filter", IPTABLES_MODE_FILTER);
        let found = programmed_services(&ruleset(vec![table, filter]));
        assert_eq!(found.mode, Some(ProxyMode::Iptables));
        let svc1 = &found.services[&port("ns1", "svc1", "p80", "tcp")];
        assert_eq!(
            svc1.iter().copied().collect::<Vec<_>>(),
            vec![addr("10.244.1.5:8080"), addr("10.244.2.7:8080")],
            "the left-over KUBE-SEP chain nothing jumps to is not an endpoint"
        );
        assert_eq!(
            found.services[&port("default", "kubernetes", "https", "tcp")],
            BTreeSet::from([addr("192.168.1.10:6443")])
        );
        assert!(
            found.services[&port("ns1", "empty", "", "udp")].is_empty(),
            "a Service port without endpoints is programmed, with none; \
             `has no local endpoints` (an external-traffic rule) says nothing of the endpoints"
        );
        assert_eq!(found.services.len(), 3);
    }

    #[test]
    fn tables_of_other_owners_and_families_are_not_read() {
        let mut table = iptables_table(Backend::Nft, "nat", IPTABLES_MODE);
        table.id.family = Family::Inet;
        let found = programmed_services(&ruleset(vec![table]));
        assert_eq!(found, ProgrammedServices::default());
        let filter = iptables_table(Backend::Nft, "filter", ":INPUT ACCEPT [0:0]");
        assert_eq!(
            programmed_services(&ruleset(vec![filter])),
            ProgrammedServices::default()
        );
    }

    #[test]
    fn port_names_are_read_as_kube_proxy_writes_them() {
        assert_eq!(
            parse_port_name("kube-system/kube-dns:dns-tcp", "tcp"),
            Some(port("kube-system", "kube-dns", "dns-tcp", "tcp"))
        );
        assert_eq!(
            parse_port_name("ns/svc", "udp"),
            Some(port("ns", "svc", "", "udp"))
        );
        for bad in [
            "",
            "nons",
            "ns/",
            "/svc",
            "ns/svc:",
            "ns/s vc:p",
            "kubernetes service portals",
        ] {
            assert_eq!(parse_port_name(bad, "tcp"), None, "{bad:?}");
        }
    }

    fn chain(name: &str, rules: Vec<Rule>) -> Chain {
        Chain {
            name: name.into(),
            handle: 0,
            base: None,
            rules,
        }
    }

    fn rule(action: Action) -> Rule {
        Rule {
            handle: 1,
            matches: Vec::new(),
            action,
            comment: None,
            counters: None,
        }
    }

    fn dnat(ip: &str, port: u16) -> Action {
        let ip: IpAddr = ip.parse().unwrap();
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip, ip)),
                ports: Some(PortRange::single(port)),
            },
        }
    }

    /// kube-proxy nftables mode, shaped as `nft list table ip kube-proxy` shows it: a service
    /// chain with a `numgen random mod 2 vmap` over two endpoint chains, one service chain whose
    /// endpoint chain has lost its DNAT (the name still gives the address), and an IPv6 one.
    #[test]
    fn nftables_mode_reads_service_chains_through_their_verdict_maps() {
        let svc = "service-ULMVA6XW-ns1/svc1/tcp/p80";
        let ep1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.244.1.5/8080";
        let ep2 = "endpoint-ZCVPJPZB-ns1/svc1/tcp/p80__10.244.2.7/8080";
        let element = |key: u32, target: &str| SetElement {
            key: vec![KeyValue::Raw(key.to_ne_bytes().to_vec())],
            key_end: None,
            verdict: Some(Verdict::Goto(target.to_string())),
        };
        let map = Set {
            name: "__map0".into(),
            anonymous: true,
            key_types: vec![SetDataType::Integer],
            is_verdict_map: true,
            interval: false,
            elements: vec![element(0, ep1), element(1, ep2)],
        };
        let unnamed = "service-AAAABBBB-ns2/plain/udp/";
        let unnamed_ep = "endpoint-CCCCDDDD-ns2/plain/udp/__fd00::5/53";
        let table = Table {
            id: TableId {
                backend: Backend::Nft,
                family: Family::Ip,
                name: "kube-proxy".into(),
            },
            handle: 1,
            chains: vec![
                chain(
                    svc,
                    vec![rule(Action::VerdictMap {
                        set: "__map0".into(),
                        key: vec![crate::model::ruleset::Field::Numgen],
                    })],
                ),
                chain(ep1, vec![rule(dnat("10.244.1.5", 8080))]),
                chain(ep2, vec![rule(dnat("10.244.2.7", 8080))]),
                chain(
                    unnamed,
                    vec![rule(Action::Verdict {
                        verdict: Verdict::Goto(unnamed_ep.into()),
                    })],
                ),
                chain(unnamed_ep, vec![]),
                chain("service-EEEEFFFF-ns3/idle/tcp/http", vec![]),
            ],
            sets: BTreeMap::from([("__map0".to_string(), map)]),
        };
        let found = programmed_services(&ruleset(vec![table]));
        assert_eq!(found.mode, Some(ProxyMode::Nftables));
        assert_eq!(
            found.services[&port("ns1", "svc1", "p80", "tcp")],
            BTreeSet::from([addr("10.244.1.5:8080"), addr("10.244.2.7:8080")])
        );
        assert_eq!(
            found.services[&port("ns2", "plain", "", "udp")],
            BTreeSet::from([addr("[fd00::5]:53")])
        );
        assert!(found.services[&port("ns3", "idle", "http", "tcp")].is_empty());
    }

    #[test]
    fn nftables_chain_names_are_read_strictly() {
        assert_eq!(
            strip_hashed_prefix("service-ULMVA6XW-ns1/svc1/tcp/p80", "service-"),
            Some("ns1/svc1/tcp/p80")
        );
        assert_eq!(strip_hashed_prefix("services-check", "service-"), None);
        assert_eq!(parse_nft_service("ns1/svc1/icmp/p80"), None);
        assert_eq!(
            endpoint_from_chain_name("endpoint-X-ns/s/tcp/p__10.0.0.1/80"),
            Some(addr("10.0.0.1:80"))
        );
        assert_eq!(endpoint_from_chain_name("endpoint-X-ns/s/tcp/p"), None);
    }
}
