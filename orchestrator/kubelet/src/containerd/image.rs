//! OCI images in containerd without its Transfer service (containerd 1.6 has none): an OCI
//! image layout tarball is written blob by blob through the Content service, recorded with
//! Images Create, and unpacked layer by layer (Snapshots Prepare → Diff Apply → Commit by
//! chain ID), with the garbage-collection labels containerd's own unpacker sets. The runtime
//! reads an image's configuration back the same way ([`resolve`]).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ReadContentRequest,
    UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde::Deserialize;

use super::{Conn, CtrdError};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The largest piece of a blob sent in one Write message (containerd takes up to 16 MiB).
const CHUNK: usize = 1 << 20;

/// A content descriptor as OCI JSON has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

impl Desc {
    fn proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Desc,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

/// What the runtime needs of an image: its name and digest, the snapshot its containers start
/// from, and the defaults of its configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// The digest of the image's manifest (or index), for `imageID`.
    pub digest: String,
    /// The chain ID of the top layer: the committed snapshot a container's is prepared from.
    pub chain_id: String,
    pub config: RunConfig,
}

/// What `import` recorded.
#[derive(Debug, Clone)]
pub struct Imported {
    pub name: String,
    pub digest: String,
    pub layers: usize,
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::from("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The chain IDs of layers with these diff IDs (OCI image spec: the identity of a stack).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => digest_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A reference as containerd stores it: `busybox` is `docker.io/library/busybox:latest`, a
/// name without a tag gets `:latest`.
pub fn normalize(reference: &str) -> String {
    let r = reference.trim();
    let (first, _) = r.split_once('/').unwrap_or(("", r));
    let has_domain =
        r.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        r.to_string()
    } else if r.contains('/') {
        format!("docker.io/{r}")
    } else {
        format!("docker.io/library/{r}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

pub(crate) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) fn is_index(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

/// From an index's manifests, the one for this machine (or the only one).
pub(crate) fn pick_platform(manifests: &[Desc]) -> Option<&Desc> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch())
        })
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
}

/// The regular files of a tar archive: path (without a leading `./`) → byte range.
pub fn read_tar(data: &[u8]) -> Result<HashMap<String, Range<usize>>, CtrdError> {
    let bad = |m: String| CtrdError::Image(format!("not a tar archive: {m}"));
    let mut out = HashMap::new();
    let mut off = 0usize;
    let mut long_name: Option<String> = None;
    let mut first = true;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let octal = |f: &[u8]| -> Option<u64> {
            if f.first().is_some_and(|b| b & 0x80 != 0) {
                // base-256 (GNU) for large sizes
                let mut v: u64 = 0;
                for (i, b) in f.iter().enumerate() {
                    let b = if i == 0 { b & 0x7f } else { *b };
                    v = v.checked_mul(256)?.checked_add(u64::from(b))?;
                }
                return Some(v);
            }
            let s: String = f
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| *b as char)
                .collect();
            let s = s.trim();
            if s.is_empty() {
                return Some(0);
            }
            u64::from_str_radix(s, 8).ok()
        };
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if octal(&h[148..156]) != Some(sum) {
            return Err(bad(if first {
                "the first header's checksum does not match".into()
            } else {
                format!("a bad header at byte {off}")
            }));
        }
        first = false;
        let size = octal(&h[124..136]).ok_or_else(|| bad(format!("a bad size at byte {off}")))?;
        let size = usize::try_from(size).map_err(|_| bad("an entry too large".into()))?;
        let body = off + 512;
        let end = body
            .checked_add(size)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("truncated".into()))?;
        let cstr = |f: &[u8]| -> String {
            String::from_utf8_lossy(&f[..f.iter().position(|b| *b == 0).unwrap_or(f.len())])
                .into_owned()
        };
        let kind = h[156];
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match kind {
            b'L' => long_name = Some(cstr(&data[body..end])),
            b'x' => {
                // pax: only `path` matters here.
                let text = String::from_utf8_lossy(&data[body..end]).into_owned();
                for rec in text.lines() {
                    if let Some((_, kv)) = rec.split_once(' ')
                        && let Some(p) = kv.strip_prefix("path=")
                    {
                        long_name = Some(p.to_string());
                    }
                }
            }
            b'0' | 0 | b'7' => {
                let n = long_name.take().unwrap_or(name);
                let n = n
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                out.insert(n, body..end);
            }
            _ => long_name = None,
        }
        off = body + size.div_ceil(512) * 512;
    }
    if first {
        return Err(bad("it is empty".into()));
    }
    Ok(out)
}

