//! Cluster-wide fix slots: at most `fixSlots` nodes apply fixes at the same time. Each slot is a
//! Lease `netmend-fix-slot-<i>` in netmend's namespace whose `holderIdentity` is the node
//! holding it.
//!
//! Taking a slot: for each slot in turn, GET it. It is free when it does not exist (then create
//! it; 409 = another node created it first), when it has no holder, when its holder is this node,
//! or when its record has not changed for its lease duration, judged on this node's clock from
//! when this node first saw that resourceVersion (as leader election does: the remote renewTime
//! is never compared with the local clock). A free slot is taken by PUT with the resourceVersion
//! just read; 409 means another node took it first, and the next slot is tried. While held, the
//! slot is renewed every third of the lease; it is released (holder cleared) when the engine is
//! done, when the engine gave up waiting for it, after [`MAX_HOLD`], and at shutdown. Any failure
//! to read or take a slot is "no slot" (fail closed).
//!
//! The [`SlotKeeper`] runs on a tokio task and owns all of that; the engine's synchronous thread
//! talks to it through [`SlotClient`], which never waits longer than it is told to.
//!
//! The same keeper holds a single named Lease for as long as it is wanted ([`LeaseKind::Keeper`]):
//! the leader Lease of a cluster-wide task (the API server Service keeper), taken and renewed the
//! same way, without the cap on how long it is held.
//!
//! Its tests (the scripted wire format, and nodes competing through the in-memory fake) make
//! this file long.

use crate::cluster::client::{ApiCalls, CallError};
use crate::cluster::{micro_time, WallClock};
use crate::model::finding::FixId;
use crate::runtime::cluster::SlotDecision;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The Lease of slot `index`.
pub fn slot_name(index: u32) -> String {
    format!("netmend-fix-slot-{index}")
}

/// The annotation naming the fix a slot was taken for (for people reading the Lease).
pub const FIX_ANNOTATION: &str = "netmend.io/fix";

/// A slot held longer than this is released even if the engine never said it was done: no fix
/// and its verification take that long, and a lock that never goes away blocks every node.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// How many commands from the engine may wait for the keeper.
const COMMAND_QUEUE: usize = 8;

#[derive(Debug, Clone)]
pub struct SlotSettings {
    pub count: u32,
    pub lease: Duration,
    pub holder: String,
    pub namespace: String,
    pub kind: LeaseKind,
}

/// What the Leases are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseKind {
    /// Fix slots `netmend-fix-slot-<i>`: held for one fix, at most [`MAX_HOLD`], shown on
    /// `/status` as the slot held.
    FixSlots,
    /// One Lease of this name, held for as long as its task runs (`count` is 1).
    Keeper { name: &'static str },
}

/// A resourceVersion of a slot and when this node first saw it.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    since: Instant,
}

#[derive(Debug, Clone)]
struct Held {
    index: u32,
    /// The Lease as last written (its resourceVersion is the one to update with).
    lease: Lease,
    taken_at: Instant,
    renewed_at: Instant,
    next_renew: Instant,
}

/// Takes, renews and releases this node's slot.
pub struct SlotKeeper {
    calls: ApiCalls,
    leases: Api<Lease>,
    settings: SlotSettings,
    wall: WallClock,
    observed: HashMap<u32, Observed>,
    held: Option<Held>,
    /// The other holders the last [`SlotKeeper::acquire`] found.
    holders: Vec<String>,
}

/// What the engine asks of the keeper.
pub enum SlotCommand {
    Acquire(Arc<Ticket>),
    Release,
}

impl SlotKeeper {
    pub fn new(calls: ApiCalls, settings: SlotSettings, wall: WallClock) -> SlotKeeper {
        let leases = Api::namespaced(calls.requests.clone(), &settings.namespace);
        SlotKeeper {
            calls,
            leases,
            settings,
            wall,
            observed: HashMap::new(),
            held: None,
            holders: Vec::new(),
        }
    }

