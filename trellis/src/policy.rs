//! `trellis policy`: how an administrator isolates or opens a namespace. Each command writes
//! ordinary ClusterNetworkPolicy objects (`kubectl get clusternetworkpolicies` shows them; there is
//! no other state), which policyd on every node enforces:
//!
//! - `isolate NS`: `trellis-isolate-NS`, tier Baseline, priority 500: traffic into NS from other
//!   namespaces is denied, and a NetworkPolicy in NS can still allow it.
//! - `isolate NS --strict`: `trellis-isolate-strict-NS`, tier Admin, priority 500, the same rules:
//!   no NetworkPolicy can override it.
//! - `open NS`: deletes both.
//!
//! Each object carries the labels [`NAMESPACE_LABEL`] and [`MODE_LABEL`], which is how `status`
//! (and anyone with `kubectl get cnp -l …`) finds them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

/// The ClusterNetworkPolicy definition, as shipped for `kubectl apply -f`.
pub const CRD_YAML: &str = include_str!("../../policyd/deploy/clusternetworkpolicy.yaml");
const CRD_NAME: &str = "clusternetworkpolicies.policy.networking.k8s.io";
const GROUP: &str = "policy.networking.k8s.io";
const VERSION: &str = "v1alpha2";
const KIND: &str = "ClusterNetworkPolicy";
const PLURAL: &str = "clusternetworkpolicies";
/// The priority of both isolation policies (the middle of 0..=1000).
pub const PRIORITY: i64 = 500;
/// The namespace a `trellis policy isolate` object isolates.
pub const NAMESPACE_LABEL: &str = "policy.trellis.dev/isolated-namespace";
/// `plain` or `strict`.
pub const MODE_LABEL: &str = "policy.trellis.dev/isolation";
const NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// How long `isolate` waits for a definition it installed to be served.
const SERVED_WAIT: Duration = Duration::from_secs(20);

#[derive(clap::Args)]
#[command(
    after_help = "Each command writes ordinary ClusterNetworkPolicy objects \
    (policy.networking.k8s.io/v1alpha2; `kubectl get cnp` shows them), which policyd enforces \
    on every node. Evaluation order: Admin tier, NetworkPolicies, Baseline tier, then allow.\n\n\
    Examples:\n  \
    trellis policy isolate shop            # other namespaces denied; a NetworkPolicy in shop may allow them\n  \
    trellis policy isolate shop --strict   # denied, whatever NetworkPolicies say\n  \
    trellis policy open shop\n  \
    trellis policy status"
)]
pub struct Args {
    /// The cluster's kubeconfig (default, as kubectl: $KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Policy,
}

/// The `trellis policy` commands. A new command (such as `explain`, in its own module) is one
/// variant here and one arm in [`run`].
#[derive(Subcommand)]
pub enum Policy {
    /// Deny traffic into a namespace from every other namespace.
    ///
    /// Writes ClusterNetworkPolicy `trellis-isolate-NS` (tier Baseline, priority 500): the
    /// namespace's own pods are accepted, other namespaces denied, and a NetworkPolicy in the
    /// namespace can still allow them. With --strict, `trellis-isolate-strict-NS` (tier Admin,
    /// priority 500, the same rules), which no NetworkPolicy can override. Running it again
    /// changes nothing; --strict replaces a plain isolation and plain replaces a strict one.
    /// Installs the ClusterNetworkPolicy definition if the cluster lacks it, and says so.
    Isolate(IsolateArgs),
    /// Remove a namespace's isolation (both the plain and the strict policy).
    ///
    /// A namespace that is not isolated is not an error: the command says so and succeeds.
    Open(OpenArgs),
    /// Every namespace and its isolation: none, isolated or strict, and the policy doing it.
    ///
    /// A table of NAMESPACE, ISOLATION and POLICY. Isolation policies are found by their labels
    /// (policy.trellis.dev/isolated-namespace, policy.trellis.dev/isolation), or by name for
    /// ones written by hand.
    Status,
    /// Why a connection between two pods is allowed or denied: the tier, policy and rule of
    /// each side, and the deciding rules' packet counters (asks the node's policyd).
    Explain(crate::policy_explain::Args),
}

#[derive(clap::Args)]
pub struct IsolateArgs {
    /// The namespace to isolate.
    namespace: String,
    /// Isolate in the Admin tier, which no NetworkPolicy can override.
    #[arg(long)]
    strict: bool,
}

