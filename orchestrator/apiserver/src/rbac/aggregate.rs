//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` has as rules the union of
//! the rules of the ClusterRoles its selectors pick (upstream's clusterrole-aggregation
//! controller). `edit` is itself picked by `admin`, and `view` by `edit`, so the union is taken
//! until nothing changes.

use serde_json::Value;
use trellis_api::LabelSelector;

/// The ClusterRoles with every aggregated role's rules recomputed.
pub fn apply(roles: &[Value]) -> Vec<Value> {
    let mut roles = roles.to_vec();
    // Each pass settles at least one more level of nesting; the defaults are three deep.
    for _ in 0..8 {
        let mut changed = false;
        for i in 0..roles.len() {
            let Some(selectors) = roles[i]["aggregationRule"]["clusterRoleSelectors"].as_array()
            else {
                continue;
            };
            let selectors: Vec<LabelSelector> = selectors
                .iter()
                .filter_map(|s| LabelSelector::from_json(s).ok().flatten())
                .collect();
            let mut sources: Vec<&Value> = roles
                .iter()
                .enumerate()
                .filter(|(j, r)| *j != i && selectors.iter().any(|s| s.matches_object(r)))
                .map(|(_, r)| r)
                .collect();
            // Upstream orders the sources by name, so the result does not depend on the store.
            sources.sort_by_key(|r| r["metadata"]["name"].as_str().unwrap_or("").to_string());
            let mut rules: Vec<Value> = Vec::new();
            for r in sources {
                for rule in r["rules"].as_array().into_iter().flatten() {
                    if !rules.contains(rule) {
                        rules.push(rule.clone());
                    }
                }
            }
            let rules = Value::Array(rules);
            if roles[i]["rules"] != rules {
                roles[i]["rules"] = rules;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    roles
}

/// The aggregated ClusterRoles whose stored rules differ from what aggregation gives: the
/// objects to write back.
pub fn changes(roles: &[Value]) -> Vec<Value> {
    apply(roles)
        .into_iter()
        .zip(roles)
        .filter(|(new, old)| new["rules"] != old["rules"])
        .map(|(new, _)| new)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn an_aggregated_role_has_the_rules_of_the_roles_it_selects_transitively() {
        let view_rule = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let edit_rule = json!({"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]});
        let crd_rule =
            json!({"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]});
        let roles = vec![
            json!({"metadata": {"name": "edit"},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-edit": "true"}}]}}),
            json!({"metadata": {"name": "view", "labels": {"to-edit": "true"}},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]}}),
            role("base-view", json!({"to-view": "true"}), json!([view_rule])),
            role("base-edit", json!({"to-edit": "true"}), json!([edit_rule])),
            role("widgets", json!({"to-view": "true"}), json!([crd_rule])),
            role(
                "unrelated",
                json!({}),
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            ),
        ];
        let out = apply(&roles);
        assert_eq!(out[1]["rules"], json!([view_rule, crd_rule]));
        assert_eq!(out[0]["rules"], json!([edit_rule, view_rule, crd_rule]));
        // Only the aggregated roles change.
        assert_eq!(changes(&roles).len(), 2);
        assert!(changes(&out).is_empty());
    }
}
