//! `trellis bgp-agent` (the routed mode's node agent) and `trellis bgp status|routes`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use trellis_bgp_agent::status::{PeerRow, ROUTES_PATH, RouteRow, STATUS_PATH};
use trellis_bgp_agent::{Config, Neighbour};
use trellis_net::underlay::Choice;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// This node's name (its Node object). Standalone: defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// No Kubernetes: peers and prefixes from the flags only.
    #[arg(long)]
    standalone: bool,
    /// The kubeconfig (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The interface carrying BGP and pod traffic, by name or address (default: the default
    /// route's; without one, the interface holding the --listen address, then the --router-id).
    #[arg(long)]
    iface: Option<String>,
    /// This node's AS number (Calico's default private AS).
    #[arg(long, default_value_t = 64512)]
    asn: u32,
    /// The BGP identifier (default: the node's underlay address).
    #[arg(long)]
    router_id: Option<Ipv4Addr>,
    /// Dual-stack pods: trellis-ipam hands each pod an IPv4 and an IPv6 address (ipamd needs
    /// an IPv6 pool too), IPv6 forwarding is turned on, IPv6 unicast is negotiated with the
    /// peers (over the same sessions as IPv4) and the node's IPv6 blocks are announced with
    /// its IPv6 address as next hop. Without it IPv6 unicast is not offered to peers.
    #[arg(long)]
    dual_stack: bool,
    /// With --dual-stack: the node's IPv6 address, the next hop of its IPv6 blocks (default:
    /// the first global IPv6 address of the --iface interface).
    #[arg(long, requires = "dual_stack")]
    ipv6_address: Option<std::net::Ipv6Addr>,
    /// With --dual-stack: the iBGP mesh runs over IPv6 — this node publishes its IPv6 address
    /// as its BGP address, the sessions (and their BFD) run between the nodes' IPv6 addresses
    /// and carry both families; the default --listen becomes [::]:179. Give it on every node.
    #[arg(long, requires = "dual_stack")]
    mesh_ipv6: bool,
    /// Where sessions are accepted.
    #[arg(long, default_value = "0.0.0.0:179")]
    listen: SocketAddr,
    /// No iBGP full mesh among the cluster's nodes (peers from --peer only).
    #[arg(long)]
    no_mesh: bool,
    /// A neighbour, ADDRESS:ASN (repeatable): `198.18.0.1:64512`, `[fd00::1]:64512`, or a
    /// link-local address with its interface, `[fe80::1%eth1]:64512` (unnumbered BGP: IPv4
    /// routes with IPv6 next hops, RFC 8950, when the peer offers it too; IPv6 unicast with
    /// --dual-stack).
    #[arg(long = "peer")]
    peers: Vec<Neighbour>,
    /// Offer RFC 8950 (IPv4 routes with IPv6 next hops) to peers with a global IPv6 address
    /// too (unnumbered peers always get the offer). With the peer's offer as well, IPv4
    /// routes go to it with our IPv6 session address as next hop.
    #[arg(long)]
    extended_next_hop: bool,
    /// A file holding the TCP MD5 password (RFC 2385) of every --peer (one trailing newline is
    /// not part of it). A peer with another password, or none, never gets a session.
    #[arg(long)]
    peer_password_file: Option<PathBuf>,
    /// The namespace of the Secrets BGPPeers name for their passwords (spec.password.secretKeyRef).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    secrets_namespace: String,
    /// A prefix to announce (repeatable); gets a blackhole route.
    #[arg(long = "announce")]
    announce: Vec<IpNet>,
    /// A file of prefixes to announce, one per line; re-read every resync and on SIGHUP.
    #[arg(long)]
    announce_file: Option<PathBuf>,
    /// Do not announce LoadBalancer Services' addresses (by default, in a cluster, every
    /// address in a LoadBalancer Service's status.loadBalancer.ingress is announced as a /32
    /// to every peer, external ones included, as kube-router and MetalLB do).
    #[arg(long)]
    no_announce_load_balancers: bool,
    /// Announce this cluster IP range too (e.g. 10.96.0.0/12), so external peers reach
    /// ClusterIPs through the nodes.
    #[arg(long)]
    announce_service_cidr: Option<IpNet>,
    /// ipamd's socket: announce the node's IPAM blocks (in a cluster: default
    /// /run/trellis/ipamd.sock; standalone: none unless given).
    #[arg(long)]
    ipamd_socket: Option<PathBuf>,
    /// Proposed hold time, seconds (0, or at least 3).
    #[arg(long, default_value_t = 90)]
    hold_time: u16,
    /// At most this many next hops per learned prefix: equally good paths from several peers
    /// become one multipath (ECMP) kernel route; 1 keeps the single best path.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_paths: u16,
    /// At most this many prefixes from each peer (a BGPPeer's maxPrefixes overrides it): one
    /// more closes the session with a Cease "maximum number of prefixes reached" (RFC 4486).
    #[arg(long)]
    max_prefixes: Option<u32>,
    /// Seconds a session stays down after its peer broke the max-prefix limit.
    #[arg(long, default_value_t = 30)]
    max_prefix_restart: u64,
    /// An import rule for every peer, after its BGPFilters' (repeatable, in order; the first
    /// match decides, no match accepts): `accept|reject PREFIX [ge N] [le N]`. A mesh node's
    /// default route is refused whatever the rules say.
    #[arg(long = "import-filter")]
    import_filter: Vec<trellis_bgp_agent::PrefixRule>,
    /// An export rule for every peer, after its BGPFilters' (repeatable, in order; no match:
    /// our own prefixes go, learned routes only from a route reflector).
    #[arg(long = "export-filter")]
    export_filter: Vec<trellis_bgp_agent::PrefixRule>,
    /// Neither ask peers to keep our routes across a restart nor keep theirs.
    #[arg(long)]
    no_graceful_restart: bool,
    /// Graceful restart without its restarting side: an agent that finds learned routes of an
    /// earlier run in the kernel removes them at start (a cold start), and its OPENs carry
    /// neither the R bit nor F bits. By default it keeps them, sends R and F, and defers
    /// route selection until End-of-RIB from every peer (or --graceful-restart-deferral).
    #[arg(long)]
    no_restart_recovery: bool,
    /// Seconds route selection may be deferred after a restart (the Selection_Deferral_Timer,
    /// RFC 4724 §4.1): the kernel and our UPDATEs wait this long at most for the peers'
    /// End-of-RIB. Keep it below the 120 s our peers keep our routes for.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    graceful_restart_deferral: u64,
    /// Run BFD (RFC 5880/5881, single-hop, UDP 3784) with every peer — mesh nodes and
    /// --peer neighbours; a BGPPeer's `bfd` overrides it. A BFD Down ends the BGP session at
    /// once and withdraws its routes (no graceful-restart stale period); the peer's AdminDown
    /// (e.g. its agent stopping) is no failure.
    #[arg(long)]
    bfd: bool,
    /// BFD's Desired Min TX and Required Min RX, milliseconds (a BGPPeer's
    /// `bfd.minTxMs`/`minRxMs` override it). While a session is not Up it sends once a second.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    bfd_interval_ms: u64,
    /// BFD's Detect Mult: the peer is declared down after this many intervals without a packet
    /// (a BGPPeer's `bfd.multiplier` overrides it).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    bfd_multiplier: u8,
    /// Act as a route reflector with this cluster id (RFC 4456). In a cluster the Node's
    /// `trellis.dev/route-reflector-cluster-id` annotation overrides it, and the nodes a
    /// BGPPeer with selectors peers us with are our clients unless they have our cluster id.
    #[arg(long)]
    cluster_id: Option<Ipv4Addr>,
    /// A --peer that is our route-reflector client (repeatable; needs --cluster-id): its
    /// routes are reflected to every iBGP peer, and every iBGP peer's to it.
    #[arg(long = "rr-client", requires = "cluster_id")]
    rr_clients: Vec<std::net::IpAddr>,
    /// Where the plugin reads the node's state.
    #[arg(long, default_value = trellis_routed::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Write `10-trellis-routed.conflist` here once ready (in a cluster: default
    /// /etc/cni/net.d; standalone: not written unless given).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Leave the reference `portmap` plugin out of the CNI configuration (pods' hostPorts are
    /// then not mapped). By default it is chained after the network's plugin, as flannel's and
    /// Calico's lists do; the runtime must find it in its CNI plugin directories.
    #[arg(long)]
    no_portmap: bool,
    /// Seconds between full reconciles.
    #[arg(long, default_value_t = 5)]
    resync: u64,
    /// Milliseconds between looks for tombstones: veth pairs CNI DEL retired (`trz…`) whose
    /// namespace outlived DEL. One seen at two looks in a row is deleted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    tombstone_sweep_ms: u64,
    /// `/healthz`, `/readyz`, `/metrics`, `/bgp/status`, `/bgp/routes` (what `trellis bgp`
    /// reads).
    #[arg(long, default_value = "127.0.0.1:9912")]
    status_listen: SocketAddr,
    #[command(flatten)]
    policy: crate::policy_gate::PolicyGateArgs,
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let node = match args.node {
        Some(n) => n,
        None if args.standalone => crate::hostname()?,
        None => bail!("give --node (or NODE_NAME): the name of this node's Node object"),
    };
    let mut c = Config::new(node);
    c.standalone = args.standalone;
    c.kubeconfig = args.kubeconfig;
    c.underlay = args.iface.map_or(Choice::DefaultRoute, Choice::Iface);
    c.asn = args.asn;
    c.router_id = args.router_id;
    c.dual_stack = args.dual_stack;
    c.ipv6_address = args.ipv6_address;
    c.mesh_ipv6 = args.mesh_ipv6;
    c.extended_next_hop = args.extended_next_hop;
    c.listen = args.listen;
    c.mesh = !args.no_mesh;
    c.peers = args.peers;
    for a in &args.rr_clients {
        let Some(p) = c.peers.iter_mut().find(|p| p.address == *a) else {
            bail!("--rr-client {a}: no --peer has that address");
        };
        p.rr_client = true;
    }
    if let Some(path) = &args.peer_password_file {
        let text = std::fs::read(path)
            .with_context(|| format!("reading the peer password file {}", path.display()))?;
        let text = text.strip_suffix(b"\n").unwrap_or(&text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let key = trellis_bgp_agent::Md5Key::new(text.to_vec())
            .with_context(|| format!("the peer password in {}", path.display()))?;
        for p in &mut c.peers {
            p.password = Some(key.clone());
        }
    }
    c.secrets_namespace = args.secrets_namespace;
    c.announce = args.announce;
    c.announce_file = args.announce_file;
    c.announce_load_balancers = !args.no_announce_load_balancers;
    c.announce_service_cidr = args.announce_service_cidr;
    // In a cluster the node's pods are this agent's business: ipamd and the runtime's CNI
    // directory by default, as the overlay agent has them. Standalone, only what is asked.
    let in_cluster = !args.standalone;
    c.ipamd = args
        .ipamd_socket
        .or_else(|| in_cluster.then(|| PathBuf::from(trellis_ipam::client::DEFAULT_SOCKET)));
    c.hold_time = args.hold_time;
    c.max_paths = usize::from(args.max_paths);
    c.max_prefixes = args.max_prefixes;
    c.import = args.import_filter;
    c.export = args.export_filter;
    c.max_prefix_restart = Duration::from_secs(args.max_prefix_restart.max(1));
    c.graceful_restart = !args.no_graceful_restart;
    c.restart_recovery = !args.no_restart_recovery;
    c.restart_deferral = Duration::from_secs(args.graceful_restart_deferral);
    c.bfd = args.bfd;
    c.bfd_interval = Duration::from_millis(args.bfd_interval_ms);
    c.bfd_multiplier = args.bfd_multiplier;
    c.cluster_id = args.cluster_id;
    c.state_dir = args.state_dir;
    c.cni_conf_dir = args
        .cni_conf_dir
        .or_else(|| in_cluster.then(|| PathBuf::from("/etc/cni/net.d")));
    c.resync = Duration::from_secs(args.resync.max(1));
    c.status_listen = Some(args.status_listen);
    c.policy = args.policy.gate()?;
    c.portmap = !args.no_portmap;
    c.tombstone_sweep = Duration::from_millis(args.tombstone_sweep_ms);
    trellis_bgp_agent::run(c, trellis_daemon::shutdown_signal())
        .await
        .context("the BGP agent failed")
}

