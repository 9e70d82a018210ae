//! `/stats/summary`: CPU and memory of the node and of each pod and container, in the shape
//! of upstream's Summary API (`stats/v1alpha1`), for metrics-server, `kubectl top` and the HPA.
//!
//! With cgroups (the default), a pod's and a container's usage are those of their cgroups
//! ([`crate::cgroup::Cgroup::usage`]): CPU time in ns, and the working set (usage minus
//! inactive file pages) as cAdvisor computes it. Without them (`--cgroups-per-qos=false`, or a
//! pod whose cgroup is gone) a container's usage is that of its process tree as `/proc` shows
//! it: CPU time is user + system time of the live processes plus what their reaped children
//! used (`cutime`/`cstime`); the working set is their resident memory. `usageNanoCores` is the rate over about [`RATE_WINDOW`]: between this sample and the
//! newest earlier one at least that old (the samples of recent requests are kept), or the
//! oldest one kept when none is that old yet; a first request samples twice, 200 ms apart.
//! A window that long keeps the rate steady however often readers ask (the API server for
//! `kubectl top`, once per HPA): CPU time comes in clock ticks, and one 10 ms tick in a
//! 200 ms window would read as 50m.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cgroup::Cgroup;
use crate::runtime::alive;
use crate::shim::PID_FILE;

/// A process as `/proc/<pid>/stat` and `statm` show it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    rss_pages: u64,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces), starting at field 3 (state).
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // state=0 ppid=1 … utime=11 stime=12 cutime=13 cstime=14.
    let ppid = f.get(1)?.parse().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let rss_pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(Proc {
        ppid,
        ticks: n(11) + n(12) + n(13) + n(14),
        rss_pages,
    })
}

/// Every process on the host, by pid.
fn all_procs() -> HashMap<i32, Proc> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                    Some((pid, read_proc(pid)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// CPU nanoseconds and resident bytes of `root` and its descendants.
fn tree_usage(procs: &HashMap<i32, Proc>, root: i32, tick_ns: u64, page: u64) -> (u64, u64) {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, p) in procs {
        children.entry(p.ppid).or_default().push(*pid);
    }
    let (mut cpu, mut mem) = (0u64, 0u64);
    let mut todo = vec![root];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 100_000 {
            break;
        }
        if let Some(p) = procs.get(&pid) {
            cpu += p.ticks * tick_ns;
            mem += p.rss_pages * page;
        }
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    (cpu, mem)
}

/// The node's CPU time (all CPUs, busy states) in ns, from `/proc/stat`.
fn node_cpu_ns(tick_ns: u64) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum();
    busy * tick_ns
}

/// (total, available) memory bytes from `/proc/meminfo`.
fn node_memory() -> (u64, u64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("MemTotal:"), kib("MemAvailable:"))
}

struct Sample {
    at: Instant,
    /// CPU ns per key: "node", "<uid>", "<uid>/<container>".
    cpu: HashMap<String, u64>,
    mem: HashMap<String, u64>,
    /// Pods: (namespace, name, uid, created, containers).
    pods: Vec<(String, String, String, String, Vec<String>)>,
}

