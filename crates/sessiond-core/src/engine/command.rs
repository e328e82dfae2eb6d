//! What the engine is asked ([`Command`]) and what it answers
//! ([`Response`]), as plain data: no sockets, no wire format. The server
//! parses requests into commands and renders responses as RESP; a
//! replicated log can carry commands as they are.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::locks::{Grant, Scope, Waiter};
use crate::store::{CasOutcome, CommitOutcome, CommitRequest, ReadOptions, ReadResult};
use crate::{Millis, SessionId};

/// A fencing token presented with a write, and whether to release its lock
/// after the write succeeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The token presented.
    pub token: Option<u64>,
    /// Release the lock after a successful write.
    pub unlock: bool,
}

/// The arguments of `LOCK.ACQUIRE` and `LOCK.ONCE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireArgs {
    /// The session (any id that resolves to it).
    pub id: SessionId,
    /// What to lock.
    pub scope: Scope,
    /// Longest wait in ms; 0: try once.
    pub wait_ms: u64,
    /// Lease in ms.
    pub lease_ms: Option<u64>,
    /// Idempotency key.
    pub reqid: Option<String>,
    /// Create the session when missing.
    pub create: bool,
}

/// One command, with every id and random value already chosen by the
/// caller (a new session's id, a regenerate's new id), so applying it is
/// deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `SESSION.NEW`: create an empty session under `id`.
    New {
        /// The id, chosen by the caller.
        id: SessionId,
        /// Idle TTL.
        ttl_ms: Option<u64>,
        /// Lifetime.
        lifetime_ms: Option<u64>,
    },
    /// `SESSION.READ`.
    Read {
        /// Session.
        id: SessionId,
        /// What to read, whether to create.
        opts: ReadOptions,
    },
    /// `SESSION.COMMIT`.
    Commit {
        /// Session.
        id: SessionId,
        /// The delta.
        request: CommitRequest,
        /// Fencing.
        fence: Fence,
    },
    /// `SESSION.DESTROY`.
    Destroy {
        /// Session.
        id: SessionId,
    },
    /// `SESSION.EXISTS`.
    Exists {
        /// Session.
        id: SessionId,
    },
    /// `SESSION.TOUCH`.
    Touch {
        /// Session.
        id: SessionId,
        /// New idle TTL.
        ttl_ms: Option<u64>,
    },
    /// `SESSION.TTL`.
    Ttl {
        /// Session.
        id: SessionId,
    },
    /// `SESSION.INCR`.
    Incr {
        /// Session.
        id: SessionId,
        /// Key.
        key: Bytes,
        /// Amount.
        delta: i64,
        /// Create the session if missing.
        create: bool,
        /// Fencing.
        fence: Fence,
    },
    /// `SESSION.CAS`.
    Cas {
        /// Session.
        id: SessionId,
        /// Key.
        key: Bytes,
        /// Expected value.
        expected: Bytes,
        /// New value.
        new: Bytes,
        /// Fencing.
        fence: Fence,
    },
    /// `SESSION.REGENERATE`: move the session to `new_id`.
    Regenerate {
        /// Session.
        id: SessionId,
        /// Grace period of the old id (the store's default when `None`).
        grace_ms: Option<u64>,
        /// The new id: the client's `TO`, or one the caller chose.
        new_id: SessionId,
    },
    /// `LOCK.ACQUIRE`.
    Acquire(AcquireArgs),
    /// `LOCK.ONCE`: a key lock unless the key's version moved past
    /// `if_version`.
    Once {
        /// The lock asked for (a key scope).
        args: AcquireArgs,
        /// The version the caller saw.
        if_version: u64,
    },
    /// `LOCK.RELEASE`.
    Release {
        /// Session.
        id: SessionId,
        /// Scope.
        scope: Scope,
        /// Token.
        token: u64,
    },
    /// `LOCK.RENEW`.
    Renew {
        /// Session.
        id: SessionId,
        /// Scope.
        scope: Scope,
        /// Token.
        token: u64,
        /// New lease.
        lease_ms: u64,
    },
    /// `LOCK.INFO`.
    LockInfo {
        /// One session, or all.
        id: Option<SessionId>,
    },
    /// `LOCK.BREAK` (admin).
    Break {
        /// Session.
        id: SessionId,
        /// Scope.
        scope: Scope,
    },
    /// A write with a request id (`REQID`): applied once; a repeat of the
    /// id within the retention gets the first answer and changes nothing
    /// (see [`dedupe`](super::dedupe)).
    Idempotent {
        /// The request id.
        reqid: String,
        /// The write.
        cmd: Box<Command>,
    },
}

