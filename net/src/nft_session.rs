//! One `nft -i` kept running and fed transactions through stdin, instead of an `nft -f` process
//! per transaction.
//!
//! Why: a one-shot `nft` pays a process start and rebuilds its cache (every chain of every
//! table: 10,000 at 10,000 Services) before it sends anything, 15–30 ms on a loaded 2-core VM
//! for a transaction the kernel commits in 2–3 ms. In interactive mode nft still reads its
//! cache per command, but the process, its libraries and its parser stay.
//!
//! The protocol (nft 1.0.6, which reads its input through libedit, a line at a time). Each line
//! is one command buffer, parsed, evaluated and sent as one netlink batch — one kernel
//! transaction, all or nothing — before the next line is read; commands on one line are
//! separated by `;`. So a script of one command per line is sent as one line. nft has no echo
//! command, so the acknowledgement is a line that is not a command, `trellis-ack-N`: nft
//! answers it on stderr with a syntax error that quotes the line. That answer comes after the
//! batch's own errors, if any, so the batch is acknowledged — committed, or refused as a whole
//! with its error — exactly when the marker comes back, and it failed iff nft reported another
//! `Error:` since the previous marker. A refused batch changes nothing and the session goes on.
//! Anything else (nft exits, a pipe closes, no marker within the bound) is a broken session.
//!
//! On a broken session nft is killed *and reaped* before anything else happens (so a batch it
//! was still holding cannot land after a later one), and the same script is applied by a
//! one-shot `nft -f -`, whose result is the one returned; the next call starts a new session.
//! After [`GIVE_UP_AFTER`] broken sessions in a row the session is not tried again (an `nft`
//! that speaks another dialect must not cost a timeout per sync). Scripts with blocks (`table
//! … {` on several lines) and big ones (libedit reads a byte per system call: 100 ms for
//! 145 KB) go one-shot anyway. The session is restarted after [`RECYCLE_AFTER`] batches, as
//! nft's line history grows with every line.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin};

use crate::error::{Error, Result};
use crate::exec;
use crate::netns::Netns;
use crate::nft::Nft;

/// How long the session may take to answer one batch before it is given up (killed) and the
/// batch applied one-shot. A change of a few chains commits in milliseconds; a session silent
/// for this long is wedged.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Scripts longer than this go one-shot (see the module doc).
pub const SESSION_MAX_SCRIPT: usize = 32 * 1024;

/// Batches per session before it is restarted.
pub const RECYCLE_AFTER: u64 = 1000;

/// Broken sessions in a row after which every script goes one-shot.
pub const GIVE_UP_AFTER: u64 = 3;

/// How much of nft's stderr one answer may hold before the session is called broken.
const ANSWER_MAX: usize = 64 * 1024;

/// The marker line written after batch `n`.
fn marker(n: u64) -> String {
    format!("trellis-ack-{n}")
}

/// How a script reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Through the running session, acknowledged.
    Session,
    /// By an `nft -f` of its own: `session_error` says why the session failed or did not
    /// start; None when the script was not for a session (blocks, size, or given up).
    OneShot { session_error: Option<String> },
}

/// A long-lived `nft -i` for one namespace (see the module doc).
#[derive(Debug)]
pub struct NftSession {
    nft: Nft,
    live: tokio::sync::Mutex<Option<Live>>,
    answer_within: Duration,
    /// The session's command (program, args); `nft -i` unless a test says otherwise.
    session_cmd: (String, Vec<String>),
    /// The one-shot command (program, args), fed the script on stdin; `nft -f -` unless a
    /// test says otherwise.
    oneshot_cmd: (String, Vec<String>),
    fallbacks: AtomicU64,
    started: AtomicU64,
    broken_in_a_row: AtomicU64,
    /// False: every script goes one-shot (for comparison).
    streams: bool,
}

impl NftSession {
    pub fn new(nft: Nft) -> NftSession {
        NftSession {
            nft,
            live: tokio::sync::Mutex::new(None),
            answer_within: ANSWER_WITHIN,
            session_cmd: ("nft".into(), vec!["-i".into()]),
            oneshot_cmd: ("nft".into(), vec!["-f".into(), "-".into()]),
            fallbacks: AtomicU64::new(0),
            started: AtomicU64::new(0),
            broken_in_a_row: AtomicU64::new(0),
            streams: true,
        }
    }

    /// The same interface with an `nft -f` process per script and no session (to compare).
    pub fn one_shot(nft: Nft) -> NftSession {
        NftSession {
            streams: false,
            ..NftSession::new(nft)
        }
    }

