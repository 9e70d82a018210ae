//! FRR (8.4, Debian's `frr`) as a real BGP peer inside a testbed node: what operators' top-of-rack
//! routers run (SONiC, Cumulus).
//!
//! - [`FrrConfig`] writes `zebra`, `bgpd` and `bfdd` configurations: router id, `router bgp`
//!   with neighbours by address or by interface (`neighbor ll0 interface remote-as external`,
//!   RFC 8950 unnumbered), `network` statements of both families (IPv6 ones with every
//!   address neighbour activated for IPv6 unicast), MD5 passwords, BFD through a `bfdd`
//!   profile, graceful restart.
//! - [`Frr`] runs the three daemons in the foreground under the testbed's [`Testbed::spawn`]
//!   (bounded lifetime, own process group), each with explicit paths: `-f` config, `-i` pid
//!   file, `--vty_socket` directory, `-z` zserv socket, `--bfdctl` (bfdd), `-P 0` (no vty TCP
//!   port), so nothing touches `/var/run/frr` or `/etc/frr`. They run as the `frr` user the
//!   package creates (FRR refuses root unless root is in `frrvty`), in a directory of their own
//!   owned by it, removed on drop after the daemons are killed by their process groups.
//!   [`Frr::vtysh`] runs `vtysh --vty_socket <dir> -d <daemon>`; [`Frr::json`] parses
//!   `… json` answers.
//!
//! Everything stays inside the testbed's namespaces.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::bed::{Node, Testbed};
use crate::{Error, Result};

/// The route protocol number zebra gives BGP routes in the kernel (`proto bgp`).
pub const PROTO_FRR_BGP: u8 = 186;

/// Where Debian's `frr` puts its daemons.
pub const FRR_DIR: &str = "/usr/lib/frr";

/// Who a neighbour is: an address, or an interface (unnumbered: the peer's link-local address
/// on it, IPv4 routes with IPv6 next hops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrrPeer {
    Address(IpAddr),
    Interface(String),
}

/// One `neighbor` of `router bgp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrNeighbor {
    pub peer: FrrPeer,
    /// `65001`, `external` or `internal`.
    pub remote_as: String,
    pub password: Option<String>,
    /// `neighbor … bfd profile trellis` (needs [`FrrConfig::bfd`]).
    pub bfd: bool,
    /// `neighbor … capability extended-nexthop` (RFC 8950; FRR's default on interface peers).
    pub extended_nexthop: bool,
}

impl FrrNeighbor {
    pub fn new(address: impl Into<IpAddr>, remote_as: u32) -> FrrNeighbor {
        FrrNeighbor {
            peer: FrrPeer::Address(address.into()),
            remote_as: remote_as.to_string(),
            password: None,
            bfd: false,
            extended_nexthop: false,
        }
    }

    /// `neighbor IFACE interface remote-as REMOTE_AS` (`external`, `internal` or a number).
    pub fn interface(iface: &str, remote_as: &str) -> FrrNeighbor {
        FrrNeighbor {
            peer: FrrPeer::Interface(iface.to_string()),
            remote_as: remote_as.to_string(),
            password: None,
            bfd: false,
            extended_nexthop: true,
        }
    }

    pub fn password(mut self, password: &str) -> FrrNeighbor {
        self.password = Some(password.to_string());
        self
    }

    pub fn bfd(mut self) -> FrrNeighbor {
        self.bfd = true;
        self
    }

    /// The key FRR's `show bgp neighbors json` uses: the address or the interface name.
    pub fn key(&self) -> String {
        match &self.peer {
            FrrPeer::Address(a) => a.to_string(),
            FrrPeer::Interface(i) => i.clone(),
        }
    }
}

/// Configuration of one FRR router (zebra, bgpd, bfdd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrConfig {
    pub hostname: String,
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// Hold time (keepalive a third of it).
    pub hold_time: u16,
    pub neighbors: Vec<FrrNeighbor>,
    /// `network` statements of `address-family ipv4 unicast` (with `no bgp network
    /// import-check`, so they are announced without a route of their own).
    pub networks: Vec<Ipv4Net>,
    /// `network` statements of `address-family ipv6 unicast`; when there are any, every
    /// neighbour by address is activated for IPv6 unicast too.
    pub networks6: Vec<Ipv6Net>,
    /// `bgp graceful-restart` (restarting speaker and helper) with `preserve-fw-state` (the F
    /// bit); off: FRR's default, helper only.
    pub graceful_restart: bool,
    /// A `bfdd` profile `trellis` with this interval (receive and transmit) and multiplier.
    pub bfd: Option<(Duration, u8)>,
}

