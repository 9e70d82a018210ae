//! The network modes `trellis up` can build, the manifests it applies (the same files as
//! `deploy/<mode>.yaml`, which any cluster can `kubectl apply`), and a small `apply` for them.

use std::path::Path;

use anyhow::{Context, bail};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

/// A network mode: its manifest, its CNI plugin and its IPAM pool. A new mode is one variant
/// here and one file in `deploy/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// flannel-like: a bridge per node, VXLAN between nodes (`deploy/overlay.yaml`).
    Overlay,
    /// calico-like: /32 pods on routed veths, BGP between nodes (`deploy/routed.yaml`).
    Routed,
    /// canal-like: /32 pods on routed veths, VXLAN between nodes (`deploy/canal.yaml`).
    Canal,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Overlay => "overlay",
            Mode::Routed => "routed",
            Mode::Canal => "canal",
        }
    }

    /// The mode's manifest, as shipped in `deploy/`.
    pub fn manifest(self) -> &'static str {
        match self {
            Mode::Overlay => include_str!("../../../deploy/overlay.yaml"),
            Mode::Routed => include_str!("../../../deploy/routed.yaml"),
            Mode::Canal => include_str!("../../../deploy/canal.yaml"),
        }
    }

    /// The CNI plugin binaries the mode's conflist names.
    pub fn plugins(self) -> &'static [&'static str] {
        match self {
            Mode::Overlay => &["trellis-overlay", "trellis-ipam"],
            Mode::Routed => &["trellis-routed", "trellis-ipam"],
            Mode::Canal => &["trellis-canal", "trellis-ipam"],
        }
    }

    /// `trellis ipam pool create <these>`: the pool the nodes' blocks come from.
    pub fn pool_args(self) -> &'static [&'static str] {
        match self {
            Mode::Overlay => &["--cidr", super::POD_CIDR, "--block-size", "24"],
            Mode::Routed | Mode::Canal => &["--cidr", super::POD_CIDR, "--block-size", "26"],
        }
    }
}

/// The node paths the manifests mount as hostPath volumes (`/etc/cni/net.d`, `/run/trellis`)
/// and reach as `$(TRELLIS_ROOT)<path>`: `up`'s nodes keep them under their own directory.
const NODE_PATHS: &[&str] = &["/etc/cni/net.d", "/run/trellis"];

/// The mode's manifest as `trellis up` applies it. `TRELLIS_ROOT` — empty on a real node — is
/// `<nodes_dir>/$(NODE_NAME)`, the node's own directory, since `up`'s nodes share one file
/// system. With the process runtime (`image` None: no image, the command runs on the host)
/// every container command `trellis …` runs `exe`. With an image runtime the command stays
/// (the image has `trellis` on its PATH) and the containers see the node directories at the
/// same paths as the host does (a hostPath volume of `nodes_dir`), so the paths an agent writes
/// into the CNI configuration (its sockets, its state) mean the same to the plugins the
/// kubelet runs on the host; the manifest's own volumes of node paths (the machine's
/// `/etc/cni/net.d`, `/run/trellis`, which `up`'s nodes do not use) are left out.
pub fn for_up(
    mode: Mode,
    exe: &Path,
    nodes_dir: &Path,
    image: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(mode.manifest())
        .with_context(|| format!("parsing deploy/{}.yaml", mode.name()))?;
    let root = format!("{}/$(NODE_NAME)", nodes_dir.display());
    let mut out = Vec::new();
    for mut doc in docs {
        if doc.is_null() {
            continue;
        }
        let containers = doc
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            if let Some(first) = c.pointer_mut("/command/0")
                && *first == "trellis"
                && image.is_none()
            {
                *first = json!(exe.display().to_string());
            }
            for e in c
                .get_mut("env")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if e["name"] == "TRELLIS_ROOT" {
                    e["value"] = json!(root);
                }
            }
        }
        if let Some(image) = image
            && doc.pointer("/spec/template/spec").is_some()
        {
            drop_node_path_volumes(&mut doc);
            share_host_dir(&mut doc, "trellis-up-nodes", nodes_dir, image);
        }
        out.push(doc);
    }
    Ok(out)
}

/// Removes the pod template's hostPath volumes of [`NODE_PATHS`] and their mounts.
fn drop_node_path_volumes(doc: &mut Value) {
    let Some(spec) = doc.pointer_mut("/spec/template/spec") else {
        return;
    };
    let mut dropped = Vec::new();
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.retain(|v| {
            let node_path = v["hostPath"]["path"]
                .as_str()
                .is_some_and(|p| NODE_PATHS.contains(&p));
            if node_path {
                dropped.push(v["name"].clone());
            }
            !node_path
        });
    }
    for c in spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
            mounts.retain(|m| !dropped.contains(&m["name"]));
        }
    }
}

/// Gives every container of `doc`'s pod template (a Deployment's or DaemonSet's) the host
/// directory `dir` at the same path, as hostPath volume `name`, and runs them from `image`:
/// what an image runtime needs to see the files `up` keeps for it (node directories,
/// kubeconfigs, the demo's pages).
pub fn share_host_dir(doc: &mut Value, name: &str, dir: &Path, image: &str) {
    let Some(spec) = doc.pointer_mut("/spec/template/spec") else {
        return;
    };
    let path = dir.display().to_string();
    if !spec["volumes"].is_array() {
        spec["volumes"] = json!([]);
    }
    if let Some(vols) = spec["volumes"].as_array_mut() {
        vols.push(json!({"name": name, "hostPath": {"path": path, "type": "Directory"}}));
    }
    for c in spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        c["image"] = json!(image);
        // Built and imported locally: never pulled (`:latest` would default to Always).
        c["imagePullPolicy"] = json!("IfNotPresent");
        if !c["volumeMounts"].is_array() {
            c["volumeMounts"] = json!([]);
        }
        if let Some(mounts) = c["volumeMounts"].as_array_mut() {
            mounts.push(json!({"name": name, "mountPath": path}));
        }
    }
}

