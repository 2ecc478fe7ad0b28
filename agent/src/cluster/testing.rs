//! Test-only doubles of the Kubernetes API for the adapter's tests: the scripted mock of kube-rs's
//! own pattern (`tower_test::mock` behind `kube::Client::new`) with helpers to read a request and
//! answer it, and [`FakeApi`], an in-memory API for Leases, Nodes and Events with
//! resourceVersions, 409 on a stale or taken object, strategic merge of node conditions by type,
//! and per-client faults (an error status, or no answer at all).

use crate::cluster::client::ApiCalls;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type MockHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
pub type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// One request as the API saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl Seen {
    /// The `fieldSelector` of the query ("" when none).
    pub fn field_selector(&self) -> String {
        self.params()
            .get("fieldSelector")
            .cloned()
            .unwrap_or_default()
    }

    /// The query's `key=value` pairs, decoded.
    pub fn params(&self) -> BTreeMap<String, String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}

/// Calls through a scripted mock: every request waits for the test to answer it.
pub fn mock_calls(timeout: Duration) -> (ApiCalls, MockHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (ApiCalls::new(client.clone(), client, timeout), handle)
}

/// Reads a request into [`Seen`].
pub async fn seen(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string()),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        },
    }
}

/// The next request the client sends, and the means to answer it.
pub async fn next_request(handle: &mut MockHandle) -> (Seen, Responder) {
    let (request, send) = handle.next_request().await.expect("a request");
    (seen(request).await, send)
}

/// Answers with `status` and a JSON body.
pub fn reply(send: Responder, status: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// A `Status` object as the API sends with an error.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message})
}

/// What one client of the fake suffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every request is answered with this status.
    Status(u16),
    /// No request is answered.
    Stall,
}

/// Switches the faults of one client of [`FakeApi`].
#[derive(Clone, Default)]
pub struct FaultSwitch(Arc<Mutex<Option<Fault>>>);

impl FaultSwitch {
    pub fn set(&self, fault: Option<Fault>) {
        *self.0.lock().unwrap() = fault;
    }

    fn get(&self) -> Option<Fault> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Default)]
pub struct FakeState {
    resource_version: u64,
    pub leases: BTreeMap<String, Value>,
    pub nodes: BTreeMap<String, Value>,
    pub events: BTreeMap<String, Value>,
    pub pods: Vec<Value>,
    pub services: Vec<Value>,
    pub endpoint_slices: Vec<Value>,
    /// Another writer changes the object right before the next merge patch lands (its
    /// resourceVersion moves, so a patch carrying the one read gets 409).
    pub write_before_next_patch: bool,
    /// Every request answered, in order.
    pub log: Vec<Seen>,
    /// Requests left unanswered (stalled clients, watches).
    held: Vec<Responder>,
}

