//! The reference model of the engine: the rules that combine sessions and
//! locks (fenced writes, grants that read, `LOCK.ONCE`, locks following a
//! regenerate, alias resolution before any lock is looked at), answering
//! with the engine's own reply types so every reply can be compared.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use sessiond_core::engine::{
    AcquireArgs, Command, ConnId, Delivery, Response, SessionLockInfo, Step,
};
use sessiond_core::locks::{Handoff, Scope, WaiterId};
use sessiond_core::{EngineError, Millis, ReadOptions, SessionId, StoreError};

use super::locks::{Acq, Locks, Request};
use super::sessions::{Config, Sessions};

/// What one input gave: its result, the replies handed to waiting
/// connections, how long each lock that ended was held (sorted: the order
/// is not a promise), and the next deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out<T> {
    pub result: T,
    pub deliveries: Vec<Delivery>,
    pub ended_holds: Vec<u64>,
    pub next_deadline: Option<Millis>,
}

/// A queued acquire: who asked, what, and for `LOCK.ONCE` the version seen.
#[derive(Debug, Clone)]
struct Pending {
    conn: ConnId,
    args: AcquireArgs,
    once_version: Option<u64>,
}

#[derive(Debug)]
pub struct Model {
    pub sessions: Sessions,
    pub locks: Locks,
    pending: BTreeMap<WaiterId, Pending>,
    // Request id -> (command name, when, answer); the simplest table that
    // keeps the engine's promise: an answer is remembered for the
    // retention, and at most MAX_ENTRIES of them, oldest dropped first.
    answered: Vec<(String, String, Millis, Reply)>,
    /// How many repeats were answered from the table.
    pub replayed: usize,
}

type Reply = Result<Response, EngineError>;

impl Model {
    pub fn new(cfg: Config, epoch: u64, max_hold_ms: u64) -> Self {
        Self {
            sessions: Sessions::new(cfg),
            locks: Locks::new(epoch, max_hold_ms),
            pending: BTreeMap::new(),
            answered: Vec::new(),
            replayed: 0,
        }
    }

    /// Every deadline the model knows of (sessions, aliases, locks).
    pub fn deadlines(&self) -> Vec<Millis> {
        self.sessions
            .deadlines()
            .chain(self.locks.deadlines())
            .collect()
    }

    /// Every input first takes away the locks whose lease or maximum hold
    /// ran out, so nothing sees a lock past its deadline; the waiters this
    /// serves get their replies after the input itself ran.
    pub fn apply(&mut self, now: Millis, conn: ConnId, cmd: Command) -> Out<Step> {
        let mut work = self.locks.expire(now);
        let step = match self.execute(now, conn, cmd, &mut work) {
            Ok(s) => s,
            Err(e) => Step::Done(Err(e)),
        };
        self.finish(now, step, work)
    }

    pub fn connection_closed(&mut self, now: Millis, conn: ConnId) -> Out<()> {
        let mut work = self.locks.expire(now);
        self.pending.retain(|_, p| p.conn != conn);
        work.extend(self.locks.release_owner(now, conn));
        self.finish(now, (), work)
    }

    pub fn cancel_wait(&mut self, now: Millis, waiter: WaiterId) -> Out<()> {
        let mut work = self.locks.expire(now);
        self.pending.remove(&waiter);
        work.extend(self.locks.cancel_wait(now, waiter));
        self.finish(now, (), work)
    }

    pub fn tick(&mut self, now: Millis, max: usize) -> Out<usize> {
        let work = self.locks.expire(now);
        let purged = self.sessions.purge(now, max);
        self.finish(now, purged, work)
    }

    /// The id locks of `id` are kept under: the session it answers for, or
    /// itself (locks name ids, not stored sessions).
    fn canonical(&self, now: Millis, id: &SessionId) -> SessionId {
        self.sessions.resolve(now, id).unwrap_or_else(|| id.clone())
    }

    fn fence(
        &self,
        now: Millis,
        id: &SessionId,
        token: u64,
        keys: Vec<Bytes>,
    ) -> Result<(), EngineError> {
        Ok(self
            .locks
            .check_fence(now, &self.canonical(now, id), token, &keys)?)
    }

