//! The resource types the fake API server serves, with what their wire protocol needs: group,
//! version, plural, kind, scope, whether `status` is a subresource, the field selectors the real
//! server accepts for them, and the strategic-merge keys of their lists. Also the parsing of a
//! request path into the resource, namespace, name and subresource it addresses.

/// A served resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Writes to the main resource keep the stored `status`; writes to `/status` change only it.
    pub status_subresource: bool,
    /// Field selector labels besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
    /// Strategic merge: lists merged element by element, as (path of map keys, merge key). A
    /// list not named here (and not in [`PRIMITIVE_MERGE_LISTS`]) is replaced whole.
    pub merge_keys: &'static [(&'static str, &'static str)],
}

impl ResourceType {
    /// `v1` or `group/version`, as in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these: `NodeList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `nodes` or `leases.coordination.k8s.io`, as messages of the real server name it.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The path prefix of this type's group and version: `/api/v1` or `/apis/group/version`.
    pub fn group_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The merge key of the list at `path` (map keys joined by dots), if it is merged by key.
    pub fn merge_key(&self, path: &str) -> Option<&'static str> {
        COMMON_MERGE_KEYS
            .iter()
            .chain(self.merge_keys.iter())
            .find(|(p, _)| *p == path)
            .map(|(_, key)| *key)
    }

    /// Whether `label` may be used in a field selector of this type.
    pub fn supports_field(&self, label: &str) -> bool {
        label == "metadata.name"
            || (self.namespaced && label == "metadata.namespace")
            || self.field_labels.contains(&label)
    }
}

/// Lists every type merges by key.
const COMMON_MERGE_KEYS: &[(&str, &str)] = &[("metadata.ownerReferences", "uid")];

/// Lists of scalars that strategic merge unions instead of replacing.
pub const PRIMITIVE_MERGE_LISTS: &[&str] = &["metadata.finalizers"];

pub const NODES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "nodes",
    kind: "Node",
    namespaced: false,
    status_subresource: true,
    field_labels: &["spec.unschedulable"],
    merge_keys: &[
        ("spec.taints", "key"),
        ("status.conditions", "type"),
        ("status.addresses", "type"),
        ("status.volumesAttached", "name"),
    ],
};

pub const PODS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
    status_subresource: true,
    field_labels: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    merge_keys: &[
        ("spec.containers", "name"),
        ("spec.containers.ports", "containerPort"),
        ("spec.containers.env", "name"),
        ("spec.containers.volumeMounts", "mountPath"),
        ("spec.initContainers", "name"),
        ("spec.initContainers.ports", "containerPort"),
        ("spec.initContainers.env", "name"),
        ("spec.initContainers.volumeMounts", "mountPath"),
        ("spec.volumes", "name"),
        ("spec.imagePullSecrets", "name"),
        ("spec.hostAliases", "ip"),
        ("status.conditions", "type"),
        ("status.podIPs", "ip"),
    ],
};

pub const SERVICES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "services",
    kind: "Service",
    namespaced: true,
    status_subresource: true,
    field_labels: &["spec.clusterIP", "spec.type"],
    merge_keys: &[("spec.ports", "port")],
};

pub const NAMESPACES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
    status_subresource: true,
    field_labels: &["status.phase"],
    merge_keys: &[("status.conditions", "type")],
};

pub const CORE_EVENTS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    status_subresource: false,
    field_labels: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    merge_keys: &[],
};

pub const EVENTS: ResourceType = ResourceType {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    status_subresource: false,
    field_labels: &[
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "type",
    ],
    merge_keys: &[],
};

pub const LEASES: ResourceType = ResourceType {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
    status_subresource: false,
    field_labels: &[],
    merge_keys: &[],
};

pub const ENDPOINT_SLICES: ResourceType = ResourceType {
    group: "discovery.k8s.io",
    version: "v1",
    plural: "endpointslices",
    kind: "EndpointSlice",
    namespaced: true,
    status_subresource: false,
    field_labels: &["addressType"],
    // endpoints and ports are atomic lists in the real schema: replaced whole.
    merge_keys: &[],
};

pub const CONFIG_MAPS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "configmaps",
    kind: "ConfigMap",
    namespaced: true,
    status_subresource: false,
    field_labels: &[],
    merge_keys: &[],
};

