//! `trellis bgp-agent`: the routed mode's node agent. It announces the node's address blocks
//! over BGP (each with a local blackhole route, so traffic to an unused address of the block
//! stops here instead of bouncing back along the default route), installs the best routes its
//! peers announce, and tells the plugin when the node is ready.
//!
//! Peers: by default an iBGP full mesh of every node in the cluster (their addresses from the
//! Node objects), plus `--peer` neighbours (a top-of-rack router, a route reflector); with
//! `--standalone` only the latter. Blocks: the node's blocks from ipamd, plus `--announce` and
//! the lines of `--announce-file` (re-read every resync and at once on SIGHUP). In a cluster,
//! LoadBalancer Services' addresses too, and optionally the cluster IP range ([`services`]).

pub mod cniconf;
pub mod crds;
pub mod kernel;
pub mod mesh;
pub mod router_adv;
pub mod selector;
pub mod services;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use trellis_bfd::Bfd;
use trellis_bfd::driver::{BfdConfig, PeerSpec as BfdPeer};
use trellis_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use trellis_bgp::{LocRibChange, PrefixFilter, RoutePolicy};
pub use trellis_bgp::{Md5Key, PrefixRule};
use trellis_daemon::{Health, Metrics};
use trellis_net::Handle;
use trellis_net::underlay::{self, Choice};

use trellis_plugin::ready::ReadyState;
use trellis_routed::state::NodeState;

/// A configured neighbour (`--peer ADDR:ASN`, or a node of the mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub address: IpAddr,
    pub asn: u32,
    /// Its own hold time (a `BGPPeer`'s); None: the agent's.
    pub hold_time: Option<u16>,
    /// Its own max-prefix limit (a `BGPPeer`'s); None: the agent's `--max-prefixes`.
    pub max_prefixes: Option<u32>,
    /// A node of the iBGP mesh: never a default route from it.
    pub mesh: bool,
    /// Its own import and export rules (from the `BGPFilter`s its `BGPPeer` names), ahead of
    /// the agent's `--import-filter` and `--export-filter` rules.
    pub import: Vec<PrefixRule>,
    pub export: Vec<PrefixRule>,
    /// TCP MD5 password (`--peer-password-file`, or the Secret its `BGPPeer` names).
    pub password: Option<Md5Key>,
    /// Its `BGPPeer`'s BFD settings; None (and any field left out): the agent's flags.
    pub bfd: Option<crds::BfdSpec>,
    /// The interface of a link-local `address` (`--peer [fe80::1%eth1]:ASN`): an unnumbered
    /// session over that link.
    pub interface: Option<String>,
    /// A route-reflector client of ours (we are a reflector, it is a node without our cluster
    /// id that a `BGPPeer` peers us with).
    pub rr_client: bool,
}

impl Neighbour {
    /// A neighbour with the agent's settings for everything.
    pub fn new(address: IpAddr, asn: u32) -> Neighbour {
        Neighbour {
            address,
            asn,
            hold_time: None,
            max_prefixes: None,
            mesh: false,
            import: Vec::new(),
            export: Vec::new(),
            password: None,
            bfd: None,
            interface: None,
            rr_client: false,
        }
    }
}

impl std::str::FromStr for Neighbour {
    type Err = String;

    /// `198.18.0.1:64512`, `[fd00::1]:64512`, or a link-local address with its interface,
    /// `[fe80::1%eth1]:64512` (unnumbered BGP).
    fn from_str(s: &str) -> Result<Neighbour, String> {
        let (addr, asn) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not ADDRESS:ASN"))?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let (addr, interface) = match addr.split_once('%') {
            Some((a, i)) if !i.is_empty() => (a, Some(i.to_string())),
            Some(_) => return Err(format!("{s:?}: no interface after %")),
            None => (addr, None),
        };
        let address: IpAddr = addr
            .parse()
            .map_err(|e| format!("{s:?}: bad address: {e}"))?;
        let link_local = matches!(address, IpAddr::V6(a) if a.is_unicast_link_local());
        match (link_local, &interface) {
            (true, None) => {
                return Err(format!(
                    "{s:?}: a link-local address needs its interface: [{addr}%IFACE]:{asn}"
                ));
            }
            (false, Some(_)) => {
                return Err(format!(
                    "{s:?}: only a link-local (fe80::/10) address takes an interface"
                ));
            }
            _ => {}
        }
        Ok(Neighbour {
            interface,
            ..Neighbour::new(
                address,
                asn.parse().map_err(|e| format!("{s:?}: bad AS: {e}"))?,
            )
        })
    }
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// No Kubernetes: only `peers` and `announce` (and ipamd when given).
    pub standalone: bool,
    pub kubeconfig: Option<PathBuf>,
    pub underlay: Choice,
    pub asn: u32,
    /// Default: the underlay address.
    pub router_id: Option<Ipv4Addr>,
    /// Dual-stack: pods get an IPv6 address beside the IPv4 one, IPv6 unicast is negotiated
    /// with the peers, the node's IPv6 blocks are announced with `ipv6_address` as next hop
    /// and IPv6 forwarding is on. Off: IPv4 only (IPv6 unicast is not even offered).
    pub dual_stack: bool,
    /// The next hop of our IPv6 announcements; None: the first global IPv6 address of the
    /// underlay interface.
    pub ipv6_address: Option<Ipv6Addr>,
    /// Dual-stack only: the iBGP mesh runs over IPv6 (the node publishes its IPv6 address as
    /// its BGP address and peers with the others' IPv6 addresses); an unspecified IPv4
    /// `listen` address becomes `[::]`, so the peers' connections are accepted.
    pub mesh_ipv6: bool,
    /// Offer RFC 8950 (IPv4 routes with IPv6 next hops) to peers with a global IPv6 address
    /// too; unnumbered peers always get the offer.
    pub extended_next_hop: bool,
    /// Where the speaker accepts sessions; port 179 by default.
    pub listen: SocketAddr,
    /// iBGP full mesh among the cluster's nodes.
    pub mesh: bool,
    pub peers: Vec<Neighbour>,
    pub announce: Vec<IpNet>,
    pub announce_file: Option<PathBuf>,
    /// ipamd's socket: the node's blocks are announced.
    pub ipamd: Option<PathBuf>,
    pub hold_time: u16,
    /// At most this many next hops per learned prefix (ECMP); 1: the single best path.
    pub max_paths: usize,
    /// Where the Secrets that `BGPPeer`s name for their passwords live.
    pub secrets_namespace: String,
    /// Every peer's max-prefix limit unless its `BGPPeer` sets one (None: no limit).
    pub max_prefixes: Option<u32>,
    /// How long a session stays down after its peer broke the max-prefix limit.
    pub max_prefix_restart: Duration,
    /// Import rules for every peer, after the peer's own (first match decides; no match:
    /// accept — but never a default route from a mesh node).
    pub import: Vec<PrefixRule>,
    /// Export rules for every peer, after the peer's own (first match decides; no match: our
    /// own prefixes go, and learned ones to iBGP peers only).
    pub export: Vec<PrefixRule>,
    pub graceful_restart: bool,
    /// Graceful restart's restarting side (RFC 4724 §4.1): an agent that finds routes of an
    /// earlier run in the kernel keeps them, sends the R bit and the F bit of their families,
    /// and defers route selection — the kernel and its UPDATEs wait — until End-of-RIB from
    /// every peer or `restart_deferral`, then sweeps what was not refreshed. Off (a cold
    /// start): the earlier run's learned routes are removed at start and R and F stay clear.
    pub restart_recovery: bool,
    /// The Selection_Deferral_Timer: the longest route selection waits after a restart.
    pub restart_deferral: Duration,
    /// BFD (RFC 5880/5881) with every peer unless its `BGPPeer` says otherwise: a BFD Down
    /// ends the BGP session at once.
    pub bfd: bool,
    /// BFD's Desired Min TX and Required Min RX for peers that do not set their own.
    pub bfd_interval: Duration,
    /// BFD's Detect Mult for peers that do not set their own.
    pub bfd_multiplier: u8,
    pub cluster_id: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
    /// Where the CNI configuration is written (None: not written).
    pub cni_conf_dir: Option<PathBuf>,
    pub resync: Duration,
    pub status_listen: Option<SocketAddr>,
    /// Announce every LoadBalancer Service's addresses (/32) (in a cluster).
    pub announce_load_balancers: bool,
    /// Announce the cluster IP range too (kube-router's `--advertise-cluster-ip`, as one
    /// prefix).
    pub announce_service_cidr: Option<IpNet>,
    /// The ADD gate written into the conflist (None: policy off, ADD does not wait).
    pub policy: Option<trellis_plugin::policy::PolicyGate>,
    /// Chain the reference `portmap` plugin in the conflist (pods' hostPorts).
    pub portmap: bool,
    /// How often `trellis-routed`'s tombstones are looked for (one seen at two looks in a row
    /// is deleted).
    pub tombstone_sweep: Duration,
}

