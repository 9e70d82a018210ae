//! `trellis`: every Trellis daemon and tool in one binary (the CNI plugins are separate small
//! binaries, as the CNI specification requires).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod apiserver_proxy;
mod bgp;
mod certs;
mod controller_manager;
mod dns;
mod image;
mod image_build;
mod image_cache;
mod ipam;
mod kubelet;
mod overlay;
mod policy;
mod policy_explain;
mod policy_gate;
mod policyd;
mod proxy;
mod scheduler;
mod up;

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
    /// A TCP failover proxy in front of several API servers (TLS passes through): each
    /// connection goes to the first that accepts it, so clients survive an API server's loss.
    ApiserverProxy(apiserver_proxy::Args),
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
    /// The network policy daemon of a node: NetworkPolicy and ClusterNetworkPolicy on iptables.
    Policyd(policyd::Args),
    /// Network policy administration: isolate and open namespaces, show their isolation.
    Policy(policy::Args),
    /// The node agent: registers the Node and runs its pods with a network through CNI.
    Kubelet(Box<kubelet::Args>),
    /// OCI images: `image build` (the image deploy/ runs, from this binary) and `image import
    /// <oci-layout.tar>` into containerd (the kubelet's containerd runtime).
    Image(image::Args),
    /// Credentials from the cluster CA: `certs kubeconfig --user … --group …`.
    Certs(certs::Args),
    /// The service proxy of a node: Services and EndpointSlices into nftables (default) or
    /// iptables NAT rules.
    Proxy(proxy::Args),
    /// Cluster DNS: Services, endpoints and pods by name; other names forwarded with a cache.
    Dns(dns::Args),
    /// The scheduler: pending pods filtered and scored onto nodes, bound through pods/binding.
    Scheduler(scheduler::Args),
    /// The controllers: ReplicaSets, Deployments, endpoints, garbage collection, node
    /// lifecycle; one active instance per cluster through a Lease.
    ControllerManager(controller_manager::Args),
    /// A whole cluster on this machine in network namespaces: control plane, nodes, the
    /// network mode's agents, DNS and a demo; prints a kubeconfig.
    Up(up::UpArgs),
    /// Removes everything `trellis up` made: processes, namespaces, links, routes, state.
    Down(up::DownArgs),
    /// The health of a cluster `trellis up` made: its processes, nodes and pods.
    Status(up::StatusArgs),
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// Where state, certificates and admin.kubeconfig live.
    #[arg(long, default_value = "/var/lib/trellis/apiserver")]
    data_dir: PathBuf,
    /// The HTTPS address.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// `sqlite:<path>` (default: <data-dir>/state.db) or `etcd:<url>[,<url>...]` (`https://`
    /// URLs with --etcd-cafile).
    #[arg(long)]
    store: Option<trellis_apiserver::StoreSpec>,
    /// The CA (PEM) etcd's serving certificate is checked against: TLS to etcd, whose
    /// endpoints are then `https://` (kube-apiserver's flag).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate (PEM) presented to etcd, for its --client-cert-auth.
    #[arg(long, requires_all = ["etcd_keyfile", "etcd_cafile"])]
    etcd_certfile: Option<PathBuf>,
    /// The key of --etcd-certfile.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// More names or addresses for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// A plain-HTTP listener with admin rights; loopback addresses only.
    #[arg(long)]
    insecure_listen: Option<SocketAddr>,
    /// The ranges ClusterIPs are allocated from: one CIDR, or two of different families
    /// (`10.96.0.0/12,fd00:96::/112`) for dual-stack Services; the first is the primary
    /// family, which single-stack Services get.
    #[arg(
        long = "service-cluster-ip-range",
        alias = "service-cidr",
        default_value = "10.96.0.0/12"
    )]
    service_cidr: trellis_apiserver::dualstack::ServiceCidrs,
    /// The range node ports are allocated from, `FIRST-LAST`.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// How often the Service address repair loop runs (also once at start): it restores the
    /// allocation of a cluster IP or node port a Service holds without one, warns (Events
    /// `ClusterIPAlreadyAllocated`, `ClusterIPOutOfRange`, `PortAlreadyAllocated`, ...) of
    /// duplicate and out-of-range addresses, and releases an allocation no Service holds
    /// once seen so in 3 rounds in a row. `0` turns it off.
    #[arg(long, default_value = "3m", value_parser = ipam::parse_duration)]
    service_repair_interval: std::time::Duration,
    /// tolerationSeconds of the not-ready NoExecute toleration every new pod gets unless it
    /// has its own.
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable NoExecute toleration every new pod gets unless it
    /// has its own.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// The client certificate (PEM) presented to kubelets for logs; default: one issued from
    /// the cluster CA under `<data-dir>/pki/apiserver-kubelet-client.crt`.
    #[arg(long, requires = "kubelet_client_key")]
    kubelet_client_certificate: Option<PathBuf>,
    /// The key of `--kubelet-client-certificate`.
    #[arg(long, requires = "kubelet_client_certificate")]
    kubelet_client_key: Option<PathBuf>,
    /// The CA (PEM) kubelets' serving certificates are checked against; without it they are
    /// not checked, as upstream.
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// How the `kubernetes` Service's endpoints are kept: `lease` (upstream's reconciler and
    /// default: each API server renews a 15 s lease of --advertise-address every 10 s and
    /// writes default/kubernetes — Service, Endpoints, EndpointSlice — with every live API
    /// server; the only writer of default/kubernetes) or `none` (the Service is left alone).
    #[arg(long, value_enum, default_value_t = EndpointReconciler::Lease)]
    endpoint_reconciler_type: EndpointReconciler,
    /// The address this API server advertises in the `kubernetes` endpoints, one pods can
    /// reach (default: the --listen address; when that is unspecified or loopback, the
    /// address of the host's default-route interface, as upstream; never loopback).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
}

