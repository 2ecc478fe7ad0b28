//! The Kubernetes adapter: [`ApiCluster`] implements [`Cluster`] (the engine's one window onto
//! the cluster, `runtime::cluster`) over the API with kube-rs, and [`connect`] decides between it
//! and node-local mode at start.
//!
//! Everything that talks to the API runs on tokio tasks of the agent's runtime: the node watch
//! (opt-out label, uid, conditions at start), the pod watch (owner names), the conditions
//! reporter, the events reporter and the fix slot keeper. The engine's thread only hands reports
//! over (never blocking), reads what the watches keep current, and waits a bounded time for a fix
//! slot. Every request goes through [`client::ApiCalls`], which bounds it in time and counts its
//! failures for `/status` and the metrics.
//!
//! Its tests (the whole adapter against the in-memory API) make this file long.

pub mod api_service;
pub mod client;
pub mod conditions;
pub mod cordon;
pub mod events;
pub mod node_watch;
pub mod pods;
pub mod services;
pub mod slots;
#[cfg(test)]
pub(crate) mod testing;

pub use client::ClusterError;

use crate::config::{ApiUse, KubernetesConfig};
use crate::model::finding::FixId;
use crate::runtime::cluster::{
    CheckState, Cluster, ClusterReport, Connection, NodeEvent, NodeLocal, NodeMode, SlotDecision,
};
use client::{ApiCalls, ApiSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use node_watch::NodeFacts;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The wall clock the API's timestamps come from (tests fix it).
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// How many events of the engine may wait for the events reporter.
const EVENT_QUEUE: usize = 256;

pub(crate) fn time(at: SystemTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::try_from(at)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

pub(crate) fn micro_time(at: SystemTime) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::try_from(at)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The cluster for this agent: node-local when the API is switched off or cannot be found (an
/// error instead when `kubernetes.enabled: true` or `kubernetes.required: true`), else an
/// [`ApiCluster`] whose tasks run on `runtime`.
///
/// `kubeconfig` is `--kubeconfig`, `node_name` is `--node-name`; the environment supplies the
/// rest (`KUBERNETES_SERVICE_HOST`, `KUBECONFIG`, `NODE_NAME`, `POD_NAMESPACE`). Blocks the
/// calling thread for at most `kubernetes.requestTimeout` (the first read of the node, so that
/// the first pass already knows the opt-out label); may be called from any thread, inside the
/// runtime or not. `runtime` must be a multi-thread runtime that keeps running while the cluster
/// is used.
pub fn connect(
    settings: &KubernetesConfig,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Cluster>, ClusterError> {
    if settings.enabled == ApiUse::Never {
        return Ok(Box::new(Detached::new(
            "node-local mode: kubernetes.enabled is false",
        )));
    }
    let source = client::api_source(kubeconfig.as_deref(), &client::process_env);
    if let ApiSource::Nowhere(reason) = &source {
        if settings.required {
            return Err(ClusterError::Missing(reason.clone(), "required"));
        }
        if settings.enabled == ApiUse::Always {
            return Err(ClusterError::Missing(reason.clone(), "enabled"));
        }
        tracing::info!(%reason, "no Kubernetes API");
        return Ok(Box::new(Detached::new(reason)));
    }
    if source == ApiSource::InCluster && kubeconfig.is_some() {
        tracing::warn!("--kubeconfig is ignored: the in-cluster service account comes first");
    }
    let node = client::node_name(
        node_name.as_deref(),
        &client::process_env,
        &client::kernel_hostname,
    )?;
    let namespace = client::namespace(&client::process_env);
    let settings = settings.clone();
    let runtime = runtime.clone();
    // A thread of its own: `block_on` must not run on a thread that is already in the runtime.
    let started = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                runtime.block_on(async {
                    let config = client::load_config(&source)
                        .await?
                        .ok_or_else(|| ClusterError::Client("no API configuration".into()))?;
                    tracing::info!(api = %config.cluster_url, %node, %namespace, "using the Kubernetes API");
                    let (requests, watches) =
                        client::build_clients(config, settings.request_timeout)?;
                    let calls = ApiCalls::new(requests, watches, settings.request_timeout);
                    Ok::<_, ClusterError>(
                        ApiCluster::start(calls, &settings, node, namespace, Arc::new(SystemTime::now))
                            .await,
                    )
                })
            })
            .join()
            .map_err(|_| ClusterError::Start("the start thread panicked".into()))
    })??;
    Ok(Box::new(started))
}

