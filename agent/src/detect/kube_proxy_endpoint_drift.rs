//! Check `kube-proxy-endpoint-drift`: kube-proxy's rules on this node send a Service port's
//! traffic to other endpoints than the cluster's EndpointSlices say. The incident: a node with
//! failing hardware stopped receiving kube-proxy's updates; its rules kept sending connections to
//! pods that no longer existed (and none to the new ones), restarts helped for a while, and
//! cordoning the node is what ended it.
//!
//! Per Service port, the endpoints kube-proxy programmed (read back from its rules by
//! [`crate::model::kube_proxy`], iptables mode in either backend and nftables mode) are compared
//! with the ready endpoints of its EndpointSlices ([`crate::model::service_intent`], kept by the
//! cluster's watches). A difference is normal for one sync period while kube-proxy catches up, so
//! a finding counts only once it has lasted `staleAfter` (default 2m, well above kube-proxy's
//! sync period). The finding names the Service port and the missing and extra endpoints.
//!
//! Not judged (said on `/status`, no finding): without the Kubernetes API, before the Services
//! and EndpointSlices were listed once, in kube-proxy's IPVS mode (its endpoints are IPVS real
//! servers, not rules) and on a node without kube-proxy Service rules (no kube-proxy, or a
//! replacement such as Cilium's).
//!
//! The fix it proposes is `cordon-node` (off by default): the node's rules cannot be trusted, so
//! no new pods should land on it until the drift is gone.

use crate::config::{duration_or, Config, ConfigError, HumanDuration, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity};
use crate::model::kube_proxy::{programmed_services, ProgrammedServices};
use crate::model::ruleset::{Backend, Family};
use crate::model::service_intent::{drift, ClusterIntent, ServiceDrift};
use crate::model::snapshot::NodeSnapshot;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The check, for the registry.
pub struct KubeProxyEndpointDrift;

impl CheckId {
    pub const KUBE_PROXY_ENDPOINT_DRIFT: CheckId = CheckId::new("kube-proxy-endpoint-drift");
}

/// How many endpoints a message names of each kind (the evidence has them all, up to
/// [`EVIDENCE_LIMIT`]).
const MESSAGE_LIMIT: usize = 5;
const EVIDENCE_LIMIT: usize = 100;

/// `checks.kube-proxy-endpoint-drift` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDriftSettings {
    /// How long a difference must last before it is a finding (and before a cordon made for it
    /// is lifted once it is gone).
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub stale_after: Duration,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpointDrift {
    stale_after: Option<HumanDuration>,
}

/// The check's settings in `config`.
pub fn settings(config: &Config) -> &EndpointDriftSettings {
    config
        .check(CheckId::KUBE_PROXY_ENDPOINT_DRIFT)
        .settings
        .get::<EndpointDriftSettings>()
}

/// Chains only kube-proxy's IPVS mode creates in the nat table (iptables mode names its node-port
/// chain `KUBE-NODEPORTS`).
const IPVS_MODE_CHAINS: &[&str] = &["KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-LOOP-BACK"];

fn ipvs_mode(snapshot: &NodeSnapshot) -> bool {
    [Backend::Nft, Backend::Legacy]
        .into_iter()
        .filter_map(|b| snapshot.ruleset(b))
        .flat_map(|r| &r.tables)
        .filter(|t| t.id.name == "nat" && matches!(t.id.family, Family::Ip | Family::Ip6))
        .any(|t| IPVS_MODE_CHAINS.iter().any(|c| t.chain(c).is_some()))
}

/// What kube-proxy programmed in both backends (an iptables-mode kube-proxy writes to one; a
/// left-over set in the other still carries traffic and is counted with it).
pub fn programmed(snapshot: &NodeSnapshot) -> ProgrammedServices {
    let mut all = ProgrammedServices::default();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(ruleset) = snapshot.ruleset(backend) else {
            continue;
        };
        let found = programmed_services(ruleset);
        all.mode = all.mode.or(found.mode);
        for (port, endpoints) in found.services {
            all.services.entry(port).or_default().extend(endpoints);
        }
    }
    all
}

/// Why the check cannot judge this node now, if it cannot.
fn why_not_judged(
    snapshot: &NodeSnapshot,
    intent: Option<&ClusterIntent>,
    already_read: Option<&ProgrammedServices>,
) -> Option<String> {
    let Some(intent) = intent else {
        return Some(
            "needs the Kubernetes API (Services and EndpointSlices): not judged in node-local mode"
                .into(),
        );
    };
    if !intent.synced {
        return Some(
            "waiting for a list of Services and EndpointSlices (at start, or the Kubernetes API is not answering)"
                .into(),
        );
    }
    if ipvs_mode(snapshot) {
        return Some(
            "kube-proxy runs in IPVS mode, which is not supported (its endpoints are IPVS real servers, not rules)"
                .into(),
        );
    }
    let none = match already_read {
        Some(p) => p.mode.is_none(),
        None => programmed(snapshot).mode.is_none(),
    };
    none.then(|| {
        "no kube-proxy Service rules on this node (no kube-proxy in iptables or nftables mode)"
            .into()
    })
}

