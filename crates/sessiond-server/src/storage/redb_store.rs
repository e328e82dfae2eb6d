//! Storage in redb: one file, ACID transactions, copy-on-write B-trees.
//!
//! Tables:
//! - `sessions`: id → (version, created, last_access, ttl_ms, lifetime_deadline or 0)
//! - `fields`: (id, key) → (version, value)
//! - `aliases`: old id → (new id, until)
//! - `meta`: name → u64 (`format`, `version_floor`, `fence_epoch`,
//!   `log_seq`: the last record of the change log absorbed, see
//!   [`super::LoggedStorage`])
//!
//! `format` is the layout's version ([`FORMAT`]): a file without it was
//! written before the key existed, in format 1, and gets it on open; a file
//! of a newer format is refused rather than misread.
//!
//! Fields are stored one per row, so a commit that changes one key of a
//! large session writes that key only.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use sessiond_core::{Alias, Mutation, PackedFieldsBuilder, Session, SessionId, SessionMeta};

use super::{Loaded, Storage, StorageError};

type MetaRow = (u64, u64, u64, u64, u64);
const SESSIONS: TableDefinition<&str, MetaRow> = TableDefinition::new("sessions");
type FieldKey<'a> = (&'a str, &'a [u8]);
type FieldRow<'a> = (u64, &'a [u8]);
const FIELDS: TableDefinition<FieldKey, FieldRow> = TableDefinition::new("fields");
const ALIASES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("aliases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key: the last change-log record absorbed into this file.
const LOG_SEQ: &str = "log_seq";

/// The layout this build reads and writes.
pub const FORMAT: u64 = 1;

/// A transaction gives its CPU to any thread waiting for one after this
/// many B-tree changes ([`Storage::apply`]).
///
/// Why: a transaction of the `everysec` writer carries the changes of 50 ms
/// of requests and runs for a few ms of CPU. On a machine whose cores are
/// busy (PHP workers beside the server), a request whose thread woke up
/// meanwhile waited for the writer's time slice to end; that wait was the
/// PHP page's p99 (docs/benchmarks.md, "Sixth round"). Yielding every few
/// changes lets it run at once; with no thread waiting, a yield returns
/// at once, and the writer keeps its full share of the CPU (unlike a lower
/// scheduling class, which let it fall behind: "Fifth round").
pub const YIELD_EVERY_CHANGES: usize = 16;

/// The page cache [`RedbStorage::open`] gives redb: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Opens the database again after a failure (see [`Storage::recover`]).
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send>;

/// Storage in a redb file.
pub struct RedbStorage {
    // `None` between a failed reopen and the next retry.
    db: Option<Database>,
    open: Opener,
}

fn engine(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Engine(e.into())
}

impl RedbStorage {
    /// Opens (or creates) the database file at `path`, creating its tables.
    ///
    /// # Errors
    /// Engine failures (unreadable file, a file that is not redb, …).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStorage::open`] with a page cache of `cache_bytes`. redb's own
    /// default is 1 GiB; sessiond holds every session in memory and reads
    /// the file only at startup, so a big cache would mostly duplicate it.
    ///
    /// # Errors
    /// As [`RedbStorage::open`].
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        if !path.exists() {
            create_atomically(path, cache_bytes)?;
        }
        let path = path.to_owned();
        Self::open_with(move || Builder::new().set_cache_size(cache_bytes).create(&path))
    }

    /// Storage in the database `open` opens (or creates), on any redb
    /// backend; `open` is called again to reopen it after a failure. Tests
    /// use it with backends that fail or lose power on command.
    ///
    /// # Errors
    /// As [`RedbStorage::open`].
    pub fn open_with(
        open: impl Fn() -> Result<Database, redb::DatabaseError> + Send + 'static,
    ) -> Result<Self, StorageError> {
        let mut storage = Self {
            db: None,
            open: Box::new(open),
        };
        storage.reopen()?;
        Ok(storage)
    }

    /// Closes the database (if open) and opens it again, creating the tables.
    fn reopen(&mut self) -> Result<(), StorageError> {
        // Dropping closes the file; after a latched I/O error redb leaves it
        // for the next open to recover.
        self.db = None;
        let db = (self.open)().map_err(engine)?;
        create_tables(&db)?;
        self.db = Some(db);
        Ok(())
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db
            .as_ref()
            .ok_or(StorageError::Engine(redb::Error::DatabaseClosed))
    }
}

