//! The container shim: `trellis container-shim`, one per container run. It enters the pod's
//! network namespace, makes its own mount and UTS namespaces, bind-mounts the pod's
//! `/etc/hosts` and `/etc/resolv.conf`, sets the hostname, starts the container's process and
//! waits for it, then writes the exit code. The kubelet reads everything back from the run
//! directory, so containers outlive a kubelet restart and their exits are still known.
//!
//! The shim also owns the container's stdio, as containerd's shim does: it writes stdout and
//! stderr to the run's log in the CRI format with a time per entry, rotating it by size
//! ([`crate::logfile`]); with `stdin: true` it feeds the container's stdin from the FIFO
//! `stdin` in the run directory, which `kubectl attach -i` writes to; with `tty: true` the
//! container gets a pseudo-terminal whose size the FIFO `resize` sets.
//!
//! It must run before any other thread exists (unshare of the mount namespace needs a
//! single-threaded process): `trellis` calls [`main`] before starting its async runtime.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::logfile::{self, Rotation, Stream};

/// Files the shim writes into its run directory.
pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit";
pub const SHIM_PID_FILE: &str = "shim.pid";
/// Why the process could not start (the container's waiting reason is StartError / RunContainerError).
pub const START_ERROR_FILE: &str = "start-error";
/// Present when the kernel's OOM killer killed a process of the container's cgroup during the run.
pub const OOM_FILE: &str = "oom";
/// This process's OOM score adjustment.
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";
/// The FIFO a container with `stdin: true` reads its stdin from (attach writes to it).
pub const STDIN_FIFO: &str = "stdin";
/// The FIFO of a `tty: true` container's terminal size (JSON `{"Width":w,"Height":h}`).
pub const RESIZE_FIFO: &str = "resize";

/// How a container's stdin (`stdin: true`) is kept: open across attaches, or closed when the
/// first attach ends (`stdinOnce: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    Open,
    Once,
}

/// What the shim is told to do (argv after `container-shim`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub dir: PathBuf,
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
    pub hosts: Option<PathBuf>,
    pub resolv: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    /// The pod's service-account directory (token, ca.crt, namespace), bind-mounted read-only
    /// at upstream's path; without it that path is covered with an empty read-only tmpfs, so no
    /// container sees a token that is not its own.
    pub service_account: Option<PathBuf>,
    /// How the log is rotated.
    pub rotation: Rotation,
    /// Whether the container has a stdin, and how it is kept.
    pub stdin: Option<StdinMode>,
    /// Whether the container gets a terminal.
    pub tty: bool,
    /// The container's cgroup directories (one per hierarchy): its process joins them before
    /// it execs.
    pub cgroups: Vec<PathBuf>,
    /// The container process's `oom_score_adj` (its QoS class's).
    pub oom_score_adj: Option<i32>,
    pub argv: Vec<OsString>,
}

