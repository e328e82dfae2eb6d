//! Storage in memory, shared between clones: survives a simulated restart
//! inside one process, nothing more.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sessiond_core::{Alias, Field, Mutation, PackedFields, Session, SessionId, SessionMeta};

use super::{Loaded, Storage, StorageError};

#[derive(Debug, Default)]
struct Inner {
    metas: HashMap<SessionId, SessionMeta>,
    fields: BTreeMap<(SessionId, Bytes), Field>,
    aliases: HashMap<SessionId, Alias>,
    version_floor: u64,
    fence_epoch: u64,
}

/// Storage in memory. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage(Arc<Mutex<Inner>>);

impl Storage for MemoryStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        let inner = self.0.lock();
        let mut fields: HashMap<&SessionId, Vec<(Bytes, Field)>> = HashMap::new();
        for ((id, key), field) in &inner.fields {
            fields
                .entry(id)
                .or_default()
                .push((key.clone(), field.clone()));
        }
        let sessions: Vec<(SessionId, Session)> = inner
            .metas
            .iter()
            .map(|(id, meta)| {
                let entries = fields.remove(id).unwrap_or_default();
                (
                    id.clone(),
                    Session {
                        meta: *meta,
                        fields: PackedFields::from_entries(entries),
                    },
                )
            })
            .collect();
        Ok(Loaded {
            sessions,
            aliases: inner.aliases.clone(),
            version_floor: inner.version_floor,
            fence_epoch: inner.fence_epoch,
        })
    }

    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        _sync: bool,
    ) -> Result<(), StorageError> {
        let mut inner = self.0.lock();
        for m in batch {
            match m {
                Mutation::PutMeta { id, meta } => {
                    inner.metas.insert(id.clone(), *meta);
                }
                Mutation::PutField { id, key, field } => {
                    inner
                        .fields
                        .insert((id.clone(), key.clone()), field.clone());
                }
                Mutation::DelField { id, key } => {
                    inner.fields.remove(&(id.clone(), key.clone()));
                }
                Mutation::DelSession { id, keys } => {
                    inner.metas.remove(id);
                    for key in keys {
                        inner.fields.remove(&(id.clone(), key.clone()));
                    }
                }
                Mutation::PutAlias { old, new, until } => {
                    inner.aliases.insert(
                        old.clone(),
                        Alias {
                            target: new.clone(),
                            until: *until,
                        },
                    );
                }
                Mutation::DelAlias { old } => {
                    inner.aliases.remove(old);
                }
            }
        }
        inner.version_floor = inner.version_floor.max(version_floor);
        Ok(())
    }

    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        self.0.lock().fence_epoch = epoch;
        Ok(())
    }
}
