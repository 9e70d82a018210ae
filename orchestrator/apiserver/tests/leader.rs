//! Leader election (trellis_api::cluster::leader) against the API server: one of several
//! candidates leads, a clean stop hands over at once, a crashed leader is replaced only after the
//! lease duration, and a leader that cannot renew stops acting within its renew deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::TestServer;
use trellis_api::cluster::{LeaderElection, LeaderError};

/// Counts candidates acting now and the most that ever acted at once.
#[derive(Default)]
struct Acting {
    now: AtomicUsize,
    most: AtomicUsize,
    by: std::sync::Mutex<Vec<String>>,
}

struct ActingGuard(Arc<Acting>);

impl Drop for ActingGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Acting {
    /// What a component does while it leads: count itself in, then work until dropped.
    async fn lead(self: Arc<Self>, who: String) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        self.by.lock().unwrap().push(who);
        let _guard = ActingGuard(self.clone());
        std::future::pending::<()>().await;
    }

    fn leaders(&self) -> Vec<String> {
        self.by.lock().unwrap().clone()
    }
}

fn election(identity: &str) -> LeaderElection {
    let mut le = LeaderElection::new("test-component", identity);
    le.lease_duration = Duration::from_secs(4);
    le.renew_deadline = Duration::from_secs(3);
    le.retry_period = Duration::from_millis(500);
    le
}

type Candidate = (
    tokio::task::JoinHandle<Result<(), LeaderError>>,
    tokio::sync::oneshot::Sender<()>,
);

async fn candidate(s: &TestServer, acting: &Arc<Acting>, who: &str) -> Candidate {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = s.client().await;
    let acting = acting.clone();
    let who = who.to_string();
    let task = tokio::spawn(async move {
        election(&who)
            .run(
                client,
                async move {
                    let _ = stopped.await;
                },
                move || acting.lead(who),
            )
            .await
    });
    (task, stop)
}

