//! The pods of this node: sandbox (netns + CNI), containers in order with restart back-off,
//! status as the API shows it, ordered deletion, adoption after a restart, orphan removal.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Event, Pod, Secret, Service, ServiceAccount,
};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_daemon::Metrics;

use crate::network::{Network, PodRef};
use crate::probe::{self, Kind, Tracker};
use crate::runtime::{self, ContainerRun, ProcessRuntime, RunState, Runtime, Sandbox};
use crate::serviceaccount;
use crate::{Config, Error};

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `<root>/pods/<uid>/sandbox.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    namespace: String,
    name: String,
    uid: String,
    sandbox_id: String,
    netns: Option<PathBuf>,
    hostname: String,
    ips: Vec<IpAddr>,
    /// Set once CNI ADD succeeded (or for hostNetwork pods).
    ready: bool,
    created: String,
    /// The hostPorts ADD was given, given again to DEL (portmap removes its rules only then),
    /// also once the pod is gone from the API.
    #[serde(default)]
    port_mappings: Vec<crate::network::PortMapping>,
    /// The pod cgroup below the kubelet's cgroup root (`burstable/pod<uid>`); None without
    /// cgroups.
    #[serde(default)]
    cgroup: Option<String>,
}

struct Local {
    rec: SandboxRecord,
    dir: PathBuf,
    terminating_since: Option<Instant>,
    sigkilled: bool,
    /// Containers still being created when the pod's SIGTERM went out (no process to signal
    /// yet): each gets its SIGTERM once its process exists, within the grace period.
    term_pending: Vec<String>,
    last_status: Option<Value>,
    /// Restart failures already reported with an Event (container, attempt).
    reported: HashMap<String, u32>,
    /// Probe results per (container, attempt, probe).
    probes: HashMap<(String, u32, Kind), Tracker>,
    /// The projected service-account token.
    token: Token,
    /// A token failure already reported with an Event.
    token_reported: bool,
    /// The pod cgroup (resolved from `rec.cgroup` under the kubelet's root).
    cgroup: Option<crate::cgroup::Cgroup>,
    /// Containers whose creation failed (CreateContainerError), waiting for their back-off.
    create_failures: HashMap<String, CreateFailure>,
    /// Containers whose image could not be had, by name: not started again before `next`.
    pulls: HashMap<String, PullFailure>,
    /// Woken by the runtime when a container start it finishes in the background ends.
    wake: Arc<tokio::sync::Notify>,
}

/// A container that could not be created (its cgroup or limits refused, the runtime failed):
/// retried after the back-off, shown as `waiting: CreateContainerError` meanwhile.
struct CreateFailure {
    failures: u32,
    next: Instant,
    message: String,
}

/// An image that could not be pulled, waiting for its back-off.
struct PullFailure {
    failures: u32,
    at: Instant,
    next: Instant,
    image: String,
    message: String,
}

/// Where a pod's projected token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Not decided yet (a new pod, or one adopted after a restart: its token is renewed).
    Unknown,
    /// The pod gets none (automountServiceAccountToken false, or no such account).
    Off,
    /// Written; replaced at this instant.
    RefreshAt(Instant),
}

/// Sandbox failures waiting for their back-off.
struct Retry {
    failures: u32,
    next: Instant,
}

/// What every pod's sync shares: the node's configuration, the API client, the network and
/// the container runtime.
pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) client: kube::Client,
    pub(crate) net: Network,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) rt: Arc<dyn Runtime>,
}

/// One pod's sync: what the kubelet keeps of it between passes. Each pod has exactly one,
/// owned by its worker task ([`crate::pod_workers`]), so no two passes of a pod ever run at
/// once while passes of different pods do.
pub(crate) struct PodSync {
    ctx: Arc<Ctx>,
    uid: String,
    /// The sandbox, once made (or adopted).
    local: Option<Local>,
    /// A failed sandbox waiting for its back-off.
    retry: Option<Retry>,
    /// How soon to look again while a container's shim has not started its process yet:
    /// 10 ms, doubling up to the sync period (instead of waiting for it inside the pass).
    quick: Duration,
    /// Failed teardowns in a row of this pod once gone from the API ([`PodSync::remove`]).
    teardown_failures: u32,
}

/// The first retry of a failed teardown of a pod gone from the API.
pub(crate) const TEARDOWN_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of such a teardown.
pub(crate) const TEARDOWN_RETRY_MAX: Duration = Duration::from_secs(60);
/// How soon a pod gone from the API is looked at again while one of its containerd starts is
/// still under way.
pub(crate) const STARTING_RECHECK: Duration = Duration::from_millis(100);

/// The first look again after a container start.
const QUICK_FIRST: Duration = Duration::from_millis(10);

/// The shortest time between two passes over one pod.
const MIN_PASS_GAP: Duration = Duration::from_millis(5);

/// How often a terminating pod is looked at (its processes gone, its grace period over).
const TERMINATING_POLL: Duration = Duration::from_millis(200);
/// Whether the kernel would drop a SIGTERM sent to the process with this `/proc/<pid>/status`
/// now: the init of its own PID namespace (a container's PID 1) gets from outside only the
/// signals it has a handler for, and a just-started shell has not set its trap yet. Such a
/// signal is discarded, not kept pending.
fn sigterm_dropped(status: &str) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let ns_init = field("NSpid:").is_some_and(|ids| {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        ids.len() > 1 && ids.last() == Some(&"1")
    });
    let caught = field("SigCgt:")
        .and_then(|mask| u64::from_str_radix(mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (Signal::SIGTERM as u64 - 1)) != 0);
    ns_init && !caught
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now_rfc3339())
}

/// 10 s, 20 s, 40 s, … up to the maximum: the delay before restart number `n` (1-based).
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    trellis_api::cluster::wait::doubling(base, max, n)
}

/// The CNI container id of pod `uid`'s sandbox.
pub(crate) fn sandbox_id(uid: &str) -> String {
    format!("trellis-{}", uid.replace('-', ""))
}

impl Ctx {
    pub(crate) fn new(
        cfg: Config,
        client: kube::Client,
        net: Network,
        metrics: Arc<Metrics>,
        rt: Option<Arc<dyn Runtime>>,
    ) -> Ctx {
        let rt = rt.unwrap_or_else(|| {
            let mut passthrough_env = Vec::new();
            if let Ok(tag) = std::env::var("TRELLIS_TESTBED") {
                passthrough_env.push(("TRELLIS_TESTBED".to_string(), tag));
            }
            Arc::new(ProcessRuntime {
                shim: cfg.shim.clone(),
                passthrough_env,
                rotation: cfg.log_rotation,
            })
        });
        Ctx {
            cfg,
            client,
            net,
            metrics,
            rt,
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.cfg.root_dir.join("pods")
    }

    /// Reads the sandboxes left by an earlier run: complete ones are adopted as they are
    /// (returned, one sync each), half-made ones are torn down; namespaces with our prefix and
    /// pod cgroups that no sandbox owns are removed.
    pub(crate) async fn adopt(self: &Arc<Self>) -> Vec<PodSync> {
        let mut adopted: Vec<PodSync> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.pods_dir()) {
            for e in entries.flatten() {
                let dir = e.path();
                let rec: Option<SandboxRecord> = std::fs::read(dir.join("sandbox.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                match rec {
                    Some(rec) if rec.ready => {
                        tracing::info!(pod = %format!("{}/{}", rec.namespace, rec.name), "adopting a running pod");
                        let local = Local::new(rec, dir).with_cgroup(self.cfg.cgroups.as_ref());
                        let mut sync = PodSync::new(self.clone(), &local.rec.uid.clone());
                        sync.local = Some(local);
                        adopted.push(sync);
                    }
                    Some(rec) => {
                        let local = Local::new(rec, dir).with_cgroup(self.cfg.cgroups.as_ref());
                        self.teardown(&local).await;
                    }
                    None => {
                        runtime::kill_all(&dir);
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        let owned: Vec<String> = adopted
            .iter()
            .filter_map(|s| {
                s.local
                    .as_ref()?
                    .rec
                    .netns
                    .as_ref()?
                    .file_name()?
                    .to_str()
                    .map(String::from)
            })
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.cfg.netns_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.cfg.netns_prefix) && !owned.contains(&name) {
                    tracing::info!(netns = %name, "removing an orphan pod namespace");
                    let _ = trellis_net::Netns::delete(&self.cfg.netns_dir, &name);
                }
            }
        }
        let uids: Vec<&str> = adopted.iter().map(|s| s.uid.as_str()).collect();
        self.remove_orphan_cgroups(&uids).await;
        adopted
    }

    /// Removes the pod cgroups under the kubelet's root that no pod of this kubelet claims
    /// (left by a kubelet killed while it deleted a pod), with any process still in them.
    async fn remove_orphan_cgroups(&self, claimed: &[&str]) {
        let Some(root) = &self.cfg.cgroups else {
            return;
        };
        for (rel, uid) in root.pod_cgroups() {
            if claimed.contains(&uid.as_str()) {
                continue;
            }
            tracing::info!(cgroup = %rel, "removing an orphan pod cgroup");
            if let Err(e) = remove_cgroup(&root.child(&rel)).await {
                tracing::warn!(cgroup = %rel, error = %e, "removing an orphan pod cgroup");
            }
        }
    }

    /// CNI DEL, the namespace, the directory — in that order; a failing DEL keeps the rest for
    /// the next pass.
    async fn teardown(&self, local: &Local) -> bool {
        if let Some(netns) = &local.rec.netns {
            let podref = PodRef {
                namespace: local.rec.namespace.clone(),
                name: local.rec.name.clone(),
                uid: local.rec.uid.clone(),
                sandbox_id: local.rec.sandbox_id.clone(),
                netns: netns.clone(),
                port_mappings: local.rec.port_mappings.clone(),
            };
            if let Err(e) = self.net.del(podref).await {
                tracing::warn!(pod = %local.rec.name, error = %e, "CNI DEL");
                return false;
            }
            if let Some(name) = netns.file_name().and_then(|n| n.to_str())
                && let Err(e) = trellis_net::Netns::delete(&self.cfg.netns_dir, name)
            {
                tracing::warn!(netns = %name, error = %e, "removing the pod namespace");
            }
        }
        if let Some(cg) = &local.cgroup
            && let Err(e) = remove_cgroup(cg).await
        {
            // Kept, with the pod directory, for the next pass.
            tracing::warn!(pod = %local.rec.name, error = %e, "removing the pod cgroup");
            return false;
        }
        if let Err(e) = remove_pod_dir(&local.dir, |d| std::fs::remove_dir_all(d)).await {
            // Kept, as a cgroup that would not go is, for the next pass.
            tracing::warn!(pod = %local.rec.name, dir = %local.dir.display(), error = %e, "removing the pod directory");
            return false;
        }
        true
    }

    /// The QoS tiers' CPU shares, as upstream's QoS container manager keeps them: besteffort
    /// the minimum, burstable the sum of its pods' CPU requests (written when it changes;
    /// `written` is what was last written).
    pub(crate) fn set_tier_shares<'a>(
        &self,
        pods: impl Iterator<Item = &'a Pod>,
        written: &mut Option<u64>,
    ) {
        let Some(root) = &self.cfg.cgroups else {
            return;
        };
        let want = crate::cgroup::burstable_tier_shares(pods.filter_map(|p| p.spec.as_ref()));
        if *written == Some(want) {
            return;
        }
        let set = |tier: &str, shares: u64| {
            let cg = root.child(tier);
            cg.create().and_then(|()| {
                cg.apply(&crate::cgroup::Resources {
                    cpu_shares: Some(shares),
                    ..Default::default()
                })
            })
        };
        match set("besteffort", crate::cgroup::MIN_SHARES).and_then(|()| set("burstable", want)) {
            Ok(()) => *written = Some(want),
            Err(e) => tracing::warn!(error = %e, "setting the QoS tiers' CPU shares"),
        }
    }
}

impl PodSync {
    pub(crate) fn new(ctx: Arc<Ctx>, uid: &str) -> PodSync {
        PodSync {
            ctx,
            uid: uid.to_string(),
            local: None,
            retry: None,
            quick: QUICK_FIRST,
            teardown_failures: 0,
        }
    }

    pub(crate) fn uid(&self) -> &str {
        &self.uid
    }

    /// Whether the pod has a sandbox on this node.
    pub(crate) fn has_sandbox(&self) -> bool {
        self.local.is_some()
    }

    /// What the runtime wakes when a container start of this pod ends in the background (the
    /// worker then passes over the pod at once); None without a sandbox.
    pub(crate) fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.local.as_ref().map(|l| l.wake.clone())
    }

    /// One pass over the pod: its sandbox, containers, probes and status, or its deletion.
    /// Returns how soon the pod wants its next pass (at most the sync period): sooner while a
    /// container is being created, when a probe falls due, while it terminates.
    pub(crate) async fn sync(&mut self, pod: &Pod) -> Duration {
        let period = self.ctx.cfg.sync_period;
        let r = if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(pod)
                .await
                .map(|()| period.min(TERMINATING_POLL))
        } else {
            self.ensure(pod).await
        };
        match r {
            // Never a hot loop, whatever a pass asked for.
            Ok(next) => next.clamp(MIN_PASS_GAP, period.max(MIN_PASS_GAP)),
            Err(e) => {
                tracing::warn!(pod = %name_of(pod), error = %e, "syncing pod");
                period
            }
        }
    }

    /// The pod is gone from the API (deleted without this kubelet, or never known): whatever
    /// of it runs here is killed and removed, without grace. A teardown that fails (CNI DEL,
    /// a cgroup or directory that will not go) keeps the sandbox, as the delete path does:
    /// returns how long to wait before the next try (doubling from [`TEARDOWN_RETRY_FIRST`] to
    /// [`TEARDOWN_RETRY_MAX`]), None once nothing is left.
    pub(crate) async fn remove(&mut self) -> Option<Duration> {
        let local = self.local.take()?;
        let pod = format!("{}/{}", local.rec.namespace, local.rec.name);
        if self.teardown_failures == 0 {
            tracing::info!(pod = %pod, "pod is gone from the API: removing it");
        }
        // A containerd start under way (bounded by its own timeout) is let finish first: its
        // process would otherwise appear after the teardown, owned by nobody.
        if crate::containerd::runtime::any_starting(&local.dir) {
            self.local = Some(local);
            return Some(STARTING_RECHECK);
        }
        runtime::kill_all(&local.dir);
        if self.ctx.teardown(&local).await {
            self.teardown_failures = 0;
            return None;
        }
        self.teardown_failures = self.teardown_failures.saturating_add(1);
        let delay = backoff(
            TEARDOWN_RETRY_FIRST,
            TEARDOWN_RETRY_MAX,
            self.teardown_failures,
        );
        tracing::warn!(pod = %pod, failures = self.teardown_failures, retry_in_ms = delay.as_millis() as u64, "removing a pod gone from the API failed: kept for another try");
        self.ctx.metrics.inc(
            "kubelet_teardown_failures_total",
            "Teardowns of pods gone from the API that failed and wait for another try",
            &[],
            1.0,
        );
        self.local = Some(local);
        Some(delay)
    }

    async fn event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                "uid": pod.metadata.uid, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": self.ctx.cfg.node_name},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }));
        if let Ok(ev) = ev {
            let api: Api<Event> = Api::namespaced(self.ctx.client.clone(), &ns);
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::warn!(error = %e, "posting an event");
            }
        }
        tracing::info!(pod = %name_of(pod), reason, message, "event");
    }

    /// Makes the pod's sandbox, then its containers, then writes its status.
    /// Returns how soon the pod wants its next pass.
    async fn ensure(&mut self, pod: &Pod) -> Result<Duration, Error> {
        let period = self.ctx.cfg.sync_period;
        if self.local.is_none() {
            let now = Instant::now();
            if let Some(r) = &self.retry
                && now < r.next
            {
                return Ok(r.next - now);
            }
            let began = Instant::now();
            match self.make_sandbox(pod).await {
                Ok(local) => {
                    tracing::debug!(pod = %name_of(pod), ms = began.elapsed().as_millis() as u64, "sandbox ready");
                    self.retry = None;
                    self.local = Some(local);
                }
                Err(e) => {
                    let failures = self.retry.as_ref().map_or(0, |r| r.failures) + 1;
                    let delay = backoff(
                        self.ctx.cfg.backoff_base,
                        self.ctx.cfg.backoff_max,
                        failures,
                    );
                    self.retry = Some(Retry {
                        failures,
                        next: Instant::now() + delay,
                    });
                    self.ctx.metrics.inc(
                        "kubelet_sandbox_failures_total",
                        "Pod sandboxes (netns + CNI ADD) that failed",
                        &[],
                        1.0,
                    );
                    let (reason, msg) = match &e {
                        Error::Cgroup(e) => (
                            "FailedCreatePodContainer",
                            format!(
                                "unable to ensure pod container exists: {e}; retrying in {}s",
                                delay.as_secs()
                            ),
                        ),
                        e => (
                            "FailedCreatePodSandBox",
                            format!(
                                "Failed to create pod sandbox: {e}; retrying in {}s",
                                delay.as_secs()
                            ),
                        ),
                    };
                    self.event(pod, "Warning", reason, &msg).await;
                    self.patch_status(
                        pod,
                        json!({"phase": "Pending", "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "PodReadyToStartContainers", "status": "False",
                             "reason": reason, "message": msg}]}),
                    )
                    .await;
                    return Ok(delay);
                }
            }
        }
        if !self.project_service_account(pod).await {
            return Ok(period);
        }
        self.run_containers(pod).await?;
        let probe_due = self.run_probes(pod).await;
        // A container whose shim has not started its process yet is looked at again soon
        // (10 ms, doubling), rather than waited for here: other work of this pass (the status)
        // and other pods go on meanwhile.
        let creating = self.creating(pod);
        let next = if creating && self.ctx.rt.wakes_on_start() {
            // The runtime wakes the worker when the start ends (the sync period bounds a lost
            // wake).
            period
        } else if creating {
            let q = self.quick;
            self.quick = (q * 2).min(period);
            q
        } else {
            self.quick = QUICK_FIRST;
            period
        };
        let next = probe_due.map_or(next, |p| p.min(next));
        let status = self.status(pod);
        let changed = self
            .local
            .as_ref()
            .is_some_and(|l| l.last_status.as_ref() != Some(&status));
        if changed {
            let mut st = status.clone();
            let when = now_rfc3339();
            let prev = self.local.as_ref().and_then(|l| l.last_status.clone());
            if let Some(conds) = st["conditions"].as_array_mut() {
                for c in conds {
                    let before = prev.as_ref().and_then(|p| {
                        p["conditions"]
                            .as_array()?
                            .iter()
                            .find(|o| o["type"] == c["type"])
                            .cloned()
                    });
                    if before.is_none_or(|b| b["status"] != c["status"]) {
                        c["lastTransitionTime"] = json!(when);
                    }
                }
            }
            if self.patch_status(pod, st).await
                && let Some(l) = self.local.as_mut()
            {
                let ready = status["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                tracing::debug!(pod = %name_of(pod), phase = status["phase"].as_str().unwrap_or_default(), ready, "pod status written");
                l.last_status = Some(status);
            }
        }
        Ok(next)
    }

    /// Whether a container of the pod has a run whose process has not started yet.
    fn creating(&self, pod: &Pod) -> bool {
        let Some(local) = &self.local else {
            return false;
        };
        let sb = Self::sandbox(local);
        pod.spec.iter().any(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .any(|c| {
                    matches!(
                        self.ctx.rt.latest(&sb, &c.name),
                        Some((_, RunState::Running { pid: None, .. }))
                    )
                })
        })
    }

    async fn patch_status(&self, pod: &Pod, status: Value) -> bool {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(pod = %name_of(pod), error = %e, "patching pod status");
                false
            }
        }
    }

    async fn make_sandbox(&self, pod: &Pod) -> Result<Local, Error> {
        let uid = self.uid.as_str();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let short: String = uid.chars().filter(|c| *c != '-').take(16).collect();
        let sandbox_id = sandbox_id(uid);
        let netns_name = format!("{}{}", self.ctx.cfg.netns_prefix, short);
        let dir = self.ctx.pods_dir().join(uid);
        // hostPorts that cannot be set up fail the sandbox before anything is made (an Event,
        // the pod's status, back-off), rather than running the pod without them.
        let port_mappings = if host_network {
            Vec::new()
        } else {
            let (maps, mut bad) = crate::network::port_mappings(&spec);
            bad.extend(crate::network::foreign_host_ips(&maps));
            if !bad.is_empty() {
                return Err(Error::HostPort(bad.join("; ")));
            }
            maps
        };
        // The pod cgroup and its limits before anything else: a limit the kernel refuses
        // leaves nothing behind to undo.
        let cgroup = match &self.ctx.cfg.cgroups {
            Some(root) => {
                let qos = crate::cgroup::qos_class(&spec)?;
                let rel = qos.pod_path(uid);
                let cg = root.child(&rel);
                let pids_limit = self.ctx.cfg.pod_max_pids;
                let made = crate::cgroup::pod_resources(&spec).and_then(|r| {
                    let r = crate::cgroup::Resources { pids_limit, ..r };
                    cg.create().and_then(|()| cg.apply(&r))
                });
                if let Err(e) = made {
                    let _ = cg.remove();
                    return Err(e.into());
                }
                Some(rel)
            }
            None => None,
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create the pod directory", e))?;
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let mut rec = SandboxRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.to_string(),
            sandbox_id: sandbox_id.clone(),
            netns: (!host_network).then(|| self.ctx.cfg.netns_dir.join(&netns_name)),
            hostname: hostname.clone(),
            ips: Vec::new(),
            ready: false,
            created: now_rfc3339(),
            port_mappings: port_mappings.clone(),
            cgroup,
        };
        let write = |rec: &SandboxRecord| -> Result<(), Error> {
            crate::shim::write_atomic(&dir, "sandbox.json", &serde_json::to_string(rec)?)
                .map_err(|e| Error::io("write sandbox.json", e))
        };
        write(&rec)?;
        let mut local =
            Local::new(rec.clone(), dir.clone()).with_cgroup(self.ctx.cfg.cgroups.as_ref());
        if !host_network {
            // A namespace of this name is this pod's, left by an earlier start whose ADD and
            // DEL both failed (teardown keeps it then). It goes, with whatever is in it (CNI GC
            // frees an address it held), so that this start reports its own error rather than
            // "create netns: File exists" on every retry.
            match trellis_net::Netns::delete(&self.ctx.cfg.netns_dir, &netns_name) {
                Ok(true) => tracing::warn!(
                    pod = %name,
                    netns = %netns_name,
                    "removed the namespace an earlier failed start left"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(netns = %netns_name, error = %e, "removing a stale pod namespace")
                }
            }
            if let Err(e) = Self::new_netns(&self.ctx.cfg.netns_dir, &netns_name).await {
                self.ctx.teardown(&local).await;
                return Err(e);
            }
            let podref = PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.to_string(),
                sandbox_id: sandbox_id.clone(),
                netns: self.ctx.cfg.netns_dir.join(&netns_name),
                port_mappings,
            };
            match self.ctx.net.add(podref).await {
                Ok(ips) => rec.ips = ips,
                Err(e) => {
                    // A failed ADD is followed by DEL; then the namespace goes.
                    self.ctx.teardown(&local).await;
                    return Err(e);
                }
            }
        } else if let Some(ip) = self.ctx.cfg.node_ip {
            rec.ips = vec![ip];
        }
        // The pod's /etc/hosts and resolv.conf, bind-mounted into every container.
        let ip = rec
            .ips
            .first()
            .map_or("127.0.0.1".to_string(), |i| i.to_string());
        let hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
        );
        let d = &self.ctx.cfg.cluster_domain;
        let resolv = format!(
            "search {namespace}.svc.{d} svc.{d} {d}\nnameserver {}\noptions ndots:5\n",
            self.ctx.cfg.cluster_dns
        );
        std::fs::write(dir.join("etc-hosts"), hosts)
            .and_then(|_| std::fs::write(dir.join("resolv.conf"), resolv))
            .map_err(|e| Error::io("write the pod's hosts and resolv.conf", e))?;
        rec.ready = true;
        write(&rec)?;
        local.rec = rec;
        Ok(local)
    }

    /// A pod namespace with its loopback up (as the runtime, not the plugin, does it).
    async fn new_netns(dir: &std::path::Path, name: &str) -> Result<(), Error> {
        let ns = trellis_net::Netns::create(dir, name)?;
        let h = ns.connect()?;
        let lo = h.require_link("lo").await?;
        h.set_up(lo.index).await?;
        Ok(())
    }

    fn sandbox(local: &Local) -> Sandbox {
        let sa = local.dir.join(serviceaccount::DIR);
        Sandbox {
            dir: local.dir.clone(),
            netns: local.rec.netns.clone(),
            hostname: local.rec.hostname.clone(),
            service_account: (local.token != Token::Off && sa.join("token").is_file())
                .then_some(sa),
            cgroup: local.cgroup.clone(),
            wake: Some(local.wake.clone()),
        }
    }

    /// Projects (or renews) the pod's service-account token before its containers start.
    /// False while a pod that should have a token has none yet (its containers wait).
    async fn project_service_account(&mut self, pod: &Pod) -> bool {
        let uid = self.uid.clone();
        let Some(local) = self.local.as_ref() else {
            return false;
        };
        let dir = local.dir.join(serviceaccount::DIR);
        let has_token = dir.join("token").is_file();
        match local.token {
            Token::Off => return true,
            // A valid token until then, or a failed first request waiting for its retry.
            Token::RefreshAt(t) if Instant::now() < t => return has_token,
            _ => {}
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = serviceaccount::account_name(pod);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &ns);
        let pod_says = pod
            .spec
            .as_ref()
            .and_then(|s| s.automount_service_account_token);
        let account = if pod_says == Some(false) {
            None
        } else {
            match accounts.get_opt(&name).await {
                Ok(Some(a)) => Some(a),
                Ok(None) => {
                    // Upstream's admission refuses such a pod; ours admits it (the account
                    // controller may not run), so it runs without a token.
                    let msg = format!(
                        "serviceaccount {ns}/{name} not found: the pod runs without a service-account token"
                    );
                    self.event(pod, "Warning", "FailedMount", &msg).await;
                    self.set_token(Token::Off);
                    return true;
                }
                Err(e) => return self.token_failed(pod, has_token, &e.to_string()).await,
            }
        };
        if !serviceaccount::automount(pod, account.as_ref()) {
            let _ = std::fs::remove_dir_all(&dir);
            self.set_token(Token::Off);
            return true;
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(serviceaccount::EXPIRATION_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: Some(uid),
                }),
            },
            ..Default::default()
        };
        let asked = Instant::now();
        let got = match accounts
            .create_token_request(&name, &PostParams::default(), &req)
            .await
        {
            Ok(t) => t,
            Err(e) => return self.token_failed(pod, has_token, &e.to_string()).await,
        };
        let Some(status) = got.status else {
            return self
                .token_failed(pod, has_token, "the TokenRequest has no status")
                .await;
        };
        let ttl = status
            .expiration_timestamp
            .0
            .duration_since(jiff::Timestamp::now())
            .try_into()
            .unwrap_or(Duration::from_secs(600));
        // ca.crt from the namespace's kube-root-ca.crt, as upstream's projected
        // kube-api-access volume sources it; the kubeconfig's CA where there is none.
        let configmaps: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &ns);
        let published = match configmaps.get_opt(serviceaccount::ROOT_CA_CONFIGMAP).await {
            Ok(cm) => cm.as_ref().and_then(serviceaccount::published_ca),
            Err(e) => {
                tracing::debug!(namespace = %ns, error = %e, "reading kube-root-ca.crt");
                None
            }
        };
        let ca = published.or_else(|| self.ctx.cfg.cluster_ca.clone());
        if let Err(e) = serviceaccount::write(&dir, &status.token, ca.as_deref(), &ns) {
            return self
                .token_failed(pod, has_token, &format!("writing the token: {e}"))
                .await;
        }
        tracing::debug!(pod = %name_of(pod), account = %name, "service-account token projected");
        self.set_token(Token::RefreshAt(asked + serviceaccount::refresh_after(ttl)));
        true
    }

    fn set_token(&mut self, t: Token) {
        if let Some(l) = self.local.as_mut() {
            l.token = t;
            l.token_reported = false;
        }
    }

    /// A TokenRequest that failed: a running pod keeps its current token and tries again in
    /// 10 s; a new one waits for its first token (asked again every 2 s), with one Event.
    async fn token_failed(&mut self, pod: &Pod, has_token: bool, why: &str) -> bool {
        tracing::warn!(pod = %name_of(pod), error = %why, "service-account token");
        let Some(l) = self.local.as_mut() else {
            return false;
        };
        let report = !l.token_reported;
        l.token_reported = true;
        let retry = Duration::from_secs(if has_token { 10 } else { 2 });
        l.token = Token::RefreshAt(Instant::now() + retry);
        if report {
            let msg = format!(
                "MountVolume.SetUp failed for volume \"kube-api-access\": failed to fetch token: {why}"
            );
            self.event(pod, "Warning", "FailedMount", &msg).await;
        }
        has_token
    }

    /// Where pods reach the API server: the `kubernetes` Service in `default` (its ClusterIP
    /// and https port, as upstream), else the address the kubelet itself uses.
    async fn api_endpoint(&self) -> Option<(String, u16)> {
        let svcs: Api<Service> = Api::namespaced(self.ctx.client.clone(), "default");
        if let Ok(Some(s)) = svcs.get_opt("kubernetes").await
            && let Some(spec) = s.spec
            && let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None")
            && let Some(port) = spec.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref() == Some("https") || p.port == 443)
                    .then_some(p.port)
                    .and_then(|p| u16::try_from(p).ok())
            })
        {
            return Some((ip, port));
        }
        self.ctx.cfg.api_endpoint.clone()
    }

    /// Init containers in order, then the app containers; restarts after their back-off.
    async fn run_containers(&mut self, pod: &Pod) -> Result<(), Error> {
        let Some(local) = self.local.as_ref() else {
            return Ok(());
        };
        let sb = Self::sandbox(local);
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        for c in spec.init_containers.iter().flatten() {
            match self.ctx.rt.latest(&sb, &c.name) {
                None => return self.start(pod, &sb, c, 0).await,
                Some((_, RunState::Running { .. })) => return Ok(()),
                Some((_, RunState::Exited { code: 0, .. })) => continue,
                Some((n, RunState::Exited { finished, .. })) => {
                    if policy == "Never" {
                        return Ok(());
                    }
                    if self.due(finished, n + 1) {
                        return self.start(pod, &sb, c, n + 1).await;
                    }
                    return Ok(());
                }
            }
        }
        for c in &spec.containers {
            match self.ctx.rt.latest(&sb, &c.name) {
                None => self.start(pod, &sb, c, 0).await?,
                Some((_, RunState::Running { .. })) => {}
                Some((
                    n,
                    RunState::Exited {
                        code,
                        finished,
                        start_error,
                        oom_killed,
                        ..
                    },
                )) => {
                    let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if code != 0 || start_error.is_some() {
                        let reported = self.local.as_ref().and_then(|l| l.reported.get(&c.name));
                        if reported != Some(&n) {
                            let msg = match &start_error {
                                Some(e) => {
                                    format!("Error: failed to start container {:?}: {e}", c.name)
                                }
                                // The kernel's OOM killer ended it: the Event says so
                                // (upstream's shows it only in the status' OOMKilled).
                                None if oom_killed => {
                                    let limit = c
                                        .resources
                                        .as_ref()
                                        .and_then(|r| r.limits.as_ref())
                                        .and_then(|l| l.get("memory"))
                                        .map(|q| format!(" at its memory limit of {}", q.0))
                                        .unwrap_or_default();
                                    format!(
                                        "container {:?} was OOMKilled (exit code {code}): the kernel's OOM killer ended it{limit}",
                                        c.name
                                    )
                                }
                                None => format!("container {:?} exited with code {code}", c.name),
                            };
                            let reason = if start_error.is_some() {
                                "Failed"
                            } else {
                                "BackOff"
                            };
                            self.event(pod, "Warning", reason, &msg).await;
                            if let Some(l) = self.local.as_mut() {
                                l.reported.insert(c.name.clone(), n);
                            }
                        }
                    }
                    if restart && self.due(finished, n + 1) {
                        self.start(pod, &sb, c, n + 1).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Startup, then liveness and readiness, for every running app container; a failed
    /// startup or liveness probe kills the container (it restarts after its back-off). The
    /// first probe runs as soon as the container's process runs (after initialDelaySeconds),
    /// then every period. Returns how soon the next probe falls due.
    async fn run_probes(&mut self, pod: &Pod) -> Option<Duration> {
        let local = self.local.as_ref()?;
        let sb = Self::sandbox(local);
        let pod_ip = local.rec.ips.first().copied();
        let netns = local.rec.netns.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut soonest: Option<Duration> = None;
        for c in &spec.containers {
            let Some((n, RunState::Running { started, pid })) = self.ctx.rt.latest(&sb, &c.name)
            else {
                continue;
            };
            // Not before the process runs: a probe of a container still being created would
            // only fail.
            if pid.is_none() {
                continue;
            }
            let running_for = started.elapsed().unwrap_or_default();
            for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                let Some(p) = probe::probe_of(c, kind) else {
                    continue;
                };
                let key = (c.name.clone(), n, kind);
                let Some(local) = self.local.as_mut() else {
                    return soonest;
                };
                let started_ok = c.startup_probe.is_none()
                    || local
                        .probes
                        .get(&(c.name.clone(), n, Kind::Startup))
                        .is_some_and(|t| t.ok);
                if kind != Kind::Startup && !started_ok {
                    continue;
                }
                let t = local.probes.entry(key.clone()).or_insert_with(|| Tracker {
                    ok: kind == Kind::Liveness,
                    ..Default::default()
                });
                if kind == Kind::Startup && t.ok {
                    continue;
                }
                if !probe::due(p, t, running_for) {
                    soonest = sooner(soonest, probe::until_due(p, t, running_for));
                    continue;
                }
                let result = probe::run(p, c, pod_ip, netns.clone()).await;
                let Some(t) = self.local.as_mut().and_then(|l| l.probes.get_mut(&key)) else {
                    return soonest;
                };
                let failed_before = t.failures;
                let verdict = probe::record(
                    p,
                    t,
                    result.is_ok(),
                    result.clone().err().unwrap_or_default(),
                );
                soonest = sooner(soonest, probe::until_due(p, t, running_for));
                let threshold = p.failure_threshold.unwrap_or(3).max(1) as u32;
                let fatal = kind != Kind::Readiness
                    && !verdict
                    && t.failures >= threshold
                    && failed_before < threshold;
                if let Err(why) = &result {
                    let what = match kind {
                        Kind::Startup => "Startup",
                        Kind::Liveness => "Liveness",
                        Kind::Readiness => "Readiness",
                    };
                    self.event(
                        pod,
                        "Warning",
                        "Unhealthy",
                        &format!("{what} probe failed: {why}"),
                    )
                    .await;
                }
                if fatal {
                    let msg = format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        if kind == Kind::Startup {
                            "startup"
                        } else {
                            "liveness"
                        }
                    );
                    self.event(pod, "Normal", "Killing", &msg).await;
                    self.ctx.rt.signal(&sb, &c.name, Signal::SIGKILL);
                }
            }
        }
        if let Some(local) = self.local.as_mut() {
            // Trackers of earlier runs are no longer needed.
            let latest: HashMap<String, u32> = spec
                .containers
                .iter()
                .filter_map(|c| Some((c.name.clone(), self.ctx.rt.latest(&sb, &c.name)?.0)))
                .collect();
            local
                .probes
                .retain(|(name, n, _), _| latest.get(name) == Some(n));
        }
        soonest
    }

    fn due(&self, finished: SystemTime, restart: u32) -> bool {
        let wait = backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max, restart);
        finished.elapsed().map(|e| e >= wait).unwrap_or(true)
    }

    async fn start(
        &mut self,
        pod: &Pod,
        sb: &Sandbox,
        c: &Container,
        attempt: u32,
    ) -> Result<(), Error> {
        if let Some(f) = self
            .local
            .as_ref()
            .and_then(|l| l.create_failures.get(&c.name))
            && Instant::now() < f.next
        {
            return Ok(());
        }
        if let Some(p) = self.local.as_ref().and_then(|l| l.pulls.get(&c.name))
            && Instant::now() < p.next
        {
            return Ok(());
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let resources = match crate::cgroup::container_resources(c).and_then(|r| {
            let adj = crate::cgroup::oom_score_adj(&spec, c, crate::node::capacity().1)?;
            Ok(crate::cgroup::Resources {
                oom_score_adj: Some(adj),
                // Also each container's (containerd: the OCI spec's pids limit); the pod's
                // cgroup holds them all together.
                pids_limit: self.ctx.cfg.pod_max_pids,
                ..r
            })
        }) {
            Ok(r) => r,
            Err(e) => return self.create_failed(pod, &c.name, e.to_string()).await,
        };
        let host_mounts = if self.ctx.rt.mounts_host_paths() {
            match crate::volumes::host_mounts(&spec, c) {
                Ok(m) => m,
                Err(e) => return self.create_failed(pod, &c.name, e.to_string()).await,
            }
        } else {
            Vec::new()
        };
        let env = self.env(pod, c).await;
        // `$(VAR)` in command and args takes the container's environment, as upstream's.
        let expanded = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|v| v.iter().map(|a| OsString::from(expand(a, &env))).collect())
        };
        let (command, args) = (expanded(&c.command), expanded(&c.args));
        let mut argv: Vec<OsString> = Vec::new();
        argv.extend(
            c.command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .map(|a| OsString::from(expand(a, &env))),
        );
        if argv.is_empty() {
            // The process runtime has no image entrypoint to fall back on.
            argv.push(OsString::from(format!(
                "/nonexistent/{}-has-no-command",
                c.name
            )));
        }
        let run = ContainerRun {
            name: c.name.clone(),
            attempt,
            argv,
            env,
            workdir: c.working_dir.clone().map(PathBuf::from),
            stdin: c.stdin.unwrap_or(false).then(|| {
                if c.stdin_once.unwrap_or(false) {
                    crate::shim::StdinMode::Once
                } else {
                    crate::shim::StdinMode::Open
                }
            }),
            tty: c.tty.unwrap_or(false),
            resources,
            image: c.image.clone(),
            command,
            args,
            privileged: c
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false),
            host_mounts,
        };
        // An image runtime: the image per the pull policy first (Events as upstream's).
        let mut ready = Ok(());
        if let Some(image) = c.image.as_deref().filter(|i| !i.trim().is_empty())
            && let Some(present) = self.ctx.rt.image_present(image)
        {
            let policy = pull_policy(image, c.image_pull_policy.as_deref());
            ready = match (policy, present) {
                (_, Err(e)) => Err(e),
                ("Never", Ok(false)) => Err(Error::ImagePull {
                    image: image.to_string(),
                    message: format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    ),
                }),
                ("Never" | "IfNotPresent", Ok(true)) => {
                    let msg = format!("Container image {image:?} already present on machine");
                    self.event(pod, "Normal", "Pulled", &msg).await;
                    Ok(())
                }
                _ => {
                    self.event(
                        pod,
                        "Normal",
                        "Pulling",
                        &format!("Pulling image {image:?}"),
                    )
                    .await;
                    let t = Instant::now();
                    let pulled = self.ctx.rt.pull_image(image);
                    if let Ok(bytes) = &pulled {
                        let msg = format!(
                            "Successfully pulled image {image:?} in {:.3}s. Image size: {bytes} bytes.",
                            t.elapsed().as_secs_f64()
                        );
                        self.event(pod, "Normal", "Pulled", &msg).await;
                    }
                    pulled.map(drop)
                }
            };
        }
        match ready.and_then(|()| self.ctx.rt.start(sb, &run)) {
            Ok(()) => {
                if let Some(l) = self.local.as_mut() {
                    l.pulls.remove(&c.name);
                    l.create_failures.remove(&c.name);
                }
            }
            Err(Error::ImagePull { image, message }) => {
                // No run is made: the container waits (ErrImagePull, then ImagePullBackOff)
                // and the next try comes after the back-off, 10 s doubling to 5 min.
                let failures = self
                    .local
                    .as_ref()
                    .and_then(|l| l.pulls.get(&c.name))
                    .map_or(0, |p| p.failures)
                    + 1;
                let delay = backoff(
                    self.ctx.cfg.backoff_base,
                    self.ctx.cfg.backoff_max,
                    failures,
                );
                let now = Instant::now();
                if let Some(l) = self.local.as_mut() {
                    l.pulls.insert(
                        c.name.clone(),
                        PullFailure {
                            failures,
                            at: now,
                            next: now + delay,
                            image: image.clone(),
                            message: message.clone(),
                        },
                    );
                }
                self.ctx.metrics.inc(
                    "kubelet_image_pull_failures_total",
                    "Container starts that failed for their image",
                    &[],
                    1.0,
                );
                let msg = format!(
                    "Failed to pull image {image:?}: {message}; back-off {}s",
                    delay.as_secs()
                );
                self.event(pod, "Warning", "Failed", &msg).await;
                return Ok(());
            }
            Err(e) => return self.create_failed(pod, &c.name, e.to_string()).await,
        }
        // Not waited for here: until the shim has started the process (or failed to) the
        // container is ContainerCreating, never Ready, and the pod's next pass comes soon (see
        // `ensure`).
        self.ctx.metrics.inc(
            "kubelet_container_starts_total",
            "Container processes started",
            &[],
            1.0,
        );
        tracing::info!(pod = %name_of(pod), container = %c.name, attempt, "container started");
        Ok(())
    }

    /// A container that could not be created: an Event each attempt, CreateContainerError in
    /// its status, and the next attempt only after the back-off (never a hot loop).
    async fn create_failed(&mut self, pod: &Pod, name: &str, why: String) -> Result<(), Error> {
        let (base, max) = (self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max);
        let Some(l) = self.local.as_mut() else {
            return Ok(());
        };
        let f = l
            .create_failures
            .entry(name.to_string())
            .or_insert_with(|| CreateFailure {
                failures: 0,
                next: Instant::now(),
                message: String::new(),
            });
        f.failures += 1;
        f.next = Instant::now() + backoff(base, max, f.failures);
        f.message = why.clone();
        self.ctx.metrics.inc(
            "kubelet_container_create_failures_total",
            "Containers the runtime could not create (CreateContainerError)",
            &[],
            1.0,
        );
        tracing::warn!(pod = %name_of(pod), container = %name, error = %why, "creating a container");
        self.event(pod, "Warning", "Failed", &format!("Error: {why}"))
            .await;
        Ok(())
    }

    /// The container's environment: PATH by default, `env` with values, field references,
    /// ConfigMap and Secret keys; `envFrom` ConfigMaps and Secrets.
    async fn env(&self, pod: &Pod, c: &Container) -> Vec<(String, String)> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let ip = self
            .local
            .as_ref()
            .and_then(|l| l.rec.ips.first().map(|i| i.to_string()))
            .unwrap_or_default();
        let mut out: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            (
                "HOSTNAME".into(),
                self.local
                    .as_ref()
                    .map(|l| l.rec.hostname.clone())
                    .unwrap_or_default(),
            ),
        ];
        if let Some((host, port)) = self.api_endpoint().await {
            out.extend(serviceaccount::env(&host, port));
        }
        let mut set = |k: String, v: String| {
            out.retain(|(o, _)| *o != k);
            out.push((k, v));
        };
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref
                && let Ok(cm) = cms.get(&r.name).await
            {
                for (k, v) in cm.data.unwrap_or_default() {
                    set(format!("{prefix}{k}"), v);
                }
            }
            if let Some(r) = &from.secret_ref
                && let Ok(s) = secrets.get(&r.name).await
            {
                for (k, v) in s.data.unwrap_or_default() {
                    set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v.0).into_owned(),
                    );
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                Some(v.clone())
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => pod.metadata.name.clone(),
                        "metadata.namespace" => pod.metadata.namespace.clone(),
                        "metadata.uid" => pod.metadata.uid.clone(),
                        "spec.nodeName" => Some(self.ctx.cfg.node_name.clone()),
                        "spec.serviceAccountName" => pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.service_account_name.clone()),
                        "status.podIP" => Some(ip.clone()),
                        "status.hostIP" => self.ctx.cfg.node_ip.map(|i| i.to_string()),
                        p => p
                            .strip_prefix("metadata.labels['")
                            .and_then(|k| k.strip_suffix("']"))
                            .and_then(|k| pod.metadata.labels.as_ref()?.get(k).cloned()),
                    }
                } else if let Some(k) = &from.config_map_key_ref {
                    cms.get(&k.name)
                        .await
                        .ok()
                        .and_then(|cm| cm.data?.get(&k.key).cloned())
                } else if let Some(k) = &from.secret_key_ref {
                    secrets.get(&k.name).await.ok().and_then(|s| {
                        s.data?
                            .get(&k.key)
                            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    })
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(v) = value {
                // A literal value may name variables defined before it.
                let v = if e.value.is_some() {
                    expand(&v, &out)
                } else {
                    v
                };
                out.retain(|(o, _)| *o != e.name);
                out.push((e.name.clone(), v));
            }
        }
        out
    }

    /// The pod's status from its containers' runs.
    fn status(&self, pod: &Pod) -> Value {
        let Some(local) = self.local.as_ref() else {
            return json!({});
        };
        let sb = Self::sandbox(local);
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let scheme = self.ctx.rt.scheme();
        let cid = |name: &str, n: u32| format!("{scheme}://{}-{name}-{n}", local.rec.sandbox_id);
        let terminated = |name: &str, n: u32, st: &RunState| match st {
            RunState::Exited {
                code,
                started,
                finished,
                start_error,
                oom_killed,
            } => {
                let reason = match (start_error, code) {
                    (Some(_), _) => "StartError",
                    (None, 0) => "Completed",
                    (None, _) if *oom_killed => "OOMKilled",
                    (None, _) => "Error",
                };
                let mut t = json!({"exitCode": code, "reason": reason,
                    "startedAt": rfc3339(*started), "finishedAt": rfc3339(*finished),
                    "containerID": cid(name, n)});
                if let Some(m) = start_error {
                    t["message"] = json!(m);
                }
                Some(json!({"terminated": t}))
            }
            RunState::Running { .. } => None,
        };
        let one = |c: &Container, init: bool| -> (Value, Option<RunState>) {
            let latest = self.ctx.rt.latest(&sb, &c.name);
            let pull = local.pulls.get(&c.name);
            let (n, state) = match (&latest, pull) {
                // The image could not be had: no run yet, or the last one has ended.
                (None | Some((_, RunState::Exited { .. })), Some(p)) => {
                    // Just failed (within two sync periods): ErrImagePull; then the back-off.
                    let reason = if p.at.elapsed() < self.ctx.cfg.sync_period * 2 {
                        "ErrImagePull"
                    } else {
                        "ImagePullBackOff"
                    };
                    let message = if reason == "ErrImagePull" {
                        p.message.clone()
                    } else {
                        format!("Back-off pulling image {:?}", p.image)
                    };
                    (
                        latest.as_ref().map_or(0, |l| l.0),
                        json!({"waiting": {"reason": reason, "message": message}}),
                    )
                }
                (None, _) => (
                    0,
                    json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}}),
                ),
                // The shim runs but has not started the process yet (it may still fail to):
                // the container is still being created, never running, started or ready.
                (Some((n, RunState::Running { pid: None, .. })), _) => (
                    *n,
                    json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}}),
                ),
                (Some((n, RunState::Running { started, .. })), _) => {
                    (*n, json!({"running": {"startedAt": rfc3339(*started)}}))
                }
                (Some((n, st @ RunState::Exited { code, .. })), None) => {
                    let restart =
                        (policy == "Always" && !init) || (policy != "Never" && *code != 0);
                    if restart {
                        let wait =
                            backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max, n + 1);
                        (
                            *n,
                            json!({"waiting": {"reason": "CrashLoopBackOff",
                            "message": format!("back-off {}s restarting failed container={} pod={}",
                                wait.as_secs(), c.name, local.rec.name)}}),
                        )
                    } else {
                        (*n, terminated(&c.name, *n, st).unwrap_or_else(|| json!({})))
                    }
                }
            };
            // A creation that failed (and waits for its back-off) is what the container is
            // doing unless a run of it is alive.
            let state = match local.create_failures.get(&c.name) {
                Some(f) if !matches!(latest, Some((_, RunState::Running { .. }))) => {
                    json!({"waiting": {"reason": "CreateContainerError", "message": f.message}})
                }
                _ => state,
            };
            let last = if n > 0 {
                self.ctx
                    .rt
                    .state(&sb, &c.name, n - 1)
                    .and_then(|s| terminated(&c.name, n - 1, &s))
                    .unwrap_or_else(|| json!({}))
            } else {
                json!({})
            };
            let running = matches!(latest, Some((_, RunState::Running { pid: Some(_), .. })));
            let verdict = |kind: Kind| {
                probe::probe_of(c, kind).is_none()
                    || local
                        .probes
                        .get(&(c.name.clone(), n, kind))
                        .is_some_and(|t| t.ok)
            };
            let started = running && verdict(Kind::Startup);
            let ready = started && verdict(Kind::Readiness);
            let mut s = json!({"name": c.name, "image": c.image.clone().unwrap_or_default(),
                "imageID": "", "restartCount": n, "started": started, "ready": ready,
                "state": state, "lastState": last});
            if latest.is_some() {
                s["containerID"] = json!(cid(&c.name, n));
            }
            (s, latest.map(|l| l.1))
        };
        let inits: Vec<(Value, Option<RunState>)> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| one(c, true))
            .collect();
        let apps: Vec<(Value, Option<RunState>)> =
            spec.containers.iter().map(|c| one(c, false)).collect();
        let initialized = inits
            .iter()
            .all(|(_, s)| matches!(s, Some(RunState::Exited { code: 0, .. })));
        let init_failed = policy == "Never"
            && inits
                .iter()
                .any(|(_, s)| matches!(s, Some(RunState::Exited { code, .. }) if *code != 0));
        let all_ready = !apps.is_empty() && apps.iter().all(|(v, _)| v["ready"] == json!(true));
        let any_running = apps
            .iter()
            .any(|(_, s)| matches!(s, Some(RunState::Running { pid: Some(_), .. })));
        let all_exited = apps
            .iter()
            .all(|(_, s)| matches!(s, Some(RunState::Exited { .. })));
        let all_zero = apps
            .iter()
            .all(|(_, s)| matches!(s, Some(RunState::Exited { code: 0, .. })));
        // A container being started again after a run counts as stopped, not as never started
        // (upstream's getPhase: waiting with a last termination): a crash-looping pod of policy
        // Always stays Running while its shim starts the next run.
        let all_stopped = apps.iter().all(|(v, s)| match s {
            Some(RunState::Exited { .. }) => true,
            Some(RunState::Running { pid: None, .. }) => v["restartCount"].as_u64() > Some(0),
            _ => false,
        });
        let phase = if init_failed {
            "Failed"
        } else if !initialized {
            "Pending"
        } else if all_exited && policy == "Never" {
            if all_zero { "Succeeded" } else { "Failed" }
        } else if all_exited && policy == "OnFailure" && all_zero {
            "Succeeded"
        } else if any_running || all_exited || all_stopped {
            "Running"
        } else {
            "Pending"
        };
        let b = |x: bool| if x { "True" } else { "False" };
        let ips: Vec<Value> = local
            .rec
            .ips
            .iter()
            .map(|i| json!({"ip": i.to_string()}))
            .collect();
        let mut st = json!({
            "phase": phase,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True"},
                {"type": "Initialized", "status": b(initialized)},
                {"type": "Ready", "status": b(all_ready && initialized)},
                {"type": "ContainersReady", "status": b(all_ready && initialized)},
                {"type": "PodScheduled", "status": "True"},
            ],
            "startTime": local.rec.created,
            "containerStatuses": apps.into_iter().map(|a| a.0).collect::<Vec<_>>(),
            "qosClass": crate::cgroup::qos_class(&spec)
                .map_or(crate::cgroup::QosClass::BestEffort, |q| q)
                .as_str(),
        });
        if !inits.is_empty() {
            st["initContainerStatuses"] = json!(inits.into_iter().map(|a| a.0).collect::<Vec<_>>());
        }
        if let Some(ip) = ips.first() {
            st["podIP"] = ip["ip"].clone();
            st["podIPs"] = json!(ips);
        }
        if let Some(h) = self.ctx.cfg.node_ip {
            st["hostIP"] = json!(h.to_string());
            st["hostIPs"] = json!([{"ip": h.to_string()}]);
        }
        st
    }

    /// Deletion in order: SIGTERM, the grace period, SIGKILL, then CNI DEL and the namespace,
    /// then the API object is deleted for good.
    async fn terminate(&mut self, pod: &Pod) -> Result<(), Error> {
        let grace = Duration::from_secs(
            pod.metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        );
        if let Some(local) = self.local.as_mut() {
            let sb = Self::sandbox(local);
            let names: Vec<String> = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .map(|c| c.name.clone())
                .collect();
            if local.terminating_since.is_none() {
                // preStop hooks first (exec in the pod's namespace, bounded by the grace
                // period), then SIGTERM.
                let netns = local.rec.netns.clone();
                let ip = local.rec.ips.first().copied();
                let started = Instant::now();
                for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                    let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
                    else {
                        continue;
                    };
                    let left = grace
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_secs(1));
                    let as_probe = k8s_openapi::api::core::v1::Probe {
                        exec: handler.exec.clone(),
                        http_get: handler.http_get.clone(),
                        tcp_socket: handler.tcp_socket.clone(),
                        timeout_seconds: Some(left.as_secs().min(i32::MAX as u64) as i32),
                        ..Default::default()
                    };
                    if let Err(e) = probe::run(&as_probe, c, ip, netns.clone()).await {
                        tracing::warn!(pod = %name_of(pod), container = %c.name, error = %e, "preStop hook");
                    }
                }
            }
            let Some(local) = self.local.as_mut() else {
                return Ok(());
            };
            let rt = &self.ctx.rt;
            let being_created = |n: &String| {
                matches!(
                    rt.latest(&sb, n),
                    Some((_, RunState::Running { pid: None, .. }))
                )
            };
            if local.terminating_since.is_none() {
                // Those being created are noted before the signal goes out: one whose process
                // appears in between is signalled twice rather than never.
                local.term_pending = if self.ctx.cfg.late_start_sigterm {
                    names.iter().filter(|n| being_created(n)).cloned().collect()
                } else {
                    Vec::new()
                };
                for n in &names {
                    rt.signal(&sb, n, Signal::SIGTERM);
                }
                local.terminating_since = Some(Instant::now());
            }
            let since = local.terminating_since.unwrap_or_else(Instant::now);
            let wait = self.ctx.cfg.late_start_term_wait;
            // A container still being created when the SIGTERM went out gets it once its
            // process exists (or not at all, if its start failed).
            local.term_pending.retain(|n| {
                let mut dropped = false;
                match rt.latest(&sb, n) {
                    Some((_, RunState::Running { pid: None, .. })) => return true,
                    // Its PID 1 runs but has no TERM handler yet: a SIGTERM now would be lost.
                    // Given `--late-start-term-wait` to set one (a shell's trap), then sent
                    // anyway.
                    Some((
                        _,
                        RunState::Running {
                            pid: Some(pid),
                            started,
                        },
                    )) => {
                        dropped = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .is_ok_and(|s| sigterm_dropped(&s));
                        if dropped && started.elapsed().is_ok_and(|e| e < wait) {
                            return true;
                        }
                    }
                    _ => {}
                }
                tracing::info!(
                    pod = %name_of(pod),
                    container = %n,
                    dropped,
                    "SIGTERM to a container that started during the grace period"
                );
                rt.signal(&sb, n, Signal::SIGTERM);
                false
            });
            // A container still being created (the containerd runtime's starts end in the
            // background) is waited for: its process would otherwise appear after the
            // teardown. Once it runs, the grace period's SIGKILL ends it.
            let creating = self.creating(pod);
            let Some(local) = self.local.as_mut() else {
                return Ok(());
            };
            if creating || runtime::any_alive(&local.dir) {
                if since.elapsed() >= grace && !creating && !local.sigkilled {
                    local.sigkilled = true;
                    runtime::kill_all(&local.dir);
                }
                return Ok(());
            }
            let Some(local) = self.local.take() else {
                return Ok(());
            };
            if !self.ctx.teardown(&local).await {
                self.local = Some(local);
                return Ok(());
            }
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(&pod.metadata.name.clone().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Local {
    fn new(rec: SandboxRecord, dir: PathBuf) -> Local {
        Local {
            rec,
            dir,
            terminating_since: None,
            sigkilled: false,
            term_pending: Vec::new(),
            last_status: None,
            reported: HashMap::new(),
            probes: HashMap::new(),
            token: Token::Unknown,
            token_reported: false,
            cgroup: None,
            create_failures: HashMap::new(),
            pulls: HashMap::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// With its pod cgroup resolved under the kubelet's root `root`.
    fn with_cgroup(mut self, root: Option<&crate::cgroup::Cgroup>) -> Local {
        self.cgroup = root
            .zip(self.rec.cgroup.as_deref())
            .map(|(r, rel)| r.child(rel));
        self
    }
}

/// Kills what is left in a pod cgroup, waits (2 s at most) for the kernel to let the
/// processes go, and removes it.
async fn remove_cgroup(cg: &crate::cgroup::Cgroup) -> Result<(), crate::cgroup::Error> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        cg.kill_all();
        match cg.remove() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Removes a pod's directory with `remove` (`remove_dir_all`). A runtime may still write a
/// run's exit code as the directory goes (the containerd runtime's waiter does, from its own
/// thread), so a failure is retried, 10 times 20 ms apart; the last error if the directory is
/// still there then.
async fn remove_pod_dir(
    dir: &std::path::Path,
    remove: impl Fn(&std::path::Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut last = None;
    for attempt in 0..10 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match remove(dir) {
            Ok(()) => return Ok(()),
            Err(_) if !dir.exists() => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the directory survived its removal")))
}

/// The sooner of a time to come and `d`.
fn sooner(a: Option<Duration>, d: Duration) -> Option<Duration> {
    Some(a.map_or(d, |a| a.min(d)))
}

fn name_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Upstream's variable expansion of container commands, args and env values: `$(NAME)`
/// becomes NAME's value when `vars` defines it and stays as written otherwise; `$$` is a
/// literal `$` (so `$$(NAME)` is never expanded).
pub(crate) fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sigterm_is_dropped_only_for_a_pid_namespace_init_without_a_handler() {
        let status =
            |nspid: &str, cgt: &str| format!("Name:\tsh\nNSpid:\t{nspid}\nSigCgt:\t{cgt}\n");
        // A container's PID 1 before its trap, and after (bit 15, SIGTERM, caught).
        assert!(super::sigterm_dropped(&status(
            "4242\t1",
            "0000000000010000"
        )));
        assert!(!super::sigterm_dropped(&status(
            "4242\t1",
            "0000000000014000"
        )));
        // Not a namespace's init: the default action (terminate) applies.
        assert!(!super::sigterm_dropped(&status("4242", "0000000000000000")));
        assert!(!super::sigterm_dropped(&status(
            "4242\t7",
            "0000000000000000"
        )));
        assert!(!super::sigterm_dropped(""));
    }

    use super::*;

    fn config(root: &std::path::Path) -> Config {
        Config {
            node_name: "n1".into(),
            node_ip: None,
            root_dir: root.to_path_buf(),
            netns_dir: root.join("netns"),
            netns_prefix: "t-".into(),
            cni_conf_dir: root.join("net.d"),
            cni_bin_dirs: Vec::new(),
            cni_cache_dir: root.join("cache"),
            cni_timeout: Duration::from_secs(1),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            max_pods: 110,
            port: 10250,
            sync_period: Duration::from_secs(1),
            max_parallel_syncs: 16,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            shim: "/nonexistent".into(),
            api_endpoint: None,
            cluster_ca: None,
            address: None,
            tls: None,
            client_ca: None,
            log_rotation: Default::default(),
            cgroups: None,
            runtime: Default::default(),
            pod_max_pids: None,
            api_wait: Default::default(),
            late_start_sigterm: true,
            late_start_term_wait: Duration::from_secs(2),
            serving: Default::default(),
        }
    }

    /// A pod worker for `uid` whose API client points where nothing listens: status() never
    /// calls the API, and a pass's status PATCH fails, which the pass survives.
    fn pod_sync(cfg: Config, uid: &str) -> PodSync {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let net = Network::new(&cfg);
        let ctx = Ctx::new(cfg, client, net, Arc::new(Metrics::default()), None);
        PodSync::new(Arc::new(ctx), uid)
    }

    /// The record of pod ns/p's sandbox `s1`, ready, without a namespace or addresses.
    fn sandbox_record(uid: &str) -> SandboxRecord {
        SandboxRecord {
            namespace: "ns".into(),
            name: "p".into(),
            uid: uid.into(),
            sandbox_id: "s1".into(),
            netns: None,
            hostname: "p".into(),
            ips: Vec::new(),
            ready: true,
            created: now_rfc3339(),
            port_mappings: Vec::new(),
            cgroup: None,
        }
    }

    /// The pod directory's removal: a transient failure (a waiter writing an exit file as the
    /// directory goes) is retried; a directory that survives every attempt is an error, so the
    /// teardown keeps the pod for the next pass instead of calling it gone.
    #[tokio::test]
    async fn a_pod_directory_that_survives_its_removal_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("pod");
        std::fs::create_dir_all(dir.join("containers/c/0")).unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let busy = |_: &std::path::Path| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::Error::from(std::io::ErrorKind::DirectoryNotEmpty))
        };
        let e = remove_pod_dir(&dir, busy).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::DirectoryNotEmpty);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 10);
        assert!(dir.exists());
        // Failing twice (an exit file written meanwhile), then going: success.
        let calls = std::sync::atomic::AtomicU32::new(0);
        let flaky = |p: &std::path::Path| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                Err(std::io::Error::from(std::io::ErrorKind::DirectoryNotEmpty))
            } else {
                std::fs::remove_dir_all(p)
            }
        };
        remove_pod_dir(&dir, flaky).await.unwrap();
        assert!(!dir.exists());
        // Already gone (removed by someone else): success.
        remove_pod_dir(&dir, |p: &std::path::Path| std::fs::remove_dir_all(p))
            .await
            .unwrap();
    }

    /// A start whose CNI ADD and DEL both fail (here: no network configuration at all) keeps
    /// its namespace; the next start of that pod must fail with the ADD's error again, not with
    /// "create netns: File exists". Needs root (network namespaces), as CI runs it.
    #[tokio::test]
    async fn a_retried_start_after_add_and_del_failed_reports_the_add_error() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = config(d.path());
        cfg.netns_prefix = format!("tk{}-", std::process::id() % 100_000);
        /// Removes what the failed starts kept, also when the test fails: the namespaces, and
        /// the shared bind mount of their directory that making them set up.
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let _ = trellis_net::Netns::delete(&self.0, &name);
                }
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _cleanup = Cleanup(cfg.netns_dir.clone());
        let pods = pod_sync(cfg, "0a1b2c3d-0000-0000-0000-000000000001");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "0a1b2c3d-0000-0000-0000-000000000001"},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["/nonexistent"]}]}}))
        .unwrap();
        let first = pods
            .make_sandbox(&pod)
            .await
            .err()
            .expect("no network: ADD fails");
        let second = pods
            .make_sandbox(&pod)
            .await
            .err()
            .expect("still no network");
        assert!(!first.to_string().contains("create netns"), "{first}");
        assert_eq!(second.to_string(), first.to_string());
    }

    /// Issue 14: a pod gone from the API whose teardown fails (here CNI DEL: the node has no
    /// network configuration) keeps its sandbox and asks for another try after a back-off that
    /// doubles; once the teardown can succeed, the next try removes the pod directory and
    /// nothing is left to retry. Before, the record was dropped and the leftovers leaked.
    #[tokio::test]
    async fn a_failed_teardown_of_a_gone_pod_is_kept_and_retried_with_back_off() {
        let d = tempfile::tempdir().unwrap();
        let uid = "0a1b2c3d-0000-0000-0000-000000000009";
        let mut pods = pod_sync(config(d.path()), uid);
        let dir = d.path().join("pods").join(uid);
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        let mut rec = sandbox_record(uid);
        rec.netns = Some(d.path().join("netns").join("t-gone"));
        pods.local = Some(Local::new(rec, dir.clone()));
        let first = pods.remove().await.expect("DEL fails: retried");
        assert_eq!(first, TEARDOWN_RETRY_FIRST);
        assert!(pods.has_sandbox(), "the sandbox is kept for the retry");
        assert!(dir.exists(), "nothing removed after a failed DEL");
        let second = pods.remove().await.expect("DEL fails again");
        assert_eq!(second, TEARDOWN_RETRY_FIRST * 2, "the back-off doubles");
        // The network is back (modelled as nothing left to DEL): the retry succeeds.
        if let Some(l) = pods.local.as_mut() {
            l.rec.netns = None;
        }
        assert_eq!(pods.remove().await, None);
        assert!(!pods.has_sandbox());
        assert!(!dir.exists(), "the pod directory is gone");
        assert_eq!(pods.teardown_failures, 0);
        // Nothing left: nothing to retry.
        assert_eq!(pods.remove().await, None);
        // The back-off is bounded.
        assert_eq!(
            backoff(TEARDOWN_RETRY_FIRST, TEARDOWN_RETRY_MAX, 30),
            TEARDOWN_RETRY_MAX
        );
    }

    /// A pod gone from the API while one of its containerd starts is under way (run recorded,
    /// no process, no end): its teardown waits for the start, which would otherwise leave a
    /// process nobody owns; once the start ends, the pod goes.
    #[tokio::test]
    async fn a_gone_pod_waits_for_a_containerd_start_under_way() {
        let d = tempfile::tempdir().unwrap();
        let uid = "0a1b2c3d-0000-0000-0000-00000000000a";
        let mut pods = pod_sync(config(d.path()), uid);
        let dir = d.path().join("pods").join(uid);
        let run = dir.join("containers").join("c").join("0");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join(crate::containerd::runtime::RUN_FILE), "{}").unwrap();
        pods.local = Some(Local::new(sandbox_record(uid), dir.clone()));
        assert_eq!(pods.remove().await, Some(STARTING_RECHECK));
        assert!(
            dir.exists() && pods.has_sandbox(),
            "kept while the start runs"
        );
        assert_eq!(pods.teardown_failures, 0, "waiting is not a failure");
        // The start ended (here: failed, as a start that timed out does).
        std::fs::write(run.join(crate::shim::EXIT_FILE), "128").unwrap();
        assert_eq!(pods.remove().await, None);
        assert!(!dir.exists(), "the pod directory is gone");
    }

    /// Issue 14's flap: right after the kubelet started a container's shim, the run had no
    /// process yet, was read as running, and a container without a readiness probe was
    /// reported Ready — then the start failed. A run is running only once its process exists.
    #[tokio::test]
    async fn a_container_is_ready_only_once_its_process_started() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let mut pods = pod_sync(cfg, "u1");
        let dir = d.path().join("pods").join("u1");
        let rec = sandbox_record("u1");
        pods.local = Some(Local::new(rec, dir.clone()));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["/nonexistent"]}]}}))
        .unwrap();
        let ready = |st: &Value| {
            let cond = st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"]
                .clone();
            (
                st["phase"].as_str().unwrap().to_string(),
                cond.as_str().unwrap().to_string(),
                st["containerStatuses"][0]["ready"].as_bool().unwrap(),
                st["containerStatuses"][0]["started"].as_bool().unwrap(),
            )
        };
        // The shim runs (this test's own pid stands for a live shim) but has not started the
        // container's process yet.
        let run = dir.join("containers").join("c").join("0");
        std::fs::create_dir_all(&run).unwrap();
        let me = std::process::id().to_string();
        crate::shim::write_atomic(&run, crate::shim::SHIM_PID_FILE, &me).unwrap();
        let st = pods.status(&pod);
        assert_eq!(
            ready(&st),
            ("Pending".into(), "False".into(), false, false),
            "{st:#}"
        );
        assert_eq!(
            st["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        // The start fails: never ready on the way.
        crate::shim::write_atomic(&run, crate::shim::START_ERROR_FILE, "no such file").unwrap();
        crate::shim::write_atomic(&run, crate::shim::EXIT_FILE, "128").unwrap();
        let st = pods.status(&pod);
        assert_eq!(ready(&st).1, "False");
        assert_eq!(st["containerStatuses"][0]["ready"], false);
        // Another run whose process did start is running, started and ready.
        let run = dir.join("containers").join("c").join("1");
        std::fs::create_dir_all(&run).unwrap();
        crate::shim::write_atomic(&run, crate::shim::SHIM_PID_FILE, &me).unwrap();
        crate::shim::write_atomic(&run, crate::shim::PID_FILE, &me).unwrap();
        let st = pods.status(&pod);
        assert_eq!(
            ready(&st),
            ("Running".into(), "True".into(), true, true),
            "{st:#}"
        );
    }

    /// Issue 14: a pass does not wait for a container's shim to start its process; it asks
    /// for the next pass soon instead (10 ms, doubling), and for the sync period once the
    /// process runs and nothing else is due.
    #[tokio::test]
    async fn a_container_being_created_brings_the_next_pass_soon() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        // No API server answers (see pod_sync): the status PATCH fails, which the pass survives.
        let mut pods = pod_sync(cfg, "u1");
        let dir = d.path().join("pods").join("u1");
        let rec = sandbox_record("u1");
        pods.local = Some(Local::new(rec, dir.clone()));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": "x", "command": ["/nonexistent"]}]}}))
        .unwrap();
        // The shim runs (this test's own pid stands for it); the process has not started.
        let run = dir.join("containers").join("c").join("0");
        std::fs::create_dir_all(&run).unwrap();
        let me = std::process::id().to_string();
        crate::shim::write_atomic(&run, crate::shim::SHIM_PID_FILE, &me).unwrap();
        let first = pods.sync(&pod).await;
        let second = pods.sync(&pod).await;
        assert_eq!(
            (first, second),
            (Duration::from_millis(10), Duration::from_millis(20))
        );
        // The process runs: the next pass after the period (no probe to run).
        crate::shim::write_atomic(&run, crate::shim::PID_FILE, &me).unwrap();
        assert_eq!(pods.sync(&pod).await, Duration::from_secs(1));
    }

    /// A container whose image could not be had has no run: it waits with ErrImagePull right
    /// after the try, then ImagePullBackOff, and the pod stays Pending.
    #[tokio::test]
    async fn a_missing_image_is_err_image_pull_then_image_pull_backoff() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let mut pods = pod_sync(cfg, "u1");
        let rec = sandbox_record("u1");
        let mut local = Local::new(rec, d.path().join("pods").join("u1"));
        let now = Instant::now();
        local.pulls.insert(
            "c".into(),
            PullFailure {
                failures: 1,
                at: now,
                next: now + Duration::from_secs(10),
                image: "x:1".into(),
                message: "not present".into(),
            },
        );
        pods.local = Some(local);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]}}))
        .unwrap();
        let st = pods.status(&pod);
        assert_eq!(st["phase"], "Pending");
        let w = &st["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(w["reason"], "ErrImagePull", "{st:#}");
        assert_eq!(w["message"], "not present");
        assert_eq!(st["containerStatuses"][0]["restartCount"], 0);
        // Two sync periods later, still waiting for the retry: the back-off.
        if let Some(p) = pods.local.as_mut().and_then(|l| l.pulls.get_mut("c")) {
            p.at = now - Duration::from_secs(3);
        }
        let st = pods.status(&pod);
        let w = &st["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(w["reason"], "ImagePullBackOff", "{st:#}");
        assert_eq!(w["message"], "Back-off pulling image \"x:1\"");
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (1..=7).map(|n| backoff(b, m, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(b, m, 100).as_secs(), 300);
    }

    #[test]
    fn variables_expand_in_commands_as_upstream() {
        let vars = vec![
            ("NODE_NAME".to_string(), "n1".to_string()),
            ("ROOT".to_string(), "/x/n1".to_string()),
        ];
        assert_eq!(expand("--node=$(NODE_NAME)", &vars), "--node=n1");
        assert_eq!(expand("$(ROOT)/etc/$(NODE_NAME)", &vars), "/x/n1/etc/n1");
        assert_eq!(expand("$(UNSET) stays", &vars), "$(UNSET) stays");
        assert_eq!(
            expand("$$(NODE_NAME) escaped", &vars),
            "$(NODE_NAME) escaped"
        );
        assert_eq!(expand("cost $5 and $(", &vars), "cost $5 and $(");
        assert_eq!(expand("", &vars), "");
    }
}

/// A container's `imagePullPolicy`, with upstream's default: `Always` for `:latest` or no tag
/// (a digest is not a tag), `IfNotPresent` otherwise.
pub fn pull_policy<'a>(image: &str, policy: Option<&'a str>) -> &'a str {
    match policy {
        Some(p @ ("Always" | "IfNotPresent" | "Never")) => p,
        _ => {
            let last = image.rsplit('/').next().unwrap_or(image);
            if last.contains('@') {
                "IfNotPresent"
            } else {
                match last.rsplit_once(':') {
                    Some((_, "latest")) | None => "Always",
                    Some(_) => "IfNotPresent",
                }
            }
        }
    }
}

#[cfg(test)]
mod pull_policy_tests {
    use super::pull_policy;

    #[test]
    fn the_default_pull_policy_follows_the_tag() {
        assert_eq!(pull_policy("busybox", None), "Always");
        assert_eq!(pull_policy("busybox:latest", None), "Always");
        assert_eq!(pull_policy("busybox:1.36", None), "IfNotPresent");
        assert_eq!(pull_policy("127.0.0.1:5000/busybox", None), "Always");
        assert_eq!(
            pull_policy("127.0.0.1:5000/busybox:1", None),
            "IfNotPresent"
        );
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(pull_policy(&d, None), "IfNotPresent");
        assert_eq!(pull_policy("busybox", Some("Never")), "Never");
        assert_eq!(pull_policy("busybox:1", Some("Always")), "Always");
    }
}
