//! `default/kubernetes` is the API server's own (`--endpoint-reconciler-type lease`, the
//! default of `trellis apiserver`), on the embedded store: the Service, its Endpoints and its
//! EndpointSlice point at the advertised address, with the names and labels the service proxy
//! and the endpoint controllers match on; a change someone else makes is put back at the next
//! round, and a clean stop takes the address out. (Several API servers on etcd:
//! etcd_ha.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::PostParams;
use support::TestServer;
use trellis_apiserver::endpoints::Settings;

/// Polls `f` every 50 ms until it returns Some, for at most `secs`.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The addresses `default/kubernetes`'s Endpoints list.
fn endpoint_ips(e: &Endpoints) -> Vec<String> {
    e.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_points_at_the_advertised_address() {
    let settings = Settings {
        advertise: "198.18.0.21:6443".parse().unwrap(),
        cluster_ip: "10.96.0.1".parse().unwrap(),
        ttl: Duration::from_secs(30),
        interval: Duration::from_millis(200),
    };
    let s = TestServer::start_with(|c| c.endpoint_reconciler = Some(settings)).await;
    let client = s.client().await;

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = wait_for("the kubernetes Service", 20, || async {
        svcs.get_opt("kubernetes").await.unwrap()
    })
    .await;
    let labels = svc.metadata.labels.unwrap_or_default();
    assert_eq!(labels["component"], "apiserver");
    assert_eq!(labels["provider"], "kubernetes");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(
        spec.selector, None,
        "no selector: no endpoint controller writes it"
    );
    let p = &spec.ports.unwrap()[0];
    assert_eq!((p.name.as_deref(), p.port), (Some("https"), 443));
    assert_eq!(p.target_port, Some(IntOrString::Int(6443)));

    // What the service proxy matches on: the service-name label, the port by name.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = wait_for("its EndpointSlice", 20, || async {
        slices.get_opt("kubernetes").await.unwrap()
    })
    .await;
    assert_eq!(
        slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(slice.address_type, "IPv4");
    let sp = &slice.ports.unwrap()[0];
    assert_eq!((sp.name.as_deref(), sp.port), (Some("https"), Some(6443)));
    assert_eq!(slice.endpoints.len(), 1);
    assert_eq!(slice.endpoints[0].addresses, ["198.18.0.21"]);
    assert_eq!(
        slice.endpoints[0].conditions.as_ref().and_then(|c| c.ready),
        Some(true)
    );

    // The Endpoints, marked so that no mirroring controller writes a second slice.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let e = wait_for("its Endpoints", 20, || async {
        eps.get_opt("kubernetes").await.unwrap()
    })
    .await;
    assert_eq!(
        e.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/skip-mirror"],
        "true"
    );
    assert_eq!(endpoint_ips(&e), ["198.18.0.21"]);
    let port = &e.subsets.as_ref().unwrap()[0].ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 6443));

    // One writer: someone else's change is put back at the next round.
    let mut wrong = e.clone();
    wrong.subsets.as_mut().unwrap()[0]
        .addresses
        .as_mut()
        .unwrap()[0]
        .ip = "198.18.0.99".into();
    eps.replace("kubernetes", &PostParams::default(), &wrong)
        .await
        .unwrap();
    wait_for("the Endpoints put back", 20, || async {
        let e = eps.get("kubernetes").await.unwrap();
        (endpoint_ips(&e) == ["198.18.0.21"]).then_some(())
    })
    .await;

    // A clean stop takes this API server out at once (its lease would last 30 s); the data
    // stays, so a second server on the same directory sees what the first left.
    let dir = s.dir;
    s.running.shutdown().await;
    let reader = TestServer::start_with(|c| c.data_dir = dir.path().to_path_buf()).await;
    let client = reader.client().await;
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        endpoint_ips(&eps.get("kubernetes").await.unwrap()),
        Vec::<String>::new(),
        "the stopped API server's address is gone"
    );
    let svcs: Api<Service> = Api::namespaced(client, "default");
    assert!(
        svcs.get_opt("kubernetes").await.unwrap().is_some(),
        "the Service stays"
    );
    reader.stop().await;
    drop(dir);
}
