//! `trellis policyd`: the watches feed the model; whenever it changed (or a plugin registered a
//! pod at the gate), every change already queued is taken in (coalescing), the node's program
//! is compiled and committed — or, when only pods changed, their change set is planned against
//! the committed program and only that is committed; the verifier runs every verify period.
//! One task owns the model and the kernel writes, so commits never interleave.
//!
//! Nothing is committed until all four watches have listed: committing a half-listed cluster
//! after a restart would open (or close) a window. The rules stay in the kernel when policyd
//! exits; the next start swaps its state in atomically.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trellis_daemon::{Health, Metrics};

use crate::compile::{self, Options, compile, dispatched};
use crate::gate::{Gate, GateReply, Registration};
use crate::kernel::Kernel;
use crate::model::{Cluster, Pod};
use crate::sync::{Dataplane, Syncer};
use crate::watch::{Change, Delta, apply_map};
use crate::xt::Program;
use crate::{metrics, names, verify};

/// How the daemon runs (the flags of `trellis policyd`).
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    pub gate_socket: PathBuf,
    pub listen: SocketAddr,
    pub verify_period: Duration,
    pub ready_file: Option<PathBuf>,
    pub pending_deny: bool,
    /// Pod events commit change sets (set members, and a local pod's own chains); false
    /// compiles the whole program on every event (kept for comparison).
    pub incremental: bool,
    /// Restores go through one long-lived `iptables-nft-restore` (nf_tables only); false
    /// starts a process per restore (kept for comparison).
    pub restore_session: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("kubernetes client: {0}")]
    Client(#[from] trellis_api::cluster::ClientError),
    #[error("dataplane: {0}")]
    Dataplane(#[from] crate::sync::DataplaneError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the HTTP side reads: the model and the committed program.
#[derive(Clone)]
pub struct Shared {
    pub cluster: Arc<RwLock<Cluster>>,
    pub program: Arc<RwLock<Program>>,
    pub kernel: Arc<Kernel>,
}

/// A registered local pod: the gate's addresses and interface.
#[derive(Debug, Clone)]
struct GateReg {
    ips: Vec<Ipv4Addr>,
    iface: String,
    at: Instant,
}

struct State {
    node: String,
    cluster: Arc<RwLock<Cluster>>,
    gate: BTreeMap<String, GateReg>,
    /// Interfaces of local pods read back from our own dispatch chain at start (the gate's
    /// knowledge of the previous run).
    recovered: BTreeMap<Ipv4Addr, String>,
    synced: [bool; 4],
    /// Reasons already reported (key → problems), so a warning and Event come once.
    reported: BTreeMap<String, Vec<String>>,
    events: Option<kube::Client>,
    /// Policies with a direction that fails closed.
    failed_closed: usize,
    /// Pods changed since the last commit, with what they were then; None when something else
    /// changed (or nothing is committed yet): then the whole program is compiled.
    changed: Option<BTreeMap<String, Option<Pod>>>,
}

impl State {
    /// Remembers what pod `key` was at the last commit, before it first changes.
    fn touch(&mut self, c: &Cluster, key: &str) {
        if let Some(changed) = self.changed.as_mut()
            && !changed.contains_key(key)
        {
            changed.insert(key.to_string(), c.pods.get(key).cloned());
        }
    }

    /// A pod as enforced: a gate-registered one is local with the gate's addresses and
    /// interface; another local one gets the interface recovered or named by the rule.
    fn decorate(&self, mut pod: Pod) -> Pod {
        if let Some(reg) = self.gate.get(&pod.key()) {
            pod.node = Some(self.node.clone());
            if !reg.ips.is_empty() {
                pod.ips = reg.ips.clone();
            }
            pod.iface = Some(reg.iface.clone());
        } else if pod.node.as_deref() == Some(self.node.as_str()) {
            pod.iface = pod
                .ips
                .iter()
                .find_map(|ip| self.recovered.get(ip).cloned())
                .or_else(|| {
                    Some(trellis_net::link::pod_host_veth(
                        Some((&pod.namespace, &pod.name)),
                        "",
                        "eth0",
                    ))
                });
        }
        pod
    }

    fn report(
        &mut self,
        kind: &'static str,
        namespace: Option<&str>,
        name: &str,
        problems: Vec<String>,
    ) {
        let key = format!("{kind}/{}/{name}", namespace.unwrap_or(""));
        if problems.is_empty() {
            self.reported.remove(&key);
            return;
        }
        if self.reported.get(&key) == Some(&problems) {
            return;
        }
        tracing::warn!(kind, namespace, name, problems = ?problems, "policy fails closed: its selected pods get deny for that direction");
        self.reported.insert(key, problems.clone());
        if let Some(client) = self.events.clone() {
            let ns = namespace.unwrap_or("default").to_string();
            let name = name.to_string();
            tokio::spawn(async move {
                publish_event(client, kind, &ns, &name, &problems.join("; ")).await
            });
        }
    }

    /// Applies one change; returns whether the model changed.
    fn apply(&mut self, change: Change) -> bool {
        let cluster = self.cluster.clone();
        let mut c = cluster.write().unwrap_or_else(|p| p.into_inner());
        match change {
            Change::Pod(d) => {
                self.synced[0] |= matches!(d, Delta::Replace(_));
                let d = match d {
                    Delta::Upsert(p) => {
                        self.touch(&c, &p.key());
                        Delta::Upsert(self.decorate(p))
                    }
                    Delta::Remove(k) => {
                        self.touch(&c, &k);
                        self.gate.remove(&k);
                        Delta::Remove(k)
                    }
                    Delta::Replace(list) => {
                        self.changed = None;
                        let mut list: Vec<Pod> =
                            list.into_iter().map(|p| self.decorate(p)).collect();
                        // A pod registered at the gate moments ago may not be listed yet.
                        let listed: std::collections::BTreeSet<String> =
                            list.iter().map(Pod::key).collect();
                        let recent: Vec<String> = self
                            .gate
                            .iter()
                            .filter(|(k, r)| {
                                !listed.contains(*k) && r.at.elapsed() < Duration::from_secs(60)
                            })
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in &recent {
                            if let Some(p) = c.pods.get(k) {
                                list.push(p.clone());
                            }
                        }
                        self.gate
                            .retain(|k, _| listed.contains(k) || recent.contains(k));
                        Delta::Replace(list)
                    }
                };
                apply_map(&mut c.pods, d, Pod::key)
            }
            Change::Namespace(d) => {
                self.synced[1] |= matches!(d, Delta::Replace(_));
                let mut map: BTreeMap<String, (String, crate::model::Labels)> = c
                    .namespaces
                    .iter()
                    .map(|(k, v)| (k.clone(), (k.clone(), v.clone())))
                    .collect();
                let changed = apply_map(&mut map, d, |(n, _)| n.clone());
                if changed {
                    c.namespaces = map.into_values().collect();
                    self.changed = None;
                }
                changed
            }
            Change::NetPol(d) => {
                self.synced[2] |= matches!(d, Delta::Replace(_));
                let mut problems: Vec<(String, String, Vec<String>)> = Vec::new();
                match &d {
                    Delta::Upsert(p) => {
                        problems.push((p.namespace.clone(), p.name.clone(), p.problems()))
                    }
                    Delta::Replace(list) => problems.extend(
                        list.iter()
                            .map(|p| (p.namespace.clone(), p.name.clone(), p.problems())),
                    ),
                    Delta::Remove(_) => {}
                }
                let changed = apply_map(&mut c.netpols, d, crate::netpol::NetPol::key);
                if changed {
                    self.changed = None;
                }
                let failed = c
                    .netpols
                    .values()
                    .filter(|p| !p.problems().is_empty())
                    .count()
                    + c.cnps.values().filter(|p| !p.problems.is_empty()).count();
                drop(c);
                for (ns, name, p) in problems {
                    self.report("NetworkPolicy", Some(&ns), &name, p);
                }
                self.failed_closed = failed;
                changed
            }
            Change::Cnp(d) => {
                self.synced[3] |= matches!(d, Delta::Replace(_));
                let mut problems: Vec<(String, Vec<String>)> = Vec::new();
                match &d {
                    Delta::Upsert(p) => problems.push((p.name.clone(), p.problems.clone())),
                    Delta::Replace(list) => {
                        problems.extend(list.iter().map(|p| (p.name.clone(), p.problems.clone())))
                    }
                    Delta::Remove(_) => {}
                }
                let changed = apply_map(&mut c.cnps, d, |p| p.name.clone());
                if changed {
                    self.changed = None;
                }
                let failed = c
                    .netpols
                    .values()
                    .filter(|p| !p.problems().is_empty())
                    .count()
                    + c.cnps.values().filter(|p| !p.problems.is_empty()).count();
                drop(c);
                for (name, p) in problems {
                    self.report("ClusterNetworkPolicy", None, &name, p);
                }
                self.failed_closed = failed;
                changed
            }
            Change::CnpUnreadable(name, why) => {
                drop(c);
                self.report(
                    "ClusterNetworkPolicy",
                    None,
                    &name,
                    vec![format!("ignored: {why}")],
                );
                false
            }
        }
    }

    fn register(&mut self, reg: &Registration) -> bool {
        self.gate.insert(
            reg.key.clone(),
            GateReg {
                ips: reg.ips.clone(),
                iface: reg.iface.clone(),
                at: reg.at,
            },
        );
        let cluster = self.cluster.clone();
        let mut c = cluster.write().unwrap_or_else(|p| p.into_inner());
        let base = c
            .pods
            .get(&reg.key)
            .cloned()
            .or_else(|| reg.fetched.clone());
        match base {
            Some(p) => {
                self.touch(&c, &reg.key);
                let p = self.decorate(p);
                c.pods.insert(p.key(), p);
                true
            }
            None => false,
        }
    }
}

/// What one commit does.
enum Work {
    /// The whole program (first commit, or a namespace or policy changed).
    Full(Program),
    /// Pod events only: the change set.
    Delta(compile::Plan),
}

/// Posts a core/v1 Event about a policy that fails closed (best effort).
async fn publish_event(client: kube::Client, kind: &str, ns: &str, name: &str, message: &str) {
    use k8s_openapi::api::core::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(client, ns);
    let (api_version, obj_ns) = match kind {
        "NetworkPolicy" => ("networking.k8s.io/v1", Some(ns.to_string())),
        _ => ("policy.networking.k8s.io/v1alpha2", None),
    };
    let ev: Result<Event, _> = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{name}.policyd-"), "namespace": ns},
        "involvedObject": {"kind": kind, "name": name, "namespace": obj_ns, "apiVersion": api_version},
        "reason": "FailedClosed",
        "message": message.chars().take(1000).collect::<String>(),
        "type": "Warning",
        "source": {"component": "trellis-policyd"},
        "count": 1,
    }));
    if let Ok(ev) = ev
        && let Err(e) = api.create(&Default::default(), &ev).await
    {
        tracing::debug!(error = %e, "could not post an Event");
    }
}

