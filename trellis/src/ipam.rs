//! `trellis ipamd` and `trellis ipam …`.
//!
//! The tools talk to the node's ipamd over its socket by default. With `--kubeconfig` (or
//! `--local`, only while no ipamd has that file open) they open the datastore themselves and run
//! the same service in-process, so `check`, `pools`, `blocks` and `show` also work with no
//! ipamd running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tonic::transport::Channel;
use trellis_ipam::client::DEFAULT_SOCKET;
use trellis_ipam::daemon::{self, BackendSpec, DaemonConfig};
use trellis_ipam::proto::{self, ipam_client::IpamClient};
use trellis_ipam::service::{GcSettings, IpamService};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("datastore").required(true).args(["kubeconfig", "local"]))]
pub struct IpamdArgs {
    /// This node's name (the Kubernetes Node name in a cluster).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Keep state as custom resources in the cluster this kubeconfig points at.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Keep state in this embedded store file (one host, no cluster).
    #[arg(long)]
    local: Option<PathBuf>,
    /// The gRPC socket (mode 0600; its directory is created 0700).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Serve /healthz and /metrics here (e.g. 127.0.0.1:9612).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// How often the leak pass runs (0 disables it).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    gc_interval: Duration,
    /// How old an allocation must be before the leak pass may free it.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    gc_grace: Duration,
    /// The runtime's CNI cache (`<dir>/results/<network>-<container>-<ifname>` marks a live
    /// attachment).
    #[arg(long, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// How long to keep retrying when the datastore (the API server) does not answer at
    /// start, in seconds; it is retried with back-off from 200 ms doubling to 5 s, /healthz
    /// answering 503 meanwhile and the socket not yet bound. Unset: forever; 0: give up at the
    /// first failure. 401/403, missing CRDs it may not create and a bad kubeconfig end it at
    /// once.
    #[arg(long)]
    api_wait_timeout: Option<u64>,
}

#[derive(Args)]
pub struct IpamArgs {
    /// ipamd's socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Instead of ipamd: the cluster's datastore directly.
    #[arg(long, global = true, conflicts_with = "local")]
    kubeconfig: Option<PathBuf>,
    /// Instead of ipamd: a standalone store file directly (only while no ipamd has it open).
    #[arg(long, global = true)]
    local: Option<PathBuf>,
    /// The node to act as with --kubeconfig/--local (gc frees this node's leaks).
    #[arg(long, global = true, env = "NODE_NAME")]
    node: Option<String>,
    /// With --kubeconfig/--local: the runtime's CNI cache for gc's liveness test.
    #[arg(long, global = true, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    #[command(subcommand)]
    command: IpamCommand,
}

