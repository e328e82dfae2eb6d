//! The persistence pipeline: changes flow from the store to a writer thread
//! that applies them to [`Storage`] in batches.
//!
//! Group commit: the writer takes every batch waiting in its queue, applies
//! them in one storage transaction and, under `always`, syncs once for all
//! of them; every client waiting on any of those batches is then answered.
//! Under `everysec` it applies without syncing and syncs at least once a
//! second; under `no`, every 30 seconds. Shutdown applies what is queued and
//! syncs before returning.
//!
//! Backpressure: under `everysec` and `no` nothing waits for the disk, so a
//! long write burst could queue more than the policy may lose. Once the
//! oldest change not yet applied is older than [`MAX_LAG`], replies to
//! writes wait until the writer has caught up to it.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessiond_core::Mutation;
use tokio::sync::watch;

use crate::config::Durability;
use crate::storage::Storage;

/// A position in the stream of batches; waiting for it means waiting for
/// every batch up to it.
pub type Seq = u64;

enum Msg {
    Batch(Seq, Vec<Mutation>, u64),
    Shutdown,
}

/// How far the writer may fall behind under `everysec` and `no` before
/// replies to writes wait for it.
pub const MAX_LAG: Duration = Duration::from_secs(1);

// How often the submit side notes (seq, time) to measure the writer's lag.
const LAG_MARK_EVERY: Duration = Duration::from_millis(50);

/// How far the writer has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every batch up to this one is applied to storage (maybe not synced).
    pub applied: Seq,
    /// Every batch up to this one is on disk.
    pub durable: Seq,
    /// The writer failed; nothing after `durable` is known to be on disk.
    pub failed: bool,
    /// Storage transactions applied.
    pub transactions: u64,
    /// Syncs to disk.
    pub syncs: u64,
}

/// Why a wait for durability failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage failed; the change is applied in memory but may not be on disk")]
pub struct DurabilityError;

/// The handle the server uses to send changes and wait for them.
pub struct Persistence {
    tx: mpsc::Sender<Msg>,
    // Only advanced under the state lock, so batch order is change order.
    next_seq: Seq,
    progress: watch::Receiver<Progress>,
    policy: Durability,
    writer: Option<JoinHandle<()>>,
    // Submitted batches not yet known to be applied, one mark per
    // LAG_MARK_EVERY: (last seq submitted, when). Oldest first.
    lag_marks: VecDeque<(Seq, Instant)>,
    max_lag: Duration,
}

/// What a reply waits for before it is sent.
#[derive(Debug)]
pub struct DiskWait {
    seq: Seq,
    // Only applied (backpressure), or durable (`always`).
    durable: bool,
    progress: watch::Receiver<Progress>,
}

impl DiskWait {
    /// Waits until the writer got there.
    ///
    /// # Errors
    /// [`DurabilityError`] when the writer failed before getting there.
    pub async fn wait(mut self) -> Result<(), DurabilityError> {
        let (seq, durable) = (self.seq, self.durable);
        let reached = |p: &Progress| {
            if durable {
                p.durable >= seq
            } else {
                p.applied >= seq
            }
        };
        let done = self
            .progress
            .wait_for(|p| reached(p) || p.failed)
            .await
            .map_err(|_| DurabilityError)?;
        if reached(&done) {
            Ok(())
        } else {
            Err(DurabilityError)
        }
    }
}

impl Persistence {
    /// Starts the writer thread over `storage`.
    pub fn start(storage: Box<dyn Storage>, policy: Durability) -> Self {
        Self::start_with_max_lag(storage, policy, MAX_LAG)
    }

    /// [`Self::start`] with another lag limit (tests).
    pub fn start_with_max_lag(
        storage: Box<dyn Storage>,
        policy: Durability,
        max_lag: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let writer = std::thread::Builder::new()
            .name("sessiond-writer".into())
            .spawn(move || writer_loop(storage, rx, progress_tx, policy))
            .ok();
        Self {
            tx,
            next_seq: 0,
            progress,
            policy,
            writer,
            lag_marks: VecDeque::new(),
            max_lag,
        }
    }

    /// Queues `mutations` (taken from the store under its lock) and returns
    /// their position, or `None` when there was nothing to write.
    pub fn submit(&mut self, mutations: Vec<Mutation>, version_floor: u64) -> Option<Seq> {
        if mutations.is_empty() {
            return None;
        }
        self.next_seq += 1;
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
            });
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
        })
    }

    /// The writer's progress, for INFO and metrics.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// The policy.
    pub fn policy(&self) -> Durability {
        self.policy
    }

    /// Applies everything queued, syncs, and stops the writer. Called once
    /// at shutdown, after the last change.
    pub fn shutdown(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("storage writer panicked during shutdown");
        }
    }
}

fn writer_loop(
    mut storage: Box<dyn Storage>,
    rx: mpsc::Receiver<Msg>,
    progress: watch::Sender<Progress>,
    policy: Durability,
) {
    let sync_every = match policy {
        Durability::Always => Duration::ZERO,
        Durability::Everysec => Duration::from_secs(1),
        Durability::No => Duration::from_secs(30),
    };
    // When no reply waits for the disk, changes gather this long before
    // they are applied: one storage transaction then carries the changes
    // of many requests instead of each paying for its own B-tree copy on
    // write. Well inside the one second `everysec` may lose anyway.
    let gather = match policy {
        Durability::Always => Duration::ZERO,
        Durability::Everysec | Durability::No => Duration::from_millis(50),
    };
    let mut last_apply = Instant::now();
    let mut last_sync = Instant::now();
    let mut applied: Seq = 0; // last batch applied (maybe not synced)
    let mut floor = 0;
    let mut shutting_down = false;
    let mut failed = false;
    loop {
        // Wait for work, or for the next periodic sync.
        let first = if applied > progress.borrow().durable {
            let left = sync_every.saturating_sub(last_sync.elapsed());
            match rx.recv_timeout(left) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Shutdown),
            }
        } else {
            Some(rx.recv().unwrap_or(Msg::Shutdown))
        };
        if first.is_some() {
            std::thread::sleep(gather.saturating_sub(last_apply.elapsed()));
        }
        let mut batch: Vec<Mutation> = Vec::new();
        let mut last_seq = applied;
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match msg {
                Msg::Batch(seq, mutations, f) => {
                    batch.extend(mutations);
                    last_seq = seq;
                    floor = floor.max(f);
                }
                Msg::Shutdown => shutting_down = true,
            }
            // Keep one transaction bounded; the rest waits for the next turn.
            if batch.len() >= 50_000 {
                break;
            }
        }
        let sync = shutting_down || last_sync.elapsed() >= sync_every;
        if !failed && (!batch.is_empty() || (sync && applied > progress.borrow().durable)) {
            last_apply = Instant::now();
            match storage.apply(&batch, floor, sync) {
                Ok(()) => {
                    applied = last_seq;
                    progress.send_modify(|p| {
                        p.applied = applied;
                        p.transactions += 1;
                        if sync {
                            p.durable = applied;
                            p.syncs += 1;
                        }
                    });
                    if sync {
                        last_sync = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "storage write failed; changes stay in memory only");
                    failed = true;
                    progress.send_modify(|p| p.failed = true);
                }
            }
        }
        if shutting_down {
            return;
        }
    }
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
