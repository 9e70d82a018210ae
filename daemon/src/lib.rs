//! What every Trellis daemon shares: a small HTTP endpoint with `/healthz` (alive), `/readyz`
//! (ready to serve, with the reason when not) and Prometheus `/metrics`; a metrics registry;
//! and the shutdown signal.

pub mod health;
pub mod metrics;

pub use health::{Health, Reply, Routes, serve, serve_with};
pub use metrics::Metrics;

/// Resolves on SIGTERM or SIGINT: the daemon then stops gracefully.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
