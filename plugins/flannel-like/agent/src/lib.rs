//! `trellis overlay-agent`: one per node, in the host network namespace.
//!
//! It picks the underlay, takes the node's block, makes the VTEP `trellis.1`, publishes the
//! VTEP's MAC, the node address and the block on its Node, and for every other node keeps the
//! neighbour, FDB and route entries the VXLAN data path needs — on every Node change, every
//! resync period, and at once when the kernel reports one of its entries deleted. Once routes,
//! masquerade and the CNI configuration are in place it writes the readiness state the plugin
//! reads and reports ready on `/readyz`. Stopping it leaves the data path in place.
//!
//! In canal mode ([`cniconf::Mode::Canal`]) the VXLAN data path is the same, but the node's pods
//! are `trellis-canal`'s routed veths: the agent writes the canal conflist and the canal
//! plugin's state instead of its own, and holds only the VTEP's address in ipamd. With blocks
//! from ipamd it follows every block ipamd gives the node (a node whose first block fills up
//! gets another), publishes them all (`trellis.dev/pod-cidrs`), and routes every block of every
//! other node through that node's VTEP.

pub mod addresses;
pub mod cniconf;
pub mod masq;
pub mod nodes;
pub mod peers;
pub use trellis_net::underlay;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use trellis_daemon::{Health, Metrics};
use trellis_net::{Handle, Link, Mac, Netns, VxlanSpec};

pub use cniconf::Mode;
use peers::Peer;
use trellis_overlay::state::NodeState;
use trellis_plugin::ready::ReadyState;

/// Where the node's block comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSource {
    /// Given on the command line.
    Fixed(Ipv4Net),
    /// Claimed through ipamd's block affinity (IPv4, from `pool` or the first pool that fits
    /// the node): the same block the node's pods then get their addresses from.
    Ipamd {
        socket: PathBuf,
        pool: Option<String>,
    },
    /// The Node's `spec.podCIDR` (clusters whose controller manager allocates node CIDRs).
    PodCidr,
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// None: the in-cluster or default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    pub underlay: underlay::Choice,
    pub cluster_cidr: Ipv4Net,
    pub block: BlockSource,
    pub ipam: cniconf::Ipam,
    pub vni: u32,
    pub port: u16,
    pub vtep: String,
    pub bridge: String,
    pub cni_conf_dir: PathBuf,
    pub state_dir: PathBuf,
    /// How often the data path is checked even when nothing announced a change.
    pub resync: Duration,
    pub masquerade: bool,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: Option<SocketAddr>,
    /// The ADD gate written into the conflist (None: policy off, ADD does not wait).
    pub policy: Option<trellis_plugin::policy::PolicyGate>,
    /// Which plugin the node runs: the overlay's bridge, or canal's routed veths.
    pub mode: Mode,
    /// Chain the reference `portmap` plugin in the conflist (pods' hostPorts).
    pub portmap: bool,
    /// How often the tombstones of the mode's plugin are looked for (one seen at two looks in
    /// a row is deleted).
    pub tombstone_sweep: Duration,
}

impl Config {
    /// flannel's defaults: VNI 1, UDP 8472, `trellis.1`, `trellis0`, 10.244.0.0/16.
    pub fn new(node: impl Into<String>) -> Config {
        Config {
            node: node.into(),
            kubeconfig: None,
            underlay: underlay::Choice::DefaultRoute,
            cluster_cidr: "10.244.0.0/16".parse().expect("a valid default"),
            block: BlockSource::PodCidr,
            ipam: cniconf::Ipam::Trellis {
                socket: "/run/trellis/ipamd.sock".into(),
                pool: None,
            },
            vni: 1,
            port: 8472,
            vtep: "trellis.1".into(),
            bridge: "trellis0".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            state_dir: trellis_overlay::state::DEFAULT_STATE_DIR.into(),
            resync: Duration::from_secs(10),
            masquerade: true,
            listen: None,
            policy: None,
            mode: Mode::Overlay,
            portmap: true,
            tombstone_sweep: trellis_agent::tombstones::SWEEP_PERIOD,
        }
    }
}

pub use trellis_agent::AgentError;

