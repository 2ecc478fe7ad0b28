//! The L2 part of a snapshot: links, Cilium's L2 responder map, and ARP accounting on the
//! interfaces that carry ARP targets (configured ones and the responder map's keys).
//!
//! Two ways to count ARP:
//! - a one-shot window ([`L2Watch::observe_window`]): the counters of exactly that window, with the
//!   responder map read at both ends of it;
//! - continuous ([`L2Watch::fill`] in the agent): one packet tap per target interface stays open;
//!   each snapshot drains it and keeps the cumulative counters with their time, so the window's
//!   counters are the difference between now and the oldest sample inside the configured window.
//!   Taps are opened and closed as targets come and go; a vanished interface closes its tap.
//!   A target that became this node's to answer inside the window (an HA failover: the VIP was
//!   assigned here a moment ago) is counted only from the first sample after that, so the
//!   requests it rightly left unanswered as a standby are not held against it.

use crate::config::Config;
use crate::detect::arp_unanswered::{ownership, ArpInputs};
use crate::detect::arp_watch_list;
use crate::model::l2::{ArpCounters, ArpTarget, ResponderMap, TargetCounts, WatchedInterface};
use crate::model::snapshot::{NodeSnapshot, SourceStatus};
use crate::observe::arp::{observe_window_watching, ArpMonitor};
use crate::observe::bpf::read_responder_map;
use crate::observe::links::read_links;
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One target's counts `now - before`; all of `now` when `before` is another entry (none, or
/// one that was aged out since and admitted again from zero).
pub fn target_delta(now: &TargetCounts, before: Option<&TargetCounts>) -> TargetCounts {
    match before.filter(|before| before.admitted == now.admitted) {
        None => now.clone(),
        Some(before) => TargetCounts {
            requests_received: now
                .requests_received
                .saturating_sub(before.requests_received),
            replies_sent: now.replies_sent.saturating_sub(before.replies_sent),
            replies_received: now.replies_received.saturating_sub(before.replies_received),
            requests_sent: now.requests_sent.saturating_sub(before.requests_sent),
            requesters: now.requesters.clone(),
            requesters_dropped: now
                .requesters_dropped
                .saturating_sub(before.requesters_dropped),
            admitted: now.admitted,
            last_seen: now.last_seen,
        },
    }
}

/// Restricts `window` (the counters of one tap over the window) to what happened since each
/// target became owned: for a target owned since after the oldest sample, its counts are taken
/// from the first sample at or after that moment. `samples` are oldest first, `total` the newest.
pub fn since_owned(
    window: &mut ArpCounters,
    total: &ArpCounters,
    samples: &VecDeque<(Instant, ArpCounters)>,
    owned_since: &BTreeMap<Ipv4Addr, Instant>,
) {
    let Some((oldest, _)) = samples.front() else {
        return;
    };
    for (ip, since) in owned_since {
        if since <= oldest {
            continue;
        }
        let Some(now) = total.targets.get(ip) else {
            continue;
        };
        let base = samples
            .iter()
            .find(|(at, _)| at >= since)
            .map_or(total, |(_, c)| c);
        window
            .targets
            .insert(*ip, target_delta(now, base.targets.get(ip)));
    }
}

/// Counters `later - earlier` per target (requesters as seen by `later`).
pub fn counters_delta(later: &ArpCounters, earlier: &ArpCounters) -> ArpCounters {
    let mut out = later.clone();
    for (ip, now) in out.targets.iter_mut() {
        *now = target_delta(now, earlier.targets.get(ip));
    }
    out.frames = later.frames.saturating_sub(earlier.frames);
    out.malformed = later.malformed.saturating_sub(earlier.malformed);
    out.overflow = later.overflow.saturating_sub(earlier.overflow);
    out.evicted = later.evicted.saturating_sub(earlier.evicted);
    out.kernel_drops = later.kernel_drops.saturating_sub(earlier.kernel_drops);
    out.window_ms = later.window_ms.saturating_sub(earlier.window_ms);
    out
}

/// One open tap and its samples.
struct Tap {
    monitor: ArpMonitor,
    samples: VecDeque<(Instant, ArpCounters)>,
}

/// Reads links and the responder map, and counts ARP on the target interfaces.
pub struct L2Watch {
    map_path: PathBuf,
    window: Duration,
    /// The configuration's ARP and promisc checks are off: read links only.
    arp_enabled: bool,
    config: Option<Config>,
    taps: BTreeMap<u32, Tap>,
    responder_samples: VecDeque<(Instant, ResponderMap)>,
    /// Since when each watched (ifindex, address) has been this node's to answer.
    owned_since: BTreeMap<(u32, Ipv4Addr), Instant>,
    /// Result of the last one-shot window, handed to the next snapshot.
    window_result: Option<(Vec<ArpCounters>, Option<ResponderMap>)>,
}

