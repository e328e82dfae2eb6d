//! The reference model of the lock table: one flat list of grants, one
//! FIFO queue per session id, leases found by looking at every grant, and
//! deadlock found by a plain search of the wait-for graph. Written from the
//! lock promises of docs/protocol.md; it reuses only the plain data types
//! `Grant`, `Waiter`, `Scope` and `Handoff` to describe what it answers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use sessiond_core::locks::{Grant, Handoff, OwnerId, Scope, Waiter, WaiterId};
use sessiond_core::{LockError, Millis, SessionId};

/// Whether two locks of one session exclude each other.
pub fn conflicts(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (Scope::Key(x), Scope::Key(y)) => x == y,
        _ => true,
    }
}

/// The result of an acquire.
#[derive(Debug)]
pub enum Acq {
    Granted(Grant),
    Queued(WaiterId),
}

#[derive(Debug)]
pub struct Locks {
    epoch: u64,
    counter: u64,
    next_waiter: WaiterId,
    max_hold_ms: u64,
    /// Every lock held, oldest grant first.
    pub grants: Vec<Grant>,
    /// Per session id, the waiters in arrival order.
    pub queues: BTreeMap<SessionId, VecDeque<Waiter>>,
    /// How long each lock that ended was held (drained per input).
    pub ended: Vec<u64>,
    /// Coverage: grants and waits taken over by a REQID retry.
    pub adopted: u64,
}

pub struct Request {
    pub session: SessionId,
    pub scope: Scope,
    pub owner: OwnerId,
    pub lease_ms: Option<u64>,
    pub reqid: Option<String>,
    pub wait: bool,
}

impl Locks {
    pub fn new(epoch: u64, max_hold_ms: u64) -> Self {
        Self {
            epoch,
            counter: 0,
            next_waiter: 1,
            max_hold_ms,
            grants: Vec::new(),
            queues: BTreeMap::new(),
            ended: Vec::new(),
            adopted: 0,
        }
    }

    fn deadline(g: &Grant) -> Millis {
        g.lease_until.map_or(g.max_until, |l| l.min(g.max_until))
    }

