//! netmend's configuration: the YAML file (mounted from the chart's ConfigMap) parsed strictly
//! into raw serde types (unknown keys rejected, every error naming its key path), defaulted, then
//! validated into [`Config`] with cross-field rules. Pure: reading the file is the caller's job.
//! Its tests (an error path for every section) make this file long.

use crate::model::finding::{CheckId, FixId};
use serde::Deserialize;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A configuration error: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: {}",
    crate::model::render::printable(path),
    crate::model::render::printable(reason)
)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error with its path put under `prefix` (a section's errors are relative).
    pub fn under(self, prefix: &str) -> ConfigError {
        let path = if self.path.is_empty() || self.path == "." {
            prefix.to_string()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        ConfigError {
            path,
            reason: self.reason,
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

/// The file as written. `checks` and `fixes` are kept as plain values here: each section is parsed
/// by the check or fix that owns it (see [`Section`]), so adding a check adds no code here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    mode: Option<Mode>,
    #[serde(default)]
    checks: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    fixes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    kubernetes: RawKubernetes,
}

/// The guard keys every fix section has; the rest of the section belongs to the fix.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGuard {
    enabled: Option<bool>,
    confirm_for: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
    max_attempts: Option<u32>,
}

const GUARD_KEYS: [&str; 4] = ["enabled", "confirmFor", "cooldown", "maxAttempts"];

/// A section with no settings of its own (only `enabled`, taken before it is parsed).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKubernetes {
    enabled: Option<ApiUse>,
    required: Option<bool>,
    conditions: Option<bool>,
    events: Option<bool>,
    fix_slots: Option<u32>,
    slot_lease: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
}

// ---- validated config -----------------------------------------------------------------------

/// The settings of one check or fix, typed by their owner and read back with [`Settings::get`];
/// `effective` (the settings with defaults applied) is what /status shows and what two configs
/// are compared by.
#[derive(Clone)]
pub struct Settings {
    effective: serde_json::Value,
    typed: Arc<dyn Any + Send + Sync>,
}

impl Settings {
    /// Parses `raw` (an object, without `enabled` or guard keys) as `R`, then validates it into
    /// `T`. Error paths are relative to the section; the caller prefixes them.
    pub fn parse<R, T>(
        raw: serde_json::Value,
        validate: impl FnOnce(R) -> Result<T, ConfigError>,
    ) -> Result<Settings, ConfigError>
    where
        R: serde::de::DeserializeOwned,
        T: serde::Serialize + Send + Sync + 'static,
    {
        let raw: R = serde_path_to_error::deserialize(raw)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.into_inner().to_string()))?;
        let typed = validate(raw)?;
        Ok(Settings {
            effective: serde_json::to_value(&typed).unwrap_or_default(),
            typed: Arc::new(typed),
        })
    }

    /// Settings for a section that has none.
    pub fn none(raw: serde_json::Value) -> Result<Settings, ConfigError> {
        Settings::parse(raw, |r: NoSettings| Ok(r))
    }

    /// The typed settings. The owner of the section asks with the type it parsed them as; any
    /// other type is a programming error.
    pub fn get<T: 'static>(&self) -> &T {
        self.typed
            .downcast_ref::<T>()
            .expect("settings are read with the type they were parsed as")
    }
}

impl PartialEq for Settings {
    fn eq(&self, other: &Settings) -> bool {
        self.effective == other.effective
    }
}

impl Eq for Settings {}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.effective.fmt(f)
    }
}

/// One check's section: `enabled` and the check's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSection {
    pub enabled: bool,
    pub settings: Settings,
}

impl serde::Serialize for CheckSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut object = match &self.settings.effective {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        object.insert("enabled".into(), self.enabled.into());
        object.serialize(s)
    }
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

/// One fix's section: its guards and the fix's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixSection {
    pub guard: FixConfig,
    pub settings: Settings,
}

impl serde::Serialize for FixSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut object = match serde_json::to_value(&self.guard) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        if let serde_json::Value::Object(own) = &self.settings.effective {
            object.extend(own.clone());
        }
        object.serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    #[serde(with = "humantime_serde_compat")]
    pub resync_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub min_pass_interval: Duration,
}

/// Whether netmend uses the Kubernetes API: `auto` (when it can be found), `true` (it must be
/// found), `false` (never: node-local mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiUse {
    #[default]
    Auto,
    Always,
    Never,
}

