//! The generic REST machinery: one implementation of get, list, watch, create, update, patch,
//! delete and deletecollection for every resource, with per-kind behaviour from `kinds`.

mod crud;
pub use crud::DeleteOptions;
use crud::View;
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
    /// A stream of bytes of another type (a container log from the kubelet).
    Bytes {
        content_type: &'static str,
        body: mpsc::Receiver<Bytes>,
    },
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
    /// The RBAC roles and bindings, as the authorizer reads them.
    pub rbac: crate::rbac::RuleCache,
    /// The service-account token key (set at start, once the PKI is loaded).
    pub tokens: std::sync::OnceLock<crate::token::Signer>,
    /// tolerationSeconds of the not-ready and unreachable NoExecute tolerations new pods get
    /// (upstream's DefaultTolerationSeconds admission plugin; 300 s each by default).
    pub default_toleration_seconds: (i64, i64),
    /// HTTPS to kubelets, for pods/log (set at start from the kubelet client certificate).
    pub kubelet: std::sync::OnceLock<crate::kubelet::KubeletClient>,
}

impl Api {
    pub fn new(storage: Storage, registry: Arc<Registry>, alloc: crate::alloc::Allocator) -> Api {
        Api {
            storage,
            registry,
            alloc,
            namespace_deleted: tokio::sync::Notify::new(),
            rbac: Default::default(),
            tokens: std::sync::OnceLock::new(),
            default_toleration_seconds: (300, 300),
            kubelet: std::sync::OnceLock::new(),
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
        if info.group == "events.k8s.io" {
            return self.events_v1(call).await;
        }
        if crate::hpa_v1::is_v1(&info) {
            return self.hpa_v1(call).await;
        }
        let reply = self.serve(&info, &call).await;
        // A change of a role or binding applies to the next request, not only once the watch
        // that feeds the cache brings it.
        if info.group == crate::rbac::GROUP
            && !r.verb.is_read()
            && reply.is_ok()
            && !call.dry_run()
            && let Err(e) = crate::rbac::reload(self).await
        {
            // The write stands; the watch that feeds the cache retries.
            tracing::warn!(error = %e, "reloading RBAC rules after a write");
        }
        reply
    }

    /// events.k8s.io/v1, served by the core/v1 machinery over the same objects
    /// ([`crate::events`]).
    async fn events_v1(&self, call: Call<'_>) -> Result<Reply, ApiError> {
        let core = self
            .registry
            .find("", "v1", "events")
            .ok_or_else(|| ApiError::internal("events are not served"))?;
        let mut req = call.req.clone();
        req.group = String::new();
        req.version = "v1".into();
        let (body, content_type) = match req.verb {
            Verb::Create | Verb::Update => {
                let mut obj = parse_body(call.content_type, call.body)?;
                crate::events::to_core(&mut obj);
                (
                    serde_json::to_vec(&obj).unwrap_or_default(),
                    "application/json",
                )
            }
            Verb::Patch => {
                let mut patch: Value = serde_json::from_slice(call.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                if call.content_type.starts_with("application/json-patch+json") {
                    crate::events::json_patch_to_core(&mut patch);
                } else {
                    crate::events::to_core(&mut patch);
                }
                (
                    serde_json::to_vec(&patch).unwrap_or_default(),
                    call.content_type,
                )
            }
            _ => (call.body.to_vec(), call.content_type),
        };
        let core_call = Call {
            req,
            query: call.query,
            accept: call.accept,
            content_type,
            body: &body,
            user: call.user,
        };
        self.serve(&core, &core_call)
            .await
            .map(crate::events::reply_from_core)
    }

    /// autoscaling/v1 HorizontalPodAutoscalers, served by the v2 machinery over the same
    /// objects ([`crate::hpa_v1`]).
    async fn hpa_v1(&self, call: Call<'_>) -> Result<Reply, ApiError> {
        let v2 = self
            .registry
            .find("autoscaling", "v2", "horizontalpodautoscalers")
            .ok_or_else(|| ApiError::internal("autoscaling/v2 is not served"))?;
        let mut req = call.req.clone();
        req.version = "v2".into();
        let mut warnings = Vec::new();
        let body = match req.verb {
            Verb::Create | Verb::Update => {
                let mut obj = parse_body(call.content_type, call.body)?;
                if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
                    && v != crate::hpa_v1::API_VERSION
                {
                    return Err(ApiError::bad_request(format!(
                        "the API version in the data ({v}) does not match the expected API version ({})",
                        crate::hpa_v1::API_VERSION
                    )));
                }
                // Fields autoscaling/v1 does not know are dropped (warned about) or refused
                // here: the conversion would lose them silently.
                let strict = call.q("fieldValidation") == Some("Strict");
                let unknown = crate::kinds::typecheck_hpa_v1(&mut obj, !strict).map_err(|e| {
                    ApiError::bad_request(format!(
                        "HorizontalPodAutoscaler in version \"v1\" cannot be handled as a HorizontalPodAutoscaler: {e}"
                    ))
                })?;
                let listed: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                match call.q("fieldValidation") {
                    _ if listed.is_empty() => {}
                    Some("Strict") => {
                        return Err(ApiError::bad_request(format!(
                            "strict decoding error: {}",
                            listed.join(", ")
                        )));
                    }
                    Some("Ignore") => {}
                    _ => warnings = listed,
                }
                let v2obj =
                    crate::hpa_v1::to_v2(&obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(serde_json::to_vec(&v2obj).unwrap_or_default())
            }
            _ => None,
        };
        let v2_call = Call {
            req,
            query: call.query,
            accept: call.accept,
            content_type: if body.is_some() {
                "application/json"
            } else {
                call.content_type
            },
            body: body.as_deref().unwrap_or(call.body),
            user: call.user,
        };
        let reply = if v2_call.req.verb == Verb::Patch
            && matches!(v2_call.req.subresource.as_deref(), None | Some("status"))
        {
            let view = View {
                to_client: crate::hpa_v1::from_v2,
                to_storage: |v1| {
                    crate::hpa_v1::to_v2(v1).map_err(|e| ApiError::bad_request(e.to_string()))
                },
            };
            self.patch_in(&v2, &v2_call, Some(view)).await
        } else {
            self.serve(&v2, &v2_call).await
        };
        reply.map(crate::hpa_v1::reply_from_v2).map(|r| match r {
            Reply::Json {
                code,
                body,
                warnings: mut w,
            } => {
                w.extend(warnings);
                Reply::Json {
                    code,
                    body,
                    warnings: w,
                }
            }
            other => other,
        })
    }

    async fn serve(&self, info: &ResourceInfo, call: &Call<'_>) -> Result<Reply, ApiError> {
        let r = &call.req;
        let sub = r.subresource.as_deref();
        if info.group == crate::resource_metrics::GROUP {
            return crate::resource_metrics::serve(self, info, call).await;
        }
        if info.group == "authentication.k8s.io" {
            return match (r.verb, sub) {
                (Verb::Create, None) => crate::token::review(self, call.content_type, call.body)
                    .await
                    .map(Reply::created),
                _ => Err(ApiError::method_not_allowed(r.verb.as_str(), &info.plural)),
            };
        }
        if info.group == "authorization.k8s.io" {
            return match (r.verb, sub) {
                (Verb::Create, None) => crate::rbac::review::create(self, info, call),
                _ => Err(ApiError::method_not_allowed(r.verb.as_str(), &info.plural)),
            };
        }
        match (r.verb, sub) {
            (Verb::Get, None | Some("status")) => self.get(info, call).await,
            (Verb::List, None) => self.list(info, call).await,
            (Verb::Watch, None) => self.watch(info, call).await,
            (Verb::Create, None) => self.create(info, call).await,
            (Verb::Update, None | Some("status")) => self.update(info, call).await,
            (Verb::Patch, None | Some("status")) => self.patch(info, call).await,
            (Verb::Delete, None) => self.delete(info, call).await,
            (Verb::DeleteCollection, None) => self.delete_collection(info, call).await,
            (Verb::Get | Verb::Update | Verb::Patch, Some("scale")) => self.scale(info, call).await,
            (Verb::Create, Some("binding")) => self.binding(info, call).await,
            (Verb::Create, Some("token")) => {
                let (ns, name) = (
                    r.namespace.as_deref().unwrap_or("default"),
                    r.name.as_deref().unwrap_or(""),
                );
                crate::token::request(self, ns, name, call.content_type, call.body)
                    .await
                    .map(Reply::created)
            }
            (Verb::Get, Some("log")) => crate::kubelet::logs(self, call).await,
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
