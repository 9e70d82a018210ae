//! meta/v1 (`k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`): object metadata, owner
//! references, label selectors, managed fields, DeleteOptions.

use super::Ty::{Bool, I64, M, Raw, Str, Time};
use super::{Msg, f, keep, map, rep};

pub(super) static OBJECT_META: Msg = Msg::new(
    "meta/v1 ObjectMeta",
    &[
        f(1, "name", Str),
        f(2, "generateName", Str),
        f(3, "namespace", Str),
        f(4, "selfLink", Str),
        f(5, "uid", Str),
        f(6, "resourceVersion", Str),
        f(7, "generation", I64),
        f(8, "creationTimestamp", Time),
        f(9, "deletionTimestamp", Time),
        keep(10, "deletionGracePeriodSeconds", I64),
        map(11, "labels", Str),
        map(12, "annotations", Str),
        rep(13, "ownerReferences", M(&OWNER_REFERENCE)),
        rep(14, "finalizers", Str),
        rep(17, "managedFields", M(&MANAGED_FIELDS_ENTRY)),
    ],
);

pub(super) static OWNER_REFERENCE: Msg = Msg::new(
    "meta/v1 OwnerReference",
    &[
        f(1, "kind", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        keep(6, "controller", Bool),
        keep(7, "blockOwnerDeletion", Bool),
    ],
);

pub(super) static MANAGED_FIELDS_ENTRY: Msg = Msg::new(
    "meta/v1 ManagedFieldsEntry",
    &[
        f(1, "manager", Str),
        f(2, "operation", Str),
        f(3, "apiVersion", Str),
        f(4, "time", Time),
        f(6, "fieldsType", Str),
        f(7, "fieldsV1", Raw),
        f(8, "subresource", Str),
    ],
);

pub(super) static LABEL_SELECTOR: Msg = Msg::new(
    "meta/v1 LabelSelector",
    &[
        map(1, "matchLabels", Str),
        rep(2, "matchExpressions", M(&LABEL_SELECTOR_REQUIREMENT)),
    ],
);

pub(super) static LABEL_SELECTOR_REQUIREMENT: Msg = Msg::new(
    "meta/v1 LabelSelectorRequirement",
    &[
        f(1, "key", Str),
        f(2, "operator", Str),
        rep(3, "values", Str),
    ],
);

pub(super) static CONDITION: Msg = Msg::new(
    "meta/v1 Condition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "observedGeneration", I64),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

pub(super) static DELETE_OPTIONS: Msg = Msg::new(
    "meta/v1 DeleteOptions",
    &[
        keep(1, "gracePeriodSeconds", I64),
        f(2, "preconditions", M(&PRECONDITIONS)),
        keep(3, "orphanDependents", Bool),
        keep(4, "propagationPolicy", Str),
        rep(5, "dryRun", Str),
        keep(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool),
    ],
);

pub(super) static PRECONDITIONS: Msg = Msg::new(
    "meta/v1 Preconditions",
    &[keep(1, "uid", Str), keep(2, "resourceVersion", Str)],
);
