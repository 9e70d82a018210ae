//! `trellis kubelet`: the node agent (see trellis-kubelet).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// This node's name (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// The node's InternalIP.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The kubeconfig to reach the API server with, as `system:node:<name>` (`trellis certs kubeconfig`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Where pods' state, container logs and exit codes are kept.
    #[arg(long, default_value = "/var/lib/trellis/kubelet")]
    root_dir: PathBuf,
    /// Where pod network namespaces are bind-mounted.
    #[arg(long, default_value = trellis_net::netns::DEFAULT_RUN_DIR)]
    netns_dir: PathBuf,
    /// Pod namespaces are named <prefix><uid>.
    #[arg(long, default_value = "trellis-pod-")]
    netns_prefix: String,
    /// Where the network agent writes the CNI configuration (the first list by name is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked up (repeat for several directories).
    #[arg(long = "cni-bin-dir", default_value = "/opt/cni/bin")]
    cni_bin_dirs: Vec<PathBuf>,
    /// The CNI results cache (libcni's layout).
    #[arg(long, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// The nameserver written into pods' resolv.conf.
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: IpAddr,
    /// The cluster domain of pods' DNS search path.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Pods this node takes (capacity and allocatable `pods`).
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// The longest one CNI plugin run may take, in seconds.
    #[arg(long, default_value_t = 120)]
    cni_timeout_secs: u64,
    /// /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:10248")]
    listen: SocketAddr,
    /// How often each pod is synced at the latest, in milliseconds (a pod is also synced at
    /// once when it changes, while a container is being created and when a probe is due).
    #[arg(long, default_value_t = 1000)]
    sync_ms: u64,
    /// How many pods are synced at once (sandbox and CNI ADD, container starts, probes,
    /// status); a pod's own syncs never overlap.
    #[arg(long, default_value_t = 16)]
    max_parallel_pod_syncs: usize,
    /// First restart back-off in seconds (doubles up to 300).
    #[arg(long, default_value_t = 10)]
    backoff_secs: u64,
    /// The HTTPS port of the kubelet's API (container logs, stats), published on the Node.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The address the HTTPS API listens on (default: --node-ip, else all addresses).
    #[arg(long)]
    address: Option<IpAddr>,
    /// The serving certificate (PEM) of the HTTPS API; without it a self-signed one is made.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Renew the serving certificate while running: reload --tls-cert-file and
    /// --tls-private-key-file when they change on disk, and renew it once a fraction of its
    /// lifetime has passed (see --serving-cert-renew-fraction, --serving-cert-renew-command).
    /// false: the certificate loaded at start is served until it expires.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rotate_server_certificates: bool,
    /// The serving certificate is renewed after this fraction of its lifetime, plus a random
    /// part of two thirds of the rest (0.7: 70–90 %, upstream's jittered deadline).
    #[arg(long, default_value_t = 0.7)]
    serving_cert_renew_fraction: f64,
    /// A command (`sh -c`) that writes a new serving certificate and key to --tls-cert-file
    /// and --tls-private-key-file (it gets them in KUBELET_CERT_FILE and KUBELET_KEY_FILE, and
    /// KUBELET_NODE_NAME), run at the renewal deadline; e.g. `trellis certs serving ...` where
    /// the cluster CA is at hand. Without it files are only reloaded when they change. A
    /// self-signed certificate (no files) is renewed by the kubelet itself.
    #[arg(long)]
    serving_cert_renew_command: Option<String>,
    /// How often the certificate files and the renewal deadline are checked (ms).
    #[arg(long, default_value_t = 1000, hide = true)]
    serving_cert_check_ms: u64,
    /// The lifetime of the self-signed serving certificate made without --tls-cert-file
    /// (seconds; tests of rotation).
    #[arg(long, default_value_t = 365 * 24 * 3600, hide = true)]
    self_signed_cert_lifetime_seconds: u64,
    /// The CA (PEM) callers' client certificates are checked against (default: the
    /// kubeconfig's CA).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// The size at which a container's log file is rotated (a quantity: 10Mi, 512Ki, 1G).
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// The most log files kept per container run, the current one included (at least 2).
    #[arg(long, default_value_t = trellis_kubelet::logfile::DEFAULT_MAX_FILES)]
    container_log_max_files: u32,
    /// The cgroup pods' cgroups go under (default /trellis/<node>): Guaranteed pods at
    /// pod<uid>, the others at burstable/pod<uid> or besteffort/pod<uid>, each container
    /// below its pod. An absolute path starts at each hierarchy's root; a relative one under
    /// the kubelet's own cgroup (a kubelet in a container keeps its pods within its limits).
    /// cgroup v1 (cpu, cpuacct, memory, pids) or v2, whichever the host has.
    #[arg(long)]
    cgroup_root: Option<String>,
    /// Whether pods get cgroups (limits enforced, usage read from them); false: no cgroups,
    /// usage read from the processes in /proc.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cgroups_per_qos: bool,
    /// How pods' cgroups are made: `cgroupfs` only (the kubelet writes the cgroup file systems
    /// itself; containerd's runc gets `linux.cgroupsPath` as a path). `systemd` is refused:
    /// that driver makes slices and scopes through systemd's D-Bus API, which needs systemd as
    /// PID 1 (not testable here). Under systemd, give `--cgroup-root` a delegated cgroup
    /// (`Delegate=yes`).
    #[arg(long, default_value = "cgroupfs", value_parser = parse_cgroup_driver)]
    cgroup_driver: CgroupDriver,
    /// What runs containers: `process` (host executables, nothing to install) or `containerd`
    /// (OCI images through containerd's API; images come from `trellis image import`).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    runtime: RuntimeKind,
    /// containerd's socket (`--runtime containerd`).
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_ADDRESS)]
    containerd_address: PathBuf,
    /// The containerd namespace of the node's images and containers (`--runtime containerd`;
    /// not CRI's `k8s.io`).
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_NAMESPACE)]
    containerd_namespace: String,
    /// The snapshotter containers' root file systems come from (`--runtime containerd`).
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_SNAPSHOTTER)]
    containerd_snapshotter: String,
    /// runc's state directory for the node's containers (`--runtime containerd`; passed to
    /// the shim in each container's runtime options, runc adds the namespace). Default: the
    /// shim's, the machine-wide /run/containerd/runc.
    #[arg(long)]
    containerd_runc_root: Option<PathBuf>,
    /// Registry endpoints and credentials for pulls (`--runtime containerd`), in k3s'
    /// `registries.yaml` format: `mirrors.<registry>.endpoint` (an `http://` endpoint is a
    /// plain-HTTP registry) and `configs.<registry>.auth` (`username`/`password` or `auth`).
    /// Unset: every registry over HTTPS at its own name, anonymously.
    #[arg(long)]
    registry_config: Option<PathBuf>,
    /// Image GC starts when the image filesystem is this full, in percent; 100 turns it off
    /// (`--runtime containerd`).
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image GC removes unused images, least recently used first, down to this usage.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// An image younger than this is never collected (`2m`, `30s`, `1h`).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    image_minimum_gc_age: Duration,
    /// How often image GC checks usage (upstream's fixed 5 minutes).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    image_gc_period: Duration,
    /// The image filesystem's size for image GC, in bytes: usage is then the bytes of
    /// containerd's content store in the kubelet's namespace against it (an image budget).
    /// Unset: the file system of `--containerd-root`, its used bytes against its size.
    #[arg(long)]
    image_gc_fs_size: Option<u64>,
    /// containerd's root directory (its file system is the image filesystem).
    #[arg(long, default_value = "/var/lib/containerd")]
    containerd_root: PathBuf,
    /// The most processes (threads included) each pod may have: `pids.max` of the pod's cgroup
    /// and its containers' (containerd: the OCI spec's `linux.resources.pids.limit`); a fork
    /// beyond it fails with EAGAIN. -1: unlimited. Needs cgroups (`--cgroups-per-qos`).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pod_max_pids: i64,
    /// How long to keep retrying when the API server does not answer at start (registering the
    /// Node), in seconds; it is retried with back-off from 200 ms doubling to 5 s, the kubelet
    /// not ready meanwhile. Unset: forever (upstream's kubelet); 0: give up at the first
    /// failure. 401/403 and untrusted certificates end it at once.
    #[arg(long)]
    api_wait_timeout: Option<u64>,
    /// Whether a container still being created when its pod's SIGTERM went out gets SIGTERM
    /// once its process exists, within the grace period (upstream's behaviour). false is for
    /// tests only (the negative control): such a container then runs until the grace
    /// period's SIGKILL.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    late_start_sigterm: bool,
    /// How long a container that starts during its pod's grace period is given to set a TERM
    /// handler before its SIGTERM goes anyway (`500ms`, `2s`), when its process is the init of
    /// its own PID namespace (a containerd container's PID 1): the kernel drops a signal such
    /// an init has no handler for, so a shell that has not set its trap yet would miss it and
    /// run until the grace period's SIGKILL. 0s: signal at once.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    late_start_term_wait: Duration,
}

