//! A subscriber's stream of Loc-RIB changes (see [`Speaker::subscribe`](super::Speaker::subscribe)).
//!
//! The speaker never waits for a subscriber and a subscriber never falls behind: what waits
//! for it is the set of prefixes whose best route changed since it last read them, each one
//! once however often it changed (at most one entry per prefix, so the queue is bounded by the
//! Loc-RIB's size), and a prefix is read as the Loc-RIB holds it when it is read — the latest
//! state wins. A full table arriving in a burst (issue 18: 100,000 changes within a second,
//! the agent writing them to the kernel behind) is thus no reason to drop the subscriber and
//! have it start over from the whole Loc-RIB.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::sync::mpsc::error::TryRecvError;

use super::{RouteChange, Shared};
use crate::rib::LocRibChange;

/// What waits for one subscriber.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pending: Mutex<Pending>,
    /// Told when the first prefix enters an empty queue, and when the stream ends.
    ready: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// The prefixes in the order they first changed.
    order: VecDeque<IpNet>,
    /// The same, to find one.
    queued: HashSet<IpNet>,
    /// The speaker let go of the subscriber (it was shut down).
    ended: bool,
}

impl Queue {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next prefix to read, or whether the stream has ended.
    fn pop(&self) -> Result<IpNet, TryRecvError> {
        let mut p = self.pending();
        match p.order.pop_front() {
            Some(prefix) => {
                p.queued.remove(&prefix);
                if p.order.is_empty() && p.order.capacity() > 4096 {
                    // A burst's room goes back (a full table's prefixes take megabytes).
                    p.order = VecDeque::new();
                    p.queued = HashSet::new();
                }
                Ok(prefix)
            }
            None if p.ended => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

/// The speaker's end of a subscription: dropping it ends the stream (after what is queued).
#[derive(Debug)]
pub(super) struct Subscriber(Arc<Queue>);

impl Subscriber {
    /// The best route of `prefix` changed.
    pub(super) fn changed(&self, prefix: IpNet) {
        let mut p = self.0.pending();
        if p.queued.insert(prefix) {
            p.order.push_back(prefix);
            if p.order.len() == 1 {
                drop(p);
                self.0.ready.notify_one();
            }
        }
    }

    /// The subscription was dropped.
    pub(super) fn is_gone(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.pending().ended = true;
        self.0.ready.notify_one();
    }
}

/// A stream of Loc-RIB changes, from [`Speaker::subscribe`](super::Speaker::subscribe): the
/// latest state of every prefix whose best route changed, once each, in the order they first
/// changed since last read.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    shared: Weak<Shared>,
}

impl Subscription {
    /// A subscription to `shared`'s Loc-RIB with `prefixes` to read first, and the speaker's end.
    pub(super) fn new(
        shared: &Arc<Shared>,
        prefixes: impl Iterator<Item = IpNet>,
    ) -> (Self, Subscriber) {
        let queue = Arc::new(Queue::default());
        {
            let mut p = queue.pending();
            p.order.extend(prefixes);
            p.queued = p.order.iter().copied().collect();
        }
        let subscriber = Subscriber(Arc::clone(&queue));
        (
            Self {
                queue,
                shared: Arc::downgrade(shared),
            },
            subscriber,
        )
    }

    /// The next change, waiting for one; `None` once the speaker has shut down.
    /// Cancel-safe: a change is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<RouteChange> {
        loop {
            match self.try_recv() {
                Ok(change) => return Some(change),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.queue.ready.notified().await,
            }
        }
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Result<RouteChange, TryRecvError> {
        let prefix = self.queue.pop()?;
        let Some(shared) = self.shared.upgrade() else {
            return Err(TryRecvError::Disconnected);
        };
        let best = shared.core().rib.best(&prefix);
        Ok(match best {
            Some(best) => LocRibChange::Best(best),
            None => LocRibChange::Withdrawn(prefix),
        })
    }

    /// How many prefixes wait to be read.
    pub fn len(&self) -> usize {
        self.queue.pending().order.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
