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
//! Beyond the walk, a finding says whether it cuts the node off from the Kubernetes API
//! (`cutsOffApi`: it captures the API server's Service address, or the API server's port: 6443 and
//! the ports kube-proxy sends the API Service to), which lets its fix run without a cluster-wide
//! fix slot; and it names the pod a DNAT sends the traffic to (`pod`) when the cluster knows it.
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

use crate::config::{Config, ConfigError, Settings};
use crate::detect::{Check, CheckContext, CheckMemory, Inputs};
use crate::model::finding::{
    CheckId, Finding, FixAction, FixId, FixProposal, NarrowPorts, RuleRef, Severity, TableRef,
};
use crate::model::graph::{chain_index_of, ChainIndex, Edge, TableGraph};
use crate::model::portmap::cni_owner;
use crate::model::render::{action_fingerprint, render_iptables, render_rule, rule_spec};
use crate::model::ruleset::TableId;
use crate::model::ruleset::{
    Action, Backend, Direction, Field, HookPoint, KeyValue, Match, NatRange, PortRange, Rule,
    SetElement, Table, Verdict,
};
use crate::model::ruleset_changes::{ChangedSince, TableChanges};
use crate::model::snapshot::{NodeSnapshot, ProcessInfo};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

const TCP: u8 = 6;
/// `1 << RTN_LOCAL` in xt_addrtype's bit numbering.
const ADDRTYPE_LOCAL: u16 = 1 << 2;
/// Upper bound on rule visits per table: a pathological graph is reported, never hangs a pass.
const VISIT_BUDGET: usize = 4_000_000;
/// How many jump paths a finding shows.
const MAX_PATHS: usize = 4;
/// The fewest rule visits a sub-walk must have cost to be kept for the next pass: cheaper ones
/// are walked again rather than stored.
const KEEP_WALKS_FROM: usize = 16;
/// The comment kube-proxy (iptables mode) puts on the API server Service's rule.
const KUBERNETES_SVC_COMMENT: &str = "default/kubernetes:https";
/// The part of kube-proxy's nftables-mode service chain name that names the API server Service.
const KUBERNETES_SVC_CHAIN: &str = "-default/kubernetes/tcp/https";
/// The part of kube-proxy's nftables-mode chain names (service and endpoint chains) that names the
/// API server Service.
const KUBERNETES_CHAIN_PART: &str = "default/kubernetes/tcp/https";
/// The API server's default secure port (kube-apiserver's `--secure-port`, k3s' `--https-listen-port`).
pub const API_SERVER_PORT: u16 = 6443;

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

#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// What a finding says beyond the walk: the API server's ports (for `cutsOffApi`) and the pod
/// behind a DNAT target (for its owner's name).
struct Naming<'a> {
    api_server_ports: BTreeSet<u16>,
    pod_owner: &'a dyn Fn(IpAddr) -> Option<String>,
}

/// The check on one snapshot, without the cluster's pod names.
pub fn detect(snapshot: &NodeSnapshot, config: &HijackConfig) -> Vec<Finding> {
    detect_naming_pods(snapshot, config, &crate::detect::no_pods)
}

/// The check on one snapshot; `pod_owner` names the pod behind a DNAT target.
pub fn detect_naming_pods(
    snapshot: &NodeSnapshot,
    config: &HijackConfig,
    pod_owner: &dyn Fn(IpAddr) -> Option<String>,
) -> Vec<Finding> {
    detect_remembering(snapshot, config, pod_owner, None)
}

/// The check, reusing and filling `memory`'s sub-walks when given (its stale ones already
/// forgotten: see [`WalkMemory::forget`]).
fn detect_remembering(
    snapshot: &NodeSnapshot,
    config: &HijackConfig,
    pod_owner: &dyn Fn(IpAddr) -> Option<String>,
    mut memory: Option<&mut WalkMemory>,
) -> Vec<Finding> {
    let protections = protections(snapshot, config);
    if protections.is_empty() {
        if let Some(memory) = memory {
            memory.tables.clear();
        }
        return Vec::new();
    }
    let naming = Naming {
        api_server_ports: api_server_ports(snapshot),
        pod_owner,
    };
    let mut findings = Vec::new();
    let mut seen: Vec<&TableId> = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(ruleset) = snapshot.ruleset(backend) else {
            continue;
        };
        for table in &ruleset.tables {
            seen.push(&table.id);
            findings.extend(detect_in_table(
                snapshot,
                table,
                &protections,
                config,
                &naming,
                memory.as_deref_mut(),
            ));
        }
    }
    if let Some(memory) = memory {
        memory.tables.retain(|id, _| seen.contains(&id));
    }
    findings
}

