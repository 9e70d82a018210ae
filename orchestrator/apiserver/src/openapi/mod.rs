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
//!
//! - `paths`: the paths, operations and schemas both versions describe.
//! - `v3`, `v2`: their renderings; `pb` writes v2's protobuf.

mod paths;
mod pb;
mod v2;
mod v3;

use crate::handlers::Reply;
use crate::registry::Registry;
use crate::request::Route;
use crate::status::ApiError;
use paths::Document;
pub use v3::{v3_document, v3_index};

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

/// What the tests of both versions share.
#[cfg(test)]
mod testing {
    use serde_json::json;

    use crate::registry::Registry;

    /// A registry serving a namespaced and a cluster-scoped custom resource.
    pub(super) fn registry_with_crds() -> Registry {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
