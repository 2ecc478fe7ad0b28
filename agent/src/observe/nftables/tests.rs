//! Decoding tests on kernel replies captured from real rulesets (see `agent/testdata/nft/README.md`):
//! exact model values, and no panic on truncated or corrupted bytes.
//!
//! Tests only: decoding of the captured kernel replies in `agent/testdata/nft`.

use super::*;
use crate::model::ruleset::{
    Action, Cidr, Direction, Field, KeyValue, Match, NatRange, PortRange, SetDataType, SetElement,
};
use std::net::IpAddr;

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/nft/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn decoded(name: &str) -> Ruleset {
    decode_messages(&capture(name), 7).expect("captured messages decode")
}

fn table<'a>(ruleset: &'a Ruleset, family: Family, name: &str) -> &'a Table {
    ruleset
        .tables
        .iter()
        .find(|t| t.id.family == family && t.id.name == name)
        .unwrap_or_else(|| panic!("no table {family} {name}"))
}

fn rules<'a>(table: &'a Table, chain: &str) -> &'a [Rule] {
    &table
        .chain(chain)
        .unwrap_or_else(|| panic!("no chain {chain}"))
        .rules
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(addr: &str, prefix: u8) -> Cidr {
    Cidr {
        addr: ip(addr),
        prefix,
    }
}

fn host_nat(addr: &str, port: u16) -> NatRange {
    NatRange {
        addresses: Some((ip(addr), ip(addr))),
        ports: Some(PortRange::single(port)),
    }
}

fn tcp() -> Match {
    Match::L4Proto {
        proto: 6,
        negated: false,
    }
}

fn dport(port: u16) -> Match {
    Match::Ports {
        direction: Direction::Destination,
        ranges: vec![PortRange::single(port)],
        negated: false,
    }
}

fn jump(chain: &str) -> Action {
    Action::Verdict {
        verdict: Verdict::Jump(chain.into()),
    }
}

#[test]
fn iptables_nft_tables_chains_and_base_chains() {
    let ruleset = decoded("iptables_nft");
    assert_eq!(ruleset.generation, Some(7));
    let names: Vec<(Family, &str)> = ruleset
        .tables
        .iter()
        .map(|t| (t.id.family, t.id.name.as_str()))
        .collect();
    assert_eq!(names, vec![(Family::Ip, "nat"), (Family::Ip, "filter")]);
    let nat = table(&ruleset, Family::Ip, "nat");
    assert_eq!(nat.id.backend, Backend::Nft);
    let chains: Vec<&str> = nat.chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        chains,
        vec![
            "PREROUTING",
            "INPUT",
            "OUTPUT",
            "POSTROUTING",
            "CILIUM_POST_nat",
            "OLD_CILIUM_POST_nat",
            "CNI-HOSTPORT-DNAT",
            "CNI-DN-0f3c9a1b2d4e5f6a7"
        ]
    );
    let postrouting = nat.chain("POSTROUTING").unwrap();
    assert_eq!(
        postrouting.base,
        Some(BaseChain {
            hook: HookPoint::Postrouting,
            priority: 100,
            chain_type: "nat".into(),
            policy: Verdict::Accept,
        })
    );
    assert_eq!(nat.chain("CILIUM_POST_nat").unwrap().base, None);
    let filter = table(&ruleset, Family::Ip, "filter");
    assert_eq!(
        filter
            .chain("FORWARD")
            .unwrap()
            .base
            .as_ref()
            .unwrap()
            .policy,
        Verdict::Drop
    );
    assert_eq!(ruleset.rule_count(), 12);
}

