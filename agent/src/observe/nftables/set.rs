//! Decoding of nftables sets and maps (NEWSET messages) and their elements (NEWSETELEM) into
//! [`Set`]/[`SetElement`]. Pure functions over message payloads.
//!
//! Kernel and userspace quirks handled here:
//! - A concatenated key type is packed by nftables userspace 6 bits per component, first component
//!   in the highest bits (`concat_subtype_add`): `ipv4_addr . inet_proto . inet_service` is
//!   `(7 << 12) | (12 << 6) | 13`. The kernel stores the number opaquely.
//! - Each component of a concatenated key is padded to 4 bytes in the key data (registers are 32
//!   bits). `NFTA_SET_DESC_CONCAT` gives the unpadded field lengths when userspace sent them.
//! - An interval set without concatenation stores a range as two elements: the start, and the first
//!   value past the end flagged `NFT_SET_ELEM_INTERVAL_END` (the rbtree backend dumps them in
//!   descending order). Concatenated ranges (pipapo) carry `NFTA_SET_ELEM_KEY_END` instead, inclusive.
//! - A verdict map has data type `NFT_DATA_VERDICT` (0xffffff00); its element data is a nested verdict.

use super::{attr_str_ref, decode_verdict, NFTA_DATA_VALUE, NFTA_DATA_VERDICT};
use crate::model::ruleset::{Cidr, KeyValue, Set, SetDataType, SetElement};
use crate::observe::netlink::Attrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_FIELD_LEN: u16 = 1;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;

/// Data type of a verdict map (`NFT_DATA_VERDICT`).
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

/// Bits per component of a concatenated nftables datatype.
const CONCAT_TYPE_BITS: u32 = 6;
const CONCAT_TYPE_MASK: u32 = (1 << CONCAT_TYPE_BITS) - 1;

/// A decoded NEWSET message: the model set (no elements yet) plus what element decoding needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SetHeader {
    pub table: String,
    pub set: Set,
    pub is_map: bool,
    /// Total key length in bytes (padded components).
    pub key_len: usize,
    /// Unpadded length of each key component.
    pub field_lens: Vec<usize>,
}

/// Splits an nftables datatype number into its components (one for a plain type).
pub fn split_key_type(value: u32) -> Vec<SetDataType> {
    if value <= CONCAT_TYPE_MASK {
        return vec![SetDataType::from_nft(value)];
    }
    let mut parts = Vec::with_capacity(4);
    let mut rest = value;
    while rest != 0 {
        parts.push(SetDataType::from_nft(rest & CONCAT_TYPE_MASK));
        rest >>= CONCAT_TYPE_BITS;
    }
    parts.reverse();
    parts
}

