//! The journal: an append-only record of every fix decision that changed or tried to change the
//! kernel (applied, verified, ineffective, reverted, failed), of the interfaces netmend made
//! promiscuous and of set-promisc fixes still awaiting verification, persisted in
//! `<state-dir>/journal.jsonl` so that cooldowns, circuit breakers, pending verifications and
//! `promisc-lost` survive restarts and crash loops.
//!
//! Many writers share one file (the agent and any `netmend check --apply`): every append and every
//! compaction holds an exclusive `flock` on the sibling `journal.lock`, and reads of lines others
//! appended hold a shared one. A writer catches up with the file before it appends, so each
//! process sees every line.
//!
//! Format: one JSON object a line, appended with a single `write` on an `O_APPEND` descriptor and
//! flushed with `fdatasync`. A crash can leave at most a torn last line, which is counted and
//! skipped. Bounded: past [`MAX_ENTRIES`] lines the file is compacted to the newest half through a
//! temporary file and an atomic rename (a crash during compaction keeps the old file); a writer
//! that finds the path on another inode than its descriptor reopens it before writing, so
//! compaction never strands another process's appends.
//!
//! Lines that are not journal entries are counted by reason (`corrupt`, `torn`) and an entry whose
//! outcome this version does not know is kept and counted (`unknown-outcome`): nothing is dropped
//! silently ([`Journal::health`]).
//!
//! One file on purpose: the file format, the lock between writers, catch-up after another writer's
//! appends or compaction, and what the guards and the verifier read back are one storage protocol.

use crate::model::finding::{CheckId, FixId, Outcome};
use crate::remediate::history::Attempt;
use crate::remediate::pending::PendingVerification;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines kept before compaction.
pub const MAX_ENTRIES: usize = 10_000;
const FILE_NAME: &str = "journal.jsonl";
/// Beside the journal: since when each current finding has been seen by `netmend check`.
const FIRST_SEEN_NAME: &str = "first-seen.json";
const LOCK_NAME: &str = "journal.lock";
/// Entries kept in memory while the journal cannot be written.
pub const MAX_UNWRITTEN: usize = 1_000;

/// Reasons a journal line is counted as skipped (the closed label set of
/// `netmend_journal_skipped_lines_total`).
pub const SKIP_REASONS: [&str; 3] = ["corrupt", "torn", "unknown-outcome"];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write journal {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read journal {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock journal {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a set-promisc awaiting verification needs to be finished after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// The address whose ARP requests went unanswered.
    pub target: std::net::Ipv4Addr,
    /// Seconds since the epoch by which replies must have proved the fix.
    pub deadline: f64,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// Seconds since the epoch (fractional).
    pub time: f64,
    pub check: Option<String>,
    pub fix: String,
    pub subject: String,
    /// Finding key (check|subject|discriminator).
    pub key: String,
    pub outcome: String,
    pub detail: String,
    /// Interface made promiscuous by netmend (set-promisc applied) or released (reverted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Whether the interface was already promiscuous before netmend acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_promisc_before: Option<bool>,
    /// Process that re-created the fault, when the nftables generation event named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readded_by: Option<String>,
    /// On an applied set-promisc: the verification it awaits (until a verified, reverted,
    /// ineffective or failed entry for the same key settles it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

impl JournalEntry {
    pub fn new(
        at: SystemTime,
        check: Option<CheckId>,
        fix: FixId,
        subject: &str,
        key: &str,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> JournalEntry {
        JournalEntry {
            time: epoch_secs(at),
            check: check.map(|c| c.as_str().to_string()),
            fix: fix.as_str().to_string(),
            subject: subject.to_string(),
            key: key.to_string(),
            outcome: outcome.as_str().to_string(),
            detail: detail.into(),
            interface: None,
            was_promisc_before: None,
            readded_by: None,
            verify: None,
        }
    }

    pub fn at(&self) -> SystemTime {
        from_epoch_secs(self.time)
    }

    /// The outcome, `None` when this version does not know the string (the entry is kept).
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == self.outcome)
    }

    /// The entry as an attempt for the guards' history (`None` for an unknown outcome).
    pub fn attempt(&self) -> Option<Attempt> {
        Some(Attempt {
            key: self.key.clone(),
            at: self.at(),
            outcome: self.outcome()?,
            readded_by: self.readded_by.clone(),
        })
    }
}

/// Seconds since the epoch, as journal lines store times.
pub fn epoch_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn from_epoch_secs(secs: f64) -> SystemTime {
    if secs.is_finite() && secs > 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e12))
    } else {
        UNIX_EPOCH
    }
}

