//! BIRD 2 as a real BGP peer, and our own `trellis bgp-agent`, each inside a testbed node.
//!
//! - [`BirdConfig`] writes a BIRD configuration: router id, a kernel protocol that exports the
//!   BGP routes BIRD selects into the node namespace's main table (`proto bird`), a static
//!   protocol with blackhole routes to announce, and `protocol bgp` sessions (iBGP or eBGP, route
//!   reflector clients, hold time, passive).
//! - [`Bird`] runs `bird -f` under the testbed's [`Testbed::spawn`] (bounded lifetime, own
//!   process group) with its config, control socket, pid file and log under the testbed's state
//!   directory; it is killed when dropped. [`Bird::birdc`] runs `birdc -s <socket>`;
//!   [`Bird::protocols`] and [`Bird::routes`] parse `show protocols` and `show route`.
//! - [`Agent`] runs `trellis bgp-agent --standalone` the same way and reads its status API.
//! - [`kernel_routes`] and [`wait_kernel_route`] look at what actually reached a node's kernel.
//!
//! Everything stays inside the testbed's namespaces and its underlay (198.18.0.0/15).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use trellis_net::{Family, Netns, Route};

use crate::bed::{Node, Testbed};
use crate::{Error, Result};

/// The route protocol number BIRD's kernel protocol gives its routes (`proto bird`).
pub const PROTO_BIRD: u8 = 12;

/// The default hold time of these tests: short, so 3× hold time is 18 s.
pub const TEST_HOLD_TIME: u16 = 6;

/// One `protocol bgp` of a BIRD configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdPeer {
    /// The protocol's name in BIRD (`show protocols`): letters, digits, `_`.
    pub name: String,
    /// The neighbour's address: an IPv6 one makes the session run over IPv6 (from
    /// [`BirdConfig::ipv6`]).
    pub address: IpAddr,
    pub asn: u32,
    /// Wait for the peer to connect.
    pub passive: bool,
    /// A route-reflector client of this BIRD.
    pub rr_client: bool,
    /// `next hop self` (iBGP: announce our own address instead of the route's next hop).
    pub next_hop_self: bool,
    /// Overrides the config's hold time.
    pub hold_time: Option<u16>,
    /// TCP MD5 password (`password "…"`).
    pub password: Option<String>,
    /// `bfd on`: the session follows a BFD session (needs [`BirdConfig::bfd`]).
    pub bfd: bool,
    /// The interface of a link-local `address` (`neighbor fe80::…%IFACE`): an unnumbered
    /// session, from BIRD's link-local address on it.
    pub interface: Option<String>,
    /// `extended next hop on|off` in the `ipv4` channel (RFC 8950: IPv4 routes with IPv6 next
    /// hops). Set, the channel gets no `next hop address` of its own over an IPv6 session;
    /// None: BIRD's default (off), with the node's IPv4 address as next hop.
    pub extended_next_hop: Option<bool>,
}

impl BirdPeer {
    /// An active peer with `next hop self` (what a Calico node's BIRD does).
    pub fn new(name: &str, address: impl Into<IpAddr>, asn: u32) -> BirdPeer {
        BirdPeer {
            name: name.to_string(),
            address: address.into(),
            asn,
            passive: false,
            rr_client: false,
            next_hop_self: true,
            hold_time: None,
            password: None,
            bfd: false,
            interface: None,
            extended_next_hop: None,
        }
    }

    /// `extended next hop on|off` in the `ipv4` channel (see [`BirdPeer::extended_next_hop`]).
    pub fn extended_next_hop(mut self, on: bool) -> BirdPeer {
        self.extended_next_hop = Some(on);
        self
    }

    /// An unnumbered session: `address` is link-local, on BIRD's interface `iface`.
    pub fn on_interface(mut self, iface: &str) -> BirdPeer {
        self.interface = Some(iface.to_string());
        self
    }

    /// `bfd on`: a BFD Down takes the session down.
    pub fn bfd(mut self) -> BirdPeer {
        self.bfd = true;
        self
    }

    /// Signs the session with TCP MD5 (RFC 2385).
    pub fn password(mut self, password: &str) -> BirdPeer {
        self.password = Some(password.to_string());
        self
    }

    /// A route-reflector client: its routes are reflected with their next hop unchanged.
    pub fn rr_client(mut self) -> BirdPeer {
        self.rr_client = true;
        self.next_hop_self = false;
        self
    }

    pub fn passive(mut self) -> BirdPeer {
        self.passive = true;
        self
    }
}

