//! netmend's configuration: the YAML file (mounted from the chart's ConfigMap) parsed strictly
//! into raw serde types (unknown keys rejected, every error naming its key path), defaulted, then
//! validated into [`Config`] with cross-field rules. Pure: reading the file is the caller's job.

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Default ports that must never be captured by a DNAT: ssh, etcd, API server, k3s supervisor,
/// kubelet.
pub const DEFAULT_PROTECTED_PORTS: [u16; 6] = [22, 2379, 2380, 6443, 9345, 10250];

/// Default pin path of Cilium's L2 responder map.
pub const DEFAULT_RESPONDER_MAP_PATH: &str = "/sys/fs/bpf/tc/globals/cilium_l2_responder_v4";

/// A configuration error: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Whether fixes change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    DryRun,
    Enforce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        })
    }
}

/// A duration written as humantime text (`30s`, `5m`, `1h30m`, `0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. 30s, 5m or 1h"
                ))
            })
    }
}

// ---- raw file shape -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    mode: Option<Mode>,
    #[serde(default)]
    checks: RawChecks,
    #[serde(default)]
    fixes: RawFixes,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    engine: RawEngine,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChecks {
    #[serde(rename = "cilium-stale-backup-chain", default)]
    cilium_stale_backup_chain: RawStaleChain,
    #[serde(rename = "hostport-hijack", default)]
    hostport_hijack: RawHijack,
    #[serde(rename = "iptables-backend-split", default)]
    iptables_backend_split: RawToggle,
    #[serde(rename = "arp-unanswered", default)]
    arp_unanswered: RawArp,
    #[serde(rename = "promisc-lost", default)]
    promisc_lost: RawPromiscLost,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawToggle {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStaleChain {
    enabled: Option<bool>,
    stale_after: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHijack {
    enabled: Option<bool>,
    protected_ports: Option<Vec<u32>>,
    protect_listening_ports: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArp {
    enabled: Option<bool>,
    targets: Option<Vec<String>>,
    window: Option<HumanDuration>,
    min_requests: Option<u32>,
    responder_map_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPromiscLost {
    enabled: Option<bool>,
    interfaces: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixes {
    #[serde(rename = "flush-stale-chain", default)]
    flush_stale_chain: RawFix,
    #[serde(rename = "remove-hijack-rule", default)]
    remove_hijack_rule: RawFix,
    #[serde(rename = "set-promisc", default)]
    set_promisc: RawPromiscFix,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFix {
    enabled: Option<bool>,
    confirm_for: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPromiscFix {
    enabled: Option<bool>,
    confirm_for: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
    max_attempts: Option<u32>,
    interfaces: Option<Vec<String>>,
    verify_within: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBudget {
    fixes_per_hour: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEngine {
    resync_interval: Option<HumanDuration>,
    min_pass_interval: Option<HumanDuration>,
}

// ---- validated config -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleChainConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde_compat")]
    pub stale_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HijackConfig {
    pub enabled: bool,
    pub protected_ports: Vec<u16>,
    pub protect_listening_ports: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArpConfig {
    pub enabled: bool,
    /// `IP@interface` targets, validated.
    pub targets: Vec<(std::net::Ipv4Addr, String)>,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    pub min_requests: u32,
    pub responder_map_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromiscLostConfig {
    pub enabled: bool,
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChecksConfig {
    pub cilium_stale_backup_chain: StaleChainConfig,
    pub hostport_hijack: HijackConfig,
    pub iptables_backend_split: bool,
    pub arp_unanswered: ArpConfig,
    pub promisc_lost: PromiscLostConfig,
}

/// Guards of one fix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FixConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde_compat")]
    pub confirm_for: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub cooldown: Duration,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromiscFixConfig {
    #[serde(flatten)]
    pub guard: FixConfig,
    /// Interfaces the fix may touch besides physical devices.
    pub interfaces: Vec<String>,
    #[serde(with = "humantime_serde_compat")]
    pub verify_within: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FixesConfig {
    pub flush_stale_chain: FixConfig,
    pub remove_hijack_rule: FixConfig,
    pub set_promisc: PromiscFixConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    #[serde(with = "humantime_serde_compat")]
    pub resync_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub min_pass_interval: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub mode: Mode,
    pub checks: ChecksConfig,
    pub fixes: FixesConfig,
    pub fixes_per_hour: u32,
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config::from_raw(RawConfig::default()).expect("built-in defaults are valid")
    }
}

impl Config {
    /// Parses and validates YAML text. An empty document is the defaults.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let deserializer = yaml_serde::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." || path.is_empty() {
                "(document)".to_string()
            } else {
                path
            };
            let inner = e.into_inner().to_string();
            // yaml_serde appends " at line L column C"; keep it, it helps people find the key.
            ConfigError::new(path, inner)
        })?;
        Config::from_raw(raw)
    }

    /// The fix guard of `fix`.
    pub fn fix(&self, fix: crate::model::finding::FixId) -> &FixConfig {
        use crate::model::finding::FixId;
        match fix {
            FixId::FlushStaleChain => &self.fixes.flush_stale_chain,
            FixId::RemoveHijackRule => &self.fixes.remove_hijack_rule,
            FixId::SetPromisc => &self.fixes.set_promisc.guard,
        }
    }

    /// Whether the check `check` is enabled.
    pub fn check_enabled(&self, check: crate::model::finding::CheckId) -> bool {
        use crate::model::finding::CheckId;
        match check {
            CheckId::CiliumStaleBackupChain => self.checks.cilium_stale_backup_chain.enabled,
            CheckId::HostportHijack => self.checks.hostport_hijack.enabled,
            CheckId::IptablesBackendSplit => self.checks.iptables_backend_split,
            CheckId::ArpUnanswered => self.checks.arp_unanswered.enabled,
            CheckId::PromiscLost => self.checks.promisc_lost.enabled,
        }
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let c = raw.checks;
        let protected_ports = match c.hostport_hijack.protected_ports {
            None => DEFAULT_PROTECTED_PORTS.to_vec(),
            Some(ports) => {
                let mut out = Vec::with_capacity(ports.len());
                for (i, p) in ports.into_iter().enumerate() {
                    if p == 0 || p > 65535 {
                        return Err(ConfigError::new(
                            format!("checks.hostport-hijack.protectedPorts[{i}]"),
                            format!("{p} is not a TCP port (1-65535)"),
                        ));
                    }
                    out.push(p as u16);
                }
                out.sort_unstable();
                out.dedup();
                out
            }
        };
        let mut targets = Vec::new();
        for (i, t) in c
            .arp_unanswered
            .targets
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            targets.push(parse_arp_target(t).map_err(|reason| {
                ConfigError::new(format!("checks.arp-unanswered.targets[{i}]"), reason)
            })?);
        }
        let min_requests = c.arp_unanswered.min_requests.unwrap_or(3);
        if min_requests == 0 {
            return Err(ConfigError::new(
                "checks.arp-unanswered.minRequests",
                "must be at least 1",
            ));
        }
        let window = duration_or(c.arp_unanswered.window, 30);
        if window.is_zero() {
            return Err(ConfigError::new(
                "checks.arp-unanswered.window",
                "must be longer than 0s",
            ));
        }
        let responder_map_path = c
            .arp_unanswered
            .responder_map_path
            .unwrap_or_else(|| DEFAULT_RESPONDER_MAP_PATH.to_string());
        if !responder_map_path.starts_with('/') {
            return Err(ConfigError::new(
                "checks.arp-unanswered.responderMapPath",
                "must be an absolute path",
            ));
        }
        let promisc_interfaces = validate_interfaces(
            "checks.promisc-lost.interfaces",
            c.promisc_lost.interfaces.unwrap_or_default(),
        )?;

        let f = raw.fixes;
        let set_promisc_interfaces = validate_interfaces(
            "fixes.set-promisc.interfaces",
            f.set_promisc.interfaces.unwrap_or_default(),
        )?;
        let verify_within = duration_or(f.set_promisc.verify_within, 60);
        if verify_within.is_zero() {
            return Err(ConfigError::new(
                "fixes.set-promisc.verifyWithin",
                "must be longer than 0s",
            ));
        }
        let fixes = FixesConfig {
            flush_stale_chain: fix_config("fixes.flush-stale-chain", f.flush_stale_chain)?,
            remove_hijack_rule: fix_config("fixes.remove-hijack-rule", f.remove_hijack_rule)?,
            set_promisc: PromiscFixConfig {
                guard: fix_config(
                    "fixes.set-promisc",
                    RawFix {
                        enabled: f.set_promisc.enabled,
                        confirm_for: f.set_promisc.confirm_for,
                        cooldown: f.set_promisc.cooldown,
                        max_attempts: f.set_promisc.max_attempts,
                    },
                )?,
                interfaces: set_promisc_interfaces,
                verify_within,
            },
        };
        let fixes_per_hour = raw.budget.fixes_per_hour.unwrap_or(12);
        if fixes_per_hour == 0 {
            return Err(ConfigError::new(
                "budget.fixesPerHour",
                "must be at least 1 (disable fixes with their `enabled` or with mode: dry-run)",
            ));
        }
        let resync_interval = raw
            .engine
            .resync_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(300));
        if resync_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "engine.resyncInterval",
                "must be at least 1s",
            ));
        }
        let min_pass_interval = raw
            .engine
            .min_pass_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(200));
        if min_pass_interval > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "engine.minPassInterval",
                "must be at most 60s",
            ));
        }
        Ok(Config {
            mode: raw.mode.unwrap_or(Mode::DryRun),
            checks: ChecksConfig {
                cilium_stale_backup_chain: StaleChainConfig {
                    enabled: c.cilium_stale_backup_chain.enabled.unwrap_or(true),
                    stale_after: duration_or(c.cilium_stale_backup_chain.stale_after, 30),
                },
                hostport_hijack: HijackConfig {
                    enabled: c.hostport_hijack.enabled.unwrap_or(true),
                    protected_ports,
                    protect_listening_ports: c
                        .hostport_hijack
                        .protect_listening_ports
                        .unwrap_or(true),
                },
                iptables_backend_split: c.iptables_backend_split.enabled.unwrap_or(true),
                arp_unanswered: ArpConfig {
                    enabled: c.arp_unanswered.enabled.unwrap_or(true),
                    targets,
                    window,
                    min_requests,
                    responder_map_path,
                },
                promisc_lost: PromiscLostConfig {
                    enabled: c.promisc_lost.enabled.unwrap_or(true),
                    interfaces: promisc_interfaces,
                },
            },
            fixes,
            fixes_per_hour,
            engine: EngineConfig {
                resync_interval,
                min_pass_interval,
            },
        })
    }
}

