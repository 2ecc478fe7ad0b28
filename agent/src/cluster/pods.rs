//! The pods on this node by IP, for owner names in findings (a `CNI-DN-*` chain or a DNAT to a
//! pod IP names its pod, `namespace/name`) and for checks that judge "no pod has this IP"
//! (`hostport-stale`). One watch on `pods` with the field selector `spec.nodeName=<node>`; pods
//! on the host network (their IPs are the node's) and finished pods (their IPs may already belong
//! to a new pod) are left out.
//!
//! The index also says whether it is complete ([`PodIndex::complete`]): a list is in and the watch
//! has not failed since, or not for [`WATCH_SETTLE`] (a watch resumed after a failure replays
//! what it missed without a new list). Until then an IP missing from it proves nothing.

use crate::cluster::client::{ApiCalls, WATCH_SECONDS};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the pod watch must go without a failure before the index counts as complete again.
/// The watch retries with a backoff of at most 30s, so a minute without a failure means it is
/// connected again and has replayed (or re-listed) what it missed.
pub const WATCH_SETTLE: Duration = Duration::from_secs(60);

/// The pods of this node by IP, read by the engine's thread, written by the watch.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_ip: RwLock<HashMap<IpAddr, String>>,
    health: Mutex<WatchHealth>,
}

/// What the watch has achieved so far.
#[derive(Debug, Default)]
struct WatchHealth {
    /// A full list of the node's pods went in.
    listed: bool,
    /// The last time the list or the watch failed.
    last_failure: Option<Instant>,
}

impl PodIndex {
    /// The pod (`namespace/name`) that has `ip`.
    pub fn owner(&self, ip: IpAddr) -> Option<String> {
        self.by_ip
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    fn replace(&self, pods: &BTreeMap<String, Vec<IpAddr>>) {
        let mut by_ip = HashMap::new();
        for (pod, ips) in pods {
            for ip in ips {
                by_ip.insert(*ip, pod.clone());
            }
        }
        *self.by_ip.write().unwrap_or_else(|p| p.into_inner()) = by_ip;
    }

    /// Whether the index holds every pod of the node at `now`: listed, and no list or watch
    /// failure since the last list or within [`WATCH_SETTLE`].
    pub fn complete(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.listed
            && health
                .last_failure
                .is_none_or(|at| now.saturating_duration_since(at) >= WATCH_SETTLE)
    }

    /// A full list went in: complete at once, whatever failed before it.
    fn listed(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.listed = true;
        health.last_failure = None;
    }

    fn failed(&self, at: Instant) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_failure = Some(at);
    }