    fn execute(
        &mut self,
        now: Millis,
        conn: ConnId,
        cmd: Command,
        work: &mut Vec<Handoff>,
    ) -> Result<Step, EngineError> {
        let r = match cmd {
            Command::New {
                id,
                ttl_ms,
                lifetime_ms,
            } => {
                self.sessions.create(now, &id, ttl_ms, lifetime_ms)?;
                Response::Created(id)
            }
            Command::Read { id, opts } => Response::Read(self.sessions.read(now, &id, &opts).0),
            Command::Commit { id, request, fence } => {
                // The fence is checked before anything else, NOSESSION included.
                if let Some(t) = fence.token {
                    self.fence(
                        now,
                        &id,
                        t,
                        request.ops.iter().map(|o| o.key().clone()).collect(),
                    )?;
                }
                let out = self.sessions.commit(now, &id, &request)?;
                if let (Some(t), true) = (fence.token, fence.unlock) {
                    // UNLOCK releases the token's lock whoever holds it now
                    // (after a REQID takeover, the old connection's token is
                    // still current). Not said by the protocol; the engine's.
                    work.extend(self.locks.release(now, t).unwrap_or_default());
                }
                Response::Committed(out)
            }
            Command::Destroy { id } => Response::Flag(self.sessions.destroy(now, &id)),
            Command::Exists { id } => Response::Flag(self.sessions.resolve(now, &id).is_some()),
            Command::Touch { id, ttl_ms } => Response::Flag(self.sessions.touch(now, &id, ttl_ms)),
            Command::Ttl { id } => Response::Ttl(self.sessions.ttl(now, &id)),
            Command::Incr {
                id,
                key,
                delta,
                create,
                fence,
            } => {
                if let Some(t) = fence.token {
                    self.fence(now, &id, t, vec![key.clone()])?;
                }
                let (value, version) = self.sessions.incr(now, &id, &key, delta, create)?;
                Response::Incremented { value, version }
            }
            Command::Cas {
                id,
                key,
                expected,
                new,
                fence,
            } => {
                if let Some(t) = fence.token {
                    self.fence(now, &id, t, vec![key.clone()])?;
                }
                Response::Cas(self.sessions.cas(now, &id, &key, &expected, &new)?)
            }
            Command::Regenerate {
                id,
                grace_ms,
                new_id,
            } => {
                let old = self
                    .sessions
                    .resolve(now, &id)
                    .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
                // TO newid must name a free id: no live session, no live
                // alias, and no lock held or waited for on it (the locks of
                // the moved session take that id).
                if self.sessions.id_taken(now, &new_id) || self.locks.has_locks(&new_id) {
                    return Err(StoreError::Exists(new_id.to_string()).into());
                }
                self.sessions.regenerate(now, &old, &new_id, grace_ms);
                self.locks.rename(&old, &new_id);
                Response::Regenerated(new_id)
            }
            Command::Acquire(args) => return self.acquire(now, conn, args, None, work),
            Command::Once { args, if_version } => {
                if let Some(done) = self.once_done(now, &args, if_version) {
                    done
                } else {
                    return self.acquire(now, conn, args, Some(if_version), work);
                }
            }
            Command::Release { id, scope, token } => {
                let s = self.canonical(now, &id);
                let (released, more) = self.locks.release_held(now, &s, &scope, token, conn);
                work.extend(more);
                Response::Flag(released)
            }
            Command::Renew {
                id,
                scope,
                token,
                lease_ms,
            } => {
                let s = self.canonical(now, &id);
                self.locks.renew(now, &s, &scope, token, conn, lease_ms)?;
                Response::Renewed
            }
            Command::LockInfo { id } => {
                let only = id.map(|i| self.canonical(now, &i));
                Response::LockInfo {
                    now,
                    sessions: self
                        .locks
                        .inspect(only.as_ref())
                        .into_iter()
                        .map(|(session, holders, waiters)| SessionLockInfo {
                            session,
                            holders,
                            waiters,
                        })
                        .collect(),
                }
            }
            Command::Break { id, scope } => {
                let s = self.canonical(now, &id);
                let (broken, more) = self.locks.break_lock(now, &s, &scope);
                work.extend(more);
                Response::Flag(broken)
            }
            Command::Idempotent { reqid, cmd } => {
                use sessiond_core::engine::dedupe::{MAX_ENTRIES, RETENTION_MS};
                self.answered
                    .retain(|(_, _, at, _)| at + RETENTION_MS > now);
                while self.answered.len() > MAX_ENTRIES {
                    drop(self.answered.remove(0));
                }
                if let Some((_, first, _, reply)) =
                    self.answered.iter().find(|(id, ..)| *id == reqid)
                {
                    if first != cmd.name() {
                        return Err(EngineError::RequestIdReused {
                            reqid,
                            first: first.clone(),
                        });
                    }
                    let reply = reply.clone();
                    self.replayed += 1;
                    return Ok(Step::Done(reply));
                }
                let name = cmd.name().to_owned();
                let step = match self.execute(now, conn, *cmd, work) {
                    Ok(s) => s,
                    Err(e) => Step::Done(Err(e)),
                };
                if let Step::Done(reply) = &step {
                    self.answered.push((reqid, name, now, reply.clone()));
                }
                return Ok(step);
            }
        };
        Ok(Step::Done(Ok(r)))
    }