fn listed(addresses: &BTreeSet<SocketAddr>, limit: usize) -> String {
    let mut text: Vec<String> = addresses
        .iter()
        .take(limit)
        .map(|a| a.to_string())
        .collect();
    if addresses.len() > limit {
        text.push(format!("and {} more", addresses.len() - limit));
    }
    text.join(", ")
}

fn finding_of(d: &ServiceDrift) -> Finding {
    let mut parts = Vec::new();
    if d.service_gone {
        parts.push(format!(
            "the Service no longer exists but its rules still send traffic to {}",
            listed(&d.extra, MESSAGE_LIMIT)
        ));
    } else {
        if !d.missing.is_empty() {
            parts.push(format!(
                "{} ready endpoint(s) missing from the rules ({})",
                d.missing.len(),
                listed(&d.missing, MESSAGE_LIMIT)
            ));
        }
        if !d.extra.is_empty() {
            parts.push(format!(
                "{} endpoint(s) in the rules that are gone or not ready ({})",
                d.extra.len(),
                listed(&d.extra, MESSAGE_LIMIT)
            ));
        }
    }
    let capped = |set: &BTreeSet<SocketAddr>| -> Vec<String> {
        set.iter()
            .take(EVIDENCE_LIMIT)
            .map(|a| a.to_string())
            .collect()
    };
    Finding {
        check: CheckId::KUBE_PROXY_ENDPOINT_DRIFT,
        subject: d.service.to_string(),
        severity: if d.extra.is_empty() {
            Severity::Warning
        } else {
            Severity::Critical
        },
        message: format!(
            "kube-proxy's rules for Service {} differ from its EndpointSlices: {}; kube-proxy on this node is not receiving or applying updates",
            d.service,
            parts.join("; ")
        ),
        evidence: json!({
            "service": format!("{}/{}", d.service.namespace, d.service.name),
            "port": d.service.port,
            "protocol": d.service.protocol,
            "missing": capped(&d.missing),
            "extra": capped(&d.extra),
            "missingCount": d.missing.len(),
            "extraCount": d.extra.len(),
            "notProgrammed": d.not_programmed,
            "serviceGone": d.service_gone,
        }),
        proposal: Some(FixProposal {
            fix: FixId::CORDON_NODE,
            action: Some(FixAction::CordonNode {
                by: CheckId::KUBE_PROXY_ENDPOINT_DRIFT.as_str().to_string(),
            }),
            detail: "would cordon the node (netmend.io/cordoned-by: kube-proxy-endpoint-drift)".into(),
        }),
        discriminator: None,
    }
}

/// The findings on `snapshot` against the cluster's `intent`: one per Service port whose
/// programmed endpoints differ from the intended ones. None when the node cannot be judged.
pub fn detect(snapshot: &NodeSnapshot, intent: Option<&ClusterIntent>) -> Vec<Finding> {
    // Without a listed intent nothing is judged: do not read kube-proxy's rules for nothing
    // (at 10,000 Services that read is the costliest part of a pass).
    if !intent.is_some_and(|i| i.synced) {
        return Vec::new();
    }
    let programmed = programmed(snapshot);
    if why_not_judged(snapshot, intent, Some(&programmed)).is_some() {
        return Vec::new();
    }
    let Some(intent) = intent else {
        return Vec::new();
    };
    drift(&programmed, &intent.intended, &intent.services)
        .iter()
        .map(finding_of)
        .collect()
}

impl Check for KubeProxyEndpointDrift {
    fn id(&self) -> CheckId {
        CheckId::KUBE_PROXY_ENDPOINT_DRIFT
    }

