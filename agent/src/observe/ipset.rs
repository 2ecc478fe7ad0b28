//! The names of ipsets, looked up by the kernel index that `-m set` blobs carry (x_tables stores
//! the index, not the name; `iptables-save` asks the kernel the same way). One `getsockopt`
//! (`SO_IP_SET`, `IP_SET_OP_GET_BYINDEX`) per distinct index, in the calling thread's network
//! namespace.

use crate::model::render::SET_INDEX_PREFIX;
use crate::model::ruleset::{Match, Rule, Ruleset};
use std::collections::HashMap;

const SO_IP_SET: libc::c_int = 83;
const IP_SET_OP_GET_BYINDEX: u32 = 0x0000_0007;
/// `IPSET_PROTOCOL_MIN`: the oldest protocol the kernel accepts in a request.
const IPSET_PROTOCOL: u32 = 6;
const IPSET_MAXNAMELEN: usize = 32;

/// Size of `struct ip_set_req_get_set`: `unsigned op, version; union { char name[32]; u16 index;
/// }` (the union at offset 8).
const REQ_GET_SET_LEN: usize = 8 + IPSET_MAXNAMELEN;

/// The name of the ipset with kernel index `index`; None when there is none or ipset is not
/// available (no module, no privilege).
pub fn set_name(index: u16) -> Option<String> {
    let fd = crate::sys::socket::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW).ok()?;
    let mut req = [0u8; REQ_GET_SET_LEN];
    req[0..4].copy_from_slice(&IP_SET_OP_GET_BYINDEX.to_ne_bytes());
    req[4..8].copy_from_slice(&IPSET_PROTOCOL.to_ne_bytes());
    req[8..10].copy_from_slice(&index.to_ne_bytes());
    use std::os::fd::AsFd;
    crate::sys::socket::getsockopt_bytes(fd.as_fd(), libc::SOL_IP, SO_IP_SET, &mut req).ok()?;
    let name = crate::observe::xt::c_string(&req[8..]);
    (!name.is_empty()).then_some(name)
}

/// Replaces the `ipset#N` placeholders the xt decoder leaves in `-m set` matches with the sets'
/// names, asking `lookup` once per index. Unknown indexes stay as they are (the renderer then says
/// the rule is not expressible).
pub fn resolve_with(
    rules: &mut dyn Iterator<Item = &mut Rule>,
    lookup: &mut dyn FnMut(u16) -> Option<String>,
) {
    let mut cache: HashMap<u16, Option<String>> = HashMap::new();
    for rule in rules {
        for m in rule.matches.iter_mut() {
            let Match::SetLookup { set, .. } = m else {
                continue;
            };
            let Some(index) = set
                .strip_prefix(SET_INDEX_PREFIX)
                .and_then(|i| i.parse::<u16>().ok())
            else {
                continue;
            };
            if let Some(name) = cache.entry(index).or_insert_with(|| lookup(index)) {
                *set = name.clone();
            }
        }
    }
}

/// Resolves every `-m set` placeholder of `ruleset` against the kernel.
pub fn resolve_set_names(ruleset: &mut Ruleset) {
    let mut rules = ruleset
        .tables
        .iter_mut()
        .flat_map(|t| t.chains.iter_mut())
        .flat_map(|c| c.rules.iter_mut());
    resolve_with(&mut rules, &mut set_name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ruleset::{Action, Field};

    #[test]
    fn placeholders_are_resolved_once_per_index_and_unknown_ones_kept() {
        let lookup_rule = |set: &str| Rule {
            handle: 1,
            matches: vec![Match::SetLookup {
                set: set.into(),
                key: vec![Field::Other("dst".into()), Field::Other("dst".into())],
                negated: false,
            }],
            action: Action::None,
            comment: None,
            counters: None,
        };
        let mut rules = [
            lookup_rule("ipset#0"),
            lookup_rule("ipset#0"),
            lookup_rule("ipset#7"),
            lookup_rule("named"),
        ];
        let mut asked = Vec::new();
        resolve_with(&mut rules.iter_mut(), &mut |i| {
            asked.push(i);
            (i == 0).then(|| "KUBE-CLUSTER-IP".to_string())
        });
        assert_eq!(asked, [0, 7]);
        let names: Vec<&str> = rules
            .iter()
            .map(|r| match &r.matches[0] {
                Match::SetLookup { set, .. } => set.as_str(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            names,
            ["KUBE-CLUSTER-IP", "KUBE-CLUSTER-IP", "ipset#7", "named"]
        );
    }
}
