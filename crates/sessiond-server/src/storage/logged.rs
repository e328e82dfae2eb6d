//! The change log: an append-only file in front of redb.
//!
//! Why: a redb commit costs per change — a B-tree insert that copies and
//! rewrites the leaf page it lands in (`pread`/`pwrite` of 4 KiB pages,
//! checksums, free-page bookkeeping), about 13 µs of the writer's CPU per
//! change on the PHP benchmark, and more as the store grows and each change
//! lands in a page of its own (docs/benchmarks.md, "Sixth round"). Redis
//! appends to a file instead. So does this: [`Storage::apply`] encodes the
//! batch as one record (`record::encode_record`: length, CRC32, postcard)
//! and writes it at the end of `sessions.log` with one `pwrite`, and a sync
//! is one `fdatasync` of that file. The log is *absorbed* into redb later:
//! its changes coalesced by row (the last write to a session's metadata, a
//! field or an alias wins), sorted by key, so a row written a hundred times
//! in one log costs one B-tree write, and neighbouring rows share pages.
//!
//! When: once the log holds [`AbsorbPolicy::log_bytes`] or its first change
//! is [`AbsorbPolicy::after`] old, the log is *rotated*: synced, renamed `sessions.log.absorbing`, read
//! back and coalesced (the only copy of its rows in memory, so memory is
//! bounded by the log's size), and a new `sessions.log` started. Then each `apply`
//! writes [`AbsorbPolicy::chunk_rows`] of those rows to redb
//! (unsynced transactions) before its own record, so an absorption is
//! spread over many applies and never holds back the batches behind it;
//! once all are in, one synced commit records the last record's number and
//! the old file is removed. Opening, loading and a clean stop
//! ([`Storage::close`]) absorb everything at once. The work on redb comes
//! first in `apply`: if it fails (a full disk), that call fails before
//! anything of its batch is written, so the persistence pipeline's rules
//! hold unchanged (the batch was not applied; writes are refused until
//! storage recovers).
//!
//! Crash safety. Records are numbered (`seq`, increasing for the life of the
//! data directory), and the absorbing commit records in redb the last
//! number it holds (`log_seq`). Opening reads `sessions.log.absorbing` (if
//! there) and `sessions.log`, stops at the first record that is torn, fails
//! its checksum, or does not come after the one before; records at or below
//! `log_seq` are already in redb and skipped. `sessions.log` is cut after
//! the last good record and everything is absorbed before the first load.
//! So a crash in the middle of an absorption (its chunks are unsynced and
//! may be rolled back; the file is still there), a removal or an emptying
//! lost in a power failure (old records behind new ones), or a torn last
//! write replays nothing twice and loses nothing that was synced.
//!
//! After a failure ([`Storage::recover`]) the file is cut back to the end of
//! the last synced record: only what was synced is known to be kept, and
//! the pipeline applies everything after it again. Those applies (synced, until the first
//! unsynced one) absorb the logs and go to redb directly: after a full disk,
//! writing the queue to the log and then again to redb would need twice
//! the space freed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sessiond_core::{Field, Millis, Mutation, SessionId, SessionMeta};

use super::{ChangeLogState, Loaded, RedbStorage, Storage, StorageError};
use crate::record::{decode_record, encode_record};

/// When the log is absorbed into redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsorbPolicy {
    /// Once the log file is this long. Bounds the extra disk space the log
    /// takes (the same changes are later written to redb; two logs at most),
    /// what a start after a crash reads, and the memory an absorption
    /// takes (the rotated log's rows, coalesced, read back from the file).
    pub log_bytes: u64,
    /// Once the oldest waiting change is this old.
    pub after: Duration,
    /// Rows written to redb per apply while a log is absorbed: a few
    /// milliseconds of the writer's time, so an absorption never holds
    /// back the batches behind it (at 20 applies a second under load,
    /// 20k rows a second).
    pub chunk_rows: usize,
}

impl Default for AbsorbPolicy {
    fn default() -> Self {
        Self {
            log_bytes: 4 << 20,
            after: Duration::from_secs(30),
            chunk_rows: 1024,
        }
    }
}