impl ShimArgs {
    /// The argument list for `trellis container-shim`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![
            "container-shim".into(),
            "--dir".into(),
            self.dir.clone().into(),
        ];
        let mut opt = |flag: &str, v: Option<OsString>| {
            if let Some(v) = v {
                out.push(flag.into());
                out.push(v);
            }
        };
        opt("--netns", self.netns.clone().map(Into::into));
        opt("--hostname", self.hostname.clone().map(Into::into));
        opt("--hosts", self.hosts.clone().map(Into::into));
        opt("--resolv", self.resolv.clone().map(Into::into));
        opt("--workdir", self.workdir.clone().map(Into::into));
        opt("--log", self.log.clone().map(Into::into));
        opt(
            "--service-account",
            self.service_account.clone().map(Into::into),
        );
        if self.rotation != Rotation::default() {
            opt(
                "--log-max-size",
                Some(self.rotation.max_size().to_string().into()),
            );
            opt(
                "--log-max-files",
                Some(self.rotation.max_files().to_string().into()),
            );
        }
        opt(
            "--stdin",
            self.stdin.map(|m| {
                OsString::from(match m {
                    StdinMode::Open => "open",
                    StdinMode::Once => "once",
                })
            }),
        );
        opt("--tty", self.tty.then(|| "true".into()));
        opt(
            "--oom-score-adj",
            self.oom_score_adj.map(|v| v.to_string().into()),
        );
        for c in &self.cgroups {
            opt("--cgroup", Some(c.clone().into()));
        }
        out.push("--".into());
        out.extend(self.argv.iter().cloned());
        out
    }

    /// Parses what [`ShimArgs::to_args`] wrote (without the leading `container-shim`).
    pub fn parse(args: &[OsString]) -> Result<ShimArgs, String> {
        let mut a = ShimArgs::default();
        let (mut max_size, mut max_files) = (None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--" {
                a.argv = it.cloned().collect();
                break;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?
                .clone();
            match flag.to_str() {
                Some("--dir") => a.dir = value.into(),
                Some("--netns") => a.netns = Some(value.into()),
                Some("--hostname") => a.hostname = Some(value.to_string_lossy().into_owned()),
                Some("--hosts") => a.hosts = Some(value.into()),
                Some("--resolv") => a.resolv = Some(value.into()),
                Some("--workdir") => a.workdir = Some(value.into()),
                Some("--log") => a.log = Some(value.into()),
                Some("--service-account") => a.service_account = Some(value.into()),
                Some("--log-max-size") => {
                    max_size = Some(
                        value
                            .to_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or("--log-max-size takes a number of bytes")?,
                    );
                }
                Some("--log-max-files") => {
                    max_files = Some(
                        value
                            .to_str()
                            .and_then(|v| v.parse::<u32>().ok())
                            .ok_or("--log-max-files takes a number")?,
                    );
                }
                Some("--stdin") => {
                    a.stdin = Some(match value.to_str() {
                        Some("open") => StdinMode::Open,
                        Some("once") => StdinMode::Once,
                        _ => return Err("--stdin takes open or once".into()),
                    });
                }
                Some("--tty") => a.tty = value == "true",
                Some("--cgroup") => a.cgroups.push(value.into()),
                Some("--oom-score-adj") => {
                    a.oom_score_adj = Some(
                        value
                            .to_str()
                            .and_then(|v| v.parse::<i32>().ok())
                            .filter(|v| (-1000..=1000).contains(v))
                            .ok_or("--oom-score-adj takes -1000..1000")?,
                    );
                }
                _ => return Err(format!("unknown flag {}", flag.to_string_lossy())),
            }
        }
        if max_size.is_some() || max_files.is_some() {
            let d = Rotation::default();
            a.rotation = Rotation::new(
                max_size.unwrap_or(d.max_size()),
                max_files.unwrap_or(d.max_files()),
            )?;
        }
        if a.dir.as_os_str().is_empty() || a.argv.is_empty() {
            return Err("usage: container-shim --dir D [...] -- COMMAND [ARGS...]".into());
        }
        Ok(a)
    }
}

