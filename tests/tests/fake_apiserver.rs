//! The fake API server (`netmend_e2e::fake_apiserver`) tested with a real client: kube-rs's typed
//! `Api`, its watcher and its event recorder, over HTTP on the host's loopback (no root needed;
//! the last test, in a network namespace, needs it). What the agent's end-to-end tests rely on is
//! checked here first: resourceVersions, 409s, strategic merge of node conditions, watch streams
//! with bookmarks and 410s, selectors, faults, and the API going down and coming back.
//!
//! Over 500 lines: one file per server under test, each test one behaviour a client relies on.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use netmend_e2e::fake_apiserver::{
    objects, ApiError, FakeApiServer, Fault, ENDPOINT_SLICES, EVENTS, LEASES, NAMESPACES, NODES,
    PODS,
};
use serde_json::{json, Value};
use std::time::Duration;

/// A client for `server` with a read timeout, and without kube's retries (the tests see every
/// answer as it is).
fn client(server: &FakeApiServer) -> Client {
    let mut config = Config::new(server.url().parse().expect("a valid URL"));
    config.read_timeout = Some(Duration::from_secs(2));
    config.connect_timeout = Some(Duration::from_secs(2));
    config.default_retry = false;
    Client::try_from(config).expect("a client")
}

fn status_of(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected a Status from the API, got {other:?}"),
    }
}

fn version_of(object: &impl ResourceExt) -> u64 {
    object
        .resource_version()
        .expect("a resourceVersion")
        .parse()
        .expect("a number")
}

fn seeded(names: &[&str]) -> FakeApiServer {
    let server = FakeApiServer::start();
    server.put(&NAMESPACES, objects::namespace("netmend"));
    for name in names {
        server.put(&NODES, objects::node(name));
    }
    server
}

#[tokio::test]
async fn resource_versions_increase_and_a_stale_replace_is_a_conflict() {
    let server = seeded(&[]);
    let leases: Api<Lease> = Api::namespaced(client(&server), "netmend");
    let lease: Lease = serde_json::from_value(objects::lease(
        "netmend",
        "netmend-fix-slot-0",
        "node-b",
        30,
    ))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());

    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("node-a".into());
    let replaced = leases
        .replace("netmend-fix-slot-0", &PostParams::default(), &taken)
        .await
        .unwrap();
    assert!(version_of(&replaced) > version_of(&created));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    // Someone else's write with the version read before: 409 Conflict.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("node-c".into());
    let (code, reason) = status_of(
        leases
            .replace("netmend-fix-slot-0", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let stored = leases.get("netmend-fix-slot-0").await.unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_deref(),
        Some("node-a")
    );

    let (code, reason) = status_of(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let (code, reason) = status_of(leases.get("netmend-fix-slot-9").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(leases.get_opt("netmend-fix-slot-9").await.unwrap(), None);

    // The test side sees and changes the same objects: another node takes the lease.
    server
        .modify(&LEASES, "netmend", "netmend-fix-slot-0", |l| {
            l["spec"]["holderIdentity"] = json!("node-b")
        })
        .unwrap();
    let (code, _) = status_of(
        leases
            .replace("netmend-fix-slot-0", &PostParams::default(), &replaced)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
}

#[tokio::test]
async fn node_conditions_merge_by_type_and_kubelets_ready_stays_as_it_was() {
    let server = seeded(&["node-a"]);
    let nodes: Api<Node> = Api::all(client(&server));
    let ready_before = server.get(&NODES, "", "node-a").unwrap()["status"]["conditions"][3].clone();
    assert_eq!(ready_before["type"], "Ready");

    let patch = json!({"status": {"conditions": [
        {"type": "NetmendHostportHijack", "status": "True", "reason": "HijackPresent", "message": "ip nat CNI-DN-x", "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "NetmendPromiscLost", "status": "False", "reason": "PromiscKept", "message": "", "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"},
    ]}});
    let before = version_of(&nodes.get("node-a").await.unwrap());
    let patched = nodes
        .patch_status("node-a", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert!(version_of(&patched) > before);
    let types: Vec<String> = patched
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(
        types,
        [
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
            "Ready",
            "NetmendHostportHijack",
            "NetmendPromiscLost"
        ]
    );
    let stored = server.get(&NODES, "", "node-a").unwrap();
    assert_eq!(stored["status"]["conditions"][3], ready_before);

    // `$patch: delete` removes one condition and nothing else.
    let delete =
        json!({"status": {"conditions": [{"type": "NetmendPromiscLost", "$patch": "delete"}]}});
    nodes
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Strategic(&delete),
        )
        .await
        .unwrap();
    let stored = server.get(&NODES, "", "node-a").unwrap();
    let types: Vec<&str> = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
            "Ready",
            "NetmendHostportHijack"
        ]
    );
    assert_eq!(stored["status"]["conditions"][3], ready_before);

    // The request log shows what the client sent.
    let sent = server.requests_to("PATCH", "/api/v1/nodes/node-a/status");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(sent[1].json().unwrap(), delete);
    assert_eq!(sent[1].status, Some(200));

    // A patch of the node object leaves status alone; one of the status leaves the rest alone.
    let object_patch = json!({"metadata": {"labels": {"netmend.io/mode": "dry-run"}}, "spec": {"unschedulable": true}, "status": {"conditions": []}});
    let node = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Strategic(&object_patch),
        )
        .await
        .unwrap();
    assert_eq!(
        node.labels().get("netmend.io/mode").map(String::as_str),
        Some("dry-run")
    );
    assert_eq!(node.spec.as_ref().unwrap().unschedulable, Some(true));
    assert_eq!(node.status.unwrap().conditions.unwrap().len(), 5);
    let status_patch =
        json!({"metadata": {"labels": {"x": "y"}}, "spec": {"unschedulable": false}});
    let node = nodes
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(&status_patch),
        )
        .await
        .unwrap();
    assert!(!node.labels().contains_key("x"));
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
}