#[derive(Subcommand)]
pub enum IpamCommand {
    /// List pools.
    Pools,
    /// Manage pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// List blocks, their nodes and use.
    Blocks {
        /// Only this node's blocks.
        #[arg(long = "of-node")]
        of_node: Option<String>,
        /// Also list each allocation.
        #[arg(long)]
        allocations: bool,
    },
    /// Capacity and use per pool.
    Usage,
    /// Who holds an address.
    Show {
        /// The address, e.g. 10.244.1.7.
        address: String,
    },
    /// Report inconsistencies; exits 1 if there are any.
    Check,
    /// Free the allocations of attachments that are gone (pod gone, older than the grace
    /// period, no cached ADD result on the node); prints what was freed.
    Gc {
        /// Override ipamd's grace period (e.g. 0s, 90s, 5m).
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// Only print what would be freed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool (refused if it overlaps another or cannot hold its blocks).
    Create {
        /// The pool's name.
        name: String,
        /// The range it hands out, e.g. 10.244.0.0/16 (no host bits set).
        #[arg(long)]
        cidr: String,
        /// Prefix length of each block (/24 overlay, /26 routed).
        #[arg(long)]
        block_size: u32,
        /// Kubernetes label selector of the nodes it serves ("" = all).
        #[arg(long, default_value = "")]
        node_selector: String,
        /// Let full nodes take single addresses from other nodes' blocks.
        #[arg(long)]
        allow_borrowing: bool,
        /// Ordinals kept at the start of each block.
        #[arg(long, default_value_t = 0)]
        reserve_head: u32,
        /// Ordinals kept at the end of each block.
        #[arg(long, default_value_t = 0)]
        reserve_tail: u32,
        /// Report block network + 1 as the gateway (needs --reserve-head 2 or more).
        #[arg(long)]
        gateway: bool,
        /// Create it disabled: no new blocks or addresses come from it.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a pool whose addresses are all released.
    Delete {
        /// The pool's name.
        name: String,
    },
}

/// "90s", "5m", "1h", "250ms" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s or 5m"))?;
    let secs = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(secs)
}

pub async fn ipamd(args: IpamdArgs) -> anyhow::Result<()> {
    let backend = match (args.kubeconfig, args.local) {
        (Some(kubeconfig), _) => BackendSpec::Kube { kubeconfig },
        (None, Some(path)) => BackendSpec::Local { path },
        (None, None) => bail!("give --kubeconfig or --local"),
    };
    let mut config = DaemonConfig::new(&args.node, backend, &args.socket);
    config.metrics_listen = args.metrics_listen;
    config.gc_interval = Some(args.gc_interval).filter(|d| !d.is_zero());
    config.gc_grace = args.gc_grace;
    config.cni_cache_dir = args.cni_cache_dir;
    config.api_wait = trellis_api::cluster::ApiWait::with_timeout_secs(args.api_wait_timeout);
    let running = match daemon::start_until(config, crate::shutdown_signal()).await {
        Ok(r) => r,
        Err(daemon::DaemonError::Stopped) => {
            tracing::info!("stopped before the datastore answered");
            return Ok(());
        }
        Err(e) => return Err(e).context("starting ipamd"),
    };
    eprintln!(
        "trellis ipamd: node {} serving on {}{}",
        args.node,
        running.socket.display(),
        running
            .metrics_addr
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// ipamd over its socket, or the service in-process on the datastore.
enum Conn {
    Client(IpamClient<Channel>),
    Direct(IpamService),
}

macro_rules! call {
    ($conn:expr, $method:ident, $req:expr) => {
        match &mut $conn {
            Conn::Client(c) => c.$method($req).await,
            Conn::Direct(s) => {
                use trellis_ipam::proto::ipam_server::Ipam as _;
                s.$method(tonic::Request::new($req)).await
            }
        }
        .map(|r| r.into_inner())
        .map_err(|s| anyhow::anyhow!("{}: {}", stringify!($method), s.message()))
    };
}

async fn connect(args: &IpamArgs) -> anyhow::Result<Conn> {
    let backend = match (&args.kubeconfig, &args.local) {
        (Some(k), _) => BackendSpec::Kube {
            kubeconfig: k.clone(),
        },
        (None, Some(l)) => BackendSpec::Local { path: l.clone() },
        (None, None) => {
            let c = trellis_ipam::client::connect(
                &args.socket,
                Duration::from_secs(5),
                Duration::from_secs(120),
            )
            .await
            .context("is ipamd running? (or give --kubeconfig to read the datastore directly)")?;
            return Ok(Conn::Client(c));
        }
    };
    // Only gc acts as a node (it frees that node's leaks); every other command is cluster-wide.
    let node = match (&args.node, &args.command) {
        (Some(n), _) => n.clone(),
        (None, IpamCommand::Gc { .. }) => bail!(
            "gc with --kubeconfig or --local frees one node's leaks: give --node (or NODE_NAME)"
        ),
        (None, _) => "cluster-wide".into(),
    };
    let backend = daemon::open_backend(&backend).await?;
    let metrics = Default::default();
    let (engine, _task) = trellis_ipam::engine::Engine::start(backend, &node, metrics).await?;
    Ok(Conn::Direct(IpamService::new(
        engine,
        GcSettings {
            grace: Duration::from_secs(300),
            cni_cache_dir: args.cni_cache_dir.clone(),
        },
    )))
}

pub async fn run(args: IpamArgs) -> anyhow::Result<()> {
    let mut conn = connect(&args).await?;
    match args.command {
        IpamCommand::Pools => {
            let pools = call!(conn, list_pools, proto::ListPoolsRequest {})?.pools;
            println!(
                "{:<20} {:<22} {:>5} {:>4} {:>4} {:<7} {:<8} {:<8} SELECTOR",
                "NAME", "CIDR", "BLOCK", "HEAD", "TAIL", "GATEWAY", "BORROW", "DISABLED"
            );
            for p in pools {
                println!(
                    "{:<20} {:<22} {:>5} {:>4} {:>4} {:<7} {:<8} {:<8} {}",
                    p.name,
                    p.cidr,
                    format!("/{}", p.block_size),
                    p.reserve_head,
                    p.reserve_tail,
                    p.gateway,
                    p.allow_borrowing,
                    p.disabled,
                    p.node_selector
                );
            }
        }
        IpamCommand::Pool(PoolCommand::Create {
            name,
            cidr,
            block_size,
            node_selector,
            allow_borrowing,
            reserve_head,
            reserve_tail,
            gateway,
            disabled,
        }) => {
            let p = call!(
                conn,
                create_pool,
                proto::Pool {
                    name,
                    cidr,
                    block_size,
                    node_selector,
                    disabled,
                    allow_borrowing,
                    reserve_head,
                    reserve_tail,
                    gateway,
                }
            )?;
            println!(
                "pool {} created ({}, blocks /{})",
                p.name, p.cidr, p.block_size
            );
        }
        IpamCommand::Pool(PoolCommand::Delete { name }) => {
            call!(
                conn,
                delete_pool,
                proto::DeletePoolRequest { name: name.clone() }
            )?;
            println!("pool {name} deleted");
        }
        IpamCommand::Blocks {
            of_node,
            allocations,
        } => {
            let blocks = call!(
                conn,
                list_blocks,
                proto::ListBlocksRequest {
                    node: of_node.unwrap_or_default()
                }
            )?
            .blocks;
            println!(
                "{:<28} {:<22} {:<16} {:<20} {:>9}",
                "NAME", "CIDR", "POOL", "NODE", "USED"
            );
            for b in blocks {
                println!(
                    "{:<28} {:<22} {:<16} {:<20} {:>9}",
                    b.name,
                    b.cidr,
                    b.pool,
                    if b.node.is_empty() { "-" } else { &b.node },
                    format!("{}/{}", b.allocations.len(), b.usable)
                );
                if allocations {
                    for a in b.allocations {
                        println!(
                            "    {:<40} {} {}/{} node={} since {}",
                            a.address, a.handle, a.namespace, a.pod, a.node, a.time
                        );
                    }
                }
            }
        }
        IpamCommand::Usage => {
            let usage = call!(conn, usage, proto::UsageRequest {})?.pools;
            println!(
                "{:<20} {:<22} {:>8} {:>12} {:>12}",
                "POOL", "CIDR", "BLOCKS", "ALLOCATED", "CAPACITY"
            );
            for u in usage {
                println!(
                    "{:<20} {:<22} {:>8} {:>12} {:>12}",
                    u.pool, u.cidr, u.blocks, u.allocated, u.capacity
                );
            }
        }
        IpamCommand::Show { address } => {
            let s = call!(
                conn,
                show,
                proto::ShowRequest {
                    address: address.clone()
                }
            )?;
            println!("address: {address}");
            println!("pool:    {}", s.pool);
            println!(
                "block:   {} (node {})",
                s.block,
                if s.block_node.is_empty() {
                    "-"
                } else {
                    &s.block_node
                }
            );
            println!("state:   {}", s.state);
            if let Some(a) = s.allocation {
                println!("handle:  {}", a.handle);
                if !a.pod.is_empty() {
                    println!("pod:     {}/{}", a.namespace, a.pod);
                }
                if !a.container_id.is_empty() {
                    println!(
                        "attachment: network {} container {} interface {}",
                        a.network, a.container_id, a.ifname
                    );
                }
                println!("node:    {}", a.node);
                println!("since:   {}", a.time);
            }
        }
        IpamCommand::Check => {
            let findings = call!(conn, consistency, proto::ConsistencyRequest {})?.findings;
            if findings.is_empty() {
                println!("ipam check: no inconsistencies");
            } else {
                for f in &findings {
                    println!("{f}");
                }
                eprintln!("ipam check: {} inconsistencies", findings.len());
                std::process::exit(1);
            }
        }
        IpamCommand::Gc { grace, dry_run } => {
            let freed = call!(
                conn,
                gc,
                proto::GcRequest {
                    mode: Some(proto::gc_request::Mode::Leaks(proto::LeakGc {
                        grace_seconds: grace.map(|g| g.as_secs()),
                        dry_run,
                    })),
                }
            )?
            .freed;
            let verb = if dry_run { "would free" } else { "freed" };
            for f in &freed {
                println!("{verb} {} ({}): {}", f.address, f.handle, f.reason);
            }
            println!("ipam gc: {verb} {} addresses", freed.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }
}