/// Writes `text` to `dir/name` atomically (temporary file, then rename).
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Runs the shim; returns the process exit code.
pub fn main(args: &[OsString]) -> i32 {
    let a = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("container-shim: {e}");
            return 2;
        }
    };
    let _ = write_atomic(&a.dir, SHIM_PID_FILE, &std::process::id().to_string());
    let fail = |why: String| {
        let _ = write_atomic(&a.dir, START_ERROR_FILE, &why);
        let _ = write_atomic(&a.dir, EXIT_FILE, "128");
        128
    };
    if let Err(e) = enter(&a) {
        return fail(e);
    }
    let writer = match &a.log {
        Some(log) => match logfile::Writer::open(log, a.rotation) {
            Ok(w) => Some(Arc::new(Mutex::new(w))),
            Err(e) => return fail(format!("cannot open log {}: {e}", log.display())),
        },
        None => None,
    };
    let fifo = |name: &str| {
        let p = a.dir.join(name);
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(
            &p,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map(|()| p)
        .map_err(|e| format!("cannot make the FIFO {name}: {e}"))
    };
    let stdin_fifo = match a.stdin.map(|_| fifo(STDIN_FIFO)).transpose() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let pty = match a.tty.then(crate::exec::open_pty).transpose() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot open a terminal: {e}")),
    };
    let resize_fifo = match pty.as_ref().map(|_| fifo(RESIZE_FIFO)).transpose() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    let ooms_before = crate::cgroup::oom_kills(&a.cgroups);
    if let Err(e) = join_cgroups(&mut cmd, &a.cgroups) {
        return fail(e);
    }
    if let Some(w) = &a.workdir {
        cmd.current_dir(w);
    }
    let piped = |on: bool| {
        if on {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    let master = match pty {
        Some(p) => {
            let ends = (|| Ok::<_, std::io::Error>((p.slave.try_clone()?, p.slave.try_clone()?)))();
            let Ok((out, err)) = ends else {
                return fail("cannot share the terminal".into());
            };
            cmd.stdin(p.slave).stdout(out).stderr(err);
            controlling_terminal(&mut cmd);
            Some(p.master)
        }
        None => {
            cmd.stdin(piped(a.stdin.is_some()))
                .stdout(piped(writer.is_some()))
                .stderr(piped(writer.is_some()));
            None
        }
    };
    // The container inherits the shim's oom_score_adj at fork: set it for the spawn only.
    let own_adj = a.oom_score_adj.and_then(|adj| {
        let was = std::fs::read_to_string(OOM_SCORE_ADJ).ok()?;
        std::fs::write(OOM_SCORE_ADJ, adj.to_string()).ok()?;
        Some(was)
    });
    let spawned = cmd.spawn();
    if let Some(was) = own_adj {
        let _ = std::fs::write(OOM_SCORE_ADJ, was.trim());
    }
    // The terminal's slave is the container's alone now: its end is the reader's EOF.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot start {:?}: {e}",
                a.argv[0].to_string_lossy()
            ));
        }
    };
    let _ = write_atomic(&a.dir, PID_FILE, &child.id().to_string());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut pumps = 0;
    let outputs: Vec<(Box<dyn Read + Send>, Stream)> = [
        child
            .stdout
            .take()
            .map(|o| (Box::new(o) as Box<dyn Read + Send>, Stream::Stdout)),
        child
            .stderr
            .take()
            .map(|e| (Box::new(e) as Box<dyn Read + Send>, Stream::Stderr)),
        master
            .as_ref()
            .and_then(|m| m.try_clone().ok())
            .map(|m| (Box::new(m) as Box<dyn Read + Send>, Stream::Stdout)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (from, stream) in outputs {
        let (writer, done) = (writer.clone(), done_tx.clone());
        std::thread::spawn(move || pump(from, stream, writer, done));
        pumps += 1;
    }
    if let (Some(mode), Some(fifo)) = (a.stdin, stdin_fifo) {
        let sink: Option<Box<dyn Write + Send>> = match &master {
            Some(m) => m.try_clone().ok().map(|m| Box::new(m) as _),
            None => child.stdin.take().map(|s| Box::new(s) as _),
        };
        if let Some(sink) = sink {
            std::thread::spawn(move || feed_stdin(&fifo, sink, mode));
        }
    }
    if let (Some(m), Some(fifo)) = (&master, resize_fifo)
        && let Ok(m) = m.try_clone()
    {
        std::thread::spawn(move || resizes(&fifo, &m));
    }
    let code = match child.wait() {
        Ok(st) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(255),
        Err(_) => 255,
    };
    // OOM evidence: the cgroup's kill count grew while the container ran (containerd reports
    // OOMKilled on its TaskOOM event the same way).
    if code != 0
        && let (Some(before), Some(after)) = (ooms_before, crate::cgroup::oom_kills(&a.cgroups))
        && after > before
    {
        let _ = write_atomic(&a.dir, OOM_FILE, &after.to_string());
    }
    // What the container wrote last is logged before its exit is: a reader that sees the exit
    // has the whole log. A background process still holding the output does not hold the exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let _ = write_atomic(&a.dir, EXIT_FILE, &code.to_string());
    // The rotated files being gzipped in the background are finished before the shim goes
    // (the exit is known already; nobody waits for this).
    if let Some(w) = &writer
        && let Ok(mut w) = w.lock()
    {
        w.wait_compacted();
    }
    0
}

/// Copies one output of the container into its log, an entry per line with the time it was
/// read (taken under the lock, so the file's times never go back).
fn pump(
    mut from: Box<dyn Read + Send>,
    stream: Stream,
    writer: Option<Arc<Mutex<logfile::Writer>>>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut buf = vec![0u8; logfile::MAX_ENTRY];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(w) = &writer
                    && let Ok(mut w) = w.lock()
                {
                    let _ = w.write(stream, jiff::Timestamp::now(), &buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A terminal's master reads EIO once the slave's last holder closed it.
            Err(_) => break,
        }
    }
    let _ = done.send(());
}

/// Feeds the container's stdin from the FIFO: each attach that opens it for writing, until
/// it closes it; with `stdinOnce`, only the first (then the container's stdin closes).
pub(crate) fn feed_stdin(fifo: &Path, mut sink: Box<dyn Write + Send>, mode: StdinMode) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Blocks until a writer opens it.
        let Ok(mut r) = std::fs::File::open(fifo) else {
            return;
        };
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if sink
                        .write_all(&buf[..n])
                        .and_then(|()| sink.flush())
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if mode == StdinMode::Once {
            return;
        }
    }
}

