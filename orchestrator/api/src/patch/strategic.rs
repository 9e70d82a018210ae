//! Strategic merge patch (`application/strategic-merge-patch+json`), the apply half of
//! apimachinery's `pkg/util/strategicpatch`, over `serde_json::Value`.
//!
//! * Maps merge recursively; `null` deletes a key.
//! * Lists without a strategy are replaced whole.
//! * Lists with `patchStrategy: merge` merge element-wise: objects by their merge key (a patch
//!   element updates the original element with the same key, or is added), primitives as a set.
//! * Directives: `$patch: replace | delete | merge` (on a map, or as a list element),
//!   `$retainKeys`, `$deleteFromPrimitiveList/<list>`, `$setElementOrder/<list>`. Any other key
//!   beginning with `$` is an error, and no directive reaches the result.
//!
//! Order of merged lists, as apimachinery's `normalizeElementOrder`: elements named in the patch
//! keep the patch's relative order, the other original elements keep theirs, and the two are
//! interleaved by the original order where both are known; a patch element the original did not
//! have goes before the original elements that follow it. `$setElementOrder/<list>` (sent by
//! `kubectl apply` and `kubectl edit` for every merged list they touch) fixes the order of the
//! elements it names the same way.

use serde_json::{Map, Value};

use super::PatchError;
use super::schema::{FieldMeta, Strategy, TypeRef};

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a strategic merge patch to an object of the type `ty`
/// ([`TypeRef::for_kind`](super::TypeRef::for_kind)). The patch must be a JSON object; the
/// original must be an object (null counts as `{}`). `{"$patch": "delete"}` at the top gives
/// `{}`, as in apimachinery.
pub fn strategic_merge(original: &Value, patch: &Value, ty: &TypeRef) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject {
            what: "a strategic merge patch",
        });
    };
    let original = match original {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        _ => {
            return Err(PatchError::NotAnObject {
                what: "the object to patch",
            });
        }
    };
    let merged = merge_map(original, patch.clone(), *ty, &Path::root())?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// A dotted field path for error messages.
#[derive(Clone)]
struct Path(String);

impl Path {
    fn root() -> Path {
        Path(String::new())
    }

    fn child(&self, field: &str) -> Path {
        if self.0.is_empty() {
            Path(field.to_string())
        } else {
            Path(format!("{}.{field}", self.0))
        }
    }

    fn show(&self) -> String {
        if self.0.is_empty() {
            "<root>".to_string()
        } else {
            self.0.clone()
        }
    }
}

fn invalid_directive(path: &Path, directive: &str, message: impl Into<String>) -> PatchError {
    PatchError::InvalidDirective {
        path: path.show(),
        directive: directive.to_string(),
        message: message.into(),
    }
}

fn invalid_list(path: &Path, message: impl Into<String>) -> PatchError {
    PatchError::InvalidList {
        path: path.show(),
        message: message.into(),
    }
}

/// Equality of JSON values where numbers compare by value (`80` equals `80.0`), as Go's
/// `interface{}` comparison of decoded JSON does.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// What identifies a list element: its merge key value for objects, itself for primitives.
fn identity<'a>(element: &'a Value, merge_key: Option<&str>) -> Option<&'a Value> {
    match merge_key {
        Some(key) => element.get(key),
        None => Some(element),
    }
}

fn same_element(a: &Value, b: &Value, merge_key: Option<&str>) -> bool {
    match (identity(a, merge_key), identity(b, merge_key)) {
        (Some(x), Some(y)) => json_eq(x, y),
        _ => false,
    }
}

fn position_in(list: &[Value], element: &Value, merge_key: Option<&str>) -> Option<usize> {
    list.iter()
        .position(|e| same_element(e, element, merge_key))
}

/// The `$patch` value of a list element or map, if any; None when absent.
fn directive_of(value: &Value) -> Option<&Value> {
    value.as_object().and_then(|m| m.get(PATCH_DIRECTIVE))
}

