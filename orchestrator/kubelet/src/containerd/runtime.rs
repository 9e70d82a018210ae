//! The `containerd` runtime: each container run is a containerd container (and task) made from
//! an OCI image, in the network namespace the kubelet created and wired through CNI — the
//! shape of nerdctl's `--network ns:<path>`.
//!
//! A run keeps the process runtime's run directory `<pod dir>/containers/<name>/<attempt>/`
//! (`pid`, `exit`, `start-error`, plus `containerd.json`), so the kubelet's state machine,
//! `kubectl exec` (nsenter into the main process) and the orphan sweeps read it the same way.
//! Each run's output goes to its CRI-format log through a logging binary that containerd's shim
//! starts (`binary://…/trellis?container-log=…`): the log survives a kubelet restart.
//!
//! The containers carry labels (`io.trellis.node`, `io.trellis.run`): a restarted kubelet finds
//! its runs again, waits on those that still run, and removes the containers, tasks and
//! snapshots whose run directory is gone (the pod was removed) or finished.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::image::{self, Resolved};
use super::{Conn, CtrdError};
use super::{gc, pull};
use crate::Error;
use crate::logfile::Rotation;
use crate::runtime::{ContainerRun, RunState, Runtime, Sandbox, alive};
use crate::shim::{EXIT_FILE, PID_FILE, START_ERROR_FILE, write_atomic};

/// The FIFO in a `tty: true, stdin: true` run's directory that containerd's shim reads the
/// terminal's input from; the logging binary holds its write end for the task's life and feeds
/// it from the run's `stdin` FIFO, which attach writes to (as the process runtime's shim does).
pub const TASK_STDIN_FIFO: &str = "task-stdin";
/// The label with the node a container belongs to (several kubelets may share a containerd).
pub const LABEL_NODE: &str = "io.trellis.node";
/// The label with the run directory of a container (and of its snapshot).
pub const LABEL_RUN: &str = "io.trellis.run";
/// What a run directory of this runtime holds besides the process runtime's files.
pub const RUN_FILE: &str = "containerd.json";
/// How often the runtime reconciles containerd with the run directories.
const RECONCILE: Duration = Duration::from_secs(10);
/// How long one lease serves container starts: well within its hour, so a start that takes
/// one never outlives it.
const LEASE_TURN: Duration = Duration::from_secs(15 * 60);
/// How long deleting a finished task may take: the shim waits up to 12 s for the logging
/// binary to drain the container's output.
const TASK_DELETE: Duration = Duration::from_secs(30);
/// The longest a container's create and start may take in the background: a shim or a Tasks
/// call that hangs must not hold a start turn, or the pod's teardown, for ever.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a pull may take (its requests have their own timeouts).
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a pull waits for its turn behind other pulls before its caller gives up (the
/// queued pull still runs then, under its own [`PULL_TIMEOUT`]).
const PULL_QUEUE_LIMIT: Duration = Duration::from_secs(600);
/// The longest one image GC removal may take (a synchronous delete with containerd's GC).
const GC_REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where containerd is and how containers are made.
#[derive(Debug, Clone)]
pub struct Settings {
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// runc's state directory (`runc --root`, under which runc adds the namespace); None:
    /// the shim's default, `/run/containerd/runc`.
    pub runc_root: Option<PathBuf>,
    /// The node's name, labelled on every container.
    pub node: String,
    /// `<root>/pods`: where run directories live.
    pub pods_dir: PathBuf,
    /// The `trellis` binary (its `container-log` subcommand writes the logs).
    pub logger: PathBuf,
    pub rotation: Rotation,
    /// How many containers are created and started at once (in the order their starts came):
    /// the pod passes do not wait for them.
    pub max_parallel_starts: usize,
    /// Registry pulls and image garbage collection.
    pub images: super::ImageSettings,
}

struct Inner {
    conn: Conn,
    s: Settings,
    /// Containers being created or waited on by this process.
    busy: Mutex<HashSet<String>>,
    /// Resolved images by name and target digest.
    images: Mutex<HashMap<String, Resolved>>,
    /// The lease containers are made under, and when it was taken (see [`Inner::lease`]).
    lease: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Container starts under way (`max_parallel_starts`; fair: first come, first started).
    starts: tokio::sync::Semaphore,
    /// When each image (normalized name) was last used by a start: image GC's order.
    last_used: Mutex<HashMap<String, SystemTime>>,
    /// Images a start or pull is using now, and the one a GC round is removing.
    holds: gc::ImageHolds,
    /// Held by a pull and by an image GC round: GC never removes what a pull is writing, and
    /// pulls go one at a time (upstream's `--serialize-image-pulls`).
    image_ops: tokio::sync::Mutex<()>,
}

/// The containerd runtime. Its calls run on a thread of its own (the [`Runtime`] trait is
/// synchronous); waits on tasks and the reconcile loop run there too.
pub struct ContainerdRuntime {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
}

/// What `containerd.json` records of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunRecord {
    id: String,
    image: String,
    /// The container's cgroup directories (empty without pod cgroups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cgroup: Vec<PathBuf>,
    /// Its OOM kill count before the run started: a count above it when the run ended with a
    /// failure is an OOM kill, as the process runtime's shim decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ooms_before: Option<u64>,
}

/// The runc shim's options (`containerd.runc.v1.Options`) with only `root` (field 7) set:
/// where runc keeps its state, instead of the machine-wide default.
fn runc_options(root: &Path) -> prost_types::Any {
    let root = root.as_os_str().as_encoded_bytes();
    let mut value = vec![7 << 3 | 2];
    let mut len = root.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            value.push(byte);
            break;
        }
        value.push(byte | 0x80);
    }
    value.extend_from_slice(root);
    prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value,
    }
}

/// CAP_SYS_RESOURCE's bit in a capability set.
const CAP_SYS_RESOURCE: u64 = 1 << 24;

/// `adj` as runc's init can set it. The kernel refuses an `oom_score_adj` below the inherited
/// minimum without CAP_SYS_RESOURCE, and runc then fails the container; a kubelet without that
/// capability (a sandbox that drops it) gives its containers no less than its own score —
/// the process runtime's shim, whose write the kernel refuses, leaves them at it too.
fn settable_oom_score_adj(adj: i32) -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capable = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & CAP_SYS_RESOURCE != 0);
    if capable {
        return adj;
    }
    let own = read_i32(Path::new("/proc/self/oom_score_adj")).unwrap_or(0);
    adj.max(own)
}

/// Where a run's container goes among the cgroups, and its limits.
#[derive(Debug, Clone)]
pub struct Placement {
    /// `linux.cgroupsPath`.
    pub path: String,
    /// `linux.resources`.
    pub resources: Value,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// The `cgroup.procs` files the container's process is written to between create and
    /// start: the container's cgroup in each hierarchy (where runc put it already, a no-op;
    /// where `path` names another cgroup, the move that puts it under its pod).
    pub join: Vec<PathBuf>,
}

impl Placement {
    /// The container's place under its pod cgroup, `<pod cgroup>/<container name>` as the
    /// process runtime has it (so `/stats/summary` reads it the same way), with the limits
    /// of `resources`.
    pub fn under_pod(
        cgroup: &crate::cgroup::Cgroup,
        resources: &crate::cgroup::Resources,
    ) -> Result<Placement, crate::cgroup::Error> {
        let v2 = matches!(cgroup, crate::cgroup::Cgroup::V2 { .. });
        Ok(Placement {
            path: cgroup.oci_path()?,
            resources: resources.oci(cgroup.accounts_swap(), v2),
            oom_score_adj: resources.oom_score_adj.map(settable_oom_score_adj),
            join: cgroup.procs_files(),
        })
    }

