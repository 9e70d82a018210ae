//! `trellis dns` over both transports, with real clients: a headless Service whose A answer
//! does not fit 512 bytes. `dig` over UDP without EDNS gets it truncated (TC, no records), with
//! EDNS (1232 bytes) whole, over TCP whole; glibc's resolver (`getent ahostsv4` in a client
//! namespace whose resolv.conf names the server) retries the truncated answer over TCP and gets
//! every address — the server's TCP counter shows it did. Only the API server and the DNS
//! server run: the test writes the Service and its EndpointSlice itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use netns_testbed::cluster::ControlPlane;
use netns_testbed::probe::http_get;
use netns_testbed::{Testbed, bin_path, require_root, require_tool};
use serde_json::json;

const NAME: &str = "big.default.svc.cluster.local.";
/// Enough addresses that the A answer (~16 bytes each) exceeds 512 bytes but not 1232.
const ENDPOINTS: u8 = 40;

async fn kube_client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// The addresses of `dig +short` output (or of `getent ahostsv4`'s first column).
fn addresses(text: &str) -> BTreeSet<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The value of a counter in a Prometheus text page (0 when absent).
fn counter(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp_for_dig_and_glibc() {
    require_root();
    let dig = require_tool("dig", "bind9-dnsutils");
    let dig = dig.to_str().unwrap();
    require_tool("getent", "libc-bin");
    require_tool("unshare", "util-linux");
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = kube_client(&cp.local_kubeconfig).await;
    let server = tb.add_node("dns", 2).await.unwrap();
    let cl = tb.add_node("cl", 3).await.unwrap();
    let at = SocketAddr::from((server.ip, 53));
    let trellis = bin_path("trellis");
    let pid = tb
        .spawn(
            &server.ns,
            &[
                trellis.to_str().unwrap(),
                "dns",
                "--kubeconfig",
                cp.kubeconfig.to_str().unwrap(),
                "--listen",
                &at.to_string(),
                // Nothing is forwarded in this test; a port nothing listens on.
                "--upstream",
                "127.0.0.1:9",
                "--metrics-listen",
                "127.0.0.1:9153",
            ],
            Duration::from_secs(300),
        )
        .unwrap();

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"clusterIP": "None", "selector": {"app": "big"},
                 "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let want: BTreeSet<Ipv4Addr> = (1..=ENDPOINTS)
        .map(|i| Ipv4Addr::new(10, 244, 7, i))
        .collect();
    let endpoints: Vec<_> = want
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "big-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();

    let server_arg = format!("@{}", server.ip);
    let limit = Duration::from_secs(20);
    // dig over TCP: all of them, once the zone has them (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tb
            .exec(
                &cl.ns,
                &[
                    dig,
                    "+tcp",
                    "+short",
                    "+time=2",
                    "+tries=1",
                    &server_arg,
                    NAME,
                    "A",
                ],
                limit,
            )
            .await
            .unwrap();
        if addresses(&out.stdout) == want {
            break;
        }
        assert!(tb.running(pid), "dns exited:\n{}", tb.log_of(pid));
        assert!(
            Instant::now() < deadline,
            "dig +tcp never got the {ENDPOINTS} addresses: {}{}\n{}",
            out.stdout,
            out.stderr,
            tb.log_of(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // UDP without EDNS: the answer does not fit 512 bytes, so TC and no records.
    let out = tb
        .exec_ok(
            &cl.ns,
            &[
                dig,
                "+notcp",
                "+noedns",
                "+ignore",
                "+time=2",
                "+tries=3",
                &server_arg,
                NAME,
                "A",
            ],
            limit,
        )
        .await
        .unwrap();
    let flags = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags line:\n{out}"));
    assert!(
        flags
            .split(';')
            .nth(2)
            .unwrap_or_default()
            .split_whitespace()
            .any(|f| f == "tc"),
        "TC over UDP without EDNS:\n{out}"
    );
    assert!(
        flags.contains("ANSWER: 0,"),
        "no records in a truncated answer:\n{out}"
    );
    assert!(!out.contains("ANSWER SECTION"), "{out}");

    // UDP with dig's EDNS (1232 bytes): all of it, no TC, no retry.
    let out = tb
        .exec_ok(
            &cl.ns,
            &[
                dig,
                "+notcp",
                "+ignore",
                "+time=2",
                "+tries=3",
                &server_arg,
                NAME,
                "A",
            ],
            limit,
        )
        .await
        .unwrap();
    assert!(out.contains(&format!("ANSWER: {ENDPOINTS},")), "{out}");
    assert!(out.contains("udp: 1232"), "our OPT advertises 1232:\n{out}");

    // glibc: no EDNS, so a truncated answer, then the same question over TCP.
    let metrics = || {
        let ns = server.ns.clone();
        move || {
            let (code, page) =
                http_get(&ns, SocketAddr::from(([127, 0, 0, 1], 9153)), "/metrics").unwrap();
            assert_eq!(code, 200);
            page
        }
    };
    let tcp_series = "trellis_dns_tcp_connections_total{result=\"accepted\"}";
    let before = counter(
        &tokio::task::spawn_blocking(metrics()).await.unwrap(),
        tcp_series,
    );
    let resolv = tb.state_dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {}\noptions timeout:2 attempts:3\n", server.ip),
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec getent ahostsv4 {NAME}",
        resolv.display()
    );
    let out = tb
        .exec_ok(
            &cl.ns,
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
            limit,
        )
        .await
        .unwrap();
    assert_eq!(addresses(&out), want, "getent ahostsv4:\n{out}");
    let after = counter(
        &tokio::task::spawn_blocking(metrics()).await.unwrap(),
        tcp_series,
    );
    assert!(
        after > before,
        "glibc came back over TCP ({before} → {after} connections)"
    );
    assert!(tb.running(pid), "dns exited:\n{}", tb.log_of(pid));
}
