//! Authentication through real kubectl binaries: impersonation (`kubectl --as`, allowed for a
//! cluster admin and for a user granted `impersonate`, refused with upstream's 403 for a user
//! without it), TokenReview of a `kubectl create token` token (and of garbage), and legacy
//! token Secrets' tokens, valid while their Secret holds them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current, tail};
use trellis_apiserver::Running;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn kubeconfig_as(running: &Running, dir: &Path, user: &str) -> PathBuf {
    let cert = running.issue(user, &[]).unwrap();
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, running.kubeconfig_for(user, &cert)).unwrap();
    path
}

fn kubeconfig_with_token(running: &Running, dir: &Path, name: &str, token: &str) -> PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(running.ca_pem.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
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

const IMPERSONATOR: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: impersonate-jane}
rules:
- {verbs: [impersonate], apiGroups: [""], resources: [users], resourceNames: [jane]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_runs_as_the_impersonated_user_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("server")).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin
        .ok(&["create", "configmap", "settings", "--from-literal=a=b"])
        .await;
    // A cluster admin may impersonate anyone: jane has no rights yet, so the request is
    // refused as jane's.
    assert_refused(
        &admin.run(&["--as=jane", "get", "configmaps"]).await,
        r#"configmaps is forbidden: User "jane" cannot list resource "configmaps" in API group "" in the namespace "default""#,
    );
    admin
        .ok(&[
            "create",
            "rolebinding",
            "jane-views",
            "--clusterrole=view",
            "--user=jane",
        ])
        .await;
    let listed = admin
        .ok(&["--as=jane", "get", "configmaps", "-o", "json"])
        .await;
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["items"][0]["metadata"]["name"], "settings");
    assert_refused(
        &admin
            .run(&["--as=jane", "delete", "configmap", "settings"])
            .await,
        r#"configmaps "settings" is forbidden: User "jane" cannot delete resource "configmaps" in API group "" in the namespace "default""#,
    );
    // A group asked for with --as-group replaces the user's own, and is what RBAC sees.
    admin
        .ok(&[
            "create",
            "clusterrolebinding",
            "ops-admins",
            "--clusterrole=cluster-admin",
            "--group=ops",
        ])
        .await;
    admin
        .ok(&[
            "--as=jane",
            "--as-group=ops",
            "delete",
            "configmap",
            "settings",
        ])
        .await;

    // kubectl auth can-i as a service account, with both kubectl releases.
    admin.ok(&["create", "serviceaccount", "robot"]).await;
    for (bin, name) in [(kubectl_current(), "v133"), (kubectl_1_20(), "v120")] {
        let k = Kubectl::new(
            bin,
            &running.kubeconfig,
            &dir.path().join(format!("can-i-{name}")),
        );
        let no = k
            .run(&[
                "auth",
                "can-i",
                "--as=system:serviceaccount:default:robot",
                "list",
                "pods",
            ])
            .await;
        assert!(
            !no.ok && no.stdout.trim() == "no",
            "{name}: {} {}",
            no.stdout,
            tail(&no.stderr)
        );
    }
    admin
        .ok(&[
            "create",
            "rolebinding",
            "robot-views",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ])
        .await;
    for (bin, name) in [(kubectl_current(), "v133"), (kubectl_1_20(), "v120")] {
        let k = Kubectl::new(
            bin,
            &running.kubeconfig,
            &dir.path().join(format!("can-i-yes-{name}")),
        );
        let yes = k
            .run(&[
                "auth",
                "can-i",
                "--as=system:serviceaccount:default:robot",
                "list",
                "pods",
            ])
            .await;
        assert!(
            yes.ok && yes.stdout.trim() == "yes",
            "{name}: {} {}",
            yes.stdout,
            tail(&yes.stderr)
        );
        // Bound in default only, and only through its own groups.
        let no = k
            .run(&[
                "auth",
                "can-i",
                "--as=system:serviceaccount:default:robot",
                "list",
                "pods",
                "-n",
                "kube-system",
            ])
            .await;
        assert!(!no.ok && no.stdout.trim() == "no", "{name}: {}", no.stdout);
    }

    // The negative control: bob, a plain user, may not impersonate — 403 in upstream's words,
    // before anything runs as jane. (kubectl's discovery, refused the same way, reports
    // "Forbidden: unknown" for a plain `get`, as against kube-apiserver; `get --raw` shows the
    // server's message.)
    let bob = Kubectl::new(
        kubectl_current(),
        &kubeconfig_as(&running, dir.path(), "bob"),
        &dir.path().join("bob"),
    );
    const PODS: &str = "/api/v1/namespaces/default/pods";
    assert_refused(
        &bob.run(&["--as=jane", "get", "configmaps"]).await,
        "Error from server (Forbidden)",
    );
    assert_refused(
        &bob.run(&["--as=jane", "get", "--raw", PODS]).await,
        r#"users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    );
    assert_refused(
        &bob.run(&[
            "--as=system:serviceaccount:default:robot",
            "get",
            "--raw",
            PODS,
        ])
        .await,
        r#"serviceaccounts "robot" is forbidden: User "bob" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "default""#,
    );
    // Granted impersonation of jane only: bob acts as jane (with jane's rights, not more),
    // and still not as anyone else, nor with a group he may not name.
    let role = admin.manifest("impersonator.yaml", IMPERSONATOR);
    admin.ok(&["apply", "-f", &role]).await;
    admin
        .ok(&[
            "create",
            "clusterrolebinding",
            "bob-impersonates",
            "--clusterrole=impersonate-jane",
            "--user=bob",
        ])
        .await;
    bob.ok(&["--as=jane", "get", "pods"]).await;
    assert_refused(
        &bob.run(&["get", "pods"]).await,
        r#"pods is forbidden: User "bob" cannot list resource "pods""#,
    );
    assert_refused(
        &bob.run(&["--as=jane", "create", "configmap", "x"]).await,
        r#"User "jane" cannot create resource "configmaps""#,
    );
    assert_refused(
        &bob.run(&["--as=john", "get", "--raw", PODS]).await,
        r#"users "john" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    );
    assert_refused(
        &bob.run(&["--as=jane", "--as-group=ops", "get", "--raw", PODS])
            .await,
        r#"groups "ops" is forbidden: User "bob" cannot impersonate resource "groups" in API group "" at the cluster scope"#,
    );
    running.shutdown().await;
}

fn token_review(token: &str, audiences: &[&str]) -> String {
    let mut spec = serde_json::json!({"token": token});
    if !audiences.is_empty() {
        spec["audiences"] = serde_json::json!(audiences);
    }
    serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        .to_string()
}

async fn review(k: &Kubectl, name: &str, token: &str, audiences: &[&str]) -> Value {
    let file = k.manifest(name, &token_review(token, audiences));
    let run = k.ok(&["create", "-f", &file, "-o", "json"]).await;
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_review_says_who_a_token_is_and_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("server")).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin.ok(&["create", "serviceaccount", "robot"]).await;
    let uid = admin.get(&["serviceaccount", "robot"]).await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let token = admin.ok(&["create", "token", "robot"]).await.stdout;
    let token = token.trim();

    let r = review(&admin, "good.json", token, &[]).await;
    let status = &r["status"];
    assert_eq!(status["authenticated"], true, "{r}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(status["user"]["uid"], uid.as_str());
    let groups: Vec<&str> = status["user"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]
    );
    assert_eq!(status["audiences"], serde_json::json!([ISSUER]));
    assert!(
        status["user"]["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("JTI=")),
        "{r}"
    );
    // For an audience the token was not made for: not authenticated.
    let r = review(&admin, "other.json", token, &["vault"]).await;
    assert_eq!(r["status"]["authenticated"], false, "{r}");
    // A token made for that audience is good for it (and not for the API server).
    let vault = admin
        .ok(&["create", "token", "robot", "--audience=vault"])
        .await
        .stdout;
    let r = review(&admin, "vault.json", vault.trim(), &["vault", "other"]).await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["audiences"], serde_json::json!(["vault"]));
    let r = review(&admin, "vault-api.json", vault.trim(), &[]).await;
    assert_eq!(r["status"]["authenticated"], false, "{r}");

    // Garbage: not authenticated, with an error.
    for (name, garbage) in [("g1.json", "not.a.jwt"), ("g2.json", "hello")] {
        let r = review(&admin, name, garbage, &[]).await;
        assert_eq!(r["status"]["authenticated"], false, "{r}");
        assert!(
            r["status"]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{r}"
        );
    }
    // The account deleted: its tokens no longer authenticate.
    admin.ok(&["delete", "serviceaccount", "robot"]).await;
    let r = review(&admin, "gone.json", token, &[]).await;
    assert_eq!(r["status"]["authenticated"], false, "{r}");

    // Only those allowed to create tokenreviews may ask.
    let viewer = Kubectl::new(
        kubectl_current(),
        &kubeconfig_as(&running, dir.path(), "viewer"),
        &dir.path().join("viewer"),
    );
    let file = viewer.manifest("t.json", &token_review(token, &[]));
    assert_refused(
        &viewer.run(&["create", "-f", &file]).await,
        r#"tokenreviews.authentication.k8s.io is forbidden: User "viewer" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope"#,
    );
    running.shutdown().await;
}