/// What the walk keeps between passes: per table, the sub-walks below chains it did, keyed by
/// the chain and the state the walk entered it with. A sub-walk's result depends only on the
/// chains it entered and the sets its rules read (and the protections and node addresses, which
/// empty a table's memory when they move), so after a change only the sub-walks that entered a
/// changed chain are forgotten: the hooks' walk re-walks the changed chains and replays the rest.
#[derive(Debug)]
pub struct WalkMemory {
    tables: BTreeMap<TableId, TableWalks>,
    /// The fewest rule visits a sub-walk is kept for ([`KEEP_WALKS_FROM`]).
    keep_from: usize,
}

impl Default for WalkMemory {
    fn default() -> WalkMemory {
        WalkMemory {
            tables: BTreeMap::new(),
            keep_from: KEEP_WALKS_FROM,
        }
    }
}

#[derive(Debug)]
struct TableWalks {
    protections: Vec<Protection>,
    locals: Vec<IpAddr>,
    walks: HashMap<WalkKey, SubWalk>,
    /// The table's chain positions by name as of `indexed` chains, and the chains changed since
    /// (checked, and new chains added, before the index is used again).
    index: Option<ChainIndex>,
    indexed: usize,
    changed_since_index: BTreeSet<String>,
    /// Whether a pass walked this table with this memory before: only then is an index worth
    /// its copies of the names (a table restored whole is walked once with a borrowed one).
    walked_before: bool,
    keep_from: usize,
    /// Sub-walks replayed instead of walked, over the memory's life (tests look).
    #[cfg(test)]
    replayed: usize,
}

/// A chain and the state a walk entered it with.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WalkKey {
    chain: String,
    hook: &'static str,
    through_map: bool,
    groups: Vec<Group>,
}

/// What walking below one chain did, by chain names (indexes move when chains come and go).
#[derive(Debug)]
struct SubWalk {
    /// Rule visits it cost (taken from the budget when replayed).
    visits: usize,
    /// What the chain returns to its caller.
    stopped: Vec<Vec<usize>>,
    hits: Vec<StoredHit>,
    /// Every chain it entered, and jump targets it met that named no chain.
    chains: Vec<String>,
    unresolved: Vec<String>,
    /// The sets and maps the rules it visited read.
    sets: Vec<String>,
}

/// One hit recorded below a chain: the rule, what it captured, and the path from the chain.
#[derive(Debug)]
struct StoredHit {
    chain: String,
    rule: usize,
    captured: Vec<(u16, usize)>,
    through_map: bool,
    path: Vec<(String, usize)>,
}

impl TableWalks {
    /// The chain index of `table`, taken out of the memory (give it back with
    /// [`TableWalks::keep_index`]): the kept one when every chain changed since it was made is
    /// where the index says or not in it (the cache appends new chains and closes the gaps of
    /// deleted ones, so a deletion moves a changed chain's place), with chains added since put
    /// in; otherwise a new one, from the second walk of this memory on (`None` before: walk
    /// with a borrowed index).
    fn take_index(&mut self, table: &Table) -> Option<ChainIndex> {
        if !std::mem::replace(&mut self.walked_before, true) {
            return None;
        }
        let changed = std::mem::take(&mut self.changed_since_index);
        let kept = self.index.take().filter(|index| {
            table.chains.len() >= self.indexed
                && changed.iter().all(|name| match index.get(name) {
                    Some(&i) => table.chains.get(i).is_some_and(|c| &c.name == name),
                    None => true,
                })
        });
        let index = match kept {
            Some(mut index) => {
                for (i, chain) in table.chains.iter().enumerate().skip(self.indexed) {
                    index.insert(chain.name.clone(), i);
                }
                index
            }
            None => chain_index_of(table),
        };
        self.indexed = table.chains.len();
        Some(index)
    }

    fn keep_index(&mut self, index: ChainIndex) {
        self.index = Some(index);
    }
}

impl SubWalk {
    fn depends_on(&self, changes: &TableChanges) -> bool {
        self.chains
            .iter()
            .chain(&self.unresolved)
            .any(|c| changes.chains.contains(c))
            || self.sets.iter().any(|s| changes.sets.contains(s))
    }
}

impl WalkMemory {
    /// Whether a table was walked twice with this memory (the second walk keeps a chain index):
    /// what an evaluation that went on from the previous one leaves.
    #[cfg(test)]
    pub(crate) fn went_on_from_a_previous_walk(&self) -> bool {
        self.tables.values().any(|t| t.index.is_some())
    }

