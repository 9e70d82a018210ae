//! The cluster backend: `IPPool` and `IPAMBlock` custom resources (`ipam.trellis.dev/v1`,
//! cluster-scoped) through kube-rs, against our API server or a real one.
//!
//! Every change is a compare-and-swap on `metadata.resourceVersion`: a create that finds the
//! object answers 409 AlreadyExists (someone claimed the block first), a replace or delete with a
//! stale resourceVersion answers 409 Conflict. Node labels come from the Node objects; pods are
//! listed (metadata only) for the leak pass.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::{ApiResource, DynamicObject};

use super::{Backend, BackendError, BackendResult, Versioned, block_from, pool_from};
use crate::crds::{BLOCK_KIND, BLOCK_PLURAL, GROUP, POOL_KIND, POOL_PLURAL, VERSION};
use crate::model::{Block, Pool};

/// Pages of this many objects when listing.
const PAGE: u32 = 500;

pub struct KubeBackend {
    client: kube::Client,
    pools: Api<DynamicObject>,
    blocks: Api<DynamicObject>,
    pool_ar: ApiResource,
    block_ar: ApiResource,
}

use trellis_api::cluster::resource;

impl KubeBackend {
    pub fn new(client: kube::Client) -> KubeBackend {
        let pool_ar = resource(GROUP, VERSION, POOL_KIND, POOL_PLURAL);
        let block_ar = resource(GROUP, VERSION, BLOCK_KIND, BLOCK_PLURAL);
        KubeBackend {
            pools: Api::all_with(client.clone(), &pool_ar),
            blocks: Api::all_with(client.clone(), &block_ar),
            client,
            pool_ar,
            block_ar,
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    async fn list_all(api: &Api<DynamicObject>) -> BackendResult<Vec<DynamicObject>> {
        let mut out = Vec::new();
        let mut lp = ListParams::default().limit(PAGE);
        // Bounded: a continue token always moves forward; 10,000 pages is far past any cluster.
        for _ in 0..10_000 {
            let page = api.list(&lp).await.map_err(|e| map_err(e, "list"))?;
            out.extend(page.items);
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                _ => return Ok(out),
            }
        }
        Err(BackendError::Unavailable("list did not end".into()))
    }

    /// (namespace, name) of every object of a kind, metadata only.
    async fn names_of(&self, ar: &ApiResource) -> BackendResult<Vec<(String, String)>> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
        let mut out = Vec::new();
        let mut lp = ListParams::default().limit(PAGE);
        for _ in 0..10_000 {
            let page = api
                .list_metadata(&lp)
                .await
                .map_err(|e| map_err(e, &ar.plural))?;
            for item in page.items {
                out.push((
                    item.metadata.namespace.unwrap_or_default(),
                    item.metadata.name.unwrap_or_default(),
                ));
            }
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                _ => return Ok(out),
            }
        }
        Err(BackendError::Unavailable("list did not end".into()))
    }
}

/// Maps kube-rs errors: 409 is AlreadyExists or Conflict, 404 NotFound, other 4xx a refusal,
/// anything else (5xx, connection failures, timeouts) the datastore being unavailable.
fn map_err(e: kube::Error, what: &str) -> BackendError {
    match e {
        kube::Error::Api(s) => match s.code {
            409 if s.reason == "AlreadyExists" => BackendError::AlreadyExists(what.to_string()),
            409 => BackendError::Conflict(what.to_string()),
            404 => BackendError::NotFound(format!("{what} ({})", s.message)),
            c if (400..500).contains(&c) && c != 429 => {
                BackendError::Refused(format!("{what}: {} ({c})", s.message))
            }
            c => BackendError::Unavailable(format!("{what}: {} ({c})", s.message)),
        },
        other => BackendError::Unavailable(format!("{what}: {other}")),
    }
}

fn version_of(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap_or_default()
}