/// Node-local mode, with the reason it was chosen.
#[derive(Debug)]
struct Detached {
    reason: String,
}

impl Detached {
    fn new(reason: impl Into<String>) -> Detached {
        Detached {
            reason: reason.into(),
        }
    }
}

impl Cluster for Detached {
    fn publish(&mut self, report: ClusterReport) {
        NodeLocal.publish(report)
    }

    fn node_mode(&self) -> NodeMode {
        NodeLocal.node_mode()
    }

    fn acquire_slot(&mut self, fix: FixId, cuts_off_api: bool, wait: Duration) -> SlotDecision {
        NodeLocal.acquire_slot(fix, cuts_off_api, wait)
    }

    fn release_slot(&mut self) {}

    fn pod_owner(&self, ip: IpAddr) -> Option<String> {
        NodeLocal.pod_owner(ip)
    }

    fn connection(&self) -> Connection {
        Connection {
            connected: false,
            reason: Some(self.reason.clone()),
            ..Connection::default()
        }
    }
}

/// The cluster through the API.
pub struct ApiCluster {
    calls: ApiCalls,
    facts: watch::Receiver<Option<NodeFacts>>,
    pods: Arc<pods::PodIndex>,
    /// The checks' states for the conditions reporter (`None` when conditions are off).
    reports: Option<watch::Sender<Option<Arc<Vec<CheckState>>>>>,
    events: Option<mpsc::Sender<NodeEvent>>,
    events_dropped: u64,
    /// `None` with `fixSlots: 0`.
    slots: Option<slots::SlotClient>,
    slots_done: Option<std::sync::mpsc::Receiver<()>>,
    /// This node's name (the Node that cordon acts on).
    node: String,
    /// The Services and EndpointSlices watch, while a check reads them.
    intent: services::IntentWatch,
    /// The API server Service keeper (its Lease and its watch), while a check keeps the Service.
    keeper: api_service::KeeperTask,
    keeper_settings: api_service::KeeperSettings,
    wall: WallClock,
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
}

