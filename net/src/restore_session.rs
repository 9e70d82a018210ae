//! One `iptables-nft-restore --noflush --verbose` kept running and fed table blocks through
//! stdin, instead of a process per restore.
//!
//! Why: on nf_tables a one-shot `iptables-restore` pays a process start, and its *exit* waits
//! for an RCU grace period whenever the commit freed rules (closing a netfilter netlink socket
//! flushes nf_tables' pending destroy work, which calls `synchronize_rcu()`): 14–44 ms on a
//! loaded 2-vCPU VM after the rules were already live. A session never closes its socket, so a
//! commit costs one write and one line read (0.4 ms p50 for one chain against 36 ms).
//!
//! The protocol. The tool reads its input line by line; a table block is committed when its
//! `COMMIT` line is read (one nf_tables batch; the tool waits for the kernel's answer before
//! it reads on), and a failing commit or a bad line makes it print `line N failed` and exit.
//! In `--verbose` mode it echoes every comment line to stdout, flushed, when it reaches it. So
//! each block is followed by a marker comment carrying a sequence number, and the block is
//! acknowledged — live in the kernel, without error — exactly when that marker comes back.
//! Anything else (the tool exits, stdout closes, no marker within the bound) is a failure.
//!
//! On a failure the session's tool is killed *and reaped* before anything else happens (so a
//! block it was still holding cannot land after a later one), and the same input is applied by
//! a one-shot [`Iptables::restore_all`], whose result is the one returned — its error names the
//! failing line. The next call starts a new session. Applying a block twice does no harm:
//! declaring a chain flushes and refills it, and deleting a declared chain is idempotent.
//!
//! Only for the nf_tables backend: `iptables-legacy-restore` holds the xtables lock for as
//! long as it runs, which would lock every other iptables user out, so on legacy every call is
//! one-shot.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::error::{Error, Result};
use crate::exec;
use crate::iptables::{Backend, Iptables, Table};
use crate::netns::Netns;

/// How long the session may take to acknowledge one block before it is given up (killed) and
/// the block applied one-shot. A whole program of thousands of rules commits in well under a
/// second here even under load; a session that says nothing for this long is wedged.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How much of the tool's stderr is kept for the error of a failed session.
const STDERR_TAIL: usize = 2048;

/// The marker comment written after block `n`.
fn marker(n: u64) -> String {
    format!("# trellis-restore-ack {n}")
}

/// How a restore reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Through the running session, acknowledged.
    Session,
    /// By a process of its own: on legacy always; on nf_tables when the session failed or
    /// could not start (`session_error` says why) — the session is started again next time.
    OneShot { session_error: Option<String> },
}

/// A long-lived restore tool for one [`Iptables`] (see the module doc).
#[derive(Debug)]
pub struct RestoreSession {
    iptables: Iptables,
    live: tokio::sync::Mutex<Option<Live>>,
    answer_within: Duration,
    /// The session's command (program, args); the real tool unless a test says otherwise.
    session_cmd: (String, Vec<String>),
    /// The one-shot fallback's command (program, args), fed the same input on stdin.
    oneshot_cmd: (String, Vec<String>),
    fallbacks: AtomicU64,
    started: AtomicU64,
}

