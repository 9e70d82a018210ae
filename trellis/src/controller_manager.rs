//! `trellis controller-manager`: ReplicaSets, Deployments, DaemonSets, StatefulSets, Jobs,
//! CronJobs, HorizontalPodAutoscalers, ServiceAccounts, legacy token Secrets, the
//! `kube-root-ca.crt` ConfigMaps, endpoints, LoadBalancer addresses, garbage collection and node lifecycle, with one active instance elected through a Lease.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run, comma-separated (default: all but replicationcontroller, which our
    /// API server does not serve). Known: replicaset, replicationcontroller, deployment,
    /// daemonset, statefulset, job, cronjob, horizontalpodautoscaling, serviceaccount,
    /// serviceaccount-token, root-ca-cert-publisher, endpointslice, endpoints,
    /// garbagecollector, nodelifecycle, service-lb. (kubernetes-service was removed: the API
    /// server keeps default/kubernetes.)
    #[arg(long, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Workers per controller.
    #[arg(long, default_value_t = 5)]
    concurrent_syncs: usize,
    /// Seconds without a renewed node Lease before the node is Unknown and tainted
    /// unreachable (upstream's default since 1.32).
    #[arg(long, default_value_t = 50)]
    node_monitor_grace_period: u64,
    /// Milliseconds between node health checks.
    #[arg(long, default_value_t = 5000)]
    node_monitor_period_ms: u64,
    /// Removed, and an error if given: the API server writes default/kubernetes itself, as
    /// upstream's does (`trellis apiserver --endpoint-reconciler-type lease`, the default, with
    /// --advertise-address).
    #[arg(long = "apiserver-address")]
    apiserver_addresses: Vec<SocketAddr>,
    /// Removed with --apiserver-address, and an error if given: the API server gives the
    /// `kubernetes` Service its --service-cidr's first address.
    #[arg(long)]
    kubernetes_service_ip: Option<Ipv4Addr>,
    /// The address pool LoadBalancer Services get their `status.loadBalancer.ingress` from
    /// (a CIDR, or two of different families comma-separated, e.g.
    /// `203.0.113.0/28,fd00:203::/120`: a Service gets one address per family of its
    /// `ipFamilies` that has a pool; none: they stay pending, as without a cloud provider).
    /// In the routed mode the BGP agents announce the addresses; in the overlay mode make the
    /// pool routable to the nodes (their addresses serve).
    #[arg(long, value_delimiter = ',')]
    load_balancer_pool: Vec<ipnet::IpNet>,
    /// Without --load-balancer-pool: give every LoadBalancer Service the nodes' InternalIPs
    /// as its ingress, as k3s' ServiceLB does (the overlay mode: node addresses serve).
    #[arg(long)]
    load_balancer_node_addresses: bool,
    /// Act only while holding the kube-system/kube-controller-manager Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This candidate's identity in the Lease (default: `<hostname>_<random>`).
    #[arg(long)]
    leader_elect_identity: Option<String>,
    /// Seconds a standby waits for an unchanged Lease before taking over.
    #[arg(long, default_value_t = 15)]
    leader_elect_lease_duration: u64,
    /// Seconds the leader keeps acting without a successful renewal.
    #[arg(long, default_value_t = 10)]
    leader_elect_renew_deadline: u64,
    /// Seconds between acquire and renew attempts.
    #[arg(long, default_value_t = 2)]
    leader_elect_retry_period: u64,
    /// The cluster CA bundle (PEM) published as the `kube-root-ca.crt` ConfigMap in every
    /// namespace and written as `ca.crt` into token Secrets (default: the kubeconfig's CA).
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// The API server's service-account signing key (PKCS#8 ECDSA P-256 PEM, the API server's
    /// `DIR/pki/sa.key`): the serviceaccount-token controller signs the tokens of legacy token
    /// Secrets with it (none: that controller does not run).
    #[arg(long)]
    service_account_private_key_file: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:10257")]
    listen: SocketAddr,
    /// How many times faster than the wall clock the CronJob controller's clock runs, from
    /// start (1: real time; tests use 60 to make a minute pass in a second).
    #[arg(long, default_value_t = 1.0)]
    cronjob_clock_speedup: f64,
    /// Seconds between two evaluations of each HorizontalPodAutoscaler.
    #[arg(long, default_value_t = 15.0)]
    horizontal_pod_autoscaler_sync_period: f64,
    /// Seconds of recommendations a scale-down looks back over: the HPA scales down only to
    /// the highest recommendation of that window (an HPA's
    /// spec.behavior.scaleDown.stabilizationWindowSeconds overrides it).
    #[arg(long, default_value_t = 300)]
    horizontal_pod_autoscaler_downscale_stabilization: u64,
    /// A usage ratio within this of 1.0 leaves an HPA's target as it is.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// For this long after a pod starts, its CPU sample counts only once the pod is Ready and
    /// the sample covers a whole metrics window since then (a Go duration such as 5m0s, or
    /// seconds); other pods count as unready: 0 on a scale-up, left out otherwise.
    #[arg(long, default_value = "5m0s", value_parser = duration_flag)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// After the CPU initialization period, a pod that is not Ready counts as unready if its
    /// Ready condition last changed within this of its start, i.e. it has never been Ready (a
    /// Go duration such as 30s, or seconds).
    #[arg(long, default_value = "30s", value_parser = duration_flag)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

