//! Waiting for the API server at start. On a real node the API server can be away when a daemon
//! boots (the control plane is still starting, or is being restarted); upstream's kubelet keeps
//! retrying its registration and the network daemons wait for the API too. Every Trellis daemon
//! that needs an answer from the API before it can do its work runs that first step through
//! [`retry`]: a refused connection, a timeout or a 5xx/429 is retried with capped exponential
//! back-off, each failure logged once at warn; a permanent error (401/403, a certificate the
//! kubeconfig's CA does not trust, another 4xx) ends the wait at once, as looping on it would
//! only hide it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How long and how often a daemon waits for the API server at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiWait {
    /// The pause after the first failure; it doubles after each further one.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// Give up once this long has passed since the first failure; `None` waits forever (what
    /// upstream's kubelet does), `Some(ZERO)` gives up at the first failure.
    pub timeout: Option<Duration>,
}

impl Default for ApiWait {
    fn default() -> Self {
        ApiWait {
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
            timeout: None,
        }
    }
}

impl ApiWait {
    /// The default back-off with `--api-wait-timeout`'s value in seconds (`None`: forever).
    pub fn with_timeout_secs(secs: Option<u64>) -> Self {
        ApiWait {
            timeout: secs.map(Duration::from_secs),
            ..ApiWait::default()
        }
    }

    /// The pause before attempt `n + 1` after `n` failures (`n` ≥ 1).
    pub fn delay(&self, failures: u32) -> Duration {
        doubling(self.first, self.max, failures).max(Duration::from_millis(1))
    }
}

/// `first`, doubled after each further failure, at most `max`: the pause after failure `n`
/// (1-based; 0 counts as 1). The one exponential back-off the daemons share: the API wait
/// here, the kubelet's restart back-off, the Job controller's.
pub fn doubling(first: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    first.checked_mul(factor).unwrap_or(max).min(max)
}

/// The back-off of a watch whose list or watch request fails (for kube-runtime's
/// `WatchStreamExt::backoff`): [`ApiWait`]'s pauses, 200 ms doubling to 5 s. The count starts
/// over once no failure came for twice the longest pause, not on `reset()`: kube-runtime's
/// watcher yields an `Init` event before each list request, which resets a back-off on every
/// attempt (its default then retries about once a second for ever).
#[derive(Debug, Clone, Default)]
pub struct WatchBackoff {
    wait: ApiWait,
    failures: u32,
    last: Option<std::time::Instant>,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        let quiet = self.wait.max.saturating_mul(2);
        if self.last.is_some_and(|t| now.duration_since(t) > quiet) {
            self.failures = 0;
        }
        self.last = Some(now);
        self.failures = self.failures.saturating_add(1);
        Some(self.wait.delay(self.failures))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    /// Nothing: see the type's description.
    fn reset(&mut self) {}
}

/// Why [`retry`] returned without a value.
#[derive(Debug, thiserror::Error)]
pub enum WaitError<E> {
    /// The daemon was told to stop while it waited.
    #[error("stopped while waiting for the API server")]
    Stopped,
    /// An error that waiting would not cure.
    #[error("{0}")]
    Permanent(E),
    /// The API server did not answer within the wait's timeout.
    #[error(
        "the API server did not answer within {waited:?} ({attempts} attempts); last error: {last}"
    )]
    TimedOut {
        waited: Duration,
        attempts: u32,
        last: E,
    },
}

impl<E> WaitError<E> {
    /// The error as another type (e.g. a crate's own).
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> WaitError<F> {
        match self {
            WaitError::Stopped => WaitError::Stopped,
            WaitError::Permanent(e) => WaitError::Permanent(f(e)),
            WaitError::TimedOut {
                waited,
                attempts,
                last,
            } => WaitError::TimedOut {
                waited,
                attempts,
                last: f(last),
            },
        }
    }
}

/// Whether a kube-rs error is one the API server being away (or overloaded) explains: no
/// connection, a timeout, a 5xx, 429 or 408. 401/403 (wrong or unauthorised credentials), other
/// 4xx, a TLS certificate the kubeconfig's CA does not trust, and errors in the client's own
/// configuration are permanent.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || s.code == 408,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            !untrusted_certificate(e)
        }
        _ => false,
    }
}

/// Whether a TLS handshake failed on the peer's certificate somewhere in `e`'s sources (rustls'
/// errors reach us wrapped in `std::io::Error`, whose `source()` skips them).
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut depth = 0;
    while let Some(err) = cur
        && depth < 32
    {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(
            tls,
            Some(
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(_)
            )
        ) {
            return true;
        }
        cur = err.source();
        depth += 1;
    }
    false
}

