//! The persistence pipeline: changes flow from the store to a writer thread
//! that applies them to [`Storage`] in batches.
//!
//! Group commit: the writer takes every batch waiting in its queue, applies
//! them in one storage transaction and, under `always`, syncs once for all
//! of them; every client waiting on any of those batches is then answered.
//! Under `everysec` it applies without syncing and syncs at least once a
//! second; under `no`, every 30 seconds. Shutdown applies what is queued and
//! syncs before returning.

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

/// How far the writer has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
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
}

impl Persistence {
    /// Starts the writer thread over `storage`.
    pub fn start(storage: Box<dyn Storage>, policy: Durability) -> Self {
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
        Some(self.next_seq)
    }

    /// A receiver to wait for `seq` on, when the policy makes replies wait
    /// for the disk; `None` otherwise.
    pub fn waiter(&self, seq: Option<Seq>) -> Option<(Seq, watch::Receiver<Progress>)> {
        match (self.policy, seq) {
            (Durability::Always, Some(seq)) => Some((seq, self.progress.clone())),
            _ => None,
        }
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

/// Waits until `seq` is on disk.
///
/// # Errors
/// [`DurabilityError`] when the writer failed before getting there.
pub async fn wait_durable(
    seq: Seq,
    mut progress: watch::Receiver<Progress>,
) -> Result<(), DurabilityError> {
    let reached = progress
        .wait_for(|p| p.durable >= seq || p.failed)
        .await
        .map_err(|_| DurabilityError)?;
    if reached.durable >= seq {
        Ok(())
    } else {
        Err(DurabilityError)
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
        loaded.sessions[&SessionId::parse(b"s").unwrap()]
            .fields
            .len()
    }

    #[tokio::test]
    async fn always_acknowledges_after_the_batch_is_durable() {
        let storage = MemoryStorage::default();
        let mut p = Persistence::start(Box::new(storage.clone()), Durability::Always);
        let mut last = None;
        for i in 1..=100 {
            last = p.submit(put(i), i);
        }
        let (seq, rx) = p.waiter(last).unwrap();
        wait_durable(seq, rx).await.unwrap();
        let loaded = stored_fields(&storage);
        assert_eq!(loaded, 100);
        // Group commit: 100 batches took fewer syncs than batches (at least
        // one; how many depends on scheduling).
        assert!(p.progress().syncs >= 1 && p.progress().syncs <= 100);
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
