//! Probes: exec (in the pod's network namespace), tcpSocket, httpGet and grpc (from the node, to
//! the pod's address, as the kubelet does). Thresholds and periods as upstream defaults them.
//!
//! gRPC probes call `grpc.health.v1.Health/Check` (plaintext, the numeric port) with the
//! probe's `service` (default ""): `SERVING` is success; any other status, an RPC error, a
//! refused connection or the timeout is a failure, worded as upstream's
//! `pkg/probe/grpc/grpc.go` words it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// The consecutive results of one probe of one container run.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pub successes: u32,
    pub failures: u32,
    pub last: Option<Instant>,
    /// The current verdict (readiness: ready; startup: started; liveness: alive).
    pub ok: bool,
    pub last_message: String,
}

pub fn probe_of(c: &Container, kind: Kind) -> Option<&Probe> {
    match kind {
        Kind::Startup => c.startup_probe.as_ref(),
        Kind::Liveness => c.liveness_probe.as_ref(),
        Kind::Readiness => c.readiness_probe.as_ref(),
    }
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

/// Whether the probe is due now, for a container running since `running_for`.
pub fn due(p: &Probe, t: &Tracker, running_for: Duration) -> bool {
    if running_for < secs(p.initial_delay_seconds, 0) {
        return false;
    }
    t.last
        .is_none_or(|l| l.elapsed() >= secs(p.period_seconds, 10).max(Duration::from_secs(1)))
}

/// How long until the probe is due, for a container running since `running_for`: its
/// initialDelaySeconds first, then a period after the last result (zero: due now).
pub fn until_due(p: &Probe, t: &Tracker, running_for: Duration) -> Duration {
    let initial = secs(p.initial_delay_seconds, 0);
    if running_for < initial {
        return initial - running_for;
    }
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    t.last
        .map_or(Duration::ZERO, |l| period.saturating_sub(l.elapsed()))
}

/// Records a result; returns the new verdict.
pub fn record(p: &Probe, t: &mut Tracker, ok: bool, message: String) -> bool {
    t.last = Some(Instant::now());
    t.last_message = message;
    if ok {
        t.successes += 1;
        t.failures = 0;
        if t.successes >= p.success_threshold.unwrap_or(1).max(1) as u32 {
            t.ok = true;
        }
    } else {
        t.failures += 1;
        t.successes = 0;
        if t.failures >= p.failure_threshold.unwrap_or(3).max(1) as u32 {
            t.ok = false;
        }
    }
    t.ok
}

fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// Runs the probe once: Ok(()) on success, Err(why) on failure.
pub async fn run(
    p: &Probe,
    c: &Container,
    pod_ip: Option<IpAddr>,
    netns: Option<PathBuf>,
) -> Result<(), String> {
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(g) = &p.grpc {
        let ip = pod_ip.ok_or("the pod has no address")?;
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        return grpc(
            SocketAddr::new(ip, port),
            g.service.clone().unwrap_or_default(),
            timeout,
        )
        .await;
    }
    let work = async {
        if let Some(t) = &p.tcp_socket {
            let ip = t
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .or(pod_ip)
                .ok_or("the pod has no address")?;
            let port = port(c, &t.port).ok_or("unknown port")?;
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))
        } else if let Some(h) = &p.http_get {
            let ip = h
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .or(pod_ip)
                .ok_or("the pod has no address")?;
            let port = port(c, &h.port).ok_or("unknown port")?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut s = tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .map_err(|e| format!("Get \"http://{ip}:{port}{path}\": {e}"))?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            let head = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("malformed HTTP response: {head:?}"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        } else if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            let first = argv.first().ok_or("exec probe without a command")?;
            let mut cmd = match &netns {
                Some(path) => trellis_net::Netns::open(path)
                    .and_then(|ns| ns.command(first))
                    .map_err(|e| e.to_string())?,
                None => std::process::Command::new(first),
            };
            cmd.args(&argv[1..])
                .env_clear()
                .env("PATH", crate::pods::DEFAULT_PATH)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(true);
            let st = cmd.status().await.map_err(|e| format!("exec: {e}"))?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("command {argv:?} exited with {st}"))
            }
        } else {
            Err("probe has no handler".into())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {timeout:?}")),
    }
}

