//! The standalone backend: pools and blocks as keys of trellis-store (the embedded SQLite file),
//! `/ipam/pools/<name>` and `/ipam/blocks/<name>`, each value `{"spec": ...}` as in the custom
//! resources. Compare-and-swap on the key's mod revision; every acknowledged write is on disk
//! (the store fsyncs each commit), so a kill -9 loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use trellis_store::{
    Compare, CompareOp, KeyRange, KeyValue, Op, RangeRequest, SqliteOptions, SqliteStore, Store,
    Txn,
};

use super::{Backend, BackendError, BackendResult, Stored, Versioned, block_from, pool_from};
use crate::model::{Block, Pool};

const POOLS: &str = "/ipam/pools/";
const BLOCKS: &str = "/ipam/blocks/";

pub struct LocalBackend {
    store: Arc<dyn Store>,
    what: String,
}

impl LocalBackend {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> BackendResult<LocalBackend> {
        let store = SqliteStore::open(path, SqliteOptions::default())
            .map_err(|e| BackendError::Unavailable(format!("open {}: {e}", path.display())))?;
        Ok(LocalBackend {
            store: Arc::new(store),
            what: format!("local:{}", path.display()),
        })
    }

    /// Any store (tests use the etcd-model store directly).
    pub fn with_store(store: Arc<dyn Store>, what: impl Into<String>) -> LocalBackend {
        LocalBackend {
            store,
            what: what.into(),
        }
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<KeyValue>> {
        let resp = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(prefix)))
            .await
            .map_err(unavailable)?;
        Ok(resp.kvs)
    }

    async fn create(&self, key: String, value: Vec<u8>, what: &str) -> BackendResult<i64> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([Op::put(key, value)]);
        let resp = self.store.txn(txn).await.map_err(unavailable)?;
        if !resp.succeeded {
            return Err(BackendError::AlreadyExists(what.to_string()));
        }
        Ok(resp.revision)
    }
}

fn unavailable(e: trellis_store::Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn name_of(kv: &KeyValue, prefix: &str) -> String {
    String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()
}

fn spec_of(kv: &KeyValue, what: &str) -> BackendResult<serde_json::Value> {
    let stored: Stored<serde_json::Value> =
        serde_json::from_slice(&kv.value).map_err(|e| BackendError::Malformed {
            name: what.to_string(),
            reason: e.to_string(),
        })?;
    Ok(stored.spec)
}

fn encode<T: serde::Serialize>(spec: &T) -> Vec<u8> {
    // Our specs are plain data: serialising them cannot fail.
    serde_json::to_vec(&Stored { spec }).unwrap_or_default()
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn list_pools(&self) -> BackendResult<Vec<Versioned<Pool>>> {
        self.list(POOLS)
            .await?
            .iter()
            .map(|kv| {
                let name = name_of(kv, POOLS);
                Ok(Versioned {
                    value: pool_from(&name, spec_of(kv, &name)?)?,
                    version: kv.mod_revision.to_string(),
                })
            })
            .collect()
    }

    async fn create_pool(&self, pool: &Pool) -> BackendResult<Versioned<Pool>> {
        let rev = self
            .create(
                format!("{POOLS}{}", pool.name),
                encode(&pool.spec),
                &format!("pool {}", pool.name),
            )
            .await?;
        Ok(Versioned {
            value: pool.clone(),
            version: rev.to_string(),
        })
    }

    async fn delete_pool(&self, name: &str) -> BackendResult<bool> {
        let gone = self
            .store
            .delete(KeyRange::key(format!("{POOLS}{name}")))
            .await
            .map_err(unavailable)?;
        Ok(!gone.is_empty())
    }

    async fn list_blocks(&self) -> BackendResult<Vec<Versioned<Block>>> {
        self.list(BLOCKS)
            .await?
            .iter()
            .map(|kv| {
                let name = name_of(kv, BLOCKS);
                Ok(Versioned {
                    value: block_from(&name, spec_of(kv, &name)?)?,
                    version: kv.mod_revision.to_string(),
                })
            })
            .collect()
    }

    async fn get_block(&self, name: &str) -> BackendResult<Option<Versioned<Block>>> {
        let kv = self
            .store
            .get(format!("{BLOCKS}{name}").as_bytes())
            .await
            .map_err(unavailable)?;
        kv.map(|kv| {
            Ok(Versioned {
                value: block_from(name, spec_of(&kv, name)?)?,
                version: kv.mod_revision.to_string(),
            })
        })
        .transpose()
    }

    async fn create_block(&self, block: &Block) -> BackendResult<Versioned<Block>> {
        let rev = self
            .create(
                format!("{BLOCKS}{}", block.name),
                encode(&block.spec),
                &format!("block {}", block.name),
            )
            .await?;
        Ok(Versioned {
            value: block.clone(),
            version: rev.to_string(),
        })
    }

    async fn update_block(&self, block: &Block, version: &str) -> BackendResult<Versioned<Block>> {
        let rev: i64 = version
            .parse()
            .map_err(|_| BackendError::Conflict(format!("block {}", block.name)))?;
        let key = format!("{BLOCKS}{}", block.name);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([Op::put(key, encode(&block.spec))]);
        let resp = self.store.txn(txn).await.map_err(unavailable)?;
        if !resp.succeeded {
            return Err(BackendError::Conflict(format!("block {}", block.name)));
        }
        Ok(Versioned {
            value: block.clone(),
            version: resp.revision.to_string(),
        })
    }

    async fn delete_block(&self, name: &str, version: &str) -> BackendResult<bool> {
        let rev: i64 = version
            .parse()
            .map_err(|_| BackendError::Conflict(format!("block {name}")))?;
        let key = format!("{BLOCKS}{name}");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([Op::delete(KeyRange::key(key.clone()))])
            .or_else([Op::get(key)]);
        let resp = self.store.txn(txn).await.map_err(unavailable)?;
        if resp.succeeded {
            return Ok(true);
        }
        match resp.responses.first() {
            Some(trellis_store::OpResponse::Range(r)) if r.kvs.is_empty() => Ok(false),
            _ => Err(BackendError::Conflict(format!("block {name}"))),
        }
    }

    async fn node_labels(&self, _node: &str) -> BackendResult<Option<BTreeMap<String, String>>> {
        Ok(Some(BTreeMap::new()))
    }

    async fn nodes(&self) -> BackendResult<Option<BTreeSet<String>>> {
        Ok(None)
    }

    async fn pods(&self) -> BackendResult<Option<BTreeSet<(String, String)>>> {
        Ok(None)
    }
}
