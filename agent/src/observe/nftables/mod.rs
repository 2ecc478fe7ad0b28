//! The nftables source: reads every nftables table of the calling thread's network namespace over
//! raw netlink (no `nft` binary, no library) into the [`Ruleset`] model, consistently with one
//! generation id. Read-only: writes live in `act::nftables`.
//!
//! How the dump is made, and why:
//! - GETGEN, then GETTABLE / GETCHAIN / GETSET dumps for every family (AF_UNSPEC), one GETSETELEM
//!   dump per set, then **one GETRULE dump per chain**. A single rule dump of everything is
//!   quadratic in the kernel (each resumed `recvmsg` walks the rule list again from the start:
//!   5.8 s for 80,000 rules against 0.7 s chain by chain).
//! - Reads of 32 KiB (the kernel's cap for one dump batch).
//! - Rule dumps are split over two threads, each with its own socket. A thread spawned by the
//!   calling thread inherits its network namespace, so both read the same ruleset.
//! - Consistency: the generation id is read before and after; a moved generation, a dump flagged
//!   NLM_F_DUMP_INTR, or a chain/set that vanished between the dumps (ENOENT) means a transaction
//!   raced the dump: everything is read again, a few times, then the read fails saying so.
//!
//! Wire decoding is pure (`expr` for rules, `set` for sets and elements, tables and chains here)
//! and tested on captured bytes in `agent/testdata/nft/`.
//!
//! Long because it is the dump protocol (per chain, two threads, generation checks, retries) and
//! the assembly of tables; expressions and sets are in their own files.

mod expr;
mod incremental;
mod set;

pub use expr::{decode_rule, field_text, DecodedRule, RuleContext};
pub use incremental::{ApplySummary, NeedResync, NftCache, NftTracker, TrackerStats};
pub use set::{decode_set, decode_set_elements, finish_elements, split_key_type, SetHeader};

use crate::model::ruleset::{
    Backend, BaseChain, Chain, Family, HookPoint, Rule, Ruleset, Table, TableId, Verdict,
};
use crate::observe::netlink::{
    errno_name, split_messages, Attr, Attrs, MessageBuilder, NetlinkError, NetlinkSocket,
    NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// nfnetlink subsystem id of nf_tables (the high byte of the message type).
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_GETSET: u16 = 10;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_GETSETELEM: u16 = 13;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NFT_MSG_GETGEN: u16 = 16;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_GEN_ID: u16 = 1;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Whole reads attempted before giving up on a ruleset that keeps changing.
const MAX_ATTEMPTS: u32 = 5;
/// Threads (each with its own socket) sharing the per-chain rule dumps.
const RULE_DUMP_THREADS: usize = 2;

/// What a read cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NftDumpStats {
    pub chains: usize,
    pub rules: usize,
    /// Netlink message bytes received for the successful attempt.
    pub bytes: u64,
    pub duration: Duration,
    /// Reads thrown away because the ruleset changed under them.
    pub retries: u32,
}

/// Failures of the nftables reader, saying what was done and what is missing.
#[derive(Debug, thiserror::Error)]
pub enum NftablesError {
    #[error("reading nftables needs CAP_NET_ADMIN: {what} was refused with EPERM")]
    PermissionDenied { what: String },
    #[error("nf_tables is not available in this kernel or namespace: {what} failed with {}", errno_name(*.errno))]
    Unavailable { what: String, errno: i32 },
    #[error("nftables {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    #[error("nftables kept changing while being read: {attempts} dumps in a row were inconsistent (generation moved or dump interrupted); giving up")]
    Inconsistent { attempts: u32 },
    #[error(
        "nftables {what}: malformed reply: {}",
        crate::model::render::printable(detail)
    )]
    Malformed { what: String, detail: String },
}

/// Why one attempt did not produce a consistent view.
enum AttemptError {
    /// The ruleset changed during the attempt: read again.
    Raced,
    Fatal(NftablesError),
}

fn classify(what: &str, error: NetlinkError) -> AttemptError {
    match &error {
        NetlinkError::DumpInterrupted { .. } => return AttemptError::Raced,
        _ if error.is_permission() => {
            return AttemptError::Fatal(NftablesError::PermissionDenied { what: what.into() })
        }
        _ => {}
    }
    match error.errno() {
        Some(errno @ (libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP)) => {
            AttemptError::Fatal(NftablesError::Unavailable {
                what: what.into(),
                errno,
            })
        }
        // A table, chain or set named by an earlier dump is gone: a transaction raced us.
        Some(libc::ENOENT) => AttemptError::Raced,
        _ => AttemptError::Fatal(NftablesError::Netlink {
            what: what.into(),
            source: error,
        }),
    }
}

