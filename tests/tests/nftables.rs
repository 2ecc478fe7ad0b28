//! End-to-end tests of the nftables source (`observe::nftables`, raw netlink reads) and the batch
//! writer (`act::nftables`) in fresh network namespaces, with rules made by the real `iptables-nft`
//! and `nft` binaries and results read back with them.
//!
//! Also holds two `#[ignore]`d helpers: `capture_testdata` (writes `agent/testdata/nft/*.bin`, the
//! captured kernel replies the unit tests decode) and `measure_kube_proxy_scale` (prints the cost
//! of a read of an 80,000-rule ruleset against `iptables-nft-save`).

use netmend::act::nftables::{apply_batch, NftOp, NftWriteError};
use netmend::model::ruleset::{
    Action, Cidr, Direction, Family, Field, HookPoint, KeyValue, Match, NatRange, PortRange,
    Ruleset, Table, Verdict,
};
use netmend::observe::nftables::{current_generation, read_ruleset};
use netmend_e2e::{
    drop_capabilities_in_this_thread, kube_proxy_nftables, kube_proxy_ruleset, require_tool, NetNs,
    CAP_NET_ADMIN,
};
use std::net::IpAddr;

/// Cilium-like masquerade chains (with the stale `OLD_` backup) and the k3s portmap chains that
/// hijacked the API server port, in iptables-restore syntax.
pub const IPTABLES_NFT_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_POST_nat - [0:0]
:OLD_CILIUM_POST_nat - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-0f3c9a1b2d4e5f6a7 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j OLD_CILIUM_POST_nat
-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CILIUM_POST_nat -s 10.42.0.5/32 -o eth0 -j SNAT --to-source 192.168.1.10
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"5d41402abc4b2a76\"" -m multiport --dports 6443 -j CNI-DN-0f3c9a1b2d4e5f6a7
-A CNI-DN-0f3c9a1b2d4e5f6a7 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 10.1.0.0/20 -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8000:8080 -j DROP
-A FORWARD -i eth0 -o cilium_host -j ACCEPT
COMMIT
"#;

/// Native nft rules: NAT with ports and ranges, anonymous sets, redirect, masquerade, fib, ip6
/// and inet tables, comments and counters.
pub const NATIVE_NFT_RULES: &str = r#"table ip hostnat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 6443 dnat to 10.42.0.244:6443
		ip daddr 192.168.1.0/24 tcp dport { 80, 443, 8000-8080 } counter dnat to 10.42.0.10-10.42.0.12:8080-8090 comment "web"
		udp dport 53 redirect to :5353
		iifname "eth*" tcp dport != 22 ip saddr != { 10.0.0.0/8, 192.168.0.5 } jump guard
	}
	chain guard {
		ct state established,related accept
		meta mark 0x10 drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
		ip saddr 10.42.0.0/20 snat to 192.168.1.10
	}
	set allowed {
		type ipv4_addr . inet_service; flags interval;
		elements = { 10.0.0.0/24 . 80-90, 192.168.1.1 . 22 }
	}
	map port_policy {
		type inet_service : verdict; flags interval;
		elements = { 1000-2000 : jump guard, 3000 : drop }
	}
	chain input {
		type filter hook input priority 0; policy drop;
		fib daddr type local tcp dport 10250 accept
		ip saddr . tcp dport @allowed accept
		tcp dport vmap @port_policy
	}
}
table ip6 hostnat6 {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		tcp dport 6443 dnat to [fd00::10]:6443
		ip6 daddr fd00:1::/64 meta l4proto tcp return
	}
}
table inet mixed {
	chain forward {
		type filter hook forward priority 0; policy accept;
		meta nfproto ipv4 ip daddr 10.0.0.1 tcp dport 22 log prefix "ssh " drop
		ip6 saddr fd00::/8 accept
	}
}
"#;

/// The generator's six kinds of service, two endpoints each (so service chains pick with
/// `numgen random mod 2`).
fn kube_proxy_nft_file() -> String {
    kube_proxy_nftables(6, 2)
}

