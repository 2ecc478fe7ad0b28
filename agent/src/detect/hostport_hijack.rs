//! Check `hostport-hijack`: a DNAT or REDIRECT reachable from a nat hook (prerouting or output)
//! that captures a protected TCP destination of the node and sends it elsewhere — the k3s
//! ServiceLB/portmap incident where a LoadBalancer Service on 6443 took the API server away.
//!
//! What is protected, as (port, destination address) pairs:
//! - the configured ports, on every address of the node;
//! - a port a host process listens on, on the addresses the socket is bound to (`0.0.0.0` = every
//!   IPv4 address, `::` = every address, `127.0.0.1` = loopback only). Loopback destinations are
//!   reachable only from the node itself, so they count in the output hook and not in prerouting;
//! - the API server's Service address and port as kube-proxy programs it (the
//!   `default/kubernetes:https` ClusterIP of the iptables comment or of the nftables-mode service
//!   map, or the pod environment's `KUBERNETES_SERVICE_HOST`). In IPVS mode that address sits on
//!   `kube-ipvs0`, so it is local and a `--dst-type LOCAL` hostPort DNAT captures it.
//!
//! A DNAT whose own publisher is the listener is not a hijack: docker-proxy and the DOCKER chain's
//! DNAT to the same container address (docker-proxy's `-host-port -container-ip -container-port`
//! arguments say which), kube-proxy's port holders and its own rules, rootless port drivers
//! (rootlesskit, slirp4netns, rootlessport) and the DOCKER chain of the engine they serve.
//!
//! The search walks every path from the nat base chains, carrying what the path still allows of a
//! protected packet. A path is dropped as soon as it can no longer carry one: kube-proxy's
//! ClusterIP rules (`-d 10.43.x.y`) end there at once, which keeps the walk linear on
//! 10,000-service rulesets.
//!
//! Proposes `remove-hijack-rule` only for what netmend knows how to mend: CNI portmap plumbing
//! (a `CNI-DN-*` chain reached through a jump carrying portmap's `dnat name: "..." id: "..."`
//! comment) and rules matching `fixes.remove-hijack-rule.owners`. For a portmap chain only the
//! hijacked ports' rules go, and the jump's `multiport --dports` list is narrowed to the pod's other
//! host ports; when none remains, the jumps and the chain go. Anything else (Docker, kube-proxy,
//! unknown) is reported with the fix blocked and why.
//!
//! The longest check, on purpose: the path walk from the nat hooks, what is protected (ports, bound
//! addresses, the API Service address), who published a DNAT and the fix plan (portmap narrowing,
//! configured owners) all read the same walk state; each part is a section below, and the fix plan
//! could move out once a second check proposes `remove-hijack-rule`.

use crate::config::{ConfigError, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{
    CheckId, Finding, FixAction, FixId, FixProposal, NarrowPorts, RuleRef, Severity, TableRef,
};
use crate::model::graph::{Edge, TableGraph};
use crate::model::portmap::cni_owner;
use crate::model::render::{action_fingerprint, render_iptables, render_rule, rule_spec};
use crate::model::ruleset::{
    Action, Backend, Direction, Field, HookPoint, KeyValue, Match, NatRange, PortRange, Rule,
    SetElement, Table, Verdict,
};
use crate::model::snapshot::{NodeSnapshot, ProcessInfo};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const TCP: u8 = 6;
/// `1 << RTN_LOCAL` in xt_addrtype's bit numbering.
const ADDRTYPE_LOCAL: u16 = 1 << 2;
/// Upper bound on rule visits per table: a pathological graph is reported, never hangs a pass.
const VISIT_BUDGET: usize = 4_000_000;
/// How many jump paths a finding shows.
const MAX_PATHS: usize = 4;
/// The comment kube-proxy (iptables mode) puts on the API server Service's rule.
const KUBERNETES_SVC_COMMENT: &str = "default/kubernetes:https";
/// The part of kube-proxy's nftables-mode service chain name that names the API server Service.
const KUBERNETES_SVC_CHAIN: &str = "-default/kubernetes/tcp/https";

/// A rule's position: (chain index, rule index) in the table.
type RulePos = (usize, usize);

/// Who publishes a port when the process listening on it is a forwarder, not a service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Publisher {
    /// docker-proxy of one `docker run -p`; its DNAT lives in the DOCKER chain and goes to the
    /// container address when docker-proxy's arguments name it.
    DockerProxy { container: Option<(IpAddr, u16)> },
    /// kube-proxy (NodePort port holders) and the Service rules it programs.
    KubeProxy,
    /// A rootless engine's port driver (rootlesskit, slirp4netns, rootlessport).
    PortDriver,
}

/// Why some destinations are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    Configured,
    Listener {
        address: IpAddr,
        process: Option<ProcessInfo>,
    },
    ApiService {
        address: IpAddr,
        source: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Protection {
    reason: Reason,
    publisher: Option<Publisher>,
    /// Ports of this protection.
    ports: Vec<u16>,
    /// Destinations it covers.
    scope: Scope,
}

/// Which destinations a protection covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every address of the node.
    Every,
    /// Every IPv4 address of the node (a socket bound to 0.0.0.0).
    EveryIpv4,
    Only(Vec<IpAddr>),
}

/// Protected packets still possible on a path: every port of `ports` to every address of
/// `destinations`, protected for the protections `why` (indexes; they share one publisher and
/// one set of destinations, so that a walk carries few groups however many listeners there are).
#[derive(Debug, Clone)]
struct Group {
    ports: Vec<u16>,
    destinations: Vec<IpAddr>,
    why: Vec<usize>,
}

impl Group {
    fn alive(&self) -> bool {
        !self.ports.is_empty() && !self.destinations.is_empty()
    }
}

/// What the packets still travelling a path must look like.
#[derive(Debug, Clone)]
struct PathState {
    groups: Vec<Group>,
    /// (chain, rule) positions from the hook down to here.
    path: Vec<(usize, usize)>,
    /// Whether a verdict-map element of another owner selected this path.
    through_map: bool,
}

impl PathState {
    fn alive(&self) -> bool {
        !self.groups.is_empty()
    }

    fn narrow(&mut self, mut f: impl FnMut(&mut Group)) -> bool {
        for g in &mut self.groups {
            f(g);
        }
        self.groups.retain(Group::alive);
        self.alive()
    }

    /// Narrows the state by one match; returns false when no protected packet passes it.
    fn apply(&mut self, m: &Match, table: &Table, locals: &[IpAddr]) -> bool {
        match m {
            Match::L4Proto { proto, negated } => {
                let tcp_passes = (*proto == TCP) != *negated;
                if !tcp_passes {
                    self.groups.clear();
                }
            }
            Match::Ports {
                direction: Direction::Destination,
                ranges,
                negated,
            } => {
                return self.narrow(|g| {
                    g.ports
                        .retain(|p| ranges.iter().any(|r| r.contains(*p)) != *negated)
                });
            }
            Match::Address {
                direction: Direction::Destination,
                cidr,
                negated,
            } => {
                return self.narrow(|g| g.destinations.retain(|ip| cidr.contains(*ip) != *negated));
            }
            Match::AddrType {
                direction: Direction::Destination,
                types,
                negated,
            } => {
                let local_passes = (types & ADDRTYPE_LOCAL != 0) != *negated;
                // A non-local destination passes when the match does not ask for LOCAL alone.
                let other_passes = (types & !ADDRTYPE_LOCAL != 0) != *negated;
                return self.narrow(|g| {
                    g.destinations.retain(|ip| {
                        if locals.contains(ip) || ip.is_loopback() {
                            local_passes
                        } else {
                            other_passes
                        }
                    })
                });
            }
            Match::SetLookup { set, key, negated } => {
                if let Some(set) = table.sets.get(set) {
                    let elements = &set.elements;
                    return self.narrow(|g| apply_set(g, key, elements, *negated));
                }
            }
            _ => {}
        }
        self.alive()
    }

    /// Narrows by the key of the verdict-map element that selected an edge.
    fn apply_element(&mut self, key: &[Field], element: &SetElement) -> bool {
        for (i, field) in key.iter().enumerate() {
            match field {
                Field::Address(Direction::Destination) => {
                    self.narrow(|g| {
                        g.destinations
                            .retain(|ip| component_matches_ip(element, i, *ip))
                    });
                }
                Field::Port(Direction::Destination) => {
                    self.narrow(|g| g.ports.retain(|p| element_matches_port(element, i, *p)));
                }
                Field::L4Proto => {
                    if let Some(KeyValue::Proto(proto)) = element.key.get(i) {
                        if *proto != TCP {
                            self.groups.clear();
                        }
                    }
                }
                _ => {}
            }
        }
        self.alive()
    }
}

