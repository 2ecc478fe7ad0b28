//! The objects of the fake API server and the rules of writing them, as the real server applies
//! them: one global resourceVersion bumped by every write (a write that changes nothing is no
//! write and keeps it), `uid`, `creationTimestamp` and `generation` set by the server, 409
//! `AlreadyExists` on create, 409 `Conflict` on a stale resourceVersion or UID precondition,
//! namespaces that must exist, the real server's validation (`super::validation`: typed decoding,
//! names, labels, Events, Leases), the `status` subresource (writes to it change only `status`, writes
//! to the object keep the stored `status`), deletion held by finalizers, and a bounded history of
//! changes for watches (a watch from a resourceVersion older than the history is 410 `Expired`).
//!
//! Pods are deleted at once: there is no kubelet to finish a graceful deletion.
//!
//! Over 500 lines: the write rules (create, replace, patch, delete) share the server-owned fields,
//! the scope and the history, and are tested together beside them (half the file).

use super::patch::{PatchError, PatchFormat};
use super::resources::{ResourceType, NAMESPACES};
use super::status::{self, ApiError};
use super::validation;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// The namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The first resourceVersion handed out (any number works; clients must treat them as opaque).
const FIRST_RESOURCE_VERSION: u64 = 1000;

/// What a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    /// The object through its own path: for types with a `status` subresource the stored
    /// `status` is kept.
    Object,
    /// The `status` subresource: only `status` changes.
    Status,
    /// The test side: everything the body says.
    Whole,
}

/// What happened to an object, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, kept for watches.
#[derive(Debug, Clone)]
pub struct Change {
    pub resource_version: u64,
    pub resource: &'static ResourceType,
    pub kind: ChangeKind,
    /// The object after the write (for a deletion: as it was, with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The object before the write, to tell a watch with a selector that an object left it.
    pub previous: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    group: &'static str,
    plural: &'static str,
    namespace: String,
    name: String,
}

impl ObjectKey {
    fn new(resource: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: resource.group,
            plural: resource.plural,
            namespace: if resource.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    /// Set when `limit` cut the list: pass it back as `continue`.
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Every object and the history of changes.
#[derive(Debug, Clone)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Change>,
    history_limit: usize,
    /// The resourceVersion of the newest change no longer in the history: a watch must start at
    /// or after it.
    compacted: u64,
    uids: u64,
    uid_seed: u64,
}

/// Now, as the API's `Time` (seconds, UTC).
pub fn now_timestamp() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .expect("a UTC time formats")
}

/// Now, as the API's `MicroTime`.
pub fn now_micro_timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .expect("a UTC time formats")
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn string_at<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// Everything but metadata and status: a change there bumps `generation`.
fn spec_part(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(map) = rest.as_object_mut() {
        for key in ["metadata", "status", "kind", "apiVersion"] {
            map.remove(key);
        }
    }
    rest
}

impl Store {
    /// An empty cluster with its initial namespaces; `history_limit` changes are kept for
    /// watches.
    pub fn new(history_limit: usize) -> Store {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ u64::from(std::process::id());
        let mut store = Store {
            objects: BTreeMap::new(),
            resource_version: FIRST_RESOURCE_VERSION,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: FIRST_RESOURCE_VERSION,
            uids: 0,
            uid_seed: seed,
        };
        for namespace in INITIAL_NAMESPACES {
            store
                .create(&NAMESPACES, "", json!({"metadata": {"name": namespace}}))
                .expect("initial namespaces are created in an empty store");
        }
        store
    }

