//! autoscaling/v2 and autoscaling/v1 (`k8s.io/api/autoscaling/v{2,1}/generated.proto`):
//! HorizontalPodAutoscalers and Scale.

use super::Ty::{I32, I64, M, Quantity, Str, Time};
use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::{Msg, f, keep, rep};

pub(super) static AS2_HORIZONTAL_POD_AUTOSCALER: Msg = Msg::new(
    "autoscaling/v2 HorizontalPodAutoscaler",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&AS2_HORIZONTAL_POD_AUTOSCALER_SPEC)),
        f(3, "status", M(&AS2_HORIZONTAL_POD_AUTOSCALER_STATUS)),
    ],
);

pub(super) static AS2_HORIZONTAL_POD_AUTOSCALER_SPEC: Msg = Msg::new(
    "autoscaling/v2 HorizontalPodAutoscalerSpec",
    &[
        f(1, "scaleTargetRef", M(&AS2_CROSS_VERSION_OBJECT_REFERENCE)),
        keep(2, "minReplicas", I32),
        keep(3, "maxReplicas", I32),
        rep(4, "metrics", M(&AS2_METRIC_SPEC)),
        f(5, "behavior", M(&AS2_HORIZONTAL_POD_AUTOSCALER_BEHAVIOR)),
    ],
);

pub(super) static AS2_CROSS_VERSION_OBJECT_REFERENCE: Msg = Msg::new(
    "autoscaling/v2 CrossVersionObjectReference",
    &[
        f(1, "kind", Str),
        f(2, "name", Str),
        f(3, "apiVersion", Str),
    ],
);

pub(super) static AS2_METRIC_SPEC: Msg = Msg::new(
    "autoscaling/v2 MetricSpec",
    &[
        f(1, "type", Str),
        f(2, "object", M(&AS2_OBJECT_METRIC_SOURCE)),
        f(3, "pods", M(&AS2_PODS_METRIC_SOURCE)),
        f(4, "resource", M(&AS2_RESOURCE_METRIC_SOURCE)),
        f(5, "external", M(&AS2_EXTERNAL_METRIC_SOURCE)),
        f(
            7,
            "containerResource",
            M(&AS2_CONTAINER_RESOURCE_METRIC_SOURCE),
        ),
    ],
);

pub(super) static AS2_OBJECT_METRIC_SOURCE: Msg = Msg::new(
    "autoscaling/v2 ObjectMetricSource",
    &[
        f(1, "describedObject", M(&AS2_CROSS_VERSION_OBJECT_REFERENCE)),
        f(2, "target", M(&AS2_METRIC_TARGET)),
        f(3, "metric", M(&AS2_METRIC_IDENTIFIER)),
    ],
);

pub(super) static AS2_PODS_METRIC_SOURCE: Msg = Msg::new(
    "autoscaling/v2 PodsMetricSource",
    &[
        f(1, "metric", M(&AS2_METRIC_IDENTIFIER)),
        f(2, "target", M(&AS2_METRIC_TARGET)),
    ],
);

pub(super) static AS2_RESOURCE_METRIC_SOURCE: Msg = Msg::new(
    "autoscaling/v2 ResourceMetricSource",
    &[f(1, "name", Str), f(2, "target", M(&AS2_METRIC_TARGET))],
);

pub(super) static AS2_CONTAINER_RESOURCE_METRIC_SOURCE: Msg = Msg::new(
    "autoscaling/v2 ContainerResourceMetricSource",
    &[
        f(1, "name", Str),
        f(2, "target", M(&AS2_METRIC_TARGET)),
        f(3, "container", Str),
    ],
);

pub(super) static AS2_EXTERNAL_METRIC_SOURCE: Msg = Msg::new(
    "autoscaling/v2 ExternalMetricSource",
    &[
        f(1, "metric", M(&AS2_METRIC_IDENTIFIER)),
        f(2, "target", M(&AS2_METRIC_TARGET)),
    ],
);

pub(super) static AS2_METRIC_IDENTIFIER: Msg = Msg::new(
    "autoscaling/v2 MetricIdentifier",
    &[f(1, "name", Str), f(2, "selector", M(&LABEL_SELECTOR))],
);

