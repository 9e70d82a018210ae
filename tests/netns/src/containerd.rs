//! containerd as a test runtime: Debian's containerd (1.6, its CRI plugin off, root, state and
//! socket private to the test) running containers from a busybox root file system, with
//! `ctr run --cni` wiring each one through a node's CNI configuration exactly as containerd's
//! own client does — the older libcni inside it included, which is the point.
//!
//! `ctr` reads its CNI configuration from the fixed paths `/etc/cni/net.d` and `/opt/cni/bin`
//! (and caches results under `/var/lib/cni`). So each `ctr run` starts in the node's network
//! namespace and a private mount namespace, where `/etc`, `/opt` and `/var` are overlays whose
//! writes go to the test's directory and those three paths are bind mounts of the node's own
//! directories: the machine's files are never touched.
//!
//! Drop order matters: drop a [`Containerd`] before its [`Testbed`] (declare it after), so its
//! containers are killed and deleted while containerd still runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_net::Netns;

use crate::{Error, Output, Result, Testbed, require_tool};

/// The CNI directories of one node, as `ctr` on that node sees them.
#[derive(Debug, Clone)]
pub struct CniDirs {
    /// Mounted on `/etc/cni/net.d`.
    pub conf: PathBuf,
    /// Mounted on `/opt/cni/bin`: symlinks to the plugins.
    pub bin: PathBuf,
    /// Mounted on `/var/lib/cni`.
    pub cache: PathBuf,
}

impl CniDirs {
    /// `conf` as given; a plugin directory under `dir` linking every plugin of `plugin_dirs`
    /// (earlier directories win); a cache directory under `dir`.
    pub fn new(dir: &Path, conf: &Path, plugin_dirs: &[PathBuf]) -> Result<CniDirs> {
        let bin = dir.join("cni-bin");
        let cache = dir.join("cni-cache");
        for d in [&bin, &cache] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        for pd in plugin_dirs {
            let Ok(entries) = std::fs::read_dir(pd) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let link = bin.join(&name);
                let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
                if is_file && !link.exists() {
                    std::os::unix::fs::symlink(e.path(), &link)
                        .map_err(|err| Error::io(format!("link {}", link.display()), err))?;
                }
            }
        }
        Ok(CniDirs {
            conf: conf.to_path_buf(),
            bin,
            cache,
        })
    }
}

/// A containerd of the test's own.
pub struct Containerd {
    /// The testbed's prefix: containers are named `<prefix>-<id>`, so two tests' containerds
    /// never share a container's cgroup (`/default/<name>`).
    prefix: String,
    dir: PathBuf,
    socket: PathBuf,
    pid: i32,
    rootfs: PathBuf,
    runs: std::sync::atomic::AtomicU32,
}

const CTR: &str = "ctr";

/// The mount set-up every `ctr run` goes through (see the module documentation).
const WRAPPER: &str = r#"#!/bin/sh
# usage: mounts.sh CONF BIN CACHE SCRATCH -- COMMAND...
set -e
conf=$1 bin=$2 cache=$3 scratch=$4
shift 5
for d in etc opt var; do
    mkdir -p "$scratch/up/$d" "$scratch/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$scratch/up/$d,workdir=$scratch/work/$d" "/$d"
done
mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni
mount --bind "$conf" /etc/cni/net.d
mount --bind "$bin" /opt/cni/bin
mount --bind "$cache" /var/lib/cni
exec "$@"
"#;