#[test]
fn iptables_nft_native_parts_of_cilium_and_portmap_rules() {
    let ruleset = decoded("iptables_nft");
    let nat = table(&ruleset, Family::Ip, "nat");

    let masquerade = &rules(nat, "OLD_CILIUM_POST_nat")[0];
    assert_eq!(
        masquerade.matches[..3],
        [
            // `! -o cilium_+`: a cmp on "cilium_" without its NUL.
            Match::Interface {
                direction: Direction::Destination,
                name: "cilium_+".into(),
                negated: true,
            },
            // `-s 10.42.0.0/24`: a 3-byte payload load.
            Match::Address {
                direction: Direction::Source,
                cidr: net("10.42.0.0", 24),
                negated: false,
            },
            Match::Address {
                direction: Direction::Destination,
                cidr: net("10.42.0.0", 24),
                negated: true,
            },
        ]
    );
    // iptables-nft gives every rule a counter expression.
    assert_eq!(masquerade.counters, Some((0, 0)));

    let snat = &rules(nat, "CILIUM_POST_nat")[1];
    assert_eq!(
        snat.matches,
        vec![
            Match::Interface {
                direction: Direction::Destination,
                name: "eth0".into(),
                negated: false,
            },
            Match::Address {
                direction: Direction::Source,
                cidr: net("10.42.0.5", 32),
                negated: false,
            },
        ]
    );

    let hostport = &rules(nat, "CNI-HOSTPORT-DNAT")[0];
    assert_eq!(hostport.matches[0], tcp());
    assert_eq!(hostport.action, jump("CNI-DN-0f3c9a1b2d4e5f6a7"));
    let dnat = &rules(nat, "CNI-DN-0f3c9a1b2d4e5f6a7")[0];
    // `-p tcp -m tcp --dport 6443` is native; the DNAT target is an xt blob.
    assert_eq!(dnat.matches, vec![tcp(), dport(6443)]);
    assert_eq!(
        rules(nat, "PREROUTING")[0].action,
        jump("CNI-HOSTPORT-DNAT")
    );
    assert_eq!(rules(nat, "OUTPUT")[0].action, jump("CNI-HOSTPORT-DNAT"));

    let filter = table(&ruleset, Family::Ip, "filter");
    let input = rules(filter, "INPUT");
    // `-s 10.1.0.0/20`: a 4-byte load masked by a bitwise expression.
    assert_eq!(
        input[0].matches,
        vec![
            Match::L4Proto {
                proto: 17,
                negated: false
            },
            Match::Address {
                direction: Direction::Source,
                cidr: net("10.1.0.0", 20),
                negated: false,
            },
            dport(53),
        ]
    );
    assert_eq!(
        input[0].action,
        Action::Verdict {
            verdict: Verdict::Accept
        }
    );
    // `--dport 8000:8080` is a range expression.
    assert_eq!(
        input[1].matches[1],
        Match::Ports {
            direction: Direction::Destination,
            ranges: vec![PortRange {
                first: 8000,
                last: 8080
            }],
            negated: false,
        }
    );
    assert_eq!(
        rules(filter, "FORWARD")[0].matches,
        vec![
            Match::Interface {
                direction: Direction::Source,
                name: "eth0".into(),
                negated: false,
            },
            Match::Interface {
                direction: Direction::Destination,
                name: "cilium_host".into(),
                negated: false,
            },
        ]
    );
}