/// Decodes a NEWSET payload (after the 4-byte nfgenmsg).
pub fn decode_set(attrs: &[u8]) -> Option<SetHeader> {
    let mut table = None;
    let mut name = None;
    let mut flags = 0u32;
    let mut key_type = 0u32;
    let mut key_len = 0usize;
    let mut data_type = None;
    let mut field_lens = Vec::new();
    for attr in Attrs::new(attrs) {
        match attr.kind {
            NFTA_SET_TABLE => table = Some(attr.string()),
            NFTA_SET_NAME => name = Some(attr.string()),
            NFTA_SET_FLAGS => flags = attr.u32_be().unwrap_or(0),
            NFTA_SET_KEY_TYPE => key_type = attr.u32_be().unwrap_or(0),
            NFTA_SET_KEY_LEN => key_len = attr.u32_be().unwrap_or(0) as usize,
            NFTA_SET_DATA_TYPE => data_type = attr.u32_be(),
            NFTA_SET_DESC => {
                for desc in attr.nested_attrs() {
                    if desc.kind != NFTA_SET_DESC_CONCAT {
                        continue;
                    }
                    for elem in desc.nested_attrs() {
                        if elem.kind != NFTA_LIST_ELEM {
                            continue;
                        }
                        for field in elem.nested_attrs() {
                            if field.kind == NFTA_SET_FIELD_LEN {
                                if let Some(len) = field.u32_be() {
                                    field_lens.push(len as usize);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut key_types = split_key_type(key_type);
    if field_lens.len() > 1 && key_types.len() != field_lens.len() {
        // The packed type does not split as the field lengths say: trust the lengths.
        key_types = vec![SetDataType::Other(key_type); field_lens.len()];
    }
    if field_lens.is_empty() {
        field_lens = component_lengths(&key_types, key_len);
    }
    let is_map = flags & NFT_SET_MAP != 0;
    Some(SetHeader {
        table: table?,
        is_map,
        key_len,
        field_lens,
        set: Set {
            name: name?,
            anonymous: flags & NFT_SET_ANONYMOUS != 0,
            key_types,
            is_verdict_map: is_map && data_type == Some(NFT_DATA_VERDICT),
            interval: flags & NFT_SET_INTERVAL != 0,
            elements: Vec::new(),
        },
    })
}

/// Unpadded component lengths from the types, the last unknown one taking what is left.
fn component_lengths(types: &[SetDataType], key_len: usize) -> Vec<usize> {
    if types.len() == 1 {
        return vec![key_len];
    }
    let mut lens = Vec::with_capacity(types.len());
    let mut used = 0usize;
    for ty in types {
        let len = ty
            .width()
            .unwrap_or_else(|| key_len.saturating_sub(used).min(4));
        lens.push(len);
        used += pad4(len);
    }
    lens
}

const fn pad4(len: usize) -> usize {
    (len + 3) & !3
}

/// One element as it came from the kernel, before interval pairing.
#[derive(Debug, Clone)]
pub struct RawElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub interval_end: bool,
    pub verdict: Option<crate::model::ruleset::Verdict>,
}

/// Decodes a NEWSETELEM payload (after the nfgenmsg): (table, set, elements).
pub fn decode_set_elements(attrs: &[u8]) -> Option<(&str, &str, Vec<RawElement>)> {
    let mut table = None;
    let mut set = None;
    let mut elements = Vec::new();
    for attr in Attrs::new(attrs) {
        match attr.kind {
            NFTA_SET_ELEM_LIST_TABLE => table = Some(attr_str_ref(&attr)),
            NFTA_SET_ELEM_LIST_SET => set = Some(attr_str_ref(&attr)),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                for elem in attr.nested_attrs() {
                    if elem.kind == NFTA_LIST_ELEM {
                        elements.push(decode_element(elem.value));
                    }
                }
            }
            _ => {}
        }
    }
    Some((table?, set?, elements))
}

fn data_value(nested: &[u8]) -> Option<Vec<u8>> {
    Attrs::new(nested)
        .find(|a| a.kind == NFTA_DATA_VALUE)
        .map(|a| a.value.to_vec())
}

fn decode_element(attrs: &[u8]) -> RawElement {
    let mut element = RawElement {
        key: Vec::new(),
        key_end: None,
        interval_end: false,
        verdict: None,
    };
    for attr in Attrs::new(attrs) {
        match attr.kind {
            NFTA_SET_ELEM_KEY => element.key = data_value(attr.value).unwrap_or_default(),
            NFTA_SET_ELEM_KEY_END => element.key_end = data_value(attr.value),
            NFTA_SET_ELEM_FLAGS => {
                element.interval_end = attr.u32_be().unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END != 0;
            }
            NFTA_SET_ELEM_DATA => {
                element.verdict = Attrs::new(attr.value)
                    .find(|a| a.kind == NFTA_DATA_VERDICT)
                    .and_then(|a| decode_verdict(a.value));
            }
            _ => {}
        }
    }
    element
}

/// Turns the raw elements of one set into model elements, pairing interval starts and ends.
pub fn finish_elements(header: &SetHeader, raw: Vec<RawElement>) -> Vec<SetElement> {
    let paired_intervals = header.set.interval && raw.iter().all(|e| e.key_end.is_none());
    if !paired_intervals {
        return raw
            .into_iter()
            .map(|e| SetElement {
                key: split_key(header, &e.key),
                // A concatenated range whose end is its start is a single value.
                key_end: e
                    .key_end
                    .filter(|end| *end != e.key)
                    .map(|end| split_key(header, &end)),
                verdict: e.verdict,
            })
            .collect();
    }
    let mut raw = raw;
    // Equal keys: an end sorts before a start (adjacent ranges share the boundary value).
    raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.interval_end.cmp(&a.interval_end)));
    let mut elements = Vec::new();
    let mut open: Option<RawElement> = None;
    for element in raw {
        if element.interval_end {
            if let Some(start) = open.take() {
                let last = decrement(&element.key);
                elements.push(interval_element(header, start, &last));
            }
        } else if let Some(previous) = open.replace(element) {
            // Two starts in a row: the first one is a single value.
            let key = previous.key.clone();
            elements.push(interval_element(header, previous, &key));
        }
    }
    if let Some(start) = open {
        // No end element: the range runs to the top of the key space.
        let last = vec![0xff; start.key.len()];
        elements.push(interval_element(header, start, &last));
    }
    elements
}

fn interval_element(header: &SetHeader, start: RawElement, last: &[u8]) -> SetElement {
    let verdict = start.verdict.clone();
    if start.key == last {
        return SetElement {
            key: split_key(header, &start.key),
            key_end: None,
            verdict,
        };
    }
    let kind = header.set.key_types.first().copied();
    if let Some(cidr) = range_as_cidr(kind, &start.key, last) {
        return SetElement {
            key: vec![KeyValue::Address(cidr)],
            key_end: None,
            verdict,
        };
    }
    SetElement {
        key: split_key(header, &start.key),
        key_end: Some(split_key(header, last)),
        verdict,
    }
}

/// The big-endian value one less than `bytes` (wrapping at zero).
fn decrement(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for byte in out.iter_mut().rev() {
        let (value, borrow) = byte.overflowing_sub(1);
        *byte = value;
        if !borrow {
            break;
        }
    }
    out
}

/// `start..=last` as a network when it is exactly one (an address type only).
fn range_as_cidr(kind: Option<SetDataType>, start: &[u8], last: &[u8]) -> Option<Cidr> {
    let width = match kind? {
        SetDataType::Ipv4Addr => 4,
        SetDataType::Ipv6Addr => 16,
        _ => return None,
    };
    let start = start.get(..width)?;
    let last = last.get(..width)?;
    let mut prefix = 0u8;
    let mut host_part = false;
    for (s, l) in start.iter().zip(last) {
        for bit in (0..8).rev() {
            let (sb, lb) = ((s >> bit) & 1, (l >> bit) & 1);
            if !host_part && sb == lb {
                prefix += 1;
            } else {
                host_part = true;
                if sb != 0 || lb != 1 {
                    return None;
                }
            }
        }
    }
    Some(Cidr {
        addr: ip_from(start)?,
        prefix,
    })
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// Splits key bytes into components per the set's types and field lengths.
pub fn split_key(header: &SetHeader, key: &[u8]) -> Vec<KeyValue> {
    let mut values = Vec::with_capacity(header.field_lens.len());
    let mut offset = 0usize;
    for (index, &len) in header.field_lens.iter().enumerate() {
        let Some(bytes) = key.get(offset..offset + len) else {
            if let Some(rest) = key.get(offset..) {
                if !rest.is_empty() {
                    values.push(KeyValue::Raw(rest.to_vec()));
                }
            }
            return values;
        };
        let kind = header
            .set
            .key_types
            .get(index)
            .copied()
            .unwrap_or(SetDataType::Other(0));
        values.push(key_value(kind, bytes));
        offset += pad4(len);
    }
    values
}

/// One key component as a model value.
pub fn key_value(kind: SetDataType, bytes: &[u8]) -> KeyValue {
    match (kind, bytes.len()) {
        (SetDataType::Ipv4Addr, 4) | (SetDataType::Ipv6Addr, 16) => match ip_from(bytes) {
            Some(ip) => KeyValue::Address(Cidr::host(ip)),
            None => KeyValue::Raw(bytes.to_vec()),
        },
        (SetDataType::InetProto, 1) => KeyValue::Proto(bytes[0]),
        (SetDataType::InetService, 2) => KeyValue::Port(u16::from_be_bytes([bytes[0], bytes[1]])),
        _ => KeyValue::Raw(bytes.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(types: Vec<SetDataType>, lens: Vec<usize>, interval: bool) -> SetHeader {
        SetHeader {
            table: "t".into(),
            is_map: false,
            key_len: lens.iter().map(|l| pad4(*l)).sum(),
            field_lens: lens,
            set: Set {
                name: "s".into(),
                anonymous: true,
                key_types: types,
                is_verdict_map: false,
                interval,
                elements: Vec::new(),
            },
        }
    }

    #[test]
    fn concatenated_type_splits_first_component_high() {
        assert_eq!(
            split_key_type((7 << 12) | (12 << 6) | 13),
            vec![
                SetDataType::Ipv4Addr,
                SetDataType::InetProto,
                SetDataType::InetService
            ]
        );
        assert_eq!(split_key_type(13), vec![SetDataType::InetService]);
    }

    #[test]
    fn interval_pairs_become_cidrs_ranges_and_single_values() {
        let h = header(vec![SetDataType::Ipv4Addr], vec![4], true);
        let raw = |key: [u8; 4], end: bool| RawElement {
            key: key.to_vec(),
            key_end: None,
            interval_end: end,
            verdict: None,
        };
        // As the rbtree dumps them: descending, with the leading gap's end at 0.0.0.0.
        let elements = finish_elements(
            &h,
            vec![
                raw([10, 0, 0, 6], true),
                raw([10, 0, 0, 5], false),
                raw([203, 0, 113, 128], true),
                raw([203, 0, 113, 0], false),
                raw([0, 0, 0, 0], true),
            ],
        );
        assert_eq!(
            elements[0].key,
            vec![KeyValue::Address(Cidr::host("10.0.0.5".parse().unwrap()))]
        );
        assert_eq!(elements[0].key_end, None);
        assert_eq!(
            elements[1].key,
            vec![KeyValue::Address(Cidr {
                addr: "203.0.113.0".parse().unwrap(),
                prefix: 25
            })]
        );
        assert_eq!(elements.len(), 2);

        let ports = header(vec![SetDataType::InetService], vec![2], true);
        let elements = finish_elements(
            &ports,
            vec![
                RawElement {
                    key: vec![0x1f, 0x40],
                    key_end: None,
                    interval_end: false,
                    verdict: None,
                },
                RawElement {
                    key: vec![0x1f, 0x91],
                    key_end: None,
                    interval_end: true,
                    verdict: None,
                },
            ],
        );
        assert_eq!(elements[0].key, vec![KeyValue::Port(8000)]);
        assert_eq!(elements[0].key_end, Some(vec![KeyValue::Port(8080)]));
    }

    #[test]
    fn short_keys_do_not_panic() {
        let h = header(
            vec![
                SetDataType::Ipv4Addr,
                SetDataType::InetProto,
                SetDataType::InetService,
            ],
            vec![4, 1, 2],
            false,
        );
        assert_eq!(
            split_key(&h, &[1, 2, 3, 4, 6]),
            vec![
                KeyValue::Address(Cidr::host("1.2.3.4".parse().unwrap())),
                KeyValue::Proto(6)
            ]
        );
        assert!(decode_set(&[1, 2, 3]).is_none());
        assert!(decode_set_elements(&[0xff; 7]).is_none());
    }
}
