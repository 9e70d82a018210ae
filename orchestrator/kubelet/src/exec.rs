//! `kubectl exec` on the kubelet: `/exec/{ns}/{pod}/{container}` over a WebSocket with the
//! `v5.channel.k8s.io` (or `v4`) protocol. Each binary message is a channel byte and data:
//! 0 stdin, 1 stdout, 2 stderr, 3 the final status (a JSON `metav1.Status`), 4 resize, and in
//! v5 255 to half-close a channel (`[255, 0]` ends stdin).
//!
//! Over SPDY/3.1 (kubectl ≤1.29, and ≥1.30 when the WebSocket is refused), [`run_spdy`]
//! serves `v4.channel.k8s.io` down to `channel.k8s.io` on one stream per channel.
//!
//! `kubectl attach` (`/attach/{ns}/{pod}/{container}`) is served by the same code with a
//! different process behind the streams: [`Target::Attach`] runs `trellis container-attach`
//! on the container's run instead of a command.
//!
//! With the process runtime the command runs in the container's namespaces (network, mount,
//! UTS, as the shim made them) through `nsenter -t <container pid>`, with the container's
//! environment; a `tty` request gets a pseudo-terminal (`setsid -c`; resizes on channel 4 or
//! the resize stream). With containerd it is an exec process of the container's task
//! ([`crate::containerd::exec`]): in its cgroup and PID namespace, with its process spec.

use std::process::Stdio;

use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The protocols served, most preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What an exec request asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "TRUE")
}

impl ExecRequest {
    /// The kubelet's parameters (`command` repeated, `input`, `output`, `error`, `tty`), or
    /// the API's names (`stdin`, `stdout`, `stderr`).
    pub fn parse(pairs: &[(String, String)]) -> Result<ExecRequest, String> {
        Self::parse_for(pairs, false)
    }

    /// An attach request: the same streams, no command.
    pub fn parse_attach(pairs: &[(String, String)]) -> Result<ExecRequest, String> {
        Self::parse_for(pairs, true)
    }

    fn parse_for(pairs: &[(String, String)], attach: bool) -> Result<ExecRequest, String> {
        let mut r = ExecRequest::default();
        for (k, v) in pairs {
            match k.as_str() {
                "command" => r.command.push(v.clone()),
                "input" | "stdin" => r.stdin = truthy(v),
                "output" | "stdout" => r.stdout = truthy(v),
                "error" | "stderr" => r.stderr = truthy(v),
                "tty" => r.tty = truthy(v),
                _ => {}
            }
        }
        if r.command.is_empty() && !attach {
            return Err("you must specify at least one command for the container".into());
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(r)
    }
}

/// The subprotocol to answer with: the first the client offers that is served.
pub fn choose_protocol(offered: &str) -> Option<&'static str> {
    offered
        .split(',')
        .map(str::trim)
        .find_map(|p| PROTOCOLS.iter().find(|s| **s == p).copied())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Messages larger than this end the connection.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Writes one unmasked frame (server to client).
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, op: u8, data: &[u8]) -> std::io::Result<()> {
    let mut head = vec![0x80 | op];
    match data.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xFFFF => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(data).await?;
    w.flush().await
}

/// Reads one message (control frames come back on their own); None at the end.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut message: Option<(u8, Vec<u8>)> = None;
    loop {
        let mut h = [0u8; 2];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (fin, op) = (h[0] & 0x80 != 0, h[0] & 0x0F);
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7F {
            126 => u64::from(r.read_u16().await?),
            127 => r.read_u64().await?,
            n => u64::from(n),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_MESSAGE)
            .ok_or_else(|| std::io::Error::other("a WebSocket frame too large"))?;
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut data = vec![0u8; len];
        r.read_exact(&mut data).await?;
        if masked {
            for (i, b) in data.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if op >= 0x8 {
            return Ok(Some((op, data)));
        }
        match (&mut message, op) {
            (None, OP_TEXT | OP_BINARY) => message = Some((op, data)),
            (Some((_, m)), OP_CONT) => {
                m.extend_from_slice(&data);
                if m.len() > MAX_MESSAGE {
                    return Err(std::io::Error::other("a WebSocket message too large"));
                }
            }
            _ => return Err(std::io::Error::other("an unexpected WebSocket frame")),
        }
        if fin {
            return Ok(message);
        }
    }
}

