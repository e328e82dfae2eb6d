//! What the store's operations take and return, and the [`Mutation`]s it
//! hands the storage.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::session::{Field, SessionMeta};
use crate::{Millis, SessionId};

/// A change the storage must make, in the order the store made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Write the session's metadata (creates it on disk if new).
    PutMeta {
        /// The session.
        id: SessionId,
        /// Its metadata now.
        meta: SessionMeta,
    },
    /// Write one field.
    PutField {
        /// The session.
        id: SessionId,
        /// The key.
        key: Bytes,
        /// The field.
        field: Field,
    },
    /// Delete one field.
    DelField {
        /// The session.
        id: SessionId,
        /// The key.
        key: Bytes,
    },
    /// Delete the session's metadata and the listed fields (all it had).
    DelSession {
        /// The session.
        id: SessionId,
        /// Every key it had.
        keys: Vec<Bytes>,
    },
    /// Record that `old` answers for `new` until `until`.
    PutAlias {
        /// The old id.
        old: SessionId,
        /// The new id.
        new: SessionId,
        /// End of the grace period.
        until: Millis,
    },
    /// Forget an alias.
    DelAlias {
        /// The old id.
        old: SessionId,
    },
}

/// Options of [`Store::read`](super::Store::read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Create the session empty when it does not exist.
    pub create: bool,
    /// Set the idle TTL (ms).
    pub ttl_ms: Option<u64>,
    /// Absolute lifetime (ms), for a session created here.
    pub lifetime_ms: Option<u64>,
    /// Only these keys (all when `None`).
    pub keys: Option<Vec<Bytes>>,
}

/// A field as a read returns it; `value` is `None` for an absent key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadField {
    /// The key.
    pub key: Bytes,
    /// Its version, 0 when absent.
    pub version: u64,
    /// Its value, `None` when absent.
    pub value: Option<Bytes>,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// The session's current id (the new one when read through an alias).
    pub id: SessionId,
    /// The session version.
    pub version: u64,
    /// Whether this read created the session.
    pub created: bool,
    /// The fields asked for, sorted by key when all were asked for.
    pub fields: Vec<ReadField>,
}

/// One operation of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`, if its version is `if_version` when given.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The version the key must have (0: absent).
        if_version: Option<u64>,
    },
    /// Delete `key`, if its version is `if_version` when given.
    Del {
        /// The key.
        key: Bytes,
        /// The version the key must have (0: absent).
        if_version: Option<u64>,
    },
}

impl Op {
    /// The key the op touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Set { key, .. } | Op::Del { key, .. } => key,
        }
    }

    pub(super) fn if_version(&self) -> Option<u64> {
        match self {
            Op::Set { if_version, .. } | Op::Del { if_version, .. } => *if_version,
        }
    }
}

/// A delta to apply atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// Create the session if it does not exist.
    pub create: bool,
    /// Set the idle TTL (ms).
    pub ttl_ms: Option<u64>,
    /// Absolute lifetime (ms), for a session created here.
    pub lifetime_ms: Option<u64>,
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

/// What a successful commit returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// The session version after the commit.
    pub version: u64,
    /// Per op, the key's version after it (0 for a delete).
    pub op_versions: Vec<u64>,
}

/// What a compare-and-set returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasOutcome {
    /// The value matched and was replaced; the key's new version.
    Swapped {
        /// The new version.
        version: u64,
    },
    /// The value did not match; the key's current version and value.
    Mismatch {
        /// Current version (0: absent).
        version: u64,
        /// Current value.
        value: Option<Bytes>,
    },
}

/// Counters the server exports as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Sessions removed because they expired.
    pub expired: u64,
    /// Sessions created.
    pub created: u64,
    /// Sessions destroyed by clients.
    pub destroyed: u64,
}
