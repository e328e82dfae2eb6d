//! The lock table: session and key locks with FIFO hand-off, leases, a
//! maximum hold time, fencing tokens and deadlock detection.
//!
//! Like the store, the table does no I/O and takes `now` from its caller.
//! Waiting is the caller's business: [`LockTable::acquire`] either grants at
//! once or queues a waiter and returns its id; every operation that frees a
//! lock returns the [`Handoff`]s it caused, which the server delivers to the
//! waiting connections. Nobody polls.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryIndex;
use crate::{LockError, Millis, SessionId};

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

impl LockTable {
    /// An empty table. Tokens are `epoch << 32 | n`: with an epoch that
    /// grows on every start (the server persists it), tokens never go
    /// backwards across restarts.
    pub fn new(epoch: u64, max_hold_ms: u64) -> Self {
        Self {
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            waiting: HashMap::new(),
            deadlines: ExpiryIndex::default(),
            epoch,
            counter: 0,
            next_waiter: 1,
            max_hold_ms,
            stats: LockStats::default(),
            ended_holds: Vec::new(),
        }
    }

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

    /// Every owner holding or waiting for a lock, in order.
    pub fn owners(&self) -> std::collections::BTreeSet<OwnerId> {
        self.sessions
            .values()
            .flat_map(|l| {
                l.holders
                    .iter()
                    .map(|g| g.owner)
                    .chain(l.queue.iter().map(|w| w.owner))
            })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> LockStats {
        self.stats
    }

    /// How long each lock that ended (released, expired, broken, its
    /// connection closed) since the last call was held, in ms.
    pub fn take_ended_holds(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ended_holds)
    }

    /// Number of held locks and of queued waiters.
    pub fn counts(&self) -> (usize, usize) {
        self.sessions
            .values()
            .fold((0, 0), |(h, w), s| (h + s.holders.len(), w + s.queue.len()))
    }

    fn next_token(&mut self) -> u64 {
        self.counter += 1;
        if self.counter >= 1 << 32 {
            // 4 billion grants in one run: move to the next epoch in memory.
            // The persisted epoch is only a floor for the next start.
            self.epoch += 1;
            self.counter = 1;
        }
        (self.epoch << 32) | self.counter
    }

    /// Whether any lock on `session` is held or waited for.
    pub fn is_locked(&self, session: &SessionId) -> bool {
        self.sessions.get(session).is_some_and(|l| !l.is_empty())
    }

    /// The current grant of `token`.
    pub fn grant(&self, token: u64) -> Option<&Grant> {
        let session = self.tokens.get(&token)?;
        self.sessions
            .get(session)?
            .holders
            .iter()
            .find(|g| g.token == token)
    }

