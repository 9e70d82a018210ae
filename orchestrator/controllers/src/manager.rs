//! Wiring: one watch per kind, shared by the controllers that read it, and the workers.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::sync::watch;
use trellis_api::cluster::leader::LeaderElection;
use trellis_daemon::{Health, Metrics};

use crate::informer::Informer;
use crate::{ALL, Config, Ctx, Error, deployment, endpointslice, replicaset, spawn_workers};

/// Runs the controllers `config` names until `stop` resolves (no leader election: the
/// caller decides when this instance may act).
pub async fn run_controllers(
    config: &Config,
    client: kube::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    for c in &config.controllers {
        if !ALL.contains(&c.as_str()) {
            return Err(Error::UnknownController(c.clone()));
        }
    }
    let ctx = Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let pods: Informer<Pod> = Informer::new();
    let rss: Informer<ReplicaSet> = Informer::new();
    let rcs: Informer<ReplicationController> = Informer::new();
    let deps: Informer<Deployment> = Informer::new();
    let services: Informer<Service> = Informer::new();
    let slices: Informer<EndpointSlice> = Informer::new();
    let mut svc_handlers = Vec::new();
    let mut slice_handlers = Vec::new();
    let mut pod_handlers = Vec::new();
    let mut rs_handlers = Vec::new();
    let mut rc_handlers = Vec::new();
    let mut dep_handlers = Vec::new();
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    let w = config.workers;

    if config.runs("replicaset") {
        let c = replicaset::Controller::<ReplicaSet>::new(ctx.clone(), rss.clone(), pods.clone());
        pod_handlers.push(c.pod_handler());
        rs_handlers.push(crate::informer::handler(c.set_handler()));
        queues.push(c.queue.clone());
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "replicaset",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("replicationcontroller") {
        let c = replicaset::Controller::<ReplicationController>::new(
            ctx.clone(),
            rcs.clone(),
            pods.clone(),
        );
        pod_handlers.push(c.pod_handler());
        rc_handlers.push(crate::informer::handler(c.set_handler()));
        queues.push(c.queue.clone());
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "replicationcontroller",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("deployment") {
        let c = deployment::Controller::new(ctx.clone(), deps.clone(), rss.clone(), pods.clone());
        dep_handlers.push(c.deployment_handler());
        rs_handlers.push(c.set_handler());
        pod_handlers.push(c.pod_handler());
        queues.push(c.queue.clone());
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "deployment",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }

    if config.runs("endpointslice") || config.runs("endpoints") {
        let mut c = endpointslice::Controller::new(
            ctx.clone(),
            services.clone(),
            pods.clone(),
            slices.clone(),
        );
        c.slices_on = config.runs("endpointslice");
        c.endpoints_on = config.runs("endpoints");
        svc_handlers.push(c.service_handler());
        slice_handlers.push(c.slice_handler());
        pod_handlers.push(c.pod_handler());
        queues.push(c.queue.clone());
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "endpointslice",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    let lb_source = match config.load_balancer_pool {
        Some(cidr) => Some(crate::loadbalancer::Source::Pool(cidr)),
        None => config
            .load_balancer_node_addresses
            .then_some(crate::loadbalancer::Source::NodeAddresses),
    };
    if config.runs("service-lb")
        && let Some(source) = lb_source
    {
        let c = crate::loadbalancer::Controller::new(ctx.clone(), services.clone(), source);
        svc_handlers.push(c.service_handler());
        queues.push(c.queue.clone());
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "service-lb",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("kubernetes-service") && !config.apiserver_addresses.is_empty() {
        tasks.push(tokio::spawn(endpointslice::kubernetes_service(
            ctx.clone(),
            config.apiserver_addresses.clone(),
            config.kubernetes_service_ip,
            std::time::Duration::from_secs(10),
        )));
    }

    let nodes: Informer<Node> = Informer::new();
    let mut node_handlers = Vec::new();
    if config.runs("daemonset") {
        let dss: Informer<DaemonSet> = Informer::new();
        let c = crate::daemonset::Controller::new(
            ctx.clone(),
            dss.clone(),
            nodes.clone(),
            pods.clone(),
        );
        node_handlers.push(c.node_handler());
        pod_handlers.push(c.pod_handler());
        queues.push(c.queue.clone());
        tasks.extend(dss.start(
            Api::all(client.clone()),
            vec![c.set_handler()],
            stop_rx.clone(),
        ));
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "daemonset",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("serviceaccount") {
        let namespaces: Informer<k8s_openapi::api::core::v1::Namespace> = Informer::new();
        let accounts: Informer<k8s_openapi::api::core::v1::ServiceAccount> = Informer::new();
        let c = crate::serviceaccount::Controller::new(
            ctx.clone(),
            namespaces.clone(),
            accounts.clone(),
        );
        queues.push(c.queue.clone());
        tasks.extend(namespaces.start(
            Api::all(client.clone()),
            vec![c.namespace_handler()],
            stop_rx.clone(),
        ));
        tasks.extend(accounts.start(
            Api::all(client.clone()),
            vec![c.account_handler()],
            stop_rx.clone(),
        ));
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "serviceaccount",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("job") {
        let jobs: Informer<k8s_openapi::api::batch::v1::Job> = Informer::new();
        let c = crate::job::Controller::new(
            ctx.clone(),
            jobs.clone(),
            pods.clone(),
            config.job_backoff_base,
        );
        pod_handlers.push(c.pod_handler());
        queues.push(c.queue.clone());
        tasks.extend(jobs.start(
            Api::all(client.clone()),
            vec![c.job_handler()],
            stop_rx.clone(),
        ));
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "job",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("statefulset") {
        let sets: Informer<k8s_openapi::api::apps::v1::StatefulSet> = Informer::new();
        let revisions: Informer<k8s_openapi::api::apps::v1::ControllerRevision> = Informer::new();
        let c = crate::statefulset::Controller::new(
            ctx.clone(),
            sets.clone(),
            pods.clone(),
            revisions.clone(),
        );
        pod_handlers.push(c.pod_handler());
        queues.push(c.queue.clone());
        tasks.extend(sets.start(
            Api::all(client.clone()),
            vec![c.set_handler()],
            stop_rx.clone(),
        ));
        tasks.extend(revisions.start(Api::all(client.clone()), Vec::new(), stop_rx.clone()));
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "statefulset",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("cronjob") {
        let cronjobs: Informer<k8s_openapi::api::batch::v1::CronJob> = Informer::new();
        let jobs: Informer<k8s_openapi::api::batch::v1::Job> = Informer::new();
        let c = crate::cronjob::Controller::new(
            ctx.clone(),
            cronjobs.clone(),
            jobs.clone(),
            config.cronjob_clock,
        );
        queues.push(c.queue.clone());
        tasks.extend(cronjobs.start(
            Api::all(client.clone()),
            vec![c.cronjob_handler()],
            stop_rx.clone(),
        ));
        tasks.extend(jobs.start(
            Api::all(client.clone()),
            vec![c.job_handler()],
            stop_rx.clone(),
        ));
        let cc = c.clone();
        tasks.extend(spawn_workers(
            "cronjob",
            c.queue.clone(),
            w,
            metrics.clone(),
            move |k| {
                let cc = cc.clone();
                async move { cc.sync(&k).await }
            },
        ));
    }
    if config.runs("nodelifecycle") {
        let leases: Informer<Lease> = Informer::new();
        tasks.extend(leases.start(
            Api::namespaced(client.clone(), "kube-node-lease"),
            Vec::new(),
            stop_rx.clone(),
        ));
        // The pod cache is needed for evictions even when no other controller reads it.
        pod_handlers.push(crate::informer::handler(|_| {}));
        tasks.push(tokio::spawn(crate::nodelifecycle::run(
            ctx.clone(),
            nodes.clone(),
            leases,
            pods.clone(),
            crate::nodelifecycle::Settings {
                grace: config.node_monitor_grace_period,
                period: config.node_monitor_period,
            },
            stop_rx.clone(),
        )));
    }
    if config.runs("garbagecollector") {
        tasks.push(tokio::spawn(crate::gc::run(ctx.clone(), stop_rx.clone())));
    }

    if config.runs("nodelifecycle") || config.runs("daemonset") {
        tasks.extend(nodes.start(Api::all(client.clone()), node_handlers, stop_rx.clone()));
    }

    // Start the watches that someone reads.
    if !svc_handlers.is_empty() {
        tasks.extend(services.start(Api::all(client.clone()), svc_handlers, stop_rx.clone()));
    }
    if !slice_handlers.is_empty() {
        tasks.extend(slices.start(Api::all(client.clone()), slice_handlers, stop_rx.clone()));
    }
    if !pod_handlers.is_empty() {
        tasks.extend(pods.start(Api::all(client.clone()), pod_handlers, stop_rx.clone()));
    }
    if !rs_handlers.is_empty() {
        tasks.extend(rss.start(Api::all(client.clone()), rs_handlers, stop_rx.clone()));
    }
    if !rc_handlers.is_empty() {
        tasks.extend(rcs.start(Api::all(client.clone()), rc_handlers, stop_rx.clone()));
    }
    if !dep_handlers.is_empty() {
        tasks.extend(deps.start(Api::all(client.clone()), dep_handlers, stop_rx.clone()));
    }
    // From here on, dropping this future (leadership lost) stops every task at once.
    let guard = Running {
        tasks,
        queues,
        stop: stop_tx,
    };
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
