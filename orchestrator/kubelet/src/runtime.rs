//! The runtime trait and the built-in `process` runtime: each container run is a
//! `trellis container-shim` process (see [`crate::shim`]) that leaves its pid and exit code in a
//! run directory `<pod dir>/containers/<name>/<attempt>/`. The attempt number is the
//! container's restartCount, so a restarted kubelet reads every container's state from disk.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::Error;
use crate::shim::{self, EXIT_FILE, OOM_FILE, PID_FILE, SHIM_PID_FILE, START_ERROR_FILE, ShimArgs};

/// Where a pod's containers run: its directory and network namespace.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    /// None for hostNetwork pods (the node's namespace).
    pub netns: Option<PathBuf>,
    pub hostname: String,
    /// The pod's projected service-account directory, bind-mounted at
    /// [`crate::serviceaccount::MOUNT_PATH`]; None when the pod has no token.
    pub service_account: Option<PathBuf>,
    /// The pod's cgroup, under which each container gets its own; None without cgroups.
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// Woken when a run started in the background has its process or its failure (the
    /// containerd runtime's starts end after [`Runtime::start`] returned): the pod's worker
    /// looks at the pod again at once.
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// One run of one container.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    pub name: String,
    pub attempt: u32,
    pub argv: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    /// `stdin: true` (with how it is kept: `stdinOnce`); attach writes to it.
    pub stdin: Option<shim::StdinMode>,
    /// `tty: true`: the container gets a terminal.
    pub tty: bool,
    /// The container cgroup's limits (from its resources).
    pub resources: crate::cgroup::Resources,
    /// The pod spec's `image` (the process runtime records it; containerd runs it).
    pub image: Option<String>,
    /// The pod spec's `command` and `args`, expanded, apart: an image runtime combines them
    /// with the image's entrypoint and cmd (`argv` is both, for the process runtime).
    pub command: Option<Vec<OsString>>,
    pub args: Option<Vec<OsString>>,
    /// `securityContext.privileged`: an image runtime gives the container every capability
    /// the kubelet holds and every device, and leaves /proc and /sys unmasked (the process runtime's processes are the
    /// kubelet's own children, root on the node, already).
    pub privileged: bool,
    /// The container's hostPath volume mounts, for an image runtime (the process runtime's
    /// processes see the node's files).
    pub host_mounts: Vec<crate::volumes::HostMount>,
}

/// What a run is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Started (the shim has not reported the process yet, or it runs).
    Running {
        pid: Option<i32>,
        started: SystemTime,
    },
    Exited {
        code: i32,
        started: SystemTime,
        finished: SystemTime,
        /// Set when the process never started (a missing executable, a namespace failure).
        start_error: Option<String>,
        /// The kernel's OOM killer killed a process of the container during the run.
        oom_killed: bool,
    },
}

/// Runs containers for the kubelet. The kubelet owns the network namespace and CNI; the
/// runtime starts processes in it and reports on them.
pub trait Runtime: Send + Sync {
    fn start(&self, sandbox: &Sandbox, run: &ContainerRun) -> Result<(), Error>;
    /// Whether `image` is in the runtime's image store; None: the runtime runs no images
    /// (the process runtime records `image` only), so nothing is pulled.
    fn image_present(&self, _image: &str) -> Option<Result<bool, Error>> {
        None
    }
    /// Pulls `image` from its registry (an image runtime); returns the bytes fetched.
    fn pull_image(&self, image: &str) -> Result<u64, Error> {
        Err(Error::Other(format!(
            "this runtime pulls no images ({image:?})"
        )))
    }
    /// The newest run of container `name`, with its attempt number.
    fn latest(&self, sandbox: &Sandbox, name: &str) -> Option<(u32, RunState)>;
    /// A given run's state.
    fn state(&self, sandbox: &Sandbox, name: &str, attempt: u32) -> Option<RunState>;
    fn signal(&self, sandbox: &Sandbox, name: &str, signal: Signal);
    /// Where a run writes its output.
    fn log_path(&self, sandbox: &Sandbox, name: &str, attempt: u32) -> PathBuf;
    /// The runtime's name in `containerID` (`<scheme>://<id>`).
    fn scheme(&self) -> &'static str {
        "process"
    }
    /// Whether a start ends in the background and wakes the pod ([`Sandbox::wake`]) when its
    /// process exists or it failed: the kubelet then need not look again soon to see it.
    fn wakes_on_start(&self) -> bool {
        false
    }
    /// Whether containers get their hostPath volumes from the runtime (an image runtime's
    /// root file system is not the node's): the kubelet then checks and prepares them.
    fn mounts_host_paths(&self) -> bool {
        false
    }
}