fn open_socket() -> Result<NetlinkSocket, NftablesError> {
    NetlinkSocket::open(libc::NETLINK_NETFILTER).map_err(|error| {
        match classify("opening a netfilter netlink socket", error) {
            AttemptError::Fatal(e) => e,
            AttemptError::Raced => NftablesError::Inconsistent { attempts: 0 },
        }
    })
}

/// A NUL-terminated string attribute, borrowed (empty when not UTF-8).
pub(crate) fn attr_str_ref<'a>(attr: &Attr<'a>) -> &'a str {
    attr.str()
}

/// Decodes a nested `NFTA_DATA_VERDICT` body.
pub(crate) fn decode_verdict(nested: &[u8]) -> Option<Verdict> {
    let mut code = None;
    let mut chain = None;
    for attr in Attrs::new(nested) {
        match attr.kind {
            NFTA_VERDICT_CODE => code = attr.u32_be().map(|c| c as i32),
            NFTA_VERDICT_CHAIN => chain = Some(attr.string()),
            _ => {}
        }
    }
    Some(match code? {
        0 => Verdict::Drop,
        1 => Verdict::Accept,
        3 => Verdict::Queue,
        -1 => Verdict::Continue,
        -3 => Verdict::Jump(chain?),
        -4 => Verdict::Goto(chain?),
        -5 => Verdict::Return,
        _ => return None,
    })
}

fn nfgenmsg(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

fn message_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The current nftables generation id of the calling thread's network namespace, on a socket
/// of its own (ask through one [`GenerationQuery`] when asking again and again).
pub fn current_generation() -> Result<u32, NftablesError> {
    GenerationQuery::default().current()
}

/// Asks for the nftables generation id over one socket kept open between questions: the kernel
/// takes the nftables commit lock when a netfilter netlink socket is closed (it releases the
/// tables the socket owned), so a socket closed after each question waited behind every writer's
/// transaction, tens of milliseconds at 10,000 Services.
#[derive(Default)]
pub struct GenerationQuery {
    socket: Option<NetlinkSocket>,
}

impl GenerationQuery {
    /// The current generation id of the network namespace the socket was opened in (the
    /// calling thread's at the first question); a failed question drops the socket.
    pub fn current(&mut self) -> Result<u32, NftablesError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => self.socket.insert(open_socket()?),
        };
        let answer = generation_on(socket).map_err(|e| match e {
            AttemptError::Fatal(e) => e,
            AttemptError::Raced => NftablesError::Inconsistent { attempts: 1 },
        });
        if answer.is_err() {
            self.socket = None;
        }
        answer
    }
}

fn generation_on(socket: &mut NetlinkSocket) -> Result<u32, AttemptError> {
    const WHAT: &str = "reading the generation id (GETGEN)";
    let seq = socket.next_seq();
    let request = MessageBuilder::new(message_type(NFT_MSG_GETGEN), NLM_F_REQUEST, seq)
        .raw(&nfgenmsg(libc::AF_UNSPEC as u8))
        .finish();
    socket.send(&request, WHAT).map_err(|e| classify(WHAT, e))?;
    loop {
        let len = socket.recv(WHAT).map_err(|e| classify(WHAT, e))?;
        for msg in split_messages(socket.received(len)) {
            let msg = msg.map_err(|detail| {
                AttemptError::Fatal(NftablesError::Malformed {
                    what: WHAT.into(),
                    detail,
                })
            })?;
            if msg.seq != seq {
                continue;
            }
            if msg.msg_type == NLMSG_ERROR {
                let errno = -crate::observe::netlink::error_code(msg.payload);
                return Err(classify(
                    WHAT,
                    NetlinkError::Kernel {
                        what: WHAT.into(),
                        errno,
                    },
                ));
            }
            if msg.msg_type == message_type(NFT_MSG_NEWGEN) {
                let id = msg
                    .payload
                    .get(4..)
                    .and_then(|attrs| Attrs::new(attrs).find(|a| a.kind == NFTA_GEN_ID))
                    .and_then(|a| a.u32_be());
                return id.ok_or_else(|| {
                    AttemptError::Fatal(NftablesError::Malformed {
                        what: WHAT.into(),
                        detail: "NEWGEN without NFTA_GEN_ID".into(),
                    })
                });
            }
        }
    }
}

