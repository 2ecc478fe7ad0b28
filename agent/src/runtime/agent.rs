//! The engine of `netmend run`: level-triggered passes over the node. Change events only mark the
//! state dirty; a pass (on the first change at once; what arrives meanwhile is folded into the
//! next one; at most one per `minPassInterval` when that is set) reads the snapshot, settles fixes
//! waiting for proof, evaluates the checks, keeps `since`, runs the shared decision loop
//! (`runtime::decide`), counts, journals and publishes `/status`, and hands the cluster what the
//! pass saw (`runtime::cluster`: check states and events). A tick every second lets time-based
//! guards (confirmation, cooldown) and periodic resyncs move without events.
//!
//! The cluster decides two things per pass: the node's opt-out label (`dry-run`: nothing is
//! applied; `off`: no check runs) and, per fix, whether a cluster-wide fix slot is free.
//!
//! The jobs around it live in their own files: the configuration file (`config_source`), the
//! ruleset checks' memo (`ruleset_memo`), fixes waiting for proof (`verify`), the per-finding fix
//! states (`reporting`), the fix slot (`slots`), what the cluster is told (`cluster_report`). No
//! check or fix is named here.
//!
//! Long: the pass, the loop, and how each pass is shown (counted, journaled, on /status, handed
//! to the cluster) all work on the same per-pass state the engine owns; its tests make it longer.

use crate::config::Config;
use crate::detect::{self, CheckContext, Inputs};
use crate::http::{KubernetesState, Shared};
use crate::journal::{Journal, JournalEntry};
use crate::model::finding::{CheckId, FixAction, FixId, Outcome};
use crate::remediate::guard::GuardScope;
use crate::remediate::history::FixHistory;
use crate::remediate::tracker::{persistent, Tracker};
use crate::report::FindingReport;
use crate::runtime::cluster::{Cluster, ClusterReport, NodeEvent, NodeLocal, NodeMode};
use crate::runtime::cluster_report::{check_states, fix_event, FindingTransitions, Reported};
use crate::runtime::cordon_release::CordonRelease;
use crate::runtime::decide::{decide_and_act, record, ClusterSide, Decided, Round, Step};
use crate::runtime::oneshot::history_of;
use crate::runtime::reporting::FixLedger;
use crate::runtime::ruleset_memo::RulesetMemo;
use crate::runtime::slots::SlotGate;
use crate::runtime::verify::PendingVerifications;
use crate::runtime::{Actuator, NodeReader};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::runtime::config_source::{config_hash, ConfigSource};

/// Why the engine woke up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The kernel state changed (an nftables transaction, a link event, ...), with the process
    /// that made the change when the event named it.
    Changed { by: Option<String> },
    /// An nftables notification from another process: a committed transaction (with the chains
    /// it wrote, for "re-added by") or lost notifications.
    Nft(crate::observe::nft_events::NftEvent),
}

/// How a legacy re-add is attributed: x_tables sends no notifications naming a writer.
pub const LEGACY_READD: &str =
    "unknown (seen by a periodic iptables-legacy re-read; the writer is not known)";
/// How an nftables re-add is attributed when no transaction seen named this chain's writer.
pub const UNKNOWN_READD: &str =
    "unknown (no nftables transaction seen since start named this chain's writer)";

/// How long the engine may go without a pass before it counts as dead for /healthz.
pub const ENGINE_ALLOWANCE: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_secs(1);
const RECENT_JOURNAL: usize = 50;

