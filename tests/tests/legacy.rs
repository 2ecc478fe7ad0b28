//! End-to-end tests of the iptables-legacy reader and writer in fresh network namespaces, with the
//! real `iptables-legacy-restore` / `ip6tables-legacy-restore` / `iptables-legacy-save`.

use netmend::act::iptables_legacy::{apply, LegacyOp};
use netmend::model::ruleset::{
    Action, Cidr, Direction, Family, Match, NatRange, PortRange, Ruleset, Table, Verdict,
};
use netmend::observe::iptables_legacy::{read_ruleset, read_table_raw, table_names, xt_blobs};
use netmend_e2e::{
    drop_capabilities_in_this_thread, require_tool, NetNs, CAP_NET_ADMIN, CAP_NET_RAW,
};
use std::net::IpAddr;

const V4_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_POST_nat - [0:0]
:OLD_CILIUM_POST_nat - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-1a2b3c4d5e6f7a8b9c0d1 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
-A POSTROUTING -m comment --comment "old cilium feeder" -j OLD_CILIUM_POST_nat
-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CILIUM_POST_nat -s 10.42.0.5/32 -o eth0 -j SNAT --to-source 192.168.1.10
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0f3c9a\"" -m multiport --dports 6443 -j CNI-DN-1a2b3c4d5e6f7a8b9c0d1
-A CNI-DN-1a2b3c4d5e6f7a8b9c0d1 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FW - [0:0]
-A INPUT -i eth0 -p udp -m udp --sport 53 -j ACCEPT
-A FORWARD -g KUBE-FW
-A KUBE-FW -m mark --mark 0x4000/0x4000 -j DROP
-A KUBE-FW -p tcp -m multiport --dports 80,8000:8100 -j ACCEPT
-A KUBE-FW -m statistic --mode random --probability 0.5 -j RETURN
-A KUBE-FW -j LOG
COMMIT
"#;

const V6_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j DNAT --to-destination [fd00:42::5]:8443
-A POSTROUTING -s fd00:42::/64 ! -o cilium_+ -j MASQUERADE
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
COMMIT
"#;

fn loaded_namespace() -> NetNs {
    require_tool("iptables-legacy-restore");
    require_tool("ip6tables-legacy-restore");
    let ns = NetNs::new("leg");
    ns.restore("iptables-legacy-restore", V4_RULES).unwrap();
    ns.restore("ip6tables-legacy-restore", V6_RULES).unwrap();
    ns
}

fn table<'a>(rs: &'a Ruleset, family: Family, name: &str) -> &'a Table {
    rs.tables
        .iter()
        .find(|t| t.id.family == family && t.id.name == name)
        .unwrap_or_else(|| panic!("no legacy table {family} {name} in {rs:#?}"))
}

fn cidr(s: &str, prefix: u8) -> Cidr {
    Cidr {
        addr: s.parse::<IpAddr>().unwrap(),
        prefix,
    }
}