    pub fn len(&self) -> usize {
        self.by_ip.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pod's key and the IPs it owns on the pod network (none for host-network or finished
/// pods).
pub fn pod_ips(pod: &Pod) -> (String, Vec<IpAddr>) {
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if host_network || finished {
        return (key, Vec::new());
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        )
        .collect();
    ips.sort();
    ips.dedup();
    (key, ips)
}

/// Watches this node's pods until `cancel`, keeping `index` current.
pub async fn watch_pods(
    calls: ApiCalls,
    node: String,
    index: std::sync::Arc<PodIndex>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::all(calls.watches.clone());
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(WATCH_SECONDS);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let what = format!("pods on {node} (watch)");
    let mut pods: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Vec<IpAddr>>> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            None => return,
            Some(Err(error)) => {
                calls.watch_failed(&what, &error);
                index.failed(Instant::now());
            }
            Some(Ok(event)) => {
                if !matches!(event, Event::Init) {
                    // `Init` comes before the list is even sent; the rest are answers.
                    calls.watch_item();
                }
                match event {
                    Event::Init => listing = Some(BTreeMap::new()),
                    Event::InitApply(pod) => {
                        let (key, ips) = pod_ips(&pod);
                        listing.get_or_insert_with(BTreeMap::new).insert(key, ips);
                    }
                    Event::InitDone => {
                        pods = listing.take().unwrap_or_default();
                        index.replace(&pods);
                        index.listed();
                    }
                    Event::Apply(pod) => {
                        let (key, ips) = pod_ips(&pod);
                        pods.insert(key, ips);
                        index.replace(&pods);
                    }
                    Event::Delete(pod) => {
                        pods.remove(&pod_ips(&pod).0);
                        index.replace(&pods);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{mock_calls, next_request, reply, Responder};
    use kube::client::Body;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    fn pod(
        ns: &str,
        name: &str,
        ips: &[&str],
        host_network: bool,
        phase: &str,
    ) -> serde_json::Value {
        let pod_ips: Vec<serde_json::Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "resourceVersion": "5"},
               "spec": {"nodeName": "node-a", "hostNetwork": host_network,
                        "containers": [{"name": "c"}]},
               "status": {"phase": phase, "podIP": ips.first(), "podIPs": pod_ips}})
    }

    fn parsed(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn pod_ips_skip_the_host_network_and_finished_pods() {
        let (key, ips) = pod_ips(&parsed(pod(
            "web",
            "a",
            &["10.42.0.5", "fd00::5"],
            false,
            "Running",
        )));
        assert_eq!(key, "web/a");
        assert_eq!(
            ips,
            vec![
                "10.42.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(pod_ips(&parsed(pod(
            "kube-system",
            "proxy",
            &["192.168.1.10"],
            true,
            "Running"
        )))
        .1
        .is_empty());
        assert!(pod_ips(&parsed(pod(
            "jobs",
            "done",
            &["10.42.0.6"],
            false,
            "Succeeded"
        )))
        .1
        .is_empty());
    }

    fn stream(send: Responder, events: &[serde_json::Value]) {
        let body: Vec<u8> = events
            .iter()
            .flat_map(|e| {
                let mut line = serde_json::to_vec(e).unwrap();
                line.push(b'\n');
                line
            })
            .collect();
        send.send_response(
            http::Response::builder()
                .status(200)
                .body(Body::from(body))
                .unwrap(),
        );
    }

    async fn until(index: &PodIndex, ip: &str, want: Option<&str>) {
        let ip: IpAddr = ip.parse().unwrap();
        for _ in 0..1000 {
            if index.owner(ip).as_deref() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{ip}: {:?}, wanted {want:?}", index.owner(ip));
    }

    #[tokio::test(start_paused = true)]
    async fn the_index_follows_the_list_and_the_watch() {
        let (calls, mut api) = mock_calls(Duration::from_secs(10));
        let index = Arc::new(PodIndex::default());
        let cancel = CancellationToken::new();
        tokio::spawn(watch_pods(
            calls,
            "node-a".into(),
            index.clone(),
            cancel.clone(),
        ));
        let (list, send) = next_request(&mut api).await;
        assert!(
            !index.complete(Instant::now()),
            "nothing listed yet: an IP missing from the index proves nothing"
        );
        assert_eq!(
            (list.method.as_str(), list.path.as_str()),
            ("GET", "/api/v1/pods")
        );
        assert_eq!(list.params()["fieldSelector"], "spec.nodeName=node-a");
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"},
                   "items": [pod("web", "a", &["10.42.0.5"], false, "Running"),
                             pod("kube-system", "proxy", &["192.168.1.10"], true, "Running")]}),
        );
        until(&index, "10.42.0.5", Some("web/a")).await;
        assert!(index.complete(Instant::now()));
        assert_eq!(index.owner("192.168.1.10".parse().unwrap()), None);
        let (watch, send) = next_request(&mut api).await;
        assert_eq!(watch.params()["watch"], "true");
        assert_eq!(watch.params()["fieldSelector"], "spec.nodeName=node-a");
        stream(
            send,
            &[
                json!({"type": "ADDED", "object": pod("db", "b", &["10.42.0.7"], false, "Running")}),
                json!({"type": "DELETED", "object": pod("web", "a", &["10.42.0.5"], false, "Running")}),
            ],
        );
        until(&index, "10.42.0.7", Some("db/b")).await;
        until(&index, "10.42.0.5", None).await;
        assert_eq!(index.len(), 1);
        assert!(index.complete(Instant::now()));

        // the watch breaks: the index is not complete until it has gone a while without failing
        let (_watch, send) = next_request(&mut api).await;
        send.send_error(std::io::Error::other("connection reset"));
        for _ in 0..1000 {
            if !index.complete(Instant::now()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!index.complete(Instant::now()));
        assert_eq!(index.len(), 1, "what was known stays for owner names");
        cancel.cancel();
    }

    #[test]
    fn a_failure_keeps_the_index_incomplete_for_the_settle_time() {
        let index = PodIndex::default();
        let t0 = Instant::now();
        assert!(!index.complete(t0), "never listed");
        index.listed();
        assert!(index.complete(t0));
        index.failed(t0);
        assert!(!index.complete(t0));
        assert!(!index.complete(t0 + WATCH_SETTLE - Duration::from_secs(1)));
        assert!(index.complete(t0 + WATCH_SETTLE));
        index.failed(t0);
        index.listed();
        assert!(index.complete(t0), "a new list is complete at once");
    }
}
