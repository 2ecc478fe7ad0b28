//! The iptables-legacy (x_tables) reader: reads every legacy IPv4 and IPv6 table of the calling
//! thread's network namespace with `getsockopt` (GET_INFO then GET_ENTRIES) and walks the entry
//! blob into [`Table`]s of [`Backend::Legacy`]. No iptables binary is needed.
//!
//! Kernel quirks handled here:
//! - Asking the kernel for a table that does not exist CREATES it (the table module autoloads and
//!   registers it in the namespace). Only tables listed in `/proc/thread-self/net/ip_tables_names`
//!   (`ip6_tables_names`) are queried; a missing file means x_tables is not loaded: no tables.
//!   `/proc/thread-self` (not `/proc/net`) because the namespace is per thread.
//! - GET_ENTRIES fails with EAGAIN when the table changed between GET_INFO and GET_ENTRIES (the
//!   size no longer matches): both calls are retried a few times.
//! - Needs CAP_NET_ADMIN (getsockopt) and CAP_NET_RAW (the raw socket); EPERM says so.
//! - Layout (host order): `ipt_entry` is 112 bytes before its matches (target_offset at 88,
//!   next_offset at 90, counters at 96); `ip6t_entry` is 168 (target_offset at 140, next_offset at
//!   142, counters at 152). Match and target headers are 32 bytes (`u16 size; char name[29]; u8
//!   revision`). A user chain starts with an `ERROR` target holding its name and ends with an
//!   unconditional RETURN (its "policy" entry, not a rule); the table ends with an `ERROR` target
//!   named "ERROR". A standard target's verdict < 0 is builtin, >= 0 the byte offset of the first
//!   entry of the jumped-to chain (or of the next entry: no verdict).
//!
//! One file on purpose: the x_tables entry layout (IPv4 and IPv6), the table reader and the blob
//! decoder share the layout constants; the match and target decoders are in `xt.rs`.

use crate::model::render::printable;
use crate::model::ruleset::{
    Action, Backend, BaseChain, Chain, Cidr, Direction, Family, HookPoint, Match, Rule, Ruleset,
    Table, TableId, Verdict,
};
use crate::observe::xt::{self, DecodedMatch};
use crate::sys;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
/// `struct ipt_getinfo` / `ip6t_getinfo`: name[32], valid_hooks, hook_entry[5], underflow[5],
/// num_entries, size.
pub const GETINFO_LEN: usize = 84;
/// `struct ipt_get_entries`: name[32], size, then (8-aligned) the entries.
const GET_ENTRIES_HEADER: usize = 40;
const NF_INET_NUMHOOKS: usize = 5;
const XT_HEADER: usize = 32;
const EAGAIN_RETRIES: usize = 5;

const IPT_F_GOTO: u8 = 0x02;
const IP6T_F_GOTO: u8 = 0x04;
const INV_VIA_IN: u8 = 0x01;
const INV_VIA_OUT: u8 = 0x02;
const INV_SRCIP: u8 = 0x08;
const INV_DSTIP: u8 = 0x10;
const INV_PROTO: u8 = 0x40;

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("reading iptables-legacy needs CAP_NET_ADMIN and CAP_NET_RAW ({what})")]
    Permission { what: String },
    #[error("cannot open a raw {family} socket to read iptables-legacy: {source}")]
    Socket { family: Family, source: io::Error },
    #[error("cannot read the list of legacy {family} tables from {path}: {source}")]
    Names {
        family: Family,
        path: String,
        source: io::Error,
    },
    #[error(
        "reading legacy table {family} {} ({step}): {source}",
        printable(table)
    )]
    Read {
        family: Family,
        table: String,
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "legacy table {family} {} kept changing while being read (EAGAIN {EAGAIN_RETRIES} times)",
        printable(table)
    )]
    Unstable { family: Family, table: String },
    #[error(
        "legacy table {family} {}: malformed entry blob: {}",
        printable(table),
        printable(detail)
    )]
    Malformed {
        family: Family,
        table: String,
        detail: String,
    },
}

/// The GET_INFO answer of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub valid_hooks: u32,
    pub hook_entry: [u32; NF_INET_NUMHOOKS],
    pub underflow: [u32; NF_INET_NUMHOOKS],
    pub num_entries: u32,
    pub size: u32,
}

impl TableInfo {
    /// Parses a `struct ipt_getinfo` (same layout for IPv6).
    pub fn parse(b: &[u8]) -> Option<TableInfo> {
        if b.len() < GETINFO_LEN {
            return None;
        }
        let u = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let mut hook_entry = [0; NF_INET_NUMHOOKS];
        let mut underflow = [0; NF_INET_NUMHOOKS];
        for h in 0..NF_INET_NUMHOOKS {
            hook_entry[h] = u(36 + 4 * h);
            underflow[h] = u(56 + 4 * h);
        }
        Some(TableInfo {
            name: xt::c_string(&b[..32]),
            valid_hooks: u(32),
            hook_entry,
            underflow,
            num_entries: u(76),
            size: u(80),
        })
    }
}

