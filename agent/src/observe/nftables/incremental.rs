//! The incremental nftables view: [`NftCache`] keeps a [`Ruleset`] up to date from change
//! notifications (NFNLGRP_NFTABLES) at a cost proportional to what changed, and [`NftTracker`]
//! pairs it with its own event subscription and decides when only a full dump will do (at start,
//! on an event overflow, on a message it cannot apply, on a generation mismatch, on request).
//!
//! What the kernel sends (6.18; captured in `agent/testdata/nft/events/`, see its README):
//! - Each transaction is its object messages in commit order, then one NEWGEN with the new
//!   generation id. The cache buffers a transaction and applies it at its NEWGEN: a NEWGEN id not
//!   above the cache's generation is an old transaction (already in the dump) and is skipped; an id
//!   other than generation + 1 is a gap and needs a dump.
//! - NEWRULE carries `NFTA_RULE_POSITION` (the handle of the previous rule) only when the rule is
//!   neither first nor last of its chain. `NLM_F_APPEND` is set for `-A` / `add rule` (also with
//!   `add rule ... position`), not for `-I` / `insert rule`. Without a position: appended -> last,
//!   otherwise -> first.
//! - A replace (`iptables -R`) is a DELRULE and a NEWRULE with the same handle (the kernel keeps
//!   the old rule's handle; no NLM_F_REPLACE in the notification): the new rule takes the old
//!   one's place. New objects otherwise always get a handle above every existing one.
//! - A chain flush (`-F`, `flush chain`) arrives as one DELRULE per rule; a DELRULE without handle
//!   is handled too (clears the chain).
//! - Anonymous sets come as NEWSET + NEWSETELEM before the NEWRULE using them, and leave with a
//!   DELSET in the transaction deleting the rule. Interval sets send each range as a start and an
//!   end element; they are paired once the transaction is complete.
//! - Not notified at all: counters, and elements the packet path adds or times out (`update @set`,
//!   timeouts). Those drift until the next periodic resync.
//!
//! Costs: chains are found through a per-table name index; deleted rules and chains are only
//! marked and compacted once per affected chain/table when a snapshot is taken, so flushing a
//! 10,000-rule chain is linear, not quadratic. The ruleset lives behind an [`Arc`]; changes go
//! through [`Arc::make_mut`], so a pass without change clones nothing.
//!
//! One file on purpose: applying each kind of notification (tables, chains, rules, sets, elements)
//! to the cached ruleset and deciding when only a full dump is safe.

use super::{
    decode_chain, decode_rule, decode_set, decode_set_elements, decode_table, finish_elements,
    read_ruleset_with_sets, NftDumpStats, NftablesError, RuleContext, SetHeader, SetHeaders,
    NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN, NFT_MSG_NEWGEN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE,
};
use crate::model::ruleset::{Backend, Family, Rule, Ruleset, SetElement, Table, TableId};
use crate::model::ruleset_changes::{RulesetChanges, Touched};
use crate::observe::netlink::{split_messages, Attrs};
use crate::observe::nft_events::{decode_newgen, NftEventSocket};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_POSITION: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NLM_F_APPEND: u16 = 0x800;

/// The cache cannot follow the notifications any more: a full dump is needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::model::render::printable(.0))]
pub struct NeedResync(pub String);

/// What one [`NftCache::apply_messages`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Object messages applied (in committed transactions).
    pub applied: usize,
    /// Transactions committed into the cache.
    pub commits: usize,
    /// Transactions skipped because the dump already held them.
    pub skipped: usize,
}

/// Side indexes of one table (parallel to [`Ruleset::tables`]).
#[derive(Debug, Default)]
struct TableState {
    chain_index: HashMap<String, usize>,
    chain_handles: HashSet<u64>,
    /// Chains deleted but not yet removed from the model.
    dead_chains: HashSet<usize>,
    /// Per chain index: handles of rules deleted but not yet removed from the model.
    dead_rules: HashMap<usize, HashSet<u64>>,
    /// Highest handle seen in the table: the kernel numbers new objects upwards, so a NEWRULE
    /// at or below it replaces an existing rule (`iptables -R`, NLM_F_REPLACE keeps the handle).
    max_handle: u64,
    /// Set name -> decoded header (element decoding needs it).
    set_headers: HashMap<String, SetHeader>,
    /// Per set: element identity -> position in the set's element list.
    elements: HashMap<String, HashMap<String, usize>>,
}

/// A message of the open transaction: (message kind, netlink flags, payload).
type Pending = (u16, u16, Vec<u8>);

/// Interval-set element changes of one transaction, paired when it commits: (table, set) ->
/// (deleted, added) raw elements.
type IntervalChanges =
    BTreeMap<(usize, String), (Vec<super::set::RawElement>, Vec<super::set::RawElement>)>;

