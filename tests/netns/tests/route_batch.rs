//! trellis-net's RouteWriter against the real kernel: route changes in batches (one sendmsg per
//! batch, only failures and the last request answered), each op's own outcome reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::{Testbed, require_root};
use trellis_net::{Family, Route, RouteOp, RouteWriter};

const PROTO: u8 = 186;

fn host(i: u32) -> IpNet {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base + i), 32).unwrap())
}

/// 1,000 routes in (several batches), a failure in the middle of a batch that takes only its
/// own op down, a delete of a missing route that is no error, and all of them out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_install_report_each_failure_and_remove() {
    require_root();
    let tb = Testbed::new().unwrap();
    let node = tb.add_node("n1", 1).await.unwrap();
    let gw: IpAddr = "198.18.0.12".parse().unwrap();
    let n = 1000;
    let mut ops: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Replace(Route::via(host(i), gw).protocol(PROTO)))
        .collect();
    // Unreachable gateway: the kernel refuses this one (ENETUNREACH), the rest go in.
    ops.insert(
        300,
        RouteOp::Replace(Route::via(host(n + 1), "192.168.77.1".parse().unwrap()).protocol(PROTO)),
    );
    ops.push(RouteOp::Delete(Route::to(host(n + 2)).protocol(PROTO)));
    let results = node
        .ns
        .run(move || RouteWriter::current().unwrap().apply(&ops))
        .unwrap();
    assert_eq!(results.len(), n as usize + 2);
    assert!(
        results[300].is_err(),
        "the unreachable gateway: {:?}",
        results[300]
    );
    assert_eq!(
        results.last().unwrap().as_ref().ok(),
        Some(&false),
        "a missing route"
    );
    let bad: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(i, r)| *i != 300 && *i != n as usize + 1 && !matches!(r, Ok(true)))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let h = node.ns.connect().unwrap();
    let ours = |routes: Vec<Route>| routes.into_iter().filter(|r| r.protocol == PROTO).count();
    assert_eq!(
        ours(h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap()),
        n as usize
    );
    // Replacing again changes nothing; then every one out.
    let again: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Replace(Route::via(host(i), gw).protocol(PROTO)))
        .chain((0..n).map(|i| RouteOp::Delete(Route::to(host(i)).protocol(PROTO))))
        .collect();
    let results = node
        .ns
        .run(move || RouteWriter::current().unwrap().apply(&again))
        .unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
    assert_eq!(
        ours(h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap()),
        0
    );
}
