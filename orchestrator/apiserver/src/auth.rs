//! Who is asking, and may they. Client certificates authenticate (CN = user, O = groups);
//! `system:masters` may do anything; a node (`system:node:<name>` in `system:nodes`) may read,
//! and write only its own Node, its own Lease, the pods bound to it, and events.

use serde_json::Value;
use trellis_api::ResourceInfo;

use crate::handlers::Api;
use crate::meta;
use crate::request::{ResourceRequest, Verb};
use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// The identity of the loopback plain-HTTP listener (only when asked for).
    pub fn loopback_admin() -> User {
        User {
            name: "system:apiserver".into(),
            groups: vec!["system:masters".into()],
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

fn forbidden(user: &User, req: &ResourceRequest, info: &ResourceInfo) -> ApiError {
    let what = match (&req.namespace, &req.name) {
        (Some(ns), Some(n)) => format!("{} \"{n}\" in namespace \"{ns}\"", info.plural),
        (None, Some(n)) => format!("{} \"{n}\"", info.plural),
        (Some(ns), None) => format!("{} in namespace \"{ns}\"", info.plural),
        (None, None) => info.plural.clone(),
    };
    ApiError::forbidden(&user.name, req.verb.as_str(), &what)
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
    let Some(node) = user.node() else {
        return Err(forbidden(user, req, info));
    };
    if req.verb.is_read() && req.subresource.as_deref() != Some("log") {
        return Ok(());
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
        (false, "", "nodes") => own_name && req.verb != Verb::DeleteCollection,
        (false, "coordination.k8s.io", "leases") => {
            req.namespace.as_deref() == Some("kube-node-lease") && own_name
        }
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
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden(user, req, info))
    }
}