    fn acquire(
        &mut self,
        now: Millis,
        conn: ConnId,
        args: AcquireArgs,
        once_version: Option<u64>,
        work: &mut Vec<Handoff>,
    ) -> Result<Step, EngineError> {
        let req = Request {
            session: self.canonical(now, &args.id),
            scope: args.scope.clone(),
            owner: conn,
            lease_ms: args.lease_ms,
            reqid: args.reqid.clone(),
            wait: args.wait_ms > 0,
        };
        match self.locks.acquire(now, req)? {
            Acq::Granted(g) => {
                let (reply, _) =
                    self.granted_reply(now, g.token, &g.session, &args, once_version, work);
                Ok(Step::Done(reply))
            }
            Acq::Queued(w) => {
                self.pending.retain(|_, p| p.conn != conn);
                self.pending.insert(
                    w,
                    Pending {
                        conn,
                        args,
                        once_version,
                    },
                );
                Ok(Step::Wait(w))
            }
        }
    }

    /// `LOCK.ONCE` finds the value computed when the key exists with a
    /// version other than the one the caller saw. An absent key is never
    /// "computed" (the protocol's "IFVER … differs" could be read to cover
    /// it; the engine grants the lock instead, and so does the model).
    fn once_done(&self, now: Millis, args: &AcquireArgs, seen: u64) -> Option<Response> {
        let Scope::Key(key) = &args.scope else {
            return None;
        };
        let (version, value) = self.sessions.field(now, &args.id, key)?;
        (version != seen).then_some(Response::OnceDone { version, value })
    }

    /// The reply of a grant, built at the instant of the grant: the data
    /// the lock covers (a session lock: every field; a key lock: that key;
    /// `CREATE` makes the session), or for `LOCK.ONCE` the key, unless
    /// someone computed it meanwhile (then the lock goes on at once).
    /// Also says whether building it wrote (created the session).
    fn granted_reply(
        &mut self,
        now: Millis,
        token: u64,
        session: &SessionId,
        args: &AcquireArgs,
        once_version: Option<u64>,
        work: &mut Vec<Handoff>,
    ) -> (Reply, bool) {
        if let Some(seen) = once_version {
            if let Some(done) = self.once_done(now, args, seen) {
                work.extend(self.locks.release(now, token).unwrap_or_default());
                return (Ok(done), false);
            }
            let key = match &args.scope {
                Scope::Key(k) => k.clone(),
                Scope::Session => Bytes::new(),
            };
            let opts = ReadOptions {
                keys: Some(vec![key]),
                ..Default::default()
            };
            let field = self
                .sessions
                .read(now, session, &opts)
                .0
                .and_then(|r| r.fields.into_iter().next());
            return (
                Ok(Response::OnceGranted {
                    token,
                    version: field.as_ref().map_or(0, |f| f.version),
                    value: field.and_then(|f| f.value),
                }),
                false,
            );
        }
        let opts = ReadOptions {
            create: args.create,
            keys: match &args.scope {
                Scope::Session => None,
                Scope::Key(k) => Some(vec![k.clone()]),
            },
            ..Default::default()
        };
        let (read, created) = self.sessions.read(now, session, &opts);
        (Ok(Response::Granted { token, read }), created)
    }

    /// Serves hand-offs in the order they were made. Hand-offs that serving
    /// one causes (a `LOCK.ONCE` waiter finding the value computed releases
    /// at once; a grant nobody waits for any more is passed on) join the end
    /// of the line: served after every hand-off already due. The protocol
    /// does not order the replies of one input among different
    /// connections; this is the engine's order, and it matters (a grant
    /// with `CREATE` creates the session the next one reads).
    fn serve(&mut self, now: Millis, handoffs: Vec<Handoff>, out: &mut Vec<Delivery>) {
        let mut line: VecDeque<Handoff> = handoffs.into();
        while let Some(h) = line.pop_front() {
            match self.pending.remove(&h.waiter) {
                None => {
                    // Nobody waits for it any more: the lock goes on.
                    line.extend(self.locks.release(now, h.grant.token).unwrap_or_default());
                }
                Some(p) => {
                    let mut more = Vec::new();
                    let (reply, wrote) = self.granted_reply(
                        now,
                        h.grant.token,
                        &h.grant.session,
                        &p.args,
                        p.once_version,
                        &mut more,
                    );
                    out.push(Delivery {
                        waiter: h.waiter,
                        conn: p.conn,
                        token: h.grant.token,
                        reply,
                        wrote,
                    });
                    line.extend(more);
                }
            }
        }
    }

    fn finish<T>(&mut self, now: Millis, result: T, work: Vec<Handoff>) -> Out<T> {
        let mut deliveries = Vec::new();
        self.serve(now, work, &mut deliveries);
        let mut ended_holds = std::mem::take(&mut self.locks.ended);
        ended_holds.sort_unstable();
        Out {
            result,
            deliveries,
            ended_holds,
            next_deadline: self.deadlines().into_iter().min(),
        }
    }
}
