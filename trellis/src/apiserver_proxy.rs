//! `trellis apiserver-proxy`: a TCP failover proxy in front of several API servers, so a
//! client with one address in its kubeconfig (kube-rs and kubectl take one server) keeps
//! working when an API server dies — k3s' agent load balancer, and the load balancer kubeadm's
//! HA guide puts in front of the control plane. TLS passes through untouched: the client checks
//! the API server's certificate (which names the proxy's address too) and presents its own.
//!
//! Each connection goes to the first backend, in the order given, that accepts it; a backend
//! that refused or timed out is passed over for a hold-down time, then tried again. When a
//! backend dies its connections close, and the clients' next connections land on the next
//! one. Giving each node a different first backend spreads the clients.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use trellis_daemon::{Health, Metrics};

#[derive(clap::Args)]
pub struct Args {
    /// Where clients connect: the address their kubeconfig names.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// An API server (`ip:port`); repeat for each. A connection goes to the first one, in this
    /// order, that accepts it.
    #[arg(long = "backend", required = true)]
    backends: Vec<SocketAddr>,
    /// Milliseconds to wait for a backend's TCP handshake before trying the next.
    #[arg(long, default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// Seconds a backend that failed a handshake is passed over (tried only when every other
    /// one fails too).
    #[arg(long, default_value_t = 5)]
    hold_down_secs: u64,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6444")]
    metrics_listen: SocketAddr,
}

/// One API server and when it last failed a handshake.
#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    failed_at: Mutex<Option<Instant>>,
}

/// The backends in order of preference, with what each did lately.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<Backend>,
    connect_timeout: Duration,
    hold_down: Duration,
    metrics: Arc<Metrics>,
}

const CONNECTIONS: &str = "apiserver_proxy_connections_total";
const CONNECTIONS_HELP: &str = "Client connections handed to a backend.";
const FAILURES: &str = "apiserver_proxy_connect_failures_total";
const FAILURES_HELP: &str = "Backend handshakes that failed or timed out.";
const UP: &str = "apiserver_proxy_backend_up";
const UP_HELP: &str = "1 when the backend's last handshake succeeded, 0 while it is held down.";
const OPEN: &str = "apiserver_proxy_open_connections";
const OPEN_HELP: &str = "Client connections being relayed.";
const REFUSED: &str = "apiserver_proxy_unserved_total";
const REFUSED_HELP: &str = "Client connections closed because no backend accepted them.";

impl Balancer {
    pub fn new(
        backends: &[SocketAddr],
        connect_timeout: Duration,
        hold_down: Duration,
        metrics: Arc<Metrics>,
    ) -> Balancer {
        for b in backends {
            metrics.set(UP, UP_HELP, &[("backend", b.to_string().as_str())], 1.0);
        }
        metrics.set(OPEN, OPEN_HELP, &[], 0.0);
        Balancer {
            backends: backends
                .iter()
                .map(|&addr| Backend {
                    addr,
                    failed_at: Mutex::new(None),
                })
                .collect(),
            connect_timeout,
            hold_down,
            metrics,
        }
    }

    fn held_down(&self, b: &Backend, now: Instant) -> bool {
        b.failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| now.duration_since(t) < self.hold_down)
    }

    fn mark(&self, b: &Backend, ok: bool) {
        *b.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = (!ok).then(Instant::now);
        let label = b.addr.to_string();
        self.metrics.set(
            UP,
            UP_HELP,
            &[("backend", label.as_str())],
            if ok { 1.0 } else { 0.0 },
        );
        if !ok {
            self.metrics
                .inc(FAILURES, FAILURES_HELP, &[("backend", label.as_str())], 1.0);
        }
    }

    /// The order to try the backends in now: those not held down as given, then the rest.
    fn order(&self) -> Vec<&Backend> {
        let now = Instant::now();
        let (fresh, held): (Vec<&Backend>, Vec<&Backend>) =
            self.backends.iter().partition(|b| !self.held_down(b, now));
        fresh.into_iter().chain(held).collect()
    }

    /// Whether some backend is not held down.
    pub fn any_up(&self) -> bool {
        let now = Instant::now();
        self.backends.iter().any(|b| !self.held_down(b, now))
    }

    /// A connection to the first backend that accepts one, and its address.
    pub async fn connect(&self) -> Option<(TcpStream, SocketAddr)> {
        for b in self.order() {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(b.addr)).await {
                Ok(Ok(s)) => {
                    self.mark(b, true);
                    return Some((s, b.addr));
                }
                Ok(Err(e)) => {
                    tracing::warn!(backend = %b.addr, error = %e, "API server refused; trying the next");
                    self.mark(b, false);
                }
                Err(_) => {
                    tracing::warn!(backend = %b.addr, "API server handshake timed out; trying the next");
                    self.mark(b, false);
                }
            }
        }
        None
    }

    /// Relays `client` to a backend until either side closes.
    pub async fn relay(&self, mut client: TcpStream) {
        let Some((mut server, addr)) = self.connect().await else {
            self.metrics.inc(REFUSED, REFUSED_HELP, &[], 1.0);
            tracing::warn!("no API server accepted a connection; closing it");
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        self.metrics.inc(
            CONNECTIONS,
            CONNECTIONS_HELP,
            &[("backend", addr.to_string().as_str())],
            1.0,
        );
        self.open(1.0);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        self.open(-1.0);
    }

    fn open(&self, by: f64) {
        let now = self.metrics.value(OPEN, &[]).unwrap_or(0.0);
        self.metrics.set(OPEN, OPEN_HELP, &[], (now + by).max(0.0));
    }
}

