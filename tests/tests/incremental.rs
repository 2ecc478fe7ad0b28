//! End-to-end tests of the incremental nftables reader (`observe::nftables::NftTracker` /
//! `NftCache`): in a fresh namespace holding a kube-proxy-sized ruleset, changes made with the real
//! `iptables-nft`, `iptables-nft-restore` and `nft` binaries must leave the cache equal to a fresh
//! dump (counters aside) without any full re-read; an event overflow must end in one re-read.
//!
//! Also holds two `#[ignore]`d helpers: `capture_event_testdata` (writes
//! `agent/testdata/nft/events/`) and `measure_incremental_scale` (prints event vs dump costs on
//! 10,000 services).

use netmend::model::ruleset::Ruleset;
use netmend::observe::nft_events::NftEventSocket;
use netmend::observe::nftables::{capture_ruleset_messages, read_ruleset, NftTracker};
use netmend_e2e::{kube_proxy_nft_fixture, kube_proxy_ruleset, require_tool, NetNs};
use std::process::Command;
use std::time::{Duration, Instant};

/// The ruleset with what notifications cannot follow cleared: counters, element order (a hash
/// set dumps in hash order) and the generation.
fn normalized(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    out.generation = None;
    for table in &mut out.tables {
        for chain in &mut table.chains {
            for rule in &mut chain.rules {
                rule.counters = None;
            }
        }
        for set in table.sets.values_mut() {
            set.elements.sort_by_cached_key(|e| format!("{e:?}"));
        }
    }
    out
}

