//! The testbed itself: nodes reach each other over the underlay, pods wired by hand with
//! trellis-net talk TCP, and nothing is left behind — also when a test panics midway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ipnet::IpNet;
use netns_testbed::{Testbed, leak, require_root, require_tool};
use trellis_net::{Route, VethSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ping_across_the_underlay() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let nodes = [
        tb.add_node("n1", 1).await.unwrap(),
        tb.add_node("n2", 2).await.unwrap(),
        tb.add_node("n3", 3).await.unwrap(),
    ];
    for a in &nodes {
        for b in &nodes {
            if a.name == b.name {
                continue;
            }
            let out = tb
                .exec(
                    &a.ns,
                    &["ping", "-c", "1", "-W", "2", &b.ip.to_string()],
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert!(
                out.success(),
                "{} cannot ping {} ({}): {}{}",
                a.name,
                b.name,
                b.ip,
                out.stdout,
                out.stderr
            );
        }
    }
    let run_dir = tb.run_dir().to_path_buf();
    drop(tb);
    leak::assert_clean(&prefix, &run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_wired_by_hand_talk_tcp() {
    require_root();
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let a = tb.add_ns("pa").await.unwrap();
    let b = tb.add_ns("pb").await.unwrap();

    // A veth pair from pod A to pod B, a /24 address on each end, and a route via it.
    let ha = a.connect().unwrap();
    let hb = b.connect().unwrap();
    let spec = VethSpec {
        name: "eth0",
        peer_name: "eth0",
        peer_ns: Some(&b),
        mtu: Some(1400),
        mac: None,
        peer_mac: None,
    };
    let la = ha.add_veth(&spec).await.unwrap();
    let lb = hb.require_link("eth0").await.unwrap();
    assert_eq!(
        lb.mtu, 1400,
        "the peer was created in B with the MTU asked for"
    );
    ha.ensure_address(la.index, "10.77.0.1/24".parse().unwrap())
        .await
        .unwrap();
    hb.ensure_address(lb.index, "10.77.0.2/24".parse().unwrap())
        .await
        .unwrap();
    ha.set_up(la.index).await.unwrap();
    hb.set_up(lb.index).await.unwrap();
    // B reaches a further network through A: a route of our own, installed twice (idempotent).
    let r = Route::via(
        "10.78.0.0/16".parse::<IpNet>().unwrap(),
        "10.77.0.1".parse().unwrap(),
    )
    .oif(lb.index);
    hb.replace_route(&r).await.unwrap();
    hb.replace_route(&r).await.unwrap();
    assert!(
        hb.routes(trellis_net::Family::V4, Some(Route::TABLE_MAIN))
            .await
            .unwrap()
            .iter()
            .any(|x| x.dst == r.dst)
    );

    // A TCP exchange: the listener's socket lives in A, the client's in B.
    let listener = a
        .run(|| TcpListener::bind("10.77.0.1:7070"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong!").unwrap();
        (buf, peer)
    });
    let addr: SocketAddr = "10.77.0.1:7070".parse().unwrap();
    let mut client = b
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    client.write_all(b"ping!").unwrap();
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping!");
    assert_eq!(&reply, b"pong!");
    assert_eq!(
        peer.ip().to_string(),
        "10.77.0.2",
        "the server sees the client's own address"
    );

    let run_dir = tb.run_dir().to_path_buf();
    drop(tb);
    leak::assert_clean(&prefix, &run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_panics_midway_leaves_nothing_behind() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        let tb = Testbed::new().unwrap();
        tx.send((tb.prefix().to_string(), tb.run_dir().to_path_buf()))
            .unwrap();
        let node = tb.add_node("n1", 1).await.unwrap();
        tb.add_ns("pod").await.unwrap();
        tb.spawn(&node.ns, &["sleep", "30"], Duration::from_secs(30))
            .unwrap();
        panic!("the test fails halfway through");
    });
    let outcome = task.await;
    assert!(
        outcome.is_err_and(|e| e.is_panic()),
        "the task must have panicked"
    );
    let (prefix, run_dir) = rx.recv().unwrap();
    leak::assert_clean(&prefix, &run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_check_finds_what_is_left() {
    require_root();
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let run_dir = tb.run_dir().to_path_buf();
    let ns = tb.add_ns("kept").await.unwrap();
    let pid = tb
        .spawn(&ns, &["sleep", "30"], Duration::from_secs(30))
        .unwrap();
    let found = leak::leftovers(&prefix, &run_dir);
    assert!(
        found.iter().any(|f| f.starts_with("namespace")),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.starts_with("process")), "{found:?}");
    tb.kill(pid);
    drop(tb);
    leak::assert_clean(&prefix, &run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_bounded_by_their_time_limit() {
    require_root();
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("t").await.unwrap();
    let started = std::time::Instant::now();
    let err = tb
        .exec(&ns, &["sleep", "20"], Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, netns_testbed::Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = tb
        .spawn(&ns, &["sleep", "20"], Duration::from_millis(300))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tb.running(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !tb.running(pid),
        "a background process dies at the end of its lifetime (300 ms; waited 5 s)"
    );
}
