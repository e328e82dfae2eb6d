//! The engine: every rule of sessions and locks, and how they combine, as
//! one deterministic state machine.
//!
//! [`Store`] knows sessions and [`LockTable`] knows locks; the engine is the
//! one place that combines them: a fenced commit checks the lock before it
//! writes and may release it after, a lock grant returns the data it covers
//! (and may create the session), `LOCK.ONCE` decides between a grant and the
//! value someone else computed, locks follow a regenerated session, every id
//! resolves through regenerate aliases before a lock is looked at, and a
//! release hands the lock to the next waiter with that waiter's reply built.
//!
//! Inputs are commands as data ([`Command`]), the connection they come from
//! ([`ConnId`]) and the time; connection close, a cancelled wait, the clock
//! reaching a deadline ([`Engine::tick`]) are inputs too. Ids and random
//! values are chosen before the engine is called. The output is an
//! [`Outcome`]: the result, and the [`Effects`] (storage mutations, replies
//! handed to waiting connections, lock hold times, the next deadline).
//! Applying the same inputs to equal engines gives equal outcomes and equal
//! engines: what a replicated log relies on, tested in `tests/engine.rs`.
//! [`Engine::image`] is the whole state as data, for snapshots.

pub mod command;
pub mod dedupe;
mod image;
mod room;

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use command::{AcquireArgs, Command, Fence, Response, SessionLockInfo};
pub use image::{EngineImage, FORMAT as IMAGE_FORMAT, ImageError};

use crate::locks::{Acquired, Handoff, LockRequest, Scope, WaiterId};
use crate::{
    EngineError, LockError, LockTable, Millis, Mutation, ReadOptions, SessionId, Store,
    StoreConfig, StoreError,
};

/// A connection, as the engine knows it: the owner of its locks and waits.
pub type ConnId = u64;

/// What a command did right away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Done: the response or why it was refused (nothing changed then).
    Done(Result<Response, EngineError>),
    /// Queued for a lock: the connection waits; the grant will come as a
    /// [`Delivery`] in the effects of a later input, unless the caller
    /// cancels the wait first ([`Engine::cancel_wait`]).
    Wait(WaiterId),
}

/// A lock handed to a waiting connection, with its reply, built when the
/// lock was handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The wait served.
    pub waiter: WaiterId,
    /// The connection that waited.
    pub conn: ConnId,
    /// The token granted (to release it if the connection is gone:
    /// [`Engine::abandon`]).
    pub token: u64,
    /// The reply for that connection.
    pub reply: Result<Response, EngineError>,
    /// Whether building the reply changed data (`LOCK.ACQUIRE … CREATE`
    /// created the session), so the reply waits for the disk like a write's.
    pub wrote: bool,
}

/// What an input caused besides its result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Changes for storage, in the order they were made.
    pub mutations: Vec<Mutation>,
    /// Locks handed to waiting connections.
    pub deliveries: Vec<Delivery>,
    /// How long each lock that ended was held, in ms.
    pub ended_holds: Vec<u64>,
    /// The earliest deadline (a session, an alias or a lock) from now on:
    /// call [`Engine::tick`] then.
    pub next_deadline: Option<Millis>,
}

impl Effects {
    /// Whether the input changed data that storage must keep.
    pub fn wrote(&self) -> bool {
        !self.mutations.is_empty()
    }
}

/// The result of an input and its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// What the input answers.
    pub result: T,
    /// What it caused.
    pub effects: Effects,
}

/// Connection ids carry the cluster node they are on in their top 16 bits
/// (0 on a single server) and the node's incarnation (how many times it
/// started, modulo 2^16) in the next 16, so a node that died or restarted
/// can have its connections closed at once ([`Input::CloseNode`]) without
/// touching those of its current run.
pub const CONN_NODE_SHIFT: u32 = 48;

/// Where the incarnation sits in a connection id.
pub const CONN_INCARNATION_SHIFT: u32 = 32;

/// The node a connection is on.
pub fn conn_node(conn: ConnId) -> u64 {
    conn >> CONN_NODE_SHIFT
}

/// The incarnation of its node a connection belongs to.
pub fn conn_incarnation(conn: ConnId) -> u64 {
    (conn >> CONN_INCARNATION_SHIFT) & 0xffff
}