/// Creates a new database file at `path` with its tables: under a temporary
/// name first, renamed into place once synced. A power loss while a new
/// file is created can leave a file without a complete header, which redb
/// then refuses to open ("not a redb database"); this way it leaves no
/// file, or a complete one. (Found by the power-loss tests.)
fn create_atomically(path: &Path, cache_bytes: usize) -> Result<(), StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".creating");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    {
        let db = Builder::new()
            .set_cache_size(cache_bytes)
            .create(&tmp)
            .map_err(engine)?;
        create_tables(&db)?;
        db.close().map_err(engine)?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates the tables that are missing and checks (or records) the format.
fn create_tables(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write().map_err(engine)?;
    {
        txn.open_table(SESSIONS).map_err(engine)?;
        txn.open_table(FIELDS).map_err(engine)?;
        txn.open_table(ALIASES).map_err(engine)?;
        let mut meta = txn.open_table(META).map_err(engine)?;
        let format = meta.get("format").map_err(engine)?.map(|v| v.value());
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) => return Err(StorageError::UnsupportedFormat(f)),
            None => {
                meta.insert("format", FORMAT).map_err(engine)?;
            }
        }
    }
    txn.commit().map_err(engine)
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

impl RedbStorage {
    /// [`Storage::load`] with `threads_for(sessions)` threads reading fields.
    fn load_with(&self, threads_for: impl Fn(usize) -> usize) -> Result<Loaded, StorageError> {
        let txn = self.db()?.begin_read().map_err(engine)?;

        let metas: Vec<(SessionId, SessionMeta)> = {
            let table = txn.open_table(SESSIONS).map_err(engine)?;
            let mut metas = Vec::with_capacity(table.len().map_err(engine)? as usize);
            for row in table.iter().map_err(engine)? {
                let (k, v) = row.map_err(engine)?;
                metas.push((parse_id(k.value())?, from_row(v.value())));
            }
            metas
        };
        // The field rows are most of the work (ten or so per session), so
        // they are read in parallel: each thread takes a run of consecutive
        // session ids and the matching range of the fields table.
        let fields = txn.open_table(FIELDS).map_err(engine)?;
        let threads = threads_for(metas.len()).max(1);
        let per_thread = metas.len().div_ceil(threads).max(1);
        let mut runs = Vec::new();
        let mut rest = metas;
        while rest.len() > per_thread {
            let tail = rest.split_off(per_thread);
            runs.push(rest);
            rest = tail;
        }
        runs.push(rest);
        let fields = &fields;
        let loaded: Vec<Result<Vec<(SessionId, Session)>, StorageError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = runs
                    .into_iter()
                    .map(|run| scope.spawn(move || load_run(fields, run)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(StorageError::LoaderPanicked))
                    })
                    .collect()
            });
        let mut sessions = Vec::new();
        for run in loaded {
            let run = run?;
            if sessions.is_empty() {
                sessions = run;
            } else {
                sessions.extend(run);
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
}

/// How many threads load `sessions` sessions: one per core, up to
/// [`MAX_LOAD_THREADS`], each with at least [`MIN_SESSIONS_PER_LOAD_THREAD`].
fn load_threads(sessions: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_LOAD_THREADS)
        .min(sessions.div_ceil(MIN_SESSIONS_PER_LOAD_THREAD).max(1))
}

/// At most this many threads read the fields table at startup.
const MAX_LOAD_THREADS: usize = 8;
/// Below this many sessions per thread, another thread is not worth it.
const MIN_SESSIONS_PER_LOAD_THREAD: usize = 50_000;

/// Pairs the sessions of `run` (consecutive ids, sorted) with their field
/// rows, which follow each other in the fields table from the run's first
/// id on. Both are sorted by id, so this is one merge pass: no map, no
/// lookup, one packed buffer per session. The range has no end bound (one
/// key comparison less per row): reading stops after the run's last
/// session. Field rows of an id without a session row (never written that
/// way) are skipped.
fn load_run(
    fields: &ReadOnlyTable<FieldKey<'static>, FieldRow<'static>>,
    run: Vec<(SessionId, SessionMeta)>,
) -> Result<Vec<(SessionId, Session)>, StorageError> {
    let Some((first, _)) = run.first() else {
        return Ok(Vec::new());
    };
    let start: (&str, &[u8]) = (first.as_str(), &[]);
    let mut rows = fields.range(start..).map_err(engine)?.peekable();
    let mut builder = PackedFieldsBuilder::new();
    let mut sessions = Vec::with_capacity(run.len());
    for (id, meta) in run {
        let sid = id.as_str();
        loop {
            let order = match rows.peek() {
                None => break,
                Some(Ok((key, _))) => key.value().0.cmp(sid),
                Some(Err(_)) => Ordering::Equal,
            };
            if order == Ordering::Greater {
                break;
            }
            let Some(row) = rows.next() else { break };
            let (key, row) = row.map_err(engine)?;
            if order == Ordering::Equal {
                let (version, value) = row.value();
                builder.push(key.value().1, value, version);
            }
        }
        sessions.push((
            id,
            Session {
                meta,
                fields: builder.finish(),
            },
        ));
    }
    Ok(sessions)
}