/// Everything the reconcile needs, built once.
struct Agent {
    config: Config,
    host: Handle,
    vtep_spec: VxlanSpec,
    /// The first block: the VTEP's address is its network address.
    block: Ipv4Net,
    ipt: Option<trellis_net::iptables::Iptables>,
    metrics: Arc<Metrics>,
}

/// The node's blocks: the first, then those ipamd gave it since (IPv4, in the cluster CIDR).
fn own_blocks(first: Ipv4Net, cluster: Ipv4Net, ipamd: &BTreeSet<IpNet>) -> Vec<Ipv4Net> {
    let mut out = vec![first];
    for b in ipamd {
        if let IpNet::V4(v4) = b
            && cluster.contains(v4)
            && !out.contains(v4)
        {
            out.push(*v4);
        }
    }
    out
}

impl Agent {
    /// One pass: the VTEP and its address, the per-node entries, masquerade.
    async fn reconcile(
        &self,
        peers: &BTreeMap<String, Peer>,
        blocks: &[Ipv4Net],
    ) -> Result<(Link, peers::Changes), AgentError> {
        let vtep = self.host.ensure_vxlan(&self.vtep_spec).await?;
        let vtep_addr = IpNet::V4(Ipv4Net::new(self.block.network(), 32).map_err(|e| {
            trellis_net::Error::NotFound {
                op: "block",
                object: e.to_string(),
            }
        })?);
        self.host.set_addresses(vtep.index, &[vtep_addr]).await?;
        let changes = peers::reconcile(&self.host, &vtep, peers).await?;
        if let Some(ipt) = &self.ipt {
            masq::apply(ipt, self.config.cluster_cidr, blocks).await?;
        }
        Ok((vtep, changes))
    }
}

