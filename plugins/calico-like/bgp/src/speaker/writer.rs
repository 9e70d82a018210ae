//! A session's send side, shared by its task and the RIB's export (issue 18: the origin's
//! fan-out).
//!
//! An export (a RIB change for many sessions) is encoded once per group of sessions that get
//! the same bytes ([`Export`]), and [`Core::apply`](super::Core) writes those bytes to every
//! session's socket itself, one non-blocking write each, right where the RIB changed: no
//! session waits for its task to be woken. Whatever a socket does not take at once waits in the
//! writer's queue, in order, and the session's task writes it as the socket drains (the
//! task's own messages, OPEN, KEEPALIVE, NOTIFICATION and whole Adj-RIB-Outs, queue behind it).
//!
//! Order: while the task is sending a snapshot of the Adj-RIB-Out (the session's first
//! UPDATEs, a ROUTE-REFRESH, the end of our restart's deferral), or exports handed to it
//! through its channel are not yet queued here, an export must not overtake them; `queued`
//! counts those, and only a writer with `queued == 0` is written to directly.

use std::collections::VecDeque;
use std::io;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

use super::PeerStatus;
use crate::codec::{self, Context, Message};
use crate::rib::OutChange;

/// Messages encoded once, shared by every session that sends them.
#[derive(Debug, Default)]
pub(super) struct Encoded {
    pub(super) bytes: Vec<u8>,
    pub(super) messages: u64,
    pub(super) updates: u64,
}

impl Encoded {
    /// One message.
    pub(super) fn message(message: &Message, cx: &Context) -> Result<Self, codec::EncodeError> {
        Ok(Self {
            bytes: codec::encode(message, cx)?,
            messages: 1,
            updates: u64::from(matches!(message, Message::Update(_))),
        })
    }
}

/// Adj-RIB-Out changes for a group of sessions whose UPDATEs are the same bytes: the same
/// changes, the same encoding context and the same IPv6 next-hop choice. Encoded at most
/// once, by whoever needs the bytes first.
#[derive(Debug)]
pub(super) struct Export {
    pub(super) changes: Vec<OutChange>,
    pub(super) cx: Context,
    pub(super) link_local: Option<(Ipv6Addr, Ipv6Addr)>,
    pub(super) unnumbered: bool,
    encoded: OnceLock<Arc<Encoded>>,
}

impl Export {
    pub(super) fn new(
        changes: Vec<OutChange>,
        cx: Context,
        link_local: Option<(Ipv6Addr, Ipv6Addr)>,
        unnumbered: bool,
    ) -> Self {
        Self {
            changes,
            cx,
            link_local,
            unnumbered,
            encoded: OnceLock::new(),
        }
    }

    /// Whether a session with this context and link-local next hop sends these very bytes.
    pub(super) fn same_bytes(
        &self,
        changes: &[OutChange],
        cx: &Context,
        link_local: Option<(Ipv6Addr, Ipv6Addr)>,
        unnumbered: bool,
    ) -> bool {
        self.cx == *cx
            && self.link_local == link_local
            && self.unnumbered == unnumbered
            && self.changes.len() == changes.len()
            && self.changes == changes
    }

    /// The UPDATEs, encoded on first use.
    pub(super) fn encoded(&self) -> Arc<Encoded> {
        Arc::clone(self.encoded.get_or_init(|| {
            Arc::new(super::export::encode_changes(
                &self.changes,
                &self.cx,
                self.link_local,
                self.unnumbered,
            ))
        }))
    }
}

/// Messages sent to a peer, this session and over its life; shared by its task and the
/// writers of its sessions so that the status is right without waking the task.
#[derive(Debug, Default)]
pub(super) struct SentCounts {
    messages: AtomicU64,
    updates: AtomicU64,
    total_messages: AtomicU64,
    total_updates: AtomicU64,
}

impl SentCounts {
    fn add(&self, messages: u64, updates: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.updates.fetch_add(updates, Ordering::Relaxed);
        self.total_messages.fetch_add(messages, Ordering::Relaxed);
        self.total_updates.fetch_add(updates, Ordering::Relaxed);
    }

    /// A new session (or none): its counts start again.
    pub(super) fn new_session(&self) {
        self.messages.store(0, Ordering::Relaxed);
        self.updates.store(0, Ordering::Relaxed);
    }

    /// Copies the counts into a status.
    pub(super) fn fill(&self, status: &mut PeerStatus) {
        status.messages_sent = self.messages.load(Ordering::Relaxed);
        status.updates_sent = self.updates.load(Ordering::Relaxed);
        status.total.messages_sent = self.total_messages.load(Ordering::Relaxed);
        status.total.updates_sent = self.total_updates.load(Ordering::Relaxed);
    }
}

