//! OpenAPI documents generated from the registry: `/openapi/v3` (the index), `/openapi/v3/<gv>`
//! (OpenAPI 3.0 JSON, one per group version) and `/openapi/v2` (Swagger 2.0, as gnostic protobuf
//! or JSON).
//!
//! What the documents carry is what kubectl reads from them, and nothing that could be wrong:
//!
//! - **Paths and operations, complete.** Every resource gets its collection and item paths (the
//!   namespaced and cluster-scoped forms, the all-namespaces list, `/status`, `/scale`,
//!   `/binding`), each operation with `x-kubernetes-action` and `x-kubernetes-group-version-kind`.
//!   POST, PUT and PATCH declare the `fieldValidation` query parameter: kubectl ≥ 1.25 looks for
//!   it on the PATCH operation of the object's kind (cli-runtime `query_param_verifier_v3.go`,
//!   falling back to v2 in `query_param_verifier.go`), and when it is there skips client-side
//!   schema validation and sends `?fieldValidation=Strict`, so the server (which knows every
//!   field of every type) rejects unknown fields. PATCH lists its content types:
//!   kubectl's apply computes a strategic merge patch only when
//!   `application/strategic-merge-patch+json` is among them (`patcher.go`
//!   `gvkSupportsPatchOpenAPIV3`), so custom resources, which take no strategic merge patch,
//!   don't list it.
//! - **Schemas, named like upstream but without field lists for built-in kinds.** A schema that
//!   carries `x-kubernetes-group-version-kind` is what `kubectl apply` computes its strategic
//!   merge patch from (`buildStrategicMergePatchFromOpenAPIV3`); it must then list every field
//!   with its patch strategy and merge key, or apply fails on the first field it does not list
//!   (`unable to find api field`) or, worse, replaces lists it should merge. Without a schema for
//!   the kind, kubectl uses the patch metadata compiled into it, which upstream's schemas are
//!   generated from. So built-in kinds get a plain object schema without the GVK extension;
//!   custom resources get a permissive schema (`x-kubernetes-preserve-unknown-fields`) with it, as
//!   upstream does (apply uses a JSON merge patch for them either way).
//! - **v2: the same paths, no definitions.** kubectl 1.20 downloads v2 as protobuf, validates an
//!   object only against a definition carrying its GVK, and skips validation when there is none
//!   (kubectl `pkg/validation/schema.go` `validateResource`: "resource is not present, let's just
//!   skip validation"); apply then also falls back to its compiled-in patch metadata. The paths let
//!   its dry-run verifier (and kubectl 1.25–1.26's field-validation verifier, which read v2)
//!   find `dryRun` and `fieldValidation` on PATCH.

use serde_json::{Map, Value, json};
use trellis_api::{ResourceInfo, Subresource};

use crate::handlers::Reply;
use crate::registry::Registry;
use crate::request::Route;
use crate::status::ApiError;

/// The gnostic protobuf encoding of a Swagger 2.0 document. We answer with this spelling
/// whichever one was asked for, as kube-openapi's handler does: client-go parses the response's
/// `Content-Type` with Go's `mime.ParseMediaType`, which rejects the `@` of the other one
/// (kubectl 1.20 fails with "mime: unexpected content after media subtype").
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The spelling client-go puts in `Accept` (`discovery_client.go` `openAPIV2mimePb`).
pub const V2_PROTOBUF_REQUESTED: &str =
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
const JSON: &str = "application/json";

/// Serves `/openapi/v2` and `/openapi/v3[/<group-version>]`.
// ApiError is large (clippy 1.95 flags every `Result<_, ApiError>` in the crate); its size is
// status.rs's business, and the handlers all share this signature.
#[allow(clippy::result_large_err)]
pub fn serve(registry: &Registry, route: &Route, accept: &str) -> Result<Reply, ApiError> {
    match route {
        Route::OpenApiV3(None) => Ok(Reply::ok(v3_index(registry))),
        Route::OpenApiV3(Some(gv)) => {
            let doc = v3_document(registry, gv)
                .ok_or_else(|| ApiError::no_route(&format!("/openapi/v3/{gv}")))?;
            negotiate(accept, &[JSON]).ok_or_else(|| not_acceptable(&[JSON]))?;
            Ok(Reply::ok(doc))
        }
        Route::OpenApiV2 => {
            let offers = [JSON, V2_PROTOBUF_REQUESTED, V2_PROTOBUF];
            let chosen = negotiate(accept, &offers).ok_or_else(|| not_acceptable(&offers))?;
            let doc = Document::v2(registry);
            match chosen {
                0 => Ok(Reply::ok(doc.v2_json())),
                _ => Ok(Reply::Raw {
                    code: 200,
                    body: doc.v2_protobuf(),
                    content_type: V2_PROTOBUF,
                }),
            }
        }
        other => Err(ApiError::no_route(&format!("{other:?}"))),
    }
}

