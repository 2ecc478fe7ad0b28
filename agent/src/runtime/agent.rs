//! The engine of `netmend run`: level-triggered passes over the node. Change events only mark the
//! state dirty; a pass (at most one per `minPassInterval`) reads the snapshot, evaluates the checks,
//! keeps `since`, decides and executes fixes through every guard, journals, counts, and publishes
//! `/status`. A tick every second lets time-based guards (confirmation, cooldown) and periodic
//! resyncs move without events.
//!
//! Skips are counted and journaled when a finding's fix state changes, not on every pass, so a
//! dry-run finding seen for a week is one `skipped_dry_run`, not 3 million.

use crate::config::Config;
use crate::http::{ConfigState, Shared};
use crate::journal::Journal;
use crate::model::finding::{CheckId, Finding, FixAction, FixId, FixReport, Outcome};
use crate::remediate::guard::{decide, Decision, GuardScope};
use crate::remediate::tracker::{persistent, Tracker};
use crate::report::FindingReport;
use crate::runtime::oneshot::history_of;
use crate::runtime::pass::execute;
use crate::runtime::{Actuator, NodeProbe};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Why the engine woke up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The kernel state changed (an nftables transaction, a link event, ...), with the process
    /// that made the change when the event named it.
    Changed { by: Option<String> },
}

/// How long the engine may go without a pass before it counts as dead for /healthz.
pub const ENGINE_ALLOWANCE: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_secs(1);
const RECENT_JOURNAL: usize = 50;

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

/// The agent's engine.
pub struct Engine<P: NodeProbe, A: Actuator> {
    pub config: Config,
    config_error: Option<String>,
    source: ConfigSource,
    tracker: Tracker,
    journal: Journal,
    shared: Arc<Shared>,
    probe: P,
    actuator: A,
    /// Last fix state reported per finding key (to count skips on change only).
    last_state: HashMap<String, Outcome>,
    /// Who last changed the ruleset (from NEWGEN events), for "re-added by" evidence.
    last_changed_by: Option<String>,
    /// Fix reports that stay shown after an apply until the next decision differs.
    last_reports: HashMap<String, FixReport>,
    /// set-promisc fixes for unanswered ARP waiting for replies to prove them.
    pending_promisc: Vec<PendingPromisc>,
    /// The last ruleset findings and what they were computed from.
    ruleset_memo: Option<RulesetMemo>,
    /// The guards' view of the journal, kept in step with every append.
    history: crate::remediate::history::FixHistory,
}

/// The closed label of a full nftables re-read's reason.
fn resync_label(reason: &str) -> &'static str {
    if reason.contains("overflow") || reason.contains("ENOBUFS") {
        "event-overflow"
    } else if reason.contains("invalidated") {
        "invalidated"
    } else {
        "inconsistent"
    }
}

/// Inputs and result of the last ruleset evaluation.
struct RulesetMemo {
    nft_generation: Option<Option<u32>>,
    legacy: Option<std::sync::Weak<crate::model::ruleset::Ruleset>>,
    listeners: Option<Vec<crate::model::snapshot::ListeningSocket>>,
    addresses: Option<Vec<crate::model::snapshot::LocalAddress>>,
    config: Config,
    findings: Vec<Finding>,
}

/// A set-promisc applied for an unanswered target, waiting for verification: replies for the
/// target leaving the interface (or the responder counter moving) prove it; requests that keep
/// arriving unanswered for `verifyWithin` disprove it and the flag is reverted (unless it was
/// already set before).
#[derive(Debug, Clone)]
struct PendingPromisc {
    key: String,
    subject: String,
    interface: String,
    target: std::net::Ipv4Addr,
    applied_at: SystemTime,
    requests_at_apply: u64,
    replies_at_apply: u64,
    responses_at_apply: Option<u64>,
}

