//! iptables-legacy writes, by content and atomically: one `iptables-legacy-restore --noflush`
//! (`ip6tables-legacy-restore`) per table, fed `*table`, the exact rule specs to delete
//! (`-D CHAIN <spec as iptables-save prints it>`), chain flushes and deletions (`-F`, `-X`) and
//! `COMMIT`, run while netmend holds the xtables lock and after it re-read the table under it.
//!
//! Why this is airtight:
//! - The restore builds the new table in memory and commits it with ONE `IPT_SO_SET_REPLACE`: a
//!   `-D` whose spec matches no rule any more, or a `-X` of a chain still referenced or not empty,
//!   fails the whole batch before the commit, so nothing is changed. Rules are never addressed by
//!   position.
//! - netmend takes the xtables lock (flock LOCK_EX on `/run/xtables.lock`, or `$XTABLES_LOCKFILE`
//!   like iptables itself) BEFORE re-reading the table with its own reader, re-checks the content
//!   the decision was made on, and keeps holding it while the restore runs, so no lock-respecting
//!   writer (iptables, iptables-restore, kube-proxy, CNIs) can change the table in between.
//!   (The lock serialises writers only: a writer that ignores it is still caught by the content
//!   checks of the restore itself, see above.)
//! - The restore takes the xtables lock itself and, measured on iptables 1.8.9 (legacy) on this
//!   project's machines: without `-w` it WAITS for the lock indefinitely (it would deadlock on the
//!   lock netmend holds), with `-w N` it gives up after N s (exit 4, "Another app is currently
//!   holding the xtables lock"), and with `XTABLES_LOCKFILE` pointing at another file it takes that
//!   file's lock instead and runs at once. So the restore is run with `XTABLES_LOCKFILE` set to a
//!   private file of netmend's: netmend's lock on the real file is what keeps other writers out.
//!   `iptables-legacy-save` takes no lock. (The e2e test
//!   `netmend_holds_the_iptables_lock_and_its_restore_runs_under_it` pins this behaviour.)
//! - A rule whose rendering (model::render) is not exactly what iptables-save prints for it cannot
//!   be named by content: the fix is blocked with that reason instead of falling back to a
//!   position. The only tolerated differences are the ones the model cannot tell apart (see
//!   [`exact_spec`]: where the `-m comment` clause sits, a one-port `multiport`); the spec sent is
//!   then the line iptables-save prints.
//! - A restore killed or timed out after it started may or may not have committed:
//!   [`LegacyWriteError::CommitUnknown`]; the caller settles it with a re-read.
//!
//! One file on purpose: the lock, the re-read under it, the plan by content and the restore script
//! are one write protocol; split, each part would be unsafe to call alone.

use crate::model::finding::{FixAction, NarrowPorts, RuleRef};
use crate::model::render::{action_fingerprint, rule_spec};
use crate::model::ruleset::{Family, Table};
use crate::observe::iptables_legacy::{self, LegacyError};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The lock iptables uses unless `XTABLES_LOCKFILE` names another.
pub const DEFAULT_LOCK_PATH: &str = "/run/xtables.lock";
/// How long to wait for the xtables lock (a kube-proxy restore of a large table holds it a while).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restore may run before it is killed (its commit is then unknown).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of a restore script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptOp {
    /// `-D CHAIN SPEC`: deletes the first rule of CHAIN equal to SPEC, or fails the batch.
    DeleteRule { chain: String, spec: String },
    /// `-R CHAIN POSITION SPEC`: replaces the rule at POSITION, a position taken from the read
    /// made under the xtables lock and checked there to hold the rule the decision was made on
    /// (no lock-respecting writer can move it before the restore commits).
    ReplaceRule {
        chain: String,
        position: usize,
        spec: String,
    },
    /// `-F CHAIN`.
    FlushChain(String),
    /// `-X CHAIN` (fails the batch if the chain is referenced or not empty).
    DeleteChain(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LegacyWriteError {
    #[error("{tool} not found on PATH, /usr/sbin or /sbin: cannot change iptables-legacy {family} tables")]
    ToolMissing { tool: &'static str, family: Family },
    #[error("cannot take the xtables lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "nothing changed: the xtables lock {path} stayed held by another writer for {waited:?}"
    )]
    LockBusy { path: String, waited: Duration },
    #[error("nothing changed: re-reading legacy {family} {table} under the xtables lock failed: {source}")]
    Read {
        family: Family,
        table: String,
        source: LegacyError,
    },
    #[error("nothing changed: {0}")]
    Moved(String),
    #[error("refusing to delete by position: rule {index} of {family} {table} {chain} cannot be rendered exactly (iptables-save prints `{saved}`, netmend renders `{rendered}`)")]
    Inexact {
        family: Family,
        table: String,
        chain: String,
        index: usize,
        saved: String,
        rendered: String,
    },
    #[error("refusing to build a restore script: {0}")]
    BadInput(String),
    #[error("nothing changed: running `{command}` failed to start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("nothing changed: `{command}` refused the batch ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish ({detail}); whether it committed is unknown")]
    CommitUnknown { command: String, detail: String },
}

