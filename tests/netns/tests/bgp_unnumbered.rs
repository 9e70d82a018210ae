//! Unnumbered BGP with BIRD 2 (issue 18): sessions to link-local peer addresses
//! (`--peer [fe80::…%ll0]:ASN`, BIRD's `neighbor fe80::…%ll0`) over a link that has no
//! global addresses at all, link-local-only next hops both ways on it (our kernel gets `via
//! fe80::… dev ll0`, BIRD's the same toward us), a pod's ping6 through them; and `--listen
//! [::]:179` taking BIRD's own connection over IPv6.
//!
//! Each node has its `eth0` on the testbed underlay (IPv4 only here); the unnumbered link is a
//! veth pair `ll0` between the two node namespaces. Every wait is bounded; the testbed removes
//! every namespace (with its veths and ip6tables rules) and process when dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use netns_testbed::bird::{Agent, AgentSpec, Bird, BirdConfig, BirdPeer, PROTO_BIRD};
use netns_testbed::{Node, Testbed, bin_path, require_root, require_tool, unnumbered};
use std::sync::Arc;
use trellis_net::proto::BGP as PROTO_TRELLIS;
use trellis_net::{Family, Link, Netns, Route, VethSpec};

const LIFETIME: Duration = Duration::from_secs(180);
const SESSION: Duration = Duration::from_secs(20);
const PROPAGATE: Duration = Duration::from_secs(10);

/// BIRD's block (a /122 with an address on BIRD's loopback) and ours (a pod's).
const BIRD_BLOCK: &str = "fd00:10:245::/122";
const BIRD_ADDR: &str = "fd00:10:245::1";
const OUR_BLOCK: &str = "fd00:10:244::/122";
const POD_ADDR: &str = "fd00:10:244::2";
/// The agent's node IPv6 address (`--ipv6-address`, on its loopback), as unnumbered fabrics
/// give each node one: the "global" next hop of its IPv6 blocks, which the peer across the
/// unnumbered link cannot reach directly.
const AGENT_LOOPBACK: &str = "fd00:99::12";

async fn nodes(tb: &Testbed, n: u8) -> Vec<Node> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(tb.add_node(&format!("n{i}"), i).await.unwrap());
    }
    v
}

async fn ip(tb: &Testbed, node: &Node, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    tb.exec_ok(&node.ns, &argv, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("ip {args:?} on {}: {e}", node.name));
}

/// A pod namespace joined to `node` by a veth, `eth0` in the pod and `pod0` on the node, both
/// up (without duplicate address detection: usable at once).
async fn pod_veth(tb: &Testbed, node: &Node) -> (Arc<Netns>, Link, Link) {
    let pod = tb.add_ns("pod").await.unwrap();
    let h = node.ns.connect().unwrap();
    h.add_veth(&VethSpec {
        name: "pod0",
        peer_name: "eth0",
        peer_ns: Some(&pod),
        mtu: None,
        mac: None,
        peer_mac: None,
    })
    .await
    .unwrap();
    trellis_net::sysctl::set(&node.ns, &[("net/ipv6/conf/pod0/accept_dad", "0")]).unwrap();
    trellis_net::sysctl::set(&pod, &[("net/ipv6/conf/eth0/accept_dad", "0")]).unwrap();
    let pod0 = h.require_link("pod0").await.unwrap();
    h.set_up(pod0.index).await.unwrap();
    let hp = pod.connect().unwrap();
    let eth0 = hp.require_link("eth0").await.unwrap();
    hp.set_up(eth0.index).await.unwrap();
    (pod, pod0, eth0)
}

