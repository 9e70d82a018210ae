//! The controller-manager (`trellis controller-manager`): the controllers that turn what users
//! ask for into pods and endpoints, the way kube-controller-manager does — ReplicaSets and
//! ReplicationControllers ([`replicaset`]), Deployments ([`deployment`]), DaemonSets
//! ([`daemonset`]), StatefulSets ([`statefulset`]), Jobs ([`job`]) and CronJobs
//! ([`cronjob`]), HorizontalPodAutoscalers ([`hpa`]), EndpointSlices and Endpoints ([`endpointslice`]), the garbage collector
//! ([`gc`]), node lifecycle ([`nodelifecycle`]), LoadBalancer addresses from a pool
//! ([`loadbalancer`]), ServiceAccounts ([`serviceaccount`]), legacy token Secrets ([`tokens`])
//! and the `kube-root-ca.crt` ConfigMaps ([`rootca`]).
//!
//! Every controller is level-triggered: watch events only put keys on its queue
//! ([`workqueue`]), and a sync reads the whole current state from the caches, so a restart or
//! a missed event converges to the same result. Controllers that create pods record what they
//! expect to see ([`expectations`]) and do not act again until they have seen it, so a slow
//! watch never makes them create or delete twice.

pub mod controller;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod hpa;
pub mod informer;
pub mod job;
pub mod loadbalancer;
pub mod nodelifecycle;
pub mod owner;
pub mod pods;
pub mod replicaset;
pub mod rootca;
pub mod serviceaccount;
pub mod statefulset;
pub mod tokens;
pub mod workqueue;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use trellis_daemon::Metrics;

pub use workqueue::WorkQueue;

/// The controllers this manager knows, by their upstream names.
pub const ALL: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "horizontalpodautoscaling",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "endpointslice",
    "endpoints",
    "garbagecollector",
    "nodelifecycle",
    "service-lb",
];

/// Controllers that were here once, and what does their work now: asking for one is an error
/// that says so, not a silent no-op.
pub const REMOVED: &[(&str, &str)] = &[(
    "kubernetes-service",
    "the API server keeps default/kubernetes itself (`trellis apiserver \
     --endpoint-reconciler-type lease`, the default, with --advertise-address)",
)];

/// The controllers run unless `--controllers` says otherwise: all but
/// ReplicationController, which our API server does not serve (the controller works against
/// servers that do).
pub const DEFAULT: &[&str] = &[
    "replicaset",
    "deployment",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "horizontalpodautoscaling",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "endpointslice",
    "endpoints",
    "garbagecollector",
    "nodelifecycle",
    "service-lb",
];

/// How the controller-manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: Option<SocketAddr>,
    /// The controllers to run (names from [`ALL`]).
    pub controllers: BTreeSet<String>,
    /// Workers per controller queue.
    pub workers: usize,
    /// A node whose Lease was not renewed for this long is Unknown and tainted unreachable.
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
    /// Where LoadBalancer Services' addresses come from (None: the `service-lb` controller
    /// does nothing, and such Services stay pending as without a cloud provider).
    pub load_balancer_pool: Option<ipnet::Ipv4Net>,
    /// The IPv6 pool, beside or instead of the IPv4 one: IPv6 and dual-stack Services get an
    /// address of it.
    pub load_balancer_pool_v6: Option<ipnet::Ipv6Net>,
    /// Without a pool: LoadBalancer Services' ingress is the nodes' InternalIPs (k3s'
    /// ServiceLB).
    pub load_balancer_node_addresses: bool,
    /// The first back-off of a Job's pods after a failure (upstream: 10 s, doubling).
    pub job_backoff_base: Duration,
    /// Run only while holding the `kube-controller-manager` Lease.
    pub leader_elect: bool,
    /// This candidate's identity in the Lease.
    pub identity: Option<String>,
    /// Leader election timers: lease duration, renew deadline, retry period.
    pub leader_timers: (Duration, Duration, Duration),
    /// The CronJob controller's clock (tests run it faster).
    pub cronjob_clock: cronjob::Clock,
    /// The HPA controller's sync period, default downscale stabilization and tolerance.
    pub hpa: hpa::Settings,
    /// The cluster CA bundle (PEM): published as `kube-root-ca.crt` in every namespace and
    /// written into token Secrets (none: the root CA publisher does not run).
    pub root_ca: Option<String>,
    /// The service-account signing key (none: the token controller does not run).
    pub service_account_key: Option<tokens::SigningKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kubeconfig: None,
            listen: None,
            controllers: DEFAULT.iter().map(|s| s.to_string()).collect(),
            workers: 5,
            node_monitor_grace_period: Duration::from_secs(50),
            node_monitor_period: Duration::from_secs(5),
            load_balancer_pool: None,
            load_balancer_pool_v6: None,
            load_balancer_node_addresses: false,
            job_backoff_base: Duration::from_secs(10),
            leader_elect: true,
            identity: None,
            leader_timers: (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2),
            ),
            cronjob_clock: cronjob::Clock::real(),
            hpa: hpa::Settings::default(),
            root_ca: None,
            service_account_key: None,
        }
    }
}

