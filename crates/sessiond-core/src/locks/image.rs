//! The lock table as plain, sorted data (a snapshot of a replica).

use serde::{Deserialize, Serialize};

use super::{Grant, LockStats, LockTable, SessionLocks, Waiter, WaiterId};
use crate::SessionId;

/// The locks of one session in a [`LockTableImage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLocksImage {
    /// The session (canonical id).
    pub session: SessionId,
    /// Its holders, in the table's order.
    pub holders: Vec<Grant>,
    /// Its queue, first in line first.
    pub queue: Vec<Waiter>,
}

/// A [`LockTable`] as plain data: see [`LockTable::image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTableImage {
    /// Every session with locks or waiters, by id.
    pub sessions: Vec<SessionLocksImage>,
    /// The epoch of the tokens.
    pub epoch: u64,
    /// The last token counter handed out in that epoch.
    pub counter: u64,
    /// The next waiter id.
    pub next_waiter: WaiterId,
    /// The maximum hold.
    pub max_hold_ms: u64,
    /// Counters.
    pub stats: LockStats,
}

impl LockTable {
    /// The whole table as plain data, sorted by session, each session's
    /// holders and queue in their order: equal tables give equal images, and
    /// [`LockTable::from_image`] rebuilds an equal table.
    pub fn image(&self) -> LockTableImage {
        let mut sessions: Vec<SessionLocksImage> = self
            .sessions
            .iter()
            .map(|(id, l)| SessionLocksImage {
                session: id.clone(),
                holders: l.holders.clone(),
                queue: l.queue.iter().cloned().collect(),
            })
            .collect();
        sessions.sort_unstable_by(|a, b| a.session.cmp(&b.session));
        LockTableImage {
            sessions,
            epoch: self.epoch,
            counter: self.counter,
            next_waiter: self.next_waiter,
            max_hold_ms: self.max_hold_ms,
            stats: self.stats,
        }
    }

    /// The table an [`image`](LockTable::image) was taken of.
    pub fn from_image(image: LockTableImage) -> Self {
        let mut table = LockTable::new(image.epoch, image.max_hold_ms);
        table.counter = image.counter;
        table.next_waiter = image.next_waiter;
        table.stats = image.stats;
        for s in image.sessions {
            for g in &s.holders {
                table.deadlines.insert(g.deadline(), g.token);
                table.tokens.insert(g.token, s.session.clone());
            }
            for w in &s.queue {
                table.waiting.insert(w.owner, (s.session.clone(), w.id));
            }
            table.sessions.insert(
                s.session,
                SessionLocks {
                    holders: s.holders,
                    queue: s.queue.into(),
                },
            );
        }
        table
    }
}
