//! ipamd's gRPC service: the proto's RPCs on top of the engine (writes) and the backend (reads).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use tonic::{Request, Response, Status};

use crate::allocator;
use crate::backend::BackendError;
use crate::engine::{self, Assigned, ClaimRequest, Engine};
use crate::error::Error;
use crate::gc::{self, Candidate, LeakView};
use crate::metrics::PoolFigures;
use crate::model::{Allocation, Block, Family, Owner, Pool, PoolSpec};
use crate::proto;
use crate::proto::ipam_server::Ipam;

/// Settings of the leak pass.
#[derive(Debug, Clone)]
pub struct GcSettings {
    pub grace: Duration,
    pub cni_cache_dir: PathBuf,
}

/// The service: an engine and the leak pass's settings.
#[derive(Clone)]
pub struct IpamService {
    engine: Engine,
    gc: GcSettings,
}

impl IpamService {
    pub fn new(engine: Engine, gc: GcSettings) -> IpamService {
        IpamService { engine, gc }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs the leak pass once: plans from the datastore, frees exactly what it planned.
    pub async fn leak_pass(&self, grace: Duration, dry_run: bool) -> Result<Vec<Candidate>, Error> {
        let backend = self.engine.backend();
        let blocks: Vec<Block> = backend
            .list_blocks()
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let nodes = backend.nodes().await?;
        let pods = backend.pods().await?;
        let live = gc::live_in(&self.gc.cni_cache_dir);
        let view = LeakView {
            node: self.engine.node(),
            nodes: nodes.as_ref(),
            pods: pods.as_ref(),
            now: jiff::Timestamp::now(),
            grace,
            live: &live,
        };
        let plan = gc::plan_leaks(&blocks, &view);
        if dry_run || plan.is_empty() {
            return Ok(plan);
        }
        self.free(plan).await
    }

    /// CNI GC of one network.
    pub async fn cni_gc(
        &self,
        network: &str,
        valid: &BTreeSet<(String, String)>,
    ) -> Result<Vec<Candidate>, Error> {
        let blocks: Vec<Block> = self
            .engine
            .backend()
            .list_blocks()
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let plan = gc::plan_cni(&blocks, self.engine.node(), network, valid);
        if plan.is_empty() {
            return Ok(plan);
        }
        self.free(plan).await
    }

    async fn free(&self, plan: Vec<Candidate>) -> Result<Vec<Candidate>, Error> {
        let freed = self
            .engine
            .release_exact(plan.iter().map(|c| c.exact.clone()).collect())
            .await?;
        let out: Vec<Candidate> = plan
            .into_iter()
            .filter(|c| freed.contains(&c.exact))
            .collect();
        for c in &out {
            tracing::info!(address = %c.address, handle = %c.exact.handle, reason = %c.reason, "gc freed");
        }
        self.engine.metrics().gc_freed(out.len());
        Ok(out)
    }

    /// Capacity and use of every pool.
    pub async fn pool_usage(&self) -> Result<Vec<(Pool, PoolFigures, u32)>, Error> {
        let backend = self.engine.backend();
        let pools = backend.list_pools().await?;
        let blocks = backend.list_blocks().await?;
        Ok(pools
            .into_iter()
            .map(|p| {
                let p = p.value;
                let usable = p.usable();
                let per_block = usable.end - usable.start;
                let capacity = p
                    .block_count()
                    .saturating_mul(u128::from(per_block))
                    .min(u128::from(u64::MAX)) as u64;
                let mine: Vec<&Block> = blocks
                    .iter()
                    .map(|b| &b.value)
                    .filter(|b| b.spec.pool == p.name)
                    .collect();
                let allocated = mine.iter().map(|b| b.spec.allocations.len() as u64).sum();
                let figures = PoolFigures {
                    pool: p.name.clone(),
                    capacity,
                    allocated,
                };
                (p, figures, mine.len() as u32)
            })
            .collect())
    }
}

/// The gRPC status of an error: what the plugin turns into a CNI code.
pub fn status_of(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::InvalidPool { .. }
        | Error::PoolOverlap { .. }
        | Error::InvalidRequest(_)
        | Error::OutsidePools(_)
        | Error::Reserved { .. } => Status::invalid_argument(msg),
        Error::Taken { .. } => Status::already_exists(msg),
        Error::NoPool { .. } | Error::Exhausted { .. } => Status::resource_exhausted(msg),
        Error::NotFound(_) => Status::not_found(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::Backend(BackendError::Unavailable(_)) | Error::ShuttingDown => {
            Status::unavailable(msg)
        }
        Error::Backend(BackendError::Conflict(_) | BackendError::AlreadyExists(_))
        | Error::TooManyConflicts(_) => Status::aborted(msg),
        Error::Backend(BackendError::NotFound(_)) => Status::not_found(msg),
        Error::Backend(BackendError::Refused(_) | BackendError::Malformed { .. }) => {
            Status::internal(msg)
        }
    }
}

fn family_of(f: i32) -> Result<Family, Status> {
    match proto::Family::try_from(f) {
        Ok(proto::Family::Ipv4) => Ok(Family::V4),
        Ok(proto::Family::Ipv6) => Ok(Family::V6),
        _ => Err(Status::invalid_argument(format!(
            "unknown address family {f} (1 = IPv4, 2 = IPv6)"
        ))),
    }
}

/// An address as requested: `10.1.2.3` or `10.1.2.3/24` (the prefix is ignored: the block's
/// applies).
pub fn parse_requested(s: &str) -> Result<IpAddr, Error> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
        .map_err(|_| Error::InvalidRequest(format!("requested address {s:?} is not an IP address")))
}

