//! The allocation engine of one node: a task that owns the node's blocks and serves every
//! request in rounds.
//!
//! A round takes every queued Allocate and Release at once, applies them one after another to
//! the cached blocks (so they never hand out one ordinal twice among themselves), then writes
//! each changed block once, with a compare-and-swap on the version it was read at, all writes
//! in parallel, and only then answers. 64 concurrent ADDs thus cost about one datastore round
//! trip, not 64. A write that loses a race (another node borrowed from our block, a tool
//! released an address, another node claimed the block first) re-reads that block and the
//! requests that touched it go into the next attempt; after [`MAX_ATTEMPTS`] they fail with a
//! transient error. Nothing is answered before it is stored: a crash loses no acknowledged
//! allocation, and an allocation stored but never acknowledged is found by the leak pass.
//!
//! Allocate is idempotent per (handle, family): a runtime that retries an ADD after a crash gets
//! the address it already holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::allocator::{self, Choice};
use crate::backend::{Backend, BackendError, Versioned};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{Allocation, Block, Family, Owner, Pool, block_name, now};

/// Attempts of a request whose writes keep losing races.
pub const MAX_ATTEMPTS: usize = 16;
/// Requests served in one round at most.
const MAX_BATCH: usize = 1024;
/// How long a round waits at most for the rest of a wave of requests…
const GATHER_MAX: Duration = Duration::from_millis(4);
/// …and for the next request of the wave.
const GATHER_GAP: Duration = Duration::from_millis(1);
/// Pools and node labels are re-read at most this often (and whenever they seem to lack room).
const POOLS_TTL: Duration = Duration::from_secs(5);
/// Every this many rounds of one steady size, a round waits for two rounds' worth again (see
/// [`Wave`]).
const PROBE_EVERY: u32 = 16;

/// What an ADD asks for.
#[derive(Debug, Clone, Default)]
pub struct AllocateRequest {
    pub owner: Owner,
    /// One address per family, in this order.
    pub families: Vec<Family>,
    /// Requested addresses, at most one per family; they replace auto-assignment for their family.
    pub requested: Vec<IpAddr>,
    /// Only this pool.
    pub pool: Option<String>,
}

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The address with its block's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub pool: String,
    pub block: String,
}

/// One allocation to free only if it is still what was seen (the GC's guard against freeing an
/// address that was released and handed out again between its scan and its release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exact {
    pub block: String,
    pub ordinal: u32,
    pub handle: String,
}

enum Job {
    Allocate(AllocateRequest, oneshot::Sender<Result<Vec<Assigned>>>),
    Release(String, oneshot::Sender<Result<Vec<IpNet>>>),
    ReleaseExact(Vec<Exact>, oneshot::Sender<Result<Vec<Exact>>>),
    Check(String, oneshot::Sender<Result<Vec<Assigned>>>),
    Claim(ClaimRequest, oneshot::Sender<Result<Block>>),
    ReleaseBlock(String, oneshot::Sender<Result<()>>),
}

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub pool: Option<String>,
    pub family: Family,
    pub new_block: bool,
}