    /// Forgets what `changed` can have made wrong; everything when it is `None`.
    fn forget(&mut self, changed: Option<&ChangedSince>) {
        let Some(changed) = changed else {
            self.tables.clear();
            return;
        };
        self.tables.retain(|id, table| match changed.table(id) {
            None => true,
            Some(changes) if changes.whole => false,
            Some(changes) => {
                table.walks.retain(|_, walk| !walk.depends_on(changes));
                table
                    .changed_since_index
                    .extend(changes.chains.iter().cloned());
                true
            }
        });
    }

    /// The sub-walks of `table`, emptied when the protections or the node's addresses moved.
    fn table(
        &mut self,
        id: &TableId,
        protections: &[Protection],
        locals: &[IpAddr],
    ) -> &mut TableWalks {
        let keep_from = self.keep_from;
        let fresh = || TableWalks {
            protections: protections.to_vec(),
            locals: locals.to_vec(),
            walks: HashMap::new(),
            index: None,
            indexed: 0,
            changed_since_index: BTreeSet::new(),
            walked_before: false,
            keep_from,
            #[cfg(test)]
            replayed: 0,
        };
        let table = self.tables.entry(id.clone()).or_insert_with(fresh);
        if table.protections != protections || table.locals != locals {
            *table = fresh();
        }
        table
    }
}

/// A hit as the walk found it, by positions in the current table.
#[derive(Debug, Clone)]
struct HitEvent {
    position: RulePos,
    captured: Vec<(u16, usize)>,
    through_map: bool,
    path: Vec<RulePos>,
}

/// What a walk did, in order, while it keeps sub-walks: each chain's sub-walk is a stretch of it.
#[derive(Debug, Default)]
struct WalkLog {
    hits: Vec<HitEvent>,
    entered: Vec<usize>,
    unresolved: Vec<String>,
    sets: Vec<String>,
}

/// Where each part of a [`WalkLog`] stood when a chain was entered.
#[derive(Debug, Clone, Copy)]
struct LogMark {
    hits: usize,
    entered: usize,
    unresolved: usize,
    sets: usize,
}

impl WalkLog {
    fn mark(&self) -> LogMark {
        LogMark {
            hits: self.hits.len(),
            entered: self.entered.len(),
            unresolved: self.unresolved.len(),
            sets: self.sets.len(),
        }
    }

    /// The sub-walk logged since `mark`, for a chain entered with a path `path_len` long.
    fn sub_walk(
        &self,
        graph: &TableGraph<'_>,
        mark: LogMark,
        path_len: usize,
        visits: usize,
        stopped: &[Vec<usize>],
    ) -> SubWalk {
        let name = |i: usize| graph.chain(i).name.clone();
        let mut entered = self.entered[mark.entered..].to_vec();
        entered.sort_unstable();
        entered.dedup();
        let sorted = |items: &[String]| {
            let mut items = items.to_vec();
            items.sort_unstable();
            items.dedup();
            items
        };
        SubWalk {
            visits,
            stopped: stopped.to_vec(),
            hits: self.hits[mark.hits..]
                .iter()
                .map(|event| StoredHit {
                    chain: name(event.position.0),
                    rule: event.position.1,
                    captured: event.captured.clone(),
                    through_map: event.through_map,
                    path: event.path[path_len..]
                        .iter()
                        .map(|(c, r)| (name(*c), *r))
                        .collect(),
                })
                .collect(),
            chains: entered.into_iter().map(name).collect(),
            unresolved: sorted(&self.unresolved[mark.unresolved..]),
            sets: sorted(&self.sets[mark.sets..]),
        }
    }
}

