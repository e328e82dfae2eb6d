//! A session's fields packed into one buffer.
//!
//! Sessions are small maps (PHP apps keep ten-odd keys of a few dozen bytes
//! each) and there are millions of them, so per-field overhead dominates
//! memory: a `HashMap<Bytes, Field>` of ten entries spends about 1.2 KB on
//! buckets and two heap allocations per field before any data. Here a
//! session's fields are one allocation, entries sorted by key:
//!
//! ```text
//! entry := key_len: u32 LE | value_len: u32 LE | version: u64 LE | key | value
//! ```
//!
//! Lookups walk the headers (a session has few keys); a commit builds the
//! next buffer in one merge pass. Reads hand out [`Bytes`] slices of the
//! buffer, so replying copies nothing, and values written over the network
//! are copied in, so no session pins a connection's read buffer.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

const HEADER: usize = 16;

/// A field of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The value: opaque bytes.
    pub value: Bytes,
    /// The version of the commit that last wrote this field.
    pub version: u64,
}

/// A session's fields, sorted by key, in one buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedFields {
    buf: Bytes,
    len: usize,
}

/// One entry as it lies in the buffer.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    version: u64,
}

/// Walks the entries of a buffer. The buffer is only ever built by this
/// module, so a malformed one cannot occur; the walk still stops (instead of
/// panicking) at anything that does not fit.
#[derive(Clone)]
struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let header = self.rest.get(..HEADER)?;
        let key_len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
        let value_len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
        let version = u64::from_le_bytes(header[8..16].try_into().ok()?);
        let body = self.rest.get(HEADER..)?;
        let key = body.get(..key_len)?;
        let value = body.get(key_len..key_len.checked_add(value_len)?)?;
        self.rest = body.get(key_len + value_len..)?;
        Some(Entry {
            key,
            value,
            version,
        })
    }
}

fn push_entry(buf: &mut Vec<u8>, key: &[u8], value: &[u8], version: u64) {
    // Keys and values are bounded by the request size limit, far below 4 GiB.
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

fn entry_size(key: &[u8], value: &[u8]) -> usize {
    HEADER + key.len() + value.len()
}

impl PackedFields {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from entries in any order; a repeated key keeps its last entry.
    pub fn from_entries(entries: impl IntoIterator<Item = (Bytes, Field)>) -> Self {
        let sorted: BTreeMap<Bytes, Field> = entries.into_iter().collect();
        let size = sorted.iter().map(|(k, f)| entry_size(k, &f.value)).sum();
        let mut buf = Vec::with_capacity(size);
        for (key, field) in &sorted {
            push_entry(&mut buf, key, &field.value, field.version);
        }
        Self {
            buf: Bytes::from(buf),
            len: sorted.len(),
        }
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the buffer (headers included).
    pub fn packed_size(&self) -> usize {
        self.buf.len()
    }

    fn entries(&self) -> Entries<'_> {
        Entries { rest: &self.buf }
    }

    fn find(&self, key: &[u8]) -> Option<Entry<'_>> {
        // Sorted: stop at the first key past the one sought.
        self.entries()
            .take_while(|e| e.key <= key)
            .find(|e| e.key == key)
    }

    fn field(&self, e: Entry<'_>) -> Field {
        Field {
            value: self.buf.slice_ref(e.value),
            version: e.version,
        }
    }

    /// The field under `key`; its value shares this buffer.
    pub fn get(&self, key: &[u8]) -> Option<Field> {
        self.find(key).map(|e| self.field(e))
    }

    /// The version of `key`, 0 when absent.
    pub fn version(&self, key: &[u8]) -> u64 {
        self.find(key).map_or(0, |e| e.version)
    }

    /// The fields under `keys`, in the order asked, in one merge pass over
    /// the buffer (O(fields + keys · log keys)): for requests that name many
    /// keys, where a lookup each would walk the buffer once per key.
    pub fn get_many(&self, keys: &[&[u8]]) -> Vec<Option<Field>> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(keys[b]));
        let mut found = vec![None; keys.len()];
        let mut entries = self.entries().peekable();
        for i in order {
            while entries.next_if(|e| e.key < keys[i]).is_some() {}
            if let Some(e) = entries.peek().filter(|e| e.key == keys[i]) {
                found[i] = Some(self.field(*e));
            }
        }
        found
    }

    /// Every field, sorted by key; keys and values share this buffer.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Field)> + '_ {
        self.entries()
            .map(|e| (self.buf.slice_ref(e.key), self.field(e)))
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.entries().map(|e| self.buf.slice_ref(e.key))
    }

    /// Every key, sorted, each copied out of the buffer: for a session
    /// that goes away, so the keys its deletion carries to storage do not
    /// keep its whole buffer alive until they are written.
    pub fn owned_keys(&self) -> Vec<Bytes> {
        self.entries()
            .map(|e| Bytes::copy_from_slice(e.key))
            .collect()
    }

    /// The highest version of any field (0 when empty).
    pub fn max_version(&self) -> u64 {
        self.entries().map(|e| e.version).max().unwrap_or(0)
    }

    /// These fields with `changes` applied: `Some(value)` sets the key at
    /// `version`, `None` removes it. One pass over both, one allocation.
    pub fn with_changes(&self, changes: &BTreeMap<Bytes, Option<Bytes>>, version: u64) -> Self {
        let mut size = 0usize;
        let mut len = 0usize;
        for e in self.entries() {
            if !changes.contains_key(e.key) {
                size += entry_size(e.key, e.value);
                len += 1;
            }
        }
        for (key, value) in changes {
            if let Some(value) = value {
                size += entry_size(key, value);
                len += 1;
            }
        }
        let mut buf = Vec::with_capacity(size);
        let mut old = self.entries().peekable();
        for (key, value) in changes {
            while let Some(e) = old.next_if(|e| e.key < key.as_ref()) {
                push_entry(&mut buf, e.key, e.value, e.version);
            }
            old.next_if(|e| e.key == key.as_ref());
            if let Some(value) = value {
                push_entry(&mut buf, key, value, version);
            }
        }
        for e in old {
            push_entry(&mut buf, e.key, e.value, e.version);
        }
        Self {
            buf: Bytes::from(buf),
            len,
        }
    }
}