impl ApiCluster {
    /// Starts the tasks on the current runtime and waits at most the request timeout for the
    /// first sight of the node.
    pub async fn start(
        calls: ApiCalls,
        settings: &KubernetesConfig,
        node: String,
        namespace: String,
        wall: WallClock,
    ) -> ApiCluster {
        let cancel = CancellationToken::new();
        let (facts_tx, facts) = watch::channel(None);
        tokio::spawn(node_watch::watch_node(
            calls.clone(),
            node.clone(),
            facts_tx,
            cancel.clone(),
        ));
        let pods = Arc::new(pods::PodIndex::default());
        tokio::spawn(pods::watch_pods(
            calls.clone(),
            node.clone(),
            pods.clone(),
            cancel.clone(),
        ));

        // With conditions off, netmend's conditions left by an earlier run are removed once.
        let (reports_tx, reports_rx) = watch::channel(None);
        let reports = if settings.conditions {
            Some(reports_tx)
        } else {
            reports_tx.send_replace(Some(Arc::new(Vec::new())));
            None
        };
        tokio::spawn(
            conditions::ConditionsReporter::new(
                calls.clone(),
                node.clone(),
                wall.clone(),
                facts.clone(),
            )
            .run(reports_rx, cancel.clone()),
        );

        let events = settings.events.then(|| {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            tokio::spawn(
                events::EventsReporter::new(
                    calls.clone(),
                    node.clone(),
                    wall.clone(),
                    facts.clone(),
                )
                .run(rx, cancel.clone()),
            );
            tx
        });

        let keeper_settings = api_service::KeeperSettings {
            holder: node.clone(),
            namespace: namespace.clone(),
            lease: settings.slot_lease,
        };
        let (slots, slots_done) = if settings.fix_slots > 0 {
            let (keeper, client, commands) = slots::SlotClient::pair(
                calls.clone(),
                slots::SlotSettings {
                    count: settings.fix_slots,
                    lease: settings.slot_lease,
                    holder: node.clone(),
                    namespace,
                    kind: slots::LeaseKind::FixSlots,
                },
                wall.clone(),
            );
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            tokio::spawn(keeper.run(commands, cancel.clone(), done_tx));
            (Some(client), Some(done_rx))
        } else {
            (None, None)
        };

        let mut first = facts.clone();
        if tokio::time::timeout(calls.timeout, first.wait_for(Option::is_some))
            .await
            .is_err()
        {
            tracing::warn!(
                node = %node,
                "the node was not read from the API in time: its opt-out label counts as unset until it is"
            );
        }
        ApiCluster {
            calls,
            facts,
            pods,
            reports,
            events,
            events_dropped: 0,
            slots,
            slots_done,
            node: node.clone(),
            intent: services::IntentWatch::default(),
            keeper: api_service::KeeperTask::default(),
            keeper_settings,
            wall,
            runtime: tokio::runtime::Handle::current(),
            cancel,
        }
    }
}

impl Cluster for ApiCluster {
    fn publish(&mut self, report: ClusterReport) {
        if let Some(reports) = &self.reports {
            reports.send_replace(Some(Arc::new(report.checks)));
        }
        if let Some(events) = &self.events {
            for event in report.events {
                if events.try_send(event).is_err() {
                    self.events_dropped += 1;
                    if self.events_dropped == 1 || self.events_dropped.is_multiple_of(100) {
                        tracing::warn!(
                            dropped = self.events_dropped,
                            "the events reporter is behind: events dropped"
                        );
                    }
                }
            }
        }
    }

    fn node_mode(&self) -> NodeMode {
        self.facts
            .borrow()
            .as_ref()
            .map(|f| f.mode)
            .unwrap_or_default()
    }

    fn acquire_slot(&mut self, fix: FixId, cuts_off_api: bool, wait: Duration) -> SlotDecision {
        match &self.slots {
            None => SlotDecision::Unlimited,
            Some(_) if cuts_off_api => SlotDecision::Unlimited,
            Some(slots) => slots.acquire(fix, wait),
        }
    }

    fn release_slot(&mut self) {
        if let Some(slots) = &self.slots {
            slots.release();
        }
    }

    fn pod_owner(&self, ip: IpAddr) -> Option<String> {
        self.pods.owner(ip)
    }

    fn pods_known(&self) -> bool {
        self.pods.complete(std::time::Instant::now()) && self.calls.book.snapshot().connected
    }

    fn connection(&self) -> Connection {
        self.calls.book.snapshot()
    }

    fn cordon(&self) -> Option<crate::runtime::cluster::Cordon> {
        self.facts.borrow().as_ref().map(|f| f.cordon.clone())
    }

