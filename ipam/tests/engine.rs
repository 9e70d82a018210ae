//! ipamd through its gRPC API, on both backends: allocations unique under concurrency and across
//! nodes, idempotent, released exactly; requested addresses honoured or refused; dual-stack;
//! bad pools refused with nothing written; blocks claimed when full; borrowing only where a pool
//! allows it; node selectors; CNI GC and the leak pass; restarts lose nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use support::*;
use tonic::Code;
use trellis_ipam::backend::Backend;
use trellis_ipam::proto::{self, Family};

async fn concurrent_adds(
    socket: &std::path::Path,
    net: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let socket = socket.to_path_buf();
        let cid = format!("{prefix}-{i}");
        let net = net.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = client(&socket).await;
            let r = c
                .allocate(add(&net, &cid, &v4()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.addresses.len(), 1);
            r.addresses[0].address.clone()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn concurrent_dels(socket: &std::path::Path, net: &str, prefix: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let socket = socket.to_path_buf();
        let handle = format!("{net}.{prefix}-{i}.eth0");
        tasks.push(tokio::spawn(async move {
            let mut c = client(&socket).await;
            let r = c
                .release(proto::ReleaseRequest { handle })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.released.len(), 1, "each DEL frees its one address");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Three nodes, 64 concurrent allocations on each, then every release: all unique, all freed,
/// and the datastore consistent.
async fn three_nodes(backend: Arc<dyn Backend>) {
    let dir = scratch();
    let mut daemons = Vec::new();
    for n in ["node-a", "node-b", "node-c"] {
        daemons.push(daemon(n, backend.clone(), dir.path()).await);
    }
    let mut c = client(&daemons[0].socket).await;
    // Small blocks so the nodes claim several each and race for claims.
    c.create_pool(pool("pods", "10.40.0.0/16", 27))
        .await
        .unwrap();
    let mut all = Vec::new();
    let sockets: Vec<_> = daemons.iter().map(|d| d.socket.clone()).collect();
    let runs = sockets.iter().enumerate().map(|(i, s)| {
        let s = s.clone();
        async move { concurrent_adds(&s, "net", &format!("n{i}"), 64).await }
    });
    for got in futures::future::join_all(runs).await {
        all.extend(got);
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 192);
    assert_eq!(unique.len(), 192, "an address was handed out twice");
    assert_eq!(held(backend.as_ref()).await.len(), 192);
    // Each node's addresses come from blocks affine to it (strict affinity).
    for b in backend.list_blocks().await.unwrap() {
        for a in &b.value.spec.allocations {
            assert_eq!(a.node, b.value.spec.node, "borrowed without permission");
        }
    }
    let check = c
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    let runs = sockets.iter().enumerate().map(|(i, s)| {
        let s = s.clone();
        async move { concurrent_dels(&s, "net", &format!("n{i}"), 64).await }
    });
    futures::future::join_all(runs).await;
    assert!(
        held(backend.as_ref()).await.is_empty(),
        "every address is freed"
    );
    let check = c
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    for d in daemons {
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_api_server_without_duplicates() {
    let cluster = Cluster::start().await;
    for n in ["node-a", "node-b", "node-c"] {
        cluster.add_node(n, &[]).await;
    }
    three_nodes(cluster.backend()).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_share_one_standalone_store_without_duplicates() {
    let dir = scratch();
    three_nodes(local_backend(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_is_idempotent_and_release_is_forgiving() {
    let dir = scratch();
    let d = daemon("n1", local_backend(dir.path()), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.41.0.0/24", 24))
        .await
        .unwrap();
    let first = c
        .allocate(add("net", "a", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.addresses[0].address, "10.41.0.2/24");
    assert_eq!(first.addresses[0].gateway, "10.41.0.1");
    // A runtime retrying ADD after a crash gets the same address.
    let again = c
        .allocate(add("net", "a", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.addresses, first.addresses);
    let held = c
        .check(proto::CheckRequest {
            handle: "net.a.eth0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.addresses, first.addresses);
    let r = c
        .release(proto::ReleaseRequest {
            handle: "net.a.eth0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released, ["10.41.0.2/24"]);
    for handle in ["net.a.eth0", "never.seen.eth0"] {
        let r = c
            .release(proto::ReleaseRequest {
                handle: handle.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.released.is_empty(),
            "releasing twice or the unknown succeeds"
        );
    }
    // Released addresses are handed out again.
    let next = c
        .allocate(add("net", "b", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.addresses[0].address, "10.41.0.2/24");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_are_honoured_or_refused_clearly() {
    let dir = scratch();
    let backend = local_backend(dir.path());
    let d = daemon("n1", backend.clone(), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.42.0.0/16", 24))
        .await
        .unwrap();
    let mut req = add("net", "a", &[]);
    req.requested = vec!["10.42.7.9/24".into()];
    let got = c.allocate(req).await.unwrap().into_inner();
    assert_eq!(got.addresses[0].address, "10.42.7.9/24");
    assert_eq!(
        got.addresses[0].block, "10-42-7-0-24",
        "the block is claimed for the node"
    );
    let cases: [(&str, Code, &str); 5] = [
        (
            "10.42.7.9",
            Code::AlreadyExists,
            "already allocated to \"net.a.eth0\"",
        ),
        ("10.99.0.1", Code::InvalidArgument, "outside every pool"),
        ("10.42.8.1", Code::InvalidArgument, "reserved"),
        ("10.42.8.255", Code::InvalidArgument, "reserved"),
        ("not-an-ip", Code::InvalidArgument, "not an IP address"),
    ];
    for (ip, code, says) in cases {
        let mut req = add("net", "b", &[]);
        req.requested = vec![ip.into()];
        let e = c.allocate(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{ip}: {e:?}");
        assert!(e.message().contains(says), "{ip}: {}", e.message());
    }
    let mut two = add("net", "b", &[]);
    two.requested = vec!["10.42.9.5".into(), "10.42.9.6".into()];
    assert_eq!(
        c.allocate(two).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Nothing was allocated by the refusals.
    assert_eq!(
        held(backend.as_ref()).await,
        [("10.42.7.9".to_string(), "net.a.eth0".to_string())]
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_gets_one_address_of_each_family() {
    let dir = scratch();
    let d = daemon("n1", local_backend(dir.path()), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("v4", "10.43.0.0/16", 24)).await.unwrap();
    let mut v6 = pool("v6", "fd00:10:43::/64", 120);
    v6.reserve_tail = 0;
    c.create_pool(v6).await.unwrap();
    let got = c
        .allocate(add("net", "a", &[Family::Ipv4, Family::Ipv6]))
        .await
        .unwrap()
        .into_inner();
    let addrs: Vec<&str> = got.addresses.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(addrs, ["10.43.0.2/24", "fd00:10:43::2/120"]);
    assert_eq!(got.addresses[1].gateway, "fd00:10:43::1");
    // Asking for a family no pool serves is refused and takes nothing.
    let dir2 = scratch();
    let d2 = daemon("n2", local_backend(dir2.path()), dir2.path()).await;
    let mut c2 = client(&d2.socket).await;
    c2.create_pool(pool("v4", "10.44.0.0/16", 24))
        .await
        .unwrap();
    let e = c2
        .allocate(add("net", "a", &[Family::Ipv4, Family::Ipv6]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let usage = c2.usage(proto::UsageRequest {}).await.unwrap().into_inner();
    assert_eq!(usage.pools[0].allocated, 0, "the IPv4 half was not kept");
    d.shutdown().await;
    d2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pools_are_refused_and_nothing_is_written() {
    let dir = scratch();
    let d = daemon("n1", local_backend(dir.path()), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.45.0.0/16", 24))
        .await
        .unwrap();
    let mut tiny = pool("tiny", "10.46.0.0/30", 30);
    tiny.reserve_head = 2;
    tiny.reserve_tail = 2;
    let cases = [
        (pool("over", "10.45.128.0/17", 24), "overlaps pool \"pods\""),
        (tiny, "too small for its blocks"),
        (pool("big", "10.47.0.0/24", 16), "larger than the pool"),
        (pool("hostbits", "10.48.0.1/16", 24), "host bits"),
        (pool("pods", "10.49.0.0/16", 24), "exists"),
        (pool("cidr", "banana", 24), "not a CIDR"),
    ];
    for (p, says) in cases {
        let e = c.create_pool(p.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{p:?}");
        assert!(e.message().contains(says), "{}: {}", p.name, e.message());
    }
    let pools = c
        .list_pools(proto::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(pools.len(), 1);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_blocks_lead_to_claims_and_borrowing_only_where_allowed() {
    for borrowing in [false, true] {
        let dir = scratch();
        let backend = local_backend(dir.path());
        let a = daemon("a", backend.clone(), dir.path()).await;
        let b = daemon("b", backend.clone(), dir.path()).await;
        let mut ca = client(&a.socket).await;
        let mut cb = client(&b.socket).await;
        // Two /28 blocks of 16, nothing reserved.
        let mut p = pool("small", "10.50.0.0/27", 28);
        p.reserve_head = 0;
        p.reserve_tail = 0;
        p.gateway = false;
        p.allow_borrowing = borrowing;
        ca.create_pool(p).await.unwrap();
        for i in 0..20 {
            ca.allocate(add("net", &format!("a{i}"), &v4()))
                .await
                .unwrap();
        }
        let blocks = ca
            .list_blocks(proto::ListBlocksRequest { node: "a".into() })
            .await
            .unwrap()
            .into_inner()
            .blocks;
        assert_eq!(
            blocks.len(),
            2,
            "node a filled its block and claimed the next"
        );
        // Node b finds every block claimed: it borrows one of a's free ordinals only if allowed.
        let got = cb.allocate(add("net", "b0", &v4())).await;
        if borrowing {
            let got = got.unwrap().into_inner();
            assert_eq!(got.addresses[0].block, "10-50-0-16-28");
        } else {
            let e = got.unwrap_err();
            assert_eq!(e.code(), Code::ResourceExhausted);
            assert!(
                e.message().contains("do not allow borrowing"),
                "{}",
                e.message()
            );
        }
        // A released empty block can be given back, and the other node then claims it.
        for i in 16..20 {
            ca.release(proto::ReleaseRequest {
                handle: format!("net.a{i}.eth0"),
            })
            .await
            .unwrap();
        }
        if !borrowing {
            ca.release_block(proto::ReleaseBlockRequest {
                name: "10-50-0-16-28".into(),
            })
            .await
            .unwrap();
            let got = cb
                .allocate(add("net", "b0", &v4()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.addresses[0].block, "10-50-0-16-28");
            let e = ca
                .release_block(proto::ReleaseBlockRequest {
                    name: "10-50-0-0-28".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(
                e.code(),
                Code::FailedPrecondition,
                "a block in use is not released"
            );
        }
        let check = ca
            .consistency(proto::ConsistencyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(check.findings.is_empty(), "{:?}", check.findings);
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_follow_node_selectors_from_node_labels() {
    let cluster = Cluster::start().await;
    cluster.add_node("east-1", &[("zone", "east")]).await;
    cluster.add_node("west-1", &[("zone", "west")]).await;
    let dir = scratch();
    let east = daemon("east-1", cluster.backend(), dir.path()).await;
    let west = daemon("west-1", cluster.backend(), dir.path()).await;
    let mut ce = client(&east.socket).await;
    let mut p = pool("east", "10.51.0.0/16", 26);
    p.node_selector = "zone=east".into();
    ce.create_pool(p).await.unwrap();
    let got = ce
        .allocate(add("net", "e", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert!(got.addresses[0].address.starts_with("10.51."));
    let e = client(&west.socket)
        .await
        .allocate(add("net", "w", &v4()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message()
            .contains("no enabled ipv4 pool selects node \"west-1\""),
        "{}",
        e.message()
    );
    east.shutdown().await;
    west.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_gc_and_the_leak_pass_free_exactly_the_dead() {
    let cluster = Cluster::start().await;
    cluster.add_node("n1", &[]).await;
    let dir = scratch();
    let d = daemon("n1", cluster.backend(), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.52.0.0/16", 24))
        .await
        .unwrap();
    for cid in ["keep", "drop", "other"] {
        let net = if cid == "other" { "net2" } else { "net" };
        c.allocate(add(net, cid, &v4())).await.unwrap();
    }
    // A component's own address (not a CNI attachment) is never collected.
    c.allocate(proto::AllocateRequest {
        handle: "vtep-n1".into(),
        families: vec![Family::Ipv4 as i32],
        ..Default::default()
    })
    .await
    .unwrap();
    let gc = c
        .gc(proto::GcRequest {
            mode: Some(proto::gc_request::Mode::Cni(proto::CniGc {
                network: "net".into(),
                valid: vec![proto::Attachment {
                    container_id: "keep".into(),
                    ifname: "eth0".into(),
                }],
            })),
        })
        .await
        .unwrap()
        .into_inner();
    let freed: Vec<&str> = gc.freed.iter().map(|f| f.handle.as_str()).collect();
    assert_eq!(freed, ["net.drop.eth0"]);
    // The leak pass: "keep" has a cached result (live), "other" has none and no pod.
    let cache = dir.path().join("n1-cni").join("results");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("net-keep-eth0"), "{}").unwrap();
    let leaks = |grace: u64, dry_run: bool| proto::GcRequest {
        mode: Some(proto::gc_request::Mode::Leaks(proto::LeakGc {
            grace_seconds: Some(grace),
            dry_run,
        })),
    };
    let young = c.gc(leaks(3600, false)).await.unwrap().into_inner();
    assert!(
        young.freed.is_empty(),
        "nothing is older than the grace period"
    );
    let dry = c.gc(leaks(0, true)).await.unwrap().into_inner();
    assert_eq!(dry.freed.len(), 1);
    let gone = c.gc(leaks(0, false)).await.unwrap().into_inner();
    let freed: Vec<&str> = gone.freed.iter().map(|f| f.handle.as_str()).collect();
    assert_eq!(freed, ["net2.other.eth0"]);
    let left: BTreeSet<String> = held(cluster.backend().as_ref())
        .await
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["net.keep.eth0".to_string(), "vtep-n1".to_string()])
    );
    d.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_ipamd_knows_everything_it_handed_out() {
    let dir = scratch();
    let store = dir.path().join("store");
    let spec = trellis_ipam::daemon::BackendSpec::Local {
        path: store.join("ipam.db"),
    };
    let mut config =
        trellis_ipam::daemon::DaemonConfig::new("n1", spec, dir.path().join("ipamd.sock"));
    config.gc_interval = None;
    let d = trellis_ipam::daemon::start(config.clone()).await.unwrap();
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.53.0.0/16", 24))
        .await
        .unwrap();
    let first = c
        .allocate(add("net", "a", &v4()))
        .await
        .unwrap()
        .into_inner();
    drop(c);
    d.shutdown().await;
    let d = trellis_ipam::daemon::start(config).await.unwrap();
    let mut c = client(&d.socket).await;
    let again = c
        .allocate(add("net", "a", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.addresses, first.addresses,
        "the retried ADD gets the same address"
    );
    let other = c
        .allocate(add("net", "b", &v4()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.addresses[0].address, first.addresses[0].address);
    let show = c
        .show(proto::ShowRequest {
            address: "10.53.0.2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(show.state, "allocated");
    assert_eq!(show.allocation.unwrap().handle, "net.a.eth0");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_blocks_of_nodes_that_are_gone() {
    let cluster = Cluster::start().await;
    cluster.add_node("n1", &[]).await;
    let dir = scratch();
    let d = daemon("ghost", cluster.backend(), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.54.0.0/16", 24))
        .await
        .unwrap();
    c.allocate(add("net", "a", &v4())).await.unwrap();
    let findings = c
        .consistency(proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert_eq!(
        findings,
        ["block 10-54-0-0-24: claimed by node \"ghost\", which is gone"]
    );
    d.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let dir = scratch();
    let mut config = trellis_ipam::daemon::DaemonConfig::new(
        "n1",
        trellis_ipam::daemon::BackendSpec::Opened(local_backend(dir.path())),
        dir.path().join("ipamd.sock"),
    );
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.gc_interval = None;
    let d = trellis_ipam::daemon::start(config).await.unwrap();
    let mut c = client(&d.socket).await;
    c.create_pool(pool("pods", "10.55.0.0/24", 24))
        .await
        .unwrap();
    c.allocate(add("net", "a", &v4())).await.unwrap();
    let addr = d.metrics_addr.unwrap();
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let m = get("/metrics").await;
    assert!(
        m.contains("trellis_ipam_allocations_total{node=\"n1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("trellis_ipam_free_addresses{pool=\"pods\"} 252"),
        "{m}"
    );
    assert!(
        m.contains("trellis_ipam_allocation_duration_seconds_count{node=\"n1\"} 1"),
        "{m}"
    );
    // The socket is private to root.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    d.shutdown().await;
}
