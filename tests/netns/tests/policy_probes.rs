//! The probes the policy tests judge by, checked on their own: two namespaces on a veth pair,
//! probe servers on 80 and 81 (TCP, UDP; SCTP where the kernel has it), hundreds of probes at
//! once against one server (more than 16 connections per server), and a port closed by a
//! DROP rule reads as denied — the probes tell allowed from denied, both ways. And the policy
//! cluster itself, without policyd or gate: every pod reaches every other on every port, in both
//! modes (the baseline the policy tests start from). And the UDP flow quarantine: a probe never
//! reuses the 5-tuple of an earlier answered one, which conntrack would pass as ESTABLISHED
//! whatever the rules say now (with the quarantine off, the same probing gets through).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::matrix::{
    Probe, ProbeServers, Proto, probe_all, probe_all_traced, probed_protocols, sctp_available,
    udp_flow_reuse,
};
use netns_testbed::{Testbed, leak, require_root, require_tool};
use trellis_net::{Netns, VethSpec};

/// Namespaces a (10.250.0.1) and b (10.250.0.2) on a veth pair; b's address.
async fn veth_pair(tb: &Testbed) -> (Arc<Netns>, Arc<Netns>, Ipv4Addr) {
    let a = tb.add_ns("a").await.unwrap();
    let b = tb.add_ns("b").await.unwrap();
    let ha = a.connect().unwrap();
    let link = ha
        .add_veth(&VethSpec {
            name: "eth0",
            peer_name: "eth0",
            peer_ns: Some(&b),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2));
    ha.ensure_address(link.index, IpNet::V4(Ipv4Net::new(ip_a, 24).unwrap()))
        .await
        .unwrap();
    ha.set_up(link.index).await.unwrap();
    let hb = b.connect().unwrap();
    let lb = hb.require_link("eth0").await.unwrap();
    hb.ensure_address(lb.index, IpNet::V4(Ipv4Net::new(ip_b, 24).unwrap()))
        .await
        .unwrap();
    hb.set_up(lb.index).await.unwrap();
    (a, b, ip_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_tell_allowed_from_denied_and_servers_take_hundreds_at_once() {
    require_root();
    require_tool("iptables", "iptables");
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let run_dir = tb.run_dir().to_path_buf();
    {
        let (a, b, ip_b) = veth_pair(&tb).await;

        let protos = probed_protocols();
        if !sctp_available() {
            eprintln!("this kernel gives out no SCTP sockets: SCTP is not probed here");
        }
        let servers =
            ProbeServers::start(&b, &[80, 81], &protos, Duration::from_secs(120)).unwrap();

        // 150 probes per port × protocol, all at once, against one server each.
        let mut probes = Vec::new();
        for port in [80, 81] {
            for proto in &protos {
                for _ in 0..150 {
                    probes.push(Probe {
                        from: a.clone(),
                        to: SocketAddrV4::new(ip_b, port),
                        proto: *proto,
                    });
                }
            }
        }
        let t = Instant::now();
        let got = probe_all(&probes, Duration::from_secs(5), 512)
            .await
            .unwrap();
        let failed = got.iter().filter(|ok| !**ok).count();
        assert_eq!(
            failed,
            0,
            "{failed} of {} probes failed with nothing in the way",
            got.len()
        );
        assert!(servers.served.load(Ordering::Relaxed) >= probes.len() as u64);
        eprintln!("{} probes answered in {:?}", probes.len(), t.elapsed());

        // Port 81 closed (both protocols) on b's input: 81 denied, 80 still allowed.
        for proto in ["tcp", "udp"] {
            tb.exec_ok(
                &b,
                &[
                    "iptables", "-w", "-A", "INPUT", "-p", proto, "--dport", "81", "-j", "DROP",
                ],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
        let probes: Vec<Probe> = [80, 81]
            .iter()
            .flat_map(|port| {
                [Proto::Tcp, Proto::Udp].map(|proto| Probe {
                    from: a.clone(),
                    to: SocketAddrV4::new(ip_b, *port),
                    proto,
                })
            })
            .collect();
        let t = Instant::now();
        let got = probe_all(&probes, Duration::from_millis(1500), 8)
            .await
            .unwrap();
        assert_eq!(
            got,
            [true, true, false, false],
            "80/TCP 80/UDP 81/TCP 81/UDP"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a denied probe is bounded: {:?}",
            t.elapsed()
        );
        // A REJECT (an ICMP error) reads as denied too, at once.
        tb.exec_ok(
            &b,
            &[
                "iptables", "-w", "-I", "INPUT", "-p", "udp", "--dport", "80", "-j", "REJECT",
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let got = probe_all(&probes[1..2], Duration::from_millis(1500), 1)
            .await
            .unwrap();
        assert_eq!(got, [false], "80/UDP rejected");
        drop(servers);
    }
    drop(tb);
    leak::assert_clean(&prefix, &run_dir);
}

/// What the restart test met (a forbidden UDP cell answered while the rules were in place):
/// b accepts ESTABLISHED first, as policyd's chains do; 16 answered probes leave conntrack
/// entries; then UDP 80 is dropped. a's source ports come from 128 only, so later probes draw
/// those ports again often. With the quarantine, 40 probes are all denied and none takes an
/// answered flow's port; with it off (the negative control), of 100 probes some take one and
/// get through, every one of them on an answered flow's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_probes_never_reuse_a_flow_that_conntrack_would_pass() {
    require_root();
    require_tool("iptables", "iptables");
    require_tool("sysctl", "procps");
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let run_dir = tb.run_dir().to_path_buf();
    {
        let (a, b, ip_b) = veth_pair(&tb).await;
        let limit = Duration::from_secs(10);
        tb.exec_ok(
            &a,
            &["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40127"],
            limit,
        )
        .await
        .unwrap();
        tb.exec_ok(
            &b,
            &[
                "iptables",
                "-w",
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            limit,
        )
        .await
        .unwrap();
        let servers =
            ProbeServers::start(&b, &[80], &[Proto::Udp], Duration::from_secs(120)).unwrap();
        let probes = |n: usize| -> Vec<Probe> {
            (0..n)
                .map(|_| Probe {
                    from: a.clone(),
                    to: SocketAddrV4::new(ip_b, 80),
                    proto: Proto::Udp,
                })
                .collect()
        };
        let timeout = Duration::from_millis(1500);
        let open = probe_all_traced(&probes(16), timeout, 16).await.unwrap();
        assert!(
            open.iter().all(|o| o.answered),
            "nothing in the way yet: {open:?}"
        );
        let answered: BTreeSet<u16> = open.iter().filter_map(|o| o.src_port).collect();
        assert_eq!(answered.len(), 16, "16 probes, 16 flows: {answered:?}");
        tb.exec_ok(
            &b,
            &[
                "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "80", "-j", "DROP",
            ],
            limit,
        )
        .await
        .unwrap();

        let fresh = probe_all_traced(&probes(40), Duration::from_millis(500), 40)
            .await
            .unwrap();
        let through: Vec<_> = fresh.iter().filter(|o| o.answered).collect();
        assert!(
            through.is_empty(),
            "with the quarantine, UDP 80 dropped: nothing gets through: {through:?}"
        );
        let reused: Vec<u16> = fresh
            .iter()
            .filter_map(|o| o.src_port)
            .filter(|p| answered.contains(p))
            .collect();
        assert!(
            reused.is_empty(),
            "the quarantine gave out answered flows' ports: {reused:?}"
        );

        // Negative control: the quarantine off, the same probing is fooled by conntrack.
        udp_flow_reuse(true);
        let got = probe_all_traced(&probes(100), Duration::from_millis(500), 100)
            .await
            .unwrap();
        udp_flow_reuse(false);
        let through: Vec<u16> = got
            .iter()
            .filter(|o| o.answered)
            .filter_map(|o| o.src_port)
            .collect();
        assert!(
            !through.is_empty(),
            "with flows reused, no probe got through: the control cannot show the hazard"
        );
        assert!(
            through.iter().all(|p| answered.contains(p)),
            "only answered flows' ports get through (conntrack, not the rules): {through:?} vs {answered:?}"
        );
        eprintln!(
            "quarantine: 40 probes denied, none on the 16 answered flows; without it {} of 100 got through, all on answered flows",
            through.len()
        );
        drop(servers);
    }
    drop(tb);
    leak::assert_clean(&prefix, &run_dir);
}

async fn fixture_baseline(mode: policy_cluster::Mode) {
    let t = Instant::now();
    let opts = policy_cluster::Opts {
        gate: false,
        policyd: false,
        ..Default::default()
    };
    // start_opts waits until the whole matrix is allowed (the model with no policy).
    let c = policy_cluster::PolicyCluster::start_opts(mode, opts).await;
    assert_eq!(c.pods.len(), 9);
    eprintln!(
        "[{mode:?}] 9 pods, {} cells all allowed; fixture up in {:?}",
        c.expected().cells.len(),
        t.elapsed()
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_fixture_without_policyd_reaches_every_pair_overlay() {
    fixture_baseline(policy_cluster::Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_fixture_without_policyd_reaches_every_pair_routed() {
    fixture_baseline(policy_cluster::Mode::Routed).await;
}
