//! `trellis overlay-agent`: the flannel-like VXLAN overlay's node agent (and, with `--mode
//! canal`, the canal-like combined mode's).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use trellis_overlay_agent::{BlockSource, Config, Mode, cniconf::Ipam, underlay::Choice};

/// Which plugin the node's pods are wired by.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// `trellis-overlay`: pods on the node's bridge (`10-trellis-overlay.conflist`).
    Overlay,
    /// `trellis-canal`: pods on routed veths with policy, VXLAN between nodes
    /// (`10-trellis-canal.conflist`).
    Canal,
}

#[derive(clap::Args)]
pub struct Args {
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The underlay interface, by name or address (default: the default route's).
    #[arg(long, conflicts_with = "iface_can_reach")]
    iface: Option<String>,
    /// The underlay is the interface that reaches this address.
    #[arg(long)]
    iface_can_reach: Option<IpAddr>,
    /// The pod network.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// The node's block, fixed. Default: claimed through ipamd's block affinity with
    /// `--ipam trellis-ipam`, Node.spec.podCIDR with `--ipam host-local` or `--pod-cidr`.
    #[arg(long, conflicts_with = "pod_cidr")]
    block: Option<ipnet::Ipv4Net>,
    /// Take the node's block from Node.spec.podCIDR (clusters whose controller manager
    /// allocates node CIDRs).
    #[arg(long)]
    pod_cidr: bool,
    /// The IPAM pool the node's block and its pods' addresses come from (default: the first
    /// IPv4 pool whose node selector matches).
    #[arg(long)]
    ipam_pool: Option<String>,
    /// IPAM for pods: `trellis-ipam` (through ipamd) or `host-local` (on the node's block).
    #[arg(long, default_value = "trellis-ipam")]
    ipam: String,
    /// ipamd's socket, for `--ipam trellis-ipam`.
    #[arg(long, default_value = "/run/trellis/ipamd.sock")]
    ipam_socket: PathBuf,
    /// host-local's data directory, for `--ipam host-local`.
    #[arg(long, default_value = "/var/lib/trellis/overlay/ipam")]
    host_local_dir: PathBuf,
    /// The VXLAN network identifier (flannel's default).
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// The VXLAN UDP port (the Linux and flannel default 8472).
    #[arg(long, default_value_t = 8472)]
    port: u16,
    /// Where the CNI configuration is written.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the plugin reads the node's state (default: /run/trellis/overlay, or
    /// /run/trellis/canal with `--mode canal`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The plugin the agent writes the CNI configuration for: the overlay's own bridge, or the
    /// canal mode's routed veths (same VXLAN between nodes).
    #[arg(long, value_enum, default_value = "overlay")]
    mode: ModeArg,
    /// Leave the reference `portmap` plugin out of the CNI configuration (pods' hostPorts are
    /// then not mapped). By default it is chained after the network's plugin, as flannel's and
    /// Calico's lists do; the runtime must find it in its CNI plugin directories.
    #[arg(long)]
    no_portmap: bool,
    /// Seconds between full reconciles of the data path.
    #[arg(long, default_value_t = 10)]
    resync: u64,
    /// Milliseconds between looks for tombstones: veth pairs CNI DEL retired (`trz…`) whose
    /// namespace outlived DEL. One seen at two looks in a row is deleted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    tombstone_sweep_ms: u64,
    /// Leave masquerade to someone else.
    #[arg(long)]
    no_masquerade: bool,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:9911")]
    listen: SocketAddr,
    #[command(flatten)]
    policy: crate::policy_gate::PolicyGateArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::new(args.node);
    config.kubeconfig = args.kubeconfig;
    config.underlay = match (args.iface, args.iface_can_reach) {
        (Some(i), _) => Choice::Iface(i),
        (None, Some(ip)) => Choice::CanReach(ip),
        (None, None) => Choice::DefaultRoute,
    };
    config.cluster_cidr = args.cluster_cidr;
    config.block = match (args.block, args.pod_cidr, args.ipam.as_str()) {
        (Some(b), _, _) => BlockSource::Fixed(b),
        (None, true, _) | (None, false, "host-local") => BlockSource::PodCidr,
        (None, false, _) => BlockSource::Ipamd {
            socket: args.ipam_socket.clone(),
            pool: args.ipam_pool.clone(),
        },
    };
    config.ipam = match args.ipam.as_str() {
        "trellis-ipam" => Ipam::Trellis {
            socket: args.ipam_socket,
            pool: args.ipam_pool,
        },
        "host-local" => Ipam::HostLocal {
            data_dir: args.host_local_dir,
        },
        other => anyhow::bail!("--ipam must be trellis-ipam or host-local, not {other:?}"),
    };
    config.vni = args.vni;
    config.port = args.port;
    config.cni_conf_dir = args.cni_conf_dir;
    config.mode = match args.mode {
        ModeArg::Overlay => Mode::Overlay,
        ModeArg::Canal => Mode::Canal,
    };
    config.state_dir = args.state_dir.unwrap_or_else(|| {
        PathBuf::from(match config.mode {
            Mode::Overlay => trellis_overlay::state::DEFAULT_STATE_DIR,
            Mode::Canal => trellis_canal::state::DEFAULT_STATE_DIR,
        })
    });
    config.resync = Duration::from_secs(args.resync.max(1));
    config.masquerade = !args.no_masquerade;
    config.listen = Some(args.listen);
    config.policy = args.policy.gate()?;
    config.portmap = !args.no_portmap;
    config.tombstone_sweep = Duration::from_millis(args.tombstone_sweep_ms);
    trellis_overlay_agent::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("the overlay agent failed")
}
