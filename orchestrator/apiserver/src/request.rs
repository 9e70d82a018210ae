//! From method and path to what the request means: the verb, and which resource, namespace,
//! object and subresource it names (Kubernetes' RequestInfo).

use std::collections::HashMap;

use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// A request for a resource (as opposed to discovery or health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    pub verb: Verb,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Version,
    Health(String),
    Metrics,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    Resources {
        group: String,
        version: String,
    },
    /// `/openapi/v2`
    OpenApiV2,
    /// `/openapi/v3` (index) or `/openapi/v3/<api/v1|apis/g/v>`
    OpenApiV3(Option<String>),
    Resource(ResourceRequest),
}

/// Parses method and path. `watch` is the `?watch=` flag, which turns a GET list into a watch.
pub fn route(method: &str, path: &str, watch: bool) -> Result<Route, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let segs: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        [h @ ("healthz" | "livez" | "readyz"), rest @ ..] => {
            return Ok(Route::Health(
                std::iter::once(*h)
                    .chain(rest.iter().copied())
                    .collect::<Vec<_>>()
                    .join("/"),
            ));
        }
        ["metrics"] => return Ok(Route::Metrics),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", group] => return Ok(Route::Group(group.to_string())),
        ["api", v] => {
            return Ok(Route::Resources {
                group: String::new(),
                version: v.to_string(),
            });
        }
        ["apis", g, v] => {
            return Ok(Route::Resources {
                group: g.to_string(),
                version: v.to_string(),
            });
        }
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3(None)),
        ["openapi", "v3", rest @ ..] => return Ok(Route::OpenApiV3(Some(rest.join("/")))),
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return Err(ApiError::no_route(path)),
    };
    // /namespaces/<ns>/<resource>/... addresses namespaced objects; /namespaces/<name>[/status]
    // is the Namespace itself.
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", _, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            (None, rest)
        }
        ["namespaces", ns, _, ..] => (Some(ns.to_string()), &rest[2..]),
        other => (None, other),
    };
    let (resource, name, subresource) = match rest {
        // `nodes/<name>[:<port>]/proxy/<path...>`: the rest is the kubelet's path
        // ([`proxy_path`]).
        ["nodes", n, "proxy", _, ..] if group.is_empty() => (
            "nodes".to_string(),
            Some(n.to_string()),
            Some("proxy".to_string()),
        ),
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::no_route(path)),
    };
    let verb = match (method, name.is_some()) {
        ("GET" | "HEAD", true) => Verb::Get,
        ("GET" | "HEAD", false) if watch => Verb::Watch,
        ("GET" | "HEAD", false) => Verb::List,
        ("POST", _) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed(method, path)),
    };
    let verb = if verb == Verb::Get && watch {
        Verb::Watch
    } else {
        verb
    };
    Ok(Route::Resource(ResourceRequest {
        verb,
        group,
        version,
        resource,
        namespace,
        name,
        subresource,
    }))
}

/// The path a `nodes/<name>/proxy/<path>` request asks of the kubelet: everything after
/// `/proxy`, with its trailing slash kept (`/stats/summary`, `/`); None for other paths.
pub fn proxy_path(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/v1/nodes/")?
        .split_once('/')?
        .1
        .strip_prefix("proxy")?;
    match rest {
        "" => Some("/".into()),
        r if r.starts_with('/') => Some(r.to_string()),
        _ => None,
    }
}

/// Query parameters, percent-decoded. A repeated key keeps its last value.
pub fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: &str, path: &str, watch: bool) -> ResourceRequest {
        match route(method, path, watch).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn node_proxy_paths_name_the_node_and_keep_the_kubelets_path() {
        for (path, want) in [
            ("/api/v1/nodes/n1/proxy/stats/summary", "/stats/summary"),
            ("/api/v1/nodes/n1/proxy", "/"),
            ("/api/v1/nodes/n1/proxy/", "/"),
            ("/api/v1/nodes/n1:10250/proxy/metrics", "/metrics"),
        ] {
            let r = res("GET", path, false);
            assert_eq!(
                (
                    r.verb,
                    r.resource.as_str(),
                    r.subresource.as_deref(),
                    r.namespace.as_deref()
                ),
                (Verb::Get, "nodes", Some("proxy"), None),
                "{path}"
            );
            assert!(r.name.as_deref().is_some_and(|n| n.starts_with("n1")));
            assert_eq!(proxy_path(path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(
            res("POST", "/api/v1/nodes/n1/proxy/x", false).verb,
            Verb::Create
        );
        assert_eq!(proxy_path("/api/v1/nodes/n1/proxyx"), None);
        assert_eq!(proxy_path("/api/v1/nodes/n1/status"), None);
    }

    #[test]
    fn namespaced_paths() {
        let r = res("GET", "/api/v1/namespaces/default/pods/web", false);
        assert_eq!(
            (
                r.verb,
                r.group.as_str(),
                r.resource.as_str(),
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            (Verb::Get, "", "pods", Some("default"), Some("web"))
        );
        let r = res(
            "PUT",
            "/apis/apps/v1/namespaces/ns1/deployments/d/status",
            false,
        );
        assert_eq!(
            (r.verb, r.group.as_str(), r.subresource.as_deref()),
            (Verb::Update, "apps", Some("status"))
        );
        let r = res("GET", "/api/v1/namespaces/default/pods", true);
        assert_eq!(r.verb, Verb::Watch);
        let r = res("DELETE", "/api/v1/namespaces/default/configmaps", false);
        assert_eq!(r.verb, Verb::DeleteCollection);
        let r = res("POST", "/api/v1/namespaces/default/pods/web/binding", false);
        assert_eq!(
            (r.verb, r.subresource.as_deref()),
            (Verb::Create, Some("binding"))
        );
    }

    #[test]
    fn namespaces_themselves_and_cluster_wide_lists() {
        let r = res("GET", "/api/v1/namespaces/kube-system", false);
        assert_eq!(
            (r.resource.as_str(), r.namespace, r.name.as_deref()),
            ("namespaces", None, Some("kube-system"))
        );
        let r = res("PUT", "/api/v1/namespaces/kube-system/status", false);
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("kube-system"), Some("status"))
        );
        let r = res("GET", "/api/v1/pods", false);
        assert_eq!((r.verb, r.namespace), (Verb::List, None));
        let r = res(
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example.com",
            false,
        );
        assert_eq!(r.name.as_deref(), Some("x.example.com"));
    }

    #[test]
    fn discovery_and_health() {
        assert_eq!(
            route("GET", "/apis/apps/v1", false).unwrap(),
            Route::Resources {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(route("GET", "/api", false).unwrap(), Route::CoreVersions);
        assert_eq!(
            route("GET", "/readyz", false).unwrap(),
            Route::Health("readyz".into())
        );
        assert_eq!(
            route("GET", "/openapi/v3/apis/apps/v1", false).unwrap(),
            Route::OpenApiV3(Some("apis/apps/v1".into()))
        );
        assert!(route("GET", "/nonsense", false).is_err());
        assert!(route("PATCH", "/api/v1/namespaces/default/pods", false).is_err());
    }

    #[test]
    fn query_is_percent_decoded() {
        let q = query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=1",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a,b)");
        assert_eq!(q["watch"], "1");
        assert_eq!(query(Some("a=%zz"))["a"], "%zz");
    }
}
