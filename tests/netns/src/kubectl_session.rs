//! Interactive kubectl sessions the kubelet tests share: `kubectl exec -i` fed a stdin to its
//! end, and kubectl under `script` (util-linux), which gives it a terminal of its own — of a
//! set size when asked — for `exec -it` and `attach -it`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Debian's kubernetes-client 1.20, unpacked (the oldest kubectl the kubelet serves).
pub const KUBECTL_1_20: &str = "/opt/trellis/kubectl-1.20/usr/bin/kubectl";

/// kubectl 1.20 ([`KUBECTL_1_20`]); the test fails without it.
pub fn kubectl_1_20() -> PathBuf {
    let bin = PathBuf::from(KUBECTL_1_20);
    assert!(
        bin.is_file(),
        "{KUBECTL_1_20} is missing (Debian's kubernetes-client 1.20, unpacked there)"
    );
    bin
}

/// The three ways kubectl streams a session: the image's kubectl (`new`) over a WebSocket
/// and over SPDY/3.1 (as it falls back when a WebSocket is refused), and kubectl 1.20 (`old`)
/// over SPDY/3.1; each with the environment that makes it so.
pub fn variants(new: &Path, old: &Path) -> [(PathBuf, Vec<(&'static str, &'static str)>); 3] {
    [
        (new.to_path_buf(), vec![]),
        (
            new.to_path_buf(),
            vec![("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
        ),
        (old.to_path_buf(), vec![]),
    ]
}

/// How long one session may take.
const SESSION: Duration = Duration::from_secs(30);

/// `kubectl exec -i <args>` (args: the pod, `--`, the command) with `env`, fed `input` then
/// its end; its output once it ended (≤30 s).
pub async fn exec_stdin(
    bin: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    input: &[u8],
) -> Output {
    let mut child = tokio::process::Command::new(bin)
        .envs(env.iter().copied())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["exec", "-i"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} did not start: {e}", bin.display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .await
            .unwrap_or_else(|e| panic!("kubectl exec -i {args:?}: writing its stdin: {e}"));
    }
    tokio::time::timeout(SESSION, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl exec -i {args:?} did not end once its stdin did"))
        .unwrap_or_else(|e| panic!("kubectl exec -i {args:?}: {e}"))
}

/// The shell line that runs `bin --kubeconfig <kc> <args>` (args quoted for `sh` already),
/// after setting the terminal's size to `size` (columns, rows) when given: kubectl sends it
/// as the session's first resize.
pub fn kubectl_line(bin: &Path, kubeconfig: &Path, args: &str, size: Option<(u16, u16)>) -> String {
    let stty = size
        .map(|(c, r)| format!("stty cols {c} rows {r} && "))
        .unwrap_or_default();
    format!(
        "{stty}exec {} --kubeconfig {} {args}",
        bin.display(),
        kubeconfig.display()
    )
}

/// Spawns `line` (a shell line) under `script`, on a terminal of its own, with `env`; its
/// stdio piped (what is written to its stdin is typed on the terminal). Killed on drop.
pub fn spawn_on_a_terminal(line: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    let script = crate::require_tool("script", "bsdutils (util-linux's script)");
    tokio::process::Command::new(&script)
        .envs(env.iter().copied())
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("script did not start: {e}"))
}

/// Runs `line` on a terminal ([`spawn_on_a_terminal`]) to its end (≤30 s), its stdin held
/// open meanwhile (script ends when its stdin does); its output.
pub async fn run_on_a_terminal(line: &str, env: &[(&str, &str)]) -> Output {
    let mut child = spawn_on_a_terminal(line, env);
    let held = child.stdin.take();
    let out = tokio::time::timeout(SESSION, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{line:?} did not end within {SESSION:?}"))
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    drop(held);
    out
}

/// `kubectl exec -it <args>` on a terminal of `size` (columns, rows) when given, with `env`;
/// its output once the command ended.
pub async fn exec_tty(
    bin: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    args: &str,
    size: Option<(u16, u16)>,
) -> Output {
    let line = kubectl_line(bin, kubeconfig, &format!("exec -it {args}"), size);
    run_on_a_terminal(&line, env).await
}

/// A shell command that prints `size=<rows> <columns>` of its terminal once that is
/// `columns`×`rows` (the size a resize message set), or as it is after 10 s. What it prints
/// differs from the command line itself (which a terminal echoes).
pub fn print_size_once(columns: u16, rows: u16) -> String {
    format!(
        r#"i=0; while [ "$(stty size)" != "{rows} {columns}" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; echo "size=$(stty size)""#
    )
}

/// `kubectl attach -it <pod>` on a terminal of `size` (columns, rows), with `env`: checks the
/// shell at the other end runs on a terminal (what is typed reaches it, its output comes
/// back) and that the size reached that terminal (the attach's first resize message). The
/// session, for the caller to end (`exit`, or killing kubectl to detach).
pub async fn attach_tty(
    bin: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    pod: &str,
    size: (u16, u16),
) -> tokio::process::Child {
    let what = format!("{} attach -it {pod} ({env:?})", bin.display());
    let line = kubectl_line(bin, kubeconfig, &format!("attach -it {pod}"), Some(size));
    let mut child = spawn_on_a_terminal(&line, env);
    let (Some(stdin), Some(stdout)) = (child.stdin.as_mut(), child.stdout.as_mut()) else {
        panic!("{what}: no stdio");
    };
    // Typed until the shell answers: what is typed before the stream is up may be lost, so
    // each try asks again.
    let mut ok = false;
    let mut seen = String::new();
    for _ in 0..15 {
        stdin
            .write_all(b"[ -t 0 ] && echo on-a-terminal-$((40+2))\n")
            .await
            .unwrap_or_else(|e| panic!("{what}: typing: {e}"));
        let mut buf = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if seen.contains("on-a-terminal-42") {
                            return true;
                        }
                    }
                }
            }
        })
        .await;
        match got {
            Ok(true) => {
                ok = true;
                break;
            }
            Ok(false) => break,
            Err(_) => {}
        }
    }
    assert!(
        ok,
        "{what}: the shell never answered on a terminal; got {seen:?}"
    );
    stdin
        .write_all(format!("{}\n", print_size_once(size.0, size.1)).as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{what}: typing: {e}"));
    read_until(
        stdout,
        &format!("size={} {}", size.1, size.0),
        &format!("{what}: the terminal's size"),
    )
    .await;
    child
}

/// Reads `from` (≤30 s) until `want` was seen; everything read. Panics naming `what`
/// otherwise.
pub async fn read_until(from: &mut (impl AsyncRead + Unpin), want: &str, what: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(want) {
                return true;
            }
        }
    };
    let ok = tokio::time::timeout(SESSION, read).await.unwrap_or(false);
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(ok, "{what}: {want:?} not seen; got {text:?}");
    text
}
