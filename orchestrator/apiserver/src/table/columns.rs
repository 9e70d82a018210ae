//! Which printer a built-in kind gets, and the columns of each printer: names, types,
//! priorities and descriptions as upstream's printers declare them.

use std::borrow::Cow;

use trellis_api::ResourceInfo;

use super::Column;

pub(super) const fn column(
    name: &'static str,
    kind: &'static str,
    priority: i32,
    description: &'static str,
) -> Column {
    Column {
        name: Cow::Borrowed(name),
        kind: Cow::Borrowed(kind),
        format: Cow::Borrowed(""),
        description: Cow::Borrowed(description),
        priority,
    }
}

const fn text_col(name: &'static str, description: &'static str) -> Column {
    column(name, "string", 0, description)
}

const fn int_col(name: &'static str, description: &'static str) -> Column {
    column(name, "integer", 0, description)
}

const fn wide_col(name: &'static str, description: &'static str) -> Column {
    column(name, "string", 1, description)
}

pub(super) const NAME_DOC: &str = "Name must be unique within a namespace.";
pub(super) const CREATED_DOC: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

pub(super) const NAME: Column = Column {
    name: Cow::Borrowed("Name"),
    kind: Cow::Borrowed("string"),
    format: Cow::Borrowed("name"),
    description: Cow::Borrowed(NAME_DOC),
    priority: 0,
};
const AGE: Column = text_col("Age", CREATED_DOC);
const CONTAINERS: Column = wide_col("Containers", "Names of each container in the template.");
const IMAGES: Column = wide_col(
    "Images",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide_col("Selector", "Label query over the pods this object manages.");

/// Which printer a built-in resource gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Node,
    Namespace,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    ServiceAccount,
    Event,
    Deployment,
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    ControllerRevision,
    Job,
    CronJob,
    HorizontalPodAutoscaler,
    NetworkPolicy,
    EndpointSlice,
    Lease,
    ServiceCIDR,
    IPAddress,
    /// A built-in kind without a printer of its own: NAME and CREATED AT.
    Generic,
}

pub(super) fn kind_of(info: &ResourceInfo) -> Kind {
    use Kind::*;
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => Pod,
        ("", "Node") => Node,
        ("", "Namespace") => Namespace,
        ("", "Service") => Service,
        ("", "Endpoints") => Endpoints,
        ("", "ConfigMap") => ConfigMap,
        ("", "Secret") => Secret,
        ("", "ServiceAccount") => ServiceAccount,
        ("", "Event") => Event,
        ("apps", "Deployment") => Deployment,
        ("apps", "ReplicaSet") => ReplicaSet,
        ("apps", "DaemonSet") => DaemonSet,
        ("apps", "StatefulSet") => StatefulSet,
        ("apps", "ControllerRevision") => ControllerRevision,
        ("batch", "Job") => Job,
        ("batch", "CronJob") => CronJob,
        ("autoscaling", "HorizontalPodAutoscaler") => HorizontalPodAutoscaler,
        ("networking.k8s.io", "NetworkPolicy") => NetworkPolicy,
        ("discovery.k8s.io", "EndpointSlice") => EndpointSlice,
        ("coordination.k8s.io", "Lease") => Lease,
        ("networking.k8s.io", "ServiceCIDR") => ServiceCIDR,
        ("networking.k8s.io", "IPAddress") => IPAddress,
        _ => Generic,
    }
}

