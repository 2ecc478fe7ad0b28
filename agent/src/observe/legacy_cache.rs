//! iptables-legacy for the agent, without decoding what did not change. x_tables sends no change
//! notifications, so every pass asks each table for its GET_INFO (hooks, entry count, size: one
//! small getsockopt) and reads and decodes the table only when that moved. A change that keeps all
//! of them (entries replaced by others of the same total size, e.g. a DNAT target address edited
//! in place) is caught by a content check every [`VERIFY_INTERVAL`] (and on a resync): the entry
//! blob is read and hashed without its counters, and decoded only when the hash differs. So a
//! kube-proxy `iptables-legacy-restore` that rewrites a table with the same rules costs a hash,
//! not a decode, and traffic (which only moves counters) costs nothing.
//!
//! The ruleset handed out keeps its `Arc` while no table changed, which is how the engine knows
//! not to re-run the ruleset checks. Counters in a reused table are those of its last decode.

use crate::model::ruleset::{Family, Ruleset, Table};
use crate::observe::iptables_legacy::{self, LegacyError, TableInfo};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often unchanged-looking tables are hashed to catch same-size edits.
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(30);

/// What a table was last read as: its GET_INFO and its content fingerprint.
#[derive(Clone)]
struct Seen {
    info: TableInfo,
    fingerprint: u64,
}

/// The legacy tables as last read.
#[derive(Default)]
pub struct LegacyCache {
    seen: BTreeMap<(Family, String), Seen>,
    ruleset: Option<Arc<Ruleset>>,
    last_verify: Option<Instant>,
    /// A decode replaced tables: once a read finds nothing new, the ruleset they were in has
    /// been dropped (the engine keeps one snapshot) and its memory can go back to the kernel.
    trim_due: bool,
    /// Tables decoded, and tables hashed (read in full) so far.
    pub decodes: u64,
    pub hashes: u64,
}

impl LegacyCache {
    pub fn new() -> LegacyCache {
        LegacyCache::default()
    }

    /// Makes the next read hash every table.
    pub fn resync(&mut self) {
        self.last_verify = None;
    }

    /// The current legacy ruleset; the same `Arc` as last time when nothing changed. On an error
    /// the cache is left as it was.
    pub fn read(&mut self) -> Result<Arc<Ruleset>, LegacyError> {
        let verify = self
            .last_verify
            .is_none_or(|at| at.elapsed() >= VERIFY_INTERVAL);
        let mut seen: BTreeMap<(Family, String), Seen> = BTreeMap::new();
        // Tables decoded this time; the others are taken from the last ruleset.
        let mut decoded: BTreeMap<(Family, String), Table> = BTreeMap::new();
        for family in [Family::Ip, Family::Ip6] {
            for name in iptables_legacy::table_names(family)? {
                let key = (family, name);
                let info = iptables_legacy::read_table_info(family, &key.1)?;
                let before = self.seen.get(&key);
                if let Some(before) = before.filter(|b| b.info == info && !verify) {
                    seen.insert(key, before.clone());
                    continue;
                }
                let (info, blob) = iptables_legacy::read_table_blob(family, &key.1)?;
                let fingerprint = iptables_legacy::content_fingerprint(family, blob.bytes());
                self.hashes += 1;
                if before.is_none_or(|b| b.fingerprint != fingerprint) || self.ruleset.is_none() {
                    self.decodes += 1;
                    decoded.insert(
                        key.clone(),
                        iptables_legacy::decode_table_releasing(family, &info, blob)?,
                    );
                }
                seen.insert(key, Seen { info, fingerprint });
            }
        }
        if verify {
            self.last_verify = Some(Instant::now());
        }
        if !decoded.is_empty() {
            self.trim_due = true;
        } else if std::mem::take(&mut self.trim_due) {
            // A decode allocates and frees as much again as it keeps, and the tables it replaced
            // are free now: hand that back so that the agent's resident memory follows the rules
            // it holds rather than its last peak. Only on a read that found no change, so that it
            // never delays a finding.
            crate::sys::memory::trim_heap();
        }
        let same_tables = seen.keys().eq(self.seen.keys());
        self.seen = seen;
        if let Some(ruleset) = self
            .ruleset
            .as_ref()
            .filter(|_| decoded.is_empty() && same_tables)
        {
            return Ok(ruleset.clone());
        }
        let previous = self.ruleset.take();
        let tables = self
            .seen
            .keys()
            .filter_map(|key| {
                decoded.remove(key).or_else(|| {
                    previous
                        .as_ref()?
                        .tables
                        .iter()
                        .find(|t| t.id.family == key.0 && t.id.name == key.1)
                        .cloned()
                })
            })
            .collect();
        let ruleset = Arc::new(Ruleset {
            tables,
            generation: None,
        });
        self.ruleset = Some(ruleset.clone());
        Ok(ruleset)
    }
}

/// A cheap watch for legacy changes between passes: the GET_INFO of every legacy table, polled
/// by the agent's change feed (x_tables has no notifications). A change of hooks, entry count or
/// size wakes the engine at once; a same-size edit is left to the cache's content check.
#[derive(Default)]
pub struct InfoWatch {
    last: Option<Vec<((Family, String), TableInfo)>>,
}

impl InfoWatch {
    /// Whether any legacy table's GET_INFO moved since the last call (false on the first call
    /// and when the tables cannot be read: the next pass reports that).
    pub fn changed(&mut self) -> bool {
        let mut now = Vec::new();
        for family in [Family::Ip, Family::Ip6] {
            let Ok(names) = iptables_legacy::table_names(family) else {
                return false;
            };
            for name in names {
                let Ok(info) = iptables_legacy::read_table_info(family, &name) else {
                    return false;
                };
                now.push(((family, name), info));
            }
        }
        let changed = self.last.as_ref().is_some_and(|last| *last != now);
        self.last = Some(now);
        changed
    }
}
