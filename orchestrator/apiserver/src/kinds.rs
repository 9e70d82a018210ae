//! What differs between kinds: defaults, validation and immutable fields. Everything else is
//! the generic machinery in `handlers`.

use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use crate::meta::{self, at, default_at};
use crate::status::Cause;

/// Fills in what the user left out, as the Kubernetes API server's defaulting does.
pub fn defaults(info: &ResourceInfo, obj: &mut Value) {
    if info.custom {
        return;
    }
    if (info.group.as_str(), info.kind.as_str()) == ("networking.k8s.io", "NetworkPolicy") {
        crate::netpol::defaults(obj);
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => {
            pod_spec_defaults(obj, &["spec"]);
            // The ServiceAccount admission plugin's default (pods only, not templates), and
            // the deprecated alias the v1 API mirrors it into.
            default_at(obj, &["spec", "serviceAccountName"], json!("default"));
            if let Some(sa) = at(obj, &["spec", "serviceAccountName"]).cloned() {
                default_at(obj, &["spec", "serviceAccount"], sa);
            }
        }
        ("", "Service") => service_defaults(obj),
        ("", "Namespace") => {
            default_at(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            if let Some(name) = meta::name(obj).map(String::from) {
                default_at(
                    obj,
                    &["metadata", "labels", "kubernetes.io/metadata.name"],
                    json!(name),
                );
            }
        }
        ("", "Secret") => {
            default_at(obj, &["type"], json!("Opaque"));
            merge_string_data(obj);
        }
        ("apps", "Deployment") => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_at(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
            if at(obj, &["spec", "strategy", "type"]) == Some(&json!("RollingUpdate")) {
                default_at(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxSurge"],
                    json!("25%"),
                );
                default_at(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                    json!("25%"),
                );
            }
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default_at(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            pod_spec_defaults(obj, &["spec", "template", "spec"]);
        }
        ("apps", "ReplicaSet") => {
            default_at(obj, &["spec", "replicas"], json!(1));
            pod_spec_defaults(obj, &["spec", "template", "spec"]);
        }
        ("apps", "DaemonSet") => {
            default_at(
                obj,
                &["spec", "updateStrategy", "type"],
                json!("RollingUpdate"),
            );
            if at(obj, &["spec", "updateStrategy", "type"]) == Some(&json!("RollingUpdate")) {
                default_at(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"],
                    json!(1),
                );
                default_at(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "maxSurge"],
                    json!(0),
                );
            }
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            pod_spec_defaults(obj, &["spec", "template", "spec"]);
        }
        ("apps", "StatefulSet") => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_at(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            default_at(
                obj,
                &["spec", "updateStrategy", "type"],
                json!("RollingUpdate"),
            );
            if at(obj, &["spec", "updateStrategy", "type"]) == Some(&json!("RollingUpdate")) {
                default_at(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "partition"],
                    json!(0),
                );
            }
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default_at(
                obj,
                &["spec", "persistentVolumeClaimRetentionPolicy"],
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            pod_spec_defaults(obj, &["spec", "template", "spec"]);
        }
        ("batch", "Job") => job_spec_defaults(obj, &["spec"]),
        ("batch", "CronJob") => {
            default_at(obj, &["spec", "concurrencyPolicy"], json!("Allow"));
            default_at(obj, &["spec", "suspend"], json!(false));
            default_at(obj, &["spec", "successfulJobsHistoryLimit"], json!(3));
            default_at(obj, &["spec", "failedJobsHistoryLimit"], json!(1));
            job_spec_defaults(obj, &["spec", "jobTemplate", "spec"]);
        }
        // Upstream's SetDefaults_NetworkPolicy goes by length: an absent, null or empty
        // policyTypes becomes [Ingress], plus Egress only when there is at least one egress
        // rule (`egress: []` isolates nothing on egress).
        ("networking.k8s.io", "NetworkPolicy")
            if at(obj, &["spec", "policyTypes"])
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty) =>
        {
            let mut types = vec![json!("Ingress")];
            if at(obj, &["spec", "egress"])
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty())
            {
                types.push(json!("Egress"));
            }
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if at(obj, &["spec", "metrics"])
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                default_at(
                    obj,
                    &["spec", "metrics"],
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
            default_at(obj, &["spec", "minReplicas"], json!(1));
            // Stored as v2: the v1 round-trip annotations are never kept (upstream's v2
            // conversion drops them).
            crate::hpa_v1::drop_round_trip_annotations(obj);
            // A behavior given in part is completed with upstream's defaults
            // (SetDefaults_HorizontalPodAutoscalerBehavior); none given stays none.
            if at(obj, &["spec", "behavior"]).is_some_and(Value::is_object) {
                default_at(
                    obj,
                    &["spec", "behavior", "scaleUp", "stabilizationWindowSeconds"],
                    json!(0),
                );
                default_at(
                    obj,
                    &["spec", "behavior", "scaleUp", "selectPolicy"],
                    json!("Max"),
                );
                default_at(
                    obj,
                    &["spec", "behavior", "scaleUp", "policies"],
                    json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                           {"type": "Percent", "value": 100, "periodSeconds": 15}]),
                );
                // No stabilization window by default: the controller's flag decides.
                default_at(
                    obj,
                    &["spec", "behavior", "scaleDown", "selectPolicy"],
                    json!("Max"),
                );
                default_at(
                    obj,
                    &["spec", "behavior", "scaleDown", "policies"],
                    json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
                );
            }
        }
        _ => {}
    }
}

