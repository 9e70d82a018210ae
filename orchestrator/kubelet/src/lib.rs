//! `trellis kubelet`: the node agent. It registers its Node, renews its Lease, and runs the
//! pods bound to its node: a network namespace each, CNI ADD through the node's conflist, then
//! the containers as processes in that namespace ([`runtime::ProcessRuntime`]).
//!
//! Every pod's state lives on disk under `<root>/pods/<uid>/`, so a restarted kubelet adopts
//! running pods instead of starting them again, and removes what no pod claims.

pub mod attach;
pub mod cgroup;
pub mod containerd;
pub mod exec;
pub mod logfile;
pub mod logs;
pub mod network;
pub mod node;
pub mod pod_workers;
pub mod pods;
pub mod portforward;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod serviceaccount;
pub mod serving;
pub mod shim;
pub mod spdy;
pub mod spdy_conn;
pub mod stats;
pub mod volumes;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use trellis_daemon::{Health, Metrics};

/// What a kubelet needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    /// State: `<root>/pods/<uid>/`.
    pub root_dir: PathBuf,
    /// Where pod network namespaces are bind-mounted.
    pub netns_dir: PathBuf,
    /// Pod namespaces are named `<netns_prefix><uid>`.
    pub netns_prefix: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_cache_dir: PathBuf,
    pub cni_timeout: Duration,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    pub max_pods: u32,
    /// The port published as daemonEndpoints.kubeletEndpoint.
    pub port: u16,
    /// How often each pod is synced at the latest (its worker also wakes on the pod's watch
    /// events, when a container is being created and when a probe is due).
    pub sync_period: Duration,
    /// Pod passes (sandbox, containers, probes, status) running at once, over all pods.
    pub max_parallel_syncs: usize,
    /// First restart delay; doubles per restart up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The binary with the `container-shim` subcommand.
    pub shim: PathBuf,
    /// The API server as the kubelet reaches it (its kubeconfig's server): pods get it in
    /// `KUBERNETES_SERVICE_HOST`/`PORT` when there is no `kubernetes` Service in `default`.
    pub api_endpoint: Option<(String, u16)>,
    /// The cluster CA (PEM), projected into pods as `ca.crt`.
    pub cluster_ca: Option<String>,
    /// Where the HTTPS API listens (logs, stats); None: the node IP, else all addresses.
    pub address: Option<IpAddr>,
    /// The serving certificate and key files; None: self-signed at start.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The CA (PEM) client certificates are checked against; None: the cluster CA.
    pub client_ca: Option<String>,
    /// How containers' logs are rotated (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: logfile::Rotation,
    /// The kubelet's root cgroup (`--cgroup-root`), pods' cgroups below it; None: no cgroups
    /// (`--cgroups-per-qos=false`), limits not enforced and usage read from `/proc`.
    pub cgroups: Option<cgroup::Cgroup>,
    /// What runs the containers.
    pub runtime: RuntimeChoice,
    /// The most processes (threads included) a pod may have, written to `pids.max` of its pod
    /// cgroup and each container's (`--pod-max-pids`); None: unlimited.
    pub pod_max_pids: Option<u64>,
    /// How the kubelet waits for an API server that does not answer at start
    /// (`--api-wait-timeout`).
    pub api_wait: trellis_api::cluster::ApiWait,
    /// Whether a container still being created when its pod's SIGTERM went out gets SIGTERM
    /// once its process exists (upstream's behaviour); false only in tests, as the negative
    /// control: such a container then runs until the grace period's SIGKILL.
    pub late_start_sigterm: bool,
    /// How long a late-started container whose PID 1 is its PID namespace's init (a
    /// containerd container) is given to set a TERM handler before its SIGTERM goes anyway
    /// (`--late-start-term-wait`, 2 s): the kernel drops a signal such an init has no handler
    /// for. Zero: signalled at once, handler or not.
    pub late_start_term_wait: Duration,
    /// How the serving certificate of the HTTPS port is renewed ([`serving`]).
    pub serving: serving::Rotation,
}

/// The container runtime of a kubelet.
#[derive(Debug, Clone, Default)]
pub enum RuntimeChoice {
    /// Host executables as processes ([`runtime::ProcessRuntime`]).
    #[default]
    Process,
    /// OCI images through containerd's API ([`containerd::runtime::ContainerdRuntime`]).
    Containerd {
        address: PathBuf,
        namespace: String,
        snapshotter: String,
        /// runc's state directory (`runc --root`; runc adds the namespace); None: the shim's
        /// default, the machine-wide `/run/containerd/runc`.
        runc_root: Option<PathBuf>,
        /// Registry pulls and image garbage collection.
        images: Box<containerd::ImageSettings>,
    },
}

impl RuntimeChoice {
    /// containerd's socket and namespace, with the containerd runtime.
    pub fn containerd(&self) -> Option<(&std::path::Path, &str)> {
        match self {
            RuntimeChoice::Process => None,
            RuntimeChoice::Containerd {
                address, namespace, ..
            } => Some((address.as_path(), namespace.as_str())),
        }
    }
}

