//! The default roles and bindings every cluster starts with, modelled on upstream's bootstrap
//! policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`): each component's
//! identity gets what it uses, and nothing more.
//!
//! They are labelled `kubernetes.io/bootstrapping=rbac-defaults` and annotated
//! `rbac.authorization.kubernetes.io/autoupdate=true`. At start-up a missing one is created and
//! an existing one whose content drifted is put back — unless its annotation says `false`, which
//! is how an administrator keeps their own changes.

use serde_json::{Value, json};

use crate::handlers::Api;
use crate::status::ApiError;

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const GROUP: &str = "rbac.authorization.k8s.io";

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "resourceNames": names})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn meta(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": meta(name, labels), "rules": rules})
}

/// A ClusterRole whose rules are those of the ClusterRoles labelled `<label>=true`.
fn aggregated(name: &str, labels: &[(&str, &str)], label: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": meta(name, labels),
           "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
           "rules": []})
}

fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| match *kind {
            "ServiceAccount" => {
                let (ns, n) = name.split_once('/').unwrap_or(("default", name));
                json!({"kind": kind, "name": n, "namespace": ns})
            }
            _ => json!({"kind": kind, "name": name, "apiGroup": GROUP}),
        })
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": meta(role, &[]),
           "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENTS: &[&str] = &["create", "patch", "update"];

