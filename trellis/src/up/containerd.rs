//! `trellis up --runtime containerd`: a containerd of the cluster's own (Debian's 1.6, its CRI
//! plugin off; root, state and socket under the cluster's state directory, in a namespace of
//! its own), the image the `deploy/` manifests run built from this very binary
//! (`trellis image build`, plus busybox for the demo; kept in the image cache, so the next
//! `up` of the same binary imports it without building) and imported as `trellis:latest` into the
//! containerd namespace every kubelet uses (named for the cluster; the kubelets keep to their
//! own containers by label) — and its removal: containers, tasks and snapshots through
//! containerd, then containerd, any shim it left, the containers' cgroups, mounts under its
//! directory and runc's state directory.
//!
//! runc keeps its state under the cluster's directory too (`<dir>/runc/<namespace>`, the
//! kubelets' `--containerd-runc-root`, which they pass in each container's runtime options),
//! not in the machine-wide `/run/containerd/runc/<namespace>`: two clusters, or a crashed
//! `up` and the next one, never share it, and `down` removes it with the directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::state::{self, Proc, State};

/// The image the manifests, DNS and (with `up`) the demo run.
pub const IMAGE: &str = "trellis:latest";
/// Where runc keeps its state when the client gives no root: one directory per containerd
/// namespace. `up` gives one ([`Ctrd::runc_root`]); `down` still clears the namespace's
/// directory here, which a cluster of an older `up` used.
const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";
/// The longest path a unix socket may have (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The cluster's containerd, as `down` needs to find everything it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ctrd {
    /// Its directory: config, root, state, socket, the image archive.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The containerd namespace of the kubelets' images and containers.
    pub namespace: String,
}

impl Ctrd {
    /// Where the cluster's containerd lives, and its namespace (the cluster's name).
    pub fn new(cluster_dir: &Path, name: &str) -> Ctrd {
        let dir = cluster_dir.join("containerd");
        Ctrd {
            socket: dir.join("containerd.sock"),
            dir,
            namespace: name.to_string(),
        }
    }

    /// runc's state directory (`runc --root`; runc adds the namespace), under [`Ctrd::dir`].
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
}

/// What `--runtime containerd` needs from the machine, each with where to get it.
pub fn preflight(cluster_dir: &Path, missing: &mut Vec<String>) {
    // `ctr` (in the containerd package) is how `down` deletes the containers.
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
    ] {
        if super::which(tool).is_none() {
            missing.push(format!(
                "`{tool}` (--runtime containerd): install the Debian package {package} (apt-get install {package})"
            ));
        }
    }
    let socket = Ctrd::new(cluster_dir, "x").socket;
    // containerd also listens on `<socket>.ttrpc`.
    let len = socket.as_os_str().len() + ".ttrpc".len();
    if len > MAX_SOCKET_PATH {
        missing.push(format!(
            "a shorter --state-dir: containerd's socket {}.ttrpc would be {len} bytes long, unix sockets take at most {MAX_SOCKET_PATH}",
            socket.display()
        ));
    }
}

