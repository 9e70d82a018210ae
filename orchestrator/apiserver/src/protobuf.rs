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

use base64::Engine;
use serde_json::{Map, Value};

use crate::status::ApiError;
use schema::schema_for;

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

// ---------------------------------------------------------------------------------------------
// The schema table's types.

/// The type of a field's value.
#[derive(Clone, Copy)]
pub enum Ty {
    /// `string` → JSON string.
    Str,
    /// `bytes` → base64 string.
    Bytes,
    Bool,
    /// `int32` → number.
    I32,
    /// `int64` → number.
    I64,
    /// A message of the table → object.
    M(&'static Msg),
    /// `metav1.Time` {seconds = 1, nanos = 2} → RFC 3339, second precision.
    Time,
    /// `metav1.MicroTime` {seconds = 1, nanos = 2} → RFC 3339, microsecond precision.
    MicroTime,
    /// `metav1.Duration` {duration = 1, nanoseconds} → Go duration string (`1h2m3s`).
    Duration,
    /// `resource.Quantity` {string = 1} → the string.
    Quantity,
    /// `intstr.IntOrString` {type = 1, intVal = 2, strVal = 3} → number or string.
    IntOrString,
    /// `runtime.RawExtension` / `metav1.FieldsV1` {raw = 1} → the embedded JSON (or embedded
    /// Kubernetes protobuf, decoded).
    Raw,
}

/// How many values a field holds, and how its zero is treated.
#[derive(Clone, Copy)]
pub enum Card {
    /// A plain Go field: an empty string, `false`, `0` is left out, as Go's JSON would.
    One,
    /// A Go pointer (or a field without `omitempty`): on the wire only when set, zero kept.
    Keep,
    /// `repeated` → array.
    Rep,
    /// `map<string, V>` → object.
    Map,
    /// An embedded struct whose fields appear in the parent's JSON (`json:",inline"`).
    Inline,
}

/// One field of a message.
pub struct Field {
    pub num: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub card: Card,
}

/// One message type: `"core/v1 PodSpec"` and its fields.
pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Msg {
    pub const fn new(name: &'static str, fields: &'static [Field]) -> Msg {
        Msg { name, fields }
    }

    fn field(&self, num: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.num == num)
    }
}

const fn f(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::One,
    }
}

const fn keep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Keep,
    }
}

const fn rep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Rep,
    }
}

/// `map<string, V>` with `V` the value type.
const fn map(num: u32, name: &'static str, value: Ty) -> Field {
    Field {
        num,
        name,
        ty: value,
        card: Card::Map,
    }
}

const fn inline(num: u32, msg: &'static Msg) -> Field {
    Field {
        num,
        name: "",
        ty: Ty::M(msg),
        card: Card::Inline,
    }
}

// ---------------------------------------------------------------------------------------------
// The wire format.

/// One field's value as it is on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Len(&'a [u8]),
    Fixed32,
}

impl<'a> Wire<'a> {
    fn name(self) -> &'static str {
        match self {
            Wire::Varint(_) => "varint",
            Wire::Fixed64 => "fixed64",
            Wire::Len(_) => "length-delimited",
            Wire::Fixed32 => "fixed32",
        }
    }

    fn bytes(self, msg: &str, num: u32) -> Result<&'a [u8], DecodeError> {
        match self {
            Wire::Len(b) => Ok(b),
            other => Err(wrong_wire(msg, num, other)),
        }
    }

    fn varint(self, msg: &str, num: u32) -> Result<u64, DecodeError> {
        match self {
            Wire::Varint(v) => Ok(v),
            other => Err(wrong_wire(msg, num, other)),
        }
    }
}

fn wrong_wire(msg: &str, num: u32, wire: Wire<'_>) -> DecodeError {
    malformed(format!(
        "field {num} of {msg} has the wrong wire type ({})",
        wire.name()
    ))
}

/// Reads fields off a message's bytes; every value is read whole, so skipping is reading.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(malformed("the body ends inside a varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(malformed("a varint is longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(malformed("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| {
                malformed(format!(
                    "a value of {n} bytes runs past the end of its message ({left} bytes left)"
                ))
            })?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next field number and value, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
        if self.done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3)
            .ok()
            .filter(|n| (1..=(1 << 29) - 1).contains(n))
            .ok_or_else(|| malformed(format!("invalid field number {}", key >> 3)))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = self.varint()?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            t => return Err(malformed(format!("field {num} has wire type {t}"))),
        };
        Ok(Some((num, wire)))
    }
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string is not valid UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Messages to JSON.

/// Decoding state: where we are (for messages) and how deep embedded objects nest.
struct Cx {
    path: Vec<&'static str>,
    depth: usize,
}

impl Cx {
    fn at(&self) -> String {
        if self.path.is_empty() {
            "the object".to_string()
        } else {
            self.path.join(".")
        }
    }
}

fn unknown_field(msg: &str, num: u32, path: &[&str]) -> DecodeError {
    let at = if path.is_empty() {
        String::new()
    } else {
        format!(" (at {})", path.join("."))
    };
    DecodeError::Unsupported(format!(
        "the protobuf body has field {num} of {msg}{at}, which this server cannot decode; \
         {SEND_JSON}"
    ))
}

/// Decodes `bytes` as `msg` into `out` (an object, possibly already holding fields: repeated
/// occurrences of a message merge, as in protobuf).
fn decode_message(
    msg: &'static Msg,
    bytes: &[u8],
    out: &mut Map<String, Value>,
    cx: &mut Cx,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        let Some(field) = msg.field(num) else {
            return Err(unknown_field(msg.name, num, &cx.path));
        };
        // An inline struct's fields are the parent's: it adds nothing to the path.
        let named = !field.name.is_empty();
        if named {
            cx.path.push(field.name);
        }
        decode_field(msg, field, wire, out, cx)?;
        if named {
            cx.path.pop();
        }
    }
    Ok(())
}

fn decode_field(
    msg: &'static Msg,
    field: &Field,
    wire: Wire<'_>,
    out: &mut Map<String, Value>,
    cx: &mut Cx,
) -> Result<(), DecodeError> {
    let name = field.name;
    match field.card {
        Card::Inline => {
            let Ty::M(inner) = field.ty else {
                return Err(malformed("an inline field that is not a message"));
            };
            decode_message(inner, wire.bytes(msg.name, field.num)?, out, cx)
        }
        Card::One | Card::Keep => {
            if let (Ty::M(inner), Wire::Len(bytes)) = (field.ty, wire) {
                let slot = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(obj) = slot {
                    decode_message(inner, bytes, obj, cx)?;
                }
                return Ok(());
            }
            let value = decode_value(msg, field, wire, cx)?;
            if matches!(field.card, Card::One) && is_zero(&value) {
                out.remove(name);
            } else {
                out.insert(name.to_string(), value);
            }
            Ok(())
        }
        Card::Rep => {
            let mut items = Vec::new();
            match (field.ty, wire) {
                // Packed numbers and booleans: a run of varints.
                (Ty::Bool | Ty::I32 | Ty::I64, Wire::Len(bytes)) => {
                    let mut r = Reader::new(bytes);
                    while !r.done() {
                        let v = r.varint()?;
                        items.push(scalar(field.ty, v));
                    }
                }
                (Ty::M(inner), Wire::Len(bytes)) => {
                    let mut obj = Map::new();
                    decode_message(inner, bytes, &mut obj, cx)?;
                    items.push(Value::Object(obj));
                }
                _ => items.push(decode_value(msg, field, wire, cx)?),
            }
            let slot = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            if let Value::Array(list) = slot {
                list.extend(items);
            }
            Ok(())
        }
        Card::Map => {
            let entry = wire.bytes(msg.name, field.num)?;
            let (mut key, mut value) = (String::new(), None);
            let mut r = Reader::new(entry);
            while let Some((num, wire)) = r.field()? {
                match num {
                    1 => key = utf8(wire.bytes(msg.name, field.num)?)?,
                    2 => value = Some(decode_value(msg, field, wire, cx)?),
                    _ => return Err(unknown_field("a map entry", num, &cx.path)),
                }
            }
            let value = match (value, field.ty) {
                (Some(v), _) => v,
                (None, Ty::Quantity) => Value::String("0".into()),
                (None, _) => Value::String(String::new()),
            };
            let slot = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(obj) = slot {
                obj.insert(key, value);
            }
            Ok(())
        }
    }
}

fn scalar(ty: Ty, v: u64) -> Value {
    match ty {
        Ty::Bool => Value::Bool(v != 0),
        // int32 on the wire is sign-extended to 64 bits: the low 32 bits are the value.
        Ty::I32 => Value::from(v as i32),
        _ => Value::from(v as i64),
    }
}

/// What Go's JSON leaves out of a plain (`omitempty`) field.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// One value of `field` (for a map, its value type).
fn decode_value(
    msg: &'static Msg,
    field: &Field,
    wire: Wire<'_>,
    cx: &mut Cx,
) -> Result<Value, DecodeError> {
    let num = field.num;
    match field.ty {
        Ty::Str => Ok(Value::String(utf8(wire.bytes(msg.name, num)?)?)),
        Ty::Bytes => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(wire.bytes(msg.name, num)?),
        )),
        Ty::Bool | Ty::I32 | Ty::I64 => Ok(scalar(field.ty, wire.varint(msg.name, num)?)),
        Ty::M(inner) => {
            let mut obj = Map::new();
            decode_message(inner, wire.bytes(msg.name, num)?, &mut obj, cx)?;
            Ok(Value::Object(obj))
        }
        Ty::Time => time(wire.bytes(msg.name, num)?, false, cx),
        Ty::MicroTime => time(wire.bytes(msg.name, num)?, true, cx),
        Ty::Duration => duration(wire.bytes(msg.name, num)?, cx),
        Ty::Quantity => quantity(wire.bytes(msg.name, num)?, cx),
        Ty::IntOrString => int_or_string(wire.bytes(msg.name, num)?, cx),
        Ty::Raw => raw_extension(wire.bytes(msg.name, num)?, cx),
    }
}

// ---------------------------------------------------------------------------------------------
// Well-known types with their own JSON form.

/// `metav1.Time` / `metav1.MicroTime`: zero (both fields 0) is `null`.
fn time(bytes: &[u8], micro: bool, cx: &Cx) -> Result<Value, DecodeError> {
    let name = if micro {
        "meta/v1 MicroTime"
    } else {
        "meta/v1 Time"
    };
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        match num {
            1 => seconds = wire.varint(name, num)? as i64,
            2 => nanos = wire.varint(name, num)? as i32,
            _ => return Err(unknown_field(name, num, &cx.path)),
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    // Go marshals years 0001 to 9999 only.
    if !(-62_135_596_800..=253_402_300_799).contains(&seconds)
        || !(0..1_000_000_000).contains(&nanos)
    {
        return Err(malformed(format!(
            "{name} at {} is out of range ({seconds} s, {nanos} ns)",
            cx.at()
        )));
    }
    let t = jiff::Timestamp::new(seconds, nanos)
        .map_err(|e| malformed(format!("{name} at {}: {e}", cx.at())))?;
    let d = jiff::tz::TimeZone::UTC.to_datetime(t);
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    );
    if micro {
        text.push_str(&format!(".{:06}", nanos / 1000));
    }
    text.push('Z');
    Ok(Value::String(text))
}