fn sample(root: &Path, cgroups: Option<&Cgroup>) -> Sample {
    let tick_ns = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .map_or(10_000_000, |t| 1_000_000_000 / t);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let procs = all_procs();
    let mut s = Sample {
        at: Instant::now(),
        cpu: HashMap::new(),
        mem: HashMap::new(),
        pods: Vec::new(),
    };
    s.cpu.insert("node".into(), node_cpu_ns(tick_ns));
    let dirs = std::fs::read_dir(root.join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in dirs {
        let Some(rec) = std::fs::read(dir.join("sandbox.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        let text = |k: &str| rec[k].as_str().unwrap_or("").to_string();
        let uid = text("uid");
        let pod_cgroup = cgroups
            .zip(rec["cgroup"].as_str())
            .map(|(r, rel)| r.child(rel));
        let mut names = Vec::new();
        let (mut pod_cpu, mut pod_mem) = (0, 0);
        let containers = std::fs::read_dir(dir.join("containers"))
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default();
        for c in containers {
            let name = c.file_name().to_string_lossy().into_owned();
            let latest = std::fs::read_dir(c.path()).ok().and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .max()
            });
            let pid = latest.and_then(|a| {
                std::fs::read_to_string(c.path().join(a.to_string()).join(PID_FILE))
                    .ok()?
                    .trim()
                    .parse::<i32>()
                    .ok()
            });
            let Some(pid) = pid.filter(|p| *p > 1 && alive(*p)) else {
                continue;
            };
            let (cpu, mem) = match pod_cgroup.as_ref().and_then(|p| p.child(&name).usage()) {
                Some(u) => (u.cpu_ns, u.working_set),
                None => tree_usage(&procs, pid, tick_ns, page),
            };
            pod_cpu += cpu;
            pod_mem += mem;
            s.cpu.insert(format!("{uid}/{name}"), cpu);
            s.mem.insert(format!("{uid}/{name}"), mem);
            names.push(name);
        }
        names.sort();
        // The pod cgroup counts everything of the pod, the exited runs' CPU time too.
        if let Some(u) = pod_cgroup.as_ref().and_then(Cgroup::usage) {
            pod_cpu = u.cpu_ns;
            pod_mem = u.working_set;
        }
        s.cpu.insert(uid.clone(), pod_cpu);
        s.mem.insert(uid.clone(), pod_mem);
        s.pods
            .push((text("namespace"), text("name"), uid, text("created"), names));
    }
    s
}

/// The window CPU rates are computed over (cAdvisor's housekeeping and metrics-server's
/// resolution are about as long).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Samples older than this are never used.
const MAX_AGE: Duration = Duration::from_secs(120);

/// At most this many samples are kept.
const MAX_SAMPLES: usize = 64;

/// Keeps the recent samples, for rates.
#[derive(Default)]
pub struct Stats {
    samples: Mutex<VecDeque<Sample>>,
}

/// Which of `ages` (oldest first) a rate is taken against: the newest at least `window` old,
/// else the oldest at least 100 ms old.
fn base_index(ages: &[Duration], window: Duration) -> Option<usize> {
    let usable = |a: &Duration| *a >= Duration::from_millis(100) && *a < MAX_AGE;
    ages.iter()
        .rposition(|a| usable(a) && *a >= window)
        .or_else(|| ages.iter().position(usable))
}

/// CPU of `key` in `now`, its rate against the first of `before` (the window's base, then
/// newer samples: a container started since the base has its rate from the first sample
/// that saw it).
fn usage(now: &Sample, before: &[&Sample], key: &str, time: &str) -> Value {
    let total = now.cpu.get(key).copied().unwrap_or(0);
    let mut cpu = json!({"time": time, "usageCoreNanoSeconds": total});
    if let Some((b, prev)) = before.iter().find_map(|b| Some((b, b.cpu.get(key)?))) {
        let wall = now.at.duration_since(b.at).as_nanos().max(1);
        let rate = u128::from(total.saturating_sub(*prev)) * 1_000_000_000 / wall;
        cpu["usageNanoCores"] = json!(u64::try_from(rate).unwrap_or(u64::MAX));
    }
    cpu
}

impl Stats {
    /// The summary for node `node`, its pods' state under `root`.
    pub async fn summary(&self, node: &str, root: &Path, cgroups: Option<&Cgroup>) -> Value {
        let kept = {
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.retain(|s| s.at.elapsed() < MAX_AGE);
            let ages: Vec<Duration> = samples.iter().map(|s| s.at.elapsed()).collect();
            base_index(&ages, RATE_WINDOW).is_some()
        };
        if !kept {
            let first = sample(root, cgroups);
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(first);
        }
        let now = sample(root, cgroups);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let ages: Vec<Duration> = samples.iter().map(|s| s.at.elapsed()).collect();
        let Some(base) = base_index(&ages, RATE_WINDOW) else {
            return json!({"node": {"nodeName": node}, "pods": []});
        };
        let before: Vec<&Sample> = samples
            .iter()
            .zip(&ages)
            .skip(base)
            .filter(|(_, a)| **a >= Duration::from_millis(100))
            .map(|(s, _)| s)
            .collect();
        let time = jiff::Timestamp::now().to_string();
        let (total, available) = node_memory();
        let working = total.saturating_sub(available);
        let pods: Vec<Value> = now
            .pods
            .iter()
            .map(|(ns, name, uid, created, containers)| {
                let containers: Vec<Value> = containers
                    .iter()
                    .map(|c| {
                        let key = format!("{uid}/{c}");
                        json!({"name": c, "startTime": created,
                               "cpu": usage(&now, &before, &key, &time),
                               "memory": {"time": time, "workingSetBytes": now.mem.get(&key).copied().unwrap_or(0)}})
                    })
                    .collect();
                json!({"podRef": {"name": name, "namespace": ns, "uid": uid},
                       "startTime": created, "containers": containers,
                       "cpu": usage(&now, &before, uid, &time),
                       "memory": {"time": time, "workingSetBytes": now.mem.get(uid).copied().unwrap_or(0)}})
            })
            .collect();
        let summary = json!({
            "node": {"nodeName": node,
                     "cpu": usage(&now, &before, "node", &time),
                     "memory": {"time": time, "workingSetBytes": working, "availableBytes": available,
                                "usageBytes": working}},
            "pods": pods,
        });
        samples.push_back(now);
        while samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_taken_over_the_window_when_a_sample_is_that_old() {
        let s = Duration::from_secs;
        // Oldest first: 30 s, 12 s, 9 s, 1 s → the 12 s one (the newest ≥ 10 s).
        assert_eq!(base_index(&[s(30), s(12), s(9), s(1)], s(10)), Some(1));
        // None that old yet: the oldest usable.
        assert_eq!(base_index(&[s(3), s(1)], s(10)), Some(0));
        // Too fresh (under 100 ms) or too old: none.
        assert_eq!(base_index(&[Duration::from_millis(50)], s(10)), None);
        assert_eq!(base_index(&[s(500)], s(10)), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let procs = all_procs();
        let me = i32::try_from(std::process::id()).unwrap();
        let (cpu, mem) = tree_usage(&procs, me, 10_000_000, 4096);
        assert!(mem > 0, "resident memory");
        let _ = cpu;
        assert!(node_cpu_ns(10_000_000) > 0);
        let (total, available) = node_memory();
        assert!(total > 0 && available <= total);
    }
}
