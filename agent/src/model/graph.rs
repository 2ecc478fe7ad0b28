//! The jump graph of one table: which rule continues into which chain (directly, or through the
//! verdicts of a verdict map), who references a chain, and which chains base-chain hooks reach.
//! Pure; built on demand from a [`Table`] (the referrers on the first question about them).

use crate::model::ruleset::{Action, BaseChain, Chain, HookPoint, Rule, SetElement, Table};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hasher for chain names (the multiply-rotate step of FxHash over 8-byte words): the
/// graph of a 30,000-chain table is rebuilt on every ruleset change, and SipHash was a fifth of
/// that in profiles. Not for untrusted keys that an attacker picks to collide: chain names come
/// from the node's own ruleset.
#[derive(Default)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by chain names, with [`NameHasher`].
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

/// A table's chain positions by name, owned: a caller that knows when it is still right (the
/// chains it names kept their places) keeps it from one pass to the next instead of hashing every
/// name again.
pub type ChainIndex = NameMap<String, usize>;

/// The positions of `table`'s chains by name.
pub fn chain_index_of(table: &Table) -> ChainIndex {
    table
        .chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect()
}

/// Where a graph looks chain names up.
#[derive(Debug)]
enum Names<'a> {
    Built(NameMap<&'a str, usize>),
    Kept(&'a ChainIndex),
}

/// A continuation of a rule into a chain.
#[derive(Debug, Clone, Copy)]
pub struct Edge<'a> {
    pub target: usize,
    /// The verdict-map element that selects this target, when the rule is a `vmap` lookup.
    pub element: Option<&'a SetElement>,
}

/// Index over one table's chains.
#[derive(Debug)]
pub struct TableGraph<'a> {
    pub table: &'a Table,
    index: Names<'a>,
    /// Who jumps or goes to each chain, built on the first question: most users only follow
    /// edges forward, and the graph of a 30,000-chain table is rebuilt on every ruleset change.
    referrers: OnceCell<Referrers>,
}

/// The (chain, rule) positions that continue into each chain, all chains' in one vector: chain
/// `i`'s are `positions[starts[i]..starts[i + 1]]` (one allocation instead of one per chain).
#[derive(Debug)]
struct Referrers {
    positions: Vec<(usize, usize)>,
    starts: Vec<usize>,
}

impl<'a> TableGraph<'a> {
    pub fn new(table: &'a Table) -> TableGraph<'a> {
        let index: NameMap<&str, usize> = table
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        TableGraph {
            table,
            index: Names::Built(index),
            referrers: OnceCell::new(),
        }
    }

    /// The graph of `table` with an index kept by the caller, which must be `table`'s
    /// ([`chain_index_of`] it, or kept right since).
    pub fn with_index(table: &'a Table, index: &'a ChainIndex) -> TableGraph<'a> {
        TableGraph {
            table,
            index: Names::Kept(index),
            referrers: OnceCell::new(),
        }
    }

