//! Pod and container cgroups for the process runtime, laid out as upstream's cgroupfs driver
//! lays out `kubepods` (k/k `pkg/kubelet/cm/`): under the kubelet's root (`--cgroup-root`),
//! Guaranteed pods at `pod<uid>`, the others at `burstable/pod<uid>` and
//! `besteffort/pod<uid>`, and each container at `<pod cgroup>/<container name>`.
//!
//! Limits follow upstream's formulas (`helpers_linux.go`): CPU shares from requests
//! (`max(2, m·1024/1000)`), a CFS quota from limits (`m·100000/1000` µs, at least 1000, period
//! 100 ms) and the memory limit (swap never above it). cgroup v1 writes `cpu.shares`,
//! `cpu.cfs_quota_us`, `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`); v2 writes
//! `cpu.weight` (runc's conversion from shares), `cpu.max`, `memory.max` and `memory.swap.max`.
//! Usage comes back from the same files (`cpuacct.usage` / `cpu.stat`, the working set as
//! cAdvisor computes it), and OOM kills from `memory.oom_control` / `memory.events`.
//!
//! A relative root is taken under the kubelet's own cgroup in each hierarchy, so a kubelet in a
//! container (or a test) keeps its pods within its own limits; an absolute one from each
//! hierarchy's root.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use trellis_api::quantity::ParsedQuantity;

/// The CFS period every quota is written against (µs).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota upstream writes (µs).
pub const MIN_QUOTA_US: u64 = 1000;
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;

/// Why a cgroup could not be found, made, limited or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable cgroup hierarchy: {0}")]
    NotFound(String),
    /// The kernel's answer to one file operation, with the file.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Resources the pod asks for that no cgroup can have.
    #[error("{0}")]
    Invalid(String),
}

fn io(op: impl Into<String>, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op: op.into(),
        path: path.to_path_buf(),
        source,
    }
}

/// A cgroup: its directory in each hierarchy the kubelet uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1: one directory per controller (the same one when controllers are co-mounted).
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    /// cgroup v2: the unified hierarchy mounted at `mount`, this cgroup at `dir` below it.
    V2 { mount: PathBuf, dir: PathBuf },
}

/// A pod's QoS class (web `/docs/concepts/workloads/pods/pod-qos/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name the API shows in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The pod cgroup's path below the kubelet's root (upstream's cgroupfs names).
    pub fn pod_path(self, uid: &str) -> String {
        match self {
            QosClass::Guaranteed => format!("pod{uid}"),
            QosClass::Burstable => format!("burstable/pod{uid}"),
            QosClass::BestEffort => format!("besteffort/pod{uid}"),
        }
    }
}

/// What a cgroup is limited to. `None` leaves the kernel's default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    /// The CFS quota per [`CPU_PERIOD_US`], in µs.
    pub cpu_quota_us: Option<u64>,
    pub memory_limit: Option<u64>,
    /// `pids.max`: the most processes and threads (`--pod-max-pids`).
    pub pids_limit: Option<u64>,
    /// The container process's `oom_score_adj` (as CRI's `LinuxContainerResources` carries
    /// it); not a cgroup file.
    pub oom_score_adj: Option<i32>,
}

/// Upstream's `GetContainerOOMScoreAdjust` (k/k `pkg/kubelet/qos/policy.go`): Guaranteed
/// −997, BestEffort 1000, Burstable `1000 − 1000·memory request / node memory` within
/// [3, 999], so the OOM killer takes BestEffort first and Guaranteed last.
pub fn oom_score_adj(spec: &PodSpec, c: &Container, node_memory: u64) -> Result<i32, Error> {
    Ok(match qos_class(spec)? {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let request = u128::from(asks(c)?.memory_request.unwrap_or(0));
            let capacity = u128::from(node_memory.max(1));
            let adj = 1000i128 - (1000 * request / capacity) as i128;
            adj.clamp(3, 999) as i32
        }
    })
}

