//! What the server serves: the built-in resources, plus one resource per served version of each
//! CustomResourceDefinition in the store, with the printer columns that version defines.

use std::sync::RwLock;

use serde_json::Value;
use trellis_api::resources::{self, ResourceInfo, Subresource};

use crate::table::{self, CustomColumn, Printer};

pub struct Registry {
    builtin: Vec<ResourceInfo>,
    custom: RwLock<Vec<CustomResource>>,
}

/// A served version of a CustomResourceDefinition, and how `kubectl get` prints it.
struct CustomResource {
    info: ResourceInfo,
    columns: Vec<CustomColumn>,
    /// The version's `schema.openAPIV3Schema`, which its objects are checked against.
    schema: Option<Value>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            builtin: resources::builtin(),
            custom: RwLock::new(Vec::new()),
        }
    }
}

impl Registry {
    /// The resource at `/<group>/<version>/<plural>`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        let hit =
            |r: &&ResourceInfo| r.group == group && r.version == version && r.plural == plural;
        self.builtin.iter().find(hit).cloned().or_else(|| {
            self.custom_read()
                .iter()
                .map(|c| &c.info)
                .find(hit)
                .cloned()
        })
    }

    /// The resource of a kind in a group/version.
    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<ResourceInfo> {
        let hit = |r: &&ResourceInfo| r.group == group && r.version == version && r.kind == kind;
        self.builtin.iter().find(hit).cloned().or_else(|| {
            self.custom_read()
                .iter()
                .map(|c| &c.info)
                .find(hit)
                .cloned()
        })
    }

    /// How tables of this resource are printed: a built-in kind's printer, or a custom
    /// resource's printer columns (AGE alone for a version it does not serve).
    pub fn printer(&self, info: &ResourceInfo) -> Printer {
        if !info.custom {
            return Printer::builtin(info);
        }
        Printer::custom(
            self.custom_read()
                .iter()
                .find(|c| {
                    c.info.group == info.group
                        && c.info.version == info.version
                        && c.info.plural == info.plural
                })
                .map(|c| c.columns.clone()),
        )
    }

    /// The `openAPIV3Schema` of a served custom resource version (`None` for built-ins and for
    /// a version without schema).
    pub fn schema(&self, info: &ResourceInfo) -> Option<Value> {
        if !info.custom {
            return None;
        }
        self.custom_read()
            .iter()
            .find(|c| {
                c.info.group == info.group
                    && c.info.version == info.version
                    && c.info.plural == info.plural
            })
            .and_then(|c| c.schema.clone())
    }

    /// Every served resource: built-ins, then custom ones.
    pub fn all(&self) -> Vec<ResourceInfo> {
        let mut all = self.builtin.clone();
        all.extend(self.custom_read().iter().map(|c| c.info.clone()));
        all
    }

    /// The groups (core excluded) with their versions, the preferred version first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.all().into_iter().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version);
                    }
                }
                None => groups.push((r.group, vec![r.version])),
            }
        }
        groups
    }

    fn custom_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<CustomResource>> {
        self.custom.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves exactly the resources these CustomResourceDefinitions define (served versions of
    /// those not being deleted), each printed with its version's printer columns.
    pub fn set_custom(&self, crds: &[Value]) {
        let mut out = Vec::new();
        for crd in crds {
            if crate::meta::is_deleting(crd) {
                continue;
            }
            let spec = &crd["spec"];
            let (Some(group), Some(plural), Some(kind)) = (
                spec["group"].as_str(),
                spec["names"]["plural"].as_str(),
                spec["names"]["kind"].as_str(),
            ) else {
                continue;
            };
            let singular = spec["names"]["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase());
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            };
            for version in spec["versions"].as_array().into_iter().flatten() {
                if version["served"] != Value::Bool(true) {
                    continue;
                }
                let Some(name) = version["name"].as_str() else {
                    continue;
                };
                let mut subresources = Vec::new();
                if version["subresources"]["status"].is_object() {
                    subresources.push(Subresource::Status);
                }
                if version["subresources"]["scale"].is_object() {
                    subresources.push(Subresource::Scale);
                }
                out.push(CustomResource {
                    info: ResourceInfo {
                        group: group.into(),
                        version: name.into(),
                        kind: kind.into(),
                        plural: plural.into(),
                        singular: singular.clone(),
                        namespaced: spec["scope"].as_str() != Some("Cluster"),
                        short_names: strings(&spec["names"]["shortNames"]),
                        categories: strings(&spec["names"]["categories"]),
                        subresources,
                        custom: true,
                    },
                    columns: table::crd_columns(crd, version),
                    schema: version["schema"]["openAPIV3Schema"]
                        .as_object()
                        .map(|s| Value::Object(s.clone())),
                });
            }
        }
        *self.custom.write().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crds_add_their_served_versions() {
        let r = Registry::default();
        assert!(r.find("example.com", "v1", "widgets").is_none());
        r.set_custom(&[json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                     "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                                  {"name": "v0", "served": false, "storage": false}]}
        })]);
        let w = r.find("example.com", "v1", "widgets").unwrap();
        assert!(w.custom && w.namespaced && w.has(Subresource::Status));
        assert!(r.find("example.com", "v0", "widgets").is_none());
        assert!(
            r.groups()
                .iter()
                .any(|(g, v)| g == "example.com" && v == &["v1"])
        );
        r.set_custom(&[]);
        assert!(r.find("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn printer_columns_follow_the_crds() {
        let names = |r: &Registry, info: &ResourceInfo| -> Vec<String> {
            r.printer(info)
                .columns()
                .into_iter()
                .map(|c| c.name.into_owned())
                .collect()
        };
        let r = Registry::default();
        let crd = |column: &str| {
            json!({
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "scope": "Namespaced",
                         "names": {"plural": "widgets", "kind": "Widget"},
                         "versions": [{"name": "v1", "served": true, "storage": true,
                                       "additionalPrinterColumns": [{"name": column, "type": "string", "jsonPath": ".spec.x"}]}]}
            })
        };
        r.set_custom(&[crd("Size")]);
        let w = r.find("example.com", "v1", "widgets").unwrap();
        assert_eq!(names(&r, &w), ["Name", "Size"]);
        // A changed CRD changes the columns; without it, NAME and AGE.
        r.set_custom(&[crd("Colour")]);
        assert_eq!(names(&r, &w), ["Name", "Colour"]);
        r.set_custom(&[]);
        assert_eq!(names(&r, &w), ["Name", "Age"]);
        // Two registries (two servers in one process) keep their own columns.
        let other = Registry::default();
        other.set_custom(&[crd("Size")]);
        r.set_custom(&[crd("Colour")]);
        assert_eq!(names(&other, &w), ["Name", "Size"]);
        // Built-in kinds keep their printer.
        let pods = r.find("", "v1", "pods").unwrap();
        assert_eq!(names(&r, &pods)[..3], ["Name", "Ready", "Status"]);
    }
}
