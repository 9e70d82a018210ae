//! `trellis container-attach`: the process behind `kubectl attach`, run by the kubelet for
//! each session and streamed like an exec's command ([`crate::exec::Target::Attach`]). The
//! container's output is its shim's to log, so attaching reads the run's log from its current
//! end on (across rotations) and writes each entry's content to stdout or stderr, as it was
//! written; stdin goes to the run's stdin FIFO, which the shim feeds to the container. It ends
//! when the run does (or the kubelet that started it goes).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logfile::{self, Follower, Stream};
use crate::shim::{EXIT_FILE, STDIN_FIFO};

/// What the helper is told (argv after `container-attach`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttachArgs {
    /// The run directory.
    pub dir: PathBuf,
    /// The run's log.
    pub log: PathBuf,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl AttachArgs {
    pub fn parse(args: &[OsString]) -> Result<AttachArgs, String> {
        let mut a = AttachArgs::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))
            };
            match flag.to_str() {
                Some("--dir") => a.dir = value()?,
                Some("--log") => a.log = value()?,
                Some("--stdin") => a.stdin = true,
                Some("--stdout") => a.stdout = true,
                Some("--stderr") => a.stderr = true,
                _ => return Err(format!("unknown flag {}", flag.to_string_lossy())),
            }
        }
        if a.dir.as_os_str().is_empty() || a.log.as_os_str().is_empty() {
            return Err(
                "usage: container-attach --dir RUN --log LOG [--stdin] [--stdout] [--stderr]"
                    .into(),
            );
        }
        Ok(a)
    }
}

/// The content of the whole log lines in `lines` for the streams asked for, in order.
pub fn contents(lines: &[u8], stdout: bool, stderr: bool) -> Vec<(Stream, Vec<u8>)> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(logfile::parse)
        .filter(|e| match e.stream {
            Stream::Stdout => stdout,
            Stream::Stderr => stderr,
        })
        .map(|e| {
            let mut c = e.content.to_vec();
            if !e.partial {
                c.push(b'\n');
            }
            (e.stream, c)
        })
        .collect()
}

/// Runs the helper; returns its exit code (0 once the run ended, as upstream's attach
/// reports success whatever the container's exit).
pub fn main(args: &[OsString]) -> i32 {
    let a = match AttachArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("container-attach: {e}");
            return 2;
        }
    };
    let mut follower = Follower::at_end(&a.log);
    if a.stdin {
        let fifo = a.dir.join(STDIN_FIFO);
        std::thread::spawn(move || forward_stdin(&fifo));
    }
    let parent = std::os::unix::process::parent_id();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    loop {
        let ended = a.dir.join(EXIT_FILE).exists() || !a.dir.exists();
        let mut lines = Vec::new();
        follower.poll(&mut lines);
        for (stream, content) in contents(&lines, a.stdout, a.stderr) {
            let w: &mut dyn Write = match stream {
                Stream::Stdout => &mut out,
                Stream::Stderr => &mut err,
            };
            if w.write_all(&content).and_then(|()| w.flush()).is_err() {
                // The kubelet's end is gone.
                return 0;
            }
        }
        if (ended && lines.is_empty()) || std::os::unix::process::parent_id() != parent {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies stdin to the container's stdin FIFO. The FIFO is opened without blocking, retried
/// for 2 s while the shim is between two readers; a container without stdin (no FIFO), or
/// whose `stdinOnce` stdin was used, gets nothing, and stdin is read to its end regardless so
/// the kubelet never blocks on it.
fn forward_stdin(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut sink: Option<std::fs::File> = None;
    for _ in 0..100 {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo);
        match opened {
            Ok(f) => {
                // Writes block again, as a pipe's do.
                if rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty()).is_ok() {
                    sink = Some(f);
                }
                break;
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => break,
        }
    }
    let mut stdin = std::io::stdin().lock();
    match sink {
        Some(mut f) => {
            let _ = std::io::copy(&mut stdin, &mut f);
        }
        None => {
            let _ = std::io::copy(&mut stdin, &mut std::io::sink());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_contents() {
        let a = AttachArgs::parse(&[
            "--dir".into(),
            "/r".into(),
            "--log".into(),
            "/r.log".into(),
            "--stdin".into(),
            "--stdout".into(),
        ])
        .unwrap();
        assert!(a.stdin && a.stdout && !a.stderr);
        assert!(AttachArgs::parse(&["--dir".into()]).is_err());
        let lines = b"2026-12-05T01:00:00.000000000Z stdout P $ \n\
            2026-12-05T01:00:00.000000000Z stderr F oops\n\
            2026-12-05T01:00:01.000000000Z stdout F hi\n";
        assert_eq!(
            contents(lines, true, false),
            vec![
                (Stream::Stdout, b"$ ".to_vec()),
                (Stream::Stdout, b"hi\n".to_vec())
            ]
        );
        assert_eq!(contents(lines, true, true).len(), 3);
    }

    /// Without the shim reading, a non-blocking open of the FIFO says ENXIO (what
    /// `forward_stdin` retries on) instead of blocking the helper.
    #[test]
    fn a_fifo_without_a_reader_refuses_a_non_blocking_writer() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(STDIN_FIFO);
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let e = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
            .unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NXIO.raw_os_error())
        );
    }
}