/// (requests received, replies sent) for `target` on `interface` since the watch started.
fn arp_totals(
    snapshot: &crate::model::snapshot::NodeSnapshot,
    interface: &str,
    target: std::net::Ipv4Addr,
) -> (u64, u64) {
    snapshot
        .arp_cumulative
        .iter()
        .flatten()
        .find(|c| c.interface == interface)
        .and_then(|c| c.target(target))
        .map(|t| (t.requests_received, t.replies_sent))
        .unwrap_or((0, 0))
}

fn responses_sent(
    snapshot: &crate::model::snapshot::NodeSnapshot,
    interface: &str,
    target: std::net::Ipv4Addr,
) -> Option<u64> {
    let ifindex = snapshot
        .links
        .iter()
        .flatten()
        .find(|l| l.name == interface)?
        .ifindex;
    snapshot
        .responder_after
        .as_ref()
        .or(snapshot.responder.as_ref())?
        .responses_sent(target, ifindex)
}

impl PendingPromisc {
    fn new(
        tracked: &crate::remediate::tracker::TrackedFinding,
        interface: &str,
        snapshot: &crate::model::snapshot::NodeSnapshot,
        now: SystemTime,
    ) -> PendingPromisc {
        let target = tracked
            .finding
            .subject
            .split_once('@')
            .and_then(|(_, ip)| ip.parse().ok())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        let (requests, replies) = arp_totals(snapshot, interface, target);
        PendingPromisc {
            key: tracked.finding.key(),
            subject: tracked.finding.subject.clone(),
            interface: interface.to_string(),
            target,
            applied_at: now,
            requests_at_apply: requests,
            replies_at_apply: replies,
            responses_at_apply: responses_sent(snapshot, interface, target),
        }
    }
}

impl<P: NodeProbe, A: Actuator> Engine<P, A> {
    pub fn new(
        config: Config,
        source: ConfigSource,
        journal: Journal,
        shared: Arc<Shared>,
        probe: P,
        actuator: A,
    ) -> Engine<P, A> {
        {
            let mut doc = shared.status.write().expect("status lock");
            doc.config = source.state(&config, None);
            doc.journal = journal.recent(RECENT_JOURNAL).to_vec();
        }
        let mut probe = probe;
        probe.configure(&config);
        let history = history_of(&journal);
        Engine {
            config,
            config_error: None,
            source,
            tracker: Tracker::new(),
            journal,
            shared,
            probe,
            actuator,
            last_state: HashMap::new(),
            last_changed_by: None,
            last_reports: HashMap::new(),
            pending_promisc: Vec::new(),
            ruleset_memo: None,
            history,
        }
    }

    /// The ruleset checks' findings, re-run only when their inputs changed: the nftables
    /// generation, the legacy ruleset (the probe keeps the same `Arc` while its content is
    /// unchanged), listeners, addresses or the configuration. Idle ticks then cost no walk over the
    /// rules. The memo holds no strong reference to a ruleset, so the incremental cache can keep
    /// changing its own in place without a copy.
    fn ruleset_findings(
        &mut self,
        snapshot: &crate::model::snapshot::NodeSnapshot,
    ) -> Vec<Finding> {
        let nft_generation = snapshot.nftables.as_ref().map(|r| r.generation);
        let legacy = snapshot.legacy.as_ref().map(std::sync::Arc::downgrade);
        if let Some(memo) = &self.ruleset_memo {
            let same_legacy = match (&memo.legacy, &legacy) {
                (Some(a), Some(b)) => a.ptr_eq(b),
                (None, None) => true,
                _ => false,
            };
            if memo.nft_generation == nft_generation
                && nft_generation.is_some_and(|g| g.is_some())
                && same_legacy
                && memo.listeners == snapshot.listeners
                && memo.addresses == snapshot.addresses
                && memo.config == self.config
            {
                return memo.findings.clone();
            }
        }
        let findings = crate::detect::run_ruleset_checks(snapshot, &self.config);
        self.ruleset_memo = Some(RulesetMemo {
            nft_generation,
            legacy,
            listeners: snapshot.listeners.clone(),
            addresses: snapshot.addresses.clone(),
            config: self.config.clone(),
            findings: findings.clone(),
        });
        findings
    }

