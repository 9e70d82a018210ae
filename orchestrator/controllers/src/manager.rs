//! Wiring: one watch per kind, shared by the controllers that read it, and the workers.

use std::any::{Any, TypeId};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ReplicationController;
use kube::Api;
use tokio::sync::watch;
use trellis_api::cluster::leader::LeaderElection;
use trellis_daemon::{Health, Metrics};

use crate::controller::Reconciler;
use crate::informer::{Handler, Informer, Kind};
use crate::{
    Config, Ctx, Error, cronjob, daemonset, deployment, endpointslice, job, replicaset,
    serviceaccount, spawn_workers, statefulset,
};

/// The watches of one manager: one cache per kind, however many controllers read it, and the
/// handlers each controller adds. A watch starts (in [`Manager::start`]) when someone asked for
/// its cache or added a handler to it.
pub struct Watches {
    client: kube::Client,
    kinds: Vec<(TypeId, Box<dyn PendingWatch>)>,
}

/// A watch not started yet, whatever its kind.
trait PendingWatch: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>>;
}

struct Pending<K: Kind> {
    cache: Informer<K>,
    api: Api<K>,
    handlers: Vec<Handler<K>>,
}

impl<K: Kind> PendingWatch for Pending<K> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
        self.cache.start(self.api, self.handlers, stop)
    }
}

impl Watches {
    fn pending<K: Kind>(&mut self, api: impl FnOnce() -> Api<K>) -> &mut Pending<K> {
        let id = TypeId::of::<K>();
        let at = match self.kinds.iter().position(|(k, _)| *k == id) {
            Some(at) => at,
            None => {
                let p: Pending<K> = Pending {
                    cache: Informer::new(),
                    api: api(),
                    handlers: Vec::new(),
                };
                self.kinds.push((id, Box::new(p)));
                self.kinds.len() - 1
            }
        };
        self.kinds[at]
            .1
            .as_any()
            .downcast_mut::<Pending<K>>()
            .expect("a watch is filed under its own kind")
    }

    /// The shared cache of `K` across the cluster.
    pub fn cache<K: Kind>(&mut self) -> Informer<K> {
        let client = self.client.clone();
        self.pending(|| Api::all(client)).cache.clone()
    }

    /// The shared cache of `K` watched through `api` (a namespace's), if nobody asked for `K`
    /// before.
    pub fn cache_of<K: Kind>(&mut self, api: Api<K>) -> Informer<K> {
        self.pending(|| api).cache.clone()
    }

    /// Adds a handler to the watch of `K`.
    pub fn on<K: Kind>(&mut self, handler: Handler<K>) {
        let client = self.client.clone();
        self.pending(|| Api::all(client)).handlers.push(handler);
    }
}

