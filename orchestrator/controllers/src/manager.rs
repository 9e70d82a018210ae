//! Wiring: one watch per kind, shared by the controllers that read it, and the workers.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::sync::watch;
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
        let c = deployment::Controller::new(ctx.clone(), deps.clone(), rss.clone());
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
    if config.runs("kubernetes-service") && !config.apiserver_addresses.is_empty() {
        tasks.push(tokio::spawn(endpointslice::kubernetes_service(
            ctx.clone(),
            config.apiserver_addresses.clone(),
            config.kubernetes_service_ip,
            std::time::Duration::from_secs(10),
        )));
    }

    if config.runs("garbagecollector") {
        tasks.push(tokio::spawn(crate::gc::run(ctx.clone(), stop_rx.clone())));
    }

    // Start the watches that someone reads.
    if !svc_handlers.is_empty() {
        services.start(Api::all(client.clone()), svc_handlers, stop_rx.clone());
    }
    if !slice_handlers.is_empty() {
        slices.start(Api::all(client.clone()), slice_handlers, stop_rx.clone());
    }
    if !pod_handlers.is_empty() {
        pods.start(Api::all(client.clone()), pod_handlers, stop_rx.clone());
    }
    if !rs_handlers.is_empty() {
        rss.start(Api::all(client.clone()), rs_handlers, stop_rx.clone());
    }
    if !rc_handlers.is_empty() {
        rcs.start(Api::all(client.clone()), rc_handlers, stop_rx.clone());
    }
    if !dep_handlers.is_empty() {
        deps.start(Api::all(client.clone()), dep_handlers, stop_rx.clone());
    }
    health.set_ready();
    tracing::info!(controllers = ?config.controllers, "controllers running");
    stop.await;
    tracing::info!("stopping controllers");
    let _ = stop_tx.send(true);
    for q in queues {
        q.shut_down();
    }
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    Ok(())
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
    let r = run_controllers(&config, client, metrics, health, stop).await;
    let _ = stop_http_tx.send(());
    r
}
