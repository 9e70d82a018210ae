//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): a user with the `impersonate` verb
//! may act as another, as upstream's impersonation filter allows. The headers
//! `Impersonate-User`, `Impersonate-Group` (repeatable), `Impersonate-Uid` and
//! `Impersonate-Extra-<key>` are each authorized for the requesting user:
//!
//! - a user: `impersonate` on `users` named the user, or, for a service-account username
//!   `system:serviceaccount:<ns>:<name>`, on `serviceaccounts` named `<name>` in `<ns>`;
//! - a group: on `groups` named the group;
//! - an extra: on `userextras/<key>` named the value, in API group `authentication.k8s.io`;
//! - a uid: on `uids` named the uid, in API group `authentication.k8s.io`.
//!
//! The first one refused answers 403 in upstream's words (`users "jane" is forbidden: User
//! "bob" cannot impersonate resource "users" in API group "" at the cluster scope`); when all
//! are allowed the request runs as the impersonated user — its groups are the ones asked for
//! (a service account's own groups when none are), plus `system:authenticated`.

use hyper::HeaderMap;

use crate::auth::{AUTHENTICATED, User, allowed, forbidden};
use crate::handlers::Api;
use crate::rbac::Attributes;
use crate::status::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";
const SA_PREFIX: &str = "system:serviceaccount:";

/// What the impersonation headers ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl Request {
    /// The impersonation headers of a request; `None` when it has none.
    pub fn from_headers(headers: &HeaderMap) -> Option<Request> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(String::from)
                .collect()
        };
        let mut r = Request {
            user: values(USER).into_iter().next(),
            groups: values(GROUP),
            uid: values(UID).into_iter().next(),
            ..Default::default()
        };
        for name in headers.keys() {
            // Header names arrive lower-case; the key is percent-encoded (upstream unescapes it).
            if let Some(key) = name.as_str().strip_prefix(EXTRA_PREFIX) {
                r.extra
                    .entry(unescape(key))
                    .or_default()
                    .extend(values(name.as_str()));
            }
        }
        (r != Request::default()).then_some(r)
    }

    /// What the requester must be allowed, in upstream's order (user, groups, extras, uid).
    fn checks(&self) -> Vec<Attributes> {
        let impersonate =
            |group: &str, resource: &str| Attributes::resource("impersonate", group, resource);
        let mut out = Vec::new();
        if let Some(user) = &self.user {
            out.push(match split_service_account(user) {
                Some((ns, name)) => impersonate("", "serviceaccounts").in_ns(ns).named(name),
                None => impersonate("", "users").named(user),
            });
        }
        for g in &self.groups {
            out.push(impersonate("", "groups").named(g));
        }
        for (key, values) in &self.extra {
            for v in values {
                out.push(
                    impersonate("authentication.k8s.io", "userextras")
                        .subresource(key)
                        .named(v),
                );
            }
        }
        if let Some(uid) = &self.uid {
            out.push(impersonate("authentication.k8s.io", "uids").named(uid));
        }
        out
    }

    /// The user the request runs as.
    fn user(self) -> User {
        let name = self.user.unwrap_or_default();
        let mut groups = self.groups;
        if groups.is_empty()
            && let Some((ns, _)) = split_service_account(&name)
        {
            groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
        if name == ANONYMOUS {
            if !groups.iter().any(|g| g == UNAUTHENTICATED) {
                groups.push(UNAUTHENTICATED.into());
            }
        } else if !groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
        {
            groups.push(AUTHENTICATED.into());
        }
        User {
            name,
            groups,
            uid: self.uid.unwrap_or_default(),
            extra: self.extra,
        }
    }
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name); anything else is a plain user name.
fn split_service_account(user: &str) -> Option<(&str, &str)> {
    let (ns, name) = user.strip_prefix(SA_PREFIX)?.split_once(':')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(ns) && valid(name)).then_some((ns, name))
}

/// Percent-decoding of an extra's key (`%2F` → `/`); a malformed escape stays as written.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(v as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user a request runs as: `requester` itself without impersonation headers, else the
/// impersonated user once every part of it is allowed (403 at the first that is not; 400 for
/// groups, extras or a uid without a user).
pub fn apply(requester: User, headers: &HeaderMap, api: &Api) -> Result<User, ApiError> {
    let Some(req) = Request::from_headers(headers) else {
        return Ok(requester);
    };
    if req.user.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "requested impersonation of groups, extra or a uid without impersonating a user",
        ));
    }
    for attrs in req.checks() {
        if allowed(&requester, &attrs, api).is_none() {
            tracing::debug!(user = %requester.name, ?attrs, "impersonation refused");
            return Err(forbidden(&requester, &attrs));
        }
    }
    Ok(req.user())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn no_headers_no_impersonation() {
        assert_eq!(
            Request::from_headers(&headers(&[("Authorization", "x")])),
            None
        );
    }

    #[test]
    fn the_headers_name_user_groups_uid_and_extras() {
        let r = Request::from_headers(&headers(&[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "u-1"),
            ("Impersonate-Extra-Scopes", "view"),
            ("Impersonate-Extra-Example.com%2Fteam", "a"),
        ]))
        .unwrap();
        assert_eq!(r.user.as_deref(), Some("jane"));
        assert_eq!(r.groups, ["devs", "ops"]);
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.extra["scopes"], ["view"]);
        assert_eq!(r.extra["example.com/team"], ["a"]);
        let checks = r.checks();
        assert_eq!(
            checks[0],
            Attributes::resource("impersonate", "", "users").named("jane")
        );
        assert_eq!(
            checks[1],
            Attributes::resource("impersonate", "", "groups").named("devs")
        );
        assert!(
            checks.contains(
                &Attributes::resource("impersonate", "authentication.k8s.io", "userextras")
                    .subresource("example.com/team")
                    .named("a")
            )
        );
        assert_eq!(
            checks.last(),
            Some(
                &Attributes::resource("impersonate", "authentication.k8s.io", "uids").named("u-1")
            )
        );
        let u = r.user();
        assert_eq!(u.name, "jane");
        assert_eq!(u.groups, ["devs", "ops", AUTHENTICATED]);
        assert_eq!(u.uid, "u-1");
    }

    #[test]
    fn a_service_account_is_checked_in_its_namespace_and_gets_its_groups() {
        let r = Request::from_headers(&headers(&[(
            "Impersonate-User",
            "system:serviceaccount:team:robot",
        )]))
        .unwrap();
        assert_eq!(
            r.checks(),
            [Attributes::resource("impersonate", "", "serviceaccounts")
                .in_ns("team")
                .named("robot")]
        );
        assert_eq!(
            r.user().groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:team",
                AUTHENTICATED
            ]
        );
        // Not a well-formed account name: a plain user.
        assert_eq!(split_service_account("system:serviceaccount:a:b:c"), None);
        assert_eq!(split_service_account("system:serviceaccount:Team:x"), None);
    }

    #[test]
    fn the_anonymous_user_is_unauthenticated() {
        let r = Request {
            user: Some(ANONYMOUS.into()),
            ..Default::default()
        };
        assert_eq!(r.user().groups, [UNAUTHENTICATED]);
        let r = Request {
            user: Some("jane".into()),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        };
        assert_eq!(r.user().groups, [UNAUTHENTICATED], "not both");
    }

    #[test]
    fn escapes_decode_and_bad_ones_stay() {
        assert_eq!(unescape("a%2Fb"), "a/b");
        assert_eq!(unescape("a%2"), "a%2");
        assert_eq!(unescape("a%zzb"), "a%zzb");
    }
}