/// A BIRD 2 configuration for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdConfig {
    pub router_id: Ipv4Addr,
    /// The source address of every session (the node's underlay address).
    pub local_address: Ipv4Addr,
    pub asn: u32,
    /// Proposed hold time (keepalive is a third of it).
    pub hold_time: u16,
    /// Export the BGP routes BIRD selects into the namespace's main table.
    pub kernel_export: bool,
    /// Also export the static (blackhole) routes into the kernel, as Calico's BIRD does for a
    /// node's own blocks.
    pub kernel_export_static: bool,
    /// Prefixes announced from `protocol static` as blackhole routes.
    pub statics: Vec<Ipv4Net>,
    pub peers: Vec<BirdPeer>,
    /// Makes BIRD a route reflector with this cluster id (clients are [`BirdPeer::rr_client`]).
    pub rr_cluster_id: Option<Ipv4Addr>,
    /// `graceful restart` on BIRD's sessions (BIRD's default is `aware`).
    pub graceful_restart: bool,
    /// `protocol bfd` with this interval (min rx and min tx) and multiplier on every
    /// interface.
    pub bfd: Option<(Duration, u8)>,
    /// IPv6 unicast too, with this node address as the next hop of what BIRD announces: an
    /// `ipv6` channel on every session, `kernel6` exporting learned IPv6 routes, `announce6`
    /// for [`BirdConfig::announce6`]'s prefixes. Also the source of the sessions to IPv6
    /// neighbours.
    pub ipv6: Option<Ipv6Addr>,
    /// IPv6 prefixes announced from `protocol static announce6` as blackhole routes.
    pub statics6: Vec<Ipv6Net>,
}

impl BirdConfig {
    /// A configuration for `node` in `asn`: router id and session source = the node's address,
    /// hold time [`TEST_HOLD_TIME`], kernel export on, nothing announced, no peers.
    pub fn new(node: &Node, asn: u32) -> BirdConfig {
        BirdConfig {
            router_id: node.ip,
            local_address: node.ip,
            asn,
            hold_time: TEST_HOLD_TIME,
            kernel_export: true,
            kernel_export_static: false,
            statics: Vec::new(),
            peers: Vec::new(),
            rr_cluster_id: None,
            graceful_restart: true,
            bfd: None,
            ipv6: None,
            statics6: Vec::new(),
        }
    }

    /// Carries IPv6 unicast too, announcing with `next_hop` (the node's IPv6 address).
    pub fn ipv6(mut self, next_hop: Ipv6Addr) -> BirdConfig {
        self.ipv6 = Some(next_hop);
        self
    }

    /// Announces an IPv6 prefix (needs [`BirdConfig::ipv6`]).
    pub fn announce6(mut self, prefix: Ipv6Net) -> BirdConfig {
        self.statics6.push(prefix.trunc());
        self
    }

    /// Runs `protocol bfd` with `interval` (min rx and min tx) and `multiplier`.
    pub fn bfd(mut self, interval: Duration, multiplier: u8) -> BirdConfig {
        self.bfd = Some((interval, multiplier));
        self
    }

    pub fn peer(mut self, peer: BirdPeer) -> BirdConfig {
        self.peers.push(peer);
        self
    }

    pub fn announce(mut self, prefix: Ipv4Net) -> BirdConfig {
        self.statics.push(prefix.trunc());
        self
    }

    pub fn hold_time(mut self, secs: u16) -> BirdConfig {
        self.hold_time = secs;
        self
    }

    pub fn route_reflector(mut self, cluster_id: Ipv4Addr) -> BirdConfig {
        self.rr_cluster_id = Some(cluster_id);
        self
    }

