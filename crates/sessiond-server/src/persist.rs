//! The persistence pipeline: changes flow from the store to a writer thread
//! that applies them to [`Storage`] in batches.
//!
//! Group commit: the writer takes every batch waiting in its queue, applies
//! them in one storage transaction and, under `always`, syncs once for all
//! of them; every client waiting on any of those batches is then answered.
//! Under `everysec` it applies without syncing and syncs at least once a
//! second; under `no`, every 30 seconds. Shutdown applies what is queued and
//! syncs before returning, and reports whether it could.
//!
//! Backpressure: under `everysec` and `no` nothing waits for the disk, so a
//! long write burst could queue more than the policy may lose. Once the
//! oldest change not yet applied is older than [`MAX_LAG`], replies to
//! writes wait until the writer has caught up to it.
//!
//! # Storage faults
//!
//! A failed storage write (ENOSPC, EIO, EDQUOT, a failed fsync) is never
//! hidden and never drops anything that was acknowledged:
//!
//! - The writer keeps every batch until it is *durable* (synced), not only
//!   until it is applied: after a failure only synced data is known to be
//!   in the file (redb may roll unsynced commits back when it recovers the
//!   file). Under `everysec` and `no`, the batch that failed and
//!   everything after it stay queued, in order (under `always` they are
//!   undone instead: below).
//! - From the first failure on, [`Persistence::write_refusal`] returns the
//!   [`StorageFault`]; the command path refuses write commands with
//!   `-MISCONF …` before applying anything (the `write_gate` module). Reads,
//!   lock releases and everything that only touches memory keep working.
//!   Clients waiting for the disk (`always`, backpressure) get an error.
//! - The writer retries in the background with backoff ([`RETRY_MIN`] to
//!   [`RETRY_MAX`]): it asks storage to [`Storage::recover`] (redb: close and
//!   reopen the file, which redb requires after an I/O error), then applies
//!   the whole queue again from the last durable point, in order, syncing.
//!   [`sessiond_core::Mutation`]s are upserts and deletes, so a batch that
//!   reached the file before the failure is harmless to apply again. Once
//!   the queue is durable, writes are accepted again.
//! - Shutdown tries a few more times and returns a [`FlushReport`] saying
//!   what was and was not written; the binary exits non-zero when it could
//!   not flush.
//! - INFO (`# Persistence`), the metrics (`sessiond_storage_*`) and the log
//!   show the state, the cause and since when.
//!
//! # Under `always`: a write that got an error is undone
//!
//! Under `always` no write is answered before its batch is synced, so a
//! failure means the batches not yet durable were never acknowledged. They
//! must not stay visible, nor reach the disk later: on the first failure
//! the writer drops every batch after the last durable one (and the ones
//! still on their way) and asks the server to undo them
//! ([`Progress::undo_epoch`]); the server undoes their changes in memory
//! (the engine's undo journal), records them as discarded (their waiters
//! get [`DurabilityError`] even if later batches become durable), sends
//! [`Persistence::undone`] and queues the mutations that put storage back
//! in the durable state (a failed sync leaves unknown what reached the
//! file). Only then does the writer retry and accept writes again. Reads
//! of a session with a change not yet durable wait for it, so an undone
//! change was never seen. Under `everysec` and `no` writes are answered
//! before they are durable, so nothing is undone: everything stays queued.
//!
//! Under every policy the queue held back between syncs is bounded: once
//! it holds more than [`RETAIN_SYNC_BYTES`] the writer syncs early.
//!
//! With a memory limit (`--max-memory`), what may wait for the disk is
//! bounded in bytes too ([`WriterOptions::max_pending_bytes`]): the writer
//! syncs once half of it is applied and unsynced, and replies to writes
//! wait while more than it is submitted and not yet on disk, so a write
//! burst cannot hold more memory in the queue than the limit set aside.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use sessiond_core::Mutation;
use tokio::sync::watch;

use crate::config::Durability;
use crate::storage::{ChangeLogState, Storage, StorageError};

/// A position in the stream of batches; waiting for it means waiting for
/// every batch up to it.
pub type Seq = u64;

enum Msg {
    Batch(Seq, Vec<Mutation>, u64),
    // The server undid what the writer dropped at failure `epoch` (under
    // `always`); batches after this message are kept again.
    Undone(u64),
    Shutdown,
}

/// How far the writer may fall behind under `everysec` and `no` before
/// replies to writes wait for it.
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// The first retry after a storage failure comes this long after it.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Retries back off (doubling) up to this interval.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts to flush at shutdown while storage fails, [`RETRY_MIN`] apart
/// and doubling.
pub const SHUTDOWN_ATTEMPTS: u32 = 4;
/// When the batches applied but not yet synced hold more than this many
/// bytes of keys and values, the writer syncs early (they are kept in
/// memory until synced, to be re-applied after a failure).
pub const RETAIN_SYNC_BYTES: usize = 64 << 20;
/// At most this many mutations go into one storage transaction.
const MAX_TRANSACTION_MUTATIONS: usize = 50_000;
/// While recovering from a failure, the queue is written in synced
/// transactions of about this many bytes: each that gets through is
/// durable and leaves the queue, so a disk with a little space left drains
/// part of the queue, and a transaction needs little free space to commit.
pub const RECOVERY_TRANSACTION_BYTES: usize = 1 << 20;

// How often the submit side notes (seq, time) to measure the writer's lag.
const LAG_MARK_EVERY: Duration = Duration::from_millis(50);

/// How far the writer has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every batch up to this one is applied to storage (maybe not synced).
    pub applied: Seq,
    /// Every batch up to this one is on disk.
    pub durable: Seq,
    /// Storage is failing now: writes are refused and the writer retries.
    /// Nothing after `durable` is known to be on disk.
    pub failed: bool,
    /// Under `always`: how many times the writer dropped the batches after
    /// `undo_after` at a failure and asked for them to be undone
    /// ([`Persistence::undo_due`]).
    pub undo_epoch: u64,
    /// The last durable batch at the newest such failure.
    pub undo_after: Seq,
    /// Storage transactions applied.
    pub transactions: u64,
    /// Syncs to disk.
    pub syncs: u64,
}

/// Why a wait for the disk failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DurabilityError {
    /// `everysec`, `no`: the change stays and reaches the disk once
    /// storage accepts writes again.
    #[error(
        "storage is failing: the change is applied in memory and queued for the disk, but is not on disk yet (the server retries; see INFO persistence)"
    )]
    Queued,
    /// `always`: the change was not made (undone in memory, never written):
    /// the client may send it again once storage accepts writes.
    #[error(
        "storage failed to sync the change: it was not made (undone, nothing of it is kept); retry once storage accepts writes again (see INFO persistence)"
    )]
    Undone,
}

