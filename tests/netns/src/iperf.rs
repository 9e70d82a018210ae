//! Throughput with iperf3 between two namespaces: the data-path benchmarks' measurement, and
//! the continuity verdict of the restart tests ("the stream never stalled"), which judges each
//! reporting interval against the stream's own median so that a test can also fail.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use trellis_net::Netns;

use crate::{Error, Result, Testbed};

/// Gbit/s received by an iperf3 server at `to` in `server` from a client in `client`, over
/// one TCP stream for `secs` seconds. Both ends run under the testbed's time limits.
pub async fn iperf(
    tb: &Testbed,
    server: &Netns,
    to: Ipv4Addr,
    client: &Netns,
    secs: u32,
) -> Result<f64> {
    let limit = Duration::from_secs(u64::from(secs) + 30);
    let pid = tb.spawn(server, &["iperf3", "-s", "-B", &to.to_string()], limit)?;
    if let Err(e) = wait_listening(server, 5201, Duration::from_secs(10)).await {
        tb.kill(pid);
        return Err(e);
    }
    let out = tb
        .exec(
            client,
            &[
                "iperf3",
                "-c",
                &to.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ],
            limit,
        )
        .await;
    tb.kill(pid);
    let out = out?;
    if !out.success() {
        return Err(Error::Other(format!(
            "iperf3 to {to}: {}{}",
            out.stdout, out.stderr
        )));
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|e| Error::Other(format!("iperf3's report: {e}")))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| Error::Other("iperf3 reported no received rate".into()))
}

/// One reporting interval of a stream: seconds since the stream started, and bytes carried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub start: f64,
    pub end: f64,
    pub bytes: f64,
}

impl Interval {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        let secs = self.end - self.start;
        if secs > 0.0 { self.bytes / secs } else { 0.0 }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}-{:.2} s: {:.1} Mbit/s",
            self.start,
            self.end,
            self.rate() * 8.0 / 1e6
        )
    }
}

/// iperf3 closes a stream with a short remainder interval; shorter ones are not judged.
const SHORTEST_JUDGED: f64 = 0.5;

/// Why [`judge`] failed a stream: typed, so a negative control can require the very failure it
/// provokes (a stall) and not pass on, say, a report too short to judge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Judgement {
    /// Fewer than three intervals of at least half a second: nothing can be concluded.
    #[error("only {judged} intervals to judge: {intervals:?}")]
    TooFew {
        judged: usize,
        intervals: Vec<Interval>,
    },
    /// Some intervals carried less than `fraction` of the median interval's rate: the stream
    /// dipped or stalled.
    #[error(
        "{} of {judged} intervals below {:.0} % of the median {:.1} Mbit/s: {}",
        weak.len(),
        fraction * 100.0,
        median * 8.0 / 1e6,
        weak.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    BelowMedian {
        judged: usize,
        fraction: f64,
        /// Bytes per second.
        median: f64,
        weak: Vec<Interval>,
    },
}

/// Judges a stream's continuity: every interval (of at least half a second) carried at least
/// `fraction` of the median interval's rate. The stream is its own yardstick, so the verdict
/// holds on a slow machine as on a fast one, and a stall of a second or more cannot pass.
/// Three judged intervals at least; the error lists every weak interval.
pub fn judge(intervals: &[Interval], fraction: f64) -> std::result::Result<(), Judgement> {
    let judged: Vec<Interval> = intervals
        .iter()
        .copied()
        .filter(|i| i.end - i.start >= SHORTEST_JUDGED)
        .collect();
    if judged.len() < 3 {
        return Err(Judgement::TooFew {
            judged: judged.len(),
            intervals: intervals.to_vec(),
        });
    }
    let median = median(judged.iter().map(Interval::rate).collect());
    let weak: Vec<Interval> = judged
        .iter()
        .copied()
        .filter(|i| i.rate() < fraction * median)
        .collect();
    if weak.is_empty() {
        Ok(())
    } else {
        Err(Judgement::BelowMedian {
            judged: judged.len(),
            fraction,
            median,
            weak,
        })
    }
}

/// The end of a stream whose intervals were judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client's report: what it sent.
    Sent,
    /// The server's log: what arrived.
    Received,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Sent => "sent",
            End::Received => "received",
        })
    }
}

