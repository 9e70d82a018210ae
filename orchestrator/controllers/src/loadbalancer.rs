//! LoadBalancer Services get addresses from a configured pool (`--load-balancer-pool`), as
//! k3s' ServiceLB and MetalLB's controller hand them out: the address goes into
//! `status.loadBalancer.ingress`, the proxies DNAT it like the cluster IP, and in the routed
//! mode the BGP agents announce it.
//!
//! The allocation lives in the Services' statuses only: after a restart the allocator is
//! rebuilt from them before anything new is handed out, so an address never moves. It is
//! released when the Service goes or stops being a LoadBalancer; `spec.loadBalancerIP` is
//! honoured when it is in the pool and free (so are MetalLB's `metallb.io/loadBalancerIPs`
//! annotation's addresses, one per family); a requested address of a family the Service's
//! `ipFamilies` lack is refused with a Warning Event (`LoadBalancerIPInvalid`) and the Service
//! gets no address. An exhausted pool is reported with a Warning Event on the Service and
//! retried when an address comes free; a dual-stack Service one of whose families cannot be
//! served gets nothing under RequireDualStack (all or nothing, as MetalLB) and keeps the
//! other family's address under PreferDualStack. Services with a
//! `loadBalancerClass` belong to another implementation and are left alone. Without a pool,
//! `--load-balancer-node-addresses` writes the nodes' addresses instead, as k3s' ServiceLB
//! does (the overlay mode: the proxy serves the port on them, nothing is announced).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::controller::{OnDelete, Reconciler, owner_handler};
use crate::events::{self, EventType, What};
use crate::informer::{Informer, Synced};
use crate::manager::Watches;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError, owner};

/// Why no address was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("the load-balancer pool {0} has no free address")]
    Exhausted(IpNet),
    #[error("the requested address {ip} is not in the load-balancer pool {pool}")]
    NotInPool { ip: IpAddr, pool: IpNet },
    #[error("the requested address {ip} is already used by {by}")]
    Taken { ip: IpAddr, by: String },
    #[error("no load-balancer pool of the requested address {0}'s family is configured")]
    NoPool(IpAddr),
    #[error(
        "the requested address {ip} is {}, not of the Service's ipFamilies [{}]",
        family_name(.ip.is_ipv6()),
        family_list(.families)
    )]
    WrongFamily { ip: IpAddr, families: Vec<bool> },
    #[error("the requested addresses {0} and {1} are of the same family: at most one per family")]
    SameFamily(IpAddr, IpAddr),
}

impl AllocError {
    /// A request the Service itself gets wrong (no pool change can serve it).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            AllocError::WrongFamily { .. } | AllocError::SameFamily(..)
        )
    }
}

fn family_name(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

fn family_list(families: &[bool]) -> String {
    families
        .iter()
        .map(|v6| family_name(*v6))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a Service got: its addresses, and why a family got none when the Service may do
/// without it (PreferDualStack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub ips: Vec<IpAddr>,
    pub missing: Option<AllocError>,
}

/// Which Service holds which address of the pool (one family).
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: IpNet,
    by_ip: BTreeMap<IpAddr, String>,
    by_service: BTreeMap<String, IpAddr>,
}

impl Pool {
    pub fn new(cidr: impl Into<IpNet>) -> Pool {
        Pool {
            cidr: cidr.into().trunc(),
            by_ip: BTreeMap::new(),
            by_service: BTreeMap::new(),
        }
    }

