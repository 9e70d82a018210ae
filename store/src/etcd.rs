//! The etcd backend: the [`Store`](crate::Store) trait mapped 1:1 onto etcd's v3 KV, Watch and
//! Compact RPCs through etcd-client (gRPC), for control planes on several machines.
//!
//! Semantics are etcd's own, which the embedded backend copies: ranges and transactions are
//! linearizable, a transaction's revision is the store's revision after it, delete events carry
//! a tombstone (`create_revision` 0, `version` 0, empty value) and the deleted key as `prev_kv`.
//!
//! **Failures.** etcd-client balances requests over every endpoint, but a dead endpoint stays in
//! the balancer and keeps receiving requests, which fail at once with a connect error (tonic's
//! reconnecting service reports itself ready so that the error reaches a caller). So each
//! request is retried, within a bounded window:
//!
//! - reads (ranges, `current_revision`, watch creation) on any transient failure;
//! - writes only when the failure proves the request was never applied (no connection, "no
//!   leader", "too many requests"). A write that failed in flight (connection lost, time-out,
//!   leader changed) may or may not have been applied; it is never repeated behind the caller's
//!   back — a repeated compare-and-swap could report a failure for a change that was in fact
//!   made — and surfaces as [`Error::Unavailable`].
//!
//! Watches resume by themselves after a lost connection, from the revision after the last one
//! delivered, so a consumer sees every revision exactly once, in order.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity, KvClient,
    PutOptions, TlsOptions, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use tokio::sync::mpsc;

use crate::Store;
use crate::error::{Error, Result};
use crate::types::{
    Compare, CompareOp, Event, EventKind, KeyRange, KeyValue, Op, OpResponse, RangeRequest,
    RangeResponse, Target, Txn, TxnResponse, WatchBatch, WatchRequest,
};
use crate::watch::WatchStream;

/// Tuning of the etcd backend.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Time allowed to open a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of one request.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive pings: interval and time to wait for the answer. A connection to a
    /// member that stopped answering (not just closed) is dropped after about their sum.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
    /// How long one request is retried on transient failures (and how long a broken watch
    /// tries to resume) before the error is returned.
    pub retry_window: Duration,
    /// Batches a watcher may have unread before the watch stops reading from etcd.
    pub watch_buffer: usize,
    /// TLS to etcd (its endpoints are then `https://`); None speaks plain HTTP/2.
    pub tls: Option<crate::EtcdTls>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(2),
            keep_alive_timeout: Duration::from_secs(2),
            retry_window: Duration::from_secs(15),
            watch_buffer: 256,
            tls: None,
        }
    }
}

