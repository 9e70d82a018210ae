//! trellis-net against the real kernel: every operation the plugins and agents rely on, inside
//! namespaces of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use netns_testbed::{Testbed, require_root, require_tool};
use trellis_net::{Family, Mac, Route, RouteKind, Scope, VethSpec, VxlanSpec, sysctl};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// flannel's data path built with trellis-net alone: VTEPs, then per remote node a permanent
/// neighbour, an FDB entry (NTF_SELF) and an onlink route — and a pod-to-pod ping through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_overlay_by_hand_carries_pod_traffic() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n1 = tb.add_node("n1", 1).await.unwrap();
    let n2 = tb.add_node("n2", 2).await.unwrap();
    let mut vteps = Vec::new();
    for (i, node) in [&n1, &n2].into_iter().enumerate() {
        let h = node.ns.connect().unwrap();
        let eth0 = h.require_link("eth0").await.unwrap();
        let mac = Mac::local_from(node.name.as_bytes());
        let spec = VxlanSpec {
            name: "trellis.1".into(),
            vni: 1,
            local: node.ip,
            port: 8472,
            dev: Some(eth0.index),
            learning: false,
            mtu: Some(1450),
            mac: Some(mac),
        };
        let v = h.ensure_vxlan(&spec).await.unwrap();
        assert_eq!(v.mac, Some(mac));
        assert_eq!(v.mtu, 1450);
        let again = h.ensure_vxlan(&spec).await.unwrap();
        assert_eq!(
            again.index, v.index,
            "a matching VTEP is kept, not recreated"
        );
        h.ensure_address(v.index, net(&format!("10.244.{}.0/32", i + 1)))
            .await
            .unwrap();
        // The pod side: a bridge with the gateway and one pod on it.
        let br = h.ensure_bridge("trellis0", Some(1450)).await.unwrap();
        h.ensure_address(br.index, net(&format!("10.244.{}.1/24", i + 1)))
            .await
            .unwrap();
        vteps.push((h, v, mac, node.ip, br));
    }
    for i in 0..2 {
        let (h, v, _, _, _) = &vteps[i];
        let (_, _, rmac, rip, _) = &vteps[1 - i];
        let rvtep = ip(&format!("10.244.{}.0", 2 - i));
        h.ensure_neighbour(v.index, rvtep, *rmac).await.unwrap();
        h.ensure_fdb(v.index, *rmac, IpAddr::V4(*rip))
            .await
            .unwrap();
        h.ensure_fdb(v.index, *rmac, IpAddr::V4(*rip))
            .await
            .unwrap();
        let route = Route::via(net(&format!("10.244.{}.0/24", 2 - i)), rvtep)
            .oif(v.index)
            .onlink()
            .protocol(201);
        h.replace_route(&route).await.unwrap();
        h.replace_route(&route).await.unwrap();
        let fdb = h.fdb(v.index).await.unwrap();
        assert!(
            fdb.iter()
                .any(|e| e.mac == *rmac && e.dst == Some(IpAddr::V4(*rip)) && e.permanent),
            "{fdb:?}"
        );
        let neigh = h.neighbours(Some(v.index)).await.unwrap();
        assert!(
            neigh
                .iter()
                .any(|n| n.ip == rvtep && n.mac == Some(*rmac) && n.permanent),
            "{neigh:?}"
        );
        let routes = h.routes(Family::V4, None).await.unwrap();
        let ours = routes.iter().find(|r| r.dst == route.dst).unwrap();
        assert!(
            ours.onlink && ours.protocol == 201 && ours.gateway == Some(rvtep),
            "{ours:?}"
        );
    }
    // Pods on each node's bridge.
    let mut pods = Vec::new();
    for (i, node) in [&n1, &n2].into_iter().enumerate() {
        let pod = tb.add_ns(&format!("pod{i}")).await.unwrap();
        let h = node.ns.connect().unwrap();
        let host_end = format!("veth{i}");
        let spec = VethSpec {
            name: &host_end,
            peer_name: "eth0",
            peer_ns: Some(&pod),
            mtu: Some(1450),
            mac: None,
            peer_mac: None,
        };
        let pod_handle = pod.connect().unwrap();
        let l = h.ensure_veth(&spec, &pod_handle).await.unwrap();
        let again = h.ensure_veth(&spec, &pod_handle).await.unwrap();
        assert_eq!(again.index, l.index, "an intact pair is kept");
        h.set_controller(l.index, Some(vteps[i].4.index))
            .await
            .unwrap();
        h.set_hairpin(l.index, true).await.unwrap();
        h.set_up(l.index).await.unwrap();
        let pe = pod_handle.require_link("eth0").await.unwrap();
        pod_handle
            .ensure_address(pe.index, net(&format!("10.244.{}.5/24", i + 1)))
            .await
            .unwrap();
        pod_handle.set_up(pe.index).await.unwrap();
        pod_handle
            .replace_route(&Route::via(
                net("0.0.0.0/0"),
                ip(&format!("10.244.{}.1", i + 1)),
            ))
            .await
            .unwrap();
        let bridged = h.require_link(&host_end).await.unwrap();
        assert_eq!(bridged.controller, Some(vteps[i].4.index));
        pods.push(pod);
    }
    let out = tb
        .exec(
            &pods[0],
            &[
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1422",
                "10.244.2.5",
            ],
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(
        out.success(),
        "pod ping over the hand-built VXLAN failed: {}{}",
        out.stdout,
        out.stderr
    );
    let too_big = tb
        .exec(
            &pods[0],
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1423",
                "10.244.2.5",
            ],
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(
        !too_big.success(),
        "1423 bytes of payload must not fit an MTU of 1450"
    );

    // Removing the FDB entry breaks the path: it really carried the traffic.
    let (h, v, _, _, _) = &vteps[0];
    let (_, _, rmac, rip, _) = &vteps[1];
    assert!(
        h.delete_fdb(v.index, *rmac, IpAddr::V4(*rip))
            .await
            .unwrap()
    );
    assert!(
        !h.delete_fdb(v.index, *rmac, IpAddr::V4(*rip))
            .await
            .unwrap(),
        "deleting twice is fine"
    );
    let out = tb
        .exec(
            &pods[0],
            &["ping", "-c", "1", "-W", "1", "10.244.2.5"],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        !out.success(),
        "without the FDB entry nothing should get through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_addresses_neighbours_and_sysctls_are_idempotent() {
    require_root();
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("r").await.unwrap();
    let h = ns.connect().unwrap();
    let br = h.ensure_bridge("br-test", None).await.unwrap();
    assert!(br.admin_up);

    // Addresses: ensure twice, set_addresses replaces a stale one.
    h.ensure_address(br.index, net("10.1.0.1/24"))
        .await
        .unwrap();
    h.ensure_address(br.index, net("10.1.0.1/24"))
        .await
        .unwrap();
    h.set_addresses(br.index, &[net("10.2.0.1/24")])
        .await
        .unwrap();
    let have: Vec<IpNet> = h
        .addresses(Some(br.index))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert!(
        have.contains(&net("10.2.0.1/24")) && !have.contains(&net("10.1.0.1/24")),
        "{have:?}"
    );
    assert!(
        h.delete_address(br.index, net("10.2.0.1/24"))
            .await
            .unwrap()
    );
    assert!(
        !h.delete_address(br.index, net("10.2.0.1/24"))
            .await
            .unwrap()
    );
    h.ensure_address(br.index, net("10.2.0.1/24"))
        .await
        .unwrap();

    // Routes: scope link, blackhole, another table, replace, delete twice.
    let dev_route = Route::dev(net("10.9.9.9/32"), br.index).protocol(201);
    h.replace_route(&dev_route).await.unwrap();
    let blackhole = Route::blackhole(net("10.244.7.0/26")).protocol(201);
    h.replace_route(&blackhole).await.unwrap();
    let in_table = Route::via(net("10.50.0.0/16"), ip("10.2.0.254")).table(1000);
    h.replace_route(&in_table).await.unwrap();
    let all = h.routes(Family::V4, None).await.unwrap();
    let find = |dst: &str| all.iter().find(|r| r.dst == net(dst)).cloned().unwrap();
    assert_eq!(find("10.9.9.9/32").scope, Scope::Link);
    assert_eq!(find("10.244.7.0/26").kind, RouteKind::Blackhole);
    assert_eq!(find("10.50.0.0/16").table, 1000);
    assert!(
        h.routes(Family::V4, Some(Route::TABLE_MAIN))
            .await
            .unwrap()
            .iter()
            .all(|r| r.table == Route::TABLE_MAIN)
    );
    let err = h.add_route(&blackhole).await.unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string().contains("10.244.7.0/26"),
        "the error names the route: {err}"
    );
    for r in [&dev_route, &blackhole, &in_table] {
        assert!(h.delete_route(r).await.unwrap(), "{r:?}");
        assert!(!h.delete_route(r).await.unwrap(), "second delete of {r:?}");
    }

    // Neighbours.
    let mac: Mac = "02:00:00:00:00:01".parse().unwrap();
    h.ensure_neighbour(br.index, ip("10.2.0.7"), mac)
        .await
        .unwrap();
    h.ensure_neighbour(br.index, ip("10.2.0.7"), mac)
        .await
        .unwrap();
    assert!(
        h.neighbours(Some(br.index))
            .await
            .unwrap()
            .iter()
            .any(|n| n.ip == ip("10.2.0.7") && n.permanent)
    );
    assert!(h.delete_neighbour(br.index, ip("10.2.0.7")).await.unwrap());
    assert!(!h.delete_neighbour(br.index, ip("10.2.0.7")).await.unwrap());

    // Sysctls are per namespace.
    sysctl::set(
        &ns,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net/ipv4/conf/br-test/proxy_arp", "1"),
        ],
    )
    .unwrap();
    assert_eq!(sysctl::get(&ns, "net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        sysctl::get(&ns, "net/ipv4/conf/br-test/proxy_arp").unwrap(),
        "1"
    );
    let other = tb.add_ns("other").await.unwrap();
    assert_eq!(
        sysctl::get(&other, "net.ipv4.ip_forward").unwrap(),
        "0",
        "another namespace is untouched"
    );

    // Links: wrong kind under a bridge's name is an error naming it; delete is idempotent.
    let veth = VethSpec {
        name: "notabridge",
        peer_name: "peer0",
        peer_ns: None,
        mtu: None,
        mac: None,
        peer_mac: None,
    };
    h.add_veth(&veth).await.unwrap();
    let err = h.ensure_bridge("notabridge", None).await.unwrap_err();
    assert!(err.to_string().contains("notabridge"), "{err}");
    assert!(h.delete_link("notabridge").await.unwrap());
    assert!(!h.delete_link("notabridge").await.unwrap());
    assert!(
        h.link("peer0").await.unwrap().is_none(),
        "the peer goes with it"
    );
    let err = h.require_link("nonexistent0").await.unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("nonexistent0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_created_entered_and_deleted() {
    require_root();
    let tb = Testbed::new().unwrap();
    let name = tb.ns_name("solo");
    let ns = trellis_net::Netns::create(tb.run_dir(), &name).unwrap();
    assert!(
        trellis_net::Netns::create(tb.run_dir(), &name).is_err(),
        "a taken name is refused"
    );
    let here = trellis_net::Netns::current().unwrap();
    assert!(!ns.same_as(&here));
    let inside = ns.run(|| trellis_net::Netns::current().unwrap()).unwrap();
    assert!(inside.same_as(&ns), "run() executes inside the namespace");
    assert!(
        trellis_net::Netns::current().unwrap().same_as(&here),
        "and the caller never moved"
    );
    // A command runs inside it too.
    let out = ns
        .command("cat")
        .unwrap()
        .arg("/proc/self/net/dev")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lo:") && !text.contains("eth0"), "{text}");
    assert!(trellis_net::Netns::delete(tb.run_dir(), &name).unwrap());
    assert!(
        !trellis_net::Netns::delete(tb.run_dir(), &name).unwrap(),
        "deleting twice is fine"
    );
    assert!(
        trellis_net::Netns::open(tb.run_dir().join(&name))
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        trellis_net::Netns::open("/etc/hostname").is_err(),
        "a plain file is not a namespace"
    );
    assert!(trellis_net::Netns::create(tb.run_dir(), "../escape").is_err());
}
