//! Container log files in the CRI format upstream's kubelet reads:
//! `<time> <stdout|stderr> <P|F> <content>\n`, the time RFC3339 in UTC with 9 fraction digits,
//! `F` for a whole line and `P` for a part of one (the rest follows in later entries). Each
//! entry carries the time the shim read it, so `kubectl logs --timestamps`, `--since` and
//! `--since-time` can be answered.
//!
//! The shim writes a run's log ([`Writer`]) and rotates it by size: once the next entry would
//! take the file past `max_size`, it is renamed `<file>.<YYYYMMDD-hhmmss.nnnnnnnnn>` and a new
//! one started; of the rotated files only the newest `max_files - 1` are kept (upstream's
//! `--container-log-max-size` and `--container-log-max-files`; upstream rotates every 10 s
//! from the kubelet, here the writer rotates at the size itself). As upstream does, the newest
//! rotated file stays plain and the older ones are gzipped to `<rotated>.gz` ([`compact`]), on
//! a thread of the writer's own so that the container's output never waits for it; the
//! gzipped files count towards `max_files`. Readers see a log as its rotated files by name,
//! then the current one ([`files`]), and read a `.gz` one through [`read_into`]; [`Follower`]
//! keeps reading a file across rotations.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Upstream's `--container-log-max-size` default, 10Mi.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Upstream's `--container-log-max-files` default.
pub const DEFAULT_MAX_FILES: u32 = 5;
/// The most one read of a container's output puts in one entry (upstream's 16 KiB line
/// buffer); a longer line becomes several `P` entries.
pub const MAX_ENTRY: usize = 16 * 1024;

/// The output a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed entry of a log file (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The time as written (RFC3339, 9 fraction digits): what `timestamps` prints.
    pub time: &'a str,
    pub stream: Stream,
    /// A part of a line: its content has no newline of its own.
    pub partial: bool,
    pub content: &'a [u8],
}

impl Entry<'_> {
    /// The entry's time, parsed.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }
}

/// Parses one line of a log file (without its newline); None when it is not in the CRI
/// format (a file written before this format, say).
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(it.next()?).ok()?;
    let stream = match it.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match it.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    // An empty line is written as `<time> stdout F ` and may have lost its space.
    let content = it.next().unwrap_or(&[]);
    if !time.ends_with('Z') || time.len() < 20 {
        return None;
    }
    Some(Entry {
        time,
        stream,
        partial,
        content,
    })
}

/// `t` as the log writes it: RFC3339 in UTC with exactly 9 fraction digits (Go's
/// `2006-01-02T15:04:05.000000000Z07:00`, what upstream's kubelet prints for `timestamps`).
pub fn format_time(t: jiff::Timestamp) -> String {
    let secs = jiff::Timestamp::from_second(t.as_second()).unwrap_or(t);
    format!(
        "{}.{:09}Z",
        secs.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_nanosecond().max(0)
    )
}

/// How a log is rotated: at most `max_size` bytes per file (an entry larger than that still
/// goes whole into a file of its own) and `max_files` files in all, the current one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    max_size: u64,
    max_files: u32,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

impl Rotation {
    /// Upstream's rules: the size must be positive and at least 2 files be kept.
    pub fn new(max_size: u64, max_files: u32) -> Result<Rotation, String> {
        if max_size == 0 {
            return Err("the container log max size must be positive".into());
        }
        if max_files < 2 {
            return Err(format!(
                "the container log max files must be at least 2, not {max_files}"
            ));
        }
        Ok(Rotation {
            max_size,
            max_files,
        })
    }
    pub fn max_size(&self) -> u64 {
        self.max_size
    }
    pub fn max_files(&self) -> u32 {
        self.max_files
    }
}

