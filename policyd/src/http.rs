//! policyd's HTTP listener: `/healthz`, `/readyz`, `/metrics` (as every daemon) and
//! `/explain?from=NS/POD&to=NS/POD&port=N&proto=TCP`, which answers from the live model and
//! reads the deciding rules' counters from the kernel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use trellis_daemon::{Health, Metrics};

use crate::daemon::Shared;
use crate::explain::{Query, explain};
use crate::sync::Dataplane;

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn explain_reply(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let q = match Query::parse_http(query) {
        Ok(q) => q,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", e),
    };
    let read = shared.kernel.read_chains().await.unwrap_or_default();
    let answer = {
        let cluster = shared.cluster.read().unwrap_or_else(|p| p.into_inner());
        let program = shared.program.read().unwrap_or_else(|p| p.into_inner());
        explain(&cluster, &program, &read, &q)
    };
    match answer {
        Ok(e) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&e).unwrap_or_default(),
        ),
        Err(e) => reply(StatusCode::NOT_FOUND, "text/plain", e),
    }
}

async fn route(
    req: Request<hyper::body::Incoming>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shared: Shared,
) -> Response<Full<Bytes>> {
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
        "/explain" => explain_reply(&shared, req.uri().query().unwrap_or("")).await,
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
    }
}

/// Serves until `stop` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shared: Shared,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
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
            let (health, metrics, shared) = (health.clone(), metrics.clone(), shared.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (health, metrics, shared) =
                        (health.clone(), metrics.clone(), shared.clone());
                    async move { Ok::<_, Infallible>(route(req, health, metrics, shared).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}