/// Sets `net.bridge.bridge-nf-call-iptables=1` here, so bridged pod traffic (the overlay's
/// same-node pods on trellis0) traverses FORWARD and our chains.
fn enable_bridge_netfilter() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(path, "1") {
            Ok(()) => tracing::info!(
                "set net.bridge.bridge-nf-call-iptables=1: bridged pod traffic is filtered"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not enable bridge netfilter: same-node bridged traffic is not filtered")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no bridge netfilter here: same-node bridged traffic is not filtered")
        }
    }
}

/// What a previous run knew of its local pods, read back from its egress dispatch chain
/// (`-s IP/32 -i IFACE … dispatch|NS/POD|egress`): their interfaces by address, and their
/// registrations (addresses and interface) by pod, so a restart keeps dispatching a pod the
/// gate registered even before its Pod shows the addresses.
fn recover(
    read: &[crate::sync::ChainRead],
) -> (BTreeMap<Ipv4Addr, String>, BTreeMap<String, GateReg>) {
    let mut ifaces = BTreeMap::new();
    let mut regs: BTreeMap<String, GateReg> = BTreeMap::new();
    for c in read.iter().filter(|c| c.name == names::EGRESS) {
        for (spec, _) in &c.rules {
            let w: Vec<&str> = spec.split_whitespace().collect();
            let find = |flag: &str| w.windows(2).find(|p| p[0] == flag).map(|p| p[1]);
            let ip = find("-s").and_then(|s| s.trim_end_matches("/32").parse::<Ipv4Addr>().ok());
            let iface = find("-i").or_else(|| find("--physdev-in"));
            let key = spec
                .split_once("dispatch|")
                .and_then(|(_, rest)| rest.split_once('|'))
                .map(|(k, _)| k.to_string());
            let (Some(ip), Some(iface)) = (ip, iface) else {
                continue;
            };
            if iface.ends_with('+') {
                continue;
            }
            ifaces.insert(ip, iface.to_string());
            if let Some(key) = key {
                let reg = regs.entry(key).or_insert_with(|| GateReg {
                    ips: Vec::new(),
                    iface: iface.to_string(),
                    at: Instant::now(),
                });
                if !reg.ips.contains(&ip) {
                    reg.ips.push(ip);
                }
            }
        }
    }
    (ifaces, regs)
}

