//! The Raft log and vote: what a node must not forget across a crash, in
//! `data_dir/raft-log/`, an append-only log of segment files.
//!
//! Why not redb (the previous release's `raft.redb`): a redb commit that is
//! not synced is lost when the process dies, so `everysec` could only be
//! honoured by syncing every append, and openraft runs `append` inside its
//! core task: one fsync there stalls elections, heartbeats and every other
//! write behind it, with no way to share a sync between appends. Here
//! `append` encodes the batch and `write`s it (one `write_all`) into the
//! OS's page cache and returns; a flusher thread syncs. The entries are
//! also kept in memory (the log is compacted behind snapshots, so it stays
//! small), and reads never touch the disk: openraft wants them readable as
//! soon as `append` returns, durable or not.
//!
//! What `--durability` means for a node's log (openraft is told an entry is
//! "flushed" through the `LogFlushed` callback, and only then counts this
//! node's acknowledgement of it):
//! - `always`: the callback waits for an fdatasync that covers the entries.
//!   The flusher takes every callback pending, syncs once and answers them
//!   all, so appends that arrive during a sync share the next one (group
//!   commit). An acknowledged write survives a power loss of every node.
//!   (openraft 0.9 itself awaits each append's callback before its next
//!   command, so its core still waits out one sync per append, now without
//!   holding a runtime thread; the sharing pays once appends overlap.)
//! - `everysec`: the callback is answered once the entries are written: they
//!   survive a crash of the process (kill -9), which is what the leader
//!   failovers need, but not a power loss of the machine; the flusher syncs
//!   about once a second. (With redb, the same promise was lost on a process
//!   crash and a restarted node came back without entries it had
//!   acknowledged; tests/cluster.rs kills leaders under `everysec` to keep
//!   this from coming back.)
//! - `no`: as `everysec`, synced every 30 s and when the store is dropped.
//!
//! Whatever the policy, the vote is synced before `save_vote` returns
//! (forgetting it could let this node vote twice in a term), and so is the
//! purge point (the entries behind it are gone from the segments). Both live
//! in the `meta` file, replaced atomically (temporary file, fsync, rename,
//! fsync of the directory). The commit index is a hint openraft can find
//! again, so it is kept in memory and written to `meta` with the flusher's
//! periodic sync, and only once the log is synced up to it: a restarted
//! node re-applies its log up to the saved index and must find the entries.
//!
//! Layout: segment files named by the index of their first entry
//! (`00000000000000000001.log`), a new one started once the current one
//! passes 32 MiB. A record is `[u32 len][u32 crc32][postcard Entry]`,
//! little-endian. Recovery reads the segments in order and stops at the
//! first record that is torn, fails its checksum, does not decode or does
//! not follow the one before: that is where a crash cut the last write. The segment is truncated there and any later segment deleted
//! (each with a WARN), since nothing after a hole can be trusted. Entries at
//! or below the purge point are skipped (a segment deleted by a purge may
//! come back after a power loss). A data directory of the previous release
//! is imported once (`migrate_from_redb`).
//!
//! A failed sync or write stops this node's Raft (openraft stops on a
//! storage error): a later sync might report success for pages the kernel
//! already dropped, so after one failure every append fails.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, StorageError, StorageIOError, Vote};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::{NodeId, TypeConfig};
use crate::config::Durability;
#[cfg(test)]
use crate::record::HEADER;
use crate::record::{decode_record, encode_record};

/// The log's directory under the data directory.
const LOG_DIR: &str = "raft-log";
/// The previous release's log, imported once.
const OLD_LOG: &str = "raft.redb";
/// What the imported redb file is renamed to (kept for a downgrade).
const OLD_LOG_DONE: &str = "raft.redb.migrated";
/// Vote, purge point and commit hint.
const META: &str = "meta";
const META_TMP: &str = "meta.tmp";
/// A new segment is started once the current one is this long: large
/// enough that rotation is rare, small enough that a purge frees space
/// soon after a snapshot.
const SEGMENT_BYTES: u64 = 32 << 20;

/// Called once the entries of an append are as durable as the policy
/// promises (or with the error that keeps them from being).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The log store; cheap to clone (openraft asks for a reader copy). The
/// flusher stops, after a last sync, when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    _flusher: Arc<Flusher>,
}

struct Shared {
    dir: PathBuf,
    durability: Durability,
    log: Mutex<Log>,
    queue: Mutex<Queue>,
    wake: Condvar,
    meta: Mutex<Meta>,
}

/// The unpurged entries and where they are on disk.
struct Log {
    entries: BTreeMap<u64, Slot>,
    /// By first index; the last one is written to.
    segments: BTreeMap<u64, Segment>,
    /// The last segment's file, open for writing.
    active: Option<Arc<File>>,
    segment_bytes: u64,
}

struct Slot {
    entry: Entry<TypeConfig>,
    segment: u64,
    offset: u64,
}

struct Segment {
    len: u64,
    /// The index of its last record, purged or not.
    last: Option<u64>,
}