/// A byte stream carried in binary WebSocket messages over `io`: kubectl ≥1.31's
/// port-forward tunnel, SPDY inside (`SPDY/3.1+portforward.k8s.io`). Pings are answered;
/// the close frame ends the stream, and its end sends one.
pub fn tunnel<IO>(io: IO) -> tokio::io::DuplexStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(io);
    let (mut far_rd, mut far_wr) = tokio::io::split(far);
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(32);
    tokio::spawn(async move {
        while let Some((op, data)) = rx.recv().await {
            if write_frame(&mut wr, op, &data).await.is_err() || op == OP_CLOSE {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let out = tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match far_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send((OP_BINARY, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send((OP_CLOSE, vec![0x03, 0xE8])).await;
    });
    tokio::spawn(async move {
        loop {
            match read_message(&mut rd).await {
                Ok(Some((OP_BINARY, m))) => {
                    if far_wr.write_all(&m).await.is_err() {
                        break;
                    }
                }
                Ok(Some((OP_PING, data))) => {
                    let _ = tx.send((OP_PONG, data)).await;
                }
                Ok(Some((OP_CLOSE, _))) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
        let _ = far_wr.shutdown().await;
    });
    near
}

/// The live main process of container `name`'s newest run in a pod directory.
pub fn container_pid(pod_dir: &std::path::Path, name: &str) -> Option<i32> {
    let dir = pod_dir.join("containers").join(name);
    let attempt = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()?;
    let pid: i32 =
        std::fs::read_to_string(dir.join(attempt.to_string()).join(crate::shim::PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
    (pid > 1 && crate::runtime::alive(pid)).then_some(pid)
}

/// What a session on container `name` runs: for exec, a command beside its live main
/// process, or, for a containerd run when `containerd` (the socket and namespace) is given, an
/// exec process of its task; for attach, the helper `trellis container-attach` (`helper`) on
/// its newest run's directory and log. None when the container does not run.
pub fn target(
    pod_dir: &std::path::Path,
    name: &str,
    attach: bool,
    helper: &std::path::Path,
    containerd: Option<(&std::path::Path, &str)>,
) -> Option<Target> {
    let pid = container_pid(pod_dir, name)?;
    let attempt = std::fs::read_dir(pod_dir.join("containers").join(name))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()?;
    let run = pod_dir
        .join("containers")
        .join(name)
        .join(attempt.to_string());
    let id = std::fs::read(run.join(crate::containerd::runtime::RUN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["id"].as_str().map(String::from));
    if !attach {
        return Some(match (id, containerd) {
            (Some(id), Some((address, namespace))) => Target::Containerd {
                address: address.to_path_buf(),
                namespace: namespace.to_string(),
                id,
                fifos: pod_dir.join("exec"),
            },
            _ => Target::Exec { pid },
        });
    }
    Some(Target::Attach {
        helper: helper.to_path_buf(),
        task: id
            .zip(containerd)
            .map(|(id, (address, namespace))| AttachedTask {
                address: address.to_path_buf(),
                namespace: namespace.to_string(),
                id,
            }),
        run,
        log: pod_dir
            .join("logs")
            .join(name)
            .join(format!("{attempt}.log")),
    })
}

/// The environment of process `pid` (the container's), as `/proc/<pid>/environ` holds it.
fn environ(pid: i32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The status sent on channel 3 when the command ends.
pub fn status(command: &[String], code: Option<i32>) -> serde_json::Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {c}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}}),
        None => json!({"metadata": {}, "status": "Failure",
            "message": format!("error executing command [{}]: killed", command.join(" ")),
            "reason": "InternalError"}),
    }
}

/// Copies a child's output to channel `ch`.
async fn pump(mut from: impl AsyncRead + Unpin, ch: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut m = Vec::with_capacity(n + 1);
                m.push(ch);
                m.extend_from_slice(&buf[..n]);
                if tx.send((OP_BINARY, m)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `req`'s command in the namespaces of process `pid`, with its environment.
fn command(pid: i32, req: &ExecRequest) -> tokio::process::Command {
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let pid_s = pid.to_string();
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.args(["-t", &pid_s, "-n", "-m", "-u", "-w", "--"])
        .args(&req.command)
        .env_clear()
        .envs(environ(pid))
        .stdin(pipe(req.stdin))
        .stdout(pipe(req.stdout))
        .stderr(pipe(req.stderr && !req.tty))
        .kill_on_drop(true);
    cmd
}

/// A pseudo-terminal for a `tty` exec: the master side, and the slave the command gets as
/// stdin, stdout and stderr.
pub(crate) struct Pty {
    pub(crate) master: std::fs::File,
    pub(crate) slave: std::fs::File,
}

pub(crate) fn open_pty() -> std::io::Result<Pty> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        // Never the kubelet's own controlling terminal.
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(std::path::Path::new(std::ffi::OsStr::from_bytes(
            name.as_bytes(),
        )))?;
    Ok(Pty {
        master: std::fs::File::from(master),
        slave,
    })
}

/// The (columns, rows) of a resize message, `{"Width":w,"Height":h}`.
fn parse_size(message: &[u8]) -> Option<(u16, u16)> {
    let v = serde_json::from_slice::<serde_json::Value>(message).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// Sets the terminal's size from a resize message, `{"Width":w,"Height":h}`.
pub(crate) fn resize(master: &std::fs::File, message: &[u8]) {
    if let Some((w, h)) = parse_size(message) {
        let _ = rustix::termios::tcsetwinsize(
            master,
            rustix::termios::Winsize {
                ws_row: h,
                ws_col: w,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        );
    }
}

/// `req`'s command on terminal `slave`: `setsid -c` makes it a session leader whose
/// controlling terminal is the slave (stdin), then `nsenter` enters the namespaces.
fn tty_command(
    pid: i32,
    req: &ExecRequest,
    slave: &std::fs::File,
) -> std::io::Result<tokio::process::Command> {
    let pid_s = pid.to_string();
    let mut env = environ(pid);
    if !env.iter().any(|(k, _)| k == "TERM") {
        // As container runtimes do for a tty.
        env.push(("TERM".into(), "xterm".into()));
    }
    let mut cmd = tokio::process::Command::new("setsid");
    cmd.args(["-c", "nsenter", "-t", &pid_s, "-n", "-m", "-u", "-w", "--"])
        .args(&req.command)
        .env_clear()
        .envs(env)
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave.try_clone()?)
        .kill_on_drop(true);
    Ok(cmd)
}

/// What a streamed session runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// `exec`: a command in the namespaces of the container's main process.
    Exec { pid: i32 },
    /// `exec` into a containerd container: an exec process of task `id`, through the
    /// containerd at `address` in `namespace`, its FIFOs under `fifos`.
    Containerd {
        address: std::path::PathBuf,
        namespace: String,
        id: String,
        fifos: std::path::PathBuf,
    },
    /// `attach`: `trellis container-attach` ([`crate::attach`]), which passes on what the
    /// container's run writes to its log from now on and feeds its stdin FIFO, until the run
    /// ends. The terminal (`tty: true`) is the container's own, made by its shim; resizes go
    /// to the shim's FIFO, or for a containerd task (`task`) through ResizePty.
    Attach {
        helper: std::path::PathBuf,
        task: Option<AttachedTask>,
        run: std::path::PathBuf,
        log: std::path::PathBuf,
    },
}

/// The containerd task of an attached container: where its terminal's size is set.
#[derive(Debug, Clone)]
pub struct AttachedTask {
    pub address: std::path::PathBuf,
    pub namespace: String,
    pub id: String,
}

impl AttachedTask {
    /// Sets the task's terminal size (ResizePty) for each size sent, in order, until the
    /// sender goes.
    fn sizer(&self) -> Sizer {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u16, u16)>();
        let task = self.clone();
        tokio::spawn(async move {
            let conn = match crate::containerd::Conn::connect(&task.address, &task.namespace).await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(container = %task.id, error = %e, "attach: cannot reach containerd to resize the terminal");
                    return;
                }
            };
            while let Some((w, h)) = rx.recv().await {
                if let Err(e) = crate::containerd::exec::resize_task(&conn, &task.id, w, h).await {
                    tracing::debug!(container = %task.id, error = %e, "attach: resizing the terminal");
                }
            }
        });
        Sizer::Containerd(tx)
    }
}

impl Target {
    /// The FIFO that sets an attached container's terminal size.
    fn resize_fifo(&self) -> Option<std::path::PathBuf> {
        match self {
            Target::Exec { .. } | Target::Containerd { .. } => None,
            Target::Attach {
                run, task: None, ..
            } => Some(run.join(crate::shim::RESIZE_FIFO)).filter(|p| p.exists()),
            Target::Attach { task: Some(_), .. } => None,
        }
    }
}

/// Where resize messages go: an exec's own terminal, an attached container's shim, or a
/// containerd exec's ResizePty.
enum Sizer {
    Pty(std::fs::File),
    Fifo(std::path::PathBuf),
    Containerd(mpsc::UnboundedSender<(u16, u16)>),
}

impl Sizer {
    fn apply(&self, message: &[u8]) {
        match self {
            Sizer::Pty(m) => resize(m, message),
            Sizer::Containerd(tx) => {
                if let Some(size) = parse_size(message) {
                    let _ = tx.send(size);
                }
            }
            Sizer::Fifo(p) => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // Never blocks: without the shim reading, the size is dropped.
                let opened = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(p);
                if let Ok(mut f) = opened {
                    let mut line = message.to_vec();
                    line.push(b'\n');
                    let _ = f.write_all(&line);
                }
            }
        }
    }
}

/// Starts a session's process, and for an exec with a tty the terminal's master: the
/// command with a terminal, or with pipes; for attach, the helper with pipes.
fn spawn(
    target: &Target,
    req: &ExecRequest,
) -> (
    std::io::Result<tokio::process::Child>,
    Option<std::fs::File>,
) {
    match target {
        Target::Attach {
            helper, run, log, ..
        } => {
            let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            let mut cmd = tokio::process::Command::new(helper);
            cmd.arg("container-attach")
                .arg("--dir")
                .arg(run)
                .arg("--log")
                .arg(log);
            for (on, flag) in [
                (req.stdin, "--stdin"),
                (req.stdout, "--stdout"),
                (req.stderr && !req.tty, "--stderr"),
            ] {
                if on {
                    cmd.arg(flag);
                }
            }
            cmd.stdin(pipe(req.stdin))
                .stdout(pipe(req.stdout))
                .stderr(pipe(req.stderr && !req.tty))
                .kill_on_drop(true);
            (cmd.spawn(), None)
        }
        Target::Exec { pid } if !req.tty => (command(*pid, req).spawn(), None),
        Target::Exec { pid } => match open_pty() {
            Ok(p) => (
                tty_command(*pid, req, &p.slave).and_then(|mut c| c.spawn()),
                Some(p.master),
            ),
            Err(e) => (
                Err(std::io::Error::new(e.kind(), format!("a terminal: {e}"))),
                None,
            ),
        },
        Target::Containerd { .. } => (
            Err(std::io::Error::other(
                "a containerd exec is no child process",
            )),
            None,
        ),
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A started session: its streams (taken by the pumps), where resizes go, and its process.
struct Session {
    stdin: Option<Writer>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    sizer: Option<Sizer>,
    /// With a terminal the output's end may never come (a background process holding it).
    tty: bool,
    process: Process,
}

/// What runs a session.
enum Process {
    /// nsenter or the attach helper.
    Child(tokio::process::Child),
    /// An exec process of a containerd task.
    Containerd(Box<crate::containerd::exec::Session>),
}

impl Process {
    /// The exit code (128 + the signal when killed); None when it is unknown.
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Process::Child(c) => c.wait().await.ok().and_then(exit_code),
            Process::Containerd(s) => match s.wait().await {
                Ok(code) => Some(code),
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for a containerd exec");
                    None
                }
            },
        }
    }

    /// The client went: the command goes too.
    async fn kill(&mut self) {
        match self {
            Process::Child(c) => {
                let _ = c.kill().await;
            }
            Process::Containerd(s) => s.kill().await,
        }
    }

    /// After the end: a containerd exec process is deleted, with its FIFOs.
    async fn finish(self) {
        if let Process::Containerd(s) = self {
            s.delete().await;
        }
    }
}