    /// Takes a lock, or queues for it.
    ///
    /// # Errors
    /// [`LockError::Timeout`] with 0 when not free and `wait` is false;
    /// [`LockError::Deadlock`] when queuing would close a cycle.
    pub fn acquire(&mut self, now: Millis, req: LockRequest) -> Result<Acquired, LockError> {
        if let Some(rid) = &req.reqid
            && let Some(found) = self.adopt(&req, rid)
        {
            return Ok(found);
        }
        let locks = self.sessions.entry(req.session.clone()).or_default();
        let free = locks.holders.iter().all(|g| !g.scope.conflicts(&req.scope))
            && locks.queue.iter().all(|w| !w.scope.conflicts(&req.scope));
        if free {
            let grant = self.make_grant(
                now,
                &req.session,
                req.scope,
                req.owner,
                req.lease_ms,
                req.reqid,
            );
            return Ok(Acquired::Granted(grant));
        }
        if !req.wait {
            self.drop_if_empty(&req.session);
            return Err(LockError::Timeout(0));
        }
        if let Some(cycle_with) = self.would_deadlock(&req) {
            self.stats.deadlocks += 1;
            return Err(LockError::Deadlock(format!("client {cycle_with}")));
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        // A connection waits on one lock at a time; a new wait replaces an
        // old one (which can only be a leftover of a cancelled command).
        if let Some((s, old)) = self.waiting.insert(req.owner, (req.session.clone(), id)) {
            self.remove_waiter(&s, old);
        }
        self.sessions
            .entry(req.session.clone())
            .or_default()
            .queue
            .push_back(Waiter {
                id,
                owner: req.owner,
                scope: req.scope,
                since: now,
                lease_ms: req.lease_ms,
                reqid: req.reqid,
            });
        Ok(Acquired::Queued(id))
    }

    /// A retried acquire: the grant or the wait made under the same request
    /// id moves to the retrying owner.
    fn adopt(&mut self, req: &LockRequest, rid: &str) -> Option<Acquired> {
        let locks = self.sessions.get_mut(&req.session)?;
        if let Some(g) = locks
            .holders
            .iter_mut()
            .find(|g| g.reqid.as_deref() == Some(rid) && g.scope == req.scope)
        {
            g.owner = req.owner;
            return Some(Acquired::Granted(g.clone()));
        }
        let w = locks
            .queue
            .iter_mut()
            .find(|w| w.reqid.as_deref() == Some(rid) && w.scope == req.scope)?;
        let (old_owner, id) = (w.owner, w.id);
        w.owner = req.owner;
        self.waiting.remove(&old_owner);
        self.waiting.insert(req.owner, (req.session.clone(), id));
        Some(Acquired::Queued(id))
    }

    fn make_grant(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: Scope,
        owner: OwnerId,
        lease_ms: Option<u64>,
        reqid: Option<String>,
    ) -> Grant {
        let token = self.next_token();
        let grant = Grant {
            session: session.clone(),
            scope,
            token,
            owner,
            granted_at: now,
            lease_until: lease_ms.map(|l| now.saturating_add(l)),
            max_until: now.saturating_add(self.max_hold_ms),
            reqid,
        };
        self.deadlines.insert(grant.deadline(), token);
        self.tokens.insert(token, session.clone());
        self.sessions
            .entry(session.clone())
            .or_default()
            .holders
            .push(grant.clone());
        self.stats.grants += 1;
        grant
    }

    /// Who `req` would wait for: holders and queued waiters it conflicts with.
    fn blockers(
        &self,
        session: &SessionId,
        scope: &Scope,
        before: Option<WaiterId>,
    ) -> Vec<OwnerId> {
        let Some(locks) = self.sessions.get(session) else {
            return Vec::new();
        };
        let mut out: Vec<OwnerId> = locks
            .holders
            .iter()
            .filter(|g| g.scope.conflicts(scope))
            .map(|g| g.owner)
            .collect();
        for w in &locks.queue {
            if Some(w.id) == before {
                break;
            }
            if w.scope.conflicts(scope) {
                out.push(w.owner);
            }
        }
        out
    }

    /// Whether queuing `req` closes a cycle in the wait-for graph; returns an
    /// owner on the cycle.
    fn would_deadlock(&self, req: &LockRequest) -> Option<OwnerId> {
        let mut stack = self.blockers(&req.session, &req.scope, None);
        let mut seen = HashSet::new();
        while let Some(owner) = stack.pop() {
            if owner == req.owner {
                return Some(owner);
            }
            if !seen.insert(owner) {
                continue;
            }
            if let Some((session, wid)) = self.waiting.get(&owner)
                && let Some(w) = self
                    .sessions
                    .get(session)
                    .and_then(|l| l.queue.iter().find(|w| w.id == *wid))
            {
                stack.extend(self.blockers(session, &w.scope, Some(w.id)));
            }
        }
        None
    }

    /// Releases the lock `token`. With `owner`, only if that owner holds it.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] when the token is not current or is held by
    /// someone else.
    pub fn release(
        &mut self,
        now: Millis,
        token: u64,
        owner: Option<OwnerId>,
    ) -> Result<Vec<Handoff>, LockError> {
        let grant = self.grant(token).ok_or(LockError::NotHeld)?;
        if owner.is_some_and(|o| o != grant.owner) {
            return Err(LockError::NotHeld);
        }
        let session = grant.session.clone();
        self.remove_grant(now, &session, token);
        Ok(self.promote(now, &session))
    }

    /// An admin break: releases whatever holds `scope` on `session`.
    /// Returns whether something was held, and the hand-offs.
    pub fn break_lock(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
    ) -> (bool, Vec<Handoff>) {
        let token = self
            .sessions
            .get(session)
            .and_then(|l| l.holders.iter().find(|g| &g.scope == scope))
            .map(|g| g.token);
        match token {
            Some(t) => {
                self.stats.broken += 1;
                (true, self.release(now, t, None).unwrap_or_default())
            }
            None => (false, Vec::new()),
        }
    }

    /// Cancels a wait (timed out, or its connection went away). A waiter
    /// that was already granted is not affected: release its grant instead.
    pub fn cancel_wait(&mut self, now: Millis, waiter: WaiterId) -> Vec<Handoff> {
        let found = self
            .waiting
            .iter()
            .find(|(_, (_, w))| *w == waiter)
            .map(|(o, (s, _))| (*o, s.clone()));
        match found {
            Some((owner, session)) => {
                self.waiting.remove(&owner);
                self.remove_waiter(&session, waiter);
                // Someone queued behind it may now be free to go.
                self.promote(now, &session)
            }
            None => Vec::new(),
        }
    }

    /// Releases every lock of `owner` and cancels its wait: its connection
    /// closed.
    pub fn release_owner(&mut self, now: Millis, owner: OwnerId) -> Vec<Handoff> {
        let mut handoffs = Vec::new();
        if let Some((session, wid)) = self.waiting.remove(&owner) {
            self.remove_waiter(&session, wid);
            handoffs.extend(self.promote(now, &session));
        }
        // In token order (grant order), not the hash map's: the hand-offs
        // this causes must be the same on every replica of the state.
        let mut held: Vec<u64> = self
            .tokens
            .keys()
            .copied()
            .filter(|t| self.grant(*t).is_some_and(|g| g.owner == owner))
            .collect();
        held.sort_unstable();
        for token in held {
            handoffs.extend(self.release(now, token, None).unwrap_or_default());
        }
        handoffs
    }

    /// Extends the lease of `token`, a lock on `session` covering `scope`, to
    /// `lease_ms` from now (never past the maximum hold). Checked once,
    /// here: the token must be the current grant of exactly that lock, its
    /// deadline not passed, and held by `owner`.
    ///
    /// # Errors
    /// [`LockError::Fenced`] when the token is not the current grant of that
    /// lock (counted as a fenced write); [`LockError::NotHeld`] when another
    /// owner holds it.
    pub fn renew(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
        token: u64,
        owner: OwnerId,
        lease_ms: u64,
    ) -> Result<(), LockError> {
        let current = self
            .grant(token)
            .filter(|g| &g.session == session && &g.scope == scope && now < g.deadline())
            .map(|g| g.owner);
        match current {
            None => {
                self.stats.fenced += 1;
                Err(LockError::Fenced {
                    session: session.to_string(),
                    token,
                })
            }
            Some(holder) if holder != owner => Err(LockError::NotHeld),
            Some(_) => {
                let Some(g) = self
                    .sessions
                    .get_mut(session)
                    .and_then(|l| l.holders.iter_mut().find(|g| g.token == token))
                else {
                    return Err(LockError::NotHeld);
                };
                let old = g.deadline();
                g.lease_until = Some(now.saturating_add(lease_ms));
                let new = g.deadline();
                self.deadlines.reschedule(old, new, &token);
                Ok(())
            }
        }
    }

    /// Releases `token` if it is the current grant of a lock on `session`
    /// covering `scope` held by `owner`; returns whether it was, and the
    /// hand-offs the release caused.
    pub fn release_held(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
        token: u64,
        owner: OwnerId,
    ) -> (bool, Vec<Handoff>) {
        let held = self
            .grant(token)
            .is_some_and(|g| &g.session == session && &g.scope == scope && g.owner == owner);
        if !held {
            return (false, Vec::new());
        }
        (true, self.release(now, token, None).unwrap_or_default())
    }

    /// Takes away every lock whose lease or maximum hold ran out by `now`.
    pub fn expire(&mut self, now: Millis) -> Vec<Handoff> {
        let mut handoffs = Vec::new();
        for (_, token) in self.deadlines.pop_due(now, usize::MAX) {
            if let Some(session) = self.tokens.get(&token).cloned() {
                self.remove_grant(now, &session, token);
                self.stats.expired += 1;
                handoffs.extend(self.promote(now, &session));
            }
        }
        handoffs
    }

    /// The earliest lease or maximum-hold deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.next_deadline()
    }

