//! The PATCH formats of the Kubernetes API:
//!
//! | Content-Type | function | sent by |
//! |---|---|---|
//! | `application/json-patch+json` (RFC 6902) | [`json_patch()`] | `kubectl rollout undo` (`replace /spec/template`, `/metadata/annotations`), `kubectl patch --type json` |
//! | `application/merge-patch+json` (RFC 7386) | [`merge_patch`] | `kubectl scale` (`{"spec":{"replicas":N}}` on `/scale`), `kubectl apply` for custom resources |
//! | `application/strategic-merge-patch+json` | [`strategic_merge`] | `kubectl apply` (3-way patch computed client-side), `kubectl edit`, `kubectl rollout restart` |
//!
//! Server-side apply (`application/apply-patch+yaml`) is recognised by [`PatchType`] but not
//! applied here.

mod schema;
mod strategic;

use serde_json::{Map, Value};
use thiserror::Error;

pub use schema::{FieldMeta, Strategy, TypeRef};
pub use strategic::strategic_merge;

/// Most operations a JSON patch may have; the Kubernetes API server refuses longer ones.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Why a patch could not be applied. The API server answers most of these with 422 (the patch
/// does not fit the object) or 400 (the patch is malformed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatchError {
    /// The body is not an RFC 6902 patch: not an array, an unknown `op`, a missing field, a
    /// path that is not a JSON pointer.
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    /// More operations than [`MAX_JSON_PATCH_OPERATIONS`].
    #[error("the JSON patch has {count} operations, more than the {max} allowed")]
    TooManyOperations { count: usize, max: usize },
    /// A `test` operation found another value.
    #[error("test operation {index} failed: the value at '{path}' does not match")]
    TestFailed { index: usize, path: String },
    /// An operation could not be applied (its path or `from` does not exist, …).
    #[error("{op} operation {index} failed at path '{path}': {reason}")]
    OperationFailed {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// A merge or strategic merge patch (or the object it patches) that is not a JSON object.
    #[error("{what} must be a JSON object")]
    NotAnObject { what: &'static str },
    /// A `$…` key that is no strategic merge patch directive.
    #[error("{path}: unknown patch directive {key:?}")]
    UnknownDirective { path: String, key: String },
    /// A directive with a wrong value or shape.
    #[error("{path}: invalid {directive}: {message}")]
    InvalidDirective {
        path: String,
        directive: String,
        message: String,
    },
    /// An element of a merged list without the list's merge key.
    #[error("{path}: {element} does not contain declared merge key: {key}")]
    MissingMergeKey {
        path: String,
        key: String,
        element: String,
    },
    /// A merged list that cannot be merged (mixed element types, lists of lists, …).
    #[error("{path}: {message}")]
    InvalidList { path: String, message: String },
    /// A patch type this library does not apply.
    #[error("patch type {0} is not supported")]
    Unsupported(&'static str),
}

/// The four PATCH content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header (parameters such as `; charset=utf-8` are
    /// ignored, case does not matter).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(match media.as_str() {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::StrategicMerge,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return None,
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Applies a patch of any supported type. `ty` matters only for strategic merge patches.
pub fn apply(
    original: &Value,
    patch_type: PatchType,
    patch: &Value,
    ty: &TypeRef,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => json_patch(original, patch),
        PatchType::Merge => merge_patch(original, patch),
        PatchType::StrategicMerge => strategic_merge(original, patch, ty),
        PatchType::Apply => Err(PatchError::Unsupported("application/apply-patch+yaml")),
    }
}

/// Applies an RFC 6902 JSON patch (an array of `add`, `remove`, `replace`, `move`, `copy`,
/// `test` operations). All operations apply or none: on error the original is untouched.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    if let Value::Array(ops) = patch
        && ops.len() > MAX_JSON_PATCH_OPERATIONS
    {
        return Err(PatchError::TooManyOperations {
            count: ops.len(),
            max: MAX_JSON_PATCH_OPERATIONS,
        });
    }
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    // The document is a copy thrown away on error, so the crate's undo log is not needed.
    let mut doc = original.clone();
    json_patch::patch_unsafe(&mut doc, &ops).map_err(|e| {
        let index = e.operation;
        let path = e.path.to_string();
        match e.kind {
            json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed { index, path },
            kind => PatchError::OperationFailed {
                index,
                op: ops.0.get(index).map(op_name).unwrap_or("unknown"),
                path,
                reason: kind.to_string(),
            },
        }
    })?;
    Ok(doc)
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    match op {
        json_patch::PatchOperation::Add(_) => "add",
        json_patch::PatchOperation::Remove(_) => "remove",
        json_patch::PatchOperation::Replace(_) => "replace",
        json_patch::PatchOperation::Move(_) => "move",
        json_patch::PatchOperation::Copy(_) => "copy",
        json_patch::PatchOperation::Test(_) => "test",
    }
}

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes a key, any
/// other value (lists included) replaces. The patch must be an object (a Kubernetes object is
/// one). Keys keep their order; new keys go last.
pub fn merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject {
            what: "a merge patch",
        });
    };
    let mut doc = original.clone();
    merge_object(&mut doc, patch);
    Ok(doc)
}

