//! Wiring of the real kernel implementations into the agent: the engine reads nftables through
//! the generation-checked cache, and the feed thread turns nftables notifications into wakes.

use crate::http::Shared;
use crate::runtime::agent::{Engine, Wake};
use crate::runtime::backoff::Backoff;
use crate::runtime::serve::{serve, AgentParts, ServeError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How often the GET_INFO of the iptables-legacy tables is compared with the last one.
pub const LEGACY_POLL: Duration = Duration::from_millis(50);

/// Wires the kernel implementations and runs the agent: the engine reads nftables through the
/// generation-checked cache, the feed turns nftables notifications into wakes, and `cluster` is
/// the Kubernetes API (or the node-local answer) whose tasks run on `runtime`.
#[allow(clippy::too_many_arguments)]
pub fn run_kernel_agent(
    config: crate::config::Config,
    config_path: Option<std::path::PathBuf>,
    config_text: Option<&str>,
    journal: crate::journal::Journal,
    listen: SocketAddr,
    node: String,
    cluster: Box<dyn crate::runtime::cluster::Cluster>,
    runtime: tokio::runtime::Runtime,
) -> Result<(), ServeError> {
    use crate::runtime::agent::ConfigSource;
    let source = ConfigSource::new(config_path, config_text);
    let shared = Arc::new(Shared::new(node, source.state(&config, None)));
    let engine = Engine::new(
        config,
        source,
        journal,
        shared.clone(),
        crate::observe::node::KernelReader::new(crate::observe::node::NftView::Cached),
        crate::act::kernel::KernelActuator::new(),
    )
    .with_cluster(cluster);
    serve(
        AgentParts {
            engine,
            shared,
            listen,
            feed: Box::new(change_feed),
        },
        runtime,
    )
}

/// Turns nftables notifications, link changes and iptables-legacy changes into wakes until
/// `stop`. A transaction committed by netmend itself is not attributed (it is not a re-add). A
/// socket that fails is reopened; without it, changes are still seen on the next tick. x_tables
/// sends no notifications: its tables' GET_INFO is polled every [`LEGACY_POLL`].
fn change_feed(wakes: Sender<Wake>, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    let mut legacy = crate::observe::legacy_cache::InfoWatch::default();
    use crate::observe::links::LinkWatcher;
    use crate::observe::nft_events::{NftEvent, NftEventSocket};
    let own_pid = std::process::id();
    let mut nft = NftEventSocket::open()
        .map_err(|e| tracing::error!(error = %e, "no nftables notifications: changes are seen on the next tick only"))
        .ok();
    let mut links = LinkWatcher::open()
        .map_err(|e| tracing::error!(error = %e, "no link notifications: changes are seen on the next tick only"))
        .ok();
    let seed = u64::from(own_pid)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut nft_retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), seed);
    let mut links_retry = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        seed.rotate_left(17),
    );
    while !stop.load(Ordering::SeqCst) {
        shared.heartbeats.beat("events", Duration::from_secs(30));
        let now = std::time::Instant::now();
        if nft.is_none() && nft_retry.ready(now) {
            match NftEventSocket::open() {
                Ok(socket) => {
                    nft_retry.succeeded();
                    nft = Some(socket);
                }
                Err(e) => {
                    let delay = nft_retry.failed(now);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "nftables notifications unavailable");
                }
            }
        }
        if links.is_none() && links_retry.ready(now) {
            match LinkWatcher::open() {
                Ok(watcher) => {
                    links_retry.succeeded();
                    links = Some(watcher);
                }
                Err(e) => {
                    let delay = links_retry.failed(now);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "link notifications unavailable");
                }
            }
        }
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = [
            nft.as_ref().map(std::os::fd::AsFd::as_fd),
            links.as_ref().map(std::os::fd::AsFd::as_fd),
        ]
        .into_iter()
        .flatten()
        .collect();
        let ready = if fds.is_empty() {
            std::thread::sleep(LEGACY_POLL);
            false
        } else {
            crate::sys::poll::wait_readable(&fds, LEGACY_POLL).is_ok_and(|r| r.contains(&true))
        };
        if legacy.changed() && wakes.send(Wake::Changed { by: None }).is_err() {
            return;
        }
        if !ready {
            continue;
        }
        let mut to_send: Vec<Wake> = Vec::new();
        if let Some(socket) = nft.as_mut() {
            match socket.wait(Duration::ZERO) {
                Ok(events) => {
                    shared.metrics.nft_events(events.len() as u64);
                    for event in events {
                        match event {
                            NftEvent::Changes(_) => {}
                            NftEvent::Committed(generation) => {
                                tracing::debug!(generation = generation.id, by = ?generation.process, chains = generation.chains.len(), "nftables commit");
                                if generation.pid == Some(own_pid) {
                                    to_send.push(Wake::Changed { by: None });
                                } else {
                                    to_send.push(Wake::Nft(NftEvent::Committed(generation)));
                                }
                            }
                            // Notifications were lost: wake (chain writers are no longer
                            // known); the probe's own subscription overflowed too and
                            // re-reads (counted there).
                            NftEvent::Overflow => to_send.push(Wake::Nft(NftEvent::Overflow)),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading nftables notifications failed; reopening");
                    // Notifications may be lost meanwhile: as an overflow.
                    to_send.push(Wake::Nft(NftEvent::Overflow));
                    nft = None;
                }
            }
        }
        if let Some(watcher) = links.as_mut() {
            match watcher.try_changes() {
                Ok(changes) if !changes.is_empty() => to_send.push(Wake::Changed { by: None }),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "link notifications lost; reopening");
                    to_send.push(Wake::Changed { by: None });
                    links = None;
                }
            }
        }
        for wake in to_send {
            if wakes.send(wake).is_err() {
                return;
            }
        }
    }
}
