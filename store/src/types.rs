//! The etcd v3 data model: keys and values as bytes, one global revision, per-key create and
//! modify revisions and versions, transactions of compares and operations, watch events.

use crate::error::{Error, Result};

/// A key and its value at some revision, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of the last change.
    pub mod_revision: i64,
    /// How many times the key changed since it was created (1 on creation).
    pub version: i64,
}

/// Which keys an operation touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRange {
    /// Exactly one key.
    Key(Vec<u8>),
    /// Every key starting with the prefix.
    Prefix(Vec<u8>),
    /// `[start, end)`.
    Between(Vec<u8>, Vec<u8>),
    /// Every key `>= start`.
    From(Vec<u8>),
}

impl KeyRange {
    pub fn key(k: impl Into<Vec<u8>>) -> Self {
        KeyRange::Key(k.into())
    }

    pub fn prefix(p: impl Into<Vec<u8>>) -> Self {
        KeyRange::Prefix(p.into())
    }

    /// Refuses what etcd refuses: an empty key, and a range whose start is after its end.
    pub fn validate(&self) -> Result<()> {
        match self {
            KeyRange::Key(k) if k.is_empty() => Err(Error::EmptyKey),
            KeyRange::Between(s, e) if s > e => Err(Error::InvalidRange {
                start: s.clone(),
                end: e.clone(),
            }),
            KeyRange::Between(s, _) | KeyRange::From(s) if s.is_empty() => Err(Error::EmptyKey),
            _ => Ok(()),
        }
    }

    /// The half-open interval `[start, end)`; `end` None means "to the last key".
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
            KeyRange::Between(s, e) => (s.clone(), Some(e.clone())),
            KeyRange::From(s) => (s.clone(), None),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Between(s, e) => key >= s.as_slice() && key < e.as_slice(),
            KeyRange::From(s) => key >= s.as_slice(),
        }
    }
}

/// The smallest key greater than every key with prefix `p`; None when there is none (all 0xff,
/// or empty: every key).
pub fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A read of a range of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many keys (0: no limit).
    pub limit: usize,
    /// Read the store as it was at this revision (None: now).
    pub revision: Option<i64>,
    /// Leave values out (for counting and listing names).
    pub keys_only: bool,
}

impl RangeRequest {
    pub fn new(range: KeyRange) -> Self {
        RangeRequest {
            range,
            limit: 0,
            revision: None,
            keys_only: false,
        }
    }

    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    pub fn at(mut self, revision: i64) -> Self {
        self.revision = Some(revision);
        self
    }
}

/// The keys of a range, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched in all.
    pub count: i64,
    /// The store's revision the read was served at (the current one, for a read "now").
    pub revision: i64,
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ModRevision(i64),
    CreateRevision(i64),
    Version(i64),
    Value(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A condition on one key. A missing key has revisions and version 0 (and no value, so a value
/// compare on it is false), exactly as in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: Target,
}

impl Compare {
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: Target::ModRevision(rev),
        }
    }

    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: Target::CreateRevision(rev),
        }
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: Target::Version(version),
        }
    }

    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op,
            target: Target::Value(value.into()),
        }
    }

    /// Whether the compare holds for `kv` (None: the key does not exist).
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord = match (&self.target, kv) {
            (Target::ModRevision(r), _) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            (Target::CreateRevision(r), _) => kv.map_or(0, |k| k.create_revision).cmp(r),
            (Target::Version(v), _) => kv.map_or(0, |k| k.version).cmp(v),
            (Target::Value(v), Some(k)) => k.value.as_slice().cmp(v.as_slice()),
            (Target::Value(_), None) => return false,
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Less => ord == Ordering::Less,
            CompareOp::Greater => ord == Ordering::Greater,
        }
    }
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { range: KeyRange },
    Range(RangeRequest),
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(range: KeyRange) -> Self {
        Op::Delete { range }
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Op::Range(RangeRequest::new(KeyRange::Key(key.into())))
    }
}

