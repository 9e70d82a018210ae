//! The service tests of proxy.rs with the nftables backend (`trellis proxy --backend
//! nftables`), on the overlay: ClusterIP spread, endpoint moves, rejects, hairpin, session
//! affinity, the traffic policies, node ports from another node and from outside, and DNS
//! through the kube-dns Service — the same assertions as the iptables backend's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run: the default, nftables (no `--backend`).
const PROXY_BACKEND: Option<&str> = None;

include!("support/proxy_common.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_rules_until_the_new_state_swaps_in_and_touches_only_our_chains() {
    restart_keeps_rules().await;
}

/// Issue 16: an IPv6 part nft refuses (here a rule it cannot type: an IPv4 cluster CIDR in the
/// `ip6` tables; on a host, no IPv6 in the kernel) must not keep the IPv4 Services from being
/// written. Negative control: the same two families in one transaction are refused whole, IPv4
/// included. The syncer writes IPv4 alone, counts and reports the IPv6 failure, keeps IPv4
/// changes flowing, and writes IPv6 once it can.
/// `default/web:http` at `cluster_ip`:80/TCP, nothing but a ClusterIP, its endpoints ready on
/// port 8080.
fn web_port(cluster_ip: &str, eps: &[&str]) -> trellis_proxy::model::ServicePort {
    use trellis_proxy::model::{Endpoint, PortName, Protocol, ServicePort};
    ServicePort {
        name: PortName {
            namespace: "default".into(),
            service: "web".into(),
            port: "http".into(),
        },
        protocol: Protocol::Tcp,
        cluster_ip: cluster_ip.parse().unwrap(),
        port: 80,
        node_port: None,
        load_balancer_ips: vec![],
        health_check_node_port: None,
        external_local: false,
        internal_local: false,
        affinity: None,
        endpoints: eps
            .iter()
            .map(|e| Endpoint {
                ip: e.parse().unwrap(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_failure_does_not_block_ipv4() {
    use netns_testbed::{Testbed, require_root, require_tool};
    use trellis_proxy::{Family, NodeRules, nft};

    require_root();
    require_tool("nft", "nftables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("p6fail").await.unwrap();
    let limit = Duration::from_secs(10);
    let v4 = vec![web_port("10.96.0.20", &["10.244.1.2", "10.244.1.3"])];
    let v6 = vec![web_port("fd00:96::20", &["fd00:244::2"])];
    let node4 = NodeRules {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_addresses: vec![],
    };
    let bad6 = node4.clone();
    let good6 = NodeRules {
        cluster_cidr: Some("fd00:244::/64".parse().unwrap()),
        node_addresses: vec![],
    };
    let ruleset = || {
        let (tb, ns) = (&tb, &ns);
        async move {
            tb.exec_ok(ns, &["nft", "list", "ruleset"], limit)
                .await
                .unwrap()
        }
    };

    // Negative control: one transaction of both families is refused whole.
    let joint = format!(
        "{}{}",
        nft::full_script(Family::V4, &nft::compile(Family::V4, &v4, &node4), &node4),
        nft::full_script(Family::V6, &nft::compile(Family::V6, &v6, &bad6), &bad6)
    );
    let refused = trellis_net::nft::Nft::new(Some(&ns)).apply(&joint).await;
    assert!(refused.is_err(), "nft took the bad IPv6 rule");
    assert!(
        !ruleset().await.contains("trellis-proxy"),
        "nothing of a refused transaction is applied"
    );

    let mut syncer = nft::Syncer::new(trellis_net::nft::Nft::new(Some(&ns)))
        .v6_retry_after(Duration::from_secs(3600));
    syncer.sync((&v4, &node4), (&v6, &bad6)).await.unwrap();
    assert_eq!(syncer.v6_failures(), 1);
    let error = syncer
        .take_v6_error()
        .expect("the IPv6 failure is reported");
    assert!(error.contains("fd00") || error.contains("Error"), "{error}");
    let now = ruleset().await;
    assert!(now.contains("table ip trellis-proxy "), "{now}");
    assert!(
        now.contains("10.96.0.20 . tcp . 80 . 1 : 10.244.1.3 . 8080"),
        "{now}"
    );
    assert!(!now.contains("table ip6 "), "{now}");

    // IPv4 changes keep flowing while IPv6 waits for its retry.
    let mut v4b = v4.clone();
    v4b[0].endpoints[1].ip = "10.244.1.9".parse().unwrap();
    syncer.sync((&v4b, &node4), (&v6, &bad6)).await.unwrap();
    assert_eq!(syncer.v6_failures(), 1, "not retried before its time");
    assert!(syncer.take_v6_error().is_none());
    let now = ruleset().await;
    assert!(
        now.contains("10.96.0.20 . tcp . 80 . 1 : 10.244.1.9 . 8080"),
        "{now}"
    );

    // Retried (due at once with a zero wait): IPv6 is written once nft takes it.
    let mut syncer = syncer.v6_retry_after(Duration::ZERO);
    syncer.sync((&v4b, &node4), (&v6, &good6)).await.unwrap();
    assert_eq!(syncer.v6_failures(), 1);
    assert!(syncer.take_v6_error().is_none());
    let now = ruleset().await;
    assert!(now.contains("table ip6 trellis-proxy "), "{now}");
    assert!(
        now.contains("fd00:96::20 . tcp . 80 . 0 : fd00:244::2 . 8080"),
        "{now}"
    );
    assert!(now.contains("10.244.1.9 . 8080"), "{now}");
    // And both families go in one transaction again.
    let mut v4c = v4b.clone();
    v4c[0].endpoints.pop();
    syncer.sync((&v4c, &node4), (&v6, &good6)).await.unwrap();
    assert!(!ruleset().await.contains("10.244.1.9 . 8080"));
    drop(syncer);
    tb.delete_ns(&ns).unwrap();
}

/// Issue 16: a port whose endpoint count is new to its shard (here 2 → 3 → 1, each count the
/// only one of its kind) is written as a change — the count's map `endpoints-<n>`, its chain
/// and rule, in one transaction — not by replacing the whole tables, and its old chain and map
/// go once no port uses them. Negative control: the one-map layout this replaced, a rule added
/// later to a map of that type already in the kernel, is refused by the nft here ("conflicting
/// protocols specified"), which is why a new count used to cost a full sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_count_is_a_change_not_a_whole_rewrite() {
    use netns_testbed::{Testbed, require_root, require_tool};
    use trellis_proxy::{NodeRules, nft};

    require_root();
    require_tool("nft", "nftables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("pcount").await.unwrap();
    let limit = Duration::from_secs(10);

    // Negative control: the map declared by one transaction, the rule naming it in a later one.
    let control = "table ip trellis-t-count {\n  map endpoints { typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport; }\n}\n";
    trellis_net::nft::Nft::new(Some(&ns))
        .apply(control)
        .await
        .unwrap();
    let refused = tb
        .exec(
            &ns,
            &[
                "nft",
                "add chain ip trellis-t-count spread-3; add rule ip trellis-t-count spread-3 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints",
            ],
            limit,
        )
        .await
        .unwrap();
    assert!(
        !refused.success() && refused.stderr.contains("conflicting protocols"),
        "nft took a rule naming a map read back from the kernel: {refused:?}"
    );
    tb.exec_ok(
        &ns,
        &["nft", "delete", "table", "ip", "trellis-t-count"],
        limit,
    )
    .await
    .unwrap();

    let port = |eps: &[&str]| web_port("10.96.0.20", eps);
    let node = NodeRules {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_addresses: vec![],
    };
    let shard = |text: &str| -> String {
        // The shard table that holds the port's spread chain.
        text.lines()
            .scan(String::new(), |table, l| {
                if let Some(t) = l.strip_prefix("table ip ") {
                    *table = t.trim_end_matches(" {").to_string();
                }
                Some((table.clone(), l.to_string()))
            })
            .find(|(_, l)| l.contains("chain spread-"))
            .map(|(t, _)| t)
            .expect("a spread chain")
    };
    let ruleset = || {
        let (tb, ns) = (&tb, &ns);
        async move {
            tb.exec_ok(ns, &["nft", "list", "ruleset"], limit)
                .await
                .unwrap()
        }
    };
    let mut syncer = nft::Syncer::new(trellis_net::nft::Nft::new(Some(&ns))).ipv4_only();
    let none: Vec<trellis_proxy::model::ServicePort> = vec![];
    let full = syncer
        .sync(
            (&[port(&["10.244.1.2", "10.244.1.3"])], &node),
            (&none, &node),
        )
        .await
        .unwrap();
    assert!(
        full.chains_written > 16,
        "the first sync is whole: {full:?}"
    );
    let text = ruleset().await;
    let table = shard(&text);
    assert!(text.contains("map endpoints-2 {"), "{text}");

    for (eps, n, old) in [
        (&["10.244.1.2", "10.244.1.3", "10.244.1.4"][..], 3, 2),
        (&["10.244.1.4"][..], 1, 3),
    ] {
        let stats = syncer
            .sync((&[port(eps)], &node), (&none, &node))
            .await
            .unwrap();
        assert_eq!(
            (stats.chains_written, stats.chains_deleted),
            (1, 1),
            "{n} endpoints: one chain written, one removed, nothing else: {stats:?}"
        );
        let text = ruleset().await;
        let chain = tb
            .exec_ok(
                &ns,
                &[
                    "nft",
                    "list",
                    "chain",
                    "ip",
                    &table,
                    &format!("spread-{}-{n}", &table[table.len() - 2..]),
                ],
                limit,
            )
            .await
            .unwrap();
        assert!(
            chain.contains(&format!("numgen random mod {n} map @endpoints-{n}")),
            "{chain}"
        );
        assert!(text.contains(&format!("map endpoints-{n} {{")), "{text}");
        assert!(
            !text.contains(&format!("map endpoints-{old} {{"))
                && !text.contains(&format!("spread-{}-{old}", &table[table.len() - 2..])),
            "the old count's map and chain are gone: {text}"
        );
        let last = eps.len() - 1;
        assert!(
            text.contains(&format!(
                "10.96.0.20 . tcp . 80 . {last} : {} . 8080",
                eps[last]
            )),
            "{text}"
        );
    }
    assert_eq!(
        syncer.fallbacks(),
        0,
        "every change went through the session"
    );
    drop(syncer);
    tb.delete_ns(&ns).unwrap();
}
