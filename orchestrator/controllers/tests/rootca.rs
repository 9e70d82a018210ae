//! Root CA publisher: `kube-root-ca.crt` with the cluster CA in every namespace, new or old;
//! made again after a deletion and put back after an edit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

/// Waits until `ns` has a kube-root-ca.crt holding exactly `ca`.
async fn published(client: &kube::Client, ns: &str, ca: &str, what: &str) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(what, 30, || async {
        api.get_opt("kube-root-ca.crt").await.unwrap().filter(|cm| {
            cm.data
                .as_ref()
                .is_some_and(|d| d.len() == 1 && d.get("ca.crt").map(String::as_str) == Some(ca))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_the_cluster_ca_and_keeps_it() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let ca = s.running.ca_pem.clone();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["root-ca-cert-publisher".to_string()].into();
        c.root_ca = Some(ca.clone());
    })
    .await;
    for ns in ["default", "kube-system"] {
        let cm = published(&client, ns, &ca, &format!("kube-root-ca.crt in {ns}")).await;
        assert!(
            cm.metadata
                .annotations
                .unwrap_or_default()
                .contains_key("kubernetes.io/description")
        );
    }
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    published(
        &client,
        "team-a",
        &ca,
        "kube-root-ca.crt in a new namespace",
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    api.delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .unwrap();
    published(&client, "team-a", &ca, "it back after a deletion").await;
    let edit = json!({"data": {"ca.crt": "not the CA", "extra": "x"}});
    api.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(&edit),
    )
    .await
    .unwrap();
    published(&client, "team-a", &ca, "it corrected after an edit").await;
    m.stop().await;
    s.stop().await;
}
