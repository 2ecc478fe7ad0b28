//! What the real server checks before it stores an object, so that a client the fake accepts is
//! one a cluster accepts:
//! - the object decodes into the typed API (k8s-openapi, v1_33): a field of the wrong type or a
//!   time that is not RFC 3339 is 400, an unknown field is dropped (the server's default field
//!   validation), times are stored as the server prints them (`Time` to the second);
//! - object names (RFC 1123 subdomains; namespaces RFC 1123 labels, services RFC 1035 labels),
//!   label keys and values, annotation keys;
//! - Events: required fields, lengths, the namespace an Event about a cluster-scoped object may
//!   live in (`default` or `kube-system` for one of events.k8s.io), and what an update may not
//!   change (everything but the series and metadata);
//! - Leases: positive durations, transitions not negative.

use super::resources::ResourceType;
use super::status::ApiError;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use serde_json::Value;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    resource: &ResourceType,
    object: Value,
) -> Result<Value, ApiError> {
    let typed: T = serde_json::from_value(object).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = resource.kind,
            version = resource.version
        ))
    })?;
    Ok(serde_json::to_value(&typed).expect("a typed object serializes"))
}

/// The object as the server stores it: decoded into its type and encoded back.
pub fn normalize(resource: &ResourceType, object: Value) -> Result<Value, ApiError> {
    match (resource.group, resource.kind) {
        ("", "Node") => round_trip::<Node>(resource, object),
        ("", "Pod") => round_trip::<Pod>(resource, object),
        ("", "Service") => round_trip::<Service>(resource, object),
        ("", "Namespace") => round_trip::<Namespace>(resource, object),
        ("", "Event") => round_trip::<CoreEvent>(resource, object),
        ("", "ConfigMap") => round_trip::<ConfigMap>(resource, object),
        ("events.k8s.io", "Event") => round_trip::<Event>(resource, object),
        ("coordination.k8s.io", "Lease") => round_trip::<Lease>(resource, object),
        ("discovery.k8s.io", "EndpointSlice") => round_trip::<EndpointSlice>(resource, object),
        _ => Ok(object),
    }
}

/// Collects field errors into one 422, worded as the real server words them.
struct Problems<'a> {
    resource: &'a ResourceType,
    name: String,
    found: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, field: &str, problem: impl std::fmt::Display) {
        self.found.push(format!("{field}: {problem}"));
    }

    fn required(&mut self, field: &str) {
        self.add(field, "Required value");
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                self.resource,
                &self.name,
                format!("[{}]", self.found.join(", ")),
            ))
        }
    }
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

fn is_rfc1035_label(text: &str) -> bool {
    is_dns_label(text) && text.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63.
fn is_label_part(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_part(name),
        None => is_label_part(key),
    }
}

fn text<'a>(object: &'a Value, field: &str) -> &'a str {
    object[field].as_str().unwrap_or_default()
}

fn check_metadata(resource: &ResourceType, object: &Value, problems: &mut Problems) {
    let metadata = &object["metadata"];
    let name = text(metadata, "name");
    let valid_name = match resource.plural {
        "namespaces" => is_dns_label(name),
        "services" => is_rfc1035_label(name),
        _ => is_dns_subdomain(name),
    };
    if !valid_name {
        problems.add(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: not a valid name for a {}",
                resource.kind
            ),
        );
    }
    if let Some(labels) = metadata["labels"].as_object() {
        for (key, value) in labels {
            if !is_qualified_name(key) {
                problems.add(
                    "metadata.labels",
                    format!("Invalid value: {key:?}: not a qualified name"),
                );
            }
            let value = value.as_str().unwrap_or_default();
            if !value.is_empty() && !is_label_part(value) {
                problems.add(
                    "metadata.labels",
                    format!("Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', at most 63"),
                );
            }
        }
    }
    if let Some(annotations) = metadata["annotations"].as_object() {
        for key in annotations.keys() {
            if !is_qualified_name(key) {
                problems.add(
                    "metadata.annotations",
                    format!("Invalid value: {key:?}: not a qualified name"),
                );
            }
        }
    }
}

/// The namespace rule every Event passes (the real server's "legacy" validation): an Event about
/// a cluster-scoped object (no namespace in its reference) lives in `default` (or, for one with an
/// `eventTime`, also `kube-system`); one about a namespaced object, with an old-style Event, in the
/// object's namespace.
fn check_event_namespace(
    object: &Value,
    regarding: &str,
    event_time: &str,
    problems: &mut Problems,
) {
    let namespace = text(&object["metadata"], "namespace");
    let regarding_namespace = text(&object[regarding], "namespace");
    let has_time = object[event_time].as_str().is_some_and(|t| !t.is_empty());
    let ok = match (has_time, regarding_namespace.is_empty()) {
        (false, true) => namespace.is_empty() || namespace == "default",
        (false, false) => namespace == regarding_namespace,
        (true, true) => namespace == "default" || namespace == "kube-system",
        (true, false) => true,
    };
    if !ok {
        problems.add(
            &format!("{regarding}.namespace"),
            format!("Invalid value: {regarding_namespace:?}: does not match event.namespace"),
        );
    }
}

