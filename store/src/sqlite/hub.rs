//! Push-based watches: the writer hands each committed revision's events to the hub, which
//! passes them to every subscriber whose range they touch — no polling.
//!
//! A subscriber that falls behind is never waited for: when its buffer is full the hub drops it,
//! and its watch task catches up from the log on disk, then subscribes again. If compaction has
//! meanwhile removed what it needs, the watch ends with `Compacted` and the caller lists again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::mpsc;

use super::Shared;
use super::read;
use crate::error::{Error, Result};
use crate::types::{Event, KeyRange, WatchBatch, WatchRequest};

struct Subscriber {
    range: KeyRange,
    tx: mpsc::Sender<WatchBatch>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
}

pub(crate) struct Hub {
    inner: Mutex<Inner>,
    /// The last revision published (every revision up to it is committed and was offered to
    /// the subscribers of the time).
    published: AtomicI64,
    compacted: AtomicI64,
    closed: AtomicBool,
    depth: usize,
}

impl Hub {
    pub(crate) fn new(revision: i64, compacted: i64, depth: usize) -> Self {
        Hub {
            inner: Mutex::new(Inner::default()),
            published: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            closed: AtomicBool::new(false),
            depth: depth.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    pub(crate) fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn set_compacted(&self, rev: i64) {
        self.compacted.store(rev, Ordering::Release);
    }

    /// Subscribes to changes of `range` after the returned revision.
    fn subscribe(&self, range: KeyRange) -> (u64, mpsc::Receiver<WatchBatch>, i64) {
        let (tx, rx) = mpsc::channel(self.depth);
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.insert(id, Subscriber { range, tx });
        (id, rx, self.revision())
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.remove(&id);
    }

    /// Offers a committed revision's events to every subscriber; one whose buffer is full (or
    /// who left) is dropped rather than waited for.
    pub(crate) fn publish(&self, revision: i64, events: Vec<Event>) {
        let mut inner = self.lock();
        self.published.store(revision, Ordering::Release);
        inner.subscribers.retain(|_, sub| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| sub.range.contains(&e.kv.key))
                .cloned()
                .collect();
            if mine.is_empty() {
                return !sub.tx.is_closed();
            }
            sub.tx
                .try_send(WatchBatch {
                    revision,
                    events: mine,
                })
                .is_ok()
        });
    }

    /// The store is gone: every subscriber's channel closes.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().subscribers.clear();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Revisions read from the log per query while catching up.
const REPLAY_CHUNK: i64 = 1000;

/// Feeds one watch: history from the log first, then live events; catches up again after
/// falling behind.
pub(crate) async fn watch_task(
    shared: Arc<Shared>,
    req: WatchRequest,
    out: mpsc::Sender<Result<WatchBatch>>,
) {
    let hub = shared.hub.clone();
    let mut next = match req.start_revision {
        Some(r) if r > 0 => r,
        _ => hub.revision() + 1,
    };
    loop {
        let (id, mut live, published) = hub.subscribe(req.range.clone());
        // What was committed before we subscribed comes from the log.
        while next <= published {
            let to = (next + REPLAY_CHUNK - 1).min(published);
            let (range, from) = (req.range.clone(), next);
            let chunk = shared
                .read(move |conn| {
                    let (_, compacted) = read::meta(conn)?;
                    if from < compacted {
                        return Err(Error::Compacted {
                            requested: from,
                            compacted,
                        });
                    }
                    read::changes(conn, &range, from, to)
                })
                .await;
            match chunk {
                Ok(groups) => {
                    for (revision, events) in groups {
                        if out.send(Ok(WatchBatch { revision, events })).await.is_err() {
                            hub.unsubscribe(id);
                            return;
                        }
                    }
                    next = to + 1;
                }
                Err(e) => {
                    hub.unsubscribe(id);
                    let _ = out.send(Err(e)).await;
                    return;
                }
            }
        }
        // Then what the writer pushes.
        loop {
            tokio::select! {
                batch = live.recv() => match batch {
                    Some(batch) if batch.revision < next => continue,
                    Some(batch) => {
                        next = batch.revision + 1;
                        if out.send(Ok(batch)).await.is_err() {
                            hub.unsubscribe(id);
                            return;
                        }
                    }
                    // Dropped for falling behind (or the store closed): catch up from the log.
                    None => break,
                },
                _ = out.closed() => {
                    hub.unsubscribe(id);
                    return;
                }
            }
        }
        if hub.is_closed() {
            let _ = out
                .send(Err(Error::Unavailable("the store was closed".into())))
                .await;
            return;
        }
    }
}
