//! The lifecycle of `netmend run`: the engine on its own thread (it owns the kernel sockets), the
//! change feed on another, the HTTP server on tokio, one cancellation for all of them. The tokio
//! runtime is made first ([`io_runtime`]) so that the Kubernetes client's tasks can run on it
//! before the engine starts.
//!
//! - SIGTERM/SIGINT: stop taking new work; the engine finishes the pass in progress (every action
//!   is one atomic batch, so nothing is left half-applied) and the process exits 0 within the
//!   grace period.
//! - A loop that dies (panic, closed feed, server error) takes the process down with exit 1,
//!   instead of leaving an agent that answers /healthz but no longer mends anything.

use crate::http::{router, Shared};
use crate::runtime::agent::{Engine, Wake};
use crate::runtime::{Actuator, NodeReader};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the engine may take to finish its pass after a stop request.
pub const GRACE_PERIOD: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the {0} loop died: {1}")]
    LoopDied(&'static str, String),
}

/// Starts the change feed on its own thread: it sends wakes until the flag is set.
pub type FeedStarter = Box<dyn FnOnce(Sender<Wake>, Arc<AtomicBool>, Arc<Shared>) + Send>;

/// Everything the agent runs, built by the caller (main wires the kernel implementations; tests
/// may wire fakes).
pub struct AgentParts<P: NodeReader, A: Actuator> {
    pub engine: Engine<P, A>,
    pub shared: Arc<Shared>,
    pub listen: SocketAddr,
    pub feed: FeedStarter,
}

/// The agent's tokio runtime: the HTTP server and the Kubernetes client run on it.
pub fn io_runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("netmend-io")
        .build()
        .map_err(ServeError::Runtime)
}

/// Runs the agent on `runtime` until a signal or a dead loop.
pub fn serve<P, A>(
    parts: AgentParts<P, A>,
    runtime: tokio::runtime::Runtime,
) -> Result<(), ServeError>
where
    P: NodeReader + Send + 'static,
    A: Actuator + Send + 'static,
{
    runtime.block_on(run(parts))
}

async fn run<P, A>(parts: AgentParts<P, A>) -> Result<(), ServeError>
where
    P: NodeReader + Send + 'static,
    A: Actuator + Send + 'static,
{
    let AgentParts {
        mut engine,
        shared,
        listen,
        feed,
    } = parts;
    let cancel = CancellationToken::new();
    let stop = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, "serving /healthz /readyz /metrics /status");

    let (wakes_tx, wakes_rx) = channel::<Wake>();
    {
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("netmend-feed".into())
            .spawn(move || feed(wakes_tx, stop, shared))
            .map_err(|e| ServeError::LoopDied("feed", e.to_string()))?;
    }

    let engine_stop = stop.clone();
    let engine_task = tokio::task::spawn_blocking(move || {
        engine.run(wakes_rx, &engine_stop);
    });

    let server_cancel = cancel.clone();
    // Small JSON answers: without TCP_NODELAY, Nagle and delayed ACKs add ~200 ms per request.
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
    let server = tokio::spawn(async move {
        axum::serve(listener, router(shared))
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
    });

    let mut engine_task = engine_task;
    let mut server = server;
    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("stop requested: finishing the pass in progress");
            Ok(())
        }
        joined = &mut engine_task => Err(ServeError::LoopDied(
            "engine",
            match joined {
                Ok(()) => "it stopped on its own (the change feed closed)".to_string(),
                Err(e) => e.to_string(),
            },
        )),
        served = &mut server => Err(ServeError::LoopDied(
            "http",
            match served {
                Ok(Ok(())) => "the server stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            },
        )),
    };
    stop.store(true, Ordering::SeqCst);
    cancel.cancel();
    if !engine_task.is_finished() {
        match tokio::time::timeout(GRACE_PERIOD, &mut engine_task).await {
            Ok(_) => {}
            Err(_) => tracing::error!("the engine did not stop within the grace period"),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
