//! Watch: a chunked stream of `{"type": ..., "object": ...}` frames fed by the store's watch.
//!
//! - No resourceVersion (or "0"): the current objects first as ADDED, then changes.
//! - `resourceVersion=N`: changes after N; if N was compacted, one ERROR frame with 410 Expired.
//! - `sendInitialEvents=true`: the current objects, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end`, then changes (client-go's streaming list).
//! - `allowWatchBookmarks`: a BOOKMARK with the current revision now and then.
//! - Selectors: an object that stops matching is reported DELETED, one that starts matching
//!   ADDED, as the Kubernetes watch cache does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use trellis_api::ResourceInfo;
use trellis_store::{EventKind, KeyRange, WatchRequest};

use super::crud::{parse_rv, selectors};
use super::{Api, Call, Reply};
use crate::status::ApiError;
use crate::storage::ListAt;
use crate::{meta, table};

/// How often an idle watch with bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// The longest a watch lives without `timeoutSeconds` (clients re-watch).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn frame(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(info: &ResourceInfo, revision: i64, initial_end: bool) -> Value {
    let mut m = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": m})
}

impl Api {
    pub(super) async fn watch(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let filter = selectors(info, call)?;
        let rv = match call.q("resourceVersion") {
            None | Some("0") => None,
            Some(rv) => Some(parse_rv(rv)?),
        };
        let send_initial = call.q("sendInitialEvents") == Some("true");
        let bookmarks = call.q("allowWatchBookmarks") == Some("true");
        if send_initial && !bookmarks {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
        if send_initial && rv.is_some() && call.q("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::bad_request(
                "sendInitialEvents with a resourceVersion requires resourceVersionMatch=NotOlderThan",
            ));
        }
        let timeout = match call.q("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        let ns = call.req.namespace.clone();
        let as_table = call.wants_table();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let encode = {
            let info = info.clone();
            let registry = Arc::clone(&self.registry);
            move |obj: Value, first: &mut bool| -> Value {
                if as_table {
                    let printer = registry.printer(&info);
                    let t = table::table(&printer, &[obj], 0, None, Some("Object"));
                    let t = if *first { t } else { table::without_columns(t) };
                    *first = false;
                    t
                } else {
                    obj
                }
            }
        };

        // Where the change stream starts, and what comes before it.
        let mut initial = Vec::new();
        let start = match (rv, send_initial) {
            (Some(rv), false) => rv + 1,
            _ => {
                let page = self
                    .storage
                    .list(info, ns.as_deref(), ListAt::Latest, 0, None, &filter)
                    .await?;
                initial = page.items;
                page.revision + 1
            }
        };
        let prefix = info.storage_namespace_prefix(ns.as_deref());
        let mut stream = match self
            .storage
            .store()
            .watch(WatchRequest::new(KeyRange::prefix(prefix)).from_revision(start))
            .await
        {
            Ok(s) => s,
            Err(e) => return Err(e.into()),
        };
        let info = info.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut last_rev = start - 1;
            for obj in initial {
                if tx
                    .send(frame("ADDED", encode(obj, &mut first)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if send_initial
                && tx
                    .send(frame("BOOKMARK", bookmark(&info, last_rev, true)))
                    .await
                    .is_err()
            {
                return;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
            ticker.tick().await;
            loop {
                tokio::select! {
                    batch = stream.next() => {
                        let batch = match batch {
                            Some(Ok(b)) => b,
                            Some(Err(e)) => {
                                let status: ApiError = e.into();
                                let _ = tx.send(frame("ERROR", status.to_status())).await;
                                return;
                            }
                            None => return,
                        };
                        last_rev = batch.revision;
                        for ev in batch.events {
                            let decode = |kv: &trellis_store::KeyValue| -> Option<Value> {
                                let mut o: Value = serde_json::from_slice(&kv.value).ok()?;
                                meta::meta_mut(&mut o).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                                Some(o)
                            };
                            let prev = ev.prev_kv.as_ref().and_then(decode).filter(|o| filter(o));
                            let (kind, obj) = match ev.kind {
                                EventKind::Put => {
                                    let Some(now) = decode(&ev.kv) else { continue };
                                    match (filter(&now), prev.is_some()) {
                                        (true, true) => ("MODIFIED", now),
                                        (true, false) => ("ADDED", now),
                                        (false, true) => ("DELETED", now),
                                        (false, false) => continue,
                                    }
                                }
                                EventKind::Delete => {
                                    let Some(mut gone) = prev else { continue };
                                    meta::meta_mut(&mut gone).insert("resourceVersion".into(), json!(batch.revision.to_string()));
                                    ("DELETED", gone)
                                }
                            };
                            if tx.send(frame(kind, encode(obj, &mut first))).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ = ticker.tick(), if bookmarks => {
                        if tx.send(frame("BOOKMARK", bookmark(&info, last_rev, false))).await.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Reply::Stream(rx))
    }
}