pub(super) static AS2_METRIC_TARGET: Msg = Msg::new(
    "autoscaling/v2 MetricTarget",
    &[
        f(1, "type", Str),
        f(2, "value", Quantity),
        f(3, "averageValue", Quantity),
        keep(4, "averageUtilization", I32),
    ],
);

pub(super) static AS2_HORIZONTAL_POD_AUTOSCALER_BEHAVIOR: Msg = Msg::new(
    "autoscaling/v2 HorizontalPodAutoscalerBehavior",
    &[
        f(1, "scaleUp", M(&AS2_HPA_SCALING_RULES)),
        f(2, "scaleDown", M(&AS2_HPA_SCALING_RULES)),
    ],
);

pub(super) static AS2_HPA_SCALING_RULES: Msg = Msg::new(
    "autoscaling/v2 HPAScalingRules",
    &[
        keep(1, "selectPolicy", Str),
        rep(2, "policies", M(&AS2_HPA_SCALING_POLICY)),
        keep(3, "stabilizationWindowSeconds", I32),
        f(4, "tolerance", Quantity),
    ],
);

pub(super) static AS2_HPA_SCALING_POLICY: Msg = Msg::new(
    "autoscaling/v2 HPAScalingPolicy",
    &[
        f(1, "type", Str),
        keep(2, "value", I32),
        keep(3, "periodSeconds", I32),
    ],
);

pub(super) static AS2_HORIZONTAL_POD_AUTOSCALER_STATUS: Msg = Msg::new(
    "autoscaling/v2 HorizontalPodAutoscalerStatus",
    &[
        keep(1, "observedGeneration", I64),
        f(2, "lastScaleTime", Time),
        f(3, "currentReplicas", I32),
        keep(4, "desiredReplicas", I32),
        // 5: currentMetrics (MetricStatus): not covered
        rep(6, "conditions", M(&AS2_HORIZONTAL_POD_AUTOSCALER_CONDITION)),
    ],
);

pub(super) static AS2_HORIZONTAL_POD_AUTOSCALER_CONDITION: Msg = Msg::new(
    "autoscaling/v2 HorizontalPodAutoscalerCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "lastTransitionTime", Time),
        f(4, "reason", Str),
        f(5, "message", Str),
    ],
);

pub(super) static AS1_HORIZONTAL_POD_AUTOSCALER: Msg = Msg::new(
    "autoscaling/v1 HorizontalPodAutoscaler",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&AS1_HORIZONTAL_POD_AUTOSCALER_SPEC)),
        f(3, "status", M(&AS1_HORIZONTAL_POD_AUTOSCALER_STATUS)),
    ],
);

pub(super) static AS1_HORIZONTAL_POD_AUTOSCALER_SPEC: Msg = Msg::new(
    "autoscaling/v1 HorizontalPodAutoscalerSpec",
    &[
        f(1, "scaleTargetRef", M(&AS2_CROSS_VERSION_OBJECT_REFERENCE)),
        keep(2, "minReplicas", I32),
        keep(3, "maxReplicas", I32),
        keep(4, "targetCPUUtilizationPercentage", I32),
    ],
);

pub(super) static AS1_HORIZONTAL_POD_AUTOSCALER_STATUS: Msg = Msg::new(
    "autoscaling/v1 HorizontalPodAutoscalerStatus",
    &[
        keep(1, "observedGeneration", I64),
        f(2, "lastScaleTime", Time),
        keep(3, "currentReplicas", I32),
        keep(4, "desiredReplicas", I32),
        keep(5, "currentCPUUtilizationPercentage", I32),
    ],
);

pub(super) static AS1_SCALE: Msg = Msg::new(
    "autoscaling/v1 Scale",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&AS1_SCALE_SPEC)),
        f(3, "status", M(&AS1_SCALE_STATUS)),
    ],
);

pub(super) static AS1_SCALE_SPEC: Msg =
    Msg::new("autoscaling/v1 ScaleSpec", &[keep(1, "replicas", I32)]);

pub(super) static AS1_SCALE_STATUS: Msg = Msg::new(
    "autoscaling/v1 ScaleStatus",
    &[keep(1, "replicas", I32), f(2, "selector", Str)],
);