    /// The configuration file's text, logging to `log`.
    pub fn render(&self, log: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "# written by netns-testbed's bird harness");
        let _ = writeln!(c, "log \"{}\" all;", log.display());
        let _ = writeln!(c, "debug protocols {{ states, events }};");
        let _ = writeln!(c, "timeformat protocol iso long;");
        let _ = writeln!(c, "timeformat route iso long;");
        let _ = writeln!(c, "router id {};", self.router_id);
        let _ = writeln!(c, "protocol device {{ scan time 10; }}");
        if self.kernel_export {
            let _ = writeln!(c, "protocol kernel kernel4 {{");
            let sources = if self.kernel_export_static {
                "source ~ [RTS_BGP, RTS_STATIC]"
            } else {
                "source = RTS_BGP"
            };
            let _ = writeln!(c, "  ipv4 {{ import none; export where {sources}; }};");
            let _ = writeln!(c, "  scan time 10;");
            let _ = writeln!(c, "}}");
            if self.ipv6.is_some() {
                let _ = writeln!(c, "protocol kernel kernel6 {{");
                let _ = writeln!(c, "  ipv6 {{ import none; export where {sources}; }};");
                let _ = writeln!(c, "  scan time 10;");
                let _ = writeln!(c, "}}");
            }
        }
        if let Some((interval, multiplier)) = self.bfd {
            let ms = interval.as_millis();
            let _ = writeln!(c, "protocol bfd bfd1 {{");
            let _ = writeln!(c, "  interface \"*\" {{");
            let _ = writeln!(c, "    min rx interval {ms} ms;");
            let _ = writeln!(c, "    min tx interval {ms} ms;");
            let _ = writeln!(c, "    multiplier {multiplier};");
            let _ = writeln!(c, "  }};");
            let _ = writeln!(c, "}}");
        }
        let _ = writeln!(c, "protocol static announce4 {{");
        let _ = writeln!(c, "  ipv4;");
        for prefix in &self.statics {
            let _ = writeln!(c, "  route {prefix} blackhole;");
        }
        let _ = writeln!(c, "}}");
        if self.ipv6.is_some() {
            let _ = writeln!(c, "protocol static announce6 {{");
            let _ = writeln!(c, "  ipv6;");
            for prefix in &self.statics6 {
                let _ = writeln!(c, "  route {prefix} blackhole;");
            }
            let _ = writeln!(c, "}}");
        }
        for p in &self.peers {
            let ibgp = p.asn == self.asn;
            let hold = p.hold_time.unwrap_or(self.hold_time);
            let _ = writeln!(c, "protocol bgp {} {{", p.name);
            // A session over IPv6 runs from the node's IPv6 address; it is then the next hop of
            // the IPv6 routes BIRD announces, and IPv4 ones need theirs named.
            let over_v6 = p.address.is_ipv6();
            let local: IpAddr = match (over_v6, self.ipv6) {
                (true, Some(v6)) => v6.into(),
                _ => self.local_address.into(),
            };
            match &p.interface {
                // Link-local: BIRD's own address on the link is the source.
                Some(iface) => {
                    let _ = writeln!(c, "  local as {};", self.asn);
                    let _ = writeln!(c, "  neighbor {}%{iface} as {};", p.address, p.asn);
                }
                None => {
                    let _ = writeln!(c, "  local {local} as {};", self.asn);
                    let _ = writeln!(c, "  neighbor {} as {};", p.address, p.asn);
                }
            }
            if ibgp {
                // iBGP is multihop by default in BIRD; the peers share the underlay link.
                let _ = writeln!(c, "  direct;");
            }
            let _ = writeln!(c, "  hold time {hold};");
            let _ = writeln!(c, "  keepalive time {};", (hold / 3).max(1));
            let _ = writeln!(c, "  connect delay time 1;");
            let _ = writeln!(c, "  connect retry time 2;");
            let _ = writeln!(c, "  error wait time 1, 5;");
            if self.graceful_restart {
                let _ = writeln!(c, "  graceful restart on;");
            }
            if p.passive {
                let _ = writeln!(c, "  passive on;");
            }
            if let Some(password) = &p.password {
                let _ = writeln!(c, "  password \"{password}\";");
            }
            if p.bfd {
                let _ = writeln!(c, "  bfd on;");
            }
            if p.rr_client {
                let _ = writeln!(c, "  rr client;");
                if let Some(id) = self.rr_cluster_id {
                    let _ = writeln!(c, "  rr cluster id {id};");
                }
            }
            let nh = if p.next_hop_self {
                " next hop self;"
            } else {
                ""
            };
            // RFC 8212: eBGP needs explicit filters in BIRD 2.
            let nh4 = match p.extended_next_hop {
                Some(true) => " extended next hop on;".to_string(),
                Some(false) => " extended next hop off;".to_string(),
                None if over_v6 => format!(" next hop address {};", self.local_address),
                None => String::new(),
            };
            let _ = writeln!(
                c,
                "  ipv4 {{{nh}{nh4} import all; export where source ~ [RTS_STATIC, RTS_BGP]; }};"
            );
            if let Some(v6) = self.ipv6 {
                // An IPv6 channel over an IPv4 session: BIRD must be told its IPv6 next hop.
                let nh6 = if over_v6 {
                    String::new()
                } else {
                    format!(" next hop address {v6};")
                };
                let _ = writeln!(
                    c,
                    "  ipv6 {{{nh6} import all; export where source ~ [RTS_STATIC, RTS_BGP]; }};"
                );
            }
            let _ = writeln!(c, "}}");
        }
        c
    }
}

/// A row of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdProtocol {
    pub name: String,
    /// `BGP`, `Kernel`, `Static`, `Device`, …
    pub proto: String,
    pub table: String,
    /// `up`, `start`, `down`, …
    pub state: String,
    /// The info column: for BGP, the session state first (`Established`, `Active`, …).
    pub info: String,
}

impl BirdProtocol {
    /// The BGP session state (`Established`, `Active`, `Connect`, `Idle`, `OpenSent`, …).
    pub fn bgp_state(&self) -> &str {
        self.info.split_whitespace().next().unwrap_or("")
    }

    pub fn established(&self) -> bool {
        self.state == "up" && self.bgp_state() == "Established"
    }
}

/// One route of `birdc show route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdRoute {
    pub prefix: IpNet,
    /// `unicast`, `blackhole`, `unreachable`, …
    pub kind: String,
    /// The protocol it came from (`announce4`, a BGP peer's name, …).
    pub source: String,
    /// BIRD selected it (`*`).
    pub primary: bool,
    pub via: Option<IpAddr>,
    pub iface: Option<String>,
}

/// Parses `birdc show protocols` output.
pub fn parse_protocols(text: &str) -> Vec<BirdProtocol> {
    let mut out = Vec::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 4 || t[0] == "Name" || t[0] == "BIRD" || line.starts_with(char::is_whitespace)
        {
            continue;
        }
        // After the state comes the "since" time (one or two tokens with the iso formats, e.g.
        // `2026-11-27 17:10:01.123`), then the info column.
        let mut rest = &t[4..];
        while let Some(first) = rest.first() {
            if looks_like_time(first) {
                rest = &rest[1..];
            } else {
                break;
            }
        }
        out.push(BirdProtocol {
            name: t[0].to_string(),
            proto: t[1].to_string(),
            table: t[2].to_string(),
            state: t[3].to_string(),
            info: rest.join(" "),
        });
    }
    out
}

