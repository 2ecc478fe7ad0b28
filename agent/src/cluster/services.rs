//! The cluster's intent for kube-proxy: one watch on all Services and one on all EndpointSlices,
//! kept in an [`IntentIndex`] event by event (a change to one Service or slice recomputes that
//! Service only; nothing is re-listed on a pass). Started only while a check that reads the
//! intent is enabled, and stopped when none is: the chart grants `services` and `endpointslices`
//! for exactly that.
//!
//! Until both were listed once the intent is not synced, and the checks judge nothing.

use crate::cluster::client::{ApiCalls, WATCH_SECONDS};
use crate::model::service_intent::{ClusterIntent, IntentIndex};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The index, shared by the watch task (writer) and the engine's thread (reader).
#[derive(Debug, Default)]
pub struct SharedIntent {
    index: Mutex<IntentIndex>,
}

impl SharedIntent {
    /// The intent now: an `Arc` the engine holds for one pass.
    pub fn view(&self) -> Arc<ClusterIntent> {
        self.lock().view()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntentIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One list-then-watch stream's progress: the objects of a list in progress.
struct Listing<K> {
    items: Option<Vec<K>>,
}

impl<K> Listing<K> {
    /// Folds one event into `index`; a list is applied as a whole when it is complete.
    fn fold(
        &mut self,
        event: Event<K>,
        index: &SharedIntent,
        replace: fn(&mut IntentIndex, Vec<K>),
        apply: fn(&mut IntentIndex, K),
        delete: fn(&mut IntentIndex, &K),
    ) {
        match event {
            Event::Init => self.items = Some(Vec::new()),
            Event::InitApply(object) => self.items.get_or_insert_with(Vec::new).push(object),
            Event::InitDone => replace(&mut index.lock(), self.items.take().unwrap_or_default()),
            Event::Apply(object) => apply(&mut index.lock(), object),
            Event::Delete(object) => delete(&mut index.lock(), &object),
        }
    }
}

/// Watches the Services and EndpointSlices of the whole cluster until `cancel`, keeping `index`
/// current.
pub async fn watch_intent(calls: ApiCalls, index: Arc<SharedIntent>, cancel: CancellationToken) {
    let config = watcher::Config::default().timeout(WATCH_SECONDS);
    let mut services = watcher::watcher(Api::<Service>::all(calls.watches.clone()), config.clone())
        .default_backoff()
        .boxed();
    let mut slices = watcher::watcher(Api::<EndpointSlice>::all(calls.watches.clone()), config)
        .default_backoff()
        .boxed();
    let mut service_list = Listing { items: None };
    let mut slice_list = Listing { items: None };
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            item = services.next() => match item {
                None => return,
                Some(Err(error)) => calls.watch_failed("services (watch)", &error),
                Some(Ok(event)) => {
                    if !matches!(event, Event::Init) {
                        calls.watch_item();
                    }
                    service_list.fold(
                        event,
                        &index,
                        IntentIndex::replace_services,
                        IntentIndex::apply_service,
                        IntentIndex::delete_service,
                    );
                }
            },
            item = slices.next() => match item {
                None => return,
                Some(Err(error)) => calls.watch_failed("endpointslices (watch)", &error),
                Some(Ok(event)) => {
                    if !matches!(event, Event::Init) {
                        calls.watch_item();
                    }
                    slice_list.fold(
                        event,
                        &index,
                        IntentIndex::replace_slices,
                        IntentIndex::apply_slice,
                        IntentIndex::delete_slice,
                    );
                }
            },
        }
    }
}

/// The watch while it is wanted: started on the first ask, stopped (and its index dropped) when
/// no enabled check reads the intent any more.
#[derive(Debug, Default)]
pub struct IntentWatch {
    running: Option<(Arc<SharedIntent>, CancellationToken)>,
}

