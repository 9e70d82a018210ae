//! `trellis image`: OCI images in containerd for the kubelet's containerd runtime, through
//! containerd's own API (no Transfer service needed: containerd 1.6 works).

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Loads an OCI image layout tarball (`oci-layout`, `index.json`, `blobs/sha256/…`) into
    /// containerd and unpacks it, so pods can run it without a registry.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The OCI image layout tarball.
    archive: PathBuf,
    /// containerd's socket.
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_ADDRESS)]
    address: PathBuf,
    /// The containerd namespace (the kubelet's `--containerd-namespace`).
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The image's name (default: the `io.containerd.image.name` annotation, or an
    /// `org.opencontainers.image.ref.name` with a repository, of index.json). `busybox` is
    /// stored as `docker.io/library/busybox:latest`, as pods name it.
    #[arg(long)]
    name: Option<String>,
    /// The snapshotter the layers are unpacked into (the kubelet's `--containerd-snapshotter`).
    #[arg(long, default_value = trellis_kubelet::containerd::DEFAULT_SNAPSHOTTER)]
    snapshotter: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Import(a) => {
            let conn = trellis_kubelet::containerd::Conn::connect(&a.address, &a.namespace)
                .await
                .context("connecting to containerd")?;
            let done = trellis_kubelet::containerd::image::import(
                &conn,
                &a.archive,
                a.name.as_deref(),
                &a.snapshotter,
            )
            .await
            .with_context(|| format!("importing {}", a.archive.display()))?;
            for i in done {
                println!(
                    "{} {} ({} layer{})",
                    i.name,
                    i.digest,
                    i.layers,
                    if i.layers == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
    }
}
