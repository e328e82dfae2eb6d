//! The state every connection shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use sessiond_core::locks::WaiterId;
use sessiond_core::{Clock, LockTable, Millis, Store};
use tokio::sync::Notify;

use crate::cmd::lock::Waiting;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::persist::{DurabilityError, Persistence, Seq};

/// The core state machine: sessions and locks.
pub struct State {
    /// Every session.
    pub store: Store,
    /// Every lock.
    pub locks: LockTable,
    /// Connections waiting for a lock, by waiter id: the release that frees
    /// the lock builds the waiter's reply and sends it here.
    pub waiters: HashMap<WaiterId, Waiting>,
}

// Why one lock for the store, the lock table and the persistence queue: a
// lock grant returns the data it covers, a fenced commit checks the lock and
// writes the data, and the changes must reach the writer in the order they
// were made. One mutex makes each of those one atomic step; operations are
// short and do no I/O under it. Shard only when a benchmark shows contention.
struct Guarded {
    state: State,
    persist: Persistence,
}

/// What one connected client is, for CLIENT, INFO and the lock inspector.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Connection id (CLIENT ID).
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// CLIENT SETNAME.
    pub name: Option<String>,
    /// CLIENT SETINFO lib-name / lib-ver.
    pub lib: Option<String>,
    /// When it connected.
    pub connected: Instant,
}

/// Shared by every connection and background task.
pub struct Shared {
    /// The settings.
    pub config: Config,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    guarded: Mutex<Guarded>,
    /// Connected clients by id.
    pub clients: Mutex<HashMap<u64, ClientInfo>>,
    next_client_id: AtomicU64,
    /// Metrics.
    pub metrics: Metrics,
    /// When the server started.
    pub started: Instant,
    /// Wakes the timekeeper when a deadline earlier than its sleep appears.
    pub timer: Notify,
    // The writer's storage state, readable without the state lock.
    storage_health: Arc<crate::persist::StorageHealth>,
}

impl Shared {
    /// Wraps the loaded state.
    pub fn new(config: Config, clock: Arc<dyn Clock>, state: State, persist: Persistence) -> Self {
        let storage_health = persist.health();
        Self {
            config,
            clock,
            guarded: Mutex::new(Guarded { state, persist }),
            clients: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            started: Instant::now(),
            timer: Notify::new(),
            storage_health,
        }
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on the state at the current time, then queues the changes it
    /// made for the disk. Returns `f`'s result and the changes' position.
    pub fn apply<R>(&self, f: impl FnOnce(&mut State, Millis) -> R) -> (R, Option<Seq>) {
        let mut g = self.guarded.lock();
        let now = self.clock.now();
        let r = f(&mut g.state, now);
        for held_ms in g.state.locks.take_ended_holds() {
            #[allow(clippy::cast_precision_loss)] // ms counts fit f64 exactly
            self.metrics.lock_hold.observe(held_ms as f64 / 1000.0);
        }
        let mutations = g.state.store.take_mutations();
        let floor = g.state.store.last_version();
        let seq = g.persist.submit(mutations, floor);
        (r, seq)
    }

    /// Reads the state without changing it.
    pub fn read<R>(&self, f: impl FnOnce(&State, Millis) -> R) -> R {
        let g = self.guarded.lock();
        let now = self.clock.now();
        f(&g.state, now)
    }

    /// Waits, as [`Shared::durable`], for every change submitted so far: for
    /// a reply built by another connection's operation, whose position
    /// this connection does not know.
    ///
    /// # Errors
    /// [`DurabilityError`] when storage failed.
    pub async fn durable_so_far(&self) -> Result<(), DurabilityError> {
        let waiter = {
            let mut g = self.guarded.lock();
            let seq = g.persist.last_submitted();
            g.persist.waiter(seq)
        };
        match waiter {
            Some(w) => w.wait().await,
            None => Ok(()),
        }
    }

    /// Waits, when the durability policy says replies wait, until `seq` is
    /// on disk; under the other policies, only when the writer is more than
    /// a second behind, until it caught up (backpressure).
    ///
    /// # Errors
    /// [`DurabilityError`] when storage failed.
    pub async fn durable(&self, seq: Option<Seq>) -> Result<(), DurabilityError> {
        if seq.is_none() {
            return Ok(());
        }
        let waiter = self.guarded.lock().persist.waiter(seq);
        match waiter {
            Some(w) => w.wait().await,
            None => Ok(()),
        }
    }

    /// Waits until the changes up to `seq` are applied to storage.
    ///
    /// # Errors
    /// [`DurabilityError`] when storage failed.
    pub async fn applied(&self, seq: Option<Seq>) -> Result<(), DurabilityError> {
        let waiter = self.guarded.lock().persist.applied_waiter(seq);
        match waiter {
            Some(w) => w.wait().await,
            None => Ok(()),
        }
    }

    /// Persistence progress and policy, for INFO.
    pub fn persistence(&self) -> (crate::config::Durability, crate::persist::Progress) {
        let g = self.guarded.lock();
        (g.persist.policy(), g.persist.progress())
    }

    /// Flushes and stops the writer, and says what it could not write.
    /// Called once, last, at shutdown.
    pub fn shutdown_persistence(&self) -> crate::persist::FlushReport {
        self.guarded.lock().persist.shutdown()
    }

    /// Why write commands must be refused now (storage is failing), if
    /// they must. See [`crate::write_gate`].
    pub fn write_refusal(&self) -> Option<crate::persist::StorageFault> {
        self.storage_health.fault()
    }

    /// The storage state (fault, counters) for INFO and metrics.
    pub fn storage_health(&self) -> Arc<crate::persist::StorageHealth> {
        self.storage_health.clone()
    }
}