/// The longest route selection is deferred after a restart. BIRD waits up to 240 s
/// (`graceful restart wait`), FRR 360 s (`select-defer-time`); ours ends well before the 120 s
/// restart time our peers keep our routes for, so they still hold them stale when our UPDATEs
/// come (a peer that never comes up must not cost us our routes everywhere else).
pub const DEFAULT_RESTART_DEFERRAL: Duration = Duration::from_secs(60);

/// At most this many queued Loc-RIB changes are taken and written to the kernel at a time
/// (some milliseconds of work), so a full table coming in does not keep the agent from its
/// other duties for long.
const CHANGE_BATCH: usize = 4096;

impl Config {
    /// Calico's defaults: AS 64512, full mesh, port 179.
    pub fn new(node: impl Into<String>) -> Config {
        Config {
            node: node.into(),
            standalone: false,
            kubeconfig: None,
            underlay: Choice::DefaultRoute,
            asn: 64512,
            router_id: None,
            dual_stack: false,
            ipv6_address: None,
            mesh_ipv6: false,
            extended_next_hop: false,
            listen: SocketAddr::from(([0, 0, 0, 0], trellis_bgp::speaker::BGP_PORT)),
            mesh: true,
            peers: Vec::new(),
            announce: Vec::new(),
            announce_file: None,
            ipamd: None,
            hold_time: 90,
            max_paths: 8,
            secrets_namespace: "kube-system".into(),
            max_prefixes: None,
            max_prefix_restart: Duration::from_secs(30),
            import: Vec::new(),
            export: Vec::new(),
            graceful_restart: true,
            restart_recovery: true,
            restart_deferral: DEFAULT_RESTART_DEFERRAL,
            bfd: false,
            bfd_interval: Duration::from_millis(300),
            bfd_multiplier: 3,
            cluster_id: None,
            state_dir: trellis_routed::state::DEFAULT_STATE_DIR.into(),
            cni_conf_dir: None,
            resync: Duration::from_secs(5),
            status_listen: None,
            announce_load_balancers: true,
            announce_service_cidr: None,
            policy: None,
            portmap: true,
            tombstone_sweep: trellis_agent::tombstones::SWEEP_PERIOD,
        }
    }
}

pub use trellis_agent::AgentError;
use trellis_agent::io;

/// The underlay: as configured; a standalone agent on a node with no default route falls back
/// to the interface holding its `--listen` address, then its `--router-id`.
async fn pick_underlay(host: &Handle, config: &Config) -> Result<underlay::Underlay, AgentError> {
    let first = underlay::pick(host, &config.underlay).await;
    if first.is_ok() || config.underlay != Choice::DefaultRoute {
        return Ok(first?);
    }
    let listen = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
    let router_id = config.router_id.map(IpAddr::V4);
    for ip in [listen, router_id].into_iter().flatten() {
        if let Ok(u) = underlay::pick(host, &Choice::Iface(ip.to_string())).await {
            tracing::info!(%ip, iface = %u.link.name, "no default route: the underlay is the interface holding this address");
            return Ok(u);
        }
    }
    Ok(first?)
}

/// The next hops of our own announcements, one per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NextHops {
    v4: Ipv4Addr,
    /// Dual-stack only.
    v6: Option<Ipv6Addr>,
}

impl NextHops {
    /// The next hop `prefix` is announced with: the node's address of its family (an IPv6
    /// prefix of a node without IPv6 goes IPv4-mapped, as the speaker sends it — only to
    /// peers that negotiated IPv6, which a node without dual-stack has none of).
    fn of(&self, prefix: &IpNet) -> IpAddr {
        match (prefix, self.v6) {
            (IpNet::V6(_), Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(self.v4),
        }
    }
}

/// The node's IPv6 address for dual-stack: `--ipv6-address`, else the first global IPv6
/// address of the underlay interface (the one other nodes reach it by).
async fn node_ipv6(
    host: &Handle,
    config: &Config,
    under: &underlay::Underlay,
) -> Result<Ipv6Addr, AgentError> {
    if let Some(a) = config.ipv6_address {
        return Ok(a);
    }
    let found = host
        .addresses(Some(under.link.index))
        .await?
        .into_iter()
        .filter_map(|a| match a.address.addr() {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
        .find(|v6| is_global_v6(*v6));
    found.ok_or_else(|| {
        AgentError::Config(format!(
            "dual-stack needs an IPv6 address for the next hop of the node's IPv6 blocks: {} has \
             no global IPv6 address; give one with --ipv6-address",
            under.link.name
        ))
    })
}

/// An address other nodes can route to: not link-local, loopback, unspecified or multicast.
fn is_global_v6(a: Ipv6Addr) -> bool {
    !(a.is_unicast_link_local() || a.is_loopback() || a.is_unspecified() || a.is_multicast())
}

/// The underlay link as IPv6 next hops see it (RFC 2545 §3): the node's link-local address
/// on it and the prefixes of its addresses, which say whether a peer shares the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OurLink {
    /// `(global, link-local)`: the node's IPv6 next hop and its link-local address on the
    /// underlay (dual-stack with a link-local address only).
    next_hop: Option<(Ipv6Addr, Ipv6Addr)>,
    /// The underlay's on-link prefixes, both families.
    nets: Vec<IpNet>,
}

impl OurLink {
    async fn read(
        host: &Handle,
        under: &underlay::Underlay,
        v6: Option<Ipv6Addr>,
    ) -> Result<OurLink, AgentError> {
        let addrs = host.addresses(Some(under.link.index)).await?;
        let link_local = addrs.iter().find_map(|a| match a.address.addr() {
            IpAddr::V6(ll) if ll.is_unicast_link_local() => Some(ll),
            _ => None,
        });
        let link = OurLink {
            next_hop: v6.zip(link_local),
            nets: addrs
                .iter()
                .map(|a| a.address.trunc())
                .filter(|n| !matches!(n.addr(), IpAddr::V6(a) if a.is_unicast_link_local()))
                .collect(),
        };
        match (v6, link.next_hop) {
            (Some(_), Some((_, ll))) => tracing::info!(
                iface = %under.link.name, link_local = %ll,
                "peers on this link get our IPv6 routes with our link-local next hop too"
            ),
            (Some(_), None) => tracing::warn!(
                iface = %under.link.name,
                "no link-local IPv6 address on the underlay: IPv6 routes go with the global next hop only"
            ),
            _ => {}
        }
        Ok(link)
    }

    /// The `(global, link-local)` next hop for a peer at `peer`: ours when the peer is on the
    /// underlay's link (an address inside one of its prefixes), else none.
    fn next_hop_for(&self, peer: IpAddr) -> Option<(Ipv6Addr, Ipv6Addr)> {
        self.next_hop
            .filter(|_| self.nets.iter().any(|n| n.contains(&peer)))
    }
}

/// The prefixes this node announces now: flags, the announce file, ipamd's blocks.
fn wanted_prefixes(config: &Config, ipamd_blocks: &BTreeSet<IpNet>) -> BTreeSet<IpNet> {
    let mut out: BTreeSet<IpNet> = config.announce.iter().copied().collect();
    if let Some(path) = &config.announce_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match line.parse::<IpNet>() {
                        Ok(n) => {
                            out.insert(n.trunc());
                        }
                        Err(e) => {
                            tracing::warn!(file = %path.display(), line, error = %e, "not a prefix")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "reading the announce file")
            }
        }
    }
    out.extend(ipamd_blocks.iter().copied());
    out
}