/// One record of the log, as written.
#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    floor: u64,
    mutations: &'a [Mutation],
}

/// One record of the log, as read.
#[derive(Deserialize)]
struct RecordIn {
    seq: u64,
    floor: u64,
    mutations: Vec<Mutation>,
}

/// A row of the redb file, what coalescing goes by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Row {
    Meta(SessionId),
    Field(SessionId, Bytes),
    Alias(SessionId),
}

/// A row's last write (`None` in [`Pending::rows`]: deleted).
#[derive(Debug, Clone)]
enum Put {
    Meta(SessionMeta),
    Field(Field),
    Alias(SessionId, Millis),
}

/// A log's changes, coalesced by row.
#[derive(Debug, Default)]
struct Pending {
    rows: HashMap<Row, Option<Put>>,
    floor: u64,
}

impl Pending {
    fn add(&mut self, batch: &[Mutation], floor: u64) {
        self.floor = self.floor.max(floor);
        for m in batch {
            match m {
                Mutation::PutMeta { id, meta } => {
                    self.rows
                        .insert(Row::Meta(id.clone()), Some(Put::Meta(*meta)));
                }
                Mutation::PutField { id, key, field } => {
                    self.rows.insert(
                        Row::Field(id.clone(), key.clone()),
                        Some(Put::Field(field.clone())),
                    );
                }
                Mutation::DelField { id, key } => {
                    self.rows.insert(Row::Field(id.clone(), key.clone()), None);
                }
                Mutation::DelSession { id, keys } => {
                    self.rows.insert(Row::Meta(id.clone()), None);
                    for key in keys {
                        self.rows.insert(Row::Field(id.clone(), key.clone()), None);
                    }
                }
                Mutation::PutAlias { old, new, until } => {
                    self.rows.insert(
                        Row::Alias(old.clone()),
                        Some(Put::Alias(new.clone(), *until)),
                    );
                }
                Mutation::DelAlias { old } => {
                    self.rows.insert(Row::Alias(old.clone()), None);
                }
            }
        }
    }

    /// The rows as mutations, sorted by row (each row is written once, so
    /// their order does not matter; sorted, neighbours share B-tree pages).
    fn mutations(&self) -> Vec<Mutation> {
        let mut rows: Vec<(&Row, &Option<Put>)> = self.rows.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rows.into_iter()
            .map(|(row, put)| match (row, put) {
                (Row::Meta(id), Some(Put::Meta(meta))) => Mutation::PutMeta {
                    id: id.clone(),
                    meta: *meta,
                },
                (Row::Meta(id), _) => Mutation::DelSession {
                    id: id.clone(),
                    keys: Vec::new(),
                },
                (Row::Field(id, key), Some(Put::Field(field))) => Mutation::PutField {
                    id: id.clone(),
                    key: key.clone(),
                    field: field.clone(),
                },
                (Row::Field(id, key), _) => Mutation::DelField {
                    id: id.clone(),
                    key: key.clone(),
                },
                (Row::Alias(old), Some(Put::Alias(new, until))) => Mutation::PutAlias {
                    old: old.clone(),
                    new: new.clone(),
                    until: *until,
                },
                (Row::Alias(old), _) => Mutation::DelAlias { old: old.clone() },
            })
            .collect()
    }
}

/// The log file being absorbed, and how far.
struct Absorbing {
    /// Its rows, sorted.
    rows: Vec<Mutation>,
    /// The first row not yet in redb.
    next: usize,
    floor: u64,
    /// Its last record.
    last_seq: u64,
}

/// redb with the change log in front of it.
pub struct LoggedStorage {
    inner: RedbStorage,
    /// `sessions.log`: appended to.
    path: PathBuf,
    /// `sessions.log.absorbing`: the previous log, being absorbed.
    absorbing_path: PathBuf,
    file: File,
    /// Where the next record goes: the end of the last one written.
    len: u64,
    /// The end of the last record known to be on disk.
    synced: u64,
    /// The last record's number.
    seq: u64,
    /// When the first change in `sessions.log` was written.
    since: Option<Instant>,
    /// The rows of `sessions.log.absorbing`, going to redb a chunk per apply.
    absorbing: Option<Absorbing>,
    policy: AbsorbPolicy,
    /// After a failure, until the first unsynced apply: writes go to redb
    /// directly (see [`Storage::recover`] below).
    direct: bool,
    buf: Vec<u8>,
    /// Logs absorbed since this was opened (at the open included).
    absorbed_logs: u64,
}

