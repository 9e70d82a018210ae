//! The ADD gate: a CNI plugin does not return from ADD until policyd says the new pod's policy
//! rules are committed, so a pod never sends a packet its policy has not seen yet.
//!
//! Protocol, on a unix socket beside ipamd's (default [`DEFAULT_SOCKET`]): the plugin connects
//! and sends one JSON line, an [`AddRequest`]; policyd answers one JSON line, a [`Reply`], when
//! the pod's rules are committed (or refused), and closes. Unknown fields are ignored both
//! ways, so either side can grow.
//!
//! ```text
//! → {"namespace":"x","pod":"a","containerId":"c0ffee","addresses":["10.244.1.5"],"hostInterface":"tr0123456789a"}
//! ← {"status":"committed"}
//! ← {"status":"refused","reason":"policy x/deny-all does not compile"}
//! ```
//!
//! The client ([`wait_committed`]) is blocking and tiny, for the plugins; the server
//! ([`serve`], feature `server`) is tokio, for policyd.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub use server::{bind, serve};

/// Where policyd listens unless configured otherwise (ipamd's is `/run/trellis/ipamd.sock`).
pub const DEFAULT_SOCKET: &str = "/run/trellis/policyd.sock";
/// How long a plugin waits unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// The longest line either side accepts: a request names a handful of addresses.
pub const MAX_LINE: usize = 64 * 1024;

/// What the plugin tells policyd about the pod it is wiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddRequest {
    /// `K8S_POD_NAMESPACE` (empty when the runtime passed none).
    #[serde(default)]
    pub namespace: String,
    /// `K8S_POD_NAME` (empty when the runtime passed none).
    #[serde(default)]
    pub pod: String,
    pub container_id: String,
    pub addresses: Vec<IpAddr>,
    /// The pod's veth on the host (`tr` + hash), which policyd's chains match on.
    pub host_interface: String,
}

/// policyd's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Reply {
    /// The pod's rules are in the kernel: the plugin may return.
    Committed,
    /// policyd will not commit rules for this pod; ADD must fail.
    Refused { reason: String },
}

/// Why a plugin could not get a confirmation.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Nothing listens at the socket (absent, or connection refused): policyd is down.
    #[error("policyd is not listening on {socket}: {source}")]
    Unavailable {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    /// No reply within the bound.
    #[error("policyd did not confirm the pod's rules within {} ms", .timeout.as_millis())]
    Timeout { timeout: Duration },
    /// policyd answered that it will not commit the pod's rules.
    #[error("policyd refused the pod: {reason}")]
    Refused { reason: String },
    /// The exchange broke: a closed connection, an unreadable reply, an I/O error mid-way.
    #[error("policyd gate protocol error: {0}")]
    Protocol(String),
}

impl GateError {
    fn io(e: std::io::Error, timeout: Duration) -> GateError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                GateError::Timeout { timeout }
            }
            _ => GateError::Protocol(e.to_string()),
        }
    }
}

/// Blocking client for the CNI plugins: connect, send, wait for the reply, all within
/// `timeout`. Ok only for [`Reply::Committed`].
pub fn wait_committed(socket: &Path, req: &AddRequest, timeout: Duration) -> Result<(), GateError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(GateError::Timeout { timeout })
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| GateError::Unavailable {
        socket: socket.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| GateError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| GateError::Protocol(e.to_string()))?;
    stream
        .write_all(&line)
        .map_err(|e| GateError::io(e, timeout))?;
    let reply = read_line(&mut stream, left, timeout)?;
    match serde_json::from_slice::<Reply>(&reply)
        .map_err(|e| GateError::Protocol(format!("unreadable reply: {e}")))?
    {
        Reply::Committed => Ok(()),
        Reply::Refused { reason } => Err(GateError::Refused { reason }),
    }
}

/// Reads up to the first newline, each read bounded by what is left of the deadline.
fn read_line(
    stream: &mut UnixStream,
    left: impl Fn() -> Result<Duration, GateError>,
    timeout: Duration,
) -> Result<Vec<u8>, GateError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| GateError::Protocol(e.to_string()))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GateError::io(e, timeout)),
        };
        if n == 0 {
            return Err(GateError::Protocol(
                "policyd closed the connection without a reply".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_LINE {
            return Err(GateError::Protocol(format!(
                "reply longer than {MAX_LINE} bytes"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AddRequest {
        AddRequest {
            namespace: "x".into(),
            pod: "a".into(),
            container_id: "c0ffee".into(),
            addresses: vec!["10.244.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            host_interface: "tr0123456789a".into(),
        }
    }

    #[test]
    fn the_wire_format_is_one_camel_case_json_object_each_way() {
        let v = serde_json::to_value(req()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"namespace": "x", "pod": "a", "containerId": "c0ffee",
                "addresses": ["10.244.1.5", "fd00::5"], "hostInterface": "tr0123456789a"})
        );
        assert_eq!(
            serde_json::to_string(&Reply::Committed).unwrap(),
            r#"{"status":"committed"}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Refused {
                reason: "no".into()
            })
            .unwrap(),
            r#"{"status":"refused","reason":"no"}"#
        );
        // Fields a later version adds are ignored.
        let r: Reply = serde_json::from_str(r#"{"status":"committed","took":3}"#).unwrap();
        assert_eq!(r, Reply::Committed);
        let q: AddRequest = serde_json::from_str(
            r#"{"containerId":"c","addresses":[],"hostInterface":"tr1","extra":1}"#,
        )
        .unwrap();
        assert_eq!((q.namespace.as_str(), q.pod.as_str()), ("", ""));
    }

    #[test]
    fn an_absent_socket_is_unavailable_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = wait_committed(
            &dir.path().join("none.sock"),
            &req(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, GateError::Unavailable { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // A socket file nobody listens on: connection refused, the same kind.
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = wait_committed(&path, &req(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, GateError::Unavailable { .. }), "{e}");
    }

    /// A listener that accepts (the kernel queues the connection) but never answers.
    #[test]
    fn a_server_that_never_answers_times_out_on_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let e = wait_committed(&path, &req(), Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, GateError::Timeout { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "policyd did not confirm the pod's rules within 300 ms"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    /// A thread plays policyd for one connection: reads the request, writes `answer`.
    fn one_shot(
        answer: &'static [u8],
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<AddRequest>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                got.push(b[0]);
            }
            s.write_all(answer).unwrap();
            serde_json::from_slice(&got).unwrap()
        });
        (dir, path, server)
    }

    #[test]
    fn committed_refused_and_garbage_replies() {
        let (_d, path, server) = one_shot(b"{\"status\":\"committed\"}\n");
        wait_committed(&path, &req(), Duration::from_secs(10)).unwrap();
        assert_eq!(server.join().unwrap(), req());

        let (_d, path, server) = one_shot(b"{\"status\":\"refused\",\"reason\":\"bad policy\"}\n");
        let e = wait_committed(&path, &req(), Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&e, GateError::Refused { reason } if reason == "bad policy"),
            "{e}"
        );
        server.join().unwrap();

        let (_d, path, server) = one_shot(b"ok\n");
        let e = wait_committed(&path, &req(), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, GateError::Protocol(_)), "{e}");
        server.join().unwrap();

        let (_d, path, server) = one_shot(b"");
        let e = wait_committed(&path, &req(), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, GateError::Protocol(_)), "{e}");
        server.join().unwrap();
    }
}