/// Runs the agent until `stop` resolves.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(stop);
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    health.set_not_ready("starting");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.listen {
        let bound = trellis_daemon::serve(addr, health.clone(), metrics.clone(), async move {
            let _ = http_stopped.await;
        })
        .await
        .map_err(trellis_agent::io(format!("listen on {addr}")))?;
        tracing::info!(%bound, "health and metrics");
    }
    let kube = trellis_api::cluster::client(config.kubeconfig.as_deref()).await?;
    let nodes: Api<Node> = Api::all(kube);
    // Deployed before its kubelet registers the Node: wait for it, saying so once.
    trellis_api::cluster::wait_for_node(&nodes, &config.node, &mut stop).await?;
    let host = Handle::current()?;
    // Pairs CNI DEL retired whose namespace outlived it: deleted here, off the pods' path.
    let _tombstones = trellis_agent::tombstones::spawn(
        match config.mode {
            Mode::Overlay => &[trellis_overlay::plugin::TYPE],
            Mode::Canal => &[trellis_canal::TYPE],
        },
        config.tombstone_sweep,
        trellis_agent::tombstones::count_in(metrics.clone()),
    )?;
    let underlay = underlay::pick(&host, &config.underlay).await?;
    tracing::info!(iface = %underlay.link.name, ip = %underlay.ip, mtu = underlay.link.mtu, "underlay");

    let block = loop {
        let found = match &config.block {
            BlockSource::Fixed(b) => Some(*b),
            BlockSource::PodCidr => nodes::pod_cidr(&nodes, &config.node).await.ok().flatten(),
            BlockSource::Ipamd { socket, pool } => match claim_block(socket, pool.as_deref()).await
            {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "claiming the node's block from ipamd");
                    None
                }
            },
        };
        if let Some(b) = found {
            break b;
        }
        health.set_not_ready(match &config.block {
            BlockSource::Ipamd { .. } => "waiting for ipamd to give the node a block",
            _ => "waiting for the node's podCIDR",
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut stop => return Err(AgentError::Stopped),
        }
    };
    if !config.cluster_cidr.contains(&block) {
        return Err(AgentError::Config(format!(
            "the node's block {block} is not inside the cluster CIDR {}",
            config.cluster_cidr
        )));
    }
    // The VTEP's, the gateway's and the broadcast address are the node's: held in ipamd under
    // handles of their own, so no pod is ever given one, whatever the pool reserves.
    if let cniconf::Ipam::Trellis { socket, .. } = &config.ipam {
        loop {
            let bridge = config.mode == Mode::Overlay;
            match addresses::hold(socket, &config.node, block, bridge).await {
                Ok(()) => break,
                Err(e) => {
                    health.set_not_ready(format!("holding the node's own addresses: {e}"));
                    tracing::warn!(error = %e, "holding the node's own addresses in ipamd");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = &mut stop => return Err(AgentError::Stopped),
            }
        }
    }
    // Forwarding between pods and VTEP, and arp_notify for the bridge, are node-wide settings.
    trellis_net::sysctl::set(&Netns::current()?, &[("net.ipv4.ip_forward", "1")])?;

    // The VTEP's MAC is derived from the node name: stable across restarts, so the neighbour
    // entries on the other nodes stay valid while this agent is away.
    let mac = Mac::local_from(format!("trellis-vtep/{}", config.node).as_bytes());
    let mtu = underlay.overlay_mtu();
    let vtep_spec = VxlanSpec {
        name: config.vtep.clone(),
        vni: config.vni,
        local: underlay.ip,
        port: config.port,
        dev: Some(underlay.link.index),
        learning: false,
        mtu: Some(mtu),
        mac: Some(mac),
    };
    let ipt = if config.masquerade {
        Some(
            trellis_net::iptables::Iptables::detect(None, trellis_net::iptables::IpFamily::V4)
                .await?,
        )
    } else {
        None
    };
    let agent = Agent {
        config: config.clone(),
        host,
        vtep_spec,
        block,
        ipt,
        metrics: metrics.clone(),
    };

    // Every block ipamd gives the node, followed live: a block claimed when the first filled up
    // is published (and so routed by the other nodes) as soon as ipamd has stored it.
    let mut ipamd_rx = match &config.block {
        BlockSource::Ipamd { socket, .. } => Some(trellis_agent::blocks::follow(socket.clone())),
        _ => None,
    };
    let mut blocks = vec![block];
    if let Some(rx) = ipamd_rx.as_mut()
        && let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await
    {
        blocks = own_blocks(block, config.cluster_cidr, &rx.borrow_and_update());
    }
    loop {
        match nodes::publish(&nodes, &config.node, mac, underlay.ip, block, &blocks).await {
            Ok(()) => break,
            Err(e) => {
                health.set_not_ready(format!("publishing on the Node: {e}"));
                tracing::warn!(error = %e, "publishing the overlay on the Node");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut stop => return Err(AgentError::Stopped),
        }
    }

    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut deletions = trellis_net::monitor::deletions()?;
    let mut ticker = tokio::time::interval(config.resync);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    let mut pending: BTreeMap<String, Peer> = BTreeMap::new();
    let mut synced = false;
    let mut ready = false;
    let mut dirty = true;
    let mut unpublished = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Init)) => pending.clear(),
                Some(Ok(watcher::Event::InitApply(n))) => {
                    if let (Some(name), Some(p)) = (n.metadata.name.clone(), nodes::peer_of(&n))
                        && name != config.node
                    {
                        pending.insert(name, p);
                    }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    peers = std::mem::take(&mut pending);
                    synced = true;
                    dirty = true;
                }
                Some(Ok(watcher::Event::Apply(n))) => {
                    if let Some(name) = n.metadata.name.clone().filter(|n| *n != config.node) {
                        match nodes::peer_of(&n) {
                            Some(p) => { peers.insert(name, p); }
                            None => { peers.remove(&name); }
                        }
                        dirty = true;
                    }
                }
                Some(Ok(watcher::Event::Delete(n))) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        peers.remove(name);
                        dirty = true;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching nodes"),
                None => return Err(AgentError::Stopped),
            },
            d = deletions.recv() => {
                if d.is_some() {
                    dirty = true;
                }
            }
            changed = async {
                match ipamd_rx.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match (changed, ipamd_rx.as_mut()) {
                    (Ok(()), Some(rx)) => {
                        let now = own_blocks(block, config.cluster_cidr, &rx.borrow_and_update());
                        if now != blocks {
                            tracing::info!(blocks = ?now, "the node's blocks changed");
                            blocks = now;
                            unpublished = true;
                            dirty = true;
                        }
                    }
                    // The follower ended (it never does while we hold the receiver).
                    _ => ipamd_rx = None,
                }
            }
            _ = ticker.tick() => dirty = true,
            _ = &mut stop => break,
        }
        if unpublished {
            match nodes::publish(&nodes, &config.node, mac, underlay.ip, block, &blocks).await {
                Ok(()) => unpublished = false,
                // Tried again at the next event or tick.
                Err(e) => tracing::warn!(error = %e, "publishing the node's blocks"),
            }
        }
        if !dirty || !synced {
            continue;
        }
        dirty = false;
        let started = Instant::now();
        match agent.reconcile(&peers, &blocks).await {
            Ok((_, changes)) => {
                metrics.inc(
                    "overlay_reconciles_total",
                    "Data path reconciles, by result.",
                    &[("result", "ok")],
                    1.0,
                );
                metrics.inc(
                    "overlay_entries_added_total",
                    "Neighbour, FDB and route entries added.",
                    &[],
                    changes.added as f64,
                );
                metrics.inc(
                    "overlay_entries_removed_total",
                    "Stale entries removed.",
                    &[],
                    changes.removed as f64,
                );
                metrics.set(
                    "overlay_peers",
                    "Other nodes the overlay reaches.",
                    &[],
                    peers.len() as f64,
                );
                if changes.added + changes.removed > 0 {
                    tracing::info!(
                        added = changes.added,
                        removed = changes.removed,
                        peers = peers.len(),
                        "data path reconciled"
                    );
                }
                if !ready {
                    ready = make_ready(&agent, &nodes, mtu).await;
                    if ready {
                        health.set_ready();
                    }
                }
            }
            Err(e) => {
                metrics.inc(
                    "overlay_reconciles_total",
                    "Data path reconciles, by result.",
                    &[("result", "error")],
                    1.0,
                );
                tracing::warn!(error = %e, "reconciling the data path");
                // A failed pass leaves `dirty` set for the next tick.
                dirty = true;
            }
        }
        agent.metrics.observe(
            "overlay_reconcile_seconds",
            "Time of a data path reconcile.",
            &[],
            started.elapsed().as_secs_f64(),
        );
    }
    let _ = stop_http.send(());
    tracing::info!("stopped; the data path stays in place");
    Ok(())
}