#[tokio::test]
async fn selectors_filter_pods_by_node_and_slices_by_service() {
    let server = seeded(&["node-a", "node-b"]);
    server.put(
        &PODS,
        objects::pod("default", "web-1", "node-a", "10.42.0.11"),
    );
    server.put(
        &PODS,
        objects::pod("kube-system", "dns-1", "node-a", "10.42.0.12"),
    );
    server.put(
        &PODS,
        objects::pod("default", "web-2", "node-b", "10.42.1.11"),
    );
    server.put(
        &ENDPOINT_SLICES,
        objects::endpoint_slice("default", "web", &["10.42.0.11", "10.42.1.11"], 80),
    );
    server.put(
        &ENDPOINT_SLICES,
        objects::endpoint_slice("default", "db", &["10.42.0.20"], 5432),
    );
    let client = client(&server);

    let pods: Api<Pod> = Api::all(client.clone());
    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    let mut names: Vec<String> = on_a.items.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(names, ["dns-1", "web-1"]);
    assert_eq!(
        on_a.metadata.resource_version.as_deref(),
        Some(server.resource_version().to_string().as_str())
    );
    let in_default: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web_on_b = in_default
        .list(
            &ListParams::default()
                .fields("spec.nodeName=node-b")
                .labels("app=web-2"),
        )
        .await
        .unwrap();
    assert_eq!(web_on_b.items.len(), 1);
    let (code, _) = status_of(
        pods.list(&ListParams::default().fields("spec.nope=x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(web.items[0].endpoints.len(), 2);

    // Pages.
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none());
}

/// The next watch event other than a bookmark, within 5 s.
async fn next_change<S>(stream: &mut S) -> WatchEvent<Lease>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Lease>>> + Unpin,
{
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("a decodable event");
        if !matches!(event, WatchEvent::Bookmark(_)) {
            return event;
        }
    }
}

#[tokio::test]
async fn watches_stream_added_modified_deleted_and_bookmarks() {
    let server = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .unwrap();
    server.put(&NAMESPACES, objects::namespace("netmend"));
    let leases: Api<Lease> = Api::namespaced(client(&server), "netmend");
    let start = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = leases
        .watch(&WatchParams::default().timeout(30), &start)
        .await
        .unwrap()
        .boxed();

    server.put(&LEASES, objects::lease("netmend", "slot", "node-b", 30));
    let WatchEvent::Added(added) = next_change(&mut stream).await else {
        panic!("ADDED first")
    };
    assert_eq!(
        added.spec.unwrap().holder_identity.as_deref(),
        Some("node-b")
    );
    server
        .modify(&LEASES, "netmend", "slot", |l| {
            l["spec"]["holderIdentity"] = Value::Null
        })
        .unwrap();
    let WatchEvent::Modified(modified) = next_change(&mut stream).await else {
        panic!("then MODIFIED")
    };
    assert_eq!(modified.spec.unwrap().holder_identity, None);
    server.delete(&LEASES, "netmend", "slot").unwrap();
    let WatchEvent::Deleted(deleted) = next_change(&mut stream).await else {
        panic!("then DELETED")
    };
    assert_eq!(deleted.name_any(), "slot");

    // Quiet: bookmarks carry the current resourceVersion.
    let bookmark = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Bookmark(bookmark) = bookmark else {
        panic!("a bookmark, got {bookmark:?}")
    };
    assert_eq!(
        bookmark.metadata.resource_version,
        server.resource_version().to_string()
    );

    // A resourceVersion older than the kept history: an ERROR event with 410 Expired.
    server.with_store(|store| store.compact());
    let mut old = leases
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match old.next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410, got {other:?}"),
    }
}