/// What kind of failure storage reported, from the operating system's
/// error underneath when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// ENOSPC.
    DiskFull,
    /// EDQUOT.
    QuotaExceeded,
    /// EIO and other I/O errors (a failed fsync among them).
    Io,
    /// Anything else the engine reported.
    Engine,
}

impl FaultKind {
    fn of(e: &StorageError) -> Self {
        let Some(io) = e.io_error() else {
            return FaultKind::Engine;
        };
        match (io.raw_os_error(), io.kind()) {
            (Some(28), _) | (_, std::io::ErrorKind::StorageFull) => FaultKind::DiskFull,
            (Some(122), _) | (_, std::io::ErrorKind::QuotaExceeded) => FaultKind::QuotaExceeded,
            _ => FaultKind::Io,
        }
    }

    /// A short name: `disk-full`, `quota-exceeded`, `io-error`, `engine-error`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk-full",
            FaultKind::QuotaExceeded => "quota-exceeded",
            FaultKind::Io => "io-error",
            FaultKind::Engine => "engine-error",
        }
    }
}

/// Storage is failing: what, since when, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// What kind of failure.
    pub kind: FaultKind,
    /// The latest error, its source included.
    pub cause: String,
    /// When the first failure of this run of failures happened.
    pub since: SystemTime,
    /// Failed attempts since then, the first included.
    pub failures: u64,
}

impl StorageFault {
    /// `since` in seconds since the Unix epoch.
    pub fn since_unix_secs(&self) -> u64 {
        self.since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The text of the refusal.
    pub fn message(&self) -> String {
        let ago = self.since.elapsed().map_or(0, |d| d.as_secs());
        format!(
            "storage is failing ({}: {}) since unix time {} ({ago} s ago); write commands are refused until the server can persist again (it retries by itself); reads work",
            self.kind.name(),
            self.cause,
            self.since_unix_secs(),
        )
    }
}

/// The storage state the writer shares with the server, readable without
/// the state lock.
#[derive(Debug, Default)]
pub struct StorageHealth {
    failing: AtomicBool,
    fault: parking_lot::Mutex<Option<StorageFault>>,
    failures: AtomicU64,
    recoveries: AtomicU64,
    refused_writes: AtomicU64,
    undone_batches: AtomicU64,
    queued_batches: AtomicU64,
    queued_mutations: AtomicU64,
    change_log: parking_lot::Mutex<Option<ChangeLogState>>,
}

impl StorageHealth {
    /// The change log's state, when storage has one (as the writer last
    /// saw it).
    pub fn change_log(&self) -> Option<ChangeLogState> {
        *self.change_log.lock()
    }

    /// The fault, while storage is failing.
    pub fn fault(&self) -> Option<StorageFault> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.fault.lock().clone()
    }

    /// Failed storage attempts (writes, syncs, reopens) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Times storage came back after failing.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Write commands refused because storage was failing.
    pub fn refused_writes(&self) -> u64 {
        self.refused_writes.load(Ordering::Relaxed)
    }

    /// Counts one refused write command.
    pub fn count_refused_write(&self) {
        self.refused_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches undone after failures under `always` (their writes were
    /// answered with an error).
    pub fn undone_batches(&self) -> u64 {
        self.undone_batches.load(Ordering::Relaxed)
    }

    /// Counts batches undone.
    pub fn count_undone(&self, batches: u64) {
        self.undone_batches.fetch_add(batches, Ordering::Relaxed);
    }

    /// Batches (and their mutations) held by the writer and not yet on disk.
    pub fn queued(&self) -> (u64, u64) {
        (
            self.queued_batches.load(Ordering::Relaxed),
            self.queued_mutations.load(Ordering::Relaxed),
        )
    }

    fn set_fault(&self, fault: StorageFault) {
        *self.fault.lock() = Some(fault);
        self.failing.store(true, Ordering::Release);
    }

    fn clear_fault(&self) {
        self.failing.store(false, Ordering::Release);
        *self.fault.lock() = None;
    }
}

/// What shutdown could and could not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Every batch up to this one is on disk.
    pub durable: Seq,
    /// Under `always`: batches dropped after a failure, their writes
    /// answered with an error and undone (not lost: never acknowledged).
    pub undone_batches: u64,
    /// Batches left in memory only: lost with this process.
    pub unflushed_batches: usize,
    /// Mutations in them.
    pub unflushed_mutations: usize,
    /// Why, when storage was failing.
    pub fault: Option<StorageFault>,
}

impl FlushReport {
    /// Everything submitted is on disk.
    pub fn flushed(&self) -> bool {
        self.unflushed_batches == 0 && self.fault.is_none()
    }

    /// `Ok` when flushed, else the error to exit with.
    ///
    /// # Errors
    /// [`NotFlushed`] when something was not written.
    pub fn into_result(self) -> Result<(), NotFlushed> {
        if self.flushed() {
            Ok(())
        } else {
            Err(NotFlushed(self))
        }
    }
}

impl std::fmt::Display for FlushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.flushed() {
            write!(
                f,
                "storage flushed (every change up to batch {} is on disk)",
                self.durable
            )?;
            if self.undone_batches > 0 {
                write!(
                    f,
                    "; {} batches that storage failed to sync were undone (their writes were answered with an error)",
                    self.undone_batches
                )?;
            }
            return Ok(());
        }
        write!(
            f,
            "storage NOT flushed: {} batches ({} changes) after batch {} are not on disk and are lost",
            self.unflushed_batches, self.unflushed_mutations, self.durable
        )?;
        if let Some(fault) = &self.fault {
            write!(
                f,
                "; storage failing since unix time {} ({}: {})",
                fault.since_unix_secs(),
                fault.kind.name(),
                fault.cause
            )?;
        }
        Ok(())
    }
}

/// Shutdown could not write everything to storage.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotFlushed(pub FlushReport);

/// Writer settings; [`WriterOptions::for_policy`] gives the production ones.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// See [`MAX_LAG`].
    pub max_lag: Duration,
    /// Sync at least this often when applied changes are not synced
    /// (`always` syncs every transaction whatever this says).
    pub sync_every: Duration,
    /// How long changes gather before they are applied when no reply waits.
    pub gather: Duration,
    /// First retry delay after a failure.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Most bytes of changes ([`mutation_bytes`]) submitted and not yet on
    /// disk before replies to writes wait (`None`: only [`MAX_LAG`]
    /// bounds it); the writer syncs once half of it is unsynced.
    pub max_pending_bytes: Option<usize>,
}

