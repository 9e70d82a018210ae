//! The kubelet's HTTPS API on its port (10250): `/containerLogs/{ns}/{pod}/{container}`,
//! `/exec/{ns}/{pod}/{container}` and `/attach/{ns}/{pod}/{container}` (WebSocket or SPDY/3.1,
//! [`crate::exec`], [`crate::attach`]),
//! `/portForward/{ns}/{pod}` (SPDY/3.1, or tunnelled in a WebSocket, [`crate::portforward`]),
//! `/stats/summary`, `/pods` (the node's pods as a PodList), `/metrics` and `/healthz`: what the
//! API server (pods/log, pods/exec, nodes/proxy) and metrics readers call.
//!
//! Callers authenticate with a client certificate from the cluster CA; what they may do is
//! asked of the API server with a SubjectAccessReview (upstream's `--authorization-mode=
//! Webhook`): `nodes/proxy` for logs, exec and `/pods`, `nodes/stats` for stats,
//! `nodes/metrics` for metrics, on this node (`/healthz` needs nothing). The API
//! server calls as `kube-apiserver-kubelet-client`, bound to `system:kubelet-api-admin`.
//! The serving certificate is the one given (`--tls-cert-file`), or a self-signed one made at
//! start, as upstream's kubelet does without one; [`crate::serving`] renews it while the
//! kubelet runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::sync::mpsc;

use crate::exec::{self, ExecRequest};
use crate::logs::{self, LogQuery};
use crate::portforward;
use crate::serving::ServingCert;
use crate::stats::Stats;
use crate::{Config, Error};

/// A caller, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Caller {
    name: String,
    groups: Vec<String>,
}

/// CN = user, O = groups.
fn identity(der: &[u8]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(Caller { name, groups })
}

struct Shared {
    cfg: Config,
    client: kube::Client,
    verifier: Arc<dyn ClientCertVerifier>,
    stats: Stats,
    /// Allowed (caller, verb, subresource) until the instant (upstream caches 5 min).
    allowed: Mutex<HashMap<(Caller, String, String), Instant>>,
    node: NodeView,
}

/// What the kubelet's port shows of the node agent besides logs and stats: its pods (as its
/// watch of the node's pods has them, upstream's pod manager; `/pods`) and its metrics
/// (`/metrics`).
#[derive(Clone, Default)]
pub struct NodeView {
    pub pods: PodCache,
    pub metrics: Arc<trellis_daemon::Metrics>,
}

/// The node's pods as the kubelet's watch last listed and updated them.
#[derive(Clone, Default)]
pub struct PodCache(Arc<Mutex<PodCacheInner>>);

#[derive(Default)]
struct PodCacheInner {
    pods: std::collections::BTreeMap<String, Pod>,
    /// A relist in progress: replaces `pods` when done.
    next: Option<std::collections::BTreeMap<String, Pod>>,
}

fn pod_key(p: &Pod) -> String {
    p.metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("{:?}/{:?}", p.metadata.namespace, p.metadata.name))
}

impl PodCache {
    /// Follows one event of the watch.
    pub fn apply(&self, ev: &kube::runtime::watcher::Event<Pod>) {
        use kube::runtime::watcher::Event;
        let Ok(mut c) = self.0.lock() else { return };
        match ev {
            Event::Apply(p) => {
                c.pods.insert(pod_key(p), p.clone());
            }
            Event::Delete(p) => {
                c.pods.remove(&pod_key(p));
            }
            Event::Init => c.next = Some(Default::default()),
            Event::InitApply(p) => {
                c.next
                    .get_or_insert_with(Default::default)
                    .insert(pod_key(p), p.clone());
            }
            Event::InitDone => {
                if let Some(next) = c.next.take() {
                    c.pods = next;
                }
            }
        }
    }