/// Builds the running controllers: the shared watches, the controllers registered on them and
/// their workers, the other tasks.
pub struct Manager {
    pub ctx: Ctx,
    pub watches: Watches,
    workers: usize,
    stop: watch::Receiver<bool>,
    queues: Vec<crate::WorkQueue>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Manager {
    pub fn new(ctx: Ctx, workers: usize, stop: watch::Receiver<bool>) -> Manager {
        Manager {
            watches: Watches {
                client: ctx.client.clone(),
                kinds: Vec::new(),
            },
            ctx,
            workers,
            stop,
            queues: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// The shared cache of `K` (see [`Watches::cache`]).
    pub fn cache<K: Kind>(&mut self) -> Informer<K> {
        self.watches.cache()
    }

    /// Runs `c`: its handlers on the shared watches, its workers on its queue (each sync only
    /// once the caches it reads are complete), its queue shut down with the rest.
    pub fn register<C: Reconciler>(&mut self, c: C) {
        c.handlers(&mut self.watches);
        let queue = c.queue().clone();
        self.queues.push(queue.clone());
        let caches = c.caches();
        let name = c.name();
        self.tasks.extend(spawn_workers(
            name,
            queue,
            self.workers,
            self.ctx.metrics.clone(),
            move |key| {
                let (c, caches) = (c.clone(), caches.clone());
                async move {
                    for cache in &caches {
                        cache.wait().await;
                    }
                    c.sync(&key).await
                }
            },
        ));
    }

    /// Runs a task that is no queue-driven controller; it is aborted with the rest.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Turns true when the controllers stop (for tasks that end cleanly).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Starts every watch someone reads; the result stops everything when dropped.
    fn start(self, stop: watch::Sender<bool>) -> Running {
        let mut tasks = self.tasks;
        for (_, w) in self.watches.kinds {
            tasks.extend(w.start(self.stop.clone()));
        }
        Running {
            tasks,
            queues: self.queues,
            stop,
        }
    }
}

/// Runs the controllers `config` names until `stop` resolves (no leader election: the
/// caller decides when this instance may act).
pub async fn run_controllers(
    config: &Config,
    client: kube::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.check()?;
    let ctx = Ctx { client, metrics };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut m = Manager::new(ctx.clone(), config.workers, stop_rx);

    if config.runs("replicaset") {
        let c = replicaset::Controller::<ReplicaSet>::new(ctx.clone(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("replicationcontroller") {
        let c =
            replicaset::Controller::<ReplicationController>::new(ctx.clone(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("deployment") {
        let c = deployment::Controller::new(ctx.clone(), m.cache(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("endpointslice") || config.runs("endpoints") {
        let mut c = endpointslice::Controller::new(ctx.clone(), m.cache(), m.cache(), m.cache());
        c.slices_on = config.runs("endpointslice");
        c.endpoints_on = config.runs("endpoints");
        m.register(c);
    }
    if config.runs("daemonset") {
        let c = daemonset::Controller::new(ctx.clone(), m.cache(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("serviceaccount") {
        let c = serviceaccount::Controller::new(ctx.clone(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("serviceaccount-token") {
        match &config.service_account_key {
            Some(key) => {
                let c = crate::tokens::Controller::new(
                    ctx.clone(),
                    m.cache(),
                    m.cache(),
                    key.clone(),
                    config.root_ca.clone(),
                );
                m.register(c);
            }
            None => tracing::warn!(
                "no --service-account-private-key-file: the serviceaccount-token controller does not run"
            ),
        }
    }
    if config.runs("root-ca-cert-publisher") {
        match &config.root_ca {
            Some(ca) => {
                let c =
                    crate::rootca::Controller::new(ctx.clone(), m.cache(), m.cache(), ca.clone());
                m.register(c);
            }
            None => tracing::warn!(
                "no cluster CA (--root-ca-file, or the kubeconfig's): the root-ca-cert-publisher does not run"
            ),
        }
    }
    if config.runs("job") {
        let c = job::Controller::new(ctx.clone(), m.cache(), m.cache(), config.job_backoff_base);
        m.register(c);
    }
    if config.runs("statefulset") {
        let c = statefulset::Controller::new(ctx.clone(), m.cache(), m.cache(), m.cache());
        m.register(c);
    }
    if config.runs("cronjob") {
        let c = cronjob::Controller::new(ctx.clone(), m.cache(), m.cache(), config.cronjob_clock);
        m.register(c);
    }
    if config.runs("horizontalpodautoscaling") {
        let c = crate::hpa::Controller::new(ctx.clone(), m.cache(), m.cache(), config.hpa);
        m.register(c);
    }
    let lb_source = match (config.load_balancer_pool, config.load_balancer_pool_v6) {
        (None, None) => config
            .load_balancer_node_addresses
            .then_some(crate::loadbalancer::Source::NodeAddresses),
        (v4, v6) => Some(crate::loadbalancer::Source::Pool { v4, v6 }),
    };
    if config.runs("service-lb")
        && let Some(source) = lb_source
    {
        let c = crate::loadbalancer::Controller::new(ctx.clone(), m.cache(), source);
        m.register(c);
    }
    if config.runs("nodelifecycle") {
        let leases: Informer<Lease> = m
            .watches
            .cache_of(Api::namespaced(ctx.client.clone(), "kube-node-lease"));
        let (nodes, pods) = (m.cache(), m.cache());
        let stop = m.stop_signal();
        m.spawn(crate::nodelifecycle::run(
            ctx.clone(),
            nodes,
            leases,
            pods,
            crate::nodelifecycle::Settings {
                grace: config.node_monitor_grace_period,
                period: config.node_monitor_period,
            },
            stop,
        ));
    }
    if config.runs("garbagecollector") {
        let stop = m.stop_signal();
        m.spawn(crate::gc::run(ctx.clone(), stop));
    }

    // From here on, dropping this future (leadership lost) stops every task at once.
    let guard = m.start(stop_tx);
    health.set_ready();
    tracing::info!(controllers = ?config.controllers, "controllers running");
    stop.await;
    tracing::info!("stopping controllers");
    drop(guard);
    Ok(())
}

/// The controllers' tasks: stopped when this is dropped, however that happens.
struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    queues: Vec<crate::WorkQueue>,
    stop: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for q in &self.queues {
            q.shut_down();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs the controller-manager until `stop` resolves: health and metrics, then the
/// controllers (inside leader election when configured).
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    // A wrong controller name fails at start, not once this instance leads.
    config.check()?;
    let client = trellis_api::cluster::client(config.kubeconfig.as_deref())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    let health = Arc::new(Health::default());
    health.set_not_ready("not leading yet");
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
    let r = if config.leader_elect {
        let identity = config
            .identity
            .clone()
            .unwrap_or_else(trellis_api::cluster::leader::default_identity);
        metrics.set(
            "trellis_controller_manager_leader",
            "1 while this instance leads (holds the kube-controller-manager Lease).",
            &[],
            0.0,
        );
        let mut le = LeaderElection::new("kube-controller-manager", &identity);
        (le.lease_duration, le.renew_deadline, le.retry_period) = config.leader_timers;
        let leading = metrics.clone();
        let result = le
            .run(client.clone(), stop, || async move {
                leading.set(
                    "trellis_controller_manager_leader",
                    "1 while this instance leads (holds the kube-controller-manager Lease).",
                    &[],
                    1.0,
                );
                let r = run_controllers(
                    &config,
                    client,
                    leading.clone(),
                    health,
                    std::future::pending::<()>(),
                )
                .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "the controllers stopped");
                }
            })
            .await;
        metrics.set(
            "trellis_controller_manager_leader",
            "1 while this instance leads (holds the kube-controller-manager Lease).",
            &[],
            0.0,
        );
        result.map_err(|e| Error::Leader(e.to_string()))
    } else {
        run_controllers(&config, client, metrics, health, stop).await
    };
    let _ = stop_http_tx.send(());
    r
}