/// Decodes a NEWTABLE payload: (family, name, handle).
pub(crate) fn decode_table(payload: &[u8]) -> Option<(Family, String, u64)> {
    let family = Family::from_nfproto(*payload.first()?)?;
    let mut name = None;
    let mut handle = 0;
    for attr in Attrs::new(payload.get(4..)?) {
        match attr.kind {
            NFTA_TABLE_NAME => name = Some(attr.string()),
            NFTA_TABLE_HANDLE => handle = attr.u64_be().unwrap_or(0),
            _ => {}
        }
    }
    Some((family, name?, handle))
}

/// Decodes a NEWCHAIN payload: (family, table, chain without rules).
pub(crate) fn decode_chain(payload: &[u8]) -> Option<(Family, String, Chain)> {
    let family = Family::from_nfproto(*payload.first()?)?;
    let mut table = None;
    let mut name = None;
    let mut handle = 0;
    let mut hook = None;
    let mut priority = 0i32;
    let mut policy = Verdict::Accept;
    let mut chain_type = String::new();
    for attr in Attrs::new(payload.get(4..)?) {
        match attr.kind {
            NFTA_CHAIN_TABLE => table = Some(attr.string()),
            NFTA_CHAIN_NAME => name = Some(attr.string()),
            NFTA_CHAIN_HANDLE => handle = attr.u64_be().unwrap_or(0),
            NFTA_CHAIN_HOOK => {
                for inner in attr.nested_attrs() {
                    match inner.kind {
                        NFTA_HOOK_HOOKNUM => hook = inner.u32_be(),
                        NFTA_HOOK_PRIORITY => priority = inner.u32_be().unwrap_or(0) as i32,
                        _ => {}
                    }
                }
            }
            NFTA_CHAIN_POLICY if attr.u32_be() == Some(0) => policy = Verdict::Drop,
            NFTA_CHAIN_TYPE => chain_type = attr.string(),
            _ => {}
        }
    }
    let base = hook
        .and_then(|h| HookPoint::from_number(family, h))
        .map(|hook| BaseChain {
            hook,
            priority,
            chain_type,
            policy,
        });
    Some((
        family,
        table?,
        Chain {
            name: name?,
            handle,
            base,
            rules: Vec::new(),
        },
    ))
}

/// Assembles a ruleset from decoded messages in dump order (tables, chains, sets, elements, rules).
#[derive(Debug, Default)]
struct RulesetBuilder {
    tables: Vec<Table>,
    table_index: HashMap<(Family, String), usize>,
    /// Per table: chain name -> index.
    chain_index: Vec<HashMap<String, usize>>,
    /// Per table: set name -> header, for element decoding.
    set_headers: Vec<HashMap<String, SetHeader>>,
}

impl RulesetBuilder {
    fn add_table(&mut self, payload: &[u8]) -> Result<(), String> {
        let (family, name, handle) = decode_table(payload).ok_or("table without family or name")?;
        let key = (family, name.clone());
        if self.table_index.contains_key(&key) {
            return Ok(());
        }
        self.table_index.insert(key, self.tables.len());
        self.tables.push(Table {
            id: TableId {
                backend: Backend::Nft,
                family,
                name,
            },
            handle,
            chains: Vec::new(),
            sets: BTreeMap::new(),
        });
        self.chain_index.push(HashMap::new());
        self.set_headers.push(HashMap::new());
        Ok(())
    }

    fn table(&self, family: Family, name: &str) -> Option<usize> {
        // The map is keyed by owned names; tables are few, so a scan is as fast as a lookup.
        self.tables
            .iter()
            .position(|t| t.id.family == family && t.id.name == name)
    }

    fn add_chain(&mut self, payload: &[u8]) -> Result<(), String> {
        let (family, table, chain) = decode_chain(payload).ok_or("chain without table or name")?;
        let index = self
            .table(family, &table)
            .ok_or_else(|| format!("chain {} of unknown table {family} {table}", chain.name))?;
        self.tables[index].chains.push(chain);
        Ok(())
    }

