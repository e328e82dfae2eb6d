//! Deadlock detection: a wait that would close a cycle of owners waiting
//! for each other is refused instead of queued.

use std::collections::HashSet;

use super::{LockRequest, LockTable, OwnerId, Scope, WaiterId};
use crate::SessionId;

impl LockTable {
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
    pub(super) fn would_deadlock(&self, req: &LockRequest) -> Option<OwnerId> {
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
}