/// Why [`judge_stream`] failed a stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamVerdict {
    /// The client's report could not be read.
    #[error("{0}")]
    Unreadable(String),
    /// iperf3 itself reported an error: the stream broke.
    #[error("the stream broke: {0}")]
    Broke(String),
    /// One end's intervals failed [`judge`].
    #[error("{end}: {judgement}")]
    Judged { end: End, judgement: Judgement },
}

impl StreamVerdict {
    /// The stream ran to its end but dipped or stalled: some interval at either end fell below
    /// the fraction of its median (not a broken or unreadable stream).
    pub fn is_stall(&self) -> bool {
        matches!(
            self,
            StreamVerdict::Judged {
                judgement: Judgement::BelowMedian { .. },
                ..
            }
        )
    }
}

/// A finished stream, as the client's JSON report (`iperf3 -c … -J`) tells it.
#[derive(Debug, Clone)]
pub struct Report {
    /// What the client sent, per interval.
    pub intervals: Vec<Interval>,
    /// iperf3's own error (the stream broke), if any.
    pub error: Option<String>,
}

impl Report {
    /// Reads the report from a log that may hold other lines before it.
    pub fn parse(log: &str) -> Result<Report> {
        let start = log
            .find('{')
            .ok_or_else(|| Error::Other(format!("no iperf3 report in: {log}")))?;
        let v: serde_json::Value = serde_json::from_str(&log[start..])
            .map_err(|e| Error::Other(format!("iperf3 report ({e}): {log}")))?;
        let intervals = v["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| Interval {
                start: i["sum"]["start"].as_f64().unwrap_or(0.0),
                end: i["sum"]["end"].as_f64().unwrap_or(0.0),
                bytes: i["sum"]["bytes"].as_f64().unwrap_or(0.0),
            })
            .collect();
        Ok(Report {
            intervals,
            error: v["error"].as_str().map(str::to_string),
        })
    }
}

/// Judges a finished stream at both ends ([`judge`] on what the client sent and on what the
/// server received, from their logs): an error if the stream broke or any interval at either end
/// fell below `fraction` of that end's median.
pub fn judge_stream(
    client_log: &str,
    server_log: &str,
    fraction: f64,
) -> std::result::Result<(), StreamVerdict> {
    let report = Report::parse(client_log).map_err(|e| StreamVerdict::Unreadable(e.to_string()))?;
    if let Some(e) = report.error {
        return Err(StreamVerdict::Broke(e));
    }
    let judged = |end, intervals: &[Interval]| {
        judge(intervals, fraction).map_err(|judgement| StreamVerdict::Judged { end, judgement })
    };
    judged(End::Sent, &report.intervals)?;
    judged(End::Received, &server_intervals(server_log))
}

