//! Patch metadata of the built-in types: which lists merge (and by which key), which maps keep
//! only the keys a patch names (`retainKeys`). Hand-written from the `patchStrategy` and
//! `patchMergeKey` struct tags of kubernetes/api (`core/v1/types.go`, `apps/v1/types.go`,
//! `batch/v1/types.go`, `autoscaling/v2/types.go`) and apimachinery's `ObjectMeta`.
//!
//! Only fields with a strategy, and the fields that lead to them, are listed. Every other field
//! gets the default: maps merge recursively, lists are replaced whole. Unknown kinds (custom
//! resources) have no strategies at all.

use std::fmt;

/// How a field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// No tag: maps merge key by key, lists are replaced whole.
    Default,
    /// `patchStrategy:"merge"`: lists merge element-wise (by `merge_key` for lists of objects,
    /// as a set for lists of primitives).
    Merge,
    /// `patchStrategy:"replace"`: the patch value replaces the field whole, maps included.
    Replace,
}

/// The patch metadata of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMeta {
    /// The field's type; for a list, the type of its elements.
    pub ty: TypeRef,
    pub strategy: Strategy,
    /// `patchMergeKey`: the element field that identifies elements of a merged list of objects.
    pub merge_key: Option<&'static str>,
    /// `retainKeys` in the strategy: a patch may carry `$retainKeys` to drop the keys it does
    /// not name (DeploymentStrategy, volumes). Informational: `$retainKeys` is honoured wherever
    /// it appears, as apimachinery does.
    pub retain_keys: bool,
}

impl FieldMeta {
    /// A field with no strategy and no known type.
    pub const UNTYPED: FieldMeta = FieldMeta {
        ty: TypeRef::UNTYPED,
        strategy: Strategy::Default,
        merge_key: None,
        retain_keys: false,
    };

    /// True for lists that merge instead of being replaced.
    pub fn merges_lists(&self) -> bool {
        self.strategy == Strategy::Merge
    }
}

/// One type of the table: its fields with patch metadata.
#[derive(Debug)]
pub(crate) struct TypeDef {
    name: &'static str,
    fields: &'static [(&'static str, FieldMeta)],
}

/// A type in the patch schema, or no type (every field default).
#[derive(Clone, Copy)]
pub struct TypeRef(Option<&'static TypeDef>);

impl TypeRef {
    /// No type: maps merge, lists are replaced, only directives are special.
    pub const UNTYPED: TypeRef = TypeRef(None);

    /// The type of a whole object of a kind (`""` is the core group). Unknown kinds, custom
    /// resources among them, are [`TypeRef::UNTYPED`].
    pub fn for_kind(group: &str, kind: &str) -> TypeRef {
        let def: &'static TypeDef = match (group, kind) {
            ("", "Pod") => &POD,
            ("", "PodTemplate") => &POD_TEMPLATE,
            ("", "ReplicationController") => &WITH_TEMPLATE,
            ("", "Service") => &SERVICE,
            ("", "Node") => &NODE,
            ("", "Namespace") => &WITH_CONDITIONS,
            ("", "ServiceAccount") => &SERVICE_ACCOUNT,
            ("", "ConfigMap" | "Secret" | "Endpoints" | "Event") => &METADATA_ONLY,
            ("apps", "Deployment") => &DEPLOYMENT,
            ("apps", "ReplicaSet" | "DaemonSet" | "StatefulSet") => &WITH_TEMPLATE,
            ("apps", "ControllerRevision") => &METADATA_ONLY,
            ("batch", "Job") => &WITH_TEMPLATE,
            ("batch", "CronJob") => &CRON_JOB,
            ("autoscaling", "HorizontalPodAutoscaler") => &WITH_CONDITIONS,
            ("networking.k8s.io", "NetworkPolicy")
            | ("discovery.k8s.io", "EndpointSlice")
            | ("coordination.k8s.io", "Lease")
            | ("apiextensions.k8s.io", "CustomResourceDefinition") => &METADATA_ONLY,
            _ => return TypeRef::UNTYPED,
        };
        TypeRef(Some(def))
    }

    /// The type's name in the table (`PodSpec`), None when untyped.
    pub fn name(&self) -> Option<&'static str> {
        self.0.map(|d| d.name)
    }

    pub fn is_untyped(&self) -> bool {
        self.0.is_none()
    }

    /// The metadata of a field; fields not in the table are [`FieldMeta::UNTYPED`].
    pub fn field(&self, name: &str) -> FieldMeta {
        self.0
            .and_then(|d| d.fields.iter().find(|(n, _)| *n == name))
            .map(|(_, meta)| *meta)
            .unwrap_or(FieldMeta::UNTYPED)
    }

    /// Follows a path of field names (`["spec", "template", "spec"]`).
    pub fn at(&self, path: &[&str]) -> TypeRef {
        path.iter().fold(*self, |ty, name| ty.field(name).ty)
    }
}

