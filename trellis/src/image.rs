//! `trellis image`: OCI images in containerd for the kubelet's containerd runtime, through
//! containerd's own API (no Transfer service needed: containerd 1.6 works), and the image the
//! `deploy/` manifests run, built from a trellis binary with no registry (`image build`).

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
    /// Builds the image the deploy/ manifests run (`trellis:latest`) as an OCI image layout
    /// tarball, with no registry, docker or buildah: the trellis binary at
    /// /usr/local/bin/trellis, this machine's iptables (legacy and nft), ip6tables, ipset, nft
    /// and ip with their shared libraries and iptables' modules, a minimal /etc, /tmp and /run.
    /// The same inputs give the same digest. Load it with `trellis image import` or
    /// `ctr images import`.
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The trellis binary to put in the image (default: this one, e.g. target/release/trellis).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where the OCI image layout tarball is written.
    #[arg(long, default_value = "trellis.tar")]
    out: PathBuf,
    /// The image's name, recorded in index.json (`trellis:latest`, which the manifests run, is
    /// stored as `docker.io/library/trellis:latest`).
    #[arg(long, default_value = "trellis:latest")]
    tag: String,
    /// How the layer is stored: gzip, or none (an uncompressed tar: faster, larger).
    #[arg(long, value_enum, default_value = "gzip")]
    compression: crate::image_build::Compression,
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
        Command::Build(a) => {
            let binary = match a.binary {
                Some(b) => b,
                None => std::env::current_exe().context("finding this trellis binary")?,
            };
            let opts = crate::image_build::Options::standard(binary, a.tag, a.compression);
            let b = tokio::task::spawn_blocking(move || {
                crate::image_build::build(&opts, &a.out).map(|b| (b, a.out))
            })
            .await
            .context("the image build stopped")??;
            let (b, out) = b;
            let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
            println!("{} {}", b.name, b.digest);
            println!(
                "{}: {} entries, {:.1} MiB unpacked, layer {:.1} MiB, archive {:.1} MiB",
                out.display(),
                b.entries,
                mib(b.unpacked_size),
                mib(b.layer_size),
                mib(b.archive_size)
            );
            Ok(())
        }
    }
}