    /// Usable addresses: all of an IPv4 /31 or /32 (IPv6 /127 or /128), else all but the
    /// network and (IPv4) broadcast ones; IPv6's network address is the subnet-router
    /// anycast address.
    fn usable(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip)
            && (self.cidr.prefix_len() + 1 >= self.cidr.max_prefix_len()
                || (ip != self.cidr.network() && (ip.is_ipv6() || ip != self.cidr.broadcast())))
    }

    /// Takes over an address a Service's status already shows (a restart): true when it is
    /// the Service's now, false when it is outside the pool or someone else's.
    pub fn restore(&mut self, service: &str, ip: IpAddr) -> bool {
        if !self.usable(ip) {
            return false;
        }
        match self.by_ip.get(&ip) {
            Some(s) if s == service => true,
            Some(_) => false,
            None => {
                self.release(service);
                self.by_ip.insert(ip, service.to_string());
                self.by_service.insert(service.to_string(), ip);
                true
            }
        }
    }

    /// The address of `service`: the one it holds (unless it asks for another), the one it
    /// asks for, or the lowest free one.
    pub fn allocate(
        &mut self,
        service: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, AllocError> {
        let held = self.by_service.get(service).copied();
        match (held, requested) {
            (Some(h), None) => return Ok(h),
            (Some(h), Some(r)) if h == r => return Ok(h),
            _ => {}
        }
        let ip = match requested {
            Some(ip) => {
                if !self.usable(ip) {
                    return Err(AllocError::NotInPool {
                        ip,
                        pool: self.cidr,
                    });
                }
                if let Some(by) = self.by_ip.get(&ip) {
                    return Err(AllocError::Taken { ip, by: by.clone() });
                }
                ip
            }
            // Lowest first; at most taken + 3 addresses are looked at (a huge IPv6 pool is
            // never walked).
            None => self
                .cidr
                .hosts()
                .take(self.by_ip.len() + 3)
                .find(|ip| self.usable(*ip) && !self.by_ip.contains_key(ip))
                .ok_or(AllocError::Exhausted(self.cidr))?,
        };
        self.release(service);
        self.by_ip.insert(ip, service.to_string());
        self.by_service.insert(service.to_string(), ip);
        Ok(ip)
    }

    /// Frees the address of `service`; true when it held one.
    pub fn release(&mut self, service: &str) -> bool {
        match self.by_service.remove(service) {
            Some(ip) => {
                self.by_ip.remove(&ip);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, service: &str) -> Option<IpAddr> {
        self.by_service.get(service).copied()
    }

    pub fn in_pool(&self, ip: IpAddr) -> bool {
        self.usable(ip)
    }
}

/// One pool per family (either may be absent).
#[derive(Debug, Clone)]
pub struct Pools {
    v4: Option<Pool>,
    v6: Option<Pool>,
}

impl Pools {
    pub fn new(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> Pools {
        Pools {
            v4: v4.map(Pool::new),
            v6: v6.map(Pool::new),
        }
    }

    fn of(&mut self, ipv6: bool) -> Option<&mut Pool> {
        if ipv6 {
            self.v6.as_mut()
        } else {
            self.v4.as_mut()
        }
    }

    /// Takes over an address a status shows (see [`Pool::restore`]).
    pub fn restore(&mut self, service: &str, ip: IpAddr) -> bool {
        self.of(ip.is_ipv6())
            .is_some_and(|p| p.restore(service, ip))
    }

    /// The addresses of `service`, one per family of `families` (true: IPv6) that has a
    /// pool, in that order; `requested` (spec.loadBalancerIP, or MetalLB's annotation) is
    /// honoured in its family. A requested address of a family `families` lacks, or two of
    /// one family, is refused and the Service holds nothing. When a family cannot be served:
    /// with `all_or_nothing` (RequireDualStack) the Service holds nothing, else it keeps what
    /// the other family got (`missing` says why the rest is not there).
    pub fn allocate(
        &mut self,
        service: &str,
        families: &[bool],
        requested: &[IpAddr],
        all_or_nothing: bool,
    ) -> Result<Allocated, AllocError> {
        for (i, r) in requested.iter().enumerate() {
            let refused = if !families.contains(&r.is_ipv6()) {
                Some(AllocError::WrongFamily {
                    ip: *r,
                    families: families.to_vec(),
                })
            } else {
                requested[..i]
                    .iter()
                    .find(|o| o.is_ipv6() == r.is_ipv6())
                    .map(|o| AllocError::SameFamily(*o, *r))
            };
            if let Some(e) = refused {
                self.release(service);
                return Err(e);
            }
            if self.of(r.is_ipv6()).is_none() {
                return Err(AllocError::NoPool(*r));
            }
        }
        let mut out = Vec::new();
        let mut missing = None;
        for &v6 in families {
            let req = requested.iter().copied().find(|r| r.is_ipv6() == v6);
            let Some(p) = self.of(v6) else { continue };
            match p.allocate(service, req) {
                Ok(ip) => out.push(ip),
                Err(e) if all_or_nothing => {
                    self.release(service);
                    return Err(e);
                }
                // The family stays as it was (an address held before stays held).
                Err(e) => {
                    missing.get_or_insert(e);
                }
            }
        }
        // The families the Service no longer has give their address back.
        for v6 in [false, true] {
            if !families.contains(&v6)
                && let Some(p) = self.of(v6)
            {
                p.release(service);
            }
        }
        match missing {
            Some(e) if out.is_empty() => Err(e),
            missing => Ok(Allocated { ips: out, missing }),
        }
    }

    /// The addresses `service` holds, IPv4 first.
    pub fn held(&self, service: &str) -> Vec<IpAddr> {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .filter_map(|p| p.get(service))
            .collect()
    }

    /// Frees the addresses of `service`; true when it held one.
    pub fn release(&mut self, service: &str) -> bool {
        let a = self.v4.as_mut().is_some_and(|p| p.release(service));
        let b = self.v6.as_mut().is_some_and(|p| p.release(service));
        a || b
    }

    pub fn in_pool(&self, ip: IpAddr) -> bool {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .any(|p| p.in_pool(ip))
    }
}

/// The families a Service's addresses are for (true: IPv6): its `spec.ipFamilies`, as the API
/// server set them (IPv4 when it has none).
pub fn families(svc: &Service) -> Vec<bool> {
    let fams: Vec<bool> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .map(|f| f == "IPv6")
        .collect();
    if fams.is_empty() { vec![false] } else { fams }
}

/// A Service this controller serves: type LoadBalancer, no `loadBalancerClass`.
pub fn wants_address(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|s| {
            s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
        })
}

/// The addresses of `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// MetalLB's annotations asking for addresses (comma-separated, one per family); the first
/// is current, the second the older name.
pub const METALLB_IPS: [&str; 2] = [
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
];

/// The addresses a Service asks for: MetalLB's annotation, else `spec.loadBalancerIP`.
pub fn requested(svc: &Service) -> Result<Vec<IpAddr>, String> {
    let annotations = svc.metadata.annotations.as_ref();
    if let Some((key, list)) = METALLB_IPS.iter().find_map(|k| {
        annotations
            .and_then(|a| a.get(*k))
            .map(|v| (*k, v.as_str()))
    }) {
        return list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("annotation {key}: {s:?} is not an IP address"))
            })
            .collect();
    }
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => Ok(Vec::new()),
        Some(s) => s
            .parse()
            .map(|ip| vec![ip])
            .map_err(|_| format!("spec.loadBalancerIP {s:?} is not an IP address")),
    }
}

