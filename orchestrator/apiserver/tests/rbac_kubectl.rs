//! RBAC through real kubectl binaries: roles and bindings made with `kubectl create`, a `view`
//! user who can list but not delete (403 with upstream's words), a request without credentials
//! refused with 401, `kubectl auth can-i` (1.33 and 1.20), aggregation of a newly labelled
//! ClusterRole into `view`, `edit` and `admin`, and the default policy kept across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current, tail};
use trellis_apiserver::Running;

/// A kubeconfig for `user` (a certificate from the cluster CA), written under `dir`.
fn kubeconfig_as(running: &Running, dir: &Path, user: &str, groups: &[&str]) -> PathBuf {
    let cert = running.issue(user, groups).unwrap();
    let path = dir.join(format!("{}.kubeconfig", user.replace(':', "_")));
    std::fs::write(&path, running.kubeconfig_for(user, &cert)).unwrap();
    path
}

/// A kubeconfig that trusts the server but presents no credentials at all, or `token`.
fn kubeconfig_with_token(
    running: &Running,
    dir: &Path,
    name: &str,
    token: Option<&str>,
) -> PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(running.ca_pem.as_bytes());
    let user = match token {
        Some(t) => format!("    token: {t}\n"),
        None => "    username: nobody\n".to_string(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        running.addr
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &Path) -> Running {
    trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .expect("the API server starts")
}

fn assert_refused(run: &support::kubectl::Run, line: &str) {
    assert!(
        !run.ok,
        "kubectl succeeded where it should be refused: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains(line),
        "kubectl does not say {line:?}:\n{}",
        tail(&run.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_user_lists_but_cannot_delete_and_strangers_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("server")).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin.ok(&["create", "namespace", "team"]).await;
    admin
        .ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            "team",
            "--from-literal=a=b",
        ])
        .await;
    // Roles and bindings the way users make them (kubectl's typed client: protobuf).
    admin
        .ok(&[
            "create",
            "rolebinding",
            "viewers",
            "--clusterrole=view",
            "--user=viewer",
            "-n",
            "team",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "team",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "clusterrole",
            "log-reader",
            "--verb=get",
            "--non-resource-url=/logs/*",
        ])
        .await;
    let bad = admin
        .run(&[
            "create",
            "role",
            "bad",
            "--verb=get",
            "--resource=pods",
            "-n",
            "team",
            "--dry-run=server",
            "-o",
            "json",
        ])
        .await;
    assert!(bad.ok, "{}", tail(&bad.stderr));
    let binding = admin.get(&["rolebinding", "viewers", "-n", "team"]).await;
    assert_eq!(binding["roleRef"]["name"], "view");
    assert_eq!(binding["subjects"][0]["name"], "viewer");

    let viewer = Kubectl::new(
        kubectl_current(),
        &kubeconfig_as(&running, dir.path(), "viewer", &[]),
        &dir.path().join("viewer"),
    );
    let listed = viewer.get(&["configmaps", "-n", "team"]).await;
    assert_eq!(listed["items"][0]["metadata"]["name"], "settings");
    assert_refused(
        &viewer
            .run(&["delete", "configmap", "settings", "-n", "team"])
            .await,
        r#"Error from server (Forbidden): configmaps "settings" is forbidden: User "viewer" cannot delete resource "configmaps" in API group "" in the namespace "team""#,
    );
    assert_refused(
        &viewer.run(&["get", "configmaps", "-n", "default"]).await,
        r#"configmaps is forbidden: User "viewer" cannot list resource "configmaps" in API group "" in the namespace "default""#,
    );
    assert_refused(
        &viewer.run(&["get", "clusterroles"]).await,
        r#"clusterroles.rbac.authorization.k8s.io is forbidden: User "viewer" cannot list resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope"#,
    );
    // Still there.
    admin
        .ok(&["get", "configmap", "settings", "-n", "team"])
        .await;

    // No credentials: 401, as kube-apiserver with anonymous requests disabled.
    let stranger = Kubectl::new(
        kubectl_current(),
        &kubeconfig_with_token(&running, dir.path(), "stranger", None),
        &dir.path().join("stranger"),
    );
    assert_refused(
        &stranger
            .run(&["get", "configmaps", "-n", "team", "-v=6"])
            .await,
        "401 Unauthorized",
    );
    assert_refused(
        &stranger.run(&["get", "configmaps", "-n", "team"]).await,
        "You must be logged in to the server",
    );
    // A token that is no token: 401 too.
    let forger = Kubectl::new(
        kubectl_current(),
        &kubeconfig_with_token(&running, dir.path(), "forger", Some("not.a.jwt")),
        &dir.path().join("forger"),
    );
    assert_refused(
        &forger
            .run(&["get", "configmaps", "-n", "team", "-v=6"])
            .await,
        "401 Unauthorized",
    );

    // An admin asks about someone else with a SubjectAccessReview; the viewer may not.
    let sar = admin.manifest(
        "sar.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: viewer\n  resourceAttributes: {verb: list, resource: configmaps, namespace: team}\n",
    );
    let answer = admin.ok(&["create", "-f", &sar, "-o", "json"]).await;
    let answer: serde_json::Value = serde_json::from_str(&answer.stdout).unwrap();
    assert_eq!(answer["status"]["allowed"], true, "{answer}");
    assert_refused(
        &viewer.run(&["create", "-f", &sar, "-o", "json"]).await,
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "viewer" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#,
    );

    // kubectl auth can-i, with both kubectl releases.
    for (bin, name) in [(kubectl_current(), "v133"), (kubectl_1_20(), "v120")] {
        let k = Kubectl::new(
            bin,
            &kubeconfig_as(&running, dir.path(), "viewer", &[]),
            &dir.path().join(format!("can-i-{name}")),
        );
        let yes = k
            .run(&["auth", "can-i", "list", "configmaps", "-n", "team"])
            .await;
        assert!(
            yes.ok && yes.stdout.trim() == "yes",
            "{name}: {} {}",
            yes.stdout,
            tail(&yes.stderr)
        );
        let no = k
            .run(&["auth", "can-i", "delete", "configmaps", "-n", "team"])
            .await;
        assert!(
            !no.ok && no.stdout.trim() == "no",
            "{name}: {} {}",
            no.stdout,
            tail(&no.stderr)
        );
        let no = k
            .run(&["auth", "can-i", "list", "pods", "-n", "default"])
            .await;
        assert!(!no.ok && no.stdout.trim() == "no", "{name}: {}", no.stdout);
        let list = k.run(&["auth", "can-i", "--list", "-n", "team"]).await;
        assert!(list.ok, "{name}: {}", tail(&list.stderr));
        let configmaps = list
            .stdout
            .lines()
            .find(|l| l.starts_with("configmaps "))
            .unwrap_or_else(|| panic!("{name}: no configmaps line:\n{}", list.stdout));
        assert!(
            configmaps.contains("[get list watch]"),
            "{name}: {configmaps}"
        );
        let no = k.run(&["auth", "can-i", "get", "/logs/x"]).await;
        assert!(!no.ok && no.stdout.trim() == "no", "{name}: {}", no.stdout);
        let a = Kubectl::new(
            k.bin.clone(),
            &running.kubeconfig,
            &dir.path().join(format!("can-i-admin-{name}")),
        );
        let yes = a.run(&["auth", "can-i", "*", "*"]).await;
        assert!(
            yes.ok && yes.stdout.trim() == "yes",
            "{name}: {} {}",
            yes.stdout,
            tail(&yes.stderr)
        );
    }
    running.shutdown().await;
}

