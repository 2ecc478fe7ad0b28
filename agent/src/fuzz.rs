//! Fuzz entry points: one function per decoder of bytes that come from outside the agent (the
//! kernel's netlink answers and notifications, x_tables blobs, ARP frames, the BPF map, `/proc`
//! text, the config file). Each takes arbitrary bytes, runs the decoder the way the agent does
//! (then renders and serializes what came out, as reports do) and checks what must hold for any
//! input: no panic, and an error that explains itself (see [`check_error`]).
//!
//! Two drivers share these functions: the bounded property harness in the test suite
//! (`agent/tests/fuzz_decoders.rs`, stable toolchain, mutations of the captured fixtures) and the
//! coverage-guided cargo-fuzz targets in `fuzz/` (nightly, `scripts/fuzz.sh`). Regression inputs
//! live in `agent/testdata/fuzz/`.

use crate::config::Config;
use crate::model::l2::{ArpCounters, ResponderMap, ResponderStatus};
use crate::model::render;
use crate::model::ruleset::{Family, Ruleset};
use crate::observe::nftables::{self, NftCache};
use crate::observe::{addresses, arp, bpf, iptables_legacy, links, nft_events, sockets, xt};
use std::fmt::Display;
use std::path::Path;

/// The longest error message a decoder may produce: an error that echoes its whole input is not
/// a clear error.
pub const MAX_ERROR_LEN: usize = 512;

/// A fuzz target: its name (also the cargo-fuzz target and the regression directory) and entry.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&[u8]),
}

/// Every target that needs no prepared state. [`nft_notifications`] needs a starting cache and
/// is driven separately.
pub const TARGETS: &[Target] = &[
    Target {
        name: "nft_dump",
        what: "nftables dump replies: tables, chains, sets, set elements, rules, expressions",
        run: nft_dump,
    },
    Target {
        name: "nft_events",
        what: "nftables notification datagrams: NEWGEN attribution, transaction chains",
        run: nft_events,
    },
    Target {
        name: "rtnl_link",
        what: "RTM_NEWLINK / RTM_DELLINK payloads (dump and RTNLGRP_LINK events)",
        run: rtnl_link,
    },
    Target {
        name: "rtnl_address",
        what: "RTM_NEWADDR payloads",
        run: rtnl_address,
    },
    Target {
        name: "sock_diag",
        what: "sock_diag inet_diag_msg payloads (TCP listeners)",
        run: sock_diag,
    },
    Target {
        name: "xt_table",
        what: "iptables-legacy tables: ipt_getinfo + entry blob, IPv4 and IPv6",
        run: xt_table,
    },
    Target {
        name: "xt_extension",
        what: "one x_tables match or target: xt_entry_match header + data",
        run: xt_extension,
    },
    Target {
        name: "arp_frame",
        what: "Ethernet frames from the ARP tap, and their accounting",
        run: arp_frame,
    },
    Target {
        name: "bpf_responder",
        what: "Cilium L2 responder map entries (8-byte key, 8-byte value)",
        run: bpf_responder,
    },
    Target {
        name: "proc_text",
        what: "/proc text: legacy table names, process command lines, socket links",
        run: proc_text,
    },
    Target {
        name: "config",
        what: "the YAML config file",
        run: config,
    },
];

/// The name of the notification target, which [`nft_notifications`] serves.
pub const NFT_NOTIFICATIONS: &str = "nft_notifications";

/// Asserts that a decoder's error explains itself: not empty, not a dump of the input, and
/// printable (names taken from the input must not smuggle control characters into logs).
pub fn check_error(decoder: &str, error: &impl Display) {
    let text = error.to_string();
    assert!(!text.trim().is_empty(), "{decoder}: an empty error message");
    assert!(
        text.chars().count() <= MAX_ERROR_LEN,
        "{decoder}: an error of {} characters (more than {MAX_ERROR_LEN}): {text:.200}",
        text.chars().count()
    );
    assert!(
        !text.chars().any(char::is_control),
        "{decoder}: an error carrying control characters: {text:?}"
    );
}

/// Renders and serializes a decoded ruleset as reports and fixes do.
fn exercise_ruleset(ruleset: &Ruleset) {
    for table in &ruleset.tables {
        for chain in &table.chains {
            for rule in &chain.rules {
                let _ = render::render_rule(table, &chain.name, rule);
                let _ = render::rule_spec(table, &chain.name, rule);
            }
        }
    }
    let _ = ruleset.rule_count();
    serde_json::to_string(ruleset).expect("a decoded ruleset serializes");
}

/// nftables dump replies, as `observe::nftables::read_ruleset` receives them.
pub fn nft_dump(data: &[u8]) {
    match nftables::decode_messages(data, 1) {
        Ok(ruleset) => exercise_ruleset(&ruleset),
        Err(e) => check_error("nft_dump", &e),
    }
}

