//! `trellis up`, `trellis down`, `trellis status`: a whole cluster on this machine, in network
//! namespaces, with nothing leaving it. An underlay bridge in a namespace of its own; the
//! control plane (API server, scheduler, controller-manager, each with its own identity from
//! the cluster CA) in one namespace on the embedded store, or — `--control-plane 3` — in three
//! member namespaces on a 3-member etcd, behind a front-door failover proxy in a namespace of
//! its own and a failover proxy on every node (see [`ha`]); one namespace per node with ipamd,
//! the kubelet (process runtime, or `--runtime containerd`: a containerd of the cluster's own
//! running the image built from this binary, see [`containerd`]) and the service proxy; the network mode's agents and policyd
//! as DaemonSets of hostNetwork pods from `deploy/<mode>.yaml`; cluster DNS as a Deployment;
//! and a demo. The namespace `up` runs in gets one veth onto the underlay and routes for the
//! pod and service ranges through it — nothing else.

mod containerd;
mod ha;

mod manifest;
mod state;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use trellis_net::{Handle, Netns, Route, VethSpec};

pub use manifest::Mode;
use state::{CpRec, NodeRec, State};

/// The pod network every mode uses.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The service range (the API server's default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
const DNS_IP: &str = "10.96.0.10";
/// Where Debian's containernetworking-plugins puts the reference plugins (portmap, host-local).
const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";
/// The underlay: the benchmarking range, never the machine's own network.
const UNDERLAY: &str = "198.18.0.0/15";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The API's address, whatever the control plane: its one API server, or the front door of
/// three.
const CP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const API_PORT: u16 = 6443;
const MAX_NODES: u8 = 64;
/// Node nI is 198.18.1.I; n1 forwards the host's and the control plane's pod traffic.
const FIRST_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// Where a cluster lives: its name (the prefix of everything it makes) and state directory.
#[derive(clap::Args, Clone, Debug)]
pub struct Where {
    /// The cluster's name: every namespace and link it makes starts with it (1–10 characters,
    /// a-z, 0-9 and `-`).
    #[arg(long, default_value = "trup", value_parser = parse_name)]
    name: String,
    /// The parent of the cluster's state directory (`<state-dir>/<name>`: state, logs,
    /// kubeconfigs, each node's files).
    #[arg(long, default_value = "/var/lib/trellis/up")]
    state_dir: PathBuf,
}

impl Where {
    fn dir(&self) -> PathBuf {
        self.state_dir.join(&self.name)
    }
}

/// How pods run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Each container a process in the pod's namespaces (the kubelet's built-in runtime).
    Process,
    /// Each container an OCI image run by a containerd of the cluster's own: the agents,
    /// policyd, DNS and the demo run the image `trellis image build` makes from this binary,
    /// imported as trellis:latest.
    Containerd,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Containerd => "containerd",
        }
    }
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Worker nodes, 1–64.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: u8,
    /// The network mode: canal (routed /32 pods, VXLAN between nodes), overlay or routed.
    #[arg(long, value_enum, default_value_t = Mode::Canal)]
    mode: Mode,
    /// Control-plane members: 1 (an API server, scheduler and controller-manager on the
    /// embedded store) or 3 (three of each on a 3-member etcd — peers and clients on TLS with
    /// certificates from an etcd CA of its own — which keeps serving when a member is lost; kubectl
    /// reaches them through a failover proxy at 198.18.0.2:6443, every node through one of its
    /// own).
    #[arg(long, default_value = "1", value_parser = parse_control_plane)]
    control_plane: ControlPlane,
    /// The container runtime of every kubelet: process (host processes in the pods'
    /// namespaces) or containerd (a containerd of the cluster's own, under its state
    /// directory, running the image built from this binary; needs the Debian packages
    /// containerd and runc).
    #[arg(long, value_enum, default_value_t = Runtime::Process)]
    runtime: Runtime,
    /// Where `--runtime containerd` keeps the image it builds from this binary, keyed by the
    /// binary's identity and the tools': a later `up` of the same binary imports it without
    /// building. `down` keeps it (as kind keeps node images); the newest 2 builds stay;
    /// `rm -rf` the directory to clear it.
    #[arg(long, default_value = "/var/lib/trellis/image-cache")]
    image_cache: PathBuf,
    /// Seconds to wait for every node Ready and the demo answering.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    at: Where,
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 10
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a cluster name is 1–10 characters of a-z, 0-9 and `-` (it prefixes link names, which the kernel limits to 15)"
        ))
    }
}

fn parse_nodes(s: &str) -> Result<u8, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of nodes"))?;
    if n == 0 || n > u32::from(MAX_NODES) {
        return Err(format!(
            "{n} nodes: trellis up builds 1 to {MAX_NODES} nodes on one machine"
        ));
    }
    u8::try_from(n).map_err(|e| e.to_string())
}

/// The control plane's size: the two that make sense on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlane {
    /// One API server on the embedded store, one scheduler, one controller-manager.
    One,
    /// Three members, each an etcd member, an API server, a scheduler and a
    /// controller-manager; clients reach them through failover proxies.
    Three,
}

fn parse_control_plane(s: &str) -> Result<ControlPlane, String> {
    match s {
        "1" => Ok(ControlPlane::One),
        "3" => Ok(ControlPlane::Three),
        "2" => Err(
            "2 control-plane members: etcd needs a majority, and 2 members stop when either is lost (no better than 1); use 1, or 3 to survive the loss of a member"
                .into(),
        ),
        other => Err(format!(
            "{other:?}: the control plane has 1 member (the embedded store) or 3 (a 3-member etcd that survives the loss of one)"
        )),
    }
}

