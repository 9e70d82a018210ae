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
            let pki = a.data_dir.join("pki");
            let read = |name: &str| {
                std::fs::read_to_string(pki.join(name))
                    .with_context(|| format!("reading {}", pki.join(name).display()))
            };
            let ca = trellis_apiserver::pki::CertPair {
                cert_pem: read("ca.crt")?,
                key_pem: read("ca.key")?,
            };
            let groups: Vec<&str> = a.groups.iter().map(String::as_str).collect();
            let cert = trellis_apiserver::pki::issue(&ca, &a.user, &groups, &[])
                .context("issuing the client certificate")?;
            let text = trellis_apiserver::pki::kubeconfig(&a.server, &ca, &a.user, &cert);
            trellis_apiserver::pki::write_kubeconfig(&a.out, &text)
                .with_context(|| format!("writing {}", a.out.display()))?;
            println!("{}", a.out.display());
            Ok(())
        }
    }
}