/// Writes containerd's configuration and starts it in `ns`; returns its process.
pub fn spawn(c: &Ctrd, ns: &trellis_net::Netns, logs: &Path) -> anyhow::Result<Proc> {
    for sub in ["root", "state"] {
        std::fs::create_dir_all(c.dir.join(sub))
            .with_context(|| format!("creating {}", c.dir.join(sub).display()))?;
    }
    let config = c.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n",
            root = c.dir.join("root").display(),
            state = c.dir.join("state").display(),
            sock = c.socket.display(),
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let containerd = super::which("containerd").context("containerd is not installed")?;
    state::spawn(
        ns,
        "ctrd",
        "containerd",
        &[
            containerd.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        &logs.join("containerd.log"),
    )
}

/// Waits until containerd answers in the kubelets' namespace.
pub async fn wait_ready(
    c: &Ctrd,
    p: &Proc,
    deadline: Instant,
) -> anyhow::Result<trellis_kubelet::containerd::Conn> {
    loop {
        let err = match trellis_kubelet::containerd::Conn::connect(&c.socket, &c.namespace).await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        if !p.alive() {
            bail!("containerd exited: see {}", p.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "containerd did not answer at {} in time ({err}): see {}",
                c.socket.display(),
                p.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`IMAGE`] built from `exe` (the image `trellis image build` makes, plus the machine's
/// busybox at its own path, which the demo runs), uncompressed (it never leaves the machine),
/// from the image cache in `cache` when it holds this binary's (see [`crate::image_cache`]),
/// else built now and kept there. Returns the archive (the cache's: not to be removed) and
/// how long it took.
pub async fn build_image(
    cache: &Path,
    exe: &Path,
) -> anyhow::Result<(crate::image_cache::Cached, Duration)> {
    let mut opts = crate::image_build::Options::standard(
        exe.to_path_buf(),
        IMAGE.into(),
        crate::image_build::Compression::None,
    );
    opts.tools.push(("busybox".into(), "busybox-static".into()));
    let cache = crate::image_cache::Cache::new(cache);
    let started = Instant::now();
    let got = tokio::task::spawn_blocking(move || cache.get_or_build(&opts))
        .await
        .context("the image build stopped")?
        .context("building the trellis image")?;
    Ok((got, started.elapsed()))
}

/// Imports the archive into the kubelets' namespace; returns the image's digest.
pub async fn import(
    conn: &trellis_kubelet::containerd::Conn,
    archive: &Path,
) -> anyhow::Result<String> {
    let done = trellis_kubelet::containerd::image::import(
        conn,
        archive,
        None,
        trellis_kubelet::containerd::DEFAULT_SNAPSHOTTER,
    )
    .await
    .with_context(|| format!("importing {}", archive.display()))?;
    let digest = done
        .iter()
        .find(|i| i.name.ends_with(IMAGE))
        .map(|i| i.digest.clone())
        .with_context(|| format!("{} holds no {IMAGE}", archive.display()))?;
    Ok(digest)
}

/// `ctr -a <socket> -n <namespace> args…`, bounded; its stdout.
async fn ctr(c: &Ctrd, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("ctr");
    cmd.arg("-a")
        .arg(&c.socket)
        .args(["-n", &c.namespace])
        .args(args)
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(15), cmd.output()).await {
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Ok(Err(e)) => Err(format!("running ctr: {e}")),
        Err(_) => Err("ctr took over 15 s".into()),
    }
}

/// While containerd still runs: every container of the namespace killed and deleted with its
/// task and snapshot (so each shim exits and unmounts its root file system).
pub async fn remove_containers(state: &State, c: &Ctrd, problems: &mut Vec<String>) {
    let alive = state
        .processes
        .iter()
        .any(|p| p.what == "containerd" && p.alive());
    if !alive || !c.socket.exists() {
        return;
    }
    let ids = match ctr(c, &["containers", "ls", "-q"]).await {
        Ok(out) => out,
        Err(e) => {
            problems.push(format!("listing containerd's containers: {e}"));
            return;
        }
    };
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let _ = ctr(c, &["tasks", "kill", "-a", "-s", "SIGKILL", id]).await;
        let _ = ctr(c, &["tasks", "delete", "-f", id]).await;
        if let Err(e) = ctr(c, &["containers", "delete", id]).await
            && !e.contains("not found")
        {
            problems.push(format!("deleting container {id}: {e}"));
        }
    }
}

/// The processes whose command line names `needle` (containerd's shims name its socket).
fn processes_naming(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd
            .split(|b| *b == 0)
            .any(|a| a == needle.as_bytes() || a.ends_with(needle.as_bytes()))
        {
            out.push(pid);
        }
    }
    out
}

/// The mount points of this mount namespace under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// The cgroup hierarchies' mount points (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .is_some_and(|t| t == "cgroup" || t == "cgroup2")
        })
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// Kills what is left in cgroup directory `dir` and removes it, children first.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// After every process of the cluster is gone: shims containerd left (a shim outlives a
/// killed containerd), runc's `/<namespace>` cgroups in every hierarchy (the kubelet puts
/// containers in their pod cgroups, which `down` removes with the node's; runc's own place is
/// left only by `--cgroups-per-qos=false` or an older kubelet), mounts under containerd's
/// directory, and runc's state directories: the cluster's own, and the namespace's in the
/// machine-wide default (an older `up`'s).
pub async fn remove_leftovers(c: &Ctrd, problems: &mut Vec<String>) {
    let socket = c.socket.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let shims = processes_naming(&socket);
        if shims.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!("containerd shims {shims:?} survived SIGKILL"));
            break;
        }
        for pid in shims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in cgroup_mounts() {
        let dir = m.join(&c.namespace);
        if dir.is_dir()
            && let Err(e) = remove_cgroup_tree(&dir)
        {
            problems.push(format!("removing the cgroup {}: {e}", dir.display()));
        }
    }
    for m in mounts_under(&c.dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            problems.push(format!("unmounting {}: {e}", m.display()));
        }
    }
    for runc in [
        c.runc_root(),
        Path::new(DEFAULT_RUNC_ROOT).join(&c.namespace),
    ] {
        if let Err(e) = std::fs::remove_dir_all(&runc)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", runc.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_lives_under_the_cluster_directory() {
        let c = Ctrd::new(Path::new("/var/lib/trellis/up/trup"), "trup");
        assert!(c.socket.starts_with(&c.dir));
        assert!(c.runc_root().starts_with(&c.dir));
        assert!(c.dir.starts_with("/var/lib/trellis/up/trup"));
        assert_eq!(c.namespace, "trup");
        let mut missing = Vec::new();
        preflight(Path::new(&"/x".repeat(60)), &mut missing);
        assert!(
            missing.iter().any(|m| m.contains("shorter --state-dir")),
            "{missing:?}"
        );
    }
}
