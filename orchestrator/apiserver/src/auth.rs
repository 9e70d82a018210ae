//! Who is asking, and may they. Client certificates (CN = user, O = groups) and service-account
//! bearer tokens authenticate; every authenticated user is also in `system:authenticated`.
//!
//! Authorizers, in order, the first that allows wins:
//! 1. `system:masters` may do anything;
//! 2. the node authorizer: a node (`system:node:<name>` in `system:nodes`) may read, and write
//!    only its own Node, its own Lease, the pods bound to it, and events; and it may request
//!    a token for a pod's ServiceAccount only bound to that pod, when the pod is bound to it;
//! 3. RBAC ([`crate::rbac`]);
//! 4. otherwise 403, worded as upstream's.

use serde_json::Value;
use trellis_api::ResourceInfo;

use crate::handlers::Api;
use crate::meta;
use crate::rbac::Attributes;
use crate::request::{ResourceRequest, Verb};
use crate::status::ApiError;

pub const AUTHENTICATED: &str = "system:authenticated";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// A unique id of the user, when the authenticator knows one (a service account's uid).
    pub uid: String,
    /// What else the authenticator says (a bound token's pod), upstream's `user.Info.Extra`.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl User {
    /// The identity of the loopback plain-HTTP listener (only when asked for).
    pub fn loopback_admin() -> User {
        User {
            name: "system:apiserver".into(),
            groups: vec!["system:masters".into(), AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// An authenticated user: its own groups, and `system:authenticated`.
    pub fn authenticated(name: String, mut groups: Vec<String>) -> User {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        User {
            name,
            groups,
            ..Default::default()
        }
    }

    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    /// The node this user is, if it is a node.
    pub fn node(&self) -> Option<&str> {
        self.name
            .strip_prefix("system:node:")
            .filter(|_| self.groups.iter().any(|g| g == "system:nodes"))
    }
}

/// Upstream's 403 for a resource request (`responsewriters.Forbidden`): `pods "web" is
/// forbidden: User "u" cannot delete resource "pods" in API group "" in the namespace "ns"`.
pub fn forbidden(user: &User, attrs: &Attributes) -> ApiError {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let res = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".into(),
            };
            let why = format!(
                "User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\" {scope}",
                user.name
            );
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let message = match name {
                Some(n) => format!("{qualified} \"{n}\" is forbidden: {why}"),
                None => format!("{qualified} is forbidden: {why}"),
            };
            ApiError::forbidden_about(message, group, resource, name.as_deref())
        }
        Attributes::NonResource { verb, path } => ApiError::forbidden_about(
            format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
            "",
            "",
            None,
        ),
    }
}

/// The attributes of a resource request.
pub fn attributes(req: &ResourceRequest) -> Attributes {
    Attributes::Resource {
        verb: req.verb.as_str().into(),
        group: req.group.clone(),
        resource: req.resource.clone(),
        subresource: req.subresource.clone(),
        namespace: req.namespace.clone(),
        name: req.name.clone(),
    }
}

/// Whether `user` may do what `attrs` say, by `system:masters` or RBAC (for the access
/// reviews, which have no request body for the node authorizer to look at).
pub fn allowed(user: &User, attrs: &Attributes, api: &Api) -> Option<String> {
    if user.is_admin() {
        return Some("allowed as a member of system:masters".into());
    }
    api.rbac.current().allowed_by(user, attrs)
}

/// Decides a request for a plain path (discovery, version, OpenAPI, metrics).
pub fn authorize_path(user: &User, verb: &str, path: &str, api: &Api) -> Result<(), ApiError> {
    let attrs = Attributes::path(verb, path);
    match allowed(user, &attrs, api) {
        Some(_) => Ok(()),
        None => Err(forbidden(user, &attrs)),
    }
}

/// Decides a resource request.
pub async fn authorize(
    user: &User,
    req: &ResourceRequest,
    info: &ResourceInfo,
    api: &Api,
    content_type: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    if user.node().is_some() && node_allows(user, req, info, api, content_type, body).await? {
        return Ok(());
    }
    let attrs = attributes(req);
    match api.rbac.current().allowed_by(user, &attrs) {
        Some(_) => Ok(()),
        None => Err(forbidden(user, &attrs)),
    }
}

/// Whether a node's TokenRequest is bound to a pod on that node that runs as the account.
async fn token_for_own_pod(
    node: &str,
    req: &ResourceRequest,
    api: &Api,
    content_type: &str,
    body: &[u8],
) -> Result<bool, ApiError> {
    let Ok(tr) = crate::handlers::parse_body(content_type, body) else {
        return Ok(false);
    };
    let bound = &tr["spec"]["boundObjectRef"];
    let (Some("Pod"), Some(pod_name)) = (bound["kind"].as_str(), bound["name"].as_str()) else {
        return Ok(false);
    };
    let Some(pods) = api.registry.find("", "v1", "pods") else {
        return Ok(false);
    };
    let Some(stored) = api
        .storage
        .get(&pods, req.namespace.as_deref(), pod_name)
        .await?
    else {
        return Ok(false);
    };
    let spec = |f: &str| meta::at(&stored.obj, &["spec", f]).and_then(Value::as_str);
    let account = spec("serviceAccountName").unwrap_or("default");
    Ok(spec("nodeName") == Some(node) && req.name.as_deref() == Some(account))
}

