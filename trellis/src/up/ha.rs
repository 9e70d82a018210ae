//! `--control-plane 3`: three members, each a namespace on the underlay with an etcd member,
//! an API server on it, a scheduler and a controller-manager — kubeadm's stacked topology.
//!
//! - **etcd.** Debian's `etcd`, with a CA of its own (kubeadm's `etcd/ca.crt`): `up` makes
//!   an etcd CA once per cluster (`<dir>/etcd-ca/`, the key 0600 and nowhere else) and issues
//!   every etcd certificate from it; etcd trusts only it (`--trusted-ca-file`,
//!   `--peer-trusted-ca-file`), never the cluster CA. etcd 3.4 cannot restrict clients by
//!   common name, so with the cluster CA trusted any certificate that CA issues (a kubelet's,
//!   the admin's) was a full read/write client of the store; with its own CA only the API
//!   servers' certificate is. Peers on the members' underlay addresses (port 2380) over TLS
//!   both ways — each member a peer certificate for its address, peers required to present one
//!   (`--peer-client-cert-auth`) with the peers' common name (`--peer-cert-allowed-cn`, so the
//!   API servers' etcd client certificate is no peer), from the address it names (etcd's own
//!   check); clients on each member's loopback only, so nothing but that member's API server
//!   talks to it, over TLS with a client certificate (`--client-cert-auth`, a serving
//!   certificate for 127.0.0.1 and the API server's `kube-apiserver-etcd-client` certificate;
//!   kube-apiserver's `--etcd-cafile` (the etcd CA)/`--etcd-certfile`/`--etcd-keyfile`). Two
//!   of three members keep a majority.
//! - **API servers.** One cluster CA and service-account key, made by `up` and copied to each
//!   member (kubeadm shares them the same way), and one serving certificate that names every
//!   address a client may use: the members', the front door's and 127.0.0.1.
//! - **Scheduler and controller-manager.** Each member runs both, against its own API server,
//!   with the Lease identity `<cluster>-cpN`; `up` starts cp1's first and waits until they hold
//!   the Leases, so cp1 leads when `up` ends. The others stand by and take over within the
//!   lease duration (15 s) when the leader stops renewing.
//! - **Clients.** Our clients (kube-rs) and kubectl take one server, so every client talks to
//!   a `trellis apiserver-proxy`, a TCP failover proxy (TLS passes through): on each node at
//!   127.0.0.1:6443, first choice rotating so the nodes spread over the members, and — for
//!   kubectl in the namespace `up` ran in, and for cluster DNS — a front door at
//!   198.18.0.2:6443 in a namespace of its own, not a member, as the load balancer kubeadm's HA
//!   guide puts in front of the control plane.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use trellis_net::Netns;

use super::state::{self, Proc, State};
use super::{API_PORT, Access, CP_IP, NodeAccess, SERVICE_CIDR, Steps, s};

/// The members: short name and underlay address.
pub const MEMBERS: [(&str, Ipv4Addr); 3] = [
    ("cp1", Ipv4Addr::new(198, 18, 0, 11)),
    ("cp2", Ipv4Addr::new(198, 18, 0, 12)),
    ("cp3", Ipv4Addr::new(198, 18, 0, 13)),
];

/// Where a node's daemons reach the API: the node's own failover proxy.
pub const NODE_PROXY: &str = "127.0.0.1:6443";
/// A proxy's `/healthz`, `/readyz` and `/metrics`.
const PROXY_HEALTH: &str = "127.0.0.1:6444";
/// Each member's etcd, for its own API server only (TLS, with a client certificate).
pub const ETCD_CLIENT: &str = "https://127.0.0.1:2379";
/// The common name of the API servers' etcd client certificate (kubeadm's).
const ETCD_CLIENT_CN: &str = "kube-apiserver-etcd-client";
pub const ETCD_PEER_PORT: u16 = 2380;
/// The common name of every member's peer certificate, the only one peers accept.
const ETCD_PEER_CN: &str = "trellis-etcd-peer";
/// How long the first API server may take, etcd's first election included.
const FIRST_API_LIMIT: Duration = Duration::from_secs(60);
const API_LIMIT: Duration = Duration::from_secs(30);