/// A store on an etcd cluster. Cheap to clone (clones share the connections).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// First retry delay; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a probe for the compacted revision may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl EtcdStore {
    /// Connects to the cluster behind `endpoints` (`http://host:port`, or `host:port`) with the
    /// default options (no TLS), and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        EtcdStore::connect_with(endpoints, EtcdOptions::default()).await
    }

    /// As [`connect`](Self::connect), with `options`.
    pub async fn connect_with(endpoints: &[String], options: EtcdOptions) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(Error::Unavailable("no etcd endpoints given".into()));
        }
        check_schemes(endpoints, options.tls.is_some())?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(options.keep_alive_interval)
            // A member cut off from the leader refuses requests ("no leader") instead of
            // waiting, and cancels our watches, which then resume on another member.
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            // Only the given CA: the machine's roots are never trusted for etcd.
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(|e| Error::Unavailable(format!("connect to etcd at {endpoints:?}: {e}")))?;
        let store = EtcdStore { client, options };
        // The client connects lazily; make sure someone answers.
        match store.current_revision().await {
            Ok(_) => Ok(store),
            Err(Error::Tls(why)) => Err(Error::Tls(format!(
                "connect to etcd at {endpoints:?}: {why} (etcd's serving certificate must be \
                 signed by --etcd-cafile and name the address dialled; an etcd with \
                 --client-cert-auth needs --etcd-certfile and --etcd-keyfile, signed by its \
                 --trusted-ca-file)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The underlying etcd-client, for what the store trait does not cover (leases, locks).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The oldest revision still readable (0 if etcd never compacted).
    pub async fn compacted_revision(&self) -> Result<i64> {
        // A read at revision 1 is cheap and tells whether anything was compacted at all; only
        // then ask a watch, which names the compaction point.
        let at_one = self
            .call(Kind::Read, || {
                let mut kv = self.kv();
                async move {
                    kv.get(
                        vec![0],
                        Some(GetOptions::new().with_count_only().with_revision(1)),
                    )
                    .await
                }
            })
            .await;
        match at_one {
            Ok(_) => Ok(0),
            Err(Failure::Compacted) => self.probe_compacted(1).await?.ok_or_else(|| {
                Error::Unavailable("etcd did not tell its compacted revision".into())
            }),
            Err(f) => Err(self.explain(f, 1).await),
        }
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    fn watch_client(&self) -> WatchClient {
        self.client.watch_client()
    }

    /// Runs one request, retrying transient failures (see the module documentation) until
    /// `retry_window` has passed.
    async fn call<T, F, Fut>(&self, kind: Kind, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.options.retry_window;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (class, message) =
                match tokio::time::timeout(self.options.request_timeout, attempt()).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) => classify(&e),
                    Err(_) => (
                        Class::InFlight,
                        format!(
                            "no answer from etcd within {:?}",
                            self.options.request_timeout
                        ),
                    ),
                };
            let retry = match class {
                Class::NotApplied => true,
                Class::InFlight => kind == Kind::Read,
                Class::Compacted => return Err(Failure::Compacted),
                Class::Future => return Err(Failure::Future),
                Class::Fatal(e) => return Err(Failure::Store(e)),
            };
            if !retry {
                return Err(Failure::Store(Error::Unavailable(format!(
                    "{message} (the write may or may not have been applied)"
                ))));
            }
            if Instant::now() + backoff > deadline {
                return Err(Failure::Store(Error::Unavailable(format!(
                    "{message} (retried for {:?})",
                    self.options.retry_window
                ))));
            }
            tracing::debug!(error = %message, "etcd request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Turns a failure into the store's error, asking etcd for the revisions the error names.
    async fn explain(&self, failure: Failure, requested: i64) -> Error {
        match failure {
            Failure::Store(e) => e,
            Failure::Compacted => {
                // The compaction point is at least `requested` (a compaction to exactly it is
                // refused too), so a watch from just before it names the point; if etcd cannot
                // say, `requested` is the best lower bound.
                let probe_at = (requested - 1).max(1);
                let compacted = self
                    .probe_compacted(probe_at)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(requested);
                Error::Compacted {
                    requested,
                    compacted,
                }
            }
            Failure::Future => {
                let current = self.current_revision().await.unwrap_or(requested - 1);
                Error::FutureRevision { requested, current }
            }
        }
    }

    /// The compaction point, as a watch from `at` (a compacted revision) reports it.
    async fn probe_compacted(&self, at: i64) -> Result<Option<i64>> {
        let mut client = self.watch_client();
        let probe = async move {
            let options = WatchOptions::new().with_start_revision(at.max(1));
            let mut stream = client.watch(vec![0], Some(options)).await?;
            // etcd answers "created", then (the start being compacted) a cancellation naming the
            // compaction point. Anything else means `at` is not compacted (any more).
            for _ in 0..4 {
                match stream.message().await? {
                    Some(r) if r.compact_revision() > 0 => return Ok(Some(r.compact_revision())),
                    Some(r) if r.created() && !r.canceled() => continue,
                    _ => return Ok(None),
                }
            }
            Ok::<_, etcd_client::Error>(None)
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "ask etcd for its compacted revision: {e}"
            ))),
            Err(_) => Ok(None),
        }
    }

    /// Opens an etcd watch on `(key, end)` from `start` (0: now), retrying transient failures;
    /// returns the stream, its id and the first revision it will deliver.
    async fn open_watch(&self, key: &[u8], end: &[u8], start: i64) -> Result<OpenWatch, Failure> {
        let mut options = WatchOptions::new()
            .with_prev_key()
            .with_start_revision(start);
        if !end.is_empty() {
            options = options.with_range(end.to_vec());
        }
        self.call(Kind::Read, || {
            let mut client = self.watch_client();
            let (key, options) = (key.to_vec(), options.clone());
            async move {
                let mut stream = client.watch(key, Some(options)).await?;
                loop {
                    let Some(resp) = stream.message().await? else {
                        return Err(etcd_client::Error::WatchError(
                            "the watch ended before it was created".into(),
                        ));
                    };
                    if resp.canceled() {
                        return Err(watch_canceled(&resp));
                    }
                    if resp.created() {
                        let revision = resp.header().map_or(0, |h| h.revision());
                        let next = if start > 0 { start } else { revision + 1 };
                        return Ok(OpenWatch {
                            stream,
                            id: resp.watch_id(),
                            next,
                        });
                    }
                }
            }
        })
        .await
    }
}

struct OpenWatch {
    stream: etcd_client::WatchStream,
    id: i64,
    /// The first revision the watch delivers.
    next: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Safe to repeat whatever happened.
    Read,
    /// Repeated only if it certainly was not applied.
    Write,
}

/// What a failed request means for a retry.
#[derive(Debug)]
enum Class {
    /// The request was certainly not applied: repeat it.
    NotApplied,
    /// The request failed in flight: a read may be repeated, a write may have been applied.
    InFlight,
    Compacted,
    Future,
    /// Repeating cannot help.
    Fatal(Error),
}

/// A failed request, before the store's error is made of it.
#[derive(Debug)]
enum Failure {
    Compacted,
    Future,
    Store(Error),
}

impl From<Failure> for Error {
    /// Without asking etcd for details (for where they are not needed).
    fn from(f: Failure) -> Error {
        match f {
            Failure::Store(e) => e,
            Failure::Compacted => Error::Compacted {
                requested: 0,
                compacted: 0,
            },
            Failure::Future => Error::FutureRevision {
                requested: 0,
                current: 0,
            },
        }
    }
}

/// gRPC status codes (tonic's `Code` as numbers; etcd-client does not re-export tonic).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNAVAILABLE: i32 = 14;
    #[cfg(test)]
    pub const INVALID_ARGUMENT: i32 = 3;
    #[cfg(test)]
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    #[cfg(test)]
    pub const OUT_OF_RANGE: i32 = 11;
}