async fn wait_leaders(acting: &Acting, n: usize, within: Duration) -> Duration {
    let start = Instant::now();
    while acting.leaders().len() < n {
        assert!(
            start.elapsed() < within,
            "leaders so far {:?}, waited {within:?} for {n}",
            acting.leaders()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_leads_and_a_clean_stop_hands_over_at_once() {
    let s = TestServer::start().await;
    let acting = Arc::new(Acting::default());
    let mut candidates = Vec::new();
    for who in ["a", "b", "c"] {
        candidates.push((who, candidate(&s, &acting, who).await));
    }
    wait_leaders(&acting, 1, Duration::from_secs(10)).await;
    // Two full lease durations with a healthy leader: nobody else takes over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(acting.leaders().len(), 1, "{:?}", acting.leaders());
    let first = acting.leaders()[0].clone();

    let i = candidates.iter().position(|(w, _)| *w == first).unwrap();
    let (_, (task, stop)) = candidates.remove(i);
    stop.send(()).unwrap();
    task.await.unwrap().expect("a clean stop is not an error");
    // Released, so a standby leads within a retry or two, well before the 4 s lease runs out.
    let took = wait_leaders(&acting, 2, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(4), "hand-over took {took:?}");
    assert_eq!(acting.most.load(Ordering::SeqCst), 1, "two acted at once");
    for (_, (task, stop)) in candidates {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
    s.stop().await;
}

/// The Lease's renewTime now.
async fn renew_time(s: &TestServer) -> String {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(s.client().await, "kube-system");
    let lease = leases.get("test-component").await.unwrap();
    let spec = lease.spec.unwrap_or_default();
    serde_json::to_string(&spec.renew_time).unwrap()
}

/// Reads of the Lease so far (the server's request counters) that no renewal explains: the
/// leader reads and writes once per renewal, a standby only reads. `own` reads were the test's.
/// While a renewal is between its read and its write this counts one too many.
async fn standby_reads(s: &TestServer, own: u64) -> u64 {
    let text = s
        .client()
        .await
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let count = |verb: &str| {
        let series =
            format!("apiserver_request_total{{verb=\"{verb}\",resource=\"leases\",code=\"200\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    count("get").saturating_sub(count("update") + own)
}

/// Waits (at most `within`) until the leader has renewed the Lease after the standby started
/// and the standby has read the Lease twice since (three more uncounted reads, as one may be a
/// renewal's): a standby's read is counted before it sends the next, so its second read began
/// after the renewal was written, and the standby has seen that renewal.
async fn standby_saw_a_renewal(s: &TestServer, within: Duration) {
    let deadline = Instant::now() + within;
    let mut own = 0;
    let first = renew_time(s).await;
    own += 1;
    loop {
        let now = renew_time(s).await;
        own += 1;
        if now != first {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reads = standby_reads(s, own).await;
    while standby_reads(s, own).await < reads + 3 {
        assert!(
            Instant::now() < deadline,
            "the standby did not read the Lease within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_the_lease_duration_and_not_before() {
    let s = TestServer::start().await;
    let acting = Arc::new(Acting::default());
    let (a, _a_stop) = candidate(&s, &acting, "a").await;
    wait_leaders(&acting, 1, Duration::from_secs(10)).await;
    let (b, b_stop) = candidate(&s, &acting, "b").await;
    // Let b observe one of a's renewals, then crash a: no release, like kill -9.
    standby_saw_a_renewal(&s, Duration::from_secs(10)).await;
    a.abort();
    let crashed = Instant::now();
    wait_leaders(&acting, 2, Duration::from_secs(15)).await;
    let gap = crashed.elapsed();
    // a's last renewal was at most one retry period before the crash (300 ms for its round trip
    // and timer lateness).
    assert!(
        gap >= Duration::from_millis(4000 - 500 - 300),
        "b took over {gap:?} after the crash, before the lease could have run out"
    );
    assert_eq!(acting.leaders(), ["a", "b"]);
    assert_eq!(acting.most.load(Ordering::SeqCst), 1, "two acted at once");
    b_stop.send(()).unwrap();
    b.await.unwrap().unwrap();
    s.stop().await;
}

/// A loopback TCP relay to the API server that the test can cut: every connection through it
/// is closed and new ones are refused, a deterministic partition of one client.
struct Partition {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn to(server: std::net::SocketAddr) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut cut_rx = cut_rx;
            loop {
                tokio::select! {
                    _ = cut_rx.changed() => {
                        // Dropping the set aborts every relayed connection; the listener goes too.
                        return;
                    }
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { return };
                        conns.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
        });
        Partition { addr, cut, task }
    }

    async fn cut(self) {
        let _ = self.cut.send(true);
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_acting_within_its_renew_deadline() {
    let s = TestServer::start().await;
    let relay = Partition::to(s.running.addr).await;
    let kubeconfig = std::fs::read_to_string(&s.running.kubeconfig)
        .unwrap()
        .replace(&s.running.addr.to_string(), &relay.addr.to_string());
    assert!(kubeconfig.contains(&relay.addr.to_string()), "{kubeconfig}");
    let client = support::client_from(&kubeconfig).await;
    let acting = Arc::new(Acting::default());
    let lead = acting.clone();
    let a = tokio::spawn(async move {
        election("a")
            .run(client, std::future::pending(), move || {
                lead.lead("a".into())
            })
            .await
    });
    wait_leaders(&acting, 1, Duration::from_secs(10)).await;
    assert_eq!(acting.now.load(Ordering::SeqCst), 1);
    relay.cut().await;
    let cut = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("the leader gave up within 10 s")
        .unwrap();
    let after = cut.elapsed();
    assert!(
        matches!(outcome, Err(LeaderError::Lost { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        acting.now.load(Ordering::SeqCst),
        0,
        "still acting after Lost"
    );
    // Renew deadline 3 s, lease 4 s: it stopped before any standby could have taken over.
    assert!(
        after < Duration::from_secs(4),
        "stopped only after {after:?}"
    );
    s.stop().await;
}