/// Narrows a group by membership of the key in a set's elements.
fn apply_set(g: &mut Group, key: &[Field], elements: &[SetElement], negated: bool) {
    match key {
        [Field::Address(Direction::Destination)] => {
            g.destinations
                .retain(|ip| elements.iter().any(|e| element_matches_ip(e, *ip)) != negated);
        }
        [Field::Port(Direction::Destination)] => {
            g.ports
                .retain(|p| elements.iter().any(|e| element_matches_port(e, 0, *p)) != negated);
        }
        _ => {}
    }
}

fn element_matches_ip(element: &SetElement, ip: IpAddr) -> bool {
    component_matches_ip(element, 0, ip)
}

fn component_matches_ip(element: &SetElement, i: usize, ip: IpAddr) -> bool {
    match (
        element.key.get(i),
        element.key_end.as_ref().and_then(|k| k.get(i)),
    ) {
        (Some(KeyValue::Address(start)), Some(KeyValue::Address(end))) => {
            ip_in_range(ip, start.addr, end.addr)
        }
        (Some(KeyValue::Address(cidr)), _) => cidr.contains(ip),
        // Unknown shape: keep the possibility open rather than miss a hijack.
        _ => true,
    }
}

fn ip_in_range(ip: IpAddr, start: IpAddr, end: IpAddr) -> bool {
    match (ip, start, end) {
        (IpAddr::V4(ip), IpAddr::V4(s), IpAddr::V4(e)) => s <= ip && ip <= e,
        (IpAddr::V6(ip), IpAddr::V6(s), IpAddr::V6(e)) => s <= ip && ip <= e,
        _ => false,
    }
}

fn element_matches_port(element: &SetElement, i: usize, port: u16) -> bool {
    match (
        element.key.get(i),
        element.key_end.as_ref().and_then(|k| k.get(i)),
    ) {
        (Some(KeyValue::Port(start)), Some(KeyValue::Port(end))) => PortRange {
            first: *start,
            last: *end,
        }
        .contains(port),
        (Some(KeyValue::Port(p)), _) => *p == port,
        _ => true,
    }
}

/// One DNAT/REDIRECT rule found to capture protected ports, with how it is reached.
#[derive(Debug, Default)]
struct Hit {
    ports: BTreeSet<u16>,
    /// (port, protection index) pairs the rule captures.
    reasons: BTreeSet<(u16, usize)>,
    paths: Vec<Vec<(usize, usize)>>,
    through_map: bool,
    hooks: BTreeSet<&'static str>,
}

pub fn detect(snapshot: &NodeSnapshot, config: &HijackConfig) -> Vec<Finding> {
    let protections = protections(snapshot, config);
    if protections.is_empty() {
        return Vec::new();
    }
    let mut findings = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(ruleset) = snapshot.ruleset(backend) else {
            continue;
        };
        for table in &ruleset.tables {
            findings.extend(detect_in_table(snapshot, table, &protections, config));
        }
    }
    findings
}

/// What a listening process publishes, judged from its comm and arguments.
fn publisher_of(process: &ProcessInfo) -> Option<Publisher> {
    let program = process
        .args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    let is = |name: &str| process.comm == name || program == name;
    if is("docker-proxy") {
        let arg = |flag: &str| {
            process
                .args
                .iter()
                .position(|a| a == flag)
                .and_then(|i| process.args.get(i + 1))
        };
        let container = match (
            arg("-container-ip").and_then(|a| a.parse::<IpAddr>().ok()),
            arg("-container-port").and_then(|p| p.parse::<u16>().ok()),
        ) {
            (Some(ip), Some(port)) => Some((ip, port)),
            _ => None,
        };
        return Some(Publisher::DockerProxy { container });
    }
    if is("kube-proxy") {
        return Some(Publisher::KubeProxy);
    }
    if is("rootlesskit") || is("slirp4netns") || is("rootlessport") {
        return Some(Publisher::PortDriver);
    }
    None
}

/// The `default/kubernetes` Service address and port as kube-proxy programs them in `ruleset`.
fn api_service_in_rules(snapshot: &NodeSnapshot) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for ruleset in [snapshot.nftables.as_deref(), snapshot.legacy.as_deref()]
        .into_iter()
        .flatten()
    {
        for table in &ruleset.tables {
            // iptables mode: `-d 10.96.0.1/32 -p tcp -m comment --comment
            // "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-...`.
            for rule in table.chains.iter().flat_map(|c| &c.rules) {
                let named = rule.comment.as_deref().is_some_and(|c| {
                    c.starts_with(KUBERNETES_SVC_COMMENT) && c.contains("cluster IP")
                });
                if !named {
                    continue;
                }
                let address = rule.matches.iter().find_map(|m| match m {
                    Match::Address {
                        direction: Direction::Destination,
                        cidr,
                        negated: false,
                    } if cidr.prefix == 32 || cidr.prefix == 128 => Some(cidr.addr),
                    _ => None,
                });
                let port = rule.matches.iter().find_map(|m| match m {
                    Match::Ports {
                        direction: Direction::Destination,
                        ranges,
                        negated: false,
                    } if ranges.len() == 1 && ranges[0].first == ranges[0].last => {
                        Some(ranges[0].first)
                    }
                    _ => None,
                });
                if let (Some(a), Some(p)) = (address, port) {
                    out.push((a, p));
                }
            }
            // nftables mode: `service-ips` map element `10.96.0.1 . tcp . 443 : goto
            // service-XXXX-default/kubernetes/tcp/https`.
            for set in table.sets.values().filter(|s| s.is_verdict_map) {
                for element in &set.elements {
                    let names_api = element
                        .verdict
                        .as_ref()
                        .and_then(Verdict::target_chain)
                        .is_some_and(|c| c.ends_with(KUBERNETES_SVC_CHAIN));
                    if !names_api {
                        continue;
                    }
                    let address = element.key.iter().find_map(|k| match k {
                        KeyValue::Address(c) => Some(c.addr),
                        _ => None,
                    });
                    let port = element.key.iter().find_map(|k| match k {
                        KeyValue::Port(p) => Some(*p),
                        _ => None,
                    });
                    if let (Some(a), Some(p)) = (address, port) {
                        out.push((a, p));
                    }
                }
            }
        }
    }
    out
}

/// Everything protected on this node, and why.
fn protections(snapshot: &NodeSnapshot, config: &HijackConfig) -> Vec<Protection> {
    let mut out = Vec::new();
    if !config.protected_ports.is_empty() {
        out.push(Protection {
            reason: Reason::Configured,
            publisher: None,
            ports: config.protected_ports.clone(),
            scope: Scope::Every,
        });
    }
    if config.protect_listening_ports {
        for listener in snapshot.listeners.iter().flatten() {
            if config.protected_ports.contains(&listener.port) {
                continue;
            }
            let scope = match listener.address {
                IpAddr::V4(a) if a.is_unspecified() => Scope::EveryIpv4,
                // `::` without IPV6_V6ONLY (the Linux default) takes IPv4 too.
                IpAddr::V6(a) if a.is_unspecified() => Scope::Every,
                // An IPv4-mapped bind is the IPv4 address.
                IpAddr::V6(a) => Scope::Only(vec![a
                    .to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(a))]),
                a => Scope::Only(vec![a]),
            };
            out.push(Protection {
                reason: Reason::Listener {
                    address: listener.address,
                    process: listener.owner.clone(),
                },
                publisher: listener.owner.as_ref().and_then(publisher_of),
                ports: vec![listener.port],
                scope,
            });
        }
    }
    let mut api: Vec<(IpAddr, u16, &'static str)> = api_service_in_rules(snapshot)
        .into_iter()
        .map(|(a, p)| (a, p, "kube-proxy's rules"))
        .collect();
    if let Some((a, p)) = snapshot.kube_api_service {
        if !api.iter().any(|(x, y, _)| (*x, *y) == (a, p)) {
            api.push((a, p, "the pod environment"));
        }
    }
    for (address, port, source) in api {
        out.push(Protection {
            reason: Reason::ApiService { address, source },
            publisher: Some(Publisher::KubeProxy),
            ports: vec![port],
            scope: Scope::Only(vec![address]),
        });
    }
    out
}