impl<'de> Deserialize<'de> for ApiUse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ApiUse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ApiUse, E> {
                Ok(if v { ApiUse::Always } else { ApiUse::Never })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiUse, E> {
                match v {
                    "auto" => Ok(ApiUse::Auto),
                    "true" => Ok(ApiUse::Always),
                    "false" => Ok(ApiUse::Never),
                    other => Err(E::custom(format!(
                        "invalid value {other:?}, expected auto, true or false"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl serde::Serialize for ApiUse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApiUse::Auto => s.serialize_str("auto"),
            ApiUse::Always => s.serialize_bool(true),
            ApiUse::Never => s.serialize_bool(false),
        }
    }
}

/// The `kubernetes:` section: how netmend uses the API when it runs in a cluster. Read at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesConfig {
    pub enabled: ApiUse,
    /// No API is an error at start (exit 2) and makes the agent not ready later.
    pub required: bool,
    /// NodeConditions on this node.
    pub conditions: bool,
    /// Events on this node.
    pub events: bool,
    /// At most this many nodes apply fixes at the same time; 0: no cluster limit.
    pub fix_slots: u32,
    /// A fix slot not renewed for this long is free again.
    #[serde(with = "humantime_serde_compat")]
    pub slot_lease: Duration,
    /// The longest any one request to the API may take.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
}

/// The most fix slots a cluster may have (each acquisition may read every one of them).
pub const MAX_FIX_SLOTS: u32 = 100;

impl KubernetesConfig {
    fn from_raw(raw: RawKubernetes) -> Result<KubernetesConfig, ConfigError> {
        let enabled = raw.enabled.unwrap_or_default();
        let required = raw.required.unwrap_or(false);
        if required && enabled == ApiUse::Never {
            return Err(ConfigError::new(
                "kubernetes.required",
                "cannot be true while kubernetes.enabled is false",
            ));
        }
        let fix_slots = raw.fix_slots.unwrap_or(1);
        if fix_slots > MAX_FIX_SLOTS {
            return Err(ConfigError::new(
                "kubernetes.fixSlots",
                format!("must be at most {MAX_FIX_SLOTS} (0: no cluster limit)"),
            ));
        }
        let request_timeout = duration_or(raw.request_timeout, 10);
        if request_timeout < Duration::from_millis(100)
            || request_timeout > Duration::from_secs(300)
        {
            return Err(ConfigError::new(
                "kubernetes.requestTimeout",
                "must be between 100ms and 5m",
            ));
        }
        let slot_lease = duration_or(raw.slot_lease, 30);
        if slot_lease > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "kubernetes.slotLease",
                "must be at most 1h",
            ));
        }
        if slot_lease < request_timeout * 3 {
            return Err(ConfigError::new(
                "kubernetes.slotLease",
                format!(
                    "must be at least 3 x kubernetes.requestTimeout ({}), so that a renewal can \
                     time out and be retried before the slot expires",
                    humantime::format_duration(request_timeout * 3)
                ),
            ));
        }
        Ok(KubernetesConfig {
            enabled,
            required,
            conditions: raw.conditions.unwrap_or(true),
            events: raw.events.unwrap_or(true),
            fix_slots,
            slot_lease,
            request_timeout,
        })
    }
}