impl Default for L2Watch {
    fn default() -> Self {
        L2Watch::new()
    }
}

impl L2Watch {
    pub fn new() -> L2Watch {
        L2Watch {
            map_path: PathBuf::from(crate::detect::arp_unanswered::DEFAULT_RESPONDER_MAP_PATH),
            window: Duration::from_secs(30),
            arp_enabled: true,
            config: None,
            taps: BTreeMap::new(),
            responder_samples: VecDeque::new(),
            owned_since: BTreeMap::new(),
            window_result: None,
        }
    }

    pub fn configure(&mut self, config: &Config) {
        let arp = crate::detect::arp_unanswered::settings(config);
        self.map_path = PathBuf::from(&arp.responder_map_path);
        self.window = arp.window;
        self.arp_enabled = config.check_enabled(crate::model::finding::CheckId::ARP_UNANSWERED);
        self.config = Some(config.clone());
    }

    fn read_responder(&self, snapshot: &mut NodeSnapshot) -> Option<ResponderMap> {
        let started = Instant::now();
        match read_responder_map(&self.map_path) {
            Ok(map) => {
                let mut status = SourceStatus::ok(started.elapsed());
                if map.status == crate::model::l2::ResponderStatus::NotPinned {
                    status.detail = Some(format!(
                        "{} is not pinned: Cilium L2 announcements are not in use",
                        map.path
                    ));
                } else {
                    status.rules = Some(map.entries.len());
                }
                snapshot.sources.insert("bpf".into(), status);
                Some(map)
            }
            Err(e) => {
                snapshot.sources.insert(
                    "bpf".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
                None
            }
        }
    }

    fn read_links(snapshot: &mut NodeSnapshot) {
        let started = Instant::now();
        match read_links() {
            Ok(links) => {
                snapshot.links = Some(links);
                snapshot
                    .sources
                    .insert("links".into(), SourceStatus::ok(started.elapsed()));
            }
            Err(e) => {
                snapshot.sources.insert(
                    "links".into(),
                    SourceStatus::failed(started.elapsed(), e.to_string()),
                );
            }
        }
    }

    /// One-shot: counts ARP on the target interfaces for `window`.
    pub fn observe_window(&mut self, window: Duration) {
        let mut probe = NodeSnapshot::default();
        Self::read_links(&mut probe);
        probe.responder = self.read_responder(&mut probe);
        let watch = match (&self.config, self.arp_enabled) {
            (Some(config), true) => arp_watch_list(&probe, config),
            _ => Vec::new(),
        };
        if watch.is_empty() {
            std::thread::sleep(window);
            self.window_result = None;
            return;
        }
        match observe_window_watching(&watch, window) {
            Ok(counters) => self.window_result = Some((counters, probe.responder)),
            Err(e) => {
                tracing::warn!(error = %e, "ARP accounting failed");
                self.window_result = None;
            }
        }
    }

    /// Adds links, the responder map and ARP counters to a one-shot snapshot.
    pub fn fill_once(&mut self, snapshot: &mut NodeSnapshot) {
        Self::read_links(snapshot);
        let now = self.read_responder(snapshot);
        let watch = match (&self.config, self.arp_enabled) {
            (Some(config), true) => arp_watch_list(snapshot, config),
            _ => Vec::new(),
        };
        let standby = self.track_ownership(snapshot, now.as_ref(), &watch, Instant::now());
        match self.window_result.take() {
            Some((counters, before)) => {
                snapshot.sources.insert(
                    "arp".into(),
                    arp_status(&counters, &standby, Duration::ZERO),
                );
                snapshot.arp_cumulative = Some(counters.clone());
                snapshot.arp = Some(counters);
                snapshot.responder = before;
                snapshot.responder_after = now;
            }
            None => {
                snapshot.responder = now;
            }
        }
    }

    /// Agent: adds links, the responder map and the window's ARP counters from the open taps,
    /// opening taps for new targets and closing those no longer needed.
    pub fn fill(&mut self, snapshot: &mut NodeSnapshot) {
        Self::read_links(snapshot);
        let current = self.read_responder(snapshot);
        let now = Instant::now();
        snapshot.responder = current.clone();
        let watch = match (&self.config, self.arp_enabled) {
            (Some(config), true) => arp_watch_list(snapshot, config),
            _ => Vec::new(),
        };
        self.taps.retain(|ifindex, tap| {
            watch.iter().any(|w| w.ifindex == *ifindex) && !tap.monitor.is_gone()
        });
        for w in &watch {
            if let Some(tap) = self.taps.get_mut(&w.ifindex) {
                tap.monitor.set_watched(&w.targets);
                continue;
            }
            let (ifindex, name) = (&w.ifindex, &w.interface);
            match ArpMonitor::open(*ifindex, name) {
                Ok(mut monitor) => {
                    monitor.set_watched(&w.targets);
                    self.taps.insert(
                        *ifindex,
                        Tap {
                            monitor,
                            samples: VecDeque::new(),
                        },
                    );
                }
                Err(e) => tracing::warn!(interface = %name, error = %e, "cannot watch ARP"),
            }
        }
        let standby = self.track_ownership(snapshot, current.as_ref(), &watch, now);
        if self.taps.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut window_counters = Vec::with_capacity(self.taps.len());
        let mut cumulative = Vec::with_capacity(self.taps.len());
        for tap in self.taps.values_mut() {
            tap.monitor.drain();
            let total = tap.monitor.snapshot();
            tap.samples.push_back((now, total.clone()));
            while tap
                .samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
            {
                tap.samples.pop_front();
            }
            let oldest = &tap.samples.front().expect("just pushed").1;
            let mut delta = if tap.samples.len() > 1 {
                counters_delta(&total, oldest)
            } else {
                counters_delta(&total, &ArpCounters::new(total.ifindex, &total.interface))
            };
            let owned: BTreeMap<Ipv4Addr, Instant> = self
                .owned_since
                .iter()
                .filter(|((ifindex, _), _)| *ifindex == total.ifindex)
                .map(|((_, ip), since)| (*ip, *since))
                .collect();
            since_owned(&mut delta, &total, &tap.samples, &owned);
            window_counters.push(delta);
            cumulative.push(total);
        }
        if let Some(map) = current {
            self.responder_samples.push_back((now, map));
        }
        while self
            .responder_samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.responder_samples.pop_front();
        }
        snapshot.responder = self.responder_samples.front().map(|(_, m)| m.clone());
        snapshot.responder_after = self.responder_samples.back().map(|(_, m)| m.clone());
        snapshot.sources.insert(
            "arp".into(),
            arp_status(&window_counters, &standby, started.elapsed()),
        );
        snapshot.arp = Some(window_counters);
        snapshot.arp_cumulative = Some(cumulative);
    }
}

