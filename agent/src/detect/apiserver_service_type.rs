//! Check `apiserver-service-type`: the API server's Service (`default/kubernetes`) is not of the
//! type (or lacks the annotations) the operator wants. The incident: k3s resets that Service to
//! `ClusterIP` whenever a server joins or restarts, so a cluster that publishes its API server
//! through a load balancer (`LoadBalancer` with MetalLB, Cilium LB-IPAM or ServiceLB annotations)
//! loses it after every server restart; the operator wrote a controller of their own to put it
//! back.
//!
//! Opt-in (`enabled: false` by default): the wanted `type` and `annotations` are configuration.
//! The Service is the cluster's, not the node's, so one agent judges and mends it: the one holding
//! the keeper's Lease ([`crate::model::api_service::KEEPER_LEASE`]); on every other node the
//! check says who keeps it and judges nothing. Annotations not named in the configuration are
//! left alone.
//!
//! The fix it proposes is `restore-service-type` (a merge patch under the resourceVersion read,
//! proven by reading the Service back), journaled and guarded like every fix: if k3s keeps
//! resetting the Service, the circuit breaker opens after `maxAttempts` and says so instead of
//! fighting forever.

use crate::config::{ConfigError, Settings};
use crate::detect::{Check, CheckContext, Inputs};
use crate::model::api_service::{
    differences, ApiServiceView, Leadership, WantedShape, API_SERVICE_NAME, API_SERVICE_NAMESPACE,
    KEEPABLE_TYPES, KEEPER_LEASE,
};
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixProposal, Severity};
use serde_json::json;
use std::collections::BTreeMap;

/// The check, for the registry.
pub struct ApiserverServiceType;

impl CheckId {
    pub const APISERVER_SERVICE_TYPE: CheckId = CheckId::new("apiserver-service-type");
}

