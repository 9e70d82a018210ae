//! The HTTPS listener, routing, and the server's background tasks.
//!
//! TLS asks for a client certificate without requiring one, and without failing the handshake
//! on an unknown one (as kube-apiserver does): the certificate is checked against the cluster CA
//! after the handshake, and a request without a valid one gets 401.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use trellis_store::Store;

use crate::auth::User;
use crate::handlers::{Api, Call, Reply};
use crate::metrics::Metrics;
use crate::pki::{self, Pki};
use crate::registry::Registry;
use crate::request::{self, Route};
use crate::status::ApiError;
use crate::storage::{ListAt, Storage};

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] trellis_store::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Key(#[from] crate::token::KeyError),
}

/// Where the state is kept.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// The embedded store (the default: `<data-dir>/state.db`).
    Sqlite(PathBuf),
    /// An etcd cluster.
    Etcd(Vec<String>),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("sqlite", path)) if !path.is_empty() => Ok(StoreSpec::Sqlite(path.into())),
            Some(("etcd", urls)) if !urls.is_empty() => {
                Ok(StoreSpec::Etcd(urls.split(',').map(String::from).collect()))
            }
            _ => Err(format!(
                "{s:?}: expected sqlite:<path> or etcd:<url>[,<url>...]"
            )),
        }
    }
}

/// The API server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// None: `sqlite:<data-dir>/state.db`.
    pub store: Option<StoreSpec>,
    /// TLS to etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`; its endpoints are
    /// then `https://`); None: plain.
    pub etcd_tls: Option<trellis_store::EtcdTls>,
    /// Extra names and addresses for the serving certificate.
    pub sans: Vec<String>,
    /// A plain-HTTP listener, loopback only, with admin rights (only when asked for).
    pub insecure_listen: Option<SocketAddr>,
    /// The service ranges (`--service-cluster-ip-range`): one, or one per family for
    /// dual-stack Services, the first the primary family.
    pub service_cidrs: crate::dualstack::ServiceCidrs,
    /// The node port range, inclusive (`--service-node-port-range`).
    pub node_ports: (u16, u16),
    /// tolerationSeconds of the default not-ready and unreachable tolerations of new pods
    /// (`--default-not-ready-toleration-seconds`, `--default-unreachable-toleration-seconds`).
    pub default_toleration_seconds: (i64, i64),
    /// The client certificate and key (PEM files) the API server presents to kubelets
    /// (`--kubelet-client-certificate`/`--kubelet-client-key`); None: `<data-dir>/pki/
    /// apiserver-kubelet-client.{crt,key}`, issued from the cluster CA.
    pub kubelet_client: Option<(PathBuf, PathBuf)>,
    /// The CA kubelets' serving certificates are checked against
    /// (`--kubelet-certificate-authority`); None: not checked, as upstream.
    pub kubelet_ca: Option<PathBuf>,
    /// The `kubernetes` Service's endpoint reconciler (`--endpoint-reconciler-type lease`):
    /// None, the Service is left alone.
    pub endpoint_reconciler: Option<crate::endpoints::Settings>,
    /// How often the Service address repair loop runs (`--service-repair-interval`; it also
    /// runs once at start, before the server serves); None: off.
    pub service_repair_interval: Option<std::time::Duration>,
    /// How old an IPAddress the allocator manages, whose parent Service does not hold its
    /// address, must be before the repair loop deletes it.
    pub ipaddress_orphan_grace: std::time::Duration,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            store: None,
            etcd_tls: None,
            sans: Vec::new(),
            insecure_listen: None,
            service_cidrs: crate::dualstack::ServiceCidrs::single(
                "10.96.0.0/12".parse().expect("a valid default"),
            ),
            node_ports: (30000, 32767),
            default_toleration_seconds: (300, 300),
            kubelet_client: None,
            kubelet_ca: None,
            endpoint_reconciler: None,
            service_repair_interval: Some(crate::repair::DEFAULT_INTERVAL),
            ipaddress_orphan_grace: crate::repair::ORPHAN_GRACE,
        }
    }
}

struct Shared {
    api: Arc<Api>,
    metrics: Arc<Metrics>,
    verifier: Arc<dyn ClientCertVerifier>,
    server_address: String,
    ready: std::sync::atomic::AtomicBool,
}

