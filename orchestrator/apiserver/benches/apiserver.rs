//! The API server benchmark: the embedded store and a real etcd (one member, loopback, same
//! disk) side by side, in one run, through kube-rs over HTTPS as real clients talk to it.
//!
//!     cargo bench -p trellis-apiserver --features etcd --bench apiserver
//!
//! Figures: create/get/update/delete latency p50/p99 with 10 concurrent clients; list of 10,000
//! pods (one request, and in pages of 500 as kubectl does); watch delivery latency p50/p99.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use trellis_apiserver::{Config, StoreSpec};

const CLIENTS: usize = 10;
const ROUNDS: usize = 100;
const PODS: usize = 10_000;
const WATCHED: usize = 500;

#[derive(Default)]
struct Figures {
    ops: Vec<(&'static str, Duration, Duration)>,
    list_all: Duration,
    list_paged: Duration,
    watch: (Duration, Duration),
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((p / 100.0) * v.len() as f64).ceil() as usize - 1]
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .unwrap()
}

async fn measure(label: &str, store: Option<StoreSpec>) -> Figures {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.store = store;
    let running = trellis_apiserver::start(config).await.unwrap();
    let mut f = Figures::default();

    eprintln!("{label}: create/get/update/delete, {CLIENTS} clients × {ROUNDS}");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let kubeconfig = running.kubeconfig.clone();
        tasks.push(tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(client(&kubeconfig).await, "default");
            let mut lat: [Vec<Duration>; 4] = Default::default();
            for r in 0..ROUNDS {
                let name = format!("bench-{c}-{r}");
                let t = Instant::now();
                let created = api
                    .create(&PostParams::default(), &cm(&name))
                    .await
                    .unwrap();
                lat[0].push(t.elapsed());
                let t = Instant::now();
                api.get(&name).await.unwrap();
                lat[1].push(t.elapsed());
                let mut changed = created;
                changed.data = Some([("k".to_string(), "w".to_string())].into());
                let t = Instant::now();
                api.replace(&name, &PostParams::default(), &changed)
                    .await
                    .unwrap();
                lat[2].push(t.elapsed());
                let t = Instant::now();
                api.delete(&name, &Default::default()).await.unwrap();
                lat[3].push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: [Vec<Duration>; 4] = Default::default();
    for t in tasks {
        for (i, l) in t.await.unwrap().into_iter().enumerate() {
            all[i].extend(l);
        }
    }
    for (i, name) in ["create", "get", "update", "delete"]
        .into_iter()
        .enumerate()
    {
        f.ops
            .push((name, pct(&mut all[i], 50.0), pct(&mut all[i], 99.0)));
    }

    eprintln!("{label}: list of {PODS} pods");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let kubeconfig = running.kubeconfig.clone();
        tasks.push(tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(client(&kubeconfig).await, "default");
            for i in (c..PODS).step_by(CLIENTS) {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.local/app:1.0"}]}
                }))
                .unwrap();
                api.create(&PostParams::default(), &pod).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client(&running.kubeconfig).await, "default");
    let t = Instant::now();
    let list = pods.list(&ListParams::default()).await.unwrap();
    f.list_all = t.elapsed();
    assert_eq!(list.items.len(), PODS);
    let t = Instant::now();
    let mut n = 0;
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = pods.list(&lp).await.unwrap();
        n += page.items.len();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    f.list_paged = t.elapsed();
    assert_eq!(n, PODS);

    eprintln!("{label}: watch delivery");
    let cms: Api<ConfigMap> = Api::namespaced(client(&running.kubeconfig).await, "kube-public");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed();
    let mut lat = Vec::new();
    for i in 0..WATCHED {
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm(&format!("w-{i}")))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                WatchEvent::Added(c) if c.metadata.name.as_deref() == Some(&format!("w-{i}")) => {
                    break;
                }
                _ => {}
            }
        }
        lat.push(t.elapsed());
    }
    f.watch = (pct(&mut lat, 50.0), pct(&mut lat, 99.0));
    running.shutdown().await;
    f
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ours = measure("embedded", None).await;
    netns_testbed::require_tool("etcd", "etcd-server");
    let etcd = netns_testbed::etcd::EtcdCluster::start(1).unwrap();
    let theirs = measure("etcd", Some(StoreSpec::Etcd(etcd.endpoints()))).await;
    drop(etcd);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "apiserver-bench: embedded store vs etcd 3.4 (one member, loopback, same disk), kube-rs over HTTPS, one run"
    );
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "figure", "embedded", "etcd", "ratio"
    );
    let row = |name: String, a: Duration, b: Duration| {
        println!(
            "{:<40} {:>9.2} ms {:>9.2} ms {:>7.2}x",
            name,
            ms(a),
            ms(b),
            ms(a) / ms(b).max(1e-9)
        );
    };
    for ((name, p50, p99), (_, e50, e99)) in ours.ops.iter().zip(&theirs.ops) {
        row(format!("{name} p50 ({CLIENTS} clients)"), *p50, *e50);
        row(format!("{name} p99 ({CLIENTS} clients)"), *p99, *e99);
    }
    row(
        format!("list {PODS} pods, one request"),
        ours.list_all,
        theirs.list_all,
    );
    row(
        format!("list {PODS} pods, pages of 500"),
        ours.list_paged,
        theirs.list_paged,
    );
    row("watch delivery p50".into(), ours.watch.0, theirs.watch.0);
    row("watch delivery p99".into(), ours.watch.1, theirs.watch.1);
}
