//! LoadBalancer Services get addresses from a configured pool (`--load-balancer-pool`), as
//! k3s' ServiceLB and MetalLB's controller hand them out: the address goes into
//! `status.loadBalancer.ingress`, the proxies DNAT it like the cluster IP, and in the routed
//! mode the BGP agents announce it.
//!
//! The allocation lives in the Services' statuses only: after a restart the allocator is
//! rebuilt from them before anything new is handed out, so an address never moves. It is
//! released when the Service goes or stops being a LoadBalancer; `spec.loadBalancerIP` is
//! honoured when it is in the pool and free; an exhausted pool is reported with a Warning
//! Event on the Service and retried when an address comes free. Services with a
//! `loadBalancerClass` belong to another implementation and are left alone. Without a pool,
//! `--load-balancer-node-addresses` writes the nodes' addresses instead, as k3s' ServiceLB
//! does (the overlay mode: the proxy serves the port on them, nothing is announced).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
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
    Exhausted(Ipv4Net),
    #[error("the requested address {ip} is not in the load-balancer pool {pool}")]
    NotInPool { ip: Ipv4Addr, pool: Ipv4Net },
    #[error("the requested address {ip} is already used by {by}")]
    Taken { ip: Ipv4Addr, by: String },
}

/// Which Service holds which address of the pool.
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: Ipv4Net,
    by_ip: BTreeMap<Ipv4Addr, String>,
    by_service: BTreeMap<String, Ipv4Addr>,
}

impl Pool {
    pub fn new(cidr: Ipv4Net) -> Pool {
        Pool {
            cidr: cidr.trunc(),
            by_ip: BTreeMap::new(),
            by_service: BTreeMap::new(),
        }
    }

    /// Usable addresses: all of a /31 or /32, else all but the network and broadcast ones.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip)
            && (self.cidr.prefix_len() >= 31
                || (ip != self.cidr.network() && ip != self.cidr.broadcast()))
    }

    /// Takes over an address a Service's status already shows (a restart): true when it is
    /// the Service's now, false when it is outside the pool or someone else's.
    pub fn restore(&mut self, service: &str, ip: Ipv4Addr) -> bool {
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
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
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
            None => self
                .cidr
                .hosts()
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

    pub fn get(&self, service: &str) -> Option<Ipv4Addr> {
        self.by_service.get(service).copied()
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.usable(ip)
    }
}

/// A Service this controller serves: type LoadBalancer, no `loadBalancerClass`.
pub fn wants_address(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|s| {
            s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
        })
}

/// The IPv4 addresses of `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn requested(svc: &Service) -> Result<Option<Ipv4Addr>, String> {
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("spec.loadBalancerIP {s:?} is not an IPv4 address")),
    }
}

/// Where the addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--load-balancer-pool`: one address per Service (MetalLB, kube-router).
    Pool(Ipv4Net),
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
    pool: Arc<Mutex<Option<Pool>>>,
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

    fn cidr(&self) -> Ipv4Net {
        match self.source {
            Source::Pool(c) => c,
            // Never used in this mode; an empty range.
            Source::NodeAddresses => Ipv4Net::default(),
        }
    }

    /// The pool, rebuilt from the statuses the first time (oldest Service first, so of two
    /// that show the same address the older keeps it).
    fn with_pool<T>(&self, f: impl FnOnce(&mut Pool) -> T) -> T {
        let mut guard = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let pool = guard.get_or_insert_with(|| {
            let mut pool = Pool::new(self.cidr());
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
                for ip in ingress_ips(s) {
                    if pool.restore(&key, ip) {
                        tracing::info!(service = %key, %ip, "kept the load-balancer address");
                        break;
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
                && ingress_ips(&s).iter().any(|ip| self.cidr().contains(ip))
            {
                self.write_status(&s, &[]).await?;
            }
            return Ok(None);
        };
        let ip = match requested(&svc) {
            Err(why) => Err(why),
            Ok(req) => self
                .with_pool(|p| p.allocate(key, req))
                .map_err(|e| e.to_string()),
        };
        match ip {
            Ok(ip) => {
                if ingress_ips(&svc) != [ip] {
                    self.write_status(&svc, &[ip]).await?;
                    tracing::info!(service = %key, %ip, "load-balancer address");
                }
                Ok(None)
            }
            Err(why) => {
                tracing::warn!(service = %key, %why, "no load-balancer address");
                self.event(&svc, "AllocationFailed", &why).await;
                // Retried when an address is released, and now and then anyway.
                Ok(Some(Duration::from_secs(60)))
            }
        }
    }

    /// Services still waiting for an address get another go.
    fn requeue_waiting(&self) {
        for s in self.services.state() {
            if wants_address(&s) && ingress_ips(&s).is_empty() {
                self.queue.add(owner::key(&s.metadata));
            }
        }
    }

    /// k3s' ServiceLB: the ingress is every node's InternalIP, looked at again every 30 s
    /// (nodes come and go without touching the Service).
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
        let mut ips: Vec<Ipv4Addr> = nodes
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter_map(|n| {
                n.status
                    .as_ref()?
                    .addresses
                    .as_ref()?
                    .iter()
                    .find(|a| a.type_ == "InternalIP")?
                    .address
                    .parse()
                    .ok()
            })
            .collect();
        ips.sort();
        ips.dedup();
        if ingress_ips(&svc) != ips {
            self.write_status(&svc, &ips).await?;
            tracing::info!(service = %key, ?ips, "load-balancer addresses: the nodes'");
        }
        Ok(Some(Duration::from_secs(30)))
    }

    async fn write_status(&self, svc: &Service, ips: &[Ipv4Addr]) -> Result<(), SyncError> {
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

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pool(cidr: &str) -> Pool {
        Pool::new(cidr.parse().unwrap())
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