impl PartialEq for TypeRef {
    fn eq(&self, other: &TypeRef) -> bool {
        match (self.0, other.0) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for TypeRef {}

impl fmt::Debug for TypeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "TypeRef({})", d.name),
            None => f.write_str("TypeRef(untyped)"),
        }
    }
}

// ---- table builders ----

const fn object(name: &'static str, ty: &'static TypeDef) -> (&'static str, FieldMeta) {
    (
        name,
        FieldMeta {
            ty: TypeRef(Some(ty)),
            strategy: Strategy::Default,
            merge_key: None,
            retain_keys: false,
        },
    )
}

/// A map whose patches may carry `$retainKeys` (`patchStrategy:"retainKeys"`).
const fn retain_keys(name: &'static str) -> (&'static str, FieldMeta) {
    (
        name,
        FieldMeta {
            ty: TypeRef::UNTYPED,
            strategy: Strategy::Default,
            merge_key: None,
            retain_keys: true,
        },
    )
}

/// A list of objects merged by `key` (`patchStrategy:"merge" patchMergeKey:key`).
const fn merge_by(
    name: &'static str,
    key: &'static str,
    elem: Option<&'static TypeDef>,
) -> (&'static str, FieldMeta) {
    (
        name,
        FieldMeta {
            ty: TypeRef(elem),
            strategy: Strategy::Merge,
            merge_key: Some(key),
            retain_keys: false,
        },
    )
}

/// A list of objects merged by `key` whose elements may carry `$retainKeys`
/// (`patchStrategy:"merge,retainKeys"`).
const fn merge_by_retain(name: &'static str, key: &'static str) -> (&'static str, FieldMeta) {
    (
        name,
        FieldMeta {
            ty: TypeRef::UNTYPED,
            strategy: Strategy::Merge,
            merge_key: Some(key),
            retain_keys: true,
        },
    )
}

/// A list of primitives merged as a set (`patchStrategy:"merge"` without merge key).
const fn merge_set(name: &'static str) -> (&'static str, FieldMeta) {
    (
        name,
        FieldMeta {
            ty: TypeRef::UNTYPED,
            strategy: Strategy::Merge,
            merge_key: None,
            retain_keys: false,
        },
    )
}

// ---- the table ----

/// apimachinery `metav1.ObjectMeta`.
static OBJECT_META: TypeDef = TypeDef {
    name: "ObjectMeta",
    fields: &[
        merge_set("finalizers"),
        merge_by("ownerReferences", "uid", None),
    ],
};

/// core/v1 `Container`; `EphemeralContainer` has the same tags.
static CONTAINER: TypeDef = TypeDef {
    name: "Container",
    fields: &[
        merge_by("ports", "containerPort", None),
        merge_by("env", "name", None),
        merge_by("volumeMounts", "mountPath", None),
        merge_by("volumeDevices", "devicePath", None),
    ],
};

/// core/v1 `PodSpec`.
static POD_SPEC: TypeDef = TypeDef {
    name: "PodSpec",
    fields: &[
        merge_by_retain("volumes", "name"),
        merge_by("initContainers", "name", Some(&CONTAINER)),
        merge_by("containers", "name", Some(&CONTAINER)),
        merge_by("ephemeralContainers", "name", Some(&CONTAINER)),
        merge_by("imagePullSecrets", "name", None),
        merge_by("hostAliases", "ip", None),
        // The list-map key is topologyKey + whenUnsatisfiable, the patch merge key only
        // topologyKey.
        merge_by("topologySpreadConstraints", "topologyKey", None),
        merge_by("schedulingGates", "name", None),
        merge_by_retain("resourceClaims", "name"),
    ],
};

/// core/v1 `PodStatus`.
static POD_STATUS: TypeDef = TypeDef {
    name: "PodStatus",
    fields: &[
        merge_by("conditions", "type", None),
        merge_by("podIPs", "ip", None),
        merge_by("hostIPs", "ip", None),
        merge_by_retain("resourceClaimStatuses", "name"),
    ],
};

static POD: TypeDef = TypeDef {
    name: "Pod",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &POD_SPEC),
        object("status", &POD_STATUS),
    ],
};

/// core/v1 `PodTemplateSpec`.
static POD_TEMPLATE_SPEC: TypeDef = TypeDef {
    name: "PodTemplateSpec",
    fields: &[object("metadata", &OBJECT_META), object("spec", &POD_SPEC)],
};

static POD_TEMPLATE: TypeDef = TypeDef {
    name: "PodTemplate",
    fields: &[
        object("metadata", &OBJECT_META),
        object("template", &POD_TEMPLATE_SPEC),
    ],
};