    /// Checks that `token` is a current grant on `session` covering `keys`;
    /// a refusal is counted in [`LockStats::fenced`].
    ///
    /// # Errors
    /// [`LockError::Fenced`] or [`LockError::OutsideLock`].
    pub fn check_fence(
        &mut self,
        now: Millis,
        session: &SessionId,
        token: u64,
        keys: &[&Bytes],
    ) -> Result<(), LockError> {
        let checked = self.fence_covers(now, session, token, keys);
        if checked.is_err() {
            self.stats.fenced += 1;
        }
        checked
    }

    fn fence_covers(
        &self,
        now: Millis,
        session: &SessionId,
        token: u64,
        keys: &[&Bytes],
    ) -> Result<(), LockError> {
        // A lease that ran out fences at once, even before `expire` runs.
        let grant = self
            .grant(token)
            .filter(|g| &g.session == session && now < g.deadline())
            .ok_or_else(|| LockError::Fenced {
                session: session.to_string(),
                token,
            })?;
        if let Scope::Key(locked) = &grant.scope
            && let Some(other) = keys.iter().find(|k| !grant.scope.covers(k))
        {
            return Err(LockError::OutsideLock {
                session: session.to_string(),
                token,
                locked: locked.clone(),
                written: (*other).clone(),
            });
        }
        Ok(())
    }