/// Panics naming the first difference (the whole ruleset is too big to print).
fn assert_same(step: &str, cached: &Ruleset, fresh: &Ruleset) {
    let (a, b) = (normalized(cached), normalized(fresh));
    if a == b {
        return;
    }
    let names = |r: &Ruleset| {
        r.tables
            .iter()
            .map(|t| t.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b), "{step}: tables differ");
    for (ta, tb) in a.tables.iter().zip(&b.tables) {
        let chains = |t: &netmend::model::ruleset::Table| {
            t.chains.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(chains(ta), chains(tb), "{step}: chains of {} differ", ta.id);
        for (ca, cb) in ta.chains.iter().zip(&tb.chains) {
            assert_eq!(ca, cb, "{step}: chain {}/{} differs", ta.id, ca.name);
        }
        assert_eq!(ta.sets, tb.sets, "{step}: sets of {} differ", ta.id);
        assert_eq!(ta, tb, "{step}: table {} differs", ta.id);
    }
    panic!("{step}: rulesets differ");
}

fn sh(script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_temp(tag: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("netmend-inc-{tag}-{}", std::process::id()));
    std::fs::write(&path, text).expect("write temp file");
    path.display().to_string()
}

/// A small `iptables-nft-restore --noflush` batch: one new service (1 chain, 3 rules) and the
/// removal of one existing rule.
const RESTORE_BATCH: &str = r#"*nat
:KUBE-SVC-NEWSERVICE0000001 - [0:0]
-A KUBE-SERVICES -d 10.43.200.1/32 -p tcp -m comment --comment "ns9/new:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-NEWSERVICE0000001
-A KUBE-SVC-NEWSERVICE0000001 ! -s 10.42.0.0/16 -d 10.43.200.1/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-NEWSERVICE0000001 -j KUBE-MARK-MASQ
-D KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
COMMIT
"#;

/// Steps of the scenario: (name, shell script), each run inside the namespace.
fn steps() -> Vec<(&'static str, String)> {
    let batch = write_temp("batch", RESTORE_BATCH);
    let services =
        "$(nft -a list chain ip kube-proxy services | awk '/handle/ {print $NF}' | sed -n 2p)";
    vec![
        ("append", "iptables-nft -t nat -A KUBE-SERVICES -d 10.99.0.1/32 -p tcp --dport 80 -j KUBE-MARK-MASQ".into()),
        ("insert at head", "iptables-nft -t nat -I KUBE-SERVICES -d 10.99.0.2/32 -j KUBE-MARK-MASQ".into()),
        ("insert at 5", "iptables-nft -t nat -I KUBE-SERVICES 5 -d 10.99.0.3/32 -j KUBE-MARK-MASQ".into()),
        ("new chain", "iptables-nft -t nat -N TEST-CHAIN && iptables-nft -t nat -A TEST-CHAIN -j RETURN && iptables-nft -t nat -A TEST-CHAIN -s 1.2.3.4 -j ACCEPT && iptables-nft -t nat -A TEST-CHAIN -s 1.2.3.5 -j ACCEPT".into()),
        ("replace first", "iptables-nft -t nat -R TEST-CHAIN 1 -s 5.6.7.8 -j ACCEPT".into()),
        ("replace middle", "iptables-nft -t nat -R TEST-CHAIN 2 -s 5.6.7.9 -j ACCEPT".into()),
        ("delete by number", "iptables-nft -t nat -D KUBE-SERVICES 3".into()),
        ("delete by spec", "iptables-nft -t nat -D KUBE-SERVICES -d 10.99.0.1/32 -p tcp --dport 80 -j KUBE-MARK-MASQ".into()),
        ("flush and delete chain", "iptables-nft -t nat -F TEST-CHAIN && iptables-nft -t nat -X TEST-CHAIN".into()),
        ("restore --noflush batch", format!("iptables-nft-restore -w --noflush < {batch}")),
        ("new filter table, policy", "iptables-nft -P FORWARD DROP && iptables-nft -A INPUT -p udp --dport 53 -j ACCEPT".into()),
        ("flush a big chain", "iptables-nft -t nat -F KUBE-SERVICES".into()),
        ("set element add", "nft add element ip kube-proxy service-ips '{ 172.30.0.99 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }' && nft add element ip kube-proxy cluster-ips '{ 172.30.0.99 }'".into()),
        ("set element delete", "nft delete element ip kube-proxy service-ips '{ 172.30.0.99 . tcp . 80 }' && nft delete element ip kube-proxy cluster-ips '{ 172.30.0.99 }'".into()),
        ("anonymous set rule", "nft add rule ip kube-proxy services tcp dport '{ 1, 2, 3 }' accept".into()),
        ("insert/add at position", format!("H={services}; nft insert rule ip kube-proxy services position $H counter && nft add rule ip kube-proxy services position $H counter")),
        ("flush nft chain", "nft flush chain ip kube-proxy services".into()),
        ("interval set", "nft add table ip t2 && nft add set ip t2 s '{ type ipv4_addr; flags interval; }' && nft add element ip t2 s '{ 10.0.0.0/8, 192.168.1.1-192.168.1.9, 172.16.0.1 }'".into()),
        ("interval delete", "nft delete element ip t2 s '{ 10.0.0.0/8 }'".into()),
        ("delete table", "nft delete table ip t2".into()),
        ("one transaction, many kinds", "nft -f - <<'EOF'\nadd table ip t3\nadd chain ip t3 c { type filter hook input priority 0; policy accept; }\nadd chain ip t3 d\nadd rule ip t3 c jump d\nadd rule ip t3 d ip saddr { 1.1.1.1, 2.2.2.2 } drop\nEOF".into()),
    ]
}

fn load_base(ns: &NetNs, services: usize) {
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(services, 2))
        .unwrap();
    ns.nft_file(&kube_proxy_nft_fixture()).unwrap();
}

#[test]
fn cache_follows_real_changes_without_redumping() {
    require_tool("iptables-nft");
    require_tool("nft");
    let ns = NetNs::new("inc");
    load_base(&ns, 1000);
    let steps = steps();
    let applied = ns.run(move || {
        let mut tracker = NftTracker::new();
        let (first, why) = tracker.refresh().expect("first read");
        assert_eq!(why.as_deref(), Some("start"));
        assert!(first.rule_count() > 8000, "the base ruleset loaded");
        assert_same("start", &first, &read_ruleset().unwrap().0);
        for (name, script) in steps {
            sh(&script);
            let (cached, why) = tracker.refresh().expect("refresh");
            assert_eq!(why, None, "{name}: no full dump expected");
            let (fresh, _) = read_ruleset().unwrap();
            assert_eq!(cached.generation, fresh.generation, "{name}: generation");
            assert_same(name, &cached, &fresh);
            // An idle refresh changes nothing and dumps nothing.
            let (again, why) = tracker.refresh().expect("idle refresh");
            assert_eq!(why, None);
            assert!(
                std::sync::Arc::ptr_eq(&again, &cached),
                "{name}: idle pass copied"
            );
        }
        assert_eq!(tracker.stats.dumps, 1, "only the initial dump");
        tracker.stats.events_applied
    });
    assert!(applied > 20, "notifications were applied ({applied})");
}

