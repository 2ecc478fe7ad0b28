//! Test helpers for the checks: a small reader of iptables-save text into the model, so check
//! tests can state their rulesets the way the field reports print them. Test-only.

use crate::model::ruleset::{
    Action, Backend, BaseChain, Chain, Cidr, Direction, Family, HookPoint, Match, NatRange,
    PortRange, Rule, Ruleset, Table, TableId, Verdict,
};
use crate::model::snapshot::NodeSnapshot;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub fn snapshot_with(nft: Option<Vec<Table>>, legacy: Option<Vec<Table>>) -> NodeSnapshot {
    NodeSnapshot {
        nftables: nft.map(|tables| {
            std::sync::Arc::new(Ruleset {
                tables,
                generation: Some(1),
            })
        }),
        legacy: legacy.map(|tables| {
            std::sync::Arc::new(Ruleset {
                tables,
                generation: None,
            })
        }),
        listeners: Some(Vec::new()),
        addresses: Some(Vec::new()),
        ..NodeSnapshot::default()
    }
}

fn hook_of(name: &str) -> Option<HookPoint> {
    Some(match name {
        "PREROUTING" => HookPoint::Prerouting,
        "INPUT" => HookPoint::Input,
        "FORWARD" => HookPoint::Forward,
        "OUTPUT" => HookPoint::Output,
        "POSTROUTING" => HookPoint::Postrouting,
        _ => return None,
    })
}

fn cidr(text: &str) -> Cidr {
    match text.split_once('/') {
        Some((a, p)) => Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        },
        None => Cidr::host(text.parse().unwrap()),
    }
}

fn nat_range(text: &str) -> NatRange {
    let (addr, port) = match text.rsplit_once(':') {
        Some((a, p)) if !a.is_empty() => (Some(a), Some(p)),
        Some((_, p)) => (None, Some(p)),
        None => (Some(text), None),
    };
    let ports = port.map(|p| match p.split_once('-') {
        Some((a, b)) => PortRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        },
        None => PortRange::single(p.parse().unwrap()),
    });
    NatRange {
        addresses: addr.map(|a| {
            let ip: IpAddr = a.parse().unwrap();
            (ip, ip)
        }),
        ports,
    }
}

fn ports(text: &str) -> Vec<PortRange> {
    text.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => PortRange {
                first: a.parse().unwrap(),
                last: b.parse().unwrap(),
            },
            None => PortRange::single(p.parse().unwrap()),
        })
        .collect()
}

