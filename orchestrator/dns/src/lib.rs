//! Cluster DNS (`trellis dns`): answers the cluster zone from a watch of Services and
//! EndpointSlices (the zone is rebuilt within 100 ms of a change) and forwards every other
//! name to upstream resolvers, caching their answers. UDP and TCP on the same address; a UDP
//! answer too large for the query is truncated so that the client asks again over TCP.

pub mod answer;
pub mod tcp;
pub mod zone;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use trellis_api::cluster::reflect;
use trellis_daemon::{Health, Metrics};

pub use answer::{Outcome, Transport, respond};
pub use tcp::TcpLimits;
pub use zone::Zone;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    pub domain: String,
    /// Where queries are answered (UDP and TCP).
    pub listen: SocketAddr,
    /// How many TCP connections at once, and how long an idle one stays.
    pub tcp: TcpLimits,
    /// Resolvers other names go to, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Health and metrics.
    pub metrics_listen: Option<SocketAddr>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube client: {0}")]
    Client(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Forwarded answers by (lower-case name, type, class): the bytes and when they expire.
#[derive(Default)]
struct Cache {
    entries: HashMap<(String, u16, u16), (Vec<u8>, Instant)>,
}

const CACHE_MAX: usize = 10_000;
/// No forwarded answer is kept longer, whatever its TTL (CoreDNS' `cache 30`).
const CACHE_TTL_MAX: u32 = 30;

fn cache_key(q: &Message) -> Option<(String, u16, u16)> {
    let q = q.queries.first()?;
    Some((
        q.name().to_ascii().to_ascii_lowercase(),
        u16::from(q.query_type()),
        u16::from(q.query_class()),
    ))
}

impl Cache {
    fn get(&self, key: &(String, u16, u16), id: u16) -> Option<Vec<u8>> {
        let (bytes, until) = self.entries.get(key)?;
        if Instant::now() >= *until {
            return None;
        }
        let mut b = bytes.clone();
        b.get_mut(..2)?.copy_from_slice(&id.to_be_bytes());
        Some(b)
    }

    fn put(&mut self, key: (String, u16, u16), bytes: &[u8]) {
        let Ok(m) = Message::from_vec(bytes) else {
            return;
        };
        let ttl = match m.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => m
                .answers
                .iter()
                .chain(&m.authorities)
                .map(|r| r.ttl)
                .min()
                .unwrap_or(5),
            _ => return,
        }
        .min(CACHE_TTL_MAX);
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= CACHE_MAX {
            let now = Instant::now();
            self.entries.retain(|_, (_, until)| *until > now);
            if self.entries.len() >= CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(
            key,
            (
                bytes.to_vec(),
                Instant::now() + Duration::from_secs(u64::from(ttl)),
            ),
        );
    }
}

/// How long one upstream has to answer, per transport.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a message has the TC bit.
fn truncated(bytes: &[u8]) -> bool {
    bytes.get(2).is_some_and(|f| f & 0x02 != 0)
}

/// Asks the upstreams in turn (2 s each); their answer bytes. An upstream's truncated UDP
/// answer is asked again over TCP (and kept as it is if that fails).
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        if let Some(b) = forward_udp(query, *up).await {
            if truncated(&b) {
                return Some(forward_tcp(query, *up).await.unwrap_or(b));
            }
            return Some(b);
        }
    }
    None
}