/// Merges `patch` into `original`. `Ok(None)` means the map is deleted (`$patch: delete`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: TypeRef,
    path: &Path,
) -> Result<Option<Map<String, Value>>, PatchError> {
    if let Some(directive) = patch.shift_remove(PATCH_DIRECTIVE) {
        match directive.as_str() {
            // The patch (without the directive) is the new value.
            Some("replace") => return merge_map(Map::new(), patch, ty, path),
            Some("delete") => return Ok(None),
            // The default, said explicitly.
            Some("merge") => {}
            _ => {
                return Err(invalid_directive(
                    path,
                    PATCH_DIRECTIVE,
                    format!("unknown value {directive}, expected replace, delete or merge"),
                ));
            }
        }
    }

    if let Some(retain) = patch.shift_remove(RETAIN_KEYS) {
        apply_retain_keys(&mut original, &patch, retain, path)?;
    }

    set_element_order(&mut original, &mut patch, ty, path)?;

    let mut delete_lists = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            if field.is_empty() {
                return Err(invalid_directive(path, &key, "names no list"));
            }
            let Value::Array(to_delete) = value else {
                return Err(invalid_directive(path, &key, "must be a list"));
            };
            delete_lists.push((field.to_string(), to_delete));
            continue;
        }
        if key.starts_with('$') {
            return Err(PatchError::UnknownDirective {
                path: path.show(),
                key,
            });
        }
        let meta = ty.field(&key);
        let child = path.child(&key);
        if value.is_null() {
            original.shift_remove(&key);
            continue;
        }
        // Take the current value out, leaving a placeholder so the key keeps its position.
        let current = original.get_mut(&key).map(std::mem::take);
        let merged = match (current, value) {
            (Some(Value::Object(o)), Value::Object(p)) if meta.strategy != Strategy::Replace => {
                merge_map(o, p, meta.ty, &child)?.map(Value::Object)
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                Some(Value::Array(merge_list(o, p, &meta, &child)?))
            }
            // Absent, null, of another type, a scalar, or a map with the replace strategy: the
            // patch value, cleaned of directives and nulls, is the new value.
            (_, value) => fresh_value(value, &meta, &child)?,
        };
        match merged {
            Some(value) => {
                original.insert(key, value);
            }
            None => {
                original.shift_remove(&key);
            }
        }
    }

    for (field, to_delete) in delete_lists {
        if let Some(Value::Array(list)) = original.get_mut(&field) {
            for element in &to_delete {
                if element.is_object() || element.is_array() {
                    return Err(invalid_directive(
                        path,
                        &format!("{DELETE_FROM_PRIMITIVE_LIST}{field}"),
                        "may only list primitive values",
                    ));
                }
            }
            list.retain(|e| !to_delete.iter().any(|d| json_eq(e, d)));
        }
    }
    Ok(Some(original))
}

/// `$retainKeys: [..]`: every field the patch sets must be listed; original keys not listed are
/// dropped before merging.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: Value,
    path: &Path,
) -> Result<(), PatchError> {
    let Value::Array(retain) = retain else {
        return Err(invalid_directive(
            path,
            RETAIN_KEYS,
            "must be a list of field names",
        ));
    };
    let listed = |key: &str| retain.iter().any(|k| k.as_str() == Some(key));
    for (key, value) in patch {
        if value.is_null() || key.starts_with('$') {
            continue;
        }
        if !listed(key) {
            return Err(invalid_directive(
                path,
                RETAIN_KEYS,
                format!("the patch sets {key:?}, which $retainKeys does not list"),
            ));
        }
    }
    original.retain(|key, _| listed(key));
    Ok(())
}

/// Processes every `$setElementOrder/<list>` of a patch map together with `<list>` itself,
/// removing both from the patch.
fn set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: TypeRef,
    path: &Path,
) -> Result<(), PatchError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for directive in directives {
        let order = patch.shift_remove(&directive).unwrap_or(Value::Null);
        let field = directive.trim_start_matches(SET_ELEMENT_ORDER).to_string();
        if field.is_empty() {
            return Err(invalid_directive(path, &directive, "names no list"));
        }
        let Value::Array(order) = order else {
            return Err(invalid_directive(path, &directive, "must be a list"));
        };
        let meta = ty.field(&field);
        let child = path.child(&field);
        let patch_list = match patch.shift_remove(&field) {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(Value::Null) => {
                // `<list>: null` deletes the list; there is nothing to order.
                patch.insert(field, Value::Null);
                continue;
            }
            Some(_) => {
                return Err(invalid_directive(
                    path,
                    &directive,
                    format!("{field:?} in the patch is not a list"),
                ));
            }
        };
        let original_list = match original.get(&field) {
            Some(Value::Array(list)) => Some(list.clone()),
            _ => None,
        };
        if let Some(list) = &patch_list {
            validate_order(list, &order, meta.merge_key, &child, &directive)?;
        }
        let merged = match (original_list.clone(), patch_list) {
            (Some(o), None) => o,
            (o, Some(p)) => merge_list(o.unwrap_or_default(), p, &meta, &child)?,
            (None, None) => continue,
        };
        let merged = if meta.merges_lists() {
            let key = if merged.iter().all(Value::is_object) {
                meta.merge_key
            } else {
                None
            };
            let (named, server_only): (Vec<Value>, Vec<Value>) = merged
                .into_iter()
                .partition(|e| order.iter().any(|o| same_element(e, o, key)));
            normalize_element_order(
                named,
                server_only,
                &order,
                &original_list.unwrap_or_default(),
                key,
            )
        } else {
            merged
        };
        original.insert(field, Value::Array(merged));
    }
    Ok(())
}

/// apimachinery `validatePatchWithSetOrderList`: the elements the patch list names (deletions
/// aside) must appear in `$setElementOrder` in the same relative order.
fn validate_order(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
    path: &Path,
    directive: &str,
) -> Result<(), PatchError> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let named: Vec<&Value> = patch_list
        .iter()
        .filter(|e| directive_of(e).and_then(Value::as_str) != Some("delete"))
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < named.len() && o < order.len() {
        if directive_of(named[p]).is_some() {
            p += 1;
            continue;
        }
        if let Some(key) = merge_key {
            for element in [named[p], &order[o]] {
                if element.get(key).is_none() {
                    return Err(PatchError::MissingMergeKey {
                        path: path.show(),
                        key: key.to_string(),
                        element: element.to_string(),
                    });
                }
            }
        }
        if same_element(named[p], &order[o], merge_key) {
            p += 1;
        }
        o += 1;
    }
    if p < named.len() {
        return Err(invalid_directive(
            path,
            directive,
            "the order of the patch list doesn't match the $setElementOrder list",
        ));
    }
    Ok(())
}