impl L2Watch {
    /// Notes since when each watched target is owned (assigned here, in the responder map, or
    /// configured always owned); a target that stops being owned is forgotten. Returns the
    /// watched targets that are not owned (a standby's VIPs), as `IP@interface`.
    fn track_ownership(
        &mut self,
        snapshot: &NodeSnapshot,
        responder: Option<&ResponderMap>,
        watch: &[WatchedInterface],
        now: Instant,
    ) -> Vec<String> {
        let mut standby = Vec::new();
        let links = snapshot.links.as_deref().unwrap_or_default();
        let configured = self
            .config
            .as_ref()
            .map(|c| {
                crate::detect::arp_unanswered::settings(c)
                    .targets
                    .as_slice()
            })
            .unwrap_or_default();
        let inputs = ArpInputs {
            targets: &[],
            counters: &[],
            responder,
            responder_after: None,
            links,
            addresses: snapshot.addresses.as_deref(),
        };
        let mut owned_now = BTreeMap::new();
        for w in watch {
            let Some(link) = links.iter().find(|l| l.ifindex == w.ifindex) else {
                continue;
            };
            for ip in &w.targets {
                let target = ArpTarget {
                    interface: w.interface.clone(),
                    ip: *ip,
                };
                let always = configured
                    .iter()
                    .any(|t| t.ip == *ip && t.interface == w.interface && t.always_owned);
                if ownership(&inputs, &target, link, always).is_some() {
                    let key = (w.ifindex, *ip);
                    let since = self.owned_since.get(&key).copied().unwrap_or(now);
                    owned_now.insert(key, since);
                } else {
                    standby.push(target.to_string());
                }
            }
        }
        self.owned_since = owned_now;
        standby
    }
}