/// The ports the API server is served on: its default port, and the ports kube-proxy sends the
/// `default/kubernetes` Service to (the DNATs of its endpoint chains: in iptables mode the
/// `KUBE-SEP-*` chains below the Service's cluster-IP rule or commented with its name, in
/// nftables mode the chains named after it).
fn api_server_ports(snapshot: &NodeSnapshot) -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([API_SERVER_PORT]);
    let dnat_port = |rule: &Rule| match &rule.action {
        Action::Dnat { range } => range.ports.map(|p| p.first),
        _ => None,
    };
    for ruleset in [snapshot.nftables.as_deref(), snapshot.legacy.as_deref()]
        .into_iter()
        .flatten()
    {
        for table in &ruleset.tables {
            let chain_named = |name: &str| table.chains.iter().find(|c| c.name == name);
            let jumps = |rule: &Rule| match &rule.action {
                Action::Verdict { verdict } => verdict.target_chain().map(str::to_string),
                _ => None,
            };
            for chain in &table.chains {
                let names_api = chain.name.contains(KUBERNETES_CHAIN_PART);
                for rule in &chain.rules {
                    let comment = rule.comment.as_deref().unwrap_or("");
                    if names_api || comment.starts_with(KUBERNETES_SVC_COMMENT) {
                        ports.extend(dnat_port(rule));
                    }
                    // Cluster-IP rule -> KUBE-SVC chain -> KUBE-SEP chains -> DNAT.
                    if !comment.starts_with(KUBERNETES_SVC_COMMENT) {
                        continue;
                    }
                    let Some(service) = jumps(rule).and_then(|name| chain_named(&name)) else {
                        continue;
                    };
                    for endpoint in service.rules.iter().filter_map(&jumps) {
                        if let Some(endpoint) = chain_named(&endpoint) {
                            ports.extend(endpoint.rules.iter().filter_map(dnat_port));
                        }
                    }
                }
            }
        }
    }
    ports
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
    naming: &Naming<'_>,
    memory: Option<&mut WalkMemory>,
) -> Vec<Finding> {
    let has_candidate = table
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.action.is_nat_redirection());
    if !has_candidate {
        return Vec::new();
    }
    let locals = local_destinations(snapshot, table);
    let mut memory = memory.map(|m| m.table(&table.id, protections, &locals));
    let kept_index = memory.as_deref_mut().and_then(|m| m.take_index(table));
    let graph = match &kept_index {
        Some(index) => TableGraph::with_index(table, index),
        None => TableGraph::new(table),
    };
    let mut hits: BTreeMap<(usize, usize), Hit> = BTreeMap::new();
    let mut budget = VISIT_BUDGET;
    let mut log = WalkLog::default();
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
                depth_of: vec![0; table.chains.len()],
                depth: 0,
                cycle_floor: usize::MAX,
                hits: &mut hits,
                budget: &mut budget,
                memory: memory.as_deref_mut(),
                log: &mut log,
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
    let findings = per_chain
        .into_iter()
        .map(|(chain_index, hits)| {
            finding_for(
                &graph,
                chain_index,
                hits,
                protections,
                config,
                naming,
                budget == 0,
            )
        })
        .collect();
    drop(graph);
    if let (Some(memory), Some(index)) = (memory, kept_index) {
        memory.keep_index(index);
    }
    findings
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
    /// How deep in the walk each chain on the stack was entered (1 for the base chain).
    depth_of: Vec<usize>,
    depth: usize,
    /// The shallowest depth of a chain on the stack that the walk below the current chain ran
    /// into (a cycle): when it is above the current chain, that sub-walk depends on how it was
    /// reached and is not kept.
    cycle_floor: usize,
    hits: &'g mut BTreeMap<(usize, usize), Hit>,
    budget: &'g mut usize,
    /// The sub-walks kept from earlier passes, and where this walk keeps its own.
    memory: Option<&'g mut TableWalks>,
    log: &'g mut WalkLog,
}

impl Walk<'_, '_> {
    /// Walks one chain; returns the API-Service groups (by protection index) the chain stops for
    /// every packet that entered it (kube-proxy's IPVS ClusterIP ACCEPT), so that the caller
    /// stops them too after an unconditional jump. With a memory, a sub-walk kept for this chain
    /// and state is replayed instead, and a new one is kept.
    fn chain(&mut self, chain_index: usize, state: PathState) -> Vec<Vec<usize>> {
        if self.on_stack[chain_index] {
            self.cycle_floor = self.cycle_floor.min(self.depth_of[chain_index]);
            return Vec::new();
        }
        if self.memory.is_none() {
            return self.rules(chain_index, state);
        }
        let key = WalkKey {
            chain: self.graph.chain(chain_index).name.clone(),
            hook: self.hook,
            through_map: state.through_map,
            groups: state.groups.clone(),
        };
        let kept = self
            .memory
            .as_deref_mut()
            .and_then(|memory| memory.walks.remove(&key));
        if let Some(kept) = kept {
            if let Some(stopped) = self.replay(&kept, &state.path) {
                if let Some(memory) = self.memory.as_deref_mut() {
                    #[cfg(test)]
                    {
                        memory.replayed += 1;
                    }
                    memory.walks.insert(key, kept);
                }
                return stopped;
            }
        }
        let mark = self.log.mark();
        let path_len = state.path.len();
        let budget_before = *self.budget;
        let outer_floor = std::mem::replace(&mut self.cycle_floor, usize::MAX);
        self.depth += 1;
        let depth = self.depth;
        self.depth_of[chain_index] = depth;
        self.log.entered.push(chain_index);
        let stopped = self.rules(chain_index, state);
        self.depth -= 1;
        let inner_floor = self.cycle_floor;
        self.cycle_floor = outer_floor.min(inner_floor);
        let visits = budget_before - *self.budget;
        let keep_from = self.memory.as_deref().map_or(usize::MAX, |m| m.keep_from);
        if inner_floor >= depth && *self.budget > 0 && visits >= keep_from {
            let kept = self
                .log
                .sub_walk(self.graph, mark, path_len, visits, &stopped);
            if let Some(memory) = self.memory.as_deref_mut() {
                memory.walks.insert(key, kept);
            }
        }
        stopped
    }

