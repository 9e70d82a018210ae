//! Token controller: a legacy token Secret made by hand is filled (token, ca.crt, namespace);
//! its token works with kubectl while the Secret exists and is refused with 401 once it is
//! deleted; a token Secret whose account is gone is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::kubectl::{Kubectl, kubectl_current, tail};
use support::*;

fn token_secret(name: &str, account: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name,
                     "annotations": {"kubernetes.io/service-account.name": account}},
        "type": "kubernetes.io/service-account-token",
    }))
    .unwrap()
}

fn kubeconfig_with_token(s: &TestServer, token: &str) -> std::path::PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(s.running.ca_pem.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        s.running.addr
    );
    let path = s.dir.path().join("robot.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_is_filled_and_its_token_lives_as_long_as_the_secret() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let pem = std::fs::read_to_string(s.dir.path().join("pki/sa.key")).unwrap();
    let key = trellis_api::jwt::Signer::from_pem(&pem).unwrap();
    let ca = s.running.ca_pem.clone();
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["serviceaccount-token".to_string()].into();
        c.service_account_key = Some(trellis_controllers::tokens::SigningKey(Arc::new(key)));
        c.root_ca = Some(ca.clone());
    })
    .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    let sa = accounts.create(&PostParams::default(), &sa).await.unwrap();
    let sa_uid = sa.metadata.uid.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &token_secret("robot-token", "robot"),
        )
        .await
        .unwrap();
    let filled = wait_for("the token Secret filled", 30, || async {
        secrets
            .get_opt("robot-token")
            .await
            .unwrap()
            .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("token")))
    })
    .await;
    let data = filled.data.unwrap();
    assert_eq!(data["ca.crt"].0, ca.as_bytes());
    assert_eq!(data["namespace"].0, b"default");
    assert_eq!(
        filled.metadata.annotations.unwrap()["kubernetes.io/service-account.uid"],
        sa_uid
    );
    let token = String::from_utf8(data["token"].0.clone()).unwrap();

    // The token works with kubectl, with the account's rights.
    let k = Kubectl::new(
        kubectl_current(),
        &kubeconfig_with_token(&s, &token),
        &s.dir.path().join("robot"),
    );
    let forbidden = k.run(&["get", "pods"]).await;
    assert!(
        !forbidden.ok
            && forbidden.stderr.contains(
                r#"User "system:serviceaccount:default:robot" cannot list resource "pods""#
            ),
        "{}",
        tail(&forbidden.stderr)
    );
    let admin = Kubectl::new(
        kubectl_current(),
        &s.running.kubeconfig,
        &s.dir.path().join("admin"),
    );
    admin
        .ok(&[
            "create",
            "rolebinding",
            "robot-views",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ])
        .await;
    let listed = k
        .run(&["get", "serviceaccount", "robot", "-o", "name"])
        .await;
    assert!(listed.ok, "{}", tail(&listed.stderr));
    assert_eq!(listed.stdout.trim(), "serviceaccount/robot");

    // Deleting the Secret revokes the token: 401.
    secrets
        .delete("robot-token", &DeleteParams::default())
        .await
        .unwrap();
    let refused = k.run(&["get", "pods", "-v=6"]).await;
    assert!(
        !refused.ok && refused.stderr.contains("401 Unauthorized"),
        "{}",
        tail(&refused.stderr)
    );

    // A token Secret for an account that does not exist is deleted.
    secrets
        .create(
            &PostParams::default(),
            &token_secret("ghost-token", "ghost"),
        )
        .await
        .unwrap();
    wait_for("the ghost's token Secret deleted", 30, || async {
        secrets
            .get_opt("ghost-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // And so is one whose account is deleted.
    secrets
        .create(
            &PostParams::default(),
            &token_secret("robot-token-2", "robot"),
        )
        .await
        .unwrap();
    wait_for("a second token Secret filled", 30, || async {
        secrets
            .get_opt("robot-token-2")
            .await
            .unwrap()
            .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("token")))
    })
    .await;
    accounts
        .delete("robot", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the token Secret deleted with its account", 30, || async {
        secrets
            .get_opt("robot-token-2")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}
