//! `bench-drift`: the cost of `kube-proxy-endpoint-drift` at scale, one run, printed as a table.
//!
//! usage (root): bench-drift [SERVICES] [ENDPOINTS] [MOVES]   (defaults: 10000 5 1000)
//!
//! In a fresh network namespace it loads kube-proxy's iptables-mode rules for SERVICES Services
//! with ENDPOINTS endpoints each (the project's generator, `iptables-nft-restore`), reads them back
//! with netmend's nftables reader, and builds the matching Services and EndpointSlices as the
//! watches deliver them. It measures: reading what kube-proxy programmed from the rules, the
//! intent index's first build from the lists, one watch event (a slice whose endpoint moved to a
//! new pod) folded into the index, and the comparison of the two; with the RSS each step adds.
//! After MOVES slices moved (and the rules not), the comparison must name exactly those Service
//! ports: the figures are of a correct result.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netmend::model::kube_proxy::programmed_services;
use netmend::model::service_intent::{drift, IntentIndex};
use netmend_e2e::{kube_proxy_ruleset, NetNs};
use serde_json::json;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: bench-drift [SERVICES] [ENDPOINTS] [MOVES]";

/// The generator's endpoint `j` of Service `i`: 10.42.0.2 + i * endpoints + j.
fn endpoint(i: usize, j: usize, endpoints: usize) -> String {
    let n = 2 + i * endpoints + j;
    format!("10.{}.{}.{}", 42 + n / 65536, (n / 256) % 256, n % 256)
}

fn service(i: usize) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("svc{i}"), "namespace": format!("ns{}", i % 50),
                     "resourceVersion": "1"},
        "spec": {"clusterIP": format!("10.43.{}.{}", i / 250, 1 + i % 250), "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))?)
}

fn slice(i: usize, addresses: &[String]) -> Result<EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("svc{i}-abcde"), "namespace": format!("ns{}", i % 50),
                     "labels": {"kubernetes.io/service-name": format!("svc{i}")},
                     "resourceVersion": "1"},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))?)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The median and the maximum of `runs` timings of `f`.
fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (
        times[times.len() / 2],
        times[times.len() - 1],
        last.expect("at least one run"),
    )
}

fn main() -> Result<()> {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().with_context(|| format!("{a:?}: {USAGE}")))
        .collect::<Result<_>>()?;
    let services = numbers.first().copied().unwrap_or(10_000);
    let endpoints = numbers.get(1).copied().unwrap_or(5);
    let moves = numbers.get(2).copied().unwrap_or(1_000).min(services);
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-drift needs root (it makes a network namespace)");
    }

    let rules = kube_proxy_ruleset(services, endpoints);
    let ns = NetNs::new("bench-drift");
    ns.restore("iptables-nft-restore", &rules)?;
    let (ruleset, _) = ns
        .run(netmend::observe::nftables::read_ruleset)
        .map_err(|e| anyhow::anyhow!("reading the rules: {e}"))?;
    let rules_count: usize = ruleset
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .map(|c| c.rules.len())
        .sum();

    let rss = rss_mib();
    let (programmed_p50, programmed_max, programmed) = timed(5, || programmed_services(&ruleset));
    let programmed_rss = rss_mib() - rss;
    if programmed.services.len() != services {
        bail!(
            "read {} programmed Service ports, expected {services}",
            programmed.services.len()
        );
    }

    let service_list: Vec<Service> = (0..services).map(service).collect::<Result<_>>()?;
    let slice_list: Vec<EndpointSlice> = (0..services)
        .map(|i| {
            let addresses: Vec<String> =
                (0..endpoints).map(|j| endpoint(i, j, endpoints)).collect();
            slice(i, &addresses)
        })
        .collect::<Result<_>>()?;
    let rss = rss_mib();
    let start = Instant::now();
    let mut index = IntentIndex::default();
    index.replace_services(service_list);
    index.replace_slices(slice_list);
    let listed = start.elapsed();
    let index_rss = rss_mib() - rss;

    let (compare_p50, compare_max, drifts) = timed(5, || {
        let intent = index.view();
        drift(&programmed, &intent.intended, &intent.services)
    });
    if !drifts.is_empty() {
        bail!(
            "{} drifts before any change: {:?}",
            drifts.len(),
            &drifts[..1]
        );
    }

    // The cluster moves one endpoint of `moves` Services to new pods; kube-proxy never hears.
    let mut event_times = Vec::with_capacity(moves);
    for i in 0..moves {
        let mut addresses: Vec<String> =
            (0..endpoints).map(|j| endpoint(i, j, endpoints)).collect();
        addresses[0] = format!("10.200.{}.{}", i / 256, i % 256);
        let moved = slice(i, &addresses)?;
        let start = Instant::now();
        index.apply_slice(moved);
        // the engine takes a view for its next pass
        let _view = index.view();
        event_times.push(start.elapsed());
    }
    event_times.sort();
    let (after_p50, after_max, drifts) = timed(5, || {
        let intent = index.view();
        drift(&programmed, &intent.intended, &intent.services)
    });
    if drifts.len() != moves
        || drifts
            .iter()
            .any(|d| d.missing.len() != 1 || d.extra.len() != 1)
    {
        bail!(
            "expected {moves} drifting Service ports with one missing and one extra endpoint each, got {}",
            drifts.len()
        );
    }

    println!(
        "kube-proxy-endpoint-drift, {services} Services x {endpoints} endpoints ({rules_count} nftables rules read), one run\n"
    );
    println!("| step | p50 | max | RSS added |");
    println!("|---|---|---|---|");
    println!(
        "| what kube-proxy programmed, from the rules (per ruleset change) | {} | {} | {:.1} MiB |",
        ms(programmed_p50),
        ms(programmed_max),
        programmed_rss
    );
    println!(
        "| intent index built from the first lists | {} | | {:.1} MiB |",
        ms(listed),
        index_rss
    );
    println!(
        "| one watch event (an EndpointSlice changed) folded in, {moves} events | {} | {} | |",
        ms(event_times[event_times.len() / 2]),
        ms(event_times[event_times.len() - 1])
    );
    println!(
        "| comparison, all Service ports, nothing drifting | {} | {} | |",
        ms(compare_p50),
        ms(compare_max)
    );
    println!(
        "| comparison with {moves} ports drifting (all named, one missing and one extra each) | {} | {} | |",
        ms(after_p50),
        ms(after_max)
    );
    Ok(())
}
