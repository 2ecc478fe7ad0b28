//! Evidence round trip: every rule netmend renders in iptables-save syntax must be accepted by the
//! real `iptables-restore` and decode back to the same rule.
//!
//! For each fixture (the captured tables in `agent/testdata/` and the healthy-node corpus in
//! `tests/fixtures/healthy/`, loaded with both `iptables-nft-restore` and
//! `iptables-legacy-restore`): read it with netmend's reader, render every rule of every
//! iptables-syntax table, restore the rendering into a second fresh namespace with the same
//! backend's `iptables-restore`, read that back, and compare rule by rule (netmend's model, without
//! handles and counters) and, for the corpus, the `iptables-save` text of both namespaces (without
//! counters). Rules netmend renders as "not expressible" are listed in the failure message and
//! never pasted back.

use netmend::model::render::{render_rule, uses_iptables_syntax};
use netmend::model::ruleset::{Backend, Family, Rule, Ruleset, Table};
use netmend_e2e::{require_tool, NetNs};
use std::fmt::Write;
use std::path::PathBuf;

fn manifest(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(ns: &NetNs, backend: Backend) -> Ruleset {
    match backend {
        Backend::Nft => {
            ns.run(netmend::observe::nftables::read_ruleset)
                .expect("read nftables")
                .0
        }
        Backend::Legacy => ns
            .run(netmend::observe::iptables_legacy::read_ruleset)
            .expect("read x_tables"),
    }
}

fn restore_binary(backend: Backend, family: Family) -> &'static str {
    match (backend, family) {
        (Backend::Nft, Family::Ip6) => "ip6tables-nft-restore",
        (Backend::Nft, _) => "iptables-nft-restore",
        (Backend::Legacy, Family::Ip6) => "ip6tables-legacy-restore",
        (Backend::Legacy, _) => "iptables-legacy-restore",
    }
}

fn save_binary(backend: Backend, family: Family) -> &'static str {
    match (backend, family) {
        (Backend::Nft, Family::Ip6) => "ip6tables-nft-save",
        (Backend::Nft, _) => "iptables-nft-save",
        (Backend::Legacy, Family::Ip6) => "ip6tables-legacy-save",
        (Backend::Legacy, _) => "iptables-legacy-save",
    }
}

/// The tables rendered in iptables syntax, per family.
fn iptables_tables(ruleset: &Ruleset, family: Family) -> Vec<&Table> {
    ruleset
        .tables
        .iter()
        .filter(|t| t.id.family == family && uses_iptables_syntax(t))
        .collect()
}

/// A rule as compared: no handle, no counters.
fn comparable(rule: &Rule) -> Rule {
    Rule {
        handle: 0,
        counters: None,
        ..rule.clone()
    }
}

/// The iptables-restore text of `tables` as netmend renders them, and the rules it could not
/// express (`table chain #index: rendering`).
fn render_tables(tables: &[&Table]) -> (String, Vec<String>, Vec<Skipped>) {
    let mut text = String::new();
    let mut inexpressible = Vec::new();
    let mut skipped = Vec::new();
    for table in tables {
        let _ = writeln!(text, "*{}", table.id.name);
        for chain in &table.chains {
            match &chain.base {
                Some(base) => {
                    let policy = match base.policy {
                        netmend::model::ruleset::Verdict::Drop => "DROP",
                        _ => "ACCEPT",
                    };
                    let _ = writeln!(text, ":{} {policy} [0:0]", chain.name);
                }
                None => {
                    let _ = writeln!(text, ":{} - [0:0]", chain.name);
                }
            }
        }
        for chain in &table.chains {
            for (i, rule) in chain.rules.iter().enumerate() {
                let line = render_rule(table, &chain.name, rule);
                if line.starts_with('#') {
                    inexpressible.push(format!("{} {} #{i}: {line}", table.id, chain.name));
                    skipped.push((table.id.name.clone(), chain.name.clone(), i));
                }
                let _ = writeln!(text, "{line}");
            }
        }
        text.push_str("COMMIT\n");
    }
    (text, inexpressible, skipped)
}

/// A rule left out of the rendering: (table, chain, index in the chain).
type Skipped = (String, String, usize);