/// Every input of the engine as data: what a replicated log carries.
/// [`Engine::input`] applies one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// [`Engine::apply`].
    Command {
        /// The connection.
        conn: ConnId,
        /// The command.
        cmd: Command,
    },
    /// [`Engine::connection_closed`].
    ConnectionClosed {
        /// The connection.
        conn: ConnId,
    },
    /// [`Engine::cancel_wait`].
    CancelWait {
        /// The wait.
        waiter: WaiterId,
    },
    /// [`Engine::abandon`].
    Abandon {
        /// The token.
        token: u64,
    },
    /// [`Engine::tick`].
    Tick {
        /// Most sessions and aliases to remove.
        max_purge: usize,
    },
    /// [`Engine::record_accesses`].
    RecordAccesses,
    /// Every connection of cluster node `node` closed (it died), or, with
    /// `except_incarnation`, every connection of its earlier runs (it
    /// restarted).
    CloseNode {
        /// The node.
        node: u64,
        /// The node's current incarnation, whose connections stay.
        except_incarnation: Option<u64>,
    },
    /// [`Engine::reads_served`]: the last-access times of reads a cluster
    /// leader served without a log entry ([`Engine::peek`]).
    ReadsServed {
        /// Each session read (the id the read resolved to) and when.
        accesses: Vec<(SessionId, Millis)>,
    },
}

/// What an [`Input`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputResult {
    /// A command's step.
    Step(Step),
    /// How many sessions a tick removed, or access times recorded.
    Count(usize),
    /// Nothing to answer.
    Done,
}

/// What [`Engine::peek`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// The command's response.
    pub response: Response,
    /// The session a read found, whose last access should move to the
    /// read's time ([`Input::ReadsServed`]).
    pub accessed: Option<SessionId>,
}

/// A queued `LOCK.ACQUIRE`/`LOCK.ONCE`: what to answer once granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingGrant {
    /// The waiting connection.
    pub conn: ConnId,
    /// What it asked for.
    pub args: AcquireArgs,
    /// For `LOCK.ONCE`: the version it saw.
    pub once_version: Option<u64>,
}

/// Sessions and locks, and every rule combining them. See the module docs.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    locks: LockTable,
    pending: HashMap<WaiterId, PendingGrant>,
    dedupe: dedupe::DedupeTable,
    // With the store's undo journal on: the request ids whose answers the
    // inputs since the last seal remembered, and those of each batch not
    // yet durable (see `Engine::undo_after`).
    dedupe_undo: Option<DedupeUndo>,
}

#[derive(Debug, Default)]
struct DedupeUndo {
    open: Vec<String>,
    sealed: std::collections::VecDeque<(u64, Vec<String>)>,
}

impl Engine {
    /// An engine over a loaded store and a fresh lock table.
    pub fn new(store: Store, locks: LockTable) -> Self {
        Self {
            store,
            locks,
            pending: HashMap::new(),
            dedupe: dedupe::DedupeTable::default(),
            dedupe_undo: None,
        }
    }

    /// Turns undo on or off: a single server under `--durability always`
    /// keeps, for each batch of changes not yet durable, what it replaced,
    /// so that a batch storage fails to sync can be undone
    /// ([`Engine::undo_after`]). See [`crate::store::undo`].
    pub fn keep_undo(&mut self, on: bool) {
        self.store.keep_undo(on);
        self.dedupe_undo = on.then(DedupeUndo::default);
    }

    /// Tags what the inputs since the last call changed with the position
    /// of the batch their mutations went out in (`None`: they made none).
    pub fn seal_undo(&mut self, mark: Option<u64>) {
        self.store.seal_undo(mark);
        if let Some(undo) = &mut self.dedupe_undo {
            let reqids = std::mem::take(&mut undo.open);
            if let Some(mark) = mark
                && !reqids.is_empty()
            {
                undo.sealed.push_back((mark, reqids));
            }
        }
    }

    /// Forgets what the batches up to `mark` changed: they are durable.
    pub fn forget_undo_through(&mut self, mark: u64) {
        self.store.forget_undo_through(mark);
        if let Some(undo) = &mut self.dedupe_undo {
            while undo.sealed.front().is_some_and(|(m, _)| *m <= mark) {
                undo.sealed.pop_front();
            }
        }
    }