fn looks_like_time(token: &str) -> bool {
    !token.is_empty()
        && token.chars().any(|c| c.is_ascii_digit())
        && token
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ':' | '-' | '.'))
}

/// Parses `birdc show route` output (BIRD 2: `prefix kind [source time] * (pref) …` lines, more
/// routes to the same prefix on indented lines, `via X on IF` / `dev IF` lines below each).
pub fn parse_routes(text: &str) -> Vec<BirdRoute> {
    let mut out: Vec<BirdRoute> = Vec::new();
    let mut current: Option<IpNet> = None;
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(&first) = t.first() else { continue };
        if first == "BIRD" || first == "Table" {
            continue;
        }
        if first == "via" {
            if let Some(last) = out.last_mut() {
                last.via = t.get(1).and_then(|a| a.parse().ok());
                if t.get(2) == Some(&"on") {
                    last.iface = t.get(3).map(|s| s.to_string());
                }
            }
            continue;
        }
        if first == "dev" {
            if let Some(last) = out.last_mut() {
                last.iface = t.get(1).map(|s| s.to_string());
            }
            continue;
        }
        // A route line: with a prefix when unindented, the same prefix again when indented.
        let (prefix, rest) = if line.starts_with(char::is_whitespace) {
            match current {
                Some(p) => (p, &t[..]),
                None => continue,
            }
        } else {
            match first.parse::<IpNet>() {
                Ok(p) => (p, &t[1..]),
                Err(_) => continue,
            }
        };
        let Some(&kind) = rest.first() else { continue };
        if !kind.chars().all(|c| c.is_ascii_alphabetic()) {
            continue;
        }
        current = Some(prefix);
        let source = rest
            .get(1)
            .map(|s| s.trim_start_matches('[').trim_end_matches(']').to_string())
            .unwrap_or_default();
        out.push(BirdRoute {
            prefix,
            kind: kind.to_string(),
            source,
            primary: rest.contains(&"*"),
            via: None,
            iface: None,
        });
    }
    out
}

/// A BIRD 2 daemon inside a node's namespace; killed when dropped.
pub struct Bird<'a> {
    tb: &'a Testbed,
    pub node: Node,
    dir: PathBuf,
    config: BirdConfig,
    lifetime: Duration,
    pid: Option<i32>,
    bird: PathBuf,
    birdc: PathBuf,
    starts: u32,
}

