//! Data paths built by hand with trellis-net, exactly as the reference projects build them: the
//! yardsticks the benchmarks compare our agents' data paths with.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use trellis_net::{Mac, Netns, Route, VethSpec, VxlanSpec};

use crate::{Node, Result, Testbed};

/// Two pods on two nodes, and how they are reached.
pub struct PodPair {
    pub nodes: [Node; 2],
    pub pods: [Arc<Netns>; 2],
    pub ips: [Ipv4Addr; 2],
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|_| IpNet::V4(Default::default()))
}

/// flannel's VXLAN backend by hand: per node a VTEP (`flannel.1`, VNI 1, port 8472, no
/// learning, MTU 1450, the block's network address), a `cni0` bridge with the gateway, one pod
/// on it; per remote node a permanent neighbour, an FDB entry and an onlink route.
pub async fn flannel_vxlan(tb: &Testbed, first_node: u8) -> Result<PodPair> {
    let n1 = tb.add_node(&format!("hv{first_node}"), first_node).await?;
    let n2 = tb
        .add_node(&format!("hv{}", first_node + 1), first_node + 1)
        .await?;
    let nodes = [n1, n2];
    let mut vteps = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let h = node.ns.connect()?;
        let eth0 = h.require_link("eth0").await?;
        let mac = Mac::local_from(format!("handbuilt-{}", node.name).as_bytes());
        let spec = VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: node.ip,
            port: 8472,
            dev: Some(eth0.index),
            learning: false,
            mtu: Some(1450),
            mac: Some(mac),
        };
        let v = h.ensure_vxlan(&spec).await?;
        h.ensure_address(v.index, net(&format!("10.250.{}.0/32", i + 1)))
            .await?;
        let br = h.ensure_bridge("cni0", Some(1450)).await?;
        h.ensure_address(br.index, net(&format!("10.250.{}.1/24", i + 1)))
            .await?;
        vteps.push((h, v.index, mac, node.ip, br.index));
    }
    for i in 0..2 {
        let (h, vtep, _, _, _) = &vteps[i];
        let (_, _, rmac, rip, _) = &vteps[1 - i];
        let rvtep: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, (2 - i) as u8, 0));
        h.ensure_neighbour(*vtep, rvtep, *rmac).await?;
        h.ensure_fdb(*vtep, *rmac, IpAddr::V4(*rip)).await?;
        h.replace_route(
            &Route::via(net(&format!("10.250.{}.0/24", 2 - i)), rvtep)
                .oif(*vtep)
                .onlink(),
        )
        .await?;
    }
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let pod = tb.add_ns(&format!("hp{}", first_node + i as u8)).await?;
        let h = node.ns.connect()?;
        let host_end = format!("hveth{i}");
        let spec = VethSpec {
            name: &host_end,
            peer_name: "eth0",
            peer_ns: Some(&pod),
            mtu: Some(1450),
            mac: None,
            peer_mac: None,
        };
        let l = h.add_veth(&spec).await?;
        h.set_controller(l.index, Some(vteps[i].4)).await?;
        h.set_up(l.index).await?;
        let p = pod.connect()?;
        let pe = p.require_link("eth0").await?;
        let ip = Ipv4Addr::new(10, 250, (i + 1) as u8, 5);
        p.ensure_address(pe.index, net(&format!("{ip}/24"))).await?;
        p.set_up(pe.index).await?;
        p.replace_route(&Route::via(
            net("0.0.0.0/0"),
            IpAddr::V4(Ipv4Addr::new(10, 250, (i + 1) as u8, 1)),
        ))
        .await?;
        pods.push(pod);
        ips.push(ip);
    }
    let [a, b]: [Arc<Netns>; 2] = pods
        .try_into()
        .map_err(|_| crate::Error::Other("two pods".into()))?;
    Ok(PodPair {
        nodes,
        pods: [a, b],
        ips: [ips[0], ips[1]],
    })
}