/// The API resource of a manifest object's kind (the kinds `up` applies), and whether it
/// is namespaced.
fn resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Service" => ("services", true),
        "Pod" => ("pods", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "DaemonSet" => ("daemonsets", true),
        "Deployment" => ("deployments", true),
        "NetworkPolicy" => ("networkpolicies", true),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        other => bail!("trellis up cannot apply a {other}"),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Creates each object (one that exists already is left as it is).
pub async fn apply(client: &kube::Client, docs: &[Value]) -> anyhow::Result<()> {
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let (ar, namespaced) = resource(api_version, kind)?;
        let api: Api<DynamicObject> = if namespaced {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let obj: DynamicObject = serde_json::from_value(doc.clone())
            .with_context(|| format!("{kind} {name} is not an object"))?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating {kind} {name}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each mode's manifest parses, runs `trellis` in hostNetwork DaemonSets, and `up`
    /// rewrites exactly the binary and the node root.
    #[test]
    fn every_mode_manifest_is_rewritten_for_up() {
        for mode in [Mode::Overlay, Mode::Routed, Mode::Canal] {
            let docs = for_up(mode, Path::new("/x/trellis"), Path::new("/s/nodes"), None).unwrap();
            let sets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
            assert_eq!(sets.len(), 2, "{mode:?}: the agent and policyd");
            for ds in sets {
                let spec = &ds["spec"]["template"]["spec"];
                assert_eq!(spec["hostNetwork"], true);
                let c = &spec["containers"][0];
                assert_eq!(c["command"][0], "/x/trellis");
                let env = c["env"].as_array().unwrap();
                let root = env.iter().find(|e| e["name"] == "TRELLIS_ROOT").unwrap();
                assert_eq!(root["value"], "/s/nodes/$(NODE_NAME)");
            }
            for d in &docs {
                resource(
                    d["apiVersion"].as_str().unwrap(),
                    d["kind"].as_str().unwrap(),
                )
                .unwrap();
            }
            // The shipped file itself still says `trellis` and an empty root.
            assert!(mode.manifest().contains("- trellis\n"));
        }
    }

    /// With an image runtime the command stays `trellis` (the image's), the node directories
    /// are shared at their own path, and the machine's node paths are not mounted.
    #[test]
    fn with_an_image_the_containers_see_the_node_directories_at_the_hosts_paths() {
        for mode in [Mode::Overlay, Mode::Routed, Mode::Canal] {
            let docs = for_up(
                mode,
                Path::new("/x/trellis"),
                Path::new("/s/nodes"),
                Some("trellis:latest"),
            )
            .unwrap();
            for ds in docs.iter().filter(|d| d["kind"] == "DaemonSet") {
                let spec = &ds["spec"]["template"]["spec"];
                let vols = spec["volumes"].as_array().unwrap();
                let nodes = vols
                    .iter()
                    .find(|v| v["name"] == "trellis-up-nodes")
                    .unwrap();
                assert_eq!(nodes["hostPath"]["path"], "/s/nodes");
                assert!(
                    vols.iter()
                        .all(|v| !NODE_PATHS.contains(&v["hostPath"]["path"].as_str().unwrap())),
                    "{mode:?}: {vols:?}"
                );
                assert!(
                    vols.iter()
                        .any(|v| v["hostPath"]["path"] == "/run/xtables.lock"),
                    "the machine's xtables lock stays shared"
                );
                let c = &spec["containers"][0];
                assert_eq!(c["command"][0], "trellis");
                assert_eq!(c["image"], "trellis:latest");
                let mounts = c["volumeMounts"].as_array().unwrap();
                assert!(
                    mounts
                        .iter()
                        .all(|m| vols.iter().any(|v| v["name"] == m["name"]))
                );
                assert!(
                    mounts
                        .iter()
                        .any(|m| m["name"] == "trellis-up-nodes" && m["mountPath"] == "/s/nodes")
                );
            }
        }
    }

    /// The definitions each manifest carries are the files their crates ship.
    #[test]
    fn the_manifests_carry_the_definitions_as_shipped() {
        let shipped = |file: &str| -> Vec<Value> {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
            docs.into_iter().filter(|d| !d.is_null()).collect()
        };
        let common = [
            "ipam/deploy/crds.yaml",
            "policyd/deploy/clusternetworkpolicy.yaml",
        ];
        for (mode, extra) in [
            (Mode::Overlay, None),
            (Mode::Canal, None),
            (
                Mode::Routed,
                Some("plugins/calico-like/deploy/bgp-crds.yaml"),
            ),
        ] {
            let docs: Vec<Value> = serde_saphyr::from_multiple(mode.manifest()).unwrap();
            for file in common.iter().copied().chain(extra) {
                for d in shipped(file) {
                    assert!(
                        docs.contains(&d),
                        "deploy/{}.yaml lacks {} as {file} has it",
                        mode.name(),
                        d["metadata"]["name"]
                    );
                }
            }
        }
    }
}
