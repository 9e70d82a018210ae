//! The embedded backend: one SQLite file (WAL, full sync), one writer thread committing in
//! groups, a small pool of readers, and watches pushed from memory as writes commit.

mod hub;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::types::{RangeRequest, RangeResponse, Txn, TxnResponse, WatchRequest};
use crate::watch::WatchStream;
use hub::Hub;
use writer::{Request, Writer};

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Automatic compaction keeps this many revisions of history (None: only explicit
    /// compaction). A watch may resume from any revision still kept.
    pub retain_revisions: Option<i64>,
    /// How often automatic compaction runs.
    pub compact_interval: Duration,
    /// Batches a watcher may have unread before it is dropped and catches up from disk.
    pub watch_buffer: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            retain_revisions: Some(10_000),
            compact_interval: Duration::from_secs(300),
            watch_buffer: 1024,
        }
    }
}

/// Readers kept open between requests.
const POOL: usize = 8;

pub(crate) struct Shared {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    pub(crate) hub: Arc<Hub>,
}

impl Shared {
    /// Runs `f` on a pooled read connection inside one read transaction (one snapshot).
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = shared.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => schema::open_reader(&shared.path)?,
            };
            let result = {
                let tx = conn.unchecked_transaction()?;
                f(&tx)
            };
            let mut pool = shared.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Unavailable(format!("read task failed: {e}")))?
    }
}

/// The embedded store. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    writer: std_mpsc::Sender<Request>,
    watch_buffer: usize,
}

impl SqliteStore {
    /// Opens the store at `path`, creating it if absent. A file that is not a store of ours
    /// (another SQLite database, garbage, a damaged store) is refused with an error naming it,
    /// and left exactly as it was.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                what: format!("create {}", dir.display()),
                source: e,
            })?;
        }
        let conn = schema::open_writer(&path)?;
        let (revision, compacted) = read::meta(&conn)?;
        let hub = Arc::new(Hub::new(revision, compacted, options.watch_buffer));
        let shared = Arc::new(Shared {
            path,
            pool: Mutex::new(Vec::new()),
            hub: hub.clone(),
        });
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            conn,
            revision,
            compacted,
            hub,
            retain: options.retain_revisions,
            interval: options.compact_interval.max(Duration::from_millis(10)),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Io {
                what: "start the store writer".into(),
                source: e,
            })?;
        Ok(SqliteStore {
            shared,
            writer: tx,
            watch_buffer: options.watch_buffer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The oldest revision still readable.
    pub fn compacted_revision(&self) -> i64 {
        self.shared.hub.compacted()
    }

    fn send(&self, req: Request) -> Result<()> {
        self.writer
            .send(req)
            .map_err(|_| Error::Unavailable("the store writer has stopped".into()))
    }
}

#[async_trait::async_trait]
impl crate::Store for SqliteStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        req.range.validate()?;
        self.shared.read(move |conn| read::range(conn, &req)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let (tx, rx) = oneshot::channel();
        self.send(Request::Txn(txn, tx))?;
        rx.await
            .map_err(|_| Error::Unavailable("the store writer stopped mid-request".into()))?
    }

    async fn watch(&self, mut req: WatchRequest) -> Result<WatchStream> {
        req.range.validate()?;
        // "From now" means after the revision current at this call, not when the task starts:
        // a write made right after watch() returns must be seen.
        if req.start_revision.is_none_or(|r| r <= 0) {
            req.start_revision = Some(self.shared.hub.revision() + 1);
        }
        let (tx, stream) = WatchStream::channel(self.watch_buffer.clamp(1, 256));
        tokio::spawn(hub::watch_task(self.shared.clone(), req, tx));
        Ok(stream)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Compact(revision, tx))?;
        rx.await
            .map_err(|_| Error::Unavailable("the store writer stopped mid-request".into()))?
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.shared.hub.revision())
    }
}