#[test]
fn iptables_nft_xt_blobs_reach_the_xt_decoders() {
    // Whatever the xt decoders make of them, the blobs of `-m addrtype`, `-m comment`,
    // `-m multiport`, MASQUERADE, SNAT and DNAT are handed over with their names: the rules
    // decode exactly as the xt decoders decode those blobs for the ip family.
    let ruleset = decoded("iptables_nft");
    let nat = table(&ruleset, Family::Ip, "nat");
    let bytes = capture("iptables_nft");
    let mut seen = Vec::new();
    for msg in split_messages(&bytes) {
        let msg = msg.unwrap();
        if msg.msg_type != message_type(NFT_MSG_NEWRULE) {
            continue;
        }
        for name in [
            &b"addrtype"[..],
            b"multiport",
            b"MASQUERADE",
            b"SNAT",
            b"DNAT",
        ] {
            if msg.payload.windows(name.len()).any(|w| w == name) {
                seen.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    for name in ["addrtype", "multiport", "MASQUERADE", "SNAT", "DNAT"] {
        assert!(seen.iter().any(|s| s == name), "{name} blob not captured");
    }
    let dnat = &rules(nat, "CNI-DN-0f3c9a1b2d4e5f6a7")[0];
    let expected_dnat = crate::observe::xt::decode_target(
        "DNAT",
        2,
        &xt_info(&bytes, "CNI-DN-0f3c9a1b2d4e5f6a7", "target"),
        Family::Ip,
    );
    assert_eq!(dnat.action, expected_dnat);
}

/// The NFTA_*_INFO blob of the first `kind` (match/target) expression of the first rule of `chain`.
fn xt_info(bytes: &[u8], chain: &str, kind: &str) -> Vec<u8> {
    for msg in split_messages(bytes) {
        let msg = msg.unwrap();
        if msg.msg_type != message_type(NFT_MSG_NEWRULE) {
            continue;
        }
        let attrs = &msg.payload[4..];
        if rule_names(attrs).map(|(_, c)| c) != Some(chain) {
            continue;
        }
        let expressions = Attrs::new(attrs).find(|a| a.kind == 4).unwrap();
        for elem in expressions.nested_attrs() {
            let mut name = "";
            let mut data: &[u8] = &[];
            for attr in elem.nested_attrs() {
                match attr.kind {
                    1 => name = attr.str(),
                    2 => data = attr.value,
                    _ => {}
                }
            }
            if name == kind {
                return Attrs::new(data)
                    .find(|a| a.kind == 3)
                    .map(|a| a.value.to_vec())
                    .unwrap();
            }
        }
    }
    panic!("no {kind} in {chain}")
}

#[test]
fn native_nat_sets_ranges_redirect_and_masquerade() {
    let ruleset = decoded("native");
    let hostnat = table(&ruleset, Family::Ip, "hostnat");
    let prerouting = rules(hostnat, "prerouting");
    assert_eq!(prerouting[0].matches, vec![tcp(), dport(6443)]);
    assert_eq!(
        prerouting[0].action,
        Action::Dnat {
            range: host_nat("10.42.0.244", 6443)
        }
    );
    let web = &prerouting[1];
    assert_eq!(
        web.matches,
        vec![
            Match::Address {
                direction: Direction::Destination,
                cidr: net("192.168.1.0", 24),
                negated: false,
            },
            tcp(),
            Match::SetLookup {
                set: "__set0".into(),
                key: vec![Field::Port(Direction::Destination)],
                negated: false,
            },
        ]
    );
    assert_eq!(
        web.action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip("10.42.0.10"), ip("10.42.0.12"))),
                ports: Some(PortRange {
                    first: 8080,
                    last: 8090
                }),
            }
        }
    );
    assert_eq!(web.comment.as_deref(), Some("web"));
    assert_eq!(web.counters, Some((0, 0)));
    let ports = &hostnat.sets["__set0"];
    assert!(ports.anonymous && ports.interval && !ports.is_verdict_map);
    assert_eq!(ports.key_types, vec![SetDataType::InetService]);
    let elements: Vec<_> = ports
        .elements
        .iter()
        .map(|e| (e.key.clone(), e.key_end.clone()))
        .collect();
    assert_eq!(
        elements,
        vec![
            (vec![KeyValue::Port(80)], None),
            (vec![KeyValue::Port(443)], None),
            (vec![KeyValue::Port(8000)], Some(vec![KeyValue::Port(8080)])),
        ]
    );
    assert_eq!(
        prerouting[2].action,
        Action::Redirect {
            ports: Some(PortRange::single(5353))
        }
    );
    let guard_jump = &prerouting[3];
    assert_eq!(
        guard_jump.matches,
        vec![
            Match::Interface {
                direction: Direction::Source,
                name: "eth+".into(),
                negated: false,
            },
            tcp(),
            Match::Ports {
                direction: Direction::Destination,
                ranges: vec![PortRange::single(22)],
                negated: true,
            },
            Match::SetLookup {
                set: "__set1".into(),
                key: vec![Field::Address(Direction::Source)],
                negated: true,
            },
        ]
    );
    assert_eq!(guard_jump.action, jump("guard"));
    let sources: Vec<_> = hostnat.sets["__set1"]
        .elements
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(
        sources,
        vec![
            vec![KeyValue::Address(net("10.0.0.0", 8))],
            vec![KeyValue::Address(net("192.168.0.5", 32))],
        ]
    );
    let guard = rules(hostnat, "guard");
    assert_eq!(
        guard[0].matches,
        vec![Match::Opaque {
            description: "ct state established,related".into()
        }]
    );
    assert_eq!(
        guard[1].matches,
        vec![Match::Opaque {
            description: "meta mark == 0x10".into()
        }]
    );
    let postrouting = rules(hostnat, "postrouting");
    assert_eq!(postrouting[0].action, Action::Masquerade { ports: None });
    assert_eq!(
        postrouting[1].matches,
        vec![Match::Address {
            direction: Direction::Source,
            cidr: net("10.42.0.0", 20),
            negated: false,
        }]
    );
    assert_eq!(
        postrouting[1].action,
        Action::Snat {
            range: NatRange {
                addresses: Some((ip("192.168.1.10"), ip("192.168.1.10"))),
                ports: None,
            }
        }
    );
    let input = hostnat.chain("input").unwrap();
    assert_eq!(input.base.as_ref().unwrap().policy, Verdict::Drop);
    assert_eq!(
        input.rules[0].matches,
        vec![
            Match::AddrType {
                direction: Direction::Destination,
                types: 1 << 2,
                negated: false,
            },
            tcp(),
            dport(10250),
        ]
    );
}