    /// Another bound for a batch's answer than [`ANSWER_WITHIN`].
    pub fn answer_within(mut self, within: Duration) -> NftSession {
        self.answer_within = within;
        self
    }

    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    /// How many scripts were applied one-shot because the session broke or would not start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// How many session processes were started so far.
    pub fn sessions_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The running session's process id, if one is running (for tests and diagnostics).
    pub async fn pid(&self) -> Option<u32> {
        self.live.lock().await.as_ref().and_then(|l| l.child.id())
    }

    /// Applies `script` (the `nft -f` language) as one transaction, through the running
    /// session when it can. Returns once the script is live in the kernel, and how it got
    /// there; an error when nft refused it (then nothing of it was applied).
    pub async fn apply(&self, script: &str) -> Result<Delivery> {
        let Some(line) = one_line(script) else {
            self.oneshot(script).await?;
            return Ok(Delivery::OneShot {
                session_error: None,
            });
        };
        if line.is_empty() {
            return Ok(Delivery::Session);
        }
        if !self.streams || self.broken_in_a_row.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
            self.oneshot(script).await?;
            return Ok(Delivery::OneShot {
                session_error: None,
            });
        }
        // Held across the exchange and any fallback: transactions reach the kernel one at a
        // time, in call order.
        let mut live = self.live.lock().await;
        let session = match live.take() {
            Some(l) if l.sent < RECYCLE_AFTER => Ok(l),
            Some(l) => {
                l.end().await;
                self.spawn()
            }
            None => self.spawn(),
        };
        let session_error = match session {
            Ok(mut l) => match l.commit(&line, self.answer_within).await {
                Ok(Answer::Committed) => {
                    *live = Some(l);
                    self.broken_in_a_row.store(0, Ordering::Relaxed);
                    return Ok(Delivery::Session);
                }
                Ok(Answer::Refused(said)) => {
                    *live = Some(l);
                    self.broken_in_a_row.store(0, Ordering::Relaxed);
                    return Err(Error::invalid("apply", "nft -i", said));
                }
                Err(e) => {
                    // Reaped before the fallback: nothing it held can land after it.
                    l.end().await;
                    e.to_string()
                }
            },
            Err(e) => format!("could not start: {e}"),
        };
        self.broken_in_a_row.fetch_add(1, Ordering::Relaxed);
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.oneshot(script).await?;
        Ok(Delivery::OneShot {
            session_error: Some(session_error),
        })
    }

    async fn oneshot(&self, script: &str) -> Result<()> {
        let (program, args) = &self.oneshot_cmd;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exec::run(self.nft.netns(), program, &args, Some(script))
            .await
            .map(|_| ())
    }

    fn spawn(&self) -> Result<Live> {
        let (program, args) = &self.session_cmd;
        let std_cmd = match self.nft.netns() {
            Some(path) => Netns::open(path)?.command(program)?,
            None => std::process::Command::new(program),
        };
        let mut cmd = tokio::process::Command::from(std_cmd);
        // nft's interactive mode reads and writes its line history in $HOME: not ours to touch.
        cmd.args(args).env("HOME", "/nonexistent");
        let live = Live::spawn(cmd, format!("{program} {}", args.join(" ")))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(live)
    }

    /// Test hook: other commands for the session and the one-shot.
    #[cfg(test)]
    fn with_commands(
        session: (&str, &[&str]),
        oneshot: (&str, &[&str]),
        answer_within: Duration,
    ) -> NftSession {
        let own = |(p, a): (&str, &[&str])| {
            (
                p.to_string(),
                a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        NftSession {
            session_cmd: own(session),
            oneshot_cmd: own(oneshot),
            answer_within,
            ..NftSession::new(Nft::new(None))
        }
    }
}

/// `script` as one line of `;`-separated commands, or None when it is not for a session: it
/// has blocks (a line ending in `{` or starting with `}`), or it is too long.
fn one_line(script: &str) -> Option<String> {
    if script.len() > SESSION_MAX_SCRIPT {
        return None;
    }
    let mut commands = Vec::new();
    for l in script.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.ends_with('{') || l.starts_with('}') || l.contains(" #") {
            return None;
        }
        commands.push(l.trim_end_matches(';'));
    }
    Some(commands.join("; "))
}

/// What nft answered to one batch.
enum Answer {
    Committed,
    /// nft's error: the batch was not applied.
    Refused(String),
}

