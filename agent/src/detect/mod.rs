//! The checks: pure functions from a [`NodeSnapshot`] to [`Finding`]s. A check is a type that
//! implements [`Check`], in one file of this module, and is listed once in [`CHECKS`]. Nothing
//! else in netmend names a check: configuration sections, the `checks` catalog, metrics labels,
//! the engine's scheduling and persistence all come from the trait. No I/O, no tokio, no
//! processes: everything a check needs is in the snapshot or the configuration.
//!
//! What the cluster knows reaches a check through [`CheckContext`] as plain data or a pure
//! function (the pod behind an IP), so checks stay testable without an API server.
//!
//! Persistence (a finding must last [`Check::persist_for`] before it counts) is not decided
//! here: checks report what the snapshot shows, and the tracker in `remediate` keeps `since`.
//!
//! A check may keep what it worked out between the agent's passes ([`Check::detect_incremental`],
//! [`CheckMemory`]) to re-evaluate only what a ruleset change can affect; its findings must be
//! those [`Check::detect`] gives on the same snapshot.

pub mod apiserver_service_type;
pub mod arp_unanswered;
pub mod backend_split;
pub mod hostport_hijack;
pub mod hostport_stale;
pub mod kube_proxy_endpoint_drift;
pub mod kube_proxy_mode_overlap;
pub mod promisc_lost;
pub mod stale_chain;
#[cfg(test)]
pub(crate) mod test_support;

use crate::config::{Config, ConfigError, Settings};
use crate::model::api_service::ApiServiceView;
use crate::model::finding::{CheckId, Finding, FixId};
use crate::model::ruleset_changes::ChangedSince;
use crate::model::service_intent::ClusterIntent;
use crate::model::snapshot::NodeSnapshot;
use std::net::IpAddr;
use std::time::Duration;

/// Every check netmend has, in the order the catalog lists them.
pub static CHECKS: &[&dyn Check] = &[
    &stale_chain::CiliumStaleBackupChain,
    &hostport_hijack::HostportHijack,
    &backend_split::IptablesBackendSplit,
    &arp_unanswered::ArpUnanswered,
    &promisc_lost::PromiscLost,
    &kube_proxy_mode_overlap::KubeProxyModeOverlap,
    &hostport_stale::HostportStale,
    &kube_proxy_endpoint_drift::KubeProxyEndpointDrift,
    &apiserver_service_type::ApiserverServiceType,
];

/// What a check keeps from one evaluation for the next (see [`Check::detect_incremental`]): the
/// engine holds one per check and never looks inside.
pub type CheckMemory = Option<Box<dyn std::any::Any + Send>>;

/// What a check reads, which tells the engine when it must run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// The rulesets, listeners and addresses: re-run only when one of them (or the
    /// configuration) changed.
    Ruleset,
    /// Links, ARP counters and the responder map: cheap, re-run every pass.
    Links,
    /// Only objects of the cluster that its watches keep current (no rules, no links): cheap,
    /// re-run every pass.
    Cluster,
}

/// How a fix proposed by a check is proven to have worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Read the node again right after acting: the finding must be gone.
    Reread,
    /// ARP replies for the target leaving its interface (or a moving responder counter) within
    /// `within`; when `min_requests` requests went unanswered by then, the fix did not help and
    /// is reverted. Only the agent can wait for that.
    ArpReplies { within: Duration, min_requests: u32 },
}

/// The reasons of a check's NodeCondition, CamelCase: while the check has findings on the node,
/// and while it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionReasons {
    pub failing: std::borrow::Cow<'static, str>,
    pub passing: std::borrow::Cow<'static, str>,
}

impl ConditionReasons {
    pub const fn new(failing: &'static str, passing: &'static str) -> ConditionReasons {
        ConditionReasons {
            failing: std::borrow::Cow::Borrowed(failing),
            passing: std::borrow::Cow::Borrowed(passing),
        }
    }

    /// `<Id>Found` / `No<Id>`, for a check that names none of its own.
    pub fn derived(id: CheckId) -> ConditionReasons {
        let name = id.pascal_case();
        ConditionReasons {
            failing: format!("{name}Found").into(),
            passing: format!("No{name}").into(),
        }
    }
}

/// What a check sees in one pass.
pub struct CheckContext<'a> {
    pub snapshot: &'a NodeSnapshot,
    pub config: &'a Config,
    /// Interfaces netmend made promiscuous and still holds (from the journal).
    pub promisc_held: &'a [String],
    /// The pod (`namespace/name`) on this node that has an IP, when the cluster says so.
    pub pod_owner: &'a dyn Fn(IpAddr) -> Option<String>,
    /// Whether `pod_owner` answers from a complete, current view of this node's pods (listed,
    /// API and pod watch healthy): only then does `None` mean "no pod on this node has the IP".
    /// False in node-local mode, before the pod watch listed the pods, and while the API fails.
    pub pods_known: bool,
    /// The cluster's intent for kube-proxy (Services and their EndpointSlices), while a check
    /// that reads it is enabled and the API is there; `None` in node-local mode.
    pub service_intent: Option<&'a ClusterIntent>,
    /// The API server's Service and who keeps it, while a check that keeps it is enabled and
    /// the API is there; `None` in node-local mode.
    pub api_service: Option<&'a ApiServiceView>,
}