#[test]
fn native_ip6_and_inet_tables() {
    let ruleset = decoded("native");
    let hostnat6 = table(&ruleset, Family::Ip6, "hostnat6");
    let prerouting = rules(hostnat6, "prerouting");
    assert_eq!(
        prerouting[0].action,
        Action::Dnat {
            range: host_nat("fd00::10", 6443)
        }
    );
    assert_eq!(
        prerouting[1].matches,
        vec![
            Match::Address {
                direction: Direction::Destination,
                cidr: net("fd00:1::", 64),
                negated: false,
            },
            tcp(),
        ]
    );
    assert_eq!(
        prerouting[1].action,
        Action::Verdict {
            verdict: Verdict::Return
        }
    );
    let mixed = table(&ruleset, Family::Inet, "mixed");
    let forward = rules(mixed, "forward");
    // The nfproto match tells which header the address loads read.
    assert_eq!(
        forward[0].matches,
        vec![
            Match::Opaque {
                description: "meta nfproto == ipv4".into()
            },
            Match::Address {
                direction: Direction::Destination,
                cidr: net("10.0.0.1", 32),
                negated: false,
            },
            tcp(),
            dport(22),
            Match::Opaque {
                description: "log prefix \"ssh \"".into()
            },
        ]
    );
    assert_eq!(
        forward[0].action,
        Action::Verdict {
            verdict: Verdict::Drop
        }
    );
    assert_eq!(
        forward[1].matches[1],
        Match::Address {
            direction: Direction::Source,
            cidr: net("fd00::", 8),
            negated: false,
        }
    );
}

