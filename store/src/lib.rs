//! An etcd-model key-value store: one global revision, per-key versions, compare-and-swap
//! transactions, watches from a revision, compaction. Two backends behind one trait:
//!
//! - [`SqliteStore`] (the default): embedded, one file, push-based watches.
//! - [`EtcdStore`] (feature `etcd`): a real etcd cluster, for control planes on several machines.
//!
//! Nothing above the trait can tell them apart; one conformance suite runs against both.

pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod sqlite;
pub mod tls;
pub mod types;
pub mod watch;

pub use error::{Error, Result};
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use sqlite::{SqliteOptions, SqliteStore};
pub use tls::EtcdTls;
pub use types::{
    Compare, CompareOp, Event, EventKind, KeyRange, KeyValue, Op, OpResponse, RangeRequest,
    RangeResponse, Target, Txn, TxnResponse, WatchBatch, WatchRequest,
};
pub use watch::WatchStream;

/// The store interface, with etcd v3's meaning.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Keys of a range in key order, now or at a past revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Compares, then one branch of operations, atomically at one new revision (no new revision
    /// if the branch changed nothing).
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Changes to a range from a revision on, in order, each with the value before it.
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream>;

    /// Forgets history before `revision`: older reads and watches get [`Error::Compacted`].
    async fn compact(&self, revision: i64) -> Result<()>;

    /// The revision of the last change.
    async fn current_revision(&self) -> Result<i64>;

    /// One key, now.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let key = KeyRange::Key(key.to_vec());
        key.validate()?;
        Ok(self.range(RangeRequest::new(key)).await?.kvs.pop())
    }

    /// Sets a key unconditionally; returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64> {
        Ok(self
            .txn(Txn::new().and_then([Op::put(key, value)]))
            .await?
            .revision)
    }

    /// Deletes a key or a range; returns what was deleted.
    async fn delete(&self, range: KeyRange) -> Result<Vec<KeyValue>> {
        let resp = self.txn(Txn::new().and_then([Op::delete(range)])).await?;
        Ok(match resp.responses.into_iter().next() {
            Some(OpResponse::Delete { deleted }) => deleted,
            _ => Vec::new(),
        })
    }
}