    fn act_on_cluster(
        &mut self,
        action: &crate::model::finding::FixAction,
        wait: Duration,
    ) -> Result<crate::runtime::cluster::ClusterActed, crate::runtime::cluster::ClusterActError>
    {
        use crate::model::finding::FixAction;
        use crate::runtime::cluster::ClusterActError;
        let (tx, rx) = std::sync::mpsc::channel();
        let calls = self.calls.clone();
        let object = match action {
            FixAction::SetServiceShape {
                namespace, name, ..
            } => {
                let action = action.clone();
                let Some(keeper) = self.keeper.shared() else {
                    return Err(ClusterActError::Moved(
                        "no check keeps the API server's Service any more".into(),
                    ));
                };
                self.runtime.spawn(async move {
                    let _ = tx.send(api_service::set_service_shape(&calls, &keeper, &action).await);
                });
                format!("the Service {namespace}/{name}")
            }
            _ => {
                let action = action.clone();
                let node = self.node.clone();
                self.runtime.spawn(async move {
                    let _ = tx.send(cordon::act_on_node(&calls, &node, &action).await);
                });
                "the Node".to_string()
            }
        };
        rx.recv_timeout(wait).unwrap_or_else(|_| {
            Err(ClusterActError::Unknown(format!(
                "no answer from the API within {}: whether {object} was changed is not known",
                humantime::format_duration(wait)
            )))
        })
    }

    fn follow_api_service(&mut self, wanted: bool) {
        self.keeper.follow(
            wanted,
            &self.calls,
            &self.keeper_settings,
            &self.wall,
            &self.runtime,
            &self.cancel,
        );
    }

    fn api_service(&self) -> Option<Arc<crate::model::api_service::ApiServiceView>> {
        self.keeper.view()
    }

    fn follow_service_intent(&mut self, wanted: bool) {
        self.intent
            .follow(wanted, &self.calls, &self.runtime, &self.cancel);
    }

    fn service_intent(&self) -> Option<Arc<crate::model::service_intent::ClusterIntent>> {
        let view = self.intent.view()?;
        if self.calls.book.connected() || !view.synced {
            return Some(view);
        }
        // Cut off from the API the watches may have missed changes: judged again once it
        // answers. A generation of its own, so that the checks run again both ways.
        Some(Arc::new(crate::model::service_intent::ClusterIntent {
            synced: false,
            generation: view.generation | 1 << 63,
            ..Default::default()
        }))
    }

    fn shutdown(&mut self, within: Duration) {
        self.cancel.cancel();
        self.keeper.stop(within);
        if let Some(done) = self.slots_done.take() {
            if done.recv_timeout(within).is_err() {
                tracing::warn!("the fix slot was not released in time: it expires on its own");
            }
        }
    }
}