impl Containerd {
    /// Starts containerd in a namespace of its own and waits until it answers.
    pub async fn start(tb: &Testbed) -> Result<Containerd> {
        require_tool("containerd", "containerd");
        require_tool("ctr", "containerd");
        require_tool("runc", "runc");
        require_tool("unshare", "util-linux");
        let busybox = require_tool("busybox", "busybox-static");
        let dir = tb.state_dir().join("containerd");
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        for sub in ["root", "state", "runc", "fifo"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io("create containerd's directories"))?;
        }
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
        );
        std::fs::write(dir.join("config.toml"), config).map_err(io("write containerd's config"))?;
        std::fs::write(dir.join("mounts.sh"), WRAPPER).map_err(io("write the mount wrapper"))?;
        // A busybox root file system: the image a container runs.
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).map_err(io("create the rootfs"))?;
        std::fs::copy(&busybox, rootfs.join("bin/busybox")).map_err(io("copy busybox"))?;
        for applet in [
            "sh", "sleep", "ip", "ping", "nc", "cat", "wget", "httpd", "echo", "hostname", "env",
            "touch", "grep", "ls",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .map_err(io("link a busybox applet"))?;
        }
        let ns = tb.add_ns("ctrd").await?;
        let config = dir.join("config.toml");
        let pid = tb.spawn(
            &ns,
            &[
                "containerd",
                "--config",
                config.to_str().unwrap_or_default(),
            ],
            Duration::from_secs(600),
        )?;
        let c = Containerd {
            prefix: tb.prefix().to_string(),
            dir,
            socket,
            pid,
            rootfs,
            runs: Default::default(),
        };
        for _ in 0..100 {
            if c.socket.exists() && c.ctr(&["version"]).await.is_ok_and(|o| o.success()) {
                return Ok(c);
            }
            if !tb.running(pid) {
                return Err(Error::Other(format!(
                    "containerd exited: {}",
                    tb.log_of(pid)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: "containerd to answer".into(),
            secs: 10.0,
        })
    }

    /// The container's name in containerd.
    fn name(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// The `CNI_CONTAINERID` `ctr` gives container `id`'s attachment (its namespace and name).
    pub fn cni_container_id(&self, id: &str) -> String {
        format!("default-{}", self.name(id))
    }

    /// containerd's process group in the testbed.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// containerd's socket (a kubelet's `--containerd-address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// An OCI image layout tarball of a busybox image built from Debian's busybox-static: one
    /// uncompressed layer (`/bin/busybox` and its applets as links), `Cmd` `/bin/sh`, named
    /// `name` by the `io.containerd.image.name` annotation. Returns the tarball's path.
    pub fn busybox_image(&self, name: &str) -> Result<PathBuf> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(format!("image-{n}"));
        let blobs = dir.join("layout/blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io("create the layout"))?;
        let tar = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("tar")
                .args(args)
                .output()
                .map_err(|e| Error::io("run tar", e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::Failed {
                    what: format!("tar {}", args.join(" ")),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        let layer = dir.join("layer.tar");
        let s = |p: &Path| p.to_str().unwrap_or_default().to_string();
        tar(&[
            "--numeric-owner",
            "-C",
            &s(&self.rootfs),
            "-cf",
            &s(&layer),
            ".",
        ])?;
        // Writes a blob; returns its descriptor's digest and size.
        let put = |data: &[u8]| -> Result<(String, usize)> {
            let tmp = blobs.join("tmp");
            std::fs::write(&tmp, data).map_err(io("write a blob"))?;
            let out = std::process::Command::new("sha256sum")
                .arg(&tmp)
                .output()
                .map_err(|e| Error::io("run sha256sum", e))?;
            let hex = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if !out.status.success() || hex.len() != 64 {
                return Err(Error::Other(format!("sha256sum of a blob: {out:?}")));
            }
            std::fs::rename(&tmp, blobs.join(&hex)).map_err(io("name a blob"))?;
            Ok((format!("sha256:{hex}"), data.len()))
        };
        let (layer_digest, layer_size) =
            put(&std::fs::read(&layer).map_err(io("read the layer"))?)?;
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = put(config.to_string().as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest, "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": "latest"}}],
        });
        let layout = dir.join("layout");
        std::fs::write(layout.join("index.json"), index.to_string())
            .map_err(io("write index.json"))?;
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io("write oci-layout"))?;
        let out = dir.join("busybox-oci.tar");
        tar(&[
            "-C",
            &s(&layout),
            "-cf",
            &s(&out),
            "oci-layout",
            "index.json",
            "blobs",
        ])?;
        Ok(out)
    }

    /// `ctr -a <socket> args…`, from the test's own process (it only talks to the socket).
    pub async fn ctr(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new("timeout");
        cmd.arg("-s")
            .arg("KILL")
            .arg("30")
            .arg(CTR)
            .arg("-a")
            .arg(&self.socket);
        cmd.args(args).kill_on_drop(true);
        let out = cmd
            .output()
            .await
            .map_err(|e| Error::io(format!("run ctr {}", args.join(" ")), e))?;
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `ctr run --rm --cni` of container `id` running `/bin/sh -c script`, started in `node`'s
    /// network namespace with that node's CNI directories; in the background. When the
    /// container ends, `ctr` runs CNI DEL and deletes it, then exits. Returns the process group.
    pub fn run_cni(
        &self,
        tb: &Testbed,
        node: &Netns,
        cni: &CniDirs,
        id: &str,
        script: &str,
    ) -> Result<i32> {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = self.dir.join(format!("mounts-{n}"));
        let s = |p: &Path| p.to_str().unwrap_or_default().to_string();
        let argv = [
            "unshare".to_string(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            s(&self.dir.join("mounts.sh")),
            s(&cni.conf),
            s(&cni.bin),
            s(&cni.cache),
            s(&scratch),
            "--".into(),
            CTR.into(),
            "-a".into(),
            s(&self.socket),
            "run".into(),
            "--rm".into(),
            "--cni".into(),
            "--runc-root".into(),
            s(&self.dir.join("runc")),
            "--fifo-dir".into(),
            s(&self.dir.join("fifo")),
            "--rootfs".into(),
            s(&self.rootfs),
            self.name(id),
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        tb.spawn(node, &argv, Duration::from_secs(300))
    }

    /// Waits until container `id`'s task runs (its network is set up by then).
    pub async fn wait_running(&self, tb: &Testbed, ctr_pid: i32, id: &str) -> Result<()> {
        let name = self.name(id);
        for _ in 0..200 {
            let out = self.ctr(&["tasks", "ls"]).await?;
            if out.stdout.lines().any(|l| {
                l.split_whitespace().next() == Some(name.as_str()) && l.contains("RUNNING")
            }) {
                return Ok(());
            }
            if !tb.running(ctr_pid) {
                return Err(Error::Other(format!(
                    "ctr run {id} exited: {}",
                    tb.log_of(ctr_pid)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: format!("container {id} to run"),
            secs: 20.0,
        })
    }

    /// Runs `argv` inside container `id`.
    pub async fn exec(&self, id: &str, argv: &[&str]) -> Result<Output> {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec_id = format!("x{n}");
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, "--fifo-dir"];
        let fifo = self.dir.join("fifo");
        let fifo = fifo.to_str().unwrap_or_default();
        args.push(fifo);
        let name = self.name(id);
        args.push(&name);
        args.extend_from_slice(argv);
        self.ctr(&args).await
    }

    /// The container's IPv4 address on `eth0`.
    pub async fn address(&self, id: &str) -> Result<std::net::Ipv4Addr> {
        let out = self
            .exec(id, &["/bin/ip", "-4", "-o", "addr", "show", "eth0"])
            .await?;
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                Error::Other(format!(
                    "no IPv4 address on {id}'s eth0: {}{}",
                    out.stdout, out.stderr
                ))
            })
    }

    /// Kills container `id`'s task; the `ctr run --rm` that started it then runs CNI DEL.
    pub async fn kill(&self, id: &str) -> Result<()> {
        let out = self
            .ctr(&["tasks", "kill", "-s", "SIGKILL", &self.name(id)])
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(Error::Failed {
                what: format!("ctr tasks kill {id}"),
                status: out.status.to_string(),
                stderr: out.stderr,
            })
        }
    }

    /// Kills and deletes every container (also those a failed `ctr run` left behind).
    fn cleanup(&self) {
        let ctr = |args: &[&str]| {
            std::process::Command::new("timeout")
                .args(["-s", "KILL", "10", CTR, "-a"])
                .arg(&self.socket)
                .args(args)
                .output()
        };
        // Every namespace: a kubelet's containerd runtime uses its own.
        let namespaces = ctr(&["namespaces", "ls", "-q"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in namespaces.lines().chain(std::iter::once("default")) {
            let Ok(list) = ctr(&["-n", ns, "containers", "ls", "-q"]) else {
                continue;
            };
            for id in String::from_utf8_lossy(&list.stdout).lines() {
                let _ = ctr(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = ctr(&["-n", ns, "tasks", "delete", "-f", id]);
                let _ = ctr(&["-n", ns, "containers", "delete", id]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}