/// Progress: one line per step with its time, kept for the summary.
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, state: &mut State, what: &str) {
        let now = Instant::now();
        let took = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        println!(
            "[{:6.2}s] {what} ({:.2}s)",
            now.duration_since(self.start).as_secs_f64(),
            took
        );
        state.timings.push((what.to_string(), took));
        let _ = state.save();
    }
}

/// The path of a tool, or None.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// What `up` needs from this machine; each problem names what to do.
fn preflight(args: &UpArgs, exe_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root: trellis up creates network namespaces, links and iptables rules (run it with sudo)"
                .to_string(),
        );
    }
    for (tool, package) in [
        ("iptables-restore", "iptables"),
        ("ipset", "ipset"),
        ("busybox", "busybox-static"),
    ] {
        if which(tool).is_none() {
            missing.push(format!(
                "`{tool}`: install the Debian package {package} (apt-get install {package})"
            ));
        }
    }
    if args.control_plane == ControlPlane::Three && which("etcd").is_none() {
        missing.push(
            "`etcd` (--control-plane 3 runs a 3-member etcd): install the Debian package etcd-server (apt-get install etcd-server)"
                .to_string(),
        );
    }
    for plugin in args.mode.plugins() {
        if !exe_dir.join(plugin).is_file() {
            missing.push(format!(
                "the CNI plugin {plugin} beside {}: build it with `cargo build --release --workspace`",
                exe_dir.join("trellis").display()
            ));
        }
    }
    // The agents' conflists chain the reference portmap plugin (hostPorts); the kubelets find
    // it in Debian's directory.
    if !Path::new(REFERENCE_CNI_DIR).join("portmap").is_file() {
        missing.push(format!(
            "the reference CNI plugin portmap in {REFERENCE_CNI_DIR} (hostPorts): install the Debian package containernetworking-plugins (apt-get install containernetworking-plugins)"
        ));
    }
    if args.runtime == Runtime::Containerd {
        containerd::preflight(&args.at.dir(), &mut missing);
    }
    if !missing.is_empty() {
        bail!(
            "trellis up cannot start; missing:\n  - {}",
            missing.join("\n  - ")
        );
    }
    which("busybox").context("busybox")
}

/// How the user ran this binary, for the commands `up` suggests: the path they typed (e.g.
/// `./target/release/trellis`, which works from the same directory), or `trellis` when it was
/// found on PATH.
fn invoked_as() -> String {
    std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "trellis".into())
}

/// Refuses to build over a cluster that is up (or its leftovers).
async fn not_up_already(at: &Where, run_dir: &Path) -> anyhow::Result<()> {
    let dir = at.dir();
    if State::path(&dir).exists() {
        bail!(
            "a cluster named {:?} is already up (state in {}): `{} down --name {}{}` first",
            at.name,
            dir.display(),
            invoked_as(),
            at.name,
            state_dir_flag(at)
        );
    }
    let prefix = format!("{}-", at.name);
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                bail!(
                    "network namespace {n} exists: a cluster named {:?} (or its leftovers) is up; `{} down --name {}` removes it, or choose another --name",
                    at.name,
                    invoked_as(),
                    at.name
                );
            }
        }
    }
    let h = Handle::current()?;
    let underlay: Ipv4Net = UNDERLAY.parse()?;
    for a in h.addresses(None).await? {
        if let IpNet::V4(v4) = a.address
            && (underlay.contains(&v4.addr()) || v4.contains(&underlay.network()))
        {
            bail!(
                "this network namespace already has {} in the underlay range {UNDERLAY}: another trellis up cluster is up here (`trellis status`), one per namespace",
                a.address
            );
        }
    }
    Ok(())
}