/// What the flusher has to do.
#[derive(Default)]
struct Queue {
    /// `always`: callbacks waiting for the next sync.
    waiting: Vec<Done>,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
    /// A segment was created since the last sync.
    dir_dirty: bool,
    /// The last index written, and the last one synced.
    written: Option<u64>,
    synced: Option<u64>,
    failed: Option<Failure>,
    shutdown: bool,
    syncs: u64,
    #[cfg(test)]
    hooks: TestHooks,
}

#[cfg(test)]
#[derive(Default)]
struct TestHooks {
    /// The flusher waits while this is set.
    hold: bool,
    /// Added to every sync, as a disk would.
    sync_delay: Duration,
    /// The next sync fails.
    fail_sync: bool,
}

/// The first failed write or sync: every later append fails with it.
#[derive(Clone)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn new(e: &io::Error) -> Self {
        Self {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    fn error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// The `meta` file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MetaFile {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

struct Meta {
    /// As last written.
    file: MetaFile,
    /// The last `save_committed`.
    committed: Option<LogId<NodeId>>,
    /// The last `save_committed` the synced log reaches: what may be
    /// written.
    committed_synced: Option<LogId<NodeId>>,
}

/// Stops the flusher when the last [`LogStore`] clone goes.
struct Flusher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_logs(e).into()
}