impl IntentWatch {
    /// Starts or stops the watch on `runtime` so that it runs exactly while `wanted`.
    pub fn follow(
        &mut self,
        wanted: bool,
        calls: &ApiCalls,
        runtime: &tokio::runtime::Handle,
        parent: &CancellationToken,
    ) {
        match (&self.running, wanted) {
            (None, true) => {
                let index = Arc::new(SharedIntent::default());
                let cancel = parent.child_token();
                runtime.spawn(watch_intent(calls.clone(), index.clone(), cancel.clone()));
                tracing::info!("watching Services and EndpointSlices (a check reads the cluster's intent for kube-proxy)");
                self.running = Some((index, cancel));
            }
            (Some((_, cancel)), false) => {
                cancel.cancel();
                tracing::info!(
                    "no enabled check reads Services and EndpointSlices: their watch stopped"
                );
                self.running = None;
            }
            _ => {}
        }
    }

    /// The intent, while the watch runs.
    pub fn view(&self) -> Option<Arc<ClusterIntent>> {
        self.running.as_ref().map(|(index, _)| index.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{mock_calls, next_request, reply};
    use crate::model::kube_proxy::ServicePort;
    use crate::model::service_intent::Intended;
    use kube::client::Body;
    use serde_json::json;
    use std::time::Duration;

    fn web(endpoints: &[&str]) -> (serde_json::Value, serde_json::Value) {
        let eps: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        (
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
                   "spec": {"clusterIP": "10.43.0.50", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-x1", "namespace": "shop", "resourceVersion": "4",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "endpoints": eps,
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        )
    }

    async fn until(index: &SharedIntent, want: impl Fn(&ClusterIntent) -> bool) {
        for _ in 0..1000 {
            if want(&index.view()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never: {:?}", index.view());
    }

    #[tokio::test(start_paused = true)]
    async fn both_lists_then_watch_events_keep_the_intent() {
        let (calls, mut api) = mock_calls(Duration::from_secs(10));
        let index = Arc::new(SharedIntent::default());
        let cancel = CancellationToken::new();
        tokio::spawn(watch_intent(calls, index.clone(), cancel.clone()));
        let (service, slice) = web(&["10.42.0.7"]);
        let mut watches = Vec::new();
        // the two lists come in either order
        for _ in 0..2 {
            let (seen, send) = next_request(&mut api).await;
            assert_eq!(seen.method, "GET");
            match seen.path.as_str() {
                "/api/v1/services" => reply(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "ServiceList",
                           "metadata": {"resourceVersion": "10"}, "items": [service.clone()]}),
                ),
                "/apis/discovery.k8s.io/v1/endpointslices" => reply(
                    send,
                    200,
                    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                           "metadata": {"resourceVersion": "10"}, "items": [slice.clone()]}),
                ),
                other => panic!("unexpected {other}"),
            }
        }
        let key = ServicePort {
            namespace: "shop".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: "tcp".into(),
        };
        until(&index, |v| v.synced && v.intended.contains_key(&key)).await;
        for _ in 0..2 {
            let (seen, send) = next_request(&mut api).await;
            assert_eq!(seen.params()["watch"], "true");
            watches.push((seen.path.clone(), send));
        }
        let (_, scaled) = web(&["10.42.0.7", "10.42.0.8"]);
        for (path, send) in watches {
            let line = if path.ends_with("/endpointslices") {
                json!({"type": "MODIFIED", "object": scaled})
            } else {
                json!({"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "12"},
                       "spec": {"clusterIP": "10.43.0.60", "ports": [{"port": 5432}]}}})
            };
            let mut body = serde_json::to_vec(&line).unwrap();
            body.push(b'\n');
            send.send_response(
                http::Response::builder()
                    .status(200)
                    .body(Body::from(body))
                    .unwrap(),
            );
        }
        until(&index, |v| {
            v.intended.get(&key)
                == Some(&Intended::Endpoints {
                    endpoints: ["10.42.0.7:8080", "10.42.0.8:8080"]
                        .iter()
                        .map(|a| a.parse().unwrap())
                        .collect(),
                })
                && v.services.contains(&("shop".into(), "db".into()))
        })
        .await;
        cancel.cancel();
    }
}