    fn add_set(&mut self, payload: &[u8]) -> Result<(), String> {
        let family = payload
            .first()
            .and_then(|f| Family::from_nfproto(*f))
            .ok_or("set of unknown family")?;
        let header =
            decode_set(payload.get(4..).unwrap_or(&[])).ok_or("set without table or name")?;
        let index = self.table(family, &header.table).ok_or_else(|| {
            format!(
                "set {} of unknown table {family} {}",
                header.set.name, header.table
            )
        })?;
        self.tables[index]
            .sets
            .insert(header.set.name.clone(), header.set.clone());
        self.set_headers[index].insert(header.set.name.clone(), header);
        Ok(())
    }

    /// Sets in (family, table, set) order, for the element dumps.
    fn set_names(&self) -> Vec<(Family, String, String)> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.sets
                    .keys()
                    .map(move |s| (t.id.family, t.id.name.clone(), s.clone()))
            })
            .collect()
    }

    fn add_set_elements(
        &mut self,
        payload: &[u8],
        pending: &mut PendingElements,
    ) -> Result<(), String> {
        let family = payload
            .first()
            .and_then(|f| Family::from_nfproto(*f))
            .ok_or("set elements of unknown family")?;
        let (table, set, elements) = decode_set_elements(payload.get(4..).unwrap_or(&[]))
            .ok_or("set elements without table or set")?;
        let index = self
            .table(family, table)
            .ok_or_else(|| format!("elements of unknown table {family} {table}"))?;
        pending
            .entry((index, set.to_string()))
            .or_default()
            .extend(elements);
        Ok(())
    }

    fn finish_elements(&mut self, pending: PendingElements) {
        for ((index, set), raw) in pending {
            let Some(header) = self.set_headers[index].get(&set) else {
                continue;
            };
            let elements = finish_elements(header, raw);
            if let Some(model) = self.tables[index].sets.get_mut(&set) {
                model.elements = elements;
            }
        }
    }

    /// Indexes chain names (only the decoder of captured messages needs it: live reads know
    /// which chain each rule dump is for, and 30,000 extra name copies cost memory).
    fn index_chains(&mut self) {
        for (t, table) in self.tables.iter().enumerate() {
            self.chain_index[t] = table
                .chains
                .iter()
                .enumerate()
                .map(|(c, chain)| (chain.name.clone(), c))
                .collect();
        }
    }

    fn chain_slot(&self, family: Family, table: &str, chain: &str) -> Option<(usize, usize)> {
        let t = self.table(family, table)?;
        let c = *self.chain_index[t].get(chain)?;
        Some((t, c))
    }

    fn context(&self, table: usize) -> RuleContext<'_> {
        RuleContext {
            family: self.tables[table].id.family,
            sets: &self.tables[table].sets,
        }
    }

    fn finish(self, generation: u32) -> Ruleset {
        Ruleset {
            tables: self.tables,
            generation: Some(generation),
        }
    }
}

type PendingElements = HashMap<(usize, String), Vec<set::RawElement>>;

/// Per table (in [`Ruleset::tables`] order): set name -> decoded header, which element
/// decoding needs and the model does not keep.
pub(crate) type SetHeaders = Vec<HashMap<String, SetHeader>>;

/// The rules of each chain a worker dumped (by chain slot index), and the bytes it read.
type WorkerOutput = (Vec<(usize, Vec<Rule>)>, u64);

/// Where the messages of a dump go besides decoding (the capture helper keeps them).
type Recorder<'r> = Option<&'r mut Vec<u8>>;

fn record(recorder: &mut Recorder<'_>, msg: &crate::observe::netlink::Message<'_>) {
    if let Some(buf) = recorder.as_deref_mut() {
        let len = (16 + msg.payload.len()) as u32;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&msg.msg_type.to_ne_bytes());
        buf.extend_from_slice(&msg.flags.to_ne_bytes());
        buf.extend_from_slice(&msg.seq.to_ne_bytes());
        buf.extend_from_slice(&msg.pid.to_ne_bytes());
        buf.extend_from_slice(msg.payload);
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
    }
}

