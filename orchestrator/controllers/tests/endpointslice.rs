//! EndpointSlice and Endpoints controllers against the API server: endpoints follow pod
//! readiness and termination, and named target ports resolve per pod. (The `kubernetes`
//! Service is the API server's own: orchestrator/apiserver/tests/kubernetes_service.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn web_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}, "finalizers": ["test.trellis/hold"]},
        "spec": {"containers": [{"name": "c", "image": "nginx",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .unwrap()
}

/// (ip, ready, serving, terminating) of every endpoint in the service's slices.
async fn endpoints_of(client: &kube::Client, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items;
    let mut out: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready.unwrap_or(true),
                c.serving.unwrap_or(true),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

fn ip_of(p: &Pod) -> String {
    p.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_readiness_and_termination() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["endpointslice".to_string(), "endpoints".to_string()].into();
    })
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for n in ["a", "b", "c"] {
        pods_api
            .create(&PostParams::default(), &web_pod(n))
            .await
            .unwrap();
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let ready = wait_for("three ready endpoints", 60, || async {
        let e = endpoints_of(&client, "web").await;
        (e.len() == 3 && e.iter().all(|e| e.1 && e.2 && !e.3)).then_some(e)
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(list.len(), 1);
    let slice = &list[0];
    let l = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(
        l["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice.address_type, "IPv4");
    let port = &slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080)),
        "named targetPort resolved"
    );
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );

    // b stops passing readiness: not ready, not serving.
    let b = pods_api.get("b").await.unwrap();
    set_ready(&client, "default", "b", false).await;
    wait_for("b not ready", 30, || async {
        endpoints_of(&client, "web")
            .await
            .contains(&(ip_of(&b), false, false, false))
            .then_some(())
    })
    .await;
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    wait_for("Endpoints with b not ready", 30, || async {
        let e = eps.get_opt("web").await.unwrap()?;
        let sub = e.subsets?.into_iter().next()?;
        let nr: Vec<String> = sub
            .not_ready_addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.ip)
            .collect();
        let r = sub.addresses.unwrap_or_default().len();
        (nr == [ip_of(&b)] && r == 2 && sub.ports?[0].port == 8080).then_some(())
    })
    .await;

    // c is deleted but held by a finalizer: terminating, still serving, not ready.
    let c = pods_api.get("c").await.unwrap();
    pods_api
        .delete("c", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("c terminating", 30, || async {
        endpoints_of(&client, "web")
            .await
            .contains(&(ip_of(&c), false, true, true))
            .then_some(())
    })
    .await;
    // Released: gone from the slice.
    pods_api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let a = pods_api.get("a").await.unwrap();
    wait_for("only a and b left", 30, || async {
        let e = endpoints_of(&client, "web").await;
        let mut want = vec![
            (ip_of(&a), true, true, false),
            (ip_of(&b), false, false, false),
        ];
        want.sort();
        (e == want).then_some(())
    })
    .await;
    assert!(ready.len() == 3);
    // Settled: the slice is not rewritten over and over. A trailing write of the change just
    // observed may still land, so "before" is taken once two reads 300 ms apart agree.
    let rv = |s: &EndpointSlice| s.metadata.resource_version.clone();
    let versions = || async {
        slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap()
            .items
            .iter()
            .map(rv)
            .collect::<Vec<_>>()
    };
    let mut before = versions().await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = versions().await;
        if now == before {
            break;
        }
        before = now;
    }
    let before: Vec<EndpointSlice> = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(
        before.iter().map(rv).collect::<Vec<_>>(),
        after.iter().map(rv).collect::<Vec<_>>(),
        "slices churn"
    );
    for n in ["a", "b"] {
        pods_api
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
    }
    m.stop().await;
    s.stop().await;
}