#[test]
fn overflow_resyncs_once_and_matches_a_dump() {
    require_tool("iptables-nft-restore");
    let ns = NetNs::new("incovf");
    let rules = write_temp("ovf", &kube_proxy_ruleset(2500, 2));
    ns.run(move || {
        let mut tracker = NftTracker::with_buffer(64 << 10);
        tracker.refresh().expect("first read");
        sh(&format!("iptables-nft-restore -w --noflush < {rules}"));
        let (cached, why) = tracker.refresh().expect("refresh after bulk load");
        let why = why.expect("a full re-read after the overflow");
        assert!(why.contains("overflow"), "re-read reason: {why}");
        assert_eq!(tracker.stats.dumps, 2);
        let (fresh, _) = read_ruleset().unwrap();
        assert!(fresh.rule_count() >= 20_000);
        assert_same("after overflow", &cached, &fresh);
        // Back to incremental afterwards.
        sh("iptables-nft -t nat -A KUBE-SERVICES -d 10.99.0.1/32 -j KUBE-MARK-MASQ");
        let (cached, why) = tracker.refresh().expect("refresh");
        assert_eq!(why, None);
        assert_same(
            "after overflow + append",
            &cached,
            &read_ruleset().unwrap().0,
        );
    });
}

#[test]
fn resync_request_dumps_again() {
    require_tool("iptables-nft");
    let ns = NetNs::new("incrs");
    ns.run(|| {
        let mut tracker = NftTracker::new();
        tracker.refresh().expect("first read");
        sh("iptables-nft -t nat -N A && iptables-nft -t nat -A A -j RETURN");
        tracker.resync("periodic resync");
        let (cached, why) = tracker.refresh().unwrap();
        assert_eq!(why.as_deref(), Some("periodic resync"));
        assert_eq!(
            tracker.stats.last_resync.as_deref(),
            Some("periodic resync")
        );
        assert_eq!(tracker.stats.dumps, 2);
        assert_same("resync", &cached, &read_ruleset().unwrap().0);
    });
}

/// Writes `agent/testdata/nft/events/`: a dump capture before the scenario, then per step the
/// notification bytes (`NN-step.events.bin`) and a dump capture after it (`NN-step.dump.bin`).
/// Run: `cargo test -p netmend-e2e --test incremental capture_event_testdata -- --ignored`.
#[test]
#[ignore]
fn capture_event_testdata() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata/nft/events");
    std::fs::create_dir_all(&dir).unwrap();
    let ns = NetNs::new("inccap");
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(3, 2))
        .unwrap();
    ns.nft_file(&kube_proxy_nft_fixture()).unwrap();
    let steps = steps();
    ns.run(move || {
        let mut socket = NftEventSocket::open().unwrap();
        let (ruleset, bytes) = capture_ruleset_messages().unwrap();
        std::fs::write(dir.join("00-start.dump.bin"), bytes).unwrap();
        let mut generations = vec![format!("00-start {}", ruleset.generation.unwrap())];
        for (i, (name, script)) in steps.iter().enumerate() {
            if name.contains("big chain") {
                continue;
            }
            sh(script);
            let mut events = Vec::new();
            while socket
                .drain_raw(Duration::from_millis(100), |read| {
                    events.extend_from_slice(read.expect("no overflow in a capture"))
                })
                .unwrap()
                > 0
            {}
            let tag = format!("{:02}-{}", i + 1, name.replace([' ', '/', ','], "_"));
            let (ruleset, bytes) = capture_ruleset_messages().unwrap();
            std::fs::write(dir.join(format!("{tag}.events.bin")), events).unwrap();
            std::fs::write(dir.join(format!("{tag}.dump.bin")), bytes).unwrap();
            generations.push(format!("{tag} {}", ruleset.generation.unwrap()));
        }
        std::fs::write(dir.join("generations.txt"), generations.join("\n") + "\n").unwrap();
    });
}