/// Upstream's `MilliCPUToShares`.
pub fn shares(milli: u64) -> u64 {
    (milli.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream's `MilliCPUToQuota` for the 100 ms period.
pub fn quota(milli: u64) -> u64 {
    (milli.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US)
}

/// runc's conversion of v1 shares to a v2 `cpu.weight` (opencontainers/cgroups PR #20).
pub fn weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// A container's CPU (millicores) and memory (bytes) requests and limits; a request the spec
/// leaves out defaults to the limit, as the API server's defaulting does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Asks {
    cpu_request: Option<u64>,
    cpu_limit: Option<u64>,
    memory_request: Option<u64>,
    memory_limit: Option<u64>,
}

fn asks(c: &Container) -> Result<Asks, Error> {
    let r = c.resources.as_ref();
    let get = |map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               key: &str,
               milli: bool|
     -> Result<Option<u64>, Error> {
        let Some(q) = map.and_then(|m| m.get(key)) else {
            return Ok(None);
        };
        let p = ParsedQuantity::parse(&q.0)
            .map_err(|e| Error::Invalid(format!("container {:?}: {key}: {e}", c.name)))?;
        if p.is_negative() {
            return Err(Error::Invalid(format!(
                "container {:?}: {key}: Invalid value: {:?}: must be greater than or equal to 0",
                c.name, q.0
            )));
        }
        let v = if milli {
            p.milli().ceil()
        } else {
            p.value().ceil()
        };
        // Zero asks for nothing, as upstream reads it.
        Ok((v >= 1.0).then_some(if v >= u64::MAX as f64 {
            u64::MAX
        } else {
            v as u64
        }))
    };
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    let cpu_limit = get(limits, "cpu", true)?;
    let memory_limit = get(limits, "memory", false)?;
    let a = Asks {
        cpu_request: get(requests, "cpu", true)?.or(cpu_limit),
        cpu_limit,
        memory_request: get(requests, "memory", false)?.or(memory_limit),
        memory_limit,
    };
    for (what, req, lim, q) in [
        ("cpu", a.cpu_request, a.cpu_limit, "cpu"),
        ("memory", a.memory_request, a.memory_limit, "memory"),
    ] {
        if let (Some(req), Some(lim)) = (req, lim)
            && req > lim
        {
            let shown = |k: &str,
                         m: Option<
                &std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
            >| {
                m.and_then(|m| m.get(k))
                    .map(|q| q.0.clone())
                    .unwrap_or_default()
            };
            return Err(Error::Invalid(format!(
                "container {:?}: resources.requests: Invalid value: {:?}: must be less than or equal to {what} limit of {}",
                c.name,
                shown(q, requests),
                shown(q, limits)
            )));
        }
    }
    Ok(a)
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// The pod's QoS class; an error when a container's resources cannot be read.
pub fn qos_class(spec: &PodSpec) -> Result<QosClass, Error> {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(spec) {
        let a = asks(c)?;
        any |= a.cpu_request.is_some()
            || a.cpu_limit.is_some()
            || a.memory_request.is_some()
            || a.memory_limit.is_some();
        guaranteed &= a.cpu_limit.is_some()
            && a.memory_limit.is_some()
            && a.cpu_request == a.cpu_limit
            && a.memory_request == a.memory_limit;
    }
    Ok(if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    })
}

/// A container's cgroup limits; an error for resources no cgroup can have (a request above
/// its limit, a quantity that is not one).
pub fn container_resources(c: &Container) -> Result<Resources, Error> {
    let a = asks(c)?;
    Ok(Resources {
        cpu_shares: Some(shares(a.cpu_request.unwrap_or(0))),
        cpu_quota_us: a.cpu_limit.map(quota),
        memory_limit: a.memory_limit,
        pids_limit: None,
        oom_score_adj: None,
    })
}

/// The pod cgroup's limits (upstream's `ResourceConfigForPod`): the apps' sum or the largest
/// init container, whichever is more; Guaranteed gets shares, quota and memory; Burstable gets
/// shares, and quota or memory only when every container has that limit; BestEffort gets the
/// minimum shares.
pub fn pod_resources(spec: &PodSpec) -> Result<Resources, Error> {
    let qos = qos_class(spec)?;
    if qos == QosClass::BestEffort {
        return Ok(Resources {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        });
    }
    let sum = |f: fn(&Asks) -> Option<u64>| -> Result<(u64, bool), Error> {
        let (mut apps, mut all) = (0u64, true);
        for c in &spec.containers {
            let v = f(&asks(c)?);
            all &= v.is_some();
            apps = apps.saturating_add(v.unwrap_or(0));
        }
        let mut init = 0u64;
        for c in spec.init_containers.iter().flatten() {
            let v = f(&asks(c)?);
            all &= v.is_some();
            init = init.max(v.unwrap_or(0));
        }
        Ok((apps.max(init), all))
    };
    let (cpu_req, _) = sum(|a| a.cpu_request)?;
    let (cpu_lim, all_cpu) = sum(|a| a.cpu_limit)?;
    let (mem_lim, all_mem) = sum(|a| a.memory_limit)?;
    Ok(Resources {
        cpu_shares: Some(shares(cpu_req)),
        cpu_quota_us: all_cpu.then(|| quota(cpu_lim)),
        memory_limit: all_mem.then_some(mem_lim),
        pids_limit: None,
        oom_score_adj: None,
    })
}

/// The burstable tier's CPU shares (upstream's `setCPUCgroupConfig`): from the CPU requests
/// of all Burstable pods (each pod's: its apps' sum or its largest init container); the
/// besteffort tier always has [`MIN_SHARES`]. Pods whose resources cannot be read count nothing.
pub fn burstable_tier_shares<'a>(specs: impl IntoIterator<Item = &'a PodSpec>) -> u64 {
    let mut total = 0u64;
    for spec in specs {
        if !matches!(qos_class(spec), Ok(QosClass::Burstable)) {
            continue;
        }
        let req = |c: &Container| asks(c).ok().and_then(|a| a.cpu_request).unwrap_or(0);
        let apps: u64 = spec.containers.iter().map(req).fold(0, u64::saturating_add);
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(req)
            .max()
            .unwrap_or(0);
        total = total.saturating_add(apps.max(init));
    }
    shares(total)
}