/// Parses a size as upstream's flags take it (a resource quantity): `10Mi`, `512Ki`, `1G`,
/// `2048`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 10Mi"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (Ki, Mi, Gi, k, M, G)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Every file named `<log>.<suffix>` beside the log at `path` (rotated, gzipped, temporary),
/// sorted by name.
fn listing(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `p` with `suffix` appended to its name.
fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn is_gz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// The rotated files of the log at `path`, oldest first: plain or gzipped (`.gz`). A rotated
/// file being compressed (its `.gz.tmp` being written) is listed plain; once its `.gz` is in
/// place (written whole and synced before the rename) the `.gz` is listed, even while the
/// plain one is not removed yet.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let all = listing(path);
    let mut v: Vec<PathBuf> = all
        .iter()
        .filter(|p| !p.as_os_str().to_string_lossy().ends_with(".tmp"))
        .filter(|p| is_gz(p) || !all.contains(&with_suffix(p, ".gz")))
        .cloned()
        .collect();
    // The suffix is a fixed-width time (a `.gz` after it): by name is by age.
    v.sort();
    v
}

/// Appends the content of one log file to `out`, decompressing a `.gz` one. On an error (a
/// corrupt or truncated `.gz`) what was read before it stays in `out`.
pub fn read_into(path: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    let f = File::open(path)?;
    if is_gz(path) {
        flate2::read::MultiGzDecoder::new(f).read_to_end(out)?;
    } else {
        let mut f = f;
        f.read_to_end(out)?;
    }
    Ok(())
}

/// The gzip header comment that names the inode of the plain file a `.gz` was made from.
pub(crate) const INO_COMMENT: &str = "trellis-log-ino=";

/// The inode that identifies a rotated file: its own, or for a `.gz` that of the plain file
/// it was made from.
pub fn identity(p: &Path) -> Option<u64> {
    if !is_gz(p) {
        return ino_of(p);
    }
    let f = File::open(p).ok()?;
    let dec = flate2::read::GzDecoder::new(f);
    let comment = std::str::from_utf8(dec.header()?.comment()?).ok()?;
    comment.strip_prefix(INO_COMMENT)?.parse().ok()
}

/// Gzips the rotated file `plain` to `<plain>.gz`: written to `<plain>.gz.tmp`, synced,
/// renamed, then the plain file removed, so that a crash at any step leaves the whole log in
/// one of the two. When the plain file was removed meanwhile (rotated out), so is the `.gz`.
fn gzip(plain: &Path) -> std::io::Result<()> {
    let tmp = with_suffix(plain, ".gz.tmp");
    let gz = with_suffix(plain, ".gz");
    let result = (|| {
        let mut from = File::open(plain)?;
        let ino = from.metadata()?.ino();
        let to = File::create(&tmp)?;
        // The plain file's inode goes into the header: a follower that had it open finds its
        // place among the rotated files by it (see [`identity`]).
        let mut enc = flate2::GzBuilder::new()
            .comment(format!("{INO_COMMENT}{ino}"))
            .write(to, flate2::Compression::default());
        std::io::copy(&mut from, &mut enc)?;
        enc.finish()?.sync_all()?;
        std::fs::rename(&tmp, &gz)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = gz.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    match std::fs::remove_file(plain) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&gz);
            Ok(())
        }
        r => r,
    }
}

/// Brings the rotated files of the log at `path` to their resting state: a `.gz.tmp` left by a
/// crash is removed (its plain file is still there) and a plain file whose `.gz` is in place is
/// removed; every rotated file but the newest is gzipped; the oldest beyond the rotation's
/// `max_files` are removed.
pub fn compact(path: &Path, rotation: Rotation) -> std::io::Result<()> {
    let all = listing(path);
    for p in &all {
        let name = p.as_os_str().to_string_lossy();
        let leftover_tmp = name.ends_with(".gz.tmp");
        let replaced_plain =
            !is_gz(p) && !name.ends_with(".tmp") && all.contains(&with_suffix(p, ".gz"));
        if leftover_tmp || replaced_plain {
            std::fs::remove_file(p)?;
        }
    }
    let rot = rotated(path);
    for p in rot.iter().take(rot.len().saturating_sub(1)) {
        if !is_gz(p) {
            gzip(p)?;
        }
    }
    trim(path, rotation);
    Ok(())
}

