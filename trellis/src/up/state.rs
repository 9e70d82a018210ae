//! What `trellis up` made, recorded as it makes it (`<state-dir>/state.json`), so `down` — or
//! `up` itself after a failed step — removes exactly that: processes by PID (checked against
//! their start time, so a reused PID is never signalled), pods' processes, namespaces, the
//! host link (its routes go with it) and the state directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A daemon `up` started, in its own process group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub what: String,
    /// The namespace it runs in (short name: `cp`, `n1`, …).
    pub on: String,
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat when it started.
    pub start_ticks: u64,
    pub log: PathBuf,
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRec {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
}

/// A namespace of the control plane: a member, or the front door of three.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpRec {
    /// Short name: `cp`, `cp1`…`cp3`, `api`.
    pub name: String,
    pub ip: String,
    pub role: String,
}

/// Everything `up` made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub mode: String,
    /// The kubelets' container runtime (`process`, `containerd`).
    #[serde(default)]
    pub runtime: String,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    /// Full names of the namespaces made, in creation order.
    pub namespaces: Vec<String>,
    /// Pod namespaces start with this.
    pub pod_prefix: String,
    /// The veth end in the namespace `up` ran in.
    pub host_link: Option<String>,
    pub nodes: Vec<NodeRec>,
    /// The control plane's namespaces.
    #[serde(default)]
    pub control_plane: Vec<CpRec>,
    pub processes: Vec<Proc>,
    /// The cluster's containerd (`--runtime containerd`).
    #[serde(default)]
    pub containerd: Option<super::containerd::Ctrd>,
    pub kubeconfig: PathBuf,
    pub api: String,
    /// (step, seconds) in order.
    pub timings: Vec<(String, f64)>,
    /// Set once `up` finished.
    pub complete: bool,
}

pub const STATE_FILE: &str = "state.json";

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = State::path(&self.dir);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<State>> {
        let path = State::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// A process's start time in clock ticks since boot (None when it is gone or a zombie).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Proc {
    /// Still the process `up` started.
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(self.pid), sig);
        }
    }
}

/// Starts `argv` inside `ns` in a process group of its own, output to `log`; it outlives `up`.
pub fn spawn(
    ns: &trellis_net::Netns,
    on: &str,
    what: &str,
    argv: &[String],
    log: &Path,
) -> anyhow::Result<Proc> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    let (program, args) = argv.split_first().context("an empty command")?;
    let mut cmd = ns
        .command(program)
        .with_context(|| format!("preparing {what} in {on}"))?;
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {what} on {on}"))?;
    let pid = i32::try_from(child.id()).context("a process id out of range")?;
    // The child is not waited for: it is a daemon of the cluster, stopped by `down`.
    drop(child);
    Ok(Proc {
        what: what.to_string(),
        on: on.to_string(),
        pid,
        start_ticks: start_ticks(pid).unwrap_or_default(),
        log: log.to_path_buf(),
    })
}

/// The kubelets' cgroup roots are `<this>/<node>`, relative to the cgroup `trellis up` (and
/// `trellis down`) run in.
pub fn cgroup_base(cluster: &str) -> String {
    format!("trellis-up-{cluster}")
}

/// Removes everything `state` records, whatever is already gone. Returns what could not be
/// removed.
pub async fn teardown(state: &State) -> Vec<String> {
    let mut problems = Vec::new();
    // Kubelets first, so none restarts a pod while its processes are killed.
    for p in state.processes.iter().filter(|p| p.what == "kubelet") {
        p.signal(Signal::SIGKILL);
    }
    // containerd's containers while it still runs: their shims exit and unmount them.
    if let Some(c) = &state.containerd {
        super::containerd::remove_containers(state, c, &mut problems).await;
    }
    for node in &state.nodes {
        let pods = node.dir.join("var/lib/trellis/kubelet/pods");
        if let Ok(entries) = std::fs::read_dir(&pods) {
            for e in entries.flatten() {
                trellis_kubelet::runtime::kill_all(&e.path());
            }
        }
    }
    for p in &state.processes {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.processes.iter().any(Proc::alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in &state.processes {
        p.signal(Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.processes.iter().any(Proc::alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in state.processes.iter().filter(|p| p.alive()) {
        problems.push(format!(
            "process {} ({} on {}) survived SIGKILL",
            p.pid, p.what, p.on
        ));
    }
    if let Some(c) = &state.containerd {
        super::containerd::remove_leftovers(c, &mut problems).await;
    }
    // The kubelets' cgroups, with whatever still runs in them.
    if let Ok(base) = trellis_kubelet::cgroup::Cgroup::resolve(&cgroup_base(&state.name)) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            base.kill_all();
            match base.remove() {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    problems.push(format!("removing the kubelets' cgroups: {e}"));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    // Pod namespaces the kubelets made, then ours in reverse order of creation.
    if !state.pod_prefix.is_empty()
        && let Ok(entries) = std::fs::read_dir(&state.run_dir)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&state.pod_prefix)
                && let Err(e) = trellis_net::Netns::delete(&state.run_dir, &name)
            {
                problems.push(e.to_string());
            }
        }
    }
    for name in state.namespaces.iter().rev() {
        if let Err(e) = trellis_net::Netns::delete(&state.run_dir, name) {
            problems.push(e.to_string());
        }
    }
    if let Some(link) = &state.host_link {
        match trellis_net::Handle::current() {
            Ok(h) => {
                if let Err(e) = h.delete_link(link).await {
                    problems.push(format!("deleting link {link}: {e}"));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty()
        && let Err(e) = std::fs::remove_dir_all(&state.dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {e}", state.dir.display()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_read_and_a_gone_pid_has_none() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(i32::MAX), None);
    }
}
