//! Small TCP probes for the data-path tests: a server that answers each connection with the
//! address it saw, and the client that asks — together they prove (or disprove) NAT; and a
//! plain HTTP GET from inside a namespace, for daemons' health and status endpoints.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use trellis_net::Netns;

use crate::{Error, Result};

/// Serves up to 16 connections on `ip:port` in `ns`, answering each with the peer address it
/// saw; a connection that sends `quit` ends it.
pub fn echo_peer_server(ns: &Netns, ip: impl Into<IpAddr>, port: u16) -> Result<JoinHandle<()>> {
    let ip: IpAddr = ip.into();
    let listener = ns
        .run(|| TcpListener::bind((ip, port)))?
        .map_err(|e| Error::io("bind the echo server", e))?;
    Ok(std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut s) = conn else { return };
            let peer = s
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() && &buf == b"quit" {
                return;
            }
            let _ = s.write_all(peer.as_bytes());
        }
    }))
}

/// Connects from `ns` to an echo server at `to`; the address the server saw.
pub fn who_am_i(ns: &Netns, to: SocketAddr) -> Result<String> {
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)))?
        .map_err(|e| Error::io(format!("connect to {to}"), e))?;
    let io = |e| Error::io(format!("talk to {to}"), e);
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(io)?;
    s.write_all(b"who?").map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io)?;
    Ok(out)
}

/// Ends an echo server (it stops after `quit`).
pub fn stop_echo(ns: &Netns, at: SocketAddr) {
    if let Ok(Ok(mut q)) = ns.run(|| TcpStream::connect_timeout(&at, Duration::from_secs(2))) {
        let _ = q.write_all(b"quit");
    }
}

/// A pod as [`pairs_talk_without_nat`] sees it: its namespace, its address and its node's
/// index (for the messages).
pub type PodAt<'a> = (&'a Netns, Ipv4Addr, usize);

/// Every ordered pair of `pods`, same node and across nodes: a ping, and a TCP exchange in
/// which the server sees the client's own address (no NAT between pods). The first failure is
/// the error.
pub async fn pairs_talk_without_nat(tb: &crate::Testbed, pods: &[PodAt<'_>]) -> Result<()> {
    let pods: Vec<PodAtIp<'_>> = pods
        .iter()
        .map(|&(ns, ip, on)| (ns, IpAddr::V4(ip), on))
        .collect();
    pairs_talk_without_nat_ip(tb, &pods).await
}

/// A pod's address of either family, as [`pairs_talk_without_nat_ip`] sees it.
pub type PodAtIp<'a> = (&'a Netns, IpAddr, usize);

/// As [`pairs_talk_without_nat`], for addresses of either family (IPv6 pings with `ping -6`).
/// Pairs are formed within one family: give a dual-stack pod once per address.
pub async fn pairs_talk_without_nat_ip(tb: &crate::Testbed, pods: &[PodAtIp<'_>]) -> Result<()> {
    let mut servers = Vec::new();
    for (ns, ip, _) in pods {
        servers.push(echo_peer_server(ns, *ip, 7000)?);
    }
    let mut verdict = Ok(());
    'pairs: for &(a_ns, a_ip, a_on) in pods {
        for &(_, b_ip, b_on) in pods
            .iter()
            .filter(|b| b.1 != a_ip && b.1.is_ipv4() == a_ip.is_ipv4())
        {
            let (from, to) = (
                format!("{a_ip} (node {a_on})"),
                format!("{b_ip} (node {b_on})"),
            );
            let target = b_ip.to_string();
            let family = if b_ip.is_ipv4() { "-4" } else { "-6" };
            let ping = ["ping", family, "-c", "1", "-W", "2", target.as_str()];
            let out = tb.exec(a_ns, &ping, Duration::from_secs(10)).await?;
            if !out.success() {
                verdict = Err(Error::Other(format!(
                    "{from} cannot ping {to}: {}",
                    out.stdout
                )));
                break 'pairs;
            }
            let seen = who_am_i(a_ns, SocketAddr::new(b_ip, 7000))?;
            if seen != a_ip.to_string() {
                verdict = Err(Error::Other(format!(
                    "{from} → {to} was NATed: the server saw {seen}"
                )));
                break 'pairs;
            }
        }
    }
    for ((ns, ip, _), s) in pods.iter().zip(servers) {
        stop_echo(ns, SocketAddr::new(*ip, 7000));
        let _ = s.join();
    }
    verdict
}

/// `GET path` from inside `ns` to `addr` (a daemon's health or status listener on the
/// namespace's own loopback, say): the status code and the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let what = format!("GET http://{addr}{path} in {}", ns.name());
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .map_err(|e| Error::io(&what, e))?;
    let io = |e| Error::io(&what, e);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(io)?;
    let mut answer = String::new();
    s.take(1 << 20).read_to_string(&mut answer).map_err(io)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("{what}: not an HTTP answer: {answer:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Other(format!("{what}: no status in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// A pod's "container" in the service tests: answers every connection on `port` with its name,
/// until dropped or its lifetime runs out.
pub struct NameServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl NameServer {
    /// Starts answering on `0.0.0.0:port` in `ns`.
    pub fn start(ns: &Netns, port: u16, name: &str, lifetime: Duration) -> Result<NameServer> {
        NameServer::start_at(ns, Ipv4Addr::UNSPECIFIED.into(), port, name, lifetime)
    }

    /// Starts answering on `ip:port` in `ns` (`::` takes both families: a dual-stack pod).
    pub fn start_at(
        ns: &Netns,
        ip: std::net::IpAddr,
        port: u16,
        name: &str,
        lifetime: Duration,
    ) -> Result<NameServer> {
        let listener = ns
            .run(|| TcpListener::bind((ip, port)))?
            .map_err(|e| Error::io("bind the name server", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set the name server non-blocking", e))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + lifetime;
            while !flag.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(NameServer { stop })
    }
}

/// Connects from `ns` to `to` and reads the whole answer (a [`NameServer`]'s name); 2 s bounds
/// the connect and the read.
pub fn ask_name(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .map_err(std::io::Error::other)?
}
