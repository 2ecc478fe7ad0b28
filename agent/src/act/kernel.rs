//! The kernel-backed [`Actuator`]: turns a [`FixAction`] into one nftables batch (all or nothing,
//! carrying the generation the decision was made on), into `iptables-legacy` commands ordered so
//! that a failure part-way leaves a consistent table, or into a link flag change.

use crate::act::iptables_legacy::{self, LegacyOp};
use crate::act::link;
use crate::act::nftables::{apply_batch, prepare_narrow, NarrowError, NftOp};
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
        FixAction::SetPromisc { .. } => Vec::new(),
    }
}

fn action_table(action: &FixAction) -> Option<&TableRef> {
    match action {
        FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => Some(table),
        FixAction::SetPromisc { .. } => None,
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

/// The `iptables-legacy-restore` commands of an action with narrowed rules: the replacements
/// (`-R CHAIN POS SPEC`), the deletions from the highest position down, the flushes and chain
/// deletions; one table replacement.
pub fn legacy_restore_commands(action: &FixAction) -> Vec<String> {
    let mut out = Vec::new();
    if let FixAction::RemoveRules { narrow, .. } = action {
        for n in narrow {
            out.push(format!(
                "-R {} {} {}",
                n.rule.chain, n.rule.handle, n.rule_spec
            ));
        }
    }
    for op in iptables_legacy::ordered(&legacy_ops(action)) {
        out.push(match op {
            LegacyOp::DeleteRule {
                chain,
                rule_spec_position,
                ..
            } => format!("-D {chain} {rule_spec_position}"),
            LegacyOp::FlushChain { chain, .. } => format!("-F {chain}"),
            LegacyOp::DeleteChain { chain, .. } => format!("-X {chain}"),
        });
    }
    out
}

/// The legacy operations of a ruleset action; the legacy writer runs rule deletions from the
/// highest position down (deleting a rule shifts the positions after it).
pub fn legacy_ops(action: &FixAction) -> Vec<LegacyOp> {
    let Some(table) = action_table(action) else {
        return Vec::new();
    };
    let (family, name) = (table.family, &table.table);
    steps(action)
        .into_iter()
        .map(|step| match step {
            Step::DeleteRule { chain, handle } => LegacyOp::DeleteRule {
                family,
                table: name.clone(),
                chain: chain.to_string(),
                rule_spec_position: handle,
            },
            Step::FlushChain(chain) => LegacyOp::FlushChain {
                family,
                table: name.clone(),
                chain: chain.to_string(),
            },
            Step::DeleteChain(chain) => LegacyOp::DeleteChain {
                family,
                table: name.clone(),
                chain: chain.to_string(),
            },
        })
        .collect()
}

fn describe(action: &FixAction) -> String {
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
            FixAction::FlushChain { table, .. } | FixAction::RemoveRules { table, .. } => table,
        };
        match table.backend {
            Backend::Nft => {
                let (ops, done, notes) = nft_batch(action)?;
                apply_batch(&ops, nft_generation).map_err(|e| {
                    if e.is_precondition_moved() {
                        ActError::StateMoved(e.to_string())
                    } else {
                        ActError::Failed(e.to_string())
                    }
                })?;
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
                iptables_legacy::legacy_tool_available(table.family)
                    .map_err(|e| ActError::Unavailable(e.to_string()))?;
                let narrows =
                    matches!(action, FixAction::RemoveRules { narrow, .. } if !narrow.is_empty());
                if narrows {
                    iptables_legacy::apply_restore(
                        table.family,
                        &table.table,
                        &legacy_restore_commands(action),
                    )
                    .map_err(|e| ActError::Failed(e.to_string()))?;
                } else {
                    iptables_legacy::apply(&legacy_ops(action))
                        .map_err(|e| ActError::Failed(e.to_string()))?;
                }
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
    fn legacy_rules_are_deleted_from_the_highest_position_down() {
        let action = FixAction::RemoveRules {
            table: table(Backend::Legacy),
            rules: vec![
                RuleRef {
                    chain: "PREROUTING".into(),
                    handle: 2,
                },
                RuleRef {
                    chain: "PREROUTING".into(),
                    handle: 5,
                },
            ],
            delete_chains: vec![],
            content_hash: 0,
            narrow: Vec::new(),
        };
        let positions: Vec<u64> = iptables_legacy::ordered(&legacy_ops(&action))
            .iter()
            .map(|op| match op {
                LegacyOp::DeleteRule {
                    rule_spec_position, ..
                } => *rule_spec_position,
                _ => 0,
            })
            .collect();
        assert_eq!(positions, vec![5, 2]);
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

    #[test]
    fn a_narrowed_legacy_fix_is_one_restore_replacing_then_deleting_downwards() {
        use crate::model::finding::NarrowPorts;
        use crate::model::ruleset::PortRange;
        let action = FixAction::RemoveRules {
            table: table(Backend::Legacy),
            rules: vec![
                RuleRef {
                    chain: "CNI-DN-b".into(),
                    handle: 4,
                },
                RuleRef {
                    chain: "CNI-DN-b".into(),
                    handle: 6,
                },
            ],
            delete_chains: vec![],
            content_hash: 0,
            narrow: vec![NarrowPorts {
                rule: RuleRef {
                    chain: "CNI-HOSTPORT-DNAT".into(),
                    handle: 2,
                },
                ports: vec![PortRange::single(443), PortRange::single(6443)],
                keep: vec![PortRange::single(443)],
                rule_spec: "-p tcp -m multiport --dports 443 -j CNI-DN-b".into(),
            }],
        };
        assert_eq!(
            legacy_restore_commands(&action),
            vec![
                "-R CNI-HOSTPORT-DNAT 2 -p tcp -m multiport --dports 443 -j CNI-DN-b",
                "-D CNI-DN-b 6",
                "-D CNI-DN-b 4",
            ]
        );
        assert_eq!(
            describe(&action),
            "deleted 2 rule(s) in ip nat (legacy), narrowed CNI-HOSTPORT-DNAT rule 2 to port 443"
        );
        assert_eq!(
            iptables_legacy::restore_input("nat", &legacy_restore_commands(&action)[..1]),
            "*nat\n-R CNI-HOSTPORT-DNAT 2 -p tcp -m multiport --dports 443 -j CNI-DN-b\nCOMMIT\n"
        );
    }
}
