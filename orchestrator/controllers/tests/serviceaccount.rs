//! ServiceAccount controller: a `default` ServiceAccount in every namespace, new or old, and
//! back after a deletion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["serviceaccount".to_string()].into();
    })
    .await;
    let default_in = |ns: &str| Api::<ServiceAccount>::namespaced(client.clone(), ns);
    for ns in ["default", "kube-system"] {
        let api = default_in(ns);
        wait_for("a default ServiceAccount", 30, || async {
            api.get_opt("default").await.unwrap()
        })
        .await;
    }
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    let api = default_in("team-a");
    wait_for("a default ServiceAccount in team-a", 30, || async {
        api.get_opt("default").await.unwrap()
    })
    .await;
    api.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("it back after a deletion", 30, || async {
        api.get_opt("default").await.unwrap()
    })
    .await;
    m.stop().await;
    s.stop().await;
}
