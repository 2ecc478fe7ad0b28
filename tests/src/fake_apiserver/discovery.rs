//! Discovery, as much as clients ask of it: `/version`, `/api` (the core versions), `/apis` (the
//! groups) and each group version's resource list, from the table of served types.

use super::resources::{self, ResourceType};
use serde_json::{json, Value};

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-netmend-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn api_versions(port: u16) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}],
    })
}

pub fn api_groups() -> Value {
    let mut groups: Vec<(&str, &str)> = resources::ALL
        .iter()
        .filter(|t| !t.group.is_empty())
        .map(|t| (t.group, t.version))
        .collect();
    groups.dedup();
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|(group, version)| {
            let gv = format!("{group}/{version}");
            json!({
                "name": group,
                "versions": [{"groupVersion": gv, "version": version}],
                "preferredVersion": {"groupVersion": gv, "version": version},
            })
        }).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1` or `/apis/GROUP/VERSION`: the resources of that group version.
pub fn resource_list(path: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = resources::ALL
        .iter()
        .copied()
        .filter(|t| t.group_prefix() == path)
        .collect();
    let first = types.first()?;
    let mut listed = Vec::new();
    for t in &types {
        listed.push(json!({
            "name": t.plural,
            "singularName": t.kind.to_ascii_lowercase(),
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if t.status_subresource {
            listed.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": first.api_version(),
        "resources": listed,
    }))
}