    /// The name of Lease `index`.
    fn lease_name(&self, index: u32) -> String {
        match &self.settings.kind {
            LeaseKind::FixSlots => slot_name(index),
            LeaseKind::Keeper { name } => name.to_string(),
        }
    }

    /// Shows the slot held on `/status` (fix slots only).
    fn show_held(&self, index: Option<u32>) {
        if self.settings.kind == LeaseKind::FixSlots {
            self.calls.book.set_slot_held(index);
        }
    }

    /// The nodes that held the Leases when the last [`SlotKeeper::acquire`] found none free.
    pub fn holders(&self) -> &[String] {
        &self.holders
    }

    /// When the Lease held is due for renewal.
    pub fn next_renew(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.next_renew)
    }

    /// The slot held now.
    pub fn held(&self) -> Option<u32> {
        self.held.as_ref().map(|h| h.index)
    }

    /// Takes a slot for `fix`, or says why not.
    pub async fn acquire(&mut self, fix: FixId) -> SlotDecision {
        if let Some(index) = self.held() {
            return SlotDecision::Held { index };
        }
        let mut taken_by = Vec::new();
        let mut failures = Vec::new();
        self.holders.clear();
        for index in 0..self.settings.count {
            match self.try_slot(index, fix).await {
                Ok(Attempt::Taken(lease)) => {
                    let now = Instant::now();
                    self.held = Some(Held {
                        index,
                        lease: *lease,
                        taken_at: now,
                        renewed_at: now,
                        next_renew: now + self.settings.lease / 3,
                    });
                    tracing::info!(lease = %self.lease_name(index), %fix, "took the Lease");
                    return SlotDecision::Held { index };
                }
                Ok(Attempt::HeldBy { text, holder }) => {
                    taken_by.push(text);
                    self.holders.extend(holder);
                }
                Err(error) => failures.push(format!("{}: {error}", self.lease_name(index))),
            }
        }
        let reason = if failures.is_empty() {
            format!(
                "all {} fix slots are held by other nodes ({})",
                self.settings.count,
                taken_by.join(", ")
            )
        } else {
            format!("fix slots unavailable: {}", failures.join("; "))
        };
        tracing::info!(%fix, %reason, "no fix slot");
        SlotDecision::NoSlot { reason }
    }

    async fn try_slot(&mut self, index: u32, fix: FixId) -> Result<Attempt, CallError> {
        let name = self.lease_name(index);
        let what = format!("leases/{name}");
        let current = match self.calls.call("get", &what, self.leases.get(&name)).await {
            Ok(lease) => lease,
            Err(e) if e.status() == Some(404) => {
                let lease = self.claimed(index, None, fix);
                return match self
                    .calls
                    .call(
                        "create",
                        &what,
                        self.leases.create(&PostParams::default(), &lease),
                    )
                    .await
                {
                    Ok(lease) => Ok(Attempt::Taken(Box::new(lease))),
                    Err(e) if e.status() == Some(409) => Ok(Attempt::HeldBy {
                        text: format!("{name}: created by another node"),
                        holder: None,
                    }),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let holder = holder_of(&current);
        if !holder.is_empty() && holder != self.settings.holder && !self.expired(index, &current) {
            return Ok(Attempt::HeldBy {
                text: format!("{name}: {holder}"),
                holder: Some(holder),
            });
        }
        let lease = self.claimed(index, Some(&current), fix);
        match self
            .calls
            .call(
                "update",
                &what,
                self.leases.replace(&name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(lease) => Ok(Attempt::Taken(Box::new(lease))),
            Err(e) if e.status() == Some(409) => Ok(Attempt::HeldBy {
                text: format!("{name}: taken by another node"),
                holder: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether `lease` (held by another node) has not changed for its duration, on this node's
    /// clock since this node first saw its resourceVersion.
    fn expired(&mut self, index: u32, lease: &Lease) -> bool {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(self.settings.lease);
        let now = Instant::now();
        match self.observed.get(&index) {
            Some(seen) if seen.resource_version == version => now - seen.since >= duration,
            _ => {
                self.observed.insert(
                    index,
                    Observed {
                        resource_version: version,
                        since: now,
                    },
                );
                false
            }
        }
    }

    /// The Lease of slot `index` held by this node, from `current` when it exists.
    fn claimed(&self, index: u32, current: Option<&Lease>, fix: FixId) -> Lease {
        let now = micro_time((self.wall)());
        let mut lease = current.cloned().unwrap_or_else(|| Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.lease_name(index)),
                namespace: Some(self.settings.namespace.clone()),
                ..Default::default()
            },
            spec: None,
        });
        let previous = current.map(holder_of).unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if current.is_none() {
            spec.lease_transitions = Some(0);
        }
        if previous != self.settings.holder {
            spec.acquire_time = Some(now.clone());
            if current.is_some() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.holder_identity = Some(self.settings.holder.clone());
        spec.lease_duration_seconds = Some(self.settings.lease.as_secs().max(1) as i32);
        spec.renew_time = Some(now);
        if self.settings.kind == LeaseKind::FixSlots {
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(FIX_ANNOTATION.to_string(), fix.to_string());
        }
        lease
    }

    /// Renews the slot held, releases it after [`MAX_HOLD`], and gives it up when it was lost.
    pub async fn renew(&mut self) {
        let Some(held) = self.held.clone() else {
            return;
        };
        let now = Instant::now();
        if self.settings.kind == LeaseKind::FixSlots && now - held.taken_at >= MAX_HOLD {
            tracing::warn!(slot = %slot_name(held.index), "fix slot held for {}: released", humantime::format_duration(MAX_HOLD));
            self.release().await;
            return;
        }
        let name = self.lease_name(held.index);
        let what = format!("leases/{name}");
        let mut lease = held.lease.clone();
        for _ in 0..2 {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(micro_time((self.wall)()));
            }
            let outcome = self
                .calls
                .call(
                    "update",
                    &what,
                    self.leases.replace(&name, &PostParams::default(), &lease),
                )
                .await;
            match outcome {
                Ok(written) => {
                    let now = Instant::now();
                    if let Some(h) = self.held.as_mut() {
                        h.lease = written;
                        h.renewed_at = now;
                        h.next_renew = now + self.settings.lease / 3;
                    }
                    return;
                }
                Err(e) if e.status() == Some(409) => {
                    // Changed under us: still ours (our own earlier write, or a retried one)?
                    match self.calls.call("get", &what, self.leases.get(&name)).await {
                        Ok(current) if holder_of(&current) == self.settings.holder => {
                            lease.metadata.resource_version = current.metadata.resource_version;
                            continue;
                        }
                        Ok(current) => {
                            return self.lost(&format!("now held by {:?}", holder_of(&current)))
                        }
                        Err(e) => return self.renewal_failed(&e),
                    }
                }
                Err(e) if e.status() == Some(404) => return self.lost("the Lease was deleted"),
                Err(e) => return self.renewal_failed(&e),
            }
        }
        self.renewal_failed(&CallError::Invalid("conflicting writes".into()));
    }

    fn renewal_failed(&mut self, error: &CallError) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now - held.renewed_at >= self.settings.lease {
            let reason = format!(
                "not renewed for {}: {error}",
                humantime::format_duration(self.settings.lease)
            );
            self.lost(&reason);
        } else {
            held.next_renew = now + self.settings.lease / 10;
        }
    }

    fn lost(&mut self, why: &str) {
        if let Some(held) = self.held.take() {
            tracing::warn!(lease = %self.lease_name(held.index), why, "lost the Lease");
        }
        self.show_held(None);
    }

    /// Frees the slot held, if any: clears the holder with the resourceVersion last written. A
    /// release that fails leaves the slot to expire on its own.
    pub async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        self.show_held(None);
        let name = self.lease_name(held.index);
        let what = format!("leases/{name}");
        let mut lease = held.lease;
        for _ in 0..2 {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.acquire_time = None;
                spec.renew_time = None;
            }
            if let Some(annotations) = lease.metadata.annotations.as_mut() {
                annotations.remove(FIX_ANNOTATION);
            }
            match self
                .calls
                .call(
                    "update",
                    &what,
                    self.leases.replace(&name, &PostParams::default(), &lease),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %name, "released the Lease");
                    return;
                }
                Err(e) if e.status() == Some(409) => {
                    match self.calls.call("get", &what, self.leases.get(&name)).await {
                        Ok(current) if holder_of(&current) == self.settings.holder => {
                            lease = current;
                            continue;
                        }
                        Ok(_) => return,
                        Err(e) => {
                            tracing::warn!(lease = %name, error = %e, "cannot release the Lease: it expires on its own");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot release the Lease: it expires on its own");
                    return;
                }
            }
        }
    }

    /// Serves the engine's commands and renews the slot held until `cancel`, then releases it
    /// and says so on `done`.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<SlotCommand>,
        cancel: CancellationToken,
        done: std::sync::mpsc::Sender<()>,
    ) {
        loop {
            let renew_at = self
                .held
                .as_ref()
                .map(|h| h.next_renew)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                command = commands.recv() => match command {
                    None => break,
                    Some(SlotCommand::Acquire(ticket)) => {
                        let decision = self.acquire(ticket.fix).await;
                        let book = self.calls.book.clone();
                        let accepted = ticket.answer(decision.clone(), || {
                            // Shown as held only once the engine has it.
                            if let SlotDecision::Held { index } = decision {
                                book.set_slot_held(Some(index));
                            }
                        });
                        if !accepted && matches!(decision, SlotDecision::Held { .. }) {
                            tracing::info!("the engine stopped waiting for the fix slot: released");
                            self.release().await;
                        }
                    }
                    Some(SlotCommand::Release) => self.release().await,
                },
                _ = tokio::time::sleep_until(renew_at), if self.held.is_some() => self.renew().await,
            }
        }
        self.release().await;
        let _ = done.send(());
    }
}

