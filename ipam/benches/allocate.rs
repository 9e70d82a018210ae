//! Raw gRPC allocation throughput of one ipamd: 64 concurrent clients, each on its own
//! connection, each allocating 200 addresses one after another, then releasing them; against the
//! embedded API server (custom resources) and against the standalone store.
//!
//!     cargo bench -p trellis-ipam --bench allocate
//!
//! Goal: at least 5,000 allocations/s against the embedded API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_ipam::backend::Backend;
use trellis_ipam::backend::kube::KubeBackend;
use trellis_ipam::backend::local::LocalBackend;
use trellis_ipam::daemon::{self, BackendSpec, DaemonConfig};
use trellis_ipam::proto;

const CLIENTS: usize = 64;
const PER_CLIENT: usize = 200;

struct Figures {
    label: &'static str,
    alloc_per_s: f64,
    release_per_s: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(label: &'static str, backend: Arc<dyn Backend>, block_size: u32) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DaemonConfig::new(
        "bench-node",
        BackendSpec::Opened(backend),
        dir.path().join("ipamd.sock"),
    );
    config.gc_interval = None;
    let d = daemon::start(config).await.unwrap();
    let connect = || {
        trellis_ipam::client::connect(&d.socket, Duration::from_secs(5), Duration::from_secs(60))
    };
    connect()
        .await
        .unwrap()
        .create_pool(proto::Pool {
            name: "bench".into(),
            cidr: "10.80.0.0/12".into(),
            block_size,
            reserve_head: 2,
            reserve_tail: 1,
            gateway: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect().await.unwrap());
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(PER_CLIENT);
                for i in 0..PER_CLIENT {
                    let cid = format!("c{c}-{i}");
                    let t = Instant::now();
                    client
                        .allocate(proto::AllocateRequest {
                            handle: format!("bench.{cid}.eth0"),
                            families: vec![proto::Family::Ipv4 as i32],
                            network: "bench".into(),
                            container_id: cid,
                            ifname: "eth0".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let alloc = started.elapsed();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    let r = client
                        .release(proto::ReleaseRequest {
                            handle: format!("bench.c{c}-{i}.eth0"),
                        })
                        .await
                        .unwrap();
                    assert_eq!(r.into_inner().released.len(), 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let release = started.elapsed();
    let findings = connect()
        .await
        .unwrap()
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert!(findings.is_empty(), "{findings:?}");
    drop(clients);
    let (rounds, jobs) = d.engine.metrics().rounds();
    eprintln!(
        "{label}: {rounds} rounds served {jobs} requests ({:.1} per round)",
        jobs as f64 / rounds.max(1) as f64
    );
    d.shutdown().await;
    lat.sort();
    let n = (CLIENTS * PER_CLIENT) as f64;
    Figures {
        label,
        alloc_per_s: n / alloc.as_secs_f64(),
        release_per_s: n / release.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let api = trellis_apiserver::start(trellis_apiserver::Config::new(dir.path().join("api"), "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let client = trellis_api::cluster::client(Some(&api.kubeconfig)).await.unwrap();
        trellis_ipam::crds::install_crds(&client).await.unwrap();
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        let mut node = k8s_openapi::api::core::v1::Node::default();
        node.metadata.name = Some("bench-node".into());
        nodes.create(&Default::default(), &node).await.unwrap();
        let kube26 = run("API server, /26 blocks", Arc::new(KubeBackend::new(client.clone())), 26).await;
        // A fresh pool and blocks for the second run (the first one's blocks are left empty).
        let kube24 = {
            let backend: Arc<dyn Backend> = Arc::new(KubeBackend::new(client));
            for b in backend.list_blocks().await.unwrap() {
                backend.delete_block(&b.value.name, &b.version).await.unwrap();
            }
            backend.delete_pool("bench").await.unwrap();
            run("API server, /24 blocks", backend, 24).await
        };
        api.shutdown().await;
        let local = run(
            "standalone store, /24 blocks",
            Arc::new(LocalBackend::open(&dir.path().join("local.db")).unwrap()),
            24,
        )
        .await;
        println!(
            "ipamd gRPC: {CLIENTS} concurrent clients x {PER_CLIENT} allocations each ({} in all), one node",
            CLIENTS * PER_CLIENT
        );
        println!("{:<30} {:>14} {:>14} {:>12} {:>12}", "backend", "allocations/s", "releases/s", "alloc p50", "alloc p99");
        for f in [kube26, kube24, local] {
            println!(
                "{:<30} {:>14.0} {:>14.0} {:>9.2} ms {:>9.2} ms",
                f.label,
                f.alloc_per_s,
                f.release_per_s,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3
            );
        }
    });
}