/// The journal's health for `/status`: how many lines it holds and how many it could not use.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalHealth {
    pub path: String,
    /// Entries held in memory (the file's lines that parsed).
    pub entries: usize,
    /// Lines skipped by reason since this process opened the journal: `corrupt` (not a journal
    /// entry), `torn` (a crash cut the last line), `unknown-outcome` (kept in the journal, left
    /// out of the guards' history).
    pub skipped_lines: BTreeMap<String, u64>,
    /// Entries appended by other processes (e.g. `check --apply`) picked up since start.
    pub picked_up: u64,
    /// Entries a write failed for (state directory read-only or full), kept in memory and written
    /// first, in order, by the next append or refresh that can write.
    pub unwritten: usize,
    /// Unwritten entries dropped because more than [`MAX_UNWRITTEN`] waited (the oldest go).
    pub dropped_unwritten: u64,
    /// The last write error, until a write succeeds again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
}

/// The journal file and its entries in memory.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    lock: File,
    file: File,
    entries: Vec<JournalEntry>,
    max_entries: usize,
    /// Bytes of the file already read.
    offset: u64,
    /// (device, inode) of the file `offset` refers to and `file` appends to.
    identity: (u64, u64),
    /// The file ends in a torn line: the next append starts a new line first.
    torn_tail: bool,
    skipped: BTreeMap<&'static str, u64>,
    /// Entries other processes appended, not yet handed out by [`Journal::refresh`].
    unseen: Vec<JournalEntry>,
    picked_up: u64,
    /// Entries not written yet (a write failed), oldest first.
    unwritten: std::collections::VecDeque<JournalEntry>,
    dropped_unwritten: u64,
    write_error: Option<String>,
}

/// An `flock` held until dropped, on a second descriptor of the lock file (the lock belongs to
/// the open file, which both descriptors share).
struct FileLock(File);

