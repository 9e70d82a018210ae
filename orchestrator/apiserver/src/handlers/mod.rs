//! The generic REST machinery: one implementation of get, list, watch, create, update, patch,
//! delete and deletecollection for every resource, with per-kind behaviour from `kinds`.

mod crud;
pub use crud::DeleteOptions;
mod subresources;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use trellis_api::ResourceInfo;

use crate::auth::User;
use crate::registry::Registry;
use crate::request::{ResourceRequest, Verb};
use crate::status::ApiError;
use crate::storage::Storage;

/// What a handler answers.
pub enum Reply {
    /// A JSON document with a status code (and warnings for the `Warning` header).
    Json {
        code: u16,
        body: Value,
        warnings: Vec<String>,
    },
    /// Bytes of another type (metrics text, protobuf OpenAPI).
    Raw {
        code: u16,
        body: Vec<u8>,
        content_type: &'static str,
    },
    /// A stream of newline-separated JSON frames (watch).
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply::Json {
            code: 200,
            body,
            warnings: Vec::new(),
        }
    }

    pub fn created(body: Value) -> Reply {
        Reply::Json {
            code: 201,
            body,
            warnings: Vec::new(),
        }
    }
}

/// The parts of a request the handlers look at.
pub struct Call<'a> {
    pub req: ResourceRequest,
    pub query: &'a HashMap<String, String>,
    /// `Accept`
    pub accept: &'a str,
    /// `Content-Type`
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub user: &'a User,
}

impl Call<'_> {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }

    /// `kubectl get` asks for a Table.
    pub fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    }
}

/// Shared state of the handlers.
pub struct Api {
    pub storage: Storage,
    pub registry: Arc<Registry>,
    pub alloc: crate::alloc::Allocator,
    /// Wakes the namespace finalizer when a namespace starts terminating.
    pub namespace_deleted: tokio::sync::Notify,
    /// tolerationSeconds of the not-ready and unreachable NoExecute tolerations new pods get
    /// (upstream's DefaultTolerationSeconds admission plugin; 300 s each by default).
    pub default_toleration_seconds: (i64, i64),
}

impl Api {
    pub fn new(storage: Storage, registry: Arc<Registry>, alloc: crate::alloc::Allocator) -> Api {
        Api {
            storage,
            registry,
            alloc,
            namespace_deleted: tokio::sync::Notify::new(),
            default_toleration_seconds: (300, 300),
        }
    }

    /// Serves one resource request.
    pub async fn resource(&self, call: Call<'_>) -> Result<Reply, ApiError> {
        let r = &call.req;
        let info = self
            .registry
            .find(&r.group, &r.version, &r.resource)
            .ok_or_else(|| {
                ApiError::no_route(&format!("{}/{}/{}", r.group, r.version, r.resource))
            })?;
        if r.namespace.is_some() && !info.namespaced {
            return Err(ApiError::no_route(&format!(
                "{} is not namespaced",
                info.plural
            )));
        }
        crate::auth::authorize(call.user, r, &info, self, call.content_type, call.body).await?;
        let sub = r.subresource.as_deref();
        if let Some(s) = sub {
            let known = trellis_api::Subresource::parse(s).is_some_and(|s| info.has(s));
            if !known {
                return Err(ApiError::no_route(&format!("{}/{s}", info.plural)));
            }
        }
        match (r.verb, sub) {
            (Verb::Get, None | Some("status")) => self.get(&info, &call).await,
            (Verb::List, None) => self.list(&info, &call).await,
            (Verb::Watch, None) => self.watch(&info, &call).await,
            (Verb::Create, None) => self.create(&info, &call).await,
            (Verb::Update, None | Some("status")) => self.update(&info, &call).await,
            (Verb::Patch, None | Some("status")) => self.patch(&info, &call).await,
            (Verb::Delete, None) => self.delete(&info, &call).await,
            (Verb::DeleteCollection, None) => self.delete_collection(&info, &call).await,
            (Verb::Get | Verb::Update | Verb::Patch, Some("scale")) => {
                self.scale(&info, &call).await
            }
            (Verb::Create, Some("binding")) => self.binding(&info, &call).await,
            (Verb::Get, Some("log")) => Err(ApiError::unavailable(
                "pods/log is not served yet: logs come from the kubelet, which this cluster does not run yet",
            )),
            _ => Err(ApiError::method_not_allowed(
                r.verb.as_str(),
                &format!("{}/{}", info.plural, sub.unwrap_or("")),
            )),
        }
    }
}

/// Parses a request body: JSON, or YAML or Kubernetes protobuf when the client says so.
pub fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = if ct.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
        serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else if ct.eq_ignore_ascii_case(crate::protobuf::CONTENT_TYPE) {
        crate::protobuf::decode(body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

/// A list document.
pub fn list_of(
    info: &ResourceInfo,
    items: Vec<Value>,
    revision: i64,
    continue_token: Option<String>,
) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": metadata, "items": items})
}