    /// A `v1` PodList of the pods.
    pub fn list(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .0
            .lock()
            .map(|c| {
                c.pods
                    .values()
                    .filter_map(|p| serde_json::to_value(p).ok())
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(code: u16, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: String) -> Response<Body> {
    let mut r = text(200, body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn streamed(mut rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<Body> {
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The TLS configuration: the serving certificate from `cert` at every handshake (so a
/// rotated one is used from the next), client certificates checked against the client CA.
fn tls(
    cfg: &Config,
    cert: Arc<ServingCert>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<dyn ClientCertVerifier>), Error> {
    let e = |x: &dyn std::fmt::Display| Error::Other(format!("kubelet TLS: {x}"));
    let ca = cfg
        .client_ca
        .clone()
        .or_else(|| cfg.cluster_ca.clone())
        .ok_or_else(|| Error::Other("no client CA: the kubeconfig names no CA".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.map_err(|x| e(&x))?).map_err(|x| e(&x))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|x| e(&x))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// Binds the kubelet's port and serves it until `stop` fires; returns the bound address.
pub async fn start(
    cfg: Config,
    client: kube::Client,
    node: NodeView,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = Arc::new(ServingCert::new(
        &cfg.node_name,
        cfg.node_ip,
        cfg.tls.clone(),
        cfg.serving.clone(),
    )?);
    tracing::info!(serial = %cert.serial(), "kubelet serving certificate");
    tokio::spawn(cert.clone().rotate(stop.clone()));
    let (tls, verifier) = tls(&cfg, cert)?;
    let ip = cfg
        .address
        .or(cfg.node_ip)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("local address", e))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let shared = Arc::new(Shared {
        cfg,
        client,
        verifier,
        stats: Stats::default(),
        allowed: Mutex::new(HashMap::new()),
        node,
    });
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((t, _)) => t,
                    Err(e) => {
                        // Out of descriptors, say: not a hot loop.
                        tracing::warn!(error = %e, "kubelet API accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let caller = tls.get_ref().1.peer_certificates().and_then(|chain| {
                    let (end, rest) = chain.split_first()?;
                    shared
                        .verifier
                        .verify_client_cert(end, rest, UnixTime::now())
                        .ok()?;
                    identity(end.as_ref())
                });
                let svc = hyper::service::service_fn(move |req| {
                    let (shared, caller) = (shared.clone(), caller.clone());
                    async move { Ok::<_, Infallible>(handle(&shared, req, caller).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// Asks the API server whether `caller` may `verb` `nodes/<sub>` of this node.
async fn authorize(
    shared: &Shared,
    caller: &Caller,
    verb: &str,
    sub: &str,
) -> Result<(), Response<Body>> {
    let key = (caller.clone(), verb.to_string(), sub.to_string());
    if shared
        .allowed
        .lock()
        .ok()
        .and_then(|m| m.get(&key).copied())
        .is_some_and(|until| Instant::now() < until)
    {
        return Ok(());
    }
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.name.clone()),
            groups: Some(caller.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some("nodes".into()),
                subresource: Some(sub.into()),
                name: Some(shared.cfg.node_name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(shared.client.clone());
    match api.create(&Default::default(), &review).await {
        Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {
            if let Ok(mut m) = shared.allowed.lock() {
                m.retain(|_, until| Instant::now() < *until);
                m.insert(key, Instant::now() + Duration::from_secs(300));
            }
            Ok(())
        }
        Ok(_) => Err(text(
            403,
            format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                caller.name
            ),
        )),
        Err(e) => Err(text(
            500,
            format!(
                "Authorization error (user={}, verb={verb}, resource=nodes, subresource={sub}): {e}",
                caller.name
            ),
        )),
    }
}

/// The `X-Stream-Protocol-Version` to answer a SPDY upgrade with (upstream's
/// `httpstream.Handshake`): none offered, 400; none served, 403 listing what is.
fn spdy_protocol<B>(
    req: &Request<B>,
    served: &[&'static str],
) -> Result<&'static str, Box<Response<Body>>> {
    let offered: Vec<&str> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if offered.is_empty() {
        return Err(Box::new(text(
            400,
            "unable to upgrade: X-Stream-Protocol-Version is required".into(),
        )));
    }
    exec::choose_spdy_protocol(offered.iter().copied(), served).ok_or_else(|| {
        let mut r = text(
            403,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {served:?}"
            ),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(&served.join(", ")) {
            r.headers_mut()
                .insert("x-accepted-stream-protocol-versions", v);
        }
        Box::new(r)
    })
}

/// The 101 that switches a connection to SPDY/3.1 with `protocol`.
fn spdy_switch(protocol: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("SPDY/3.1"),
    );
    h.insert(
        "x-stream-protocol-version",
        hyper::header::HeaderValue::from_static(protocol),
    );
    r
}

fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// Percent-decoding of a query or path part.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: &Shared, req: Request<Incoming>, caller: Option<Caller>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(200, "ok".into());
    }
    let Some(caller) = caller else {
        return text(401, "Unauthorized".into());
    };
    let verb = match *req.method() {
        hyper::Method::GET | hyper::Method::HEAD => "get",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "*",
    };
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(unescape)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["containerLogs", ns, pod, container] => {
            if let Err(r) = authorize(shared, &caller, verb, "proxy").await {
                return r;
            }
            if verb != "get" {
                return text(405, "method not allowed".into());
            }
            let q = match LogQuery::parse(&query(req.uri().query()), jiff::Timestamp::now()) {
                Ok(q) => q,
                Err(e) => return text(e.code, e.message),
            };
            let Some(dir) = logs::find_pod(&shared.cfg.root_dir, ns, pod) else {
                return text(404, format!("pod {pod:?} does not exist"));
            };
            let (file, run) = match logs::open(&dir, pod, container, &q) {
                Ok(x) => x,
                Err(e) => return text(e.code, e.message),
            };
            let (tx, rx) = mpsc::channel(16);
            tokio::task::spawn_blocking(move || logs::stream(file, run, q, tx));
            streamed(rx, "text/plain")
        }
        ["pods"] => {
            if let Err(r) = authorize(shared, &caller, verb, "proxy").await {
                return r;
            }
            json(shared.node.pods.list().to_string())
        }
        ["metrics"] => {
            if let Err(r) = authorize(shared, &caller, verb, "metrics").await {
                return r;
            }
            let mut r = text(200, shared.node.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        ["stats", "summary"] => {
            if let Err(r) = authorize(shared, &caller, verb, "stats").await {
                return r;
            }
            let summary = shared
                .stats
                .summary(
                    &shared.cfg.node_name,
                    &shared.cfg.root_dir,
                    shared.cfg.cgroups.as_ref(),
                )
                .await;
            json(summary.to_string())
        }
        [kind @ ("exec" | "attach"), ns, pod, container] => {
            if let Err(r) = authorize(shared, &caller, verb, "proxy").await {
                return r;
            }
            let attach = *kind == "attach";
            let pairs = query(req.uri().query());
            let parsed = if attach {
                ExecRequest::parse_attach(&pairs)
            } else {
                ExecRequest::parse(&pairs)
            };
            let exec_req = match parsed {
                Ok(r) => r,
                Err(e) => return text(400, e),
            };
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            if header("upgrade").eq_ignore_ascii_case("SPDY/3.1") {
                let protocol = match spdy_protocol(&req, exec::SPDY_PROTOCOLS) {
                    Ok(p) => p,
                    Err(r) => return *r,
                };
                let Some(dir) = logs::find_pod(&shared.cfg.root_dir, ns, pod) else {
                    return text(404, format!("pod {pod:?} does not exist"));
                };
                let Some(target) = exec::target(
                    &dir,
                    container,
                    attach,
                    &shared.cfg.shim,
                    shared.cfg.runtime.containerd(),
                ) else {
                    return text(
                        400,
                        format!("container {container:?} in pod {pod:?} is not running"),
                    );
                };
                tokio::spawn(async move {
                    if let Ok(up) = hyper::upgrade::on(req).await {
                        exec::run_spdy(TokioIo::new(up), target, exec_req, protocol).await;
                    }
                });
                return spdy_switch(protocol);
            }
            if !header("upgrade").eq_ignore_ascii_case("websocket") {
                return text(
                    400,
                    format!("{kind} needs an upgrade to SPDY/3.1 or a WebSocket"),
                );
            }
            let Some(protocol) = exec::choose_protocol(&header("sec-websocket-protocol")) else {
                return text(
                    400,
                    format!(
                        "no served WebSocket subprotocol offered; served: {}",
                        exec::PROTOCOLS.join(", ")
                    ),
                );
            };
            let key = header("sec-websocket-key");
            if key.is_empty() {
                return text(400, "missing Sec-WebSocket-Key".into());
            }
            let Some(dir) = logs::find_pod(&shared.cfg.root_dir, ns, pod) else {
                return text(404, format!("pod {pod:?} does not exist"));
            };
            let Some(target) = exec::target(
                &dir,
                container,
                attach,
                &shared.cfg.shim,
                shared.cfg.runtime.containerd(),
            ) else {
                return text(
                    400,
                    format!("container {container:?} in pod {pod:?} is not running"),
                );
            };
            tokio::spawn(async move {
                if let Ok(up) = hyper::upgrade::on(req).await {
                    exec::run(TokioIo::new(up), target, exec_req).await;
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            let v = |s: &str| hyper::header::HeaderValue::from_str(s).ok();
            for (name, value) in [
                (hyper::header::UPGRADE, v("websocket")),
                (hyper::header::CONNECTION, v("Upgrade")),
                (
                    hyper::header::SEC_WEBSOCKET_ACCEPT,
                    v(&exec::accept_key(&key)),
                ),
                (hyper::header::SEC_WEBSOCKET_PROTOCOL, v(protocol)),
            ] {
                if let Some(value) = value {
                    h.insert(name, value);
                }
            }
            r
        }
        ["portForward", ns, pod] => {
            if let Err(r) = authorize(shared, &caller, verb, "proxy").await {
                return r;
            }
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let Some(dir) = logs::find_pod(&shared.cfg.root_dir, ns, pod) else {
                return text(404, format!("pod {pod:?} does not exist"));
            };
            let netns = match portforward::pod_netns(&dir) {
                Ok(n) => n,
                Err(e) => return text(500, e),
            };
            let name = format!("{ns}/{pod}");
            let upgrade = header("upgrade");
            if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
                let protocol = match spdy_protocol(&req, &[portforward::PROTOCOL]) {
                    Ok(p) => p,
                    Err(r) => return *r,
                };
                tracing::info!(pod = %name, over = "SPDY/3.1", "port-forward");
                tokio::spawn(async move {
                    if let Ok(up) = hyper::upgrade::on(req).await {
                        portforward::serve(TokioIo::new(up), name, netns).await;
                    }
                });
                return spdy_switch(protocol);
            }
            let tunnel = header("sec-websocket-protocol")
                .split(',')
                .any(|p| p.trim() == portforward::TUNNEL_PROTOCOL);
            let key = header("sec-websocket-key");
            if !upgrade.eq_ignore_ascii_case("websocket") || !tunnel || key.is_empty() {
                return text(
                    400,
                    format!(
                        "port-forward needs an upgrade to SPDY/3.1 ({}) or a WebSocket ({})",
                        portforward::PROTOCOL,
                        portforward::TUNNEL_PROTOCOL
                    ),
                );
            }
            tracing::info!(pod = %name, over = "a WebSocket tunnel", "port-forward");
            tokio::spawn(async move {
                if let Ok(up) = hyper::upgrade::on(req).await {
                    portforward::serve(exec::tunnel(TokioIo::new(up)), name, netns).await;
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            let v = |s: &str| hyper::header::HeaderValue::from_str(s).ok();
            for (name, value) in [
                (hyper::header::UPGRADE, v("websocket")),
                (hyper::header::CONNECTION, v("Upgrade")),
                (
                    hyper::header::SEC_WEBSOCKET_ACCEPT,
                    v(&exec::accept_key(&key)),
                ),
                (
                    hyper::header::SEC_WEBSOCKET_PROTOCOL,
                    v(portforward::TUNNEL_PROTOCOL),
                ),
            ] {
                if let Some(value) = value {
                    h.insert(name, value);
                }
            }
            r
        }
        _ => text(404, "404 page not found".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query(Some("follow=true&tailLines=2&x=a%20b")),
            vec![
                ("follow".into(), "true".into()),
                ("tailLines".into(), "2".into()),
                ("x".into(), "a b".into())
            ]
        );
        assert_eq!(unescape("100%"), "100%");
    }
}