/// The node authorizer: what a kubelet may do without any RBAC binding.
async fn node_allows(
    user: &User,
    req: &ResourceRequest,
    info: &ResourceInfo,
    api: &Api,
    content_type: &str,
    body: &[u8],
) -> Result<bool, ApiError> {
    let Some(node) = user.node() else {
        return Ok(false);
    };
    // Reads, but not of logs or through a kubelet (`nodes/proxy`, upstream's node authorizer
    // grants neither: a node must not reach other nodes' kubelets through the API server).
    if req.verb.is_read() && !matches!(req.subresource.as_deref(), Some("log" | "proxy")) {
        return Ok(true);
    }
    let body_name = || {
        crate::handlers::parse_body(content_type, body)
            .ok()
            .and_then(|v| meta::name(&v).map(String::from))
    };
    let own_name = match req.verb {
        Verb::Create => body_name().as_deref() == Some(node),
        _ => req.name.as_deref() == Some(node),
    };
    let allowed = match (info.custom, info.group.as_str(), info.plural.as_str()) {
        (false, "", "nodes") => {
            own_name
                && req.verb != Verb::DeleteCollection
                && req.subresource.as_deref() != Some("proxy")
        }
        (false, "coordination.k8s.io", "leases") => {
            req.namespace.as_deref() == Some("kube-node-lease") && own_name
        }
        // A kubelet asks whether a caller of its own API may do what it asks (upstream's
        // webhook authorization mode of the kubelet).
        (false, "authorization.k8s.io", "subjectaccessreviews") => req.verb == Verb::Create,
        (false, "", "events") => matches!(req.verb, Verb::Create | Verb::Patch | Verb::Update),
        (false, "", "pods") => match (req.verb, &req.name) {
            (Verb::Update | Verb::Patch | Verb::Delete, Some(name)) => {
                let stored = api
                    .storage
                    .get(info, req.namespace.as_deref(), name)
                    .await?;
                stored.is_some_and(|s| {
                    meta::at(&s.obj, &["spec", "nodeName"]).and_then(Value::as_str) == Some(node)
                })
            }
            // Static (mirror) pods of the node itself.
            (Verb::Create, None) => crate::handlers::parse_body(content_type, body)
                .ok()
                .is_some_and(|v| {
                    meta::at(&v, &["spec", "nodeName"]).and_then(Value::as_str) == Some(node)
                }),
            _ => false,
        },
        // TokenRequest for the projected service-account token: only for a pod bound to this
        // node, naming that pod in boundObjectRef and running as this ServiceAccount (upstream's
        // node authorizer and NodeRestriction together).
        (false, "", "serviceaccounts") => {
            req.verb == Verb::Create
                && req.subresource.as_deref() == Some("token")
                && token_for_own_pod(node, req, api, content_type, body).await?
        }
        _ => false,
    };
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User::authenticated("jane".into(), vec![])
    }

    #[test]
    fn forbidden_messages_read_as_upstream_writes_them() {
        let cm = Attributes::resource("delete", "", "configmaps")
            .in_ns("team")
            .named("settings");
        let e = forbidden(&user(), &cm);
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            r#"configmaps "settings" is forbidden: User "jane" cannot delete resource "configmaps" in API group "" in the namespace "team""#
        );
        assert_eq!(e.kind.as_deref(), Some("configmaps"));
        assert_eq!(e.name.as_deref(), Some("settings"));
        let deployments = Attributes::resource("list", "apps", "deployments");
        assert_eq!(
            forbidden(&user(), &deployments).message,
            r#"deployments.apps is forbidden: User "jane" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        let binding = Attributes::resource("create", "", "pods")
            .subresource("binding")
            .in_ns("default")
            .named("web");
        assert_eq!(
            forbidden(&user(), &binding).message,
            r#"pods "web" is forbidden: User "jane" cannot create resource "pods/binding" in API group "" in the namespace "default""#
        );
        assert_eq!(
            forbidden(&user(), &Attributes::path("get", "/metrics")).message,
            r#"forbidden: User "jane" cannot get path "/metrics""#
        );
    }

    #[test]
    fn every_authenticated_user_is_in_system_authenticated_once() {
        let u = User::authenticated("a".into(), vec!["system:authenticated".into(), "x".into()]);
        assert_eq!(u.groups, ["system:authenticated", "x"]);
        assert_eq!(
            User::authenticated("b".into(), vec![]).groups,
            [AUTHENTICATED]
        );
    }
}
