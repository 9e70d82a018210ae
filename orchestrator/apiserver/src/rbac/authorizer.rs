//! The RBAC authorizer: the Roles, ClusterRoles and their bindings, held in memory (reloaded
//! from the store when one of them changes), so deciding a request never reads the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::rule::{Attributes, PolicyRule};
use crate::auth::User;

/// A binding's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    fn from_json(v: &Value, binding_ns: Option<&str>) -> Option<Subject> {
        let name = v["name"].as_str()?.to_string();
        Some(match v["kind"].as_str()? {
            "User" => Subject::User(name),
            "Group" => Subject::Group(name),
            "ServiceAccount" => Subject::ServiceAccount {
                namespace: v["namespace"].as_str().or(binding_ns)?.to_string(),
                name,
            },
            _ => return None,
        })
    }

    pub fn covers(&self, user: &User) -> bool {
        match self {
            Subject::User(n) => *n == user.name,
            Subject::Group(g) => user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount { namespace, name } => {
                user.name == format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }
}

/// What a binding grants: the role it refers to, to its subjects.
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    /// None for a ClusterRoleBinding.
    namespace: Option<String>,
    /// true: a ClusterRole; false: a Role of the binding's namespace.
    cluster_role: bool,
    role: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value) -> Option<Binding> {
        let namespace = v["metadata"]["namespace"].as_str().map(String::from);
        let cluster_role = match v["roleRef"]["kind"].as_str()? {
            "ClusterRole" => true,
            "Role" => false,
            _ => return None,
        };
        Some(Binding {
            name: v["metadata"]["name"].as_str()?.to_string(),
            cluster_role,
            role: v["roleRef"]["name"].as_str()?.to_string(),
            subjects: v["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| Subject::from_json(s, namespace.as_deref()))
                .collect(),
            namespace,
        })
    }
}

/// The RBAC objects at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    role_bindings: Vec<Binding>,
    cluster_role_bindings: Vec<Binding>,
}

impl Snapshot {
    pub fn new(
        roles: &[Value],
        cluster_roles: &[Value],
        role_bindings: &[Value],
        cluster_role_bindings: &[Value],
    ) -> Snapshot {
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        };
        Snapshot {
            roles: roles
                .iter()
                .map(|r| (key(r), PolicyRule::of_role(r)))
                .collect(),
            cluster_roles: cluster_roles
                .iter()
                .map(|r| (key(r).1, PolicyRule::of_role(r)))
                .collect(),
            role_bindings: role_bindings
                .iter()
                .filter_map(Binding::from_json)
                .collect(),
            cluster_role_bindings: cluster_role_bindings
                .iter()
                .filter_map(Binding::from_json)
                .collect(),
        }
    }

    /// Which binding allows the request, if one does (upstream's reason wording).
    pub fn allowed_by(&self, user: &User, attrs: &Attributes) -> Option<String> {
        let applies = |b: &Binding| b.subjects.iter().any(|s| s.covers(user));
        for b in self.cluster_role_bindings.iter().filter(|b| applies(b)) {
            let rules = self.cluster_roles.get(&b.role);
            if rules.is_some_and(|rs| rs.iter().any(|r| r.allows(attrs))) {
                return Some(format!(
                    "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                    b.name,
                    b.role,
                    subject_words(user)
                ));
            }
        }
        // RoleBindings grant resources in their own namespace only, never URLs.
        let (Attributes::Resource { .. }, Some(ns)) = (attrs, attrs.namespace()) else {
            return None;
        };
        for b in self
            .role_bindings
            .iter()
            .filter(|b| b.namespace.as_deref() == Some(ns) && applies(b))
        {
            let rules = if b.cluster_role {
                self.cluster_roles.get(&b.role)
            } else {
                self.roles.get(&(ns.to_string(), b.role.clone()))
            };
            if rules.is_some_and(|rs| rs.iter().any(|r| r.allows(attrs))) {
                let kind = if b.cluster_role {
                    "ClusterRole"
                } else {
                    "Role"
                };
                return Some(format!(
                    "RBAC: allowed by RoleBinding \"{}/{ns}\" of {kind} \"{}\" to {}",
                    b.name,
                    b.role,
                    subject_words(user)
                ));
            }
        }
        None
    }

    /// The rules of a Role.
    pub fn role_rules(&self, namespace: &str, name: &str) -> Option<Vec<PolicyRule>> {
        self.roles
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The rules of a ClusterRole (aggregated).
    pub fn cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>> {
        self.cluster_roles.get(name).cloned()
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview-like; for tests
    /// and diagnostics).
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        for b in &self.cluster_role_bindings {
            if b.subjects.iter().any(|s| s.covers(user))
                && let Some(rs) = self.cluster_roles.get(&b.role)
            {
                out.extend(rs.iter().cloned());
            }
        }
        if let Some(ns) = namespace {
            for b in &self.role_bindings {
                if b.namespace.as_deref() != Some(ns) || !b.subjects.iter().any(|s| s.covers(user))
                {
                    continue;
                }
                let rs = if b.cluster_role {
                    self.cluster_roles.get(&b.role)
                } else {
                    self.roles.get(&(ns.to_string(), b.role.clone()))
                };
                out.extend(rs.into_iter().flatten().cloned());
            }
        }
        out
    }
}

