//! Network namespaces: create (as a bind mount, like `ip netns add`), open, enter, delete.
//!
//! `setns` moves one thread. A tokio worker moved into a pod's namespace would carry every task
//! it runs next into it, so we never call it there: each entry happens on a fresh OS thread that
//! exits afterwards. Netlink sockets keep the namespace they were opened in, so the cheap way to
//! work in a namespace is to open a socket there once ([`Netns::connect`]) and use it from
//! anywhere.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::handle::Handle;

/// Where `ip netns` keeps its namespaces; every path we use is configurable.
pub const DEFAULT_RUN_DIR: &str = "/run/netns";

/// An open network namespace. The namespace lives while this handle (or its bind mount) does.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Creates a persistent namespace at `<run_dir>/<name>`. Fails if that name is taken.
    pub fn create(run_dir: &Path, name: &str) -> Result<Netns> {
        validate_name(name)?;
        let path = run_dir.join(name);
        let shown = path.display().to_string();
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::os("create directory", run_dir.display(), e))?;
        make_shared(run_dir)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| Error::os("create netns", &shown, e))?;
        let target = path.clone();
        let made = std::thread::scope(|s| {
            s.spawn(move || -> Result<()> {
                // This thread alone moves to the new namespace and ends right after.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::os("unshare netns for", target.display(), e))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| Error::os("bind-mount netns", target.display(), e))
            })
            .join()
        });
        let made = made.unwrap_or_else(|_| {
            Err(Error::invalid(
                "create netns",
                &shown,
                "the namespace thread panicked",
            ))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(&path)
    }

    /// Opens an existing namespace: a bind mount, or `/proc/<pid>/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found("open netns", path.display())
            } else {
                Error::os("open netns", path.display(), e)
            }
        })?;
        match nix::sys::statfs::fstatfs(&file) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
                Ok(Netns { path, file })
            }
            Ok(_) => Err(Error::invalid(
                "open netns",
                path.display(),
                "not a namespace file",
            )),
            Err(e) => Err(Error::os("open netns", path.display(), e)),
        }
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The final component of the path: the name `ip netns` shows.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Whether two handles refer to the same namespace.
    pub fn same_as(&self, other: &Netns) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its value. The thread exits
    /// afterwards, so nothing else ever runs in the wrong namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let fd = self.file.as_fd();
        let joined = std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::os("enter netns", self.path.display(), e))?;
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Opens a netlink connection inside this namespace, driven by the current tokio runtime.
    pub fn connect(&self) -> Result<Handle> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::invalid("connect to netns", self.path.display(), e.to_string()))?;
        let rt2 = rt.clone();
        let (conn, handle, _) = self
            .run(move || {
                // Registering the socket with the runtime needs its context on this thread.
                let _entered = rt2.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| Error::os("open netlink socket in", self.path.display(), e))?;
        Ok(Handle::spawn(
            &rt,
            conn,
            handle,
            self.path.display().to_string(),
        ))
    }

    /// A command that runs inside this namespace (the child enters it between fork and exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<std::process::Command> {
        let fd: OwnedFd = self
            .file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::os("duplicate netns fd", self.path.display(), e))?;
        let mut cmd = std::process::Command::new(program);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes one setns(2) syscall on an fd opened
        // before the fork, and allocates nothing. There is no safe way to give a child a
        // namespace other than its parent's thread's.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Deletes the namespace at `<run_dir>/<name>`: unmounts and removes the file. Returns false
    /// when there was nothing to delete. Processes still inside keep it alive until they exit.
    pub fn delete(run_dir: &Path, name: &str) -> Result<bool> {
        validate_name(name)?;
        let path = run_dir.join(name);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(nix::errno::Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(Error::os("unmount netns", path.display(), e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::os("remove netns", path.display(), e)),
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(Error::invalid(
            "name netns",
            format!("{name:?}"),
            "must be a plain file name",
        ));
    }
    Ok(())
}

/// As iproute2 does: the run directory becomes a shared mount, so namespace mounts propagate to
/// (and are unmounted from) mount namespaces created later, and deleting one really frees it.
fn make_shared(run_dir: &Path) -> Result<()> {
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            run_dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            nix::mount::mount(
                Some(run_dir),
                run_dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::os("bind-mount", run_dir.display(), e))?;
            shared().map_err(|e| Error::os("make shared mount", run_dir.display(), e))
        }
        Err(e) => Err(Error::os("make shared mount", run_dir.display(), e)),
    }
}