/// Which of `offers` to answer with (its index): the first media type of `Accept` that we offer,
/// a wildcard meaning the first offer; no `Accept` means the first offer too.
fn negotiate(accept: &str, offers: &[&str]) -> Option<usize> {
    let mut asked = accept
        .split(',')
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
        .peekable();
    if asked.peek().is_none() {
        return Some(0);
    }
    for m in asked {
        if m == "*/*" || m == "application/*" {
            return Some(0);
        }
        if let Some(i) = offers.iter().position(|o| *o == m) {
            return Some(i);
        }
    }
    None
}

/// 406, as kube-openapi answers a request for a type it does not serve.
fn not_acceptable(offers: &[&str]) -> ApiError {
    ApiError {
        code: 406,
        reason: "NotAcceptable",
        message: format!(
            "only the following media types are accepted: {}",
            offers.join(", ")
        ),
        name: None,
        group: None,
        kind: None,
        causes: Vec::new(),
    }
}

/// `/openapi/v3`: where each group version's document is, with a hash of it so that clients
/// can cache (client-go `openapi3/root.go`, `openapi/client.go`).
pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for gv in group_versions(registry) {
        let key = gv.path();
        let hash = document_hash(&Document::v3_for(registry, &gv).v3_json());
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`; None for a group version the
/// server does not serve.
pub fn v3_document(registry: &Registry, path: &str) -> Option<Value> {
    let gv = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => GroupVersion {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis", g, v] => GroupVersion {
            group: g.to_string(),
            version: v.to_string(),
        },
        _ => return None,
    };
    let doc = Document::v3_for(registry, &gv);
    (!doc.paths.is_empty()).then(|| doc.v3_json())
}

/// A stable hash of a document (FNV-1a over its JSON), hex.
fn document_hash(doc: &Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupVersion {
    group: String,
    version: String,
}

impl GroupVersion {
    /// `api/v1`, `apis/apps/v1`.
    fn path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }
}

/// Every served group version, core first.
fn group_versions(registry: &Registry) -> Vec<GroupVersion> {
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
struct Gvk {
    group: String,
    version: String,
    kind: String,
}

impl Gvk {
    fn new(group: &str, version: &str, kind: &str) -> Gvk {
        Gvk {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    fn json(&self) -> Value {
        json!({"group": self.group, "kind": self.kind, "version": self.version})
    }

    /// The extension's value as gnostic carries it in protobuf (YAML; JSON strings are YAML).
    fn yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        format!(
            "group: {}\nkind: {}\nversion: {}\n",
            q(&self.group),
            q(&self.kind),
            q(&self.version)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
    Patch,
}

impl Method {
    fn key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
            Method::Patch => "patch",
        }
    }

    /// The field of gnostic's `PathItem`.
    fn v2_field(self) -> u32 {
        match self {
            Method::Get => 2,
            Method::Put => 3,
            Method::Post => 4,
            Method::Delete => 5,
            Method::Patch => 8,
        }
    }
}

#[derive(Debug, Clone)]
struct Param {
    name: &'static str,
    /// `query` or `path`.
    location: &'static str,
    /// `string`, `boolean` or `integer`.
    ty: &'static str,
    description: String,
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

    fn v3(&self) -> Value {
        let mut p = json!({
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "schema": {"type": self.ty, "uniqueItems": true},
        });
        if self.location == "path" {
            p["required"] = json!(true);
        }
        p
    }

    fn v2(&self) -> Value {
        let mut p = json!({
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "type": self.ty,
            "uniqueItems": true,
        });
        if self.location == "path" {
            p["required"] = json!(true);
        }
        p
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
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
const BINDING: &str = "io.k8s.api.core.v1.Binding";

#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    id: String,
    description: String,
    action: &'static str,
    gvk: Gvk,
    params: Vec<Param>,
    /// The request body: its content types and schema.
    body: Option<(Vec<&'static str>, &'static str, String)>,
    /// Success codes, with the schema each answers with.
    responses: Vec<(u16, String)>,
}

impl Operation {
    fn v3(&self) -> Value {
        let mut op = json!({
            "description": self.description,
            "operationId": self.id,
        });
        if !self.params.is_empty() {
            op["parameters"] = self.params.iter().map(Param::v3).collect();
        }
        if let Some((types, _, schema)) = &self.body {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": schema_ref(schema)})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        }
        let mut responses = Map::new();
        for (code, schema) in &self.responses {
            responses.insert(
                code.to_string(),
                json!({
                    "description": reason(*code),
                    "content": {JSON: {"schema": schema_ref(schema)}},
                }),
            );
        }
        responses.insert("401".into(), json!({"description": reason(401)}));
        op["responses"] = Value::Object(responses);
        op["x-kubernetes-action"] = json!(self.action);
        op["x-kubernetes-group-version-kind"] = self.gvk.json();
        op
    }

    /// The v2 form. v2 has no definitions (see the module documentation), so bodies and
    /// responses name no schema.
    fn v2(&self) -> Value {
        let mut params: Vec<Value> = self.params.iter().map(Param::v2).collect();
        if let Some((_, name, _)) = &self.body {
            params.push(
                json!({"name": name, "in": "body", "required": true, "schema": {"type": "object"}}),
            );
        }
        let mut op = json!({
            "description": self.description,
            "operationId": self.id,
            "produces": [JSON],
            "schemes": ["https"],
        });
        if let Some((types, _, _)) = &self.body {
            op["consumes"] = json!(types);
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let mut responses = Map::new();
        for (code, _) in &self.responses {
            responses.insert(code.to_string(), json!({"description": reason(*code)}));
        }
        responses.insert("401".into(), json!({"description": reason(401)}));
        op["responses"] = Value::Object(responses);
        op["x-kubernetes-action"] = json!(self.action);
        op["x-kubernetes-group-version-kind"] = self.gvk.json();
        op
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        401 => "Unauthorized",
        _ => "",
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

#[derive(Debug, Clone)]
struct PathItem {
    path: String,
    params: Vec<Param>,
    ops: Vec<Operation>,
}

/// The paths and schemas of some resources; rendered as v3 JSON, v2 JSON or v2 protobuf.
struct Document {
    paths: Vec<PathItem>,
    schemas: Map<String, Value>,
}

impl Document {
    fn v3_for(registry: &Registry, gv: &GroupVersion) -> Document {
        let resources: Vec<ResourceInfo> = registry
            .all()
            .into_iter()
            .filter(|r| r.group == gv.group && r.version == gv.version)
            .collect();
        Document::of(&resources)
    }

    fn v2(registry: &Registry) -> Document {
        Document::of(&registry.all())
    }

    fn of(resources: &[ResourceInfo]) -> Document {
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
                Subresource::Log => {}
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

    fn info() -> Value {
        json!({
            "title": "Kubernetes",
            "version": crate::discovery::version()["gitVersion"].clone(),
        })
    }

    fn v3_json(&self) -> Value {
        let mut paths = Map::new();
        for p in &self.paths {
            let mut item = Map::new();
            if !p.params.is_empty() {
                item.insert(
                    "parameters".into(),
                    p.params.iter().map(Param::v3).collect(),
                );
            }
            for o in &p.ops {
                item.insert(o.method.key().into(), o.v3());
            }
            paths.insert(p.path.clone(), Value::Object(item));
        }
        json!({
            "openapi": "3.0.0",
            "info": Document::info(),
            "paths": paths,
            "components": {"schemas": self.schemas},
        })
    }

    fn v2_json(&self) -> Value {
        let mut paths = Map::new();
        for p in &self.paths {
            let mut item = Map::new();
            if !p.params.is_empty() {
                item.insert(
                    "parameters".into(),
                    p.params.iter().map(Param::v2).collect(),
                );
            }
            for o in &p.ops {
                item.insert(o.method.key().into(), o.v2());
            }
            paths.insert(p.path.clone(), Value::Object(item));
        }
        json!({
            "swagger": "2.0",
            "info": Document::info(),
            "paths": paths,
            "definitions": {},
        })
    }

    /// gnostic's `openapi_v2.Document` (google/gnostic `openapiv2/OpenAPIv2.proto`).
    fn v2_protobuf(&self) -> Vec<u8> {
        let info = crate::discovery::version()["gitVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut doc = Pb::default();
        doc.string(1, "2.0");
        doc.message(2, Pb::default().string(1, "Kubernetes").string(2, &info));
        let mut paths = Pb::default();
        for p in &self.paths {
            let mut item = Pb::default();
            for o in &p.ops {
                item.message(o.method.v2_field(), &v2_operation(o));
            }
            for param in &p.params {
                item.message(9, &v2_parameter(param));
            }
            paths.message(2, Pb::default().string(1, &p.path).message(2, &item));
        }
        doc.message(8, &paths);
        doc.message(9, &Pb::default());
        doc.0
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

fn v2_operation(o: &Operation) -> Pb {
    let mut op = Pb::default();
    op.string(3, &o.description);
    op.string(5, &o.id);
    op.string(6, JSON);
    if let Some((types, _, _)) = &o.body {
        for t in types {
            op.string(7, t);
        }
    }
    for p in &o.params {
        op.message(8, &v2_parameter(p));
    }
    if let Some((_, name, _)) = &o.body {
        // ParametersItem.parameter → Parameter.body_parameter
        let schema = Pb::default()
            .message(22, Pb::default().string(1, "object"))
            .clone();
        let body = Pb::default()
            .string(2, name)
            .string(3, "body")
            .boolean(4, true)
            .message(5, &schema)
            .clone();
        op.message(8, Pb::default().message(1, Pb::default().message(1, &body)));
    }
    let mut responses = Pb::default();
    for code in o.responses.iter().map(|(c, _)| *c).chain([401]) {
        let response = Pb::default().string(1, reason(code)).clone();
        responses.message(
            1,
            Pb::default()
                .string(1, &code.to_string())
                .message(2, Pb::default().message(1, &response)),
        );
    }
    op.message(9, &responses);
    op.string(10, "https");
    op.message(
        13,
        &named_any("x-kubernetes-action", &format!("{}\n", o.action)),
    );
    op.message(
        13,
        &named_any("x-kubernetes-group-version-kind", &o.gvk.yaml()),
    );
    op
}

/// A `ParametersItem` holding a non-body parameter (query or path).
fn v2_parameter(p: &Param) -> Pb {
    let mut sub = Pb::default();
    let (which, type_field, unique_field) = if p.location == "path" {
        sub.boolean(1, true);
        (4, 5, 19)
    } else {
        (3, 6, 20)
    };
    sub.string(2, p.location)
        .string(3, &p.description)
        .string(4, p.name)
        .string(type_field, p.ty)
        .boolean(unique_field, true);
    let non_body = Pb::default().message(which, &sub).clone();
    Pb::default()
        .message(1, Pb::default().message(2, &non_body))
        .clone()
}

/// gnostic's `NamedAny` with a YAML value.
fn named_any(name: &str, yaml: &str) -> Pb {
    Pb::default()
        .string(1, name)
        .message(2, Pb::default().string(2, yaml))
        .clone()
}

/// A protobuf message being written: length-delimited fields, varint booleans; proto3 leaves
/// out empty strings and false.
#[derive(Debug, Clone, Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Pb {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn string(&mut self, field: u32, s: &str) -> &mut Pb {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
        self
    }

    fn message(&mut self, field: u32, m: &Pb) -> &mut Pb {
        self.bytes(field, &m.0)
    }

    fn boolean(&mut self, field: u32, b: bool) -> &mut Pb {
        if b {
            self.varint(u64::from(field) << 3);
            self.varint(1);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry_with_crds() -> Registry {
        let r = Registry::default();
        r.set_custom(&[
            json!({
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "scope": "Namespaced",
                         "names": {"plural": "widgets", "kind": "Widget"},
                         "versions": [{"name": "v1", "served": true, "storage": true,
                                       "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}}]}
            }),
            json!({
                "metadata": {"name": "gadgets.example.com"},
                "spec": {"group": "example.com", "scope": "Cluster",
                         "names": {"plural": "gadgets", "kind": "Gadget"},
                         "versions": [{"name": "v1", "served": true, "storage": true}]}
            }),
        ]);
        r
    }

    fn doc(r: &Registry, gv: &str) -> Value {
        v3_document(r, gv).unwrap_or_else(|| panic!("no document for {gv}"))
    }

    fn gvk(group: &str, version: &str, kind: &str) -> Value {
        Gvk::new(group, version, kind).json()
    }

    /// cli-runtime `supportsQueryParamV3` (query_param_verifier_v3.go): the first PATCH
    /// operation of the kind decides whether `fieldValidation` is a query parameter.
    fn supports_field_validation(doc: &Value, gvk: &Value) -> Result<bool, String> {
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Some(op) = item.get("patch") else {
                continue;
            };
            if op["x-kubernetes-group-version-kind"] != *gvk {
                continue;
            }
            return Ok(op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        }
        Err(format!("Path not found for GVK ({gvk}) in OpenAPI V3 doc"))
    }

    /// kubectl `gvkSupportsPatchOpenAPIV3` (pkg/cmd/apply/patcher.go).
    fn supports_strategic_merge(doc: &Value, gvk: &Value) -> bool {
        doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|item| item.get("patch"))
            .find(|op| op["x-kubernetes-group-version-kind"] == *gvk)
            .is_some_and(|op| {
                op["requestBody"]["content"]
                    .get("application/strategic-merge-patch+json")
                    .is_some()
            })
    }

    /// The schemas kubectl `buildStrategicMergePatchFromOpenAPIV3` would compute a patch from.
    fn schemas_for(doc: &Value, gvk: &Value) -> Vec<String> {
        doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, s)| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(gvk))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_index_names_every_group_version_with_the_hash_of_its_document() {
        let r = Registry::default();
        let index = v3_index(&r);
        let paths = index["paths"].as_object().unwrap();
        for key in [
            "api/v1",
            "apis/apps/v1",
            "apis/batch/v1",
            "apis/networking.k8s.io/v1",
            "apis/apiextensions.k8s.io/v1",
        ] {
            let url = paths[key]["serverRelativeURL"].as_str().unwrap();
            let hash = document_hash(&doc(&r, key));
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
        }
        assert_eq!(paths.keys().next().map(String::as_str), Some("api/v1"));
        assert!(!paths.contains_key("apis/example.com/v1"));

        let with_crds = registry_with_crds();
        let after = v3_index(&with_crds);
        assert!(after["paths"]["apis/example.com/v1"]["serverRelativeURL"].is_string());
        // Other documents and their hashes stay the same, so caches stay valid.
        assert_eq!(
            after["paths"]["apis/apps/v1"],
            index["paths"]["apis/apps/v1"]
        );
    }

    #[test]
    fn every_kind_declares_field_validation_on_its_patch_operations() {
        let r = registry_with_crds();
        for info in r.all() {
            let d = doc(
                &r,
                &GroupVersion {
                    group: info.group.clone(),
                    version: info.version.clone(),
                }
                .path(),
            );
            let g = gvk(&info.group, &info.version, &info.kind);
            assert_eq!(supports_field_validation(&d, &g), Ok(true), "{}", info.kind);
        }
        // Every PATCH operation (any of them may be the one kubectl meets first), and every
        // POST and PUT, declare it; every operation names its kind and action.
        for gv in group_versions(&r) {
            let d = doc(&r, &gv.path());
            for (path, item) in d["paths"].as_object().unwrap() {
                for (method, op) in item.as_object().unwrap() {
                    if method == "parameters" {
                        continue;
                    }
                    assert!(
                        op["x-kubernetes-group-version-kind"]["kind"].is_string(),
                        "{path} {method}"
                    );
                    assert!(op["x-kubernetes-action"].is_string(), "{path} {method}");
                    if matches!(method.as_str(), "patch" | "put" | "post") {
                        assert_eq!(
                            supports_field_validation(
                                &json!({"paths": {path: {"patch": op}}}),
                                &op["x-kubernetes-group-version-kind"]
                            ),
                            Ok(true),
                            "{path} {method}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn deployments_have_collection_item_status_and_scale_paths() {
        let d = doc(&Registry::default(), "apis/apps/v1");
        let paths = d["paths"].as_object().unwrap();
        let methods = |p: &str| -> Vec<String> {
            paths[p]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .cloned()
                .collect()
        };
        let base = "/apis/apps/v1/namespaces/{namespace}/deployments";
        assert_eq!(methods(base), ["get", "post", "delete"]);
        assert_eq!(
            methods(&format!("{base}/{{name}}")),
            ["get", "put", "patch", "delete"]
        );
        assert_eq!(
            methods(&format!("{base}/{{name}}/status")),
            ["get", "put", "patch"]
        );
        assert_eq!(
            methods(&format!("{base}/{{name}}/scale")),
            ["get", "put", "patch"]
        );
        assert_eq!(methods("/apis/apps/v1/deployments"), ["get"]);

        let item = &paths[&format!("{base}/{{name}}")];
        let names: Vec<&str> = item["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["name", "namespace"]);
        let patch = &item["patch"];
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            gvk("apps", "v1", "Deployment")
        );
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let types: Vec<&String> = patch["requestBody"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            types,
            [
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json"
            ]
        );
        assert_eq!(item["get"]["x-kubernetes-action"], "get");
        assert_eq!(paths[base]["get"]["x-kubernetes-action"], "list");
        assert_eq!(paths[base]["post"]["x-kubernetes-action"], "post");
        assert_eq!(
            paths[base]["delete"]["x-kubernetes-action"],
            "deletecollection"
        );
        assert_eq!(item["delete"]["x-kubernetes-action"], "delete");
        assert_eq!(
            paths[&format!("{base}/{{name}}/scale")]["patch"]["x-kubernetes-group-version-kind"],
            gvk("autoscaling", "v1", "Scale")
        );
        assert_eq!(
            paths[&format!("{base}/{{name}}/status")]["patch"]["x-kubernetes-group-version-kind"],
            gvk("apps", "v1", "Deployment")
        );
        assert_eq!(
            paths["/apis/apps/v1/deployments"]["get"]["operationId"],
            "listAppsV1DeploymentForAllNamespaces"
        );
        // Only this group version's resources.
        assert!(paths.keys().all(|p| p.starts_with("/apis/apps/v1/")));
        assert_eq!(d["openapi"], "3.0.0");
    }

    #[test]
    fn core_has_cluster_scoped_namespaces_and_pod_binding() {
        let d = doc(&Registry::default(), "api/v1");
        let paths = d["paths"].as_object().unwrap();
        assert!(paths["/api/v1/namespaces"]["post"].is_object());
        let ns = &paths["/api/v1/namespaces/{name}"];
        assert_eq!(ns["parameters"].as_array().unwrap().len(), 1);
        assert_eq!(
            ns["patch"]["x-kubernetes-group-version-kind"],
            gvk("", "v1", "Namespace")
        );
        assert_eq!(ns["patch"]["operationId"], "patchCoreV1Namespace");
        assert!(paths["/api/v1/namespaces/{name}/status"]["put"].is_object());
        assert!(paths["/api/v1/nodes/{name}"]["patch"].is_object());
        let bind = &paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"];
        assert_eq!(
            bind["x-kubernetes-group-version-kind"],
            gvk("", "v1", "Binding")
        );
        assert!(paths.contains_key("/api/v1/pods"));
        assert!(!paths.contains_key("/api/v1/nodes/{name}/scale"));
        assert!(
            !paths
                .keys()
                .any(|p| p.contains("namespaces/{namespace}/namespaces"))
        );
    }

    #[test]
    fn built_in_kinds_leave_patch_metadata_to_kubectl_and_refs_resolve() {
        let r = registry_with_crds();
        for gv in group_versions(&r) {
            let d = doc(&r, &gv.path());
            let mut all = Vec::new();
            refs(&d, &mut all);
            assert!(!all.is_empty());
            for rf in all {
                let name = rf.strip_prefix("#/components/schemas/").unwrap();
                assert!(
                    d["components"]["schemas"][name].is_object(),
                    "{rf} in {}",
                    gv.path()
                );
            }
        }
        let apps = doc(&r, "apis/apps/v1");
        let deploy = gvk("apps", "v1", "Deployment");
        // kubectl asks for a strategic merge patch, finds no schema to compute it from, and
        // computes it from the patch metadata compiled into it.
        assert!(supports_strategic_merge(&apps, &deploy));
        assert!(schemas_for(&apps, &deploy).is_empty());
        assert_eq!(
            apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["type"],
            "object"
        );
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentList"].is_object());
        assert!(apps["components"]["schemas"][SCALE].is_object());
        let net = doc(&r, "apis/networking.k8s.io/v1");
        assert!(net["components"]["schemas"]["io.k8s.api.networking.v1.NetworkPolicy"].is_object());
        let crd = doc(&r, "apis/apiextensions.k8s.io/v1");
        assert!(crd["components"]["schemas"]["io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"].is_object());
    }

    #[test]
    fn custom_resources_take_no_strategic_merge_patch_and_any_fields() {
        let r = registry_with_crds();
        let d = doc(&r, "apis/example.com/v1");
        let widget = gvk("example.com", "v1", "Widget");
        assert!(!supports_strategic_merge(&d, &widget));
        assert_eq!(schemas_for(&d, &widget), ["com.example.v1.Widget"]);
        let s = &d["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(s["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            schemas_for(&d, &gvk("example.com", "v1", "WidgetList")),
            ["com.example.v1.WidgetList"]
        );
        let paths = d["paths"].as_object().unwrap();
        assert!(
            paths["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/scale"]["patch"]
                .is_object()
        );
        assert!(
            paths["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/status"]["patch"]
                .is_object()
        );
        assert!(paths["/apis/example.com/v1/gadgets/{name}"]["patch"].is_object());
        assert!(!paths.contains_key("/apis/example.com/v1/gadgets/{name}/status"));
        assert_eq!(
            paths["/apis/example.com/v1/gadgets/{name}"]["patch"]["operationId"],
            "patchExampleComV1Gadget"
        );
    }

    #[test]
    fn unknown_group_versions_are_not_found() {
        let r = Registry::default();
        for gv in [
            "apis/nope.example.com/v1",
            "api/v2",
            "apis/apps",
            "nonsense",
        ] {
            let err = serve(&r, &Route::OpenApiV3(Some(gv.into())), "application/json").err();
            assert_eq!(err.map(|e| e.code), Some(404), "{gv}");
        }
    }

    #[test]
    fn media_types_are_negotiated() {
        let r = Registry::default();
        let kind = |accept: &str, route: Route| match serve(&r, &route, accept) {
            Ok(Reply::Json { code: 200, .. }) => "json".to_string(),
            Ok(Reply::Raw {
                code: 200,
                content_type,
                ..
            }) => content_type.to_string(),
            Ok(_) => "other".into(),
            Err(e) => e.code.to_string(),
        };
        // kubectl 1.20 / client-go's OpenAPISchema().
        assert_eq!(kind(V2_PROTOBUF_REQUESTED, Route::OpenApiV2), V2_PROTOBUF);
        assert_eq!(kind(V2_PROTOBUF, Route::OpenApiV2), V2_PROTOBUF);
        // A media type Go's mime.ParseMediaType accepts: token characters only.
        let (ty, sub) = V2_PROTOBUF.split_once('/').unwrap();
        assert!([ty, sub].iter().all(|t| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
        }));
        assert_eq!(kind("application/json", Route::OpenApiV2), "json");
        assert_eq!(kind("application/json, */*", Route::OpenApiV2), "json");
        assert_eq!(kind("", Route::OpenApiV2), "json");
        assert_eq!(kind("text/html", Route::OpenApiV2), "406");
        let gv = || Route::OpenApiV3(Some("apis/apps/v1".into()));
        assert_eq!(kind("application/json", gv()), "json");
        assert_eq!(kind("*/*", gv()), "json");
        assert_eq!(
            kind(
                "application/com.github.proto-openapi.spec.v3@v1.0+protobuf",
                gv()
            ),
            "406"
        );
        assert_eq!(
            kind(
                "application/com.github.proto-openapi.spec.v3@v1.0+protobuf, application/json",
                gv()
            ),
            "json"
        );
        assert_eq!(kind("application/json", Route::OpenApiV3(None)), "json");
    }

    /// A protobuf field: a varint or a length-delimited payload.
    #[derive(Debug, Clone, PartialEq)]
    enum F {
        V(u64),
        B(Vec<u8>),
    }

    fn decode(mut b: &[u8]) -> Vec<(u32, F)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((field, F::V(varint(&mut b)))),
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push((field, F::B(b[..n].to_vec())));
                    b = &b[n..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    fn get(msg: &[(u32, F)], field: u32) -> Vec<Vec<u8>> {
        msg.iter()
            .filter(|(f, _)| *f == field)
            .filter_map(|(_, v)| match v {
                F::B(b) => Some(b.clone()),
                F::V(_) => None,
            })
            .collect()
    }

    fn text(msg: &[(u32, F)], field: u32) -> String {
        get(msg, field)
            .first()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn v2_protobuf_is_a_gnostic_document_with_the_json_paths() {
        let r = registry_with_crds();
        let d = Document::v2(&r);
        let json_doc = d.v2_json();
        assert_eq!(json_doc["swagger"], "2.0");
        assert_eq!(json_doc["definitions"], json!({}));
        let pb = decode(&d.v2_protobuf());
        assert_eq!(text(&pb, 1), "2.0");
        assert_eq!(text(&decode(&get(&pb, 2)[0]), 1), "Kubernetes");
        assert_eq!(get(&pb, 9), [Vec::<u8>::new()]);
        let paths = decode(&get(&pb, 8)[0]);
        let items: Vec<(String, Vec<(u32, F)>)> = get(&paths, 2)
            .iter()
            .map(|b| {
                let named = decode(b);
                (text(&named, 1), decode(&get(&named, 2)[0]))
            })
            .collect();
        let names: Vec<&String> = items.iter().map(|(n, _)| n).collect();
        let json_names: Vec<&String> = json_doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(names, json_names);

        let (_, item) = items
            .iter()
            .find(|(n, _)| n == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .unwrap();
        // PathItem: get 2, put 3, delete 5, patch 8; path parameters 9.
        assert_eq!(
            item.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            [2, 3, 8, 5, 9, 9]
        );
        let patch = decode(&get(item, 8)[0]);
        assert_eq!(text(&patch, 5), "patchAppsV1NamespacedDeployment");
        let consumes: Vec<String> = get(&patch, 7)
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert!(consumes.contains(&"application/strategic-merge-patch+json".to_string()));
        // The GVK extension, as cli-runtime's hasGVKExtension reads it (YAML in Any.yaml).
        let ext: Vec<(String, String)> = get(&patch, 13)
            .iter()
            .map(|b| {
                let named = decode(b);
                (text(&named, 1), text(&decode(&get(&named, 2)[0]), 2))
            })
            .collect();
        assert_eq!(
            ext,
            [
                ("x-kubernetes-action".to_string(), "patch\n".to_string()),
                (
                    "x-kubernetes-group-version-kind".to_string(),
                    "group: \"apps\"\nkind: \"Deployment\"\nversion: \"v1\"\n".to_string()
                ),
            ]
        );
        // Query parameters: ParametersItem.parameter → Parameter.non_body_parameter →
        // NonBodyParameter.query_parameter_sub_schema { in 2, name 4 }.
        let query: Vec<String> = get(&patch, 8)
            .iter()
            .filter_map(|b| {
                let param = decode(&get(&decode(b), 1)[0]);
                let non_body = get(&param, 2);
                let q = get(&decode(non_body.first()?), 3);
                let sub = decode(q.first()?);
                assert_eq!(text(&sub, 2), "query");
                Some(text(&sub, 4))
            })
            .collect();
        assert_eq!(
            query,
            ["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        // The body parameter.
        let body = get(&patch, 8)
            .iter()
            .find_map(|b| get(&decode(&get(&decode(b), 1)[0]), 1).first().cloned())
            .map(|b| decode(&b))
            .unwrap();
        assert_eq!(
            (text(&body, 2), text(&body, 3)),
            ("body".to_string(), "body".to_string())
        );
        assert!(body.contains(&(4, F::V(1))));
        // Path parameters: path_parameter_sub_schema { required 1, in 2, name 4 }.
        let path_param = decode(&get(&decode(&get(&decode(&get(item, 9)[0]), 1)[0]), 2)[0]);
        let sub = decode(&get(&path_param, 4)[0]);
        assert!(sub.contains(&(1, F::V(1))));
        assert_eq!(
            (text(&sub, 2), text(&sub, 4)),
            ("path".to_string(), "name".to_string())
        );
    }

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