fn namespace_with(tag: &str, setup: impl FnOnce(&NetNs)) -> NetNs {
    for tool in ["nft", "iptables-nft-restore", "iptables-nft-save"] {
        require_tool(tool);
    }
    let ns = NetNs::new(tag);
    setup(&ns);
    ns
}

fn read(ns: &NetNs) -> Ruleset {
    ns.run(|| read_ruleset().map(|(ruleset, _)| ruleset))
        .unwrap_or_else(|e| panic!("read_ruleset in {}: {e}", ns.name))
}

fn table<'a>(ruleset: &'a Ruleset, family: Family, name: &str) -> &'a Table {
    ruleset
        .tables
        .iter()
        .find(|t| t.id.family == family && t.id.name == name)
        .unwrap_or_else(|| panic!("no table {family} {name}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn cidr(text: &str) -> Cidr {
    let (addr, prefix) = text.split_once('/').unwrap();
    Cidr {
        addr: ip(addr),
        prefix: prefix.parse().unwrap(),
    }
}

#[test]
fn reads_iptables_nft_rules_of_cilium_and_portmap() {
    let ns = namespace_with("nft", |ns| {
        ns.restore("iptables-nft-restore", IPTABLES_NFT_RULES)
            .unwrap()
    });
    let ruleset = read(&ns);
    let generation = ns.run(current_generation).unwrap();
    assert_eq!(ruleset.generation, Some(generation));
    let nat = table(&ruleset, Family::Ip, "nat");
    let names: Vec<&str> = nat.chains.iter().map(|c| c.name.as_str()).collect();
    for name in [
        "PREROUTING",
        "POSTROUTING",
        "CILIUM_POST_nat",
        "OLD_CILIUM_POST_nat",
        "CNI-HOSTPORT-DNAT",
        "CNI-DN-0f3c9a1b2d4e5f6a7",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let prerouting = nat.chain("PREROUTING").unwrap();
    let base = prerouting.base.as_ref().unwrap();
    assert_eq!(base.hook, HookPoint::Prerouting);
    assert_eq!(base.priority, -100);
    assert_eq!(base.chain_type, "nat");
    assert_eq!(base.policy, Verdict::Accept);
    assert_eq!(
        prerouting.rules[0].action,
        Action::Verdict {
            verdict: Verdict::Jump("CNI-HOSTPORT-DNAT".into())
        }
    );

    let masquerade = &nat.chain("OLD_CILIUM_POST_nat").unwrap().rules[0];
    assert_eq!(
        masquerade.matches[..3],
        [
            Match::Interface {
                direction: Direction::Destination,
                name: "cilium_+".into(),
                negated: true
            },
            Match::Address {
                direction: Direction::Source,
                cidr: cidr("10.42.0.0/24"),
                negated: false
            },
            Match::Address {
                direction: Direction::Destination,
                cidr: cidr("10.42.0.0/24"),
                negated: true
            },
        ]
    );
    assert_eq!(masquerade.action, Action::Masquerade { ports: None });
    assert_eq!(
        masquerade.comment.as_deref(),
        Some("cilium masquerade non-cluster")
    );
    let hostport = &nat.chain("CNI-HOSTPORT-DNAT").unwrap().rules[0];
    assert_eq!(
        hostport.comment.as_deref(),
        Some("dnat name: \"cbr0\" id: \"5d41402abc4b2a76\"")
    );
    assert_eq!(
        hostport.matches[1],
        Match::Ports {
            direction: Direction::Destination,
            ranges: vec![PortRange::single(6443)],
            negated: false
        }
    );
    assert_eq!(
        prerouting.rules[0].matches,
        vec![Match::AddrType {
            direction: Direction::Destination,
            types: 1 << 2,
            negated: false
        }]
    );
    let dnat = &nat.chain("CNI-DN-0f3c9a1b2d4e5f6a7").unwrap().rules[0];
    assert_eq!(
        dnat.action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip("10.42.0.244"), ip("10.42.0.244"))),
                ports: Some(PortRange::single(6443)),
            }
        }
    );
    assert_eq!(
        dnat.matches,
        vec![
            Match::L4Proto {
                proto: 6,
                negated: false
            },
            Match::Ports {
                direction: Direction::Destination,
                ranges: vec![PortRange::single(6443)],
                negated: false
            },
        ]
    );
    let filter = table(&ruleset, Family::Ip, "filter");
    let forward = filter.chain("FORWARD").unwrap();
    assert_eq!(forward.base.as_ref().unwrap().policy, Verdict::Drop);
    assert_eq!(
        filter.chain("INPUT").unwrap().rules[1].matches[1],
        Match::Ports {
            direction: Direction::Destination,
            ranges: vec![PortRange {
                first: 8000,
                last: 8080
            }],
            negated: false
        }
    );
    // The handles are the kernel's: iptables-nft-save agrees on the rule count.
    let saved = ns.sh("iptables-nft-save -t nat").unwrap();
    let saved_rules = saved.lines().filter(|l| l.starts_with("-A ")).count();
    let read_rules: usize = nat.chains.iter().map(|c| c.rules.len()).sum();
    assert_eq!(read_rules, saved_rules);
}

