//! Check `hostport-hijack`: a DNAT or REDIRECT reachable from a nat hook (prerouting or output)
//! that captures a protected TCP port of the node itself and sends it elsewhere — the k3s
//! ServiceLB/portmap incident where a LoadBalancer Service on 6443 took the API server away.
//!
//! The search walks every path from the nat base chains, carrying what the path already requires
//! of a packet (destination port set, protocol, which of the node's addresses can still be the
//! destination). A path is dropped as soon as it can no longer carry a packet for a protected port
//! of the node: kube-proxy's ClusterIP rules (`-d 10.43.x.y`) end there at once, which keeps the
//! walk linear on 10,000-service rulesets. Proposes `remove-hijack-rule`: delete the rule, or for
//! a per-container CNI chain (`CNI-DN-*`) the jumps to it and the chain. Rules owned by kube-proxy
//! are reported but not removed (kube-proxy would re-add them at once).

use crate::config::{ConfigError, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{
    CheckId, Finding, FixAction, FixId, FixProposal, RuleRef, Severity, TableRef,
};
use crate::model::graph::{Edge, TableGraph};
use crate::model::render::{action_fingerprint, render_rule, rule_spec};
use crate::model::ruleset::{
    Action, Backend, Direction, Field, HookPoint, KeyValue, Match, NatRange, PortRange, Rule,
    SetElement, Table,
};
use crate::model::snapshot::NodeSnapshot;
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

/// A rule's position: (chain index, rule index) in the table.
type RulePos = (usize, usize);

/// Why a port is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Protection {
    Configured,
    Listener(IpAddr),
}

/// What the packets still travelling a path must look like.
#[derive(Debug, Clone)]
struct PathState {
    /// Protected ports the path may still carry.
    ports: Vec<u16>,
    /// Node addresses the destination may still be.
    local_destinations: Vec<IpAddr>,
    /// (chain, rule) positions from the hook down to here.
    path: Vec<(usize, usize)>,
    /// Whether a verdict-map element of another owner selected this path.
    through_map: bool,
}

impl PathState {
    fn alive(&self) -> bool {
        !self.ports.is_empty() && !self.local_destinations.is_empty()
    }

    /// Narrows the state by one match; returns false when no protected packet passes it.
    fn apply(&mut self, m: &Match, table: &Table) -> bool {
        match m {
            Match::L4Proto { proto, negated } => {
                let tcp_passes = (*proto == TCP) != *negated;
                if !tcp_passes {
                    self.ports.clear();
                }
            }
            Match::Ports {
                direction: Direction::Destination,
                ranges,
                negated,
            } => {
                self.ports
                    .retain(|p| ranges.iter().any(|r| r.contains(*p)) != *negated);
            }
            Match::Address {
                direction: Direction::Destination,
                cidr,
                negated,
            } => {
                self.local_destinations
                    .retain(|ip| cidr.contains(*ip) != *negated);
            }
            Match::AddrType {
                direction: Direction::Destination,
                types,
                negated,
            } => {
                let local_passes = (types & ADDRTYPE_LOCAL != 0) != *negated;
                if !local_passes {
                    self.local_destinations.clear();
                }
            }
            Match::SetLookup { set, key, negated } => {
                if let Some(set) = table.sets.get(set) {
                    self.apply_set(key, &set.elements, *negated);
                }
            }
            _ => {}
        }
        self.alive()
    }

    /// Narrows by membership of the key in a set's elements.
    fn apply_set(&mut self, key: &[Field], elements: &[SetElement], negated: bool) {
        match key {
            [Field::Address(Direction::Destination)] => {
                self.local_destinations
                    .retain(|ip| elements.iter().any(|e| element_matches_ip(e, *ip)) != negated);
            }
            [Field::Port(Direction::Destination)] => {
                self.ports
                    .retain(|p| elements.iter().any(|e| element_matches_port(e, 0, *p)) != negated);
            }
            _ => {}
        }
    }

