//! The three patch formats of the real API server, on JSON values:
//! - strategic merge (`application/strategic-merge-patch+json`): maps merged key by key (`null`
//!   deletes), lists with a merge key merged element by element (`status.conditions` by `type`),
//!   lists of scalars named in [`PRIMITIVE_MERGE_LISTS`] unioned, every other list replaced; the
//!   directives `$patch: replace|delete|merge` (on maps and list elements), `$retainKeys` and
//!   `$deleteFromPrimitiveList/<field>`. `$setElementOrder/<field>` is accepted and dropped: the
//!   merged list keeps the stored order with new elements at the end;
//! - JSON merge patch (`application/merge-patch+json`, RFC 7386);
//! - JSON patch (`application/json-patch+json`, RFC 6902), in [`super::json_patch`].
//!
//! Over 500 lines by its tests: the directives of strategic merge each have one.

use super::json_patch::json_patch;
use super::resources::{ResourceType, PRIMITIVE_MERGE_LISTS};
use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document itself is not valid for its format (400 on the wire).
    Malformed(String),
    /// A valid patch that does not apply to this object, e.g. a failed `test` (422).
    DoesNotApply(String),
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchError::Malformed(m) | PatchError::DoesNotApply(m) => f.write_str(m),
        }
    }
}

/// The patch formats served, by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    StrategicMerge,
    MergePatch,
    JsonPatch,
}

impl PatchFormat {
    /// The format of a `Content-Type` (parameters ignored); `None` for anything else, including
    /// server-side apply (`application/apply-patch+yaml`), which this server does not implement.
    pub fn from_content_type(content_type: &str) -> Option<PatchFormat> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/strategic-merge-patch+json" => Some(PatchFormat::StrategicMerge),
            "application/merge-patch+json" => Some(PatchFormat::MergePatch),
            "application/json-patch+json" => Some(PatchFormat::JsonPatch),
            _ => None,
        }
    }

    /// Applies `patch` to `original` (an object of type `resource`).
    pub fn apply(
        self,
        original: &Value,
        patch: &Value,
        resource: &ResourceType,
    ) -> Result<Value, PatchError> {
        match self {
            PatchFormat::StrategicMerge => strategic_merge(original, patch, resource),
            PatchFormat::MergePatch => Ok(merge_patch(original, patch)),
            PatchFormat::JsonPatch => json_patch(original, patch),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Strategic merge patch of `original` by `patch`, with the list strategies of `resource`.
pub fn strategic_merge(
    original: &Value,
    patch: &Value,
    resource: &ResourceType,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed(
            "a strategic merge patch is a JSON object".into(),
        ));
    };
    let empty = Map::new();
    let original = original.as_object().unwrap_or(&empty);
    Ok(merge_map(original, patch, "", resource)?
        .map(Value::Object)
        .unwrap_or_else(|| Value::Object(Map::new())))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges one map; `None` when the patch deletes it (`$patch: delete`).
fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
    resource: &ResourceType,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(DIRECTIVE) {
        None => {}
        Some(Value::String(d)) if d == "merge" => {}
        Some(Value::String(d)) if d == "delete" => return Ok(None),
        Some(Value::String(d)) if d == "replace" => {
            let mut replaced = Map::new();
            for (key, value) in patch {
                if key != DIRECTIVE {
                    replaced.insert(key.clone(), fresh(value, &join(path, key), resource)?);
                }
            }
            return Ok(Some(replaced));
        }
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown patch directive {other} at {path:?}"
            )))
        }
    }
    let mut merged = original.clone();
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = retain else {
            return Err(PatchError::Malformed(format!(
                "$retainKeys at {path:?} is not a list"
            )));
        };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        merged.retain(|key, _| keys.contains(&key.as_str()));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(remove) = value else {
                return Err(PatchError::Malformed(format!(
                    "{key} at {path:?} is not a list"
                )));
            };
            if let Some(Value::Array(list)) = merged.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if key == DIRECTIVE || key == RETAIN_KEYS || key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
            continue;
        }
        if key.starts_with(SET_ELEMENT_ORDER) {
            if !value.is_array() {
                return Err(PatchError::Malformed(format!(
                    "{key} at {path:?} is not a list"
                )));
            }
            continue;
        }
        let here = join(path, key);
        if value.is_null() {
            merged.remove(key);
            continue;
        }
        let result = match (merged.get(key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => {
                merge_map(old, new, &here, resource)?.map(Value::Object)
            }
            (Some(Value::Array(old)), Value::Array(new)) => {
                Some(Value::Array(merge_list(old, new, &here, resource)?))
            }
            (_, Value::Object(new)) => {
                merge_map(&Map::new(), new, &here, resource)?.map(Value::Object)
            }
            (_, Value::Array(new)) => Some(Value::Array(merge_list(&[], new, &here, resource)?)),
            (_, scalar) => Some(scalar.clone()),
        };
        match result {
            Some(value) => merged.insert(key.clone(), value),
            None => merged.remove(key),
        };
    }
    Ok(Some(merged))
}

