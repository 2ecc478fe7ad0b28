//! End-to-end tests of the iptables-legacy reader and writer in fresh network namespaces, with the
//! real `iptables-legacy-restore` / `ip6tables-legacy-restore` / `iptables-legacy-save`.

use netmend::act::iptables_legacy::{
    apply_action, legacy_tool_available, restore_script, run_restore, LegacyWriteError, ScriptOp,
    XtablesLock,
};
use netmend::model::finding::{FixAction, RuleRef, TableRef};
use netmend::model::render::{action_fingerprint, rule_spec};
use netmend::model::ruleset::{
    Action, Backend, Cidr, Direction, Family, Match, NatRange, PortRange, Ruleset, Table, Verdict,
};
use netmend::observe::iptables_legacy::{read_ruleset, read_table_raw, table_names, xt_blobs};
use netmend_e2e::{
    drop_capabilities_in_this_thread, require_tool, wait_for, NetNs, CAP_NET_ADMIN, CAP_NET_RAW,
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

/// A legacy table's save output without the timestamp comment lines: two saves of an unchanged
/// table compare equal byte for byte.
fn save(ns: &NetNs, family: Family, table: &str) -> String {
    let tool = if family == Family::Ip6 {
        "ip6tables-legacy-save"
    } else {
        "iptables-legacy-save"
    };
    ns.sh(&format!("{tool} -t {table}"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What the checks decide for "delete these rules (by index in their chain) and these chains",
/// from a read of the namespace's legacy tables: the rules' specs and the content fingerprint.
fn decide(
    ns: &NetNs,
    family: Family,
    table_name: &str,
    rules: &[(&str, usize)],
    delete_chains: &[&str],
) -> FixAction {
    let rs = ns.run(read_ruleset).expect("read legacy ruleset");
    let t = table(&rs, family, table_name);
    let mut action = FixAction::RemoveRules {
        table: TableRef {
            backend: Backend::Legacy,
            family,
            table: table_name.into(),
        },
        rules: rules
            .iter()
            .map(|(chain, index)| {
                let c = t.chain(chain).unwrap();
                RuleRef {
                    chain: chain.to_string(),
                    handle: c.rules[*index].handle,
                    spec: rule_spec(t, chain, &c.rules[*index]),
                }
            })
            .collect(),
        delete_chains: delete_chains.iter().map(|c| c.to_string()).collect(),
        content_hash: 0,
        narrow: Vec::new(),
    };
    let hash = action_fingerprint(t, &action);
    if let FixAction::RemoveRules { content_hash, .. } = &mut action {
        *content_hash = hash;
    }
    action
}

fn apply_in(ns: &NetNs, action: &FixAction) -> Result<String, LegacyWriteError> {
    let action = action.clone();
    ns.run(move || apply_action(&action))
}

const HIJACK_JUMP: &str = r#"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0f3c9a\"" -m multiport --dports 6443 -j CNI-DN-1a2b3c4d5e6f7a8b9c0d1"#;

const V6_HIJACK: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-6a6b6c - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s fd00:42::/64 ! -o cilium_+ -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"6a6b6c\"" -m multiport --dports 6443 -j CNI-DN-6a6b6c
-A CNI-DN-6a6b6c -p tcp -m tcp --dport 6443 -j DNAT --to-destination [fd00:42::244]:6443
COMMIT
"#;

/// 50 rounds of: load `nat` (a fresh table), decide to remove the hijack (the jump in
/// CNI-HOSTPORT-DNAT and the chain `dn_chain`), start a writer inserting rules at the head of
/// CNI-HOSTPORT-DNAT in a tight loop, remove the hijack, stop the writer; then compare the full
/// saves: exactly the hijack is gone, every other rule (the writer's included) is still there.
fn race_a_head_inserting_writer(family: Family, nat: &str, jump: &str, dn_chain: &str) {
    let (restore, tool) = if family == Family::Ip6 {
        ("ip6tables-legacy-restore", "ip6tables-legacy")
    } else {
        ("iptables-legacy-restore", "iptables-legacy")
    };
    require_tool(restore);
    require_tool(tool);
    let ns = NetNs::new("legrace");
    let mut inserted_total = 0usize;
    for round in 0..50 {
        // Without --noflush the restore replaces the whole nat table.
        ns.sh(&format!(
            "printf '%s' '{}' | {restore} -w",
            nat.replace('\'', r"'\''")
        ))
        .unwrap();
        let before = save(&ns, family, "nat");
        assert!(before.contains(jump), "{before}");
        // The decision is made on a read taken before the writer starts...
        let action = decide(&ns, family, "nat", &[("CNI-HOSTPORT-DNAT", 0)], &[dn_chain]);
        // ...then the writer keeps moving the jump down while netmend writes.
        let writer = ns.spawn(&format!(
            "sh -c 'i=0; while :; do i=$((i+1)); {tool} -w -t nat -I CNI-HOSTPORT-DNAT -p udp -m udp --dport $(({round} * 1000 + i)) -j RETURN; done'"
        ));
        let started = wait_for(std::time::Duration::from_secs(10), || {
            save(&ns, family, "nat")
                .contains("-p udp -m udp --dport")
                .then_some(())
        });
        assert!(started.is_some(), "the writer never inserted a rule");
        let script = apply_in(&ns, &action)
            .unwrap_or_else(|e| panic!("{family} round {round}: netmend's write failed: {e}"));
        drop(writer);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            script.starts_with("*nat\n-D CNI-HOSTPORT-DNAT -p tcp -m comment"),
            "{script}"
        );

        let after = save(&ns, family, "nat");
        let is_writers = |l: &str| {
            l.starts_with("-A CNI-HOSTPORT-DNAT -p udp -m udp --dport ")
                && l.ends_with(" -j RETURN")
        };
        let inserted = after.lines().filter(|l| is_writers(l)).count();
        assert!(
            inserted > 0,
            "{family} round {round}: no writer rule in {after}"
        );
        inserted_total += inserted;
        let expected: Vec<&str> = before
            .lines()
            .filter(|l| *l != jump && !l.contains(dn_chain))
            .collect();
        let kept: Vec<&str> = after.lines().filter(|l| !is_writers(l)).collect();
        assert_eq!(
            kept, expected,
            "{family} round {round}: exactly the hijack (the jump and its chain) must be gone"
        );
    }
    eprintln!(
        "{family}: 50 rounds, {inserted_total} rules inserted by the racing writer, none lost"
    );
}

#[test]
fn a_hijack_is_removed_by_content_while_a_writer_inserts_above_it() {
    require_tool("iptables-legacy-save");
    let nat = V4_RULES.split("*filter").next().unwrap();
    race_a_head_inserting_writer(Family::Ip, nat, HIJACK_JUMP, "CNI-DN-1a2b3c4d5e6f7a8b9c0d1");
}

#[test]
fn an_ipv6_hijack_is_removed_by_content_while_a_writer_inserts_above_it() {
    require_tool("ip6tables-legacy-save");
    race_a_head_inserting_writer(
        Family::Ip6,
        V6_HIJACK,
        r#"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"6a6b6c\"" -m multiport --dports 6443 -j CNI-DN-6a6b6c"#,
        "CNI-DN-6a6b6c",
    );
}

#[test]
fn a_batch_whose_rule_changed_under_it_has_no_effect() {
    require_tool("iptables-legacy-save");
    require_tool("ip6tables-legacy-save");
    let ns = loaded_namespace();

    // IPv4: the decision names the masquerade rule of CILIUM_POST_nat (negations, comment); the
    // rule is then replaced by one that differs only in its comment.
    let action = decide(&ns, Family::Ip, "nat", &[("CILIUM_POST_nat", 0)], &[]);
    ns.sh(r#"iptables-legacy -w -t nat -R CILIUM_POST_nat 1 -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "changed" -j MASQUERADE"#)
        .unwrap();
    let before = save(&ns, Family::Ip, "nat");
    let err = apply_in(&ns, &action).unwrap_err();
    assert!(err.is_moved(), "{err}");
    assert_eq!(save(&ns, Family::Ip, "nat"), before, "nothing may change");

    // IPv6: the DNAT rule of PREROUTING, changed to another port under the decision.
    let action6 = decide(&ns, Family::Ip6, "nat", &[("PREROUTING", 0)], &[]);
    ns.sh("ip6tables-legacy -w -t nat -R PREROUTING 1 -d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j DNAT --to-destination [fd00:42::5]:9443")
        .unwrap();
    let before6 = save(&ns, Family::Ip6, "nat");
    let err = apply_in(&ns, &action6).unwrap_err();
    assert!(err.is_moved(), "{err}");
    assert_eq!(save(&ns, Family::Ip6, "nat"), before6, "nothing may change");

    // Past netmend's own re-check, the kernel swap is what keeps it whole: a restore batch whose
    // first -D matches and whose second no longer does fails as a whole, in both families.
    let restore = |family: Family, script: &str| {
        let script = script.to_string();
        ns.run(move || {
            run_restore(
                &legacy_tool_available(family).unwrap(),
                &script,
                &std::env::temp_dir().join("netmend-e2e-inner.lock"),
                std::time::Duration::from_secs(20),
            )
        })
    };
    let script = restore_script(
        "nat",
        &[
            ScriptOp::DeleteRule {
                chain: "POSTROUTING".into(),
                spec: r#"-m comment --comment "old cilium feeder" -j OLD_CILIUM_POST_nat"#.into(),
            },
            ScriptOp::DeleteRule {
                chain: "CILIUM_POST_nat".into(),
                spec: r#"-s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE"#.into(),
            },
        ],
    )
    .unwrap();
    let err = restore(Family::Ip, &script).unwrap_err();
    assert!(matches!(err, LegacyWriteError::Failed { .. }), "{err}");
    assert_eq!(
        save(&ns, Family::Ip, "nat"),
        before,
        "a failed batch changed the table"
    );
    let script6 = restore_script(
        "nat",
        &[
            ScriptOp::DeleteRule {
                chain: "POSTROUTING".into(),
                spec: "-s fd00:42::/64 ! -o cilium_+ -j MASQUERADE".into(),
            },
            ScriptOp::DeleteRule {
                chain: "PREROUTING".into(),
                spec: "-d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j DNAT --to-destination [fd00:42::5]:8443".into(),
            },
        ],
    )
    .unwrap();
    let err = restore(Family::Ip6, &script6).unwrap_err();
    assert!(matches!(err, LegacyWriteError::Failed { .. }), "{err}");
    assert_eq!(
        save(&ns, Family::Ip6, "nat"),
        before6,
        "a failed batch changed the table"
    );

    // The same rules, unchanged, delete exactly: the stale chain with its jump (v4), the
    // masquerade rule (v6).
    let stale = decide(
        &ns,
        Family::Ip,
        "nat",
        &[("POSTROUTING", 1)],
        &["OLD_CILIUM_POST_nat"],
    );
    apply_in(&ns, &stale).unwrap();
    let after = save(&ns, Family::Ip, "nat");
    let expected: String = before
        .lines()
        .filter(|l| !l.contains("OLD_CILIUM_POST_nat"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(after, expected);
    let masq6 = decide(&ns, Family::Ip6, "nat", &[("POSTROUTING", 0)], &[]);
    apply_in(&ns, &masq6).unwrap();
    let expected6: String = before6
        .lines()
        .filter(|l| !l.contains("MASQUERADE"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(save(&ns, Family::Ip6, "nat"), expected6);
}

#[test]
fn a_rule_netmend_cannot_render_exactly_blocks_the_fix() {
    require_tool("iptables-legacy-save");
    let ns = loaded_namespace();
    // A REDIRECT with --random: the model keeps the redirect but not the flag, so its rendering
    // is not what iptables-save prints.
    ns.sh(r#"iptables-legacy -w -t nat -A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 10250 -j REDIRECT --to-ports 10251 --random"#)
        .unwrap();
    let action = decide(&ns, Family::Ip, "nat", &[("CNI-HOSTPORT-DNAT", 1)], &[]);
    let before = save(&ns, Family::Ip, "nat");
    let err = apply_in(&ns, &action).unwrap_err();
    assert!(err.is_blocking(), "{err}");
    assert!(
        err.to_string().contains("refusing to delete by position")
            && err.to_string().contains("--to-ports 10251 --random"),
        "{err}"
    );
    assert_eq!(save(&ns, Family::Ip, "nat"), before);
}

/// The lock netmend holds is the one iptables waits for, and the restore it runs does not wait
/// for it (it is pointed at a private lock file): measured on the installed iptables.
#[test]
fn netmend_holds_the_iptables_lock_and_its_restore_runs_under_it() {
    require_tool("iptables-legacy");
    let ns = loaded_namespace();
    let lock = XtablesLock::acquire(std::time::Duration::from_secs(10)).expect("xtables lock");
    let started = std::time::Instant::now();
    let out = ns
        .sh_output("iptables-legacy -w 1 -t nat -A CNI-HOSTPORT-DNAT -j RETURN")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "iptables did not wait for netmend's lock"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holding the xtables lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    let script = restore_script(
        "nat",
        &[ScriptOp::DeleteRule {
            chain: "CILIUM_POST_nat".into(),
            spec: "-s 10.42.0.5/32 -o eth0 -j SNAT --to-source 192.168.1.10".into(),
        }],
    )
    .unwrap();
    let inner = std::env::temp_dir().join(format!("netmend-e2e-inner-{}.lock", std::process::id()));
    let started = std::time::Instant::now();
    ns.run(move || {
        run_restore(
            &legacy_tool_available(Family::Ip).unwrap(),
            &script,
            &inner,
            std::time::Duration::from_secs(5),
        )
    })
    .expect("the restore runs while netmend holds the lock");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    drop(lock);
    assert!(!save(&ns, Family::Ip, "nat").contains("SNAT"));
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