    /// Undoes every change of the batches after `mark` (and of the inputs
    /// not sealed yet): sessions and aliases as they were, the answers
    /// remembered for their request ids forgotten (a retry applies again).
    /// The effects carry the mutations that put storage back in that state.
    /// Locks are not undone: they live in memory only.
    pub fn undo_after(&mut self, now: Millis, mark: u64) -> Outcome<crate::store::UndoReport> {
        let report = self.store.undo_after(mark);
        if let Some(undo) = &mut self.dedupe_undo {
            let mut reqids = std::mem::take(&mut undo.open);
            while undo.sealed.back().is_some_and(|(m, _)| *m > mark) {
                if let Some((_, ids)) = undo.sealed.pop_back() {
                    reqids.extend(ids);
                }
            }
            self.dedupe.forget(&reqids);
        }
        self.finish(now, report, Vec::new())
    }

    /// The position of the newest batch not yet durable that changed a
    /// session `cmd` names (or the session it answers for through an
    /// alias): its answer must wait until that batch is durable, so that
    /// no one sees a change that may still be undone.
    pub fn unconfirmed_mark(&self, now: Millis, cmd: &Command) -> Option<u64> {
        if !self.store.keeps_undo() {
            return None;
        }
        let mut newest = None;
        for id in cmd.session_ids().into_iter().flatten() {
            let canonical = self.store.resolve(now, id);
            for id in std::iter::once(id).chain(canonical.as_ref()) {
                newest = newest.max(self.store.unconfirmed_mark(id));
            }
        }
        newest
    }

    /// How many request ids' answers are remembered (see [`dedupe`]).
    pub fn remembered_requests(&self) -> usize {
        self.dedupe.len()
    }

    /// The sessions (read only: every change goes through an input).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The locks (read only).
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// Changes the store's settings (limits, default TTL and grace) and the
    /// longest lock hold, for the commands applied from now on; what is
    /// stored and the locks already granted stay as they are. Not an input:
    /// no effect, nothing to persist. Replicas apply commands with their own
    /// settings, so every node of a cluster needs the same ones.
    ///
    /// ```
    /// use sessiond_core::{Engine, LockTable, Store, StoreConfig};
    /// let mut engine = Engine::new(Store::new(StoreConfig::default()), LockTable::new(1, 300_000));
    /// let mut config = StoreConfig::default();
    /// config.limits.max_value_bytes = 2048;
    /// engine.set_settings(config, 60_000);
    /// assert_eq!(engine.store().config().limits.max_value_bytes, 2048);
    /// assert_eq!(engine.locks().max_hold_ms(), 60_000);
    /// ```
    pub fn set_settings(&mut self, store: StoreConfig, max_hold_ms: u64) {
        self.store.set_config(store);
        self.locks.set_max_hold_ms(max_hold_ms);
    }

    /// The last version handed out: the floor storage records.
    pub fn last_version(&self) -> u64 {
        self.store.last_version()
    }

    /// The earliest deadline of a session, an alias or a lock.
    pub fn next_deadline(&self) -> Option<Millis> {
        earliest(self.store.next_deadline(), self.locks.next_deadline())
    }

    /// Applies `cmd` from connection `conn` at `now`.
    pub fn apply(&mut self, now: Millis, conn: ConnId, cmd: Command) -> Outcome<Step> {
        let mut work = self.locks_due(now);
        self.make_room(now, &cmd);
        let step = match self.execute(now, conn, cmd, &mut work) {
            Ok(step) => step,
            Err(e) => Step::Done(Err(e)),
        };
        self.finish(now, step, work)
    }

