//! `trellis image build`: the OCI image the `deploy/` manifests run (`trellis:latest`), made
//! from a trellis binary and this machine's network tools with no registry and no image builder.
//! One layer holds the binary at `/usr/local/bin/trellis`, what the agents exec at run time
//! (iptables and ip6tables in both backends with their `-save`/`-restore`, ipset, nft, ip) with
//! the symlinks that name them, their shared libraries (the `ldd` closure) and the extension
//! modules iptables loads at run time, and a minimal `/etc`, `/tmp`, `/run`. Entries are sorted,
//! owned by root and dated 0 (the Unix epoch), the gzip header carries no time, and JSON keys are
//! sorted: the same inputs give the same digest.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use trellis_kubelet::containerd::image::{digest_of, normalize};

/// The directories tools are looked up in, and the image's `PATH`.
pub const PATH_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Where the binary goes in the image (on `PATH`: the manifests' `command` says `trellis`).
pub const BINARY_PATH: &str = "/usr/local/bin/trellis";

/// What the agents exec (trellis-net's `iptables-<backend>[-save|-restore]`, policyd's
/// `iptables-<backend>`, `ipset`, the proxy's and probes' `nft`; the plain `iptables` the
/// backend detection asks for its version), plus `ip` for a person debugging a node, with
/// the Debian package that has each.
pub const TOOLS: &[(&str, &str)] = &[
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
    ("ip6tables", "iptables"),
    ("ip6tables-save", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("iptables-legacy", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("ip6tables-legacy", "iptables"),
    ("ip6tables-legacy-save", "iptables"),
    ("ip6tables-legacy-restore", "iptables"),
    ("iptables-nft", "iptables"),
    ("iptables-nft-save", "iptables"),
    ("iptables-nft-restore", "iptables"),
    ("ip6tables-nft", "iptables"),
    ("ip6tables-nft-save", "iptables"),
    ("ip6tables-nft-restore", "iptables"),
    ("ipset", "ipset"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
];

const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Symlinks followed from one path before giving up (as the kernel's 40).
const MAX_LINKS: usize = 40;

/// How the layer is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// gzip (`…layer.v1.tar+gzip`): what registries and `ctr` expect; about a third of the size.
    Gzip,
    /// An uncompressed tar (`…layer.v1.tar`): faster to build, larger.
    None,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// The trellis binary put at [`BINARY_PATH`].
    pub binary: PathBuf,
    /// The image's name (normalized: `trellis:latest` is `docker.io/library/trellis:latest`).
    pub tag: String,
    pub compression: Compression,
    /// Tools copied from this machine (looked up in [`PATH_DIRS`]), with the package that has
    /// each (for the error when one is missing).
    pub tools: Vec<(String, String)>,
}

impl Options {
    /// The image the manifests run: `binary` and every tool of [`TOOLS`].
    pub fn standard(binary: PathBuf, tag: String, compression: Compression) -> Options {
        Options {
            binary,
            tag,
            compression,
            tools: TOOLS
                .iter()
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect(),
        }
    }
}

/// What [`build`] wrote.
#[derive(Debug, Clone)]
pub struct Built {
    /// The normalized name recorded in index.json.
    pub name: String,
    /// The manifest's digest: the image's identity (`imageID`, `ctr images ls`).
    pub digest: String,
    /// Entries of the layer (files, directories, symlinks).
    pub entries: usize,
    /// The layer as stored and unpacked, and the whole archive, in bytes.
    pub layer_size: u64,
    pub unpacked_size: u64,
    pub archive_size: u64,
}

/// One entry of the image's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: PathBuf },
}

/// The image's file system, by path relative to `/`; sorted, so parents come first.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

/// `p` without its root, `.` and `..` resolved lexically (only used on paths whose earlier
/// components are real directories, where that is exact).
fn relative(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Tree {
    fn insert(&mut self, path: &Path, entry: Entry) -> anyhow::Result<()> {
        let rel = relative(path);
        if rel.as_os_str().is_empty() {
            bail!("{} is the image's root", path.display());
        }
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.parents(parent)?;
        }
        match self.entries.get(&rel) {
            Some(old) if *old == entry => Ok(()),
            Some(Entry::Dir { .. }) if matches!(entry, Entry::Dir { .. }) => Ok(()),
            Some(_) => bail!("/{} would be added twice, differently", rel.display()),
            None => {
                self.entries.insert(rel, entry);
                Ok(())
            }
        }
    }

    /// A directory (its mode set) and its parents.
    pub fn dir(&mut self, path: &Path, mode: u32) -> anyhow::Result<()> {
        self.insert(path, Entry::Dir { mode })?;
        if let Some(Entry::Dir { mode: m }) = self.entries.get_mut(&relative(path)) {
            *m = mode;
        }
        Ok(())
    }

    /// A directory that holds others (0755 unless set already), and its parents.
    fn parents(&mut self, path: &Path) -> anyhow::Result<()> {
        self.insert(path, Entry::Dir { mode: 0o755 })
    }

    /// A file with these contents.
    pub fn file(&mut self, path: &Path, data: Vec<u8>, mode: u32) -> anyhow::Result<()> {
        self.insert(path, Entry::File { data, mode })
    }

    pub fn symlink(&mut self, path: &Path, target: &Path) -> anyhow::Result<()> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_path_buf(),
            },
        )
    }

    /// The host's file `host` at the same path in the image, with every symlink on the way
    /// (`/usr/sbin/iptables` → `/etc/alternatives/iptables` → `iptables-nft` →
    /// `xtables-nft-multi`, `/lib64` → `usr/lib64`): the image resolves names as the host
    /// does. Returns the host path of the regular file it ends at.
    pub fn copy_host(&mut self, host: &Path) -> anyhow::Result<PathBuf> {
        let mut path = relative(host);
        for _ in 0..MAX_LINKS {
            let comps: Vec<Component<'_>> = path.components().collect();
            let mut cur = PathBuf::from("/");
            let mut next = None;
            for (i, c) in comps.iter().enumerate() {
                let here = cur.join(c);
                let meta = std::fs::symlink_metadata(&here)
                    .with_context(|| format!("{} (for {})", here.display(), host.display()))?;
                let last = i + 1 == comps.len();
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&here)
                        .with_context(|| format!("reading the link {}", here.display()))?;
                    self.symlink(&here, &target)?;
                    let rest: PathBuf = comps[i + 1..].iter().collect();
                    next = Some(relative(&cur.join(&target).join(rest)));
                    break;
                }
                if meta.is_dir() {
                    if last {
                        bail!("{} is a directory, not a file", here.display());
                    }
                    self.parents(&here)?;
                    cur = here;
                    continue;
                }
                if !last {
                    bail!("{} is not a directory", here.display());
                }
                let data =
                    std::fs::read(&here).with_context(|| format!("reading {}", here.display()))?;
                self.file(&here, data, meta.permissions().mode() & 0o777)?;
                return Ok(here);
            }
            match next {
                Some(n) => path = n,
                None => bail!("{} resolves to nothing", host.display()),
            }
        }
        bail!("{}: too many levels of symbolic links", host.display())
    }

    /// Every entry of the host directory `dir` (files and symlinks, not subdirectories), as
    /// [`Tree::copy_host`] copies them; returns the regular files they end at.
    pub fn copy_host_dir(&mut self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .collect();
        names.sort();
        let mut files = Vec::new();
        for n in names {
            files.push(self.copy_host(&n)?);
        }
        Ok(files)
    }

    /// The layer: a ustar archive of every entry, sorted, owned by 0:0, dated 0.
    pub fn to_tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        for (path, e) in &self.entries {
            let name = path.to_string_lossy();
            match e {
                Entry::Dir { mode } => {
                    out.extend(header(&format!("{name}/"), b'5', *mode, 0, "")?);
                }
                Entry::File { data, mode } => {
                    out.extend(header(&name, b'0', *mode, data.len() as u64, "")?);
                    out.extend_from_slice(data);
                    out.resize(out.len().div_ceil(512) * 512, 0);
                }
                Entry::Symlink { target } => {
                    out.extend(header(&name, b'2', 0o777, 0, &target.to_string_lossy())?);
                }
            }
        }
        out.extend([0u8; 1024]);
        Ok(out)
    }

    /// How many entries, and the bytes of their files.
    fn stats(&self) -> (usize, u64) {
        let bytes = self
            .entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        (self.entries.len(), bytes)
    }
}

