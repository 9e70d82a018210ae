//! Object names and the other identifier formats of the Kubernetes API (apimachinery
//! `pkg/util/validation`): DNS-1123 subdomains and labels, DNS-1035 labels, qualified names (label
//! and annotation keys) and label values, which rule each kind's `metadata.name` follows, and
//! `metadata.generateName`.
//!
//! Error messages are the ones the Kubernetes API server answers with, so clients and humans see
//! the same text they would see against a real cluster.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Longest DNS-1123 (and DNS-1035) label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Longest name part of a qualified name, and longest label value.
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Longest CronJob name: the Jobs it creates append `-<11 digits>` and must still fit a label.
pub const CRONJOB_NAME_MAX_LENGTH: usize = 52;

/// Length of the random suffix `generateName` appends.
pub const GENERATED_SUFFIX_LENGTH: usize = 5;
/// Longest name `generate_name` produces.
pub const GENERATED_NAME_MAX_LENGTH: usize = 63;
/// Longest prefix `generate_name` keeps.
pub const GENERATE_NAME_MAX_PREFIX: usize = GENERATED_NAME_MAX_LENGTH - GENERATED_SUFFIX_LENGTH;

/// The alphabet of generated suffixes (apimachinery `util/rand`): no vowels, so no words, and no
/// characters that are easily confused (0/o, 1/l, 3/e).
pub const GENERATED_SUFFIX_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// A name or identifier that breaks a Kubernetes format rule. `Display` gives the API server's
/// wording, without the field path (`metadata.name: Invalid value: ...` is added by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Longer than the format allows: `must be no more than 63 characters`.
    #[error("must be no more than {max} characters")]
    TooLong { max: usize },
    /// Does not match the format's pattern; the message names the rule, examples and regex.
    #[error("{0}")]
    Format(String),
    /// A qualified name's part is empty: `prefix part must be non-empty`.
    #[error("{part} part must be non-empty")]
    EmptyPart { part: &'static str },
    /// A qualified name's part is wrong; `message` is the part's own error.
    #[error("{part} part {message}")]
    Part { part: &'static str, message: String },
    /// Several errors at once (a value can be both too long and malformed); joined with `; `.
    #[error("{}", join(.0))]
    Several(Vec<NameError>),
}

fn join(errors: &[NameError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// apimachinery `RegexError`: the message, then the examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = String::from(msg);
    if examples.is_empty() {
        out.push_str(" (regex used for validation is '");
    } else {
        out.push_str(" (e.g. ");
        for (i, example) in examples.iter().enumerate() {
            if i > 0 {
                out.push_str(" or ");
            }
            out.push('\'');
            out.push_str(example);
            out.push_str("', ");
        }
        out.push_str("regex used for validation is '");
    }
    out.push_str(fmt);
    out.push_str("')");
    out
}

fn collect(errors: Vec<NameError>) -> Result<(), NameError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors
            .into_iter()
            .next()
            .unwrap_or(NameError::Several(Vec::new()))),
        _ => Err(NameError::Several(errors)),
    }
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            is_lower_alnum(first)
                && is_lower_alnum(last)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1035_label(s: &str) -> bool {
    matches_dns1123_label(s) && s.as_bytes().first().is_some_and(|c| c.is_ascii_lowercase())
}

/// Labels joined by dots.
fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            is_alnum(first)
                && is_alnum(last)
                && b.iter()
                    .all(|&c| is_alnum(c) || c == b'-' || c == b'_' || c == b'.')
        }
        _ => false,
    }
}

/// Checks a DNS-1123 label (RFC 1123): at most 63 characters, lower case alphanumerics and `-`,
/// starting and ending with an alphanumeric. Namespaces are named this way.
pub fn validate_dns1123_label(value: &str) -> Result<(), NameError> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errors.push(NameError::TooLong {
            max: DNS1123_LABEL_MAX_LENGTH,
        });
    }
    if !matches_dns1123_label(value) {
        errors.push(NameError::Format(regex_error(
            DNS1123_LABEL_MSG,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        )));
    }
    collect(errors)
}

/// Checks a DNS-1123 subdomain: at most 253 characters, DNS-1123 labels joined by `.`. Most
/// objects are named this way.
pub fn validate_dns1123_subdomain(value: &str) -> Result<(), NameError> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errors.push(NameError::TooLong {
            max: DNS1123_SUBDOMAIN_MAX_LENGTH,
        });
    }
    if !matches_dns1123_subdomain(value) {
        errors.push(NameError::Format(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        )));
    }
    collect(errors)
}

