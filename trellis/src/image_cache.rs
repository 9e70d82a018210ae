//! The image cache of `trellis up --runtime containerd`: the image archive `up` builds from its
//! own binary (200 MiB and 10–17 s of a debug build) is kept, keyed by what went into it, so a
//! second `up` of the same binary — or a second test of the same build — imports it without
//! building. As kind keeps its node images, `down` keeps the cache; `rm -rf` of its directory
//! clears it.
//!
//! - **Key.** The format version below, the image's tag and compression, the binary's identity
//!   (its canonical path, device, inode, size and modification time: a rebuilt binary is a new
//!   file or a new time) and each tool's (where it resolves, its size and time: an `apt
//!   upgrade` of iptables or busybox misses). The tools' shared libraries are not in the key:
//!   an entry is a consistent set taken together, only older.
//! - **Entries.** `<key hash>.tar` (the OCI layout archive) and `<key hash>.json` (the key in
//!   full, the image's digest, the archive's size), each written to a temporary file and renamed,
//!   the archive first: no reader ever sees half an archive, and one without its record is not an
//!   entry.
//! - **Checked on every hit.** The record's key equals the key, the archive's size its size, and
//!   every blob's SHA-256 its name, the index naming the recorded digest: a truncated or corrupt
//!   archive is built anew, never imported.
//! - **One at a time.** An exclusive `flock` on `<dir>/.lock` around look-up, build and pruning:
//!   two `up`s at once (parallel tests) build once, the second waits and hits.
//! - **Bounded.** The newest [`KEEP`] entries (a hit makes its entry newest) stay; older ones,
//!   and temporary files a killed build left, go.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use trellis_kubelet::containerd::image::{digest_of, read_tar};

use crate::image_build::{self, Compression, Options};

/// Bumped whenever the archive's layout or contents change for the same inputs.
pub const FORMAT: u32 = 1;
/// Entries kept: the binary in use and the one before it (each is ~200 MiB).
pub const KEEP: usize = 2;
/// How long to wait for another `up`'s build to finish.
const LOCK_LIMIT: Duration = Duration::from_secs(600);

/// What a look-up gives: the archive to import and whether it was built now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub archive: PathBuf,
    /// The image's manifest digest.
    pub digest: String,
    /// True when the entry was there and sound (no build).
    pub hit: bool,
}

/// An entry's record, beside its archive.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    format: u32,
    key: String,
    digest: String,
    size: u64,
}