/// Compares the rules of `want` and `got` chain by chain; rules listed as inexpressible in `want`
/// are expected to be missing from `got`. Returns the differences.
fn compare_tables(want: &[&Table], got: &Ruleset, skipped: &[String]) -> Vec<String> {
    let mut diffs = Vec::new();
    for table in want {
        let Some(other) = got
            .tables
            .iter()
            .find(|t| t.id.family == table.id.family && t.id.name == table.id.name)
        else {
            diffs.push(format!("{}: table missing after restore", table.id));
            continue;
        };
        for chain in &table.chains {
            let Some(other_chain) = other.chain(&chain.name) else {
                diffs.push(format!(
                    "{} {}: chain missing after restore",
                    table.id, chain.name
                ));
                continue;
            };
            let kept: Vec<Rule> = chain
                .rules
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    let tag = format!("{} {} #{i}:", table.id, chain.name);
                    !skipped.iter().any(|s| s.starts_with(&tag))
                })
                .map(|(_, r)| comparable(r))
                .collect();
            let back: Vec<Rule> = other_chain.rules.iter().map(comparable).collect();
            if kept.len() != back.len() {
                diffs.push(format!(
                    "{} {}: {} rules rendered, {} read back",
                    table.id,
                    chain.name,
                    kept.len(),
                    back.len()
                ));
                continue;
            }
            for (a, b) in kept.iter().zip(&back) {
                if a != b {
                    diffs.push(format!(
                        "{} {}:\n  rendered  {}\n  read back {}\n  model before {a:?}\n  model after  {b:?}",
                        table.id,
                        chain.name,
                        render_rule(table, &chain.name, a),
                        render_rule(other, &chain.name, b),
                    ));
                }
            }
        }
    }
    diffs
}

/// Splits an iptables-save rule line into words, keeping quoted strings whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ' ' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `iptables-save` text reduced to what the round trip must keep: tables in name order (the legacy
/// backend lists them in load order), no comments, no counters; in
/// each rule the `-m comment`s are moved (in their order) to the end of the matches and a one-port `-m multiport`
/// is written as the protocol's `--dport`/`--sport` (netmend's model keeps neither the position
/// of a comment nor which of the two equivalent matches held a single port).
/// Rules in `skip` (not expressible, so not pasted back) are left out.
fn normalised_save(text: &str, skip: &[Skipped]) -> Vec<String> {
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut table = String::new();
    let mut positions: std::collections::HashMap<String, usize> = Default::default();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            blocks.push(Vec::new());
            table = name.to_string();
            positions.clear();
        }
        if let Some(chain) = line
            .strip_prefix("-A ")
            .and_then(|r| r.split_whitespace().next())
        {
            let index = positions.entry(chain.to_string()).or_insert(0);
            let skipped = skip
                .iter()
                .any(|(t, c, i)| *t == table && c == chain && i == index);
            *index += 1;
            if skipped {
                continue;
            }
        }
        if let Some(block) = blocks.last_mut() {
            block.push(line.to_string());
        }
    }
    blocks.sort();
    let mut out = Vec::new();
    for line in blocks.iter().flatten() {
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(':') {
            let name_policy: Vec<&str> = line.split_whitespace().take(2).collect();
            out.push(name_policy.join(" "));
            continue;
        }
        if !line.starts_with("-A ") {
            out.push(line.to_string());
            continue;
        }
        let w = words(line);
        let proto = w
            .windows(2)
            .find(|p| p[0] == "-p")
            .map(|p| p[1].clone())
            .unwrap_or_else(|| "tcp".into());
        let mut rest = Vec::new();
        let mut comments = Vec::new();
        let mut target = Vec::new();
        let mut i = 0;
        while i < w.len() {
            if w[i] == "-m" && w.get(i + 1).map(String::as_str) == Some("comment") {
                comments.extend(w.get(i + 3).map(|c| c.trim_matches('"').to_string()));
                i += 4;
                continue;
            }
            if w[i] == "-m"
                && w.get(i + 1).map(String::as_str) == Some("multiport")
                && w.len() > i + 3
            {
                let (neg, flag, ports) = if w[i + 2] == "!" {
                    ("! ", &w[i + 3], w.get(i + 4))
                } else {
                    ("", &w[i + 2], w.get(i + 3))
                };
                if let Some(ports) = ports.filter(|p| !p.contains(',')) {
                    if flag == "--dports" || flag == "--sports" {
                        let single = flag.trim_end_matches('s');
                        rest.push(format!("-m {proto} {neg}{single} {ports}"));
                        i += if neg.is_empty() { 4 } else { 5 };
                        continue;
                    }
                }
            }
            if w[i] == "-j" || w[i] == "-g" {
                target = w[i..].to_vec();
                break;
            }
            rest.push(w[i].clone());
            i += 1;
        }
        let mut normal = rest.join(" ");
        for c in comments {
            let _ = write!(normal, " -m comment --comment {c}");
        }
        if !target.is_empty() {
            let _ = write!(normal, " {}", target.join(" "));
        }
        out.push(normal.replace("-m tcp -m tcp", "-m tcp"));
    }
    out
}