/// Removes the oldest rotated files beyond the rotation's limit (the current file counts).
fn trim(path: &Path, rotation: Rotation) {
    let old = rotated(path);
    let keep = rotation.max_files.saturating_sub(1) as usize;
    for f in old.iter().take(old.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(f);
    }
}

/// Whether the compacting thread of a writer runs, and whether a rotation came since it last
/// started a pass.
#[derive(Default)]
struct CompactState {
    running: bool,
    again: bool,
}

/// Runs [`compact`] on a thread, again as long as rotations came during a pass; warns when
/// it fails.
fn compact_in_background(
    path: &Path,
    rotation: Rotation,
    state: Arc<Mutex<CompactState>>,
) -> Option<JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("log-compact".into())
        .spawn({
            let state = state.clone();
            let path = path.to_path_buf();
            move || {
                loop {
                    if let Err(e) = compact(&path, rotation) {
                        tracing::warn!(log = %path.display(), "compressing rotated logs: {e}");
                    }
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    if !s.again {
                        s.running = false;
                        return;
                    }
                    s.again = false;
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(log = %path.display(), "starting log compression: {e}");
            state.lock().unwrap_or_else(|e| e.into_inner()).running = false;
            None
        }
    }
}

/// Every file of the log at `path` in order: the rotated ones, then the current one.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut v = rotated(path);
    v.push(path.to_path_buf());
    v
}

/// Writes a run's log, rotating it.
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    /// The thread compressing rotated files, if one was started.
    compactor: Option<JoinHandle<()>>,
    compact_state: Arc<Mutex<CompactState>>,
}

impl Writer {
    /// Opens (appends to) the log at `path`, and finishes in the background what a crash may
    /// have left of compressing its rotated files ([`compact`]).
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        let mut w = Writer {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            compactor: None,
            compact_state: Arc::default(),
        };
        if !listing(path).is_empty() {
            w.compact();
        }
        Ok(w)
    }

    /// Writes what was read from `stream` at `time`: each whole line a `F` entry, a rest
    /// without newline a `P` entry (so an interactive prompt shows at once).
    pub fn write(
        &mut self,
        stream: Stream,
        time: jiff::Timestamp,
        data: &[u8],
    ) -> std::io::Result<()> {
        let stamp = format_time(time);
        let mut rest = data;
        while !rest.is_empty() {
            let (content, partial, used) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], false, i + 1),
                None => (rest, true, rest.len()),
            };
            self.entry(&stamp, stream, partial, content)?;
            rest = &rest[used..];
        }
        Ok(())
    }

    fn entry(
        &mut self,
        stamp: &str,
        stream: Stream,
        partial: bool,
        content: &[u8],
    ) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(stamp.len() + content.len() + 12);
        line.extend_from_slice(stamp.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Renames the current file away, starts a new one, removes the oldest rotated files
    /// beyond the limit, and has the older rotated files compressed in the background.
    fn rotate(&mut self) -> std::io::Result<()> {
        let now = jiff::Timestamp::now();
        let secs = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        let mut name = self.path.as_os_str().to_os_string();
        name.push(format!(
            ".{}.{:09}",
            secs.strftime("%Y%m%d-%H%M%S"),
            now.subsec_nanosecond().max(0)
        ));
        std::fs::rename(&self.path, &name)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        trim(&self.path, self.rotation);
        self.compact();
        Ok(())
    }

    /// Has the rotated files compacted in the background: by a new thread, or by the one
    /// running (it makes another pass).
    fn compact(&mut self) {
        {
            let mut s = self.compact_state.lock().unwrap_or_else(|e| e.into_inner());
            if s.running {
                s.again = true;
                return;
            }
            s.running = true;
        }
        if let Some(h) = self.compactor.take() {
            let _ = h.join();
        }
        self.compactor =
            compact_in_background(&self.path, self.rotation, self.compact_state.clone());
    }

    /// Waits until the rotated files are compressed (the compacting thread, if any, ended).
    pub fn wait_compacted(&mut self) {
        if let Some(h) = self.compactor.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    /// A compression under way is finished: the process may end right after.
    fn drop(&mut self) {
        self.wait_compacted();
    }
}

/// Reads one log file as it grows, following it across rotations: what [`Follower::poll`]
/// returns is whole lines only, each once.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: Option<u64>,
    pending: Vec<u8>,
}