/// The `kubernetes` Service's endpoint reconcilers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EndpointReconciler {
    /// Every API server renews a lease of its address; the endpoints list the live ones.
    Lease,
    /// The `kubernetes` Service is not managed by the API server.
    None,
}

/// `30000-32767` → (30000, 32767).
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?} is not a range of ports"));
    }
    Ok((a, b))
}

fn main() -> anyhow::Result<()> {
    // The container shim must unshare its mount namespace while it is still single-threaded:
    // it runs before the async runtime starts.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "container-shim") {
        std::process::exit(trellis_kubelet::shim::main(&args[2..]));
    }
    if args.get(1).is_some_and(|a| a == "container-attach") {
        std::process::exit(trellis_kubelet::attach::main(&args[2..]));
    }
    // The logging binary containerd's shim starts for a container of the containerd runtime
    // (`binary://…?container-log=<spec>`): its arguments are the URI's query.
    if args.get(1).is_some_and(|a| a == "container-log") {
        std::process::exit(trellis_kubelet::containerd::runtime::logger_main(
            &args[2..],
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Daemons log what they do; a tool prints its answer and logs only what went wrong.
    // RUST_LOG overrides either. Colour only on a terminal, never in a log file.
    let level = match cli.command {
        Command::Ipam(_)
        | Command::Bgp(_)
        | Command::Policy(_)
        | Command::Certs(_)
        | Command::Image(_)
        | Command::Up(_)
        | Command::Down(_)
        | Command::Status(_) => "warn",
        _ => "info",
    };
    // kube-rs logs every failed request at error level on its own (`failed with error client
    // error (Connect)`) before returning it; the caller logs it once with what it was doing,
    // so an API server that is away yields one line per attempt, not two.
    let level = format!("{level},kube_client::client::builder=off");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Apiserver(args) => apiserver(args).await,
        Command::ApiserverProxy(args) => apiserver_proxy::run(args).await,
        Command::OverlayAgent(args) => overlay::run(args).await,
        Command::Ipamd(args) => ipam::ipamd(args).await,
        Command::Ipam(args) => ipam::run(args).await,
        Command::BgpAgent(args) => bgp::agent(args).await,
        Command::Bgp(args) => bgp::run(args).await,
        Command::Policyd(args) => policyd::run(args).await,
        Command::Policy(args) => policy::run(args).await,
        Command::Kubelet(args) => kubelet::run(*args).await,
        Command::Certs(args) => certs::run(args),
        Command::Image(args) => image::run(args).await,
        Command::Proxy(args) => proxy::run(args).await,
        Command::Scheduler(args) => scheduler::run(args).await,
        Command::Dns(args) => dns::run(args).await,
        Command::ControllerManager(args) => controller_manager::run(args).await,
        Command::Up(args) => up::up(args).await,
        Command::Down(args) => up::down(args).await,
        Command::Status(args) => up::status(args).await,
    }
}

async fn apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let mut config = trellis_apiserver::Config::new(&args.data_dir, args.listen);
    config.store = args.store;
    if let Some(ca) = &args.etcd_cafile {
        let identity = args
            .etcd_certfile
            .as_deref()
            .zip(args.etcd_keyfile.as_deref());
        config.etcd_tls =
            Some(trellis_store::EtcdTls::from_files(ca, identity).context("TLS to etcd")?);
    }
    config.sans = args.sans;
    config.insecure_listen = args.insecure_listen;
    config.service_cidrs = args.service_cidr;
    config.node_ports = args.service_node_port_range;
    config.service_repair_interval = Some(args.service_repair_interval).filter(|d| !d.is_zero());
    config.kubelet_client = args.kubelet_client_certificate.zip(args.kubelet_client_key);
    config.kubelet_ca = args.kubelet_certificate_authority;
    if args.endpoint_reconciler_type == EndpointReconciler::Lease {
        let ip = trellis_apiserver::endpoints::advertise_address(
            args.listen.ip(),
            args.advertise_address,
            default_route_address,
        )
        .map_err(anyhow::Error::msg)
        .context("--endpoint-reconciler-type lease")?;
        config.endpoint_reconciler = Some(trellis_apiserver::endpoints::Settings {
            advertise: SocketAddr::new(ip, args.listen.port()),
            cluster_ip: args.service_cidr.first_host(),
            ttl: std::time::Duration::from_secs(15),
            interval: std::time::Duration::from_secs(10),
        });
    }
    config.default_toleration_seconds = (
        args.default_not_ready_toleration_seconds,
        args.default_unreachable_toleration_seconds,
    );
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

/// The IPv4 address of the interface the host's default route leaves by (from
/// /proc/net/route), as upstream's kube-apiserver picks an address to advertise when it is
/// bound to all or loopback addresses; None without a default route.
fn default_route_address() -> Option<std::net::IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    // Iface Destination Gateway Flags RefCnt Use Metric Mask …; RTF_UP is 0x1.
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let up = f
            .get(3)
            .and_then(|x| u32::from_str_radix(x, 16).ok())
            .is_some_and(|flags| flags & 1 == 1);
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && up).then(|| f[0].to_string())
    })?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let ip = a.address?.as_sockaddr_in()?.ip();
        (a.interface_name == iface && !ip.is_loopback() && !ip.is_link_local())
            .then_some(std::net::IpAddr::V4(ip))
    })
}

/// This machine's host name.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name")?
        .trim()
        .to_string();
    if name.is_empty() {
        anyhow::bail!("the host name is empty: give --node");
    }
    Ok(name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !path.is_empty() {
                missing.push(format!("{here}: the command has no description"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{here}: {id} has no help text"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
