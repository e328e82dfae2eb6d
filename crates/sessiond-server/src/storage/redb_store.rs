//! Storage in redb: one file, ACID transactions, copy-on-write B-trees.
//!
//! Tables:
//! - `sessions`: id → (version, created, last_access, ttl_ms, lifetime_deadline or 0)
//! - `fields`: (id, key) → (version, value)
//! - `aliases`: old id → (new id, until)
//! - `meta`: name → u64 (`version_floor`, `fence_epoch`)
//!
//! Fields are stored one per row, so a commit that changes one key of a
//! large session writes that key only.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use sessiond_core::{Alias, Field, Mutation, Session, SessionId, SessionMeta};

use super::{Loaded, Storage, StorageError};

type MetaRow = (u64, u64, u64, u64, u64);
const SESSIONS: TableDefinition<&str, MetaRow> = TableDefinition::new("sessions");
type FieldKey<'a> = (&'a str, &'a [u8]);
type FieldRow<'a> = (u64, &'a [u8]);
const FIELDS: TableDefinition<FieldKey, FieldRow> = TableDefinition::new("fields");
const ALIASES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("aliases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Storage in a redb file.
pub struct RedbStorage {
    db: Database,
}

fn engine(e: impl std::fmt::Display) -> StorageError {
    StorageError::Engine(e.to_string())
}

impl RedbStorage {
    /// Opens (or creates) the database file at `path`, creating its tables.
    ///
    /// # Errors
    /// Engine failures (unreadable file, a file that is not redb, …).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::create(path).map_err(engine)?;
        let txn = db.begin_write().map_err(engine)?;
        {
            txn.open_table(SESSIONS).map_err(engine)?;
            txn.open_table(FIELDS).map_err(engine)?;
            txn.open_table(ALIASES).map_err(engine)?;
            txn.open_table(META).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        Ok(Self { db })
    }
}

fn to_row(m: &SessionMeta) -> MetaRow {
    (
        m.version,
        m.created,
        m.last_access,
        m.ttl_ms,
        m.lifetime_deadline.unwrap_or(0),
    )
}

fn from_row((version, created, last_access, ttl_ms, lifetime): MetaRow) -> SessionMeta {
    SessionMeta {
        version,
        created,
        last_access,
        ttl_ms,
        lifetime_deadline: (lifetime != 0).then_some(lifetime),
    }
}

fn parse_id(s: &str) -> Result<SessionId, StorageError> {
    SessionId::parse(s.as_bytes())
        .map_err(|_| StorageError::Corrupt(format!("bad session id {s:?}")))
}

impl Storage for RedbStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let mut sessions = HashMap::new();
        let table = txn.open_table(SESSIONS).map_err(engine)?;
        for row in table.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            sessions.insert(
                parse_id(k.value())?,
                Session {
                    meta: from_row(v.value()),
                    fields: HashMap::new(),
                },
            );
        }
        let table = txn.open_table(FIELDS).map_err(engine)?;
        let mut current: Option<(String, Option<SessionId>)> = None;
        for row in table.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let (sid, key) = k.value();
            let (version, value) = v.value();
            // Rows are sorted by id: parse each id once.
            if current.as_ref().is_none_or(|(s, _)| s != sid) {
                current = Some((sid.to_owned(), parse_id(sid).ok()));
            }
            if let Some((_, Some(id))) = &current
                && let Some(session) = sessions.get_mut(id)
            {
                session.fields.insert(
                    Bytes::copy_from_slice(key),
                    Field {
                        value: Bytes::copy_from_slice(value),
                        version,
                    },
                );
            }
        }
        let mut aliases = HashMap::new();
        let table = txn.open_table(ALIASES).map_err(engine)?;
        for row in table.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let (target, until) = v.value();
            aliases.insert(
                parse_id(k.value())?,
                Alias {
                    target: parse_id(target)?,
                    until,
                },
            );
        }
        let table = txn.open_table(META).map_err(engine)?;
        let get = |name: &str| -> Result<u64, StorageError> {
            Ok(table.get(name).map_err(engine)?.map_or(0, |v| v.value()))
        };
        Ok(Loaded {
            sessions,
            aliases,
            version_floor: get("version_floor")?,
            fence_epoch: get("fence_epoch")?,
        })
    }

    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
    ) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(engine)?;
        txn.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(engine)?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(engine)?;
            let mut fields = txn.open_table(FIELDS).map_err(engine)?;
            let mut aliases = txn.open_table(ALIASES).map_err(engine)?;
            for m in batch {
                match m {
                    Mutation::PutMeta { id, meta } => {
                        sessions.insert(id.as_str(), to_row(meta)).map_err(engine)?;
                    }
                    Mutation::PutField { id, key, field } => {
                        fields
                            .insert(
                                (id.as_str(), key.as_ref()),
                                (field.version, field.value.as_ref()),
                            )
                            .map_err(engine)?;
                    }
                    Mutation::DelField { id, key } => {
                        fields.remove((id.as_str(), key.as_ref())).map_err(engine)?;
                    }
                    Mutation::DelSession { id, keys } => {
                        sessions.remove(id.as_str()).map_err(engine)?;
                        for key in keys {
                            fields.remove((id.as_str(), key.as_ref())).map_err(engine)?;
                        }
                    }
                    Mutation::PutAlias { old, new, until } => {
                        aliases
                            .insert(old.as_str(), (new.as_str(), *until))
                            .map_err(engine)?;
                    }
                    Mutation::DelAlias { old } => {
                        aliases.remove(old.as_str()).map_err(engine)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(engine)?;
            let floor = meta
                .get("version_floor")
                .map_err(engine)?
                .map_or(0, |v| v.value());
            if version_floor > floor {
                meta.insert("version_floor", version_floor)
                    .map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)
    }

    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert("fence_epoch", epoch).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }
}