/// The agent's engine.
pub struct Engine<P: NodeReader, A: Actuator> {
    pub config: Config,
    config_error: Option<String>,
    source: ConfigSource,
    tracker: Tracker,
    journal: Journal,
    shared: Arc<Shared>,
    probe: P,
    actuator: A,
    /// Per-finding fix states between passes.
    ledger: FixLedger,
    /// Who last changed the ruleset (from NEWGEN events); logged, never used as attribution.
    last_changed_by: Option<String>,
    /// Per chain, the process whose transaction last created or changed it: "re-added by".
    chain_writers: crate::observe::nft_events::ChainWriters,
    /// Each source's read health, for /status and readiness.
    sources: crate::runtime::sources::SourceBook,
    /// Fixes waiting for their proof.
    pending: PendingVerifications,
    ruleset_memo: RulesetMemo,
    /// The guards' view of the journal, kept in step with every append.
    history: FixHistory,
    /// The Kubernetes API as the engine sees it (node-local without one).
    cluster: Box<dyn Cluster>,
    /// The fix slot this node holds and the fixes using it.
    slots: SlotGate,
    /// The node's opt-out label as the last pass saw it.
    node_mode: NodeMode,
    /// The findings reported on the last pass, for raised/cleared events.
    transitions: FindingTransitions,
    /// Fix outcomes journaled during the pass in progress, for events.
    fix_events: Vec<NodeEvent>,
    /// When netmend's own cordon may be lifted.
    cordon_release: CordonRelease,
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

impl<P: NodeReader, A: Actuator> Engine<P, A> {
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
            doc.journal_health = journal.health();
        }
        shared
            .metrics
            .journal_skipped(&journal.health().skipped_lines);
        // Verifications a previous run left open are finished by this one.
        let verify_within = crate::remediate::fixes::set_promisc::settings(&config).verify_within;
        let pending =
            PendingVerifications::resume(journal.pending_verifications(verify_within), &config);
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
            ledger: FixLedger::default(),
            last_changed_by: None,
            chain_writers: Default::default(),
            sources: Default::default(),
            pending,
            ruleset_memo: RulesetMemo::default(),
            history,
            cluster: Box::new(NodeLocal),
            slots: SlotGate::default(),
            node_mode: NodeMode::Configured,
            transitions: FindingTransitions::default(),
            fix_events: Vec::new(),
            cordon_release: CordonRelease::default(),
        }
    }

    /// The engine with the cluster it reports into and takes fix slots from (node-local without).
    pub fn with_cluster(mut self, cluster: Box<dyn Cluster>) -> Engine<P, A> {
        self.cluster = cluster;
        self.show_connection();
        self
    }

    /// Interfaces netmend made promiscuous and has not released (from the journal).
    fn promisc_held(&self) -> Vec<String> {
        self.journal
            .promisc_interfaces()
            .into_iter()
            .map(|(interface, _)| interface)
            .collect()
    }

    /// Settles fixes waiting for proof against what was seen since they were applied.
    fn settle_pending(&mut self, snapshot: &crate::model::snapshot::NodeSnapshot, now: SystemTime) {
        let before: HashMap<String, bool> = self.journal.promisc_interfaces().into_iter().collect();
        let settled = self
            .pending
            .settle(snapshot, now, &mut self.actuator, |interface| {
                before.get(interface).copied().unwrap_or(false)
            });
        for done in settled {
            self.slots.finished(&mut *self.cluster, &done.key);
            for outcome in &done.outcomes {
                self.shared
                    .metrics
                    .fix_outcome(done.fix, *outcome, &done.subject, &done.detail);
            }
            let outcome = *done.outcomes.last().expect("a settled fix has an outcome");
            // Only the last outcome is journaled (and becomes an event there): the ones before
            // it (`ineffective` before `reverted`) are events of their own.
            for earlier in &done.outcomes[..done.outcomes.len() - 1] {
                let line = JournalEntry::new(
                    now,
                    Some(done.check),
                    done.fix,
                    &done.subject,
                    &done.key,
                    *earlier,
                    &done.detail,
                );
                self.fix_events.extend(fix_event(&line));
            }
            let mut entry = JournalEntry::new(
                now,
                Some(done.check),
                done.fix,
                &done.subject,
                &done.key,
                outcome,
                &done.detail,
            );
            entry.interface = Some(done.interface.clone());
            self.journal_entry(entry);
            self.ledger.acted(
                &done.key,
                outcome,
                crate::model::finding::FixReport {
                    name: done.fix,
                    state: outcome.state(),
                    detail: done.detail,
                },
            );
        }
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
        use crate::observe::nft_events::NftEvent;
        match wake {
            Wake::Changed { by } => {
                if by.is_some() {
                    self.last_changed_by = by.clone();
                }
            }
            Wake::Nft(NftEvent::Committed(generation)) => {
                if let Some(by) = &generation.process {
                    self.last_changed_by = Some(by.clone());
                }
                self.chain_writers.record(generation);
            }
            // A chain may have been written unseen: its writer is no longer known.
            Wake::Nft(NftEvent::Overflow) => self.chain_writers.forget_all(),
            Wake::Nft(NftEvent::Changes(_)) => {}
        }
    }

    /// Who re-added a fault that a fix had already removed: the process whose nftables
    /// transaction last wrote its chain, "unknown" when none was seen, and for legacy tables how
    /// it was seen (x_tables names no writer). `None` for findings that are not about a chain.
    fn readded_by(
        chain_writers: &crate::observe::nft_events::ChainWriters,
        finding: &crate::model::finding::Finding,
    ) -> Option<String> {
        match finding.evidence.get("backend").and_then(|b| b.as_str()) {
            Some("legacy") => Some(LEGACY_READD.to_string()),
            Some(_) => Some(
                chain_writers
                    .writer_of(&finding.subject)
                    .unwrap_or(UNKNOWN_READD)
                    .to_string(),
            ),
            None => None,
        }
    }

    /// Picks up journal entries other writers (a `netmend check --apply`) appended since the last
    /// look, so the guards decide on them too, and prunes the guards' history to what they can
    /// still need.
    fn catch_up_journal(&mut self, now: SystemTime) {
        match self.journal.refresh() {
            Ok(fresh) => {
                for entry in &fresh {
                    tracing::info!(
                        fix = %entry.fix,
                        subject = %entry.subject,
                        outcome = %entry.outcome,
                        "journal entry from another writer"
                    );
                    record(&mut self.history, entry);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the journal's new entries"),
        }
        let longest_cooldown = self
            .config
            .fixes
            .values()
            .map(|f| f.guard.cooldown)
            .max()
            .unwrap_or_default();
        self.history.prune(now, longest_cooldown);
        self.shared
            .metrics
            .journal_skipped(&self.journal.health().skipped_lines);
    }

    /// One pass: observe, detect, decide, act, publish.
    pub fn pass(&mut self, now: SystemTime) {
        let started = Instant::now();
        self.pass_inner(now);
        tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "pass");
    }

    fn pass_inner(&mut self, now: SystemTime) {
        self.catch_up_journal(now);
        self.follow_node_mode();
        let snapshot = match self.probe.snapshot() {
            Ok(s) => s,
            Err(fatal) => {
                tracing::error!(error = %fatal, "cannot observe the node");
                for source in crate::metrics::SOURCES {
                    self.shared.metrics.source(source, false, Duration::ZERO);
                }
                self.sources.fail_all(&fatal.0, now);
                self.shared
                    .status
                    .write()
                    .expect("status lock")
                    .source_health = self.sources.view();
                self.show_connection();
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
        self.sources.observe(&snapshot.sources, now);
        let held = self.promisc_held();
        // A fix already applied is finished even on a node that opted out since.
        self.settle_pending(&snapshot, now);
        let checks_run = self.node_mode != NodeMode::Off;
        self.cluster
            .follow_service_intent(checks_run && detect::service_intent_wanted(&self.config));
        self.cluster
            .follow_api_service(checks_run && detect::api_service_wanted(&self.config));
        let mut not_judged = Vec::new();
        let findings = if checks_run {
            let cluster = &*self.cluster;
            let pod_owner = |ip: std::net::IpAddr| cluster.pod_owner(ip);
            let pods = detect::Pods {
                owner: &pod_owner,
                known: cluster.pods_known(),
            };
            let intent = cluster.service_intent();
            let api_service = cluster.api_service();
            let mut findings =
                self.ruleset_memo
                    .findings(&snapshot, &self.config, pods, intent.as_deref());
            let context = CheckContext {
                snapshot: &snapshot,
                config: &self.config,
                promisc_held: &held,
                pod_owner: &pod_owner,
                pods_known: pods.known,
                service_intent: intent.as_deref(),
                api_service: api_service.as_deref(),
            };
            findings.extend(detect::run(Inputs::Links, &context));
            findings.extend(detect::run(Inputs::Cluster, &context));
            not_judged = detect::not_judged(&context);
            findings
        } else {
            Vec::new()
        };
        let unjudged: HashSet<CheckId> = not_judged.iter().map(|(c, _)| *c).collect();
        let tracked = self.tracker.observe(findings, now);
        let config = &self.config;
        let active = persistent(tracked, now, |f| {
            detect::check(f.check)
                .map(|c| c.persist_for(config))
                .unwrap_or_default()
        });
        let round = Round {
            config: &self.config,
            scope: GuardScope::Agent,
            act: true,
            promisc_held: &held,
            readded_by: &|finding| Self::readded_by(&self.chain_writers, finding),
            node_mode: self.node_mode,
        };
        let mut appended = Vec::new();
        let decided = decide_and_act(
            active,
            &round,
            &mut self.history,
            now,
            &mut self.probe,
            &mut self.actuator,
            ClusterSide {
                cluster: &mut *self.cluster,
                slots: &mut self.slots,
            },
            &|| now,
            &mut |entry| appended.push(entry),
        );
        let (reports, verifying) = self.account(&decided, &snapshot, now);
        for mut entry in appended {
            // An applied fix awaiting its proof is journaled with what the proof needs, so a
            // restart finishes it.
            if entry.outcome() == Some(Outcome::Applied) {
                entry.verify = verifying.get(&entry.key).cloned();
            }
            self.append(entry);
        }
        // The slot stays only with fixes whose proof is still pending.
        let pending = &self.pending;
        self.slots
            .retain(&mut *self.cluster, |key| pending.waits_for(key));
        let mut counts: Vec<(CheckId, usize)> = Vec::new();
        for d in &decided {
            match counts
                .iter_mut()
                .find(|(c, _)| *c == d.tracked.finding.check)
            {
                Some((_, n)) => *n += 1,
                None => counts.push((d.tracked.finding.check, 1)),
            }
        }
        self.shared.metrics.set_findings(&counts);
        if checks_run {
            // Quiet: judged, and nothing reported (a difference younger than its persistence,
            // such as kube-proxy one sync behind, does not hold a cordon).
            let quiet = |id: CheckId| {
                !unjudged.contains(&id) && !counts.iter().any(|(check, _)| *check == id)
            };
            if let Some(line) =
                self.cordon_release
                    .step(&mut *self.cluster, &self.config, &quiet, now)
            {
                let fix = crate::remediate::fixes::fix_named(&line.fix).map(|f| f.id());
                if let (Some(fix), Some(outcome)) = (fix, line.outcome()) {
                    self.shared
                        .metrics
                        .fix_outcome(fix, outcome, &line.subject, &line.detail);
                }
                self.journal_entry(line);
            }
        }
        self.publish_to_cluster(&decided, &reports, checks_run, &not_judged);
        {
            let mut doc = self.shared.status.write().expect("status lock");
            doc.report.findings = reports;
            doc.report.sources = snapshot.sources.clone();
            doc.journal = self.journal.recent(RECENT_JOURNAL).to_vec();
            doc.journal_health = self.journal.health();
            doc.source_health = self.sources.view();
            doc.not_judged = not_judged
                .into_iter()
                .map(|(check, why)| (check.to_string(), why))
                .collect();
        }
        self.show_connection();
        // Ready once every ruleset source the node uses was read once (a source it does not use,
        // such as nf_tables on an iptables-legacy-only node, does not hold it back).
        match self.sources.ready() {
            Ok(()) => self.shared.set_ready(),
            Err(waiting) => tracing::debug!(?waiting, "not ready yet"),
        }
    }

    /// Reads the node's opt-out label; logs when it changes.
    fn follow_node_mode(&mut self) {
        let mode = self.cluster.node_mode();
        if mode != self.node_mode {
            match mode {
                NodeMode::Configured => {
                    tracing::info!("node opt-out label removed: the configuration decides again")
                }
                NodeMode::DryRun => tracing::info!(
                    label = crate::runtime::cluster::NODE_MODE_LABEL,
                    "node labelled dry-run: no fix is applied on this node"
                ),
                NodeMode::Off => tracing::info!(
                    label = crate::runtime::cluster::NODE_MODE_LABEL,
                    "node labelled off: no check runs on this node"
                ),
            }
            self.node_mode = mode;
        }
    }

    /// Hands the cluster every enabled check's state and the pass's events (none of the checks
    /// when they did not run: the node is labelled `off`).
    fn publish_to_cluster(
        &mut self,
        decided: &[Decided],
        reports: &[FindingReport],
        checks_run: bool,
        not_judged: &[(CheckId, String)],
    ) {
        let reported: Vec<Reported<'_>> = decided
            .iter()
            .zip(reports)
            .map(|(d, r)| Reported {
                finding: &d.tracked.finding,
                fix: r.fix.as_ref(),
            })
            .collect();
        let (checks, mut events) = if checks_run {
            (
                check_states(&self.config, &reported, not_judged),
                self.transitions.next(&self.config, &reported),
            )
        } else {
            self.transitions.forget();
            (Vec::new(), Vec::new())
        };
        events.append(&mut self.fix_events);
        self.cluster.publish(ClusterReport { checks, events });
    }

    /// The API connection, the slot and the node's opt-out on /status, in the metrics and in
    /// readiness (`kubernetes.required` without a connection is not ready).
    fn show_connection(&self) {
        let connection = self.cluster.connection();
        self.shared.metrics.kube_connection(&connection);
        let unready = (self.config.kubernetes.required && !connection.connected).then(|| {
            format!(
                "kubernetes.required is true and the Kubernetes API is not connected ({})",
                connection.reason.as_deref().unwrap_or("no reason given")
            )
        });
        *self.shared.kube_unready.lock().expect("readiness lock") = unready;
        self.shared.status.write().expect("status lock").kubernetes = KubernetesState {
            connection,
            node_mode: match self.node_mode {
                NodeMode::Configured => None,
                NodeMode::DryRun => Some("dry-run"),
                NodeMode::Off => Some("off"),
            },
        };
    }

    /// Counts, journals and remembers what the decision loop did, and builds the reports. Also
    /// returns, per finding key, what the journal keeps of a fix that now awaits its proof.
    fn account(
        &mut self,
        decided: &[Decided],
        snapshot: &crate::model::snapshot::NodeSnapshot,
        now: SystemTime,
    ) -> (
        Vec<FindingReport>,
        HashMap<String, crate::journal::VerifySpec>,
    ) {
        let mut reports = Vec::with_capacity(decided.len());
        let mut verifying = HashMap::new();
        let mut circuit_open: HashMap<FixId, usize> = HashMap::new();
        let mut present = HashSet::with_capacity(decided.len());
        for d in decided {
            let finding = &d.tracked.finding;
            let key = finding.key();
            present.insert(key.clone());
            let report = match &d.step {
                Step::NoFix => None,
                Step::Held {
                    fix,
                    outcome,
                    detail,
                } => {
                    if *outcome == Outcome::SkippedCircuitOpen {
                        *circuit_open.entry(*fix).or_default() += 1;
                    }
                    let shown = self.ledger.held(&key, *fix, *outcome, detail);
                    if shown.changed {
                        self.shared
                            .metrics
                            .fix_outcome(*fix, *outcome, &finding.subject, detail);
                        if matches!(
                            outcome,
                            Outcome::SkippedCircuitOpen
                                | Outcome::Blocked
                                | Outcome::SkippedBudget
                                | Outcome::SkippedNoSlot
                        ) {
                            self.journal_entry(JournalEntry::new(
                                now,
                                Some(finding.check),
                                *fix,
                                &finding.subject,
                                &key,
                                *outcome,
                                detail,
                            ));
                        }
                    }
                    Some(shown.report)
                }
                Step::WouldApply { .. } => d.step.report(),
                Step::Executed(execution) => {
                    let fix = execution.report.name;
                    for outcome in &execution.outcomes {
                        self.shared.metrics.fix_outcome(
                            fix,
                            *outcome,
                            &finding.subject,
                            &execution.report.detail,
                        );
                    }
                    let outcome = execution.final_outcome();
                    self.ledger.acted(&key, outcome, execution.report.clone());
                    if let (Some(FixAction::SetPromisc { interface, .. }), Outcome::Applied) = (
                        finding.proposal.as_ref().and_then(|p| p.action.as_ref()),
                        outcome,
                    ) {
                        if let Some(spec) = self.pending.start(
                            &d.tracked,
                            fix,
                            interface,
                            snapshot,
                            &self.config,
                            now,
                        ) {
                            verifying.insert(key.clone(), spec);
                        }
                    }
                    Some(execution.report.clone())
                }
            };
            reports.push(FindingReport::new(&d.tracked, report));
        }
        self.ledger.retain(&present);
        for fix in crate::remediate::fixes::FIXES {
            self.shared
                .metrics
                .set_circuit_open(fix.id(), circuit_open.get(&fix.id()).copied().unwrap_or(0));
        }
        (reports, verifying)
    }

    /// Appends to the journal and keeps the guards' history in step with it (the history is
    /// built from the journal once, at start, not on every pass).
    fn journal_entry(&mut self, entry: JournalEntry) {
        record(&mut self.history, &entry);
        self.append(entry);
    }

    /// Appends a line already recorded in the history; a fix outcome worth an event becomes one.
    fn append(&mut self, entry: JournalEntry) {
        self.fix_events.extend(fix_event(&entry));
        if let Err(e) = self.journal.append(entry) {
            tracing::error!(error = %e, "journal write failed: the entry is kept in memory and written once the state directory is writable again (journalHealth.unwritten on /status)");
        }
    }

    /// Runs passes until `stop` is set: on wake-ups (at once, or spaced by `minPassInterval` when
    /// set; the wake-ups queued while a pass ran are served by one pass), on ticks,
    /// and on a full resync every `resyncInterval` (the probe decides what a resync re-reads).
    pub fn run(&mut self, wakes: Receiver<Wake>, stop: &AtomicBool) {
        let mut last_pass: Option<Instant> = None;
        // Only passes triggered by changes are spaced (when `minPassInterval` is set): a tick
        // pass just before an event must not delay the reaction to it.
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
                    break;
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
        self.shut_down();
    }

    /// Gives back the fix slot this node holds, whatever still uses it: a pending proof is
    /// finished by the next run, which takes a slot again if it must act.
    pub fn shut_down(&mut self) {
        self.slots.release_all(&mut *self.cluster);
        self.show_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{iptables_table, snapshot_with};
    use crate::http::ConfigState;
    use crate::model::ruleset::Backend;
    use crate::model::snapshot::NodeSnapshot;
    use crate::observe::nft_events::{Generation, NftEvent};
    use crate::runtime::fake::FakeNode;
    use std::path::PathBuf;

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
            e.note_change(&Wake::Nft(NftEvent::Committed(Generation {
                id: 7,
                pid: Some(4242),
                process: Some("cilium-agent".into()),
                chains: vec!["ip nat OLD_CILIUM_POST_nat".into()],
            })));
            e.note_change(&Wake::Nft(NftEvent::Committed(Generation {
                id: 8,
                pid: Some(99),
                process: Some("kube-proxy".into()),
                chains: vec!["ip nat KUBE-SERVICES".into()],
            })));
            now += 11;
        }
        e.pass(t(now));
        assert_eq!(fix_state(&e).as_deref(), Some("circuit-open"));
        {
            let doc = e.shared.status.read().unwrap();
            let detail = &doc.report.findings[0].fix.as_ref().unwrap().detail;
            assert!(
                detail.contains("re-added by cilium-agent (pid 4242)"),
                "{detail}"
            );
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
    fn a_one_shot_apply_journaled_meanwhile_holds_the_agents_cooldown() {
        let dir = temp_dir("oneshot");
        let node = FakeNode::new(stale_node());
        let config = Config::from_yaml(
            "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 0s, cooldown: 300s }\n",
        )
        .unwrap();
        let mut e = engine(&node, config.clone(), &dir);
        // A `check --apply` in another process flushes the chain and journals it.
        let finding = crate::detect::run_checks(&stale_node(), &config, &[])
            .into_iter()
            .next()
            .unwrap();
        let mut oneshot = Journal::open(&dir).unwrap();
        oneshot
            .append(crate::journal::JournalEntry::new(
                t(0),
                Some(finding.check),
                FixId::FLUSH_STALE_CHAIN,
                &finding.subject,
                &finding.key(),
                Outcome::Applied,
                "flushed by check --apply",
            ))
            .unwrap();
        e.pass(t(10));
        assert_eq!(fix_state(&e).as_deref(), Some("cooldown"));
        assert!(node.0.borrow().applied.is_empty(), "the agent held back");
        e.pass(t(301));
        assert_eq!(
            node.0.borrow().applied.len(),
            1,
            "acts once the cooldown ends"
        );
        assert_eq!(e.shared.status.read().unwrap().journal_health.picked_up, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn skipped_journal_lines_show_on_status_and_in_the_metric() {
        let dir = temp_dir("skipped");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("journal.jsonl"),
            "{\"time\":1.0,\"check\":null,\"fix\":\"flush-stale-chain\",\"subject\":\"s\",\"key\":\"k\",\"outcome\":\"applied\",\"detail\":\"\"}\n\
             garbage\n\
             {\"time\":2.0,\"check\":null,\"fix\":\"flush-stale-chain\",\"subject\":\"s\",\"key\":\"k\",\"outcome\":\"from-the-future\",\"detail\":\"\"}\n",
        )
        .unwrap();
        let node = FakeNode::new(stale_node());
        let mut e = engine(&node, Config::default(), &dir);
        e.pass(t(0));
        let doc = e.shared.status.read().unwrap();
        assert_eq!(doc.journal_health.entries, 2);
        assert_eq!(doc.journal_health.skipped_lines.get("corrupt"), Some(&1));
        assert_eq!(
            doc.journal_health.skipped_lines.get("unknown-outcome"),
            Some(&1)
        );
        let json = serde_json::to_value(&*doc).unwrap();
        assert_eq!(json["journalHealth"]["skippedLines"]["corrupt"], 1);
        drop(doc);
        let text = e.shared.metrics.encode();
        assert!(
            text.contains("netmend_journal_skipped_lines_total{reason=\"corrupt\"} 1"),
            "{text}"
        );
        assert!(text.contains("netmend_journal_skipped_lines_total{reason=\"unknown-outcome\"} 1"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_re_add_is_unknown_without_a_transaction_for_its_chain_and_legacy_says_how_it_was_seen() {
        for (backend, expected) in [
            (Backend::Nft, UNKNOWN_READD),
            (Backend::Legacy, LEGACY_READD),
        ] {
            let dir = temp_dir(&format!("readd-{}", backend.as_str()));
            let stale = || {
                let table = || {
                    vec![iptables_table(
                        backend,
                        "nat",
                        ":POSTROUTING ACCEPT\n:CILIUM_POST_nat -\n:OLD_CILIUM_POST_nat -\n-A POSTROUTING -j CILIUM_POST_nat\n-A OLD_CILIUM_POST_nat -j ACCEPT\n",
                    )]
                };
                match backend {
                    Backend::Nft => snapshot_with(Some(table()), None),
                    Backend::Legacy => snapshot_with(Some(Vec::new()), Some(table())),
                }
            };
            let node = FakeNode::new(stale());
            let config = Config::from_yaml(
                "mode: enforce\nchecks:\n  cilium-stale-backup-chain: { staleAfter: 0s }\nfixes:\n  flush-stale-chain: { enabled: true, confirmFor: 0s, cooldown: 10s, maxAttempts: 2 }\n",
            )
            .unwrap();
            let mut e = engine(&node, config, &dir);
            e.pass(t(0));
            node.0.borrow_mut().snapshot = stale();
            // Another chain's writer is not this one's.
            e.note_change(&Wake::Nft(NftEvent::Committed(Generation {
                id: 8,
                pid: Some(99),
                process: Some("kube-proxy".into()),
                chains: vec!["ip nat KUBE-SERVICES".into()],
            })));
            e.pass(t(11));
            let readded: Vec<_> = e
                .journal
                .entries()
                .iter()
                .filter_map(|entry| entry.readded_by.clone())
                .collect();
            assert!(!readded.is_empty(), "{:?}", e.journal.entries());
            assert!(readded.iter().all(|r| r == expected), "{readded:?}");
            std::fs::remove_dir_all(dir).unwrap();
        }
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
