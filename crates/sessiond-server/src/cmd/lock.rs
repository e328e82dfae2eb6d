//! LOCK.* commands. Waiting happens in the connection (see
//! `connection.rs`): a command that has to wait returns a [`LockWait`]
//! holding the receiving end of a oneshot; the operation that frees the lock
//! (a release, a commit with UNLOCK, an expired lease, a closed connection)
//! builds the waiter's whole reply under the same state lock and sends it
//! through. The waiting connection only writes it out: a hand-off costs one
//! wake-up of the waiter's task and no second pass over the state.

use sessiond_core::locks::{Acquired, Grant, Handoff, LockRequest, Scope, WaiterId};
use sessiond_core::{Millis, ReadOptions, SessionId, StoreError};
use tokio::sync::oneshot;

use super::session::read_reply;
use super::{Args, CmdError};
use crate::protocol::Reply;
use crate::state::{ClientInfo, State};

/// A LOCK.* command.
#[derive(Debug)]
pub enum LockCommand {
    /// LOCK.ACQUIRE
    Acquire(AcquireArgs),
    /// LOCK.ONCE
    Once(AcquireArgs, u64),
    /// LOCK.RELEASE
    Release(SessionId, Scope, u64),
    /// LOCK.RENEW
    Renew(SessionId, Scope, u64, u64),
    /// LOCK.INFO
    Info(Option<SessionId>),
    /// LOCK.BREAK
    Break(SessionId, Scope),
}

/// The arguments of LOCK.ACQUIRE and LOCK.ONCE.
#[derive(Debug, Clone)]
pub struct AcquireArgs {
    /// Session.
    pub id: SessionId,
    /// What to lock.
    pub scope: Scope,
    /// Longest wait, ms.
    pub wait_ms: u64,
    /// Lease, ms.
    pub lease_ms: Option<u64>,
    /// Idempotency key.
    pub reqid: Option<String>,
    /// Create the session when missing.
    pub create: bool,
}

/// A wait in progress: the connection awaits `rx` for at most `wait_ms`.
#[derive(Debug)]
pub struct LockWait {
    /// The waiter.
    pub waiter: WaiterId,
    /// Where the grant arrives.
    pub rx: oneshot::Receiver<Handed>,
    /// How long to wait.
    pub wait_ms: u64,
}

/// A queued waiter as the state keeps it: what to reply once granted, and
/// where to send that.
#[derive(Debug)]
pub struct Waiting {
    tx: oneshot::Sender<Handed>,
    args: AcquireArgs,
    once_version: Option<u64>,
}

/// A lock handed to a waiting connection, with the reply to send it.
#[derive(Debug)]
pub struct Handed {
    /// The grant.
    pub grant: Grant,
    /// The reply, built when the lock was handed over.
    pub reply: Reply,
    /// Whether building the reply changed the store (LOCK.ACQUIRE … CREATE
    /// created the session), so the reply waits for the disk as a write's.
    pub wrote: bool,
}

/// What executing a lock command yields.
#[derive(Debug)]
pub enum LockStep {
    /// Done: the reply.
    Reply(Reply),
    /// Must wait for a hand-off.
    Wait(LockWait),
}

fn scope_arg(a: &mut Args) -> Result<Scope, CmdError> {
    Ok(if a.eat("KEY") {
        Scope::Key(a.bytes()?)
    } else {
        Scope::Session
    })
}

fn acquire_args(a: &mut Args, id: SessionId, scope: Scope) -> Result<(AcquireArgs, u64), CmdError> {
    let mut args = AcquireArgs {
        id,
        scope,
        wait_ms: 0,
        lease_ms: None,
        reqid: None,
        create: false,
    };
    let mut if_version = 0;
    while let Some(kw) = a.keyword() {
        match kw.as_str() {
            "KEY" => args.scope = Scope::Key(a.bytes()?),
            "WAIT" => args.wait_ms = a.u64()?,
            "LEASE" => args.lease_ms = Some(a.u64()?.max(1)),
            "REQID" => args.reqid = Some(a.string()?),
            "CREATE" => args.create = true,
            "IFVER" => if_version = a.u64()?,
            other => return Err(CmdError::Syntax(format!("unknown option {other:?}"))),
        }
    }
    Ok((args, if_version))
}