type NodeEvents = futures::stream::BoxStream<'static, Result<watcher::Event<Node>, watcher::Error>>;

/// The watcher's next event, within 5 s.
async fn next_event(
    events: &mut NodeEvents,
) -> Result<Option<watcher::Event<Node>>, watcher::Error> {
    tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .expect("a watcher event within 5 s")
}

#[tokio::test]
async fn kubes_watcher_lists_watches_and_lists_again_after_a_410() {
    let server = seeded(&["node-a"]);
    let nodes: Api<Node> = Api::all(client(&server));
    let mut events: NodeEvents = watcher(
        nodes,
        watcher::Config::default().fields("metadata.name=node-a"),
    )
    .boxed();
    assert!(matches!(
        next_event(&mut events).await,
        Ok(Some(watcher::Event::Init))
    ));
    assert!(
        matches!(next_event(&mut events).await, Ok(Some(watcher::Event::InitApply(n))) if n.name_any() == "node-a")
    );
    assert!(matches!(
        next_event(&mut events).await,
        Ok(Some(watcher::Event::InitDone))
    ));

    // A human labels the node: the watcher sees it.
    server
        .modify(&NODES, "", "node-a", |n| {
            n["metadata"]["labels"]["netmend.io/mode"] = json!("off")
        })
        .unwrap();
    match next_event(&mut events).await {
        Ok(Some(watcher::Event::Apply(node))) => {
            assert_eq!(
                node.labels().get("netmend.io/mode").map(String::as_str),
                Some("off")
            )
        }
        other => panic!("expected the labelled node, got {other:?}"),
    }

    // A change the watch falls behind on (the history is compacted past it): 410, then the
    // watcher lists again and sees the current object.
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/nodes" && !r.is_watch())
        .count();
    server.with_store(|store| {
        store
            .replace(
                &NODES,
                "",
                "node-a",
                {
                    let mut node = store.get(&NODES, "", "node-a").unwrap();
                    node["spec"]["unschedulable"] = json!(true);
                    node
                },
                netmend_e2e::fake_apiserver::store::WriteScope::Whole,
            )
            .unwrap();
        store.compact();
    });
    match next_event(&mut events).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the 410, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Ok(Some(watcher::Event::Init))
    ));
    match next_event(&mut events).await {
        Ok(Some(watcher::Event::InitApply(node))) => {
            assert_eq!(node.spec.unwrap().unschedulable, Some(true))
        }
        other => panic!("expected the relisted node, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Ok(Some(watcher::Event::InitDone))
    ));
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/nodes" && !r.is_watch())
        .count();
    assert_eq!(lists_after, lists_before + 1);
    // Its watches ask for bookmarks and carry the field selector.
    let watch = server
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.is_watch())
        .expect("a watch request");
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert_eq!(
        watch.param("fieldSelector").as_deref(),
        Some("metadata.name=node-a")
    );
}

#[tokio::test]
async fn streaming_lists_send_initial_events_and_end_with_a_marked_bookmark() {
    let server = seeded(&["node-a", "node-b"]);
    let nodes: Api<Node> = Api::all(client(&server));
    let mut events = watcher(nodes, watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(node)) => seen.push(node.name_any()),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["node-a", "node-b"]);
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.is_watch())
        .unwrap();
    assert_eq!(watch.param("sendInitialEvents").as_deref(), Some("true"));
    assert!(!server
        .requests()
        .iter()
        .any(|r| !r.is_watch() && r.path == "/api/v1/nodes"));
}