/// `metav1.Duration`: nanoseconds, printed as Go's `time.Duration.String()` does.
fn duration(bytes: &[u8], cx: &Cx) -> Result<Value, DecodeError> {
    let mut nanos = 0i64;
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        match num {
            1 => nanos = wire.varint("meta/v1 Duration", num)? as i64,
            _ => return Err(unknown_field("meta/v1 Duration", num, &cx.path)),
        }
    }
    Ok(Value::String(go_duration(nanos)))
}

/// Go's `time.Duration.String()`: `0s`, `1.5µs`, `20ms`, `1m30s`, `1h0m0s`.
pub fn go_duration(nanos: i64) -> String {
    /// `v / 10^prec` and its fraction without trailing zeros (`.5`, or nothing).
    fn split(v: u64, prec: u32) -> (u64, String) {
        let unit = 10u64.pow(prec);
        let frac = v % unit;
        if frac == 0 {
            return (v / unit, String::new());
        }
        let digits = format!("{frac:0width$}", width = prec as usize);
        (v / unit, format!(".{}", digits.trim_end_matches('0')))
    }
    if nanos == 0 {
        return "0s".into();
    }
    let u = nanos.unsigned_abs();
    let text = if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (int, frac) = split(u, prec);
        format!("{int}{frac}{unit}")
    } else {
        let (secs, frac) = split(u, 9);
        let (mins, hours) = (secs / 60, secs / 3600);
        if hours > 0 {
            format!("{hours}h{}m{}{frac}s", mins % 60, secs % 60)
        } else if mins > 0 {
            format!("{mins}m{}{frac}s", secs % 60)
        } else {
            format!("{secs}{frac}s")
        }
    };
    if nanos < 0 { format!("-{text}") } else { text }
}

/// `resource.Quantity`: the string (empty is `"0"`, as Go prints the zero quantity).
fn quantity(bytes: &[u8], cx: &Cx) -> Result<Value, DecodeError> {
    let mut s = String::new();
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        match num {
            1 => s = utf8(wire.bytes("resource.Quantity", num)?)?,
            _ => return Err(unknown_field("resource.Quantity", num, &cx.path)),
        }
    }
    if s.is_empty() {
        s = "0".into();
    }
    Ok(Value::String(s))
}

/// `intstr.IntOrString`: type 0 is the number `intVal`, type 1 the string `strVal`.
fn int_or_string(bytes: &[u8], cx: &Cx) -> Result<Value, DecodeError> {
    const NAME: &str = "intstr.IntOrString";
    let (mut ty, mut int, mut s) = (0i64, 0i32, String::new());
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        match num {
            1 => ty = wire.varint(NAME, num)? as i64,
            2 => int = wire.varint(NAME, num)? as i32,
            3 => s = utf8(wire.bytes(NAME, num)?)?,
            _ => return Err(unknown_field(NAME, num, &cx.path)),
        }
    }
    match ty {
        0 => Ok(Value::from(int)),
        1 => Ok(Value::String(s)),
        other => Err(malformed(format!(
            "{NAME} at {} has type {other} (0 = int, 1 = string)",
            cx.at()
        ))),
    }
}

