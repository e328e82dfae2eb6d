//! The table's operations: acquire, release, renew, expiry, fencing, and
//! the hand-off to waiters each of them causes.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::{
    Acquired, Grant, Handoff, LockRequest, LockStats, LockTable, OwnerId, Scope, SessionLocks,
    Waiter, WaiterId,
};
use crate::expiry::ExpiryIndex;
use crate::{LockError, Millis, SessionId};

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

    /// The longest a lock may be held, in ms.
    pub fn max_hold_ms(&self) -> u64 {
        self.max_hold_ms
    }

    /// Changes the longest hold for grants made from now on; grants already
    /// made keep the deadline they were given.
    pub fn set_max_hold_ms(&mut self, max_hold_ms: u64) {
        self.max_hold_ms = max_hold_ms;
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

    /// Whether any lock on `session` is held or waited for.
    pub fn is_locked(&self, session: &SessionId) -> bool {
        self.sessions.get(session).is_some_and(|l| !l.is_empty())
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
