//! The rows of the built-in kinds: each kind's printer, the short ones written here.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Kind;
use super::events::event_cells;
use super::fields::{
    age_at, containers, created_at, format_label_selector, format_labels, get, int, label_selector,
    len, name_cell, non_empty, text,
};
use super::nodes::node_cells;
use super::pods::pod_cells;
use super::services::{discovery_endpoints, discovery_ports, format_endpoints, service_cells};
use super::workloads::{controller_of, cronjob_cells, hpa_targets, job_cells};
use crate::meta;

/// The cells of one object's row for a built-in kind's printer, at `now`.
pub(super) fn builtin(kind: Kind, obj: &Value, now: Timestamp) -> Vec<Value> {
    match kind {
        Kind::Pod => pod_cells(obj, now),
        Kind::Node => node_cells(obj, now),
        Kind::Namespace => {
            let phase = if meta::is_deleting(obj) {
                "Terminating"
            } else {
                non_empty(obj, &["status", "phase"]).unwrap_or("Active")
            };
            vec![name_cell(obj), json!(phase), json!(age_at(obj, now))]
        }
        Kind::Service => service_cells(obj, now),
        Kind::Endpoints => vec![
            name_cell(obj),
            json!(format_endpoints(obj)),
            json!(age_at(obj, now)),
        ],
        Kind::ConfigMap => {
            let n = len(obj, &["data"]).saturating_add(len(obj, &["binaryData"]));
            vec![name_cell(obj), json!(n), json!(age_at(obj, now))]
        }
        Kind::Secret => {
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
        Kind::ServiceAccount => vec![
            name_cell(obj),
            json!(len(obj, &["secrets"])),
            json!(age_at(obj, now)),
        ],
        Kind::Event => event_cells(obj, now),
        Kind::Deployment => {
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
        Kind::ReplicaSet => {
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
        Kind::DaemonSet => {
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
        Kind::StatefulSet => {
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
        Kind::ControllerRevision => vec![
            name_cell(obj),
            json!(controller_of(obj)),
            json!(int(obj, &["revision"]).unwrap_or(0)),
            json!(age_at(obj, now)),
        ],
        Kind::Job => job_cells(obj, now),
        Kind::CronJob => cronjob_cells(obj, now),
        Kind::HorizontalPodAutoscaler => {
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
        Kind::NetworkPolicy => vec![
            name_cell(obj),
            json!(format_label_selector(get(obj, &["spec", "podSelector"]))),
            json!(age_at(obj, now)),
        ],
        Kind::EndpointSlice => vec![
            name_cell(obj),
            json!(text(obj, &["addressType"])),
            json!(discovery_ports(obj)),
            json!(discovery_endpoints(obj)),
            json!(age_at(obj, now)),
        ],
        Kind::Lease => vec![
            name_cell(obj),
            json!(text(obj, &["spec", "holderIdentity"])),
            json!(age_at(obj, now)),
        ],
        Kind::ServiceCIDR => vec![
            name_cell(obj),
            json!(
                get(obj, &["spec", "cidrs"])
                    .and_then(Value::as_array)
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            ),
            json!(age_at(obj, now)),
        ],
        Kind::IPAddress => vec![name_cell(obj), json!(parent_ref(obj))],
        Kind::Generic => vec![name_cell(obj), json!(created_at(obj))],
    }
}

/// An IPAddress' parent as upstream's printer writes it: `resource[.group]/[namespace/]name`,
/// `<none>` without one.
fn parent_ref(obj: &Value) -> String {
    let Some(p) = get(obj, &["spec", "parentRef"]).filter(|p| p.is_object()) else {
        return "<none>".into();
    };
    let s = |f: &str| p.get(f).and_then(Value::as_str).unwrap_or_default();
    let mut out = s("resource").to_lowercase();
    if !s("group").is_empty() {
        out = format!("{out}.{}", s("group").to_lowercase());
    }
    if !s("namespace").is_empty() {
        out = format!("{out}/{}", s("namespace"));
    }
    format!("{out}/{}", s("name"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn namespaces() {
        assert_eq!(
            heads(&builtin("", "Namespace")),
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
            heads(&builtin("", "Secret")),
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
            heads(&builtin("coordination.k8s.io", "Lease")),
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
    fn kinds_without_a_printer_show_created_at() {
        let crd = builtin("apiextensions.k8s.io", "CustomResourceDefinition");
        assert_eq!(
            heads(&crd),
            owned(&[("Name", "string", 0), ("Created At", "date", 0)])
        );
        let obj = json!({"metadata": {"name": "widgets.example.com", "creationTimestamp": "2025-05-31T12:00:00Z"}});
        assert_eq!(
            Value::Array(crd.cells_at(&obj, now())),
            json!(["widgets.example.com", "2025-05-31T12:00:00Z"])
        );
        let obj =
            json!({"metadata": {"name": "w", "creationTimestamp": "2025-05-31T14:00:00.5+02:00"}});
        assert_eq!(crd.cells_at(&obj, now())[1], "2025-05-31T12:00:00Z");
        assert_eq!(
            crd.cells_at(&json!({"metadata": {"name": "w"}}), now())[1],
            "0001-01-01T00:00:00Z"
        );
    }
}