fn address(a: &Assigned) -> proto::Address {
    proto::Address {
        address: a.address.to_string(),
        gateway: a.gateway.map(|g| g.to_string()).unwrap_or_default(),
        pool: a.pool.clone(),
        block: a.block.clone(),
    }
}

pub fn pool_to_proto(p: &Pool) -> proto::Pool {
    proto::Pool {
        name: p.name.clone(),
        cidr: p.spec.cidr.to_string(),
        block_size: u32::from(p.spec.block_size),
        node_selector: p.spec.node_selector.clone(),
        disabled: p.spec.disabled,
        allow_borrowing: p.spec.allow_borrowing,
        reserve_head: p.spec.reserve_head,
        reserve_tail: p.spec.reserve_tail,
        gateway: p.spec.gateway,
    }
}

pub fn pool_from_proto(p: &proto::Pool) -> Result<Pool, Error> {
    let cidr: IpNet = p
        .cidr
        .parse()
        .map_err(|_| Error::invalid_pool(&p.name, format!("cidr {:?} is not a CIDR", p.cidr)))?;
    let block_size = u8::try_from(p.block_size)
        .map_err(|_| Error::invalid_pool(&p.name, format!("block size {}", p.block_size)))?;
    Ok(Pool {
        name: p.name.clone(),
        spec: PoolSpec {
            cidr,
            block_size,
            node_selector: p.node_selector.clone(),
            disabled: p.disabled,
            allow_borrowing: p.allow_borrowing,
            reserve_head: p.reserve_head,
            reserve_tail: p.reserve_tail,
            gateway: p.gateway,
        },
    })
}

fn allocation_info(b: &Block, a: &Allocation) -> proto::AllocationInfo {
    proto::AllocationInfo {
        ordinal: a.ordinal,
        address: b
            .addr(a.ordinal)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        handle: a.handle.clone(),
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        node: a.node.clone(),
        time: a.time.clone(),
        network: a.network.clone(),
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    }
}

