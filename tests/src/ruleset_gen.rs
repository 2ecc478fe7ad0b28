//! The project's own generator of kube-proxy-shaped rule sets, for the end-to-end tests and the
//! benchmarks (`gen-ruleset` binary): N services with M endpoints each, written either as an
//! `iptables-restore` file in kube-proxy's iptables-mode shape or as an `nft -f` file in
//! kube-proxy's nftables-mode shape.
//!
//! What it models, and where the shapes come from: the rules kube-proxy itself writes, as its
//! sources and the expected dumps of its proxier tests show them (kubernetes/kubernetes
//! `pkg/proxy/iptables/proxier.go` with `proxier_test.go`, and `pkg/proxy/nftables/proxier.go`
//! with `helpers_test.go` / `proxier_test.go`):
//!
//! - names: kube-proxy's hashes, so a given service gets the very chain names kube-proxy would
//!   give it. iptables mode: `KUBE-SVC-`/`KUBE-EXT-`/`KUBE-FW-` + the first 16 characters of
//!   base32(sha256(`ns/name:port` + `tcp`)), `KUBE-SEP-` + base32(sha256(`ns/name:port` + `tcp` +
//!   `ip:port`)). nftables mode: `service-`/`external-`/`firewall-` + 8 characters of
//!   base32(sha256(`ns/name/tcp/port`)) + `-ns/name/tcp/port`, `endpoint-` + 8 characters of
//!   base32(sha256(`ns/name/tcp/port__ip/port`)) + that same string.
//! - iptables mode (k3s addressing: service CIDR 10.43.0.0/16, pod CIDR 10.42.0.0/16): `nat` with
//!   the portal jumps from PREROUTING/OUTPUT/POSTROUTING, KUBE-SERVICES (one `cluster IP` rule per
//!   service, LoadBalancer IP rules, and the NodePort rule that must stay last), one KUBE-SVC-
//!   chain per service (masquerade of off-cluster sources, then one `statistic --probability 1/k`
//!   rule per endpoint, the last without), one KUBE-SEP- chain per endpoint (hairpin masquerade,
//!   DNAT), KUBE-NODEPORTS and KUBE-EXT- chains for every tenth service (a NodePort; every fiftieth
//!   also has a LoadBalancer IP), KUBE-MARK-MASQ and KUBE-POSTROUTING; and `filter` with
//!   KUBE-FORWARD, KUBE-FIREWALL, KUBE-PROXY-FIREWALL, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and
//!   KUBE-SERVICES (a REJECT rule per service without endpoints) and their jumps. With two
//!   endpoints per service, 10,000 services give 83,208 `nat` rules in 31,008 chains (builtins
//!   included): the size class of the benchmark figures in the README.
//! - nftables mode (the upstream tests' addressing: cluster IPs in 172.30.0.0/16, pods in
//!   10.0.0.0/8, endpoints in 10.180.0.0/16): `table ip kube-proxy` with the base chains
//!   (nat-prerouting/-output/-postrouting, filter-* including the pre-DNAT firewall hooks), the
//!   helper chains (services, masquerading, mark-for-masquerade, cluster-ips-check,
//!   firewall-check, service-endpoints-check, nodeport-endpoints-check, reject-chain), the sets
//!   cluster-ips and nodeport-ips and the verdict maps service-ips, service-nodeports,
//!   firewall-ips, no-endpoint-services, no-endpoint-nodeports with concatenated keys. Services
//!   cycle through six kinds, the six services of the upstream test (`ns1/svc1` .. `ns6/svc6`):
//!   ClusterIP; LoadBalancer with an external IP and `externalTrafficPolicy: Local` and no local
//!   endpoint; NodePort; external IP; LoadBalancer with source ranges and session affinity; a
//!   service without endpoints. Service chains pick endpoints with `numgen random mod k vmap`.
//!
//! The output is a pure function of (services, endpoints): no randomness, no clock, no hash-map
//! order. In nftables mode endpoint `j` (0-based) of service `i` (1-based) has the address
//! 10.(180 + `j`).0.0 + `i` (10.180.0.`i` for the first endpoint of the first services, as in
//! upstream's tests).
//!
//! Long because it writes both of kube-proxy's modes (iptables and nftables) with their naming
//! rules; the two share the service model and hashes.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Which of kube-proxy's back-ends the output is shaped like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `iptables-restore` input (iptables mode; load with `iptables-nft-restore`).
    Iptables,
    /// `nft -f` input (nftables mode).
    Nftables,
}

