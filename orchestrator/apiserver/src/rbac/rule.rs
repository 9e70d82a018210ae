//! One PolicyRule and whether it allows a request, as upstream's `evaluation_helpers.go`:
//! allow-only, `*` matches anything, `res/sub` and `*/sub` name subresources, an empty
//! `resourceNames` matches every name, and non-resource URLs match exactly, by `*`, or by a
//! `prefix*`.

use serde_json::Value;

/// What a request asks to do: on a resource, or on a plain URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        /// None for cluster-scoped resources and all-namespace requests.
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        /// The HTTP method, lower-cased (`get`, `post`, ...).
        verb: String,
        path: String,
    },
}

impl Attributes {
    pub fn resource(verb: &str, group: &str, resource: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: None,
            name: None,
        }
    }

    pub fn subresource(mut self, s: &str) -> Attributes {
        if let Attributes::Resource { subresource, .. } = &mut self {
            *subresource = Some(s.into());
        }
        self
    }

    pub fn named(mut self, n: &str) -> Attributes {
        if let Attributes::Resource { name, .. } = &mut self {
            *name = Some(n.into());
        }
        self
    }

    pub fn in_ns(mut self, ns: &str) -> Attributes {
        if let Attributes::Resource { namespace, .. } = &mut self {
            *namespace = Some(ns.into());
        }
        self
    }

    pub fn path(verb: &str, path: &str) -> Attributes {
        Attributes::NonResource {
            verb: verb.into(),
            path: path.into(),
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            Attributes::Resource { namespace, .. } => namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        }
    }
}

/// An rbac/v1 PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

impl PolicyRule {
    pub fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn of_role(role: &Value) -> Vec<PolicyRule> {
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(PolicyRule::from_json)
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), self.verbs.clone().into());
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), v.clone().into());
            }
        }
        Value::Object(m)
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        self.api_groups.iter().any(|g| g == "*" || g == group)
    }

    fn resource_matches(&self, resource: &str, sub: Option<&str>) -> bool {
        let combined;
        let wanted = match sub {
            Some(s) => {
                combined = format!("{resource}/{s}");
                combined.as_str()
            }
            None => resource,
        };
        self.resources.iter().any(|r| {
            r == "*" || r == wanted || sub.is_some_and(|s| r.strip_prefix("*/") == Some(s))
        })
    }

    fn name_matches(&self, name: Option<&str>) -> bool {
        self.resource_names.is_empty()
            || name.is_some_and(|n| self.resource_names.iter().any(|r| r == n))
    }

    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        match attrs {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                self.verb_matches(verb)
                    && self.group_matches(group)
                    && self.resource_matches(resource, subresource.as_deref())
                    && self.name_matches(name.as_deref())
            }
            Attributes::NonResource { verb, path } => {
                self.verb_matches(verb) && self.url_matches(path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    #[test]
    fn verbs_groups_and_resources_must_all_match() {
        let r = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(r.allows(&Attributes::resource("get", "", "pods")));
        assert!(r.allows(&Attributes::resource("list", "", "pods").in_ns("default")));
        assert!(!r.allows(&Attributes::resource("delete", "", "pods")));
        assert!(!r.allows(&Attributes::resource("get", "apps", "pods")));
        assert!(!r.allows(&Attributes::resource("get", "", "services")));
    }

    #[test]
    fn a_star_matches_anything_in_its_field() {
        let r = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(r.allows(&Attributes::resource(
            "deletecollection",
            "apps",
            "deployments"
        )));
        assert!(r.allows(&Attributes::resource("get", "", "pods").subresource("log")));
        // ...but a resource rule says nothing about URLs.
        assert!(!r.allows(&Attributes::path("get", "/healthz")));
    }

    #[test]
    fn a_subresource_is_named_res_slash_sub_or_star_slash_sub() {
        let logs = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}));
        assert!(logs.allows(&Attributes::resource("get", "", "pods").subresource("log")));
        // pods/log does not give pods, nor pods/status.
        assert!(!logs.allows(&Attributes::resource("get", "", "pods")));
        assert!(!logs.allows(&Attributes::resource("get", "", "pods").subresource("status")));
        // pods does not give pods/log.
        let pods = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(!pods.allows(&Attributes::resource("get", "", "pods").subresource("log")));
        // */status: the status of every resource.
        let status =
            rule(json!({"verbs": ["update"], "apiGroups": ["*"], "resources": ["*/status"]}));
        assert!(
            status.allows(
                &Attributes::resource("update", "apps", "deployments").subresource("status")
            )
        );
        assert!(!status.allows(&Attributes::resource("update", "apps", "deployments")));
        assert!(!status.allows(&Attributes::resource("update", "", "pods").subresource("binding")));
    }

    #[test]
    fn resource_names_restrict_to_those_names() {
        let r = rule(
            json!({"verbs": ["get", "update"], "apiGroups": ["coordination.k8s.io"],
                            "resources": ["leases"], "resourceNames": ["kube-scheduler"]}),
        );
        let lease =
            Attributes::resource("get", "coordination.k8s.io", "leases").in_ns("kube-system");
        assert!(r.allows(&lease.clone().named("kube-scheduler")));
        assert!(!r.allows(&lease.clone().named("other")));
        // A request without a name (list, create) is not one of the names.
        assert!(!r.allows(&lease));
    }

    #[test]
    fn non_resource_urls_match_exactly_by_star_or_by_prefix() {
        let r =
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/version", "/apis/*", "/healthz"]}));
        assert!(r.allows(&Attributes::path("get", "/version")));
        assert!(r.allows(&Attributes::path("get", "/apis/apps/v1")));
        assert!(r.allows(&Attributes::path("get", "/apis/")));
        assert!(!r.allows(&Attributes::path("get", "/apis")));
        assert!(!r.allows(&Attributes::path("get", "/version/x")));
        assert!(!r.allows(&Attributes::path("post", "/version")));
        let all = rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
        assert!(all.allows(&Attributes::path("post", "/anything")));
        // A URL rule says nothing about resources.
        assert!(!all.allows(&Attributes::resource("get", "", "pods")));
    }
}