#[test]
fn kube_proxy_nftables_mode_decodes_fully() {
    let ruleset = decoded("kube_proxy_nftables");
    let kube = table(&ruleset, Family::Ip, "kube-proxy");
    assert_eq!(kube.chains.len(), 32);
    let service_key = vec![
        Field::Address(Direction::Destination),
        Field::L4Proto,
        Field::Port(Direction::Destination),
    ];
    assert_eq!(
        rules(kube, "services")[0].action,
        Action::VerdictMap {
            set: "service-ips".into(),
            key: service_key.clone(),
        }
    );
    assert_eq!(
        rules(kube, "services")[1].matches,
        vec![Match::SetLookup {
            set: "nodeport-ips".into(),
            key: vec![Field::Address(Direction::Destination)],
            negated: false,
        }]
    );
    assert_eq!(
        rules(kube, "services")[1].action,
        Action::VerdictMap {
            set: "service-nodeports".into(),
            key: vec![Field::L4Proto, Field::Port(Direction::Destination)],
        }
    );
    let service_ips = &kube.sets["service-ips"];
    assert_eq!(
        service_ips.key_types,
        vec![
            SetDataType::Ipv4Addr,
            SetDataType::InetProto,
            SetDataType::InetService
        ]
    );
    assert!(service_ips.is_verdict_map && !service_ips.anonymous);
    assert_eq!(service_ips.elements.len(), 9);
    let svc1 = service_ips
        .elements
        .iter()
        .find(|e| e.key[0] == KeyValue::Address(Cidr::host(ip("172.30.0.41"))))
        .unwrap();
    assert_eq!(
        svc1.key,
        vec![
            KeyValue::Address(Cidr::host(ip("172.30.0.41"))),
            KeyValue::Proto(6),
            KeyValue::Port(80),
        ]
    );
    assert_eq!(
        svc1.verdict,
        Some(Verdict::Goto("service-ULMVA6XW-ns1/svc1/tcp/p80".into()))
    );
    let no_endpoint = &kube.sets["no-endpoint-nodeports"];
    assert_eq!(
        no_endpoint.elements[0].key,
        vec![KeyValue::Proto(6), KeyValue::Port(3001)]
    );
    assert_eq!(no_endpoint.elements[0].verdict, Some(Verdict::Drop));

    // numgen random mod 2 vmap { 0 : goto a, 1 : goto b }.
    let svc4 = rules(kube, "service-LAUZTJTB-ns4/svc4/tcp/p80");
    assert_eq!(
        svc4[0].matches,
        vec![
            Match::Address {
                direction: Direction::Destination,
                cidr: net("172.30.0.44", 32),
                negated: false,
            },
            Match::Address {
                direction: Direction::Source,
                cidr: net("10.0.0.0", 8),
                negated: true,
            },
        ]
    );
    let Action::VerdictMap { set, key } = &svc4[1].action else {
        panic!("numgen vmap: {:?}", svc4[1]);
    };
    assert_eq!(key, &vec![Field::Numgen]);
    let map = &kube.sets[set];
    assert!(map.anonymous && map.is_verdict_map);
    let mut targets: Vec<(KeyValue, Verdict)> = map
        .elements
        .iter()
        .map(|e| (e.key[0].clone(), e.verdict.clone().unwrap()))
        .collect();
    targets.sort_by_key(|(k, _)| k.to_string());
    assert_eq!(
        targets,
        vec![
            (
                KeyValue::Raw(0u32.to_ne_bytes().to_vec()),
                Verdict::Goto("endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80".into())
            ),
            (
                KeyValue::Raw(1u32.to_ne_bytes().to_vec()),
                Verdict::Goto("endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80".into())
            ),
        ]
    );

    let external = rules(kube, "external-42NFTM6N-ns2/svc2/tcp/p80");
    assert_eq!(
        external[1].matches,
        vec![Match::AddrType {
            direction: Direction::Source,
            types: 1 << 2,
            negated: false,
        }]
    );
    assert_eq!(external[1].action, jump("mark-for-masquerade"));
    assert_eq!(
        external[1].comment.as_deref(),
        Some("masquerade local traffic")
    );
    assert_eq!(
        rules(kube, "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")[1],
        Rule {
            handle: 68,
            matches: vec![tcp()],
            action: Action::Dnat {
                range: host_nat("10.180.0.1", 80)
            },
            comment: None,
            counters: None,
        }
    );
    let affinity = rules(kube, "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80");
    assert_eq!(
        affinity[1].action,
        Action::Opaque {
            description: "update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }"
                .into()
        }
    );
    // nft folds `ip saddr != { 203.0.113.0/25 }` (one element) into a masked compare.
    assert_eq!(
        rules(kube, "firewall-HVFWP5L3-ns5/svc5/tcp/p80")[0].matches,
        vec![Match::Address {
            direction: Direction::Source,
            cidr: net("203.0.113.0", 25),
            negated: true,
        }]
    );
    let masquerading = rules(kube, "masquerading");
    assert_eq!(
        masquerading[0].matches,
        vec![Match::Opaque {
            description: "meta mark & 0x4000 == 0x0".into()
        }]
    );
    assert_eq!(masquerading[2].action, Action::Masquerade { ports: None });
    assert_eq!(
        rules(kube, "reject-chain")[0].action,
        Action::Opaque {
            description: "reject".into()
        }
    );
    assert_eq!(
        rules(kube, "cluster-ips-check")[0].comment.as_deref(),
        Some("Reject traffic to invalid ports of ClusterIPs")
    );
    assert_eq!(
        rules(kube, "filter-forward")[0].matches,
        vec![Match::Opaque {
            description: "ct state new".into()
        }]
    );
}

#[test]
fn truncated_captures_never_panic() {
    for name in ["iptables_nft", "native", "kube_proxy_nftables"] {
        let bytes = capture(name);
        for len in (0..bytes.len()).step_by(7) {
            // A cut inside a message is an error; a cut between messages decodes what is there.
            let _ = decode_messages(&bytes[..len], 1);
        }
    }
}

