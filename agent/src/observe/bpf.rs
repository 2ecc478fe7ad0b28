//! Cilium's L2 responder map `cilium_l2_responder_v4`, read-only from user space with aya 0.14
//! (`MapData::from_pin` then `HashMap::try_from`); no BPF program is loaded. Needs CAP_BPF on
//! kernels that gate bpf(2).
//!
//! Layout (Cilium `bpf/lib/l2_responder.h`): hash map, key `{ __u32 ip4 (network order);
//! __u32 ifindex (host order) }`, value `{ __u64 responses_sent }`. The key's address bytes are
//! read in order (bpftool prints them as one host-order u32: 855746752 is 192.168.1.51). The map
//! is validated (type hash, key 8, value 8) before any entry is read.
//!
//! Kernel quirk: map names are cut to 15 characters (`cilium_l2_respo`), so the map is found by
//! its pin path, never by name.
//!
//! Decision: nothing pinned at the path means Cilium L2 announcements are not in use: that is
//! `Ok` with [`ResponderStatus::NotPinned`] and no entries, not an error. Anything else that
//! fails (permission, a different map type or layout) is a [`BpfError`].

pub use crate::model::l2::ResponderStatus;
use crate::model::l2::{ResponderEntry, ResponderMap};
use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use std::net::Ipv4Addr;
use std::path::Path;

/// Where Cilium pins the map.
pub const CILIUM_L2_RESPONDER_PIN: &str = "/sys/fs/bpf/tc/globals/cilium_l2_responder_v4";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("opening the pinned BPF map {path}: {source}")]
    Open { path: String, source: MapError },
    #[error("reading the kernel's description of BPF map {path}: {source}")]
    Info { path: String, source: MapError },
    #[error("BPF map {path} is not an L2 responder map: expected {expected}, found {found}")]
    Layout {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("iterating BPF map {path}: {source}")]
    Iterate { path: String, source: MapError },
}

/// Decodes one key and value of the responder map.
pub fn decode_entry(key: [u8; 8], responses_sent: u64) -> ResponderEntry {
    ResponderEntry {
        ip: Ipv4Addr::new(key[0], key[1], key[2], key[3]),
        ifindex: u32::from_ne_bytes([key[4], key[5], key[6], key[7]]),
        responses_sent,
    }
}

fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Reads the responder map pinned at `path`.
pub fn read_responder_map(path: &Path) -> Result<ResponderMap, BpfError> {
    let shown = path.display().to_string();
    let data = match MapData::from_pin(path) {
        Ok(d) => d,
        Err(e) if is_missing(&e) => return Ok(ResponderMap::not_pinned(&shown)),
        Err(source) => {
            return Err(BpfError::Open {
                path: shown,
                source,
            })
        }
    };
    let info = data.info().map_err(|source| BpfError::Info {
        path: shown.clone(),
        source,
    })?;
    let map_type = info.map_type().map_err(|source| BpfError::Info {
        path: shown.clone(),
        source,
    })?;
    if !matches!(map_type, MapType::Hash) {
        return Err(BpfError::Layout {
            path: shown,
            expected: "map type hash",
            found: format!("map type {map_type:?}"),
        });
    }
    if info.key_size() != 8 || info.value_size() != 8 {
        return Err(BpfError::Layout {
            path: shown,
            expected: "key size 8 ({ip4, ifindex}) and value size 8 ({responses_sent})",
            found: format!(
                "key size {} and value size {}",
                info.key_size(),
                info.value_size()
            ),
        });
    }
    let map = Map::from_map_data(data).map_err(|source| BpfError::Open {
        path: shown.clone(),
        source,
    })?;
    let hash: HashMap<MapData, [u8; 8], u64> =
        HashMap::try_from(map).map_err(|source| BpfError::Open {
            path: shown.clone(),
            source,
        })?;
    let mut entries = Vec::new();
    for item in hash.iter() {
        match item {
            Ok((key, value)) => entries.push(decode_entry(key, value)),
            // An entry deleted between get_next_key and lookup: skip it.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(BpfError::Iterate {
                    path: shown,
                    source,
                })
            }
        }
    }
    entries.sort();
    Ok(ResponderMap {
        path: shown,
        status: ResponderStatus::Read,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_like_bpftool_shows_them() {
        // bpftool: "ip4": 855746752, "ifindex": 3 (the field report); on a little-endian host
        // the key bytes are c0 a8 01 33 03 00 00 00.
        let ip4 = 855_746_752u32.to_ne_bytes();
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&ip4);
        key[4..].copy_from_slice(&3u32.to_ne_bytes());
        let e = decode_entry(key, 0);
        if cfg!(target_endian = "little") {
            assert_eq!(e.ip, Ipv4Addr::new(192, 168, 1, 51));
        }
        assert_eq!(e.ifindex, 3);
        assert_eq!(e.responses_sent, 0);
    }

    #[test]
    fn a_missing_pin_is_not_an_error() {
        let path = Path::new("/sys/fs/bpf/netmend-unit-test-no-such-pin");
        match read_responder_map(path) {
            Ok(m) => {
                assert_eq!(m.status, ResponderStatus::NotPinned);
                assert!(m.entries.is_empty());
            }
            // Without bpffs mounted or privileges the open fails differently: still no panic.
            Err(e) => assert!(e.to_string().contains("netmend-unit-test-no-such-pin")),
        }
    }
}
