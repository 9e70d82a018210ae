//! What both OpenAPI versions describe: the paths and operations of every served resource, and
//! the schemas named like upstream's. [`Document`] holds them; `v3` and `v2` render it.

use serde_json::{Map, Value, json};
use trellis_api::{ResourceInfo, Subresource};

use super::JSON;
use crate::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupVersion {
    pub(super) group: String,
    pub(super) version: String,
}

impl GroupVersion {
    /// `api/v1`, `apis/apps/v1`.
    pub(super) fn path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }
}

/// Every served group version, core first.
pub(super) fn group_versions(registry: &Registry) -> Vec<GroupVersion> {
    let mut out: Vec<GroupVersion> = Vec::new();
    for r in registry.all() {
        let gv = GroupVersion {
            group: r.group,
            version: r.version,
        };
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out.sort_by_key(|gv| !gv.group.is_empty());
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Gvk {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) kind: String,
}

impl Gvk {
    pub(super) fn new(group: &str, version: &str, kind: &str) -> Gvk {
        Gvk {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({"group": self.group, "kind": self.kind, "version": self.version})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Put,
    Post,
    Delete,
    Patch,
}

impl Method {
    pub(super) fn key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
            Method::Patch => "patch",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Param {
    pub(super) name: &'static str,
    /// `query` or `path`.
    pub(super) location: &'static str,
    /// `string`, `boolean` or `integer`.
    pub(super) ty: &'static str,
    pub(super) description: String,
}

impl Param {
    fn path(name: &'static str, description: String) -> Param {
        Param {
            name,
            location: "path",
            ty: "string",
            description,
        }
    }

    fn query(name: &'static str, ty: &'static str, description: &str) -> Param {
        Param {
            name,
            location: "query",
            ty,
            description: description.into(),
        }
    }
}

fn list_params() -> Vec<Param> {
    vec![
        Param::query(
            "allowWatchBookmarks",
            "boolean",
            "With watch: ask for BOOKMARK events carrying the latest resourceVersion.",
        ),
        Param::query(
            "continue",
            "string",
            "The continue token of the previous page of a chunked list.",
        ),
        Param::query(
            "fieldSelector",
            "string",
            "Select objects by fields (metadata.name, metadata.namespace and per-kind fields).",
        ),
        Param::query("labelSelector", "string", "Select objects by labels."),
        Param::query(
            "limit",
            "integer",
            "The most objects to return; the rest follow with the continue token.",
        ),
        Param::query(
            "resourceVersion",
            "string",
            "List at or watch from this resourceVersion (see resourceVersionMatch).",
        ),
        Param::query(
            "resourceVersionMatch",
            "string",
            "How resourceVersion applies to a list: NotOlderThan or Exact.",
        ),
        Param::query(
            "sendInitialEvents",
            "boolean",
            "With watch: send the current objects first, then a BOOKMARK annotated k8s.io/initial-events-end.",
        ),
        Param::query(
            "timeoutSeconds",
            "integer",
            "End the list or watch after this many seconds.",
        ),
        Param::query(
            "watch",
            "boolean",
            "Stream changes (ADDED, MODIFIED, DELETED) instead of listing.",
        ),
    ]
}

fn write_params() -> Vec<Param> {
    vec![
        Param::query(
            "dryRun",
            "string",
            "All: check, default and validate the request without persisting it.",
        ),
        Param::query(
            "fieldManager",
            "string",
            "The name of the actor making the change.",
        ),
        Param::query(
            "fieldValidation",
            "string",
            "How the server treats fields the object's type does not have: Ignore (drop them), \
             Warn (drop them and answer with a warning; the default) or Strict (reject the \
             request with 400 BadRequest).",
        ),
    ]
}

fn delete_params() -> Vec<Param> {
    vec![
        Param::query(
            "dryRun",
            "string",
            "All: check the request without persisting it.",
        ),
        Param::query(
            "gracePeriodSeconds",
            "integer",
            "Seconds before the object is deleted; 0 deletes at once.",
        ),
        Param::query(
            "propagationPolicy",
            "string",
            "What happens to dependents: Orphan, Background or Foreground.",
        ),
    ]
}

/// The content types of PATCH. Custom resources take no strategic merge patch.
fn patch_types(custom: bool) -> Vec<&'static str> {
    let mut types = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if !custom {
        types.push("application/strategic-merge-patch+json");
    }
    types
}

const BODY_TYPES: &[&str] = &["application/json", "application/yaml"];

const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
pub(super) const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
const BINDING: &str = "io.k8s.api.core.v1.Binding";

#[derive(Debug, Clone)]
pub(super) struct Operation {
    pub(super) method: Method,
    pub(super) id: String,
    pub(super) description: String,
    pub(super) action: &'static str,
    pub(super) gvk: Gvk,
    pub(super) params: Vec<Param>,
    /// The request body: its content types and schema.
    pub(super) body: Option<(Vec<&'static str>, &'static str, String)>,
    /// Success codes, with the schema each answers with.
    pub(super) responses: Vec<(u16, String)>,
}

pub(super) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        401 => "Unauthorized",
        _ => "",
    }
}

#[derive(Debug, Clone)]
pub(super) struct PathItem {
    pub(super) path: String,
    pub(super) params: Vec<Param>,
    pub(super) ops: Vec<Operation>,
}

/// The paths and schemas of some resources; rendered as v3 JSON, v2 JSON or v2 protobuf.
pub(super) struct Document {
    pub(super) paths: Vec<PathItem>,
    pub(super) schemas: Map<String, Value>,
}
impl Document {
    pub(super) fn of(resources: &[ResourceInfo]) -> Document {
        let mut doc = Document {
            paths: Vec::new(),
            schemas: Map::new(),
        };
        for r in resources {
            doc.add(r);
        }
        doc
    }

    fn add(&mut self, r: &ResourceInfo) {
        let gvk = Gvk::new(&r.group, &r.version, &r.kind);
        let kind_schema = schema_name(&r.group, &r.version, &r.kind, r.custom);
        let list_schema = format!("{kind_schema}List");
        let prefix = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let gv = gv_pascal(&r.group, &r.version);
        let scope = if r.namespaced { "Namespaced" } else { "" };
        let (collection, mut scope_params) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                vec![Param::path(
                    "namespace",
                    "object name and auth scope, such as for teams and projects".into(),
                )],
            )
        } else {
            (format!("{prefix}/{}", r.plural), Vec::new())
        };
        let kind = &r.kind;
        let op = |method, verb: &str, sub: &str, action, params, body, responses| Operation {
            method,
            id: format!("{verb}{gv}{scope}{kind}{sub}"),
            description: String::new(),
            action,
            gvk: gvk.clone(),
            params,
            body,
            responses,
        };
        let with = |params: Vec<Param>, more: Vec<Param>| params.into_iter().chain(more).collect();
        let body =
            |types: Vec<&'static str>, schema: &str| Some((types, "body", schema.to_string()));

        // The collection: list (and watch), create, delete a collection.
        let mut list = op(
            Method::Get,
            "list",
            "",
            "list",
            list_params(),
            None,
            vec![(200, list_schema.clone())],
        );
        list.description = format!("list or watch objects of kind {kind}");
        let mut create = op(
            Method::Post,
            "create",
            "",
            "post",
            write_params(),
            body(BODY_TYPES.to_vec(), &kind_schema),
            vec![
                (200, kind_schema.clone()),
                (201, kind_schema.clone()),
                (202, kind_schema.clone()),
            ],
        );
        create.description = format!("create a {kind}");
        let mut delete_all = op(
            Method::Delete,
            "deleteCollection",
            "",
            "deletecollection",
            with(
                delete_params(),
                list_params()
                    .into_iter()
                    .filter(|p| {
                        !matches!(
                            p.name,
                            "watch" | "allowWatchBookmarks" | "sendInitialEvents"
                        )
                    })
                    .collect(),
            ),
            body(vec![JSON], DELETE_OPTIONS),
            vec![(200, STATUS.to_string())],
        );
        delete_all.description = format!("delete a collection of {kind}");
        self.paths.push(PathItem {
            path: collection.clone(),
            params: scope_params.clone(),
            ops: vec![list, create, delete_all],
        });

        // Across namespaces.
        if r.namespaced {
            let mut all = op(
                Method::Get,
                "list",
                "",
                "list",
                list_params(),
                None,
                vec![(200, list_schema.clone())],
            );
            all.id = format!("list{gv}{kind}ForAllNamespaces");
            all.description = format!("list or watch objects of kind {kind} in every namespace");
            self.paths.push(PathItem {
                path: format!("{prefix}/{}", r.plural),
                params: Vec::new(),
                ops: vec![all],
            });
        }

        // One object.
        scope_params.insert(0, Param::path("name", format!("name of the {kind}")));
        let item = format!("{collection}/{{name}}");
        let mut read = op(
            Method::Get,
            "read",
            "",
            "get",
            Vec::new(),
            None,
            vec![(200, kind_schema.clone())],
        );
        read.description = format!("read the specified {kind}");
        let mut replace = op(
            Method::Put,
            "replace",
            "",
            "put",
            write_params(),
            body(BODY_TYPES.to_vec(), &kind_schema),
            vec![(200, kind_schema.clone()), (201, kind_schema.clone())],
        );
        replace.description = format!("replace the specified {kind}");
        let mut patch = op(
            Method::Patch,
            "patch",
            "",
            "patch",
            patch_params(),
            body(patch_types(r.custom), PATCH),
            vec![(200, kind_schema.clone()), (201, kind_schema.clone())],
        );
        patch.description = format!("partially update the specified {kind}");
        let mut delete = op(
            Method::Delete,
            "delete",
            "",
            "delete",
            delete_params(),
            body(vec![JSON], DELETE_OPTIONS),
            vec![(200, STATUS.to_string()), (202, STATUS.to_string())],
        );
        delete.description = format!("delete a {kind}");
        self.paths.push(PathItem {
            path: item.clone(),
            params: scope_params.clone(),
            ops: vec![read, replace, patch, delete],
        });

        // Subresources.
        let mut used_scale = false;
        let mut used_binding = false;
        for sub in &r.subresources {
            match sub {
                Subresource::Status | Subresource::Scale => {
                    let (suffix, schema, sub_gvk) = if *sub == Subresource::Status {
                        ("Status", kind_schema.clone(), gvk.clone())
                    } else {
                        used_scale = true;
                        (
                            "Scale",
                            SCALE.to_string(),
                            Gvk::new("autoscaling", "v1", "Scale"),
                        )
                    };
                    let what = suffix.to_lowercase();
                    let mut ops = vec![
                        op(
                            Method::Get,
                            "read",
                            suffix,
                            "get",
                            Vec::new(),
                            None,
                            vec![(200, schema.clone())],
                        ),
                        op(
                            Method::Put,
                            "replace",
                            suffix,
                            "put",
                            write_params(),
                            body(BODY_TYPES.to_vec(), &schema),
                            vec![(200, schema.clone()), (201, schema.clone())],
                        ),
                        op(
                            Method::Patch,
                            "patch",
                            suffix,
                            "patch",
                            patch_params(),
                            body(patch_types(r.custom), PATCH),
                            vec![(200, schema.clone()), (201, schema.clone())],
                        ),
                    ];
                    for (o, verb) in ops.iter_mut().zip(["read", "replace", "partially update"]) {
                        o.gvk = sub_gvk.clone();
                        o.description = format!("{verb} {what} of the specified {kind}");
                    }
                    self.paths.push(PathItem {
                        path: format!("{item}/{what}"),
                        params: scope_params.clone(),
                        ops,
                    });
                }
                Subresource::Binding => {
                    used_binding = true;
                    let mut bind = op(
                        Method::Post,
                        "create",
                        "Binding",
                        "post",
                        write_params(),
                        body(BODY_TYPES.to_vec(), BINDING),
                        vec![
                            (200, BINDING.to_string()),
                            (201, BINDING.to_string()),
                            (202, BINDING.to_string()),
                        ],
                    );
                    bind.gvk = Gvk::new("", "v1", "Binding");
                    bind.description = format!("create binding of a {kind}");
                    self.paths.push(PathItem {
                        path: format!("{item}/binding"),
                        params: scope_params.clone(),
                        ops: vec![bind],
                    });
                }
                // Streams text, not an API object; nothing kubectl looks up.
                Subresource::Log
                | Subresource::Exec
                | Subresource::Attach
                | Subresource::PortForward => {}
                // kubectl create token posts through its typed client, without OpenAPI.
                Subresource::Token => {}
            }
        }

        // Schemas.
        for (name, k) in [
            (&kind_schema, kind.clone()),
            (&list_schema, format!("{kind}List")),
        ] {
            let schema = if r.custom {
                json!({
                    "description": format!("{k} ({}) of a CustomResourceDefinition; any fields.", r.api_version()),
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "x-kubernetes-group-version-kind": [Gvk::new(&r.group, &r.version, &k).json()],
                })
            } else {
                builtin_schema(&format!("{k} ({})", r.api_version()))
            };
            self.schemas.insert(name.clone(), schema);
        }
        if used_scale {
            self.schemas
                .insert(SCALE.into(), builtin_schema("Scale (autoscaling/v1)"));
        }
        if used_binding {
            self.schemas
                .insert(BINDING.into(), builtin_schema("Binding (v1)"));
        }
        for (name, what) in [(STATUS, "Status (v1)"), (DELETE_OPTIONS, "DeleteOptions")] {
            self.schemas.insert(name.into(), builtin_schema(what));
        }
        self.schemas.insert(
            PATCH.into(),
            json!({"description": "The body of a PATCH request, in the format its content type names.", "type": "object"}),
        );
    }

    pub(super) fn info() -> Value {
        json!({
            "title": "Kubernetes",
            "version": crate::discovery::version()["gitVersion"].clone(),
        })
    }
}