#[derive(clap::Args)]
pub struct OpenArgs {
    /// The namespace to open.
    namespace: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Policy::Explain(a) = args.command {
        return crate::policy_explain::run(a).await;
    }
    let client = trellis_api::cluster::client(args.kubeconfig.as_deref())
        .await
        .context("connecting to the cluster")?;
    match args.command {
        Policy::Isolate(a) => isolate(&client, &a.namespace, Mode::of(a.strict)).await,
        Policy::Open(a) => open(&client, &a.namespace).await,
        Policy::Status => status(&client).await,
        Policy::Explain(_) => unreachable!("answered above"),
    }
}

/// How a namespace is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Plain,
    Strict,
}

impl Mode {
    fn of(strict: bool) -> Mode {
        if strict { Mode::Strict } else { Mode::Plain }
    }

    fn other(self) -> Mode {
        match self {
            Mode::Plain => Mode::Strict,
            Mode::Strict => Mode::Plain,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Strict => "strict",
        }
    }

    /// What `status` prints.
    fn shown(self) -> &'static str {
        match self {
            Mode::Plain => "isolated",
            Mode::Strict => "strict",
        }
    }

    fn tier(self) -> &'static str {
        match self {
            Mode::Plain => "Baseline",
            Mode::Strict => "Admin",
        }
    }

    /// The policy's name for a namespace.
    pub fn policy_name(self, namespace: &str) -> String {
        match self {
            Mode::Plain => format!("trellis-isolate-{namespace}"),
            Mode::Strict => format!("trellis-isolate-strict-{namespace}"),
        }
    }
}

/// The ClusterNetworkPolicy that isolates `namespace`: its own namespace may reach it, every
/// other namespace is denied.
pub fn isolation_policy(namespace: &str, mode: Mode) -> Value {
    let this = json!({"matchLabels": {NAME_LABEL: namespace}});
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": KIND,
        "metadata": {
            "name": mode.policy_name(namespace),
            "labels": {
                "app.kubernetes.io/managed-by": "trellis",
                NAMESPACE_LABEL: namespace,
                MODE_LABEL: mode.label(),
            },
        },
        "spec": {
            "tier": mode.tier(),
            "priority": PRIORITY,
            "subject": {"namespaces": this},
            "ingress": [
                {"name": "accept-same-namespace", "action": "Accept", "from": [{"namespaces": this}]},
                {"name": "deny-other-namespaces", "action": "Deny", "from": [{"namespaces": {}}]},
            ],
        },
    })
}

fn policies(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &trellis_api::cluster::resource(GROUP, VERSION, KIND, PLURAL),
    )
}

fn definitions(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &trellis_api::cluster::resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    )
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn check_namespace_name(namespace: &str) -> anyhow::Result<()> {
    trellis_api::names::validate_dns1123_label(namespace)
        .with_context(|| format!("{namespace:?} is not a namespace name"))
}

