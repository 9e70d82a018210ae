//! Pods: READY, STATUS (the reason kubectl shows), RESTARTS and the wide columns, as upstream
//! `printPod` computes them.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::fields::{
    age_at, condition_status, get, int, is_true, items, name_cell, non_empty, since, text, time,
};
use crate::meta;

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

pub(super) fn pod_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
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

#[cfg(test)]
mod tests {
    use super::super::table;
    use super::super::testing::*;

    #[test]
    fn pod_columns_match_the_upstream_printer() {
        assert_eq!(
            heads(&builtin("", "Pod")),
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
        assert_eq!(builtin("", "Pod").columns()[0].format, "name");
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
        let t = table(&builtin("", "Pod"), &[completed], 7, None, None);
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
}