/// Checks a DNS-1035 label (RFC 1035): like a DNS-1123 label but starting with a letter. Services
/// are named this way (their name becomes a DNS label and an environment variable prefix).
pub fn validate_dns1035_label(value: &str) -> Result<(), NameError> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errors.push(NameError::TooLong {
            max: DNS1123_LABEL_MAX_LENGTH,
        });
    }
    if !matches_dns1035_label(value) {
        errors.push(NameError::Format(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        )));
    }
    collect(errors)
}

/// Checks a qualified name: label keys, annotation keys, finalizers. An optional DNS-1123
/// subdomain prefix and `/`, then a name of at most 63 characters of `[A-Za-z0-9-_.]` that starts
/// and ends with an alphanumeric (`app`, `app.kubernetes.io/name`).
pub fn validate_qualified_name(value: &str) -> Result<(), NameError> {
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err(NameError::EmptyPart { part: "prefix" });
            }
            if let Err(e) = validate_dns1123_subdomain(prefix) {
                return Err(NameError::Part {
                    part: "prefix",
                    message: e.to_string(),
                });
            }
            *name
        }
        _ => {
            return Err(NameError::Format(format!(
                "{} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    &format!("a qualified name {QUALIFIED_NAME_MSG}"),
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"],
                )
            )));
        }
    };
    if name.is_empty() {
        return Err(NameError::EmptyPart { part: "name" });
    }
    let mut errors = Vec::new();
    if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errors.push(NameError::Part {
            part: "name",
            message: NameError::TooLong {
                max: QUALIFIED_NAME_MAX_LENGTH,
            }
            .to_string(),
        });
    }
    if !matches_qualified_name_part(name) {
        errors.push(NameError::Part {
            part: "name",
            message: regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"],
            ),
        });
    }
    collect(errors)
}

/// Checks a label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]` that start and end
/// with an alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), NameError> {
    let mut errors = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errors.push(NameError::TooLong {
            max: LABEL_VALUE_MAX_LENGTH,
        });
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errors.push(NameError::Format(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        )));
    }
    collect(errors)
}

/// The rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameRule {
    /// DNS-1123 subdomain, at most 253 characters: most kinds.
    Dns1123Subdomain,
    /// DNS-1123 label, at most 63 characters: namespaces.
    Dns1123Label,
    /// DNS-1035 label (starts with a letter), at most 63 characters: services.
    Dns1035Label,
    /// DNS-1123 subdomain of at most `max` characters: CronJobs (52), whose Jobs add a suffix.
    Dns1123SubdomainMax(usize),
    /// Checked by the kind's own validation: IPAddresses, named by an address (upstream's
    /// ValidateIPAddressName; IPv6 names have colons).
    OwnRule,
}

impl NameRule {
    /// The rule for a kind's names. Unknown kinds (custom resources) use DNS-1123 subdomains.
    pub fn for_kind(group: &str, kind: &str) -> NameRule {
        match (group, kind) {
            ("", "Namespace") => NameRule::Dns1123Label,
            ("", "Service") => NameRule::Dns1035Label,
            ("batch", "CronJob") => NameRule::Dns1123SubdomainMax(CRONJOB_NAME_MAX_LENGTH),
            ("networking.k8s.io", "IPAddress") => NameRule::OwnRule,
            _ => NameRule::Dns1123Subdomain,
        }
    }

    /// Checks a full name.
    pub fn validate(self, name: &str) -> Result<(), NameError> {
        match self {
            NameRule::Dns1123Subdomain => validate_dns1123_subdomain(name),
            NameRule::Dns1123Label => validate_dns1123_label(name),
            NameRule::Dns1035Label => validate_dns1035_label(name),
            NameRule::OwnRule => Ok(()),
            NameRule::Dns1123SubdomainMax(max) => {
                let mut errors = Vec::new();
                if name.len() > max {
                    errors.push(NameError::TooLong { max });
                }
                // The subdomain's own 253-character limit is implied by the shorter one.
                let subdomain = match validate_dns1123_subdomain(name) {
                    Ok(()) => Vec::new(),
                    Err(NameError::Several(more)) => more,
                    Err(e) => vec![e],
                };
                errors.extend(
                    subdomain
                        .into_iter()
                        .filter(|e| !matches!(e, NameError::TooLong { .. })),
                );
                collect(errors)
            }
        }
    }

    /// Checks a `metadata.generateName` prefix: as a name, except that it may end with `-` (the
    /// random suffix follows it). Like apimachinery's `maskTrailingDash`.
    pub fn validate_prefix(self, prefix: &str) -> Result<(), NameError> {
        if prefix.len() > 1 && prefix.ends_with('-') {
            let masked = format!("{}a", &prefix[..prefix.len() - 1]);
            self.validate(&masked)
        } else {
            self.validate(prefix)
        }
    }
}