    /// Narrows by the key of the verdict-map element that selected an edge.
    fn apply_element(&mut self, key: &[Field], element: &SetElement) -> bool {
        for (i, field) in key.iter().enumerate() {
            match field {
                Field::Address(Direction::Destination) => {
                    self.local_destinations
                        .retain(|ip| component_matches_ip(element, i, *ip));
                }
                Field::Port(Direction::Destination) => {
                    self.ports.retain(|p| element_matches_port(element, i, *p));
                }
                Field::L4Proto => {
                    if let Some(KeyValue::Proto(proto)) = element.key.get(i) {
                        if *proto != TCP {
                            self.ports.clear();
                        }
                    }
                }
                _ => {}
            }
        }
        self.alive()
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
    paths: Vec<Vec<(usize, usize)>>,
    through_map: bool,
    hooks: BTreeSet<&'static str>,
}

pub fn detect(snapshot: &NodeSnapshot, config: &HijackConfig) -> Vec<Finding> {
    let protected = protected_ports(snapshot, config);
    if protected.is_empty() {
        return Vec::new();
    }
    let mut findings = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(ruleset) = snapshot.ruleset(backend) else {
            continue;
        };
        for table in &ruleset.tables {
            findings.extend(detect_in_table(snapshot, table, &protected));
        }
    }
    findings
}

/// Configured ports, plus every TCP port a host process listens on when enabled.
fn protected_ports(snapshot: &NodeSnapshot, config: &HijackConfig) -> BTreeMap<u16, Protection> {
    let mut ports: BTreeMap<u16, Protection> = config
        .protected_ports
        .iter()
        .map(|p| (*p, Protection::Configured))
        .collect();
    if config.protect_listening_ports {
        for listener in snapshot.listeners.iter().flatten() {
            ports
                .entry(listener.port)
                .or_insert(Protection::Listener(listener.address));
        }
    }
    ports
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
        let fits = match a.address {
            IpAddr::V4(_) => table.id.family.carries_ipv4(),
            IpAddr::V6(_) => table.id.family.carries_ipv6(),
        };
        if fits && !out.contains(&a.address) {
            out.push(a.address);
        }
    }
    out
}

fn is_nat_base(table: &Table, chain_type: &str) -> bool {
    chain_type == "nat" || (table.id.backend == Backend::Legacy && table.id.name == "nat")
}

fn detect_in_table(
    snapshot: &NodeSnapshot,
    table: &Table,
    protected: &BTreeMap<u16, Protection>,
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
                ports: protected.keys().copied().collect(),
                local_destinations: locals.clone(),
                path: Vec::new(),
                through_map: false,
            };
            Walk {
                graph: &graph,
                locals: &locals,
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
        .map(|(chain_index, hits)| finding_for(&graph, chain_index, hits, protected, budget == 0))
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
    hook: &'static str,
    on_stack: Vec<bool>,
    hits: &'g mut BTreeMap<(usize, usize), Hit>,
    budget: &'g mut usize,
}