#[test]
fn reads_cilium_and_portmap_rules() {
    let ns = loaded_namespace();
    let rs = ns.run(read_ruleset).expect("read legacy ruleset");
    let nat = table(&rs, Family::Ip, "nat");
    let names: Vec<&str> = nat.chains.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "PREROUTING",
        "INPUT",
        "OUTPUT",
        "POSTROUTING",
        "CILIUM_POST_nat",
        "OLD_CILIUM_POST_nat",
        "CNI-HOSTPORT-DNAT",
        "CNI-DN-1a2b3c4d5e6f7a8b9c0d1",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let post = nat.chain("POSTROUTING").unwrap();
    assert_eq!(post.base.as_ref().unwrap().policy, Verdict::Accept);
    assert_eq!(post.rules.len(), 2);
    assert_eq!(post.rules[1].handle, 2);
    assert_eq!(
        post.rules[1].action,
        Action::Verdict {
            verdict: Verdict::Jump("OLD_CILIUM_POST_nat".into())
        }
    );
    assert_eq!(post.rules[1].comment.as_deref(), Some("old cilium feeder"));

    let old = nat.chain("OLD_CILIUM_POST_nat").unwrap();
    assert!(old.base.is_none());
    assert_eq!(old.rules.len(), 1);
    let r = &old.rules[0];
    assert_eq!(r.comment.as_deref(), Some("cilium masquerade non-cluster"));
    assert_eq!(
        r.matches,
        vec![
            Match::Address {
                direction: Direction::Source,
                cidr: cidr("10.42.0.0", 24),
                negated: false
            },
            Match::Address {
                direction: Direction::Destination,
                cidr: cidr("10.42.0.0", 24),
                negated: true
            },
            Match::Interface {
                direction: Direction::Destination,
                name: "cilium_+".into(),
                negated: true
            },
        ]
    );
    assert_eq!(r.action, Action::Masquerade { ports: None });
    assert_eq!(r.counters, Some((0, 0)));

    let cil = nat.chain("CILIUM_POST_nat").unwrap();
    assert_eq!(
        cil.rules[1].action,
        Action::Snat {
            range: NatRange {
                addresses: Some((
                    "192.168.1.10".parse().unwrap(),
                    "192.168.1.10".parse().unwrap()
                )),
                ports: None
            }
        }
    );
    assert!(cil.rules[1].matches.contains(&Match::Interface {
        direction: Direction::Destination,
        name: "eth0".into(),
        negated: false
    }));

    let pre = nat.chain("PREROUTING").unwrap();
    assert_eq!(
        pre.rules[0].matches,
        vec![Match::AddrType {
            direction: Direction::Destination,
            types: 1 << 2,
            negated: false
        }]
    );
    let hp = nat.chain("CNI-HOSTPORT-DNAT").unwrap();
    assert_eq!(
        hp.rules[0].comment.as_deref(),
        Some("dnat name: \"cbr0\" id: \"0f3c9a\"")
    );
    assert!(hp.rules[0].matches.contains(&Match::Ports {
        direction: Direction::Destination,
        ranges: vec![PortRange::single(6443)],
        negated: false
    }));
    assert!(hp.rules[0].matches.contains(&Match::L4Proto {
        proto: 6,
        negated: false
    }));
    let dn = nat.chain("CNI-DN-1a2b3c4d5e6f7a8b9c0d1").unwrap();
    assert_eq!(
        dn.rules[0].action,
        Action::Dnat {
            range: NatRange {
                addresses: Some((
                    "10.42.0.244".parse().unwrap(),
                    "10.42.0.244".parse().unwrap()
                )),
                ports: Some(PortRange::single(6443))
            }
        }
    );

    let filter = table(&rs, Family::Ip, "filter");
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
    assert_eq!(
        filter.chain("FORWARD").unwrap().rules[0].action,
        Action::Verdict {
            verdict: Verdict::Goto("KUBE-FW".into())
        }
    );
    let fw = filter.chain("KUBE-FW").unwrap();
    assert_eq!(fw.rules.len(), 4);
    assert_eq!(
        fw.rules[0].matches,
        vec![Match::Opaque {
            description: "-m mark --mark 0x4000/0x4000".into()
        }]
    );
    assert!(fw.rules[1].matches.contains(&Match::Ports {
        direction: Direction::Destination,
        ranges: vec![
            PortRange::single(80),
            PortRange {
                first: 8000,
                last: 8100
            }
        ],
        negated: false
    }));
    assert_eq!(
        fw.rules[2].action,
        Action::Verdict {
            verdict: Verdict::Return
        }
    );
    assert_eq!(
        fw.rules[3].action,
        Action::Opaque {
            description: "-j LOG".into()
        }
    );

    let nat6 = table(&rs, Family::Ip6, "nat");
    let pre6 = nat6.chain("PREROUTING").unwrap();
    assert_eq!(
        pre6.rules[0].action,
        Action::Dnat {
            range: NatRange {
                addresses: Some(("fd00:42::5".parse().unwrap(), "fd00:42::5".parse().unwrap())),
                ports: Some(PortRange::single(8443))
            }
        }
    );
    assert!(pre6.rules[0].matches.contains(&Match::Address {
        direction: Direction::Destination,
        cidr: cidr("2001:db8::1", 128),
        negated: false
    }));
    let post6 = nat6.chain("POSTROUTING").unwrap();
    assert_eq!(post6.rules[0].action, Action::Masquerade { ports: None });
    assert!(post6.rules[0].matches.contains(&Match::Address {
        direction: Direction::Source,
        cidr: cidr("fd00:42::", 64),
        negated: false
    }));
    let filter6 = table(&rs, Family::Ip6, "filter");
    assert_eq!(
        filter6
            .chain("INPUT")
            .unwrap()
            .base
            .as_ref()
            .unwrap()
            .policy,
        Verdict::Drop
    );
}

#[test]
fn reading_an_empty_namespace_creates_no_table() {
    let ns = NetNs::new("leg");
    let rs = ns.run(read_ruleset).expect("read legacy ruleset");
    assert!(rs.tables.is_empty(), "{rs:#?}");
    let after = ns.run(|| (table_names(Family::Ip), table_names(Family::Ip6)));
    assert_eq!(after.0.unwrap(), Vec::<String>::new());
    assert_eq!(after.1.unwrap(), Vec::<String>::new());
    let names = ns
        .sh("cat /proc/net/ip_tables_names 2>/dev/null; cat /proc/net/ip6_tables_names 2>/dev/null; true")
        .unwrap();
    assert_eq!(names.trim(), "", "reading created legacy tables");
}

