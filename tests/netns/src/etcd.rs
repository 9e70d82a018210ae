//! Real etcd clusters on loopback for the store's tests: `n` members of Debian's `etcd`
//! (etcd-server, 3.4), each on free 127.0.0.1 ports with a data directory of its own, each under
//! `timeout -k 5 <lifetime>` in its own process group, so none outlives its lifetime even if the
//! test process is killed. Every process carries `TRELLIS_TESTBED=<prefix>` for the leak check.
//!
//! Dropping the cluster kills every member's process group and removes the data directories.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::TAG_VAR;
use crate::{Error, Result};

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Each member is killed after this long, whatever happens to the test.
    pub lifetime: Duration,
    /// Raft heartbeat (`--heartbeat-interval`).
    pub heartbeat: Duration,
    /// Raft election timeout (`--election-timeout`); low for fast failover.
    pub election_timeout: Duration,
    /// How long `start` waits for every member to report healthy.
    pub ready_timeout: Duration,
    /// Serve clients over TLS only, requiring a client certificate; None: plain http.
    pub tls: Option<ServerTls>,
}

/// etcd's client-side TLS (`--cert-file`, `--key-file`, `--client-cert-auth`,
/// `--trusted-ca-file`). Health and metrics then come from a plain `--listen-metrics-urls`
/// port of their own, and [`EtcdCluster::leader`] is not available (it asks the client port's
/// gateway).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// etcd's serving certificate (naming 127.0.0.1) and its key, PEM files.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must be signed by.
    pub client_ca: PathBuf,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            lifetime: Duration::from_secs(300),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            ready_timeout: Duration::from_secs(20),
            tls: None,
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// The plain health and metrics port of a TLS member (the client port otherwise).
    metrics_port: Option<u16>,
    data_dir: PathBuf,
    log: PathBuf,
    /// `timeout`, the leader of the member's process group; None once stopped.
    child: Option<Child>,
    pgid: i32,
}

/// A running etcd cluster on loopback.
pub struct EtcdCluster {
    prefix: String,
    token: String,
    options: EtcdOptions,
    etcd: PathBuf,
    members: Vec<Member>,
    /// Holds every member's data directory and log; removed on drop (after the kills).
    state: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id().wrapping_mul(2654435761)
        ^ nanos
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(40503);
    format!("tb{:06x}", seed & 0xff_ffff)
}

/// `count` distinct free loopback ports (all bound at once, then released).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| Error::io("bind 127.0.0.1:0 to find a free port", e))
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("read a bound port", e))
        })
        .collect()
}

