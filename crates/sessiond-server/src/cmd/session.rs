//! SESSION.* commands.

use bytes::Bytes;
use sessiond_core::{
    CasOutcome, CommitRequest, Op, ReadOptions, ReadResult, SessionId, StoreError,
};

use super::{Args, CmdError, error_reply};
use crate::protocol::Reply;
use crate::state::{Shared, State};

/// A fencing token and whether to release its lock after the write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fence {
    /// The token presented.
    pub token: Option<u64>,
    /// Release the lock after a successful write.
    pub unlock: bool,
}

/// A SESSION.* command.
#[derive(Debug)]
pub enum SessionCommand {
    /// SESSION.NEW
    New {
        /// Idle TTL.
        ttl_ms: Option<u64>,
        /// Lifetime.
        lifetime_ms: Option<u64>,
    },
    /// SESSION.READ
    Read(SessionId, ReadOptions),
    /// SESSION.COMMIT
    Commit(SessionId, CommitRequest, Fence),
    /// SESSION.DESTROY
    Destroy(SessionId),
    /// SESSION.EXISTS
    Exists(SessionId),
    /// SESSION.TOUCH
    Touch(SessionId, Option<u64>),
    /// SESSION.TTL
    Ttl(SessionId),
    /// SESSION.INCR
    Incr {
        /// Session.
        id: SessionId,
        /// Key.
        key: Bytes,
        /// Amount.
        delta: i64,
        /// Create the session if missing.
        create: bool,
        /// Fencing token.
        fence: Fence,
    },
    /// SESSION.CAS
    Cas {
        /// Session.
        id: SessionId,
        /// Key.
        key: Bytes,
        /// Expected value.
        expected: Bytes,
        /// New value.
        new: Bytes,
        /// Fencing token.
        fence: Fence,
    },
    /// SESSION.REGENERATE
    Regenerate {
        /// Session.
        id: SessionId,
        /// Grace period.
        grace_ms: Option<u64>,
        /// Chosen new id.
        to: Option<SessionId>,
    },
}

