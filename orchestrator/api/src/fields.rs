//! Field selectors (`?fieldSelector=`, apimachinery `pkg/fields`).
//!
//! A field selector is a comma-separated list of `field=value`, `field==value` or
//! `field!=value` terms that must all hold. Values may contain `,`, `=` and `\` escaped with a
//! backslash (`\,` `\=` `\\`). A field an object does not have compares as the empty string, so
//! `spec.nodeName=` selects the pods no node has taken yet (the scheduler's watch).
//!
//! Each kind supports a fixed set of fields (`metadata.name` and `metadata.namespace` for all);
//! a selector naming any other is refused, as the API server refuses it with 400
//! `field label not supported: <field>`. [`supported_fields`] lists them and [`object_field`]
//! reads them from an object.

use std::fmt;

use serde_json::Value;
use thiserror::Error;

/// Why a field selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldSelectorError {
    /// A term without an operator: `invalid selector: 'a'; can't understand 'a'`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidTerm { selector: String, term: String },
    /// A backslash before something other than `\`, `,`, `=`, or at the end.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A `,` or `=` in a value that is not escaped.
    #[error("invalid field selector: unescaped character in value: {0}")]
    UnescapedCharacter(char),
    /// A field the kind cannot be selected by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// How a term compares the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value`
    Equals,
    /// `field==value`, the same as `=`.
    DoubleEquals,
    /// `field!=value`
    NotEquals,
}

/// One term of a field selector. `value` is unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    pub value: String,
}

impl FieldRequirement {
    /// Whether a field value (None: the object has no such field, which compares as "")
    /// satisfies the term.
    pub fn matches(&self, actual: Option<&str>) -> bool {
        let actual = actual.unwrap_or("");
        match self.operator {
            FieldOperator::Equals | FieldOperator::DoubleEquals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    /// `field=value` or `field!=value` with the value escaped; `==` is written `=` as
    /// apimachinery does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            FieldOperator::Equals | FieldOperator::DoubleEquals => "=",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{op}{}", self.field, escape_value(&self.value))
    }
}

/// A parsed field selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> FieldSelector {
        FieldSelector::default()
    }

    /// Parses `?fieldSelector=`. Terms are split on unescaped commas (empty terms are skipped)
    /// and kept in sorted order; each is split at its first `!=`, `==` or `=`. No whitespace is
    /// trimmed: it belongs to the field or the value, as in Kubernetes.
    pub fn parse(selector: &str) -> Result<FieldSelector, FieldSelectorError> {
        let mut terms = split_terms(selector);
        terms.sort_unstable();
        let mut requirements = Vec::new();
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let Some((field, operator, raw_value)) = split_term(term) else {
                return Err(FieldSelectorError::InvalidTerm {
                    selector: selector.to_string(),
                    term: term.to_string(),
                });
            };
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator,
                value: unescape_value(raw_value)?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Parses, then refuses fields the kind does not support ([`supported_fields`]).
    pub fn parse_for_kind(
        selector: &str,
        group: &str,
        kind: &str,
    ) -> Result<FieldSelector, FieldSelectorError> {
        let parsed = FieldSelector::parse(selector)?;
        parsed.check_supported(group, kind)?;
        Ok(parsed)
    }

    /// Refuses a selector naming a field the kind cannot be selected by.
    pub fn check_supported(&self, group: &str, kind: &str) -> Result<(), FieldSelectorError> {
        let supported = supported_fields(group, kind);
        match self
            .requirements
            .iter()
            .find(|r| !supported.contains(&r.field.as_str()))
        {
            Some(r) => Err(FieldSelectorError::UnsupportedField(r.field.clone())),
            None => Ok(()),
        }
    }

    /// The terms, in sorted order.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// True when there is no term.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value a term demands by equality, if there is one (`metadata.name=x` lets the
    /// API server read one key instead of listing).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| {
                r.field == field
                    && matches!(
                        r.operator,
                        FieldOperator::Equals | FieldOperator::DoubleEquals
                    )
            })
            .map(|r| r.value.as_str())
    }

    /// Whether every term holds, reading fields through `field` (None: the object has no such
    /// field, which compares as "").
    pub fn matches<F>(&self, field: F) -> bool
    where
        F: Fn(&str) -> Option<String>,
    {
        self.requirements
            .iter()
            .all(|r| r.matches(field(&r.field).as_deref()))
    }

    /// Whether an object of the given kind satisfies every term, reading the well-known fields
    /// with [`object_field`].
    pub fn matches_object(&self, group: &str, kind: &str, object: &Value) -> bool {
        self.matches(|field| object_field(group, kind, object, field))
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical string: terms in sorted order joined by `,`, values escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for FieldSelector {
    type Err = FieldSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

/// Escapes `\`, `,` and `=` in a value with a backslash.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Undoes [`escape_value`]; refuses unknown escapes and unescaped `,` or `=`.
pub fn unescape_value(value: &str) -> Result<String, FieldSelectorError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(other) => return Err(FieldSelectorError::InvalidEscape(format!("\\{other}"))),
                None => return Err(FieldSelectorError::InvalidEscape("\\".to_string())),
            },
            ',' | '=' => return Err(FieldSelectorError::UnescapedCharacter(c)),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Splits on commas that are not escaped; escapes stay in the terms.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at the first operator; `!=` and `==` are tried before `=` at each position.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, operator) in [
            ("!=", FieldOperator::NotEquals),
            ("==", FieldOperator::DoubleEquals),
            ("=", FieldOperator::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], operator, value));
            }
        }
    }
    None
}