#[derive(clap::Args)]
pub struct BgpArgs {
    /// The agent's --status-listen address.
    #[arg(long, global = true, default_value = "127.0.0.1:9912")]
    agent: SocketAddr,
    #[command(subcommand)]
    command: BgpCommand,
}

#[derive(clap::Subcommand)]
enum BgpCommand {
    /// Peers: state, uptime, prefixes received and sent.
    Status,
    /// The best routes: prefix, next hop, where from.
    Routes,
}

/// Ends a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long `trellis bgp` waits to connect, and then for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GET of a JSON document from the agent's status listener (plain HTTP/1.1 on loopback).
async fn get(agent: SocketAddr, path: &str) -> anyhow::Result<String> {
    get_within(agent, path, TIMEOUT).await
}

async fn get_within(agent: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(agent))
        .await
        .with_context(|| format!("no answer from the agent at {agent}"))?
        .with_context(|| format!("cannot reach the agent at {agent} (its --status-listen)"))?;
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection is driven beside the request (its errors are the request's), until
        // the agent closes it after the answer or we give up.
        let _driver = AbortOnDrop(tokio::spawn(connection));
        let request = Request::get(path)
            .header(HOST, "agent")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let (head, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((head, body))
        }
        .await;
        anyhow::Ok(answer?)
    };
    let (head, body) = tokio::time::timeout(limit, exchange)
        .await
        .context("the agent did not answer in time")?
        .context("not an HTTP answer")?;
    if head.status != StatusCode::OK {
        bail!("{path}: {:?} {}", head.version, head.status);
    }
    String::from_utf8(body.to_vec()).context("the agent's answer is not UTF-8")
}