/// Runs `attempt` until it succeeds, retrying the failures `transient` accepts with capped
/// exponential back-off. Each failure is logged at warn (what was tried, the error, the pause)
/// and handed to `on_failure` (e.g. to report not-ready with the reason); a success after
/// failures is logged at info. Ends with [`WaitError::Stopped`] as soon as `stop` resolves,
/// also in the middle of an attempt.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    wait: &ApiWait,
    transient: impl Fn(&E) -> bool,
    mut on_failure: impl FnMut(&E),
    stop: impl Future<Output = ()>,
    mut attempt: F,
) -> Result<T, WaitError<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    tokio::pin!(stop);
    let mut failures: u32 = 0;
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let result = tokio::select! {
            r = attempt() => r,
            _ = &mut stop => return Err(WaitError::Stopped),
        };
        let e = match result {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(
                        what,
                        attempts = failures + 1,
                        "the API server answered; going on"
                    );
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        if !transient(&e) {
            return Err(WaitError::Permanent(e));
        }
        failures = failures.saturating_add(1);
        let first = *since.get_or_insert_with(tokio::time::Instant::now);
        let waited = first.elapsed();
        if wait.timeout.is_some_and(|t| waited >= t) {
            return Err(WaitError::TimedOut {
                waited,
                attempts: failures,
                last: e,
            });
        }
        let mut pause = wait.delay(failures);
        if let Some(t) = wait.timeout {
            pause = pause
                .min(t.saturating_sub(waited))
                .max(Duration::from_millis(1));
        }
        tracing::warn!(what, attempt = failures, error = %e, retry_in = ?pause, "the API server is not answering; retrying");
        on_failure(&e);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut stop => return Err(WaitError::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum Fail {
        Away,
        Forbidden,
    }
    impl Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn quick(timeout: Option<Duration>) -> ApiWait {
        ApiWait {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            timeout,
        }
    }

    #[test]
    fn the_pause_doubles_from_first_up_to_max() {
        let w = ApiWait::default();
        let pauses: Vec<u64> = (1..=8).map(|n| w.delay(n).as_millis() as u64).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(w.delay(u32::MAX), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_api_answers() {
        let calls = AtomicU32::new(0);
        let mut seen = 0;
        let r = retry(
            "test",
            &quick(None),
            |e| *e == Fail::Away,
            |_| seen += 1,
            std::future::pending(),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 { Err(Fail::Away) } else { Ok(n) }
            },
        )
        .await;
        assert_eq!(r.ok(), Some(3));
        assert_eq!(seen, 3);
    }

    #[tokio::test]
    async fn a_permanent_error_ends_the_wait_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(
            "test",
            &quick(None),
            |e| *e == Fail::Away,
            |_| {},
            std::future::pending(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Fail::Forbidden)
            },
        )
        .await;
        assert!(matches!(r, Err(WaitError::Permanent(Fail::Forbidden))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_zero_timeout_gives_up_at_the_first_failure() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(
            "test",
            &quick(Some(Duration::ZERO)),
            |e| *e == Fail::Away,
            |_| {},
            std::future::pending(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Fail::Away)
            },
        )
        .await;
        assert!(matches!(
            r,
            Err(WaitError::TimedOut {
                attempts: 1,
                last: Fail::Away,
                ..
            })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stop_ends_the_wait() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let calls = AtomicU32::new(0);
        let r: Result<Result<(), _>, _> = tokio::time::timeout(
            Duration::from_secs(10),
            retry(
                "test",
                &quick(None),
                |e| *e == Fail::Away,
                // SIGTERM arrives while the daemon waits, after a few failures.
                |_| {
                    if calls.load(Ordering::SeqCst) >= 3
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(());
                    }
                },
                async move {
                    let _ = rx.await;
                },
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Fail::Away)
                },
            ),
        )
        .await;
        assert!(matches!(r, Ok(Err(WaitError::Stopped))), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_watch_backs_off_like_the_start_through_the_watchers_init_events() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let mut pauses = Vec::new();
        for _ in 0..7 {
            pauses.push(b.next().unwrap().as_millis() as u64);
            // The watcher's `Init` before its next list request.
            b.reset();
        }
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000]);
        // Quiet for longer than twice the longest pause: from the start again.
        b.last = Some(std::time::Instant::now() - Duration::from_secs(11));
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn kube_errors_are_classified() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        for code in [500, 502, 503, 504, 429, 408] {
            assert!(is_transient(&status(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(&status(code)), "{code}");
        }
        assert!(!is_transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }
}
