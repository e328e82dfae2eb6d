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
//! is one `fdatasync` of that file. The changes are also kept in memory,
//! coalesced by row (the last write to a session's metadata, a field or an
//! alias wins), and *absorbed* into redb from time to time in one synced
//! transaction, sorted by key, so a row written a hundred times between two
//! absorptions costs one B-tree write, and neighbouring rows share pages.
//! After an absorption the log is emptied.
//!
//! When: once the log holds [`AbsorbPolicy::log_bytes`], the coalesced rows
//! number [`AbsorbPolicy::rows`] (which bounds an absorption's transaction,
//! so the writer is not away long), the oldest is [`AbsorbPolicy::after`]
//! old, and when the server stops ([`Storage::close`]). The check runs at the
//! start of `apply`: an absorption that fails (a full disk) fails that call,
//! before anything of its batch is written, so the persistence pipeline's
//! rules hold unchanged (the batch was not applied; under `always` it is
//! undone; writes are refused until storage recovers).
//!
//! Crash safety. Records are numbered (`seq`, increasing for the life of the
//! data directory), and the absorbing transaction records in redb the last
//! number it holds (`log_seq`). Opening reads the log from the start and
//! stops at the first record that is torn, fails its checksum, or does not
//! come after the one before; records at or below `log_seq` are already in
//! redb and skipped. The file is cut after the last good record and whatever
//! it holds is absorbed before the first load. So a crash between the
//! absorbing commit and the truncation, or a truncation lost in a power
//! failure (old records behind new ones), replays nothing twice, and a torn
//! last write loses only that write, which was never synced.
//!
//! After a failure ([`Storage::recover`]) the file is cut back to the end of
//! the last synced record and the coalesced rows are rebuilt from the file:
//! only what was synced is known to be kept, and the pipeline applies
//! everything after it again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sessiond_core::{Field, Millis, Mutation, SessionId, SessionMeta};

use super::{Loaded, RedbStorage, Storage, StorageError};
use crate::record::{decode_record, encode_record};

/// When the log is absorbed into redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsorbPolicy {
    /// Once the log file is this long. Bounds the extra disk space the log
    /// takes (the same changes are later written to redb) and what a start
    /// after a crash reads.
    pub log_bytes: u64,
    /// Once this many rows (session metadata, fields, aliases) wait. Bounds
    /// one absorbing transaction: about 16k rows sorted by key take the
    /// writer a few tens of milliseconds.
    pub rows: usize,
    /// Once the oldest waiting change is this old.
    pub after: Duration,
}