    /// Without pod cgroups (`--cgroups-per-qos=false`): runc's own cgroup
    /// `/<namespace>/<id>`, no limits (as the process runtime enforces none then).
    pub fn unmanaged(namespace: &str, id: &str) -> Placement {
        Placement {
            path: format!("/{namespace}/{id}"),
            resources: json!({"devices": [{"allow": false, "access": "rwm"}]}),
            oom_score_adj: None,
            join: Vec::new(),
        }
    }
}

fn run_dir(sandbox: &Sandbox, name: &str, attempt: u32) -> PathBuf {
    sandbox
        .dir
        .join("containers")
        .join(name)
        .join(attempt.to_string())
}

/// The containerd ID of a run: `trellis-<pod uid>-<container>-<attempt>`, shortened with a
/// digest where it would pass containerd's 76 characters.
pub fn container_id(pod_uid: &str, name: &str, attempt: u32) -> String {
    let uid: String = pod_uid.chars().filter(|c| *c != '-').collect();
    let id = format!("trellis-{uid}-{name}-{attempt}");
    if id.len() <= 76 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return id;
    }
    let d = image::digest_of(name.as_bytes());
    let short: String = uid.chars().take(32).collect();
    format!("trellis-{short}-{}-{attempt}", &d[7..23])
}

fn read_i32(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).ok()?.modified().ok()
}

/// Whether a containerd start of the pod directory's is still under way: a run recorded
/// ([`RUN_FILE`]) with neither a process ([`PID_FILE`]) nor an end ([`EXIT_FILE`]) yet.
/// Bounded: a start ends one way or the other within [`START_TIMEOUT`].
pub fn any_starting(pod_dir: &Path) -> bool {
    let Ok(containers) = std::fs::read_dir(pod_dir.join("containers")) else {
        return false;
    };
    containers.flatten().any(|c| {
        std::fs::read_dir(c.path()).is_ok_and(|runs| {
            runs.flatten().any(|r| {
                let d = r.path();
                d.join(RUN_FILE).exists()
                    && !d.join(PID_FILE).exists()
                    && !d.join(EXIT_FILE).exists()
            })
        })
    })
}

fn read_state(dir: &Path) -> Option<RunState> {
    let created = mtime(&dir.join(RUN_FILE)).or_else(|| mtime(dir))?;
    let started = mtime(&dir.join(PID_FILE)).unwrap_or(created);
    if let Some(code) = read_i32(&dir.join(EXIT_FILE)) {
        return Some(RunState::Exited {
            code,
            started,
            finished: mtime(&dir.join(EXIT_FILE)).unwrap_or(started),
            start_error: std::fs::read_to_string(dir.join(START_ERROR_FILE)).ok(),
            // Written by the waiter from the container cgroup's OOM kill count.
            oom_killed: dir.join(crate::shim::OOM_FILE).exists(),
        });
    }
    Some(RunState::Running {
        pid: read_i32(&dir.join(PID_FILE)),
        started,
    })
}

/// Percent-encoding of a URI query value.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stdout/stderr URI of a run: containerd's shim starts `trellis container-log <spec>`
/// with the container's output on fds 3 and 4. With `stdin` (the run directory and how its
/// stdin is kept) the logger also feeds the task's stdin ([`TASK_STDIN_FIFO`]):
/// `<size>:<files>:stdin-<open|once>:<run dir>\n<log>`.
fn log_uri(
    logger: &Path,
    log: &Path,
    rotation: Rotation,
    stdin: Option<(&Path, crate::shim::StdinMode)>,
) -> String {
    let feed = stdin
        .map(|(dir, mode)| {
            let mode = match mode {
                crate::shim::StdinMode::Open => "open",
                crate::shim::StdinMode::Once => "once",
            };
            format!("stdin-{mode}:{}\n", dir.display())
        })
        .unwrap_or_default();
    let spec = format!(
        "{}:{}:{feed}{}",
        rotation.max_size(),
        rotation.max_files(),
        log.display()
    );
    format!(
        "binary://{}?container-log={}",
        query_escape(&logger.to_string_lossy()),
        query_escape(&spec)
    )
}

/// A run's stdio besides its log. `tty: true` gives the task a terminal (runc's console,
/// whose output containerd's shim passes to the logging binary as stdout); with `stdin: true`
/// too, its input comes from [`TASK_STDIN_FIFO`], fed by the logging binary from the run's
/// `stdin` FIFO, open across attaches. containerd 1.6's shim gives a task whose output goes to a logging binary no
/// stdin without a terminal, so `stdin: true` alone gets none.
#[derive(Debug, Clone, Default)]
struct Stdio {
    terminal: bool,
    stdin: Option<(PathBuf, crate::shim::StdinMode)>,
}

impl Stdio {
    /// The stdio of `run` in `dir`, with its FIFOs made.
    fn of(run: &ContainerRun, dir: &Path) -> Result<Stdio, String> {
        let mut s = Stdio {
            terminal: run.tty,
            stdin: None,
        };
        if let (true, Some(_)) = (run.tty, run.stdin) {
            for name in [crate::shim::STDIN_FIFO, TASK_STDIN_FIFO] {
                let p = dir.join(name);
                let _ = std::fs::remove_file(&p);
                nix::unistd::mkfifo(
                    &p,
                    nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
                )
                .map_err(|e| format!("cannot make the FIFO {}: {e}", p.display()))?;
            }
            // With a terminal the stdin stays open across attaches also with `stdinOnce`,
            // as containerd's CRI plugin keeps it (its attach closes stdin for `stdinOnce`
            // only without a tty): the shell ends when it is told to, not when a client goes.
            s.stdin = Some((dir.to_path_buf(), crate::shim::StdinMode::Open));
        }
        Ok(s)
    }

    fn feed(&self) -> Option<(&Path, crate::shim::StdinMode)> {
        self.stdin.as_ref().map(|(d, m)| (d.as_path(), *m))
    }

