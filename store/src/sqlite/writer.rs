//! The one writer: a thread that owns the write connection, commits transactions in groups
//! (one fsync for all the requests waiting), then publishes their events and answers.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::hub::Hub;
use super::read;
use crate::error::{Error, Result};
use crate::types::{Event, EventKind, KeyValue, Op, OpResponse, Txn, TxnResponse};

pub(crate) enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    Compact(i64, oneshot::Sender<Result<()>>),
}

/// Requests committed together at most; more wait for the next group.
const MAX_GROUP: usize = 256;

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) revision: i64,
    pub(crate) compacted: i64,
    pub(crate) hub: Arc<Hub>,
    /// Automatic compaction keeps this many revisions of history (None: never compact).
    pub(crate) retain: Option<i64>,
    pub(crate) interval: Duration,
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let mut next_auto = Instant::now() + self.interval;
        loop {
            let wait = next_auto.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.auto_compact();
                    next_auto = Instant::now() + self.interval;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let mut txns = Vec::new();
            for req in group {
                match req {
                    Request::Txn(t, reply) => txns.push((t, reply)),
                    Request::Compact(rev, reply) => {
                        // Keep order: what came before the compaction commits first.
                        self.commit_group(std::mem::take(&mut txns));
                        let _ = reply.send(self.compact(rev));
                    }
                }
            }
            self.commit_group(txns);
        }
        self.hub.close();
    }

    fn commit_group(&mut self, txns: Vec<(Txn, oneshot::Sender<Result<TxnResponse>>)>) {
        if txns.is_empty() {
            return;
        }
        match self.apply_group(&txns) {
            Ok(outcomes) => {
                self.revision = outcomes
                    .last()
                    .map_or(self.revision, |(r, _)| r.revision.max(self.revision));
                for ((resp, events), (_, reply)) in outcomes.into_iter().zip(txns) {
                    if !events.is_empty() {
                        self.hub.publish(resp.revision, events);
                    }
                    let _ = reply.send(Ok(resp));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, reply) in txns {
                    let _ = reply.send(Err(Error::Unavailable(format!("commit failed: {msg}"))));
                }
            }
        }
    }

    /// Applies every transaction of the group in one SQLite transaction; nothing is visible (or
    /// acknowledged) until the commit has reached the disk.
    fn apply_group(
        &mut self,
        txns: &[(Txn, oneshot::Sender<Result<TxnResponse>>)],
    ) -> Result<Vec<(TxnResponse, Vec<Event>)>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rev = self.revision;
        let mut outcomes = Vec::with_capacity(txns.len());
        for (txn, _) in txns {
            let outcome = apply(&tx, rev, txn)?;
            rev = outcome.0.revision;
            outcomes.push(outcome);
        }
        if rev != self.revision {
            tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [rev])?;
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn compact(&mut self, to: i64) -> Result<()> {
        if to <= self.compacted {
            return Err(Error::Compacted {
                requested: to,
                compacted: self.compacted,
            });
        }
        if to > self.revision {
            return Err(Error::FutureRevision {
                requested: to,
                current: self.revision,
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Rows before `to` that a later row (up to `to`) of the same key supersedes; then the
        // tombstones before `to`, which nothing older remains to shadow.
        tx.execute(
            "DELETE FROM log WHERE rev < ?1 AND EXISTS
               (SELECT 1 FROM log n WHERE n.key = log.key AND n.rev > log.rev AND n.rev <= ?1)",
            [to],
        )?;
        tx.execute("DELETE FROM log WHERE rev < ?1 AND deleted = 1", [to])?;
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'compacted'", [to])?;
        tx.commit()?;
        self.compacted = to;
        self.hub.set_compacted(to);
        // Give freed pages back to the file system and keep the WAL from growing: the file
        // stays bounded (kine's grows without end).
        let _ = self
            .conn
            .execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);");
        Ok(())
    }

    fn auto_compact(&mut self) {
        let Some(retain) = self.retain else { return };
        let to = self.revision - retain;
        if to > self.compacted
            && let Err(e) = self.compact(to)
        {
            tracing::warn!(error = %e, to, "automatic compaction failed");
        }
    }
}

/// One transaction at revision `rev + 1` (or `rev` if it changes nothing).
fn apply(conn: &Connection, rev: i64, txn: &Txn) -> Result<(TxnResponse, Vec<Event>)> {
    let mut succeeded = true;
    for c in &txn.compares {
        if !c.holds(read::current(conn, &c.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let new_rev = rev + 1;
    let mut events = Vec::new();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Range(r) => {
                let mut resp = read::range(conn, r)?;
                resp.revision = if events.is_empty() { rev } else { new_rev };
                responses.push(OpResponse::Range(resp));
            }
            Op::Put { key, value } => {
                let prev = read::current(conn, key)?;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(new_rev, |p| p.create_revision),
                    mod_revision: new_rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                };
                conn.prepare_cached(
                    "INSERT INTO kv (key, value, create_rev, mod_rev, version) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (key) DO UPDATE SET value = ?2, mod_rev = ?4, version = ?5",
                )?
                .execute(params![kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version])?;
                log(conn, new_rev, events.len(), &kv, false)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: prev.clone(),
                });
                responses.push(OpResponse::Put { prev });
            }
            Op::Delete { range } => {
                let gone = read::current_range(conn, range)?;
                for old in &gone {
                    conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                        .execute([&old.key])?;
                    let tomb = KeyValue {
                        key: old.key.clone(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: new_rev,
                        version: 0,
                    };
                    log(conn, new_rev, events.len(), &tomb, true)?;
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: tomb,
                        prev_kv: Some(old.clone()),
                    });
                }
                responses.push(OpResponse::Delete { deleted: gone });
            }
        }
    }
    let revision = if events.is_empty() { rev } else { new_rev };
    Ok((
        TxnResponse {
            succeeded,
            responses,
            revision,
        },
        events,
    ))
}

fn log(conn: &Connection, rev: i64, seq: usize, kv: &KeyValue, deleted: bool) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO log (rev, seq, key, deleted, value, create_rev, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![rev, seq as i64, kv.key, deleted, kv.value, kv.create_revision, kv.version])?;
    Ok(())
}
