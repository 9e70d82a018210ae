//! Custom resources checked against their CustomResourceDefinition's `openAPIV3Schema`, the way
//! the apiextensions server does it: unknown fields are pruned (reported like a built-in kind's
//! unknown fields: a warning, or an error under `fieldValidation=Strict`), nulls of fields that are
//! not `nullable` are dropped, `default`s are filled in, and then the value validations run
//! (type, enum, bounds, lengths, `pattern`, items, properties, `required`, `allOf`/`anyOf`/
//! `oneOf`/`not`), each failure a 422 cause at its field path with upstream's wording.
//!
//! `apiVersion`, `kind` and `metadata` at the root are the API machinery's, not the schema's.
//! CEL rules (`x-kubernetes-validations`) are not evaluated.

use serde_json::{Map, Value};

use crate::status::Cause;

/// The fields of the root that the schema does not govern.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Prunes what the schema does not know (removed only when `prune`), drops non-nullable nulls and
/// applies defaults. Returns the paths of the unknown fields.
pub fn prune_and_default(schema: &Value, obj: &mut Value, prune: bool) -> Vec<String> {
    let mut unknown = Vec::new();
    walk(schema, obj, "", prune, true, &mut unknown);
    unknown
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable") == Some(&Value::Bool(true))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(
    schema: &Value,
    value: &mut Value,
    path: &str,
    prune: bool,
    root: bool,
    unknown: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            if schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)) {
                // An embedded object keeps its apiVersion/kind/metadata like the root.
                walk_object(schema, map, path, prune, true, unknown);
            } else {
                walk_object(schema, map, path, prune, root, unknown);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(
                        item_schema,
                        item,
                        &format!("{path}[{i}]"),
                        prune,
                        false,
                        unknown,
                    );
                }
            }
        }
        _ => {}
    }
}

fn walk_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    prune: bool,
    root: bool,
    unknown: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let keep_unknown = preserves(schema) || additional == Some(&Value::Bool(true));
    let mut gone = Vec::new();
    for (key, v) in map.iter_mut() {
        if root && ROOT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let here = child(path, key);
        let sub = properties
            .and_then(|p| p.get(key))
            .or_else(|| additional.filter(|a| a.is_object()));
        match sub {
            Some(sub) => {
                if v.is_null() && !nullable(sub) {
                    gone.push((key.clone(), false));
                    continue;
                }
                walk(sub, v, &here, prune, false, unknown);
            }
            None if keep_unknown => {}
            None => {
                unknown.push(here);
                gone.push((key.clone(), true));
            }
        }
    }
    for (key, is_unknown) in gone {
        if prune || !is_unknown {
            map.remove(&key);
        }
    }
    // Defaults of the properties left out (a default object is defaulted in turn).
    for (key, sub) in properties.into_iter().flatten() {
        if let Some(default) = sub.get("default")
            && !map.contains_key(key)
        {
            let mut d = default.clone();
            walk(sub, &mut d, &child(path, key), true, false, &mut Vec::new());
            map.insert(key.clone(), d);
        }
    }
}

/// The value validations of `schema` over `value` (the root's apiVersion/kind/metadata aside).
pub fn validate(schema: &Value, value: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check(schema, value, "", true, &mut causes);
    causes
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "integer" => json_type(v) == "integer" || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        other => json_type(v) == other,
    }
}

/// How a value is shown in a message: a string quoted, others as JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn invalid(path: &str, value: &Value, why: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: path.to_string(),
        message: format!("Invalid value: {}: {why}", shown(value)),
    }
}