impl std::str::FromStr for Mode {
    type Err = GenError;

    fn from_str(text: &str) -> Result<Mode, GenError> {
        match text {
            "iptables" => Ok(Mode::Iptables),
            "nftables" => Ok(Mode::Nftables),
            other => Err(GenError::Mode(other.to_string())),
        }
    }
}

/// Why a rule set cannot be generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenError {
    #[error("unknown mode {0:?}: expected `iptables` or `nftables`")]
    Mode(String),
    #[error("{services} services do not fit the service range (at most {max})")]
    TooManyServices { services: usize, max: usize },
    #[error("{endpoints} endpoints per service do not fit the pod range (at most {max})")]
    TooManyEndpoints { endpoints: usize, max: usize },
    #[error("{services} services x {endpoints} endpoints do not fit the pod range 10.42.0.0/16 (at most {max} endpoints in all)")]
    TooManyInAll {
        services: usize,
        endpoints: usize,
        max: usize,
    },
}

/// Most services of either mode: the cluster IPs stay inside one /16.
pub const MAX_SERVICES: usize = 65_000;
/// Most endpoints per service in nftables mode (endpoint `j` lives in 10.(180 + `j`).0.0/16).
pub const MAX_NFT_ENDPOINTS: usize = 75;
/// Most endpoints in all in iptables mode (they stay inside 10.42.0.0/16).
pub const MAX_IPT_ENDPOINTS: usize = 65_000;

/// The rule set of `services` services with `endpoints` endpoints each, in `mode`'s shape.
pub fn generate(mode: Mode, services: usize, endpoints: usize) -> Result<String, GenError> {
    match mode {
        Mode::Iptables => iptables(services, endpoints),
        Mode::Nftables => nftables(services, endpoints),
    }
}