/// Starts the session of `req` on `target`; the message of the failure otherwise.
async fn open(target: &Target, req: &ExecRequest) -> Result<Session, String> {
    if let Target::Containerd {
        address,
        namespace,
        id,
        fifos,
    } = target
    {
        let conn = crate::containerd::Conn::connect(address, namespace)
            .await
            .map_err(|e| format!("cannot exec {:?} in container {id}: {e}", req.command))?;
        let creq = crate::containerd::exec::Request {
            command: req.command.clone(),
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
        };
        let mut s = crate::containerd::exec::Session::start(conn, id, fifos, &creq)
            .await
            .map_err(|e| format!("cannot exec {:?} in container {id}: {e}", req.command))?;
        return Ok(Session {
            stdin: s.stdin.take().map(|w| Box::new(w) as Writer),
            stdout: s.stdout.take().map(|r| Box::new(r) as Reader),
            stderr: s.stderr.take().map(|r| Box::new(r) as Reader),
            sizer: s.resize.take().map(Sizer::Containerd),
            tty: req.tty,
            process: Process::Containerd(Box::new(s)),
        });
    }
    let (spawned, master) = spawn(target, req);
    let mut child =
        spawned.map_err(|e| format!("cannot start nsenter for {:?}: {e}", req.command))?;
    let mut session = Session {
        stdin: child.stdin.take().map(|w| Box::new(w) as Writer),
        stdout: child.stdout.take().map(|r| Box::new(r) as Reader),
        stderr: child.stderr.take().map(|r| Box::new(r) as Reader),
        sizer: match target {
            Target::Attach { task: Some(t), .. } if req.tty => Some(t.sizer()),
            _ => target.resize_fifo().map(Sizer::Fifo),
        },
        tty: master.is_some(),
        process: Process::Child(child),
    };
    if let Some(m) = &master {
        // The terminal: output from its master, stdin to it, resizes on it.
        session.stdout = m
            .try_clone()
            .ok()
            .map(|r| Box::new(tokio::fs::File::from_std(r)) as Reader);
        if req.stdin {
            session.stdin = m
                .try_clone()
                .ok()
                .map(|w| Box::new(tokio::fs::File::from_std(w)) as Writer);
        }
        session.sizer = m.try_clone().ok().map(Sizer::Pty);
    }
    Ok(session)
}