/// Defaults set only when an object is created (the status it starts with).
pub fn create_defaults(info: &ResourceInfo, obj: &mut Value) {
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => {
            default_at(obj, &["status", "phase"], json!("Pending"));
            default_at(obj, &["spec", "priority"], json!(0));
        }
        ("", "Namespace") => default_at(obj, &["status", "phase"], json!("Active")),
        (crate::servicecidr::GROUP, crate::servicecidr::KIND) => {
            crate::servicecidr::create_defaults(obj)
        }
        ("batch", "Job") if at(obj, &["spec", "manualSelector"]) != Some(&json!(true)) => {
            // The job owns exactly its pods: select them by its uid.
            let uid = meta::uid(obj).unwrap_or_default().to_string();
            let name = meta::name(obj).unwrap_or_default().to_string();
            default_at(
                obj,
                &[
                    "spec",
                    "selector",
                    "matchLabels",
                    "batch.kubernetes.io/controller-uid",
                ],
                json!(uid),
            );
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("job-name", &name),
            ] {
                default_at(
                    obj,
                    &["spec", "template", "metadata", "labels", k],
                    json!(v),
                );
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            // Served at once: the registry picks it up as soon as it is stored.
            let names = at(obj, &["spec", "names"]).cloned().unwrap_or(json!({}));
            let now = meta::now();
            if let Some(m) = obj.as_object_mut() {
                m.insert(
                    "status".into(),
                    json!({
                        "acceptedNames": names,
                        "conditions": [
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                        ],
                        "storedVersions": stored_versions(obj_versions(m.get("spec"))),
                    }),
                );
            }
        }
        _ => {}
    }
}

/// Upstream's DefaultTolerationSeconds admission: a pod that does not tolerate the
/// not-ready or unreachable NoExecute taint gets a toleration for it with a limit (300 s by
/// default), so the node lifecycle controller evicts it that long after its node fails.
/// A Secret's write-only `stringData` goes into `data` (base64), winning over a key of the
/// same name there, and is never stored — as upstream's v1 conversion does.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in strings {
        if let Some(text) = v.as_str() {
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

pub fn default_tolerations(obj: &mut Value, (not_ready, unreachable): (i64, i64)) {
    let tolerations: Vec<Value> = at(obj, &["spec", "tolerations"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let covers = |key: &str| {
        tolerations.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (tkey == key || (exists && tkey.is_empty()))
        })
    };
    let mut add = Vec::new();
    for (key, secs) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        if !covers(key) {
            add.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}));
        }
    }
    if add.is_empty() {
        return;
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let mut all = tolerations;
        all.extend(add);
        spec.insert("tolerations".into(), Value::Array(all));
    }
}

fn obj_versions(spec: Option<&Value>) -> Vec<Value> {
    spec.and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn stored_versions(versions: Vec<Value>) -> Value {
    Value::Array(
        versions
            .into_iter()
            .filter(|v| v.get("storage") == Some(&json!(true)))
            .filter_map(|v| v.get("name").cloned())
            .collect(),
    )
}

fn pod_spec_defaults(obj: &mut Value, spec: &[&str]) {
    let path = |tail: &[&'static str]| -> Vec<&str> {
        spec.iter().copied().chain(tail.iter().copied()).collect()
    };
    default_at(obj, &path(&["restartPolicy"]), json!("Always"));
    default_at(obj, &path(&["dnsPolicy"]), json!("ClusterFirst"));
    default_at(obj, &path(&["schedulerName"]), json!("default-scheduler"));
    default_at(obj, &path(&["terminationGracePeriodSeconds"]), json!(30));
    default_at(obj, &path(&["securityContext"]), json!({}));
    default_at(obj, &path(&["enableServiceLinks"]), json!(true));
    let Some(spec_obj) = meta::at_mut(obj, spec) else {
        return;
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec_obj.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let latest = !image.contains(':')
                || image.ends_with(":latest")
                || image
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| !last.contains(':'));
            default_at(
                c,
                &["imagePullPolicy"],
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            default_at(
                c,
                &["terminationMessagePath"],
                json!("/dev/termination-log"),
            );
            default_at(c, &["terminationMessagePolicy"], json!("File"));
            default_at(c, &["resources"], json!({}));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default_at(p, &["protocol"], json!("TCP"));
                }
            }
        }
    }
}

fn job_spec_defaults(obj: &mut Value, spec: &[&str]) {
    let path = |tail: &[&'static str]| -> Vec<&str> {
        spec.iter().copied().chain(tail.iter().copied()).collect()
    };
    default_at(obj, &path(&["parallelism"]), json!(1));
    if at(obj, &path(&["completions"])).is_none_or(Value::is_null)
        && at(obj, &path(&["parallelism"])) == Some(&json!(1))
    {
        default_at(obj, &path(&["completions"]), json!(1));
    }
    default_at(obj, &path(&["backoffLimit"]), json!(6));
    default_at(obj, &path(&["completionMode"]), json!("NonIndexed"));
    default_at(obj, &path(&["suspend"]), json!(false));
    default_at(
        obj,
        &path(&["podReplacementPolicy"]),
        json!("TerminatingOrFailed"),
    );
    pod_spec_defaults(obj, &path(&["template", "spec"]));
}

