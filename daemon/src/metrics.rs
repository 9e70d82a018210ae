//! A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
//! text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Histogram buckets, seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    values: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Histogram>,
}

/// The metrics of one daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    fn with<R>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        f: impl FnOnce(&mut Family) -> R,
    ) -> R {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            values: BTreeMap::new(),
            histograms: BTreeMap::new(),
        });
        f(family)
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, pairs: &[(&str, &str)], by: f64) {
        self.with(name, help, Kind::Counter, |f| {
            *f.values.entry(labels(pairs)).or_default() += by
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.with(name, help, Kind::Gauge, |f| {
            f.values.insert(labels(pairs), value);
        });
    }

    /// Forgets every series of a gauge (before setting the current ones).
    pub fn clear(&self, name: &'static str) {
        if let Some(f) = self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(name)
        {
            f.values.clear();
        }
    }

    /// Records a duration in a histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        seconds: f64,
    ) {
        self.with(name, help, Kind::Histogram, |f| {
            let h = f.histograms.entry(labels(pairs)).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        });
    }

    /// The current value of a counter or gauge series (for tests and status output).
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)?
            .values
            .get(&labels(pairs))
            .copied()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, f) in families.iter() {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", f.help);
            let series = |l: &str| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{l}}}")
                }
            };
            for (l, v) in &f.values {
                let _ = writeln!(out, "{name}{} {v}", series(l));
            }
            for (l, h) in &f.histograms {
                let sep = if l.is_empty() { "" } else { "," };
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"{b}\"}} {}", h.counts[i]);
                }
                let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{} {}", series(l), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", series(l), h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind() {
        let m = Metrics::default();
        m.inc("x_total", "Things.", &[("result", "ok")], 1.0);
        m.inc("x_total", "Things.", &[("result", "ok")], 2.0);
        m.set("free", "Free addresses.", &[("pool", "a\"b")], 7.0);
        m.observe("lat_seconds", "Latency.", &[], 0.003);
        let text = m.render();
        assert!(
            text.contains("# TYPE x_total counter\nx_total{result=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("free{pool=\"a\\\"b\"} 7"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count 1"), "{text}");
        assert_eq!(m.value("x_total", &[("result", "ok")]), Some(3.0));
    }
}
