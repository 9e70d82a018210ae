//! rbac.authorization.k8s.io/v1 (Role, ClusterRole and their bindings) and authorization/v1
//! (the access reviews `kubectl auth can-i` sends), which kubectl's typed clients send as
//! protobuf. `SubjectAccessReviewSpec.extra` (map of ExtraValue) is left out.

use super::Ty::{Bool, M, Str};
use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::{Msg, f, rep};

pub(super) static POLICY_RULE: Msg = Msg::new(
    "rbac/v1 PolicyRule",
    &[
        rep(1, "verbs", Str),
        rep(2, "apiGroups", Str),
        rep(3, "resources", Str),
        rep(4, "resourceNames", Str),
        rep(5, "nonResourceURLs", Str),
    ],
);

pub(super) static ROLE: Msg = Msg::new(
    "rbac/v1 Role",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        rep(2, "rules", M(&POLICY_RULE)),
    ],
);

pub(super) static AGGREGATION_RULE: Msg = Msg::new(
    "rbac/v1 AggregationRule",
    &[rep(1, "clusterRoleSelectors", M(&LABEL_SELECTOR))],
);

pub(super) static CLUSTER_ROLE: Msg = Msg::new(
    "rbac/v1 ClusterRole",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        rep(2, "rules", M(&POLICY_RULE)),
        f(3, "aggregationRule", M(&AGGREGATION_RULE)),
    ],
);

pub(super) static SUBJECT: Msg = Msg::new(
    "rbac/v1 Subject",
    &[
        f(1, "kind", Str),
        f(2, "apiGroup", Str),
        f(3, "name", Str),
        f(4, "namespace", Str),
    ],
);

pub(super) static ROLE_REF: Msg = Msg::new(
    "rbac/v1 RoleRef",
    &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)],
);

/// RoleBinding and ClusterRoleBinding have the same fields.
pub(super) static ROLE_BINDING: Msg = Msg::new(
    "rbac/v1 RoleBinding",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        rep(2, "subjects", M(&SUBJECT)),
        f(3, "roleRef", M(&ROLE_REF)),
    ],
);

pub(super) static RESOURCE_ATTRIBUTES: Msg = Msg::new(
    "authorization/v1 ResourceAttributes",
    &[
        f(1, "namespace", Str),
        f(2, "verb", Str),
        f(3, "group", Str),
        f(4, "version", Str),
        f(5, "resource", Str),
        f(6, "subresource", Str),
        f(7, "name", Str),
    ],
);

pub(super) static NON_RESOURCE_ATTRIBUTES: Msg = Msg::new(
    "authorization/v1 NonResourceAttributes",
    &[f(1, "path", Str), f(2, "verb", Str)],
);

pub(super) static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg::new(
    "authorization/v1 SelfSubjectAccessReviewSpec",
    &[
        f(1, "resourceAttributes", M(&RESOURCE_ATTRIBUTES)),
        f(2, "nonResourceAttributes", M(&NON_RESOURCE_ATTRIBUTES)),
    ],
);

pub(super) static SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg::new(
    "authorization/v1 SubjectAccessReviewSpec",
    &[
        f(1, "resourceAttributes", M(&RESOURCE_ATTRIBUTES)),
        f(2, "nonResourceAttributes", M(&NON_RESOURCE_ATTRIBUTES)),
        f(3, "user", Str),
        rep(4, "groups", Str),
        f(6, "uid", Str),
    ],
);

pub(super) static SUBJECT_ACCESS_REVIEW_STATUS: Msg = Msg::new(
    "authorization/v1 SubjectAccessReviewStatus",
    &[
        f(1, "allowed", Bool),
        f(2, "reason", Str),
        f(3, "evaluationError", Str),
        f(4, "denied", Bool),
    ],
);

pub(super) static SELF_SUBJECT_ACCESS_REVIEW: Msg = Msg::new(
    "authorization/v1 SelfSubjectAccessReview",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
        f(3, "status", M(&SUBJECT_ACCESS_REVIEW_STATUS)),
    ],
);

pub(super) static SUBJECT_ACCESS_REVIEW: Msg = Msg::new(
    "authorization/v1 SubjectAccessReview",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SUBJECT_ACCESS_REVIEW_SPEC)),
        f(3, "status", M(&SUBJECT_ACCESS_REVIEW_STATUS)),
    ],
);

pub(super) static SELF_SUBJECT_RULES_REVIEW_SPEC: Msg = Msg::new(
    "authorization/v1 SelfSubjectRulesReviewSpec",
    &[f(1, "namespace", Str)],
);

pub(super) static RESOURCE_RULE: Msg = Msg::new(
    "authorization/v1 ResourceRule",
    &[
        rep(1, "verbs", Str),
        rep(2, "apiGroups", Str),
        rep(3, "resources", Str),
        rep(4, "resourceNames", Str),
    ],
);

pub(super) static NON_RESOURCE_RULE: Msg = Msg::new(
    "authorization/v1 NonResourceRule",
    &[rep(1, "verbs", Str), rep(2, "nonResourceURLs", Str)],
);

pub(super) static SUBJECT_RULES_REVIEW_STATUS: Msg = Msg::new(
    "authorization/v1 SubjectRulesReviewStatus",
    &[
        rep(1, "resourceRules", M(&RESOURCE_RULE)),
        rep(2, "nonResourceRules", M(&NON_RESOURCE_RULE)),
        f(3, "incomplete", Bool),
        f(4, "evaluationError", Str),
    ],
);

pub(super) static SELF_SUBJECT_RULES_REVIEW: Msg = Msg::new(
    "authorization/v1 SelfSubjectRulesReview",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SELF_SUBJECT_RULES_REVIEW_SPEC)),
        f(3, "status", M(&SUBJECT_RULES_REVIEW_STATUS)),
    ],
);