/// A running API server.
pub struct Running {
    pub addr: SocketAddr,
    pub insecure_addr: Option<SocketAddr>,
    pub kubeconfig: PathBuf,
    pub ca_pem: String,
    pub admin: pki::CertPair,
    ca: pki::CertPair,
    store: Arc<dyn Store>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The endpoint reconciler, which removes this API server's address when stopped.
    endpoints: Option<tokio::task::JoinHandle<()>>,
    repair: Arc<crate::repair::Repair>,
}

impl Running {
    /// A client certificate signed by the cluster CA (for nodes and components).
    pub fn issue(&self, user: &str, groups: &[&str]) -> Result<pki::CertPair, pki::PkiError> {
        pki::issue(&self.ca, user, groups, &[])
    }

    /// A kubeconfig for `user`.
    pub fn kubeconfig_for(&self, user: &str, cert: &pki::CertPair) -> String {
        pki::kubeconfig(&format!("https://{}", self.addr), &self.ca, user, cert)
    }

    /// The store this server keeps its state in (for tools and tests: compaction, inspection).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The Service address repair loop's state: a round can be run by hand (tools, tests),
    /// whether or not the loop runs on its own.
    pub fn service_repair(&self) -> Arc<crate::repair::Repair> {
        self.repair.clone()
    }

