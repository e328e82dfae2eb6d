//! One session: fields with versions, and its timing.

use serde::{Deserialize, Serialize};

use crate::Millis;
pub use crate::fields::Field;
use crate::fields::PackedFields;

/// What a session is apart from its fields; what the storage keeps per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// The version of the latest change (0 for a session never written).
    pub version: u64,
    /// When it was created.
    pub created: Millis,
    /// When it was last read, written or touched.
    pub last_access: Millis,
    /// The sliding idle TTL in milliseconds.
    pub ttl_ms: u64,
    /// The absolute deadline from its lifetime, if it has one.
    pub lifetime_deadline: Option<Millis>,
}

impl SessionMeta {
    /// The instant the session stops existing: the earlier of the idle
    /// deadline and the absolute one. It is alive strictly before this.
    pub fn deadline(&self) -> Millis {
        let idle = self.last_access.saturating_add(self.ttl_ms);
        match self.lifetime_deadline {
            Some(abs) => idle.min(abs),
            None => idle,
        }
    }

    /// Whether the session has expired at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        now >= self.deadline()
    }
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Versions and timing.
    pub meta: SessionMeta,
    /// The fields, sorted by key, packed in one buffer.
    pub fields: PackedFields,
}