impl EtcdCluster {
    /// A cluster of `members` (1, 3, 5, …) with the default options; waits until every member
    /// is healthy. Panics, naming the Debian package, if `etcd` is not installed.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        EtcdCluster::start_with(members, EtcdOptions::default())
    }

    pub fn start_with(members: usize, options: EtcdOptions) -> Result<EtcdCluster> {
        let etcd = crate::require_tool("etcd", "etcd-server");
        crate::require_tool("timeout", "coreutils");
        if members == 0 {
            return Err(Error::Other(
                "an etcd cluster needs at least one member".into(),
            ));
        }
        // A port picked free may be taken by someone else before etcd binds it: try again with
        // fresh ports (bounded).
        let mut last = None;
        for _ in 0..3 {
            match EtcdCluster::try_start(members, &options, &etcd) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Other("etcd did not start".into())))
    }

    fn try_start(members: usize, options: &EtcdOptions, etcd: &Path) -> Result<EtcdCluster> {
        let prefix = unique_prefix();
        let state = tempfile::Builder::new()
            .prefix(&format!("{prefix}-etcd-"))
            .tempdir()
            .map_err(|e| Error::io("create the etcd state dir", e))?;
        let per = if options.tls.is_some() { 3 } else { 2 };
        let ports = free_ports(per * members)?;
        let mut list = Vec::with_capacity(members);
        for i in 0..members {
            let name = format!("m{i}");
            list.push(Member {
                data_dir: state.path().join(&name),
                log: state.path().join(format!("{name}.log")),
                name,
                client_port: ports[per * i],
                peer_port: ports[per * i + 1],
                metrics_port: (per == 3).then(|| ports[per * i + 2]),
                child: None,
                pgid: 0,
            });
        }
        let mut cluster = EtcdCluster {
            token: format!("{prefix}-{}", std::process::id()),
            prefix,
            options: options.clone(),
            etcd: etcd.to_path_buf(),
            members: list,
            state,
        };
        for i in 0..members {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + options.ready_timeout;
        for i in 0..members {
            cluster.wait_member_healthy(i, deadline)?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i`'s process (its data directory is reused if it exists).
    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self.initial_cluster();
        let secs = format!("{:.1}", self.options.lifetime.as_secs_f64().max(1.0));
        let heartbeat = self.options.heartbeat.as_millis().max(1).to_string();
        let election = self.options.election_timeout.as_millis().max(1).to_string();
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let m = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| Error::io(format!("open {}", m.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicate the log file", e))?;
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &secs])
            .arg(&self.etcd)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &heartbeat])
            .args(["--election-timeout", &election])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let (Some(tls), Some(metrics)) = (&self.options.tls, m.metrics_port) {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth")
                .args([
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{metrics}"),
                ]);
        }
        cmd.env(TAG_VAR, &self.prefix)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("start etcd member {}", m.name), e))?;
        m.pgid = i32::try_from(child.id())
            .map_err(|_| Error::Other(format!("pid {} out of range", child.id())))?;
        m.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `GET /health` with `"health":"true"`, or fails with the
    /// tail of its log (also when it exits early).
    fn wait_member_healthy(&mut self, i: usize, deadline: Instant) -> Result<()> {
        let addr = self.plain_addr(i);
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[i].child = None;
                    return Err(Error::Failed {
                        what: format!("etcd member {i} ({})", self.members[i].name),
                        status: status.to_string(),
                        stderr: self.log_tail(i, 20),
                    });
                }
            } else {
                return Err(Error::Other(format!("etcd member {i} is stopped")));
            }
            if health(addr, Duration::from_millis(500)).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "etcd member {i} becoming healthy (log tail: {})",
                        self.log_tail(i, 20)
                    ),
                    secs: self.options.ready_timeout.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The prefix every process of this cluster is tagged with (`TRELLIS_TESTBED=<prefix>`),
    /// for [`crate::leak::assert_clean`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many members the cluster was started with (stopped ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, `http://127.0.0.1:PORT` (`https://` with TLS), in member
    /// order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Whether member `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether member `i` answers `GET /health` with `"health":"true"` right now.
    pub fn is_healthy(&self, i: usize) -> bool {
        health(self.plain_addr(i), Duration::from_millis(500)).unwrap_or(false)
    }

    /// Where member `i` answers `/health` and `/metrics` in plain HTTP: its metrics port with
    /// TLS, its client port without.
    fn plain_addr(&self, i: usize) -> SocketAddr {
        let m = &self.members[i];
        SocketAddr::from((Ipv4Addr::LOCALHOST, m.metrics_port.unwrap_or(m.client_port)))
    }

    /// The index of the member that is the raft leader, as the live members report it
    /// (`POST /v3/maintenance/status`); None if no live member names a live leader.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() || m.metrics_port.is_some() {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, m.client_port));
            let Ok(body) = http(
                addr,
                "POST",
                "/v3/maintenance/status",
                "{}",
                Duration::from_secs(1),
            ) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            // uint64 fields are strings in the gateway's JSON.
            let field = |v: &serde_json::Value| v.as_str().map(str::to_string);
            if let Some(id) = field(&v["header"]["member_id"]) {
                ids.push((i, id));
            }
            if let Some(l) = field(&v["leader"]) {
                leader = Some(l);
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }

    /// Waits until a live member names a live leader, and returns it; an error after `limit`
    /// (so a test that means "the leader" never acts on another member by default).
    pub fn wait_leader(&self, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "a member to report a live leader".into(),
                    secs: limit.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An unlabelled metric summed over every live member: a client balances its requests and
    /// watches over all endpoints, so one member's count says little.
    pub fn metric_total(&self, name: &str) -> Option<f64> {
        let values: Vec<f64> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.metric(i, name))
            .collect::<Option<Vec<f64>>>()?;
        Some(values.iter().sum())
    }

    /// The value of an unlabelled Prometheus metric that member `i` serves on `GET /metrics`
    /// (e.g. `etcd_debugging_mvcc_watcher_total`, the number of watchers open on it).
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let addr = self.plain_addr(i);
        let body = http(addr, "GET", "/metrics", "", Duration::from_secs(2)).ok()?;
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Kills member `i` (SIGKILL to its process group) and reaps it. Its data stays, so it can
    /// be restarted.
    pub fn stop_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            kill_group(m.pgid);
            let _ = child.kill();
            reap(&mut child);
        }
    }

    /// Starts member `i` again on its old ports and data, and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.stop_member(i);
        self.spawn(i)?;
        let deadline = Instant::now() + self.options.ready_timeout;
        self.wait_member_healthy(i, deadline)
    }

    /// Member `i`'s log (etcd's stderr), for diagnostics.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = self.log(i);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where member `i` keeps its data.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// The directory holding every member's data and log.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
        // The TempDir field removes the data directories after this.
    }
}

fn kill_group(pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits (bounded) for a killed child to be reaped.
fn reap(child: &mut Child) {
    for _ in 0..400 {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `GET /health` on a member's client port: Ok(true) when it says `"health":"true"`.
fn health(addr: SocketAddr, limit: Duration) -> Result<bool> {
    let body = http(addr, "GET", "/health", "", limit)?;
    Ok(body.replace(' ', "").contains("\"health\":\"true\""))
}

/// One HTTP/1.0 request with std::net; returns the body of a 200 answer.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str, limit: Duration) -> Result<String> {
    let what = format!("{method} http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| Error::io(&what, e))?;
    s.set_read_timeout(Some(limit))
        .and_then(|()| s.set_write_timeout(Some(limit)))
        .map_err(|e| Error::io(&what, e))?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .map_err(|e| Error::io(&what, e))?;
    let mut answer = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| Error::io(&what, e))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("{what}: no HTTP answer")))?;
    let status_ok = head
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    if !status_ok {
        return Err(Error::Other(format!(
            "{what}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}
