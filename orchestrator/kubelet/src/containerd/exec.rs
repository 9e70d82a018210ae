//! `kubectl exec` into a containerd container as CRI and crictl do it: containerd's Tasks Exec
//! with a process spec made from the container's own (its env, cwd, user, capabilities,
//! rlimits, `noNewPrivileges`), so the command runs in the container's cgroup and PID
//! namespace under its restrictions — not beside it with the kubelet's privileges, as
//! `nsenter` would.
//!
//! Its stdio goes through FIFOs the kubelet makes in a directory of its own per exec (as
//! containerd's `cio` does): `stdin`, `stdout`, `stderr`, one stream with a terminal. A FIFO
//! read end is opened blocking on a thread before the exec starts, so it neither sees an end
//! before the shim opens its side nor misses output written before it is read; the end comes
//! when the shim closes its side, after the command's last output. Resizes go through
//! ResizePty, stdin's end through CloseIO; the exec process is deleted afterwards, also when
//! the client went (the process is killed first).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ResizePtyRequest, StartRequest, WaitRequest,
};
use serde_json::{Value, json};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::{Conn, CtrdError};

/// How long the shim may take to open the output FIFOs once the exec started.
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// How long the clean-up waits for a killed exec to end before deleting it.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the exec runs and which streams it has.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The process spec of an exec: the container's (`spec.process`) with the command, the
/// terminal, and `TERM=xterm` with a terminal when the container sets no TERM (as containerd's
/// CRI plugin does).
pub fn process_spec(container_spec: &Value, req: &Request) -> Result<Value, CtrdError> {
    let mut p = container_spec
        .get("process")
        .filter(|p| p.is_object())
        .cloned()
        .ok_or_else(|| CtrdError::Image("the container's spec has no process".into()))?;
    p["args"] = json!(req.command);
    p["terminal"] = json!(req.tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    if req.tty {
        let env = p["env"].as_array().cloned().unwrap_or_default();
        if !env
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
        {
            let mut env = env;
            env.push(json!("TERM=xterm"));
            p["env"] = json!(env);
        }
    }
    Ok(p)
}

/// Sets the terminal size of task `container`'s main process (an attached `tty: true`
/// container's terminal), as the attach of containerd's CRI plugin does.
pub async fn resize_task(conn: &Conn, container: &str, w: u16, h: u16) -> Result<(), CtrdError> {
    TasksClient::new(conn.channel.clone())
        .resize_pty(conn.request(ResizePtyRequest {
            container_id: container.to_string(),
            exec_id: String::new(),
            width: u32::from(w),
            height: u32::from(h),
        }))
        .await
        .map(|_| ())
        .map_err(|s| CtrdError::rpc("resize the task's terminal".to_string(), s))
}

/// A unique exec id (containerd's rules: letters, digits, `-`).
fn exec_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let now = jiff::Timestamp::now().as_nanosecond() as u64;
    format!(
        "exec-{}-{now:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Opens a FIFO read-write without blocking and closes it: a reader blocked in its open gets
/// its writer and then its end.
fn unblock(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(fifo);
}

/// Which exec to clean up, and where its FIFOs are.
#[derive(Clone)]
struct Ids {
    conn: Conn,
    container: String,
    exec: String,
    dir: PathBuf,
}

impl Ids {
    fn tasks(&self) -> TasksClient<tonic::transport::Channel> {
        TasksClient::new(self.conn.channel.clone())
    }

    async fn kill(&self) {
        let _ = self
            .tasks()
            .kill(self.conn.request(KillRequest {
                container_id: self.container.clone(),
                exec_id: self.exec.clone(),
                signal: nix::sys::signal::Signal::SIGKILL as u32,
                all: false,
            }))
            .await;
    }

    /// Kills the exec (a no-op once it ended), waits for it (bounded), deletes it and its
    /// FIFO directory.
    async fn clean_up(&self, started: bool) {
        if started {
            self.kill().await;
            let _ = tokio::time::timeout(
                KILL_WAIT,
                self.tasks().wait(self.conn.request(WaitRequest {
                    container_id: self.container.clone(),
                    exec_id: self.exec.clone(),
                })),
            )
            .await;
        }
        let r = self
            .tasks()
            .delete_process(self.conn.request(DeleteProcessRequest {
                container_id: self.container.clone(),
                exec_id: self.exec.clone(),
            }))
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(container = %self.container, exec = %self.exec, error = %s.message(), "deleting a containerd exec process");
        }
        for f in ["stdout", "stderr"] {
            unblock(&self.dir.join(f));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The exec's stdin: writes to its FIFO; its drop (stdin's end) closes the FIFO and tells the
/// shim with CloseIO.
pub struct Stdin {
    fifo: Option<pipe::Sender>,
    ids: Ids,
}

impl tokio::io::AsyncWrite for Stdin {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.fifo.as_mut() {
            Some(f) => std::pin::Pin::new(f).poll_write(cx, buf),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.fifo.as_mut() {
            Some(f) => std::pin::Pin::new(f).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.fifo.as_mut() {
            Some(f) => std::pin::Pin::new(f).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        self.fifo = None;
        let ids = self.ids.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = ids
                    .tasks()
                    .close_io(ids.conn.request(CloseIoRequest {
                        container_id: ids.container.clone(),
                        exec_id: ids.exec.clone(),
                        stdin: true,
                    }))
                    .await;
            });
        }
    }
}

/// A started exec: its streams (taken by the caller), the terminal's size, its end.
pub struct Session {
    pub stdin: Option<Stdin>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    /// Terminal sizes (columns, rows), with a terminal.
    pub resize: Option<mpsc::UnboundedSender<(u16, u16)>>,
    ids: Ids,
    /// Deleted already (or being deleted): the drop leaves it.
    done: bool,
}

impl Session {
    /// Execs `req` in container `container`'s task, its FIFOs under `root/<exec id>/`.
    pub async fn start(
        conn: Conn,
        container: &str,
        root: &Path,
        req: &Request,
    ) -> Result<Session, CtrdError> {
        let exec = exec_id();
        let ids = Ids {
            conn,
            container: container.to_string(),
            dir: root.join(&exec),
            exec,
        };
        let io = |what: &str, e: std::io::Error| CtrdError::Io {
            what: format!("{what} {}", ids.dir.display()),
            source: e,
        };
        std::fs::create_dir_all(&ids.dir).map_err(|e| io("create", e))?;
        let fifo = |name: &str, on: bool| -> Result<Option<PathBuf>, CtrdError> {
            if !on {
                return Ok(None);
            }
            let p = ids.dir.join(name);
            nix::unistd::mkfifo(
                &p,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .map_err(|e| io("mkfifo in", std::io::Error::from(e)))?;
            Ok(Some(p))
        };
        let made = (|| {
            Ok::<_, CtrdError>((
                fifo("stdin", req.stdin)?,
                fifo("stdout", req.stdout)?,
                fifo("stderr", req.stderr && !req.tty)?,
            ))
        })();
        let (stdin, stdout, stderr) = match made {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&ids.dir);
                return Err(e);
            }
        };
        // The read ends wait for the shim's write ends on threads of their own.
        let open_reader = |p: &Option<PathBuf>| {
            p.clone()
                .map(|p| tokio::task::spawn_blocking(move || std::fs::File::open(p)))
        };
        let (out_open, err_open) = (open_reader(&stdout), open_reader(&stderr));
        // The write end of stdin, read-write: never waits, and the shim's open of it (blocking
        // with a terminal) finds a writer.
        let stdin_fifo = match &stdin {
            Some(p) => match pipe::OpenOptions::new().read_write(true).open_sender(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    ids.clean_up(false).await;
                    return Err(io("open the stdin FIFO in", e));
                }
            },
            None => None,
        };
        let r = Self::exec(&ids, req, &stdin, &stdout, &stderr).await;
        let started = match r {
            Ok(()) => true,
            Err(e) => {
                ids.clean_up(false).await;
                return Err(e);
            }
        };
        let mut session = Session {
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            ids: ids.clone(),
            done: false,
        };
        let reader = |h: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>| async {
            let Some(h) = h else { return Ok(None) };
            match tokio::time::timeout(OPEN_WAIT, h).await {
                Ok(Ok(Ok(f))) => pipe::Receiver::from_file(f)
                    .map(Some)
                    .map_err(|e| io("open a FIFO in", e)),
                Ok(Ok(Err(e))) => Err(io("open a FIFO in", e)),
                Ok(Err(e)) => Err(io("open a FIFO in", std::io::Error::other(e))),
                Err(_) => Err(CtrdError::Image(format!(
                    "containerd's shim did not open the exec's output within {OPEN_WAIT:?}"
                ))),
            }
        };
        let opened =
            async { Ok::<_, CtrdError>((reader(out_open).await?, reader(err_open).await?)) }.await;
        match opened {
            Ok((o, e)) => {
                session.stdout = o;
                session.stderr = e;
            }
            Err(e) => {
                session.done = true;
                ids.clean_up(started).await;
                return Err(e);
            }
        }
        session.stdin = stdin_fifo.map(|f| Stdin {
            fifo: Some(f),
            ids: ids.clone(),
        });
        if req.tty {
            let (tx, mut rx) = mpsc::unbounded_channel::<(u16, u16)>();
            let ids = ids.clone();
            tokio::spawn(async move {
                while let Some((w, h)) = rx.recv().await {
                    let _ = ids
                        .tasks()
                        .resize_pty(ids.conn.request(ResizePtyRequest {
                            container_id: ids.container.clone(),
                            exec_id: ids.exec.clone(),
                            width: u32::from(w),
                            height: u32::from(h),
                        }))
                        .await;
                }
            });
            session.resize = Some(tx);
        }
        Ok(session)
    }

    /// Exec (the process spec from the container's) and Start. The stdin FIFO is held open
    /// (read-write) meanwhile so the shim's open of it never waits.
    async fn exec(
        ids: &Ids,
        req: &Request,
        stdin: &Option<PathBuf>,
        stdout: &Option<PathBuf>,
        stderr: &Option<PathBuf>,
    ) -> Result<(), CtrdError> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let container = ContainersClient::new(ids.conn.channel.clone())
            .get(ids.conn.request(GetContainerRequest {
                id: ids.container.clone(),
            }))
            .await
            .map_err(|s| CtrdError::rpc(format!("get container {}", ids.container), s))?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| CtrdError::Image(format!("container {} has no spec", ids.container)))?;
        let spec: Value = serde_json::from_slice(&container.value)
            .map_err(|e| CtrdError::Image(format!("the spec of {}: {e}", ids.container)))?;
        let process = process_spec(&spec, req)?;
        ids.tasks()
            .exec(ids.conn.request(ExecProcessRequest {
                container_id: ids.container.clone(),
                stdin: path(stdin),
                stdout: path(stdout),
                stderr: path(stderr),
                terminal: req.tty,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).unwrap_or_default(),
                }),
                exec_id: ids.exec.clone(),
            }))
            .await
            .map_err(|s| CtrdError::rpc("exec", s))?;
        if let Err(s) = ids
            .tasks()
            .start(ids.conn.request(StartRequest {
                container_id: ids.container.clone(),
                exec_id: ids.exec.clone(),
            }))
            .await
        {
            let _ = ids
                .tasks()
                .delete_process(ids.conn.request(DeleteProcessRequest {
                    container_id: ids.container.clone(),
                    exec_id: ids.exec.clone(),
                }))
                .await;
            return Err(CtrdError::rpc("start the exec", s));
        }
        Ok(())
    }

    /// The exec's exit status (128 + the signal when killed).
    pub async fn wait(&self) -> Result<i32, CtrdError> {
        let w = self
            .ids
            .tasks()
            .wait(self.ids.conn.request(WaitRequest {
                container_id: self.ids.container.clone(),
                exec_id: self.ids.exec.clone(),
            }))
            .await
            .map_err(|s| CtrdError::rpc("wait for the exec", s))?;
        Ok(w.into_inner().exit_status as i32)
    }

    /// SIGKILL to the exec's process (the client went).
    pub async fn kill(&self) {
        self.ids.kill().await;
    }

    /// Deletes the exec process and its FIFOs (killed first should it still run).
    pub async fn delete(mut self) {
        self.done = true;
        self.ids.clean_up(true).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ids = self.ids.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { ids.clean_up(true).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tty: bool) -> Request {
        Request {
            command: vec!["/bin/sh".into(), "-c".into(), "id".into()],
            stdin: false,
            stdout: true,
            stderr: true,
            tty,
        }
    }

    #[test]
    fn the_exec_runs_with_the_containers_process_spec_and_its_command() {
        let spec = json!({"process": {"args": ["/srv"], "env": ["PATH=/bin", "A=1"],
            "cwd": "/work", "user": {"uid": 1000, "gid": 1000}, "terminal": false,
            "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true,
            "consoleSize": {"height": 1, "width": 1}}});
        let p = process_spec(&spec, &req(false)).unwrap();
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "id"]));
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL"]));
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        let t = process_spec(&spec, &req(true)).unwrap();
        assert_eq!(t["terminal"], true);
        assert_eq!(t["env"], json!(["PATH=/bin", "A=1", "TERM=xterm"]));
        // A TERM of the container's own stays.
        let spec = json!({"process": {"args": [], "env": ["TERM=vt100"]}});
        let t = process_spec(&spec, &req(true)).unwrap();
        assert_eq!(t["env"], json!(["TERM=vt100"]));
        assert!(process_spec(&json!({}), &req(false)).is_err());
    }

    #[test]
    fn exec_ids_are_unique_and_containerd_valid() {
        let (a, b) = (exec_id(), exec_id());
        assert_ne!(a, b);
        assert!(a.len() <= 76);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