/// A legacy token as the token controller signs it, with the server's own key.
fn legacy_token(data: &Path, ns: &str, secret: &str, sa: &str, uid: &str) -> String {
    let pem = std::fs::read_to_string(data.join("pki/sa.key")).unwrap();
    let signer = trellis_api::jwt::Signer::from_pem(&pem).unwrap();
    signer
        .sign(&trellis_api::jwt::legacy_claims(ns, secret, sa, uid))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_token_is_valid_only_while_its_secret_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let running = start(&data).await;
    let admin = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("admin"),
    );
    admin.ok(&["create", "serviceaccount", "robot"]).await;
    admin
        .ok(&[
            "create",
            "rolebinding",
            "robot-views",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ])
        .await;
    let uid = admin.get(&["serviceaccount", "robot"]).await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let token = legacy_token(&data, "default", "robot-token", "robot", &uid);
    let as_robot = Kubectl::new(
        kubectl_current(),
        &kubeconfig_with_token(&running, dir.path(), "robot", &token),
        &dir.path().join("robot"),
    );
    // No such Secret yet: refused.
    assert_refused(
        &as_robot.run(&["get", "pods", "-v=6"]).await,
        "401 Unauthorized",
    );
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "robot-token",
                     "annotations": {"kubernetes.io/service-account.name": "robot"}},
        "type": "kubernetes.io/service-account-token",
        "stringData": {"token": "another token"},
    });
    let file = admin.manifest("secret.json", &secret.to_string());
    admin.ok(&["create", "-f", &file]).await;
    // The Secret holds another token: still refused.
    assert_refused(
        &as_robot.run(&["get", "pods", "-v=6"]).await,
        "401 Unauthorized",
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(token.as_bytes());
    let patch = serde_json::json!({"data": {"token": b64}}).to_string();
    admin
        .ok(&["patch", "secret", "robot-token", "-p", &patch])
        .await;
    as_robot.ok(&["get", "pods"]).await;
    assert_refused(
        &as_robot.run(&["delete", "serviceaccount", "robot"]).await,
        r#"User "system:serviceaccount:default:robot" cannot delete resource "serviceaccounts""#,
    );
    let r = review(&admin, "legacy.json", &token, &[]).await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    // Deleting the Secret revokes it.
    admin.ok(&["delete", "secret", "robot-token"]).await;
    assert_refused(
        &as_robot.run(&["get", "pods", "-v=6"]).await,
        "401 Unauthorized",
    );
    running.shutdown().await;
}