/// Runs one dump, handing each message of the expected type to `on_payload`.
fn dump(
    socket: &mut NetlinkSocket,
    request: &[u8],
    what: &str,
    expected: u16,
    bytes: &mut u64,
    recorder: &mut Recorder<'_>,
    mut on_payload: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), AttemptError> {
    let mut malformed = None;
    let result = socket.dump(request, what, |msg| {
        *bytes += 16 + msg.payload.len() as u64;
        if msg.msg_type != message_type(expected) {
            return Ok(());
        }
        record(recorder, &msg);
        if let Err(detail) = on_payload(msg.payload) {
            malformed.get_or_insert(detail);
        }
        Ok(())
    });
    result.map_err(|e| classify(what, e))?;
    match malformed {
        Some(detail) => Err(AttemptError::Fatal(NftablesError::Malformed {
            what: what.into(),
            detail,
        })),
        None => Ok(()),
    }
}

fn dump_request(msg: u16, family: u8, seq: u32) -> MessageBuilder {
    MessageBuilder::new(message_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq).raw(&nfgenmsg(family))
}

/// Dumps tables, chains, sets and elements into a builder (no rules yet).
fn read_objects(
    socket: &mut NetlinkSocket,
    bytes: &mut u64,
    recorder: &mut Recorder<'_>,
) -> Result<RulesetBuilder, AttemptError> {
    let mut builder = RulesetBuilder::default();
    let unspec = libc::AF_UNSPEC as u8;
    let request = dump_request(NFT_MSG_GETTABLE, unspec, socket.next_seq()).finish();
    dump(
        socket,
        &request,
        "table dump (GETTABLE)",
        NFT_MSG_NEWTABLE,
        bytes,
        recorder,
        |p| builder.add_table(p),
    )?;
    let request = dump_request(NFT_MSG_GETCHAIN, unspec, socket.next_seq()).finish();
    dump(
        socket,
        &request,
        "chain dump (GETCHAIN)",
        NFT_MSG_NEWCHAIN,
        bytes,
        recorder,
        |p| builder.add_chain(p),
    )?;
    let request = dump_request(NFT_MSG_GETSET, unspec, socket.next_seq()).finish();
    dump(
        socket,
        &request,
        "set dump (GETSET)",
        NFT_MSG_NEWSET,
        bytes,
        recorder,
        |p| builder.add_set(p),
    )?;
    let mut pending = PendingElements::new();
    for (family, table, set) in builder.set_names() {
        let request = dump_request(NFT_MSG_GETSETELEM, family.nfproto(), socket.next_seq())
            .attr_str(NFTA_SET_ELEM_LIST_TABLE, &table)
            .attr_str(NFTA_SET_ELEM_LIST_SET, &set)
            .finish();
        let what = format!("element dump (GETSETELEM) of set {family}/{table}/{set}");
        dump(
            socket,
            &request,
            &what,
            NFT_MSG_NEWSETELEM,
            bytes,
            recorder,
            |p| builder.add_set_elements(p, &mut pending),
        )?;
    }
    builder.finish_elements(pending);
    Ok(builder)
}

/// Dumps the rules of one chain, decoding them.
fn read_chain_rules(
    socket: &mut NetlinkSocket,
    builder: &RulesetBuilder,
    (table, chain): (usize, usize),
    bytes: &mut u64,
    recorder: &mut Recorder<'_>,
) -> Result<Vec<Rule>, AttemptError> {
    let t = &builder.tables[table];
    let c = &t.chains[chain];
    let request = dump_request(NFT_MSG_GETRULE, t.id.family.nfproto(), socket.next_seq())
        .attr_str(NFTA_RULE_TABLE, &t.id.name)
        .attr_str(NFTA_RULE_CHAIN, &c.name)
        .finish();
    let ctx = builder.context(table);
    let mut rules = Vec::new();
    let mut what = String::new();
    if recorder.is_some() {
        what = format!(
            "rule dump (GETRULE) of chain {}/{}/{}",
            t.id.family, t.id.name, c.name
        );
    }
    let what = if what.is_empty() {
        "rule dump (GETRULE) of a chain"
    } else {
        &what
    };
    dump(
        socket,
        &request,
        what,
        NFT_MSG_NEWRULE,
        bytes,
        recorder,
        |p| {
            let decoded = decode_rule(p.get(4..).unwrap_or(&[]), &ctx)
                .ok_or("rule without table, chain or handle")?;
            rules.push(decoded.rule);
            Ok(())
        },
    )
    .map_err(|e| match e {
        AttemptError::Fatal(NftablesError::Netlink { source, .. }) => {
            AttemptError::Fatal(NftablesError::Netlink {
                what: format!(
                    "rule dump (GETRULE) of chain {}/{}/{}",
                    t.id.family, t.id.name, c.name
                ),
                source,
            })
        }
        other => other,
    })?;
    Ok(rules)
}

