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
    /// Every ADD's latency in the order the pods were added (for scaling figures).
    pub add_samples: Vec<Duration>,
    /// Every DEL's latency, in order.
    pub del_samples: Vec<Duration>,
    /// With [`Teardown::AfterEachDel`]: every pod namespace's deletion right after its DEL (as
    /// the runtime does it), in order; empty otherwise.
    pub teardown_samples: Vec<Duration>,
}

/// What happens to a pod's namespace after its DEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Teardown {
    /// All namespaces stay until the end of the run (every DEL runs with its netns present).
    #[default]
    AtTheEnd,
    /// Each namespace is deleted right after its DEL, as containerd, CRI-O and our kubelet do:
    /// the kernel's asynchronous cleanup of what DEL left runs during the next DELs.
    AfterEachDel,
}

impl Figures {
    /// The figures of several runs of one configuration as one (their samples together, in
    /// order): a benchmark that alternates two configurations (A B B A) so that a machine
    /// whose load changes during the run hurts both alike.
    pub fn combine(parts: &[Figures]) -> Option<Figures> {
        let first = parts.first()?;
        let add_samples: Vec<Duration> = parts.iter().flat_map(|f| f.add_samples.clone()).collect();
        let del_samples: Vec<Duration> = parts.iter().flat_map(|f| f.del_samples.clone()).collect();
        let teardown_samples: Vec<Duration> = parts
            .iter()
            .flat_map(|f| f.teardown_samples.clone())
            .collect();
        Some(Figures {
            label: first.label.clone(),
            pods: parts.iter().map(|f| f.pods).sum(),
            add: Latency::of(&add_samples)?,
            del: Latency::of(&del_samples)?,
            add_samples,
            del_samples,
            teardown_samples,
        })
    }
}

/// One configuration to measure.
#[derive(Debug, Clone)]
pub struct Subject {
    pub label: String,
    /// `.conflist` or single-plugin `.conf` text; `@STATE@` is replaced by a scratch directory
    /// (host-local's dataDir, so the bench never writes to the machine's /var/lib/cni).
    pub config: String,
    pub plugin_dirs: Vec<PathBuf>,
    /// Files written under the scratch directory before the first pod (path relative to it,
    /// content): e.g. the readiness state an agent would have written.
    pub files: Vec<(PathBuf, String)>,
}

/// Measures `subject` over `pods` pods in a testbed of its own, every namespace kept until the
/// end.
pub async fn measure(subject: &Subject, pods: usize) -> Result<Figures> {
    measure_with(subject, pods, Teardown::AtTheEnd).await
}

/// Measures `subject` over `pods` pods in a testbed of its own, the pods' namespaces deleted as
/// `teardown` says.
pub async fn measure_with(subject: &Subject, pods: usize, teardown: Teardown) -> Result<Figures> {
    let tb = Testbed::new()?;
    let state = tb.state_dir().join("state");
    std::fs::create_dir_all(&state).map_err(|e| Error::io("create bench state dir", e))?;
    for (rel, content) in &subject.files {
        let path = state.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create bench file dir", e))?;
        }
        std::fs::write(
            &path,
            content.replace("@STATE@", &state.display().to_string()),
        )
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    }
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
    let run_dir = (teardown == Teardown::AfterEachDel).then(|| tb.run_dir().to_path_buf());
    // The invoker forks plugins from the calling thread, which must be in the host namespace:
    // one dedicated thread does the whole run there.
    let timings = host.run(move || run_all(&cni, &list, pod_ns, &label, run_dir.as_deref()))??;
    Ok(Figures {
        label: subject.label.clone(),
        pods,
        add: Latency::of(&timings.0).ok_or_else(|| Error::Other("no samples".into()))?,
        del: Latency::of(&timings.1).ok_or_else(|| Error::Other("no samples".into()))?,
        add_samples: timings.0,
        del_samples: timings.1,
        teardown_samples: timings.2,
    })
}