/// The node's addresses a table's family can see, loopback included.
fn local_destinations(snapshot: &NodeSnapshot, table: &Table) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if table.id.family.carries_ipv4() {
        out.push(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    if table.id.family.carries_ipv6() {
        out.push(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
    }
    for a in snapshot.addresses.iter().flatten() {
        if fits(table, a.address) && !out.contains(&a.address) {
            out.push(a.address);
        }
    }
    out
}

fn fits(table: &Table, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => table.id.family.carries_ipv4(),
        IpAddr::V6(_) => table.id.family.carries_ipv6(),
    }
}

/// The groups a walk from `hook` starts with. Loopback destinations are reachable only from the
/// node itself: they count from the output hook, not from prerouting.
fn initial_groups(
    protections: &[Protection],
    table: &Table,
    locals: &[IpAddr],
    hook: HookPoint,
) -> Vec<Group> {
    let reachable =
        |ip: &IpAddr| fits(table, *ip) && (hook == HookPoint::Output || !ip.is_loopback());
    let mut groups: Vec<Group> = Vec::new();
    for (why, p) in protections.iter().enumerate() {
        let destinations: Vec<IpAddr> = match &p.scope {
            Scope::Every => locals.to_vec(),
            Scope::EveryIpv4 => locals.iter().copied().filter(IpAddr::is_ipv4).collect(),
            Scope::Only(a) => a.clone(),
        };
        let destinations: Vec<IpAddr> = destinations.into_iter().filter(reachable).collect();
        if destinations.is_empty() || p.ports.is_empty() {
            continue;
        }
        let same = groups.iter_mut().find(|g| {
            g.destinations == destinations && protections[g.why[0]].publisher == p.publisher
        });
        match same {
            Some(g) => {
                for port in &p.ports {
                    if !g.ports.contains(port) {
                        g.ports.push(*port);
                    }
                }
                g.why.push(why);
            }
            None => groups.push(Group {
                ports: p.ports.clone(),
                destinations,
                why: vec![why],
            }),
        }
    }
    groups
}

fn is_nat_base(table: &Table, chain_type: &str) -> bool {
    chain_type == "nat" || (table.id.backend == Backend::Legacy && table.id.name == "nat")
}

fn detect_in_table(
    snapshot: &NodeSnapshot,
    table: &Table,
    protections: &[Protection],
    config: &HijackConfig,
) -> Vec<Finding> {
    let has_candidate = table
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.action.is_nat_redirection());
    if !has_candidate {
        return Vec::new();
    }
    let graph = TableGraph::new(table);
    let locals = local_destinations(snapshot, table);
    let mut hits: BTreeMap<(usize, usize), Hit> = BTreeMap::new();
    let mut budget = VISIT_BUDGET;
    for hook in [HookPoint::Prerouting, HookPoint::Output] {
        for (index, base) in graph.base_chains(&[hook], &base_type(table)) {
            if !is_nat_base(table, &base.chain_type) {
                continue;
            }
            let state = PathState {
                groups: initial_groups(protections, table, &locals, hook),
                path: Vec::new(),
                through_map: false,
            };
            if !state.alive() {
                continue;
            }
            Walk {
                graph: &graph,
                locals: &locals,
                protections,
                hook: hook.as_str(),
                on_stack: vec![false; table.chains.len()],
                hits: &mut hits,
                budget: &mut budget,
            }
            .chain(index, state);
        }
    }
    // One finding per chain holding hijacking rules.
    let mut per_chain: BTreeMap<usize, Vec<(RulePos, Hit)>> = BTreeMap::new();
    for (pos, hit) in hits {
        if !hit.ports.is_empty() {
            per_chain.entry(pos.0).or_default().push((pos, hit));
        }
    }
    per_chain
        .into_iter()
        .map(|(chain_index, hits)| {
            finding_for(&graph, chain_index, hits, protections, config, budget == 0)
        })
        .collect()
}

/// The chain type string base chains of this table carry (legacy tables name it by table).
fn base_type(table: &Table) -> String {
    table
        .chains
        .iter()
        .filter_map(|c| c.base.as_ref())
        .find(|b| b.chain_type == "nat")
        .map(|b| b.chain_type.clone())
        .unwrap_or_else(|| {
            table
                .chains
                .iter()
                .filter_map(|c| c.base.as_ref())
                .map(|b| b.chain_type.clone())
                .next()
                .unwrap_or_default()
        })
}

/// The search over one table from one hook.
struct Walk<'g, 'a> {
    graph: &'g TableGraph<'a>,
    /// The node's own addresses (a DNAT to one of them keeps traffic on the node).
    locals: &'g [IpAddr],
    protections: &'g [Protection],
    hook: &'static str,
    on_stack: Vec<bool>,
    hits: &'g mut BTreeMap<(usize, usize), Hit>,
    budget: &'g mut usize,
}

impl Walk<'_, '_> {
    /// Walks one chain; returns the API-Service groups (by protection index) the chain stops for
    /// every packet that entered it (kube-proxy's IPVS ClusterIP ACCEPT), so that the caller
    /// stops them too after an unconditional jump.
    fn chain(&mut self, chain_index: usize, state: PathState) -> Vec<Vec<usize>> {
        if self.on_stack[chain_index] {
            return Vec::new();
        }
        self.on_stack[chain_index] = true;
        let graph = self.graph;
        let chain = graph.chain(chain_index);
        let mut current = state;
        let mut stopped: Vec<Vec<usize>> = Vec::new();
        for (rule_index, rule) in chain.rules.iter().enumerate() {
            if *self.budget == 0 || !current.alive() {
                break;
            }
            *self.budget -= 1;
            if is_cluster_ip_accept(graph.table, &chain.name, rule) {
                let protections = self.protections;
                let api = |g: &Group| {
                    g.why
                        .iter()
                        .all(|w| matches!(protections[*w].reason, Reason::ApiService { .. }))
                };
                stopped.extend(
                    current
                        .groups
                        .iter()
                        .filter(|g| api(g))
                        .map(|g| g.why.clone()),
                );
                current.groups.retain(|g| !api(g));
                continue;
            }
            let mut narrowed = current.clone();
            if !rule
                .matches
                .iter()
                .all(|m| narrowed.apply(m, graph.table, self.locals))
            {
                continue;
            }
            narrowed.path.push((chain_index, rule_index));
            if rule.action.is_nat_redirection() {
                self.record_hit((chain_index, rule_index), rule, &narrowed);
                continue;
            }
            let key = match &rule.action {
                Action::VerdictMap { key, .. } => Some(key.as_slice()),
                _ => None,
            };
            let plain_jump = rule.matches.is_empty()
                && matches!(
                    rule.action,
                    Action::Verdict {
                        verdict: Verdict::Jump(_)
                    }
                );
            let edges: Vec<Edge<'_>> = graph.edges(rule).collect();
            for edge in edges {
                let mut next = narrowed.clone();
                if let (Some(key), Some(element)) = (key, edge.element) {
                    if !next.apply_element(key, element) {
                        continue;
                    }
                    next.through_map = true;
                }
                let below = self.chain(edge.target, next);
                if plain_jump && !below.is_empty() {
                    current.groups.retain(|g| !below.contains(&g.why));
                    stopped.extend(below);
                }
            }
        }
        self.on_stack[chain_index] = false;
        stopped
    }

    /// Keeps the protected ports of `state` that the rule sends somewhere other than the node
    /// itself, unless the rule is the own rule of the protection's publisher.
    fn record_hit(&mut self, position: (usize, usize), rule: &Rule, state: &PathState) {
        let chain = &self.graph.chain(position.0).name;
        let mut captured: Vec<(u16, usize)> = Vec::new();
        for g in &state.groups {
            if let Some(publisher) = &self.protections[g.why[0]].publisher {
                if publishes(publisher, self.graph.table, chain, rule) {
                    continue;
                }
            }
            for p in &g.ports {
                if targets_node_itself(self.locals, &rule.action, *p) {
                    continue;
                }
                for why in &g.why {
                    if self.protections[*why].ports.contains(p) {
                        captured.push((*p, *why));
                    }
                }
            }
        }
        if captured.is_empty() {
            return;
        }
        let hit = self.hits.entry(position).or_default();
        hit.ports.extend(captured.iter().map(|(p, _)| *p));
        hit.reasons.extend(captured);
        hit.through_map |= state.through_map;
        hit.hooks.insert(self.hook);
        if hit.paths.len() < MAX_PATHS && !hit.paths.contains(&state.path) {
            hit.paths.push(state.path.clone());
        }
    }
}

/// kube-proxy's IPVS-mode `-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT`:
/// every ClusterIP:port (the API Service's included, by construction) leaves the nat table there.
/// The set's name is not visible to the decoders (`-m set` stays opaque), so the shape is what is
/// recognised: an ACCEPT in kube-proxy's KUBE-SERVICES whose only conditions are set matches.
fn is_cluster_ip_accept(table: &Table, chain: &str, rule: &Rule) -> bool {
    chain == "KUBE-SERVICES"
        && owned_by_kube_proxy(table, chain)
        && matches!(
            rule.action,
            Action::Verdict {
                verdict: Verdict::Accept
            }
        )
        && !rule.matches.is_empty()
        && rule.matches.iter().all(|m| match m {
            // An ipset match (`-m set --match-set KUBE-CLUSTER-IP dst,dst`): its key names the
            // packet's sides, not nft fields.
            Match::SetLookup { key, .. } => key
                .iter()
                .all(|f| matches!(f, Field::Other(side) if side == "src" || side == "dst")),
            // A set whose name could not be resolved.
            Match::Opaque { description } => description.contains("-m set"),
            _ => false,
        })
}