/// The exit code of a finished child (128 + the signal when killed).
fn exit_code(st: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    st.code().or_else(|| st.signal().map(|x| 128 + x))
}

/// Runs `req` in the namespaces of process `pid` and streams it over the upgraded `io`.
pub async fn run<IO>(io: IO, target: Target, req: ExecRequest)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(32);
    let writer = tokio::spawn(async move {
        while let Some((op, data)) = rx.recv().await {
            if write_frame(&mut wr, op, &data).await.is_err() || op == OP_CLOSE {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // With a tty the command gets a terminal (stdout and stderr are one stream, channel 1);
    // resize messages set its size.
    let mut session = match open(&target, &req).await {
        Ok(s) => s,
        Err(message) => {
            let st = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": message});
            let mut m = vec![3u8];
            m.extend_from_slice(st.to_string().as_bytes());
            let _ = tx.send((OP_BINARY, m)).await;
            let _ = tx.send((OP_CLOSE, vec![0x03, 0xE8])).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = session.stdout.take() {
        pumps.push(tokio::spawn(pump(out, 1, tx.clone())));
    }
    if let Some(err) = session.stderr.take() {
        pumps.push(tokio::spawn(pump(err, 2, tx.clone())));
    }
    let mut stdin = session.stdin.take();
    let sizer = session.sizer.take();
    let tty = session.tty;
    let mut process = session.process;
    let control = tx.clone();
    // The client's messages: stdin data, its half-close, pings, the close.
    let reader = tokio::spawn(async move {
        loop {
            match read_message(&mut rd).await {
                Ok(Some((OP_BINARY | OP_TEXT, m))) => match m.split_first() {
                    Some((0, data)) => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(data).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some((255, [0, ..])) => stdin = None,
                    Some((4, size)) => {
                        if let Some(m) = &sizer {
                            m.apply(size);
                        }
                    }
                    _ => {}
                },
                Ok(Some((OP_PING, data))) => {
                    let _ = control.send((OP_PONG, data)).await;
                }
                Ok(Some((OP_CLOSE, _))) | Ok(None) | Err(_) => return false,
                Ok(Some(_)) => {}
            }
        }
    });
    let reader_abort = reader.abort_handle();
    let code = tokio::select! {
        code = process.wait() => code,
        _ = reader => {
            // The client went: the command goes too.
            process.kill().await;
            None
        }
    };
    for p in pumps {
        // A terminal's reader ends when the last holder of the slave closes it; one left
        // open by a background process must not hold the exec.
        let limit = if tty { 2 } else { 3600 };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(limit), p).await;
    }
    reader_abort.abort();
    process.finish().await;
    let mut m = vec![3u8];
    m.extend_from_slice(status(&req.command, code).to_string().as_bytes());
    let _ = tx.send((OP_BINARY, m)).await;
    let _ = tx.send((OP_CLOSE, vec![0x03, 0xE8])).await;
    drop(tx);
    let _ = writer.await;
}

/// The exec protocols served over SPDY/3.1 (`X-Stream-Protocol-Version`): v4 reports the exit
/// status as a JSON `Status`; v1–v3 (kubectl before 1.5) only a failure's message, as text.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The first of the client's `X-Stream-Protocol-Version`s (each header may list several) that
/// `served` holds, as upstream's `httpstream.Handshake` picks.
pub fn choose_spdy_protocol<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    served: &[&'static str],
) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find_map(|p| served.iter().find(|s| **s == p).copied())
}

/// Copies a child's output to SPDY stream `id`.
async fn pump_spdy(mut from: impl AsyncRead + Unpin, id: u32, out: crate::spdy_conn::Sender) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !out.data(id, &buf[..n]).await {
                    return;
                }
            }
        }
    }
}

