//! Container logs as the kubelet serves them at `/containerLogs/{ns}/{pod}/{container}`: the
//! current run's output, or the previous run's (`previous`), each line with the time it was
//! written (`timestamps`), from a time on (`sinceSeconds`, `sinceTime`), its last lines
//! (`tailLines`), cut at `limitBytes`, and followed (`follow`) until the run ends. A run's log
//! is `<pod dir>/logs/<container>/<attempt>.log` in the CRI format ([`crate::logfile`]) with
//! its rotated files beside it, the attempt being its restartCount, so the previous run's is
//! the one before. A log is read across its rotated files, oldest first.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::logfile::{self, Follower};
use crate::shim::EXIT_FILE;

/// The query of a log request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    /// Only entries written at or after this time (`sinceSeconds` ago, or `sinceTime`).
    pub since: Option<jiff::Timestamp>,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Why a log cannot be served: the HTTP code and upstream's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError {
    pub code: u16,
    pub message: String,
}

fn bad(code: u16, message: String) -> LogError {
    LogError { code, message }
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "TRUE")
}

impl LogQuery {
    /// Parses the query parameters kubectl sends (through the API server); `now` resolves
    /// `sinceSeconds`.
    pub fn parse(pairs: &[(String, String)], now: jiff::Timestamp) -> Result<LogQuery, LogError> {
        let mut q = LogQuery::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (k, v) in pairs {
            let number = || {
                v.parse::<u64>()
                    .map_err(|_| bad(400, format!("{k}: {v:?} is not a non-negative integer")))
            };
            match k.as_str() {
                "follow" => q.follow = truthy(v),
                "previous" => q.previous = truthy(v),
                "timestamps" => q.timestamps = truthy(v),
                "tailLines" => q.tail_lines = Some(number()?),
                "limitBytes" => q.limit_bytes = Some(number()?),
                "sinceSeconds" => since_seconds = Some(number()?),
                "sinceTime" => {
                    since_time = Some(v.parse::<jiff::Timestamp>().map_err(|e| {
                        bad(400, format!("sinceTime: {v:?} is not an RFC3339 time: {e}"))
                    })?);
                }
                _ => {}
            }
        }
        q.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    400,
                    "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                ));
            }
            (Some(s), None) => {
                let s = i64::try_from(s).unwrap_or(i64::MAX);
                Some(
                    now.checked_sub(jiff::SignedDuration::from_secs(s))
                        .unwrap_or(jiff::Timestamp::MIN),
                )
            }
            (None, t) => t,
        };
        Ok(q)
    }
}

/// The directory of pod `namespace/name` under `<root>/pods/`, by its sandbox record.
pub fn find_pod(root: &Path, namespace: &str, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(root.join("pods"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            std::fs::read(dir.join("sandbox.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|r| r["namespace"] == namespace && r["name"] == name)
        })
}

/// The attempts of container `name` that have a run directory, newest last.
fn attempts(pod_dir: &Path, name: &str) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(pod_dir.join("containers").join(name))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Opens the log a request is about: the file, the run directory (to see the run end), and
/// whether following makes sense.
pub fn open(
    pod_dir: &Path,
    pod: &str,
    container: &str,
    q: &LogQuery,
) -> Result<(PathBuf, PathBuf), LogError> {
    let runs = attempts(pod_dir, container);
    let Some(&latest) = runs.last() else {
        return Err(bad(
            400,
            format!(
                "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
            ),
        ));
    };
    let attempt = if q.previous {
        match runs.iter().rev().nth(1) {
            Some(a) => *a,
            None => {
                return Err(bad(
                    400,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                ));
            }
        }
    } else {
        latest
    };
    let file = pod_dir
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"));
    let run = pod_dir
        .join("containers")
        .join(container)
        .join(attempt.to_string());
    Ok((file, run))
}

/// Turns log lines into what the client asked for: each entry's content (its time first
/// with `timestamps`), entries before `since` left out, lines not in the CRI format passed
/// as they are.
struct Render<'q> {
    q: &'q LogQuery,
}

impl Render<'_> {
    /// Renders one line of a log file (without its newline); None when `since` leaves it out.
    fn line(&self, line: &[u8]) -> Option<Vec<u8>> {
        let Some(e) = logfile::parse(line) else {
            let mut v = line.to_vec();
            v.push(b'\n');
            return Some(v);
        };
        if let Some(since) = self.q.since
            && e.timestamp().is_some_and(|t| t < since)
        {
            return None;
        }
        let mut v = Vec::with_capacity(e.content.len() + 32);
        if self.q.timestamps {
            v.extend_from_slice(e.time.as_bytes());
            v.push(b' ');
        }
        v.extend_from_slice(e.content);
        if !e.partial {
            v.push(b'\n');
        }
        Some(v)
    }
}

