//! Health-check node ports: a LoadBalancer Service with externalTrafficPolicy Local has a
//! `spec.healthCheckNodePort`, and every node's proxy answers HTTP on it — 200 while the node
//! has a local endpoint of the Service, 503 otherwise — so an outside load balancer sends
//! traffic only to nodes that will not drop it. The body is kube-proxy's:
//! `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":true}`.
//!
//! Each port is one socket on `[::]` with `IPV6_V6ONLY` off, so it answers on the node's IPv4
//! and IPv6 addresses alike (kube-proxy listens on the wildcard, which Go makes the same
//! dual-stack socket); a host without IPv6 gets `0.0.0.0`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::model::ServicePort;

/// What one health-check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub namespace: String,
    pub service: String,
    /// This node's ready (or, with none ready, serving) endpoints of the Service.
    pub local_endpoints: usize,
}

impl Status {
    /// The HTTP status and the body, as kube-proxy answers.
    pub fn answer(&self) -> (u16, String) {
        // Written by hand to keep kube-proxy's field order.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let body = format!(
            r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{},"serviceProxyHealthy":true}}"#,
            quote(&self.namespace),
            quote(&self.service),
            self.local_endpoints
        );
        let code = if self.local_endpoints > 0 { 200 } else { 503 };
        (code, body)
    }
}

/// The health-check ports these service ports ask for, each with its Service's local
/// endpoint count (distinct addresses over all of the Service's ports).
pub fn wanted(ports: &[ServicePort]) -> BTreeMap<u16, Status> {
    // (namespace, service, the family counted, local endpoint addresses): a dual-stack
    // Service's pods are counted once, in the family seen first.
    type Local = (String, String, crate::model::Family, BTreeSet<IpAddr>);
    let mut local: BTreeMap<u16, Local> = BTreeMap::new();
    for sp in ports {
        let Some(hc) = sp.health_check_node_port else {
            continue;
        };
        let family = crate::model::Family::of(sp.cluster_ip);
        let e = local.entry(hc).or_insert_with(|| {
            (
                sp.name.namespace.clone(),
                sp.name.service.clone(),
                family,
                BTreeSet::new(),
            )
        });
        if (e.0.as_str(), e.1.as_str()) != (sp.name.namespace.as_str(), sp.name.service.as_str())
            || e.2 != family
        {
            continue; // two Services with one port: the API server never allows it
        }
        e.3.extend(sp.usable(true).iter().map(|ep| ep.ip));
    }
    local
        .into_iter()
        .map(|(port, (namespace, service, _, ips))| {
            (
                port,
                Status {
                    namespace,
                    service,
                    local_endpoints: ips.len(),
                },
            )
        })
        .collect()
}

struct Server {
    status: Arc<Mutex<Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running health-check servers, one per port, on every address of the node (both
/// families).
#[derive(Default)]
pub struct HealthChecks {
    servers: BTreeMap<u16, Server>,
}

impl HealthChecks {
    /// Starts, updates and stops servers to match `wanted`. A port that cannot be bound now
    /// (in use) is tried again at the next update.
    pub async fn update(&mut self, wanted: BTreeMap<u16, Status>) {
        self.servers.retain(|port, _| wanted.contains_key(port));
        for (port, status) in wanted {
            if let Some(s) = self.servers.get(&port) {
                *s.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
                continue;
            }
            let (addr, listener) = match listen(port) {
                Ok(l) => l,
                Err((addr, e)) => {
                    tracing::warn!(%addr, error = %e, "health-check node port");
                    continue;
                }
            };
            tracing::info!(%addr, service = %format!("{}/{}", status.namespace, status.service), "health-check node port");
            let status = Arc::new(Mutex::new(status));
            let task = tokio::spawn(serve(listener, status.clone()));
            self.servers.insert(port, Server { status, task });
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

/// A listener on `port` of every address: `[::]` for both families, or `0.0.0.0` where the
/// host has no IPv6. The error names the address that failed.
fn listen(port: u16) -> Result<(SocketAddr, TcpListener), (SocketAddr, std::io::Error)> {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let dual = || -> std::io::Result<TcpListener> {
        let socket = tokio::net::TcpSocket::new_v6()?;
        // Both families on one socket, whatever net.ipv6.bindv6only says.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &false)
            .map_err(std::io::Error::from)?;
        socket.set_reuseaddr(true)?;
        socket.bind(any6)?;
        socket.listen(1024)
    };
    match dual() {
        Ok(l) => Ok((any6, l)),
        // No IPv6 here (the address family is not supported): IPv4 alone.
        Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
            let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| (any4, e))?;
            socket.set_reuseaddr(true).map_err(|e| (any4, e))?;
            socket.bind(any4).map_err(|e| (any4, e))?;
            socket
                .listen(1024)
                .map(|l| (any4, l))
                .map_err(|e| (any4, e))
        }
        Err(e) => Err((any6, e)),
    }
}

async fn serve(listener: TcpListener, status: Arc<Mutex<Status>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let answer = status.lock().unwrap_or_else(|p| p.into_inner()).answer();
            let _ = tokio::time::timeout(Duration::from_secs(5), reply(conn, answer)).await;
        });
    }
}