impl<'a> Bird<'a> {
    /// Starts BIRD on `node` with `config` (living at most `lifetime`) and waits until its
    /// control socket answers. Fails the test, naming the package, if bird2 is not installed.
    pub async fn start(
        tb: &'a Testbed,
        node: &Node,
        config: BirdConfig,
        lifetime: Duration,
    ) -> Result<Bird<'a>> {
        let bird = crate::require_tool("bird", "bird2");
        let birdc = crate::require_tool("birdc", "bird2");
        let dir = tb.state_dir().join(format!("bird-{}", node.name));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let mut b = Bird {
            tb,
            node: node.clone(),
            dir,
            config,
            lifetime,
            pid: None,
            bird,
            birdc,
            starts: 0,
        };
        b.write_config()?;
        b.launch().await?;
        Ok(b)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("bird.log")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("bird.pid")
    }

    pub fn config(&self) -> &BirdConfig {
        &self.config
    }

    /// BIRD's log file and what the process printed.
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        if let Some(pid) = self.pid {
            s.push_str(&self.tb.log_of(pid));
        }
        s
    }

    fn write_config(&self) -> Result<()> {
        let text = self.config.render(&self.log_path());
        std::fs::write(self.config_path(), text)
            .map_err(|e| Error::io(format!("write {}", self.config_path().display()), e))
    }

    async fn launch(&mut self) -> Result<()> {
        let (conf, sock, pid) = (self.config_path(), self.socket(), self.pid_path());
        let argv = [
            path_str(&self.bird)?,
            "-f",
            "-c",
            path_str(&conf)?,
            "-s",
            path_str(&sock)?,
            "-P",
            path_str(&pid)?,
        ];
        let pid = self.tb.spawn(&self.node.ns, &argv, self.lifetime)?;
        self.pid = Some(pid);
        self.starts += 1;
        self.wait_ready(Duration::from_secs(10)).await
    }

    /// Waits (bounded) until `birdc show status` answers.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(pid) = self.pid
                && !self.tb.running(pid)
            {
                return Err(Error::Other(format!(
                    "bird on {} exited:\n{}",
                    self.node.name,
                    self.log()
                )));
            }
            if self.socket().exists()
                && let Ok(out) = self.birdc(&["show", "status"]).await
                && out.contains("Daemon is up")
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: format!("bird on {} answering on its socket", self.node.name),
                    secs: limit.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `birdc -s <socket> <args…>`: its output, or an error if birdc fails.
    pub async fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.socket();
        let mut argv = vec![path_str(&self.birdc)?, "-s", path_str(&sock)?];
        argv.extend_from_slice(args);
        self.tb
            .exec_ok(&self.node.ns, &argv, Duration::from_secs(10))
            .await
    }

    /// `show protocols`, parsed.
    pub async fn protocols(&self) -> Result<Vec<BirdProtocol>> {
        Ok(parse_protocols(&self.birdc(&["show", "protocols"]).await?))
    }

    pub async fn protocol(&self, name: &str) -> Result<Option<BirdProtocol>> {
        Ok(self.protocols().await?.into_iter().find(|p| p.name == name))
    }

    /// `show route`, parsed.
    pub async fn routes(&self) -> Result<Vec<BirdRoute>> {
        Ok(parse_routes(&self.birdc(&["show", "route"]).await?))
    }

    /// Waits (bounded) until the BGP protocol `name` is Established; returns how long it took.
    pub async fn wait_established(&self, name: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(p) = self.protocol(name).await? {
                if p.established() {
                    return Ok(start.elapsed());
                }
                last = Some(p);
            }
            if start.elapsed() > limit {
                return Err(Error::Other(format!(
                    "bird on {}: protocol {name} not Established within {:.0} s (last: {last:?})\n{}",
                    self.node.name,
                    limit.as_secs_f64(),
                    self.log_tail(40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until every BGP protocol is Established.
    pub async fn wait_all_established(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let protos = self.protocols().await?;
            let down: Vec<&BirdProtocol> = protos
                .iter()
                .filter(|p| p.proto == "BGP" && !p.established())
                .collect();
            if down.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(Error::Other(format!(
                    "bird on {}: not Established within {:.0} s: {down:?}",
                    self.node.name,
                    limit.as_secs_f64()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes `config` and applies it with `birdc configure` (BIRD keeps running; sessions
    /// whose settings did not change stay up).
    pub async fn reconfigure(&mut self, config: BirdConfig) -> Result<()> {
        self.config = config;
        self.write_config()?;
        let out = self.birdc(&["configure"]).await?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "birdc configure on {}: {out}",
                self.node.name
            )))
        }
    }

    /// Writes `config` for the next [`Bird::restart`] without applying it now.
    pub fn set_config(&mut self, config: BirdConfig) -> Result<()> {
        self.config = config;
        self.write_config()
    }

    /// The last `lines` lines of BIRD's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills BIRD (SIGKILL, no goodbye to its peers) and starts it again with the same config.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch().await
    }

    /// Kills BIRD now (the whole process group). Its kernel routes stay, as after a crash.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.tb.kill(pid);
        }
    }

    pub fn running(&self) -> bool {
        self.pid.is_some_and(|p| self.tb.running(p))
    }

    /// How many times this BIRD was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }
}

impl Drop for Bird<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Other(format!("path {} is not UTF-8", p.display())))
}

/// The IPv4 routes of `ns`'s main table.
pub async fn kernel_routes(ns: &Netns) -> Result<Vec<Route>> {
    Ok(ns
        .connect()?
        .routes(Family::V4, Some(Route::TABLE_MAIN))
        .await?)
}

/// What [`wait_kernel_route`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A route to the prefix via this gateway, installed by this protocol.
    Via(IpAddr, u8),
    /// A route to the prefix installed by this protocol (any gateway).
    Proto(u8),
    /// No route to the prefix at all.
    Absent,
}

/// Whether `routes` satisfies `want` for `prefix`.
pub fn kernel_has(routes: &[Route], prefix: Ipv4Net, want: Want) -> bool {
    let dst = IpNet::V4(prefix.trunc());
    let mut matching = routes.iter().filter(|r| r.dst == dst);
    match want {
        Want::Via(gw, proto) => matching.any(|r| r.gateway == Some(gw) && r.protocol == proto),
        Want::Proto(proto) => matching.any(|r| r.protocol == proto),
        Want::Absent => matching.next().is_none(),
    }
}

