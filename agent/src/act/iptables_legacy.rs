//! iptables-legacy writes: deletes rules, flushes and deletes chains of x_tables by running the
//! `iptables-legacy` / `ip6tables-legacy` binaries with `-w` (wait for the xtables lock, which
//! other writers such as kube-proxy and CNIs hold while they write).
//!
//! Why binaries: the kernel's only write interface (`IPT_SO_SET_REPLACE`) replaces the whole table
//! blob, so a hand-built blob would race every other writer and drop their changes; the binaries
//! take the xtables lock and rewrite the table from a fresh read.
//!
//! Legacy writes are not one transaction: each op is its own table replacement. [`apply`] therefore
//! orders the ops so that stopping after any failed op leaves a consistent table:
//! 1. rule deletions first, per (family, table, chain) from the HIGHEST position down (deleting a
//!    rule renumbers the rules after it; going downwards keeps the remaining positions valid);
//! 2. then chain flushes;
//! 3. then chain deletions (the kernel refuses to delete a chain still jumped to or not empty, so
//!    the referencing rules and the chain's own rules must be gone first).
//!
//! Idempotence: a flush is idempotent; deleting a chain that is already gone fails loudly (the
//! tool's "No chain/target/match by that name") instead of touching anything else. Deleting by
//! POSITION is not idempotent (a second run would delete whatever moved into that position): plan
//! the positions from a fresh read (the reader's rule handle is the position) and apply once.
//! A missing binary is reported as [`LegacyWriteError::ToolMissing`] before anything runs, so the
//! caller can report `blocked`.
//!
//! [`apply_restore`] is the one transactional path: it feeds `-R`/`-D`/`-F`/`-X` commands of one
//! table to `iptables-legacy-restore --noflush`, which applies them to one copy of the table and
//! replaces it once (all or nothing). The hostport fix uses it to narrow a jump and delete the
//! hijacked port's rules together.

use crate::model::ruleset::Family;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One legacy change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyOp {
    /// `iptables-legacy -t TABLE -D CHAIN POSITION` (1-based position, as the reader's handle).
    DeleteRule {
        family: Family,
        table: String,
        chain: String,
        rule_spec_position: u64,
    },
    /// `iptables-legacy -t TABLE -F CHAIN`.
    FlushChain {
        family: Family,
        table: String,
        chain: String,
    },
    /// `iptables-legacy -t TABLE -X CHAIN` (the chain must be empty and unreferenced).
    DeleteChain {
        family: Family,
        table: String,
        chain: String,
    },
}

impl LegacyOp {
    pub fn family(&self) -> Family {
        match self {
            LegacyOp::DeleteRule { family, .. }
            | LegacyOp::FlushChain { family, .. }
            | LegacyOp::DeleteChain { family, .. } => *family,
        }
    }

    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-w".to_string()];
        match self {
            LegacyOp::DeleteRule {
                table,
                chain,
                rule_spec_position,
                ..
            } => args.extend([
                "-t".into(),
                table.clone(),
                "-D".into(),
                chain.clone(),
                rule_spec_position.to_string(),
            ]),
            LegacyOp::FlushChain { table, chain, .. } => {
                args.extend(["-t".into(), table.clone(), "-F".into(), chain.clone()])
            }
            LegacyOp::DeleteChain { table, chain, .. } => {
                args.extend(["-t".into(), table.clone(), "-X".into(), chain.clone()])
            }
        }
        args
    }

    fn rank(&self) -> u8 {
        match self {
            LegacyOp::DeleteRule { .. } => 0,
            LegacyOp::FlushChain { .. } => 1,
            LegacyOp::DeleteChain { .. } => 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LegacyWriteError {
    #[error("{tool} not found on PATH, /usr/sbin or /sbin: cannot change iptables-legacy {family} tables")]
    ToolMissing { tool: &'static str, family: Family },
    #[error("running `{command}` failed to start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "refusing to delete rule position 0 of {family} {table} {chain}: positions are 1-based"
    )]
    BadPosition {
        family: Family,
        table: String,
        chain: String,
    },
}

/// The binary writing legacy tables of `family`.
pub fn tool_name(family: Family) -> &'static str {
    if family == Family::Ip6 {
        "ip6tables-legacy"
    } else {
        "iptables-legacy"
    }
}

/// Finds the legacy binary for `family` on PATH, then in /usr/sbin and /sbin.
pub fn legacy_tool_available(family: Family) -> Result<PathBuf, LegacyWriteError> {
    find_tool(tool_name(family), family)
}

/// The restore binary for `family`.
pub fn restore_tool_name(family: Family) -> &'static str {
    if family == Family::Ip6 {
        "ip6tables-legacy-restore"
    } else {
        "iptables-legacy-restore"
    }
}