/// A patch value set where there was nothing: its directives applied to an empty value.
fn fresh(value: &Value, path: &str, resource: &ResourceType) -> Result<Value, PatchError> {
    Ok(match value {
        Value::Object(map) => {
            Value::Object(merge_map(&Map::new(), map, path, resource)?.unwrap_or_default())
        }
        Value::Array(list) => Value::Array(merge_list(&[], list, path, resource)?),
        scalar => scalar.clone(),
    })
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    path: &str,
    resource: &ResourceType,
) -> Result<Vec<Value>, PatchError> {
    if let Some(key) = resource.merge_key(path) {
        return merge_keyed_list(original, patch, path, key, resource);
    }
    if PRIMITIVE_MERGE_LISTS.contains(&path) {
        let mut merged = original.to_vec();
        for value in patch {
            if !merged.contains(value) {
                merged.push(value.clone());
            }
        }
        return Ok(merged);
    }
    // No merge strategy: the list is replaced.
    patch.iter().map(|v| fresh(v, path, resource)).collect()
}

fn directive_of(element: &Map<String, Value>) -> Option<&str> {
    element.get(DIRECTIVE).and_then(Value::as_str)
}

fn merge_keyed_list(
    original: &[Value],
    patch: &[Value],
    path: &str,
    key: &str,
    resource: &ResourceType,
) -> Result<Vec<Value>, PatchError> {
    let mut elements = Vec::with_capacity(patch.len());
    for element in patch {
        let Value::Object(map) = element else {
            return Err(PatchError::Malformed(format!(
                "{path}: an element of a list merged by {key:?} is not an object: {element}"
            )));
        };
        elements.push(map);
    }
    if elements.iter().any(|e| directive_of(e) == Some("replace")) {
        return elements
            .into_iter()
            .filter(|e| directive_of(e) != Some("replace"))
            .map(|e| fresh(&Value::Object(e.clone()), path, resource))
            .collect();
    }
    let mut merged: Vec<Value> = original.to_vec();
    for element in elements {
        let Some(id) = element.get(key) else {
            return Err(PatchError::Malformed(format!(
                "{path}: map {} does not contain declared merge key: {key}",
                Value::Object(element.clone())
            )));
        };
        let position = merged.iter().position(|old| old.get(key) == Some(id));
        match directive_of(element) {
            Some("delete") => merged.retain(|old| old.get(key) != Some(id)),
            None | Some("merge") => {
                let empty = Map::new();
                let base = position
                    .and_then(|i| merged[i].as_object())
                    .unwrap_or(&empty);
                let result = merge_map(base, element, path, resource)?;
                match (position, result) {
                    (Some(i), Some(map)) => merged[i] = Value::Object(map),
                    (Some(i), None) => {
                        merged.remove(i);
                    }
                    (None, Some(map)) => merged.push(Value::Object(map)),
                    (None, None) => {}
                }
            }
            Some(other) => {
                return Err(PatchError::Malformed(format!(
                    "{path}: unknown patch directive {other:?} in a list element"
                )))
            }
        }
    }
    Ok(merged)
}

