//! The state every connection shares: the engine behind one lock, the
//! persistence queue, the waiting connections, the client registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use sessiond_core::engine::{
    Command, ConnId, Delivery, EngineImage, Input, InputResult, Outcome, Step, conn_node,
};
use sessiond_core::locks::WaiterId;
use sessiond_core::{Clock, Engine, Millis, SessionId};
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
    // The writer to redb; none in a cluster, where the Raft log and
    // snapshots keep the data.
    persist: Option<Persistence>,
    // Connections waiting for a lock (a connection waits for one at a
    // time): where to send the reply the engine builds when it hands them
    // the lock.
    waiters: HashMap<ConnId, oneshot::Sender<Delivery>>,
}

/// A boxed future, for the object-safe [`Replication`] trait.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A replicated log the engine's inputs go through (the cluster). The
/// shell proposes inputs; every node applies them through
/// [`Shared::apply_replicated`].
pub trait Replication: Send + Sync {
    /// Proposes `input`; resolves once it is committed and applied, with
    /// its result and its log index.
    fn propose(&self, input: Input) -> BoxFuture<'_, Result<(InputResult, u64), ReplicationError>>;

    /// Resolves once this node applied the log up to `index`.
    fn applied(&self, index: u64) -> BoxFuture<'_, ()>;

    /// `CLUSTER.INFO` lines.
    fn info(&self) -> String;

    /// Whether this node is the leader (it runs the timekeeper).
    fn is_leader(&self) -> bool;

    /// Whether this node knows a leader (itself or another node): without
    /// one, nothing can be proposed.
    fn leader_known(&self) -> bool;

    /// Changes the membership (on the leader, or through it); resolves
    /// once the change is committed, or with why it was not made.
    fn change_membership(&self, change: MembershipChange) -> BoxFuture<'_, Result<(), String>>;

    /// For a read arriving now: confirms that this node still leads (a
    /// majority answered after the read arrived) and that it applied every
    /// entry committed before (Raft's ReadIndex), then gives the engine
    /// time to read at. `None` when this node cannot serve the read itself
    /// (not the leader, no majority in time): it then goes through the log.
    fn read_barrier(&self) -> BoxFuture<'_, Option<Millis>>;

    /// Notes that a read served here (`Engine::peek`) found session `id`
    /// at `at`: its expiry slides when [`Replication::flush_reads`] puts
    /// the noted reads in the log.
    fn note_read(&self, id: SessionId, at: Millis);

    /// Proposes the reads noted since the last call as one entry
    /// (`Input::ReadsServed`); nothing when none were.
    fn flush_reads(&self) -> BoxFuture<'_, ()>;

    /// The node is stopping: if it leads, hands leadership to an
    /// up-to-date voter first (bounded), so the others need not wait out
    /// an election timeout.
    fn hand_off(&self) -> BoxFuture<'_, ()>;
}

/// A change of a cluster's members (`CLUSTER.ADDLEARNER`,
/// `CLUSTER.PROMOTE`, `CLUSTER.REMOVE`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    /// Add `node`, reachable at `addr` (its `--raft-addr`), as a learner.
    AddLearner {
        /// Its id.
        node: u64,
        /// Its peer address.
        addr: String,
    },
    /// Make learner `node` a voter.
    Promote {
        /// Its id.
        node: u64,
    },
    /// Remove `node` (voter or learner).
    Remove {
        /// Its id.
        node: u64,
    },
}

/// Why a proposal failed. The client may retry: nothing was applied, or
/// (for [`ReplicationError::Unknown`]) it may have been.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// No leader is known (an election is running, or this node is cut off
    /// from the majority): nothing was applied.
    #[error("no leader reachable from this node; retry")]
    NoLeader,
    /// The proposal was sent but its fate is unknown (the leader failed
    /// mid-request): it may or may not have been applied.
    #[error("the leader failed during the request; it may or may not have been applied: {0}")]
    Unknown(String),
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
    /// The user it is logged in as (none before AUTH).
    pub user: Option<String>,
    /// When it connected.
    pub connected: Instant,
    /// Cancelled by CLIENT KILL: the connection closes (its locks go as on
    /// any close).
    pub kill: CancellationToken,
}