fn service_defaults(obj: &mut Value) {
    default_at(obj, &["spec", "type"], json!("ClusterIP"));
    default_at(obj, &["spec", "sessionAffinity"], json!("None"));
    if at(obj, &["spec", "type"]) != Some(&json!("ExternalName")) {
        default_at(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
    }
    if let Some(ports) = meta::at_mut(obj, &["spec", "ports"]).and_then(Value::as_array_mut) {
        for p in ports {
            default_at(p, &["protocol"], json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default_at(p, &["targetPort"], port);
            }
        }
    }
}

/// The selector's labels must be among the template's: otherwise the controller would own pods
/// its selector never finds.
fn selector_matches_template(obj: &Value, template: &[&str], causes: &mut Vec<Cause>) {
    let selector = at(obj, &["spec", "selector"]);
    match selector {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                causes.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
                return;
            }
            let mut lpath: Vec<&str> = template.to_vec();
            lpath.extend(["metadata", "labels"]);
            let labels = meta::string_map(at(obj, &lpath));
            let ok = trellis_api::selector::LabelSelector::from_json(sel)
                .ok()
                .flatten()
                .is_some_and(|s| s.matches(&labels));
            if !ok {
                causes.push(Cause::invalid(
                    format!("{}.metadata.labels", template.join(".")),
                    json!(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

/// A container's ports as upstream's validateContainerPorts checks them: containerPort given
/// and a port number, hostPort (when set) a port number, the protocol one of TCP, UDP, SCTP.
/// `hostIP` is not checked here (upstream neither): whether it is an address of the node is
/// the kubelet's to say.
fn validate_container_ports(c: &Value, here: &str, causes: &mut Vec<Cause>) {
    const RANGE: &str = "must be between 1 and 65535, inclusive";
    for (j, p) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{here}.ports[{j}]");
        match p.get("containerPort").and_then(Value::as_i64) {
            None | Some(0) => causes.push(Cause::required(format!("{at}.containerPort"))),
            Some(n) if !(1..=65535).contains(&n) => {
                causes.push(Cause::invalid(format!("{at}.containerPort"), n, RANGE));
            }
            Some(_) => {}
        }
        if let Some(n) = p.get("hostPort").and_then(Value::as_i64)
            && n != 0
            && !(1..=65535).contains(&n)
        {
            causes.push(Cause::invalid(format!("{at}.hostPort"), n, RANGE));
        }
        match p.get("protocol").and_then(Value::as_str) {
            None | Some("TCP" | "UDP" | "SCTP") => {}
            Some(other) => causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{at}.protocol"),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            }),
        }
    }
}

fn validate_pod_spec(obj: &Value, spec: &[&str], causes: &mut Vec<Cause>) {
    let field = spec.join(".");
    let Some(s) = at(obj, spec) else {
        causes.push(Cause::required(field));
        return;
    };
    let containers = s.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{field}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{field}.containers"))),
        Some(_) => {}
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut host_ports = std::collections::BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in s
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let here = format!("{field}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{here}.name"))),
                Some(n) => {
                    if let Err(why) =
                        trellis_api::names::validate_dns1123_label(n).map_err(|e| e.to_string())
                    {
                        causes.push(Cause::invalid(format!("{here}.name"), n, why));
                    }
                    if !seen.insert(n.to_string()) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{here}.name"),
                            message: format!("Duplicate value: {n:?}"),
                        });
                    }
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|i| i.trim().is_empty())
            {
                causes.push(Cause::required(format!("{here}.image")));
            }
            validate_container_ports(c, &here, causes);
            // hostPorts are unique per protocol and host IP among the app containers (not the
            // init containers: they never run beside them), as upstream's checkHostPortConflicts.
            if list == "containers" {
                for (j, p) in c
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let host_port = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                    if host_port == 0 {
                        continue;
                    }
                    let key = format!(
                        "{}/{}/{host_port}",
                        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                        p.get("hostIP").and_then(Value::as_str).unwrap_or("")
                    );
                    if !host_ports.insert(key.clone()) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{here}.ports[{j}].hostPort"),
                            message: format!("Duplicate value: {key:?}"),
                        });
                    }
                }
            }
        }
    }
    if let Some(p) = s.get("restartPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: format!("{field}.restartPolicy"),
            message: format!(
                "Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
}

/// Validates an object about to be stored (`old` on update).
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = validate_object(info, obj, old);
    // Container ports are checked since this API server's version: an object stored before
    // with a port it now refuses must still take its status writes, finalizer removals and
    // scaling, so on update a port cause the stored object already had is not raised again
    // (upstream ratchets validation the same way when it tightens it).
    if let Some(old) = old
        && causes.iter().any(is_port_cause)
    {
        let before = validate_object(info, old, None);
        causes.retain(|c| {
            !(is_port_cause(c)
                && before
                    .iter()
                    .any(|b| b.field == c.field && b.message == c.message))
        });
    }
    causes
}

