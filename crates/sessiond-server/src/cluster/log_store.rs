//! The Raft log and vote, in redb (`data_dir/raft.redb`): what a node must
//! not forget across a crash. Entries are postcard-encoded; every append is
//! one redb transaction, synced before openraft is told it is on disk,
//! whatever `--durability` says: Raft counts a node's acknowledgement of an
//! entry as a promise that the node keeps it, and a node that comes back
//! from a crash without entries it acknowledged can, with the next crash of
//! another node, make a majority that lacks a committed write. (Syncing
//! appends only once a second lost acknowledged increments in the failover
//! benchmark, which kills one node at a time.) The vote and the purge point
//! are synced too; the commit index never is (it is a hint: openraft finds
//! the commit point again after a restart), since syncing it on every
//! commit cost another disk flush per write on every node.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The log store; cheap to clone (openraft asks for a reader copy).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

impl LogStore {
    /// Opens (or creates) the log at `path`.
    ///
    /// # Errors
    /// redb's.
    pub fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let db = Database::create(path)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        sync: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_stdvec(value).map_err(io_err)?;
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(io_err)?;
        {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(key, bytes.as_slice()).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        match t.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(read_err)?;
                Ok(Some(*e.get_log_id()))
            }
            None => Ok(None),
        }
    }

    fn delete_range(&self, from: Bound<u64>, to: Bound<u64>) -> Result<(), StorageError<NodeId>> {
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(io_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in::<u64, _>((from, to), |_, _| false)
                .map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for row in t.range::<u64>(bounds).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Always synced: forgetting a vote could let this node vote twice in
        // one term.
        self.put_meta("vote", vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // A hint, never synced (see the module docs).
        self.put_meta("committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let result = (|| {
            let mut tx = self.db.begin_write().map_err(io_err)?;
            tx.set_durability(redb::Durability::Immediate)
                .map_err(io_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(io_err)?;
                for e in entries {
                    let bytes = postcard::to_stdvec(&e).map_err(io_err)?;
                    t.insert(e.get_log_id().index, bytes.as_slice())
                        .map_err(io_err)?;
                }
            }
            tx.commit().map_err(io_err)
        })();
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.delete_range(Bound::Included(log_id.index), Bound::Unbounded)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta("last_purged", &log_id, true)?;
        self.delete_range(Bound::Unbounded, Bound::Included(log_id.index))
    }
}
