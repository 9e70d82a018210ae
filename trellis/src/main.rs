//! `trellis`: every Trellis daemon and tool in one binary (the CNI plugins are separate small
//! binaries, as the CNI specification requires).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod bgp;
mod ipam;
mod overlay;

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "Trellis: container networking and a compact Kubernetes-compatible control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Kubernetes-compatible API server.
    Apiserver(ApiserverArgs),
    /// The VXLAN overlay's node agent (flannel-like mode).
    OverlayAgent(overlay::Args),
    /// The IPAM daemon of a node: allocations over gRPC on a unix socket.
    Ipamd(ipam::IpamdArgs),
    /// IPAM tools: pools, blocks, show, check, gc.
    Ipam(ipam::IpamArgs),
    /// The routed mode's node agent (calico-like): BGP for the node's blocks.
    BgpAgent(bgp::AgentArgs),
    /// BGP tools: the agent's peers and routes.
    Bgp(bgp::BgpArgs),
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// Where state, certificates and admin.kubeconfig live.
    #[arg(long, default_value = "/var/lib/trellis/apiserver")]
    data_dir: PathBuf,
    /// The HTTPS address.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// `sqlite:<path>` (default: <data-dir>/state.db) or `etcd:<url>[,<url>...]`.
    #[arg(long)]
    store: Option<trellis_apiserver::StoreSpec>,
    /// More names or addresses for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// A plain-HTTP listener with admin rights; loopback addresses only.
    #[arg(long)]
    insecure_listen: Option<SocketAddr>,
    /// The range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Apiserver(args) => apiserver(args).await,
        Command::OverlayAgent(args) => overlay::run(args).await,
        Command::Ipamd(args) => ipam::ipamd(args).await,
        Command::Ipam(args) => ipam::run(args).await,
        Command::BgpAgent(args) => bgp::agent(args).await,
        Command::Bgp(args) => bgp::run(args).await,
    }
}

async fn apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let mut config = trellis_apiserver::Config::new(&args.data_dir, args.listen);
    config.store = args.store;
    config.sans = args.sans;
    config.insecure_listen = args.insecure_listen;
    config.service_cidr = args.service_cidr;
    let running = trellis_apiserver::start(config)
        .await
        .context("starting the API server")?;
    eprintln!(
        "trellis apiserver: listening on https://{} (admin kubeconfig: {})",
        running.addr,
        running.kubeconfig.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