/// The built-in runtime: host executables as processes.
pub struct ProcessRuntime {
    /// The `trellis` binary that has the `container-shim` subcommand.
    pub shim: PathBuf,
    /// Extra environment every shim and container inherits (the testbed's tag).
    pub passthrough_env: Vec<(String, String)>,
    /// How each run's log is rotated.
    pub rotation: crate::logfile::Rotation,
}

fn run_dir(sandbox: &Sandbox, name: &str, attempt: u32) -> PathBuf {
    sandbox
        .dir
        .join("containers")
        .join(name)
        .join(attempt.to_string())
}

fn read_i32(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).ok()?.modified().ok()
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

impl ProcessRuntime {
    fn read_state(dir: &Path) -> Option<RunState> {
        let started = mtime(&dir.join(SHIM_PID_FILE)).or_else(|| mtime(dir))?;
        if let Some(code) = read_i32(&dir.join(EXIT_FILE)) {
            return Some(RunState::Exited {
                code,
                started: mtime(&dir.join(PID_FILE)).unwrap_or(started),
                finished: mtime(&dir.join(EXIT_FILE)).unwrap_or(started),
                start_error: std::fs::read_to_string(dir.join(START_ERROR_FILE)).ok(),
                oom_killed: dir.join(OOM_FILE).exists(),
            });
        }
        let shim = read_i32(&dir.join(SHIM_PID_FILE));
        if shim.is_some_and(|p| !alive(p)) {
            // The shim died without writing an exit code (killed): the container is gone with it
            // or orphaned; report it as killed.
            let pid = read_i32(&dir.join(PID_FILE));
            if pid.is_none_or(|p| !alive(p)) {
                return Some(RunState::Exited {
                    code: 137,
                    started,
                    finished: SystemTime::now(),
                    start_error: None,
                    oom_killed: false,
                });
            }
        }
        Some(RunState::Running {
            pid: read_i32(&dir.join(PID_FILE)),
            started,
        })
    }
}

