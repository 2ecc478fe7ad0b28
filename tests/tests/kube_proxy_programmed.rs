//! What kube-proxy programmed, read back from real kernel rules: kube-proxy-shaped rule sets (the
//! project's generator, and the upstream-shaped healthy fixtures) loaded with the real
//! `iptables-legacy-restore`, `iptables-nft-restore` and `nft -f` in a fresh namespace, read by
//! netmend's decoders and turned into per-Service-port endpoints by
//! `netmend::model::kube_proxy::programmed_services`.

use netmend::model::kube_proxy::{programmed_services, ProgrammedServices, ProxyMode};
use netmend::model::ruleset::Ruleset;
use netmend_e2e::{kube_proxy_nftables, kube_proxy_ruleset, require_root, require_tool, NetNs};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

fn read_nft(ns: &NetNs) -> Ruleset {
    ns.run(netmend::observe::nftables::read_ruleset)
        .expect("read nftables")
        .0
}

fn read_legacy(ns: &NetNs) -> Ruleset {
    ns.run(netmend::observe::iptables_legacy::read_ruleset)
        .expect("read x_tables")
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n as u32)
}

/// The generator's iptables mode: service `i` is `ns{i%50}/svc{i}:http`, endpoint `j` of it
/// 10.42.0.2 + `i * endpoints + j`, port 8080.
fn assert_iptables_mode(found: &ProgrammedServices, services: usize, endpoints: usize) {
    assert_eq!(found.mode, Some(ProxyMode::Iptables));
    assert_eq!(
        found.services.len(),
        services,
        "{:?}",
        found.services.keys()
    );
    for (port, programmed) in &found.services {
        assert_eq!(
            (port.port.as_str(), port.protocol.as_str()),
            ("http", "tcp")
        );
        let index: usize = port.name.strip_prefix("svc").unwrap().parse().unwrap();
        assert_eq!(port.namespace, format!("ns{}", index % 50));
        let expected: BTreeSet<SocketAddr> = (0..endpoints)
            .map(|j| {
                SocketAddr::new(
                    offset(Ipv4Addr::new(10, 42, 0, 2), index * endpoints + j).into(),
                    8080,
                )
            })
            .collect();
        assert_eq!(programmed, &expected, "{port}");
    }
}

#[test]
fn iptables_mode_in_both_backends() {
    require_root();
    for tool in ["iptables-legacy-restore", "iptables-nft-restore"] {
        require_tool(tool);
    }
    for (services, endpoints) in [(60, 3), (25, 0)] {
        let rules = kube_proxy_ruleset(services, endpoints);
        let ns = NetNs::new("kpprog-legacy");
        ns.restore("iptables-legacy-restore", &rules).unwrap();
        let found = programmed_services(&read_legacy(&ns));
        assert_iptables_mode(&found, services, endpoints);
        drop(ns);

        let ns = NetNs::new("kpprog-nft");
        ns.restore("iptables-nft-restore", &rules).unwrap();
        let found = programmed_services(&read_nft(&ns));
        assert_iptables_mode(&found, services, endpoints);
    }
}

#[test]
fn nftables_mode() {
    require_root();
    require_tool("nft");
    let (services, endpoints) = (30, 2);
    let rules = kube_proxy_nftables(services, endpoints);
    let ns = NetNs::new("kpprog-nftmode");
    ns.nft_file(&rules).unwrap();
    let found = programmed_services(&read_nft(&ns));
    assert_eq!(found.mode, Some(ProxyMode::Nftables));
    let service_chains = rules
        .lines()
        .filter(|line| line.starts_with("add chain ip kube-proxy service-"))
        // kube-proxy's helper chain `service-endpoints-check` is not a Service's chain.
        .filter(|line| !line.contains("service-endpoints-check"))
        .count();
    assert!(service_chains > 0);
    assert_eq!(found.services.len(), service_chains);
    for (port, programmed) in &found.services {
        let index: usize = port.name.strip_prefix("svc").unwrap().parse().unwrap();
        assert_eq!(
            (port.namespace.as_str(), port.port.as_str()),
            (format!("ns{index}").as_str(), "p80")
        );
        let expected: BTreeSet<SocketAddr> = (0..endpoints)
            .map(|j| {
                SocketAddr::new(
                    offset(Ipv4Addr::new(10, 180, 0, 0), j * 0x1_0000 + index).into(),
                    80,
                )
            })
            .collect();
        assert_eq!(programmed, &expected, "{port}");
    }
}

/// The upstream-shaped healthy fixtures: kube-proxy's own proxier-test shapes in both modes.
#[test]
fn upstream_shaped_fixtures() {
    require_root();
    require_tool("nft");
    require_tool("iptables-nft-restore");
    let fixture = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/healthy")
                .join(name),
        )
        .unwrap()
    };
    let ns = NetNs::new("kpprog-upstream-ipt");
    ns.restore(
        "iptables-nft-restore",
        &fixture("kube-proxy-iptables.rules"),
    )
    .unwrap();
    let found = programmed_services(&read_nft(&ns));
    let text: Vec<String> = found
        .services
        .iter()
        .map(|(port, endpoints)| {
            let endpoints: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
            format!("{port} {}", endpoints.join(","))
        })
        .collect();
    assert!(
        text.contains(&"default/kubernetes:https/tcp 192.168.1.10:6443".to_string()),
        "{text:#?}"
    );
    assert!(
        text.contains(&"ns1/svc1:p80/tcp 10.244.1.5:8080,10.244.2.7:8080".to_string()),
        "{text:#?}"
    );
    drop(ns);

    let ns = NetNs::new("kpprog-upstream-nft");
    ns.nft_file(&fixture("kube-proxy-nftables.nft")).unwrap();
    let found = programmed_services(&read_nft(&ns));
    assert_eq!(found.mode, Some(ProxyMode::Nftables));
    let svc1 = found
        .services
        .iter()
        .find(|(port, _)| port.to_string() == "ns1/svc1:p80/tcp")
        .map(|(_, endpoints)| endpoints.clone());
    assert_eq!(
        svc1,
        Some(BTreeSet::from([
            "10.244.1.5:8080".parse().unwrap(),
            "10.244.2.7:8080".parse().unwrap()
        ]))
    );
}
