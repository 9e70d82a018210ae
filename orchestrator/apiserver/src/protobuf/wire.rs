//! The protobuf wire format: varints, field keys and wire types, length-delimited values. A
//! [`Reader`] yields each field of a message whole, so skipping a field is reading it.

use super::{DecodeError, malformed};

/// One field's value as it is on the wire.
#[derive(Clone, Copy)]
pub(super) enum Wire<'a> {
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

    pub(super) fn bytes(self, msg: &str, num: u32) -> Result<&'a [u8], DecodeError> {
        match self {
            Wire::Len(b) => Ok(b),
            other => Err(wrong_wire(msg, num, other)),
        }
    }

    pub(super) fn varint(self, msg: &str, num: u32) -> Result<u64, DecodeError> {
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
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(super) fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(super) fn varint(&mut self) -> Result<u64, DecodeError> {
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
    pub(super) fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
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

pub(super) fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string is not valid UTF-8"))
}