fn classify(e: &etcd_client::Error) -> (Class, String) {
    let message = e.to_string();
    let class = match e {
        etcd_client::Error::GRpcStatus(status) => {
            // The source chain says more than the message for transport failures.
            let mut detail = status.message().to_string();
            let mut source = std::error::Error::source(status);
            while let Some(s) = source {
                // Wrappers repeat their cause's words: each part once.
                let part = s.to_string();
                if !detail.contains(&part) {
                    detail.push_str(": ");
                    detail.push_str(&part);
                }
                source = s.source();
            }
            let class = classify_status(i32::from(status.code()), &detail);
            if matches!(class, Class::Fatal(Error::Tls(_))) {
                return (class, detail);
            }
            class
        }
        // Failures to reach a member at all: nothing was sent.
        etcd_client::Error::TransportError(_) => Class::NotApplied,
        // A watch etcd canceled (its reason), or whose request channel closed.
        etcd_client::Error::WatchError(reason) => classify_status(code::UNKNOWN, reason),
        etcd_client::Error::IoError(_) => Class::InFlight,
        _ => Class::Fatal(Error::Etcd(message.clone())),
    };
    (class, message)
}

/// TLS endpoints are `https://` (or bare `host:port`) and only TLS endpoints are: a mix
/// would reach some members in the clear, or fail their handshakes for ever.
fn check_schemes(endpoints: &[String], tls: bool) -> Result<()> {
    let https: Vec<&String> = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .collect();
    let http: Vec<&String> = endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .collect();
    if tls && !http.is_empty() {
        return Err(Error::Tls(format!(
            "TLS is configured but {http:?} are plain http:// endpoints: use https://"
        )));
    }
    if !tls && !https.is_empty() {
        return Err(Error::Tls(format!(
            "{https:?} are https:// endpoints: give the CA that signed etcd's certificate \
             (--etcd-cafile), and a client certificate and key if etcd asks for one \
             (--etcd-certfile, --etcd-keyfile)"
        )));
    }
    Ok(())
}

