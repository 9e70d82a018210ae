//! Bad input is answered with the right Status — and nothing is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::TestServer;

/// Sends a raw request; returns (code, reason) of the Status it got.
async fn status_of(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body.to_vec())
        .unwrap();
    match client.request_text(req).await {
        Ok(text) => panic!("{method} {path} succeeded: {text}"),
        Err(kube::Error::Api(e)) => {
            let raw = serde_json::to_value(&e).unwrap_or_default();
            (e.code, e.reason.clone(), raw)
        }
        Err(other) => panic!("{method} {path}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_objects_are_refused_and_not_stored() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let cms = "/api/v1/namespaces/default/configmaps";

    let (code, reason, _) = status_of(
        &client,
        "POST",
        cms,
        "application/json",
        b"{\"apiVersion\": \"v1\", \"kind\": ",
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (400, "BadRequest"),
        "malformed JSON"
    );

    let (code, _, _) =
        status_of(&client, "POST", cms, "application/yaml", b"kind: [unclosed").await;
    assert_eq!(code, 400, "malformed YAML");

    let secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}).to_string();
    let (code, reason, _) =
        status_of(&client, "POST", cms, "application/json", secret.as_bytes()).await;
    assert_eq!(
        (code, reason.as_str()),
        (400, "BadRequest"),
        "a Secret posted to configmaps"
    );

    let capitals =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not-Lowercase"}})
            .to_string();
    let (code, reason, _) = status_of(
        &client,
        "POST",
        cms,
        "application/json",
        capitals.as_bytes(),
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (422, "Invalid"),
        "a name with capitals"
    );

    let wrong_type = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed"}, "data": {"a": 1}}).to_string();
    let (code, _, _) = status_of(
        &client,
        "POST",
        cms,
        "application/json",
        wrong_type.as_bytes(),
    )
    .await;
    assert_eq!(code, 400, "a number where a string belongs");

    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let no_selector = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    .to_string();
    let (code, reason, raw) = status_of(
        &client,
        "POST",
        deployments,
        "application/json",
        no_selector.as_bytes(),
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (422, "Invalid"),
        "a missing required field"
    );
    assert!(raw.to_string().contains("spec.selector"), "{raw}");

    let unknown = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict"}, "bogus": true}).to_string();
    let (code, _, raw) = status_of(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Strict"),
        "application/json",
        unknown.as_bytes(),
    )
    .await;
    assert_eq!(code, 400, "an unknown field under Strict");
    assert!(raw.to_string().contains("bogus"), "{raw}");

    let (code, reason, _) = status_of(
        &client,
        "POST",
        "/api/v1/namespaces/nowhere/configmaps",
        "application/json",
        json!({"metadata": {"name": "x"}}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (404, "NotFound"),
        "a namespace that does not exist"
    );

    let listed = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        listed.items.is_empty(),
        "nothing was stored: {:?}",
        listed
            .items
            .iter()
            .map(|c| &c.metadata.name)
            .collect::<Vec<_>>()
    );
    assert!(
        Api::<Deployment>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_field_cannot_change() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b", "c": "d"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    let mut changed = created.clone();
    changed.spec.as_mut().unwrap().selector.match_labels =
        Some([("c".to_string(), "d".to_string())].into());
    match api.replace("d", &PostParams::default(), &changed).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
            assert!(e.message.contains("field is immutable"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let now = api.get("d").await.unwrap();
    assert_eq!(
        now.metadata.resource_version, created.metadata.resource_version,
        "nothing was stored"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_certificates_get_401() {
    let s = TestServer::start().await;
    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let foreign = trellis_apiserver::pki::Pki::ensure(other.path(), &[]).unwrap();
    let kubeconfig = s.running.kubeconfig_for("intruder", &foreign.admin);
    let client = support::client_from(&kubeconfig).await;
    let (code, reason, _) = status_of(
        &client,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        json!({"metadata": {"name": "x"}}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (401, "Unauthorized"),
        "a certificate the cluster CA did not sign"
    );
    // No certificate at all.
    let admin = std::fs::read_to_string(&s.running.kubeconfig).unwrap();
    let anonymous: String = admin
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .collect::<Vec<_>>()
        .join("\n");
    let client = support::client_from(&anonymous.replace("  user:\n", "  user: {}\n")).await;
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces")
        .body(Vec::new())
        .unwrap();
    match client.request_text(req).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 401),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_write_only_their_own_objects() {
    let s = TestServer::start().await;
    let n1 = s.client_as("system:node:n1", &["system:nodes"]).await;
    let nodes: Api<Node> = Api::all(n1.clone());
    let node =
        |name: &str| serde_json::from_value::<Node>(json!({"metadata": {"name": name}})).unwrap();
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .expect("a node registers itself");
    match nodes.create(&PostParams::default(), &node("n2")).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden")),
        other => panic!("a node made another node: {other:?}"),
    }
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "nodes may read"
    );
    let cms: Api<ConfigMap> = Api::namespaced(n1, "default");
    match cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("{other:?}"),
    }
    let stranger = s.client_as("jane", &["developers"]).await;
    match Api::<Node>::all(stranger)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

/// Nodes are cluster-scoped: `nodes/<n>/proxy` under a namespace names nothing (a RoleBinding
/// in that namespace must not be what lets a request through to a kubelet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_nodes_proxy_path_is_not_found() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}
    }))
    .unwrap();
    nodes
        .create(&kube::api::PostParams::default(), &node)
        .await
        .unwrap();
    let (code, reason, _) = status_of(
        &client,
        "GET",
        "/api/v1/namespaces/default/nodes/n1/proxy/healthz",
        "application/json",
        b"",
    )
    .await;
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
}