/// A ustar header (a long name split into prefix and name; what fits in neither is refused).
fn header(name: &str, kind: u8, mode: u32, size: u64, link: &str) -> anyhow::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        // The last '/' that leaves at most 100 bytes of name and 155 of prefix.
        let bytes = name.trim_end_matches('/');
        let split = bytes
            .char_indices()
            .filter(|(i, c)| *c == '/' && *i <= 155 && name.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next()
            .with_context(|| format!("{name}: too long a path for a tar header"))?;
        (&name[..split], &name[split + 1..])
    };
    if link.len() > 100 {
        bail!("{name} → {link}: too long a link target for a tar header");
    }
    if size > 0o77_777_777_777 {
        bail!("{name}: {size} bytes is too large for a tar header");
    }
    h[..base.len()].copy_from_slice(base.as_bytes());
    h[100..108].copy_from_slice(format!("{:07o}\0", mode & 0o7777).as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..337].copy_from_slice(b"0000000\0");
    h[337..345].copy_from_slice(b"0000000\0");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// The shared libraries `ldd` lists for `file` (with the program interpreter); none for a
/// static binary. A library that is not found is an error.
pub fn ldd(file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(file)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {}: {}", file.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", file.display()))
}

/// The library paths of `ldd`'s output.
pub fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// `tool` on [`PATH_DIRS`].
pub fn find_tool(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    PATH_DIRS
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "{tool} is not installed (looked in {}): it is in Debian's package {package} (apt-get install {package})",
                PATH_DIRS.join(", ")
            )
        })
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image's file system: the binary, the tools with their libraries, `/etc`, `/tmp`, `/run`.
pub fn tree(opts: &Options) -> anyhow::Result<Tree> {
    let mut t = Tree::default();
    let binary = std::fs::read(&opts.binary)
        .with_context(|| format!("reading the binary {}", opts.binary.display()))?;
    t.file(Path::new(BINARY_PATH), binary, 0o755)?;
    let mut elves = vec![opts.binary.clone()];
    for (tool, package) in &opts.tools {
        let found = find_tool(tool, package)?;
        elves.push(t.copy_host(&found)?);
    }
    // iptables loads its match and target modules (`-m set`, `-j MARK`, …) at run time from
    // the `xtables` directory beside libxtables.
    let mut libs = Vec::new();
    for e in elves.iter().filter(|e| is_elf(e)) {
        libs.extend(ldd(e)?);
    }
    libs.sort();
    libs.dedup();
    let mut modules = Vec::new();
    for l in &libs {
        if l.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libxtables.so"))
        {
            let canonical =
                std::fs::canonicalize(l).with_context(|| format!("resolving {}", l.display()))?;
            if let Some(dir) = canonical.parent().map(|d| d.join("xtables"))
                && dir.is_dir()
            {
                modules = t.copy_host_dir(&dir)?;
            }
        }
    }
    for m in modules.iter().filter(|m| is_elf(m)) {
        libs.extend(ldd(m)?);
    }
    libs.sort();
    libs.dedup();
    for l in &libs {
        t.copy_host(l)?;
    }
    // A minimal /etc: root and nobody, hosts from files then DNS, the protocol names
    // iptables and ipset may look up. /etc/hosts, resolv.conf and hostname are the pod's.
    let etc = |n: &str| PathBuf::from("/etc").join(n);
    t.file(
        &etc("passwd"),
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n".to_vec(),
        0o644,
    )?;
    t.file(
        &etc("group"),
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    )?;
    t.file(
        &etc("nsswitch.conf"),
        b"passwd: files\ngroup: files\nhosts: files dns\nprotocols: files\nservices: files\n"
            .to_vec(),
        0o644,
    )?;
    t.file(
        &etc("protocols"),
        b"ip 0 IP\nicmp 1 ICMP\nigmp 2 IGMP\nipencap 4 IP-ENCAP\ntcp 6 TCP\nudp 17 UDP\n\
          ipv6 41 IPv6\ngre 47 GRE\nesp 50 IPSEC-ESP\nah 51 IPSEC-AH\nipv6-icmp 58 IPv6-ICMP\n\
          vrrp 112 VRRP\nsctp 132 SCTP\n"
            .to_vec(),
        0o644,
    )?;
    t.dir(Path::new("/tmp"), 0o1777)?;
    t.dir(Path::new("/run"), 0o755)?;
    t.dir(Path::new("/root"), 0o700)?;
    for d in ["/proc", "/sys", "/dev"] {
        t.dir(Path::new(d), 0o755)?;
    }
    Ok(t)
}