/// Classifies a gRPC status by code and message (etcd's `rpctypes` errors, and tonic's
/// transport errors).
fn classify_status(code: i32, message: &str) -> Class {
    let has = |s: &str| message.contains(s);
    // A handshake that failed on a certificate (ours untrusted or missing, etcd's not signed
    // by our CA or not naming its address) fails the same way every time.
    let tls_refused = [
        "invalid peer certificate",
        "received fatal alert",
        "InvalidCertificate",
        "NoCertificatesPresented",
    ];
    // Not "tls handshake eof": a member that is killed or restarting closes the connection
    // mid-handshake the same way, so it is retried below like any unreachable member (a
    // missing client certificate under TLS 1.3 can look the same: it ends as Unavailable
    // when the retry window closes).
    if tls_refused.iter().any(|s| has(s)) {
        return Class::Fatal(Error::Tls(message.to_string()));
    }
    if has("required revision has been compacted") {
        return Class::Compacted;
    }
    if has("required revision is a future revision") {
        return Class::Future;
    }
    // Refused before the request went anywhere: by the client (no connection), or by etcd's
    // front door (no leader to propose to, throttled).
    let refused_before_sending = [
        "error trying to connect",
        "tcp connect error",
        "Connection refused",
        "tls handshake eof",
        "dns error",
        "etcdserver: no leader",
        "etcdserver: not capable",
        "etcdserver: too many requests",
    ];
    if refused_before_sending.iter().any(|s| has(s)) {
        return Class::NotApplied;
    }
    if has("watcher range is empty") || has("permission denied") {
        return Class::Fatal(Error::Etcd(message.to_string()));
    }
    if has("etcdserver: key is not provided") {
        return Class::Fatal(Error::EmptyKey);
    }
    if has("etcdserver: duplicate key given in txn request") {
        return Class::Fatal(Error::DuplicateKey);
    }
    match code {
        code::UNAVAILABLE | code::DEADLINE_EXCEEDED | code::CANCELLED | code::UNKNOWN => {
            Class::InFlight
        }
        _ => Class::Fatal(Error::Etcd(message.to_string())),
    }
}

/// The error for a watch etcd canceled.
fn watch_canceled(resp: &etcd_client::WatchResponse) -> etcd_client::Error {
    let reason = resp.cancel_reason();
    let reason = if reason.is_empty() {
        "etcd canceled the watch"
    } else {
        reason
    };
    // Keep etcd's message so that `classify` sees "no leader", "compacted", …
    etcd_client::Error::WatchError(reason.to_string())
}

/// etcd's `(key, range_end)` for a range: an empty end is one key, `\0` every key from `key`.
fn etcd_range(range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    match range {
        KeyRange::Key(k) => (k.clone(), Vec::new()),
        KeyRange::Prefix(p) if p.is_empty() => (vec![0], vec![0]),
        KeyRange::Prefix(p) => (
            p.clone(),
            crate::types::prefix_end(p).unwrap_or_else(|| vec![0]),
        ),
        // [s, s) is empty, which etcd understands — except for s = "\0", where range_end "\0"
        // would mean "from \0 on"; any other empty interval does.
        KeyRange::Between(s, e) if s == e => (vec![1], vec![1]),
        KeyRange::Between(s, e) => (s.clone(), e.clone()),
        KeyRange::From(s) => (s.clone(), vec![0]),
    }
}