/// Installs the ClusterNetworkPolicy definition if the cluster lacks it, and waits (bounded)
/// until it is served. Says so when it installs it.
async fn ensure_definition(client: &kube::Client) -> anyhow::Result<()> {
    let defs = definitions(client);
    if defs
        .get_opt(CRD_NAME)
        .await
        .context("reading the ClusterNetworkPolicy definition")?
        .is_some()
    {
        return Ok(());
    }
    let crd: DynamicObject =
        serde_saphyr::from_str(CRD_YAML).context("the embedded ClusterNetworkPolicy definition")?;
    match defs.create(&PostParams::default(), &crd).await {
        Ok(_) => println!(
            "installed the ClusterNetworkPolicy definition ({CRD_NAME}): it was not in the cluster"
        ),
        Err(e) if is_status(&e, 409) => {}
        Err(e) => {
            return Err(e).context(format!(
                "installing {CRD_NAME} (or apply policyd/deploy/clusternetworkpolicy.yaml)"
            ));
        }
    }
    let api = policies(client);
    let deadline = tokio::time::Instant::now() + SERVED_WAIT;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).context(format!(
                    "{CRD_NAME} is not served {SERVED_WAIT:?} after it was installed"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The namespace an existing object isolates, by its label (objects written by hand: by name).
fn isolated_by(obj: &DynamicObject) -> Option<(String, Mode)> {
    let labels = obj.metadata.labels.as_ref();
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    if let Some(ns) = labels.and_then(|l| l.get(NAMESPACE_LABEL)) {
        let mode = match labels.and_then(|l| l.get(MODE_LABEL)).map(String::as_str) {
            Some("strict") => Mode::Strict,
            _ => Mode::Plain,
        };
        return Some((ns.clone(), mode));
    }
    if let Some(ns) = name.strip_prefix("trellis-isolate-strict-") {
        return Some((ns.to_string(), Mode::Strict));
    }
    name.strip_prefix("trellis-isolate-")
        .map(|ns| (ns.to_string(), Mode::Plain))
}

async fn isolate(client: &kube::Client, namespace: &str, mode: Mode) -> anyhow::Result<()> {
    check_namespace_name(namespace)?;
    ensure_definition(client).await?;
    let namespaces: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &trellis_api::cluster::resource("", "v1", "Namespace", "namespaces"),
    );
    if namespaces
        .get_opt(namespace)
        .await
        .context("reading the namespace")?
        .is_none()
    {
        eprintln!(
            "warning: namespace {namespace} does not exist (yet); it is isolated once it does"
        );
    }
    let api = policies(client);
    let want: DynamicObject =
        serde_json::from_value(isolation_policy(namespace, mode)).context("building the policy")?;
    let name = mode.policy_name(namespace);
    let changed = match api.get_opt(&name).await.context("reading the policy")? {
        None => {
            api.create(&PostParams::default(), &want)
                .await
                .with_context(|| format!("creating ClusterNetworkPolicy {name}"))?;
            true
        }
        Some(have) => {
            if let Some((other, _)) = isolated_by(&have).filter(|(ns, _)| ns != namespace) {
                bail!(
                    "ClusterNetworkPolicy {name} exists and isolates namespace {other}: \
                     remove it first (trellis policy open {other})"
                );
            }
            let same = have.data.get("spec") == want.data.get("spec")
                && isolated_by(&have) == Some((namespace.to_string(), mode));
            if !same {
                let mut next = want.clone();
                next.metadata.resource_version = have.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &next)
                    .await
                    .with_context(|| format!("replacing ClusterNetworkPolicy {name}"))?;
            }
            !same
        }
    };
    let replaced = delete_if_present(&api, &mode.other().policy_name(namespace), namespace).await?;
    let how = match mode {
        Mode::Plain => "isolated (a NetworkPolicy in it can still allow other namespaces)",
        Mode::Strict => "strictly isolated (no NetworkPolicy can override it)",
    };
    let what = if changed || replaced {
        how.to_string()
    } else {
        format!("already {how}")
    };
    println!(
        "namespace {namespace}: {what}: ClusterNetworkPolicy {name} (tier {}, priority {PRIORITY})",
        mode.tier()
    );
    if replaced {
        println!(
            "removed ClusterNetworkPolicy {}",
            mode.other().policy_name(namespace)
        );
    }
    Ok(())
}

/// Deletes one of `namespace`'s isolation policies; whether it was there.
async fn delete_if_present(
    api: &Api<DynamicObject>,
    name: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    let Some(have) = api.get_opt(name).await.context("reading the policy")? else {
        return Ok(false);
    };
    // A name can belong to another namespace's isolation (`trellis-isolate-strict-x` is the
    // plain isolation of namespace `strict-x`): never delete that one.
    if isolated_by(&have).is_some_and(|(ns, _)| ns != namespace) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting ClusterNetworkPolicy {name}")),
    }
}

async fn open(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    check_namespace_name(namespace)?;
    let api = policies(client);
    let mut removed = Vec::new();
    for mode in [Mode::Plain, Mode::Strict] {
        let name = mode.policy_name(namespace);
        match delete_if_present(&api, &name, namespace).await {
            Ok(true) => removed.push(name),
            Ok(false) => {}
            // No definition: nothing is isolated.
            Err(e)
                if e.downcast_ref::<kube::Error>()
                    .is_some_and(|k| is_status(k, 404)) => {}
            Err(e) => return Err(e),
        }
    }
    if removed.is_empty() {
        println!("namespace {namespace} was not isolated: nothing to do");
    } else {
        println!(
            "namespace {namespace}: open (removed ClusterNetworkPolicy {})",
            removed.join(", ")
        );
    }
    Ok(())
}

async fn status(client: &kube::Client) -> anyhow::Result<()> {
    let namespaces: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &trellis_api::cluster::resource("", "v1", "Namespace", "namespaces"),
    );
    let mut rows: BTreeMap<String, Vec<(Mode, String)>> = namespaces
        .list(&ListParams::default())
        .await
        .context("listing namespaces")?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .map(|n| (n, Vec::new()))
        .collect();
    match policies(client).list(&ListParams::default()).await {
        Ok(list) => {
            for obj in list.items {
                if let Some((ns, mode)) = isolated_by(&obj) {
                    let name = obj.metadata.name.clone().unwrap_or_default();
                    rows.entry(ns).or_default().push((mode, name));
                }
            }
        }
        // The definition is not installed: nothing is isolated.
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(e).context("listing ClusterNetworkPolicies"),
    }
    print!("{}", status_table(&rows));
    Ok(())
}

