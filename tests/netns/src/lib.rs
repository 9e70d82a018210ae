//! The testbed: nodes, pods and outside hosts as network namespaces, and the tools the
//! integration tests share.
//!
//! - [`Testbed`]: an underlay bridge, nodes and pods under one unique name prefix, removed on
//!   drop (also when the test panics); commands and servers with time limits.
//! - [`leak`]: proof that nothing with a testbed's prefix remains.
//! - [`matrix`]: TCP/UDP/SCTP probe servers and parallel probing of a reachability matrix;
//!   [`policy_model`]: the independent model of NetworkPolicy and ClusterNetworkPolicy verdicts.
//! - [`cni_kit`]: the CNI conformance kit any plugin binary is run through.
//! - [`bench`]: `cni-bench`, the ADD/DEL latency yardstick.
//!
//! Tests need root. They fail — never skip — without it: [`require_root`].

pub mod bed;
pub mod bench;
pub mod bird;
pub mod cluster;
pub mod cni_kit;
pub mod cni_run;
pub mod containerd;
pub mod etcd;
pub mod frr;
pub mod handbuilt;
pub mod iperf;
pub mod kubectl_session;
pub mod leak;
pub mod matrix;
pub mod policy_model;
pub mod probe;
pub mod process;
pub mod snapshot;
pub mod unnumbered;

pub use bed::{Node, Testbed};
pub use process::Output;

use std::path::PathBuf;

/// An error of the testbed, naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Net(#[from] trellis_net::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {secs} s")]
    Timeout { what: String, secs: f64 },
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Panics (fails the test) unless running as root: these tests build namespaces, and a test that
/// quietly skips would let CI pass without testing anything.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces and must run as root (CI runs it as root; it never skips)"
    );
}

/// Waits until `done` holds, polling every 50 ms; fails the test, naming `what`, after
/// `limit`. Tests wait on conditions like this, never for a fixed while.
pub async fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The path of a tool the test needs, or a failure naming the package that provides it.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/lib/cni"];
    std::env::split_paths(&dirs)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs `{name}` (Debian package {package}); .ci/run installs it")
        })
}

/// A binary of this workspace (`trellis`, `trellis-overlay`, `trellis-ipam`, …), next to the
/// running test's own target directory. A missing one fails the test with how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo nextest run --workspace` (which builds every binary) or `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The directory of the workspace's binaries (a CNI_PATH entry for our plugins).
pub fn bin_dir() -> PathBuf {
    bin_path("trellis")
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";
