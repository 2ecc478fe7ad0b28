//! What the cluster intends kube-proxy to program on this node, from the Services and their
//! EndpointSlices, and how that differs from what it did program
//! ([`crate::model::kube_proxy::ProgrammedServices`]). Pure: the objects come from watches, the
//! comparison is a function.
//!
//! The selection follows kube-proxy's own: per Service port, the first address of every endpoint
//! that is ready (a missing `ready` counts as ready); when none is ready, the endpoints that are
//! serving and terminating. Services kube-proxy does not program are left out (headless, no
//! cluster IP, ExternalName, or labelled `service.kubernetes.io/service-proxy-name` for another
//! proxy). Service ports whose programmed endpoints legitimately differ from that selection are
//! kept but not judged, with the reason: `internalTrafficPolicy: Local` (only this node's
//! endpoints) and topology-aware routing (endpoints with zone hints).

use crate::model::kube_proxy::{ProgrammedServices, ServicePort};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that hands a Service to a proxy other than the default kube-proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// What the cluster intends for one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Intended {
    /// kube-proxy programs exactly these endpoints.
    Endpoints { endpoints: BTreeSet<SocketAddr> },
    /// The programmed endpoints may legitimately differ: not compared.
    NotJudged { reason: String },
}

/// A Service port whose programmed endpoints differ from the intended ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDrift {
    pub service: ServicePort,
    /// Intended but not programmed.
    pub missing: BTreeSet<SocketAddr>,
    /// Programmed but not intended (traffic sent to endpoints that are gone or not ready).
    pub extra: BTreeSet<SocketAddr>,
    /// kube-proxy has no rules at all for this Service port.
    pub not_programmed: bool,
    /// The Service no longer exists but its rules do.
    pub service_gone: bool,
}

fn protocol_of(protocol: Option<&String>) -> String {
    protocol
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_else(|| "tcp".to_string())
}

fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Why kube-proxy does not program `service` at all, if it does not.
fn not_proxied(service: &Service) -> Option<&'static str> {
    if label(&service.metadata, SERVICE_PROXY_NAME_LABEL).is_some() {
        return Some("handed to another proxy");
    }
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("ExternalName");
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") => Some("no cluster IP yet"),
        Some("None") => Some("headless"),
        Some(_) => None,
    }
}

/// One endpoint of a slice for one port: its first address and whether it is ready, serving and
/// terminating.
struct Candidate {
    address: SocketAddr,
    ready: bool,
    serving_terminating: bool,
    hinted: bool,
}

/// The intended endpoints of every Service port kube-proxy programs. `slices` may hold slices of
/// any Service (they are matched by namespace and the service-name label).
pub fn intended_services(
    services: &[Service],
    slices: &[EndpointSlice],
) -> BTreeMap<ServicePort, Intended> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let (Some(namespace), Some(name)) = (
            slice.metadata.namespace.as_deref(),
            label(&slice.metadata, SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        by_service.entry((namespace, name)).or_default().push(slice);
    }
    let mut intended = BTreeMap::new();
    for service in services {
        if not_proxied(service).is_some() {
            continue;
        }
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
        let service_slices = by_service
            .get(&(namespace, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for port in spec.ports.iter().flatten() {
            let port_name = port.name.clone().unwrap_or_default();
            let protocol = protocol_of(port.protocol.as_ref());
            let key = ServicePort {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port: port_name.clone(),
                protocol: protocol.clone(),
            };
            if local_only {
                intended.insert(
                    key,
                    Intended::NotJudged {
                        reason: "internalTrafficPolicy: Local programs only this node's endpoints"
                            .into(),
                    },
                );
                continue;
            }
            let candidates = candidates_for(service_slices, &port_name, &protocol);
            if candidates.iter().any(|c| c.hinted) {
                intended.insert(
                    key,
                    Intended::NotJudged {
                        reason: "topology-aware routing: endpoints carry zone hints".into(),
                    },
                );
                continue;
            }
            let any_ready = candidates.iter().any(|c| c.ready);
            let endpoints = candidates
                .iter()
                .filter(|c| {
                    if any_ready {
                        c.ready
                    } else {
                        c.serving_terminating
                    }
                })
                .map(|c| c.address)
                .collect();
            intended.insert(key, Intended::Endpoints { endpoints });
        }
    }
    intended
}

fn candidates_for(slices: &[&EndpointSlice], port_name: &str, protocol: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let number = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or("") == port_name;
            let same_protocol = protocol_of(p.protocol.as_ref()) == protocol;
            (same_name && same_protocol)
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        });
        let Some(number) = number else { continue };
        for endpoint in &slice.endpoints {
            let Some(address) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            out.push(Candidate {
                address: SocketAddr::new(address, number),
                ready: conditions.ready != Some(false),
                serving_terminating: conditions.serving == Some(true)
                    && conditions.terminating == Some(true),
                hinted: endpoint
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .is_some_and(|zones| !zones.is_empty()),
            });
        }
    }
    out
}