/// nftables notification datagrams, as the event socket hands them to attribution.
pub fn nft_events(data: &[u8]) {
    let mut writers = nft_events::ChainWriters::with_capacity(16);
    let mut decoder = nft_events::EventDecoder::default();
    // The same bytes once as one datagram and once cut in two, as a reader may see them.
    let cut = data.len() / 2;
    for datagram in [data, &data[..cut], &data[cut..]] {
        for event in decoder.decode(datagram) {
            if let nft_events::NftEvent::Committed(generation) = event {
                let _ = generation.writer();
                writers.record(&generation);
                for chain in &generation.chains {
                    let _ = writers.writer_of(chain);
                }
            }
        }
    }
    assert!(writers.len() <= 16, "ChainWriters exceeded its capacity");
    let _ = nft_events::decode_newgen(data);
}

/// The state [`nft_notifications`] starts from: a decoded full dump.
#[derive(Debug, Clone)]
pub struct NotificationBase {
    ruleset: Ruleset,
    headers: nftables::SetHeaders,
}

impl NotificationBase {
    /// Decodes a captured dump (see `agent/testdata/nft/events/`) at `generation`.
    pub fn from_dump(dump: &[u8], generation: u32) -> Result<NotificationBase, String> {
        let (ruleset, headers) =
            nftables::decode_messages_with_sets(dump, generation).map_err(|e| e.to_string())?;
        Ok(NotificationBase { ruleset, headers })
    }
}

/// nftables notifications applied to a cache started from `base`, as the incremental tracker
/// does; an error must be a clear request to resync.
pub fn nft_notifications(base: &NotificationBase, data: &[u8]) {
    let mut cache = NftCache::from_dump(base.ruleset.clone(), base.headers.clone());
    let start = cache.generation();
    match cache.apply_messages(data) {
        Ok(summary) => {
            assert!(
                summary.commits == 0 || cache.generation() != start,
                "commits applied but the generation did not move"
            );
            match cache.snapshot() {
                Ok(ruleset) => exercise_ruleset(&ruleset),
                Err(e) => check_error("nft_notifications snapshot", &e),
            }
        }
        Err(e) => check_error("nft_notifications", &e),
    }
}

/// The captured notification steps of `agent/testdata/nft/events/`: for each step, the dump
/// before it (the cache's starting point) and, as a seed input, its notifications. An input of the
/// `nft_notifications` target is one byte choosing the step, then notification datagrams.
#[derive(Debug, Clone)]
pub struct NotificationSteps {
    bases: Vec<NotificationBase>,
    /// One input per step: its name and bytes.
    pub seeds: Vec<(String, Vec<u8>)>,
}

impl NotificationSteps {
    /// Reads `generations.txt`, the dumps and the notifications of `dir`.
    pub fn load(dir: &Path) -> Result<NotificationSteps, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let list = String::from_utf8_lossy(&read("generations.txt")?).into_owned();
        let mut steps = Vec::new();
        for line in list.lines().filter(|l| !l.trim().is_empty()) {
            let (tag, generation) = line
                .split_once(' ')
                .ok_or_else(|| format!("generations.txt: bad line {line:?}"))?;
            let generation: u32 = generation
                .trim()
                .parse()
                .map_err(|e| format!("generations.txt: {line:?}: {e}"))?;
            steps.push((tag.to_string(), generation));
        }
        let mut bases = Vec::new();
        let mut seeds = Vec::new();
        for pair in steps.windows(2) {
            let ((before, generation), (step, _)) = (&pair[0], &pair[1]);
            let dump = read(&format!("{before}.dump.bin"))?;
            bases.push(NotificationBase::from_dump(&dump, *generation)?);
            let index = u8::try_from(bases.len() - 1).map_err(|_| "more than 256 steps")?;
            let mut input = vec![index];
            input.extend(read(&format!("{step}.events.bin"))?);
            seeds.push((step.clone(), input));
        }
        if bases.is_empty() {
            return Err(format!("{}: no notification steps", dir.display()));
        }
        Ok(NotificationSteps { bases, seeds })
    }

    /// Runs one `nft_notifications` input: the first byte chooses the step (modulo their number).
    pub fn run(&self, data: &[u8]) {
        if let Some((&step, events)) = data.split_first() {
            nft_notifications(&self.bases[usize::from(step) % self.bases.len()], events);
        }
    }
}

/// RTM_NEWLINK / RTM_DELLINK payloads.
pub fn rtnl_link(data: &[u8]) {
    match links::decode_link(data) {
        Ok(link) => {
            serde_json::to_string(&link).expect("a decoded link serializes");
        }
        Err(e) => check_error("rtnl_link", &e),
    }
    for msg_type in [links::RTM_NEWLINK, links::RTM_DELLINK] {
        if let Some(Err(e)) = links::decode_link_event(msg_type, data) {
            check_error("rtnl_link event", &e);
        }
    }
}