enum Attempt {
    Taken(Box<Lease>),
    /// Held by another node: what to say, and the holder when the Lease named one.
    HeldBy {
        text: String,
        holder: Option<String>,
    },
}

fn holder_of(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// One request for a slot, answered by the keeper or abandoned by the engine (whichever comes
/// first wins; a slot taken for an abandoned request is released at once).
pub struct Ticket {
    fix: FixId,
    state: Mutex<TicketState>,
    answered: Condvar,
}

enum TicketState {
    Waiting,
    Answered(SlotDecision),
    Abandoned,
}

impl Ticket {
    fn new(fix: FixId) -> Ticket {
        Ticket {
            fix,
            state: Mutex::new(TicketState::Waiting),
            answered: Condvar::new(),
        }
    }

    /// The keeper's answer; false when the engine no longer waits. `accepted` runs before the
    /// engine sees the answer.
    fn answer(&self, decision: SlotDecision, accepted: impl FnOnce()) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            TicketState::Abandoned => false,
            _ => {
                accepted();
                *state = TicketState::Answered(decision);
                self.answered.notify_all();
                true
            }
        }
    }

    /// Waits at most `wait` for the answer; abandons the request when there is none.
    fn wait(&self, wait: Duration) -> Option<SlotDecision> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, _) = self
            .answered
            .wait_timeout_while(state, wait, |s| matches!(s, TicketState::Waiting))
            .unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, TicketState::Abandoned) {
            TicketState::Answered(decision) => Some(decision),
            _ => None,
        }
    }
}