fn check_length(
    object: &Value,
    field: &str,
    limit: usize,
    required: bool,
    problems: &mut Problems,
) {
    let value = text(object, field);
    if required && value.is_empty() {
        problems.required(field);
    }
    if value.len() > limit {
        problems.add(
            field,
            format!("Invalid value: can have at most {limit} characters"),
        );
    }
}

/// events.k8s.io/v1 on create: the strict rules.
fn check_new_event(object: &Value, problems: &mut Problems) {
    check_event_namespace(object, "regarding", "eventTime", problems);
    if text(object, "eventTime").is_empty() {
        problems.required("eventTime");
    }
    if !matches!(text(object, "type"), "Normal" | "Warning") {
        problems.add(
            "type",
            format!(
                "Invalid value: {:?}: has invalid value",
                text(object, "type")
            ),
        );
    }
    for deprecated in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if !object[deprecated].is_null() {
            problems.add(deprecated, "Invalid value: needs to be unset");
        }
    }
    let controller = text(object, "reportingController");
    if controller.is_empty() {
        problems.required("reportingController");
    } else if !is_qualified_name(controller) {
        problems.add(
            "reportingController",
            format!("Invalid value: {controller:?}: not a qualified name"),
        );
    }
    check_length(object, "reportingInstance", 128, true, problems);
    check_length(object, "action", 128, true, problems);
    check_length(object, "reason", 128, true, problems);
    check_length(object, "note", 1024, false, problems);
    check_series(object, problems);
}

fn check_series(object: &Value, problems: &mut Problems) {
    let series = &object["series"];
    if series.is_null() {
        return;
    }
    if series["count"].as_i64().unwrap_or(0) < 2 {
        problems.add("series.count", "Invalid value: should be at least 2");
    }
    if text(series, "lastObservedTime").is_empty() {
        problems.required("series.lastObservedTime");
    }
}

fn check_lease(object: &Value, problems: &mut Problems) {
    let spec = &object["spec"];
    if spec["leaseDurationSeconds"]
        .as_i64()
        .is_some_and(|d| d <= 0)
    {
        problems.add(
            "spec.leaseDurationSeconds",
            "Invalid value: must be greater than 0",
        );
    }
    if spec["leaseTransitions"].as_i64().is_some_and(|t| t < 0) {
        problems.add(
            "spec.leaseTransitions",
            "Invalid value: must be greater than or equal to 0",
        );
    }
}

fn problems_for<'a>(resource: &'a ResourceType, object: &Value) -> Problems<'a> {
    Problems {
        resource,
        name: text(&object["metadata"], "name").to_string(),
        found: Vec::new(),
    }
}

fn check_every_write(resource: &ResourceType, object: &Value, problems: &mut Problems) {
    check_metadata(resource, object, problems);
    match (resource.group, resource.kind) {
        ("", "Event") => check_event_namespace(object, "involvedObject", "eventTime", problems),
        ("coordination.k8s.io", "Lease") => check_lease(object, problems),
        _ => {}
    }
}

/// The rules of a new object (already normalized).
pub fn validate_create(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let mut problems = problems_for(resource, object);
    check_every_write(resource, object, &mut problems);
    if (resource.group, resource.kind) == ("events.k8s.io", "Event") {
        check_new_event(object, &mut problems);
    }
    problems.finish()
}

/// Fields of an events.k8s.io Event an update may not change.
const IMMUTABLE_EVENT_FIELDS: &[&str] = &[
    "regarding",
    "related",
    "reason",
    "note",
    "type",
    "eventTime",
    "action",
    "reportingController",
    "reportingInstance",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
];