/// Waits (bounded, polling every 20 ms) until `ns`'s main table satisfies `want` for `prefix`;
/// returns how long it took. On timeout the error lists the routes to the prefix found.
pub async fn wait_kernel_route(
    ns: &Netns,
    prefix: Ipv4Net,
    want: Want,
    limit: Duration,
) -> Result<Duration> {
    let h = ns.connect()?;
    let start = Instant::now();
    loop {
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await?;
        if kernel_has(&routes, prefix, want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            let found: Vec<&Route> = routes
                .iter()
                .filter(|r| r.dst == IpNet::V4(prefix.trunc()))
                .collect();
            return Err(Error::Other(format!(
                "{}: no {want:?} route for {prefix} within {:.0} s; found {found:?}",
                ns.name(),
                limit.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How `trellis bgp-agent --standalone` is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub asn: u32,
    /// Peers as `ADDR:ASN` (`[ADDR]:ASN` for IPv6).
    pub peers: Vec<(IpAddr, u32)>,
    pub announce: Vec<Ipv4Net>,
    pub hold_time: u16,
    pub graceful_restart: bool,
    /// Loopback of the node's own namespace.
    pub status_port: u16,
    /// `--announce-file PATH`: prefixes to announce, one a line, re-read on SIGHUP (an assumed
    /// interface for live announcements; see the convergence benchmark).
    pub announce_file: Option<PathBuf>,
    /// `--iface`: the underlay interface (testbed nodes have no default route to find it by).
    /// `None`: the agent works it out (the interface holding `--listen`, then `--router-id`).
    pub iface: Option<String>,
    /// `--node` with the testbed node's name; off, a standalone agent takes the host name.
    pub name_node: bool,
    /// `--listen`; None: the node's address, port 179.
    pub listen: Option<SocketAddr>,
    /// More arguments, as given.
    pub extra: Vec<String>,
}

impl AgentSpec {
    pub fn new(asn: u32) -> AgentSpec {
        AgentSpec {
            asn,
            peers: Vec::new(),
            announce: Vec::new(),
            hold_time: TEST_HOLD_TIME,
            graceful_restart: true,
            status_port: 9912,
            announce_file: None,
            iface: Some("eth0".into()),
            name_node: true,
            listen: None,
            extra: Vec::new(),
        }
    }

    pub fn peer(mut self, address: impl Into<IpAddr>, asn: u32) -> AgentSpec {
        self.peers.push((address.into(), asn));
        self
    }

    pub fn announce(mut self, prefix: Ipv4Net) -> AgentSpec {
        self.announce.push(prefix.trunc());
        self
    }
}

/// `trellis bgp-agent --standalone` inside a node's namespace; killed when dropped.
pub struct Agent<'a> {
    tb: &'a Testbed,
    pub node: Node,
    pub spec: AgentSpec,
    dir: PathBuf,
    binary: PathBuf,
    lifetime: Duration,
    pid: Option<i32>,
}

impl<'a> Agent<'a> {
    /// Starts the workspace's `trellis` binary (next to the running test) as the agent on
    /// `node`, waits (bounded) until its status API answers.
    pub async fn start(
        tb: &'a Testbed,
        node: &Node,
        spec: AgentSpec,
        lifetime: Duration,
    ) -> Result<Agent<'a>> {
        Agent::start_with(tb, node, spec, lifetime, &crate::bin_path("trellis")).await
    }

    /// As [`Agent::start`] with a given `trellis` binary.
    pub async fn start_with(
        tb: &'a Testbed,
        node: &Node,
        spec: AgentSpec,
        lifetime: Duration,
        binary: &Path,
    ) -> Result<Agent<'a>> {
        let dir = tb.state_dir().join(format!("agent-{}", node.name));
        for sub in ["state", "net.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let mut a = Agent {
            tb,
            node: node.clone(),
            spec,
            dir,
            binary: binary.to_path_buf(),
            lifetime,
            pid: None,
        };
        a.launch().await?;
        Ok(a)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command line (without the binary).
    pub fn args(&self) -> Vec<String> {
        let s = &self.spec;
        let mut v: Vec<String> = [
            "bgp-agent",
            "--standalone",
            "--asn",
            &s.asn.to_string(),
            "--router-id",
            &self.node.ip.to_string(),
            "--listen",
            &s.listen
                .map_or_else(|| format!("{}:179", self.node.ip), |l| l.to_string()),
            "--hold-time",
            &s.hold_time.to_string(),
            "--status-listen",
            &format!("127.0.0.1:{}", s.status_port),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if s.name_node {
            v.push("--node".into());
            v.push(self.node.name.clone());
        }
        for p in [("--state-dir", "state"), ("--cni-conf-dir", "net.d")] {
            v.push(p.0.into());
            v.push(self.dir.join(p.1).display().to_string());
        }
        for (addr, asn) in &s.peers {
            v.push("--peer".into());
            v.push(match addr {
                IpAddr::V4(a) => format!("{a}:{asn}"),
                IpAddr::V6(a) => format!("[{a}]:{asn}"),
            });
        }
        for prefix in &s.announce {
            v.push("--announce".into());
            v.push(prefix.to_string());
        }
        if let Some(f) = &s.announce_file {
            v.push("--announce-file".into());
            v.push(f.display().to_string());
        }
        if !s.graceful_restart {
            v.push("--no-graceful-restart".into());
        }
        if let Some(iface) = &s.iface {
            v.push("--iface".into());
            v.push(iface.clone());
        }
        v.extend(s.extra.iter().cloned());
        v
    }

    async fn launch(&mut self) -> Result<()> {
        let args = self.args();
        let mut argv: Vec<&str> = vec![path_str(&self.binary)?];
        argv.extend(args.iter().map(String::as_str));
        let pid = self.tb.spawn(&self.node.ns, &argv, self.lifetime)?;
        self.pid = Some(pid);
        self.wait_ready(Duration::from_secs(15)).await
    }

    async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if !self.running() {
                return Err(Error::Other(format!(
                    "the agent on {} exited:\n{}",
                    self.node.name,
                    self.log()
                )));
            }
            // Up, and its status document published (a second at most after the start):
            // callers read /bgp/status right away.
            if self.get("/healthz").await.is_ok() && self.get("/bgp/status").await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: format!("the agent on {} answering /healthz", self.node.name),
                    secs: limit.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running(&self) -> bool {
        self.pid.is_some_and(|p| self.tb.running(p))
    }

    /// What the agent printed.
    pub fn log(&self) -> String {
        self.pid.map(|p| self.tb.log_of(p)).unwrap_or_default()
    }

    /// Kills the agent (SIGKILL: its peers see the TCP session end, no NOTIFICATION).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.tb.kill(pid);
        }
    }

    /// Kills the agent and starts it again with `spec`.
    pub async fn restart(&mut self, spec: AgentSpec) -> Result<()> {
        self.stop();
        self.spec = spec;
        self.launch().await
    }

    /// The agent process itself (the child of `timeout`, which leads the process group), for
    /// signals meant for the agent alone.
    pub fn agent_pid(&self) -> Option<i32> {
        let pgid = self.pid?;
        let children =
            std::fs::read_to_string(format!("/proc/{pgid}/task/{pgid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Sends `signal` to the agent process only.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .agent_pid()
            .ok_or_else(|| Error::Other(format!("no agent process on {}", self.node.name)))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| Error::Other(format!("signal the agent on {}: {e}", self.node.name)))
    }

    /// An HTTP GET on the agent's status listener (inside the node's namespace): the body of a
    /// 200 answer.
    pub async fn get(&self, path: &str) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.spec.status_port));
        let ns: Arc<Netns> = self.node.ns.clone();
        let path = path.to_string();
        let what = format!("GET {path} on the agent of {}", self.node.name);
        let reply = ns
            .run(move || http_get(addr, &path))?
            .map_err(|e| Error::io(what.clone(), e))?;
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| Error::Other(format!("{what}: no HTTP answer: {reply:?}")))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(Error::Other(format!("{what}: {head}\n{body}")));
        }
        Ok(body.to_string())
    }

    /// `/bgp/status`: one JSON object per peer.
    pub async fn status(&self) -> Result<Vec<serde_json::Value>> {
        let body = self.get("/bgp/status").await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| Error::Other(format!("/bgp/status is not JSON ({e}): {body}")))?;
        // A list, or an object holding one under "peers".
        let list = match v {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(mut o) => match o.remove("peers") {
                Some(serde_json::Value::Array(a)) => a,
                _ => return Err(Error::Other(format!("/bgp/status: no peer list: {body}"))),
            },
            _ => return Err(Error::Other(format!("/bgp/status: no peer list: {body}"))),
        };
        Ok(list)
    }

    /// The status of the peer at `address`.
    pub async fn peer_status(
        &self,
        address: impl Into<IpAddr>,
    ) -> Result<Option<serde_json::Value>> {
        let want = address.into().to_string();
        Ok(self.status().await?.into_iter().find(|p| {
            p["address"]
                .as_str()
                .is_some_and(|a| a == want || a.starts_with(&format!("{want}:")))
        }))
    }

    /// Waits (bounded) until the session to `address` is Established; returns how long it took.
    pub async fn wait_established(
        &self,
        address: impl Into<IpAddr>,
        limit: Duration,
    ) -> Result<Duration> {
        let address = address.into();
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(p) = self.peer_status(address).await? {
                if p["state"].as_str() == Some("Established") {
                    return Ok(start.elapsed());
                }
                last = Some(p);
            }
            if !self.running() || start.elapsed() > limit {
                return Err(Error::Other(format!(
                    "the agent on {}: session to {address} not Established within {:.0} s (last: {last:?}; running: {})\n{}",
                    self.node.name,
                    limit.as_secs_f64(),
                    self.running(),
                    tail(&self.log(), 40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/bgp/routes`: one JSON object per route.
    pub async fn routes(&self) -> Result<Vec<serde_json::Value>> {
        let body = self.get("/bgp/routes").await?;
        match serde_json::from_str(&body) {
            Ok(serde_json::Value::Array(a)) => Ok(a),
            Ok(serde_json::Value::Object(mut o)) => match o.remove("routes") {
                Some(serde_json::Value::Array(a)) => Ok(a),
                _ => Err(Error::Other(format!("/bgp/routes: no route list: {body}"))),
            },
            _ => Err(Error::Other(format!("/bgp/routes is not a list: {body}"))),
        }
    }

    /// Replaces the contents of the announce file (atomically) and sends SIGHUP to the agent
    /// when `sighup`.
    pub fn set_announced(&self, prefixes: &[Ipv4Net], sighup: bool) -> Result<()> {
        let file =
            self.spec.announce_file.as_ref().ok_or_else(|| {
                Error::Other("the agent was started without --announce-file".into())
            })?;
        let text: String = prefixes.iter().map(|p| format!("{p}\n")).collect();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, file)
            .map_err(|e| Error::io(format!("rename to {}", file.display()), e))?;
        if sighup {
            self.signal(nix::sys::signal::Signal::SIGHUP)?;
        }
        Ok(())
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.0 GET (the answer is read to the end of the connection).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Whether `help` (the agent's `--help` text) offers `flag`.
pub fn offers_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .any(|w| w == flag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_show_protocols() {
        let text = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     2026-11-27 17:10:00.123  
kernel4    Kernel     master4    up     2026-11-27 17:10:00.123  
announce4  Static     master4    up     2026-11-27 17:10:00.123  
n2         BGP        ---        up     2026-11-27 17:10:01.456  Established   
n3         BGP        ---        start  2026-11-27 17:10:00.123  Active        Socket: Connection refused
n4         BGP        ---        start  17:10:00.123  Connect
";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 6);
        assert_eq!(p[3].name, "n2");
        assert!(p[3].established());
        assert_eq!(p[4].bgp_state(), "Active");
        assert_eq!(p[4].info, "Active Socket: Connection refused");
        assert!(!p[4].established());
        assert_eq!(p[5].bgp_state(), "Connect");
        assert_eq!(p[0].info, "");
    }

    #[test]
    fn parses_show_route() {
        let text = "BIRD 2.0.12 ready.
Table master4:
10.244.11.0/26       unicast [n1 2026-11-27 17:10:01.456] * (100) [i]
\tvia 198.18.0.11 on eth0
                     unicast [n3 2026-11-27 17:10:01.456] (100) [AS64513i]
\tvia 198.18.0.13 on eth0
10.244.12.0/26       blackhole [announce4 2026-11-27 17:10:00.123] * (200)
";
        let r = parse_routes(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].prefix, "10.244.11.0/26".parse::<IpNet>().unwrap());
        assert_eq!(r[0].source, "n1");
        assert!(r[0].primary);
        assert_eq!(r[0].via, Some("198.18.0.11".parse().unwrap()));
        assert_eq!(r[0].iface.as_deref(), Some("eth0"));
        assert_eq!(r[1].prefix, r[0].prefix);
        assert!(!r[1].primary);
        assert_eq!(r[1].source, "n3");
        assert_eq!(r[1].via, Some("198.18.0.13".parse().unwrap()));
        assert_eq!(r[2].kind, "blackhole");
        assert_eq!(r[2].source, "announce4");
        assert_eq!(r[2].via, None);
    }

    #[test]
    fn renders_ibgp_rr_and_ebgp_sessions() {
        let node = Node {
            name: "n1".into(),
            ns: Arc::new(Netns::current().unwrap()),
            ip: Ipv4Addr::new(198, 18, 0, 11),
            net: "198.18.0.11/15".parse().unwrap(),
        };
        let c = BirdConfig::new(&node, 64512)
            .announce("10.244.11.7/26".parse().unwrap())
            .route_reflector(Ipv4Addr::new(198, 18, 0, 11))
            .peer(BirdPeer::new("c1", Ipv4Addr::new(198, 18, 0, 12), 64512).rr_client())
            .peer(BirdPeer::new("e1", Ipv4Addr::new(198, 18, 0, 13), 64513).passive());
        let text = c.render(Path::new("/tmp/x.log"));
        assert!(text.contains("router id 198.18.0.11;"));
        assert!(text.contains("route 10.244.11.0/26 blackhole;"));
        assert!(text.contains("protocol bgp c1 {"));
        assert!(text.contains("rr client;"));
        assert!(text.contains("rr cluster id 198.18.0.11;"));
        assert!(text.contains("neighbor 198.18.0.13 as 64513;"));
        assert!(text.contains("passive on;"));
        // iBGP gets `direct`, eBGP does not; next hop self only where asked.
        let c1 =
            &text[text.find("protocol bgp c1").unwrap()..text.find("protocol bgp e1").unwrap()];
        assert!(c1.contains("direct;") && !c1.contains("next hop self"));
        let e1 = &text[text.find("protocol bgp e1").unwrap()..];
        assert!(!e1.contains("direct;") && e1.contains("next hop self"));
    }

    #[test]
    fn renders_an_unnumbered_session() {
        let node = Node {
            name: "n1".into(),
            ns: Arc::new(Netns::current().unwrap()),
            ip: Ipv4Addr::new(198, 18, 0, 11),
            net: "198.18.0.11/15".parse().unwrap(),
        };
        let ll: Ipv6Addr = "fe80::2".parse().unwrap();
        let text = BirdConfig::new(&node, 64512)
            .ipv6("fd00:99::1".parse().unwrap())
            .peer(BirdPeer::new("agent", ll, 64512).on_interface("ll0"))
            .render(Path::new("/tmp/x.log"));
        assert!(text.contains("  local as 64512;"), "{text}");
        assert!(text.contains("  neighbor fe80::2%ll0 as 64512;"), "{text}");
    }

    #[test]
    fn finds_flags_in_help() {
        let help =
            "Options:\n      --announce <CIDR>\n      --announce-file <PATH>  re-read on SIGHUP\n";
        assert!(offers_flag(help, "--announce-file"));
        assert!(offers_flag(help, "--announce"));
        assert!(!offers_flag(help, "--no-graceful-restart"));
    }
}