    /// Applies any input (see [`Input`]).
    pub fn input(&mut self, now: Millis, input: Input) -> Outcome<InputResult> {
        fn map<T>(o: Outcome<T>, f: impl FnOnce(T) -> InputResult) -> Outcome<InputResult> {
            Outcome {
                result: f(o.result),
                effects: o.effects,
            }
        }
        match input {
            Input::Command { conn, cmd } => map(self.apply(now, conn, cmd), InputResult::Step),
            Input::ConnectionClosed { conn } => {
                map(self.connection_closed(now, conn), |()| InputResult::Done)
            }
            Input::CancelWait { waiter } => {
                map(self.cancel_wait(now, waiter), |()| InputResult::Done)
            }
            Input::Abandon { token } => map(self.abandon(now, token), |()| InputResult::Done),
            Input::Tick { max_purge } => map(self.tick(now, max_purge), InputResult::Count),
            Input::RecordAccesses => map(self.record_accesses(now), InputResult::Count),
            Input::ReadsServed { accesses } => {
                map(self.reads_served(now, &accesses), InputResult::Count)
            }
            Input::CloseNode {
                node,
                except_incarnation,
            } => map(
                self.close_connections(now, |c| {
                    conn_node(c) == node && Some(conn_incarnation(c)) != except_incarnation
                }),
                |()| InputResult::Done,
            ),
        }
    }

    /// Connection `conn` closed: its locks go and its wait ends; waiters
    /// queued behind them are handed the locks.
    pub fn connection_closed(&mut self, now: Millis, conn: ConnId) -> Outcome<()> {
        let mut work = self.locks_due(now);
        self.pending.retain(|_, p| p.conn != conn);
        work.extend(self.locks.release_owner(now, conn));
        self.finish(now, (), work)
    }

    /// Every connection `gone` says is gone closed at once, in id order
    /// (a cluster node died or restarted: its connections went with it).
    pub fn close_connections(&mut self, now: Millis, gone: impl Fn(ConnId) -> bool) -> Outcome<()> {
        let mut work = self.locks_due(now);
        self.pending.retain(|_, p| !gone(p.conn));
        for conn in self.locks.owners() {
            if gone(conn) {
                work.extend(self.locks.release_owner(now, conn));
            }
        }
        self.finish(now, (), work)
    }

    /// The caller gave up the wait `waiter` (it timed out, or the server is
    /// stopping); someone queued behind it may now get the lock.
    pub fn cancel_wait(&mut self, now: Millis, waiter: WaiterId) -> Outcome<()> {
        let mut work = self.locks_due(now);
        self.pending.remove(&waiter);
        work.extend(self.locks.cancel_wait(now, waiter));
        self.finish(now, (), work)
    }

    /// A delivered grant reached no one (its connection left before the
    /// reply could be handed over): release it, so the lock moves on.
    pub fn abandon(&mut self, now: Millis, token: u64) -> Outcome<()> {
        let mut work = self.locks_due(now);
        work.extend(self.locks.release(now, token, None).unwrap_or_default());
        self.finish(now, (), work)
    }

    /// The clock reached a deadline: takes away locks whose lease or
    /// maximum hold ran out (handing them on) and removes up to
    /// `max_purge` expired sessions and aliases. Returns how many were
    /// removed (`max_purge` means there may be more).
    pub fn tick(&mut self, now: Millis, max_purge: usize) -> Outcome<usize> {
        let work = self.locks_due(now);
        let purged = self.store.purge_expired(now, max_purge);
        self.finish(now, purged, work)
    }

    /// Puts the last-access times that reads moved into the effects, for
    /// storage (about once a second, and at shutdown). Returns how many.
    pub fn record_accesses(&mut self, now: Millis) -> Outcome<usize> {
        let recorded = self.store.record_accesses();
        self.finish(now, recorded, Vec::new())
    }

    /// Answers `cmd` without changing anything, when it is a pure read
    /// (`SESSION.READ` without `CREATE` or `TTL`, `SESSION.EXISTS`,
    /// `SESSION.TTL`): the same answer [`Engine::apply`] would give at
    /// `now`, for a cluster leader that serves reads from its own state
    /// once a majority confirmed it still leads (ReadIndex) instead of
    /// putting each read in the log. `None` for every other command.
    ///
    /// A read also slides its session's expiry; that is left to the caller,
    /// who gets the session read in [`Peek::accessed`] and records it later
    /// with [`Input::ReadsServed`], so every replica slides it alike.
    pub fn peek(&self, now: Millis, cmd: &Command) -> Option<Peek> {
        if !cmd.is_pure_read() {
            return None;
        }
        let (result, accessed) = match cmd {
            Command::Read { id, opts } => match self.store.resolve(now, id) {
                Some(canonical) => {
                    let read = self.store.snapshot(&canonical, false, opts.keys.as_deref());
                    (Response::Read(read), Some(canonical))
                }
                None => (Response::Read(None), None),
            },
            Command::Exists { id } => (Response::Flag(self.store.exists(now, id)), None),
            Command::Ttl { id } => (Response::Ttl(self.store.ttl(now, id)), None),
            _ => return None,
        };
        Some(Peek {
            response: result,
            accessed,
        })
    }