/// ADD, DEL and namespace-deletion latencies.
type Samples = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// With `teardown_in` (the testbed's run directory), each pod's namespace is deleted right
/// after its DEL, and our handle on it closed, so the kernel frees it at once.
fn run_all(
    cni: &CniConfig,
    list: &NetworkConfigList,
    pods: Vec<Arc<Netns>>,
    label: &str,
    teardown_in: Option<&Path>,
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
    let mut teardowns = Vec::new();
    for (i, ns) in pods.into_iter().enumerate() {
        let t = Instant::now();
        cni.del(list, &rt(i, &ns))
            .map_err(|e| Error::Other(format!("{label}: DEL of pod {i}: {e}")))?;
        dels.push(t.elapsed());
        if let Some(run_dir) = teardown_in {
            let t = Instant::now();
            Netns::delete(run_dir, &ns.name())?;
            drop(ns);
            teardowns.push(t.elapsed());
        }
    }
    Ok((adds, dels, teardowns))
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
        if let (Some(ta), Some(tb)) = (
            Latency::of(&a.teardown_samples),
            Latency::of(&b.teardown_samples),
        ) {
            out.push_str(&format!(
                "netns deletion right after each DEL, p50 / p99: {} {} / {}, {} {} / {}\n",
                a.label,
                ms(ta.p50),
                ms(ta.p99),
                b.label,
                ms(tb.p50),
                ms(tb.p99)
            ));
        }
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

/// How ADD latency grows with the pod count: the p50 of the first `window` ADDs (an almost
/// empty node) against the p50 of the last `window` (a full one), per configuration.
pub fn scaling(figures: &[Figures], window: usize) -> String {
    let mut out = String::new();
    for f in figures {
        let n = f.add_samples.len();
        if window == 0 || n < 2 * window {
            continue;
        }
        let (Some(first), Some(last)) = (
            Latency::of(&f.add_samples[..window]),
            Latency::of(&f.add_samples[n - window..]),
        ) else {
            continue;
        };
        out.push_str(&format!(
            "{}: ADD p50 of pods 1-{window}: {}; of pods {}-{n}: {}; ratio {:.2}x\n",
            f.label,
            ms(first.p50),
            n - window + 1,
            ms(last.p50),
            last.p50.as_secs_f64() / first.p50.as_secs_f64().max(1e-9)
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
            add_samples: Vec::new(),
            del_samples: Vec::new(),
            teardown_samples: Vec::new(),
        };
        let t = table(&[f("ours", 5), f("reference", 20)]);
        assert!(t.contains("ratio 1st/2nd"), "{t}");
        assert!(t.contains("0.25x"), "{t}");
    }

    #[test]
    fn scaling_compares_the_first_adds_with_the_last() {
        let mut f = Figures {
            label: "grows".into(),
            pods: 40,
            add: Latency::of(&[Duration::from_millis(1)]).unwrap(),
            del: Latency::of(&[Duration::from_millis(1)]).unwrap(),
            add_samples: (1..=40).map(Duration::from_millis).collect(),
            del_samples: Vec::new(),
            teardown_samples: Vec::new(),
        };
        let s = scaling(std::slice::from_ref(&f), 10);
        assert!(s.contains("pods 1-10"), "{s}");
        assert!(s.contains("pods 31-40"), "{s}");
        // p50 of 1..=10 ms is 5 or 6 ms, of 31..=40 is 35 or 36: about 6x.
        assert!(
            s.contains("ratio 6.") || s.contains("ratio 7.") || s.contains("ratio 5."),
            "{s}"
        );
        f.add_samples.truncate(15);
        assert!(
            scaling(&[f], 10).is_empty(),
            "too few samples for two windows"
        );
    }

    #[test]
    fn combined_runs_are_the_samples_of_both() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let run = |add: &[u64], del: &[u64]| Figures {
            label: "a".into(),
            pods: add.len(),
            add: Latency::of(&ms(add)).unwrap(),
            del: Latency::of(&ms(del)).unwrap(),
            add_samples: ms(add),
            del_samples: ms(del),
            teardown_samples: Vec::new(),
        };
        let both = Figures::combine(&[run(&[1, 2], &[10, 20]), run(&[3, 4], &[30, 40])]).unwrap();
        assert_eq!(both.pods, 4);
        assert_eq!(both.add_samples, ms(&[1, 2, 3, 4]));
        assert_eq!((both.add.p50, both.del.max), (ms(&[2])[0], ms(&[40])[0]));
        assert!(Figures::combine(&[]).is_none());
    }
}