/// Whether `rule` (in `chain`) is the publisher's own NAT rule for the port it holds.
fn publishes(publisher: &Publisher, table: &Table, chain: &str, rule: &Rule) -> bool {
    match publisher {
        Publisher::KubeProxy => owned_by_kube_proxy(table, chain),
        Publisher::PortDriver => chain == "DOCKER",
        Publisher::DockerProxy { container } => {
            if chain != "DOCKER" {
                return false;
            }
            match (container, &rule.action) {
                (None, _) => true,
                (
                    Some((ip, port)),
                    Action::Dnat {
                        range: NatRange { addresses, ports },
                    },
                ) => {
                    addresses.is_some_and(|(a, b)| a == *ip && b == *ip)
                        && ports.is_none_or(|r| r.first == *port && r.last == *port)
                }
                _ => false,
            }
        }
    }
}

/// Whether the NAT keeps port `port` on the node: a local (or unchanged) address and an unchanged
/// port.
fn targets_node_itself(locals: &[IpAddr], action: &Action, port: u16) -> bool {
    let port_kept = |ports: &Option<PortRange>| match ports {
        None => true,
        Some(r) => r.first == port && r.last == port,
    };
    match action {
        Action::Redirect { ports } => port_kept(ports),
        Action::Dnat {
            range: NatRange { addresses, ports },
        } => {
            let address_local = match addresses {
                None => true,
                Some((first, last)) => {
                    first == last && (first.is_loopback() || locals.contains(first))
                }
            };
            address_local && port_kept(ports)
        }
        _ => true,
    }
}

fn owned_by_kube_proxy(table: &Table, chain: &str) -> bool {
    table.id.name == "kube-proxy" || chain.starts_with("KUBE-")
}

/// Whether `text` matches an owner pattern (`*` at the end matches any rest).
fn pattern_matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

/// The configured owner pattern a chain or one of its hijacking rules matches.
fn configured_owner<'c>(config: &'c HijackConfig, chain: &str, rules: &[&Rule]) -> Option<&'c str> {
    config
        .fix_owners
        .iter()
        .find(|o| {
            if let Some(p) = o.strip_prefix("chain:") {
                pattern_matches(p, chain)
            } else if let Some(p) = o.strip_prefix("comment:") {
                rules
                    .iter()
                    .all(|r| r.comment.as_deref().is_some_and(|c| pattern_matches(p, c)))
            } else {
                false
            }
        })
        .map(String::as_str)
}