    fn build_referrers(&self) -> Referrers {
        // Every (target, referrer) pair in rule order, then placed by a counting sort.
        let mut pairs: Vec<(usize, (usize, usize))> = Vec::new();
        for (ci, chain) in self.table.chains.iter().enumerate() {
            for (ri, rule) in chain.rules.iter().enumerate() {
                match &rule.action {
                    // The common case (a jump or goto) has one target: no list to build.
                    Action::Verdict { verdict } => {
                        if let Some(t) = verdict.target_chain().and_then(|c| self.chain_index(c)) {
                            pairs.push((t, (ci, ri)));
                        }
                    }
                    Action::VerdictMap { .. } => {
                        let mut targets: Vec<usize> = self.edges(rule).map(|e| e.target).collect();
                        targets.sort_unstable();
                        targets.dedup();
                        pairs.extend(targets.into_iter().map(|t| (t, (ci, ri))));
                    }
                    _ => {}
                }
            }
        }
        let mut starts = vec![0usize; self.table.chains.len() + 1];
        for (t, _) in &pairs {
            starts[t + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut positions = vec![(0, 0); pairs.len()];
        for (t, at) in pairs {
            positions[next[t]] = at;
            next[t] += 1;
        }
        Referrers { positions, starts }
    }

    pub fn chain_index(&self, name: &str) -> Option<usize> {
        match &self.index {
            Names::Built(index) => index.get(name).copied(),
            Names::Kept(index) => index.get(name).copied(),
        }
    }

    pub fn chain(&self, index: usize) -> &'a Chain {
        &self.table.chains[index]
    }

    /// Rules (as chain and rule positions) that continue into chain `index`.
    pub fn referrers(&self, index: usize) -> &[(usize, usize)] {
        let referrers = self.referrers.get_or_init(|| self.build_referrers());
        &referrers.positions[referrers.starts[index]..referrers.starts[index + 1]]
    }

    /// The chains a rule may continue into.
    pub fn edges(&self, rule: &'a Rule) -> impl Iterator<Item = Edge<'a>> + '_ {
        let direct = match &rule.action {
            Action::Verdict { verdict } => verdict
                .target_chain()
                .and_then(|c| self.chain_index(c))
                .map(|target| Edge {
                    target,
                    element: None,
                }),
            _ => None,
        };
        let mapped = match &rule.action {
            Action::VerdictMap { set, .. } => self.table.sets.get(set),
            _ => None,
        };
        let mapped_edges = mapped
            .into_iter()
            .flat_map(|set| set.elements.iter())
            .filter_map(move |element| {
                let target = element.verdict.as_ref()?.target_chain()?;
                Some(Edge {
                    target: self.chain_index(target)?,
                    element: Some(element),
                })
            });
        direct.into_iter().chain(mapped_edges)
    }

    /// Base chains attached to one of `hooks` whose type is `chain_type` (e.g. "nat").
    pub fn base_chains(
        &self,
        hooks: &[HookPoint],
        chain_type: &str,
    ) -> Vec<(usize, &'a BaseChain)> {
        self.table
            .chains
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.base.as_ref().map(|b| (i, b)))
            .filter(|(_, b)| hooks.contains(&b.hook) && b.chain_type == chain_type)
            .collect()
    }

    /// Whether chain `index` is reachable from any base chain.
    pub fn reachable_from_any_hook(&self) -> Vec<bool> {
        let mut seen = vec![false; self.table.chains.len()];
        let mut stack: Vec<usize> = self
            .table
            .chains
            .iter()
            .enumerate()
            .filter(|(_, c)| c.base.is_some())
            .map(|(i, _)| i)
            .collect();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            for rule in &self.table.chains[i].rules {
                stack.extend(self.edges(rule).map(|e| e.target));
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ruleset::{Backend, Family, KeyValue, Set, SetDataType, TableId, Verdict};
    use std::collections::BTreeMap;

    fn rule(action: Action) -> Rule {
        Rule {
            handle: 1,
            matches: vec![],
            action,
            comment: None,
            counters: None,
        }
    }

    fn chain(name: &str, rules: Vec<Rule>, base: Option<HookPoint>) -> Chain {
        Chain {
            name: name.into(),
            handle: 0,
            base: base.map(|hook| BaseChain {
                hook,
                priority: -100,
                chain_type: "nat".into(),
                policy: Verdict::Accept,
            }),
            rules,
        }
    }

    #[test]
    fn referrers_and_reachability_follow_jumps_and_verdict_maps() {
        let mut sets = BTreeMap::new();
        sets.insert(
            "svc".to_string(),
            Set {
                name: "svc".into(),
                anonymous: false,
                key_types: vec![SetDataType::InetProto, SetDataType::InetService],
                is_verdict_map: true,
                interval: false,
                elements: vec![SetElement {
                    key: vec![KeyValue::Proto(6), KeyValue::Port(6443)],
                    key_end: None,
                    verdict: Some(Verdict::Goto("ext".into())),
                }],
            },
        );
        let table = Table {
            id: TableId {
                backend: Backend::Nft,
                family: Family::Ip,
                name: "t".into(),
            },
            handle: 1,
            chains: vec![
                chain(
                    "pre",
                    vec![
                        rule(Action::Verdict {
                            verdict: Verdict::Jump("mid".into()),
                        }),
                        rule(Action::VerdictMap {
                            set: "svc".into(),
                            key: vec![],
                        }),
                    ],
                    Some(HookPoint::Prerouting),
                ),
                chain("mid", vec![], None),
                chain("ext", vec![], None),
                chain("orphan", vec![], None),
            ],
            sets,
        };
        let graph = TableGraph::new(&table);
        assert_eq!(graph.referrers(1), &[(0, 0)]);
        assert_eq!(graph.referrers(2), &[(0, 1)]);
        assert!(graph.referrers(3).is_empty());
        assert_eq!(
            graph.reachable_from_any_hook(),
            vec![true, true, true, false]
        );
        assert_eq!(graph.base_chains(&[HookPoint::Prerouting], "nat").len(), 1);
        assert!(graph.base_chains(&[HookPoint::Output], "nat").is_empty());
    }
}
