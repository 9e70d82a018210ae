//! Probes: exec (in the pod's network namespace), tcpSocket and httpGet (from the node, to the
//! pod's address, as the kubelet does). Thresholds and periods as upstream defaults them.

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
            Err("probe has no handler (grpc is not supported yet)".into())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {timeout:?}")),
    }
}