/// base32 (RFC 4648 alphabet, no padding) of sha256(`text`), cut to `len` characters: the hash
/// kube-proxy puts in its chain names.
pub fn hash_name(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(len);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in digest {
        if out.len() == len {
            break;
        }
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && out.len() < len {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    out
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n as u32)
}

/// One service port of the iptables-mode model, named as kube-proxy names it.
struct IptService {
    port_name: String,
    cluster_ip: Ipv4Addr,
    endpoints: Vec<Ipv4Addr>,
    node_port: Option<u16>,
    lb_ip: Option<Ipv4Addr>,
}

impl IptService {
    fn new(index: usize, endpoints: usize) -> IptService {
        let port_name = format!("ns{}/svc{index}:http", index % 50);
        let cluster_ip = offset(Ipv4Addr::new(10, 43, 0, 10), index);
        let endpoints = (0..endpoints)
            .map(|j| offset(Ipv4Addr::new(10, 42, 0, 2), index * endpoints + j))
            .collect();
        let node_port = (index % 10 == 9).then(|| 30_000 + (index / 10) as u16);
        let lb_ip = (index % 50 == 49).then(|| offset(Ipv4Addr::new(198, 18, 0, 1), index / 50));
        IptService {
            port_name,
            cluster_ip,
            endpoints,
            node_port,
            lb_ip,
        }
    }

    fn chain(&self, prefix: &str) -> String {
        format!(
            "{prefix}{}",
            hash_name(&format!("{}tcp", self.port_name), 16)
        )
    }

    fn sep(&self, endpoint: Ipv4Addr) -> String {
        format!(
            "KUBE-SEP-{}",
            hash_name(&format!("{}tcp{endpoint}:8080", self.port_name), 16)
        )
    }
}

/// kube-proxy's iptables mode for `services` ClusterIP services (every tenth a NodePort, every
/// fiftieth also a LoadBalancer) with `endpoints` endpoints each, on a k3s node.
pub fn iptables(services: usize, endpoints: usize) -> Result<String, GenError> {
    if services > MAX_SERVICES {
        return Err(GenError::TooManyServices {
            services,
            max: MAX_SERVICES,
        });
    }
    if services.saturating_mul(endpoints) > MAX_IPT_ENDPOINTS {
        return Err(GenError::TooManyInAll {
            services,
            endpoints,
            max: MAX_IPT_ENDPOINTS,
        });
    }
    let all: Vec<IptService> = (0..services)
        .map(|i| IptService::new(i, endpoints))
        .collect();

    // filter
    let mut out =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A INPUT -j KUBE-FIREWALL\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -j KUBE-FIREWALL\n",
        "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    ));
    for svc in all.iter().filter(|s| s.endpoints.is_empty()) {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
            svc.cluster_ip, svc.port_name
        );
        if let Some(port) = svc.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"{} has no endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport {port} -j REJECT --reject-with icmp-port-unreachable",
                svc.port_name
            );
        }
    }
    out.push_str("COMMIT\n");

    // nat
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for svc in all.iter().filter(|s| !s.endpoints.is_empty()) {
        let _ = writeln!(out, ":{} - [0:0]", svc.chain("KUBE-SVC-"));
        if svc.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", svc.chain("KUBE-EXT-"));
        }
        for ep in &svc.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", svc.sep(*ep));
        }
    }
    out.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
    for svc in all.iter().filter(|s| !s.endpoints.is_empty()) {
        let name = &svc.port_name;
        let svc_chain = svc.chain("KUBE-SVC-");
        let ip = svc.cluster_ip;
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {svc_chain}"
        );
        if let Some(port) = svc.node_port {
            let ext = svc.chain("KUBE-EXT-");
            if let Some(lb) = svc.lb_ip {
                let _ = writeln!(
                    out,
                    "-A KUBE-SERVICES -d {lb}/32 -p tcp -m comment --comment \"{name} loadbalancer IP\" -m tcp --dport 80 -j {ext}"
                );
            }
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{name}\" -m tcp --dport {port} -j {ext}"
            );
            let _ = writeln!(
                out,
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(out, "-A {ext} -j {svc_chain}");
        }
        let _ = writeln!(
            out,
            "-A {svc_chain} ! -s 10.42.0.0/16 -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
        );
        let k = svc.endpoints.len();
        for (j, ep) in svc.endpoints.iter().enumerate() {
            let sep = svc.sep(*ep);
            let left = k - j;
            let statistic = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A {svc_chain} -m comment --comment \"{name} -> {ep}:8080\"{statistic} -j {sep}"
            );
            let _ = writeln!(
                out,
                "-A {sep} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                out,
                "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}:8080"
            );
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    Ok(out)
}

/// The six kinds of service the nftables-mode model cycles through (upstream's `svc1`..`svc6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    LocalLoadBalancer,
    NodePort,
    ExternalIp,
    FirewalledLoadBalancer,
    NoEndpoints,
}

impl Kind {
    fn of(index: usize) -> Kind {
        match (index - 1) % 6 {
            0 => Kind::ClusterIp,
            1 => Kind::LocalLoadBalancer,
            2 => Kind::NodePort,
            3 => Kind::ExternalIp,
            4 => Kind::FirewalledLoadBalancer,
            _ => Kind::NoEndpoints,
        }
    }
}

/// One service port of the nftables-mode model.
struct NftService {
    index: usize,
    kind: Kind,
    /// `ns/name/tcp/p80`, the text kube-proxy hashes and shows in chain names.
    base: String,
    /// `ns/name:p80`, the text of element comments.
    port_name: String,
    cluster_ip: Ipv4Addr,
    endpoints: Vec<Ipv4Addr>,
}

impl NftService {
    fn new(index: usize, endpoints: usize) -> NftService {
        let kind = Kind::of(index);
        let count = if kind == Kind::NoEndpoints {
            0
        } else {
            endpoints
        };
        NftService {
            index,
            kind,
            base: format!("ns{index}/svc{index}/tcp/p80"),
            port_name: format!("ns{index}/svc{index}:p80"),
            cluster_ip: offset(Ipv4Addr::new(172, 30, 0, 40), index),
            endpoints: (0..count)
                .map(|j| offset(Ipv4Addr::new(10, 180, 0, 0), j * 0x1_0000 + index))
                .collect(),
        }
    }