pub fn block_info(b: &Block, pool: Option<&Pool>) -> proto::BlockInfo {
    let usable = pool.map(|p| p.usable()).unwrap_or(0..b.len());
    proto::BlockInfo {
        name: b.name.clone(),
        cidr: b.spec.cidr.to_string(),
        pool: b.spec.pool.clone(),
        node: b.spec.node.clone(),
        usable: u32::try_from(usable.end - usable.start).unwrap_or(u32::MAX),
        allocations: b
            .spec
            .allocations
            .iter()
            .map(|a| allocation_info(b, a))
            .collect(),
    }
}

fn freed_of(c: &Candidate) -> proto::Freed {
    proto::Freed {
        address: c.address.to_string(),
        handle: c.exact.handle.clone(),
        reason: c.reason.clone(),
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Ipam for IpamService {
    async fn allocate(
        &self,
        req: Request<proto::AllocateRequest>,
    ) -> Reply<proto::AllocateResponse> {
        let r = req.into_inner();
        let families = r
            .families
            .iter()
            .map(|f| family_of(*f))
            .collect::<Result<Vec<_>, _>>()?;
        let requested = r
            .requested
            .iter()
            .map(|s| parse_requested(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status_of)?;
        let req = engine::AllocateRequest {
            owner: Owner {
                handle: r.handle,
                namespace: r.namespace,
                pod: r.pod,
                network: r.network,
                container_id: r.container_id,
                ifname: r.ifname,
            },
            families,
            requested,
            pool: Some(r.pool).filter(|p| !p.is_empty()),
        };
        let got = self.engine.allocate(req).await.map_err(status_of)?;
        Ok(Response::new(proto::AllocateResponse {
            addresses: got.iter().map(address).collect(),
        }))
    }

    async fn release(&self, req: Request<proto::ReleaseRequest>) -> Reply<proto::ReleaseResponse> {
        let handle = req.into_inner().handle;
        let freed = self.engine.release(&handle).await.map_err(status_of)?;
        Ok(Response::new(proto::ReleaseResponse {
            released: freed.iter().map(|n| n.to_string()).collect(),
        }))
    }

    async fn check(&self, req: Request<proto::CheckRequest>) -> Reply<proto::CheckResponse> {
        let handle = req.into_inner().handle;
        let held = self.engine.check(&handle).await.map_err(status_of)?;
        Ok(Response::new(proto::CheckResponse {
            addresses: held.iter().map(address).collect(),
        }))
    }

    async fn claim_block(&self, req: Request<proto::ClaimBlockRequest>) -> Reply<proto::BlockInfo> {
        let r = req.into_inner();
        let family = if r.family == 0 {
            Family::V4
        } else {
            family_of(r.family)?
        };
        let b = self
            .engine
            .claim_block(ClaimRequest {
                pool: Some(r.pool).filter(|p| !p.is_empty()),
                family,
                new_block: r.new_block,
            })
            .await
            .map_err(status_of)?;
        let pools = self
            .engine
            .backend()
            .list_pools()
            .await
            .map_err(|e| status_of(e.into()))?;
        let pool = pools
            .iter()
            .map(|p| &p.value)
            .find(|p| p.name == b.spec.pool);
        Ok(Response::new(block_info(&b, pool)))
    }

    async fn release_block(
        &self,
        req: Request<proto::ReleaseBlockRequest>,
    ) -> Reply<proto::ReleaseBlockResponse> {
        let name = req.into_inner().name;
        self.engine.release_block(&name).await.map_err(status_of)?;
        Ok(Response::new(proto::ReleaseBlockResponse {}))
    }

    type WatchBlocksStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::NodeBlocks, Status>> + Send + 'static>,
    >;

    async fn watch_blocks(
        &self,
        _req: Request<proto::WatchBlocksRequest>,
    ) -> Reply<Self::WatchBlocksStream> {
        let node = self.engine.node().to_string();
        let rx = self.engine.affine_blocks();
        // The current set first, then every change; the stream ends with the engine.
        let stream = futures::stream::unfold((rx, true), move |(mut rx, first)| {
            let node = node.clone();
            async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let cidrs = rx
                    .borrow_and_update()
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                Some((Ok(proto::NodeBlocks { node, cidrs }), (rx, false)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_blocks(
        &self,
        req: Request<proto::ListBlocksRequest>,
    ) -> Reply<proto::ListBlocksResponse> {
        let node = req.into_inner().node;
        let backend = self.engine.backend();
        let pools: Vec<Pool> = backend
            .list_pools()
            .await
            .map_err(|e| status_of(e.into()))?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let blocks = backend
            .list_blocks()
            .await
            .map_err(|e| status_of(e.into()))?;
        Ok(Response::new(proto::ListBlocksResponse {
            blocks: blocks
                .iter()
                .map(|v| &v.value)
                .filter(|b| node.is_empty() || b.spec.node == node)
                .map(|b| block_info(b, pools.iter().find(|p| p.name == b.spec.pool)))
                .collect(),
        }))
    }

    async fn usage(&self, _req: Request<proto::UsageRequest>) -> Reply<proto::UsageResponse> {
        let usage = self.pool_usage().await.map_err(status_of)?;
        Ok(Response::new(proto::UsageResponse {
            pools: usage
                .into_iter()
                .map(|(p, f, blocks)| proto::PoolUsage {
                    pool: p.name,
                    cidr: p.spec.cidr.to_string(),
                    capacity: f.capacity,
                    allocated: f.allocated,
                    blocks,
                })
                .collect(),
        }))
    }

    async fn gc(&self, req: Request<proto::GcRequest>) -> Reply<proto::GcResponse> {
        let freed = match req.into_inner().mode {
            Some(proto::gc_request::Mode::Cni(c)) => {
                let valid: BTreeSet<(String, String)> = c
                    .valid
                    .into_iter()
                    .map(|a| (a.container_id, a.ifname))
                    .collect();
                self.cni_gc(&c.network, &valid).await
            }
            Some(proto::gc_request::Mode::Leaks(l)) => {
                let grace = l
                    .grace_seconds
                    .map(Duration::from_secs)
                    .unwrap_or(self.gc.grace);
                self.leak_pass(grace, l.dry_run).await
            }
            None => return Err(Status::invalid_argument("GC needs a mode: cni or leaks")),
        }
        .map_err(status_of)?;
        Ok(Response::new(proto::GcResponse {
            freed: freed.iter().map(freed_of).collect(),
        }))
    }

    async fn consistency(
        &self,
        _req: Request<proto::ConsistencyRequest>,
    ) -> Reply<proto::ConsistencyResponse> {
        let findings = consistency(self.engine.backend().as_ref())
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::ConsistencyResponse { findings }))
    }

    async fn show(&self, req: Request<proto::ShowRequest>) -> Reply<proto::ShowResponse> {
        let ip = parse_requested(&req.into_inner().address).map_err(status_of)?;
        let out = show(self.engine.backend().as_ref(), ip)
            .await
            .map_err(status_of)?;
        Ok(Response::new(out))
    }

    async fn list_pools(
        &self,
        _req: Request<proto::ListPoolsRequest>,
    ) -> Reply<proto::ListPoolsResponse> {
        let pools = self
            .engine
            .backend()
            .list_pools()
            .await
            .map_err(|e| status_of(e.into()))?;
        Ok(Response::new(proto::ListPoolsResponse {
            pools: pools.iter().map(|p| pool_to_proto(&p.value)).collect(),
        }))
    }

    async fn create_pool(&self, req: Request<proto::Pool>) -> Reply<proto::Pool> {
        let pool = pool_from_proto(&req.into_inner()).map_err(status_of)?;
        let created = create_pool(self.engine.backend().as_ref(), &pool)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pool_to_proto(&created)))
    }

    async fn delete_pool(
        &self,
        req: Request<proto::DeletePoolRequest>,
    ) -> Reply<proto::DeletePoolResponse> {
        let name = req.into_inner().name;
        delete_pool(self.engine.backend().as_ref(), &name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::DeletePoolResponse {}))
    }

    async fn status(&self, _req: Request<proto::StatusRequest>) -> Reply<proto::StatusResponse> {
        Ok(Response::new(proto::StatusResponse {
            node: self.engine.node().to_string(),
            backend: self.engine.backend().describe(),
        }))
    }
}

/// `trellis ipam check` on a backend.
pub async fn consistency(backend: &dyn crate::backend::Backend) -> Result<Vec<String>, Error> {
    let pools: Vec<Pool> = backend
        .list_pools()
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let blocks: Vec<Block> = backend
        .list_blocks()
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let nodes = backend.nodes().await?;
    Ok(crate::check::check(&pools, &blocks, nodes.as_ref())
        .iter()
        .map(|f| f.to_string())
        .collect())
}

/// Validates a pool against the others and creates it; nothing is written if it is refused.
pub async fn create_pool(
    backend: &dyn crate::backend::Backend,
    pool: &Pool,
) -> Result<Pool, Error> {
    let others: Vec<Pool> = backend
        .list_pools()
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    if others.iter().any(|p| p.name == pool.name) {
        return Err(Error::invalid_pool(
            &pool.name,
            "a pool of that name exists",
        ));
    }
    allocator::validate_pool(pool, &others)?;
    match backend.create_pool(pool).await {
        Ok(v) => Ok(v.value),
        Err(BackendError::AlreadyExists(_)) => Err(Error::invalid_pool(
            &pool.name,
            "a pool of that name exists",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a pool whose blocks are all empty (they are deleted with it).
pub async fn delete_pool(backend: &dyn crate::backend::Backend, name: &str) -> Result<(), Error> {
    let blocks = backend.list_blocks().await?;
    let mine: Vec<_> = blocks
        .iter()
        .filter(|b| b.value.spec.pool == name)
        .collect();
    let used: usize = mine.iter().map(|b| b.value.spec.allocations.len()).sum();
    if used > 0 {
        return Err(Error::FailedPrecondition(format!(
            "pool {name} still has {used} addresses allocated; disable it and release them first"
        )));
    }
    for b in mine {
        if let Err(e) = backend.delete_block(&b.value.name, &b.version).await {
            return Err(Error::FailedPrecondition(format!(
                "block {} of pool {name} changed while deleting: {e}",
                b.value.name
            )));
        }
    }
    if !backend.delete_pool(name).await? {
        return Err(Error::NotFound(format!("pool {name}")));
    }
    Ok(())
}

/// Who holds an address.
pub async fn show(
    backend: &dyn crate::backend::Backend,
    ip: IpAddr,
) -> Result<proto::ShowResponse, Error> {
    let pools: Vec<Pool> = backend
        .list_pools()
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let pool = pools
        .iter()
        .find(|p| p.contains(ip))
        .ok_or(Error::OutsidePools(ip))?;
    let cidr = pool.block_containing(ip).ok_or(Error::OutsidePools(ip))?;
    let name = crate::model::block_name(&cidr);
    let mut out = proto::ShowResponse {
        pool: pool.name.clone(),
        block: name.clone(),
        ..Default::default()
    };
    let probe = Block::new(cidr, &pool.name, "");
    let ordinal = probe.ordinal_of(ip).unwrap_or(0);
    match backend.get_block(&name).await? {
        None => out.state = "unclaimed".into(),
        Some(b) => {
            out.block_node = b.value.spec.node.clone();
            match b.value.allocation(ordinal) {
                Some(a) => {
                    out.state = "allocated".into();
                    out.allocation = Some(allocation_info(&b.value, a));
                }
                None if !pool.usable().contains(&u64::from(ordinal)) => {
                    out.state = "reserved".into()
                }
                None => out.state = "free".into(),
            }
        }
    }
    Ok(out)
}
