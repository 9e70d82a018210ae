//! The etcd backend against real etcd (Debian's etcd-server 3.4) on loopback: a 3-member
//! cluster that loses a member while a writer runs, and the backend's mapping of etcd's
//! semantics (revisions, events, compaction errors, watch cancellation) on one member.
//!
//! These tests fail — never skip — when `etcd` is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use netns_testbed::etcd::EtcdCluster;
use trellis_store::etcd::EtcdOptions;
use trellis_store::{
    Compare, CompareOp, Error, EtcdStore, EventKind, KeyRange, Op, OpResponse, RangeRequest, Store,
    Txn, WatchBatch, WatchRequest,
};

const COUNTER: &[u8] = b"/test/counter";

fn ack_key(n: i64) -> Vec<u8> {
    format!("/test/ack/{n:08}").into_bytes()
}

/// What the writer saw.
#[derive(Default)]
struct Log {
    /// Counter value → (revision, when) of every acknowledged increment.
    acked: BTreeMap<i64, (i64, Instant)>,
    /// Failed attempts (when, error); such a write may or may not have been applied.
    failed: Vec<(Instant, String)>,
}

/// Increments the counter by compare-and-swap, each increment also writing `/test/ack/<n>`,
/// until `stop` (or 60 s). A failed attempt re-reads the counter: it may have been applied.
async fn writer(store: EtcdStore, stop: Arc<AtomicBool>, log: Arc<std::sync::Mutex<Log>>) {
    let started = Instant::now();
    let (mut value, mut mod_rev) = (0i64, 0i64);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        let next = value + 1;
        let txn = Txn::new()
            .when([Compare::mod_revision(COUNTER, CompareOp::Equal, mod_rev)])
            .and_then([
                Op::put(COUNTER, next.to_string()),
                Op::put(ack_key(next), format!("v{next}")),
            ])
            .or_else([Op::get(COUNTER)]);
        match store.txn(txn).await {
            Ok(resp) if resp.succeeded => {
                log.lock()
                    .unwrap()
                    .acked
                    .insert(next, (resp.revision, Instant::now()));
                (value, mod_rev) = (next, resp.revision);
            }
            Ok(resp) => {
                // An earlier attempt that failed in flight was applied after all: catch up.
                let Some(OpResponse::Range(r)) = resp.responses.into_iter().next() else {
                    panic!("the failure branch answers its range");
                };
                let kv = r.kvs.into_iter().next().expect("the counter exists");
                value = String::from_utf8(kv.value).unwrap().parse().unwrap();
                mod_rev = kv.mod_revision;
            }
            Err(e) => {
                log.lock()
                    .unwrap()
                    .failed
                    .push((Instant::now(), e.to_string()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Collects every watch batch until one reaches revision `until` (set by the test once the
/// writer stopped), the stream ends, or 90 s.
async fn watcher(mut stream: trellis_store::WatchStream, until: Arc<AtomicI64>) -> Vec<WatchBatch> {
    let mut seen: Vec<WatchBatch> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if seen
            .last()
            .is_some_and(|b| b.revision >= until.load(Ordering::Relaxed))
        {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Ok(Some(Ok(batch))) => seen.push(batch),
            Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    seen
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scenario: a writer runs, member `victim(cluster)` is SIGKILLed mid-run, the writer
/// keeps going; at the end nothing acknowledged is lost and a watch saw every acknowledged
/// revision exactly once, in order. Returns the writer's log.
async fn lose_a_member(pick: impl Fn(&EtcdCluster) -> usize, what: &str) -> Log {
    let mut cluster = EtcdCluster::start(3).expect("start a 3-member etcd cluster");
    let prefix = cluster.prefix().to_string();
    let store = EtcdStore::connect(&cluster.endpoints())
        .await
        .expect("connect");
    let start = store.current_revision().await.unwrap() + 1;
    let watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/test/ack/")).from_revision(start))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(std::sync::Mutex::new(Log::default()));
    let until = Arc::new(AtomicI64::new(i64::MAX));
    let writing = tokio::spawn(writer(store.clone(), stop.clone(), log.clone()));
    let watching = tokio::spawn(watcher(watch, until.clone()));

    wait_for("20 acknowledged writes", Duration::from_secs(20), || {
        log.lock().unwrap().acked.len() >= 20
    })
    .await;
    let victim = pick(&cluster);
    let killed_at = Instant::now();
    cluster.stop_member(victim);
    assert!(!cluster.is_running(victim));
    let acked_before = log.lock().unwrap().acked.len();
    eprintln!("{what}: killed member {victim} after {acked_before} acknowledged writes");

    // Writes must go on: 50 more acknowledged after the kill, within a bound.
    wait_for(
        "50 acknowledged writes after the kill",
        Duration::from_secs(30),
        || {
            log.lock()
                .unwrap()
                .acked
                .values()
                .filter(|(_, at)| *at > killed_at)
                .count()
                >= 50
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();

    let log = std::mem::take(&mut *log.lock().unwrap());
    let first_after = log
        .acked
        .values()
        .map(|(_, at)| *at)
        .filter(|at| *at > killed_at)
        .min()
        .unwrap();
    let gap = first_after - killed_at;
    eprintln!(
        "{what}: first acknowledged write {:.3} s after the kill; {} acknowledged, {} failed attempts: {:?}",
        gap.as_secs_f64(),
        log.acked.len(),
        log.failed.len(),
        log.failed
            .iter()
            .map(|(at, e)| format!("+{:.3}s {e}", (*at - killed_at).as_secs_f64()))
            .collect::<Vec<_>>()
    );
    assert!(
        gap < Duration::from_secs(10),
        "writes stalled for {gap:?} after losing a member"
    );

    // Nothing acknowledged is lost: read everything back (through the same client, which still
    // has the dead endpoint in its list).
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/test/ack/")))
        .await
        .unwrap();
    let found: BTreeMap<Vec<u8>, _> = all.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for (n, (rev, _)) in &log.acked {
        let kv = found
            .get(&ack_key(*n))
            .unwrap_or_else(|| panic!("acknowledged write {n} (revision {rev}) is lost"));
        assert_eq!(kv.value, format!("v{n}").into_bytes());
        assert_eq!(kv.mod_revision, *rev, "write {n}");
    }
    let counter = store.get(COUNTER).await.unwrap().unwrap();
    let value: i64 = String::from_utf8(counter.value).unwrap().parse().unwrap();
    let last_acked = *log.acked.keys().last().unwrap();
    assert!(
        value >= last_acked,
        "counter {value} is behind the last acknowledged increment {last_acked}"
    );
    assert!(
        value <= last_acked + log.failed.len() as i64,
        "counter {value}: more increments than acknowledged ({last_acked}) plus failed ({})",
        log.failed.len()
    );
    // The increments are a gap-free sequence: every value from 1 to the counter has its key.
    assert_eq!(found.len() as i64, value, "one /test/ack key per increment");

    // The watch (which may have been on the dead member) saw every revision once, in order.
    let last_rev = store.current_revision().await.unwrap();
    until.store(last_rev, Ordering::Relaxed);
    let seen = tokio::time::timeout(Duration::from_secs(100), watching)
        .await
        .expect("watcher ends")
        .unwrap();
    let revs: Vec<i64> = seen.iter().map(|b| b.revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "watch revisions strictly increase: {revs:?}"
    );
    assert_eq!(revs.last().copied(), Some(last_rev), "the watch caught up");
    for (n, (rev, _)) in &log.acked {
        assert!(
            revs.binary_search(rev).is_ok(),
            "the watch missed acknowledged write {n} at revision {rev}"
        );
    }
    eprintln!(
        "{what}: the watch saw {} revisions up to {:?} (last write {last_rev})",
        revs.len(),
        revs.last()
    );

    drop(store);
    drop(cluster);
    netns_testbed::leak::assert_clean(&prefix, Path::new("/run/netns"));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_the_leader() {
    lose_a_member(
        // The leader as the members report it (bounded: elections take < 1 s here).
        |cluster| cluster.wait_leader(Duration::from_secs(10)).unwrap(),
        "leader",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_a_follower() {
    let log = lose_a_member(
        // Not the leader, known for sure: with no leader known, any member might be it.
        |cluster| {
            let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
            (0..cluster.len()).find(|i| *i != leader).unwrap()
        },
        "follower",
    )
    .await;
    // Requests to the dead member fail before they are sent and are retried; at most the one in
    // flight when it died may fail.
    assert!(
        log.failed.len() <= 2,
        "losing a follower failed {} writes: {:?}",
        log.failed.len(),
        log.failed
    );
}

/// The next batch of a watch (bounded).
async fn next_batch(stream: &mut trellis_store::WatchStream) -> WatchBatch {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(batch))) => batch,
        other => panic!("expected a watch batch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_maps_etcd_semantics_exactly() {
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let store = EtcdStore::connect(&cluster.endpoints())
        .await
        .expect("connect");
    let base = store.current_revision().await.unwrap();
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/s/")))
        .await
        .unwrap();

    // Puts: a new revision each, versions count, prev values come back.
    let r1 = store.put(b"/s/a", b"1").await.unwrap();
    assert_eq!(r1, base + 1);
    let resp = store
        .txn(Txn::new().and_then([Op::put("/s/a", "2"), Op::put("/s/b", "1")]))
        .await
        .unwrap();
    let r2 = resp.revision;
    assert_eq!(r2, r1 + 1, "one transaction, one revision");
    let OpResponse::Put { prev: Some(prev) } = &resp.responses[0] else {
        panic!("{resp:?}")
    };
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (&b"1"[..], r1, 1)
    );
    assert_eq!(resp.responses[1], OpResponse::Put { prev: None });
    let a = store.get(b"/s/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r2, 2));
    assert_eq!(store.current_revision().await.unwrap(), r2);

    // Ranges: limit, count, more, keys only, history.
    let page = store
        .range(RangeRequest::new(KeyRange::prefix("/s/")).limit(1))
        .await
        .unwrap();
    assert_eq!(
        (page.kvs.len(), page.more, page.count, page.revision),
        (1, true, 2, r2)
    );
    let keys = store
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::new(KeyRange::prefix("/s/"))
        })
        .await
        .unwrap();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()) && keys.kvs.len() == 2);
    let old = store
        .range(RangeRequest::new(KeyRange::key("/s/a")).at(r1))
        .await
        .unwrap();
    assert_eq!((old.kvs[0].value.as_slice(), old.revision), (&b"1"[..], r2));
    let every = store
        .range(RangeRequest::new(KeyRange::prefix("")))
        .await
        .unwrap();
    assert_eq!(every.count, 2, "the empty prefix is every key");
    let from = store
        .range(RangeRequest::new(KeyRange::From(b"/s/b".to_vec())))
        .await
        .unwrap();
    assert_eq!(from.kvs.len(), 1);
    let none = store
        .range(RangeRequest::new(KeyRange::Between(vec![0], vec![0])))
        .await
        .unwrap();
    assert_eq!(none.count, 0, "an empty interval");

    // Ranges inside a transaction see the revision of their place in it.
    let resp = store
        .txn(Txn::new().and_then([Op::get("/s/a"), Op::put("/s/c", "1"), Op::get("/s/c")]))
        .await
        .unwrap();
    let r3 = resp.revision;
    assert_eq!(r3, r2 + 1);
    let revs: Vec<i64> = resp
        .responses
        .iter()
        .filter_map(|r| match r {
            OpResponse::Range(r) => Some(r.revision),
            _ => None,
        })
        .collect();
    assert_eq!(revs, vec![r2, r3]);
    let OpResponse::Range(c) = &resp.responses[2] else {
        panic!()
    };
    assert_eq!(c.kvs[0].value, b"1");
    let read_only = store
        .txn(Txn::new().and_then([Op::get("/s/a")]))
        .await
        .unwrap();
    assert_eq!(
        read_only.revision, r3,
        "a transaction that writes nothing keeps the revision"
    );

    // Compare-and-swap.
    let cas = |rev| {
        Txn::new()
            .when([Compare::mod_revision("/s/a", CompareOp::Equal, rev)])
            .and_then([Op::put("/s/a", "3")])
    };
    assert!(!store.txn(cas(r1)).await.unwrap().succeeded);
    let ok = store.txn(cas(r2)).await.unwrap();
    assert!(ok.succeeded);
    let r4 = ok.revision;
    assert!(
        !store
            .txn(Txn::new().when([Compare::value("/s/none", CompareOp::Equal, "")]))
            .await
            .unwrap()
            .succeeded
    );

    // Deletes return what they removed.
    let deleted = store.delete(KeyRange::prefix("/s/")).await.unwrap();
    let r5 = r4 + 1;
    assert_eq!(
        deleted
            .iter()
            .map(|kv| kv.key.as_slice())
            .collect::<Vec<_>>(),
        vec![&b"/s/a"[..], b"/s/b", b"/s/c"]
    );
    assert_eq!(store.current_revision().await.unwrap(), r5);
    assert!(
        store
            .delete(KeyRange::key("/s/a"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.current_revision().await.unwrap(),
        r5,
        "deleting nothing is no revision"
    );

    // The watch: one batch per revision, prev values, tombstones.
    let b = next_batch(&mut watch).await;
    assert_eq!(
        (b.revision, b.events.len(), b.events[0].prev_kv.clone()),
        (r1, 1, None)
    );
    let b = next_batch(&mut watch).await;
    assert_eq!(
        (b.revision, b.events.len()),
        (r2, 2),
        "a transaction's events arrive together"
    );
    assert_eq!(b.events[0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(next_batch(&mut watch).await.revision, r3);
    assert_eq!(next_batch(&mut watch).await.revision, r4);
    let b = next_batch(&mut watch).await;
    assert_eq!((b.revision, b.events.len()), (r5, 3));
    let tomb = &b.events[0];
    assert_eq!(tomb.kind, EventKind::Delete);
    assert_eq!(
        (
            tomb.kv.key.as_slice(),
            tomb.kv.value.len(),
            tomb.kv.create_revision,
            tomb.kv.mod_revision,
            tomb.kv.version
        ),
        (&b"/s/a"[..], 0, 0, r5, 0)
    );
    assert_eq!(tomb.prev_kv.as_ref().unwrap().mod_revision, r4);

    // Bad requests are refused as the model refuses them.
    assert!(matches!(store.put(b"", b"x").await, Err(Error::EmptyKey)));
    let dup = Txn::new().and_then([Op::put("/s/x", "1"), Op::put("/s/x", "2")]);
    assert!(matches!(store.txn(dup).await, Err(Error::DuplicateKey)));

    // Compaction and what it makes unreadable.
    let current = store.current_revision().await.unwrap();
    assert!(matches!(
        store.range(RangeRequest::new(KeyRange::key("/s/a")).at(current + 5)).await,
        Err(Error::FutureRevision { requested, current: c }) if requested == current + 5 && c == current
    ));
    assert!(matches!(
        store.compact(current + 1).await,
        Err(Error::FutureRevision { .. })
    ));
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    store.compact(r4).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), r4);
    let e = store
        .range(RangeRequest::new(KeyRange::key("/s/a")).at(r2))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Compacted { requested, compacted } if requested == r2 && compacted == r4),
        "{e:?}"
    );
    assert!(
        store
            .range(RangeRequest::new(KeyRange::key("/s/a")).at(r4))
            .await
            .is_ok(),
        "the compaction point stays readable"
    );
    let e = store.compact(r4).await.unwrap_err();
    assert!(
        matches!(e, Error::Compacted { requested, compacted } if requested == r4 && compacted == r4),
        "{e:?}"
    );
    assert!(matches!(
        store.compact(0).await,
        Err(Error::Compacted { .. })
    ));
    let mut old = store
        .watch(WatchRequest::new(KeyRange::prefix("/s/")).from_revision(r2))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), old.next()).await {
        Ok(Some(Err(Error::Compacted {
            requested,
            compacted,
        }))) => assert_eq!((requested, compacted), (r2, r4)),
        other => {
            panic!("a watch from a compacted revision must fail with Compacted, got {other:?}")
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), old.next())
            .await
            .unwrap()
            .is_none(),
        "and end"
    );

    // Dropping a watch cancels it in etcd. The counts are exact, summed over the members (one
    // here). Before the three new watches only `watch` is open: the watch that ended on the
    // compaction, and the probes that asked etcd for its compaction point, are canceled by etcd
    // some time after their streams were dropped — a count read before they go would expect
    // three more than can ever be open.
    let watchers = || {
        cluster
            .metric_total("etcd_debugging_mvcc_watcher_total")
            .unwrap_or(-1.0)
    };
    wait_for(
        "the test's one watch to be the only one open in etcd",
        Duration::from_secs(10),
        || watchers() == 1.0,
    )
    .await;
    let extra: Vec<_> = open_watches(&store, 3).await;
    wait_for("3 more etcd watchers", Duration::from_secs(30), || {
        watchers() == 4.0
    })
    .await;
    drop(extra);
    drop(watch);
    wait_for(
        "the dropped watches to be canceled in etcd",
        Duration::from_secs(10),
        || watchers() == 0.0,
    )
    .await;

    // A cluster that is gone: bounded failure, Unavailable.
    let endpoints = cluster.endpoints();
    let options = EtcdOptions {
        retry_window: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect_with(&endpoints, options.clone())
        .await
        .unwrap();
    drop(cluster);
    let started = Instant::now();
    let e = EtcdStore::connect_with(&endpoints, options)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let started = Instant::now();
    let e = store.put(b"/s/late", b"1").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = store
        .watch(WatchRequest::new(KeyRange::prefix("/s/")))
        .await
        .err()
        .expect("no watch without etcd");
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
}

async fn open_watches(store: &EtcdStore, n: usize) -> Vec<trellis_store::WatchStream> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            store
                .watch(WatchRequest::new(KeyRange::key(format!("/w/{i}"))))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_on_another_member_without_gaps_or_repeats() {
    let mut cluster = EtcdCluster::start(3).expect("start a 3-member etcd cluster");
    let prefix = cluster.prefix().to_string();
    let store = EtcdStore::connect(&cluster.endpoints())
        .await
        .expect("connect");
    let on = |cluster: &EtcdCluster, i| {
        cluster
            .metric(i, "etcd_debugging_mvcc_watcher_total")
            .unwrap_or(0.0)
    };

    // Lose a follower (losing the leader stalls writes, which is another test's subject).
    let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();

    // Watches land on members at random: open them until the victim serves at least two.
    let mut watches = Vec::new();
    while on(&cluster, victim) < 2.0 {
        assert!(
            watches.len() < 40,
            "40 watches and member {victim} serves {} of them",
            on(&cluster, victim)
        );
        watches.push(
            store
                .watch(WatchRequest::new(KeyRange::prefix("/r/")))
                .await
                .unwrap(),
        );
    }
    let total = watches.len() as f64;
    eprintln!(
        "{} watches, {} on member {victim}",
        watches.len(),
        on(&cluster, victim)
    );

    cluster.stop_member(victim);
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(create_once(&store, format!("/r/{i}")).await);
    }
    for (n, w) in watches.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < revisions.len() {
            let b = match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
                Ok(Some(Ok(b))) => b,
                other => panic!("watch {n} after {} batches: {other:?}", seen.len()),
            };
            seen.push(b.revision);
        }
        assert_eq!(
            seen, revisions,
            "watch {n} saw every revision once, in order"
        );
    }
    // Every watch now lives on the two members left.
    wait_for(
        "the watches to move to the live members",
        Duration::from_secs(10),
        || others.iter().map(|i| on(&cluster, *i)).sum::<f64>() >= total,
    )
    .await;

    // The member comes back with its data and catches up.
    cluster.restart_member(victim).expect("restart the member");
    let solo = EtcdStore::connect(&[cluster.endpoint(victim)])
        .await
        .unwrap();
    let last = solo
        .get(b"/r/19")
        .await
        .unwrap()
        .expect("the restarted member has the writes");
    assert_eq!(last.mod_revision, *revisions.last().unwrap());

    drop((watches, solo));
    drop(store);
    drop(cluster);
    netns_testbed::leak::assert_clean(&prefix, Path::new("/run/netns"));
}

/// Creates `key` exactly once and returns the revision that did it, repeating after a failure
/// in flight (a write on a connection to the member just killed fails with "connection reset",
/// applied or not): the compare makes the repeat harmless.
async fn create_once(store: &EtcdStore, key: String) -> i64 {
    let mut errors = Vec::new();
    for _ in 0..5 {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([Op::put(key.clone(), "x")])
            .or_else([Op::get(key.clone())]);
        match store.txn(txn).await {
            Ok(resp) if resp.succeeded => return resp.revision,
            Ok(resp) => match resp.responses.into_iter().next() {
                Some(OpResponse::Range(r)) => return r.kvs[0].create_revision,
                other => panic!("{other:?}"),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    panic!("could not create {key}: {errors:?}");
}