#[test]
fn reads_native_nft_rules() {
    let ns = namespace_with("nft", |ns| ns.nft_file(NATIVE_NFT_RULES).unwrap());
    let ruleset = read(&ns);
    let hostnat = table(&ruleset, Family::Ip, "hostnat");
    let prerouting = hostnat.chain("prerouting").unwrap();
    assert_eq!(
        prerouting.rules[0].action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip("10.42.0.244"), ip("10.42.0.244"))),
                ports: Some(PortRange::single(6443)),
            }
        }
    );
    let web = &prerouting.rules[1];
    assert_eq!(web.comment.as_deref(), Some("web"));
    assert_eq!(web.counters, Some((0, 0)));
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
    let Match::SetLookup { set, key, negated } = &web.matches[2] else {
        panic!("expected a set lookup, got {:?}", web.matches)
    };
    assert_eq!(
        (key.as_slice(), *negated),
        (&[Field::Port(Direction::Destination)][..], false)
    );
    let ports: Vec<_> = hostnat.sets[set]
        .elements
        .iter()
        .map(|e| (e.key.clone(), e.key_end.clone()))
        .collect();
    assert_eq!(
        ports,
        vec![
            (vec![KeyValue::Port(80)], None),
            (vec![KeyValue::Port(443)], None),
            (vec![KeyValue::Port(8000)], Some(vec![KeyValue::Port(8080)])),
        ]
    );
    assert_eq!(
        prerouting.rules[2].action,
        Action::Redirect {
            ports: Some(PortRange::single(5353))
        }
    );
    let hostnat6 = table(&ruleset, Family::Ip6, "hostnat6");
    assert_eq!(
        hostnat6.chain("prerouting").unwrap().rules[0].action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip("fd00::10"), ip("fd00::10"))),
                ports: Some(PortRange::single(6443)),
            }
        }
    );
    let input = hostnat.chain("input").unwrap();
    assert_eq!(input.base.as_ref().unwrap().policy, Verdict::Drop);
    assert_eq!(
        input.rules[0].matches[0],
        Match::AddrType {
            direction: Direction::Destination,
            types: 1 << 2,
            negated: false
        }
    );
}