/// Reads every legacy IPv4 and IPv6 table of the calling thread's network namespace.
pub fn read_ruleset() -> Result<Ruleset, LegacyError> {
    let mut tables = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        for name in table_names(family)? {
            let (info, blob) = read_table_blob(family, &name)?;
            tables.push(decode_table_releasing(family, &info, blob)?);
        }
    }
    let mut ruleset = Ruleset {
        tables,
        generation: None,
    };
    crate::observe::ipset::resolve_set_names(&mut ruleset);
    Ok(ruleset)
}

/// Names of the legacy tables that exist for `family` (empty when x_tables is not loaded).
pub fn table_names(family: Family) -> Result<Vec<String>, LegacyError> {
    let file = if family == Family::Ip6 {
        "ip6_tables_names"
    } else {
        "ip_tables_names"
    };
    let path = format!("/proc/thread-self/net/{file}");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_table_names(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LegacyError::Names {
            family,
            path,
            source,
        }),
    }
}

/// One name per line; sorted so that output is stable.
pub fn parse_table_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A raw socket of `family` for x_tables getsockopt, and the option level of that family.
fn xt_socket(family: Family) -> Result<(std::os::fd::OwnedFd, libc::c_int), LegacyError> {
    let (af, level) = if family == Family::Ip6 {
        (libc::AF_INET6, libc::SOL_IPV6)
    } else {
        (libc::AF_INET, libc::SOL_IP)
    };
    let sock = sys::socket::socket(af, libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(|source| {
        if source.raw_os_error() == Some(libc::EPERM) {
            LegacyError::Permission {
                what: format!("raw {family} socket"),
            }
        } else {
            LegacyError::Socket { family, source }
        }
    })?;
    Ok((sock, level))
}

/// One GET_INFO of table `name` on `sock`.
fn get_info(
    sock: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    family: Family,
    name: &str,
) -> Result<TableInfo, LegacyError> {
    let mut info_buf = [0u8; GETINFO_LEN];
    let n = name.len().min(31);
    info_buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    sys::socket::getsockopt_bytes(sock, level, SO_GET_INFO, &mut info_buf)
        .map_err(|source| read_error(family, name, "GET_INFO", source))?;
    TableInfo::parse(&info_buf).ok_or_else(|| LegacyError::Malformed {
        family,
        table: name.to_string(),
        detail: "short GET_INFO answer".into(),
    })
}

/// What a failed x_tables getsockopt means: a missing privilege, or a read error.
fn read_error(family: Family, name: &str, step: &'static str, source: io::Error) -> LegacyError {
    if source.raw_os_error() == Some(libc::EPERM) {
        LegacyError::Permission {
            what: format!("{step} of table {family} {name}"),
        }
    } else {
        LegacyError::Read {
            family,
            table: name.to_string(),
            step,
            source,
        }
    }
}

/// One table's entry blob as GET_ENTRIES wrote it, in a mapping of its own: the decoder
/// ([`decode_table_releasing`]) gives each page back once it has read past it, so a large table's
/// blob and the rules decoded from it are not resident together.
pub struct EntryBlob {
    buffer: sys::memory::ReleasableBuffer,
}

impl EntryBlob {
    /// The entries (after the `ipt_get_entries` header).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_slice()[GET_ENTRIES_HEADER..]
    }

    fn release_before(&mut self, offset: usize) {
        self.buffer.release_before(GET_ENTRIES_HEADER + offset);
    }

    /// A blob holding a copy of `entries` (captured tables, tests, fuzzing).
    pub fn copy_of(entries: &[u8]) -> io::Result<EntryBlob> {
        let mut buffer = sys::memory::ReleasableBuffer::new(GET_ENTRIES_HEADER + entries.len())?;
        buffer.as_mut_slice()[GET_ENTRIES_HEADER..].copy_from_slice(entries);
        Ok(EntryBlob { buffer })
    }
}

/// Reads one table's GET_INFO and entry blob. Only call it for a listed table: asking for a
/// missing one creates it.
pub fn read_table_blob(family: Family, name: &str) -> Result<(TableInfo, EntryBlob), LegacyError> {
    let (sock, level) = xt_socket(family)?;
    for _ in 0..EAGAIN_RETRIES {
        let info = get_info(sock.as_fd(), level, family, name)?;
        let mut buffer =
            sys::memory::ReleasableBuffer::new(GET_ENTRIES_HEADER + info.size as usize)
                .map_err(|e| read_error(family, name, "GET_ENTRIES buffer", e))?;
        let buf = buffer.as_mut_slice();
        let n = name.len().min(31);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        buf[32..36].copy_from_slice(&info.size.to_ne_bytes());
        match sys::socket::getsockopt_bytes(sock.as_fd(), level, SO_GET_ENTRIES, buf) {
            Ok(_) => return Ok((info, EntryBlob { buffer })),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(read_error(family, name, "GET_ENTRIES", e)),
        }
    }
    Err(LegacyError::Unstable {
        family,
        table: name.to_string(),
    })
}