    pub fn deadlines(&self) -> impl Iterator<Item = Millis> + '_ {
        self.grants.iter().map(Self::deadline)
    }

    /// Whether any lock is held or waited for on `session`.
    pub fn has_locks(&self, session: &SessionId) -> bool {
        self.grants.iter().any(|g| &g.session == session)
            || self.queues.get(session).is_some_and(|q| !q.is_empty())
    }

    pub fn grant_of(&self, token: u64) -> Option<&Grant> {
        self.grants.iter().find(|g| g.token == token)
    }

    fn queue(&mut self, session: &SessionId) -> &mut VecDeque<Waiter> {
        self.queues.entry(session.clone()).or_default()
    }

    fn tidy(&mut self) {
        self.queues.retain(|_, q| !q.is_empty());
    }

    fn grant(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: Scope,
        owner: OwnerId,
        lease_ms: Option<u64>,
        reqid: Option<String>,
    ) -> Grant {
        // Tokens: epoch << 32 | n, n counting grants from 1.
        self.counter += 1;
        let g = Grant {
            session: session.clone(),
            scope,
            token: (self.epoch << 32) | self.counter,
            owner,
            granted_at: now,
            lease_until: lease_ms.map(|l| now + l),
            max_until: now + self.max_hold_ms,
            reqid,
        };
        self.grants.push(g.clone());
        g
    }

    /// The queued wait of `owner` (a connection waits for one lock at a time).
    fn wait_of(&self, owner: OwnerId) -> Option<(SessionId, Waiter)> {
        self.queues.iter().find_map(|(s, q)| {
            q.iter()
                .find(|w| w.owner == owner)
                .map(|w| (s.clone(), w.clone()))
        })
    }

    /// Who a lock request on `session`/`scope` waits for: the holders it
    /// conflicts with, and the conflicting waiters queued ahead of it
    /// (`ahead_of`: its own place; `None`: the end of the queue).
    fn blockers(
        &self,
        session: &SessionId,
        scope: &Scope,
        ahead_of: Option<WaiterId>,
    ) -> Vec<OwnerId> {
        let mut out: Vec<OwnerId> = self
            .grants
            .iter()
            .filter(|g| &g.session == session && conflicts(&g.scope, scope))
            .map(|g| g.owner)
            .collect();
        if let Some(q) = self.queues.get(session) {
            out.extend(
                q.iter()
                    .take_while(|w| Some(w.id) != ahead_of)
                    .filter(|w| conflicts(&w.scope, scope))
                    .map(|w| w.owner),
            );
        }
        out
    }

    /// Whether the requester can reach itself in the wait-for graph (edges:
    /// a waiting connection → each connection it waits for).
    fn closes_cycle(&self, req: &Request) -> bool {
        let mut seen = BTreeSet::new();
        let mut frontier = self.blockers(&req.session, &req.scope, None);
        while let Some(o) = frontier.pop() {
            if o == req.owner {
                return true;
            }
            if seen.insert(o)
                && let Some((s, w)) = self.wait_of(o)
            {
                frontier.extend(self.blockers(&s, &w.scope, Some(w.id)));
            }
        }
        false
    }

    pub fn acquire(&mut self, now: Millis, req: Request) -> Result<Acq, LockError> {
        // REQID: a retry takes over the grant, or the wait, made under the
        // same request id for the same lock.
        if let Some(rid) = &req.reqid {
            if let Some(g) = self.grants.iter_mut().find(|g| {
                g.session == req.session && g.scope == req.scope && g.reqid.as_ref() == Some(rid)
            }) {
                g.owner = req.owner;
                let g = g.clone();
                self.adopted += 1;
                return Ok(Acq::Granted(g));
            }
            if let Some(w) = self.queues.get_mut(&req.session).and_then(|q| {
                q.iter_mut()
                    .find(|w| w.scope == req.scope && w.reqid.as_ref() == Some(rid))
            }) {
                w.owner = req.owner;
                let id = w.id;
                self.adopted += 1;
                return Ok(Acq::Queued(id));
            }
        }
        // Free: no holder and no waiter ahead conflicts (no barging).
        if self.blockers(&req.session, &req.scope, None).is_empty() {
            let g = self.grant(
                now,
                &req.session,
                req.scope,
                req.owner,
                req.lease_ms,
                req.reqid,
            );
            return Ok(Acq::Granted(g));
        }
        if !req.wait {
            return Err(LockError::Timeout(0));
        }
        if self.closes_cycle(&req) {
            // The engine names the requester itself as the client on the cycle.
            return Err(LockError::Deadlock(format!("client {}", req.owner)));
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        // (A connection with a wait already never asks again in these runs;
        // the engine would drop the older wait.)
        if let Some((s, old)) = self.wait_of(req.owner) {
            self.queue(&s).retain(|w| w.id != old.id);
        }
        self.queue(&req.session).push_back(Waiter {
            id,
            owner: req.owner,
            scope: req.scope,
            since: now,
            lease_ms: req.lease_ms,
            reqid: req.reqid,
        });
        self.tidy();
        Ok(Acq::Queued(id))
    }

    /// Grants, in queue order, every waiter compatible with every holder
    /// and every waiter ahead of it.
    fn promote(&mut self, now: Millis, session: &SessionId) -> Vec<Handoff> {
        let queue: Vec<Waiter> = self.queues.remove(session).unwrap_or_default().into();
        let mut kept = VecDeque::new();
        let mut ready = Vec::new();
        for (i, w) in queue.iter().enumerate() {
            let free = self
                .grants
                .iter()
                .all(|g| &g.session != session || !conflicts(&g.scope, &w.scope))
                && queue[..i].iter().all(|a| !conflicts(&a.scope, &w.scope));
            if free {
                ready.push(w.clone());
            } else {
                kept.push_back(w.clone());
            }
        }
        if !kept.is_empty() {
            self.queues.insert(session.clone(), kept);
        }
        ready
            .into_iter()
            .map(|w| Handoff {
                waiter: w.id,
                grant: self.grant(now, session, w.scope, w.owner, w.lease_ms, w.reqid),
            })
            .collect()
    }

    /// Ends the grant `token` (whoever holds it) and hands the lock on.
    pub fn release(&mut self, now: Millis, token: u64) -> Option<Vec<Handoff>> {
        let pos = self.grants.iter().position(|g| g.token == token)?;
        let g = self.grants.remove(pos);
        self.ended.push(now - g.granted_at);
        Some(self.promote(now, &g.session))
    }

    /// Every lock whose lease or maximum hold ran out by `now` ends,
    /// earliest deadline first (ties: older token first).
    pub fn expire(&mut self, now: Millis) -> Vec<Handoff> {
        let mut due: Vec<(Millis, u64)> = self
            .grants
            .iter()
            .filter(|g| Self::deadline(g) <= now)
            .map(|g| (Self::deadline(g), g.token))
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        for (_, token) in due {
            out.extend(self.release(now, token).unwrap_or_default());
        }
        out
    }

    pub fn cancel_wait(&mut self, now: Millis, waiter: WaiterId) -> Vec<Handoff> {
        let found = self
            .queues
            .iter()
            .find(|(_, q)| q.iter().any(|w| w.id == waiter))
            .map(|(s, _)| s.clone());
        match found {
            Some(s) => {
                self.queue(&s).retain(|w| w.id != waiter);
                self.tidy();
                self.promote(now, &s)
            }
            None => Vec::new(),
        }
    }

    /// A connection closed: its wait ends, then its locks go, oldest first.
    pub fn release_owner(&mut self, now: Millis, owner: OwnerId) -> Vec<Handoff> {
        let mut out = Vec::new();
        if let Some((_, w)) = self.wait_of(owner) {
            out.extend(self.cancel_wait(now, w.id));
        }
        let mut held: Vec<u64> = self
            .grants
            .iter()
            .filter(|g| g.owner == owner)
            .map(|g| g.token)
            .collect();
        held.sort_unstable();
        for t in held {
            out.extend(self.release(now, t).unwrap_or_default());
        }
        out
    }

    /// `LOCK.RELEASE`: only the holder's own current grant of that lock.
    pub fn release_held(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
        token: u64,
        owner: OwnerId,
    ) -> (bool, Vec<Handoff>) {
        let held = self
            .grant_of(token)
            .is_some_and(|g| &g.session == session && &g.scope == scope && g.owner == owner);
        if !held {
            return (false, Vec::new());
        }
        (true, self.release(now, token).unwrap_or_default())
    }

    pub fn renew(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
        token: u64,
        owner: OwnerId,
        lease_ms: u64,
    ) -> Result<(), LockError> {
        let Some(g) = self.grants.iter_mut().find(|g| {
            g.token == token
                && &g.session == session
                && &g.scope == scope
                && now < Self::deadline(g)
        }) else {
            return Err(LockError::Fenced {
                session: session.to_string(),
                token,
            });
        };
        if g.owner != owner {
            return Err(LockError::NotHeld);
        }
        g.lease_until = Some(now + lease_ms);
        Ok(())
    }

    /// The fence of a write: `token` is the current grant of a lock on
    /// `session` (the canonical id, which errors name) covering every key.
    pub fn check_fence(
        &self,
        now: Millis,
        session: &SessionId,
        token: u64,
        keys: &[Bytes],
    ) -> Result<(), LockError> {
        let g = self
            .grant_of(token)
            .filter(|g| &g.session == session && now < Self::deadline(g))
            .ok_or_else(|| LockError::Fenced {
                session: session.to_string(),
                token,
            })?;
        if let Scope::Key(locked) = &g.scope
            && let Some(other) = keys.iter().find(|k| *k != locked)
        {
            return Err(LockError::OutsideLock {
                session: session.to_string(),
                token,
                locked: locked.clone(),
                written: other.clone(),
            });
        }
        Ok(())
    }

    pub fn break_lock(
        &mut self,
        now: Millis,
        session: &SessionId,
        scope: &Scope,
    ) -> (bool, Vec<Handoff>) {
        let token = self
            .grants
            .iter()
            .find(|g| &g.session == session && &g.scope == scope)
            .map(|g| g.token);
        match token {
            Some(t) => (true, self.release(now, t).unwrap_or_default()),
            None => (false, Vec::new()),
        }
    }

    /// Locks follow a regenerated session to its new id.
    pub fn rename(&mut self, old: &SessionId, new: &SessionId) {
        for g in &mut self.grants {
            if &g.session == old {
                g.session = new.clone();
            }
        }
        if let Some(q) = self.queues.remove(old) {
            self.queues.insert(new.clone(), q);
        }
    }

    /// `LOCK.INFO`: sessions with holders or waiters, by id; holders by
    /// token, waiters in queue order.
    pub fn inspect(&self, only: Option<&SessionId>) -> Vec<(SessionId, Vec<Grant>, Vec<Waiter>)> {
        let mut ids: BTreeSet<SessionId> = self.grants.iter().map(|g| g.session.clone()).collect();
        ids.extend(self.queues.keys().cloned());
        ids.into_iter()
            .filter(|id| only.is_none_or(|o| o == id))
            .map(|id| {
                let mut holders: Vec<Grant> = self
                    .grants
                    .iter()
                    .filter(|g| g.session == id)
                    .cloned()
                    .collect();
                holders.sort_by_key(|g| g.token);
                let waiters = self
                    .queues
                    .get(&id)
                    .map(|q| q.iter().cloned().collect())
                    .unwrap_or_default();
                (id, holders, waiters)
            })
            .collect()
    }
}