/// A cause about a container's port (see [`validate_container_ports`] and the hostPort
/// conflicts of [`validate_pod_spec`]).
fn is_port_cause(c: &Cause) -> bool {
    c.field.contains("ontainers[") && c.field.contains(".ports[")
}

fn validate_object(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if info.custom {
        return causes;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => {
            validate_pod_spec(obj, &["spec"], &mut causes);
            if let Some(old) = old {
                // Only images (and a few scheduling fields) may change in a running pod.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    for list in ["containers", "initContainers"] {
                        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                            for c in cs {
                                if let Some(m) = c.as_object_mut() {
                                    m.remove("image");
                                }
                            }
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        for k in [
                            "activeDeadlineSeconds",
                            "tolerations",
                            "terminationGracePeriodSeconds",
                            "schedulingGates",
                        ] {
                            m.remove(k);
                        }
                        if v.get("spec").and_then(|s| s.get("nodeName")).is_none() {
                            m.remove("nodeName");
                        }
                    }
                    s
                };
                let mut old_s = strip(old);
                let new_s = strip(obj);
                // nodeName may be set once (binding), never changed.
                if let (Some(m), None) = (old_s.as_object_mut(), at(old, &["spec", "nodeName"]))
                    && let Some(n) = new_s.get("nodeName")
                {
                    m.insert("nodeName".into(), n.clone());
                }
                if old_s != new_s {
                    causes.push(Cause::forbidden(
                        "spec",
                        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                    ));
                }
            }
        }
        ("", "Service") => {
            let ty = at(obj, &["spec", "type"])
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            if !matches!(
                ty,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.type".into(),
                    message: format!("Unsupported value: {ty:?}"),
                });
            }
            let ports = at(obj, &["spec", "ports"])
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let headless = at(obj, &["spec", "clusterIP"]) == Some(&json!("None"));
            if ports.is_empty() && ty != "ExternalName" && !headless {
                causes.push(Cause::required("spec.ports"));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, p) in ports.iter().enumerate() {
                match p.get("port").and_then(Value::as_i64) {
                    Some(n) if (1..=65535).contains(&n) => {}
                    Some(n) => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    )),
                    None => causes.push(Cause::required(format!("spec.ports[{i}].port"))),
                }
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                if ports.len() > 1 && name.is_empty() {
                    causes.push(Cause::required(format!("spec.ports[{i}].name")));
                }
                if !name.is_empty() && !names.insert(name.to_string()) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("spec.ports[{i}].name"),
                        message: format!("Duplicate value: {name:?}"),
                    });
                }
            }
            if let Some(old) = old {
                let was = at(old, &["spec", "clusterIP"]);
                let now = at(obj, &["spec", "clusterIP"]);
                if was.is_some() && was != now && ty != "ExternalName" {
                    causes.push(Cause::immutable("spec.clusterIP"));
                }
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            selector_matches_template(obj, &["spec", "template"], &mut causes);
            validate_pod_spec(obj, &["spec", "template", "spec"], &mut causes);
            if let Some(r) = at(obj, &["spec", "replicas"]).and_then(Value::as_i64)
                && r < 0
            {
                causes.push(Cause::invalid(
                    "spec.replicas",
                    r,
                    "must be greater than or equal to 0",
                ));
            }
            if let Some(old) = old {
                if at(old, &["spec", "selector"]) != at(obj, &["spec", "selector"]) {
                    causes.push(Cause::immutable("spec.selector"));
                }
                if info.kind == "StatefulSet" {
                    for f in ["serviceName", "podManagementPolicy", "volumeClaimTemplates"] {
                        if at(old, &["spec", f]) != at(obj, &["spec", f]) {
                            causes.push(Cause::forbidden(format!("spec.{f}"), "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
                        }
                    }
                }
            }
        }
        ("batch", "Job") => {
            validate_pod_spec(obj, &["spec", "template", "spec"], &mut causes);
            let rp =
                at(obj, &["spec", "template", "spec", "restartPolicy"]).and_then(Value::as_str);
            if !matches!(rp, Some("OnFailure" | "Never")) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.template.spec.restartPolicy".into(),
                    message: format!(
                        "Unsupported value: {:?}: supported values: \"OnFailure\", \"Never\"",
                        rp.unwrap_or("")
                    ),
                });
            }
            if let Some(old) = old {
                if at(old, &["spec", "selector"]) != at(obj, &["spec", "selector"]) {
                    causes.push(Cause::immutable("spec.selector"));
                }
                let suspended = at(old, &["spec", "suspend"]) == Some(&json!(true));
                if !suspended && at(old, &["spec", "template"]) != at(obj, &["spec", "template"]) {
                    causes.push(Cause::immutable("spec.template"));
                }
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            for dir in ["scaleUp", "scaleDown"] {
                if let Some(rules) = at(obj, &["spec", "behavior", dir]).filter(|r| r.is_object()) {
                    validate_scaling_rules(rules, &format!("spec.behavior.{dir}"), &mut causes);
                }
            }
        }
        ("batch", "CronJob") => {
            match at(obj, &["spec", "schedule"]).and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required("spec.schedule")),
                Some(s) if !valid_cron(s) => causes.push(Cause::invalid(
                    "spec.schedule",
                    s,
                    "unparseable cron expression",
                )),
                Some(_) => {}
            }
            validate_pod_spec(
                obj,
                &["spec", "jobTemplate", "spec", "template", "spec"],
                &mut causes,
            );
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(obj, old, &mut causes),
        ("rbac.authorization.k8s.io", kind) => validate_rbac(kind, obj, old, &mut causes),
        ("networking.k8s.io", "NetworkPolicy") => causes.extend(crate::netpol::validate(obj)),
        ("networking.k8s.io", "ServiceCIDR") => {
            causes.extend(crate::servicecidr::validate(obj, old))
        }
        ("networking.k8s.io", "IPAddress") => causes.extend(crate::ipaddress::validate(obj, old)),
        ("", "Node") => {
            if let Some(old) = old {
                let was = at(old, &["spec", "podCIDR"]);
                if was.is_some_and(|v| !v.is_null()) && was != at(obj, &["spec", "podCIDR"]) {
                    causes.push(Cause::forbidden(
                        "spec.podCIDR",
                        "node updates may not change podCIDR except from \"\" to valid",
                    ));
                }
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if let Some(old) = old
                && old.get("immutable") == Some(&json!(true))
            {
                for f in ["data", "binaryData", "stringData"] {
                    if old.get(f) != obj.get(f) {
                        causes.push(Cause::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

fn valid_cron(s: &str) -> bool {
    let s = s.trim();
    if s.starts_with('@') {
        return matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        );
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let fields = match fields.first() {
        Some(f) if f.starts_with("TZ=") || f.starts_with("CRON_TZ=") => &fields[1..],
        _ => &fields[..],
    };
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/' | '?'))
        })
}

fn validate_crd(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let group = at(obj, &["spec", "group"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = at(obj, &["spec", "names", "plural"])
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if at(obj, &["spec", "names", "kind"])
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.names.kind"));
    }
    let name = meta::name(obj).unwrap_or("");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})"),
        ));
    }
    match at(obj, &["spec", "scope"]).and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        other => causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.scope".into(),
            message: format!(
                "Unsupported value: {:?}: supported values: \"Cluster\", \"Namespaced\"",
                other.unwrap_or("")
            ),
        }),
    }
    let versions = obj_versions(obj.get("spec"));
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    } else if versions
        .iter()
        .filter(|v| v.get("storage") == Some(&json!(true)))
        .count()
        != 1
    {
        causes.push(Cause::invalid(
            "spec.versions",
            "",
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if let Some(schema) = v.get("schema").and_then(|s| s.get("openAPIV3Schema")) {
            causes.extend(crate::schema::schema_errors(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            ));
        }
    }
    if let Some(old) = old {
        if at(old, &["spec", "group"]) != at(obj, &["spec", "group"]) {
            causes.push(Cause::immutable("spec.group"));
        }
        if at(old, &["spec", "names", "plural"]) != at(obj, &["spec", "names", "plural"]) {
            causes.push(Cause::immutable("spec.names.plural"));
        }
    }
}

/// Roles and bindings as upstream's `pkg/apis/rbac/validation`.
fn validate_rbac(kind: &str, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let len = |v: &Value| v.as_array().map_or(0, Vec::len);
    let required = |field: String, why: &str| Cause {
        reason: "FieldValueRequired",
        field,
        message: format!("Required value: {why}"),
    };
    match kind {
        "Role" | "ClusterRole" => {
            for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
                let at = |f: &str| format!("rules[{i}].{f}");
                if len(&rule["verbs"]) == 0 {
                    causes.push(required(
                        at("verbs"),
                        "verbs must contain at least one value",
                    ));
                }
                if len(&rule["nonResourceURLs"]) > 0 {
                    if kind == "Role" {
                        causes.push(Cause::invalid(
                            at("nonResourceURLs"),
                            &rule["nonResourceURLs"],
                            "namespaced rules cannot apply to non-resource URLs",
                        ));
                    }
                    if len(&rule["apiGroups"])
                        + len(&rule["resources"])
                        + len(&rule["resourceNames"])
                        > 0
                    {
                        causes.push(Cause::invalid(
                            at("nonResourceURLs"),
                            &rule["nonResourceURLs"],
                            "rules cannot apply to both regular resources and non-resource URLs",
                        ));
                    }
                    continue;
                }
                if len(&rule["apiGroups"]) == 0 {
                    causes.push(required(
                        at("apiGroups"),
                        "resource rules must supply at least one api group",
                    ));
                }
                if len(&rule["resources"]) == 0 {
                    causes.push(required(
                        at("resources"),
                        "resource rules must supply at least one resource",
                    ));
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_ref = &obj["roleRef"];
            if role_ref["apiGroup"].as_str() != Some("rbac.authorization.k8s.io") {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "roleRef.apiGroup".into(),
                    message: format!(
                        "Unsupported value: {:?}: supported values: \"rbac.authorization.k8s.io\"",
                        role_ref["apiGroup"].as_str().unwrap_or("")
                    ),
                });
            }
            let kinds: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            let ref_kind = role_ref["kind"].as_str().unwrap_or("");
            if !kinds.contains(&ref_kind) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "roleRef.kind".into(),
                    message: format!(
                        "Unsupported value: {ref_kind:?}: supported values: {kinds:?}"
                    ),
                });
            }
            if role_ref["name"].as_str().unwrap_or("").is_empty() {
                causes.push(Cause::required("roleRef.name"));
            }
            if let Some(old) = old
                && old["roleRef"] != obj["roleRef"]
            {
                causes.push(Cause::invalid("roleRef", role_ref, "cannot change roleRef"));
            }
            for (i, subject) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                let at = |f: &str| format!("subjects[{i}].{f}");
                if subject["name"].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause::required(at("name")));
                }
                match subject["kind"].as_str().unwrap_or("") {
                    "User" | "Group" => {}
                    "ServiceAccount" => {
                        if kind == "ClusterRoleBinding"
                            && subject["namespace"].as_str().unwrap_or("").is_empty()
                        {
                            causes.push(Cause::required(at("namespace")));
                        }
                    }
                    other => causes.push(Cause {
                        reason: "FieldValueNotSupported",
                        field: at("kind"),
                        message: format!(
                            "Unsupported value: {other:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""
                        ),
                    }),
                }
            }
        }
        _ => {}
    }
}

