//! End-to-end tests of the agent's iptables-legacy cache in a fresh network namespace with the real
//! `iptables-legacy-restore`: unchanged tables are not decoded again (traffic and identical
//! restores included), a change of size is seen on the next read, a same-size edit on the next
//! content check.

use netmend::observe::legacy_cache::LegacyCache;
use netmend_e2e::{require_tool, NetNs};
use std::sync::Arc;

fn nat(dnat_to: &str, extra_rule: bool) -> String {
    let extra = if extra_rule {
        "-A CNI-DN-1 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.42.0.9:8443\n"
    } else {
        ""
    };
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-1 - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j CNI-DN-1\n-A CNI-DN-1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {dnat_to}:80\n{extra}COMMIT\n"
    )
}

/// Replaces the whole nat table, as kube-proxy's restores do.
fn restore_table(ns: &NetNs, rules: &str) {
    ns.sh(&format!(
        "iptables-legacy-restore -w <<'RULES'\n{rules}RULES"
    ))
    .unwrap();
}

fn dnat_target(ruleset: &netmend::model::ruleset::Ruleset) -> String {
    let table = ruleset.tables.iter().find(|t| t.id.name == "nat").unwrap();
    let chain = table.chain("CNI-DN-1").unwrap();
    format!("{:?}", chain.rules[0].action)
}

#[test]
fn unchanged_tables_are_not_decoded_again_and_changes_are_seen() {
    require_tool("iptables-legacy-restore");
    let ns = NetNs::new("lcache");
    restore_table(&ns, &nat("10.42.0.7", false));
    let mut cache = ns.run(|| {
        let mut cache = LegacyCache::new();
        let first = cache.read().unwrap();
        let second = cache.read().unwrap();
        assert!(
            Arc::ptr_eq(&first, &second),
            "nothing changed: same ruleset"
        );
        cache
    });
    assert_eq!(cache.decodes, 1, "one table, decoded once");

    // Traffic moves counters only; an identical restore rewrites the table with the same rules.
    ns.sh("iptables-legacy -t nat -Z && ping -c 2 -W 1 127.0.0.1 >/dev/null || true")
        .unwrap();
    restore_table(&ns, &nat("10.42.0.7", false));
    let (cache_back, decodes) = ns.run(move || {
        cache.resync();
        let before = cache.decodes;
        cache.read().unwrap();
        (cache, before)
    });
    cache = cache_back;
    assert_eq!(cache.decodes, decodes, "same rules: hashed, not decoded");

    // A rule added: the table's size moved, seen on the very next read.
    restore_table(&ns, &nat("10.42.0.7", true));
    let (cache_back, rules) = ns.run(move || {
        let ruleset = cache.read().unwrap();
        let rules = ruleset.tables[0].chain("CNI-DN-1").unwrap().rules.len();
        (cache, rules)
    });
    cache = cache_back;
    assert_eq!(rules, 2);

    // The DNAT address edited in place: same size, seen by the content check.
    restore_table(&ns, &nat("10.42.0.8", true));
    let (before, after) = ns.run(move || {
        let stale = cache.read().unwrap();
        cache.resync();
        let fresh = cache.read().unwrap();
        (dnat_target(&stale), dnat_target(&fresh))
    });
    assert!(before.contains("10.42.0.7"), "{before}");
    assert!(after.contains("10.42.0.8"), "{after}");
}