/// Shared by every connection and background task.
pub struct Shared {
    /// The settings the server started with. Those SIGHUP may change
    /// (limits, TTL defaults, lock hold, SLOWLOG, log level) are read
    /// through [`Shared::settings`], [`Shared::max_request_bytes`] and
    /// [`Shared::max_connections`], the engine and the SLOWLOG instead.
    pub config: Config,
    // The settings in force: `config` with what SIGHUP changed since.
    // Lock order: `settings` before `guarded`, so that the engine's
    // settings and these change together.
    settings: Mutex<Config>,
    // The limits the shell checks, copied out of `settings` so that the
    // hot path reads them without a lock.
    max_request_bytes: AtomicUsize,
    max_connections: AtomicUsize,
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
    /// This node's id in a cluster (0 on a single server): the top bits of
    /// its connection ids.
    pub node_id: u64,
    /// Which run of this node this is (cluster; 0 on a single server).
    pub incarnation: u64,
    replication: std::sync::OnceLock<Arc<dyn Replication>>,
    // The writer's storage state, readable without the state lock (a
    // cluster node has no writer: it stays healthy).
    storage_health: Arc<crate::persist::StorageHealth>,
    // Under `always` (single server): failed batches are undone.
    undoes: bool,
}

impl Shared {
    /// Wraps the loaded engine.
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        mut engine: Engine,
        persist: Option<Persistence>,
        node_id: u64,
        incarnation: u64,
    ) -> Self {
        // Under `always` a batch storage fails to sync is undone (see the
        // `persist` module): the engine keeps what each batch replaced
        // until it is durable.
        let undoes = persist
            .as_ref()
            .is_some_and(|p| p.policy() == crate::config::Durability::Always);
        engine.keep_undo(undoes);
        let slowlog = SlowLog::new(config.slowlog_log_slower_than, config.slowlog_max_len);
        let storage_health = persist
            .as_ref()
            .map_or_else(Default::default, Persistence::health);
        Self {
            settings: Mutex::new(config.clone()),
            max_request_bytes: AtomicUsize::new(config.max_request_bytes),
            max_connections: AtomicUsize::new(config.max_connections),
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
            node_id,
            incarnation,
            replication: std::sync::OnceLock::new(),
            storage_health,
            undoes,
        }
    }

    /// The settings in force (those a reload changed included).
    pub fn settings(&self) -> Config {
        self.settings.lock().clone()
    }

    /// Largest request, in bytes, now.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.load(Ordering::Relaxed)
    }

    /// Most client connections, now.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Puts `settings` in force, as far as they can change at run time:
    /// the engine's limits, TTL defaults and lock hold (for the commands
    /// from now on), the request and connection limits, the SLOWLOG. The
    /// caller keeps the others (address, storage, …) as they were, and
    /// sets the log level.
    pub fn apply_settings(&self, settings: Config) {
        let mut current = self.settings.lock();
        self.guarded
            .lock()
            .engine
            .set_settings(settings.store_config(), settings.lock_max_hold_ms());
        self.max_request_bytes
            .store(settings.max_request_bytes, Ordering::Relaxed);
        self.max_connections
            .store(settings.max_connections, Ordering::Relaxed);
        self.slowlog
            .set(settings.slowlog_log_slower_than, settings.slowlog_max_len);
        *current = settings;
    }

    /// The replicated log, in a cluster.
    pub fn replication(&self) -> Option<&Arc<dyn Replication>> {
        self.replication.get()
    }

    /// Joins the cluster: from now on inputs go through `replication`.
    pub fn set_replication(&self, replication: Arc<dyn Replication>) {
        let _ = self.replication.set(replication);
    }

    /// Applies an input that the replicated log committed, at the time the
    /// leader stamped on it. Deliveries for this node's connections are
    /// sent; the others belong to other nodes (and one whose connection is
    /// gone is cleaned up by that connection's own close, proposed next).
    pub fn apply_replicated(&self, now: Millis, input: Input) -> InputResult {
        let mut g = self.guarded.lock();
        let Outcome { result, effects } = g.engine.input(now, input);
        for d in effects.deliveries {
            if conn_node(d.conn) == self.node_id
                && let Some(tx) = g.waiters.remove(&d.conn)
            {
                let _ = tx.send(d);
            }
        }
        drop(g);
        for held_ms in effects.ended_holds {
            #[allow(clippy::cast_precision_loss)] // ms counts fit f64 exactly
            self.metrics.lock_hold.observe(held_ms as f64 / 1000.0);
        }
        result
    }

    /// Registers where a lock granted to connection `conn` goes (cluster:
    /// before proposing its acquire, since the grant may be applied on this
    /// node before the proposal's answer comes back).
    pub fn register_waiter(&self, conn: ConnId) -> oneshot::Receiver<Delivery> {
        let (tx, rx) = oneshot::channel();
        self.guarded.lock().waiters.insert(conn, tx);
        rx
    }

    /// Forgets the registration of [`Shared::register_waiter`].
    pub fn unregister_waiter(&self, conn: ConnId) {
        self.guarded.lock().waiters.remove(&conn);
    }

    /// The engine's whole state (a snapshot).
    pub fn engine_image(&self) -> EngineImage {
        self.guarded.lock().engine.image()
    }

    /// Replaces the engine's state (a snapshot installed). The image
    /// carries the settings of the node that made it; this node keeps its
    /// own.
    pub fn install_image(&self, image: EngineImage) {
        let settings = self.settings.lock();
        let mut engine = Engine::from_image(image);
        engine.set_settings(settings.store_config(), settings.lock_max_hold_ms());
        self.guarded.lock().engine = engine;
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> u64 {
        // In a cluster the node's id is in the top bits, so ids are unique
        // across nodes and a node's connections can be closed together.
        (self.node_id << sessiond_core::engine::CONN_NODE_SHIFT)
            | (self.incarnation << sessiond_core::engine::CONN_INCARNATION_SHIFT)
            | self.next_client_id.fetch_add(1, Ordering::Relaxed)
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
    ///
    /// The third value, under `always`: the newest batch not yet durable
    /// that changed a session the command names; its reply must wait for
    /// that batch too (it may show that change, which a failed sync would
    /// undo).
    pub fn execute(&self, conn: ConnId, cmd: Command) -> (Executed, Option<Seq>, Option<Seq>) {
        let mut unconfirmed = None;
        let (executed, seq) = self.run_then(
            |e, now| {
                unconfirmed = e.unconfirmed_mark(now, &cmd);
                e.apply(now, conn, cmd)
            },
            |step, waiters| match step {
                Step::Done(result) => Executed::Done(result),
                Step::Wait(waiter) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.insert(conn, tx);
                    Executed::Wait(waiter, rx)
                }
            },
        );
        (executed, seq, unconfirmed)
    }

    /// The writer's progress as it changes (none in a cluster).
    pub fn watch_persistence(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<crate::persist::Progress>> {
        self.guarded
            .lock()
            .persist
            .as_ref()
            .map(Persistence::watch_progress)
    }

    /// Whether batches storage fails to sync are undone (`always`): reads
    /// may then have to wait for the disk and be answered again.
    pub fn undoes_failed_writes(&self) -> bool {
        self.undoes
    }

    /// After a failure under `always`: undoes, in memory, every change
    /// not durable (the writer dropped them), and queues what puts storage
    /// back. Returns how many batches were undone; 0 when there was nothing
    /// to do (no failure, or already done).
    pub fn undo_unconfirmed(&self) -> usize {
        let mut g = self.guarded.lock();
        let Guarded {
            engine, persist, ..
        } = &mut *g;
        let Some(p) = persist.as_mut() else {
            return 0;
        };
        let Some((epoch, after)) = p.undo_due() else {
            return 0;
        };
        let now = self.clock.now();
        let Outcome { result, effects } = engine.undo_after(now, after);
        // First the writer learns the undo is done (it drops what came
        // before), then it gets the state to put back.
        p.undone(epoch, after);
        let floor = engine.last_version();
        p.submit(effects.mutations, floor);
        drop(g);
        self.storage_health.count_undone(result.batches as u64);
        tracing::warn!(
            batches = result.batches,
            sessions = result.sessions,
            aliases = result.aliases,
            durable = after,
            "undone: the changes storage failed to sync (their clients got an error); memory and storage are back to the last durable state"
        );
        result.batches
    }

    /// Gives up the wait `waiter` (it timed out, the client left, the server
    /// is stopping). Returns the grant if it arrived in the meantime: the
    /// caller then owns that lock.
    pub fn cancel_wait(
        &self,
        conn: ConnId,
        waiter: WaiterId,
        rx: &mut oneshot::Receiver<Delivery>,
    ) -> Option<Delivery> {
        // Under the state lock: either the grant was sent before this (and
        // is in `rx`), or the wait is still queued and ends here.
        self.run_then(
            |e, now| e.cancel_wait(now, waiter),
            |(), waiters| {
                waiters.remove(&conn);
            },
        );
        rx.try_recv().ok()
    }

    fn run_then<T, U>(
        &self,
        input: impl FnOnce(&mut Engine, Millis) -> Outcome<T>,
        then: impl FnOnce(T, &mut HashMap<ConnId, oneshot::Sender<Delivery>>) -> U,
    ) -> (U, Option<Seq>) {
        let mut g = self.guarded.lock();
        let now = self.clock.now();
        if self.undoes
            && let Some(durable) = g.persist.as_ref().map(|p| p.progress().durable)
        {
            // What is durable can no longer be undone, and a read of it
            // need not wait.
            g.engine.forget_undo_through(durable);
        }
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
                match g.waiters.remove(&d.conn) {
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
        let seq = match g.persist.as_mut() {
            Some(p) => p.submit(mutations, floor),
            None => None,
        };
        if self.undoes {
            g.engine.seal_undo(seq);
        }
        drop(g);
        if next_deadline.is_some_and(|d| d < self.timer_at.load(Ordering::Relaxed)) {
            self.timer.notify_one();
        }
        (result, seq)
    }

    /// Connection `conn` left: its locks go, and its waits end. In a
    /// cluster that is a proposal like any other input.
    pub fn connection_closed(&self, conn: ConnId) {
        self.unregister_waiter(conn);
        match self.replication().cloned() {
            None => {
                self.run(|e, now| e.connection_closed(now, conn));
            }
            Some(replication) => {
                tokio::spawn(async move {
                    // Retried while no leader is known; if it never gets
                    // through, the node's restart (CloseNode) or the locks'
                    // max hold ends them.
                    for _ in 0..50 {
                        match replication.propose(Input::ConnectionClosed { conn }).await {
                            Ok(_) => return,
                            Err(_) => {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
            }
        }
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
            match g.persist.as_mut() {
                Some(p) => {
                    let seq = p.last_submitted();
                    p.waiter(seq)
                }
                None => None,
            }
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
        let waiter = self
            .guarded
            .lock()
            .persist
            .as_mut()
            .and_then(|p| p.waiter(seq));
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
        let waiter = self
            .guarded
            .lock()
            .persist
            .as_mut()
            .and_then(|p| p.applied_waiter(seq));
        match waiter {
            Some(w) => w.wait().await,
            None => Ok(()),
        }
    }

    /// Persistence progress and policy, for INFO.
    pub fn persistence(&self) -> (crate::config::Durability, crate::persist::Progress) {
        let g = self.guarded.lock();
        match &g.persist {
            Some(p) => (p.policy(), p.progress()),
            None => (self.config.durability, crate::persist::Progress::default()),
        }
    }

    /// Flushes and stops the writer, and says what it could not write.
    /// Called once, last, at shutdown. A cluster node has no writer (its
    /// log is synced as it goes): nothing is left.
    pub fn shutdown_persistence(&self) -> crate::persist::FlushReport {
        // A failure not undone yet: undone now, so that storage is put
        // back before the writer stops.
        self.undo_unconfirmed();
        match self.guarded.lock().persist.as_mut() {
            Some(p) => p.shutdown(),
            None => crate::persist::FlushReport {
                durable: 0,
                undone_batches: 0,
                unflushed_batches: 0,
                unflushed_mutations: 0,
                fault: None,
            },
        }
    }

    /// Why write commands must be refused now (storage is failing), if
    /// they must (the `write_gate` module asks).
    pub fn write_refusal(&self) -> Option<crate::persist::StorageFault> {
        self.storage_health.fault()
    }

    /// The storage state (fault, counters) for INFO and metrics.
    pub fn storage_health(&self) -> Arc<crate::persist::StorageHealth> {
        self.storage_health.clone()
    }
}
