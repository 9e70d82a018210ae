//! Two API servers on one 3-member etcd: what one writes the other reads and watches at once,
//! and both keep working when an etcd member dies. With `--endpoint-reconciler-type lease`,
//! `default/kubernetes` lists the live API servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use netns_testbed::etcd::EtcdCluster;
use support::TestServer;

type Events = futures::stream::BoxStream<'static, Result<WatchEvent<ConfigMap>, kube::Error>>;

async fn expect_added(watch: &mut Events, name: &str) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), watch.try_next())
            .await
            .expect("the event arrives")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(c) if c.metadata.name.as_deref() == Some(name) => return,
            WatchEvent::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
}
use trellis_apiserver::StoreSpec;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}))
        .unwrap()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_share_one_etcd_and_survive_a_member_loss() {
    netns_testbed::require_tool("etcd", "etcd-server");
    let mut etcd = EtcdCluster::start(3).unwrap();
    let endpoints = etcd.endpoints();
    let a = TestServer::start_with(|c| c.store = Some(StoreSpec::Etcd(endpoints.clone()))).await;
    // The second server shares the first one's certificates, as control-plane peers do.
    let b_dir = tempfile::tempdir().unwrap();
    copy_dir(&a.dir.path().join("pki"), &b_dir.path().join("pki"));
    let b = TestServer::start_with(|c| {
        c.data_dir = b_dir.path().to_path_buf();
        c.store = Some(StoreSpec::Etcd(endpoints.clone()));
    })
    .await;
    let via_a: Api<ConfigMap> = Api::namespaced(a.client().await, "default");
    let via_b: Api<ConfigMap> = Api::namespaced(b.client().await, "default");

    let list = via_b.list(&ListParams::default()).await.unwrap();
    let mut watch: Events = via_b
        .watch(
            &WatchParams::default().timeout(120),
            &list.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    via_a
        .create(&PostParams::default(), &cm("one"))
        .await
        .unwrap();
    assert_eq!(
        via_b.get("one").await.unwrap().data.unwrap()["k"],
        "one",
        "a consistent read through the other server"
    );
    expect_added(&mut watch, "one").await;

    // Lose a member (the leader, the harder case), and keep going through both servers. The
    // leader is the one the members name, waited for: never a guess.
    let victim = etcd
        .wait_leader(Duration::from_secs(10))
        .expect("the etcd members agree on a leader");
    eprintln!("killing member {victim}, the leader");
    etcd.stop_member(victim);
    for i in 0..5 {
        let name = format!("after-{i}");
        let api = if i % 2 == 0 { &via_a } else { &via_b };
        let mut created = None;
        for _ in 0..20 {
            match api.create(&PostParams::default(), &cm(&name)).await {
                Ok(c) => {
                    created = Some(c);
                    break;
                }
                // While etcd elects a new leader, a write may be refused; the client retries.
                Err(kube::Error::Api(e)) if e.code == 503 || e.code == 500 || e.code == 504 => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(kube::Error::Api(e)) if e.code == 409 => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            created.is_some() || via_a.get(&name).await.is_ok(),
            "{name} was written"
        );
        expect_added(&mut watch, &name).await;
    }
    let names: Vec<String> = via_a
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    a.stop().await;
    b.stop().await;
    drop(etcd);
}

/// The addresses `default/kubernetes` lists: its Endpoints' and its EndpointSlice's, sorted.
async fn kubernetes_endpoints(client: &kube::Client) -> (Vec<String>, Vec<String>) {
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let ep = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
        .unwrap();
    let mut from_ep: Vec<String> = ep
        .into_iter()
        .flat_map(|e| e.subsets.unwrap_or_default())
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect();
    from_ep.sort();
    let slice = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
        .unwrap();
    let mut from_slice: Vec<String> = slice
        .into_iter()
        .flat_map(|s| s.endpoints)
        .flat_map(|e| e.addresses)
        .collect();
    from_slice.sort();
    (from_ep, from_slice)
}

/// Waits (bounded) until `default/kubernetes` lists exactly `want`.
async fn wait_endpoints(client: &kube::Client, want: &[&str], limit: Duration) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (ep, slice) = kubernetes_endpoints(client).await;
        if ep == want && slice == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "default/kubernetes lists {ep:?} (Endpoints), {slice:?} (EndpointSlice), not {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--endpoint-reconciler-type lease` on two API servers sharing etcd: the `kubernetes`
/// Service gets the range's first address, and its Endpoints and EndpointSlice list both
/// advertised addresses; a lease nobody renews (an API server that was killed) lists its
/// address until it runs out, then no more; an API server that stops cleanly takes itself out
/// at once (well within its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_reconciler_lists_live_api_servers_and_drops_the_others() {
    use k8s_openapi::api::core::v1::Service;
    use trellis_apiserver::endpoints::Settings;
    use trellis_store::Store as _;
    netns_testbed::require_tool("etcd", "etcd-server");
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoints = etcd.endpoints();
    // A 30 s lease: the clean stop below must take b out well before it runs out.
    let settings = |ip: &str| Settings {
        advertise: format!("{ip}:6443").parse().unwrap(),
        cluster_ip: "10.96.0.1".parse().unwrap(),
        ttl: Duration::from_secs(30),
        interval: Duration::from_millis(200),
    };
    let a = TestServer::start_with(|c| {
        c.store = Some(StoreSpec::Etcd(endpoints.clone()));
        c.endpoint_reconciler = Some(settings("127.0.0.11"));
    })
    .await;
    let b_dir = tempfile::tempdir().unwrap();
    copy_dir(&a.dir.path().join("pki"), &b_dir.path().join("pki"));
    let b = TestServer::start_with(|c| {
        c.data_dir = b_dir.path().to_path_buf();
        c.store = Some(StoreSpec::Etcd(endpoints.clone()));
        c.endpoint_reconciler = Some(settings("127.0.0.12"));
    })
    .await;
    let client = a.client().await;
    wait_endpoints(
        &client,
        &["127.0.0.11", "127.0.0.12"],
        Duration::from_secs(20),
    )
    .await;
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.port, 443);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6443))
    );

    // Another API server's lease, which nobody renews (that server was killed): listed while
    // it is live; once its time is up (written as run out, as if the time had passed), the
    // reconciler drops the address and the lease.
    let store = trellis_store::EtcdStore::connect(&endpoints).await.unwrap();
    let put_lease = async |expires_ms: u64| {
        let lease = serde_json::json!({"ip": "127.0.0.13", "port": 6443, "expires_ms": expires_ms});
        store
            .put(
                b"/registry/masterleases/127.0.0.13",
                lease.to_string().as_bytes(),
            )
            .await
            .unwrap();
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    put_lease(now_ms() + 600_000).await;
    wait_endpoints(
        &client,
        &["127.0.0.11", "127.0.0.12", "127.0.0.13"],
        Duration::from_secs(20),
    )
    .await;
    put_lease(now_ms()).await;
    wait_endpoints(
        &client,
        &["127.0.0.11", "127.0.0.12"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        store
            .get(b"/registry/masterleases/127.0.0.13")
            .await
            .unwrap()
            .is_none(),
        "the expired lease is removed"
    );

    // A clean stop: b takes itself out long before its 30 s lease would run out.
    let stopped = tokio::time::Instant::now();
    b.stop().await;
    wait_endpoints(&client, &["127.0.0.11"], Duration::from_secs(10)).await;
    println!(
        "b left default/kubernetes {:?} after its stop",
        stopped.elapsed()
    );
    a.stop().await;
}
