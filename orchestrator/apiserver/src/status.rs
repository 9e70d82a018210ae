//! Every failure is a Kubernetes `Status` with the code and reason clients act on: 404 NotFound,
//! 409 Conflict / AlreadyExists, 410 Expired, 422 Invalid with causes, 401, 403, 400.

use serde_json::{Value, json};

/// A field-level reason for a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, …
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        why: impl Into<String>,
    ) -> Cause {
        let field = field.into();
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {}", why.into()),
            field,
        }
    }

    pub fn immutable(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "field is immutable".into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", why.into()),
        }
    }

    pub fn unknown_field(field: impl Into<String>) -> Cause {
        let field = field.into();
        Cause {
            reason: "FieldValueInvalid",
            message: format!("unknown field {field:?}"),
            field,
        }
    }
}

/// An API error: what the client gets as a Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details.name`, `details.group`, `details.kind`.
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
        }
    }

    fn about(mut self, group: &str, resource: &str, name: &str) -> ApiError {
        self.group = Some(group.to_string());
        self.kind = Some(resource.to_string());
        self.name = Some(name.to_string());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(user: &str, verb: &str, what: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{what} is forbidden: User \"{user}\" cannot {verb} it"),
        )
    }

    /// A 403 with its message as given, and the resource in the details (as upstream's
    /// `NewForbidden`).
    pub fn forbidden_about(
        message: String,
        group: &str,
        resource: &str,
        name: Option<&str>,
    ) -> ApiError {
        let mut e = ApiError::new(403, "Forbidden", message);
        if !resource.is_empty() {
            e.group = Some(group.to_string());
            e.kind = Some(resource.to_string());
            e.name = name.map(String::from);
        }
        e
    }

    /// `pods "web" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        let what = qualified(group, resource);
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .about(group, resource, name)
    }

    /// A path that names no resource.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        let what = qualified(group, resource);
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .about(group, resource, name)
    }

    /// A stale resourceVersion on update.
    pub fn conflict(group: &str, resource: &str, name: &str) -> ApiError {
        let what = qualified(group, resource);
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        )
        .about(group, resource, name)
    }

    /// The namespace is being deleted, or similar conflicts of state.
    pub fn conflict_state(
        group: &str,
        resource: &str,
        name: &str,
        why: impl Into<String>,
    ) -> ApiError {
        ApiError::new(409, "Conflict", why).about(group, resource, name)
    }

    /// 410: the revision asked for is gone; the client lists again.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    /// 422 with the field causes.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let detail = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {detail}"),
        );
        e.group = Some(group.to_string());
        e.kind = Some(kind.to_string());
        e.name = Some(name.to_string());
        e.causes = causes;
        e
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// An error a backend (a kubelet) answered with `code`: its text becomes the message, the
    /// reason follows the code (upstream's `NewGenericServerResponse`).
    pub fn from_backend(code: u16, message: impl Into<String>) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        ApiError::new(code, reason, message)
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                Value::Array(
                    self.causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field}),
                        )
                        .collect(),
                ),
            );
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// `deployments.apps`, or `pods` for the core group.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl From<trellis_store::Error> for ApiError {
    fn from(e: trellis_store::Error) -> ApiError {
        match e {
            trellis_store::Error::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            trellis_store::Error::FutureRevision { requested, current } => ApiError::timeout(
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            trellis_store::Error::Unavailable(m) => {
                ApiError::unavailable(format!("storage unavailable: {m}"))
            }
            other => ApiError::internal(format!("storage error: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_has_the_kubernetes_shape() {
        let s = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["status"], "Failure");
    }

    #[test]
    fn invalid_lists_its_causes() {
        let s = ApiError::invalid(
            "",
            "Pod",
            "Web",
            vec![Cause::invalid("metadata.name", "Web", "must be lowercase")],
        )
        .to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    }

    #[test]
    fn compaction_is_410_expired() {
        let e: ApiError = trellis_store::Error::Compacted {
            requested: 3,
            compacted: 10,
        }
        .into();
        assert_eq!((e.code, e.reason), (410, "Expired"));
    }
}
