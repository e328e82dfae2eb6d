//! Durable storage behind a narrow trait.
//!
//! The in-memory [`sessiond_core::Store`] is the authority while the server
//! runs; storage is its durable copy. At startup the server loads everything
//! from storage; while it runs, it hands storage the store's [`Mutation`]s in
//! batches. One conformance suite (`tests` below) runs against every
//! implementation.

mod logged;
mod memory;
mod redb_store;

use std::collections::HashMap;

pub use logged::{AbsorbPolicy, LoggedStorage, refuse_orphan_log};
pub use memory::MemoryStorage;
pub use redb_store::RedbStorage;
use sessiond_core::{Alias, Mutation, Session, SessionId};

/// Why storage failed. Storage failures are not the client's fault: while
/// storage fails, the server refuses writes (`MISCONF`, see
/// the `persist` module), keeps serving reads from memory, and retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The engine reported an error (an I/O error of the file among them).
    #[error("storage engine: {0}")]
    Engine(#[from] redb::Error),
    /// An I/O error outside the engine (and the one fault-injecting test
    /// storages report).
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data that does not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A loader thread panicked.
    #[error("storage loader panicked")]
    LoaderPanicked,
    /// The file was written by a newer release, in a layout this one does
    /// not know.
    #[error(
        "the data file is in storage format {0}, newer than this build's ({supported}): run the release that wrote it, or a newer one",
        supported = redb_store::FORMAT
    )]
    UnsupportedFormat(u64),
}

impl StorageError {
    /// The operating system's error underneath, if it was one (ENOSPC,
    /// EIO, EDQUOT, …).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StorageError::Io(e) | StorageError::Engine(redb::Error::Io(e)) => Some(e),
            _ => None,
        }
    }
}

/// What is on disk, as loaded at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every stored session with its fields, each id once.
    pub sessions: Vec<(SessionId, Session)>,
    /// Every stored alias.
    pub aliases: HashMap<SessionId, Alias>,
    /// The highest version ever handed out.
    pub version_floor: u64,
    /// The fencing epoch of the previous run (0 for a new store).
    pub fence_epoch: u64,
}

impl Loaded {
    /// The loaded session `id` (a linear search: for tests).
    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.sessions.iter().find(|(i, _)| i == id).map(|(_, s)| s)
    }
}

/// A durable copy of the store.
pub trait Storage: Send + 'static {
    /// Reads everything.
    ///
    /// # Errors
    /// Engine failures and undecodable records.
    fn load(&mut self) -> Result<Loaded, StorageError>;

    /// Applies `batch` atomically, in order, and records `version_floor`.
    /// When `sync` is true the batch (and every one before it) is on disk
    /// when this returns; otherwise it may be lost in a crash until a later
    /// synced call.
    ///
    /// # Errors
    /// Engine failures; the batch is then not applied.
    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
    ) -> Result<(), StorageError>;

    /// Durably records the fencing epoch of this run.
    ///
    /// # Errors
    /// Engine failures.
    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError>;

    /// Called after a failed [`Storage::apply`], before it is retried:
    /// brings storage back to a state where `apply` can run again. After a
    /// failure, only what was applied with `sync` before it is known to be
    /// kept; the caller re-applies everything after that, in order (every
    /// [`Mutation`] is an upsert or a delete, so applying one twice is
    /// harmless). redb latches an I/O error (every later operation fails
    /// with `PreviousIo`) until the database is closed and opened again;
    /// the open recovers the file. The default does nothing.
    ///
    /// # Errors
    /// When storage is still unusable (the next retry calls this again).
    fn recover(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Called once at shutdown, after everything was applied and synced:
    /// puts storage in its settled form ([`LoggedStorage`] absorbs its
    /// log). The data is durable before this; a failure here loses
    /// nothing. The default does nothing.
    ///
    /// # Errors
    /// Engine failures.
    fn close(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Where a change log in front of the data file stands (`INFO
    /// persistence`); `None` for storage without one (the default).
    fn change_log(&self) -> Option<ChangeLogState> {
        None
    }
}

/// A change log's state, as [`Storage::change_log`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeLogState {
    /// Bytes in the log being appended to.
    pub bytes: u64,
    /// Rows of the previous log not yet written into the data file.
    pub absorbing_rows: u64,
    /// Logs absorbed into the data file since the storage was opened
    /// (what the open found included).
    pub absorbed_logs: u64,
}

