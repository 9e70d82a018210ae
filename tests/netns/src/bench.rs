//! `cni-bench`: N sequential ADDs, then N DELs, of one network configuration, each pod in a fresh
//! namespace, the plugins run from a throwaway "host" namespace exactly as a runtime runs them
//! (through the libcni-style invoker). Two configurations run side by side give a ratio.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::Netns;

use crate::{Error, Result, Testbed};

/// Latency figures of one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (which need not be sorted).
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        let mut s = samples.to_vec();
        s.sort();
        let rank = |p: f64| {
            let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[i.clamp(1, s.len()) - 1]
        };
        (!s.is_empty()).then(|| Latency {
            p50: rank(50.0),
            p99: rank(99.0),
            max: rank(100.0),
        })
    }
}

/// The figures of one configuration.
#[derive(Debug, Clone)]
pub struct Figures {
    pub label: String,
    pub pods: usize,
    pub add: Latency,
    pub del: Latency,
}

/// One configuration to measure.
#[derive(Debug, Clone)]
pub struct Subject {
    pub label: String,
    /// `.conflist` or single-plugin `.conf` text; `@STATE@` is replaced by a scratch directory
    /// (host-local's dataDir, so the bench never writes to the machine's /var/lib/cni).
    pub config: String,
    pub plugin_dirs: Vec<PathBuf>,
}

/// Measures `subject` over `pods` pods in a testbed of its own.
pub async fn measure(subject: &Subject, pods: usize) -> Result<Figures> {
    let tb = Testbed::new()?;
    let state = tb.state_dir().join("state");
    std::fs::create_dir_all(&state).map_err(|e| Error::io("create bench state dir", e))?;
    let text = subject
        .config
        .replace("@STATE@", &state.display().to_string());
    let list = NetworkConfigList::from_slice(text.as_bytes())
        .or_else(|_| NetworkConfigList::from_single(text.as_bytes()))
        .map_err(|e| Error::Other(format!("{}: {e}", subject.label)))?;
    let host = tb.add_ns("host").await?;
    let mut pod_ns = Vec::with_capacity(pods);
    for i in 0..pods {
        pod_ns.push(tb.add_ns(&format!("p{i}")).await?);
    }
    let cni = CniConfig::new(subject.plugin_dirs.clone(), tb.state_dir().join("cache"));
    let label = subject.label.clone();
    // The invoker forks plugins from the calling thread, which must be in the host namespace:
    // one dedicated thread does the whole run there.
    let timings = host.run(move || run_all(&cni, &list, &pod_ns, &label))??;
    Ok(Figures {
        label: subject.label.clone(),
        pods,
        add: Latency::of(&timings.0).ok_or_else(|| Error::Other("no samples".into()))?,
        del: Latency::of(&timings.1).ok_or_else(|| Error::Other("no samples".into()))?,
    })
}

type Samples = (Vec<Duration>, Vec<Duration>);

fn run_all(
    cni: &CniConfig,
    list: &NetworkConfigList,
    pods: &[Arc<Netns>],
    label: &str,
) -> Result<Samples> {
    let rt = |i: usize, ns: &Netns| RuntimeConf {
        container_id: format!("bench-{i}"),
        netns: ns.path().to_path_buf(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args: Default::default(),
    };
    let mut adds = Vec::with_capacity(pods.len());
    for (i, ns) in pods.iter().enumerate() {
        let t = Instant::now();
        cni.add(list, &rt(i, ns))
            .map_err(|e| Error::Other(format!("{label}: ADD of pod {i}: {e}")))?;
        adds.push(t.elapsed());
    }
    let mut dels = Vec::with_capacity(pods.len());
    for (i, ns) in pods.iter().enumerate() {
        let t = Instant::now();
        cni.del(list, &rt(i, ns))
            .map_err(|e| Error::Other(format!("{label}: DEL of pod {i}: {e}")))?;
        dels.push(t.elapsed());
    }
    Ok((adds, dels))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The table `cni-bench` prints: one row per configuration and, with two, the ratio first/second.
pub fn table(figures: &[Figures]) -> String {
    let mut out = String::new();
    let pods = figures.first().map(|f| f.pods).unwrap_or(0);
    out.push_str(&format!(
        "cni-bench: {pods} pods, sequential ADD then DEL, each pod in a fresh netns\n"
    ));
    let width = figures
        .iter()
        .map(|f| f.label.len())
        .max()
        .unwrap_or(0)
        .max(12);
    out.push_str(&format!(
        "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}\n",
        "config", "ADD p50", "ADD p99", "ADD max", "DEL p50", "DEL p99", "DEL max"
    ));
    for f in figures {
        out.push_str(&format!(
            "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}\n",
            f.label,
            ms(f.add.p50),
            ms(f.add.p99),
            ms(f.add.max),
            ms(f.del.p50),
            ms(f.del.p99),
            ms(f.del.max)
        ));
    }
    if let [a, b] = figures {
        let r = |x: Duration, y: Duration| {
            format!("{:.2}x", x.as_secs_f64() / y.as_secs_f64().max(1e-9))
        };
        out.push_str(&format!(
            "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}\n",
            "ratio 1st/2nd",
            r(a.add.p50, b.add.p50),
            r(a.add.p99, b.add.p99),
            r(a.add.max, b.add.max),
            r(a.del.p50, b.del.p50),
            r(a.del.p99, b.del.p99),
            r(a.del.max, b.del.max)
        ));
    }
    out
}

/// Reads a configuration file for [`Subject::config`].
pub fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        let l = Latency::of(&s).unwrap();
        assert_eq!(l.p50, Duration::from_millis(100));
        assert_eq!(l.p99, Duration::from_millis(198));
        assert_eq!(l.max, Duration::from_millis(200));
        assert_eq!(
            Latency::of(&[Duration::from_millis(7)]).unwrap().p99,
            Duration::from_millis(7)
        );
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn two_configurations_print_a_ratio() {
        let l = |ms| Latency {
            p50: Duration::from_millis(ms),
            p99: Duration::from_millis(ms * 2),
            max: Duration::from_millis(ms * 3),
        };
        let f = |label: &str, ms| Figures {
            label: label.into(),
            pods: 10,
            add: l(ms),
            del: l(ms),
        };
        let t = table(&[f("ours", 5), f("reference", 20)]);
        assert!(t.contains("ratio 1st/2nd"), "{t}");
        assert!(t.contains("0.25x"), "{t}");
    }
}