/// An in-memory API shared by any number of clients ("nodes").
#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeApi {
    /// A client of the fake (served by a task of the current runtime) and its fault switch.
    pub fn calls(&self, timeout: Duration) -> (ApiCalls, FaultSwitch) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let faults = FaultSwitch::default();
        let state = self.state.clone();
        let switch = faults.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let seen = seen(request).await;
                let mut state = state.lock().unwrap();
                match switch.get() {
                    Some(Fault::Stall) => state.held.push(send),
                    Some(Fault::Status(code)) => {
                        state.log.push(seen);
                        reply(send, code, status_body(code, "Fault", "injected"));
                    }
                    None => {
                        let watch = seen.params().get("watch").is_some_and(|w| w == "true");
                        state.log.push(seen.clone());
                        if watch {
                            state.held.push(send);
                        } else {
                            let (code, body) = state.answer(&seen);
                            reply(send, code, body);
                        }
                    }
                }
            }
        });
        (ApiCalls::new(client.clone(), client, timeout), faults)
    }

    pub fn add_node(&self, name: &str, labels: Value, conditions: Value) {
        let mut state = self.state.lock().unwrap();
        let rv = state.next_rv();
        state.nodes.insert(
            name.to_string(),
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels,
                                "resourceVersion": rv},
                   "status": {"conditions": conditions}}),
        );
    }

    pub fn node(&self, name: &str) -> Value {
        self.state.lock().unwrap().nodes[name].clone()
    }

    /// The node's conditions by type.
    pub fn conditions(&self, name: &str) -> BTreeMap<String, Value> {
        self.node(name)["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c["type"].as_str().unwrap().to_string(), c))
            .collect()
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .leases
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// The holder of a lease ("" when free or absent).
    pub fn holder(&self, namespace: &str, name: &str) -> String {
        self.lease(namespace, name)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Value {
        let state = self.state.lock().unwrap();
        state
            .services
            .iter()
            .find(|s| is_named(s, namespace, name))
            .cloned()
            .unwrap_or_else(|| panic!("no Service {namespace}/{name}"))
    }

    /// Requests seen with this method whose path starts with `prefix`.
    pub fn requests(&self, method: &str, prefix: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl FakeState {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn answer(&mut self, seen: &Seen) -> (u16, Value) {
        let segments: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
        match (seen.method.as_str(), segments.as_slice()) {
            (
                method,
                ["apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases", rest @ ..],
            ) => self.leases_answer(method, namespace, rest.first().copied(), &seen.body),
            ("GET", ["api", "v1", "nodes", name]) => match self.nodes.get(*name) {
                Some(node) => (200, node.clone()),
                None => not_found("nodes", name),
            },
            ("PATCH", ["api", "v1", "nodes", name, "status"]) => self.patch_node_status(name, seen),
            ("PATCH", ["api", "v1", "nodes", name]) => self.merge_patch_node(name, seen),
            ("GET", ["api", "v1", "nodes"]) => {
                let selector = seen.field_selector();
                let items: Vec<Value> = self
                    .nodes
                    .iter()
                    .filter(|(name, _)| selector == format!("metadata.name={name}"))
                    .map(|(_, node)| node.clone())
                    .collect();
                (200, self.list("NodeList", items))
            }
            ("GET", ["api", "v1", "pods"]) => {
                let selector = seen.field_selector();
                let items: Vec<Value> = self
                    .pods
                    .iter()
                    .filter(|p| {
                        selector
                            == format!("spec.nodeName={}", p["spec"]["nodeName"].as_str().unwrap())
                    })
                    .cloned()
                    .collect();
                (200, self.list("PodList", items))
            }
            ("GET", ["api", "v1", "namespaces", namespace, "services", name]) => {
                match self.services.iter().find(|s| is_named(s, namespace, name)) {
                    Some(service) => (200, service.clone()),
                    None => not_found("services", name),
                }
            }
            ("GET", ["api", "v1", "namespaces", namespace, "services"]) => {
                let selector = seen.field_selector();
                let items: Vec<Value> = self
                    .services
                    .iter()
                    .filter(|s| s["metadata"]["namespace"] == json!(namespace))
                    .filter(|s| {
                        selector.is_empty()
                            || selector
                                == format!(
                                    "metadata.name={}",
                                    s["metadata"]["name"].as_str().unwrap_or("")
                                )
                    })
                    .cloned()
                    .collect();
                (200, self.list("ServiceList", items))
            }
            ("PATCH", ["api", "v1", "namespaces", namespace, "services", name]) => {
                let rv = self.next_rv();
                if std::mem::take(&mut self.write_before_next_patch) {
                    let moved = self.next_rv();
                    if let Some(s) = self
                        .services
                        .iter_mut()
                        .find(|s| is_named(s, namespace, name))
                    {
                        s["metadata"]["resourceVersion"] = json!(moved);
                    }
                }
                let service = self
                    .services
                    .iter_mut()
                    .find(|s| is_named(s, namespace, name));
                merge_patch_object(service, "services", name, seen, rv)
            }
            ("GET", ["api", "v1", "services"]) => {
                let items = self.services.clone();
                (200, self.list("ServiceList", items))
            }
            ("GET", ["apis", "discovery.k8s.io", "v1", "endpointslices"]) => {
                let items = self.endpoint_slices.clone();
                (200, self.list("EndpointSliceList", items))
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", namespace, "events"]) => {
                let mut event = seen.body.clone();
                let key = format!(
                    "{namespace}/{}",
                    event["metadata"]["name"].as_str().unwrap()
                );
                if self.events.contains_key(&key) {
                    return (409, status_body(409, "AlreadyExists", "exists"));
                }
                event["metadata"]["resourceVersion"] = json!(self.next_rv());
                self.events.insert(key, event.clone());
                (201, event)
            }
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", namespace, "events", name]) => {
                let rv = self.next_rv();
                match self.events.get_mut(&format!("{namespace}/{name}")) {
                    None => not_found("events", name),
                    Some(event) => {
                        merge(event, &seen.body);
                        event["metadata"]["resourceVersion"] = json!(rv);
                        (200, event.clone())
                    }
                }
            }
            _ => (
                404,
                status_body(
                    404,
                    "NotFound",
                    &format!("no route {} {}", seen.method, seen.path),
                ),
            ),
        }
    }

    fn list(&mut self, kind: &str, items: Vec<Value>) -> Value {
        let rv = self.next_rv();
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv},
               "items": items})
    }

    fn leases_answer(
        &mut self,
        method: &str,
        namespace: &str,
        name: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        match (method, name) {
            ("GET", Some(name)) => match self.leases.get(&format!("{namespace}/{name}")) {
                Some(lease) => (200, lease.clone()),
                None => not_found("leases", name),
            },
            ("POST", None) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_string();
                let key = format!("{namespace}/{name}");
                if self.leases.contains_key(&key) {
                    return (
                        409,
                        status_body(
                            409,
                            "AlreadyExists",
                            &format!("leases {name:?} already exists"),
                        ),
                    );
                }
                let mut lease = body.clone();
                lease["metadata"]["namespace"] = json!(namespace);
                lease["metadata"]["resourceVersion"] = json!(self.next_rv());
                self.leases.insert(key, lease.clone());
                (201, lease)
            }
            ("PUT", Some(name)) => {
                let key = format!("{namespace}/{name}");
                let Some(current) = self.leases.get(&key) else {
                    return not_found("leases", name);
                };
                match body["metadata"]["resourceVersion"].as_str() {
                    None => (
                        422,
                        status_body(422, "Invalid", "metadata.resourceVersion must be specified"),
                    ),
                    Some(rv) if Some(rv) != current["metadata"]["resourceVersion"].as_str() => (
                        409,
                        status_body(409, "Conflict", "the object has been modified"),
                    ),
                    Some(_) => {
                        let mut lease = body.clone();
                        lease["metadata"]["resourceVersion"] = json!(self.next_rv());
                        self.leases.insert(key, lease.clone());
                        (200, lease)
                    }
                }
            }
            _ => (405, status_body(405, "MethodNotAllowed", method)),
        }
    }

    fn patch_node_status(&mut self, name: &str, seen: &Seen) -> (u16, Value) {
        if seen.content_type.as_deref() != Some("application/strategic-merge-patch+json") {
            return (
                415,
                status_body(415, "UnsupportedMediaType", "strategic merge only"),
            );
        }
        let only_conditions = seen.body.as_object().is_some_and(|o| o.len() == 1)
            && seen.body["status"]
                .as_object()
                .is_some_and(|o| o.len() == 1)
            && seen.body["status"]["conditions"].is_array();
        if !only_conditions {
            return (
                422,
                status_body(
                    422,
                    "Invalid",
                    "this fake takes status.conditions patches only",
                ),
            );
        }
        let rv = self.next_rv();
        let Some(node) = self.nodes.get_mut(name) else {
            return not_found("nodes", name);
        };
        let mut conditions = node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for entry in seen.body["status"]["conditions"].as_array().unwrap() {
            let kind = entry["type"]
                .as_str()
                .expect("merge key `type`")
                .to_string();
            let at = conditions.iter().position(|c| c["type"] == json!(kind));
            if entry["$patch"] == json!("delete") {
                if let Some(at) = at {
                    conditions.remove(at);
                }
                continue;
            }
            match at {
                Some(at) => merge(&mut conditions[at], entry),
                None => conditions.push(entry.clone()),
            }
        }
        node["status"]["conditions"] = Value::Array(conditions);
        node["metadata"]["resourceVersion"] = json!(rv);
        (200, node.clone())
    }
}