    fn description(&self) -> &'static str {
        "kube-proxy's rules send a Service's traffic to other endpoints than its EndpointSlices (stale kube-proxy on this node)"
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("EndpointDrift", "NoEndpointDrift")
    }

    fn inputs(&self) -> Inputs {
        Inputs::Ruleset
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawEndpointDrift| {
            let stale_after = duration_or(r.stale_after, 120);
            if stale_after.is_zero() {
                return Err(ConfigError::new(
                    "staleAfter",
                    "must be above zero (kube-proxy is always briefly behind after a change)",
                ));
            }
            Ok(EndpointDriftSettings { stale_after })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::CORDON_NODE)
    }

    fn persist_for(&self, config: &Config) -> Duration {
        settings(config).stale_after
    }

    fn reads_service_intent(&self) -> bool {
        true
    }

    fn not_judged(&self, context: &CheckContext<'_>) -> Option<String> {
        why_not_judged(context.snapshot, context.service_intent, None)
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect(context.snapshot, context.service_intent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::service_intent::IntentIndex;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    /// kube-proxy's iptables mode for `shop/web:http` with two endpoints, as iptables-save prints
    /// it (trimmed to the Service's chains).
    const WEB_RULES: &str = r#"
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.43.0.50/32 -p tcp -m comment --comment "shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -m comment --comment "shop/web:http -> 10.42.0.7:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SVC-ABCDEFGHIJKLMNOP -m comment --comment "shop/web:http -> 10.42.9.9:8080" -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 10.42.0.7/32 -m comment --comment "shop/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment "shop/web:http" -m tcp -j DNAT --to-destination 10.42.0.7:8080
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 10.42.9.9/32 -m comment --comment "shop/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m comment --comment "shop/web:http" -m tcp -j DNAT --to-destination 10.42.9.9:8080
"#;

    fn node(nat: &str) -> NodeSnapshot {
        snapshot_with(Some(vec![iptables_table(Backend::Nft, "nat", nat)]), None)
    }

    fn intent(ready: &[&str]) -> ClusterIntent {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.50", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let endpoints: Vec<serde_json::Value> = ready
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let mut index = IntentIndex::default();
        index.replace_services(vec![service]);
        index.replace_slices(vec![slice]);
        (*index.view()).clone()
    }

    #[test]
    fn rules_in_step_with_the_slices_are_healthy() {
        let snapshot = node(WEB_RULES);
        let intent = intent(&["10.42.0.7", "10.42.9.9"]);
        assert_eq!(detect(&snapshot, Some(&intent)), vec![]);
        assert_eq!(why_not_judged(&snapshot, Some(&intent), None), None);
    }

    #[test]
    fn a_stale_endpoint_and_a_missing_one_are_named() {
        // the pod 10.42.9.9 is gone and 10.42.3.3 replaced it; kube-proxy never heard
        let snapshot = node(WEB_RULES);
        let found = detect(&snapshot, Some(&intent(&["10.42.0.7", "10.42.3.3"])));
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(f.subject, "shop/web:http/tcp");
        assert_eq!(f.severity, Severity::Critical);
        assert!(
            f.message
                .contains("missing from the rules (10.42.3.3:8080)"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("gone or not ready (10.42.9.9:8080)"),
            "{}",
            f.message
        );
        assert_eq!(f.evidence["missing"], json!(["10.42.3.3:8080"]));
        assert_eq!(f.evidence["extra"], json!(["10.42.9.9:8080"]));
        assert_eq!(f.proposal.as_ref().unwrap().fix, FixId::CORDON_NODE);
    }

    #[test]
    fn nothing_is_judged_without_the_api_before_the_first_list_in_ipvs_mode_or_without_kube_proxy()
    {
        let snapshot = node(WEB_RULES);
        let stale = intent(&["10.42.3.3"]);
        assert!(detect(&snapshot, None).is_empty());
        assert!(why_not_judged(&snapshot, None, None)
            .unwrap()
            .contains("node-local mode"));
        let unsynced = ClusterIntent::default();
        assert!(detect(&snapshot, Some(&unsynced)).is_empty());
        assert!(why_not_judged(&snapshot, Some(&unsynced), None)
            .unwrap()
            .contains("waiting for a list"));

        let ipvs = node(&format!(
            "{WEB_RULES}:KUBE-NODE-PORT - [0:0]\n:KUBE-LOAD-BALANCER - [0:0]\n"
        ));
        assert!(detect(&ipvs, Some(&stale)).is_empty());
        assert!(why_not_judged(&ipvs, Some(&stale), None)
            .unwrap()
            .contains("IPVS"));

        let no_kube_proxy = node(":PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        assert!(detect(&no_kube_proxy, Some(&stale)).is_empty());
        assert!(why_not_judged(&no_kube_proxy, Some(&stale), None)
            .unwrap()
            .contains("no kube-proxy Service rules"));
    }

    #[test]
    fn stale_after_defaults_to_two_minutes_and_must_be_above_zero() {
        let check = KubeProxyEndpointDrift;
        let parsed = check.parse_settings(json!({})).unwrap();
        assert_eq!(
            parsed.get::<EndpointDriftSettings>().stale_after,
            Duration::from_secs(120)
        );
        let short = check.parse_settings(json!({"staleAfter": "5s"})).unwrap();
        assert_eq!(
            short.get::<EndpointDriftSettings>().stale_after,
            Duration::from_secs(5)
        );
        let zero = check
            .parse_settings(json!({"staleAfter": "0s"}))
            .unwrap_err();
        assert!(zero.to_string().contains("staleAfter"), "{zero}");
        assert!(check.parse_settings(json!({"stalAfter": "5s"})).is_err());
    }
}