/// What one fixture produced.
#[derive(Default)]
struct Outcome {
    rules: usize,
    inexpressible: Vec<String>,
    diffs: Vec<String>,
}

/// Round trip of the iptables-syntax tables in `ruleset` (read from `backend`) through a fresh
/// namespace prepared by `prepare`. With `save_of`, also compares `iptables-save` texts.
fn round_trip(
    label: &str,
    ruleset: &Ruleset,
    backend: Backend,
    prepare: &dyn Fn(&NetNs),
    save_of: Option<&NetNs>,
) -> Outcome {
    let mut outcome = Outcome::default();
    for family in [Family::Ip, Family::Ip6] {
        let tables = iptables_tables(ruleset, family);
        if tables.is_empty() {
            continue;
        }
        outcome.rules += tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum::<usize>();
        let (text, inexpressible, skipped) = render_tables(&tables);
        let target = NetNs::new("ev-back");
        prepare(&target);
        if let Err(e) = target.restore(restore_binary(backend, family), &text) {
            outcome.diffs.push(format!(
                "{label} ({family}): iptables-restore refused netmend's rendering: {e}\n{text}"
            ));
            continue;
        }
        let back = read(&target, backend);
        outcome
            .diffs
            .extend(compare_tables(&tables, &back, &inexpressible));
        if let Some(source) = save_of {
            let save = |ns: &NetNs, skip: &[Skipped]| {
                normalised_save(&ns.sh(save_binary(backend, family)).unwrap(), skip)
            };
            let (want, got) = (save(source, &skipped), save(&target, &[]));
            if want != got {
                let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
                let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
                let first = want
                    .iter()
                    .zip(&got)
                    .position(|(a, b)| a != b)
                    .unwrap_or(want.len().min(got.len()));
                outcome.diffs.push(format!(
                    "{label}: iptables-save differs\n  only in the fixture: {missing:#?}\n  only in the rendering: {extra:#?}\n  first difference at line {first}: {:?} vs {:?}",
                    want.get(first),
                    got.get(first)
                ));
            }
        }
        outcome.inexpressible.extend(inexpressible);
    }
    outcome
}