/// Reads one table's GET_INFO and entry blob (the bytes after the `ipt_get_entries` header) as
/// plain bytes, for captures and tests; the readers use [`read_table_blob`].
pub fn read_table_raw(family: Family, name: &str) -> Result<(TableInfo, Vec<u8>), LegacyError> {
    let (info, blob) = read_table_blob(family, name)?;
    Ok((info, blob.bytes().to_vec()))
}

/// Reads one table's GET_INFO only: its hooks, entry count and size, which change with every
/// change of the table except one that replaces entries by others of the same total size.
/// Costs one small getsockopt, not a copy of the rules. Only call it for a listed table.
pub fn read_table_info(family: Family, name: &str) -> Result<TableInfo, LegacyError> {
    let (sock, level) = xt_socket(family)?;
    get_info(sock.as_fd(), level, family, name)
}

/// A hash of a table's entries without their packet and byte counters: equal for equal rules,
/// however much traffic matched them. Far cheaper than decoding (no allocation).
pub fn content_fingerprint(family: Family, blob: &[u8]) -> u64 {
    let layout = if family == Family::Ip6 { &IPV6 } else { &IPV4 };
    let mut hash = WordHash::default();
    let mut off = 0usize;
    while off < blob.len() {
        let rest = &blob[off..];
        let next = usize::from(read_u16(rest, layout.target_offset + 2));
        if next < layout.entry_len || next > rest.len() {
            // Malformed: hash what is left as it is; the decoder will say what is wrong.
            hash.write(rest);
            break;
        }
        hash.write(&rest[..layout.counters]);
        hash.write(&rest[layout.counters + 16..next]);
        off += next;
    }
    hash.finish()
}

/// A fast non-cryptographic hash over 8-byte words (the multiply-rotate step of FxHash): the
/// content check hashes tens of megabytes of entries, where SipHash showed in profiles.
#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        // The length keeps `ab` + `c` apart from `a` + `bc`.
        self.word(u64::from_ne_bytes(last) ^ ((bytes.len() as u64) << 56));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One entry of the blob, decoded except for the jump target.
#[derive(Debug)]
struct Entry {
    offset: usize,
    size: usize,
    matches: Vec<Match>,
    comment: Option<String>,
    goto: bool,
    counters: (u64, u64),
    target: Target,
}

#[derive(Debug)]
enum Target {
    /// Standard target with its raw verdict.
    Standard(i32),
    /// `ERROR` target: a user chain head (or the table's end marker) with its name.
    Error(String),
    Other(Action),
}

struct Layout {
    entry_len: usize,
    target_offset: usize,
    counters: usize,
}

const IPV4: Layout = Layout {
    entry_len: 112,
    target_offset: 88,
    counters: 96,
};
const IPV6: Layout = Layout {
    entry_len: 168,
    target_offset: 140,
    counters: 152,
};

fn read_u16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

fn read_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

fn prefix_of(mask: &[u8]) -> Option<u8> {
    let mut ones = 0u8;
    let mut seen_zero = false;
    for &byte in mask {
        for bit in (0..8).rev() {
            if byte & (1 << bit) != 0 {
                if seen_zero {
                    return None;
                }
                ones += 1;
            } else {
                seen_zero = true;
            }
        }
    }
    Some(ones)
}

fn interface(name: &[u8], mask: &[u8]) -> Option<String> {
    // Most rules name no interface: no string is made for them.
    if name.first().is_none_or(|b| *b == 0) {
        return None;
    }
    let text = xt::c_string(name);
    // iptables masks strlen+1 bytes for an exact name. For `cilium_+` iptables 1.8.9 stores the
    // name WITH its `+` and masks only the bytes before it (older builds drop the `+`): the masked
    // length is what the kernel compares, so the wildcard is rebuilt from it.
    let covered = mask.iter().take_while(|&&b| b == 0xff).count();
    if covered > text.len() || covered >= 16 {
        return Some(text);
    }
    let prefix: String = text.chars().take(covered).collect();
    Some(format!("{prefix}+"))
}