fn is_empty_range(range: &KeyRange) -> bool {
    matches!(range, KeyRange::Between(s, e) if s >= e)
}

fn get_options(req: &RangeRequest) -> (Vec<u8>, GetOptions) {
    let (key, end) = etcd_range(&req.range);
    let mut options = GetOptions::new();
    if !end.is_empty() {
        options = options.with_range(end);
    }
    if req.limit > 0 {
        options = options.with_limit(i64::try_from(req.limit).unwrap_or(i64::MAX));
    }
    if let Some(rev) = req.revision {
        options = options.with_revision(rev);
    }
    if req.keys_only {
        options = options.with_keys_only();
    }
    (key, options)
}

fn etcd_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value } => TxnOp::put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_prev_key()),
        ),
        Op::Delete { range } => {
            let (key, end) = etcd_range(range);
            let mut options = DeleteOptions::new().with_prev_key();
            if !end.is_empty() {
                options = options.with_range(end);
            }
            TxnOp::delete(key, Some(options))
        }
        Op::Range(r) => {
            let (key, options) = get_options(r);
            TxnOp::get(key, Some(options))
        }
    }
}

fn etcd_compare(c: &Compare) -> etcd_client::Compare {
    let op = match c.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    };
    let key = c.key.clone();
    match &c.target {
        Target::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, *r),
        Target::CreateRevision(r) => etcd_client::Compare::create_revision(key, op, *r),
        Target::Version(v) => etcd_client::Compare::version(key, op, *v),
        Target::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
    }
}

fn etcd_txn(txn: &Txn) -> etcd_client::Txn {
    etcd_client::Txn::new()
        .when(txn.compares.iter().map(etcd_compare).collect::<Vec<_>>())
        .and_then(txn.success.iter().map(etcd_op).collect::<Vec<_>>())
        .or_else(txn.failure.iter().map(etcd_op).collect::<Vec<_>>())
}

fn kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Etcd("response without a header".into()))
}

fn range_response(resp: &etcd_client::GetResponse, revision: i64) -> RangeResponse {
    RangeResponse {
        kvs: resp.kvs().iter().map(kv).collect(),
        more: resp.more(),
        count: resp.count(),
        revision,
    }
}

/// Maps a transaction's answer. `ops` is the branch that ran.
fn txn_response(resp: &etcd_client::TxnResponse, ops: &[Op]) -> Result<TxnResponse> {
    let revision = header_revision(resp.header())?;
    let answers = resp.op_responses();
    if answers.len() != ops.len() {
        return Err(Error::Etcd(format!(
            "{} answers to a branch of {} operations",
            answers.len(),
            ops.len()
        )));
    }
    // Whether the transaction changed anything, and so whether the revision before it was
    // `revision - 1`: a range inside it reports the revision as of its place in the branch.
    let wrote = |a: &TxnOpResponse| match a {
        TxnOpResponse::Put(_) => true,
        TxnOpResponse::Delete(d) => d.deleted() > 0,
        _ => false,
    };
    let changed = answers.iter().any(wrote);
    let mut written_before = false;
    let mut responses = Vec::with_capacity(answers.len());
    for answer in &answers {
        responses.push(match answer {
            TxnOpResponse::Put(p) => OpResponse::Put {
                prev: p.prev_key().map(kv),
            },
            TxnOpResponse::Delete(d) => OpResponse::Delete {
                deleted: d.prev_kvs().iter().map(kv).collect(),
            },
            TxnOpResponse::Get(g) => {
                let at = if changed && !written_before {
                    revision - 1
                } else {
                    revision
                };
                OpResponse::Range(range_response(g, at))
            }
            TxnOpResponse::Txn(_) => {
                return Err(Error::Etcd("a nested transaction in the answer".into()));
            }
        });
        written_before |= wrote(answer);
    }
    Ok(TxnResponse {
        succeeded: resp.succeeded(),
        responses,
        revision,
    })
}