fn check(schema: &Value, value: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    if value.is_null() {
        if !nullable(schema) && !root {
            causes.push(invalid(
                path,
                &Value::String("null".into()),
                format!(
                    "{path} in body must be of type {}: \"null\"",
                    type_name(schema)
                ),
            ));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if int_or_string {
        if !(has_type(value, "integer") || value.is_string()) {
            causes.push(invalid(
                path,
                &Value::String(json_type(value).into()),
                format!("{path} in body must be of type integer or string"),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !has_type(value, ty)
    {
        causes.push(invalid(
            path,
            &Value::String(json_type(value).into()),
            format!(
                "{path} in body must be of type {ty}: \"{}\"",
                json_type(value)
            ),
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported = options.iter().map(shown).collect::<Vec<_>>().join(", ");
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "Unsupported value: {}: supported values: {supported}",
                shown(value)
            ),
        });
    }
    check_number(schema, value, path, causes);
    check_string(schema, value, path, causes);
    match value {
        Value::Array(items) => check_array(schema, items, path, causes),
        Value::Object(map) => check_object(schema, map, path, root, causes),
        _ => {}
    }
    check_combinators(schema, value, path, root, causes);
}

fn type_name(schema: &Value) -> &str {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
}

fn check_number(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(n) = value.as_f64() else {
        return;
    };
    let flag = |k: &str| schema.get(k) == Some(&Value::Bool(true));
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag("exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            causes.push(invalid(
                path,
                value,
                format!("{path} in body should be {how} {}", schema["maximum"]),
            ));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag("exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            causes.push(invalid(
                path,
                value,
                format!("{path} in body should be {how} {}", schema["minimum"]),
            ));
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m > 0.0
        && (n / m).fract() != 0.0
    {
        causes.push(invalid(
            path,
            value,
            format!(
                "{path} in body should be a multiple of {}",
                schema["multipleOf"]
            ),
        ));
    }
}

fn check_string(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(s) = value.as_str() else {
        return;
    };
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        causes.push(invalid(
            path,
            value,
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && let Ok(re) = regex::Regex::new(pattern)
        && !re.is_match(s)
    {
        causes.push(invalid(
            path,
            value,
            format!("{path} in body should match '{pattern}'"),
        ));
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!("Too many: {}: must have at most {max} items", items.len()),
        });
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        causes.push(invalid(
            path,
            &Value::from(items.len()),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{path}[{i}]"),
                    message: format!("Duplicate value: {}", shown(item)),
                });
            }
        }
    }
    if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), false, causes);
        }
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
) {
    let root = root || schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    let governed = || {
        map.keys()
            .filter(|k| !(root && ROOT_FIELDS.contains(&k.as_str())))
            .count() as u64
    };
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && governed() > max
    {
        causes.push(invalid(
            path,
            &Value::from(governed()),
            format!("{path} in body should have at most {max} properties"),
        ));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && governed() < min
    {
        causes.push(invalid(
            path,
            &Value::from(governed()),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if map.get(key).is_none_or(Value::is_null) {
            causes.push(Cause::required(child(path, key)));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, v) in map {
        if root && ROOT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) {
            check(sub, v, &child(path, key), false, causes);
        }
    }
}

/// `allOf`, `anyOf`, `oneOf`, `not`: value validations of the same value.
fn check_combinators(
    schema: &Value,
    value: &Value,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
) {
    let passes = |s: &Value| {
        let mut c = Vec::new();
        check(s, value, path, root, &mut c);
        c.is_empty()
    };
    let list = |k: &str| schema.get(k).and_then(Value::as_array);
    if let Some(all) = list("allOf") {
        for s in all {
            check(s, value, path, root, causes);
        }
    }
    if let Some(any) = list("anyOf")
        && !any.iter().any(passes)
    {
        causes.push(invalid(
            path,
            value,
            format!("{path} in body must validate at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = list("oneOf")
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        causes.push(invalid(
            path,
            value,
            format!("{path} in body must validate one and only one schema (oneOf)"),
        ));
    }
    if let Some(not) = schema.get("not").filter(|s| s.is_object())
        && passes(not)
    {
        causes.push(invalid(
            path,
            value,
            format!("{path} in body must not validate the schema (not)"),
        ));
    }
}

/// Why a schema cannot be served: what upstream refuses in a CRD's `openAPIV3Schema` and we
/// would otherwise silently not enforce (a `pattern` our regex engine cannot compile).
pub fn schema_errors(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(p) = schema.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(p)
    {
        out.push(Cause::invalid(
            format!("{path}.pattern"),
            p,
            format!("must be a valid regular expression: {e}"),
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            out.extend(schema_errors(s, &format!("{path}.properties[{k}]")));
        }
    }
    for k in ["items", "additionalProperties", "not"] {
        if let Some(s) = schema.get(k).filter(|s| s.is_object()) {
            out.extend(schema_errors(s, &format!("{path}.{k}")));
        }
    }
    for k in ["allOf", "anyOf", "oneOf"] {
        for (i, s) in schema
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            out.extend(schema_errors(s, &format!("{path}.{k}[{i}]")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["tier", "priority", "subject"],
                    "properties": {
                        "tier": {"type": "string", "enum": ["Admin", "Baseline"]},
                        "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
                        "mode": {"type": "string", "default": "strict"},
                        "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                        "subject": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                    "properties": {"a": {"type": "object"}, "b": {"type": "object"}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "rules": {"type": "array", "maxItems": 2,
                                  "items": {"type": "object", "required": ["action"],
                                            "properties": {"action": {"type": "string", "enum": ["Accept", "Deny"]}}}}
                    }
                }
            }
        })
    }

    fn good() -> Value {
        json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "labels": {"a": "b"}},
               "spec": {"tier": "Admin", "priority": 5, "subject": {"a": {}},
                        "labels": {"k": "v"}, "free": {"anything": [1]}, "port": "http",
                        "rules": [{"action": "Deny"}]}})
    }

    fn fields(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect()
    }

    #[test]
    fn a_valid_object_passes_and_gets_its_defaults() {
        let mut obj = good();
        assert!(prune_and_default(&schema(), &mut obj, true).is_empty());
        assert_eq!(obj["spec"]["mode"], "strict");
        assert_eq!(validate(&schema(), &obj), []);
    }

    #[test]
    fn unknown_fields_are_pruned_except_where_preserved() {
        let mut obj = good();
        obj["spec"]["bogus"] = json!(1);
        obj["spec"]["rules"][0]["extra"] = json!("x");
        obj["spec"]["free"]["kept"] = json!(true);
        obj["status"] = json!({});
        let mut kept = obj.clone();
        let unknown = prune_and_default(&schema(), &mut kept, false);
        assert_eq!(unknown, ["spec.rules[0].extra", "spec.bogus", "status"]);
        assert!(kept["spec"].get("bogus").is_some(), "reported, not removed");
        prune_and_default(&schema(), &mut obj, true);
        assert!(obj["spec"].get("bogus").is_none() && obj.get("status").is_none());
        assert!(obj["spec"]["rules"][0].get("extra").is_none());
        assert_eq!(obj["spec"]["free"]["kept"], true);
        assert_eq!(
            obj["metadata"]["labels"]["a"], "b",
            "metadata is not the schema's"
        );
    }

    #[test]
    fn each_value_validation_names_its_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"tier": "Gold"}),
                "spec.tier",
                "FieldValueNotSupported",
            ),
            (json!({"tier": 3}), "spec.tier", "FieldValueInvalid"),
            (
                json!({"priority": 1001}),
                "spec.priority",
                "FieldValueInvalid",
            ),
            (
                json!({"priority": -1}),
                "spec.priority",
                "FieldValueInvalid",
            ),
            (
                json!({"priority": "high"}),
                "spec.priority",
                "FieldValueInvalid",
            ),
            (json!({"name": "toolong"}), "spec.name", "FieldValueTooLong"),
            (json!({"name": "Up"}), "spec.name", "FieldValueInvalid"),
            (json!({"subject": {}}), "spec.subject", "FieldValueInvalid"),
            (
                json!({"subject": {"a": {}, "b": {}}}),
                "spec.subject",
                "FieldValueInvalid",
            ),
            (
                json!({"labels": {"k": 1}}),
                "spec.labels.k",
                "FieldValueInvalid",
            ),
            (json!({"port": true}), "spec.port", "FieldValueInvalid"),
            (
                json!({"rules": [{"action": "Deny"}, {"action": "Deny"}, {"action": "Deny"}]}),
                "spec.rules",
                "FieldValueTooMany",
            ),
            (
                json!({"rules": [{}]}),
                "spec.rules[0].action",
                "FieldValueRequired",
            ),
            (
                json!({"rules": [{"action": "Pass"}]}),
                "spec.rules[0].action",
                "FieldValueNotSupported",
            ),
        ];
        for (patch, field, reason) in cases {
            let mut obj = good();
            for (k, v) in patch.as_object().unwrap() {
                obj["spec"][k] = v.clone();
            }
            let causes = validate(&schema(), &obj);
            assert_eq!(fields(&causes), [(field, reason)], "{patch}: {causes:?}");
        }
        let mut obj = good();
        obj["spec"].as_object_mut().unwrap().remove("tier");
        assert_eq!(
            fields(&validate(&schema(), &obj)),
            [("spec.tier", "FieldValueRequired")]
        );
    }

    #[test]
    fn messages_read_like_upstream() {
        let mut obj = good();
        obj["spec"]["priority"] = json!(2000);
        obj["spec"]["tier"] = json!("Gold");
        let msgs: Vec<String> = validate(&schema(), &obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            msgs,
            [
                "spec.tier: Unsupported value: \"Gold\": supported values: \"Admin\", \"Baseline\"",
                "spec.priority: Invalid value: 2000: spec.priority in body should be less than or equal to 1000",
            ]
        );
    }

    #[test]
    fn combinators_and_nulls() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "n": {"type": "string", "nullable": true}}}}});
        let ok = json!({"spec": {"a": "x", "n": null}});
        assert_eq!(validate(&s, &ok), []);
        let both = json!({"spec": {"a": "x", "b": "y"}});
        assert_eq!(
            fields(&validate(&s, &both)),
            [("spec", "FieldValueInvalid")]
        );
        let mut null_b = json!({"spec": {"a": "x", "b": null}});
        prune_and_default(&s, &mut null_b, true);
        assert_eq!(
            null_b,
            json!({"spec": {"a": "x"}}),
            "a non-nullable null is dropped"
        );
    }

    #[test]
    fn a_pattern_we_cannot_compile_is_refused_in_the_definition() {
        let s = json!({"properties": {"spec": {"properties": {"x": {"type": "string", "pattern": "(unclosed"}}}}});
        let errs = schema_errors(&s, "spec.versions[0].schema.openAPIV3Schema");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].field.ends_with("properties[x].pattern"));
    }
}
