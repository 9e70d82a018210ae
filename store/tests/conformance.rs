//! One conformance suite, run against every backend: nothing above the `Store` trait may be able
//! to tell them apart. Revisions are checked relative to where each case starts, and each case
//! works under its own key prefix, so cases can share a backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use trellis_store::{
    Compare, CompareOp, Error, EventKind, KeyRange, Op, OpResponse, RangeRequest, Store, Txn,
    WatchBatch, WatchRequest, WatchStream,
};

fn k(prefix: &str, key: &str) -> Vec<u8> {
    format!("{prefix}{key}").into_bytes()
}

/// Collects batches until `events` events arrived (bounded by a timeout).
async fn collect(stream: &mut WatchStream, events: usize) -> Vec<WatchBatch> {
    let mut got = Vec::new();
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while n < events {
        let batch = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {n} of {events} events arrived: {got:?}"))
            .expect("the watch ended early")
            .expect("the watch failed");
        n += batch.events.len();
        got.push(batch);
    }
    got
}

async fn revisions_and_versions(s: &dyn Store, p: &str) {
    let r0 = s.current_revision().await.unwrap();
    let r1 = s.put(&k(p, "a"), b"1").await.unwrap();
    assert!(r1 > r0);
    let a = s.get(&k(p, "a")).await.unwrap().unwrap();
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (r1, r1, 1, &b"1"[..])
    );
    let r2 = s.put(&k(p, "a"), b"2").await.unwrap();
    assert_eq!(r2, r1 + 1, "one change, one revision");
    let a = s.get(&k(p, "a")).await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r2, 2));
    let deleted = s.delete(KeyRange::key(k(p, "a"))).await.unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        deleted[0].mod_revision, r2,
        "delete returns the key as it was"
    );
    assert!(s.get(&k(p, "a")).await.unwrap().is_none());
    let r3 = s.current_revision().await.unwrap();
    assert_eq!(r3, r2 + 1);
    let r4 = s.put(&k(p, "a"), b"3").await.unwrap();
    let a = s.get(&k(p, "a")).await.unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.version),
        (r4, 1),
        "a recreated key starts over"
    );
    // Deleting nothing changes nothing.
    assert!(
        s.delete(KeyRange::key(k(p, "nothing")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.current_revision().await.unwrap(), r4);
}

async fn transactions_compare_and_swap(s: &dyn Store, p: &str) {
    let key = k(p, "cas");
    // Create only if absent.
    let create = |v: &'static str| {
        Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([Op::put(key.clone(), v)])
    };
    let first = s.txn(create("one")).await.unwrap();
    assert!(first.succeeded);
    let second = s.txn(create("two")).await.unwrap();
    assert!(!second.succeeded, "the key exists now");
    assert_eq!(
        second.revision, first.revision,
        "a failed compare with an empty else changes nothing"
    );
    // Update on a stale mod_revision: the else branch reads the current value.
    let stale = first.revision - 1;
    let upd = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, stale)])
        .and_then([Op::put(key.clone(), "three")])
        .or_else([Op::get(key.clone())]);
    let resp = s.txn(upd).await.unwrap();
    assert!(!resp.succeeded);
    match &resp.responses[..] {
        [OpResponse::Range(r)] => assert_eq!(r.kvs[0].value, b"one"),
        other => panic!("{other:?}"),
    }
    let fresh = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            first.revision,
        )])
        .and_then([Op::put(key.clone(), "three")]);
    let resp = s.txn(fresh).await.unwrap();
    assert!(resp.succeeded);
    match &resp.responses[..] {
        [OpResponse::Put { prev: Some(prev) }] => assert_eq!(prev.value, b"one"),
        other => panic!("{other:?}"),
    }
    // Value and version compares.
    assert!(
        s.txn(Txn::new().when([Compare::value(key.clone(), CompareOp::Equal, "three")]))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        s.txn(Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 2)]))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        !s.txn(Txn::new().when([Compare::value(k(p, "absent"), CompareOp::Equal, "")]))
            .await
            .unwrap()
            .succeeded
    );
    // Several writes in one transaction share one revision.
    let multi = s
        .txn(Txn::new().and_then([
            Op::put(k(p, "m1"), "x"),
            Op::put(k(p, "m2"), "y"),
            Op::delete(KeyRange::key(key.clone())),
        ]))
        .await
        .unwrap();
    let m1 = s.get(&k(p, "m1")).await.unwrap().unwrap();
    let m2 = s.get(&k(p, "m2")).await.unwrap().unwrap();
    assert_eq!(
        (m1.mod_revision, m2.mod_revision),
        (multi.revision, multi.revision)
    );
    assert!(s.get(&key).await.unwrap().is_none());
}