/// One whole read. `threads` > 1 shares the rule dumps between sockets.
fn read_once(
    socket: &mut NetlinkSocket,
    threads: usize,
    mut recorder: Recorder<'_>,
) -> Result<(Ruleset, NftDumpStats, SetHeaders), AttemptError> {
    let started = Instant::now();
    let before = generation_on(socket)?;
    let mut bytes = 0u64;
    let mut builder = read_objects(socket, &mut bytes, &mut recorder)?;
    let slots: Vec<(usize, usize)> = builder
        .tables
        .iter()
        .enumerate()
        .flat_map(|(t, table)| (0..table.chains.len()).map(move |c| (t, c)))
        .collect();

    let results: Vec<(usize, Vec<Rule>)> = if threads <= 1 || recorder.is_some() || slots.len() < 64
    {
        let mut out = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            out.push((
                i,
                read_chain_rules(socket, &builder, *slot, &mut bytes, &mut recorder)?,
            ));
        }
        out
    } else {
        let next = AtomicUsize::new(0);
        let builder_ref = &builder;
        let slots_ref = &slots;
        let worker = |socket: &mut NetlinkSocket| -> Result<WorkerOutput, AttemptError> {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots_ref.get(i) else {
                    break;
                };
                out.push((
                    i,
                    read_chain_rules(socket, builder_ref, *slot, &mut bytes, &mut None)?,
                ));
            }
            Ok((out, bytes))
        };
        let outcomes = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut own = open_socket().map_err(AttemptError::Fatal)?;
                        worker(&mut own)
                    })
                })
                .collect();
            let mut outcomes = vec![worker(socket)];
            for helper in helpers {
                outcomes.push(helper.join().unwrap_or_else(|_| {
                    Err(AttemptError::Fatal(NftablesError::Malformed {
                        what: "rule dump".into(),
                        detail: "a rule dump thread panicked".into(),
                    }))
                }));
            }
            outcomes
        });
        let mut all = Vec::with_capacity(slots.len());
        for outcome in outcomes {
            let (out, thread_bytes) = outcome?;
            bytes += thread_bytes;
            all.extend(out);
        }
        all
    };
    let after = generation_on(socket)?;
    if before != after {
        return Err(AttemptError::Raced);
    }
    let mut rules_total = 0;
    for (i, rules) in results {
        let (t, c) = slots[i];
        rules_total += rules.len();
        let mut rules = rules;
        rules.shrink_to_fit();
        builder.tables[t].chains[c].rules = rules;
    }
    let stats = NftDumpStats {
        chains: slots.len(),
        rules: rules_total,
        bytes,
        duration: started.elapsed(),
        retries: 0,
    };
    let headers = std::mem::take(&mut builder.set_headers);
    Ok((builder.finish(before), stats, headers))
}

fn read_with_retries(
    threads: usize,
    mut recorder: Recorder<'_>,
) -> Result<(Ruleset, NftDumpStats, SetHeaders), NftablesError> {
    let started = Instant::now();
    let mut socket = open_socket()?;
    for attempt in 0..MAX_ATTEMPTS {
        if let Some(buf) = recorder.as_deref_mut() {
            buf.clear();
        }
        match read_once(&mut socket, threads, recorder.as_deref_mut()) {
            Ok((ruleset, mut stats, headers)) => {
                stats.retries = attempt;
                stats.duration = started.elapsed();
                return Ok((ruleset, stats, headers));
            }
            Err(AttemptError::Raced) => {
                // A fresh socket drops any reply left over from the abandoned dump.
                socket = open_socket()?;
            }
            Err(AttemptError::Fatal(e)) => return Err(e),
        }
    }
    Err(NftablesError::Inconsistent {
        attempts: MAX_ATTEMPTS,
    })
}

/// Reads every nftables table of the calling thread's network namespace, consistent with one
/// generation (returned in [`Ruleset::generation`]).
pub fn read_ruleset() -> Result<(Ruleset, NftDumpStats), NftablesError> {
    read_with_retries(RULE_DUMP_THREADS, None).map(|(mut ruleset, stats, _)| {
        crate::observe::ipset::resolve_set_names(&mut ruleset);
        (ruleset, stats)
    })
}

