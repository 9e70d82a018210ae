//! Escalation prevention, as upstream's RBAC registry: a user may write a Role or ClusterRole
//! only with rules they hold themselves (or the `escalate` verb on it), and bind a role only
//! when they hold its rules (or the `bind` verb on it). So write access to RBAC objects does not
//! make anyone an administrator.

use serde_json::Value;

use super::rule::{Attributes, PolicyRule};
use super::{GROUP, Snapshot};
use crate::auth::User;
use crate::status::ApiError;

/// The requests one rule stands for: every verb × group × resource × name (or URL).
fn atoms(rule: &PolicyRule, namespace: Option<&str>) -> Vec<Attributes> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Attributes::path(verb, url));
        }
        for group in &rule.api_groups {
            for res in &rule.resources {
                let (resource, sub) = match res.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (res.as_str(), None),
                };
                let names: Vec<Option<&str>> = if rule.resource_names.is_empty() {
                    vec![None]
                } else {
                    rule.resource_names
                        .iter()
                        .map(|n| Some(n.as_str()))
                        .collect()
                };
                for name in names {
                    out.push(Attributes::Resource {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.to_string(),
                        subresource: sub.map(String::from),
                        namespace: namespace.map(String::from),
                        name: name.map(String::from),
                    });
                }
            }
        }
    }
    out
}

/// The rules of `rules` the user does not hold in `namespace` (cluster-wide when `None`).
fn not_held(
    snap: &Snapshot,
    user: &User,
    rules: &[PolicyRule],
    namespace: Option<&str>,
) -> Vec<PolicyRule> {
    rules
        .iter()
        .filter(|r| {
            atoms(r, namespace)
                .iter()
                .any(|a| snap.allowed_by(user, a).is_none())
        })
        .cloned()
        .collect()
}

fn refuse(plural: &str, name: &str, user: &User, missing: &[PolicyRule]) -> ApiError {
    let rules: Vec<String> = missing.iter().map(|r| r.to_json().to_string()).collect();
    ApiError::forbidden_about(
        format!(
            "{plural}.{GROUP} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            rules.join("\n")
        ),
        GROUP,
        plural,
        Some(name),
    )
}