#[cfg(test)]
mod conformance {
    //! Runs the same checks against every [`Storage`].

    use super::*;
    use bytes::Bytes;
    use sessiond_core::{Field, SessionMeta};

    /// Shared with the other storage tests.
    pub(super) fn id(s: &str) -> SessionId {
        SessionId::parse(s.as_bytes()).unwrap()
    }

    pub(super) fn meta(version: u64) -> SessionMeta {
        SessionMeta {
            version,
            created: 10,
            last_access: 20,
            ttl_ms: 1000,
            lifetime_deadline: Some(5000),
        }
    }

    pub(super) fn put_field(s: &str, key: &str, value: &str, version: u64) -> Mutation {
        Mutation::PutField {
            id: id(s),
            key: Bytes::from(key.to_owned()),
            field: Field {
                value: Bytes::from(value.to_owned()),
                version,
            },
        }
    }

    fn suite(mut open: impl FnMut() -> Box<dyn Storage>) {
        let mut st = open();
        let empty = st.load().unwrap();
        assert!(empty.sessions.is_empty());
        assert_eq!(empty.fence_epoch, 0);

        st.apply(
            &[
                Mutation::PutMeta {
                    id: id("a"),
                    meta: meta(2),
                },
                put_field("a", "k3", "v3", 2),
                put_field("a", "k1", "v1", 1),
                put_field("a", "k2", "v2", 2),
                // A field row of a session that has no metadata row.
                put_field("orphan", "k", "v", 1),
                Mutation::PutMeta {
                    id: id("b"),
                    meta: meta(3),
                },
                put_field("b", "k", "x", 3),
                Mutation::PutAlias {
                    old: id("old"),
                    new: id("a"),
                    until: 99,
                },
            ],
            3,
            true,
        )
        .unwrap();
        st.apply(
            &[
                Mutation::DelField {
                    id: id("a"),
                    key: Bytes::from("k1"),
                },
                Mutation::DelSession {
                    id: id("b"),
                    keys: vec![Bytes::from("k")],
                },
            ],
            7,
            false,
        )
        .unwrap();
        st.set_fence_epoch(4).unwrap();
        drop(st);

        let mut st = open();
        let loaded = st.load().unwrap();
        assert_eq!(loaded.sessions.len(), 1);
        let a = loaded.session(&id("a")).unwrap();
        assert_eq!(a.meta, meta(2));
        let fields: Vec<(Bytes, Field)> = a.fields.iter().collect();
        assert_eq!(
            fields,
            vec![
                (
                    Bytes::from("k2"),
                    Field {
                        value: Bytes::from("v2"),
                        version: 2
                    }
                ),
                (
                    Bytes::from("k3"),
                    Field {
                        value: Bytes::from("v3"),
                        version: 2
                    }
                ),
            ]
        );
        assert_eq!(loaded.aliases[&id("old")].target, id("a"));
        assert_eq!(loaded.aliases[&id("old")].until, 99);
        assert_eq!(loaded.version_floor, 7);
        assert_eq!(loaded.fence_epoch, 4);
    }

    #[test]
    fn memory_storage_conforms() {
        let shared = MemoryStorage::default();
        suite(|| Box::new(shared.clone()));
    }

    #[test]
    fn engine_errors_keep_their_source() {
        let io = std::io::Error::other("disk on fire");
        let e = StorageError::Engine(redb::Error::Io(io));
        assert!(e.to_string().contains("disk on fire"), "{e}");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<redb::Error>().is_some());
    }

    #[test]
    fn a_file_that_is_not_redb_is_an_engine_error_with_the_redb_error_as_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let Err(e) = RedbStorage::open(&path) else {
            panic!("opened a file that is not redb");
        };
        assert!(matches!(e, StorageError::Engine(_)), "{e:?}");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<redb::Error>().is_some(), "{source:?}");
    }

    #[test]
    fn logged_storage_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        suite(|| {
            Box::new(
                LoggedStorage::open(
                    &path,
                    redb_store::DEFAULT_CACHE_BYTES,
                    AbsorbPolicy::default(),
                )
                .unwrap(),
            )
        });
    }

    #[test]
    fn redb_storage_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        suite(|| Box::new(RedbStorage::open(&path).unwrap()));
    }
}