/// Runs `req` in the namespaces of process `pid` over an upgraded SPDY/3.1 connection: the
/// client opens an `error` stream and one per requested stdio (`streamType` header; `resize`
/// with a tty), within 30 s as upstream allows; stdout and stderr are sent as they come, stdin's
/// FIN closes the command's stdin, and the exit status ends on the error stream before every
/// stream is half-closed and the connection goes away.
pub async fn run_spdy<IO>(io: IO, target: Target, req: ExecRequest, protocol: &'static str)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    use crate::spdy_conn::Stream;
    let mut conn = crate::spdy_conn::serve(io);
    let resize_stream = req.tty && !matches!(protocol, "channel.k8s.io" | "v2.channel.k8s.io");
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) =
        (None::<Stream>, None::<Stream>, None, None, None);
    let complete = |e: &Option<Stream>,
                    i: &Option<Stream>,
                    o: &Option<Stream>,
                    r: &Option<Stream>,
                    z: &Option<Stream>| {
        e.is_some()
            && i.is_some() == req.stdin
            && o.is_some() == req.stdout
            && r.is_some() == (req.stderr && !req.tty)
            && (z.is_some() || !resize_stream)
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = 0;
    while !complete(&error, &stdin, &stdout, &stderr, &resize) {
        let s = match tokio::time::timeout_at(deadline, conn.streams.recv()).await {
            Ok(Some(s)) => s,
            // The client went, or did not open its streams in time.
            _ => {
                conn.finish(last, std::time::Duration::from_secs(1)).await;
                return;
            }
        };
        last = last.max(s.id);
        let slot = match s.header("streamType") {
            Some("error") => &mut error,
            Some("stdin") => &mut stdin,
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            Some("resize") => &mut resize,
            _ => {
                conn.out.reset(s.id, crate::spdy::rst::PROTOCOL_ERROR).await;
                continue;
            }
        };
        *slot = Some(s);
    }
    let Some(error) = error else { return };
    let out = conn.out.clone();
    let report = |code: Option<i32>, message: Option<String>| {
        let st = match message {
            Some(m) => {
                json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": m})
            }
            None => status(&req.command, code),
        };
        if protocol == "v4.channel.k8s.io" {
            Some(st.to_string())
        } else if st["status"] == "Success" {
            None
        } else {
            st["message"].as_str().map(String::from)
        }
    };
    let ids: Vec<u32> = [&stdin, &stdout, &stderr]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| s.id))
        .collect();
    // With a tty, a terminal as over the WebSocket: its output on the stdout stream, resize
    // messages (JSON objects, one after another) set its size.
    let result = match open(&target, &req).await {
        Err(message) => report(None, Some(message)),
        Ok(mut session) => {
            let mut pumps = Vec::new();
            if let (Some(o), Some(s)) = (session.stdout.take(), &stdout) {
                pumps.push(tokio::spawn(pump_spdy(o, s.id, out.clone())));
            }
            if let (Some(e), Some(s)) = (session.stderr.take(), &stderr) {
                pumps.push(tokio::spawn(pump_spdy(e, s.id, out.clone())));
            }
            let mut to = session.stdin.take();
            let sizer = session.sizer.take();
            let tty = session.tty;
            let mut process = session.process;
            let feeder = stdin.take().map(|mut s| {
                tokio::spawn(async move {
                    while let Some(data) = s.data.recv().await {
                        if let Some(w) = to.as_mut()
                            && w.write_all(&data).await.is_err()
                        {
                            to = None;
                        }
                    }
                })
            });
            let drain = resize.take().map(|mut s| {
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while let Some(data) = s.data.recv().await {
                        pending.extend_from_slice(&data);
                        // Each whole JSON object is one resize.
                        let mut it = serde_json::Deserializer::from_slice(&pending)
                            .into_iter::<serde_json::Value>();
                        let mut used = 0;
                        while let Some(Ok(v)) = it.next() {
                            used = it.byte_offset();
                            if let Some(m) = &sizer {
                                m.apply(v.to_string().as_bytes());
                            }
                        }
                        pending.drain(..used);
                    }
                })
            });
            let mut gone = conn.gone.clone();
            let code = tokio::select! {
                code = process.wait() => code,
                _ = async { drop(gone.wait_for(|g| *g).await) } => {
                    // The client went: the command goes too.
                    process.kill().await;
                    None
                }
            };
            for p in pumps {
                let limit = if tty { 2 } else { 3600 };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(limit), p).await;
            }
            for t in feeder.into_iter().chain(drain) {
                t.abort();
            }
            process.finish().await;
            report(code, None)
        }
    };
    if let Some(text) = result {
        out.data(error.id, text.as_bytes()).await;
    }
    out.fin(error.id).await;
    for id in ids {
        out.fin(id).await;
    }
    conn.finish(last, std::time::Duration::from_secs(5)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn v5_is_preferred_and_unknown_protocols_are_not_served() {
        assert_eq!(
            choose_protocol("v5.channel.k8s.io, v4.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            choose_protocol("channel.k8s.io,v4.channel.k8s.io"),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(choose_protocol("base64.channel.k8s.io"), None);
    }

    #[test]
    fn spdy_takes_the_clients_first_served_version() {
        // kubectl 1.20 sends one header per version, newest first.
        assert_eq!(
            choose_spdy_protocol(
                ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"],
                SPDY_PROTOCOLS
            ),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            choose_spdy_protocol(["v9.channel.k8s.io, channel.k8s.io"], SPDY_PROTOCOLS),
            Some("channel.k8s.io")
        );
        assert_eq!(
            choose_spdy_protocol(["v5.channel.k8s.io"], SPDY_PROTOCOLS),
            None
        );
    }

    #[test]
    fn a_resize_message_sets_the_terminals_size() {
        let pty = open_pty().unwrap();
        resize(&pty.master, br#"{"Width":100,"Height":40}"#);
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        // Nonsense is ignored.
        resize(&pty.master, b"{\"Width\":-1}");
        resize(&pty.master, b"not json");
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
    }

    #[test]
    fn a_non_zero_exit_is_upstreams_status() {
        let st = status(&["sh".into(), "-c".into(), "exit 3".into()], Some(3));
        assert_eq!(st["reason"], "NonZeroExitCode");
        assert_eq!(st["details"]["causes"][0]["message"], "3");
        assert_eq!(status(&[], Some(0))["status"], "Success");
    }

    #[tokio::test]
    async fn frames_round_trip_through_masking_and_fragments() {
        // A masked client frame in two fragments: "ab" + "c".
        let mask = [1u8, 2, 3, 4];
        let mut wire = vec![0x02, 0x82];
        wire.extend_from_slice(&mask);
        wire.extend([b'a' ^ 1, b'b' ^ 2]);
        wire.extend([0x80, 0x81]);
        wire.extend_from_slice(&mask);
        wire.push(b'c' ^ 1);
        let mut r = &wire[..];
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some((OP_BINARY, b"abc".to_vec()))
        );
        assert_eq!(read_message(&mut r).await.unwrap(), None);
        let mut out = Vec::new();
        write_frame(&mut out, OP_BINARY, &[7u8; 300]).await.unwrap();
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }
}