/// The answer of a node without the Kubernetes API: no IP is known to belong to a pod.
pub fn no_pods(_ip: IpAddr) -> Option<String> {
    None
}

/// What the cluster says about this node's pods, handed to [`run_checks_with_pods`].
#[derive(Clone, Copy)]
pub struct Pods<'a> {
    /// The pod (`namespace/name`) on this node that has an IP.
    pub owner: &'a dyn Fn(IpAddr) -> Option<String>,
    /// See [`CheckContext::pods_known`].
    pub known: bool,
}

impl Pods<'static> {
    /// No knowledge of the pods (node-local mode, `netmend check`).
    pub fn unknown() -> Pods<'static> {
        Pods {
            owner: &no_pods,
            known: false,
        }
    }
}

/// One check. Implementations are unit structs listed in [`CHECKS`].
pub trait Check: Sync {
    fn id(&self) -> CheckId;
    /// One line for the catalog.
    fn description(&self) -> &'static str;
    fn inputs(&self) -> Inputs;
    fn enabled_by_default(&self) -> bool {
        true
    }
    /// Parses and validates the check's own configuration section (without `enabled`); error
    /// paths are relative to the section.
    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::none(raw)
    }
    /// The fix its findings may propose, if any.
    fn fix(&self) -> Option<FixId> {
        None
    }
    fn verification(&self, _config: &Config) -> Verification {
        Verification::Reread
    }
    /// How long a finding must persist before it is reported and may be mended. In a one-shot
    /// run it is capped at the observation window: present at both ends of it counts.
    fn persist_for(&self, _config: &Config) -> Duration {
        Duration::ZERO
    }
    /// Whether this finding's fault itself cuts the node off from the Kubernetes API (a hijack
    /// of the API server's port or address): then its fix may run without a cluster-wide fix
    /// slot, which could never be had while the fault lasts.
    fn cuts_off_api(&self, _finding: &Finding) -> bool {
        false
    }
    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding>;
    /// [`Check::detect`] with what the check kept from its previous evaluation in `memory`
    /// (empty at first). `changed` is what moved in the nftables ruleset since that evaluation,
    /// given only when nothing else the ruleset checks read moved (the legacy ruleset, listeners,
    /// addresses, configuration, pods); `None` when anything may have moved: start afresh.
    /// Must return what `detect` returns on the same context; by default it is `detect`.
    fn detect_incremental(
        &self,
        context: &CheckContext<'_>,
        _changed: Option<&ChangedSince>,
        _memory: &mut CheckMemory,
    ) -> Vec<Finding> {
        self.detect(context)
    }
    /// Whether it reads [`CheckContext::service_intent`]: the cluster watches Services and
    /// EndpointSlices only while such a check is enabled.
    fn reads_service_intent(&self) -> bool {
        false
    }
    /// Whether it reads [`CheckContext::api_service`]: the cluster contends for the keeper's
    /// Lease and watches the API server's Service only while such a check is enabled.
    fn keeps_api_service(&self) -> bool {
        false
    }
    /// Why the check, although enabled, cannot judge this node now (node-local mode, a mode it
    /// does not read, the cluster not listed yet), for `/status`; `None` while it judges.
    fn not_judged(&self, _context: &CheckContext<'_>) -> Option<String> {
        None
    }
    /// The reasons of its NodeCondition (`HijackPresent` / `NoHijack`).
    fn condition_reasons(&self) -> ConditionReasons {
        ConditionReasons::derived(self.id())
    }
}

/// The registered check with this id.
pub fn check(id: CheckId) -> Option<&'static dyn Check> {
    CHECKS.iter().copied().find(|c| c.id() == id)
}

/// Whether `finding`'s fault cuts this node off from the Kubernetes API (its check decides).
pub fn cuts_off_api(finding: &Finding) -> bool {
    check(finding.check).is_some_and(|c| c.cuts_off_api(finding))
}

/// The registered check whose id is `text` (journal lines and metric labels carry ids as text).
pub fn check_named(text: &str) -> Option<&'static dyn Check> {
    CHECKS.iter().copied().find(|c| c.id().as_str() == text)
}

/// Runs every enabled check reading `inputs` on one snapshot.
pub fn run(inputs: Inputs, context: &CheckContext<'_>) -> Vec<Finding> {
    run_some(inputs, context, |_| true)
}