    /// The resourceVersion of the last write.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Drops the whole history: watches from any resourceVersion before now get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.resource_version;
    }

    /// Changes how many changes are kept for watches (at least one).
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
    }

    fn new_uid(&mut self) -> String {
        self.uids += 1;
        let a = splitmix(self.uid_seed ^ self.uids);
        let b = splitmix(a);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    fn record(
        &mut self,
        resource: &'static ResourceType,
        kind: ChangeKind,
        object: Value,
        previous: Option<Value>,
    ) {
        self.history.push_back(Change {
            resource_version: self.resource_version,
            resource,
            kind,
            object,
            previous,
        });
        self.trim_history();
    }

    /// The changes after `resource_version`, or 410 when some of them are no longer kept.
    pub fn changes_after(&self, resource_version: u64) -> Result<Vec<Change>, ApiError> {
        if resource_version < self.compacted {
            return Err(ApiError::expired(resource_version, self.compacted));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// One object.
    pub fn get(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&ObjectKey::new(resource, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// The objects of a type, in one namespace or all (`None`), sorted by namespace and name,
    /// that `keep` accepts.
    pub fn select(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(key, _)| key.group == resource.group && key.plural == resource.plural)
            .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .filter(|(_, object)| keep(object))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// A list, cut to `limit` items when set; `continue_token` resumes after the last item of the
    /// previous page.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let mut items = self.select(resource, namespace, keep);
        let mut resource_version = self.resource_version;
        if let Some(token) = continue_token {
            let (version, after) = decode_continue(token)?;
            resource_version = version;
            items.retain(|object| sort_key(object) > after);
        }
        let mut continue_out = None;
        let mut remaining = None;
        if let Some(limit) = limit.filter(|l| *l > 0) {
            if items.len() > limit {
                remaining = Some(items.len() - limit);
                items.truncate(limit);
                let last = items.last().map(sort_key).unwrap_or_default();
                continue_out = Some(encode_continue(resource_version, &last));
            }
        }
        Ok(ListPage {
            items,
            resource_version,
            continue_token: continue_out,
            remaining,
        })
    }

    fn check_kind(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of the request is not a {} object",
                resource.kind
            )));
        }
        if let Some(kind) = object["kind"].as_str() {
            if kind != resource.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({kind}) does not match the kind of the resource ({})",
                    resource.kind
                )));
            }
        }
        if let Some(api_version) = object["apiVersion"].as_str() {
            if api_version != resource.api_version() {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({})",
                    resource.api_version()
                )));
            }
        }
        Ok(())
    }

    /// Sets kind, apiVersion and the namespace of the path, refusing a body that says otherwise.
    fn settle_identity(
        resource: &ResourceType,
        namespace: &str,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        Self::check_kind(resource, object)?;
        object["kind"] = json!(resource.kind);
        object["apiVersion"] = json!(resource.api_version());
        let metadata = metadata_mut(object);
        if resource.namespaced {
            match metadata.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    metadata.insert("namespace".into(), json!(namespace));
                }
            }
        } else {
            metadata.remove("namespace");
        }
        Ok(())
    }

    /// Creates an object (POST): 409 `AlreadyExists` when the name is taken.
    pub fn create(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        Self::settle_identity(resource, namespace, &mut object)?;
        if resource.namespaced
            && !self
                .objects
                .contains_key(&ObjectKey::new(&NAMESPACES, "", namespace))
        {
            return Err(ApiError::not_found(&NAMESPACES, namespace));
        }
        let name = match (
            string_at(&object, "name"),
            string_at(&object, "generateName"),
        ) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => {
                let suffix = splitmix(self.uid_seed ^ (self.uids + 7919));
                let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|i| {
                        alphabet[((suffix >> (i * 8)) % alphabet.len() as u64) as usize] as char
                    })
                    .collect();
                format!("{prefix}{suffix}")
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        let key = ObjectKey::new(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        let uid = self.new_uid();
        let metadata = metadata_mut(&mut object);
        metadata.insert("name".into(), json!(name));
        metadata.insert("uid".into(), json!(uid));
        metadata.insert(
            "resourceVersion".into(),
            json!((self.resource_version + 1).to_string()),
        );
        metadata.insert("creationTimestamp".into(), json!(now_timestamp()));
        metadata.insert("generation".into(), json!(1));
        for server_only in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            metadata.remove(server_only);
        }
        let object = validation::normalize(resource, object)?;
        validation::validate_create(resource, &object)?;
        self.resource_version += 1;
        self.objects.insert(key, object.clone());
        self.record(resource, ChangeKind::Added, object.clone(), None);
        Ok(object)
    }

    /// Replaces an object (PUT): 404 when it does not exist, 409 `Conflict` when the body's
    /// resourceVersion (or UID) is not the stored one; an empty resourceVersion is an
    /// unconditional update.
    pub fn replace(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut object: Value,
        scope: WriteScope,
    ) -> Result<Value, ApiError> {
        let stored = self.get(resource, namespace, name)?;
        Self::settle_identity(resource, namespace, &mut object)?;
        match string_at(&object, "name") {
            Some(body_name) if body_name != name => {
                return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )))
            }
            _ => {}
        }
        if scope != WriteScope::Whole {
            for precondition in ["resourceVersion", "uid"] {
                if let Some(expected) = string_at(&object, precondition) {
                    if Some(expected) != string_at(&stored, precondition) {
                        return Err(ApiError::conflict(resource, name));
                    }
                }
            }
        }
        self.write(resource, namespace, name, stored, object, scope)
    }

    /// Patches an object (PATCH) in `format`; a resourceVersion the patch sets is a precondition.
    pub fn patch(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        format: PatchFormat,
        patch: &Value,
        scope: WriteScope,
    ) -> Result<Value, ApiError> {
        let stored = self.get(resource, namespace, name)?;
        let mut patched = format
            .apply(&stored, patch, resource)
            .map_err(|e| match e {
                PatchError::Malformed(m) => ApiError::bad_request(m),
                PatchError::DoesNotApply(m) => ApiError::invalid(resource, name, m),
            })?;
        if !patched.is_object() {
            return Err(ApiError::invalid(
                resource,
                name,
                "the patched object is not an object",
            ));
        }
        if string_at(&patched, "name") != Some(name) {
            return Err(ApiError::invalid(
                resource,
                name,
                "metadata.name: Invalid value: the name of a patched object cannot change",
            ));
        }
        if let Some(version) = string_at(&patched, "resourceVersion") {
            if Some(version) != string_at(&stored, "resourceVersion") {
                return Err(ApiError::conflict(resource, name));
            }
        }
        Self::settle_identity(resource, namespace, &mut patched)?;
        self.write(resource, namespace, name, stored, patched, scope)
    }

    /// Creates the object or overwrites it whole (the test side): no precondition, status
    /// included.
    pub fn put(
        &mut self,
        resource: &'static ResourceType,
        object: Value,
    ) -> Result<Value, ApiError> {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = name_of(&object).to_string();
        if self
            .objects
            .contains_key(&ObjectKey::new(resource, &namespace, &name))
        {
            self.replace(resource, &namespace, &name, object, WriteScope::Whole)
        } else {
            self.create(resource, &namespace, object)
        }
    }

    /// The common end of replace and patch: scope, server-owned fields, generation, no-op
    /// detection, and deletion when the last finalizer of a deleted object goes.
    fn write(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        stored: Value,
        body: Value,
        scope: WriteScope,
    ) -> Result<Value, ApiError> {
        let object = match scope {
            WriteScope::Status => {
                let mut object = stored.clone();
                match body.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                object
            }
            WriteScope::Object if resource.status_subresource => {
                let mut object = body;
                match stored.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                object
            }
            WriteScope::Object | WriteScope::Whole => body,
        };
        let mut object = validation::normalize(resource, object)?;
        // Server-owned metadata comes from the stored object.
        let generation = stored["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = if spec_part(&object) != spec_part(&stored) {
            generation + 1
        } else {
            generation
        };
        {
            let stored_metadata = stored["metadata"].as_object().cloned().unwrap_or_default();
            let metadata = metadata_mut(&mut object);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
            ] {
                match stored_metadata.get(field) {
                    Some(value) => metadata.insert(field.into(), value.clone()),
                    None => metadata.remove(field),
                };
            }
            metadata.insert("generation".into(), json!(bumped));
            metadata.insert("name".into(), json!(name));
        }
        validation::validate_update(resource, &stored, &object)?;
        if object == stored {
            return Ok(stored);
        }
        self.resource_version += 1;
        metadata_mut(&mut object).insert(
            "resourceVersion".into(),
            json!(self.resource_version.to_string()),
        );
        let key = ObjectKey::new(resource, namespace, name);
        let finalized = object["metadata"]["deletionTimestamp"].is_string()
            && object["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if finalized {
            self.objects.remove(&key);
            self.record(resource, ChangeKind::Deleted, object.clone(), Some(stored));
        } else {
            self.objects.insert(key, object.clone());
            self.record(resource, ChangeKind::Modified, object.clone(), Some(stored));
        }
        Ok(object)
    }

    /// Deletes an object: at once (a `Status` of success), or, while it has finalizers, by
    /// setting `deletionTimestamp` (the object). `preconditions` are the body's UID and
    /// resourceVersion.
    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
    ) -> Result<Value, ApiError> {
        let stored = self.get(resource, namespace, name)?;
        for (field, precondition) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
            if let Some(expected) = preconditions[precondition].as_str() {
                if string_at(&stored, field) != Some(expected) {
                    return Err(ApiError::conflict(resource, name));
                }
            }
        }
        let has_finalizers = stored["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers && stored["metadata"]["deletionTimestamp"].is_string() {
            return Ok(stored);
        }
        self.resource_version += 1;
        let mut object = stored.clone();
        metadata_mut(&mut object).insert(
            "resourceVersion".into(),
            json!(self.resource_version.to_string()),
        );
        let key = ObjectKey::new(resource, namespace, name);
        if has_finalizers {
            let metadata = metadata_mut(&mut object);
            metadata.insert("deletionTimestamp".into(), json!(now_timestamp()));
            metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
            self.objects.insert(key, object.clone());
            self.record(resource, ChangeKind::Modified, object.clone(), Some(stored));
            return Ok(object);
        }
        self.objects.remove(&key);
        let uid = string_at(&stored, "uid").unwrap_or_default().to_string();
        self.record(resource, ChangeKind::Deleted, object, Some(stored));
        Ok(status::success(resource, name, &uid))
    }
}