#[test]
fn corrupted_captures_never_panic() {
    for name in ["iptables_nft", "native", "kube_proxy_nftables"] {
        let original = capture(name);
        for position in (0..original.len()).step_by(13) {
            for value in [0x00, 0xff] {
                let mut bytes = original.clone();
                bytes[position] = value;
                let _ = decode_messages(&bytes, 1);
            }
        }
    }
}

#[test]
fn unknown_and_truncated_expressions_become_opaque_without_failing_the_rule() {
    use crate::observe::netlink::MessageBuilder;
    // A rule body: table, chain, handle, then expressions: an unknown one, a cmp whose register
    // nobody loaded, and a truncated attribute inside an immediate.
    let body = MessageBuilder::new(0, 0, 0)
        .attr_str(1, "t")
        .attr_str(2, "c")
        .attr_u64_be(3, 42)
        .begin_nested(4)
        .begin_nested(1)
        .attr_str(1, "frobnicate")
        .begin_nested(2)
        .attr_u32_be(1, 1)
        .end_nested()
        .end_nested()
        .begin_nested(1)
        .attr_str(1, "cmp")
        .begin_nested(2)
        .attr_u32_be(1, 1)
        .attr_u32_be(2, 0)
        .begin_nested(3)
        .attr(1, &[6])
        .end_nested()
        .end_nested()
        .end_nested()
        .begin_nested(1)
        .attr_str(1, "immediate")
        .attr(2, &[12, 0, 1, 0, 0])
        .end_nested()
        .end_nested()
        .finish();
    let sets = BTreeMap::new();
    let ctx = RuleContext {
        family: Family::Ip,
        sets: &sets,
    };
    let decoded = decode_rule(&body[16..], &ctx).unwrap();
    assert_eq!((decoded.table, decoded.chain), ("t", "c"));
    assert_eq!(decoded.rule.handle, 42);
    assert_eq!(
        decoded.rule.matches,
        vec![
            Match::Opaque {
                description: "frobnicate".into()
            },
            Match::Opaque {
                description: "cmp == 0x06".into()
            },
            Match::Opaque {
                description: "immediate (truncated)".into()
            },
        ]
    );
    assert_eq!(decoded.rule.action, Action::None);
    // Garbage never panics.
    for len in 0..body.len() - 16 {
        let _ = decode_rule(&body[16..16 + len], &ctx);
    }
}
#[test]
fn native_concatenated_ranges_and_interval_verdict_maps() {
    let ruleset = decoded("native");
    let hostnat = table(&ruleset, Family::Ip, "hostnat");
    let input = rules(hostnat, "input");
    assert_eq!(
        input[1].matches,
        vec![
            tcp(),
            Match::SetLookup {
                set: "allowed".into(),
                key: vec![
                    Field::Address(Direction::Source),
                    Field::Port(Direction::Destination)
                ],
                negated: false,
            },
        ]
    );
    // Concatenated ranges (pipapo) carry an inclusive NFTA_SET_ELEM_KEY_END.
    let allowed = &hostnat.sets["allowed"];
    assert_eq!(
        allowed.key_types,
        vec![SetDataType::Ipv4Addr, SetDataType::InetService]
    );
    let host = |a: &str| KeyValue::Address(Cidr::host(ip(a)));
    assert_eq!(
        allowed.elements,
        vec![
            SetElement {
                key: vec![host("10.0.0.0"), KeyValue::Port(80)],
                key_end: Some(vec![host("10.0.0.255"), KeyValue::Port(90)]),
                verdict: None,
            },
            SetElement {
                key: vec![host("192.168.1.1"), KeyValue::Port(22)],
                key_end: None,
                verdict: None,
            },
        ]
    );
    assert_eq!(
        input[2].action,
        Action::VerdictMap {
            set: "port_policy".into(),
            key: vec![Field::Port(Direction::Destination)],
        }
    );
    let policy = &hostnat.sets["port_policy"];
    assert!(policy.is_verdict_map && policy.interval && !policy.anonymous);
    assert_eq!(
        policy.elements,
        vec![
            SetElement {
                key: vec![KeyValue::Port(1000)],
                key_end: Some(vec![KeyValue::Port(2000)]),
                verdict: Some(Verdict::Jump("guard".into())),
            },
            SetElement {
                key: vec![KeyValue::Port(3000)],
                key_end: None,
                verdict: Some(Verdict::Drop),
            },
        ]
    );
}