/// Builds [`PackedFields`] from entries that mostly come sorted (rows read
/// back from storage, ordered by key), without an intermediate map. One
/// builder serves many sessions: [`PackedFieldsBuilder::finish`] copies the
/// gathered entries into an exact-size buffer and starts over, so loading
/// millions of sessions makes one allocation per session.
#[derive(Debug)]
pub struct PackedFieldsBuilder {
    buf: Vec<u8>,
    len: usize,
    last_key: Option<(usize, usize)>,
    sorted: bool,
}

impl Default for PackedFieldsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackedFieldsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            len: 0,
            last_key: None,
            sorted: true,
        }
    }

    /// Adds an entry.
    pub fn push(&mut self, key: &[u8], value: &[u8], version: u64) {
        if let Some((start, end)) = self.last_key
            && self.buf.get(start..end).is_none_or(|last| last >= key)
        {
            self.sorted = false;
        }
        let start = self.buf.len() + HEADER;
        push_entry(&mut self.buf, key, value, version);
        self.last_key = Some((start, start + key.len()));
        self.len += 1;
    }

    /// The fields pushed since the last `finish`; sorts (and drops repeated
    /// keys, keeping the last) only if they did not come in strictly
    /// ascending key order. The builder is empty afterwards.
    pub fn finish(&mut self) -> PackedFields {
        let fields = if self.sorted {
            PackedFields {
                buf: Bytes::copy_from_slice(&self.buf),
                len: self.len,
            }
        } else {
            let entries: Vec<(Bytes, Field)> = Entries { rest: &self.buf }
                .map(|e| {
                    (
                        Bytes::copy_from_slice(e.key),
                        Field {
                            value: Bytes::copy_from_slice(e.value),
                            version: e.version,
                        },
                    )
                })
                .collect();
            PackedFields::from_entries(entries)
        };
        self.buf.clear();
        self.len = 0;
        self.last_key = None;
        self.sorted = true;
        fields
    }
}