    fn task_stdin(&self) -> String {
        self.stdin
            .as_ref()
            .map(|(d, _)| d.join(TASK_STDIN_FIFO).to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Gives a spec's process a terminal, with `TERM=xterm` when it sets none (as containerd's CRI
/// plugin does).
fn set_terminal(spec: &mut Value) {
    spec["process"]["terminal"] = json!(true);
    let mut env = spec["process"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !env
        .iter()
        .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
    {
        env.push(json!("TERM=xterm"));
        spec["process"]["env"] = json!(env);
    }
}

/// The docker default capabilities, as containerd's default spec has them.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What the container runs: upstream's rule for `command`/`args` against the image's
/// `Entrypoint`/`Cmd` (a command replaces both; args alone replace `Cmd`).
pub fn process_args(
    command: Option<&[OsString]>,
    args: Option<&[OsString]>,
    img: &image::RunConfig,
) -> Vec<String> {
    let s = |v: &[OsString]| -> Vec<String> {
        v.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    };
    let command = command.filter(|c| !c.is_empty());
    let args = args.filter(|a| !a.is_empty());
    match (command, args) {
        (Some(c), Some(a)) => [s(c), s(a)].concat(),
        (Some(c), None) => s(c),
        (None, Some(a)) => [img.entrypoint.clone().unwrap_or_default(), s(a)].concat(),
        (None, None) => [
            img.entrypoint.clone().unwrap_or_default(),
            img.cmd.clone().unwrap_or_default(),
        ]
        .concat(),
    }
}

/// The container's environment: the image's, then the pod's (the kubelet's default PATH does
/// not replace an image's own).
pub fn process_env(run_env: &[(String, String)], img: &image::RunConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = img
        .env
        .iter()
        .flatten()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let image_path = env.iter().any(|(k, _)| k == "PATH");
    for (k, v) in run_env {
        if k == "PATH" && image_path && v == crate::pods::DEFAULT_PATH {
            continue;
        }
        env.retain(|(o, _)| o != k);
        env.push((k.clone(), v.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid and gid of an image's `User` (numeric, or root).
fn user(u: Option<&str>) -> Result<(u32, u32), String> {
    let u = u.unwrap_or("").trim();
    if u.is_empty() || u == "root" {
        return Ok((0, 0));
    }
    let (a, b) = u.split_once(':').unwrap_or((u, ""));
    let uid: u32 = a
        .parse()
        .map_err(|_| format!("image user {u:?}: only numeric users are supported"))?;
    let gid: u32 = if b.is_empty() {
        uid
    } else {
        b.parse()
            .map_err(|_| format!("image user {u:?}: only numeric groups are supported"))?
    };
    Ok((uid, gid))
}

/// The OCI runtime spec of one run.
#[allow(clippy::too_many_arguments)]
pub fn spec(
    placement: &Placement,
    sandbox: &Sandbox,
    netns: &Path,
    args: Vec<String>,
    env: Vec<String>,
    cwd: &str,
    uid_gid: (u32, u32),
) -> Value {
    let bind = |dest: &str, src: &Path, ro: bool| {
        json!({"destination": dest, "type": "bind", "source": src,
            "options": ["rbind", "rprivate", if ro { "ro" } else { "rw" }]})
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        bind("/etc/hosts", &sandbox.dir.join("etc-hosts"), false),
        bind("/etc/resolv.conf", &sandbox.dir.join("resolv.conf"), false),
        bind("/etc/hostname", &sandbox.dir.join("hostname"), false),
    ];
    if let Some(sa) = &sandbox.service_account {
        mounts.push(bind(crate::serviceaccount::MOUNT_PATH, sa, true));
    }
    let caps: Vec<&str> = CAPS.to_vec();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid_gid.0, "gid": uid_gid.1},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": sandbox.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": netns}
            ],
            "cgroupsPath": placement.path,
            "resources": placement.resources,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"]
        }
    });
    if let Some(adj) = placement.oom_score_adj {
        spec["process"]["oomScoreAdj"] = adj.into();
    }
    spec
}

/// Every capability, in the kernel's numbering (`CAP_CHECKPOINT_RESTORE` is 40).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities a privileged container gets: those of the kubelet's own bounding set
/// (`CapBnd` of /proc/self/status), as containerd's CRI plugin takes its own — runc cannot
/// give more ("unable to apply caps"), and in a sandbox that is less than the kernel has.
pub fn cap_names() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    caps_of(&status)
}

/// The capabilities named by the `CapBnd:` line of a /proc status text (every one we know of
/// when it has none).
fn caps_of(status: &str) -> Vec<&'static str> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// `securityContext.privileged: true`, as containerd's CRI plugin makes it: every capability
/// in `caps` (all the kubelet has: [`cap_names`]), no `noNewPrivileges`, every device allowed and the node's `/dev` in place of the
/// private one, nothing masked or read-only in /proc, /sys writable. The deploy/ agents need it
/// (iptables, ipset and nft over netlink want CAP_NET_ADMIN; sysctls want a writable /proc/sys).
pub fn make_privileged(spec: &mut Value, caps: &[&str]) {
    let caps: Vec<Value> = caps.iter().map(|c| json!(c)).collect();
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts.iter_mut() {
            match m["destination"].as_str() {
                Some("/sys") => {
                    if let Some(opts) = m["options"].as_array_mut() {
                        opts.retain(|o| o != "ro");
                        opts.push(json!("rw"));
                    }
                }
                // The node's devices (runc then makes none of its own).
                Some("/dev") => {
                    *m = json!({"destination": "/dev", "type": "bind", "source": "/dev",
                        "options": ["rbind", "rprivate", "rw"]});
                }
                _ => {}
            }
        }
    }
}

/// The container's hostPath volumes as bind mounts (one at a destination the runtime mounts
/// already, such as /etc/hosts, replaces it).
pub fn add_host_mounts(spec: &mut Value, host: &[crate::volumes::HostMount]) {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return;
    };
    for h in host {
        let dest = h.container.to_string_lossy().into_owned();
        mounts.retain(|m| m["destination"].as_str() != Some(dest.as_str()));
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": h.host,
            "options": ["rbind", "rprivate", if h.read_only { "ro" } else { "rw" }]}),
        );
    }
}

impl ContainerdRuntime {
    /// Starts the runtime's thread, connects to containerd (it must answer), and starts the
    /// reconcile loop that adopts running containers and removes orphans.
    pub async fn start(s: Settings) -> Result<ContainerdRuntime, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("containerd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            })
            .map_err(|e| Error::io("start the containerd thread", e))?;
        let handle = rx
            .recv()
            .map_err(|_| Error::Other("the containerd thread ended".into()))?
            .map_err(|e| Error::io("start the containerd thread's runtime", e))?;
        let (address, namespace) = (s.address.clone(), s.namespace.clone());
        let conn = handle
            .spawn(async move { Conn::connect(&address, &namespace).await })
            .await
            .map_err(|e| Error::Other(format!("connecting to containerd: {e}")))?
            .map_err(|e| Error::Other(e.to_string()))?;
        let starts = tokio::sync::Semaphore::new(s.max_parallel_starts.max(1));
        let inner = Arc::new(Inner {
            conn,
            s,
            busy: Mutex::new(HashSet::new()),
            images: Mutex::new(HashMap::new()),
            starts,
            lease: tokio::sync::Mutex::new(None),
            last_used: Mutex::new(HashMap::new()),
            holds: gc::ImageHolds::default(),
            image_ops: tokio::sync::Mutex::new(()),
        });
        let i = inner.clone();
        handle.spawn(async move {
            loop {
                i.reconcile().await;
                tokio::time::sleep(RECONCILE).await;
            }
        });
        if inner.s.images.gc.enabled() {
            let i = inner.clone();
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(i.s.images.gc.period).await;
                    i.image_gc().await;
                }
            });
        }
        Ok(ContainerdRuntime { inner, handle })
    }

    /// Runs `fut` on the runtime's thread and waits for it (bounded).
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        self.block_for(Duration::from_secs(120), fut)
    }

    /// Runs `fut` on the runtime's thread and waits for it, `limit` at most.
    fn block_for<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = move || rx.recv_timeout(limit).ok();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

/// A failed start: recorded as a run that exited 128 with its reason (as the process runtime
/// records a missing executable).
fn record_start_error(dir: &Path, why: &str) {
    let _ = write_atomic(dir, START_ERROR_FILE, why);
    let _ = write_atomic(dir, EXIT_FILE, "128");
}

