//! `trellis ipamd`: one per node. The engine, the gRPC service on a unix socket (mode 0600), an
//! optional HTTP listener for `/healthz` and `/metrics`, and the periodic leak pass.
//!
//! The same daemon runs in-process for tests and `cni-bench` ([`start`] and
//! [`Daemon::shutdown`]).

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::backend::kube::KubeBackend;
use crate::backend::local::LocalBackend;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::proto::ipam_server::IpamServer;
use crate::service::{GcSettings, IpamService};

/// Where the state lives.
#[derive(Clone)]
pub enum BackendSpec {
    /// Custom resources in the cluster the kubeconfig points at (the CRDs are installed if
    /// missing and allowed).
    Kube { kubeconfig: PathBuf },
    /// trellis-store's embedded file, standalone.
    Local { path: PathBuf },
    /// Already opened (tests share one store between several engines).
    Opened(Arc<dyn Backend>),
}

#[derive(Clone)]
pub struct DaemonConfig {
    pub node: String,
    pub backend: BackendSpec,
    pub socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// None: no periodic leak pass.
    pub gc_interval: Option<Duration>,
    pub gc_grace: Duration,
    pub cni_cache_dir: PathBuf,
    /// How long and how often the datastore is retried at start when it does not answer (the
    /// API server not there yet); `/healthz` and `/readyz` say so meanwhile.
    pub api_wait: trellis_api::cluster::ApiWait,
}

impl DaemonConfig {
    pub fn new(node: &str, backend: BackendSpec, socket: impl Into<PathBuf>) -> DaemonConfig {
        DaemonConfig {
            node: node.to_string(),
            backend,
            socket: socket.into(),
            metrics_listen: None,
            gc_interval: Some(Duration::from_secs(60)),
            gc_grace: Duration::from_secs(300),
            cni_cache_dir: PathBuf::from("/var/lib/cni"),
            api_wait: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Ipam(#[from] crate::error::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig cannot be read or used (waiting would not help).
    #[error("{0}")]
    Kubeconfig(String),
    /// The datastore did not answer within the wait's timeout.
    #[error("{0}")]
    Unavailable(String),
    /// Stopped while it waited for the datastore.
    #[error("stopped while waiting for the datastore")]
    Stopped,
}

impl DaemonError {
    /// Whether the datastore being away explains it (retried at start).
    pub fn is_transient(&self) -> bool {
        matches!(self, DaemonError::Ipam(crate::error::Error::Backend(b)) if b.is_transient())
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// A running ipamd.
pub struct Daemon {
    pub engine: Engine,
    pub service: IpamService,
    pub socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens the backend a spec names.
pub async fn open_backend(spec: &BackendSpec) -> Result<Arc<dyn Backend>, DaemonError> {
    Ok(match spec {
        BackendSpec::Opened(b) => b.clone(),
        BackendSpec::Local { path } => {
            Arc::new(LocalBackend::open(path).map_err(|e| DaemonError::Ipam(e.into()))?)
        }
        BackendSpec::Kube { kubeconfig } => {
            // Building the client reads the kubeconfig and connects nowhere: its errors are
            // permanent.
            let client = trellis_api::cluster::client(Some(kubeconfig))
                .await
                .map_err(|e| DaemonError::Kubeconfig(e.to_string()))?;
            match crate::crds::install_crds(&client).await {
                Ok(()) => {}
                // The API server is not answering: the caller may wait for it.
                Err(e) if e.is_transient() => return Err(DaemonError::Ipam(e.into())),
                // A node's ipamd may lack the right to create CRDs; an admin applies
                // ipam/deploy/crds.yaml instead (if not, reading the blocks fails with 404).
                Err(e) => {
                    tracing::warn!(error = %e, "could not install the IPAM CRDs; assuming they are applied")
                }
            }
            Arc::new(KubeBackend::new(client))
        }
    })
}

/// Starts ipamd: opens the backend, loads the node's blocks, listens on the socket.
pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
    start_until(config, std::future::pending()).await
}

/// [`start`], waiting for a datastore that does not answer yet (the API server not there yet)
/// as `config.api_wait` says, with `/healthz` and `/readyz` answering 503 and the reason
/// meanwhile (the gRPC socket is bound only once the node's blocks are loaded); ends with
/// [`DaemonError::Stopped`] if `stop` resolves first.
pub async fn start_until(
    config: DaemonConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Daemon, DaemonError> {
    let http = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("listen on {addr}")))?,
        ),
        None => None,
    };
    let metrics_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let (why, why_rx) = watch::channel("starting".to_string());
    let (waited, waited_rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = http.map(|l| tokio::spawn(serve_waiting(l, why_rx, waited_rx)));
    let metrics = Arc::new(Metrics::default());
    let started = trellis_api::cluster::wait::retry(
        "loading the node's blocks",
        &config.api_wait,
        DaemonError::is_transient,
        |e| {
            let _ = why.send(format!("waiting for the datastore: {e}"));
        },
        stop,
        || async {
            let backend = open_backend(&config.backend).await?;
            Ok::<_, DaemonError>(Engine::start(backend, &config.node, metrics.clone()).await?)
        },
    )
    .await;
    let _ = waited.send(());
    let http = match waiting {
        Some(task) => Some(task.await.map_err(|e| DaemonError::Io {
            what: "the health listener".into(),
            source: std::io::Error::other(e.to_string()),
        })?),
        None => None,
    };
    let (engine, engine_task) = match started {
        Ok(v) => v,
        Err(trellis_api::cluster::WaitError::Stopped) => return Err(DaemonError::Stopped),
        Err(trellis_api::cluster::WaitError::Permanent(e)) => return Err(e),
        Err(e @ trellis_api::cluster::WaitError::TimedOut { .. }) => {
            return Err(DaemonError::Unavailable(e.to_string()));
        }
    };
    let service = IpamService::new(
        engine.clone(),
        GcSettings {
            grace: config.gc_grace,
            cni_cache_dir: config.cni_cache_dir.clone(),
        },
    );
    let listener = bind_socket(&config.socket)?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![engine_task];

    let grpc = service.clone();
    let mut grpc_stop = stopped.clone();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tasks.push(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(IpamServer::new(grpc))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    if let Some(listener) = http {
        tasks.push(tokio::spawn(serve_http(
            listener,
            service.clone(),
            stopped.clone(),
        )));
    }

    if let Some(every) = config.gc_interval.filter(|d| !d.is_zero()) {
        let svc = service.clone();
        let grace = config.gc_grace;
        let mut gc_stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = gc_stop.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                match svc.leak_pass(grace, false).await {
                    Ok(freed) if !freed.is_empty() => {
                        tracing::info!(freed = freed.len(), "leak pass")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "leak pass failed"),
                }
            }
        }));
    }
    tracing::info!(node = %config.node, socket = %config.socket.display(), backend = %engine.backend().describe(), "ipamd serving");
    Ok(Daemon {
        engine,
        service,
        socket: config.socket,
        metrics_addr,
        stop,
        tasks,
    })
}

