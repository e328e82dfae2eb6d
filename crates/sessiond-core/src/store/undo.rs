//! Undoing changes storage could not confirm.
//!
//! A single server under `--durability always` answers a write only once
//! its batch is synced, but it applies the write in memory first (the
//! engine changes its state in place, and later commands of the same group
//! commit build on it). When the sync fails, the write was never
//! acknowledged, so it must not stay visible: the server undoes, in memory,
//! every change of every batch that is not durable, and puts the state
//! that was durable back on disk too (a failed sync leaves unknown what
//! reached the file).
//!
//! The journal keeps, per batch, the state each session and alias had
//! before the batch first touched it (a session's field buffer is shared,
//! so keeping it costs a reference count). The server tags the changes of
//! each input with its batch's position ([`Store::seal_undo`]), drops what
//! became durable ([`Store::forget_undo_through`]) and, after a failure,
//! restores everything after the last durable batch
//! ([`Store::undo_after`]). Reads of a session with a change not yet
//! durable wait for it ([`Store::unconfirmed_mark`]), so nothing undone
//! was ever seen.
//!
//! The journal is off unless the server turns it on ([`Store::keep_undo`]):
//! a cluster replicates inputs before it applies them and never needs it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::{Alias, Mutation, Store};
use crate::SessionId;
use crate::session::Session;

/// What one batch (or the input being applied) touched, as it was before.
#[derive(Debug, Default)]
pub(super) struct Segment {
    sessions: Vec<(SessionId, Option<Session>)>,
    seen_sessions: HashSet<SessionId>,
    aliases: Vec<(SessionId, Option<Alias>)>,
    seen_aliases: HashSet<SessionId>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.aliases.is_empty()
    }
}

/// The undo journal (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Journal {
    // What the inputs since the last seal touched.
    open: Segment,
    // Sealed segments, oldest first, with their batch positions (which
    // grow).
    sealed: VecDeque<(u64, Segment)>,
    // Every session or alias id with a change in a sealed segment: the
    // newest position.
    last_mark: HashMap<SessionId, u64>,
}

/// What [`Store::undo_after`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UndoReport {
    /// Batches undone.
    pub batches: usize,
    /// Sessions put back as they were (or removed, if they were new).
    pub sessions: usize,
    /// Aliases put back as they were.
    pub aliases: usize,
}

impl Store {
    /// Turns the undo journal on or off (off drops what it kept).
    pub fn keep_undo(&mut self, on: bool) {
        self.undo = on.then(Journal::default);
    }

    /// Whether the undo journal is on.
    pub fn keeps_undo(&self) -> bool {
        self.undo.is_some()
    }

    /// Tags what the inputs since the last call changed with `mark` (the
    /// position of the batch their mutations went out in), or forgets it
    /// when `None` (they changed nothing storage keeps, so nothing of
    /// theirs can fail).
    pub fn seal_undo(&mut self, mark: Option<u64>) {
        let Some(journal) = &mut self.undo else {
            return;
        };
        let segment = std::mem::take(&mut journal.open);
        let Some(mark) = mark else {
            return;
        };
        if segment.is_empty() {
            return;
        }
        for id in segment
            .seen_sessions
            .iter()
            .chain(segment.seen_aliases.iter())
        {
            journal.last_mark.insert(id.clone(), mark);
        }
        journal.sealed.push_back((mark, segment));
    }

    /// Forgets what batches up to `mark` changed: they are durable.
    pub fn forget_undo_through(&mut self, mark: u64) {
        let Some(journal) = &mut self.undo else {
            return;
        };
        while journal.sealed.front().is_some_and(|(m, _)| *m <= mark) {
            let Some((_, segment)) = journal.sealed.pop_front() else {
                break;
            };
            for id in segment
                .seen_sessions
                .iter()
                .chain(segment.seen_aliases.iter())
            {
                if journal.last_mark.get(id).is_some_and(|m| *m <= mark) {
                    journal.last_mark.remove(id);
                }
            }
        }
    }

    /// The position of the newest batch not yet forgotten that changed
    /// `id` (a session or an alias): a read of it must wait until that
    /// batch is durable.
    pub fn unconfirmed_mark(&self, id: &SessionId) -> Option<u64> {
        self.undo.as_ref()?.last_mark.get(id).copied()
    }

