//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>`, and the resource lists of
//! each group version — names, kinds, verbs, short names, categories and subresources (with
//! `*/scale` as `autoscaling/v1 Scale`, which `kubectl scale` looks for).

use serde_json::{Value, json};
use trellis_api::resources::Subresource;

use crate::registry::Registry;

/// The Kubernetes version we answer as (the API surface we follow).
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-trellis.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "trellis",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

pub fn groups(registry: &Registry) -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": registry.groups().iter().map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>(),
    })
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let (g, versions) = registry.groups().into_iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(&g, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let served: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in &served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in &r.subresources {
            let (kind, verbs, gvk): (&str, &[&str], Option<(&str, &str)>) = match sub {
                Subresource::Status => (r.kind.as_str(), &["get", "patch", "update"], None),
                Subresource::Scale => (
                    "Scale",
                    &["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                Subresource::Binding => ("Binding", &["create"], None),
                Subresource::Log => ("Pod", &["get"], None),
                Subresource::Exec => ("PodExecOptions", &["create", "get"], None),
                Subresource::PortForward => ("PodPortForwardOptions", &["create", "get"], None),
                Subresource::Attach => ("PodAttachOptions", &["create", "get"], None),
                Subresource::Token => (
                    "TokenRequest",
                    &["create"],
                    Some(("authentication.k8s.io", "v1")),
                ),
            };
            let mut s = json!({
                "name": format!("{}/{}", r.plural, sub.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let Some((g, v)) = gvk {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            list.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_list_their_scale_subresource_as_autoscaling_v1() {
        let r = Registry::default();
        let doc = resources(&r, "apps", "v1").unwrap();
        let scale = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(
            (
                scale["group"].as_str(),
                scale["version"].as_str(),
                scale["kind"].as_str()
            ),
            (Some("autoscaling"), Some("v1"), Some("Scale"))
        );
        let deploy = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "deployments")
            .unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
    }

    #[test]
    fn resource_metrics_are_listed_read_only() {
        let doc = resources(&Registry::default(), "metrics.k8s.io", "v1beta1").unwrap();
        let list = doc["resources"].as_array().unwrap();
        let entry = |name: &str| list.iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(entry("nodes")["kind"], "NodeMetrics");
        assert_eq!(entry("nodes")["namespaced"], false);
        assert_eq!(entry("pods")["kind"], "PodMetrics");
        assert_eq!(entry("pods")["namespaced"], true);
        assert_eq!(entry("pods")["verbs"], json!(["get", "list"]));
        let groups = groups(&Registry::default());
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["preferredVersion"]["groupVersion"] == "metrics.k8s.io/v1beta1")
        );
    }

    #[test]
    fn groups_list_every_served_group() {
        let doc = groups(&Registry::default());
        let names: Vec<&str> = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        for g in [
            "apps",
            "batch",
            "autoscaling",
            "networking.k8s.io",
            "discovery.k8s.io",
            "coordination.k8s.io",
            "apiextensions.k8s.io",
        ] {
            assert!(names.contains(&g), "{g}");
        }
        assert!(resources(&Registry::default(), "nope", "v1").is_none());
    }
}
