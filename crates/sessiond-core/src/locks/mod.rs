//! The lock table: session and key locks with FIFO hand-off, leases, a
//! maximum hold time, fencing tokens and deadlock detection.
//!
//! Like the store, the table does no I/O and takes `now` from its caller.
//! Waiting is the caller's business: [`LockTable::acquire`] either grants at
//! once or queues a waiter and returns its id; every operation that frees a
//! lock returns the [`Handoff`]s it caused, which the server delivers to the
//! waiting connections. Nobody polls.
//!
//! ## Layout
//! - this module: the data ([`Scope`], [`Grant`], [`LockRequest`], …) and
//!   the [`LockTable`] itself;
//! - `table`: its operations (acquire, release, renew, expiry, fencing) and
//!   the hand-off to waiters;
//! - `deadlock`: refusing a wait that would close a cycle;
//! - [`image`]: the table as plain data.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryIndex;
use crate::{Millis, SessionId};

mod deadlock;
pub mod image;
mod table;
#[cfg(test)]
mod tests;

pub use image::{LockTableImage, SessionLocksImage};

/// Who holds or waits for a lock: the server uses the connection id.
pub type OwnerId = u64;
/// A queued wait.
pub type WaiterId = u64;

/// What a lock covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// The whole session.
    Session,
    /// One key of it.
    Key(Bytes),
}

impl Scope {
    /// Whether two locks of one session exclude each other: a session lock
    /// excludes everything, key locks only the same key.
    pub fn conflicts(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Key(a), Scope::Key(b)) => a == b,
            _ => true,
        }
    }

    /// Whether a write to `key` is covered.
    pub fn covers(&self, key: &[u8]) -> bool {
        match self {
            Scope::Session => true,
            Scope::Key(k) => k.as_ref() == key,
        }
    }
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The session.
    pub session: SessionId,
    /// What it covers.
    pub scope: Scope,
    /// The fencing token.
    pub token: u64,
    /// The holder.
    pub owner: OwnerId,
    /// When it was granted.
    pub granted_at: Millis,
    /// When its lease runs out, if it has one.
    pub lease_until: Option<Millis>,
    /// When the maximum hold time runs out.
    pub max_until: Millis,
    /// The request id it was acquired with.
    pub reqid: Option<String>,
}

impl Grant {
    /// The instant the lock is taken away.
    pub fn deadline(&self) -> Millis {
        self.lease_until
            .map_or(self.max_until, |l| l.min(self.max_until))
    }
}

/// A queued request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Its id.
    pub id: WaiterId,
    /// Who waits.
    pub owner: OwnerId,
    /// What it wants.
    pub scope: Scope,
    /// Since when.
    pub since: Millis,
    /// The lease to give it.
    pub lease_ms: Option<u64>,
    /// Its request id.
    pub reqid: Option<String>,
}

/// A lock handed to a waiter by a release, a cancel or an expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The waiter served.
    pub waiter: WaiterId,
    /// What it got.
    pub grant: Grant,
}

/// The result of [`LockTable::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Granted now.
    Granted(Grant),
    /// Queued; a [`Handoff`] for this waiter will come.
    Queued(WaiterId),
}

/// A request for a lock.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// The session (canonical id).
    pub session: SessionId,
    /// What to lock.
    pub scope: Scope,
    /// Who asks.
    pub owner: OwnerId,
    /// Lease, if any.
    pub lease_ms: Option<u64>,
    /// Idempotency key.
    pub reqid: Option<String>,
    /// Queue when not free (false: try once).
    pub wait: bool,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStats {
    /// Grants made.
    pub grants: u64,
    /// Waits refused for deadlock.
    pub deadlocks: u64,
    /// Locks taken away by lease or maximum hold.
    pub expired: u64,
    /// Fenced writes refused.
    pub fenced: u64,
    /// Locks broken by an admin.
    pub broken: u64,
}

#[derive(Debug, Default)]
struct SessionLocks {
    holders: Vec<Grant>,
    queue: VecDeque<Waiter>,
}

impl SessionLocks {
    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }
}

/// Every lock, by session.
#[derive(Debug)]
pub struct LockTable {
    sessions: HashMap<SessionId, SessionLocks>,
    // token → session, for fencing checks and releases by token.
    tokens: HashMap<u64, SessionId>,
    // owner → the one wait it has (a connection runs one command at a time).
    waiting: HashMap<OwnerId, (SessionId, WaiterId)>,
    // Invariant: one entry per grant, at `grant.deadline()`.
    deadlines: ExpiryIndex<u64>,
    epoch: u64,
    counter: u64,
    next_waiter: WaiterId,
    max_hold_ms: u64,
    stats: LockStats,
    // How long each lock that ended since the last `take_ended_holds` was
    // held, for the hold-time histogram. Drained after every operation.
    ended_holds: Vec<u64>,
}
