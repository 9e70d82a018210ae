//! ipamd's Prometheus metrics: allocations, failures, releases, write conflicts, allocation
//! latency (a histogram), and free addresses per pool (a gauge computed when scraped).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Metrics {
    allocations: AtomicU64,
    failures: AtomicU64,
    releases: AtomicU64,
    conflicts: AtomicU64,
    gc_freed: AtomicU64,
    rounds: AtomicU64,
    batched: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Free and total addresses of one pool, for the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFigures {
    pub pool: String,
    pub capacity: u64,
    pub allocated: u64,
}

impl Metrics {
    pub fn allocation<T>(&self, took: Duration, outcome: &Result<T, Error>) {
        match outcome {
            Ok(_) => self.allocations.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failures.fetch_add(1, Ordering::Relaxed),
        };
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            took.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn released(&self, n: usize) {
        self.releases.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// A round of the engine served `jobs` requests with one write per changed block.
    pub fn round(&self, jobs: usize) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.batched.fetch_add(jobs as u64, Ordering::Relaxed);
    }

    /// Rounds so far and the requests they served.
    pub fn rounds(&self) -> (u64, u64) {
        (
            self.rounds.load(Ordering::Relaxed),
            self.batched.load(Ordering::Relaxed),
        )
    }

    pub fn gc_freed(&self, n: usize) {
        self.gc_freed.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, node: &str, pools: &[PoolFigures]) -> String {
        let mut out = String::new();
        let node = escape(node);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {v}");
        };
        counter(
            &mut out,
            "trellis_ipam_allocations_total",
            "Allocate requests answered with addresses.",
            self.allocations(),
        );
        counter(
            &mut out,
            "trellis_ipam_failures_total",
            "Allocate requests answered with an error.",
            self.failures(),
        );
        counter(
            &mut out,
            "trellis_ipam_releases_total",
            "Addresses released.",
            self.releases.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trellis_ipam_write_conflicts_total",
            "Rounds in which a block write lost a compare-and-swap race.",
            self.conflicts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trellis_ipam_rounds_total",
            "Rounds of the engine (each writes every changed block once).",
            self.rounds.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trellis_ipam_round_requests_total",
            "Requests served by rounds (divided by rounds: the batch size).",
            self.batched.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trellis_ipam_gc_freed_total",
            "Addresses freed by garbage collection.",
            self.gc_freed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP trellis_ipam_free_addresses Addresses of a pool not allocated.\n# TYPE trellis_ipam_free_addresses gauge"
        );
        for p in pools {
            let _ = writeln!(
                out,
                "trellis_ipam_free_addresses{{pool=\"{}\"}} {}",
                escape(&p.pool),
                p.capacity.saturating_sub(p.allocated)
            );
        }
        let name = "trellis_ipam_allocation_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from an Allocate request to its answer.\n# TYPE {name} histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{node=\"{node}\",le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{node=\"{node}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{node=\"{node}\"}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{node=\"{node}\"}} {count}");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_histogram() {
        let m = Metrics::default();
        m.allocation::<()>(Duration::from_millis(3), &Ok(()));
        m.allocation::<()>(Duration::from_millis(30), &Err(Error::ShuttingDown));
        let text = m.render(
            "n1",
            &[PoolFigures {
                pool: "default".into(),
                capacity: 253,
                allocated: 3,
            }],
        );
        assert!(text.contains("trellis_ipam_allocations_total{node=\"n1\"} 1"));
        assert!(text.contains("trellis_ipam_failures_total{node=\"n1\"} 1"));
        assert!(text.contains("trellis_ipam_free_addresses{pool=\"default\"} 250"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