/// The inode number of the file `path` names now.
pub fn ino_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Follower {
    /// From the start of the current file (opened now, if it exists).
    pub fn new(path: &Path) -> Follower {
        let file = File::open(path).ok();
        let ino = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.ino());
        Follower {
            path: path.to_path_buf(),
            file,
            ino,
            pending: Vec::new(),
        }
    }

    /// From the current end: only what is written from now on (attach).
    pub fn at_end(path: &Path) -> Follower {
        let mut f = Follower::new(path);
        if let Some(file) = f.file.as_mut() {
            let _ = file.seek(SeekFrom::End(0));
        }
        f
    }

    /// The inode of the file being read, if one is open.
    pub fn ino(&self) -> Option<u64> {
        self.ino
    }

    /// An entry is never split across files: what is left unterminated of one is torn.
    fn end_line(&mut self) {
        if self.pending.last().is_some_and(|b| *b != b'\n') {
            self.pending.push(b'\n');
        }
    }

    /// Appends to `out` the whole lines written since the last call (a line being written
    /// waits for its newline); moves on to the new file once the current one was rotated,
    /// after reading the old one to its end.
    pub fn poll(&mut self, out: &mut Vec<u8>) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
            self.ino = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|m| m.ino());
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.read_to_end(&mut self.pending);
        }
        // Rotated: the path names another file now; the old one is read to its end above.
        if let (Some(now), Some(was)) = (ino_of(&self.path), self.ino)
            && now != was
            && let Ok(mut f) = File::open(&self.path)
        {
            if let Some(old) = self.file.as_mut() {
                let _ = old.read_to_end(&mut self.pending);
            }
            // Files rotated since the one read: those after it by name, or, when it is gone
            // already (the oldest is removed first), all that are left.
            let later = rotated(&self.path);
            // The newest match: an older `.gz` may carry the same inode number, freed when
            // its plain file was removed and given to a newer file since.
            let from = later
                .iter()
                .rposition(|p| identity(p) == Some(was))
                .map_or(0, |i| i + 1);
            for p in &later[from..] {
                if ino_of(p) == Some(now) {
                    continue;
                }
                self.end_line();
                if let Err(e) = read_into(p, &mut self.pending) {
                    tracing::warn!(log = %p.display(), "reading a rotated log: {e}");
                }
            }
            self.end_line();
            let _ = f.read_to_end(&mut self.pending);
            self.ino = f.metadata().ok().map(|m| m.ino());
            self.file = Some(f);
        }
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            out.extend(self.pending.drain(..=end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_the_cri_format_with_nine_fraction_digits() {
        assert_eq!(
            format_time(at("2026-12-05T01:02:03.5Z")),
            "2026-12-05T01:02:03.500000000Z"
        );
        assert_eq!(
            format_time(at("2026-12-05T01:02:03Z")),
            "2026-12-05T01:02:03.000000000Z"
        );
        let e = parse(b"2026-12-05T01:02:03.500000000Z stderr P half a line").unwrap();
        assert_eq!(
            (e.stream, e.partial, e.content),
            (Stream::Stderr, true, &b"half a line"[..])
        );
        assert_eq!(e.timestamp(), Some(at("2026-12-05T01:02:03.5Z")));
        let empty = parse(b"2026-12-05T01:02:03.500000000Z stdout F ").unwrap();
        assert_eq!(empty.content, b"");
        assert_eq!(parse(b"plain old output"), None);
        assert_eq!(parse(b"2026-12-05T01:02:03.5Z stdin F x"), None);
    }

    #[test]
    fn sizes_take_upstreams_units() {
        assert_eq!(parse_size("10Mi"), Ok(10 << 20));
        assert_eq!(parse_size("2Ki"), Ok(2048));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("300"), Ok(300));
        assert!(parse_size("10MB").is_err());
        assert!(parse_size("Mi").is_err());
        assert!(parse_size("99999999999Gi").is_err());
        assert!(Rotation::new(1, 1).is_err());
        assert!(Rotation::new(0, 5).is_err());
    }

    #[test]
    fn lines_and_parts_become_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = Writer::open(&path, Rotation::default()).unwrap();
        let t = at("2026-12-05T01:02:03.000000001Z");
        w.write(Stream::Stdout, t, b"one\ntwo\npro").unwrap();
        w.write(Stream::Stderr, t, b"mpt\n\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let s = "2026-12-05T01:02:03.000000001Z";
        assert_eq!(
            text,
            format!(
                "{s} stdout F one\n{s} stdout F two\n{s} stdout P pro\n{s} stderr F mpt\n{s} stderr F \n"
            )
        );
    }

    /// Rotation keeps `max_files` files of at most `max_size` bytes; reading the files in
    /// order gives the newest entries, in order, none twice. Without rotation (the negative
    /// control) the one file holds everything.
    #[test]
    fn rotation_bounds_the_files_and_keeps_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotation = Rotation::new(1024, 3).unwrap();
        let mut w = Writer::open(&path, rotation).unwrap();
        let mut follower = Follower::new(&path);
        let mut followed = Vec::new();
        for i in 0..200 {
            w.write(
                Stream::Stdout,
                jiff::Timestamp::now(),
                format!("line-{i}\n").as_bytes(),
            )
            .unwrap();
            if i % 7 == 0 {
                follower.poll(&mut followed);
            }
        }
        follower.poll(&mut followed);
        w.wait_compacted();
        let all = files(&path);
        assert_eq!(all.len(), 3, "{all:?}");
        let mut numbers = Vec::new();
        for f in &all {
            let mut bytes = Vec::new();
            read_into(f, &mut bytes).unwrap();
            assert!(bytes.len() <= 1024, "{f:?}: {}", bytes.len());
            for l in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let e = parse(l).unwrap();
                let n: u32 = std::str::from_utf8(e.content).unwrap()[5..]
                    .parse()
                    .unwrap();
                numbers.push(n);
            }
        }
        assert_eq!(numbers.last(), Some(&199));
        assert!(numbers[0] > 0, "the oldest entries are gone");
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        // The follower saw every entry once, across all the rotations.
        let seen: Vec<u32> = followed
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                std::str::from_utf8(parse(l).unwrap().content).unwrap()[5..]
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());

        let one = dir.path().join("1.log");
        let mut w = Writer::open(&one, Rotation::new(u64::MAX, 2).unwrap()).unwrap();
        for i in 0..200 {
            w.write(
                Stream::Stdout,
                jiff::Timestamp::now(),
                format!("line-{i}\n").as_bytes(),
            )
            .unwrap();
        }
        assert_eq!(files(&one).len(), 1);
        assert!(std::fs::read(&one).unwrap().len() > 3 * 1024);
    }

    fn numbers_of(bytes: &[u8]) -> Vec<u32> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                std::str::from_utf8(parse(l).unwrap().content).unwrap()[5..]
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn write_lines(w: &mut Writer, range: std::ops::Range<u32>) {
        for i in range {
            w.write(
                Stream::Stdout,
                jiff::Timestamp::now(),
                format!("line-{i} {}\n", "the same words again ".repeat(8)).as_bytes(),
            )
            .unwrap();
        }
    }

    /// Rotation leaves the newest rotated file plain and gzips the older ones, within
    /// `max_files` in all; reading the files in order (through `read_into`) gives every kept
    /// entry once, in order, across `.gz` and plain. Negative control: the files on disk are
    /// smaller than the plain content they hold.
    #[test]
    fn older_rotated_files_are_gzipped_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = Writer::open(&path, Rotation::new(4096, 5).unwrap()).unwrap();
        write_lines(&mut w, 0..300);
        w.wait_compacted();
        let all = files(&path);
        assert_eq!(all.len(), 5, "{all:?}");
        let gz: Vec<bool> = all.iter().map(|p| is_gz(p)).collect();
        assert_eq!(gz, [true, true, true, false, false], "{all:?}");
        assert!(
            listing(&path).iter().all(|p| all.contains(p)),
            "no plain twin or tmp is left: {:?}",
            listing(&path)
        );
        let mut content = Vec::new();
        for f in &all {
            read_into(f, &mut content).unwrap();
        }
        let numbers = numbers_of(&content);
        assert_eq!(numbers.last(), Some(&299));
        assert!(numbers[0] > 0, "the oldest entries are gone");
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        let on_disk: u64 = all
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(
            on_disk < content.len() as u64 * 2 / 3,
            "{on_disk} bytes on disk for {} of content",
            content.len()
        );
    }

    /// A crash while compressing leaves a `.gz.tmp` beside its plain file, or a `.gz` beside
    /// the plain file it replaces: readers list the file once, and opening the writer again
    /// removes the tmp and compresses the plain file again; nothing is lost.
    #[test]
    fn a_crash_while_compressing_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = Writer::open(&path, Rotation::new(4096, 6).unwrap()).unwrap();
        write_lines(&mut w, 0..100);
        drop(w);
        let rot = rotated(&path);
        assert!(rot.len() >= 3, "{rot:?}");
        let mut before = Vec::new();
        for f in files(&path) {
            read_into(&f, &mut before).unwrap();
        }
        // Undo the compression of the oldest file, leaving a half-written tmp: the crash
        // between writing the tmp and the rename.
        let gz = &rot[0];
        assert!(is_gz(gz));
        let mut plain_bytes = Vec::new();
        read_into(gz, &mut plain_bytes).unwrap();
        let plain = gz.with_extension("");
        std::fs::write(&plain, &plain_bytes).unwrap();
        std::fs::write(with_suffix(&plain, ".gz.tmp"), b"\x1f\x8b half").unwrap();
        std::fs::remove_file(gz).unwrap();
        // And a crash after the rename, before removing the plain file.
        let gz2 = &rot[1];
        let mut plain2_bytes = Vec::new();
        read_into(gz2, &mut plain2_bytes).unwrap();
        std::fs::write(gz2.with_extension(""), &plain2_bytes).unwrap();
        let mut seen = Vec::new();
        for f in files(&path) {
            read_into(&f, &mut seen).unwrap();
        }
        assert_eq!(seen, before, "each file read once");
        let mut w = Writer::open(&path, Rotation::new(4096, 6).unwrap()).unwrap();
        w.wait_compacted();
        assert_eq!(listing(&path), rot, "the tmp and the plain twins are gone");
        let mut after = Vec::new();
        for f in files(&path) {
            read_into(&f, &mut after).unwrap();
        }
        assert_eq!(after, before);
    }

    /// A corrupt `.gz` is an error from `read_into` (what it gave is kept), not a panic.
    #[test]
    fn a_corrupt_gz_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("0.log.20261205-010203.000000000.gz");
        std::fs::write(&bad, b"\x1f\x8b\x08\x00garbage that is no deflate stream").unwrap();
        let mut out = b"kept".to_vec();
        let e = read_into(&bad, &mut out).unwrap_err();
        assert!(out.starts_with(b"kept"), "{e}");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"2026-12-05T01:02:03.000000000Z stdout F whole\n")
            .unwrap();
        let mut whole = enc.finish().unwrap();
        whole.truncate(whole.len() - 6);
        std::fs::write(&bad, &whole).unwrap();
        assert!(read_into(&bad, &mut Vec::new()).is_err(), "a truncated gz");
    }
}