    /// Puts back every session and alias as it was before the first batch
    /// after `mark` (and before the inputs not sealed yet) touched it, in
    /// memory, and queues the mutations that make storage hold exactly
    /// that state again. Versions handed out stay handed out (the counter
    /// never goes back).
    pub fn undo_after(&mut self, mark: u64) -> UndoReport {
        let Some(journal) = &mut self.undo else {
            return UndoReport::default();
        };
        let mut segments = Vec::new();
        if !journal.open.is_empty() {
            segments.push(std::mem::take(&mut journal.open));
        }
        while journal.sealed.back().is_some_and(|(m, _)| *m > mark) {
            if let Some((_, segment)) = journal.sealed.pop_back() {
                segments.push(segment);
            }
        }
        journal.last_mark.retain(|_, m| *m <= mark);
        let batches = segments.len();
        // Off while restoring: putting back is not a change to undo.
        let journal = self.undo.take();

        // Every key a touched session may have on disk now: those of each
        // state it went through (a state's keys were written when it was
        // made) and of its state now.
        let mut keys: BTreeMap<SessionId, BTreeSet<Bytes>> = BTreeMap::new();
        let mut aliases: BTreeSet<SessionId> = BTreeSet::new();
        // Newest first, so the oldest before-image is put back last.
        for segment in segments {
            for (id, before) in segment.sessions.into_iter().rev() {
                let seen = keys.entry(id.clone()).or_default();
                if let Some(now) = self.sessions.get(&id) {
                    seen.extend(now.fields.keys());
                }
                if let Some(before) = &before {
                    seen.extend(before.fields.keys());
                }
                self.put_back_session(&id, before);
            }
            for (old, before) in segment.aliases.into_iter().rev() {
                self.unlink_alias(&old);
                if let Some(alias) = before {
                    self.link_alias(old.clone(), alias);
                }
                aliases.insert(old);
            }
        }
        let report = UndoReport {
            batches,
            sessions: keys.len(),
            aliases: aliases.len(),
        };
        for (id, keys) in keys {
            self.outbox.push(Mutation::DelSession {
                id: id.clone(),
                keys: keys.into_iter().collect(),
            });
            if let Some(session) = self.sessions.get(&id) {
                self.outbox.push(Mutation::PutMeta {
                    id: id.clone(),
                    meta: session.meta,
                });
                for (key, field) in session.fields.iter() {
                    self.outbox.push(Mutation::PutField {
                        id: id.clone(),
                        key,
                        field,
                    });
                }
            }
        }
        for old in aliases {
            self.outbox.push(match self.aliases.get(&old) {
                Some(alias) => Mutation::PutAlias {
                    old: old.clone(),
                    new: alias.target.clone(),
                    until: alias.until,
                },
                None => Mutation::DelAlias { old },
            });
        }
        self.undo = journal;
        report
    }

    /// Notes the state of session `id` before a change (the first one in
    /// the open segment counts).
    pub(super) fn keep_session(&mut self, id: &SessionId) {
        let Some(journal) = &mut self.undo else {
            return;
        };
        if journal.open.seen_sessions.insert(id.clone()) {
            journal
                .open
                .sessions
                .push((id.clone(), self.sessions.get(id).cloned()));
        }
    }

    /// Notes the alias of `old` before a change.
    pub(super) fn keep_alias(&mut self, old: &SessionId) {
        let Some(journal) = &mut self.undo else {
            return;
        };
        if journal.open.seen_aliases.insert(old.clone()) {
            journal
                .open
                .aliases
                .push((old.clone(), self.aliases.get(old).cloned()));
        }
    }

    /// Replaces session `id` in memory (indexes and accounting included)
    /// with `before`, or removes it.
    fn put_back_session(&mut self, id: &SessionId, before: Option<Session>) {
        if let Some(now) = self.sessions.remove(id) {
            self.expiry.remove(now.meta.deadline(), id);
            self.account_remove(id, &now);
        }
        if let Some(session) = before {
            self.expiry.insert(session.meta.deadline(), id.clone());
            self.account_insert(id, &session);
            self.sessions.insert(id.clone(), session);
        }
    }
}