fn patch_params() -> Vec<Param> {
    let mut params = write_params();
    params.push(Param::query(
        "force",
        "boolean",
        "Server-side apply: take over the fields other managers own.",
    ));
    params
}

/// A built-in kind: an object, its fields not listed (see the module documentation: a schema
/// kubectl would compute patches from must be complete, so there is none).
fn builtin_schema(what: &str) -> Value {
    json!({
        "description": format!("{what}. This server does not publish the fields of built-in types: it checks objects itself (fieldValidation=Strict rejects unknown fields)."),
        "type": "object",
    })
}

/// The upstream name of a kind's schema: `io.k8s.api.apps.v1.Deployment`, and for custom
/// resources the reversed group: `com.example.v1.Widget`.
fn schema_name(group: &str, version: &str, kind: &str, custom: bool) -> String {
    if custom {
        let reversed: Vec<&str> = group.split('.').rev().collect();
        return format!("{}.{version}.{kind}", reversed.join("."));
    }
    let package = match group {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".into(),
        "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration".into(),
        g => format!("io.k8s.api.{}", g.split('.').next().unwrap_or(g)),
    };
    format!("{package}.{version}.{kind}")
}

/// `CoreV1`, `AppsV1`, `NetworkingV1`, `RbacAuthorizationV1`, `ExampleComV1` (operation ids).
fn gv_pascal(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.strip_suffix(".k8s.io").unwrap_or(group)
    };
    let upper = |s: &str| {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    group
        .split(['.', '-'])
        .map(upper)
        .chain(std::iter::once(upper(version)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_and_operation_ids_follow_upstream() {
        assert_eq!(
            schema_name("", "v1", "Pod", false),
            "io.k8s.api.core.v1.Pod"
        );
        assert_eq!(
            schema_name("networking.k8s.io", "v1", "NetworkPolicy", false),
            "io.k8s.api.networking.v1.NetworkPolicy"
        );
        assert_eq!(
            schema_name("rbac.authorization.k8s.io", "v1", "Role", false),
            "io.k8s.api.rbac.v1.Role"
        );
        assert_eq!(
            schema_name("stable.example.com", "v1", "CronTab", true),
            "com.example.stable.v1.CronTab"
        );
        assert_eq!(gv_pascal("", "v1"), "CoreV1");
        assert_eq!(
            gv_pascal("rbac.authorization.k8s.io", "v1"),
            "RbacAuthorizationV1"
        );
        assert_eq!(gv_pascal("autoscaling", "v2"), "AutoscalingV2");
        assert_eq!(gv_pascal("example.com", "v1alpha1"), "ExampleComV1alpha1");
    }
}