/// A ruleset kept current from notifications.
#[derive(Debug)]
pub struct NftCache {
    ruleset: Arc<Ruleset>,
    generation: u32,
    tables: Vec<TableState>,
    pending: Vec<Pending>,
    /// Deletions are marked, not yet compacted.
    dirty: bool,
    /// Rules replaced in place in the open commit: (table, handle). The kernel follows the new
    /// rule with a DELRULE of the old one, which carries the same handle.
    replaced: HashSet<(usize, u64)>,
    /// What each committed transaction since the dump touched.
    changes: Arc<RulesetChanges>,
    /// What the transaction being committed touched so far.
    touched: Vec<Touched>,
}

/// Numbers the dumps a cache starts from, so that a change log never answers for another dump.
static DUMP_ORIGIN: AtomicU64 = AtomicU64::new(1);

fn element_identity(element: &SetElement) -> String {
    format!("{:?}|{:?}", element.key, element.key_end)
}

fn index_elements(elements: &[SetElement]) -> HashMap<String, usize> {
    elements
        .iter()
        .enumerate()
        .map(|(i, e)| (element_identity(e), i))
        .collect()
}

fn family_of(payload: &[u8]) -> Result<Family, NeedResync> {
    payload
        .first()
        .and_then(|f| Family::from_nfproto(*f))
        .ok_or_else(|| NeedResync("message of unknown family".into()))
}