/// Reads the request head (whatever it asks, the answer is the same) and answers.
async fn reply(mut conn: TcpStream, (code, body): (u16, String)) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > 16 * 1024 {
            break;
        }
    }
    let reason = if code == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Endpoint, PortName, Protocol};

    fn sp(port: &str, hc: Option<u16>, eps: &[(&str, bool)]) -> ServicePort {
        ServicePort {
            name: PortName {
                namespace: "default".into(),
                service: "web".into(),
                port: port.into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: "10.96.0.20".parse().unwrap(),
            port: 80,
            node_port: Some(30080),
            load_balancer_ips: vec!["203.0.113.1".parse().unwrap()],
            health_check_node_port: hc,
            external_local: true,
            internal_local: false,
            affinity: None,
            endpoints: eps
                .iter()
                .map(|(ip, local)| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: *local,
                })
                .collect(),
        }
    }

    #[test]
    fn local_endpoints_are_counted_once_over_the_services_ports() {
        let eps = [("10.244.1.2", true), ("10.244.2.2", false)];
        let w = wanted(&[
            sp("http", Some(32000), &eps),
            sp("https", Some(32000), &eps),
        ]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[&32000].local_endpoints, 1);
        let (code, body) = w[&32000].answer();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                               "localEndpoints": 1, "serviceProxyHealthy": true})
        );
    }

    #[test]
    fn no_local_endpoint_is_503_and_no_port_no_server() {
        let w = wanted(&[sp("http", Some(32000), &[("10.244.2.2", false)])]);
        assert_eq!(w[&32000].answer().0, 503);
        assert!(wanted(&[sp("http", None, &[("10.244.1.2", true)])]).is_empty());
    }

    #[tokio::test]
    async fn the_server_answers_on_both_families_and_follows_updates() {
        // An ephemeral port: bind, note it, let go, then serve on it.
        let port = std::net::TcpListener::bind("[::]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut hc = HealthChecks::default();
        let status = |n| Status {
            namespace: "default".into(),
            service: "web".into(),
            local_endpoints: n,
        };
        hc.update([(port, status(2))].into()).await;
        assert_eq!(hc.ports(), vec![port]);
        let get_from = |host: &'static str| async move {
            let mut c = TcpStream::connect((host, port)).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let get = || get_from("127.0.0.1");
        let out = get().await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        // The same port over IPv6.
        let out = get_from("::1").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.ends_with("\"localEndpoints\":2,\"serviceProxyHealthy\":true}"),
            "{out}"
        );
        hc.update([(port, status(0))].into()).await;
        assert!(get().await.starts_with("HTTP/1.1 503 "));
        hc.update(BTreeMap::new()).await;
        assert!(hc.ports().is_empty());
    }
}