/// The non-negated destination-port ranges of a rule, when it has exactly one such match.
fn dport_ranges(rule: &Rule) -> Option<&[PortRange]> {
    let mut found = rule.matches.iter().filter_map(|m| match m {
        Match::Ports {
            direction: Direction::Destination,
            ranges,
            negated: false,
        } => Some(ranges.as_slice()),
        _ => None,
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// `ranges` without `ports` (ranges wider than 1024 ports are kept whole when they hold none).
fn ranges_without(ranges: &[PortRange], ports: &BTreeSet<u16>) -> Option<Vec<PortRange>> {
    let mut out = Vec::new();
    for r in ranges {
        if !ports.iter().any(|p| r.contains(*p)) {
            out.push(*r);
            continue;
        }
        if r.last - r.first >= 1024 {
            return None;
        }
        let mut start: Option<u16> = None;
        for p in r.first..=r.last {
            match (ports.contains(&p), start) {
                (false, None) => start = Some(p),
                (true, Some(s)) => {
                    out.push(PortRange {
                        first: s,
                        last: p - 1,
                    });
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(PortRange {
                first: s,
                last: r.last,
            });
        }
    }
    Some(out)
}

/// How the rule/finding is owned, for the fix decision.
enum Mend {
    Blocked(String),
    /// A CNI portmap chain: only the hijacked ports go.
    Portmap,
    /// Rules of a configured owner: delete the hijacking rules.
    Configured(String),
}

fn finding_for(
    graph: &TableGraph<'_>,
    chain_index: usize,
    hits: Vec<(RulePos, Hit)>,
    protections: &[Protection],
    config: &HijackConfig,
    truncated: bool,
) -> Finding {
    let table = graph.table;
    let chain = graph.chain(chain_index);
    let ports: BTreeSet<u16> = hits
        .iter()
        .flat_map(|(_, h)| h.ports.iter().copied())
        .collect();
    let render_at = |(ci, ri): (usize, usize)| {
        let c = graph.chain(ci);
        render_rule(table, &c.name, &c.rules[ri])
    };
    let rules: Vec<String> = hits.iter().map(|(pos, _)| render_at(*pos)).collect();
    let targets: Vec<String> = hits
        .iter()
        .map(|((ci, ri), _)| match &graph.chain(*ci).rules[*ri].action {
            Action::Dnat { range } => range.to_string(),
            Action::Redirect { ports: Some(p) } => format!("local port {p}"),
            Action::Redirect { ports: None } => "local".to_string(),
            _ => String::new(),
        })
        .collect();
    let mut paths: Vec<String> = Vec::new();
    let mut owner: Option<(String, String)> = None;
    let mut through_map = false;
    let mut hooks: BTreeSet<&str> = BTreeSet::new();
    let mut why: BTreeSet<(u16, usize)> = BTreeSet::new();
    for (_, hit) in &hits {
        through_map |= hit.through_map;
        hooks.extend(hit.hooks.iter().copied());
        why.extend(hit.reasons.iter().copied());
        for path in &hit.paths {
            if paths.len() < MAX_PATHS {
                let mut names: Vec<&str> = path
                    .iter()
                    .map(|(ci, _)| graph.chain(*ci).name.as_str())
                    .collect();
                names.dedup();
                paths.push(names.join(" -> "));
            }
            for (ci, ri) in path {
                if owner.is_none() {
                    owner = graph.chain(*ci).rules[*ri]
                        .comment
                        .as_deref()
                        .and_then(cni_owner);
                }
            }
        }
    }
    let reasons: Vec<String> = why
        .iter()
        .map(|(p, i)| match &protections[*i].reason {
            Reason::Listener {
                address,
                process: None,
            } => format!(
                "{p} (a host process listens on {})",
                socket_text(*address, *p)
            ),
            Reason::Listener {
                address,
                process: Some(proc_),
            } => format!(
                "{p} ({} pid {} listens on {})",
                proc_.comm,
                proc_.pid,
                socket_text(*address, *p)
            ),
            Reason::ApiService { address, source } => format!(
                "{p} (the API server's Service address {}, from {source})",
                socket_text(*address, *p)
            ),
            Reason::Configured => format!("{p} (protected)"),
        })
        .collect();
    let subject = format!("{} {} {}", table.id.family, table.id.name, chain.name);
    let port_list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!(
        "traffic to the node's port {port_list} is redirected to {} by {} {} {} ({}){}",
        targets.join(", "),
        table.id.family,
        table.id.name,
        chain.name,
        table.id.backend.as_str(),
        match &owner {
            Some((net, id)) => format!("; installed by CNI portmap for container {id} on network {net} (e.g. a ServiceLB svclb pod with hostPort {port_list})"),
            None => String::new(),
        }
    );
    let table_ref = TableRef {
        backend: table.id.backend,
        family: table.id.family,
        table: table.id.name.clone(),
    };
    let hit_rules: Vec<&Rule> = hits
        .iter()
        .map(|((ci, ri), _)| &graph.chain(*ci).rules[*ri])
        .collect();
    let mend = if owned_by_kube_proxy(table, &chain.name) || through_map {
        Mend::Blocked(format!(
            "blocked: the rule is kube-proxy's and it would re-add it at once; change or delete the Service that uses port {port_list}"
        ))
    } else if chain.name.starts_with("CNI-DN-") && owner.is_some() {
        Mend::Portmap
    } else if let Some(pattern) = configured_owner(config, &chain.name, &hit_rules) {
        Mend::Configured(pattern.to_string())
    } else if chain.name == "DOCKER" || chain.name.starts_with("DOCKER-") {
        Mend::Blocked(format!(
            "blocked: the rule is Docker's (a container published port {port_list}); Docker would re-add it, so stop or re-publish that container"
        ))
    } else {
        Mend::Blocked(format!(
            "blocked: netmend does not know who owns {} (not CNI portmap); remove the rule by hand, or list its owner in fixes.remove-hijack-rule.owners (chain:{} or comment:...)",
            chain.name, chain.name
        ))
    };
    let proposal = match mend {
        Mend::Blocked(detail) => FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: None,
            detail,
        },
        Mend::Portmap => portmap_proposal(graph, chain_index, &hits, &ports, table_ref),
        Mend::Configured(pattern) => FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: Some(fingerprinted(
                table,
                FixAction::RemoveRules {
                    table: table_ref,
                    rules: hits
                        .iter()
                        .map(|((_, ri), _)| RuleRef {
                            chain: chain.name.clone(),
                            handle: chain.rules[*ri].handle,
                            spec: rule_spec(table, &chain.name, &chain.rules[*ri]),
                        })
                        .collect(),
                    delete_chains: Vec::new(),
                    content_hash: 0,
                    narrow: Vec::new(),
                },
            )),
            detail: format!(
                "would delete {} rule(s) from {} (owner listed as {pattern})",
                hits.len(),
                chain.name
            ),
        },
    };
    Finding {
        check: CheckId::HOSTPORT_HIJACK,
        subject,
        severity: if ports.contains(&6443) || ports.contains(&22) {
            Severity::Critical
        } else {
            Severity::Warning
        },
        message,
        evidence: json!({
            "backend": table.id.backend,
            "family": table.id.family,
            "table": table.id.name,
            "chain": chain.name,
            "ports": ports,
            "protectedBecause": reasons,
            "rules": rules,
            "targets": targets,
            "paths": paths,
            "hooks": hooks,
            "owner": owner.as_ref().map(|(net, id)| json!({"network": net, "containerId": id})),
            "searchTruncated": truncated,
        }),
        proposal: Some(proposal),
        discriminator: Some(table.id.backend.as_str().to_string()),
    }
}

fn socket_text(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// The fix of a CNI portmap chain: delete only the rules of the hijacked ports and narrow the
/// jumps to the pod's other host ports; with no port left, delete the jumps and the chain.
fn portmap_proposal(
    graph: &TableGraph<'_>,
    chain_index: usize,
    hits: &[(RulePos, Hit)],
    hijacked: &BTreeSet<u16>,
    table_ref: TableRef,
) -> FixProposal {
    let table = graph.table;
    let chain = graph.chain(chain_index);
    let render_at = |(ci, ri): (usize, usize)| {
        let c = graph.chain(ci);
        render_rule(table, &c.name, &c.rules[ri])
    };
    let jumps: Vec<(usize, usize)> = graph.referrers(chain_index).to_vec();
    // The chain's rules for the hijacked ports only (DNAT and hairpin/localhost SETMARK).
    let per_port: Vec<usize> = chain
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            dport_ranges(r).is_some_and(|ranges| {
                ranges.iter().all(|x| {
                    x.last - x.first < 1024 && (x.first..=x.last).all(|p| hijacked.contains(&p))
                })
            })
        })
        .map(|(i, _)| i)
        .collect();
    let precise = hits.iter().all(|((_, ri), _)| per_port.contains(ri));
    // Each jump's port list without the hijacked ports (None: cannot be narrowed).
    let narrowed: Vec<Option<Vec<PortRange>>> = jumps
        .iter()
        .map(|(ci, ri)| {
            let rule = &graph.chain(*ci).rules[*ri];
            // Only a rule the model renders whole can be rewritten (the legacy writer's input).
            let whole = !rule
                .matches
                .iter()
                .any(|m| matches!(m, Match::Opaque { .. }))
                && matches!(rule.action, Action::Verdict { .. });
            dport_ranges(rule)
                .filter(|_| whole)
                .and_then(|r| ranges_without(r, hijacked))
        })
        .collect();
    let nothing_left = narrowed
        .iter()
        .all(|n| n.as_ref().is_some_and(Vec::is_empty));
    if !precise || nothing_left {
        let mut lines: Vec<String> = jumps.iter().map(|p| render_at(*p)).collect();
        lines.extend(
            chain
                .rules
                .iter()
                .map(|r| render_rule(table, &chain.name, r)),
        );
        return FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: Some(fingerprinted(table, FixAction::RemoveRules {
                table: table_ref,
                rules: jumps
                    .iter()
                    .map(|(ci, ri)| RuleRef {
                        chain: graph.chain(*ci).name.clone(),
                        handle: graph.chain(*ci).rules[*ri].handle,
                        spec: rule_spec(table, &graph.chain(*ci).name, &graph.chain(*ci).rules[*ri]),
                    })
                    .collect(),
                delete_chains: vec![chain.name.clone()],
                content_hash: 0,
                narrow: Vec::new(),
            })),
            detail: format!(
                "would delete {} jump(s) to {} and the chain ({} rules): the pod has no other host port there",
                jumps.len(),
                chain.name,
                chain.rules.len()
            ),
        };
    }
    let mut delete: Vec<RuleRef> = Vec::new();
    let mut narrow: Vec<NarrowPorts> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for ((ci, ri), keep) in jumps.iter().zip(narrowed) {
        let jump_chain = &graph.chain(*ci).name;
        let rule = &graph.chain(*ci).rules[*ri];
        lines.push(render_at((*ci, *ri)));
        let reference = RuleRef {
            chain: jump_chain.clone(),
            handle: rule.handle,
            spec: rule_spec(table, jump_chain, rule),
        };
        match keep {
            Some(keep) if keep.is_empty() => delete.push(reference),
            Some(keep) => {
                let old = dport_ranges(rule).unwrap_or_default().to_vec();
                if old == keep {
                    continue;
                }
                // The same rule with the remaining ports, still as `-m multiport --dports`.
                let mut rewritten = rule.clone();
                for m in &mut rewritten.matches {
                    if matches!(
                        m,
                        Match::Ports {
                            direction: Direction::Destination,
                            negated: false,
                            ..
                        }
                    ) {
                        let list: Vec<String> = keep
                            .iter()
                            .map(|r| {
                                if r.first == r.last {
                                    r.first.to_string()
                                } else {
                                    format!("{}:{}", r.first, r.last)
                                }
                            })
                            .collect();
                        *m = Match::Opaque {
                            description: format!("-m multiport --dports {}", list.join(",")),
                        };
                    }
                }
                let text = render_iptables(jump_chain, &rewritten);
                let rule_spec = text
                    .strip_prefix(&format!("-A {jump_chain} "))
                    .unwrap_or(&text)
                    .to_string();
                narrow.push(NarrowPorts {
                    rule: reference,
                    ports: old,
                    keep,
                    rule_spec,
                });
            }
            // Not narrowable: the jump stays, the hijacked port falls through the chain.
            None => {}
        }
    }
    for ri in &per_port {
        lines.push(render_rule(table, &chain.name, &chain.rules[*ri]));
        delete.push(RuleRef {
            chain: chain.name.clone(),
            handle: chain.rules[*ri].handle,
            spec: rule_spec(table, &chain.name, &chain.rules[*ri]),
        });
    }
    let kept: Vec<String> = narrow
        .iter()
        .flat_map(|n| n.keep.iter().map(PortRange::to_string))
        .collect();
    let detail = format!(
        "would delete {} rule(s) of port {} in {} and narrow {} jump(s) to port {}, in one transaction; the pod's other host ports keep working",
        per_port.len(),
        hijacked.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        chain.name,
        narrow.len(),
        if kept.is_empty() { "-".to_string() } else { kept.join(", ") },
    );
    FixProposal {
        fix: FixId::REMOVE_HIJACK_RULE,
        action: Some(fingerprinted(
            table,
            FixAction::RemoveRules {
                table: table_ref,
                rules: delete,
                delete_chains: Vec::new(),
                content_hash: 0,
                narrow,
            },
        )),
        detail,
    }
}

/// `action` with the fingerprint of what it touches in `table` (the writer computes it again on a
/// fresh read right before writing: under the xtables lock for legacy tables).
fn fingerprinted(table: &Table, mut action: FixAction) -> FixAction {
    let hash = action_fingerprint(table, &action);
    if let FixAction::RemoveRules { content_hash, .. } = &mut action {
        *content_hash = hash;
    }
    action
}

/// The check, for the registry.
pub struct HostportHijack;

impl CheckId {
    pub const HOSTPORT_HIJACK: CheckId = CheckId::new("hostport-hijack");
}

/// Default ports that must never be captured by a DNAT: ssh, etcd, API server, k3s supervisor,
/// kubelet.
pub const DEFAULT_PROTECTED_PORTS: [u16; 6] = [22, 2379, 2380, 6443, 9345, 10250];

/// `checks.hostport-hijack` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HijackConfig {
    pub protected_ports: Vec<u16>,
    pub protect_listening_ports: bool,
    /// Owners besides CNI portmap whose rules `remove-hijack-rule` may remove: the fix's
    /// `owners` setting, filled in when the check runs.
    #[serde(skip)]
    pub fix_owners: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHijack {
    protected_ports: Option<Vec<u32>>,
    protect_listening_ports: Option<bool>,
}

impl Check for HostportHijack {
    fn id(&self) -> CheckId {
        CheckId::HOSTPORT_HIJACK
    }

    fn description(&self) -> &'static str {
        "DNAT/REDIRECT reachable from a nat hook captures a protected node port (API server, kubelet, ssh, ...)"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("HijackPresent", "NoHijack")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Ruleset
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawHijack| {
            let protected_ports = match r.protected_ports {
                None => DEFAULT_PROTECTED_PORTS.to_vec(),
                Some(ports) => {
                    let mut out = Vec::with_capacity(ports.len());
                    for (i, p) in ports.into_iter().enumerate() {
                        if p == 0 || p > 65535 {
                            return Err(ConfigError::new(
                                format!("protectedPorts[{i}]"),
                                format!("{p} is not a TCP port (1-65535)"),
                            ));
                        }
                        out.push(p as u16);
                    }
                    out.sort_unstable();
                    out.dedup();
                    out
                }
            };
            Ok(HijackConfig {
                protected_ports,
                protect_listening_ports: r.protect_listening_ports.unwrap_or(true),
                fix_owners: Vec::new(),
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::REMOVE_HIJACK_RULE)
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect(
            context.snapshot,
            context
                .config
                .check(self.id())
                .settings
                .get::<HijackConfig>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::snapshot::{ListeningSocket, LocalAddress};

    fn config() -> HijackConfig {
        HijackConfig {
            protected_ports: vec![22, 2379, 2380, 6443, 9345, 10250],
            protect_listening_ports: true,
            fix_owners: Vec::new(),
        }
    }

    fn listener(address: &str, port: u16, process: Option<(&str, &[&str])>) -> ListeningSocket {
        ListeningSocket {
            address: address.parse().unwrap(),
            port,
            inode: 1000 + u64::from(port),
            owner: process.map(|(comm, args)| ProcessInfo {
                pid: 4242,
                comm: comm.to_string(),
                args: args.iter().map(|a| a.to_string()).collect(),
            }),
        }
    }

    fn remove_rules(f: &Finding) -> (&Vec<RuleRef>, &Vec<String>, &Vec<NarrowPorts>) {
        match f.proposal.as_ref().unwrap().action.as_ref() {
            Some(FixAction::RemoveRules {
                rules,
                delete_chains,
                narrow,
                ..
            }) => (rules, delete_chains, narrow),
            other => panic!("unexpected {other:?}: {:?}", f.proposal),
        }
    }

    fn node(snapshot: &mut NodeSnapshot) {
        snapshot.addresses = Some(vec![LocalAddress {
            address: "192.168.1.233".parse().unwrap(),
            prefix: 24,
            ifindex: 2,
        }]);
    }

    /// The k3s ServiceLB/portmap rules of k3s-api-port-hijack.md, in iptables-save form.
    const PORTMAP: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:CNI-HOSTPORT-DNAT -
:CNI-HOSTPORT-SETMARK -
:CNI-DN-3499088e1adba268a4e0c -
:CNI-DN-traefik0000000000000 -
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"8e92d16fab\"" -m multiport --dports 6443 -j CNI-DN-3499088e1adba268a4e0c
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"77aa\"" -m multiport --dports 80,443 -j CNI-DN-traefik0000000000000
-A CNI-DN-3499088e1adba268a4e0c -s 10.42.0.0/24 -p tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-3499088e1adba268a4e0c -s 127.0.0.1/32 -p tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-3499088e1adba268a4e0c -p tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
-A CNI-DN-traefik0000000000000 -p tcp --dport 80 -j DNAT --to-destination 10.42.0.9:80
-A CNI-DN-traefik0000000000000 -p tcp --dport 443 -j DNAT --to-destination 10.42.0.9:443
"#;

    #[test]
    fn portmap_hijack_of_6443_is_found_and_traefik_is_not() {
        let table = iptables_table(Backend::Nft, "nat", PORTMAP);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.subject, "ip nat CNI-DN-3499088e1adba268a4e0c");
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.evidence["ports"], json!([6443]));
        assert_eq!(f.evidence["targets"], json!(["10.42.0.244:6443"]));
        assert_eq!(
            f.evidence["paths"][0],
            "PREROUTING -> CNI-HOSTPORT-DNAT -> CNI-DN-3499088e1adba268a4e0c"
        );
        assert_eq!(f.evidence["owner"]["containerId"], "8e92d16fab");
        assert_eq!(f.evidence["hooks"], json!(["output", "prerouting"]));
        let proposal = f.proposal.as_ref().unwrap();
        match proposal.action.as_ref().unwrap() {
            FixAction::RemoveRules {
                rules,
                delete_chains,
                ..
            } => {
                assert_eq!(
                    rules,
                    &vec![RuleRef {
                        chain: "CNI-HOSTPORT-DNAT".into(),
                        handle: 1,
                        spec: rules[0].spec.clone(),
                    }]
                );
                assert_eq!(
                    delete_chains,
                    &vec!["CNI-DN-3499088e1adba268a4e0c".to_string()]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_listener_makes_its_port_protected() {
        let table = iptables_table(Backend::Legacy, "nat", PORTMAP);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        node(&mut snapshot);
        snapshot.listeners = Some(vec![ListeningSocket::new("0.0.0.0".parse().unwrap(), 443)]);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 2, "{findings:#?}");
        let traefik = findings
            .iter()
            .find(|f| f.subject.ends_with("traefik0000000000000"))
            .unwrap();
        assert_eq!(traefik.evidence["ports"], json!([443]));
        assert_eq!(
            traefik.evidence["protectedBecause"][0],
            "443 (a host process listens on 0.0.0.0:443)"
        );
        assert_eq!(traefik.evidence["backend"], "legacy");
    }

    #[test]
    fn an_unknown_owners_rule_is_blocked_unless_its_owner_is_configured() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n-A PREROUTING -p tcp --dport 6443 -j DNAT --to-destination 10.43.49.200:6443\n",
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].subject, "ip nat PREROUTING");
        let proposal = findings[0].proposal.as_ref().unwrap();
        assert!(proposal.action.is_none());
        assert!(
            proposal
                .detail
                .starts_with("blocked: netmend does not know who owns PREROUTING"),
            "{}",
            proposal.detail
        );
        let mut owned = config();
        owned.fix_owners = vec!["chain:PREROUT*".into()];
        let findings = detect(&snapshot, &owned);
        assert_eq!(
            findings[0].proposal.as_ref().unwrap().detail,
            "would delete 1 rule(s) from PREROUTING (owner listed as chain:PREROUT*)"
        );
        let (rules, chains, narrow) = remove_rules(&findings[0]);
        assert_eq!(rules.len(), 1);
        assert!(chains.is_empty() && narrow.is_empty());
    }

    /// What `docker run -p 8080:80` and `-p 127.0.0.1:8081:80` leave in the nat table
    /// (iptables-save of a Docker host), with docker-proxy holding both host ports.
    const DOCKER: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:DOCKER -
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.17.0.3:80
"#;

    fn docker_proxy(host_ip: &str, host_port: u16, container_ip: &str) -> ListeningSocket {
        let host_port_text = host_port.to_string();
        let args = [
            "/usr/bin/docker-proxy",
            "-proto",
            "tcp",
            "-host-ip",
            host_ip,
            "-host-port",
            &host_port_text,
            "-container-ip",
            container_ip,
            "-container-port",
            "80",
        ];
        listener(host_ip, host_port, Some(("docker-proxy", &args)))
    }

    #[test]
    fn a_docker_published_port_is_not_a_hijack() {
        let table = iptables_table(Backend::Nft, "nat", DOCKER);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        snapshot.listeners = Some(vec![
            docker_proxy("0.0.0.0", 8080, "172.17.0.2"),
            docker_proxy("127.0.0.1", 8081, "172.17.0.3"),
        ]);
        let findings = detect(&snapshot, &config());
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn a_rootless_port_driver_publishing_through_docker_is_not_a_hijack() {
        let table = iptables_table(Backend::Nft, "nat", DOCKER);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        snapshot.listeners = Some(vec![listener(
            "::",
            8080,
            Some(("rootlesskit", &["rootlesskit", "--port-driver=builtin"])),
        )]);
        assert!(detect(&snapshot, &config()).is_empty());
        // The same driver's port captured by a CNI hostPort is still a hijack.
        let table = iptables_table(Backend::Nft, "nat", PORTMAP);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        snapshot.listeners = Some(vec![listener(
            "::",
            443,
            Some((
                "slirp4netns",
                &["slirp4netns", "--api-socket", "/run/user/1000/s.sock"],
            )),
        )]);
        let findings = detect(&snapshot, &config());
        assert!(findings
            .iter()
            .any(|f| f.subject.ends_with("traefik0000000000000")));
    }

    #[test]
    fn docker_rule_against_another_listener_is_found_and_left_to_docker() {
        let table = iptables_table(Backend::Nft, "nat", DOCKER);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        // docker-proxy for another container, and an nginx on 8080 that Docker's rule shadows.
        snapshot.listeners = Some(vec![
            docker_proxy("0.0.0.0", 8080, "172.17.0.9"),
            listener("0.0.0.0", 8081, Some(("nginx", &["nginx"]))),
        ]);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].subject, "ip nat DOCKER");
        // The wrong-container DNAT on 8080; nginx on 0.0.0.0:8081 is not reached: Docker's 8081
        // rule only takes 127.0.0.1, which nginx does not cover from prerouting and the output
        // jump excludes.
        assert_eq!(findings[0].evidence["ports"], json!([8080]));
        let proposal = findings[0].proposal.as_ref().unwrap();
        assert!(proposal.action.is_none());
        assert!(proposal.detail.starts_with("blocked: the rule is Docker's"));
    }

    #[test]
    fn a_loopback_listener_is_protected_only_from_the_output_hook() {
        let table = iptables_table(Backend::Legacy, "nat", PORTMAP);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        node(&mut snapshot);
        snapshot.listeners = Some(vec![listener("127.0.0.1", 443, None)]);
        let findings = detect(&snapshot, &config());
        let traefik = findings
            .iter()
            .find(|f| f.subject.ends_with("traefik0000000000000"))
            .expect("found");
        assert_eq!(traefik.evidence["hooks"], json!(["output"]));
        assert_eq!(
            traefik.evidence["protectedBecause"],
            json!(["443 (a host process listens on 127.0.0.1:443)"])
        );
        // Bound to the node's address only: prerouting reaches it, output too.
        snapshot.listeners = Some(vec![listener("192.168.1.233", 443, Some(("nginx", &[])))]);
        let findings = detect(&snapshot, &config());
        let traefik = findings
            .iter()
            .find(|f| f.subject.ends_with("traefik0000000000000"))
            .expect("found");
        assert_eq!(traefik.evidence["hooks"], json!(["output", "prerouting"]));
        assert_eq!(
            traefik.evidence["protectedBecause"],
            json!(["443 (nginx pid 4242 listens on 192.168.1.233:443)"])
        );
        // Bound to an address the rule cannot take (not local to this table's family): nothing.
        snapshot.listeners = Some(vec![listener("fd00::1", 443, None)]);
        let findings = detect(&snapshot, &config());
        assert!(!findings
            .iter()
            .any(|f| f.subject.ends_with("traefik0000000000000")));
    }

    #[test]
    fn kube_proxy_nodeport_holder_is_not_a_hijack_but_another_listener_is() {
        let rules = r#"
:PREROUTING ACCEPT
:KUBE-SERVICES -
:KUBE-NODEPORTS -
:KUBE-EXT-X -
:KUBE-SEP-Y -
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp --dport 30080 -j KUBE-EXT-X
-A KUBE-EXT-X -j KUBE-SEP-Y
-A KUBE-SEP-Y -p tcp -j DNAT --to-destination 10.42.1.5:8080
"#;
        let table = iptables_table(Backend::Legacy, "nat", rules);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        node(&mut snapshot);
        snapshot.listeners = Some(vec![listener(
            "::",
            30080,
            Some((
                "kube-proxy",
                &[
                    "/usr/local/bin/kube-proxy",
                    "--config=/var/lib/kube-proxy/config.conf",
                ],
            )),
        )]);
        assert!(detect(&snapshot, &config()).is_empty());
        // An unknown process on the NodePort is shadowed: found, and left to kube-proxy.
        snapshot.listeners = Some(vec![listener("::", 30080, Some(("java", &["java"])))]);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1);
        assert!(findings[0].proposal.as_ref().unwrap().action.is_none());
    }

    #[test]
    fn unknown_listener_under_a_portmap_hostport_is_found() {
        let table = iptables_table(Backend::Legacy, "nat", PORTMAP);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        node(&mut snapshot);
        snapshot.listeners = Some(vec![listener("::", 80, None)]);
        let findings = detect(&snapshot, &config());
        let traefik = findings
            .iter()
            .find(|f| f.subject.ends_with("traefik0000000000000"))
            .expect("found");
        assert_eq!(traefik.evidence["ports"], json!([80]));
        assert_eq!(
            traefik.evidence["protectedBecause"],
            json!(["80 (a host process listens on [::]:80)"])
        );
    }

    /// A kube-proxy IPVS node: ClusterIPs sit on kube-ipvs0, the kubernetes Service is
    /// 10.96.0.1:443, and a pod has hostPort 443 through CNI portmap.
    const IPVS_HOSTPORT: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:KUBE-SERVICES -
:KUBE-NODE-PORT -
:CNI-HOSTPORT-DNAT -
:CNI-DN-aaaa -
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"k8s-pod-network\" id: \"c0ffee\"" -m multiport --dports 443 -j CNI-DN-aaaa
-A CNI-DN-aaaa -p tcp --dport 443 -j DNAT --to-destination 10.244.1.7:8443
"#;

    fn ipvs_node(snapshot: &mut NodeSnapshot) {
        snapshot.addresses = Some(vec![
            LocalAddress {
                address: "192.168.1.233".parse().unwrap(),
                prefix: 24,
                ifindex: 2,
            },
            LocalAddress {
                address: "10.96.0.1".parse().unwrap(),
                prefix: 32,
                ifindex: 9,
            },
            LocalAddress {
                address: "10.96.0.10".parse().unwrap(),
                prefix: 32,
                ifindex: 9,
            },
        ]);
    }

    #[test]
    fn ipvs_hostport_capturing_the_api_service_address_is_found() {
        let table = iptables_table(Backend::Legacy, "nat", IPVS_HOSTPORT);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        ipvs_node(&mut snapshot);
        // Without knowing the API Service address: the hostPort is someone's business.
        assert!(detect(&snapshot, &config()).is_empty());
        snapshot.kube_api_service = Some(("10.96.0.1".parse().unwrap(), 443));
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].subject, "ip nat CNI-DN-aaaa");
        assert_eq!(
            findings[0].evidence["protectedBecause"],
            json!([
                "443 (the API server's Service address 10.96.0.1:443, from the pod environment)"
            ])
        );
        // The whole chain held only 443: the fix removes jump and chain.
        let (rules, chains, narrow) = remove_rules(&findings[0]);
        assert_eq!(rules.len(), 1);
        assert_eq!(chains, &vec!["CNI-DN-aaaa".to_string()]);
        assert!(narrow.is_empty());
    }

    /// kube-proxy IPVS's `-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT`
    /// as the decoders give it (the set match is opaque).
    fn with_cluster_ip_accept(table: &mut Table) {
        let chain = table
            .chains
            .iter_mut()
            .find(|c| c.name == "KUBE-SERVICES")
            .unwrap();
        chain.rules.push(Rule {
            handle: chain.rules.len() as u64 + 1,
            matches: vec![Match::Opaque {
                description: "-m set".into(),
            }],
            action: Action::Verdict {
                verdict: Verdict::Accept,
            },
            comment: None,
            counters: None,
        });
    }

    #[test]
    fn kube_proxys_ipvs_cluster_ip_accept_shields_the_api_service_only_when_it_comes_first() {
        let env = Some(("10.96.0.1".parse().unwrap(), 443));
        let mut table = iptables_table(Backend::Legacy, "nat", IPVS_HOSTPORT);
        with_cluster_ip_accept(&mut table);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        ipvs_node(&mut snapshot);
        snapshot.kube_api_service = env;
        // kube-proxy's jump first: ClusterIP traffic is accepted before the hostPort chain.
        assert!(detect(&snapshot, &config()).is_empty());
        // The portmap jumps first (portmap re-inserted them after kube-proxy): captured.
        let lines: Vec<&str> = IPVS_HOSTPORT.lines().collect();
        let first_cni: String = lines
            .iter()
            .filter(|l| l.starts_with(':'))
            .chain(lines.iter().filter(|l| l.contains("-j CNI-HOSTPORT-DNAT")))
            .chain(
                lines
                    .iter()
                    .filter(|l| l.starts_with("-A") && !l.contains("-j CNI-HOSTPORT-DNAT")),
            )
            .map(|l| format!("{l}\n"))
            .collect();
        let mut table = iptables_table(Backend::Legacy, "nat", &first_cni);
        with_cluster_ip_accept(&mut table);
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        ipvs_node(&mut snapshot);
        snapshot.kube_api_service = env;
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].subject, "ip nat CNI-DN-aaaa");
        assert_eq!(
            findings[0].evidence["hooks"],
            json!(["output", "prerouting"])
        );
    }

    #[test]
    fn api_service_clusterip_from_the_kube_svc_comment_is_protected_but_kube_proxys_own_dnat_is_not_a_hijack(
    ) {
        let rules = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:KUBE-SERVICES -
:KUBE-SVC-NPX46M4PTMTKRN6Y -
:KUBE-SEP-A -
-A PREROUTING -p tcp --dport 443 -d 10.96.0.0/12 -j DNAT --to-destination 10.0.0.99:443
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SVC-NPX46M4PTMTKRN6Y -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 192.168.1.10:6443
"#;
        let table = iptables_table(Backend::Nft, "nat", rules);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].subject, "ip nat PREROUTING");
        assert_eq!(
            findings[0].evidence["protectedBecause"],
            json!([
                "443 (the API server's Service address 10.96.0.1:443, from kube-proxy's rules)"
            ])
        );
    }

    #[test]
    fn api_service_from_kube_proxys_nftables_service_map_is_protected() {
        use crate::model::ruleset::{Cidr, Family, Set, SetDataType, TableId};
        let element = |ip: &str, port: u16, chain: &str| SetElement {
            key: vec![
                KeyValue::Address(Cidr::host(ip.parse().unwrap())),
                KeyValue::Proto(TCP),
                KeyValue::Port(port),
            ],
            key_end: None,
            verdict: Some(Verdict::Goto(chain.into())),
        };
        let service_ips = Set {
            name: "service-ips".into(),
            anonymous: false,
            key_types: vec![
                SetDataType::Ipv4Addr,
                SetDataType::InetProto,
                SetDataType::InetService,
            ],
            is_verdict_map: true,
            interval: false,
            elements: vec![
                element(
                    "10.96.0.10",
                    53,
                    "service-ERIFXISQ-kube-system/kube-dns/tcp/dns-tcp",
                ),
                element(
                    "10.96.0.1",
                    443,
                    "service-2QRHZV4L-default/kubernetes/tcp/https",
                ),
            ],
        };
        let kube_proxy = Table {
            id: TableId {
                backend: Backend::Nft,
                family: Family::Ip,
                name: "kube-proxy".into(),
            },
            handle: 9,
            chains: Vec::new(),
            sets: [("service-ips".to_string(), service_ips)]
                .into_iter()
                .collect(),
        };
        let nat = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n-A PREROUTING -p tcp --dport 443 -j DNAT --to-destination 10.0.0.99:443\n",
        );
        let mut snapshot = snapshot_with(Some(vec![kube_proxy, nat]), None);
        node(&mut snapshot);
        assert_eq!(
            api_service_in_rules(&snapshot),
            vec![("10.96.0.1".parse().unwrap(), 443)]
        );
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(
            findings[0].evidence["protectedBecause"],
            json!([
                "443 (the API server's Service address 10.96.0.1:443, from kube-proxy's rules)"
            ])
        );
        // The pod environment naming the same address adds no second reason.
        snapshot.kube_api_service = Some(("10.96.0.1".parse().unwrap(), 443));
        let findings = detect(&snapshot, &config());
        assert_eq!(
            findings[0].evidence["protectedBecause"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    /// A pod with hostPorts 443 and 6443 (portmap's own rule shapes, with hairpin SETMARK rules).
    const TWO_PORTS: &str = r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:CNI-HOSTPORT-DNAT -
:CNI-HOSTPORT-SETMARK -
:CNI-DN-bbbb -
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"feed\"" -m multiport --dports 443,6443 -j CNI-DN-bbbb
-A CNI-DN-bbbb -s 10.42.0.0/24 -p tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-bbbb -s 127.0.0.1/32 -p tcp --dport 443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-bbbb -p tcp --dport 443 -j DNAT --to-destination 10.42.0.5:443
-A CNI-DN-bbbb -s 10.42.0.0/24 -p tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-bbbb -s 127.0.0.1/32 -p tcp --dport 6443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-bbbb -p tcp --dport 6443 -j DNAT --to-destination 10.42.0.5:6443
"#;

    #[test]
    fn portmap_fix_takes_only_the_hijacked_port_and_narrows_the_jump() {
        let mut table = iptables_table(Backend::Legacy, "nat", TWO_PORTS);
        for chain in &mut table.chains {
            for (i, rule) in chain.rules.iter_mut().enumerate() {
                rule.handle = i as u64 + 1;
            }
        }
        let mut snapshot = snapshot_with(None, Some(vec![table]));
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(
            findings[0].evidence["ports"],
            json!([6443]),
            "{findings:#?}"
        );
        assert_eq!(
            findings[0].evidence["owner"]["containerId"], "feed",
            "{findings:#?}"
        );
        let (rules, chains, narrow) = remove_rules(&findings[0]);
        assert!(chains.is_empty());
        let deleted: Vec<(&str, u64)> =
            rules.iter().map(|r| (r.chain.as_str(), r.handle)).collect();
        assert_eq!(
            deleted,
            vec![("CNI-DN-bbbb", 4), ("CNI-DN-bbbb", 5), ("CNI-DN-bbbb", 6)]
        );
        assert_eq!(narrow.len(), 1);
        assert_eq!(narrow[0].rule.chain, "CNI-HOSTPORT-DNAT");
        assert_eq!(narrow[0].rule.handle, 1);
        assert_eq!(
            narrow[0].ports,
            vec![PortRange::single(443), PortRange::single(6443)]
        );
        assert_eq!(narrow[0].keep, vec![PortRange::single(443)]);
        assert_eq!(
            narrow[0].rule_spec,
            r#"-p tcp -m multiport --dports 443 -m comment --comment "dnat name: \"cbr0\" id: \"feed\"" -j CNI-DN-bbbb"#
        );
        assert!(findings[0]
            .proposal
            .as_ref()
            .unwrap()
            .detail
            .contains("narrow 1 jump(s) to port 443"));
    }

    #[test]
    fn ranges_lose_only_the_hijacked_ports() {
        let hijacked: BTreeSet<u16> = [6443, 8000].into_iter().collect();
        let ranges = [
            PortRange {
                first: 6440,
                last: 6445,
            },
            PortRange::single(8000),
            PortRange::single(9000),
        ];
        assert_eq!(
            ranges_without(&ranges, &hijacked).unwrap(),
            vec![
                PortRange {
                    first: 6440,
                    last: 6442
                },
                PortRange {
                    first: 6444,
                    last: 6445
                },
                PortRange::single(9000)
            ]
        );
        assert_eq!(
            ranges_without(
                &[PortRange {
                    first: 1,
                    last: 65535
                }],
                &hijacked
            ),
            None
        );
    }

    #[test]
    fn dnat_to_the_node_itself_or_to_clusterips_is_not_a_hijack() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            r#"
:PREROUTING ACCEPT
:OUTPUT ACCEPT
:KUBE-SERVICES -
:KUBE-SVC-NPX46M4PTMTKRN6Y -
:KUBE-SEP-MKZ5TTJEI3R5D5SV -
:KUBE-NODEPORTS -
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-NPX46M4PTMTKRN6Y -j KUBE-SEP-MKZ5TTJEI3R5D5SV
-A KUBE-SEP-MKZ5TTJEI3R5D5SV -p tcp -j DNAT --to-destination 192.168.1.233:6443
-A KUBE-NODEPORTS -p tcp --dport 30080 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A PREROUTING -d 192.168.1.233/32 -p tcp --dport 22 -j DNAT --to-destination 192.168.1.233:22
-A PREROUTING -d 10.0.0.0/8 -p tcp --dport 22 -j DNAT --to-destination 10.0.0.5:22
-A PREROUTING -p udp --dport 6443 -j DNAT --to-destination 10.0.0.5:6443
-A PREROUTING ! -p tcp --dport 6443 -j DNAT --to-destination 10.0.0.5:6443
-A PREROUTING -m addrtype ! --dst-type LOCAL -p tcp --dport 6443 -j DNAT --to-destination 10.0.0.5:6443
-A PREROUTING -p tcp --dport 6443 -j REDIRECT
"#,
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn nodeport_in_a_protected_range_is_found_but_left_to_kube_proxy() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            r#"
:PREROUTING ACCEPT
:KUBE-SERVICES -
:KUBE-NODEPORTS -
:KUBE-EXT-X -
:KUBE-SEP-Y -
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp --dport 10250 -j KUBE-EXT-X
-A KUBE-EXT-X -j KUBE-SEP-Y
-A KUBE-SEP-Y -p tcp -j DNAT --to-destination 10.42.1.5:8080
"#,
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].evidence["ports"], json!([10250]));
        let proposal = findings[0].proposal.as_ref().unwrap();
        assert!(proposal.action.is_none());
        assert!(proposal
            .detail
            .starts_with("blocked: the rule is kube-proxy's"));
    }

    #[test]
    fn jump_cycles_terminate() {
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n:A -\n:B -\n-A PREROUTING -j A\n-A A -j B\n-A B -j A\n-A B -p tcp --dport 22 -j DNAT --to-destination 10.1.1.1\n",
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].evidence["paths"][0], "PREROUTING -> A -> B");
    }

    #[test]
    fn cni_owner_comment_is_parsed() {
        assert_eq!(
            cni_owner("dnat name: \"cbr0\" id: \"abc123\""),
            Some(("cbr0".to_string(), "abc123".to_string()))
        );
        assert_eq!(cni_owner("kubernetes service portals"), None);
    }
}
