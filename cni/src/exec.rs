//! Running a plugin binary: the part shared by IPAM delegation (a plugin calling a plugin) and
//! the invoker (a runtime calling a chain).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::Error;

/// A CNI operation, as named in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `CNI_*` environment of one plugin run. Variables left `None` are removed from the
/// child's environment, so nothing stale leaks in from ours.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    pub fn new(command: Command, path: Vec<PathBuf>) -> Self {
        CniEnv {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: None,
            path,
        }
    }

    fn apply(&self, cmd: &mut Process) {
        cmd.env("CNI_COMMAND", self.command.as_str());
        let mut set = |key: &str, value: Option<&std::ffi::OsStr>| match value {
            Some(v) => {
                cmd.env(key, v);
            }
            None => {
                cmd.env_remove(key);
            }
        };
        set(
            "CNI_CONTAINERID",
            self.container_id.as_deref().map(std::ffi::OsStr::new),
        );
        set("CNI_NETNS", self.netns.as_deref().map(Path::as_os_str));
        set(
            "CNI_IFNAME",
            self.ifname.as_deref().map(std::ffi::OsStr::new),
        );
        set("CNI_ARGS", self.args.as_deref().map(std::ffi::OsStr::new));
        match std::env::join_paths(&self.path) {
            Ok(p) => {
                cmd.env("CNI_PATH", p);
            }
            Err(_) => {
                cmd.env_remove("CNI_PATH");
            }
        }
    }
}

/// Finds `plugin` in the CNI_PATH directories.
pub fn find_in_path(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::invalid_config(
            "plugin type must be a plain file name",
            format!("{plugin:?}"),
        ));
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::invalid_config(
                format!("plugin {plugin:?} not found in CNI_PATH"),
                format!(
                    "searched {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// What a plugin printed on success, and what it said on stderr.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `binary` with `env` and `stdin`. A non-zero exit becomes the plugin's own error object
/// when it printed one, else an internal error quoting what it printed.
pub fn exec(binary: &Path, env: &CniEnv, stdin: &[u8]) -> Result<Output, Error> {
    exec_with_timeout(binary, env, stdin, None)
}

/// As [`exec`], killing the plugin when it runs longer than `timeout`: a hung plugin must not
/// hang its runtime. The output is read on threads, so a chatty plugin never blocks on a full pipe.
pub fn exec_with_timeout(
    binary: &Path,
    env: &CniEnv,
    stdin: &[u8],
    timeout: Option<std::time::Duration>,
) -> Result<Output, Error> {
    let Some(timeout) = timeout else {
        return exec_unbounded(binary, env, stdin);
    };
    let mut cmd = Process::new(binary);
    env.apply(&mut cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let name = binary.display();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("cannot run plugin {name}"), e))?;
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    if let Some(mut input) = child.stdin.take()
        && let Err(e) = input.write_all(stdin)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::io(
            format!("cannot write config to plugin {name}"),
            e,
        ));
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::internal(
                    format!(
                        "plugin {name} did not finish {} within {timeout:?}",
                        env.command
                    ),
                    "killed",
                ));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(Error::io(format!("plugin {name} did not finish"), e)),
        }
    };
    let out = std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    judge(binary, env, out)
}

fn exec_unbounded(binary: &Path, env: &CniEnv, stdin: &[u8]) -> Result<Output, Error> {
    let mut cmd = Process::new(binary);
    env.apply(&mut cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let name = binary.display();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("cannot run plugin {name}"), e))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: that is its answer, not ours.
        if let Err(e) = input.write_all(stdin)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(Error::io(
                format!("cannot write config to plugin {name}"),
                e,
            ));
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("plugin {name} did not finish"), e))?;
    judge(binary, env, out)
}

/// A finished plugin's answer: its output, or its error object (else its words as an error).
fn judge(binary: &Path, env: &CniEnv, out: std::process::Output) -> Result<Output, Error> {
    let name = binary.display();
    if out.status.success() {
        return Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    if let Ok(err) = Error::from_json(&out.stdout) {
        return Err(err);
    }
    let said = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        &out.stderr
    } else {
        &out.stdout
    };
    Err(Error::internal(
        format!(
            "plugin {name} failed with {} for {}",
            out.status, env.command
        ),
        String::from_utf8_lossy(said).trim().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_their_names() {
        for c in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Gc,
            Command::Status,
            Command::Version,
        ] {
            assert_eq!(Command::parse(c.as_str()), Some(c));
        }
        assert_eq!(Command::parse("add"), None);
    }

    #[test]
    fn find_in_path_refuses_paths_and_reports_where_it_looked() {
        assert_eq!(
            find_in_path("../bin/sh", &[PathBuf::from("/bin")])
                .unwrap_err()
                .code
                .get(),
            7
        );
        let err = find_in_path("no-such-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(err.details.contains("/nonexistent"));
        assert_eq!(
            find_in_path(
                "sh",
                &[PathBuf::from("/nonexistent"), PathBuf::from("/bin")]
            )
            .unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn exec_with_timeout_kills_a_hung_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("hung");
        std::fs::write(&plugin, "#!/bin/sh\nexec sleep 30\n").unwrap();
        make_executable(&plugin);
        let started = std::time::Instant::now();
        let err = exec_with_timeout(
            &plugin,
            &CniEnv::new(Command::Add, vec![]),
            b"{}",
            Some(std::time::Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(err.msg.contains("did not finish ADD"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "#!/bin/sh\ncat >/dev/null\necho '{}'\necho said >&2\n").unwrap();
        make_executable(&ok);
        let out = exec_with_timeout(
            &ok,
            &CniEnv::new(Command::Add, vec![]),
            b"{}",
            Some(std::time::Duration::from_secs(20)),
        )
        .unwrap();
        assert_eq!(out.stderr, b"said\n");
    }

    #[test]
    fn exec_reports_the_plugin_error_object() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"busy\"}'\nexit 1\n",
        )
        .unwrap();
        make_executable(&plugin);
        let err = exec(&plugin, &CniEnv::new(Command::Add, vec![]), b"{}").unwrap_err();
        assert_eq!(err.code.get(), 11);
        assert_eq!(err.msg, "busy");
    }

    #[test]
    fn exec_quotes_a_plugin_that_printed_no_error_object() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("crashing");
        std::fs::write(&plugin, "#!/bin/sh\necho 'segfault' >&2\nexit 2\n").unwrap();
        make_executable(&plugin);
        let err = exec(&plugin, &CniEnv::new(Command::Del, vec![]), b"{}").unwrap_err();
        assert_eq!(err.code.get(), 999);
        assert_eq!(err.details, "segfault");
    }

    #[test]
    fn exec_sets_and_clears_the_cni_variables() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("env");
        std::fs::write(
            &plugin,
            "#!/bin/sh\necho \"$CNI_COMMAND ${CNI_NETNS-unset} $CNI_PATH\"\n",
        )
        .unwrap();
        make_executable(&plugin);
        let env = CniEnv::new(Command::Gc, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        let out = exec(&plugin, &env, b"").unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "GC unset /a:/b\n");
    }

    fn make_executable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