#[test]
fn reads_kube_proxy_nftables_mode() {
    let ns = namespace_with("nft", |ns| ns.nft_file(&kube_proxy_nft_file()).unwrap());
    let ruleset = read(&ns);
    let kube = table(&ruleset, Family::Ip, "kube-proxy");
    let services = kube.chain("services").unwrap();
    assert_eq!(
        services.rules[0].action,
        Action::VerdictMap {
            set: "service-ips".into(),
            key: vec![
                Field::Address(Direction::Destination),
                Field::L4Proto,
                Field::Port(Direction::Destination)
            ],
        }
    );
    let service_ips = &kube.sets["service-ips"];
    assert!(service_ips.is_verdict_map);
    let first = service_ips
        .elements
        .iter()
        .find(|e| e.key[0] == KeyValue::Address(Cidr::host(ip("172.30.0.41"))))
        .expect("172.30.0.41 . tcp . 80");
    assert_eq!(
        first.key,
        vec![
            KeyValue::Address(Cidr::host(ip("172.30.0.41"))),
            KeyValue::Proto(6),
            KeyValue::Port(80)
        ]
    );
    assert_eq!(
        first.verdict,
        Some(Verdict::Goto("service-ULMVA6XW-ns1/svc1/tcp/p80".into()))
    );
    // numgen random mod 2 vmap { 0: goto a, 1: goto b }: both targets reachable through the map.
    let svc4 = kube.chain("service-LAUZTJTB-ns4/svc4/tcp/p80").unwrap();
    let Action::VerdictMap { set, key } = &svc4.rules[1].action else {
        panic!("numgen vmap expected: {:?}", svc4.rules[1])
    };
    assert_eq!(key, &vec![Field::Numgen]);
    let targets: Vec<_> = kube.sets[set]
        .elements
        .iter()
        .filter_map(|e| e.verdict.as_ref().and_then(|v| v.target_chain()))
        .collect();
    assert_eq!(targets.len(), 2);
    assert!(targets.contains(&"endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"));
    assert!(targets.contains(&"endpoint-ZYHONFHQ-ns4/svc4/tcp/p80__10.181.0.4/80"));
    let external = kube.chain("external-42NFTM6N-ns2/svc2/tcp/p80").unwrap();
    assert_eq!(
        external.rules[1].matches,
        vec![Match::AddrType {
            direction: Direction::Source,
            types: 1 << 2,
            negated: false
        }]
    );
    assert_eq!(
        external.rules[1].comment.as_deref(),
        Some("masquerade local traffic")
    );
    let endpoint = kube
        .chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
        .unwrap();
    assert_eq!(
        endpoint.rules[1].action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((ip("10.180.0.1"), ip("10.180.0.1"))),
                ports: Some(PortRange::single(80)),
            }
        }
    );
    // `ip saddr != { 203.0.113.0/25 }`: nft folds a one-element anonymous set into a masked cmp.
    let firewall = kube.chain("firewall-HVFWP5L3-ns5/svc5/tcp/p80").unwrap();
    assert_eq!(
        firewall.rules[0].matches,
        vec![Match::Address {
            direction: Direction::Source,
            cidr: cidr("203.0.113.0/25"),
            negated: true
        }]
    );
    assert_eq!(
        firewall.rules[0].action,
        Action::Verdict {
            verdict: Verdict::Drop
        }
    );
    let affinity = kube
        .chain("endpoint-QR2OSYWX-ns5/svc5/tcp/p80__10.180.0.5/80")
        .unwrap();
    assert!(
        matches!(&affinity.rules[1].action, Action::Opaque { description } if description.starts_with("update @affinity")),
        "{:?}",
        affinity.rules[1]
    );
}

const PORTMAP_FOR_WRITES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-0f3c9a1b2d4e5f6a7 - [0:0]
:OLD_CILIUM_POST_nat - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 6443 -j CNI-DN-0f3c9a1b2d4e5f6a7
-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 8080 -j CNI-DN-0f3c9a1b2d4e5f6a7
-A CNI-DN-0f3c9a1b2d4e5f6a7 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 -j MASQUERADE
-A OLD_CILIUM_POST_nat -s 10.43.0.0/24 -j MASQUERADE
COMMIT
"#;

fn nat_chain(chain: &str) -> (Family, String, String) {
    (Family::Ip, "nat".to_string(), chain.to_string())
}

fn delete_rule(chain: &str, handle: u64) -> NftOp {
    let (family, table, chain) = nat_chain(chain);
    NftOp::DeleteRule {
        family,
        table,
        chain,
        handle,
    }
}

fn delete_chain(chain: &str) -> NftOp {
    let (family, table, chain) = nat_chain(chain);
    NftOp::DeleteChain {
        family,
        table,
        chain,
    }
}

fn flush_chain(chain: &str) -> NftOp {
    let (family, table, chain) = nat_chain(chain);
    NftOp::FlushChain {
        family,
        table,
        chain,
    }
}

fn handles_of(ruleset: &Ruleset, chain: &str) -> Vec<u64> {
    table(ruleset, Family::Ip, "nat")
        .chain(chain)
        .map(|c| c.rules.iter().map(|r| r.handle).collect())
        .unwrap_or_default()
}