/// Whether a Service must have every family's address or none (`ipFamilyPolicy:
/// RequireDualStack`).
pub fn all_or_nothing(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.ip_family_policy.as_deref())
        == Some("RequireDualStack")
}

/// Where the addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--load-balancer-pool`: one address per Service and family of its `ipFamilies` that
    /// has a pool (MetalLB, kube-router).
    Pool {
        v4: Option<Ipv4Net>,
        v6: Option<Ipv6Net>,
    },
    /// `--load-balancer-node-addresses`: every Service's ingress is the nodes' InternalIPs,
    /// as k3s' ServiceLB writes them (the overlay mode: the node addresses serve).
    NodeAddresses,
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "service-lb"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.services.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        // A deleted Service is synced once more: its address goes back to the pool.
        watches.on(owner_handler(&self.queue, &self.services, OnDelete::Sync));
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        self.reconcile(key).await
    }
}

#[derive(Clone)]
pub struct Controller {
    pub services: Informer<Service>,
    pub queue: WorkQueue,
    pool: Arc<Mutex<Option<Pools>>>,
    source: Source,
    ctx: Ctx,
}

impl Controller {
    pub fn new(ctx: Ctx, services: Informer<Service>, source: Source) -> Self {
        Controller {
            services,
            queue: WorkQueue::new(),
            pool: Arc::new(Mutex::new(None)),
            source,
            ctx,
        }
    }

    fn pools(&self) -> Pools {
        match self.source {
            Source::Pool { v4, v6 } => Pools::new(v4, v6),
            // Never used in this mode; no pool.
            Source::NodeAddresses => Pools::new(None, None),
        }
    }