    /// Slides the expiry of every session in `accesses` as a read at that
    /// time would have (never past `now`, never shortening one), once per
    /// session. Sessions gone since are skipped. Returns how many slid.
    pub fn reads_served(
        &mut self,
        now: Millis,
        accesses: &[(SessionId, Millis)],
    ) -> Outcome<usize> {
        // Like every input: locks whose time ran out go first.
        let work = self.locks_due(now);
        let mut slid = 0;
        for (id, at) in accesses {
            if self.store.accessed_at(now, id, (*at).min(now)) {
                slid += 1;
            }
        }
        self.finish(now, slid, work)
    }

    // ---- commands -------------------------------------------------------

    fn execute(
        &mut self,
        now: Millis,
        conn: ConnId,
        cmd: Command,
        work: &mut Vec<Handoff>,
    ) -> Result<Step, EngineError> {
        let done = |r: Response| Ok(Step::Done(Ok(r)));
        match cmd {
            Command::New {
                id,
                ttl_ms,
                lifetime_ms,
            } => {
                self.store.create(now, &id, ttl_ms, lifetime_ms)?;
                done(Response::Created(id))
            }
            Command::Read { id, opts } => done(Response::Read(self.store.read(now, &id, opts)?)),
            Command::Commit { id, request, fence } => {
                if let Some(token) = fence.token {
                    let keys: Vec<&Bytes> = request.ops.iter().map(crate::Op::key).collect();
                    self.check_fence(now, &id, token, &keys)?;
                }
                let out = self.store.commit(now, &id, request)?;
                if let (Some(token), true) = (fence.token, fence.unlock) {
                    work.extend(self.locks.release(now, token, None).unwrap_or_default());
                }
                done(Response::Committed(out))
            }
            Command::Destroy { id } => done(Response::Flag(self.store.destroy(now, &id))),
            Command::Exists { id } => done(Response::Flag(self.store.exists(now, &id))),
            Command::Touch { id, ttl_ms } => {
                done(Response::Flag(self.store.touch(now, &id, ttl_ms)))
            }
            Command::Ttl { id } => done(Response::Ttl(self.store.ttl(now, &id))),
            Command::Incr {
                id,
                key,
                delta,
                create,
                fence,
            } => {
                if let Some(token) = fence.token {
                    self.check_fence(now, &id, token, &[&key])?;
                }
                let (value, version) = self.store.incr(now, &id, &key, delta, create)?;
                done(Response::Incremented { value, version })
            }
            Command::Cas {
                id,
                key,
                expected,
                new,
                fence,
            } => {
                if let Some(token) = fence.token {
                    self.check_fence(now, &id, token, &[&key])?;
                }
                done(Response::Cas(
                    self.store.cas(now, &id, &key, &expected, new)?,
                ))
            }
            Command::Regenerate {
                id,
                grace_ms,
                new_id,
            } => {
                let old = self
                    .store
                    .resolve(now, &id)
                    .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
                // The session's locks move to `new_id`, so it must be free
                // of locks too, not only of sessions: moving them onto
                // locks already there would drop those (their holders
                // fenced without a word, their waiters never served).
                if self.locks.is_locked(&new_id) {
                    return Err(StoreError::Exists(new_id.to_string()).into());
                }
                self.store.regenerate(now, &id, &new_id, grace_ms)?;
                // Locks follow the session to its new id.
                self.locks.rename_session(&old, &new_id);
                done(Response::Regenerated(new_id))
            }
            Command::Acquire(args) => self.acquire(now, conn, args, None, work),
            Command::Once { args, if_version } => {
                if let Some(done_already) = self.once_done(now, &args, if_version) {
                    return done(done_already);
                }
                self.acquire(now, conn, args, Some(if_version), work)
            }
            Command::Release { id, scope, token } => {
                let session = self.canonical(now, &id);
                let (released, handoffs) =
                    self.locks.release_held(now, &session, &scope, token, conn);
                work.extend(handoffs);
                done(Response::Flag(released))
            }
            Command::Renew {
                id,
                scope,
                token,
                lease_ms,
            } => {
                let session = self.canonical(now, &id);
                self.locks
                    .renew(now, &session, &scope, token, conn, lease_ms)?;
                done(Response::Renewed)
            }
            Command::LockInfo { id } => {
                let session = id.map(|i| self.canonical(now, &i));
                let sessions = self
                    .locks
                    .inspect(session.as_ref())
                    .into_iter()
                    .map(|(session, holders, waiters)| SessionLockInfo {
                        session,
                        holders,
                        waiters,
                    })
                    .collect();
                done(Response::LockInfo { now, sessions })
            }
            Command::Break { id, scope } => {
                let session = self.canonical(now, &id);
                let (broken, handoffs) = self.locks.break_lock(now, &session, &scope);
                work.extend(handoffs);
                done(Response::Flag(broken))
            }
            Command::Idempotent { reqid, cmd } => self.idempotent(now, conn, reqid, *cmd, work),
        }
    }