/// An OCI image layout read from a tar archive.
struct Layout<'a> {
    data: &'a [u8],
    files: HashMap<String, Range<usize>>,
}

impl<'a> Layout<'a> {
    fn blob(&self, digest: &str) -> Result<&'a [u8], CtrdError> {
        let (algo, hex) = digest
            .split_once(':')
            .ok_or_else(|| CtrdError::Image(format!("{digest:?} is not a digest")))?;
        if algo != "sha256" {
            return Err(CtrdError::Image(format!(
                "digest {digest}: only sha256 is supported"
            )));
        }
        let r = self
            .files
            .get(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| {
                CtrdError::Image(format!("blob {digest} is missing from the archive"))
            })?;
        let b = &self.data[r.clone()];
        let got = digest_of(b);
        if got != digest {
            return Err(CtrdError::Image(format!(
                "blob {digest} in the archive has digest {got}: the archive is corrupt"
            )));
        }
        Ok(b)
    }
}

/// Writes a blob unless containerd has it; either way it gets `labels`.
async fn write_blob(
    conn: &Conn,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<(), CtrdError> {
    let mut content = ContentClient::new(conn.channel.clone());
    let info = content
        .info(conn.request_leased(
            InfoRequest {
                digest: digest.to_string(),
            },
            Some(lease),
        ))
        .await;
    match info {
        Ok(_) => {
            if labels.is_empty() {
                return Ok(());
            }
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            content
                .update(conn.request_leased(
                    UpdateRequest {
                        info: Some(containerd_client::services::v1::Info {
                            digest: digest.to_string(),
                            labels,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    },
                    Some(lease),
                ))
                .await
                .map_err(|s| CtrdError::rpc(format!("label content {digest}"), s))?;
            return Ok(());
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(CtrdError::rpc(format!("stat content {digest}"), s)),
    }
    let total = data.len() as i64;
    let reference = format!("trellis-import-{digest}");
    let mut msgs = Vec::new();
    let mut chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    let mut offset = 0i64;
    for (i, c) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        msgs.push(WriteContentRequest {
            action: if last {
                WriteAction::Commit as i32
            } else {
                WriteAction::Write as i32
            },
            r#ref: reference.clone(),
            total,
            expected: digest.to_string(),
            offset,
            data: c.to_vec(),
            labels: if last { labels.clone() } else { HashMap::new() },
        });
        offset += c.len() as i64;
    }
    let resp = content
        .write(conn.request_leased(futures::stream::iter(msgs), Some(lease)))
        .await;
    let mut stream = match resp {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(CtrdError::rpc(format!("write content {digest}"), s)),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(CtrdError::rpc(format!("write content {digest}"), s)),
        }
    }
}

/// Reads a whole blob from containerd's content store.
pub async fn read_blob(conn: &Conn, digest: &str) -> Result<Vec<u8>, CtrdError> {
    let mut stream = ContentClient::new(conn.channel.clone())
        .read(conn.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| CtrdError::rpc(format!("read content {digest}"), s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| CtrdError::rpc(format!("read content {digest}"), s))?
    {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// Unpacks layers into committed snapshots named by chain ID (those present are kept), and
/// returns the top chain ID.
pub async fn unpack(
    conn: &Conn,
    lease: &str,
    snapshotter: &str,
    layers: &[Desc],
    diff_ids: &[String],
) -> Result<String, CtrdError> {
    if layers.len() != diff_ids.len() || layers.is_empty() {
        return Err(CtrdError::Image(format!(
            "the image has {} layers and {} diff IDs",
            layers.len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(diff_ids);
    let mut snaps = SnapshotsClient::new(conn.channel.clone());
    for (i, layer) in layers.iter().enumerate() {
        let chain = &chains[i];
        let stat = snaps
            .stat(conn.request_leased(
                StatSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: chain.clone(),
                },
                Some(lease),
            ))
            .await;
        match stat {
            Ok(_) => continue,
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(CtrdError::rpc(format!("stat snapshot {chain}"), s)),
        }
        let key = format!("extract-{}-{chain}", jiff::Timestamp::now().as_nanosecond());
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let mounts = snaps
            .prepare(conn.request_leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(|s| CtrdError::rpc(format!("prepare snapshot for layer {i}"), s))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(conn.channel.clone())
            .apply(conn.request_leased(
                ApplyRequest {
                    diff: Some(layer.proto()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                Some(lease),
            ))
            .await;
        let remove = |mut snaps: SnapshotsClient<_>, key: String| async move {
            let _ = snaps
                .remove(conn.request_leased(
                    RemoveSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key,
                    },
                    Some(lease),
                ))
                .await;
        };
        let applied = match applied {
            Ok(a) => a.into_inner().applied,
            Err(s) => {
                remove(snaps.clone(), key).await;
                return Err(CtrdError::rpc(
                    format!("apply layer {} ({})", i, layer.digest),
                    s,
                ));
            }
        };
        if let Some(a) = &applied
            && a.digest != diff_ids[i]
        {
            remove(snaps.clone(), key).await;
            return Err(CtrdError::Image(format!(
                "layer {} unpacks to {}, but the image's configuration says {}",
                layer.digest, a.digest, diff_ids[i]
            )));
        }
        let labels = HashMap::from([(
            "containerd.io/uncompressed".to_string(),
            diff_ids[i].clone(),
        )]);
        let commit = snaps
            .commit(conn.request_leased(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels,
                },
                Some(lease),
            ))
            .await;
        match commit {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => remove(snaps.clone(), key).await,
            Err(s) => {
                remove(snaps.clone(), key).await;
                return Err(CtrdError::rpc(format!("commit snapshot {chain}"), s));
            }
        }
    }
    Ok(chains.last().cloned().unwrap_or_default())
}

/// Records image `name` → `target` (replacing what the name pointed at).
async fn put_image(conn: &Conn, lease: &str, name: &str, target: &Desc) -> Result<(), CtrdError> {
    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(target.proto()),
        created_at: None,
        updated_at: None,
    };
    let mut images = ImagesClient::new(conn.channel.clone());
    let created = images
        .create(conn.request_leased(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            Some(lease),
        ))
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => images
            .update(conn.request_leased(
                UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await
            .map(|_| ())
            .map_err(|s| CtrdError::rpc(format!("update image {name}"), s)),
        Err(s) => Err(CtrdError::rpc(format!("create image {name}"), s)),
    }
}

/// Imports an OCI image layout tarball: every image its index.json names (`name` overrides the
/// name of a single one), unpacked into `snapshotter`.
pub async fn import(
    conn: &Conn,
    archive: &Path,
    name: Option<&str>,
    snapshotter: &str,
) -> Result<Vec<Imported>, CtrdError> {
    let data = std::fs::read(archive).map_err(|e| CtrdError::Io {
        what: format!("read {}", archive.display()),
        source: e,
    })?;
    let files = read_tar(&data)?;
    let layout = Layout { data: &data, files };
    let index_range = layout.files.get("index.json").ok_or_else(|| {
        CtrdError::Image(format!(
            "{} has no index.json: not an OCI image layout",
            archive.display()
        ))
    })?;
    let index: Index = serde_json::from_slice(&data[index_range.clone()])
        .map_err(|e| CtrdError::Image(format!("index.json: {e}")))?;
    if index.manifests.is_empty() {
        return Err(CtrdError::Image("index.json names no image".into()));
    }
    if name.is_some() && index.manifests.len() > 1 {
        return Err(CtrdError::Image(format!(
            "--name names one image, but index.json has {}",
            index.manifests.len()
        )));
    }
    let lease = conn.lease("import").await?;
    let r = import_all(conn, &lease, &layout, &index, name, snapshotter).await;
    conn.release(&lease).await;
    r
}

async fn import_all(
    conn: &Conn,
    lease: &str,
    layout: &Layout<'_>,
    index: &Index,
    name: Option<&str>,
    snapshotter: &str,
) -> Result<Vec<Imported>, CtrdError> {
    let mut out = Vec::new();
    for top in &index.manifests {
        let image_name = match name {
            Some(n) => normalize(n),
            None => {
                // containerd's own annotation, else an OCI ref.name that is a whole
                // reference (a bare tag such as "latest" names no repository).
                let ann = top.annotations.get("io.containerd.image.name").or_else(|| {
                    top.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains('/'))
                });
                match ann {
                    Some(n) => normalize(n),
                    None => {
                        return Err(CtrdError::Image(format!(
                            "image {} has no name in index.json (annotation io.containerd.image.name, or an org.opencontainers.image.ref.name with a repository): pass --name",
                            top.digest
                        )));
                    }
                }
            }
        };
        // An index: the manifest for this platform.
        let mut chain = vec![top.clone()];
        let mut mdesc = top.clone();
        let mut depth = 0;
        while is_index(&mdesc.media_type) {
            depth += 1;
            if depth > 4 {
                return Err(CtrdError::Image("indexes nested too deep".into()));
            }
            let idx: Index = serde_json::from_slice(layout.blob(&mdesc.digest)?)
                .map_err(|e| CtrdError::Image(format!("index {}: {e}", mdesc.digest)))?;
            let m = pick_platform(&idx.manifests).ok_or_else(|| {
                CtrdError::Image(format!(
                    "index {} has no manifest for linux/{}",
                    mdesc.digest,
                    arch()
                ))
            })?;
            mdesc = m.clone();
            chain.push(mdesc.clone());
        }
        if mdesc.media_type != MT_OCI_MANIFEST
            && mdesc.media_type != MT_DOCKER_MANIFEST
            && !mdesc.media_type.is_empty()
        {
            return Err(CtrdError::Image(format!(
                "{} has media type {:?}, not an image manifest",
                mdesc.digest, mdesc.media_type
            )));
        }
        let mbytes = layout.blob(&mdesc.digest)?;
        let manifest: Manifest = serde_json::from_slice(mbytes)
            .map_err(|e| CtrdError::Image(format!("manifest {}: {e}", mdesc.digest)))?;
        let cbytes = layout.blob(&manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(cbytes)
            .map_err(|e| CtrdError::Image(format!("config {}: {e}", manifest.config.digest)))?;
        let chains = chain_ids(&config.rootfs.diff_ids);
        let top_chain = chains
            .last()
            .cloned()
            .ok_or_else(|| CtrdError::Image(format!("image {image_name} has no layers")))?;
        // Children first, each parent labelled with what it references (containerd's GC).
        for l in &manifest.layers {
            write_blob(
                conn,
                lease,
                &l.digest,
                layout.blob(&l.digest)?,
                HashMap::new(),
            )
            .await?;
        }
        let snap_label = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            top_chain.clone(),
        )]);
        write_blob(conn, lease, &manifest.config.digest, cbytes, snap_label).await?;
        let mut mlabels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            mlabels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        write_blob(conn, lease, &mdesc.digest, mbytes, mlabels).await?;
        // The indexes above it, innermost first.
        for w in chain.windows(2).rev() {
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                w[1].digest.clone(),
            )]);
            write_blob(
                conn,
                lease,
                &w[0].digest,
                layout.blob(&w[0].digest)?,
                labels,
            )
            .await?;
        }
        unpack(
            conn,
            lease,
            snapshotter,
            &manifest.layers,
            &config.rootfs.diff_ids,
        )
        .await?;
        put_image(conn, lease, &image_name, top).await?;
        out.push(Imported {
            name: image_name,
            digest: top.digest.clone(),
            layers: manifest.layers.len(),
        });
    }
    Ok(out)
}

/// The manifests an index names.
pub(crate) fn parse_index(data: &[u8], digest: &str) -> Result<Vec<Desc>, CtrdError> {
    let idx: Index = serde_json::from_slice(data)
        .map_err(|e| CtrdError::Image(format!("index {digest}: {e}")))?;
    Ok(idx.manifests)
}

/// A manifest's config and layers.
pub(crate) fn manifest_blobs(data: &[u8], digest: &str) -> Result<(Desc, Vec<Desc>), CtrdError> {
    let m: Manifest = serde_json::from_slice(data)
        .map_err(|e| CtrdError::Image(format!("manifest {digest}: {e}")))?;
    Ok((m.config, m.layers))
}

/// The digest image `name` points at, if it exists.
pub(crate) async fn current_target(conn: &Conn, name: &str) -> Result<Option<String>, CtrdError> {
    let got = ImagesClient::new(conn.channel.clone())
        .get(conn.request(GetImageRequest {
            name: name.to_string(),
        }))
        .await;
    match got {
        Ok(r) => Ok(r
            .into_inner()
            .image
            .and_then(|i| i.target)
            .map(|t| t.digest)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(CtrdError::rpc(format!("get image {name}"), s)),
    }
}

/// Writes, unpacks and names an image whose blobs (by digest) were fetched from a registry:
/// the same path as an imported layout's.
pub(crate) async fn import_blobs(
    conn: &Conn,
    top: Desc,
    blobs: HashMap<String, Vec<u8>>,
    name: &str,
    snapshotter: &str,
) -> Result<Imported, CtrdError> {
    let mut data = Vec::with_capacity(blobs.values().map(Vec::len).sum());
    let mut files = HashMap::new();
    // Each blob is freed as soon as it is copied: the peak is the image once, plus a blob.
    for (digest, b) in blobs {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
            CtrdError::Image(format!("digest {digest}: only sha256 is supported"))
        })?;
        let start = data.len();
        data.extend_from_slice(&b);
        drop(b);
        files.insert(format!("blobs/sha256/{hex}"), start..data.len());
    }
    let layout = Layout { data: &data, files };
    let index = Index {
        manifests: vec![top],
    };
    let lease = conn.lease("pull").await?;
    let r = import_all(conn, &lease, &layout, &index, Some(name), snapshotter).await;
    conn.release(&lease).await;
    r?.pop()
        .ok_or_else(|| CtrdError::Image(format!("{name}: nothing imported")))
}

/// The bytes of an image's blobs for this platform: its index(es), manifest, config and
/// layers (as compressed in the content store).
pub(crate) async fn size_of(
    conn: &Conn,
    media_type: &str,
    digest: &str,
    size: i64,
) -> Result<u64, CtrdError> {
    let mut total = size.max(0) as u64;
    let (mut mt, mut digest) = (media_type.to_string(), digest.to_string());
    let mut depth = 0;
    while is_index(&mt) {
        depth += 1;
        if depth > 4 {
            return Err(CtrdError::Image("indexes nested too deep".into()));
        }
        let idx = parse_index(&read_blob(conn, &digest).await?, &digest)?;
        let m = pick_platform(&idx).ok_or_else(|| {
            CtrdError::Image(format!("index {digest}: no manifest for this platform"))
        })?;
        total += m.size.max(0) as u64;
        mt = m.media_type.clone();
        digest = m.digest.clone();
    }
    let (config, layers) = manifest_blobs(&read_blob(conn, &digest).await?, &digest)?;
    total += config.size.max(0) as u64;
    total += layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
    Ok(total)
}

/// An image of containerd's store, ready for a container: its configuration read back, its
/// layers unpacked (an image recorded without unpacking is unpacked now).
pub async fn resolve(
    conn: &Conn,
    reference: &str,
    snapshotter: &str,
) -> Result<Resolved, CtrdError> {
    let name = normalize(reference);
    let got = ImagesClient::new(conn.channel.clone())
        .get(conn.request(GetImageRequest { name: name.clone() }))
        .await;
    let image = match got {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(CtrdError::rpc(format!("get image {name}"), s)),
    };
    let Some(target) = image.and_then(|i| i.target) else {
        return Err(CtrdError::ImageNotFound {
            image: reference.to_string(),
            namespace: conn.namespace.clone(),
        });
    };
    let mut mt = target.media_type.clone();
    let mut digest = target.digest.clone();
    let mut depth = 0;
    while is_index(&mt) {
        depth += 1;
        if depth > 4 {
            return Err(CtrdError::Image("indexes nested too deep".into()));
        }
        let idx: Index = serde_json::from_slice(&read_blob(conn, &digest).await?)
            .map_err(|e| CtrdError::Image(format!("index {digest}: {e}")))?;
        let m = pick_platform(&idx.manifests).ok_or_else(|| {
            CtrdError::Image(format!("image {name} has no manifest for linux/{}", arch()))
        })?;
        mt = m.media_type.clone();
        digest = m.digest.clone();
    }
    let manifest: Manifest = serde_json::from_slice(&read_blob(conn, &digest).await?)
        .map_err(|e| CtrdError::Image(format!("manifest {digest}: {e}")))?;
    let config: ImageConfig =
        serde_json::from_slice(&read_blob(conn, &manifest.config.digest).await?)
            .map_err(|e| CtrdError::Image(format!("config {}: {e}", manifest.config.digest)))?;
    let chains = chain_ids(&config.rootfs.diff_ids);
    let chain_id = chains
        .last()
        .cloned()
        .ok_or_else(|| CtrdError::Image(format!("image {name} has no layers")))?;
    let present = SnapshotsClient::new(conn.channel.clone())
        .stat(conn.request(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: chain_id.clone(),
        }))
        .await;
    if let Err(s) = present {
        if s.code() != tonic::Code::NotFound {
            return Err(CtrdError::rpc(format!("stat snapshot {chain_id}"), s));
        }
        let lease = conn.lease("unpack").await?;
        let r = unpack(
            conn,
            &lease,
            snapshotter,
            &manifest.layers,
            &config.rootfs.diff_ids,
        )
        .await;
        conn.release(&lease).await;
        r?;
    }
    Ok(Resolved {
        name,
        digest: target.digest,
        chain_id,
        config: config.config.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_containerd_stores_them() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(
            normalize("registry.local:5000/app"),
            "registry.local:5000/app:latest"
        );
        assert_eq!(
            normalize("localhost/trellis/busybox:t1"),
            "localhost/trellis/busybox:t1"
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = digest_of(b"a");
        let b = digest_of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], digest_of(format!("{a} {b}").as_bytes()));
        assert_eq!(
            digest_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// One ustar entry (name, body), as `tar` writes it.
    fn entry(name: &str, body: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut v = h.to_vec();
        v.extend_from_slice(body);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    #[test]
    fn a_tar_is_read_and_junk_is_refused() {
        let mut t = entry("./index.json", b"{}");
        t.extend(entry("blobs/sha256/ab", b"hello"));
        t.extend([0u8; 1024]);
        let files = read_tar(&t).unwrap();
        assert_eq!(&t[files["index.json"].clone()], b"{}");
        assert_eq!(&t[files["blobs/sha256/ab"].clone()], b"hello");
        let junk = vec![b'x'; 2048];
        let e = read_tar(&junk).unwrap_err().to_string();
        assert!(e.contains("not a tar archive"), "{e}");
        assert!(read_tar(b"").is_err());
    }

    #[test]
    fn a_blob_whose_digest_does_not_match_is_refused() {
        let body = b"layer";
        let wrong = digest_of(b"other");
        let hex = wrong.trim_start_matches("sha256:");
        let mut t = entry(&format!("blobs/sha256/{hex}"), body);
        t.extend([0u8; 1024]);
        let files = read_tar(&t).unwrap();
        let l = Layout { data: &t, files };
        let e = l.blob(&wrong).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        let e = l.blob(&digest_of(b"absent")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