/// Checks the object against its Kubernetes type (k8s-openapi): wrong types are a 400, and the
/// fields the type does not know are returned (an error under `fieldValidation=Strict`).
pub fn typecheck(info: &ResourceInfo, obj: &mut Value, prune: bool) -> Result<Vec<String>, String> {
    macro_rules! check {
        ($t:ty) => {{
            let typed: $t = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
            let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
            Ok(unknown_fields(obj, &back, "", prune))
        }};
    }
    use k8s_openapi::api::{
        apps, autoscaling, batch, coordination, core, discovery, networking, rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Namespace") => check!(core::v1::Namespace),
        ("", "Node") => check!(core::v1::Node),
        ("", "Pod") => check!(core::v1::Pod),
        ("", "Service") => check!(core::v1::Service),
        ("", "Endpoints") => check!(core::v1::Endpoints),
        ("", "ConfigMap") => check!(core::v1::ConfigMap),
        ("", "Secret") => check!(core::v1::Secret),
        ("", "ServiceAccount") => check!(core::v1::ServiceAccount),
        ("", "Event") => check!(core::v1::Event),
        ("apps", "Deployment") => check!(apps::v1::Deployment),
        ("apps", "ReplicaSet") => check!(apps::v1::ReplicaSet),
        ("apps", "DaemonSet") => check!(apps::v1::DaemonSet),
        ("apps", "StatefulSet") => check!(apps::v1::StatefulSet),
        ("apps", "ControllerRevision") => check!(apps::v1::ControllerRevision),
        ("batch", "Job") => check!(batch::v1::Job),
        ("batch", "CronJob") => check!(batch::v1::CronJob),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            check!(autoscaling::v2::HorizontalPodAutoscaler)
        }
        ("networking.k8s.io", "NetworkPolicy") => check!(networking::v1::NetworkPolicy),
        ("networking.k8s.io", "ServiceCIDR") => check!(networking::v1::ServiceCIDR),
        ("networking.k8s.io", "IPAddress") => check!(networking::v1::IPAddress),
        ("discovery.k8s.io", "EndpointSlice") => check!(discovery::v1::EndpointSlice),
        ("coordination.k8s.io", "Lease") => check!(coordination::v1::Lease),
        ("rbac.authorization.k8s.io", "Role") => check!(rbac::v1::Role),
        ("rbac.authorization.k8s.io", "ClusterRole") => check!(rbac::v1::ClusterRole),
        ("rbac.authorization.k8s.io", "RoleBinding") => check!(rbac::v1::RoleBinding),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            check!(rbac::v1::ClusterRoleBinding)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            check!(apiext::CustomResourceDefinition)
        }
        _ => Ok(Vec::new()),
    }
}