/// Checks `metadata.name` for a kind.
pub fn validate_name(group: &str, kind: &str, name: &str) -> Result<(), NameError> {
    NameRule::for_kind(group, kind).validate(name)
}

/// The name the API server gives an object created with `metadata.generateName: prefix`: the
/// prefix, cut to 58 bytes, then 5 random characters from [`GENERATED_SUFFIX_ALPHABET`]. The
/// caller validates the result with the kind's rule and retries on a name conflict, as the API
/// server does.
pub fn generate_name(prefix: &str) -> String {
    generate_name_with(prefix, random_u64())
}

/// [`generate_name`] with the randomness given: the same `random` gives the same suffix.
pub fn generate_name_with(prefix: &str, mut random: u64) -> String {
    let mut end = prefix.len().min(GENERATE_NAME_MAX_PREFIX);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    let alphabet = GENERATED_SUFFIX_ALPHABET.as_bytes();
    let base = alphabet.len() as u64;
    let mut name = String::with_capacity(end + GENERATED_SUFFIX_LENGTH);
    name.push_str(&prefix[..end]);
    for _ in 0..GENERATED_SUFFIX_LENGTH {
        // `random % base` is always a valid index; `get` keeps this free of panics anyway.
        let c = alphabet
            .get((random % base) as usize)
            .copied()
            .unwrap_or(b'x');
        name.push(char::from(c));
        random /= base;
    }
    name
}