#[test]
fn kernel_refusals_read_as_what_is_missing() {
    let refused = |errno| NetlinkError::Kernel {
        what: "chain dump (GETCHAIN)".into(),
        errno,
    };
    let AttemptError::Fatal(denied) = classify("chain dump (GETCHAIN)", refused(libc::EPERM))
    else {
        panic!("EPERM is fatal");
    };
    assert_eq!(
        denied.to_string(),
        "reading nftables needs CAP_NET_ADMIN: chain dump (GETCHAIN) was refused with EPERM"
    );
    let AttemptError::Fatal(missing) = classify(
        "opening a netfilter netlink socket",
        NetlinkError::Open {
            protocol: libc::NETLINK_NETFILTER,
            source: std::io::Error::from_raw_os_error(libc::EPROTONOSUPPORT),
        },
    ) else {
        panic!("EPROTONOSUPPORT is fatal");
    };
    assert!(
        missing
            .to_string()
            .starts_with("nf_tables is not available in this kernel or namespace: opening a netfilter netlink socket failed with EPROTONOSUPPORT"),
        "{missing}"
    );
    // A vanished chain or an interrupted dump means a transaction raced the read: re-dump.
    assert!(matches!(
        classify("rule dump", refused(libc::ENOENT)),
        AttemptError::Raced
    ));
    assert!(matches!(
        classify(
            "rule dump",
            NetlinkError::DumpInterrupted {
                what: "rule dump".into()
            }
        ),
        AttemptError::Raced
    ));
    assert_eq!(
        NftablesError::Inconsistent { attempts: 5 }.to_string(),
        "nftables kept changing while being read: 5 dumps in a row were inconsistent (generation moved or dump interrupted); giving up"
    );
}
#[test]
fn iptables_nft_rules_decode_whole_with_the_xt_blobs() {
    let ruleset = decoded("iptables_nft");
    let nat = table(&ruleset, Family::Ip, "nat");
    let local = Match::AddrType {
        direction: Direction::Destination,
        types: 1 << 2,
        negated: false,
    };
    for chain in ["PREROUTING", "OUTPUT"] {
        assert_eq!(rules(nat, chain)[0].matches, vec![local.clone()]);
    }
    // `-m comment` is an xt match in iptables-nft: it becomes the rule's comment.
    let feeder = &rules(nat, "POSTROUTING")[1];
    assert_eq!(feeder.matches, vec![]);
    assert_eq!(
        feeder.comment.as_deref(),
        Some("cilium-feeder: CILIUM_POST_nat")
    );
    assert_eq!(feeder.action, jump("OLD_CILIUM_POST_nat"));
    let masquerade = &rules(nat, "OLD_CILIUM_POST_nat")[0];
    assert_eq!(masquerade.matches.len(), 3);
    assert_eq!(masquerade.action, Action::Masquerade { ports: None });
    assert_eq!(
        masquerade.comment.as_deref(),
        Some("cilium masquerade non-cluster")
    );
    assert_eq!(
        rules(nat, "CILIUM_POST_nat")[1].action,
        Action::Snat {
            range: NatRange {
                addresses: Some((ip("192.168.1.10"), ip("192.168.1.10"))),
                ports: None,
            }
        }
    );
    let hostport = &rules(nat, "CNI-HOSTPORT-DNAT")[0];
    assert_eq!(hostport.matches, vec![tcp(), dport(6443)]);
    assert_eq!(
        hostport.comment.as_deref(),
        Some("dnat name: \"cbr0\" id: \"5d41402abc4b2a76\"")
    );
    assert_eq!(
        rules(nat, "CNI-DN-0f3c9a1b2d4e5f6a7")[0],
        Rule {
            handle: 17,
            matches: vec![tcp(), dport(6443)],
            action: Action::Dnat {
                range: host_nat("10.42.0.244", 6443)
            },
            comment: None,
            counters: Some((0, 0)),
        }
    );
}