impl RestoreSession {
    pub fn new(iptables: Iptables) -> RestoreSession {
        let program = iptables.tool("-restore");
        RestoreSession {
            session_cmd: (
                program.clone(),
                vec!["--noflush".into(), "--verbose".into()],
            ),
            oneshot_cmd: (program, vec!["--noflush".into(), "--wait".into()]),
            iptables,
            live: tokio::sync::Mutex::new(None),
            answer_within: ANSWER_WITHIN,
            fallbacks: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// Another bound for a block's acknowledgement than [`ANSWER_WITHIN`].
    pub fn answer_within(mut self, within: Duration) -> RestoreSession {
        self.answer_within = within;
        self
    }

    pub fn iptables(&self) -> &Iptables {
        &self.iptables
    }

    /// Whether commits go through a long-lived tool (nf_tables) rather than one process each.
    pub fn streams(&self) -> bool {
        self.iptables.backend == Backend::Nft
    }

    /// How many restores were applied one-shot because the session failed or would not start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// How many session tools were started so far.
    pub fn sessions_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The running session tool's process id, if one is running (for tests and diagnostics).
    pub async fn pid(&self) -> Option<u32> {
        self.live.lock().await.as_ref().and_then(|l| l.child.id())
    }

    /// Like [`Iptables::restore_all`] (each table block commits atomically, other chains are
    /// left alone), through the running tool when the backend allows it. Returns once the
    /// input is live in the kernel, and how it got there.
    pub async fn restore_all(&self, tables: &[Table]) -> Result<Delivery> {
        if tables.is_empty() {
            return Ok(Delivery::Session);
        }
        let input: String = tables.iter().map(Table::render).collect();
        if !self.streams() {
            self.oneshot(&input).await?;
            return Ok(Delivery::OneShot {
                session_error: None,
            });
        }
        // Held across the exchange and any fallback: blocks reach the kernel one at a time,
        // in call order.
        let mut live = self.live.lock().await;
        let session = match live.take() {
            Some(l) => Ok(l),
            None => self.spawn(),
        };
        let session_error = match session {
            Ok(mut l) => match l.commit(&input, self.answer_within).await {
                Ok(()) => {
                    *live = Some(l);
                    return Ok(Delivery::Session);
                }
                Err(e) => {
                    // Reaped before the fallback: nothing it held can land after it.
                    l.end().await;
                    e.to_string()
                }
            },
            Err(e) => format!("could not start: {e}"),
        };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.oneshot(&input).await?;
        Ok(Delivery::OneShot {
            session_error: Some(session_error),
        })
    }

    async fn oneshot(&self, input: &str) -> Result<()> {
        let (program, args) = &self.oneshot_cmd;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exec::run(self.iptables.netns.as_deref(), program, &args, Some(input))
            .await
            .map(|_| ())
    }

    fn spawn(&self) -> Result<Live> {
        let (program, args) = &self.session_cmd;
        let std_cmd = match self.iptables.netns.as_deref() {
            Some(path) => Netns::open(path)?.command(program)?,
            None => std::process::Command::new(program),
        };
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.args(args);
        let live = Live::spawn(cmd, format!("{program} {}", args.join(" ")))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(live)
    }

    /// Test hook: other commands for the session and the one-shot fallback.
    #[cfg(test)]
    fn with_commands(
        iptables: Iptables,
        session: (&str, &[&str]),
        oneshot: (&str, &[&str]),
        answer_within: Duration,
    ) -> RestoreSession {
        let own = |(p, a): (&str, &[&str])| {
            (
                p.to_string(),
                a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        RestoreSession {
            session_cmd: own(session),
            oneshot_cmd: own(oneshot),
            answer_within,
            ..RestoreSession::new(iptables)
        }
    }
}

/// A running session tool.
#[derive(Debug)]
struct Live {
    /// `kill_on_drop`: dropping the session ends its tool.
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The tool's stderr as it comes (drained by a task so a chatty tool never blocks on a
    /// full pipe), its last [`STDERR_TAIL`] bytes kept for errors.
    stderr: Arc<Mutex<String>>,
    sent: u64,
    what: String,
}

impl Live {
    fn spawn(mut cmd: tokio::process::Command, what: String) -> Result<Live> {
        cmd.kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::os("run", &what, e))?;
        let (Some(stdin), Some(stdout), Some(mut err_pipe)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::invalid("run", &what, "no stdio pipes"));
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let tail = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > STDERR_TAIL {
                    let mut cut = t.len() - STDERR_TAIL;
                    while !t.is_char_boundary(cut) {
                        cut += 1;
                    }
                    t.drain(..cut);
                }
            }
        });
        Ok(Live {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr,
            sent: 0,
            what,
        })
    }