fn event(e: &etcd_client::Event) -> Result<Event> {
    let kv_of = e
        .kv()
        .ok_or_else(|| Error::Etcd("a watch event without a key".into()))?;
    let kind = match e.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Ok(Event {
        kind,
        kv: kv(kv_of),
        prev_kv: e.prev_kv().map(kv),
    })
}

/// Groups events (in revision order) into one batch per revision, skipping revisions before
/// `next` (already delivered before a resume).
fn group(events: Vec<Event>, next: i64) -> Vec<WatchBatch> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    for e in events {
        let revision = e.kv.mod_revision;
        if revision < next {
            continue;
        }
        match batches.last_mut() {
            Some(b) if b.revision == revision => b.events.push(e),
            _ => batches.push(WatchBatch {
                revision,
                events: vec![e],
            }),
        }
    }
    batches
}

/// The compact, range and future-revision checks of a transaction's range operations, for
/// the error: the oldest and the newest revision any of them asks for.
fn txn_revisions(txn: &Txn) -> (i64, i64) {
    let revs: Vec<i64> = txn
        .success
        .iter()
        .chain(&txn.failure)
        .filter_map(|op| match op {
            Op::Range(r) => r.revision.filter(|r| *r > 0),
            _ => None,
        })
        .collect();
    (
        revs.iter().copied().min().unwrap_or(0),
        revs.iter().copied().max().unwrap_or(0),
    )
}

