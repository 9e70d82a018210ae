//! The schema table: for each kind this server decodes, its message, and for each message its
//! fields (number → JSON name, type, cardinality). Written from the upstream `generated.proto`
//! files (field numbers) and the v1.33 OpenAPI (JSON names). A message lists every field of v1.33
//! that the table covers; a field that refers to a type the table does not cover is left out (see
//! the comments), so it is reported, not dropped.
//!
//! One file per API group: `meta`, `core`, `apps`, `batch`, `autoscaling`, and `small_groups`
//! (authentication, policy, coordination), `rbac` (with authorization).

mod apps;
mod autoscaling;
mod batch;
mod core;
mod meta;
mod rbac;
mod small_groups;

use self::core::{
    BINDING, CONFIG_MAP, NAMESPACE, POD, RESOURCE_QUOTA, SECRET, SERVICE, SERVICE_ACCOUNT,
};
use apps::{CONTROLLER_REVISION, DEPLOYMENT};
use autoscaling::{AS1_HORIZONTAL_POD_AUTOSCALER, AS1_SCALE, AS2_HORIZONTAL_POD_AUTOSCALER};
use batch::{CRON_JOB, JOB};
use meta::DELETE_OPTIONS;
use rbac::{
    CLUSTER_ROLE, ROLE, ROLE_BINDING, SELF_SUBJECT_ACCESS_REVIEW, SELF_SUBJECT_RULES_REVIEW,
    SUBJECT_ACCESS_REVIEW,
};
use small_groups::{EVICTION, LEASE, TOKEN_REQUEST};

/// The type of a field's value.
#[derive(Clone, Copy)]
pub enum Ty {
    /// `string` → JSON string.
    Str,
    /// `bytes` → base64 string.
    Bytes,
    Bool,
    /// `int32` → number.
    I32,
    /// `int64` → number.
    I64,
    /// A message of the table → object.
    M(&'static Msg),
    /// `metav1.Time` {seconds = 1, nanos = 2} → RFC 3339, second precision.
    Time,
    /// `metav1.MicroTime` {seconds = 1, nanos = 2} → RFC 3339, microsecond precision.
    MicroTime,
    /// `metav1.Duration` {duration = 1, nanoseconds} → Go duration string (`1h2m3s`).
    Duration,
    /// `resource.Quantity` {string = 1} → the string.
    Quantity,
    /// `intstr.IntOrString` {type = 1, intVal = 2, strVal = 3} → number or string.
    IntOrString,
    /// `runtime.RawExtension` / `metav1.FieldsV1` {raw = 1} → the embedded JSON (or embedded
    /// Kubernetes protobuf, decoded).
    Raw,
}

/// How many values a field holds, and how its zero is treated.
#[derive(Clone, Copy)]
pub enum Card {
    /// A plain Go field: an empty string, `false`, `0` is left out, as Go's JSON would.
    One,
    /// A Go pointer (or a field without `omitempty`): on the wire only when set, zero kept.
    Keep,
    /// `repeated` → array.
    Rep,
    /// `map<string, V>` → object.
    Map,
    /// An embedded struct whose fields appear in the parent's JSON (`json:",inline"`).
    Inline,
}

/// One field of a message.
pub struct Field {
    pub num: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub card: Card,
}

/// One message type: `"core/v1 PodSpec"` and its fields.
pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Msg {
    pub const fn new(name: &'static str, fields: &'static [Field]) -> Msg {
        Msg { name, fields }
    }

    pub(super) fn field(&self, num: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.num == num)
    }
}

const fn f(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::One,
    }
}

const fn keep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Keep,
    }
}

const fn rep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Rep,
    }
}

/// `map<string, V>` with `V` the value type.
const fn map(num: u32, name: &'static str, value: Ty) -> Field {
    Field {
        num,
        name,
        ty: value,
        card: Card::Map,
    }
}

const fn inline(num: u32, msg: &'static Msg) -> Field {
    Field {
        num,
        name: "",
        ty: Ty::M(msg),
        card: Card::Inline,
    }
}

/// The top-level kinds, by apiVersion and kind.
static KINDS: &[(&str, &str, &Msg)] = &[
    ("v1", "Namespace", &NAMESPACE),
    ("v1", "ConfigMap", &CONFIG_MAP),
    ("v1", "Secret", &SECRET),
    ("v1", "ServiceAccount", &SERVICE_ACCOUNT),
    ("v1", "Service", &SERVICE),
    ("v1", "Pod", &POD),
    ("v1", "Binding", &BINDING),
    ("v1", "ResourceQuota", &RESOURCE_QUOTA),
    ("apps/v1", "Deployment", &DEPLOYMENT),
    ("apps/v1", "ControllerRevision", &CONTROLLER_REVISION),
    ("batch/v1", "Job", &JOB),
    ("batch/v1", "CronJob", &CRON_JOB),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        &AS2_HORIZONTAL_POD_AUTOSCALER,
    ),
    (
        "autoscaling/v1",
        "HorizontalPodAutoscaler",
        &AS1_HORIZONTAL_POD_AUTOSCALER,
    ),
    ("autoscaling/v1", "Scale", &AS1_SCALE),
    ("authentication.k8s.io/v1", "TokenRequest", &TOKEN_REQUEST),
    ("policy/v1", "Eviction", &EVICTION),
    ("coordination.k8s.io/v1", "Lease", &LEASE),
    ("rbac.authorization.k8s.io/v1", "Role", &ROLE),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", &CLUSTER_ROLE),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", &ROLE_BINDING),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        &ROLE_BINDING,
    ),
    (
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &SELF_SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        &SELF_SUBJECT_RULES_REVIEW,
    ),
];

/// The message of a top-level kind, if the table has it.
pub(super) fn schema_for(api_version: &str, kind: &str) -> Option<&'static Msg> {
    // DeleteOptions is registered in every group version; a client sends its own.
    if kind == "DeleteOptions" {
        return Some(&DELETE_OPTIONS);
    }
    KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map(|(_, _, m)| *m)
}
