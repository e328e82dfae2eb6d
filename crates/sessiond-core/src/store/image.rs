//! A [`Store`] as plain, sorted data (a snapshot of a replica).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Alias, Store, StoreConfig, StoreStats};
use crate::SessionId;
use crate::fields::PackedFields;
use crate::session::{Field, Session, SessionMeta};

/// One session in a [`StoreImage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionImage {
    /// Its id.
    pub id: SessionId,
    /// Versions and timing.
    pub meta: SessionMeta,
    /// Its fields, in their packed buffer (sorted by key): taking an image
    /// shares each session's buffer and loading one copies it once,
    /// instead of a key and a value allocated per field (a 1M-session
    /// snapshot took seconds longer to take and to load that way).
    pub fields: PackedFields,
}

/// One session in an image of engine formats 1 and 2: fields one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionImageV2 {
    /// Its id.
    pub id: SessionId,
    /// Versions and timing.
    pub meta: SessionMeta,
    /// Its fields, sorted by key.
    pub fields: Vec<(Bytes, Field)>,
}

/// A [`StoreImage`] as engine formats 1 and 2 wrote it (read to load older
/// snapshots; written only by tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImageV2 {
    /// The settings.
    pub config: StoreConfig,
    /// Every session held, by id.
    pub sessions: Vec<SessionImageV2>,
    /// Every alias, by old id.
    pub aliases: Vec<(SessionId, Alias)>,
    /// The last version handed out.
    pub last_version: u64,
    /// Sessions whose last access is not recorded in storage yet, by id.
    pub accessed: Vec<SessionId>,
    /// Counters.
    pub stats: StoreStats,
}

impl From<StoreImageV2> for StoreImage {
    fn from(old: StoreImageV2) -> Self {
        StoreImage {
            config: old.config,
            sessions: old
                .sessions
                .into_iter()
                .map(|s| SessionImage {
                    id: s.id,
                    meta: s.meta,
                    fields: PackedFields::from_entries(s.fields),
                })
                .collect(),
            aliases: old.aliases,
            last_version: old.last_version,
            accessed: old.accessed,
            stats: old.stats,
        }
    }
}

impl From<&StoreImage> for StoreImageV2 {
    fn from(image: &StoreImage) -> Self {
        StoreImageV2 {
            config: image.config,
            sessions: image
                .sessions
                .iter()
                .map(|s| SessionImageV2 {
                    id: s.id.clone(),
                    meta: s.meta,
                    fields: s.fields.iter().collect(),
                })
                .collect(),
            aliases: image.aliases.clone(),
            last_version: image.last_version,
            accessed: image.accessed.clone(),
            stats: image.stats,
        }
    }
}

/// A [`Store`] as plain data, sorted: see [`Store::image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImage {
    /// The settings.
    pub config: StoreConfig,
    /// Every session held (expired ones not purged yet included), by id.
    pub sessions: Vec<SessionImage>,
    /// Every alias, by old id.
    pub aliases: Vec<(SessionId, Alias)>,
    /// The last version handed out.
    pub last_version: u64,
    /// Sessions whose last access is not recorded in storage yet, by id.
    pub accessed: Vec<SessionId>,
    /// Counters.
    pub stats: StoreStats,
}

impl Store {
    /// The whole state as plain, sorted data: equal stores give equal
    /// images, and [`Store::from_image`] rebuilds an equal store. What a
    /// snapshot of a replica holds.
    pub fn image(&self) -> StoreImage {
        let mut sessions: Vec<SessionImage> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionImage {
                id: id.clone(),
                meta: s.meta,
                fields: s.fields.clone(),
            })
            .collect();
        sessions.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut aliases: Vec<(SessionId, Alias)> = self
            .aliases
            .iter()
            .map(|(old, a)| (old.clone(), a.clone()))
            .collect();
        aliases.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut accessed: Vec<SessionId> = self.accessed.iter().cloned().collect();
        accessed.sort_unstable();
        StoreImage {
            config: self.config,
            sessions,
            aliases,
            last_version: self.last_version,
            accessed,
            stats: self.stats,
        }
    }

    /// The store an [`image`](Store::image) was taken of (with an empty
    /// outbox).
    pub fn from_image(image: StoreImage) -> Self {
        let mut store = Store::new(image.config);
        store.restore_sessions(
            image
                .sessions
                .into_iter()
                .map(|s| {
                    (
                        s.id,
                        Session {
                            meta: s.meta,
                            fields: s.fields,
                        },
                    )
                })
                .collect(),
        );
        for (old, alias) in image.aliases {
            store.link_alias(old, alias);
        }
        store.last_version = image.last_version;
        store.accessed = image.accessed.into_iter().collect();
        store.stats = image.stats;
        store
    }
}