impl FrrConfig {
    /// `router bgp asn` on `node` (router id its address), hold time 6 s, nothing else.
    pub fn new(node: &Node, asn: u32) -> FrrConfig {
        FrrConfig {
            hostname: node.name.clone(),
            router_id: node.ip,
            asn,
            hold_time: crate::bird::TEST_HOLD_TIME,
            neighbors: Vec::new(),
            networks: Vec::new(),
            networks6: Vec::new(),
            graceful_restart: false,
            bfd: None,
        }
    }

    pub fn neighbor(mut self, n: FrrNeighbor) -> FrrConfig {
        self.neighbors.push(n);
        self
    }

    pub fn network(mut self, prefix: Ipv4Net) -> FrrConfig {
        self.networks.push(prefix.trunc());
        self
    }

    pub fn network6(mut self, prefix: Ipv6Net) -> FrrConfig {
        self.networks6.push(prefix.trunc());
        self
    }

    pub fn graceful_restart(mut self) -> FrrConfig {
        self.graceful_restart = true;
        self
    }

    pub fn bfd(mut self, interval: Duration, multiplier: u8) -> FrrConfig {
        self.bfd = Some((interval, multiplier));
        self
    }

    pub fn render_zebra(&self, log: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "hostname {}", self.hostname);
        let _ = writeln!(c, "log file {}", log.display());
        let _ = writeln!(c, "log timestamp precision 3");
        c
    }

    pub fn render_bfdd(&self, log: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "hostname {}", self.hostname);
        let _ = writeln!(c, "log file {}", log.display());
        let _ = writeln!(c, "log timestamp precision 3");
        if let Some((interval, multiplier)) = self.bfd {
            let ms = interval.as_millis();
            let _ = writeln!(c, "bfd");
            let _ = writeln!(c, " profile trellis");
            let _ = writeln!(c, "  detect-multiplier {multiplier}");
            let _ = writeln!(c, "  receive-interval {ms}");
            let _ = writeln!(c, "  transmit-interval {ms}");
            let _ = writeln!(c, " exit");
            let _ = writeln!(c, "exit");
        }
        c
    }

    pub fn render_bgpd(&self, log: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "frr defaults traditional");
        let _ = writeln!(c, "hostname {}", self.hostname);
        let _ = writeln!(c, "log file {}", log.display());
        let _ = writeln!(c, "log timestamp precision 3");
        let _ = writeln!(c, "debug bgp neighbor-events");
        let _ = writeln!(c, "debug bgp graceful-restart");
        let _ = writeln!(c, "debug bgp updates");
        let _ = writeln!(c, "router bgp {}", self.asn);
        let _ = writeln!(c, " bgp router-id {}", self.router_id);
        // RFC 8212 (FRR's default since 7.4): eBGP needs policies; announce without a route.
        let _ = writeln!(c, " no bgp ebgp-requires-policy");
        let _ = writeln!(c, " no bgp network import-check");
        if self.graceful_restart {
            let _ = writeln!(c, " bgp graceful-restart");
            let _ = writeln!(c, " bgp graceful-restart preserve-fw-state");
        }
        let hold = self.hold_time;
        let _ = writeln!(c, " timers bgp {} {hold}", (hold / 3).max(1));
        for n in &self.neighbors {
            let key = n.key();
            match &n.peer {
                FrrPeer::Address(_) => {
                    let _ = writeln!(c, " neighbor {key} remote-as {}", n.remote_as);
                }
                FrrPeer::Interface(_) => {
                    let _ = writeln!(c, " neighbor {key} interface remote-as {}", n.remote_as);
                }
            }
            let _ = writeln!(c, " neighbor {key} timers connect 1");
            let _ = writeln!(c, " neighbor {key} advertisement-interval 0");
            if let Some(pw) = &n.password {
                let _ = writeln!(c, " neighbor {key} password {pw}");
            }
            if n.bfd {
                let _ = writeln!(c, " neighbor {key} bfd");
                let _ = writeln!(c, " neighbor {key} bfd profile trellis");
            }
            if n.extended_nexthop {
                let _ = writeln!(c, " neighbor {key} capability extended-nexthop");
            }
        }
        let _ = writeln!(c, " address-family ipv4 unicast");
        for p in &self.networks {
            let _ = writeln!(c, "  network {p}");
        }
        let _ = writeln!(c, " exit-address-family");
        if !self.networks6.is_empty() {
            let _ = writeln!(c, " address-family ipv6 unicast");
            for p in &self.networks6 {
                let _ = writeln!(c, "  network {p}");
            }
            for n in self
                .neighbors
                .iter()
                .filter(|n| matches!(n.peer, FrrPeer::Address(_)))
            {
                let _ = writeln!(c, "  neighbor {} activate", n.key());
            }
            let _ = writeln!(c, " exit-address-family");
        }
        let _ = writeln!(c, "exit");
        c
    }
}

