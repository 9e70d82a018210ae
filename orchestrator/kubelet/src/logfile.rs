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
//! from the kubelet, here the writer rotates at the size itself). Readers see a log as its
//! rotated files by name, then the current one ([`files`]); [`Follower`] keeps reading a file
//! across rotations.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// The rotated files of the log at `path`, oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
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
                        .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    // The suffix is a fixed-width time: by name is by age.
    v.sort();
    v
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
}

impl Writer {
    /// Opens (appends to) the log at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
        })
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

    /// Renames the current file away, starts a new one, and removes the oldest rotated files
    /// beyond the limit.
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
        let old = rotated(&self.path);
        let keep = self.rotation.max_files.saturating_sub(1) as usize;
        for f in old.iter().take(old.len().saturating_sub(keep)) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
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

fn ino_of(path: &Path) -> Option<u64> {
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
            let from = later
                .iter()
                .position(|p| ino_of(p) == Some(was))
                .map_or(0, |i| i + 1);
            for p in &later[from..] {
                if ino_of(p) == Some(now) {
                    continue;
                }
                self.end_line();
                if let Ok(mut r) = File::open(p) {
                    let _ = r.read_to_end(&mut self.pending);
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
        let all = files(&path);
        assert_eq!(all.len(), 3, "{all:?}");
        let mut numbers = Vec::new();
        for f in &all {
            let bytes = std::fs::read(f).unwrap();
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
}
