//! `trellis policy isolate|open|status`, the real binary against a real API server (in-process),
//! with kubectl reading what it wrote: isolate installs the ClusterNetworkPolicy definition and
//! writes the contract's object, `kubectl get clusternetworkpolicies` shows it, status reports it,
//! --strict replaces plain and plain replaces strict, running a command twice changes nothing, and
//! open removes both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");
const KUBECTL: &str = "/usr/bin/kubectl";
/// Each command run gets this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(bin: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Out {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} did not finish in {RUN_TIMEOUT:?}",
                bin.display()
            )
        })
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Cluster {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Cluster {
    /// `trellis policy ARGS --kubeconfig …`, which must succeed.
    async fn policy(&self, args: &[&str]) -> String {
        let mut all = vec!["policy"];
        all.extend_from_slice(args);
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        all.extend_from_slice(&["--kubeconfig", &kc]);
        let out = run(Path::new(TRELLIS), &all, &[]).await;
        assert!(
            out.ok,
            "trellis {all:?} failed\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    async fn kubectl(&self, args: &[&str]) -> Out {
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        let cache = self.home.join("cache").to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", &kc, "--cache-dir", &cache];
        all.extend_from_slice(args);
        let gcloud = self.home.join("gcloud");
        run(
            Path::new(KUBECTL),
            &all,
            &[("HOME", &self.home), ("CLOUDSDK_CONFIG", &gcloud)],
        )
        .await
    }

    /// `kubectl get cnp -o json`: the items by name.
    async fn policies(&self) -> Vec<Value> {
        let out = self.kubectl(&["get", "cnp", "-o", "json"]).await;
        assert!(out.ok, "kubectl get cnp: {}", out.stderr);
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

fn names(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or_default())
        .collect()
}

/// The contract's rules: this namespace accepted, every other denied.
fn expect_isolation(obj: &Value, ns: &str, tier: &str) {
    let this = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    assert_eq!(obj["spec"]["tier"], tier, "{obj}");
    assert_eq!(obj["spec"]["priority"], 500, "{obj}");
    assert_eq!(obj["spec"]["subject"], json!({"namespaces": this}), "{obj}");
    let rules = obj["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{obj}");
    assert_eq!(
        (&rules[0]["action"], &rules[0]["from"]),
        (&json!("Accept"), &json!([{"namespaces": this}])),
        "{obj}"
    );
    assert_eq!(
        (&rules[1]["action"], &rules[1]["from"]),
        (&json!("Deny"), &json!([{"namespaces": {}}])),
        "{obj}"
    );
    assert!(obj["spec"].get("egress").is_none(), "{obj}");
}

/// The status table's row for a namespace, split in columns.
fn row<'a>(table: &'a str, ns: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&ns))
        .unwrap_or_else(|| panic!("no row for {ns}:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_status_strict_and_open_write_visible_policies() {
    assert!(
        Path::new(KUBECTL).is_file(),
        "kubectl not found at {KUBECTL}: this test reads the policies through kubectl"
    );
    let dir = tempfile::tempdir().unwrap();
    let running = trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .expect("the API server starts");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let c = Cluster {
        kubeconfig: running.kubeconfig.clone(),
        home,
    };
    let client = trellis_api::cluster::client(Some(&c.kubeconfig))
        .await
        .unwrap();
    let namespaces: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &trellis_api::cluster::resource("", "v1", "Namespace", "namespaces"),
    );
    for ns in ["x", "y"] {
        let obj = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .unwrap();
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }

    // Before anything: no definition, nothing isolated; open has nothing to do.
    let table = c.policy(&["status"]).await;
    assert_eq!(
        row(&table, "NAMESPACE"),
        ["NAMESPACE", "ISOLATION", "POLICY"]
    );
    assert_eq!(row(&table, "x"), ["x", "none", "-"]);
    let out = c.policy(&["open", "x"]).await;
    assert!(out.contains("namespace x was not isolated"), "{out}");

    // isolate: installs the definition (and says so), writes trellis-isolate-x.
    let out = c.policy(&["isolate", "x"]).await;
    assert!(
        out.contains("installed the ClusterNetworkPolicy definition"),
        "{out}"
    );
    assert!(out.contains("trellis-isolate-x"), "{out}");
    let items = c.policies().await;
    assert_eq!(names(&items), ["trellis-isolate-x"]);
    expect_isolation(&items[0], "x", "Baseline");
    let rv = items[0]["metadata"]["resourceVersion"].clone();

    let get = c.kubectl(&["get", "clusternetworkpolicies"]).await;
    assert!(get.ok, "{}", get.stderr);
    let header: Vec<&str> = get
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "TIER", "PRIORITY", "AGE"],
        "{}",
        get.stdout
    );
    assert_eq!(
        row(&get.stdout, "trellis-isolate-x")[..3],
        ["trellis-isolate-x", "Baseline", "500"],
        "{}",
        get.stdout
    );

    let table = c.policy(&["status"]).await;
    assert_eq!(row(&table, "x"), ["x", "isolated", "trellis-isolate-x"]);
    assert_eq!(row(&table, "y"), ["y", "none", "-"]);

    // Again: nothing changes (not even the resourceVersion), and the definition is not
    // installed twice.
    let out = c.policy(&["isolate", "x"]).await;
    assert!(out.contains("already isolated"), "{out}");
    assert!(!out.contains("installed the"), "{out}");
    let items = c.policies().await;
    assert_eq!(items[0]["metadata"]["resourceVersion"], rv);

    // --strict replaces the plain one.
    let out = c.policy(&["isolate", "x", "--strict"]).await;
    assert!(
        out.contains("removed ClusterNetworkPolicy trellis-isolate-x"),
        "{out}"
    );
    let items = c.policies().await;
    assert_eq!(names(&items), ["trellis-isolate-strict-x"]);
    expect_isolation(&items[0], "x", "Admin");
    let table = c.policy(&["status"]).await;
    assert_eq!(
        row(&table, "x"),
        ["x", "strict", "trellis-isolate-strict-x"]
    );

    // ... and plain replaces strict; y isolated alongside.
    c.policy(&["isolate", "x"]).await;
    c.policy(&["isolate", "y", "--strict"]).await;
    let items = c.policies().await;
    assert_eq!(
        names(&items),
        ["trellis-isolate-strict-y", "trellis-isolate-x"]
    );
    let table = c.policy(&["status"]).await;
    assert_eq!(row(&table, "x"), ["x", "isolated", "trellis-isolate-x"]);
    assert_eq!(
        row(&table, "y"),
        ["y", "strict", "trellis-isolate-strict-y"]
    );

    // open removes the isolation; a second open says there is none.
    let out = c.policy(&["open", "x"]).await;
    assert!(out.contains("namespace x: open"), "{out}");
    let out = c.policy(&["open", "x"]).await;
    assert!(out.contains("namespace x was not isolated"), "{out}");
    c.policy(&["open", "y"]).await;
    assert_eq!(names(&c.policies().await), Vec::<&str>::new());
    let table = c.policy(&["status"]).await;
    assert_eq!(row(&table, "x"), ["x", "none", "-"]);

    // A name that cannot be a namespace is refused, and says why.
    let kc = c.kubeconfig.to_string_lossy().into_owned();
    let out = run(
        Path::new(TRELLIS),
        &["policy", "isolate", "Not_A_Namespace", "--kubeconfig", &kc],
        &[],
    )
    .await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("is not a namespace name"),
        "{}",
        out.stderr
    );

    running.shutdown().await;
}
