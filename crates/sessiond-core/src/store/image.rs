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
    /// Its fields, sorted by key.
    pub fields: Vec<(Bytes, Field)>,
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
                fields: s.fields.iter().collect(),
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
                            fields: PackedFields::from_entries(s.fields),
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
