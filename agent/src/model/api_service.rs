//! The API server's own Service (`default/kubernetes`) as the cluster shows it to netmend, the
//! shape an operator wants it kept in (a type and annotations), what differs between the two
//! and the merge patch that closes the difference. Pure: the Service comes from a watch, the
//! patch is sent by `crate::cluster::api_service`.
//!
//! k3s resets this Service to `ClusterIP` whenever a server joins or restarts; operators who
//! publish the API server through a load balancer (MetalLB, Cilium LB-IPAM, ServiceLB) put
//! `LoadBalancer` back by hand or with a controller of their own. Only one agent in the cluster
//! keeps it: the one holding the keeper's Lease ([`Leadership`]).

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The namespace of the API server's Service.
pub const API_SERVICE_NAMESPACE: &str = "default";
/// The name of the API server's Service.
pub const API_SERVICE_NAME: &str = "kubernetes";
/// The Lease whose holder is the one agent that keeps the API server's Service.
pub const KEEPER_LEASE: &str = "netmend-api-service-keeper";

/// The Service types an operator may want the API server's Service kept as.
pub const KEEPABLE_TYPES: &[&str] = &["LoadBalancer", "NodePort"];

/// Which agent keeps the cluster-wide Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Leadership {
    /// Not known yet, or the Lease could not be read or taken (the reason).
    Unknown { reason: String },
    /// This agent holds the keeper's Lease.
    Leading,
    /// The agent on another node holds it.
    Following { holder: String },
}

/// What matters of the Service: its type, annotations and the resourceVersion they were read at.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceShape {
    /// `spec.type`; a Service without one is a `ClusterIP` Service.
    pub service_type: String,
    pub annotations: BTreeMap<String, String>,
    pub resource_version: String,
}

impl ServiceShape {
    /// The shape of a Service object as the API returns it.
    pub fn of(service: &k8s_openapi::api::core::v1::Service) -> ServiceShape {
        ServiceShape {
            service_type: service
                .spec
                .as_ref()
                .and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "ClusterIP".to_string()),
            annotations: service.metadata.annotations.clone().unwrap_or_default(),
            resource_version: service
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default(),
        }
    }
}

/// The Service as the keeper sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServiceView {
    pub leadership: Leadership,
    /// `None` until the Service was listed since this agent leads; `Some(None)` when it does
    /// not exist.
    pub service: Option<Option<ServiceShape>>,
    /// Moves with every change of the view.
    pub generation: u64,
}

impl Default for ApiServiceView {
    fn default() -> ApiServiceView {
        ApiServiceView {
            leadership: Leadership::Unknown {
                reason: "the keeper's Lease has not been tried yet".into(),
            },
            service: None,
            generation: 0,
        }
    }
}

/// The shape wanted: a type and the annotations that must be there with these values (other
/// annotations are left alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WantedShape {
    pub service_type: String,
    pub annotations: BTreeMap<String, String>,
}

/// How `shape` differs from `wanted`, one phrase per difference; empty when it is as wanted.
pub fn differences(shape: &ServiceShape, wanted: &WantedShape) -> Vec<String> {
    let mut out = Vec::new();
    if shape.service_type != wanted.service_type {
        out.push(format!(
            "type is {}, wanted {}",
            shape.service_type, wanted.service_type
        ));
    }
    for (key, value) in &wanted.annotations {
        match shape.annotations.get(key) {
            None => out.push(format!("annotation {key} is missing")),
            Some(had) if had != value => {
                out.push(format!("annotation {key} is {had:?}, wanted {value:?}"))
            }
            Some(_) => {}
        }
    }
    out
}

/// The JSON merge patch that moves `shape` to `wanted`, carrying the resourceVersion it was read
/// at as a precondition (a Service changed since is refused with 409, never overwritten);
/// `None` when there is nothing to change. Annotations not wanted are not touched.
pub fn merge_patch(shape: &ServiceShape, wanted: &WantedShape) -> Option<Value> {
    if differences(shape, wanted).is_empty() {
        return None;
    }
    let mut patch = json!({"metadata": {"resourceVersion": shape.resource_version}});
    if shape.service_type != wanted.service_type {
        patch["spec"] = json!({"type": wanted.service_type});
    }
    let changed: serde_json::Map<String, Value> = wanted
        .annotations
        .iter()
        .filter(|(k, v)| shape.annotations.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if !changed.is_empty() {
        patch["metadata"]["annotations"] = Value::Object(changed);
    }
    Some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(service_type: &str, annotations: &[(&str, &str)]) -> ServiceShape {
        ServiceShape {
            service_type: service_type.into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resource_version: "41".into(),
        }
    }

    fn wanted(annotations: &[(&str, &str)]) -> WantedShape {
        WantedShape {
            service_type: "LoadBalancer".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_service_read_from_the_api_has_its_type_or_cluster_ip() {
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "7",
                         "annotations": {"a": "b"}},
            "spec": {"clusterIP": "10.43.0.1"}
        }))
        .unwrap();
        assert_eq!(
            ServiceShape::of(&service),
            ServiceShape {
                service_type: "ClusterIP".into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
                resource_version: "7".into()
            }
        );
    }

    #[test]
    fn k3s_reset_is_a_type_difference_and_the_patch_sets_the_type_under_the_version_read() {
        let reset = shape("ClusterIP", &[]);
        let want = wanted(&[]);
        assert_eq!(
            differences(&reset, &want),
            vec!["type is ClusterIP, wanted LoadBalancer"]
        );
        assert_eq!(
            merge_patch(&reset, &want),
            Some(json!({"metadata": {"resourceVersion": "41"}, "spec": {"type": "LoadBalancer"}}))
        );
    }

    #[test]
    fn only_wanted_annotations_that_differ_are_patched_and_others_are_left_alone() {
        let now = shape(
            "LoadBalancer",
            &[
                ("keep.me/x", "1"),
                ("metallb.universe.tf/loadBalancerIPs", "10.0.0.9"),
            ],
        );
        let want = wanted(&[
            ("metallb.universe.tf/loadBalancerIPs", "10.0.0.5"),
            ("metallb.universe.tf/allow-shared-ip", "api"),
        ]);
        assert_eq!(
            differences(&now, &want),
            vec![
                "annotation metallb.universe.tf/allow-shared-ip is missing",
                "annotation metallb.universe.tf/loadBalancerIPs is \"10.0.0.9\", wanted \"10.0.0.5\""
            ]
        );
        assert_eq!(
            merge_patch(&now, &want),
            Some(
                json!({"metadata": {"resourceVersion": "41", "annotations": {
                "metallb.universe.tf/allow-shared-ip": "api",
                "metallb.universe.tf/loadBalancerIPs": "10.0.0.5"}}})
            )
        );
    }

    #[test]
    fn a_service_as_wanted_needs_no_patch() {
        let now = shape("LoadBalancer", &[("a", "1"), ("b", "2")]);
        let want = wanted(&[("a", "1")]);
        assert!(differences(&now, &want).is_empty());
        assert_eq!(merge_patch(&now, &want), None);
    }
}