    /// Writes `input` and a marker, and waits (at most `within`) for the marker to come back:
    /// Ok means every block of `input` is committed.
    async fn commit(&mut self, input: &str, within: Duration) -> Result<()> {
        self.sent += 1;
        let marker = marker(self.sent);
        let text = format!("{input}{marker}\n");
        let what = self.what.clone();
        let exchange = async {
            self.stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| Error::os("write to", &what, e))?;
            self.stdin
                .flush()
                .await
                .map_err(|e| Error::os("write to", &what, e))?;
            loop {
                match self.stdout.next_line().await {
                    Ok(Some(line)) if line.trim_end() == marker => return Ok(()),
                    // Other output (an earlier marker cannot be pending: each is awaited).
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(Error::invalid("read", &what, "the tool exited")),
                    Err(e) => return Err(Error::os("read from", &what, e)),
                }
            }
        };
        match tokio::time::timeout(within, exchange).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // The tool's own words, once it has exited (it prints them before exiting).
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                let said = self
                    .stderr
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .trim()
                    .to_string();
                let status = match status {
                    Ok(Ok(s)) => format!(" ({s})"),
                    _ => String::new(),
                };
                Err(Error::invalid(
                    "run",
                    &self.what,
                    format!("{e}{status}: {said}"),
                ))
            }
            Err(_) => Err(Error::invalid(
                "run",
                &self.what,
                format!("block {} not acknowledged within {within:?}", self.sent),
            )),
        }
    }

    /// Kills the tool and waits for it to be gone (bounded).
    async fn end(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    //! The protocol against stand-in tools (`sh` scripts that speak it, or break it), and the
    //! fallback against a stand-in one-shot that records its input.

    use super::*;
    use crate::iptables::IpFamily;

    /// A stand-in for `iptables-nft-restore --noflush --verbose`: appends every line of a
    /// block to `$LOG` when its COMMIT is read, echoes comments; `-A X BAD` fails the block
    /// (message on stderr, exit 1), `-A X HANG` stops answering, `-A X NOISE` writes to
    /// stdout and lots to stderr first.
    const TOOL: &str = r#"
        block=""
        while IFS= read -r l; do
          case "$l" in
            '#'*) echo "$l" ;;
            *BAD*) echo "iptables-nft-restore: line 3 failed" >&2; exit 1 ;;
            *HANG*) sleep 30 ;;
            *NOISE*) echo "Warning: noise"; i=0; while [ $i -lt 2000 ]; do echo "warning line $i of forty bytes or so" >&2; i=$((i+1)); done; block="$block$l
" ;;
            COMMIT) printf '%s' "$block" >> "$LOG"; echo COMMIT >> "$LOG"; block="" ;;
            *) block="$block$l
