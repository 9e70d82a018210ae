//! The CNI error object and its well-known codes.
//!
//! A plugin answers every failure with this object on stdout (libcni reads stdout, whatever
//! the spec's prose says) and a non-zero exit status.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Version;

/// An error code. Codes below 100 are reserved by the specification; 100 and above are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Code(u32);

impl Code {
    /// libcni's "unknown" (not in the specification's table).
    pub const UNKNOWN: Code = Code(0);
    pub const INCOMPATIBLE_VERSION: Code = Code(1);
    pub const UNSUPPORTED_FIELD: Code = Code(2);
    /// The container is unknown or gone: the runtime need not clean up after it.
    pub const UNKNOWN_CONTAINER: Code = Code(3);
    pub const INVALID_ENVIRONMENT: Code = Code(4);
    pub const IO_FAILURE: Code = Code(5);
    pub const DECODING_FAILURE: Code = Code(6);
    pub const INVALID_NETWORK_CONFIG: Code = Code(7);
    /// libcni's "invalid netns", e.g. CNI_NETNS is the plugin's own namespace.
    pub const INVALID_NETNS: Code = Code(8);
    /// Transient: the runtime should try again later.
    pub const TRY_AGAIN_LATER: Code = Code(11);
    /// STATUS: the plugin cannot service ADD now.
    pub const NOT_AVAILABLE: Code = Code(50);
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: Code = Code(51);
    /// libcni's "internal error".
    pub const INTERNAL: Code = Code(999);

    /// A plugin-specific code; the specification leaves 100 and above to plugins.
    pub const fn plugin(n: u32) -> Option<Code> {
        if n >= 100 { Some(Code(n)) } else { None }
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// What the specification says the code means.
    pub fn meaning(self) -> &'static str {
        match self.0 {
            0 => "unknown error",
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            8 => "invalid network namespace",
            11 => "try again later",
            50 => "plugin not available",
            51 => "plugin not available, existing containers may have limited connectivity",
            999 => "internal error",
            n if n >= 100 => "plugin-specific error",
            _ => "reserved error code",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A CNI error: what went wrong (`msg`) and about what (`details`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (CNI code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (CNI code {})", self.msg, self.details, self.code)
        }
    }
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn incompatible_version(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::INCOMPATIBLE_VERSION, msg, details)
    }

    pub fn unsupported_field(key: &str, value: impl fmt::Display) -> Self {
        Error::new(
            Code::UNSUPPORTED_FIELD,
            "unsupported field in network configuration",
            format!("{key}: {value}"),
        )
    }

    pub fn unknown_container(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::UNKNOWN_CONTAINER, msg, details)
    }

    pub fn invalid_env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::INVALID_ENVIRONMENT, msg, details)
    }

    pub fn io(msg: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::new(Code::IO_FAILURE, msg, err.to_string())
    }

    pub fn decode(msg: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::new(Code::DECODING_FAILURE, msg, err.to_string())
    }

    pub fn invalid_config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::INVALID_NETWORK_CONFIG, msg, details)
    }

    pub fn try_again_later(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::TRY_AGAIN_LATER, msg, details)
    }

    pub fn not_available(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::NOT_AVAILABLE, msg, details)
    }

    pub fn internal(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::new(Code::INTERNAL, msg, details)
    }

    /// The error object as a plugin prints it, in the version the request asked for.
    pub fn to_json(&self, version: Version) -> serde_json::Value {
        let wire = Wire {
            cni_version: Some(version.to_string()),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        };
        serde_json::to_value(wire).unwrap_or(serde_json::Value::Null)
    }

    /// Parses an error object printed by another plugin.
    pub fn from_json(bytes: &[u8]) -> Result<Error, serde_json::Error> {
        let w: Wire = serde_json::from_slice(bytes)?;
        Ok(Error {
            code: w.code,
            msg: w.msg,
            details: w.details,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    cni_version: Option<String>,
    code: Code,
    #[serde(default)]
    msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_spec_shape() {
        let e = Error::invalid_config("no subnet", "ipam.subnet is required");
        let v = e.to_json(Version::V1_0_0);
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0", "code": 7, "msg": "no subnet",
                "details": "ipam.subnet is required"
            })
        );
    }

    #[test]
    fn empty_details_are_left_out() {
        let v = Error::new(Code::TRY_AGAIN_LATER, "busy", "").to_json(Version::V1_1_0);
        assert!(v.get("details").is_none());
    }

    #[test]
    fn parses_error_objects_of_other_plugins() {
        let e = Error::from_json(br#"{"code":999,"msg":"failed to open netns"}"#).unwrap();
        assert_eq!(e.code, Code::INTERNAL);
        assert_eq!(e.msg, "failed to open netns");
        assert!(Error::from_json(b"not json").is_err());
    }

    #[test]
    fn plugin_codes_start_at_100() {
        assert_eq!(Code::plugin(99), None);
        assert_eq!(Code::plugin(100).map(Code::get), Some(100));
    }
}