/// `trellis bgp status`: a row per peer (prefixes now; UPDATEs in this session and in all;
/// the capabilities the session negotiated, `-` while none is up), and under it its BFD
/// session and the last error, when there are.
fn status_table(peers: &[PeerRow]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<40} {:>10} {:<12} {:>10} {:>8} {:>8} {:>8} {:>17} CAPS\n",
        "PEER", "AS", "STATE", "UPTIME", "RECV", "SENT", "SESSIONS", "UPDATES IN/OUT"
    );
    for p in peers {
        let updates = format!(
            "{}/{} ({}/{})",
            p.updates_received, p.updates_sent, p.total.updates_received, p.total.updates_sent
        );
        let caps = if p.capabilities.is_empty() {
            "-".to_string()
        } else {
            p.capabilities.join(",")
        };
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:<12} {:>9}s {:>8} {:>8} {:>8} {:>17} {caps}",
            p.address,
            p.remote_asn,
            p.state,
            p.uptime_seconds,
            p.prefixes_received,
            p.prefixes_sent,
            p.sessions,
            updates,
        );
        if let Some(b) = &p.bfd {
            let _ = write!(
                out,
                "    bfd: {} (peer {}), {} ms x {}, detection {} ms, {} downs",
                b.state, b.remote_state, b.min_tx_ms, b.multiplier, b.detection_ms, b.downs
            );
            if b.diag != "no diagnostic" {
                let _ = write!(out, ", last: {}", b.diag);
            }
            out.push('\n');
        }
        if p.awaiting_end_of_rib {
            let _ = writeln!(
                out,
                "    graceful restart: our route selection waits for its End-of-RIB"
            );
        }
        if p.peer_restarted {
            let _ = writeln!(
                out,
                "    graceful restart: it restarted (R bit; {} times)",
                p.peer_restarts
            );
        }
        if let Some(e) = &p.last_error {
            let _ = writeln!(out, "    last error: {e}");
        }
    }
    out
}

