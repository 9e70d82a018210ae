//! The resources the API serves: group, version, kind, names, scope and subresources. Built-in
//! ones are listed here; custom resources come from CustomResourceDefinitions at run time and
//! use the same type.

use serde::{Deserialize, Serialize};

/// A subresource the API serves under a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subresource {
    /// `/status`: writes there change only `.status`; writes to the object ignore it.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
    /// `pods/binding`: the scheduler's way to set `.spec.nodeName`.
    Binding,
    /// `pods/log`: the kubelet streams container logs.
    Log,
    /// `serviceaccounts/token`: a TokenRequest mints a bound token for the account.
    Token,
    /// `pods/exec`: a command in a container, streamed over a WebSocket by the kubelet.
    Exec,
    /// `pods/portforward`: TCP connections to the pod's ports, over SPDY/3.1 from the kubelet.
    PortForward,
    /// `pods/attach`: the stdio of a container's main process, streamed by the kubelet as exec.
    Attach,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Token => "token",
            Subresource::Exec => "exec",
            Subresource::PortForward => "portforward",
            Subresource::Attach => "attach",
        }
    }

    pub fn parse(s: &str) -> Option<Subresource> {
        Some(match s {
            "status" => Subresource::Status,
            "scale" => Subresource::Scale,
            "binding" => Subresource::Binding,
            "log" => Subresource::Log,
            "token" => Subresource::Token,
            "exec" => Subresource::Exec,
            "portforward" => Subresource::PortForward,
            "attach" => Subresource::Attach,
            _ => return None,
        })
    }
}

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The path segment: `pods`.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// Defined by a CustomResourceDefinition (served as untyped JSON).
    pub custom: bool,
}

impl ResourceInfo {
    /// `v1` for core, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The verbs the resource supports: all of [`VERBS`], except the reviews (access and
    /// token reviews), which are only created (answered, never stored), and the resource metrics, which are only read
    /// (computed from the kubelets when asked).
    pub fn verbs(&self) -> &'static [&'static str] {
        match self.group.as_str() {
            "authorization.k8s.io" | "authentication.k8s.io" => &["create"],
            "metrics.k8s.io" => &["get", "list"],
            _ => VERBS,
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The store prefix of all objects of this resource: `/registry/<group>/<plural>/`. Core
    /// objects live under the group name `core`.
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// The store prefix of the objects in one namespace (all of them when `None`).
    pub fn storage_namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.storage_prefix()),
            _ => self.storage_prefix(),
        }
    }
}

/// The verbs every resource supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    subs: &'static [Subresource],
}

use Subresource::{Attach, Binding, Exec, Log, PortForward, Scale, Status, Token};

const BUILTIN: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        all: false,
        subs: &[Status],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        all: false,
        subs: &[Status],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        all: true,
        subs: &[Status, Binding, Log, Exec, Attach, PortForward],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        short: &["svc"],
        all: true,
        subs: &[Status],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        namespaced: true,
        short: &["ep"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        all: false,
        subs: &[Token],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        all: false,
        subs: &[],
    },
    // The same objects as core/v1 events, under the names of events.k8s.io.
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        all: true,
        subs: &[Status, Scale],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        namespaced: true,
        short: &["rs"],
        all: true,
        subs: &[Status, Scale],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        namespaced: true,
        short: &["ds"],
        all: true,
        subs: &[Status],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        namespaced: true,
        short: &["sts"],
        all: true,
        subs: &[Status, Scale],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
        short: &[],
        all: true,
        subs: &[Status],
    },
    Builtin {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        namespaced: true,
        short: &["cj"],
        all: true,
        subs: &[Status],
    },
    Builtin {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        namespaced: true,
        short: &["hpa"],
        all: true,
        subs: &[Status],
    },
    // The same objects as autoscaling/v2 (stored once), in v1's shape; v2 is the preferred
    // version, listed first.
    Builtin {
        group: "autoscaling",
        version: "v1",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        namespaced: true,
        short: &["hpa"],
        all: true,
        subs: &[Status],
    },
    Builtin {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
        short: &["netpol"],
        all: false,
        subs: &[],
    },
    // Cluster IP ranges (MultiCIDRServiceAllocator, GA in 1.33): the default `kubernetes` one
    // from --service-cluster-ip-range, and any users add.
    Builtin {
        group: "networking.k8s.io",
        version: "v1",
        kind: "ServiceCIDR",
        plural: "servicecidrs",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[Status],
    },
    // The cluster IPs the allocator handed out, one object per address (and any a user adds
    // to keep an address from Services).
    Builtin {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IPAddress",
        plural: "ipaddresses",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenReview",
        plural: "tokenreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    // Computed from the kubelets' stats when read, never stored (`kubectl top`, the HPA).
    Builtin {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "NodeMetrics",
        plural: "nodes",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "PodMetrics",
        plural: "pods",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        all: false,
        subs: &[Status],
    },
];

/// Every built-in resource, in the order discovery lists them.
pub fn builtin() -> Vec<ResourceInfo> {
    BUILTIN
        .iter()
        .map(|b| ResourceInfo {
            group: b.group.into(),
            version: b.version.into(),
            kind: b.kind.into(),
            plural: b.plural.into(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| s.to_string()).collect(),
            categories: if b.all {
                vec!["all".into()]
            } else {
                Vec::new()
            },
            subresources: b.subs.to_vec(),
            custom: false,
        })
        .collect()
}

/// The built-in resource of a kind.
pub fn builtin_kind(group: &str, kind: &str) -> Option<ResourceInfo> {
    builtin()
        .into_iter()
        .find(|r| r.group == group && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_the_api_must_serve_is_listed() {
        let all = builtin();
        for plural in [
            "namespaces",
            "nodes",
            "pods",
            "services",
            "endpoints",
            "configmaps",
            "secrets",
            "serviceaccounts",
            "events",
            "deployments",
            "replicasets",
            "daemonsets",
            "statefulsets",
            "controllerrevisions",
            "jobs",
            "cronjobs",
            "horizontalpodautoscalers",
            "networkpolicies",
            "endpointslices",
            "leases",
            "customresourcedefinitions",
            "roles",
            "clusterroles",
            "rolebindings",
            "clusterrolebindings",
            "selfsubjectaccessreviews",
            "subjectaccessreviews",
        ] {
            assert!(all.iter().any(|r| r.plural == plural), "{plural}");
        }
        for short in [
            "po", "svc", "deploy", "rs", "ds", "sts", "ns", "no", "netpol", "cm", "ep", "hpa", "cj",
        ] {
            assert!(
                all.iter().any(|r| r.short_names.iter().any(|s| s == short)),
                "{short}"
            );
        }
    }

    #[test]
    fn storage_keys_follow_group_resource_namespace_name() {
        let pods = builtin_kind("", "Pod").unwrap();
        assert_eq!(
            pods.storage_key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(
            pods.storage_namespace_prefix(Some("default")),
            "/registry/core/pods/default/"
        );
        let nodes = builtin_kind("", "Node").unwrap();
        assert_eq!(nodes.storage_key(None, "n1"), "/registry/core/nodes/n1");
        let deploy = builtin_kind("apps", "Deployment").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert!(deploy.has(Subresource::Scale));
    }
}
