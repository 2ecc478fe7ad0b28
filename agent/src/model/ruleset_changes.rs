//! What changed in an nftables ruleset between two of its generations, chain by chain and set by
//! set, as the incremental reader saw it in the notifications. Checks that keep results between
//! passes read it to re-evaluate only what a change can affect. Pure data: no I/O.

use crate::model::ruleset::TableId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What one committed transaction wrote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    /// The table itself was added, deleted or re-created: anything in it may differ.
    Table(TableId),
    /// A chain was added, deleted, or had its rules or hook changed.
    Chain(TableId, String),
    /// A set or map was added, deleted, or had its elements changed.
    Set(TableId, String),
}

/// The chains and sets that changed in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// The table itself was added, deleted or re-created: treat every chain and set as changed.
    pub whole: bool,
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// What changed between two generations, per table; a table absent from `tables` is unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedSince {
    pub tables: BTreeMap<TableId, TableChanges>,
}

impl ChangedSince {
    /// The changes of one table (`None`: the table did not change).
    pub fn table(&self, id: &TableId) -> Option<&TableChanges> {
        self.tables.get(id)
    }
}

/// The log of what each transaction since a full read touched, bounded: once it holds
/// [`RulesetChanges::CAPACITY`] transactions the oldest are dropped, and questions about
/// generations before the oldest kept one have no answer (read everything again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetChanges {
    /// Which full read the log starts from: every full read starts a new log with a new origin.
    pub origin: u64,
    /// The oldest generation the log can answer from.
    oldest: u32,
    /// (generation after the transaction, what it touched), oldest first.
    entries: VecDeque<(u32, Vec<Touched>)>,
}

impl RulesetChanges {
    /// How many transactions the log keeps.
    pub const CAPACITY: usize = 256;
    /// How many chains and sets one transaction may name before it is kept as whole tables.
    pub const MAX_ITEMS: usize = 512;

    /// An empty log for the full read `origin` made at `generation`.
    pub fn new(origin: u64, generation: u32) -> RulesetChanges {
        RulesetChanges {
            origin,
            oldest: generation,
            entries: VecDeque::new(),
        }
    }

    /// Records the transaction that led to `generation`. One that touched more than
    /// [`RulesetChanges::MAX_ITEMS`] chains and sets (a whole table restored) is kept as the
    /// tables it touched, so that the log stays small under churn.
    pub fn record(&mut self, generation: u32, mut touched: Vec<Touched>) {
        touched.sort_unstable();
        touched.dedup();
        if touched.len() > Self::MAX_ITEMS {
            let mut tables: Vec<Touched> = touched
                .into_iter()
                .map(|item| match item {
                    Touched::Table(id) | Touched::Chain(id, _) | Touched::Set(id, _) => {
                        Touched::Table(id)
                    }
                })
                .collect();
            tables.dedup();
            touched = tables;
        }
        if self.entries.len() == Self::CAPACITY {
            if let Some((dropped, _)) = self.entries.pop_front() {
                self.oldest = dropped;
            }
        }
        self.entries.push_back((generation, touched));
    }

    /// What changed after generation `from` of the full read `origin`, up to the newest recorded
    /// transaction; `None` when the log cannot say (another full read, or `from` is older than
    /// what the log keeps).
    pub fn since(&self, origin: u64, from: u32) -> Option<ChangedSince> {
        if origin != self.origin || newer(self.oldest, from) {
            return None;
        }
        let mut changed = ChangedSince::default();
        for (generation, touched) in &self.entries {
            if !newer(*generation, from) {
                continue;
            }
            for item in touched {
                match item {
                    Touched::Table(id) => {
                        changed.tables.entry(id.clone()).or_default().whole = true;
                    }
                    Touched::Chain(id, chain) => {
                        let table = changed.tables.entry(id.clone()).or_default();
                        if !table.chains.contains(chain) {
                            table.chains.insert(chain.clone());
                        }
                    }
                    Touched::Set(id, set) => {
                        let table = changed.tables.entry(id.clone()).or_default();
                        if !table.sets.contains(set) {
                            table.sets.insert(set.clone());
                        }
                    }
                }
            }
        }
        Some(changed)
    }
}

/// Whether generation `a` comes after `b` (generation ids wrap around).
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ruleset::{Backend, Family};

    fn nat() -> TableId {
        TableId {
            backend: Backend::Nft,
            family: Family::Ip,
            name: "nat".into(),
        }
    }

    #[test]
    fn changes_since_a_generation_are_the_union_of_later_transactions() {
        let mut log = RulesetChanges::new(7, 10);
        log.record(11, vec![Touched::Chain(nat(), "A".into())]);
        log.record(12, vec![Touched::Chain(nat(), "B".into())]);
        log.record(13, vec![Touched::Set(nat(), "s".into())]);
        let since_11 = log.since(7, 11).unwrap();
        let table = since_11.table(&nat()).unwrap();
        assert_eq!(table.chains, BTreeSet::from(["B".to_string()]));
        assert_eq!(table.sets, BTreeSet::from(["s".to_string()]));
        assert!(!table.whole);
        let since_10 = log.since(7, 10).unwrap();
        assert_eq!(since_10.table(&nat()).unwrap().chains.len(), 2);
        assert!(log.since(7, 13).unwrap().tables.is_empty());
        // another full read, or a generation before the log: no answer
        assert!(log.since(8, 11).is_none());
        assert!(log.since(7, 9).is_none());
    }

    #[test]
    fn a_full_log_forgets_the_oldest_transactions() {
        let mut log = RulesetChanges::new(1, 0);
        for generation in 1..=(RulesetChanges::CAPACITY as u32 + 2) {
            log.record(generation, vec![Touched::Table(nat())]);
        }
        assert!(log.since(1, 0).is_none());
        assert!(log.since(1, 1).is_none());
        assert!(log.since(1, 2).unwrap().table(&nat()).unwrap().whole);
    }

    #[test]
    fn a_transaction_touching_many_chains_is_kept_as_its_tables() {
        let mut log = RulesetChanges::new(1, 0);
        let many = (0..=RulesetChanges::MAX_ITEMS)
            .map(|i| Touched::Chain(nat(), format!("KUBE-SVC-{i}")))
            .collect();
        log.record(1, many);
        let changed = log.since(1, 0).unwrap();
        let table = changed.table(&nat()).unwrap();
        assert!(table.whole && table.chains.is_empty(), "{table:?}");
    }

    #[test]
    fn generations_wrap_around() {
        let mut log = RulesetChanges::new(1, u32::MAX);
        log.record(0, vec![Touched::Chain(nat(), "A".into())]);
        assert!(log.since(1, u32::MAX).unwrap().table(&nat()).is_some());
        assert!(log.since(1, 0).unwrap().tables.is_empty());
    }
}