#[async_trait::async_trait]
impl crate::Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        req.range.validate()?;
        let (key, options) = get_options(&req);
        let resp = self
            .call(Kind::Read, || {
                let (mut kv, key, options) = (self.kv(), key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await;
        match resp {
            Ok(resp) => Ok(range_response(&resp, header_revision(resp.header())?)),
            Err(f) => Err(self.explain(f, req.revision.unwrap_or(0)).await),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let request = etcd_txn(&txn);
        let writes = txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| !matches!(op, Op::Range(_)));
        let kind = if writes { Kind::Write } else { Kind::Read };
        let resp = self
            .call(kind, || {
                let (mut kv, request) = (self.kv(), request.clone());
                async move { kv.txn(request).await }
            })
            .await;
        match resp {
            Ok(resp) => txn_response(
                &resp,
                if resp.succeeded() {
                    &txn.success
                } else {
                    &txn.failure
                },
            ),
            Err(f) => {
                let (oldest, newest) = txn_revisions(&txn);
                let requested = if matches!(f, Failure::Future) {
                    newest
                } else {
                    oldest
                };
                Err(self.explain(f, requested).await)
            }
        }
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        req.range.validate()?;
        let (tx, stream) = WatchStream::channel(self.options.watch_buffer.clamp(1, 4096));
        if is_empty_range(&req.range) {
            // etcd refuses an empty watch range; nothing can ever change in it.
            tokio::spawn(async move { tx.closed().await });
            return Ok(stream);
        }
        let (key, end) = etcd_range(&req.range);
        let start = req.start_revision.filter(|r| *r > 0).unwrap_or(0);
        // Created before we return, so that every change after this call is seen.
        let open = match self.open_watch(&key, &end, start).await {
            Ok(open) => open,
            Err(f) => return Err(self.explain(f, start).await),
        };
        tokio::spawn(watch_task(self.clone(), key, end, open, tx));
        Ok(stream)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        if revision <= 0 {
            // etcd would take this as a no-op; the store's model refuses it as compacted.
            return Err(Error::Compacted {
                requested: revision,
                compacted: self.compacted_revision().await?,
            });
        }
        let resp = self
            .call(Kind::Write, || {
                let mut kv = self.kv();
                async move {
                    kv.compact(
                        revision,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
                }
            })
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(f) => Err(self.explain(f, revision).await),
        }
    }

    async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .call(Kind::Read, || {
                let mut kv = self.kv();
                async move {
                    kv.get(vec![0], Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        header_revision(resp.header())
    }
}

/// Feeds one watch: maps etcd's responses to batches, resumes after a lost connection, and
/// cancels the etcd watch when the consumer is gone.
async fn watch_task(
    store: EtcdStore,
    key: Vec<u8>,
    end: Vec<u8>,
    open: OpenWatch,
    tx: mpsc::Sender<Result<WatchBatch>>,
) {
    let OpenWatch {
        mut stream,
        mut id,
        mut next,
    } = open;
    loop {
        let outcome = tokio::select! {
            message = stream.message() => message,
            () = tx.closed() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.cancel(id)).await;
                return;
            }
        };
        let failure = match outcome {
            Ok(Some(resp)) if resp.compact_revision() > 0 => {
                let _ = tx
                    .send(Err(Error::Compacted {
                        requested: next,
                        compacted: resp.compact_revision(),
                    }))
                    .await;
                return;
            }
            Ok(Some(resp)) if resp.canceled() => watch_canceled(&resp),
            Ok(Some(resp)) => {
                let events: Result<Vec<Event>> = resp.events().iter().map(event).collect();
                let events = match events {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stream.cancel(id)).await;
                        return;
                    }
                };
                for batch in group(events, next) {
                    next = batch.revision + 1;
                    if tx.send(Ok(batch)).await.is_err() {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stream.cancel(id)).await;
                        return;
                    }
                }
                continue;
            }
            Ok(None) => etcd_client::Error::WatchError("etcd closed the watch stream".into()),
            Err(e) => e,
        };
        // Lost: resume from `next` if the failure is transient, else end with the error.
        match classify(&failure).0 {
            Class::NotApplied | Class::InFlight => {
                tracing::debug!(error = %failure, next, "etcd watch broke; resuming");
            }
            Class::Compacted => {
                let e = store.explain(Failure::Compacted, next).await;
                let _ = tx.send(Err(e)).await;
                return;
            }
            Class::Future => {
                let e = store.explain(Failure::Future, next).await;
                let _ = tx.send(Err(e)).await;
                return;
            }
            Class::Fatal(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let reopened = tokio::select! {
            r = store.open_watch(&key, &end, next) => r,
            () = tx.closed() => return,
        };
        match reopened {
            Ok(open) => (stream, id) = (open.stream, open.id),
            Err(f) => {
                let e = store.explain(f, next).await;
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: b"v".to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            },
            prev_kv: None,
        }
    }

    #[test]
    fn ranges_map_to_etcd_key_and_range_end() {
        assert_eq!(etcd_range(&KeyRange::key("a")), (b"a".to_vec(), vec![]));
        assert_eq!(
            etcd_range(&KeyRange::prefix("/r/")),
            (b"/r/".to_vec(), b"/r0".to_vec())
        );
        assert_eq!(
            etcd_range(&KeyRange::prefix("")),
            (vec![0], vec![0]),
            "every key"
        );
        assert_eq!(
            etcd_range(&KeyRange::prefix(vec![0xff, 0xff])),
            (vec![0xff, 0xff], vec![0])
        );
        assert_eq!(
            etcd_range(&KeyRange::From(b"m".to_vec())),
            (b"m".to_vec(), vec![0])
        );
        assert_eq!(
            etcd_range(&KeyRange::Between(b"b".to_vec(), b"d".to_vec())),
            (b"b".to_vec(), b"d".to_vec())
        );
        let (k, e) = etcd_range(&KeyRange::Between(vec![0], vec![0]));
        assert!(
            !e.is_empty() && k >= e,
            "an empty interval stays empty, not 'from \\0 on'"
        );
        assert!(is_empty_range(&KeyRange::Between(
            b"x".to_vec(),
            b"x".to_vec()
        )));
        assert!(!is_empty_range(&KeyRange::prefix("x")));
    }

    #[test]
    fn events_group_by_revision_and_skip_what_was_delivered() {
        let events = vec![put("a", 5), put("b", 5), put("c", 6), put("d", 8)];
        let batches = group(events.clone(), 0);
        assert_eq!(
            batches
                .iter()
                .map(|b| (b.revision, b.events.len()))
                .collect::<Vec<_>>(),
            vec![(5, 2), (6, 1), (8, 1)]
        );
        assert_eq!(batches[0].events[1].kv.key, b"b");
        let resumed = group(events, 6);
        assert_eq!(
            resumed.iter().map(|b| b.revision).collect::<Vec<_>>(),
            vec![6, 8]
        );
    }

    #[test]
    fn a_handshake_cut_short_is_retried_and_a_refused_certificate_is_not() {
        // What tonic reports when a member closes the connection mid-handshake (killed,
        // restarting): nothing was sent, so another member may be tried.
        let eof = "transport error: error trying to connect: tls handshake eof";
        assert!(matches!(
            classify_status(code::UNAVAILABLE, eof),
            Class::NotApplied
        ));
        let untrusted = "transport error: invalid peer certificate: UnknownIssuer";
        assert!(matches!(
            classify_status(code::UNAVAILABLE, untrusted),
            Class::Fatal(Error::Tls(_))
        ));
    }

    #[test]
    fn etcd_errors_map_to_store_errors() {
        let compacted = "etcdserver: mvcc: required revision has been compacted";
        assert!(matches!(
            classify_status(code::OUT_OF_RANGE, compacted),
            Class::Compacted
        ));
        let future = "etcdserver: mvcc: required revision is a future revision";
        assert!(matches!(
            classify_status(code::OUT_OF_RANGE, future),
            Class::Future
        ));
        // The watch's cancel reason has no "etcdserver:" prefix.
        assert!(matches!(
            classify_status(0, "mvcc: required revision has been compacted"),
            Class::Compacted
        ));
        assert!(matches!(
            classify_status(code::INVALID_ARGUMENT, "etcdserver: key is not provided"),
            Class::Fatal(Error::EmptyKey)
        ));
        assert!(matches!(
            classify_status(
                code::INVALID_ARGUMENT,
                "etcdserver: duplicate key given in txn request"
            ),
            Class::Fatal(Error::DuplicateKey)
        ));
        assert!(matches!(
            classify_status(
                code::INVALID_ARGUMENT,
                "etcdserver: too many operations in txn request"
            ),
            Class::Fatal(Error::Etcd(_))
        ));
        assert!(matches!(
            classify_status(
                code::RESOURCE_EXHAUSTED,
                "etcdserver: mvcc: database space exceeded"
            ),
            Class::Fatal(Error::Etcd(_))
        ));
    }

    #[test]
    fn only_failures_that_prove_nothing_was_applied_allow_repeating_a_write() {
        for never_sent in [
            "transport error: error trying to connect: tcp connect error: Connection refused (os error 111)",
            "etcdserver: no leader",
            "etcdserver: too many requests",
        ] {
            assert!(
                matches!(
                    classify_status(code::UNAVAILABLE, never_sent),
                    Class::NotApplied
                ),
                "{never_sent}"
            );
        }
        for maybe_applied in [
            "etcdserver: request timed out",
            "etcdserver: request timed out, possibly due to previous leader failure",
            "etcdserver: leader changed",
            "transport error: connection reset",
        ] {
            assert!(
                matches!(
                    classify_status(code::UNAVAILABLE, maybe_applied),
                    Class::InFlight
                ),
                "{maybe_applied}"
            );
        }
    }

    #[test]
    fn transactions_keep_every_operation_and_the_revisions_their_ranges_ask_for() {
        let txn = Txn::new()
            .when([Compare::mod_revision("k", CompareOp::Equal, 3)])
            .and_then([
                Op::put("k", "v"),
                Op::Range(RangeRequest::new(KeyRange::key("k")).at(7)),
            ])
            .or_else([Op::Range(RangeRequest::new(KeyRange::key("j")).at(4))]);
        assert_eq!(txn_revisions(&txn), (4, 7));
        // The builder keeps the branches apart (etcd-client's builder panics if called twice).
        let _ = etcd_txn(&txn);
        assert_eq!(
            txn_revisions(&Txn::new().and_then([Op::put("k", "v")])),
            (0, 0)
        );
    }
}