impl Inner {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.conn.request(msg)
    }

    /// The lease a container's snapshot is prepared under, safe from containerd's GC until
    /// the container references it. One lease serves every start for [`LEASE_TURN`], then a
    /// new one is taken; an old one is never deleted but expires by itself an hour after it
    /// was made ([`Conn::lease`]). A lease per start cost two writes of containerd's database
    /// (each an fsync) and a garbage collection per delete, on every container's start path.
    async fn lease(&self) -> Result<String, CtrdError> {
        let mut held = self.lease.lock().await;
        if let Some((id, at)) = held.as_ref()
            && at.elapsed() < LEASE_TURN
        {
            return Ok(id.clone());
        }
        let id = self.conn.lease("containers").await?;
        *held = Some((id.clone(), std::time::Instant::now()));
        Ok(id)
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy.lock().is_ok_and(|b| b.contains(id))
    }

    fn set_busy(&self, id: &str, on: bool) -> bool {
        match self.busy.lock() {
            Ok(mut b) if on => b.insert(id.to_string()),
            Ok(mut b) => b.remove(id),
            Err(_) => false,
        }
    }

    /// Marks `image` used by a start or pull (`on`), or no longer. True when an image GC
    /// round is removing it right now: wait for [`gc::ImageHolds::removal_done`] before using it.
    fn hold(&self, image: &str, on: bool) -> bool {
        let key = image::normalize(image);
        let removing = if on {
            self.holds.hold(&key)
        } else {
            self.holds.release(&key);
            false
        };
        if let Ok(mut m) = self.last_used.lock() {
            m.insert(key, SystemTime::now());
        }
        removing
    }

    /// One round of image garbage collection (see [`super::gc`]).
    async fn image_gc(&self) {
        let p = &self.s.images.gc;
        let _ops = self.image_ops.lock().await;
        let (usage, capacity) = match gc::measure(&self.conn, p).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "image garbage collection: measuring the image filesystem");
                return;
            }
        };
        let Some(to_free) = gc::to_free(usage, capacity, p.high, p.low) else {
            return;
        };
        // An image a start or pull used since this round began is kept (upstream's
        // `lastUsed >= freeTime` rule): one that took and released its hold between the
        // snapshots below is in neither of them, but it is in `last_used`.
        let round_start = SystemTime::now();
        let mut in_use = match gc::images_in_use(&self.conn).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "image garbage collection: listing containers");
                return;
            }
        };
        in_use.extend(self.holds.in_use());
        let last_used = self.last_used.lock().map(|m| m.clone()).unwrap_or_default();
        let all = match gc::candidates(&self.conn, &last_used).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "image garbage collection: listing images");
                return;
            }
        };
        let chosen = gc::choose(all, &in_use, to_free, p.min_age, SystemTime::now());
        let mut freed = 0u64;
        for c in &chosen {
            // A start may have taken it since the snapshot: claimed under the holds' lock, so
            // from here on a start of it waits for the removal to end.
            let used_since = self
                .last_used
                .lock()
                .ok()
                .and_then(|m| m.get(&c.name).copied())
                .is_some_and(|t| t >= round_start);
            if used_since || !self.holds.begin_removal(&c.name) {
                tracing::debug!(image = %c.name, "image garbage collection: kept, a start took it");
                continue;
            }
            // Bounded: a delete that hangs must not hold pulls (they wait for `image_ops`).
            let removed = match tokio::time::timeout(
                GC_REMOVE_TIMEOUT,
                gc::remove(&self.conn, &c.name),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(CtrdError::Io {
                    what: format!("delete image {}", c.name),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                }),
            };
            if removed.is_ok()
                && let Ok(mut m) = self.images.lock()
            {
                m.remove(&c.name);
            }
            self.holds.end_removal();
            match removed {
                Ok(()) => {
                    freed += c.size;
                    tracing::info!(image = %c.name, bytes = c.size, "image garbage collection: removed an unused image");
                }
                Err(e) => {
                    tracing::warn!(image = %c.name, error = %e, "image garbage collection: removing an image")
                }
            }
        }
        if freed < to_free {
            tracing::warn!(
                usage,
                capacity,
                wanted = to_free,
                freed,
                "image garbage collection: could not free enough (the rest is in use or too young)"
            );
        }
    }

    async fn resolve(&self, reference: &str) -> Result<Resolved, CtrdError> {
        let key = image::normalize(reference);
        if let Some(r) = self.images.lock().ok().and_then(|m| m.get(&key).cloned()) {
            // Still the same image? (a re-import moves the name)
            let now = containerd_client::services::v1::images_client::ImagesClient::new(
                self.conn.channel.clone(),
            )
            .get(self.req(containerd_client::services::v1::GetImageRequest { name: key.clone() }))
            .await;
            if let Ok(now) = now
                && now
                    .into_inner()
                    .image
                    .and_then(|i| i.target)
                    .is_some_and(|t| t.digest == r.digest)
            {
                return Ok(r);
            }
        }
        let r = image::resolve(&self.conn, reference, &self.s.snapshotter).await?;
        if let Ok(mut m) = self.images.lock() {
            m.insert(key, r.clone());
        }
        Ok(r)
    }

    /// Creates and starts one run from its resolved image. Errors before the task starts are
    /// the caller's to record.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        self: &Arc<Self>,
        sandbox: &Sandbox,
        run: &ContainerRun,
        img: &Resolved,
        placement: &Placement,
        id: &str,
        dir: &Path,
        log: &Path,
        steps: &mut Steps,
    ) -> Result<u32, StartFailure> {
        let reference = run.image.clone().unwrap_or_default();
        let args = process_args(run.command.as_deref(), run.args.as_deref(), &img.config);
        if args.is_empty() {
            return Err(StartFailure(format!(
                "no command specified: the pod gives none and image {reference:?} has no entrypoint or cmd"
            )));
        }
        let uid_gid = user(img.config.user.as_deref()).map_err(StartFailure)?;
        let cwd = run
            .workdir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| img.config.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let netns = sandbox
            .netns
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/ns/net", std::process::id())));
        let _ = std::fs::write(
            sandbox.dir.join("hostname"),
            format!("{}\n", sandbox.hostname),
        );
        let mut spec = spec(
            placement,
            sandbox,
            &netns,
            args,
            process_env(&run.env, &img.config),
            &cwd,
            uid_gid,
        );
        if run.privileged {
            make_privileged(&mut spec, &cap_names());
        }
        add_host_mounts(&mut spec, &run.host_mounts);
        let stdio = Stdio::of(run, dir).map_err(StartFailure)?;
        if stdio.terminal {
            set_terminal(&mut spec);
        }
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), self.s.node.clone()),
            (LABEL_RUN.to_string(), dir.to_string_lossy().into_owned()),
        ]);
        let other = |e: CtrdError| StartFailure(e.to_string());
        steps.mark("spec");
        let lease = self.lease().await.map_err(other)?;
        steps.mark("lease");
        self.make(
            id,
            img,
            spec,
            labels,
            &lease,
            log,
            &stdio,
            &placement.join,
            steps,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn make(
        self: &Arc<Self>,
        id: &str,
        img: &Resolved,
        spec: Value,
        labels: HashMap<String, String>,
        lease: &str,
        log: &Path,
        stdio: &Stdio,
        join: &[PathBuf],
        steps: &mut Steps,
    ) -> Result<u32, StartFailure> {
        let other = |what: &str, s: tonic::Status| {
            StartFailure(CtrdError::rpc(what.to_string(), s).to_string())
        };
        let mounts = SnapshotsClient::new(self.conn.channel.clone())
            .prepare(self.conn.request_leased(
                PrepareSnapshotRequest {
                    snapshotter: self.s.snapshotter.clone(),
                    key: id.to_string(),
                    parent: img.chain_id.clone(),
                    labels: labels.clone(),
                },
                Some(lease),
            ))
            .await
            .map_err(|s| {
                if let Ok(mut m) = self.images.lock() {
                    m.clear();
                }
                other("prepare the container's snapshot", s)
            })?
            .into_inner()
            .mounts;
        steps.mark("snapshot");
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: serde_json::to_vec(&spec).unwrap_or_default(),
        };
        let container = Container {
            id: id.to_string(),
            labels,
            image: img.name.clone(),
            runtime: Some(CtrRuntime {
                name: "io.containerd.runc.v2".into(),
                options: self.s.runc_root.as_deref().map(runc_options),
            }),
            spec: Some(spec),
            snapshotter: self.s.snapshotter.clone(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        ContainersClient::new(self.conn.channel.clone())
            .create(self.conn.request_leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await
            .map_err(|s| other("create the container", s))?;
        steps.mark("container");
        let uri = log_uri(&self.s.logger, log, self.s.rotation, stdio.feed());
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        let created = tasks
            .create(self.conn.request_leased(
                CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    stdin: stdio.task_stdin(),
                    stdout: uri.clone(),
                    stderr: uri,
                    terminal: stdio.terminal,
                    ..Default::default()
                },
                Some(lease),
            ))
            .await
            .map_err(|s| other("create the task", s))?
            .into_inner();
        steps.mark("task_create");
        // runc's init waits for the start: its cgroups are settled before anything of the
        // image runs (memory charged from the first page to the cgroup that limits it).
        for procs in join {
            std::fs::write(procs, created.pid.to_string()).map_err(|e| {
                StartFailure(format!(
                    "move the container's process {} into {}: {e}",
                    created.pid,
                    procs.display()
                ))
            })?;
        }
        steps.mark("cgroup_join");
        let started = tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| other("start the task", s))?;
        steps.mark("task_start");
        Ok(started.into_inner().pid)
    }

    /// Waits for a run's task to end, records its exit code, then removes its task, container
    /// and snapshot.
    async fn wait(self: Arc<Self>, id: String, dir: PathBuf) {
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        let mut tries = 0u32;
        let code: i32 = loop {
            let r = tasks
                .wait(self.req(WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await;
            match r {
                Ok(w) => break w.into_inner().exit_status as i32,
                // The task is gone (containerd lost it): as upstream's ContainerStatusUnknown.
                Err(s) if s.code() == tonic::Code::NotFound => break 137,
                Err(s) => {
                    // containerd restarting: try again, bounded (the reconcile loop takes
                    // over after).
                    tries += 1;
                    tracing::warn!(container = %id, error = %s.message(), "waiting on a containerd task");
                    if tries > 60 {
                        self.set_busy(&id, false);
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        // An OOM kill: the container cgroup's count grew during a run that failed (read
        // before the task goes: runc removes the cgroup it made with it).
        let rec = std::fs::read(dir.join(RUN_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok());
        let oom = rec.as_ref().and_then(|r| {
            let after = crate::cgroup::oom_kills(&r.cgroup)?;
            (code != 0 && after > r.ooms_before?).then_some(after)
        });
        // The task goes before the exit is written: deleting it closes the shim's end of the
        // container's output, the logging binary reads what is left to the end and exits, and
        // the shim waits for that (12 s at most) before it answers — a reader that sees the
        // exit has the whole log. runc removes the container's cgroups meanwhile, so a restart
        // never meets the previous run's. Bounded: a hung shim does not hold the exit.
        let deleted = tokio::time::timeout(
            TASK_DELETE,
            tasks.delete(self.req(DeleteTaskRequest {
                container_id: id.clone(),
            })),
        )
        .await;
        match deleted {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
            Ok(Err(s)) => {
                tracing::warn!(container = %id, error = %s.message(), "deleting a finished containerd task");
            }
            Err(_) => {
                tracing::warn!(container = %id, "deleting a finished containerd task: no answer within {TASK_DELETE:?}");
            }
        }
        // A pod being removed takes its directory meanwhile: nothing is written then (the
        // kubelet's removal retries should this write land in the middle of it).
        if dir.is_dir() && !dir.join(EXIT_FILE).exists() && dir.join(RUN_FILE).is_file() {
            if let Some(n) = oom {
                let _ = write_atomic(&dir, crate::shim::OOM_FILE, &n.to_string());
            }
            let _ = write_atomic(&dir, EXIT_FILE, &code.to_string());
        }
        self.remove(&id, false).await;
        self.set_busy(&id, false);
    }

    /// Removes a container: its task (killed first when `kill`), the container, its snapshot.
    async fn remove(&self, id: &str, kill: bool) {
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        if kill {
            let _ = tasks
                .kill(self.req(KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal: Signal::SIGKILL as u32,
                    all: true,
                }))
                .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tasks.wait(self.req(WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                })),
            )
            .await;
        }
        if let Err(s) = tasks
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(container = %id, error = %s.message(), "deleting a containerd task");
        }
        if let Err(s) = ContainersClient::new(self.conn.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(container = %id, error = %s.message(), "deleting a containerd container");
        }
        self.remove_snapshot(id).await;
    }

    async fn remove_snapshot(&self, key: &str) {
        if let Err(s) = SnapshotsClient::new(self.conn.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.s.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(snapshot = %key, error = %s.message(), "removing a containerd snapshot");
        }
    }

    /// One pass: waits on this node's running containers nobody waits on (adoption after a
    /// restart), removes those whose run is gone or finished, their leftover snapshots, and
    /// ends runs whose container vanished.
    async fn reconcile(self: &Arc<Self>) {
        let filter = format!("labels.\"{LABEL_NODE}\"=={}", self.s.node);
        let listed = ContainersClient::new(self.conn.channel.clone())
            .list(self.req(ListContainersRequest {
                filters: vec![filter.clone()],
            }))
            .await;
        let containers = match listed {
            Ok(l) => l.into_inner().containers,
            Err(s) => {
                tracing::warn!(error = %s.message(), "listing containerd containers");
                return;
            }
        };
        let mut known = HashSet::new();
        for c in containers {
            known.insert(c.id.clone());
            if self.is_busy(&c.id) {
                continue;
            }
            let Some(dir) = c.labels.get(LABEL_RUN).map(PathBuf::from) else {
                continue;
            };
            if !dir.is_dir() || dir.join(EXIT_FILE).exists() {
                tracing::info!(container = %c.id, "removing a container whose run is over");
                if self.set_busy(&c.id, true) {
                    self.remove(&c.id, true).await;
                    self.set_busy(&c.id, false);
                }
            } else if self.set_busy(&c.id, true) {
                tracing::info!(container = %c.id, "adopting a running container");
                tokio::spawn(self.clone().wait(c.id.clone(), dir));
            }
        }
        // Snapshots of ours with no container (a start interrupted between the two).
        let snaps = SnapshotsClient::new(self.conn.channel.clone())
            .list(self.req(ListSnapshotsRequest {
                snapshotter: self.s.snapshotter.clone(),
                filters: vec![filter],
            }))
            .await;
        if let Ok(s) = snaps {
            let mut s = s.into_inner();
            let mut keys = Vec::new();
            while let Ok(Some(m)) = s.message().await {
                // Only active snapshots labelled as this node's (whatever the server does
                // with the filter): never an image's layers.
                keys.extend(
                    m.info
                        .into_iter()
                        .filter(|i| {
                            i.labels.get(LABEL_NODE) == Some(&self.s.node)
                                && i.kind
                                    == containerd_client::services::v1::snapshots::Kind::Active
                                        as i32
                        })
                        .map(|i| i.name),
                );
            }
            for k in keys {
                if !known.contains(&k) && !self.is_busy(&k) {
                    tracing::info!(snapshot = %k, "removing an orphan snapshot");
                    self.remove_snapshot(&k).await;
                }
            }
        }
        // Runs whose container is gone (containerd lost it, or the kubelet died creating it).
        for dir in self.run_dirs() {
            if dir.join(EXIT_FILE).exists() {
                continue;
            }
            let Some(rec) = std::fs::read(dir.join(RUN_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok())
            else {
                continue;
            };
            if known.contains(&rec.id) || self.is_busy(&rec.id) {
                continue;
            }
            if dir.join(PID_FILE).exists() {
                let _ = write_atomic(&dir, EXIT_FILE, "137");
            } else {
                record_start_error(&dir, "the kubelet stopped while creating the container");
            }
        }
    }

    /// Every run directory of this runtime under the pods directory.
    fn run_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let list = |p: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        };
        for pod in list(&self.s.pods_dir) {
            for c in list(&pod.join("containers")) {
                for r in list(&c) {
                    if r.join(RUN_FILE).is_file() {
                        out.push(r);
                    }
                }
            }
        }
        out
    }
}

/// How long each step of one container start took, logged (debug, `containerd start`) so a
/// slow start shows where its time went: the wait for the runtime's thread, the image, the
/// lease, the snapshot, Containers Create, Tasks Create (the shim and `runc create`), the
/// cgroup moves, Tasks Start.
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new(since: std::time::Instant) -> Steps {
        Steps {
            last: since,
            done: Vec::with_capacity(10),
        }
    }

    /// Ends step `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((name, now.saturating_duration_since(self.last)));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: Duration = self.done.iter().map(|(_, d)| *d).sum();
        for (name, d) in &self.done {
            write!(f, "{name}={:.1} ", d.as_secs_f64() * 1e3)?;
        }
        write!(f, "total={:.1}", total.as_secs_f64() * 1e3)
    }
}

