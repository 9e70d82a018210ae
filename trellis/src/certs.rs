//! `trellis certs`: credentials from the cluster CA, so no component but admin tools uses the
//! admin kubeconfig, and kubelets' serving certificates the API server can check.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Issues a client certificate from the cluster CA and writes a kubeconfig with it, e.g.
    /// `--user system:node:n1 --group system:nodes` for a kubelet.
    Kubeconfig(KubeconfigArgs),
    /// Issues a kubelet's serving certificate from the cluster CA (CN `system:node:<node>`, O
    /// `system:nodes`, SANs: the node's name, every --dns and every --ip), for the kubelet's
    /// `--tls-cert-file`/`--tls-private-key-file`; an API server started with
    /// `--kubelet-certificate-authority <data-dir>/pki/ca.crt` then checks it.
    Serving(ServingArgs),
}

#[derive(clap::Args)]
struct ServingArgs {
    /// The API server's data directory (the CA is `<data-dir>/pki/ca.{crt,key}`).
    #[arg(long, default_value = "/var/lib/trellis/apiserver")]
    data_dir: PathBuf,
    /// The node's name (its Node object).
    #[arg(long)]
    node: String,
    /// An address the API server reaches the kubelet at (the Node's InternalIP), repeatable.
    #[arg(long = "ip", required = true)]
    ips: Vec<IpAddr>,
    /// A further DNS name of the node, repeatable.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Where to write the certificate (PEM, mode 0644).
    #[arg(long)]
    cert_out: PathBuf,
    /// Where to write its private key (PEM, mode 0600).
    #[arg(long)]
    key_out: PathBuf,
    /// Valid for this many seconds from now instead of a year (tests of the kubelet's
    /// certificate rotation).
    #[arg(long, hide = true)]
    lifetime_seconds: Option<u64>,
}

#[derive(clap::Args)]
struct KubeconfigArgs {
    /// The API server's data directory (the CA is `<data-dir>/pki/ca.{crt,key}`).
    #[arg(long, default_value = "/var/lib/trellis/apiserver")]
    data_dir: PathBuf,
    /// The user name (the certificate's CN).
    #[arg(long)]
    user: String,
    /// Groups (the certificate's O), repeatable.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The API server URL written into the kubeconfig.
    #[arg(long)]
    server: String,
    /// Where to write the kubeconfig (mode 0600).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Kubeconfig(a) => {
            let groups: Vec<&str> = a.groups.iter().map(String::as_str).collect();
            kubeconfig(&a.data_dir, &a.user, &groups, &a.server, &a.out)?;
            println!("{}", a.out.display());
            Ok(())
        }
        Cmd::Serving(a) => {
            serving_for(
                &a.data_dir,
                &a.node,
                &a.ips,
                &a.dns,
                &a.cert_out,
                &a.key_out,
                a.lifetime_seconds.map(std::time::Duration::from_secs),
            )?;
            println!("{}", a.cert_out.display());
            Ok(())
        }
    }
}

/// The cluster CA under `data_dir`.
fn cluster_ca(data_dir: &Path) -> anyhow::Result<trellis_apiserver::pki::CertPair> {
    let pki = data_dir.join("pki");
    let read = |name: &str| {
        std::fs::read_to_string(pki.join(name))
            .with_context(|| format!("reading {}", pki.join(name).display()))
    };
    Ok(trellis_apiserver::pki::CertPair {
        cert_pem: read("ca.crt")?,
        key_pem: read("ca.key")?,
    })
}

/// Issues the serving certificate of `node`'s kubelet (SANs: `node`, `dns`, `ips`) from the CA
/// under `data_dir`, and writes it to `cert_out` and its key to `key_out` (mode 0600).
pub fn serving(
    data_dir: &Path,
    node: &str,
    ips: &[IpAddr],
    dns: &[String],
    cert_out: &Path,
    key_out: &Path,
) -> anyhow::Result<()> {
    serving_for(data_dir, node, ips, dns, cert_out, key_out, None)
}

/// [`serving`], valid for `lifetime` from now when given.
pub fn serving_for(
    data_dir: &Path,
    node: &str,
    ips: &[IpAddr],
    dns: &[String],
    cert_out: &Path,
    key_out: &Path,
    lifetime: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let ca = cluster_ca(data_dir)?;
    let cert = trellis_apiserver::pki::kubelet_serving_for(&ca, node, ips, dns, lifetime)
        .context("issuing the kubelet serving certificate")?;
    for out in [cert_out, key_out] {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    trellis_apiserver::pki::write_private(key_out, &cert.key_pem)
        .with_context(|| format!("writing {}", key_out.display()))?;
    trellis_apiserver::pki::write_public(cert_out, &cert.cert_pem)
        .with_context(|| format!("writing {}", cert_out.display()))
}

/// Issues a client certificate for `user` in `groups` from the CA under `data_dir` and writes
/// a kubeconfig for `server` with it to `out` (mode 0600).
pub fn kubeconfig(
    data_dir: &std::path::Path,
    user: &str,
    groups: &[&str],
    server: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let ca = cluster_ca(data_dir)?;
    let cert = trellis_apiserver::pki::issue(&ca, user, groups, &[])
        .context("issuing the client certificate")?;
    let text = trellis_apiserver::pki::kubeconfig(server, &ca, user, &cert);
    trellis_apiserver::pki::write_kubeconfig(out, &text)
        .with_context(|| format!("writing {}", out.display()))
}