impl WriterOptions {
    /// The settings for `policy`.
    pub fn for_policy(policy: Durability) -> Self {
        Self {
            max_lag: MAX_LAG,
            sync_every: match policy {
                Durability::Always => Duration::ZERO,
                Durability::Everysec => Duration::from_secs(1),
                Durability::No => Duration::from_secs(30),
            },
            // When no reply waits for the disk, changes gather this long
            // before they are applied: one storage transaction then carries
            // the changes of many requests instead of each paying for its
            // own B-tree copy on write. Well inside the one second
            // `everysec` may lose anyway.
            gather: match policy {
                Durability::Always => Duration::ZERO,
                Durability::Everysec | Durability::No => Duration::from_millis(50),
            },
            retry_min: RETRY_MIN,
            retry_max: RETRY_MAX,
            max_pending_bytes: None,
        }
    }

    /// The unsynced changes the writer may hold before it syncs early.
    fn retain_sync_bytes(&self) -> usize {
        self.max_pending_bytes
            .map_or(RETAIN_SYNC_BYTES, |m| (m / 2).min(RETAIN_SYNC_BYTES))
    }
}

/// The handle the server uses to send changes and wait for them.
pub struct Persistence {
    tx: mpsc::Sender<Msg>,
    // Only advanced under the state lock, so batch order is change order.
    next_seq: Seq,
    progress: watch::Receiver<Progress>,
    policy: Durability,
    writer: Option<JoinHandle<FlushReport>>,
    health: Arc<StorageHealth>,
    // Submitted batches not yet known to be applied, one mark per
    // LAG_MARK_EVERY: (last seq submitted, when). Oldest first.
    lag_marks: VecDeque<(Seq, Instant)>,
    max_lag: Duration,
    // With a byte bound: every batch not known durable, with the bytes
    // submitted up to and including it, oldest first; and the bytes of
    // every batch known durable.
    byte_marks: VecDeque<(Seq, u64)>,
    submitted_bytes: u64,
    durable_bytes: u64,
    max_pending_bytes: Option<usize>,
    report: Option<FlushReport>,
    // Under `always`: the last failure whose batches the server undid, and
    // the ranges of batches undone (never durable, whatever the progress
    // says later).
    undone_epoch: u64,
    discarded: Arc<parking_lot::Mutex<Vec<(Seq, Seq)>>>,
}

/// What a reply waits for before it is sent.
#[derive(Debug)]
pub struct DiskWait {
    seq: Seq,
    // Only applied (backpressure), or durable (`always`).
    durable: bool,
    progress: watch::Receiver<Progress>,
    discarded: Arc<parking_lot::Mutex<Vec<(Seq, Seq)>>>,
    // Under `always` a failed batch is undone, not kept.
    undoes: bool,
}

impl DiskWait {
    /// Waits until the writer got there.
    ///
    /// # Errors
    /// [`DurabilityError`] when storage is failing before it got there.
    pub async fn wait(mut self) -> Result<(), DurabilityError> {
        let (seq, durable) = (self.seq, self.durable);
        let error = if self.undoes {
            DurabilityError::Undone
        } else {
            DurabilityError::Queued
        };
        let reached = |p: &Progress| {
            if durable {
                p.durable >= seq
            } else {
                p.applied >= seq
            }
        };
        let done = *self
            .progress
            .wait_for(|p| reached(p) || p.failed)
            .await
            .map_err(|_| error.clone())?;
        // A batch undone after a failure never becomes durable, even when
        // later ones do.
        let undone = self
            .discarded
            .lock()
            .iter()
            .any(|&(from, to)| (from..=to).contains(&seq));
        if reached(&done) && !undone {
            Ok(())
        } else {
            Err(error)
        }
    }
}

impl Persistence {
    /// Starts the writer thread over `storage`.
    pub fn start(storage: Box<dyn Storage>, policy: Durability) -> Self {
        Self::start_with_options(storage, policy, WriterOptions::for_policy(policy))
    }

    /// [`Self::start`] with another lag limit (tests).
    pub fn start_with_max_lag(
        storage: Box<dyn Storage>,
        policy: Durability,
        max_lag: Duration,
    ) -> Self {
        let options = WriterOptions {
            max_lag,
            ..WriterOptions::for_policy(policy)
        };
        Self::start_with_options(storage, policy, options)
    }

    /// [`Self::start`] with other writer settings (tests).
    pub fn start_with_options(
        storage: Box<dyn Storage>,
        policy: Durability,
        options: WriterOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let health = Arc::new(StorageHealth::default());
        // Before the writer runs: INFO may be asked as soon as the server
        // listens.
        *health.change_log.lock() = storage.change_log();
        let writer_health = health.clone();
        let writer = std::thread::Builder::new()
            .name("sessiond-writer".into())
            .spawn(move || {
                Writer::new(storage, rx, progress_tx, writer_health, policy, options).run()
            })
            .ok();
        Self {
            tx,
            next_seq: 0,
            progress,
            policy,
            writer,
            health,
            lag_marks: VecDeque::new(),
            byte_marks: VecDeque::new(),
            submitted_bytes: 0,
            durable_bytes: 0,
            max_pending_bytes: options.max_pending_bytes,
            max_lag: options.max_lag,
            report: None,
            undone_epoch: 0,
            discarded: Arc::default(),
        }
    }

    /// Under `always`, after a failure: `(epoch, after)` when the writer
    /// dropped the batches after `after` and the server must undo them,
    /// then call [`Persistence::undone`] (under the same lock, before
    /// submitting anything else).
    pub fn undo_due(&self) -> Option<(u64, Seq)> {
        let p = self.progress.borrow();
        (p.undo_epoch > self.undone_epoch).then_some((p.undo_epoch, p.undo_after))
    }

    /// The batches after `after` up to the last submitted were undone for
    /// failure `epoch`: their waiters fail, and the writer keeps what is
    /// submitted from now on.
    pub fn undone(&mut self, epoch: u64, after: Seq) {
        self.undone_epoch = epoch;
        if self.next_seq > after {
            self.discarded.lock().push((after + 1, self.next_seq));
        }
        let _ = self.tx.send(Msg::Undone(epoch));
    }

    /// Batches undone after failures, in all.
    pub fn undone_batches(&self) -> u64 {
        self.discarded
            .lock()
            .iter()
            .map(|&(from, to)| to + 1 - from)
            .sum()
    }

    /// Queues `mutations` (taken from the store under its lock) and returns
    /// their position, or `None` when there was nothing to write.
    pub fn submit(&mut self, mutations: Vec<Mutation>, version_floor: u64) -> Option<Seq> {
        if mutations.is_empty() {
            return None;
        }
        self.next_seq += 1;
        if self.max_pending_bytes.is_some() {
            self.submitted_bytes += mutations.iter().map(mutation_bytes).sum::<usize>() as u64;
            self.byte_marks
                .push_back((self.next_seq, self.submitted_bytes));
        }
        // A send fails only when the writer is gone; the wait then reports it.
        let _ = self
            .tx
            .send(Msg::Batch(self.next_seq, mutations, version_floor));
        let now = Instant::now();
        match self.lag_marks.back_mut() {
            Some((seq, at)) if now.duration_since(*at) < LAG_MARK_EVERY => *seq = self.next_seq,
            _ => self.lag_marks.push_back((self.next_seq, now)),
        }
        Some(self.next_seq)
    }

