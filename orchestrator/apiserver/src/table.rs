//! `Table` responses for `kubectl get`.
//!
//! The built-in kinds get the columns and cells of Kubernetes' server-side printers
//! (kubernetes `pkg/printers/internalversion/printers.go`, as of 1.33): same names, types,
//! priorities and cell values, computed from the stored JSON. Custom resources get the
//! `additionalPrinterColumns` of their CustomResourceDefinition once [`set_custom_columns`] has been
//! told about it (NAME and AGE until then), and built-in kinds without a printer get the generic
//! NAME and CREATED AT table, as upstream's default table convertor does.
//!
//! Like upstream's table convertor, every cell is always produced (the printers run with `Wide`);
//! `kubectl` hides the columns of priority above 0 unless asked for `-o wide`. Every accessor
//! tolerates missing fields and fields of the wrong type.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::RwLock;

use jiff::Timestamp;
use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use crate::meta;

/// A column of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: Cow<'static, str>,
    /// The OpenAPI type of the cells: `string`, `integer`, `number`, `boolean`, `date`.
    pub kind: Cow<'static, str>,
    pub format: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// 0: always shown; anything else: only with `-o wide`.
    pub priority: i32,
}

const fn column(
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

const NAME_DOC: &str = "Name must be unique within a namespace.";
const CREATED_DOC: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

const NAME: Column = Column {
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

/// Which printer a resource gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Printer {
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
    /// A built-in kind without a printer of its own: NAME and CREATED AT.
    Generic,
}

fn printer(info: &ResourceInfo) -> Printer {
    use Printer::*;
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
        _ => Generic,
    }
}

/// How the rows of one resource are printed: worked out once per table.
enum Plan {
    Builtin(Printer),
    Custom(Vec<CustomColumn>),
}

impl Plan {
    fn of(info: &ResourceInfo) -> Plan {
        if info.custom {
            Plan::Custom(custom_printer(info))
        } else {
            Plan::Builtin(printer(info))
        }
    }

    fn columns(&self) -> Vec<Column> {
        match self {
            Plan::Builtin(p) => builtin_columns(*p),
            Plan::Custom(cols) => std::iter::once(NAME)
                .chain(cols.iter().map(|c| c.column.clone()))
                .collect(),
        }
    }

    fn cells(&self, obj: &Value, now: Timestamp) -> Vec<Value> {
        match self {
            Plan::Builtin(p) => builtin_cells(*p, obj, now),
            Plan::Custom(cols) => std::iter::once(name_cell(obj))
                .chain(cols.iter().map(|c| c.cell(obj, now)))
                .collect(),
        }
    }

    /// Row conditions: upstream marks finished pods `Completed`.
    fn conditions(&self, obj: &Value) -> Option<Value> {
        if !matches!(self, Plan::Builtin(Printer::Pod)) {
            return None;
        }
        let (reason, message) = match text(obj, &["status", "phase"]) {
            "Succeeded" => ("Succeeded", "The pod has completed successfully."),
            "Failed" => ("Failed", "The pod failed."),
            _ => return None,
        };
        Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
    }
}

/// The columns of a kind.
pub fn columns(info: &ResourceInfo) -> Vec<Column> {
    Plan::of(info).columns()
}

/// The cells of one object's row, one per column of [`columns`].
pub fn cells(info: &ResourceInfo, obj: &Value) -> Vec<Value> {
    Plan::of(info).cells(obj, Timestamp::now())
}