impl LegacyWriteError {
    /// True when the content the decision was made on is no longer there (nothing was changed).
    pub fn is_moved(&self) -> bool {
        matches!(self, LegacyWriteError::Moved(_))
    }

    /// True when the fix cannot run here at all (a missing binary, a rule netmend cannot name).
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            LegacyWriteError::ToolMissing { .. } | LegacyWriteError::Inexact { .. }
        )
    }
}

/// The restore binary of `family`.
pub fn restore_tool_name(family: Family) -> &'static str {
    if family == Family::Ip6 {
        "ip6tables-legacy-restore"
    } else {
        "iptables-legacy-restore"
    }
}

/// The save binary of `family`.
pub fn save_tool_name(family: Family) -> &'static str {
    if family == Family::Ip6 {
        "ip6tables-legacy-save"
    } else {
        "iptables-legacy-save"
    }
}

fn find_tool(tool: &'static str, family: Family) -> Result<PathBuf, LegacyWriteError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    dirs.iter()
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
        .ok_or(LegacyWriteError::ToolMissing { tool, family })
}

/// Finds the restore binary for `family` (and checks the save binary is there too).
pub fn legacy_tool_available(family: Family) -> Result<PathBuf, LegacyWriteError> {
    find_tool(save_tool_name(family), family)?;
    find_tool(restore_tool_name(family), family)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The xtables lock file iptables uses: `$XTABLES_LOCKFILE` or `/run/xtables.lock`.
pub fn lock_path() -> PathBuf {
    std::env::var_os("XTABLES_LOCKFILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_PATH))
}

/// The private lock file the restore is pointed at while netmend holds the real one: in a
/// directory of the temporary directory (`$TMPDIR`, the chart's emptyDir `/tmp`; the root
/// filesystem may be read-only) that netmend creates with mode 0700 and checks is its own, so no
/// other user can plant a link there.
fn inner_lock_path() -> Result<PathBuf, LegacyWriteError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = std::env::temp_dir().join("netmend-xtables");
    let refused = |detail: String| LegacyWriteError::Lock {
        path: dir.display().to_string(),
        source: std::io::Error::other(detail),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refused(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| refused(e.to_string()))?;
    let euid = crate::sys::process::effective_uid();
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(refused(
            "not a private directory of this user; refusing to use it".into(),
        ));
    }
    Ok(dir.join("restore.lock"))
}

/// The xtables lock, held until dropped (closing the descriptor releases the flock).
#[derive(Debug)]
pub struct XtablesLock {
    file: File,
    path: PathBuf,
}

impl XtablesLock {
    /// Takes the exclusive lock on `path`, polling for up to `timeout`.
    pub fn acquire_at(path: &Path, timeout: Duration) -> Result<XtablesLock, LegacyWriteError> {
        let shown = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| LegacyWriteError::Lock {
                path: shown.clone(),
                source,
            })?;
        let started = Instant::now();
        loop {
            let error = match crate::sys::file::flock(
                file.as_fd(),
                crate::sys::file::LockKind::Exclusive,
                false,
            ) {
                Ok(()) => {
                    return Ok(XtablesLock {
                        file,
                        path: path.to_path_buf(),
                    })
                }
                Err(error) => error,
            };
            match error.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => {
                    return Err(LegacyWriteError::Lock {
                        path: shown,
                        source: error,
                    })
                }
            }
            if started.elapsed() >= timeout {
                return Err(LegacyWriteError::LockBusy {
                    path: shown,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Takes the lock iptables uses ([`lock_path`]).
    pub fn acquire(timeout: Duration) -> Result<XtablesLock, LegacyWriteError> {
        XtablesLock::acquire_at(&lock_path(), timeout)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor holding the lock.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

fn check_word(what: &str, value: &str) -> Result<(), LegacyWriteError> {
    if value.is_empty()
        || value.len() > 28
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'')
    {
        return Err(LegacyWriteError::BadInput(format!(
            "{what} {value:?} is not a valid iptables name"
        )));
    }
    Ok(())
}

/// The restore script for `table`: `*table`, the ops in order, `COMMIT`. Refuses names and specs
/// that could not be passed through a restore line intact (whitespace in names, line breaks,
/// an empty spec) rather than building a different script.
pub fn restore_script(table: &str, ops: &[ScriptOp]) -> Result<String, LegacyWriteError> {
    check_word("table", table)?;
    if ops.is_empty() {
        return Err(LegacyWriteError::BadInput("no operation".into()));
    }
    let mut out = format!("*{table}\n");
    for op in ops {
        match op {
            ScriptOp::DeleteRule { chain, spec } => {
                check_word("chain", chain)?;
                let spec = spec.trim();
                if spec.is_empty() || spec.contains(['\n', '\r', '\0']) {
                    return Err(LegacyWriteError::BadInput(format!(
                        "rule spec {spec:?} of {chain} is empty or spans lines"
                    )));
                }
                out.push_str(&format!("-D {chain} {spec}\n"));
            }
            ScriptOp::ReplaceRule {
                chain,
                position,
                spec,
            } => {
                check_word("chain", chain)?;
                let spec = spec.trim();
                if spec.is_empty() || spec.contains(['\n', '\r', '\0']) || *position == 0 {
                    return Err(LegacyWriteError::BadInput(format!(
                        "replacement {spec:?} of {chain} rule {position} is empty, spans lines or has no position"
                    )));
                }
                out.push_str(&format!("-R {chain} {position} {spec}\n"));
            }
            ScriptOp::FlushChain(chain) => {
                check_word("chain", chain)?;
                out.push_str(&format!("-F {chain}\n"));
            }
            ScriptOp::DeleteChain(chain) => {
                check_word("chain", chain)?;
                out.push_str(&format!("-X {chain}\n"));
            }
        }
    }
    out.push_str("COMMIT\n");
    Ok(out)
}

/// The rule lines of `chain` in iptables-save output, each without its `-A CHAIN ` prefix, in
/// order (counters are not asked for, so none are printed).
pub fn saved_chain_rules<'a>(save: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    let bare = format!("-A {chain}");
    save.lines()
        .filter_map(|l| {
            if l == bare {
                Some("")
            } else {
                l.strip_prefix(&prefix)
            }
        })
        .collect()
}

/// The spec to delete a rule netmend renders as `rendered` when iptables-save prints it as
/// `saved`: `saved` when both are the same, or when they differ only in what the model cannot
/// tell apart (so the model's rule is the same either way):
/// - where the one `-m comment --comment X` clause sits among the matches (the model keeps the
///   comment apart from the matches);
/// - a single port or port range given as `-m multiport --dports N` instead of
///   `-m tcp --dport N` (both decode to the same port match).
///
/// None when the rendering is not exact: the rule cannot be named by content.
pub fn exact_spec(rendered: &str, saved: &str) -> Option<String> {
    if rendered == saved {
        return Some(saved.to_string());
    }
    let (rendered_words, saved_words) = match comment_clause(rendered) {
        Some(clause) => {
            if rendered.matches(clause).count() != 1 || saved.matches(clause).count() != 1 {
                return None;
            }
            (
                canonical_words(&rendered.replacen(clause, " ", 1)),
                canonical_words(&saved.replacen(clause, " ", 1)),
            )
        }
        None => (canonical_words(rendered), canonical_words(saved)),
    };
    (rendered_words == saved_words).then(|| saved.to_string())
}

/// The `-m comment --comment X` clause of a rendered rule (X quoted with escapes, or bare).
fn comment_clause(text: &str) -> Option<&str> {
    const HEAD: &str = "-m comment --comment ";
    let start = text.find(HEAD)?;
    let after = &text[start + HEAD.len()..];
    let arg_len = if let Some(quoted) = after.strip_prefix('"') {
        let mut escaped = false;
        let mut end = None;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i + 2);
                    break;
                }
                _ => {}
            }
        }
        end?
    } else {
        after.find(' ').unwrap_or(after.len())
    };
    Some(&text[start..start + HEAD.len() + arg_len])
}