/// If every compare holds, `success` runs, else `failure`; all at one revision, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Refuses what etcd refuses: empty keys, bad ranges, and a key written twice in one branch.
    pub fn validate(&self) -> Result<()> {
        for c in &self.compares {
            if c.key.is_empty() {
                return Err(Error::EmptyKey);
            }
        }
        for branch in [&self.success, &self.failure] {
            // etcd refuses a key written twice in a branch (a put inside a deleted range too);
            // deleted ranges may overlap each other.
            let mut written: Vec<KeyRange> = Vec::new();
            for op in branch {
                let touched = match op {
                    Op::Put { key, .. } if key.is_empty() => return Err(Error::EmptyKey),
                    Op::Put { key, .. } => KeyRange::Key(key.clone()),
                    Op::Delete { range } => {
                        range.validate()?;
                        range.clone()
                    }
                    Op::Range(r) => {
                        r.range.validate()?;
                        continue;
                    }
                };
                let clash = |w: &KeyRange| match (w, &touched) {
                    (KeyRange::Key(k), other) | (other, KeyRange::Key(k)) => other.contains(k),
                    _ => false,
                };
                if written.iter().any(clash) {
                    return Err(Error::DuplicateKey);
                }
                written.push(touched);
            }
        }
        Ok(())
    }
}

/// The answer to one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// The key as it was before the put (None: it did not exist).
    Put {
        prev: Option<KeyValue>,
    },
    /// The keys deleted, as they were.
    Delete {
        deleted: Vec<KeyValue>,
    },
    Range(RangeResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
    /// The store's revision after the transaction (unchanged if it wrote nothing).
    pub revision: i64,
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key, with `mod_revision` the deleting revision and an empty value.
    pub kv: KeyValue,
    /// The key before this change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// What to watch, and from when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// Deliver every change with revision >= this; None: only changes after now.
    pub start_revision: Option<i64>,
}

impl WatchRequest {
    pub fn new(range: KeyRange) -> Self {
        WatchRequest {
            range,
            start_revision: None,
        }
    }

    pub fn from_revision(mut self, rev: i64) -> Self {
        self.start_revision = Some(rev);
        self
    }
}

/// The events of one revision (a transaction's changes arrive together), in key order of
/// application. `revision` is that revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: i64,
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges_contain_what_they_say() {
        assert!(KeyRange::prefix("/a/").contains(b"/a/b"));
        assert!(!KeyRange::prefix("/a/").contains(b"/ab"));
        assert!(KeyRange::Between(b"b".to_vec(), b"d".to_vec()).contains(b"c"));
        assert!(!KeyRange::Between(b"b".to_vec(), b"d".to_vec()).contains(b"d"));
        assert!(KeyRange::From(b"m".to_vec()).contains(b"z"));
    }

    #[test]
    fn bad_keys_and_ranges_are_refused() {
        assert!(matches!(KeyRange::key("").validate(), Err(Error::EmptyKey)));
        assert!(matches!(
            KeyRange::Between(b"z".to_vec(), b"a".to_vec()).validate(),
            Err(Error::InvalidRange { .. })
        ));
        assert!(
            KeyRange::prefix("").validate().is_ok(),
            "an empty prefix is every key"
        );
        let dup = Txn::new().and_then([Op::put("k", "1"), Op::put("k", "2")]);
        assert!(matches!(dup.validate(), Err(Error::DuplicateKey)));
        let dup = Txn::new().and_then([Op::delete(KeyRange::prefix("/a/")), Op::put("/a/x", "2")]);
        assert!(matches!(dup.validate(), Err(Error::DuplicateKey)));
        let ok = Txn::new()
            .and_then([Op::put("k", "1")])
            .or_else([Op::put("k", "2")]);
        assert!(ok.validate().is_ok(), "branches are separate");
    }

    #[test]
    fn compares_on_a_missing_key_see_zeroes() {
        assert!(Compare::mod_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::version("k", CompareOp::Less, 1).holds(None));
        assert!(!Compare::value("k", CompareOp::Equal, "").holds(None));
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
        };
        assert!(Compare::mod_revision("k", CompareOp::Equal, 5).holds(Some(&kv)));
        assert!(Compare::create_revision("k", CompareOp::Greater, 2).holds(Some(&kv)));
        assert!(Compare::value("k", CompareOp::NotEqual, "x").holds(Some(&kv)));
    }
}