/// The cache in a directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The key of `opts`' image: everything it is built from, as text.
    pub fn key(opts: &Options) -> anyhow::Result<String> {
        let mut key = format!(
            "format {FORMAT}\ntag {}\ncompression {}\n",
            opts.tag,
            match opts.compression {
                Compression::Gzip => "gzip",
                Compression::None => "none",
            }
        );
        let ident = |what: &str, p: &Path| -> anyhow::Result<String> {
            let real =
                std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))?;
            let m = std::fs::metadata(&real)
                .with_context(|| format!("reading {}'s metadata", real.display()))?;
            Ok(format!(
                "{what} {} dev {} ino {} size {} mtime {}.{:09}\n",
                real.display(),
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ))
        };
        key.push_str(&ident("binary", &opts.binary)?);
        for (tool, package) in &opts.tools {
            let path = image_build::find_tool(tool, package)?;
            key.push_str(&ident(&format!("tool {tool}"), &path)?);
        }
        Ok(key)
    }

    /// The entry of `key`: its archive and record.
    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let hash = digest_of(key.as_bytes());
        let hex = hash.trim_start_matches("sha256:");
        let short = &hex[..hex.len().min(16)];
        (
            self.dir.join(format!("{short}.tar")),
            self.dir.join(format!("{short}.json")),
        )
    }

    /// The archive of `opts`' image: the cached one when it is there and sound, else built now
    /// (and kept). Blocking: call it off the async runtime.
    pub fn get_or_build(&self, opts: &Options) -> anyhow::Result<Cached> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the image cache {}", self.dir.display()))?;
        let _lock = self.lock()?;
        let key = Cache::key(opts)?;
        let (archive, record) = self.paths(&key);
        let found = match check(&archive, &record, &key) {
            Ok(digest) => Some(digest),
            Err(e) => {
                if archive.exists() || record.exists() {
                    tracing::warn!(archive = %archive.display(), "image cache entry unusable, building anew: {e:#}");
                }
                None
            }
        };
        let out = match found {
            Some(digest) => {
                // Newest, for pruning.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&archive)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Cached {
                    archive: archive.clone(),
                    digest,
                    hit: true,
                }
            }
            None => {
                let _ = std::fs::remove_file(&record);
                let built = image_build::build(opts, &archive)?;
                let size = std::fs::metadata(&archive)
                    .with_context(|| format!("reading {}", archive.display()))?
                    .len();
                let rec = Record {
                    format: FORMAT,
                    key,
                    digest: built.digest.clone(),
                    size,
                };
                let text = serde_json::to_vec_pretty(&rec).context("encoding the record")?;
                let tmp = record.with_extension("json.tmp");
                std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &record)
                    .with_context(|| format!("writing {}", record.display()))?;
                Cached {
                    archive: archive.clone(),
                    digest: built.digest,
                    hit: false,
                }
            }
        };
        self.prune(&archive);
        Ok(out)
    }

    /// The cache's lock, held until dropped; waits at most [`LOCK_LIMIT`] for another holder.
    fn lock(&self) -> anyhow::Result<Flock<std::fs::File>> {
        let path = self.dir.join(".lock");
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let deadline = Instant::now() + LOCK_LIMIT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => return Ok(locked),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
                Err((_, e)) => bail!("locking {}: {e}", path.display()),
            }
            if Instant::now() > deadline {
                bail!(
                    "the image cache {} stayed locked for {} s (another `trellis up` building?)",
                    self.dir.display(),
                    LOCK_LIMIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes all but the newest [`KEEP`] entries (never `current`), entries without a
    /// record, and temporary files (a killed build's; the lock is held, so none is in use).
    fn prune(&self, current: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut archives: Vec<(SystemTime, PathBuf)> = Vec::new();
        for e in dir.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp") {
                let _ = std::fs::remove_file(&p);
            } else if name.ends_with(".tar") {
                let time = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                archives.push((time, p));
            } else if name.ends_with(".json") && !p.with_extension("tar").exists() {
                let _ = std::fs::remove_file(&p);
            }
        }
        archives.sort_by_key(|a| std::cmp::Reverse(a.0));
        // `current` is kept, and the newest others with a record up to KEEP in all.
        let mut kept = 1;
        for (_, p) in archives {
            let record = p.with_extension("json");
            if p == current {
                continue;
            }
            if kept < KEEP && record.exists() {
                kept += 1;
                continue;
            }
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(&record);
        }
    }
}

