//! `trellis certs`: credentials from the cluster CA, so no component but admin tools uses the
//! admin kubeconfig.

use std::path::PathBuf;

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
    }
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
    let pki = data_dir.join("pki");
    let read = |name: &str| {
        std::fs::read_to_string(pki.join(name))
            .with_context(|| format!("reading {}", pki.join(name).display()))
    };
    let ca = trellis_apiserver::pki::CertPair {
        cert_pem: read("ca.crt")?,
        key_pem: read("ca.key")?,
    };
    let cert = trellis_apiserver::pki::issue(&ca, user, groups, &[])
        .context("issuing the client certificate")?;
    let text = trellis_apiserver::pki::kubeconfig(server, &ca, user, &cert);
    trellis_apiserver::pki::write_kubeconfig(out, &text)
        .with_context(|| format!("writing {}", out.display()))
}