impl LockCommand {
    /// Parses `name` if it is a LOCK.* command.
    ///
    /// # Errors
    /// Arity, numbers, unknown options.
    pub fn parse(name: &str, a: &mut Args) -> Result<Option<Self>, CmdError> {
        Ok(Some(match name {
            "LOCK.ACQUIRE" => {
                let id = a.id()?;
                LockCommand::Acquire(acquire_args(a, id, Scope::Session)?.0)
            }
            "LOCK.ONCE" => {
                let id = a.id()?;
                let key = a.bytes()?;
                let (args, if_version) = acquire_args(a, id, Scope::Key(key))?;
                LockCommand::Once(args, if_version)
            }
            "LOCK.RELEASE" => {
                let id = a.id()?;
                let scope = scope_arg(a)?;
                LockCommand::Release(id, scope, a.u64()?)
            }
            "LOCK.RENEW" => {
                let id = a.id()?;
                let scope = scope_arg(a)?;
                let token = a.u64()?;
                if !a.eat("LEASE") {
                    return Err(CmdError::Syntax("LOCK.RENEW needs LEASE ms".into()));
                }
                LockCommand::Renew(id, scope, token, a.u64()?.max(1))
            }
            "LOCK.INFO" => LockCommand::Info(if a.remaining() > 0 {
                Some(a.id()?)
            } else {
                None
            }),
            "LOCK.BREAK" => {
                let id = a.id()?;
                LockCommand::Break(id, scope_arg(a)?)
            }
            _ => return Ok(None),
        }))
    }

    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            LockCommand::Acquire(_) => "LOCK.ACQUIRE",
            LockCommand::Once(..) => "LOCK.ONCE",
            LockCommand::Release(..) => "LOCK.RELEASE",
            LockCommand::Renew(..) => "LOCK.RENEW",
            LockCommand::Info(_) => "LOCK.INFO",
            LockCommand::Break(..) => "LOCK.BREAK",
        }
    }

    /// Applies the command for connection `owner`.
    ///
    /// # Errors
    /// The lock table's errors.
    pub fn apply(
        self,
        state: &mut State,
        now: Millis,
        owner: u64,
        clients: &dyn Fn(u64) -> Option<ClientInfo>,
    ) -> Result<LockStep, CmdError> {
        expire_due(state, now);
        match self {
            LockCommand::Acquire(args) => acquire(state, now, owner, args, None),
            LockCommand::Once(args, if_version) => {
                if let Some(reply) = once_done(state, now, &args, if_version) {
                    return Ok(LockStep::Reply(reply));
                }
                acquire(state, now, owner, args, Some(if_version))
            }
            LockCommand::Release(id, scope, token) => {
                let canonical = canonical(state, now, &id);
                let ok = state.locks.grant(token).is_some_and(|g| {
                    g.session == canonical && g.scope == scope && g.owner == owner
                });
                if ok {
                    let h = state
                        .locks
                        .release(now, token, Some(owner))
                        .unwrap_or_default();
                    deliver(state, now, h);
                }
                Ok(LockStep::Reply(Reply::Int(ok.into())))
            }
            LockCommand::Renew(id, scope, token, lease_ms) => {
                let canonical = canonical(state, now, &id);
                let matches = state.locks.grant(token).is_some_and(|g| {
                    g.session == canonical && g.scope == scope && now < g.deadline()
                });
                if !matches {
                    state.locks.note_fenced();
                    return Err(StoreError::Fenced {
                        session: id.to_string(),
                        token,
                    }
                    .into());
                }
                state.locks.renew(now, token, owner, lease_ms)?;
                Ok(LockStep::Reply(Reply::Int(1)))
            }
            LockCommand::Info(id) => {
                let id = id.map(|i| canonical(state, now, &i));
                Ok(LockStep::Reply(info_reply(
                    state,
                    now,
                    id.as_ref(),
                    clients,
                )))
            }
            LockCommand::Break(id, scope) => {
                let canonical = canonical(state, now, &id);
                let (was, h) = state.locks.break_lock(now, &canonical, &scope);
                deliver(state, now, h);
                Ok(LockStep::Reply(Reply::Int(was.into())))
            }
        }
    }
}