/// Accepts on `listener` and relays each connection until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = &mut stop => return,
        };
        match conn {
            Ok((client, _)) => {
                let b = balancer.clone();
                tokio::spawn(async move { b.relay(client).await });
            }
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let balancer = Arc::new(Balancer::new(
        &args.backends,
        Duration::from_millis(args.connect_timeout_ms.max(1)),
        Duration::from_secs(args.hold_down_secs),
        metrics.clone(),
    ));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    trellis_daemon::serve(
        args.metrics_listen,
        health.clone(),
        metrics,
        stopped(stop_rx.clone()),
    )
    .await
    .with_context(|| format!("serving health on {}", args.metrics_listen))?;
    // Ready while some backend is not held down.
    let (h, b) = (health.clone(), balancer.clone());
    let mut readiness_stop = stop_rx.clone();
    tokio::spawn(async move {
        loop {
            if b.any_up() {
                h.set_ready();
            } else {
                h.set_not_ready("every API server failed its last handshake");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = readiness_stop.changed() => return,
            }
        }
    });
    tracing::info!(listen = %args.listen, backends = ?args.backends, "relaying to the API servers");
    serve(listener, balancer, trellis_daemon::shutdown_signal()).await;
    let _ = stop_tx.send(true);
    tracing::info!("shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers each connection with its name, then echoes.
    async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(name.as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    /// An address nobody listens on (bound, then released).
    async fn dead() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    async fn proxy(backends: &[SocketAddr]) -> (SocketAddr, Arc<Balancer>) {
        let balancer = Arc::new(Balancer::new(
            backends,
            Duration::from_secs(1),
            Duration::from_secs(60),
            Arc::new(Metrics::default()),
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, balancer.clone(), std::future::pending()));
        (addr, balancer)
    }

    /// Which backend a fresh connection through the proxy reaches; and that bytes go both ways.
    async fn reached(proxy: SocketAddr) -> String {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let mut name = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut name))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        String::from_utf8_lossy(&name).into_owned()
    }

    #[tokio::test]
    async fn connections_go_to_the_first_backend_that_accepts() {
        let (a, _ta) = backend("a").await;
        let (b, _tb) = backend("b").await;
        let (p, _) = proxy(&[a, b]).await;
        assert_eq!(reached(p).await, "a");
        assert_eq!(reached(p).await, "a", "the first backend keeps its clients");
    }

    #[tokio::test]
    async fn a_dead_backend_is_passed_over_and_held_down() {
        let gone = dead().await;
        let (b, _tb) = backend("b").await;
        let (p, balancer) = proxy(&[gone, b]).await;
        assert_eq!(reached(p).await, "b");
        assert_eq!(
            balancer
                .metrics
                .value(FAILURES, &[("backend", gone.to_string().as_str())]),
            Some(1.0)
        );
        assert_eq!(reached(p).await, "b");
        assert_eq!(
            balancer
                .metrics
                .value(FAILURES, &[("backend", gone.to_string().as_str())]),
            Some(1.0),
            "held down: not tried again within the hold-down time"
        );
        assert!(balancer.any_up());
    }

    #[tokio::test]
    async fn when_the_serving_backend_dies_the_next_connection_fails_over() {
        let (a, ta) = backend("a").await;
        let (b, _tb) = backend("b").await;
        let (p, _) = proxy(&[a, b]).await;
        let mut held = TcpStream::connect(p).await.unwrap();
        let mut name = [0u8; 1];
        held.read_exact(&mut name).await.unwrap();
        assert_eq!(&name, b"a");
        // The backend dies: its listener and its connections.
        ta.abort();
        let _ = ta.await;
        assert_eq!(reached(p).await, "b");
    }

    #[tokio::test]
    async fn with_no_backend_the_client_is_closed_not_left_hanging() {
        let (p, balancer) = proxy(&[dead().await, dead().await]).await;
        let mut c = TcpStream::connect(p).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(!balancer.any_up());
        assert_eq!(balancer.metrics.value(REFUSED, &[]), Some(1.0));
    }
}