/// The digest of a sound entry: its record names `key` and the archive's size, and the archive
/// is an OCI layout whose every blob matches its name, indexing the recorded digest.
fn check(archive: &Path, record: &Path, key: &str) -> anyhow::Result<String> {
    let rec: Record = serde_json::from_slice(
        &std::fs::read(record).with_context(|| format!("reading {}", record.display()))?,
    )
    .context("the record")?;
    if rec.format != FORMAT || rec.key != key {
        bail!("the record is of another key");
    }
    let data = std::fs::read(archive).with_context(|| format!("reading {}", archive.display()))?;
    if data.len() as u64 != rec.size {
        bail!("{} bytes, the record says {}", data.len(), rec.size);
    }
    let files = read_tar(&data).context("the archive")?;
    let index: serde_json::Value =
        serde_json::from_slice(&data[files.get("index.json").context("no index.json")?.clone()])
            .context("index.json")?;
    if index["manifests"][0]["digest"].as_str() != Some(rec.digest.as_str()) {
        bail!("index.json does not name {}", rec.digest);
    }
    let mut blobs = 0;
    for (name, range) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/")
            && !hex.is_empty()
        {
            let got = digest_of(&data[range.clone()]);
            if got["sha256:".len()..] != *hex {
                bail!("blob {hex} holds {got}");
            }
            blobs += 1;
        }
    }
    let manifest = format!("blobs/sha256/{}", rec.digest.trim_start_matches("sha256:"));
    if blobs < 3 || !files.contains_key(&manifest) {
        bail!("the archive lacks its blobs");
    }
    Ok(rec.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(binary: &Path) -> Options {
        Options {
            binary: binary.to_path_buf(),
            tag: "trellis.test/trellis:cache".into(),
            compression: Compression::None,
            tools: vec![("ls".into(), "coreutils".into())],
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_same_binary_builds_once_another_misses_and_a_corrupt_entry_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"#!/bin/sh\necho one\n").unwrap();

        let first = cache.get_or_build(&opts(&bin)).unwrap();
        assert!(!first.hit, "an empty cache builds");
        let second = cache.get_or_build(&opts(&bin)).unwrap();
        assert!(second.hit, "the same binary is a hit");
        assert_eq!(second.archive, first.archive);
        assert_eq!(second.digest, first.digest);
        assert_eq!(entries(&cache.dir).len(), 2, "one archive and its record");

        // A truncated archive (a partial write) is not used: built anew, then sound again.
        let bytes = std::fs::read(&first.archive).unwrap();
        std::fs::write(&first.archive, &bytes[..bytes.len() / 2]).unwrap();
        let again = cache.get_or_build(&opts(&bin)).unwrap();
        assert!(!again.hit, "a truncated archive is rebuilt");
        assert_eq!(again.digest, first.digest);
        assert_eq!(std::fs::read(&again.archive).unwrap(), bytes);
        // A corrupt one of the right size (a flipped byte in a blob) too.
        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0xff;
        std::fs::write(&first.archive, &flipped).unwrap();
        assert!(
            !cache.get_or_build(&opts(&bin)).unwrap().hit,
            "a corrupt archive is rebuilt"
        );
        // An archive without its record (a build killed before the rename) is no entry.
        std::fs::remove_file(first.archive.with_extension("json")).unwrap();
        assert!(!cache.get_or_build(&opts(&bin)).unwrap().hit);
        assert!(cache.get_or_build(&opts(&bin)).unwrap().hit);

        // Another binary (the same path, rewritten) misses; the cache keeps KEEP entries.
        // Each rewrite gets its own modification time, set rather than waited for.
        let rewrite = |content: &[u8], n: u64| {
            std::fs::write(&bin, content).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&bin)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + n))
                .unwrap();
        };
        rewrite(b"#!/bin/sh\necho two, longer\n", 2);
        let other = cache.get_or_build(&opts(&bin)).unwrap();
        assert!(!other.hit, "a changed binary misses");
        assert_ne!(other.digest, first.digest);
        assert_ne!(other.archive, first.archive);
        std::fs::write(dir.path().join("cache/stale.tar.tmp-build"), b"x").unwrap();
        for n in 3..6 {
            rewrite(format!("#!/bin/sh\necho {n}\n").as_bytes(), n);
            assert!(!cache.get_or_build(&opts(&bin)).unwrap().hit);
        }
        let left = entries(&cache.dir);
        assert_eq!(left.len(), 2 * KEEP, "{left:?}");
        assert!(left.iter().all(|n| !n.contains(".tmp")), "{left:?}");
    }

    #[test]
    fn two_at_once_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"binary").unwrap();
        let o = opts(&bin);
        let results: Vec<Cached> = std::thread::scope(|s| {
            let a = s.spawn(|| cache.get_or_build(&o).unwrap());
            let b = s.spawn(|| cache.get_or_build(&o).unwrap());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(
            results.iter().filter(|r| r.hit).count(),
            1,
            "one built, the other waited and hit: {results:?}"
        );
        assert_eq!(results[0].digest, results[1].digest);
    }

    #[test]
    fn the_key_names_the_binary_and_the_tools() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("trellis");
        std::fs::write(&bin, b"binary").unwrap();
        let key = Cache::key(&opts(&bin)).unwrap();
        assert!(key.contains(&format!("format {FORMAT}")), "{key}");
        assert!(key.contains("binary "), "{key}");
        assert!(key.contains("tool ls "), "{key}");
        let mut gz = opts(&bin);
        gz.compression = Compression::Gzip;
        assert_ne!(Cache::key(&gz).unwrap(), key);
    }
}
