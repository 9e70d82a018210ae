//! Objects in the store: one key per object (`/registry/<group>/<resource>/<ns>/<name>`), the
//! JSON without `resourceVersion`, which is the key's mod revision — one counter for every type,
//! as clients expect. Writes are compare-and-swap on that revision.

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;
use trellis_api::ResourceInfo;
use trellis_store::{
    Compare, CompareOp, KeyRange, KeyValue, Op, OpResponse, RangeRequest, Store, Txn,
};

use crate::meta;
use crate::status::ApiError;

/// An object as stored, with `metadata.resourceVersion` filled in.
#[derive(Debug, Clone)]
pub struct Stored {
    pub obj: Value,
    pub revision: i64,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Value>,
    /// The revision the list was read at (the list's resourceVersion).
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Where a list reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAt {
    /// The current state (resourceVersion unset or "0").
    Latest,
    /// Exactly this revision (resourceVersionMatch=Exact, or a continue token).
    Exact(i64),
}

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn Store>,
}

fn decode(kv: &KeyValue) -> Result<Stored, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object {} does not decode: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    meta::meta_mut(&mut obj).insert(
        "resourceVersion".into(),
        Value::String(kv.mod_revision.to_string()),
    );
    Ok(Stored {
        obj,
        revision: kv.mod_revision,
    })
}

/// What is stored: the object without its resourceVersion (the key's revision says it).
fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    meta::meta_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(format!("cannot encode object: {e}")))
}

/// Keys read from the store per request while listing.
const CHUNK: usize = 500;

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

impl Storage {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Storage { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn get(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Stored>, ApiError> {
        match self
            .store
            .get(info.storage_key(ns, name).as_bytes())
            .await?
        {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Like [`Storage::get`], but a missing object is a 404.
    pub async fn require(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Stored, ApiError> {
        self.get(info, ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found(&info.group, &info.plural, name))
    }

    /// A page of the objects of `info` in `ns` (or all namespaces), in name order. `filter`
    /// drops objects (selectors) before the page is cut, as the API server does.
    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        at: ListAt,
        limit: usize,
        continue_token: Option<&str>,
        filter: &(dyn Fn(&Value) -> bool + Sync),
    ) -> Result<Page, ApiError> {
        let prefix = info.storage_namespace_prefix(ns);
        let end = trellis_store::types::prefix_end(prefix.as_bytes());
        let (mut at, mut start) = (at, prefix.clone().into_bytes());
        if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            let t: ContinueToken = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            at = ListAt::Exact(t.rv);
            start = format!("{prefix}{}", t.start).into_bytes();
            start.push(0);
        }
        let mut items = Vec::new();
        let mut revision = None;
        // Read in chunks until the page is full of matching objects (or the range ends).
        loop {
            let range = match &end {
                Some(e) => KeyRange::Between(start.clone(), e.clone()),
                None => KeyRange::From(start.clone()),
            };
            // Bounded reads, whatever the client asked: a whole large list in one store read
            // would not fit a gRPC message from etcd (4 MiB), nor should it sit in memory twice.
            let want = if limit == 0 {
                CHUNK
            } else {
                ((limit - items.len()).max(1) + 1).min(CHUNK)
            };
            let mut req = RangeRequest::new(range).limit(want);
            if let ListAt::Exact(rev) = at {
                req = req.at(rev);
            }
            let resp = self.store.range(req).await.map_err(|e| match e {
                trellis_store::Error::Compacted { .. } if continue_token.is_some() => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ),
                other => other.into(),
            })?;
            let rev = match at {
                ListAt::Exact(r) => r,
                ListAt::Latest => resp.revision,
            };
            revision.get_or_insert(rev);
            at = ListAt::Exact(rev);
            let fetched = resp.kvs.len();
            for kv in &resp.kvs {
                let stored = decode(kv)?;
                if filter(&stored.obj) {
                    items.push((kv.key.clone(), stored.obj));
                }
                if limit > 0 && items.len() > limit {
                    break;
                }
            }
            if limit > 0 && items.len() > limit {
                items.truncate(limit);
                let last_key = &items[limit - 1].0;
                let token = ContinueToken {
                    rv: rev,
                    start: String::from_utf8_lossy(&last_key[prefix.len()..]).into_owned(),
                };
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&token).unwrap_or_default());
                return Ok(Page {
                    items: items.into_iter().map(|(_, o)| o).collect(),
                    revision: rev,
                    continue_token: Some(token),
                    remaining: None,
                });
            }
            if !resp.more || fetched == 0 {
                break;
            }
            match resp.kvs.last() {
                Some(kv) => {
                    start = kv.key.clone();
                    start.push(0);
                }
                None => break,
            }
        }
        let revision = match revision {
            Some(r) => r,
            None => self.store.current_revision().await?,
        };
        Ok(Page {
            items: items.into_iter().map(|(_, o)| o).collect(),
            revision,
            continue_token: None,
            remaining: None,
        })
    }