/// Every judged Service port whose programmed endpoints differ from the intended ones, and every
/// programmed Service port of a Service that no longer exists. Only address families kube-proxy
/// programs on this node are compared (a single-stack node ignores the other family's slices).
pub fn drift(
    programmed: &ProgrammedServices,
    intended: &BTreeMap<ServicePort, Intended>,
    existing_services: &BTreeSet<(String, String)>,
) -> Vec<ServiceDrift> {
    let families: BTreeSet<bool> = programmed
        .services
        .values()
        .flatten()
        .map(SocketAddr::is_ipv4)
        .collect();
    let mut out = Vec::new();
    for (port, wanted) in intended {
        let Intended::Endpoints { endpoints } = wanted else {
            continue;
        };
        let wanted: BTreeSet<SocketAddr> = endpoints
            .iter()
            .filter(|e| families.is_empty() || families.contains(&e.is_ipv4()))
            .copied()
            .collect();
        let (have, not_programmed) = match programmed.services.get(port) {
            Some(have) => (have.clone(), false),
            None => (BTreeSet::new(), true),
        };
        // A Service port kube-proxy never programmed and that has no endpoints either is not
        // a difference anyone could see.
        if not_programmed && wanted.is_empty() {
            continue;
        }
        let missing: BTreeSet<SocketAddr> = wanted.difference(&have).copied().collect();
        let extra: BTreeSet<SocketAddr> = have.difference(&wanted).copied().collect();
        if !missing.is_empty() || !extra.is_empty() {
            out.push(ServiceDrift {
                service: port.clone(),
                missing,
                extra,
                not_programmed,
                service_gone: false,
            });
        }
    }
    for (port, have) in &programmed.services {
        let exists = existing_services.contains(&(port.namespace.clone(), port.name.clone()));
        if !exists && !have.is_empty() {
            out.push(ServiceDrift {
                service: port.clone(),
                missing: BTreeSet::new(),
                extra: have.clone(),
                not_programmed: false,
                service_gone: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kube_proxy::ProxyMode;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).expect("a Service as the API serves it")
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("an EndpointSlice as the API serves it")
    }

    fn port(ns: &str, name: &str, port: &str) -> ServicePort {
        ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol: "tcp".into(),
        }
    }

    fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A ClusterIP Service with a named and an unnamed-protocol port, as `kubectl get -o json`
    /// prints it (trimmed to what matters).
    fn web() -> Service {
        service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.50",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                               {"name": "metrics", "port": 9090, "protocol": "TCP"}]}
        }))
    }

    /// Its slice: one ready endpoint, one not ready, one terminating; the endpoint controller
    /// writes `ready: false` for a terminating endpoint.
    fn web_slice() -> EndpointSlice {
        slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc12", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.7"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n1"},
                {"addresses": ["10.42.1.8"], "conditions": {"ready": false, "serving": false, "terminating": false}, "nodeName": "n2"},
                {"addresses": ["10.42.2.9"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n3"},
                {"addresses": ["10.42.3.3"], "nodeName": "n3"}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "metrics", "port": 9100, "protocol": "TCP"}]
        }))
    }

    #[test]
    fn ready_endpoints_per_port_with_a_missing_condition_counting_as_ready() {
        let intended = intended_services(&[web()], &[web_slice()]);
        assert_eq!(
            intended[&port("shop", "web", "http")],
            Intended::Endpoints {
                endpoints: addrs(&["10.42.0.7:8080", "10.42.3.3:8080"])
            }
        );
        assert_eq!(
            intended[&port("shop", "web", "metrics")],
            Intended::Endpoints {
                endpoints: addrs(&["10.42.0.7:9100", "10.42.3.3:9100"])
            }
        );
    }

    #[test]
    fn serving_terminating_endpoints_stand_in_when_none_is_ready() {
        let mut only_terminating = web_slice();
        only_terminating.endpoints.retain(|e| {
            e.conditions
                .as_ref()
                .is_some_and(|c| c.terminating == Some(true) || c.ready == Some(false))
        });
        let intended = intended_services(&[web()], &[only_terminating]);
        assert_eq!(
            intended[&port("shop", "web", "http")],
            Intended::Endpoints {
                endpoints: addrs(&["10.42.2.9:8080"])
            }
        );
    }

    #[test]
    fn services_kube_proxy_does_not_program_are_left_out_and_local_policy_is_not_judged() {
        let headless = service(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }));
        let other_proxy = service(serde_json::json!({
            "metadata": {"name": "mesh", "namespace": "shop",
                         "labels": {"service.kubernetes.io/service-proxy-name": "cilium"}},
            "spec": {"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}
        }));
        let external_name = service(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        let local = service(serde_json::json!({
            "metadata": {"name": "node-local", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.11", "internalTrafficPolicy": "Local", "ports": [{"port": 53, "protocol": "UDP"}]}
        }));
        let intended = intended_services(&[headless, other_proxy, external_name, local], &[]);
        assert_eq!(intended.len(), 1, "{intended:?}");
        let key = ServicePort {
            namespace: "shop".into(),
            name: "node-local".into(),
            port: String::new(),
            protocol: "udp".into(),
        };
        assert!(matches!(intended[&key], Intended::NotJudged { .. }));
    }

    #[test]
    fn zone_hints_are_not_judged() {
        let mut hinted = web_slice();
        hinted.endpoints[0].hints =
            Some(serde_json::from_value(serde_json::json!({"forZones": [{"name": "a"}]})).unwrap());
        let intended = intended_services(&[web()], &[hinted]);
        assert!(matches!(
            intended[&port("shop", "web", "http")],
            Intended::NotJudged { .. }
        ));
    }

    fn programmed(entries: &[(ServicePort, &[&str])]) -> ProgrammedServices {
        ProgrammedServices {
            mode: Some(ProxyMode::Iptables),
            services: entries
                .iter()
                .map(|(port, list)| (port.clone(), addrs(list)))
                .collect(),
        }
    }

    fn existing(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        list.iter()
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect()
    }

    #[test]
    fn drift_names_missing_and_extra_endpoints_and_gone_services() {
        let intended = intended_services(&[web()], &[web_slice()]);
        let now = programmed(&[
            // kube-proxy missed the scale-up to 10.42.3.3 and still sends to a deleted pod.
            (
                port("shop", "web", "http"),
                &["10.42.0.7:8080", "10.42.9.9:8080"],
            ),
            (
                port("shop", "web", "metrics"),
                &["10.42.0.7:9100", "10.42.3.3:9100"],
            ),
            (port("shop", "deleted", "http"), &["10.42.5.5:80"]),
        ]);
        let found = drift(&now, &intended, &existing(&[("shop", "web")]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].service, port("shop", "web", "http"));
        assert_eq!(found[0].missing, addrs(&["10.42.3.3:8080"]));
        assert_eq!(found[0].extra, addrs(&["10.42.9.9:8080"]));
        assert!(found[1].service_gone);
        assert_eq!(found[1].extra, addrs(&["10.42.5.5:80"]));
    }

    #[test]
    fn in_step_rules_show_no_drift_and_other_families_are_ignored() {
        let mut with_v6 = web_slice();
        with_v6.address_type = "IPv6".into();
        with_v6.metadata.name = Some("web-v6".into());
        for (i, endpoint) in with_v6.endpoints.iter_mut().enumerate() {
            endpoint.addresses = vec![format!("fd00::{}", i + 1)];
        }
        let intended = intended_services(&[web()], &[web_slice(), with_v6]);
        let now = programmed(&[
            (
                port("shop", "web", "http"),
                &["10.42.0.7:8080", "10.42.3.3:8080"],
            ),
            (
                port("shop", "web", "metrics"),
                &["10.42.0.7:9100", "10.42.3.3:9100"],
            ),
        ]);
        assert_eq!(
            drift(&now, &intended, &existing(&[("shop", "web")])),
            vec![]
        );
    }

    #[test]
    fn a_service_port_never_programmed_is_drift_only_when_it_has_endpoints() {
        let intended = intended_services(&[web()], &[web_slice()]);
        let now = programmed(&[(port("shop", "other", "x"), &[])]);
        let found = drift(
            &now,
            &intended,
            &existing(&[("shop", "web"), ("shop", "other")]),
        );
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|d| d.not_programmed && d.extra.is_empty()));
        let none = intended_services(&[web()], &[]);
        assert_eq!(
            drift(
                &now,
                &none,
                &existing(&[("shop", "web"), ("shop", "other")])
            ),
            vec![]
        );
    }
}