impl Daemon {
    /// Stops serving, lets the engine finish its round, removes the socket.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.engine.stop();
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("an ipamd task did not stop within 10 s");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds the socket: parent directory created 0700 if missing, a stale socket file removed (a
/// live ipamd on it is refused), the socket itself 0600.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("create {}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Io {
                    what: format!("bind {}", path.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another ipamd is serving on this socket",
                    ),
                });
            }
            std::fs::remove_file(path).map_err(io(format!("remove stale {}", path.display())))?;
        }
        Ok(_) => {
            return Err(DaemonError::Io {
                what: format!("bind {}", path.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        Err(_) => {}
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(io(format!("bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod 0600 {}", path.display())))?;
    Ok(listener)
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    service: IpamService,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let svc = service.clone();
        tokio::spawn(async move {
            let handler =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let svc = svc.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http_answer(&svc, req.uri().path()).await)
                    }
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
        });
    }
}

/// The health listener while ipamd waits for its datastore: alive (`/livez`), not ready
/// (`/healthz`, `/readyz`: 503 and why); hands the listener back when `done` fires.
async fn serve_waiting(
    listener: tokio::net::TcpListener,
    why: watch::Receiver<String>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> tokio::net::TcpListener {
    loop {
        let conn = tokio::select! {
            _ = &mut done => return listener,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let why = why.borrow().clone();
        tokio::spawn(async move {
            let handler =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (code, body) = match req.uri().path() {
                        "/livez" => (200, "ok\n".to_string()),
                        "/healthz" | "/readyz" | "/metrics" => (503, format!("{why}\n")),
                        _ => (404, "not found\n".to_string()),
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() =
                        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
        });
    }
}

async fn http_answer(svc: &IpamService, path: &str) -> hyper::Response<Full<Bytes>> {
    let (code, body) = match path {
        "/healthz" | "/livez" | "/readyz" => match svc.engine().backend().list_pools().await {
            Ok(_) => (200, "ok\n".to_string()),
            Err(e) => (503, format!("datastore: {e}\n")),
        },
        "/metrics" => {
            let pools = svc
                .pool_usage()
                .await
                .map(|u| u.into_iter().map(|(_, f, _)| f).collect::<Vec<_>>())
                .unwrap_or_default();
            (
                200,
                svc.engine().metrics().render(svc.engine().node(), &pools),
            )
        }
        _ => (404, "not found\n".to_string()),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    resp
}