/// Writes the CNI configuration and the plugin's state, and marks the Node's network ready.
async fn make_ready(agent: &Agent, nodes: &Api<Node>, mtu: u32) -> bool {
    let c = &agent.config;
    let list = cniconf::conflist(
        c.mode,
        &c.state_dir,
        mtu,
        agent.block,
        &c.ipam,
        c.policy.as_ref(),
        c.portmap,
    );
    if let Err(e) = cniconf::write(&c.cni_conf_dir, c.mode, &list) {
        tracing::warn!(error = %e, dir = %c.cni_conf_dir.display(), "writing the CNI configuration");
        return false;
    }
    let written = match c.mode {
        Mode::Overlay => NodeState {
            block: agent.block,
            cluster_cidr: c.cluster_cidr,
            mtu,
            bridge: c.bridge.clone(),
        }
        .write(&c.state_dir),
        Mode::Canal => trellis_canal::state::NodeState { mtu }.write(&c.state_dir),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, dir = %c.state_dir.display(), "writing the node state");
        return false;
    }
    if let Err(e) = nodes::mark_network_ready(nodes, &c.node).await {
        tracing::warn!(error = %e, "marking the node's network ready");
    }
    tracing::info!(block = %agent.block, mtu, mode = ?c.mode, "node ready");
    true
}

/// Asks ipamd for the node's IPv4 block: the affine block it already holds, else a new claim.
async fn claim_block(socket: &std::path::Path, pool: Option<&str>) -> Result<Ipv4Net, String> {
    use trellis_ipam::proto::{ClaimBlockRequest, Family};
    let mut client =
        trellis_ipam::client::connect(socket, Duration::from_secs(2), Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
    let info = client
        .claim_block(ClaimBlockRequest {
            pool: pool.unwrap_or_default().to_string(),
            family: Family::Ipv4 as i32,
            new_block: false,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    info.cidr
        .parse()
        .map_err(|e| format!("ipamd answered block {:?}: {e}", info.cidr))
}