/// A status whose `conditions` merge by `type`: Deployment, ReplicaSet, DaemonSet, StatefulSet,
/// Job, Namespace, Service, HorizontalPodAutoscaler.
static CONDITIONS_STATUS: TypeDef = TypeDef {
    name: "ConditionsStatus",
    fields: &[merge_by("conditions", "type", None)],
};

/// A spec with a pod `template`: ReplicaSet, DaemonSet, StatefulSet, Job,
/// ReplicationController.
static TEMPLATE_SPEC: TypeDef = TypeDef {
    name: "TemplateSpec",
    fields: &[object("template", &POD_TEMPLATE_SPEC)],
};

/// ReplicaSet, DaemonSet, StatefulSet, Job, ReplicationController.
static WITH_TEMPLATE: TypeDef = TypeDef {
    name: "WorkloadWithTemplate",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &TEMPLATE_SPEC),
        object("status", &CONDITIONS_STATUS),
    ],
};

/// apps/v1 `DeploymentSpec`: `strategy` is `patchStrategy:"retainKeys"`, so a switch to
/// Recreate can drop `rollingUpdate`.
static DEPLOYMENT_SPEC: TypeDef = TypeDef {
    name: "DeploymentSpec",
    fields: &[
        object("template", &POD_TEMPLATE_SPEC),
        retain_keys("strategy"),
    ],
};

static DEPLOYMENT: TypeDef = TypeDef {
    name: "Deployment",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &DEPLOYMENT_SPEC),
        object("status", &CONDITIONS_STATUS),
    ],
};

/// batch/v1 `JobTemplateSpec`.
static JOB_TEMPLATE_SPEC: TypeDef = TypeDef {
    name: "JobTemplateSpec",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &TEMPLATE_SPEC),
    ],
};

static CRON_JOB_SPEC: TypeDef = TypeDef {
    name: "CronJobSpec",
    fields: &[object("jobTemplate", &JOB_TEMPLATE_SPEC)],
};

static CRON_JOB: TypeDef = TypeDef {
    name: "CronJob",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &CRON_JOB_SPEC),
    ],
};

/// core/v1 `ServiceSpec`: ports merge by `port`.
static SERVICE_SPEC: TypeDef = TypeDef {
    name: "ServiceSpec",
    fields: &[merge_by("ports", "port", None)],
};

static SERVICE: TypeDef = TypeDef {
    name: "Service",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &SERVICE_SPEC),
        object("status", &CONDITIONS_STATUS),
    ],
};

/// core/v1 `NodeSpec`: `podCIDRs` is a merged list of strings; taints have no strategy.
static NODE_SPEC: TypeDef = TypeDef {
    name: "NodeSpec",
    fields: &[merge_set("podCIDRs")],
};

/// core/v1 `NodeStatus`.
static NODE_STATUS: TypeDef = TypeDef {
    name: "NodeStatus",
    fields: &[
        merge_by("conditions", "type", None),
        merge_by("addresses", "type", None),
    ],
};

static NODE: TypeDef = TypeDef {
    name: "Node",
    fields: &[
        object("metadata", &OBJECT_META),
        object("spec", &NODE_SPEC),
        object("status", &NODE_STATUS),
    ],
};

/// Namespace, HorizontalPodAutoscaler: metadata and status conditions.
static WITH_CONDITIONS: TypeDef = TypeDef {
    name: "ObjectWithConditions",
    fields: &[
        object("metadata", &OBJECT_META),
        object("status", &CONDITIONS_STATUS),
    ],
};

/// core/v1 `ServiceAccount`: `secrets` merge by name (`imagePullSecrets` have no strategy).
static SERVICE_ACCOUNT: TypeDef = TypeDef {
    name: "ServiceAccount",
    fields: &[
        object("metadata", &OBJECT_META),
        merge_by("secrets", "name", None),
    ],
};