/// Runs the agent until `stop` resolves. On stop the speaker is dropped without a
/// NOTIFICATION — like a crash — so peers with graceful restart keep our routes while we are
/// away, and the kernel routes stay: an agent restart drops no traffic.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    health.set_not_ready("starting");
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    // `/bgp/routes` is rendered from the speaker when asked for (not found until it runs).
    let routes_from: Arc<std::sync::OnceLock<std::sync::Weak<Speaker>>> = Arc::default();
    if let Some(addr) = config.status_listen {
        let bound = trellis_daemon::serve_with(
            addr,
            health.clone(),
            metrics.clone(),
            Some(routes_route(routes_from.clone())),
            async move {
                let _ = http_stopped.await;
            },
        )
        .await
        .map_err(io(format!("listen on {addr}")))?;
        tracing::info!(%bound, "health, metrics and status");
    }
    tokio::pin!(stop);
    let host = Handle::current()?;
    // Pairs CNI DEL retired whose namespace outlived it: deleted here, off the pods' path.
    let _tombstones = trellis_agent::tombstones::spawn(
        &[trellis_routed::plugin::TYPE],
        config.tombstone_sweep,
        trellis_agent::tombstones::count_in(metrics.clone()),
    )?;
    let under = pick_underlay(&host, &config).await?;
    let node_ip = under.ip;
    let router_id = config.router_id.unwrap_or(node_ip);
    tracing::info!(iface = %under.link.name, ip = %node_ip, %router_id, asn = config.asn, "underlay");
    trellis_net::sysctl::set(
        &trellis_net::Netns::current()?,
        &[("net.ipv4.ip_forward", "1")],
    )?;
    let next_hops = NextHops {
        v4: node_ip,
        v6: if config.dual_stack {
            let v6 = node_ipv6(&host, &config, &under).await?;
            // IPv6 forwards only with `all.forwarding` (the per-interface switch of the host
            // ends does not route between interfaces).
            trellis_net::sysctl::set(
                &trellis_net::Netns::current()?,
                &[("net/ipv6/conf/all/forwarding", "1")],
            )?;
            tracing::info!(ip = %v6, "dual-stack: the next hop of the node's IPv6 blocks");
            Some(v6)
        } else {
            None
        },
    };

    if config.mesh_ipv6 && next_hops.v6.is_none() {
        return Err(AgentError::Config(
            "--mesh-ipv6 needs --dual-stack (the node's IPv6 address)".into(),
        ));
    }
    if let Some(n) = config.peers.iter().find(|n| n.interface.is_some())
        && next_hops.v6.is_none()
    {
        // Over a link-local session IPv4 routes need IPv6 next hops (RFC 8950): without
        // --dual-stack nothing else travels on it.
        tracing::info!(
            peer = %n.address,
            iface = n.interface.as_deref().unwrap_or_default(),
            "unnumbered peer without --dual-stack: IPv4 routes only, with our link-local \
             next hop (RFC 8950); the peer must offer the Extended Next Hop capability \
             (BIRD: `extended next hop on` in its ipv4 channel) or no route is exchanged"
        );
    }
    let link = OurLink::read(&host, &under, next_hops.v6).await?;

    // In a cluster, `BGPConfiguration/default` overrides the flags' AS, mesh switch, route
    // reflector cluster id and hold time (read at start; a change needs an agent restart,
    // except the mesh switch, which is followed live).
    let client = if config.standalone {
        None
    } else {
        let c = trellis_api::cluster::client(config.kubeconfig.as_deref()).await?;
        // Deployed before its kubelet registers the Node: wait for it, saying so once.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.clone());
        trellis_api::cluster::wait_for_node(&nodes, &config.node, &mut stop).await?;
        Some((c, nodes))
    };
    let mut config = config;
    // The cluster-wide route-reflector cluster id (BGPConfiguration): every node's that its
    // Node does not override, so other nodes are judged by it too (who is our client).
    let mut global_cluster_id = None;
    if let Some((c, nodes)) = &client {
        crds::install(c).await;
        if let Some(s) = crds::cluster_settings(c).await {
            tracing::info!(?s, "BGPConfiguration/default");
            config.asn = s.as_number.unwrap_or(config.asn);
            config.mesh = s.node_to_node_mesh.unwrap_or(config.mesh);
            global_cluster_id = s.route_reflector_cluster_id;
            config.cluster_id = s.route_reflector_cluster_id.or(config.cluster_id);
            config.hold_time = s.hold_time.unwrap_or(config.hold_time);
        }
        // This node's own route-reflector cluster id (its Node's annotation) comes first, as
        // Calico's per-node `routeReflectorClusterID` does.
        if let Some(id) = nodes
            .get_opt(&config.node)
            .await?
            .as_ref()
            .and_then(mesh::cluster_id_of)
        {
            config.cluster_id = Some(id);
        }
        if let Some(id) = config.cluster_id {
            tracing::info!(cluster_id = %id, "route reflector");
        }
    }
    let client = client.map(|(c, _)| c);
    // Graceful restart's restarting side: what an earlier run left in the kernel says whether
    // this is a restart with the forwarding state kept (see `kernel::Kept`).
    let kept = kernel::kept(&host).await?;
    let recovery =
        (config.graceful_restart && config.restart_recovery && !kept.is_empty()).then(|| {
            trellis_bgp::Recovery {
                preserved: kept.families.iter().copied().collect(),
                deferral: config.restart_deferral,
            }
        });
    if recovery.is_some() {
        let mut from: Vec<String> = config.peers.iter().map(|n| n.address.to_string()).collect();
        if config.mesh && !config.standalone {
            from.push("the mesh's nodes".into());
        }
        tracing::info!(
            learned = kept.learned.len(),
            blackholes = kept.blackholes,
            families = ?kept.families,
            deferral_seconds = config.restart_deferral.as_secs(),
            "restarting: kept {} kernel routes, deferring until EoR from {} (at most {} s)",
            kept.learned.len() + kept.blackholes,
            if from.is_empty() { "every peer".to_string() } else { from.join(", ") },
            config.restart_deferral.as_secs(),
        );
    } else if !kept.learned.is_empty() && config.graceful_restart {
        // Restart recovery off: a cold start, as if the node had rebooted.
        let n = kernel::flush_learned(&host, &kept).await?;
        tracing::info!(
            removed = n,
            "cold start (restart recovery off): removed the learned routes of an earlier run"
        );
    }
    if config.mesh_ipv6 && config.listen.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        // The mesh's peers connect to our IPv6 address: accept both families.
        config.listen = SocketAddr::from((Ipv6Addr::UNSPECIFIED, config.listen.port()));
        tracing::info!(listen = %config.listen, "mesh over IPv6: listening on IPv6 (and IPv4)");
    }
    let mut sc = SpeakerConfig::new(config.asn, router_id);
    sc.recovery = recovery.clone();
    sc.listen = Some(config.listen);
    sc.hold_time = config.hold_time;
    sc.graceful_restart = config.graceful_restart;
    sc.cluster_id = config.cluster_id;
    sc.max_paths = config.max_paths;
    sc.ipv6_unicast = config.dual_stack;
    let speaker = Arc::new(Speaker::start(sc).await.map_err(AgentError::mode)?);
    let _ = routes_from.set(Arc::downgrade(&speaker));
    let mut changes = speaker.subscribe();

    // The node's IPAM blocks, followed live: a block is announced as soon as ipamd has claimed
    // it, not at the next resync. The first set is awaited briefly, so a restarted agent
    // announces what it had at once.
    let mut ipamd_rx = config.ipamd.clone().map(trellis_agent::blocks::follow);
    let mut ipamd_blocks: BTreeSet<IpNet> = BTreeSet::new();
    if let Some(rx) = ipamd_rx.as_mut()
        && let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await
    {
        ipamd_blocks = rx.borrow_and_update().clone();
    }

    // Announce before adding peers (see trellis_bgp::speaker).
    let mut announced: BTreeSet<IpNet> = BTreeSet::new();
    let wanted = wanted_prefixes(&config, &ipamd_blocks);
    kernel::sync_blackholes(&host, &wanted).await?;
    // Service addresses: announced, never blackholed.
    let mut service_prefixes: BTreeSet<IpNet> = config.announce_service_cidr.into_iter().collect();
    let mut lb_rx = match &client {
        Some(c) if config.announce_load_balancers => {
            Some(services::watch(c.clone(), config.node.clone()))
        }
        _ => None,
    };
    let with_services = |blocks: &BTreeSet<IpNet>, services: &BTreeSet<IpNet>| {
        blocks.union(services).copied().collect::<BTreeSet<IpNet>>()
    };
    let wanted = with_services(&wanted, &service_prefixes);
    for p in &wanted {
        speaker
            .announce(*p, next_hops.of(p))
            .map_err(AgentError::mode)?;
    }
    announced.extend(wanted);

    let mut peers: BTreeMap<IpAddr, Neighbour> = BTreeMap::new();
    // The address this node's mesh sessions run from, published for the others.
    let mesh_ip = match next_hops.v6 {
        Some(v6) if config.mesh_ipv6 => IpAddr::V6(v6),
        _ => IpAddr::V4(node_ip),
    };
    let mut mesh_rx = match &client {
        Some(c) => Some(mesh::watch(c.clone(), config.node.clone(), mesh_ip).await?),
        None => None,
    };
    let mut dynamic_rx = client.as_ref().map(|c| {
        crds::watch(
            c.clone(),
            config.node.clone(),
            config.secrets_namespace.clone(),
        )
    });
    // The three sources of peers: flags, the mesh (when on), BGPPeer objects (those with
    // selectors resolved against the nodes' labels).
    let mut mesh_on = config.mesh;
    let mut mesh_peers: Vec<mesh::NodeBgp> = Vec::new();
    let mut crd_peers: Vec<crds::CrdPeer> = Vec::new();
    let want = |mesh_on: bool, nodes: &[mesh::NodeBgp], crd_peers: &[crds::CrdPeer]| {
        let mut w: BTreeMap<IpAddr, Neighbour> = config
            .peers
            .iter()
            .map(|n| (n.address, n.clone()))
            .collect();
        for n in crds::neighbours(
            crd_peers,
            nodes,
            &config.node,
            config.cluster_id,
            config.asn,
        ) {
            w.entry(n.address).or_insert(n);
        }
        if mesh_on {
            for n in mesh::mesh_peers(nodes, &config.node, mesh_ip, config.asn) {
                w.entry(n.address).or_insert(n);
            }
        }
        w
    };
    // BFD starts with the first peer that wants it (port 3784 stays free otherwise).
    let mut bfd: Option<Bfd> = None;
    let peer_links = kernel::PeerLinks::default();
    let mut sessions = Sessions {
        speaker: &speaker,
        bfd: &mut bfd,
        node_ip,
        node_ip6: next_hops.v6,
        link,
        host: host.clone(),
        peer_links: peer_links.clone(),
        missing_unnumbered: false,
    };
    // Interfaces of unnumbered peers, followed as they come and go (the resync stays the
    // backstop): a session bound to a deleted interface's index starts again on the interface
    // created in its place at once. Opened before the first apply, so nothing falls between.
    let mut link_changes = match trellis_net::monitor::links() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch links: unnumbered peers' interfaces are rechecked at each resync only");
            None
        }
    };
    sessions
        .apply(&mut peers, &want(mesh_on, &mesh_peers, &crd_peers), &config)
        .await?;

    // A learned IPv6 route whose next hop is link-local leaves through the interface of its
    // unnumbered peer's session, else through the underlay.
    let mut routes = kernel::Installed::new(under.link.index).with_peer_links(peer_links);
    // `/bgp/routes` is the whole Loc-RIB: rendered after route changes only as often as it is
    // cheap enough (see `status::Publisher`).
    let mut publisher = status::Publisher::new();
    // Routes of our protocol that the RIB does not hold go once the sessions had time to
    // bring theirs back (after the first hold period, or at the first resync with every peer
    // established).
    let started = tokio::time::Instant::now();
    let mut swept = false;
    let mut tick = tokio::time::interval(config.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    // Memory was freed in bulk (a burst of route changes, a reconcile's kernel dump) since the
    // last publish tick: given back to the system at the next one.
    let mut freed = false;
    // Route changes were written since the last resync tick (a burst: a full table coming in),
    // and how many ticks in a row the kernel's reconcile waited for the burst to end.
    let mut written = false;
    let mut reconcile_waited = 0u32;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(io("SIGHUP handler"))?;
    let mut ready = false;
    // Route selection deferred after a restart: the kernel stays as the last run left it.
    let mut deferring = speaker.deferring();
    let mut deferred = *deferring.borrow_and_update();
    let restart_metrics = |deferring: bool, swept: usize| {
        metrics.set(
            "bgp_graceful_restart_deferrals_total",
            "Restarts of this agent (since it started: 0 or 1) that kept the kernel's routes and deferred route selection until End-of-RIB or the deferral timer.",
            &[],
            if recovery.is_some() { 1.0 } else { 0.0 },
        );
        metrics.set(
            "bgp_graceful_restart_deferring",
            "1 while route selection is deferred after a restart.",
            &[],
            if deferring { 1.0 } else { 0.0 },
        );
        metrics.set(
            "bgp_graceful_restart_stale_routes_swept_total",
            "Learned kernel routes of an earlier run that the Loc-RIB did not refresh, removed when the deferral ended.",
            &[],
            swept as f64,
        );
    };
    restart_metrics(deferred, 0);
    loop {
        let mut refresh = false;
        let mut periodic = false;
        tokio::select! {
            Ok(()) = async {
                match ipamd_rx.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = ipamd_rx.as_mut() {
                    ipamd_blocks = rx.borrow_and_update().clone();
                }
                let blocks = wanted_prefixes(&config, &ipamd_blocks);
                let wanted = with_services(&blocks, &service_prefixes);
                announce_changes(&speaker, &announced, &wanted, &next_hops)?;
                if let Err(e) = kernel::sync_blackholes(&host, &blocks).await {
                    tracing::warn!(error = %e, "blackhole routes");
                }
                announced = wanted;
            }
            Ok(()) = async {
                match lb_rx.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = lb_rx.as_mut() {
                    service_prefixes = rx.borrow_and_update().clone();
                    service_prefixes.extend(config.announce_service_cidr);
                }
                let wanted = with_services(&wanted_prefixes(&config, &ipamd_blocks), &service_prefixes);
                announce_changes(&speaker, &announced, &wanted, &next_hops)?;
                announced = wanted;
            }
            _ = &mut stop => break,
            Ok(()) = deferring.changed(), if deferred => {
                if !*deferring.borrow_and_update() {
                    deferred = false;
                    // Program the Loc-RIB (routes already in place as wanted are not touched)
                    // and sweep the earlier run's routes that were not refreshed.
                    let rib = speaker.routes();
                    // A peer with the R bit sends its routes only now that it has ours: the
                    // earlier run's routes through it are swept once they are in (its
                    // End-of-RIB), at a later resync, not now.
                    let settling = speaker.peers().iter().any(|p| p.awaiting_end_of_rib);
                    let swept_now = match routes
                        .reconcile(&host, &rib, !settling, |b| speaker.is_current(b))
                        .await
                    {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "reconciling kernel routes after the deferral");
                            0
                        }
                    };
                    swept = !settling;
                    let how = match speaker.recovery() {
                        Some(trellis_bgp::RecoveryStatus::Done(end)) => end.to_string(),
                        _ => "the deferral's end".into(),
                    };
                    tracing::info!(swept = swept_now, best_routes = rib.len(), settling, "restart recovery over ({how}): the kernel follows the Loc-RIB; {swept_now} stale routes swept");
                    restart_metrics(false, swept_now);
                    publisher.routes_changed(&speaker, sessions.bfd.as_ref(), &health, &metrics);
                }
            }
            change = changes.recv() => match change {
                Some(c) if deferred => {
                    // Deferred: the kernel waits; the reconcile at the deferral's end catches up.
                    drop(c);
                    while changes.try_recv().is_ok() {}
                }
                Some(c) => {
                    let current = |b: &trellis_bgp::BestRoute| speaker.is_current(b);
                    if let LocRibChange::Best(b) = &c {
                        tracing::debug!(prefix = %b.prefix, next_hop = %b.next_hop, "best route");
                    }
                    // Take what queued behind it too (a bounded batch: a full table arrives
                    // as thousands of changes; the rest is the next turn's), and write them to
                    // the kernel in batches of many routes per system call.
                    let mut batch = vec![c];
                    while batch.len() < CHANGE_BATCH
                        && let Ok(c) = changes.try_recv()
                    {
                        batch.push(c);
                    }
                    routes.apply_all(&host, &batch, current).await;
                    drop(batch);
                    freed = true;
                    written = true;
                    tracing::debug!(target: "bgp_timing", "kernel written");
                    publisher.routes_changed(&speaker, sessions.bfd.as_ref(), &health, &metrics);
                    metrics.set(
                        "bgp_route_programming_failures",
                        "Learned routes the kernel refused (retried at the next resync).",
                        &[],
                        routes.failures() as f64,
                    );
                    metrics.set(
                        "bgp_route_installs_fenced",
                        "Learned routes not installed because they were no longer best when their turn came (their session had ended).",
                        &[],
                        routes.fenced() as f64,
                    );
                }
                // The stream ends only when the speaker is dropped (a slow reader never falls
                // behind, see `Speaker::subscribe`), which cannot happen while this loop holds
                // it: if it ever does, the agent stops rather than run without route updates.
                None => {
                    return Err(AgentError::mode(std::io::Error::other(
                        "the BGP speaker's route stream ended",
                    )));
                }
            },
            Some(latest) = async {
                match mesh_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                mesh_peers = latest;
                for n in &mut mesh_peers {
                    n.cluster_id = n.cluster_id.or(global_cluster_id);
                }
                sessions.apply(&mut peers, &want(mesh_on, &mesh_peers, &crd_peers), &config).await?;
            }
            Some(d) = async {
                match dynamic_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                mesh_on = d.mesh.unwrap_or(config.mesh);
                crd_peers = d.peers;
                sessions.apply(&mut peers, &want(mesh_on, &mesh_peers, &crd_peers), &config).await?;
            }
            Some(first) = async {
                match link_changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let wanted = want(mesh_on, &mesh_peers, &crd_peers);
                let unnumbered = |name: Option<&str>| {
                    name.is_some_and(|name| wanted.values().any(|n| n.interface.as_deref() == Some(name)))
                };
                // What queued behind it too: one recheck for a burst (a pod's veth pair, say).
                let mut hit = unnumbered(first.name.as_deref());
                if let Some(rx) = link_changes.as_mut() {
                    while let Ok(ch) = rx.try_recv() {
                        hit |= unnumbered(ch.name.as_deref());
                    }
                }
                if hit && sessions.recheck_unnumbered(&mut peers).await? {
                    sessions.apply(&mut peers, &wanted, &config).await?;
                }
            }
            _ = tick.tick() => {
                refresh = true;
                periodic = true;
                // An unnumbered peer's interface deleted and created again (a new index), or
                // one that was missing: its session set up again on the interface as it is.
                if sessions.recheck_unnumbered(&mut peers).await? {
                    sessions.apply(&mut peers, &want(mesh_on, &mesh_peers, &crd_peers), &config).await?;
                }
            }
            // The announce file changed: its prefixes go out at once, and nothing else is done
            // before the peers' tasks have sent them (the kernel's reconciliation with the RIB
            // is the resync's business); until the node is ready, a full refresh.
            _ = hup.recv() => if ready {
                tracing::debug!(target: "bgp_timing", "SIGHUP");
                let blocks = wanted_prefixes(&config, &ipamd_blocks);
                let wanted = with_services(&blocks, &service_prefixes);
                if wanted != announced {
                    announce_changes(&speaker, &announced, &wanted, &next_hops)?;
                    announced = wanted;
                    // The peers' tasks (woken by the export) send their UPDATEs first.
                    tokio::task::yield_now().await;
                    if let Err(e) = kernel::sync_blackholes(&host, &blocks).await {
                        tracing::warn!(error = %e, "blackhole routes");
                    }
                }
            } else {
                refresh = true;
            },
            _ = publish.tick() => {
                publisher.publish(&speaker, sessions.bfd.as_ref(), &health, &metrics);
                if std::mem::take(&mut freed) {
                    release_freed_memory();
                }
            }
        }
        if refresh {
            let blocks = wanted_prefixes(&config, &ipamd_blocks);
            let wanted = with_services(&blocks, &service_prefixes);
            // Peers first (convergence is what the cluster waits for), then our blackholes.
            announce_changes(&speaker, &announced, &wanted, &next_hops)?;
            if let Err(e) = kernel::sync_blackholes(&host, &blocks).await {
                tracing::warn!(error = %e, "blackhole routes");
            }
            announced = wanted;
            let all_up = speaker
                .peers()
                .iter()
                .all(|p| p.state == trellis_bgp::fsm::State::Established);
            let settling = speaker.peers().iter().any(|p| p.awaiting_end_of_rib);
            let sweep = !swept
                && !settling
                && (all_up
                    || started.elapsed()
                        >= Duration::from_secs(u64::from(config.hold_time.max(3))));
            // While a burst of route changes is being written, the periodic reconcile waits (at
            // most three ticks): it would dump the kernel's table and copy the Loc-RIB mid-burst
            // (a full table: twice 100,000 routes), rewrite routes the stream is about to write
            // anyway, and leave the stream unread meanwhile, so that the agent fell behind it.
            let burst = periodic && ready && std::mem::take(&mut written) && reconcile_waited < 3;
            if burst {
                reconcile_waited += 1;
            } else {
                reconcile_waited = 0;
            }
            // While selection is deferred after a restart, the kernel is left alone.
            if !deferred && !burst {
                // The kernel follows the RIB: routes deleted by hand come back, leftovers go.
                let rib: Vec<_> = speaker.routes();
                if let Err(e) = routes
                    .reconcile(&host, &rib, sweep || swept, |b| speaker.is_current(b))
                    .await
                {
                    tracing::warn!(error = %e, "reconciling kernel routes");
                }
                swept |= sweep;
                freed = true;
            }
            publisher.routes_changed(&speaker, sessions.bfd.as_ref(), &health, &metrics);
            if !ready {
                NodeState {
                    mtu: under.link.mtu,
                }
                .write(&config.state_dir)
                .map_err(io(format!("write {}", config.state_dir.display())))?;
                if let Some(dir) = &config.cni_conf_dir {
                    let list = cniconf::conflist(
                        &config.state_dir,
                        under.link.mtu,
                        config.ipamd.as_deref(),
                        config.policy.as_ref(),
                        config.portmap,
                        config.dual_stack,
                    );
                    cniconf::write(dir, &list)
                        .map_err(io(format!("write the CNI config in {}", dir.display())))?;
                }
                health.set_ready();
                ready = true;
                tracing::info!("node ready");
            }
        }
    }
    let _ = http_stop.send(());
    tracing::info!("stopping; routes stay in place");
    // BFD says AdminDown first: peers take that as no failure (RFC 5882 §3.2), so a restart
    // is left to graceful restart instead of BFD tearing the sessions down.
    if let Some(b) = bfd.take() {
        b.shutdown().await;
    }
    drop(speaker);
    Ok(())
}