fn portmap_namespace() -> (NetNs, Ruleset) {
    let ns = namespace_with("nftw", |ns| {
        ns.restore("iptables-nft-restore", PORTMAP_FOR_WRITES)
            .unwrap()
    });
    let ruleset = read(&ns);
    (ns, ruleset)
}

fn apply_in(ns: &NetNs, ops: Vec<NftOp>, generation: Option<u32>) -> Result<(), NftWriteError> {
    ns.run(move || apply_batch(&ops, generation))
}

#[test]
fn batch_deletes_one_rule_by_handle() {
    let (ns, ruleset) = portmap_namespace();
    let handles = handles_of(&ruleset, "CNI-HOSTPORT-DNAT");
    apply_in(
        &ns,
        vec![delete_rule("CNI-HOSTPORT-DNAT", handles[1])],
        ruleset.generation,
    )
    .unwrap();
    let saved = ns.sh("iptables-nft-save -t nat").unwrap();
    assert!(saved.contains("--dports 6443"), "{saved}");
    assert!(!saved.contains("--dports 8080"), "{saved}");
}

#[test]
fn batch_flushes_a_chain_and_keeps_it() {
    let (ns, ruleset) = portmap_namespace();
    apply_in(
        &ns,
        vec![flush_chain("OLD_CILIUM_POST_nat")],
        ruleset.generation,
    )
    .unwrap();
    let saved = ns.sh("iptables-nft-save -t nat").unwrap();
    assert!(saved.contains(":OLD_CILIUM_POST_nat - [0:0]"), "{saved}");
    assert!(!saved.contains("-A OLD_CILIUM_POST_nat"), "{saved}");
}

#[test]
fn batch_deletes_a_chain_with_the_rules_that_jump_to_it() {
    let (ns, ruleset) = portmap_namespace();
    let mut ops: Vec<NftOp> = handles_of(&ruleset, "CNI-HOSTPORT-DNAT")
        .into_iter()
        .map(|h| delete_rule("CNI-HOSTPORT-DNAT", h))
        .collect();
    ops.push(flush_chain("CNI-DN-0f3c9a1b2d4e5f6a7"));
    ops.push(delete_chain("CNI-DN-0f3c9a1b2d4e5f6a7"));
    apply_in(&ns, ops, ruleset.generation).unwrap();
    let saved = ns.sh("iptables-nft-save -t nat").unwrap();
    assert!(!saved.contains("CNI-DN-0f3c9a1b2d4e5f6a7"), "{saved}");
    assert!(saved.contains(":CNI-HOSTPORT-DNAT - [0:0]"), "{saved}");
    let listed = ns.sh("nft list table ip nat").unwrap();
    assert!(!listed.contains("CNI-DN-"), "{listed}");
}

#[test]
fn deleting_a_referenced_chain_fails_with_ebusy_and_changes_nothing() {
    let (ns, ruleset) = portmap_namespace();
    let before = ns.sh("nft list ruleset").unwrap();
    let handles = handles_of(&ruleset, "CNI-HOSTPORT-DNAT");
    // One referencing rule is deleted, the other is left: the whole batch must fail.
    let ops = vec![
        delete_rule("CNI-HOSTPORT-DNAT", handles[0]),
        flush_chain("CNI-DN-0f3c9a1b2d4e5f6a7"),
        delete_chain("CNI-DN-0f3c9a1b2d4e5f6a7"),
    ];
    let error = apply_in(&ns, ops, ruleset.generation).unwrap_err();
    assert!(
        matches!(&error, NftWriteError::OpRefused { errno, op: NftOp::DeleteChain { .. } } if *errno == libc::EBUSY),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "nothing applied: failed to delete chain ip/nat/CNI-DN-0f3c9a1b2d4e5f6a7: EBUSY (device or resource busy)"
    );
    assert_eq!(ns.sh("nft list ruleset").unwrap(), before, "half applied");
}