    /// Applies `cmd` unless `reqid` was seen: then answers what it answered
    /// the first time. Refusals are remembered too (a retried fenced commit
    /// whose first attempt was applied and released the lock must not now
    /// be told its token is stale, and one refused must stay refused).
    fn idempotent(
        &mut self,
        now: Millis,
        conn: ConnId,
        reqid: String,
        cmd: Command,
        work: &mut Vec<Handoff>,
    ) -> Result<Step, EngineError> {
        self.dedupe.prune(now);
        if let Some(seen) = self.dedupe.get(&reqid) {
            if seen.command != cmd.name() {
                return Err(EngineError::RequestIdReused {
                    reqid,
                    first: seen.command.clone(),
                });
            }
            return Ok(Step::Done(seen.result.clone()));
        }
        let command = cmd.name().to_owned();
        let step = match self.execute(now, conn, cmd, work) {
            Ok(step) => step,
            Err(e) => Step::Done(Err(e)),
        };
        // A wait is not an answer: a lock acquire has its own request ids
        // in the lock table.
        if let Step::Done(result) = &step {
            if let Some(undo) = &mut self.dedupe_undo {
                undo.open.push(reqid.clone());
            }
            self.dedupe.insert(dedupe::DedupeEntry {
                reqid,
                command,
                at: now,
                result: result.clone(),
            });
        }
        Ok(step)
    }

    /// The session `id` answers for: itself or, through regenerate
    /// aliases, the session it moved to. Locks are kept under this id.
    fn canonical(&self, now: Millis, id: &SessionId) -> SessionId {
        self.store.resolve(now, id).unwrap_or_else(|| id.clone())
    }

    fn check_fence(
        &mut self,
        now: Millis,
        id: &SessionId,
        token: u64,
        keys: &[&Bytes],
    ) -> Result<(), LockError> {
        let session = self.canonical(now, id);
        self.locks.check_fence(now, &session, token, keys)
    }