impl Config {
    pub fn runs(&self, name: &str) -> bool {
        self.controllers.contains(name)
    }

    /// Every controller asked for is one this manager runs; a removed one says what replaced
    /// it.
    pub fn check(&self) -> Result<(), Error> {
        for c in &self.controllers {
            if let Some((name, instead)) = REMOVED.iter().find(|(n, _)| *n == c.as_str()) {
                return Err(Error::RemovedController {
                    name: (*name).to_string(),
                    instead,
                });
            }
            if !ALL.contains(&c.as_str()) {
                return Err(Error::UnknownController(c.clone()));
            }
        }
        Ok(())
    }
}

/// Errors that stop the controller-manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube client: {0}")]
    Client(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("unknown controller {0:?} (known: {known})", known = ALL.join(", "))]
    UnknownController(String),
    /// A controller this manager no longer runs, and what does its work now.
    #[error("controller {name:?} was removed: {instead}")]
    RemovedController { name: String, instead: &'static str },
    #[error("leader election: {0}")]
    Leader(String),
}

/// Why one sync failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// What every controller shares.
#[derive(Clone)]
pub struct Ctx {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
}

/// Runs `workers` workers on `queue` until it is shut down. `sync` says when to look at the
/// key again (Ok(Some)), that it is done (Ok(None)), or fails (retried with back-off).
pub fn spawn_workers<F, Fut>(
    name: &'static str,
    queue: WorkQueue,
    workers: usize,
    metrics: Arc<Metrics>,
    sync: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, SyncError>> + Send + 'static,
{
    (0..workers.max(1))
        .map(|_| {
            let queue = queue.clone();
            let sync = sync.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    let started = std::time::Instant::now();
                    let r = sync(key.clone()).await;
                    metrics.observe(
                        "trellis_controller_sync_duration_seconds",
                        "Time one sync of one key took, by controller.",
                        &[("controller", name)],
                        started.elapsed().as_secs_f64(),
                    );
                    match r {
                        Ok(again) => {
                            queue.forget(&key);
                            if let Some(d) = again {
                                queue.add_after(key.clone(), d);
                            }
                        }
                        Err(e) => {
                            metrics.inc(
                                "trellis_controller_sync_errors_total",
                                "Syncs that failed and were retried, by controller.",
                                &[("controller", name)],
                                1.0,
                            );
                            tracing::warn!(controller = name, %key, error = %e, "sync failed; retrying");
                            queue.add_rate_limited(&key);
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect()
}

pub mod manager;
pub use manager::{Manager, run, run_controllers};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_controller_says_what_replaced_it_and_an_unknown_one_lists_the_known() {
        let with = |names: &[&str]| Config {
            controllers: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(with(DEFAULT).check().is_ok());
        let e = with(&["replicaset", "kubernetes-service"])
            .check()
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::RemovedController { .. }), "{text}");
        assert!(text.contains("--endpoint-reconciler-type lease"), "{text}");
        let e = with(&["replicaset", "nosuch"]).check().unwrap_err();
        assert!(e.to_string().contains("known: replicaset"), "{e}");
    }
}