/// The daemons of one FRR router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Zebra,
    Bgpd,
    Bfdd,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Zebra => "zebra",
            Daemon::Bgpd => "bgpd",
            Daemon::Bfdd => "bfdd",
        }
    }
}

/// FRR (zebra, bgpd, bfdd when configured) inside a node's namespace; killed when dropped.
pub struct Frr<'a> {
    tb: &'a Testbed,
    pub node: Node,
    dir: tempfile::TempDir,
    config: FrrConfig,
    lifetime: Duration,
    pids: Vec<(Daemon, i32)>,
    vtysh: PathBuf,
}

impl<'a> Frr<'a> {
    /// Starts zebra, then bgpd (and bfdd with [`FrrConfig::bfd`]) on `node`, and waits until
    /// each answers on its vty socket. Fails the test, naming the package, without `frr`.
    pub async fn start(
        tb: &'a Testbed,
        node: &Node,
        config: FrrConfig,
        lifetime: Duration,
    ) -> Result<Frr<'a>> {
        for d in ["zebra", "bgpd", "bfdd"] {
            let p = Path::new(FRR_DIR).join(d);
            assert!(
                p.is_file(),
                "this test needs {} (Debian package frr); .ci/run installs it",
                p.display()
            );
        }
        let vtysh = crate::require_tool("vtysh", "frr");
        let user = nix::unistd::User::from_name("frr")
            .map_err(|e| Error::Other(format!("look up the frr user: {e}")))?
            .ok_or_else(|| {
                Error::Other("no `frr` user (Debian package frr creates it)".to_string())
            })?;
        // Outside the testbed's state directory (root's, 0700): the daemons run as `frr`.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-frr-{}-", tb.prefix(), node.name))
            .tempdir()
            .map_err(|e| Error::io("create FRR's directory", e))?;
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
            .map_err(|e| Error::Other(format!("chown {}: {e}", dir.path().display())))?;
        let mut f = Frr {
            tb,
            node: node.clone(),
            dir,
            config,
            lifetime,
            pids: Vec::new(),
            vtysh,
        };
        f.write_configs()?;
        f.launch(Daemon::Zebra).await?;
        if f.config.bfd.is_some() {
            f.launch(Daemon::Bfdd).await?;
        }
        f.launch(Daemon::Bgpd).await?;
        Ok(f)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> &FrrConfig {
        &self.config
    }

    fn path(&self, daemon: Daemon, ext: &str) -> PathBuf {
        self.dir().join(format!("{}.{ext}", daemon.name()))
    }

    fn write_configs(&self) -> Result<()> {
        for d in [Daemon::Zebra, Daemon::Bgpd, Daemon::Bfdd] {
            let log = self.path(d, "log");
            let text = match d {
                Daemon::Zebra => self.config.render_zebra(&log),
                Daemon::Bgpd => self.config.render_bgpd(&log),
                Daemon::Bfdd => self.config.render_bfdd(&log),
            };
            let conf = self.path(d, "conf");
            std::fs::write(&conf, text)
                .map_err(|e| Error::io(format!("write {}", conf.display()), e))?;
        }
        Ok(())
    }

    /// Writes `config` for the daemons' next start (not applied to running ones).
    pub fn set_config(&mut self, config: FrrConfig) -> Result<()> {
        self.config = config;
        self.write_configs()
    }

