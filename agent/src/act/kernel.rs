//! The kernel-backed [`Actuator`]: turns a [`FixAction`] into one nftables batch (all or nothing,
//! carrying the generation the decision was made on), into one `iptables-legacy-restore` per
//! table that deletes by content under the xtables lock (all or nothing), or into a link flag
//! change. A write whose commit cannot be known comes back as [`ActError::Unknown`].

use crate::act::iptables_legacy::{self, LegacyWriteError};
use crate::act::link;
use crate::act::nftables::{apply_batch, prepare_narrow, NarrowError, NftOp, NftWriteError};
use crate::model::finding::{FixAction, TableRef};
use crate::model::ruleset::Backend;
use crate::runtime::{ActError, ActReport, Actuator};

#[derive(Debug, Default)]
pub struct KernelActuator;

impl KernelActuator {
    pub fn new() -> KernelActuator {
        KernelActuator
    }
}

/// One backend-neutral step of a ruleset action, in the order it must run: the referencing rules
/// first, so a chain is never deleted while something still jumps to it (EBUSY), then each chain
/// is flushed and deleted.
enum Step<'a> {
    DeleteRule { chain: &'a str, handle: u64 },
    FlushChain(&'a str),
    DeleteChain(&'a str),
}

fn steps(action: &FixAction) -> Vec<Step<'_>> {
    match action {
        FixAction::FlushChain {
            chain,
            delete_chain,
            ..
        } => {
            let mut out = vec![Step::FlushChain(chain)];
            if *delete_chain {
                out.push(Step::DeleteChain(chain));
            }
            out
        }
        FixAction::RemoveRules {
            rules,
            delete_chains,
            ..
        } => rules
            .iter()
            .map(|r| Step::DeleteRule {
                chain: &r.chain,
                handle: r.handle,
            })
            .chain(
                delete_chains
                    .iter()
                    .flat_map(|c| [Step::FlushChain(c), Step::DeleteChain(c)]),
            )
            .collect(),
        FixAction::SetPromisc { .. }
        | FixAction::ClearPromisc { .. }
        | FixAction::CordonNode { .. }
        | FixAction::UncordonNode { .. }
        | FixAction::SetServiceShape { .. } => Vec::new(),
    }
}

fn action_table(action: &FixAction) -> Option<&TableRef> {
    match action {
        FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => Some(table),
        FixAction::SetPromisc { .. }
        | FixAction::ClearPromisc { .. }
        | FixAction::CordonNode { .. }
        | FixAction::UncordonNode { .. }
        | FixAction::SetServiceShape { .. } => None,
    }
}

/// The nftables operations of a ruleset action (one batch).
pub fn nft_ops(action: &FixAction) -> Vec<NftOp> {
    let Some(table) = action_table(action) else {
        return Vec::new();
    };
    let (family, name) = (table.family, &table.table);
    steps(action)
        .into_iter()
        .map(|step| match step {
            Step::DeleteRule { chain, handle } => NftOp::DeleteRule {
                family,
                table: name.clone(),
                chain: chain.to_string(),
                handle,
            },
            Step::FlushChain(chain) => NftOp::FlushChain {
                family,
                table: name.clone(),
                chain: chain.to_string(),
            },
            Step::DeleteChain(chain) => NftOp::DeleteChain {
                family,
                table: name.clone(),
                chain: chain.to_string(),
            },
        })
        .collect()
}

/// The nftables batch of an action: the narrowed jumps (read and rewritten now, guarded by the
/// generation like the rest), then the deletions. A jump whose port list is not one plain
/// `multiport` match (written by another tool or version) is left as it is, with a note: the
/// hijacked port's DNAT rules still go, so the port falls through the chain to the node.
fn nft_batch(action: &FixAction) -> Result<(Vec<NftOp>, FixAction, Vec<String>), ActError> {
    let mut ops = Vec::new();
    let mut done = action.clone();
    let mut notes = Vec::new();
    if let FixAction::RemoveRules { table, narrow, .. } = action {
        let mut kept = Vec::new();
        for n in narrow {
            match prepare_narrow(
                table.family,
                &table.table,
                &n.rule.chain,
                n.rule.handle,
                &n.ports,
                &n.keep,
            ) {
                Ok(op) => {
                    ops.push(op);
                    kept.push(n.clone());
                }
                Err(e @ NarrowError::Shape { .. }) => notes.push(format!(
                    "left {} rule {} as it is ({e}); the hijacked port falls through {}",
                    n.rule.chain,
                    n.rule.handle,
                    n.rule_spec.rsplit(' ').next().unwrap_or("the chain")
                )),
                Err(e) => return Err(ActError::Failed(e.to_string())),
            }
        }
        if let FixAction::RemoveRules { narrow, .. } = &mut done {
            *narrow = kept;
        }
    }
    ops.extend(nft_ops(action));
    Ok((ops, done, notes))
}

pub fn describe(action: &FixAction) -> String {
    match action {
        FixAction::FlushChain {
            table,
            chain,
            rules,
            delete_chain,
            ..
        } => format!(
            "flushed {rules} rules from {} {}{}",
            where_(table),
            chain,
            if *delete_chain {
                " and deleted the chain"
            } else {
                ""
            }
        ),
        FixAction::RemoveRules {
            table,
            rules,
            delete_chains,
            narrow,
            ..
        } => {
            let mut text = format!("deleted {} rule(s) in {}", rules.len(), where_(table));
            for n in narrow {
                let keep: Vec<String> = n.keep.iter().map(ToString::to_string).collect();
                text.push_str(&format!(
                    ", narrowed {} rule {} to port {}",
                    n.rule.chain,
                    n.rule.handle,
                    keep.join(",")
                ));
            }
            if !delete_chains.is_empty() {
                text.push_str(&format!(" and chain(s) {}", delete_chains.join(", ")));
            }
            text
        }
        FixAction::SetPromisc { interface, .. } => format!("set {interface} promiscuous"),
        FixAction::ClearPromisc { interface } => format!("promisc turned off again on {interface}"),
        FixAction::CordonNode { by } => format!("cordon the node for {by}"),
        FixAction::UncordonNode { by } => format!("uncordon the node cordoned for {by}"),
        FixAction::SetServiceShape {
            namespace,
            name,
            wanted,
        } => {
            let mut text = format!(
                "set Service {namespace}/{name} to type {}",
                wanted.service_type
            );
            if !wanted.annotations.is_empty() {
                let keys: Vec<&str> = wanted.annotations.keys().map(String::as_str).collect();
                text.push_str(&format!(" with annotation(s) {}", keys.join(", ")));
            }
            text
        }
    }
}

fn where_(table: &TableRef) -> String {
    format!(
        "{} {} ({})",
        table.family,
        table.table,
        table.backend.as_str()
    )
}

fn nft_error(error: NftWriteError) -> ActError {
    if error.is_precondition_moved() {
        ActError::StateMoved(error.to_string())
    } else if error.is_commit_unknown() {
        ActError::Unknown(error.to_string())
    } else {
        ActError::Failed(error.to_string())
    }
}

fn legacy_error(error: LegacyWriteError) -> ActError {
    match error {
        LegacyWriteError::CommitUnknown { .. } => ActError::Unknown(error.to_string()),
        e if e.is_moved() => ActError::StateMoved(e.to_string()),
        e if e.is_blocking() => ActError::Unavailable(e.to_string()),
        e => ActError::Failed(e.to_string()),
    }
}

impl Actuator for KernelActuator {
    fn apply(
        &mut self,
        action: &FixAction,
        nft_generation: Option<u32>,
    ) -> Result<ActReport, ActError> {
        let table = match action {
            FixAction::SetPromisc { interface, .. } => {
                let change = link::set_promisc(interface.as_str(), true)
                    .map_err(|e| ActError::Failed(e.to_string()))?;
                return Ok(ActReport {
                    detail: describe(action),
                    was_promisc_before: Some(change.was_set_before),
                });
            }
            FixAction::ClearPromisc { interface } => {
                let change = match link::set_promisc(interface.as_str(), false) {
                    Ok(change) => change,
                    // The flag went with the interface: there is nothing left to turn off.
                    Err(e) if e.is_gone() => {
                        return Ok(ActReport {
                            detail: format!(
                                "{interface} no longer exists: its promiscuous flag went with it"
                            ),
                            was_promisc_before: None,
                        })
                    }
                    Err(e) => return Err(ActError::Failed(e.to_string())),
                };
                return Ok(ActReport {
                    detail: describe(action),
                    was_promisc_before: Some(change.was_set_before),
                });
            }
            FixAction::CordonNode { .. }
            | FixAction::UncordonNode { .. }
            | FixAction::SetServiceShape { .. } => {
                return Err(ActError::Failed(format!(
                    "{} acts on the Kubernetes API, not the kernel",
                    describe(action)
                )))
            }
            FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => table,
        };
        match table.backend {
            Backend::Nft => {
                let (ops, done, notes) = nft_batch(action)?;
                apply_batch(&ops, nft_generation).map_err(nft_error)?;
                let mut detail = describe(&done);
                for note in notes {
                    detail.push_str("; ");
                    detail.push_str(&note);
                }
                return Ok(ActReport {
                    detail,
                    was_promisc_before: None,
                });
            }
            Backend::Legacy => {
                iptables_legacy::apply_action(action).map_err(legacy_error)?;
            }
        }
        Ok(ActReport {
            detail: describe(action),
            was_promisc_before: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::finding::RuleRef;
    use crate::model::ruleset::Family;

    fn table(backend: Backend) -> TableRef {
        TableRef {
            backend,
            family: Family::Ip,
            table: "nat".into(),
        }
    }

    #[test]
    fn a_cni_chain_removal_deletes_the_jumps_before_the_chain() {
        let action = FixAction::RemoveRules {
            table: table(Backend::Nft),
            rules: vec![RuleRef {
                chain: "CNI-HOSTPORT-DNAT".into(),
                handle: 17,
                spec: "-j CNI-DN-1".into(),
            }],
            delete_chains: vec!["CNI-DN-1".into()],
            content_hash: 0,
            narrow: Vec::new(),
        };
        let ops = nft_ops(&action);
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[0], NftOp::DeleteRule { handle: 17, .. }));
        assert!(matches!(&ops[1], NftOp::FlushChain { chain, .. } if chain == "CNI-DN-1"));
        assert!(matches!(&ops[2], NftOp::DeleteChain { chain, .. } if chain == "CNI-DN-1"));
    }

    #[test]
    fn an_nft_ack_lost_after_sending_is_unknown_not_failed() {
        let lost = nft_error(NftWriteError::CommitUnknown {
            detail: "netlink read batch acknowledgements: EAGAIN (0 of 1 ops answered)".into(),
        });
        assert!(
            matches!(&lost, ActError::Unknown(d) if d.contains("whether it committed is unknown")),
            "{lost:?}"
        );
        assert!(matches!(
            nft_error(NftWriteError::RulesetChanged { expected: 3 }),
            ActError::StateMoved(_)
        ));
        assert!(matches!(
            nft_error(NftWriteError::BatchRefused {
                errno: libc::EINVAL
            }),
            ActError::Failed(_)
        ));
    }

    #[test]
    fn legacy_errors_map_to_act_errors() {
        assert!(matches!(
            legacy_error(LegacyWriteError::Moved("gone".into())),
            ActError::StateMoved(_)
        ));
        assert!(matches!(
            legacy_error(LegacyWriteError::CommitUnknown {
                command: "iptables-legacy-restore --noflush".into(),
                detail: "killed".into()
            }),
            ActError::Unknown(_)
        ));
        assert!(matches!(
            legacy_error(LegacyWriteError::ToolMissing {
                tool: "iptables-legacy-restore",
                family: Family::Ip
            }),
            ActError::Unavailable(_)
        ));
        assert!(matches!(
            legacy_error(LegacyWriteError::Failed {
                command: "x".into(),
                status: "exit status: 1".into(),
                stderr: "line 2 failed".into()
            }),
            ActError::Failed(_)
        ));
    }

    #[test]
    fn a_referenced_stale_chain_is_only_flushed() {
        let action = FixAction::FlushChain {
            table: table(Backend::Nft),
            chain: "OLD_CILIUM_POST_nat".into(),
            rules: 5,
            delete_chain: false,
            content_hash: 0,
        };
        assert_eq!(nft_ops(&action).len(), 1);
        assert_eq!(
            describe(&action),
            "flushed 5 rules from ip nat (nft) OLD_CILIUM_POST_nat"
        );
    }
}