/// NAMESPACE, ISOLATION, POLICY: the strictest isolation wins; every policy is listed.
fn status_table(rows: &BTreeMap<String, Vec<(Mode, String)>>) -> String {
    let lines: Vec<[String; 3]> = rows
        .iter()
        .map(|(ns, found)| {
            let isolation = found
                .iter()
                .map(|(m, _)| *m)
                .max()
                .map_or("none", Mode::shown);
            let mut names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
            names.sort_unstable();
            let policy = if names.is_empty() {
                "-".to_string()
            } else {
                names.join(",")
            };
            [ns.clone(), isolation.to_string(), policy]
        })
        .collect();
    let header = ["NAMESPACE", "ISOLATION", "POLICY"].map(String::from);
    let width = |i: usize| {
        std::iter::once(&header)
            .chain(&lines)
            .map(|l| l[i].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    std::iter::once(&header)
        .chain(&lines)
        .map(|l| format!("{:w0$}   {:w1$}   {}\n", l[0], l[1], l[2]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policies_are_the_contracts() {
        let p = isolation_policy("x", Mode::Plain);
        assert_eq!(p["metadata"]["name"], "trellis-isolate-x");
        assert_eq!(p["spec"]["tier"], "Baseline");
        assert_eq!(p["spec"]["priority"], 500);
        let this = json!({"matchLabels": {"kubernetes.io/metadata.name": "x"}});
        assert_eq!(p["spec"]["subject"], json!({"namespaces": this}));
        assert_eq!(
            p["spec"]["ingress"],
            json!([
                {"name": "accept-same-namespace", "action": "Accept", "from": [{"namespaces": this}]},
                {"name": "deny-other-namespaces", "action": "Deny", "from": [{"namespaces": {}}]},
            ])
        );
        let s = isolation_policy("x", Mode::Strict);
        assert_eq!(s["metadata"]["name"], "trellis-isolate-strict-x");
        assert_eq!(s["spec"]["tier"], "Admin");
        assert_eq!(s["spec"]["ingress"], p["spec"]["ingress"]);
    }

    #[test]
    fn the_embedded_definition_is_the_contracts_kind() {
        let crd: Value = serde_saphyr::from_str(CRD_YAML).unwrap();
        assert_eq!(crd["metadata"]["name"], CRD_NAME);
        assert_eq!(crd["spec"]["group"], GROUP);
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["kind"], KIND);
        assert_eq!(crd["spec"]["names"]["plural"], PLURAL);
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cnp"]));
        assert_eq!(crd["spec"]["versions"][0]["name"], VERSION);
    }

    #[test]
    fn names_and_labels_say_which_namespace_is_isolated() {
        let obj = |v: Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
        // `strict-x` isolated plainly has the name of `x` isolated strictly: labels decide.
        let plain = obj(isolation_policy("strict-x", Mode::Plain));
        assert_eq!(
            isolated_by(&plain),
            Some(("strict-x".to_string(), Mode::Plain))
        );
        let by_hand = obj(
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": KIND,
                                 "metadata": {"name": "trellis-isolate-strict-y"}}),
        );
        assert_eq!(isolated_by(&by_hand), Some(("y".to_string(), Mode::Strict)));
        let other = obj(
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": KIND,
                               "metadata": {"name": "deny-all"}}),
        );
        assert_eq!(isolated_by(&other), None);
    }

    #[test]
    fn status_prints_one_row_per_namespace() {
        let mut rows = BTreeMap::new();
        rows.insert("default".to_string(), vec![]);
        rows.insert(
            "x".to_string(),
            vec![(Mode::Plain, "trellis-isolate-x".to_string())],
        );
        rows.insert(
            "y".to_string(),
            vec![
                (Mode::Strict, "trellis-isolate-strict-y".to_string()),
                (Mode::Plain, "trellis-isolate-y".to_string()),
            ],
        );
        assert_eq!(
            status_table(&rows),
            "NAMESPACE   ISOLATION   POLICY\n\
             default     none        -\n\
             x           isolated    trellis-isolate-x\n\
             y           strict      trellis-isolate-strict-y,trellis-isolate-y\n"
        );
    }
}
