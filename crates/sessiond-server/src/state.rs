//! The state every connection shares: the engine behind one lock, the
//! persistence queue, the waiting connections, the client registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use sessiond_core::engine::{Command, ConnId, Delivery, Outcome, Step};
use sessiond_core::locks::WaiterId;
use sessiond_core::{Clock, Engine, Millis};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::persist::{DurabilityError, Persistence, Seq};
use crate::slowlog::SlowLog;

// Why one lock for the engine, the waiting connections and the persistence
// queue: the engine's outputs must reach the writer in the order it made
// them, and a hand-off must reach its waiter before anyone else can act on
// the lock. One mutex makes each input one atomic step; inputs are short and
// do no I/O under it. Shard only when a benchmark shows contention.
struct Guarded {
    engine: Engine,
    persist: Persistence,
    // Connections waiting for a lock: where to send the reply the engine
    // builds when it hands them the lock.
    waiters: HashMap<WaiterId, oneshot::Sender<Delivery>>,
}

/// What [`Shared::execute`] gives back.
#[derive(Debug)]
pub enum Executed {
    /// The reply, or why the command was refused.
    Done(Result<sessiond_core::engine::Response, sessiond_core::EngineError>),
    /// Queued for a lock: the grant (with its reply) arrives on the
    /// receiver, unless the wait is cancelled first ([`Shared::cancel_wait`]).
    Wait(WaiterId, oneshot::Receiver<Delivery>),
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
    /// Cancelled by CLIENT KILL: the connection closes (its locks go as on
    /// any close).
    pub kill: CancellationToken,
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
    /// SLOWLOG.
    pub slowlog: SlowLog,
    /// When the server started.
    pub started: Instant,
    /// Wakes the timekeeper when a deadline earlier than its sleep appears.
    pub timer: Notify,
    // The deadline the timekeeper sleeps until (ms; u64::MAX: none).
    timer_at: AtomicU64,
}

impl Shared {
    /// Wraps the loaded engine.
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        engine: Engine,
        persist: Persistence,
    ) -> Self {
        let slowlog = SlowLog::new(config.slowlog_log_slower_than, config.slowlog_max_len);
        Self {
            config,
            clock,
            guarded: Mutex::new(Guarded {
                engine,
                persist,
                waiters: HashMap::new(),
            }),
            clients: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            slowlog,
            started: Instant::now(),
            timer: Notify::new(),
            timer_at: AtomicU64::new(u64::MAX),
        }
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Gives the engine one input at the current time and carries out its
    /// effects: replies handed to waiting connections, changes queued for
    /// the disk, hold times observed, the timekeeper woken for an earlier
    /// deadline. Returns the input's result and the changes' position (for
    /// [`Shared::durable`]), `None` when it changed nothing.
    pub fn run<T>(
        &self,
        input: impl FnOnce(&mut Engine, Millis) -> Outcome<T>,
    ) -> (T, Option<Seq>) {
        self.run_then(input, |result, _| result)
    }

    /// Applies `cmd` from connection `conn`. When it has to wait for a lock,
    /// the returned receiver gets the reply once the engine grants it: the
    /// waiter is registered in the same step as the input that queued it,
    /// so no hand-off can miss it.
    pub fn execute(&self, conn: ConnId, cmd: Command) -> (Executed, Option<Seq>) {
        self.run_then(
            |e, now| e.apply(now, conn, cmd),
            |step, waiters| match step {
                Step::Done(result) => Executed::Done(result),
                Step::Wait(waiter) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.insert(waiter, tx);
                    Executed::Wait(waiter, rx)
                }
            },
        )
    }

    /// Gives up the wait `waiter` (it timed out, the client left, the server
    /// is stopping). Returns the grant if it arrived in the meantime: the
    /// caller then owns that lock.
    pub fn cancel_wait(
        &self,
        waiter: WaiterId,
        rx: &mut oneshot::Receiver<Delivery>,
    ) -> Option<Delivery> {
        // Under the state lock: either the grant was sent before this (and
        // is in `rx`), or the wait is still queued and ends here.
        self.run_then(
            |e, now| e.cancel_wait(now, waiter),
            |(), waiters| {
                waiters.remove(&waiter);
            },
        );
        rx.try_recv().ok()
    }

    fn run_then<T, U>(
        &self,
        input: impl FnOnce(&mut Engine, Millis) -> Outcome<T>,
        then: impl FnOnce(T, &mut HashMap<WaiterId, oneshot::Sender<Delivery>>) -> U,
    ) -> (U, Option<Seq>) {
        let mut g = self.guarded.lock();
        let now = self.clock.now();
        let Outcome {
            result,
            mut effects,
        } = input(&mut g.engine, now);
        let result = then(result, &mut g.waiters);
        let mut mutations = std::mem::take(&mut effects.mutations);
        let mut holds = std::mem::take(&mut effects.ended_holds);
        let mut next_deadline = effects.next_deadline;
        let mut deliveries = effects.deliveries;
        // A delivery whose connection already left is handed back: the
        // engine releases it and the lock moves on (maybe to another waiter).
        while !deliveries.is_empty() {
            let mut abandoned = Vec::new();
            for d in deliveries {
                match g.waiters.remove(&d.waiter) {
                    Some(tx) if !tx.is_closed() => {
                        let token = d.token;
                        if tx.send(d).is_err() {
                            abandoned.push(token);
                        }
                    }
                    _ => abandoned.push(d.token),
                }
            }
            deliveries = Vec::new();
            for token in abandoned {
                let more = g.engine.abandon(now, token);
                mutations.extend(more.effects.mutations);
                holds.extend(more.effects.ended_holds);
                next_deadline = more.effects.next_deadline;
                deliveries.extend(more.effects.deliveries);
            }
        }
        for held_ms in holds {
            #[allow(clippy::cast_precision_loss)] // ms counts fit f64 exactly
            self.metrics.lock_hold.observe(held_ms as f64 / 1000.0);
        }
        let floor = g.engine.last_version();
        let seq = g.persist.submit(mutations, floor);
        drop(g);
        if next_deadline.is_some_and(|d| d < self.timer_at.load(Ordering::Relaxed)) {
            self.timer.notify_one();
        }
        (result, seq)
    }

    /// Connection `conn` left: its locks go, and its waits end.
    pub fn connection_closed(&self, conn: ConnId) {
        self.run(|e, now| e.connection_closed(now, conn));
    }

    /// Reads the engine without giving it an input.
    pub fn read<R>(&self, f: impl FnOnce(&Engine, Millis) -> R) -> R {
        let g = self.guarded.lock();
        let now = self.clock.now();
        f(&g.engine, now)
    }

    /// Records the deadline the timekeeper sleeps until.
    pub fn set_timer_at(&self, deadline: Option<Millis>) {
        self.timer_at
            .store(deadline.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Waits, as [`Shared::durable`], for every change submitted so far: for
    /// a reply built by another connection's input, whose position this
    /// connection does not know.
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

    /// Flushes and stops the writer. Called once, last, at shutdown.
    pub fn shutdown_persistence(&self) {
        self.guarded.lock().persist.shutdown();
    }
}