/// The engine's handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    stop: Arc<watch::Sender<bool>>,
    affine: watch::Receiver<BTreeSet<IpNet>>,
    node: String,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Loads the node's blocks and starts its task.
    pub async fn start(
        backend: Arc<dyn Backend>,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Engine, tokio::task::JoinHandle<()>)> {
        if node.is_empty() {
            return Err(Error::InvalidRequest("the node name is empty".into()));
        }
        let mut cache = Cache::default();
        let mut known = BTreeSet::new();
        let mut orphans = false;
        for b in backend.list_blocks().await? {
            known.insert(b.value.name.clone());
            orphans |= b.value.spec.node.is_empty();
            if b.value.spec.node == node {
                cache.put(b.value, Some(b.version));
            }
        }
        tracing::info!(node, blocks = cache.blocks.len(), backend = %backend.describe(), "ipam engine ready");
        let (tx, rx) = mpsc::channel(4096);
        let (stop, stopped) = watch::channel(false);
        let (affine_tx, affine) = watch::channel(cache.affine(node));
        let actor = Actor {
            affine: affine_tx,
            backend: backend.clone(),
            node: node.to_string(),
            cache,
            pools: Vec::new(),
            labels: BTreeMap::new(),
            pools_read: None,
            metrics: metrics.clone(),
            known,
            orphans,
        };
        let task = tokio::spawn(actor.run(rx, stopped));
        Ok((
            Engine {
                tx,
                stop: Arc::new(stop),
                affine,
                node: node.to_string(),
                backend,
                metrics,
            },
            task,
        ))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's blocks as stored: the current set, and a change as soon as a round, a claim
    /// or a release has written one (what a routing agent announces).
    pub fn affine_blocks(&self) -> watch::Receiver<BTreeSet<IpNet>> {
        self.affine.clone()
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops the task after the round it is serving; queued requests get `ShuttingDown`.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(job(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    pub async fn allocate(&self, req: AllocateRequest) -> Result<Vec<Assigned>> {
        let started = Instant::now();
        let out = self.ask(|tx| Job::Allocate(req, tx)).await;
        self.metrics.allocation(started.elapsed(), &out);
        out
    }

    /// Frees every address of a handle; an unknown handle frees nothing and succeeds.
    pub async fn release(&self, handle: &str) -> Result<Vec<IpNet>> {
        let out = self.ask(|tx| Job::Release(handle.to_string(), tx)).await;
        if let Ok(freed) = &out {
            self.metrics.released(freed.len());
        }
        out
    }

    pub async fn release_exact(&self, items: Vec<Exact>) -> Result<Vec<Exact>> {
        let out = self.ask(|tx| Job::ReleaseExact(items, tx)).await;
        if let Ok(freed) = &out {
            self.metrics.released(freed.len());
        }
        out
    }

    pub async fn check(&self, handle: &str) -> Result<Vec<Assigned>> {
        self.ask(|tx| Job::Check(handle.to_string(), tx)).await
    }

    pub async fn claim_block(&self, req: ClaimRequest) -> Result<Block> {
        self.ask(|tx| Job::Claim(req, tx)).await
    }

    pub async fn release_block(&self, name: &str) -> Result<()> {
        self.ask(|tx| Job::ReleaseBlock(name.to_string(), tx)).await
    }
}

/// The blocks the engine knows, their versions (None: created this round, not yet stored), and
/// an index from handle to its allocations.
#[derive(Default)]
struct Cache {
    blocks: BTreeMap<String, Block>,
    versions: BTreeMap<String, Option<String>>,
    index: HashMap<String, BTreeSet<(String, u32)>>,
}

impl Cache {
    fn put(&mut self, block: Block, version: Option<String>) {
        self.remove(&block.name.clone());
        for a in &block.spec.allocations {
            self.index
                .entry(a.handle.clone())
                .or_default()
                .insert((block.name.clone(), a.ordinal));
        }
        self.versions.insert(block.name.clone(), version);
        self.blocks.insert(block.name.clone(), block);
    }

    /// The CIDRs of the stored blocks affine to `node` (a block created in a round that is
    /// still writing is not stored yet).
    fn affine(&self, node: &str) -> BTreeSet<IpNet> {
        self.blocks
            .values()
            .filter(|b| b.spec.node == node)
            .filter(|b| matches!(self.versions.get(&b.name), Some(Some(_))))
            .map(|b| b.spec.cidr)
            .collect()
    }

    fn remove(&mut self, name: &str) -> Option<Block> {
        let b = self.blocks.remove(name)?;
        self.versions.remove(name);
        for a in &b.spec.allocations {
            self.unindex(&a.handle, name, a.ordinal);
        }
        Some(b)
    }

    fn unindex(&mut self, handle: &str, block: &str, ordinal: u32) {
        if let Some(set) = self.index.get_mut(handle) {
            set.remove(&(block.to_string(), ordinal));
            if set.is_empty() {
                self.index.remove(handle);
            }
        }
    }

    fn insert(&mut self, block: &str, a: Allocation) -> bool {
        let Some(b) = self.blocks.get_mut(block) else {
            return false;
        };
        let (h, o) = (a.handle.clone(), a.ordinal);
        if !b.insert(a) {
            return false;
        }
        self.index
            .entry(h)
            .or_default()
            .insert((block.to_string(), o));
        true
    }

    fn remove_exact(&mut self, block: &str, ordinal: u32, handle: &str) -> Option<Allocation> {
        let a = self.blocks.get_mut(block)?.remove_exact(ordinal, handle)?;
        self.unindex(handle, block, ordinal);
        Some(a)
    }

    fn held(&self, handle: &str) -> Vec<(String, u32)> {
        self.index
            .get(handle)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a job did to the cache, so a job that fails can be undone before anything is written.
enum Undo {
    Inserted {
        block: String,
        ordinal: u32,
        handle: String,
    },
    Removed {
        block: String,
        alloc: Allocation,
    },
    Created {
        block: String,
    },
    Node {
        block: String,
        old: String,
    },
}

struct Actor {
    /// Where the node's stored blocks are published after every change.
    affine: watch::Sender<BTreeSet<IpNet>>,
    backend: Arc<dyn Backend>,
    node: String,
    cache: Cache,
    pools: Vec<Pool>,
    labels: BTreeMap<String, String>,
    pools_read: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Every block name of the datastore as last seen (listed, created or read), so a claim
    /// needs no list of every block: the lowest name not known is tried, and a lost race (the
    /// name exists after all) only costs a retry.
    known: BTreeSet<String>,
    /// The last list found blocks affine to no node (adopting one comes before claiming).
    orphans: bool,
}

/// The state of one attempt of a round.
#[derive(Default)]
struct Attempt {
    /// Blocks changed in this attempt, and by which jobs.
    dirty: BTreeMap<String, BTreeSet<usize>>,
    /// Every block of the datastore was read in this attempt.
    listed: bool,
    /// Blocks a claim of which just failed.
    excluded: BTreeSet<String>,
}

enum Answer {
    Allocate(
        oneshot::Sender<Result<Vec<Assigned>>>,
        Result<Vec<Assigned>>,
    ),
    Release(oneshot::Sender<Result<Vec<IpNet>>>, Result<Vec<IpNet>>),
    Exact(oneshot::Sender<Result<Vec<Exact>>>, Result<Vec<Exact>>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Allocate(tx, r) => {
                let _ = tx.send(r);
            }
            Answer::Release(tx, r) => {
                let _ = tx.send(r);
            }
            Answer::Exact(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }

    fn fail(self, e: Error) -> Answer {
        match self {
            Answer::Allocate(tx, _) => Answer::Allocate(tx, Err(e)),
            Answer::Release(tx, _) => Answer::Release(tx, Err(e)),
            Answer::Exact(tx, _) => Answer::Exact(tx, Err(e)),
        }
    }
}

/// Where a requested address goes: a new allocation, or one the handle already holds.
enum Placed {
    New(String, u32),
    Held(String, u32),
}

/// A batched job waiting for its writes.
enum Batched {
    Allocate(AllocateRequest, oneshot::Sender<Result<Vec<Assigned>>>),
    Release(String, oneshot::Sender<Result<Vec<IpNet>>>),
    ReleaseExact(Vec<Exact>, oneshot::Sender<Result<Vec<Exact>>>),
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        let mut wave = Wave::default();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.changed() => break,
                job = rx.recv() => match job {
                    Some(j) => j,
                    None => break,
                },
            };
            let mut jobs = vec![first];
            drain(&mut rx, &mut jobs);
            let target = wave.target();
            if jobs.len() < target {
                let until = tokio::time::Instant::now() + GATHER_MAX;
                while jobs.len() < target && tokio::time::Instant::now() < until {
                    match tokio::time::timeout(GATHER_GAP, rx.recv()).await {
                        Ok(Some(j)) => {
                            jobs.push(j);
                            drain(&mut rx, &mut jobs);
                        }
                        _ => break,
                    }
                }
            }
            wave.served(jobs.len());
            let mut batch = Vec::new();
            for job in jobs {
                match job {
                    Job::Allocate(r, tx) => batch.push(Batched::Allocate(r, tx)),
                    Job::Release(h, tx) => batch.push(Batched::Release(h, tx)),
                    Job::ReleaseExact(x, tx) => batch.push(Batched::ReleaseExact(x, tx)),
                    Job::Check(h, tx) => {
                        let _ = tx.send(self.check(&h).await);
                    }
                    Job::Claim(r, tx) => {
                        let _ = tx.send(self.claim(r).await);
                    }
                    Job::ReleaseBlock(n, tx) => {
                        let _ = tx.send(self.release_block(&n).await);
                    }
                }
            }
            if !batch.is_empty() {
                self.round(batch).await;
            }
            let now = self.cache.affine(&self.node);
            self.affine.send_if_modified(|was| {
                let changed = *was != now;
                *was = now;
                changed
            });
        }
        tracing::info!(node = %self.node, "ipam engine stopped");
    }

    async fn refresh_pools(&mut self, force: bool) -> Result<()> {
        let fresh = self.pools_read.is_some_and(|t| t.elapsed() < POOLS_TTL);
        if fresh && !force {
            return Ok(());
        }
        self.pools = self
            .backend
            .list_pools()
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        self.labels = self
            .backend
            .node_labels(&self.node)
            .await?
            .unwrap_or_default();
        self.pools_read = Some(Instant::now());
        Ok(())
    }

    /// Reads every block of the datastore into the cache, except those this attempt changed.
    async fn list_all(&mut self, at: &mut Attempt) -> Result<()> {
        if at.listed {
            return Ok(());
        }
        let all = self.backend.list_blocks().await?;
        let seen: BTreeSet<String> = all.iter().map(|b| b.value.name.clone()).collect();
        self.orphans = all.iter().any(|b| b.value.spec.node.is_empty());
        self.known = seen.clone();
        for b in all {
            if !at.dirty.contains_key(&b.value.name) {
                self.cache.put(b.value, Some(b.version));
            }
        }
        let gone: Vec<String> = self
            .cache
            .blocks
            .keys()
            .filter(|n| !seen.contains(*n) && !at.dirty.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.cache.remove(&n);
        }
        at.listed = true;
        Ok(())
    }

    /// Makes sure a block not of this node is current in the cache (others change it).
    async fn fetch(&mut self, name: &str, at: &Attempt) -> Result<bool> {
        if at.dirty.contains_key(name) || at.listed {
            return Ok(self.cache.blocks.contains_key(name));
        }
        let mine = self
            .cache
            .blocks
            .get(name)
            .is_some_and(|b| b.spec.node == self.node);
        if mine {
            return Ok(true);
        }
        match self.backend.get_block(name).await? {
            Some(b) => {
                self.cache.put(b.value, Some(b.version));
                Ok(true)
            }
            None => {
                self.cache.remove(name);
                Ok(false)
            }
        }
    }

    async fn round(&mut self, mut batch: Vec<Batched>) {
        self.metrics.round(batch.len());
        for attempt in 0..MAX_ATTEMPTS {
            let mut at = Attempt::default();
            let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch.len());
            let mut jobs_blocks: Vec<BTreeSet<String>> = Vec::with_capacity(batch.len());
            let mut kept = Vec::with_capacity(batch.len());
            for (i, job) in batch.into_iter().enumerate() {
                let mut undo = Vec::new();
                let answer = match job {
                    Batched::Allocate(req, tx) => {
                        let r = self.allocate(&req, i, &mut at, &mut undo).await;
                        kept.push(Batched::Allocate(req, oneshot::channel().0));
                        Answer::Allocate(tx, r)
                    }
                    Batched::Release(h, tx) => {
                        let r = self.release(&h, i, &mut at, &mut undo).await;
                        kept.push(Batched::Release(h, oneshot::channel().0));
                        Answer::Release(tx, r)
                    }
                    Batched::ReleaseExact(x, tx) => {
                        let r = self.release_exact(&x, i, &mut at, &mut undo).await;
                        kept.push(Batched::ReleaseExact(x, oneshot::channel().0));
                        Answer::Exact(tx, r)
                    }
                };
                let failed = match &answer {
                    Answer::Allocate(_, r) => r.is_err(),
                    Answer::Release(_, r) => r.is_err(),
                    Answer::Exact(_, r) => r.is_err(),
                };
                let touched: BTreeSet<String> = undo.iter().map(undo_block).collect();
                if failed {
                    self.undo(undo);
                    jobs_blocks.push(BTreeSet::new());
                } else {
                    jobs_blocks.push(touched);
                }
                answers.push(Some(answer));
            }
            // Jobs that failed touch nothing any more; drop them from the dirty sets, and do not
            // write a block no successful job changed.
            for (name, jobs) in at.dirty.iter_mut() {
                jobs.retain(|j| jobs_blocks.get(*j).is_some_and(|s| s.contains(name)));
            }
            at.dirty.retain(|_, jobs| !jobs.is_empty());
            let lost = self.write(&mut at).await;
            // Answer every job none of whose blocks lost; the others try again.
            let mut again = Vec::new();
            for (i, (answer, job)) in answers.into_iter().zip(kept).enumerate() {
                let Some(answer) = answer else { continue };
                let hit: Option<&BackendError> = jobs_blocks[i].iter().find_map(|b| lost.get(b));
                match hit {
                    None => answer.send(),
                    Some(BackendError::Conflict(_)) | Some(BackendError::AlreadyExists(_))
                        if attempt + 1 < MAX_ATTEMPTS =>
                    {
                        again.push(rewire(job, answer));
                    }
                    Some(BackendError::Conflict(_)) | Some(BackendError::AlreadyExists(_)) => {
                        answer.fail(Error::TooManyConflicts(MAX_ATTEMPTS)).send()
                    }
                    Some(other) => answer.fail(Error::Backend(other.clone())).send(),
                }
            }
            if again.is_empty() {
                break;
            }
            self.metrics.conflict();
            batch = again;
        }
        // Blocks of other nodes are read fresh whenever needed; keep only ours.
        let foreign: Vec<String> = self
            .cache
            .blocks
            .values()
            .filter(|b| b.spec.node != self.node)
            .map(|b| b.name.clone())
            .collect();
        for n in foreign {
            self.cache.remove(&n);
        }
    }

    /// Writes every dirty block (create or compare-and-swap update), all in parallel. Returns
    /// the blocks whose write failed; those are re-read so the next attempt starts from the truth.
    async fn write(&mut self, at: &mut Attempt) -> BTreeMap<String, BackendError> {
        let mut writes = Vec::new();
        for name in at.dirty.keys() {
            let Some(block) = self.cache.blocks.get(name) else {
                continue;
            };
            let version = self.cache.versions.get(name).cloned().flatten();
            let backend = self.backend.clone();
            let block = block.clone();
            writes.push(async move {
                let r = match &version {
                    None => backend.create_block(&block).await,
                    Some(v) => backend.update_block(&block, v).await,
                };
                (block.name.clone(), r)
            });
        }
        let results = futures::future::join_all(writes).await;
        let mut lost = BTreeMap::new();
        for (name, r) in results {
            match r {
                Ok(v) => {
                    self.known.insert(name.clone());
                    self.cache.versions.insert(name, Some(v.version));
                }
                Err(e) => {
                    tracing::debug!(block = %name, error = %e, "write lost");
                    lost.insert(name, e);
                }
            }
        }
        for (name, e) in &lost {
            if matches!(e, BackendError::AlreadyExists(_)) {
                at.excluded.insert(name.clone());
                self.known.insert(name.clone());
            }
            match self.backend.get_block(name).await {
                Ok(Some(b)) => self.cache.put(b.value, Some(b.version)),
                Ok(None) => {
                    self.cache.remove(name);
                }
                Err(_) => {
                    // Unknown: forget it, it is read again when needed.
                    self.cache.remove(name);
                }
            }
        }
        lost
    }

    fn undo(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Inserted {
                    block,
                    ordinal,
                    handle,
                } => {
                    self.cache.remove_exact(&block, ordinal, &handle);
                }
                Undo::Removed { block, alloc } => {
                    self.cache.insert(&block, alloc);
                }
                Undo::Created { block } => {
                    self.cache.remove(&block);
                }
                Undo::Node { block, old } => {
                    if let Some(b) = self.cache.blocks.get_mut(&block) {
                        b.spec.node = old;
                    }
                }
            }
        }
    }

    fn mark(&self, at: &mut Attempt, block: &str, job: usize) {
        at.dirty.entry(block.to_string()).or_default().insert(job);
    }

    fn assigned(&self, block: &str, ordinal: u32) -> Option<Assigned> {
        let b = self.cache.blocks.get(block)?;
        let pool = self.pools.iter().find(|p| p.name == b.spec.pool);
        let gateway = pool.filter(|p| p.spec.gateway).and_then(|_| b.addr(1));
        Some(Assigned {
            address: b.net(ordinal)?,
            gateway,
            pool: b.spec.pool.clone(),
            block: b.name.clone(),
        })
    }

    async fn allocate(
        &mut self,
        req: &AllocateRequest,
        job: usize,
        at: &mut Attempt,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<Assigned>> {
        let owner = &req.owner;
        if owner.handle.is_empty() {
            return Err(Error::InvalidRequest("the handle is empty".into()));
        }
        let mut families: Vec<Family> = req.families.clone();
        for ip in &req.requested {
            if !families.contains(&Family::of(*ip)) {
                families.push(Family::of(*ip));
            }
        }
        if families.is_empty() {
            return Err(Error::InvalidRequest("no address family asked for".into()));
        }
        let mut seen = BTreeSet::new();
        for f in &families {
            if !seen.insert(*f) {
                return Err(Error::InvalidRequest(format!("{f} asked for twice")));
            }
        }
        for f in [Family::V4, Family::V6] {
            let n = req
                .requested
                .iter()
                .filter(|ip| Family::of(**ip) == f)
                .count();
            if n > 1 {
                return Err(Error::InvalidRequest(format!(
                    "{n} {f} addresses requested; at most one per family"
                )));
            }
        }
        self.refresh_pools(false).await?;
        let mut out = Vec::new();
        for family in families {
            // Idempotent: the handle already holds one of this family.
            let held = self.cache.held(&owner.handle).into_iter().find(|(b, _)| {
                self.cache
                    .blocks
                    .get(b)
                    .is_some_and(|b| b.family() == family)
            });
            let requested = req
                .requested
                .iter()
                .copied()
                .find(|ip| Family::of(*ip) == family);
            if let Some((b, o)) = held {
                let a = self.assigned(&b, o).ok_or_else(|| {
                    Error::FailedPrecondition(format!("block {b} vanished from the cache"))
                })?;
                if let Some(ip) = requested
                    && a.address.addr() != ip
                {
                    return Err(Error::Taken {
                        addr: ip,
                        holder: format!(
                            "nobody; but {} already holds {} for {family}",
                            owner.handle, a.address
                        ),
                    });
                }
                out.push(a);
                continue;
            }
            let (block, ordinal) = match requested {
                Some(ip) => match self.place_requested(ip, req, job, at, undo).await? {
                    Placed::New(b, o) => (b, o),
                    Placed::Held(b, o) => {
                        out.extend(self.assigned(&b, o));
                        continue;
                    }
                },
                None => self.place(family, req, job, at, undo).await?,
            };
            let alloc = owner.allocation(ordinal, &self.node, now());
            if !self.cache.insert(&block, alloc) {
                return Err(Error::FailedPrecondition(format!(
                    "ordinal {ordinal} of block {block} was taken during the round"
                )));
            }
            undo.push(Undo::Inserted {
                block: block.clone(),
                ordinal,
                handle: owner.handle.clone(),
            });
            self.mark(at, &block, job);
            out.push(self.assigned(&block, ordinal).ok_or_else(|| {
                Error::FailedPrecondition(format!("block {block} vanished from the cache"))
            })?);
        }
        Ok(out)
    }

    /// Finds (or claims) the block and ordinal of a requested address.
    async fn place_requested(
        &mut self,
        ip: IpAddr,
        req: &AllocateRequest,
        job: usize,
        at: &mut Attempt,
        undo: &mut Vec<Undo>,
    ) -> Result<Placed> {
        let (pool, cidr, ordinal) = match allocator::locate(ip, &self.pools) {
            Ok(x) => x,
            Err(Error::OutsidePools(_)) => {
                // Maybe a pool created a moment ago.
                self.refresh_pools(true).await?;
                allocator::locate(ip, &self.pools)?
            }
            Err(e) => return Err(e),
        };
        if let Some(only) = &req.pool
            && &pool.name != only
        {
            return Err(Error::InvalidRequest(format!(
                "requested address {ip} is in pool {}, not in pool {only}",
                pool.name
            )));
        }
        let pool_name = pool.name.clone();
        let name = block_name(&cidr);
        if self.fetch(&name, at).await? {
            let b = self
                .cache
                .blocks
                .get(&name)
                .ok_or_else(|| Error::NotFound(format!("block {name}")))?;
            if let Some(a) = b.allocation(ordinal) {
                if a.handle == req.owner.handle {
                    return Ok(Placed::Held(name, ordinal));
                }
                return Err(Error::Taken {
                    addr: ip,
                    holder: a.handle.clone(),
                });
            }
            if b.spec.node.is_empty() {
                self.adopt(&name, undo);
            }
        } else {
            self.cache
                .put(Block::new(cidr, &pool_name, &self.node), None);
            undo.push(Undo::Created {
                block: name.clone(),
            });
        }
        self.mark(at, &name, job);
        Ok(Placed::New(name, ordinal))
    }

    fn adopt(&mut self, block: &str, undo: &mut Vec<Undo>) {
        if let Some(b) = self.cache.blocks.get_mut(block) {
            undo.push(Undo::Node {
                block: block.to_string(),
                old: std::mem::replace(&mut b.spec.node, self.node.clone()),
            });
        }
    }

    /// Chooses the block and ordinal of a new address of `family`.
    async fn place(
        &mut self,
        family: Family,
        req: &AllocateRequest,
        job: usize,
        at: &mut Attempt,
        undo: &mut Vec<Undo>,
    ) -> Result<(String, u32)> {
        for pass in 0..3 {
            let pools: Vec<Pool> =
                allocator::eligible_pools(&self.pools, family, &self.labels, req.pool.as_deref())
                    .into_iter()
                    .cloned()
                    .collect();
            if pools.is_empty() {
                if pass == 0 {
                    self.refresh_pools(true).await?;
                    continue;
                }
                return Err(Error::NoPool {
                    family,
                    node: self.node.clone(),
                    detail: match &req.pool {
                        Some(p) => format!(" (asked for pool {p})"),
                        None => String::new(),
                    },
                });
            }
            let refs: Vec<&Pool> = pools.iter().collect();
            // Names of blocks that exist but are not in the cache must not be claimed.
            let mut excluded = at.excluded.clone();
            excluded.extend(
                self.known
                    .iter()
                    .filter(|n| !self.cache.blocks.contains_key(*n))
                    .cloned(),
            );
            let choice = allocator::choose(&self.node, &refs, &self.cache.blocks, &excluded);
            // A claim needs no list of every block when no orphaned block could be adopted
            // instead; adopting and borrowing do.
            let cheap_claim = matches!(choice, Choice::Claim { .. }) && !self.orphans;
            match choice {
                Choice::Affine { block, ordinal } => {
                    self.mark(at, &block, job);
                    return Ok((block, ordinal));
                }
                _ if !at.listed && !cheap_claim => {
                    // Claims and borrowing need every block of the datastore.
                    self.list_all(at).await?;
                    continue;
                }
                Choice::Adopt { block, ordinal } => {
                    self.adopt(&block, undo);
                    self.mark(at, &block, job);
                    return Ok((block, ordinal));
                }
                Choice::Claim { pool, cidr } => {
                    let b = Block::new(cidr, &pool, &self.node);
                    let usable = pools
                        .iter()
                        .find(|p| p.name == pool)
                        .map(|p| p.usable())
                        .unwrap_or(0..0);
                    let ordinal = b.first_free(usable).ok_or_else(|| Error::Exhausted {
                        family,
                        node: self.node.clone(),
                        detail: format!("a new block of pool {pool} has no usable address"),
                    })?;
                    let name = b.name.clone();
                    tracing::info!(node = %self.node, block = %name, %pool, "claiming block");
                    self.cache.put(b, None);
                    undo.push(Undo::Created {
                        block: name.clone(),
                    });
                    self.mark(at, &name, job);
                    return Ok((name, ordinal));
                }
                Choice::Borrow { block, ordinal } => {
                    self.mark(at, &block, job);
                    return Ok((block, ordinal));
                }
                Choice::Exhausted => {
                    return Err(Error::Exhausted {
                        family,
                        node: self.node.clone(),
                        detail: format!(
                            "every block of pool(s) {} is claimed and full{}",
                            pools
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            if pools.iter().any(|p| p.spec.allow_borrowing) {
                                ""
                            } else {
                                " (the pools do not allow borrowing from other nodes' blocks)"
                            }
                        ),
                    });
                }
            }
        }
        Err(Error::Exhausted {
            family,
            node: self.node.clone(),
            detail: "no block could be chosen".into(),
        })
    }

    async fn release(
        &mut self,
        handle: &str,
        job: usize,
        at: &mut Attempt,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<IpNet>> {
        if handle.is_empty() {
            return Err(Error::InvalidRequest("the handle is empty".into()));
        }
        let mut held = self.cache.held(handle);
        if held.is_empty() {
            // Not in our blocks: borrowed, or already gone. Look everywhere.
            self.list_all(at).await?;
            held = self.cache.held(handle);
        }
        let mut freed = Vec::new();
        for (block, ordinal) in held {
            let net = self.cache.blocks.get(&block).and_then(|b| b.net(ordinal));
            if let Some(alloc) = self.cache.remove_exact(&block, ordinal, handle) {
                undo.push(Undo::Removed {
                    block: block.clone(),
                    alloc,
                });
                self.mark(at, &block, job);
                freed.extend(net);
            }
        }
        Ok(freed)
    }

    async fn release_exact(
        &mut self,
        items: &[Exact],
        job: usize,
        at: &mut Attempt,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<Exact>> {
        let mut freed = Vec::new();
        for x in items {
            if !self.fetch(&x.block, at).await? {
                continue;
            }
            if let Some(alloc) = self.cache.remove_exact(&x.block, x.ordinal, &x.handle) {
                undo.push(Undo::Removed {
                    block: x.block.clone(),
                    alloc,
                });
                self.mark(at, &x.block, job);
                freed.push(x.clone());
            }
        }
        Ok(freed)
    }

    async fn check(&mut self, handle: &str) -> Result<Vec<Assigned>> {
        self.refresh_pools(false).await?;
        let mut at = Attempt::default();
        let mut held = self.cache.held(handle);
        if held.is_empty() {
            self.list_all(&mut at).await?;
            held = self.cache.held(handle);
        }
        let out = held
            .into_iter()
            .filter_map(|(b, o)| self.assigned(&b, o))
            .collect();
        self.drop_foreign();
        Ok(out)
    }

    fn drop_foreign(&mut self) {
        let foreign: Vec<String> = self
            .cache
            .blocks
            .values()
            .filter(|b| b.spec.node != self.node)
            .map(|b| b.name.clone())
            .collect();
        for n in foreign {
            self.cache.remove(&n);
        }
    }

    async fn claim(&mut self, req: ClaimRequest) -> Result<Block> {
        self.refresh_pools(true).await?;
        let pools: Vec<Pool> =
            allocator::eligible_pools(&self.pools, req.family, &self.labels, req.pool.as_deref())
                .into_iter()
                .cloned()
                .collect();
        if pools.is_empty() {
            return Err(Error::NoPool {
                family: req.family,
                node: self.node.clone(),
                detail: String::new(),
            });
        }
        if !req.new_block
            && let Some(b) =
                self.cache.blocks.values().find(|b| {
                    b.spec.node == self.node && pools.iter().any(|p| p.name == b.spec.pool)
                })
        {
            return Ok(b.clone());
        }
        let mut excluded = BTreeSet::new();
        for _ in 0..MAX_ATTEMPTS {
            let mut at = Attempt::default();
            self.list_all(&mut at).await?;
            let cand = pools.iter().find_map(|p| {
                allocator::next_block(p, &self.cache.blocks, &excluded).map(|c| (p, c))
            });
            let Some((pool, cidr)) = cand else {
                self.drop_foreign();
                return Err(Error::Exhausted {
                    family: req.family,
                    node: self.node.clone(),
                    detail: "every block of the eligible pools is claimed".into(),
                });
            };
            let b = Block::new(cidr, &pool.name, &self.node);
            match self.backend.create_block(&b).await {
                Ok(v) => {
                    self.known.insert(v.value.name.clone());
                    self.cache.put(v.value.clone(), Some(v.version));
                    self.drop_foreign();
                    tracing::info!(node = %self.node, block = %b.name, "claimed block");
                    return Ok(v.value);
                }
                Err(BackendError::AlreadyExists(_)) => {
                    excluded.insert(b.name.clone());
                }
                Err(e) => {
                    self.drop_foreign();
                    return Err(e.into());
                }
            }
        }
        self.drop_foreign();
        Err(Error::TooManyConflicts(MAX_ATTEMPTS))
    }

    async fn release_block(&mut self, name: &str) -> Result<()> {
        let Some(Versioned { value, version }) = self.backend.get_block(name).await? else {
            self.cache.remove(name);
            return Ok(());
        };
        if value.spec.node != self.node && !value.spec.node.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "block {name} is affine to node {}, not to {}",
                value.spec.node, self.node
            )));
        }
        if !value.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "block {name} still holds {} addresses; release them first",
                value.spec.allocations.len()
            )));
        }
        match self.backend.delete_block(name, &version).await {
            Ok(_) => {
                self.cache.remove(name);
                self.known.remove(name);
                Ok(())
            }
            Err(BackendError::Conflict(_)) => Err(Error::FailedPrecondition(format!(
                "block {name} changed while it was being released; try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// How many requests a round waits for (briefly, bounded by [`GATHER_MAX`] and
/// [`GATHER_GAP`]) before it starts.
///
/// Under load, the requests answered by a round come back as a wave spread over a millisecond
/// or so, while the requests that queued during its write are taken at once: left alone, the
/// clients split into two halves served by alternate rounds. So a round after two rounds of
/// different sizes waits for both halves, and one write serves them together. Once the rounds
/// are of one steady size the clients come back as one wave: a round waits for that many, not
/// for twice as many that never come (which cost a whole [`GATHER_GAP`] of silence per round).
/// Two equal halves look steady too, so every [`PROBE_EVERY`] steady rounds one round waits
/// for two rounds' worth again, and merges them. A lone request never waits.
#[derive(Debug)]
struct Wave {
    last: usize,
    prev: usize,
    /// Rounds of the current steady size since the last probe.
    steady: u32,
}

impl Default for Wave {
    fn default() -> Wave {
        Wave {
            last: 1,
            prev: 1,
            steady: 0,
        }
    }
}

impl Wave {
    fn target(&self) -> usize {
        if self.last <= 1 {
            1
        } else if self.last == self.prev && self.steady < PROBE_EVERY {
            self.last
        } else {
            self.last + self.prev
        }
    }

    /// A round served `n` requests.
    fn served(&mut self, n: usize) {
        let probed = self.target() > self.last;
        self.steady = if probed || n != self.last {
            0
        } else {
            self.steady + 1
        };
        self.prev = self.last;
        self.last = n;
    }
}

/// Takes every queued job, up to a round's worth.
fn drain(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

fn undo_block(u: &Undo) -> String {
    match u {
        Undo::Inserted { block, .. }
        | Undo::Removed { block, .. }
        | Undo::Created { block }
        | Undo::Node { block, .. } => block.clone(),
    }
}

/// Puts a job's reply channel back into it for another attempt.
fn rewire(job: Batched, answer: Answer) -> Batched {
    match (job, answer) {
        (Batched::Allocate(r, _), Answer::Allocate(tx, _)) => Batched::Allocate(r, tx),
        (Batched::Release(h, _), Answer::Release(tx, _)) => Batched::Release(h, tx),
        (Batched::ReleaseExact(x, _), Answer::Exact(tx, _)) => Batched::ReleaseExact(x, tx),
        // Jobs and answers are built in pairs of one kind.
        (job, _) => job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rounds` round sizes and returns the target before each.
    fn targets(rounds: &[usize]) -> Vec<usize> {
        let mut w = Wave::default();
        rounds
            .iter()
            .map(|&n| {
                let t = w.target();
                w.served(n);
                t
            })
            .collect()
    }

    #[test]
    fn a_lone_request_never_waits() {
        assert_eq!(targets(&[1, 1, 1]), [1, 1, 1]);
    }

    #[test]
    fn two_halves_of_different_sizes_are_merged_at_once() {
        // 1 request, then the 63 that queued behind it: the next round waits for all 64.
        assert_eq!(targets(&[1, 63, 64]), [1, 1, 64]);
    }

    #[test]
    fn a_steady_wave_is_not_waited_for_twice_over() {
        let mut sizes = vec![1, 63];
        sizes.extend([64; 20]);
        let t = targets(&sizes);
        // After the merge (and one round still waiting for both sizes), rounds wait for the 64
        // that come back, and every PROBE_EVERY steady rounds for twice as many.
        assert_eq!(t[2], 64, "{t:?}");
        assert_eq!(t[3], 64 + 63, "{t:?}");
        let probes = t[4..].iter().filter(|&&x| x == 128).count();
        assert_eq!(probes, 1, "{t:?}");
        assert!(t[4..].iter().all(|&x| x == 64 || x == 128), "{t:?}");
    }

    #[test]
    fn two_equal_halves_are_merged_by_a_probe() {
        let sizes = vec![32; PROBE_EVERY as usize + 4];
        let t = targets(&sizes);
        assert!(t.contains(&64), "no round waited for both halves: {t:?}");
    }

    #[test]
    fn a_shrinking_wave_settles_on_its_new_size() {
        let mut sizes = vec![64, 64, 64];
        sizes.extend([40; 4]);
        let t = targets(&sizes);
        assert_eq!(t.last(), Some(&40), "{t:?}");
    }
}