/// One question to one upstream over TCP.
async fn forward_tcp(query: &[u8], up: SocketAddr) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let len = u16::try_from(query.len()).ok()?;
    let exchange = async {
        let mut s = TcpStream::connect(up).await.ok()?;
        let mut frame = Vec::with_capacity(query.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(query);
        s.write_all(&frame).await.ok()?;
        loop {
            let n = s.read_u16().await.ok()?;
            let mut b = vec![0u8; usize::from(n)];
            s.read_exact(&mut b).await.ok()?;
            if b.get(..2) == Some(id) {
                return Some(b);
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// One question to one upstream over UDP.
async fn forward_udp(query: &[u8], up: SocketAddr) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        if buf.get(..2) == Some(id) {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The shared state of the server.
pub struct Server {
    zone: RwLock<Arc<Zone>>,
    cache: Mutex<Cache>,
    upstreams: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
}

impl Server {
    pub fn new(zone: Zone, upstreams: Vec<SocketAddr>) -> Server {
        Server {
            zone: RwLock::new(Arc::new(zone)),
            cache: Mutex::default(),
            upstreams,
            metrics: Arc::new(Metrics::default()),
        }
    }

    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
    }

    fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The answer to one message that came over `transport` (None: send nothing), cut to
    /// what the transport carries.
    pub async fn handle(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        let zone = self.zone();
        let (reply, source) = match respond(bytes, &zone, transport) {
            Outcome::Drop => (None, "dropped"),
            Outcome::Reply(b) => (Some(b), "cluster"),
            Outcome::Forward(q) => {
                let id = q.metadata.id;
                let limit = transport.limit(q.edns.as_ref());
                let key = cache_key(&q);
                let cached = key.as_ref().and_then(|k| {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(k, id)
                });
                if let Some(b) = cached {
                    self.metrics.inc(
                        "trellis_dns_cache_hits_total",
                        "Forwarded names answered from the cache.",
                        &[],
                        1.0,
                    );
                    (Some(answer::fit(b, limit)), "cache")
                } else {
                    self.metrics.inc(
                        "trellis_dns_cache_misses_total",
                        "Forwarded names not in the cache.",
                        &[],
                        1.0,
                    );
                    match forward(bytes, &self.upstreams).await {
                        Some(b) => {
                            // A truncated answer is passed on but never cached: the client
                            // asks again over TCP, and so do we.
                            if let Some(k) = key.filter(|_| !truncated(&b)) {
                                self.cache
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .put(k, &b);
                            }
                            (Some(answer::fit(b, limit)), "upstream")
                        }
                        None => {
                            let mut m =
                                Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
                            m.add_queries(q.queries.iter().cloned());
                            (m.to_vec().ok(), "upstream")
                        }
                    }
                }
            }
        };
        if reply.as_deref().is_some_and(truncated) {
            self.metrics.inc(
                "trellis_dns_truncated_total",
                "UDP answers cut to the header and question with TC set (the client retries over TCP).",
                &[],
                1.0,
            );
        }
        let rcode = reply
            .as_deref()
            .and_then(|b| b.get(3))
            .map(|b| answer::rcode_label(ResponseCode::from_low(b & 0x0f)))
            .unwrap_or("none");
        self.metrics.inc(
            "trellis_dns_queries_total",
            "Queries, by where the answer came from and its response code.",
            &[("source", source), ("rcode", rcode)],
            1.0,
        );
        self.metrics.observe(
            "trellis_dns_query_duration_seconds",
            "Time to answer a query.",
            &[("source", source)],
            started.elapsed().as_secs_f64(),
        );
        reply
    }
}

/// Serves UDP on `sock` until `stop`; one task per query, so a slow upstream holds up no one.
pub async fn serve_udp(
    server: Arc<Server>,
    sock: Arc<UdpSocket>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut stop => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "recv"); continue; }
            },
        };
        let bytes = buf[..n].to_vec();
        let (server, sock) = (server.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(reply) = server.handle(&bytes, Transport::Udp).await {
                let _ = sock.send_to(&reply, peer).await;
            }
        });
    }
}

/// Runs the server until `stop` resolves.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let kube = trellis_api::cluster::client(config.kubeconfig.as_deref())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    let server = Arc::new(Server::new(Zone::default(), config.upstreams.clone()));
    let health = Arc::new(Health::default());
    health.set_not_ready("waiting for the first list");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(addr) = config.metrics_listen {
        trellis_daemon::serve(addr, health.clone(), server.metrics.clone(), stopped())
            .await
            .map_err(|source| Error::Bind { addr, source })?;
    }
    let sock = Arc::new(
        UdpSocket::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?,
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, upstreams = ?config.upstreams, "serving DNS (UDP and TCP)");
    let changed = Arc::new(Notify::new());
    let services = reflect(Api::<Service>::all(kube.clone()), changed.clone());
    let slices = reflect(Api::<EndpointSlice>::all(kube), changed.clone());
    let udp = tokio::spawn(serve_udp(server.clone(), sock, stopped()));
    let tcp = tokio::spawn(tcp::serve(server.clone(), listener, config.tcp, stopped()));
    tokio::pin!(stop);
    let ready = async { tokio::join!(services.wait_until_ready(), slices.wait_until_ready()) };
    tokio::select! {
        _ = &mut stop => {
            let _ = stop_tx.send(true);
            let _ = tokio::join!(udp, tcp);
            return Ok(());
        }
        _ = ready => {}
    }
    loop {
        let svc = services.state();
        let eps = slices.state();
        let zone = Zone::build(
            &config.domain,
            svc.iter().map(|s| s.as_ref()),
            eps.iter().map(|s| s.as_ref()),
        );
        server.metrics.set(
            "trellis_dns_zone_names",
            "Names in the cluster zone.",
            &[],
            zone.names() as f64,
        );
        server.set_zone(zone);
        health.set_ready();
        tokio::select! {
            _ = &mut stop => break,
            _ = changed.notified() => {}
        }
        // Batch a burst of events (a rollout) into one rebuild.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(udp, tcp);
    Ok(())
}