fn canonical(state: &State, now: Millis, id: &SessionId) -> SessionId {
    state.store.resolve(now, id).unwrap_or_else(|| id.clone())
}

/// Takes away locks whose lease or maximum hold ran out, and hands them on.
pub fn expire_due(state: &mut State, now: Millis) {
    if state.locks.next_deadline().is_some_and(|d| d <= now) {
        let h = state.locks.expire(now);
        deliver(state, now, h);
    }
}

fn acquire(
    state: &mut State,
    now: Millis,
    owner: u64,
    args: AcquireArgs,
    once_version: Option<u64>,
) -> Result<LockStep, CmdError> {
    let session = canonical(state, now, &args.id);
    let req = LockRequest {
        session,
        scope: args.scope.clone(),
        owner,
        lease_ms: args.lease_ms,
        reqid: args.reqid.clone(),
        wait: args.wait_ms > 0,
    };
    match state.locks.acquire(now, req) {
        Ok(Acquired::Granted(grant)) => Ok(LockStep::Reply(granted_reply(
            state,
            now,
            &grant,
            &args,
            once_version,
        )?)),
        Ok(Acquired::Queued(waiter)) => {
            let (tx, rx) = oneshot::channel();
            let wait_ms = args.wait_ms;
            state.waiters.insert(
                waiter,
                Waiting {
                    tx,
                    args,
                    once_version,
                },
            );
            Ok(LockStep::Wait(LockWait {
                waiter,
                rx,
                wait_ms,
            }))
        }
        Err(StoreError::Timeout(_)) => Err(StoreError::Timeout(args.wait_ms).into()),
        Err(e) => Err(e.into()),
    }
}

/// LOCK.ONCE when the value is already there: `[0, version, value]`.
fn once_done(state: &State, now: Millis, args: &AcquireArgs, if_version: u64) -> Option<Reply> {
    let Scope::Key(key) = &args.scope else {
        return None;
    };
    let canonical = state.store.resolve(now, &args.id)?;
    let session = state.store.get(now, &canonical)?;
    let field = session.fields.get(key)?;
    (field.version != if_version).then(|| {
        Reply::Array(vec![
            Reply::Int(0),
            Reply::uint(field.version),
            Reply::Bulk(field.value.clone()),
        ])
    })
}

/// The reply to a grant: `[token, read]`, or for LOCK.ONCE `[token, version, value]`
/// (or `[0, …]` when the value changed while it waited: the lock is then
/// released at once).
pub fn granted_reply(
    state: &mut State,
    now: Millis,
    grant: &Grant,
    args: &AcquireArgs,
    once_version: Option<u64>,
) -> Result<Reply, CmdError> {
    if let Some(v) = once_version {
        if let Some(done) = once_done(state, now, args, v) {
            let h = state
                .locks
                .release(now, grant.token, None)
                .unwrap_or_default();
            deliver(state, now, h);
            return Ok(done);
        }
        let Scope::Key(key) = &grant.scope else {
            return Err(CmdError::Syntax("LOCK.ONCE locks a key".into()));
        };
        let read = state.store.read(
            now,
            &grant.session,
            ReadOptions {
                keys: Some(vec![key.clone()]),
                ..Default::default()
            },
        )?;
        let field = read.and_then(|r| r.fields.into_iter().next());
        return Ok(Reply::Array(vec![
            Reply::uint(grant.token),
            Reply::uint(field.as_ref().map_or(0, |f| f.version)),
            field.and_then(|f| f.value).map_or(Reply::Nil, Reply::Bulk),
        ]));
    }
    let keys = match &grant.scope {
        Scope::Session => None,
        Scope::Key(k) => Some(vec![k.clone()]),
    };
    let read = state.store.read(
        now,
        &grant.session,
        ReadOptions {
            create: args.create,
            keys,
            ..Default::default()
        },
    )?;
    Ok(Reply::Array(vec![
        Reply::uint(grant.token),
        read_reply(read),
    ]))
}