pub async fn run(args: BgpArgs) -> anyhow::Result<()> {
    match args.command {
        BgpCommand::Status => {
            let peers: Vec<PeerRow> = serde_json::from_str(&get(args.agent, STATUS_PATH).await?)
                .context("the agent's status")?;
            print!("{}", status_table(&peers));
        }
        BgpCommand::Routes => {
            let routes: Vec<RouteRow> = serde_json::from_str(&get(args.agent, ROUTES_PATH).await?)
                .context("the agent's routes")?;
            println!("{:<44} {:<40} {:<40} AS PATH", "PREFIX", "NEXT HOP", "FROM");
            for r in routes {
                let stale = if r.stale { " (stale)" } else { "" };
                println!(
                    "{:<44} {:<40} {:<40} {}{stale}",
                    r.prefix, r.next_hop, r.source, r.as_path
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot agent on loopback: reads the request, then writes `answer` (if any) and
    /// closes; returns where it listens and the request it read.
    async fn agent(answer: Option<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                request.extend_from_slice(&buf[..n]);
            }
            match answer {
                Some(a) => s.write_all(a.as_bytes()).await.unwrap(),
                // Keep the connection open, silent, until the client gives up.
                None => {
                    let _ = s.read(&mut [0u8; 1]).await;
                }
            }
            String::from_utf8(request).unwrap()
        });
        (addr, task)
    }

    #[test]
    fn the_status_table_shows_the_last_error_under_its_peer() {
        let row: PeerRow = serde_json::from_value(serde_json::json!({
            "address": "198.18.0.2", "remote_asn": 65001, "state": "Idle", "uptime_seconds": 0,
            "prefixes_received": 0, "prefixes_sent": 0, "updates_received": 0, "updates_sent": 0,
            "sessions": 2,
            "total": {"updates_received": 40, "updates_sent": 3, "messages_received": 50, "messages_sent": 9},
            "last_error": "sent NOTIFICATION cease / maximum number of prefixes reached (6/1)"
        }))
        .unwrap();
        let table = status_table(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("UPDATES IN/OUT"), "{table}");
        assert!(lines[1].starts_with("198.18.0.2"), "{table}");
        assert!(lines[1].contains("0/0 (40/3)"), "{table}");
        assert_eq!(
            lines[2],
            "    last error: sent NOTIFICATION cease / maximum number of prefixes reached (6/1)"
        );
        // An older agent's answer, without the new fields, still reads.
        let old: PeerRow = serde_json::from_value(serde_json::json!({
            "address": "198.18.0.3", "remote_asn": 1, "state": "Established", "uptime_seconds": 5,
            "prefixes_received": 1, "prefixes_sent": 1, "updates_received": 2, "updates_sent": 2
        }))
        .unwrap();
        assert_eq!(status_table(&[old]).lines().count(), 2);
    }

    #[test]
    fn the_status_table_shows_the_negotiated_capabilities_last_on_the_peers_line() {
        let up: PeerRow = serde_json::from_value(serde_json::json!({
            "address": "fe80::2", "remote_asn": 65002, "state": "Established", "uptime_seconds": 7,
            "prefixes_received": 1, "prefixes_sent": 2, "updates_received": 3, "updates_sent": 4,
            "sessions": 1, "capabilities": ["ipv4", "ipv6", "ENH", "GR", "4B", "RR"]
        }))
        .unwrap();
        assert_eq!(up.capabilities, ["ipv4", "ipv6", "ENH", "GR", "4B", "RR"]);
        let down: PeerRow = serde_json::from_value(serde_json::json!({
            "address": "198.18.0.3", "remote_asn": 64512, "state": "Active", "uptime_seconds": 0,
            "prefixes_received": 0, "prefixes_sent": 0, "updates_received": 0, "updates_sent": 0
        }))
        .unwrap();
        assert!(down.capabilities.is_empty());
        let table = status_table(&[up, down]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(lines[0].split_whitespace().last(), Some("CAPS"), "{table}");
        let fields: Vec<&str> = lines[1].split_whitespace().collect();
        // The columns before it keep their places (scripts read them by position).
        assert_eq!(fields[0], "fe80::2", "{table}");
        assert_eq!(fields[2], "Established", "{table}");
        assert_eq!((fields[4], fields[5]), ("1", "2"), "{table}");
        assert_eq!(fields.last(), Some(&"ipv4,ipv6,ENH,GR,4B,RR"), "{table}");
        assert_eq!(lines[2].split_whitespace().last(), Some("-"), "{table}");
    }

    #[test]
    fn the_status_table_shows_bfd_under_its_peer() {
        let row: PeerRow = serde_json::from_value(serde_json::json!({
            "address": "198.18.0.2", "remote_asn": 64512, "state": "Idle", "uptime_seconds": 0,
            "prefixes_received": 0, "prefixes_sent": 0, "updates_received": 0, "updates_sent": 0,
            "last_error": "BFD down: control detection time expired",
            "bfd": {"state": "Down", "remote_state": "Down", "diag": "control detection time expired",
                    "remote_diag": "no diagnostic", "min_tx_ms": 300, "min_rx_ms": 300,
                    "multiplier": 3, "detection_ms": 0, "uptime_seconds": 0, "downs": 1,
                    "packets_sent": 40, "packets_received": 38}
        }))
        .unwrap();
        let table = status_table(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2],
            "    bfd: Down (peer Down), 300 ms x 3, detection 0 ms, 1 downs, last: control detection time expired"
        );
        assert_eq!(
            lines[3],
            "    last error: BFD down: control detection time expired"
        );
    }

    #[tokio::test]
    async fn a_200_answer_is_its_body() {
        let (addr, served) = agent(Some(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n[{\"a\":1}]",
        ))
        .await;
        assert_eq!(get(addr, STATUS_PATH).await.unwrap(), r#"[{"a":1}]"#);
        let request = served.await.unwrap();
        assert!(
            request.starts_with(&format!("GET {STATUS_PATH} HTTP/1.1\r\n")),
            "{request}"
        );
        let request = request.to_ascii_lowercase();
        assert!(request.contains("\r\nhost: agent\r\n"), "{request}");
        assert!(request.contains("\r\nconnection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn other_answers_name_their_status_line() {
        let (addr, _served) =
            agent(Some("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")).await;
        let err = get(addr, ROUTES_PATH).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{ROUTES_PATH}: HTTP/1.1 404 Not Found")
        );
    }

    #[tokio::test]
    async fn garbage_is_not_an_http_answer() {
        let (addr, _served) = agent(Some("SSH-2.0-OpenSSH\r\n\r\n")).await;
        let err = get(addr, STATUS_PATH).await.unwrap_err();
        assert_eq!(err.to_string(), "not an HTTP answer");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out_and_a_missing_one_is_unreachable() {
        let (addr, _served) = agent(None).await;
        let err = get_within(addr, STATUS_PATH, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the agent did not answer in time");

        // Nothing listens on a port just released.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = get(addr, STATUS_PATH).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach the agent at {addr} (its --status-listen)")
        );
    }
}