/// `runtime.RawExtension` / `metav1.FieldsV1`: the embedded JSON, or an embedded Kubernetes
/// protobuf object, decoded. Empty is `null`.
fn raw_extension(bytes: &[u8], cx: &Cx) -> Result<Value, DecodeError> {
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.field()? {
        match num {
            1 => raw = wire.bytes("runtime.RawExtension", num)?,
            _ => return Err(unknown_field("runtime.RawExtension", num, &cx.path)),
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    if raw.starts_with(MAGIC) {
        if cx.depth >= MAX_NESTING {
            return Err(DecodeError::Unsupported(format!(
                "the embedded objects at {} nest deeper than {MAX_NESTING}; {SEND_JSON}",
                cx.at()
            )));
        }
        return decode_nested(raw, cx.depth + 1);
    }
    serde_json::from_slice(raw).map_err(|e| {
        DecodeError::Unsupported(format!(
            "the embedded object at {} is neither JSON nor Kubernetes protobuf ({e}); {SEND_JSON}",
            cx.at()
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// The schema table.

/// The kinds this server decodes and their messages, written from the upstream
/// `generated.proto` files (field numbers) and the v1.33 OpenAPI (JSON names). A message lists
/// every field of v1.33 that the table covers; a field that refers to a type the table does not
/// cover is left out (see the comments), so it is reported, not dropped.
mod schema {
    use super::Ty::{Bool, Bytes, I32, I64, IntOrString, M, MicroTime, Quantity, Raw, Str, Time};
    use super::{Msg, f, inline, keep, map, rep};

    /// The top-level kinds, by apiVersion and kind.
    static KINDS: &[(&str, &str, &Msg)] = &[
        ("v1", "Namespace", &NAMESPACE),
        ("v1", "ConfigMap", &CONFIG_MAP),
        ("v1", "Secret", &SECRET),
        ("v1", "ServiceAccount", &SERVICE_ACCOUNT),
        ("v1", "Service", &SERVICE),
        ("v1", "Pod", &POD),
        ("v1", "Binding", &BINDING),
        ("v1", "ResourceQuota", &RESOURCE_QUOTA),
        ("apps/v1", "Deployment", &DEPLOYMENT),
        ("apps/v1", "ControllerRevision", &CONTROLLER_REVISION),
        ("batch/v1", "Job", &JOB),
        ("batch/v1", "CronJob", &CRON_JOB),
        (
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            &AS2_HORIZONTAL_POD_AUTOSCALER,
        ),
        ("autoscaling/v1", "Scale", &AS1_SCALE),
        ("authentication.k8s.io/v1", "TokenRequest", &TOKEN_REQUEST),
        ("policy/v1", "Eviction", &EVICTION),
        ("coordination.k8s.io/v1", "Lease", &LEASE),
    ];

    pub(super) fn schema_for(api_version: &str, kind: &str) -> Option<&'static Msg> {
        // DeleteOptions is registered in every group version; a client sends its own.
        if kind == "DeleteOptions" {
            return Some(&DELETE_OPTIONS);
        }
        KINDS
            .iter()
            .find(|(v, k, _)| *v == api_version && *k == kind)
            .map(|(_, _, m)| *m)
    }

    // ----- meta/v1: k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto.

    static OBJECT_META: Msg = Msg::new(
        "meta/v1 ObjectMeta",
        &[
            f(1, "name", Str),
            f(2, "generateName", Str),
            f(3, "namespace", Str),
            f(4, "selfLink", Str),
            f(5, "uid", Str),
            f(6, "resourceVersion", Str),
            f(7, "generation", I64),
            f(8, "creationTimestamp", Time),
            f(9, "deletionTimestamp", Time),
            keep(10, "deletionGracePeriodSeconds", I64),
            map(11, "labels", Str),
            map(12, "annotations", Str),
            rep(13, "ownerReferences", M(&OWNER_REFERENCE)),
            rep(14, "finalizers", Str),
            rep(17, "managedFields", M(&MANAGED_FIELDS_ENTRY)),
        ],
    );

    static OWNER_REFERENCE: Msg = Msg::new(
        "meta/v1 OwnerReference",
        &[
            f(1, "kind", Str),
            f(3, "name", Str),
            f(4, "uid", Str),
            f(5, "apiVersion", Str),
            keep(6, "controller", Bool),
            keep(7, "blockOwnerDeletion", Bool),
        ],
    );

    static MANAGED_FIELDS_ENTRY: Msg = Msg::new(
        "meta/v1 ManagedFieldsEntry",
        &[
            f(1, "manager", Str),
            f(2, "operation", Str),
            f(3, "apiVersion", Str),
            f(4, "time", Time),
            f(6, "fieldsType", Str),
            f(7, "fieldsV1", Raw),
            f(8, "subresource", Str),
        ],
    );

    static LABEL_SELECTOR: Msg = Msg::new(
        "meta/v1 LabelSelector",
        &[
            map(1, "matchLabels", Str),
            rep(2, "matchExpressions", M(&LABEL_SELECTOR_REQUIREMENT)),
        ],
    );

    static LABEL_SELECTOR_REQUIREMENT: Msg = Msg::new(
        "meta/v1 LabelSelectorRequirement",
        &[
            f(1, "key", Str),
            f(2, "operator", Str),
            rep(3, "values", Str),
        ],
    );

    static CONDITION: Msg = Msg::new(
        "meta/v1 Condition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(3, "observedGeneration", I64),
            f(4, "lastTransitionTime", Time),
            f(5, "reason", Str),
            f(6, "message", Str),
        ],
    );

    static DELETE_OPTIONS: Msg = Msg::new(
        "meta/v1 DeleteOptions",
        &[
            keep(1, "gracePeriodSeconds", I64),
            f(2, "preconditions", M(&PRECONDITIONS)),
            keep(3, "orphanDependents", Bool),
            keep(4, "propagationPolicy", Str),
            rep(5, "dryRun", Str),
            keep(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool),
        ],
    );

    static PRECONDITIONS: Msg = Msg::new(
        "meta/v1 Preconditions",
        &[keep(1, "uid", Str), keep(2, "resourceVersion", Str)],
    );

    // ----- core/v1: k8s.io/api/core/v1/generated.proto.

    static NAMESPACE: Msg = Msg::new(
        "core/v1 Namespace",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&NAMESPACE_SPEC)),
            f(3, "status", M(&NAMESPACE_STATUS)),
        ],
    );

    static NAMESPACE_SPEC: Msg = Msg::new("core/v1 NamespaceSpec", &[rep(1, "finalizers", Str)]);

    static NAMESPACE_STATUS: Msg = Msg::new(
        "core/v1 NamespaceStatus",
        &[
            f(1, "phase", Str),
            rep(2, "conditions", M(&NAMESPACE_CONDITION)),
        ],
    );

    static NAMESPACE_CONDITION: Msg = Msg::new(
        "core/v1 NamespaceCondition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(4, "lastTransitionTime", Time),
            f(5, "reason", Str),
            f(6, "message", Str),
        ],
    );

    static CONFIG_MAP: Msg = Msg::new(
        "core/v1 ConfigMap",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            map(2, "data", Str),
            map(3, "binaryData", Bytes),
            keep(4, "immutable", Bool),
        ],
    );

    static SECRET: Msg = Msg::new(
        "core/v1 Secret",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            map(2, "data", Bytes),
            f(3, "type", Str),
            map(4, "stringData", Str),
            keep(5, "immutable", Bool),
        ],
    );

    static SERVICE_ACCOUNT: Msg = Msg::new(
        "core/v1 ServiceAccount",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            rep(2, "secrets", M(&OBJECT_REFERENCE)),
            rep(3, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE)),
            keep(4, "automountServiceAccountToken", Bool),
        ],
    );

    static OBJECT_REFERENCE: Msg = Msg::new(
        "core/v1 ObjectReference",
        &[
            f(1, "kind", Str),
            f(2, "namespace", Str),
            f(3, "name", Str),
            f(4, "uid", Str),
            f(5, "apiVersion", Str),
            f(6, "resourceVersion", Str),
            f(7, "fieldPath", Str),
        ],
    );

    static LOCAL_OBJECT_REFERENCE: Msg =
        Msg::new("core/v1 LocalObjectReference", &[f(1, "name", Str)]);

    static SERVICE: Msg = Msg::new(
        "core/v1 Service",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&SERVICE_SPEC)),
            f(3, "status", M(&SERVICE_STATUS)),
        ],
    );

    static SERVICE_SPEC: Msg = Msg::new(
        "core/v1 ServiceSpec",
        &[
            rep(1, "ports", M(&SERVICE_PORT)),
            map(2, "selector", Str),
            f(3, "clusterIP", Str),
            f(4, "type", Str),
            rep(5, "externalIPs", Str),
            f(7, "sessionAffinity", Str),
            f(8, "loadBalancerIP", Str),
            rep(9, "loadBalancerSourceRanges", Str),
            f(10, "externalName", Str),
            f(11, "externalTrafficPolicy", Str),
            f(12, "healthCheckNodePort", I32),
            f(13, "publishNotReadyAddresses", Bool),
            f(14, "sessionAffinityConfig", M(&SESSION_AFFINITY_CONFIG)),
            keep(17, "ipFamilyPolicy", Str),
            rep(18, "clusterIPs", Str),
            rep(19, "ipFamilies", Str),
            keep(20, "allocateLoadBalancerNodePorts", Bool),
            keep(21, "loadBalancerClass", Str),
            keep(22, "internalTrafficPolicy", Str),
            keep(23, "trafficDistribution", Str),
        ],
    );

    static SERVICE_PORT: Msg = Msg::new(
        "core/v1 ServicePort",
        &[
            f(1, "name", Str),
            f(2, "protocol", Str),
            keep(3, "port", I32),
            f(4, "targetPort", IntOrString),
            f(5, "nodePort", I32),
            keep(6, "appProtocol", Str),
        ],
    );

    static SESSION_AFFINITY_CONFIG: Msg = Msg::new(
        "core/v1 SessionAffinityConfig",
        &[f(1, "clientIP", M(&CLIENT_IP_CONFIG))],
    );

    static CLIENT_IP_CONFIG: Msg =
        Msg::new("core/v1 ClientIPConfig", &[keep(1, "timeoutSeconds", I32)]);

    static SERVICE_STATUS: Msg = Msg::new(
        "core/v1 ServiceStatus",
        &[
            f(1, "loadBalancer", M(&LOAD_BALANCER_STATUS)),
            rep(2, "conditions", M(&CONDITION)),
        ],
    );

    static LOAD_BALANCER_STATUS: Msg = Msg::new(
        "core/v1 LoadBalancerStatus",
        &[rep(1, "ingress", M(&LOAD_BALANCER_INGRESS))],
    );

    static LOAD_BALANCER_INGRESS: Msg = Msg::new(
        "core/v1 LoadBalancerIngress",
        &[
            f(1, "ip", Str),
            f(2, "hostname", Str),
            keep(3, "ipMode", Str),
            rep(4, "ports", M(&PORT_STATUS)),
        ],
    );

    static PORT_STATUS: Msg = Msg::new(
        "core/v1 PortStatus",
        &[
            keep(1, "port", I32),
            f(2, "protocol", Str),
            keep(3, "error", Str),
        ],
    );

    static BINDING: Msg = Msg::new(
        "core/v1 Binding",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "target", M(&OBJECT_REFERENCE)),
        ],
    );

    static POD: Msg = Msg::new(
        "core/v1 Pod",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&POD_SPEC)),
            f(3, "status", M(&POD_STATUS)),
        ],
    );

    static POD_SPEC: Msg = Msg::new(
        "core/v1 PodSpec",
        &[
            rep(1, "volumes", M(&VOLUME)),
            rep(2, "containers", M(&CONTAINER)),
            f(3, "restartPolicy", Str),
            keep(4, "terminationGracePeriodSeconds", I64),
            keep(5, "activeDeadlineSeconds", I64),
            f(6, "dnsPolicy", Str),
            map(7, "nodeSelector", Str),
            f(8, "serviceAccountName", Str),
            f(9, "serviceAccount", Str),
            f(10, "nodeName", Str),
            f(11, "hostNetwork", Bool),
            f(12, "hostPID", Bool),
            f(13, "hostIPC", Bool),
            f(14, "securityContext", M(&POD_SECURITY_CONTEXT)),
            rep(15, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE)),
            f(16, "hostname", Str),
            f(17, "subdomain", Str),
            f(18, "affinity", M(&AFFINITY)),
            f(19, "schedulerName", Str),
            rep(20, "initContainers", M(&CONTAINER)),
            keep(21, "automountServiceAccountToken", Bool),
            rep(22, "tolerations", M(&TOLERATION)),
            rep(23, "hostAliases", M(&HOST_ALIAS)),
            f(24, "priorityClassName", Str),
            keep(25, "priority", I32),
            f(26, "dnsConfig", M(&POD_DNS_CONFIG)),
            keep(27, "shareProcessNamespace", Bool),
            rep(28, "readinessGates", M(&POD_READINESS_GATE)),
            keep(29, "runtimeClassName", Str),
            keep(30, "enableServiceLinks", Bool),
            keep(31, "preemptionPolicy", Str),
            map(32, "overhead", Quantity),
            rep(
                33,
                "topologySpreadConstraints",
                M(&TOPOLOGY_SPREAD_CONSTRAINT),
            ),
            // 34: ephemeralContainers (EphemeralContainer): not covered
            keep(35, "setHostnameAsFQDN", Bool),
            f(36, "os", M(&POD_OS)),
            keep(37, "hostUsers", Bool),
            rep(38, "schedulingGates", M(&POD_SCHEDULING_GATE)),
            // 39: resourceClaims (PodResourceClaim): not covered
            f(40, "resources", M(&RESOURCE_REQUIREMENTS)),
            // 41: hostname_override: not in v1.33
            // 42: workload_ref: not in v1.33
        ],
    );

    static POD_STATUS: Msg = Msg::new(
        "core/v1 PodStatus",
        &[
            f(1, "phase", Str),
            rep(2, "conditions", M(&POD_CONDITION)),
            f(3, "message", Str),
            f(4, "reason", Str),
            f(5, "hostIP", Str),
            f(6, "podIP", Str),
            f(7, "startTime", Time),
            // 8: containerStatuses (ContainerStatus): not covered
            f(9, "qosClass", Str),
            // 10: initContainerStatuses (ContainerStatus): not covered
            f(11, "nominatedNodeName", Str),
            rep(12, "podIPs", M(&POD_IP)),
            // 13: ephemeralContainerStatuses (ContainerStatus): not covered
            f(14, "resize", Str),
            // 15: resourceClaimStatuses (PodResourceClaimStatus): not covered
            rep(16, "hostIPs", M(&HOST_IP)),
            f(17, "observedGeneration", I64),
            // 18: extended_resource_claim_status: not in v1.33
            // 19: allocated_resources: not in v1.33
            // 20: resources: not in v1.33
        ],
    );

    static POD_CONDITION: Msg = Msg::new(
        "core/v1 PodCondition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(3, "lastProbeTime", Time),
            f(4, "lastTransitionTime", Time),
            f(5, "reason", Str),
            f(6, "message", Str),
            f(7, "observedGeneration", I64),
        ],
    );

    static POD_IP: Msg = Msg::new("core/v1 PodIP", &[f(1, "ip", Str)]);

    static HOST_IP: Msg = Msg::new("core/v1 HostIP", &[f(1, "ip", Str)]);

    static POD_TEMPLATE_SPEC: Msg = Msg::new(
        "core/v1 PodTemplateSpec",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&POD_SPEC)),
        ],
    );

    static CONTAINER: Msg = Msg::new(
        "core/v1 Container",
        &[
            f(1, "name", Str),
            f(2, "image", Str),
            rep(3, "command", Str),
            rep(4, "args", Str),
            f(5, "workingDir", Str),
            rep(6, "ports", M(&CONTAINER_PORT)),
            rep(7, "env", M(&ENV_VAR)),
            f(8, "resources", M(&RESOURCE_REQUIREMENTS)),
            rep(9, "volumeMounts", M(&VOLUME_MOUNT)),
            f(10, "livenessProbe", M(&PROBE)),
            f(11, "readinessProbe", M(&PROBE)),
            f(12, "lifecycle", M(&LIFECYCLE)),
            f(13, "terminationMessagePath", Str),
            f(14, "imagePullPolicy", Str),
            f(15, "securityContext", M(&SECURITY_CONTEXT)),
            f(16, "stdin", Bool),
            f(17, "stdinOnce", Bool),
            f(18, "tty", Bool),
            rep(19, "envFrom", M(&ENV_FROM_SOURCE)),
            f(20, "terminationMessagePolicy", Str),
            rep(21, "volumeDevices", M(&VOLUME_DEVICE)),
            f(22, "startupProbe", M(&PROBE)),
            rep(23, "resizePolicy", M(&CONTAINER_RESIZE_POLICY)),
            keep(24, "restartPolicy", Str),
            // 25: restart_policy_rules: not in v1.33
        ],
    );

    static CONTAINER_PORT: Msg = Msg::new(
        "core/v1 ContainerPort",
        &[
            f(1, "name", Str),
            f(2, "hostPort", I32),
            keep(3, "containerPort", I32),
            f(4, "protocol", Str),
            f(5, "hostIP", Str),
        ],
    );

    static ENV_VAR: Msg = Msg::new(
        "core/v1 EnvVar",
        &[
            f(1, "name", Str),
            f(2, "value", Str),
            f(3, "valueFrom", M(&ENV_VAR_SOURCE)),
        ],
    );

    static ENV_VAR_SOURCE: Msg = Msg::new(
        "core/v1 EnvVarSource",
        &[
            f(1, "fieldRef", M(&OBJECT_FIELD_SELECTOR)),
            f(2, "resourceFieldRef", M(&RESOURCE_FIELD_SELECTOR)),
            f(3, "configMapKeyRef", M(&CONFIG_MAP_KEY_SELECTOR)),
            f(4, "secretKeyRef", M(&SECRET_KEY_SELECTOR)),
            // 5: file_key_ref: not in v1.33
        ],
    );

    static OBJECT_FIELD_SELECTOR: Msg = Msg::new(
        "core/v1 ObjectFieldSelector",
        &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)],
    );

    static RESOURCE_FIELD_SELECTOR: Msg = Msg::new(
        "core/v1 ResourceFieldSelector",
        &[
            f(1, "containerName", Str),
            f(2, "resource", Str),
            f(3, "divisor", Quantity),
        ],
    );

    static CONFIG_MAP_KEY_SELECTOR: Msg = Msg::new(
        "core/v1 ConfigMapKeySelector",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            f(2, "key", Str),
            keep(3, "optional", Bool),
        ],
    );

    static SECRET_KEY_SELECTOR: Msg = Msg::new(
        "core/v1 SecretKeySelector",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            f(2, "key", Str),
            keep(3, "optional", Bool),
        ],
    );

    static ENV_FROM_SOURCE: Msg = Msg::new(
        "core/v1 EnvFromSource",
        &[
            f(1, "prefix", Str),
            f(2, "configMapRef", M(&CONFIG_MAP_ENV_SOURCE)),
            f(3, "secretRef", M(&SECRET_ENV_SOURCE)),
        ],
    );

    static CONFIG_MAP_ENV_SOURCE: Msg = Msg::new(
        "core/v1 ConfigMapEnvSource",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            keep(2, "optional", Bool),
        ],
    );

    static SECRET_ENV_SOURCE: Msg = Msg::new(
        "core/v1 SecretEnvSource",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            keep(2, "optional", Bool),
        ],
    );

    static RESOURCE_REQUIREMENTS: Msg = Msg::new(
        "core/v1 ResourceRequirements",
        &[
            map(1, "limits", Quantity),
            map(2, "requests", Quantity),
            rep(3, "claims", M(&RESOURCE_CLAIM)),
        ],
    );

    static RESOURCE_CLAIM: Msg = Msg::new(
        "core/v1 ResourceClaim",
        &[f(1, "name", Str), f(2, "request", Str)],
    );

    static VOLUME_MOUNT: Msg = Msg::new(
        "core/v1 VolumeMount",
        &[
            f(1, "name", Str),
            f(2, "readOnly", Bool),
            f(3, "mountPath", Str),
            f(4, "subPath", Str),
            keep(5, "mountPropagation", Str),
            f(6, "subPathExpr", Str),
            keep(7, "recursiveReadOnly", Str),
        ],
    );

    static VOLUME_DEVICE: Msg = Msg::new(
        "core/v1 VolumeDevice",
        &[f(1, "name", Str), f(2, "devicePath", Str)],
    );

    static VOLUME: Msg = Msg::new(
        "core/v1 Volume",
        &[f(1, "name", Str), inline(2, &VOLUME_SOURCE)],
    );

    static VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 VolumeSource",
        &[
            f(1, "hostPath", M(&HOST_PATH_VOLUME_SOURCE)),
            f(2, "emptyDir", M(&EMPTY_DIR_VOLUME_SOURCE)),
            // 3: gcePersistentDisk (GcePersistentDiskVolumeSource): not covered
            // 4: awsElasticBlockStore (AwsElasticBlockStoreVolumeSource): not covered
            // 5: gitRepo (GitRepoVolumeSource): not covered
            f(6, "secret", M(&SECRET_VOLUME_SOURCE)),
            // 7: nfs (NfsVolumeSource): not covered
            // 8: iscsi (IscsiVolumeSource): not covered
            // 9: glusterfs (GlusterfsVolumeSource): not covered
            f(
                10,
                "persistentVolumeClaim",
                M(&PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE),
            ),
            // 11: rbd (RbdVolumeSource): not covered
            // 12: flexVolume (FlexVolumeSource): not covered
            // 13: cinder (CinderVolumeSource): not covered
            // 14: cephfs (CephFsVolumeSource): not covered
            // 15: flocker (FlockerVolumeSource): not covered
            f(16, "downwardAPI", M(&DOWNWARD_API_VOLUME_SOURCE)),
            // 17: fc (FcVolumeSource): not covered
            // 18: azureFile (AzureFileVolumeSource): not covered
            f(19, "configMap", M(&CONFIG_MAP_VOLUME_SOURCE)),
            // 20: vsphereVolume (VsphereVirtualDiskVolumeSource): not covered
            // 21: quobyte (QuobyteVolumeSource): not covered
            // 22: azureDisk (AzureDiskVolumeSource): not covered
            // 23: photonPersistentDisk (PhotonPersistentDiskVolumeSource): not covered
            // 24: portworxVolume (PortworxVolumeSource): not covered
            // 25: scaleIO (ScaleIoVolumeSource): not covered
            f(26, "projected", M(&PROJECTED_VOLUME_SOURCE)),
            // 27: storageos (StorageOsVolumeSource): not covered
            // 28: csi (CSIVolumeSource): not covered
            // 29: ephemeral (EphemeralVolumeSource): not covered
            // 30: image (ImageVolumeSource): not covered
        ],
    );

    static HOST_PATH_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 HostPathVolumeSource",
        &[f(1, "path", Str), keep(2, "type", Str)],
    );

    static EMPTY_DIR_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 EmptyDirVolumeSource",
        &[f(1, "medium", Str), f(2, "sizeLimit", Quantity)],
    );

    static SECRET_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 SecretVolumeSource",
        &[
            f(1, "secretName", Str),
            rep(2, "items", M(&KEY_TO_PATH)),
            keep(3, "defaultMode", I32),
            keep(4, "optional", Bool),
        ],
    );

    static CONFIG_MAP_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 ConfigMapVolumeSource",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            rep(2, "items", M(&KEY_TO_PATH)),
            keep(3, "defaultMode", I32),
            keep(4, "optional", Bool),
        ],
    );

    static KEY_TO_PATH: Msg = Msg::new(
        "core/v1 KeyToPath",
        &[f(1, "key", Str), f(2, "path", Str), keep(3, "mode", I32)],
    );

    static PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 PersistentVolumeClaimVolumeSource",
        &[f(1, "claimName", Str), f(2, "readOnly", Bool)],
    );

    static DOWNWARD_API_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 DownwardAPIVolumeSource",
        &[
            rep(1, "items", M(&DOWNWARD_API_VOLUME_FILE)),
            keep(2, "defaultMode", I32),
        ],
    );

    static DOWNWARD_API_VOLUME_FILE: Msg = Msg::new(
        "core/v1 DownwardAPIVolumeFile",
        &[
            f(1, "path", Str),
            f(2, "fieldRef", M(&OBJECT_FIELD_SELECTOR)),
            f(3, "resourceFieldRef", M(&RESOURCE_FIELD_SELECTOR)),
            keep(4, "mode", I32),
        ],
    );

    static PROJECTED_VOLUME_SOURCE: Msg = Msg::new(
        "core/v1 ProjectedVolumeSource",
        &[
            rep(1, "sources", M(&VOLUME_PROJECTION)),
            keep(2, "defaultMode", I32),
        ],
    );

    static VOLUME_PROJECTION: Msg = Msg::new(
        "core/v1 VolumeProjection",
        &[
            f(1, "secret", M(&SECRET_PROJECTION)),
            f(2, "downwardAPI", M(&DOWNWARD_API_PROJECTION)),
            f(3, "configMap", M(&CONFIG_MAP_PROJECTION)),
            f(
                4,
                "serviceAccountToken",
                M(&SERVICE_ACCOUNT_TOKEN_PROJECTION),
            ),
            // 5: clusterTrustBundle (ClusterTrustBundleProjection): not covered
            // 6: pod_certificate: not in v1.33
        ],
    );

    static SECRET_PROJECTION: Msg = Msg::new(
        "core/v1 SecretProjection",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            rep(2, "items", M(&KEY_TO_PATH)),
            keep(4, "optional", Bool),
        ],
    );

    static CONFIG_MAP_PROJECTION: Msg = Msg::new(
        "core/v1 ConfigMapProjection",
        &[
            inline(1, &LOCAL_OBJECT_REFERENCE),
            rep(2, "items", M(&KEY_TO_PATH)),
            keep(4, "optional", Bool),
        ],
    );

    static DOWNWARD_API_PROJECTION: Msg = Msg::new(
        "core/v1 DownwardAPIProjection",
        &[rep(1, "items", M(&DOWNWARD_API_VOLUME_FILE))],
    );

    static SERVICE_ACCOUNT_TOKEN_PROJECTION: Msg = Msg::new(
        "core/v1 ServiceAccountTokenProjection",
        &[
            f(1, "audience", Str),
            keep(2, "expirationSeconds", I64),
            f(3, "path", Str),
        ],
    );

    static PROBE: Msg = Msg::new(
        "core/v1 Probe",
        &[
            inline(1, &PROBE_HANDLER),
            f(2, "initialDelaySeconds", I32),
            f(3, "timeoutSeconds", I32),
            f(4, "periodSeconds", I32),
            f(5, "successThreshold", I32),
            f(6, "failureThreshold", I32),
            keep(7, "terminationGracePeriodSeconds", I64),
        ],
    );

    static PROBE_HANDLER: Msg = Msg::new(
        "core/v1 ProbeHandler",
        &[
            f(1, "exec", M(&EXEC_ACTION)),
            f(2, "httpGet", M(&HTTP_GET_ACTION)),
            f(3, "tcpSocket", M(&TCP_SOCKET_ACTION)),
            f(4, "grpc", M(&GRPC_ACTION)),
        ],
    );

    static EXEC_ACTION: Msg = Msg::new("core/v1 ExecAction", &[rep(1, "command", Str)]);

    static HTTP_GET_ACTION: Msg = Msg::new(
        "core/v1 HTTPGetAction",
        &[
            f(1, "path", Str),
            f(2, "port", IntOrString),
            f(3, "host", Str),
            f(4, "scheme", Str),
            rep(5, "httpHeaders", M(&HTTP_HEADER)),
        ],
    );

    static HTTP_HEADER: Msg = Msg::new(
        "core/v1 HTTPHeader",
        &[f(1, "name", Str), f(2, "value", Str)],
    );

    static TCP_SOCKET_ACTION: Msg = Msg::new(
        "core/v1 TCPSocketAction",
        &[f(1, "port", IntOrString), f(2, "host", Str)],
    );

    static GRPC_ACTION: Msg = Msg::new(
        "core/v1 GRPCAction",
        &[keep(1, "port", I32), keep(2, "service", Str)],
    );

    static LIFECYCLE: Msg = Msg::new(
        "core/v1 Lifecycle",
        &[
            f(1, "postStart", M(&LIFECYCLE_HANDLER)),
            f(2, "preStop", M(&LIFECYCLE_HANDLER)),
            keep(3, "stopSignal", Str),
        ],
    );

    static LIFECYCLE_HANDLER: Msg = Msg::new(
        "core/v1 LifecycleHandler",
        &[
            f(1, "exec", M(&EXEC_ACTION)),
            f(2, "httpGet", M(&HTTP_GET_ACTION)),
            f(3, "tcpSocket", M(&TCP_SOCKET_ACTION)),
            f(4, "sleep", M(&SLEEP_ACTION)),
        ],
    );

    static SLEEP_ACTION: Msg = Msg::new("core/v1 SleepAction", &[keep(1, "seconds", I64)]);

    static SECURITY_CONTEXT: Msg = Msg::new(
        "core/v1 SecurityContext",
        &[
            f(1, "capabilities", M(&CAPABILITIES)),
            keep(2, "privileged", Bool),
            f(3, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
            keep(4, "runAsUser", I64),
            keep(5, "runAsNonRoot", Bool),
            keep(6, "readOnlyRootFilesystem", Bool),
            keep(7, "allowPrivilegeEscalation", Bool),
            keep(8, "runAsGroup", I64),
            keep(9, "procMount", Str),
            f(10, "windowsOptions", M(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
            f(11, "seccompProfile", M(&SECCOMP_PROFILE)),
            f(12, "appArmorProfile", M(&APP_ARMOR_PROFILE)),
        ],
    );

    static CAPABILITIES: Msg = Msg::new(
        "core/v1 Capabilities",
        &[rep(1, "add", Str), rep(2, "drop", Str)],
    );

    static SE_LINUX_OPTIONS: Msg = Msg::new(
        "core/v1 SELinuxOptions",
        &[
            f(1, "user", Str),
            f(2, "role", Str),
            f(3, "type", Str),
            f(4, "level", Str),
        ],
    );

    static SECCOMP_PROFILE: Msg = Msg::new(
        "core/v1 SeccompProfile",
        &[f(1, "type", Str), keep(2, "localhostProfile", Str)],
    );

    static APP_ARMOR_PROFILE: Msg = Msg::new(
        "core/v1 AppArmorProfile",
        &[f(1, "type", Str), keep(2, "localhostProfile", Str)],
    );

    static WINDOWS_SECURITY_CONTEXT_OPTIONS: Msg = Msg::new(
        "core/v1 WindowsSecurityContextOptions",
        &[
            keep(1, "gmsaCredentialSpecName", Str),
            keep(2, "gmsaCredentialSpec", Str),
            keep(3, "runAsUserName", Str),
            keep(4, "hostProcess", Bool),
        ],
    );

    static POD_SECURITY_CONTEXT: Msg = Msg::new(
        "core/v1 PodSecurityContext",
        &[
            f(1, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
            keep(2, "runAsUser", I64),
            keep(3, "runAsNonRoot", Bool),
            rep(4, "supplementalGroups", I64),
            keep(5, "fsGroup", I64),
            keep(6, "runAsGroup", I64),
            rep(7, "sysctls", M(&SYSCTL)),
            f(8, "windowsOptions", M(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
            keep(9, "fsGroupChangePolicy", Str),
            f(10, "seccompProfile", M(&SECCOMP_PROFILE)),
            f(11, "appArmorProfile", M(&APP_ARMOR_PROFILE)),
            keep(12, "supplementalGroupsPolicy", Str),
            keep(13, "seLinuxChangePolicy", Str),
        ],
    );

    static SYSCTL: Msg = Msg::new("core/v1 Sysctl", &[f(1, "name", Str), f(2, "value", Str)]);

    static TOLERATION: Msg = Msg::new(
        "core/v1 Toleration",
        &[
            f(1, "key", Str),
            f(2, "operator", Str),
            f(3, "value", Str),
            f(4, "effect", Str),
            keep(5, "tolerationSeconds", I64),
        ],
    );

    static HOST_ALIAS: Msg = Msg::new(
        "core/v1 HostAlias",
        &[f(1, "ip", Str), rep(2, "hostnames", Str)],
    );

    static POD_DNS_CONFIG: Msg = Msg::new(
        "core/v1 PodDNSConfig",
        &[
            rep(1, "nameservers", Str),
            rep(2, "searches", Str),
            rep(3, "options", M(&POD_DNS_CONFIG_OPTION)),
        ],
    );

    static POD_DNS_CONFIG_OPTION: Msg = Msg::new(
        "core/v1 PodDNSConfigOption",
        &[f(1, "name", Str), keep(2, "value", Str)],
    );

    static POD_READINESS_GATE: Msg =
        Msg::new("core/v1 PodReadinessGate", &[f(1, "conditionType", Str)]);

    static TOPOLOGY_SPREAD_CONSTRAINT: Msg = Msg::new(
        "core/v1 TopologySpreadConstraint",
        &[
            keep(1, "maxSkew", I32),
            f(2, "topologyKey", Str),
            f(3, "whenUnsatisfiable", Str),
            f(4, "labelSelector", M(&LABEL_SELECTOR)),
            keep(5, "minDomains", I32),
            keep(6, "nodeAffinityPolicy", Str),
            keep(7, "nodeTaintsPolicy", Str),
            rep(8, "matchLabelKeys", Str),
        ],
    );

    static POD_OS: Msg = Msg::new("core/v1 PodOS", &[f(1, "name", Str)]);

    static POD_SCHEDULING_GATE: Msg = Msg::new("core/v1 PodSchedulingGate", &[f(1, "name", Str)]);

    static CONTAINER_RESIZE_POLICY: Msg = Msg::new(
        "core/v1 ContainerResizePolicy",
        &[f(1, "resourceName", Str), f(2, "restartPolicy", Str)],
    );

    static AFFINITY: Msg = Msg::new(
        "core/v1 Affinity",
        &[
            f(1, "nodeAffinity", M(&NODE_AFFINITY)),
            f(2, "podAffinity", M(&POD_AFFINITY)),
            f(3, "podAntiAffinity", M(&POD_ANTI_AFFINITY)),
        ],
    );

    static NODE_AFFINITY: Msg = Msg::new(
        "core/v1 NodeAffinity",
        &[
            f(
                1,
                "requiredDuringSchedulingIgnoredDuringExecution",
                M(&NODE_SELECTOR),
            ),
            rep(
                2,
                "preferredDuringSchedulingIgnoredDuringExecution",
                M(&PREFERRED_SCHEDULING_TERM),
            ),
        ],
    );

    static NODE_SELECTOR: Msg = Msg::new(
        "core/v1 NodeSelector",
        &[rep(1, "nodeSelectorTerms", M(&NODE_SELECTOR_TERM))],
    );

    static NODE_SELECTOR_TERM: Msg = Msg::new(
        "core/v1 NodeSelectorTerm",
        &[
            rep(1, "matchExpressions", M(&NODE_SELECTOR_REQUIREMENT)),
            rep(2, "matchFields", M(&NODE_SELECTOR_REQUIREMENT)),
        ],
    );

    static NODE_SELECTOR_REQUIREMENT: Msg = Msg::new(
        "core/v1 NodeSelectorRequirement",
        &[
            f(1, "key", Str),
            f(2, "operator", Str),
            rep(3, "values", Str),
        ],
    );

    static PREFERRED_SCHEDULING_TERM: Msg = Msg::new(
        "core/v1 PreferredSchedulingTerm",
        &[
            keep(1, "weight", I32),
            f(2, "preference", M(&NODE_SELECTOR_TERM)),
        ],
    );

    static POD_AFFINITY: Msg = Msg::new(
        "core/v1 PodAffinity",
        &[
            rep(
                1,
                "requiredDuringSchedulingIgnoredDuringExecution",
                M(&POD_AFFINITY_TERM),
            ),
            rep(
                2,
                "preferredDuringSchedulingIgnoredDuringExecution",
                M(&WEIGHTED_POD_AFFINITY_TERM),
            ),
        ],
    );

    static POD_ANTI_AFFINITY: Msg = Msg::new(
        "core/v1 PodAntiAffinity",
        &[
            rep(
                1,
                "requiredDuringSchedulingIgnoredDuringExecution",
                M(&POD_AFFINITY_TERM),
            ),
            rep(
                2,
                "preferredDuringSchedulingIgnoredDuringExecution",
                M(&WEIGHTED_POD_AFFINITY_TERM),
            ),
        ],
    );

    static POD_AFFINITY_TERM: Msg = Msg::new(
        "core/v1 PodAffinityTerm",
        &[
            f(1, "labelSelector", M(&LABEL_SELECTOR)),
            rep(2, "namespaces", Str),
            f(3, "topologyKey", Str),
            f(4, "namespaceSelector", M(&LABEL_SELECTOR)),
            rep(5, "matchLabelKeys", Str),
            rep(6, "mismatchLabelKeys", Str),
        ],
    );

    static WEIGHTED_POD_AFFINITY_TERM: Msg = Msg::new(
        "core/v1 WeightedPodAffinityTerm",
        &[
            keep(1, "weight", I32),
            f(2, "podAffinityTerm", M(&POD_AFFINITY_TERM)),
        ],
    );

    static RESOURCE_QUOTA: Msg = Msg::new(
        "core/v1 ResourceQuota",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&RESOURCE_QUOTA_SPEC)),
            f(3, "status", M(&RESOURCE_QUOTA_STATUS)),
        ],
    );

    static RESOURCE_QUOTA_SPEC: Msg = Msg::new(
        "core/v1 ResourceQuotaSpec",
        &[
            map(1, "hard", Quantity),
            rep(2, "scopes", Str),
            f(3, "scopeSelector", M(&SCOPE_SELECTOR)),
        ],
    );

    static RESOURCE_QUOTA_STATUS: Msg = Msg::new(
        "core/v1 ResourceQuotaStatus",
        &[map(1, "hard", Quantity), map(2, "used", Quantity)],
    );

    static SCOPE_SELECTOR: Msg = Msg::new(
        "core/v1 ScopeSelector",
        &[rep(
            1,
            "matchExpressions",
            M(&SCOPED_RESOURCE_SELECTOR_REQUIREMENT),
        )],
    );

    static SCOPED_RESOURCE_SELECTOR_REQUIREMENT: Msg = Msg::new(
        "core/v1 ScopedResourceSelectorRequirement",
        &[
            f(1, "scopeName", Str),
            f(2, "operator", Str),
            rep(3, "values", Str),
        ],
    );

    // ----- apps/v1: k8s.io/api/apps/v1/generated.proto.

    static DEPLOYMENT: Msg = Msg::new(
        "apps/v1 Deployment",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&DEPLOYMENT_SPEC)),
            f(3, "status", M(&DEPLOYMENT_STATUS)),
        ],
    );

    static DEPLOYMENT_SPEC: Msg = Msg::new(
        "apps/v1 DeploymentSpec",
        &[
            keep(1, "replicas", I32),
            f(2, "selector", M(&LABEL_SELECTOR)),
            f(3, "template", M(&POD_TEMPLATE_SPEC)),
            f(4, "strategy", M(&DEPLOYMENT_STRATEGY)),
            f(5, "minReadySeconds", I32),
            keep(6, "revisionHistoryLimit", I32),
            f(7, "paused", Bool),
            keep(9, "progressDeadlineSeconds", I32),
        ],
    );

    static DEPLOYMENT_STRATEGY: Msg = Msg::new(
        "apps/v1 DeploymentStrategy",
        &[
            f(1, "type", Str),
            f(2, "rollingUpdate", M(&ROLLING_UPDATE_DEPLOYMENT)),
        ],
    );

    static ROLLING_UPDATE_DEPLOYMENT: Msg = Msg::new(
        "apps/v1 RollingUpdateDeployment",
        &[
            keep(1, "maxUnavailable", IntOrString),
            keep(2, "maxSurge", IntOrString),
        ],
    );

    static DEPLOYMENT_STATUS: Msg = Msg::new(
        "apps/v1 DeploymentStatus",
        &[
            f(1, "observedGeneration", I64),
            f(2, "replicas", I32),
            f(3, "updatedReplicas", I32),
            f(4, "availableReplicas", I32),
            f(5, "unavailableReplicas", I32),
            rep(6, "conditions", M(&DEPLOYMENT_CONDITION)),
            f(7, "readyReplicas", I32),
            keep(8, "collisionCount", I32),
            keep(9, "terminatingReplicas", I32),
        ],
    );

    static DEPLOYMENT_CONDITION: Msg = Msg::new(
        "apps/v1 DeploymentCondition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(4, "reason", Str),
            f(5, "message", Str),
            f(6, "lastUpdateTime", Time),
            f(7, "lastTransitionTime", Time),
        ],
    );

    static CONTROLLER_REVISION: Msg = Msg::new(
        "apps/v1 ControllerRevision",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "data", Raw),
            keep(3, "revision", I64),
        ],
    );

    // ----- batch/v1: k8s.io/api/batch/v1/generated.proto.

    static JOB: Msg = Msg::new(
        "batch/v1 Job",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&JOB_SPEC)),
            f(3, "status", M(&JOB_STATUS)),
        ],
    );

    static JOB_SPEC: Msg = Msg::new(
        "batch/v1 JobSpec",
        &[
            keep(1, "parallelism", I32),
            keep(2, "completions", I32),
            keep(3, "activeDeadlineSeconds", I64),
            f(4, "selector", M(&LABEL_SELECTOR)),
            keep(5, "manualSelector", Bool),
            f(6, "template", M(&POD_TEMPLATE_SPEC)),
            keep(7, "backoffLimit", I32),
            keep(8, "ttlSecondsAfterFinished", I32),
            keep(9, "completionMode", Str),
            keep(10, "suspend", Bool),
            f(11, "podFailurePolicy", M(&POD_FAILURE_POLICY)),
            keep(12, "backoffLimitPerIndex", I32),
            keep(13, "maxFailedIndexes", I32),
            keep(14, "podReplacementPolicy", Str),
            keep(15, "managedBy", Str),
            f(16, "successPolicy", M(&SUCCESS_POLICY)),
        ],
    );

    static JOB_STATUS: Msg = Msg::new(
        "batch/v1 JobStatus",
        &[
            rep(1, "conditions", M(&JOB_CONDITION)),
            f(2, "startTime", Time),
            f(3, "completionTime", Time),
            f(4, "active", I32),
            f(5, "succeeded", I32),
            f(6, "failed", I32),
            f(7, "completedIndexes", Str),
            f(8, "uncountedTerminatedPods", M(&UNCOUNTED_TERMINATED_PODS)),
            keep(9, "ready", I32),
            keep(10, "failedIndexes", Str),
            keep(11, "terminating", I32),
        ],
    );

    static JOB_CONDITION: Msg = Msg::new(
        "batch/v1 JobCondition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(3, "lastProbeTime", Time),
            f(4, "lastTransitionTime", Time),
            f(5, "reason", Str),
            f(6, "message", Str),
        ],
    );

    static UNCOUNTED_TERMINATED_PODS: Msg = Msg::new(
        "batch/v1 UncountedTerminatedPods",
        &[rep(1, "succeeded", Str), rep(2, "failed", Str)],
    );

    static POD_FAILURE_POLICY: Msg = Msg::new(
        "batch/v1 PodFailurePolicy",
        &[rep(1, "rules", M(&POD_FAILURE_POLICY_RULE))],
    );

    static POD_FAILURE_POLICY_RULE: Msg = Msg::new(
        "batch/v1 PodFailurePolicyRule",
        &[
            f(1, "action", Str),
            f(
                2,
                "onExitCodes",
                M(&POD_FAILURE_POLICY_ON_EXIT_CODES_REQUIREMENT),
            ),
            rep(
                3,
                "onPodConditions",
                M(&POD_FAILURE_POLICY_ON_POD_CONDITIONS_PATTERN),
            ),
        ],
    );

    static POD_FAILURE_POLICY_ON_EXIT_CODES_REQUIREMENT: Msg = Msg::new(
        "batch/v1 PodFailurePolicyOnExitCodesRequirement",
        &[
            keep(1, "containerName", Str),
            f(2, "operator", Str),
            rep(3, "values", I32),
        ],
    );

    static POD_FAILURE_POLICY_ON_POD_CONDITIONS_PATTERN: Msg = Msg::new(
        "batch/v1 PodFailurePolicyOnPodConditionsPattern",
        &[f(1, "type", Str), f(2, "status", Str)],
    );

    static SUCCESS_POLICY: Msg = Msg::new(
        "batch/v1 SuccessPolicy",
        &[rep(1, "rules", M(&SUCCESS_POLICY_RULE))],
    );

    static SUCCESS_POLICY_RULE: Msg = Msg::new(
        "batch/v1 SuccessPolicyRule",
        &[
            keep(1, "succeededIndexes", Str),
            keep(2, "succeededCount", I32),
        ],
    );

    static JOB_TEMPLATE_SPEC: Msg = Msg::new(
        "batch/v1 JobTemplateSpec",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&JOB_SPEC)),
        ],
    );

    static CRON_JOB: Msg = Msg::new(
        "batch/v1 CronJob",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&CRON_JOB_SPEC)),
            f(3, "status", M(&CRON_JOB_STATUS)),
        ],
    );

    static CRON_JOB_SPEC: Msg = Msg::new(
        "batch/v1 CronJobSpec",
        &[
            f(1, "schedule", Str),
            keep(2, "startingDeadlineSeconds", I64),
            f(3, "concurrencyPolicy", Str),
            keep(4, "suspend", Bool),
            f(5, "jobTemplate", M(&JOB_TEMPLATE_SPEC)),
            keep(6, "successfulJobsHistoryLimit", I32),
            keep(7, "failedJobsHistoryLimit", I32),
            keep(8, "timeZone", Str),
        ],
    );

    static CRON_JOB_STATUS: Msg = Msg::new(
        "batch/v1 CronJobStatus",
        &[
            rep(1, "active", M(&OBJECT_REFERENCE)),
            f(4, "lastScheduleTime", Time),
            f(5, "lastSuccessfulTime", Time),
        ],
    );

    // ----- autoscaling/v2 and autoscaling/v1: k8s.io/api/autoscaling/v{2,1}/generated.proto.

    static AS2_HORIZONTAL_POD_AUTOSCALER: Msg = Msg::new(
        "autoscaling/v2 HorizontalPodAutoscaler",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&AS2_HORIZONTAL_POD_AUTOSCALER_SPEC)),
            f(3, "status", M(&AS2_HORIZONTAL_POD_AUTOSCALER_STATUS)),
        ],
    );

    static AS2_HORIZONTAL_POD_AUTOSCALER_SPEC: Msg = Msg::new(
        "autoscaling/v2 HorizontalPodAutoscalerSpec",
        &[
            f(1, "scaleTargetRef", M(&AS2_CROSS_VERSION_OBJECT_REFERENCE)),
            keep(2, "minReplicas", I32),
            keep(3, "maxReplicas", I32),
            rep(4, "metrics", M(&AS2_METRIC_SPEC)),
            f(5, "behavior", M(&AS2_HORIZONTAL_POD_AUTOSCALER_BEHAVIOR)),
        ],
    );

    static AS2_CROSS_VERSION_OBJECT_REFERENCE: Msg = Msg::new(
        "autoscaling/v2 CrossVersionObjectReference",
        &[
            f(1, "kind", Str),
            f(2, "name", Str),
            f(3, "apiVersion", Str),
        ],
    );

    static AS2_METRIC_SPEC: Msg = Msg::new(
        "autoscaling/v2 MetricSpec",
        &[
            f(1, "type", Str),
            f(2, "object", M(&AS2_OBJECT_METRIC_SOURCE)),
            f(3, "pods", M(&AS2_PODS_METRIC_SOURCE)),
            f(4, "resource", M(&AS2_RESOURCE_METRIC_SOURCE)),
            f(5, "external", M(&AS2_EXTERNAL_METRIC_SOURCE)),
            f(
                7,
                "containerResource",
                M(&AS2_CONTAINER_RESOURCE_METRIC_SOURCE),
            ),
        ],
    );

    static AS2_OBJECT_METRIC_SOURCE: Msg = Msg::new(
        "autoscaling/v2 ObjectMetricSource",
        &[
            f(1, "describedObject", M(&AS2_CROSS_VERSION_OBJECT_REFERENCE)),
            f(2, "target", M(&AS2_METRIC_TARGET)),
            f(3, "metric", M(&AS2_METRIC_IDENTIFIER)),
        ],
    );

    static AS2_PODS_METRIC_SOURCE: Msg = Msg::new(
        "autoscaling/v2 PodsMetricSource",
        &[
            f(1, "metric", M(&AS2_METRIC_IDENTIFIER)),
            f(2, "target", M(&AS2_METRIC_TARGET)),
        ],
    );

    static AS2_RESOURCE_METRIC_SOURCE: Msg = Msg::new(
        "autoscaling/v2 ResourceMetricSource",
        &[f(1, "name", Str), f(2, "target", M(&AS2_METRIC_TARGET))],
    );

    static AS2_CONTAINER_RESOURCE_METRIC_SOURCE: Msg = Msg::new(
        "autoscaling/v2 ContainerResourceMetricSource",
        &[
            f(1, "name", Str),
            f(2, "target", M(&AS2_METRIC_TARGET)),
            f(3, "container", Str),
        ],
    );

    static AS2_EXTERNAL_METRIC_SOURCE: Msg = Msg::new(
        "autoscaling/v2 ExternalMetricSource",
        &[
            f(1, "metric", M(&AS2_METRIC_IDENTIFIER)),
            f(2, "target", M(&AS2_METRIC_TARGET)),
        ],
    );

    static AS2_METRIC_IDENTIFIER: Msg = Msg::new(
        "autoscaling/v2 MetricIdentifier",
        &[f(1, "name", Str), f(2, "selector", M(&LABEL_SELECTOR))],
    );

    static AS2_METRIC_TARGET: Msg = Msg::new(
        "autoscaling/v2 MetricTarget",
        &[
            f(1, "type", Str),
            f(2, "value", Quantity),
            f(3, "averageValue", Quantity),
            keep(4, "averageUtilization", I32),
        ],
    );

    static AS2_HORIZONTAL_POD_AUTOSCALER_BEHAVIOR: Msg = Msg::new(
        "autoscaling/v2 HorizontalPodAutoscalerBehavior",
        &[
            f(1, "scaleUp", M(&AS2_HPA_SCALING_RULES)),
            f(2, "scaleDown", M(&AS2_HPA_SCALING_RULES)),
        ],
    );

    static AS2_HPA_SCALING_RULES: Msg = Msg::new(
        "autoscaling/v2 HPAScalingRules",
        &[
            keep(1, "selectPolicy", Str),
            rep(2, "policies", M(&AS2_HPA_SCALING_POLICY)),
            keep(3, "stabilizationWindowSeconds", I32),
            f(4, "tolerance", Quantity),
        ],
    );

    static AS2_HPA_SCALING_POLICY: Msg = Msg::new(
        "autoscaling/v2 HPAScalingPolicy",
        &[
            f(1, "type", Str),
            keep(2, "value", I32),
            keep(3, "periodSeconds", I32),
        ],
    );

    static AS2_HORIZONTAL_POD_AUTOSCALER_STATUS: Msg = Msg::new(
        "autoscaling/v2 HorizontalPodAutoscalerStatus",
        &[
            keep(1, "observedGeneration", I64),
            f(2, "lastScaleTime", Time),
            f(3, "currentReplicas", I32),
            keep(4, "desiredReplicas", I32),
            // 5: currentMetrics (MetricStatus): not covered
            rep(6, "conditions", M(&AS2_HORIZONTAL_POD_AUTOSCALER_CONDITION)),
        ],
    );

    static AS2_HORIZONTAL_POD_AUTOSCALER_CONDITION: Msg = Msg::new(
        "autoscaling/v2 HorizontalPodAutoscalerCondition",
        &[
            f(1, "type", Str),
            f(2, "status", Str),
            f(3, "lastTransitionTime", Time),
            f(4, "reason", Str),
            f(5, "message", Str),
        ],
    );

    static AS1_SCALE: Msg = Msg::new(
        "autoscaling/v1 Scale",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&AS1_SCALE_SPEC)),
            f(3, "status", M(&AS1_SCALE_STATUS)),
        ],
    );

    static AS1_SCALE_SPEC: Msg = Msg::new("autoscaling/v1 ScaleSpec", &[keep(1, "replicas", I32)]);

    static AS1_SCALE_STATUS: Msg = Msg::new(
        "autoscaling/v1 ScaleStatus",
        &[keep(1, "replicas", I32), f(2, "selector", Str)],
    );

    // ----- authentication/v1, policy/v1, coordination/v1.

    static TOKEN_REQUEST: Msg = Msg::new(
        "authentication/v1 TokenRequest",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&TOKEN_REQUEST_SPEC)),
            f(3, "status", M(&TOKEN_REQUEST_STATUS)),
        ],
    );

    static TOKEN_REQUEST_SPEC: Msg = Msg::new(
        "authentication/v1 TokenRequestSpec",
        &[
            rep(1, "audiences", Str),
            f(3, "boundObjectRef", M(&BOUND_OBJECT_REFERENCE)),
            keep(4, "expirationSeconds", I64),
        ],
    );

    static BOUND_OBJECT_REFERENCE: Msg = Msg::new(
        "authentication/v1 BoundObjectReference",
        &[
            f(1, "kind", Str),
            f(2, "apiVersion", Str),
            f(3, "name", Str),
            f(4, "uid", Str),
        ],
    );

    static TOKEN_REQUEST_STATUS: Msg = Msg::new(
        "authentication/v1 TokenRequestStatus",
        &[f(1, "token", Str), f(2, "expirationTimestamp", Time)],
    );

    static EVICTION: Msg = Msg::new(
        "policy/v1 Eviction",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "deleteOptions", M(&DELETE_OPTIONS)),
        ],
    );

    static LEASE: Msg = Msg::new(
        "coordination/v1 Lease",
        &[
            f(1, "metadata", M(&OBJECT_META)),
            f(2, "spec", M(&LEASE_SPEC)),
        ],
    );

    static LEASE_SPEC: Msg = Msg::new(
        "coordination/v1 LeaseSpec",
        &[
            keep(1, "holderIdentity", Str),
            keep(2, "leaseDurationSeconds", I32),
            f(3, "acquireTime", MicroTime),
            f(4, "renewTime", MicroTime),
            keep(5, "leaseTransitions", I32),
            keep(6, "strategy", Str),
            keep(7, "preferredHolder", Str),
        ],
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Bodies kubectl 1.33 sent to this server (captured with `-v=9`).
    mod fixtures {
        /// `kubectl create namespace x`
        pub const NAMESPACE_PB: &str = concat!(
            "6b3873000a0f0a02763112094e616d65737061636512190a110a017812001a0022002a0032003800",
            "420012001a020a001a002200",
        );

        /// `kubectl create configmap cfg -n cap --from-literal=a=1 --from-literal=greeting='hello world'`
        pub const CONFIGMAP_PB: &str = concat!(
            "6b3873000a0f0a0276311209436f6e6669674d617012390a160a0363666712001a0363617022002a",
            "0032003800420012060a016112013112170a086772656574696e67120b68656c6c6f20776f726c64",
            "1a002200",
        );

        /// `kubectl create secret generic s1 -n cap --from-literal=user=admin --from-literal=pw='p@ss'`
        pub const SECRET_PB: &str = concat!(
            "6b3873000a0c0a027631120653656372657412340a150a02733112001a0363617022002a00320038",
            "004200120a0a027077120470407373120d0a0475736572120561646d696e1a001a002200",
        );

        /// `kubectl create deployment web2 -n cap --image=nginx:1.27 --replicas=3 --port=8080`
        pub const DEPLOYMENT_PB: &str = concat!(
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c5010a240a04776562321200",
            "1a0363617022002a003200380042005a0b0a03617070120477656232128e010803120d0a0b0a0361",
            "70701204776562321a730a1d0a0012001a0022002a003200380042005a0b0a036170701204776562",
            "32125212340a056e67696e78120a6e67696e783a312e32372a00320b0a00100018903f22002a0042",
            "006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a",
            "0100c2010022020a00280038001a0c0800100018002000280038001a002200",
        );

        /// `kubectl create service nodeport np1 -n cap --tcp=80:8080`
        pub const SERVICE_PB: &str = concat!(
            "6b3873000a0d0a027631120753657276696365126b0a220a036e703112001a0363617022002a0032",
            "00380042005a0a0a0361707012036e703112410a1b0a0738302d3830383012035443501850220708",
            "0010903f1a002800120a0a0361707012036e70311a0022084e6f6465506f72743a00420052005a00",
            "600068001a020a001a002200",
        );

        /// `kubectl debug pod1 -n cap --copy-to=pod1-copy --image=busybox:1.36 --container=dbg
        /// --env=X=1 -- sleep 1000`, pod1 being `kubectl run pod1 --image=nginx:1.27 --env=A=1
        /// --env=B=two --port=80 --labels=app=p1,tier=web` (`run` itself sends JSON; the copy
        /// drops the labels).
        pub const POD_COPY_PB: &str = concat!(
            "6b3873000a090a0276311203506f6412ae020a1c0a09706f64312d636f707912001a036361702200",
            "2a0032003800420012f801126b0a04706f6431120a6e67696e783a312e32372a00320d0a00100018",
            "5022035443502a003a060a01411201313a080a0142120374776f42006a142f6465762f7465726d69",
            "6e6174696f6e2d6c6f67720c49664e6f7450726573656e74800100880100900100a2010446696c65",
            "12400a03646267120c62757379626f783a312e33361a05736c6565701a04313030302a003a060a01",
            "5812013142006a007200800100880100900100a2010446696c651a06416c77617973201e320c436c",
            "7573746572466972737442004a00520058006000680072008201008a01009a011164656661756c74",
            "2d7363686564756c6572c20100c80100f001011a130a001a0022002a0032004a005a007200880100",
            "1a002200",
        );

        /// `kubectl debug node/n1 -n cap --image=busybox:1.36 --profile=general`
        pub const POD_NODE_PB: &str = concat!(
            "6b3873000a090a0276311203506f6412d4010a260a166e6f64652d64656275676765722d6e312d77",
            "6a6d673812001a0022002a003200380042001294010a120a09686f73742d726f6f7412050a030a01",
            "2f124a0a086465627567676572120c62757379626f783a312e33362a0042004a180a09686f73742d",
            "726f6f7410001a052f686f7374220032006a007200800100880100900100a2010446696c651a054e",
            "65766572320042004a0052026e315801600168018201008a01009a0100b2010e0a00120645786973",
            "74731a002200c201001a130a001a0022002a0032004a005a0072008801001a002200",
        );

        /// `kubectl drain n1 --force --grace-period=5`: the DELETE of a pod.
        pub const DELETE_OPTIONS_PB: &str =
            "6b3873000a130a027631120d44656c6574654f7074696f6e73120208051a002200";

        /// `kubectl autoscale deployment web -n cap --min=2 --max=5 --cpu-percent=70`
        pub const HPA_PB: &str = concat!(
            "6b3873000a290a0e6175746f7363616c696e672f76321217486f72697a6f6e74616c506f64417574",
            "6f7363616c657212610a130a0377656212001a0022002a0032003800420012440a1a0a0a4465706c",
            "6f796d656e7412037765621a07617070732f76311002180522220a085265736f7572636522160a03",
            "637075120f0a0b5574696c697a6174696f6e20461a04180020001a002200",
        );

        /// `kubectl create cronjob c1 -n cap --image=busybox:1.36 --schedule='*/5 * * * *' -- date`
        pub const CRONJOB_PB: &str = concat!(
            "6b3873000a130a0862617463682f7631120743726f6e4a6f6212ac010a150a02633112001a036361",
            "7022002a003200380042001290010a0b2a2f35202a202a202a202a1a002a7f0a120a02633112001a",
            "0022002a00320038004200126932670a100a0012001a0022002a003200380042001253122c0a0263",
            "31120c62757379626f783a312e33361a04646174652a0042006a007200800100880100900100a201",
            "001a094f6e4661696c757265320042004a0052005800600068008201008a01009a0100c201001a00",
            "1a002200",
        );

        /// `kubectl create job j2 -n cap --from=cronjob/c1`
        pub const JOB_FROM_PB: &str = concat!(
            "6b3873000a0f0a0862617463682f763112034a6f6212ef020a83010a026a3212001a036361702200",
            "2a00320038004200622b0a2163726f6e6a6f622e6b756265726e657465732e696f2f696e7374616e",
            "746961746512066d616e75616c6a3f0a0743726f6e4a6f621a026331222438373763616538382d63",
            "6131352d343736652d383632392d3130666261356133633136312a0862617463682f7631300112dc",
            "010801100132b0010a100a0012001a0022002a00320038004200129b0112500a026331120c627573",
            "79626f783a312e33361a04646174652a0042006a142f6465762f7465726d696e6174696f6e2d6c6f",
            "67720c49664e6f7450726573656e74800100880100900100a2010446696c651a094f6e4661696c75",
            "7265201e320c436c7573746572466972737442004a00520058006000680072008201008a01009a01",
            "1164656661756c742d7363686564756c6572c20100f0010138064a0a4e6f6e496e64657865645000",
            "72135465726d696e6174696e674f724661696c65641a082000280030003a001a002200",
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // A tiny encoder, to build bodies kubectl does not send.

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field (negative numbers sign-extended to 64 bits, as protobuf does).
    fn int(num: u32, v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(num) << 3, &mut out);
        varint(v as u64, &mut out);
        out
    }

    /// A length-delimited field.
    fn len(num: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(num) << 3) | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn s(num: u32, text: &str) -> Vec<u8> {
        len(num, text.as_bytes())
    }

    fn m(num: u32, parts: &[Vec<u8>]) -> Vec<u8> {
        len(num, &parts.concat())
    }

    fn envelope(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(m(1, &[s(1, api_version), s(2, kind)]));
        out.extend(m(2, raw));
        out
    }

    fn unsupported(body: &[u8]) -> String {
        match decode(body) {
            Err(DecodeError::Unsupported(m)) => m,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn malformed(body: &[u8]) -> String {
        match decode(body) {
            Err(DecodeError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn kubectl_bodies_decode_to_the_json_kubectl_would_have_sent() {
        use serde_json::json;
        let cases = [
            (
                fixtures::NAMESPACE_PB,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                    "spec": {}, "status": {}}),
            ),
            (
                fixtures::CONFIGMAP_PB,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cfg", "namespace": "cap"},
                    "data": {"a": "1", "greeting": "hello world"}}),
            ),
            (
                fixtures::SECRET_PB,
                json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "s1", "namespace": "cap"},
                    "data": {"pw": "cEBzcw==", "user": "YWRtaW4="}}),
            ),
            (
                fixtures::DEPLOYMENT_PB,
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web2", "namespace": "cap", "labels": {"app": "web2"}},
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web2"}},
                        "template": {"metadata": {"labels": {"app": "web2"}},
                            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                "ports": [{"containerPort": 8080}], "resources": {}}]}},
                        "strategy": {}},
                    "status": {}}),
            ),
            (
                fixtures::SERVICE_PB,
                json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "np1", "namespace": "cap", "labels": {"app": "np1"}},
                    "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                            "targetPort": 8080}],
                        "selector": {"app": "np1"}, "type": "NodePort"},
                    "status": {"loadBalancer": {}}}),
            ),
            (
                fixtures::POD_COPY_PB,
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "pod1-copy", "namespace": "cap"},
                    "spec": {
                        "containers": [
                            {"name": "pod1", "image": "nginx:1.27",
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}],
                                "resources": {},
                                "terminationMessagePath": "/dev/termination-log",
                                "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePolicy": "File"},
                            {"name": "dbg", "image": "busybox:1.36", "command": ["sleep", "1000"],
                                "env": [{"name": "X", "value": "1"}], "resources": {},
                                "terminationMessagePolicy": "File"}],
                        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst", "securityContext": {},
                        "schedulerName": "default-scheduler", "priority": 0,
                        "enableServiceLinks": true},
                    "status": {}}),
            ),
            (
                fixtures::POD_NODE_PB,
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "node-debugger-n1-wjmg8"},
                    "spec": {
                        "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                        "containers": [{"name": "debugger", "image": "busybox:1.36",
                            "resources": {},
                            "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                            "terminationMessagePolicy": "File"}],
                        "restartPolicy": "Never", "nodeName": "n1", "hostNetwork": true,
                        "hostPID": true, "hostIPC": true, "tolerations": [{"operator": "Exists"}]},
                    "status": {}}),
            ),
            (
                fixtures::DELETE_OPTIONS_PB,
                json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 5}),
            ),
            (
                fixtures::HPA_PB,
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "web"},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web",
                            "apiVersion": "apps/v1"},
                        "minReplicas": 2, "maxReplicas": 5,
                        "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70}}}]},
                    "status": {"desiredReplicas": 0}}),
            ),
            (
                fixtures::CRONJOB_PB,
                json!({"apiVersion": "batch/v1", "kind": "CronJob",
                    "metadata": {"name": "c1", "namespace": "cap"},
                    "spec": {"schedule": "*/5 * * * *",
                        "jobTemplate": {"metadata": {"name": "c1"},
                            "spec": {"template": {"metadata": {},
                                "spec": {"containers": [{"name": "c1", "image": "busybox:1.36",
                                    "command": ["date"], "resources": {}}],
                                    "restartPolicy": "OnFailure"}}}}},
                    "status": {}}),
            ),
            (
                fixtures::JOB_FROM_PB,
                json!({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": "j2", "namespace": "cap",
                        "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                        "ownerReferences": [{"kind": "CronJob", "name": "c1",
                            "uid": "877cae88-ca15-476e-8629-10fba5a3c161",
                            "apiVersion": "batch/v1", "controller": true}]},
                    "spec": {"parallelism": 1, "completions": 1,
                        "template": {"metadata": {},
                            "spec": {"containers": [{"name": "c1", "image": "busybox:1.36",
                                    "command": ["date"], "resources": {},
                                    "terminationMessagePath": "/dev/termination-log",
                                    "imagePullPolicy": "IfNotPresent",
                                    "terminationMessagePolicy": "File"}],
                                "restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 30,
                                "dnsPolicy": "ClusterFirst", "securityContext": {},
                                "schedulerName": "default-scheduler",
                                "enableServiceLinks": true}},
                        "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": false,
                        "podReplacementPolicy": "TerminatingOrFailed"},
                    "status": {}}),
            ),
        ];
        for (body, want) in cases {
            let got = decode(&hex(body)).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn plain_zeros_are_left_out_and_pointer_zeros_kept() {
        // DeploymentSpec: replicas (*int32) = 0, minReadySeconds (int32) = 0, paused = false.
        let body = envelope(
            "apps/v1",
            "Deployment",
            &[
                m(1, &[s(1, "d"), s(3, ""), int(7, 0)]),
                m(2, &[int(1, 0), int(5, 0), int(7, 0)]),
            ],
        );
        assert_eq!(
            decode(&body).unwrap(),
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d"}, "spec": {"replicas": 0}})
        );
        // maxUnavailable (*IntOrString) = 0 stays; a ServicePort's zero targetPort goes.
        let rolling = envelope(
            "apps/v1",
            "Deployment",
            &[m(
                2,
                &[m(
                    4,
                    &[
                        s(1, "RollingUpdate"),
                        m(2, &[m(1, &[int(1, 0), int(2, 0)])]),
                    ],
                )],
            )],
        );
        assert_eq!(
            decode(&rolling).unwrap()["spec"]["strategy"],
            serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}})
        );
        let port = envelope("v1", "Service", &[m(2, &[m(1, &[int(3, 80), m(4, &[])])])]);
        assert_eq!(
            decode(&port).unwrap()["spec"]["ports"],
            serde_json::json!([{"port": 80}])
        );
    }

    #[test]
    fn well_known_types_take_their_json_form() {
        use serde_json::json;
        // 2026-01-02T03:04:05Z
        const T: i64 = 1_767_323_045;
        let pod = envelope(
            "v1",
            "Pod",
            &[
                m(1, &[s(1, "p"), m(8, &[int(1, T), int(2, 999)])]),
                m(
                    2,
                    &[
                        m(
                            2,
                            &[
                                s(1, "c"),
                                // resources: limits cpu=500m, requests memory=128Mi
                                m(
                                    8,
                                    &[
                                        m(1, &[s(1, "cpu"), m(2, &[s(1, "500m")])]),
                                        m(2, &[s(1, "memory"), m(2, &[s(1, "128Mi")])]),
                                    ],
                                ),
                                // livenessProbe.httpGet.port = "http" (IntOrString string)
                                m(10, &[m(1, &[m(2, &[m(2, &[int(1, 1), s(3, "http")])])])]),
                            ],
                        ),
                        // priority (*int32) = -5, sign-extended to ten bytes
                        int(25, -5),
                        // securityContext.supplementalGroups: repeated int64, unpacked
                        m(14, &[int(4, 1000), int(4, 2000)]),
                    ],
                ),
            ],
        );
        let v = decode(&pod).unwrap();
        assert_eq!(
            v["metadata"]["creationTimestamp"],
            json!("2026-01-02T03:04:05Z")
        );
        let c = &v["spec"]["containers"][0];
        assert_eq!(
            c["resources"],
            json!({"limits": {"cpu": "500m"}, "requests": {"memory": "128Mi"}})
        );
        assert_eq!(c["livenessProbe"], json!({"httpGet": {"port": "http"}}));
        assert_eq!(v["spec"]["priority"], json!(-5));
        assert_eq!(
            v["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000])
        );

        // MicroTime: microsecond precision.
        let lease = envelope(
            "coordination.k8s.io/v1",
            "Lease",
            &[m(2, &[s(1, "me"), m(4, &[int(1, T), int(2, 123_456_789)])])],
        );
        assert_eq!(
            decode(&lease).unwrap()["spec"],
            json!({"holderIdentity": "me", "renewTime": "2026-01-02T03:04:05.123456Z"})
        );

        // bytes → base64; a RawExtension → the embedded JSON.
        let secret = envelope("v1", "Secret", &[m(2, &[s(1, "k"), len(2, &[0, 255, 1])])]);
        assert_eq!(decode(&secret).unwrap()["data"], json!({"k": "AP8B"}));
        let revision = envelope(
            "apps/v1",
            "ControllerRevision",
            &[m(2, &[s(1, r#"{"spec":{"replicas":2}}"#)]), int(3, 4)],
        );
        let v = decode(&revision).unwrap();
        assert_eq!(v["data"], json!({"spec": {"replicas": 2}}));
        assert_eq!(v["revision"], json!(4));

        // Packed repeated int32 (JobSpec.podFailurePolicy.rules[].onExitCodes.values).
        let job = envelope(
            "batch/v1",
            "Job",
            &[m(
                2,
                &[m(
                    11,
                    &[m(
                        1,
                        &[s(1, "FailJob"), m(2, &[s(2, "In"), len(3, &[1, 42])])],
                    )],
                )],
            )],
        );
        assert_eq!(
            decode(&job).unwrap()["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"],
            json!({"operator": "In", "values": [1, 42]})
        );
    }

    #[test]
    fn go_durations_print_as_go_prints_them() {
        for (nanos, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (20_000_000, "20ms"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_001, "1h2m3.000000001s"),
            (-61_000_000_000, "-1m1s"),
        ] {
            assert_eq!(go_duration(nanos), want, "{nanos}");
        }
    }

    #[test]
    fn what_the_table_does_not_know_is_refused_not_dropped() {
        // ObjectMeta field 15 (clusterName, removed upstream).
        let body = envelope("v1", "Namespace", &[m(1, &[s(1, "x"), s(15, "c")])]);
        let msg = unsupported(&body);
        assert!(
            msg.contains("field 15 of meta/v1 ObjectMeta (at metadata)"),
            "{msg}"
        );
        assert!(msg.contains("JSON"), "{msg}");

        // PodSpec field 34 (ephemeralContainers) deep in a Deployment.
        let body = envelope(
            "apps/v1",
            "Deployment",
            &[m(2, &[m(3, &[m(2, &[m(34, &[s(1, "e")])])])])],
        );
        let msg = unsupported(&body);
        assert!(
            msg.contains("field 34 of core/v1 PodSpec (at spec.template.spec)"),
            "{msg}"
        );

        // A volume source the table does not cover (nfs = 7), inline in Volume.
        let body = envelope(
            "v1",
            "Pod",
            &[m(
                2,
                &[m(1, &[s(1, "v"), m(2, &[m(7, &[s(1, "server")])])])],
            )],
        );
        let msg = unsupported(&body);
        assert!(
            msg.contains("field 7 of core/v1 VolumeSource (at spec.volumes)"),
            "{msg}"
        );

        // A kind the table does not cover, an encoding, an embedded object that is not JSON.
        let msg = unsupported(&envelope("rbac.authorization.k8s.io/v1", "Role", &[]));
        assert!(msg.contains("rbac.authorization.k8s.io/v1 Role"), "{msg}");
        let mut gz = envelope("v1", "Namespace", &[]);
        gz.extend(s(3, "gzip"));
        unsupported(&gz);
        let revision = envelope("apps/v1", "ControllerRevision", &[m(2, &[s(1, "\u{1}x")])]);
        unsupported(&revision);
    }

    #[test]
    fn bodies_that_are_not_protobuf_are_malformed() {
        malformed(b"");
        malformed(b"{\"kind\":\"Namespace\"}");
        let ns = hex(fixtures::NAMESPACE_PB);
        malformed(&ns[..ns.len() - 1]);
        malformed(&ns[..20]);
        // name as a varint instead of a string
        malformed(&envelope("v1", "Namespace", &[m(1, &[int(1, 7)])]));
        // wire type 3 (groups)
        malformed(&envelope("v1", "Namespace", &[vec![0x0b]]));
        // an invalid UTF-8 string
        malformed(&envelope("v1", "Namespace", &[m(1, &[len(1, &[0xff])])]));
        // a time past year 9999
        malformed(&envelope(
            "v1",
            "Namespace",
            &[m(1, &[m(8, &[int(1, 300_000_000_000)])])],
        ));
        // no kind
        malformed(&envelope("v1", "", &[]));
    }

    #[test]
    fn errors_become_400_and_415() {
        let e = ApiError::from(DecodeError::Malformed("cut short".into()));
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        let e = ApiError::from(DecodeError::Unsupported("field 9".into()));
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (415, "UnsupportedMediaType", "field 9")
        );
    }

    #[test]
    fn no_input_panics() {
        let bodies: Vec<Vec<u8>> = [
            fixtures::NAMESPACE_PB,
            fixtures::CONFIGMAP_PB,
            fixtures::SECRET_PB,
            fixtures::DEPLOYMENT_PB,
            fixtures::SERVICE_PB,
            fixtures::POD_COPY_PB,
            fixtures::POD_NODE_PB,
            fixtures::DELETE_OPTIONS_PB,
            fixtures::HPA_PB,
            fixtures::CRONJOB_PB,
            fixtures::JOB_FROM_PB,
        ]
        .iter()
        .map(|h| hex(h))
        .collect();
        let check = |b: &[u8]| {
            if let Ok(v) = decode(b) {
                assert!(v.is_object());
            }
        };
        for body in &bodies {
            // every prefix
            for n in 0..body.len() {
                check(&body[..n]);
            }
            // every single-bit flip, and every byte set to 0x00 and 0xff
            for i in 0..body.len() {
                let mut b = body.clone();
                for bit in 0..8 {
                    b[i] ^= 1 << bit;
                    check(&b);
                    b[i] ^= 1 << bit;
                }
                for x in [0x00, 0xff] {
                    let saved = b[i];
                    b[i] = x;
                    check(&b);
                    b[i] = saved;
                }
            }
        }
        // random bytes after the magic, and random splices of the fixtures
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 300) as usize;
            let mut b = MAGIC.to_vec();
            b.extend((0..n).map(|_| next() as u8));
            check(&b);
            let body = &bodies[(next() % bodies.len() as u64) as usize];
            let mut b = body.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            check(&b);
        }
    }
}
