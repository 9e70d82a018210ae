//! Controller revisions, jobs, cron jobs and autoscalers: their owners, completions and
//! metric targets.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::fields::{
    age_at, condition_status, containers, format_label_selector, get, human_duration, int, is_true,
    items, len, name_cell, since, text, time,
};
use crate::meta;

/// `kind.group/name` of the controlling owner, lower-case kind and group; `<none>`.
pub(super) fn controller_of(obj: &Value) -> String {
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

pub(super) fn job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
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

pub(super) fn cronjob_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
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
pub(super) fn hpa_targets(obj: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::fields::format_label_selector;
    use super::super::testing::*;

    #[test]
    fn deployment_mid_rollout() {
        assert_eq!(
            heads(&builtin("apps", "Deployment")),
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
            heads(&builtin("apps", "ReplicaSet"))[1..4].to_vec(),
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
            heads(&builtin("apps", "DaemonSet"))
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
            heads(&builtin("apps", "StatefulSet")),
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
            heads(&builtin("batch", "Job"))
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
            heads(&builtin("batch", "CronJob"))[1..7].to_vec(),
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
}