/// `namespace/name`: the order of lists and the position a continue token resumes after.
fn sort_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        name_of(object)
    )
}

fn encode_continue(resource_version: u64, after: &str) -> String {
    let hex: String = after.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{resource_version}-{hex}")
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let (version, hex) = token.split_once('-').ok_or_else(bad)?;
    let version = version.parse().map_err(|_| bad())?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok((version, String::from_utf8(bytes).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::{LEASES, NODES, PODS};

    fn lease(holder: &str) -> Value {
        json!({"metadata": {"name": "slot-0"}, "spec": {"holderIdentity": holder}})
    }

    #[test]
    fn every_write_bumps_the_one_resource_version() {
        let mut store = Store::new(100);
        let start = store.resource_version();
        let node = store
            .create(&NODES, "", json!({"metadata": {"name": "n1"}}))
            .unwrap();
        assert_eq!(node["metadata"]["resourceVersion"], (start + 1).to_string());
        assert_eq!(node["kind"], "Node");
        assert_eq!(node["apiVersion"], "v1");
        assert_eq!(node["metadata"]["generation"], 1);
        assert!(node["metadata"]["uid"].as_str().unwrap().len() == 36);
        let created = store.create(&LEASES, "default", lease("a")).unwrap();
        assert_eq!(
            created["metadata"]["resourceVersion"],
            (start + 2).to_string()
        );
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_ne!(created["metadata"]["uid"], node["metadata"]["uid"]);
    }

    #[test]
    fn create_twice_is_already_exists_and_a_missing_namespace_is_not_found() {
        let mut store = Store::new(100);
        store.create(&LEASES, "default", lease("a")).unwrap();
        let err = store.create(&LEASES, "default", lease("a")).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
        let err = store.create(&LEASES, "nowhere", lease("a")).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"nowhere\" not found")
        );
        let err = store
            .create(
                &LEASES,
                "default",
                json!({"metadata": {"namespace": "other", "name": "x"}}),
            )
            .unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn replace_with_a_stale_resource_version_is_a_conflict() {
        let mut store = Store::new(100);
        let first = store.create(&LEASES, "default", lease("a")).unwrap();
        let mut mine = first.clone();
        mine["spec"]["holderIdentity"] = json!("b");
        let second = store
            .replace(&LEASES, "default", "slot-0", mine, WriteScope::Object)
            .unwrap();
        assert!(
            second["metadata"]["resourceVersion"].as_str()
                > first["metadata"]["resourceVersion"].as_str()
        );
        assert_eq!(second["metadata"]["generation"], 2);
        let mut other_uid = second.clone();
        other_uid["metadata"]["uid"] = json!("another-object");
        let err = store
            .replace(&LEASES, "default", "slot-0", other_uid, WriteScope::Object)
            .unwrap_err();
        assert_eq!(err.code, 409);
        let mut stale = first.clone();
        stale["spec"]["holderIdentity"] = json!("c");
        let err = store
            .replace(&LEASES, "default", "slot-0", stale, WriteScope::Object)
            .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        // Without a resourceVersion the update is unconditional.
        let mut blind = lease("d");
        metadata_mut(&mut blind).remove("resourceVersion");
        let third = store
            .replace(&LEASES, "default", "slot-0", blind, WriteScope::Object)
            .unwrap();
        assert_eq!(third["spec"]["holderIdentity"], "d");
        assert_eq!(third["metadata"]["uid"], first["metadata"]["uid"]);
        assert_eq!(
            third["metadata"]["creationTimestamp"],
            first["metadata"]["creationTimestamp"]
        );
    }

    #[test]
    fn a_write_that_changes_nothing_keeps_the_resource_version() {
        let mut store = Store::new(100);
        let first = store.create(&LEASES, "default", lease("a")).unwrap();
        let again = store
            .replace(
                &LEASES,
                "default",
                "slot-0",
                first.clone(),
                WriteScope::Object,
            )
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(
            store.resource_version().to_string(),
            first["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn the_status_subresource_and_the_object_write_their_own_halves() {
        let mut store = Store::new(100);
        store
            .create(&NODES, "", json!({"metadata": {"name": "n1"}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap();
        let via_object = store
            .patch(
                &NODES,
                "",
                "n1",
                PatchFormat::MergePatch,
                &json!({"spec": {"unschedulable": true}, "status": {"conditions": []}}),
                WriteScope::Object,
            )
            .unwrap();
        assert_eq!(via_object["spec"]["unschedulable"], true);
        assert_eq!(via_object["status"]["conditions"][0]["type"], "Ready");
        let via_status = store
            .patch(&NODES, "", "n1", PatchFormat::StrategicMerge, &json!({"metadata": {"labels": {"x": "y"}}, "spec": {"unschedulable": false}, "status": {"conditions": [{"type": "NetmendX", "status": "False"}]}}), WriteScope::Status)
            .unwrap();
        assert_eq!(via_status["spec"]["unschedulable"], true);
        assert!(via_status["metadata"].get("labels").is_none());
        assert_eq!(
            via_status["status"]["conditions"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn a_patch_that_sets_a_stale_resource_version_is_a_conflict() {
        let mut store = Store::new(100);
        let first = store.create(&LEASES, "default", lease("a")).unwrap();
        store
            .patch(
                &LEASES,
                "default",
                "slot-0",
                PatchFormat::MergePatch,
                &json!({"spec": {"holderIdentity": "b"}}),
                WriteScope::Object,
            )
            .unwrap();
        let err = store
            .patch(
                &LEASES,
                "default",
                "slot-0",
                PatchFormat::MergePatch,
                &json!({"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "c"}}),
                WriteScope::Object,
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        let err = store
            .patch(
                &LEASES,
                "default",
                "gone",
                PatchFormat::MergePatch,
                &json!({}),
                WriteScope::Object,
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
    }

    #[test]
    fn history_is_bounded_and_an_old_watch_start_is_expired() {
        let mut store = Store::new(2);
        let start = store.resource_version();
        for n in 0..4 {
            store
                .create(&NODES, "", json!({"metadata": {"name": format!("n{n}")}}))
                .unwrap();
        }
        let err = store.changes_after(start).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
        let recent = store.changes_after(start + 2).unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|c| c.resource_version)
                .collect::<Vec<_>>(),
            [start + 3, start + 4]
        );
        store.compact();
        assert!(store.changes_after(start + 3).is_err());
        assert!(store
            .changes_after(store.resource_version())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn finalizers_hold_a_deletion_until_they_are_gone() {
        let mut store = Store::new(100);
        store
            .create(
                &PODS,
                "default",
                json!({"metadata": {"name": "p", "finalizers": ["x"]}}),
            )
            .unwrap();
        let held = store.delete(&PODS, "default", "p", &Value::Null).unwrap();
        assert!(held["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get(&PODS, "default", "p").is_ok());
        store
            .patch(
                &PODS,
                "default",
                "p",
                PatchFormat::JsonPatch,
                &json!([{"op": "remove", "path": "/metadata/finalizers"}]),
                WriteScope::Object,
            )
            .unwrap();
        assert_eq!(store.get(&PODS, "default", "p").unwrap_err().code, 404);
        let last = store.changes_after(store.resource_version() - 1).unwrap();
        assert_eq!(last[0].kind, ChangeKind::Deleted);
    }

    #[test]
    fn delete_checks_preconditions_and_answers_with_a_success_status() {
        let mut store = Store::new(100);
        let created = store.create(&LEASES, "default", lease("a")).unwrap();
        let err = store
            .delete(
                &LEASES,
                "default",
                "slot-0",
                &json!({"resourceVersion": "1"}),
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        let answer = store
            .delete(
                &LEASES,
                "default",
                "slot-0",
                &json!({"uid": created["metadata"]["uid"]}),
            )
            .unwrap();
        assert_eq!(answer["status"], "Success");
        assert_eq!(
            store
                .delete(&LEASES, "default", "slot-0", &Value::Null)
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn lists_page_with_limit_and_continue() {
        let mut store = Store::new(100);
        for n in 0..5 {
            store
                .create(&NODES, "", json!({"metadata": {"name": format!("n{n}")}}))
                .unwrap();
        }
        let first = store.list(&NODES, None, |_| true, Some(2), None).unwrap();
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.remaining, Some(3));
        let token = first.continue_token.unwrap();
        let second = store
            .list(&NODES, None, |_| true, Some(2), Some(&token))
            .unwrap();
        assert_eq!(second.items[0]["metadata"]["name"], "n2");
        assert_eq!(second.resource_version, first.resource_version);
        let last = store
            .list(
                &NODES,
                None,
                |_| true,
                Some(2),
                second.continue_token.as_deref(),
            )
            .unwrap();
        assert_eq!(last.items.len(), 1);
        assert!(last.continue_token.is_none());
        assert_eq!(
            store
                .list(&NODES, None, |_| true, None, Some("zz"))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn generate_name_makes_a_fresh_name() {
        let mut store = Store::new(100);
        let a = store
            .create(
                &LEASES,
                "default",
                json!({"metadata": {"generateName": "ev-"}}),
            )
            .unwrap();
        let b = store
            .create(
                &LEASES,
                "default",
                json!({"metadata": {"generateName": "ev-"}}),
            )
            .unwrap();
        assert!(a["metadata"]["name"].as_str().unwrap().starts_with("ev-"));
        assert_ne!(a["metadata"]["name"], b["metadata"]["name"]);
        let err = store
            .create(&LEASES, "default", json!({"metadata": {}}))
            .unwrap_err();
        assert_eq!(err.code, 422);
    }
}