/// Gives the memory freed since the last call back to the system. glibc's malloc keeps what
/// its per-thread arenas freed (a full table's burst of route changes, each reconcile's copy
/// of the kernel table): without this the agent stayed at several times the memory it used
/// after 100,000 routes came in.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer of ours and only returns free pages of the
    // allocator's own arenas to the system; there is no safe wrapper for it.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The status listener's `/bgp/routes`: the Loc-RIB of the speaker in `from`, rendered now.
fn routes_route(
    from: Arc<std::sync::OnceLock<std::sync::Weak<Speaker>>>,
) -> trellis_daemon::Routes {
    Arc::new(move |path, _query| {
        if path != status::ROUTES_PATH {
            return None;
        }
        let speaker = from.get().and_then(std::sync::Weak::upgrade)?;
        let body = status::routes_json(&speaker);
        drop(speaker);
        Some(Box::pin(std::future::ready(trellis_daemon::Reply {
            status: 200,
            content_type: "application/json",
            body,
        })))
    })
}

/// Announces what is wanted and not announced yet, and withdraws what is no longer wanted.
fn announce_changes(
    speaker: &Speaker,
    announced: &BTreeSet<IpNet>,
    wanted: &BTreeSet<IpNet>,
    next_hops: &NextHops,
) -> Result<(), AgentError> {
    // Logged after the speaker has handed the change to the peers' tasks: the log line is not
    // on the way to them.
    for p in wanted.difference(announced) {
        speaker
            .announce(*p, next_hops.of(p))
            .map_err(AgentError::mode)?;
        tracing::info!(prefix = %p, "announcing");
    }
    for p in announced.difference(wanted) {
        speaker.withdraw(*p).map_err(AgentError::mode)?;
        tracing::info!(prefix = %p, "withdrawing");
    }
    Ok(())
}

