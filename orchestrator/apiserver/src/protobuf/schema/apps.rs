//! apps/v1 (`k8s.io/api/apps/v1/generated.proto`): Deployments and ControllerRevisions.

use super::Ty::{Bool, I32, I64, IntOrString, M, Raw, Str, Time};
use super::core::POD_TEMPLATE_SPEC;
use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::{Msg, f, keep, rep};

pub(super) static DEPLOYMENT: Msg = Msg::new(
    "apps/v1 Deployment",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&DEPLOYMENT_SPEC)),
        f(3, "status", M(&DEPLOYMENT_STATUS)),
    ],
);

pub(super) static DEPLOYMENT_SPEC: Msg = Msg::new(
    "apps/v1 DeploymentSpec",
    &[
        keep(1, "replicas", I32),
        f(2, "selector", M(&LABEL_SELECTOR)),
        f(3, "template", M(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", M(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", I32),
        keep(6, "revisionHistoryLimit", I32),
        f(7, "paused", Bool),
        keep(9, "progressDeadlineSeconds", I32),
    ],
);

pub(super) static DEPLOYMENT_STRATEGY: Msg = Msg::new(
    "apps/v1 DeploymentStrategy",
    &[
        f(1, "type", Str),
        f(2, "rollingUpdate", M(&ROLLING_UPDATE_DEPLOYMENT)),
    ],
);

pub(super) static ROLLING_UPDATE_DEPLOYMENT: Msg = Msg::new(
    "apps/v1 RollingUpdateDeployment",
    &[
        keep(1, "maxUnavailable", IntOrString),
        keep(2, "maxSurge", IntOrString),
    ],
);

pub(super) static DEPLOYMENT_STATUS: Msg = Msg::new(
    "apps/v1 DeploymentStatus",
    &[
        f(1, "observedGeneration", I64),
        f(2, "replicas", I32),
        f(3, "updatedReplicas", I32),
        f(4, "availableReplicas", I32),
        f(5, "unavailableReplicas", I32),
        rep(6, "conditions", M(&DEPLOYMENT_CONDITION)),
        f(7, "readyReplicas", I32),
        keep(8, "collisionCount", I32),
        keep(9, "terminatingReplicas", I32),
    ],
);

pub(super) static DEPLOYMENT_CONDITION: Msg = Msg::new(
    "apps/v1 DeploymentCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(4, "reason", Str),
        f(5, "message", Str),
        f(6, "lastUpdateTime", Time),
        f(7, "lastTransitionTime", Time),
    ],
);

pub(super) static CONTROLLER_REVISION: Msg = Msg::new(
    "apps/v1 ControllerRevision",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "data", Raw),
        keep(3, "revision", I64),
    ],
);