fn arp_status(counters: &[ArpCounters], standby: &[String], took: Duration) -> SourceStatus {
    let mut status = SourceStatus::ok(took);
    let gone: Vec<String> = counters
        .iter()
        .filter_map(|c| c.gone.as_ref().map(|why| format!("{}: {why}", c.interface)))
        .collect();
    let drops: u64 = counters.iter().map(|c| c.kernel_drops + c.overflow).sum();
    let evicted: u64 = counters.iter().map(|c| c.evicted).sum();
    let mut notes = Vec::new();
    notes.push(format!(
        "watching {}",
        counters
            .iter()
            .map(|c| c.interface.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !gone.is_empty() {
        notes.push(gone.join("; "));
    }
    if drops > 0 {
        notes.push(format!("{drops} frames dropped or not tracked"));
    }
    if evicted > 0 {
        notes.push(format!(
            "{evicted} least recently seen unwatched addresses aged out"
        ));
    }
    if !standby.is_empty() {
        notes.push(format!(
            "standby, not this node's to answer (not judged): {}",
            standby.join(", ")
        ));
    }
    status.detail = Some(notes.join("; "));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn window_counters_are_differences_of_cumulative_samples() {
        let vip: Ipv4Addr = "10.99.0.51".parse().unwrap();
        let mut earlier = ArpCounters::new(2, "eth0");
        earlier.targets.insert(
            vip,
            TargetCounts {
                requests_received: 5,
                replies_sent: 5,
                ..TargetCounts::default()
            },
        );
        earlier.frames = 10;
        let mut later = earlier.clone();
        later.targets.get_mut(&vip).unwrap().requests_received = 9;
        later.frames = 14;
        let other: Ipv4Addr = "10.99.0.52".parse().unwrap();
        later.targets.insert(
            other,
            TargetCounts {
                requests_received: 2,
                ..TargetCounts::default()
            },
        );
        let d = counters_delta(&later, &earlier);
        assert_eq!(d.target(vip).unwrap().requests_received, 4);
        assert_eq!(d.target(vip).unwrap().replies_sent, 0);
        assert_eq!(d.target(other).unwrap().requests_received, 2);
        assert_eq!(d.frames, 4);
    }

    #[test]
    fn an_entry_admitted_again_is_all_new_in_the_window() {
        let vip: Ipv4Addr = "10.99.0.51".parse().unwrap();
        let mut earlier = ArpCounters::new(2, "eth0");
        earlier.targets.insert(
            vip,
            TargetCounts {
                requests_received: 9,
                admitted: 4,
                ..TargetCounts::default()
            },
        );
        // Aged out and counted again from zero: 3 requests since, not 3 - 9.
        let mut later = ArpCounters::new(2, "eth0");
        later.targets.insert(
            vip,
            TargetCounts {
                requests_received: 3,
                admitted: 700,
                ..TargetCounts::default()
            },
        );
        later.evicted = 12;
        let d = counters_delta(&later, &earlier);
        assert_eq!(d.target(vip).unwrap().requests_received, 3);
        assert_eq!(d.evicted, 12);
    }

    #[test]
    fn a_target_owned_inside_the_window_counts_from_then_on() {
        // A standby that took the VIP over at t1: the requests before (the outage, rightly
        // unanswered here) must not count against it.
        let vip: Ipv4Addr = "10.99.0.51".parse().unwrap();
        let old_vip: Ipv4Addr = "10.99.0.52".parse().unwrap();
        let sample = |vip_requests: u64, old_requests: u64| {
            let mut c = ArpCounters::new(2, "eth0");
            for (ip, n) in [(vip, vip_requests), (old_vip, old_requests)] {
                c.targets.insert(
                    ip,
                    TargetCounts {
                        requests_received: n,
                        ..TargetCounts::default()
                    },
                );
            }
            c
        };
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let t2 = t0 + Duration::from_secs(20);
        let samples: VecDeque<(Instant, ArpCounters)> =
            [(t0, sample(5, 1)), (t1, sample(9, 2)), (t2, sample(12, 4))]
                .into_iter()
                .collect();
        let total = samples.back().unwrap().1.clone();
        let mut window = counters_delta(&total, &samples.front().unwrap().1);
        assert_eq!(window.target(vip).unwrap().requests_received, 7);
        let owned: BTreeMap<Ipv4Addr, Instant> =
            [(vip, t1), (old_vip, t0 - Duration::from_secs(60))]
                .into_iter()
                .collect();
        since_owned(&mut window, &total, &samples, &owned);
        assert_eq!(window.target(vip).unwrap().requests_received, 3);
        // Owned since before the window: the whole window counts.
        assert_eq!(window.target(old_vip).unwrap().requests_received, 3);
        // Owned only since the newest sample: nothing counts yet.
        let mut window = counters_delta(&total, &samples.front().unwrap().1);
        since_owned(
            &mut window,
            &total,
            &samples,
            &[(vip, t2)].into_iter().collect(),
        );
        assert_eq!(window.target(vip).unwrap().requests_received, 0);
    }
}