/// Decodes the fixed ipt_ip / ip6t_ip6 part into matches; returns (matches, goto flag).
fn ip_part(family: Family, e: &[u8]) -> (Vec<Match>, bool) {
    let v6 = family == Family::Ip6;
    let alen = if v6 { 16 } else { 4 };
    let ifaces = 4 * alen;
    let (proto_off, flags_off, inv_off) = if v6 { (128, 131, 132) } else { (80, 82, 83) };
    let flags = e[flags_off];
    let inv = e[inv_off];
    let mut out = Vec::new();
    let addr = |off: usize| -> IpAddr {
        if v6 {
            let b: [u8; 16] = e[off..off + 16].try_into().unwrap_or([0; 16]);
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            let b: [u8; 4] = e[off..off + 4].try_into().unwrap_or([0; 4]);
            IpAddr::V4(Ipv4Addr::from(b))
        }
    };
    for (direction, a_off, m_off, inv_bit) in [
        (Direction::Source, 0, 2 * alen, INV_SRCIP),
        (Direction::Destination, alen, 3 * alen, INV_DSTIP),
    ] {
        let mask = &e[m_off..m_off + alen];
        let negated = inv & inv_bit != 0;
        if mask.iter().all(|&b| b == 0) && !negated {
            continue;
        }
        let m = match prefix_of(mask) {
            Some(prefix) => Match::Address {
                direction,
                cidr: Cidr {
                    addr: addr(a_off),
                    prefix,
                },
                negated,
            },
            None => Match::Opaque {
                description: format!(
                    "{}{} {}/{}",
                    if negated { "! " } else { "" },
                    if direction == Direction::Source {
                        "-s"
                    } else {
                        "-d"
                    },
                    addr(a_off),
                    addr(m_off)
                ),
            },
        };
        out.push(m);
    }
    for (direction, n_off, m_off, inv_bit) in [
        (Direction::Source, ifaces, ifaces + 32, INV_VIA_IN),
        (
            Direction::Destination,
            ifaces + 16,
            ifaces + 48,
            INV_VIA_OUT,
        ),
    ] {
        if let Some(name) = interface(&e[n_off..n_off + 16], &e[m_off..m_off + 16]) {
            out.push(Match::Interface {
                direction,
                name,
                negated: inv & inv_bit != 0,
            });
        }
    }
    let proto = read_u16(e, proto_off);
    if proto != 0 {
        out.push(Match::L4Proto {
            proto: proto as u8,
            negated: inv & INV_PROTO != 0,
        });
    }
    let goto_flag = if v6 { IP6T_F_GOTO } else { IPT_F_GOTO };
    (out, flags & goto_flag != 0)
}

/// Where the decoder reads an entry blob from, and tells how far it has read.
trait EntrySource {
    fn bytes(&self) -> &[u8];
    /// Everything before `offset` has been decoded and will not be read again.
    fn consumed(&mut self, _offset: usize) {}
}

impl EntrySource for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl EntrySource for EntryBlob {
    fn bytes(&self) -> &[u8] {
        EntryBlob::bytes(self)
    }

    fn consumed(&mut self, offset: usize) {
        self.release_before(offset);
    }
}

/// How much of a blob is decoded between two hand-backs of its pages (a page in unit tests, so
/// that captured tables are handed back in several steps).
const RELEASE_STEP: usize = if cfg!(test) { 4096 } else { 1 << 20 };

/// Walks the entry blob (as returned after the `ipt_get_entries` header) into a [`Table`].
pub fn decode_table(family: Family, info: &TableInfo, blob: &[u8]) -> Result<Table, LegacyError> {
    let mut source = blob;
    let entries = decode_entries(family, info, &mut source)?;
    build_table(family, info, entries)
}

/// [`decode_table`] on a blob read by [`read_table_blob`], giving its pages back as it goes and
/// the blob itself before the chains are built: at 10,000 Services the blob is 50 MB, as much
/// as the rules decoded from it.
pub fn decode_table_releasing(
    family: Family,
    info: &TableInfo,
    mut blob: EntryBlob,
) -> Result<Table, LegacyError> {
    let entries = decode_entries(family, info, &mut blob)?;
    drop(blob);
    build_table(family, info, entries)
}

/// The first pass: every entry decoded, in blob order, except for where its jumps lead.
fn decode_entries(
    family: Family,
    info: &TableInfo,
    source: &mut dyn EntrySource,
) -> Result<Vec<Entry>, LegacyError> {
    let layout = if family == Family::Ip6 { &IPV6 } else { &IPV4 };
    let malformed = |detail: String| LegacyError::Malformed {
        family,
        table: info.name.clone(),
        detail,
    };
    let len = source.bytes().len();
    if len != info.size as usize {
        return Err(malformed(format!(
            "entry blob is {len} bytes, GET_INFO said {}",
            info.size
        )));
    }
    // GET_INFO's count, bounded by what the blob can hold, so a lying count costs nothing.
    let mut entries: Vec<Entry> =
        Vec::with_capacity((info.num_entries as usize).min(len / (layout.entry_len + XT_HEADER)));
    let mut off = 0usize;
    let mut released = 0usize;
    while off < len {
        let entry = decode_entry(family, layout, source.bytes(), off, &malformed)?;
        off += entry.size;
        entries.push(entry);
        if off - released >= RELEASE_STEP {
            source.consumed(off);
            released = off;
        }
    }
    source.consumed(len);
    if entries.len() != info.num_entries as usize {
        return Err(malformed(format!(
            "{} entries, GET_INFO said {}",
            entries.len(),
            info.num_entries
        )));
    }
    Ok(entries)
}