impl NftCache {
    /// A cache starting from a full dump (`headers` as returned with it, one map per table).
    pub(crate) fn from_dump(ruleset: Ruleset, headers: SetHeaders) -> NftCache {
        let generation = ruleset.generation.unwrap_or(0);
        let mut headers = headers;
        headers.resize_with(ruleset.tables.len(), HashMap::new);
        let tables = ruleset
            .tables
            .iter()
            .zip(headers)
            .map(|(table, set_headers)| TableState {
                chain_index: table
                    .chains
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), i))
                    .collect(),
                chain_handles: table.chains.iter().map(|c| c.handle).collect(),
                max_handle: table
                    .chains
                    .iter()
                    .flat_map(|c| std::iter::once(c.handle).chain(c.rules.iter().map(|r| r.handle)))
                    .max()
                    .unwrap_or(0),
                elements: table
                    .sets
                    .iter()
                    .map(|(name, set)| (name.clone(), index_elements(&set.elements)))
                    .collect(),
                set_headers,
                ..TableState::default()
            })
            .collect();
        NftCache {
            ruleset: Arc::new(ruleset),
            generation,
            tables,
            pending: Vec::new(),
            dirty: false,
            replaced: HashSet::new(),
            changes: Arc::new(RulesetChanges::new(
                DUMP_ORIGIN.fetch_add(1, Ordering::Relaxed),
                generation,
            )),
            touched: Vec::new(),
        }
    }

    /// What each transaction applied since the dump touched (chains, sets, tables).
    pub fn changes(&self) -> Arc<RulesetChanges> {
        self.changes.clone()
    }

    /// Notes that the open transaction touched `item` (the log sorts out repeats).
    fn touch(&mut self, item: Touched) {
        if self.touched.last() != Some(&item) {
            self.touched.push(item);
        }
    }

    fn table_id(&self, t: usize) -> TableId {
        self.ruleset.tables[t].id.clone()
    }

    /// The generation id the cache is consistent with.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether a transaction's messages arrived without their NEWGEN yet.
    pub fn in_transaction(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The current ruleset (cheap: an `Arc` clone once pending deletions are compacted).
    pub fn snapshot(&mut self) -> Result<Arc<Ruleset>, NeedResync> {
        if self.dirty {
            self.compact()?;
        }
        Ok(self.ruleset.clone())
    }

    /// Applies one datagram of notification messages. Object messages are held until their
    /// transaction's NEWGEN, then applied in order. After an `Err` the cache may hold part of a
    /// transaction: rebuild it from a dump (as [`NftTracker`] does).
    pub fn apply_messages(&mut self, datagram: &[u8]) -> Result<ApplySummary, NeedResync> {
        let mut summary = ApplySummary::default();
        for msg in split_messages(datagram) {
            let msg = msg.map_err(|e| NeedResync(format!("torn notification: {e}")))?;
            if msg.msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let kind = msg.msg_type & 0xff;
            if kind != NFT_MSG_NEWGEN {
                self.pending.push((kind, msg.flags, msg.payload.to_vec()));
                continue;
            }
            let id = decode_newgen(msg.payload)
                .ok_or_else(|| NeedResync("NEWGEN without a generation id".into()))?
                .id;
            let pending = std::mem::take(&mut self.pending);
            if (id.wrapping_sub(self.generation) as i32) <= 0 {
                summary.skipped += 1;
                continue;
            }
            if id != self.generation.wrapping_add(1) {
                return Err(NeedResync(format!(
                    "generation gap: cache at {}, notification for {id}",
                    self.generation
                )));
            }
            summary.applied += self.commit(&pending)?;
            let touched = std::mem::take(&mut self.touched);
            Arc::make_mut(&mut self.changes).record(id, touched);
            self.generation = id;
            Arc::make_mut(&mut self.ruleset).generation = Some(id);
            summary.commits += 1;
        }
        Ok(summary)
    }

    fn commit(&mut self, messages: &[Pending]) -> Result<usize, NeedResync> {
        let mut intervals = IntervalChanges::new();
        self.replaced.clear();
        for (kind, flags, payload) in messages {
            self.apply_one(*kind, *flags, payload, &mut intervals)?;
        }
        for ((t, set), (deleted, added)) in intervals {
            let Some(header) = self.tables[t].set_headers.get(&set) else {
                return Err(NeedResync(format!("elements of unknown set {set}")));
            };
            let deleted = finish_elements(header, deleted);
            let added = finish_elements(header, added);
            for element in deleted {
                self.remove_element(t, &set, &element)?;
            }
            for element in added {
                self.add_element(t, &set, element)?;
            }
        }
        Ok(messages.len())
    }

    fn table_slot(&self, family: Family, name: &str) -> Option<usize> {
        self.ruleset
            .tables
            .iter()
            .position(|t| t.id.family == family && t.id.name == name)
    }

    fn table_for(&self, family: Family, name: &str) -> Result<usize, NeedResync> {
        self.table_slot(family, name)
            .ok_or_else(|| NeedResync(format!("notification for unknown table {family} {name}")))
    }

    fn chain_for(&self, t: usize, chain: &str) -> Result<usize, NeedResync> {
        self.tables[t]
            .chain_index
            .get(chain)
            .copied()
            .ok_or_else(|| {
                NeedResync(format!(
                    "notification for unknown chain {}/{chain}",
                    self.ruleset.tables[t].id
                ))
            })
    }

    fn apply_one(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        intervals: &mut IntervalChanges,
    ) -> Result<(), NeedResync> {
        let attrs = payload.get(4..).unwrap_or(&[]);
        match kind {
            NFT_MSG_NEWTABLE => {
                let (family, name, handle) = decode_table(payload)
                    .ok_or_else(|| NeedResync("undecodable NEWTABLE".into()))?;
                self.touch(Touched::Table(TableId {
                    backend: Backend::Nft,
                    family,
                    name: name.clone(),
                }));
                if self.table_slot(family, &name).is_none() {
                    Arc::make_mut(&mut self.ruleset).tables.push(Table {
                        id: TableId {
                            backend: Backend::Nft,
                            family,
                            name,
                        },
                        handle,
                        chains: Vec::new(),
                        sets: BTreeMap::new(),
                    });
                    self.tables.push(TableState::default());
                }
            }
            NFT_MSG_DELTABLE => {
                let family = family_of(payload)?;
                let name = Attrs::new(attrs)
                    .find(|a| a.kind == NFTA_TABLE_NAME)
                    .map(|a| a.string())
                    .ok_or_else(|| NeedResync("DELTABLE without a name".into()))?;
                let t = self.table_for(family, &name)?;
                self.touch(Touched::Table(self.table_id(t)));
                if !intervals.is_empty() {
                    return Err(NeedResync("table deleted amid interval changes".into()));
                }
                Arc::make_mut(&mut self.ruleset).tables.remove(t);
                self.tables.remove(t);
            }
            NFT_MSG_NEWCHAIN => {
                let (family, table, chain) = decode_chain(payload)
                    .ok_or_else(|| NeedResync("undecodable NEWCHAIN".into()))?;
                let t = self.table_for(family, &table)?;
                self.touch(Touched::Chain(self.table_id(t), chain.name.clone()));
                if let Some(&c) = self.tables[t].chain_index.get(&chain.name) {
                    // An update (policy, hook priority): keep the rules.
                    let model = &mut Arc::make_mut(&mut self.ruleset).tables[t].chains[c];
                    model.base = chain.base;
                } else if self.tables[t].chain_handles.contains(&chain.handle) {
                    return Err(NeedResync(format!(
                        "chain renamed to {}: jump targets changed",
                        chain.name
                    )));
                } else {
                    let state = &mut self.tables[t];
                    let model = &mut Arc::make_mut(&mut self.ruleset).tables[t].chains;
                    state.chain_index.insert(chain.name.clone(), model.len());
                    state.chain_handles.insert(chain.handle);
                    state.max_handle = state.max_handle.max(chain.handle);
                    model.push(chain);
                }
            }
            NFT_MSG_DELCHAIN => {
                let (family, table, chain) = decode_chain(payload)
                    .ok_or_else(|| NeedResync("undecodable DELCHAIN".into()))?;
                let t = self.table_for(family, &table)?;
                self.touch(Touched::Chain(self.table_id(t), chain.name.clone()));
                let c = self.chain_for(t, &chain.name)?;
                let state = &mut self.tables[t];
                state.chain_index.remove(&chain.name);
                let handle = self.ruleset.tables[t].chains[c].handle;
                state.chain_handles.remove(&handle);
                state.dead_chains.insert(c);
                self.dirty = true;
            }
            NFT_MSG_NEWRULE => self.new_rule(flags, payload)?,
            NFT_MSG_DELRULE => {
                let family = family_of(payload)?;
                let (mut table, mut chain, mut handle) = (None, None, None);
                for attr in Attrs::new(attrs) {
                    match attr.kind {
                        NFTA_RULE_TABLE => table = Some(attr.str()),
                        NFTA_RULE_CHAIN => chain = Some(attr.str()),
                        NFTA_RULE_HANDLE => handle = attr.u64_be(),
                        _ => {}
                    }
                }
                let (Some(table), Some(chain)) = (table, chain) else {
                    return Err(NeedResync("DELRULE without table or chain".into()));
                };
                let t = self.table_for(family, table)?;
                let c = self.chain_for(t, chain)?;
                self.touch(Touched::Chain(self.table_id(t), chain.to_string()));
                match handle {
                    Some(handle) if self.replaced.remove(&(t, handle)) => {}
                    Some(handle) => {
                        self.tables[t]
                            .dead_rules
                            .entry(c)
                            .or_default()
                            .insert(handle);
                        self.dirty = true;
                    }
                    None => {
                        Arc::make_mut(&mut self.ruleset).tables[t].chains[c]
                            .rules
                            .clear();
                        self.tables[t].dead_rules.remove(&c);
                    }
                }
            }
            NFT_MSG_NEWSET => {
                let family = family_of(payload)?;
                let header =
                    decode_set(attrs).ok_or_else(|| NeedResync("undecodable NEWSET".into()))?;
                let t = self.table_for(family, &header.table)?;
                self.touch(Touched::Set(self.table_id(t), header.set.name.clone()));
                let name = header.set.name.clone();
                let sets = &mut Arc::make_mut(&mut self.ruleset).tables[t].sets;
                match sets.get_mut(&name) {
                    Some(existing) => {
                        let elements = std::mem::take(&mut existing.elements);
                        *existing = header.set.clone();
                        existing.elements = elements;
                    }
                    None => {
                        sets.insert(name.clone(), header.set.clone());
                        self.tables[t].elements.insert(name.clone(), HashMap::new());
                    }
                }
                self.tables[t].set_headers.insert(name, header);
            }
            NFT_MSG_DELSET => {
                let family = family_of(payload)?;
                let header =
                    decode_set(attrs).ok_or_else(|| NeedResync("undecodable DELSET".into()))?;
                let t = self.table_for(family, &header.table)?;
                self.touch(Touched::Set(self.table_id(t), header.set.name.clone()));
                let name = &header.set.name;
                if Arc::make_mut(&mut self.ruleset).tables[t]
                    .sets
                    .remove(name)
                    .is_none()
                {
                    return Err(NeedResync(format!("DELSET of unknown set {name}")));
                }
                self.tables[t].set_headers.remove(name);
                self.tables[t].elements.remove(name);
                intervals.retain(|(ti, s), _| !(*ti == t && s == name));
            }
            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => {
                let family = family_of(payload)?;
                let (table, set, raw) = decode_set_elements(attrs)
                    .ok_or_else(|| NeedResync("undecodable set element message".into()))?;
                let t = self.table_for(family, table)?;
                self.touch(Touched::Set(self.table_id(t), set.to_string()));
                let header = self.tables[t]
                    .set_headers
                    .get(set)
                    .ok_or_else(|| NeedResync(format!("elements of unknown set {table}/{set}")))?;
                let deleting = kind == NFT_MSG_DELSETELEM;
                let set = set.to_string();
                if header.set.interval && raw.iter().all(|e| e.key_end.is_none()) {
                    // Interval starts and ends pair up once the whole transaction is in.
                    let entry = intervals.entry((t, set)).or_default();
                    if deleting {
                        entry.0.extend(raw);
                    } else {
                        entry.1.extend(raw);
                    }
                    return Ok(());
                }
                let elements = finish_elements(header, raw);
                for element in elements {
                    if deleting {
                        self.remove_element(t, &set, &element)?;
                    } else {
                        self.add_element(t, &set, element)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn new_rule(&mut self, flags: u16, payload: &[u8]) -> Result<(), NeedResync> {
        let family = family_of(payload)?;
        let attrs = payload.get(4..).unwrap_or(&[]);
        let mut position = None;
        let mut names = (None, None);
        for attr in Attrs::new(attrs) {
            match attr.kind {
                NFTA_RULE_TABLE => names.0 = Some(attr.str()),
                NFTA_RULE_CHAIN => names.1 = Some(attr.str()),
                NFTA_RULE_POSITION => position = attr.u64_be(),
                _ => {}
            }
        }
        let (Some(table), Some(chain)) = names else {
            return Err(NeedResync("NEWRULE without table or chain".into()));
        };
        let t = self.table_for(family, table)?;
        let c = self.chain_for(t, chain)?;
        self.touch(Touched::Chain(self.table_id(t), chain.to_string()));
        let mut rule: Rule = {
            let ctx = RuleContext {
                family,
                sets: &self.ruleset.tables[t].sets,
            };
            decode_rule(attrs, &ctx)
                .ok_or_else(|| NeedResync("NEWRULE without handle".into()))?
                .rule
        };
        crate::observe::ipset::resolve_with(
            &mut std::iter::once(&mut rule),
            &mut crate::observe::ipset::set_name,
        );
        let handle = rule.handle;
        let state = &mut self.tables[t];
        let replacing = handle <= state.max_handle;
        state.max_handle = state.max_handle.max(handle);
        let rules = &mut Arc::make_mut(&mut self.ruleset).tables[t].chains[c].rules;
        if replacing {
            let at = rules
                .iter()
                .position(|r| r.handle == handle)
                .ok_or_else(|| {
                    NeedResync(format!(
                        "rule handle {handle} in {table}/{chain} is neither new nor known"
                    ))
                })?;
            rules[at] = rule;
            // The kernel sends the old rule's DELRULE before (seen on 6.18) or after the NEWRULE.
            let deleted_first = state
                .dead_rules
                .get_mut(&c)
                .is_some_and(|dead| dead.remove(&handle));
            if !deleted_first {
                self.replaced.insert((t, handle));
            }
            return Ok(());
        }
        match position {
            Some(previous) => {
                let at = rules
                    .iter()
                    .rposition(|r| r.handle == previous)
                    .ok_or_else(|| {
                        NeedResync(format!(
                            "rule placed after unknown rule handle {previous} in {table}/{chain}"
                        ))
                    })?;
                rules.insert(at + 1, rule);
            }
            None if flags & NLM_F_APPEND != 0 => rules.push(rule),
            None => rules.insert(0, rule),
        }
        Ok(())
    }

    fn add_element(&mut self, t: usize, set: &str, element: SetElement) -> Result<(), NeedResync> {
        let identity = element_identity(&element);
        let index = self.tables[t].elements.entry(set.to_string()).or_default();
        let model = Arc::make_mut(&mut self.ruleset).tables[t]
            .sets
            .get_mut(set)
            .ok_or_else(|| NeedResync(format!("elements of unknown set {set}")))?;
        match index.get(&identity) {
            Some(&i) if i < model.elements.len() => model.elements[i] = element,
            _ => {
                index.insert(identity, model.elements.len());
                model.elements.push(element);
            }
        }
        Ok(())
    }

    fn remove_element(
        &mut self,
        t: usize,
        set: &str,
        element: &SetElement,
    ) -> Result<(), NeedResync> {
        let identity = element_identity(element);
        let index = self.tables[t].elements.entry(set.to_string()).or_default();
        let model = Arc::make_mut(&mut self.ruleset).tables[t]
            .sets
            .get_mut(set)
            .ok_or_else(|| NeedResync(format!("elements of unknown set {set}")))?;
        let i = index
            .remove(&identity)
            .filter(|&i| i < model.elements.len())
            .ok_or_else(|| NeedResync(format!("deleted element not in set {set}")))?;
        model.elements.swap_remove(i);
        if let Some(moved) = model.elements.get(i) {
            index.insert(element_identity(moved), i);
        }
        Ok(())
    }

    /// Removes the rules and chains marked deleted (one pass per affected chain and table).
    fn compact(&mut self) -> Result<(), NeedResync> {
        let ruleset = Arc::make_mut(&mut self.ruleset);
        for (t, state) in self.tables.iter_mut().enumerate() {
            let table = &mut ruleset.tables[t];
            for (c, dead) in state.dead_rules.drain() {
                if state.dead_chains.contains(&c) {
                    continue;
                }
                let rules = &mut table.chains[c].rules;
                let before = rules.len();
                rules.retain(|r| !dead.contains(&r.handle));
                let removed = before - rules.len();
                if removed != dead.len() {
                    return Err(NeedResync(format!(
                        "{} rule(s) of {}/{} deleted, {removed} found in the cache",
                        dead.len(),
                        table.id,
                        table.chains[c].name
                    )));
                }
            }
            if state.dead_chains.is_empty() {
                continue;
            }
            let mut i = 0usize;
            table.chains.retain(|_| {
                let keep = !state.dead_chains.contains(&i);
                i += 1;
                keep
            });
            state.dead_chains.clear();
            state.chain_index = table
                .chains
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
        }
        self.dirty = false;
        Ok(())
    }
}

/// Counters of an [`NftTracker`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Full dumps made (the first one included).
    pub dumps: u64,
    /// Notification messages applied to the cache.
    pub events_applied: u64,
    /// Why the last full dump after the first one happened.
    pub last_resync: Option<String>,
    /// The last full dump.
    pub last_dump: NftDumpStats,
}

/// An event subscription plus the cache it feeds: the incremental nftables reader.
pub struct NftTracker {
    socket: Option<NftEventSocket>,
    /// Asks the kernel's generation id, on a socket of its own kept open.
    generation: super::GenerationQuery,
    buffer: i32,
    cache: Option<NftCache>,
    force: Option<String>,
    pub stats: TrackerStats,
}

/// How long [`NftTracker::refresh`] waits for notifications the generation says are due.
const CATCH_UP: Duration = Duration::from_millis(200);

impl Default for NftTracker {
    fn default() -> Self {
        NftTracker::new()
    }
}

impl NftTracker {
    pub fn new() -> NftTracker {
        NftTracker::with_buffer(crate::fault_knobs::nft_event_buffer())
    }

    /// A tracker whose event socket has a `bytes` receive buffer.
    pub fn with_buffer(bytes: i32) -> NftTracker {
        NftTracker {
            socket: None,
            generation: super::GenerationQuery::default(),
            buffer: bytes,
            cache: None,
            force: None,
            stats: TrackerStats::default(),
        }
    }

    /// What the transactions applied since the last full dump touched (None before the first).
    pub fn changes(&self) -> Option<Arc<RulesetChanges>> {
        self.cache.as_ref().map(NftCache::changes)
    }

    /// Makes the next refresh dump in full, saying why.
    pub fn resync(&mut self, reason: &str) {
        self.force = Some(reason.to_string());
    }

    /// The current ruleset: notifications applied, checked against the kernel's generation, and
    /// a full dump when the cache cannot be trusted. Returns the ruleset and, when a dump was
    /// made, why.
    pub fn refresh(&mut self) -> Result<(Arc<Ruleset>, Option<String>), NftablesError> {
        if self.socket.is_none() {
            // Subscribe before the first dump: nothing committed after it is lost.
            let socket = NftEventSocket::open_with_buffer(self.buffer).map_err(|source| {
                let what = "subscribing to nftables notifications".to_string();
                if source.is_permission() {
                    NftablesError::PermissionDenied { what }
                } else {
                    NftablesError::Netlink { what, source }
                }
            })?;
            self.socket = Some(socket);
            self.cache = None;
        }
        let mut reason = match (&self.cache, self.force.take()) {
            (None, _) => Some("start".to_string()),
            (Some(_), Some(why)) => Some(why),
            (Some(_), None) => None,
        };
        if reason.is_none() {
            reason = self.drain(Duration::ZERO).err();
        }
        if reason.is_none() {
            let deadline = Instant::now() + CATCH_UP;
            loop {
                let kernel = self.generation.current()?;
                let cache = self.cache.as_ref().map_or(0, |c| c.generation());
                if kernel == cache {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    reason = Some(format!(
                        "generation mismatch (kernel {kernel}, cache {cache})"
                    ));
                    break;
                }
                if let Err(why) = self.drain(left.min(Duration::from_millis(20))) {
                    reason = Some(why);
                    break;
                }
            }
        }
        if reason.is_none() {
            if let Some(cache) = self.cache.as_mut() {
                match cache.snapshot() {
                    Ok(ruleset) => return Ok((ruleset, None)),
                    Err(NeedResync(why)) => reason = Some(why),
                }
            }
        }
        let reason = reason.unwrap_or_else(|| "start".into());
        if self.stats.dumps > 0 {
            self.stats.last_resync = Some(reason.clone());
        }
        let ruleset = self.dump()?;
        Ok((ruleset, Some(reason)))
    }

    /// Applies what the socket holds. `Err(reason)` when a dump is needed.
    fn drain(&mut self, wait: Duration) -> Result<(), String> {
        let (Some(socket), Some(cache)) = (self.socket.as_mut(), self.cache.as_mut()) else {
            return Err("no cache".into());
        };
        let mut failure: Option<String> = None;
        let mut applied = 0u64;
        let mut wait = wait;
        loop {
            let reads = socket
                .drain_raw(wait, |read| {
                    if failure.is_some() {
                        return;
                    }
                    match read {
                        None => failure = Some("event overflow (ENOBUFS)".into()),
                        Some(datagram) => match cache.apply_messages(datagram) {
                            Ok(summary) => applied += summary.applied as u64,
                            Err(NeedResync(why)) => failure = Some(why),
                        },
                    }
                })
                .map_err(|e| format!("reading notifications failed: {e}"))?;
            wait = Duration::ZERO;
            if reads == 0 || failure.is_some() {
                break;
            }
        }
        self.stats.events_applied += applied;
        failure.map_or(Ok(()), Err)
    }

    /// Throws away queued notifications (they predate the dump), then dumps in full.
    fn dump(&mut self) -> Result<Arc<Ruleset>, NftablesError> {
        if let Some(socket) = self.socket.as_mut() {
            while let Ok(reads) = socket.drain_raw(Duration::ZERO, |_| {}) {
                if reads == 0 {
                    break;
                }
            }
        }
        self.cache = None;
        let (ruleset, stats, headers) = read_ruleset_with_sets()?;
        self.stats.dumps += 1;
        self.stats.last_dump = stats;
        let mut cache = NftCache::from_dump(ruleset, headers);
        let ruleset = cache.snapshot().unwrap_or_default();
        self.cache = Some(cache);
        Ok(ruleset)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_messages_with_sets;
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nft/events")
    }

    /// (step tag, generation after it) in capture order.
    fn steps() -> Vec<(String, u32)> {
        let list = std::fs::read_to_string(dir().join("generations.txt")).unwrap();
        list.lines()
            .filter_map(|line| {
                let (tag, generation) = line.split_once(' ')?;
                Some((tag.to_string(), generation.parse().ok()?))
            })
            .collect()
    }

    fn dump(tag: &str, generation: u32) -> (Ruleset, SetHeaders) {
        let bytes = std::fs::read(dir().join(format!("{tag}.dump.bin"))).unwrap();
        decode_messages_with_sets(&bytes, generation).unwrap()
    }

    fn events(tag: &str) -> Vec<u8> {
        std::fs::read(dir().join(format!("{tag}.events.bin"))).unwrap()
    }

    /// Counters and element order are not part of what notifications keep.
    fn normalized(ruleset: &Ruleset) -> Ruleset {
        let mut out = ruleset.clone();
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

    fn start_cache() -> NftCache {
        let (first, generation) = steps()[0].clone();
        let (ruleset, headers) = dump(&first, generation);
        NftCache::from_dump(ruleset, headers)
    }

    #[test]
    fn every_captured_step_leaves_the_cache_equal_to_a_dump() {
        let steps = steps();
        assert!(steps.len() > 15, "the capture covers the scenario");
        let mut cache = start_cache();
        for (tag, generation) in &steps[1..] {
            let summary = cache.apply_messages(&events(tag)).unwrap();
            assert!(summary.commits >= 1, "{tag}: a transaction committed");
            assert_eq!(summary.skipped, 0, "{tag}");
            assert!(!cache.in_transaction(), "{tag}: nothing left pending");
            let cached = cache.snapshot().unwrap();
            assert_eq!(cache.generation(), *generation, "{tag}");
            let (fresh, _) = dump(tag, *generation);
            assert_eq!(normalized(&cached), normalized(&fresh), "{tag}");
        }
    }

    /// Every chain and set that differs between two captured dumps (or exists in one only).
    fn differences(before: &Ruleset, after: &Ruleset) -> Vec<(TableId, String, &'static str)> {
        let before = normalized(before);
        let after = normalized(after);
        let mut out = Vec::new();
        for table in before.tables.iter().chain(&after.tables) {
            let other = |r: &Ruleset| r.tables.iter().find(|t| t.id == table.id).cloned();
            let (old, new) = (other(&before), other(&after));
            for chain in &table.chains {
                let find = |t: &Option<Table>| {
                    t.as_ref()
                        .and_then(|t| t.chain(&chain.name).cloned())
                        .map(|c| (c.base, c.rules))
                };
                if find(&old) != find(&new) {
                    out.push((table.id.clone(), chain.name.clone(), "chain"));
                }
            }
            for name in table.sets.keys() {
                let find = |t: &Option<Table>| t.as_ref().and_then(|t| t.sets.get(name).cloned());
                if find(&old) != find(&new) {
                    out.push((table.id.clone(), name.clone(), "set"));
                }
            }
        }
        out
    }

    #[test]
    fn the_change_log_names_every_chain_and_set_a_step_changed() {
        let steps = steps();
        let mut cache = start_cache();
        let origin = cache.changes().origin;
        let mut named = 0;
        for pair in steps.windows(2) {
            let ((before_tag, before_generation), (tag, generation)) = (&pair[0], &pair[1]);
            cache.apply_messages(&events(tag)).unwrap();
            let changed = cache.changes().since(origin, *before_generation).unwrap();
            let (before, _) = dump(before_tag, *before_generation);
            let (after, _) = dump(tag, *generation);
            for (table, name, kind) in differences(&before, &after) {
                let said = changed.table(&table).is_some_and(|t| {
                    t.whole
                        || match kind {
                            "chain" => t.chains.contains(&name),
                            _ => t.sets.contains(&name),
                        }
                });
                assert!(said, "{tag}: {kind} {table} {name} changed unnoticed");
                named += 1;
            }
        }
        assert!(named > 10, "the capture changes chains and sets: {named}");
        // A new dump starts a new log: the old origin has no answer there.
        assert!(start_cache().changes().since(origin, steps[0].1).is_none());
    }

    #[test]
    fn a_message_at_a_time_gives_the_same_result() {
        let steps = steps();
        let mut cache = start_cache();
        for (tag, generation) in &steps[1..] {
            let bytes = events(tag);
            for msg in split_messages(&bytes) {
                let msg = msg.unwrap();
                let len = 16 + msg.payload.len();
                let start = msg.payload.as_ptr() as usize - bytes.as_ptr() as usize - 16;
                cache.apply_messages(&bytes[start..start + len]).unwrap();
            }
            let (fresh, _) = dump(tag, *generation);
            assert_eq!(
                normalized(&cache.snapshot().unwrap()),
                normalized(&fresh),
                "{tag}"
            );
        }
    }

    #[test]
    fn transactions_already_in_the_dump_are_skipped() {
        let steps = steps();
        let (tag, generation) = steps[5].clone();
        let (ruleset, headers) = dump(&tag, generation);
        let mut cache = NftCache::from_dump(ruleset.clone(), headers);
        for (old, _) in &steps[1..=5] {
            let summary = cache.apply_messages(&events(old)).unwrap();
            assert_eq!(summary.commits, 0, "{old}");
            assert!(summary.skipped >= 1, "{old}");
        }
        assert_eq!(*cache.snapshot().unwrap(), ruleset);
    }

    #[test]
    fn a_generation_gap_needs_a_resync() {
        let steps = steps();
        let mut cache = start_cache();
        let err = cache.apply_messages(&events(&steps[3].0)).unwrap_err();
        assert!(err.0.contains("generation gap"), "{err}");
    }

    #[test]
    fn a_change_to_an_unknown_chain_needs_a_resync() {
        let steps = steps();
        // Start after the chain was deleted, then replay a rule added to it.
        let (tag, generation) = steps
            .iter()
            .find(|(tag, _)| tag.contains("flush_and_delete_chain"))
            .cloned()
            .unwrap();
        let (ruleset, headers) = dump(&tag, generation);
        let mut cache = NftCache::from_dump(ruleset, headers);
        let bytes = events(
            &steps
                .iter()
                .find(|(t, _)| t.contains("new_chain"))
                .unwrap()
                .0,
        );
        // Only the second transaction (a rule into TEST-CHAIN) renumbered to follow the cache.
        let msgs: Vec<_> = split_messages(&bytes)
            .map(|m| m.unwrap())
            .map(|m| (m.msg_type, m.payload.to_vec()))
            .collect();
        let mut replay = Vec::new();
        for (msg_type, payload) in &msgs[2..3] {
            replay.extend(
                crate::observe::netlink::MessageBuilder::new(*msg_type, 0, 0)
                    .raw(payload)
                    .finish(),
            );
        }
        replay.extend(
            crate::observe::netlink::MessageBuilder::new(
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN,
                0,
                0,
            )
            .raw(&[0, 0, 0, 0])
            .attr_u32_be(1, generation + 1)
            .finish(),
        );
        let err = cache.apply_messages(&replay).unwrap_err();
        assert!(err.0.contains("unknown chain"), "{err}");
    }

    #[test]
    fn malformed_notifications_need_a_resync_and_never_panic() {
        let steps = steps();
        for (tag, _) in &steps[1..] {
            let bytes = events(tag);
            for cut in [1, 7, 17, 30, bytes.len() / 2] {
                let mut cache = start_cache();
                let mut torn = bytes[..bytes.len().saturating_sub(cut)].to_vec();
                // A truncated payload behind an intact header, and a garbled header.
                let _ = cache.apply_messages(&torn);
                torn.iter_mut().skip(20).step_by(7).for_each(|b| *b ^= 0x5a);
                let mut other = start_cache();
                let _ = other.apply_messages(&torn);
            }
        }
        let mut cache = start_cache();
        assert!(cache.apply_messages(&[1, 2, 3]).is_err());
    }
}
