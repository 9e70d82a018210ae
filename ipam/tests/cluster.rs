//! The acceptance run through the real plugin binary: three nodes' ipamd against one API server
//! (and again against one standalone store), 64 concurrent CNI ADDs on each node, then every
//! DEL: every address unique, every address freed, `check` clean. And the plugin's answers when
//! ipamd is down. Needs root (a real network namespace for CNI_NETNS); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns_testbed::{Testbed, require_root};
use serde_json::{Value, json};
use support::*;
use trellis_ipam::backend::Backend;
use trellis_ipam::proto;

fn conf(socket: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "podnet",
        "type": "bridge",
        "ipam": {"type": "trellis-ipam", "socket": socket, "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

async fn burst(backend: Arc<dyn Backend>) {
    let tb = Testbed::new().unwrap();
    let pods = tb.add_ns("pods").await.unwrap();
    let dir = scratch();
    let bin = plugin::plugin_dir(dir.path());
    let mut daemons = Vec::new();
    for n in ["node-a", "node-b", "node-c"] {
        daemons.push(daemon(n, backend.clone(), dir.path()).await);
    }
    client(&daemons[0].socket)
        .await
        .create_pool(pool("pods", "10.60.0.0/16", 26))
        .await
        .unwrap();

    let started = Instant::now();
    let mut adds = Vec::new();
    for (n, d) in daemons.iter().enumerate() {
        for i in 0..64 {
            let (bin, ns, conf) = (
                bin.clone(),
                pods.path().to_path_buf(),
                conf(&d.socket, "1.0.0"),
            );
            adds.push(tokio::spawn(async move {
                let cid = format!("n{n}-pod{i}");
                let (code, out) = plugin::run(&bin, "ADD", &cid, Some(&ns), &conf).await;
                assert_eq!(code, 0, "ADD {cid}: {out}");
                out["ips"][0]["address"].as_str().unwrap().to_string()
            }));
        }
    }
    let mut addresses = Vec::new();
    for a in adds {
        addresses.push(a.await.unwrap());
    }
    eprintln!("192 concurrent ADDs in {:?}", started.elapsed());
    let unique: BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(
        unique.len(),
        192,
        "an address was handed out twice: {addresses:?}"
    );
    assert_eq!(held(backend.as_ref()).await.len(), 192);

    let mut c = client(&daemons[0].socket).await;
    let findings = c
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert!(findings.is_empty(), "{findings:?}");

    let mut dels = Vec::new();
    for (n, d) in daemons.iter().enumerate() {
        for i in 0..64 {
            let (bin, conf) = (bin.clone(), conf(&d.socket, "1.0.0"));
            dels.push(tokio::spawn(async move {
                let cid = format!("n{n}-pod{i}");
                let (code, out) = plugin::run(&bin, "DEL", &cid, None, &conf).await;
                assert_eq!(code, 0, "DEL {cid}: {out}");
            }));
        }
    }
    for d in dels {
        d.await.unwrap();
    }
    assert!(
        held(backend.as_ref()).await.is_empty(),
        "every address is freed"
    );
    let findings = c
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert!(findings.is_empty(), "{findings:?}");
    for d in daemons {
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_api_server_64_concurrent_adds_each() {
    require_root();
    let cluster = Cluster::start().await;
    for n in ["node-a", "node-b", "node-c"] {
        cluster.add_node(n, &[]).await;
    }
    burst(cluster.backend()).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_standalone_store_64_concurrent_adds_each() {
    require_root();
    let dir = scratch();
    burst(local_backend(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_never_pretends_while_ipamd_is_down() {
    require_root();
    let tb = Testbed::new().unwrap();
    let pod = tb.add_ns("pod").await.unwrap();
    let dir = scratch();
    let bin = plugin::plugin_dir(dir.path());
    let socket = dir.path().join("ipamd.sock");
    let conf11 = conf(&socket, "1.1.0");
    // ADD: code 11 at once.
    let t = Instant::now();
    let (code, out) = plugin::run(&bin, "ADD", "c1", Some(pod.path()), &conf11).await;
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "ADD waited {:?}",
        t.elapsed()
    );
    // DEL: retries for about a second, then 11 (the address may still be held).
    let t = Instant::now();
    let (code, out) = plugin::run(&bin, "DEL", "c1", Some(pod.path()), &conf11).await;
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    let (code, out) = plugin::run(&bin, "STATUS", "c1", None, &conf11).await;
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");

    // With ipamd up: ADD, CHECK against the prevResult, STATUS, GC keeping it, DEL.
    let d = daemon("n1", local_backend(dir.path()), dir.path()).await;
    let _ = std::fs::remove_file(&socket);
    std::os::unix::fs::symlink(&d.socket, &socket).unwrap();
    client(&d.socket)
        .await
        .create_pool(pool("pods", "10.61.0.0/16", 24))
        .await
        .unwrap();
    let (code, add) = plugin::run(&bin, "ADD", "c1", Some(pod.path()), &conf11).await;
    assert_eq!(code, 0, "{add}");
    assert_eq!(add["ips"][0]["address"], "10.61.0.2/24");
    assert_eq!(add["ips"][0]["gateway"], "10.61.0.1");
    assert_eq!(add["routes"][0]["dst"], "0.0.0.0/0");
    let mut with_prev = conf11.clone();
    with_prev["prevResult"] = add.clone();
    let (code, out) = plugin::run(&bin, "CHECK", "c1", Some(pod.path()), &with_prev).await;
    assert_eq!(code, 0, "{out}");
    let mut wrong = with_prev.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.61.0.77/24");
    let (code, out) = plugin::run(&bin, "CHECK", "c1", Some(pod.path()), &wrong).await;
    assert_eq!(code, 1, "CHECK notices an address it does not hold: {out}");
    let (code, out) = plugin::run(&bin, "STATUS", "c1", None, &conf11).await;
    assert_eq!(code, 0, "{out}");
    // Requested address through runtimeConfig, and a refusal (code 7) for a taken one.
    let mut req = conf11.clone();
    req["runtimeConfig"] = json!({"ips": ["10.61.0.9/24"]});
    let (code, out) = plugin::run(&bin, "ADD", "c2", Some(pod.path()), &req).await;
    assert_eq!(
        (code, out["ips"][0]["address"].as_str()),
        (0, Some("10.61.0.9/24")),
        "{out}"
    );
    let (code, out) = plugin::run(&bin, "ADD", "c3", Some(pod.path()), &req).await;
    assert_eq!((code, out["code"].as_u64()), (1, Some(7)), "{out}");
    let mut gc = conf11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (code, out) = plugin::run(&bin, "GC", "", None, &gc).await;
    assert_eq!(code, 0, "{out}");
    let left: Vec<String> = held(d.engine.backend().as_ref())
        .await
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        left,
        ["podnet.c1.eth0"],
        "GC freed the attachment the runtime no longer lists"
    );
    for _ in 0..2 {
        let (code, out) = plugin::run(&bin, "DEL", "c1", None, &with_prev).await;
        assert_eq!(code, 0, "{out}");
    }
    assert!(held(d.engine.backend().as_ref()).await.is_empty());
    d.shutdown().await;
}
