//! The kubelet's HTTPS API on its port (10250): `/containerLogs/{ns}/{pod}/{container}`,
//! `/exec/{ns}/{pod}/{container}` and `/attach/{ns}/{pod}/{container}` (WebSocket or SPDY/3.1,
//! [`crate::exec`], [`crate::attach`]),
//! `/portForward/{ns}/{pod}` (SPDY/3.1, or tunnelled in a WebSocket, [`crate::portforward`]) and `/stats/summary`, what the API server and metrics readers call.
//!
//! Callers authenticate with a client certificate from the cluster CA; what they may do is
//! asked of the API server with a SubjectAccessReview (upstream's `--authorization-mode=
//! Webhook`): `get nodes/proxy` for logs, `get nodes/stats` for stats, on this node. The API
//! server calls as `kube-apiserver-kubelet-client`, bound to `system:kubelet-api-admin`.
//! The serving certificate is the one given (`--tls-cert-file`), or a self-signed one made at
//! start, as upstream's kubelet does without one.

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
use kube::Api;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::sync::mpsc;

use crate::exec::{self, ExecRequest};
use crate::logs::{self, LogQuery};
use crate::portforward;
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

/// A self-signed serving certificate for the node's name and address.
fn self_signed(cfg: &Config) -> Result<(String, String), Error> {
    let mut names = vec![cfg.node_name.clone()];
    if let Some(ip) = cfg.node_ip {
        names.push(ip.to_string());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Other(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| Error::Other(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{}@{}", cfg.node_name, jiff::Timestamp::now().as_second()),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Other(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn tls(cfg: &Config) -> Result<(Arc<rustls::ServerConfig>, Arc<dyn ClientCertVerifier>), Error> {
    let e = |x: &dyn std::fmt::Display| Error::Other(format!("kubelet TLS: {x}"));
    let (cert_pem, key_pem) = match &cfg.tls {
        Some((c, k)) => (
            std::fs::read_to_string(c)
                .map_err(|x| Error::io(format!("read {}", c.display()), x))?,
            std::fs::read_to_string(k)
                .map_err(|x| Error::io(format!("read {}", k.display()), x))?,
        ),
        None => self_signed(cfg)?,
    };
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
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|x| e(&x))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|x| e(&x))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|x| e(&x))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// Binds the kubelet's port and serves it until `stop` fires; returns the bound address.
pub async fn start(
    cfg: Config,
    client: kube::Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tls, verifier) = tls(&cfg)?;
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
            let mut r = text(200, summary.to_string());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
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