/// Decodes the entry at `off` of `blob`.
fn decode_entry(
    family: Family,
    layout: &Layout,
    blob: &[u8],
    off: usize,
    malformed: &dyn Fn(String) -> LegacyError,
) -> Result<Entry, LegacyError> {
    let rest = &blob[off..];
    if rest.len() < layout.entry_len {
        return Err(malformed(format!(
            "entry at {off} shorter than its fixed part"
        )));
    }
    let target_offset = usize::from(read_u16(rest, layout.target_offset));
    let next_offset = usize::from(read_u16(rest, layout.target_offset + 2));
    if next_offset < layout.entry_len + XT_HEADER
        || next_offset > rest.len()
        || target_offset < layout.entry_len
        || target_offset + XT_HEADER > next_offset
    {
        return Err(malformed(format!(
            "entry at {off}: target_offset {target_offset}, next_offset {next_offset}"
        )));
    }
    let e = &rest[..next_offset];
    let (mut matches, goto) = ip_part(family, e);
    let mut comment = None;
    let mut m_off = layout.entry_len;
    while m_off + XT_HEADER <= target_offset {
        let size = usize::from(read_u16(e, m_off));
        if size < XT_HEADER || m_off + size > target_offset {
            return Err(malformed(format!(
                "match at {} has size {size}",
                off + m_off
            )));
        }
        let name = xt::c_str(&e[m_off + 2..m_off + 31]);
        let rev = e[m_off + 31];
        match xt::decode_match(&name, rev, &e[m_off + XT_HEADER..m_off + size], family) {
            DecodedMatch::Comment(c) if comment.is_none() => comment = Some(c),
            // A second comment stays where it is, as iptables-save prints it.
            DecodedMatch::Comment(c) => matches.push(xt::extra_comment(&c)),
            DecodedMatch::Conditions(c) => matches.extend(c),
        }
        m_off += size;
    }
    let t_size = usize::from(read_u16(e, target_offset));
    let t_end = (target_offset + t_size.max(XT_HEADER)).min(next_offset);
    let t_name = xt::c_str(&e[target_offset + 2..target_offset + 31]);
    let t_rev = e[target_offset + 31];
    let t_data = &e[target_offset + XT_HEADER..t_end];
    let target = match &*t_name {
        "" => match t_data.get(0..4) {
            Some(b) => Target::Standard(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            None => return Err(malformed(format!("standard target at {off} too short"))),
        },
        "ERROR" => Target::Error(xt::c_string(t_data)),
        _ => {
            let (action, note) = xt::decode_target_with_notes(&t_name, t_rev, t_data, family);
            matches.extend(note);
            Target::Other(action)
        }
    };
    Ok(Entry {
        offset: off,
        size: next_offset,
        matches,
        comment,
        goto,
        counters: (
            read_u64(e, layout.counters),
            read_u64(e, layout.counters + 8),
        ),
        target,
    })
}

/// The second pass: the entries cut into chains (base chains from the hooks, user chains from
/// their `ERROR` heads) and jumps resolved to chain names. The entries are moved into the rules
/// from the back and their vector shrinks as it empties, so the two are never both whole.
fn build_table(
    family: Family,
    info: &TableInfo,
    mut entries: Vec<Entry>,
) -> Result<Table, LegacyError> {
    let malformed = |detail: String| LegacyError::Malformed {
        family,
        table: info.name.clone(),
        detail,
    };
    // Entries are in blob order: their offsets ascend.
    let index_at =
        |entries: &[Entry], offset: usize| entries.binary_search_by_key(&offset, |e| e.offset).ok();

    // Chain extents: name, base (hook and policy), first entry index, end index exclusive.
    struct Extent {
        name: String,
        base: Option<(HookPoint, Verdict)>,
        first: usize,
        end: usize,
    }
    let mut extents: Vec<Extent> = Vec::new();
    for hook in 0..NF_INET_NUMHOOKS {
        if info.valid_hooks & (1 << hook) == 0 {
            continue;
        }
        let (Some(first), Some(under)) = (
            index_at(&entries, info.hook_entry[hook] as usize),
            index_at(&entries, info.underflow[hook] as usize),
        ) else {
            return Err(malformed(format!(
                "hook {hook} offsets do not start an entry"
            )));
        };
        let Some(point) = HookPoint::from_number(family, hook as u32) else {
            continue;
        };
        if under < first {
            return Err(malformed(format!("hook {hook} underflow before its entry")));
        }
        let policy = match &entries[under].target {
            Target::Standard(v) => xt::standard_verdict(*v).unwrap_or(Verdict::Accept),
            _ => Verdict::Accept,
        };
        extents.push(Extent {
            name: point.iptables_chain().to_string(),
            base: Some((point, policy)),
            first,
            end: under,
        });
    }
    extents.sort_by_key(|x| x.first);
    let heads: Vec<(usize, String)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.target {
            Target::Error(name) if i + 1 < entries.len() => Some((i, name.clone())),
            _ => None,
        })
        .collect();
    // Where each chain starts, sorted: a user chain ends where the next one starts (found by
    // binary search: a linear scan per chain is quadratic, 30,000 chains took seconds).
    let mut starts: Vec<usize> = extents.iter().map(|x| x.first).collect();
    starts.extend(heads.iter().map(|h| h.0));
    starts.push(entries.len().saturating_sub(1));
    starts.sort_unstable();
    for (i, name) in heads {
        let next = starts
            .get(starts.partition_point(|s| *s <= i))
            .copied()
            .unwrap_or(entries.len());
        // The chain's last entry is its foot (unconditional RETURN), not a rule.
        let end = next.saturating_sub(1).max(i + 1);
        extents.push(Extent {
            name,
            base: None,
            first: i + 1,
            end,
        });
    }
    drop(starts);
    // Jump targets: a jump's offset points at the first entry after the chain's ERROR head.
    // (offset, extent index), sorted by offset.
    let mut chain_at: Vec<(usize, usize)> = extents
        .iter()
        .enumerate()
        .filter(|(_, x)| x.base.is_none())
        .filter_map(|(n, x)| entries.get(x.first).map(|e| (e.offset, n)))
        .collect();
    chain_at.sort_unstable();
    let chain_named = |offset: usize| {
        chain_at
            .binary_search_by_key(&offset, |c| c.0)
            .ok()
            .map(|i| extents[chain_at[i].1].name.clone())
    };

    let chain_type = kind_of_table(&info.name);
    let mut chains: Vec<Option<Chain>> = (0..extents.len()).map(|_| None).collect();
    let mut by_start: Vec<usize> = (0..extents.len()).collect();
    by_start.sort_by_key(|n| std::cmp::Reverse(extents[*n].first));
    for n in by_start {
        let x = &extents[n];
        // Everything from the chain's end on is taken (later chains) or not a rule (a foot, a
        // head, the table's end marker).
        entries.truncate(x.end);
        let first = x.first.min(entries.len());
        let mut rules = Vec::with_capacity(entries.len() - first);
        for (pos, e) in entries.drain(first..).enumerate() {
            let action = match e.target {
                Target::Standard(v) if v >= 0 => {
                    let v = v as usize;
                    if v == e.offset + e.size {
                        Action::None
                    } else if let Some(chain) = chain_named(v) {
                        Action::Verdict {
                            verdict: if e.goto {
                                Verdict::Goto(chain)
                            } else {
                                Verdict::Jump(chain)
                            },
                        }
                    } else {
                        Action::Opaque {
                            description: format!("jump to offset {v}"),
                        }
                    }
                }
                Target::Standard(v) => match xt::standard_verdict(v) {
                    Some(verdict) => Action::Verdict { verdict },
                    None => Action::Opaque {
                        description: format!("verdict {v}"),
                    },
                },
                Target::Error(name) => Action::Opaque {
                    description: format!("-j ERROR {name}"),
                },
                Target::Other(a) => a,
            };
            rules.push(Rule {
                handle: pos as u64 + 1,
                matches: e.matches,
                action,
                comment: e.comment,
                counters: Some(e.counters),
            });
        }
        // Hand back the emptied part of the entries (a shrink in place for a large vector).
        if entries.capacity() > 64 && entries.len() < entries.capacity() / 4 * 3 {
            entries.shrink_to_fit();
        }
        let base = x.base.clone().map(|(hook, policy)| BaseChain {
            hook,
            priority: legacy_priority(&info.name, hook),
            chain_type: chain_type.to_string(),
            policy,
        });
        chains[n] = Some(Chain {
            name: x.name.clone(),
            handle: 0,
            base,
            rules,
        });
    }
    Ok(Table {
        id: TableId {
            backend: Backend::Legacy,
            family,
            name: info.name.clone(),
        },
        handle: 0,
        chains: chains.into_iter().flatten().collect(),
        sets: BTreeMap::new(),
    })
}

