//! The journal: an append-only record of every fix decision that changed or tried to change the
//! kernel (applied, verified, ineffective, reverted, failed) and of the interfaces netmend made
//! promiscuous, persisted in `<state-dir>/journal.jsonl` so that cooldowns, circuit breakers and
//! `promisc-lost` survive restarts and crash loops.
//!
//! Format: one JSON object a line, appended with a single `write` on an `O_APPEND` descriptor and
//! flushed with `fdatasync`. A crash can leave at most a torn last line, which loading skips.
//! Bounded: past [`MAX_ENTRIES`] lines the file is compacted to the newest half through a temporary
//! file and an atomic rename, so a crash during compaction keeps the old file.

use crate::model::finding::{CheckId, FixId, Outcome};
use crate::remediate::history::Attempt;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines kept before compaction.
pub const MAX_ENTRIES: usize = 10_000;
const FILE_NAME: &str = "journal.jsonl";

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
            time: at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            check: check.map(|c| c.as_str().to_string()),
            fix: fix.as_str().to_string(),
            subject: subject.to_string(),
            key: key.to_string(),
            outcome: outcome.as_str().to_string(),
            detail: detail.into(),
            interface: None,
            was_promisc_before: None,
            readded_by: None,
        }
    }

    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.time.max(0.0))
    }

    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == self.outcome)
    }

    /// The entry as an attempt for the guards' history.
    pub fn attempt(&self) -> Option<Attempt> {
        Some(Attempt {
            key: self.key.clone(),
            at: self.at(),
            outcome: self.outcome()?,
            readded_by: self.readded_by.clone(),
        })
    }
}

/// The journal file and its entries in memory.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: Vec<JournalEntry>,
    /// Lines skipped at load (torn or not JSON).
    pub skipped_lines: usize,
}

impl Journal {
    /// Opens (creating if needed) the journal in `state_dir` and loads it.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(FILE_NAME);
        let mut entries = Vec::new();
        let mut skipped_lines = 0;
        if let Ok(existing) = File::open(&path) {
            for line in BufReader::new(existing).lines() {
                let Ok(line) = line else {
                    skipped_lines += 1;
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<JournalEntry>(&line) {
                    Ok(entry) => entries.push(entry),
                    Err(_) => skipped_lines += 1,
                }
            }
        }
        let file = open_append(&path)?;
        let mut journal = Journal {
            path,
            file,
            entries,
            skipped_lines,
        };
        if journal.entries.len() > MAX_ENTRIES || skipped_lines > 0 {
            journal.compact()?;
        }
        Ok(journal)
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

    /// Appends and syncs one entry.
    pub fn append(&mut self, entry: JournalEntry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(&entry).expect("journal entries serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.entries.push(entry);
        if self.entries.len() > MAX_ENTRIES {
            self.compact()?;
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

    /// Keeps the newest half of the entries, rewriting the file atomically.
    fn compact(&mut self) -> Result<(), JournalError> {
        let keep_from = if self.entries.len() > MAX_ENTRIES {
            self.entries.len() - MAX_ENTRIES / 2
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
            for entry in &kept {
                let mut line = serde_json::to_string(entry).expect("journal entries serialise");
                line.push('\n');
                out.write_all(line.as_bytes())?;
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| JournalError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.file = open_append(&self.path)?;
        self.entries = kept;
        self.skipped_lines = 0;
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
        let j = Journal::open(&dir).unwrap();
        assert_eq!(j.entries().len(), 2);
        assert_eq!(j.skipped_lines, 0, "compaction removed the torn line");
        assert_eq!(j.entries()[1].outcome(), Some(Outcome::Verified));
        let attempt = j.entries()[0].attempt().unwrap();
        assert_eq!(attempt.key, "k1");
        assert_eq!(attempt.outcome, Outcome::Applied);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
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