/// The input of one `iptables-legacy-restore --noflush` run: the table, the commands, COMMIT.
pub fn restore_input(table: &str, commands: &[String]) -> String {
    let mut text = format!("*{table}\n");
    for c in commands {
        text.push_str(c);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// Applies `commands` (iptables-restore lines without `*table`/COMMIT) to `table` in one table
/// replacement, waiting for the xtables lock. Nothing changes when any command fails.
pub fn apply_restore(
    family: Family,
    table: &str,
    commands: &[String],
) -> Result<(), LegacyWriteError> {
    use std::io::Write;
    if commands
        .iter()
        .any(|c| c.contains('\n') || c.trim().is_empty())
    {
        return Err(LegacyWriteError::Failed {
            command: restore_tool_name(family).to_string(),
            status: "not run".into(),
            stderr: "a restore command is empty or spans lines".into(),
        });
    }
    let tool = find_tool(restore_tool_name(family), family)?;
    let command = format!("{} -w --noflush", restore_tool_name(family));
    let mut child = Command::new(&tool)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| LegacyWriteError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(restore_input(table, commands).as_bytes())
            .map_err(|source| LegacyWriteError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
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
    Ok(())
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

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The order [`apply`] runs `ops` in: rule deletions (per chain, highest position first), then
/// flushes, then chain deletions; otherwise the caller's order is kept.
pub fn ordered(ops: &[LegacyOp]) -> Vec<LegacyOp> {
    let mut out: Vec<(usize, LegacyOp)> = ops.iter().cloned().enumerate().collect();
    out.sort_by(|(ia, a), (ib, b)| {
        a.rank().cmp(&b.rank()).then_with(|| match (a, b) {
            (
                LegacyOp::DeleteRule {
                    rule_spec_position: pa,
                    ..
                },
                LegacyOp::DeleteRule {
                    rule_spec_position: pb,
                    ..
                },
            ) => pb.cmp(pa).then(ia.cmp(ib)),
            _ => ia.cmp(ib),
        })
    });
    let mut out: Vec<LegacyOp> = out.into_iter().map(|(_, op)| op).collect();
    out.dedup();
    out
}

/// Runs `ops` (in the order of [`ordered`]) with the legacy binaries; stops at the first failure,
/// which names the command and its stderr. Checks every needed binary before running anything.
pub fn apply(ops: &[LegacyOp]) -> Result<(), LegacyWriteError> {
    for op in ops {
        if let LegacyOp::DeleteRule {
            family,
            table,
            chain,
            rule_spec_position: 0,
        } = op
        {
            return Err(LegacyWriteError::BadPosition {
                family: *family,
                table: table.clone(),
                chain: chain.clone(),
            });
        }
    }
    let v4 = if ops.iter().any(|o| o.family() != Family::Ip6) {
        Some(legacy_tool_available(Family::Ip)?)
    } else {
        None
    };
    let v6 = if ops.iter().any(|o| o.family() == Family::Ip6) {
        Some(legacy_tool_available(Family::Ip6)?)
    } else {
        None
    };
    for op in ordered(ops) {
        let tool = if op.family() == Family::Ip6 { &v6 } else { &v4 };
        let Some(tool) = tool else { continue };
        let args = op.args();
        let command = format!("{} {}", tool_name(op.family()), args.join(" "));
        let out =
            Command::new(tool)
                .args(&args)
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(chain: &str, pos: u64) -> LegacyOp {
        LegacyOp::DeleteRule {
            family: Family::Ip,
            table: "nat".into(),
            chain: chain.into(),
            rule_spec_position: pos,
        }
    }

    #[test]
    fn orders_rules_high_to_low_then_flush_then_delete_chain() {
        let x = LegacyOp::DeleteChain {
            family: Family::Ip,
            table: "nat".into(),
            chain: "OLD".into(),
        };
        let f = LegacyOp::FlushChain {
            family: Family::Ip,
            table: "nat".into(),
            chain: "OLD".into(),
        };
        let got = ordered(&[
            x.clone(),
            del("POSTROUTING", 1),
            f.clone(),
            del("POSTROUTING", 3),
        ]);
        assert_eq!(
            got,
            vec![del("POSTROUTING", 3), del("POSTROUTING", 1), f, x]
        );
    }

    #[test]
    fn args_use_lock_wait() {
        assert_eq!(del("A", 2).args(), ["-w", "-t", "nat", "-D", "A", "2"]);
        assert_eq!(tool_name(Family::Ip6), "ip6tables-legacy");
    }

    #[test]
    fn position_zero_is_refused_before_running_anything() {
        let err = apply(&[del("A", 0)]).unwrap_err();
        assert!(err.to_string().contains("position 0"), "{err}");
    }
}
