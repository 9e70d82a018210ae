//! `/scale` (an `autoscaling/v1` Scale view of `.spec.replicas`) and `pods/binding`.

use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use super::crud::parse_rv;
use super::{Api, Call, Reply, parse_body};
use crate::meta;
use crate::request::Verb;
use crate::status::ApiError;

/// What a scale write wants, computed from the current object.
type Desired = Box<dyn Fn(&Value) -> Result<Value, ApiError> + Send + Sync>;

/// The Scale of an object: its replicas, observed replicas and selector.
fn scale_of(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut scale_meta = json!({});
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(k) {
            scale_meta[k] = v.clone();
        }
    }
    let selector = obj
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| {
            trellis_api::selector::LabelSelector::from_json(s)
                .ok()
                .flatten()
        })
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": meta::at(obj, &["spec", "replicas"]).cloned().unwrap_or(json!(0))},
        "status": {"replicas": meta::at(obj, &["status", "replicas"]).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

impl Api {
    pub(super) async fn scale(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let ns = call.req.namespace.as_deref();
        let name = call.req.name.as_deref().unwrap_or_default();
        if call.req.verb == Verb::Get {
            let stored = self.storage.require(info, ns, name).await?;
            return Ok(Reply::ok(scale_of(&stored.obj)));
        }
        // The desired Scale: the body of a PUT, or the patch applied to the current Scale.
        let (precondition, desired): (Option<i64>, Desired) = if call.req.verb == Verb::Update {
            let body = parse_body(call.content_type, call.body)?;
            let rv = meta::resource_version(&body).map(parse_rv).transpose()?;
            (rv, Box::new(move |_cur: &Value| Ok(body.clone())))
        } else {
            let ct = call
                .content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let patch: Value = serde_json::from_slice(call.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            (
                None,
                Box::new(move |cur: &Value| {
                    let scale = scale_of(cur);
                    let scale_type = trellis_api::patch::TypeRef::for_kind("autoscaling", "Scale");
                    match ct.as_str() {
                        "application/json-patch+json" => {
                            trellis_api::patch::json_patch(&scale, &patch)
                        }
                        "application/merge-patch+json" => {
                            trellis_api::patch::merge_patch(&scale, &patch)
                        }
                        "application/strategic-merge-patch+json" => {
                            trellis_api::patch::strategic_merge(&scale, &patch, &scale_type)
                        }
                        other => return Err(ApiError::unsupported_media_type(other)),
                    }
                    .map_err(|e| ApiError::bad_request(e.to_string()))
                }),
            )
        };
        let (obj, _) = self
            .write(info, call, precondition, None, |cur| {
                let want = desired(&cur.obj)?;
                let replicas = meta::at(&want, &["spec", "replicas"])
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "autoscaling",
                            "Scale",
                            name,
                            vec![crate::status::Cause::required("spec.replicas")],
                        )
                    })?;
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![crate::status::Cause::invalid(
                            "spec.replicas",
                            replicas,
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut next = cur.obj.clone();
                next["spec"]["replicas"] = json!(replicas);
                Ok(next)
            })
            .await?;
        Ok(Reply::ok(scale_of(&obj)))
    }

    /// `POST pods/<name>/binding`: the scheduler assigns a pod to a node, once.
    pub(super) async fn binding(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let body = parse_body(call.content_type, call.body)?;
        let name = call.req.name.clone().unwrap_or_default();
        let node = meta::at(&body, &["target", "name"])
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    &name,
                    vec![crate::status::Cause::required("target.name")],
                )
            })?;
        self.write(info, call, None, None, |cur| {
            match meta::at(&cur.obj, &["spec", "nodeName"]).and_then(Value::as_str) {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::conflict_state(
                        "",
                        "pods",
                        &name,
                        format!("pod {name} is already assigned to node \"{n}\""),
                    ));
                }
                _ => {}
            }
            if meta::is_deleting(&cur.obj) {
                return Err(ApiError::conflict_state(
                    "",
                    "pods",
                    &name,
                    format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            let mut next = cur.obj.clone();
            next["spec"]["nodeName"] = json!(node);
            Ok(next)
        })
        .await?;
        // The PodScheduled condition lives in status: a second write, as the scheduler's own.
        let status_call = Call {
            req: crate::request::ResourceRequest {
                subresource: Some("status".into()),
                ..call.req.clone()
            },
            ..*call
        };
        self.write(info, &status_call, None, Some("status"), |cur| {
            let mut next = cur.obj.clone();
            let mut conditions: Vec<Value> =
                meta::at(&next, &["status", "conditions"]).and_then(Value::as_array).cloned().unwrap_or_default().into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
            next["status"]["conditions"] = Value::Array(conditions);
            Ok(next)
        })
        .await?;
        Ok(Reply::Json {
            code: 201,
            body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            warnings: Vec::new(),
        })
    }
}