/// The engine's side: asks the keeper and waits a bounded time.
pub struct SlotClient {
    commands: mpsc::Sender<SlotCommand>,
    book: Arc<crate::cluster::client::ConnectionBook>,
}

impl SlotClient {
    /// The keeper (to be run on a tokio task) and the engine's side of it.
    pub fn pair(
        calls: ApiCalls,
        settings: SlotSettings,
        wall: WallClock,
    ) -> (SlotKeeper, SlotClient, mpsc::Receiver<SlotCommand>) {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let client = SlotClient {
            commands,
            book: calls.book.clone(),
        };
        (SlotKeeper::new(calls, settings, wall), client, receiver)
    }

    /// A slot for `fix`, waiting at most `wait` for the keeper.
    pub fn acquire(&self, fix: FixId, wait: Duration) -> SlotDecision {
        if let Some(index) = self.book.snapshot().slot_held {
            return SlotDecision::Held { index };
        }
        let ticket = Arc::new(Ticket::new(fix));
        match self.commands.try_send(SlotCommand::Acquire(ticket.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return SlotDecision::NoSlot {
                    reason: "the fix slot keeper is busy with earlier requests".into(),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return SlotDecision::NoSlot {
                    reason: "the fix slot keeper has stopped".into(),
                }
            }
        }
        ticket.wait(wait).unwrap_or_else(|| SlotDecision::NoSlot {
            reason: format!(
                "no answer about the fix slots within {}",
                humantime::format_duration(wait)
            ),
        })
    }

    /// Frees the slot held; never waits.
    pub fn release(&self) {
        self.book.set_slot_held(None);
        if self.commands.try_send(SlotCommand::Release).is_err() {
            tracing::warn!("cannot ask for the fix slot's release: it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{
        mock_calls, next_request, reply, status_body, FakeApi, Fault, FaultSwitch,
    };
    use serde_json::json;
    use std::time::SystemTime;

    const NS: &str = "netmend";
    const FIX: FixId = FixId::new("flush-stale-chain");
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn settings(holder: &str, count: u32) -> SlotSettings {
        SlotSettings {
            count,
            lease: Duration::from_secs(30),
            holder: holder.into(),
            kind: LeaseKind::FixSlots,
            namespace: NS.into(),
        }
    }

    fn fixed_wall() -> WallClock {
        Arc::new(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn keeper(calls: ApiCalls, holder: &str, count: u32) -> SlotKeeper {
        SlotKeeper::new(calls, settings(holder, count), fixed_wall())
    }

    fn node(fake: &FakeApi, holder: &str, count: u32) -> (SlotKeeper, FaultSwitch) {
        let (calls, faults) = fake.calls(TIMEOUT);
        (keeper(calls, holder, count), faults)
    }

    #[tokio::test]
    async fn a_missing_slot_is_created_with_this_node_as_holder() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let mut keeper = keeper(calls, "node-a", 1);
        let task = tokio::spawn(async move {
            let d = keeper.acquire(FIX).await;
            (d, keeper)
        });
        let (get, send) = next_request(&mut api).await;
        assert_eq!(get.method, "GET");
        assert_eq!(
            get.path,
            "/apis/coordination.k8s.io/v1/namespaces/netmend/leases/netmend-fix-slot-0"
        );
        reply(
            send,
            404,
            status_body(404, "NotFound", "leases \"netmend-fix-slot-0\" not found"),
        );
        let (create, send) = next_request(&mut api).await;
        assert_eq!(create.method, "POST");
        assert_eq!(
            create.path,
            "/apis/coordination.k8s.io/v1/namespaces/netmend/leases"
        );
        assert_eq!(create.query, "");
        assert_eq!(create.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            create.body,
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "netmend-fix-slot-0", "namespace": "netmend",
                             "annotations": {"netmend.io/fix": "flush-stale-chain"}},
                "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 30,
                         "leaseTransitions": 0,
                         "acquireTime": "2023-11-14T22:13:20.000000Z",
                         "renewTime": "2023-11-14T22:13:20.000000Z"}
            })
        );
        let mut created = create.body.clone();
        created["metadata"]["resourceVersion"] = json!("7");
        reply(send, 201, created);
        let (decision, keeper) = task.await.unwrap();
        assert_eq!(decision, SlotDecision::Held { index: 0 });
        assert_eq!(keeper.held(), Some(0));
        let errors = keeper.calls.book.snapshot().request_errors;
        assert_eq!(errors[&("get".to_string(), "404".to_string())], 1);
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_with_the_resource_version_just_read_and_409_moves_on() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let mut keeper = keeper(calls, "node-a", 2);
        let task = tokio::spawn(async move { keeper.acquire(FIX).await });
        let (_, send) = next_request(&mut api).await;
        reply(
            send,
            200,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "netmend-fix-slot-0", "namespace": NS, "resourceVersion": "41"},
                   "spec": {"leaseDurationSeconds": 30, "leaseTransitions": 2}}),
        );
        let (put, send) = next_request(&mut api).await;
        assert_eq!(put.method, "PUT");
        assert_eq!(
            put.path,
            "/apis/coordination.k8s.io/v1/namespaces/netmend/leases/netmend-fix-slot-0"
        );
        assert_eq!(put.body["metadata"]["resourceVersion"], "41");
        assert_eq!(put.body["spec"]["holderIdentity"], "node-a");
        assert_eq!(put.body["spec"]["leaseTransitions"], 3);
        reply(
            send,
            409,
            status_body(409, "Conflict", "the object has been modified"),
        );
        let (get, send) = next_request(&mut api).await;
        assert_eq!(get.method, "GET");
        assert!(get.path.ends_with("/netmend-fix-slot-1"), "{}", get.path);
        reply(
            send,
            200,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "netmend-fix-slot-1", "namespace": NS, "resourceVersion": "50"},
                   "spec": {"holderIdentity": "node-b", "leaseDurationSeconds": 30}}),
        );
        match task.await.unwrap() {
            SlotDecision::NoSlot { reason } => {
                assert!(reason.contains("all 2 fix slots are held"), "{reason}");
                assert!(reason.contains("netmend-fix-slot-1: node-b"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn forbidden_or_failing_api_means_no_slot_with_the_reason() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let mut keeper = keeper(calls, "node-a", 1);
        let task = tokio::spawn(async move { keeper.acquire(FIX).await });
        let (_, send) = next_request(&mut api).await;
        reply(
            send,
            403,
            status_body(403, "Forbidden", "leases is forbidden: User cannot get"),
        );
        match task.await.unwrap() {
            SlotDecision::NoSlot { reason } => {
                assert!(
                    reason.contains("netmend-fix-slot-0: 403 Forbidden"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_that_does_not_answer_means_no_slot_after_the_timeout() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let mut keeper = keeper(calls, "node-a", 1);
        let started = Instant::now();
        let task = tokio::spawn(async move { keeper.acquire(FIX).await });
        let (_, _unanswered) = next_request(&mut api).await;
        match task.await.unwrap() {
            SlotDecision::NoSlot { reason } => {
                assert!(reason.contains("no answer within 10s"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Instant::now() - started, TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn two_nodes_one_slot_the_second_waits_until_release() {
        let fake = FakeApi::default();
        let (mut a, _) = node(&fake, "node-a", 1);
        let (mut b, _) = node(&fake, "node-b", 1);
        assert_eq!(a.acquire(FIX).await, SlotDecision::Held { index: 0 });
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "node-a");
        assert!(matches!(b.acquire(FIX).await, SlotDecision::NoSlot { .. }));
        // a asks again while holding: the same slot, no request
        let before = fake.state.lock().unwrap().log.len();
        assert_eq!(a.acquire(FIX).await, SlotDecision::Held { index: 0 });
        assert_eq!(fake.state.lock().unwrap().log.len(), before);
        a.release().await;
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "");
        assert_eq!(a.held(), None);
        assert_eq!(b.acquire(FIX).await, SlotDecision::Held { index: 0 });
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "node-b");
        let lease = fake.lease(NS, "netmend-fix-slot-0").unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        assert_eq!(
            lease["metadata"]["annotations"]["netmend.io/fix"],
            "flush-stale-chain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn three_nodes_two_slots_at_most_two_hold() {
        let fake = FakeApi::default();
        let mut nodes: Vec<SlotKeeper> = ["a", "b", "c"]
            .iter()
            .map(|n| node(&fake, n, 2).0)
            .collect();
        let mut decisions = Vec::new();
        for keeper in nodes.iter_mut() {
            decisions.push(keeper.acquire(FIX).await);
        }
        assert_eq!(decisions[0], SlotDecision::Held { index: 0 });
        assert_eq!(decisions[1], SlotDecision::Held { index: 1 });
        assert!(
            matches!(&decisions[2], SlotDecision::NoSlot { reason } if reason.contains("all 2"))
        );
        nodes[0].release().await;
        assert_eq!(nodes[2].acquire(FIX).await, SlotDecision::Held { index: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_racing_for_one_slot_never_both_get_it() {
        let fake = FakeApi::default();
        let (mut a, _) = node(&fake, "node-a", 1);
        let (mut b, _) = node(&fake, "node-b", 1);
        let (mut c, _) = node(&fake, "node-c", 1);
        for round in 0..20 {
            // all three read the same state, then race to write it
            let (da, db, dc) = tokio::join!(a.acquire(FIX), b.acquire(FIX), c.acquire(FIX));
            let winners: Vec<&str> = [("node-a", &da), ("node-b", &db), ("node-c", &dc)]
                .iter()
                .filter(|(_, d)| matches!(d, SlotDecision::Held { .. }))
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {da:?} {db:?} {dc:?}");
            assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), winners[0]);
            for keeper in [&mut a, &mut b, &mut c] {
                keeper.release().await;
            }
        }
        // the losers lost on a 409 (create or update), not by reading a taken slot
        let conflicts: u64 = [&a, &b, &c]
            .iter()
            .flat_map(|k| k.calls.book.snapshot().request_errors.into_iter())
            .filter(|((_, code), _)| code == "409")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(conflicts, 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_stops_renewing_loses_the_slot_after_the_lease_on_the_local_clock() {
        let fake = FakeApi::default();
        let (mut a, a_faults) = node(&fake, "node-a", 1);
        let (mut b, _) = node(&fake, "node-b", 1);
        assert_eq!(a.acquire(FIX).await, SlotDecision::Held { index: 0 });
        // a renews on time: b never sees the same record for 30s
        for _ in 0..6 {
            assert!(matches!(b.acquire(FIX).await, SlotDecision::NoSlot { .. }));
            tokio::time::advance(Duration::from_secs(10)).await;
            a.renew().await;
            assert_eq!(a.held(), Some(0));
        }
        // a is cut off: its renewals fail, b judges the record unchanged from when it saw it
        a_faults.set(Some(Fault::Status(503)));
        assert!(matches!(b.acquire(FIX).await, SlotDecision::NoSlot { .. }));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(b.acquire(FIX).await, SlotDecision::NoSlot { .. }));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.acquire(FIX).await, SlotDecision::Held { index: 0 });
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "node-b");
        // a notices when it cannot renew for a whole lease
        a.renew().await;
        assert_eq!(a.held(), None);
        assert_eq!(a.calls.book.snapshot().slot_held, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_finds_another_holder_gives_the_slot_up() {
        let fake = FakeApi::default();
        let (mut a, _) = node(&fake, "node-a", 1);
        assert_eq!(a.acquire(FIX).await, SlotDecision::Held { index: 0 });
        {
            let mut state = fake.state.lock().unwrap();
            let lease = state.leases.get_mut("netmend/netmend-fix-slot-0").unwrap();
            lease["spec"]["holderIdentity"] = json!("node-z");
            lease["metadata"]["resourceVersion"] = json!("999");
        }
        a.renew().await;
        assert_eq!(a.held(), None);
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "node-z");
    }

    #[tokio::test(start_paused = true)]
    async fn the_keeper_renews_every_third_of_the_lease_and_releases_after_the_cap() {
        let fake = FakeApi::default();
        let (calls, _) = fake.calls(TIMEOUT);
        let (keeper, client, commands) =
            SlotClient::pair(calls, settings("node-a", 1), fixed_wall());
        let cancel = CancellationToken::new();
        let (done_tx, _done) = std::sync::mpsc::channel();
        tokio::spawn(keeper.run(commands, cancel.clone(), done_tx));
        let client = Arc::new(client);
        let c = client.clone();
        let decision = tokio::task::spawn_blocking(move || c.acquire(FIX, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(decision, SlotDecision::Held { index: 0 });
        let puts = || fake.requests("PUT", "/apis/coordination.k8s.io").len();
        assert_eq!(puts(), 0);
        tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(1)).await;
        assert_eq!(puts(), 1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(puts(), 4);
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "node-a");
        tokio::time::sleep(MAX_HOLD).await;
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "");
        assert_eq!(client.book.snapshot().slot_held, None);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn release_and_shutdown_free_the_slot() {
        let fake = FakeApi::default();
        let (calls, _) = fake.calls(TIMEOUT);
        let (keeper, client, commands) =
            SlotClient::pair(calls, settings("node-a", 1), fixed_wall());
        let cancel = CancellationToken::new();
        let (done_tx, done) = std::sync::mpsc::channel();
        let task = tokio::spawn(keeper.run(commands, cancel.clone(), done_tx));
        let client = Arc::new(client);
        let acquire = |client: Arc<SlotClient>| {
            tokio::task::spawn_blocking(move || client.acquire(FIX, Duration::from_secs(5)))
        };
        assert_eq!(
            acquire(client.clone()).await.unwrap(),
            SlotDecision::Held { index: 0 }
        );
        client.release();
        assert_eq!(client.book.snapshot().slot_held, None);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "");
        assert_eq!(
            acquire(client.clone()).await.unwrap(),
            SlotDecision::Held { index: 0 }
        );
        cancel.cancel();
        task.await.unwrap();
        done.recv().unwrap();
        assert_eq!(fake.holder(NS, "netmend-fix-slot-0"), "");
        match acquire(client.clone()).await.unwrap() {
            SlotDecision::NoSlot { reason } => assert!(reason.contains("stopped"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_taken_after_the_engine_stopped_waiting_is_released_at_once() {
        let (calls, mut api) = mock_calls(TIMEOUT);
        let (keeper, client, commands) =
            SlotClient::pair(calls, settings("node-a", 1), fixed_wall());
        let cancel = CancellationToken::new();
        let (done_tx, _done) = std::sync::mpsc::channel();
        tokio::spawn(keeper.run(commands, cancel.clone(), done_tx));
        let client = Arc::new(client);
        let c = client.clone();
        let waiting =
            tokio::task::spawn_blocking(move || c.acquire(FIX, Duration::from_millis(50)));
        let (_, get) = next_request(&mut api).await;
        // the engine's thread gives up while the API is still thinking
        match waiting.await.unwrap() {
            SlotDecision::NoSlot { reason } => {
                assert!(
                    reason.contains("no answer about the fix slots within 50ms"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        reply(get, 404, status_body(404, "NotFound", "not found"));
        let (create, send) = next_request(&mut api).await;
        assert_eq!(create.method, "POST");
        let mut created = create.body.clone();
        created["metadata"]["resourceVersion"] = json!("3");
        reply(send, 201, created);
        let (release, send) = next_request(&mut api).await;
        assert_eq!(release.method, "PUT");
        assert_eq!(release.body["metadata"]["resourceVersion"], "3");
        assert_eq!(release.body["spec"].get("holderIdentity"), None);
        assert_eq!(release.body["metadata"]["annotations"], json!({}));
        reply(send, 200, release.body.clone());
        assert_eq!(client.book.snapshot().slot_held, None);
        cancel.cancel();
    }

    #[test]
    fn an_abandoned_ticket_refuses_a_late_answer() {
        let ticket = Ticket::new(FIX);
        assert_eq!(ticket.wait(Duration::from_millis(1)), None);
        assert!(!ticket.answer(SlotDecision::Held { index: 0 }, || panic!("not accepted")));
        let ticket = Ticket::new(FIX);
        let mut ran = false;
        assert!(ticket.answer(SlotDecision::Held { index: 3 }, || ran = true));
        assert!(ran);
        assert_eq!(
            ticket.wait(Duration::from_millis(1)),
            Some(SlotDecision::Held { index: 3 })
        );
    }
}
