//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! decoded into the JSON the server would have received as `application/json`.
//!
//! client-go's typed clientset (and so kubectl's `create namespace|configmap|secret|deployment|
//! job|cronjob|service|quota`, `autoscale`, `debug`, `drain`, `create token`, ...) sends built-in
//! objects as protobuf, and it never falls back to JSON when the server answers 415 (its fallback
//! covers CBOR only). So the server has to read protobuf.
//!
//! The body is the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message: `typeMeta`
//! (apiVersion = 1, kind = 2) = 1, `raw` (the object's own message) = 2, `contentEncoding` = 3,
//! `contentType` = 4. The object's message is read with a small wire-format reader and a
//! hand-written schema table (type → field number → JSON name, kind, cardinality), with field
//! numbers from the upstream `generated.proto` files (kubernetes/api, kubernetes/apimachinery)
//! and JSON names as in the Kubernetes OpenAPI of v1.33.
//!
//! Go's protobuf marshalling writes every non-pointer field, even when it is empty, while its JSON
//! marshalling leaves those out (`omitempty`). So an empty string, `false` or `0` of a plain
//! field ([`Card::One`]) is dropped, as the JSON would not have had it; a pointer field
//! ([`Card::Keep`]: `replicas`, `backoffLimit`, `automountServiceAccountToken`, ...) is only on
//! the wire when it is set, and its zero is kept. A zero `metav1.Time` is dropped (JSON `null`).
//!
//! Nothing is ever dropped silently: a field number the table does not know, a type it does not
//! cover, or an embedded object it cannot read is a [`DecodeError::Unsupported`] (415, naming the
//! type and the field number and saying to send JSON), so no half-decoded object is stored. A body
//! without the magic, cut short or otherwise not valid protobuf is [`DecodeError::Malformed`]
//! (400).

mod decode;
mod schema;
mod wire;

use serde_json::{Map, Value};

use crate::status::ApiError;
pub use decode::go_duration;
use decode::{Cx, decode_message, unknown_field};
use schema::schema_for;
pub use schema::{Card, Field, Msg, Ty};
use wire::{Reader, utf8};

/// The media type of Kubernetes' protobuf encoding.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The first bytes of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// How deep `runtime.RawExtension`s holding protobuf may nest.
const MAX_NESTING: usize = 4;

/// What the client should do instead.
const SEND_JSON: &str = "send the object as JSON instead (Content-Type: application/json), e.g. \
                         `kubectl create ... --dry-run=client -o json | kubectl create -f -`";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a Kubernetes protobuf body: no magic, cut short, or not valid protobuf (400).
    #[error("{0}")]
    Malformed(String),
    /// A valid body holding a type, field or encoding this server cannot decode (415).
    #[error("{0}")]
    Unsupported(String),
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        match e {
            DecodeError::Malformed(m) => {
                ApiError::bad_request(format!("error decoding the protobuf body: {m}"))
            }
            DecodeError::Unsupported(m) => {
                let mut err = ApiError::unsupported_media_type(CONTENT_TYPE);
                err.message = m;
                err
            }
        }
    }
}

fn malformed(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(what.to_string())
}

/// Decodes a whole request body: magic, `runtime.Unknown` envelope, then the object.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    decode_nested(body, 0)
}

fn decode_nested(body: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(malformed(
            "the body does not start with the Kubernetes protobuf magic number \"k8s\\0\"",
        ));
    };
    let (mut api_version, mut kind) = (String::new(), String::new());
    let (mut raw, mut encoding, mut content_type): (&[u8], String, String) =
        (&[], String::new(), String::new());
    let mut r = Reader::new(rest);
    while let Some((num, wire)) = r.field()? {
        let bytes = wire.bytes("runtime.Unknown", num)?;
        match num {
            1 => {
                let mut t = Reader::new(bytes);
                while let Some((num, wire)) = t.field()? {
                    let value = utf8(wire.bytes("runtime.TypeMeta", num)?)?;
                    match num {
                        1 => api_version = value,
                        2 => kind = value,
                        _ => return Err(unknown_field("runtime.TypeMeta", num, &[])),
                    }
                }
            }
            2 => raw = bytes,
            3 => encoding = utf8(bytes)?,
            4 => content_type = utf8(bytes)?,
            _ => return Err(unknown_field("runtime.Unknown", num, &[])),
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::Unsupported(format!(
            "the protobuf body has content encoding {encoding:?}, which this server cannot \
             decode; {SEND_JSON}"
        )));
    }
    if !content_type.is_empty() && content_type != CONTENT_TYPE {
        return Err(DecodeError::Unsupported(format!(
            "the protobuf envelope holds {content_type:?}, which this server cannot decode; \
             {SEND_JSON}"
        )));
    }
    if kind.is_empty() {
        return Err(malformed("the protobuf envelope names no kind"));
    }
    let Some(schema) = schema_for(&api_version, &kind) else {
        return Err(DecodeError::Unsupported(format!(
            "this server cannot decode {api_version} {kind} from protobuf; {SEND_JSON}"
        )));
    };
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    let mut cx = Cx {
        path: Vec::new(),
        depth,
    };
    decode_message(schema, raw, &mut obj, &mut cx)?;
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests;