/// The words of a spec with a one-range `-m multiport [!] --dports N` written as the protocol's
/// own `-m tcp [!] --dport N` (comparison only).
fn canonical_words(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    let proto = words
        .windows(2)
        .find(|w| w[0] == "-p")
        .map(|w| w[1].to_string());
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "-m" && words.get(i + 1) == Some(&"multiport") {
            let negated = words.get(i + 2) == Some(&"!");
            let at = if negated { i + 3 } else { i + 2 };
            let flag = match words.get(at) {
                Some(&"--dports") => Some("--dport"),
                Some(&"--sports") => Some("--sport"),
                _ => None,
            };
            if let (Some(flag), Some(value), Some(proto)) = (flag, words.get(at + 1), &proto) {
                if !value.contains(',') {
                    out.extend(["-m".to_string(), proto.clone()]);
                    if negated {
                        out.push("!".into());
                    }
                    out.extend([flag.to_string(), value.to_string()]);
                    i = at + 2;
                    continue;
                }
            }
        }
        out.push(words[i].to_string());
        i += 1;
    }
    out
}

/// Runs `tool --noflush` fed `script` on stdin, with the private inner lock (the caller holds the
/// real xtables lock), killing it after `timeout`. A non-zero exit is a refused batch (nothing
/// changed); a kill or timeout after start is [`LegacyWriteError::CommitUnknown`].
pub fn run_restore(
    tool: &Path,
    script: &str,
    inner_lock: &Path,
    timeout: Duration,
) -> Result<(), LegacyWriteError> {
    let command = format!("{} --noflush", tool.display());
    let mut child = Command::new(tool)
        .arg("--noflush")
        .env("XTABLES_LOCKFILE", inner_lock)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LegacyWriteError::Spawn {
            command: command.clone(),
            source,
        })?;
    // The script is small (a pipe buffer holds it); a write error means the child died early,
    // which its exit status below reports.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LegacyWriteError::CommitUnknown {
                    command,
                    detail: format!("killed after {timeout:?}"),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(error) => {
                return Err(LegacyWriteError::CommitUnknown {
                    command,
                    detail: format!("waiting for it failed: {error}"),
                })
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    if status.success() {
        return Ok(());
    }
    if status.code().is_none() {
        // Killed by a signal (not by us): it may have died before or after the commit.
        return Err(LegacyWriteError::CommitUnknown {
            command,
            detail: format!("{status}"),
        });
    }
    Err(LegacyWriteError::Failed {
        command,
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    })
}

