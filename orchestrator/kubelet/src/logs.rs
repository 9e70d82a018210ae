//! Container logs as the kubelet serves them at `/containerLogs/{ns}/{pod}/{container}`: the
//! current run's output, or the previous run's (`previous`), its last lines (`tailLines`), cut
//! at `limitBytes`, and followed (`follow`) until the run ends. A run's log is
//! `<pod dir>/logs/<container>/<attempt>.log`, the attempt being its restartCount, so the
//! previous run's is the one before.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::shim::EXIT_FILE;

/// The query of a log request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
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
    /// Parses the query parameters kubectl sends. Timestamps and `since` need per-line times,
    /// which the process runtime does not record: asking for them is refused plainly rather
    /// than answered wrongly.
    pub fn parse(pairs: &[(String, String)]) -> Result<LogQuery, LogError> {
        let mut q = LogQuery::default();
        for (k, v) in pairs {
            let number = || {
                v.parse::<u64>()
                    .map_err(|_| bad(400, format!("{k}: {v:?} is not a non-negative integer")))
            };
            match k.as_str() {
                "follow" => q.follow = truthy(v),
                "previous" => q.previous = truthy(v),
                "tailLines" => q.tail_lines = Some(number()?),
                "limitBytes" => q.limit_bytes = Some(number()?),
                "timestamps" if truthy(v) => {
                    return Err(bad(
                        400,
                        "timestamps are not recorded by this kubelet's process runtime".into(),
                    ));
                }
                "sinceSeconds" | "sinceTime" => {
                    return Err(bad(
                        400,
                        format!(
                            "{k}: line times are not recorded by this kubelet's process runtime"
                        ),
                    ));
                }
                _ => {}
            }
        }
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

/// The last `n` lines of `text` (a final line without newline counts as one).
pub fn tail(text: &[u8], n: u64) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
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

/// Sends `chunk`, cut to what `budget` (limitBytes) leaves; false once the reader is gone.
async fn send(tx: &mpsc::Sender<Bytes>, mut chunk: Vec<u8>, budget: &mut u64) -> bool {
    if chunk.len() as u64 > *budget {
        chunk.truncate(usize::try_from(*budget).unwrap_or(usize::MAX));
    }
    *budget -= chunk.len() as u64;
    chunk.is_empty() || tx.send(Bytes::from(chunk)).await.is_ok()
}

/// Streams a log into `tx`: what is there (tail and limit applied), then, when following, what
/// is appended until the run ends, the limit is reached, or the reader goes.
pub async fn stream(file: PathBuf, run: PathBuf, q: LogQuery, tx: mpsc::Sender<Bytes>) {
    let mut budget = q.limit_bytes.unwrap_or(u64::MAX);
    let mut f = std::fs::File::open(&file).ok();
    let mut offset = 0u64;
    if let Some(f) = f.as_mut() {
        let mut all = Vec::new();
        if f.read_to_end(&mut all).is_err() {
            return;
        }
        offset = all.len() as u64;
        let start = match q.tail_lines {
            Some(n) => all.len() - tail(&all, n).len(),
            None => 0,
        };
        if !send(&tx, all.split_off(start), &mut budget).await {
            return;
        }
    }
    if !q.follow || q.previous {
        return;
    }
    // Follow: poll for growth; end once the run has ended and everything it wrote is sent.
    let mut idle = tokio::time::interval(Duration::from_millis(100));
    loop {
        if budget == 0 || tx.is_closed() {
            return;
        }
        let ended = run.join(EXIT_FILE).exists() || !run.exists();
        if f.is_none() {
            f = std::fs::File::open(&file).ok();
        }
        let mut grown = Vec::new();
        if let Some(f) = f.as_mut()
            && f.seek(SeekFrom::Start(offset)).is_ok()
            && f.read_to_end(&mut grown).is_ok()
        {
            offset += grown.len() as u64;
        }
        let had = !grown.is_empty();
        if had && !send(&tx, grown, &mut budget).await {
            return;
        }
        if ended && !had {
            return;
        }
        idle.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail(b"a\nb\nc\n", 1), b"c\n");
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\nc\n", 10), b"a\nb\nc\n");
        assert_eq!(tail(b"a\n", 0), b"");
    }

    #[test]
    fn the_query_kubectl_sends_is_understood() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let q = LogQuery::parse(&pairs(&[
            ("follow", "true"),
            ("tailLines", "5"),
            ("limitBytes", "10"),
        ]));
        assert_eq!(
            q,
            Ok(LogQuery {
                follow: true,
                previous: false,
                tail_lines: Some(5),
                limit_bytes: Some(10)
            })
        );
        assert_eq!(
            LogQuery::parse(&pairs(&[("tailLines", "-1")])).map_err(|e| e.code),
            Err(400)
        );
        assert!(LogQuery::parse(&pairs(&[("timestamps", "false")])).is_ok());
    }

    #[tokio::test]
    async fn previous_is_the_run_before_and_follow_ends_with_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        for a in [0, 1] {
            std::fs::create_dir_all(pod.join(format!("containers/c/{a}"))).unwrap();
        }
        std::fs::create_dir_all(pod.join("logs/c")).unwrap();
        std::fs::write(pod.join("logs/c/0.log"), "first\n").unwrap();
        std::fs::write(pod.join("logs/c/1.log"), "second\n").unwrap();
        let q = LogQuery {
            previous: true,
            ..Default::default()
        };
        let (file, run) = open(pod, "p", "c", &q).unwrap();
        assert!(file.ends_with("logs/c/0.log"));
        let (tx, mut rx) = mpsc::channel(4);
        stream(file, run, q, tx).await;
        assert_eq!(rx.recv().await.as_deref(), Some(&b"first\n"[..]));

        let q = LogQuery {
            follow: true,
            ..Default::default()
        };
        let (file, run) = open(pod, "p", "c", &q).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(stream(file.clone(), run.clone(), q, tx));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"second\n"[..]));
        std::fs::write(&file, "second\nthird\n").unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some(&b"third\n"[..]));
        std::fs::write(run.join(EXIT_FILE), "0").unwrap();
        assert_eq!(rx.recv().await, None, "the stream ends with the run");
        task.await.unwrap();
        let none = open(pod, "p", "d", &LogQuery::default());
        assert_eq!(none.map_err(|e| e.code), Err(400));
    }
}
