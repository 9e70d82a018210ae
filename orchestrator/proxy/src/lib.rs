//! The service proxy (`trellis proxy`): on every node, Services and EndpointSlices from the
//! API become NAT rules (ClusterIP, NodePort, the traffic policies, session affinity,
//! hairpin, LoadBalancer addresses), and service ports without endpoints are rejected. Two
//! backends: iptables ([`rules`], [`sync`]; kube-proxy's layout) and nftables ([`nft`]; verdict
//! maps, so a change costs the kernel what changed, not the whole table). LoadBalancer Services
//! with externalTrafficPolicy Local get their health-check node port served ([`healthcheck`]).
//!
//! Syncs are batched and rate-limited: a burst of changes waits `min_sync_period` after the
//! previous sync and then goes to the kernel as one transaction of only what changed (one
//! `iptables-restore --noflush`, or one batch through a long-lived `nft -i`). Every `resync`
//! the whole state is written again, which repairs rules someone else removed.
//!
//! UDP and conntrack: these kernels have no conntrack netlink, so the proxy cannot delete the
//! conntrack entries of an endpoint that went away (kube-proxy runs `conntrack -D`). A UDP flow
//! already NATed to a removed endpoint keeps going there until its entry expires: 30 s after
//! its last packet (`nf_conntrack_udp_timeout`), 120 s for a flow seen both ways
//! (`nf_conntrack_udp_timeout_stream`), refreshed by every packet. A client that keeps sending
//! to the service with the same source port therefore keeps talking to the gone endpoint; new
//! flows (a new source port) reach the new endpoints at once. TCP is unaffected: a removed
//! endpoint answers with a reset or the flow times out, and the client reconnects.

#[cfg(test)]
mod fixtures;
pub mod healthcheck;
pub mod model;
pub mod nft;
pub mod rules;
pub mod sync;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::sync::Notify;
use trellis_api::cluster::reflect;
use trellis_daemon::{Health, Metrics};
use trellis_net::iptables::{IpFamily, Iptables};

pub use model::Family;
pub use rules::NodeRules;
pub use sync::Syncer;

/// Which kernel interface the rules go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// iptables chains (legacy or nf_tables, as the host uses).
    Iptables,
    /// nftables tables with verdict maps (the default: a change costs what changed, at any
    /// size).
    #[default]
    Nftables,
}

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// This node's name: endpoints with this nodeName are local.
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    /// The pod networks, at most one per family: traffic from outside them to a cluster IP
    /// is masqueraded (empty: never).
    pub cluster_cidrs: Vec<IpNet>,
    /// Addresses node ports answer on, of either family (empty: every local address of the
    /// family).
    pub node_addresses: Vec<IpAddr>,
    /// The least time between two syncs (changes in between are batched).
    pub min_sync_period: Duration,
    /// Full rewrite period.
    pub resync: Duration,
    pub listen: Option<SocketAddr>,
}

