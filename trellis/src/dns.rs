//! `trellis dns`: cluster DNS (Services, endpoints and pods by name; other names forwarded).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where queries are answered (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// TCP connections open at once; a connection beyond them is closed at once.
    #[arg(long, default_value_t = 256)]
    tcp_max_connections: usize,
    /// Seconds a TCP connection may send no complete query (or leave an answer unread)
    /// before it is closed.
    #[arg(long, default_value_t = 10)]
    tcp_idle_timeout: u64,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// A resolver other names are forwarded to (repeat; `ip` or `ip:port`; default: the
    /// nameservers of --resolv-conf).
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// Where the default upstreams come from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:9153")]
    metrics_listen: SocketAddr,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|e| format!("{s:?}: {e}"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let upstreams = if args.upstreams.is_empty() {
        let text = std::fs::read_to_string(&args.resolv_conf)
            .with_context(|| format!("reading {}", args.resolv_conf.display()))?;
        trellis_dns::resolv_conf_upstreams(&text)
    } else {
        args.upstreams
    };
    let config = trellis_dns::Config {
        kubeconfig: args.kubeconfig,
        domain: args.domain,
        listen: args.listen,
        tcp: trellis_dns::TcpLimits {
            max_connections: args.tcp_max_connections.max(1),
            idle_timeout: std::time::Duration::from_secs(args.tcp_idle_timeout.max(1)),
        },
        upstreams,
        metrics_listen: Some(args.metrics_listen),
    };
    trellis_dns::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("cluster DNS failed")
}
