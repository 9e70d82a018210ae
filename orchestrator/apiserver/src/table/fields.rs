//! What every printer reads and writes with: tolerant accessors of the stored JSON, ages, and
//! labels and selectors as kubectl prints them.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::meta;

// ---------------------------------------------------------------------------------------------
// Tolerant accessors.

/// The value at `path`, if there and not null.
pub(super) fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    meta::at(v, path).filter(|v| !v.is_null())
}

/// The string at `path`, `""` if missing or not a string.
pub(super) fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The string at `path` if there and not empty.
pub(super) fn non_empty<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    Some(text(v, path)).filter(|s| !s.is_empty())
}

pub(super) fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
        // Saturating, like every float to int `as` cast.
        .or_else(|| v.as_f64().map(|f| f as i64))
}

pub(super) fn int(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(as_int)
}

pub(super) fn is_true(v: &Value, path: &[&str]) -> bool {
    get(v, path).and_then(Value::as_bool) == Some(true)
}

pub(super) fn items<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The number of entries of the map or list at `path`.
pub(super) fn len(v: &Value, path: &[&str]) -> usize {
    match get(v, path) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

pub(super) fn time(v: &Value, path: &[&str]) -> Option<Timestamp> {
    meta::parse_time(text(v, path))
}

/// The `status` of the condition of this type, if there is one.
pub(super) fn condition_status<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    items(obj, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == kind)
        .map(|c| text(c, &["status"]))
}

pub(super) fn name_cell(obj: &Value) -> Value {
    json!(meta::name(obj).unwrap_or(""))
}

// ---------------------------------------------------------------------------------------------
// Time.

/// `kubectl`'s human age of an object: `45s`, `3m12s`, `5h`, `2d3h`; `<unknown>` without a
/// creation time.
pub fn age(obj: &Value) -> String {
    age_at(obj, Timestamp::now())
}

pub(super) fn age_at(obj: &Value, now: Timestamp) -> String {
    since(time(obj, &["metadata", "creationTimestamp"]), now)
}

/// The time since `t` as `kubectl` shows it, `<unknown>` for no time.
pub(super) fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`: about two significant figures, `<invalid>` for a
/// time more than a second in the future.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// The creation time as the generic table shows it: RFC 3339 in UTC, the zero time if unset.
pub(super) fn created_at(obj: &Value) -> String {
    match time(obj, &["metadata", "creationTimestamp"]) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and selectors.

/// `labels.FormatLabels`: `a=b,c=d` sorted by key, `<none>` when empty.
pub(super) fn format_labels(map: Option<&Value>) -> String {
    let labels = meta::string_map(map);
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.FormatLabelSelector`: the selector's string, `<none>` when it selects everything or
/// nothing, `<error>` when it is not a valid selector.
pub(super) fn format_label_selector(sel: Option<&Value>) -> String {
    match label_selector(sel) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s,
        Err(()) => "<error>".into(),
    }
}

/// A `LabelSelector` as `labels.Selector.String()` writes it: requirements sorted by key,
/// `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`. Empty for a missing or empty selector.
pub(super) fn label_selector(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel else {
        return Ok(String::new());
    };
    let sel = sel.as_object().ok_or(())?;
    let mut reqs: Vec<(String, String)> = Vec::new();
    match sel.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v.as_str().ok_or(())?;
                reqs.push((k.clone(), format!("{k}={v}")));
            }
        }
        Some(_) => return Err(()),
    }
    match sel.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(exprs)) => {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).ok_or(())?;
                let mut values: Vec<&str> = match e.get("values") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(vs)) => vs
                        .iter()
                        .map(|v| v.as_str().ok_or(()))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(()),
                };
                values.sort_unstable();
                let set = || format!("({})", values.join(","));
                let req = match e.get("operator").and_then(Value::as_str) {
                    Some("In") if !values.is_empty() => format!("{key} in {}", set()),
                    Some("NotIn") if !values.is_empty() => format!("{key} notin {}", set()),
                    Some("Exists") if values.is_empty() => key.to_string(),
                    Some("DoesNotExist") if values.is_empty() => format!("!{key}"),
                    _ => return Err(()),
                };
                reqs.push((key.to_string(), req));
            }
        }
        Some(_) => return Err(()),
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// The names and images of a pod template's containers, each comma-separated.
pub(super) fn containers(obj: &Value, path: &[&str]) -> (String, String) {
    let list = items(obj, path);
    let names: Vec<&str> = list.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = list.iter().map(|c| text(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::{age_at, human_duration};

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 10, "5h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600, "8h"),
            (20 * 3600, "20h"),
            (47 * 3600 + 3599, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 7200, "3d2h"),
            (8 * 86400, "8d"),
            (30 * 86400, "30d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (735 * 86400, "2y5d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
        assert_eq!(
            age_at(
                &json!({"metadata": {"creationTimestamp": ago(3600)}}),
                now()
            ),
            "60m"
        );
        assert_eq!(age_at(&json!({"metadata": {}}), now()), "<unknown>");
        assert_eq!(
            age_at(
                &json!({"metadata": {"creationTimestamp": "yesterday"}}),
                now()
            ),
            "<unknown>"
        );
    }
}
