//! Running the netfilter tools (`iptables-restore`, `ipset restore`, their `-save`/`list`
//! siblings): in a chosen namespace, with the input on stdin, bounded in time, and with the
//! tool's own stderr in the error — "ipset restore: Set cannot be destroyed: it is in use by a
//! kernel component" tells an operator what went wrong.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// How long one tool run may take. A restore of 10k rules takes about half a second here; a
/// tool stuck on the xtables lock (`--wait`) or a wedged kernel must not hang a daemon forever.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `program args` in the namespace at `netns` (None: the caller's), feeding `stdin` when
/// given, and returns its stdout. A non-zero exit is an error carrying the trimmed stderr; the
/// child is killed if it outlives [`TOOL_TIMEOUT`] or the future is dropped.
pub(crate) async fn run(
    netns: Option<&Path>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let what = format!("{program} {}", args.join(" "));
    let std_cmd = match netns {
        Some(path) => Netns::open(path)?.command(program)?,
        None => std::process::Command::new(program),
    };
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::os("run", &what, e))?;
    let pipe = child.stdin.take();
    let finish = async {
        if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| Error::os("write to", &what, e))?;
            // Dropping the pipe closes it: the tool sees the end of its input.
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| Error::os("wait for", &what, e))
    };
    // The bound covers the input too: a tool that stops reading must not block us on a full pipe.
    let out = tokio::time::timeout(TOOL_TIMEOUT, finish)
        .await
        .map_err(|_| {
            Error::invalid(
                "run",
                &what,
                format!("did not finish within {} s", TOOL_TIMEOUT.as_secs()),
            )
        })??;
    if !out.status.success() {
        return Err(Error::invalid(
            "run",
            &what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