impl LoggedStorage {
    /// The log that goes with the redb file `redb_path`
    /// (`sessions.redb` → `sessions.log`).
    pub fn log_path(redb_path: &Path) -> PathBuf {
        redb_path.with_extension("log")
    }

    /// Opens (or creates) the redb file `redb_path` with a page cache of
    /// `cache_bytes` and its log, absorbed as `policy` says; what the log
    /// holds is absorbed now.
    ///
    /// # Errors
    /// Engine failures; a log that cannot be read, cut or absorbed.
    pub fn open(
        redb_path: &Path,
        cache_bytes: usize,
        policy: AbsorbPolicy,
    ) -> Result<Self, StorageError> {
        let log = Self::log_path(redb_path);
        if !redb_path.exists() {
            // Records are only ever written after the redb file exists: a
            // log without it is what is left of a directory someone
            // emptied by hand, and replaying it on a new file would bring
            // back sessions from before.
            refuse_orphan_log(&log, redb_path)?;
        }
        let inner = RedbStorage::open_with_cache(redb_path, cache_bytes)?;
        Self::with_policy(inner, &log, policy)
    }

    /// `inner` with the log at `log`, absorbed as `policy` says (tests use
    /// small limits); what the log holds is absorbed now.
    ///
    /// # Errors
    /// As [`LoggedStorage::open`].
    pub fn with_policy(
        inner: RedbStorage,
        log: &Path,
        policy: AbsorbPolicy,
    ) -> Result<Self, StorageError> {
        let file = open_log(log)?;
        let mut absorbing_path = log.as_os_str().to_owned();
        absorbing_path.push(".absorbing");
        let mut storage = Self {
            inner,
            path: log.to_owned(),
            absorbing_path: PathBuf::from(absorbing_path),
            file,
            len: 0,
            synced: 0,
            seq: 0,
            since: None,
            absorbing: None,
            policy,
            direct: false,
            buf: Vec::new(),
            absorbed_logs: 0,
        };
        storage.reload(None)?;
        storage.absorb_all()?;
        Ok(storage)
    }

