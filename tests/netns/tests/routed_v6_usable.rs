//! What makes a routed pod's IPv6 usable the moment ADD returns, shown on a veth wired by hand
//! as `trellis_plugin::routed` wires it (the pod's /128, the host end's `fe80::1` gateway with
//! a permanent neighbour entry, the default route through it), with duplicate address
//! detection left on and slow on both ends (3 probes 5 s apart: 15 s, where the kernel's
//! default is ~1 s — the same state, long enough that no scheduling delay of a loaded machine
//! can end it before the ping):
//!
//! - the negative control: addresses added as `ip addr add` adds them are "tentative", the
//!   kernel does not route them `local`, and the pod's first ping6 to its gateway fails;
//! - the plugin's way: added with `IFA_F_NODAD`, then `await_usable` (links up, every IPv6
//!   address routed `local`): nothing is tentative, and the first ping6 succeeds, whatever
//!   the DAD settings.
//!
//! The plugin's own promise (the first ping6 right after a real ADD) is in `cni_kit_routed`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use netns_testbed::{Testbed, require_root, require_tool};
use trellis_net::{Handle, Netns, Route, VethSpec};
use trellis_plugin::routed::{Ends, GATEWAY_V6, USABLE_WITHIN, await_usable, not_yet_usable};

const POD_IP: &str = "fd00:96::5/128";

/// DAD on, 3 probes 5 s apart, on `ifname` in `ns`.
fn slow_dad(ns: &Netns, ifname: &str) {
    let keys = [
        (format!("net/ipv6/conf/{ifname}/accept_dad"), "1"),
        (format!("net/ipv6/conf/{ifname}/dad_transmits"), "3"),
        (format!("net/ipv6/neigh/{ifname}/retrans_time_ms"), "5000"),
    ];
    let keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    trellis_net::sysctl::set(ns, &keys).unwrap();
}

/// A node, a pod and the routed veth between them, wired with `nodad` or not; the handles
/// and indexes (host end, pod end).
async fn wire(
    tb: &Testbed,
    tag: &str,
    nodad: bool,
) -> (std::sync::Arc<Netns>, Handle, Handle, u32, u32) {
    let node = tb.add_ns(&format!("n{tag}")).await.unwrap();
    let pod = tb.add_ns(&format!("p{tag}")).await.unwrap();
    let host = node.connect().unwrap();
    let podh = pod.connect().unwrap();
    let host_end = host
        .add_veth(&VethSpec {
            name: "trv6",
            peer_name: "eth0",
            peer_ns: Some(&pod),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    let pod_index = podh.require_link("eth0").await.unwrap().index;
    slow_dad(&node, "trv6");
    slow_dad(&pod, "eth0");
    let add = async |h: &Handle, index: u32, a: IpNet| {
        if nodad {
            h.add_address_nodad(index, a).await.unwrap();
        } else {
            h.add_address(index, a).await.unwrap();
        }
    };
    host.set_up(host_end.index).await.unwrap();
    add(&host, host_end.index, "fe80::1/64".parse().unwrap()).await;
    podh.set_up(pod_index).await.unwrap();
    add(&podh, pod_index, POD_IP.parse().unwrap()).await;
    let gw = IpAddr::V6(GATEWAY_V6);
    podh.ensure_neighbour(pod_index, gw, host_end.mac.unwrap())
        .await
        .unwrap();
    podh.replace_route(&Route::via("::/0".parse().unwrap(), gw).oif(pod_index))
        .await
        .unwrap();
    host.replace_route(&Route::dev(POD_IP.parse().unwrap(), host_end.index))
        .await
        .unwrap();
    (pod, host, podh, host_end.index, pod_index)
}

async fn first_ping6(tb: &Testbed, pod: &Netns) -> netns_testbed::process::Output {
    tb.exec(
        pod,
        &["ping", "-6", "-c", "1", "-W", "2", "fe80::1%eth0"],
        Duration::from_secs(8),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dad_on_a_new_address_is_tentative_and_the_first_ping6_fails() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let (pod, host, podh, host_index, pod_index) = wire(&tb, "dad", false).await;
    let pod_ip: IpNet = POD_IP.parse().unwrap();
    let addrs = podh.addresses(Some(pod_index)).await.unwrap();
    let a = addrs.iter().find(|a| a.address == pod_ip).unwrap();
    assert!(a.tentative, "{addrs:?}");
    assert!(!podh.is_local(pod_ip.addr(), None).await.unwrap());
    let ends = Ends {
        host: &host,
        host_index,
        pod: &podh,
        pod_index,
        addresses: &[pod_ip],
    };
    let missing = not_yet_usable(&ends).await.unwrap();
    assert!(
        missing.iter().any(|m| m.contains("fd00:96::5")),
        "{missing:?}"
    );
    let out = first_ping6(&tb, &pod).await;
    assert!(
        !out.success(),
        "ping6 worked through tentative addresses: {}",
        out.stdout
    );
    // The wait would not hide it: past its bound, "try again later" naming what is missing.
    let e = await_usable(&ends, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(e.code, trellis_cni::Code::TRY_AGAIN_LATER, "{e}");
    assert!(e.details.contains("fd00:96::5"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nodad_and_the_wait_the_first_ping6_succeeds() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let (pod, host, podh, host_index, pod_index) = wire(&tb, "nodad", true).await;
    let pod_ip: IpNet = POD_IP.parse().unwrap();
    let ends = Ends {
        host: &host,
        host_index,
        pod: &podh,
        pod_index,
        addresses: &[pod_ip],
    };
    await_usable(&ends, USABLE_WITHIN).await.unwrap();
    let addrs = podh.addresses(Some(pod_index)).await.unwrap();
    let a = addrs.iter().find(|a| a.address == pod_ip).unwrap();
    assert!(!a.tentative, "{addrs:?}");
    assert!(
        host.is_local(
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            Some(host_index)
        )
        .await
        .unwrap()
    );
    let out = first_ping6(&tb, &pod).await;
    assert!(
        out.success(),
        "the first ping6 after the wait: {}{}",
        out.stdout,
        out.stderr
    );
}