/// Upstream's `validateScalingRules`: a window of 0–3600 s, a known selectPolicy, and at least
/// one policy, each of a known type with a positive value and a period of 1–1800 s.
fn validate_scaling_rules(rules: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(w) = rules["stabilizationWindowSeconds"].as_i64() {
        if w < 0 {
            causes.push(Cause::invalid(
                format!("{path}.stabilizationWindowSeconds"),
                w,
                "must be greater than or equal to zero",
            ));
        } else if w > 3600 {
            causes.push(Cause::invalid(
                format!("{path}.stabilizationWindowSeconds"),
                w,
                "must be less than or equal to 3600",
            ));
        }
    }
    if let Some(sel) = rules["selectPolicy"].as_str()
        && !["Max", "Min", "Disabled"].contains(&sel)
    {
        causes.push(Cause::invalid(
            format!("{path}.selectPolicy"),
            sel,
            "supported values: \"Disabled\", \"Max\", \"Min\"",
        ));
    }
    let policies = rules["policies"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if policies.is_empty() {
        causes.push(Cause {
            message: "Required value: must specify at least one Policy".into(),
            ..Cause::required(format!("{path}.policies"))
        });
    }
    for (i, p) in policies.iter().enumerate() {
        let here = format!("{path}.policies[{i}]");
        if let Some(t) = p["type"]
            .as_str()
            .filter(|t| !["Pods", "Percent"].contains(t))
        {
            causes.push(Cause::invalid(
                format!("{here}.type"),
                t,
                "supported values: \"Percent\", \"Pods\"",
            ));
        }
        let value = p["value"].as_i64().unwrap_or(0);
        if value <= 0 {
            causes.push(Cause::invalid(
                format!("{here}.value"),
                value,
                "must be greater than zero",
            ));
        }
        let period = p["periodSeconds"].as_i64().unwrap_or(0);
        if period <= 0 {
            causes.push(Cause::invalid(
                format!("{here}.periodSeconds"),
                period,
                "must be greater than zero",
            ));
        } else if period > 1800 {
            causes.push(Cause::invalid(
                format!("{here}.periodSeconds"),
                period,
                "must be less than or equal to 1800",
            ));
        }
    }
}

/// [`typecheck`] of an autoscaling/v1 HorizontalPodAutoscaler (served over the v2 objects,
/// see [`crate::hpa_v1`]).
pub fn typecheck_hpa_v1(obj: &mut Value, prune: bool) -> Result<Vec<String>, String> {
    use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
    let typed: HorizontalPodAutoscaler =
        serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    Ok(unknown_fields(obj, &back, "", prune))
}

/// Paths present (and not null) in `input` but absent from `typed` (its typed round trip).
fn unknown_fields(input: &mut Value, typed: &Value, path: &str, prune: bool) -> Vec<String> {
    let mut out = Vec::new();
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            let mut gone = Vec::new();
            for (k, v) in a.iter_mut() {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => {
                        out.push(here);
                        gone.push(k.clone());
                    }
                    Some(tv) => out.extend(unknown_fields(v, tv, &here, prune)),
                    None => {}
                }
            }
            if prune {
                for k in gone {
                    a.remove(&k);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter_mut().zip(b).enumerate() {
                out.extend(unknown_fields(x, y, &format!("{path}[{i}]"), prune));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::resources::builtin_kind;

    #[test]
    fn a_secrets_string_data_is_stored_as_data() {
        let mut s = json!({"metadata": {"name": "s"}, "data": {"a": "b2xk", "keep": "eA=="},
                           "stringData": {"a": "new", "token": "t"}});
        merge_string_data(&mut s);
        assert_eq!(
            s,
            json!({"metadata": {"name": "s"}, "data": {"a": "bmV3", "keep": "eA==", "token": "dA=="}})
        );
        let mut plain = json!({"data": {"a": "eA=="}});
        merge_string_data(&mut plain);
        assert_eq!(plain, json!({"data": {"a": "eA=="}}));
    }

    /// Issue 14: bad container ports are refused as upstream's validation refuses them (range,
    /// protocol, a hostPort twice for one protocol and host IP); the same hostPort for two
    /// protocols or two host IPs is fine.
    #[test]
    fn bad_container_ports_are_refused_as_upstream() {
        let info = builtin_kind("", "Pod").unwrap();
        let pod = |ports: Value| {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "busybox", "ports": ports}]}});
            defaults(&info, &mut p);
            p
        };
        let causes = |ports: Value| {
            validate(&info, &pod(ports), None)
                .into_iter()
                .map(|c| (c.field, c.message))
                .collect::<Vec<_>>()
        };
        let f = "spec.containers[0].ports";
        assert_eq!(
            causes(json!([{"containerPort": 80, "hostPort": 70000}])),
            [(
                format!("{f}[0].hostPort"),
                "Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()
            )]
        );
        assert_eq!(
            causes(json!([{"containerPort": 0}, {"containerPort": -1}])),
            [
                (
                    format!("{f}[0].containerPort"),
                    "Required value".to_string()
                ),
                (
                    format!("{f}[1].containerPort"),
                    "Invalid value: -1: must be between 1 and 65535, inclusive".to_string()
                )
            ]
        );
        assert_eq!(
            causes(json!([{"containerPort": 80, "protocol": "ICMP"}])),
            [(
                format!("{f}[0].protocol"),
                r#"Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#.to_string()
            )]
        );
        assert_eq!(
            causes(json!([{"containerPort": 80, "hostPort": 8080},
                          {"containerPort": 81, "hostPort": 8080, "protocol": "TCP"}])),
            [(
                format!("{f}[1].hostPort"),
                r#"Duplicate value: "TCP//8080""#.to_string()
            )]
        );
        // Another protocol or another host IP is another hostPort.
        assert!(
            causes(json!([{"containerPort": 80, "hostPort": 8080},
                          {"containerPort": 80, "hostPort": 8080, "protocol": "UDP"},
                          {"containerPort": 81, "hostPort": 8080, "hostIP": "10.0.0.1"}]))
            .is_empty()
        );
        // Across containers too, but not with an init container.
        let mut two = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "image": "busybox",
                "ports": [{"containerPort": 1, "hostPort": 9000}]}],
            "containers": [
                {"name": "a", "image": "busybox", "ports": [{"containerPort": 1, "hostPort": 9000}]},
                {"name": "b", "image": "busybox", "ports": [{"containerPort": 2, "hostPort": 9000}]}]}});
        defaults(&info, &mut two);
        let got: Vec<String> = validate(&info, &two, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(got, ["spec.containers[1].ports[0].hostPort"]);
    }

    /// A pod stored before the port checks, with a port they refuse, still takes updates that
    /// keep that port (its status writes, a finalizer's removal); an update that brings a new
    /// bad port is refused.
    #[test]
    fn a_stored_bad_port_does_not_block_updates_but_a_new_one_is_refused() {
        let info = builtin_kind("", "Pod").unwrap();
        let mut old = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80, "protocol": "tcp"}]}]}});
        defaults(&info, &mut old);
        assert_eq!(
            validate(&info, &old, None).len(),
            1,
            "the create is refused"
        );
        let mut status = old.clone();
        status["status"] = json!({"phase": "Running"});
        assert!(validate(&info, &status, Some(&old)).is_empty());
        let mut worse = old.clone();
        worse["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"containerPort": 0}));
        let got: Vec<String> = validate(&info, &worse, Some(&old))
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert!(
            got.contains(&"spec.containers[0].ports[1].containerPort".to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn deployments_get_the_kubernetes_defaults() {
        let info = builtin_kind("apps", "Deployment").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}}}});
        defaults(&info, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn network_policy_types_default_by_length_as_upstream() {
        let info = builtin_kind("networking.k8s.io", "NetworkPolicy").unwrap();
        let cases = [
            (json!({"spec": {"podSelector": {}}}), json!(["Ingress"])),
            (
                json!({"spec": {"podSelector": {}, "policyTypes": []}}),
                json!(["Ingress"]),
            ),
            (
                json!({"spec": {"podSelector": {}, "egress": []}}),
                json!(["Ingress"]),
            ),
            (
                json!({"spec": {"podSelector": {}, "policyTypes": [], "egress": [{}]}}),
                json!(["Ingress", "Egress"]),
            ),
            (
                json!({"spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}}),
                json!(["Egress"]),
            ),
        ];
        for (mut np, want) in cases {
            let given = np.clone();
            defaults(&info, &mut np);
            assert_eq!(np["spec"]["policyTypes"], want, "{given}");
        }
    }

    #[test]
    fn latest_images_are_always_pulled() {
        let info = builtin_kind("", "Pod").unwrap();
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "reg:5000/x:latest"}, {"name": "c", "image": "reg:5000/x:1"}]}});
        defaults(&info, &mut p);
        let pulls: Vec<&str> = p["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(pulls, ["Always", "Always", "IfNotPresent"]);
    }

    #[test]
    fn a_selector_must_match_the_template() {
        let info = builtin_kind("apps", "Deployment").unwrap();
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate(&info, &d, None);
        assert!(
            causes.iter().any(|c| c.message.contains("does not match")),
            "{causes:?}"
        );
        let mut changed = d.clone();
        changed["spec"]["selector"]["matchLabels"]["app"] = json!("db");
        let causes = validate(&info, &changed, Some(&d));
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.selector" && c.message == "field is immutable"),
            "{causes:?}"
        );
    }

    #[test]
    fn pods_need_containers_with_images() {
        let info = builtin_kind("", "Pod").unwrap();
        let causes = validate(
            &info,
            &json!({"spec": {"containers": [{"name": "Bad_Name"}]}}),
            None,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.containers[0].name")
                && fields.contains(&"spec.containers[0].image"),
            "{causes:?}"
        );
    }

    #[test]
    fn unknown_fields_are_found_by_the_typed_round_trip() {
        let info = builtin_kind("", "ConfigMap").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1}, "data": {"a": "b"}, "extra": true});
        let mut kept = cm.clone();
        let unknown = typecheck(&info, &mut kept, false).unwrap();
        assert_eq!(unknown, ["metadata.bogus", "extra"]);
        assert_eq!(kept, cm, "reported, not removed");
        let mut pruned = cm.clone();
        typecheck(&info, &mut pruned, true).unwrap();
        assert!(
            pruned.get("extra").is_none() && pruned["metadata"].get("bogus").is_none(),
            "dropped, as Kubernetes drops them"
        );
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
        assert!(
            typecheck(&info, &mut wrong_kind.clone(), true).is_err(),
            "an object of another kind is refused"
        );
        let wrong_type = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 1}});
        assert!(typecheck(&info, &mut wrong_type.clone(), true).is_err());
    }

    #[test]
    fn pods_get_the_default_not_ready_and_unreachable_tolerations_unless_they_have_their_own() {
        let mut pod = json!({"spec": {"containers": []}});
        default_tolerations(&mut pod, (300, 120));
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[0]["tolerationSeconds"], 300);
        assert_eq!(t[1]["key"], "node.kubernetes.io/unreachable");
        assert_eq!(t[1]["tolerationSeconds"], 120);
        // A pod that tolerates everything (a DaemonSet's, say) gets nothing added.
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_tolerations(&mut all, (300, 300));
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
        // Its own unreachable toleration stays as it is; only not-ready is added.
        let mut own = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        default_tolerations(&mut own, (300, 300));
        let t = own["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
    }

    #[test]
    fn cron_schedules() {
        assert!(valid_cron("*/5 * * * *"));
        assert!(valid_cron("@hourly"));
        assert!(valid_cron("TZ=Europe/Paris 0 3 * * 1-5"));
        assert!(!valid_cron("every minute"));
        assert!(!valid_cron("* * *"));
    }
}