    /// Stops accepting, ends the background tasks, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(mut t) = self.endpoints {
            // Its last round takes this API server out of the `kubernetes` endpoints.
            if tokio::time::timeout(std::time::Duration::from_secs(3), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Re-reads the CustomResourceDefinitions and serves what they define.
pub async fn refresh_crds(api: &Api) -> Result<(), ApiError> {
    let info = api
        .registry
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("CRDs are not served"))?;
    let page = api
        .storage
        .list(&info, None, ListAt::Latest, 0, None, &|_: &Value| true)
        .await?;
    api.registry.set_custom(&page.items);
    Ok(())
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config
        .store
        .clone()
        .unwrap_or_else(|| StoreSpec::Sqlite(config.data_dir.join("state.db")))
    {
        StoreSpec::Sqlite(path) => Ok(Arc::new(trellis_store::SqliteStore::open(
            path,
            Default::default(),
        )?)),
        #[cfg(feature = "etcd")]
        StoreSpec::Etcd(urls) => {
            let options = trellis_store::etcd::EtcdOptions {
                tls: config.etcd_tls.clone(),
                ..Default::default()
            };
            Ok(Arc::new(
                trellis_store::EtcdStore::connect_with(&urls, options).await?,
            ))
        }
        #[cfg(not(feature = "etcd"))]
        StoreSpec::Etcd(_) => Err(ServerError::Tls(
            "this build has no etcd support (feature `etcd`)".into(),
        )),
    }
}

/// The namespaces every cluster has.
async fn bootstrap(api: &Api) -> Result<(), ApiError> {
    let info = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if api.storage.get(&info, None, ns).await?.is_some() {
            continue;
        }
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": crate::meta::now(),
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        match api.storage.create(&info, None, ns, &obj, Vec::new()).await {
            Ok(_) => {}
            // Another API server on the same store made it first.
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts the API server: store, certificates, listeners, background tasks.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::Io {
        what: format!("create {}", config.data_dir.display()),
        source: e,
    })?;
    let store = open_store(&config).await?;
    let registry = Arc::new(Registry::default());
    let alloc = crate::alloc::Allocator {
        service_cidrs: config.service_cidrs,
        node_ports: config.node_ports,
    };
    let mut api = Api::new(Storage::new(store), registry, alloc);
    api.default_toleration_seconds = config.default_toleration_seconds;
    let api = Arc::new(api);
    refresh_crds(&api).await?;
    bootstrap(&api).await?;
    crate::servicecidr::bootstrap(&api).await?;
    crate::rbac::bootstrap::ensure(&api).await?;
    crate::rbac::reload(&api).await?;

    let mut sans = config.sans.clone();
    if !config.listen.ip().is_unspecified() {
        sans.push(config.listen.ip().to_string());
    }
    let pki = Pki::ensure(&config.data_dir, &sans)?;
    let signer = crate::token::ensure_key(&pki.dir)?;
    let _ = api.tokens.set(signer);
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| ServerError::Io {
            what: format!("read {}", p.display()),
            source: e,
        })
    };
    let kubelet_cert = match &config.kubelet_client {
        Some((cert, key)) => pki::CertPair {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        },
        None => pki.kubelet_client.clone(),
    };
    let kubelet_ca = config.kubelet_ca.as_ref().map(read).transpose()?;
    let kubelet = crate::kubelet::KubeletClient::new(&kubelet_cert, kubelet_ca.as_deref())
        .map_err(|e| ServerError::Tls(format!("the kubelet client certificate: {e}")))?;
    let _ = api.kubelet.set(kubelet);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Io {
            what: format!("listen on {}", config.listen),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io {
        what: "local address".into(),
        source: e,
    })?;
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
    } else {
        addr
    };
    pki::write_kubeconfig(
        &kubeconfig,
        &pki::kubeconfig(&format!("https://{host}"), &pki.ca, "admin", &pki.admin),
    )?;

    let metrics = Arc::new(Metrics::default());
    let repair = Arc::new(
        crate::repair::Repair::new(api.clone(), metrics.clone())
            .with_orphan_grace(config.ipaddress_orphan_grace),
    );
    if config.service_repair_interval.is_some() {
        // Once before serving, as upstream's post-start hook runs it; a failure is not fatal:
        // the loop tries again.
        match repair.round().await {
            Ok(r) => tracing::info!(
                claimed = r.claimed.len(),
                warned = r.warned.len(),
                suspects = r.suspects.len(),
                "Service address repair: first round done"
            ),
            Err(e) => {
                tracing::warn!(error = %e.message, "Service address repair: the first round failed")
            }
        }
    }
    let (tls, verifier) = tls_config(&pki)?;
    let shared = Arc::new(Shared {
        api: api.clone(),
        metrics,
        verifier,
        server_address: host.to_string(),
        ready: std::sync::atomic::AtomicBool::new(true),
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(accept_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        shared.clone(),
        stop_rx.clone(),
    )));
    let mut insecure_addr = None;
    if let Some(plain) = config.insecure_listen {
        if !plain.ip().is_loopback() {
            return Err(ServerError::Tls(format!(
                "the plain-HTTP listener must be on loopback, not {plain}"
            )));
        }
        let l = TcpListener::bind(plain)
            .await
            .map_err(|e| ServerError::Io {
                what: format!("listen on {plain}"),
                source: e,
            })?;
        insecure_addr = l.local_addr().ok();
        tasks.push(tokio::spawn(accept_plain(
            l,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::namespaces::run(
        api.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(follow_crds(api.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(crate::servicecidr::run(
        api.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::rbac::follow(
        api.clone(),
        stop_rx.clone(),
    )));
    if let Some(interval) = config.service_repair_interval {
        tasks.push(tokio::spawn(repair.clone().run(interval, stop_rx.clone())));
    }
    let endpoints = config
        .endpoint_reconciler
        .map(|s| tokio::spawn(crate::endpoints::run(api.clone(), s, stop_rx.clone())));
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
    let store = api.storage.store().clone();
    Ok(Running {
        addr,
        insecure_addr,
        kubeconfig,
        ca_pem: pki.ca.cert_pem.clone(),
        admin: pki.admin.clone(),
        ca: pki.ca,
        store,
        stop,
        tasks,
        endpoints,
        repair,
    })
}

/// Keeps the served custom resources in step with CRDs written through other API servers.
async fn follow_crds(api: Arc<Api>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let watch = api
            .storage
            .store()
            .watch(trellis_store::WatchRequest::new(
                trellis_store::KeyRange::prefix(
                    "/registry/apiextensions.k8s.io/customresourcedefinitions/",
                ),
            ))
            .await;
        if let Ok(mut w) = watch {
            let _ = refresh_crds(&api).await;
            loop {
                tokio::select! {
                    ev = w.next() => match ev {
                        Some(Ok(_)) => { let _ = refresh_crds(&api).await; }
                        _ => break,
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Accepts any client certificate during the handshake (its signature is still checked), so
/// an unknown one reaches the authenticator and gets a 401 instead of a TLS failure.
#[derive(Debug)]
struct AnyClientCert(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_config(
    pki: &Pki,
) -> Result<(Arc<rustls::ServerConfig>, Arc<dyn ClientCertVerifier>), ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(AnyClientCert(verifier.clone())))
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Watch frames are small and must not wait for the previous one's ACK (Nagle).
        let _ = tcp.set_nodelay(true);
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let user = tls.get_ref().1.peer_certificates().and_then(|chain| {
                let (end, rest) = chain.split_first()?;
                shared
                    .verifier
                    .verify_client_cert(end, rest, UnixTime::now())
                    .ok()?;
                let (name, groups) = pki::identity(end.as_ref())?;
                Some(User::authenticated(name, groups))
            });
            serve_connection(TokioIo::new(tls), shared, user).await;
        });
    }
}

async fn accept_plain(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(serve_connection(
            TokioIo::new(tcp),
            shared,
            Some(User::loopback_admin()),
        ));
    }
}

async fn serve_connection<I>(io: I, shared: Arc<Shared>, user: Option<User>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (shared, user) = (shared.clone(), user.clone());
        async move { Ok::<_, Infallible>(handle(shared, req, user).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, svc)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused (Kubernetes' limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        if let Ok(v) =
            hyper::header::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'")))
        {
            resp.headers_mut().append(hyper::header::WARNING, v);
        }
    }
    resp
}

fn text_response(code: u16, text: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status(), &[])
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, user: Option<User>) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = request::query(parts.uri.query());
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (accept, content_type) = (
        header(hyper::header::ACCEPT),
        header(hyper::header::CONTENT_TYPE),
    );
    let route = request::route(parts.method.as_str(), &path, watch);
    // A client certificate wins; otherwise a bearer token (a service account's).
    let user = match user {
        Some(u) => Some(u),
        None => match header(hyper::header::AUTHORIZATION).strip_prefix("Bearer ") {
            Some(token) => crate::token::authenticate(&shared.api, token.trim()).await,
            None => None,
        },
    };
    // Then the user it asks to act as (`kubectl --as`), each part authorized for the user
    // authenticated above.
    let (user, refused) = match user {
        Some(u) => match crate::impersonate::apply(u, &parts.headers, &shared.api) {
            Ok(u) => (Some(u), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let (verb, resource) = match &route {
        Ok(Route::Resource(r)) => (r.verb.as_str().to_string(), r.resource.clone()),
        _ => (parts.method.as_str().to_lowercase(), path.clone()),
    };
    let resp = match route {
        Ok(Route::Health(which)) => health(&shared, &which).await,
        Err(e) => error_response(&e),
        Ok(_) if refused.is_some() => {
            error_response(&refused.unwrap_or_else(ApiError::unauthorized))
        }
        Ok(_) if user.is_none() => error_response(&ApiError::unauthorized()),
        Ok(Route::Resource(r))
            if r.group.is_empty()
                && r.resource == "pods"
                && matches!(
                    r.subresource.as_deref(),
                    Some("exec" | "attach" | "portforward")
                ) =>
        {
            let user = user.unwrap_or_else(User::loopback_admin);
            let client_req = Request::from_parts(parts, body);
            exec(&shared, &r, &user, client_req).await
        }
        Ok(Route::Resource(mut r))
            if r.group.is_empty()
                && r.resource == "nodes"
                && r.subresource.as_deref() == Some("proxy") =>
        {
            // Nodes are cluster-scoped: a namespaced path (which a RoleBinding could authorize)
            // or another version names nothing.
            if r.namespace.is_some() || r.version != "v1" {
                return error_response(&ApiError::not_found(
                    "",
                    "nodes",
                    r.name.as_deref().unwrap_or_default(),
                ));
            }
            let user = user.unwrap_or_else(User::loopback_admin);
            if r.verb == request::Verb::Watch {
                // `?watch=` is the kubelet's query here, not a watch of Nodes.
                r.verb = request::Verb::Get;
            }
            node_proxy(&shared, &r, &user, parts, body, &content_type).await
        }
        Ok(route) => {
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error_response(&ApiError::bad_request(format!(
                        "cannot read the request body: {e}"
                    )));
                }
            };
            let user = user.unwrap_or_else(User::loopback_admin);
            let method = parts.method.as_str().to_lowercase();
            let authorized = match &route {
                Route::Resource(_) => Ok(()),
                _ => crate::auth::authorize_path(&user, &method, &path, &shared.api),
            };
            let reply = match authorized {
                Ok(()) => {
                    dispatch(&shared, route, &query, &accept, &content_type, &body, &user).await
                }
                Err(e) => Err(e),
            };
            match reply {
                Ok(Reply::Json {
                    code,
                    body,
                    warnings,
                }) => json_response(code, &body, &warnings),
                Ok(Reply::Raw {
                    code,
                    body,
                    content_type,
                }) => {
                    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    resp
                }
                Ok(Reply::Stream(mut rx)) => {
                    shared.metrics.watch(1);
                    let guard = WatchGauge(shared.clone());
                    let stream = futures::stream::poll_fn(move |cx| {
                        let _ = &guard;
                        rx.poll_recv(cx)
                            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
                    });
                    let mut resp = Response::new(StreamBody::new(stream).boxed());
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                Ok(Reply::Bytes {
                    content_type,
                    body: mut rx,
                }) => {
                    let stream = futures::stream::poll_fn(move |cx| {
                        rx.poll_recv(cx)
                            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
                    });
                    let mut resp = Response::new(StreamBody::new(stream).boxed());
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    resp
                }
                Err(e) => error_response(&e),
            }
        }
    };
    shared.metrics.observe(
        &verb,
        &resource,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// pods/exec, pods/attach and pods/portforward: the client's upgrade (WebSocket or SPDY/3.1) answered with the kubelet's, then the two
/// upgraded streams relayed both ways until either side closes.
async fn exec(
    shared: &Shared,
    r: &request::ResourceRequest,
    user: &User,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let opened = crate::kubelet::exec(&shared.api, r, user, req.uri().query(), req.headers()).await;
    let (headers, kubelet) = match opened {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(client) = client.await {
            let mut client = TokioIo::new(client);
            let mut kubelet = TokioIo::new(kubelet);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in &headers {
        if crate::kubelet::UPGRADE_HEADERS.contains(&k.as_str()) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp
}

/// `nodes/<name>/proxy/<path>`: the request sent on to the node's kubelet
/// ([`crate::kubelet::node_proxy`]) and its answer streamed back with its status and type.
async fn node_proxy(
    shared: &Shared,
    r: &request::ResourceRequest,
    user: &User,
    parts: hyper::http::request::Parts,
    body: Incoming,
    content_type: &str,
) -> Response<Body> {
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )));
        }
    };
    let Some(mut path) = request::proxy_path(parts.uri.path()) else {
        return error_response(&ApiError::not_found(
            "",
            "nodes",
            r.name.as_deref().unwrap_or_default(),
        ));
    };
    if let Some(q) = parts.uri.query().filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(q);
    }
    let answer = crate::kubelet::node_proxy(
        &shared.api,
        r,
        user,
        parts.method,
        &path,
        content_type,
        body,
    )
    .await;
    let (code, kind, mut rx) = match answer {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Counts a watch as open while its body lives.
struct WatchGauge(Arc<Shared>);

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0.metrics.watch(-1);
    }
}

async fn health(shared: &Shared, which: &str) -> Response<Body> {
    let ok = match which {
        "readyz" | "readyz/etcd" => {
            shared.ready.load(std::sync::atomic::Ordering::Relaxed)
                && shared.api.storage.store().current_revision().await.is_ok()
        }
        _ => true,
    };
    if ok {
        text_response(200, "ok".into(), "text/plain")
    } else {
        text_response(500, format!("{which} check failed"), "text/plain")
    }
}

async fn dispatch(
    shared: &Shared,
    route: Route,
    query: &std::collections::HashMap<String, String>,
    accept: &str,
    content_type: &str,
    body: &[u8],
    user: &User,
) -> Result<Reply, ApiError> {
    let registry = &shared.api.registry;
    match route {
        Route::Version => Ok(Reply::ok(crate::discovery::version())),
        Route::Metrics => Ok(Reply::Raw {
            code: 200,
            body: shared.metrics.render().into_bytes(),
            content_type: "text/plain; version=0.0.4",
        }),
        Route::CoreVersions => Ok(Reply::ok(crate::discovery::core_versions(
            &shared.server_address,
        ))),
        Route::Groups => Ok(Reply::ok(crate::discovery::groups(registry))),
        Route::Group(g) => crate::discovery::group(registry, &g)
            .map(Reply::ok)
            .ok_or_else(|| ApiError::no_route(&format!("/apis/{g}"))),
        Route::Resources { group, version } => {
            crate::discovery::resources(registry, &group, &version)
                .map(Reply::ok)
                .ok_or_else(|| ApiError::no_route(&format!("{group}/{version}")))
        }
        Route::OpenApiV2 | Route::OpenApiV3(_) => crate::openapi::serve(registry, &route, accept),
        Route::Health(_) => Ok(Reply::ok(json!("ok"))),
        Route::Resource(req) => {
            shared
                .api
                .resource(Call {
                    req,
                    query,
                    accept,
                    content_type,
                    body,
                    user,
                })
                .await
        }
    }
}