    fn acquire(
        &mut self,
        now: Millis,
        conn: ConnId,
        args: AcquireArgs,
        once_version: Option<u64>,
        work: &mut Vec<Handoff>,
    ) -> Result<Step, EngineError> {
        let request = LockRequest {
            session: self.canonical(now, &args.id),
            scope: args.scope.clone(),
            owner: conn,
            lease_ms: args.lease_ms,
            reqid: args.reqid.clone(),
            wait: args.wait_ms > 0,
        };
        match self.locks.acquire(now, request) {
            Ok(Acquired::Granted(grant)) => Ok(Step::Done(self.granted_reply(
                now,
                grant.token,
                &grant.session,
                &args,
                once_version,
                work,
            ))),
            Ok(Acquired::Queued(waiter)) => {
                // A connection waits for one lock at a time; the lock table
                // replaced any older wait of this connection.
                self.pending.retain(|_, p| p.conn != conn);
                self.pending.insert(
                    waiter,
                    PendingGrant {
                        conn,
                        args,
                        once_version,
                    },
                );
                Ok(Step::Wait(waiter))
            }
            Err(LockError::Timeout(_)) => Err(LockError::Timeout(args.wait_ms).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// `LOCK.ONCE` when the value is already there (its version moved past
    /// the one the caller saw).
    fn once_done(&self, now: Millis, args: &AcquireArgs, if_version: u64) -> Option<Response> {
        let Scope::Key(key) = &args.scope else {
            return None;
        };
        let session = self.store.resolve(now, &args.id)?;
        let field = self.store.get(now, &session)?.fields.get(key)?;
        (field.version != if_version).then_some(Response::OnceDone {
            version: field.version,
            value: field.value,
        })
    }

    /// The reply to a grant of `token` on `session`: the data the lock
    /// covers; for `LOCK.ONCE`, the key, unless someone computed it while
    /// this caller waited (then the lock is released at once and the value
    /// returned).
    fn granted_reply(
        &mut self,
        now: Millis,
        token: u64,
        session: &SessionId,
        args: &AcquireArgs,
        once_version: Option<u64>,
        work: &mut Vec<Handoff>,
    ) -> Result<Response, EngineError> {
        if let Some(seen) = once_version {
            if let Some(done) = self.once_done(now, args, seen) {
                work.extend(self.locks.release(now, token, None).unwrap_or_default());
                return Ok(done);
            }
            let key = match &args.scope {
                Scope::Key(k) => k.clone(),
                Scope::Session => Bytes::new(),
            };
            let field = self
                .store
                .read(
                    now,
                    session,
                    ReadOptions {
                        keys: Some(vec![key]),
                        ..Default::default()
                    },
                )?
                .and_then(|r| r.fields.into_iter().next());
            return Ok(Response::OnceGranted {
                token,
                version: field.as_ref().map_or(0, |f| f.version),
                value: field.and_then(|f| f.value),
            });
        }
        let keys = match &args.scope {
            Scope::Session => None,
            Scope::Key(k) => Some(vec![k.clone()]),
        };
        let read = self.store.read(
            now,
            session,
            ReadOptions {
                create: args.create,
                keys,
                ..Default::default()
            },
        )?;
        Ok(Response::Granted { token, read })
    }

    // ---- effects --------------------------------------------------------

    /// Takes away locks whose lease or maximum hold ran out by `now`; every
    /// input starts with this, so no input sees a lock past its deadline.
    fn locks_due(&mut self, now: Millis) -> Vec<Handoff> {
        if self.locks.next_deadline().is_some_and(|d| d <= now) {
            self.locks.expire(now)
        } else {
            Vec::new()
        }
    }

    /// Turns hand-offs into deliveries (each with its reply built; building
    /// one may release a lock again, for `LOCK.ONCE`, which hands it on in
    /// turn), then gathers the effects.
    fn finish<T>(&mut self, now: Millis, result: T, mut work: Vec<Handoff>) -> Outcome<T> {
        let mut deliveries = Vec::new();
        // Hand-offs are served in the order the lock table made them.
        work.reverse();
        while let Some(h) = work.pop() {
            let Some(pending) = self.pending.remove(&h.waiter) else {
                // Nobody waits for it any more: pass the lock on.
                let more = self
                    .locks
                    .release(now, h.grant.token, None)
                    .unwrap_or_default();
                push_front(&mut work, more);
                continue;
            };
            let before = self.store.pending_mutations();
            let mut more = Vec::new();
            let reply = self.granted_reply(
                now,
                h.grant.token,
                &h.grant.session,
                &pending.args,
                pending.once_version,
                &mut more,
            );
            push_front(&mut work, more);
            deliveries.push(Delivery {
                waiter: h.waiter,
                conn: pending.conn,
                token: h.grant.token,
                reply,
                wrote: self.store.pending_mutations() > before,
            });
        }
        Outcome {
            result,
            effects: Effects {
                mutations: self.store.take_mutations(),
                deliveries,
                ended_holds: self.locks.take_ended_holds(),
                next_deadline: self.next_deadline(),
            },
        }
    }
}

/// Adds hand-offs to a work list that is popped from the back, so they are
/// served after everything already in it.
fn push_front(work: &mut Vec<Handoff>, more: Vec<Handoff>) {
    if !more.is_empty() {
        let rest = std::mem::take(work);
        work.extend(more.into_iter().rev());
        work.extend(rest);
    }
}

fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