/// Sets the terminal's size from each JSON object written to the resize FIFO.
fn resizes(fifo: &Path, master: &std::fs::File) {
    loop {
        let Ok(r) = std::fs::File::open(fifo) else {
            return;
        };
        for v in serde_json::Deserializer::from_reader(r).into_iter::<serde_json::Value>() {
            let Ok(v) = v else { break };
            crate::exec::resize(master, v.to_string().as_bytes());
        }
    }
}

/// Makes the container's process join its cgroups between fork and exec: each
/// `cgroup.procs` is opened here, and the child writes `0` (itself) to it.
#[allow(unsafe_code)]
fn join_cgroups(cmd: &mut std::process::Command, dirs: &[PathBuf]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut files = Vec::new();
    for d in dirs {
        let p = d.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        files.push(f);
    }
    if files.is_empty() {
        return Ok(());
    }
    // SAFETY: the closure runs between fork and exec and only makes write syscalls on files
    // opened before the fork; it allocates nothing (an OS error carries no allocation).
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                (&*f).write_all(b"0")?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the container a session leader whose controlling terminal is its stdin (the pty's
/// slave), as a runtime does for `tty: true`.
#[allow(unsafe_code)]
fn controlling_terminal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes only two syscalls, setsid and
    // the TIOCSCTTY ioctl, which std has no safe way to ask for; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
}

/// Enters the pod's network namespace and makes the container's own mount and UTS namespaces.
fn enter(a: &ShimArgs) -> Result<(), String> {
    if let Some(p) = &a.netns {
        let ns = std::fs::File::open(p).map_err(|e| format!("open netns {}: {e}", p.display()))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter netns {}: {e}", p.display()))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare mount+uts: {e}"))?;
    // Nothing we mount may propagate back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    for (src, dst) in [(&a.hosts, "/etc/hosts"), (&a.resolv, "/etc/resolv.conf")] {
        if let Some(src) = src {
            nix::mount::mount(
                Some(src.as_path()),
                dst,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind {} on {dst}: {e}", src.display()))?;
        }
    }
    service_account(a.service_account.as_deref())?;
    if let Some(h) = &a.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h}: {e}"))?;
    }
    Ok(())
}

/// The projected service-account directory at upstream's path, read-only; or, for a pod
/// without a token, an empty read-only tmpfs over that path when the host has it. A host
/// executable sees the host's file system, so the mount point is made on the host when it is
/// missing (an empty directory under `/run`).
fn service_account(dir: Option<&Path>) -> Result<(), String> {
    let target = Path::new(crate::serviceaccount::MOUNT_PATH);
    match dir {
        Some(src) => {
            std::fs::create_dir_all(target)
                .map_err(|e| format!("create {}: {e}", target.display()))?;
            nix::mount::mount(
                Some(src),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind {} on {}: {e}", src.display(), target.display()))?;
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("make {} read-only: {e}", target.display()))
        }
        None if target.is_dir() => nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k"),
        )
        .map_err(|e| format!("cover {}: {e}", target.display())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let a = ShimArgs {
            dir: "/run/x".into(),
            netns: Some("/run/netns/p".into()),
            hostname: Some("web-0".into()),
            hosts: None,
            resolv: Some("/r".into()),
            workdir: None,
            log: Some("/l".into()),
            service_account: Some("/sa".into()),
            rotation: Rotation::new(2048, 3).unwrap(),
            stdin: Some(StdinMode::Once),
            tty: true,
            cgroups: vec![
                "/sys/fs/cgroup/memory/k/p/c".into(),
                "/sys/fs/cgroup/cpu/k/p/c".into(),
            ],
            oom_score_adj: Some(-997),
            argv: vec!["/bin/sh".into(), "-c".into(), "--".into()],
        };
        let args = a.to_args();
        assert_eq!(args[0], "container-shim");
        assert_eq!(ShimArgs::parse(&args[1..]).ok(), Some(a));
    }
}
