//! The API server Service keeper's side of the cluster: one agent in the cluster keeps
//! `default/kubernetes` in the wanted shape, the one holding the Lease
//! [`KEEPER_LEASE`](crate::model::api_service::KEEPER_LEASE) in netmend's namespace (taken,
//! renewed and given up exactly as a fix slot is, by [`SlotKeeper`] in its `Keeper` kind).
//!
//! While a check keeps the Service, a task contends for the Lease; while this agent holds it,
//! the task watches that one Service (a field selector on its name, so the chart grants access to
//! that Service alone) and keeps an [`ApiServiceView`] current for the engine. Losing the Lease
//! drops the watch and the Service from the view: only the holder judges and acts. The task stops,
//! and gives the Lease back, when no check wants it any more or the agent stops.
//!
//! Acting ([`set_service_shape`]) is read, merge patch under the resourceVersion read (409 when the
//! Service changed in between: nothing overwritten), read back: the read back is the proof.

use crate::cluster::client::{ApiCalls, WATCH_SECONDS};
use crate::cluster::slots::{LeaseKind, SlotKeeper, SlotSettings};
use crate::cluster::WallClock;
use crate::model::api_service::{
    differences, merge_patch, ApiServiceView, Leadership, ServiceShape, KEEPER_LEASE,
};
use crate::model::finding::{FixAction, FixId};
use crate::runtime::cluster::{ClusterActError, ClusterActed, SlotDecision};
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Who takes the keeper's Lease: this node, in netmend's namespace, for `lease`.
#[derive(Debug, Clone)]
pub struct KeeperSettings {
    pub holder: String,
    pub namespace: String,
    pub lease: Duration,
}

/// The view, written by the keeper task and read by the engine's thread.
#[derive(Debug, Default)]
pub struct SharedView {
    view: Mutex<Arc<ApiServiceView>>,
}

impl SharedView {
    /// The view now: an `Arc` the engine holds for one pass.
    pub fn view(&self) -> Arc<ApiServiceView> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<ApiServiceView>> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the view when `change` makes it differ, moving its generation.
    fn update(&self, change: impl FnOnce(&mut ApiServiceView)) {
        let mut guard = self.lock();
        let mut next = (**guard).clone();
        change(&mut next);
        next.generation = guard.generation;
        if next != **guard {
            next.generation += 1;
            *guard = Arc::new(next);
        }
    }

    fn leading(&self) -> bool {
        self.lock().leadership == Leadership::Leading
    }
}

type ServiceEvents = BoxStream<'static, Result<Event<Service>, watcher::Error>>;

/// The watch on the one Service, while this agent leads.
fn watch_service(calls: &ApiCalls, namespace: &str, name: &str) -> ServiceEvents {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(WATCH_SECONDS);
    watcher::watcher(
        Api::<Service>::namespaced(calls.watches.clone(), namespace),
        config,
    )
    .default_backoff()
    .boxed()
}

/// One turn of the Lease: renew it when held, else try to take it.
async fn lease_turn(lease: &mut SlotKeeper, id: FixId) -> Leadership {
    if lease.held().is_some() {
        lease.renew().await;
        if lease.held().is_some() {
            return Leadership::Leading;
        }
    }
    match lease.acquire(id).await {
        SlotDecision::Held { .. } | SlotDecision::Unlimited => Leadership::Leading,
        SlotDecision::NoSlot { reason } => match lease.holders().first() {
            Some(holder) => Leadership::Following {
                holder: holder.clone(),
            },
            None => Leadership::Unknown { reason },
        },
    }
}

