//! A testbed: one underlay bridge in its own namespace, nodes and hosts plugged into it, pods as
//! bare namespaces; all names under one prefix, all removed when the testbed is dropped.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use trellis_net::{Handle, Netns, VethSpec};

use crate::process::{self, Background, Output};
use crate::{Error, Result};

/// The underlay every node sits on: the benchmarking range, never the machine's own network.
pub const UNDERLAY: &str = "198.18.0.0/15";

/// The IPv6 underlay of dual-stack tests ([`Testbed::add_ipv6`]): a ULA /64 that exists only
/// on the test's own underlay bridge, as 198.18.0.0/15 does.
pub const UNDERLAY_V6: &str = "fd00:198:18::/64";

/// A machine on the underlay: a namespace whose `eth0` is plugged into the underlay bridge.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ns: Arc<Netns>,
    /// `eth0`'s address.
    pub ip: Ipv4Addr,
    pub net: Ipv4Net,
}

impl Node {
    /// The node's main-table routes to exactly `prefix`, in its family (an IPv4 prefix also
    /// finds routes `via inet6`).
    pub async fn routes_to(&self, prefix: IpNet) -> Result<Vec<trellis_net::Route>> {
        let family = match prefix {
            IpNet::V4(_) => trellis_net::Family::V4,
            IpNet::V6(_) => trellis_net::Family::V6,
        };
        let dst = prefix.trunc();
        Ok(self
            .ns
            .connect()?
            .routes(family, Some(trellis_net::Route::TABLE_MAIN))
            .await?
            .into_iter()
            .filter(|r| r.dst == dst)
            .collect())
    }