fn builtin_columns(p: Printer) -> Vec<Column> {
    match p {
        Printer::Pod => vec![
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
        Printer::Node => vec![
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
        Printer::Namespace => vec![NAME, text_col("Status", "The status of the namespace"), AGE],
        Printer::Service => vec![
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
        Printer::Endpoints => vec![
            NAME,
            text_col("Endpoints", "The addresses and ports of the endpoints."),
            AGE,
        ],
        Printer::ConfigMap => vec![NAME, text_col("Data", "The number of data entries."), AGE],
        Printer::Secret => vec![
            NAME,
            text_col(
                "Type",
                "Used to facilitate programmatic handling of secret data.",
            ),
            text_col("Data", "The number of data entries."),
            AGE,
        ],
        Printer::ServiceAccount => vec![
            NAME,
            text_col(
                "Secrets",
                "The number of secrets the service account references.",
            ),
            AGE,
        ],
        Printer::Event => vec![
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
        Printer::Deployment => vec![
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
        Printer::ReplicaSet => vec![
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
        Printer::DaemonSet => vec![
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
        Printer::StatefulSet => vec![
            NAME,
            text_col("Ready", "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        Printer::ControllerRevision => vec![
            NAME,
            text_col("Controller", "Controller of the object"),
            text_col("Revision", "The revision of the state represented by Data."),
            AGE,
        ],
        Printer::Job => vec![
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
        Printer::CronJob => vec![
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
        Printer::HorizontalPodAutoscaler => vec![
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
        Printer::NetworkPolicy => vec![
            NAME,
            text_col(
                "Pod-Selector",
                "Selects the pods to which this policy applies.",
            ),
            AGE,
        ],
        Printer::EndpointSlice => vec![
            NAME,
            text_col(
                "AddressType",
                "The type of address carried by this endpoint slice.",
            ),
            text_col("Ports", "The ports exposed by the endpoints."),
            text_col("Endpoints", "The addresses of the endpoints."),
            AGE,
        ],
        Printer::Lease => vec![
            NAME,
            text_col("Holder", "The identity of the holder of the current lease."),
            AGE,
        ],
        Printer::Generic => vec![NAME, column("Created At", "date", 0, CREATED_DOC)],
    }
}

fn builtin_cells(p: Printer, obj: &Value, now: Timestamp) -> Vec<Value> {
    match p {
        Printer::Pod => pod_cells(obj, now),
        Printer::Node => node_cells(obj, now),
        Printer::Namespace => {
            let phase = if meta::is_deleting(obj) {
                "Terminating"
            } else {
                non_empty(obj, &["status", "phase"]).unwrap_or("Active")
            };
            vec![name_cell(obj), json!(phase), json!(age_at(obj, now))]
        }
        Printer::Service => service_cells(obj, now),
        Printer::Endpoints => vec![
            name_cell(obj),
            json!(format_endpoints(obj)),
            json!(age_at(obj, now)),
        ],
        Printer::ConfigMap => {
            let n = len(obj, &["data"]).saturating_add(len(obj, &["binaryData"]));
            vec![name_cell(obj), json!(n), json!(age_at(obj, now))]
        }
        Printer::Secret => {
            // `stringData` is write-only upstream (merged into `data`); count both in case it is kept.
            let mut keys: BTreeSet<&str> = BTreeSet::new();
            for field in ["data", "stringData"] {
                if let Some(m) = get(obj, &[field]).and_then(Value::as_object) {
                    keys.extend(m.keys().map(String::as_str));
                }
            }
            vec![
                name_cell(obj),
                json!(non_empty(obj, &["type"]).unwrap_or("Opaque")),
                json!(keys.len()),
                json!(age_at(obj, now)),
            ]
        }
        Printer::ServiceAccount => vec![
            name_cell(obj),
            json!(len(obj, &["secrets"])),
            json!(age_at(obj, now)),
        ],
        Printer::Event => event_cells(obj, now),
        Printer::Deployment => {
            let desired = int(obj, &["spec", "replicas"]).unwrap_or(1);
            let ready = int(obj, &["status", "readyReplicas"]).unwrap_or(0);
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            let selector = match label_selector(get(obj, &["spec", "selector"])) {
                Ok(s) => s,
                Err(()) => "<invalid>".into(),
            };
            vec![
                name_cell(obj),
                json!(format!("{ready}/{desired}")),
                json!(int(obj, &["status", "updatedReplicas"]).unwrap_or(0)),
                json!(int(obj, &["status", "availableReplicas"]).unwrap_or(0)),
                json!(age_at(obj, now)),
                json!(names),
                json!(images),
                json!(selector),
            ]
        }
        Printer::ReplicaSet => {
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name_cell(obj),
                json!(int(obj, &["spec", "replicas"]).unwrap_or(1)),
                json!(int(obj, &["status", "replicas"]).unwrap_or(0)),
                json!(int(obj, &["status", "readyReplicas"]).unwrap_or(0)),
                json!(age_at(obj, now)),
                json!(names),
                json!(images),
                json!(format_label_selector(get(obj, &["spec", "selector"]))),
            ]
        }
        Printer::DaemonSet => {
            let status = |f: &str| json!(int(obj, &["status", f]).unwrap_or(0));
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name_cell(obj),
                status("desiredNumberScheduled"),
                status("currentNumberScheduled"),
                status("numberReady"),
                status("updatedNumberScheduled"),
                status("numberAvailable"),
                json!(format_labels(get(
                    obj,
                    &["spec", "template", "spec", "nodeSelector"]
                ))),
                json!(age_at(obj, now)),
                json!(names),
                json!(images),
                json!(format_label_selector(get(obj, &["spec", "selector"]))),
            ]
        }
        Printer::StatefulSet => {
            let desired = int(obj, &["spec", "replicas"]).unwrap_or(1);
            let ready = int(obj, &["status", "readyReplicas"]).unwrap_or(0);
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name_cell(obj),
                json!(format!("{ready}/{desired}")),
                json!(age_at(obj, now)),
                json!(names),
                json!(images),
            ]
        }
        Printer::ControllerRevision => vec![
            name_cell(obj),
            json!(controller_of(obj)),
            json!(int(obj, &["revision"]).unwrap_or(0)),
            json!(age_at(obj, now)),
        ],
        Printer::Job => job_cells(obj, now),
        Printer::CronJob => cronjob_cells(obj, now),
        Printer::HorizontalPodAutoscaler => {
            let kind = text(obj, &["spec", "scaleTargetRef", "kind"]);
            let target = text(obj, &["spec", "scaleTargetRef", "name"]);
            // The v2 defaults: minReplicas 1.
            let min = int(obj, &["spec", "minReplicas"]).unwrap_or(1);
            vec![
                name_cell(obj),
                json!(format!("{kind}/{target}")),
                json!(hpa_targets(obj)),
                json!(min.to_string()),
                json!(int(obj, &["spec", "maxReplicas"]).unwrap_or(0)),
                json!(int(obj, &["status", "currentReplicas"]).unwrap_or(0)),
                json!(age_at(obj, now)),
            ]
        }
        Printer::NetworkPolicy => vec![
            name_cell(obj),
            json!(format_label_selector(get(obj, &["spec", "podSelector"]))),
            json!(age_at(obj, now)),
        ],
        Printer::EndpointSlice => vec![
            name_cell(obj),
            json!(text(obj, &["addressType"])),
            json!(discovery_ports(obj)),
            json!(discovery_endpoints(obj)),
            json!(age_at(obj, now)),
        ],
        Printer::Lease => vec![
            name_cell(obj),
            json!(text(obj, &["spec", "holderIdentity"])),
            json!(age_at(obj, now)),
        ],
        Printer::Generic => vec![name_cell(obj), json!(created_at(obj))],
    }
}

// ---------------------------------------------------------------------------------------------
// Tolerant accessors.

/// The value at `path`, if there and not null.
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    meta::at(v, path).filter(|v| !v.is_null())
}

/// The string at `path`, `""` if missing or not a string.
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The string at `path` if there and not empty.
fn non_empty<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    Some(text(v, path)).filter(|s| !s.is_empty())
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
        // Saturating, like every float to int `as` cast.
        .or_else(|| v.as_f64().map(|f| f as i64))
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(as_int)
}

fn is_true(v: &Value, path: &[&str]) -> bool {
    get(v, path).and_then(Value::as_bool) == Some(true)
}

fn items<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The number of entries of the map or list at `path`.
fn len(v: &Value, path: &[&str]) -> usize {
    match get(v, path) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn time(v: &Value, path: &[&str]) -> Option<Timestamp> {
    meta::parse_time(text(v, path))
}

fn name_cell(obj: &Value) -> Value {
    json!(meta::name(obj).unwrap_or(""))
}

// ---------------------------------------------------------------------------------------------
// Time.

/// `kubectl`'s human age of an object: `45s`, `3m12s`, `5h`, `2d3h`; `<unknown>` without a
/// creation time.
pub fn age(obj: &Value) -> String {
    age_at(obj, Timestamp::now())
}

fn age_at(obj: &Value, now: Timestamp) -> String {
    since(time(obj, &["metadata", "creationTimestamp"]), now)
}

/// The time since `t` as `kubectl` shows it, `<unknown>` for no time.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`: about two significant figures, `<invalid>` for a
/// time more than a second in the future.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// The creation time as the generic table shows it: RFC 3339 in UTC, the zero time if unset.
fn created_at(obj: &Value) -> String {
    match time(obj, &["metadata", "creationTimestamp"]) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and selectors.

/// `labels.FormatLabels`: `a=b,c=d` sorted by key, `<none>` when empty.
fn format_labels(map: Option<&Value>) -> String {
    let labels = meta::string_map(map);
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.FormatLabelSelector`: the selector's string, `<none>` when it selects everything or
/// nothing, `<error>` when it is not a valid selector.
fn format_label_selector(sel: Option<&Value>) -> String {
    match label_selector(sel) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s,
        Err(()) => "<error>".into(),
    }
}

/// A `LabelSelector` as `labels.Selector.String()` writes it: requirements sorted by key,
/// `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`. Empty for a missing or empty selector.
fn label_selector(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel else {
        return Ok(String::new());
    };
    let sel = sel.as_object().ok_or(())?;
    let mut reqs: Vec<(String, String)> = Vec::new();
    match sel.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v.as_str().ok_or(())?;
                reqs.push((k.clone(), format!("{k}={v}")));
            }
        }
        Some(_) => return Err(()),
    }
    match sel.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(exprs)) => {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).ok_or(())?;
                let mut values: Vec<&str> = match e.get("values") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(vs)) => vs
                        .iter()
                        .map(|v| v.as_str().ok_or(()))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(()),
                };
                values.sort_unstable();
                let set = || format!("({})", values.join(","));
                let req = match e.get("operator").and_then(Value::as_str) {
                    Some("In") if !values.is_empty() => format!("{key} in {}", set()),
                    Some("NotIn") if !values.is_empty() => format!("{key} notin {}", set()),
                    Some("Exists") if values.is_empty() => key.to_string(),
                    Some("DoesNotExist") if values.is_empty() => format!("!{key}"),
                    _ => return Err(()),
                };
                reqs.push((key.to_string(), req));
            }
        }
        Some(_) => return Err(()),
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// The names and images of a pod template's containers, each comma-separated.
fn containers(obj: &Value, path: &[&str]) -> (String, String) {
    let list = items(obj, path);
    let names: Vec<&str> = list.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = list.iter().map(|c| text(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

// ---------------------------------------------------------------------------------------------
// Pods.

fn condition_status<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    items(obj, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == kind)
        .map(|c| text(c, &["status"]))
}

fn later(slot: &mut Option<Timestamp>, t: Option<Timestamp>) {
    if let Some(t) = t
        && slot.is_none_or(|s| s < t)
    {
        *slot = Some(t);
    }
}

/// The reason of a terminated state: its `reason`, else `Signal:N` or `ExitCode:N`.
fn terminated_reason(t: &Value) -> String {
    if let Some(r) = non_empty(t, &["reason"]) {
        return r.to_string();
    }
    match int(t, &["signal"]).unwrap_or(0) {
        0 => format!("ExitCode:{}", int(t, &["exitCode"]).unwrap_or(0)),
        s => format!("Signal:{s}"),
    }
}

/// The state object of a container status (`waiting`, `running`, `terminated`), if set.
fn state<'a>(cs: &'a Value, which: &str) -> Option<&'a Value> {
    get(cs, &["state", which]).filter(|s| s.is_object())
}

fn pod_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let init_specs = items(obj, &["spec", "initContainers"]);
    let sidecar = |c: &Value| text(c, &["restartPolicy"]) == "Always";
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .rev()
            .find(|c| text(c, &["name"]) == name)
            .is_some_and(sidecar)
    };
    let total = items(obj, &["spec", "containers"]).len()
        + init_specs.iter().filter(|c| sidecar(c)).count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;

    let phase = text(obj, &["status", "phase"]);
    let mut reason = non_empty(obj, &["status", "reason"])
        .unwrap_or(phase)
        .to_string();
    if items(obj, &["status", "conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let mut initializing = false;
    for (i, cs) in items(obj, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let count = int(cs, &["restartCount"]).unwrap_or(0);
        let finished = time(cs, &["lastState", "terminated", "finishedAt"]);
        restarts = restarts.saturating_add(count);
        later(&mut last_restart, finished);
        let restartable = is_sidecar(text(cs, &["name"]));
        if restartable {
            sidecar_restarts = sidecar_restarts.saturating_add(count);
            later(&mut last_sidecar_restart, finished);
        }
        let terminated = state(cs, "terminated");
        if terminated.is_some_and(|t| int(t, &["exitCode"]).unwrap_or(0) == 0) {
            continue;
        }
        if restartable && is_true(cs, &["started"]) {
            if is_true(cs, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        let waiting = state(cs, "waiting")
            .and_then(|w| non_empty(w, &["reason"]))
            .filter(|r| *r != "PodInitializing");
        reason = match (terminated, waiting) {
            (Some(t), _) => format!("Init:{}", terminated_reason(t)),
            (None, Some(w)) => format!("Init:{w}"),
            (None, None) => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || condition_status(obj, "Initialized") == Some("True") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for cs in items(obj, &["status", "containerStatuses"]).iter().rev() {
            restarts = restarts.saturating_add(int(cs, &["restartCount"]).unwrap_or(0));
            later(
                &mut last_restart,
                time(cs, &["lastState", "terminated", "finishedAt"]),
            );
            if let Some(w) = state(cs, "waiting").and_then(|w| non_empty(w, &["reason"])) {
                reason = w.to_string();
            } else if let Some(t) = state(cs, "terminated") {
                reason = terminated_reason(t);
            } else if is_true(cs, &["ready"]) && state(cs, "running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = items(obj, &["status", "conditions"])
                .iter()
                .any(|c| text(c, &["type"]) == "Ready" && text(c, &["status"]) == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }

    if meta::is_deleting(obj) {
        if text(obj, &["status", "reason"]) == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }

    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    // `podIP` is the older single field; the API server keeps it in step with `podIPs`.
    let ip = items(obj, &["status", "podIPs"])
        .first()
        .map(|p| text(p, &["ip"]))
        .or_else(|| non_empty(obj, &["status", "podIP"]))
        .filter(|s| !s.is_empty())
        .unwrap_or("<none>");
    let gates = items(obj, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let met = gates
            .iter()
            .filter(|g| condition_status(obj, text(g, &["conditionType"])) == Some("True"))
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name_cell(obj),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age_at(obj, now)),
        json!(ip),
        json!(non_empty(obj, &["spec", "nodeName"]).unwrap_or("<none>")),
        json!(non_empty(obj, &["status", "nominatedNodeName"]).unwrap_or("<none>")),
        json!(readiness_gates),
    ]
}

// ---------------------------------------------------------------------------------------------
// Nodes.

fn node_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    // Upstream keeps the last condition of each type.
    let ready = items(obj, &["status", "conditions"])
        .iter()
        .rfind(|c| text(c, &["type"]) == "Ready")
        .map(|c| text(c, &["status"]));
    let mut status = match ready {
        Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }
    .to_string();
    if is_true(obj, &["spec", "unschedulable"]) {
        status.push_str(",SchedulingDisabled");
    }

    let mut roles = BTreeSet::new();
    for (k, v) in meta::labels(obj) {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.insert(v);
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };

    let address = |kind: &str| {
        items(obj, &["status", "addresses"])
            .iter()
            .find(|a| text(a, &["type"]) == kind)
            .map(|a| text(a, &["address"]))
            .unwrap_or("<none>")
    };
    let info = |field: &str| non_empty(obj, &["status", "nodeInfo", field]).unwrap_or("<unknown>");
    vec![
        name_cell(obj),
        json!(status),
        json!(roles),
        json!(age_at(obj, now)),
        json!(text(obj, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints.

fn strings<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a str> {
    items(v, path).iter().filter_map(Value::as_str).collect()
}

fn service_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let kind = non_empty(obj, &["spec", "type"]).unwrap_or("ClusterIP");
    // `clusterIP` is the older single field; the API server keeps it in step with `clusterIPs`.
    let cluster_ip = match items(obj, &["spec", "clusterIPs"]).first() {
        Some(ip) => ip.as_str().unwrap_or(""),
        None => non_empty(obj, &["spec", "clusterIP"]).unwrap_or("<none>"),
    };
    let external = strings(obj, &["spec", "externalIPs"]);
    let external_ip = match kind {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let ingress: BTreeSet<&str> = items(obj, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| non_empty(i, &["ip"]).or_else(|| non_empty(i, &["hostname"])))
                .collect();
            let all: Vec<&str> = ingress.into_iter().chain(external).collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(obj, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = items(obj, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]).unwrap_or(0);
            let protocol = non_empty(p, &["protocol"]).unwrap_or("TCP");
            match int(p, &["nodePort"]).unwrap_or(0) {
                n if n > 0 => format!("{port}:{n}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name_cell(obj),
        json!(kind),
        json!(cluster_ip),
        json!(external_ip),
        json!(ports),
        json!(age_at(obj, now)),
        json!(format_labels(get(obj, &["spec", "selector"]))),
    ]
}

/// `net.JoinHostPort`: IPv6 addresses in brackets.
fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Up to three `ip:port` of an Endpoints object, then ` + N more...`.
fn format_endpoints(obj: &Value) -> String {
    const MAX: usize = 3;
    let subsets = items(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = items(ss, &["addresses"]);
        let ports = items(ss, &["ports"]);
        // Headless services may have no ports: addresses alone.
        let ports: Vec<Option<i64>> = if ports.is_empty() {
            vec![None]
        } else {
            ports
                .iter()
                .map(|p| Some(int(p, &["port"]).unwrap_or(0)))
                .collect()
        };
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                let ip = text(a, &["ip"]);
                list.push(match port {
                    Some(port) => host_port(ip, port),
                    None => ip.to_string(),
                });
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

/// Up to three items, then ` + N more...`; `<unset>` for none.
fn list_with_more(all: Vec<String>) -> String {
    const MAX: usize = 3;
    if all.is_empty() {
        return "<unset>".into();
    }
    let count = all.len();
    let shown = all.into_iter().take(MAX).collect::<Vec<_>>().join(",");
    if count > MAX {
        format!("{shown} + {} more...", count - MAX)
    } else {
        shown
    }
}

fn discovery_ports(obj: &Value) -> String {
    list_with_more(
        items(obj, &["ports"])
            .iter()
            .map(
                |p| match (int(p, &["port"]), get(p, &["name"]).and_then(Value::as_str)) {
                    (Some(port), _) => port.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".to_string(),
                },
            )
            .collect(),
    )
}

fn discovery_endpoints(obj: &Value) -> String {
    list_with_more(
        items(obj, &["endpoints"])
            .iter()
            .flat_map(|e| items(e, &["addresses"]))
            .map(|a| a.as_str().unwrap_or("").to_string())
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Events.

fn event_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let first_seen = match time(obj, &["firstTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => since(time(obj, &["eventTime"]), now),
    };
    let mut last_seen = match time(obj, &["lastTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = int(obj, &["count"]).unwrap_or(0);
    if let Some(series) = get(obj, &["series"]).filter(|s| s.is_object()) {
        last_seen = since(time(series, &["lastObservedTime"]), now);
        count = int(series, &["count"]).unwrap_or(0);
    } else if count == 0 {
        // Singleton events of the events.k8s.io API have no count.
        count = 1;
    }
    let kind = text(obj, &["involvedObject", "kind"]).to_lowercase();
    let target = match non_empty(obj, &["involvedObject", "name"]) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let component = non_empty(obj, &["source", "component"])
        .or_else(|| non_empty(obj, &["reportingComponent"]))
        .unwrap_or("");
    let host = non_empty(obj, &["source", "host"])
        .or_else(|| non_empty(obj, &["reportingInstance"]))
        .unwrap_or("");
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last_seen),
        json!(text(obj, &["type"])),
        json!(text(obj, &["reason"])),
        json!(target),
        json!(text(obj, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(text(obj, &["message"]).trim()),
        json!(first_seen),
        json!(count),
        name_cell(obj),
    ]
}

// ---------------------------------------------------------------------------------------------
// Controller revisions, jobs, cron jobs, autoscalers.

/// `kind.group/name` of the controlling owner, lower-case kind and group; `<none>`.
fn controller_of(obj: &Value) -> String {
    let Some(owner) = items(obj, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| is_true(o, &["controller"]))
    else {
        return "<none>".into();
    };
    let api_version = text(owner, &["apiVersion"]);
    let group = api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default();
    let kind = text(owner, &["kind"]);
    let name = text(owner, &["name"]);
    match (kind, group) {
        ("", "") => name.to_string(),
        (kind, "") => format!("{}/{name}", kind.to_lowercase()),
        (kind, group) => format!("{}.{}/{name}", kind.to_lowercase(), group.to_lowercase()),
    }
}

fn job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int(obj, &["status", "succeeded"]).unwrap_or(0);
    let completions = match int(obj, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(obj, &["spec", "parallelism"]).unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (
        time(obj, &["status", "startTime"]),
        time(obj, &["status", "completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => since(Some(start), now),
        (Some(start), Some(end)) => human_duration(end.duration_since(start).as_secs()),
    };
    let has = |kind: &str| condition_status(obj, kind) == Some("True");
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if meta::is_deleting(obj) {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
    vec![
        name_cell(obj),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age_at(obj, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(obj, &["spec", "selector"]))),
    ]
}

fn cronjob_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let last_schedule = match time(obj, &["status", "lastScheduleTime"]) {
        Some(t) => since(Some(t), now),
        None => "<none>".into(),
    };
    let time_zone = get(obj, &["spec", "timeZone"])
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    // `suspend` defaults to false.
    let suspend = if is_true(obj, &["spec", "suspend"]) {
        "True"
    } else {
        "False"
    };
    let template = [
        "spec",
        "jobTemplate",
        "spec",
        "template",
        "spec",
        "containers",
    ];
    let (names, images) = containers(obj, &template);
    vec![
        name_cell(obj),
        json!(text(obj, &["spec", "schedule"])),
        json!(time_zone),
        json!(suspend),
        json!(len(obj, &["status", "active"])),
        json!(last_schedule),
        json!(age_at(obj, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(
            obj,
            &["spec", "jobTemplate", "spec", "selector"]
        ))),
    ]
}

/// A resource quantity as written; `<unknown>` if missing.
fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(n @ Value::Number(_)) => n.to_string(),
        _ => "<unknown>".into(),
    }
}

/// The TARGETS of an autoscaling/v2 HorizontalPodAutoscaler: `cpu: 42%/80%, ...`, two at most.
fn hpa_targets(obj: &Value) -> String {
    const MAX: usize = 2;
    // The v2 default when no metric is given: 80% average CPU utilisation.
    let default = [json!({"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80}}})];
    let specs = match items(obj, &["spec", "metrics"]) {
        [] => &default[..],
        specs => specs,
    };
    let statuses = items(obj, &["status", "currentMetrics"]);
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            match text(spec, &["type"]) {
                "External" => object_metric(spec, status, "external"),
                "Object" => object_metric(spec, status, "object"),
                "Pods" => {
                    let current = status
                        .and_then(|s| get(s, &["pods"]))
                        .map(|p| quantity(get(p, &["current", "averageValue"])))
                        .unwrap_or_else(|| "<unknown>".into());
                    let target = quantity(get(spec, &["pods", "target", "averageValue"]));
                    format!("{current}/{target}")
                }
                "Resource" => resource_metric(spec, status, "resource"),
                "ContainerResource" => resource_metric(spec, status, "containerResource"),
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    let count = list.len();
    let shown = list.into_iter().take(MAX).collect::<Vec<_>>().join(", ");
    if count > MAX {
        format!("{shown} + {} more...", count - MAX)
    } else {
        shown
    }
}

/// An `Object` or `External` metric: `current/target`, `(avg)` for an average value target.
fn object_metric(spec: &Value, status: Option<&Value>, key: &str) -> String {
    let source = status.and_then(|s| get(s, &[key]));
    match get(spec, &[key, "target", "averageValue"]) {
        Some(avg) => {
            let current = source
                .and_then(|s| get(s, &["current", "averageValue"]))
                .map(|v| quantity(Some(v)))
                .unwrap_or_else(|| "<unknown>".into());
            format!("{current}/{} (avg)", quantity(Some(avg)))
        }
        None => {
            let current = source
                .map(|s| quantity(get(s, &["current", "value"])))
                .unwrap_or_else(|| "<unknown>".into());
            let target = quantity(get(spec, &[key, "target", "value"]));
            format!("{current}/{target}")
        }
    }
}

/// A `Resource` or `ContainerResource` metric: `name: current/target`.
fn resource_metric(spec: &Value, status: Option<&Value>, key: &str) -> String {
    let name = text(spec, &[key, "name"]);
    let source = status.and_then(|s| get(s, &[key]));
    match get(spec, &[key, "target", "averageValue"]) {
        Some(avg) => {
            let current = source
                .map(|s| quantity(get(s, &["current", "averageValue"])))
                .unwrap_or_else(|| "<unknown>".into());
            format!("{name}: {current}/{}", quantity(Some(avg)))
        }
        None => {
            let current = source
                .and_then(|s| int(s, &["current", "averageUtilization"]))
                .map(|u| format!("{u}%"))
                .unwrap_or_else(|| "<unknown>".into());
            let target = int(spec, &[key, "target", "averageUtilization"])
                .map(|u| format!("{u}%"))
                .unwrap_or_else(|| "<auto>".into());
            format!("{name}: {current}/{target}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Custom resources.

/// A column of a CustomResourceDefinition's `additionalPrinterColumns`.
#[derive(Clone, Debug)]
struct CustomColumn {
    column: Column,
    /// The parsed `jsonPath`; `None` if we cannot read it (the cells are then empty).
    path: Option<Vec<Step>>,
}

/// The printer columns of one served version of a custom resource.
struct CustomPrinter {
    group: String,
    version: String,
    plural: String,
    columns: Vec<CustomColumn>,
}

static CUSTOM_PRINTERS: RwLock<Vec<CustomPrinter>> = RwLock::new(Vec::new());

/// Learns the printer columns of these CustomResourceDefinitions (replacing what was known), so
/// that tables of their resources show them. Meant to be called wherever the served CRDs are
/// (re)loaded, next to `Registry::set_custom`.
pub fn set_custom_columns(crds: &[Value]) {
    let mut out = Vec::new();
    for crd in crds {
        let (Some(group), Some(plural)) = (
            non_empty(crd, &["spec", "group"]),
            non_empty(crd, &["spec", "names", "plural"]),
        ) else {
            continue;
        };
        // apiextensions.k8s.io/v1beta1 kept the columns for all versions at the top.
        let shared = items(crd, &["spec", "additionalPrinterColumns"]);
        for version in items(crd, &["spec", "versions"]) {
            let Some(name) = non_empty(version, &["name"]) else {
                continue;
            };
            let defined = match items(version, &["additionalPrinterColumns"]) {
                [] => shared,
                cols => cols,
            };
            out.push(CustomPrinter {
                group: group.into(),
                version: name.into(),
                plural: plural.into(),
                columns: custom_columns(defined),
            });
        }
    }
    *CUSTOM_PRINTERS.write().unwrap_or_else(|p| p.into_inner()) = out;
}

/// The columns of these `additionalPrinterColumns`, or AGE when there are none (what the API
/// server serves for a version that defines none).
fn custom_columns(defined: &[Value]) -> Vec<CustomColumn> {
    let cols: Vec<CustomColumn> = defined
        .iter()
        .filter_map(|c| {
            let name = non_empty(c, &["name"])?;
            let path = text(c, &["jsonPath"]);
            let description = match non_empty(c, &["description"]) {
                Some(d) => d.to_string(),
                None => format!("Custom resource definition column (in JSONPath format): {path}"),
            };
            Some(CustomColumn {
                column: Column {
                    name: Cow::Owned(name.into()),
                    kind: Cow::Owned(non_empty(c, &["type"]).unwrap_or("string").into()),
                    format: Cow::Owned(text(c, &["format"]).into()),
                    description: Cow::Owned(description),
                    priority: int(c, &["priority"])
                        .and_then(|p| i32::try_from(p).ok())
                        .unwrap_or(0),
                },
                path: parse_json_path(path),
            })
        })
        .collect();
    if cols.is_empty() {
        default_custom_columns()
    } else {
        cols
    }
}

fn default_custom_columns() -> Vec<CustomColumn> {
    vec![CustomColumn {
        column: column("Age", "date", 0, CREATED_DOC),
        path: parse_json_path(".metadata.creationTimestamp"),
    }]
}

fn custom_printer(info: &ResourceInfo) -> Vec<CustomColumn> {
    CUSTOM_PRINTERS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|p| p.group == info.group && p.version == info.version && p.plural == info.plural)
        .map(|p| p.columns.clone())
        .unwrap_or_else(default_custom_columns)
}

impl CustomColumn {
    /// The cell, as the apiextensions table convertor makes it: the first value the path finds,
    /// converted to the column's type; null (`<none>`) when there is none or it has another type.
    fn cell(&self, obj: &Value, now: Timestamp) -> Value {
        let Some(v) = self
            .path
            .as_deref()
            .and_then(|steps| eval_json_path(obj, steps).into_iter().next())
            .filter(|v| !v.is_null())
        else {
            return Value::Null;
        };
        match self.column.kind.as_ref() {
            "string" => match v {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            },
            "integer" if v.is_number() => as_int(v).map_or(Value::Null, |i| json!(i)),
            "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
            "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
            "date" => match v.as_str() {
                Some("" | "null") => json!("<unknown>"),
                Some(s) => match meta::parse_time(s) {
                    Some(t) => json!(since(Some(t), now)),
                    None => json!("<invalid>"),
                },
                None => Value::Null,
            },
            _ => Value::Null,
        }
    }
}

/// One step of a JSONPath.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    /// `.name`, `['name']`.
    Field(String),
    /// `[2]`, `[-1]`.
    Index(i64),
    /// `[*]`, `.*`.
    All,
    /// `[?(@.type=="Ready")]`, `[?(@.ready)]`.
    Filter(Filter),
}

#[derive(Clone, Debug, PartialEq)]
struct Filter {
    path: Vec<String>,
    /// The comparison; existence of the path without one.
    test: Option<(Cmp, Value)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Parses the JSONPath subset printer columns use: `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[*]`,
/// `.*`, and filters `[?(@.a.b == "x")]` (`==`, `!=`, `<`, `<=`, `>`, `>=`, or existence).
/// `None` for anything else (recursive descent, slices, unions).
fn parse_json_path(src: &str) -> Option<Vec<Step>> {
    let mut s = src.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        s = inner.trim();
    }
    s = s.strip_prefix('$').unwrap_or(s);
    let owned;
    if !s.is_empty() && !s.starts_with(['.', '[']) {
        owned = format!(".{s}");
        s = &owned;
    }
    let chars: Vec<char> = s.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                match chars.get(i) {
                    None => break,
                    Some('.') => return None,
                    Some('*') => {
                        steps.push(Step::All);
                        i += 1;
                    }
                    Some('[') => {}
                    Some(_) => {
                        let start = i;
                        while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                            i += 1;
                        }
                        steps.push(Step::Field(chars[start..i].iter().collect()));
                    }
                }
            }
            '[' => {
                let end = closing_bracket(&chars, i)?;
                let inner: String = chars[i + 1..end].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// The index of the `]` closing the `[` at `open`, skipping quoted strings and parentheses.
fn closing_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    for (j, &c) in chars.iter().enumerate().skip(open + 1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ']') if depth == 0 => return Some(j),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Some(key) = unquote(inner) {
        return Some(Step::Field(key.to_string()));
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Step::Index(n));
    }
    let expr = inner.strip_prefix('?')?.trim();
    let expr = expr.strip_prefix('(')?.strip_suffix(')')?.trim();
    let rest = expr.strip_prefix('@')?;
    let end = rest
        .find(|c: char| c.is_whitespace() || "=!<>".contains(c))
        .unwrap_or(rest.len());
    let (path, test) = rest.split_at(end);
    let path: Vec<String> = path
        .split('.')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let test = test.trim();
    if test.is_empty() {
        return Some(Step::Filter(Filter { path, test: None }));
    }
    let (cmp, literal) = [
        ("==", Cmp::Eq),
        ("!=", Cmp::Ne),
        ("<=", Cmp::Le),
        (">=", Cmp::Ge),
        ("<", Cmp::Lt),
        (">", Cmp::Gt),
    ]
    .into_iter()
    .find_map(|(op, cmp)| test.strip_prefix(op).map(|l| (cmp, l.trim())))?;
    let literal = match unquote(literal) {
        Some(s) => Value::String(s.to_string()),
        None => serde_json::from_str::<Value>(literal).ok()?,
    };
    Some(Step::Filter(Filter {
        path,
        test: Some((cmp, literal)),
    }))
}

impl Filter {
    fn matches(&self, item: &Value) -> bool {
        let steps: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let Some(v) = get(item, &steps) else {
            return false;
        };
        let Some((cmp, literal)) = &self.test else {
            return true;
        };
        let order = match (v, literal) {
            (Value::Number(a), Value::Number(b)) => a
                .as_f64()
                .zip(b.as_f64())
                .and_then(|(a, b)| a.partial_cmp(&b)),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (a, b) if a == b => Some(std::cmp::Ordering::Equal),
            _ => None,
        };
        use std::cmp::Ordering::*;
        match (cmp, order) {
            (Cmp::Ne, None) => true,
            (_, None) => false,
            (Cmp::Eq, Some(o)) => o == Equal,
            (Cmp::Ne, Some(o)) => o != Equal,
            (Cmp::Lt, Some(o)) => o == Less,
            (Cmp::Le, Some(o)) => o != Greater,
            (Cmp::Gt, Some(o)) => o == Greater,
            (Cmp::Ge, Some(o)) => o != Less,
        }
    }
}

/// Every value the path reaches, in document order.
fn eval_json_path<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match (step, v) {
                (Step::Field(k), Value::Object(m)) => next.extend(m.get(k)),
                (Step::Index(n), Value::Array(a)) => {
                    let index = if *n < 0 {
                        i64::try_from(a.len()).ok().and_then(|l| l.checked_add(*n))
                    } else {
                        Some(*n)
                    };
                    if let Some(x) = index
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| a.get(i))
                    {
                        next.push(x);
                    }
                }
                (Step::All, Value::Array(a)) => next.extend(a),
                (Step::All, Value::Object(m)) => next.extend(m.values()),
                (Step::Filter(f), Value::Array(a)) => {
                    next.extend(a.iter().filter(|x| f.matches(x)))
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

// ---------------------------------------------------------------------------------------------
// The Table.

/// A Table of `objects`. `include_object` is the `includeObject` parameter: `Object` puts each
/// whole object in its row, `None` nothing, anything else (the default) its metadata only.
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    revision: i64,
    continue_token: Option<String>,
    include_object: Option<&str>,
) -> Value {
    let plan = Plan::of(info);
    let now = Timestamp::now();
    let cols: Vec<Value> = plan
        .columns()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include_object {
                Some("Object") => o.clone(),
                Some("None") => Value::Null,
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            let mut row = json!({"cells": plan.cells(o, now), "object": object});
            if let Some(conditions) = plan.conditions(o) {
                row["conditions"] = conditions;
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if revision > 0 {
        metadata["resourceVersion"] = json!(revision.to_string());
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": cols, "rows": rows})
}

/// A watch sends the column definitions once; later frames leave them out.
pub fn without_columns(mut t: Value) -> Value {
    if let Some(m) = t.as_object_mut() {
        m.insert("columnDefinitions".into(), Value::Null);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::resources::builtin_kind;

    /// The fixed "now" of these tests.
    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// A time `secs` before [`now`], as the API writes it.
    fn ago(secs: i64) -> String {
        now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    fn info(group: &str, kind: &str) -> ResourceInfo {
        builtin_kind(group, kind).unwrap()
    }

    fn custom_info(group: &str, version: &str, plural: &str) -> ResourceInfo {
        ResourceInfo {
            group: group.into(),
            version: version.into(),
            kind: "Widget".into(),
            plural: plural.into(),
            singular: "widget".into(),
            namespaced: true,
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
            custom: true,
        }
    }

    /// The cells of `obj` as a kind's printer makes them at [`now`].
    fn row(group: &str, kind: &str, obj: Value) -> Value {
        Value::Array(Plan::of(&info(group, kind)).cells(&obj, now()))
    }

    fn pod(obj: Value) -> Value {
        row("", "Pod", obj)
    }

    /// The columns as `(name, type, priority)`.
    fn heads(info: &ResourceInfo) -> Vec<(String, String, i32)> {
        columns(info)
            .into_iter()
            .map(|c| (c.name.into_owned(), c.kind.into_owned(), c.priority))
            .collect()
    }

    fn owned(cols: &[(&str, &str, i32)]) -> Vec<(String, String, i32)> {
        cols.iter()
            .map(|(n, t, p)| (n.to_string(), t.to_string(), *p))
            .collect()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 10, "5h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600, "8h"),
            (20 * 3600, "20h"),
            (47 * 3600 + 3599, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 7200, "3d2h"),
            (8 * 86400, "8d"),
            (30 * 86400, "30d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (735 * 86400, "2y5d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
        assert_eq!(
            age_at(
                &json!({"metadata": {"creationTimestamp": ago(3600)}}),
                now()
            ),
            "60m"
        );
        assert_eq!(age_at(&json!({"metadata": {}}), now()), "<unknown>");
        assert_eq!(
            age_at(
                &json!({"metadata": {"creationTimestamp": "yesterday"}}),
                now()
            ),
            "<unknown>"
        );
    }

    // --- Pods ------------------------------------------------------------------------------

    #[test]
    fn pod_columns_match_the_upstream_printer() {
        assert_eq!(
            heads(&info("", "Pod")),
            owned(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ])
        );
        assert_eq!(columns(&info("", "Pod"))[0].format, "name");
    }

    #[test]
    fn running_pod_with_a_restarted_container() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d4b9c8f6-x2k9p", "namespace": "default",
                         "creationTimestamp": ago(3 * 86400 + 3600)},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "nginx", "image": "nginx:1.27"},
                {"name": "log", "image": "busybox:1.36"}]},
            "status": {
                "phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {"name": "log", "ready": true, "restartCount": 0, "started": true,
                     "state": {"running": {"startedAt": ago(3 * 86400)}}},
                    {"name": "nginx", "ready": true, "restartCount": 3, "started": true,
                     "state": {"running": {"startedAt": ago(25 * 60)}},
                     "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                  "startedAt": ago(3600),
                                                  "finishedAt": ago(25 * 60 + 5)}}}]}
        });
        assert_eq!(
            pod(obj),
            json!([
                "web-7d4b9c8f6-x2k9p",
                "2/2",
                "Running",
                "3 (25m ago)",
                "3d1h",
                "10.244.1.7",
                "node-1",
                "<none>",
                "<none>"
            ])
        );
    }

    #[test]
    fn crash_looping_pod() {
        let obj = json!({
            "metadata": {"name": "api-6f9c7b5d4-q8w2e", "creationTimestamp": ago(10 * 60)},
            "spec": {"nodeName": "node-2", "containers": [{"name": "api", "image": "registry.example/api:2.1"}]},
            "status": {
                "phase": "Running", "podIPs": [{"ip": "10.244.2.14"}],
                "conditions": [{"type": "Initialized", "status": "True"},
                               {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{
                    "name": "api", "ready": false, "restartCount": 5, "started": false,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 2m40s restarting failed container=api"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                  "startedAt": ago(50), "finishedAt": ago(42)}}}]}
        });
        assert_eq!(
            pod(obj),
            json!([
                "api-6f9c7b5d4-q8w2e",
                "0/1",
                "CrashLoopBackOff",
                "5 (42s ago)",
                "10m",
                "10.244.2.14",
                "node-2",
                "<none>",
                "<none>"
            ])
        );
    }

    #[test]
    fn pending_pods() {
        let unschedulable = json!({
            "metadata": {"name": "big-0", "creationTimestamp": ago(90)},
            "spec": {"containers": [{"name": "big", "image": "big:1"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient memory."}]}
        });
        assert_eq!(
            pod(unschedulable),
            json!([
                "big-0", "0/1", "Pending", "0", "90s", "<none>", "<none>", "<none>", "<none>"
            ])
        );

        let creating = json!({
            "metadata": {"name": "web-1", "creationTimestamp": ago(5)},
            "spec": {"nodeName": "node-2", "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"phase": "Pending",
                       "containerStatuses": [{"name": "web", "ready": false, "restartCount": 0,
                                              "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        });
        assert_eq!(
            pod(creating),
            json!([
                "web-1",
                "0/1",
                "ContainerCreating",
                "0",
                "5s",
                "<none>",
                "node-2",
                "<none>",
                "<none>"
            ])
        );

        let gated = json!({
            "metadata": {"name": "gated", "creationTimestamp": ago(5)},
            "spec": {"containers": [{"name": "c"}], "schedulingGates": [{"name": "example.com/wait"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}
        });
        assert_eq!(pod(gated)[2], "SchedulingGated");

        let preempting = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "nominatedNodeName": "node-3"}
        });
        assert_eq!(
            pod(preempting),
            json!([
                "p",
                "0/1",
                "Pending",
                "0",
                "<unknown>",
                "<none>",
                "<none>",
                "node-3",
                "<none>"
            ])
        );
    }

    #[test]
    fn terminating_pods() {
        let running = json!({
            "metadata": {"name": "web-0", "creationTimestamp": ago(3600),
                         "deletionTimestamp": ago(-30), "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.9"}],
                       "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                                              "state": {"running": {"startedAt": ago(3600)}}}]}
        });
        assert_eq!(
            pod(running),
            json!([
                "web-0",
                "1/1",
                "Terminating",
                "0",
                "60m",
                "10.244.1.9",
                "node-1",
                "<none>",
                "<none>"
            ])
        );

        let lost = json!({
            "metadata": {"name": "web-1", "deletionTimestamp": ago(10)},
            "spec": {"containers": [{"name": "web"}]},
            "status": {"phase": "Running", "reason": "NodeLost"}
        });
        assert_eq!(pod(lost)[2], "Unknown");

        // A finished pod being deleted keeps its final status.
        let done = json!({
            "metadata": {"name": "job-x", "deletionTimestamp": ago(10)},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "c", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        assert_eq!(pod(done)[2], "Completed");
    }

    #[test]
    fn init_containers() {
        let base = |init_statuses: Value, initialized: &str, main_state: Value| {
            json!({
                "metadata": {"name": "app", "creationTimestamp": ago(60)},
                "spec": {"initContainers": [{"name": "migrate"}, {"name": "seed"}],
                         "containers": [{"name": "app"}]},
                "status": {"phase": "Pending",
                           "conditions": [{"type": "Initialized", "status": initialized}],
                           "initContainerStatuses": init_statuses,
                           "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                                                  "state": main_state}]}
            })
        };
        let initializing = json!({"waiting": {"reason": "PodInitializing"}});
        let running = json!({"running": {"startedAt": ago(30)}});
        let done = json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        let waiting = json!({"waiting": {"reason": "PodInitializing"}});

        let status = |statuses: Value| pod(base(statuses, "False", initializing.clone()));
        assert_eq!(
            status(
                json!([{"name": "migrate", "state": running}, {"name": "seed", "state": waiting}])
            ),
            json!([
                "app", "0/1", "Init:0/2", "0", "60s", "<none>", "<none>", "<none>", "<none>"
            ])
        );
        assert_eq!(
            status(json!([{"name": "migrate", "state": done}, {"name": "seed", "state": running}]))
                [2],
            "Init:1/2"
        );
        let crashing = status(json!([
            {"name": "migrate", "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(20)}}},
            {"name": "seed", "state": waiting}]));
        assert_eq!(crashing[2], "Init:CrashLoopBackOff");
        assert_eq!(crashing[3], "4 (20s ago)");
        assert_eq!(
            status(
                json!([{"name": "migrate", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
            )[2],
            "Init:Error"
        );
        assert_eq!(
            status(json!([{"name": "migrate", "state": {"terminated": {"exitCode": 2}}}]))[2],
            "Init:ExitCode:2"
        );
        assert_eq!(
            status(
                json!([{"name": "migrate", "state": {"terminated": {"exitCode": 137, "signal": 9}}}])
            )[2],
            "Init:Signal:9"
        );

        // Both init containers done: the app container's own state shows.
        let finished = pod(base(
            json!([{"name": "migrate", "state": done}, {"name": "seed", "state": done}]),
            "True",
            initializing,
        ));
        assert_eq!(finished[1], "0/1");
        assert_eq!(finished[2], "PodInitializing");
    }

    #[test]
    fn sidecar_containers_count_as_containers() {
        let obj = json!({
            "metadata": {"name": "mesh", "creationTimestamp": ago(3600)},
            "spec": {"initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
                     "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Initialized", "status": "True"},
                                      {"type": "Ready", "status": "True"}],
                       "initContainerStatuses": [
                           {"name": "proxy", "ready": true, "started": true, "restartCount": 1,
                            "state": {"running": {}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(600)}}}],
                       "containerStatuses": [
                           {"name": "app", "ready": true, "started": true, "restartCount": 0,
                            "state": {"running": {}}}]}
        });
        let cells = pod(obj);
        assert_eq!(cells[1], "2/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "1 (10m ago)");
    }

    #[test]
    fn finished_and_failed_pods() {
        let completed = json!({
            "metadata": {"name": "pi-x7k2m", "creationTimestamp": ago(7200)},
            "spec": {"nodeName": "node-1", "containers": [{"name": "pi"}]},
            "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.244.1.3"}], "containerStatuses": [
                {"name": "pi", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        assert_eq!(
            pod(completed.clone()),
            json!([
                "pi-x7k2m",
                "0/1",
                "Completed",
                "0",
                "120m",
                "10.244.1.3",
                "node-1",
                "<none>",
                "<none>"
            ])
        );
        let t = table(&info("", "Pod"), &[completed], 7, None, None);
        assert_eq!(
            t["rows"][0]["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded",
                    "message": "The pod has completed successfully."}])
        );

        let one_done_one_running = |ready: &str| {
            pod(json!({
                "metadata": {"name": "two"},
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running",
                           "conditions": [{"type": "Ready", "status": ready}],
                           "containerStatuses": [
                               {"name": "a", "ready": false, "restartCount": 0,
                                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                               {"name": "b", "ready": true, "restartCount": 0,
                                "state": {"running": {}}}]}
            }))
        };
        assert_eq!(one_done_one_running("True")[2], "Running");
        assert_eq!(one_done_one_running("False")[2], "NotReady");
        assert_eq!(one_done_one_running("False")[1], "1/2");

        let failed = |term: Value| {
            pod(json!({
                "metadata": {"name": "f"},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Failed", "containerStatuses": [
                    {"name": "c", "ready": false, "restartCount": 0, "state": {"terminated": term}}]}
            }))[2]
                .clone()
        };
        assert_eq!(failed(json!({"exitCode": 1, "reason": "Error"})), "Error");
        assert_eq!(failed(json!({"exitCode": 137})), "ExitCode:137");
        assert_eq!(failed(json!({"exitCode": 0, "signal": 15})), "Signal:15");

        let evicted = json!({
            "metadata": {"name": "e"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Failed", "reason": "Evicted",
                       "message": "The node was low on resource: memory."}
        });
        assert_eq!(pod(evicted)[2], "Evicted");
    }

    #[test]
    fn pod_wide_columns() {
        let obj = json!({
            "metadata": {"name": "lb-backed"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}],
                     "readinessGates": [{"conditionType": "example.com/lb-ready"},
                                        {"conditionType": "example.com/feature-1"}]},
            "status": {"phase": "Running", "podIP": "10.244.3.3",
                       "conditions": [{"type": "example.com/lb-ready", "status": "True"},
                                      {"type": "example.com/feature-1", "status": "False"}]}
        });
        let cells = pod(obj);
        // Only `podIP`, as older writers set it: still shown.
        assert_eq!(cells[5], "10.244.3.3");
        assert_eq!(cells[8], "1/2");
    }

    // --- Nodes -----------------------------------------------------------------------------

    #[test]
    fn node_columns_and_a_cordoned_not_ready_control_plane() {
        assert_eq!(
            heads(&info("", "Node")),
            owned(&[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ])
        );
        let cp = json!({
            "metadata": {"name": "cp-1", "creationTimestamp": ago(45 * 86400),
                         "labels": {"kubernetes.io/hostname": "cp-1",
                                    "node-role.kubernetes.io/control-plane": "",
                                    "node.kubernetes.io/exclude-from-external-load-balancers": ""}},
            "spec": {"unschedulable": true, "podCIDR": "10.244.0.0/24",
                     "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "Unknown"},
                    {"type": "DiskPressure", "status": "Unknown"},
                    {"type": "PIDPressure", "status": "Unknown"},
                    {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}],
                "addresses": [{"type": "InternalIP", "address": "198.18.0.11"},
                              {"type": "Hostname", "address": "cp-1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.1",
                             "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-18-amd64",
                             "containerRuntimeVersion": "containerd://1.7.24"}}
        });
        assert_eq!(
            row("", "Node", cp),
            json!([
                "cp-1",
                "NotReady,SchedulingDisabled",
                "control-plane",
                "45d",
                "v1.33.1",
                "198.18.0.11",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-18-amd64",
                "containerd://1.7.24"
            ])
        );
    }

    #[test]
    fn node_roles_and_statuses() {
        let worker = json!({
            "metadata": {"name": "w-1", "creationTimestamp": ago(600),
                         "labels": {"node-role.kubernetes.io/worker": "",
                                    "node-role.kubernetes.io/etcd": "true",
                                    "node-role.kubernetes.io/": "",
                                    "kubernetes.io/role": "ingress"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "ExternalIP", "address": "203.0.113.7"},
                                     {"type": "InternalIP", "address": "198.18.0.21"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.1"}}
        });
        assert_eq!(
            row("", "Node", worker),
            json!([
                "w-1",
                "Ready",
                "etcd,ingress,worker",
                "10m",
                "v1.33.1",
                "198.18.0.21",
                "203.0.113.7",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ])
        );
        let fresh = json!({"metadata": {"name": "new"}});
        assert_eq!(
            row("", "Node", fresh),
            json!([
                "new",
                "Unknown",
                "<none>",
                "<unknown>",
                "",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ])
        );
        let not_ready = json!({"metadata": {"name": "n"},
                               "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(row("", "Node", not_ready)[1], "NotReady");
    }

    // --- Workloads -------------------------------------------------------------------------

    #[test]
    fn deployment_mid_rollout() {
        assert_eq!(
            heads(&info("apps", "Deployment")),
            owned(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "string", 0),
                ("Available", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ])
        );
        let obj = json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 4,
                         "creationTimestamp": ago(2 * 3600 + 300)},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [
                                      {"name": "nginx", "image": "nginx:1.27"},
                                      {"name": "metrics", "image": "nginx/nginx-prometheus-exporter:1.3"}]}}},
            "status": {"observedGeneration": 4, "replicas": 4, "updatedReplicas": 1,
                       "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 2}
        });
        assert_eq!(
            row("apps", "Deployment", obj),
            json!([
                "web",
                "2/3",
                1,
                2,
                "125m",
                "nginx,metrics",
                "nginx:1.27,nginx/nginx-prometheus-exporter:1.3",
                "app=web"
            ])
        );
        // Fresh, no status yet, replicas defaulted.
        assert_eq!(
            row(
                "apps",
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {}})
            ),
            json!(["d", "0/1", 0, 0, "<unknown>", "", "", ""])
        );
    }

    #[test]
    fn selectors_print_like_labels_selector_string() {
        let sel = json!({
            "matchLabels": {"tier": "frontend", "app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "canary"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "track", "operator": "Exists"}]
        });
        assert_eq!(
            format_label_selector(Some(&sel)),
            "app=web,env in (canary,prod),!legacy,tier=frontend,track,zone notin (b)"
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_label_selector(None), "<none>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
        let obj = json!({"metadata": {"name": "d"}, "spec": {"selector": bad}});
        assert_eq!(row("apps", "Deployment", obj)[7], "<invalid>");
    }

    #[test]
    fn replicasets_daemonsets_statefulsets() {
        let rs = json!({
            "metadata": {"name": "web-7d4b9c8f6", "creationTimestamp": ago(30)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d4b9c8f6"}},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2, "availableReplicas": 2}
        });
        assert_eq!(
            heads(&info("apps", "ReplicaSet"))[1..4].to_vec(),
            owned(&[
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0)
            ])
        );
        assert_eq!(
            row("apps", "ReplicaSet", rs),
            json!([
                "web-7d4b9c8f6",
                3,
                3,
                2,
                "30s",
                "nginx",
                "nginx:1.27",
                "app=web,pod-template-hash=7d4b9c8f6"
            ])
        );

        let ds = json!({
            "metadata": {"name": "kube-proxy", "creationTimestamp": ago(86400)},
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                     "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                           "containers": [{"name": "kube-proxy", "image": "trellis:dev"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                       "updatedNumberScheduled": 3, "numberAvailable": 2, "numberMisscheduled": 0}
        });
        assert_eq!(
            heads(&info("apps", "DaemonSet"))
                .iter()
                .map(|h| h.0.as_str())
                .collect::<Vec<_>>(),
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            row("apps", "DaemonSet", ds),
            json!([
                "kube-proxy",
                3,
                3,
                2,
                3,
                2,
                "kubernetes.io/os=linux",
                "24h",
                "kube-proxy",
                "trellis:dev",
                "k8s-app=kube-proxy"
            ])
        );
        let bare = row("apps", "DaemonSet", json!({"metadata": {"name": "x"}}));
        assert_eq!(bare[6], "<none>");
        assert_eq!(bare[10], "<none>");

        let sts = json!({
            "metadata": {"name": "db", "creationTimestamp": ago(600)},
            "spec": {"replicas": 3, "serviceName": "db",
                     "template": {"spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}}},
            "status": {"replicas": 2, "readyReplicas": 1}
        });
        assert_eq!(
            heads(&info("apps", "StatefulSet")),
            owned(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1)
            ])
        );
        assert_eq!(
            row("apps", "StatefulSet", sts),
            json!(["db", "1/3", "10m", "pg", "postgres:17"])
        );
    }

    #[test]
    fn jobs_and_cronjobs() {
        assert_eq!(
            heads(&info("batch", "Job"))
                .iter()
                .map(|h| (h.0.as_str(), h.2))
                .collect::<Vec<_>>(),
            [
                ("Name", 0),
                ("Status", 0),
                ("Completions", 0),
                ("Duration", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1)
            ]
        );
        let complete = json!({
            "metadata": {"name": "pi", "creationTimestamp": ago(600)},
            "spec": {"completions": 1, "parallelism": 1,
                     "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "8f0b"}},
                     "template": {"spec": {"containers": [{"name": "pi", "image": "perl:5.34"}]}}},
            "status": {"startTime": ago(600), "completionTime": ago(583), "succeeded": 1,
                       "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                      {"type": "Complete", "status": "True"}]}
        });
        assert_eq!(
            row("batch", "Job", complete),
            json!([
                "pi",
                "Complete",
                "1/1",
                "17s",
                "10m",
                "pi",
                "perl:5.34",
                "batch.kubernetes.io/controller-uid=8f0b"
            ])
        );
        let queue = json!({
            "metadata": {"name": "work", "creationTimestamp": ago(80)},
            "spec": {"parallelism": 3},
            "status": {"startTime": ago(75), "active": 3}
        });
        assert_eq!(
            row("batch", "Job", queue),
            json!([
                "work", "Running", "0/1 of 3", "75s", "80s", "", "", "<none>"
            ])
        );
        let job = |status: Value, deleting: bool| {
            let mut obj =
                json!({"metadata": {"name": "j"}, "spec": {"completions": 5}, "status": status});
            if deleting {
                obj["metadata"]["deletionTimestamp"] = json!(ago(1));
            }
            row("batch", "Job", obj)
        };
        let failed = job(
            json!({"failed": 6, "succeeded": 2,
                                "conditions": [{"type": "FailureTarget", "status": "True"},
                                               {"type": "Failed", "status": "True"}]}),
            false,
        );
        assert_eq!((&failed[1], &failed[2]), (&json!("Failed"), &json!("2/5")));
        assert_eq!(
            job(
                json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
                false
            )[1],
            "Suspended"
        );
        assert_eq!(
            job(
                json!({"conditions": [{"type": "Suspended", "status": "False"}]}),
                false
            )[1],
            "Running"
        );
        assert_eq!(
            job(
                json!({"conditions": [{"type": "FailureTarget", "status": "True"}]}),
                false
            )[1],
            "FailureTarget"
        );
        assert_eq!(job(json!({}), true)[1], "Terminating");
        assert_eq!(job(json!({}), false)[3], "");

        let cron = json!({
            "metadata": {"name": "backup", "creationTimestamp": ago(3 * 86400)},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC", "suspend": false,
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [
                         {"name": "backup", "image": "backup:1.2"}]}}}}},
            "status": {"active": [{"kind": "Job", "name": "backup-29143210"}], "lastScheduleTime": ago(130)}
        });
        assert_eq!(
            heads(&info("batch", "CronJob"))[1..7].to_vec(),
            owned(&[
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                ("Age", "string", 0)
            ])
        );
        assert_eq!(
            row("batch", "CronJob", cron),
            json!([
                "backup",
                "*/5 * * * *",
                "Etc/UTC",
                "False",
                1,
                "2m10s",
                "3d",
                "backup",
                "backup:1.2",
                "<none>"
            ])
        );
        let suspended =
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "@daily", "suspend": true}});
        assert_eq!(
            row("batch", "CronJob", suspended),
            json!([
                "c",
                "@daily",
                "<none>",
                "True",
                0,
                "<none>",
                "<unknown>",
                "",
                "",
                "<none>"
            ])
        );
    }

    #[test]
    fn controller_revisions() {
        let obj = json!({
            "metadata": {"name": "kube-proxy-5d4c8b9f7", "creationTimestamp": ago(86400 * 2),
                         "ownerReferences": [
                             {"apiVersion": "v1", "kind": "Other", "name": "not-the-controller"},
                             {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy",
                              "uid": "1", "controller": true, "blockOwnerDeletion": true}]},
            "revision": 2, "data": {}
        });
        assert_eq!(
            row("apps", "ControllerRevision", obj),
            json!(["kube-proxy-5d4c8b9f7", "daemonset.apps/kube-proxy", 2, "2d"])
        );
        let core = json!({"metadata": {"name": "r", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "p", "controller": true}]}});
        assert_eq!(row("apps", "ControllerRevision", core)[1], "pod/p");
        assert_eq!(
            row(
                "apps",
                "ControllerRevision",
                json!({"metadata": {"name": "r"}})
            )[1],
            "<none>"
        );
    }

    #[test]
    fn horizontal_pod_autoscalers() {
        let obj = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(3600)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 2, "maxReplicas": 10,
                     "metrics": [
                         {"type": "Resource", "resource": {"name": "cpu",
                             "target": {"type": "Utilization", "averageUtilization": 60}}},
                         {"type": "Resource", "resource": {"name": "memory",
                             "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
                         {"type": "Pods", "pods": {"metric": {"name": "packets-per-second"},
                             "target": {"type": "AverageValue", "averageValue": "1k"}}}]},
            "status": {"currentReplicas": 3, "desiredReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": 42, "averageValue": "210m"}}},
                {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "310Mi"}}}]}
        });
        assert_eq!(
            row("autoscaling", "HorizontalPodAutoscaler", obj),
            json!([
                "web",
                "Deployment/web",
                "cpu: 42%/60%, memory: 310Mi/500Mi + 1 more...",
                "2",
                10,
                3,
                "60m"
            ])
        );
        let defaults = json!({"metadata": {"name": "h"},
                              "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "maxReplicas": 5}});
        assert_eq!(
            row("autoscaling", "HorizontalPodAutoscaler", defaults),
            json!([
                "h",
                "StatefulSet/db",
                "cpu: <unknown>/80%",
                "1",
                5,
                0,
                "<unknown>"
            ])
        );
        let other = json!({"metadata": {"name": "q"}, "spec": {"metrics": [
            {"type": "External", "external": {"metric": {"name": "queue"},
                "target": {"type": "AverageValue", "averageValue": "30"}}},
            {"type": "Object", "object": {"metric": {"name": "rps"},
                "target": {"type": "Value", "value": "10k"}}}]},
            "status": {"currentMetrics": [{"type": "External", "external": {"current": {"averageValue": "12"}}}]}});
        assert_eq!(
            row("autoscaling", "HorizontalPodAutoscaler", other)[2],
            "12/30 (avg), <unknown>/10k"
        );
    }

    // --- Services and networking -----------------------------------------------------------

    #[test]
    fn services() {
        assert_eq!(
            heads(&info("", "Service"))
                .iter()
                .map(|h| (h.0.as_str(), h.2))
                .collect::<Vec<_>>(),
            [
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1)
            ]
        );
        let node_port = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(86400 * 10)},
            "spec": {"type": "NodePort", "clusterIP": "10.96.44.12", "clusterIPs": ["10.96.44.12"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 31053}],
                     "selector": {"app": "web", "tier": "frontend"}}
        });
        assert_eq!(
            row("", "Service", node_port),
            json!([
                "web",
                "NodePort",
                "10.96.44.12",
                "<none>",
                "80:30080/TCP,53:31053/UDP",
                "10d",
                "app=web,tier=frontend"
            ])
        );
        let pending = json!({
            "metadata": {"name": "ingress", "creationTimestamp": ago(40)},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"],
                     "ports": [{"port": 443, "nodePort": 31443}], "selector": {"app": "ingress"}},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(
            row("", "Service", pending),
            json!([
                "ingress",
                "LoadBalancer",
                "10.96.9.9",
                "<pending>",
                "443:31443/TCP",
                "40s",
                "app=ingress"
            ])
        );
        let provisioned = json!({
            "metadata": {"name": "ingress"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.9.9"], "externalIPs": ["198.51.100.7"],
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example.com"},
                                                    {"ip": "203.0.113.10"}]}}
        });
        assert_eq!(
            row("", "Service", provisioned)[3],
            "203.0.113.10,lb.example.com,198.51.100.7"
        );
        let lb_only = json!({"metadata": {"name": "l"}, "spec": {"type": "LoadBalancer"},
                             "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}});
        assert_eq!(row("", "Service", lb_only)[3], "203.0.113.11");

        let kubernetes = json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        });
        assert_eq!(
            row("", "Service", kubernetes),
            json!([
                "kubernetes",
                "ClusterIP",
                "10.96.0.1",
                "<none>",
                "443/TCP",
                "<unknown>",
                "<none>"
            ])
        );
        let headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "selector": {"app": "db"}}});
        assert_eq!(
            row("", "Service", headless),
            json!([
                "db",
                "ClusterIP",
                "None",
                "<none>",
                "<none>",
                "<unknown>",
                "app=db"
            ])
        );
        let external_ips = json!({"metadata": {"name": "e"},
                                  "spec": {"clusterIP": "10.96.1.1", "externalIPs": ["198.51.100.1", "198.51.100.2"]}});
        assert_eq!(
            row("", "Service", external_ips)[3],
            "198.51.100.1,198.51.100.2"
        );
        let external_name = json!({"metadata": {"name": "db"},
                                   "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(
            row("", "Service", external_name),
            json!([
                "db",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "<unknown>",
                "<none>"
            ])
        );
        let odd = json!({"metadata": {"name": "o"}, "spec": {"type": "Magic"}});
        assert_eq!(row("", "Service", odd)[3], "<unknown>");
    }

    #[test]
    fn endpoints_and_endpoint_slices() {
        let ep = |subsets: Value| {
            row(
                "",
                "Endpoints",
                json!({"metadata": {"name": "web"}, "subsets": subsets}),
            )[1]
            .clone()
        };
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.2.9"}],
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}])
            ),
            "10.244.1.5:8080,10.244.2.9:8080"
        );
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}],
                       "ports": [{"port": 80}, {"port": 443}]}])
            ),
            "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 3 more..."
        );
        assert_eq!(
            ep(json!([{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 8080}]}])),
            "[fd00::5]:8080"
        );
        assert_eq!(ep(json!([{"addresses": [{"ip": "10.0.0.1"}]}])), "10.0.0.1");
        assert_eq!(ep(json!([])), "<none>");
        assert_eq!(ep(Value::Null), "<none>");
        assert_eq!(
            ep(json!([{"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}])),
            ""
        );

        assert_eq!(
            heads(&info("discovery.k8s.io", "EndpointSlice"))
                .iter()
                .map(|h| h.0.as_str())
                .collect::<Vec<_>>(),
            ["Name", "AddressType", "Ports", "Endpoints", "Age"]
        );
        let slice = json!({
            "metadata": {"name": "web-abc12", "creationTimestamp": ago(200),
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "protocol": "TCP"},
                      {}, {"port": 9090}],
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                          {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}]
        });
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", slice),
            json!([
                "web-abc12",
                "IPv4",
                "8080,metrics,* + 1 more...",
                "10.244.1.5,10.244.2.9",
                "3m20s"
            ])
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6", "endpoints": null});
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", empty),
            json!(["e", "IPv6", "<unset>", "<unset>", "<unknown>"])
        );
    }

    #[test]
    fn network_policies() {
        assert_eq!(
            heads(&info("networking.k8s.io", "NetworkPolicy")),
            owned(&[
                ("Name", "string", 0),
                ("Pod-Selector", "string", 0),
                ("Age", "string", 0)
            ])
        );
        let db = json!({
            "metadata": {"name": "db-ingress", "namespace": "prod", "creationTimestamp": ago(7 * 86400)},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                                  "ports": [{"protocol": "TCP", "port": 5432}]}]}
        });
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", db),
            json!(["db-ingress", "app=db", "7d"])
        );
        let deny_all = json!({
            "metadata": {"name": "default-deny", "creationTimestamp": ago(60)},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        });
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", deny_all),
            json!(["default-deny", "<none>", "60s"])
        );
        let exprs = json!({"metadata": {"name": "x"}, "spec": {"podSelector": {"matchExpressions": [
            {"key": "role", "operator": "In", "values": ["frontend", "api"]}]}}});
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", exprs)[1],
            "role in (api,frontend)"
        );
    }

    // --- Config and the rest ---------------------------------------------------------------

    #[test]
    fn namespaces() {
        assert_eq!(
            heads(&info("", "Namespace")),
            owned(&[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "string", 0)
            ])
        );
        let active = json!({"metadata": {"name": "default", "creationTimestamp": ago(86400 * 100)},
                            "status": {"phase": "Active"}});
        assert_eq!(
            row("", "Namespace", active),
            json!(["default", "Active", "100d"])
        );
        let deleting = json!({
            "metadata": {"name": "team-a", "creationTimestamp": ago(86400), "deletionTimestamp": ago(30)},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating", "conditions": [
                {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain"}]}
        });
        assert_eq!(
            row("", "Namespace", deleting),
            json!(["team-a", "Terminating", "24h"])
        );
        // The phase may lag the deletion timestamp; the timestamp wins.
        let lagging = json!({"metadata": {"name": "b", "deletionTimestamp": ago(1)}, "status": {"phase": "Active"}});
        assert_eq!(row("", "Namespace", lagging)[1], "Terminating");
        assert_eq!(
            row("", "Namespace", json!({"metadata": {"name": "c"}}))[1],
            "Active"
        );
    }

    #[test]
    fn configmaps_secrets_serviceaccounts_leases() {
        let cm = json!({"metadata": {"name": "kube-root-ca.crt", "creationTimestamp": ago(300)},
                        "data": {"ca.crt": "..."}, "binaryData": {"logo.png": "iVBO", "icon": "AAAA"}});
        assert_eq!(
            row("", "ConfigMap", cm),
            json!(["kube-root-ca.crt", 3, "5m"])
        );
        assert_eq!(
            row("", "ConfigMap", json!({"metadata": {"name": "e"}})),
            json!(["e", 0, "<unknown>"])
        );

        assert_eq!(
            heads(&info("", "Secret")),
            owned(&[
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Data", "string", 0),
                ("Age", "string", 0)
            ])
        );
        let tls = json!({"metadata": {"name": "web-tls", "creationTimestamp": ago(86400 * 3)},
                         "type": "kubernetes.io/tls", "data": {"tls.crt": "LS0t", "tls.key": "LS0t"}});
        assert_eq!(
            row("", "Secret", tls),
            json!(["web-tls", "kubernetes.io/tls", 2, "3d"])
        );
        let opaque = json!({"metadata": {"name": "s"}, "stringData": {"password": "x"}, "data": {"user": "eA=="}});
        assert_eq!(
            row("", "Secret", opaque),
            json!(["s", "Opaque", 2, "<unknown>"])
        );

        let sa = json!({"metadata": {"name": "default", "creationTimestamp": ago(86400)},
                        "secrets": [{"name": "default-token-abcde"}]});
        assert_eq!(row("", "ServiceAccount", sa), json!(["default", 1, "24h"]));
        assert_eq!(
            row("", "ServiceAccount", json!({"metadata": {"name": "x"}}))[1],
            0
        );

        let lease = json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system",
                                        "creationTimestamp": ago(86400 * 2)},
                           "spec": {"holderIdentity": "cp-1_4f1c2e", "leaseDurationSeconds": 15,
                                    "renewTime": ago(1)}});
        assert_eq!(
            heads(&info("coordination.k8s.io", "Lease")),
            owned(&[
                ("Name", "string", 0),
                ("Holder", "string", 0),
                ("Age", "string", 0)
            ])
        );
        assert_eq!(
            row("coordination.k8s.io", "Lease", lease),
            json!(["kube-scheduler", "cp-1_4f1c2e", "2d"])
        );
        assert_eq!(
            row(
                "coordination.k8s.io",
                "Lease",
                json!({"metadata": {"name": "l"}})
            )[1],
            ""
        );
    }

    #[test]
    fn events() {
        assert_eq!(
            heads(&info("", "Event"))
                .iter()
                .map(|h| (h.0.as_str(), h.2))
                .collect::<Vec<_>>(),
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
                ("Name", 1)
            ]
        );
        let backoff = json!({
            "metadata": {"name": "web-0.17f2a3b4c5d6e7f8", "namespace": "default", "creationTimestamp": ago(300)},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-0",
                               "fieldPath": "spec.containers{nginx}"},
            "reason": "BackOff", "message": "Back-off restarting failed container nginx in pod web-0\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": ago(300), "lastTimestamp": ago(20), "count": 7, "type": "Warning"
        });
        assert_eq!(
            row("", "Event", backoff),
            json!([
                "20s",
                "Warning",
                "BackOff",
                "pod/web-0",
                "spec.containers{nginx}",
                "kubelet, node-1",
                "Back-off restarting failed container nginx in pod web-0",
                "5m",
                7,
                "web-0.17f2a3b4c5d6e7f8"
            ])
        );
        // Written through events.k8s.io: eventTime instead of first/last timestamps, no count.
        let scheduled = json!({
            "metadata": {"name": "web-0.1"},
            "involvedObject": {"kind": "Pod", "name": "web-0"},
            "reason": "Scheduled", "message": "Successfully assigned default/web-0 to node-1",
            "firstTimestamp": null, "lastTimestamp": null, "eventTime": "2025-06-01T11:59:30.123456Z",
            "reportingComponent": "default-scheduler", "reportingInstance": "default-scheduler-cp-1",
            "type": "Normal", "source": {}
        });
        assert_eq!(
            row("", "Event", scheduled),
            json!([
                "29s",
                "Normal",
                "Scheduled",
                "pod/web-0",
                "",
                "default-scheduler, default-scheduler-cp-1",
                "Successfully assigned default/web-0 to node-1",
                "29s",
                1,
                "web-0.1"
            ])
        );
        let series = json!({"metadata": {"name": "n.2"}, "involvedObject": {"kind": "Node"},
                            "eventTime": ago(3600), "series": {"count": 4, "lastObservedTime": ago(5)},
                            "source": {"component": "kubelet"}});
        let cells = row("", "Event", series);
        assert_eq!(
            (&cells[0], &cells[3], &cells[5], &cells[7], &cells[8]),
            (
                &json!("5s"),
                &json!("node"),
                &json!("kubelet"),
                &json!("60m"),
                &json!(4)
            )
        );
        let bare = row("", "Event", json!({"metadata": {"name": "b"}}));
        assert_eq!(
            (&bare[0], &bare[7], &bare[8]),
            (&json!("<unknown>"), &json!("<unknown>"), &json!(1))
        );
    }

    #[test]
    fn kinds_without_a_printer_show_created_at() {
        let crd = info("apiextensions.k8s.io", "CustomResourceDefinition");
        assert_eq!(
            heads(&crd),
            owned(&[("Name", "string", 0), ("Created At", "date", 0)])
        );
        let obj = json!({"metadata": {"name": "widgets.example.com", "creationTimestamp": "2025-05-31T12:00:00Z"}});
        assert_eq!(
            Value::Array(Plan::of(&crd).cells(&obj, now())),
            json!(["widgets.example.com", "2025-05-31T12:00:00Z"])
        );
        let obj =
            json!({"metadata": {"name": "w", "creationTimestamp": "2025-05-31T14:00:00.5+02:00"}});
        assert_eq!(Plan::of(&crd).cells(&obj, now())[1], "2025-05-31T12:00:00Z");
        assert_eq!(
            Plan::of(&crd).cells(&json!({"metadata": {"name": "w"}}), now())[1],
            "0001-01-01T00:00:00Z"
        );
    }

    // --- Custom resources ------------------------------------------------------------------

    #[test]
    fn custom_resources_use_their_printer_columns() {
        let group = "table-test.example.com";
        let ready_path = r#".status.conditions[?(@.type=="Ready")].status"#;
        set_custom_columns(&[json!({
            "metadata": {"name": format!("widgets.{group}")},
            "spec": {"group": group, "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                     "versions": [
                         {"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": [
                             {"name": "Ready", "type": "string", "jsonPath": ready_path},
                             {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                             {"name": "Size", "type": "number", "jsonPath": ".spec.size"},
                             {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
                             {"name": "Image", "type": "string", "jsonPath": ".spec.template['image']",
                              "priority": 1, "description": "The image."},
                             {"name": "Port", "type": "string", "jsonPath": ".spec.ports[*].port"},
                             {"name": "Last", "type": "string", "jsonPath": ".status.history[-1].phase"},
                             {"name": "Template", "type": "string", "jsonPath": ".spec.template"},
                             {"name": "Missing", "type": "string", "jsonPath": ".status.nothing"},
                             {"name": "Recursive", "type": "string", "jsonPath": "..phase"},
                             {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
                         {"name": "v0", "served": true, "storage": false}]}
        })]);
        let v1 = custom_info(group, "v1", "widgets");
        assert_eq!(
            heads(&v1),
            owned(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Replicas", "integer", 0),
                ("Size", "number", 0),
                ("Paused", "boolean", 0),
                ("Image", "string", 1),
                ("Port", "string", 0),
                ("Last", "string", 0),
                ("Template", "string", 0),
                ("Missing", "string", 0),
                ("Recursive", "string", 0),
                ("Age", "date", 0)
            ])
        );
        let cols = columns(&v1);
        assert_eq!(
            cols[1].description,
            format!("Custom resource definition column (in JSONPath format): {ready_path}")
        );
        assert_eq!(cols[5].description, "The image.");
        let obj = json!({
            "apiVersion": format!("{group}/v1"), "kind": "Widget",
            "metadata": {"name": "w1", "creationTimestamp": ago(600)},
            "spec": {"replicas": 3, "size": 1.5, "paused": false, "template": {"image": "nginx"},
                     "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [{"type": "Synced", "status": "True"}, {"type": "Ready", "status": "False"}],
                       "history": [{"phase": "A"}, {"phase": "B"}]}
        });
        assert_eq!(
            Value::Array(Plan::of(&v1).cells(&obj, now())),
            json!([
                "w1",
                "False",
                3,
                1.5,
                false,
                "nginx",
                "80",
                "B",
                "{\"image\":\"nginx\"}",
                null,
                null,
                "10m"
            ])
        );
        // Values of another type than the column's are left empty.
        let odd = json!({"metadata": {"name": "w2", "creationTimestamp": "soon"},
                         "spec": {"replicas": "three", "size": "big", "paused": "no"}});
        assert_eq!(
            Value::Array(Plan::of(&v1).cells(&odd, now())),
            json!([
                "w2",
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                "<invalid>"
            ])
        );

        // A version without columns, and a resource we were not told about: NAME and AGE.
        for info in [
            custom_info(group, "v0", "widgets"),
            custom_info("unknown.example.com", "v1", "gadgets"),
        ] {
            assert_eq!(
                heads(&info),
                owned(&[("Name", "string", 0), ("Age", "date", 0)])
            );
            assert_eq!(
                Value::Array(Plan::of(&info).cells(&obj, now())),
                json!(["w1", "10m"])
            );
        }
    }

    #[test]
    fn json_paths() {
        let doc = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"replicas": 3, "items": [{"n": 1, "ok": true}, {"n": 5}, {"n": 9, "ok": false}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let first = |path: &str| {
            parse_json_path(path)
                .and_then(|steps| eval_json_path(&doc, &steps).into_iter().next().cloned())
        };
        assert_eq!(first(".spec.replicas"), Some(json!(3)));
        assert_eq!(first("{.spec.replicas}"), Some(json!(3)));
        assert_eq!(first("$.spec.replicas"), Some(json!(3)));
        assert_eq!(first("spec.replicas"), Some(json!(3)));
        assert_eq!(
            first(".metadata.labels['app.kubernetes.io/name']"),
            Some(json!("web"))
        );
        assert_eq!(
            first(r#".metadata.labels["app.kubernetes.io/name"]"#),
            Some(json!("web"))
        );
        assert_eq!(first(".spec.items[1].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[-1].n"), Some(json!(9)));
        assert_eq!(first(".spec.items[7].n"), None);
        assert_eq!(first(".spec.items[-7].n"), None);
        assert_eq!(first(".spec.items[*].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.n > 4)].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[?(@.n >= 9)].n"), Some(json!(9)));
        assert_eq!(first(".spec.items[?(@.n<2)].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.n != 1)].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[?(@.ok)].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.ok == false)].n"), Some(json!(9)));
        assert_eq!(
            first(r#".status.conditions[?(@.type=='Ready')].status"#),
            Some(json!("True"))
        );
        assert_eq!(
            first(".status.*"),
            doc["status"]["conditions"].clone().into()
        );
        assert_eq!(first(".spec.replicas.deeper"), None);
        assert_eq!(first("..n"), None);
        assert_eq!(first(".spec.items[1:2]"), None);
        assert_eq!(first(".spec.items[?(@.n == bare)]"), None);
        assert_eq!(first(".spec.items[0"), None);
        assert_eq!(first(""), Some(doc.clone()));
    }

    // --- The Table -------------------------------------------------------------------------

    #[test]
    fn tables_carry_columns_rows_and_metadata() {
        let pods = [
            json!({"metadata": {"name": "a", "namespace": "default", "uid": "1", "creationTimestamp": ago(5)},
                   "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "b"}}),
        ];
        let t = table(&info("", "Pod"), &pods, 42, Some("next".into()), None);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "next"})
        );
        let cols = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(cols.len(), 9);
        assert_eq!(
            cols[0],
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0})
        );
        assert_eq!(cols[5]["name"], "IP");
        assert_eq!(cols[5]["priority"], 1);
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert_eq!(r["cells"].as_array().unwrap().len(), 9);
            assert!(r.get("conditions").is_none());
        }
        assert_eq!(rows[0]["cells"][0], "a");
        assert_eq!(rows[1]["cells"][1], "0/0");
        assert_eq!(
            rows[0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": pods[0]["metadata"]})
        );
        let whole = table(&info("", "Pod"), &pods, 0, None, Some("Object"));
        assert_eq!(whole["rows"][0]["object"], pods[0]);
        assert_eq!(whole["metadata"], json!({}));
        let none = table(&info("", "Pod"), &pods, 0, None, Some("None"));
        assert_eq!(none["rows"][0]["object"], Value::Null);
        assert_eq!(without_columns(whole)["columnDefinitions"], Value::Null);
    }

    /// Every printer survives objects with missing fields and fields of the wrong type, and
    /// always gives one cell per column.
    #[test]
    fn odd_objects_never_break_a_row() {
        let kinds = [
            ("", "Pod"),
            ("", "Node"),
            ("", "Namespace"),
            ("", "Service"),
            ("", "Endpoints"),
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "ServiceAccount"),
            ("", "Event"),
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("apps", "StatefulSet"),
            ("apps", "ControllerRevision"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("autoscaling", "HorizontalPodAutoscaler"),
            ("networking.k8s.io", "NetworkPolicy"),
            ("discovery.k8s.io", "EndpointSlice"),
            ("coordination.k8s.io", "Lease"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ];
        let odd = [
            Value::Null,
            json!(5),
            json!("pod"),
            json!([]),
            json!({}),
            json!({"metadata": "x", "spec": 5, "status": "y", "subsets": 1, "endpoints": {}, "ports": 2}),
            json!({
                "metadata": {"name": 5, "creationTimestamp": "not a time", "deletionTimestamp": 3,
                             "labels": [1], "ownerReferences": {"a": 1}},
                "spec": {"containers": "x", "initContainers": [5, null, {"name": 3, "restartPolicy": 1}],
                         "replicas": "3", "completions": "x", "parallelism": 5.9, "unschedulable": "yes",
                         "selector": {"matchLabels": [1], "matchExpressions": "x"},
                         "podSelector": 5, "ports": [1, {"port": "x", "nodePort": -1, "protocol": 6}],
                         "type": 5, "clusterIPs": [7], "externalIPs": "x", "readinessGates": [1, {}],
                         "metrics": [{"type": "Resource"}, {"type": "Pods", "pods": 1}, {"type": "Nope"},
                                     {"type": "Object", "object": {"target": {"averageValue": 3}}}],
                         "template": [], "jobTemplate": {"spec": 1}, "scaleTargetRef": "x"},
                "status": {"containerStatuses": [null, 1, {"state": {"waiting": 5, "terminated": {"exitCode": "x"}},
                                                           "lastState": {"terminated": {"finishedAt": 7}},
                                                           "restartCount": 1e300}],
                           "initContainerStatuses": [{}, {"state": {"terminated": {}}}],
                           "conditions": [1, {"type": 1}], "podIPs": [5], "addresses": "x",
                           "nodeInfo": 3, "loadBalancer": {"ingress": [1, {"ip": 2}]},
                           "currentMetrics": 5, "active": {}, "startTime": "yesterday",
                           "phase": 3},
                "subsets": [1, {"addresses": [{"ip": 1}], "ports": [{}]}],
                "endpoints": [{"addresses": "x"}, 5, {"addresses": [1]}],
                "ports": "x", "data": [1, 2], "secrets": "x", "involvedObject": 5, "series": 5,
                "count": "x", "revision": "x", "addressType": 4
            }),
            json!({"metadata": {"name": "big"}, "spec": {"replicas": 1e300},
                   "status": {"containerStatuses": [
                       {"restartCount": 9223372036854775807u64, "lastState": {"terminated": {"finishedAt": ago(1)}}},
                       {"restartCount": 18446744073709551615u64}],
                       "startTime": "9999-12-31T23:59:59Z", "completionTime": "0001-01-01T00:00:00Z"}}),
        ];
        for (group, kind) in kinds {
            let info = info(group, kind);
            let n = columns(&info).len();
            for obj in &odd {
                assert_eq!(cells(&info, obj).len(), n, "{kind} {obj}");
            }
            let t = table(&info, &odd, 1, None, Some("Object"));
            assert_eq!(t["rows"].as_array().unwrap().len(), odd.len());
        }
        let custom = custom_info("odd.example.com", "v1", "things");
        for obj in &odd {
            assert_eq!(cells(&custom, obj).len(), 2);
        }
        set_custom_columns(&[
            json!(5),
            json!({"spec": {"group": "odd.example.com", "names": {"plural": "things"},
                            "versions": [5, {"name": 1}, {"name": "v1", "additionalPrinterColumns": [
                                1, {"name": "NoPath"}, {"name": "P", "jsonPath": "[", "priority": 1e12}]}]}}),
        ]);
        assert_eq!(columns(&custom).len(), 3);
        for obj in &odd {
            assert_eq!(cells(&custom, obj).len(), 3);
        }
    }
}