/// Contends for the keeper's Lease and, while held, watches the Service, until `cancel`; then
/// gives the Lease back and says so on `done`.
pub async fn keep(
    calls: ApiCalls,
    settings: KeeperSettings,
    wall: WallClock,
    shared: Arc<SharedView>,
    cancel: CancellationToken,
    done: std::sync::mpsc::Sender<()>,
) {
    use crate::model::api_service::{API_SERVICE_NAME, API_SERVICE_NAMESPACE};
    let retry = settings.lease / 3;
    let mut lease = SlotKeeper::new(
        calls.clone(),
        SlotSettings {
            count: 1,
            lease: settings.lease,
            holder: settings.holder,
            namespace: settings.namespace,
            kind: LeaseKind::Keeper { name: KEEPER_LEASE },
        },
        wall,
    );
    let id = FixId::new(KEEPER_LEASE);
    let mut events: Option<ServiceEvents> = None;
    let mut listing: Option<Vec<Service>> = None;
    let mut next_turn = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next_turn) => {
                let leadership = lease_turn(&mut lease, id).await;
                let leading = leadership == Leadership::Leading;
                if leading && events.is_none() {
                    tracing::info!("holding the Lease {KEEPER_LEASE}: watching Service {API_SERVICE_NAMESPACE}/{API_SERVICE_NAME}");
                    events = Some(watch_service(&calls, API_SERVICE_NAMESPACE, API_SERVICE_NAME));
                }
                if !leading && events.take().is_some() {
                    tracing::warn!(?leadership, "no longer holding the Lease {KEEPER_LEASE}: the Service is left to its holder");
                    listing = None;
                }
                shared.update(|view| {
                    if !leading {
                        view.service = None;
                    }
                    view.leadership = leadership;
                });
                next_turn = lease
                    .next_renew()
                    .unwrap_or_else(|| Instant::now() + retry);
            }
            item = async { events.as_mut().expect("guarded").next().await }, if events.is_some() => match item {
                None => events = None,
                Some(Err(error)) => calls.watch_failed("services (watch)", &error),
                Some(Ok(event)) => {
                    if !matches!(event, Event::Init) {
                        calls.watch_item();
                    }
                    match event {
                        Event::Init => listing = Some(Vec::new()),
                        Event::InitApply(service) => listing.get_or_insert_with(Vec::new).push(service),
                        Event::InitDone => {
                            let found = listing.take().unwrap_or_default();
                            shared.update(|view| view.service = Some(found.first().map(ServiceShape::of)));
                        }
                        Event::Apply(service) => {
                            shared.update(|view| view.service = Some(Some(ServiceShape::of(&service))));
                        }
                        Event::Delete(_) => shared.update(|view| view.service = Some(None)),
                    }
                }
            },
        }
    }
    lease.release().await;
    let _ = done.send(());
}

/// The keeper while it is wanted: started on the first ask, stopped (its Lease given back) when
/// no enabled check keeps the Service any more.
#[derive(Debug, Default)]
pub struct KeeperTask {
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    shared: Arc<SharedView>,
    cancel: CancellationToken,
    done: std::sync::mpsc::Receiver<()>,
}

impl KeeperTask {
    /// Starts or stops the keeper on `runtime` so that it runs exactly while `wanted`.
    pub fn follow(
        &mut self,
        wanted: bool,
        calls: &ApiCalls,
        settings: &KeeperSettings,
        wall: &WallClock,
        runtime: &tokio::runtime::Handle,
        parent: &CancellationToken,
    ) {
        match (&self.running, wanted) {
            (None, true) => {
                let shared = Arc::new(SharedView::default());
                let cancel = parent.child_token();
                let (done_tx, done) = std::sync::mpsc::channel();
                runtime.spawn(keep(
                    calls.clone(),
                    settings.clone(),
                    wall.clone(),
                    shared.clone(),
                    cancel.clone(),
                    done_tx,
                ));
                tracing::info!("contending for the Lease {KEEPER_LEASE} (a check keeps the API server's Service)");
                self.running = Some(Running {
                    shared,
                    cancel,
                    done,
                });
            }
            (Some(running), false) => {
                running.cancel.cancel();
                tracing::info!(
                    "no enabled check keeps the API server's Service: the Lease {KEEPER_LEASE} is given back"
                );
                self.running = None;
            }
            _ => {}
        }
    }

    /// The view, while the keeper runs.
    pub fn view(&self) -> Option<Arc<ApiServiceView>> {
        self.running.as_ref().map(|r| r.shared.view())
    }

    /// The shared view the keeper writes, for an action to re-check the Lease right before it
    /// writes.
    pub fn shared(&self) -> Option<Arc<SharedView>> {
        self.running.as_ref().map(|r| r.shared.clone())
    }

    /// The agent stops: waits at most `within` for the Lease to be given back.
    pub fn stop(&mut self, within: Duration) {
        if let Some(running) = self.running.take() {
            running.cancel.cancel();
            if running.done.recv_timeout(within).is_err() {
                tracing::warn!(
                    "the Lease {KEEPER_LEASE} was not given back in time: it expires on its own"
                );
            }
        }
    }
}