/// The intervals an iperf3 server started with `-i 1 --forceflush` has printed so far (text
/// lines such as `[  5]   1.00-2.00   sec  23.8 MBytes   200 Mbits/sec`): what the receiving
/// end got, readable while the stream runs. The closing summary lines are left out.
pub fn server_intervals(log: &str) -> Vec<Interval> {
    log.lines()
        .filter(|l| l.starts_with('[') && !l.contains("sender") && !l.contains("receiver"))
        .filter_map(|l| {
            let rest = l.split_once(']')?.1;
            let mut words = rest.split_whitespace();
            let (from, to) = words.next()?.split_once('-')?;
            if words.next()? != "sec" {
                return None;
            }
            let amount: f64 = words.next()?.parse().ok()?;
            let unit = match words.next()? {
                "Bytes" => 1.0,
                "KBytes" => 1024.0,
                "MBytes" => 1024.0 * 1024.0,
                "GBytes" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some(Interval {
                start: from.parse().ok()?,
                end: to.parse().ok()?,
                bytes: amount * unit,
            })
        })
        .collect()
}

/// Waits until a socket listens on TCP `port` in `ns` (read from the namespace's own
/// `/proc/net/tcp`, so nothing connects to the server: an `iperf3 -s -1` would take a probe
/// for its one client).
pub async fn wait_listening(ns: &Netns, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let wanted = format!(":{port:04X}");
    loop {
        let table = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))?
            .map_err(|e| Error::io("read /proc/thread-self/net/tcp", e))?;
        // sl local_address rem_address st …; st 0A is LISTEN.
        let listening = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&wanted) && f[3] == "0A"
        });
        if listening {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("a listener on port {port} in {}", ns.name()),
                secs: limit.as_secs_f64(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The continuity tests run iperf3 at a raised priority: they judge the network path, and a
/// machine busy with other work must not stall the processes that measure it (a client left
/// without CPU for a second reports a dip the network never had).
const RAISED: [&str; 3] = ["nice", "-n", "-10"];

/// An iperf3 server in `ns` on `ip`, for one stream, that prints (and flushes) an interval each
/// second — with or without data — so [`server_intervals`] follows the stream while it runs.
/// Returns once it listens.
pub async fn start_server(tb: &Testbed, ns: &Netns, ip: Ipv4Addr) -> Result<i32> {
    let ip = ip.to_string();
    let mut argv = RAISED.to_vec();
    argv.extend(["iperf3", "-s", "-1", "-B", &ip, "-i", "1", "--forceflush"]);
    let pid = tb.spawn(ns, &argv, Duration::from_secs(90))?;
    wait_listening(ns, 5201, Duration::from_secs(10)).await?;
    Ok(pid)
}

/// An iperf3 client in `ns` sending one TCP stream to `to` for `secs` seconds at `rate` (e.g.
/// `200M`: paced, so the stream's median is the rate and a dip shows); its log ends with the
/// JSON report ([`Report::parse`]).
pub fn start_client(tb: &Testbed, ns: &Netns, to: Ipv4Addr, secs: u32, rate: &str) -> Result<i32> {
    let (to, secs) = (to.to_string(), secs.to_string());
    let mut argv = RAISED.to_vec();
    argv.extend(["iperf3", "-c", &to, "-t", &secs, "-b", rate, "-J"]);
    tb.spawn(ns, &argv, Duration::from_secs(90))
}

/// The median (the upper one for an even count); 0 for none.
/// A data-path benchmark's `main`: fails without root or iperf3, then runs `bench` to its end
/// or to Ctrl-C, which drops the run — and with it every namespace and process it made.
pub async fn bench_main(bench: impl std::future::Future<Output = ()>) {
    crate::require_root();
    crate::require_tool("iperf3", "iperf3");
    tokio::select! {
        () = bench => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `--name N` from the command line, else `default`.
pub fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    fn second(start: f64, mbytes: f64) -> Interval {
        Interval {
            start,
            end: start + 1.0,
            bytes: mbytes * 1e6,
        }
    }

    #[test]
    fn a_steady_stream_passes_and_a_stall_fails() {
        let steady: Vec<Interval> = (0..8).map(|i| second(f64::from(i), 25.0)).collect();
        assert_eq!(judge(&steady, 0.5), Ok(()));
        // One second at 40 %: not zero, and still a failure.
        let mut dipped = steady.clone();
        dipped[4].bytes = 10e6;
        let e = judge(&dipped, 0.5).unwrap_err();
        assert!(
            matches!(&e, Judgement::BelowMedian { judged: 8, weak, .. } if weak == &[dipped[4]]),
            "{e:?}"
        );
        let said = e.to_string();
        assert!(
            said.contains("1 of 8") && said.contains("4.00-5.00"),
            "{said}"
        );
        // A trailing remainder interval is not judged.
        let mut tail = steady.clone();
        tail.push(Interval {
            start: 8.0,
            end: 8.0004,
            bytes: 10.0,
        });
        assert_eq!(judge(&tail, 0.5), Ok(()));
        assert!(
            matches!(
                judge(&steady[..2], 0.5),
                Err(Judgement::TooFew { judged: 2, .. })
            ),
            "too short to judge"
        );
    }

    #[test]
    fn server_text_and_client_json_give_intervals() {
        let text = "Accepted connection from 10.244.1.2, port 40000\n\
            [  5] local 10.244.2.2 port 5201 connected to 10.244.1.2 port 40002\n\
            [ ID] Interval           Transfer     Bitrate\n\
            [  5]   0.00-1.00   sec  23.8 MBytes   200 Mbits/sec\n\
            [  5]   1.00-2.00   sec   512 KBytes  4.19 Mbits/sec\n\
            - - - - - - - - - - - - -\n\
            [  5]   0.00-2.00   sec  24.3 MBytes   102 Mbits/sec                  receiver\n";
        let got = server_intervals(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].start, 1.0);
        assert_eq!(got[1].bytes, 512.0 * 1024.0);
        let json = r#"noise {"intervals": [{"sum": {"start": 0, "end": 1.0, "bytes": 100}}], "error": "the server has terminated"}"#;
        let r = Report::parse(json).unwrap();
        assert_eq!(r.intervals[0].bytes, 100.0);
        assert_eq!(r.error.as_deref(), Some("the server has terminated"));
    }
}