#[tokio::test]
async fn scripted_faults_answer_as_scripted_then_go_away() {
    let server = seeded(&["node-a"]);
    let leases: Api<Lease> = Api::namespaced(client(&server), "netmend");
    let path = "/apis/coordination.k8s.io/v1/namespaces/netmend/leases";
    server.fail(Fault::status(403).path(path).times(1));
    let (code, reason) = status_of(leases.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    server.fail(Fault::status(429).method("GET").path(path).times(1));
    let (code, reason) = status_of(leases.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"));
    server.fail(Fault::error(ApiError::new(500, "InternalError", "etcd is sad")).times(1));
    let (code, _) = status_of(leases.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 500);
    assert!(leases.list(&ListParams::default()).await.is_ok());

    // Slower than the client waits: a timeout, not an answer.
    server.fail(Fault::hang().times(1));
    let error = leases.list(&ListParams::default()).await.unwrap_err();
    assert!(!matches!(error, kube::Error::Api(_)), "{error:?}");
    server.fail(Fault::delay(Duration::from_secs(4)).times(1));
    assert!(leases.list(&ListParams::default()).await.is_err());
    server.fail(Fault::disconnect().times(1));
    assert!(leases.list(&ListParams::default()).await.is_err());
    assert!(leases.list(&ListParams::default()).await.is_ok());

    let answered: Vec<Option<u16>> = server
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.status)
        .collect();
    assert_eq!(answered[..4], [Some(403), Some(429), Some(500), Some(200)]);
}

#[tokio::test]
async fn the_api_goes_down_and_comes_back_on_the_same_port() {
    let server = seeded(&["node-a"]);
    let nodes: Api<Node> = Api::all(client(&server));
    let port = server.port();
    assert!(nodes.get("node-a").await.is_ok());
    server.stop_listening();
    assert!(!server.is_listening());
    let error = nodes.get("node-a").await.unwrap_err();
    assert!(!matches!(error, kube::Error::Api(_)), "{error:?}");
    server.start_listening();
    assert_eq!(server.port(), port);
    assert!(nodes.get("node-a").await.is_ok());
}

#[tokio::test]
async fn other_patch_formats_and_unsupported_ones() {
    let server = seeded(&["node-a"]);
    let client = client(&server);
    let request = |content_type: &str, body: Value| {
        http::Request::builder()
            .method("PATCH")
            .uri("/api/v1/nodes/node-a")
            .header("content-type", content_type)
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };
    let node: Value = client
        .request(request(
            "application/json-patch+json",
            json!([
                {"op": "add", "path": "/metadata/labels/netmend.io~1mode", "value": "dry-run"},
                {"op": "replace", "path": "/spec/podCIDR", "value": "10.42.9.0/24"},
            ]),
        ))
        .await
        .unwrap();
    assert_eq!(node["metadata"]["labels"]["netmend.io/mode"], "dry-run");
    assert_eq!(node["spec"]["podCIDR"], "10.42.9.0/24");
    let (code, _) = status_of(
        client
            .request::<Value>(request(
                "application/json-patch+json",
                json!([{"op": "test", "path": "/spec/podCIDR", "value": "x"}]),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    let (code, reason) = status_of(
        client
            .request::<Value>(request(
                "application/apply-patch+yaml",
                json!({"metadata": {"labels": {}}}),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    let node: Value = client
        .request(request(
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"netmend.io/mode": null}}}),
        ))
        .await
        .unwrap();
    assert!(node["metadata"]["labels"].get("netmend.io/mode").is_none());
}

#[tokio::test]
async fn kubes_event_recorder_folds_repeats_into_a_series() {
    let server = seeded(&["node-a"]);
    let client = client(&server);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "netmend.io/agent".into(),
            instance: Some("node-a".into()),
        },
    );
    let node = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some("node-a".into()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "FindingRaised".into(),
        note: Some("hostport-hijack: ip nat CNI-DN-x".into()),
        action: "Detect".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder.publish(&event, &node).await.unwrap();
    }
    let stored = server.list(&EVENTS, None);
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0]["metadata"]["namespace"], "default");
    assert_eq!(stored[0]["series"]["count"], 3);
    assert_eq!(stored[0]["regarding"]["name"], "node-a");
    let typed: Vec<K8sEvent> = Api::<K8sEvent>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(typed[0].reason.as_deref(), Some("FindingRaised"));
    let methods: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path.contains("/events"))
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods[..3], ["POST", "PATCH", "PATCH"]);
}

#[test]
fn in_a_network_namespace_it_listens_there_and_only_there() {
    let ns = netmend_e2e::NetNs::new("fake-api");
    let server = FakeApiServer::start_in(&ns.path());
    server.put(&NODES, objects::node("node-a"));
    let port = server.port();
    let (code, body) = ns.http_get(port, "/api/v1/nodes/node-a").unwrap();
    assert_eq!(code, 200, "{body}");
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["metadata"]["name"], "node-a");
    let (code, body) = ns.http_get(port, "/api/v1/nodes/node-b").unwrap();
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reason"],
        "NotFound"
    );
    // From the host's loopback the server is not there (whatever else may listen on that port
    // number, the request never reaches this server).
    let seen = server.requests().len();
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        use std::io::Write;
        let _ = stream.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.requests().len(), seen);
    server.stop_listening();
    assert!(ns.http_get(port, "/version").is_err());
    server.start_listening();
    assert_eq!(ns.http_get(port, "/version").unwrap().0, 200);
}