    /// Interfaces netmend made promiscuous and has not released (from the journal).
    fn promisc_held(&self) -> Vec<String> {
        self.journal
            .promisc_interfaces()
            .into_iter()
            .map(|(interface, _)| interface)
            .collect()
    }

    /// Settles pending set-promisc fixes against what the ARP watch saw since they were applied.
    fn verify_promisc(&mut self, snapshot: &crate::model::snapshot::NodeSnapshot, now: SystemTime) {
        let verify_within = self.config.fixes.set_promisc.verify_within;
        let min_requests = u64::from(self.config.checks.arp_unanswered.min_requests);
        let mut still_pending = Vec::new();
        for pending in std::mem::take(&mut self.pending_promisc) {
            let (requests, replies) = arp_totals(snapshot, &pending.interface, pending.target);
            let counter_moved = match (
                pending.responses_at_apply,
                responses_sent(snapshot, &pending.interface, pending.target),
            ) {
                (Some(before), Some(after)) => after > before,
                _ => false,
            };
            let new_requests = requests.saturating_sub(pending.requests_at_apply);
            let answered = replies > pending.replies_at_apply || counter_moved;
            let waited = now.duration_since(pending.applied_at).unwrap_or_default();
            let (outcome, detail) = if answered {
                (
                    Outcome::Verified,
                    format!(
                        "{} answers for {} since {} was set promiscuous",
                        replies.saturating_sub(pending.replies_at_apply),
                        pending.target,
                        pending.interface
                    ),
                )
            } else if waited >= verify_within && new_requests >= min_requests {
                let was_before = self
                    .journal
                    .promisc_interfaces()
                    .into_iter()
                    .find(|(i, _)| *i == pending.interface)
                    .map(|(_, before)| before)
                    .unwrap_or(false);
                let revert = if was_before {
                    Ok("left promiscuous: it already was before netmend acted".to_string())
                } else {
                    crate::act::link::set_promisc(pending.interface.as_str(), false)
                        .map(|_| format!("promisc turned off again on {}", pending.interface))
                        .map_err(|e| e.to_string())
                };
                match revert {
                    Ok(text) => (
                        Outcome::Reverted,
                        format!(
                            "ineffective: {new_requests} requests for {} still unanswered after {}; {text}",
                            pending.target,
                            humantime::format_duration(verify_within)
                        ),
                    ),
                    Err(e) => (
                        Outcome::Failed,
                        format!("ineffective, and reverting failed: {e}"),
                    ),
                }
            } else {
                still_pending.push(pending);
                continue;
            };
            if outcome == Outcome::Reverted {
                self.shared.metrics.fix_outcome(
                    FixId::SetPromisc,
                    Outcome::Ineffective,
                    &pending.subject,
                    &detail,
                );
            }
            self.shared
                .metrics
                .fix_outcome(FixId::SetPromisc, outcome, &pending.subject, &detail);
            let mut entry = crate::journal::JournalEntry::new(
                now,
                Some(CheckId::ArpUnanswered),
                FixId::SetPromisc,
                &pending.subject,
                &pending.key,
                outcome,
                &detail,
            );
            entry.interface = Some(pending.interface.clone());
            self.journal_entry(entry);
            self.last_reports.insert(
                pending.key.clone(),
                FixReport {
                    name: FixId::SetPromisc,
                    state: outcome.state(),
                    detail,
                },
            );
        }
        self.pending_promisc = still_pending;
    }

    /// Follows the config file; a bad file keeps the last good config.
    pub fn reload_config(&mut self, every: Duration) {
        let Some(result) = self.source.poll(every) else {
            return;
        };
        match result {
            Ok((config, hash)) => {
                self.shared
                    .metrics
                    .config_reload(true, &format!("mode {} (hash {hash})", config.mode));
                self.probe.configure(&config);
                self.config = config;
                self.config_error = None;
            }
            Err(error) => {
                self.shared.metrics.config_reload(false, &error);
                self.config_error = Some(error);
            }
        }
        let state = self.source.state(&self.config, self.config_error.clone());
        self.shared.status.write().expect("status lock").config = state;
    }