impl Config {
    pub fn new(node: impl Into<String>) -> Config {
        Config {
            backend: Backend::default(),
            node: node.into(),
            kubeconfig: None,
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a valid default")],
            node_addresses: Vec::new(),
            min_sync_period: Duration::from_millis(100),
            resync: Duration::from_secs(60),
            listen: None,
        }
    }
}

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube client: {0}")]
    Client(String),
    #[error("iptables: {0}")]
    Iptables(#[from] trellis_net::Error),
    #[error("sync: {0}")]
    Sync(#[from] sync::SyncError),
    #[error("sync: {0}")]
    NftSync(#[from] nft::SyncError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Enables `bridge-nf-call-iptables` where the kernel has it per namespace: replies of a
/// backend to a client on the same bridge must pass conntrack to be un-NATed.
fn bridge_netfilter() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::path::Path::new(path).exists()
        && let Err(e) = std::fs::write(path, "1")
    {
        tracing::warn!(error = %e, "could not enable bridge-nf-call-iptables");
    }
}

/// Runs the proxy until `stop` resolves. The rules stay in place on shutdown, so traffic
/// keeps flowing while the proxy restarts.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let kube = trellis_api::cluster::client(config.kubeconfig.as_deref())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    let health = Arc::new(Health::default());
    health.set_not_ready("waiting for the first sync");
    let metrics = Arc::new(Metrics::default());
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.listen {
        let bound = trellis_daemon::serve(addr, health.clone(), metrics.clone(), async move {
            let _ = stop_http_rx.await;
        })
        .await
        .map_err(|source| Error::Listen { addr, source })?;
        tracing::info!(%bound, "health and metrics");
    }
    bridge_netfilter();
    let node_v4 = node_rules(&config, Family::V4);
    let node_v6 = node_rules(&config, Family::V6);
    let mut dataplane = Dataplane::start(config.backend).await?;

    let changed = Arc::new(Notify::new());
    let services = reflect(Api::<Service>::all(kube.clone()), changed.clone());
    let slices = reflect(Api::<EndpointSlice>::all(kube), changed.clone());

    tokio::pin!(stop);
    // The first sync waits for both lists: syncing an empty view would drop every rule.
    tokio::select! {
        _ = &mut stop => { let _ = stop_http_tx.send(()); return Ok(()); }
        r = async { tokio::join!(services.wait_until_ready(), slices.wait_until_ready()) } => {
            if r.0.is_err() || r.1.is_err() {
                return Err(Error::Client("watch ended before its first list".into()));
            }
        }
    }
    let mut last_full = Instant::now();
    let mut last_sync: Option<Instant> = None;
    let mut first = true;
    let mut failures: u32 = 0;
    let mut health_checks = healthcheck::HealthChecks::default();
    let mut fallbacks_seen: u64 = 0;
    let mut v6_failures_seen: u64 = 0;
    loop {
        if !first {
            let resync_in = config.resync.saturating_sub(last_full.elapsed());
            tokio::select! {
                _ = &mut stop => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(resync_in) => {
                    dataplane.invalidate();
                }
            }
            // Rate limit: batch whatever arrives until min_sync_period after the last sync.
            if let Some(t) = last_sync {
                // After failures, back off exponentially (at most 30 s): no tight error loop.
                let period = if failures == 0 {
                    config.min_sync_period
                } else {
                    (config.min_sync_period.max(Duration::from_millis(100))
                        * 2u32.saturating_pow(failures.min(10)))
                    .min(Duration::from_secs(30))
                };
                let wait = period.saturating_sub(t.elapsed());
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        first = false;
        let started = Instant::now();
        let svc = services.state();
        let eps = slices.state();
        let ports = model::service_ports(
            svc.iter().map(|s| s.as_ref()),
            eps.iter().map(|s| s.as_ref()),
            &config.node,
            Family::V4,
        );
        let ports_v6 = model::service_ports(
            svc.iter().map(|s| s.as_ref()),
            eps.iter().map(|s| s.as_ref()),
            &config.node,
            Family::V6,
        );
        // One health check per Service: its IPv4 ports' local endpoints, else its IPv6 ones'.
        let mut checked = ports.clone();
        checked.extend(ports_v6.iter().cloned());
        health_checks.update(healthcheck::wanted(&checked)).await;
        let full = syncer_is_full(&last_full, config.resync);
        if full {
            dataplane.invalidate();
            last_full = Instant::now();
        }
        let result = dataplane
            .sync((&ports, &node_v4), (&ports_v6, &node_v6))
            .await;
        if let Some(n) = dataplane.nft_fallbacks() {
            metrics.inc(
                "trellis_proxy_nft_fallbacks_total",
                "Changes written by a one-shot nft because the long-lived one broke.",
                &[],
                n.saturating_sub(fallbacks_seen) as f64,
            );
            fallbacks_seen = n;
        }
        if let Some((failures_total, error)) = dataplane.take_v6_failure() {
            // IPv4 was written without it (see nft::Syncer::sync); IPv6 is tried again later.
            metrics.inc(
                "trellis_proxy_nft_ipv6_failures_total",
                "Syncs whose IPv6 tables nft refused; their IPv4 tables were written alone.",
                &[],
                failures_total.saturating_sub(v6_failures_seen) as f64,
            );
            v6_failures_seen = failures_total;
            tracing::warn!(%error, "writing the IPv6 service rules failed; IPv4 ones written alone");
        }
        match result {
            Ok(stats) => {
                let secs = started.elapsed().as_secs_f64();
                metrics.observe(
                    "trellis_proxy_sync_duration_seconds",
                    "Time from reading the state to the restore's end, per sync.",
                    &[],
                    secs,
                );
                metrics.inc(
                    "trellis_proxy_syncs_total",
                    "Syncs, by result.",
                    &[("result", "ok")],
                    1.0,
                );
                metrics.set(
                    "trellis_proxy_rules",
                    "Rules in the proxy's chains.",
                    &[],
                    stats.rules_total as f64,
                );
                metrics.set(
                    "trellis_proxy_service_ports",
                    "Service ports the proxy serves.",
                    &[],
                    (ports.len() + ports_v6.len()) as f64,
                );
                metrics.inc(
                    "trellis_proxy_chains_written_total",
                    "Chains written by restores (only changed ones).",
                    &[],
                    stats.chains_written as f64,
                );
                tracing::debug!(?stats, secs, "synced");
                failures = 0;
                health.set_ready();
            }
            Err(e) => {
                metrics.inc(
                    "trellis_proxy_syncs_total",
                    "Syncs, by result.",
                    &[("result", "error")],
                    1.0,
                );
                failures = failures.saturating_add(1);
                tracing::error!(error = %e, failures, "sync failed; the next one rewrites everything");
                // Retry after the rate limit even without a new event.
                changed.notify_one();
            }
        }
        last_sync = Some(Instant::now());
    }
    tracing::info!("stopping; the rules stay in place");
    let _ = stop_http_tx.send(());
    Ok(())
}

/// What the proxy knows about its node, for the rules of `family`.
fn node_rules(config: &Config, family: Family) -> NodeRules {
    NodeRules {
        cluster_cidr: config
            .cluster_cidrs
            .iter()
            .copied()
            .find(|c| Family::of(c.network()) == family),
        node_addresses: config
            .node_addresses
            .iter()
            .copied()
            .filter(|a| Family::of(*a) == family)
            .collect(),
    }
}

fn syncer_is_full(last_full: &Instant, resync: Duration) -> bool {
    last_full.elapsed() >= resync
}

/// The syncer of the chosen backend (the nftables one boxed: it carries its shards' state and
/// a writer session, and lives once per daemon).
enum Dataplane {
    /// iptables for IPv4, ip6tables for IPv6 (None: the host has no usable ip6tables, and
    /// IPv6 service ports are not served; said in the log).
    Iptables(Syncer, Option<Syncer>),
    /// `ip` tables for IPv4, `ip6` tables of the same names for IPv6 (IPv4 only on a host
    /// without IPv6; said in the log).
    Nftables(Box<nft::Syncer>),
}

impl Dataplane {
    /// Starts the backend, after removing what the other backend left (both are ours; two
    /// sets of service rules would fight over every packet).
    async fn start(backend: Backend) -> Result<Dataplane, Error> {
        let nft = trellis_net::nft::Nft::new(None);
        match backend {
            Backend::Iptables => {
                if has_nft_tables(&nft).await {
                    tracing::info!(table = nft::TABLE, "removing the nftables backend's tables");
                    nft_syncer(nft).cleanup().await?;
                }
                let ipt = Iptables::detect(None, IpFamily::V4).await?;
                tracing::info!(backend = ?ipt.backend, "iptables");
                let v6 = match Iptables::detect(None, IpFamily::V6).await {
                    Ok(ip6t) => Some(Syncer::new(ip6t)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no usable ip6tables: IPv6 service ports are not served");
                        None
                    }
                };
                Ok(Dataplane::Iptables(Syncer::new(ipt), v6))
            }
            Backend::Nftables => {
                match Iptables::detect(None, IpFamily::V4).await {
                    Ok(ipt) => {
                        if let Err(e) = Syncer::new(ipt).cleanup().await {
                            tracing::warn!(error = %e, "could not remove the iptables backend's chains");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "no iptables to clean up"),
                }
                tracing::info!(table = nft::TABLE, "nftables");
                if let Ok(ip6t) = Iptables::detect(None, IpFamily::V6).await
                    && let Err(e) = Syncer::new(ip6t).cleanup().await
                {
                    tracing::warn!(error = %e, "could not remove the iptables backend's IPv6 chains");
                }
                let syncer = nft_syncer(nft);
                if syncer.families().len() < 2 {
                    tracing::warn!("no IPv6 on this host: IPv6 service ports are not served");
                }
                Ok(Dataplane::Nftables(Box::new(syncer)))
            }
        }
    }

    /// The nftables backend's one-shot fallbacks so far (None with iptables).
    fn nft_fallbacks(&self) -> Option<u64> {
        match self {
            Dataplane::Iptables(..) => None,
            Dataplane::Nftables(s) => Some(s.fallbacks()),
        }
    }

    /// The nftables backend's IPv6 failures so far and the latest one's error, when one
    /// happened since the last call.
    fn take_v6_failure(&mut self) -> Option<(u64, String)> {
        match self {
            Dataplane::Iptables(..) => None,
            Dataplane::Nftables(s) => {
                let error = s.take_v6_error()?;
                Some((s.v6_failures(), error))
            }
        }
    }

    fn invalidate(&mut self) {
        match self {
            Dataplane::Iptables(s, v6) => {
                s.invalidate();
                if let Some(v6) = v6 {
                    v6.invalidate();
                }
            }
            Dataplane::Nftables(s) => s.invalidate(),
        }
    }

    /// Writes the IPv4 service ports and, where the host can, the IPv6 ones.
    async fn sync(
        &mut self,
        (ports, node): (&[model::ServicePort], &NodeRules),
        (ports_v6, node_v6): (&[model::ServicePort], &NodeRules),
    ) -> Result<sync::SyncStats, Error> {
        Ok(match self {
            Dataplane::Iptables(s, v6) => {
                let mut stats = s.sync(rules::compile(ports, node)).await?;
                if let Some(v6) = v6 {
                    let six = v6.sync(rules::compile(ports_v6, node_v6)).await?;
                    stats.chains_written += six.chains_written;
                    stats.chains_deleted += six.chains_deleted;
                    stats.rules_written += six.rules_written;
                    stats.rules_total += six.rules_total;
                }
                stats
            }
            Dataplane::Nftables(s) => s.sync((ports, node), (ports_v6, node_v6)).await?,
        })
    }
}

/// Whether the nftables backend's main table exists in either family.
async fn has_nft_tables(nft: &trellis_net::nft::Nft) -> bool {
    for family in ["ip", "ip6"] {
        if nft.has_table(family, nft::TABLE).await.unwrap_or(false) {
            return true;
        }
    }
    false
}

/// The nftables syncer for this host: both families, or IPv4 only where the kernel has no
/// IPv6 (no `/proc/sys/net/ipv6`: booted with `ipv6.disable=1` or built without it).
fn nft_syncer(nft: trellis_net::nft::Nft) -> nft::Syncer {
    let syncer = nft::Syncer::new(nft);
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        syncer
    } else {
        syncer.ipv4_only()
    }
}

/// Removes everything the proxy wrote, with either backend (`trellis proxy --cleanup`).
pub async fn cleanup() -> Result<(), Error> {
    let nft = trellis_net::nft::Nft::new(None);
    if has_nft_tables(&nft).await {
        nft_syncer(nft).cleanup().await?;
    }
    let ipt = Iptables::detect(None, IpFamily::V4).await?;
    Syncer::new(ipt).cleanup().await?;
    if let Ok(ip6t) = Iptables::detect(None, IpFamily::V6).await {
        Syncer::new(ip6t).cleanup().await?;
    }
    Ok(())
}