const META: &[&str] = &["metadata.name", "metadata.namespace"];

const POD: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const NODE: &[&str] = &["metadata.name", "metadata.namespace", "spec.unschedulable"];
const SECRET: &[&str] = &["metadata.name", "metadata.namespace", "type"];
const NAMESPACE: &[&str] = &["metadata.name", "metadata.namespace", "status.phase"];
const REPLICAS: &[&str] = &["metadata.name", "metadata.namespace", "status.replicas"];
const JOB: &[&str] = &["metadata.name", "metadata.namespace", "status.successful"];

/// The fields a kind can be selected by. Every kind, custom resources included, supports
/// `metadata.name` and `metadata.namespace` (which is always empty for cluster-scoped kinds).
pub fn supported_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => POD,
        ("", "Event") => EVENT,
        ("", "Node") => NODE,
        ("", "Secret") => SECRET,
        ("", "Namespace") => NAMESPACE,
        ("", "ReplicationController") | ("apps", "ReplicaSet") => REPLICAS,
        ("batch", "Job") => JOB,
        _ => META,
    }
}

fn string_at(object: &Value, pointer: &str) -> Option<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A boolean field as Kubernetes prints it; absent is Go's zero value, "false".
fn bool_at(object: &Value, pointer: &str) -> String {
    object
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .to_string()
}

/// An integer field as Kubernetes prints it; absent is "0".
fn int_at(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_string(),
    }
}