impl Command {
    /// Whether the command only reads: `SESSION.READ` without `CREATE` or
    /// `TTL`, `SESSION.EXISTS`, `SESSION.TTL` ([`Engine::peek`] answers
    /// them without changing anything but the read's expiry slide).
    ///
    /// [`Engine::peek`]: super::Engine::peek
    pub fn is_pure_read(&self) -> bool {
        match self {
            Command::Read { opts, .. } => !opts.create && opts.ttl_ms.is_none(),
            Command::Exists { .. } | Command::Ttl { .. } => true,
            _ => false,
        }
    }

    /// The sessions the command names (a regenerate names two, `LOCK.INFO`
    /// without an id none).
    pub fn session_ids(&self) -> [Option<&SessionId>; 2] {
        match self {
            Command::New { id, .. }
            | Command::Read { id, .. }
            | Command::Commit { id, .. }
            | Command::Destroy { id }
            | Command::Exists { id }
            | Command::Touch { id, .. }
            | Command::Ttl { id }
            | Command::Incr { id, .. }
            | Command::Cas { id, .. }
            | Command::Release { id, .. }
            | Command::Renew { id, .. }
            | Command::Break { id, .. } => [Some(id), None],
            Command::Regenerate { id, new_id, .. } => [Some(id), Some(new_id)],
            Command::Acquire(args) | Command::Once { args, .. } => [Some(&args.id), None],
            Command::LockInfo { id } => [id.as_ref(), None],
            Command::Idempotent { cmd, .. } => cmd.session_ids(),
        }
    }

    /// The protocol name of the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::New { .. } => "SESSION.NEW",
            Command::Read { .. } => "SESSION.READ",
            Command::Commit { .. } => "SESSION.COMMIT",
            Command::Destroy { .. } => "SESSION.DESTROY",
            Command::Exists { .. } => "SESSION.EXISTS",
            Command::Touch { .. } => "SESSION.TOUCH",
            Command::Ttl { .. } => "SESSION.TTL",
            Command::Incr { .. } => "SESSION.INCR",
            Command::Cas { .. } => "SESSION.CAS",
            Command::Regenerate { .. } => "SESSION.REGENERATE",
            Command::Acquire(_) => "LOCK.ACQUIRE",
            Command::Once { .. } => "LOCK.ONCE",
            Command::Release { .. } => "LOCK.RELEASE",
            Command::Renew { .. } => "LOCK.RENEW",
            Command::LockInfo { .. } => "LOCK.INFO",
            Command::Break { .. } => "LOCK.BREAK",
            Command::Idempotent { cmd, .. } => cmd.name(),
        }
    }
}

/// One session's locks, as `LOCK.INFO` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLockInfo {
    /// The session (canonical id).
    pub session: SessionId,
    /// Its holders.
    pub holders: Vec<Grant>,
    /// Its waiters, first in line first.
    pub waiters: Vec<Waiter>,
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `SESSION.NEW`: the new session's id.
    Created(SessionId),
    /// `SESSION.READ`: the session, or `None`.
    Read(Option<ReadResult>),
    /// `SESSION.COMMIT`.
    Committed(CommitOutcome),
    /// Yes or no: `DESTROY`, `EXISTS`, `TOUCH`, `LOCK.RELEASE`, `LOCK.BREAK`.
    Flag(bool),
    /// `SESSION.TTL`: ms left, `None` when there is no such session.
    Ttl(Option<u64>),
    /// `SESSION.INCR`.
    Incremented {
        /// The new value.
        value: i64,
        /// The key's new version.
        version: u64,
    },
    /// `SESSION.CAS`.
    Cas(CasOutcome),
    /// `SESSION.REGENERATE`: the new id.
    Regenerated(SessionId),
    /// `LOCK.ACQUIRE`: the token and the read the lock covers (the session,
    /// or the locked key).
    Granted {
        /// Fencing token.
        token: u64,
        /// The data under the lock.
        read: Option<ReadResult>,
    },
    /// `LOCK.ONCE` granted: compute, then commit under the token.
    OnceGranted {
        /// Fencing token.
        token: u64,
        /// The key's version (0 when absent).
        version: u64,
        /// Its value.
        value: Option<Bytes>,
    },
    /// `LOCK.ONCE` with nothing to do: the key moved past the version the
    /// caller saw (someone else computed it); no lock is held.
    OnceDone {
        /// The key's version.
        version: u64,
        /// Its value.
        value: Bytes,
    },
    /// `LOCK.RENEW`.
    Renewed,
    /// `LOCK.INFO`, with the engine's time so ages can be computed.
    LockInfo {
        /// The time of the answer.
        now: Millis,
        /// Sessions with locks, by id.
        sessions: Vec<SessionLockInfo>,
    },
}
