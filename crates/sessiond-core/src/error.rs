//! The errors the core returns, one type per concern: [`StoreError`] for
//! sessions, [`LockError`] for locks, and [`EngineError`], what the
//! [`Engine`](crate::engine::Engine) returns, holding either. The server maps
//! each to one RESP error code in one place (`sessiond-server`'s
//! `cmd::error_reply`), so clients can match on the code.

use bytes::Bytes;

/// Why a session operation was refused. A refused operation changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum StoreError {
    /// The id is empty, too long, or has a byte outside `[A-Za-z0-9,._:-]`.
    #[error("session id must match [A-Za-z0-9,._:-]{{1,128}}")]
    BadId,
    /// The session does not exist: never created, destroyed, or expired.
    #[error("session {0:?} does not exist")]
    NoSession(String),
    /// Conditional ops whose key changed since the version the client read.
    #[error("version mismatch on keys: {}", quote_keys(.0))]
    Conflict(Vec<Bytes>),
    /// The value to increment is not a decimal 64-bit integer, or the result
    /// overflows.
    #[error("value of {} is not an integer", quote(.0))]
    NotInteger(Bytes),
    /// `SESSION.INCR` would overflow a signed 64-bit integer.
    #[error("increment of {} would overflow", quote(.0))]
    Overflow(Bytes),
    /// A value larger than the configured limit.
    #[error("value of {} is {size} bytes, more than the limit of {limit}", quote(.key))]
    ValueTooLarge {
        /// The key being written.
        key: Bytes,
        /// The value's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A commit that would leave the session with too many keys.
    #[error("session would have {count} keys, more than the limit of {limit}")]
    TooManyKeys {
        /// Keys after the commit.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The target of a regenerate already exists.
    #[error("session {0:?} already exists")]
    Exists(String),
}

/// Why a lock operation, or a write fenced by a lock, was refused. A refused
/// operation changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LockError {
    /// A fencing token that is not the current grant of a lock on the session.
    #[error("token {token} is not the current grant of a lock on session {session:?}")]
    Fenced {
        /// The session.
        session: String,
        /// The stale token.
        token: u64,
    },
    /// A fenced write under a key lock to a key the lock does not cover.
    #[error("token {token} locks key {} of session {session:?}, not key {}", quote(.locked), quote(.written))]
    OutsideLock {
        /// The session.
        session: String,
        /// The token presented.
        token: u64,
        /// The key its lock covers.
        locked: Bytes,
        /// The key the commit tried to write.
        written: Bytes,
    },
    /// A wait that would close a cycle in the wait-for graph.
    #[error("waiting for this lock would deadlock with {0}")]
    Deadlock(String),
    /// The lock was not granted within the wait.
    #[error("lock not granted within {0} ms")]
    Timeout(u64),
    /// A release or renew by a connection that does not hold the lock.
    #[error("this connection does not hold that lock")]
    NotHeld,
}

/// Why a command given to the [`Engine`](crate::engine::Engine) was refused:
/// a session rule or a lock rule. Either way nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum EngineError {
    /// A session rule.
    #[error(transparent)]
    Session(#[from] StoreError),
    /// A lock rule.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A request id already answered a different command.
    #[error("request id {reqid:?} was already used for {first}")]
    RequestIdReused {
        /// The id.
        reqid: String,
        /// The command it was first used with.
        first: String,
    },
}

/// A key as it appears in an error line: quoted, with control bytes and
/// non-UTF-8 escaped, so a hostile key cannot break the RESP line.
pub fn quote(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

fn quote_keys(keys: &[Bytes]) -> String {
    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
}