    /// Reads the logs (`sessions.log.absorbing`, then the first `keep`
    /// bytes of `sessions.log`, or all of it) and cuts `sessions.log` after
    /// its last good record.
    fn reload(&mut self, keep: Option<u64>) -> Result<(), StorageError> {
        let absorbed = self.inner.log_seq()?;
        let mut last = 0u64;
        self.load_absorbing(absorbed, &mut last)?;
        let mut bytes = std::fs::read(&self.path)?;
        let on_disk = bytes.len() as u64;
        if let Some(keep) = keep {
            bytes.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        // Only whether it holds a change is needed of the active log (its
        // rows are read back when it is rotated).
        let mut newer = false;
        let (end, cut_because) = replay(&bytes, absorbed, &mut last, &mut |_, _| newer = true);
        let end = end as u64;
        if end < on_disk {
            if keep.is_none() {
                tracing::warn!(
                    log = %self.path.display(),
                    at = end,
                    dropped_bytes = on_disk - end,
                    why = cut_because.unwrap_or("not synced before the failure"),
                    "change log: cut after the last good record (a write a crash interrupted)"
                );
            }
            self.file.set_len(end)?;
        }
        self.file.sync_all()?;
        self.len = end;
        self.synced = end;
        self.seq = absorbed.max(last);
        self.since = newer.then(Instant::now);
        Ok(())
    }

    /// Reads `sessions.log.absorbing` (if there) into [`Self::absorbing`]:
    /// its records after `absorbed`, coalesced and sorted.
    fn load_absorbing(&mut self, absorbed: u64, last: &mut u64) -> Result<(), StorageError> {
        self.absorbing = None;
        let bytes = match std::fs::read(&self.absorbing_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut rows = Pending::default();
        let (end, _) = replay(&bytes, absorbed, last, &mut |mutations, floor| {
            rows.add(mutations, floor);
        });
        if end < bytes.len() {
            // It was synced before it got this name: a bad record is
            // damage, not a torn write. What follows is lost.
            tracing::warn!(
                log = %self.absorbing_path.display(),
                at = end,
                "change log: a bad record in the log being absorbed; the records after it are lost"
            );
        }
        if *last <= absorbed {
            // Absorbed already; only its removal was lost.
            std::fs::remove_file(&self.absorbing_path)?;
        } else {
            self.absorbing = Some(Absorbing {
                rows: rows.mutations(),
                next: 0,
                floor: rows.floor,
                last_seq: *last,
            });
        }
        Ok(())
    }

    fn rotation_due(&self) -> bool {
        self.len >= self.policy.log_bytes
            || self.since.is_some_and(|t| t.elapsed() >= self.policy.after)
    }

    /// Starts absorbing `sessions.log`: synced, renamed
    /// `sessions.log.absorbing` and read back (its rows coalesced, in
    /// memory until absorbed), and a new empty log.
    fn rotate(&mut self) -> Result<(), StorageError> {
        if self.absorbing.is_some() {
            // The new log filled before the old one was absorbed.
            self.finish_absorbing()?;
        }
        if self.len == 0 {
            return Ok(());
        }
        self.file.sync_data()?;
        std::fs::rename(&self.path, &self.absorbing_path)?;
        // Creating the new file syncs the directory, the rename with it.
        self.file = open_log(&self.path)?;
        self.len = 0;
        self.synced = 0;
        self.since = None;
        let absorbed = self.inner.log_seq()?;
        let mut last = 0;
        self.load_absorbing(absorbed, &mut last)
    }

    /// Writes up to `max_rows` rows of the log being absorbed to redb
    /// (unsynced); once all are in, one synced commit records its last
    /// record's number, and the file goes.
    fn absorb_some(&mut self, max_rows: usize) -> Result<(), StorageError> {
        let Some(a) = &mut self.absorbing else {
            return Ok(());
        };
        let end = a.rows.len().min(a.next.saturating_add(max_rows));
        if a.next < end {
            self.inner.apply(&a.rows[a.next..end], a.floor, false)?;
            a.next = end;
        }
        if a.next == a.rows.len() {
            let started = Instant::now();
            self.inner.apply_logged(&[], a.floor, a.last_seq)?;
            tracing::debug!(
                rows = a.rows.len(),
                sync_us = started.elapsed().as_micros() as u64,
                "change log absorbed into redb"
            );
            self.absorbing = None;
            self.absorbed_logs += 1;
            // Not synced: should it come back after a power failure, its
            // records' numbers say they are in redb already.
            match std::fs::remove_file(&self.absorbing_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn finish_absorbing(&mut self) -> Result<(), StorageError> {
        self.absorb_some(usize::MAX)
    }

    /// Absorbs both logs now; `sessions.log` is left empty.
    fn absorb_all(&mut self) -> Result<(), StorageError> {
        self.finish_absorbing()?;
        if self.len > 0 {
            self.rotate()?;
            self.finish_absorbing()?;
        }
        Ok(())
    }

    /// The redb file alone, the logs absorbed (they are, after an open):
    /// for a server that writes redb directly (`--durability always`).
    ///
    /// # Errors
    /// An absorption that fails.
    pub fn into_redb(mut self) -> Result<RedbStorage, StorageError> {
        self.absorb_all()?;
        Ok(self.inner)
    }

    /// How many rows of the log being absorbed are not in redb yet.
    pub fn absorbing_rows(&self) -> usize {
        self.absorbing.as_ref().map_or(0, |a| a.rows.len() - a.next)
    }
}

/// Hands each record of `bytes` after `absorbed` to `newer` (its mutations
/// and version floor), each numbered after `last` (updated); returns where
/// the good records end and why they end there if before the end.
fn replay(
    bytes: &[u8],
    absorbed: u64,
    last: &mut u64,
    newer: &mut dyn FnMut(&[Mutation], u64),
) -> (usize, Option<&'static str>) {
    let mut off = 0usize;
    while off < bytes.len() {
        match decode_record::<RecordIn>(&bytes[off..]) {
            Ok((record, size)) => {
                if record.seq <= *last {
                    // Older than the one before: left behind by an emptying
                    // that did not reach the disk.
                    return (off, Some("a record older than the one before it"));
                }
                *last = record.seq;
                if record.seq > absorbed {
                    newer(&record.mutations, record.floor);
                }
                off += size;
            }
            Err(why) => return (off, Some(why)),
        }
    }
    (off, None)
}

/// An error when `log` (or the log being absorbed beside it) holds
/// records while `redb_path` does not exist.
pub fn refuse_orphan_log(log: &Path, redb_path: &Path) -> Result<(), StorageError> {
    let mut absorbing = log.as_os_str().to_owned();
    absorbing.push(".absorbing");
    for file in [log.to_owned(), PathBuf::from(absorbing)] {
        if std::fs::metadata(&file).is_ok_and(|m| m.len() > 0) {
            return Err(StorageError::Corrupt(format!(
                "{} holds changes but {} does not exist: move {} away (or put the data file back) before starting",
                file.display(),
                redb_path.display(),
                file.display()
            )));
        }
    }
    Ok(())
}

fn open_log(path: &Path) -> Result<File, StorageError> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if !existed && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

impl Storage for LoggedStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        self.absorb_all()?;
        self.inner.load()
    }

    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
    ) -> Result<(), StorageError> {
        if self.direct {
            if sync {
                self.absorb_all()?;
                return self.inner.apply(batch, version_floor, true);
            }
            // Recovered: back to the log.
            self.direct = false;
        }
        // Redb's share first: a failure (a full disk) fails this call
        // before any of its batch is written.
        if self.rotation_due() {
            self.rotate()?;
        }
        self.absorb_some(self.policy.chunk_rows)?;
        // Written even when empty: the pipeline's empty synced apply is its
        // proof that storage takes writes again.
        self.buf.clear();
        let record = RecordOut {
            seq: self.seq + 1,
            floor: version_floor,
            mutations: batch,
        };
        encode_record(&record, &mut self.buf)?;
        self.file.write_all_at(&self.buf, self.len)?;
        self.len += self.buf.len() as u64;
        self.seq += 1;
        if self.since.is_none() && !batch.is_empty() {
            self.since = Some(Instant::now());
        }
        if sync {
            self.file.sync_data()?;
            self.synced = self.len;
        }
        Ok(())
    }

    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        self.inner.set_fence_epoch(epoch)
    }

    /// Cuts the log back to its last synced record and rebuilds the
    /// waiting rows from the files. Then, until the first unsynced apply
    /// (the pipeline's recovery applies everything synced), the logs are
    /// absorbed and the writes go to redb directly: on a disk that was full,
    /// the same changes in the log and then in redb would need twice the
    /// space freed, and the recovery would fill it again.
    fn recover(&mut self) -> Result<(), StorageError> {
        self.inner.recover()?;
        // After a failed write or sync the descriptor's state is unknown
        // (and Linux may have dropped the pages a failed fsync covered).
        self.file = open_log(&self.path)?;
        self.reload(Some(self.synced))?;
        self.direct = true;
        Ok(())
    }

    fn change_log(&self) -> Option<ChangeLogState> {
        Some(ChangeLogState {
            bytes: self.len,
            absorbing_rows: self.absorbing_rows() as u64,
            absorbed_logs: self.absorbed_logs,
        })
    }

    fn close(&mut self) -> Result<(), StorageError> {
        self.absorb_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use crate::storage::conformance::{id, meta, put_field};
    use proptest::prelude::*;

    fn put(s: &str, key: &str, value: &str, version: u64) -> Vec<Mutation> {
        vec![
            Mutation::PutMeta {
                id: id(s),
                meta: meta(version),
            },
            put_field(s, key, value, version),
        ]
    }

    fn value_of(loaded: &Loaded, s: &str, key: &str) -> Option<Bytes> {
        loaded
            .session(&id(s))?
            .fields
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, f)| f.value)
    }

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn redb(&self) -> PathBuf {
            self.dir.path().join("s.redb")
        }
        fn log(&self) -> PathBuf {
            LoggedStorage::log_path(&self.redb())
        }
        fn open(&self, policy: AbsorbPolicy) -> LoggedStorage {
            let inner = RedbStorage::open(&self.redb()).unwrap();
            LoggedStorage::with_policy(inner, &self.log(), policy).unwrap()
        }
    }

    /// Never absorbs on its own.
    fn never() -> AbsorbPolicy {
        AbsorbPolicy {
            log_bytes: u64::MAX,
            after: Duration::from_secs(3600),
            chunk_rows: usize::MAX,
        }
    }

    #[test]
    fn applies_go_to_the_log_not_to_redb_until_absorbed() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        st.apply(&put("a", "k", "2", 2), 2, false).unwrap();
        assert!(std::fs::metadata(d.log()).unwrap().len() > 0);
        drop(st);
        // redb alone does not have it yet.
        let mut raw = RedbStorage::open(&d.redb()).unwrap();
        assert!(raw.load().unwrap().session(&id("a")).is_none());
        drop(raw);
        // Opening absorbs the log (the unsynced record was written too:
        // a process crash keeps it).
        let mut st = d.open(never());
        assert_eq!(st.absorbing_rows(), 0);
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"2");
        assert_eq!(loaded.version_floor, 2);
    }

    #[test]
    fn a_log_without_its_data_file_is_refused() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        drop(st);
        std::fs::remove_file(d.redb()).unwrap();
        let Err(e) = LoggedStorage::open(&d.redb(), 1 << 20, never()) else {
            panic!("opened a log without its data file");
        };
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!d.redb().exists(), "no new data file was made");
        // An empty log is no obstacle.
        std::fs::write(d.log(), b"").unwrap();
        LoggedStorage::open(&d.redb(), 1 << 20, never()).unwrap();
    }

    #[test]
    fn close_absorbs_everything_into_redb() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "v", 3), 3, false).unwrap();
        st.close().unwrap();
        drop(st);
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        let mut raw = RedbStorage::open(&d.redb()).unwrap();
        let loaded = raw.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"v");
        assert_eq!(raw.log_seq().unwrap(), 1);
    }

    #[test]
    fn into_redb_hands_over_a_file_with_the_log_absorbed() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "v", 1), 1, false).unwrap();
        drop(st);
        let mut redb = d.open(never()).into_redb().unwrap();
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        redb.apply(&put("a", "k", "w", 2), 2, true).unwrap();
        drop(redb);
        // A later start with the log (another policy) replays nothing old.
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"w");
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        st.apply(&put("b", "k", "2", 2), 2, true).unwrap();
        drop(st);
        let full = std::fs::read(d.log()).unwrap();
        // Cut the second record in the middle; add garbage after it.
        let mut torn = full[..full.len() - 5].to_vec();
        std::fs::write(d.log(), &torn).unwrap();
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"1");
        assert!(loaded.session(&id("b")).is_none());
        // Writes go on after the cut.
        st.apply(&put("c", "k", "3", 3), 3, true).unwrap();
        drop(st);
        torn.clear();
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "c", "k").unwrap().as_ref(), b"3");
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_there() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        let first_len = std::fs::metadata(d.log()).unwrap().len() as usize;
        st.apply(&put("b", "k", "2", 2), 2, true).unwrap();
        drop(st);
        let mut bytes = std::fs::read(d.log()).unwrap();
        bytes[first_len + crate::record::HEADER + 2] ^= 0x10;
        std::fs::write(d.log(), &bytes).unwrap();
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert!(value_of(&loaded, "a", "k").is_some());
        assert!(loaded.session(&id("b")).is_none());
    }

    #[test]
    fn records_left_behind_a_lost_truncation_are_not_replayed() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "old", 1), 1, true).unwrap();
        let stale = std::fs::read(d.log()).unwrap();
        st.close().unwrap(); // absorbed: log_seq 1, log emptied
        st.apply(&put("a", "k", "new", 2), 2, true).unwrap();
        drop(st);
        // The truncation did not reach the disk: the old record is still
        // there, behind the new one ...
        let mut bytes = std::fs::read(d.log()).unwrap();
        bytes.extend_from_slice(&stale);
        std::fs::write(d.log(), &bytes).unwrap();
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"new");
        drop(st);
        // ... or alone, in front.
        std::fs::write(d.log(), &stale).unwrap();
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"new");
    }

    #[test]
    fn recover_keeps_only_what_was_synced() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        let synced = std::fs::metadata(d.log()).unwrap().len();
        st.apply(&put("b", "k", "2", 2), 2, false).unwrap();
        st.recover().unwrap();
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), synced, "b cut");
        // The pipeline applies b again after a recovery, synced: the log
        // is absorbed and b goes to redb directly.
        st.apply(&put("b", "k", "2", 2), 2, true).unwrap();
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        // The first unsynced apply goes to the log again.
        st.apply(&put("c", "k", "3", 3), 3, false).unwrap();
        assert!(std::fs::metadata(d.log()).unwrap().len() > 0);
        drop(st);
        let mut raw = RedbStorage::open(&d.redb()).unwrap();
        let loaded = raw.load().unwrap();
        assert!(value_of(&loaded, "a", "k").is_some(), "a is in redb itself");
        assert!(value_of(&loaded, "b", "k").is_some(), "b is in redb itself");
        assert!(
            value_of(&loaded, "c", "k").is_none(),
            "c is only in the log"
        );
        drop(raw);
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert!(value_of(&loaded, "c", "k").is_some());
    }

    #[test]
    fn absorbs_when_a_limit_is_reached() {
        let d = Dir::new();
        // Every apply finds the log over its size: it rotates and absorbs.
        let mut st = d.open(AbsorbPolicy {
            log_bytes: 1,
            ..never()
        });
        st.apply(&put("a", "k", "1", 1), 1, false).unwrap();
        assert_eq!(st.inner.log_seq().unwrap(), 0);
        st.apply(&put("a", "k", "2", 2), 2, false).unwrap();
        assert_eq!(st.inner.log_seq().unwrap(), 1);
        st.apply(&put("b", "k", "3", 3), 3, false).unwrap();
        assert_eq!(st.inner.log_seq().unwrap(), 2);
        drop(st);
        // By age: once the first change waits longer than `after`.
        let mut st = d.open(AbsorbPolicy {
            after: Duration::ZERO,
            ..never()
        });
        let opened = st.inner.log_seq().unwrap();
        assert_eq!(opened, 3, "the open absorbed b");
        st.apply(&[], 3, false).unwrap();
        st.apply(&[], 3, false).unwrap();
        assert_eq!(
            st.inner.log_seq().unwrap(),
            3,
            "empty records start no clock"
        );
        st.apply(&put("c", "k", "4", 4), 4, false).unwrap();
        st.apply(&[], 4, false).unwrap();
        assert!(st.inner.log_seq().unwrap() >= 6);
        let loaded = st.load().unwrap();
        for s in ["a", "b", "c"] {
            assert!(loaded.session(&id(s)).is_some(), "{s}");
        }
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"2");
    }

    #[test]
    fn a_crash_while_a_log_is_absorbed_loses_nothing() {
        let d = Dir::new();
        let policy = AbsorbPolicy {
            log_bytes: 1,
            chunk_rows: 1,
            ..never()
        };
        let mut st = d.open(policy);
        st.apply(&put("a", "k", "1", 1), 1, false).unwrap();
        // Rotates (a's two rows read back), writes one of them, logs b.
        st.apply(&put("b", "k", "2", 2), 2, false).unwrap();
        let absorbing = {
            let mut p = d.log().into_os_string();
            p.push(".absorbing");
            PathBuf::from(p)
        };
        assert!(absorbing.exists());
        assert_eq!(st.absorbing_rows(), 1, "one of a's two rows left");
        drop(st);
        let mut st = d.open(never());
        assert!(!absorbing.exists());
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"1");
        assert_eq!(value_of(&loaded, "b", "k").unwrap().as_ref(), b"2");
        drop(st);
        // Chunk by chunk, then a clean stop finishes it.
        let mut st = d.open(policy);
        st.apply(&put("c", "k", "3", 3), 3, false).unwrap();
        st.apply(&put("c", "k", "4", 4), 4, false).unwrap(); // rotates
        assert!(absorbing.exists());
        st.close().unwrap();
        assert!(!absorbing.exists());
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        drop(st);
        let mut raw = RedbStorage::open(&d.redb()).unwrap();
        let loaded = raw.load().unwrap();
        assert_eq!(value_of(&loaded, "c", "k").unwrap().as_ref(), b"4");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8, u8),
        DelField(u8, u8),
        DelSession(u8),
        Alias(u8, u8),
        DelAlias(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4u8, 0..3u8, any::<u8>()).prop_map(|(s, k, v)| Op::Put(s, k, v)),
            1 => (0..4u8, 0..3u8).prop_map(|(s, k)| Op::DelField(s, k)),
            1 => (0..4u8).prop_map(Op::DelSession),
            1 => (0..4u8, 0..4u8).prop_map(|(o, n)| Op::Alias(o, n)),
            1 => (0..4u8).prop_map(Op::DelAlias),
        ]
    }

    fn mutation(op: &Op, version: u64) -> Mutation {
        let sid = |n: u8| id(&format!("s{n}"));
        let key = |k: u8| Bytes::from(format!("k{k}"));
        match *op {
            Op::Put(s, k, v) => Mutation::PutField {
                id: sid(s),
                key: key(k),
                field: Field {
                    value: Bytes::from(vec![v; 3]),
                    version,
                },
            },
            Op::DelField(s, k) => Mutation::DelField {
                id: sid(s),
                key: key(k),
            },
            Op::DelSession(s) => Mutation::DelSession {
                id: sid(s),
                keys: (0..3).map(key).collect(),
            },
            Op::Alias(o, n) => Mutation::PutAlias {
                old: id(&format!("o{o}")),
                new: sid(n),
                until: version,
            },
            Op::DelAlias(o) => Mutation::DelAlias {
                old: id(&format!("o{o}")),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the batches, limits and syncs, a reopened store (after
        /// a close, or without one as after a process crash) holds what the
        /// in-memory reference storage holds.
        #[test]
        fn matches_the_reference_storage(
            batches in proptest::collection::vec(
                (proptest::collection::vec(op(), 0..6), any::<bool>()), 1..25),
            log_bytes in 1u64..400,
            chunk_rows in 1usize..4,
            close in any::<bool>(),
        ) {
            let d = Dir::new();
            let mut st = d.open(AbsorbPolicy { log_bytes, chunk_rows, ..never() });
            let mut reference = MemoryStorage::default();
            for (i, (ops, sync)) in batches.iter().enumerate() {
                let version = i as u64 + 1;
                let mut batch = Vec::new();
                for op in ops {
                    if let Op::Put(s, ..) = op {
                        batch.push(Mutation::PutMeta { id: id(&format!("s{s}")), meta: meta(version) });
                    }
                    batch.push(mutation(op, version));
                }
                st.apply(&batch, version, *sync).unwrap();
                reference.apply(&batch, version, *sync).unwrap();
            }
            if close {
                st.close().unwrap();
            }
            drop(st);
            let mut st = d.open(never());
            let got = st.load().unwrap();
            let want = reference.load().unwrap();
            let norm = |l: &Loaded| {
                let mut s: Vec<_> = l.sessions.iter()
                    .map(|(id, s)| (id.clone(), s.meta, s.fields.iter().collect::<Vec<_>>()))
                    .collect();
                s.sort_by(|a, b| a.0.cmp(&b.0));
                let mut a: Vec<_> = l.aliases.iter().map(|(o, a)| (o.clone(), a.target.clone(), a.until)).collect();
                a.sort_by(|x, y| x.0.cmp(&y.0));
                (s, a, l.version_floor)
            };
            prop_assert_eq!(norm(&got), norm(&want));
        }
    }
}