fn subject_words(user: &User) -> String {
    format!("User \"{}\"", user.name)
}

/// The current snapshot, swapped whole on reload.
#[derive(Default)]
pub struct RuleCache {
    snap: RwLock<Arc<Snapshot>>,
}

impl RuleCache {
    pub fn current(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, snap: Snapshot) {
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot::new(
            &[
                json!({"metadata": {"name": "pod-reader", "namespace": "team"},
                     "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
            ],
            &[
                json!({"metadata": {"name": "view"},
                       "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"], "resources": ["*"]}]}),
                json!({"metadata": {"name": "discovery"},
                       "rules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}]}),
            ],
            &[
                json!({"metadata": {"name": "read-pods", "namespace": "team"},
                       "roleRef": {"kind": "Role", "name": "pod-reader", "apiGroup": "rbac.authorization.k8s.io"},
                       "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}),
                json!({"metadata": {"name": "viewers", "namespace": "team"},
                       "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"},
                       "subjects": [{"kind": "User", "name": "alice"}]}),
                // A RoleBinding cannot grant URLs, even through a ClusterRole that has them.
                json!({"metadata": {"name": "urls", "namespace": "team"},
                       "roleRef": {"kind": "ClusterRole", "name": "discovery", "apiGroup": "rbac.authorization.k8s.io"},
                       "subjects": [{"kind": "User", "name": "alice"}]}),
            ],
            &[json!({"metadata": {"name": "everyone-discovers"},
                     "roleRef": {"kind": "ClusterRole", "name": "discovery", "apiGroup": "rbac.authorization.k8s.io"},
                     "subjects": [{"kind": "Group", "name": "system:authenticated"}]})],
        )
    }

    #[test]
    fn a_role_binding_to_a_cluster_role_grants_it_in_its_namespace_only() {
        let s = snapshot();
        let alice = user("alice", &[]);
        let list = Attributes::resource("list", "apps", "deployments");
        assert!(s.allowed_by(&alice, &list.clone().in_ns("team")).is_some());
        assert!(s.allowed_by(&alice, &list.clone().in_ns("other")).is_none());
        // Nor across all namespaces.
        assert!(s.allowed_by(&alice, &list).is_none());
        assert!(
            s.allowed_by(
                &alice,
                &Attributes::resource("delete", "apps", "deployments").in_ns("team")
            )
            .is_none()
        );
    }

    #[test]
    fn a_service_account_subject_defaults_to_the_bindings_namespace() {
        let s = snapshot();
        let bot = user(
            "system:serviceaccount:team:bot",
            &["system:serviceaccounts"],
        );
        let get = Attributes::resource("get", "", "pods").named("web");
        assert!(s.allowed_by(&bot, &get.clone().in_ns("team")).is_some());
        assert!(s.allowed_by(&bot, &get.clone().in_ns("other")).is_none());
        let impostor = user("system:serviceaccount:other:bot", &[]);
        assert!(s.allowed_by(&impostor, &get.in_ns("team")).is_none());
    }

    #[test]
    fn urls_are_granted_only_through_cluster_role_bindings() {
        let s = snapshot();
        let carol = user("carol", &["system:authenticated"]);
        assert!(
            s.allowed_by(&carol, &Attributes::path("get", "/api/v1"))
                .is_some()
        );
        let alice = user("alice", &[]);
        assert!(
            s.allowed_by(&alice, &Attributes::path("get", "/api"))
                .is_none()
        );
    }

    #[test]
    fn nobody_is_allowed_anything_unbound() {
        let s = snapshot();
        let mallory = user("mallory", &["devs"]);
        assert!(
            s.allowed_by(
                &mallory,
                &Attributes::resource("get", "", "pods").in_ns("team")
            )
            .is_none()
        );
    }
}