/// 64 random bits from the standard library: `RandomState` is seeded from the OS once per thread
/// and its keys change with every instance; a counter and the clock make every call different.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

    #[test]
    fn subdomains_accept_dotted_lowercase_names() {
        for name in [
            "a",
            "nginx",
            "nginx-7c5ddbdf54",
            "kube-dns.v1",
            "0abc",
            "a.b.c",
            "a-b.c-d",
        ] {
            assert_eq!(validate_dns1123_subdomain(name), Ok(()), "{name}");
        }
        assert_eq!(validate_dns1123_subdomain(&"a".repeat(253)), Ok(()));
    }

    #[test]
    fn subdomains_reject_uppercase_underscores_and_bad_edges_with_the_api_message() {
        for name in [
            "", "Nginx", "my_app", "-a", "a-", "a..b", ".a", "a.", "a b", "ä",
        ] {
            let err = validate_dns1123_subdomain(name).unwrap_err();
            assert_eq!(err.to_string(), SUBDOMAIN_MSG, "{name:?}");
        }
    }

    #[test]
    fn subdomains_longer_than_253_characters_are_rejected() {
        let err = validate_dns1123_subdomain(&"a".repeat(254)).unwrap_err();
        assert_eq!(err, NameError::TooLong { max: 253 });
        assert_eq!(err.to_string(), "must be no more than 253 characters");
    }

    #[test]
    fn a_name_both_too_long_and_malformed_reports_both() {
        let err = validate_dns1123_label(&"A".repeat(64)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("must be no more than 63 characters; {LABEL_MSG}")
        );
    }

    #[test]
    fn labels_have_no_dots_and_at_most_63_characters() {
        assert_eq!(validate_dns1123_label("kube-system"), Ok(()));
        assert_eq!(validate_dns1123_label("1abc"), Ok(()));
        assert_eq!(validate_dns1123_label(&"a".repeat(63)), Ok(()));
        assert_eq!(
            validate_dns1123_label("a.b").unwrap_err().to_string(),
            LABEL_MSG
        );
        assert_eq!(
            validate_dns1123_label(&"a".repeat(64)).unwrap_err(),
            NameError::TooLong { max: 63 }
        );
    }

    #[test]
    fn dns1035_labels_must_start_with_a_letter() {
        assert_eq!(validate_dns1035_label("my-svc"), Ok(()));
        assert_eq!(
            validate_dns1035_label("1svc").unwrap_err().to_string(),
            DNS1035_MSG
        );
        assert_eq!(
            validate_dns1035_label("my.svc").unwrap_err().to_string(),
            DNS1035_MSG
        );
    }

    #[test]
    fn each_kind_uses_its_name_rule() {
        assert_eq!(NameRule::for_kind("", "Namespace"), NameRule::Dns1123Label);
        assert_eq!(NameRule::for_kind("", "Service"), NameRule::Dns1035Label);
        assert_eq!(NameRule::for_kind("", "Pod"), NameRule::Dns1123Subdomain);
        assert_eq!(
            NameRule::for_kind("apps", "Deployment"),
            NameRule::Dns1123Subdomain
        );
        assert_eq!(
            NameRule::for_kind("example.com", "Widget"),
            NameRule::Dns1123Subdomain
        );
        // A pod may have dots in its name, a namespace may not.
        assert_eq!(validate_name("", "Pod", "web.v2"), Ok(()));
        assert!(validate_name("", "Namespace", "web.v2").is_err());
        assert!(validate_name("", "Service", "9lives").is_err());
        assert_eq!(validate_name("", "ConfigMap", "kube-root-ca.crt"), Ok(()));
    }

    #[test]
    fn cronjob_names_are_limited_to_52_characters() {
        assert_eq!(validate_name("batch", "CronJob", &"c".repeat(52)), Ok(()));
        let err = validate_name("batch", "CronJob", &"c".repeat(53)).unwrap_err();
        assert_eq!(err.to_string(), "must be no more than 52 characters");
        let err = validate_name("batch", "CronJob", &"C".repeat(53)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("must be no more than 52 characters; {SUBDOMAIN_MSG}")
        );
        let err = validate_name("batch", "CronJob", &"c".repeat(300)).unwrap_err();
        assert_eq!(err, NameError::TooLong { max: 52 });
    }

    #[test]
    fn generate_name_prefixes_may_end_with_a_dash() {
        let rule = NameRule::for_kind("", "Pod");
        assert_eq!(rule.validate_prefix("web-"), Ok(()));
        assert!(rule.validate("web-").is_err());
        assert!(rule.validate_prefix("Web-").is_err());
        assert!(rule.validate_prefix("-").is_err());
    }

    #[test]
    fn qualified_names_take_an_optional_subdomain_prefix() {
        for key in [
            "app",
            "App_1",
            "app.kubernetes.io/name",
            "example.com/My.Key",
            "a/b",
        ] {
            assert_eq!(validate_qualified_name(key), Ok(()), "{key}");
        }
        assert_eq!(
            validate_qualified_name("/name").unwrap_err().to_string(),
            "prefix part must be non-empty"
        );
        assert_eq!(
            validate_qualified_name("example.com/")
                .unwrap_err()
                .to_string(),
            "name part must be non-empty"
        );
        assert_eq!(
            validate_qualified_name("").unwrap_err().to_string(),
            "name part must be non-empty"
        );
        assert!(
            validate_qualified_name("Example.com/name")
                .unwrap_err()
                .to_string()
                .starts_with("prefix part a lowercase RFC 1123 subdomain")
        );
        assert_eq!(
            validate_qualified_name("-app").unwrap_err().to_string(),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert!(
            validate_qualified_name("a/b/c")
                .unwrap_err()
                .to_string()
                .ends_with(
                    "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                )
        );
        assert_eq!(
            validate_qualified_name(&"k".repeat(64))
                .unwrap_err()
                .to_string(),
            "name part must be no more than 63 characters"
        );
    }

    #[test]
    fn label_values_may_be_empty() {
        for value in ["", "v1", "My_Value-1.0", &"v".repeat(63)] {
            assert_eq!(validate_label_value(value), Ok(()), "{value}");
        }
        assert!(validate_label_value("-v").is_err());
        assert!(validate_label_value("a b").is_err());
        assert!(validate_label_value("a/b").is_err());
        assert_eq!(
            validate_label_value(&"v".repeat(64)).unwrap_err(),
            NameError::TooLong { max: 63 }
        );
        assert!(
            validate_label_value("!")
                .unwrap_err()
                .to_string()
                .starts_with(
                    "a valid label must be an empty string or consist of alphanumeric characters"
                )
        );
    }

    #[test]
    fn generated_names_append_five_characters_from_the_kubernetes_alphabet() {
        let name = generate_name("web-");
        assert_eq!(name.len(), 9);
        assert!(name.starts_with("web-"));
        assert!(
            name[4..]
                .chars()
                .all(|c| GENERATED_SUFFIX_ALPHABET.contains(c))
        );
        assert_eq!(validate_name("", "Pod", &name), Ok(()));
    }

    #[test]
    fn generated_names_are_at_most_63_characters() {
        let name = generate_name(&"p".repeat(100));
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&"p".repeat(58)));
        // A prefix is never cut inside a character.
        let name = generate_name(&format!("{}é", "p".repeat(57)));
        assert_eq!(name.len(), 57 + 5);
    }

    #[test]
    fn the_same_randomness_gives_the_same_suffix() {
        assert_eq!(generate_name_with("x-", 0), "x-bbbbb");
        assert_eq!(generate_name_with("x-", 1), "x-cbbbb");
        assert_eq!(
            generate_name_with("x-", 12345),
            generate_name_with("x-", 12345)
        );
    }

    #[test]
    fn consecutive_generated_names_differ() {
        let names: std::collections::BTreeSet<String> =
            (0..200).map(|_| generate_name("pod-")).collect();
        // 27^5 ≈ 14 million suffixes: 200 draws should not collide more than very rarely.
        assert!(names.len() >= 199, "{} distinct names", names.len());
    }
}