/// A running `nft -i`.
#[derive(Debug)]
struct Live {
    /// `kill_on_drop`: dropping the session ends nft.
    child: Child,
    stdin: ChildStdin,
    stderr: Lines<BufReader<ChildStderr>>,
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
        let (Some(stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::invalid("run", &what, "no stdio pipes"));
        };
        // Nothing we send prints to stdout; drained all the same so nft never blocks on it.
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        Ok(Live {
            child,
            stdin,
            stderr: BufReader::new(stderr).lines(),
            sent: 0,
            what,
        })
    }

    /// Writes `line` and a marker, and waits (at most `within`) for the marker to come back.
    async fn commit(&mut self, line: &str, within: Duration) -> Result<Answer> {
        self.sent += 1;
        let marker = marker(self.sent);
        let text = format!("{line}\n{marker}\n");
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
            let mut said: Vec<String> = Vec::new();
            let mut size = 0;
            loop {
                match self.stderr.next_line().await {
                    Ok(Some(l)) if l.trim() == marker => return Ok(said),
                    Ok(Some(l)) => {
                        size += l.len();
                        if size > ANSWER_MAX {
                            return Err(Error::invalid("read", &what, "endless error output"));
                        }
                        said.push(l);
                    }
                    Ok(None) => return Err(Error::invalid("read", &what, "nft exited")),
                    Err(e) => return Err(Error::os("read from", &what, e)),
                }
            }
        };
        let said = match tokio::time::timeout(within, exchange).await {
            Ok(Ok(said)) => said,
            Ok(Err(e)) => {
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => format!(" ({s})"),
                    _ => String::new(),
                };
                return Err(Error::invalid("run", &self.what, format!("{e}{status}")));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "run",
                    &self.what,
                    format!("batch {} not answered within {within:?}", self.sent),
                ));
            }
        };
        // The marker's own error is the last `Error:` line; the caret line under the previous
        // marker, if any, leads.
        let errors = said.iter().filter(|l| l.contains("Error:")).count();
        if errors <= 1 {
            return Ok(Answer::Committed);
        }
        let last_error = said.iter().rposition(|l| l.contains("Error:")).unwrap_or(0);
        let message: Vec<&str> = said[..last_error]
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().chars().all(|c| c == '^' || c == '~'))
            .collect();
        Ok(Answer::Refused(message.join("\n").trim().to_string()))
    }

    /// Kills nft and waits for it to be gone (bounded).
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

    /// A stand-in for `nft -i`: a marker line gets nft's answer to a non-command (on stderr:
    /// the error, the line, a caret); a line with BAD gets an error and is not applied; HANG
    /// stops answering; DIE exits; every other line is appended to `$LOG`.
    const TOOL: &str = r#"
        while IFS= read -r l; do
          case "$l" in
            trellis-ack-*) printf 'Error: syntax error, unexpected newline, expecting string\n%s\n      ^\n' "$l" >&2 ;;
            *BAD*) printf 'Error: Could not process rule: No such file or directory\n%s\n   ^^^\n' "$l" >&2 ;;
            *HANG*) sleep 30 ;;
            *DIE*) exit 1 ;;
            *) printf '%s\n' "$l" >> "$LOG" ;;
          esac
        done
    "#;

    struct Fixture {
        dir: std::path::PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir()
                .join(format!("trellis-nft-session-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Fixture { dir }
        }
        fn session(&self, within: Duration) -> NftSession {
            let tool = format!("LOG={} ; {TOOL}", self.dir.join("session.log").display());
            let oneshot = format!("cat >> {}", self.dir.join("oneshot.log").display());
            NftSession::with_commands(("sh", &["-c", &tool]), ("sh", &["-c", &oneshot]), within)
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

    #[tokio::test]
    async fn each_script_is_one_line_acknowledged_through_one_process() {
        let f = Fixture::new("ack");
        let s = f.session(Duration::from_secs(10));
        for i in 0..5 {
            let script = format!("flush chain ip t c{i}\nadd rule ip t c{i} counter\n");
            assert_eq!(s.apply(&script).await.unwrap(), Delivery::Session);
            // Acknowledged means nft got past the line: one line, one transaction.
            assert!(f.log("session").contains(&format!(
                "flush chain ip t c{i}; add rule ip t c{i} counter\n"
            )));
        }
        assert_eq!((s.sessions_started(), s.fallbacks()), (1, 0));
        assert!(f.log("oneshot").is_empty());
    }

    #[tokio::test]
    async fn a_refused_batch_is_reported_and_the_session_goes_on() {
        let f = Fixture::new("refused");
        let s = f.session(Duration::from_secs(10));
        s.apply("add rule ip t c ok\n").await.unwrap();
        let pid = s.pid().await.unwrap();
        let e = s.apply("add rule ip t c BAD\n").await.unwrap_err();
        assert!(e.to_string().contains("No such file or directory"), "{e}");
        assert!(!e.to_string().contains("trellis-ack"), "{e}");
        assert!(!f.log("session").contains("BAD"));
        // Not a broken session: no fallback (which would apply it again), same process.
        assert!(f.log("oneshot").is_empty());
        assert_eq!(
            s.apply("add rule ip t c after\n").await.unwrap(),
            Delivery::Session
        );
        assert_eq!(s.pid().await.unwrap(), pid);
        assert_eq!(s.fallbacks(), 0);
    }

    #[tokio::test]
    async fn a_session_killed_between_batches_costs_one_one_shot() {
        let f = Fixture::new("kill");
        let s = f.session(Duration::from_secs(10));
        s.apply("add rule ip t c a\n").await.unwrap();
        let pid = s.pid().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let d = s.apply("add rule ip t c b\n").await.unwrap();
        assert!(
            matches!(
                d,
                Delivery::OneShot {
                    session_error: Some(_)
                }
            ),
            "{d:?}"
        );
        assert!(f.log("oneshot").contains("add rule ip t c b\n"));
        assert_eq!(
            s.apply("add rule ip t c c\n").await.unwrap(),
            Delivery::Session
        );
        assert!(f.log("session").contains("add rule ip t c c\n"));
        assert_eq!((s.sessions_started(), s.fallbacks()), (2, 1));
    }

    #[tokio::test]
    async fn a_session_dying_on_a_batch_falls_back_with_the_whole_script() {
        let f = Fixture::new("die");
        let s = f.session(Duration::from_secs(10));
        let d = s
            .apply("add rule ip t c x\nadd rule ip t c DIE\n")
            .await
            .unwrap();
        let Delivery::OneShot {
            session_error: Some(e),
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(e.contains("nft exited"), "{e}");
        // The one-shot gets the script as it was, lines and all.
        assert!(
            f.log("oneshot")
                .contains("add rule ip t c x\nadd rule ip t c DIE\n")
        );
        assert!(s.pid().await.is_none(), "the broken session is gone");
    }

    #[tokio::test]
    async fn a_silent_session_is_given_up_after_the_bound_and_reaped() {
        let f = Fixture::new("hang");
        let s = f.session(Duration::from_millis(300));
        s.apply("add rule ip t c a\n").await.unwrap();
        let pid = s.pid().await.unwrap();
        let t = std::time::Instant::now();
        let d = s.apply("add rule ip t c HANG\n").await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let Delivery::OneShot {
            session_error: Some(e),
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(e.contains("not answered"), "{e}");
        // Reaped, not just signalled: no process of that id any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(f.log("oneshot").contains("HANG"));
    }

    #[tokio::test]
    async fn blocks_and_big_scripts_go_one_shot_without_a_session() {
        let f = Fixture::new("blocks");
        let s = f.session(Duration::from_secs(10));
        let block = "table ip t {\n  chain c {\n  }\n}\n";
        assert_eq!(
            s.apply(block).await.unwrap(),
            Delivery::OneShot {
                session_error: None
            }
        );
        let big = "add rule ip t c counter\n".repeat(SESSION_MAX_SCRIPT / 20);
        assert!(matches!(
            s.apply(&big).await.unwrap(),
            Delivery::OneShot {
                session_error: None
            }
        ));
        assert_eq!((s.sessions_started(), s.fallbacks()), (0, 0));
        assert!(f.log("oneshot").starts_with(block));
    }

    #[tokio::test]
    async fn a_tool_that_cannot_start_is_given_up_after_a_few_tries() {
        let f = Fixture::new("nostart");
        let oneshot = format!("cat >> {}", f.dir.join("oneshot.log").display());
        let s = NftSession::with_commands(
            ("/nonexistent/nft", &[]),
            ("sh", &["-c", &oneshot]),
            Duration::from_secs(1),
        );
        for i in 0..5 {
            let d = s.apply("add rule ip t c x\n").await.unwrap();
            let tried = i < GIVE_UP_AFTER;
            assert_eq!(
                matches!(
                    d,
                    Delivery::OneShot {
                        session_error: Some(_)
                    }
                ),
                tried,
                "{i}: {d:?}"
            );
        }
        assert_eq!(s.fallbacks(), GIVE_UP_AFTER);
        assert_eq!(f.log("oneshot").matches("add rule").count(), 5);
    }

    #[test]
    fn commands_are_joined_into_one_line() {
        assert_eq!(
            one_line("add set ip t s { type ipv4_addr; flags dynamic,timeout; timeout 60s; }\nflush chain ip t c\n\n").unwrap(),
            "add set ip t s { type ipv4_addr; flags dynamic,timeout; timeout 60s; }; flush chain ip t c"
        );
        assert_eq!(one_line("").unwrap(), "");
        assert!(one_line("table ip t {\n}\n").is_none());
    }
}