/// The value of a field the original does not have (or has with another type): the patch
/// value with its directives applied to nothing and its nulls dropped. None: nothing to set.
fn fresh_value(value: Value, meta: &FieldMeta, path: &Path) -> Result<Option<Value>, PatchError> {
    Ok(match value {
        Value::Object(map) => merge_map(Map::new(), map, meta.ty, path)?.map(Value::Object),
        Value::Array(list) => Some(Value::Array(merge_list(Vec::new(), list, meta, path)?)),
        scalar => Some(scalar),
    })
}

#[derive(PartialEq, Eq)]
enum ElementKind {
    Objects,
    Primitives,
}

fn element_kind(lists: [&[Value]; 2], path: &Path) -> Result<Option<ElementKind>, PatchError> {
    let mut kind = None;
    for element in lists.into_iter().flatten() {
        let this = match element {
            Value::Array(_) => return Err(invalid_list(path, "lists of lists cannot be merged")),
            Value::Object(_) => ElementKind::Objects,
            _ => ElementKind::Primitives,
        };
        match &kind {
            None => kind = Some(this),
            Some(k) if *k != this => {
                return Err(invalid_list(
                    path,
                    "list elements are not all of the same type",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(kind)
}

/// Merges two lists of a field.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: &FieldMeta,
    path: &Path,
) -> Result<Vec<Value>, PatchError> {
    if !meta.merges_lists() {
        return replace_list(patch, meta, path);
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    match element_kind([&original, &patch], path)? {
        None | Some(ElementKind::Primitives) => Ok(merge_primitives(original, patch)),
        Some(ElementKind::Objects) => merge_objects(original, patch, meta, path),
    }
}

/// A list without merge strategy: the patch list, with directive elements dropped and the
/// elements cleaned of nested directives.
fn replace_list(
    patch: Vec<Value>,
    meta: &FieldMeta,
    path: &Path,
) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::with_capacity(patch.len());
    for element in patch {
        if let Some(directive) = directive_of(&element) {
            match directive.as_str() {
                Some("replace" | "delete" | "merge") => continue,
                _ => {
                    return Err(invalid_directive(
                        path,
                        PATCH_DIRECTIVE,
                        format!("unknown value {directive} in a list element"),
                    ));
                }
            }
        }
        let element_meta = FieldMeta {
            strategy: Strategy::Default,
            ..*meta
        };
        if let Some(value) = fresh_value(element, &element_meta, path)? {
            out.push(value);
        }
    }
    Ok(out)
}

/// A merged list of primitives: the union, without duplicates.
fn merge_primitives(original: Vec<Value>, patch: Vec<Value>) -> Vec<Value> {
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for element in original.iter().chain(patch.iter()) {
        if !merged.iter().any(|m| json_eq(m, element)) {
            merged.push(element.clone());
        }
    }
    let (named, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|e| patch.iter().any(|p| json_eq(e, p)));
    normalize_element_order(named, server_only, &patch, &original, None)
}

/// A merged list of objects, by merge key.
fn merge_objects(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    meta: &FieldMeta,
    path: &Path,
) -> Result<Vec<Value>, PatchError> {
    let Some(key) = meta.merge_key else {
        return Err(invalid_list(
            path,
            "cannot merge lists of objects without a merge key",
        ));
    };
    let missing_key = |element: &Value| PatchError::MissingMergeKey {
        path: path.show(),
        key: key.to_string(),
        element: element.to_string(),
    };

    // Directive elements first: deletions, and `$patch: replace` for the whole list.
    let mut plain: Vec<Map<String, Value>> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for element in patch {
        let Value::Object(mut map) = element else {
            return Err(invalid_list(path, "list elements are not all objects"));
        };
        match map.get(PATCH_DIRECTIVE).cloned() {
            None => plain.push(map),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let Some(value) = map.get(key) else {
                        return Err(missing_key(&Value::Object(map)));
                    };
                    original.retain(|e| !identity(e, Some(key)).is_some_and(|v| json_eq(v, value)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    // `{"$patch": "merge"}` alone says "merge", which is the default; with
                    // other fields it is an ordinary element.
                    map.shift_remove(PATCH_DIRECTIVE);
                    if !map.is_empty() {
                        plain.push(map);
                    }
                }
                _ => {
                    return Err(invalid_directive(
                        path,
                        PATCH_DIRECTIVE,
                        format!("unknown value {directive} in a list element"),
                    ));
                }
            },
        }
    }
    if replace {
        let mut out = Vec::with_capacity(plain.len());
        for element in plain {
            if let Some(map) = merge_map(Map::new(), element, meta.ty, path)? {
                out.push(Value::Object(map));
            }
        }
        return Ok(out);
    }

    let plain: Vec<Value> = plain.into_iter().map(Value::Object).collect();
    for element in &plain {
        if element.get(key).is_none() {
            return Err(missing_key(element));
        }
    }
    let server_order = original.clone();
    let mut merged = original;
    for element in &plain {
        let Value::Object(patch_map) = element.clone() else {
            continue;
        };
        match position_in(&merged, element, Some(key)) {
            Some(i) => {
                let current = match std::mem::take(&mut merged[i]) {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                match merge_map(current, patch_map, meta.ty, path)? {
                    Some(map) => merged[i] = Value::Object(map),
                    None => {
                        merged.remove(i);
                    }
                }
            }
            None => {
                if let Some(map) = merge_map(Map::new(), patch_map, meta.ty, path)? {
                    merged.push(Value::Object(map));
                }
            }
        }
    }
    let (named, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|e| position_in(&plain, e, Some(key)).is_some());
    Ok(normalize_element_order(
        named,
        server_only,
        &plain,
        &server_order,
        Some(key),
    ))
}

/// apimachinery `normalizeElementOrder`: sorts the patch's elements by `patch_order` and the
/// others by `server_order`, then interleaves them ([`merge_sorted`]).
fn normalize_element_order(
    named: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Vec<Value> {
    let named = sort_by_order(named, patch_order, merge_key);
    let server_only = sort_by_order(server_only, server_order, merge_key);
    merge_sorted(server_only, named, server_order, merge_key)
}

/// Stable sort by position in `order`; elements not in it go last.
fn sort_by_order(mut list: Vec<Value>, order: &[Value], merge_key: Option<&str>) -> Vec<Value> {
    list.sort_by_key(|e| position_in(order, e, merge_key).unwrap_or(usize::MAX));
    list
}

/// apimachinery `mergeSortedSlice`: takes the next server-only element while it comes before
/// the next patch element in the server order, else the next patch element. A patch element
/// the server does not have therefore goes before the remaining server-only elements.
fn merge_sorted(
    server_only: Vec<Value>,
    named: Vec<Value>,
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(server_only.len() + named.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = named.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    position_in(server_order, l, merge_key),
                    position_in(server_order, r, merge_key),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        if let Some(element) = next {
            out.push(element);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_type() -> TypeRef {
        TypeRef::for_kind("apps", "Deployment")
    }

    fn smp(kind: (&str, &str), original: &Value, patch: &Value) -> Value {
        strategic_merge(original, patch, &TypeRef::for_kind(kind.0, kind.1)).unwrap()
    }

    fn deploy(original: &Value, patch: &Value) -> Value {
        strategic_merge(original, patch, &deployment_type()).unwrap()
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A Deployment as the API server stores it: two containers with env and ports, defaulted
    /// fields the user never wrote.
    fn live_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web"},
                "annotations": {
                    "deployment.kubernetes.io/revision": "1",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...v1...}"
                }
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "nginx:1.25",
                                "args": ["-g", "daemon off;"],
                                "env": [
                                    {"name": "MODE", "value": "prod"},
                                    {"name": "LOG", "value": "info"}
                                ],
                                "ports": [
                                    {"containerPort": 80, "protocol": "TCP", "name": "http"},
                                    {"containerPort": 443, "protocol": "TCP", "name": "https"}
                                ],
                                "terminationMessagePath": "/dev/termination-log"
                            },
                            {
                                "name": "sidecar",
                                "image": "busybox:1.36",
                                "env": [{"name": "TARGET", "value": "web"}]
                            }
                        ],
                        "tolerations": [
                            {"key": "a", "operator": "Exists"},
                            {"key": "b", "operator": "Exists"}
                        ],
                        "restartPolicy": "Always",
                        "dnsPolicy": "ClusterFirst"
                    }
                }
            },
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Available", "status": "True"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ]
            }
        })
    }

    #[test]
    fn kubectl_apply_changes_image_and_replicas_and_keeps_everything_else() {
        // The 3-way patch kubectl apply computes when the manifest changes the web image and
        // the replica count: only the changes, plus $setElementOrder for the merged list.
        let patch = json!({
            "metadata": {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...v2...}"
            }},
            "spec": {
                "replicas": 3,
                "template": {"spec": {
                    "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
                    "containers": [{"image": "nginx:1.27", "name": "web"}]
                }}
            }
        });
        let original = live_deployment();
        let result = deploy(&original, &patch);

        let mut expected = original.clone();
        expected["spec"]["replicas"] = json!(3);
        expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!("{...v2...}");
        assert_eq!(result, expected);
        // Not only equal as JSON values: the container order is the manifest's.
        assert_eq!(
            names(&result["spec"]["template"]["spec"]["containers"]),
            ["web", "sidecar"]
        );
    }

    #[test]
    fn set_element_order_reorders_merged_elements() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}]
        }}}});
        let result = deploy(&live_deployment(), &patch);
        let containers = &result["spec"]["template"]["spec"]["containers"];
        assert_eq!(names(containers), ["sidecar", "web"]);
        assert_eq!(
            containers[1]["env"],
            live_deployment()["spec"]["template"]["spec"]["containers"][0]["env"]
        );
    }

    #[test]
    fn adding_an_env_var_by_name_keeps_the_others() {
        // kubectl apply after adding DEBUG between MODE and LOG in the manifest.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{
                "name": "web",
                "$setElementOrder/env": [{"name": "MODE"}, {"name": "DEBUG"}, {"name": "LOG"}],
                "env": [{"name": "DEBUG", "value": "1"}]
            }]
        }}}});
        let result = deploy(&live_deployment(), &patch);
        let web = &result["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            web["env"],
            json!([
                {"name": "MODE", "value": "prod"},
                {"name": "DEBUG", "value": "1"},
                {"name": "LOG", "value": "info"}
            ])
        );
        assert_eq!(
            web["ports"],
            live_deployment()["spec"]["template"]["spec"]["containers"][0]["ports"]
        );
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][1]["name"],
            "sidecar"
        );
    }

    #[test]
    fn changing_one_env_var_updates_it_in_place() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "env": [{"name": "LOG", "value": "debug"}]
        }]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "MODE", "value": "prod"}, {"name": "LOG", "value": "debug"}])
        );
    }

    #[test]
    fn removing_an_env_var_by_name_with_patch_delete() {
        // kubectl apply after removing MODE from the manifest.
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "$setElementOrder/env": [{"name": "LOG"}],
            "env": [{"$patch": "delete", "name": "MODE"}]
        }]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "LOG", "value": "info"}])
        );
    }

    #[test]
    fn patch_delete_removes_a_whole_container() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"$patch": "delete", "name": "sidecar"}]
        }}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            names(&result["spec"]["template"]["spec"]["containers"]),
            ["web"]
        );
    }

    #[test]
    fn patch_delete_of_an_element_that_does_not_exist_is_a_no_op() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "delete", "name": "ghost"}
        ]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(result, live_deployment());
    }

    #[test]
    fn patch_delete_on_a_map_deletes_it() {
        let patch = json!({"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(result["spec"]["strategy"], json!({"type": "RollingUpdate"}));
        // A delete for a map that is not there sets nothing.
        let patch =
            json!({"spec": {"template": {"spec": {"securityContext": {"$patch": "delete"}}}}});
        let result = deploy(&live_deployment(), &patch);
        assert!(
            result["spec"]["template"]["spec"]
                .get("securityContext")
                .is_none()
        );
        // At the top level it empties the object, as apimachinery does.
        assert_eq!(
            deploy(&live_deployment(), &json!({"$patch": "delete"})),
            json!({})
        );
    }

    #[test]
    fn patch_replace_on_a_map_replaces_it() {
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "tier": "front"}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(result["metadata"]["labels"], json!({"tier": "front"}));
        assert_eq!(result["metadata"]["name"], "web");
    }

    #[test]
    fn patch_replace_as_a_list_element_replaces_the_list() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "only", "image": "alpine"},
            {"$patch": "replace"}
        ]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "alpine"}])
        );
        let patch = json!({"metadata": {"finalizers": ["x"]}});
        let with_finalizers = deploy(&live_deployment(), &patch);
        let emptied = deploy(
            &with_finalizers,
            &json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}]}}}}),
        );
        assert_eq!(emptied["spec"]["template"]["spec"]["containers"], json!([]));
    }

    #[test]
    fn patch_merge_is_the_default_said_explicitly() {
        let patch = json!({"metadata": {"labels": {"$patch": "merge", "tier": "front"}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "merge"},
            {"name": "web", "image": "nginx:2"}
        ]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            names(&result["spec"]["template"]["spec"]["containers"]),
            ["web", "sidecar"]
        );
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
    }

    #[test]
    fn retain_keys_drops_rolling_update_on_a_switch_to_recreate() {
        // kubectl apply after changing strategy.type to Recreate: rollingUpdate was defaulted by
        // the server, the manifest never had it, so only $retainKeys can remove it.
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(result["spec"]["strategy"], json!({"type": "Recreate"}));

        // When the manifest had rollingUpdate, kubectl also sends it as null.
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["type"], "rollingUpdate": null, "type": "Recreate"
        }}});
        assert_eq!(
            deploy(&live_deployment(), &patch)["spec"]["strategy"],
            json!({"type": "Recreate"})
        );

        // And back: the keys listed are kept and merged.
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["rollingUpdate", "type"],
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1}
        }}});
        let recreate = json!({"spec": {"strategy": {"type": "Recreate"}}});
        assert_eq!(
            deploy(&recreate, &patch)["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
        );
    }

    #[test]
    fn retain_keys_must_list_every_field_the_patch_sets() {
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        let err = strategic_merge(&live_deployment(), &patch, &deployment_type()).unwrap_err();
        assert!(
            matches!(&err, PatchError::InvalidDirective { path, directive, .. } if path == "spec.strategy" && directive == "$retainKeys"),
            "{err:?}"
        );
        let patch = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert!(strategic_merge(&live_deployment(), &patch, &deployment_type()).is_err());
    }

    #[test]
    fn retain_keys_switches_a_volume_source() {
        let pod = json!({"spec": {"volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "old"}}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/volumes": [{"name": "data"}, {"name": "config"}],
            "volumes": [{"$retainKeys": ["hostPath", "name"], "name": "data", "hostPath": {"path": "/d"}}]
        }});
        let result = smp(("", "Pod"), &pod, &patch);
        assert_eq!(
            result["spec"]["volumes"],
            json!([
                {"name": "data", "hostPath": {"path": "/d"}},
                {"name": "config", "configMap": {"name": "old"}}
            ])
        );
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        let obj = json!({"metadata": {"name": "x", "finalizers": ["a.io/one", "a.io/two"]}});
        let result = smp(
            ("", "ConfigMap"),
            &obj,
            &json!({"metadata": {"finalizers": ["a.io/two", "a.io/three"]}}),
        );
        let mut finalizers: Vec<&str> = result["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // No duplicate; the patch's order for the elements it names (apimachinery puts an
        // element the original did not have before the original elements after it).
        assert_eq!(finalizers, ["a.io/one", "a.io/two", "a.io/three"]);
        finalizers.sort_unstable();
        finalizers.dedup();
        assert_eq!(finalizers.len(), 3);

        let result = smp(
            ("", "ConfigMap"),
            &obj,
            &json!({"metadata": {"finalizers": ["a.io/new"]}}),
        );
        assert_eq!(
            result["metadata"]["finalizers"],
            json!(["a.io/new", "a.io/one", "a.io/two"])
        );
    }

    #[test]
    fn delete_from_primitive_list_removes_finalizers() {
        let obj = json!({"metadata": {"name": "x", "finalizers": ["a", "b", "c", "b"]}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zzz"]}});
        assert_eq!(
            smp(("", "ConfigMap"), &obj, &patch)["metadata"]["finalizers"],
            json!(["a", "c"])
        );

        // kubectl apply after replacing finalizer c by d in the manifest.
        let obj = json!({"metadata": {"name": "x", "finalizers": ["a", "c", "server"]}});
        let patch = json!({"metadata": {
            "$setElementOrder/finalizers": ["a", "d"],
            "$deleteFromPrimitiveList/finalizers": ["c"],
            "finalizers": ["d"]
        }});
        assert_eq!(
            smp(("", "ConfigMap"), &obj, &patch)["metadata"]["finalizers"],
            json!(["a", "d", "server"])
        );

        // Deleting from a list that is not there does not create it.
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let result = smp(
            ("", "ConfigMap"),
            &json!({"metadata": {"name": "x"}}),
            &patch,
        );
        assert_eq!(result, json!({"metadata": {"name": "x"}}));
    }

    #[test]
    fn delete_from_primitive_list_refuses_objects() {
        let obj = json!({"metadata": {"finalizers": ["a"]}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [{"a": 1}]}});
        assert!(strategic_merge(&obj, &patch, &TypeRef::for_kind("", "ConfigMap")).is_err());
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}});
        assert!(strategic_merge(&obj, &patch, &TypeRef::for_kind("", "ConfigMap")).is_err());
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_whole() {
        let patch = json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "c", "operator": "Exists"}],
            "containers": [{"name": "web", "args": ["-v"]}]
        }}}});
        let result = deploy(&live_deployment(), &patch);
        let spec = &result["spec"]["template"]["spec"];
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "c", "operator": "Exists"}])
        );
        assert_eq!(spec["containers"][0]["args"], json!(["-v"]));
        assert_eq!(spec["containers"][0]["image"], "nginx:1.25");
    }

    #[test]
    fn null_deletes_a_map_key() {
        let patch = json!({
            "metadata": {"annotations": {"deployment.kubernetes.io/revision": null}},
            "spec": {"template": {"spec": {"dnsPolicy": null, "tolerations": null}}}
        });
        let result = deploy(&live_deployment(), &patch);
        assert!(
            result["metadata"]["annotations"]
                .get("deployment.kubernetes.io/revision")
                .is_none()
        );
        assert!(
            result["metadata"]["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_some()
        );
        assert!(
            result["spec"]["template"]["spec"]
                .get("dnsPolicy")
                .is_none()
        );
        assert!(
            result["spec"]["template"]["spec"]
                .get("tolerations")
                .is_none()
        );
        // Null for a key that is not there changes nothing and is not stored.
        let result = deploy(&live_deployment(), &json!({"spec": {"paused": null}}));
        assert_eq!(result, live_deployment());
    }

    #[test]
    fn rollout_restart_adds_a_template_annotation() {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"
        }}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["spec"]["template"]["metadata"],
            json!({
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}
            })
        );
        assert_eq!(
            result["spec"]["template"]["spec"],
            live_deployment()["spec"]["template"]["spec"]
        );
    }

    #[test]
    fn a_new_container_goes_before_the_ones_the_patch_does_not_name() {
        // apimachinery's ordering without $setElementOrder (`kubectl patch` by hand): the
        // Kubernetes documentation's patch-demo shows the added container first.
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "log", "image": "fluentbit"}
        ]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            names(&result["spec"]["template"]["spec"]["containers"]),
            ["log", "web", "sidecar"]
        );

        // With $setElementOrder (kubectl apply, edit) the manifest's order wins.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}, {"name": "log"}],
            "containers": [{"name": "log", "image": "fluentbit"}]
        }}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            names(&result["spec"]["template"]["spec"]["containers"]),
            ["web", "sidecar", "log"]
        );
    }

    #[test]
    fn untouched_original_elements_keep_their_relative_order() {
        // apimachinery "preserve the order from the patch in a merging list 2".
        let ty = TypeRef::for_kind("", "Pod");
        let original = json!({"spec": {"containers": [
            {"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "3", "image": "c"}, {"name": "1", "image": "a"}
        ]}});
        let result = strategic_merge(&original, &patch, &ty).unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "2", "image": "b"}, {"name": "3", "image": "c"}, {"name": "1", "image": "a"}])
        );
    }

    #[test]
    fn three_way_merge_of_maps_upstream_case() {
        // apimachinery "merge lists of maps", applied to the live object.
        let ty = TypeRef::for_kind("", "Pod");
        let current = json!({"spec": {"containers": [
            {"name": "1", "image": "a"},
            {"name": "2", "image": "2", "imagePullPolicy": "b"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "4"}, {"name": "1"}, {"name": "2"}, {"name": "3"}],
            "containers": [{"name": "4", "image": "4"}, {"name": "3", "image": "3"}]
        }});
        let result = strategic_merge(&current, &patch, &ty).unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([
                {"name": "4", "image": "4"},
                {"name": "1", "image": "a"},
                {"name": "2", "image": "2", "imagePullPolicy": "b"},
                {"name": "3", "image": "3"}
            ])
        );
    }

    #[test]
    fn set_element_order_may_name_deleted_and_absent_elements() {
        // apimachinery "nested patch merge with empty list".
        let ty = TypeRef::for_kind("", "Pod");
        let current = json!({"spec": {"containers": [{"name": "hello2"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "hello"}, {"name": "doesntexist"}],
            "containers": [{"name": "hello"}, {"$patch": "delete", "name": "doesntexist"}]
        }});
        let result = strategic_merge(&current, &patch, &ty).unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "hello"}, {"name": "hello2"}])
        );
    }

    #[test]
    fn set_element_order_must_agree_with_the_patch_list() {
        let ty = TypeRef::for_kind("", "Pod");
        let current =
            json!({"spec": {"containers": [{"name": "1"}, {"name": "3"}, {"name": "2"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
            "containers": [{"name": "3", "image": "x"}, {"name": "1", "image": "y"}]
        }});
        let err = strategic_merge(&current, &patch, &ty).unwrap_err();
        assert!(err.to_string().contains("doesn't match"), "{err}");
    }

    #[test]
    fn set_element_order_for_a_new_list() {
        let ty = TypeRef::for_kind("", "Pod");
        let current = json!({"spec": {}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a"}, {"name": "b", "env": [{"name": "X", "$patch": "delete"}]}]
        }});
        let result = strategic_merge(&current, &patch, &ty).unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "a"}, {"name": "b", "env": []}])
        );
    }

    #[test]
    fn duplicate_elements_are_all_deleted() {
        // apimachinery "delete all duplicate entries in a merging list".
        let ty = TypeRef::for_kind("", "Pod");
        let current = json!({"spec": {"containers": [
            {"name": "1"}, {"name": "1"}, {"name": "2", "image": "a"}, {"name": "3"}, {"name": "3"}
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "1", "$patch": "delete"}, {"name": "3", "$patch": "delete"}
        ]}});
        let result = strategic_merge(&current, &patch, &ty).unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "2", "image": "a"}])
        );
    }

    #[test]
    fn container_ports_merge_by_number() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "ports": [{"containerPort": 443.0, "name": "tls"}, {"containerPort": 8080, "protocol": "TCP"}]
        }]}}}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([
                {"containerPort": 80, "protocol": "TCP", "name": "http"},
                // Matched although written 443.0; the patch's spelling is what is stored.
                {"containerPort": 443.0, "protocol": "TCP", "name": "tls"},
                {"containerPort": 8080, "protocol": "TCP"}
            ])
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"spec": {"type": "ClusterIP", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9090}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 9090}],
            "ports": [{"port": 80, "targetPort": 8081}]
        }});
        let result = smp(("", "Service"), &svc, &patch);
        assert_eq!(
            result["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 8081}, {"name": "metrics", "port": 9090}])
        );
    }

    #[test]
    fn node_status_conditions_merge_by_type() {
        // The kubelet's status heartbeat patches one condition.
        let node = json!({"status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "t0"}
            ],
            "addresses": [{"type": "InternalIP", "address": "198.18.0.2"}]
        }});
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
            "conditions": [{"type": "Ready", "lastHeartbeatTime": "t1"}]
        }});
        let result = smp(("", "Node"), &node, &patch);
        assert_eq!(
            result["status"]["conditions"],
            json!([
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"}
            ])
        );
        assert_eq!(result["status"]["addresses"], node["status"]["addresses"]);
    }

    #[test]
    fn deployment_status_conditions_merge_by_type() {
        let patch = json!({"status": {"conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]}});
        let result = deploy(&live_deployment(), &patch);
        assert_eq!(
            result["status"]["conditions"],
            json!([
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            ])
        );
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let pod = json!({"metadata": {"ownerReferences": [
            {"uid": "u1", "kind": "ReplicaSet", "name": "web-1", "controller": true}
        ]}});
        let patch = json!({"metadata": {"ownerReferences": [
            {"uid": "u1", "blockOwnerDeletion": true},
            {"uid": "u2", "kind": "Node", "name": "n"}
        ]}});
        let result = smp(("", "Pod"), &pod, &patch);
        assert_eq!(
            result["metadata"]["ownerReferences"],
            json!([
                {"uid": "u1", "kind": "ReplicaSet", "name": "web-1", "controller": true, "blockOwnerDeletion": true},
                {"uid": "u2", "kind": "Node", "name": "n"}
            ])
        );
    }

    #[test]
    fn cronjob_template_containers_merge() {
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "1"}, {"name": "b", "image": "1"}
        ]}}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "2"}
        ]}}}}}});
        let result = smp(("batch", "CronJob"), &cj, &patch);
        assert_eq!(
            result["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );
    }

    #[test]
    fn unknown_kinds_replace_lists_but_still_honour_directives() {
        let obj =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "x": {"y": 1, "z": 2}}});
        let patch =
            json!({"spec": {"containers": [{"name": "c"}], "x": {"$patch": "replace", "y": 3}}});
        let result = smp(("example.com", "Widget"), &obj, &patch);
        assert_eq!(
            result,
            json!({"spec": {"containers": [{"name": "c"}], "x": {"y": 3}}})
        );
    }

    #[test]
    fn directives_never_reach_the_result() {
        // New fields (absent from the original) carrying directives at every level.
        let original = json!({"metadata": {"name": "web"}, "spec": {}});
        let patch = json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "template": {
                "metadata": {"labels": {"$patch": "replace", "app": "web"}},
                "spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [{
                        "name": "web",
                        "$setElementOrder/env": [{"name": "A"}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "$patch": "delete"}],
                        "securityContext": {"$patch": "delete"},
                        "resources": {"limits": {"cpu": "1", "memory": null}}
                    }],
                    "volumes": [{"$retainKeys": ["name", "emptyDir"], "name": "d", "emptyDir": {}}],
                    "tolerations": [{"key": "k"}, {"$patch": "replace"}]
                }
            }
        }});
        let result = deploy(&original, &patch);
        assert_eq!(
            result,
            json!({"metadata": {"name": "web"}, "spec": {
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "env": [{"name": "A", "value": "1"}],
                            "resources": {"limits": {"cpu": "1"}}
                        }],
                        "volumes": [{"name": "d", "emptyDir": {}}],
                        "tolerations": [{"key": "k"}]
                    }
                }
            }})
        );
        assert!(!result.to_string().contains('$'));
    }

    #[test]
    fn a_field_changing_type_takes_the_patch_value() {
        let original = json!({"spec": {"replicas": 2, "selector": "odd"}});
        let patch = json!({"spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}, "x": null}}});
        assert_eq!(
            deploy(&original, &patch),
            json!({"spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}}}})
        );
    }

    #[test]
    fn keys_keep_their_order() {
        let result = deploy(
            &live_deployment(),
            &json!({"metadata": {"labels": {"app": "api"}}, "zzz": 1}),
        );
        let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["apiVersion", "kind", "metadata", "spec", "status", "zzz"]
        );
    }

    #[test]
    fn a_strategic_merge_patch_must_be_an_object() {
        for patch in [json!([{"op": "add"}]), json!("x"), Value::Null, json!(1)] {
            assert_eq!(
                strategic_merge(&live_deployment(), &patch, &deployment_type()),
                Err(PatchError::NotAnObject {
                    what: "a strategic merge patch"
                })
            );
        }
        assert_eq!(
            strategic_merge(&json!([1]), &json!({}), &deployment_type()),
            Err(PatchError::NotAnObject {
                what: "the object to patch"
            })
        );
        assert_eq!(
            strategic_merge(&Value::Null, &json!({"a": 1}), &deployment_type()).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn unknown_directives_are_errors() {
        let ty = deployment_type();
        let err = strategic_merge(
            &live_deployment(),
            &json!({"spec": {"$frobnicate": 1}}),
            &ty,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::UnknownDirective {
                path: "spec".into(),
                key: "$frobnicate".into()
            }
        );
        let err = strategic_merge(
            &live_deployment(),
            &json!({"metadata": {"$patch": "nuke"}}),
            &ty,
        );
        assert!(matches!(err, Err(PatchError::InvalidDirective { .. })));
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "$patch": "nuke"}]}}}});
        assert!(matches!(
            strategic_merge(&live_deployment(), &patch, &ty),
            Err(PatchError::InvalidDirective { .. })
        ));
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"$patch": 7}]}}}});
        assert!(matches!(
            strategic_merge(&live_deployment(), &patch, &ty),
            Err(PatchError::InvalidDirective { .. })
        ));
        for bad in [
            json!({"spec": {"$setElementOrder/": []}}),
            json!({"spec": {"$deleteFromPrimitiveList/": []}}),
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": {"name": "web"}}}}}),
        ] {
            assert!(
                strategic_merge(&live_deployment(), &bad, &ty).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn merged_list_elements_need_the_merge_key() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "nginx"}]}}}});
        let err = strategic_merge(&live_deployment(), &patch, &deployment_type()).unwrap_err();
        assert!(
            matches!(&err, PatchError::MissingMergeKey { key, path, .. } if key == "name" && path == "spec.template.spec.containers")
        );
        assert!(
            err.to_string()
                .contains("does not contain declared merge key: name"),
            "{err}"
        );
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}});
        assert!(matches!(
            strategic_merge(&live_deployment(), &patch, &deployment_type()),
            Err(PatchError::MissingMergeKey { .. })
        ));
    }

    #[test]
    fn merged_lists_must_have_elements_of_one_kind() {
        let patch = json!({"spec": {"template": {"spec": {"containers": ["web"]}}}});
        assert!(matches!(
            strategic_merge(&live_deployment(), &patch, &deployment_type()),
            Err(PatchError::InvalidList { .. })
        ));
        let obj = json!({"metadata": {"finalizers": ["a"]}});
        let patch = json!({"metadata": {"finalizers": [["b"]]}});
        assert!(matches!(
            strategic_merge(&obj, &patch, &TypeRef::for_kind("", "Pod")),
            Err(PatchError::InvalidList { .. })
        ));
    }

    #[test]
    fn the_original_is_not_modified() {
        let original = live_deployment();
        let _ = deploy(&original, &json!({"spec": {"replicas": 9}}));
        assert_eq!(original, live_deployment());
    }
}