fn spec_json(o: &DynamicObject) -> serde_json::Value {
    o.data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn object<T: serde::Serialize>(
    name: &str,
    ar: &ApiResource,
    spec: &T,
    version: Option<&str>,
) -> DynamicObject {
    let mut o = DynamicObject::new(name, ar).data(serde_json::json!({ "spec": spec }));
    o.metadata.resource_version = version.map(str::to_string);
    o
}

fn to_block(o: &DynamicObject) -> BackendResult<Versioned<Block>> {
    let name = o.metadata.name.clone().unwrap_or_default();
    Ok(Versioned {
        value: block_from(&name, spec_json(o))?,
        version: version_of(o),
    })
}

#[async_trait::async_trait]
impl Backend for KubeBackend {
    fn describe(&self) -> String {
        "kubernetes".into()
    }

    async fn list_pools(&self) -> BackendResult<Vec<Versioned<Pool>>> {
        KubeBackend::list_all(&self.pools)
            .await?
            .iter()
            .map(|o| {
                let name = o.metadata.name.clone().unwrap_or_default();
                Ok(Versioned {
                    value: pool_from(&name, spec_json(o))?,
                    version: version_of(o),
                })
            })
            .collect()
    }

    async fn create_pool(&self, pool: &Pool) -> BackendResult<Versioned<Pool>> {
        let what = format!("pool {}", pool.name);
        let o = object(&pool.name, &self.pool_ar, &pool.spec, None);
        let created = self
            .pools
            .create(&PostParams::default(), &o)
            .await
            .map_err(|e| map_err(e, &what))?;
        Ok(Versioned {
            value: pool.clone(),
            version: version_of(&created),
        })
    }

    async fn delete_pool(&self, name: &str) -> BackendResult<bool> {
        match self.pools.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(map_err(e, &format!("pool {name}"))),
        }
    }

    async fn list_blocks(&self) -> BackendResult<Vec<Versioned<Block>>> {
        KubeBackend::list_all(&self.blocks)
            .await?
            .iter()
            .map(to_block)
            .collect()
    }

    async fn get_block(&self, name: &str) -> BackendResult<Option<Versioned<Block>>> {
        let got = self
            .blocks
            .get_opt(name)
            .await
            .map_err(|e| map_err(e, &format!("block {name}")))?;
        got.as_ref().map(to_block).transpose()
    }

    async fn create_block(&self, block: &Block) -> BackendResult<Versioned<Block>> {
        let what = format!("block {}", block.name);
        let o = object(&block.name, &self.block_ar, &block.spec, None);
        let created = self
            .blocks
            .create(&PostParams::default(), &o)
            .await
            .map_err(|e| map_err(e, &what))?;
        Ok(Versioned {
            value: block.clone(),
            version: version_of(&created),
        })
    }

    async fn update_block(&self, block: &Block, version: &str) -> BackendResult<Versioned<Block>> {
        let what = format!("block {}", block.name);
        let o = object(&block.name, &self.block_ar, &block.spec, Some(version));
        let replaced = self
            .blocks
            .replace(&block.name, &PostParams::default(), &o)
            .await
            .map_err(|e| match map_err(e, &what) {
                // Replacing a block someone deleted: the same as any other lost race.
                BackendError::NotFound(_) => BackendError::Conflict(what.clone()),
                other => other,
            })?;
        Ok(Versioned {
            value: block.clone(),
            version: version_of(&replaced),
        })
    }

    async fn delete_block(&self, name: &str, version: &str) -> BackendResult<bool> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(version.to_string()),
                uid: None,
            }),
            ..Default::default()
        };
        match self.blocks.delete(name, &dp).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(map_err(e, &format!("block {name}"))),
        }
    }

    async fn node_labels(&self, node: &str) -> BackendResult<Option<BTreeMap<String, String>>> {
        let nodes: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &resource("", "v1", "Node", "nodes"));
        let got = nodes
            .get_metadata_opt(node)
            .await
            .map_err(|e| map_err(e, &format!("node {node}")))?;
        Ok(got.map(|n| n.metadata.labels.unwrap_or_default()))
    }

    async fn nodes(&self) -> BackendResult<Option<BTreeSet<String>>> {
        let ar = resource("", "v1", "Node", "nodes");
        Ok(Some(
            self.names_of(&ar)
                .await?
                .into_iter()
                .map(|(_, name)| name)
                .collect(),
        ))
    }

    async fn pods(&self) -> BackendResult<Option<BTreeSet<(String, String)>>> {
        let ar = resource("", "v1", "Pod", "pods");
        Ok(Some(self.names_of(&ar).await?.into_iter().collect()))
    }
}
