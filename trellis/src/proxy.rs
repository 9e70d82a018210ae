//! `trellis proxy`: the service proxy of a node (Services → nftables, the default, or
//! iptables NAT rules).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// The kernel interface the proxy writes its rules through.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    /// nftables tables with verdict maps: a change costs what changed, at any size (default).
    Nftables,
    /// iptables chains, as kube-proxy's iptables mode lays them out.
    Iptables,
}

#[derive(clap::Args)]
pub struct Args {
    /// Where the rules go: `nftables` or `iptables` (starting one removes the other's rules).
    #[arg(long, value_enum, default_value = "nftables")]
    backend: Backend,
    /// This node's name: endpoints whose nodeName it is are local.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The pod network, one CIDR per family (`10.244.0.0/16,fd00:244::/56` for dual-stack):
    /// traffic from outside it to a ClusterIP of that family is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16", value_delimiter = ',')]
    cluster_cidr: Vec<ipnet::IpNet>,
    /// Never masquerade ClusterIP traffic by source (no `--cluster-cidr` rule).
    #[arg(long)]
    no_cluster_cidr: bool,
    /// An address node ports answer on, IPv4 or IPv6 (repeat; default: every local address
    /// of each family).
    #[arg(long = "node-port-address")]
    node_port_addresses: Vec<IpAddr>,
    /// The least milliseconds between two syncs; changes in between are batched.
    #[arg(long, default_value_t = 100)]
    min_sync_period_ms: u64,
    /// Seconds between full rewrites of the proxy's chains.
    #[arg(long, default_value_t = 60)]
    resync: u64,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:10256")]
    listen: SocketAddr,
    /// Remove every chain, jump and table the proxy owns (both backends), then exit.
    #[arg(long)]
    cleanup: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        return trellis_proxy::cleanup()
            .await
            .context("removing the proxy's rules");
    }
    let node = match args.node {
        Some(n) => n,
        None => crate::hostname()?,
    };
    let mut config = trellis_proxy::Config::new(node);
    config.backend = match args.backend {
        Backend::Iptables => trellis_proxy::Backend::Iptables,
        Backend::Nftables => trellis_proxy::Backend::Nftables,
    };
    config.kubeconfig = args.kubeconfig;
    config.cluster_cidrs = if args.no_cluster_cidr {
        Vec::new()
    } else {
        args.cluster_cidr
    };
    config.node_addresses = args.node_port_addresses;
    config.min_sync_period = Duration::from_millis(args.min_sync_period_ms);
    config.resync = Duration::from_secs(args.resync.max(1));
    config.listen = Some(args.listen);
    trellis_proxy::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("the service proxy failed")
}