/// A neighbour's filters: its own rules, then the agent's; a mesh node never gives us a
/// default route; an external (eBGP) peer gets only our own prefixes unless a rule sends it
/// more — the cluster is no transit between its routers — while iBGP peers get what BGP's
/// own rules allow (a router's routes carried to the other nodes, reflection).
fn policy(n: &Neighbour, config: &Config) -> RoutePolicy {
    RoutePolicy {
        import: PrefixFilter::new(n.import.iter().chain(&config.import).copied().collect()),
        export: PrefixFilter::new(n.export.iter().chain(&config.export).copied().collect()),
        refuse_default: n.mesh,
        export_learned: n.asn == config.asn,
    }
}

/// A neighbour's BFD intervals, None when BFD is off for it: its `BGPPeer`'s `bfd` fields,
/// else the agent's flags.
fn bfd_intervals(n: &Neighbour, config: &Config) -> Option<trellis_bfd::Intervals> {
    let spec = n.bfd.unwrap_or_default();
    if !spec.enabled.unwrap_or(config.bfd) {
        return None;
    }
    let ms =
        |v: Option<u32>| v.map_or(config.bfd_interval, |v| Duration::from_millis(u64::from(v)));
    Some(trellis_bfd::Intervals {
        desired_min_tx: ms(spec.min_tx_ms),
        required_min_rx: ms(spec.min_rx_ms),
        multiplier: spec.multiplier.unwrap_or(config.bfd_multiplier),
    })
}