/// The rules of an update from `old` to `new` (both normalized).
pub fn validate_update(resource: &ResourceType, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut problems = problems_for(resource, new);
    check_every_write(resource, new, &mut problems);
    if (resource.group, resource.kind) == ("events.k8s.io", "Event") {
        for field in IMMUTABLE_EVENT_FIELDS {
            if old[field] != new[field] {
                problems.add(field, "Invalid value: field is immutable");
            }
        }
        if old["series"] != new["series"] {
            check_series(new, &mut problems);
        }
    }
    problems.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::{
        CORE_EVENTS, EVENTS, LEASES, NAMESPACES, NODES, SERVICES,
    };
    use serde_json::json;

    fn node_event(namespace: &str) -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "node-a.1", "namespace": namespace},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "type": "Warning",
            "reason": "FindingRaised",
            "action": "Detect",
            "note": "hostport-hijack: ip nat CNI-DN-x",
            "reportingController": "netmend.io/agent",
            "reportingInstance": "node-a",
            "regarding": {"kind": "Node", "name": "node-a", "apiVersion": "v1"},
        })
    }

    #[test]
    fn normalizing_drops_unknown_fields_and_refuses_wrong_types() {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"unschedulable": true, "frobnicate": 1}});
        let stored = normalize(&NODES, node).unwrap();
        assert_eq!(stored["spec"], json!({"unschedulable": true}));
        let wrong = json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": true}]}});
        let err = normalize(&NODES, wrong).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("cannot be handled as a Node"),
            "{}",
            err.message
        );
        let bad_time = json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "X", "status": "True", "lastHeartbeatTime": "yesterday"}]}});
        assert_eq!(normalize(&NODES, bad_time).unwrap_err().code, 400);
        // Times are stored to the second, as the server prints them.
        let precise =
            json!({"metadata": {"name": "n1", "creationTimestamp": "2025-01-01T00:00:00.123456Z"}});
        assert_eq!(
            normalize(&NODES, precise).unwrap()["metadata"]["creationTimestamp"],
            "2025-01-01T00:00:00Z"
        );
    }

    #[test]
    fn names_and_labels_follow_the_rules() {
        let ok = json!({"metadata": {"name": "node-a.example", "labels": {"netmend.io/mode": "dry-run", "empty": ""}, "annotations": {"a.b/c": "anything at all"}}});
        assert!(validate_create(&NODES, &ok).is_ok());
        for bad in [
            json!({"metadata": {"name": "Node_A"}}),
            json!({"metadata": {"name": "n", "labels": {"netmend.io/mode": "dry run"}}}),
            json!({"metadata": {"name": "n", "labels": {"-bad": "x"}}}),
            json!({"metadata": {"name": "n", "annotations": {"a/b/c": "x"}}}),
        ] {
            let err = validate_create(&NODES, &bad).unwrap_err();
            assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{bad}");
        }
        assert!(validate_create(&NAMESPACES, &json!({"metadata": {"name": "a.b"}})).is_err());
        assert!(validate_create(&SERVICES, &json!({"metadata": {"name": "1web"}})).is_err());
    }

    #[test]
    fn an_event_about_a_node_lives_in_default_or_kube_system() {
        assert!(validate_create(&EVENTS, &node_event("default")).is_ok());
        assert!(validate_create(&EVENTS, &node_event("kube-system")).is_ok());
        let err = validate_create(&EVENTS, &node_event("netmend")).unwrap_err();
        assert!(
            err.message.contains("regarding.namespace"),
            "{}",
            err.message
        );
        let mut about_a_pod = node_event("netmend");
        about_a_pod["regarding"] = json!({"kind": "Pod", "name": "p", "namespace": "netmend"});
        assert!(validate_create(&EVENTS, &about_a_pod).is_ok());
        // Old-style core Events without an eventTime: cluster-scoped ones in default only.
        let core = json!({"metadata": {"name": "e", "namespace": "netmend"}, "involvedObject": {"kind": "Node", "name": "node-a"}, "reason": "X"});
        assert!(validate_create(&CORE_EVENTS, &core).is_err());
    }

    #[test]
    fn a_new_event_needs_its_fields_and_an_update_only_changes_the_series() {
        let mut incomplete = node_event("default");
        for field in ["eventTime", "action", "reportingInstance"] {
            incomplete.as_object_mut().unwrap().remove(field);
        }
        incomplete["type"] = json!("Fatal");
        incomplete["note"] = json!("x".repeat(1025));
        incomplete["series"] = json!({"count": 1});
        let err = validate_create(&EVENTS, &incomplete).unwrap_err();
        for field in [
            "eventTime: Required",
            "action: Required",
            "reportingInstance: Required",
            "type:",
            "note:",
            "series.count",
            "series.lastObservedTime",
        ] {
            assert!(err.message.contains(field), "{field} in {}", err.message);
        }
        let old = node_event("default");
        let mut repeated = old.clone();
        repeated["series"] = json!({"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"});
        assert!(validate_update(&EVENTS, &old, &repeated).is_ok());
        let mut renoted = repeated.clone();
        renoted["note"] = json!("something else");
        let err = validate_update(&EVENTS, &repeated, &renoted).unwrap_err();
        assert!(
            err.message
                .contains("note: Invalid value: field is immutable"),
            "{}",
            err.message
        );
    }

    #[test]
    fn lease_durations_are_positive() {
        let lease = |duration: i64| json!({"metadata": {"name": "slot"}, "spec": {"leaseDurationSeconds": duration}});
        assert!(validate_create(&LEASES, &lease(30)).is_ok());
        assert!(validate_create(&LEASES, &lease(0)).is_err());
        let negative = json!({"metadata": {"name": "slot"}, "spec": {"leaseTransitions": -1}});
        assert!(validate_update(&LEASES, &lease(30), &negative).is_err());
    }
}