impl FileLock {
    fn take(file: &File, exclusive: bool, path: &Path) -> Result<FileLock, JournalError> {
        use crate::sys::file::{flock, LockKind};
        use std::os::fd::AsFd;
        let kind = if exclusive {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        let locked = || -> std::io::Result<File> {
            let held = file.try_clone()?;
            flock(held.as_fd(), kind, true)?;
            Ok(held)
        };
        locked().map(FileLock).map_err(|source| JournalError::Lock {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        let _ = crate::sys::file::unlock(self.0.as_fd());
    }
}

fn identity_of(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn line_of(entry: &JournalEntry) -> String {
    serde_json::to_string(entry).expect("journal entries serialise")
}

impl Journal {
    /// Opens (creating if needed) the journal in `state_dir` and loads it.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        Journal::open_with_limit(state_dir, MAX_ENTRIES)
    }

    /// Like [`Journal::open`], compacting past `max_entries` lines (tests use small limits).
    pub fn open_with_limit(state_dir: &Path, max_entries: usize) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(FILE_NAME);
        let lock_path = state_dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|source| JournalError::Open {
                path: lock_path.clone(),
                source,
            })?;
        let file = open_append(&path)?;
        let mut journal = Journal {
            path,
            lock,
            file,
            entries: Vec::new(),
            max_entries: max_entries.max(2),
            offset: 0,
            // Forces the first catch-up to read the whole file.
            identity: (u64::MAX, u64::MAX),
            torn_tail: false,
            skipped: BTreeMap::new(),
            unseen: Vec::new(),
            picked_up: 0,
            unwritten: Default::default(),
            dropped_unwritten: 0,
            write_error: None,
        };
        {
            let _lock = FileLock::take(&journal.lock, true, &journal.path)?;
            journal.catch_up_locked()?;
            if journal.entries.len() > journal.max_entries {
                journal.compact_locked()?;
            }
        }
        // What was there at start is history, not news from another writer.
        journal.unseen.clear();
        journal.picked_up = 0;
        Ok(journal)
    }

    /// Remembers since when each finding in `present` (key, seen now) has been seen, across
    /// `netmend check` runs: the earlier of the remembered time and now. Keys not present any more
    /// are forgotten (a finding that went away starts again). Kept beside the journal in
    /// `first-seen.json`, rewritten whole under the journal's lock; an unreadable file is
    /// started afresh (the worst case is a fix that waits longer).
    pub fn remember_first_seen(
        &mut self,
        present: &[(String, SystemTime)],
    ) -> Result<BTreeMap<String, SystemTime>, JournalError> {
        let path = self.path.with_file_name(FIRST_SEEN_NAME);
        let _lock = FileLock::take(&self.lock, true, &self.path)?;
        let stored: BTreeMap<String, f64> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let remembered: BTreeMap<String, SystemTime> = present
            .iter()
            .map(|(key, now)| {
                let since = stored
                    .get(key)
                    .map(|secs| from_epoch_secs(*secs))
                    .filter(|since| since < now)
                    .unwrap_or(*now);
                (key.clone(), since)
            })
            .collect();
        let text: BTreeMap<&String, f64> = remembered
            .iter()
            .map(|(k, at)| (k, epoch_secs(*at)))
            .collect();
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&text).unwrap_or_default())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| JournalError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(remembered)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }

    /// The newest `n` entries, newest last.
    pub fn recent(&self, n: usize) -> &[JournalEntry] {
        &self.entries[self.entries.len().saturating_sub(n)..]
    }

    /// Lines skipped since open, all reasons together.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Counts and size for `/status` and `netmend_journal_skipped_lines_total`.
    pub fn health(&self) -> JournalHealth {
        JournalHealth {
            path: self.path.display().to_string(),
            entries: self.entries.len(),
            skipped_lines: self
                .skipped
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            picked_up: self.picked_up,
            unwritten: self.unwritten.len(),
            dropped_unwritten: self.dropped_unwritten,
            write_error: self.write_error.clone(),
        }
    }

    /// Entries other processes appended since the last look (or since open), oldest first. Cheap
    /// when nothing changed: one `stat` of the file, compared with what was read.
    pub fn refresh(&mut self) -> Result<Vec<JournalEntry>, JournalError> {
        let unchanged = std::fs::metadata(&self.path)
            .map(|meta| identity_of(&meta) == self.identity && meta.len() == self.offset)
            .unwrap_or(false);
        if !unchanged {
            {
                let _lock = FileLock::take(&self.lock, false, &self.path)?;
                self.catch_up_locked()?;
            }
            if self.entries.len() > self.max_entries {
                self.compact()?;
            }
        }
        // Entries a failed write left waiting go now if they can; if not, they keep waiting and
        // `write_error` says why (no error here: what others appended was read).
        if !self.unwritten.is_empty() {
            if let Err(error) = self.write_unwritten() {
                self.note_write_failure(&error);
            }
        }
        Ok(std::mem::take(&mut self.unseen))
    }

    /// Appends and syncs one entry, after catching up with what others appended (kept for the
    /// next [`Journal::refresh`]). When the write fails (the state directory is read-only or
    /// full) the entry is kept in memory and written, before any newer one, as soon as a write
    /// succeeds again: nothing is lost while at most [`MAX_UNWRITTEN`] wait.
    pub fn append(&mut self, entry: JournalEntry) -> Result<(), JournalError> {
        self.unwritten.push_back(entry);
        while self.unwritten.len() > MAX_UNWRITTEN {
            self.unwritten.pop_front();
            self.dropped_unwritten += 1;
        }
        let written = self.write_unwritten();
        if let Err(error) = &written {
            self.note_write_failure(error);
        }
        written
    }

    fn note_write_failure(&mut self, error: &JournalError) {
        self.write_error = Some(format!(
            "{error}; {} entries kept in memory until it can be written",
            self.unwritten.len()
        ));
    }

    /// Catches up and writes the unwritten entries, under the exclusive lock.
    fn write_unwritten(&mut self) -> Result<(), JournalError> {
        let _lock = FileLock::take(&self.lock, true, &self.path)?;
        self.catch_up_locked()?;
        self.write_unwritten_locked()
    }

    /// Writes every unwritten entry, oldest first, each as one line; stops at the first failure
    /// (what is left stays unwritten). An entry a failed write left in the file anyway (the data
    /// was written, the sync failed) is not written twice. Needs the exclusive lock.
    fn write_unwritten_locked(&mut self) -> Result<(), JournalError> {
        while let Some(entry) = self.unwritten.front() {
            let text = line_of(entry);
            if self.write_error.is_some() && self.entries.iter().rev().any(|e| line_of(e) == text) {
                self.unwritten.pop_front();
                continue;
            }
            let mut line = String::new();
            if self.torn_tail {
                line.push('\n');
            }
            line.push_str(&text);
            line.push('\n');
            if let Err(source) = self
                .file
                .write_all(line.as_bytes())
                .and_then(|_| self.file.sync_data())
            {
                // Where the file ends is unknown now: re-read it whole next time.
                self.identity = (u64::MAX, u64::MAX);
                return Err(JournalError::Write {
                    path: self.path.clone(),
                    source,
                });
            }
            self.offset += line.len() as u64;
            self.torn_tail = false;
            let entry = self.unwritten.pop_front().expect("the front entry");
            self.entries.push(entry);
        }
        self.write_error = None;
        if self.entries.len() > self.max_entries {
            self.compact_locked()?;
        }
        Ok(())
    }

    /// Interfaces netmend made promiscuous and has not released, with whether they were
    /// promiscuous before: applied/verified set-promisc entries not followed by a revert.
    pub fn promisc_interfaces(&self) -> Vec<(String, bool)> {
        let mut held: Vec<(String, bool)> = Vec::new();
        for entry in &self.entries {
            let Some(interface) = &entry.interface else {
                continue;
            };
            if entry.fix != FixId::SET_PROMISC.as_str() {
                continue;
            }
            match entry.outcome() {
                Some(Outcome::Applied) if !held.iter().any(|(i, _)| i == interface) => {
                    held.push((interface.clone(), entry.was_promisc_before.unwrap_or(false)));
                }
                Some(Outcome::Reverted) | Some(Outcome::Ineffective) => {
                    held.retain(|(i, _)| i != interface)
                }
                _ => {}
            }
        }
        held
    }

    /// Set-promisc fixes applied and not yet settled (verified, reverted, ineffective or failed),
    /// with what their verification needs: the engine resumes them after a restart. Their ARP
    /// counters start again from what is observed next (the watch restarted with the process).
    /// An unsettled `arp-unanswered` set-promisc journaled before entries carried their
    /// verification (no `verify`) is resumed too, with `window` after it as its deadline and the
    /// target taken from its subject (`interface@address`).
    pub fn pending_verifications(&self, window: Duration) -> Vec<PendingVerification> {
        let mut pending: Vec<PendingVerification> = Vec::new();
        for entry in &self.entries {
            if entry.fix != FixId::SET_PROMISC.as_str() {
                continue;
            }
            match entry.outcome() {
                Some(Outcome::Applied) => {
                    pending.retain(|p| p.key != entry.key);
                    let spec = entry
                        .verify
                        .as_ref()
                        .map(|v| (v.target, from_epoch_secs(v.deadline)));
                    let older = || {
                        let target = entry.subject.split_once('@')?.1.parse().ok()?;
                        (entry.check.as_deref() == Some(CheckId::ARP_UNANSWERED.as_str()))
                            .then(|| (target, entry.at() + window))
                    };
                    if let (Some((target, deadline)), Some(interface)) =
                        (spec.or_else(older), &entry.interface)
                    {
                        pending.push(PendingVerification::resumed(
                            &entry.key,
                            &entry.subject,
                            interface,
                            target,
                            entry.at(),
                            deadline,
                        ));
                    }
                }
                Some(
                    Outcome::Verified | Outcome::Reverted | Outcome::Ineffective | Outcome::Failed,
                ) => pending.retain(|p| p.key != entry.key),
                _ => {}
            }
        }
        pending
    }

    /// Rewrites the file now, keeping the newest entries within the limit (and every entry of an
    /// interface still held promiscuous). Other writers reopen the new file before they append.
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let _lock = FileLock::take(&self.lock, true, &self.path)?;
        self.catch_up_locked()?;
        self.compact_locked()
    }

    /// Reads what was appended since the last read; reloads the whole file when it was replaced
    /// (compacted by another writer) or shrank. Needs the lock (shared or exclusive).
    fn catch_up_locked(&mut self) -> Result<(), JournalError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed under us: start a new file.
                self.file = open_append(&self.path)?;
                self.file.metadata().map_err(|source| JournalError::Read {
                    path: self.path.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(JournalError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let identity = identity_of(&meta);
        if identity == self.identity && meta.len() == self.offset {
            return Ok(());
        }
        let replaced = identity != self.identity || meta.len() < self.offset;
        if replaced {
            self.file = open_append(&self.path)?;
            let meta = self.file.metadata().map_err(|source| JournalError::Read {
                path: self.path.clone(),
                source,
            })?;
            self.identity = identity_of(&meta);
            self.offset = 0;
            self.torn_tail = false;
        }
        let mut reader = File::open(&self.path).map_err(|source| JournalError::Read {
            path: self.path.clone(),
            source,
        })?;
        let mut bytes = Vec::new();
        reader
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| reader.read_to_end(&mut bytes))
            .map_err(|source| JournalError::Read {
                path: self.path.clone(),
                source,
            })?;
        let known: HashSet<String> = if replaced {
            self.entries.iter().map(line_of).collect()
        } else {
            HashSet::new()
        };
        let mut reloaded = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (line, complete) = match rest.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let line = &rest[..end];
                    rest = &rest[end + 1..];
                    (line, true)
                }
                None => {
                    let line = rest;
                    rest = &[];
                    (line, false)
                }
            };
            self.offset += line.len() as u64 + u64::from(complete);
            if !complete {
                // Writers append whole lines under the lock: a partial line now is a crash's.
                if !line.iter().all(u8::is_ascii_whitespace) {
                    *self.skipped.entry("torn").or_default() += 1;
                }
                self.torn_tail = true;
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<JournalEntry>(line) else {
                *self.skipped.entry("corrupt").or_default() += 1;
                continue;
            };
            let is_new = !replaced || !known.contains(&line_of(&entry));
            if is_new && entry.outcome().is_none() {
                *self.skipped.entry("unknown-outcome").or_default() += 1;
            }
            if is_new {
                self.picked_up += 1;
                self.unseen.push(entry.clone());
            }
            if replaced {
                reloaded.push(entry);
            } else {
                self.entries.push(entry);
            }
        }
        if replaced {
            self.entries = reloaded;
        }
        Ok(())
    }

    /// Keeps the newest half of the entries past the limit (all of them below it), rewriting the
    /// file through a temporary file and a rename. Needs the exclusive lock.
    fn compact_locked(&mut self) -> Result<(), JournalError> {
        let keep_from = if self.entries.len() > self.max_entries {
            self.entries.len() - self.max_entries / 2
        } else {
            0
        };
        // Interfaces held promiscuous must survive compaction: keep their entries.
        let held: Vec<String> = self
            .promisc_interfaces()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        let kept: Vec<JournalEntry> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                *i >= keep_from
                    || e.interface
                        .as_ref()
                        .is_some_and(|iface| held.contains(iface))
            })
            .map(|(_, e)| e.clone())
            .collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = File::create(&tmp)?;
            let mut text = String::new();
            for entry in &kept {
                text.push_str(&line_of(entry));
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| JournalError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.file = open_append(&self.path)?;
        let meta = self.file.metadata().map_err(|source| JournalError::Read {
            path: self.path.clone(),
            source,
        })?;
        self.identity = identity_of(&meta);
        self.offset = meta.len();
        self.torn_tail = false;
        self.entries = kept;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "netmend-journal-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(key: &str, outcome: Outcome) -> JournalEntry {
        JournalEntry::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Some(CheckId::CILIUM_STALE_BACKUP_CHAIN),
            FixId::FLUSH_STALE_CHAIN,
            "ip nat OLD_CILIUM_POST_nat",
            key,
            outcome,
            "flushed 5 rules",
        )
    }

    #[test]
    fn entries_survive_reopen_and_torn_lines_are_skipped() {
        let dir = temp_dir("reopen");
        {
            let mut j = Journal::open(&dir).unwrap();
            j.append(entry("k1", Outcome::Applied)).unwrap();
            j.append(entry("k1", Outcome::Verified)).unwrap();
        }
        // A crash mid-write leaves a torn line.
        let path = dir.join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\": 17000").unwrap();
        drop(f);
        let mut j = Journal::open(&dir).unwrap();
        assert_eq!(j.entries().len(), 2);
        assert_eq!(j.health().skipped_lines.get("torn"), Some(&1));
        assert_eq!(j.entries()[1].outcome(), Some(Outcome::Verified));
        let attempt = j.entries()[0].attempt().unwrap();
        assert_eq!(attempt.key, "k1");
        assert_eq!(attempt.outcome, Outcome::Applied);
        // The next append starts on a line of its own: the torn line stays one bad line.
        j.append(entry("k2", Outcome::Applied)).unwrap();
        let reopened = Journal::open(&dir).unwrap();
        assert_eq!(reopened.entries().len(), 3);
        assert_eq!(reopened.entries()[2].key, "k2");
        assert_eq!(reopened.skipped_lines(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn journal_is_bounded_and_keeps_held_interfaces() {
        let dir = temp_dir("bounded");
        let mut j = Journal::open(&dir).unwrap();
        let mut promisc = JournalEntry::new(
            UNIX_EPOCH,
            Some(CheckId::ARP_UNANSWERED),
            FixId::SET_PROMISC,
            "wlan0@192.168.1.51",
            "arp",
            Outcome::Applied,
            "set promisc",
        );
        promisc.interface = Some("wlan0".into());
        promisc.was_promisc_before = Some(false);
        j.append(promisc).unwrap();
        for i in 0..MAX_ENTRIES + 5 {
            j.append(entry(&format!("k{i}"), Outcome::Failed)).unwrap();
        }
        assert!(j.entries().len() <= MAX_ENTRIES);
        assert_eq!(j.promisc_interfaces(), vec![("wlan0".to_string(), false)]);
        let reopened = Journal::open(&dir).unwrap();
        assert_eq!(reopened.entries().len(), j.entries().len());
        assert_eq!(reopened.promisc_interfaces().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_revert_releases_the_interface() {
        let dir = temp_dir("release");
        let mut j = Journal::open(&dir).unwrap();
        for outcome in [Outcome::Applied, Outcome::Reverted] {
            let mut e = JournalEntry::new(
                UNIX_EPOCH,
                Some(CheckId::ARP_UNANSWERED),
                FixId::SET_PROMISC,
                "eth1@10.0.0.5",
                "arp",
                outcome,
                "",
            );
            e.interface = Some("eth1".into());
            j.append(e).unwrap();
        }
        assert!(j.promisc_interfaces().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod many_writers {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("netmend-journal-mw-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(key: &str, outcome: Outcome, secs: u64) -> JournalEntry {
        JournalEntry::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
            Some(CheckId::CILIUM_STALE_BACKUP_CHAIN),
            FixId::FLUSH_STALE_CHAIN,
            "ip nat OLD_CILIUM_POST_nat",
            key,
            outcome,
            "flushed",
        )
    }

    #[test]
    fn refresh_picks_up_what_another_writer_appended_and_nothing_twice() {
        let dir = temp_dir("refresh");
        let mut agent = Journal::open(&dir).unwrap();
        let mut oneshot = Journal::open(&dir).unwrap();
        assert!(agent.refresh().unwrap().is_empty(), "nothing new yet");
        oneshot.append(entry("a", Outcome::Applied, 1)).unwrap();
        oneshot.append(entry("a", Outcome::Verified, 2)).unwrap();
        agent.append(entry("b", Outcome::Applied, 3)).unwrap();
        let fresh = agent.refresh().unwrap();
        assert_eq!(
            fresh.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(),
            ["applied", "verified"]
        );
        assert!(fresh.iter().all(|e| e.key == "a"));
        assert!(agent.refresh().unwrap().is_empty(), "handed out once");
        let keys: Vec<_> = agent.entries().iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "a", "b"]);
        // The one-shot sees the agent's line when it appends or refreshes.
        assert_eq!(oneshot.refresh().unwrap().len(), 1);
        assert_eq!(agent.health().picked_up, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compaction_by_one_writer_strands_no_line_of_another() {
        let dir = temp_dir("compact");
        // Created first so both threads share one file.
        drop(Journal::open(&dir).unwrap());
        const N: u64 = 300;
        let writers: Vec<_> = ["left", "right"]
            .into_iter()
            .map(|who| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut j = Journal::open(&dir).unwrap();
                    for i in 0..N {
                        j.append(entry(&format!("{who}-{i}"), Outcome::Applied, i))
                            .unwrap();
                        if who == "left" && i % 10 == 0 {
                            // Replaces the file (a new inode) while the other one appends.
                            j.compact().unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let j = Journal::open(&dir).unwrap();
        let keys: HashSet<&str> = j.entries().iter().map(|e| e.key.as_str()).collect();
        for who in ["left", "right"] {
            for i in 0..N {
                assert!(
                    keys.contains(format!("{who}-{i}").as_str()),
                    "{who}-{i} lost"
                );
            }
        }
        assert_eq!(j.entries().len(), 2 * N as usize);
        assert_eq!(j.skipped_lines(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entries_a_write_failed_for_are_kept_and_written_first_when_writes_work_again() {
        let dir = temp_dir("unwritten");
        let mut j = Journal::open(&dir).unwrap();
        j.append(entry("k1", Outcome::Applied, 1)).unwrap();
        // A descriptor that cannot write stands for a read-only or full state directory.
        j.file = File::open(&j.path).unwrap();
        let error = j.append(entry("k2", Outcome::Verified, 2)).unwrap_err();
        assert!(
            error.to_string().starts_with("cannot write journal"),
            "{error}"
        );
        let health = j.health();
        assert_eq!(health.unwritten, 1);
        let why = health.write_error.expect("the write error is shown");
        assert!(
            why.ends_with("1 entries kept in memory until it can be written"),
            "{why}"
        );
        assert_eq!(j.entries().len(), 1);
        // Writable again: the kept entry goes first, then the new one.
        j.append(entry("k3", Outcome::Applied, 3)).unwrap();
        let health = j.health();
        assert_eq!((health.unwritten, health.write_error), (0, None));
        let keys: Vec<String> = Journal::open(&dir)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["k1", "k2", "k3"]);
    }

    #[test]
    fn a_refresh_writes_what_is_waiting_without_a_new_entry() {
        let dir = temp_dir("unwritten-refresh");
        let mut j = Journal::open(&dir).unwrap();
        j.file = File::open(&j.path).unwrap();
        j.append(entry("k1", Outcome::Applied, 1)).unwrap_err();
        assert!(j.refresh().unwrap().is_empty());
        assert_eq!(j.health().unwritten, 0);
        assert_eq!(Journal::open(&dir).unwrap().entries().len(), 1);
    }

    #[test]
    fn at_most_max_unwritten_entries_wait_and_the_dropped_are_counted() {
        let dir = temp_dir("unwritten-bound");
        let mut j = Journal::open(&dir).unwrap();
        j.file = File::open(&j.path).unwrap();
        for i in 0..MAX_UNWRITTEN + 3 {
            j.identity = (u64::MAX, u64::MAX);
            j.catch_up_locked().unwrap();
            j.file = File::open(&j.path).unwrap();
            j.append(entry(&format!("k{i}"), Outcome::Applied, i as u64))
                .unwrap_err();
        }
        let health = j.health();
        assert_eq!(
            (health.unwritten, health.dropped_unwritten),
            (MAX_UNWRITTEN, 3)
        );
        assert_eq!(j.unwritten.front().unwrap().key, "k3");
    }

    #[test]
    fn a_writer_compacting_past_the_limit_keeps_the_newest_and_others_follow() {
        let dir = temp_dir("limit");
        let mut a = Journal::open_with_limit(&dir, 20).unwrap();
        let mut b = Journal::open_with_limit(&dir, 20).unwrap();
        for i in 0..21 {
            a.append(entry(&format!("a{i}"), Outcome::Failed, i))
                .unwrap();
        }
        assert_eq!(a.entries().len(), 10, "compacted to the newest half");
        b.append(entry("b", Outcome::Failed, 100)).unwrap();
        assert_eq!(b.entries().len(), 11);
        assert_eq!(b.entries()[0].key, "a11");
        let fresh = a.refresh().unwrap();
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].key, "b");
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 11);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_middle_line_and_an_unknown_outcome_are_counted_and_the_rest_kept() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let mut unknown = entry("k", Outcome::Applied, 2);
        unknown.outcome = "rolled-back-by-a-newer-version".into();
        let text = format!(
            "{}\nnot json at all\n{}\n{}\n",
            line_of(&entry("k", Outcome::Applied, 1)),
            line_of(&unknown),
            line_of(&entry("k", Outcome::Verified, 3)),
        );
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
        let j = Journal::open(&dir).unwrap();
        assert_eq!(j.entries().len(), 3, "the unknown outcome is kept");
        assert_eq!(j.entries()[1].outcome, "rolled-back-by-a-newer-version");
        let health = j.health();
        assert_eq!(health.skipped_lines.get("corrupt"), Some(&1));
        assert_eq!(health.skipped_lines.get("unknown-outcome"), Some(&1));
        assert_eq!(health.skipped_lines.get("torn"), None);
        let attempts: Vec<_> = j.entries().iter().filter_map(|e| e.attempt()).collect();
        assert_eq!(
            attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
            [Outcome::Applied, Outcome::Verified]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_applied_set_promisc_with_a_deadline_is_pending_until_settled() {
        let dir = temp_dir("pending");
        let mut j = Journal::open(&dir).unwrap();
        let promisc = |outcome: Outcome, secs: u64| {
            let mut e = JournalEntry::new(
                UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
                Some(CheckId::ARP_UNANSWERED),
                FixId::SET_PROMISC,
                "eth1@10.0.0.5",
                "arp-unanswered|eth1@10.0.0.5",
                outcome,
                "",
            );
            e.interface = Some("eth1".into());
            e
        };
        let mut applied = promisc(Outcome::Applied, 0);
        applied.verify = Some(VerifySpec {
            target: "10.0.0.5".parse().unwrap(),
            deadline: 1_700_000_060.0,
        });
        j.append(applied).unwrap();
        let pending = Journal::open(&dir)
            .unwrap()
            .pending_verifications(Duration::from_secs(60));
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].interface, "eth1");
        assert_eq!(pending[0].target.to_string(), "10.0.0.5");
        assert_eq!(
            pending[0].deadline,
            UNIX_EPOCH + Duration::from_secs(1_700_000_060)
        );
        assert!(pending[0].baseline.is_none(), "counters are taken again");
        j.append(promisc(Outcome::Verified, 30)).unwrap();
        assert!(Journal::open(&dir)
            .unwrap()
            .pending_verifications(Duration::from_secs(60))
            .is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod older_journals {
    use super::*;

    #[test]
    fn an_unsettled_set_promisc_from_before_verify_specs_is_resumed_from_its_subject() {
        let dir =
            std::env::temp_dir().join(format!("netmend-journal-older-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut j = Journal::open(&dir).unwrap();
        let mut applied = JournalEntry::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Some(CheckId::ARP_UNANSWERED),
            FixId::SET_PROMISC,
            "eth1@10.0.0.5",
            "arp-unanswered|eth1@10.0.0.5",
            Outcome::Applied,
            "",
        );
        applied.interface = Some("eth1".into());
        j.append(applied.clone()).unwrap();
        // A promisc-lost restore is not an ARP verification.
        let mut restore = applied;
        restore.check = Some(CheckId::PROMISC_LOST.as_str().into());
        restore.key = "promisc-lost|eth2".into();
        restore.subject = "eth2".into();
        restore.interface = Some("eth2".into());
        j.append(restore).unwrap();
        let pending = j.pending_verifications(Duration::from_secs(30));
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].interface, "eth1");
        assert_eq!(pending[0].target.to_string(), "10.0.0.5");
        assert_eq!(
            pending[0].deadline,
            UNIX_EPOCH + Duration::from_secs(1_700_000_030)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
