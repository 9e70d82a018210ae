//! Nodes: STATUS (readiness, cordon), ROLES from the role labels, addresses and node info.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::fields::{age_at, is_true, items, name_cell, non_empty, text};
use crate::meta;

pub(super) fn node_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn node_columns_and_a_cordoned_not_ready_control_plane() {
        assert_eq!(
            heads(&builtin("", "Node")),
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
}