    /// Creates the object; `extra` writes (e.g. an allocated cluster IP) commit with it, and
    /// fail the create if their keys exist (`claims`).
    pub async fn create(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        obj: &Value,
        claims: Vec<(String, Vec<u8>)>,
    ) -> Result<Stored, ApiError> {
        let key = info.storage_key(ns, name);
        let mut compares = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        let mut ops = vec![Op::put(key.clone(), encode(obj)?)];
        for (k, v) in claims {
            compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
            ops.push(Op::put(k, v));
        }
        let resp = self
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        if !resp.succeeded {
            if self.store.get(key.as_bytes()).await?.is_some() {
                return Err(ApiError::already_exists(&info.group, &info.plural, name));
            }
            return Err(ApiError::conflict_state(
                &info.group,
                &info.plural,
                name,
                "an allocation was taken concurrently; try again",
            ));
        }
        let mut obj = obj.clone();
        meta::meta_mut(&mut obj).insert(
            "resourceVersion".into(),
            Value::String(resp.revision.to_string()),
        );
        Ok(Stored {
            obj,
            revision: resp.revision,
        })
    }

    /// Replaces the object if it is still at `revision`; None when it moved on (a conflict).
    pub async fn update(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        revision: i64,
        obj: &Value,
    ) -> Result<Option<Stored>, ApiError> {
        self.update_with(info, ns, name, revision, obj, Vec::new(), Vec::new())
            .await
    }

    /// As [`Storage::update`], with allocations claimed (their keys must not exist) and
    /// released (deleted) in the same transaction; None as well when a claim was taken
    /// meanwhile (the caller reads again and retries).
    #[allow(clippy::too_many_arguments)]
    pub async fn update_with(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        revision: i64,
        obj: &Value,
        claims: Vec<(String, Vec<u8>)>,
        releases: Vec<String>,
    ) -> Result<Option<Stored>, ApiError> {
        let key = info.storage_key(ns, name);
        let mut compares = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )];
        let mut ops = vec![Op::put(key, encode(obj)?)];
        for (k, v) in claims {
            compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
            ops.push(Op::put(k, v));
        }
        ops.extend(
            releases
                .into_iter()
                .map(|k| Op::delete(KeyRange::Key(k.into_bytes()))),
        );
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            return Ok(None);
        }
        let mut obj = obj.clone();
        meta::meta_mut(&mut obj).insert(
            "resourceVersion".into(),
            Value::String(resp.revision.to_string()),
        );
        Ok(Some(Stored {
            obj,
            revision: resp.revision,
        }))
    }

    /// Deletes the object if it is still at `revision` (with `also`, e.g. released
    /// allocations); false on a conflict. Returns the deletion's revision.
    pub async fn delete(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        revision: i64,
        also: Vec<String>,
    ) -> Result<Option<i64>, ApiError> {
        let key = info.storage_key(ns, name);
        let mut ops = vec![Op::delete(KeyRange::Key(key.clone().into_bytes()))];
        ops.extend(
            also.into_iter()
                .map(|k| Op::delete(KeyRange::Key(k.into_bytes()))),
        );
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                    .and_then(ops),
            )
            .await?;
        if !resp.succeeded {
            return Ok(None);
        }
        let deleted = resp
            .responses
            .iter()
            .any(|r| matches!(r, OpResponse::Delete { deleted } if !deleted.is_empty()));
        Ok(deleted.then_some(resp.revision))
    }
}
