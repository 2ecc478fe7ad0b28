//! The project's own fake Kubernetes API server, for tests of the agent's cluster side: plain
//! HTTP on 127.0.0.1 (of the host, or of a network namespace so that an agent inside it reaches
//! it), speaking the wire protocol kube-rs speaks — JSON objects and lists with one global
//! resourceVersion, 404/409/410/415/422 as `Status` objects, strategic merge, merge and JSON
//! patches, selectors, chunked watch streams with bookmarks.
//!
//! Served: core/v1 nodes (and `nodes/status`), pods, services, namespaces, events, configmaps;
//! coordination.k8s.io/v1 leases; events.k8s.io/v1 events; discovery.k8s.io/v1 endpointslices.
//! Not served: server-side apply (415), authentication (every request is allowed unless a fault
//! says otherwise), protobuf and tables.
//!
//! Tests drive it through [`FakeApiServer`], never over HTTP: seed and change objects (another
//! node taking a Lease, a human labelling or cordoning the node), read them back, script faults
//! ([`Fault`]: a status code, a delay, a hang, a dropped connection), stop and restart listening
//! on the same port (the API down and back), and read the log of requests.

mod discovery;
pub mod faults;
pub mod json_patch;
pub mod objects;
pub mod patch;
pub mod resources;
pub mod selectors;
mod server;
pub mod status;
pub mod store;
pub mod validation;
mod watch;

pub use faults::{Fault, FaultAction, RecordedRequest};
pub use patch::PatchFormat;
pub use resources::{
    ResourceType, CONFIG_MAPS, CORE_EVENTS, ENDPOINT_SLICES, EVENTS, LEASES, NAMESPACES, NODES,
    PODS, SERVICES,
};
pub use status::ApiError;
pub use store::Store;

use anyhow::{Context, Result};
use serde_json::Value;
use server::Shared;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How to start a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct Builder {
    netns: Option<PathBuf>,
    port: u16,
    bookmark_interval: Duration,
    history_limit: usize,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            netns: None,
            port: 0,
            bookmark_interval: Duration::from_secs(1),
            history_limit: 1000,
        }
    }
}

impl Builder {
    /// Listens on 127.0.0.1 of the network namespace at `path` (e.g. `/run/netns/NAME`)
    /// instead of the host's.
    pub fn netns(mut self, path: &Path) -> Builder {
        self.netns = Some(path.to_path_buf());
        self
    }

    /// Listens on this port (default: an ephemeral one).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = port;
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a bookmark (default 1 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Builder {
        self.bookmark_interval = interval;
        self
    }

    /// How many changes are kept for watches (default 1000); older starts get 410.
    pub fn history_limit(mut self, limit: usize) -> Builder {
        self.history_limit = limit;
        self
    }

    /// Starts the server on its own runtime thread.
    pub fn start(self) -> Result<FakeApiServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .context("start the fake API server's runtime")?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(self.history_limit)),
            changed,
            faults: Mutex::default(),
            log: Mutex::default(),
            bookmark_interval: self.bookmark_interval,
            watches: Mutex::new(CancellationToken::new()),
            port: AtomicU16::new(0),
        });
        let server = FakeApiServer {
            shared,
            runtime: Some(runtime),
            listening: Mutex::new(Listening {
                netns: self.netns,
                port: self.port,
                stop: None,
            }),
        };
        server.try_start_listening()?;
        Ok(server)
    }
}

struct Listening {
    netns: Option<PathBuf>,
    port: u16,
    /// Cancelled to stop this listening period: the listener and its connections.
    stop: Option<CancellationToken>,
}

/// A running fake API server; stopped when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    listening: Mutex<Listening>,
}