#[test]
fn a_stale_generation_is_refused_and_changes_nothing() {
    let (ns, ruleset) = portmap_namespace();
    let read_generation = ruleset.generation.unwrap();
    ns.sh("iptables-nft -t nat -A OLD_CILIUM_POST_nat -s 10.44.0.0/24 -j MASQUERADE")
        .unwrap();
    let before = ns.sh("nft list ruleset").unwrap();
    let error = apply_in(
        &ns,
        vec![flush_chain("OLD_CILIUM_POST_nat")],
        Some(read_generation),
    )
    .unwrap_err();
    assert!(error.is_precondition_moved(), "{error:?}");
    assert_eq!(ns.sh("nft list ruleset").unwrap(), before);
    // With the current generation the same batch applies.
    let current = ns.run(current_generation).unwrap();
    assert_ne!(current, read_generation);
    apply_in(&ns, vec![flush_chain("OLD_CILIUM_POST_nat")], Some(current)).unwrap();
    assert!(!ns
        .sh("iptables-nft-save -t nat")
        .unwrap()
        .contains("-A OLD_CILIUM_POST_nat"));
}

#[test]
fn a_missing_rule_fails_the_whole_batch() {
    let (ns, ruleset) = portmap_namespace();
    let before = ns.sh("nft list ruleset").unwrap();
    let ops = vec![
        flush_chain("OLD_CILIUM_POST_nat"),
        delete_rule("CNI-HOSTPORT-DNAT", 999_999),
    ];
    let error = apply_in(&ns, ops, ruleset.generation).unwrap_err();
    assert!(
        matches!(&error, NftWriteError::OpRefused { errno, op: NftOp::DeleteRule { handle: 999_999, .. } } if *errno == libc::ENOENT),
        "{error:?}"
    );
    assert_eq!(
        ns.sh("nft list ruleset").unwrap(),
        before,
        "flush applied alone"
    );
    // The failing op first: later valid ops are not applied either.
    let ops = vec![
        delete_rule("CNI-HOSTPORT-DNAT", 999_999),
        flush_chain("OLD_CILIUM_POST_nat"),
    ];
    let error = apply_in(&ns, ops, ruleset.generation).unwrap_err();
    assert_eq!(
        error.to_string(),
        "nothing applied: failed to delete rule ip/nat/CNI-HOSTPORT-DNAT handle 999999: ENOENT (no such file or directory)"
    );
    assert_eq!(
        ns.sh("nft list ruleset").unwrap(),
        before,
        "flush applied alone"
    );
}