/// `iptables-legacy-save -t TABLE` of `family`.
pub fn save_table(family: Family, table: &str) -> Result<String, LegacyWriteError> {
    let tool = find_tool(save_tool_name(family), family)?;
    let command = format!("{} -t {table}", save_tool_name(family));
    let out = Command::new(tool)
        .args(["-t", table])
        .output()
        .map_err(|source| LegacyWriteError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LegacyWriteError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The script ops of `action` on `table` as read under the lock, after re-checking that the
/// content the decision was made on is still there: the fingerprint matches, and every rule to
/// delete is found by its spec (not its position) and renders exactly as iptables-save (`save`)
/// prints it.
pub fn plan(
    table: &Table,
    save: &str,
    action: &FixAction,
) -> Result<Vec<ScriptOp>, LegacyWriteError> {
    let (rules, narrow, chains, delete): (&[_], &[NarrowPorts], Vec<&String>, bool) = match action {
        FixAction::FlushChain {
            chain,
            delete_chain,
            content_hash,
            ..
        } => {
            check_fingerprint(table, action, *content_hash)?;
            (&[], &[], vec![chain], *delete_chain)
        }
        FixAction::RemoveRules {
            rules,
            delete_chains,
            content_hash,
            narrow,
            ..
        } => {
            check_fingerprint(table, action, *content_hash)?;
            (
                rules.as_slice(),
                narrow.as_slice(),
                delete_chains.iter().collect(),
                true,
            )
        }
        FixAction::SetPromisc { .. }
        | FixAction::ClearPromisc { .. }
        | FixAction::CordonNode { .. }
        | FixAction::UncordonNode { .. }
        | FixAction::SetServiceShape { .. } => {
            return Err(LegacyWriteError::BadInput(
                "not a legacy table change".into(),
            ))
        }
    };
    let mut ops = Vec::new();
    // How many rules of each (chain, spec) the earlier refs already claimed: identical rules are
    // claimed in order, so two refs to two identical rules need two of them.
    let mut claimed: Vec<(&str, &str, usize)> = Vec::new();
    // Narrowed jumps first: their positions are those of this read, before any deletion.
    for n in narrow {
        let r = &n.rule;
        let (index, _) = locate(table, save, r, &claimed)?;
        claimed.push((&r.chain, &r.spec, index));
        ops.push(ScriptOp::ReplaceRule {
            chain: r.chain.clone(),
            position: index + 1,
            spec: n.rule_spec.clone(),
        });
    }
    for r in rules {
        let (index, spec) = locate(table, save, r, &claimed)?;
        claimed.push((&r.chain, &r.spec, index));
        ops.push(ScriptOp::DeleteRule {
            chain: r.chain.clone(),
            spec,
        });
    }
    for chain in &chains {
        ops.push(ScriptOp::FlushChain((*chain).clone()));
    }
    if delete {
        for chain in &chains {
            ops.push(ScriptOp::DeleteChain((*chain).clone()));
        }
    }
    Ok(ops)
}

/// Finds `r` in `table` by its spec (skipping the identical rules `claimed` already took) and
/// checks it against what iptables-save prints for it: its index in the chain and the exact spec
/// to send.
fn locate(
    table: &Table,
    save: &str,
    r: &RuleRef,
    claimed: &[(&str, &str, usize)],
) -> Result<(usize, String), LegacyWriteError> {
    {
        let chain = table.chain(&r.chain).ok_or_else(|| {
            LegacyWriteError::Moved(format!("chain {} of {} is gone", r.chain, table.id))
        })?;
        let skip = claimed
            .iter()
            .filter(|(c, s, _)| *c == r.chain && *s == r.spec)
            .count();
        let index = chain
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule_spec(table, &chain.name, rule) == r.spec)
            .map(|(i, _)| i)
            .nth(skip)
            .ok_or_else(|| {
                LegacyWriteError::Moved(format!(
                    "rule `-A {} {}` is no longer in {}",
                    r.chain, r.spec, table.id
                ))
            })?;
        let saved = saved_chain_rules(save, &chain.name);
        if saved.len() != chain.rules.len() {
            return Err(LegacyWriteError::Moved(format!(
                "iptables-save shows {} rules in {} {} where the reader saw {}",
                saved.len(),
                table.id,
                chain.name,
                chain.rules.len()
            )));
        }
        let spec = exact_spec(&r.spec, saved[index]).ok_or_else(|| LegacyWriteError::Inexact {
            family: table.id.family,
            table: table.id.name.clone(),
            chain: chain.name.clone(),
            index: index + 1,
            saved: saved[index].to_string(),
            rendered: r.spec.clone(),
        })?;
        Ok((index, spec))
    }
}

fn check_fingerprint(
    table: &Table,
    action: &FixAction,
    expected: u64,
) -> Result<(), LegacyWriteError> {
    if action_fingerprint(table, action) != expected {
        return Err(LegacyWriteError::Moved(format!(
            "what the fix touches in {} changed since it was decided",
            table.id
        )));
    }
    Ok(())
}

/// Applies a ruleset `action` on a legacy table of the calling thread's network namespace: takes
/// the xtables lock, re-reads the table with netmend's reader, re-checks the content ([`plan`])
/// and runs one restore, all under the lock. Returns the script that was committed.
pub fn apply_action(action: &FixAction) -> Result<String, LegacyWriteError> {
    let table_ref = match action {
        FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => table,
        FixAction::SetPromisc { .. }
        | FixAction::ClearPromisc { .. }
        | FixAction::CordonNode { .. }
        | FixAction::UncordonNode { .. }
        | FixAction::SetServiceShape { .. } => {
            return Err(LegacyWriteError::BadInput(
                "not a legacy table change".into(),
            ))
        }
    };
    let family = table_ref.family;
    let name = table_ref.table.as_str();
    check_word("table", name)?;
    let restore = legacy_tool_available(family)?;
    let inner_lock = inner_lock_path()?;
    let lock = XtablesLock::acquire(LOCK_TIMEOUT)?;
    let read_error = |source| LegacyWriteError::Read {
        family,
        table: name.to_string(),
        source,
    };
    // Only a listed table is read: asking the kernel for a missing one would create it.
    if !iptables_legacy::table_names(family)
        .map_err(read_error)?
        .iter()
        .any(|t| t == name)
    {
        return Err(LegacyWriteError::Moved(format!(
            "legacy table {family} {name} is gone"
        )));
    }
    let (info, blob) = iptables_legacy::read_table_blob(family, name).map_err(read_error)?;
    let table = iptables_legacy::decode_table_releasing(family, &info, blob).map_err(read_error)?;
    let save = save_table(family, name)?;
    let ops = plan(&table, &save, action)?;
    let script = restore_script(name, &ops)?;
    run_restore(&restore, &script, &inner_lock, RESTORE_TIMEOUT)?;
    drop(lock);
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_carries_exact_specs_then_flushes_then_deletes() {
        let script = restore_script(
            "nat",
            &[
                ScriptOp::DeleteRule {
                    chain: "CNI-HOSTPORT-DNAT".into(),
                    spec: r#"-p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0f3c9a\"" -m multiport --dports 6443 -j CNI-DN-1"#.into(),
                },
                ScriptOp::FlushChain("CNI-DN-1".into()),
                ScriptOp::DeleteChain("CNI-DN-1".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            script,
            "*nat\n-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"0f3c9a\\\"\" -m multiport --dports 6443 -j CNI-DN-1\n-F CNI-DN-1\n-X CNI-DN-1\nCOMMIT\n"
        );
    }

    /// `iptables-legacy-save` (1.8.9) of the tables captured in agent/testdata/legacy, without
    /// its timestamp comments (the rules of tests/tests/legacy.rs).
    const SAVED_V4_NAT: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_POST_nat - [0:0]
:CNI-DN-1a2b3c4d5e6f7a8b9c0d1 - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:OLD_CILIUM_POST_nat - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
-A POSTROUTING -m comment --comment "old cilium feeder" -j OLD_CILIUM_POST_nat
-A CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
-A CILIUM_POST_nat -s 10.42.0.5/32 -o eth0 -j SNAT --to-source 192.168.1.10
-A CNI-DN-1a2b3c4d5e6f7a8b9c0d1 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0f3c9a\"" -m multiport --dports 6443 -j CNI-DN-1a2b3c4d5e6f7a8b9c0d1
-A OLD_CILIUM_POST_nat -s 10.42.0.0/24 ! -d 10.42.0.0/24 ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
COMMIT
"#;
    const SAVED_V4_FILTER: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FW - [0:0]
-A INPUT -i eth0 -p udp -m udp --sport 53 -j ACCEPT
-A FORWARD -g KUBE-FW
-A KUBE-FW -m mark --mark 0x4000/0x4000 -j DROP
-A KUBE-FW -p tcp -m multiport --dports 80,8000:8100 -j ACCEPT
-A KUBE-FW -m statistic --mode random --probability 0.50000000000 -j RETURN
-A KUBE-FW -j LOG
COMMIT
"#;
    const SAVED_V6_NAT: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j DNAT --to-destination [fd00:42::5]:8443
-A POSTROUTING -s fd00:42::/64 ! -o cilium_+ -j MASQUERADE
COMMIT
"#;

    fn captured(family: Family, name: &str) -> Table {
        use crate::observe::iptables_legacy::{decode_table, TableInfo, GETINFO_LEN};
        let path = format!("{}/testdata/legacy/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let info = TableInfo::parse(&file).expect("getinfo header");
        decode_table(family, &info, &file[GETINFO_LEN..]).expect("decode table")
    }

    /// Every captured rule, rendered by the model, against what iptables-save prints: the ones
    /// netmend can name by content, and the ones it must refuse to delete.
    #[test]
    fn captured_rules_render_exactly_or_are_refused() {
        let mut exact = 0;
        let mut inexact = Vec::new();
        for (family, name, save) in [
            (Family::Ip, "ipv4-nat", SAVED_V4_NAT),
            (Family::Ip, "ipv4-filter", SAVED_V4_FILTER),
            (Family::Ip6, "ipv6-nat", SAVED_V6_NAT),
        ] {
            let table = captured(family, name);
            for chain in &table.chains {
                let saved = saved_chain_rules(save, &chain.name);
                assert_eq!(saved.len(), chain.rules.len(), "{name} {}", chain.name);
                for (rule, saved) in chain.rules.iter().zip(saved) {
                    let spec = rule_spec(&table, &chain.name, rule);
                    match exact_spec(&spec, saved) {
                        Some(s) => {
                            assert_eq!(s, saved);
                            exact += 1;
                        }
                        None => inexact.push(format!("{} {}", chain.name, saved)),
                    }
                }
            }
        }
        // Negations, comments with escaped quotes, a one-port multiport, SNAT/DNAT/MASQUERADE,
        // goto, mark, a port list, a statistic probability with iptables-save's 11 digits: every
        // captured rule is named exactly.
        assert_eq!(exact, 17, "{inexact:?}");
        assert!(inexact.is_empty(), "{inexact:?}");
    }

    #[test]
    fn a_narrowed_jump_is_replaced_at_its_position_of_this_read_before_the_deletions() {
        use crate::model::finding::{NarrowPorts, RuleRef, TableRef};
        use crate::model::ruleset::PortRange;
        let table = captured(Family::Ip, "ipv4-nat");
        let hostport = table.chain("CNI-HOSTPORT-DNAT").unwrap();
        let dn = table.chain("CNI-DN-1a2b3c4d5e6f7a8b9c0d1").unwrap();
        let narrowed = "-p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"0f3c9a\\\"\" -m multiport --dports 443 -j CNI-DN-1a2b3c4d5e6f7a8b9c0d1";
        let mut action = FixAction::RemoveRules {
            table: TableRef {
                backend: crate::model::ruleset::Backend::Legacy,
                family: Family::Ip,
                table: "nat".into(),
            },
            rules: vec![RuleRef {
                chain: dn.name.clone(),
                handle: 1,
                spec: rule_spec(&table, &dn.name, &dn.rules[0]),
            }],
            delete_chains: Vec::new(),
            content_hash: 0,
            narrow: vec![NarrowPorts {
                rule: RuleRef {
                    chain: hostport.name.clone(),
                    // A stale position: the writer finds the rule by its spec, not by this.
                    handle: 9,
                    spec: rule_spec(&table, &hostport.name, &hostport.rules[0]),
                },
                ports: vec![PortRange::single(6443)],
                keep: vec![PortRange::single(443)],
                rule_spec: narrowed.into(),
            }],
        };
        let hash = action_fingerprint(&table, &action);
        if let FixAction::RemoveRules { content_hash, .. } = &mut action {
            *content_hash = hash;
        }
        let ops = plan(&table, SAVED_V4_NAT, &action).unwrap();
        assert_eq!(
            restore_script("nat", &ops).unwrap(),
            format!(
                "*nat\n-R CNI-HOSTPORT-DNAT 1 {narrowed}\n-D CNI-DN-1a2b3c4d5e6f7a8b9c0d1 -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443\nCOMMIT\n"
            )
        );
        // The jump changed since the decision: moved, no script.
        let mut changed = table.clone();
        changed
            .chains
            .iter_mut()
            .find(|c| c.name == "CNI-HOSTPORT-DNAT")
            .unwrap()
            .rules[0]
            .comment = Some("someone else's".into());
        assert!(plan(&changed, SAVED_V4_NAT, &action)
            .unwrap_err()
            .is_moved());
    }

    #[test]
    fn the_hijack_plan_of_captured_rules_is_one_exact_script() {
        let table = captured(Family::Ip, "ipv4-nat");
        let hostport = table.chain("CNI-HOSTPORT-DNAT").unwrap();
        let mut action = FixAction::RemoveRules {
            table: crate::model::finding::TableRef {
                backend: crate::model::ruleset::Backend::Legacy,
                family: Family::Ip,
                table: "nat".into(),
            },
            rules: vec![crate::model::finding::RuleRef {
                chain: hostport.name.clone(),
                handle: 1,
                spec: rule_spec(&table, &hostport.name, &hostport.rules[0]),
            }],
            delete_chains: vec!["CNI-DN-1a2b3c4d5e6f7a8b9c0d1".into()],
            content_hash: 0,
            narrow: Vec::new(),
        };
        let hash = action_fingerprint(&table, &action);
        if let FixAction::RemoveRules { content_hash, .. } = &mut action {
            *content_hash = hash;
        }
        let ops = plan(&table, SAVED_V4_NAT, &action).unwrap();
        assert_eq!(
            restore_script("nat", &ops).unwrap(),
            "*nat\n\
             -D CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"0f3c9a\\\"\" -m multiport --dports 6443 -j CNI-DN-1a2b3c4d5e6f7a8b9c0d1\n\
             -F CNI-DN-1a2b3c4d5e6f7a8b9c0d1\n\
             -X CNI-DN-1a2b3c4d5e6f7a8b9c0d1\n\
             COMMIT\n"
        );

        // The same decision on a table where the DNAT target changed: moved, no script.
        let mut changed = table.clone();
        let dn = changed
            .chains
            .iter_mut()
            .find(|c| c.name == "CNI-DN-1a2b3c4d5e6f7a8b9c0d1")
            .unwrap();
        dn.rules[0].action = crate::model::ruleset::Action::Dnat {
            range: crate::model::ruleset::NatRange {
                addresses: Some(("10.42.0.9".parse().unwrap(), "10.42.0.9".parse().unwrap())),
                ports: None,
            },
        };
        let err = plan(&changed, SAVED_V4_NAT, &action).unwrap_err();
        assert!(err.is_moved(), "{err}");

        // A rule gone from its chain: moved.
        let mut gone = table.clone();
        gone.chains
            .iter_mut()
            .find(|c| c.name == "CNI-HOSTPORT-DNAT")
            .unwrap()
            .rules
            .clear();
        let err = plan(&gone, SAVED_V4_NAT, &action).unwrap_err();
        assert!(err.is_moved(), "{err}");
    }

    #[test]
    fn script_refuses_what_a_restore_line_cannot_carry() {
        let del = |chain: &str, spec: &str| ScriptOp::DeleteRule {
            chain: chain.into(),
            spec: spec.into(),
        };
        for (table, op) in [
            ("nat", del("A B", "-j RETURN")),
            ("nat", del("A", "-j RETURN\n-F KUBE-SERVICES")),
            ("nat", del("A", "  ")),
            ("n at", del("A", "-j RETURN")),
            ("nat", ScriptOp::FlushChain(String::new())),
            (
                "nat",
                ScriptOp::DeleteChain("A-VERY-LONG-CHAIN-NAME-OVER-28-BYTES".into()),
            ),
        ] {
            let err = restore_script(table, std::slice::from_ref(&op)).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("refusing to build a restore script"),
                "{op:?}: {err}"
            );
        }
        assert!(restore_script("nat", &[]).is_err());
    }

    #[test]
    fn exact_spec_tolerates_only_the_comment_position() {
        let rendered = r#"-p tcp -m multiport --dports 6443 -m comment --comment "dnat name: \"cbr0\"" -j CNI-DN-1"#;
        let saved = r#"-p tcp -m comment --comment "dnat name: \"cbr0\"" -m multiport --dports 6443 -j CNI-DN-1"#;
        assert_eq!(exact_spec(rendered, saved).as_deref(), Some(saved));
        assert_eq!(exact_spec(saved, saved).as_deref(), Some(saved));
        // A bare comment word.
        assert_eq!(
            exact_spec(
                "-m addrtype --dst-type LOCAL -m comment --comment x -j A",
                "-m comment --comment x -m addrtype --dst-type LOCAL -j A"
            )
            .as_deref(),
            Some("-m comment --comment x -m addrtype --dst-type LOCAL -j A")
        );
        // Any other difference is not exact.
        assert_eq!(
            exact_spec(
                "-p tcp -m multiport --dports 6443 -j A",
                "-p tcp -m multiport ! --dports 6443 -j A"
            ),
            None
        );
        assert_eq!(
            exact_spec(
                r#"-p tcp -m comment --comment "a b" -j A"#,
                r#"-p tcp -m comment --comment "a c" -j A"#
            ),
            None
        );
        // A one-port multiport match is the same port match as the protocol's own.
        let saved = r#"-p tcp -m comment --comment "dnat name: \"cbr0\"" -m multiport --dports 6443 -j CNI-DN-1"#;
        assert_eq!(
            exact_spec(
                r#"-p tcp -m tcp --dport 6443 -m comment --comment "dnat name: \"cbr0\"" -j CNI-DN-1"#,
                saved
            )
            .as_deref(),
            Some(saved)
        );
        assert_eq!(
            exact_spec(
                "-p udp -m udp ! --sport 1:9 -j A",
                "-p udp -m multiport ! --sports 1:9 -j A"
            )
            .as_deref(),
            Some("-p udp -m multiport ! --sports 1:9 -j A")
        );
        // ...but not a different port, nor a real list.
        assert_eq!(
            exact_spec(
                "-p tcp -m tcp --dport 6443 -j A",
                "-p tcp -m multiport --dports 6444 -j A"
            ),
            None
        );
        assert_eq!(
            exact_spec(
                "-p tcp -m tcp --dport 80 -j A",
                "-p tcp -m multiport --dports 80,81 -j A"
            ),
            None
        );
        // Two comments in the save (the model joins them): not exact.
        assert_eq!(
            exact_spec(
                "-m comment --comment \"x; y\" -j A",
                "-m comment --comment x -m comment --comment y -j A"
            ),
            None
        );
    }

    #[test]
    fn saved_chain_rules_strip_the_append_prefix() {
        let save = "*nat\n:A - [0:0]\n:AB - [0:0]\n-A A -j RETURN\n-A AB -j ACCEPT\n-A A\nCOMMIT\n";
        assert_eq!(saved_chain_rules(save, "A"), vec!["-j RETURN", ""]);
        assert_eq!(saved_chain_rules(save, "AB"), vec!["-j ACCEPT"]);
    }

    #[test]
    fn a_restore_that_does_not_finish_is_unknown() {
        let dir = std::env::temp_dir();
        let err = run_restore(
            Path::new("/bin/sleep"),
            "*nat\nCOMMIT\n",
            &dir.join("netmend-unit-inner.lock"),
            Duration::from_millis(100),
        );
        // `sleep --noflush` fails at once (an unknown option): a refused batch, nothing changed.
        assert!(
            matches!(err, Err(LegacyWriteError::Failed { .. })),
            "{err:?}"
        );
        let script = dir.join(format!("netmend-unit-hang-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\nexec sleep 5\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = Instant::now();
        let err = run_restore(
            &script,
            "*nat\nCOMMIT\n",
            &dir.join("netmend-unit-inner.lock"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        std::fs::remove_file(&script).unwrap();
        assert!(
            matches!(err, LegacyWriteError::CommitUnknown { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(
            err.to_string().contains("whether it committed is unknown"),
            "{err}"
        );
    }

    #[test]
    fn the_lock_excludes_a_second_holder_until_dropped() {
        let path = std::env::temp_dir().join(format!("netmend-unit-lock-{}", std::process::id()));
        let first = XtablesLock::acquire_at(&path, Duration::from_millis(10)).unwrap();
        let busy = XtablesLock::acquire_at(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(busy, LegacyWriteError::LockBusy { .. }), "{busy}");
        drop(first);
        let again = XtablesLock::acquire_at(&path, Duration::from_millis(50)).unwrap();
        assert!(again.fd() >= 0);
        drop(again);
        std::fs::remove_file(&path).unwrap();
    }
}