fn duration_or(value: Option<HumanDuration>, default_secs: u64) -> Duration {
    value
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(default_secs))
}

fn fix_config(path: &str, raw: RawFix) -> Result<FixConfig, ConfigError> {
    let max_attempts = raw.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        return Err(ConfigError::new(
            format!("{path}.maxAttempts"),
            "must be at least 1",
        ));
    }
    Ok(FixConfig {
        enabled: raw.enabled.unwrap_or(false),
        confirm_for: duration_or(raw.confirm_for, 30),
        cooldown: duration_or(raw.cooldown, 300),
        max_attempts,
    })
}

/// Interface names as the kernel accepts them: 1-15 bytes, no '/', no whitespace.
fn validate_interfaces(path: &str, names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for (i, name) in names.iter().enumerate() {
        if let Err(reason) = validate_interface_name(name) {
            return Err(ConfigError::new(format!("{path}[{i}]"), reason));
        }
    }
    Ok(names)
}

pub fn validate_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "{name:?} is not an interface name (1 to 15 characters)"
        ));
    }
    if name.contains('/') || name.chars().any(char::is_whitespace) || name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    Ok(())
}

/// Parses `192.168.1.51@wlan0`.
pub fn parse_arp_target(text: &str) -> Result<(std::net::Ipv4Addr, String), String> {
    let (ip, interface) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?} must be IPV4@INTERFACE, e.g. 192.168.1.51@wlan0"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} in {text:?} is not an IPv4 address"))?;
    validate_interface_name(interface)?;
    Ok((ip, interface.to_string()))
}