/// A pod on `node`: a namespace whose `eth0` (address `addr`/128) is a veth to `node`'s
/// `pod0`; default route via the node's link-local address, the node's /128 route to it.
async fn add_pod(tb: &Testbed, node: &Node, addr: &str) -> Arc<Netns> {
    let (pod, pod0, eth0) = pod_veth(tb, node).await;
    let (h, hp) = (node.ns.connect().unwrap(), pod.connect().unwrap());
    hp.add_address_nodad(eth0.index, format!("{addr}/128").parse().unwrap())
        .await
        .unwrap();
    let gw = unnumbered::link_local(&h, "pod0").await.unwrap();
    hp.replace_route(&Route::via("::/0".parse().unwrap(), IpAddr::V6(gw)).oif(eth0.index))
        .await
        .unwrap();
    h.replace_route(&Route::dev(
        format!("{addr}/128").parse().unwrap(),
        pod0.index,
    ))
    .await
    .unwrap();
    let target: IpAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !hp.is_local(target, None).await.unwrap() {
        assert!(Instant::now() < deadline, "{addr} never became local");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pod
}

/// Puts `addr` (a /128, or a /32 for IPv4) on `node`'s loopback, usable at once.
async fn loopback_address(node: &Node, addr: &str) {
    let len = if addr.contains(':') { 128 } else { 32 };
    node.add_usable_address("lo", format!("{addr}/{len}").parse().unwrap())
        .await
        .unwrap();
}

/// BIRD on n1 and `trellis bgp-agent --dual-stack` on n2, joined by `ll0`, a link with
/// link-local addresses only; each names the other's link-local address with the interface
/// (BIRD `neighbor fe80::…%ll0`, ours `--peer [fe80::…%ll0]:64512`). BIRD announces its block
/// with its link-local address as next hop (the only one it has on the link): our kernel routes
/// it `via <BIRD's fe80> dev ll0`; ours reaches BIRD's kernel `via <our fe80> dev ll0` (we send
/// our link-local address in both next-hop fields, not the global `--ipv6-address`, which BIRD
/// cannot reach), and a pod's ping6 goes to an address behind BIRD and back.
///
/// Negative controls: before the session the pod's ping6 does not get through (no route); the
/// same link-local next hop on the underlay interface — the route the agent made before, when
/// every link-local next hop went to `--iface` — does not reach BIRD (the agent's resync then
/// puts `dev ll0` back); and a link-local `--peer` without its interface is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnumbered_session_with_bird_routes_ipv6_via_link_local_next_hops() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (bird_ll, agent_ll) = unnumbered::link(&n[0], &n[1], "ll0").await.unwrap();
    let ll0 = n[1]
        .ns
        .connect()
        .unwrap()
        .require_link("ll0")
        .await
        .unwrap()
        .index;
    let bird_ll0 = n[0]
        .ns
        .connect()
        .unwrap()
        .require_link("ll0")
        .await
        .unwrap()
        .index;
    loopback_address(&n[0], BIRD_ADDR).await;
    loopback_address(&n[1], AGENT_LOOPBACK).await;
    let pod = add_pod(&tb, &n[1], POD_ADDR).await;

    // A link-local peer address without its interface means nothing: refused at start.
    let out = tb
        .exec(
            &n[1].ns,
            &[
                bin_path("trellis").to_str().unwrap(),
                "bgp-agent",
                "--standalone",
                "--iface",
                "eth0",
                "--dual-stack",
                "--ipv6-address",
                AGENT_LOOPBACK,
                "--peer",
                &format!("[{bird_ll}]:64512"),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        !out.success(),
        "started with a link-local peer and no interface"
    );
    assert!(
        out.stderr.contains("needs its interface"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let bird = Bird::start(
        &tb,
        &n[0],
        BirdConfig::new(&n[0], 64512)
            .ipv6(BIRD_ADDR.parse().unwrap())
            .announce6(BIRD_BLOCK.parse().unwrap())
            .peer(BirdPeer::new("agent", agent_ll, 64512).on_interface("ll0")),
        LIFETIME,
    )
    .await
    .unwrap();
    // Nothing routes the pod to BIRD's block yet.
    assert!(
        !ping_from_pod(&tb, &pod, BIRD_ADDR).await,
        "ping6 got through before any session"
    );

    let mut spec = AgentSpec::new(64512);
    let announce = tb.state_dir().join("announce6");
    std::fs::write(&announce, format!("{OUR_BLOCK}\n")).unwrap();
    spec.announce_file = Some(announce);
    spec.listen = Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179)));
    spec.extra = [
        "--dual-stack",
        "--ipv6-address",
        AGENT_LOOPBACK,
        "--peer",
        &format!("[{bird_ll}%ll0]:64512"),
    ]
    .map(String::from)
    .to_vec();
    let mut agent = Agent::start(&tb, &n[1], spec, LIFETIME).await.unwrap();
    bird.wait_established("agent", SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    agent
        .wait_established(bird_ll, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nBIRD:\n{}", bird.log_tail(40)));

    // BIRD's block: its link-local next hop, on the session's interface.
    expect_route_via6(
        &n[1],
        BIRD_BLOCK,
        bird_ll,
        ll0,
        PROTO_TRELLIS,
        "BIRD's block in our kernel",
    )
    .await;
    // Ours in BIRD's kernel: via our link-local address on ll0.
    expect_route_via6(
        &n[0],
        OUR_BLOCK,
        agent_ll,
        bird_ll0,
        PROTO_BIRD,
        "our block in BIRD's kernel",
    )
    .await;
    let next_hop = birds_next_hop(&bird, OUR_BLOCK).await;
    assert!(
        next_hop.contains(&agent_ll.to_string()) && !next_hop.contains(AGENT_LOOPBACK),
        "our next hop as BIRD got it: {next_hop}"
    );
    eprintln!(
        "BIRD's view of our block: {}; ours of BIRD's: {:?}",
        next_hop.trim(),
        routes_to(&n[1], BIRD_BLOCK).await
    );

    // The pod reaches the address behind BIRD, and the answer comes back, over ll0.
    let deadline = Instant::now() + PROPAGATE;
    while !ping_from_pod(&tb, &pod, BIRD_ADDR).await {
        assert!(
            Instant::now() < deadline,
            "ping6 {BIRD_ADDR} from the pod: no answer; routes {:?}",
            routes_to(&n[1], BIRD_BLOCK).await
        );
    }

    // What the agent installed before (a link-local next hop on the underlay interface) does
    // not reach BIRD… (the agent is stopped meanwhile: its routes stay, as after a crash)
    agent.stop();
    ip(
        &tb,
        &n[1],
        &[
            "-6",
            "route",
            "replace",
            BIRD_BLOCK,
            "via",
            &bird_ll.to_string(),
            "dev",
            "eth0",
            "proto",
            "202",
            "metric",
            "20",
        ],
    )
    .await;
    assert!(
        !ping_from_pod(&tb, &pod, BIRD_ADDR).await,
        "ping6 got through via the underlay: {:?}",
        routes_to(&n[1], BIRD_BLOCK).await
    );
    // …and the agent, started again, puts the route back on ll0 when its restart's deferral
    // ends (one route: replaced, not added beside).
    restart_until_back_on(&mut agent, &n[1], BIRD_BLOCK, ll0).await;
    assert!(
        ping_from_pod(&tb, &pod, BIRD_ADDR).await,
        "ping6 after the restart"
    );
}

/// `--listen [::]:179` takes BIRD's own connection over IPv6: our connections to BIRD are
/// rejected (ip6tables in our namespace, outgoing SYNs to port 179), so the only session there
/// can be is the one BIRD opens to our port 179 — it comes up, and `ss` shows it on our port
/// 179. The negative control: with `--listen <our IPv4>:179` (what the default `0.0.0.0:179`
/// amounts to for IPv6 peers) and the same rule, no session within 3 of BIRD's connect retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_ipv6_takes_birds_connection() {
    require_root();
    require_tool("ip6tables", "iptables");
    require_tool("ss", "iproute2");
    for (listen_v6, negative) in [(true, false), (false, true)] {
        let tb = Testbed::new().unwrap();
        let n = nodes(&tb, 2).await;
        let v6 = [
            tb.add_ipv6(&n[0], 1).await.unwrap(),
            tb.add_ipv6(&n[1], 2).await.unwrap(),
        ];
        // Our side never completes a connection of its own.
        tb.exec_ok(
            &n[1].ns,
            &[
                "ip6tables",
                "-w",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--dport",
                "179",
                "--syn",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let bird = Bird::start(
            &tb,
            &n[0],
            BirdConfig::new(&n[0], 64512)
                .ipv6(v6[0])
                .announce6(BIRD_BLOCK.parse().unwrap())
                .peer(BirdPeer::new("agent", v6[1], 64512)),
            LIFETIME,
        )
        .await
        .unwrap();
        let mut spec = AgentSpec::new(64512).peer(v6[0], 64512);
        spec.listen = Some(if listen_v6 {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179))
        } else {
            SocketAddr::from((n[1].ip, 179))
        });
        spec.extra = vec!["--dual-stack".into()];
        let agent = Agent::start(&tb, &n[1], spec, LIFETIME).await.unwrap();
        if negative {
            // BIRD retries every 2 s (after a 1 s delay): three tries and more.
            let waited = Duration::from_secs(8);
            let start = Instant::now();
            while start.elapsed() < waited {
                let p = bird.protocol("agent").await.unwrap().unwrap();
                assert!(
                    !p.established(),
                    "established without our IPv6 listener: {p:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        bird.wait_established("agent", SESSION)
            .await
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
        agent.wait_established(v6[0], SESSION).await.unwrap();
        let ss = tb
            .exec_ok(
                &n[1].ns,
                &["ss", "-Htn", "state", "established"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let ours = format!("[{}]:179", v6[1]);
        let theirs = format!("[{}]:", v6[0]);
        assert!(
            ss.lines().any(|l| l.contains(&ours) && l.contains(&theirs)),
            "no session on our port 179 from BIRD:\n{ss}"
        );
        // Both families travel on it: BIRD's IPv6 block is in our kernel via its address.
        let deadline = Instant::now() + PROPAGATE;
        loop {
            let found = routes_to(&n[1], BIRD_BLOCK).await;
            if found
                .iter()
                .any(|r| r.gateway == Some(IpAddr::V6(v6[0])) && r.protocol == PROTO_TRELLIS)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD's IPv6 block in our kernel: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// BIRD's IPv4 block (an address of it on BIRD's loopback), ours (a pod's), and the pods'
/// gateway (Calico's).
const BIRD_BLOCK4: &str = "10.245.0.0/26";
const BIRD_ADDR4: &str = "10.245.0.1";
const OUR_BLOCK4: &str = "10.244.0.0/26";
const POD_ADDR4: &str = "10.244.0.2";
const POD_GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// BIRD's AS: a top-of-rack switch in an AS of its own (eBGP, as BGP unnumbered fabrics run).
const TOR_ASN: u32 = 65001;

/// An IPv4 pod on `node`: `eth0` (address `addr`/32) a veth to `node`'s `pod0`, which holds
/// the pods' gateway 169.254.1.1/32; the pod's default route via it, the node's /32 route to
/// the pod.
async fn add_pod4(tb: &Testbed, node: &Node, addr: &str) -> Arc<Netns> {
    let (pod, pod0, eth0) = pod_veth(tb, node).await;
    let (h, hp) = (node.ns.connect().unwrap(), pod.connect().unwrap());
    h.add_address(pod0.index, format!("{POD_GATEWAY4}/32").parse().unwrap())
        .await
        .unwrap();
    hp.add_address(eth0.index, format!("{addr}/32").parse().unwrap())
        .await
        .unwrap();
    hp.replace_route(&Route::dev(
        format!("{POD_GATEWAY4}/32").parse().unwrap(),
        eth0.index,
    ))
    .await
    .unwrap();
    hp.replace_route(
        &Route::via("0.0.0.0/0".parse().unwrap(), IpAddr::V4(POD_GATEWAY4)).oif(eth0.index),
    )
    .await
    .unwrap();
    h.replace_route(&Route::dev(
        format!("{addr}/32").parse().unwrap(),
        pod0.index,
    ))
    .await
    .unwrap();
    pod
}

/// `node`'s main-table routes to `prefix` (of its family).
async fn routes_to(node: &Node, prefix: &str) -> Vec<Route> {
    node.routes_to(prefix.parse().unwrap()).await.unwrap()
}

/// Waits (bounded) until `node` routes `prefix` (IPv6, or IPv4 `via inet6`) via the IPv6 `gw`
/// on interface `oif`, protocol `proto`.
async fn expect_route_via6(
    node: &Node,
    prefix: &str,
    gw: Ipv6Addr,
    oif: u32,
    proto: u8,
    what: &str,
) {
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let found = routes_to(node, prefix).await;
        if found
            .iter()
            .any(|r| r.gateway == Some(IpAddr::V6(gw)) && r.oif == Some(oif) && r.protocol == proto)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no route {prefix} via {gw} dev {oif} proto {proto} within {PROPAGATE:?}; found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether one ping from `pod` to `to` (either family) is answered within 1 s.
async fn ping_from_pod(tb: &Testbed, pod: &Netns, to: &str) -> bool {
    let family = if to.contains(':') { "-6" } else { "-4" };
    let out = tb
        .exec(
            pod,
            &["ping", family, "-c", "1", "-W", "1", to],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    out.success()
}

/// The `BGP.next_hop:` line of BIRD's route to `prefix`.
async fn birds_next_hop(bird: &Bird<'_>, prefix: &str) -> String {
    let shown = bird.birdc(&["show", "route", "all", prefix]).await.unwrap();
    shown
        .lines()
        .find(|l| l.trim_start().starts_with("BGP.next_hop:"))
        .unwrap_or_else(|| panic!("no BGP.next_hop in BIRD's route:\n{shown}"))
        .to_string()
}

/// Restarts `agent` and waits (bounded) until `node` routes `prefix` again by one route on
/// interface `oif`: the restarted agent's resync replaced what was there (not added beside).
async fn restart_until_back_on(agent: &mut Agent<'_>, node: &Node, prefix: &str, oif: u32) {
    let spec = agent.spec.clone();
    agent.restart(spec).await.unwrap();
    let deadline = Instant::now() + SESSION;
    loop {
        let found = routes_to(node, prefix).await;
        if found.len() == 1 && found[0].oif == Some(oif) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the resync did not bring the route back to {oif}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// IPv4 routes of `node` with an IPv6 gateway (`via inet6`), any prefix.
async fn routes4_via_inet6(node: &Node) -> Vec<Route> {
    node.ns
        .connect()
        .unwrap()
        .routes(Family::V4, Some(Route::TABLE_MAIN))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.gateways().iter().any(IpAddr::is_ipv6))
        .collect()
}

/// BIRD (a ToR in AS 65001, `extended next hop` as given) on n1 and `trellis bgp-agent` on n2
/// (IPv4 only: no --dual-stack), joined by `ll0`, a link with link-local addresses only, each
/// peering with the other's link-local address on it; BIRD announces its IPv4 block, we ours.
/// The agent's pod and BIRD's address are up; returns BIRD, the agent, the pod, the two
/// link-local addresses and the indexes of `ll0` on n2 and on n1.
struct Rfc8950<'a> {
    bird: Bird<'a>,
    agent: Agent<'a>,
    pod: Arc<Netns>,
    bird_ll: Ipv6Addr,
    agent_ll: Ipv6Addr,
    ll0: u32,
    bird_ll0: u32,
}

/// `trellis bgp status` in `node`: the capabilities column (the last) of `peer`'s line, once
/// the line says Established (bounded).
async fn status_caps(tb: &Testbed, node: &Node, peer: Ipv6Addr) -> String {
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let out = tb
            .exec_ok(
                &node.ns,
                &[bin_path("trellis").to_str().unwrap(), "bgp", "status"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let line = out.lines().find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&peer.to_string().as_str()) && f.get(2) == Some(&"Established")
        });
        if let Some(caps) = line.and_then(|l| l.split_whitespace().last())
            && caps != "-"
        {
            assert!(
                out.lines().next().unwrap_or_default().ends_with("CAPS"),
                "{out}"
            );
            return caps.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no Established line with capabilities for {peer} within {PROPAGATE:?}:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rfc8950_setup<'a>(
    tb: &'a Testbed,
    n: &'a [Node],
    extended_next_hop: bool,
    agent_args: &[&str],
) -> Rfc8950<'a> {
    let (bird_ll, agent_ll) = unnumbered::link(&n[0], &n[1], "ll0").await.unwrap();
    let index = |node: &Node| {
        let h = node.ns.connect().unwrap();
        async move { h.require_link("ll0").await.unwrap().index }
    };
    let ll0 = index(&n[1]).await;
    let bird_ll0 = index(&n[0]).await;
    loopback_address(&n[0], BIRD_ADDR4).await;
    let pod = add_pod4(tb, &n[1], POD_ADDR4).await;
    let bird = Bird::start(
        tb,
        &n[0],
        BirdConfig::new(&n[0], TOR_ASN)
            .announce(BIRD_BLOCK4.parse().unwrap())
            .peer(
                BirdPeer::new("agent", agent_ll, 64512)
                    .on_interface("ll0")
                    .extended_next_hop(extended_next_hop),
            ),
        LIFETIME,
    )
    .await
    .unwrap();
    // Nothing routes the pod to BIRD's block yet.
    assert!(
        !ping_from_pod(tb, &pod, BIRD_ADDR4).await,
        "ping got through before any session"
    );
    let mut spec = AgentSpec::new(64512);
    let announce = tb.state_dir().join("announce4");
    std::fs::write(&announce, format!("{OUR_BLOCK4}\n")).unwrap();
    spec.announce_file = Some(announce);
    spec.listen = Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179)));
    spec.extra = vec!["--peer".into(), format!("[{bird_ll}%ll0]:{TOR_ASN}")];
    spec.extra.extend(agent_args.iter().map(|a| a.to_string()));
    let agent = Agent::start(tb, &n[1], spec, LIFETIME).await.unwrap();
    bird.wait_established("agent", SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    agent
        .wait_established(bird_ll, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nBIRD:\n{}", bird.log_tail(40)));
    Rfc8950 {
        bird,
        agent,
        pod,
        bird_ll,
        agent_ll,
        ll0,
        bird_ll0,
    }
}

/// RFC 8950 over an unnumbered session with BIRD (`ipv4 { extended next hop on; }`), the
/// agent IPv4 only: BIRD's IPv4 block lands in our kernel `via inet6 <BIRD's fe80> dev ll0`
/// (proto 202, metric 20), ours in BIRD's `via inet6 <our fe80> dev ll0`, BIRD got our
/// link-local address as next hop, and the pod's IPv4 ping reaches the address behind BIRD
/// and back over ll0. After an agent restart its resync finds the route (put on the underlay
/// interface meanwhile) and brings it back to ll0, one route. BIRD's withdrawal
/// (MP_UNREACH_NLRI for IPv4) takes the route out of our kernel again. (Before the session
/// the ping does not get through: no route.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_routes_cross_an_unnumbered_session_with_ipv6_next_hops_rfc_8950() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let Rfc8950 {
        mut bird,
        mut agent,
        pod,
        bird_ll,
        agent_ll,
        ll0,
        bird_ll0,
    } = rfc8950_setup(&tb, &n, true, &[]).await;
    // `trellis bgp status` shows what the session negotiated: IPv4 unicast with RFC 8950's
    // extended next hop.
    let caps = status_caps(&tb, &n[1], bird_ll).await;
    let caps: Vec<&str> = caps.split(',').collect();
    assert!(
        caps.contains(&"ENH") && caps.contains(&"ipv4"),
        "capabilities shown: {caps:?}"
    );

    expect_route_via6(
        &n[1],
        BIRD_BLOCK4,
        bird_ll,
        ll0,
        PROTO_TRELLIS,
        "BIRD's IPv4 block in our kernel",
    )
    .await;
    let shown = tb
        .exec_ok(
            &n[1].ns,
            &["ip", "-4", "route", "show", BIRD_BLOCK4],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        shown.contains(&format!("via inet6 {bird_ll} dev ll0"))
            && shown.contains("proto 202")
            && shown.contains("metric 20"),
        "our kernel's route: {shown}"
    );
    expect_route_via6(
        &n[0],
        OUR_BLOCK4,
        agent_ll,
        bird_ll0,
        PROTO_BIRD,
        "our IPv4 block in BIRD's kernel",
    )
    .await;
    let next_hop = birds_next_hop(&bird, OUR_BLOCK4).await;
    assert!(
        next_hop.contains(&agent_ll.to_string()),
        "our next hop as BIRD got it: {next_hop}"
    );
    eprintln!(
        "BIRD's view of our block: {}; ours of BIRD's: {}",
        next_hop.trim(),
        shown.trim()
    );

    // The pod reaches the address behind BIRD, and the answer comes back, over ll0.
    let deadline = Instant::now() + PROPAGATE;
    while !ping_from_pod(&tb, &pod, BIRD_ADDR4).await {
        assert!(
            Instant::now() < deadline,
            "ping {BIRD_ADDR4} from the pod: no answer; ours {:?}, BIRD's {:?}\nagent log:\n{}",
            routes_to(&n[1], BIRD_BLOCK4).await,
            routes_to(&n[0], OUR_BLOCK4).await,
            agent.log()
        );
    }

    // The agent restarts (its routes stay, as after a crash) and finds the route on the
    // underlay interface meanwhile: its resync reads the `via inet6` gateway back (RTA_VIA),
    // puts the route back on ll0, and keeps it (a gateway read as none would be swept as
    // stale, and the ping below would fail).
    agent.stop();
    ip(
        &tb,
        &n[1],
        &[
            "-4",
            "route",
            "replace",
            BIRD_BLOCK4,
            "via",
            "inet6",
            &bird_ll.to_string(),
            "dev",
            "eth0",
            "proto",
            "202",
            "metric",
            "20",
        ],
    )
    .await;
    restart_until_back_on(&mut agent, &n[1], BIRD_BLOCK4, ll0).await;
    let deadline = Instant::now() + PROPAGATE;
    while !ping_from_pod(&tb, &pod, BIRD_ADDR4).await {
        assert!(
            Instant::now() < deadline,
            "ping after the restart: routes {:?}\nagent log:\n{}",
            routes_to(&n[1], BIRD_BLOCK4).await,
            agent.log()
        );
    }
    assert_eq!(
        routes_to(&n[1], BIRD_BLOCK4).await.len(),
        1,
        "one route, replaced, not added beside"
    );

    // BIRD stops announcing its block: withdrawn (MP_UNREACH_NLRI, AFI 1), gone from our
    // kernel.
    let mut config = bird.config().clone();
    config.statics.clear();
    bird.reconfigure(config).await.unwrap();
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let found = routes_to(&n[1], BIRD_BLOCK4).await;
        if found.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD's withdrawal did not take its block out of our kernel: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !ping_from_pod(&tb, &pod, BIRD_ADDR4).await,
        "ping got through after the withdrawal"
    );
}

/// Negative control: BIRD with `extended next hop off` in its ipv4 channel (no RFC 8950 on its
/// side). The session comes up (IPv4 unicast negotiated), but no IPv4 route crosses it either
/// way: BIRD has no IPv4 next hop to give (it withdraws its block), and we send none with our
/// IPv4 address, which names nothing on a link without IPv4 (BIRD would have resolved it over
/// the testbed's shared underlay, `via 198.18.0.x dev eth0`, before this change). Our kernel
/// gets no route to BIRD's block and no IPv4 route via inet6, BIRD none to ours, and the pod's
/// ping does not get through. Watched for 3 seconds once the agent has received BIRD's
/// UPDATEs (its withdrawal and End-of-RIB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_peers_extended_next_hop_no_ipv4_route_crosses_the_unnumbered_session() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let Rfc8950 {
        bird,
        agent,
        pod,
        bird_ll,
        ..
    } = rfc8950_setup(&tb, &n, false, &[]).await;
    // Without BIRD's offer `trellis bgp status` shows no extended next hop, and no IPv4
    // unicast (unused on this session).
    let caps = status_caps(&tb, &n[1], bird_ll).await;
    let caps: Vec<&str> = caps.split(',').collect();
    assert!(
        !caps.contains(&"ENH") && !caps.contains(&"ipv4") && caps.contains(&"4B"),
        "capabilities shown: {caps:?}"
    );
    // BIRD's UPDATEs are in (its withdrawal, its End-of-RIB): what it sends has been taken.
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let status = agent.status().await.unwrap();
        let received = status
            .first()
            .and_then(|p| p["updates_received"].as_u64())
            .unwrap_or(0);
        if received >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no UPDATE from BIRD within {PROPAGATE:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watch = Duration::from_secs(3);
    let start = Instant::now();
    while start.elapsed() < watch {
        let ours = routes_to(&n[1], BIRD_BLOCK4).await;
        assert!(ours.is_empty(), "BIRD's block in our kernel: {ours:?}");
        let via6 = routes4_via_inet6(&n[1]).await;
        assert!(
            via6.is_empty(),
            "IPv4 routes via inet6 in our kernel: {via6:?}"
        );
        let via6 = routes4_via_inet6(&n[0]).await;
        assert!(
            via6.is_empty(),
            "IPv4 routes via inet6 in BIRD's kernel: {via6:?}"
        );
        let theirs = routes_to(&n[0], OUR_BLOCK4).await;
        assert!(theirs.is_empty(), "our block in BIRD's kernel: {theirs:?}");
        let shown = bird
            .birdc(&["show", "route", "protocol", "agent"])
            .await
            .unwrap();
        assert!(
            !shown.contains("10.244.0.0/26"),
            "BIRD got our IPv4 block: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !ping_from_pod(&tb, &pod, BIRD_ADDR4).await,
        "ping got through without RFC 8950"
    );
    // (birdc fails with "Network not found": what it says is shown.)
    let birds = bird
        .birdc(&["show", "route", "all", OUR_BLOCK4])
        .await
        .unwrap_or_else(|e| e.to_string());
    let status = agent.status().await.unwrap();
    eprintln!(
        "BIRD's route to our block: {}\nBIRD's kernel: {:?}\nagent status: {status:?}\nBIRD log:\n{}",
        birds.trim(),
        routes_to(&n[0], OUR_BLOCK4).await,
        bird.log_tail(20)
    );
}

/// `--extended-next-hop` offers RFC 8950 to a peer with a global IPv6 address too: BIRD (a ToR
/// in AS 65001, `extended next hop on`) over a session between the nodes' global IPv6
/// addresses on the underlay, the agent IPv4 only. With the flag, BIRD's IPv4 block lands in
/// our kernel `via inet6 <BIRD's IPv6 address>` and ours in BIRD's `via inet6 <ours>`. The
/// negative control without the flag keeps what was done before: the IPv4 blocks go both ways
/// with IPv4 next hops (the nodes' underlay addresses; BIRD falls back to its own without the
/// capability negotiated), and no route via inet6 shows up in either kernel (watched for 2 s
/// after both blocks are in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_next_hop_flag_carries_ipv4_via_ipv6_to_a_global_ipv6_peer() {
    require_root();
    for flag in [true, false] {
        let tb = Testbed::new().unwrap();
        let n = nodes(&tb, 2).await;
        let v6 = [
            tb.add_ipv6(&n[0], 1).await.unwrap(),
            tb.add_ipv6(&n[1], 2).await.unwrap(),
        ];
        let bird = Bird::start(
            &tb,
            &n[0],
            BirdConfig::new(&n[0], TOR_ASN)
                .ipv6(v6[0])
                .announce(BIRD_BLOCK4.parse().unwrap())
                .peer(BirdPeer::new("agent", v6[1], 64512).extended_next_hop(true)),
            LIFETIME,
        )
        .await
        .unwrap();
        let mut spec = AgentSpec::new(64512).peer(v6[0], TOR_ASN);
        let announce = tb.state_dir().join("announce4");
        std::fs::write(&announce, format!("{OUR_BLOCK4}\n")).unwrap();
        spec.announce_file = Some(announce);
        if flag {
            spec.extra = vec!["--extended-next-hop".into()];
        }
        let agent = Agent::start(&tb, &n[1], spec, LIFETIME).await.unwrap();
        bird.wait_established("agent", SESSION)
            .await
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
        agent
            .wait_established(v6[0], SESSION)
            .await
            .unwrap_or_else(|e| panic!("{e}\nBIRD:\n{}", bird.log_tail(40)));
        let wait_for = |node: &'static str, prefix: &'static str, gw: IpAddr, proto: u8| {
            let node = if node == "bird" { &n[0] } else { &n[1] };
            async move {
                let deadline = Instant::now() + PROPAGATE;
                loop {
                    let found = routes_to(node, prefix).await;
                    if found
                        .iter()
                        .any(|r| r.gateway == Some(gw) && r.protocol == proto)
                    {
                        return;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "flag {flag}: no route {prefix} via {gw} proto {proto} in {}: {found:?}",
                        node.name
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        if flag {
            wait_for("ours", BIRD_BLOCK4, IpAddr::V6(v6[0]), PROTO_TRELLIS).await;
            wait_for("bird", OUR_BLOCK4, IpAddr::V6(v6[1]), PROTO_BIRD).await;
            continue;
        }
        wait_for("bird", OUR_BLOCK4, IpAddr::V4(n[1].ip), PROTO_BIRD).await;
        wait_for("ours", BIRD_BLOCK4, IpAddr::V4(n[0].ip), PROTO_TRELLIS).await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            for node in &n {
                let via6 = routes4_via_inet6(node).await;
                assert!(
                    via6.is_empty(),
                    "without the flag, IPv4 routes via inet6 in {}: {via6:?}",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Issue 18: the unnumbered peer's interface deleted and created again with the same name (a
/// new index; the same MACs, so the same link-local addresses) is followed without an agent
/// restart, at once: the agent watches links (netlink), sees the name at another index, sets
/// the peer up again on it, the session comes back and BIRD's IPv4 block is routed `via inet6
/// … dev ll0` on the new interface, the pod's ping gets through again. The agent's resync
/// (the backstop) is 300 s here, beyond the test's bounds: only the watch can do it. While the interface is gone the
/// route is gone and the ping fails (the control: nothing else carries the traffic). Before
/// this change the agent kept the old index until it was restarted: its connections went to
/// a scope that no longer existed and the session never came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnumbered_peers_interface_created_again_is_followed_without_a_restart() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let Rfc8950 {
        bird,
        agent,
        pod,
        bird_ll,
        agent_ll,
        ll0,
        ..
    } = rfc8950_setup(&tb, &n, true, &["--resync", "300"]).await;
    expect_route_via6(
        &n[1],
        BIRD_BLOCK4,
        bird_ll,
        ll0,
        PROTO_TRELLIS,
        "BIRD's IPv4 block in our kernel",
    )
    .await;
    let (h0, h1) = (n[0].ns.connect().unwrap(), n[1].ns.connect().unwrap());
    let mac0 = h0.require_link("ll0").await.unwrap().mac;
    let mac1 = h1.require_link("ll0").await.unwrap().mac;

    // Gone (both ends of the veth): the kernel drops the route with it, the ping fails.
    assert!(h1.delete_link("ll0").await.unwrap());
    let deadline = Instant::now() + PROPAGATE;
    while !routes_to(&n[1], BIRD_BLOCK4).await.is_empty() {
        assert!(Instant::now() < deadline, "the route outlived ll0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !ping_from_pod(&tb, &pod, BIRD_ADDR4).await,
        "ping got through without ll0"
    );

    // Created again, same names and MACs: the same link-local addresses, a new index.
    h0.add_veth(&VethSpec {
        name: "ll0",
        peer_name: "ll0",
        peer_ns: Some(&n[1].ns),
        mtu: None,
        mac: mac0,
        peer_mac: mac1,
    })
    .await
    .unwrap();
    for (node, h) in [(&n[0], &h0), (&n[1], &h1)] {
        trellis_net::sysctl::set(&node.ns, &[("net/ipv6/conf/ll0/accept_dad", "0")]).unwrap();
        let link = h.require_link("ll0").await.unwrap();
        h.set_up(link.index).await.unwrap();
    }
    assert_eq!(unnumbered::link_local(&h0, "ll0").await.unwrap(), bird_ll);
    assert_eq!(unnumbered::link_local(&h1, "ll0").await.unwrap(), agent_ll);
    let new_ll0 = h1.require_link("ll0").await.unwrap().index;
    assert_ne!(new_ll0, ll0, "ll0 got its old index back");
    let recreated = Instant::now();

    // The session comes back on it, and BIRD's block is routed on the new ll0.
    let limit = Duration::from_secs(40);
    let deadline = Instant::now() + limit;
    loop {
        let found = routes_to(&n[1], BIRD_BLOCK4).await;
        if found
            .iter()
            .any(|r| r.gateway == Some(IpAddr::V6(bird_ll)) && r.oif == Some(new_ll0))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD's block not routed on the new ll0 ({new_ll0}) within {limit:?}: {found:?}\nagent log:\n{}\nBIRD:\n{}",
            agent.log(),
            bird.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "ll0 created again → BIRD's block routed on it: {:?}",
        recreated.elapsed()
    );
    assert!(
        agent.log().contains("interface changed"),
        "the agent did not say why the session started again"
    );
    let deadline = Instant::now() + PROPAGATE;
    while !ping_from_pod(&tb, &pod, BIRD_ADDR4).await {
        assert!(
            Instant::now() < deadline,
            "ping over the new ll0: no answer; routes {:?}",
            routes_to(&n[1], BIRD_BLOCK4).await
        );
    }
}