fn merge_object(target: &mut Value, patch: &Map<String, Value>) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        match value {
            Value::Null => {
                map.shift_remove(key);
            }
            Value::Object(child) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                merge_object(slot, child);
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "annotations": {"deployment.kubernetes.io/revision": "3"}
            },
            "spec": {
                "replicas": 2,
                "template": {
                    "metadata": {"labels": {"app": "web", "pod-template-hash": "new"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
                }
            }
        })
    }

    #[test]
    fn rollout_undo_replaces_the_template_and_annotations_with_a_json_patch() {
        // kubectl rollout undo: the template of the old ReplicaSet (without pod-template-hash)
        // and the annotations to keep.
        let patch = json!([
            {"op": "replace", "path": "/spec/template", "value": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}
            }},
            {"op": "replace", "path": "/metadata/annotations", "value": {
                "deployment.kubernetes.io/revision": "1"
            }}
        ]);
        let result = json_patch(&deployment(), &patch).unwrap();
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.25"
        );
        assert_eq!(
            result["spec"]["template"]["metadata"]["labels"],
            json!({"app": "web"})
        );
        assert_eq!(
            result["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert_eq!(result["spec"]["replicas"], 2);
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let patch = json!([
            {"op": "test", "path": "/c", "value": "x"},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "remove", "path": "/c"},
            {"op": "copy", "from": "/a/b", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "add", "path": "/f~1g", "value": true}
        ]);
        let result = json_patch(&doc, &patch).unwrap();
        assert_eq!(
            result,
            json!({"a": {"b": [0, 1, 2, 3]}, "e": [0, 1, 2, 3], "f/g": true})
        );
    }

    #[test]
    fn a_failing_test_operation_fails_the_whole_patch() {
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "test", "path": "/metadata/name", "value": "other"}
        ]);
        let err = json_patch(&deployment(), &patch).unwrap_err();
        assert_eq!(
            err,
            PatchError::TestFailed {
                index: 1,
                path: "/metadata/name".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "test operation 1 failed: the value at '/metadata/name' does not match"
        );
    }

    #[test]
    fn json_patch_paths_must_exist() {
        let patch = json!([{"op": "replace", "path": "/spec/nope/x", "value": 1}]);
        let err = json_patch(&deployment(), &patch).unwrap_err();
        assert!(
            matches!(err, PatchError::OperationFailed { index: 0, op: "replace", ref path, .. } if path == "/spec/nope/x"),
            "{err:?}"
        );
        let patch = json!([{"op": "remove", "path": "/spec/template/spec/containers/5"}]);
        assert!(matches!(
            json_patch(&deployment(), &patch),
            Err(PatchError::OperationFailed { op: "remove", .. })
        ));
    }

    #[test]
    fn malformed_json_patches_are_refused() {
        for bad in [
            json!({"op": "add", "path": "/a", "value": 1}),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "spec/replicas", "value": 1}]),
            json!([{"op": "move", "path": "/a"}]),
            json!([{"path": "/a", "value": 1}]),
            json!("[]"),
        ] {
            assert!(
                matches!(
                    json_patch(&deployment(), &bad),
                    Err(PatchError::InvalidJsonPatch(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_patches_are_limited_to_10000_operations() {
        let ops: Vec<Value> = (0..10_001)
            .map(|_| json!({"op": "test", "path": "/kind", "value": "Deployment"}))
            .collect();
        assert_eq!(
            json_patch(&deployment(), &Value::Array(ops)),
            Err(PatchError::TooManyOperations {
                count: 10_001,
                max: 10_000
            })
        );
    }

    #[test]
    fn kubectl_scale_merge_patch_sets_replicas() {
        let result = merge_patch(&deployment(), &json!({"spec": {"replicas": 3}})).unwrap();
        assert_eq!(result["spec"]["replicas"], 3);
        assert_eq!(result["spec"]["template"], deployment()["spec"]["template"]);
    }

    #[test]
    fn merge_patch_merges_objects_replaces_lists_and_deletes_nulls() {
        let original = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"keep": true}
        });
        let patch = json!({
            "metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["z"]},
            "spec": {"new": {"deep": {"x": null, "y": 1}}},
            "status": null
        });
        let result = merge_patch(&original, &patch).unwrap();
        assert_eq!(
            result,
            json!({
                "metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["z"]},
                "spec": {"keep": true, "new": {"deep": {"y": 1}}}
            })
        );
        // Key order is kept: "b" stays before "c".
        let labels: Vec<&String> = result["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(labels, ["b", "c"]);
    }

    #[test]
    fn merge_patch_replaces_non_objects_with_objects() {
        let result = merge_patch(&json!({"a": 1}), &json!({"a": {"b": 2}})).unwrap();
        assert_eq!(result, json!({"a": {"b": 2}}));
        assert_eq!(
            merge_patch(&Value::Null, &json!({"a": 1})).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn merge_patch_must_be_an_object() {
        assert_eq!(
            merge_patch(&deployment(), &json!([1])),
            Err(PatchError::NotAnObject {
                what: "a merge patch"
            })
        );
        assert_eq!(
            merge_patch(&deployment(), &Value::Null)
                .unwrap_err()
                .to_string(),
            "a merge patch must be a JSON object"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("Application/Merge-Patch+JSON; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for t in [
            PatchType::Json,
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
        }
    }

    #[test]
    fn apply_dispatches_on_the_patch_type() {
        let ty = TypeRef::for_kind("apps", "Deployment");
        let scaled = apply(
            &deployment(),
            PatchType::Merge,
            &json!({"spec": {"replicas": 4}}),
            &ty,
        );
        assert_eq!(scaled.unwrap()["spec"]["replicas"], 4);
        let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "busybox"}]}}}});
        let result = apply(&deployment(), PatchType::StrategicMerge, &smp, &ty).unwrap();
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let jp = json!([{"op": "replace", "path": "/spec/replicas", "value": 0}]);
        assert_eq!(
            apply(&deployment(), PatchType::Json, &jp, &ty).unwrap()["spec"]["replicas"],
            0
        );
        assert_eq!(
            apply(&deployment(), PatchType::Apply, &json!({}), &ty),
            Err(PatchError::Unsupported("application/apply-patch+yaml"))
        );
    }
}