/// Why a start failed after its run was recorded (a missing image fails before, with no run).
struct StartFailure(String);

impl Runtime for ContainerdRuntime {
    fn start(&self, sandbox: &Sandbox, run: &ContainerRun) -> Result<(), Error> {
        let uid = sandbox
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = container_id(&uid, &run.name, run.attempt);
        let dir = run_dir(sandbox, &run.name, run.attempt);
        let log = self.log_path(sandbox, &run.name, run.attempt);
        let image = run.image.clone().unwrap_or_default();
        let mut steps = Steps::new(std::time::Instant::now());
        // The container's cgroup under its pod's and its limits first, as the process runtime
        // makes them: a limit the kernel refuses leaves no run behind. runc writes the same
        // limits again from the spec.
        let (placement, cgroup_dirs, ooms_before) = match &sandbox.cgroup {
            Some(pod) => {
                let c = pod.child(&run.name);
                c.create()?;
                c.apply(&run.resources)?;
                let dirs = c.dirs();
                let before = crate::cgroup::oom_kills(&dirs);
                (Placement::under_pod(&c, &run.resources)?, dirs, before)
            }
            None => (
                Placement::unmanaged(&self.inner.conn.namespace, &id),
                Vec::new(),
                None,
            ),
        };
        steps.mark("cgroup");
        if !self.inner.set_busy(&id, true) {
            return Err(Error::Other(format!(
                "container {id} is being started already"
            )));
        }
        // The image first: a missing one makes no run at all (the kubelet backs off). Held
        // from here until the container exists (image GC keeps it).
        let removing = self.inner.hold(&image, true);
        let release = {
            let (inner, image) = (self.inner.clone(), image.clone());
            move || {
                inner.hold(&image, false);
            }
        };
        let inner = self.inner.clone();
        let img = match self.block(async move {
            // GC is deleting this very image: let it finish, then it is gone and the start
            // fails into a pull, rather than a container on an image deleted under it.
            if removing {
                let key = image::normalize(&image);
                if !inner
                    .holds
                    .removal_done(&key, Duration::from_secs(60))
                    .await
                {
                    return Err(CtrdError::Io {
                        what: format!("image {image}: waiting for its garbage collection"),
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    });
                }
            }
            inner.resolve(&image).await
        }) {
            Some(Ok(img)) => img,
            Some(Err(e)) => {
                release();
                self.inner.set_busy(&id, false);
                return Err(Error::ImagePull {
                    image: run.image.clone().unwrap_or_default(),
                    message: e.to_string(),
                });
            }
            None => {
                release();
                self.inner.set_busy(&id, false);
                return Err(Error::Other(format!(
                    "containerd did not answer for image {:?} within 120 s",
                    run.image.clone().unwrap_or_default()
                )));
            }
        };
        steps.mark("image");
        // The run exists from here on: until its process has started (`pid`) or failed
        // (`exit`), the kubelet sees it being created, as the process runtime's shim runs.
        let record = || -> Result<(), Error> {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
            }
            crate::runtime::prune_logs(&log, run.attempt);
            let rec = RunRecord {
                id: id.clone(),
                image: run.image.clone().unwrap_or_default(),
                cgroup: cgroup_dirs,
                ooms_before,
            };
            write_atomic(
                &dir,
                RUN_FILE,
                &serde_json::to_string(&rec).unwrap_or_default(),
            )
            .map_err(|e| Error::io(format!("write {RUN_FILE}"), e))
        };
        if let Err(e) = record() {
            release();
            self.inner.set_busy(&id, false);
            return Err(e);
        }
        steps.mark("rundir");
        // Created and started on the runtime's thread, in the background: the pod's pass goes
        // on (and gives up its permit) while containerd works, and the run reads as being
        // created (no `pid`, not Ready) until its process exists; the pod's worker is woken
        // then. At most `max_parallel_starts` at once, in the order the starts came, so pods
        // that came first finish first (all at once would only share containerd's and runc's
        // CPU among more starts, each taking longer). Starts used to run inside the pod's
        // pass, holding one of the pass permits for a second or more each: sandboxes and
        // status passes (the probes' Ready) of other pods queued behind them.
        let inner = self.inner.clone();
        let (sb, r, d) = (sandbox.clone(), run.clone(), dir.clone());
        let wake = sandbox.wake.clone();
        self.handle.spawn(async move {
            let turn = inner.starts.acquire().await;
            steps.mark("queue");
            let made = tokio::time::timeout(
                START_TIMEOUT,
                inner.create(&sb, &r, &img, &placement, &id, &d, &log, &mut steps),
            )
            .await
            .unwrap_or_else(|_| {
                Err(StartFailure(format!(
                    "containerd did not create and start the container within {} s",
                    START_TIMEOUT.as_secs()
                )))
            });
            drop(turn);
            release();
            match made {
                Ok(pid) => match write_atomic(&d, PID_FILE, &pid.to_string()) {
                    Ok(()) => {
                        tracing::debug!(container = %id, steps = %steps, "containerd start");
                        tokio::spawn(inner.clone().wait(id, d));
                    }
                    // The run directory went while the start was under way (the pod was torn
                    // down): nobody would own the process, so it goes too.
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "run directory gone during the start: removing the container");
                        inner.remove(&id, true).await;
                        inner.set_busy(&id, false);
                    }
                },
                Err(StartFailure(why)) => {
                    inner.remove(&id, true).await;
                    // Recorded as a failed run: the kubelet reports it and backs off.
                    record_start_error(&d, &why);
                    inner.set_busy(&id, false);
                }
            }
            if let Some(w) = wake {
                w.notify_one();
            }
        });
        Ok(())
    }

    fn image_present(&self, image: &str) -> Option<Result<bool, Error>> {
        let inner = self.inner.clone();
        let name = image::normalize(image);
        let got = self.block(async move { image::current_target(&inner.conn, &name).await });
        Some(match got {
            Some(Ok(t)) => Ok(t.is_some()),
            Some(Err(e)) => Err(Error::Other(e.to_string())),
            None => Err(Error::Other(format!(
                "containerd did not answer for image {image:?} within 120 s"
            ))),
        })
    }

    fn pull_image(&self, image: &str) -> Result<u64, Error> {
        let inner = self.inner.clone();
        let reference = image.to_string();
        // The pull's own limit starts once it has its turn (pulls go one at a time), and ends
        // it: the timed-out future is dropped, so its requests are cancelled, not left running.
        // The caller waits a little longer than the two bounds, which end the task itself.
        let limit = PULL_QUEUE_LIMIT + PULL_TIMEOUT + Duration::from_secs(10);
        let got = self.block_for(limit, async move {
            // A queued pull whose caller has stopped waiting must not stay queued for ever.
            let Ok(_ops) = tokio::time::timeout(PULL_QUEUE_LIMIT, inner.image_ops.lock()).await
            else {
                return None;
            };
            inner.hold(&reference, true);
            let r = tokio::time::timeout(
                PULL_TIMEOUT,
                pull::pull(
                    &inner.conn,
                    &inner.s.images.registries,
                    &reference,
                    &inner.s.snapshotter,
                ),
            )
            .await;
            inner.hold(&reference, false);
            Some(r)
        });
        match got.flatten() {
            Some(Ok(Ok(p))) => {
                tracing::info!(image, digest = %p.image.digest, bytes = p.bytes, "pulled an image");
                Ok(p.bytes)
            }
            Some(Ok(Err(e))) => Err(Error::ImagePull {
                image: image.to_string(),
                message: e.to_string(),
            }),
            Some(Err(_elapsed)) => Err(Error::ImagePull {
                image: image.to_string(),
                message: format!(
                    "the pull did not end within {} s (cancelled)",
                    PULL_TIMEOUT.as_secs()
                ),
            }),
            None => Err(Error::ImagePull {
                image: image.to_string(),
                message: format!(
                    "the pull waited more than {} s behind other pulls",
                    PULL_QUEUE_LIMIT.as_secs()
                ),
            }),
        }
    }

    fn latest(&self, sandbox: &Sandbox, name: &str) -> Option<(u32, RunState)> {
        let dir = sandbox.dir.join("containers").join(name);
        let attempt = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .max()?;
        Some((attempt, read_state(&dir.join(attempt.to_string()))?))
    }

    fn state(&self, sandbox: &Sandbox, name: &str, attempt: u32) -> Option<RunState> {
        read_state(&run_dir(sandbox, name, attempt))
    }

    fn signal(&self, sandbox: &Sandbox, name: &str, signal: Signal) {
        if let Some((attempt, RunState::Running { pid, .. })) = self.latest(sandbox, name) {
            let pid = pid.or_else(|| read_i32(&run_dir(sandbox, name, attempt).join(PID_FILE)));
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

    fn scheme(&self) -> &'static str {
        "containerd"
    }

    fn mounts_host_paths(&self) -> bool {
        true
    }

    fn wakes_on_start(&self) -> bool {
        true
    }
}