/// Every served type.
pub const ALL: &[&ResourceType] = &[
    &NODES,
    &PODS,
    &SERVICES,
    &NAMESPACES,
    &CORE_EVENTS,
    &EVENTS,
    &LEASES,
    &ENDPOINT_SLICES,
    &CONFIG_MAPS,
];

/// The type served at `group/version/plural`, if any.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .copied()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
}

/// What a resource path addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static ResourceType,
    /// The namespace of the path; `None` for cluster-scoped types and all-namespace lists.
    pub namespace: Option<String>,
    /// `None` for the collection.
    pub name: Option<String>,
    /// `status`, the one subresource served.
    pub subresource: Option<String>,
}

/// Why a path addresses nothing served.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not a resource path, or a type this server does not serve.
    NotFound,
    /// A namespaced type addressed without a namespace, or a cluster type with one.
    BadScope(String),
}

/// Parses `/api/v1/...` or `/apis/GROUP/VERSION/...`.
pub fn parse_path(path: &str) -> Result<Target, PathError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(PathError::NotFound),
    };
    let lookup = |plural: &str| find(group, version, plural).ok_or(PathError::NotFound);
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        // `namespaces/NAME` alone (or with `status`) is the Namespace object itself.
        ["namespaces", ns, plural, ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [plural] => (lookup(plural)?, None, None),
        [plural, name] => (lookup(plural)?, Some(name.to_string()), None),
        [plural, name, sub] => (
            lookup(plural)?,
            Some(name.to_string()),
            Some(sub.to_string()),
        ),
        _ => return Err(PathError::NotFound),
    };
    if let Some(name) = &name {
        if name.is_empty() {
            return Err(PathError::NotFound);
        }
    }
    if let Some(sub) = &subresource {
        if sub != "status" || !resource.status_subresource {
            return Err(PathError::NotFound);
        }
    }
    if namespace.is_some() && !resource.namespaced {
        return Err(PathError::BadScope(format!(
            "{} is not namespaced",
            resource.qualified_plural()
        )));
    }
    if namespace.is_none() && resource.namespaced && name.is_some() {
        return Err(PathError::BadScope(format!(
            "{} {:?} needs a namespace in the path",
            resource.qualified_plural(),
            name.unwrap_or_default()
        )));
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_resource_namespace_name_and_subresource() {
        let node_status = parse_path("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(node_status.resource, &NODES);
        assert_eq!(node_status.namespace, None);
        assert_eq!(node_status.name.as_deref(), Some("n1"));
        assert_eq!(node_status.subresource.as_deref(), Some("status"));
        let lease =
            parse_path("/apis/coordination.k8s.io/v1/namespaces/netmend/leases/slot-0").unwrap();
        assert_eq!(lease.resource, &LEASES);
        assert_eq!(lease.namespace.as_deref(), Some("netmend"));
        let all_pods = parse_path("/api/v1/pods").unwrap();
        assert_eq!(
            (all_pods.resource, all_pods.namespace, all_pods.name),
            (&PODS, None, None)
        );
        let slices =
            parse_path("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").unwrap();
        assert_eq!(slices.resource, &ENDPOINT_SLICES);
        // The Namespace object itself, and its status.
        let namespace = parse_path("/api/v1/namespaces/netmend").unwrap();
        assert_eq!(
            (namespace.resource, namespace.name.as_deref()),
            (&NAMESPACES, Some("netmend"))
        );
        let namespace_status = parse_path("/api/v1/namespaces/netmend/status").unwrap();
        assert_eq!(namespace_status.subresource.as_deref(), Some("status"));
        assert_eq!(
            parse_path("/apis/events.k8s.io/v1/namespaces/a/events")
                .unwrap()
                .resource,
            &EVENTS
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/a/events").unwrap().resource,
            &CORE_EVENTS
        );
    }

    #[test]
    fn unserved_paths_and_wrong_scopes_are_refused() {
        for path in [
            "/api/v1/secrets",
            "/apis/apps/v1/deployments",
            "/api/v1/nodes/n1/proxy",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/x/status",
            "/metrics",
            "/api/v1/nodes/n1/status/extra",
        ] {
            assert_eq!(parse_path(path), Err(PathError::NotFound), "{path}");
        }
        assert!(matches!(
            parse_path("/api/v1/pods/p1"),
            Err(PathError::BadScope(_))
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/a/nodes/n1"),
            Err(PathError::BadScope(_))
        ));
    }
}