/// [`read_ruleset`] plus the decoded set headers (the incremental cache decodes later element
/// notifications with them).
pub(crate) fn read_ruleset_with_sets() -> Result<(Ruleset, NftDumpStats, SetHeaders), NftablesError>
{
    read_with_retries(RULE_DUMP_THREADS, None).map(|(mut ruleset, stats, sets)| {
        crate::observe::ipset::resolve_set_names(&mut ruleset);
        (ruleset, stats, sets)
    })
}

/// Reads the ruleset like [`read_ruleset`] on one socket and also returns the raw netlink messages
/// the kernel sent (tables, chains, sets, elements, rules, in that order), for test captures.
pub fn capture_ruleset_messages() -> Result<(Ruleset, Vec<u8>), NftablesError> {
    let mut recorded = Vec::new();
    let (ruleset, _, _) = read_with_retries(1, Some(&mut recorded))?;
    Ok((ruleset, recorded))
}

/// Decodes captured messages (as written by [`capture_ruleset_messages`]) into a ruleset whose
/// generation is `generation`. Pure: the unit tests run it on `agent/testdata/nft/*.bin`.
pub fn decode_messages(bytes: &[u8], generation: u32) -> Result<Ruleset, NftablesError> {
    decode_messages_with_sets(bytes, generation).map(|(ruleset, _)| ruleset)
}

/// [`decode_messages`] plus the set headers, as [`read_ruleset_with_sets`] returns them.
pub(crate) fn decode_messages_with_sets(
    bytes: &[u8],
    generation: u32,
) -> Result<(Ruleset, SetHeaders), NftablesError> {
    let malformed = |detail: String| NftablesError::Malformed {
        what: "captured messages".into(),
        detail,
    };
    let mut builder = RulesetBuilder::default();
    let mut pending = PendingElements::new();
    let mut elements_done = false;
    let mut rules: Vec<(usize, usize, Rule)> = Vec::new();
    for msg in split_messages(bytes) {
        let msg = msg.map_err(malformed)?;
        if msg.msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let payload = msg.payload;
        match msg.msg_type & 0xff {
            NFT_MSG_NEWTABLE => builder.add_table(payload).map_err(malformed)?,
            NFT_MSG_NEWCHAIN => builder.add_chain(payload).map_err(malformed)?,
            NFT_MSG_NEWSET => builder.add_set(payload).map_err(malformed)?,
            NFT_MSG_NEWSETELEM => builder
                .add_set_elements(payload, &mut pending)
                .map_err(malformed)?,
            NFT_MSG_NEWRULE => {
                if !elements_done {
                    builder.finish_elements(std::mem::take(&mut pending));
                    builder.index_chains();
                    elements_done = true;
                }
                let family = payload
                    .first()
                    .and_then(|f| Family::from_nfproto(*f))
                    .ok_or_else(|| malformed("rule of unknown family".into()))?;
                let attrs = payload.get(4..).unwrap_or(&[]);
                let Some(names) = rule_names(attrs) else {
                    return Err(malformed("rule without table or chain".into()));
                };
                let (t, c) = builder
                    .chain_slot(family, names.0, names.1)
                    .ok_or_else(|| {
                        malformed(format!("rule of unknown chain {}/{}", names.0, names.1))
                    })?;
                let decoded = decode_rule(attrs, &builder.context(t))
                    .ok_or_else(|| malformed("rule without handle".into()))?;
                rules.push((t, c, decoded.rule));
            }
            _ => {}
        }
    }
    if !elements_done {
        builder.finish_elements(pending);
    }
    for (t, c, rule) in rules {
        builder.tables[t].chains[c].rules.push(rule);
    }
    let headers = std::mem::take(&mut builder.set_headers);
    Ok((builder.finish(generation), headers))
}

fn rule_names(attrs: &[u8]) -> Option<(&str, &str)> {
    let mut table = None;
    let mut chain = None;
    for attr in Attrs::new(attrs) {
        match attr.kind {
            NFTA_RULE_TABLE => table = Some(attr.str()),
            NFTA_RULE_CHAIN => chain = Some(attr.str()),
            _ => {}
        }
    }
    Some((table?, chain?))
}

#[cfg(test)]
mod tests;