fn report(outcomes: &[(String, Outcome)]) {
    let mut failures = String::new();
    for (label, outcome) in outcomes {
        eprintln!(
            "{label}: {} rules rendered, {} not expressible",
            outcome.rules,
            outcome.inexpressible.len()
        );
        for line in &outcome.inexpressible {
            eprintln!("  not expressible: {line}");
        }
        for diff in &outcome.diffs {
            let _ = writeln!(failures, "{label}: {diff}");
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// The healthy-node corpus and the round-trip fixtures: every rules file (with its ipsets) through
/// both backends.
#[test]
fn corpus_rules_render_as_iptables_save_text_that_restores_to_the_same_rules() {
    for tool in [
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "iptables-nft-save",
        "iptables-legacy-save",
        "ipset",
    ] {
        require_tool(tool);
    }
    let mut files: Vec<PathBuf> = ["fixtures/healthy", "fixtures/roundtrip"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(manifest(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules" || e == "rules6"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "corpus files: {files:?}");
    let mut outcomes = Vec::new();
    for path in &files {
        let dir = path.parent().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let rules = std::fs::read_to_string(dir.join(file)).unwrap();
        let family = if file.ends_with(".rules6") {
            Family::Ip6
        } else {
            Family::Ip
        };
        let ipset_file = dir.join(file.replace(".rules", ".ipset"));
        let ipsets: Option<String> = std::fs::read_to_string(ipset_file).ok().map(|t| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect()
        });
        let prepare = |ns: &NetNs| {
            if let Some(sets) = &ipsets {
                let path = std::env::temp_dir().join(format!("netmend-ipset-{}", ns.name));
                std::fs::write(&path, sets).unwrap();
                ns.sh(&format!("ipset restore < {}", path.display()))
                    .unwrap();
                let _ = std::fs::remove_file(path);
            }
        };
        for backend in [Backend::Nft, Backend::Legacy] {
            let source = NetNs::new("ev-src");
            prepare(&source);
            source
                .restore(restore_binary(backend, family), &rules)
                .unwrap();
            let ruleset = read(&source, backend);
            let label = format!("{file} via {}", backend.as_str());
            let outcome = round_trip(&label, &ruleset, backend, &prepare, Some(&source));
            assert!(outcome.rules > 0, "{label}: no rule read");
            outcomes.push((label, outcome));
        }
    }
    report(&outcomes);
}

/// The captured tables of `agent/testdata/legacy` and `agent/testdata/nft/iptables_nft.bin`,
/// decoded by netmend's pure decoders.
#[test]
fn captured_tables_render_as_iptables_save_text_that_restores_to_the_same_rules() {
    for tool in ["iptables-nft-restore", "iptables-legacy-restore"] {
        require_tool(tool);
    }
    use netmend::observe::iptables_legacy::{decode_table, TableInfo};
    let mut outcomes = Vec::new();
    let mut legacy = Ruleset::default();
    for (family, name) in [
        (Family::Ip, "ipv4-filter"),
        (Family::Ip, "ipv4-nat"),
        (Family::Ip6, "ipv6-filter"),
        (Family::Ip6, "ipv6-nat"),
    ] {
        let bytes =
            std::fs::read(manifest(&format!("../agent/testdata/legacy/{name}.bin"))).unwrap();
        let info = TableInfo::parse(&bytes).expect("getinfo header");
        let header = bytes.len() - info.size as usize;
        legacy
            .tables
            .push(decode_table(family, &info, &bytes[header..]).expect("decode captured table"));
    }
    outcomes.push((
        "agent/testdata/legacy".to_string(),
        round_trip("legacy captures", &legacy, Backend::Legacy, &|_| {}, None),
    ));
    let bytes = std::fs::read(manifest("../agent/testdata/nft/iptables_nft.bin")).unwrap();
    let nft = netmend::observe::nftables::decode_messages(&bytes, 1).expect("decode capture");
    outcomes.push((
        "agent/testdata/nft/iptables_nft.bin".to_string(),
        round_trip("nft capture", &nft, Backend::Nft, &|_| {}, None),
    ));
    for (label, outcome) in &outcomes {
        assert!(outcome.rules > 0, "{label}: no rule decoded");
    }
    report(&outcomes);
}

/// Writes the xt blobs of the round-trip fixtures that `agent/testdata/xt/` does not have yet
/// (the first blob of each name and revision), as loaded by `iptables-legacy-restore` /
/// `ip6tables-legacy-restore`. Run by hand: `cargo test -p netmend-e2e --test evidence --
/// --ignored capture_xt_testdata`.
#[test]
#[ignore = "writes agent/testdata/xt; run by hand when the decoders learn new blobs"]
fn capture_xt_testdata() {
    use netmend::observe::iptables_legacy::{read_table_raw, table_names, xt_blobs};
    let out = manifest("../agent/testdata/xt");
    for (file, family, tag) in [
        (
            "fixtures/roundtrip/cni-plugins-and-proxies.rules",
            Family::Ip,
            "ipv4",
        ),
        ("fixtures/healthy/cilium-kpr.rules", Family::Ip, "ipv4"),
        (
            "fixtures/healthy/kube-proxy-iptables.rules",
            Family::Ip,
            "ipv4",
        ),
        ("fixtures/healthy/calico.rules", Family::Ip, "ipv4"),
        (
            "fixtures/roundtrip/dual-stack-ipv6.rules6",
            Family::Ip6,
            "ipv6",
        ),
    ] {
        let ns = NetNs::new("ev-capture");
        if file.contains("calico") {
            let sets: String = std::fs::read_to_string(manifest("fixtures/healthy/calico.ipset"))
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            let path = std::env::temp_dir().join(format!("netmend-ipset-{}", ns.name));
            std::fs::write(&path, sets).unwrap();
            ns.sh(&format!("ipset restore < {}", path.display()))
                .unwrap();
        }
        let rules = std::fs::read_to_string(manifest(file)).unwrap();
        ns.restore(restore_binary(Backend::Legacy, family), &rules)
            .unwrap();
        let blobs = ns.run(move || {
            let mut all = Vec::new();
            for name in table_names(family).unwrap() {
                let (_, blob) = read_table_raw(family, &name).unwrap();
                all.extend(xt_blobs(family, &blob));
            }
            all
        });
        for b in blobs {
            if b.name.is_empty() || b.name == "ERROR" {
                continue;
            }
            let kind = if b.is_target { "target" } else { "match" };
            let path = out.join(format!("{tag}-{kind}-{}-r{}.bin", b.name, b.revision));
            if !path.exists() {
                eprintln!("new blob {}", path.display());
                std::fs::write(path, &b.data).unwrap();
            }
        }
    }
}