/// Binds 127.0.0.1:`port`, inside the namespace at `netns` when given (from a scratch thread that
/// joins it: a socket stays in the namespace it was made in).
fn bind(netns: Option<&Path>, port: u16) -> Result<TcpListener> {
    let Some(netns) = netns else {
        return TcpListener::bind(("127.0.0.1", port)).context("bind 127.0.0.1");
    };
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<TcpListener> {
        let file = std::fs::File::open(&netns)
            .with_context(|| format!("open network namespace {}", netns.display()))?;
        netmend::sys::process::enter_network_namespace(&file)
            .with_context(|| format!("join network namespace {}", netns.display()))?;
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("bind 127.0.0.1:{port} in {}", netns.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread binding in the namespace panicked"))?
}

impl FakeApiServer {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts on an ephemeral port of the host's 127.0.0.1.
    pub fn start() -> FakeApiServer {
        Builder::default()
            .start()
            .expect("start the fake API server")
    }

    /// Starts on an ephemeral port of 127.0.0.1 in the network namespace at `netns`.
    pub fn start_in(netns: &Path) -> FakeApiServer {
        Builder::default()
            .netns(netns)
            .start()
            .expect("start the fake API server in the namespace")
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.listening.lock().expect("listening lock").port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// A kubeconfig for this server (no credentials) whose context's namespace is `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`FakeApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
            .with_context(|| format!("write {}", path.display()))
    }

    fn try_start_listening(&self) -> Result<()> {
        let mut listening = self.listening.lock().expect("listening lock");
        if listening.stop.is_some() {
            return Ok(());
        }
        let listener = bind(listening.netns.as_deref(), listening.port)?;
        listener
            .set_nonblocking(true)
            .context("make the listener non-blocking")?;
        listening.port = listener.local_addr().context("listener address")?.port();
        self.shared.port.store(listening.port, Ordering::Relaxed);
        let stop = CancellationToken::new();
        listening.stop = Some(stop.clone());
        let shared = self.shared.clone();
        let listener = {
            let _entered = self.runtime().enter();
            tokio::net::TcpListener::from_std(listener).context("hand the listener to tokio")?
        };
        self.runtime().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(server::serve_connection(shared.clone(), stream, stop.clone()));
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Listens again, on the same port (the API is back).
    pub fn start_listening(&self) {
        self.try_start_listening()
            .expect("listen again on the fake API server's port");
    }

    /// Stops listening and cuts every open connection and watch (the API is down: connections
    /// are refused).
    pub fn stop_listening(&self) {
        if let Some(stop) = self.listening.lock().expect("listening lock").stop.take() {
            stop.cancel();
        }
        // The accept loop drops the listener when it sees the cancellation; wait until the port
        // refuses, so that the caller's next step sees the API down.
        let netns = self.listening.lock().expect("listening lock").netns.clone();
        let port = self.port();
        for _ in 0..200 {
            if bind(netns.as_deref(), port).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the fake API server's port {port} is still taken after stopping");
    }

    /// Whether it listens now.
    pub fn is_listening(&self) -> bool {
        self.listening
            .lock()
            .expect("listening lock")
            .stop
            .is_some()
    }

    /// Adds a fault; faults are matched in the order they were added.
    pub fn fail(&self, fault: Fault) {
        self.shared.faults.lock().expect("faults lock").add(fault);
    }

    /// Replaces every fault with `faults` in one step (no request sees a moment without them).
    pub fn set_faults(&self, faults: Vec<Fault>) {
        let mut scripted = self.shared.faults.lock().expect("faults lock");
        scripted.clear();
        for fault in faults {
            scripted.add(fault);
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults lock").clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.lock().expect("log lock").entries()
    }

    /// The requests with `method` whose path is `path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.shared.log.lock().expect("log lock").clear();
    }

    /// Runs `f` on the store as one atomic step (watches see all its writes together), then
    /// wakes the watches.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        self.shared.with_store(f)
    }

    /// One object; `namespace` is "" for cluster-scoped types.
    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store
            .lock()
            .expect("store lock")
            .get(resource, namespace, name)
            .ok()
    }

    /// The objects of a type, in `namespace` or everywhere (`None`).
    pub fn list(&self, resource: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.shared
            .store
            .lock()
            .expect("store lock")
            .select(resource, namespace, |_| true)
    }

    /// Creates `object`, or overwrites it whole (status included, no precondition): the test
    /// side's write. The namespace comes from `metadata.namespace`.
    pub fn put(&self, resource: &'static ResourceType, object: Value) -> Value {
        self.with_store(|store| store.put(resource, object))
            .unwrap_or_else(|e| panic!("put {}: {}", resource.qualified_plural(), e.message))
    }

    /// Reads an object, changes it with `change`, writes it back whole.
    pub fn modify(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.with_store(|store| {
            let mut object = store.get(resource, namespace, name)?;
            change(&mut object);
            store.replace(resource, namespace, name, object, store::WriteScope::Whole)
        })
    }

    /// Patches an object as a client would (`kubectl patch`, `kubectl label`, `kubectl cordon`
    /// are strategic merge patches of the object).
    pub fn patch(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        format: PatchFormat,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        self.with_store(|store| {
            store.patch(
                resource,
                namespace,
                name,
                format,
                patch,
                store::WriteScope::Object,
            )
        })
    }

    /// Deletes an object.
    pub fn delete(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.with_store(|store| store.delete(resource, namespace, name, &Value::Null))
    }

    /// The resourceVersion of the last write.
    pub fn resource_version(&self) -> u64 {
        self.shared
            .store
            .lock()
            .expect("store lock")
            .resource_version()
    }

    /// Cuts every open watch stream (as an API server restart or a load balancer would); the
    /// clients watch again from their last resourceVersion.
    pub fn close_watches(&self) {
        let mut watches = self.shared.watches.lock().expect("watches lock");
        watches.cancel();
        *watches = CancellationToken::new();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self
            .listening
            .get_mut()
            .map(|l| l.stop.take())
            .unwrap_or_default()
        {
            stop.cancel();
        }
        if let Some(runtime) = self.runtime.take() {
            // Also safe from inside another runtime (async tests).
            runtime.shutdown_background();
        }
    }
}
