//! Two API servers on one 3-member etcd: what one writes the other reads and watches at once,
//! and both keep working when an etcd member dies.

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