async fn range_pagination_and_past_revisions(s: &dyn Store, p: &str) {
    for i in 0..25 {
        s.put(&k(p, &format!("item/{i:02}")), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    let all = KeyRange::prefix(k(p, "item/"));
    let page = s
        .range(RangeRequest::new(all.clone()).limit(10))
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.more, page.count), (10, true, 25));
    assert_eq!(page.kvs[0].key, k(p, "item/00"));
    // Continue after the last key, at the same revision (as the API server's continue token).
    let rev = page.revision;
    let mut seen = page.kvs.len();
    let mut last = page.kvs.last().unwrap().key.clone();
    loop {
        let mut start = last.clone();
        start.push(0);
        let end = trellis_store::types::prefix_end(&k(p, "item/")).unwrap();
        let next = s
            .range(
                RangeRequest::new(KeyRange::Between(start, end))
                    .limit(10)
                    .at(rev),
            )
            .await
            .unwrap();
        seen += next.kvs.len();
        if !next.more {
            assert_eq!(next.kvs.len(), 5);
            break;
        }
        last = next.kvs.last().unwrap().key.clone();
    }
    assert_eq!(seen, 25);
    // Past revisions.
    let key = k(p, "item/00");
    let before = s.get(&key).await.unwrap().unwrap().mod_revision;
    s.put(&key, b"changed").await.unwrap();
    let del_rev = {
        s.delete(KeyRange::key(key.clone())).await.unwrap();
        s.current_revision().await.unwrap()
    };
    let old = s
        .range(RangeRequest::new(KeyRange::key(key.clone())).at(before))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"v0");
    let changed = s
        .range(RangeRequest::new(KeyRange::key(key.clone())).at(del_rev - 1))
        .await
        .unwrap();
    assert_eq!(changed.kvs[0].value, b"changed");
    assert!(
        s.range(RangeRequest::new(KeyRange::key(key.clone())).at(del_rev))
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
    let listed_then = s
        .range(RangeRequest::new(all.clone()).at(rev))
        .await
        .unwrap();
    assert_eq!(
        listed_then.count, 25,
        "a list at a past revision sees the keys of then"
    );
    assert_eq!(listed_then.kvs[0].value, b"v0");
    // A page of a list at a past revision (a continue token after later writes) counts the
    // whole range of then.
    let page_then = s
        .range(RangeRequest::new(all.clone()).limit(10).at(rev))
        .await
        .unwrap();
    assert_eq!(
        (page_then.kvs.len(), page_then.more, page_then.count),
        (10, true, 25)
    );
    let earlier = s
        .range(RangeRequest::new(all.clone()).at(before))
        .await
        .unwrap();
    assert_eq!(earlier.count, 1, "at the first put only one key existed");
    let future = s
        .range(RangeRequest::new(all.clone()).at(del_rev + 1_000_000))
        .await
        .unwrap_err();
    assert!(matches!(future, Error::FutureRevision { .. }), "{future}");
    let keys = s
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::new(all)
        })
        .await
        .unwrap();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()) && keys.kvs.len() == 24);
}