impl FakeState {
    /// A JSON merge patch of a Node (cordon, uncordon).
    fn merge_patch_node(&mut self, name: &str, seen: &Seen) -> (u16, Value) {
        let rv = self.next_rv();
        merge_patch_object(self.nodes.get_mut(name), "nodes", name, seen, rv)
    }
}

/// Whether `object` is `namespace/name`.
fn is_named(object: &Value, namespace: &str, name: &str) -> bool {
    object["metadata"]["namespace"] == json!(namespace) && object["metadata"]["name"] == json!(name)
}

/// A JSON merge patch of `object` (of `kind`, named `name`) at the new resourceVersion `rv`; a
/// `metadata.resourceVersion` in the patch must be the current one (409 otherwise), as the API
/// server has it.
fn merge_patch_object(
    object: Option<&mut Value>,
    kind: &str,
    name: &str,
    seen: &Seen,
    rv: String,
) -> (u16, Value) {
    if seen.content_type.as_deref() != Some("application/merge-patch+json") {
        return (
            415,
            status_body(
                415,
                "UnsupportedMediaType",
                "this fake takes merge patches only",
            ),
        );
    }
    let Some(object) = object else {
        return not_found(kind, name);
    };
    if let Some(wanted) = seen.body["metadata"]["resourceVersion"].as_str() {
        if object["metadata"]["resourceVersion"] != json!(wanted) {
            return (
                409,
                status_body(409, "Conflict", "the object has been modified"),
            );
        }
    }
    let mut patch = seen.body.clone();
    if let Some(meta) = patch["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    merge(object, &patch);
    object["metadata"]["resourceVersion"] = json!(rv);
    (200, object.clone())
}

fn not_found(kind: &str, name: &str) -> (u16, Value) {
    (
        404,
        status_body(404, "NotFound", &format!("{kind} {name:?} not found")),
    )
}

/// JSON merge of `patch` into `target` (objects merge, `null` deletes, the rest replaces).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