    /// The position of the newest batch submitted, if any.
    pub fn last_submitted(&self) -> Option<Seq> {
        (self.next_seq > 0).then_some(self.next_seq)
    }

    /// What the reply to a write that made the changes `seq` must wait for:
    /// under `always`, `seq` on disk; otherwise nothing, unless the writer
    /// is more than the lag limit behind, then until it caught up with the
    /// oldest change over the limit.
    pub fn waiter(&mut self, seq: Option<Seq>) -> Option<DiskWait> {
        let seq = seq?;
        if self.policy == Durability::Always {
            return Some(DiskWait {
                seq,
                durable: true,
                progress: self.progress.clone(),
                discarded: self.discarded.clone(),
                undoes: self.policy == Durability::Always,
            });
        }
        if let Some(wait) = self.pending_bytes_wait() {
            return Some(wait);
        }
        let applied = self.progress.borrow().applied;
        while self.lag_marks.front().is_some_and(|(s, _)| *s <= applied) {
            self.lag_marks.pop_front();
        }
        let (behind, since) = *self.lag_marks.front()?;
        (since.elapsed() > self.max_lag).then(|| DiskWait {
            seq: behind,
            durable: false,
            progress: self.progress.clone(),
            discarded: self.discarded.clone(),
            undoes: self.policy == Durability::Always,
        })
    }

    /// With a byte bound: when more than it is submitted and not yet on
    /// disk, a wait until enough of it is.
    fn pending_bytes_wait(&mut self) -> Option<DiskWait> {
        let max = self.max_pending_bytes? as u64;
        let durable = self.progress.borrow().durable;
        while let Some(&(seq, bytes)) = self.byte_marks.front() {
            if seq > durable {
                break;
            }
            self.durable_bytes = bytes;
            self.byte_marks.pop_front();
        }
        if self.submitted_bytes - self.durable_bytes <= max {
            return None;
        }
        // The first batch whose durability brings what is pending under
        // the bound.
        let enough = self.submitted_bytes - max;
        let at = self
            .byte_marks
            .partition_point(|&(_, bytes)| bytes < enough);
        let (seq, _) = *self.byte_marks.get(at)?;
        Some(DiskWait {
            seq,
            durable: true,
            progress: self.progress.clone(),
            discarded: self.discarded.clone(),
            undoes: self.policy == Durability::Always,
        })
    }

    /// A wait until the batches up to `seq` are applied to storage (not
    /// necessarily synced); `None` when there is nothing to wait for.
    pub fn applied_waiter(&self, seq: Option<Seq>) -> Option<DiskWait> {
        let seq = seq?;
        (self.progress.borrow().applied < seq).then(|| DiskWait {
            seq,
            durable: false,
            progress: self.progress.clone(),
            discarded: self.discarded.clone(),
            undoes: self.policy == Durability::Always,
        })
    }

    /// The writer's progress as it changes.
    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The writer's progress, for INFO and metrics.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// The policy.
    pub fn policy(&self) -> Durability {
        self.policy
    }

    /// Why write commands must be refused now: storage is failing. `None`
    /// while it works.
    pub fn write_refusal(&self) -> Option<StorageFault> {
        self.health.fault()
    }

    /// The storage state shared with the writer.
    pub fn health(&self) -> Arc<StorageHealth> {
        self.health.clone()
    }

    /// Applies everything queued, syncs, and stops the writer; retries a
    /// few times while storage fails. Called once at shutdown, after the
    /// last change; later calls return the same report.
    pub fn shutdown(&mut self) -> FlushReport {
        if let Some(report) = &self.report {
            return report.clone();
        }
        let _ = self.tx.send(Msg::Shutdown);
        let report = match self.writer.take().map(JoinHandle::join) {
            Some(Ok(report)) => FlushReport {
                undone_batches: self.undone_batches(),
                ..report
            },
            _ => {
                tracing::error!("storage writer panicked or never started");
                let durable = self.progress.borrow().durable;
                let unflushed = usize::try_from(self.next_seq - durable).unwrap_or(usize::MAX);
                FlushReport {
                    durable,
                    undone_batches: self.undone_batches(),
                    unflushed_batches: unflushed,
                    unflushed_mutations: 0,
                    fault: Some(StorageFault {
                        kind: FaultKind::Engine,
                        cause: "the storage writer thread panicked".into(),
                        since: SystemTime::now(),
                        failures: 1,
                    }),
                }
            }
        };
        self.report = Some(report.clone());
        report
    }
}

/// One submitted batch the writer holds until it is durable.
struct Queued {
    seq: Seq,
    mutations: Vec<Mutation>,
    floor: u64,
}

fn mutation_bytes(m: &Mutation) -> usize {
    match m {
        Mutation::PutField { key, field, .. } => 48 + key.len() + field.value.len(),
        Mutation::DelField { key, .. } => 48 + key.len(),
        Mutation::DelSession { keys, .. } => 48 + keys.iter().map(|k| k.len()).sum::<usize>(),
        Mutation::PutMeta { .. } | Mutation::PutAlias { .. } | Mutation::DelAlias { .. } => 64,
    }
}

/// A run of failures: when the next retry is due.
struct Retry {
    since: Instant,
    next: Instant,
    backoff: Duration,
}

struct Writer {
    storage: Box<dyn Storage>,
    rx: mpsc::Receiver<Msg>,
    progress: watch::Sender<Progress>,
    health: Arc<StorageHealth>,
    policy: Durability,
    options: WriterOptions,
    // Submitted and not yet durable, in order; the first `applied_n` are
    // applied to storage (not synced).
    queue: VecDeque<Queued>,
    applied_n: usize,
    // Bytes of keys and values in the first `applied_n`.
    unsynced_bytes: usize,
    queued_mutations: usize,
    last_apply: Instant,
    last_sync: Instant,
    shutting_down: bool,
    retry: Option<Retry>,
    // Under `always`, from a failure until the server undid what was
    // dropped: the failure's epoch; batches arriving meanwhile are dropped.
    discarding: Option<u64>,
    undo_epoch: u64,
}