/// An error of the kubelet, naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace: {0}")]
    Net(#[from] trellis_net::Error),
    #[error("CNI: {0}")]
    Cni(#[from] trellis_cni::Error),
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::Error),
    /// A container's image could not be had (missing, unreadable): the pod shows
    /// `ErrImagePull`/`ImagePullBackOff`, and the start is retried with back-off.
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The API server could not be reached at start: a permanent error, or no answer within
    /// `--api-wait-timeout`.
    #[error("the API server: {0}")]
    Api(trellis_api::cluster::WaitError<String>),
    /// The pod's hostPorts cannot be set up as given (the API should have refused most such
    /// specs; a hostIP not of this node only the node can tell): its sandbox is not made, the
    /// pod shows why and is retried with back-off.
    #[error("hostPort: {0}")]
    HostPort(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Runs the kubelet until `stop` resolves. Pods keep running after it returns (a kubelet
/// restart must not restart them).
pub async fn run(
    cfg: Config,
    client: kube::Client,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    std::fs::create_dir_all(cfg.root_dir.join("pods"))
        .map_err(|e| Error::io("create the root directory", e))?;
    let (server_stop, server_rx) = tokio::sync::watch::channel(false);
    let view = server::NodeView {
        pods: server::PodCache::default(),
        metrics: metrics.clone(),
    };
    let pod_cache = view.pods.clone();
    let bound = server::start(cfg.clone(), client.clone(), view, server_rx).await?;
    tracing::info!(%bound, "kubelet API listening");
    tokio::pin!(stop);
    // The API server may be away when the node boots: registration is retried with back-off
    // (upstream's kubelet does the same), the kubelet not ready meanwhile and still stoppable.
    let registered = trellis_api::cluster::wait::retry(
        "registering the Node",
        &cfg.api_wait,
        |e: &Error| matches!(e, Error::Kube(k) if trellis_api::cluster::wait::is_transient(k)),
        |e| health.set_not_ready(format!("waiting for the API server: {e}")),
        &mut stop,
        || node::register(&client, &cfg),
    )
    .await;
    match registered {
        Ok(()) => health.set_not_ready("starting"),
        Err(trellis_api::cluster::WaitError::Stopped) => {
            let _ = server_stop.send(true);
            tracing::info!("kubelet stopping before the Node was registered");
            return Ok(());
        }
        Err(e) => {
            let _ = server_stop.send(true);
            return Err(Error::Api(e.map(|k| k.to_string())));
        }
    }
    let net = network::Network::new(&cfg);
    let mut rt: Option<Arc<dyn runtime::Runtime>> = None;
    if let RuntimeChoice::Containerd {
        address,
        namespace,
        snapshotter,
        runc_root,
        images,
    } = &cfg.runtime
    {
        let ctrd = containerd::runtime::ContainerdRuntime::start(containerd::runtime::Settings {
            address: address.clone(),
            namespace: namespace.clone(),
            snapshotter: snapshotter.clone(),
            runc_root: runc_root.clone(),
            node: cfg.node_name.clone(),
            pods_dir: cfg.root_dir.join("pods"),
            logger: cfg.shim.clone(),
            rotation: cfg.log_rotation,
            max_parallel_starts: cfg.max_parallel_syncs,
            images: (**images).clone(),
        })
        .await?;
        tracing::info!(address = %address.display(), namespace, "containerd runtime connected");
        rt = Some(Arc::new(ctrd));
    }
    let ctx = Arc::new(pods::Ctx::new(
        cfg.clone(),
        client.clone(),
        net.clone(),
        metrics.clone(),
        rt,
    ));
    let mut pods = pod_workers::PodWorkers::new(ctx, cfg.max_parallel_syncs);
    pods.adopt().await;
    // The node's pods: each event reaches the pod's worker at once.
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name)),
    )
    .backoff(trellis_api::cluster::WatchBackoff::default());
    tokio::pin!(pod_events);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = tokio::time::interval(cfg.sync_period);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ready: Option<Result<(), String>> = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = heartbeat.tick() => {
                let ready = net.ready().await;
                let changed = last_ready.as_ref() != Some(&ready);
                match &ready {
                    Ok(()) => health.set_ready(),
                    Err(why) => health.set_not_ready(why.clone()),
                }
                if let Err(e) = node::update_status(&client, &node::status(&cfg, ready.clone()), &cfg.node_name).await {
                    tracing::warn!(error = %e, "updating the node status");
                } else if changed {
                    tracing::info!(ready = ?ready, "node status posted");
                    last_ready = Some(ready);
                }
                if let Err(e) = node::renew_lease(&client, &cfg.node_name).await {
                    tracing::warn!(error = %e, "renewing the lease");
                    metrics.inc("kubelet_lease_failures_total", "Lease renewals that failed", &[], 1.0);
                }
            }
            _ = sync.tick() => {
                // Until the network is ready only hostNetwork pods can run; the moment it is
                // (the agent wrote its configuration), the node posts Ready rather than at the
                // next heartbeat, up to 10 s later.
                if !matches!(last_ready, Some(Ok(()))) {
                    let ready = net.ready().await;
                    if ready.is_ok() {
                        heartbeat.reset_immediately();
                    }
                }
                pods.tick().await;
            }
            Some(ev) = pod_events.next() => match ev {
                Ok(ev) => {
                    pod_cache.apply(&ev);
                    pods.handle(ev).await
                }
                Err(e) => tracing::warn!(error = %e, "watching the node's pods; retrying"),
            },
        }
    }
    pods.shutdown().await;
    let _ = server_stop.send(true);
    tracing::info!("kubelet stopping; pods keep running");
    Ok(())
}