// ---------------------------------------------------------------------------------------------
// JSON merge patch (RFC 7386)

/// `original` merged with `patch` as RFC 7386 says: objects key by key, `null` deletes, anything
/// else replaces.
pub fn merge_patch(original: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut merged = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            merged.remove(key);
        } else {
            let old = merged.get(key).cloned().unwrap_or(Value::Null);
            merged.insert(key.clone(), merge_patch(&old, value));
        }
    }
    Value::Object(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::{LEASES, NODES, PODS};
    use serde_json::json;

    fn node_with_conditions() -> Value {
        json!({
            "metadata": {"name": "n1", "labels": {"a": "1", "b": "2"}},
            "spec": {"unschedulable": false, "taints": [{"key": "k1", "effect": "NoSchedule"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2024-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False"},
                {"type": "NetmendHostportHijack", "status": "True", "reason": "HijackPresent"},
            ]}
        })
    }

    #[test]
    fn conditions_merge_by_type_and_leave_the_others_untouched() {
        let patch = json!({"status": {"conditions": [
            {"type": "NetmendHostportHijack", "status": "False", "reason": "NoHijack"},
            {"type": "NetmendPromiscLost", "status": "False", "reason": "PromiscKept"},
        ]}});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        let conditions = merged["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 4);
        assert_eq!(
            conditions[0],
            node_with_conditions()["status"]["conditions"][0]
        );
        assert_eq!(conditions[1]["type"], "MemoryPressure");
        assert_eq!(
            conditions[2],
            json!({"type": "NetmendHostportHijack", "status": "False", "reason": "NoHijack"})
        );
        assert_eq!(conditions[3]["type"], "NetmendPromiscLost");
        // Everything outside the patch is as it was.
        assert_eq!(merged["spec"], node_with_conditions()["spec"]);
        assert_eq!(merged["metadata"], node_with_conditions()["metadata"]);
    }

    #[test]
    fn a_delete_directive_removes_one_condition() {
        let patch = json!({"status": {"conditions": [
            {"type": "NetmendHostportHijack", "$patch": "delete"},
        ]}});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        let types: Vec<&str> = merged["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Ready", "MemoryPressure"]);
    }

    #[test]
    fn deleting_an_absent_condition_changes_nothing() {
        let patch = json!({"status": {"conditions": [{"type": "Nope", "$patch": "delete"}]}});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        assert_eq!(merged, node_with_conditions());
    }

    #[test]
    fn a_replace_directive_in_a_keyed_list_replaces_the_list() {
        let patch = json!({"status": {"conditions": [
            {"$patch": "replace"},
            {"type": "Ready", "status": "False"},
        ]}});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        assert_eq!(
            merged["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"}])
        );
    }

    #[test]
    fn an_element_without_its_merge_key_is_refused() {
        let patch = json!({"status": {"conditions": [{"status": "False"}]}});
        let err = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap_err();
        assert!(
            matches!(&err, PatchError::Malformed(m) if m.contains("does not contain declared merge key: type")),
            "{err:?}"
        );
    }

    #[test]
    fn labels_merge_as_maps_and_null_deletes_a_label() {
        let patch = json!({"metadata": {"labels": {"a": null, "netmend.io/mode": "dry-run"}}, "spec": {"unschedulable": true}});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        assert_eq!(
            merged["metadata"]["labels"],
            json!({"b": "2", "netmend.io/mode": "dry-run"})
        );
        assert_eq!(merged["spec"]["unschedulable"], true);
        assert_eq!(merged["spec"]["taints"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_list_without_a_merge_key_is_replaced() {
        let pod = json!({"spec": {"tolerations": [{"key": "a"}, {"key": "b"}]}});
        let patch = json!({"spec": {"tolerations": [{"key": "c"}]}});
        let merged = strategic_merge(&pod, &patch, &PODS).unwrap();
        assert_eq!(merged["spec"]["tolerations"], json!([{"key": "c"}]));
    }

    #[test]
    fn nested_keyed_lists_merge_at_every_level() {
        let pod = json!({"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "sidecar", "image": "s:1"},
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "app", "env": [{"name": "Y", "value": "3"}]},
        ]}});
        let merged = strategic_merge(&pod, &patch, &PODS).unwrap();
        assert_eq!(
            merged["spec"]["containers"][0],
            json!({"name": "app", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}]})
        );
        assert_eq!(merged["spec"]["containers"][1]["name"], "sidecar");
    }

    #[test]
    fn finalizers_union_and_delete_from_primitive_list_removes() {
        let node = json!({"metadata": {"finalizers": ["a", "b"]}});
        let merged = strategic_merge(
            &node,
            &json!({"metadata": {"finalizers": ["b", "c"]}}),
            &NODES,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let merged = strategic_merge(
            &merged,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            &NODES,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn map_directives_replace_delete_and_retain_keys() {
        let lease = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 30}});
        let replaced = strategic_merge(
            &lease,
            &json!({"spec": {"$patch": "replace", "holderIdentity": "b"}}),
            &LEASES,
        )
        .unwrap();
        assert_eq!(replaced["spec"], json!({"holderIdentity": "b"}));
        let deleted =
            strategic_merge(&lease, &json!({"spec": {"$patch": "delete"}}), &LEASES).unwrap();
        assert_eq!(deleted, json!({}));
        let retained = strategic_merge(
            &lease,
            &json!({"spec": {"$retainKeys": ["holderIdentity"], "holderIdentity": "c"}}),
            &LEASES,
        )
        .unwrap();
        assert_eq!(retained["spec"], json!({"holderIdentity": "c"}));
    }

    #[test]
    fn set_element_order_is_accepted_and_dropped() {
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "Ready"}],
            "conditions": [{"type": "Ready", "status": "Unknown"}],
        }});
        let merged = strategic_merge(&node_with_conditions(), &patch, &NODES).unwrap();
        assert!(merged["status"]
            .get("$setElementOrder/conditions")
            .is_none());
        assert_eq!(merged["status"]["conditions"][0]["status"], "Unknown");
    }

    #[test]
    fn directives_never_leak_into_new_values() {
        let patch = json!({"status": {"conditions": [
            {"type": "New", "status": "True"},
            {"type": "Gone", "$patch": "delete"},
        ]}, "spec": {"newMap": {"$patch": "delete"}}});
        let merged = strategic_merge(&json!({}), &patch, &NODES).unwrap();
        assert_eq!(
            merged,
            json!({"status": {"conditions": [{"type": "New", "status": "True"}]}, "spec": {}})
        );
    }

    #[test]
    fn unknown_directives_and_non_objects_are_refused() {
        assert!(matches!(
            strategic_merge(&json!({}), &json!({"$patch": "explode"}), &NODES),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            strategic_merge(&json!({}), &json!([1]), &NODES),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example.
        let original = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]});
        assert_eq!(
            merge_patch(&original, &patch),
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        // Lists are replaced even where strategic merge would merge them.
        let merged = merge_patch(
            &node_with_conditions(),
            &json!({"status": {"conditions": [{"type": "X"}]}}),
        );
        assert_eq!(merged["status"]["conditions"], json!([{"type": "X"}]));
        assert_eq!(merge_patch(&json!({"a": 1}), &json!("s")), json!("s"));
        assert_eq!(
            merge_patch(&json!("s"), &json!({"a": {"b": null}})),
            json!({"a": {}})
        );
    }

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(
            PatchFormat::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchFormat::StrategicMerge)
        );
        assert_eq!(
            PatchFormat::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchFormat::MergePatch)
        );
        assert_eq!(
            PatchFormat::from_content_type("application/json-patch+json"),
            Some(PatchFormat::JsonPatch)
        );
        assert_eq!(
            PatchFormat::from_content_type("application/apply-patch+yaml"),
            None
        );
    }
}
