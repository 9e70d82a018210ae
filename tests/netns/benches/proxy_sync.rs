//! Service proxy sync time (issue 16, benchmark): N Services × 10 endpoints compiled by
//! trellis-proxy and written into the nat and filter tables of a fresh namespace.
//!
//! - full: the first sync (every chain written, in one `iptables-restore --noflush`);
//! - incremental: one endpoint of one Service replaced, then a sync (only the changed chains);
//!   with `--new-count`, one endpoint added to one Service instead, so that its endpoint count
//!   (11, 12, … in successive rounds) is new to its shard (the nftables backend's shared
//!   `spread-<shard>-<n>` chain and its map for that count must be created).
//!
//! The baseline is what kube-proxy's legacy iptables mode does on every change (before 1.26's
//! partial syncs): the whole table — every chain declared, every rule written — restored in one
//! run. The same rules are used, so the only difference is how much is written. Printed side
//! by side with the ratio baseline/ours.
//!
//!     cargo bench -p netns-testbed --bench proxy-sync [-- --sizes 1000,5000,10000 --rounds 3]
//!         [--backend nft|legacy] [--proxy-backend iptables|nftables [--nft-oneshot]] [--no-baseline]
//!         [--new-count]
//!
//! `--proxy-backend nftables` measures the proxy's nftables backend (one transaction per sync:
//! whole tables through `nft -f`, changes through its long-lived `nft -i`; "full ours" is then
//! the median of as many whole-table replacements) against the same baseline. It also prints
//! how many changes fell back to a one-shot `nft` (want 0). `--nft-oneshot`: every change
//! through an `nft -f` process of its own instead, to compare. `--no-baseline`: ours only (the
//! baseline's whole-table iptables restore of 10,000 Services can exceed the tool runner's
//! 60 s on a busy machine); its columns then read 0.
//!
//! Needs root and iptables (default: the host's backend, as the proxy detects it). Each
//! restore is bounded by the tool runner's 60 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use netns_testbed::{Testbed, require_root, require_tool};
use trellis_net::iptables::{Backend, IpFamily, Iptables, Table};
use trellis_proxy::model::{Endpoint, PortName, Protocol, ServicePort};
use trellis_proxy::nft;
use trellis_proxy::rules::{self, Chains, NodeRules};
use trellis_proxy::sync::Syncer;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn services(n: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            name: PortName {
                namespace: "bench".into(),
                service: format!("svc-{i}"),
                port: "http".into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: std::net::Ipv4Addr::from(0x0a60_0000u32 + i as u32 + 1).into(),
            port: 80,
            node_port: None,
            load_balancer_ips: Vec::new(),
            health_check_node_port: None,
            external_local: false,
            internal_local: false,
            affinity: None,
            endpoints: (0..10)
                .map(|e| Endpoint {
                    ip: std::net::Ipv4Addr::from(0x0af4_0000u32 + (i * 10 + e) as u32).into(),
                    port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        })
        .collect()
}

/// The whole nat and filter state as one restore, as kube-proxy's legacy mode writes it.
fn full_tables(chains: &Chains) -> Vec<Table> {
    let mut nat = Table::new("nat");
    let mut filter = Table::new("filter");
    for ((t, c), r) in chains {
        let table = if *t == "nat" { &mut nat } else { &mut filter };
        table.chains.push((c.clone(), r.clone()));
    }
    vec![nat, filter]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Refuses arguments the bench does not know (a typo must not run another backend's
/// 60-second load than the one asked for).
fn check_args() {
    const VALUED: [&str; 4] = ["--sizes", "--rounds", "--backend", "--proxy-backend"];
    // `--bench` is what `cargo bench` passes to every bench binary.
    const FLAGS: [&str; 4] = ["--nft-oneshot", "--no-baseline", "--new-count", "--bench"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if VALUED.contains(&a) {
            assert!(i + 1 < args.len(), "{a} needs a value");
            i += 2;
        } else if FLAGS.contains(&a) {
            i += 1;
        } else {
            eprintln!(
                "unknown argument {a:?}; usage: proxy-sync [--sizes 1000,5000,10000] [--rounds 3] \
                 [--backend nft|legacy] [--proxy-backend iptables|nftables [--nft-oneshot]] [--no-baseline] \
                 [--new-count]"
            );
            std::process::exit(2);
        }
    }
    for (name, allowed) in [
        ("--backend", &["nft", "legacy"][..]),
        ("--proxy-backend", &["iptables", "nftables"][..]),
    ] {
        if let Some(v) = arg(name)
            && !allowed.contains(&v.as_str())
        {
            eprintln!("{name} {v:?}: one of {allowed:?}");
            std::process::exit(2);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    check_args();
    require_root();
    require_tool("iptables-restore", "iptables");
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = arg("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let node = NodeRules {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_addresses: vec![],
    };
    // IPv4-only Services: the IPv6 tables are written too (empty), as the proxy does.
    let no_v6 = NodeRules::default();
    let nft_mode = arg("--proxy-backend").as_deref() == Some("nftables");
    if nft_mode {
        require_tool("nft", "nftables");
    }
    let tb = Testbed::new().unwrap();
    let mut backend = None;
    println!(
        "{:>8} {:>9} | {:>12} {:>12} {:>7} | {:>14} {:>12} {:>7}",
        "services",
        "rules",
        "full ours",
        "full base",
        "ratio",
        "1 change ours",
        "1 change base",
        "ratio"
    );
    for n in sizes {
        let ns = tb.add_ns(&format!("ps{n}")).await.unwrap();
        let mut ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
        match arg("--backend").as_deref() {
            Some("legacy") => ipt.backend = Backend::Legacy,
            Some("nft") => ipt.backend = Backend::Nft,
            _ => {}
        }
        backend = Some(ipt.backend);
        let mut ports = services(n);
        let desired = rules::compile(&ports, &node);
        let mut total: usize = desired.values().map(Vec::len).sum();
        let mut elements = 0;
        if nft_mode {
            let rs = nft::compile(trellis_proxy::Family::V4, &ports, &node);
            total = rs.chains.values().map(Vec::len).sum();
            elements = rs.elements.values().map(|e| e.len()).sum();
        }
        let nft_handle = trellis_net::nft::Nft::new(Some(&ns));
        let mut nft_syncer = if std::env::args().any(|a| a == "--nft-oneshot") {
            nft::Syncer::with_session(trellis_net::nft::NftSession::one_shot(nft_handle))
        } else {
            nft::Syncer::new(nft_handle)
        };

        // Ours, full: compile + diff + restore into the empty namespace.
        let mut syncer = Syncer::new(ipt.clone());
        let full_ours = if nft_mode {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                nft_syncer.invalidate();
                let t = Instant::now();
                nft_syncer
                    .sync((&ports, &node), (&[], &no_v6))
                    .await
                    .unwrap();
                runs.push(t.elapsed());
            }
            median(runs)
        } else {
            let t = Instant::now();
            syncer.sync(rules::compile(&ports, &node)).await.unwrap();
            t.elapsed()
        };

        // Baseline, full: the whole table in one restore (into the same, now filled, tables:
        // what every later full sync costs).
        let no_baseline = std::env::args().any(|a| a == "--no-baseline");
        let mut base_full = Vec::new();
        for _ in 0..rounds {
            if no_baseline {
                base_full.push(Duration::ZERO);
                continue;
            }
            let tables = full_tables(&rules::compile(&ports, &node));
            let t = Instant::now();
            ipt.restore_all(&tables).await.unwrap();
            base_full.push(t.elapsed());
        }

        // One endpoint change at a time: ours writes the changed chains, the baseline all.
        let mut inc_ours = Vec::new();
        let mut inc_base = Vec::new();
        let new_count = std::env::args().any(|a| a == "--new-count");
        let mut written = Vec::new();
        for r in 0..rounds {
            if new_count {
                // The same Service each round: 11, 12, … endpoints, a count no other has.
                let sp = &mut ports[0];
                let mut extra = sp.endpoints[0].clone();
                extra.ip = std::net::Ipv4Addr::from(0x0af5_0000u32 + r as u32).into();
                sp.endpoints.push(extra);
            } else {
                let sp = &mut ports[r % n];
                sp.endpoints[0].ip = std::net::Ipv4Addr::from(0x0af5_0000u32 + r as u32).into();
            }
            let t = Instant::now();
            let stats = if nft_mode {
                nft_syncer
                    .sync((&ports, &node), (&[], &no_v6))
                    .await
                    .unwrap()
            } else {
                syncer.sync(rules::compile(&ports, &node)).await.unwrap()
            };
            inc_ours.push(t.elapsed());
            written.push(stats.chains_written);
            // A new endpoint count cost the nftables backend a whole-table rewrite before it
            // could add the count's chain and map as a change.
            assert!(new_count || stats.chains_written <= 3, "{stats:?}");
            if no_baseline {
                inc_base.push(Duration::ZERO);
                continue;
            }
            let t = Instant::now();
            let tables = full_tables(&rules::compile(&ports, &node));
            ipt.restore_all(&tables).await.unwrap();
            inc_base.push(t.elapsed());
        }
        let (bf, io, ib) = (median(base_full), median(inc_ours), median(inc_base));
        println!(
            "{:>8} {:>9} | {:>12} {:>12} {:>6.2}x | {:>14} {:>12} {:>6.1}x",
            n,
            total,
            ms(full_ours),
            ms(bf),
            bf.as_secs_f64() / full_ours.as_secs_f64(),
            ms(io),
            ms(ib),
            ib.as_secs_f64() / io.as_secs_f64()
        );
        if nft_mode {
            println!(
                "{:>8} {elements} set and map elements; nft sessions started {}, one-shot fallbacks {}; \
                 chains written per change {written:?}{}",
                "",
                nft_syncer.sessions_started(),
                nft_syncer.fallbacks(),
                if new_count {
                    " (--new-count: each change a new endpoint count)"
                } else {
                    ""
                }
            );
        }
        drop(nft_syncer);
        tb.delete_ns(&ns).unwrap();
    }
    println!(
        "ours: {} backend; baseline: iptables {backend:?}; medians of {rounds} rounds{}; ratio = baseline / ours",
        if nft_mode { "nftables" } else { "iptables" },
        if nft_mode {
            ""
        } else {
            " (full ours: one run)"
        }
    );
}