impl Writer {
    fn new(
        storage: Box<dyn Storage>,
        rx: mpsc::Receiver<Msg>,
        progress: watch::Sender<Progress>,
        health: Arc<StorageHealth>,
        policy: Durability,
        options: WriterOptions,
    ) -> Self {
        Self {
            storage,
            rx,
            progress,
            health,
            policy,
            options,
            queue: VecDeque::new(),
            applied_n: 0,
            unsynced_bytes: 0,
            queued_mutations: 0,
            last_apply: Instant::now(),
            last_sync: Instant::now(),
            shutting_down: false,
            retry: None,
            discarding: None,
            undo_epoch: 0,
        }
    }

    fn run(mut self) -> FlushReport {
        loop {
            // Wait for work, the next periodic sync, or the next retry.
            let wait = if let Some(retry) = &self.retry {
                Some(retry.next.saturating_duration_since(Instant::now()))
            } else if self.applied_n > 0 {
                Some(
                    self.options
                        .sync_every
                        .saturating_sub(self.last_sync.elapsed()),
                )
            } else {
                None
            };
            let first = match wait {
                Some(left) => match self.rx.recv_timeout(left) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Shutdown),
                },
                None => Some(self.rx.recv().unwrap_or(Msg::Shutdown)),
            };
            if first.is_some() && self.retry.is_none() && !self.shutting_down {
                std::thread::sleep(
                    self.options
                        .gather
                        .saturating_sub(self.last_apply.elapsed()),
                );
            }
            if let Some(m) = first {
                self.take(m);
            }
            while let Ok(m) = self.rx.try_recv() {
                self.take(m);
            }
            if self.retry.is_some() {
                if self.shutting_down {
                    return self.shutdown_retries();
                }
                if self
                    .retry
                    .as_ref()
                    .is_some_and(|r| Instant::now() >= r.next)
                {
                    self.recover();
                }
                continue;
            }
            let sync_due =
                self.shutting_down || self.last_sync.elapsed() >= self.options.sync_every;
            self.write(sync_due);
            self.publish_change_log();
            if self.shutting_down {
                if self.retry.is_some() {
                    return self.shutdown_retries();
                }
                return self.finish();
            }
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            // Made on top of changes being undone: undone with them.
            Msg::Batch(..) if self.discarding.is_some() => {}
            Msg::Undone(epoch) => {
                if self.discarding == Some(epoch) {
                    self.discarding = None;
                }
            }
            Msg::Batch(seq, mutations, floor) => {
                self.queued_mutations += mutations.len();
                self.queue.push_back(Queued {
                    seq,
                    mutations,
                    floor,
                });
                self.publish_queue();
            }
            Msg::Shutdown => self.shutting_down = true,
        }
    }

    fn publish_change_log(&self) {
        *self.health.change_log.lock() = self.storage.change_log();
    }

    fn publish_queue(&self) {
        self.health
            .queued_batches
            .store(self.queue.len() as u64, Ordering::Relaxed);
        self.health
            .queued_mutations
            .store(self.queued_mutations as u64, Ordering::Relaxed);
    }

    /// Applies what is not applied yet, in transactions of at most
    /// [`MAX_TRANSACTION_MUTATIONS`]; under `always` each is synced, else
    /// the last one when `sync_due`. A failure starts the retries.
    fn write(&mut self, sync_due: bool) {
        loop {
            // Past the limit of what may wait for a sync: sync now.
            let sync_due = sync_due || self.unsynced_bytes >= self.options.retain_sync_bytes();
            let all_applied = self.applied_n == self.queue.len();
            if all_applied && !(sync_due && self.applied_n > 0) {
                return;
            }
            let end = self.chunk_end(self.applied_n, usize::MAX);
            let sync = self.policy == Durability::Always || (sync_due && end == self.queue.len());
            if let Err(e) = self.apply_range(self.applied_n, end, sync) {
                self.fail(&e);
                return;
            }
            if all_applied {
                // That was the sync of what was already applied.
                return;
            }
        }
    }

    /// The end of the transaction starting at queue index `start`: at
    /// least one batch, at most [`MAX_TRANSACTION_MUTATIONS`] mutations and
    /// about `max_bytes`.
    fn chunk_end(&self, start: usize, max_bytes: usize) -> usize {
        let mut end = start;
        let (mut count, mut bytes) = (0, 0);
        while end < self.queue.len() {
            let q = &self.queue[end];
            count += q.mutations.len();
            bytes += q.mutations.iter().map(mutation_bytes).sum::<usize>();
            end += 1;
            if count >= MAX_TRANSACTION_MUTATIONS || bytes >= max_bytes {
                break;
            }
        }
        end
    }

    /// Applies `queue[start..end]` in one transaction (an empty range with
    /// `sync` only syncs what is applied), then records the progress; a
    /// sync makes everything applied durable and drops it from the queue.
    fn apply_range(&mut self, start: usize, end: usize, sync: bool) -> Result<(), StorageError> {
        let floor = self.queue.range(..end).map(|q| q.floor).max().unwrap_or(0);
        self.last_apply = Instant::now();
        let result = if end == start + 1 {
            self.storage
                .apply(&self.queue[start].mutations, floor, sync)
        } else {
            let batch: Vec<Mutation> = self
                .queue
                .range(start..end)
                .flat_map(|q| q.mutations.iter().cloned())
                .collect();
            self.storage.apply(&batch, floor, sync)
        };
        result?;
        let bytes: usize = self
            .queue
            .range(start..end)
            .flat_map(|q| q.mutations.iter())
            .map(mutation_bytes)
            .sum();
        self.unsynced_bytes += bytes;
        self.applied_n = end;
        let applied = self
            .queue
            .get(end.wrapping_sub(1))
            .map(|q| q.seq)
            .unwrap_or(self.progress.borrow().applied);
        let mut durable = None;
        if sync {
            for q in self.queue.drain(..end) {
                self.queued_mutations -= q.mutations.len();
            }
            self.applied_n = 0;
            self.unsynced_bytes = 0;
            self.last_sync = Instant::now();
            self.publish_queue();
            durable = Some(applied);
        }
        self.progress.send_modify(|p| {
            p.applied = p.applied.max(applied);
            p.transactions += 1;
            if let Some(d) = durable {
                p.durable = p.durable.max(d);
                p.syncs += 1;
            }
        });
        Ok(())
    }

    /// Records a failure: refuses writes from now on, and schedules a retry.
    /// Nothing after the last sync is known to be kept, so everything in
    /// the queue is applied again.
    fn fail(&mut self, e: &StorageError) {
        self.applied_n = 0;
        self.unsynced_bytes = 0;
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        let kind = FaultKind::of(e);
        let cause = e.to_string();
        let now = Instant::now();
        if self.retry.is_none() && self.policy == Durability::Always {
            self.discard();
        }
        match &mut self.retry {
            None => {
                tracing::error!(
                    error = %e,
                    kind = kind.name(),
                    queued_batches = self.queue.len(),
                    "storage write failed: refusing writes (MISCONF) until storage accepts them again; retrying in the background"
                );
                self.health.set_fault(StorageFault {
                    kind,
                    cause,
                    since: SystemTime::now(),
                    failures: 1,
                });
                self.retry = Some(Retry {
                    since: now,
                    next: now + self.options.retry_min,
                    backoff: self.options.retry_min,
                });
                self.progress.send_modify(|p| p.failed = true);
            }
            Some(retry) => {
                retry.backoff = (retry.backoff * 2).min(self.options.retry_max);
                retry.next = now + retry.backoff;
                let mut fault = self.health.fault.lock();
                if let Some(f) = fault.as_mut() {
                    f.failures += 1;
                    // Log again when the cause changes, and now and then.
                    if f.cause != cause || f.failures.is_power_of_two() {
                        tracing::warn!(
                            error = %e,
                            failures = f.failures,
                            failing_for_s = retry.since.elapsed().as_secs(),
                            queued_batches = self.queue.len(),
                            next_retry_ms = retry.backoff.as_millis() as u64,
                            "storage still failing"
                        );
                    }
                    f.kind = kind;
                    f.cause = cause;
                }
            }
        }
    }

    /// Under `always`, at a failure: drops every batch not durable (none
    /// was acknowledged) and asks the server to undo them.
    fn discard(&mut self) {
        let durable = self.progress.borrow().durable;
        tracing::error!(
            dropped_batches = self.queue.len(),
            durable,
            "storage failed under durability always: the writes not yet on disk were answered with an error; undoing them"
        );
        self.queue.clear();
        self.queued_mutations = 0;
        self.applied_n = 0;
        self.unsynced_bytes = 0;
        self.publish_queue();
        self.undo_epoch += 1;
        self.discarding = Some(self.undo_epoch);
        let epoch = self.undo_epoch;
        self.progress.send_modify(|p| {
            p.undo_epoch = epoch;
            p.undo_after = durable;
        });
    }

    /// One retry: recover storage, then apply and sync the whole queue.
    fn recover(&mut self) {
        if self.discarding.is_some() {
            // The server has not undone what was dropped yet: its state is
            // not what storage should get. Try again a little later.
            if let Some(retry) = &mut self.retry {
                retry.next = Instant::now() + self.options.retry_min;
            }
            return;
        }
        if let Err(e) = self.storage.recover() {
            self.fail(&e);
            return;
        }
        // Each transaction synced, so what got through is durable even if
        // a later one fails.
        while !self.queue.is_empty() {
            let end = self.chunk_end(0, RECOVERY_TRANSACTION_BYTES);
            if let Err(e) = self.apply_range(0, end, true) {
                self.fail(&e);
                return;
            }
        }
        // Nothing queued (or all of it written): one synced transaction
        // proves storage accepts writes again.
        if let Err(e) = self.apply_range(0, 0, true) {
            self.fail(&e);
            return;
        }
        let failing_for = self.retry.take().map_or(0, |r| r.since.elapsed().as_secs());
        self.health.recoveries.fetch_add(1, Ordering::Relaxed);
        self.health.clear_fault();
        self.progress.send_modify(|p| p.failed = false);
        tracing::warn!(
            failing_for_s = failing_for,
            durable = self.progress.borrow().durable,
            "storage recovered: everything queued is on disk; accepting writes again"
        );
    }

    /// Shutdown while storage fails: a few more attempts, then the report.
    fn shutdown_retries(mut self) -> FlushReport {
        let mut delay = self.options.retry_min;
        for _ in 0..SHUTDOWN_ATTEMPTS {
            std::thread::sleep(delay);
            while let Ok(m) = self.rx.try_recv() {
                self.take(m);
            }
            self.recover();
            if self.retry.is_none() {
                break;
            }
            delay = (delay * 2).min(self.options.retry_max);
        }
        if self.retry.is_none() {
            return self.finish();
        }
        self.report()
    }

    /// Shutdown with everything durable: lets storage settle
    /// ([`Storage::close`]), then the report. A failure to settle loses
    /// nothing (it is logged).
    fn finish(mut self) -> FlushReport {
        if let Err(e) = self.storage.close() {
            tracing::warn!(error = %e, "storage: closing after the last sync failed (nothing is lost: the data is on disk; the next start finishes it)");
        }
        self.report()
    }

    fn report(&self) -> FlushReport {
        FlushReport {
            durable: self.progress.borrow().durable,
            undone_batches: 0,
            unflushed_batches: self.queue.len(),
            unflushed_mutations: self.queued_mutations,
            fault: self.health.fault(),
        }
    }
}