fn api_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), API_PORT)
}

/// Builds the three members in `members` and the front door in `front`.
pub async fn control_plane(
    state: &mut State,
    steps: &mut Steps,
    namespaces: &[Netns],
    trellis: &str,
    etcd: &Path,
) -> anyhow::Result<Access> {
    let [front_ns, m1, m2, m3] = namespaces else {
        bail!("the HA control plane needs the front door's and three members' namespaces");
    };
    let members = [m1, m2, m3];
    let dir = state.dir.clone();
    let logs = dir.join("logs");
    let apis: Vec<SocketAddr> = MEMBERS.iter().map(|(_, ip)| api_addr(*ip)).collect();
    let front = api_addr(CP_IP);
    let server = format!("https://{front}");

    // One CA, service-account key and serving certificate for all, copied to each member.
    let sans: Vec<String> = std::iter::once(CP_IP)
        .chain(MEMBERS.iter().map(|(_, ip)| *ip))
        .map(|ip| ip.to_string())
        .collect();
    let api_dir = |short: &str| dir.join(short).join("apiserver");
    let ca_dir = api_dir(MEMBERS[0].0);
    let pki = trellis_apiserver::pki::Pki::ensure(&ca_dir, &sans)
        .context("making the cluster CA and the API servers' certificate")?;
    trellis_apiserver::token::ensure_key(&pki.dir)
        .context("making the service-account signing key")?;
    for (short, _) in &MEMBERS[1..] {
        copy_dir(&pki.dir, &api_dir(short).join("pki"))?;
    }
    state.kubeconfig = dir.join("admin.kubeconfig");
    state.api = server.clone();
    crate::certs::kubeconfig(
        &ca_dir,
        "admin",
        &["system:masters"],
        &server,
        &state.kubeconfig,
    )?;
    state.save()?;

    // etcd on every member at once: the first needs a majority to answer.
    let initial = MEMBERS
        .iter()
        .map(|(short, ip)| format!("{short}=https://{ip}:{ETCD_PEER_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    let etcd_ca = etcd_ca(&dir.join(ETCD_CA_DIR))?;
    let mut etcds = Vec::new();
    for ((short, ip), ns) in MEMBERS.iter().zip(members) {
        let peer = format!("https://{ip}:{ETCD_PEER_PORT}");
        let tls = etcd_certificates(&etcd_ca, &dir.join(short).join("etcd-pki"), short, *ip)?;
        let p = state::spawn(
            ns,
            short,
            "etcd",
            &[
                s(etcd),
                "--name".into(),
                short.to_string(),
                "--data-dir".into(),
                s(&dir.join(short).join("etcd")),
                "--listen-client-urls".into(),
                ETCD_CLIENT.into(),
                "--advertise-client-urls".into(),
                ETCD_CLIENT.into(),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                state.name.clone(),
                "--peer-cert-file".into(),
                s(&tls.cert),
                "--peer-key-file".into(),
                s(&tls.key),
                "--peer-trusted-ca-file".into(),
                s(&tls.ca),
                "--peer-client-cert-auth".into(),
                "--peer-cert-allowed-cn".into(),
                ETCD_PEER_CN.into(),
                "--cert-file".into(),
                s(&tls.server_cert),
                "--key-file".into(),
                s(&tls.server_key),
                "--trusted-ca-file".into(),
                s(&tls.ca),
                "--client-cert-auth".into(),
                "--logger".into(),
                "zap".into(),
                "--log-outputs".into(),
                "stderr".into(),
            ],
            &logs.join(format!("{short}-etcd.log")),
        )?;
        state.processes.push(p.clone());
        etcds.push(p);
    }
    state.save()?;

    let etcd_pki = |short: &str| dir.join(short).join("etcd-pki");
    let spawn_apiserver = |state: &mut State, k: usize| -> anyhow::Result<Proc> {
        let (short, ip) = MEMBERS[k];
        let mut argv = vec![
            trellis.to_string(),
            "apiserver".into(),
            "--data-dir".into(),
            s(&api_dir(short)),
            "--listen".into(),
            api_addr(ip).to_string(),
            "--store".into(),
            format!("etcd:{ETCD_CLIENT}"),
            "--etcd-cafile".into(),
            s(&etcd_pki(short).join("ca.crt")),
            "--etcd-certfile".into(),
            s(&etcd_pki(short).join(ETCD_CLIENT_FILES.0)),
            "--etcd-keyfile".into(),
            s(&etcd_pki(short).join(ETCD_CLIENT_FILES.1)),
            "--service-cidr".into(),
            SERVICE_CIDR.into(),
            "--kubelet-certificate-authority".into(),
            s(&api_dir(short).join("pki/ca.crt")),
            // default/kubernetes lists every live member (their leases in etcd).
            "--endpoint-reconciler-type".into(),
            "lease".into(),
        ];
        for san in &sans {
            argv.extend(["--san".into(), san.clone()]);
        }
        let p = state::spawn(
            members[k],
            short,
            "apiserver",
            &argv,
            &logs.join(format!("{short}-apiserver.log")),
        )?;
        state.processes.push(p.clone());
        state.save()?;
        Ok(p)
    };
    // The first API server alone: it bootstraps the namespaces and roles the others find.
    let first = spawn_apiserver(state, 0)?;
    let mut fargv = vec![
        trellis.to_string(),
        "apiserver-proxy".into(),
        "--listen".into(),
        front.to_string(),
        "--metrics-listen".into(),
        PROXY_HEALTH.into(),
    ];
    for a in &apis {
        fargv.extend(["--backend".into(), a.to_string()]);
    }
    let p = state::spawn(
        front_ns,
        "api",
        "apiserver-proxy",
        &fargv,
        &logs.join("api-apiserver-proxy.log"),
    )?;
    state.processes.push(p);
    state.save()?;
    wait_listening(apis[0], &first, &etcds, FIRST_API_LIMIT).await?;
    steps.done(
        state,
        &format!("etcd on cp1–cp3, API server on cp1, front door at {server}"),
    );

    // cp1's scheduler and controller-manager first, so they lead; meanwhile the other API
    // servers start.
    spawn_scheduling_on(state, members[0], 0, &ca_dir, trellis)?;
    let others = [spawn_apiserver(state, 1)?, spawn_apiserver(state, 2)?];
    for (k, p) in others.iter().enumerate() {
        wait_listening(apis[k + 1], p, &etcds, API_LIMIT).await?;
    }
    steps.done(state, "API servers on cp2 and cp3");
    let client = trellis_api::cluster::client(Some(&state.kubeconfig)).await?;
    let leader = format!("{}-{}", state.name, MEMBERS[0].0);
    wait_leaders(&client, &leader, Instant::now() + API_LIMIT, state).await?;
    for (k, ns) in members.iter().enumerate().skip(1) {
        spawn_scheduling_on(state, ns, k, &ca_dir, trellis)?;
    }
    steps.done(
        state,
        "schedulers and controller-managers on cp1–cp3 (cp1's lead)",
    );
    Ok(Access {
        ca_dir,
        front: server,
        nodes: NodeAccess::Proxy(apis),
    })
}

/// The etcd CA's directory in the cluster's: `ca.crt`, `ca.key` (0600).
pub const ETCD_CA_DIR: &str = "etcd-ca";
/// The etcd CA's common name (kubeadm's `etcd-ca`, with our prefix).
const ETCD_CA_CN: &str = "trellis-etcd-ca";

/// The cluster's etcd CA in `dir` (made once: kept if both files are there), apart from the
/// cluster CA so that etcd trusts no certificate the cluster CA issues. Only `up` holds its
/// key; the members get its certificate.
fn etcd_ca(dir: &Path) -> anyhow::Result<trellis_apiserver::pki::CertPair> {
    use std::os::unix::fs::DirBuilderExt as _;
    use trellis_apiserver::pki;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if let (Ok(cert_pem), Ok(key_pem)) =
        (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
    {
        return Ok(pki::CertPair { cert_pem, key_pem });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let ca = pki::new_ca_named(ETCD_CA_CN).context("making the etcd CA")?;
    pki::write_private(&key, &ca.key_pem).with_context(|| format!("writing {}", key.display()))?;
    pki::write_public(&crt, &ca.cert_pem).with_context(|| format!("writing {}", crt.display()))?;
    Ok(ca)
}

/// Where the API server's etcd client certificate and key are, in a member's `etcd-pki`.
pub const ETCD_CLIENT_FILES: (&str, &str) =
    ("apiserver-etcd-client.crt", "apiserver-etcd-client.key");

/// A member's etcd certificates and keys, and the CA (the etcd CA) that checks its peers and
/// clients.
struct EtcdTls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

/// Issues member `short`'s etcd certificates from the etcd CA `ca` and writes them, their keys
/// (0600) and the CA's certificate into `dir`:
/// - the peer certificate — CN [`ETCD_PEER_CN`], its underlay address as the only SAN, for
///   serving and as a client (a member dials its peers with it; etcd checks that a peer
///   connects from an address of its certificate, and would look a DNS name up, which nothing
///   here could answer);
/// - the client port's serving certificate, for 127.0.0.1 (where its API server dials);
/// - its API server's client certificate, CN [`ETCD_CLIENT_CN`] ([`ETCD_CLIENT_FILES`]).
fn etcd_certificates(
    ca: &trellis_apiserver::pki::CertPair,
    dir: &Path,
    short: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<EtcdTls> {
    use trellis_apiserver::pki;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = EtcdTls {
        cert: dir.join("peer.crt"),
        key: dir.join("peer.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    };
    let issued = [
        (ETCD_PEER_CN, vec![ip.to_string()], &out.cert, &out.key),
        (
            "trellis-etcd-server",
            vec!["127.0.0.1".to_string()],
            &out.server_cert,
            &out.server_key,
        ),
        (
            ETCD_CLIENT_CN,
            Vec::new(),
            &dir.join(ETCD_CLIENT_FILES.0),
            &dir.join(ETCD_CLIENT_FILES.1),
        ),
    ];
    for (cn, sans, cert, key) in issued {
        let pair = pki::issue(ca, cn, &[], &sans)
            .with_context(|| format!("issuing {short}'s etcd certificate {cn}"))?;
        pki::write_private(key, &pair.key_pem)
            .with_context(|| format!("writing {}", key.display()))?;
        pki::write_public(cert, &pair.cert_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
    }
    pki::write_public(&out.ca, &ca.cert_pem)
        .with_context(|| format!("writing {}", out.ca.display()))?;
    Ok(out)
}

fn spawn_scheduling_on(
    state: &mut State,
    ns: &Netns,
    k: usize,
    ca_dir: &Path,
    trellis: &str,
) -> anyhow::Result<()> {
    let (short, ip) = MEMBERS[k];
    let server = format!("https://{}", api_addr(ip));
    super::spawn_scheduling(state, ns, short, ca_dir, &server, trellis)
}

/// Starts node `node`'s (the `index`th node's) failover proxy at [`NODE_PROXY`]; its first
/// choice is member `index mod 3`, so the nodes spread over the members.
pub fn spawn_node_proxy(
    ns: &Netns,
    node: &str,
    members: &[SocketAddr],
    index: usize,
    trellis: &str,
    logs: &Path,
) -> anyhow::Result<Proc> {
    let mut argv = vec![
        trellis.to_string(),
        "apiserver-proxy".into(),
        "--listen".into(),
        NODE_PROXY.into(),
        "--metrics-listen".into(),
        PROXY_HEALTH.into(),
    ];
    for a in &proxy_order(members, index) {
        argv.extend(["--backend".into(), a.to_string()]);
    }
    state::spawn(
        ns,
        node,
        "apiserver-proxy",
        &argv,
        &logs.join(format!("{node}-apiserver-proxy.log")),
    )
}

/// Waits until node `ns`'s failover proxy `p` accepts connections at [`NODE_PROXY`]. The
/// node's daemons connect to it as soon as they start, and ipamd and the kubelet end on a
/// refused first connection; a proxy still starting on a loaded machine lost a node that way.
pub async fn wait_node_proxy(ns: &Netns, p: &Proc) -> anyhow::Result<()> {
    let addr: SocketAddr = NODE_PROXY.parse().context("the node proxy's address")?;
    let deadline = Instant::now() + API_LIMIT;
    loop {
        let listening = ns.run(|| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        })?;
        if listening {
            return Ok(());
        }
        if !p.alive() {
            bail!(
                "the API proxy on {} exited ({}); its log ends:\n    {}",
                p.on,
                p.log.display(),
                tail(p)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the API proxy on {} did not listen at {NODE_PROXY} within {} s ({}); its log ends:\n    {}",
                p.on,
                API_LIMIT.as_secs(),
                p.log.display(),
                tail(p)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `index`th node's order of preference: the members rotated by `index`.
fn proxy_order(members: &[SocketAddr], index: usize) -> Vec<SocketAddr> {
    let mut order = members.to_vec();
    if !order.is_empty() {
        let len = order.len();
        order.rotate_left(index % len);
    }
    order
}

/// Copies the files of `from` into `to` (made), keeping their modes (keys stay 0600).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The last lines of a process's log.
fn tail(p: &Proc) -> String {
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n    ")
}

/// Waits until `api` accepts connections (an API server binds once its store answered and
/// it bootstrapped); fails early, with the log's end, when it or an etcd member exits.
async fn wait_listening(
    api: SocketAddr,
    p: &Proc,
    etcds: &[Proc],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(api));
        if let Ok(Ok(_)) = attempt.await {
            return Ok(());
        }
        for q in std::iter::once(p).chain(etcds) {
            if !q.alive() {
                bail!(
                    "{} on {} exited ({}); its log ends:\n    {}",
                    q.what,
                    q.on,
                    q.log.display(),
                    tail(q)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the API server on {} did not answer at {api} within {} s ({}); its log ends:\n    {}",
                p.on,
                limit.as_secs(),
                p.log.display(),
                tail(p)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `identity` holds both the scheduler's and the controller-manager's Lease.
async fn wait_leaders(
    client: &kube::Client,
    identity: &str,
    deadline: Instant,
    state: &State,
) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    loop {
        let mut held = Vec::new();
        for name in ["kube-scheduler", "kube-controller-manager"] {
            let holder = leases
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity);
            held.push((name, holder));
        }
        if held.iter().all(|(_, h)| h.as_deref() == Some(identity)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{identity}'s scheduler and controller-manager did not take their Leases in time: {held:?}{}",
                super::log_tails(state)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_certificate_names_the_peers_cn_and_only_the_members_address() {
        use base64::Engine as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = etcd_ca(&dir.path().join(ETCD_CA_DIR)).unwrap();
        let out = dir.path().join("etcd-pki");
        let tls = etcd_certificates(&ca, &out, "cp2", MEMBERS[1].1).unwrap();
        for key in [&tls.server_key, &out.join(ETCD_CLIENT_FILES.1)] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        for cert in [&tls.server_cert, &out.join(ETCD_CLIENT_FILES.0)] {
            assert!(
                std::fs::read_to_string(cert)
                    .unwrap()
                    .contains("BEGIN CERTIFICATE")
            );
        }
        let mode = std::fs::metadata(&tls.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is the member's only");
        assert_eq!(
            std::fs::read_to_string(&tls.ca).unwrap(),
            ca.cert_pem,
            "peers are checked against the etcd CA"
        );
        let pem = std::fs::read_to_string(&tls.cert).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let (cn, orgs) = trellis_apiserver::pki::identity(&der).unwrap();
        assert_eq!(cn, ETCD_PEER_CN);
        assert!(orgs.is_empty());
        // The address, and no DNS name (etcd would look it up).
        assert!(
            der.windows(4).any(|w| w == [198, 18, 0, 12]),
            "the member's address"
        );
        let text = String::from_utf8_lossy(&der);
        assert!(!text.contains("cp2"), "a DNS SAN cp2");
    }

    /// The DER of the first PEM block of `pem`.
    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let b64: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// Whether a TLS server trusting only `ca_pem` for client certificates (etcd's
    /// `--client-cert-auth --trusted-ca-file`) takes `cert_pem` as a client.
    fn client_accepted(ca_pem: &str, cert_pem: &str) -> bool {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der(ca_pem))).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&CertificateDer::from(der(cert_pem)), &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn etcd_trusts_its_own_ca_and_no_certificate_of_the_cluster_ca() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cluster =
            trellis_apiserver::pki::Pki::ensure(&dir.path().join("apiserver"), &[]).unwrap();
        let ca_dir = dir.path().join(ETCD_CA_DIR);
        let ca = etcd_ca(&ca_dir).unwrap();
        assert_ne!(ca.cert_pem, cluster.ca.cert_pem, "a CA of its own");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);
        // Made once per cluster: a second call (every member) gets the same CA.
        assert_eq!(etcd_ca(&ca_dir).unwrap().cert_pem, ca.cert_pem);

        let out = dir.path().join("etcd-pki");
        let tls = etcd_certificates(&ca, &out, "cp1", MEMBERS[0].1).unwrap();
        let trusted = std::fs::read_to_string(&tls.ca).unwrap();
        assert_eq!(
            trusted, ca.cert_pem,
            "etcd's --trusted-ca-file is the etcd CA"
        );
        let client = std::fs::read_to_string(out.join(ETCD_CLIENT_FILES.0)).unwrap();
        assert!(
            client_accepted(&trusted, &client),
            "the API server's etcd client certificate is taken"
        );
        assert!(
            client_accepted(&trusted, &std::fs::read_to_string(&tls.cert).unwrap()),
            "a member's peer certificate is taken"
        );
        // The cluster CA's certificates — the admin's (system:masters), a kubelet's, and one
        // with the API server's very CN — are refused: the CA decides, not the name.
        let kubelet =
            trellis_apiserver::pki::issue(&cluster.ca, "system:node:n1", &["system:nodes"], &[])
                .unwrap();
        let same_cn = trellis_apiserver::pki::issue(&cluster.ca, ETCD_CLIENT_CN, &[], &[]).unwrap();
        for (what, cert) in [
            ("admin", &cluster.admin.cert_pem),
            ("kubelet", &kubelet.cert_pem),
            ("same CN", &same_cn.cert_pem),
        ] {
            assert!(
                !client_accepted(&trusted, cert),
                "{what} is refused by etcd"
            );
            // Negative control: trusting the cluster CA (what etcd did before) takes each.
            assert!(
                client_accepted(&cluster.ca.cert_pem, cert),
                "{what} was taken with the cluster CA trusted"
            );
        }
    }

    #[test]
    fn the_nodes_first_choices_spread_over_the_members() {
        let members: Vec<SocketAddr> = MEMBERS.iter().map(|(_, ip)| api_addr(*ip)).collect();
        let firsts: Vec<SocketAddr> = (0..6).map(|i| proxy_order(&members, i)[0]).collect();
        assert_eq!(firsts[..3], members[..]);
        assert_eq!(firsts[3..], members[..]);
        // Every node can still reach every member.
        let mut all = proxy_order(&members, 4);
        all.sort();
        assert_eq!(all, members);
    }
}