/// The container runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Each container a host process in the pod's namespaces.
    Process,
    /// Each container an OCI image run by containerd (its own API, not CRI).
    Containerd,
}

/// The cgroup drivers (`--cgroup-driver`): only upstream's `cgroupfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// The kubelet creates and writes cgroup directories itself.
    Cgroupfs,
}

fn parse_cgroup_driver(s: &str) -> Result<CgroupDriver, String> {
    match s {
        "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
        "systemd" => Err(
            "the systemd cgroup driver is not supported (it makes slices and \
                scopes through systemd's D-Bus API); use cgroupfs, under systemd with \
                --cgroup-root in a cgroup systemd delegates (Delegate=yes)"
                .into(),
        ),
        other => Err(format!("{other:?}: the only cgroup driver is cgroupfs")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let node_name = match args.node {
        Some(n) => n,
        None => crate::hostname()?,
    };
    let text = std::fs::read_to_string(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text).context("parsing the kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("loading the kubeconfig")?;
    // What pods are told about the API server: where the kubelet reaches it, and its CA.
    let api_endpoint = config.cluster_url.host().map(|h| {
        let port = config.cluster_url.port_u16().unwrap_or(443);
        (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
        )
    });
    let cluster_ca = config.root_cert.as_ref().map(|certs| {
        certs
            .iter()
            .map(|der| pem_certificate(der))
            .collect::<String>()
    });
    let client_ca = match &args.client_ca_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let log_rotation = trellis_kubelet::logfile::parse_size(&args.container_log_max_size)
        .and_then(|size| {
            trellis_kubelet::logfile::Rotation::new(size, args.container_log_max_files)
        })
        .map_err(|e| anyhow::anyhow!("--container-log-max-size/--container-log-max-files: {e}"))?;
    let client = kube::Client::try_from(config).context("building the API client")?;
    let cgroups = if args.cgroups_per_qos {
        let root = args
            .cgroup_root
            .clone()
            .unwrap_or_else(|| format!("/trellis/{node_name}"));
        let cg = trellis_kubelet::cgroup::Cgroup::resolve(&root)
            .with_context(|| format!("--cgroup-root {root}"))?;
        cg.create()
            .with_context(|| format!("creating the cgroup root {root}"))?;
        tracing::info!(root = %root, cgroup = ?cg, driver = ?args.cgroup_driver, "pods' cgroups");
        Some(cg)
    } else {
        None
    };
    let fraction = args.serving_cert_renew_fraction;
    if !(fraction > 0.0 && fraction < 1.0) {
        anyhow::bail!("--serving-cert-renew-fraction {fraction}: give a fraction between 0 and 1");
    }
    let pod_max_pids = match args.pod_max_pids {
        -1 => None,
        n if n >= 1 => Some(n.unsigned_abs()),
        n => anyhow::bail!(
            "--pod-max-pids {n}: give a number of processes (1 or more), or -1 for no limit"
        ),
    };
    if pod_max_pids.is_some() && !args.cgroups_per_qos {
        anyhow::bail!("--pod-max-pids needs pod cgroups: drop --cgroups-per-qos=false");
    }
    if let (Some(n), Some(cg)) = (pod_max_pids, &cgroups)
        && !cg.limits_pids()
    {
        anyhow::bail!("--pod-max-pids {n}: the host has no pids cgroup controller");
    }
    let cfg = trellis_kubelet::Config {
        node_name,
        node_ip: args.node_ip,
        root_dir: args.root_dir,
        netns_dir: args.netns_dir,
        netns_prefix: args.netns_prefix,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dirs: args.cni_bin_dirs,
        cni_cache_dir: args.cni_cache_dir,
        cni_timeout: Duration::from_secs(args.cni_timeout_secs.max(1)),
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        max_pods: args.max_pods,
        port: args.port,
        sync_period: Duration::from_millis(args.sync_ms.max(100)),
        max_parallel_syncs: args.max_parallel_pod_syncs.max(1),
        backoff_base: Duration::from_secs(args.backoff_secs.max(1)),
        backoff_max: Duration::from_secs(300),
        shim: std::env::current_exe().context("finding the trellis binary")?,
        api_endpoint,
        cluster_ca,
        address: args.address,
        tls: args.tls_cert_file.zip(args.tls_private_key_file),
        client_ca,
        log_rotation,
        cgroups,
        runtime: match args.runtime {
            RuntimeKind::Process => trellis_kubelet::RuntimeChoice::Process,
            RuntimeKind::Containerd => trellis_kubelet::RuntimeChoice::Containerd {
                address: args.containerd_address,
                namespace: args.containerd_namespace,
                snapshotter: args.containerd_snapshotter,
                runc_root: args.containerd_runc_root,
                images: Box::new(trellis_kubelet::containerd::ImageSettings {
                    registries: match &args.registry_config {
                        Some(p) => trellis_kubelet::containerd::pull::Registries::load(p)
                            .context("reading --registry-config")?,
                        None => Default::default(),
                    },
                    gc: {
                        let gc = trellis_kubelet::containerd::gc::GcPolicy {
                            high: args.image_gc_high_threshold,
                            low: args.image_gc_low_threshold,
                            min_age: args.image_minimum_gc_age,
                            period: args.image_gc_period.max(Duration::from_secs(1)),
                            fs_size: args.image_gc_fs_size,
                            root: args.containerd_root.clone(),
                        };
                        gc.validate().map_err(anyhow::Error::msg)?;
                        gc
                    },
                }),
            },
        },
        pod_max_pids,
        api_wait: trellis_api::cluster::ApiWait::with_timeout_secs(args.api_wait_timeout),
        late_start_sigterm: args.late_start_sigterm,
        late_start_term_wait: args.late_start_term_wait,
        serving: trellis_kubelet::serving::Rotation {
            enabled: args.rotate_server_certificates,
            renew_fraction: args.serving_cert_renew_fraction,
            renew_command: args.serving_cert_renew_command,
            check_every: Duration::from_millis(args.serving_cert_check_ms.max(10)),
            self_signed_lifetime: Duration::from_secs(
                args.self_signed_cert_lifetime_seconds.max(1),
            ),
        },
    };
    let health = Arc::new(trellis_daemon::Health::default());
    health.set_not_ready("starting");
    let metrics = Arc::new(trellis_daemon::Metrics::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut rx2 = rx.clone();
    let bound = trellis_daemon::serve(args.listen, health.clone(), metrics.clone(), async move {
        let _ = rx2.wait_for(|s| *s).await;
    })
    .await
    .context("binding the health listener")?;
    tracing::info!(%bound, node = %cfg.node_name, "kubelet starting");
    let stop = async move {
        trellis_daemon::shutdown_signal().await;
        let _ = tx.send(true);
    };
    drop(rx);
    trellis_kubelet::run(cfg, client, health, metrics, stop)
        .await
        .context("kubelet")?;
    Ok(())
}

/// A DER certificate as PEM.
pub(crate) fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// `500ms`, `90s`, `2m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let scale = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_cgroup_driver_is_cgroupfs_and_systemd_is_refused_with_the_reason() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["kubelet", "--kubeconfig", "/k"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args.cgroup_driver)
        };
        assert_eq!(parse(&[]).unwrap(), CgroupDriver::Cgroupfs);
        assert_eq!(
            parse(&["--cgroup-driver", "cgroupfs"]).unwrap(),
            CgroupDriver::Cgroupfs
        );
        let e = parse(&["--cgroup-driver", "systemd"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd cgroup driver is not supported"), "{e}");
        assert!(parse(&["--cgroup-driver", "other"]).is_err());
    }

    #[test]
    fn the_late_start_term_wait_is_2s_by_default_and_takes_ms_s_and_0s() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["kubelet", "--kubeconfig", "/k"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args.late_start_term_wait)
        };
        assert_eq!(parse(&[]).unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse(&["--late-start-term-wait=0s"]).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            parse(&["--late-start-term-wait", "500ms"]).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse(&["--late-start-term-wait", "5"]).unwrap(),
            Duration::from_secs(5)
        );
        assert!(parse(&["--late-start-term-wait", "2x"]).is_err());
    }
}