/// The validated configuration. `checks` and `fixes` hold a section for every check and fix of
/// the registries, defaulted where the file says nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub mode: Mode,
    pub checks: BTreeMap<CheckId, CheckSection>,
    pub fixes: BTreeMap<FixId, FixSection>,
    pub fixes_per_hour: u32,
    pub engine: EngineConfig,
    pub kubernetes: KubernetesConfig,
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

    /// The guards of `fix`.
    pub fn fix(&self, fix: FixId) -> &FixConfig {
        &self.fix_section(fix).guard
    }

    /// The section of `fix` (every registered fix has one).
    pub fn fix_section(&self, fix: FixId) -> &FixSection {
        self.fixes
            .get(&fix)
            .expect("every registered fix has a section")
    }

    /// The section of `check` (every registered check has one).
    pub fn check(&self, check: CheckId) -> &CheckSection {
        self.checks
            .get(&check)
            .expect("every registered check has a section")
    }

    /// Whether the check `check` is enabled.
    pub fn check_enabled(&self, check: CheckId) -> bool {
        self.checks.get(&check).is_some_and(|s| s.enabled)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut raw_checks = raw.checks;
        let mut checks = BTreeMap::new();
        for check in crate::detect::CHECKS {
            let id = check.id();
            let path = format!("checks.{id}");
            let mut object = section_object(&path, raw_checks.remove(id.as_str()))?;
            let enabled = take_enabled(&path, &mut object)?.unwrap_or(check.enabled_by_default());
            let settings = check
                .parse_settings(serde_json::Value::Object(object))
                .map_err(|e| e.under(&path))?;
            checks.insert(id, CheckSection { enabled, settings });
        }
        if let Some(unknown) = raw_checks.keys().next() {
            return Err(ConfigError::new(
                format!("checks.{unknown}"),
                format!(
                    "unknown check {unknown:?}; the checks are: {}",
                    crate::detect::CHECKS
                        .iter()
                        .map(|c| c.id().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut raw_fixes = raw.fixes;
        let mut fixes = BTreeMap::new();
        for fix in crate::remediate::fixes::FIXES {
            let id = fix.id();
            let path = format!("fixes.{id}");
            let mut object = section_object(&path, raw_fixes.remove(id.as_str()))?;
            let mut guard_keys = serde_json::Map::new();
            for key in GUARD_KEYS {
                if let Some(value) = object.remove(key) {
                    guard_keys.insert(key.to_string(), value);
                }
            }
            let guard = Settings::parse(serde_json::Value::Object(guard_keys), |g: RawGuard| {
                fix_config(g)
            })
            .map_err(|e| e.under(&path))?
            .get::<FixConfig>()
            .clone();
            let settings = fix
                .parse_settings(serde_json::Value::Object(object))
                .map_err(|e| e.under(&path))?;
            fixes.insert(id, FixSection { guard, settings });
        }
        if let Some(unknown) = raw_fixes.keys().next() {
            return Err(ConfigError::new(
                format!("fixes.{unknown}"),
                format!(
                    "unknown fix {unknown:?}; the fixes are: {}",
                    crate::remediate::fixes::FIXES
                        .iter()
                        .map(|f| f.id().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
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
            .unwrap_or(Duration::ZERO);
        if min_pass_interval > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "engine.minPassInterval",
                "must be at most 60s",
            ));
        }
        let kubernetes = KubernetesConfig::from_raw(raw.kubernetes)?;
        Ok(Config {
            mode: raw.mode.unwrap_or(Mode::DryRun),
            checks,
            fixes,
            fixes_per_hour,
            engine: EngineConfig {
                resync_interval,
                min_pass_interval,
            },
            kubernetes,
        })
    }
}

/// A section as an object: absent or `null` is empty; anything but a mapping is an error.
fn section_object(
    path: &str,
    value: Option<serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(serde_json::Map::new()),
        Some(serde_json::Value::Object(map)) => Ok(map),
        Some(other) => Err(ConfigError::new(
            path,
            format!("expected a mapping of settings, found {other}"),
        )),
    }
}

/// Takes `enabled` out of a check section.
fn take_enabled(
    path: &str,
    object: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Option<bool>, ConfigError> {
    match object.remove("enabled") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(ConfigError::new(
            format!("{path}.enabled"),
            format!("invalid type: {other}, expected a boolean"),
        )),
    }
}

/// A duration setting, or its default in seconds.
pub fn duration_or(value: Option<HumanDuration>, default_secs: u64) -> Duration {
    value
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(default_secs))
}

fn fix_config(raw: RawGuard) -> Result<FixConfig, ConfigError> {
    let max_attempts = raw.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        return Err(ConfigError::new("maxAttempts", "must be at least 1"));
    }
    Ok(FixConfig {
        enabled: raw.enabled.unwrap_or(false),
        confirm_for: duration_or(raw.confirm_for, 30),
        cooldown: duration_or(raw.cooldown, 300),
        max_attempts,
    })
}

/// Interface names as the kernel accepts them: 1-15 bytes, no '/', no whitespace.
pub fn validate_interfaces(path: &str, names: Vec<String>) -> Result<Vec<String>, ConfigError> {
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

/// Serialises durations as humantime text (`30s`) in /status.
pub mod humantime_serde_compat {
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
        assert!(!c.fix(FixId::FLUSH_STALE_CHAIN).enabled);
        assert!(!c.fix(FixId::REMOVE_HIJACK_RULE).enabled);
        assert!(!c.fix(FixId::SET_PROMISC).enabled);
        assert_eq!(c.checks.len(), crate::detect::CHECKS.len());
        assert_eq!(c.fixes.len(), crate::remediate::fixes::FIXES.len());
        // Every check runs by default except the opt-in ones, which act on the cluster.
        for check in crate::detect::CHECKS {
            assert_eq!(
                c.check_enabled(check.id()),
                check.id() != CheckId::APISERVER_SERVICE_TYPE,
                "{}",
                check.id()
            );
        }
        assert!(c.fixes.values().all(|f| !f.guard.enabled));
        assert_eq!(
            c.check(CheckId::HOSTPORT_HIJACK)
                .settings
                .get::<crate::detect::hostport_hijack::HijackConfig>()
                .protected_ports,
            vec![22, 2379, 2380, 6443, 9345, 10250]
        );
        assert_eq!(
            crate::detect::check(CheckId::CILIUM_STALE_BACKUP_CHAIN)
                .unwrap()
                .persist_for(&c),
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
            crate::detect::arp_unanswered::settings(&c).targets,
            vec![crate::detect::arp_unanswered::ArpTargetConfig {
                ip: "192.168.1.51".parse().unwrap(),
                interface: "wlan0".to_string(),
                always_owned: false
            }]
        );
        assert_eq!(
            crate::remediate::fixes::set_promisc::settings(&c).interfaces,
            vec!["wlan0"]
        );
        assert_eq!(
            c.fix(FixId::FLUSH_STALE_CHAIN).cooldown,
            Duration::from_secs(300)
        );
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
    fn the_effective_config_shows_every_section_with_its_defaults() {
        let c =
            Config::from_yaml("checks:\n  iptables-backend-split: { enabled: false }\n").unwrap();
        let shown = serde_json::to_value(&c).unwrap();
        assert_eq!(shown["checks"]["iptables-backend-split"]["enabled"], false);
        assert_eq!(
            shown["checks"]["cilium-stale-backup-chain"]["staleAfter"],
            "30s"
        );
        assert_eq!(shown["fixes"]["set-promisc"]["verifyWithin"], "1m");
        assert_eq!(shown["fixes"]["set-promisc"]["maxAttempts"], 3);
        assert_ne!(c, Config::default());
        let err = Config::from_yaml("checks:\n  promisc-lost: [eth0]\n").unwrap_err();
        assert_eq!(err.path, "checks.promisc-lost");
        let err = Config::from_yaml("fixes:\n  no-such-fix: {}\n").unwrap_err();
        assert_eq!(err.path, "fixes.no-such-fix");
    }

    #[test]
    fn arp_targets_take_the_string_or_the_object_form() {
        let c = Config::from_yaml(
            r#"
checks:
  arp-unanswered:
    targets:
      - "192.168.1.51@wlan0"
      - "192.168.1.52@wlan0!always"
      - { ip: 10.0.0.9, interface: eth0, alwaysOwned: true }
      - { ip: 10.0.0.10, interface: eth0 }
"#,
        )
        .unwrap();
        let t = &crate::detect::arp_unanswered::settings(&c).targets;
        let summary: Vec<(String, &str, bool)> = t
            .iter()
            .map(|t| (t.ip.to_string(), t.interface.as_str(), t.always_owned))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("192.168.1.51".to_string(), "wlan0", false),
                ("192.168.1.52".to_string(), "wlan0", true),
                ("10.0.0.9".to_string(), "eth0", true),
                ("10.0.0.10".to_string(), "eth0", false),
            ]
        );
    }

    #[test]
    fn bad_arp_targets_are_named_by_path() {
        let bad = |targets: &str| {
            Config::from_yaml(&format!(
                "checks:\n  arp-unanswered:\n    targets: {targets}\n"
            ))
            .unwrap_err()
        };
        let err = bad(r#"["10.0.0.1@eth0!sometimes"]"#);
        assert_eq!(err.path, "checks.arp-unanswered.targets[0]");
        assert!(err.reason.contains("unknown mark \"sometimes\""), "{err}");
        let err = bad(r#"["10.0.0.1@eth0", "10.0.0.1@eth0!always"]"#);
        assert_eq!(err.path, "checks.arp-unanswered.targets[1]");
        assert!(err.reason.contains("listed twice"), "{err}");
        let err = bad("[{ ip: 10.0.0.1, interface: eth0, owned: true }]");
        assert!(err.reason.contains("unknown field `owned`"), "{err}");
        let err = bad("[{ ip: 10.0.0.300, interface: eth0 }]");
        assert_eq!(err.path, "checks.arp-unanswered.targets[0]");
        assert!(err.reason.contains("not an IPv4 address"), "{err}");
        let err = bad("[{ ip: 10.0.0.1, interface: \"a/b\" }]");
        assert_eq!(err.path, "checks.arp-unanswered.targets[0]");
        let err = bad("[{ interface: eth0 }]");
        assert!(err.reason.contains("missing field `ip`"), "{err}");
        let err = bad("[42]");
        assert!(err.reason.contains("an ARP target"), "{err}");
    }

    #[test]
    fn wrong_types_are_named_by_path() {
        let err =
            Config::from_yaml("checks:\n  hostport-hijack:\n    enabled: maybe\n").unwrap_err();
        assert_eq!(err.path, "checks.hostport-hijack.enabled");
        let err = Config::from_yaml("- a\n- b\n").unwrap_err();
        assert_eq!(err.path, "(document)");
    }

    #[test]
    fn the_kubernetes_section_defaults_to_the_contract() {
        let k = Config::default().kubernetes;
        assert_eq!(
            k,
            KubernetesConfig {
                enabled: ApiUse::Auto,
                required: false,
                conditions: true,
                events: true,
                fix_slots: 1,
                slot_lease: Duration::from_secs(30),
                request_timeout: Duration::from_secs(10),
            }
        );
        let shown = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(
            shown["kubernetes"],
            serde_json::json!({
                "enabled": "auto", "required": false, "conditions": true, "events": true,
                "fixSlots": 1, "slotLease": "30s", "requestTimeout": "10s"
            })
        );
    }

    #[test]
    fn the_kubernetes_section_parses_every_key() {
        let c = Config::from_yaml(
            "kubernetes:\n  enabled: true\n  required: true\n  conditions: false\n  events: false\n  fixSlots: 3\n  slotLease: 1m\n  requestTimeout: 2s\n",
        )
        .unwrap();
        assert_eq!(
            c.kubernetes,
            KubernetesConfig {
                enabled: ApiUse::Always,
                required: true,
                conditions: false,
                events: false,
                fix_slots: 3,
                slot_lease: Duration::from_secs(60),
                request_timeout: Duration::from_secs(2),
            }
        );
        let enabled = |text: &str| {
            Config::from_yaml(&format!("kubernetes:\n  enabled: {text}\n"))
                .map(|c| c.kubernetes.enabled)
        };
        assert_eq!(enabled("auto"), Ok(ApiUse::Auto));
        assert_eq!(enabled("false"), Ok(ApiUse::Never));
        assert_eq!(enabled("\"true\""), Ok(ApiUse::Always));
        let shown = serde_json::to_value(
            Config::from_yaml("kubernetes: {enabled: false, fixSlots: 0}\n").unwrap(),
        )
        .unwrap();
        assert_eq!(shown["kubernetes"]["enabled"], false);
        assert_eq!(shown["kubernetes"]["fixSlots"], 0);
    }

    #[test]
    fn bad_kubernetes_keys_are_named_by_path() {
        let err = |text: &str| Config::from_yaml(&format!("kubernetes:\n  {text}\n")).unwrap_err();
        let e = err("fixslots: 2");
        assert_eq!(e.path, "kubernetes.fixslots");
        assert!(e.reason.contains("unknown field `fixslots`"), "{e}");
        let e = err("enabled: sometimes");
        assert_eq!(e.path, "kubernetes.enabled");
        assert!(e.reason.contains("expected auto, true or false"), "{e}");
        let e = err("enabled: 3");
        assert_eq!(e.path, "kubernetes.enabled");
        let e = err("fixSlots: -1");
        assert_eq!(e.path, "kubernetes.fixSlots");
        let e = err("fixSlots: 101");
        assert_eq!(e.path, "kubernetes.fixSlots");
        let e = err("slotLease: soon");
        assert_eq!(e.path, "kubernetes.slotLease");
        assert!(e.reason.contains("invalid duration"), "{e}");
        let e = err("slotLease: 20s");
        assert_eq!(e.path, "kubernetes.slotLease");
        assert!(
            e.reason
                .contains("at least 3 x kubernetes.requestTimeout (30s)"),
            "{e}"
        );
        assert!(Config::from_yaml("kubernetes: {slotLease: 20s, requestTimeout: 5s}\n").is_ok());
        let e = err("requestTimeout: 10ms");
        assert_eq!(e.path, "kubernetes.requestTimeout");
        let e = Config::from_yaml("kubernetes: {enabled: false, required: true}\n").unwrap_err();
        assert_eq!(e.path, "kubernetes.required");
        let e = Config::from_yaml("kubernetes: [a]\n").unwrap_err();
        assert_eq!(e.path, "kubernetes");
    }
}
