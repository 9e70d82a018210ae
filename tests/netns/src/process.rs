//! Commands inside namespaces, each with a time limit, and background servers whose lifetime is
//! bounded even if the test process dies (they run under `timeout`).

use std::path::Path;
use std::time::Duration;

use trellis_net::Netns;

use crate::{Error, Result};

/// The environment variable that marks every process a testbed starts, so the leak check can
/// find survivors.
pub const TAG_VAR: &str = "TRELLIS_TESTBED";

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

fn describe(argv: &[&str], ns: &Netns) -> String {
    format!("`{}` in {}", argv.join(" "), ns.name())
}

/// Builds a command that runs `argv` inside `ns`, tagged with `tag`.
pub(crate) fn command(ns: &Netns, argv: &[&str], tag: &str) -> Result<tokio::process::Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Other("empty command".into()))?;
    let mut std_cmd = ns.command(program)?;
    std_cmd.args(args).env(TAG_VAR, tag);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    Ok(cmd)
}

/// Runs `argv` in `ns` and waits at most `limit`; a command still running then is killed.
pub async fn exec(ns: &Netns, argv: &[&str], limit: Duration, tag: &str) -> Result<Output> {
    exec_with_stdin(ns, argv, None, limit, tag).await
}

/// As [`exec`], feeding `stdin`.
pub async fn exec_with_stdin(
    ns: &Netns,
    argv: &[&str],
    stdin: Option<&[u8]>,
    limit: Duration,
    tag: &str,
) -> Result<Output> {
    use tokio::io::AsyncWriteExt;
    let what = describe(argv, ns);
    let mut cmd = command(ns, argv, tag)?;
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start {what}"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .map_err(|e| Error::io(format!("write stdin of {what}"), e))?;
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(e)) => Err(Error::io(format!("wait for {what}"), e)),
        // Dropping the future drops the child, and kill_on_drop kills it.
        Err(_) => Err(Error::Timeout {
            what,
            secs: limit.as_secs_f64(),
        }),
    }
}

/// Runs `argv` in `ns` and returns its stdout, or an error with its stderr.
pub async fn exec_ok(ns: &Netns, argv: &[&str], limit: Duration, tag: &str) -> Result<String> {
    let out = exec(ns, argv, limit, tag).await?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Failed {
            what: describe(argv, ns),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// A background process in its own process group, run under `timeout -s KILL` so it dies at the
/// end of its lifetime even if the test that started it is killed.
#[derive(Debug)]
pub struct Background {
    pub child: tokio::process::Child,
    pub pgid: i32,
    pub what: String,
}

impl Background {
    pub fn start(
        ns: &Netns,
        argv: &[&str],
        lifetime: Duration,
        tag: &str,
        log: Option<&Path>,
    ) -> Result<Background> {
        let secs = format!("{:.1}", lifetime.as_secs_f64().max(0.1));
        let mut full: Vec<&str> = vec!["timeout", "-s", "KILL", &secs];
        full.extend_from_slice(argv);
        let what = describe(argv, ns);
        let mut cmd = command(ns, &full, tag)?;
        cmd.process_group(0).stdin(std::process::Stdio::null());
        match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .map_err(|e| Error::io(format!("create log {}", path.display()), e))?;
                let f2 = f
                    .try_clone()
                    .map_err(|e| Error::io("duplicate log file", e))?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("start {what}"), e))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Other(format!("{what} exited at once")))?;
        let pgid =
            i32::try_from(pid).map_err(|_| Error::Other(format!("pid {pid} out of range")))?;
        Ok(Background { child, pgid, what })
    }

    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Kills the whole process group (timeout and the server) and reaps our child.
    pub fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // try_wait reaps our child (the `timeout` wrapper) without blocking.
        for _ in 0..200 {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // The rest of the group (the daemon under `timeout`) may still be exiting: wait, bounded,
        // until none is left, so a restarted daemon finds its ports and sockets free.
        for _ in 0..400 {
            let alive =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), None).is_ok();
            if !alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the process group (e.g. SIGTERM for a graceful stop).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), signal);
    }
}
