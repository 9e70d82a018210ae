//! batch/v1 (`k8s.io/api/batch/v1/generated.proto`): Jobs and CronJobs.

use super::Ty::{Bool, I32, I64, M, Str, Time};
use super::core::{OBJECT_REFERENCE, POD_TEMPLATE_SPEC};
use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::{Msg, f, keep, rep};

pub(super) static JOB: Msg = Msg::new(
    "batch/v1 Job",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&JOB_SPEC)),
        f(3, "status", M(&JOB_STATUS)),
    ],
);

pub(super) static JOB_SPEC: Msg = Msg::new(
    "batch/v1 JobSpec",
    &[
        keep(1, "parallelism", I32),
        keep(2, "completions", I32),
        keep(3, "activeDeadlineSeconds", I64),
        f(4, "selector", M(&LABEL_SELECTOR)),
        keep(5, "manualSelector", Bool),
        f(6, "template", M(&POD_TEMPLATE_SPEC)),
        keep(7, "backoffLimit", I32),
        keep(8, "ttlSecondsAfterFinished", I32),
        keep(9, "completionMode", Str),
        keep(10, "suspend", Bool),
        f(11, "podFailurePolicy", M(&POD_FAILURE_POLICY)),
        keep(12, "backoffLimitPerIndex", I32),
        keep(13, "maxFailedIndexes", I32),
        keep(14, "podReplacementPolicy", Str),
        keep(15, "managedBy", Str),
        f(16, "successPolicy", M(&SUCCESS_POLICY)),
    ],
);

pub(super) static JOB_STATUS: Msg = Msg::new(
    "batch/v1 JobStatus",
    &[
        rep(1, "conditions", M(&JOB_CONDITION)),
        f(2, "startTime", Time),
        f(3, "completionTime", Time),
        f(4, "active", I32),
        f(5, "succeeded", I32),
        f(6, "failed", I32),
        f(7, "completedIndexes", Str),
        f(8, "uncountedTerminatedPods", M(&UNCOUNTED_TERMINATED_PODS)),
        keep(9, "ready", I32),
        keep(10, "failedIndexes", Str),
        keep(11, "terminating", I32),
    ],
);

pub(super) static JOB_CONDITION: Msg = Msg::new(
    "batch/v1 JobCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "lastProbeTime", Time),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

pub(super) static UNCOUNTED_TERMINATED_PODS: Msg = Msg::new(
    "batch/v1 UncountedTerminatedPods",
    &[rep(1, "succeeded", Str), rep(2, "failed", Str)],
);

pub(super) static POD_FAILURE_POLICY: Msg = Msg::new(
    "batch/v1 PodFailurePolicy",
    &[rep(1, "rules", M(&POD_FAILURE_POLICY_RULE))],
);

pub(super) static POD_FAILURE_POLICY_RULE: Msg = Msg::new(
    "batch/v1 PodFailurePolicyRule",
    &[
        f(1, "action", Str),
        f(
            2,
            "onExitCodes",
            M(&POD_FAILURE_POLICY_ON_EXIT_CODES_REQUIREMENT),
        ),
        rep(
            3,
            "onPodConditions",
            M(&POD_FAILURE_POLICY_ON_POD_CONDITIONS_PATTERN),
        ),
    ],
);

pub(super) static POD_FAILURE_POLICY_ON_EXIT_CODES_REQUIREMENT: Msg = Msg::new(
    "batch/v1 PodFailurePolicyOnExitCodesRequirement",
    &[
        keep(1, "containerName", Str),
        f(2, "operator", Str),
        rep(3, "values", I32),
    ],
);

pub(super) static POD_FAILURE_POLICY_ON_POD_CONDITIONS_PATTERN: Msg = Msg::new(
    "batch/v1 PodFailurePolicyOnPodConditionsPattern",
    &[f(1, "type", Str), f(2, "status", Str)],
);

pub(super) static SUCCESS_POLICY: Msg = Msg::new(
    "batch/v1 SuccessPolicy",
    &[rep(1, "rules", M(&SUCCESS_POLICY_RULE))],
);

pub(super) static SUCCESS_POLICY_RULE: Msg = Msg::new(
    "batch/v1 SuccessPolicyRule",
    &[
        keep(1, "succeededIndexes", Str),
        keep(2, "succeededCount", I32),
    ],
);

pub(super) static JOB_TEMPLATE_SPEC: Msg = Msg::new(
    "batch/v1 JobTemplateSpec",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&JOB_SPEC)),
    ],
);

pub(super) static CRON_JOB: Msg = Msg::new(
    "batch/v1 CronJob",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&CRON_JOB_SPEC)),
        f(3, "status", M(&CRON_JOB_STATUS)),
    ],
);

pub(super) static CRON_JOB_SPEC: Msg = Msg::new(
    "batch/v1 CronJobSpec",
    &[
        f(1, "schedule", Str),
        keep(2, "startingDeadlineSeconds", I64),
        f(3, "concurrencyPolicy", Str),
        keep(4, "suspend", Bool),
        f(5, "jobTemplate", M(&JOB_TEMPLATE_SPEC)),
        keep(6, "successfulJobsHistoryLimit", I32),
        keep(7, "failedJobsHistoryLimit", I32),
        keep(8, "timeZone", Str),
    ],
);

pub(super) static CRON_JOB_STATUS: Msg = Msg::new(
    "batch/v1 CronJobStatus",
    &[
        rep(1, "active", M(&OBJECT_REFERENCE)),
        f(4, "lastScheduleTime", Time),
        f(5, "lastSuccessfulTime", Time),
    ],
);
