//! The configuration file the agent follows: re-read at most every few seconds, applied when its
//! content changed (a ConfigMap update is an atomic symlink swap, so a read sees a whole file),
//! and described for /status. A bad file is reported, never applied.

use crate::config::Config;
use crate::http::ConfigState;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The configuration file being followed (the chart mounts a ConfigMap, which changes by an
/// atomic symlink swap: reading the path again sees the new content).
pub struct ConfigSource {
    path: Option<PathBuf>,
    last_hash: Option<String>,
    last_poll: Option<Instant>,
}

/// Hash of a config file's content, as shown on /status.
pub fn config_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl ConfigSource {
    pub fn new(path: Option<PathBuf>, initial_text: Option<&str>) -> ConfigSource {
        ConfigSource {
            path,
            last_hash: initial_text.map(config_hash),
            last_poll: None,
        }
    }

    /// The /status view of a config in force.
    pub fn state(&self, config: &Config, error: Option<String>) -> ConfigState {
        ConfigState {
            source: self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".to_string()),
            hash: self.last_hash.clone().unwrap_or_default(),
            valid: error.is_none(),
            error,
            mode: config.mode.to_string(),
            effective: serde_json::to_value(config).unwrap_or_default(),
        }
    }

    /// Re-reads the file at most every `every`; returns the new config, or the error when the
    /// changed file is invalid. `None` when nothing changed.
    pub fn poll(&mut self, every: Duration) -> Option<Result<(Config, String), String>> {
        let path = self.path.as_ref()?;
        if self.last_poll.is_some_and(|at| at.elapsed() < every) {
            return None;
        }
        self.last_poll = Some(Instant::now());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let hash = format!("unreadable:{e}");
                if self.last_hash.as_deref() == Some(hash.as_str()) {
                    return None;
                }
                self.last_hash = Some(hash);
                return Some(Err(format!("cannot read {}: {e}", path.display())));
            }
        };
        let hash = config_hash(&text);
        if self.last_hash.as_deref() == Some(hash.as_str()) {
            return None;
        }
        self.last_hash = Some(hash.clone());
        Some(
            Config::from_yaml(&text)
                .map(|c| (c, hash))
                .map_err(|e| format!("invalid config {}: {e}", path.display())),
        )
    }
}