impl SessionCommand {
    /// Parses `name` if it is a SESSION.* command.
    ///
    /// # Errors
    /// Arity, numbers, unknown options.
    pub fn parse(name: &str, a: &mut Args) -> Result<Option<Self>, CmdError> {
        let cmd = match name {
            "SESSION.NEW" => {
                let (mut ttl_ms, mut lifetime_ms) = (None, None);
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "TTL" => ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                        "LIFETIME" => lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                        other => return Err(unknown_option(other)),
                    }
                }
                SessionCommand::New {
                    ttl_ms,
                    lifetime_ms,
                }
            }
            "SESSION.READ" => {
                let id = a.id()?;
                let mut opts = ReadOptions::default();
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "CREATE" => opts.create = true,
                        "TTL" => opts.ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                        "LIFETIME" => opts.lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                        "KEYS" => {
                            let mut keys = Vec::with_capacity(a.remaining());
                            while let Some(k) = a.maybe_bytes() {
                                keys.push(k);
                            }
                            if keys.is_empty() {
                                return Err(CmdError::Syntax("KEYS needs at least one key".into()));
                            }
                            opts.keys = Some(keys);
                        }
                        other => return Err(unknown_option(other)),
                    }
                }
                SessionCommand::Read(id, opts)
            }
            "SESSION.COMMIT" => {
                let id = a.id()?;
                let mut req = CommitRequest::default();
                let mut fence = Fence::default();
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "CREATE" => req.create = true,
                        "TTL" => req.ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                        "LIFETIME" => req.lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                        "FENCE" => fence.token = Some(a.u64()?),
                        "UNLOCK" => fence.unlock = true,
                        "SET" => {
                            let key = a.bytes()?;
                            let value = a.bytes()?;
                            let if_version = if a.eat("IFVER") { Some(a.u64()?) } else { None };
                            req.ops.push(Op::Set {
                                key,
                                value,
                                if_version,
                            });
                        }
                        "DEL" => {
                            let key = a.bytes()?;
                            let if_version = if a.eat("IFVER") { Some(a.u64()?) } else { None };
                            req.ops.push(Op::Del { key, if_version });
                        }
                        other => return Err(unknown_option(other)),
                    }
                }
                if fence.unlock && fence.token.is_none() {
                    return Err(CmdError::Syntax("UNLOCK needs FENCE token".into()));
                }
                SessionCommand::Commit(id, req, fence)
            }
            "SESSION.DESTROY" => SessionCommand::Destroy(a.id()?),
            "SESSION.EXISTS" => SessionCommand::Exists(a.id()?),
            "SESSION.TTL" => SessionCommand::Ttl(a.id()?),
            "SESSION.TOUCH" => {
                let id = a.id()?;
                let ttl = if a.eat("TTL") {
                    Some(a.lifetime_as_ms("TTL")?)
                } else {
                    None
                };
                SessionCommand::Touch(id, ttl)
            }
            "SESSION.INCR" => {
                let id = a.id()?;
                let key = a.bytes()?;
                let delta = a.i64()?;
                let mut create = false;
                let mut fence = Fence::default();
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "CREATE" => create = true,
                        "FENCE" => fence.token = Some(a.u64()?),
                        other => return Err(unknown_option(other)),
                    }
                }
                SessionCommand::Incr {
                    id,
                    key,
                    delta,
                    create,
                    fence,
                }
            }
            "SESSION.CAS" => {
                let id = a.id()?;
                let key = a.bytes()?;
                let expected = a.bytes()?;
                let new = a.bytes()?;
                let mut fence = Fence::default();
                if a.eat("FENCE") {
                    fence.token = Some(a.u64()?);
                }
                SessionCommand::Cas {
                    id,
                    key,
                    expected,
                    new,
                    fence,
                }
            }
            "SESSION.REGENERATE" => {
                let id = a.id()?;
                let (mut grace_ms, mut to) = (None, None);
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "GRACE" => grace_ms = Some(a.seconds_as_ms()?),
                        "TO" => to = Some(a.id()?),
                        other => return Err(unknown_option(other)),
                    }
                }
                SessionCommand::Regenerate { id, grace_ms, to }
            }
            _ => return Ok(None),
        };
        Ok(Some(cmd))
    }

    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            SessionCommand::New { .. } => "SESSION.NEW",
            SessionCommand::Read(..) => "SESSION.READ",
            SessionCommand::Commit(..) => "SESSION.COMMIT",
            SessionCommand::Destroy(_) => "SESSION.DESTROY",
            SessionCommand::Exists(_) => "SESSION.EXISTS",
            SessionCommand::Touch(..) => "SESSION.TOUCH",
            SessionCommand::Ttl(_) => "SESSION.TTL",
            SessionCommand::Incr { .. } => "SESSION.INCR",
            SessionCommand::Cas { .. } => "SESSION.CAS",
            SessionCommand::Regenerate { .. } => "SESSION.REGENERATE",
        }
    }

    /// Applies the command and, when it changed anything (a write, a
    /// create, a new TTL) under `always`, waits until that is on disk before
    /// returning the reply. A pure read changes nothing the disk must have
    /// at once (its access time is recorded in bulk), so it never waits.
    pub async fn execute(self, shared: &Shared) -> Reply {
        let (result, seq) = shared.apply(|state, now| self.apply(state, now));
        match result {
            Ok(reply) => {
                if let Err(e) = shared.durable(seq).await {
                    return Reply::error("ERR", e.to_string());
                }
                reply
            }
            Err(e) => error_reply(&e),
        }
    }

    /// Applies the command to the state at `now`.
    ///
    /// # Errors
    /// The core's errors.
    pub fn apply(self, state: &mut State, now: u64) -> Result<Reply, CmdError> {
        let store = &mut state.store;
        match self {
            SessionCommand::New {
                ttl_ms,
                lifetime_ms,
            } => {
                let id = crate::ids::new_session_id();
                store.create(now, &id, ttl_ms, lifetime_ms)?;
                Ok(Reply::bulk(id.to_string()))
            }
            SessionCommand::Read(id, opts) => Ok(read_reply(store.read(now, &id, opts)?)),
            SessionCommand::Commit(id, req, fence) => {
                let canonical = store.resolve(now, &id).unwrap_or_else(|| id.clone());
                if let Some(token) = fence.token {
                    let keys: Vec<&Bytes> = req.ops.iter().map(Op::key).collect();
                    state.locks.check_fence(now, &canonical, token, &keys)?;
                }
                let out = state.store.commit(now, &id, req)?;
                if let (Some(token), true) = (fence.token, fence.unlock) {
                    crate::cmd::lock::release_token(state, now, token);
                }
                Ok(Reply::Array(vec![
                    Reply::uint(out.version),
                    Reply::Array(out.op_versions.into_iter().map(Reply::uint).collect()),
                ]))
            }
            SessionCommand::Destroy(id) => Ok(Reply::Int(store.destroy(now, &id).into())),
            SessionCommand::Exists(id) => Ok(Reply::Int(store.exists(now, &id).into())),
            SessionCommand::Touch(id, ttl) => Ok(Reply::Int(store.touch(now, &id, ttl).into())),
            SessionCommand::Ttl(id) => Ok(match store.ttl(now, &id) {
                Some(ms) => Reply::uint(ms),
                None => Reply::Int(-2),
            }),
            SessionCommand::Incr {
                id,
                key,
                delta,
                create,
                fence,
            } => {
                check_fence(state, now, &id, fence, &key)?;
                let (value, version) = state.store.incr(now, &id, &key, delta, create)?;
                Ok(Reply::Array(vec![Reply::Int(value), Reply::uint(version)]))
            }
            SessionCommand::Cas {
                id,
                key,
                expected,
                new,
                fence,
            } => {
                check_fence(state, now, &id, fence, &key)?;
                Ok(match state.store.cas(now, &id, &key, &expected, new)? {
                    CasOutcome::Swapped { version } => {
                        Reply::Array(vec![Reply::Int(1), Reply::uint(version)])
                    }
                    CasOutcome::Mismatch { version, value } => Reply::Array(vec![
                        Reply::Int(0),
                        Reply::uint(version),
                        value.map_or(Reply::Nil, Reply::Bulk),
                    ]),
                })
            }
            SessionCommand::Regenerate { id, grace_ms, to } => {
                let new_id = to.unwrap_or_else(crate::ids::new_session_id);
                let old = store
                    .resolve(now, &id)
                    .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
                store.regenerate(now, &id, &new_id, grace_ms)?;
                // Locks follow the session to its new id.
                state.locks.rename_session(&old, &new_id);
                Ok(Reply::bulk(new_id.to_string()))
            }
        }
    }
}

fn check_fence(
    state: &mut State,
    now: u64,
    id: &SessionId,
    fence: Fence,
    key: &Bytes,
) -> Result<(), CmdError> {
    if let Some(token) = fence.token {
        let canonical = state.store.resolve(now, id).unwrap_or_else(|| id.clone());
        state.locks.check_fence(now, &canonical, token, &[key])?;
    }
    Ok(())
}

fn unknown_option(kw: &str) -> CmdError {
    CmdError::Syntax(format!("unknown option {kw:?}"))
}

/// The reply of SESSION.READ: `[id, version, created, [key, version, value, …]]`,
/// or nil.
pub fn read_reply(read: Option<ReadResult>) -> Reply {
    match read {
        None => Reply::Nil,
        Some(r) => {
            let mut fields = Vec::with_capacity(r.fields.len() * 3);
            for f in r.fields {
                fields.push(Reply::Bulk(f.key));
                fields.push(Reply::uint(f.version));
                fields.push(f.value.map_or(Reply::Nil, Reply::Bulk));
            }
            Reply::Array(vec![
                Reply::bulk(r.id.to_string()),
                Reply::uint(r.version),
                Reply::Int(r.created.into()),
                Reply::Array(fields),
            ])
        }
    }
}
