//! authorization.k8s.io/v1 access reviews: the question "may this user do that", answered and
//! not stored. `kubectl auth can-i` asks with a SelfSubjectAccessReview (about the caller); a
//! SubjectAccessReview asks about anyone, and needs the right to create one; a
//! SelfSubjectRulesReview lists the caller's rules (`kubectl auth can-i --list`).

use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use super::Attributes;
use crate::auth::User;
use crate::handlers::{Api, Call, Reply};
use crate::status::{ApiError, Cause};

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_string()
}

/// The attributes a review's spec asks about.
fn attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let res = &spec["resourceAttributes"];
    let non = &spec["nonResourceAttributes"];
    let opt = |v: &Value, key: &str| Some(text(v, key)).filter(|s| !s.is_empty());
    match (res.is_object(), non.is_object()) {
        (true, false) => Ok(Attributes::Resource {
            verb: text(res, "verb"),
            group: text(res, "group"),
            resource: text(res, "resource"),
            subresource: opt(res, "subresource"),
            namespace: opt(res, "namespace"),
            name: opt(res, "name"),
        }),
        (false, true) => Ok(Attributes::path(&text(non, "verb"), &text(non, "path"))),
        (both, _) => Err(ApiError::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                if both { "both" } else { "neither" },
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

/// `kubectl auth can-i --list`: the rules that apply to the caller in a namespace.
fn rules_review(api: &Api, info: &ResourceInfo, call: &Call<'_>, mut review: Value) -> Reply {
    let ns = review["spec"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty());
    let rules = api.rbac.current().rules_for(call.user, ns);
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    for r in rules {
        if r.non_resource_urls.is_empty() {
            resource.push(json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                                 "resources": r.resources, "resourceNames": r.resource_names}));
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    // system:masters and the node authorizer are not rules; say so as upstream does.
    let incomplete = call.user.is_admin() || call.user.node().is_some();
    review["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource,
                              "incomplete": incomplete});
    review["apiVersion"] = json!(info.api_version());
    review["kind"] = json!(info.kind);
    Reply::created(review)
}

/// Answers a review.
pub fn create(api: &Api, info: &ResourceInfo, call: &Call<'_>) -> Result<Reply, ApiError> {
    let mut review = crate::handlers::parse_body(call.content_type, call.body)?;
    if info.kind == "SelfSubjectRulesReview" {
        return Ok(rules_review(api, info, call, review));
    }
    let spec = review["spec"].clone();
    let attrs = attributes(&spec)?;
    let subject = if info.kind == "SelfSubjectAccessReview" {
        call.user.clone()
    } else {
        let user = text(&spec, "user");
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                "SubjectAccessReview",
                "",
                vec![Cause::invalid(
                    "spec.user",
                    "",
                    "at least one of user or group must be specified",
                )],
            ));
        }
        User {
            name: user,
            groups,
            uid: text(&spec, "uid"),
            ..Default::default()
        }
    };
    let status = match crate::auth::allowed(&subject, &attrs, api) {
        Some(reason) => json!({"allowed": true, "reason": reason}),
        None => json!({"allowed": false}),
    };
    review["status"] = status;
    review["apiVersion"] = json!(info.api_version());
    review["kind"] = json!(info.kind);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    Ok(Reply::created(review))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_asks_about_a_resource_or_a_path_never_both() {
        let spec = json!({"resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "ns", "name": "web"}});
        assert_eq!(
            attributes(&spec).unwrap(),
            Attributes::resource("delete", "", "pods")
                .in_ns("ns")
                .named("web")
        );
        let spec = json!({"nonResourceAttributes": {"verb": "get", "path": "/healthz"}});
        assert_eq!(
            attributes(&spec).unwrap(),
            Attributes::path("get", "/healthz")
        );
        assert_eq!(attributes(&json!({})).unwrap_err().code, 422);
    }
}