    /// Starts `daemon` and waits (bounded) until it answers on its vty socket.
    pub async fn launch(&mut self, daemon: Daemon) -> Result<()> {
        let bin = Path::new(FRR_DIR).join(daemon.name());
        let (conf, pid, dir) = (
            self.path(daemon, "conf"),
            self.path(daemon, "pid"),
            self.dir().to_path_buf(),
        );
        let zserv = self.dir().join("zserv.api");
        let bfdctl = self.dir().join("bfdd.sock");
        let mut argv: Vec<String> = [
            path_str(&bin)?,
            "-u",
            "frr",
            "-g",
            "frr",
            "-P",
            "0",
            "-f",
            path_str(&conf)?,
            "-i",
            path_str(&pid)?,
            "--vty_socket",
            path_str(&dir)?,
            "-z",
            path_str(&zserv)?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if daemon == Daemon::Bfdd {
            argv.push("--bfdctl".into());
            argv.push(path_str(&bfdctl)?.to_string());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let pid = self.tb.spawn(&self.node.ns, &argv, self.lifetime)?;
        self.pids.retain(|(d, _)| *d != daemon);
        self.pids.push((daemon, pid));
        self.wait_ready(daemon, Duration::from_secs(15)).await
    }

    async fn wait_ready(&self, daemon: Daemon, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let vty = self.path(daemon, "vty");
        loop {
            if !self.running(daemon) {
                return Err(Error::Other(format!(
                    "{} on {} exited:\n{}",
                    daemon.name(),
                    self.node.name,
                    self.log(daemon)
                )));
            }
            if vty.exists() && self.vtysh(daemon, &["show version"]).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: format!("{} on {} answering vtysh", daemon.name(), self.node.name),
                    secs: limit.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running(&self, daemon: Daemon) -> bool {
        self.pids
            .iter()
            .find(|(d, _)| *d == daemon)
            .is_some_and(|(_, p)| self.tb.running(*p))
    }

    /// Kills `daemon` (SIGKILL to its process group: no NOTIFICATION to its peers).
    pub fn kill(&mut self, daemon: Daemon) {
        if let Some(i) = self.pids.iter().position(|(d, _)| *d == daemon) {
            let (_, pid) = self.pids.remove(i);
            self.tb.kill(pid);
        }
    }

    /// `daemon`'s log file and what it printed.
    pub fn log(&self, daemon: Daemon) -> String {
        let mut s = std::fs::read_to_string(self.path(daemon, "log")).unwrap_or_default();
        if let Some((_, pid)) = self.pids.iter().find(|(d, _)| *d == daemon) {
            s.push_str(&self.tb.log_of(*pid));
        }
        s
    }

    /// The last `lines` lines of `daemon`'s log.
    pub fn log_tail(&self, daemon: Daemon, lines: usize) -> String {
        let log = self.log(daemon);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `vtysh --vty_socket <dir> -d <daemon> -c <command>…`: its output.
    pub async fn vtysh(&self, daemon: Daemon, commands: &[&str]) -> Result<String> {
        let dir = self.dir().to_path_buf();
        let mut argv = vec![
            path_str(&self.vtysh)?,
            "--vty_socket",
            path_str(&dir)?,
            "-d",
            daemon.name(),
        ];
        for c in commands {
            argv.push("-c");
            argv.push(c);
        }
        self.tb
            .exec_ok(&self.node.ns, &argv, Duration::from_secs(10))
            .await
    }

    /// A `… json` command of bgpd (or another daemon), parsed.
    pub async fn json(&self, daemon: Daemon, command: &str) -> Result<serde_json::Value> {
        let out = self.vtysh(daemon, &[command]).await?;
        serde_json::from_str(&out)
            .map_err(|e| Error::Other(format!("`{command}` is not JSON ({e}): {out}")))
    }

    /// Applies configuration commands (`configure terminal`, then `lines`) to bgpd.
    pub async fn configure(&self, lines: &[&str]) -> Result<String> {
        let mut commands = vec!["configure terminal"];
        commands.extend_from_slice(lines);
        self.vtysh(Daemon::Bgpd, &commands).await
    }

    /// bgpd's `show bgp neighbors json` entry of `key` (an address or an interface name).
    pub async fn neighbor(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let v = self.json(Daemon::Bgpd, "show bgp neighbors json").await?;
        Ok(v.get(key).cloned())
    }

    /// The BGP state FRR shows for neighbour `key` (`Established`, `Active`, …).
    pub async fn state(&self, key: &str) -> Result<String> {
        Ok(self
            .neighbor(key)
            .await?
            .and_then(|n| n["bgpState"].as_str().map(str::to_string))
            .unwrap_or_default())
    }

    /// Waits (bounded) until the session with `key` is Established; returns how long it took.
    pub async fn wait_established(&self, key: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let state = self.state(key).await?;
            if state == "Established" {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(Error::Other(format!(
                    "FRR on {}: neighbor {key} not Established within {:.0} s (last: {state:?})\n{}",
                    self.node.name,
                    limit.as_secs_f64(),
                    self.log_tail(Daemon::Bgpd, 40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The paths of `prefix` in bgpd's unicast table of its family (`show bgp ipv4|ipv6
    /// unicast PREFIX json`'s `paths`; empty when FRR has none).
    pub async fn paths(&self, prefix: impl Into<IpNet>) -> Result<Vec<serde_json::Value>> {
        let prefix = prefix.into().trunc();
        let afi = match prefix {
            IpNet::V4(_) => "ipv4",
            IpNet::V6(_) => "ipv6",
        };
        let v = self
            .json(
                Daemon::Bgpd,
                &format!("show bgp {afi} unicast {prefix} json"),
            )
            .await?;
        Ok(v["paths"].as_array().cloned().unwrap_or_default())
    }

    /// Waits (bounded) until `check` holds for the paths of `prefix`; returns them.
    pub async fn wait_paths(
        &self,
        prefix: impl Into<IpNet> + Copy + std::fmt::Display,
        limit: Duration,
        what: &str,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let start = Instant::now();
        loop {
            let paths = self.paths(prefix).await?;
            if check(&paths) {
                return Ok(paths);
            }
            if start.elapsed() > limit {
                return Err(Error::Other(format!(
                    "FRR on {}: {what}: not within {:.0} s; paths of {prefix}: {paths:?}\n{}",
                    self.node.name,
                    limit.as_secs_f64(),
                    self.log_tail(Daemon::Bgpd, 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Frr<'_> {
    fn drop(&mut self) {
        for (_, pid) in self.pids.drain(..) {
            self.tb.kill(pid);
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Other(format!("path {} is not UTF-8", p.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use trellis_net::Netns;

    #[test]
    fn renders_neighbors_by_address_and_by_interface() {
        let node = Node {
            name: "n1".into(),
            ns: Arc::new(Netns::current().unwrap()),
            ip: Ipv4Addr::new(198, 18, 0, 11),
            net: "198.18.0.11/15".parse().unwrap(),
        };
        let c = FrrConfig::new(&node, 65001)
            .network("10.46.1.7/24".parse().unwrap())
            .graceful_restart()
            .bfd(Duration::from_millis(300), 3)
            .neighbor(
                FrrNeighbor::new(Ipv4Addr::new(198, 18, 0, 12), 64512)
                    .password("s3cret")
                    .bfd(),
            )
            .neighbor(FrrNeighbor::interface("ll0", "external"));
        let bgpd = c.render_bgpd(Path::new("/tmp/b.log"));
        assert!(bgpd.contains("router bgp 65001\n bgp router-id 198.18.0.11\n"));
        assert!(bgpd.contains(" neighbor 198.18.0.12 remote-as 64512\n"));
        assert!(bgpd.contains(" neighbor 198.18.0.12 password s3cret\n"));
        assert!(bgpd.contains(" neighbor 198.18.0.12 bfd profile trellis\n"));
        assert!(bgpd.contains(" neighbor ll0 interface remote-as external\n"));
        assert!(bgpd.contains(" neighbor ll0 capability extended-nexthop\n"));
        assert!(bgpd.contains("  network 10.46.1.0/24\n"));
        assert!(bgpd.contains(" bgp graceful-restart\n"));
        assert!(bgpd.contains(" timers bgp 2 6\n"));
        let bfdd = c.render_bfdd(Path::new("/tmp/f.log"));
        assert!(bfdd.contains("  receive-interval 300\n"), "{bfdd}");
    }

    #[test]
    fn ipv6_networks_activate_the_address_neighbours_for_ipv6_unicast() {
        let node = Node {
            name: "n1".into(),
            ns: Arc::new(Netns::current().unwrap()),
            ip: Ipv4Addr::new(198, 18, 0, 11),
            net: "198.18.0.11/15".parse().unwrap(),
        };
        let plain = FrrConfig::new(&node, 64512)
            .neighbor(FrrNeighbor::new(Ipv4Addr::new(198, 18, 0, 12), 64512));
        assert!(
            !plain
                .render_bgpd(Path::new("/tmp/b.log"))
                .contains("ipv6 unicast")
        );
        let v6: IpAddr = "fd00:198:18::12".parse().unwrap();
        let bgpd = plain
            .network6("fd00:10:245::7/122".parse().unwrap())
            .neighbor(FrrNeighbor::new(v6, 64512))
            .neighbor(FrrNeighbor::interface("ll0", "internal"))
            .render_bgpd(Path::new("/tmp/b.log"));
        let af6 = bgpd
            .split(" address-family ipv6 unicast\n")
            .nth(1)
            .and_then(|rest| rest.split(" exit-address-family").next())
            .unwrap_or_else(|| panic!("no ipv6 unicast section:\n{bgpd}"));
        assert_eq!(
            af6,
            "  network fd00:10:245::/122\n  neighbor 198.18.0.12 activate\n  neighbor fd00:198:18::12 activate\n"
        );
    }
}