    fn chain(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", hash_name(&self.base, 8), self.base)
    }

    fn endpoint_id(&self, ep: Ipv4Addr) -> String {
        format!("{}__{ep}/80", self.base)
    }

    fn endpoint_chain(&self, ep: Ipv4Addr) -> String {
        let id = self.endpoint_id(ep);
        format!("endpoint-{}-{id}", hash_name(&id, 8))
    }

    fn affinity_set(&self, ep: Ipv4Addr) -> String {
        let id = self.endpoint_id(ep);
        format!("affinity-{}-{id}", hash_name(&id, 8))
    }

    /// The NodePort of the three kinds that have one: distinct per service.
    fn node_port(&self) -> u16 {
        let slot = match self.kind {
            Kind::LocalLoadBalancer => 0,
            Kind::NodePort => 1,
            _ => 2,
        };
        30_000 + ((self.index - 1) / 6 * 3 + slot) as u16
    }

    fn external_ip(&self) -> Ipv4Addr {
        offset(Ipv4Addr::new(100, 64, 0, 0), self.index)
    }

    fn lb_ip(&self) -> Ipv4Addr {
        offset(Ipv4Addr::new(198, 18, 0, 0), self.index)
    }
}

const NFT_HEADER: &str = r#"add table ip kube-proxy
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
"#;

/// kube-proxy's nftables mode for `services` services (cycling through the six kinds of the
/// module documentation) with `endpoints` endpoints each (none for the sixth kind).
pub fn nftables(services: usize, endpoints: usize) -> Result<String, GenError> {
    if services > MAX_SERVICES {
        return Err(GenError::TooManyServices {
            services,
            max: MAX_SERVICES,
        });
    }
    if endpoints > MAX_NFT_ENDPOINTS {
        return Err(GenError::TooManyEndpoints {
            endpoints,
            max: MAX_NFT_ENDPOINTS,
        });
    }
    let mut out = String::from(NFT_HEADER);
    for index in 1..=services {
        nft_service(&mut out, &NftService::new(index, endpoints));
    }
    Ok(out)
}