async fn watch_delivers_in_order_with_previous_values(s: &dyn Store, p: &str) {
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(p, "w/"))))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..60 {
        let key = k(p, &format!("w/{}", i % 5));
        if i % 7 == 6 {
            s.delete(KeyRange::key(key.clone())).await.unwrap();
            expected.push((EventKind::Delete, key));
        } else {
            s.put(&key, format!("{i}").as_bytes()).await.unwrap();
            expected.push((EventKind::Put, key));
        }
    }
    let batches = collect(&mut w, expected.len()).await;
    let events: Vec<_> = batches
        .iter()
        .flat_map(|b| b.events.iter().map(move |e| (b.revision, e)))
        .collect();
    assert_eq!(events.len(), expected.len());
    let mut last_rev = 0;
    for ((rev, e), (kind, key)) in events.iter().zip(&expected) {
        assert!(*rev > last_rev, "revisions increase");
        last_rev = *rev;
        assert_eq!((&e.kind, &e.kv.key), (kind, key));
        assert_eq!(e.kv.mod_revision, *rev);
        if e.kind == EventKind::Delete {
            assert!(e.prev_kv.is_some(), "a delete carries the value it removed");
            assert!(e.kv.value.is_empty());
        }
    }
    // A later put of the same key carries the earlier value.
    let second_put = events
        .iter()
        .find(|(_, e)| e.kv.key == k(p, "w/0") && e.kv.version == 2)
        .unwrap();
    assert_eq!(second_put.1.prev_kv.as_ref().unwrap().value, b"0");
    // A transaction's changes arrive together.
    s.txn(Txn::new().and_then([Op::put(k(p, "w/a"), "1"), Op::put(k(p, "w/b"), "2")]))
        .await
        .unwrap();
    let b = collect(&mut w, 2).await;
    assert_eq!(b.len(), 1, "one revision, one batch: {b:?}");
}

async fn watch_resumes_from_a_revision(s: &dyn Store, p: &str) {
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            s.put(&k(p, "r/key"), format!("{i}").as_bytes())
                .await
                .unwrap(),
        );
    }
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(p, "r/"))).from_revision(revs[4]))
        .await
        .unwrap();
    let replayed = collect(&mut w, 6).await;
    let got: Vec<i64> = replayed.iter().map(|b| b.revision).collect();
    assert_eq!(
        got,
        revs[4..].to_vec(),
        "history from the revision asked for, in order"
    );
    assert_eq!(replayed[0].events[0].prev_kv.as_ref().unwrap().value, b"3");
    let live = s.put(&k(p, "r/key"), b"live").await.unwrap();
    let next = collect(&mut w, 1).await;
    assert_eq!(
        next[0].revision, live,
        "then live changes, nothing missed in between"
    );
}

async fn compaction_refuses_old_revisions(s: &dyn Store, p: &str) {
    let first = s.put(&k(p, "c/key"), b"1").await.unwrap();
    for i in 2..=5 {
        s.put(&k(p, "c/key"), format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    let other = s.put(&k(p, "c/other"), b"x").await.unwrap();
    s.compact(other).await.unwrap();
    let err = s
        .range(RangeRequest::new(KeyRange::key(k(p, "c/key"))).at(first))
        .await
        .unwrap_err();
    assert!(err.is_compacted(), "{err}");
    // The state at the compaction revision is intact.
    let at = s
        .range(RangeRequest::new(KeyRange::prefix(k(p, "c/"))).at(other))
        .await
        .unwrap();
    assert_eq!(at.kvs.len(), 2);
    assert_eq!(at.kvs[0].value, b"5");
    // A watch from before the compaction ends with Compacted; from the compaction on it works.
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(p, "c/"))).from_revision(first))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap();
    assert!(
        matches!(ended, Some(Err(Error::Compacted { .. }))),
        "{ended:?}"
    );
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(p, "c/"))).from_revision(other))
        .await
        .unwrap();
    let b = collect(&mut w, 1).await;
    assert_eq!(b[0].revision, other);
    let again = s.compact(other).await.unwrap_err();
    assert!(again.is_compacted(), "{again}");
}

async fn concurrent_cas_writers_lose_no_update(
    s: Arc<dyn Store>,
    p: &str,
    tasks: usize,
    each: usize,
) {
    let key = k(p, "counter");
    s.put(&key, b"0").await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let s = s.clone();
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            let mut attempts = 0u64;
            for _ in 0..each {
                loop {
                    attempts += 1;
                    assert!(attempts < 1_000_000, "runaway retries");
                    let cur = s.get(&key).await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(cur.value).unwrap().parse().unwrap();
                    let t = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            cur.mod_revision,
                        )])
                        .and_then([Op::put(key.clone(), (n + 1).to_string())]);
                    if s.txn(t).await.unwrap().succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let v = s.get(&key).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(v.value).unwrap(),
        (tasks * each).to_string()
    );
    assert_eq!(v.version as usize, tasks * each + 1);
}

