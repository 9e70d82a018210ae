//! `/healthz`, `/readyz` and `/metrics` on a small HTTP listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::Metrics;

/// Whether the daemon is ready, and why not; and the JSON documents it publishes for its
/// command-line tools (e.g. `/bgp/status`), served as they were last set.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    reason: Mutex<String>,
    documents: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Health {
    /// Serves `json` at `path` (starting with `/`) from now on.
    pub fn publish(&self, path: &str, json: String) {
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), json);
    }

    fn document(&self, path: &str) -> Option<String> {
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::Release);
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.into();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// What a daemon's own route answers: a status code, a content type and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// A daemon's routes beyond health and metrics (policyd's `/explain`): given the path and the
/// query string, an answer, or `None` when the path is not its own.
pub type Routes =
    Arc<dyn Fn(&str, &str) -> Option<Pin<Box<dyn Future<Output = Reply> + Send>>> + Send + Sync>;

async fn route(
    req: Request<hyper::body::Incoming>,
    health: &Health,
    metrics: &Metrics,
    routes: Option<&Routes>,
) -> Response<Full<Bytes>> {
    let own = routes.and_then(|r| r(req.uri().path(), req.uri().query().unwrap_or("")));
    if let Some(answer) = own {
        let a = answer.await;
        let mut r = reply(
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "text/plain",
            a.body,
        );
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(a.content_type),
        );
        return r;
    }
    match req.uri().path() {
        "/healthz" | "/livez" => reply(StatusCode::OK, "text/plain", "ok".into()),
        "/readyz" if health.is_ready() => reply(StatusCode::OK, "text/plain", "ok".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {}", health.reason()),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        path => match health.document(path) {
            Some(json) => reply(StatusCode::OK, "application/json", json),
            None => reply(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
        },
    }
}

/// Serves health and metrics on `addr` until `stop` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, health, metrics, None, stop).await
}

/// [`serve`], plus the daemon's own `routes`, asked first.
pub async fn serve_with(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    routes: Option<Routes>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                _ = &mut stop => return,
            };
            let (health, metrics, routes) = (health.clone(), metrics.clone(), routes.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (health, metrics, routes) =
                        (health.clone(), metrics.clone(), routes.clone());
                    async move {
                        Ok::<_, Infallible>(route(req, &health, &metrics, routes.as_ref()).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn readiness_follows_the_daemon() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        metrics.inc("reconciles_total", "Reconciles.", &[], 1.0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            health.clone(),
            metrics,
            async move {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        health.set_not_ready("routes not installed");
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("not ready: routes not installed"),
            "{r}"
        );
        health.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/metrics").await.contains("reconciles_total 1"));
        assert!(get(addr, "/peers").await.starts_with("HTTP/1.1 404"));
        health.publish("/peers", "[1]".into());
        assert!(get(addr, "/peers").await.ends_with("[1]"));
        let _ = tx.send(());
    }

    #[tokio::test]
    async fn a_daemons_own_routes_are_asked_first_and_the_rest_still_answer() {
        let routes: Routes = Arc::new(|path: &str, query: &str| {
            let query = query.to_string();
            (path == "/explain").then(|| {
                Box::pin(async move {
                    Reply {
                        status: if query.is_empty() { 400 } else { 200 },
                        content_type: "application/json",
                        body: format!("{{\"q\":\"{query}\"}}"),
                    }
                }) as Pin<Box<dyn Future<Output = Reply> + Send>>
            })
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Health::default()),
            Arc::new(Metrics::default()),
            Some(routes),
            async move {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
        let r = get(addr, "/explain?from=a").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: application/json"), "{r}");
        assert!(r.ends_with("{\"q\":\"from=a\"}"), "{r}");
        assert!(get(addr, "/explain").await.starts_with("HTTP/1.1 400"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
        let _ = tx.send(());
    }
}