/// Splits a rule line into words, honouring double quotes with `\"` escapes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Builds a table from iptables-save lines (`:CHAIN POLICY`, `-A CHAIN ...`). Supports the options
/// the check tests use.
pub fn iptables_table(backend: Backend, name: &str, text: &str) -> Table {
    let mut chains: Vec<Chain> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let chain = parts.next().unwrap().to_string();
            let policy = parts.next().unwrap_or("-");
            let base = hook_of(&chain).map(|hook| BaseChain {
                hook,
                priority: 0,
                chain_type: if backend == Backend::Legacy {
                    name.to_string()
                } else if name == "nat" {
                    "nat".to_string()
                } else {
                    "filter".to_string()
                },
                policy: if policy == "DROP" {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                },
            });
            chains.push(Chain {
                name: chain,
                handle: chains.len() as u64 + 1,
                base,
                rules: Vec::new(),
            });
            continue;
        }
        let w = words(line);
        assert_eq!(w[0], "-A", "only -A lines: {line}");
        let chain_name = w[1].clone();
        let mut rule = Rule {
            handle: 0,
            matches: Vec::new(),
            action: Action::None,
            comment: None,
            counters: None,
        };
        let mut i = 2;
        let mut negated = false;
        while i < w.len() {
            let word = w[i].as_str();
            let next = w.get(i + 1).cloned().unwrap_or_default();
            match word {
                "!" => {
                    negated = true;
                    i += 1;
                    continue;
                }
                "-s" | "-d" => rule.matches.push(Match::Address {
                    direction: if word == "-s" {
                        Direction::Source
                    } else {
                        Direction::Destination
                    },
                    cidr: cidr(&next),
                    negated,
                }),
                "-i" | "-o" => rule.matches.push(Match::Interface {
                    direction: if word == "-i" {
                        Direction::Source
                    } else {
                        Direction::Destination
                    },
                    name: next.clone(),
                    negated,
                }),
                "-p" => rule.matches.push(Match::L4Proto {
                    proto: match next.to_lowercase().as_str() {
                        "tcp" => 6,
                        "udp" => 17,
                        other => other.parse().unwrap(),
                    },
                    negated,
                }),
                "--dport" | "--dports" | "--sport" | "--sports" => {
                    rule.matches.push(Match::Ports {
                        direction: if word.starts_with("--d") {
                            Direction::Destination
                        } else {
                            Direction::Source
                        },
                        ranges: ports(&next),
                        negated,
                    })
                }
                "--dst-type" | "--src-type" => rule.matches.push(Match::AddrType {
                    direction: if word == "--dst-type" {
                        Direction::Destination
                    } else {
                        Direction::Source
                    },
                    types: if next == "LOCAL" { 1 << 2 } else { 1 << 1 },
                    negated,
                }),
                "--comment" => rule.comment = Some(next.clone()),
                "-m" => {
                    if !["tcp", "udp", "multiport", "addrtype", "comment"].contains(&next.as_str())
                    {
                        rule.matches.push(Match::Opaque {
                            description: format!("-m {next}"),
                        });
                    }
                }
                "-j" | "-g" => {
                    rule.action = match next.as_str() {
                        "ACCEPT" => Action::Verdict {
                            verdict: Verdict::Accept,
                        },
                        "DROP" => Action::Verdict {
                            verdict: Verdict::Drop,
                        },
                        "RETURN" => Action::Verdict {
                            verdict: Verdict::Return,
                        },
                        "MASQUERADE" => Action::Masquerade { ports: None },
                        "REDIRECT" => Action::Redirect { ports: None },
                        "DNAT" | "SNAT" => Action::None,
                        "MARK" => Action::Opaque {
                            description: "-j MARK".into(),
                        },
                        "REJECT" => Action::Opaque {
                            description: "-j REJECT".into(),
                        },
                        chain if word == "-j" => Action::Verdict {
                            verdict: Verdict::Jump(chain.to_string()),
                        },
                        chain => Action::Verdict {
                            verdict: Verdict::Goto(chain.to_string()),
                        },
                    }
                }
                "--to-destination" => {
                    rule.action = Action::Dnat {
                        range: nat_range(&next),
                    }
                }
                "--to-source" => {
                    rule.action = Action::Snat {
                        range: nat_range(&next),
                    }
                }
                "--to-ports" => {
                    let p = ports(&next)[0];
                    rule.action = match rule.action {
                        Action::Masquerade { .. } => Action::Masquerade { ports: Some(p) },
                        _ => Action::Redirect { ports: Some(p) },
                    };
                }
                "--mark" | "--set-xmark" | "--mode" | "--probability" | "--reject-with"
                | "--random-fully" => {
                    if word == "--random-fully" {
                        i += 1;
                        continue;
                    }
                }
                other => panic!("test_support: unsupported option {other} in {line}"),
            }
            negated = false;
            i += 2;
        }
        let chain = chains
            .iter_mut()
            .find(|c| c.name == chain_name)
            .unwrap_or_else(|| panic!("chain {chain_name} not declared"));
        rule.handle = chain.rules.len() as u64 + 1;
        chain.rules.push(rule);
    }
    Table {
        id: TableId {
            backend,
            family: Family::Ip,
            name: name.to_string(),
        },
        handle: 1,
        chains,
        sets: BTreeMap::new(),
    }
}