impl Runtime for ProcessRuntime {
    fn start(&self, sandbox: &Sandbox, run: &ContainerRun) -> Result<(), Error> {
        // The container's cgroup and limits first: a limit the kernel refuses leaves no run
        // behind (the container was never created).
        let cgroup = match &sandbox.cgroup {
            Some(pod) => {
                let c = pod.child(&run.name);
                c.create()?;
                c.apply(&run.resources)?;
                c.dirs()
            }
            None => Vec::new(),
        };
        let dir = run_dir(sandbox, &run.name, run.attempt);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let log = self.log_path(sandbox, &run.name, run.attempt);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
        }
        prune_logs(&log, run.attempt);
        let args = ShimArgs {
            dir: dir.clone(),
            netns: sandbox.netns.clone(),
            hostname: Some(sandbox.hostname.clone()),
            hosts: Some(sandbox.dir.join("etc-hosts")),
            resolv: Some(sandbox.dir.join("resolv.conf")),
            workdir: run.workdir.clone(),
            log: Some(log),
            service_account: sandbox.service_account.clone(),
            rotation: self.rotation,
            stdin: run.stdin,
            tty: run.tty,
            cgroups: cgroup,
            oom_score_adj: run.resources.oom_score_adj,
            argv: run.argv.clone(),
        };
        let mut cmd = std::process::Command::new(&self.shim);
        cmd.args(args.to_args())
            .env_clear()
            .envs(self.passthrough_env.iter().map(|(k, v)| (k, v)))
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Its own process group: a signal to the kubelet's group never reaches containers.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let failed = |e| Error::io(format!("start the shim {}", self.shim.display()), e);
        // Reap the shim when it ends (it writes its result to disk first): on the kubelet's
        // runtime a task waits for it, not a thread per container (100 pods were 100 idle
        // threads, each with its stack); outside a runtime, a thread.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let mut child = tokio::process::Command::from(cmd).spawn().map_err(failed)?;
                rt.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(_) => {
                let mut child = cmd.spawn().map_err(failed)?;
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
        }
        // The shim records itself at once; wait briefly so a state read right after sees the run.
        let _ = shim::write_atomic(&dir, ".started", "");
        Ok(())
    }

    fn latest(&self, sandbox: &Sandbox, name: &str) -> Option<(u32, RunState)> {
        let dir = sandbox.dir.join("containers").join(name);
        let attempt = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .max()?;
        Some((attempt, Self::read_state(&dir.join(attempt.to_string()))?))
    }

    fn state(&self, sandbox: &Sandbox, name: &str, attempt: u32) -> Option<RunState> {
        Self::read_state(&run_dir(sandbox, name, attempt))
    }

    fn signal(&self, sandbox: &Sandbox, name: &str, signal: Signal) {
        if let Some((attempt, RunState::Running { pid, .. })) = self.latest(sandbox, name) {
            let dir = run_dir(sandbox, name, attempt);
            let pid = pid.or_else(|| read_i32(&dir.join(PID_FILE)));
            if let Some(pid) = pid.filter(|p| *p > 1 && alive(*p)) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            }
        }
    }

    fn log_path(&self, sandbox: &Sandbox, name: &str, attempt: u32) -> PathBuf {
        sandbox
            .dir
            .join("logs")
            .join(name)
            .join(format!("{attempt}.log"))
    }
}

/// Removes the logs of runs before the previous one (`<attempt>.log` and its rotated files
/// for attempts below `attempt - 1`): `--previous` needs only the run before, and a
/// crash-looping container must not fill the disk.
pub(crate) fn prune_logs(log: &Path, attempt: u32) {
    let Some(dir) = log.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let run = name
            .to_str()
            .and_then(|n| n.split_once(".log"))
            .and_then(|(a, _)| a.parse::<u32>().ok());
        if run.is_some_and(|r| r.saturating_add(1) < attempt) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Kills every process of a pod directory (shims and containers), for orphans whose pod is
/// gone: SIGKILL, no grace.
pub fn kill_all(pod_dir: &Path) {
    let Ok(containers) = std::fs::read_dir(pod_dir.join("containers")) else {
        return;
    };
    for c in containers.flatten() {
        let Ok(runs) = std::fs::read_dir(c.path()) else {
            continue;
        };
        for r in runs.flatten() {
            for f in [PID_FILE, SHIM_PID_FILE] {
                if let Some(pid) = read_i32(&r.path().join(f)).filter(|p| *p > 1 && alive(*p)) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Whether any process of the pod directory still runs.
pub fn any_alive(pod_dir: &Path) -> bool {
    let Ok(containers) = std::fs::read_dir(pod_dir.join("containers")) else {
        return false;
    };
    containers.flatten().any(|c| {
        std::fs::read_dir(c.path()).is_ok_and(|runs| {
            runs.flatten().any(|r| {
                [PID_FILE, SHIM_PID_FILE]
                    .iter()
                    .any(|f| read_i32(&r.path().join(f)).is_some_and(alive))
            })
        })
    })
}