/// The `# Persistence` section of INFO.
pub fn info_text(
    storage: &str,
    policy: Durability,
    progress: &Progress,
    health: &StorageHealth,
) -> String {
    let fault = health.fault();
    let (queued_batches, queued_mutations) = health.queued();
    let log_text = health.change_log().map_or_else(
        || "change_log:0\r\n".to_owned(),
        |l| {
            format!(
                "change_log:1\r\nchange_log_bytes:{}\r\nchange_log_absorbing_rows:{}\r\nchange_log_absorbed:{}\r\n",
                l.bytes, l.absorbing_rows, l.absorbed_logs
            )
        },
    );
    format!(
        "storage:{storage}\r\ndurability:{policy}\r\nstorage_transactions:{}\r\nstorage_syncs:{}\r\nstorage_failed:{}\r\nstorage_failed_since:{}\r\nstorage_failed_kind:{}\r\nstorage_failed_cause:{}\r\nstorage_failures:{}\r\nstorage_recoveries:{}\r\nstorage_refused_writes:{}\r\nstorage_undone_batches:{}\r\nstorage_queued_batches:{queued_batches}\r\nstorage_queued_changes:{queued_mutations}\r\n{log_text}",
        progress.transactions,
        progress.syncs,
        u8::from(fault.is_some()),
        fault.as_ref().map_or(0, StorageFault::since_unix_secs),
        fault.as_ref().map_or("", |f| f.kind.name()),
        fault
            .as_ref()
            .map_or(String::new(), |f| f.cause.replace(['\r', '\n'], " ")),
        health.failures(),
        health.recoveries(),
        health.refused_writes(),
        health.undone_batches(),
        storage = storage.to_lowercase(),
        policy = format!("{policy:?}").to_lowercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use bytes::Bytes;
    use sessiond_core::{Field, SessionId};

    fn put(i: u64) -> Vec<Mutation> {
        let id = SessionId::parse(b"s").unwrap();
        let meta = sessiond_core::SessionMeta {
            version: i,
            created: 0,
            last_access: 0,
            ttl_ms: 1,
            lifetime_deadline: None,
        };
        vec![
            Mutation::PutMeta {
                id: id.clone(),
                meta,
            },
            Mutation::PutField {
                id,
                key: Bytes::from(format!("k{i}")),
                field: Field {
                    value: Bytes::from("v"),
                    version: i,
                },
            },
        ]
    }

    fn stored_fields(storage: &MemoryStorage) -> usize {
        use crate::storage::Storage;
        let loaded = storage.clone().load().unwrap();
        loaded
            .session(&SessionId::parse(b"s").unwrap())
            .map_or(0, |s| s.fields.len())
    }

    #[tokio::test]
    async fn always_acknowledges_after_the_batch_is_durable_and_queued_batches_share_a_sync() {
        let storage = MemoryStorage::default();
        let (gated, open, entered) = GatedStorage::new(storage.clone());
        let mut p = Persistence::start(Box::new(gated), Durability::Always);
        let first = p.submit(put(1), 1);
        // The writer is inside the apply of batch 1 (held at the gate) while
        // batches 2..=100 queue behind it.
        entered.recv().unwrap();
        let mut last = first;
        for i in 2..=100 {
            last = p.submit(put(i), i);
        }
        let wait = tokio::spawn(p.waiter(last).unwrap().wait());
        open.send(()).unwrap();
        entered.recv().unwrap();
        assert_eq!(p.progress().durable, 1, "batch 1 alone, then the rest");
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "acknowledged before it was durable");
        open.send(()).unwrap();
        wait.await.unwrap().unwrap();
        assert_eq!(stored_fields(&storage), 100);
        let progress = p.progress();
        assert_eq!(progress.durable, 100);
        // Group commit: the 99 batches queued during the first write went
        // in one transaction with one sync.
        assert_eq!((progress.transactions, progress.syncs), (2, 2));
        drop(open);
        p.shutdown();
    }

    /// Storage whose `apply` reports that it was entered, then waits for
    /// the test to open a gate.
    struct GatedStorage {
        inner: MemoryStorage,
        gate: std::sync::Mutex<mpsc::Receiver<()>>,
        entered: mpsc::Sender<()>,
    }

    impl GatedStorage {
        /// The storage, the gate's opener and the "entered" signal.
        fn new(inner: MemoryStorage) -> (Self, mpsc::Sender<()>, mpsc::Receiver<()>) {
            let (open, gate) = mpsc::channel();
            let (entered_tx, entered) = mpsc::channel();
            let storage = GatedStorage {
                inner,
                gate: std::sync::Mutex::new(gate),
                entered: entered_tx,
            };
            (storage, open, entered)
        }
    }

    impl Storage for GatedStorage {
        fn load(&mut self) -> Result<crate::storage::Loaded, crate::storage::StorageError> {
            self.inner.load()
        }
        fn apply(
            &mut self,
            batch: &[Mutation],
            floor: u64,
            sync: bool,
        ) -> Result<(), crate::storage::StorageError> {
            let _ = self.entered.send(());
            let _ = self.gate.lock().unwrap().recv();
            self.inner.apply(batch, floor, sync)
        }
        fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), crate::storage::StorageError> {
            self.inner.set_fence_epoch(epoch)
        }
    }

    #[tokio::test]
    async fn a_writer_behind_by_more_than_the_lag_limit_holds_replies_back() {
        let (storage, open, entered) = GatedStorage::new(MemoryStorage::default());
        // A zero limit: any backlog at all is too much.
        let mut p = Persistence::start_with_max_lag(
            Box::new(storage),
            Durability::Everysec,
            Duration::ZERO,
        );
        let seq = p.submit(put(1), 1);
        // The writer holds batch 1 at the gate: nothing is applied.
        entered.recv().unwrap();
        // Time passes, so the backlog is older than the (zero) limit.
        std::thread::sleep(Duration::from_millis(5));
        let wait = tokio::spawn(p.waiter(seq).expect("behind: the reply must wait").wait());
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "the writer has not applied anything");
        assert_eq!(p.progress().applied, 0);
        open.send(()).unwrap();
        wait.await.unwrap().unwrap();
        assert_eq!(p.progress().applied, 1);
        // Caught up: the next reply waits only if a new backlog is over the limit.
        assert!(p.waiter(None).is_none());
        drop(open);
        p.shutdown();
    }

    #[tokio::test]
    async fn under_everysec_a_writer_within_the_lag_limit_holds_nothing_back() {
        let mut p = Persistence::start(Box::new(MemoryStorage::default()), Durability::Everysec);
        for i in 1..=100 {
            let seq = p.submit(put(i), i);
            assert!(p.waiter(seq).is_none(), "batch {i} had to wait");
        }
        p.shutdown();
    }

    /// Storage that loses what was not synced when it fails, as redb may
    /// when it recovers its file, and fails on command.
    #[derive(Clone, Default)]
    struct LossyStorage {
        durable: MemoryStorage,
        inner: std::sync::Arc<parking_lot::Mutex<Lossy>>,
    }

    #[derive(Default)]
    struct Lossy {
        unsynced: Vec<(Vec<Mutation>, u64)>,
        failing: bool,
        applies: u64,
        recovers: u64,
    }

    impl LossyStorage {
        fn fail(&self, on: bool) {
            self.inner.lock().failing = on;
        }
    }

    fn enospc() -> crate::storage::StorageError {
        std::io::Error::from_raw_os_error(28).into()
    }

    impl Storage for LossyStorage {
        fn load(&mut self) -> Result<crate::storage::Loaded, crate::storage::StorageError> {
            self.durable.load()
        }
        fn apply(
            &mut self,
            batch: &[Mutation],
            floor: u64,
            sync: bool,
        ) -> Result<(), crate::storage::StorageError> {
            let mut inner = self.inner.lock();
            inner.applies += 1;
            if inner.failing {
                return Err(enospc());
            }
            inner.unsynced.push((batch.to_vec(), floor));
            if sync {
                for (b, f) in inner.unsynced.drain(..) {
                    self.durable.apply(&b, f, true)?;
                }
            }
            Ok(())
        }
        fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), crate::storage::StorageError> {
            self.durable.set_fence_epoch(epoch)
        }
        fn recover(&mut self) -> Result<(), crate::storage::StorageError> {
            let mut inner = self.inner.lock();
            inner.recovers += 1;
            // What was not synced is gone.
            inner.unsynced.clear();
            if inner.failing {
                return Err(enospc());
            }
            Ok(())
        }
    }

    fn fast_retries(policy: Durability) -> WriterOptions {
        WriterOptions {
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            sync_every: match policy {
                Durability::Always => Duration::ZERO,
                _ => Duration::from_millis(30),
            },
            ..WriterOptions::for_policy(policy)
        }
    }

    /// Waits (bounded) until `cond` holds.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_failure_refuses_writes_keeps_everything_queued_and_recovers_in_order() {
        // (Under `always` nothing is acknowledged before it is durable, so a
        // failure drops instead: the next test.)
        for policy in [Durability::Everysec, Durability::No] {
            let storage = LossyStorage::default();
            let mut p = Persistence::start_with_options(
                Box::new(storage.clone()),
                policy,
                fast_retries(policy),
            );
            // Acknowledged before the failure (under everysec and no: applied
            // but maybe not synced).
            for i in 1..=20 {
                let seq = p.submit(put(i), i);
                if policy == Durability::Always {
                    p.waiter(seq).unwrap().wait().await.unwrap();
                }
            }
            assert!(p.write_refusal().is_none());
            storage.fail(true);
            let seq = p.submit(put(21), 21);
            eventually("the fault", || p.write_refusal().is_some()).await;
            let fault = p.write_refusal().unwrap();
            assert_eq!(fault.kind, FaultKind::DiskFull, "{policy:?}");
            assert!(fault.cause.contains("os error 28"), "{}", fault.cause);
            assert!(p.progress().failed);
            let _ = seq;
            // Changes that still arrive (expiry, access times) are queued.
            p.submit(put(22), 22);
            let failures = p.health().failures();
            eventually("retries", || p.health().failures() > failures + 2).await;
            assert!(p.write_refusal().is_some());
            assert!(stored_fields(&storage.durable) < 22);

            storage.fail(false);
            eventually("the recovery", || p.write_refusal().is_none()).await;
            assert!(!p.progress().failed);
            assert_eq!(p.health().recoveries(), 1);
            // Everything, also what was applied but not synced before the
            // failure (lost by the storage's recovery), is durable now.
            assert_eq!(stored_fields(&storage.durable), 22, "{policy:?}");
            assert_eq!(p.progress().durable, 22);
            assert_eq!(p.health().queued(), (0, 0));
            // And writes go on.
            let seq = p.submit(put(23), 23);
            if policy == Durability::Always {
                p.waiter(seq).unwrap().wait().await.unwrap();
            }
            let report = p.shutdown();
            assert!(report.flushed(), "{report}");
            assert_eq!(stored_fields(&storage.durable), 23);
        }
    }

    #[tokio::test]
    async fn under_always_a_failure_drops_what_is_not_durable_until_the_server_undid_it() {
        let storage = LossyStorage::default();
        let policy = Durability::Always;
        let mut p = Persistence::start_with_options(
            Box::new(storage.clone()),
            policy,
            fast_retries(policy),
        );
        for i in 1..=20 {
            let seq = p.submit(put(i), i);
            p.waiter(seq).unwrap().wait().await.unwrap();
        }
        assert_eq!(p.undo_due(), None);
        storage.fail(true);
        let failed = p.submit(put(21), 21);
        let wait = p.waiter(failed).unwrap();
        assert!(matches!(wait.wait().await, Err(DurabilityError::Undone)));
        eventually("the undo request", || p.undo_due().is_some()).await;
        assert_eq!(p.undo_due(), Some((1, 20)));
        // Made on top of the failed batch before the server undid it:
        // dropped with it.
        let built_on_it = p.submit(put(22), 22);
        let late = p.waiter(built_on_it).unwrap();
        storage.fail(false);
        // Storage works again, but the writer waits for the undo.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(p.write_refusal().is_some(), "recovered before the undo");
        p.undone(1, 20);
        assert_eq!(p.undo_due(), None);
        assert_eq!(p.undone_batches(), 2);
        // What the server puts back, then what comes after, is kept.
        let restore = p.submit(put(30), 30);
        eventually("the recovery", || p.write_refusal().is_none()).await;
        p.waiter(restore).unwrap().wait().await.unwrap();
        // Later batches are durable; the undone ones never are.
        assert!(matches!(late.wait().await, Err(DurabilityError::Undone)));
        assert!(p.waiter(failed).unwrap().wait().await.is_err());
        let report = p.shutdown();
        assert!(report.flushed(), "{report}");
        assert_eq!(report.undone_batches, 2);
        // 20 acknowledged + the restore batch: nothing of 21 or 22.
        assert_eq!(stored_fields(&storage.durable), 21);
    }

    #[tokio::test]
    async fn shutdown_while_storage_fails_reports_what_was_not_written() {
        let storage = LossyStorage::default();
        let policy = Durability::Everysec;
        let mut p = Persistence::start_with_options(
            Box::new(storage.clone()),
            policy,
            fast_retries(policy),
        );
        for i in 1..=5 {
            p.submit(put(i), i);
        }
        storage.fail(true);
        for i in 6..=8 {
            p.submit(put(i), i);
        }
        let report = p.shutdown();
        assert!(!report.flushed());
        assert_eq!(report.unflushed_batches, 8, "{report}");
        assert_eq!(report.unflushed_mutations, 16);
        assert_eq!(report.fault.as_ref().unwrap().kind, FaultKind::DiskFull);
        assert!(report.to_string().contains("NOT flushed"), "{report}");
        assert!(report.clone().into_result().is_err());
        // Shutdown tried more than once.
        assert!(storage.inner.lock().recovers >= u64::from(SHUTDOWN_ATTEMPTS));
        assert_eq!(stored_fields(&storage.durable), 0);
    }

    #[tokio::test]
    async fn the_queue_held_for_retries_is_bounded_by_early_syncs() {
        // Under `no` (a sync every 30 s) a big burst is synced early once
        // the unsynced bytes pass the limit.
        let storage = LossyStorage::default();
        let mut p = Persistence::start(Box::new(storage.clone()), Durability::No);
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        let id = SessionId::parse(b"big").unwrap();
        for i in 0..(RETAIN_SYNC_BYTES >> 20) as u64 + 8 {
            p.submit(
                vec![Mutation::PutField {
                    id: id.clone(),
                    key: Bytes::from(format!("k{i}")),
                    field: Field {
                        value: big.clone(),
                        version: i + 1,
                    },
                }],
                i + 1,
            );
        }
        eventually("an early sync", || p.progress().syncs >= 1).await;
        assert!(p.health().queued().0 < (RETAIN_SYNC_BYTES >> 20) as u64);
        assert!(p.shutdown().flushed());
    }

    #[tokio::test]
    async fn shutdown_flushes_everything_under_no() {
        let storage = MemoryStorage::default();
        let mut p = Persistence::start(Box::new(storage.clone()), Durability::No);
        for i in 1..=10 {
            p.submit(put(i), i);
        }
        assert!(p.waiter(Some(10)).is_none());
        p.shutdown();
        assert_eq!(stored_fields(&storage), 10);
    }
}