/// Runs the enabled checks reading `inputs` that `which` selects.
pub fn run_some(
    inputs: Inputs,
    context: &CheckContext<'_>,
    which: impl Fn(&dyn Check) -> bool,
) -> Vec<Finding> {
    CHECKS
        .iter()
        .filter(|c| c.inputs() == inputs && context.config.check_enabled(c.id()) && which(**c))
        .flat_map(|c| c.detect(context))
        .collect()
}

/// [`run_some`] through [`Check::detect_incremental`], with one memory per check in `memories`
/// (a disabled check's memory is dropped).
pub fn run_some_incremental(
    inputs: Inputs,
    context: &CheckContext<'_>,
    which: impl Fn(&dyn Check) -> bool,
    changed: Option<&ChangedSince>,
    memories: &mut std::collections::HashMap<CheckId, CheckMemory>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for check in CHECKS.iter().filter(|c| c.inputs() == inputs && which(**c)) {
        if !context.config.check_enabled(check.id()) {
            memories.remove(&check.id());
            continue;
        }
        let memory = memories.entry(check.id()).or_default();
        findings.extend(check.detect_incremental(context, changed, memory));
    }
    findings
}

/// Whether an enabled check reads the cluster's intent for kube-proxy.
pub fn service_intent_wanted(config: &Config) -> bool {
    CHECKS
        .iter()
        .any(|c| c.reads_service_intent() && config.check_enabled(c.id()))
}

/// Whether an enabled check keeps the API server's Service.
pub fn api_service_wanted(config: &Config) -> bool {
    CHECKS
        .iter()
        .any(|c| c.keeps_api_service() && config.check_enabled(c.id()))
}

/// The enabled checks that cannot judge this node now, with the reason.
pub fn not_judged(context: &CheckContext<'_>) -> Vec<(CheckId, String)> {
    CHECKS
        .iter()
        .filter(|c| context.config.check_enabled(c.id()))
        .filter_map(|c| c.not_judged(context).map(|why| (c.id(), why)))
        .collect()
}

/// Runs every enabled check on one snapshot, knowing nothing of the pods.
pub fn run_checks(
    snapshot: &NodeSnapshot,
    config: &Config,
    promisc_held: &[String],
) -> Vec<Finding> {
    run_checks_with_pods(snapshot, config, promisc_held, Pods::unknown())
}

/// Runs every enabled check on one snapshot with what the cluster says about the pods.
pub fn run_checks_with_pods(
    snapshot: &NodeSnapshot,
    config: &Config,
    promisc_held: &[String],
    pods: Pods<'_>,
) -> Vec<Finding> {
    let context = CheckContext {
        snapshot,
        config,
        promisc_held,
        pod_owner: pods.owner,
        pods_known: pods.known,
        service_intent: None,
        api_service: None,
    };
    let mut findings = run(Inputs::Ruleset, &context);
    findings.extend(run(Inputs::Links, &context));
    findings.extend(run(Inputs::Cluster, &context));
    findings
}

/// The ARP watch list: the interfaces of configured targets and of the responder map's keys, with
/// the addresses watched on each.
pub fn arp_watch_list(
    snapshot: &NodeSnapshot,
    config: &Config,
) -> Vec<crate::model::l2::WatchedInterface> {
    arp_unanswered::watch_list(snapshot, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut ids: Vec<&str> = CHECKS.iter().map(|c| c.id().as_str()).collect();
        for id in &ids {
            assert!(
                !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{id}"
            );
        }
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "duplicate check id");
    }

    #[test]
    fn condition_reasons_are_camel_case_and_differ() {
        let camel = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_alphanumeric())
        };
        for check in CHECKS {
            let reasons = check.condition_reasons();
            assert!(camel(&reasons.failing), "{reasons:?}");
            assert!(camel(&reasons.passing), "{reasons:?}");
            assert_ne!(reasons.failing, reasons.passing);
        }
        assert_eq!(
            check(CheckId::HOSTPORT_HIJACK).unwrap().condition_reasons(),
            ConditionReasons::new("HijackPresent", "NoHijack")
        );
        assert_eq!(
            ConditionReasons::derived(CheckId::new("cilium-stale-backup-chain")),
            ConditionReasons::new("CiliumStaleBackupChainFound", "NoCiliumStaleBackupChain")
        );
        assert_eq!(CheckId::new("a--b-c1").pascal_case(), "ABC1");
    }

    #[test]
    fn every_proposed_fix_is_registered() {
        for check in CHECKS {
            if let Some(fix) = check.fix() {
                assert!(
                    crate::remediate::fixes::fix(fix).is_some(),
                    "{} proposes unregistered fix {fix}",
                    check.id()
                );
            }
        }
    }

    #[test]
    fn lookups_by_id_and_by_name_agree() {
        for c in CHECKS {
            assert_eq!(check(c.id()).map(|x| x.id()), Some(c.id()));
            assert_eq!(check_named(c.id().as_str()).map(|x| x.id()), Some(c.id()));
        }
        assert!(check_named("no-such-check").is_none());
    }
}
