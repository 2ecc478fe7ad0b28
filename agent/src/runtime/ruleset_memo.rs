//! The ruleset checks' last result and what it was computed from: the nftables generation, the
//! legacy ruleset (the probe keeps the same `Arc` while its content is unchanged), listeners,
//! addresses, the configuration, whether the pods are known and the pod names the checks asked
//! for (the cluster may learn a pod's name after its rules appeared). While none moved, an idle pass costs no walk over the rules.
//! The memo holds no strong reference to a ruleset, so the incremental cache can keep changing
//! its own in place without a copy.

use crate::config::Config;
use crate::detect::{self, CheckContext, Inputs, Pods};
use crate::model::finding::Finding;
use crate::model::ruleset::Ruleset;
use crate::model::snapshot::{ListeningSocket, LocalAddress, NodeSnapshot};
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

/// Inputs and result of the last ruleset evaluation.
#[derive(Default)]
pub struct RulesetMemo {
    last: Option<Memo>,
}

struct Memo {
    nft_generation: Option<Option<u32>>,
    legacy: Option<Weak<Ruleset>>,
    listeners: Option<Vec<ListeningSocket>>,
    addresses: Option<Vec<LocalAddress>>,
    config: Config,
    pods_known: bool,
    /// The IPs the checks asked the pod names of, with the answers they got.
    pods_asked: Vec<(IpAddr, Option<String>)>,
    findings: Vec<Finding>,
}

impl RulesetMemo {
    /// The findings of every enabled ruleset check on `snapshot`, re-run only when an input
    /// changed.
    pub fn findings(
        &mut self,
        snapshot: &NodeSnapshot,
        config: &Config,
        pods: Pods<'_>,
    ) -> Vec<Finding> {
        let pod_owner = pods.owner;
        let nft_generation = snapshot.nftables.as_ref().map(|r| r.generation);
        let legacy = snapshot.legacy.as_ref().map(Arc::downgrade);
        if let Some(memo) = &self.last {
            let same_legacy = match (&memo.legacy, &legacy) {
                (Some(a), Some(b)) => a.ptr_eq(b),
                (None, None) => true,
                _ => false,
            };
            if memo.nft_generation == nft_generation
                && nft_generation.is_some_and(|g| g.is_some())
                && same_legacy
                && memo.listeners == snapshot.listeners
                && memo.addresses == snapshot.addresses
                && memo.config == *config
                && memo.pods_known == pods.known
                && memo
                    .pods_asked
                    .iter()
                    .all(|(ip, answer)| pod_owner(*ip) == *answer)
            {
                return memo.findings.clone();
            }
        }
        let asked = RefCell::new(Vec::new());
        let recording = |ip: IpAddr| {
            let answer = pod_owner(ip);
            asked.borrow_mut().push((ip, answer.clone()));
            answer
        };
        let context = CheckContext {
            snapshot,
            config,
            promisc_held: &[],
            pod_owner: &recording,
            pods_known: pods.known,
        };
        let findings = detect::run(Inputs::Ruleset, &context);
        let mut pods_asked = asked.into_inner();
        pods_asked.sort();
        pods_asked.dedup();
        self.last = Some(Memo {
            nft_generation,
            legacy,
            listeners: snapshot.listeners.clone(),
            addresses: snapshot.addresses.clone(),
            config: config.clone(),
            pods_known: pods.known,
            pods_asked,
            findings: findings.clone(),
        });
        findings
    }
}
