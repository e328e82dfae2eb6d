//! Regenerate aliases: an old id answering for the session it was moved to
//! until its grace period ends, chains of them, and their removal with the
//! session they lead to.

use serde::{Deserialize, Serialize};

use super::{Mutation, Store, memory};
use crate::{Millis, SessionId, StoreError};

/// How many alias hops a lookup follows. A session regenerated twice within
/// one grace period leaves a chain `a → b → c`; longer chains need many
/// regenerates inside one grace period and end at this bound.
const MAX_ALIAS_HOPS: usize = 8;

/// An old id answering for a regenerated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// Where the session went.
    pub target: SessionId,
    /// When the old id stops answering.
    pub until: Millis,
}

impl Store {
    /// Number of regenerate aliases held.
    pub fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Puts an alias loaded from storage back. Used only at startup.
    pub fn restore_alias(&mut self, old: SessionId, alias: Alias) {
        self.link_alias(old, alias);
    }

    /// The live session `id` answers for at `now`: itself, or the target of a
    /// live alias. `None` when neither exists.
    pub fn resolve(&self, now: Millis, id: &SessionId) -> Option<SessionId> {
        let mut current = id.clone();
        for _ in 0..=MAX_ALIAS_HOPS {
            if let Some(s) = self.sessions.get(&current) {
                return (!s.meta.is_expired(now)).then_some(current);
            }
            match self.aliases.get(&current) {
                Some(alias) if now < alias.until => current = alias.target.clone(),
                _ => return None,
            }
        }
        None
    }

    /// Whether `id` is taken at `now`, as a session or as a live alias.
    pub(super) fn id_taken(&self, now: Millis, id: &SessionId) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| !s.meta.is_expired(now))
            || self.aliases.get(id).is_some_and(|a| now < a.until)
    }

    /// Moves the session `id` answers for to `new_id`; the old id answers for
    /// `grace_ms` (the configured default when `None`).
    ///
    /// # Errors
    /// [`StoreError::NoSession`], or [`StoreError::Exists`] when `new_id` is
    /// taken.
    pub fn regenerate(
        &mut self,
        now: Millis,
        id: &SessionId,
        new_id: &SessionId,
        grace_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let old = self
            .resolve(now, id)
            .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
        if self.id_taken(now, new_id) {
            return Err(StoreError::Exists(new_id.to_string()));
        }
        let grace = grace_ms.unwrap_or(self.config.regenerate_grace_ms);
        let alias_cost = if grace > 0 {
            memory::alias_cost(&old)
        } else {
            0
        };
        self.check_room(memory::id_cost(new_id) + alias_cost, memory::id_cost(&old))?;
        self.keep_session(&old);
        self.keep_session(new_id);
        let Some(mut session) = self.sessions.remove(&old) else {
            return Err(StoreError::NoSession(id.to_string()));
        };
        self.expiry.remove(session.meta.deadline(), &old);
        self.account_remove(&old, &session);
        self.outbox.push(Mutation::DelSession {
            id: old.clone(),
            keys: session.fields.keys().collect(),
        });
        self.clear_dead(new_id);
        session.meta.last_access = now;
        self.outbox.push(Mutation::PutMeta {
            id: new_id.clone(),
            meta: session.meta,
        });
        for (key, field) in session.fields.iter() {
            self.outbox.push(Mutation::PutField {
                id: new_id.clone(),
                key,
                field,
            });
        }
        self.expiry.insert(session.meta.deadline(), new_id.clone());
        self.account_insert(new_id, &session);
        self.sessions.insert(new_id.clone(), session);

        if grace > 0 {
            let until = now.saturating_add(grace);
            let alias = Alias {
                target: new_id.clone(),
                until,
            };
            self.link_alias(old.clone(), alias);
            self.outbox.push(Mutation::PutAlias {
                old,
                new: new_id.clone(),
                until,
            });
        }
        Ok(())
    }

    /// Records `old → alias.target` (replacing any alias of `old`).
    pub(super) fn link_alias(&mut self, old: SessionId, alias: Alias) {
        self.keep_alias(&old);
        self.unlink_alias(&old);
        self.used_memory += memory::alias_cost(&old);
        self.alias_expiry.insert(alias.until, old.clone());
        self.alias_sources
            .entry(alias.target.clone())
            .or_default()
            .push(old.clone());
        self.aliases.insert(old, alias);
    }

    /// Forgets the alias of `old` in memory (the caller records the
    /// deletion for the storage); returns it.
    pub(super) fn unlink_alias(&mut self, old: &SessionId) -> Option<Alias> {
        if !self.aliases.contains_key(old) {
            return None;
        }
        self.keep_alias(old);
        let alias = self.aliases.remove(old)?;
        self.used_memory = self.used_memory.saturating_sub(memory::alias_cost(old));
        self.alias_expiry.remove(alias.until, old);
        if let Some(sources) = self.alias_sources.get_mut(&alias.target) {
            sources.retain(|o| o != old);
            if sources.is_empty() {
                self.alias_sources.remove(&alias.target);
            }
        }
        Some(alias)
    }

    /// Drops every alias that leads to `target`, directly or through other
    /// aliases (a session regenerated twice in one grace period).
    pub(super) fn drop_aliases_to(&mut self, target: &SessionId) {
        let mut work = vec![target.clone()];
        while let Some(t) = work.pop() {
            // Sorted: the order of the removals must not depend on the order
            // the aliases were made or restored in.
            let mut sources = self.alias_sources.remove(&t).unwrap_or_default();
            sources.sort_unstable();
            for old in sources {
                if self.unlink_alias(&old).is_some() {
                    self.outbox.push(Mutation::DelAlias { old: old.clone() });
                    work.push(old);
                }
            }
        }
    }
}
