//! Running real kubectl binaries against a test server: the image's (1.33 against our
//! server) and Debian's 1.20, each with a private HOME and cache.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";
const KUBECTL_1_20: &str = "/opt/trellis/kubectl-1.20/usr/bin/kubectl";
/// Each kubectl run gets this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The kubectl of the image; `TRELLIS_KUBECTL` overrides the path.
pub fn kubectl_current() -> PathBuf {
    let path = std::env::var_os("TRELLIS_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| KUBECTL.into());
    assert!(
        path.is_file(),
        "kubectl not found at {}: install kubectl 1.33 (the image ships it as {KUBECTL}, \
         the Google Cloud SDK dispatcher), or point TRELLIS_KUBECTL at one",
        path.display()
    );
    path
}

/// Debian's kubectl 1.20; `TRELLIS_KUBECTL_1_20` overrides the path.
pub fn kubectl_1_20() -> PathBuf {
    let path = std::env::var_os("TRELLIS_KUBECTL_1_20")
        .map(PathBuf::from)
        .unwrap_or_else(|| KUBECTL_1_20.into());
    assert!(
        path.is_file(),
        "kubectl 1.20 not found at {}: get it with `cd /tmp && apt-get download kubernetes-client \
         && dpkg-deb -x kubernetes-client_*.deb /opt/trellis/kubectl-1.20`, or point \
         TRELLIS_KUBECTL_1_20 at a kubectl 1.20 binary",
        path.display()
    );
    path
}

/// One kubectl with a private HOME and cache, so discovery and OpenAPI caches never leak
/// between runs.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
    pub dir: PathBuf,
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(bin: PathBuf, kubeconfig: &Path, dir: &Path) -> Kubectl {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("create HOME");
        Kubectl {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            home,
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a manifest next to the kubectl's HOME and returns its path.
    pub fn manifest(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        path.to_string_lossy().into_owned()
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .args(args)
            .env("HOME", &self.home)
            .env("CLOUDSDK_CONFIG", self.home.join("gcloud"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {RUN_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts that the kubectl that runs against this server is release 1.`minor`, as
    /// `kubectl version -o json` reports its client. Asked with the server, because the image's
    /// kubectl is the Google Cloud SDK dispatcher (`--client` alone says `v1.32.4-dispatcher`),
    /// which runs the kubectl release matching the server's version.
    pub async fn assert_version(&self, minor: &str) {
        let run = self.ok(&["version", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("kubectl version -o json ({e}): {}", run.stdout));
        assert_eq!(
            (
                v["clientVersion"]["major"].as_str(),
                v["clientVersion"]["minor"].as_str()
            ),
            (Some("1"), Some(minor)),
            "{} is not the kubectl 1.{minor} this test claims: {v}",
            self.bin.display()
        );
    }

    /// Runs and requires success.
    pub async fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args).await;
        assert!(
            run.ok,
            "kubectl {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            tail(&run.stderr)
        );
        run
    }

    /// `kubectl get <what> -o json`.
    pub async fn get(&self, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        let run = self.ok(&args).await;
        serde_json::from_str(&run.stdout).expect("kubectl get -o json prints JSON")
    }
}

/// The end of a long (verbose) stderr, for assertion messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