#[test]
fn apply_deletes_stale_chain_and_rules() {
    require_tool("iptables-legacy-save");
    let ns = loaded_namespace();
    let ops = vec![
        // Deliberately out of order: apply() must delete the chain last.
        LegacyOp::DeleteChain {
            family: Family::Ip,
            table: "nat".into(),
            chain: "OLD_CILIUM_POST_nat".into(),
        },
        LegacyOp::FlushChain {
            family: Family::Ip,
            table: "nat".into(),
            chain: "OLD_CILIUM_POST_nat".into(),
        },
        LegacyOp::DeleteRule {
            family: Family::Ip,
            table: "nat".into(),
            chain: "POSTROUTING".into(),
            rule_spec_position: 2,
        },
        LegacyOp::DeleteRule {
            family: Family::Ip6,
            table: "nat".into(),
            chain: "POSTROUTING".into(),
            rule_spec_position: 1,
        },
    ];
    ns.run(move || apply(&ops)).expect("apply legacy ops");
    let saved = ns.sh("iptables-legacy-save -t nat").unwrap();
    assert!(!saved.contains("OLD_CILIUM_POST_nat"), "{saved}");
    assert!(saved.contains("-A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat"), "{saved}");
    assert!(saved.contains("cilium masquerade non-cluster"), "{saved}");
    let saved6 = ns.sh("ip6tables-legacy-save -t nat").unwrap();
    assert!(!saved6.contains("MASQUERADE"), "{saved6}");
    assert!(saved6.contains("DNAT"), "{saved6}");

    // The reader agrees with the save output.
    let rs = ns.run(read_ruleset).unwrap();
    let nat = table(&rs, Family::Ip, "nat");
    assert!(nat.chain("OLD_CILIUM_POST_nat").is_none());
    assert_eq!(nat.chain("POSTROUTING").unwrap().rules.len(), 1);

    // A failing op names the command and the tool's complaint.
    let bad = vec![LegacyOp::DeleteChain {
        family: Family::Ip,
        table: "nat".into(),
        chain: "CNI-HOSTPORT-DNAT".into(),
    }];
    let err = ns.run(move || apply(&bad)).unwrap_err().to_string();
    assert!(
        err.contains("iptables-legacy -w -t nat -X CNI-HOSTPORT-DNAT"),
        "{err}"
    );
}

/// Regenerates agent/testdata/legacy and agent/testdata/xt from the real kernel. Run with
/// `cargo test -p netmend-e2e --test legacy -- --ignored capture_testdata`.
#[test]
#[ignore]
fn capture_testdata() {
    let ns = loaded_namespace();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata");
    let captured = ns.run(|| {
        let mut out = Vec::new();
        for (family, tag) in [(Family::Ip, "ipv4"), (Family::Ip6, "ipv6")] {
            for name in table_names(family).unwrap() {
                let (info, blob) = read_table_raw(family, &name).unwrap();
                out.push((family, tag, name, info, blob));
            }
        }
        out
    });
    for (family, tag, name, info, blob) in captured {
        let mut file = Vec::new();
        file.extend_from_slice(name.as_bytes());
        file.resize(32, 0);
        file.extend_from_slice(&info.valid_hooks.to_ne_bytes());
        for v in info.hook_entry.iter().chain(info.underflow.iter()) {
            file.extend_from_slice(&v.to_ne_bytes());
        }
        file.extend_from_slice(&info.num_entries.to_ne_bytes());
        file.extend_from_slice(&info.size.to_ne_bytes());
        file.extend_from_slice(&blob);
        std::fs::write(dir.join(format!("legacy/{tag}-{name}.bin")), file).unwrap();
        for b in xt_blobs(family, &blob) {
            if b.name.is_empty() || b.name == "ERROR" {
                continue;
            }
            let kind = if b.is_target { "target" } else { "match" };
            let path = dir.join(format!("xt/{tag}-{kind}-{}-r{}.bin", b.name, b.revision));
            if !path.exists() {
                std::fs::write(path, &b.data).unwrap();
            }
        }
    }
}

#[test]
fn missing_capabilities_are_named() {
    let ns = loaded_namespace();
    let err = ns
        .run(|| {
            drop_capabilities_in_this_thread(&[CAP_NET_ADMIN, CAP_NET_RAW]);
            read_ruleset()
        })
        .expect_err("reading without CAP_NET_RAW must fail");
    assert!(
        err.to_string()
            .contains("reading iptables-legacy needs CAP_NET_ADMIN and CAP_NET_RAW"),
        "{err}"
    );
}
