//! The probes the policy tests judge by, checked on their own: two namespaces on a veth pair,
//! probe servers on 80 and 81 (TCP, UDP; SCTP where the kernel has it), hundreds of probes at
//! once against one server (more than 16 connections per server), and a port closed by a
//! DROP rule reads as denied — the probes tell allowed from denied, both ways. And the policy
//! cluster itself, without policyd or gate: every pod reaches every other on every port, in both
//! modes (the baseline the policy tests start from).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::matrix::{
    Probe, ProbeServers, Proto, probe_all, probed_protocols, sctp_available,
};
use netns_testbed::{Testbed, leak, require_root, require_tool};
use trellis_net::VethSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_tell_allowed_from_denied_and_servers_take_hundreds_at_once() {
    require_root();
    require_tool("iptables", "iptables");
    let tb = Testbed::new().unwrap();
    let prefix = tb.prefix().to_string();
    let run_dir = tb.run_dir().to_path_buf();
    {
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