/// Prints what one service's change costs through events against a full dump on 10,000
/// services, and what a whole-table `iptables-nft-restore` (kube-proxy's sync) does to the cache.
/// Run: `cargo test -p netmend-e2e --test incremental measure_incremental_scale -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_incremental_scale() {
    let ns = NetNs::new("incscale");
    let all = kube_proxy_ruleset(10_000, 2);
    let path = write_temp("scale", &all);
    ns.restore("iptables-nft-restore", &all).unwrap();
    let batch = write_temp(
        "scalebatch",
        RESTORE_BATCH
            .replace("-D KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n", "")
            .as_str(),
    );
    ns.run(move || {
        let started = Instant::now();
        let (full, stats) = read_ruleset().unwrap();
        println!(
            "full dump: {} rules, {} chains, {:?} ({} bytes)",
            full.rule_count(),
            full.chain_count(),
            started.elapsed(),
            stats.bytes
        );
        let mut tracker = NftTracker::new();
        let started = Instant::now();
        tracker.refresh().unwrap();
        println!("tracker start (subscribe + dump): {:?}", started.elapsed());
        sh(&format!("iptables-nft-restore -w --noflush < {batch}"));
        let before = tracker.stats.events_applied;
        let started = Instant::now();
        let (_, why) = tracker.refresh().unwrap();
        println!(
            "one service added (1 chain + 3 rules): refresh {:?}, {} messages applied, dump: {why:?}",
            started.elapsed(),
            tracker.stats.events_applied - before
        );
        let started = Instant::now();
        let (_, why) = tracker.refresh().unwrap();
        println!("idle refresh (GETGEN only): {:?}, dump: {why:?}", started.elapsed());
        // A consumer still holding the previous snapshot makes the next change copy the model.
        let held = tracker.refresh().unwrap().0;
        sh("iptables-nft -t nat -A KUBE-SVC-NEWSERVICE0000001 -j RETURN");
        let started = Instant::now();
        let (_, why) = tracker.refresh().unwrap();
        println!(
            "one rule added while the previous snapshot is held (copy on write): {:?}, dump: {why:?}",
            started.elapsed()
        );
        drop(held);
        let started = Instant::now();
        sh(&format!("iptables-nft-restore -w --noflush < {path}"));
        println!("whole-table iptables-nft-restore --noflush: {:?}", started.elapsed());
        let before = tracker.stats.events_applied;
        let started = Instant::now();
        let (cached, why) = tracker.refresh().unwrap();
        println!(
            "refresh after it: {:?}, {} messages applied, dump: {why:?}, dumps so far {}",
            started.elapsed(),
            tracker.stats.events_applied - before,
            tracker.stats.dumps
        );
        assert_same("scale", &cached, &read_ruleset().unwrap().0);
    });
}

#[test]
fn kernel_probe_keeps_nftables_current_from_events() {
    use netmend::observe::node::{KernelReader, NftView};
    use netmend::runtime::NodeReader;
    require_tool("iptables-nft");
    let ns = NetNs::new("incprobe");
    ns.restore("iptables-nft-restore", &kube_proxy_ruleset(50, 2))
        .unwrap();
    ns.run(|| {
        let mut probe = KernelReader::new(NftView::Cached);
        let first = probe.snapshot().expect("snapshot");
        assert_eq!(probe.dumps, 1);
        assert_eq!(first.sources["nftables"].detail, None);
        sh("iptables-nft -t nat -N EXTRA && iptables-nft -t nat -A EXTRA -j RETURN");
        let second = probe.snapshot().expect("snapshot");
        assert_eq!(probe.dumps, 1, "followed by events, no dump");
        assert!(probe.events_applied >= 2, "{}", probe.events_applied);
        let cached = second.nftables.clone().expect("nftables read");
        assert_same("probe", &cached, &read_ruleset().unwrap().0);
        probe.resync();
        let third = probe.snapshot().expect("snapshot");
        assert_eq!(probe.dumps, 2);
        let detail = third.sources["nftables"].detail.clone().unwrap_or_default();
        assert!(detail.contains("periodic resync"), "detail: {detail}");
    });
}