/// Where rendered output goes: cut at `limitBytes`, sent in chunks of up to 64 KiB.
struct Out {
    tx: mpsc::Sender<Bytes>,
    budget: u64,
    buf: Vec<u8>,
}

impl Out {
    /// Adds `bytes`; false once the limit is reached or the reader went.
    fn push(&mut self, bytes: &[u8]) -> bool {
        let take = bytes
            .len()
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        self.buf.extend_from_slice(&bytes[..take]);
        self.budget -= take as u64;
        if self.buf.len() >= 64 * 1024 && !self.flush() {
            return false;
        }
        self.budget > 0
    }

    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return !self.tx.is_closed();
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(chunk).is_ok()
    }
}

/// Streams a log into `tx` (blocking: run it on a blocking thread): the rotated files and the
/// current one in order (since, tail and limit applied), then, when following, what is
/// appended until the run ends, the limit is reached, or the reader goes.
pub fn stream(file: PathBuf, run: PathBuf, q: LogQuery, tx: mpsc::Sender<Bytes>) {
    let render = Render { q: &q };
    let mut out = Out {
        tx,
        budget: q.limit_bytes.unwrap_or(u64::MAX),
        buf: Vec::new(),
    };
    // The current file first, so that a rotation from here on is seen by the follower; when
    // the file opened was rotated meanwhile, the rotated files from it on are the follower's.
    let mut follower = Follower::new(&file);
    let open = follower.ino();
    let mut history: Vec<u8> = Vec::new();
    let rotated = logfile::rotated(&file);
    // The file the follower opened, if it was rotated meanwhile (and perhaps gzipped since):
    // what follows it is the follower's. Only then is it looked for, and from the newest end: a
    // `.gz` carries the inode of the plain file it was made from, and the filesystem may have
    // given that number to a newer file since (an older `.gz` then matches the open file).
    let upto = match open {
        Some(ino) if logfile::ino_of(&file) != Some(ino) => rotated
            .iter()
            .rposition(|f| logfile::identity(f) == Some(ino))
            .unwrap_or(rotated.len()),
        _ => rotated.len(),
    };
    for f in &rotated[..upto] {
        // A `.gz` is read decompressed; a corrupt one is reported and what it gave is kept.
        if let Err(e) = logfile::read_into(f, &mut history) {
            tracing::warn!(log = %f.display(), "reading a rotated log: {e}");
        }
        if history.last().is_some_and(|b| *b != b'\n') {
            history.push(b'\n');
        }
    }
    follower.poll(&mut history);
    let lines = history
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| render.line(l));
    let mut open_ended = true;
    match q.tail_lines {
        Some(n) => {
            let cap = usize::try_from(n).unwrap_or(usize::MAX);
            let mut last: VecDeque<Vec<u8>> = VecDeque::new();
            if cap > 0 {
                for l in lines {
                    if last.len() == cap {
                        last.pop_front();
                    }
                    last.push_back(l);
                }
            }
            for l in &last {
                if !out.push(l) {
                    open_ended = false;
                    break;
                }
            }
        }
        None => {
            for l in lines {
                if !out.push(&l) {
                    open_ended = false;
                    break;
                }
            }
        }
    }
    if !out.flush() || !open_ended || !q.follow || q.previous {
        return;
    }
    // Follow: poll for growth; end once the run has ended and everything it wrote is sent.
    loop {
        let ended = run.join(EXIT_FILE).exists() || !run.exists();
        let mut grown = Vec::new();
        follower.poll(&mut grown);
        let had = !grown.is_empty();
        for l in grown
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| render.line(l))
        {
            if !out.push(&l) {
                let _ = out.flush();
                return;
            }
        }
        if !out.flush() || (ended && !had) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logfile::{Rotation, Stream, Writer};

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_query_kubectl_sends_is_understood() {
        let now = at("2026-12-05T01:00:00Z");
        let q = LogQuery::parse(
            &pairs(&[
                ("follow", "true"),
                ("tailLines", "5"),
                ("limitBytes", "10"),
                ("timestamps", "true"),
                ("sinceSeconds", "60"),
            ]),
            now,
        );
        assert_eq!(
            q,
            Ok(LogQuery {
                follow: true,
                previous: false,
                timestamps: true,
                since: Some(at("2026-12-05T00:59:00Z")),
                tail_lines: Some(5),
                limit_bytes: Some(10)
            })
        );
        let q = LogQuery::parse(&pairs(&[("sinceTime", "2026-12-05T02:00:00+01:00")]), now);
        assert_eq!(q.map(|q| q.since), Ok(Some(at("2026-12-05T01:00:00Z"))));
        let code = |v: &[(&str, &str)]| LogQuery::parse(&pairs(v), now).map_err(|e| e.code);
        assert_eq!(code(&[("tailLines", "-1")]), Err(400));
        assert_eq!(code(&[("sinceTime", "yesterday")]), Err(400));
        assert_eq!(
            code(&[("sinceTime", "2026-12-05T00:00:00Z"), ("sinceSeconds", "5")]),
            Err(400)
        );
        assert_eq!(code(&[("timestamps", "false")]).map(|_| ()), Ok(()));
    }

    /// Writes `lines` as run `attempt` of container `c`, each a second after `start`.
    fn write_run(pod: &Path, attempt: u32, lines: &[&str], start: &str, rotation: Rotation) {
        std::fs::create_dir_all(pod.join(format!("containers/c/{attempt}"))).unwrap();
        std::fs::create_dir_all(pod.join("logs/c")).unwrap();
        let mut w = Writer::open(&pod.join(format!("logs/c/{attempt}.log")), rotation).unwrap();
        for (i, l) in lines.iter().enumerate() {
            let t = at(start)
                .checked_add(jiff::SignedDuration::from_secs(i as i64))
                .unwrap();
            let stream = if l.starts_with("err") {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            w.write(stream, t, format!("{l}\n").as_bytes()).unwrap();
        }
    }

    async fn collect(pod: &Path, q: LogQuery) -> String {
        let (file, run) = open(pod, "p", "c", &q).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::task::spawn_blocking(move || stream(file, run, q, tx));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        task.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A `.gz` records the inode of the plain file it was made from, and the filesystem may
    /// give that number to a newer file since (ext4 does at once; the tmpfs the tests run on
    /// does not): an older `.gz` naming the current file's inode is history to read, not the
    /// file the reader has open.
    #[tokio::test]
    async fn an_older_gz_naming_the_current_files_inode_is_still_read() {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        write_run(
            pod,
            0,
            &["new"],
            "2026-12-05T01:00:10Z",
            Rotation::default(),
        );
        std::fs::write(pod.join("containers/c/0").join(EXIT_FILE), "0").unwrap();
        let ino = std::fs::metadata(pod.join("logs/c/0.log")).unwrap().ino();
        let gz =
            std::fs::File::create(pod.join("logs/c/0.log.20261205-010000.000000000.gz")).unwrap();
        let mut enc = flate2::GzBuilder::new()
            .comment(format!("{}{ino}", crate::logfile::INO_COMMENT))
            .write(gz, flate2::Compression::default());
        enc.write_all(b"2026-12-05T01:00:00.000000000Z stdout F old\n")
            .unwrap();
        enc.finish().unwrap();
        assert_eq!(collect(pod, LogQuery::default()).await, "old\nnew\n");
    }

    #[tokio::test]
    async fn timestamps_since_tail_and_limit_apply_to_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        write_run(
            pod,
            0,
            &["one", "err-two", "three", "four"],
            "2026-12-05T01:00:00Z",
            Rotation::default(),
        );
        std::fs::write(pod.join("containers/c/0").join(EXIT_FILE), "0").unwrap();
        assert_eq!(
            collect(pod, LogQuery::default()).await,
            "one\nerr-two\nthree\nfour\n"
        );
        let q = LogQuery {
            timestamps: true,
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            collect(pod, q).await,
            "2026-12-05T01:00:02.000000000Z three\n2026-12-05T01:00:03.000000000Z four\n"
        );
        let q = LogQuery {
            since: Some(at("2026-12-05T01:00:01Z")),
            ..Default::default()
        };
        assert_eq!(collect(pod, q).await, "err-two\nthree\nfour\n");
        let q = LogQuery {
            since: Some(at("2026-12-05T01:00:01Z")),
            tail_lines: Some(1),
            limit_bytes: Some(3),
            ..Default::default()
        };
        assert_eq!(collect(pod, q).await, "fou");
        // Following an ended run gives what it wrote and ends.
        let q = LogQuery {
            follow: true,
            ..Default::default()
        };
        assert_eq!(collect(pod, q).await, "one\nerr-two\nthree\nfour\n");
        // A file written before this format is passed as it is.
        std::fs::write(pod.join("logs/c/0.log"), "raw line\n").unwrap();
        assert_eq!(collect(pod, LogQuery::default()).await, "raw line\n");
    }

    #[tokio::test]
    async fn a_log_is_read_across_its_rotated_files_and_previous_is_the_run_before() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        let rotation = Rotation::new(200, 4).unwrap();
        let first: Vec<String> = (0..30).map(|i| format!("first-{i:02}")).collect();
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        write_run(pod, 0, &first, "2026-12-05T01:00:00Z", rotation);
        std::fs::write(pod.join("containers/c/0").join(EXIT_FILE), "1").unwrap();
        write_run(pod, 1, &["second"], "2026-12-05T01:01:00Z", rotation);
        assert!(
            logfile::rotated(&pod.join("logs/c/0.log")).len() >= 2,
            "the first run's log was rotated"
        );
        let q = LogQuery {
            previous: true,
            ..Default::default()
        };
        let text = collect(pod, q).await;
        let lines: Vec<&str> = text.lines().collect();
        // 4 files of at most 200 bytes (about 4 entries each) keep the newest entries.
        assert_eq!(lines.last(), Some(&"first-29"), "{text}");
        let start = first.iter().position(|l| *l == lines[0]).unwrap();
        assert_eq!(lines, first[start..], "in order, none twice");
        assert!(start > 0, "the oldest entries were rotated away: {text}");
        assert!(lines.len() > 4, "more than one file's worth: {text}");
        assert_eq!(collect(pod, LogQuery::default()).await, "second\n");
        let none = open(pod, "p", "d", &LogQuery::default());
        assert_eq!(none.map_err(|e| e.code), Err(400));
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_a_rotation_and_ends_with_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        // Two entries a file; the ten lines below rotate it four times between two polls of
        // the follower, which reads the rotated files after the one it had open, in order.
        let rotation = Rotation::new(100, 20).unwrap();
        write_run(pod, 0, &["a"], "2026-12-05T01:00:00Z", rotation);
        let q = LogQuery {
            follow: true,
            ..Default::default()
        };
        let (file, run) = open(pod, "p", "c", &q).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::task::spawn_blocking(move || stream(file, run, q, tx));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a\n"[..]));
        let mut w = Writer::open(&pod.join("logs/c/0.log"), rotation).unwrap();
        let mut want = String::new();
        for i in 0..10 {
            let l = format!("line-{i}\n");
            w.write(Stream::Stdout, jiff::Timestamp::now(), l.as_bytes())
                .unwrap();
            want.push_str(&l);
        }
        assert!(logfile::rotated(&pod.join("logs/c/0.log")).len() >= 4);
        let mut got = String::new();
        while got.len() < want.len() {
            let b = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            got.push_str(std::str::from_utf8(&b).unwrap());
        }
        assert_eq!(got, want);
        std::fs::write(pod.join("containers/c/0").join(EXIT_FILE), "0").unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(end.unwrap(), None, "the stream ends with the run");
        task.await.unwrap();
    }
}