fn nft_service(out: &mut String, svc: &NftService) {
    const T: &str = "ip kube-proxy";
    let service = svc.chain("service");
    let external = svc.chain("external");
    let firewall = svc.chain("firewall");
    let name = &svc.port_name;
    let ip = svc.cluster_ip;
    let has_external = !matches!(svc.kind, Kind::ClusterIp | Kind::NoEndpoints);

    let _ = writeln!(out, "add element {T} cluster-ips {{ {ip} }}");
    if svc.kind == Kind::NoEndpoints {
        let _ = writeln!(
            out,
            "add element {T} no-endpoint-services {{ {ip} . tcp . 80 comment \"{name}\" : goto reject-chain }}"
        );
        return;
    }

    // Chains first, so that every rule and element below refers to an existing one.
    let affinity = svc.kind == Kind::FirewalledLoadBalancer;
    if affinity {
        for ep in &svc.endpoints {
            let _ = writeln!(
                out,
                "add set {T} {} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}",
                svc.affinity_set(*ep)
            );
        }
    }
    let _ = writeln!(out, "add chain {T} {service}");
    if has_external {
        let _ = writeln!(out, "add chain {T} {external}");
    }
    for ep in &svc.endpoints {
        let _ = writeln!(out, "add chain {T} {}", svc.endpoint_chain(*ep));
    }
    if svc.kind == Kind::FirewalledLoadBalancer {
        let _ = writeln!(out, "add chain {T} {firewall}");
    }

    let _ = writeln!(
        out,
        "add rule {T} {service} ip daddr {ip} ip saddr != 10.0.0.0/8 jump mark-for-masquerade"
    );
    if affinity {
        for ep in &svc.endpoints {
            let _ = writeln!(
                out,
                "add rule {T} {service} ip saddr @{} goto {}",
                svc.affinity_set(*ep),
                svc.endpoint_chain(*ep)
            );
        }
    }
    if !svc.endpoints.is_empty() {
        let arms: Vec<String> = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, ep)| format!("{j} : goto {}", svc.endpoint_chain(*ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule {T} {service} numgen random mod {} vmap {{ {} }}",
            svc.endpoints.len(),
            arms.join(" , ")
        );
    }
    match svc.kind {
        Kind::LocalLoadBalancer => {
            let _ = writeln!(out, "add rule {T} {external} ip saddr 10.0.0.0/8 goto {service} comment \"short-circuit pod traffic\"");
            let _ = writeln!(out, "add rule {T} {external} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"");
            let _ = writeln!(out, "add rule {T} {external} fib saddr type local goto {service} comment \"short-circuit local traffic\"");
        }
        Kind::NodePort | Kind::ExternalIp | Kind::FirewalledLoadBalancer => {
            let _ = writeln!(out, "add rule {T} {external} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule {T} {external} goto {service}");
        }
        Kind::ClusterIp | Kind::NoEndpoints => {}
    }
    for ep in &svc.endpoints {
        let chain = svc.endpoint_chain(*ep);
        let _ = writeln!(
            out,
            "add rule {T} {chain} ip saddr {ep} jump mark-for-masquerade"
        );
        if affinity {
            let _ = writeln!(
                out,
                "add rule {T} {chain} update @{} {{ ip saddr }}",
                svc.affinity_set(*ep)
            );
        }
        let _ = writeln!(out, "add rule {T} {chain} meta l4proto tcp dnat to {ep}:80");
    }
    if svc.kind == Kind::FirewalledLoadBalancer {
        let _ = writeln!(
            out,
            "add rule {T} {firewall} ip saddr != {{ 203.0.113.0/25 }} drop"
        );
    }

    let _ = writeln!(
        out,
        "add element {T} service-ips {{ {ip} . tcp . 80 : goto {service} }}"
    );
    let port = svc.node_port();
    match svc.kind {
        Kind::LocalLoadBalancer => {
            let (ext_ip, lb) = (svc.external_ip(), svc.lb_ip());
            for addr in [ext_ip, lb] {
                let _ = writeln!(
                    out,
                    "add element {T} service-ips {{ {addr} . tcp . 80 : goto {external} }}"
                );
            }
            let _ = writeln!(
                out,
                "add element {T} service-nodeports {{ tcp . {port} : goto {external} }}"
            );
            // externalTrafficPolicy: Local without a local endpoint: outside traffic is dropped.
            let _ = writeln!(
                out,
                "add element {T} no-endpoint-nodeports {{ tcp . {port} comment \"{name}\" : drop }}"
            );
            for addr in [lb, ext_ip] {
                let _ = writeln!(
                    out,
                    "add element {T} no-endpoint-services {{ {addr} . tcp . 80 comment \"{name}\" : drop }}"
                );
            }
        }
        Kind::NodePort => {
            let _ = writeln!(
                out,
                "add element {T} service-nodeports {{ tcp . {port} : goto {external} }}"
            );
        }
        Kind::ExternalIp => {
            let _ = writeln!(
                out,
                "add element {T} service-ips {{ {} . tcp . 80 : goto {external} }}",
                svc.external_ip()
            );
        }
        Kind::FirewalledLoadBalancer => {
            let lb = svc.lb_ip();
            let _ = writeln!(
                out,
                "add element {T} service-ips {{ {lb} . tcp . 80 : goto {external} }}"
            );
            let _ = writeln!(
                out,
                "add element {T} service-nodeports {{ tcp . {port} : goto {external} }}"
            );
            let _ = writeln!(
                out,
                "add element {T} firewall-ips {{ {lb} . tcp . 80 : goto {firewall} }}"
            );
        }
        Kind::ClusterIp | Kind::NoEndpoints => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str, prefix: &str) -> usize {
        text.lines().filter(|l| l.starts_with(prefix)).count()
    }

    /// The lines of one table (`*nat` .. `COMMIT`) of an iptables-restore file.
    fn table<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| *l != format!("*{name}"))
            .take_while(|l| *l != "COMMIT")
            .collect()
    }

    #[test]
    fn hashes_are_kube_proxys() {
        // Names from the expected dumps of kube-proxy's proxier tests.
        assert_eq!(hash_name("ns1/svc1:p80tcp", 16), "XPGD46QRK7WJZT7O");
        assert_eq!(
            hash_name("ns1/svc1:p80tcp10.180.0.1:80", 16),
            "SXIVWICOYRO3J4NJ"
        );
        assert_eq!(hash_name("ns1/svc1/tcp/p80", 8), "ULMVA6XW");
        assert_eq!(hash_name("ns1/svc1/tcp/p80__10.180.0.1/80", 8), "5OJB2KTY");
        assert_eq!(hash_name("ns2/svc2/tcp/p80", 8), "42NFTM6N");
    }

    #[test]
    fn iptables_counts_are_in_the_benchmark_size_class() {
        let text = iptables(10_000, 2).unwrap();
        let nat = table(&text, "nat");
        // 7 fixed + 8 per service (portal, masquerade, 2 x (pick, hairpin, DNAT)) + 3 per
        // NodePort (KUBE-NODEPORTS rule, two KUBE-EXT rules) + 1 per LoadBalancer IP + the
        // final KUBE-NODEPORTS jump.
        let node_ports = (0..10_000).filter(|i| i % 10 == 9).count();
        let lbs = (0..10_000).filter(|i| i % 50 == 49).count();
        assert_eq!(node_ports, 1_000);
        assert_eq!(lbs, 200);
        let rules = count_in(&nat, "-A ");
        assert_eq!(rules, 7 + 8 * 10_000 + 3 * node_ports + lbs + 1);
        assert_eq!(rules, 83_208);
        let chains = count_in(&nat, ":");
        assert_eq!(chains, 4 + 4 + 10_000 + 20_000 + node_ports);
        assert_eq!(chains, 31_008);
        let filter = table(&text, "filter");
        assert_eq!(count_in(&filter, ":"), 9);
        assert_eq!(count_in(&filter, "-A KUBE-FORWARD "), 3);
    }

    fn count_in(lines: &[&str], prefix: &str) -> usize {
        lines.iter().filter(|l| l.starts_with(prefix)).count()
    }

    #[test]
    fn iptables_shape_of_one_service() {
        let text = iptables(10, 3).unwrap();
        let svc = format!("KUBE-SVC-{}", hash_name("ns0/svc0:httptcp", 16));
        let sep0 = format!(
            "KUBE-SEP-{}",
            hash_name("ns0/svc0:httptcp10.42.0.2:8080", 16)
        );
        let expected = [
            format!("-A KUBE-SERVICES -d 10.43.0.10/32 -p tcp -m comment --comment \"ns0/svc0:http cluster IP\" -m tcp --dport 80 -j {svc}"),
            format!("-A {svc} ! -s 10.42.0.0/16 -d 10.43.0.10/32 -p tcp -m comment --comment \"ns0/svc0:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"),
            format!("-A {svc} -m comment --comment \"ns0/svc0:http -> 10.42.0.2:8080\" -m statistic --mode random --probability 0.33333333333 -j {sep0}"),
            format!("-A {sep0} -s 10.42.0.2/32 -m comment --comment \"ns0/svc0:http\" -j KUBE-MARK-MASQ"),
            format!("-A {sep0} -p tcp -m comment --comment \"ns0/svc0:http\" -m tcp -j DNAT --to-destination 10.42.0.2:8080"),
        ];
        for line in &expected {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("--probability 0.50000000000 -j"));
        // The last endpoint of a service is picked without a statistic match.
        let last = format!(
            "-A {svc} -m comment --comment \"ns0/svc0:http -> 10.42.0.4:8080\" -j KUBE-SEP-"
        );
        assert!(text.lines().any(|l| l.starts_with(&last)), "{text}");
        // svc9 is the NodePort: KUBE-NODEPORTS -> KUBE-EXT -> KUBE-SVC.
        let ext = format!("KUBE-EXT-{}", hash_name("ns9/svc9:httptcp", 16));
        assert!(text.contains(&format!("-A KUBE-NODEPORTS -p tcp -m comment --comment \"ns9/svc9:http\" -m tcp --dport 30000 -j {ext}\n")));
        assert!(text.contains(&format!(
            "-A {ext} -j KUBE-SVC-{}\n",
            hash_name("ns9/svc9:httptcp", 16)
        )));
        // The NodePort rule stays the last of KUBE-SERVICES.
        let nat = table(&text, "nat");
        let last_services = nat
            .iter()
            .rev()
            .find(|l| l.starts_with("-A KUBE-SERVICES "))
            .unwrap();
        assert!(last_services.ends_with("-j KUBE-NODEPORTS"));
        // Every chain a rule jumps to is declared in its table.
        for name in ["filter", "nat"] {
            let lines = table(&text, name);
            let declared: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(':'))
                .map(|l| l.split(' ').next().unwrap())
                .collect();
            for line in lines.iter().filter(|l| l.starts_with("-A ")) {
                let chain = line.split(' ').nth(1).unwrap();
                assert!(declared.contains(&chain), "{line}");
                let target = line
                    .rsplit_once(" -j ")
                    .unwrap()
                    .1
                    .split(' ')
                    .next()
                    .unwrap();
                if target.starts_with("KUBE-") {
                    assert!(declared.contains(&target), "{line}");
                }
            }
        }
    }

    #[test]
    fn services_without_endpoints_are_rejected_in_filter() {
        let text = iptables(3, 0).unwrap();
        assert_eq!(count(&text, "-A KUBE-SERVICES -d 10.43.0."), 3);
        assert!(text.contains("\"ns1/svc1:http has no endpoints\""));
        assert_eq!(count(&text, ":KUBE-SVC-"), 0);
    }

    #[test]
    fn nftables_shape_of_the_six_kinds() {
        let text = nftables(6, 1).unwrap();
        for line in [
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
            "add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"",
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain }",
            "add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"));
        assert!(text.contains("update @affinity-"));
        assert!(text.contains("add element ip kube-proxy firewall-ips { 198.18.0.5 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }"));
        assert_eq!(count(&text, "add chain ip kube-proxy endpoint-"), 5);
        assert_eq!(count(&text, "add element ip kube-proxy cluster-ips "), 6);
    }

    #[test]
    fn nftables_refers_only_to_what_it_declared_before() {
        let text = nftables(60, 3).unwrap();
        let mut chains: Vec<&str> = Vec::new();
        let mut sets: Vec<&str> = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match (words[0], words[1]) {
                ("add", "chain") => chains.push(words[4]),
                ("add", "set") | ("add", "map") => sets.push(words[4]),
                _ => {
                    for pair in words.windows(2) {
                        if pair[0] == "goto" || pair[0] == "jump" {
                            assert!(chains.contains(&pair[1]), "{line}");
                        }
                    }
                    for word in words.iter().filter_map(|w| w.strip_prefix('@')) {
                        assert!(sets.contains(&word), "{line}");
                    }
                }
            }
        }
        // Three endpoints: one numgen arm each, five kinds with endpoints in every six.
        assert_eq!(count(&text, "add chain ip kube-proxy endpoint-"), 50 * 3);
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains("10.182.0.59/80"));
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(iptables(500, 2).unwrap(), iptables(500, 2).unwrap());
        assert_eq!(nftables(500, 2).unwrap(), nftables(500, 2).unwrap());
        assert_ne!(iptables(500, 2).unwrap(), iptables(501, 2).unwrap());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            "ipvs".parse::<Mode>(),
            Err(GenError::Mode("ipvs".to_string()))
        );
        assert!(matches!(
            iptables(40_000, 2),
            Err(GenError::TooManyInAll { .. })
        ));
        assert!(matches!(
            nftables(70_000, 1),
            Err(GenError::TooManyServices { .. })
        ));
        assert!(matches!(
            nftables(10, 300),
            Err(GenError::TooManyEndpoints { .. })
        ));
    }

    #[test]
    fn the_committed_fixture_is_the_generators_output() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/kube-proxy-nftables-mode.nft");
        let fixture = std::fs::read_to_string(&path).expect("tests/fixtures nftables-mode file");
        let body: String = fixture
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            body,
            nftables(6, 1).unwrap(),
            "regenerate {}",
            path.display()
        );
    }
}