/// The workload resources users manage (`view` reads them, `edit` writes them).
fn workloads() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "",
            vec![
                "pods",
                "services",
                "endpoints",
                "configmaps",
                "serviceaccounts",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "persistentvolumeclaims",
            ],
        ),
        (
            "apps",
            vec![
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "controllerrevisions",
            ],
        ),
        ("batch", vec!["jobs", "cronjobs"]),
        ("autoscaling", vec!["horizontalpodautoscalers"]),
        ("networking.k8s.io", vec!["networkpolicies", "ingresses"]),
        ("discovery.k8s.io", vec!["endpointslices"]),
        ("policy", vec!["poddisruptionbudgets"]),
        ("coordination.k8s.io", vec!["leases"]),
    ]
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to_view = [("rbac.authorization.k8s.io/aggregate-to-view", "true")];
    let to_edit = [("rbac.authorization.k8s.io/aggregate-to-edit", "true")];
    let to_admin = [("rbac.authorization.k8s.io/aggregate-to-admin", "true")];
    let mut view_rules: Vec<Value> = workloads()
        .iter()
        .map(|(g, rs)| {
            let mut rs = rs.clone();
            // Status is readable wherever the object is.
            let status: Vec<String> = rs.iter().map(|r| format!("{r}/status")).collect();
            let mut all: Vec<&str> = std::mem::take(&mut rs);
            all.extend(status.iter().map(String::as_str));
            rule(READ, &[g], &all)
        })
        .collect();
    view_rules.push(rule(
        READ,
        &[""],
        &[
            "pods/log",
            "events",
            "namespaces",
            "namespaces/status",
            "limitranges",
            "resourcequotas",
            "bindings",
        ],
    ));
    view_rules.push(rule(READ, &["events.k8s.io"], &["events"]));
    // What metrics-server's `system:aggregated-metrics-reader` adds to view (and so to edit
    // and admin): `kubectl top`.
    view_rules.push(rule(READ, &["metrics.k8s.io"], &["pods", "nodes"]));
    let mut edit_rules: Vec<Value> = workloads()
        .iter()
        .map(|(g, rs)| rule(WRITE, &[g], rs))
        .collect();
    edit_rules.extend([
        rule(ALL, &[""], &["secrets"]),
        rule(
            &["create", "get"],
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "pods/eviction",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
    ]);
    let admin_rules = vec![
        rule(ALL, &[GROUP], &["roles", "rolebindings"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
    ];
    let events_write = vec![
        rule(EVENTS, &[""], &["events"]),
        rule(EVENTS, &["events.k8s.io"], &["events"]),
    ];
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];

    let mut scheduler = events_write.clone();
    scheduler.extend([
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(
            READ,
            &[""],
            &[
                "nodes",
                "namespaces",
                "services",
                "replicationcontrollers",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
        ),
        // Preemption deletes pods.
        rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
        rule(&["create"], &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &["apps"], &["replicasets", "statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &["storage.k8s.io"],
            &[
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
            ],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
    ]);

    let mut controller_manager = events_write.clone();
    controller_manager.extend([
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        // Node lifecycle reads the nodes' Leases in kube-node-lease.
        rule(READ, &["coordination.k8s.io"], &["leases"]),
        // The workload controllers own their pods and their children.
        rule(
            ALL,
            &[""],
            &[
                "pods",
                "endpoints",
                "replicationcontrollers",
                "serviceaccounts",
                "secrets",
                "configmaps",
            ],
        ),
        rule(
            &["patch", "update"],
            &[""],
            &[
                "pods/status",
                "replicationcontrollers/status",
                "services/status",
                "nodes/status",
                "namespaces/status",
                "namespaces/finalize",
            ],
        ),
        rule(
            &["create"],
            &[""],
            &["pods/eviction", "pods/binding", "serviceaccounts/token"],
        ),
        rule(
            &["get", "list", "watch", "update", "patch", "delete"],
            &[""],
            &["nodes", "namespaces", "services"],
        ),
        rule(
            ALL,
            &["apps"],
            &[
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "controllerrevisions",
            ],
        ),
        rule(ALL, &["batch"], &["jobs", "cronjobs"]),
        rule(ALL, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            &["get", "list", "watch", "update", "patch"],
            &["autoscaling"],
            &["horizontalpodautoscalers"],
        ),
        rule(&["update", "patch"], &["*"], &["*/status", "*/finalizers"]),
        rule(&["get", "update", "patch"], &["*"], &["*/scale"]),
        rule(&["get", "list"], &["metrics.k8s.io"], &["pods", "nodes"]),
        // The garbage collector reads everything, and removes dependents and finalizers in the
        // groups objects are owned in. Upstream's collector may write `*` because its escalation
        // checks stop it from granting itself rights through RBAC objects; here RBAC objects
        // are left out instead.
        rule(READ, &["*"], &["*"]),
        rule(
            &["patch", "update", "delete"],
            &[
                "",
                "apps",
                "batch",
                "autoscaling",
                "networking.k8s.io",
                "discovery.k8s.io",
                "coordination.k8s.io",
                "policy",
                "events.k8s.io",
            ],
            &["*"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
    ]);

    let mut proxier = events_write.clone();
    proxier.extend([
        rule(&["list", "watch"], &[""], &["services", "endpoints"]),
        rule(READ, &[""], &["nodes"]),
        rule(
            &["list", "watch"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
    ]);

    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", &[], "rbac.authorization.k8s.io/aggregate-to-admin"),
        aggregated(
            "edit",
            &to_admin,
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ),
        aggregated(
            "view",
            &to_edit,
            "rbac.authorization.k8s.io/aggregate-to-view",
        ),
        cluster_role("system:aggregate-to-admin", &to_admin, admin_rules),
        cluster_role("system:aggregate-to-edit", &to_edit, edit_rules),
        cluster_role("system:aggregate-to-view", &to_view, view_rules),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(&["get"], &discovery_urls)],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![rule(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            )],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler),
        cluster_role("system:kube-controller-manager", &[], controller_manager),
        cluster_role("system:node-proxier", &[], proxier),
        // What the API server needs of kubelets (logs, exec, stats), upstream's
        // `system:kubelet-api-admin`.
        cluster_role(
            "system:kubelet-api-admin",
            &[],
            vec![
                rule(&["get", "list", "watch", "proxy"], &[""], &["nodes"]),
                rule(
                    &["*"],
                    &[""],
                    &[
                        "nodes/proxy",
                        "nodes/log",
                        "nodes/stats",
                        "nodes/metrics",
                        "nodes/spec",
                    ],
                ),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![
                rule(&["list", "watch"], &[""], &["endpoints", "services"]),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings (named as their role).
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &[("Group", "system:masters")]),
        binding("system:discovery", &[("Group", "system:authenticated")]),
        binding("system:basic-user", &[("Group", "system:authenticated")]),
        binding(
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding("system:node-proxier", &[("User", "system:kube-proxy")]),
        binding(
            "system:kubelet-api-admin",
            &[("User", crate::pki::KUBELET_CLIENT_USER)],
        ),
        binding(
            "system:kube-dns",
            &[("ServiceAccount", "kube-system/kube-dns")],
        ),
    ]
}

/// The part of a default object that start-up keeps as the bootstrap policy says: rules and
/// aggregation rule of a role, role reference and subjects of a binding. (An aggregated role's
/// rules belong to the aggregation, not to this.)
fn policy_of(obj: &Value) -> Value {
    if obj.get("aggregationRule").is_some() {
        json!({"aggregationRule": obj["aggregationRule"]})
    } else {
        json!({"rules": obj["rules"], "roleRef": obj["roleRef"], "subjects": obj["subjects"]})
    }
}

/// Creates the missing defaults, and puts back drifted ones not annotated `autoupdate=false`.
/// Safe to run at every start and from several API servers at once.
pub async fn ensure(api: &Api) -> Result<(), ApiError> {
    for (plural, objects) in [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ] {
        let info = api
            .registry
            .find(GROUP, "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        for mut obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            match api.storage.get(&info, None, &name).await? {
                None => {
                    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                    obj["metadata"]["creationTimestamp"] = json!(crate::meta::now());
                    match api
                        .storage
                        .create(&info, None, &name, &obj, Vec::new())
                        .await
                    {
                        Ok(_) => {}
                        // Another API server made it first.
                        Err(e) if e.code == 409 => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(stored) => {
                    let keep =
                        stored.obj["metadata"]["annotations"][AUTOUPDATE].as_str() == Some("false");
                    if keep || policy_of(&stored.obj) == policy_of(&obj) {
                        continue;
                    }
                    let mut updated = stored.obj.clone();
                    for field in ["rules", "aggregationRule", "roleRef", "subjects"] {
                        match obj.get(field) {
                            // An aggregated role keeps the rules its aggregation computed.
                            Some(_) if field == "rules" && obj.get("aggregationRule").is_some() => {
                            }
                            Some(v) => updated[field] = v.clone(),
                            None => {
                                if let Some(m) = updated.as_object_mut() {
                                    m.remove(field);
                                }
                            }
                        }
                    }
                    tracing::info!(%plural, %name, "putting back the default RBAC policy");
                    // A conflict means another API server is doing the same.
                    let _ = api
                        .storage
                        .update(&info, None, &name, stored.revision, &updated)
                        .await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use crate::rbac::aggregate;
    use crate::rbac::authorizer::Snapshot;
    use crate::rbac::rule::Attributes;

    fn defaults() -> Snapshot {
        let roles = aggregate::apply(&cluster_roles());
        Snapshot::new(&[], &roles, &[], &cluster_role_bindings())
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_scheduler_binds_pods_and_reads_nodes_but_does_not_create_pods() {
        let s = defaults();
        let sched = user("system:kube-scheduler", &["system:authenticated"]);
        let pods = |verb: &str| Attributes::resource(verb, "", "pods").in_ns("default");
        assert!(
            s.allowed_by(&sched, &pods("create").subresource("binding").named("web"))
                .is_some()
        );
        assert!(
            s.allowed_by(&sched, &pods("patch").subresource("status").named("web"))
                .is_some()
        );
        assert!(
            s.allowed_by(&sched, &Attributes::resource("watch", "", "nodes"))
                .is_some()
        );
        assert!(s.allowed_by(&sched, &pods("create")).is_none());
        let lease =
            Attributes::resource("update", "coordination.k8s.io", "leases").in_ns("kube-system");
        assert!(
            s.allowed_by(&sched, &lease.clone().named("kube-scheduler"))
                .is_some()
        );
        assert!(
            s.allowed_by(&sched, &lease.named("kube-controller-manager"))
                .is_none()
        );
    }

    #[test]
    fn the_controller_manager_runs_workloads_but_cannot_grant_rights() {
        let s = defaults();
        let cm = user("system:kube-controller-manager", &["system:authenticated"]);
        for (verb, group, res) in [
            ("create", "", "pods"),
            ("delete", "", "pods"),
            ("update", "apps", "replicasets"),
            ("create", "discovery.k8s.io", "endpointslices"),
            ("list", "", "nodes"),
            // The token controller and the root CA publisher.
            ("update", "", "secrets"),
            ("delete", "", "secrets"),
            ("create", "", "configmaps"),
            ("update", "", "configmaps"),
        ] {
            let a = Attributes::resource(verb, group, res).in_ns("default");
            assert!(s.allowed_by(&cm, &a).is_some(), "{verb} {group}/{res}");
        }
        for verb in ["create", "update", "patch"] {
            for res in [
                "clusterrolebindings",
                "clusterroles",
                "rolebindings",
                "roles",
            ] {
                let a = Attributes::resource(verb, GROUP, res).named("cluster-admin");
                assert!(s.allowed_by(&cm, &a).is_none(), "{verb} {res}");
            }
        }
    }

    #[test]
    fn viewers_and_the_controller_manager_read_resource_metrics_and_nobody_writes_them() {
        let roles = aggregate::apply(&cluster_roles());
        let mut bindings = cluster_role_bindings();
        bindings.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding", "metadata": {"name": "viewer"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": GROUP, "kind": "User", "name": "viewer"}]}));
        let s = Snapshot::new(&[], &roles, &[], &bindings);
        let viewer = user("viewer", &["system:authenticated"]);
        let cm = user("system:kube-controller-manager", &["system:authenticated"]);
        let pods = |verb: &str| Attributes::resource(verb, "metrics.k8s.io", "pods").in_ns("web");
        let nodes = |verb: &str| Attributes::resource(verb, "metrics.k8s.io", "nodes");
        for verb in ["get", "list"] {
            assert!(s.allowed_by(&viewer, &pods(verb)).is_some(), "{verb}");
            assert!(s.allowed_by(&viewer, &nodes(verb)).is_some(), "{verb}");
            assert!(s.allowed_by(&cm, &pods(verb)).is_some(), "{verb}");
        }
        assert!(s.allowed_by(&viewer, &pods("create")).is_none());
        let nobody = user("someone", &["system:authenticated"]);
        assert!(s.allowed_by(&nobody, &pods("list")).is_none());
    }

    #[test]
    fn masters_may_do_anything_and_everyone_authenticated_may_discover() {
        let s = defaults();
        let admin = user("admin", &["system:masters"]);
        assert!(
            s.allowed_by(&admin, &Attributes::path("post", "/anything"))
                .is_some()
        );
        let nobody = user("someone", &["system:authenticated"]);
        assert!(
            s.allowed_by(&nobody, &Attributes::path("get", "/apis/apps/v1"))
                .is_some()
        );
        assert!(
            s.allowed_by(&nobody, &Attributes::path("get", "/metrics"))
                .is_none()
        );
        assert!(
            s.allowed_by(&nobody, &Attributes::resource("list", "", "pods"))
                .is_none()
        );
        let ssar =
            Attributes::resource("create", "authorization.k8s.io", "selfsubjectaccessreviews");
        assert!(s.allowed_by(&nobody, &ssar).is_some());
    }

    #[test]
    fn the_proxy_reads_services_and_endpoint_slices_only() {
        let s = defaults();
        let proxy = user("system:kube-proxy", &[]);
        assert!(
            s.allowed_by(
                &proxy,
                &Attributes::resource("watch", "discovery.k8s.io", "endpointslices")
            )
            .is_some()
        );
        assert!(
            s.allowed_by(&proxy, &Attributes::resource("list", "", "secrets"))
                .is_none()
        );
    }
}