/// Serialises durations as humantime text (`30s`) in /status.
mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_safe_defaults() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c.mode, Mode::DryRun);
        assert!(!c.fixes.flush_stale_chain.enabled);
        assert!(!c.fixes.remove_hijack_rule.enabled);
        assert!(!c.fixes.set_promisc.guard.enabled);
        assert_eq!(
            c.checks.hostport_hijack.protected_ports,
            vec![22, 2379, 2380, 6443, 9345, 10250]
        );
        assert_eq!(
            c.checks.cilium_stale_backup_chain.stale_after,
            Duration::from_secs(30)
        );
        assert_eq!(c, Config::default());
    }

    #[test]
    fn interface_md_example_parses() {
        let text = r#"
mode: dry-run
checks:
  hostport-hijack:
    enabled: true
    protectedPorts: [22, 2379, 2380, 6443, 9345, 10250]
  arp-unanswered:
    targets: ["192.168.1.51@wlan0"]
fixes:
  flush-stale-chain: { enabled: false, cooldown: 5m, maxAttempts: 3 }
  set-promisc:       { enabled: false, interfaces: ["wlan0"], verifyWithin: 60s }
"#;
        let c = Config::from_yaml(text).unwrap();
        assert_eq!(
            c.checks.arp_unanswered.targets,
            vec![("192.168.1.51".parse().unwrap(), "wlan0".to_string())]
        );
        assert_eq!(c.fixes.set_promisc.interfaces, vec!["wlan0"]);
        assert_eq!(c.fixes.flush_stale_chain.cooldown, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_is_named_by_path() {
        let err = Config::from_yaml("fixes:\n  set-promisc:\n    enabld: true\n").unwrap_err();
        assert_eq!(err.path, "fixes.set-promisc.enabld");
        assert!(err.reason.contains("unknown field `enabld`"), "{err}");
        let err = Config::from_yaml("chekcs: {}\n").unwrap_err();
        assert!(err.reason.contains("unknown field `chekcs`"), "{err}");
        let err = Config::from_yaml("checks:\n  no-such-check: {}\n").unwrap_err();
        assert!(err.reason.contains("no-such-check"), "{err}");
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let err = Config::from_yaml("mode: enforcing\n").unwrap_err();
        assert_eq!(err.path, "mode");
        assert!(err.reason.contains("unknown variant `enforcing`"), "{err}");

        let err =
            Config::from_yaml("checks:\n  hostport-hijack:\n    protectedPorts: [22, 70000]\n")
                .unwrap_err();
        assert_eq!(err.path, "checks.hostport-hijack.protectedPorts[1]");

        let err =
            Config::from_yaml("fixes:\n  flush-stale-chain:\n    cooldown: soon\n").unwrap_err();
        assert_eq!(err.path, "fixes.flush-stale-chain.cooldown");
        assert!(err.reason.contains("invalid duration"), "{err}");

        let err = Config::from_yaml("checks:\n  arp-unanswered:\n    targets: [\"1.2.3@eth0\"]\n")
            .unwrap_err();
        assert_eq!(err.path, "checks.arp-unanswered.targets[0]");

        let err = Config::from_yaml("fixes:\n  set-promisc:\n    maxAttempts: 0\n").unwrap_err();
        assert_eq!(err.path, "fixes.set-promisc.maxAttempts");

        let err =
            Config::from_yaml("fixes:\n  set-promisc:\n    interfaces: [\"a/b\"]\n").unwrap_err();
        assert_eq!(err.path, "fixes.set-promisc.interfaces[0]");
    }

    #[test]
    fn wrong_types_are_named_by_path() {
        let err =
            Config::from_yaml("checks:\n  hostport-hijack:\n    enabled: maybe\n").unwrap_err();
        assert_eq!(err.path, "checks.hostport-hijack.enabled");
        let err = Config::from_yaml("- a\n- b\n").unwrap_err();
        assert_eq!(err.path, "(document)");
    }
}