impl Default for AbsorbPolicy {
    fn default() -> Self {
        Self {
            log_bytes: 8 << 20,
            rows: 16_384,
            after: Duration::from_secs(10),
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

/// The changes written to the log and not yet to redb, coalesced by row.
#[derive(Debug, Default)]
struct Pending {
    rows: HashMap<Row, Option<Put>>,
    floor: u64,
    since: Option<Instant>,
}

impl Pending {
    fn add(&mut self, batch: &[Mutation], floor: u64) {
        self.floor = self.floor.max(floor);
        if self.since.is_none() && !batch.is_empty() {
            self.since = Some(Instant::now());
        }
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

/// redb with the change log in front of it.
pub struct LoggedStorage {
    inner: RedbStorage,
    path: PathBuf,
    file: File,
    /// Where the next record goes: the end of the last one written.
    len: u64,
    /// The end of the last record known to be on disk.
    synced: u64,
    /// The last record's number.
    seq: u64,
    pending: Pending,
    policy: AbsorbPolicy,
    buf: Vec<u8>,
}

impl LoggedStorage {
    /// The log that goes with the redb file `redb_path`
    /// (`sessions.redb` → `sessions.log`).
    pub fn log_path(redb_path: &Path) -> PathBuf {
        redb_path.with_extension("log")
    }

    /// Opens (or creates) the redb file `redb_path` with a page cache of
    /// `cache_bytes` and its log; what the log holds is absorbed now.
    ///
    /// # Errors
    /// Engine failures; a log that cannot be read, cut or absorbed.
    pub fn open(redb_path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let inner = RedbStorage::open_with_cache(redb_path, cache_bytes)?;
        Self::with_policy(inner, &Self::log_path(redb_path), AbsorbPolicy::default())
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
        let mut storage = Self {
            inner,
            path: log.to_owned(),
            file,
            len: 0,
            synced: 0,
            seq: 0,
            pending: Pending::default(),
            policy,
            buf: Vec::new(),
        };
        storage.reload(None)?;
        if !storage.pending.rows.is_empty() || storage.len > 0 {
            storage.absorb()?;
        }
        Ok(storage)
    }

    /// Reads the log (its first `keep` bytes, or all of it): rebuilds the
    /// waiting rows from the records not yet in redb and cuts the file
    /// after the last good record.
    fn reload(&mut self, keep: Option<u64>) -> Result<(), StorageError> {
        let absorbed = self.inner.log_seq()?;
        let mut bytes = std::fs::read(&self.path)?;
        let on_disk = bytes.len() as u64;
        if let Some(keep) = keep {
            bytes.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        let mut pending = Pending::default();
        let (mut off, mut last, mut cut_because) = (0usize, 0u64, None);
        while off < bytes.len() {
            match decode_record::<RecordIn>(&bytes[off..]) {
                Ok((record, size)) => {
                    if record.seq <= last {
                        // Older than the one before: left behind by a
                        // truncation that did not reach the disk.
                        cut_because = Some("a record older than the one before it");
                        break;
                    }
                    last = record.seq;
                    if record.seq > absorbed {
                        pending.add(&record.mutations, record.floor);
                    }
                    off += size;
                }
                Err(why) => {
                    cut_because = Some(why);
                    break;
                }
            }
        }
        let end = off as u64;
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
        self.pending = pending;
        Ok(())
    }

    fn absorb_due(&self) -> bool {
        self.pending.rows.len() >= self.policy.rows
            || self.len >= self.policy.log_bytes
            || self
                .pending
                .since
                .is_some_and(|t| t.elapsed() >= self.policy.after)
    }

    /// Writes the waiting rows to redb in one synced transaction that also
    /// records the last record's number, then empties the log.
    fn absorb(&mut self) -> Result<(), StorageError> {
        let batch = self.pending.mutations();
        self.inner
            .apply_logged(&batch, self.pending.floor, self.seq)?;
        self.pending = Pending::default();
        // Not synced: should the old records come back after a power
        // failure, their numbers say they are in redb already.
        self.file.set_len(0)?;
        self.len = 0;
        self.synced = 0;
        Ok(())
    }

    /// The redb file alone, the log absorbed (it is, after an open): for
    /// a server that writes redb directly (`--durability always`).
    ///
    /// # Errors
    /// An absorption that fails.
    pub fn into_redb(mut self) -> Result<RedbStorage, StorageError> {
        self.close()?;
        Ok(self.inner)
    }

    /// How many rows wait to be absorbed (tests, INFO).
    pub fn waiting_rows(&self) -> usize {
        self.pending.rows.len()
    }
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
        if !self.pending.rows.is_empty() {
            self.absorb()?;
        }
        self.inner.load()
    }

    fn apply(
        &mut self,
        batch: &[Mutation],
        version_floor: u64,
        sync: bool,
    ) -> Result<(), StorageError> {
        if self.absorb_due() {
            self.absorb()?;
        }
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
        self.pending.add(batch, version_floor);
        if sync {
            self.file.sync_data()?;
            self.synced = self.len;
        }
        Ok(())
    }

    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        self.inner.set_fence_epoch(epoch)
    }

    fn recover(&mut self) -> Result<(), StorageError> {
        self.inner.recover()?;
        // After a failed write or sync the descriptor's state is unknown
        // (and Linux may have dropped the pages a failed fsync covered).
        self.file = open_log(&self.path)?;
        self.reload(Some(self.synced))
    }

    fn close(&mut self) -> Result<(), StorageError> {
        if !self.pending.rows.is_empty() || self.len > 0 {
            self.absorb()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use proptest::prelude::*;

    fn id(s: &str) -> SessionId {
        SessionId::parse(s.as_bytes()).unwrap()
    }

    fn meta(version: u64) -> SessionMeta {
        SessionMeta {
            version,
            created: 1,
            last_access: 2,
            ttl_ms: 1000,
            lifetime_deadline: None,
        }
    }

    fn put(s: &str, key: &str, value: &str, version: u64) -> Vec<Mutation> {
        vec![
            Mutation::PutMeta {
                id: id(s),
                meta: meta(version),
            },
            Mutation::PutField {
                id: id(s),
                key: Bytes::from(key.to_owned()),
                field: Field {
                    value: Bytes::from(value.to_owned()),
                    version,
                },
            },
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
            rows: usize::MAX,
            after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn applies_go_to_the_log_not_to_redb_until_absorbed() {
        let d = Dir::new();
        let mut st = d.open(never());
        st.apply(&put("a", "k", "1", 1), 1, true).unwrap();
        st.apply(&put("a", "k", "2", 2), 2, false).unwrap();
        assert_eq!(st.waiting_rows(), 2, "meta and one field, coalesced");
        assert!(std::fs::metadata(d.log()).unwrap().len() > 0);
        drop(st);
        // redb alone does not have it yet.
        let mut raw = RedbStorage::open(&d.redb()).unwrap();
        assert!(raw.load().unwrap().session(&id("a")).is_none());
        drop(raw);
        // Opening absorbs the log (the unsynced record was written too:
        // a process crash keeps it).
        let mut st = d.open(never());
        assert_eq!(st.waiting_rows(), 0);
        assert_eq!(std::fs::metadata(d.log()).unwrap().len(), 0);
        let loaded = st.load().unwrap();
        assert_eq!(value_of(&loaded, "a", "k").unwrap().as_ref(), b"2");
        assert_eq!(loaded.version_floor, 2);
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
        st.apply(&put("b", "k", "2", 2), 2, false).unwrap();
        st.recover().unwrap();
        assert_eq!(st.waiting_rows(), 2, "only a's rows wait");
        // The pipeline applies b again after a recovery.
        st.apply(&put("b", "k", "2", 2), 2, true).unwrap();
        drop(st);
        let mut st = d.open(never());
        let loaded = st.load().unwrap();
        assert!(value_of(&loaded, "a", "k").is_some());
        assert!(value_of(&loaded, "b", "k").is_some());
    }

    #[test]
    fn absorbs_when_a_limit_is_reached() {
        let d = Dir::new();
        let mut st = d.open(AbsorbPolicy { rows: 4, ..never() });
        st.apply(&put("a", "k", "1", 1), 1, false).unwrap();
        st.apply(&put("a", "k", "2", 2), 2, false).unwrap();
        assert_eq!(st.waiting_rows(), 2, "the same two rows");
        st.apply(&put("b", "k", "3", 3), 3, false).unwrap();
        assert_eq!(st.waiting_rows(), 4);
        // The next apply absorbs first.
        st.apply(&put("c", "k", "4", 4), 4, false).unwrap();
        assert_eq!(st.waiting_rows(), 2);
        assert_eq!(st.inner.log_seq().unwrap(), 3);
        drop(st);
        let mut st2 = d.open(AbsorbPolicy {
            log_bytes: 1,
            ..never()
        });
        st2.apply(&put("d", "k", "5", 5), 5, false).unwrap();
        st2.apply(&put("e", "k", "6", 6), 6, false).unwrap();
        let raw_seq = st2.inner.log_seq().unwrap();
        assert!(raw_seq >= 5, "{raw_seq}");
        let loaded = st2.load().unwrap();
        for s in ["a", "b", "c", "d", "e"] {
            assert!(loaded.session(&id(s)).is_some(), "{s}");
        }
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
            rows in 1usize..8,
            close in any::<bool>(),
        ) {
            let d = Dir::new();
            let mut st = d.open(AbsorbPolicy { rows, ..never() });
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