/// A tar of whole files (the OCI layout around the blobs), in the order given.
fn layout_tar(files: &[(String, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for d in ["blobs/", "blobs/sha256/"] {
        out.extend(header(d, b'5', 0o755, 0, "")?);
    }
    for (name, data) in files {
        out.extend(header(name, b'0', 0o644, data.len() as u64, "")?);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    Ok(out)
}

/// The OCI image layout archive of `opts` (what `trellis image import` and `ctr images
/// import` take), as bytes, with what it holds.
pub fn archive(opts: &Options) -> anyhow::Result<(Vec<u8>, Built)> {
    let name = normalize(&opts.tag);
    let tag = name
        .rsplit_once(':')
        .map(|(_, t)| t.to_string())
        .filter(|t| !t.contains('/'))
        .unwrap_or_else(|| "latest".into());
    let t = tree(opts)?;
    let (entries, unpacked_size) = t.stats();
    let layer_tar = t.to_tar()?;
    drop(t);
    let diff_id = digest_of(&layer_tar);
    let (layer, layer_mt) = match opts.compression {
        Compression::None => (layer_tar, MT_LAYER_TAR),
        Compression::Gzip => {
            // No name and time 0 in the gzip header: the bytes depend on the contents only.
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(Vec::new(), flate2::Compression::default());
            gz.write_all(&layer_tar).context("compressing the layer")?;
            drop(layer_tar);
            (gz.finish().context("compressing the layer")?, MT_LAYER_GZIP)
        }
    };
    let layer_digest = digest_of(&layer);
    let config = json!({
        "architecture": arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [format!("PATH={}", PATH_DIRS.join(":"))],
            "Cmd": ["trellis", "--help"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "trellis image build"}],
    });
    let config = serde_json::to_vec(&config).context("encoding the image's configuration")?;
    let config_digest = digest_of(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).context("encoding the manifest")?;
    let digest = digest_of(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": digest, "size": manifest.len(),
            "platform": {"architecture": arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let index = serde_json::to_vec(&index).context("encoding index.json")?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let out = layout_tar(&[
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
        (blob(&config_digest), &config),
        (blob(&digest), &manifest),
        (blob(&layer_digest), &layer),
    ])?;
    let built = Built {
        name,
        digest,
        entries,
        layer_size: layer.len() as u64,
        unpacked_size,
        archive_size: out.len() as u64,
    };
    Ok((out, built))
}

/// Builds the archive and writes it to `out` (through a temporary file beside it).
pub fn build(opts: &Options, out: &Path) -> anyhow::Result<Built> {
    let (bytes, built) = archive(opts)?;
    let tmp = out.with_extension("tmp-build");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_kubelet::containerd::image::read_tar;

    fn opts(binary: &Path) -> Options {
        Options {
            binary: binary.to_path_buf(),
            tag: "trellis.test/trellis:t1".into(),
            compression: Compression::Gzip,
            tools: vec![("ls".into(), "coreutils".into())],
        }
    }

    /// The blob `digest` of a layout archive.
    fn blob<'a>(tar: &'a [u8], digest: &str) -> &'a [u8] {
        let files = read_tar(tar).unwrap();
        let r = files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone();
        &tar[r]
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_another_binary_another() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"#!/bin/sh\necho one\n").unwrap();
        let (a, built_a) = archive(&opts(&bin)).unwrap();
        let (b, built_b) = archive(&opts(&bin)).unwrap();
        assert_eq!(built_a.digest, built_b.digest);
        assert!(a == b, "the archives are byte for byte the same");
        // Negative control: a changed binary changes the digest.
        std::fs::write(&bin, b"#!/bin/sh\necho two\n").unwrap();
        let (_, built_c) = archive(&opts(&bin)).unwrap();
        assert_ne!(built_a.digest, built_c.digest);
        assert_eq!(built_a.name, "trellis.test/trellis:t1");
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_layer_matches_its_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"binary").unwrap();
        let (tar, built) = archive(&opts(&bin)).unwrap();
        let files = read_tar(&tar).unwrap();
        assert!(files.contains_key("oci-layout"));
        let index: serde_json::Value =
            serde_json::from_slice(&tar[files["index.json"].clone()]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], built.digest.as_str());
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "trellis.test/trellis:t1"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "t1");
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(&tar, &built.digest)).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(blob(&tar, manifest["config"]["digest"].as_str().unwrap()))
                .unwrap();
        let layer = blob(&tar, manifest["layers"][0]["digest"].as_str().unwrap());
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(layer), &mut plain).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest_of(&plain).as_str());
        let inside = read_tar(&plain).unwrap();
        assert_eq!(
            &plain[inside["usr/local/bin/trellis"].clone()],
            b"binary",
            "the binary is at /usr/local/bin"
        );
        // ls came with its libraries and the interpreter (or is static).
        let ls = find_tool("ls", "coreutils").unwrap();
        for lib in ldd(&std::fs::canonicalize(ls).unwrap()).unwrap() {
            let real = relative(&std::fs::canonicalize(&lib).unwrap());
            assert!(
                inside.contains_key(real.to_str().unwrap()),
                "{} ({}) is in the image",
                lib.display(),
                real.display()
            );
        }
        assert!(inside.contains_key("etc/passwd"));
        assert!(
            config["config"]["Env"][0]
                .as_str()
                .unwrap()
                .contains("/usr/local/bin")
        );
    }

    #[test]
    fn symlinks_on_the_way_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("real/lib")).unwrap();
        std::fs::write(d.join("real/lib/tool-multi"), b"x").unwrap();
        std::os::unix::fs::symlink("real/lib", d.join("lib")).unwrap();
        std::os::unix::fs::symlink("tool-multi", d.join("real/lib/tool")).unwrap();
        let mut t = Tree::default();
        let end = t.copy_host(&d.join("lib/tool")).unwrap();
        assert_eq!(end, d.join("real/lib/tool-multi"));
        let rel = |p: &str| relative(&d.join(p));
        assert_eq!(
            t.entries[&rel("lib")],
            Entry::Symlink {
                target: "real/lib".into()
            }
        );
        assert_eq!(
            t.entries[&rel("real/lib/tool")],
            Entry::Symlink {
                target: "tool-multi".into()
            }
        );
        assert!(matches!(
            t.entries[&rel("real/lib/tool-multi")],
            Entry::File { .. }
        ));
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("loop-b", d.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
        let e = t.copy_host(&d.join("loop-a")).unwrap_err().to_string();
        assert!(e.contains("too many levels"), "{e}");
    }

    #[test]
    fn ldd_output_is_parsed_and_a_missing_library_refused() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let e = parse_ldd("\tlibfoo.so.1 => not found\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("libfoo.so.1"), "{e}");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"binary").unwrap();
        let mut o = opts(&bin);
        o.tools = vec![("trellis-no-such-tool".into(), "some-package".into())];
        let e = format!("{:#}", archive(&o).unwrap_err());
        assert!(e.contains("apt-get install some-package"), "{e}");
        let o = opts(&dir.path().join("absent"));
        let e = format!("{:#}", archive(&o).unwrap_err());
        assert!(e.contains("absent"), "{e}");
    }

    #[test]
    fn long_paths_use_the_ustar_prefix() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let h = header(&long, b'0', 0o644, 0, "").unwrap();
        assert_eq!(&h[345..465], "d".repeat(120).as_bytes());
        assert_eq!(&h[..90], "f".repeat(90).as_bytes());
        assert!(header(&"x".repeat(300), b'0', 0o644, 0, "").is_err());
    }
}