/// An Established session as the export sees it: where to write, and what decides its bytes.
#[derive(Debug)]
pub(super) struct SessionOut {
    pub(super) writer: Arc<Writer>,
    pub(super) cx: Context,
    pub(super) link_local: Option<(Ipv6Addr, Ipv6Addr)>,
    /// A session to a link-local peer address (our next hop there is our link-local one).
    pub(super) unnumbered: bool,
}

/// Bytes waiting for the socket: part of a shared encoding.
#[derive(Debug)]
struct Chunk {
    data: Arc<Encoded>,
    offset: usize,
}

#[derive(Debug, Default)]
struct WriterState {
    /// Not yet written, in order; the front one possibly in part.
    pending: VecDeque<Chunk>,
    /// Exports that must go before any new one and are not in `pending` yet (see the module
    /// documentation).
    queued: usize,
    /// A write failed: the transport is gone.
    broken: bool,
}

/// What a write attempt left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushed {
    /// Everything is on the socket.
    Done,
    /// The socket is full; the rest waits.
    Blocked,
    /// The connection is broken.
    Broken,
}

/// The send side of one connection.
#[derive(Debug)]
pub(super) struct Writer {
    half: OwnedWriteHalf,
    state: Mutex<WriterState>,
    /// Wakes the task: bytes wait for the socket, or a write failed.
    pub(super) wake: Notify,
    sent: Arc<SentCounts>,
}

impl Writer {
    pub(super) fn new(half: OwnedWriteHalf, sent: Arc<SentCounts>) -> Self {
        Self {
            half,
            state: Mutex::new(WriterState::default()),
            wake: Notify::new(),
            sent,
        }
    }

    fn state(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nothing may overtake what the task is about to send (a snapshot of the Adj-RIB-Out):
    /// exports go through its channel until [`Writer::release`].
    pub(super) fn hold(&self) {
        self.state().queued += 1;
    }

    /// The snapshot (or one export from the channel) is queued: one reason less to hold.
    pub(super) fn release(&self) {
        let mut state = self.state();
        state.queued = state.queued.saturating_sub(1);
    }

    /// An export from the channel: queued behind what went before, and one reason less to
    /// hold.
    pub(super) fn push_released(&self, data: Arc<Encoded>) -> Flushed {
        let mut state = self.state();
        state.queued = state.queued.saturating_sub(1);
        self.push_locked(&mut state, data)
    }

    /// The direct path: if `inline` and nothing must go first, queues `data` and writes what
    /// the socket takes now, returning how many chunks still wait and what the write left;
    /// otherwise returns None: the export has to go through the task (it counts as queued
    /// there from now on).
    pub(super) fn try_direct(
        &self,
        inline: bool,
        data: impl FnOnce() -> Arc<Encoded>,
    ) -> Option<(usize, Flushed)> {
        let mut state = self.state();
        if state.queued > 0 || !inline {
            state.queued += 1;
            return None;
        }
        let flushed = self.push_locked(&mut state, data());
        Some((state.pending.len(), flushed))
    }

    /// An export handed to the task's channel could not be: it no longer counts as queued.
    pub(super) fn unqueue(&self) {
        self.release();
    }

    /// Queues `data` and, when it is first in line, writes what the socket takes now.
    pub(super) fn push(&self, data: Arc<Encoded>) -> Flushed {
        let mut state = self.state();
        self.push_locked(&mut state, data)
    }

    fn push_locked(&self, state: &mut WriterState, data: Arc<Encoded>) -> Flushed {
        if state.broken {
            return Flushed::Broken;
        }
        let first = state.pending.is_empty();
        state.pending.push_back(Chunk { data, offset: 0 });
        if first {
            self.write_locked(state)
        } else {
            Flushed::Blocked
        }
    }

    /// Writes queued bytes until the socket is full, all are written, or a write fails.
    fn write_locked(&self, state: &mut WriterState) -> Flushed {
        if state.broken {
            return Flushed::Broken;
        }
        while let Some(chunk) = state.pending.front_mut() {
            let rest = chunk.data.bytes.get(chunk.offset..).unwrap_or_default();
            if rest.is_empty() {
                self.sent.add(chunk.data.messages, chunk.data.updates);
                state.pending.pop_front();
                continue;
            }
            match self.half.try_write(rest) {
                Ok(0) => {
                    state.broken = true;
                    return Flushed::Broken;
                }
                Ok(n) => chunk.offset += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    state.broken = true;
                    return Flushed::Broken;
                }
            }
        }
        Flushed::Done
    }

    /// Writes everything queued, waiting for the socket as long as it takes up to `limit`
    /// (then the transport counts as broken). Returns whether all was written.
    pub(super) async fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let flushed = {
                let mut state = self.state();
                self.write_locked(&mut state)
            };
            match flushed {
                Flushed::Done => return true,
                Flushed::Broken => return false,
                Flushed::Blocked => {}
            }
            if !matches!(timeout_at(deadline, self.half.writable()).await, Ok(Ok(()))) {
                self.state().broken = true;
                return false;
            }
        }
    }
}