    /// Adds `addr` to `iface` without duplicate address detection and waits (at most 2 s)
    /// until the kernel routes it `local`, which it does from a work queue: usable when this
    /// returns, so a first packet to or from it must get through.
    pub async fn add_usable_address(&self, iface: &str, addr: IpNet) -> Result<()> {
        let h = self.ns.connect()?;
        let link = h.require_link(iface).await?;
        h.add_address_nodad(link.index, addr).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !h.is_local(addr.addr(), None).await? {
            if std::time::Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "{addr} on {iface} of {} is not usable within 2 s",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Nodes, pods and processes of one test.
pub struct Testbed {
    prefix: String,
    run_dir: PathBuf,
    /// Namespaces we made, in creation order (removed in reverse).
    namespaces: Mutex<Vec<String>>,
    background: Mutex<Vec<Background>>,
    underlay: Mutex<Option<Arc<Netns>>>,
    state: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// A testbed with a fresh prefix: `tb` + 6 hex digits, unique across concurrent tests.
    pub fn new() -> Result<Testbed> {
        Testbed::with_run_dir(Path::new(trellis_net::netns::DEFAULT_RUN_DIR))
    }

    pub fn with_run_dir(run_dir: &Path) -> Result<Testbed> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id().wrapping_mul(2654435761)
            ^ nanos
            ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(40503);
        let prefix = format!("tb{:06x}", seed & 0xff_ffff);
        let state = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .map_err(|e| Error::io("create state dir", e))?;
        Ok(Testbed {
            prefix,
            run_dir: run_dir.to_path_buf(),
            namespaces: Mutex::new(Vec::new()),
            background: Mutex::new(Vec::new()),
            underlay: Mutex::new(None),
            state,
        })
    }

    /// The prefix every name of this testbed starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A scratch directory removed with the testbed.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The full name of this testbed's namespace `short`.
    pub fn ns_name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// A bare namespace (a pod, or a host for a plugin) with `lo` up.
    pub async fn add_ns(&self, short: &str) -> Result<Arc<Netns>> {
        let name = self.ns_name(short);
        let ns = Netns::create(&self.run_dir, &name)?;
        lock(&self.namespaces).push(name);
        let h = ns.connect()?;
        let lo = h.require_link("lo").await?;
        h.set_up(lo.index).await?;
        Ok(Arc::new(ns))
    }

    async fn underlay(&self) -> Result<Arc<Netns>> {
        if let Some(u) = lock(&self.underlay).clone() {
            return Ok(u);
        }
        let ns = self.add_ns("ul").await?;
        ns.connect()?.ensure_bridge("br0", None).await?;
        *lock(&self.underlay) = Some(ns.clone());
        Ok(ns)
    }

    /// A node on the underlay: `eth0` = 198.18.0.`10+n`/15 (`n` counted from 1), forwarding on.
    pub async fn add_node(&self, short: &str, n: u8) -> Result<Node> {
        let ip = Ipv4Addr::new(198, 18, 0, 10u8.saturating_add(n));
        self.add_host(
            short,
            Ipv4Net::new(ip, 15).map_err(|e| Error::Other(e.to_string()))?,
        )
        .await
    }

    /// Gives `node` (made by [`Testbed::add_node`] with this `n`) an IPv6 address on `eth0`
    /// too: `fd00:198:18::<10+n>/64`, usable when this returns (added without duplicate
    /// address detection, then waited for — at most 2 s — until the kernel routes it `local`,
    /// which it does from a work queue). The connected /64 is the only IPv6 route it gets.
    pub async fn add_ipv6(&self, node: &Node, n: u8) -> Result<Ipv6Addr> {
        let ip = node_ipv6(n);
        trellis_net::sysctl::set(&node.ns, &[("net/ipv6/conf/eth0/accept_dad", "0")])?;
        let net = Ipv6Net::new(ip, 64).map_err(|e| Error::Other(e.to_string()))?;
        node.add_usable_address("eth0", IpNet::V6(net)).await?;
        Ok(ip)
    }

    /// A machine on the underlay with address `net` on `eth0` (e.g. an "outside" host in
    /// 203.0.113.0/24; its subnet is then reachable on the underlay bridge only through routes
    /// the test adds).
    pub async fn add_host(&self, short: &str, net: Ipv4Net) -> Result<Node> {
        if short.len() > 12 {
            return Err(Error::Other(format!(
                "host name {short:?} is too long for a link name"
            )));
        }
        let underlay = self.underlay().await?;
        let ns = self.add_ns(short).await?;
        let ul = underlay.connect()?;
        let port = format!("v-{short}");
        let spec = VethSpec {
            name: &port,
            peer_name: "eth0",
            peer_ns: Some(&ns),
            mtu: None,
            mac: None,
            peer_mac: None,
        };
        let port_link = ul.add_veth(&spec).await?;
        let br = ul.require_link("br0").await?;
        ul.set_controller(port_link.index, Some(br.index)).await?;
        ul.set_up(port_link.index).await?;
        let h = ns.connect()?;
        let eth0 = h.require_link("eth0").await?;
        h.ensure_address(eth0.index, IpNet::V4(net)).await?;
        h.set_up(eth0.index).await?;
        trellis_net::sysctl::set(&ns, &[("net.ipv4.ip_forward", "1")])?;
        Ok(Node {
            name: short.to_string(),
            ns,
            ip: net.addr(),
            net,
        })
    }

    /// A handle to the underlay namespace (for tests that add hosts or capture traffic).
    pub async fn underlay_handle(&self) -> Result<Handle> {
        Ok(self.underlay().await?.connect()?)
    }

    /// Runs a command in `ns` with a time limit.
    pub async fn exec(&self, ns: &Netns, argv: &[&str], limit: Duration) -> Result<Output> {
        process::exec(ns, argv, limit, &self.prefix).await
    }

    /// Runs a command in `ns` and returns its stdout; a non-zero exit is an error.
    pub async fn exec_ok(&self, ns: &Netns, argv: &[&str], limit: Duration) -> Result<String> {
        process::exec_ok(ns, argv, limit, &self.prefix).await
    }

    /// Runs a command in `ns` with `stdin`.
    pub async fn exec_stdin(
        &self,
        ns: &Netns,
        argv: &[&str],
        stdin: &[u8],
        limit: Duration,
    ) -> Result<Output> {
        process::exec_with_stdin(ns, argv, Some(stdin), limit, &self.prefix).await
    }

    /// Starts a background process in `ns` that lives at most `lifetime` (and no longer than the
    /// testbed). Returns its process-group id.
    pub fn spawn(&self, ns: &Netns, argv: &[&str], lifetime: Duration) -> Result<i32> {
        let log = self
            .state_dir()
            .join(format!("bg-{}.log", lock(&self.background).len()));
        let bg = Background::start(ns, argv, lifetime, &self.prefix, Some(&log))?;
        let pid = bg.pid();
        lock(&self.background).push(bg);
        Ok(pid)
    }

    /// What a background process printed so far.
    pub fn log_of(&self, pid: i32) -> String {
        let index = lock(&self.background).iter().position(|b| b.pid() == pid);
        index
            .and_then(|i| {
                std::fs::read_to_string(self.state_dir().join(format!("bg-{i}.log"))).ok()
            })
            .unwrap_or_default()
    }

    /// Stops a background process (the whole group).
    pub fn kill(&self, pid: i32) {
        if let Some(bg) = lock(&self.background).iter_mut().find(|b| b.pid() == pid) {
            bg.kill();
        }
    }

    /// Whether a background process is still running.
    pub fn running(&self, pid: i32) -> bool {
        lock(&self.background)
            .iter_mut()
            .find(|b| b.pid() == pid)
            .is_some_and(|b| matches!(b.child.try_wait(), Ok(None)))
    }

    /// Sends a signal to a background process group.
    pub fn signal(&self, pid: i32, signal: nix::sys::signal::Signal) {
        if let Some(bg) = lock(&self.background).iter().find(|b| b.pid() == pid) {
            bg.signal(signal);
        }
    }

    /// A loopback port of the test's own namespace that leads to `target` inside `ns`: each
    /// connection is relayed through a socket opened in `ns`. It lets the test reach a server in
    /// the testbed (an API server on the underlay) without any route into the testbed. The relay
    /// ends with the testbed's runtime.
    pub async fn forward(
        &self,
        ns: &Arc<Netns>,
        target: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("bind a relay port", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("relay address", e))?;
        let ns = ns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let ns = ns.clone();
                tokio::spawn(async move {
                    let outbound = ns.run(move || {
                        let s =
                            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                        s.set_nonblocking(true)?;
                        Ok::<_, std::io::Error>(s)
                    });
                    let Ok(Ok(outbound)) = outbound else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(local)
    }

    /// Removes a namespace of this testbed now (e.g. "the pod is gone before DEL").
    pub fn delete_ns(&self, ns: &Netns) -> Result<()> {
        let name = ns.name();
        Netns::delete(&self.run_dir, &name)?;
        lock(&self.namespaces).retain(|n| *n != name);
        Ok(())
    }

    fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for bg in lock(&self.background).iter_mut() {
            bg.kill();
        }
        let names: Vec<String> = lock(&self.namespaces).drain(..).rev().collect();
        for name in names {
            if let Err(e) = Netns::delete(&self.run_dir, &name) {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!(
                "testbed {} cleanup problems: {}",
                self.prefix,
                problems.join("; ")
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not stop cleanup.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The IPv6 address [`Testbed::add_ipv6`] gives node `n`: `fd00:198:18::<10+n>` (the same
/// last number as its IPv4 address, in hex digits that read alike: n=2 → `…::12`).
pub fn node_ipv6(n: u8) -> Ipv6Addr {
    let last = 10u16.saturating_add(u16::from(n));
    // 12 decimal reads as 0x12: the digits of the IPv4 address's last octet.
    let hexlike = (last / 100) * 0x100 + ((last / 10) % 10) * 0x10 + last % 10;
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, hexlike)
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ipv6_addresses_read_like_their_ipv4_ones() {
        assert_eq!(super::node_ipv6(2).to_string(), "fd00:198:18::12");
        assert_eq!(super::node_ipv6(4).to_string(), "fd00:198:18::14");
        assert_eq!(super::node_ipv6(95).to_string(), "fd00:198:18::105");
    }
}