/// The `nameserver` lines of a resolv.conf, as upstreams on port 53.
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    /// A resolver on loopback that answers every A query with 203.0.113.7 (a documentation
    /// address: only data, never contacted).
    async fn tiny_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..100 {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut m = Message::response(q.metadata.id, OpCode::Query);
                m.add_queries(q.queries.iter().cloned());
                m.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A("203.0.113.7".parse().unwrap())),
                ));
                sock.send_to(&m.to_vec().unwrap(), peer).await.unwrap();
            }
        });
        (addr, count)
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn other_names_are_forwarded_once_then_cached() {
        let (up, count) = tiny_upstream().await;
        let server = Server::new(Zone::default(), vec![up]);
        for id in [7u16, 8] {
            let b = server
                .handle(&query(id, "example.org."), Transport::Udp)
                .await
                .unwrap();
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.id, id);
            assert_eq!(
                m.answers[0].data,
                RData::A(A("203.0.113.7".parse().unwrap()))
            );
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            server.metrics.value("trellis_dns_cache_hits_total", &[]),
            Some(1.0)
        );
    }

    /// An upstream on loopback whose UDP answers are truncated (TC, no records) and whose TCP
    /// answers carry 60 A records; counts its TCP questions.
    async fn truncating_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let tcp_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        fn full(q: &Message) -> Vec<u8> {
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.add_queries(q.queries.iter().cloned());
            for i in 0..60u8 {
                m.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(std::net::Ipv4Addr::new(203, 0, 113, i))),
                ));
            }
            m.to_vec().unwrap()
        }
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..100 {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let q = Message::from_vec(&buf[..n]).unwrap();
                let t = answer::fit(full(&q), 512);
                udp.send_to(&t, peer).await.unwrap();
            }
        });
        let c = tcp_count.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let n = s.read_u16().await.unwrap();
                let mut b = vec![0u8; usize::from(n)];
                s.read_exact(&mut b).await.unwrap();
                let a = full(&Message::from_vec(&b).unwrap());
                s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
                s.write_all(&a).await.unwrap();
            }
        });
        (addr, tcp_count)
    }

    #[tokio::test]
    async fn a_truncated_upstream_answer_is_asked_again_over_tcp_and_cut_per_client_transport() {
        let (up, tcp_count) = truncating_upstream().await;
        let server = Server::new(Zone::default(), vec![up]);
        // Over TCP the client gets all 60.
        let b = server
            .handle(&query(1, "many.example.org."), Transport::Tcp)
            .await
            .unwrap();
        let m = Message::from_vec(&b).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        assert_eq!(tcp_count.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Over UDP, from the cache, cut again to 512 bytes with TC.
        let b = server
            .handle(&query(2, "many.example.org."), Transport::Udp)
            .await
            .unwrap();
        let m = Message::from_vec(&b).unwrap();
        assert!(b.len() <= 512 && m.metadata.truncation && m.answers.is_empty());
        assert_eq!(m.metadata.id, 2);
        assert_eq!(
            server.metrics.value("trellis_dns_truncated_total", &[]),
            Some(1.0)
        );
        assert_eq!(tcp_count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn resolv_conf_nameservers_become_upstreams() {
        let u = resolv_conf_upstreams("search x\nnameserver 10.0.0.2\nnameserver ::1\n");
        assert_eq!(
            u,
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
    }
}