impl RedbStorage {
    /// The last change-log record whose changes are in this file (see
    /// [`super::LoggedStorage`]); 0 when none.
    ///
    /// # Errors
    /// Engine failures.
    pub fn log_seq(&self) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read().map_err(engine)?;
        let meta = txn.open_table(META).map_err(engine)?;
        Ok(meta.get(LOG_SEQ).map_err(engine)?.map_or(0, |v| v.value()))
    }

    /// [`Storage::apply`], synced, recording in the same transaction that
    /// the change log's records up to `log_seq` are in the file.
    ///
    /// # Errors
    /// As [`Storage::apply`].
    pub fn apply_logged(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        log_seq: u64,
    ) -> Result<(), StorageError> {
        self.apply_marked(batch, version_floor, true, Some(log_seq))
    }

    fn apply_marked(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
        log_seq: Option<u64>,
    ) -> Result<(), StorageError> {
        let mut txn = self.db()?.begin_write().map_err(engine)?;
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
            let mut changes = 0usize;
            let mut changed = |n: usize| {
                let before = changes / YIELD_EVERY_CHANGES;
                changes += n;
                if changes / YIELD_EVERY_CHANGES != before {
                    std::thread::yield_now();
                }
            };
            for m in batch {
                changed(match m {
                    Mutation::DelSession { keys, .. } => 1 + keys.len(),
                    _ => 1,
                });
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
            if let Some(seq) = log_seq {
                meta.insert(LOG_SEQ, seq).map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)
    }
}

impl Storage for RedbStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        self.load_with(load_threads)
    }

    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
    ) -> Result<(), StorageError> {
        self.apply_marked(batch, version_floor, sync, None)
    }

    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert("fence_epoch", epoch).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn recover(&mut self) -> Result<(), StorageError> {
        self.reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use bytes::Bytes;
    use sessiond_core::Field;

    /// Loading with several threads splits the sessions into runs and the
    /// fields table into the matching ranges; every session must get
    /// exactly its own fields whatever the split, including sessions with
    /// no fields at a run's edge and field rows with no session.
    #[test]
    fn parallel_load_pairs_every_session_with_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = RedbStorage::open(&dir.path().join("s.redb")).unwrap();
        let meta = |v| SessionMeta {
            version: v,
            created: 1,
            last_access: 2,
            ttl_ms: 3,
            lifetime_deadline: None,
        };
        let mut mutations = Vec::new();
        for n in 0..97u64 {
            let id = SessionId::parse(format!("s{n:03}").as_bytes()).unwrap();
            mutations.push(Mutation::PutMeta {
                id: id.clone(),
                meta: meta(n),
            });
            // Sessions 0, 5, 10, … have no fields; the others n % 7 + 1.
            let count = if n.is_multiple_of(5) { 0 } else { n % 7 + 1 };
            for k in 0..count {
                mutations.push(Mutation::PutField {
                    id: id.clone(),
                    key: Bytes::from(format!("k{k}")),
                    field: Field {
                        value: Bytes::from(format!("{n}/{k}")),
                        version: n * 10 + k,
                    },
                });
            }
            if n % 11 == 0 {
                // A field row whose session row does not exist, sorting
                // right after this session.
                let orphan = SessionId::parse(format!("s{n:03}x").as_bytes()).unwrap();
                mutations.push(Mutation::PutField {
                    id: orphan,
                    key: Bytes::from("k"),
                    field: Field {
                        value: Bytes::from("orphan"),
                        version: 1,
                    },
                });
            }
        }
        storage.apply(&mutations, 1, true).unwrap();

        let expected = storage.load_with(|_| 1).unwrap().sessions;
        assert_eq!(expected.len(), 97);
        for (id, session) in &expected {
            let n: u64 = id.as_str()[1..].parse().unwrap();
            let count = if n.is_multiple_of(5) { 0 } else { n % 7 + 1 };
            assert_eq!(session.meta, meta(n));
            assert_eq!(session.fields.len() as u64, count, "{id}");
            for (key, field) in session.fields.iter() {
                let k: u64 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
                assert_eq!(field.value, Bytes::from(format!("{n}/{k}")));
                assert_eq!(field.version, n * 10 + k);
            }
        }
        for threads in [2, 3, 8, 96, 97, 200] {
            let loaded = storage.load_with(|_| threads).unwrap().sessions;
            assert_eq!(loaded, expected, "{threads} threads");
        }
        assert_eq!(storage.load().unwrap().sessions, expected);
    }
}