/// The columns of a built-in kind's printer, as upstream's.
pub(super) fn builtin(kind: Kind) -> Vec<Column> {
    match kind {
        Kind::Pod => vec![
            NAME,
            text_col(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            text_col(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            text_col(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            wide_col("IP", "The IP address allocated to the pod."),
            wide_col("Node", "The node the pod is bound to."),
            wide_col(
                "Nominated Node",
                "The node the scheduler nominated to run this pod after preemption.",
            ),
            wide_col(
                "Readiness Gates",
                "Pod conditions, besides container readiness, that must be true for the pod to be ready.",
            ),
        ],
        Kind::Node => vec![
            NAME,
            text_col("Status", "The status of the node"),
            text_col("Roles", "The roles of the node"),
            AGE,
            text_col("Version", "Kubelet version reported by the node."),
            wide_col("Internal-IP", "Addresses reachable to the node."),
            wide_col("External-IP", "Addresses reachable to the node."),
            wide_col("OS-Image", "OS image reported by the node."),
            wide_col("Kernel-Version", "Kernel version reported by the node."),
            wide_col(
                "Container-Runtime",
                "Container runtime version reported by the node.",
            ),
        ],
        Kind::Namespace => vec![NAME, text_col("Status", "The status of the namespace"), AGE],
        Kind::Service => vec![
            NAME,
            text_col("Type", "How the service is exposed."),
            text_col(
                "Cluster-IP",
                "The IP address of the service inside the cluster.",
            ),
            text_col(
                "External-IP",
                "The addresses the service is reachable on from outside the cluster.",
            ),
            text_col("Port(s)", "The ports the service exposes."),
            AGE,
            wide_col(
                "Selector",
                "Pods with labels matching this selector receive the service's traffic.",
            ),
        ],
        Kind::Endpoints => vec![
            NAME,
            text_col("Endpoints", "The addresses and ports of the endpoints."),
            AGE,
        ],
        Kind::ConfigMap => vec![NAME, text_col("Data", "The number of data entries."), AGE],
        Kind::Secret => vec![
            NAME,
            text_col(
                "Type",
                "Used to facilitate programmatic handling of secret data.",
            ),
            text_col("Data", "The number of data entries."),
            AGE,
        ],
        Kind::ServiceAccount => vec![
            NAME,
            text_col(
                "Secrets",
                "The number of secrets the service account references.",
            ),
            AGE,
        ],
        Kind::Event => vec![
            text_col(
                "Last Seen",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            text_col("Type", "Type of this event (Normal, Warning)."),
            text_col(
                "Reason",
                "Short, machine understandable reason for the transition into the object's current status.",
            ),
            text_col("Object", "The object this event is about."),
            wide_col("Subobject", "The part of the object this event is about."),
            wide_col("Source", "The component reporting this event."),
            text_col(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            wide_col(
                "First Seen",
                "The time at which the event was first recorded.",
            ),
            wide_col("Count", "The number of times this event has occurred."),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        Kind::Deployment => vec![
            NAME,
            text_col("Ready", "Number of the pod with ready state"),
            text_col(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            text_col(
                "Available",
                "Total number of available pods targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Kind::ReplicaSet => vec![
            NAME,
            int_col("Desired", "The number of desired replicas."),
            int_col("Current", "The most recently observed number of replicas."),
            int_col(
                "Ready",
                "The number of pods targeted by this replica set with a Ready condition.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Kind::DaemonSet => vec![
            NAME,
            int_col(
                "Desired",
                "The total number of nodes that should be running the daemon pod.",
            ),
            int_col(
                "Current",
                "The number of nodes that are running at least one daemon pod and are supposed to.",
            ),
            int_col(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of it running and ready.",
            ),
            int_col(
                "Up-to-date",
                "The total number of nodes that are running the updated daemon pod.",
            ),
            int_col(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of it running and available.",
            ),
            text_col(
                "Node Selector",
                "The labels a node must have for the pod to run on it.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Kind::StatefulSet => vec![
            NAME,
            text_col("Ready", "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        Kind::ControllerRevision => vec![
            NAME,
            text_col("Controller", "Controller of the object"),
            text_col("Revision", "The revision of the state represented by Data."),
            AGE,
        ],
        Kind::Job => vec![
            NAME,
            text_col("Status", "Status of the job."),
            text_col(
                "Completions",
                "The number of pods which reached phase Succeeded.",
            ),
            text_col("Duration", "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Kind::CronJob => vec![
            NAME,
            text_col("Schedule", "The schedule in Cron format."),
            text_col("Timezone", "The time zone name for the given schedule."),
            column(
                "Suspend",
                "boolean",
                0,
                "Whether subsequent executions are suspended.",
            ),
            int_col("Active", "The number of currently running jobs."),
            text_col(
                "Last Schedule",
                "When the job was last successfully scheduled.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Kind::HorizontalPodAutoscaler => vec![
            NAME,
            text_col("Reference", "The scaled resource."),
            text_col(
                "Targets",
                "The metrics used to calculate the desired replica count.",
            ),
            text_col("MinPods", "The lower limit for the number of replicas."),
            text_col("MaxPods", "The upper limit for the number of replicas."),
            text_col(
                "Replicas",
                "The current number of replicas of pods managed by this autoscaler.",
            ),
            AGE,
        ],
        Kind::NetworkPolicy => vec![
            NAME,
            text_col(
                "Pod-Selector",
                "Selects the pods to which this policy applies.",
            ),
            AGE,
        ],
        Kind::EndpointSlice => vec![
            NAME,
            text_col(
                "AddressType",
                "The type of address carried by this endpoint slice.",
            ),
            text_col("Ports", "The ports exposed by the endpoints."),
            text_col("Endpoints", "The addresses of the endpoints."),
            AGE,
        ],
        Kind::Lease => vec![
            NAME,
            text_col("Holder", "The identity of the holder of the current lease."),
            AGE,
        ],
        Kind::ServiceCIDR => vec![
            NAME,
            text_col(
                "CIDRs",
                "list of IP blocks in CIDR notation (e.g. \"10.0.0.0/8\" or \"2001:db8::/64\") from which to assign service cluster IPs. Max of two CIDR blocks is allowed, one of each IP family. This field is immutable.",
            ),
            AGE,
        ],
        Kind::IPAddress => vec![
            NAME,
            text_col(
                "ParentRef",
                "ParentRef references the resource that an IPAddress is attached to. An IPAddress must reference a parent object.",
            ),
        ],
        Kind::Generic => vec![NAME, column("Created At", "date", 0, CREATED_DOC)],
    }
}