fn vote_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_vote(e).into()
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/meta` atomically and durably.
fn write_meta(dir: &Path, meta: &MetaFile) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_record(meta, &mut buf)?;
    let tmp = dir.join(META_TMP);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(META))?;
    sync_dir(dir)
}

fn read_meta(dir: &Path) -> io::Result<MetaFile> {
    let bytes = match fs::read(dir.join(META)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MetaFile::default()),
        Err(e) => return Err(e),
    };
    // Replaced atomically: a bad one is not a torn write but damage, and
    // the vote in it must not be guessed.
    match decode_record(&bytes) {
        Ok((meta, len)) if len == bytes.len() => Ok(meta),
        Ok(_) => Err(invalid(format!(
            "{}: trailing bytes",
            dir.join(META).display()
        ))),
        Err(why) => Err(invalid(format!("{}: {why}", dir.join(META).display()))),
    }
}

/// Reads the segments in `dir`, cutting the log at the first bad record.
fn recover(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Log> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(first) = e.file_name().to_str().and_then(parse_segment_name) {
            files.insert(first, e.path());
        }
    }
    let mut log = Log {
        entries: BTreeMap::new(),
        segments: BTreeMap::new(),
        active: None,
        segment_bytes,
    };
    let mut prev: Option<u64> = None;
    let mut cut = false;
    let mut dir_changed = false;
    for (&first, path) in &files {
        if cut {
            tracing::warn!(file = %path.display(), "Raft log: deleting a segment after a torn or corrupt record");
            fs::remove_file(path)?;
            dir_changed = true;
            continue;
        }
        let bytes = fs::read(path)?;
        let mut segment = Segment { len: 0, last: None };
        let mut kept = false;
        let mut off = 0;
        while off < bytes.len() {
            let (entry, size) = match decode_record::<Entry<TypeConfig>>(&bytes[off..]) {
                Ok(r) => r,
                Err(why) => {
                    tracing::warn!(file = %path.display(), offset = off, why, "Raft log: truncating at a torn or corrupt record");
                    cut = true;
                    break;
                }
            };
            let index = entry.log_id.index;
            if purged.is_none_or(|p| index > p) {
                if prev.is_some_and(|p| index != p + 1) {
                    tracing::warn!(file = %path.display(), offset = off, index, after = prev, "Raft log: truncating at a record out of sequence");
                    cut = true;
                    break;
                }
                prev = Some(index);
                kept = true;
                log.entries.insert(
                    index,
                    Slot {
                        entry,
                        segment: first,
                        offset: off as u64,
                    },
                );
            }
            segment.last = Some(index);
            off += size;
        }
        segment.len = off as u64;
        if cut {
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(segment.len)?;
            f.sync_all()?;
        } else if kept {
            // Written before a crash, maybe never synced: what is read here
            // is what this node acknowledged, so it must stay.
            File::open(path)?.sync_data()?;
        }
        if kept {
            log.segments.insert(first, segment);
        } else {
            // Purged or empty: nothing in it is needed.
            fs::remove_file(path)?;
            dir_changed = true;
        }
    }
    if dir_changed {
        sync_dir(dir)?;
    }
    if let Some((&first, _)) = log.segments.last_key_value() {
        let f = OpenOptions::new()
            .write(true)
            .open(dir.join(segment_name(first)))?;
        log.active = Some(Arc::new(f));
    }
    Ok(log)
}

/// Imports the previous release's log (`raft.redb`: table `raft_log`, index
/// to postcard entry; table `raft_meta`, `vote`/`committed`/`last_purged`
/// to postcard values) into `dir`. It is built beside it and renamed into
/// place, so a crash part way leaves `raft.redb` the log in use.
fn migrate_from_redb(old: &Path, dir: &Path) -> io::Result<()> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

    let db = redb::Database::open(old).map_err(io::Error::other)?;
    let tx = db.begin_read().map_err(io::Error::other)?;
    let mut meta = MetaFile::default();
    match tx.open_table(META) {
        Ok(t) => {
            let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
                Ok(t.get(key)
                    .map_err(io::Error::other)?
                    .map(|v| v.value().to_vec()))
            };
            if let Some(b) = get("vote")? {
                meta.vote = Some(postcard::from_bytes(&b).map_err(invalid)?);
            }
            if let Some(b) = get("last_purged")? {
                meta.last_purged = Some(postcard::from_bytes(&b).map_err(invalid)?);
            }
            if let Some(b) = get("committed")? {
                meta.committed = postcard::from_bytes(&b).map_err(invalid)?;
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(io::Error::other(e)),
    }
    let mut buf = Vec::new();
    let (mut first, mut last, mut count) = (None, None, 0_u64);
    match tx.open_table(LOG) {
        Ok(t) => {
            for row in t.iter().map_err(io::Error::other)? {
                let (_, v) = row.map_err(io::Error::other)?;
                let entry: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(invalid)?;
                let index = entry.log_id.index;
                if meta.last_purged.is_some_and(|p| index <= p.index) {
                    continue;
                }
                first.get_or_insert(index);
                last = Some(index);
                count += 1;
                encode_record(&entry, &mut buf)?;
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(io::Error::other(e)),
    }
    // A commit hint the log does not reach would make openraft look for
    // entries to re-apply that are not there.
    let reach = last.or(meta.last_purged.map(|p| p.index));
    if meta
        .committed
        .is_some_and(|c| reach.is_none_or(|r| c.index > r))
    {
        meta.committed = None;
    }
    let tmp = dir.with_extension("migrating");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    if let Some(first) = first {
        let mut f = File::create(tmp.join(segment_name(first)))?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    write_meta(&tmp, &meta)?;
    fs::rename(&tmp, dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    tracing::info!(from = %old.display(), to = %dir.display(), entries = count, "Raft log: imported the previous release's log");
    Ok(())
}

impl LogStore {
    /// Opens (or creates) the log in `data_dir/raft-log/`, importing
    /// `data_dir/raft.redb` first if it is the previous release's, and
    /// starts the flusher.
    ///
    /// # Errors
    /// The disk's; a damaged `meta` file.
    pub fn open(data_dir: &Path, durability: Durability) -> io::Result<Self> {
        Self::open_with(data_dir, durability, SEGMENT_BYTES)
    }

    fn open_with(data_dir: &Path, durability: Durability, segment_bytes: u64) -> io::Result<Self> {
        let dir = data_dir.join(LOG_DIR);
        let old = data_dir.join(OLD_LOG);
        if old.exists() {
            if !dir.exists() {
                migrate_from_redb(&old, &dir)?;
            }
            let done = data_dir.join(OLD_LOG_DONE);
            fs::rename(&old, &done)?;
            sync_dir(data_dir)?;
            tracing::info!(from = %old.display(), to = %done.display(), "Raft log: the previous release's log is imported; renamed it");
        }
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            sync_dir(data_dir)?;
        }
        let file = read_meta(&dir)?;
        let log = recover(&dir, file.last_purged.map(|p| p.index), segment_bytes)?;
        let last = log.entries.last_key_value().map(|(&i, _)| i);
        let shared = Arc::new(Shared {
            dir,
            durability,
            log: Mutex::new(log),
            queue: Mutex::new(Queue {
                written: last,
                synced: last,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            meta: Mutex::new(Meta {
                committed: file.committed,
                committed_synced: file.committed,
                file,
            }),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("raft-log-flush".into())
                .spawn(move || flush_loop(&shared))?
        };
        Ok(Self {
            _flusher: Arc::new(Flusher {
                shared: shared.clone(),
                thread: Mutex::new(Some(thread)),
            }),
            shared,
        })
    }

    /// Writes `entries` (one write for the batch) and returns once they are
    /// readable; `done` is called when they are as durable as the policy
    /// promises: after the flusher's next sync under `always`, before this
    /// returns otherwise.
    ///
    /// # Errors
    /// A failed write, or any earlier failed write or sync.
    pub fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        done: Done,
    ) -> Result<(), StorageError<NodeId>> {
        if let Err(e) = self.write_entries(entries) {
            done(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        if self.shared.durability == Durability::Always {
            // Pushed after the write: the sync that answers it covers it.
            self.shared.queue.lock().waiting.push(done);
            self.shared.wake.notify_one();
        } else {
            done(Ok(()));
        }
        Ok(())
    }

    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut log = self.shared.log.lock();
        if let Some(f) = &self.shared.queue.lock().failed {
            return Err(write_err(&f.error()));
        }
        let mut buf = Vec::new();
        let mut batch = Vec::new();
        for entry in entries {
            let at = buf.len() as u64;
            encode_record(&entry, &mut buf).map_err(|e| write_err(&e))?;
            batch.push((at, entry));
        }
        let (Some((_, first)), Some((_, last))) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let result = self.write_batch(&mut log, first, last, &buf);
        let mut q = self.shared.queue.lock();
        let (segment, file, at, new_segment) = match result {
            Ok(r) => r,
            Err(e) => {
                // Part of the batch may be on disk: recovery cuts it off.
                tracing::error!(error = %e, "Raft log: write failed; this node's Raft stops");
                q.failed.get_or_insert_with(|| Failure::new(&e));
                return Err(write_err(&e));
            }
        };
        for (rel, entry) in batch {
            log.entries.insert(
                entry.log_id.index,
                Slot {
                    entry,
                    segment,
                    offset: at + rel,
                },
            );
        }
        if !q.dirty.iter().any(|f| Arc::ptr_eq(f, &file)) {
            q.dirty.push(file);
        }
        q.dir_dirty |= new_segment;
        q.written = Some(last);
        Ok(())
    }

    /// Writes `buf` (records from index `first` on) at the end of the last
    /// segment, starting a new one when it is full: the segment, its file,
    /// where `buf` went and whether the segment is new.
    fn write_batch(
        &self,
        log: &mut Log,
        first: u64,
        last: u64,
        buf: &[u8],
    ) -> io::Result<(u64, Arc<File>, u64, bool)> {
        let full = match (log.segments.last_key_value(), &log.active) {
            (Some((_, s)), Some(_)) => s.len >= log.segment_bytes,
            _ => true,
        };
        let mut new_segment = false;
        if full {
            if log.segments.contains_key(&first) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("segment {} exists", segment_name(first)),
                ));
            }
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.shared.dir.join(segment_name(first)))?;
            if let Some(old) = log.active.replace(Arc::new(f)) {
                // Written since the last sync, maybe: the flusher syncs it.
                let mut q = self.shared.queue.lock();
                if !q.dirty.iter().any(|f| Arc::ptr_eq(f, &old)) {
                    q.dirty.push(old);
                }
            }
            log.segments.insert(first, Segment { len: 0, last: None });
            new_segment = true;
        }
        let (Some((&segment, seg)), Some(file)) = (log.segments.last_key_value(), &log.active)
        else {
            return Err(io::Error::other("no active segment"));
        };
        let at = seg.len;
        file.write_all_at(buf, at)?;
        let file = file.clone();
        if let Some(seg) = log.segments.get_mut(&segment) {
            seg.len = at + buf.len() as u64;
            seg.last = Some(last);
        }
        Ok((segment, file, at, new_segment))
    }
}

impl LogStore {
    /// Deletes the entries from `index` on: from memory, then from disk
    /// (later segments first, then the segment that holds `index` cut where
    /// it starts), synced, so that no stale entry can come back after them.
    fn truncate_from(&self, index: u64) -> io::Result<()> {
        let mut log = self.shared.log.lock();
        let Some((segment, offset)) = log
            .entries
            .range(index..)
            .next()
            .map(|(_, s)| (s.segment, s.offset))
        else {
            return Ok(());
        };
        let result = cut(&self.shared.dir, &mut log, segment, offset);
        let mut q = self.shared.queue.lock();
        if let Err(e) = &result {
            tracing::error!(error = %e, "Raft log: truncation failed; this node's Raft stops");
            q.failed.get_or_insert_with(|| Failure::new(e));
            return result;
        }
        drop(log.entries.split_off(&index));
        let last = log
            .entries
            .last_key_value()
            .filter(|(_, s)| s.segment == segment)
            .map(|(&i, _)| i);
        if let Some(seg) = log.segments.get_mut(&segment) {
            seg.len = offset;
            seg.last = last;
        }
        let below = index.checked_sub(1);
        q.written = q.written.min(below);
        q.synced = q.synced.min(below);
        Ok(())
    }

    /// Deletes the entries up to `log_id`: the purge point first (synced),
    /// then from memory, then the segments that hold nothing after it.
    fn purge_upto(&self, log_id: LogId<NodeId>) -> io::Result<()> {
        {
            let mut meta = self.shared.meta.lock();
            if meta.file.last_purged >= Some(log_id) {
                return Ok(());
            }
            let file = MetaFile {
                last_purged: Some(log_id),
                committed: meta.committed_synced,
                ..meta.file.clone()
            };
            write_meta(&self.shared.dir, &file)?;
            meta.file = file;
        }
        let index = log_id.index;
        let mut log = self.shared.log.lock();
        log.entries = log.entries.split_off(&index.saturating_add(1));
        let active = log.segments.last_key_value().map(|(&k, _)| k);
        let gone: Vec<u64> = log
            .segments
            .iter()
            .filter(|(_, s)| s.last.is_none_or(|l| l <= index))
            .map(|(&k, _)| k)
            .collect();
        // Not synced: a deleted segment that comes back holds only entries
        // behind the purge point, which recovery skips.
        for first in &gone {
            match fs::remove_file(self.shared.dir.join(segment_name(*first))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            log.segments.remove(first);
        }
        if active.is_some_and(|a| gone.contains(&a)) {
            log.active = match log.segments.last_key_value() {
                Some((&first, _)) => Some(Arc::new(
                    OpenOptions::new()
                        .write(true)
                        .open(self.shared.dir.join(segment_name(first)))?,
                )),
                None => None,
            };
        }
        Ok(())
    }

    /// Rewrites `meta` with `change` applied (and the commit hint as far as
    /// the synced log reaches).
    fn save_meta(&self, change: impl FnOnce(&mut MetaFile)) -> io::Result<()> {
        let mut meta = self.shared.meta.lock();
        let mut file = MetaFile {
            committed: meta.committed_synced,
            ..meta.file.clone()
        };
        change(&mut file);
        write_meta(&self.shared.dir, &file)?;
        meta.file = file;
        Ok(())
    }
}

/// Cuts `segment` at `offset` and deletes the segments after it.
fn cut(dir: &Path, log: &mut Log, segment: u64, offset: u64) -> io::Result<()> {
    let later: Vec<u64> = log
        .segments
        .range(segment.saturating_add(1)..)
        .map(|(&k, _)| k)
        .collect();
    for first in &later {
        fs::remove_file(dir.join(segment_name(*first)))?;
        log.segments.remove(first);
    }
    let file = match &log.active {
        Some(f) if later.is_empty() => f.clone(),
        _ => {
            // Deleted before the cut is made: were one to come back after
            // a power loss, it could follow the entries appended after the
            // cut and pass for their successors.
            sync_dir(dir)?;
            Arc::new(
                OpenOptions::new()
                    .write(true)
                    .open(dir.join(segment_name(segment)))?,
            )
        }
    };
    file.set_len(offset)?;
    file.sync_data()?;
    log.active = Some(file);
    Ok(())
}

impl Queue {
    // Only tests hold the flusher.
    #[cfg_attr(not(test), allow(clippy::unused_self))]
    fn held(&self) -> bool {
        #[cfg(test)]
        return self.hooks.hold;
        #[cfg(not(test))]
        false
    }
}

/// The flusher: under `always`, syncs as soon as an append waits and
/// answers every append that waited; under every policy, syncs what was
/// written at each tick (1 s, or 30 s under `no`) and saves the commit
/// hint; syncs a last time when the store is dropped.
fn flush_loop(shared: &Shared) {
    let interval = match shared.durability {
        Durability::Always | Durability::Everysec => Duration::from_secs(1),
        Durability::No => Duration::from_secs(30),
    };
    let mut next_tick = Instant::now() + interval;
    loop {
        let mut q = shared.queue.lock();
        while !q.shutdown && (q.held() || (q.waiting.is_empty() && Instant::now() < next_tick)) {
            if q.held() {
                shared.wake.wait(&mut q);
            } else {
                shared.wake.wait_until(&mut q, next_tick);
            }
        }
        let shutdown = q.shutdown;
        let tick = shutdown || Instant::now() >= next_tick;
        let waiting = std::mem::take(&mut q.waiting);
        let files = std::mem::take(&mut q.dirty);
        let dir_dirty = std::mem::take(&mut q.dir_dirty);
        let upto = q.written;
        let failed = q.failed.clone();
        #[cfg(test)]
        let (delay, fail) = (q.hooks.sync_delay, std::mem::take(&mut q.hooks.fail_sync));
        drop(q);
        let result = match failed {
            // Never sync again after a failure: the kernel may have dropped
            // the pages and report the next sync clean.
            Some(f) => Err(f),
            None if files.is_empty() && !dir_dirty => Ok(false),
            None => (|| {
                for f in &files {
                    f.sync_data()?;
                }
                if dir_dirty {
                    sync_dir(&shared.dir)?;
                }
                #[cfg(test)]
                {
                    std::thread::sleep(delay);
                    if fail {
                        return Err(io::Error::other("injected sync failure"));
                    }
                }
                Ok(true)
            })()
            .map_err(|e| Failure::new(&e)),
        };
        let mut q = shared.queue.lock();
        match &result {
            Ok(synced) => {
                q.syncs += u64::from(*synced);
                q.synced = upto.min(q.written);
            }
            Err(f) => {
                if q.failed.is_none() {
                    tracing::error!(error = %f.message, "Raft log: sync failed; this node's Raft stops");
                    q.failed = Some(f.clone());
                }
            }
        }
        let synced = q.synced;
        drop(q);
        for done in waiting {
            done(result.as_ref().map(|_| ()).map_err(Failure::error));
        }
        if result.is_ok() {
            let mut meta = shared.meta.lock();
            let reach = synced.max(meta.file.last_purged.map(|p| p.index));
            if meta
                .committed
                .is_some_and(|c| reach.is_some_and(|r| c.index <= r))
            {
                meta.committed_synced = meta.committed;
            }
            if tick && meta.committed_synced != meta.file.committed {
                let file = MetaFile {
                    committed: meta.committed_synced,
                    ..meta.file.clone()
                };
                match write_meta(&shared.dir, &file) {
                    Ok(()) => meta.file = file,
                    Err(e) => {
                        tracing::warn!(error = %e, "Raft log: could not save the commit index (a hint)");
                    }
                }
            }
        }
        if shutdown {
            return;
        }
        if tick {
            next_tick = Instant::now() + interval;
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        use std::ops::Bound::{Excluded, Included};
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        // BTreeMap::range panics on these.
        let empty = match bounds {
            (Included(s) | Excluded(s), Included(e) | Excluded(e)) if s > e => true,
            (Excluded(s), Excluded(e)) => s == e,
            _ => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        let log = self.shared.log.lock();
        Ok(log
            .entries
            .range(bounds)
            .map(|(_, s)| s.entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged = self.shared.meta.lock().file.last_purged;
        let last = self
            .shared
            .log
            .lock()
            .entries
            .last_key_value()
            .map(|(_, s)| s.entry.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.save_meta(|m| m.vote = Some(*vote))
            .map_err(|e| vote_err(&e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared.meta.lock().file.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // A hint: saved by the flusher (see the module docs).
        self.shared.meta.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared.meta.lock().file.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        self.append_entries(entries, Box::new(move |r| callback.log_io_completed(r)))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id.index).map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).map_err(|e| write_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;
    use std::sync::mpsc;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn blanks(term: u64, range: RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
        range.map(|i| blank(term, i)).collect()
    }

    /// (term, index) of `range`.
    fn ids(term: u64, range: RangeInclusive<u64>) -> Vec<(u64, u64)> {
        range.map(|i| (term, i)).collect()
    }

    async fn all(store: &mut LogStore) -> Vec<(u64, u64)> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    /// Appends one entry per call and waits for each to be flushed.
    async fn append_each(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
        for e in entries {
            store.blocking_append([e]).await.unwrap();
        }
    }

    fn segments(data: &Path) -> Vec<u64> {
        let mut out: Vec<u64> = fs::read_dir(data.join(LOG_DIR))
            .unwrap()
            .filter_map(|e| parse_segment_name(e.unwrap().file_name().to_str().unwrap()))
            .collect();
        out.sort_unstable();
        out
    }

    fn segment_path(data: &Path, first: u64) -> PathBuf {
        data.join(LOG_DIR).join(segment_name(first))
    }

    fn offset_of(store: &LogStore, index: u64) -> u64 {
        store.shared.log.lock().entries[&index].offset
    }

    /// Room for six blank entries per segment.
    const SMALL: u64 = 64;

    #[tokio::test]
    async fn entries_vote_and_purge_point_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
            s.blocking_append(blanks(1, 1..=10)).await.unwrap();
            assert_eq!(all(&mut s).await, ids(1, 1..=10));
            let mid = s.try_get_log_entries(4..6).await.unwrap();
            assert_eq!(mid, blanks(1, 4..=5));
            s.save_vote(&Vote::new(3, 2)).await.unwrap();
            s.purge(id(1, 2)).await.unwrap();
            let st = s.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id, Some(id(1, 2)));
            assert_eq!(st.last_log_id, Some(id(1, 10)));
        }
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 3..=10));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(id(1, 2)));
        assert_eq!(st.last_log_id, Some(id(1, 10)));
        s.blocking_append([blank(1, 11)]).await.unwrap();
        assert_eq!(all(&mut s).await, ids(1, 3..=11));
    }

    #[tokio::test]
    async fn commit_hint_is_saved_only_as_far_as_the_log_goes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
            s.blocking_append(blanks(1, 1..=5)).await.unwrap();
            s.save_committed(Some(id(1, 4))).await.unwrap();
        }
        let mut s = LogStore::open(dir.path(), Durability::No).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(id(1, 4)));
        // Beyond the log (which cannot happen with openraft, but the hint
        // must never send it looking for entries that are not there).
        s.save_committed(Some(id(1, 9))).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path(), Durability::No).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(id(1, 4)));
    }

    #[tokio::test]
    async fn truncated_entries_are_replaced_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
            append_each(&mut s, blanks(1, 1..=20)).await;
            assert!(
                segments(dir.path()).len() >= 3,
                "{:?}",
                segments(dir.path())
            );
            s.truncate(id(1, 6)).await.unwrap();
            assert_eq!(all(&mut s).await, ids(1, 1..=5));
            assert_eq!(s.get_log_state().await.unwrap().last_log_id, Some(id(1, 5)));
            assert!(segments(dir.path()).iter().all(|&f| f <= 6));
            append_each(&mut s, blanks(2, 6..=8)).await;
            let want = [ids(1, 1..=5), ids(2, 6..=8)].concat();
            assert_eq!(all(&mut s).await, want);
        }
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        assert_eq!(all(&mut s).await, [ids(1, 1..=5), ids(2, 6..=8)].concat());
        // Truncating in the middle of a segment, at its first record and
        // past the end.
        s.truncate(id(2, 8)).await.unwrap();
        s.truncate(id(2, 50)).await.unwrap();
        s.truncate(id(1, 1)).await.unwrap();
        assert_eq!(all(&mut s).await, Vec::new());
        append_each(&mut s, blanks(3, 1..=2)).await;
        drop(s);
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        assert_eq!(all(&mut s).await, ids(3, 1..=2));
    }

    #[tokio::test]
    async fn purge_deletes_whole_segments_and_reopen_starts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
            append_each(&mut s, blanks(1, 1..=30)).await;
            let before = segments(dir.path());
            assert_eq!(before, vec![1, 7, 13, 19, 25]);
            s.purge(id(1, 20)).await.unwrap();
            // 19's holds 21 to 24.
            assert_eq!(segments(dir.path()), vec![19, 25]);
            assert_eq!(all(&mut s).await, ids(1, 21..=30));
        }
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(id(1, 20)));
        assert_eq!(st.last_log_id, Some(id(1, 30)));
        assert_eq!(all(&mut s).await, ids(1, 21..=30));
        append_each(&mut s, vec![blank(1, 31)]).await;
        // Everything (a snapshot installed past the log): no segment left,
        // and the next append starts one.
        s.purge(id(1, 40)).await.unwrap();
        assert_eq!(segments(dir.path()), Vec::<u64>::new());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(id(1, 40)));
        append_each(&mut s, vec![blank(2, 41)]).await;
        assert_eq!(segments(dir.path()), vec![41]);
        drop(s);
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        assert_eq!(all(&mut s).await, vec![(2, 41)]);
        assert_eq!(
            s.get_log_state().await.unwrap().last_purged_log_id,
            Some(id(1, 40))
        );
    }

    /// Five entries in one segment; `damage` is done to the file; the store
    /// reopened must hold `want`, and append after it.
    async fn after_damage(damage: impl FnOnce(&Path, u64), want: u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let last_at = {
            let mut s = LogStore::open(dir.path(), Durability::Always).unwrap();
            append_each(&mut s, blanks(1, 1..=5)).await;
            offset_of(&s, 5)
        };
        damage(&path, last_at);
        let mut s = LogStore::open(dir.path(), Durability::Always).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 1..=want));
        if want < 5 {
            assert_eq!(fs::metadata(&path).unwrap().len(), last_at, "not cut there");
        }
        append_each(&mut s, blanks(2, want + 1..=7)).await;
        drop(s);
        let mut s = LogStore::open(dir.path(), Durability::Always).unwrap();
        assert_eq!(
            all(&mut s).await,
            [ids(1, 1..=want), ids(2, want + 1..=7)].concat()
        );
    }

    #[tokio::test]
    async fn a_record_cut_in_the_middle_is_dropped() {
        after_damage(
            |path, last_at| {
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(last_at + 3).unwrap();
            },
            4,
        )
        .await;
        // Cut inside the header.
        after_damage(
            |path, last_at| {
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(last_at + 5).unwrap();
            },
            4,
        )
        .await;
    }

    #[tokio::test]
    async fn garbage_after_the_last_record_is_dropped() {
        after_damage(
            |path, _| {
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(b"\x05\x00\x00\x00\x01\x02\x03\x04junk")
                    .unwrap();
            },
            5,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        {
            let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
            append_each(&mut s, blanks(1, 1..=5)).await;
        }
        let len = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xff; 13]).unwrap();
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 1..=5));
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
    }

    #[tokio::test]
    async fn a_flipped_byte_in_the_last_record_drops_it() {
        after_damage(
            |path, last_at| {
                // The term: still a valid entry, but not the one written.
                let mut bytes = fs::read(path).unwrap();
                bytes[last_at as usize + HEADER] ^= 0x40;
                fs::write(path, bytes).unwrap();
            },
            4,
        )
        .await;
    }

    #[tokio::test]
    async fn damage_in_an_early_segment_deletes_the_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
            append_each(&mut s, blanks(1, 1..=20)).await;
        }
        assert_eq!(segments(dir.path()), vec![1, 7, 13, 19]);
        let path = segment_path(dir.path(), 7);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 1..=6));
        assert_eq!(segments(dir.path()), vec![1]);
        append_each(&mut s, blanks(2, 7..=8)).await;
        drop(s);
        let mut s = LogStore::open_with(dir.path(), Durability::Everysec, SMALL).unwrap();
        assert_eq!(all(&mut s).await, [ids(1, 1..=6), ids(2, 7..=8)].concat());
    }

    #[tokio::test]
    async fn always_answers_only_after_a_sync_and_reads_see_entries_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), Durability::Always).unwrap();
        s.shared.queue.lock().hooks.hold = true;
        let (tx, rx) = mpsc::channel();
        let shared = s.shared.clone();
        s.append_entries(
            blanks(1, 1..=3),
            Box::new(move |r| {
                let q = shared.queue.lock();
                tx.send((r.is_ok(), q.syncs, q.synced)).unwrap();
            }),
        )
        .unwrap();
        // Readable before it is durable (openraft reads it to replicate).
        let mut reader = s.get_log_reader().await;
        assert_eq!(all(&mut reader).await, ids(1, 1..=3));
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "answered before any sync");
        assert_eq!(s.shared.queue.lock().syncs, 0);
        s.shared.queue.lock().hooks.hold = false;
        s.shared.wake.notify_all();
        let (ok, syncs, synced) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(ok);
        assert_eq!(syncs, 1);
        assert_eq!(synced, Some(3));
    }

    #[tokio::test]
    async fn always_shares_one_sync_between_concurrent_appends() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open_with(dir.path(), Durability::Always, 4096).unwrap();
        // As a disk would take.
        s.shared.queue.lock().hooks.sync_delay = Duration::from_millis(5);
        let (tx, rx) = mpsc::channel();
        let n = 200;
        for i in 1..=n {
            let tx = tx.clone();
            let shared = s.shared.clone();
            s.append_entries(
                [blank(1, i)],
                Box::new(move |r| {
                    let synced = shared.queue.lock().synced;
                    tx.send((i, r.is_ok(), synced)).unwrap();
                }),
            )
            .unwrap();
        }
        let mut answered = 0;
        while answered < n {
            let (i, ok, synced) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(ok);
            assert!(
                synced >= Some(i),
                "entry {i} answered with only {synced:?} synced"
            );
            answered += 1;
        }
        let syncs = s.shared.queue.lock().syncs;
        assert!(syncs >= 1);
        assert!(syncs < n, "{syncs} syncs for {n} appends: no group commit");
    }

    #[tokio::test]
    async fn everysec_answers_at_once_and_syncs_within_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        let (tx, rx) = mpsc::channel();
        s.append_entries(
            blanks(1, 1..=2),
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        )
        .unwrap();
        assert_eq!(rx.try_recv(), Ok(true), "not answered when append returned");
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.shared.queue.lock().synced < Some(2) {
            assert!(Instant::now() < deadline, "not synced within 5 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_waiting_appends_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), Durability::Always).unwrap();
        s.blocking_append([blank(1, 1)]).await.unwrap();
        s.shared.queue.lock().hooks.fail_sync = true;
        assert!(s.blocking_append([blank(1, 2)]).await.is_err());
        let (tx, rx) = mpsc::channel();
        let r = s.append_entries(
            [blank(1, 3)],
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
        assert!(r.is_err());
        assert_eq!(rx.try_recv(), Ok(false));
        // And the next sync would have succeeded: it is not tried.
        assert!(s.blocking_append([blank(1, 3)]).await.is_err());
    }

    /// The previous release's writer (redb, `raft.redb`), as it stored the
    /// log, the vote, the purge point and the commit hint.
    fn write_old_log(
        path: &Path,
        entries: &[Entry<TypeConfig>],
        vote: Vote<NodeId>,
        purged: LogId<NodeId>,
        committed: Option<LogId<NodeId>>,
    ) {
        const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");
        const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raft_meta");
        let db = redb::Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LOG).unwrap();
            for e in entries {
                let bytes = postcard::to_stdvec(e).unwrap();
                t.insert(e.log_id.index, bytes.as_slice()).unwrap();
            }
            let mut m = tx.open_table(META).unwrap();
            m.insert("vote", postcard::to_stdvec(&vote).unwrap().as_slice())
                .unwrap();
            m.insert(
                "last_purged",
                postcard::to_stdvec(&purged).unwrap().as_slice(),
            )
            .unwrap();
            m.insert(
                "committed",
                postcard::to_stdvec(&committed).unwrap().as_slice(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    #[tokio::test]
    async fn a_redb_log_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        write_old_log(
            &dir.path().join(OLD_LOG),
            &blanks(2, 4..=10),
            Vote::new(2, 3),
            id(1, 3),
            Some(id(2, 8)),
        );
        for _ in 0..2 {
            let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
            assert_eq!(all(&mut s).await, ids(2, 4..=10));
            assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
            assert_eq!(s.read_committed().await.unwrap(), Some(id(2, 8)));
            let st = s.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id, Some(id(1, 3)));
            assert_eq!(st.last_log_id, Some(id(2, 10)));
            assert!(!dir.path().join(OLD_LOG).exists());
            assert!(dir.path().join(OLD_LOG_DONE).exists());
            assert!(!dir.path().join("raft-log.migrating").exists());
        }
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        s.blocking_append([blank(3, 11)]).await.unwrap();
        assert_eq!(all(&mut s).await, [ids(2, 4..=10), vec![(3, 11)]].concat());
    }

    #[tokio::test]
    async fn an_interrupted_import_is_done_again_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(OLD_LOG);
        write_old_log(&old, &blanks(1, 1..=3), Vote::new(1, 1), id(0, 0), None);
        // Died while building it: the half-built directory is dropped.
        fs::create_dir_all(dir.path().join("raft-log.migrating")).unwrap();
        fs::write(
            dir.path().join("raft-log.migrating").join(segment_name(1)),
            b"junk",
        )
        .unwrap();
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 1..=3));
        drop(s);
        // Died after moving it into place, before renaming raft.redb: the
        // import is not done twice.
        fs::rename(dir.path().join(OLD_LOG_DONE), &old).unwrap();
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        s.blocking_append([blank(1, 4)]).await.unwrap();
        drop(s);
        write_old_log(&old, &blanks(1, 1..=2), Vote::new(1, 1), id(0, 0), None);
        let mut s = LogStore::open(dir.path(), Durability::Everysec).unwrap();
        assert_eq!(all(&mut s).await, ids(1, 1..=4));
        assert!(!old.exists());
    }
}