/// RTM_NEWADDR payloads.
pub fn rtnl_address(data: &[u8]) {
    if let Some(address) = addresses::decode_ifaddrmsg(data) {
        let _ = address.address.to_string();
    }
}

/// sock_diag `inet_diag_msg` payloads.
pub fn sock_diag(data: &[u8]) {
    if let Some(socket) = sockets::decode_inet_diag_msg(data) {
        serde_json::to_string(&socket).expect("a decoded socket serializes");
    }
}

/// An iptables-legacy table as captured in `agent/testdata/legacy/`: the `ipt_getinfo` answer
/// then the entry blob; decoded as an IPv4 and as an IPv6 table.
pub fn xt_table(data: &[u8]) {
    let split = iptables_legacy::GETINFO_LEN.min(data.len());
    let (head, blob) = data.split_at(split);
    let Some(info) = iptables_legacy::TableInfo::parse(head) else {
        return;
    };
    for family in [Family::Ip, Family::Ip6] {
        let _ = iptables_legacy::content_fingerprint(family, blob);
        let _ = iptables_legacy::xt_blobs(family, blob);
        match iptables_legacy::decode_table(family, &info, blob) {
            Ok(table) => exercise_ruleset(&Ruleset {
                tables: vec![table],
                generation: None,
            }),
            Err(e) => check_error("xt_table", &e),
        }
    }
}

/// The 32-byte header of an x_tables match or target (`xt_entry_match`): size, name, revision.
pub const XT_HEADER_LEN: usize = 32;

/// One x_tables match or target: a first byte choosing match/target (bit 0) and IPv4/IPv6 (bit
/// 1), then the `xt_entry_match` header (u16 size, name[29], revision) and the data.
pub fn xt_extension(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < XT_HEADER_LEN {
        return;
    }
    let (header, info) = rest.split_at(XT_HEADER_LEN);
    let name = xt::c_string(&header[2..31]);
    let revision = header[31];
    let family = if selector & 2 == 0 {
        Family::Ip
    } else {
        Family::Ip6
    };
    if selector & 1 == 0 {
        match xt::decode_match(&name, revision, info, family) {
            xt::DecodedMatch::Conditions(matches) => {
                serde_json::to_string(&matches).expect("decoded matches serialize");
            }
            xt::DecodedMatch::Comment(text) => {
                let _ = xt::extra_comment(&text);
            }
        }
    } else {
        let (action, note) = xt::decode_target_with_notes(&name, revision, info, family);
        serde_json::to_string(&(action, note)).expect("a decoded target serializes");
    }
}

/// Ethernet frames from the ARP tap: decoded, then accounted (incoming and outgoing) against a
/// small target memory, as the L2 watch does.
pub fn arp_frame(data: &[u8]) {
    let mut counters = ArpCounters::default();
    let mut memory = arp::TargetMemory::new(4);
    match arp::decode_arp_frame(data) {
        Ok(frame) => {
            arp::account(&mut counters, &mut memory, &frame, false);
            arp::account(&mut counters, &mut memory, &frame, true);
            assert!(
                memory.watched().is_empty(),
                "accounting made an address watched"
            );
            serde_json::to_string(&counters).expect("ARP counters serialize");
        }
        Err(e) => check_error("arp_frame", &e),
    }
}

/// Entries of Cilium's L2 responder map: each 16 bytes is one 8-byte key and its 8-byte value.
pub fn bpf_responder(data: &[u8]) {
    let mut entries: Vec<_> = data
        .chunks_exact(16)
        .map(|chunk| {
            let key: [u8; 8] = chunk[..8].try_into().expect("8 bytes");
            let value = u64::from_ne_bytes(chunk[8..].try_into().expect("8 bytes"));
            bpf::decode_entry(key, value)
        })
        .collect();
    entries.sort();
    let map = ResponderMap {
        path: bpf::CILIUM_L2_RESPONDER_PIN.to_string(),
        status: ResponderStatus::Read,
        entries,
    };
    for entry in &map.entries {
        assert!(
            map.responses_sent(entry.ip, entry.ifindex).is_some(),
            "a decoded entry is not found by its own key"
        );
    }
    serde_json::to_string(&map).expect("the responder map serializes");
}

/// `/proc` text written by other processes: the legacy table name lists, a process's NUL-split
/// command line, a `/proc/PID/fd` socket link.
pub fn proc_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for name in iptables_legacy::parse_table_names(&text) {
        assert!(!name.is_empty(), "an empty legacy table name");
    }
    let _ = sockets::split_cmdline(data);
    let _ = sockets::parse_socket_link(&text);
}

/// The YAML config file. The agent reads it as UTF-8 text (a file that is not is refused before
/// parsing); other bytes are replaced here so that every input reaches the parser.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::from_yaml(&text) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => check_error("config", &e),
    }
}