#[test]
fn without_cap_net_admin_the_read_says_what_is_missing() {
    let ns = namespace_with("nft", |ns| ns.nft_file(NATIVE_NFT_RULES).unwrap());
    let error = ns
        .run(|| {
            drop_capabilities_in_this_thread(&[CAP_NET_ADMIN]);
            read_ruleset().map(|_| ())
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            netmend::observe::nftables::NftablesError::PermissionDenied { .. }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("reading nftables needs CAP_NET_ADMIN"),
        "{error}"
    );
    let write_error = ns
        .run(|| {
            drop_capabilities_in_this_thread(&[CAP_NET_ADMIN]);
            apply_batch(&[flush_chain("PREROUTING")], None)
        })
        .unwrap_err();
    assert!(
        matches!(write_error, NftWriteError::PermissionDenied { .. }),
        "{write_error:?}"
    );
}

/// Every transaction of the writer below adds one rule to chain `a` AND one to chain `b`: a read
/// consistent with one generation always sees as many rules in `a` as in `b`, however the
/// per-chain dumps interleave with the writes.
#[test]
fn reads_racing_writes_are_consistent_or_fail_saying_so() {
    let mut preload = String::from("table ip race {\n\tchain a {\n");
    for i in 0..1500 {
        preload.push_str(&format!(
            "\t\tip daddr 10.0.{}.{} counter\n",
            i / 250,
            i % 250
        ));
    }
    preload.push_str("\t}\n\tchain b {\n");
    for i in 0..1500 {
        preload.push_str(&format!(
            "\t\tip saddr 10.0.{}.{} counter\n",
            i / 250,
            i % 250
        ));
    }
    preload.push_str("\t}\n}\n");
    let ns = namespace_with("nftrace", |ns| ns.nft_file(&preload).unwrap());
    let script = std::env::temp_dir().join(format!("netmend-race-{}.sh", std::process::id()));
    std::fs::write(
        &script,
        "while true; do printf 'add rule ip race a counter\\nadd rule ip race b counter\\n' | nft -f -; sleep 0.1; done\n",
    )
    .unwrap();
    let writer = ns.spawn(&format!("sh {}", script.display()));
    let mut consistent_reads = 0;
    let mut retries = 0;
    for _ in 0..30 {
        match ns.run(read_ruleset) {
            Ok((ruleset, stats)) => {
                let race = table(&ruleset, Family::Ip, "race");
                let a = race.chain("a").unwrap().rules.len();
                let b = race.chain("b").unwrap().rules.len();
                assert_eq!(a, b, "a read mixed two generations");
                consistent_reads += 1;
                retries += stats.retries;
            }
            Err(error) => assert!(
                matches!(
                    error,
                    netmend::observe::nftables::NftablesError::Inconsistent { .. }
                ),
                "{error:?}"
            ),
        }
    }
    drop(writer);
    let _ = std::fs::remove_file(script);
    println!("{consistent_reads} consistent reads, {retries} re-dumps");
    assert!(consistent_reads > 0, "no read succeeded under the writer");
}

/// Writes the captured kernel replies of three rulesets into `agent/testdata/nft/`.
/// Run: `cargo test -p netmend-e2e --test nftables capture_testdata -- --ignored`.
#[test]
#[ignore]
fn capture_testdata() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata/nft");
    std::fs::create_dir_all(&dir).unwrap();
    type Setup = Box<dyn Fn(&NetNs)>;
    let scenarios: [(&str, Setup); 3] = [
        (
            "iptables_nft",
            Box::new(|ns: &NetNs| {
                ns.restore("iptables-nft-restore", IPTABLES_NFT_RULES)
                    .unwrap()
            }),
        ),
        (
            "native",
            Box::new(|ns: &NetNs| ns.nft_file(NATIVE_NFT_RULES).unwrap()),
        ),
        (
            "kube_proxy_nftables",
            Box::new(|ns: &NetNs| ns.nft_file(&kube_proxy_nft_file()).unwrap()),
        ),
    ];
    for (name, setup) in scenarios {
        let ns = namespace_with("nftcap", |ns| setup(ns));
        let (ruleset, bytes) = ns
            .run(netmend::observe::nftables::capture_ruleset_messages)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.bin")), &bytes).unwrap();
        println!(
            "{name}: {} bytes, {} chains, {} rules",
            bytes.len(),
            ruleset.chain_count(),
            ruleset.rule_count()
        );
        assert!(ruleset.rule_count() > 0);
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Prints the wall time and peak RSS of a read of 10,000 kube-proxy services (83,208 rules in
/// 31,008 chains) next to `iptables-nft-save -t nat`. Measures; asserts only that the read is whole.
/// Run: `cargo test --release -p netmend-e2e --test nftables measure_kube_proxy_scale -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_kube_proxy_scale() {
    let ns = namespace_with("nftbench", |ns| {
        ns.restore("iptables-nft-restore", &kube_proxy_ruleset(10_000, 2))
            .unwrap()
    });
    let rss_before = peak_rss_kib();
    for round in 0..3 {
        let (ruleset, stats) = ns.run(|| read_ruleset().unwrap());
        println!(
            "read_ruleset round {round}: {:.3} s, {} chains, {} rules, {} bytes, {} retries; process peak RSS {} KiB (before the first read {rss_before} KiB)",
            stats.duration.as_secs_f64(),
            stats.chains,
            stats.rules,
            stats.bytes,
            stats.retries,
            peak_rss_kib()
        );
        assert!(ruleset.rule_count() >= 80_000);
    }
    let started = std::time::Instant::now();
    let saved = ns.sh("iptables-nft-save -t nat").unwrap();
    println!(
        "iptables-nft-save -t nat: {:.3} s, {} lines",
        started.elapsed().as_secs_f64(),
        saved.lines().count()
    );
}