    /// Replays a kept sub-walk below a chain entered with `path`: its hits, its cost and what it
    /// logged. `None` (walk it instead) when the budget would run out in it or a chain it
    /// entered is on the stack now (the walk would stop there).
    fn replay(&mut self, kept: &SubWalk, path: &[RulePos]) -> Option<Vec<Vec<usize>>> {
        if *self.budget <= kept.visits {
            return None;
        }
        let graph = self.graph;
        let mut entered = Vec::with_capacity(kept.chains.len());
        for name in &kept.chains {
            let index = graph.chain_index(name)?;
            if self.on_stack[index] {
                return None;
            }
            entered.push(index);
        }
        if kept
            .unresolved
            .iter()
            .any(|n| graph.chain_index(n).is_some())
        {
            return None;
        }
        let mut events = Vec::with_capacity(kept.hits.len());
        for hit in &kept.hits {
            let mut full = path.to_vec();
            for (chain, rule) in &hit.path {
                full.push((graph.chain_index(chain)?, *rule));
            }
            events.push(HitEvent {
                position: (graph.chain_index(&hit.chain)?, hit.rule),
                captured: hit.captured.clone(),
                through_map: hit.through_map,
                path: full,
            });
        }
        *self.budget -= kept.visits;
        self.log.entered.extend(entered);
        self.log.unresolved.extend(kept.unresolved.iter().cloned());
        self.log.sets.extend(kept.sets.iter().cloned());
        for event in events {
            self.add_hit(event);
        }
        Some(kept.stopped.clone())
    }

