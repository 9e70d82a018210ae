//! A control plane inside a testbed: `trellis apiserver` in a namespace of its own on the
//! underlay, where every node namespace reaches it, and a loopback relay through which the
//! test itself talks to it (no route into the testbed is ever added).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Node, Result, Testbed, bin_path};

/// The API server of a testbed.
pub struct ControlPlane {
    pub node: Node,
    /// Where nodes reach it: `<underlay address>:6443`.
    pub addr: SocketAddr,
    pub pid: i32,
    pub dir: PathBuf,
    /// The admin kubeconfig nodes use (server = `addr`).
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig for the test's own namespace (server = the loopback relay).
    pub local_kubeconfig: String,
}

impl ControlPlane {
    /// Starts `trellis apiserver` on a new underlay host `short` (address 198.18.0.`10+n`),
    /// with the embedded store, and waits until it answers. As `trellis up` does, it checks
    /// kubelets' serving certificates against the cluster CA
    /// (`--kubelet-certificate-authority`): kubelets need one from
    /// [`ControlPlane::issue_serving`].
    pub async fn start(tb: &Testbed, short: &str, n: u8) -> Result<ControlPlane> {
        ControlPlane::start_args(tb, short, n, &[]).await
    }

    /// As [`ControlPlane::start`], the API server with `extra` flags too (a dual-stack
    /// `--service-cluster-ip-range`); [`ControlPlane::restart`] starts it without them.
    pub async fn start_args(
        tb: &Testbed,
        short: &str,
        n: u8,
        extra: &[&str],
    ) -> Result<ControlPlane> {
        let node = tb.add_node(short, n).await?;
        let dir = tb.state_dir().join(format!("{short}-apiserver"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create the API server's directory", e))?;
        let addr = SocketAddr::new(node.ip.into(), 6443);
        let pid = spawn_apiserver(tb, &node, &dir, addr, extra)?;
        let kubeconfig = dir.join("admin.kubeconfig");
        let relay = tb.forward(&node.ns, addr).await?;
        for _ in 0..300 {
            if kubeconfig.is_file() && tokio::net::TcpStream::connect(relay).await.is_ok() {
                let text = std::fs::read_to_string(&kubeconfig)
                    .map_err(|e| Error::io("read the admin kubeconfig", e))?;
                let local = text.replace(&format!("https://{addr}"), &format!("https://{relay}"));
                return Ok(ControlPlane {
                    node,
                    addr,
                    pid,
                    dir,
                    kubeconfig,
                    local_kubeconfig: local,
                });
            }
            if !tb.running(pid) {
                return Err(Error::Other(format!(
                    "the API server exited: {}",
                    tb.log_of(pid)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: "the API server to start".into(),
            secs: 30.0,
        })
    }
}

/// `trellis apiserver` in `node`'s namespace on `addr`, its data (store, PKI) in `dir`.
fn spawn_apiserver(
    tb: &Testbed,
    node: &Node,
    dir: &Path,
    addr: SocketAddr,
    extra: &[&str],
) -> Result<i32> {
    let trellis = bin_path("trellis");
    let (addr, lo, ca) = (
        addr.to_string(),
        Ipv4Addr::LOCALHOST.to_string(),
        dir.join("pki/ca.crt"),
    );
    let mut argv = vec![
        trellis.to_str().unwrap_or("trellis"),
        "apiserver",
        "--data-dir",
        dir.to_str().unwrap_or_default(),
        "--listen",
        &addr,
        "--san",
        &lo,
        "--kubelet-certificate-authority",
        ca.to_str().unwrap_or_default(),
        // No default/kubernetes: these clusters run no service proxy, so pods reach the
        // API server at the address their kubelet uses, not at a ClusterIP nothing
        // translates (`trellis up` runs the default, `lease`, with its proxies).
        "--endpoint-reconciler-type",
        "none",
    ];
    argv.extend_from_slice(extra);
    tb.spawn(&node.ns, &argv, Duration::from_secs(600))
}

impl ControlPlane {
    /// Stops the API server (SIGKILL) and waits until nothing listens on [`ControlPlane::addr`]
    /// any more: components started now find no API server there. Its data and CA stay, so
    /// kubeconfigs can still be issued and [`ControlPlane::restart`] brings it back.
    pub async fn stop(&self, tb: &Testbed) -> Result<()> {
        tb.kill(self.pid);
        for _ in 0..300 {
            if !self.listening()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: "the API server to stop listening".into(),
            secs: 30.0,
        })
    }

    /// Starts the API server again, on the same address with the same data and CA, and waits
    /// until it accepts connections.
    pub async fn restart(&mut self, tb: &Testbed) -> Result<()> {
        self.pid = spawn_apiserver(tb, &self.node, &self.dir, self.addr, &[])?;
        for _ in 0..300 {
            if self.listening()? {
                return Ok(());
            }
            if !tb.running(self.pid) {
                return Err(Error::Other(format!(
                    "the restarted API server exited: {}",
                    tb.log_of(self.pid)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: "the API server to restart".into(),
            secs: 30.0,
        })
    }

    /// Whether something accepts TCP connections on [`ControlPlane::addr`], seen from the
    /// control plane's namespace.
    fn listening(&self) -> Result<bool> {
        let addr = self.addr;
        self.node
            .ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            })
            .map_err(Error::from)
    }

    /// The loopback relay's URL (`https://127.0.0.1:<port>`), as the local kubeconfig names it.
    pub fn relay_server(&self) -> Result<String> {
        self.local_kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .map(str::to_string)
            .ok_or_else(|| Error::Other("the local kubeconfig names no server".into()))
    }

    /// Issues a kubeconfig for `user` in `groups` from the cluster CA (`trellis certs
    /// kubeconfig`) at `out`, for `server`: [`ControlPlane::addr`]'s URL for processes in the
    /// testbed, [`ControlPlane::relay_server`] for the test's own namespace.
    pub fn issue_kubeconfig(
        &self,
        user: &str,
        groups: &[&str],
        server: &str,
        out: &Path,
    ) -> Result<()> {
        let mut cmd = std::process::Command::new(bin_path("trellis"));
        cmd.args(["certs", "kubeconfig", "--data-dir"])
            .arg(&self.dir)
            .args(["--user", user]);
        for g in groups {
            cmd.args(["--group", g]);
        }
        let o = cmd
            .args(["--server", server, "--out"])
            .arg(out)
            .output()
            .map_err(|e| Error::io("run trellis certs kubeconfig", e))?;
        if !o.status.success() {
            return Err(Error::Failed {
                what: format!("certs kubeconfig for {user}"),
                status: o.status.to_string(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Issues the serving certificate of `node`'s kubelet from the cluster CA (`trellis certs
    /// serving`, SANs the node's name and `ip`) to `cert` and `key`.
    pub fn issue_serving(&self, node: &str, ip: Ipv4Addr, cert: &Path, key: &Path) -> Result<()> {
        let o = std::process::Command::new(bin_path("trellis"))
            .args(["certs", "serving", "--data-dir"])
            .arg(&self.dir)
            .args(["--node", node, "--ip", &ip.to_string(), "--cert-out"])
            .arg(cert)
            .arg("--key-out")
            .arg(key)
            .output()
            .map_err(|e| Error::io("run trellis certs serving", e))?;
        if !o.status.success() {
            return Err(Error::Failed {
                what: format!("certs serving for {node}"),
                status: o.status.to_string(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// The underlay URL nodes and components use (`https://<addr>`).
    pub fn server(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes the admin kubeconfig for the test's own namespace to
    /// `<state>/admin-local.kubeconfig` (for kubectl run by the test) and returns its path.
    pub fn write_local_kubeconfig(&self, tb: &Testbed) -> Result<PathBuf> {
        let kc = tb.state_dir().join("admin-local.kubeconfig");
        std::fs::write(&kc, &self.local_kubeconfig)
            .map_err(|e| Error::io("write the local admin kubeconfig", e))?;
        Ok(kc)
    }

    /// Starts `trellis <command>` (scheduler, controller-manager) in the control plane's
    /// namespace as `user`, with a kubeconfig of its own from the cluster CA, serving
    /// `/healthz` and `/metrics` on `127.0.0.1:<port>`; leader election under `identity`
    /// when given. Returns its PID.
    pub fn start_component(
        &self,
        tb: &Testbed,
        command: &str,
        user: &str,
        identity: Option<&str>,
        port: u16,
        extra: &[&str],
    ) -> Result<i32> {
        let kc = tb
            .state_dir()
            .join(format!("{}.kubeconfig", identity.unwrap_or(command)));
        self.issue_kubeconfig(user, &[], &self.server(), &kc)?;
        let trellis = bin_path("trellis");
        let listen = format!("127.0.0.1:{port}");
        let mut argv = vec![
            trellis.to_str().unwrap_or("trellis"),
            command,
            "--kubeconfig",
            kc.to_str().unwrap_or_default(),
            "--listen",
            &listen,
        ];
        if let Some(id) = identity {
            argv.extend_from_slice(&["--leader-elect-identity", id]);
        }
        argv.extend_from_slice(extra);
        tb.spawn(&self.node.ns, &argv, Duration::from_secs(900))
    }
}

/// Runs `kubectl` (the binary `bin`) from the test's own namespace with `kubeconfig`, for at
/// most 60 s: (exit code, stdout, stderr). A kubectl that cannot start or does not finish
/// fails the test.
pub async fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("kubectl {args:?} did not start: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `trellis ipamd` for `node` against the control plane, its socket `<dirs>/ipamd.sock` and
/// CNI cache `<dirs>/cache`, the leak pass off (tests run it when they mean to).
pub fn start_ipamd(tb: &Testbed, cp: &ControlPlane, node: &Node, dirs: &Path) -> Result<i32> {
    std::fs::create_dir_all(dirs).map_err(|e| Error::io("create the node's directory", e))?;
    let d = |sub: &str| dirs.join(sub).display().to_string();
    let trellis = bin_path("trellis");
    tb.spawn(
        &node.ns,
        &[
            trellis.to_str().unwrap_or("trellis"),
            "ipamd",
            "--node",
            &node.name,
            "--kubeconfig",
            cp.kubeconfig.to_str().unwrap_or_default(),
            "--socket",
            &d("ipamd.sock"),
            "--cni-cache-dir",
            &d("cache"),
            "--gc-interval",
            "0s",
        ],
        Duration::from_secs(600),
    )
}

/// `trellis ipam pool create NAME <args>` against the control plane, from its namespace.
pub async fn create_pool(tb: &Testbed, cp: &ControlPlane, name: &str, args: &[&str]) -> Result<()> {
    let trellis = bin_path("trellis");
    let mut argv = vec![
        trellis.to_str().unwrap_or("trellis"),
        "ipam",
        "--kubeconfig",
        cp.kubeconfig.to_str().unwrap_or_default(),
        "pool",
        "create",
        name,
    ];
    argv.extend_from_slice(args);
    let out = tb.exec(&cp.node.ns, &argv, Duration::from_secs(30)).await?;
    if !out.success() {
        return Err(Error::Other(format!("pool create {name}: {}", out.stderr)));
    }
    Ok(())
}

/// Waits (30 s at most) for `path` to exist while every process of `pids` runs; the error
/// carries their logs.
pub async fn wait_path(tb: &Testbed, pids: &[i32], path: &Path) -> Result<()> {
    let logs = || {
        pids.iter()
            .map(|p| tb.log_of(*p))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    for _ in 0..300 {
        if path.exists() {
            return Ok(());
        }
        if !pids.iter().all(|p| tb.running(*p)) {
            return Err(Error::Other(format!("a process exited:\n{}", logs())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Other(format!(
        "{} never appeared:\n{}",
        path.display(),
        logs()
    )))
}

/// A standalone `trellis ipamd --local` in a namespace of its own (its unix socket is
/// reachable from every namespace), with one pool, for plugin tests without a control plane.
pub struct StandaloneIpamd {
    pub ns: std::sync::Arc<trellis_net::Netns>,
    pub socket: PathBuf,
    pub pid: i32,
}

impl StandaloneIpamd {
    /// Starts it and creates pool `pool` with `pool_args` (`--cidr …`, `--block-size …`, …).
    pub async fn start(tb: &Testbed, pool: &str, pool_args: &[&str]) -> Result<StandaloneIpamd> {
        let ns = tb.add_ns("ipamd").await?;
        let dir = tb.state_dir().join("ipamd");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create ipamd's directory", e))?;
        let socket = dir.join("ipamd.sock");
        let trellis = bin_path("trellis");
        let d = |sub: &str| dir.join(sub).display().to_string();
        let pid = tb.spawn(
            &ns,
            &[
                trellis.to_str().unwrap_or("trellis"),
                "ipamd",
                "--node",
                "kit-node",
                "--local",
                &d("ipam.db"),
                "--socket",
                &d("ipamd.sock"),
                "--cni-cache-dir",
                &d("cache"),
                "--gc-interval",
                "0s",
            ],
            Duration::from_secs(600),
        )?;
        wait_path(tb, &[pid], &socket).await?;
        let ipamd = StandaloneIpamd { ns, socket, pid };
        let mut create = vec!["pool", "create", pool];
        create.extend_from_slice(pool_args);
        ipamd.ipam(tb, &create).await?;
        Ok(ipamd)
    }

    /// `trellis ipam --socket <its socket> <args>`; an error unless it succeeds.
    pub async fn ipam(&self, tb: &Testbed, args: &[&str]) -> Result<crate::Output> {
        let trellis = bin_path("trellis");
        let socket = self.socket.display().to_string();
        let mut argv = vec![
            trellis.to_str().unwrap_or("trellis"),
            "ipam",
            "--socket",
            &socket,
        ];
        argv.extend_from_slice(args);
        let out = tb.exec(&self.ns, &argv, Duration::from_secs(30)).await?;
        if !out.success() {
            return Err(Error::Other(format!(
                "ipam {args:?}: {}{}",
                out.stdout, out.stderr
            )));
        }
        Ok(out)
    }

    /// What this ipamd holds, as the conformance kit reads it for its GC rule: the addresses
    /// `trellis ipam blocks --allocations` lists, read from the ipamd's namespace.
    pub fn allocations(&self, tb: &Testbed) -> crate::cni_kit::Allocations {
        let (ns, socket, tag) = (
            self.ns.clone(),
            self.socket.display().to_string(),
            tb.prefix().to_string(),
        );
        Box::new(move || {
            let (ns, socket, tag) = (ns.clone(), socket.clone(), tag.clone());
            Box::pin(async move {
                let trellis = bin_path("trellis");
                let argv = [
                    trellis.to_str().unwrap_or("trellis"),
                    "ipam",
                    "--socket",
                    &socket,
                    "blocks",
                    "--allocations",
                ];
                let out = crate::process::exec_ok(&ns, &argv, Duration::from_secs(30), &tag)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(held_addresses(&out))
            })
        })
    }

    /// Checks that the store is consistent and that no allocation of `network` is held.
    pub async fn assert_released(&self, tb: &Testbed, network: &str) -> Result<()> {
        self.ipam(tb, &["check"]).await?;
        let blocks = self.ipam(tb, &["blocks", "--allocations"]).await?;
        if blocks.stdout.contains(&format!("{network}.")) {
            return Err(Error::Other(format!(
                "addresses of {network} are still held:\n{}",
                blocks.stdout
            )));
        }
        Ok(())
    }
}

/// The conformance kit against our plugin `plugin` at every CNI version, with no deviation
/// allowed: trellis-ipam through a standalone ipamd whose pool is made with `pool_args`, and the
/// readiness state `ready` its agent would have written (in `<kit state>/agent/ready.json`,
/// which the configuration's `stateDir` names). An error with the kit's verdict, or when ipamd
/// still holds an address afterwards (every ADD had its DEL) or its store is inconsistent.
pub async fn kit_with_trellis_ipam(
    plugin: &str,
    ready: serde_json::Value,
    pool_args: &[&str],
) -> Result<()> {
    kit_with_trellis_ipam_families(plugin, ready, pool_args, None).await
}

/// As [`kit_with_trellis_ipam`], dual-stack: a second (IPv6) pool made with `pool6_args`, and
/// trellis-ipam asked for `"families": ["ipv4", "ipv6"]`, so every attachment has an address
/// of each family.
pub async fn kit_with_trellis_ipam_dual(
    plugin: &str,
    ready: serde_json::Value,
    pool_args: &[&str],
    pool6_args: &[&str],
) -> Result<()> {
    kit_with_trellis_ipam_families(plugin, ready, pool_args, Some(pool6_args)).await
}

async fn kit_with_trellis_ipam_families(
    plugin: &str,
    ready: serde_json::Value,
    pool_args: &[&str],
    pool6_args: Option<&[&str]>,
) -> Result<()> {
    use crate::cni_kit::{self, PluginUnderTest};
    // The plugin under test must be built (nextest builds only this package's targets).
    let dir = crate::bin_path(plugin)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tb = Testbed::new()?;
    let ipamd = StandaloneIpamd::start(&tb, "kit", pool_args).await?;
    if let Some(args) = pool6_args {
        let mut create = vec!["pool", "create", "kit6"];
        create.extend_from_slice(args);
        ipamd.ipam(&tb, &create).await?;
    }
    let dual = pool6_args.is_some();
    let sock = ipamd.socket.display().to_string();
    let kind = plugin.to_string();
    let put = PluginUnderTest {
        label: format!("{plugin} + trellis-ipam"),
        plugin: plugin.into(),
        cni_path: vec![dir],
        versions: trellis_cni::Version::ALL.into_iter().collect(),
        config: Box::new(move |ctx, v| {
            let state = ctx.state_dir.join("agent");
            let file = state.join("ready.json");
            if !file.is_file() {
                let _ = std::fs::create_dir_all(&state);
                let _ = std::fs::write(&file, ready.to_string());
            }
            let mut conf = serde_json::json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": kind,
                "stateDir": state,
                "ipam": {"type": "trellis-ipam", "socket": sock},
            });
            if dual {
                conf["ipam"]["families"] = serde_json::json!(["ipv4", "ipv6"]);
            }
            conf
        }),
        allocations: Some(ipamd.allocations(&tb)),
        deviations: Vec::new(),
    };
    let report = cni_kit::run(&put).await?;
    for f in &report.findings {
        eprintln!("[{} {}] {}", f.version, f.rule, f.problem);
    }
    if report.checks <= 50 {
        return Err(Error::Other(format!(
            "the kit did not run ({} checks)",
            report.checks
        )));
    }
    report.verdict(&put).map_err(Error::Other)?;
    ipamd.assert_released(&tb, "kitnet").await
}

/// The addresses in `trellis ipam blocks --allocations` output: the first word of each
/// indented allocation line (`    10.97.0.1    kitnet.cid.eth0 …`).
pub fn held_addresses(listing: &str) -> std::collections::BTreeSet<std::net::IpAddr> {
    listing
        .lines()
        .filter(|l| l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_lines_give_addresses() {
        let listing = "NAME  CIDR  POOL  NODE  USED\n\
                       kit-10-97-0-0-26  10.97.0.0/26  kit  kit-node  2/64\n    \
                       10.97.0.1                                kitnet.a.eth0 / node=kit-node since 1\n    \
                       10.97.0.2/32                             kitnet.b.eth0 / node=kit-node since 1\n";
        let got: Vec<String> = held_addresses(listing)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.97.0.1", "10.97.0.2"]);
    }
}