/// Hands grants to their waiting connections, each with its reply built
/// here (the read the grant returns), so the waiter has nothing left to do
/// but write it. A waiter whose connection already left (its receiver is
/// gone) gets its grant released at once, so the lock moves on to the next
/// in line.
pub fn deliver(state: &mut State, now: Millis, handoffs: Vec<Handoff>) {
    let mut work = handoffs;
    while let Some(h) = work.pop() {
        let sent = match state.waiters.remove(&h.waiter) {
            Some(w) if !w.tx.is_closed() => {
                let before = state.store.pending_mutations();
                let reply = granted_reply(state, now, &h.grant, &w.args, w.once_version)
                    .unwrap_or_else(|e| super::error_reply(&e));
                let wrote = state.store.pending_mutations() > before;
                w.tx.send(Handed {
                    grant: h.grant.clone(),
                    reply,
                    wrote,
                })
                .is_ok()
            }
            _ => false,
        };
        if !sent {
            work.extend(
                state
                    .locks
                    .release(now, h.grant.token, None)
                    .unwrap_or_default(),
            );
        }
    }
}

/// Releases the lock `token` (after a commit with UNLOCK).
pub fn release_token(state: &mut State, now: Millis, token: u64) {
    let h = state.locks.release(now, token, None).unwrap_or_default();
    deliver(state, now, h);
}

/// Gives up a wait (timeout, or the client left). Returns a grant that
/// arrived in the meantime, which the caller then owns.
pub fn cancel_wait(state: &mut State, now: Millis, wait: &mut LockWait) -> Option<Handed> {
    state.waiters.remove(&wait.waiter);
    let h = state.locks.cancel_wait(now, wait.waiter);
    deliver(state, now, h);
    wait.rx.try_recv().ok()
}

fn info_reply(
    state: &State,
    now: Millis,
    id: Option<&SessionId>,
    clients: &dyn Fn(u64) -> Option<ClientInfo>,
) -> Reply {
    let describe = |owner: u64| -> (Reply, Reply) {
        match clients(owner) {
            Some(c) => (
                c.name.map_or(Reply::Nil, Reply::bulk),
                Reply::bulk(c.addr.to_string()),
            ),
            None => (Reply::Nil, Reply::Nil),
        }
    };
    let scope_parts = |s: &Scope| match s {
        Scope::Session => (Reply::bulk("session"), Reply::Nil),
        Scope::Key(k) => (Reply::bulk("key"), Reply::Bulk(k.clone())),
    };
    let mut out = Vec::new();
    for (session, holders, waiters) in state.locks.inspect(id) {
        let waiter_rows: Vec<(Scope, Reply)> = waiters
            .iter()
            .map(|w| {
                let (name, addr) = describe(w.owner);
                let (scope, key) = scope_parts(&w.scope);
                (
                    w.scope.clone(),
                    Reply::Array(vec![
                        Reply::uint(w.owner),
                        name,
                        addr,
                        scope,
                        key,
                        Reply::uint(now.saturating_sub(w.since)),
                    ]),
                )
            })
            .collect();
        let mut rows: Vec<(Scope, Reply)> = holders
            .iter()
            .map(|g| {
                let (name, addr) = describe(g.owner);
                let (scope, key) = scope_parts(&g.scope);
                (g.scope.clone(), {
                    let queue: Vec<Reply> = waiter_rows
                        .iter()
                        .filter(|(s, _)| s.conflicts(&g.scope))
                        .map(|(_, r)| r.clone())
                        .collect();
                    Reply::Array(vec![
                        Reply::bulk(session.to_string()),
                        scope,
                        key,
                        Reply::uint(g.token),
                        Reply::uint(g.owner),
                        name,
                        addr,
                        Reply::uint(now.saturating_sub(g.granted_at)),
                        g.lease_until
                            .map_or(Reply::Int(-1), |l| Reply::uint(l.saturating_sub(now))),
                        Reply::Array(queue),
                    ])
                })
            })
            .collect();
        out.extend(rows.drain(..).map(|(_, r)| r));
    }
    Reply::Array(out)
}