/// Kinds whose only patch metadata is ObjectMeta's.
static METADATA_ONLY: TypeDef = TypeDef {
    name: "Object",
    fields: &[object("metadata", &OBJECT_META)],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_containers_merge_by_name_down_the_template() {
        let deploy = TypeRef::for_kind("apps", "Deployment");
        let pod_spec = deploy.at(&["spec", "template", "spec"]);
        assert_eq!(pod_spec.name(), Some("PodSpec"));
        let containers = pod_spec.field("containers");
        assert_eq!(containers.strategy, Strategy::Merge);
        assert_eq!(containers.merge_key, Some("name"));
        assert_eq!(containers.ty.name(), Some("Container"));
        assert_eq!(
            containers.ty.field("ports").merge_key,
            Some("containerPort")
        );
        assert_eq!(containers.ty.field("env").merge_key, Some("name"));
        assert_eq!(
            containers.ty.field("volumeMounts").merge_key,
            Some("mountPath")
        );
        assert_eq!(
            containers.ty.field("volumeDevices").merge_key,
            Some("devicePath")
        );
        // No strategy: replaced whole.
        assert_eq!(containers.ty.field("args"), FieldMeta::UNTYPED);
        assert_eq!(pod_spec.field("tolerations").strategy, Strategy::Default);
    }

    #[test]
    fn pod_spec_lists() {
        let spec = TypeRef::for_kind("", "Pod").field("spec").ty;
        let volumes = spec.field("volumes");
        assert_eq!(
            (volumes.merge_key, volumes.retain_keys),
            (Some("name"), true)
        );
        assert_eq!(spec.field("initContainers").ty.name(), Some("Container"));
        assert_eq!(
            spec.field("ephemeralContainers").ty.name(),
            Some("Container")
        );
        assert_eq!(spec.field("imagePullSecrets").merge_key, Some("name"));
        assert_eq!(spec.field("hostAliases").merge_key, Some("ip"));
        assert_eq!(
            spec.field("topologySpreadConstraints").merge_key,
            Some("topologyKey")
        );
        assert_eq!(spec.field("resourceClaims").merge_key, Some("name"));
        assert!(spec.field("resourceClaims").retain_keys);
    }

    #[test]
    fn object_meta_finalizers_and_owner_references() {
        for (group, kind) in [("", "ConfigMap"), ("apps", "Deployment"), ("", "Node")] {
            let meta = TypeRef::for_kind(group, kind).field("metadata").ty;
            let finalizers = meta.field("finalizers");
            assert_eq!(
                (finalizers.strategy, finalizers.merge_key),
                (Strategy::Merge, None)
            );
            assert_eq!(meta.field("ownerReferences").merge_key, Some("uid"));
            assert_eq!(meta.field("labels"), FieldMeta::UNTYPED);
        }
    }

    #[test]
    fn templates_of_every_workload_reach_the_pod_spec() {
        for (group, kind, path) in [
            ("apps", "Deployment", &["spec", "template", "spec"][..]),
            ("apps", "ReplicaSet", &["spec", "template", "spec"][..]),
            ("apps", "DaemonSet", &["spec", "template", "spec"][..]),
            ("apps", "StatefulSet", &["spec", "template", "spec"][..]),
            ("batch", "Job", &["spec", "template", "spec"][..]),
            (
                "",
                "ReplicationController",
                &["spec", "template", "spec"][..],
            ),
            ("", "PodTemplate", &["template", "spec"][..]),
            (
                "batch",
                "CronJob",
                &["spec", "jobTemplate", "spec", "template", "spec"][..],
            ),
        ] {
            assert_eq!(
                TypeRef::for_kind(group, kind).at(path).name(),
                Some("PodSpec"),
                "{kind}"
            );
        }
    }

    #[test]
    fn strategies_outside_pods() {
        let strategy = TypeRef::for_kind("apps", "Deployment")
            .at(&["spec"])
            .field("strategy");
        assert!(strategy.retain_keys);
        assert_eq!(
            TypeRef::for_kind("", "Service")
                .at(&["spec"])
                .field("ports")
                .merge_key,
            Some("port")
        );
        let node = TypeRef::for_kind("", "Node");
        assert_eq!(
            node.at(&["status"]).field("conditions").merge_key,
            Some("type")
        );
        assert_eq!(
            node.at(&["status"]).field("addresses").merge_key,
            Some("type")
        );
        assert!(node.at(&["spec"]).field("podCIDRs").merges_lists());
        assert_eq!(node.at(&["spec"]).field("taints"), FieldMeta::UNTYPED);
        assert_eq!(
            TypeRef::for_kind("", "Pod")
                .at(&["status"])
                .field("conditions")
                .merge_key,
            Some("type")
        );
        for (group, kind) in [
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("apps", "StatefulSet"),
            ("batch", "Job"),
            ("", "Namespace"),
            ("autoscaling", "HorizontalPodAutoscaler"),
        ] {
            let conditions = TypeRef::for_kind(group, kind)
                .at(&["status"])
                .field("conditions");
            assert_eq!(conditions.merge_key, Some("type"), "{kind}");
        }
        assert_eq!(
            TypeRef::for_kind("", "ServiceAccount")
                .field("secrets")
                .merge_key,
            Some("name")
        );
    }

    #[test]
    fn unknown_kinds_have_no_strategies() {
        let widget = TypeRef::for_kind("example.com", "Widget");
        assert!(widget.is_untyped());
        assert_eq!(widget, TypeRef::UNTYPED);
        assert_eq!(widget.field("metadata"), FieldMeta::UNTYPED);
        assert_eq!(format!("{widget:?}"), "TypeRef(untyped)");
        // The core group is "", not "core".
        assert!(TypeRef::for_kind("core", "Pod").is_untyped());
        assert_eq!(
            format!("{:?}", TypeRef::for_kind("", "Pod")),
            "TypeRef(Pod)"
        );
    }
}