/// A flag's duration: a Go duration (`30s`, `5m0s`, `1m30s`) as upstream's flags take, or
/// plain seconds.
fn duration_flag(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{s:?}: not a duration: {e}"));
    }
    trellis_controllers::hpa::parse_go_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m0s or 1m30s"))
}

/// The CA bundle the kubeconfig (or the in-cluster configuration) trusts, as PEM.
async fn kubeconfig_ca(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let config = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let kc =
                kube::config::Kubeconfig::from_yaml(&text).context("parsing the kubeconfig")?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("loading the kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    Ok(config.root_cert.map(|certs| {
        certs
            .iter()
            .map(|der| crate::kubelet::pem_certificate(der))
            .collect()
    }))
}

/// The flags of the controller-manager's old `kubernetes-service` controller: refused, saying
/// what replaced them.
fn refuse_removed_flags(args: &Args) -> anyhow::Result<()> {
    if !args.apiserver_addresses.is_empty() || args.kubernetes_service_ip.is_some() {
        anyhow::bail!(
            "--apiserver-address and --kubernetes-service-ip were removed: the API server keeps \
             default/kubernetes (Service, Endpoints, EndpointSlice) itself — run `trellis \
             apiserver` with --endpoint-reconciler-type lease (the default) and \
             --advertise-address, and drop these flags"
        );
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    refuse_removed_flags(&args)?;
    let root_ca = match &args.root_ca_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => kubeconfig_ca(args.kubeconfig.as_deref()).await?,
    };
    let service_account_key = match &args.service_account_private_key_file {
        Some(p) => {
            let pem =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let signer = trellis_api::jwt::Signer::from_pem(&pem)
                .with_context(|| format!("loading {}", p.display()))?;
            Some(trellis_controllers::tokens::SigningKey(
                std::sync::Arc::new(signer),
            ))
        }
        None => None,
    };
    let (mut pool_v4, mut pool_v6) = (None, None);
    for net in &args.load_balancer_pool {
        let taken = match net {
            ipnet::IpNet::V4(n) => pool_v4.replace(*n).is_some(),
            ipnet::IpNet::V6(n) => pool_v6.replace(*n).is_some(),
        };
        if taken {
            anyhow::bail!(
                "--load-balancer-pool takes at most one range per family, got {:?}",
                args.load_balancer_pool
            );
        }
    }
    let mut config = trellis_controllers::Config {
        kubeconfig: args.kubeconfig,
        listen: Some(args.listen),
        workers: args.concurrent_syncs.max(1),
        node_monitor_grace_period: Duration::from_secs(args.node_monitor_grace_period),
        node_monitor_period: Duration::from_millis(args.node_monitor_period_ms.max(100)),
        load_balancer_pool: pool_v4,
        load_balancer_pool_v6: pool_v6,
        load_balancer_node_addresses: args.load_balancer_node_addresses,
        leader_elect: args.leader_elect,
        identity: args.leader_elect_identity,
        leader_timers: (
            Duration::from_secs(args.leader_elect_lease_duration),
            Duration::from_secs(args.leader_elect_renew_deadline),
            Duration::from_secs(args.leader_elect_retry_period),
        ),
        cronjob_clock: trellis_controllers::cronjob::Clock::scaled(args.cronjob_clock_speedup),
        hpa: trellis_controllers::hpa::Settings {
            sync_period: Duration::from_secs_f64(
                Some(args.horizontal_pod_autoscaler_sync_period)
                    .filter(|s| s.is_finite())
                    .map_or(15.0, |s| s.clamp(0.1, 86_400.0)),
            ),
            downscale_stabilization: Duration::from_secs(
                args.horizontal_pod_autoscaler_downscale_stabilization,
            ),
            tolerance: Some(args.horizontal_pod_autoscaler_tolerance)
                .filter(|t| t.is_finite() && *t >= 0.0)
                .unwrap_or(0.1),
            cpu_initialization_period: args.horizontal_pod_autoscaler_cpu_initialization_period,
            initial_readiness_delay: args.horizontal_pod_autoscaler_initial_readiness_delay,
        },
        root_ca,
        service_account_key,
        ..Default::default()
    };
    if !args.controllers.is_empty() {
        config.controllers = args.controllers.into_iter().collect();
    }
    trellis_controllers::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("the controller-manager failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_removed_kubernetes_service_flags_are_refused_with_what_replaced_them() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("controller-manager").chain(argv.iter().copied()))
                .unwrap()
                .args
        };
        assert!(refuse_removed_flags(&parse(&[])).is_ok());
        for argv in [
            &["--apiserver-address", "198.18.0.10:6443"][..],
            &["--kubernetes-service-ip", "10.96.0.1"][..],
        ] {
            let e = refuse_removed_flags(&parse(argv)).unwrap_err().to_string();
            assert!(
                e.contains("--endpoint-reconciler-type lease"),
                "{argv:?}: {e}"
            );
        }
    }
}