/// An error with its causes, as Go's `%+v` shows a wrapped one.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    let mut n = 0;
    while let Some(c) = cur {
        n += 1;
        if n > 8 {
            break;
        }
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Go's rendering of a whole-second timeout (`1s`).
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// One `grpc.health.v1.Health/Check` of `service` at `addr`, within `timeout` in all.
pub async fn grpc(addr: SocketAddr, service: String, timeout: Duration) -> Result<(), String> {
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let started = Instant::now();
    let within = go_duration(timeout);
    let failed_connect = |why: String| {
        format!("timeout: failed to connect service \"{addr}\" within {within}: {why}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed_connect(chain(&e)))?
        .connect_timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => return Err(failed_connect("context deadline exceeded".into())),
        Ok(Err(e)) => return Err(failed_connect(chain(&e))),
        Ok(Ok(c)) => c,
    };
    let mut client = HealthClient::new(channel);
    let left = timeout.saturating_sub(started.elapsed());
    let rpc_timeout = || format!("timeout: health rpc did not complete within {within}");
    let resp = match tokio::time::timeout(left, client.check(HealthCheckRequest { service })).await
    {
        Err(_) => return Err(rpc_timeout()),
        Ok(Err(st)) if st.code() == tonic::Code::DeadlineExceeded => return Err(rpc_timeout()),
        Ok(Err(st)) => {
            return Err(format!(
                "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                st.code(),
                st.message()
            ));
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let status = tonic_health::pb::health_check_response::ServingStatus::try_from(resp.status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| resp.status.to_string());
    if resp.status == ServingStatus::Serving as i32 || status == "SERVING" {
        Ok(())
    } else {
        Err(format!("service unhealthy (responded with \"{status}\")"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic_health::ServingStatus;

    /// The first probe is due as soon as the container runs (after initialDelaySeconds), the
    /// next a period after the last result.
    #[test]
    fn a_probe_is_due_after_its_initial_delay_then_every_period() {
        let p = Probe {
            initial_delay_seconds: Some(2),
            period_seconds: Some(5),
            ..Default::default()
        };
        let mut t = Tracker::default();
        let s = Duration::from_secs;
        assert_eq!(until_due(&p, &t, s(0)), s(2));
        assert!(!due(&p, &t, s(1)));
        assert_eq!(until_due(&p, &t, s(2)), Duration::ZERO);
        assert!(due(&p, &t, s(2)));
        record(&p, &mut t, false, String::new());
        let left = until_due(&p, &t, s(3));
        assert!(left > s(4) && left <= s(5), "{left:?}");
        assert!(!due(&p, &t, s(3)));
        let none = Probe::default();
        assert_eq!(until_due(&none, &Tracker::default(), s(0)), Duration::ZERO);
    }

    /// A grpc.health.v1 server on a loopback port: "" serving, "down" not serving.
    async fn server() -> SocketAddr {
        let (reporter, svc) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("down", ServingStatus::NotServing)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _keep = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        addr
    }

    #[tokio::test]
    async fn grpc_probes_judge_the_health_status_with_upstreams_words() {
        let addr = server().await;
        let t = Duration::from_secs(5);
        assert_eq!(grpc(addr, String::new(), t).await, Ok(()));
        assert_eq!(
            grpc(addr, "down".into(), t).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let unknown = grpc(addr, "nope".into(), t).await.unwrap_err();
        assert!(
            unknown.starts_with("error: health rpc probe failed: rpc error: code = NotFound"),
            "{unknown}"
        );
        // A port nothing listens on (the listener is dropped at once).
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = grpc(closed, String::new(), t).await.unwrap_err();
        assert!(
            refused.starts_with(&format!(
                "timeout: failed to connect service \"{closed}\" within 5s: "
            )),
            "{refused}"
        );
    }
}