impl Walk<'_, '_> {
    fn chain(&mut self, chain_index: usize, state: PathState) {
        if self.on_stack[chain_index] {
            return;
        }
        self.on_stack[chain_index] = true;
        let graph = self.graph;
        let chain = graph.chain(chain_index);
        for (rule_index, rule) in chain.rules.iter().enumerate() {
            if *self.budget == 0 {
                break;
            }
            *self.budget -= 1;
            let mut narrowed = state.clone();
            if !rule.matches.iter().all(|m| narrowed.apply(m, graph.table)) {
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
            let edges: Vec<Edge<'_>> = graph.edges(rule).collect();
            for edge in edges {
                let mut next = narrowed.clone();
                if let (Some(key), Some(element)) = (key, edge.element) {
                    if !next.apply_element(key, element) {
                        continue;
                    }
                    next.through_map = true;
                }
                self.chain(edge.target, next);
            }
        }
        self.on_stack[chain_index] = false;
    }

    /// Keeps the ports of `state` that the rule sends somewhere other than the node itself.
    fn record_hit(&mut self, position: (usize, usize), rule: &Rule, state: &PathState) {
        let ports: Vec<u16> = state
            .ports
            .iter()
            .copied()
            .filter(|p| !targets_node_itself(self.locals, &rule.action, *p))
            .collect();
        if ports.is_empty() {
            return;
        }
        let hit = self.hits.entry(position).or_default();
        hit.ports.extend(ports);
        hit.through_map |= state.through_map;
        hit.hooks.insert(self.hook);
        if hit.paths.len() < MAX_PATHS && !hit.paths.contains(&state.path) {
            hit.paths.push(state.path.clone());
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

/// Parses the CNI portmap comment `dnat name: "cbr0" id: "<container id>"`.
pub fn cni_owner(comment: &str) -> Option<(String, String)> {
    let rest = comment.strip_prefix("dnat name: \"")?;
    let (network, rest) = rest.split_once('"')?;
    let rest = rest.trim_start().strip_prefix("id: \"")?;
    let (id, _) = rest.split_once('"')?;
    Some((network.to_string(), id.to_string()))
}

/// `action` with its content hash set to the fingerprint of what it touches in `table`.
fn fingerprinted(table: &Table, mut action: FixAction) -> FixAction {
    let hash = action_fingerprint(table, &action);
    if let FixAction::RemoveRules { content_hash, .. }
    | FixAction::FlushChain { content_hash, .. } = &mut action
    {
        *content_hash = hash;
    }
    action
}

fn owned_by_kube_proxy(table: &Table, chain: &str) -> bool {
    table.id.name == "kube-proxy" || chain.starts_with("KUBE-")
}

fn finding_for(
    graph: &TableGraph<'_>,
    chain_index: usize,
    hits: Vec<(RulePos, Hit)>,
    protected: &BTreeMap<u16, Protection>,
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
    for (_, hit) in &hits {
        through_map |= hit.through_map;
        hooks.extend(hit.hooks.iter().copied());
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
    let reasons: Vec<String> = ports
        .iter()
        .map(|p| match protected.get(p) {
            Some(Protection::Listener(addr)) => {
                format!("{p} (a host process listens on {addr}:{p})")
            }
            _ => format!("{p} (protected)"),
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
    let proposal = if owned_by_kube_proxy(table, &chain.name) || through_map {
        FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: None,
            detail: format!(
                "blocked: the rule is kube-proxy's and it would re-add it at once; change or delete the Service that uses port {port_list}"
            ),
        }
    } else if chain.name.starts_with("CNI-DN-") {
        let jumps: Vec<(usize, usize)> = graph.referrers(chain_index).to_vec();
        FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: Some(FixAction::RemoveRules {
                table: table_ref,
                rules: jumps
                    .iter()
                    .map(|(ci, ri)| RuleRef {
                        chain: graph.chain(*ci).name.clone(),
                        handle: graph.chain(*ci).rules[*ri].handle,
                        spec: rule_spec(
                            table,
                            &graph.chain(*ci).name,
                            &graph.chain(*ci).rules[*ri],
                        ),
                    })
                    .collect(),
                delete_chains: vec![chain.name.clone()],
                content_hash: 0,
            })
            .map(|action| fingerprinted(table, action)),
            detail: format!(
                "would delete {} jump(s) to {} and the chain ({} rules)",
                jumps.len(),
                chain.name,
                chain.rules.len()
            ),
        }
    } else {
        FixProposal {
            fix: FixId::REMOVE_HIJACK_RULE,
            action: Some(FixAction::RemoveRules {
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
            })
            .map(|action| fingerprinted(table, action)),
            detail: format!("would delete {} rule(s) from {}", hits.len(), chain.name),
        }
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
        snapshot.listeners = Some(vec![ListeningSocket {
            address: "0.0.0.0".parse().unwrap(),
            port: 443,
        }]);
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
    fn klipper_style_rule_in_prerouting_is_removed_alone() {
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
        assert_eq!(
            findings[0].proposal.as_ref().unwrap().detail,
            "would delete 1 rule(s) from PREROUTING"
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