/// The Service's state in words, for the journal: its type and the wanted annotations' values.
fn described(namespace: &str, name: &str, shape: &ServiceShape, action: &FixAction) -> String {
    let mut text = format!(
        "Service {namespace}/{name} is {} (resourceVersion {})",
        shape.service_type, shape.resource_version
    );
    if let FixAction::SetServiceShape { wanted, .. } = action {
        let annotations: Vec<String> = wanted
            .annotations
            .keys()
            .map(|k| match shape.annotations.get(k) {
                Some(v) => format!("{k}={v:?}"),
                None => format!("{k} missing"),
            })
            .collect();
        if !annotations.is_empty() {
            text.push_str(&format!(", annotations {}", annotations.join(", ")));
        }
    }
    text
}

/// Carries out a [`FixAction::SetServiceShape`]: only while this agent holds the keeper's Lease,
/// reads the Service, merge-patches it from the state read under its resourceVersion (when it
/// differs), and reads it back.
pub async fn set_service_shape(
    calls: &ApiCalls,
    keeper: &SharedView,
    action: &FixAction,
) -> Result<ClusterActed, ClusterActError> {
    let FixAction::SetServiceShape {
        namespace,
        name,
        wanted,
    } = action
    else {
        return Err(ClusterActError::Failed(format!(
            "{action:?} does not act on a Service"
        )));
    };
    let not_leading = || {
        ClusterActError::Moved(format!(
            "this agent no longer holds the Lease {KEEPER_LEASE}: the Service is left to its holder"
        ))
    };
    if !keeper.leading() {
        return Err(not_leading());
    }
    let services: Api<Service> = Api::namespaced(calls.requests.clone(), namespace);
    let what = format!("services/{namespace}/{name}");
    let (wrote, after) = calls
        .read_patch_read(
            &services,
            name,
            &what,
            |e| match e.status() {
                Some(404) => {
                    ClusterActError::Moved(format!("the Service {namespace}/{name} does not exist"))
                }
                _ => ClusterActError::Unavailable(format!("reading {what}: {e}")),
            },
            |read| {
                let patch = merge_patch(&ServiceShape::of(read), wanted);
                // The Lease re-checked at the moment of the write: a renewal lost while reading
                // means another agent may be acting.
                if patch.is_some() && !keeper.leading() {
                    return Err(not_leading());
                }
                Ok(patch)
            },
        )
        .await?;
    let after = ServiceShape::of(&after);
    Ok(ClusterActed {
        wrote,
        reached: differences(&after, wanted).is_empty(),
        after: described(namespace, name, &after, action),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::FakeApi;
    use crate::model::api_service::{WantedShape, API_SERVICE_NAME, API_SERVICE_NAMESPACE};
    use serde_json::json;

    const NS: &str = "netmend";

    fn settings(holder: &str) -> KeeperSettings {
        KeeperSettings {
            holder: holder.into(),
            namespace: NS.into(),
            lease: Duration::from_secs(30),
        }
    }

    fn wall() -> WallClock {
        Arc::new(std::time::SystemTime::now)
    }

    fn api_service(service_type: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "5"},
            "spec": {"type": service_type, "clusterIP": "10.43.0.1",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        })
    }

    fn action(annotations: &[(&str, &str)]) -> FixAction {
        FixAction::SetServiceShape {
            namespace: API_SERVICE_NAMESPACE.into(),
            name: API_SERVICE_NAME.into(),
            wanted: WantedShape {
                service_type: "LoadBalancer".into(),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        }
    }

    fn start(
        fake: &FakeApi,
        holder: &str,
    ) -> (
        Arc<SharedView>,
        CancellationToken,
        crate::cluster::testing::FaultSwitch,
    ) {
        let (calls, faults) = fake.calls(Duration::from_secs(5));
        let shared = Arc::new(SharedView::default());
        let cancel = CancellationToken::new();
        let (done, _) = std::sync::mpsc::channel();
        tokio::spawn(keep(
            calls,
            settings(holder),
            wall(),
            shared.clone(),
            cancel.clone(),
            done,
        ));
        (shared, cancel, faults)
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_holder_watches_the_service_and_the_other_agent_follows() {
        let fake = FakeApi::default();
        fake.state
            .lock()
            .unwrap()
            .services
            .push(api_service("ClusterIP"));
        let (a, _cancel_a, _) = start(&fake, "node-a");
        settle().await;
        let (b, _cancel_b, _) = start(&fake, "node-b");
        settle().await;
        let view_a = a.view();
        assert_eq!(view_a.leadership, Leadership::Leading);
        assert_eq!(
            view_a.service.clone().flatten().map(|s| s.service_type),
            Some("ClusterIP".to_string())
        );
        let view_b = b.view();
        assert_eq!(
            view_b.leadership,
            Leadership::Following {
                holder: "node-a".into()
            }
        );
        assert_eq!(view_b.service, None, "a follower does not read the Service");
        assert_eq!(fake.holder(NS, KEEPER_LEASE), "node-a");
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_moves_to_the_follower_once_the_holder_stops_renewing() {
        let fake = FakeApi::default();
        fake.state
            .lock()
            .unwrap()
            .services
            .push(api_service("ClusterIP"));
        let (a, cancel_a, faults_a) = start(&fake, "node-a");
        settle().await;
        assert_eq!(a.view().leadership, Leadership::Leading);
        let (b, _cancel_b, _) = start(&fake, "node-b");
        settle().await;
        // node-a dies without giving the Lease back: its task stops, the Lease stays.
        faults_a.set(Some(crate::cluster::testing::Fault::Stall));
        cancel_a.cancel();
        settle().await;
        assert_eq!(fake.holder(NS, KEEPER_LEASE), "node-a");
        tokio::time::sleep(Duration::from_secs(50)).await;
        settle().await;
        assert_eq!(b.view().leadership, Leadership::Leading);
        assert_eq!(fake.holder(NS, KEEPER_LEASE), "node-b");
        assert!(b.view().service.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_patch_sets_the_type_under_the_version_read_and_the_read_back_proves_it() {
        let fake = FakeApi::default();
        fake.state
            .lock()
            .unwrap()
            .services
            .push(api_service("ClusterIP"));
        let (calls, _) = fake.calls(Duration::from_secs(5));
        let keeper = SharedView::default();
        // Not holding the Lease: nothing is read or written.
        let refused = set_service_shape(&calls, &keeper, &action(&[])).await;
        assert!(
            matches!(refused, Err(ClusterActError::Moved(_))),
            "{refused:?}"
        );
        assert!(fake
            .requests("GET", "/api/v1/namespaces/default/services/kubernetes")
            .is_empty());

        keeper.update(|v| v.leadership = Leadership::Leading);
        let acted = set_service_shape(&calls, &keeper, &action(&[("lb/ip", "10.0.0.5")]))
            .await
            .unwrap();
        assert!(acted.wrote && acted.reached, "{acted:?}");
        assert!(acted.after.contains("is LoadBalancer"), "{}", acted.after);
        let patches = fake.requests("PATCH", "/api/v1/namespaces/default/services/kubernetes");
        assert_eq!(patches.len(), 1);
        assert_eq!(
            patches[0].content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            patches[0].body,
            json!({"metadata": {"resourceVersion": "5", "annotations": {"lb/ip": "10.0.0.5"}},
                   "spec": {"type": "LoadBalancer"}})
        );
        let service = fake.service(API_SERVICE_NAMESPACE, API_SERVICE_NAME);
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        assert_eq!(service["spec"]["clusterIP"], "10.43.0.1");

        // As wanted already: nothing written.
        let again = set_service_shape(&calls, &keeper, &action(&[("lb/ip", "10.0.0.5")]))
            .await
            .unwrap();
        assert!(!again.wrote && again.reached);
        assert_eq!(
            fake.requests("PATCH", "/api/v1/namespaces/default/services/kubernetes")
                .len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_changed_between_read_and_write_is_not_overwritten() {
        let fake = FakeApi::default();
        fake.state
            .lock()
            .unwrap()
            .services
            .push(api_service("ClusterIP"));
        fake.state.lock().unwrap().write_before_next_patch = true;
        let (calls, _) = fake.calls(Duration::from_secs(5));
        let keeper = SharedView::default();
        keeper.update(|v| v.leadership = Leadership::Leading);
        let moved = set_service_shape(&calls, &keeper, &action(&[])).await;
        assert!(
            matches!(&moved, Err(ClusterActError::Moved(why)) if why.contains("409")),
            "{moved:?}"
        );
        assert_eq!(
            fake.service(API_SERVICE_NAMESPACE, API_SERVICE_NAME)["spec"]["type"],
            "ClusterIP"
        );
    }
}
