//! The matching rules filters and scores share: label selectors, node selector terms, and
//! tolerations against taints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

type Labels = BTreeMap<String, String>;

/// A LabelSelector against labels; a missing selector matches nothing, an empty one everything.
pub fn selector_matches(sel: Option<&LabelSelector>, labels: Option<&Labels>) -> bool {
    let Some(sel) = sel else { return false };
    let get = |k: &str| labels.and_then(|l| l.get(k));
    for (k, v) in sel.match_labels.iter().flatten() {
        if get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// One node selector requirement against a value (a label's, or a field's).
fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // Gt and Lt take exactly one integer value, compared with the label's as integers.
        "Gt" | "Lt" => {
            let (Some(v), [want]) = (value.and_then(|v| int(v)), values) else {
                return false;
            };
            let Some(want) = int(want) else { return false };
            if r.operator == "Gt" {
                v > want
            } else {
                v < want
            }
        }
        _ => false,
    }
}

/// A node selector term: its expressions (on labels) and fields (only `metadata.name`) all
/// hold. A term with neither matches no node.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key))))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_ref())
        })
}

/// nodeSelector and the required node affinity terms (any term) both hold.
pub fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = node.metadata.labels.as_ref();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.and_then(|l| l.get(k)) != Some(v) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Whether a toleration tolerates a taint: same key (or an empty key with Exists: every key),
/// same effect (or an empty effect: every effect), and Equal's value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    let op = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        "Equal" | "" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// The first taint with one of `effects` that none of the tolerations tolerate.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tols: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tols.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn taint(k: &str, v: &str, e: &str) -> Taint {
        serde_json::from_value(json!({"key": k, "value": v, "effect": e})).unwrap()
    }

    #[test]
    fn tolerations_match_taints_as_kubernetes_defines() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "value": "gpu"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "value": "cpu"})),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists"})),
            &t
        ));
        assert!(
            tolerates(&tol(json!({"operator": "Exists"})), &t),
            "empty key + Exists: all"
        );
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"})),
            &t
        ));
        assert!(
            !tolerates(&tol(json!({"value": "gpu"})), &t),
            "empty key + Equal: nothing"
        );
    }

    #[test]
    fn selectors_use_all_four_operators() {
        let labels: Labels = [("app".to_string(), "web".to_string())].into();
        let sel = |v| serde_json::from_value::<LabelSelector>(v).unwrap();
        assert!(selector_matches(Some(&sel(json!({}))), Some(&labels)));
        assert!(!selector_matches(None, Some(&labels)));
        assert!(selector_matches(
            Some(&sel(json!({"matchLabels": {"app": "web"}}))),
            Some(&labels)
        ));
        assert!(selector_matches(
            Some(&sel(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]})
            )),
            Some(&labels)
        ));
        assert!(!selector_matches(
            Some(&sel(
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})
            )),
            Some(&labels)
        ));
        assert!(selector_matches(
            Some(&sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})
            )),
            Some(&labels)
        ));
        assert!(!selector_matches(
            Some(&sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})
            )),
            Some(&labels)
        ));
    }
}