    /// Notes what a visited rule reads beyond its chain (sets, jump targets), for a kept
    /// sub-walk's dependencies.
    fn log_reads(&mut self, rule: &Rule) {
        for m in &rule.matches {
            if let Match::SetLookup { set, .. } = m {
                self.log.sets.push(set.clone());
            }
        }
        match &rule.action {
            Action::VerdictMap { set, .. } => {
                self.log.sets.push(set.clone());
                if let Some(map) = self.graph.table.sets.get(set) {
                    for element in &map.elements {
                        let target = element.verdict.as_ref().and_then(Verdict::target_chain);
                        if let Some(target) = target {
                            if self.graph.chain_index(target).is_none() {
                                self.log.unresolved.push(target.to_string());
                            }
                        }
                    }
                }
            }
            Action::Verdict { verdict } => {
                if let Some(target) = verdict.target_chain() {
                    if self.graph.chain_index(target).is_none() {
                        self.log.unresolved.push(target.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    /// The rules of one chain, in order.
    fn rules(&mut self, chain_index: usize, state: PathState) -> Vec<Vec<usize>> {
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
            if self.memory.is_some() {
                self.log_reads(rule);
            }
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
        self.add_hit(HitEvent {
            position,
            captured,
            through_map: state.through_map,
            path: state.path.clone(),
        });
    }

    fn add_hit(&mut self, event: HitEvent) {
        let hit = self.hits.entry(event.position).or_default();
        hit.ports.extend(event.captured.iter().map(|(p, _)| *p));
        hit.reasons.extend(event.captured.iter().copied());
        hit.through_map |= event.through_map;
        hit.hooks.insert(self.hook);
        if hit.paths.len() < MAX_PATHS && !hit.paths.contains(&event.path) {
            hit.paths.push(event.path.clone());
        }
        if self.memory.is_some() {
            self.log.hits.push(event);
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
    naming: &Naming<'_>,
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
    // The fault cuts the node off from the API when it captures the API Service's address or
    // the API server's port.
    let cuts_off_api = why.iter().any(|(port, i)| {
        matches!(protections[*i].reason, Reason::ApiService { .. })
            || naming.api_server_ports.contains(port)
    });
    // The pods the DNATs send the traffic to, when the cluster knows them.
    let mut pods: Vec<String> = Vec::new();
    for ((ci, ri), _) in &hits {
        if let Action::Dnat {
            range:
                NatRange {
                    addresses: Some((first, last)),
                    ..
                },
        } = &graph.chain(*ci).rules[*ri].action
        {
            if first == last {
                if let Some(pod) = (naming.pod_owner)(*first) {
                    if !pods.contains(&pod) {
                        pods.push(pod);
                    }
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
        match (&owner, pods.is_empty()) {
            (Some((net, id)), true) => format!("; installed by CNI portmap for container {id} on network {net} (e.g. a ServiceLB svclb pod with hostPort {port_list})"),
            (Some((net, id)), false) => format!(
                "; installed by CNI portmap for container {id} on network {net}: pod {} with hostPort {port_list}",
                pods.join(", ")
            ),
            (None, false) => format!("; the DNAT goes to pod {}", pods.join(", ")),
            (None, true) => String::new(),
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
    let mut evidence = json!({
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
        "cutsOffApi": cuts_off_api,
    });
    if let Some(pod) = pods.first() {
        evidence["pod"] = json!(pod);
    }
    Finding {
        check: CheckId::HOSTPORT_HIJACK,
        subject,
        severity: if ports.contains(&6443) || ports.contains(&22) {
            Severity::Critical
        } else {
            Severity::Warning
        },
        message,
        evidence,
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

/// The check's settings in `config`.
fn hijack_config(config: &Config) -> &HijackConfig {
    config
        .check(CheckId::HOSTPORT_HIJACK)
        .settings
        .get::<HijackConfig>()
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

    fn cuts_off_api(&self, finding: &Finding) -> bool {
        finding
            .evidence
            .get("cutsOffApi")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect_naming_pods(
            context.snapshot,
            hijack_config(context.config),
            context.pod_owner,
        )
    }

    fn detect_incremental(
        &self,
        context: &CheckContext<'_>,
        changed: Option<&ChangedSince>,
        memory: &mut CheckMemory,
    ) -> Vec<Finding> {
        if memory.as_ref().is_none_or(|m| !m.is::<WalkMemory>()) {
            *memory = Some(Box::new(WalkMemory::default()));
        }
        let walks = memory
            .as_mut()
            .and_then(|m| m.downcast_mut::<WalkMemory>())
            .expect("a walk memory was just put there");
        walks.forget(changed);
        detect_remembering(
            context.snapshot,
            hijack_config(context.config),
            context.pod_owner,
            Some(walks),
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
    fn a_hijack_of_the_api_server_port_or_address_cuts_off_the_api_and_others_do_not() {
        // CNI portmap takes 6443: the API server's port.
        let table = iptables_table(Backend::Nft, "nat", PORTMAP);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect(&snapshot, &config());
        assert_eq!(findings[0].evidence["cutsOffApi"], true);
        assert!(HostportHijack.cuts_off_api(&findings[0]));
        // A listener's port (traefik's 443 under a slirp4netns listener) does not.
        snapshot.listeners = Some(vec![listener("0.0.0.0", 443, Some(("nginx", &["nginx"])))]);
        let findings = detect(&snapshot, &config());
        let traefik = findings
            .iter()
            .find(|f| f.subject.ends_with("traefik0000000000000"))
            .unwrap();
        assert_eq!(traefik.evidence["cutsOffApi"], false);
        assert!(!HostportHijack.cuts_off_api(traefik));
        // The API Service's address does, whatever its port.
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":OUTPUT ACCEPT\n-A OUTPUT -p tcp --dport 443 -d 10.96.0.1/32 -j DNAT --to-destination 10.42.0.7:443\n",
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        snapshot.kube_api_service = Some(("10.96.0.1".parse().unwrap(), 443));
        let findings = detect(&snapshot, &config());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].evidence["cutsOffApi"], true);
    }

    #[test]
    fn the_api_servers_ports_come_from_kube_proxys_endpoint_rules() {
        // iptables mode: cluster-IP rule -> KUBE-SVC -> KUBE-SEP -> DNAT to :8443.
        let rules = r#"
:OUTPUT ACCEPT
:KUBE-SERVICES -
:KUBE-SVC-NPX46M4PTMTKRN6Y -
:KUBE-SEP-A -
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SVC-NPX46M4PTMTKRN6Y -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 192.168.1.10:8443
"#;
        let snapshot = snapshot_with(Some(vec![iptables_table(Backend::Nft, "nat", rules)]), None);
        assert_eq!(api_server_ports(&snapshot), BTreeSet::from([6443, 8443]));
        // nftables mode: the endpoint chain named after the Service.
        let rules = ":endpoint-5OJB2KTY-default/kubernetes/tcp/https__172.18.0.2/7443 -\n-A endpoint-5OJB2KTY-default/kubernetes/tcp/https__172.18.0.2/7443 -p tcp -j DNAT --to-destination 172.18.0.2:7443\n";
        let snapshot = snapshot_with(
            Some(vec![iptables_table(Backend::Nft, "kube-proxy", rules)]),
            None,
        );
        assert_eq!(api_server_ports(&snapshot), BTreeSet::from([6443, 7443]));
    }

    #[test]
    fn the_pod_behind_a_dnat_is_named_when_the_cluster_knows_it() {
        let table = iptables_table(Backend::Nft, "nat", PORTMAP);
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let pods = |ip: IpAddr| {
            (ip == "10.42.0.244".parse::<IpAddr>().unwrap())
                .then(|| "kube-system/svclb-apiproxy-x7k2p".to_string())
        };
        let findings = detect_naming_pods(&snapshot, &config(), &pods);
        let f = &findings[0];
        assert_eq!(f.evidence["pod"], "kube-system/svclb-apiproxy-x7k2p");
        assert!(
            f.message.ends_with(
                "installed by CNI portmap for container 8e92d16fab on network cbr0: pod kube-system/svclb-apiproxy-x7k2p with hostPort 6443"
            ),
            "{}",
            f.message
        );
        // Unknown to the cluster: no name, the portmap guess stays.
        let findings = detect(&snapshot, &config());
        assert!(findings[0].evidence.get("pod").is_none());
        assert!(findings[0].message.contains("e.g. a ServiceLB svclb pod"));
        // A DNAT of another owner to a pod IP names it too.
        let table = iptables_table(
            Backend::Nft,
            "nat",
            ":PREROUTING ACCEPT\n-A PREROUTING -p tcp --dport 22 -j DNAT --to-destination 10.42.0.244:2222\n",
        );
        let mut snapshot = snapshot_with(Some(vec![table]), None);
        node(&mut snapshot);
        let findings = detect_naming_pods(&snapshot, &config(), &pods);
        assert!(
            findings[0]
                .message
                .ends_with("; the DNAT goes to pod kube-system/svclb-apiproxy-x7k2p"),
            "{}",
            findings[0].message
        );
    }

    #[test]
    fn cni_owner_comment_is_parsed() {
        assert_eq!(
            cni_owner("dnat name: \"cbr0\" id: \"abc123\""),
            Some(("cbr0".to_string(), "abc123".to_string()))
        );
        assert_eq!(cni_owner("kubernetes service portals"), None);
    }

    /// The `*nat` part of a captured iptables-save fixture in `tests/fixtures/healthy`.
    fn fixture_nat(name: &str) -> Table {
        let path = format!(
            "{}/../tests/fixtures/healthy/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let nat: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "*nat")
            .skip(1)
            .take_while(|l| *l != "COMMIT")
            .collect();
        iptables_table(Backend::Nft, "nat", &nat.join("\n"))
    }

    /// The nftables ruleset of kube-proxy's nftables mode as the kernel sent it (verdict maps).
    fn kube_proxy_nftables() -> Vec<Table> {
        let path = format!(
            "{}/testdata/nft/kube_proxy_nftables.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).unwrap();
        crate::observe::nftables::decode_messages(&bytes, 1)
            .unwrap()
            .tables
    }

    /// A small deterministic generator (xorshift) for the edit sequences.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    fn nat_rule(line: &str) -> Rule {
        let chain = line.split_whitespace().nth(1).unwrap();
        let table = iptables_table(Backend::Nft, "nat", &format!(":{chain} - [0:0]\n{line}"));
        table.chains[0].rules[0].clone()
    }

    /// One random edit of `table` (rules appended, inserted, deleted; chains created, deleted,
    /// jumped to, in cycles too, or before they exist; map elements removed): what it says and
    /// what it touched.
    fn edit(table: &mut Table, dice: &mut Dice) -> (String, TableChanges) {
        let mut changes = TableChanges::default();
        let chains = table.chains.len();
        let pick = dice.below(chains);
        let name = table.chains[pick].name.clone();
        let spare = format!("EDIT-{}", dice.below(4));
        let text = match dice.below(8) {
            0 => {
                let port = [22, 6443, 10250, 8080][dice.below(4)];
                let line = format!(
                    "-A {name} -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.42.0.9:{port}"
                );
                table.chains[pick].rules.push(nat_rule(&line));
                line
            }
            1 => {
                if table.chain(&spare).is_none() {
                    table.chains.push(crate::model::ruleset::Chain {
                        name: spare.clone(),
                        handle: 0,
                        base: None,
                        rules: Vec::new(),
                    });
                }
                let port = [22, 6443, 10250][dice.below(3)];
                let line = format!(
                    "-A {spare} -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.42.0.10:{port}"
                );
                let rule = nat_rule(&line);
                table
                    .chains
                    .iter_mut()
                    .find(|c| c.name == spare)
                    .unwrap()
                    .rules
                    .push(rule);
                changes.chains.insert(spare.clone());
                line
            }
            2 => {
                let rules = table.chains[pick].rules.len();
                if rules == 0 {
                    return ("nothing".into(), changes);
                }
                let at = dice.below(rules);
                table.chains[pick].rules.remove(at);
                format!("-D {name} {}", at + 1)
            }
            3 if table.chains[pick].base.is_none() => {
                table.chains.remove(pick);
                for chain in &mut table.chains {
                    let before = chain.rules.len();
                    chain.rules.retain(|r| {
                        !matches!(&r.action, Action::Verdict { verdict } if verdict.target_chain() == Some(&name))
                    });
                    if chain.rules.len() != before {
                        changes.chains.insert(chain.name.clone());
                    }
                }
                format!("-X {name}")
            }
            4 => {
                let line = [
                    format!("-A {name} -d 10.99.0.1/32 -j RETURN"),
                    format!("-A {name} -p udp -j RETURN"),
                    format!("-A {name} -m addrtype --dst-type LOCAL -j RETURN"),
                ][dice.below(3)]
                .clone();
                table.chains[pick].rules.insert(0, nat_rule(&line));
                format!("-I{}", &line[2..])
            }
            5 => {
                let target = table.chains[dice.below(chains)].name.clone();
                let line = format!("-A {name} -j {target}");
                table.chains[pick].rules.push(nat_rule(&line));
                line
            }
            6 => {
                let line = format!("-A {name} -m addrtype --dst-type LOCAL -j {spare}");
                table.chains[pick].rules.push(nat_rule(&line));
                line
            }
            _ => {
                let Some(set) = table
                    .sets
                    .values_mut()
                    .filter(|s| !s.elements.is_empty())
                    .nth(dice.below(4))
                else {
                    return ("nothing".into(), changes);
                };
                let at = dice.below(set.elements.len());
                set.elements.remove(at);
                changes.sets.insert(set.name.clone());
                return (format!("element {at} of {} deleted", set.name), changes);
            }
        };
        changes.chains.insert(name);
        (text, changes)
    }

    #[test]
    fn incremental_findings_equal_a_full_evaluation_through_chain_edits() {
        let mut tables: Vec<Table> = [
            "k3s-flannel-svclb.rules",
            "docker-k3s.rules",
            "docker.rules",
        ]
        .into_iter()
        .map(fixture_nat)
        .collect();
        tables.extend(kube_proxy_nftables());
        let mut with_findings = 0;
        let mut replayed = 0;
        for (seed, start) in tables.into_iter().enumerate() {
            let mut table = start;
            let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (seed as u64 + 1));
            let mut memory = WalkMemory {
                keep_from: 0,
                ..WalkMemory::default()
            };
            for step in 0..150 {
                // One to three edits between two evaluations, as the engine folds the
                // transactions that arrive during a pass into the next one.
                let mut what = Vec::new();
                let mut changes = TableChanges::default();
                for _ in 0..if step == 0 { 0 } else { 1 + dice.below(3) } {
                    let (text, touched) = edit(&mut table, &mut dice);
                    what.push(text);
                    changes.chains.extend(touched.chains);
                    changes.sets.extend(touched.sets);
                }
                let mut snapshot = snapshot_with(Some(vec![table.clone()]), None);
                snapshot.addresses = Some(vec![LocalAddress {
                    address: "192.168.1.10".parse().unwrap(),
                    prefix: 24,
                    ifindex: 2,
                }]);
                snapshot.listeners = Some(vec![
                    listener("0.0.0.0", 10250, None),
                    listener("127.0.0.1", 8080, None),
                ]);
                let full = detect(&snapshot, &config());
                let mut changed = ChangedSince::default();
                changed.tables.insert(table.id.clone(), changes);
                // Now and then the engine cannot say what changed: start afresh.
                memory.forget((step % 37 != 36).then_some(&changed));
                let incremental = detect_remembering(
                    &snapshot,
                    &config(),
                    &crate::detect::no_pods,
                    Some(&mut memory),
                );
                assert_eq!(
                    incremental, full,
                    "table {} step {step} after {what:?}",
                    table.id
                );
                with_findings += usize::from(!full.is_empty());
            }
            replayed += memory.tables.values().map(|t| t.replayed).sum::<usize>();
        }
        // The sequences did make hijacks, and the memory did answer for unchanged chains.
        assert!(with_findings > 50, "{with_findings}");
        assert!(replayed > 100, "{replayed}");
    }
}
