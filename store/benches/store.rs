//! The store benchmark: the embedded backend and a real etcd (one member on loopback, data on
//! the same disk) side by side, in one run.
//!
//!     cargo bench -p trellis-store --features etcd --bench store
//!
//! Figures: sequential puts/s; 16 concurrent compare-and-swap writers/s (each on its own key);
//! range of 10,000 keys; watch delivery latency p50/p99 (from the write's call to the event).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_store::{
    Compare, CompareOp, KeyRange, Op, RangeRequest, SqliteStore, Store, Txn, WatchRequest,
};

const SEQUENTIAL_PUTS: usize = 2000;
const CAS_WRITERS: usize = 16;
const CAS_EACH: usize = 150;
const RANGE_KEYS: usize = 10_000;
const RANGE_ROUNDS: usize = 10;
const WATCHED_WRITES: usize = 500;

struct Figures {
    puts_per_s: f64,
    cas_per_s: f64,
    range_ms: f64,
    watch_p50_us: f64,
    watch_p99_us: f64,
}

async fn measure(s: Arc<dyn Store>, label: &str) -> Figures {
    eprintln!("{label}: sequential puts");
    let t = Instant::now();
    for i in 0..SEQUENTIAL_PUTS {
        s.put(
            format!("/bench/seq/{i:06}").as_bytes(),
            b"value-of-some-length-0123456789",
        )
        .await
        .unwrap();
    }
    let puts_per_s = SEQUENTIAL_PUTS as f64 / t.elapsed().as_secs_f64();

    eprintln!("{label}: {CAS_WRITERS} concurrent CAS writers");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CAS_WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/bench/cas/{w}").into_bytes();
            let mut rev = 0;
            for n in 0..CAS_EACH {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([Op::put(key.clone(), n.to_string())]);
                let resp = s.txn(txn).await.unwrap();
                assert!(resp.succeeded, "each writer owns its key");
                rev = resp.revision;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let cas_per_s = (CAS_WRITERS * CAS_EACH) as f64 / t.elapsed().as_secs_f64();

    eprintln!("{label}: range of {RANGE_KEYS} keys");
    let value = vec![b'x'; 200];
    for chunk in 0..RANGE_KEYS / 100 {
        let ops = (0..100).map(|i| {
            Op::put(
                format!("/bench/range/{:06}", chunk * 100 + i),
                value.clone(),
            )
        });
        s.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..RANGE_ROUNDS {
        let t = Instant::now();
        let r = s
            .range(RangeRequest::new(KeyRange::prefix("/bench/range/")))
            .await
            .unwrap();
        times.push(t.elapsed());
        assert_eq!(r.kvs.len(), RANGE_KEYS);
    }
    times.sort();
    let range_ms = times[times.len() / 2].as_secs_f64() * 1000.0;

    eprintln!("{label}: watch delivery latency");
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("/bench/watch/")))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut sent = std::collections::HashMap::new();
        while lat.len() < WATCHED_WRITES {
            let batch = tokio::time::timeout(Duration::from_secs(30), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let now = Instant::now();
            // The sender's record of when it called put may arrive after the event itself.
            while let Ok((rev, at)) = rx.try_recv() {
                sent.insert(rev, at);
            }
            let start: Instant = match sent.remove(&batch.revision) {
                Some(at) => at,
                None => loop {
                    let (rev, at) = rx.recv().await.unwrap();
                    if rev == batch.revision {
                        break at;
                    }
                    sent.insert(rev, at);
                },
            };
            lat.push(now.duration_since(start));
        }
        lat
    });
    for i in 0..WATCHED_WRITES {
        let at = Instant::now();
        let rev = s
            .put(format!("/bench/watch/{}", i % 10).as_bytes(), b"w")
            .await
            .unwrap();
        tx.send((rev, at)).unwrap();
    }
    let mut lat = receiver.await.unwrap();
    lat.sort();
    let pct =
        |p: f64| lat[((p / 100.0) * lat.len() as f64).ceil() as usize - 1].as_secs_f64() * 1e6;
    Figures {
        puts_per_s,
        cas_per_s,
        range_ms,
        watch_p50_us: pct(50.0),
        watch_p99_us: pct(99.0),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; we take no other arguments.
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let sqlite = SqliteStore::open(dir.path().join("bench.db"), Default::default()).unwrap();
    let ours = measure(Arc::new(sqlite), "sqlite").await;

    netns_testbed::require_tool("etcd", "etcd-server");
    let cluster = netns_testbed::etcd::EtcdCluster::start(1).unwrap();
    let etcd = trellis_store::EtcdStore::connect(&cluster.endpoints())
        .await
        .unwrap();
    let theirs = measure(Arc::new(etcd), "etcd").await;
    drop(cluster);

    println!("store-bench: embedded SQLite vs etcd 3.4 (one member, loopback, same disk), one run");
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "figure", "sqlite", "etcd", "ratio"
    );
    let row = |name: &str, a: f64, b: f64, unit: &str, higher_better: bool| {
        let ratio = a / b;
        let verdict = if (ratio >= 1.0) == higher_better {
            ""
        } else {
            " (worse)"
        };
        println!(
            "{:<34} {:>10.1} {unit:<3} {:>10.1} {unit:<3} {:>9.2}x{verdict}",
            name, a, b, ratio
        );
    };
    row(
        "sequential puts",
        ours.puts_per_s,
        theirs.puts_per_s,
        "/s",
        true,
    );
    row(
        "16 concurrent CAS writers",
        ours.cas_per_s,
        theirs.cas_per_s,
        "/s",
        true,
    );
    row(
        "range of 10k keys (p50)",
        ours.range_ms,
        theirs.range_ms,
        "ms",
        false,
    );
    row(
        "watch delivery p50",
        ours.watch_p50_us,
        theirs.watch_p50_us,
        "us",
        false,
    );
    row(
        "watch delivery p99",
        ours.watch_p99_us,
        theirs.watch_p99_us,
        "us",
        false,
    );
}