/// `checks.apiserver-service-type` settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTypeSettings {
    /// The type the Service is kept as.
    #[serde(rename = "type")]
    pub service_type: String,
    /// Annotations the Service must carry with these values (others are left alone).
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceType {
    #[serde(rename = "type")]
    service_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// The check's settings in `config`.
pub fn settings(config: &crate::config::Config) -> &ServiceTypeSettings {
    config
        .check(CheckId::APISERVER_SERVICE_TYPE)
        .settings
        .get::<ServiceTypeSettings>()
}

/// Whether `key` is a Kubernetes qualified name (`[prefix/]name`), as the API requires of an
/// annotation key.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

fn wanted(config: &crate::config::Config) -> WantedShape {
    let s = settings(config);
    WantedShape {
        service_type: s.service_type.clone(),
        annotations: s.annotations.clone(),
    }
}

/// Why this agent cannot judge the Service now, if it cannot.
fn why_not_judged(view: Option<&ApiServiceView>) -> Option<String> {
    let service = format!("{API_SERVICE_NAMESPACE}/{API_SERVICE_NAME}");
    let Some(view) = view else {
        return Some(format!(
            "needs the Kubernetes API (the Service {service}): not judged in node-local mode"
        ));
    };
    match (&view.leadership, &view.service) {
        (Leadership::Following { holder }, _) => Some(format!(
            "the agent on {holder} keeps the Service {service} (it holds the Lease {KEEPER_LEASE}); judged there"
        )),
        (Leadership::Unknown { reason }, _) => Some(format!(
            "not holding the Lease {KEEPER_LEASE} that picks the one agent keeping {service}: {reason}"
        )),
        (Leadership::Leading, None) => Some(format!(
            "waiting for a list of the Service {service} (at start, or the Kubernetes API is not answering)"
        )),
        (Leadership::Leading, Some(None)) => Some(format!("the Service {service} does not exist")),
        (Leadership::Leading, Some(Some(_))) => None,
    }
}

/// The finding when the Service differs from what `config` wants and this agent keeps it.
pub fn detect(view: Option<&ApiServiceView>, config: &crate::config::Config) -> Vec<Finding> {
    if why_not_judged(view).is_some() {
        return Vec::new();
    }
    let Some(Some(shape)) = view.and_then(|v| v.service.as_ref()) else {
        return Vec::new();
    };
    let wanted = wanted(config);
    let differs = differences(shape, &wanted);
    if differs.is_empty() {
        return Vec::new();
    }
    let subject = format!("{API_SERVICE_NAMESPACE}/{API_SERVICE_NAME}");
    let mut detail = format!("would set {subject} to type {}", wanted.service_type);
    if !wanted.annotations.is_empty() {
        let keys: Vec<&str> = wanted.annotations.keys().map(String::as_str).collect();
        detail.push_str(&format!(" with annotation(s) {}", keys.join(", ")));
    }
    vec![Finding {
        check: CheckId::APISERVER_SERVICE_TYPE,
        subject: subject.clone(),
        severity: Severity::Warning,
        message: format!(
            "the API server's Service {subject} is not as configured: {} (k3s resets it to ClusterIP when a server joins or restarts)",
            differs.join("; ")
        ),
        evidence: json!({
            "service": subject,
            "type": shape.service_type,
            "wantedType": wanted.service_type,
            "differences": differs,
            "resourceVersion": shape.resource_version,
        }),
        proposal: Some(FixProposal {
            fix: FixId::RESTORE_SERVICE_TYPE,
            action: Some(FixAction::SetServiceShape {
                namespace: API_SERVICE_NAMESPACE.into(),
                name: API_SERVICE_NAME.into(),
                wanted,
            }),
            detail,
        }),
        discriminator: None,
    }]
}

impl Check for ApiserverServiceType {
    fn id(&self) -> CheckId {
        CheckId::APISERVER_SERVICE_TYPE
    }

    fn description(&self) -> &'static str {
        "the API server's Service default/kubernetes is not of the configured type or lacks the configured annotations (k3s resets it to ClusterIP); judged by one agent, the holder of a Lease"
    }

    fn inputs(&self) -> Inputs {
        Inputs::Cluster
    }

    fn enabled_by_default(&self) -> bool {
        false
    }

    fn condition_reasons(&self) -> super::ConditionReasons {
        super::ConditionReasons::new("ApiServiceTypeReset", "ApiServiceTypeAsConfigured")
    }

    fn parse_settings(&self, raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: RawServiceType| {
            let service_type = r.service_type.unwrap_or_else(|| "LoadBalancer".into());
            if !KEEPABLE_TYPES.contains(&service_type.as_str()) {
                return Err(ConfigError::new(
                    "type",
                    format!(
                        "{service_type:?} is not a type the API server's Service can be kept as; one of: {}",
                        KEEPABLE_TYPES.join(", ")
                    ),
                ));
            }
            let annotations = r.annotations.unwrap_or_default();
            if let Some(bad) = annotations.keys().find(|k| !is_qualified_name(k)) {
                return Err(ConfigError::new(
                    format!("annotations.{bad}"),
                    "not a valid annotation key ([prefix/]name: a DNS subdomain prefix, a name of at most 63 letters, digits, '-', '_' or '.')",
                ));
            }
            Ok(ServiceTypeSettings {
                service_type,
                annotations,
            })
        })
    }

    fn fix(&self) -> Option<FixId> {
        Some(FixId::RESTORE_SERVICE_TYPE)
    }

    fn keeps_api_service(&self) -> bool {
        true
    }

    fn not_judged(&self, context: &CheckContext<'_>) -> Option<String> {
        why_not_judged(context.api_service)
    }

    fn detect(&self, context: &CheckContext<'_>) -> Vec<Finding> {
        detect(context.api_service, context.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::api_service::ServiceShape;

    fn config(section: &str) -> Config {
        Config::from_yaml(&format!(
            "checks:\n  apiserver-service-type:\n    enabled: true\n{section}"
        ))
        .unwrap()
    }

    fn view(leadership: Leadership, service_type: Option<&str>) -> ApiServiceView {
        ApiServiceView {
            leadership,
            service: Some(service_type.map(|t| ServiceShape {
                service_type: t.into(),
                annotations: BTreeMap::new(),
                resource_version: "12".into(),
            })),
            generation: 1,
        }
    }

    #[test]
    fn off_by_default_with_load_balancer_wanted_and_no_annotations() {
        let config = Config::default();
        assert!(!config.check_enabled(CheckId::APISERVER_SERVICE_TYPE));
        assert_eq!(
            settings(&config),
            &ServiceTypeSettings {
                service_type: "LoadBalancer".into(),
                annotations: BTreeMap::new()
            }
        );
    }

    #[test]
    fn a_reset_service_is_a_finding_proposing_the_wanted_shape() {
        let config =
            config("    annotations:\n      metallb.universe.tf/loadBalancerIPs: 192.168.1.240\n");
        let leading = view(Leadership::Leading, Some("ClusterIP"));
        let findings = detect(Some(&leading), &config);
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!(f.subject, "default/kubernetes");
        assert!(
            f.message.contains("type is ClusterIP, wanted LoadBalancer")
                && f.message
                    .contains("annotation metallb.universe.tf/loadBalancerIPs is missing"),
            "{}",
            f.message
        );
        let proposal = f.proposal.as_ref().unwrap();
        assert_eq!(proposal.fix, FixId::RESTORE_SERVICE_TYPE);
        assert_eq!(
            proposal.action,
            Some(FixAction::SetServiceShape {
                namespace: "default".into(),
                name: "kubernetes".into(),
                wanted: WantedShape {
                    service_type: "LoadBalancer".into(),
                    annotations: [(
                        "metallb.universe.tf/loadBalancerIPs".to_string(),
                        "192.168.1.240".to_string()
                    )]
                    .into()
                }
            })
        );
        assert_eq!(f.evidence["resourceVersion"], "12");
    }

    #[test]
    fn a_service_as_wanted_is_no_finding() {
        let config = config("    type: NodePort\n");
        assert!(detect(Some(&view(Leadership::Leading, Some("NodePort"))), &config).is_empty());
    }

    #[test]
    fn only_the_lease_holder_judges_and_every_other_case_says_why_not() {
        let config = config("");
        let following = view(
            Leadership::Following {
                holder: "server-2".into(),
            },
            Some("ClusterIP"),
        );
        assert!(detect(Some(&following), &config).is_empty());
        assert!(why_not_judged(Some(&following))
            .unwrap()
            .contains("the agent on server-2 keeps"));
        assert!(why_not_judged(None).unwrap().contains("node-local mode"));
        let unlisted = ApiServiceView {
            leadership: Leadership::Leading,
            service: None,
            generation: 1,
        };
        assert!(why_not_judged(Some(&unlisted))
            .unwrap()
            .contains("waiting for a list"));
        let gone = view(Leadership::Leading, None);
        assert!(detect(Some(&gone), &config).is_empty());
        assert!(why_not_judged(Some(&gone))
            .unwrap()
            .contains("does not exist"));
        let unknown = view(
            Leadership::Unknown {
                reason: "leases forbidden".into(),
            },
            Some("ClusterIP"),
        );
        assert!(why_not_judged(Some(&unknown))
            .unwrap()
            .contains("leases forbidden"));
        assert_eq!(
            why_not_judged(Some(&view(Leadership::Leading, Some("ClusterIP")))),
            None
        );
    }

    #[test]
    fn a_bad_type_or_annotation_key_is_refused_with_its_path() {
        let err = Config::from_yaml("checks:\n  apiserver-service-type:\n    type: ClusterIP\n")
            .unwrap_err();
        assert_eq!(err.path, "checks.apiserver-service-type.type");
        assert!(
            err.reason.contains("LoadBalancer, NodePort"),
            "{}",
            err.reason
        );
        let err = Config::from_yaml(
            "checks:\n  apiserver-service-type:\n    annotations:\n      \"Bad Key/x\": v\n",
        )
        .unwrap_err();
        assert_eq!(
            err.path,
            "checks.apiserver-service-type.annotations.Bad Key/x"
        );
        let err = Config::from_yaml("checks:\n  apiserver-service-type:\n    tpye: NodePort\n")
            .unwrap_err();
        assert!(err.reason.contains("tpye"), "{}", err.reason);
    }

    #[test]
    fn annotation_keys_follow_the_api_rules() {
        for good in [
            "a",
            "metallb.universe.tf/loadBalancerIPs",
            "io.cilium/lb-ipam-ips",
            "x_y.z-1",
        ] {
            assert!(is_qualified_name(good), "{good}");
        }
        for bad in [
            "",
            "/x",
            "a/",
            "-a",
            "UPPER.example/x",
            "a b",
            &"n".repeat(64),
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }
}
