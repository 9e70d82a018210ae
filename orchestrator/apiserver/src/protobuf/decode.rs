//! A message's bytes to the JSON the client would have sent: each field through the schema
//! table, Go's `omitempty` applied to plain fields, and the well-known types (times, durations,
//! quantities, int-or-string, embedded objects) in their own JSON form.

use base64::Engine;
use serde_json::{Map, Value};

use super::schema::{Card, Field, Msg, Ty};
use super::wire::{Reader, Wire, utf8};
use super::{DecodeError, MAGIC, MAX_NESTING, SEND_JSON, decode_nested, malformed};

/// Decoding state: where we are (for messages) and how deep embedded objects nest.
pub(super) struct Cx {
    pub(super) path: Vec<&'static str>,
    pub(super) depth: usize,
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

pub(super) fn unknown_field(msg: &str, num: u32, path: &[&str]) -> DecodeError {
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
pub(super) fn decode_message(
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