/// Runs policyd until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let client = trellis_api::cluster::client(config.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let kernel = Arc::new(Kernel::detect(Some(metrics.clone()), config.restore_session).await?);
    enable_bridge_netfilter();
    let health = Arc::new(Health::default());
    health.set_not_ready("the first program is not committed yet");
    metrics::repaired(&metrics, &verify::Repairs::default());
    metrics::restore_fallbacks(&metrics, 0);
    let cluster = Arc::new(RwLock::new(Cluster::default()));
    let program = Arc::new(RwLock::new(Program::default()));
    let shared = Shared {
        cluster: cluster.clone(),
        program: program.clone(),
        kernel: kernel.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let addr = trellis_daemon::serve_with(
        config.listen,
        health.clone(),
        metrics.clone(),
        Some(crate::http::routes(shared)),
        stopped(),
    )
    .await
    .map_err(|source| DaemonError::Io {
        what: format!("listen on {}", config.listen),
        source,
    })?;
    tracing::info!(%addr, node = %config.node, "policyd serving /healthz /readyz /metrics /explain");

    let (gate_tx, mut gate_rx) = mpsc::channel::<Registration>(256);
    let gate = Gate {
        tx: gate_tx,
        client: client.clone(),
        cluster: cluster.clone(),
        metrics: metrics.clone(),
    };
    crate::gate_server::start(&config.gate_socket, gate, stopped()).map_err(|source| {
        DaemonError::Io {
            what: format!("gate socket {}", config.gate_socket.display()),
            source,
        }
    })?;

    let (recovered, gate_regs) = match kernel.read_chains().await {
        Ok(read) => recover(&read),
        Err(e) => {
            tracing::warn!(error = %e, "could not read back our chains");
            Default::default()
        }
    };
    if !gate_regs.is_empty() {
        tracing::info!(
            pods = gate_regs.len(),
            "local pods recovered from the previous run's dispatch"
        );
    }
    let mut state = State {
        node: config.node.clone(),
        cluster: cluster.clone(),
        gate: gate_regs,
        recovered,
        synced: [false; 4],
        reported: BTreeMap::new(),
        events: Some(client.clone()),
        failed_closed: 0,
        changed: None,
    };
    let mut changes = crate::watch::start(&client);
    let opts = Options {
        node: config.node.clone(),
        pending_deny: config.pending_deny,
    };
    let mut syncer = Syncer::default();
    let mut waiters: Vec<Registration> = Vec::new();
    let mut dirty_since: Option<Instant> = None;
    // The longest a change of the next commit waited in the watch channel.
    let mut queued = Duration::ZERO;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut verify_tick =
        tokio::time::interval(config.verify_period.max(Duration::from_millis(50)));
    verify_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut verifier = verify::Verifier::default();
    let mut ready = false;
    let mut gate_open = true;
    tokio::pin!(shutdown);
    loop {
        let retry_wait = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            change = changes.recv() => {
                let Some((at, change)) = change else { break };
                if state.apply(change) {
                    dirty_since.get_or_insert_with(Instant::now);
                    queued = queued.max(at.elapsed());
                }
            }
            reg = gate_rx.recv(), if gate_open => {
                let Some(reg) = reg else {
                    gate_open = false;
                    continue;
                };
                if state.register(&reg) {
                    dirty_since.get_or_insert(reg.at);
                    waiters.push(reg);
                } else {
                    let _ = reg.reply.send(GateReply::Refused(format!("no Pod {} known", reg.key)));
                }
            }
            _ = retry_wait => retry_at = None,
            _ = verify_tick.tick() => {
                if dirty_since.is_none()
                    && let Some(p) = &syncer.committed
                {
                    match verifier.pass(kernel.as_ref(), p).await {
                        Ok(pass) => {
                            metrics::verifier_pass(&metrics, &pass);
                            let r = pass.repairs();
                            if r.total() > 0 {
                                tracing::warn!(chains = ?r.chains, jumps = r.jumps, sets = ?r.sets, "verifier put back what was changed");
                                metrics::repaired(&metrics, r);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "verifier failed");
                            metrics::sync_error(&metrics, "verify");
                        }
                    }
                }
            }
        }
        if dirty_since.is_none() || !state.synced.iter().all(|s| *s) || retry_at.is_some() {
            continue;
        }
        // Take in everything already queued, then commit once.
        while let Ok((at, change)) = changes.try_recv() {
            if state.apply(change) {
                queued = queued.max(at.elapsed());
            }
        }
        while let Ok(reg) = gate_rx.try_recv() {
            if state.register(&reg) {
                waiters.push(reg);
            } else {
                let _ = reg
                    .reply
                    .send(GateReply::Refused(format!("no Pod {} known", reg.key)));
            }
        }
        let started = dirty_since.unwrap_or_else(Instant::now);
        let compiling = Instant::now();
        // A batch of pod events is planned as a change set against what is committed; anything
        // else (and the first commit) compiles the whole program.
        let work = {
            let c = cluster.read().unwrap_or_else(|p| p.into_inner());
            match (&state.changed, &syncer.committed) {
                (Some(changed), Some(prev)) if config.incremental => {
                    Work::Delta(compile::plan_pods(prev, &c, &opts, changed))
                }
                _ => Work::Full(compile(&c, &opts)),
            }
        };
        let compiled = compiling.elapsed();
        let result = match &work {
            Work::Full(new) => syncer.commit(kernel.as_ref(), new).await,
            Work::Delta(plan) => syncer.apply(kernel.as_ref(), plan).await,
        };
        match result {
            Ok(stats) => {
                let publishing = Instant::now();
                let local = syncer
                    .committed
                    .as_ref()
                    .map(dispatched)
                    .unwrap_or_default();
                let latency = started.elapsed();
                metrics::failed_closed(&metrics, state.failed_closed);
                let incremental = matches!(work, Work::Delta(_));
                {
                    let mut served = program.write().unwrap_or_else(|p| p.into_inner());
                    match work {
                        Work::Full(new) => *served = new,
                        Work::Delta(plan) => plan.apply_to(&mut served),
                    }
                    metrics::committed(&metrics, &served, local.len());
                }
                state.changed = Some(BTreeMap::new());
                let t = stats.timings;
                let published = publishing.elapsed();
                for (phase, d) in [
                    ("queued", queued),
                    ("compile", compiled),
                    ("diff", t.diff),
                    ("ipset", t.ipset),
                    ("iptables", t.iptables),
                    ("cleanup", t.cleanup),
                    ("publish", published),
                ] {
                    metrics::phase(&metrics, phase, d.as_secs_f64());
                }
                metrics::commit_latency(&metrics, latency.as_secs_f64());
                tracing::debug!(
                    ?stats,
                    incremental,
                    ?compiled,
                    ?published,
                    ?queued,
                    ?latency,
                    "committed"
                );
                queued = Duration::ZERO;
                dirty_since = None;
                let (done, pending): (Vec<_>, Vec<_>) = waiters
                    .drain(..)
                    .partition(|w| w.ips.iter().all(|ip| local.contains(ip)));
                waiters = pending;
                for w in done {
                    metrics::gate(&metrics, "committed", w.at.elapsed().as_secs_f64());
                    let _ = w.reply.send(GateReply::Committed);
                }
                waiters.retain(|w| !w.reply.is_closed());
                if !ready {
                    ready = true;
                    health.set_ready();
                    tracing::info!(chains = stats.chains_written, "first program committed");
                    if let Some(f) = &config.ready_file
                        && let Err(e) = std::fs::write(f, b"ready\n")
                    {
                        tracing::warn!(file = %f.display(), error = %e, "could not write the ready file");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; retrying");
                metrics::sync_error(&metrics, "commit");
                // Start over from the kernel's state next time, with a whole program.
                syncer.committed = None;
                state.changed = None;
                retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(f) = &config.ready_file {
        let _ = std::fs::remove_file(f);
    }
    tracing::info!("policyd stopped; the rules stay in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::ChainRead;

    #[test]
    fn a_restart_recovers_interfaces_and_registrations_from_its_dispatch_chain() {
        let read = vec![ChainRead {
            name: names::EGRESS.into(),
            rules: vec![
                ("-s 10.244.1.5/32 -i tr0123456789a -m comment --comment \"tp:0011aabb dispatch|x/a|egress\" -g TRELLIS-PE-1".into(), 0),
                ("-s 10.244.1.5/32 -m physdev --physdev-in tr0123456789a -m comment --comment \"tp:0011aabc dispatch|x/a|egress\" -g TRELLIS-PE-1".into(), 0),
                ("-i tr+ -m comment --comment \"tp:0011aabd pending||rules not committed\" -j DROP".into(), 0),
            ],
        }];
        let (ifaces, regs) = recover(&read);
        assert_eq!(
            ifaces
                .get(&"10.244.1.5".parse().unwrap())
                .map(String::as_str),
            Some("tr0123456789a")
        );
        assert_eq!(
            regs["x/a"].ips,
            vec!["10.244.1.5".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(regs.len(), 1);
    }

    fn state() -> State {
        State {
            node: "n1".into(),
            cluster: Arc::new(RwLock::new(Cluster::default())),
            gate: BTreeMap::new(),
            recovered: BTreeMap::new(),
            synced: [false; 4],
            reported: BTreeMap::new(),
            events: None,
            failed_closed: 0,
            changed: Some(BTreeMap::new()),
        }
    }

    fn pod(name: &str, node: Option<&str>, ip: Option<&str>) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            node: node.map(str::to_string),
            ips: ip.into_iter().map(|i| i.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_gate_registration_makes_the_pod_local_with_the_gates_address_and_interface() {
        let mut s = state();
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let reg = Registration {
            key: "x/a".into(),
            ips: vec!["10.244.1.9".parse().unwrap()],
            iface: "trfromgate".into(),
            // Not scheduled as far as the API knows yet, and no address in its status.
            fetched: Some(pod("a", None, None)),
            reply,
            at: Instant::now(),
        };
        assert!(s.register(&reg));
        let a = s.cluster.read().unwrap().pods["x/a"].clone();
        assert_eq!(a.node.as_deref(), Some("n1"));
        assert_eq!(a.iface.as_deref(), Some("trfromgate"));
        assert_eq!(a.ips, reg.ips);
        // A listing that does not have it yet keeps it; a watch update keeps the gate's view.
        s.apply(Change::Pod(Delta::Replace(vec![])));
        assert!(s.cluster.read().unwrap().pods.contains_key("x/a"));
        assert!(s.synced[0]);
        s.apply(Change::Pod(Delta::Upsert(pod("a", Some("n1"), None))));
        assert_eq!(
            s.cluster.read().unwrap().pods["x/a"].iface.as_deref(),
            Some("trfromgate")
        );
        // Deleted: gone, registration and all.
        assert!(s.apply(Change::Pod(Delta::Remove("x/a".into()))));
        assert!(s.gate.is_empty());
        // Another local pod gets the interface the naming rule gives it.
        s.apply(Change::Pod(Delta::Upsert(pod(
            "b",
            Some("n1"),
            Some("10.244.1.10"),
        ))));
        assert_eq!(
            s.cluster.read().unwrap().pods["x/b"].iface,
            Some(trellis_net::link::pod_host_veth(
                Some(("x", "b")),
                "",
                "eth0"
            ))
        );
    }
}