/// The nftables-style chain type of a legacy table: `nat`, `route` (mangle) or `filter`.
fn kind_of_table(table: &str) -> &'static str {
    match table {
        "nat" => "nat",
        "mangle" => "route",
        _ => "filter",
    }
}

/// x_tables hook priorities (NF_IP_PRI_*), so legacy base chains order against nftables ones.
fn legacy_priority(table: &str, hook: HookPoint) -> i32 {
    match table {
        "raw" => -300,
        "mangle" => -150,
        "nat" if matches!(hook, HookPoint::Postrouting | HookPoint::Input) => 100,
        "nat" => -100,
        "filter" => 0,
        "security" => 50,
        _ => 0,
    }
}

/// One match or target blob of an entry blob, as stored: for debugging and test captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtBlob {
    pub is_target: bool,
    pub name: String,
    pub revision: u8,
    pub data: Vec<u8>,
}

/// Lists every match and target blob of a table's entry blob in order (stops at the first
/// malformed entry).
pub fn xt_blobs(family: Family, blob: &[u8]) -> Vec<XtBlob> {
    let layout = if family == Family::Ip6 { &IPV6 } else { &IPV4 };
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + layout.entry_len <= blob.len() {
        let e = &blob[off..];
        let target_offset = usize::from(read_u16(e, layout.target_offset));
        let next_offset = usize::from(read_u16(e, layout.target_offset + 2));
        if next_offset < layout.entry_len + XT_HEADER
            || next_offset > e.len()
            || target_offset < layout.entry_len
            || target_offset + XT_HEADER > next_offset
        {
            break;
        }
        let mut pos = layout.entry_len;
        while pos < next_offset {
            let is_target = pos >= target_offset;
            let size = usize::from(read_u16(e, pos));
            if size < XT_HEADER || pos + size > next_offset {
                break;
            }
            out.push(XtBlob {
                is_target,
                name: xt::c_string(&e[pos + 2..pos + 31]),
                revision: e[pos + 31],
                data: e[pos + XT_HEADER..pos + size].to_vec(),
            });
            if is_target {
                break;
            }
            pos += size;
        }
        off += next_offset;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ruleset::{NatRange, PortRange};

    fn captured(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/legacy/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn decode(family: Family, name: &str) -> Table {
        let file = captured(name);
        let info = TableInfo::parse(&file).expect("getinfo header");
        decode_table(family, &info, &file[GETINFO_LEN..]).expect("decode table")
    }

    #[test]
    fn decoding_while_handing_pages_back_gives_the_same_tables() {
        for (family, name) in [
            (Family::Ip, "ipv4-nat"),
            (Family::Ip, "ipv4-filter"),
            (Family::Ip6, "ipv6-nat"),
            (Family::Ip6, "ipv6-filter"),
        ] {
            let file = captured(name);
            let info = TableInfo::parse(&file).expect("getinfo header");
            let entries = &file[GETINFO_LEN..];
            let blob = EntryBlob::copy_of(entries).unwrap();
            assert_eq!(
                decode_table_releasing(family, &info, blob).unwrap(),
                decode_table(family, &info, entries).unwrap(),
                "{name}"
            );
        }
    }

    fn names(t: &Table) -> Vec<&str> {
        t.chains.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_content_fingerprint_ignores_counters_and_nothing_else() {
        for (family, name) in [(Family::Ip, "ipv4-nat"), (Family::Ip6, "ipv6-nat")] {
            let file = captured(name);
            let blob = &file[GETINFO_LEN..];
            let layout = if family == Family::Ip6 { &IPV6 } else { &IPV4 };
            let base = content_fingerprint(family, blob);
            // Traffic: the first entry's packet and byte counters move.
            let mut counted = blob.to_vec();
            counted[layout.counters..layout.counters + 16].copy_from_slice(&[7; 16]);
            assert_eq!(content_fingerprint(family, &counted), base, "{name}");
            // A rule edited in place (one byte of the last entry's target): seen.
            let mut edited = blob.to_vec();
            let at = edited.len() - 5;
            edited[at] ^= 0x01;
            assert_ne!(content_fingerprint(family, &edited), base, "{name}");
        }
    }

    #[test]
    fn parses_table_names_file() {
        assert_eq!(parse_table_names("nat\nfilter\n\n"), ["filter", "nat"]);
        assert!(parse_table_names("").is_empty());
    }

    #[test]
    fn ipv4_nat_chains_rules_and_jumps() {
        let t = decode(Family::Ip, "ipv4-nat");
        assert_eq!(t.id.backend, Backend::Legacy);
        assert_eq!(t.id.name, "nat");
        assert_eq!(
            names(&t),
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "CILIUM_POST_nat",
                "CNI-DN-1a2b3c4d5e6f7a8b9c0d1",
                "CNI-HOSTPORT-DNAT",
                "OLD_CILIUM_POST_nat",
            ]
        );
        let post = t.chain("POSTROUTING").unwrap();
        let base = post.base.as_ref().unwrap();
        assert_eq!(
            (
                base.hook,
                base.priority,
                base.chain_type.as_str(),
                &base.policy
            ),
            (HookPoint::Postrouting, 100, "nat", &Verdict::Accept)
        );
        assert_eq!(
            post.rules
                .iter()
                .map(|r| (r.handle, r.action.clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    1,
                    Action::Verdict {
                        verdict: Verdict::Jump("CILIUM_POST_nat".into())
                    }
                ),
                (
                    2,
                    Action::Verdict {
                        verdict: Verdict::Jump("OLD_CILIUM_POST_nat".into())
                    }
                ),
            ]
        );
        assert_eq!(t.chain("INPUT").unwrap().rules, vec![]);
        let old = t.chain("OLD_CILIUM_POST_nat").unwrap();
        assert_eq!(old.rules.len(), 1);
        assert_eq!(
            old.rules[0].matches[2],
            Match::Interface {
                direction: Direction::Destination,
                name: "cilium_+".into(),
                negated: true
            }
        );
        assert_eq!(old.rules[0].action, Action::Masquerade { ports: None });
        let dn = t.chain("CNI-DN-1a2b3c4d5e6f7a8b9c0d1").unwrap();
        assert_eq!(
            dn.rules[0].matches,
            vec![
                Match::L4Proto {
                    proto: 6,
                    negated: false
                },
                Match::Ports {
                    direction: Direction::Destination,
                    ranges: vec![PortRange::single(6443)],
                    negated: false
                }
            ]
        );
        assert_eq!(
            dn.rules[0].action,
            Action::Dnat {
                range: NatRange {
                    addresses: Some((
                        "10.42.0.244".parse().unwrap(),
                        "10.42.0.244".parse().unwrap()
                    )),
                    ports: Some(PortRange::single(6443))
                }
            }
        );
        let hp = t.chain("CNI-HOSTPORT-DNAT").unwrap();
        assert_eq!(
            hp.rules[0].comment.as_deref(),
            Some("dnat name: \"cbr0\" id: \"0f3c9a\"")
        );
    }

    #[test]
    fn ipv4_filter_goto_policy_and_opaque() {
        let t = decode(Family::Ip, "ipv4-filter");
        assert_eq!(names(&t), ["INPUT", "FORWARD", "OUTPUT", "KUBE-FW"]);
        let fwd = t.chain("FORWARD").unwrap();
        assert_eq!(fwd.base.as_ref().unwrap().policy, Verdict::Drop);
        assert_eq!(
            fwd.rules[0].action,
            Action::Verdict {
                verdict: Verdict::Goto("KUBE-FW".into())
            }
        );
        let input = t.chain("INPUT").unwrap();
        assert_eq!(
            input.rules[0].matches,
            vec![
                Match::Interface {
                    direction: Direction::Source,
                    name: "eth0".into(),
                    negated: false
                },
                Match::L4Proto {
                    proto: 17,
                    negated: false
                },
                Match::Ports {
                    direction: Direction::Source,
                    ranges: vec![PortRange::single(53)],
                    negated: false
                }
            ]
        );
        let fw = t.chain("KUBE-FW").unwrap();
        assert_eq!(
            fw.rules.iter().map(|r| r.handle).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(
            fw.rules[2].matches,
            vec![Match::Opaque {
                description: "-m statistic --mode random --probability 0.50000000000".into()
            }]
        );
        assert!(fw.rules.iter().all(|r| r.counters == Some((0, 0))));
    }

    #[test]
    fn ipv6_tables() {
        let nat = decode(Family::Ip6, "ipv6-nat");
        assert_eq!(nat.id.family, Family::Ip6);
        let post = nat.chain("POSTROUTING").unwrap();
        assert_eq!(
            post.rules[0].matches,
            vec![
                Match::Address {
                    direction: Direction::Source,
                    cidr: Cidr {
                        addr: "fd00:42::".parse().unwrap(),
                        prefix: 64
                    },
                    negated: false
                },
                Match::Interface {
                    direction: Direction::Destination,
                    name: "cilium_+".into(),
                    negated: true
                }
            ]
        );
        let filter = decode(Family::Ip6, "ipv6-filter");
        let input = filter.chain("INPUT").unwrap();
        assert_eq!(input.base.as_ref().unwrap().policy, Verdict::Drop);
        assert_eq!(
            input.rules[0].action,
            Action::Verdict {
                verdict: Verdict::Accept
            }
        );
    }

    #[test]
    fn corrupted_blobs_fail_or_decode_without_panic() {
        for (family, name) in [
            (Family::Ip, "ipv4-nat"),
            (Family::Ip, "ipv4-filter"),
            (Family::Ip6, "ipv6-nat"),
        ] {
            let file = captured(name);
            let info = TableInfo::parse(&file).unwrap();
            let blob = &file[GETINFO_LEN..];
            // Truncated at every 8-byte step: an error (never a panic) unless it is the full blob.
            for len in (0..blob.len()).step_by(8) {
                if len == 0 {
                    continue;
                }
                assert!(
                    decode_table(family, &info, &blob[..len]).is_err(),
                    "{name} cut at {len} decoded"
                );
            }
            // Every byte flipped in turn: whatever comes out, no panic.
            let mut bad = blob.to_vec();
            for i in 0..bad.len() {
                bad[i] ^= 0xa5;
                let _ = decode_table(family, &info, &bad);
                let _ = xt_blobs(family, &bad);
                bad[i] ^= 0xa5;
            }
        }
        assert!(TableInfo::parse(&[0u8; 10]).is_none());
    }
}
