//! The container shim: `trellis container-shim`, one per container run. It enters the pod's
//! network namespace, makes its own mount and UTS namespaces, bind-mounts the pod's
//! `/etc/hosts` and `/etc/resolv.conf`, sets the hostname, starts the container's process and
//! waits for it, then writes the exit code. The kubelet reads everything back from the run
//! directory, so containers outlive a kubelet restart and their exits are still known.
//!
//! It must run before any other thread exists (unshare of the mount namespace needs a
//! single-threaded process): `trellis` calls [`main`] before starting its async runtime.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

/// Files the shim writes into its run directory.
pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit";
pub const SHIM_PID_FILE: &str = "shim.pid";
/// Why the process could not start (the container's waiting reason is StartError / RunContainerError).
pub const START_ERROR_FILE: &str = "start-error";

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
        out.push("--".into());
        out.extend(self.argv.iter().cloned());
        out
    }

    /// Parses what [`ShimArgs::to_args`] wrote (without the leading `container-shim`).
    pub fn parse(args: &[OsString]) -> Result<ShimArgs, String> {
        let mut a = ShimArgs::default();
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
                _ => return Err(format!("unknown flag {}", flag.to_string_lossy())),
            }
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
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]).stdin(std::process::Stdio::null());
    if let Some(w) = &a.workdir {
        cmd.current_dir(w);
    }
    if let Some(log) = &a.log {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        match opened.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(e) => return fail(format!("cannot open log {}: {e}", log.display())),
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot start {:?}: {e}",
                a.argv[0].to_string_lossy()
            ));
        }
    };
    let _ = write_atomic(&a.dir, PID_FILE, &child.id().to_string());
    let code = match child.wait() {
        Ok(st) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(255),
        Err(_) => 255,
    };
    let _ = write_atomic(&a.dir, EXIT_FILE, &code.to_string());
    0
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
            argv: vec!["/bin/sh".into(), "-c".into(), "--".into()],
        };
        let args = a.to_args();
        assert_eq!(args[0], "container-shim");
        assert_eq!(ShimArgs::parse(&args[1..]).ok(), Some(a));
    }
}