impl PackedFields {
    /// The buffer itself (see the module docs for its layout): what a
    /// snapshot stores, so that taking and loading one copies each session
    /// once instead of splitting it into fields.
    pub fn packed(&self) -> &Bytes {
        &self.buf
    }

    /// Takes a buffer from [`PackedFields::packed`] back, checking it: every
    /// entry whole, keys strictly increasing, nothing left over. `None` for
    /// anything else (a snapshot is read from disk or from a peer).
    pub fn from_packed(buf: Bytes) -> Option<Self> {
        let mut len = 0;
        let mut previous: Option<&[u8]> = None;
        let mut rest: &[u8] = &buf;
        while !rest.is_empty() {
            let mut walk = Entries { rest };
            let entry = walk.next()?;
            if previous.is_some_and(|p| p >= entry.key) {
                return None;
            }
            previous = Some(entry.key);
            rest = walk.rest;
            len += 1;
        }
        Some(Self { buf, len })
    }
}

impl Serialize for PackedFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.buf)
    }
}

impl<'de> Deserialize<'de> for PackedFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let buf = Bytes::deserialize(deserializer)?;
        Self::from_packed(buf)
            .ok_or_else(|| serde::de::Error::custom("malformed packed session fields"))
    }
}

impl fmt::Debug for PackedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries().map(|e| {
                (
                    String::from_utf8_lossy(e.key),
                    (e.version, String::from_utf8_lossy(e.value)),
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_packed_buffer_comes_back_only_when_well_formed() {
        let fields = PackedFields::from_entries([
            (Bytes::from_static(b"b"), field("2", 2)),
            (Bytes::from_static(b"a"), field("1", 1)),
        ]);
        let back = PackedFields::from_packed(fields.packed().clone()).expect("well formed");
        assert_eq!(back, fields);
        assert_eq!(back.len(), 2);
        assert_eq!(
            PackedFields::from_packed(Bytes::new()),
            Some(PackedFields::new())
        );
        let raw = fields.packed().to_vec();
        // Cut short, trailing garbage, a length past the end.
        assert_eq!(
            PackedFields::from_packed(Bytes::from(raw[..raw.len() - 1].to_vec())),
            None
        );
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(PackedFields::from_packed(Bytes::from(longer)), None);
        let mut bad_len = raw.clone();
        bad_len[0] = 0xff;
        assert_eq!(PackedFields::from_packed(Bytes::from(bad_len)), None);
        // Keys out of order, and a repeated key.
        let mut swapped = Vec::new();
        push_entry(&mut swapped, b"b", b"2", 2);
        push_entry(&mut swapped, b"a", b"1", 1);
        assert_eq!(PackedFields::from_packed(Bytes::from(swapped)), None);
        let mut twice = Vec::new();
        push_entry(&mut twice, b"a", b"1", 1);
        push_entry(&mut twice, b"a", b"2", 2);
        assert_eq!(PackedFields::from_packed(Bytes::from(twice)), None);
    }

    fn field(value: &str, version: u64) -> Field {
        Field {
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
        }
    }

    #[test]
    fn lookups_find_exactly_the_keys_present() {
        let f = PackedFields::from_entries([
            (Bytes::from("b"), field("2", 5)),
            (Bytes::from("a"), field("1", 3)),
            (Bytes::from(""), field("empty key", 1)),
        ]);
        assert_eq!(f.len(), 3);
        assert_eq!(f.get(b"a"), Some(field("1", 3)));
        assert_eq!(f.get(b""), Some(field("empty key", 1)));
        assert_eq!(f.version(b"b"), 5);
        assert_eq!(f.version(b"c"), 0);
        assert_eq!(f.get(b"ab"), None);
        let keys: Vec<Bytes> = f.keys().collect();
        assert_eq!(
            keys,
            vec![Bytes::from(""), Bytes::from("a"), Bytes::from("b")]
        );
        assert_eq!(f.max_version(), 5);
    }

    #[test]
    fn get_many_answers_in_the_order_asked() {
        let f = PackedFields::from_entries([
            (Bytes::from("a"), field("1", 1)),
            (Bytes::from("c"), field("3", 3)),
        ]);
        let got = f.get_many(&[b"c", b"b", b"a", b"c", b"z", b""]);
        assert_eq!(
            got,
            vec![
                Some(field("3", 3)),
                None,
                Some(field("1", 1)),
                Some(field("3", 3)),
                None,
                None
            ]
        );
    }

    #[test]
    fn changes_set_replace_and_remove() {
        let f = PackedFields::from_entries([
            (Bytes::from("a"), field("1", 1)),
            (Bytes::from("c"), field("3", 1)),
        ]);
        let mut changes = BTreeMap::new();
        changes.insert(Bytes::from("a"), None);
        changes.insert(Bytes::from("b"), Some(Bytes::from("new")));
        changes.insert(Bytes::from("c"), Some(Bytes::from("33")));
        changes.insert(Bytes::from("z"), None);
        let g = f.with_changes(&changes, 7);
        assert_eq!(g.len(), 2);
        assert_eq!(g.get(b"a"), None);
        assert_eq!(g.get(b"b"), Some(field("new", 7)));
        assert_eq!(g.get(b"c"), Some(field("33", 7)));
        // The original is untouched (a reader may still hold it).
        assert_eq!(f.get(b"a"), Some(field("1", 1)));
        assert_eq!(g.packed_size(), 2 * HEADER + 1 + 3 + 1 + 2);
    }

    #[test]
    fn builder_sorts_entries_that_come_out_of_order() {
        let mut b = PackedFieldsBuilder::new();
        b.push(b"b", b"2", 2);
        b.push(b"a", b"1", 1);
        b.push(b"b", b"22", 3);
        let f = b.finish();
        assert_eq!(f.len(), 2);
        // The builder starts over for the next session.
        b.push(b"x", b"9", 9);
        assert_eq!(
            b.finish().keys().collect::<Vec<_>>(),
            vec![Bytes::from("x")]
        );
        let all: Vec<(Bytes, Field)> = f.iter().collect();
        assert_eq!(
            all,
            vec![
                (Bytes::from("a"), field("1", 1)),
                (Bytes::from("b"), field("22", 3))
            ]
        );
    }

    /// key, (value, version)
    type ModelEntry = (Vec<u8>, (Vec<u8>, u64));

    proptest! {
        /// The packed map behaves as a BTreeMap under any sequence of
        /// change sets, and iterates in key order.
        #[test]
        fn behaves_as_a_sorted_map(
            start in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..4),
                (proptest::collection::vec(any::<u8>(), 0..6), 0u64..100), 0..8),
            steps in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..4),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)), 0..6),
                0..6),
        ) {
            let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = start.clone();
            let mut builder = PackedFieldsBuilder::new();
            for (k, (v, ver)) in &start {
                builder.push(k, v, *ver);
            }
            let mut packed = builder.finish();
            prop_assert!(builder.finish().is_empty());
            for (i, step) in steps.iter().enumerate() {
                let version = 1000 + i as u64;
                let changes: BTreeMap<Bytes, Option<Bytes>> = step
                    .iter()
                    .map(|(k, v)| (Bytes::from(k.clone()), v.clone().map(Bytes::from)))
                    .collect();
                packed = packed.with_changes(&changes, version);
                for (k, v) in step {
                    match v {
                        Some(v) => { model.insert(k.clone(), (v.clone(), version)); }
                        None => { model.remove(k); }
                    }
                }
                prop_assert_eq!(packed.len(), model.len());
                let got: Vec<ModelEntry> = packed
                    .iter()
                    .map(|(k, f)| (k.to_vec(), (f.value.to_vec(), f.version)))
                    .collect();
                let want: Vec<ModelEntry> = model.clone().into_iter().collect();
                prop_assert_eq!(got, want);
                for k in step.keys() {
                    prop_assert_eq!(packed.version(k), model.get(k).map_or(0, |(_, v)| *v));
                }
                // One merge pass answers as one lookup per key would.
                let asked: Vec<&[u8]> = step.keys().chain(start.keys()).map(Vec::as_slice).collect();
                let each: Vec<Option<Field>> = asked.iter().map(|k| packed.get(k)).collect();
                prop_assert_eq!(packed.get_many(&asked), each);
            }
        }
    }
}