    /// The pool, rebuilt from the statuses the first time (oldest Service first, so of two
    /// that show the same address the older keeps it).
    fn with_pool<T>(&self, f: impl FnOnce(&mut Pools) -> T) -> T {
        let mut guard = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let pool = guard.get_or_insert_with(|| {
            let mut pool = self.pools();
            let mut services = self.services.state();
            services.sort_by(|a, b| {
                (
                    a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    owner::key(&a.metadata),
                )
                    .cmp(&(
                        b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        owner::key(&b.metadata),
                    ))
            });
            for s in services.iter().filter(|s| wants_address(s)) {
                let key = owner::key(&s.metadata);
                // One address per family.
                let mut kept = [false, false];
                for ip in ingress_ips(s) {
                    let fam = usize::from(ip.is_ipv6());
                    if !kept[fam] && pool.restore(&key, ip) {
                        kept[fam] = true;
                        tracing::info!(service = %key, %ip, "kept the load-balancer address");
                    }
                }
            }
            pool
        });
        f(pool)
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        self.services.wait_synced().await;
        if self.source == Source::NodeAddresses {
            return self.sync_node_addresses(key).await;
        }
        let svc = self.services.get(key);
        let Some(svc) = svc.filter(|s| wants_address(s)) else {
            if self.with_pool(|p| p.release(key)) {
                tracing::info!(service = %key, "released the load-balancer address");
                self.requeue_waiting();
            }
            // No longer ours: take our address out of its status.
            if let Some(s) = self.services.get(key)
                && s.metadata.deletion_timestamp.is_none()
                && s.spec
                    .as_ref()
                    .is_some_and(|sp| sp.load_balancer_class.is_none())
                && ingress_ips(&s)
                    .iter()
                    .any(|ip| self.with_pool(|p| p.in_pool(*ip)))
            {
                self.write_status(&s, &[]).await?;
            }
            return Ok(None);
        };
        let requested = match requested(&svc) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(service = %key, %why, "no load-balancer address");
                self.event(&svc, "LoadBalancerIPInvalid", &why).await;
                return Ok(None);
            }
        };
        let got =
            self.with_pool(|p| p.allocate(key, &families(&svc), &requested, all_or_nothing(&svc)));
        match got {
            Ok(Allocated { ips, missing }) => {
                if ingress_ips(&svc) != ips {
                    self.write_status(&svc, &ips).await?;
                    tracing::info!(service = %key, ?ips, "load-balancer address");
                }
                let Some(why) = missing else {
                    return Ok(None);
                };
                // PreferDualStack: served with what it got, the other family retried.
                tracing::warn!(service = %key, %why, ?ips, "no load-balancer address of one family");
                self.event(&svc, "AllocationFailed", &why.to_string()).await;
                Ok(Some(Duration::from_secs(60)))
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(service = %key, %why, "no load-balancer address");
                // What the Service still holds (nothing after an all-or-nothing failure or an
                // invalid request) is what its status shows of the pool.
                let held = self.with_pool(|p| p.held(key));
                let shown = ingress_ips(&svc);
                let pool_shown: Vec<IpAddr> = shown
                    .iter()
                    .copied()
                    .filter(|ip| self.with_pool(|p| p.in_pool(*ip)))
                    .collect();
                if pool_shown.iter().any(|ip| !held.contains(ip)) {
                    let keep: Vec<IpAddr> =
                        shown.into_iter().filter(|ip| held.contains(ip)).collect();
                    self.write_status(&svc, &keep).await?;
                    self.requeue_waiting();
                }
                if e.is_invalid_request() {
                    self.event(&svc, "LoadBalancerIPInvalid", &why).await;
                    // Nothing to retry until the Service changes.
                    return Ok(None);
                }
                self.event(&svc, "AllocationFailed", &why).await;
                // Retried when an address is released, and now and then anyway.
                Ok(Some(Duration::from_secs(60)))
            }
        }
    }

    /// Services still waiting for an address (or for one of a family) get another go.
    fn requeue_waiting(&self) {
        for s in self.services.state() {
            if wants_address(&s) && ingress_ips(&s).len() < families(&s).len() {
                self.queue.add(owner::key(&s.metadata));
            }
        }
    }

    /// k3s' ServiceLB: the ingress is every node's InternalIP (one per family of the
    /// Service's `ipFamilies`), looked at again every 30 s (nodes come and go without touching
    /// the Service).
    async fn sync_node_addresses(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(svc) = self.services.get(key) else {
            return Ok(None);
        };
        if !wants_address(&svc) {
            if svc.metadata.deletion_timestamp.is_none()
                && svc
                    .spec
                    .as_ref()
                    .is_some_and(|sp| sp.load_balancer_class.is_none())
                && !ingress_ips(&svc).is_empty()
            {
                self.write_status(&svc, &[]).await?;
            }
            return Ok(None);
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.ctx.client.clone());
        // Each node's first InternalIP of every family the Service has (a dual-stack node
        // lists one per family), the Service's primary family first.
        let fams = families(&svc);
        let listed = nodes.list(&Default::default()).await?.items;
        let mut ips: Vec<IpAddr> = Vec::new();
        for &v6 in &fams {
            let mut of_family: Vec<IpAddr> = listed
                .iter()
                .filter_map(|n| {
                    n.status
                        .as_ref()?
                        .addresses
                        .as_ref()?
                        .iter()
                        .filter(|a| a.type_ == "InternalIP")
                        .filter_map(|a| a.address.parse::<IpAddr>().ok())
                        .find(|ip| ip.is_ipv6() == v6)
                })
                .collect();
            of_family.sort();
            of_family.dedup();
            ips.extend(of_family);
        }
        if ingress_ips(&svc) != ips {
            self.write_status(&svc, &ips).await?;
            tracing::info!(service = %key, ?ips, "load-balancer addresses: the nodes'");
        }
        Ok(Some(Duration::from_secs(30)))
    }

    async fn write_status(&self, svc: &Service, ips: &[IpAddr]) -> Result<(), SyncError> {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            return Ok(());
        };
        let ingress: Vec<serde_json::Value> =
            ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), ns);
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn event(&self, svc: &Service, reason: &str, message: &str) {
        let what = What {
            type_: EventType::Warning,
            reason,
            message,
            action: Some("Allocating"),
        };
        events::record(&self.ctx.client, "service-lb-controller", svc, what).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn got(ips: &[IpAddr]) -> Result<Allocated, AllocError> {
        Ok(Allocated {
            ips: ips.to_vec(),
            missing: None,
        })
    }

    fn pool(cidr: &str) -> Pool {
        Pool::new(cidr.parse::<IpNet>().unwrap())
    }

    #[test]
    fn addresses_come_lowest_first_and_stay_with_their_service() {
        let mut p = pool("203.0.113.0/29");
        assert_eq!(p.allocate("default/a", None), Ok(ip("203.0.113.1")));
        assert_eq!(p.allocate("default/b", None), Ok(ip("203.0.113.2")));
        assert_eq!(p.allocate("default/a", None), Ok(ip("203.0.113.1")));
    }

    #[test]
    fn an_exhausted_pool_says_so_and_a_release_frees_an_address() {
        let mut p = pool("203.0.113.0/30"); // two usable: .1 and .2
        p.allocate("default/a", None).unwrap();
        p.allocate("default/b", None).unwrap();
        assert_eq!(
            p.allocate("default/c", None),
            Err(AllocError::Exhausted("203.0.113.0/30".parse().unwrap()))
        );
        assert!(p.release("default/a"));
        assert!(!p.release("default/a"));
        assert_eq!(p.allocate("default/c", None), Ok(ip("203.0.113.1")));
    }

    #[test]
    fn a_restart_keeps_every_address_where_it_was() {
        let mut before = pool("203.0.113.0/28");
        for s in ["default/a", "default/b", "default/c"] {
            before.allocate(s, None).unwrap();
        }
        before.release("default/a");
        // A new allocator sees only the statuses: b and c keep theirs, a new one gets .1.
        let mut after = pool("203.0.113.0/28");
        assert!(after.restore("default/c", before.get("default/c").unwrap()));
        assert!(after.restore("default/b", before.get("default/b").unwrap()));
        assert_eq!(after.allocate("default/b", None), Ok(ip("203.0.113.2")));
        assert_eq!(after.allocate("default/c", None), Ok(ip("203.0.113.3")));
        assert_eq!(after.allocate("default/d", None), Ok(ip("203.0.113.1")));
    }

    #[test]
    fn restore_refuses_foreign_and_doubly_claimed_addresses() {
        let mut p = pool("203.0.113.0/28");
        assert!(!p.restore("default/a", ip("198.51.100.1")));
        assert!(!p.restore("default/a", ip("203.0.113.0")));
        assert!(p.restore("default/a", ip("203.0.113.5")));
        assert!(!p.restore("default/b", ip("203.0.113.5")));
        assert_eq!(p.allocate("default/b", None), Ok(ip("203.0.113.1")));
    }

    #[test]
    fn load_balancer_ip_is_honoured_inside_the_pool_only() {
        let mut p = pool("203.0.113.0/28");
        assert_eq!(
            p.allocate("default/a", Some(ip("203.0.113.9"))),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            p.allocate("default/b", Some(ip("203.0.113.9"))),
            Err(AllocError::Taken {
                ip: ip("203.0.113.9"),
                by: "default/a".into()
            })
        );
        assert!(matches!(
            p.allocate("default/b", Some(ip("198.51.100.9"))),
            Err(AllocError::NotInPool { .. })
        ));
        // Changing the request moves the Service to the new address and frees the old one.
        assert_eq!(
            p.allocate("default/a", Some(ip("203.0.113.10"))),
            Ok(ip("203.0.113.10"))
        );
        assert_eq!(
            p.allocate("default/b", Some(ip("203.0.113.9"))),
            Ok(ip("203.0.113.9"))
        );
    }

    #[test]
    fn ipv6_pools_hand_out_one_address_per_family_of_the_service() {
        let mut p = Pools::new(
            Some("203.0.113.0/28".parse().unwrap()),
            Some("fd00:203::/120".parse().unwrap()),
        );
        // IPv6 first: the network address (subnet-router anycast) is never handed out.
        assert_eq!(
            p.allocate("default/a", &[true, false], &[], false),
            got(&[ip("fd00:203::1"), ip("203.0.113.1")])
        );
        assert_eq!(
            p.allocate("default/b", &[true], &[], false),
            got(&[ip("fd00:203::2")])
        );
        // Dropping a family gives its address back.
        assert_eq!(
            p.allocate("default/a", &[true], &[], false),
            got(&[ip("fd00:203::1")])
        );
        assert_eq!(
            p.allocate("default/c", &[false], &[], false),
            got(&[ip("203.0.113.1")])
        );
        // loadBalancerIP in its family.
        assert_eq!(
            p.allocate("default/d", &[false, true], &[ip("fd00:203::99")], false),
            got(&[ip("203.0.113.2"), ip("fd00:203::99")])
        );
        assert!(p.release("default/d"));
        assert!(p.restore("default/e", ip("fd00:203::99")));
        assert!(!p.restore("default/f", ip("fd00:204::1")));
        // Without an IPv6 pool, an IPv6 Service gets nothing and an IPv6 request is refused.
        let mut v4 = Pools::new(Some("203.0.113.0/28".parse().unwrap()), None);
        assert_eq!(v4.allocate("default/a", &[true], &[], false), got(&[]));
        assert_eq!(
            v4.allocate("default/a", &[true], &[ip("fd00::1")], false),
            Err(AllocError::NoPool(ip("fd00::1")))
        );
        // A /127 and a /128 are used whole; a full IPv6 pool says so.
        let mut tiny = pool("fd00:203::/127");
        assert_eq!(tiny.allocate("default/a", None), Ok(ip("fd00:203::")));
        assert_eq!(tiny.allocate("default/b", None), Ok(ip("fd00:203::1")));
        assert!(matches!(
            tiny.allocate("default/c", None),
            Err(AllocError::Exhausted(_))
        ));
        let mut big = pool("fd00:203::/64");
        for i in 1..=100u16 {
            assert_eq!(
                big.allocate(&format!("default/s{i}"), None),
                Ok(ip(&format!("fd00:203::{i:x}")))
            );
        }
    }

    #[test]
    fn a_requested_address_outside_the_service_s_families_is_refused_and_nothing_held() {
        let mut p = Pools::new(
            Some("203.0.113.0/28".parse().unwrap()),
            Some("fd00:203::/120".parse().unwrap()),
        );
        // An IPv4-only Service holding .1 asks for an IPv6 address: refused, .1 given back.
        assert_eq!(
            p.allocate("default/a", &[false], &[], false),
            got(&[ip("203.0.113.1")])
        );
        let e = p
            .allocate("default/a", &[false], &[ip("fd00:203::7")], false)
            .unwrap_err();
        assert_eq!(
            e,
            AllocError::WrongFamily {
                ip: ip("fd00:203::7"),
                families: vec![false]
            }
        );
        assert!(e.is_invalid_request());
        assert_eq!(
            e.to_string(),
            "the requested address fd00:203::7 is IPv6, not of the Service's ipFamilies [IPv4]"
        );
        assert_eq!(p.held("default/a"), Vec::<IpAddr>::new());
        // Negative control: the same request from a dual-stack Service is served.
        assert_eq!(
            p.allocate("default/a", &[false, true], &[ip("fd00:203::7")], false),
            got(&[ip("203.0.113.1"), ip("fd00:203::7")])
        );
        // Two of one family (MetalLB's annotation) are refused too.
        let e = p
            .allocate(
                "default/b",
                &[false, true],
                &[ip("203.0.113.5"), ip("203.0.113.6")],
                false,
            )
            .unwrap_err();
        assert!(matches!(e, AllocError::SameFamily(..)), "{e}");
        assert_eq!(p.held("default/b"), Vec::<IpAddr>::new());
    }

    #[test]
    fn an_exhausted_ipv6_pool_holds_nothing_for_require_and_keeps_ipv4_for_prefer() {
        let mut p = Pools::new(
            Some("203.0.113.0/28".parse().unwrap()),
            Some("fd00:203::/127".parse().unwrap()),
        );
        // Fill the IPv6 pool (a /127: two addresses).
        for s in ["default/x", "default/y"] {
            assert_eq!(p.allocate(s, &[true], &[], false).unwrap().ips.len(), 1);
        }
        // RequireDualStack: all or nothing; the IPv4 address is not kept.
        let e = p
            .allocate("default/req", &[false, true], &[], true)
            .unwrap_err();
        assert!(matches!(e, AllocError::Exhausted(_)), "{e}");
        assert_eq!(p.held("default/req"), Vec::<IpAddr>::new());
        // So the next IPv4 Service gets .1, which the failed one would have held.
        assert_eq!(
            p.allocate("default/v4", &[false], &[], false),
            got(&[ip("203.0.113.1")])
        );
        // PreferDualStack: keeps its IPv4 address and says why IPv6 is missing.
        let a = p
            .allocate("default/pref", &[false, true], &[], false)
            .unwrap();
        assert_eq!(a.ips, vec![ip("203.0.113.2")]);
        assert!(matches!(a.missing, Some(AllocError::Exhausted(_))));
        assert_eq!(p.held("default/pref"), vec![ip("203.0.113.2")]);
        // An IPv6 address comes free: the next try completes it, the IPv4 one unchanged.
        assert!(p.release("default/x"));
        assert_eq!(
            p.allocate("default/pref", &[false, true], &[], false),
            got(&[ip("203.0.113.2"), ip("fd00:203::")])
        );
        // And the RequireDualStack one now gets both.
        assert!(p.release("default/y"));
        assert_eq!(
            p.allocate("default/req", &[false, true], &[], true),
            got(&[ip("203.0.113.3"), ip("fd00:203::1")])
        );
    }

    #[test]
    fn metallb_s_annotation_comes_before_load_balancer_ip() {
        let svc = |ann: serde_json::Value, spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "default",
                "annotations": ann}, "spec": spec}))
            .unwrap()
        };
        assert_eq!(
            requested(&svc(
                json!({"metallb.io/loadBalancerIPs": "203.0.113.5, fd00:203::5"}),
                json!({"loadBalancerIP": "203.0.113.9"})
            )),
            Ok(vec![ip("203.0.113.5"), ip("fd00:203::5")])
        );
        assert_eq!(
            requested(&svc(
                json!({"metallb.universe.tf/loadBalancerIPs": "fd00:203::5"}),
                json!({})
            )),
            Ok(vec![ip("fd00:203::5")])
        );
        assert_eq!(
            requested(&svc(json!({}), json!({"loadBalancerIP": "203.0.113.9"}))),
            Ok(vec![ip("203.0.113.9")])
        );
        assert!(
            requested(&svc(
                json!({"metallb.io/loadBalancerIPs": "nope"}),
                json!({})
            ))
            .is_err()
        );
        assert!(all_or_nothing(&svc(
            json!({}),
            json!({"ipFamilyPolicy": "RequireDualStack"})
        )));
        assert!(!all_or_nothing(&svc(
            json!({}),
            json!({"ipFamilyPolicy": "PreferDualStack"})
        )));
    }

    #[test]
    fn only_class_less_load_balancers_are_served() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": "a", "namespace": "default"}, "spec": spec}),
            )
            .unwrap()
        };
        assert!(wants_address(&svc(json!({"type": "LoadBalancer"}))));
        assert!(!wants_address(&svc(json!({"type": "NodePort"}))));
        assert!(!wants_address(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"})
        )));
    }
}