async fn prefixes_are_isolated(s: &dyn Store, p: &str) {
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(p, "a/"))))
        .await
        .unwrap();
    s.put(&k(p, "ab"), b"not mine").await.unwrap();
    s.put(&k(p, "b/x"), b"not mine").await.unwrap();
    s.put(&k(p, "a"), b"not mine").await.unwrap();
    let mine = s.put(&k(p, "a/x"), b"mine").await.unwrap();
    let got = collect(&mut w, 1).await;
    assert_eq!((got[0].revision, got[0].events.len()), (mine, 1));
    let listed = s
        .range(RangeRequest::new(KeyRange::prefix(k(p, "a/"))))
        .await
        .unwrap();
    assert_eq!(listed.kvs.len(), 1);
    let between = s
        .range(RangeRequest::new(KeyRange::Between(k(p, "a"), k(p, "b"))))
        .await
        .unwrap();
    assert_eq!(between.kvs.len(), 3, "[a, b) holds a, a/x and ab");
}

async fn bad_input_is_refused(s: &dyn Store, p: &str) {
    let r0 = s.current_revision().await.unwrap();
    assert!(matches!(
        s.put(b"", b"x").await.unwrap_err(),
        Error::EmptyKey
    ));
    assert!(matches!(s.get(b"").await.unwrap_err(), Error::EmptyKey));
    let backwards = RangeRequest::new(KeyRange::Between(k(p, "z"), k(p, "a")));
    assert!(matches!(
        s.range(backwards).await.unwrap_err(),
        Error::InvalidRange { .. }
    ));
    let dup = Txn::new().and_then([Op::put(k(p, "d"), "1"), Op::put(k(p, "d"), "2")]);
    assert!(matches!(s.txn(dup).await.unwrap_err(), Error::DuplicateKey));
    assert_eq!(
        s.current_revision().await.unwrap(),
        r0,
        "nothing was written"
    );
    assert!(s.get(&k(p, "d")).await.unwrap().is_none());
}

/// A backend for the suite, and a unique prefix per case.
struct Fixture {
    store: Arc<dyn Store>,
    prefix: String,
    _keep: Box<dyn std::any::Any + Send>,
}

macro_rules! conformance {
    ($backend:ident, $fixture:path) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn revisions_and_versions() {
                let f = $fixture().await;
                super::revisions_and_versions(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactions_compare_and_swap() {
                let f = $fixture().await;
                super::transactions_compare_and_swap(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn range_pagination_and_past_revisions() {
                let f = $fixture().await;
                super::range_pagination_and_past_revisions(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_delivers_in_order_with_previous_values() {
                let f = $fixture().await;
                super::watch_delivers_in_order_with_previous_values(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_resumes_from_a_revision() {
                let f = $fixture().await;
                super::watch_resumes_from_a_revision(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compaction_refuses_old_revisions() {
                let f = $fixture().await;
                super::compaction_refuses_old_revisions(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sixteen_writers_times_500_cas_increments_make_8000() {
                let f = $fixture().await;
                super::concurrent_cas_writers_lose_no_update(f.store.clone(), &f.prefix, 16, 500)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prefixes_are_isolated() {
                let f = $fixture().await;
                super::prefixes_are_isolated(&*f.store, &f.prefix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_is_refused() {
                let f = $fixture().await;
                super::bad_input_is_refused(&*f.store, &f.prefix).await;
            }
        }
    };
}

async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        trellis_store::SqliteStore::open(dir.path().join("store.db"), Default::default()).unwrap();
    Fixture {
        store: Arc::new(store),
        prefix: "/conformance/".into(),
        _keep: Box::new(dir),
    }
}

conformance!(sqlite, sqlite_fixture);

#[cfg(feature = "etcd")]
async fn etcd_fixture() -> Fixture {
    netns_testbed::require_tool("etcd", "etcd-server");
    let cluster = netns_testbed::etcd::EtcdCluster::start(1).unwrap();
    let store = trellis_store::EtcdStore::connect(&cluster.endpoints())
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        prefix: "/conformance/".into(),
        _keep: Box::new(cluster),
    }
}

#[cfg(feature = "etcd")]
conformance!(etcd, etcd_fixture);