    /// Moves the locks of `old` to `new` (the session was regenerated), so
    /// holders keep their grants and fenced writes keep working. `new` must
    /// have no locks ([`LockTable::is_locked`]; the engine refuses such a
    /// regenerate), or they would be replaced.
    pub fn rename_session(&mut self, old: &SessionId, new: &SessionId) {
        let Some(mut locks) = self.sessions.remove(old) else {
            return;
        };
        for g in &mut locks.holders {
            g.session = new.clone();
            self.tokens.insert(g.token, new.clone());
        }
        for w in &locks.queue {
            self.waiting.insert(w.owner, (new.clone(), w.id));
        }
        self.sessions.insert(new.clone(), locks);
    }

    /// Every lock of `session`, or of all sessions: holders and queues.
    pub fn inspect(
        &self,
        session: Option<&SessionId>,
    ) -> Vec<(SessionId, Vec<Grant>, Vec<Waiter>)> {
        let mut out: Vec<_> = self
            .sessions
            .iter()
            .filter(|(id, _)| session.is_none_or(|s| s == *id))
            .map(|(id, l)| {
                (
                    id.clone(),
                    l.holders.clone(),
                    l.queue.iter().cloned().collect(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    // ---- internals -----------------------------------------------------

    fn remove_grant(&mut self, now: Millis, session: &SessionId, token: u64) {
        if let Some(locks) = self.sessions.get_mut(session)
            && let Some(pos) = locks.holders.iter().position(|g| g.token == token)
        {
            let g = locks.holders.swap_remove(pos);
            self.ended_holds.push(now.saturating_sub(g.granted_at));
            // A no-op when `expire` popped the entry already.
            self.deadlines.remove(g.deadline(), &token);
        }
        self.tokens.remove(&token);
    }

    fn remove_waiter(&mut self, session: &SessionId, waiter: WaiterId) {
        if let Some(locks) = self.sessions.get_mut(session) {
            locks.queue.retain(|w| w.id != waiter);
        }
        self.drop_if_empty(session);
    }

    fn drop_if_empty(&mut self, session: &SessionId) {
        if self
            .sessions
            .get(session)
            .is_some_and(SessionLocks::is_empty)
        {
            self.sessions.remove(session);
        }
    }

    /// Grants, in queue order, every waiter that no holder and no waiter
    /// ahead of it conflicts with.
    fn promote(&mut self, now: Millis, session: &SessionId) -> Vec<Handoff> {
        let mut handoffs = Vec::new();
        let Some(locks) = self.sessions.get_mut(session) else {
            return handoffs;
        };
        let mut ready = Vec::new();
        let mut kept: VecDeque<Waiter> = VecDeque::new();
        for w in std::mem::take(&mut locks.queue) {
            let free = locks.holders.iter().all(|g| !g.scope.conflicts(&w.scope))
                && ready.iter().all(|r: &Waiter| !r.scope.conflicts(&w.scope))
                && kept.iter().all(|k| !k.scope.conflicts(&w.scope));
            if free {
                ready.push(w);
            } else {
                kept.push_back(w);
            }
        }
        locks.queue = kept;
        for w in ready {
            self.waiting.remove(&w.owner);
            let grant = self.make_grant(now, session, w.scope, w.owner, w.lease_ms, w.reqid);
            handoffs.push(Handoff {
                waiter: w.id,
                grant,
            });
        }
        self.drop_if_empty(session);
        handoffs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s.as_bytes()).unwrap()
    }

    fn req(session: &str, scope: Scope, owner: OwnerId) -> LockRequest {
        LockRequest {
            session: sid(session),
            scope,
            owner,
            lease_ms: None,
            reqid: None,
            wait: true,
        }
    }

    fn key(k: &str) -> Scope {
        Scope::Key(Bytes::from(k.to_owned()))
    }

    fn granted(a: Acquired) -> Grant {
        match a {
            Acquired::Granted(g) => g,
            Acquired::Queued(w) => panic!("queued as {w}, expected a grant"),
        }
    }

    fn queued(a: Acquired) -> WaiterId {
        match a {
            Acquired::Queued(w) => w,
            Acquired::Granted(g) => panic!("granted {g:?}, expected to queue"),
        }
    }

    #[test]
    fn waiters_are_served_in_fifo_order_by_the_release() {
        let mut t = LockTable::new(1, 60_000);
        let g1 = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
        let w2 = queued(t.acquire(1, req("s", Scope::Session, 2)).unwrap());
        let w3 = queued(t.acquire(2, req("s", Scope::Session, 3)).unwrap());
        let h = t.release(5, g1.token, Some(1)).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].waiter, w2);
        assert_eq!(h[0].grant.owner, 2);
        let h = t.release(6, h[0].grant.token, Some(2)).unwrap();
        assert_eq!(h[0].waiter, w3);
    }

    #[test]
    fn locks_are_not_reentrant_waiting_for_yourself_is_a_deadlock() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
        // The same lock again, and a key lock under one's own session lock.
        for scope in [Scope::Session, key("a")] {
            let err = t.acquire(1, req("s", scope.clone(), 1)).unwrap_err();
            assert!(matches!(err, LockError::Deadlock(_)), "{err:?}");
            let try_once = LockRequest {
                wait: false,
                ..req("s", scope, 1)
            };
            let err = t.acquire(1, try_once).unwrap_err();
            assert!(matches!(err, LockError::Timeout(0)), "{err:?}");
        }
        // Nothing was queued by the refusals.
        assert_eq!(t.counts(), (1, 0));
    }

    #[test]
    fn every_ended_lock_reports_how_long_it_was_held() {
        let mut t = LockTable::new(1, 1_000);
        let g1 = granted(t.acquire(100, req("s", Scope::Session, 1)).unwrap());
        queued(t.acquire(120, req("s", Scope::Session, 2)).unwrap());
        // Released at 350: held 250 ms; the waiter gets it at 350.
        let h = t.release(350, g1.token, Some(1)).unwrap();
        assert_eq!(t.take_ended_holds(), vec![250]);
        assert!(t.take_ended_holds().is_empty(), "drained");
        // The second holder runs into the 1 s maximum hold.
        assert_eq!(h[0].grant.granted_at, 350);
        t.expire(1_350);
        // A lock on another session ends when its connection closes.
        granted(t.acquire(2_000, req("t", key("k"), 3)).unwrap());
        t.release_owner(2_040, 3);
        assert_eq!(t.take_ended_holds(), vec![1_000, 40]);
    }

    #[test]
    fn key_locks_on_different_keys_do_not_wait_but_a_session_lock_excludes_them() {
        let mut t = LockTable::new(1, 60_000);
        let a = granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
        let b = granted(t.acquire(0, req("s", key("b"), 2)).unwrap());
        let ws = queued(t.acquire(0, req("s", Scope::Session, 3)).unwrap());
        // A new key lock queues behind the waiting session lock (no starvation).
        let wc = queued(t.acquire(0, req("s", key("c"), 4)).unwrap());
        assert!(t.release(1, a.token, Some(1)).unwrap().is_empty());
        let h = t.release(2, b.token, Some(2)).unwrap();
        assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![ws]);
        let h = t.release(3, h[0].grant.token, Some(3)).unwrap();
        assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![wc]);
    }

    #[test]
    fn try_once_fails_at_once_when_held() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
        let mut r = req("s", Scope::Session, 2);
        r.wait = false;
        assert_eq!(t.acquire(0, r), Err(LockError::Timeout(0)));
    }

    #[test]
    fn tokens_strictly_increase_and_stale_tokens_are_fenced() {
        let mut t = LockTable::new(7, 60_000);
        let g1 = granted(t.acquire(0, req("s", key("k"), 1)).unwrap());
        assert_eq!(g1.token >> 32, 7);
        let k = Bytes::from("k");
        assert!(t.check_fence(0, &sid("s"), g1.token, &[&k]).is_ok());
        t.release(1, g1.token, Some(1)).unwrap();
        let g2 = granted(t.acquire(2, req("s", key("k"), 2)).unwrap());
        assert!(g2.token > g1.token);
        assert!(matches!(
            t.check_fence(0, &sid("s"), g1.token, &[&k]),
            Err(LockError::Fenced { .. })
        ));
        let other = Bytes::from("other");
        assert!(matches!(
            t.check_fence(0, &sid("s"), g2.token, &[&other]),
            Err(LockError::OutsideLock { .. })
        ));
        assert_eq!(t.stats().fenced, 2, "both refusals are counted");
        // A later epoch (the next start) issues higher tokens than any before.
        let mut restarted = LockTable::new(8, 60_000);
        let g3 = granted(restarted.acquire(0, req("s", key("k"), 1)).unwrap());
        assert!(g3.token > g2.token);
    }

    #[test]
    fn a_lease_runs_out_and_passes_the_lock_on() {
        let mut t = LockTable::new(1, 60_000);
        let mut r = req("s", Scope::Session, 1);
        r.lease_ms = Some(100);
        let g1 = granted(t.acquire(0, r).unwrap());
        let w2 = queued(t.acquire(10, req("s", Scope::Session, 2)).unwrap());
        assert!(t.expire(99).is_empty());
        assert!(t.check_fence(99, &sid("s"), g1.token, &[]).is_ok());
        assert!(t.check_fence(100, &sid("s"), g1.token, &[]).is_err());
        let h = t.expire(100);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].waiter, w2);
        assert!(t.check_fence(100, &sid("s"), g1.token, &[]).is_err());
        assert_eq!(t.stats().expired, 1);
    }

    #[test]
    fn renew_extends_the_lease_but_not_past_the_maximum_hold() {
        let mut t = LockTable::new(1, 1_000);
        let mut r = req("s", Scope::Session, 1);
        r.lease_ms = Some(100);
        let g = granted(t.acquire(0, r).unwrap());
        t.renew(90, &sid("s"), &Scope::Session, g.token, 1, 100)
            .unwrap();
        assert!(t.expire(150).is_empty());
        t.renew(180, &sid("s"), &Scope::Session, g.token, 1, 5_000)
            .unwrap();
        assert_eq!(t.next_deadline(), Some(1_000));
        assert!(t.expire(999).is_empty());
        t.expire(1_000);
        assert!(matches!(
            t.renew(1_001, &sid("s"), &Scope::Session, g.token, 1, 100),
            Err(LockError::Fenced { .. })
        ));
    }

    #[test]
    fn maximum_hold_applies_without_a_lease() {
        let mut t = LockTable::new(1, 500);
        let g = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
        assert!(t.expire(499).is_empty());
        t.expire(500);
        assert!(t.grant(g.token).is_none());
    }

    #[test]
    fn a_two_party_cycle_is_a_deadlock() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
        granted(t.acquire(0, req("s", key("b"), 2)).unwrap());
        queued(t.acquire(0, req("s", key("b"), 1)).unwrap());
        assert!(matches!(
            t.acquire(0, req("s", key("a"), 2)),
            Err(LockError::Deadlock(_))
        ));
        assert_eq!(t.stats().deadlocks, 1);
    }

    #[test]
    fn a_three_party_cycle_across_sessions_is_a_deadlock() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("x", Scope::Session, 1)).unwrap());
        granted(t.acquire(0, req("y", Scope::Session, 2)).unwrap());
        granted(t.acquire(0, req("z", Scope::Session, 3)).unwrap());
        queued(t.acquire(0, req("y", Scope::Session, 1)).unwrap());
        queued(t.acquire(0, req("z", Scope::Session, 2)).unwrap());
        assert!(matches!(
            t.acquire(0, req("x", Scope::Session, 3)),
            Err(LockError::Deadlock(_))
        ));
        // A waiter that closes no cycle still queues.
        queued(t.acquire(0, req("x", Scope::Session, 4)).unwrap());
    }

    #[test]
    fn a_retried_acquire_with_the_same_reqid_gets_the_same_grant() {
        let mut t = LockTable::new(1, 60_000);
        let mut r = req("s", Scope::Session, 1);
        r.reqid = Some("r-1".into());
        let g1 = granted(t.acquire(0, r.clone()).unwrap());
        // The retry comes from a new connection (owner 9).
        r.owner = 9;
        let g2 = granted(t.acquire(5, r).unwrap());
        assert_eq!(g1.token, g2.token);
        assert_eq!(t.grant(g1.token).unwrap().owner, 9);
        assert_eq!(t.counts(), (1, 0));
    }

    #[test]
    fn closing_a_connection_releases_its_locks_and_cancels_its_wait() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("a", Scope::Session, 1)).unwrap());
        granted(t.acquire(0, req("b", Scope::Session, 2)).unwrap());
        queued(t.acquire(0, req("b", Scope::Session, 1)).unwrap());
        let w3 = queued(t.acquire(0, req("a", Scope::Session, 3)).unwrap());
        let h = t.release_owner(1, 1);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].waiter, w3);
        assert_eq!(t.counts(), (2, 0));
    }

    #[test]
    fn cancelling_a_wait_lets_compatible_waiters_behind_it_go() {
        let mut t = LockTable::new(1, 60_000);
        granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
        let ws = queued(t.acquire(0, req("s", Scope::Session, 2)).unwrap());
        let wb = queued(t.acquire(0, req("s", key("b"), 3)).unwrap());
        let h = t.cancel_wait(1, ws);
        assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![wb]);
    }

    #[test]
    fn break_fences_the_holder() {
        let mut t = LockTable::new(1, 60_000);
        let g = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
        let (was, _) = t.break_lock(1, &sid("s"), &Scope::Session);
        assert!(was);
        assert!(t.check_fence(0, &sid("s"), g.token, &[]).is_err());
        assert_eq!(t.release(2, g.token, Some(1)), Err(LockError::NotHeld));
    }
}