/// flannel's iptables rules (`--ip-masq`, forward rules on) on the hand-built VXLAN path's
/// nodes: the `FLANNEL-POSTRTG` masquerade chain and the `FLANNEL-FWD` accept chain, as flanneld
/// writes them for cluster 10.250.0.0/16 and node blocks 10.250.<n>.0/24. They switch on
/// connection tracking and NAT lookups for every packet, which the `ip`-only path never pays.
pub async fn flannel_iptables(pair: &PodPair) -> Result<()> {
    use trellis_net::iptables::{IpFamily, Iptables, Table};
    let cluster = "10.250.0.0/16";
    for (i, node) in pair.nodes.iter().enumerate() {
        let block = format!("10.250.{}.0/24", i + 1);
        let ipt = Iptables::detect(Some(&node.ns), IpFamily::V4).await?;
        ipt.restore(&Table::new("nat").chain(
            "FLANNEL-POSTRTG",
            vec![
                "-m mark --mark 0x4000/0x4000 -j RETURN".into(),
                format!("-s {block} -d {cluster} -j RETURN"),
                format!("-s {cluster} -d {block} -j RETURN"),
                format!("! -s {cluster} -d {block} -j RETURN"),
                format!("-s {cluster} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"),
                format!("! -s {cluster} -d {cluster} -j MASQUERADE --random-fully"),
            ],
        ))
        .await?;
        ipt.ensure_rule("nat", "POSTROUTING", &["-j", "FLANNEL-POSTRTG"])
            .await?;
        ipt.restore(&Table::new("filter").chain(
            "FLANNEL-FWD",
            vec![
                format!("-s {cluster} -j ACCEPT"),
                format!("-d {cluster} -j ACCEPT"),
            ],
        ))
        .await?;
        ipt.ensure_rule("filter", "FORWARD", &["-j", "FLANNEL-FWD"])
            .await?;
    }
    Ok(())
}

/// Calico's routed data path by hand (what BIRD and the calico CNI plugin leave in the kernel):
/// per node a /26 block with a blackhole route, one pod with a /32 on a veth pair of its own (no
/// bridge) — in the pod `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1` and a
/// permanent neighbour entry for the gateway with the host end's MAC; on the host end proxy ARP
/// (no delay) and forwarding, and the host route `<pod>/32 dev <host end> scope link` — and per
/// remote node the route to its block via its underlay address. No encapsulation: every MTU is
/// the underlay's.
pub async fn calico_routed(tb: &Testbed, first_node: u8) -> Result<PodPair> {
    let n1 = tb.add_node(&format!("hr{first_node}"), first_node).await?;
    let n2 = tb
        .add_node(&format!("hr{}", first_node + 1), first_node + 1)
        .await?;
    let nodes = [n1, n2];
    let block = |i: usize| net(&format!("10.251.{}.0/26", i + 1));
    let gateway = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let h = node.ns.connect()?;
        let eth0 = h.require_link("eth0").await?;
        // Our own block: its unused addresses go nowhere else.
        h.replace_route(&Route::blackhole(block(i))).await?;
        // The other node's block, as BGP would have installed it.
        h.replace_route(&Route::via(block(1 - i), IpAddr::V4(nodes[1 - i].ip)).oif(eth0.index))
            .await?;

        let pod = tb.add_ns(&format!("hrp{}", first_node + i as u8)).await?;
        let host_end = format!("hcali{i}");
        let spec = VethSpec {
            name: &host_end,
            peer_name: "eth0",
            peer_ns: Some(&pod),
            mtu: Some(eth0.mtu),
            mac: None,
            peer_mac: None,
        };
        let l = h.add_veth(&spec).await?;
        let host_mac = l
            .mac
            .ok_or_else(|| crate::Error::Other(format!("{host_end} has no MAC")))?;
        trellis_net::sysctl::set(
            &node.ns,
            &[
                (&format!("net/ipv4/conf/{host_end}/proxy_arp"), "1"),
                (&format!("net/ipv4/neigh/{host_end}/proxy_delay"), "0"),
                (&format!("net/ipv4/conf/{host_end}/forwarding"), "1"),
            ],
        )?;
        h.set_up(l.index).await?;

        let p = pod.connect()?;
        let pe = p.require_link("eth0").await?;
        let ip = Ipv4Addr::new(10, 251, (i + 1) as u8, 5);
        p.set_up(pe.index).await?;
        p.ensure_address(pe.index, net(&format!("{ip}/32"))).await?;
        p.replace_route(&Route::dev(net("169.254.1.1/32"), pe.index))
            .await?;
        p.ensure_neighbour(pe.index, gateway, host_mac).await?;
        p.replace_route(&Route::via(net("0.0.0.0/0"), gateway).oif(pe.index))
            .await?;
        h.replace_route(&Route::dev(net(&format!("{ip}/32")), l.index))
            .await?;
        pods.push(pod);
        ips.push(ip);
    }
    let [a, b]: [Arc<Netns>; 2] = pods
        .try_into()
        .map_err(|_| crate::Error::Other("two pods".into()))?;
    Ok(PodPair {
        nodes,
        pods: [a, b],
        ips: [ips[0], ips[1]],
    })
}