/// `trellis container-log <max size>:<max files>:<path>`: the logging binary containerd's shim
/// starts for a run (`binary://` stdio). It copies the container's stdout (fd 3) and stderr
/// (fd 4) into the CRI-format log, rotating it, and closes fd 5 once the log is open (the shim
/// waits for that). Returns the exit code.
/// The stdin a logging binary feeds: the run directory and how stdin is kept.
type Feed = Option<(PathBuf, crate::shim::StdinMode)>;

/// The logging binary's spec: size, files, the stdin to feed, log.
fn parse_logger_spec(spec: &str) -> Option<(&str, &str, Feed, &str)> {
    let mut parts = spec.splitn(3, ':');
    let (size, files, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let mode = |m: &str| match m {
        "open" => Some(crate::shim::StdinMode::Open),
        "once" => Some(crate::shim::StdinMode::Once),
        _ => None,
    };
    match rest.strip_prefix("stdin-") {
        Some(feed) => {
            let (head, path) = feed.split_once('\n')?;
            let (m, dir) = head.split_once(':')?;
            Some((size, files, Some((PathBuf::from(dir), mode(m)?)), path))
        }
        None => Some((size, files, None, rest)),
    }
}

pub fn logger_main(args: &[OsString]) -> i32 {
    let Some(spec) = args.first().and_then(|a| a.to_str()) else {
        eprintln!("container-log: usage: container-log <max size>:<max files>:<path>");
        return 2;
    };
    let Some((size, files, feed, path)) = parse_logger_spec(spec) else {
        eprintln!("container-log: bad spec {spec:?}");
        return 2;
    };
    let rotation = match (size.parse::<u64>(), files.parse::<u32>()) {
        (Ok(s), Ok(f)) => Rotation::new(s, f).unwrap_or_default(),
        _ => Rotation::default(),
    };
    let writer = match crate::logfile::Writer::open(Path::new(path), rotation) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!("container-log: cannot open {path}: {e}");
            return 1;
        }
    };
    // The shim passes the container's stdout and stderr as fds 3 and 4 and waits for fd 5 to
    // close. The pipes are reopened through /proc (no unsafe ownership of raw descriptors),
    // then the inherited descriptors are closed.
    let open = |fd: i32| std::fs::File::open(format!("/proc/self/fd/{fd}"));
    let (out, err) = match (open(3), open(4)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("container-log: the container's output (fds 3 and 4): {e}");
            return 1;
        }
    };
    // Deleting the task closes the shim's end of the pipes and sends SIGTERM at once; the
    // shim then waits (12 s) for this process to exit. SIGTERM is held pending, never acted
    // on: what is still in the pipes is read to their end first, and the shim's answer to the
    // delete follows the log's last line. Blocked before the readers start (they inherit it)
    // and before fd 5 closes (the shim may delete the task any time after).
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(Signal::SIGTERM);
    if let Err(e) = term.thread_block() {
        eprintln!("container-log: blocking SIGTERM: {e}");
    }
    for fd in [3, 4, 5] {
        let _ = nix::unistd::close(fd);
    }
    if let Some((dir, mode)) = feed {
        // The terminal's input: the shim reads the task's FIFO from the task's creation on
        // (so this open finds it); held open as long as this runs, so the shim never sees its
        // end between two attaches. Once fed (`stdinOnce`), it closes.
        std::thread::spawn(move || {
            if let Ok(sink) = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(TASK_STDIN_FIFO))
            {
                crate::shim::feed_stdin(&dir.join(crate::shim::STDIN_FIFO), Box::new(sink), mode);
            }
        });
    }
    let pump = |mut from: std::fs::File, stream: crate::logfile::Stream| {
        let w = writer.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; crate::logfile::MAX_ENTRY];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut w) = w.lock() {
                            let _ = w.write(stream, jiff::Timestamp::now(), &buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
    };
    let a = pump(out, crate::logfile::Stream::Stdout);
    let b = pump(err, crate::logfile::Stream::Stderr);
    let _ = a.join();
    let _ = b.join();
    // The rotated files being gzipped in the background are finished before this goes.
    if let Ok(mut w) = writer.lock() {
        w.wait_compacted();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn runc_options_carry_the_root_as_field_7() {
        let short = runc_options(Path::new("/r"));
        assert_eq!(short.type_url, "containerd.runc.v1.Options");
        assert_eq!(short.value, [0x3a, 2, b'/', b'r']);
        // A length over 127 takes a two-byte varint.
        let long = format!("/{}", "x".repeat(199));
        let any = runc_options(Path::new(&long));
        assert_eq!(any.value[..3], [0x3a, 0xc8, 0x01]);
        assert_eq!(&any.value[3..], long.as_bytes());
    }

    #[test]
    fn command_and_args_combine_with_the_image_as_upstream() {
        let img = image::RunConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["c1".into()]),
            ..Default::default()
        };
        assert_eq!(process_args(None, None, &img), ["/ep", "c1"]);
        assert_eq!(process_args(None, Some(&os(&["a"])), &img), ["/ep", "a"]);
        assert_eq!(process_args(Some(&os(&["/x"])), None, &img), ["/x"]);
        assert_eq!(
            process_args(Some(&os(&["/x"])), Some(&os(&["a"])), &img),
            ["/x", "a"]
        );
        assert!(process_args(None, None, &image::RunConfig::default()).is_empty());
    }

    #[test]
    fn the_pods_env_overrides_the_images_but_not_its_path() {
        let img = image::RunConfig {
            env: Some(vec!["PATH=/img/bin".into(), "A=1".into()]),
            ..Default::default()
        };
        let run = vec![
            ("PATH".to_string(), crate::pods::DEFAULT_PATH.to_string()),
            ("A".to_string(), "2".to_string()),
            ("B".to_string(), "3".to_string()),
        ];
        assert_eq!(process_env(&run, &img), ["PATH=/img/bin", "A=2", "B=3"]);
    }

    #[test]
    fn ids_fit_containerd_and_stay_unique() {
        let id = container_id("0a1b2c3d-0000-0000-0000-000000000001", "web", 3);
        assert_eq!(id, "trellis-0a1b2c3d000000000000000000000001-web-3");
        let long = "x".repeat(63);
        let a = container_id("0a1b2c3d-0000-0000-0000-000000000001", &long, 0);
        let b = container_id("0a1b2c3d-0000-0000-0000-000000000001", &"y".repeat(63), 0);
        assert!(a.len() <= 76 && b.len() <= 76 && a != b, "{a} {b}");
    }

    #[test]
    fn the_log_uri_escapes_its_spec() {
        let u = log_uri(
            Path::new("/usr/bin/trellis"),
            Path::new("/var/lib/k/pods/u/logs/c c/0.log"),
            Rotation::default(),
            None,
        );
        assert!(
            u.starts_with("binary:///usr/bin/trellis?container-log="),
            "{u}"
        );
        assert!(u.contains("%3A") && u.contains("c%20c"), "{u}");
        let fed = log_uri(
            Path::new("/usr/bin/trellis"),
            Path::new("/l/0.log"),
            Rotation::default(),
            Some((Path::new("/r/c/0"), crate::shim::StdinMode::Once)),
        );
        assert!(fed.contains("stdin-once%3A/r/c/0%0A/l/0.log"), "{fed}");
    }

    #[test]
    fn the_logger_spec_names_the_log_and_the_stdin_to_feed() {
        assert_eq!(
            parse_logger_spec("10:5:/l/a:b.log"),
            Some(("10", "5", None, "/l/a:b.log"))
        );
        assert_eq!(
            parse_logger_spec("10:5:stdin-open:/r/c:0\n/l/0.log"),
            Some((
                "10",
                "5",
                Some((PathBuf::from("/r/c:0"), crate::shim::StdinMode::Open)),
                "/l/0.log"
            ))
        );
        assert_eq!(parse_logger_spec("10:5:stdin-never:/r\n/l"), None);
        assert_eq!(parse_logger_spec("10:5:stdin-once:/r"), None);
        assert_eq!(parse_logger_spec("10:5"), None);
    }

    fn sample_spec() -> Value {
        let sb = Sandbox {
            dir: PathBuf::from("/var/lib/k/pods/u"),
            netns: None,
            hostname: "h".into(),
            service_account: None,
            cgroup: None,
            wake: None,
        };
        spec(
            &Placement::unmanaged("trellis", "id"),
            &sb,
            Path::new("/proc/1/ns/net"),
            vec!["/bin/true".into()],
            Vec::new(),
            "/",
            (0, 0),
        )
    }

    #[test]
    fn privileged_gets_every_capability_and_device_and_nothing_masked() {
        let plain = sample_spec();
        let caps = plain["process"]["capabilities"]["bounding"].to_string();
        assert!(!caps.contains("CAP_NET_ADMIN"), "negative control: {caps}");
        assert_ne!(plain["linux"]["maskedPaths"], json!([]));
        let mut s = sample_spec();
        make_privileged(&mut s, &cap_names());
        let caps = s["process"]["capabilities"]["effective"].to_string();
        assert!(
            caps.contains("CAP_NET_ADMIN") && caps.contains("CAP_SYS_ADMIN"),
            "{caps}"
        );
        assert_eq!(s["process"]["noNewPrivileges"], false);
        assert_eq!(s["linux"]["maskedPaths"], json!([]));
        assert_eq!(s["linux"]["readonlyPaths"], json!([]));
        assert_eq!(
            s["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let mounts = s["mounts"].as_array().unwrap();
        let at = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        assert_eq!(at("/dev")["source"], "/dev");
        let sys = at("/sys")["options"].to_string();
        assert!(sys.contains("rw") && !sys.contains("\"ro\""), "{sys}");
        assert_eq!(cap_names()[0], "CAP_CHOWN");
        // A bounding set without CAP_SYS_MODULE (16) and CAP_SYS_BOOT (22): neither is given.
        let bnd = caps_of("Name:\tx\nCapBnd:\t000001ffffbeffff\n");
        assert!(!bnd.contains(&"CAP_SYS_MODULE") && !bnd.contains(&"CAP_SYS_BOOT"));
        assert!(bnd.contains(&"CAP_NET_ADMIN") && bnd.contains(&"CAP_CHECKPOINT_RESTORE"));
        assert_eq!(caps_of("").len(), ALL_CAPS.len());
    }

    #[test]
    fn host_paths_become_bind_mounts() {
        let mut s = sample_spec();
        let n = s["mounts"].as_array().unwrap().len();
        add_host_mounts(
            &mut s,
            &[
                crate::volumes::HostMount {
                    host: "/run/trellis".into(),
                    container: "/run/trellis".into(),
                    read_only: false,
                },
                crate::volumes::HostMount {
                    host: "/node/hosts".into(),
                    container: "/etc/hosts".into(),
                    read_only: true,
                },
            ],
        );
        let mounts = s["mounts"].as_array().unwrap();
        assert_eq!(
            mounts.len(),
            n + 1,
            "/etc/hosts replaced, /run/trellis added"
        );
        let m = mounts
            .iter()
            .find(|m| m["destination"] == "/run/trellis")
            .unwrap();
        assert_eq!(m["type"], "bind");
        assert_eq!(m["options"], json!(["rbind", "rprivate", "rw"]));
        let h = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(h["source"], "/node/hosts");
        assert_eq!(h["options"][2], "ro");
    }

    /// The spec puts the container at its placement: under the pod cgroup, with the limits and
    /// the OOM score the process runtime gives its containers; without pod cgroups runc's own
    /// `/<namespace>/<id>` and no limits.
    #[test]
    fn the_spec_carries_the_cgroup_path_limits_and_oom_score() {
        let sandbox = Sandbox {
            dir: PathBuf::from("/var/lib/k/pods/u1"),
            netns: None,
            hostname: "h".into(),
            service_account: None,
            cgroup: None,
            wake: None,
        };
        let pod = crate::cgroup::Cgroup::V2 {
            mount: "/sys/fs/cgroup".into(),
            dir: "/sys/fs/cgroup/trellis/n1/burstable/podu1".into(),
        };
        let r = crate::cgroup::Resources {
            cpu_shares: Some(102),
            cpu_quota_us: Some(20_000),
            memory_limit: Some(16 << 20),
            pids_limit: None,
            oom_score_adj: Some(999),
        };
        let p = Placement::under_pod(&pod.child("c"), &r).unwrap();
        assert_eq!(
            p.join,
            [PathBuf::from(
                "/sys/fs/cgroup/trellis/n1/burstable/podu1/c/cgroup.procs"
            )]
        );
        let s = spec(
            &p,
            &sandbox,
            Path::new("/run/netns/x"),
            vec!["/bin/sh".into()],
            Vec::new(),
            "/",
            (0, 0),
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/trellis/n1/burstable/podu1/c");
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 16u64 << 20);
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 20_000);
        assert_eq!(s["process"]["oomScoreAdj"], 999);
        let s = spec(
            &Placement::unmanaged("trellis", "trellis-u1-c-0"),
            &sandbox,
            Path::new("/run/netns/x"),
            vec!["/bin/sh".into()],
            Vec::new(),
            "/",
            (0, 0),
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/trellis/trellis-u1-c-0");
        assert!(s["linux"]["resources"].get("memory").is_none());
        assert!(s["process"].get("oomScoreAdj").is_none());
    }

    #[test]
    fn users_are_numeric_or_root() {
        assert_eq!(user(None), Ok((0, 0)));
        assert_eq!(user(Some("root")), Ok((0, 0)));
        assert_eq!(user(Some("1000")), Ok((1000, 1000)));
        assert_eq!(user(Some("1000:5")), Ok((1000, 5)));
        assert!(user(Some("nobody")).is_err());
    }
}