/// The sessions the agent runs: BGP with every neighbour, and BFD with those that want it.
struct Sessions<'a> {
    speaker: &'a Speaker,
    bfd: &'a mut Option<Bfd>,
    node_ip: Ipv4Addr,
    /// Dual-stack: the node's IPv6 address (the source of IPv6 mesh sessions and of BFD with
    /// IPv6 peers).
    node_ip6: Option<Ipv6Addr>,
    link: OurLink,
    host: Handle,
    /// Unnumbered peers' interfaces, for the kernel routes via their link-local next hops.
    peer_links: kernel::PeerLinks,
    /// The last `apply` skipped an unnumbered peer (its interface missing or without a
    /// link-local address).
    missing_unnumbered: bool,
}

impl Sessions<'_> {
    /// The BFD driver, started on first use. A path BFD declares failed ends the neighbour's
    /// BGP session at once, from BFD's own task (the agent's loop may be busy programming
    /// routes).
    async fn bfd(&mut self) -> Result<&Bfd, AgentError> {
        if self.bfd.is_none() {
            let failures = self.speaker.failures();
            let started = Bfd::start(BfdConfig::default(), move |e| {
                if e.transition.is_failure() {
                    failures.session_failed(e.peer, e.reason());
                }
            })
            .await
            .map_err(AgentError::mode)?;
            tracing::info!("BFD started (UDP 3784)");
            *self.bfd = Some(started);
        }
        self.bfd
            .as_ref()
            .ok_or_else(|| AgentError::mode(trellis_bfd::BfdError::Stopped))
    }

    /// An unnumbered peer's interface: its index (the scope of the peer's address) and our
    /// link-local address on it (the next hop of our IPv6 routes to that peer).
    async fn unnumbered(&self, peer: IpAddr, name: &str) -> Result<(u32, Ipv6Addr), AgentError> {
        let link = self.host.link(name).await?.ok_or_else(|| {
            AgentError::Config(format!("peer {peer}%{name}: no interface {name}"))
        })?;
        let mut ll: Vec<(bool, Ipv6Addr)> = self
            .host
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .filter_map(|a| match a.address.addr() {
                IpAddr::V6(ll) if ll.is_unicast_link_local() => Some((a.tentative, ll)),
                _ => None,
            })
            .collect();
        // A usable one first (a tentative one is still under duplicate address detection).
        ll.sort_by_key(|(tentative, _)| *tentative);
        let ours = ll
            .first()
            .map(|(_, ll)| *ll)
            .ok_or_else(|| {
                AgentError::Config(format!(
                    "peer {peer}%{name}: {name} has no link-local IPv6 address (is IPv6 on and the link up?)"
                ))
            })?;
        tracing::info!(%peer, iface = name, index = link.index, link_local = %ours, "unnumbered peer: session and next hops over the link-local addresses");
        Ok((link.index, ours))
    }

    /// Forgets the interface of the peer at `addr` (when it was an unnumbered one): its routes
    /// no longer name it, and our router advertisements on it stop with its last peer.
    fn forget_link(&self, addr: IpAddr) {
        if let Some(index) = kernel::set_peer_link(&self.peer_links, addr, None) {
            router_adv::stop(index);
        }
    }

    /// Forgets the unnumbered peers whose interface is gone or has another index than their
    /// session's (deleted and created again with the same name), their sessions removed, so
    /// that `apply` sets them up again on the interface as it is now. True when `apply` has
    /// something to do: a peer forgotten, or a wanted unnumbered peer not set up (its
    /// interface was missing) whose interface is there now.
    async fn recheck_unnumbered(
        &mut self,
        have: &mut BTreeMap<IpAddr, Neighbour>,
    ) -> Result<bool, AgentError> {
        let mut again = false;
        for (addr, n) in have.clone() {
            let Some(name) = &n.interface else { continue };
            let known = self
                .peer_links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .copied();
            let now = match self.host.link(name).await {
                Ok(link) => link.map(|l| l.index),
                Err(e) => {
                    tracing::warn!(peer = %addr, interface = %name, error = %e, "cannot look up the unnumbered peer's interface");
                    continue;
                }
            };
            if now != known {
                tracing::info!(peer = %addr, interface = %name, old = ?known, new = ?now, "the unnumbered peer's interface changed: its session starts again on it");
                self.speaker.remove_peer(addr).map_err(AgentError::mode)?;
                self.forget_link(addr);
                have.remove(&addr);
                again = true;
            }
        }
        Ok(again || self.missing_unnumbered)
    }

    async fn apply(
        &mut self,
        have: &mut BTreeMap<IpAddr, Neighbour>,
        want: &BTreeMap<IpAddr, Neighbour>,
        config: &Config,
    ) -> Result<(), AgentError> {
        for (addr, n) in have.clone() {
            if want.get(&addr) != Some(&n) {
                // A changed neighbour (its AS, timers or filters) gets a new session.
                tracing::info!(peer = %addr, "removing peer");
                self.speaker.remove_peer(addr).map_err(AgentError::mode)?;
                self.forget_link(addr);
                if let Some(b) = self.bfd.as_ref()
                    && b.session(addr).is_some()
                    && let Err(e) = b.remove(addr).await
                {
                    tracing::warn!(peer = %addr, error = %e, "removing the BFD session");
                }
                have.remove(&addr);
            }
        }
        let mut missing = false;
        for (addr, n) in want {
            if !have.contains_key(addr) {
                tracing::info!(peer = %addr, asn = n.asn, "adding peer");
                let mut pc = PeerConfig::new(*addr, n.asn);
                pc.hold_time = Some(n.hold_time.unwrap_or(config.hold_time));
                pc.max_prefixes =
                    n.max_prefixes
                        .or(config.max_prefixes)
                        .map(|limit| trellis_bgp::MaxPrefixes {
                            limit,
                            restart: config.max_prefix_restart,
                        });
                pc.policy = policy(n, config);
                pc.rr_client = n.rr_client;
                pc.password = n.password.clone();
                pc.link_local_next_hop = self.link.next_hop_for(*addr);
                pc.extended_next_hop = config.extended_next_hop;
                if let Some(name) = &n.interface {
                    let (index, ours) = match self.unnumbered(*addr, name).await {
                        Ok(found) => found,
                        Err(e) => {
                            // The others keep working; the next apply tries again (when
                            // the interface appears, or at the latest at the next resync; see
                            // `recheck_unnumbered`).
                            tracing::warn!(peer = %addr, interface = %name, error = %e, "cannot set up an unnumbered peer: skipped");
                            missing = true;
                            continue;
                        }
                    };
                    pc.scope_id = Some(index);
                    // A peer that names only the interface (FRR's `neighbor IF interface`)
                    // finds our link-local address from our router advertisements.
                    router_adv::advertise(index, name);
                    // Our routes of both families go to it with our link-local address (an
                    // IPv4-only node has no global IPv6 one: the link-local address stands
                    // in for it).
                    pc.link_local_next_hop = Some((self.node_ip6.unwrap_or(ours), ours));
                    kernel::set_peer_link(&self.peer_links, *addr, Some(index));
                }
                if let (IpAddr::V6(_), Some(v6), true) = (addr, self.node_ip6, n.mesh) {
                    // The mesh peer knows us by our published IPv6 address.
                    pc.local_address = Some(IpAddr::V6(v6));
                }
                if let Err(e) = self.speaker.add_peer(pc) {
                    // A peer that cannot be configured (say, a `BGPPeer` with a link-local
                    // `peerIP`, which names no interface) is logged and left out: the agent
                    // and its other sessions keep running, and the next apply tries again.
                    tracing::warn!(peer = %addr, error = %e, "cannot add this peer: skipped");
                    self.forget_link(*addr);
                    continue;
                }
                let bfd = bfd_intervals(n, config);
                if bfd.is_some() && n.interface.is_some() {
                    tracing::warn!(peer = %addr, "no BFD for an unnumbered peer (BFD to link-local addresses is not supported); failures are detected by the hold timer only");
                }
                if let Some(intervals) = bfd.filter(|_| n.interface.is_none()) {
                    // The source: the listening address when it is one of the peer's family,
                    // else the node's address of that family.
                    let listen = config.listen.ip();
                    let local = match addr {
                        IpAddr::V4(_) if listen.is_ipv4() && !listen.is_unspecified() => {
                            Some(listen)
                        }
                        IpAddr::V4(_) => Some(IpAddr::V4(self.node_ip)),
                        IpAddr::V6(_) if listen.is_ipv6() && !listen.is_unspecified() => {
                            Some(listen)
                        }
                        IpAddr::V6(_) => self.node_ip6.map(IpAddr::V6),
                    };
                    let spec = BfdPeer {
                        local,
                        intervals,
                        ..BfdPeer::new(*addr)
                    };
                    // A BGP session without its BFD still runs (on its hold timer): say so.
                    let added = match self.bfd().await {
                        Ok(b) => b.add(spec).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = added {
                        tracing::warn!(peer = %addr, error = %e, "no BFD for this peer; failures are detected by the hold timer only");
                    }
                }
                have.insert(*addr, n.clone());
            }
        }
        self.missing_unnumbered = missing;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/bgp/routes` is the Loc-RIB at the time it is asked for: not found before the speaker
    /// runs, gone with it, and no answer for other paths.
    #[tokio::test]
    async fn the_route_list_is_rendered_from_the_speaker_when_asked_for() {
        let from: Arc<std::sync::OnceLock<std::sync::Weak<Speaker>>> = Arc::default();
        let route = routes_route(from.clone());
        assert!(route(status::ROUTES_PATH, "").is_none(), "no speaker yet");
        let id = Ipv4Addr::new(198, 18, 0, 2);
        let speaker = Arc::new(
            Speaker::start(SpeakerConfig::new(64512, id))
                .await
                .expect("starts"),
        );
        let _ = from.set(Arc::downgrade(&speaker));
        assert!(route(status::STATUS_PATH, "").is_none(), "not its path");
        let list = |route: &trellis_daemon::Routes| {
            let reply = route(status::ROUTES_PATH, "").expect("answered");
            async move {
                let reply = reply.await;
                assert_eq!(reply.status, 200);
                serde_json::from_str::<Vec<status::RouteRow>>(&reply.body).expect("route rows")
            }
        };
        assert!(list(&route).await.is_empty());
        let block: IpNet = "10.244.1.0/26".parse().expect("prefix");
        speaker.announce(block, IpAddr::V4(id)).expect("announce");
        let rows = list(&route).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].prefix, "10.244.1.0/26");
        assert_eq!(rows[0].source, "local");
        drop(speaker);
        assert!(
            route(status::ROUTES_PATH, "").is_none(),
            "the speaker is gone"
        );
    }

    #[test]
    fn bfd_follows_the_peer_then_the_flags() {
        let mut config = Config::new("n1");
        let mut n: Neighbour = "198.18.0.12:65001".parse().unwrap();
        assert_eq!(bfd_intervals(&n, &config), None, "off by default");
        config.bfd = true;
        assert_eq!(
            bfd_intervals(&n, &config),
            Some(trellis_bfd::Intervals::default()),
            "--bfd: 300 ms x 3"
        );
        n.bfd = Some(crds::BfdSpec {
            enabled: Some(false),
            ..Default::default()
        });
        assert_eq!(
            bfd_intervals(&n, &config),
            None,
            "a BGPPeer switches it off"
        );
        config.bfd = false;
        n.bfd = Some(crds::BfdSpec {
            enabled: Some(true),
            min_rx_ms: Some(100),
            min_tx_ms: None,
            multiplier: Some(5),
        });
        assert_eq!(
            bfd_intervals(&n, &config),
            Some(trellis_bfd::Intervals {
                desired_min_tx: Duration::from_millis(300),
                required_min_rx: Duration::from_millis(100),
                multiplier: 5,
            })
        );
    }

    #[test]
    fn own_prefixes_go_with_the_next_hop_of_their_family() {
        let v4: Ipv4Addr = "198.18.0.12".parse().unwrap();
        let v6: Ipv6Addr = "fd00:198:18::12".parse().unwrap();
        let p4: IpNet = "10.244.1.0/26".parse().unwrap();
        let p6: IpNet = "fd00:10:244::/122".parse().unwrap();
        let dual = NextHops { v4, v6: Some(v6) };
        assert_eq!(dual.of(&p4), IpAddr::V4(v4));
        assert_eq!(dual.of(&p6), IpAddr::V6(v6));
        let single = NextHops { v4, v6: None };
        assert_eq!(single.of(&p6), IpAddr::V4(v4));
        assert!(is_global_v6(v6));
        assert!(!is_global_v6("fe80::1".parse().unwrap()));
        assert!(!is_global_v6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn our_link_local_next_hop_goes_to_peers_on_the_underlay_link_only() {
        let global: Ipv6Addr = "fd00:198:18::12".parse().unwrap();
        let ll: Ipv6Addr = "fe80::12".parse().unwrap();
        let link = OurLink {
            next_hop: Some((global, ll)),
            nets: vec![
                "198.18.0.0/24".parse().unwrap(),
                "fd00:198:18::/64".parse().unwrap(),
            ],
        };
        for on_link in ["198.18.0.13", "fd00:198:18::13"] {
            assert_eq!(
                link.next_hop_for(on_link.parse().unwrap()),
                Some((global, ll)),
                "{on_link}"
            );
        }
        for away in ["203.0.113.1", "fd00:1::1"] {
            assert_eq!(link.next_hop_for(away.parse().unwrap()), None, "{away}");
        }
        let v4_only = OurLink {
            next_hop: None,
            ..link
        };
        assert_eq!(v4_only.next_hop_for("198.18.0.13".parse().unwrap()), None);
    }

    #[test]
    fn neighbours_read_like_flags() {
        let n: Neighbour = "198.18.0.12:65001".parse().unwrap();
        assert_eq!(n.address, "198.18.0.12".parse::<IpAddr>().unwrap());
        assert_eq!(n.asn, 65001);
        let n: Neighbour = "[fd00::1]:4200000000".parse().unwrap();
        assert_eq!(n.address, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(n.asn, 4_200_000_000);
        assert!("198.18.0.12".parse::<Neighbour>().is_err());
        assert!("x:1".parse::<Neighbour>().is_err());
        assert!("198.18.0.1:AS1".parse::<Neighbour>().is_err());
        assert_eq!(n.interface, None);
    }

    #[test]
    fn link_local_neighbours_name_their_interface() {
        for s in ["[fe80::1%eth1]:64512", "fe80::1%eth1:64512"] {
            let n: Neighbour = s.parse().unwrap();
            assert_eq!(n.address, "fe80::1".parse::<IpAddr>().unwrap(), "{s}");
            assert_eq!(n.interface.as_deref(), Some("eth1"), "{s}");
            assert_eq!(n.asn, 64512);
        }
        let e = "[fe80::1]:64512".parse::<Neighbour>().unwrap_err();
        assert!(e.contains("needs its interface"), "{e}");
        let e = "[fd00::1%eth1]:64512".parse::<Neighbour>().unwrap_err();
        assert!(e.contains("only a link-local"), "{e}");
        assert!("[fe80::1%]:64512".parse::<Neighbour>().is_err());
    }
}