/// Checks a Role, ClusterRole, RoleBinding or ClusterRoleBinding about to be written by `user`
/// (`old`: what it replaces). A role whose rules do not change (labels, annotations) is not
/// checked again, as upstream.
pub fn check(
    snap: &Snapshot,
    user: &User,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let same_rules =
        |o: &Value| o["rules"] == obj["rules"] && o["aggregationRule"] == obj["aggregationRule"];
    if user.is_admin() || (kind.ends_with("Role") && old.is_some_and(same_rules)) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let namespace = obj["metadata"]["namespace"].as_str();
    let verb_on = |verb: &str, plural: &str, target: &str| {
        let a = Attributes::Resource {
            verb: verb.into(),
            group: GROUP.into(),
            resource: plural.into(),
            subresource: None,
            namespace: namespace.map(String::from),
            name: Some(target.into()),
        };
        snap.allowed_by(user, &a).is_some()
    };
    match kind {
        "Role" | "ClusterRole" => {
            let plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if verb_on("escalate", plural, name) {
                return Ok(());
            }
            // An aggregated role takes whatever its selectors pick: only for who may escalate.
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                return Err(refuse(
                    plural,
                    name,
                    user,
                    &[PolicyRule::from_json(
                        &serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                    )],
                ));
            }
            let missing = not_held(snap, user, &PolicyRule::of_role(obj), namespace);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(plural, name, user, &missing))
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let plural = if kind == "RoleBinding" {
                "rolebindings"
            } else {
                "clusterrolebindings"
            };
            let role = obj["roleRef"]["name"].as_str().unwrap_or("");
            let (role_plural, rules) = if obj["roleRef"]["kind"] == "Role" {
                ("roles", snap.role_rules(namespace.unwrap_or(""), role))
            } else {
                ("clusterroles", snap.cluster_role_rules(role))
            };
            if verb_on("bind", role_plural, role) {
                return Ok(());
            }
            let missing = not_held(snap, user, &rules.unwrap_or_default(), namespace);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(plural, name, user, &missing))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot() -> Snapshot {
        Snapshot::new(
            &[],
            &[
                json!({"metadata": {"name": "ns-admin"}, "rules": [
                    {"verbs": ["create", "update", "get"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"]},
                    {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}]}),
                json!({"metadata": {"name": "cluster-admin"}, "rules": [
                    {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]}),
                json!({"metadata": {"name": "pod-reader"}, "rules": [
                    {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
                json!({"metadata": {"name": "binder"}, "rules": [
                    {"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["cluster-admin"]}]}),
            ],
            &[
                json!({"metadata": {"name": "a", "namespace": "team"},
                       "roleRef": {"kind": "ClusterRole", "name": "ns-admin"},
                       "subjects": [{"kind": "User", "name": "lead"}]}),
                json!({"metadata": {"name": "b", "namespace": "team"},
                       "roleRef": {"kind": "ClusterRole", "name": "binder"},
                       "subjects": [{"kind": "User", "name": "trusted"}]}),
                json!({"metadata": {"name": "c", "namespace": "team"},
                       "roleRef": {"kind": "ClusterRole", "name": "ns-admin"},
                       "subjects": [{"kind": "User", "name": "trusted"}]}),
            ],
            &[],
        )
    }

    /// The lead may also escalate roles in team.
    fn s_with_escalate() -> Snapshot {
        Snapshot::new(
            &[],
            &[json!({"metadata": {"name": "esc"}, "rules": [
                {"verbs": ["*"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"]}]})],
            &[json!({"metadata": {"name": "a", "namespace": "team"},
                     "roleRef": {"kind": "ClusterRole", "name": "esc"},
                     "subjects": [{"kind": "User", "name": "lead"}]})],
            &[],
        )
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            groups: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn a_role_may_hold_only_rules_its_writer_holds() {
        let s = snapshot();
        let role =
            |rules: Value| json!({"metadata": {"name": "r", "namespace": "team"}, "rules": rules});
        let lead = user("lead");
        let held = role(json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods/log"]}]));
        assert!(check(&s, &lead, "Role", &held, None).is_ok());
        let more = role(json!([{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]));
        let e = check(&s, &lead, "Role", &more, None).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .contains("attempting to grant RBAC permissions not currently held"),
            "{}",
            e.message
        );
        // A star is held only as a star.
        let star = role(json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}]));
        assert!(check(&s, &lead, "Role", &star, None).is_err());
        // Changing only the labels of a role one could not write is not an escalation.
        let mut relabelled = more.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(check(&s, &lead, "Role", &relabelled, Some(&more)).is_ok());
        // `escalate` (as `*` on roles includes) lifts the check.
        let mut escalator = s_with_escalate();
        assert!(check(&escalator, &lead, "Role", &more, None).is_ok());
        escalator = snapshot();
        assert!(check(&escalator, &lead, "Role", &more, None).is_err());
        // Elsewhere, nothing is held.
        let mut elsewhere = held.clone();
        elsewhere["metadata"]["namespace"] = json!("other");
        assert!(check(&s, &lead, "Role", &elsewhere, None).is_err());
    }

    #[test]
    fn a_binding_needs_the_roles_rules_or_the_bind_verb() {
        let s = snapshot();
        let binding = |role: &str| {
            json!({"metadata": {"name": "x", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "friend"}]})
        };
        let lead = user("lead");
        assert!(check(&s, &lead, "RoleBinding", &binding("pod-reader"), None).is_ok());
        assert!(check(&s, &lead, "RoleBinding", &binding("cluster-admin"), None).is_err());
        // bind on cluster-admin (in team) allows binding it there.
        assert!(
            check(
                &s,
                &user("trusted"),
                "RoleBinding",
                &binding("cluster-admin"),
                None
            )
            .is_ok()
        );
        let admin = User {
            name: "root".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        assert!(
            check(
                &s,
                &admin,
                "ClusterRoleBinding",
                &binding("cluster-admin"),
                None
            )
            .is_ok()
        );
    }
}