fn state_dir_flag(at: &Where) -> String {
    if at.state_dir == Path::new("/var/lib/trellis/up") {
        String::new()
    } else {
        format!(" --state-dir {}", at.state_dir.display())
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the trellis binary")?;
    let exe_dir = exe
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    let run_dir = PathBuf::from(trellis_net::netns::DEFAULT_RUN_DIR);
    let busybox = preflight(&args, &exe_dir)?;
    not_up_already(&args.at, &run_dir).await?;
    let dir = args.at.dir();
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut state = State {
        name: args.at.name.clone(),
        mode: args.mode.name().into(),
        runtime: args.runtime.name().into(),
        dir: dir.clone(),
        run_dir,
        pod_prefix: format!("{}-pod-", args.at.name),
        ..Default::default()
    };
    state.save()?;
    let started = Instant::now();
    match build(&args, &mut state, &exe, &busybox).await {
        Ok(()) => {
            state.complete = true;
            state.save()?;
            summary(&state, started.elapsed()).await;
            Ok(())
        }
        Err(e) => {
            // The logs outlive the cluster, beside its state directory.
            let kept = args
                .at
                .state_dir
                .join(format!("{}-failed-logs", args.at.name));
            let _ = std::fs::remove_dir_all(&kept);
            let kept_ok = std::fs::rename(dir.join("logs"), &kept).is_ok();
            eprintln!(
                "trellis up failed: {e:#}\nremoving what it made …{}",
                if kept_ok {
                    format!(" (the daemons' logs are kept in {})", kept.display())
                } else {
                    String::new()
                }
            );
            let problems = state::teardown(&state).await;
            if !problems.is_empty() {
                eprintln!("could not remove: {}", problems.join("; "));
            }
            Err(e)
        }
    }
}

/// A namespace of the cluster with `lo` up.
async fn add_ns(state: &mut State, short: &str) -> anyhow::Result<Netns> {
    let name = format!("{}-{short}", state.name);
    let ns = Netns::create(&state.run_dir, &name)
        .with_context(|| format!("creating network namespace {name}"))?;
    state.namespaces.push(name);
    state.save()?;
    let h = ns.connect()?;
    let lo = h.require_link("lo").await?;
    h.set_up(lo.index).await?;
    Ok(ns)
}

/// Plugs `ns` into the underlay bridge as `eth0` with `ip`/15, forwarding on.
async fn plug(ul: &Netns, ns: &Netns, short: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let u = ul.connect()?;
    let port = format!("v-{short}");
    let link = u
        .add_veth(&VethSpec {
            name: &port,
            peer_name: "eth0",
            peer_ns: Some(ns),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await?;
    let br = u.require_link("br0").await?;
    u.set_controller(link.index, Some(br.index)).await?;
    u.set_up(link.index).await?;
    let h = ns.connect()?;
    let eth0 = h.require_link("eth0").await?;
    h.ensure_address(eth0.index, IpNet::V4(Ipv4Net::new(ip, 15)?))
        .await?;
    h.set_up(eth0.index).await?;
    trellis_net::sysctl::set(ns, &[("net.ipv4.ip_forward", "1")])?;
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The control plane's namespaces: (short name, address, role).
fn control_plane_layout(cp: ControlPlane) -> Vec<(&'static str, Ipv4Addr, &'static str)> {
    match cp {
        ControlPlane::One => vec![("cp", CP_IP, "control plane")],
        ControlPlane::Three => {
            let mut v = vec![("api", CP_IP, "API front door")];
            for (short, ip) in ha::MEMBERS {
                v.push((short, ip, "control plane"));
            }
            v
        }
    }
}

/// How clients reach the control plane, and where the CA that signs their identities is.
struct Access {
    /// The API server data directory whose `pki/` holds the cluster CA.
    ca_dir: PathBuf,
    /// The API's URL for kubectl and DNS: the one API server, or the front door.
    front: String,
    nodes: NodeAccess,
}

/// How a node's daemons reach the API.
enum NodeAccess {
    /// Through [`Access::front`], the one API server.
    Direct,
    /// Through a failover proxy of the node's own to these API servers.
    Proxy(Vec<SocketAddr>),
}

/// Starts the scheduler and the controller-manager in `ns` (`on`), each with its identity
/// from the CA under `ca_dir`, talking to `server`; their Lease identity is
/// `<cluster>-<on>`.
fn spawn_scheduling(
    state: &mut State,
    ns: &Netns,
    on: &str,
    ca_dir: &Path,
    server: &str,
    trellis: &str,
) -> anyhow::Result<()> {
    let files = state.dir.join(on);
    std::fs::create_dir_all(&files)?;
    for (what, user, port) in [
        ("scheduler", "system:kube-scheduler", "10259"),
        (
            "controller-manager",
            "system:kube-controller-manager",
            "10257",
        ),
    ] {
        let file = files.join(format!("{what}.kubeconfig"));
        crate::certs::kubeconfig(ca_dir, user, &[], server, &file)?;
        let mut args = vec![
            trellis.to_string(),
            what.into(),
            "--kubeconfig".into(),
            s(&file),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--leader-elect-identity".into(),
            format!("{}-{on}", state.name),
        ];
        // The token controller signs legacy token Secrets with the API servers' key.
        let sa_key = ca_dir.join("pki/sa.key");
        if what == "controller-manager" && sa_key.is_file() {
            args.extend(["--service-account-private-key-file".into(), s(&sa_key)]);
        }
        let p = state::spawn(
            ns,
            on,
            what,
            &args,
            &state.dir.join("logs").join(format!("{on}-{what}.log")),
        )?;
        state.processes.push(p);
    }
    state.save()
}

/// One API server on the embedded store in `cp`, with a scheduler and a controller-manager.
async fn single_control_plane(
    state: &mut State,
    steps: &mut Steps,
    cp: &Netns,
    trellis: &str,
) -> anyhow::Result<Access> {
    let api_dir = state.dir.join("cp/apiserver");
    std::fs::create_dir_all(&api_dir)?;
    let api = SocketAddr::new(IpAddr::V4(CP_IP), API_PORT);
    let server = format!("https://{api}");
    let p = state::spawn(
        cp,
        "cp",
        "apiserver",
        &[
            trellis.to_string(),
            "apiserver".into(),
            "--data-dir".into(),
            s(&api_dir),
            "--listen".into(),
            api.to_string(),
            "--san".into(),
            "127.0.0.1".into(),
            "--service-cidr".into(),
            SERVICE_CIDR.into(),
            // Kubelets' serving certificates come from the cluster CA (made at first start).
            "--kubelet-certificate-authority".into(),
            s(&api_dir.join("pki/ca.crt")),
            // default/kubernetes: the API server's address, as upstream keeps it.
            "--endpoint-reconciler-type".into(),
            "lease".into(),
        ],
        &state.dir.join("logs/cp-apiserver.log"),
    )?;
    state.processes.push(p.clone());
    let admin = api_dir.join("admin.kubeconfig");
    state.kubeconfig = admin.clone();
    state.api = server.clone();
    state.save()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin.is_file()
            && tokio::net::TcpStream::connect(api).await.is_ok()
            && api_dir.join("pki/ca.key").is_file()
        {
            break;
        }
        if !p.alive() {
            bail!("the API server exited: see {}", p.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "the API server did not answer within 30 s: see {}",
                p.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    steps.done(state, &format!("API server at {server}"));
    spawn_scheduling(state, cp, "cp", &api_dir, &server, trellis)?;
    steps.done(state, "scheduler, controller-manager");
    Ok(Access {
        ca_dir: api_dir,
        front: server,
        nodes: NodeAccess::Direct,
    })
}

async fn build(args: &UpArgs, state: &mut State, exe: &Path, busybox: &Path) -> anyhow::Result<()> {
    let mut steps = Steps::new();
    let dir = state.dir.clone();
    let trellis = s(exe);
    // Underlay bridge, the host's link onto it, the control plane's and nodes' namespaces.
    let ul = add_ns(state, "ul").await?;
    ul.connect()?.ensure_bridge("br0", None).await?;
    let host_link = format!("{}-host", state.name);
    let h = Handle::current()?;
    let link = h
        .add_veth(&VethSpec {
            name: &host_link,
            peer_name: "v-host",
            peer_ns: Some(&ul),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .with_context(|| format!("creating link {host_link}"))?;
    state.host_link = Some(host_link.clone());
    state.save()?;
    {
        let u = ul.connect()?;
        let port = u.require_link("v-host").await?;
        let br = u.require_link("br0").await?;
        u.set_controller(port.index, Some(br.index)).await?;
        u.set_up(port.index).await?;
        let br_link = u.require_link("br0").await?;
        u.set_up(br_link.index).await?;
    }
    h.ensure_address(link.index, IpNet::V4(Ipv4Net::new(HOST_IP, 15)?))
        .await?;
    h.set_up(link.index).await?;
    // The control plane's namespaces: each gets the pod range routed through the first node
    // (pods that talk to the API server, DNS, are not masqueraded in the routed mode: the
    // answers go back through the first node, which routes every block).
    let mut cps = Vec::new();
    for (short, ip, role) in control_plane_layout(args.control_plane) {
        state.control_plane.push(CpRec {
            name: short.into(),
            ip: ip.to_string(),
            role: role.into(),
        });
        let ns = add_ns(state, short).await?;
        plug(&ul, &ns, short, ip).await?;
        ns.connect()?
            .replace_route(&Route::via(POD_CIDR.parse()?, IpAddr::V4(FIRST_NODE)))
            .await
            .with_context(|| format!("routing the pod range from {short}"))?;
        cps.push(ns);
    }
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("n{i}");
        let ns = add_ns(state, &name).await?;
        let ip = Ipv4Addr::new(198, 18, 1, i);
        plug(&ul, &ns, &name, ip).await?;
        // The service range leaves through the underlay, so the proxy's rules see it.
        let nh = ns.connect()?;
        let eth0 = nh.require_link("eth0").await?;
        nh.replace_route(&Route::dev(SERVICE_CIDR.parse()?, eth0.index))
            .await?;
        let ndir = dir.join("nodes").join(&name);
        for sub in [
            "etc/cni/net.d",
            "etc/trellis",
            "run/trellis",
            "var/lib/cni",
            "var/lib/trellis/kubelet",
        ] {
            std::fs::create_dir_all(ndir.join(sub))?;
        }
        state.nodes.push(NodeRec {
            name: name.clone(),
            ip: ip.to_string(),
            dir: ndir,
        });
        nodes.push(ns);
    }
    state.save()?;
    steps.done(
        state,
        &format!(
            "underlay bridge, host link, {} namespaces",
            usize::from(args.nodes) + 1 + cps.len()
        ),
    );

    // With containerd: the cluster's own, started now, and the image built from this binary
    // meanwhile; both are needed once the kubelets start.
    let logs = dir.join("logs");
    let mut image_build = None;
    if args.runtime == Runtime::Containerd {
        let c = containerd::Ctrd::new(&dir, &state.name);
        let ns = add_ns(state, "ctrd").await?;
        let p = containerd::spawn(&c, &ns, &logs)?;
        state.processes.push(p);
        state.containerd = Some(c.clone());
        state.save()?;
        let exe = exe.to_path_buf();
        let cache = args.image_cache.clone();
        image_build = Some(tokio::spawn(async move {
            containerd::build_image(&cache, &exe).await
        }));
        steps.done(state, "containerd started, the trellis image building");
    }

    // The control plane: where clients reach it, and the CA their identities come from.
    let access = match args.control_plane {
        ControlPlane::One => single_control_plane(state, &mut steps, &cps[0], &trellis).await?,
        ControlPlane::Three => {
            let etcd = which("etcd").context("etcd")?;
            ha::control_plane(state, &mut steps, &cps, &trellis, &etcd).await?
        }
    };
    let client = trellis_api::cluster::client(Some(&state.kubeconfig)).await?;
    let kc = |user: &str, groups: &[&str], server: &str, out: &Path| {
        crate::certs::kubeconfig(&access.ca_dir, user, groups, server, out)
    };
    let out = tokio::process::Command::new(exe)
        .args(["ipam", "--kubeconfig"])
        .arg(&state.kubeconfig)
        .args(["pool", "create", args.mode.name()])
        .args(args.mode.pool_args())
        .output()
        .await
        .context("running trellis ipam pool create")?;
    if !out.status.success() {
        bail!(
            "creating the IPAM pool: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    steps.done(state, "IPAM pool");

    // The mode's manifest first: the nodes' identity gets its rights before any node
    // daemon asks, and the DaemonSets wait for the nodes.
    let image = (args.runtime == Runtime::Containerd).then_some(containerd::IMAGE);
    let docs = manifest::for_up(args.mode, exe, &dir.join("nodes"), image)?;
    manifest::apply(&client, &docs).await?;
    steps.done(
        state,
        &format!(
            "applied deploy/{}.yaml (agents and policyd as DaemonSets)",
            args.mode.name()
        ),
    );

    // The image in containerd before any kubelet asks for it.
    let mut runtime_flags: Vec<String> = Vec::new();
    if let (Some(c), Some(build)) = (state.containerd.clone(), image_build) {
        let p = state
            .processes
            .iter()
            .find(|p| p.what == "containerd")
            .cloned()
            .context("containerd's process")?;
        let conn = containerd::wait_ready(&c, &p, Instant::now() + Duration::from_secs(30)).await?;
        let (cached, took) = build.await.context("the image build stopped")??;
        let digest = containerd::import(&conn, &cached.archive).await?;
        steps.done(
            state,
            &format!(
                "image {} {} in containerd ({} {:.1}s, {})",
                containerd::IMAGE,
                &digest[..digest.len().min(19)],
                if cached.hit {
                    "cached build, checked in"
                } else {
                    "built in"
                },
                took.as_secs_f64(),
                cached.archive.display()
            ),
        );
        runtime_flags = vec![
            "--runtime".into(),
            "containerd".into(),
            "--containerd-address".into(),
            s(&c.socket),
            "--containerd-namespace".into(),
            c.namespace.clone(),
            "--containerd-runc-root".into(),
            s(&c.runc_root()),
            // Image GC measures the file system containerd keeps its images on.
            "--containerd-root".into(),
            s(&c.dir.join("root")),
        ];
    }

    // Each node: (with three members) its API server failover proxy, then ipamd, the kubelet
    // and the service proxy, each with its identity.
    let refs = Path::new(REFERENCE_CNI_DIR);
    let exe_dir = exe.parent().context("the binary's directory")?;
    for (i, (rec, ns)) in state.nodes.clone().iter().zip(&nodes).enumerate() {
        let d = &rec.dir;
        let n = &rec.name;
        let server = match &access.nodes {
            NodeAccess::Direct => access.front.clone(),
            NodeAccess::Proxy(members) => {
                let p = ha::spawn_node_proxy(ns, n, members, i, &trellis, &logs)?;
                state.processes.push(p.clone());
                state.save()?;
                ha::wait_node_proxy(ns, &p).await?;
                format!("https://{}", ha::NODE_PROXY)
            }
        };
        let node_kc = d.join("etc/trellis/node.kubeconfig");
        kc(
            "system:serviceaccount:kube-system:trellis-node",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
            ],
            &server,
            &node_kc,
        )?;
        let kubelet_kc = d.join("etc/trellis/kubelet.kubeconfig");
        kc(
            &format!("system:node:{n}"),
            &["system:nodes"],
            &server,
            &kubelet_kc,
        )?;
        let proxy_kc = d.join("etc/trellis/proxy.kubeconfig");
        kc("system:kube-proxy", &[], &server, &proxy_kc)?;
        // The kubelet's HTTPS port serves a certificate from the cluster CA, which the API
        // servers check (`--kubelet-certificate-authority`) when they proxy logs and exec.
        let (serving_crt, serving_key) = (
            d.join("etc/trellis/kubelet-serving.crt"),
            d.join("etc/trellis/kubelet-serving.key"),
        );
        let node_ip: IpAddr = rec.ip.parse().context("the node's address")?;
        crate::certs::serving(
            &access.ca_dir,
            n,
            &[node_ip],
            &[],
            &serving_crt,
            &serving_key,
        )?;
        let ipamd = state::spawn(
            ns,
            n,
            "ipamd",
            &[
                trellis.clone(),
                "ipamd".into(),
                "--node".into(),
                n.clone(),
                "--kubeconfig".into(),
                s(&node_kc),
                "--socket".into(),
                s(&d.join("run/trellis/ipamd.sock")),
                "--cni-cache-dir".into(),
                s(&d.join("var/lib/cni")),
            ],
            &logs.join(format!("{n}-ipamd.log")),
        )?;
        state.processes.push(ipamd);
        let mut kubelet = vec![
            trellis.clone(),
            "kubelet".into(),
            "--node".into(),
            n.clone(),
            "--node-ip".into(),
            rec.ip.clone(),
            "--kubeconfig".into(),
            s(&kubelet_kc),
            "--root-dir".into(),
            s(&d.join("var/lib/trellis/kubelet")),
            "--netns-dir".into(),
            s(&state.run_dir),
            "--netns-prefix".into(),
            state.pod_prefix.clone(),
            "--cni-conf-dir".into(),
            s(&d.join("etc/cni/net.d")),
            "--cni-bin-dir".into(),
            s(exe_dir),
            "--cni-cache-dir".into(),
            s(&d.join("var/lib/cni")),
            "--cluster-dns".into(),
            DNS_IP.into(),
            "--sync-ms".into(),
            "300".into(),
            "--backoff-secs".into(),
            "1".into(),
            "--listen".into(),
            "127.0.0.1:10248".into(),
            "--tls-cert-file".into(),
            s(&serving_crt),
            "--tls-private-key-file".into(),
            s(&serving_key),
            // Relative: under the cgroup `trellis up` runs in, where `trellis down` finds it.
            "--cgroup-root".into(),
            format!("{}/{n}", state::cgroup_base(&state.name)),
        ];
        if refs.is_dir() {
            kubelet.extend(["--cni-bin-dir".into(), s(refs)]);
        }
        kubelet.extend(runtime_flags.iter().cloned());
        let p = state::spawn(
            ns,
            n,
            "kubelet",
            &kubelet,
            &logs.join(format!("{n}-kubelet.log")),
        )?;
        state.processes.push(p);
        let p = state::spawn(
            ns,
            n,
            "proxy",
            &[
                trellis.clone(),
                "proxy".into(),
                "--node".into(),
                n.clone(),
                "--kubeconfig".into(),
                s(&proxy_kc),
                "--cluster-cidr".into(),
                POD_CIDR.into(),
                "--listen".into(),
                "127.0.0.1:10256".into(),
            ],
            &logs.join(format!("{n}-proxy.log")),
        )?;
        state.processes.push(p);
    }
    state.save()?;
    steps.done(
        state,
        &format!("ipamd, kubelet, proxy on {} nodes", args.nodes),
    );

    // DNS (through the API's address, which survives a member's loss) and the demo.
    let addons = dir.join("addons");
    std::fs::create_dir_all(&addons)?;
    let dns_kc = addons.join("dns.kubeconfig");
    kc(
        "system:serviceaccount:kube-system:trellis-dns",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ],
        &access.front,
        &dns_kc,
    )?;
    let no_upstream = addons.join("dns-upstreams.conf");
    std::fs::write(
        &no_upstream,
        "# trellis up: cluster DNS forwards nothing, so no query leaves the machine\n",
    )?;
    let mut dns = dns_docs(exe, &dns_kc, &no_upstream);
    let www = dir.join("demo/www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "Hello from the trellis up demo\n")?;
    let mut demo = demo_docs(busybox, &www);
    if let Some(image) = image {
        // The image's own programs, and the files up keeps for them at the host's paths.
        for (docs, program, shared) in [
            (&mut dns, "trellis", &addons),
            (&mut demo, "busybox", &dir.join("demo")),
        ] {
            for d in docs.iter_mut().filter(|d| d["kind"] == "Deployment") {
                if let Some(first) = d.pointer_mut("/spec/template/spec/containers/0/command/0") {
                    *first = json!(program);
                }
                manifest::share_host_dir(d, "trellis-up-files", shared, image);
            }
        }
    }
    manifest::apply(&client, &dns).await?;
    manifest::apply(&client, &demo).await?;
    steps.done(state, "DNS and the demo applied");

    // Routes for the pod and service ranges, through the underlay only (via the first node).
    let via = IpAddr::V4(FIRST_NODE);
    for cidr in [POD_CIDR, SERVICE_CIDR] {
        h.replace_route(&Route::via(cidr.parse()?, via).oif(link.index))
            .await
            .with_context(|| format!("adding the route {cidr} via {via}"))?;
    }

    // Ready: every node, DNS and the demo; the demo answers from here by address.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    wait_nodes_ready(&client, args.nodes, deadline, state).await?;
    // A route per node block straight to its node: traffic from here then enters the
    // node that holds the pod with its own source address (forwarded over VXLAN by another
    // node, the overlay would masquerade it, and NetworkPolicy ipBlocks could not see it).
    let nodes_api: Api<Node> = Api::all(client.clone());
    for n in nodes_api.list(&ListParams::default()).await?.items {
        let block = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("trellis.dev/pod-cidr"))
            .and_then(|c| c.parse::<IpNet>().ok());
        let node_ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        if let (Some(block), Some(node_ip)) = (block, node_ip) {
            h.replace_route(&Route::via(block, node_ip).oif(link.index))
                .await
                .with_context(|| format!("adding the route {block} via {node_ip}"))?;
        }
    }
    steps.done(state, &format!("{} nodes Ready", args.nodes));
    wait_pods_ready(
        &client,
        "kube-system",
        "k8s-app=kube-dns",
        1,
        deadline,
        state,
    )
    .await?;
    let web = wait_pods_ready(&client, "demo", "app=web", 2, deadline, state).await?;
    steps.done(state, "DNS and demo pods Ready");
    for ip in &web {
        loop {
            match http_get(SocketAddr::new(*ip, 80)).await {
                Ok(body) if body.contains("Hello") => break,
                _ if Instant::now() > deadline => {
                    bail!("the demo at http://{ip}/ did not answer from here in time")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    steps.done(state, "the demo answers here on every web pod's address");
    Ok(())
}

/// The processes' logs' last lines, for an error.
fn log_tails(state: &State) -> String {
    let mut out = String::new();
    for p in &state.processes {
        if !p.alive() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
            let _ = write!(
                out,
                "\n  {} on {} exited; its log ends:\n    {tail}",
                p.what, p.on
            );
        }
    }
    out
}

async fn wait_nodes_ready(
    client: &kube::Client,
    n: u8,
    deadline: Instant,
    state: &State,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let list = nodes.list(&ListParams::default()).await?;
        let ready = list.items.iter().filter(|n| node_ready(n)).count();
        if ready >= usize::from(n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{ready} of {n} nodes Ready in time (logs in {}){}",
                state.dir.join("logs").display(),
                log_tails(state)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits for `n` Ready pods matching `selector`; returns their addresses.
async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    n: usize,
    deadline: Instant,
    state: &State,
) -> anyhow::Result<Vec<IpAddr>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let ready: Vec<IpAddr> = list
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
            .collect();
        if ready.len() >= n {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {n} pods {selector} in {namespace} Ready in time (logs in {}){}",
                ready.len(),
                state.dir.join("logs").display(),
                log_tails(state)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One plain HTTP GET of `/`, bounded.
async fn http_get(to: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(to).await?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    Ok(tokio::time::timeout(Duration::from_secs(2), fut).await??)
}

/// Cluster DNS: its identity's rights, the Deployment, the Service at 10.96.0.10.
fn dns_docs(exe: &Path, kubeconfig: &Path, resolv: &Path) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "trellis-dns", "namespace": "kube-system"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "trellis-dns"},
               "rules": [
                 {"apiGroups": [""], "resources": ["services", "endpoints", "namespaces", "pods"],
                  "verbs": ["get", "list", "watch"]},
                 {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                  "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "trellis-dns"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "trellis-dns"},
               "subjects": [{"kind": "ServiceAccount", "name": "trellis-dns", "namespace": "kube-system"}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "trellis-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                 "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                   "spec": {"serviceAccountName": "trellis-dns", "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "dns", "image": "trellis:latest", "imagePullPolicy": "IfNotPresent",
                       "command": [s(exe), "dns", "--kubeconfig", s(kubeconfig), "--listen", "0.0.0.0:53",
                                   "--resolv-conf", s(resolv), "--metrics-listen", "127.0.0.1:9153"],
                       "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
               "spec": {"clusterIP": DNS_IP, "selector": {"k8s-app": "kube-dns"},
                        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
    ]
}

/// The demo: namespace `demo`, a web Deployment of 2 behind Service `web`, and a
/// NetworkPolicy that lets in only pods labelled `role=client` and the underlay (the nodes and
/// the namespace `up` ran in).
fn demo_docs(busybox: &Path, www: &Path) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "demo"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                   "spec": {"terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "httpd", "image": "busybox:stable",
                       "command": [s(busybox), "httpd", "-f", "-p", "80", "-h", s(www)],
                       "ports": [{"name": "http", "containerPort": 80}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "demo"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 80}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "web-clients-only", "namespace": "demo"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                       {"ipBlock": {"cidr": UNDERLAY}}],
                              "ports": [{"protocol": "TCP", "port": 80}]}]}}),
    ]
}

/// The summary table and the access notes (also written to `<state>/access.txt`).
async fn summary(state: &State, total: Duration) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncluster {:?} is up in {:.2}s (mode {}, runtime {})",
        state.name,
        total.as_secs_f64(),
        state.mode,
        state.runtime
    );
    let _ = writeln!(
        out,
        "\n  {:<6} {:<12} {:<14} NAMESPACE",
        "NODE", "ADDRESS", "ROLE"
    );
    for c in &state.control_plane {
        let _ = writeln!(
            out,
            "  {:<6} {:<12} {:<14} {}-{}",
            c.name, c.ip, c.role, state.name, c.name
        );
    }
    for n in &state.nodes {
        let _ = writeln!(
            out,
            "  {:<6} {:<12} {:<14} {}-{}",
            n.name, n.ip, "worker", state.name, n.name
        );
    }
    let _ = writeln!(
        out,
        "\n  pods {POD_CIDR}, services {SERVICE_CIDR}, DNS {DNS_IP}, underlay {UNDERLAY} (this namespace: {HOST_IP})"
    );
    let _ = writeln!(out, "\n  {:<64} {:>8}", "STEP", "SECONDS");
    for (what, secs) in &state.timings {
        let _ = writeln!(out, "  {what:<64} {secs:>8.2}");
    }
    let _ = writeln!(out, "  {:<64} {:>8.2}", "total", total.as_secs_f64());
    let mut web = String::new();
    if let Ok(client) = trellis_api::cluster::client(Some(&state.kubeconfig)).await {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
        if let Ok(list) = pods.list(&ListParams::default().labels("app=web")).await {
            for p in list.items {
                if let Some(ip) = p.status.and_then(|s| s.pod_ip) {
                    let _ = write!(web, " http://{ip}/");
                }
            }
        }
    }
    let ha = if state.control_plane.len() > 1 {
        format!(
            "  (the server {} is the front door: a failover proxy to the API servers of {}, so kubectl keeps working when a member is lost)\n",
            state.api,
            state
                .control_plane
                .iter()
                .filter(|c| c.name != "api")
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    let access = format!(
        "kubeconfig: {kc}\n{ha}  kubectl --kubeconfig {kc} get nodes,pods -A\n\
         demo from this namespace (pod addresses, routed through the underlay):{web}\n  curl{web}\n\
         demo from a pod: http://web.demo (only pods labelled role=client get in: NetworkPolicy demo/web-clients-only)\n\
         status: {me} status --name {name}\n\
         tear down: {me} down --name {name}\n",
        kc = state.kubeconfig.display(),
        name = state.name,
        me = invoked_as(),
    );
    let _ = std::fs::write(state.dir.join("access.txt"), &access);
    println!(
        "{out}\n{access}(also in {})",
        state.dir.join("access.txt").display()
    );
}

pub async fn down(args: DownArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = args.at.dir();
    let state = match State::load(&dir)? {
        Some(s) => s,
        None => {
            // No state: remove by name whatever a crashed `up` may have left.
            let run_dir = PathBuf::from(trellis_net::netns::DEFAULT_RUN_DIR);
            let mut namespaces: Vec<String> = ["ul", "ctrd", "cp", "api", "cp1", "cp2", "cp3"]
                .iter()
                .map(|short| format!("{}-{short}", args.at.name))
                .collect();
            namespaces.extend((1..=MAX_NODES).map(|i| format!("{}-n{i}", args.at.name)));
            let present: Vec<String> = namespaces
                .into_iter()
                .filter(|n| run_dir.join(n).exists())
                .collect();
            let link = format!("{}-host", args.at.name);
            let has_link = Handle::current()?.link(&link).await?.is_some();
            if present.is_empty() && !has_link {
                println!(
                    "no cluster named {:?} is up (no {})",
                    args.at.name,
                    State::path(&dir).display()
                );
                return Ok(());
            }
            State {
                name: args.at.name.clone(),
                dir: dir.clone(),
                run_dir,
                namespaces: present,
                pod_prefix: format!("{}-pod-", args.at.name),
                host_link: has_link.then_some(link),
                ..Default::default()
            }
        }
    };
    let problems = state::teardown(&state).await;
    if !problems.is_empty() {
        bail!("trellis down left: {}", problems.join("; "));
    }
    println!(
        "cluster {:?} removed in {:.2}s: {} processes, {} namespaces and their pods, link {}",
        state.name,
        started.elapsed().as_secs_f64(),
        state.processes.len(),
        state.namespaces.len(),
        state.host_link.as_deref().unwrap_or("-")
    );
    Ok(())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = args.at.dir();
    let Some(state) = State::load(&dir)? else {
        bail!(
            "no cluster named {:?} is up (no {})",
            args.at.name,
            State::path(&dir).display()
        );
    };
    let mut healthy = state.complete;
    println!(
        "cluster {:?}, mode {}, runtime {}, API {}{}",
        state.name,
        state.mode,
        if state.runtime.is_empty() {
            "process"
        } else {
            &state.runtime
        },
        state.api,
        if state.complete {
            ""
        } else {
            " (up did not finish)"
        }
    );
    println!("\n  {:<20} {:<4} {:>8}  STATE", "PROCESS", "ON", "PID");
    for p in &state.processes {
        let alive = p.alive();
        healthy &= alive;
        println!(
            "  {:<20} {:<4} {:>8}  {}",
            p.what,
            p.on,
            p.pid,
            if alive { "running" } else { "GONE" }
        );
    }
    match trellis_api::cluster::client(Some(&state.kubeconfig)).await {
        Ok(client) => {
            let nodes: Api<Node> = Api::all(client.clone());
            match nodes.list(&ListParams::default()).await {
                Ok(list) => {
                    println!("\n  {:<6} READY", "NODE");
                    for n in &list.items {
                        let r = node_ready(n);
                        healthy &= r;
                        println!("  {:<6} {}", n.metadata.name.as_deref().unwrap_or(""), r);
                    }
                }
                Err(e) => {
                    healthy = false;
                    println!("\n  the API server does not answer: {e}");
                }
            }
            let pods: Api<Pod> = Api::all(client);
            if let Ok(list) = pods.list(&ListParams::default()).await {
                let ready = list.items.iter().filter(|p| pod_ready(p)).count();
                println!("\n  pods: {ready} of {} Ready", list.items.len());
                for p in list.items.iter().filter(|p| !pod_ready(p)) {
                    println!(
                        "    not ready: {}/{}",
                        p.metadata.namespace.as_deref().unwrap_or(""),
                        p.metadata.name.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Err(e) => {
            healthy = false;
            println!("\n  no client: {e}");
        }
    }
    if healthy {
        println!("\nhealthy");
        Ok(())
    } else {
        bail!("cluster {:?} is not healthy", state.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_and_names_are_refused_with_the_reason() {
        assert!(parse_nodes("0").unwrap_err().contains("1 to 64"));
        assert!(parse_nodes("100").unwrap_err().contains("1 to 64"));
        assert_eq!(parse_nodes("64"), Ok(64));
        assert_eq!(parse_control_plane("1"), Ok(ControlPlane::One));
        assert_eq!(parse_control_plane("3"), Ok(ControlPlane::Three));
        assert!(parse_control_plane("2").unwrap_err().contains("majority"));
        assert!(parse_control_plane("5").unwrap_err().contains("1 member"));
        assert!(parse_name("Bad_Name").is_err());
        assert!(parse_name("elevenchars").is_err());
        assert_eq!(parse_name("tb1-u"), Ok("tb1-u".into()));
    }

    #[test]
    fn the_demo_policy_admits_clients_and_the_underlay_only() {
        let docs = demo_docs(Path::new("/bin/busybox"), Path::new("/w"));
        let np = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
        let from = &np["spec"]["ingress"][0]["from"];
        assert_eq!(from[0]["podSelector"]["matchLabels"]["role"], "client");
        assert_eq!(from[1]["ipBlock"]["cidr"], UNDERLAY);
    }
}