    /// Notes who changed the kernel state (from events).
    pub fn note_change(&mut self, wake: &Wake) {
        let Wake::Changed { by } = wake;
        if by.is_some() {
            self.last_changed_by = by.clone();
        }
    }

    fn min_age(&self, finding: &Finding) -> Duration {
        match finding.check {
            CheckId::CiliumStaleBackupChain => {
                self.config.checks.cilium_stale_backup_chain.stale_after
            }
            _ => Duration::ZERO,
        }
    }

    /// One pass: observe, detect, decide, act, publish.
    pub fn pass(&mut self, now: SystemTime) {
        let started = Instant::now();
        self.pass_inner(now);
        tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "pass");
    }

    fn pass_inner(&mut self, now: SystemTime) {
        let snapshot = match self.probe.snapshot() {
            Ok(s) => s,
            Err(fatal) => {
                tracing::error!(error = %fatal, "cannot observe the node");
                for source in crate::metrics::SOURCES {
                    self.shared.metrics.source(source, false, Duration::ZERO);
                }
                return;
            }
        };
        if let Some(why) = snapshot
            .sources
            .get("nftables")
            .and_then(|s| s.detail.as_deref())
            .and_then(|d| d.strip_prefix("full re-read: "))
        {
            // The periodic one is counted where it is asked for (in `run`).
            if !why.starts_with("periodic") {
                self.shared.metrics.resync(resync_label(why));
            }
        }
        for (name, status) in &snapshot.sources {
            self.shared
                .metrics
                .source(name, status.ok, Duration::from_millis(status.duration_ms));
        }
        let held = self.promisc_held();
        self.verify_promisc(&snapshot, now);
        let mut findings = self.ruleset_findings(&snapshot);
        findings.extend(crate::detect::run_l2_checks(&snapshot, &self.config, &held));
        let tracked = self.tracker.observe(findings, now);
        let mut active = persistent(tracked, now, |f| self.min_age(f));
        active.sort_by(|a, b| {
            b.finding
                .severity
                .cmp(&a.finding.severity)
                .then_with(|| a.finding.subject.cmp(&b.finding.subject))
        });
        let mut reports = Vec::with_capacity(active.len());
        let mut circuit_open: HashMap<FixId, usize> = HashMap::new();
        let mut seen_keys = Vec::with_capacity(active.len());
        for tracked in &active {
            let key = tracked.finding.key();
            seen_keys.push(key.clone());
            let Some(decision) =
                decide(tracked, &self.config, &self.history, now, GuardScope::Agent)
            else {
                reports.push(FindingReport::new(tracked, None));
                continue;
            };
            let report = match decision {
                Decision::Skip {
                    fix,
                    outcome,
                    detail,
                } => {
                    if outcome == Outcome::SkippedCircuitOpen {
                        *circuit_open.entry(fix).or_default() += 1;
                    }
                    // After an apply, keep showing its result while the guards hold it back.
                    let shown = match (outcome, self.last_reports.get(&key)) {
                        (Outcome::SkippedCooldown, Some(previous)) => FixReport {
                            detail: format!("{}; {detail}", previous.detail),
                            ..previous.clone()
                        },
                        _ => FixReport {
                            name: fix,
                            state: outcome.state(),
                            detail: detail.clone(),
                        },
                    };
                    if self.last_state.get(&key) != Some(&outcome) {
                        self.last_state.insert(key.clone(), outcome);
                        self.shared.metrics.fix_outcome(
                            fix,
                            outcome,
                            &tracked.finding.subject,
                            &detail,
                        );
                        if matches!(
                            outcome,
                            Outcome::SkippedCircuitOpen | Outcome::Blocked | Outcome::SkippedBudget
                        ) {
                            self.journal_entry(crate::journal::JournalEntry::new(
                                now,
                                Some(tracked.finding.check),
                                fix,
                                &tracked.finding.subject,
                                &key,
                                outcome,
                                &detail,
                            ));
                        }
                    }
                    shown
                }
                apply @ Decision::Apply { .. } => {
                    let fix = apply.fix();
                    let mut execution = execute(
                        apply,
                        tracked,
                        &self.config,
                        &held,
                        &mut self.probe,
                        &mut self.actuator,
                        || now,
                    );
                    for outcome in &execution.outcomes {
                        self.shared.metrics.fix_outcome(
                            fix,
                            *outcome,
                            &tracked.finding.subject,
                            &execution.report.detail,
                        );
                    }
                    self.last_state
                        .insert(key.clone(), execution.final_outcome());
                    // A repeat application means the fault came back: record who did it.
                    let readded = (self.history.applied_within_window(&key, now) > 0)
                        .then(|| self.last_changed_by.clone())
                        .flatten();
                    for mut entry in std::mem::take(&mut execution.journal) {
                        entry.readded_by = readded.clone();
                        self.journal_entry(entry);
                    }
                    if let (Some(FixAction::SetPromisc { interface, .. }), Outcome::Applied) = (
                        tracked
                            .finding
                            .proposal
                            .as_ref()
                            .and_then(|p| p.action.as_ref()),
                        execution.final_outcome(),
                    ) {
                        if tracked.finding.check == CheckId::ArpUnanswered {
                            self.pending_promisc
                                .push(PendingPromisc::new(tracked, interface, &snapshot, now));
                        }
                    }
                    self.last_reports
                        .insert(key.clone(), execution.report.clone());
                    execution.report
                }
            };
            reports.push(FindingReport::new(tracked, Some(report)));
        }
        self.last_state.retain(|k, _| seen_keys.contains(k));
        self.last_reports.retain(|k, _| seen_keys.contains(k));
        for fix in FixId::ALL {
            self.shared
                .metrics
                .set_circuit_open(fix, circuit_open.get(&fix).copied().unwrap_or(0));
        }
        let mut counts: Vec<(CheckId, usize)> = Vec::new();
        for r in &active {
            match counts.iter_mut().find(|(c, _)| *c == r.finding.check) {
                Some((_, n)) => *n += 1,
                None => counts.push((r.finding.check, 1)),
            }
        }
        self.shared.metrics.set_findings(&counts);
        {
            let mut doc = self.shared.status.write().expect("status lock");
            doc.report.findings = reports;
            doc.report.sources = snapshot.sources.clone();
            doc.journal = self.journal.recent(RECENT_JOURNAL).to_vec();
        }
        if snapshot.nftables.is_some() {
            self.shared.set_ready();
        }
    }

    /// Appends to the journal and keeps the guards' history in step with it (the history is
    /// built from the journal once, at start, not on every pass).
    fn journal_entry(&mut self, entry: crate::journal::JournalEntry) {
        if let Some(attempt) = entry.attempt() {
            self.history.record(&attempt);
        }
        if let Err(e) = self.journal.append(entry) {
            tracing::error!(error = %e, "journal write failed");
        }
    }

    /// Runs passes until `stop` is set: on wake-ups (debounced by `minPassInterval`), on ticks,
    /// and on a full resync every `resyncInterval` (the probe decides what a resync re-reads).
    pub fn run(&mut self, wakes: Receiver<Wake>, stop: &AtomicBool) {
        let mut last_pass: Option<Instant> = None;
        // Only passes triggered by changes are rate-limited: a tick pass just before an event
        // must not delay the reaction to it.
        let mut last_change_pass: Option<Instant> = None;
        let mut last_resync = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.shared.heartbeats.beat("engine", ENGINE_ALLOWANCE);
            let until_tick =
                last_pass.map_or(Duration::ZERO, |at| TICK.saturating_sub(at.elapsed()));
            let changed = match wakes.recv_timeout(until_tick) {
                Ok(wake) => {
                    self.note_change(&wake);
                    true
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => {
                    if !stop.load(Ordering::SeqCst) {
                        tracing::error!("the change feed stopped; stopping the engine");
                    }
                    return;
                }
            };
            self.reload_config(Duration::from_secs(2));
            if changed {
                let min = self.config.engine.min_pass_interval;
                if let Some(since) = last_change_pass.map(|at| at.elapsed()) {
                    if since < min {
                        std::thread::sleep(min - since);
                    }
                }
                // Take everything queued meanwhile: one pass serves a burst.
                while let Ok(more) = wakes.try_recv() {
                    self.note_change(&more);
                }
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if last_resync.elapsed() >= self.config.engine.resync_interval {
                self.probe.resync();
                self.shared.metrics.resync("periodic");
                last_resync = Instant::now();
            }
            // Ticks run a pass too: guards and confirmation times move with the clock.
            self.pass(SystemTime::now());
            let now = Instant::now();
            last_pass = Some(now);
            if changed {
                last_change_pass = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::model::ruleset::Backend;
    use crate::model::snapshot::NodeSnapshot;
    use crate::runtime::fake::FakeNode;

    fn stale_node() -> NodeSnapshot {
        snapshot_with(
            Some(vec![iptables_table(
                Backend::Nft,
                "nat",
                ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\n",
            )]),
            None,
        )
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netmend-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn engine(
        node: &FakeNode,
        config: Config,
        dir: &std::path::Path,
    ) -> Engine<FakeNode, FakeNode> {
        let shared = Arc::new(Shared::new("n".into(), ConfigState::default()));
        Engine::new(
            config,
            ConfigSource::new(None, None),
            Journal::open(dir).unwrap(),
            shared,
            node.clone(),
            node.clone(),
        )
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn fix_state(e: &Engine<FakeNode, FakeNode>) -> Option<String> {
        let doc = e.shared.status.read().unwrap();
        doc.report
            .findings
            .first()
            .and_then(|f| f.fix.as_ref())
            .map(|f| f.state.as_str().to_string())
    }

    #[test]
    fn a_backup_chain_is_reported_after_stale_after_and_fixed_after_confirmation() {
        let dir = temp_dir("confirm");
        let node = FakeNode::new(stale_node());
        let config = Config::from_yaml(
            "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 30s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 40s }\n",
        )
        .unwrap();
        let mut e = engine(&node, config, &dir);
        e.pass(t(0));
        assert_eq!(e.shared.status.read().unwrap().report.findings.len(), 0);
        assert!(e.shared.ready.load(Ordering::SeqCst));
        e.pass(t(31));
        assert_eq!(fix_state(&e).as_deref(), Some("pending"));
        e.pass(t(41));
        assert_eq!(fix_state(&e).as_deref(), Some("verified"));
        assert_eq!(node.0.borrow().applied.len(), 1);
        let text = e.shared.metrics.encode();
        assert!(
            text.contains(
                "netmend_fix_attempts_total{fix=\"flush-stale-chain\",outcome=\"verified\"} 1"
            ),
            "{text}"
        );
        // Healed: the finding clears.
        e.pass(t(42));
        assert!(e.shared.status.read().unwrap().report.findings.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fault_that_keeps_coming_back_opens_the_breaker_and_it_survives_a_restart() {
        let dir = temp_dir("breaker");
        let node = FakeNode::new(stale_node());
        let config = Config::from_yaml(
            "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 0s, cooldown: 10s, maxAttempts: 2 }\n",
        )
        .unwrap();
        let mut e = engine(&node, config.clone(), &dir);
        let mut now = 0;
        for _ in 0..2 {
            e.pass(t(now));
            assert_eq!(fix_state(&e).as_deref(), Some("verified"));
            // Something re-adds it.
            node.0.borrow_mut().snapshot = stale_node();
            e.note_change(&Wake::Changed {
                by: Some("cilium-agent".into()),
            });
            now += 11;
        }
        e.pass(t(now));
        assert_eq!(fix_state(&e).as_deref(), Some("circuit-open"));
        {
            let doc = e.shared.status.read().unwrap();
            let detail = &doc.report.findings[0].fix.as_ref().unwrap().detail;
            assert!(detail.contains("re-added by cilium-agent"), "{detail}");
        }
        assert!(e
            .shared
            .metrics
            .encode()
            .contains("netmend_circuit_open{fix=\"flush-stale-chain\"} 1"));
        assert_eq!(node.0.borrow().applied.len(), 2);
        drop(e);
        // A restart reads the journal: the breaker holds.
        let mut e = engine(&node, config, &dir);
        e.pass(t(now + 1));
        assert_eq!(fix_state(&e).as_deref(), Some("circuit-open"));
        assert_eq!(node.0.borrow().applied.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_loop_ticks_resyncs_on_its_interval_and_stops_when_asked() {
        let dir = temp_dir("loop");
        let node = FakeNode::new(stale_node());
        let config = Config::from_yaml("engine: { resyncInterval: 1s }\n").unwrap();
        let mut e = engine(&node, config, &dir);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tx.send(Wake::Changed {
                    by: Some("kube-proxy".into()),
                })
                .unwrap();
                std::thread::sleep(Duration::from_millis(2500));
                stop.store(true, Ordering::SeqCst);
                tx
            })
        };
        e.run(rx, &stop);
        drop(stopper.join().unwrap());
        let state = node.0.borrow();
        assert!(state.resyncs >= 1, "resyncs: {}", state.resyncs);
        assert!(
            state.snapshots_taken >= 2,
            "passes: {}",
            state.snapshots_taken
        );
        assert_eq!(e.last_changed_by.as_deref(), Some("kube-proxy"));
        assert!(e
            .shared
            .metrics
            .encode()
            .contains("netmend_resyncs_total{result=\"periodic\"}"));
        drop(state);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn resync_reasons_map_to_closed_labels() {
        assert_eq!(resync_label("event overflow (ENOBUFS)"), "event-overflow");
        assert_eq!(resync_label("invalidated"), "invalidated");
        assert_eq!(
            resync_label("generation mismatch (kernel 7, cache 5)"),
            "inconsistent"
        );
    }

    #[test]
    fn dry_run_skips_are_counted_once_not_every_pass() {
        let dir = temp_dir("skips");
        let node = FakeNode::new(stale_node());
        let config =
            Config::from_yaml("checks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\n")
                .unwrap();
        let mut e = engine(&node, config, &dir);
        for i in 0..5 {
            e.pass(t(i));
        }
        assert_eq!(fix_state(&e).as_deref(), Some("dry-run"));
        let text = e.shared.metrics.encode();
        assert!(text.contains("netmend_fix_attempts_total{fix=\"flush-stale-chain\",outcome=\"skipped_dry_run\"} 1"), "{text}");
        assert!(text.contains("netmend_findings{check=\"cilium-stale-backup-chain\"} 1"));
        assert!(node.0.borrow().applied.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_config_file_keeps_the_last_good_config() {
        let dir = temp_dir("reload");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, "mode: dry-run\n").unwrap();
        let node = FakeNode::new(stale_node());
        let shared = Arc::new(Shared::new("n".into(), ConfigState::default()));
        let mut e = Engine::new(
            Config::default(),
            ConfigSource::new(Some(path.clone()), Some("mode: dry-run\n")),
            Journal::open(&dir).unwrap(),
            shared,
            node.clone(),
            node.clone(),
        );
        std::fs::write(&path, "mode: enforce\n").unwrap();
        e.reload_config(Duration::ZERO);
        assert_eq!(e.config.mode, crate::config::Mode::Enforce);
        std::fs::write(&path, "mode: enforce\nfixes: { nope: {} }\n").unwrap();
        e.reload_config(Duration::ZERO);
        assert_eq!(e.config.mode, crate::config::Mode::Enforce);
        let doc = e.shared.status.read().unwrap();
        assert!(!doc.config.valid);
        assert!(doc.config.error.as_ref().unwrap().contains("nope"));
        drop(doc);
        assert!(e
            .shared
            .metrics
            .encode()
            .contains("netmend_config_reloads_total{result=\"invalid\"} 1"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
