//! What the engine answers, as RESP: [`response_reply`] for responses, and
//! the one mapping of every error to its RESP error code.

use sessiond_core::engine::{Response, SessionLockInfo};
use sessiond_core::locks::Scope;
use sessiond_core::{CasOutcome, EngineError, LockError, ReadResult, StoreError};

use super::CmdError;
use crate::persist::{DurabilityError, StorageFault};
use crate::protocol::{ParseError, Reply};
use crate::state::{ClientInfo, ReplicationError};

/// The reply for `response`. `clients` names the holders and waiters of
/// `LOCK.INFO`.
pub fn response_reply(response: Response, clients: &dyn Fn(u64) -> Option<ClientInfo>) -> Reply {
    match response {
        Response::Created(id) | Response::Regenerated(id) => Reply::bulk(id.to_string()),
        Response::Read(read) => read_reply(read),
        Response::Committed(out) => Reply::Array(vec![
            Reply::uint(out.version),
            Reply::Array(out.op_versions.into_iter().map(Reply::uint).collect()),
        ]),
        Response::Flag(yes) => Reply::Int(yes.into()),
        Response::Ttl(Some(ms)) => Reply::uint(ms),
        Response::Ttl(None) => Reply::Int(-2),
        Response::Incremented { value, version } => {
            Reply::Array(vec![Reply::Int(value), Reply::uint(version)])
        }
        Response::Cas(CasOutcome::Swapped { version }) => {
            Reply::Array(vec![Reply::Int(1), Reply::uint(version)])
        }
        Response::Cas(CasOutcome::Mismatch { version, value }) => Reply::Array(vec![
            Reply::Int(0),
            Reply::uint(version),
            value.map_or(Reply::Nil, Reply::Bulk),
        ]),
        Response::Granted { token, read } => {
            Reply::Array(vec![Reply::uint(token), read_reply(read)])
        }
        Response::OnceGranted {
            token,
            version,
            value,
        } => Reply::Array(vec![
            Reply::uint(token),
            Reply::uint(version),
            value.map_or(Reply::Nil, Reply::Bulk),
        ]),
        Response::OnceDone { version, value } => Reply::Array(vec![
            Reply::Int(0),
            Reply::uint(version),
            Reply::Bulk(value),
        ]),
        Response::Renewed => Reply::Int(1),
        Response::LockInfo { now, sessions } => lock_info_reply(now, &sessions, clients),
    }
}

/// The reply of SESSION.READ: `[id, version, created, [key, version, value, …]]`,
/// or nil.
fn read_reply(read: Option<ReadResult>) -> Reply {
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

fn lock_info_reply(
    now: u64,
    sessions: &[SessionLockInfo],
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
    for s in sessions {
        let waiter_rows: Vec<(&Scope, Reply)> = s
            .waiters
            .iter()
            .map(|w| {
                let (name, addr) = describe(w.owner);
                let (scope, key) = scope_parts(&w.scope);
                (
                    &w.scope,
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
        for g in &s.holders {
            let (name, addr) = describe(g.owner);
            let (scope, key) = scope_parts(&g.scope);
            let queue: Vec<Reply> = waiter_rows
                .iter()
                .filter(|(ws, _)| ws.conflicts(&g.scope))
                .map(|(_, r)| r.clone())
                .collect();
            out.push(Reply::Array(vec![
                Reply::bulk(s.session.to_string()),
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
            ]));
        }
    }
    Reply::Array(out)
}

/// The RESP error for a request that could not be parsed.
pub fn error_reply(err: &CmdError) -> Reply {
    match err {
        CmdError::Core(e) => store_error_reply(e),
        CmdError::Unknown(name) => {
            Reply::error("ERR", format!("unknown command '{}'", sanitize(name)))
        }
        CmdError::Arity(name) => Reply::error(
            "ERR",
            format!("wrong number of arguments for '{name}' command"),
        ),
        CmdError::NotInteger => Reply::error("ERR", "value is not an integer or out of range"),
        CmdError::Syntax(msg) => Reply::error("ERR", format!("syntax error: {msg}")),
        CmdError::Other(code, msg) => Reply::error(code, msg),
    }
}

/// The RESP error for an error of the engine.
pub fn engine_error_reply(e: &EngineError) -> Reply {
    match e {
        EngineError::Session(e) => store_error_reply(e),
        EngineError::Lock(e) => lock_error_reply(e),
        #[allow(unreachable_patterns)] // EngineError is non-exhaustive
        other => Reply::error("ERR", other.to_string()),
    }
}

fn store_error_reply(e: &StoreError) -> Reply {
    let code = match e {
        StoreError::BadId => "BADID",
        StoreError::NoSession(_) => "NOSESSION",
        StoreError::Conflict(_) => "CONFLICT",
        StoreError::NotInteger(_) | StoreError::Overflow(_) => "NOTINT",
        StoreError::ValueTooLarge { .. } | StoreError::TooManyKeys { .. } => "LIMIT",
        StoreError::Exists(_) => "EXISTS",
        StoreError::OutOfMemory { .. } => "OOM",
        _ => "ERR",
    };
    Reply::error(code, e.to_string())
}

fn lock_error_reply(e: &LockError) -> Reply {
    let code = match e {
        LockError::Fenced { .. } | LockError::OutsideLock { .. } => "FENCED",
        LockError::Deadlock(_) => "DEADLOCK",
        LockError::Timeout(_) => "TIMEOUT",
        LockError::NotHeld => "NOTHELD",
        _ => "ERR",
    };
    Reply::error(code, e.to_string())
}

/// The RESP error for a request stream that cannot be framed any more (the
/// connection closes after it).
pub fn parse_error_reply(e: &ParseError) -> Reply {
    let code = match e {
        ParseError::TooLarge { .. } => "LIMIT",
        ParseError::Protocol(_) => "ERR",
    };
    Reply::error(code, e.to_string())
}

/// The RESP error for a proposal the cluster could not take: `TRYAGAIN`
/// when nothing was applied (retry, maybe on another node), `UNKNOWN` when
/// it may have been.
pub fn replication_error_reply(e: &ReplicationError) -> Reply {
    let code = match e {
        ReplicationError::NoLeader => "TRYAGAIN",
        _ => "UNKNOWN",
    };
    Reply::error(code, e.to_string())
}

/// The `-MISCONF` error refusing a write while storage fails (as Redis
/// refuses writes it cannot persist).
pub fn storage_fault_reply(fault: &StorageFault) -> Reply {
    Reply::error("MISCONF", fault.message())
}

/// The RESP error for a change that storage failed to keep.
pub fn durability_error_reply(e: &DurabilityError) -> Reply {
    Reply::error("ERR", e.to_string())
}

fn sanitize(name: &str) -> String {
    name.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// A command refused to a user: Redis's NOPERM.
pub fn acl_error_reply(e: &crate::users::AclError) -> Reply {
    Reply::error("NOPERM", e.to_string())
}