impl Drop for ApiCluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::FakeApi;
    use crate::model::finding::CheckId;
    use serde_json::json;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn settings() -> KubernetesConfig {
        crate::config::Config::default().kubernetes
    }

    #[test]
    fn switched_off_is_node_local_with_its_reason() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let off = KubernetesConfig {
            enabled: ApiUse::Never,
            ..settings()
        };
        let mut cluster = connect(&off, None, None, runtime.handle()).unwrap();
        let c = cluster.connection();
        assert!(!c.connected);
        assert!(c.reason.unwrap().contains("kubernetes.enabled is false"));
        assert_eq!(
            cluster.acquire_slot(FixId::new("x"), false, Duration::ZERO),
            SlotDecision::Unlimited
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cluster_reports_reads_and_limits_through_the_api() {
        let fake = FakeApi::default();
        fake.add_node(
            "node-a",
            json!({"netmend.io/mode": "dry-run"}),
            json!([{"type": "Ready", "status": "True"},
                   {"type": "NetmendRetired", "status": "True"}]),
        );
        fake.state.lock().unwrap().pods.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "3"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.9", "podIPs": [{"ip": "10.42.0.9"}]}
        }));
        let (calls, _) = fake.calls(TIMEOUT);
        let mut cluster = ApiCluster::start(
            calls,
            &settings(),
            "node-a".into(),
            "netmend".into(),
            Arc::new(SystemTime::now),
        )
        .await;
        assert_eq!(cluster.node_mode(), NodeMode::DryRun);
        cluster.publish(ClusterReport {
            checks: vec![CheckState {
                check: CheckId::HOSTPORT_HIJACK,
                failing: true,
                summary: "tcp/6443".into(),
            }],
            events: vec![NodeEvent::FindingRaised {
                check: CheckId::HOSTPORT_HIJACK,
                subject: "tcp/6443".into(),
                message: "DNAT to 10.42.0.9".into(),
            }],
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let conditions = fake.conditions("node-a");
        assert_eq!(
            conditions.keys().collect::<Vec<_>>(),
            vec!["NetmendHostportHijack", "Ready"]
        );
        let events = fake.state.lock().unwrap().events.clone();
        assert_eq!(events.len(), 1);
        let event = events.values().next().unwrap();
        assert_eq!(event["regarding"]["uid"], "uid-node-a");
        assert_eq!(
            cluster.pod_owner("10.42.0.9".parse().unwrap()).as_deref(),
            Some("shop/web-1")
        );
        assert!(cluster.pods_known());

        // slots are asked from the engine's (blocking) thread
        let decision = tokio::task::spawn_blocking(move || {
            let d = cluster.acquire_slot(
                FixId::new("remove-hijack-rule"),
                false,
                Duration::from_secs(5),
            );
            (d, cluster)
        });
        let (decision, mut cluster) = decision.await.unwrap();
        assert_eq!(decision, SlotDecision::Held { index: 0 });
        assert_eq!(fake.holder("netmend", "netmend-fix-slot-0"), "node-a");
        assert_eq!(cluster.connection().slot_held, Some(0));
        assert!(cluster.connection().connected);
        // held: asked again, the same slot at once
        let mut cluster = tokio::task::spawn_blocking(move || {
            let d = cluster.acquire_slot(FixId::new("x"), false, Duration::ZERO);
            assert_eq!(d, SlotDecision::Held { index: 0 });
            cluster
        })
        .await
        .unwrap();
        // the contract's exception: a fault that cuts the node off from the API needs no slot
        assert_eq!(
            cluster.acquire_slot(FixId::new("remove-hijack-rule"), true, Duration::ZERO),
            SlotDecision::Unlimited
        );
        let mut cluster = tokio::task::spawn_blocking(move || {
            cluster.shutdown(Duration::from_secs(5));
            cluster
        })
        .await
        .unwrap();
        assert_eq!(fake.holder("netmend", "netmend-fix-slot-0"), "");
        assert_eq!(
            cluster.acquire_slot(FixId::new("x"), true, Duration::ZERO),
            SlotDecision::Unlimited
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_slots_or_conditions_nothing_is_limited_and_old_conditions_go() {
        let fake = FakeApi::default();
        fake.add_node(
            "node-a",
            json!({}),
            json!([{"type": "Ready", "status": "True"},
                   {"type": "NetmendHostportHijack", "status": "True"}]),
        );
        let (calls, _) = fake.calls(TIMEOUT);
        let quiet = KubernetesConfig {
            conditions: false,
            events: false,
            fix_slots: 0,
            ..settings()
        };
        let mut cluster = ApiCluster::start(
            calls,
            &quiet,
            "node-a".into(),
            "netmend".into(),
            Arc::new(SystemTime::now),
        )
        .await;
        cluster.publish(ClusterReport {
            checks: vec![],
            events: vec![NodeEvent::FindingCleared {
                check: CheckId::HOSTPORT_HIJACK,
                subject: "x".into(),
            }],
        });
        assert_eq!(
            cluster.acquire_slot(FixId::new("x"), false, Duration::ZERO),
            SlotDecision::Unlimited
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            fake.conditions("node-a").keys().collect::<Vec<_>>(),
            vec!["Ready"]
        );
        assert!(fake.state.lock().unwrap().events.is_empty());
        assert!(fake.requests("GET", "/apis/coordination.k8s.io").is_empty());
        // the removal is written once, not repeated as a heartbeat
        tokio::time::sleep(conditions::HEARTBEAT * 2).await;
        assert_eq!(
            fake.requests("PATCH", "/api/v1/nodes/node-a/status").len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_that_does_not_answer_never_stalls_the_engine() {
        let fake = FakeApi::default();
        fake.add_node("node-a", json!({"netmend.io/mode": "off"}), json!([]));
        let (calls, faults) = fake.calls(TIMEOUT);
        faults.set(Some(crate::cluster::testing::Fault::Stall));
        let started = tokio::time::Instant::now();
        let cluster = ApiCluster::start(
            calls,
            &settings(),
            "node-a".into(),
            "netmend".into(),
            Arc::new(SystemTime::now),
        )
        .await;
        // start waited the request timeout for the node, then went on without it
        assert_eq!(tokio::time::Instant::now() - started, TIMEOUT);
        assert_eq!(cluster.node_mode(), NodeMode::Configured);
        assert!(!cluster.pods_known(), "the pods were never listed");
        let mut cluster = tokio::task::spawn_blocking(move || {
            let mut cluster = cluster;
            cluster.publish(ClusterReport::default());
            let d = cluster.acquire_slot(FixId::new("x"), false, Duration::from_millis(100));
            match d {
                SlotDecision::NoSlot { reason } => {
                    assert!(reason.contains("within 100ms"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
            cluster
        })
        .await
        .unwrap();
        tokio::time::sleep(TIMEOUT + Duration::from_millis(1)).await;
        let c = cluster.connection();
        assert!(!c.connected);
        assert!(c.reason.unwrap().contains("no answer within 10s"));
        // the slot's Lease and the node (for its conditions) were asked for
        assert_eq!(
            c.request_errors[&("get".to_string(), "timeout".to_string())],
            2
        );
        // the API is back: the next request for a slot gets one
        faults.set(None);
        let decision = tokio::task::spawn_blocking(move || {
            cluster.acquire_slot(FixId::new("x"), false, Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert_eq!(decision, SlotDecision::Held { index: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn services_and_slices_are_watched_only_while_a_check_reads_them() {
        let fake = FakeApi::default();
        fake.add_node("node-a", json!({}), json!([]));
        fake.state.lock().unwrap().services.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "2"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]}
        }));
        let (calls, _) = fake.calls(TIMEOUT);
        let cluster = ApiCluster::start(
            calls,
            &settings(),
            "node-a".into(),
            "netmend".into(),
            Arc::new(SystemTime::now),
        )
        .await;
        // lists and watches of Services and EndpointSlices
        let lists = |fake: &FakeApi| {
            let mut seen = fake.requests("GET", "/api/v1/services");
            seen.extend(fake.requests("GET", "/apis/discovery.k8s.io/v1/endpointslices"));
            let watches = seen
                .iter()
                .filter(|s| s.params().get("watch").is_some_and(|w| w == "true"))
                .count();
            (seen.len() - watches, watches)
        };
        // the engine asks from its own thread
        let mut cluster = tokio::task::spawn_blocking(move || {
            let mut cluster = cluster;
            cluster.follow_service_intent(false);
            cluster
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lists(&fake), (0, 0));
        assert!(cluster.service_intent().is_none());

        cluster.follow_service_intent(true);
        let mut synced = false;
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if cluster.service_intent().is_some_and(|i| i.synced) {
                synced = true;
                break;
            }
        }
        assert!(synced, "{:?}", cluster.service_intent());
        assert_eq!(cluster.service_intent().unwrap().services.len(), 1);
        // asked again every pass: one watch, not one per pass
        cluster.follow_service_intent(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listed = lists(&fake);
        assert_eq!(listed, (2, 2));

        // cut off from the API: the watches may miss changes, so nothing is judged until it
        // answers again
        let generation = cluster.service_intent().unwrap().generation;
        cluster.calls.book.failed(
            "watch",
            "services (watch)",
            &client::CallError::Timeout(TIMEOUT),
        );
        let cut_off = cluster.service_intent().unwrap();
        assert!(!cut_off.synced);
        assert_ne!(cut_off.generation, generation);
        cluster.calls.book.answered();
        assert!(cluster.service_intent().unwrap().synced);

        cluster.follow_service_intent(false);
        assert!(cluster.service_intent().is_none());
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(lists(&fake), listed, "the watches stopped");
    }
}