" ;;
          esac
        done
    "#;

    struct Fixture {
        dir: std::path::PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!(
                "trellis-restore-session-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Fixture { dir }
        }
        fn session(&self, within: Duration) -> RestoreSession {
            let log = self.dir.join("session.log");
            let oneshot_log = self.dir.join("oneshot.log");
            let tool = format!("LOG={} ; {TOOL}", log.display());
            let oneshot = format!("cat >> {}", oneshot_log.display());
            let ipt = Iptables {
                backend: Backend::Nft,
                family: IpFamily::V4,
                netns: None,
            };
            RestoreSession::with_commands(
                ipt,
                ("sh", &["-c", &tool]),
                ("sh", &["-c", &oneshot]),
                within,
            )
        }
        fn log(&self, which: &str) -> String {
            std::fs::read_to_string(self.dir.join(format!("{which}.log"))).unwrap_or_default()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn block(rule: &str) -> Table {
        Table::new("filter").chain("X", vec![rule.to_string()])
    }

    #[tokio::test]
    async fn each_block_returns_once_acknowledged_through_one_tool() {
        let f = Fixture::new("ack");
        let s = f.session(Duration::from_secs(10));
        for i in 0..5 {
            let d = s.restore_all(&[block(&format!("r{i}"))]).await.unwrap();
            assert_eq!(d, Delivery::Session);
            // Acknowledged means the tool got past the COMMIT.
            assert!(f.log("session").contains(&format!("-A X r{i}\nCOMMIT\n")));
        }
        assert_eq!((s.sessions_started(), s.fallbacks()), (1, 0));
        assert!(f.log("oneshot").is_empty());
    }

    #[tokio::test]
    async fn a_failing_block_is_applied_one_shot_and_the_next_opens_a_new_session() {
        let f = Fixture::new("fail");
        let s = f.session(Duration::from_secs(10));
        s.restore_all(&[block("ok")]).await.unwrap();
        let first = s.pid().await.unwrap();
        let d = s.restore_all(&[block("BAD")]).await.unwrap();
        let Delivery::OneShot {
            session_error: Some(e),
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(e.contains("line 3 failed"), "the tool's stderr: {e}");
        assert!(f.log("oneshot").contains("-A X BAD\nCOMMIT\n"));
        assert!(s.pid().await.is_none(), "the failed tool is gone");
        assert_eq!(
            s.restore_all(&[block("after")]).await.unwrap(),
            Delivery::Session
        );
        assert_ne!(s.pid().await.unwrap(), first);
        assert_eq!((s.sessions_started(), s.fallbacks()), (2, 1));
    }

    #[tokio::test]
    async fn a_session_killed_between_blocks_costs_one_one_shot() {
        let f = Fixture::new("kill");
        let s = f.session(Duration::from_secs(10));
        s.restore_all(&[block("a")]).await.unwrap();
        let pid = s.pid().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let d = s.restore_all(&[block("b")]).await.unwrap();
        assert!(
            matches!(
                d,
                Delivery::OneShot {
                    session_error: Some(_)
                }
            ),
            "{d:?}"
        );
        assert!(f.log("oneshot").contains("-A X b\n"));
        assert_eq!(
            s.restore_all(&[block("c")]).await.unwrap(),
            Delivery::Session
        );
        assert!(f.log("session").contains("-A X c\nCOMMIT\n"));
    }

    #[tokio::test]
    async fn a_silent_session_is_given_up_after_the_bound_and_reaped() {
        let f = Fixture::new("hang");
        let s = f.session(Duration::from_millis(300));
        s.restore_all(&[block("a")]).await.unwrap();
        let pid = s.pid().await.unwrap();
        let t = std::time::Instant::now();
        let d = s.restore_all(&[block("HANG")]).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let Delivery::OneShot {
            session_error: Some(e),
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(e.contains("not acknowledged"), "{e}");
        // Reaped, not just signalled: no process of that id any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(f.log("oneshot").contains("-A X HANG\n"));
    }

    #[tokio::test]
    async fn other_output_and_a_flood_of_warnings_do_not_block_the_session() {
        let f = Fixture::new("noise");
        let s = f.session(Duration::from_secs(10));
        for i in 0..3 {
            let d = s.restore_all(&[block(&format!("NOISE{i}"))]).await.unwrap();
            assert_eq!(d, Delivery::Session);
        }
        assert_eq!(s.fallbacks(), 0);
    }

    #[tokio::test]
    async fn a_tool_that_cannot_start_falls_back_every_time() {
        let f = Fixture::new("nostart");
        let ipt = Iptables {
            backend: Backend::Nft,
            family: IpFamily::V4,
            netns: None,
        };
        let oneshot = format!("cat >> {}", f.dir.join("oneshot.log").display());
        let s = RestoreSession::with_commands(
            ipt,
            ("/nonexistent/iptables-nft-restore", &[]),
            ("sh", &["-c", &oneshot]),
            Duration::from_secs(1),
        );
        for _ in 0..2 {
            let d = s.restore_all(&[block("x")]).await.unwrap();
            assert!(
                matches!(
                    d,
                    Delivery::OneShot {
                        session_error: Some(_)
                    }
                ),
                "{d:?}"
            );
        }
        assert_eq!(f.log("oneshot").matches("COMMIT").count(), 2);
    }

    #[tokio::test]
    async fn legacy_never_streams() {
        let f = Fixture::new("legacy");
        let mut s = f.session(Duration::from_secs(1));
        s.iptables.backend = Backend::Legacy;
        let d = s.restore_all(&[block("x")]).await.unwrap();
        assert_eq!(
            d,
            Delivery::OneShot {
                session_error: None
            }
        );
        assert_eq!(s.sessions_started(), 0);
        assert!(f.log("oneshot").contains("-A X x\n"));
    }
}