/// Reads a selectable field of an object of the given kind. Returns None for fields the object
/// lacks (they compare as "") and for fields the kind does not support. Booleans and counts are
/// rendered the way Kubernetes does (`"true"`, `"false"`, `"3"`), with Go's zero value when
/// absent.
pub fn object_field(group: &str, kind: &str, object: &Value, field: &str) -> Option<String> {
    if !supported_fields(group, kind).contains(&field) {
        return None;
    }
    match field {
        "metadata.name" => string_at(object, "/metadata/name"),
        "metadata.namespace" => string_at(object, "/metadata/namespace"),
        "spec.hostNetwork" => Some(bool_at(object, "/spec/hostNetwork")),
        "spec.unschedulable" => Some(bool_at(object, "/spec/unschedulable")),
        "status.podIP" => {
            string_at(object, "/status/podIPs/0/ip").or_else(|| string_at(object, "/status/podIP"))
        }
        "status.replicas" => Some(int_at(object, "/status/replicas")),
        "status.successful" => Some(int_at(object, "/status/succeeded")),
        "source" => string_at(object, "/source/component"),
        // spec.nodeName, status.phase, involvedObject.kind, reason, type, …: the field's path.
        other => {
            let pointer: String = other.split('.').map(|part| format!("/{part}")).collect();
            string_at(object, &pointer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {
                "nodeName": "node-a",
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "hostNetwork": true
            },
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}
        })
    }

    #[test]
    fn equality_and_inequality_terms() {
        let s = FieldSelector::parse("metadata.name=web-1").unwrap();
        assert!(s.matches_object("", "Pod", &pod()));
        let s = FieldSelector::parse("metadata.name==web-2").unwrap();
        assert!(!s.matches_object("", "Pod", &pod()));
        let s = FieldSelector::parse("status.phase!=Succeeded,status.phase!=Failed").unwrap();
        assert!(s.matches_object("", "Pod", &pod()));
    }

    #[test]
    fn the_kubelet_watches_its_own_pods_by_node_name() {
        let s = FieldSelector::parse_for_kind("spec.nodeName=node-a", "", "Pod").unwrap();
        assert!(s.matches_object("", "Pod", &pod()));
        assert!(!s.matches_object("", "Pod", &json!({"spec": {"nodeName": "node-b"}})));
    }

    #[test]
    fn a_missing_field_compares_as_empty_so_the_scheduler_finds_unbound_pods() {
        let unbound = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(unbound.matches_object("", "Pod", &json!({"metadata": {"name": "p"}, "spec": {}})));
        assert!(!unbound.matches_object("", "Pod", &pod()));
        let bound = FieldSelector::parse("spec.nodeName!=").unwrap();
        assert!(bound.matches_object("", "Pod", &pod()));
    }

    #[test]
    fn all_terms_must_hold() {
        let s = FieldSelector::parse("metadata.namespace=default,spec.nodeName=node-a").unwrap();
        assert!(s.matches_object("", "Pod", &pod()));
        let s =
            FieldSelector::parse("metadata.namespace=kube-system,spec.nodeName=node-a").unwrap();
        assert!(!s.matches_object("", "Pod", &pod()));
    }

    #[test]
    fn values_may_escape_commas_equals_and_backslashes() {
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(s.requirements()[0].value, r"a,b=c\d");
        assert!(s.matches(|f| (f == "metadata.name").then(|| r"a,b=c\d".to_string())));
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(escape_value(r"x=1,y\z"), r"x\=1\,y\\z");
        assert_eq!(
            unescape_value(&escape_value(r"x=1,y\z")).unwrap(),
            r"x=1,y\z"
        );
    }

    #[test]
    fn bad_escapes_and_unescaped_characters_are_refused() {
        assert_eq!(
            FieldSelector::parse(r"a=b\c"),
            Err(FieldSelectorError::InvalidEscape(r"\c".into()))
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\"),
            Err(FieldSelectorError::InvalidEscape(r"\".into()))
        );
        assert_eq!(
            FieldSelector::parse("a=b=c"),
            Err(FieldSelectorError::UnescapedCharacter('='))
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: ="
        );
    }

    #[test]
    fn a_term_without_operator_is_refused() {
        let err = FieldSelector::parse("metadata.name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
    }

    #[test]
    fn the_first_operator_splits_and_double_equals_wins_over_equals() {
        let s = FieldSelector::parse("a==b").unwrap();
        assert_eq!(s.requirements()[0].field, "a");
        assert_eq!(s.requirements()[0].operator, FieldOperator::DoubleEquals);
        assert_eq!(s.requirements()[0].value, "b");
        let s = FieldSelector::parse("a!=b").unwrap();
        assert_eq!(s.requirements()[0].operator, FieldOperator::NotEquals);
        assert_eq!(s.to_string(), "a!=b");
        assert_eq!(FieldSelector::parse("a==b").unwrap().to_string(), "a=b");
    }

    #[test]
    fn empty_terms_are_skipped_and_terms_are_sorted() {
        assert!(FieldSelector::parse("").unwrap().is_everything());
        assert!(FieldSelector::parse(",").unwrap().is_everything());
        let s = FieldSelector::parse("spec.nodeName=n,,metadata.name=x,").unwrap();
        assert_eq!(s.to_string(), "metadata.name=x,spec.nodeName=n");
        assert!(FieldSelector::everything().matches(|_| None));
    }

    #[test]
    fn fields_the_kind_does_not_support_are_a_400() {
        let err =
            FieldSelector::parse_for_kind("spec.replicas=3", "apps", "Deployment").unwrap_err();
        assert_eq!(
            err,
            FieldSelectorError::UnsupportedField("spec.replicas".into())
        );
        assert_eq!(err.to_string(), "field label not supported: spec.replicas");
        assert!(FieldSelector::parse_for_kind("spec.nodeName=x", "", "Service").is_err());
        assert!(FieldSelector::parse_for_kind("status.phase=Running", "", "Pod").is_ok());
        // Whitespace is part of the field name, as in Kubernetes.
        assert!(FieldSelector::parse_for_kind("metadata.name =x", "", "Pod").is_err());
    }

    #[test]
    fn every_kind_supports_name_and_namespace() {
        for (group, kind) in [
            ("", "ConfigMap"),
            ("apps", "Deployment"),
            ("", "Node"),
            ("example.com", "Widget"),
        ] {
            let s = FieldSelector::parse_for_kind(
                "metadata.name=x,metadata.namespace=default",
                group,
                kind,
            );
            assert!(s.is_ok(), "{group}/{kind}");
        }
        // kubectl delete --wait / rollout status watch a single object by name.
        let s = FieldSelector::parse_for_kind("metadata.name=web", "apps", "Deployment").unwrap();
        assert_eq!(s.requires_exact_match("metadata.name"), Some("web"));
        assert_eq!(s.requires_exact_match("metadata.namespace"), None);
        let cm = json!({"metadata": {"name": "web", "namespace": "default"}});
        assert!(s.matches_object("apps", "Deployment", &cm));
    }

    #[test]
    fn cluster_scoped_objects_have_an_empty_namespace() {
        let node = json!({"metadata": {"name": "node-a"}, "spec": {}});
        assert!(
            FieldSelector::parse("metadata.namespace=")
                .unwrap()
                .matches_object("", "Node", &node)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=default")
                .unwrap()
                .matches_object("", "Node", &node)
        );
    }

    #[test]
    fn pod_fields() {
        let p = pod();
        let get = |f: &str| object_field("", "Pod", &p, f);
        assert_eq!(get("spec.restartPolicy").as_deref(), Some("Always"));
        assert_eq!(
            get("spec.schedulerName").as_deref(),
            Some("default-scheduler")
        );
        assert_eq!(get("spec.serviceAccountName").as_deref(), Some("default"));
        assert_eq!(get("spec.hostNetwork").as_deref(), Some("true"));
        assert_eq!(get("status.phase").as_deref(), Some("Running"));
        assert_eq!(get("status.podIP").as_deref(), Some("10.244.1.5"));
        assert_eq!(get("status.nominatedNodeName"), None);
        assert_eq!(get("spec.containers"), None, "not a selectable field");
        let bare = json!({"metadata": {"name": "p"}, "status": {"podIP": "10.0.0.1"}});
        assert_eq!(
            object_field("", "Pod", &bare, "status.podIP").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            object_field("", "Pod", &bare, "spec.hostNetwork").as_deref(),
            Some("false")
        );
    }

    #[test]
    fn event_fields() {
        let event = json!({
            "metadata": {"name": "web-1.17f", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default",
                               "uid": "u-1", "apiVersion": "v1", "fieldPath": "spec.containers{web}"},
            "reason": "Scheduled",
            "type": "Normal",
            "source": {"component": "default-scheduler"},
            "reportingComponent": "default-scheduler"
        });
        let s = FieldSelector::parse_for_kind(
            "involvedObject.kind=Pod,involvedObject.name=web-1,involvedObject.namespace=default,\
             involvedObject.uid=u-1,reason=Scheduled,type=Normal,source=default-scheduler",
            "",
            "Event",
        )
        .unwrap();
        assert!(s.matches_object("", "Event", &event));
        assert_eq!(
            object_field("", "Event", &event, "involvedObject.fieldPath").as_deref(),
            Some("spec.containers{web}")
        );
        assert!(
            !FieldSelector::parse("type=Warning")
                .unwrap()
                .matches_object("", "Event", &event)
        );
    }

    #[test]
    fn node_unschedulable_reads_as_true_or_false() {
        let cordoned = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        let schedulable = json!({"metadata": {"name": "n"}, "spec": {}});
        let s = FieldSelector::parse_for_kind("spec.unschedulable=false", "", "Node").unwrap();
        assert!(s.matches_object("", "Node", &schedulable));
        assert!(!s.matches_object("", "Node", &cordoned));
        let s = FieldSelector::parse("spec.unschedulable=true").unwrap();
        assert!(s.matches_object("", "Node", &cordoned));
    }

    #[test]
    fn secret_type_namespace_phase_and_counts() {
        let secret =
            json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"});
        let s =
            FieldSelector::parse_for_kind("type=kubernetes.io/service-account-token", "", "Secret")
                .unwrap();
        assert!(s.matches_object("", "Secret", &secret));
        assert!(FieldSelector::parse_for_kind("type=x", "", "ConfigMap").is_err());

        let ns = json!({"metadata": {"name": "dev"}, "status": {"phase": "Terminating"}});
        let s = FieldSelector::parse_for_kind("status.phase=Terminating", "", "Namespace").unwrap();
        assert!(s.matches_object("", "Namespace", &ns));

        let rs = json!({"metadata": {"name": "r"}, "status": {"replicas": 3}});
        assert!(
            FieldSelector::parse_for_kind("status.replicas=3", "apps", "ReplicaSet")
                .unwrap()
                .matches_object("apps", "ReplicaSet", &rs)
        );
        let job = json!({"metadata": {"name": "j"}, "status": {}});
        assert!(
            FieldSelector::parse_for_kind("status.successful=0", "batch", "Job")
                .unwrap()
                .matches_object("batch", "Job", &job)
        );
    }
}