/// CPU time and memory of a cgroup (and everything below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    /// Usage minus inactive file pages (cAdvisor's working set).
    pub working_set: u64,
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`, `memory.events`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), Error> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| io(format!("write {value} to"), &p, e))
}

/// Where a hierarchy is mounted, from one `/proc/self/mountinfo` line: (fstype, mount root,
/// mount point, super options).
fn mount_fields(line: &str) -> Option<(&str, &str, &str, &str)> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split_whitespace().collect();
    let mut post = post.split_whitespace();
    let fstype = post.next()?;
    let _source = post.next()?;
    let opts = post.next().unwrap_or("");
    Some((fstype, pre.get(3)?, pre.get(4)?, opts))
}

impl Cgroup {
    /// The kubelet's root cgroup on this host: `root` absolute from each hierarchy's root,
    /// or relative to this process's own cgroup.
    pub fn resolve(root: &str) -> Result<Cgroup, Error> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| io("read", Path::new("/proc/self/mountinfo"), e))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| io("read", Path::new("/proc/self/cgroup"), e))?;
        Self::resolve_from(&mountinfo, &own, root)
    }

    /// [`Cgroup::resolve`] from the two files' text.
    pub fn resolve_from(mountinfo: &str, own: &str, root: &str) -> Result<Cgroup, Error> {
        let root = root.trim();
        if root.is_empty() || root.split('/').any(|c| c == "..") {
            return Err(Error::Invalid(format!(
                "cgroup root {root:?}: a path without \"..\" components"
            )));
        }
        // This process's path in a hierarchy, by its v1 controller list or "" for v2.
        let own_path = |controllers: &str| -> Option<String> {
            own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                let set: Vec<&str> = ctl.split(',').collect();
                let wanted: Vec<&str> = controllers.split(',').collect();
                (if controllers.is_empty() {
                    ctl.is_empty()
                } else {
                    wanted.iter().all(|w| set.contains(w))
                })
                .then(|| path.to_string())
            })
        };
        let place = |mount: &str, mount_root: &str, controllers: &str| -> PathBuf {
            let mount = PathBuf::from(mount);
            if let Some(abs) = root.strip_prefix('/') {
                return mount.join(abs);
            }
            let mine = own_path(controllers).unwrap_or_else(|| "/".into());
            // A bind mount of a subtree shows paths below its own root.
            let mine = mine
                .strip_prefix(mount_root)
                .filter(|_| mount_root != "/")
                .map(str::to_string)
                .unwrap_or(mine);
            mount.join(mine.trim_start_matches('/')).join(root)
        };
        let mut v1: Vec<(Vec<String>, PathBuf, String)> = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((fstype, mroot, point, opts)) = mount_fields(line) else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    let ctls: Vec<String> = opts
                        .split(',')
                        .filter(|o| ["cpu", "cpuacct", "memory", "pids"].contains(o))
                        .map(String::from)
                        .collect();
                    if !ctls.is_empty() {
                        v1.push((ctls, PathBuf::from(point), mroot.to_string()));
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some((point.to_string(), mroot.to_string())),
                _ => {}
            }
        }
        let find = |c: &str| {
            v1.iter()
                .find(|(ctls, _, _)| ctls.iter().any(|x| x == c))
                .map(|(ctls, p, r)| place(&p.to_string_lossy(), r, &ctls.join(",")))
        };
        if let (Some(cpu), Some(cpuacct), Some(memory)) =
            (find("cpu"), find("cpuacct"), find("memory"))
        {
            return Ok(Cgroup::V1 {
                cpu,
                cpuacct,
                memory,
                pids: find("pids"),
            });
        }
        if let Some((point, mroot)) = v2 {
            let dir = place(&point, &mroot, "");
            return Ok(Cgroup::V2 {
                mount: PathBuf::from(point),
                dir,
            });
        }
        Err(Error::NotFound(
            "neither cgroup v1 cpu, cpuacct and memory nor a cgroup v2 mount".into(),
        ))
    }

    /// The cgroup `rel` (a relative path) below this one.
    pub fn child(&self, rel: &str) -> Cgroup {
        let rel = rel.trim_start_matches('/');
        match self {
            Cgroup::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            } => Cgroup::V1 {
                cpu: cpu.join(rel),
                cpuacct: cpuacct.join(rel),
                memory: memory.join(rel),
                pids: pids.as_ref().map(|p| p.join(rel)),
            },
            Cgroup::V2 { mount, dir } => Cgroup::V2 {
                mount: mount.clone(),
                dir: dir.join(rel),
            },
        }
    }

    /// Its directories, each once (co-mounted controllers share one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let all: Vec<&PathBuf> = match self {
            Cgroup::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            } => [Some(cpu), Some(cpuacct), Some(memory), pids.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            Cgroup::V2 { dir, .. } => vec![dir],
        };
        for d in all {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// Whether it exists (in its first hierarchy).
    pub fn exists(&self) -> bool {
        self.dirs().first().is_some_and(|d| d.is_dir())
    }

    /// Makes it (and its parents) in every hierarchy; on v2, every ancestor from the mount down
    /// hands the cpu, memory and pids controllers to its children.
    pub fn create(&self) -> Result<(), Error> {
        if let Cgroup::V2 { mount, dir } = self {
            let rel = dir.strip_prefix(mount).unwrap_or(dir);
            let mut at = mount.clone();
            for comp in rel.components() {
                let sub = at.join(comp);
                if !sub.is_dir() {
                    std::fs::create_dir(&sub).map_err(|e| io("create", &sub, e))?;
                }
                let ctl = at.join("cgroup.subtree_control");
                let have = std::fs::read_to_string(&ctl).unwrap_or_default();
                let missing: Vec<String> = ["cpu", "memory", "pids"]
                    .iter()
                    .filter(|c| !have.split_whitespace().any(|h| h == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !missing.is_empty() {
                    write(&at, "cgroup.subtree_control", &missing.join(" "))?;
                }
                at = sub;
            }
            return Ok(());
        }
        for d in self.dirs() {
            std::fs::create_dir_all(&d).map_err(|e| io("create", &d, e))?;
        }
        Ok(())
    }

    /// Writes its limits (each that is set; an unset one is left as it is).
    pub fn apply(&self, r: &Resources) -> Result<(), Error> {
        match self {
            Cgroup::V1 {
                cpu, memory, pids, ..
            } => {
                if let Some(n) = r.pids_limit {
                    let Some(pids) = pids else {
                        return Err(Error::Invalid(
                            "a pids limit needs the pids controller, which is not mounted".into(),
                        ));
                    };
                    write(pids, "pids.max", &n.to_string())?;
                }
                if let Some(s) = r.cpu_shares {
                    write(cpu, "cpu.shares", &s.to_string())?;
                }
                if let Some(q) = r.cpu_quota_us {
                    write(cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(cpu, "cpu.cfs_quota_us", &q.to_string())?;
                }
                if let Some(m) = r.memory_limit {
                    // The memory limit first: memory+swap may never be below it.
                    write(memory, "memory.limit_in_bytes", &m.to_string())?;
                    if memory.join("memory.memsw.limit_in_bytes").exists() {
                        write(memory, "memory.memsw.limit_in_bytes", &m.to_string())?;
                    }
                }
            }
            Cgroup::V2 { dir, .. } => {
                if let Some(n) = r.pids_limit {
                    write(dir, "pids.max", &n.to_string())?;
                }
                if let Some(s) = r.cpu_shares {
                    write(dir, "cpu.weight", &weight(s).to_string())?;
                }
                if let Some(q) = r.cpu_quota_us {
                    write(dir, "cpu.max", &format!("{q} {CPU_PERIOD_US}"))?;
                }
                if let Some(m) = r.memory_limit {
                    write(dir, "memory.max", &m.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(dir, "memory.swap.max", "0")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The files a process writes `0` to, to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// CPU time and working set, None when the files cannot be read (no such cgroup).
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Cgroup::V1 {
                cpuacct, memory, ..
            } => {
                let cpu_ns = read_u64(&cpuacct.join("cpuacct.usage"))?;
                let used = read_u64(&memory.join("memory.usage_in_bytes"))?;
                let stat = std::fs::read_to_string(memory.join("memory.stat")).unwrap_or_default();
                let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0);
                Some(Usage {
                    cpu_ns,
                    working_set: used.saturating_sub(inactive),
                })
            }
            Cgroup::V2 { dir, .. } => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let cpu_ns = keyed(&stat, "usage_usec")?.saturating_mul(1000);
                let used = read_u64(&dir.join("memory.current"))?;
                let mstat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let inactive = keyed(&mstat, "inactive_file").unwrap_or(0);
                Some(Usage {
                    cpu_ns,
                    working_set: used.saturating_sub(inactive),
                })
            }
        }
    }

    /// How many processes the kernel's OOM killer killed in it so far.
    pub fn oom_kills(&self) -> Option<u64> {
        oom_kills(&self.dirs())
    }

    /// The processes in it and below it.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let Some(first) = self.dirs().into_iter().next() else {
            return out;
        };
        let mut todo = vec![first];
        let mut steps = 0;
        while let Some(d) = todo.pop() {
            steps += 1;
            if steps > 10_000 {
                break;
            }
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        out
    }

    /// SIGKILLs every process in it and below it.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Removes it and everything below it, deepest first, in every hierarchy (missing
    /// directories are fine). Fails with the kernel's EBUSY while a process is still in it.
    /// On v1 the directories runc made for its containers in the other hierarchies go too.
    pub fn remove(&self) -> Result<(), Error> {
        for d in self.dirs() {
            remove_tree(&d, 0)?;
        }
        if matches!(self, Cgroup::V1 { .. }) {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for d in self.runc_dirs(&mountinfo) {
                remove_tree(&d, 0)?;
            }
        }
        Ok(())
    }

    /// The pod cgroups below this root: (path relative to it, pod UID).
    pub fn pod_cgroups(&self) -> Vec<(String, String)> {
        let Some(first) = self.dirs().into_iter().next() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for tier in ["", "burstable/", "besteffort/"] {
            for e in std::fs::read_dir(first.join(tier))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(uid) = name.strip_prefix("pod")
                    && e.file_type().is_ok_and(|t| t.is_dir())
                {
                    out.push((format!("{tier}{name}"), uid.to_string()));
                }
            }
        }
        out
    }
}

/// The cgroup hierarchies mounted on this host, from `/proc/self/mountinfo` text: their mount
/// points, v1's named ones (`name=systemd`) and a hybrid host's v2 one (`unified`) included —
/// on a v1 host runc makes a container's cgroup in each.
fn mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(mount_fields)
        .filter(|(fstype, ..)| *fstype == "cgroup" || *fstype == "cgroup2")
        .map(|(_, _, point, _)| PathBuf::from(point))
        .collect()
}

/// `dir`'s path below the mount point of the hierarchy it is in (the longest of `mounts` it
/// is under), as runc's cgroupfs driver reads `linux.cgroupsPath`: absolute, from the mount
/// point, whatever the mount's own root is.
fn below_mount(dir: &Path, mounts: &[PathBuf]) -> Option<String> {
    let point = mounts
        .iter()
        .filter(|m| dir.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())?;
    let rel = dir.strip_prefix(point).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

impl Resources {
    /// The OCI runtime spec's `linux.resources` for these limits, the values [`Cgroup::apply`]
    /// writes: runc's cgroupfs driver writes them into the container's cgroup. `swap`: the
    /// host accounts swap (memory+swap is then held at the memory limit, as `apply` does); `v2`:
    /// the unified hierarchy, where `cpu.weight` is given as [`weight`] computes it (runc 1.1's
    /// own conversion of shares is the older linear one).
    pub fn oci(&self, swap: bool, v2: bool) -> serde_json::Value {
        let mut r = serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]});
        let mut cpu = serde_json::Map::new();
        if let Some(s) = self.cpu_shares {
            cpu.insert("shares".into(), s.into());
            if v2 {
                r["unified"] = serde_json::json!({"cpu.weight": weight(s).to_string()});
            }
        }
        if let Some(q) = self.cpu_quota_us {
            cpu.insert("quota".into(), q.into());
            cpu.insert("period".into(), CPU_PERIOD_US.into());
        }
        if !cpu.is_empty() {
            r["cpu"] = cpu.into();
        }
        if let Some(n) = self.pids_limit {
            r["pids"] = serde_json::json!({"limit": n});
        }
        if let Some(m) = self.memory_limit {
            r["memory"] = if swap {
                serde_json::json!({"limit": m, "swap": m})
            } else {
                serde_json::json!({"limit": m})
            };
        }
        r
    }
}

impl Cgroup {
    /// Whether a pids limit can be set: v2, or v1 with the pids controller mounted.
    pub fn limits_pids(&self) -> bool {
        match self {
            Cgroup::V1 { pids, .. } => pids.is_some(),
            Cgroup::V2 { .. } => true,
        }
    }

    /// Whether the host accounts swap in this cgroup's memory controller (v1:
    /// `memory.memsw.*` exists; v2 always has `memory.swap.max` where swap is on, and runc
    /// lets a 0 go where it is not).
    pub fn accounts_swap(&self) -> bool {
        match self {
            Cgroup::V1 { memory, .. } => memory.join("memory.memsw.limit_in_bytes").exists(),
            Cgroup::V2 { .. } => true,
        }
    }

    /// `linux.cgroupsPath` for a container whose cgroup this is, for runc's cgroupfs driver:
    /// the path below each hierarchy's mount point. On v1 one path names a cgroup in every
    /// hierarchy; where this cgroup's differ (a relative root under a kubelet whose own
    /// cgroups differ per controller), it is the CPU hierarchy's, and the container's process
    /// is to be moved into the others ([`Cgroup::procs_files`]) before it runs.
    pub fn oci_path(&self) -> Result<String, Error> {
        match self {
            Cgroup::V2 { mount, dir } => {
                let rel = dir.strip_prefix(mount).map_err(|_| {
                    Error::Invalid(format!(
                        "{} is not below {}",
                        dir.display(),
                        mount.display()
                    ))
                })?;
                Ok(format!("/{}", rel.to_string_lossy()))
            }
            Cgroup::V1 { .. } => {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                    .map_err(|e| io("read", Path::new("/proc/self/mountinfo"), e))?;
                self.oci_path_from(&mountinfo)
            }
        }
    }

    /// [`Cgroup::oci_path`] of a v1 cgroup from the mountinfo text.
    pub fn oci_path_from(&self, mountinfo: &str) -> Result<String, Error> {
        let cpu = match self {
            Cgroup::V1 { cpu, .. } => cpu,
            Cgroup::V2 { dir, .. } => dir,
        };
        below_mount(cpu, &mounts(mountinfo))
            .ok_or_else(|| Error::NotFound(format!("{} is in no cgroup hierarchy", cpu.display())))
    }

    /// The cgroups runc made for containers of this cgroup in the hierarchies that are not its
    /// own (on a v1 host runc makes `linux.cgroupsPath` in every mounted hierarchy — devices,
    /// freezer, the others and a hybrid host's `unified` — and removes only a container's own
    /// directory when it goes): the same path as [`Cgroup::oci_path`] under each other mount
    /// point.
    fn runc_dirs(&self, mountinfo: &str) -> Vec<PathBuf> {
        let Cgroup::V1 { cpu, .. } = self else {
            return Vec::new();
        };
        let mounts = mounts(mountinfo);
        let Some(rel) = below_mount(cpu, &mounts) else {
            return Vec::new();
        };
        let ours = self.dirs();
        mounts
            .iter()
            .map(|m| m.join(rel.trim_start_matches('/')))
            .filter(|d| !ours.contains(d))
            .collect()
    }
}

/// The OOM kill count of the first of `dirs` that has a memory controller.
pub fn oom_kills(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|d| {
        // v2 first: memory.events; v1: memory.oom_control (kernel ≥ 4.13).
        std::fs::read_to_string(d.join("memory.events"))
            .or_else(|_| std::fs::read_to_string(d.join("memory.oom_control")))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
    })
}

fn remove_tree(dir: &Path, depth: usize) -> Result<(), Error> {
    if depth > 16 {
        return Err(Error::Invalid(format!(
            "{}: nested too deep",
            dir.display()
        )));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", dir, e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path(), depth + 1)?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A fake hierarchy (tests) holds the files the kernel would: remove them too.
        Err(_) if !is_cgroupfs(dir) => {
            std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))
        }
        Err(e) => Err(io("remove", dir, e)),
    }
}

/// Whether `dir` is on a cgroup file system (v1 or v2).
fn is_cgroupfs(dir: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC};
    nix::sys::statfs::statfs(dir).is_ok_and(|s| {
        let t = s.filesystem_type();
        t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn c(name: &str, resources: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "resources": resources})
    }

    #[test]
    fn qos_classes_as_upstream() {
        let be = spec(json!({"containers": [c("a", json!({}))]}));
        assert_eq!(qos_class(&be).unwrap(), QosClass::BestEffort);
        let g = spec(json!({"containers": [
            c("a", json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
            c("b", json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}))]}));
        assert_eq!(qos_class(&g).unwrap(), QosClass::Guaranteed);
        let b = spec(json!({"containers": [
            c("a", json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
            c("b", json!({}))]}));
        assert_eq!(qos_class(&b).unwrap(), QosClass::Burstable);
        let b2 = spec(
            json!({"containers": [c("a", json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m", "memory": "1Gi"}}))]}),
        );
        assert_eq!(qos_class(&b2).unwrap(), QosClass::Burstable);
        assert_eq!(QosClass::Burstable.pod_path("u1"), "burstable/podu1");
        assert_eq!(QosClass::Guaranteed.pod_path("u1"), "podu1");
    }

    #[test]
    fn oom_score_adj_as_upstream() {
        let gi = 1u64 << 30;
        let g =
            spec(json!({"containers": [c("a", json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]}));
        assert_eq!(oom_score_adj(&g, &g.containers[0], 4 * gi).unwrap(), -997);
        let be = spec(json!({"containers": [c("a", json!({}))]}));
        assert_eq!(oom_score_adj(&be, &be.containers[0], 4 * gi).unwrap(), 1000);
        let b = spec(json!({"containers": [c("a", json!({"requests": {"memory": "1Gi"}}))]}));
        assert_eq!(oom_score_adj(&b, &b.containers[0], 4 * gi).unwrap(), 750);
        let tiny = spec(json!({"containers": [c("a", json!({"requests": {"cpu": "1m"}}))]}));
        assert_eq!(
            oom_score_adj(&tiny, &tiny.containers[0], 4 * gi).unwrap(),
            999
        );
        let huge = spec(json!({"containers": [c("a", json!({"requests": {"memory": "8Gi"}}))]}));
        assert_eq!(
            oom_score_adj(&huge, &huge.containers[0], 4 * gi).unwrap(),
            3
        );
    }

    #[test]
    fn the_burstable_tier_has_its_pods_requests() {
        let b1 = spec(json!({"containers": [c("a", json!({"requests": {"cpu": "250m"}}))]}));
        let b2 = spec(
            json!({"containers": [c("a", json!({"requests": {"cpu": "750m", "memory": "1Mi"}}))]}),
        );
        let g =
            spec(json!({"containers": [c("a", json!({"limits": {"cpu": "4", "memory": "1Gi"}}))]}));
        let be = spec(json!({"containers": [c("a", json!({}))]}));
        assert_eq!(burstable_tier_shares([&b1, &b2, &g, &be]), 1024);
        assert_eq!(burstable_tier_shares([&g, &be]), MIN_SHARES);
    }

    #[test]
    fn cpu_formulas_as_upstream() {
        assert_eq!(shares(0), 2);
        assert_eq!(shares(1), 2);
        assert_eq!(shares(100), 102);
        assert_eq!(shares(1000), 1024);
        assert_eq!(shares(10_000_000), MAX_SHARES);
        assert_eq!(quota(500), 50_000);
        assert_eq!(quota(1), 1000);
        assert_eq!(quota(2000), 200_000);
        assert_eq!(weight(2), 1);
        assert_eq!(weight(MAX_SHARES), 10_000);
        assert!((100..=102).contains(&weight(1024)), "{}", weight(1024));
        assert!(weight(102) < weight(1024));
    }

    #[test]
    fn container_and_pod_limits() {
        let a = serde_json::from_value::<Container>(c(
            "a",
            json!({"requests": {"cpu": "250m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}}),
        ))
        .unwrap();
        assert_eq!(
            container_resources(&a).unwrap(),
            Resources {
                cpu_shares: Some(256),
                cpu_quota_us: Some(50_000),
                memory_limit: Some(64 << 20),
                pids_limit: None,
                oom_score_adj: None,
            }
        );
        let none = serde_json::from_value::<Container>(c("n", json!({}))).unwrap();
        assert_eq!(
            container_resources(&none).unwrap(),
            Resources {
                cpu_shares: Some(2),
                ..Default::default()
            }
        );
        // Burstable: quota only when every container has a CPU limit.
        let s = spec(json!({"containers": [
            c("a", json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
            c("b", json!({"requests": {"cpu": "100m"}}))]}));
        assert_eq!(
            pod_resources(&s).unwrap(),
            Resources {
                cpu_shares: Some(shares(600)),
                cpu_quota_us: None,
                memory_limit: None,
                pids_limit: None,
                oom_score_adj: None,
            }
        );
        let g = spec(json!({"containers": [
            c("a", json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
            c("b", json!({"limits": {"cpu": "1", "memory": "64Mi"}}))],
            "initContainers": [c("i", json!({"limits": {"cpu": "2", "memory": "1Mi"}}))]}));
        assert_eq!(
            pod_resources(&g).unwrap(),
            Resources {
                cpu_shares: Some(shares(2000)),
                cpu_quota_us: Some(200_000),
                memory_limit: Some(128 << 20),
                pids_limit: None,
                oom_score_adj: None,
            }
        );
        let be = spec(json!({"containers": [c("a", json!({}))]}));
        assert_eq!(pod_resources(&be).unwrap().cpu_shares, Some(2));
    }

    #[test]
    fn a_request_above_its_limit_is_refused_with_upstreams_words() {
        let bad = serde_json::from_value::<Container>(c(
            "a",
            json!({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        ))
        .unwrap();
        let e = container_resources(&bad).unwrap_err().to_string();
        assert!(
            e.contains("must be less than or equal to memory limit of \"1Gi\"")
                || e.contains("must be less than or equal to memory limit of 1Gi"),
            "{e}"
        );
        let junk = serde_json::from_value::<Container>(c("a", json!({"limits": {"cpu": "lots"}})))
            .unwrap();
        assert!(container_resources(&junk).is_err());
    }

    const MOUNTINFO_V1: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN_V1: &str = "8:pids:/
4:memory:/sandbox/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn v1_roots_absolute_and_under_our_own_cgroup() {
        let abs = Cgroup::resolve_from(MOUNTINFO_V1, OWN_V1, "/trellis/n1").unwrap();
        assert_eq!(
            abs,
            Cgroup::V1 {
                cpu: "/sys/fs/cgroup/cpu/trellis/n1".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct/trellis/n1".into(),
                memory: "/sys/fs/cgroup/memory/trellis/n1".into(),
                pids: Some("/sys/fs/cgroup/pids/trellis/n1".into()),
            }
        );
        let rel = Cgroup::resolve_from(MOUNTINFO_V1, OWN_V1, "t1/n1").unwrap();
        let Cgroup::V1 { memory, cpu, .. } = &rel else {
            panic!("{rel:?}")
        };
        assert_eq!(memory, Path::new("/sys/fs/cgroup/memory/sandbox/abc/t1/n1"));
        assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu/t1/n1"));
        assert!(Cgroup::resolve_from(MOUNTINFO_V1, OWN_V1, "../x").is_err());
        // Co-mounted cpu,cpuacct share one directory, listed once.
        let co = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let g = Cgroup::resolve_from(co, "3:cpu,cpuacct:/\n2:memory:/\n", "/k").unwrap();
        assert_eq!(g.dirs().len(), 2);
    }

    /// runc's `linux.cgroupsPath` is the path below each mount point: the CPU hierarchy's
    /// when a relative root puts this cgroup at different paths per hierarchy; the directories
    /// runc makes in the other hierarchies are found for removal, never our own.
    #[test]
    fn oci_paths_as_runcs_cgroupfs_driver_reads_them() {
        let mi = format!(
            "{MOUNTINFO_V1}42 31 0:39 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n"
        );
        let abs = Cgroup::resolve_from(&mi, OWN_V1, "/trellis/n1").unwrap();
        let ctr = abs.child("burstable/podu1/app");
        assert_eq!(
            ctr.oci_path_from(&mi).unwrap(),
            "/trellis/n1/burstable/podu1/app"
        );
        let runc = ctr.runc_dirs(&mi);
        assert_eq!(
            runc,
            vec![
                PathBuf::from("/sys/fs/cgroup/unified/trellis/n1/burstable/podu1/app"),
                PathBuf::from("/sys/fs/cgroup/devices/trellis/n1/burstable/podu1/app")
            ]
        );
        // Relative, under a kubelet whose memory cgroup is /sandbox/abc: the CPU path; the
        // memory directory runc makes at that path is not ours, so it goes on removal.
        let rel = Cgroup::resolve_from(&mi, OWN_V1, "t1/n1").unwrap();
        let ctr = rel.child("podu2/app");
        assert_eq!(ctr.oci_path_from(&mi).unwrap(), "/t1/n1/podu2/app");
        let runc = ctr.runc_dirs(&mi);
        assert!(runc.contains(&PathBuf::from("/sys/fs/cgroup/memory/t1/n1/podu2/app")));
        assert!(!runc.contains(&PathBuf::from("/sys/fs/cgroup/cpu/t1/n1/podu2/app")));
        assert!(ctr.procs_files().contains(&PathBuf::from(
            "/sys/fs/cgroup/memory/sandbox/abc/t1/n1/podu2/app/cgroup.procs"
        )));
        // A directory outside every hierarchy has no runc path.
        let fake = Cgroup::V1 {
            cpu: "/tmp/x/cpu".into(),
            cpuacct: "/tmp/x/cpuacct".into(),
            memory: "/tmp/x/memory".into(),
            pids: None,
        };
        assert!(fake.oci_path_from(&mi).is_err());
        assert!(fake.runc_dirs(&mi).is_empty());
        let v2 = Cgroup::V2 {
            mount: "/sys/fs/cgroup".into(),
            dir: "/sys/fs/cgroup/k/podu3/app".into(),
        };
        assert_eq!(v2.oci_path().unwrap(), "/k/podu3/app");
    }

    /// `linux.resources` carries what `apply` writes: shares, quota and period, the memory
    /// limit (and memory+swap at it where swap is accounted), v2's weight as ours.
    #[test]
    fn oci_resources_match_the_cgroup_files() {
        let r = Resources {
            cpu_shares: Some(256),
            cpu_quota_us: Some(50_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(32),
            oom_score_adj: Some(-997),
        };
        assert_eq!(
            r.oci(true, false),
            json!({"devices": [{"allow": false, "access": "rwm"}],
                "cpu": {"shares": 256, "quota": 50_000, "period": 100_000},
                "pids": {"limit": 32},
                "memory": {"limit": 64u64 << 20, "swap": 64u64 << 20}})
        );
        let v2 = r.oci(false, true);
        assert_eq!(v2["unified"]["cpu.weight"], weight(256).to_string());
        assert!(v2["memory"].get("swap").is_none());
        let none = Resources {
            cpu_shares: Some(2),
            ..Default::default()
        }
        .oci(true, false);
        assert_eq!(none["cpu"], json!({"shares": 2}));
        assert!(none.get("memory").is_none());
    }

    #[test]
    fn v2_only_host() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let g =
            Cgroup::resolve_from(mi, "0::/system.slice/trellis.service\n", "/trellis/n1").unwrap();
        assert_eq!(
            g,
            Cgroup::V2 {
                mount: "/sys/fs/cgroup".into(),
                dir: "/sys/fs/cgroup/trellis/n1".into()
            }
        );
        assert!(Cgroup::resolve_from("", "", "/x").is_err());
    }

    /// The v2 mapping against a fake hierarchy (a plain directory): controllers handed down
    /// every level, weight, max and memory files written, usage and OOM kills read back.
    #[test]
    fn v2_files_in_a_fake_root() {
        let d = tempfile::tempdir().unwrap();
        let root = Cgroup::V2 {
            mount: d.path().to_path_buf(),
            dir: d.path().join("trellis/n1"),
        };
        let pod = root.child("burstable/podu1");
        let ctr = pod.child("app");
        ctr.create().unwrap();
        std::fs::write(
            d.path()
                .join("trellis/n1/burstable/podu1/app/memory.swap.max"),
            "max",
        )
        .unwrap();
        ctr.apply(&Resources {
            cpu_shares: Some(1024),
            cpu_quota_us: Some(50_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(64),
            oom_score_adj: None,
        })
        .unwrap();
        let f = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(f("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(
            f("trellis/n1/burstable/podu1/cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        let app = "trellis/n1/burstable/podu1/app/";
        assert_eq!(f(&format!("{app}cpu.max")), "50000 100000");
        assert_eq!(f(&format!("{app}memory.max")), (64u64 << 20).to_string());
        assert_eq!(f(&format!("{app}memory.swap.max")), "0");
        assert_eq!(f(&format!("{app}cpu.weight")), weight(1024).to_string());
        assert_eq!(f(&format!("{app}pids.max")), "64");
        let p = d.path().join(app);
        std::fs::write(p.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(p.join("memory.current"), "1000000\n").unwrap();
        std::fs::write(p.join("memory.stat"), "anon 10\ninactive_file 400000\n").unwrap();
        std::fs::write(p.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        assert_eq!(
            ctr.usage(),
            Some(Usage {
                cpu_ns: 1_500_000,
                working_set: 600_000
            })
        );
        assert_eq!(ctr.oom_kills(), Some(1));
        assert_eq!(
            root.pod_cgroups(),
            vec![("burstable/podu1".into(), "u1".into())]
        );
        pod.remove().unwrap();
        assert!(!pod.exists());
        assert!(root.exists());
    }

    #[test]
    fn v1_files_in_a_fake_root() {
        let d = tempfile::tempdir().unwrap();
        let h = |c: &str| d.path().join(c).join("k");
        let root = Cgroup::V1 {
            cpu: h("cpu"),
            cpuacct: h("cpuacct"),
            memory: h("memory"),
            pids: None,
        };
        let ctr = root.child("podu2/app");
        ctr.create().unwrap();
        std::fs::write(
            h("memory").join("podu2/app/memory.memsw.limit_in_bytes"),
            "-1",
        )
        .unwrap();
        ctr.apply(&Resources {
            cpu_shares: Some(512),
            cpu_quota_us: Some(20_000),
            memory_limit: Some(1 << 20),
            pids_limit: None,
            oom_score_adj: None,
        })
        .unwrap();
        let f = |c: &str, file: &str| {
            std::fs::read_to_string(h(c).join("podu2/app").join(file)).unwrap()
        };
        assert_eq!(f("cpu", "cpu.shares"), "512");
        assert_eq!(f("cpu", "cpu.cfs_quota_us"), "20000");
        assert_eq!(f("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(f("memory", "memory.limit_in_bytes"), "1048576");
        assert_eq!(f("memory", "memory.memsw.limit_in_bytes"), "1048576");
        // No pids hierarchy: a pids limit is refused, not silently dropped.
        assert!(!ctr.limits_pids());
        let e = ctr
            .apply(&Resources {
                pids_limit: Some(8),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("pids"), "{e}");
        let with_pids = Cgroup::V1 {
            cpu: h("cpu"),
            cpuacct: h("cpuacct"),
            memory: h("memory"),
            pids: Some(h("pids")),
        }
        .child("podu2");
        with_pids.create().unwrap();
        with_pids
            .apply(&Resources {
                pids_limit: Some(8),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(h("pids").join("podu2/pids.max")).unwrap(),
            "8"
        );
        std::fs::write(
            h("memory").join("podu2/app/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(ctr.oom_kills(), Some(3));
        assert_eq!(root.pod_cgroups(), vec![("podu2".into(), "u2".into())]);
        root.child("podu2").remove().unwrap();
        assert!(!h("memory").join("podu2").exists() && !h("cpu").join("podu2").exists());
    }
}