/// Polls `f` (bounded) until it says true.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

const WIDGET_VIEWER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widget-viewer
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- {verbs: [get, list, watch], apiGroups: [example.com], resources: [widgets]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_labelled_cluster_role_is_aggregated_into_view_edit_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("server")).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin.ok(&["create", "namespace", "team"]).await;
    let crd = admin.manifest("widgets.yaml", WIDGETS);
    admin.ok(&["apply", "-f", &crd]).await;
    admin
        .ok(&[
            "create",
            "rolebinding",
            "editors",
            "--clusterrole=edit",
            "--user=ed",
            "-n",
            "team",
        ])
        .await;
    let ed = Kubectl::new(
        kubectl_current(),
        &kubeconfig_as(&running, dir.path(), "ed", &[]),
        &dir.path().join("ed"),
    );
    let has_widgets = |role: serde_json::Value| {
        role["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["apiGroups"][0] == "example.com"))
    };
    for role in ["view", "edit", "admin"] {
        assert!(
            !has_widgets(admin.get(&["clusterrole", role]).await),
            "{role} before"
        );
    }
    // Before: the edit user may not read widgets; edit already has what view has.
    let cani = |k: &Kubectl| {
        let k = Kubectl::new(k.bin.clone(), &k.kubeconfig, &k.dir);
        async move {
            k.run(&["auth", "can-i", "list", "widgets.example.com", "-n", "team"])
                .await
        }
    };
    assert_eq!(cani(&ed).await.stdout.trim(), "no");
    let deployments = ed
        .run(&["auth", "can-i", "list", "deployments.apps", "-n", "team"])
        .await;
    assert_eq!(
        deployments.stdout.trim(),
        "yes",
        "{}",
        tail(&deployments.stderr)
    );

    let manifest = admin.manifest("widget-viewer.yaml", WIDGET_VIEWER);
    admin.ok(&["apply", "-f", &manifest]).await;
    for role in ["view", "edit", "admin"] {
        let admin = &admin;
        eventually(&format!("{role} aggregates widget-viewer"), || async move {
            has_widgets(admin.get(&["clusterrole", role]).await)
        })
        .await;
    }
    assert_eq!(cani(&ed).await.stdout.trim(), "yes");
    // Unlabelled again: the rules leave the aggregates.
    admin
        .ok(&[
            "label",
            "clusterrole",
            "widget-viewer",
            "rbac.authorization.k8s.io/aggregate-to-view-",
        ])
        .await;
    let admin_ref = &admin;
    eventually("view drops widget-viewer", || async move {
        !has_widgets(admin_ref.get(&["clusterrole", "view"]).await)
    })
    .await;
    eventually("edit drops widget-viewer", || async move {
        !has_widgets(admin_ref.get(&["clusterrole", "edit"]).await)
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_is_created_once_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let running = start(&data).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    let versions = |list: serde_json::Value| -> Vec<(String, String)> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                    o["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let roles = versions(admin.get(&["clusterroles"]).await);
    let bindings = versions(admin.get(&["clusterrolebindings"]).await);
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:node-proxier",
    ] {
        assert!(
            roles.iter().any(|(n, _)| n == name),
            "no ClusterRole {name}"
        );
    }
    let binding = admin
        .get(&["clusterrolebinding", "system:kube-scheduler"])
        .await;
    assert_eq!(binding["subjects"][0]["name"], "system:kube-scheduler");
    assert_eq!(binding["subjects"][0]["kind"], "User");
    // Each component's own certificate gets what it uses, and not more.
    for (user, verb, what, ns, answer) in [
        (
            "system:kube-scheduler",
            "create",
            "pods --subresource=binding",
            "default",
            "yes",
        ),
        (
            "system:kube-scheduler",
            "patch",
            "pods --subresource=status",
            "default",
            "yes",
        ),
        ("system:kube-scheduler", "watch", "nodes", "", "yes"),
        ("system:kube-scheduler", "create", "pods", "default", "no"),
        (
            "system:kube-scheduler",
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "kube-system",
            "yes",
        ),
        (
            "system:kube-scheduler",
            "update",
            "leases.coordination.k8s.io/kube-controller-manager",
            "kube-system",
            "no",
        ),
        (
            "system:kube-controller-manager",
            "create",
            "pods",
            "default",
            "yes",
        ),
        (
            "system:kube-controller-manager",
            "update",
            "replicasets.apps",
            "default",
            "yes",
        ),
        (
            "system:kube-controller-manager",
            "create",
            "endpointslices.discovery.k8s.io",
            "default",
            "yes",
        ),
        (
            "system:kube-controller-manager",
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "",
            "no",
        ),
        (
            "system:kube-controller-manager",
            "update",
            "clusterroles.rbac.authorization.k8s.io",
            "",
            "no",
        ),
        (
            "system:kube-proxy",
            "watch",
            "endpointslices.discovery.k8s.io",
            "default",
            "yes",
        ),
        ("system:kube-proxy", "list", "secrets", "default", "no"),
    ] {
        let k = Kubectl::new(
            kubectl_current(),
            &kubeconfig_as(&running, dir.path(), user, &[]),
            &dir.path().join(user.replace(':', "_")),
        );
        let mut args = vec!["auth", "can-i", verb];
        args.extend(what.split(' '));
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        let run = k.run(&args).await;
        assert_eq!(
            run.stdout.trim(),
            answer,
            "{user} {verb} {what}: {}",
            tail(&run.stderr)
        );
    }

    // An administrator's change kept by autoupdate=false, and one put back without it.
    admin
        .ok(&[
            "annotate",
            "clusterrole",
            "system:node-proxier",
            "rbac.authorization.kubernetes.io/autoupdate=false",
            "--overwrite",
        ])
        .await;
    for role in ["system:node-proxier", "system:kube-dns"] {
        admin
            .ok(&["patch", "clusterrole", role, "--type=json",
                  "-p", r#"[{"op": "replace", "path": "/rules", "value": [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}]}]"#])
            .await;
    }
    let roles = versions(admin.get(&["clusterroles"]).await);
    running.shutdown().await;

    let running = start(&data).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin2"),
    );
    let after = versions(admin.get(&["clusterroles"]).await);
    let changed: Vec<_> = after.iter().filter(|v| !roles.contains(v)).collect();
    assert_eq!(
        changed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["system:kube-dns"],
        "a restart rewrote defaults that had not drifted"
    );
    assert_eq!(
        versions(admin.get(&["clusterrolebindings"]).await),
        bindings
    );
    let kept = admin.get(&["clusterrole", "system:node-proxier"]).await;
    assert_eq!(
        kept["rules"].as_array().unwrap().len(),
        1,
        "autoupdate=false was overwritten"
    );
    let restored = admin.get(&["clusterrole", "system:kube-dns"]).await;
    assert_eq!(
        restored["rules"][0]["resources"],
        serde_json::json!(["endpoints", "services"])
    );
    running.shutdown().await;
}

/// Waits (bounded) until `kubectl` gets 401.
async fn until_unauthorized(k: &Kubectl, args: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = k.run(args).await;
        if !run.ok && run.stderr.contains("You must be logged in to the server") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not 401 after 30 s: ok={} {}",
            run.ok,
            tail(&run.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_service_account_token_does_what_its_role_allows_until_the_pod_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("server")).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin.ok(&["create", "namespace", "team"]).await;
    admin
        .ok(&["create", "serviceaccount", "bot", "-n", "team"])
        .await;
    admin
        .ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            "team",
            "--from-literal=a=b",
        ])
        .await;
    admin
        .ok(&[
            "run",
            "holder",
            "--image=busybox",
            "--restart=Never",
            "-n",
            "team",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "role",
            "cm-reader",
            "--verb=get,list",
            "--resource=configmaps",
            "-n",
            "team",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "rolebinding",
            "bot-reads",
            "--role=cm-reader",
            "--serviceaccount=team:bot",
            "-n",
            "team",
        ])
        .await;
    // A TokenRequest bound to the pod (kubectl's typed client: protobuf), and one bound to
    // nothing, the control that shows the pod's deletion is what revokes the first.
    let bound = admin
        .ok(&[
            "create",
            "token",
            "bot",
            "-n",
            "team",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
            "--duration=1h",
        ])
        .await
        .stdout
        .trim()
        .to_string();
    let unbound = admin
        .ok(&["create", "token", "bot", "-n", "team"])
        .await
        .stdout
        .trim()
        .to_string();
    assert_eq!(bound.split('.').count(), 3, "not a JWT: {bound}");
    let as_bot = |name: &str, token: &str| {
        Kubectl::new(
            kubectl_current(),
            &kubeconfig_with_token(&running, dir.path(), name, Some(token)),
            &dir.path().join(name),
        )
    };
    let bot = as_bot("bot-bound", &bound);
    let control = as_bot("bot-unbound", &unbound);

    // What the Role allows, over TLS without a client certificate...
    let listed = bot.get(&["configmaps", "-n", "team"]).await;
    assert_eq!(listed["items"][0]["metadata"]["name"], "settings");
    bot.ok(&["get", "configmap", "settings", "-n", "team"])
        .await;
    let yes = bot
        .run(&["auth", "can-i", "list", "configmaps", "-n", "team"])
        .await;
    assert_eq!(yes.stdout.trim(), "yes", "{}", tail(&yes.stderr));
    // ...and nothing more.
    assert_refused(
        &bot.run(&["delete", "configmap", "settings", "-n", "team"])
            .await,
        r#"configmaps "settings" is forbidden: User "system:serviceaccount:team:bot" cannot delete resource "configmaps" in API group "" in the namespace "team""#,
    );
    assert_refused(
        &bot.run(&["get", "configmaps", "-n", "default"]).await,
        r#"configmaps is forbidden: User "system:serviceaccount:team:bot" cannot list resource "configmaps" in API group "" in the namespace "default""#,
    );
    assert_refused(
        &bot.run(&["get", "pods", "-n", "team"]).await,
        r#"pods is forbidden: User "system:serviceaccount:team:bot" cannot list resource "pods" in API group "" in the namespace "team""#,
    );
    let no = bot
        .run(&[
            "auth",
            "can-i",
            "create",
            "serviceaccounts/token",
            "-n",
            "team",
        ])
        .await;
    assert_eq!(no.stdout.trim(), "no");

    // The pod goes: the token bound to it stops working; the unbound one does not.
    admin
        .ok(&[
            "delete",
            "pod",
            "holder",
            "-n",
            "team",
            "--grace-period=0",
            "--force",
        ])
        .await;
    until_unauthorized(&bot, &["get", "configmaps", "-n", "team"]).await;
    control.ok(&["get", "configmaps", "-n", "team"]).await;
    // A pod of the same name again is another pod (another uid): still revoked.
    admin
        .ok(&[
            "run",
            "holder",
            "--image=busybox",
            "--restart=Never",
            "-n",
            "team",
        ])
        .await;
    admin.ok(&["get", "pod", "holder", "-n", "team"]).await;
    until_unauthorized(&bot, &["get", "configmaps", "-n", "team"]).await;
    // And the account going revokes every token of it.
    admin
        .ok(&["delete", "serviceaccount", "bot", "-n", "team"])
        .await;
    until_unauthorized(&control, &["get", "configmaps", "-n", "team"]).await;
    running.shutdown().await;
}
