//! A minimal protobuf writer for the gnostic documents of `/openapi/v2`.

/// A protobuf message being written: length-delimited fields, varint booleans; proto3 leaves
/// out empty strings and false.
#[derive(Debug, Clone, Default)]
pub(super) struct Pb(pub(super) Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Pb {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub(super) fn string(&mut self, field: u32, s: &str) -> &mut Pb {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
        self
    }

    pub(super) fn message(&mut self, field: u32, m: &Pb) -> &mut Pb {
        self.bytes(field, &m.0)
    }

    pub(super) fn boolean(&mut self, field: u32, b: bool) -> &mut Pb {
        if b {
            self.varint(u64::from(field) << 3);
            self.varint(1);
        }
        self
    }
}
