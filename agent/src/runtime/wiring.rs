//! Wiring of the real kernel implementations into the agent: the engine reads nftables through
//! the generation-checked cache, and the feed thread turns nftables notifications into wakes.

use crate::http::Shared;
use crate::runtime::agent::{Engine, Wake};
use crate::runtime::serve::{serve, AgentParts, ServeError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// Wires the kernel implementations and runs the agent: the engine reads nftables through the
/// generation-checked cache, the feed turns nftables notifications into wakes.
pub fn run_kernel_agent(
    config: crate::config::Config,
    config_path: Option<std::path::PathBuf>,
    config_text: Option<&str>,
    journal: crate::journal::Journal,
    listen: SocketAddr,
    node: String,
) -> Result<(), ServeError> {
    use crate::runtime::agent::ConfigSource;
    let source = ConfigSource::new(config_path, config_text);
    let shared = Arc::new(Shared::new(node, source.state(&config, None)));
    let engine = Engine::new(
        config,
        source,
        journal,
        shared.clone(),
        crate::observe::node::KernelProbe::new(crate::observe::node::NftView::Cached),
        crate::act::kernel::KernelActuator::new(),
    );
    serve(AgentParts {
        engine,
        shared,
        listen,
        feed: Box::new(nftables_feed),
    })
}

/// Turns nftables notifications into wakes until `stop`; a transaction committed by netmend
/// itself is not attributed (it is not a re-add).
fn nftables_feed(wakes: Sender<Wake>, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    use crate::observe::nft_events::{NftEvent, NftEventSocket};
    let own_pid = std::process::id();
    let mut socket = match NftEventSocket::open() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "no nftables notifications: changes are seen on the next tick only");
            None
        }
    };
    while !stop.load(Ordering::SeqCst) {
        shared.heartbeats.beat("events", Duration::from_secs(30));
        let Some(events_socket) = socket.as_mut() else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        match events_socket.wait(Duration::from_secs(1)) {
            Ok(events) => {
                let mut count = 0u64;
                for event in events {
                    count += 1;
                    let wake = match event {
                        NftEvent::Changes(_) => continue,
                        NftEvent::Committed(generation) => {
                            tracing::debug!(generation = generation.id, by = ?generation.process, "nftables commit");
                            Wake::Changed {
                                by: generation
                                    .process
                                    .filter(|_| generation.pid != Some(own_pid)),
                            }
                        }
                        NftEvent::Overflow => {
                            shared.metrics.resync("event-overflow");
                            Wake::Changed { by: None }
                        }
                    };
                    if wakes.send(wake).is_err() {
                        return;
                    }
                }
                shared.metrics.nft_events(count);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading nftables notifications failed; reopening");
                std::thread::sleep(Duration::from_secs(1));
                socket = NftEventSocket::open().ok();
            }
        }
    }
}
