//! The session store: every session, its expiry, and regenerate aliases.
//!
//! [`Store`] is a plain state machine. Every operation takes `now` from the
//! caller and returns a result; changes that must reach disk are appended to
//! an outbox of [`Mutation`]s that the server drains, in order, under the same
//! lock that guards the store, so the disk sees changes in the order they
//! were made.

//!
//! ## Layout
//! - [`config`]: [`StoreConfig`], [`Limits`] and their defaults.
//! - [`ops`]: what the operations take and return, and [`Mutation`].
//! - [`aliases`]: regenerate aliases ([`Alias`]) and
//!   [`Store::regenerate`].
//! - [`image`]: [`StoreImage`], the store as plain data.
//! - [`memory`]: the memory limit: accounting, [`Store::make_room`] and
//!   the refusal.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use crate::expiry::ExpiryIndex;
use crate::fields::PackedFields;
use crate::session::{Field, Session, SessionMeta};
use crate::{Millis, SessionId, StoreError};

pub mod aliases;
pub mod config;
pub mod image;
pub mod memory;
pub mod ops;
pub mod undo;

pub use aliases::Alias;
pub use config::{Limits, StoreConfig};
pub use image::{SessionImage, SessionImageV2, StoreImage, StoreImageV2};
pub use memory::{EvictionPolicy, MemoryLimit, MemoryStats};
pub use ops::{
    CasOutcome, CommitOutcome, CommitRequest, Mutation, Op, ReadField, ReadOptions, ReadResult,
    StoreStats,
};
pub use undo::UndoReport;

/// Every session, its expiry, and regenerate aliases.
///
/// ```
/// use sessiond_core::{CommitRequest, Op, ReadOptions, SessionId, Store, StoreConfig};
/// let mut store = Store::new(StoreConfig::default());
/// let id = SessionId::parse(b"s1").unwrap();
/// let commit = CommitRequest {
///     create: true,
///     ops: vec![Op::Set { key: "user".into(), value: "alice".into(), if_version: None }],
///     ..Default::default()
/// };
/// store.commit(1_000, &id, commit).unwrap();
/// let read = store.read(2_000, &id, ReadOptions::default()).unwrap().unwrap();
/// assert_eq!(read.fields[0].value.as_deref(), Some(&b"alice"[..]));
/// ```
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    sessions: HashMap<SessionId, Session>,
    // Invariant: exactly one entry per session, at `meta.deadline()`.
    expiry: ExpiryIndex<SessionId>,
    aliases: HashMap<SessionId, Alias>,
    // For every alias target, the old ids that lead to it: when the session
    // goes, so do its aliases, or an old id would answer for a later session
    // that takes the same id.
    alias_sources: HashMap<SessionId, Vec<SessionId>>,
    // Invariant: exactly one entry per alias, at `until`.
    alias_expiry: ExpiryIndex<SessionId>,
    // The last version handed out; versions only grow, across restarts too
    // (the storage keeps the high-water mark).
    last_version: u64,
    outbox: Vec<Mutation>,
    // Sessions whose last access moved (a read, a touch) since their
    // metadata was last put in the outbox. Recorded in bulk by
    // `record_accesses`, so that a read costs no storage write.
    accessed: HashSet<SessionId>,
    stats: StoreStats,
    // Invariant: the sum of `memory::session_cost` over `sessions` and
    // `memory::alias_cost` over `aliases` (checked by `recount_memory`).
    used_memory: u64,
    // Sessions by last access, oldest first: exactly one entry per session
    // at `meta.last_access`. Kept only under an evicting memory limit.
    idle: Option<ExpiryIndex<SessionId>>,
    // Evictions and refusals: counted since this process started or
    // restored a snapshot, not part of an image (its format stays).
    evicted: u64,
    oom_refusals: u64,
    // What each batch not yet durable replaced (single server under
    // `always` only; see `undo`).
    undo: Option<undo::Journal>,
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        let mut store = Self {
            config,
            sessions: HashMap::new(),
            expiry: ExpiryIndex::default(),
            aliases: HashMap::new(),
            alias_sources: HashMap::new(),
            alias_expiry: ExpiryIndex::default(),
            last_version: 0,
            outbox: Vec::new(),
            accessed: HashSet::new(),
            stats: StoreStats::default(),
            used_memory: 0,
            idle: None,
            evicted: 0,
            oom_refusals: 0,
            undo: None,
        };
        store.sync_idle_index();
        store
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Changes the settings for what happens from now on: sessions already
    /// stored keep their TTL and their values and keys (even over a lowered
    /// limit, until they are next written), aliases their grace.
    /// A lowered memory limit evicts or refuses from the next write on.
    pub fn set_config(&mut self, config: StoreConfig) {
        self.config = config;
        self.sync_idle_index();
    }

    /// Counters for metrics.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Number of sessions held (some may have expired and not been purged yet).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The last version handed out.
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// How many changes wait in the outbox (made since the last
    /// [`Store::take_mutations`]).
    pub fn pending_mutations(&self) -> usize {
        self.outbox.len()
    }

    /// Takes the changes made since the last call, oldest first.
    pub fn take_mutations(&mut self) -> Vec<Mutation> {
        std::mem::take(&mut self.outbox)
    }

    /// Puts the metadata of every session whose last access moved without
    /// another change since the last call into the outbox; returns how many.
    ///
    /// Reads and touches slide the expiry in memory at once but leave the
    /// storage to this call, which the server makes about once a second and
    /// at shutdown: a read then costs no write, and a crash can only make a
    /// session that was merely read in the last second expire that much
    /// earlier after the restart.
    pub fn record_accesses(&mut self) -> usize {
        let mut recorded = 0;
        // Sorted, so the mutations come in the same order on every replica.
        let mut accessed: Vec<SessionId> = std::mem::take(&mut self.accessed).into_iter().collect();
        accessed.sort_unstable();
        for id in accessed {
            if let Some(session) = self.sessions.get(&id) {
                self.outbox.push(Mutation::PutMeta {
                    id,
                    meta: session.meta,
                });
                recorded += 1;
            }
        }
        recorded
    }

    // ---- loading -------------------------------------------------------

    /// Puts sessions loaded from storage back, all at once (startup): the
    /// map is sized once and the expiry index built in one pass.
    pub fn restore_sessions(&mut self, sessions: Vec<(SessionId, Session)>) {
        self.sessions.reserve(sessions.len());
        let mut deadlines = Vec::with_capacity(sessions.len());
        for (id, session) in sessions {
            self.last_version = self
                .last_version
                .max(session.meta.version)
                .max(session.fields.max_version());
            deadlines.push((session.meta.deadline(), id.clone()));
            if let Some(old) = self.sessions.remove(&id) {
                self.expiry.remove(old.meta.deadline(), &id);
                self.account_remove(&id, &old);
            }
            self.account_insert(&id, &session);
            self.sessions.insert(id.clone(), session);
        }
        self.expiry.extend(deadlines);
    }

    /// Raises the version counter to at least `floor` (the high-water mark
    /// kept by the storage, which covers versions of destroyed sessions).
    pub fn raise_version_floor(&mut self, floor: u64) {
        self.last_version = self.last_version.max(floor);
    }

    // ---- lookups -------------------------------------------------------

    /// Whether `id` (or an alias of it) names a live session at `now`.
    pub fn exists(&self, now: Millis, id: &SessionId) -> bool {
        self.resolve(now, id).is_some()
    }

    /// Milliseconds until `id` expires, without sliding it.
    pub fn ttl(&self, now: Millis, id: &SessionId) -> Option<u64> {
        let id = self.resolve(now, id)?;
        self.sessions
            .get(&id)
            .map(|s| s.meta.deadline().saturating_sub(now))
    }

    /// Moves the last access of the session `id` answers for to `at` (a
    /// read served at `at`, recorded later), as that read would have.
    /// Returns whether `id` answered for a live session at `now`.
    pub fn accessed_at(&mut self, now: Millis, id: &SessionId, at: Millis) -> bool {
        match self.resolve(now, id) {
            Some(canonical) => {
                self.slide(at, &canonical, None);
                true
            }
            None => false,
        }
    }

    /// A session by canonical id, without sliding it. For the lock table and
    /// the inspector.
    pub fn get(&self, now: Millis, id: &SessionId) -> Option<&Session> {
        self.sessions.get(id).filter(|s| !s.meta.is_expired(now))
    }

    // ---- operations ----------------------------------------------------

    /// Creates an empty session under `id`.
    ///
    /// # Errors
    /// [`StoreError::Exists`] if `id` is taken.
    pub fn create(
        &mut self,
        now: Millis,
        id: &SessionId,
        ttl_ms: Option<u64>,
        lifetime_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        if self.id_taken(now, id) {
            return Err(StoreError::Exists(id.to_string()));
        }
        self.check_room(new_session_cost(id), 0)?;
        self.insert_new(now, id, ttl_ms, lifetime_ms);
        Ok(())
    }

    /// Reads a session and slides its expiry.
    ///
    /// # Errors
    /// Only those of creating it.
    pub fn read(
        &mut self,
        now: Millis,
        id: &SessionId,
        opts: ReadOptions,
    ) -> Result<Option<ReadResult>, StoreError> {
        let (canonical, created) = match self.resolve(now, id) {
            Some(c) => (c, false),
            None if opts.create => {
                self.check_room(new_session_cost(id), 0)?;
                self.insert_new(now, id, opts.ttl_ms, opts.lifetime_ms);
                (id.clone(), true)
            }
            None => return Ok(None),
        };
        if !created {
            self.slide(now, &canonical, opts.ttl_ms);
        }
        Ok(self.snapshot(&canonical, created, opts.keys.as_deref()))
    }

    /// The read result for a live canonical id, without sliding it.
    pub fn snapshot(
        &self,
        canonical: &SessionId,
        created: bool,
        keys: Option<&[Bytes]>,
    ) -> Option<ReadResult> {
        let session = self.sessions.get(canonical)?;
        let fields = match keys {
            Some(keys) => keys
                .iter()
                .zip(
                    session
                        .fields
                        .get_many(&keys.iter().map(|k| k.as_ref()).collect::<Vec<&[u8]>>()),
                )
                .map(|(k, found)| match found {
                    Some(f) => ReadField {
                        key: k.clone(),
                        version: f.version,
                        value: Some(f.value),
                    },
                    None => ReadField {
                        key: k.clone(),
                        version: 0,
                        value: None,
                    },
                })
                .collect(),
            // Packed fields iterate in key order already.
            None => session
                .fields
                .iter()
                .map(|(key, f)| ReadField {
                    key,
                    version: f.version,
                    value: Some(f.value),
                })
                .collect(),
        };
        Some(ReadResult {
            id: canonical.clone(),
            version: session.meta.version,
            created,
            fields,
        })
    }

    /// Applies a delta atomically: every condition holds and every limit is
    /// respected, or nothing changes.
    ///
    /// # Errors
    /// [`StoreError::NoSession`] when the session does not exist and `create`
    /// is not set; [`StoreError::Conflict`] listing every key whose version
    /// differs from its condition; the limit errors.
    pub fn commit(
        &mut self,
        now: Millis,
        id: &SessionId,
        req: CommitRequest,
    ) -> Result<CommitOutcome, StoreError> {
        let limits = self.config.limits;
        let existing = self.resolve(now, id);
        let canonical = existing.clone().unwrap_or_else(|| id.clone());
        let empty = Session {
            meta: self.new_meta(now, req.ttl_ms, req.lifetime_ms),
            fields: PackedFields::new(),
        };
        let session = match &existing {
            Some(c) => self.sessions.get(c).unwrap_or(&empty),
            None if req.create => &empty,
            None => return Err(StoreError::NoSession(id.to_string())),
        };

        // Check everything before changing anything. Conditions are on the
        // versions as they were before this commit; later ops on a key
        // replace earlier ones.
        // The versions the conditions name, looked up in one pass.
        let conditioned: Vec<&Op> = req
            .ops
            .iter()
            .filter(|op| op.if_version().is_some())
            .collect();
        let versions = session.fields.get_many(
            &conditioned
                .iter()
                .map(|op| op.key().as_ref())
                .collect::<Vec<&[u8]>>(),
        );
        let mut conflicts: Vec<Bytes> = Vec::new();
        let mut conflicted: HashSet<&Bytes> = HashSet::new();
        for (op, current) in conditioned.iter().zip(versions) {
            if op.if_version() != Some(current.map_or(0, |f| f.version))
                && conflicted.insert(op.key())
            {
                conflicts.push(op.key().clone());
            }
        }
        let mut changes: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
        for op in &req.ops {
            match op {
                Op::Set { key, value, .. } => {
                    if value.len() > limits.max_value_bytes {
                        return Err(StoreError::ValueTooLarge {
                            key: key.clone(),
                            size: value.len(),
                            limit: limits.max_value_bytes,
                        });
                    }
                    changes.insert(key.clone(), Some(value.clone()));
                }
                Op::Del { key, .. } => {
                    changes.insert(key.clone(), None);
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict(conflicts));
        }
        let version = self.last_version + 1;
        let fields = session.fields.with_changes(&changes, version);
        if fields.len() > limits.max_keys_per_session {
            return Err(StoreError::TooManyKeys {
                count: fields.len(),
                limit: limits.max_keys_per_session,
            });
        }
        let (old_cost, new_cost) = (
            memory::fields_cost(&session.fields),
            memory::fields_cost(&fields),
        );
        let created_cost = if existing.is_none() {
            new_session_cost(&canonical)
        } else {
            0
        };
        self.check_room(created_cost + new_cost, old_cost)?;

        self.keep_session(&canonical);
        if existing.is_none() {
            self.insert_new(now, &canonical, req.ttl_ms, req.lifetime_ms);
        }
        // Nothing since `version` was chosen has taken a version.
        self.last_version = version;
        let session = self
            .sessions
            .get_mut(&canonical)
            .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
        // The storage gets the commit's net effect: each changed key once.
        // Deleting a key the session did not have is a no-op there.
        for (key, value) in changes {
            self.outbox.push(match value {
                Some(value) => Mutation::PutField {
                    id: canonical.clone(),
                    key,
                    field: Field { value, version },
                },
                None => Mutation::DelField {
                    id: canonical.clone(),
                    key,
                },
            });
        }
        session.fields = fields;
        self.used_memory = (self.used_memory + new_cost).saturating_sub(old_cost);
        let op_versions = req
            .ops
            .iter()
            .map(|op| match op {
                Op::Set { .. } => version,
                Op::Del { .. } => 0,
            })
            .collect();
        session.meta.version = version;
        self.slide_and_record(now, &canonical, req.ttl_ms, true);
        Ok(CommitOutcome {
            version,
            op_versions,
        })
    }

    /// Adds `delta` to the decimal integer in `key` (absent counts as 0).
    ///
    /// # Errors
    /// [`StoreError::NoSession`], [`StoreError::NotInteger`],
    /// [`StoreError::Overflow`].
    pub fn incr(
        &mut self,
        now: Millis,
        id: &SessionId,
        key: &Bytes,
        delta: i64,
        create: bool,
    ) -> Result<(i64, u64), StoreError> {
        let current = match self.resolve(now, id) {
            Some(c) => self.sessions.get(&c).and_then(|s| s.fields.get(key)),
            None if create => None,
            None => return Err(StoreError::NoSession(id.to_string())),
        };
        let base = match current {
            Some(f) => parse_i64(&f.value).ok_or_else(|| StoreError::NotInteger(key.clone()))?,
            None => 0,
        };
        let value = base
            .checked_add(delta)
            .ok_or_else(|| StoreError::Overflow(key.clone()))?;
        let outcome = self.commit(
            now,
            id,
            CommitRequest {
                create,
                ops: vec![Op::Set {
                    key: key.clone(),
                    value: Bytes::from(value.to_string()),
                    if_version: None,
                }],
                ..Default::default()
            },
        )?;
        Ok((value, outcome.version))
    }

    /// Sets `key` to `new` if its value is exactly `expected`.
    ///
    /// # Errors
    /// [`StoreError::NoSession`] and the limit errors.
    pub fn cas(
        &mut self,
        now: Millis,
        id: &SessionId,
        key: &Bytes,
        expected: &[u8],
        new: Bytes,
    ) -> Result<CasOutcome, StoreError> {
        let canonical = self
            .resolve(now, id)
            .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
        let current = self
            .sessions
            .get(&canonical)
            .and_then(|s| s.fields.get(key));
        match current {
            Some(f) if f.value.as_ref() == expected => {
                let outcome = self.commit(
                    now,
                    &canonical,
                    CommitRequest {
                        ops: vec![Op::Set {
                            key: key.clone(),
                            value: new,
                            if_version: Some(f.version),
                        }],
                        ..Default::default()
                    },
                )?;
                Ok(CasOutcome::Swapped {
                    version: outcome.version,
                })
            }
            other => {
                self.slide(now, &canonical, None);
                Ok(CasOutcome::Mismatch {
                    version: other.as_ref().map_or(0, |f| f.version),
                    value: other.map(|f| f.value),
                })
            }
        }
    }

    /// Slides the expiry of `id` (and sets its TTL when given). Returns
    /// whether the session exists.
    pub fn touch(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>) -> bool {
        match self.resolve(now, id) {
            Some(c) => {
                self.slide(now, &c, ttl_ms);
                true
            }
            None => false,
        }
    }

    /// Destroys the session `id` answers for. Returns whether it existed.
    pub fn destroy(&mut self, now: Millis, id: &SessionId) -> bool {
        match self.resolve(now, id) {
            Some(c) => {
                self.remove_session(&c);
                self.stats.destroyed += 1;
                true
            }
            None => false,
        }
    }

    // ---- expiry --------------------------------------------------------

    /// Removes up to `max` sessions and aliases that are due at `now`.
    /// Returns how many were removed. Costs O(removed · log n).
    pub fn purge_expired(&mut self, now: Millis, max: usize) -> usize {
        let mut removed = 0;
        for (deadline, id) in self.expiry.pop_due(now, max) {
            // The index holds exactly the session's deadline (invariant), so
            // a due entry is an expired session.
            self.keep_session(&id);
            if let Some(session) = self.sessions.remove(&id) {
                debug_assert_eq!(session.meta.deadline(), deadline);
                self.account_remove(&id, &session);
                self.outbox.push(Mutation::DelSession {
                    id: id.clone(),
                    keys: session.fields.owned_keys(),
                });
                self.drop_aliases_to(&id);
                self.stats.expired += 1;
                removed += 1;
            }
        }
        for (_, old) in self.alias_expiry.pop_due(now, max.saturating_sub(removed)) {
            if self.unlink_alias(&old).is_some() {
                self.outbox.push(Mutation::DelAlias { old });
                removed += 1;
            }
        }
        removed
    }

    /// The earliest instant something expires.
    pub fn next_deadline(&self) -> Option<Millis> {
        match (
            self.expiry.next_deadline(),
            self.alias_expiry.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals -----------------------------------------------------

    fn new_meta(&self, now: Millis, ttl_ms: Option<u64>, lifetime_ms: Option<u64>) -> SessionMeta {
        SessionMeta {
            version: 0,
            created: now,
            last_access: now,
            ttl_ms: ttl_ms.unwrap_or(self.config.default_ttl_ms),
            lifetime_deadline: lifetime_ms.map(|l| now.saturating_add(l)),
        }
    }

    /// Before a session takes `id` (create, regenerate): an expired session
    /// or alias of that id may still be waiting for the purge. It is dead;
    /// its index entry and stored rows go now, so the purge cannot later
    /// take the new session for it and no stale field survives on disk.
    /// Aliases still leading to `id` go too: they were made for a session
    /// that has since moved on with `GRACE 0`, or whose own alias under
    /// `id` ended, so they answer nothing now and must not start answering
    /// for the new session (an old id never answers for a later session
    /// that takes the same id).
    fn clear_dead(&mut self, id: &SessionId) {
        if self.sessions.contains_key(id) {
            self.remove_session(id);
        }
        if self.unlink_alias(id).is_some() {
            self.outbox.push(Mutation::DelAlias { old: id.clone() });
        }
        self.drop_aliases_to(id);
    }

    fn insert_new(
        &mut self,
        now: Millis,
        id: &SessionId,
        ttl_ms: Option<u64>,
        lifetime_ms: Option<u64>,
    ) {
        self.keep_session(id);
        self.clear_dead(id);
        let meta = self.new_meta(now, ttl_ms, lifetime_ms);
        self.expiry.insert(meta.deadline(), id.clone());
        let session = Session {
            meta,
            fields: PackedFields::new(),
        };
        self.account_insert(id, &session);
        self.sessions.insert(id.clone(), session);
        self.outbox.push(Mutation::PutMeta {
            id: id.clone(),
            meta,
        });
        self.stats.created += 1;
    }

    /// Removes the session `id` and every alias leading to it.
    fn remove_session(&mut self, id: &SessionId) {
        self.keep_session(id);
        if let Some(session) = self.sessions.remove(id) {
            self.expiry.remove(session.meta.deadline(), id);
            self.account_remove(id, &session);
            self.outbox.push(Mutation::DelSession {
                id: id.clone(),
                keys: session.fields.owned_keys(),
            });
            self.drop_aliases_to(id);
        }
    }

    /// Marks an access at `now`: moves the deadline and records the new
    /// metadata for the storage.
    fn slide(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>) {
        self.slide_and_record(now, id, ttl_ms, false);
    }

    /// [`Self::slide`], recording the metadata for the storage when it
    /// changed or when `force` (a commit changed the version in place).
    fn slide_and_record(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>, force: bool) {
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        let before = session.meta;
        let mut meta = before;
        // `max`: a clock step backwards must never shorten a session.
        meta.last_access = before.last_access.max(now);
        if let Some(ttl) = ttl_ms {
            meta.ttl_ms = ttl;
        }
        if meta == before && !force {
            return;
        }
        let only_accessed = SessionMeta {
            last_access: meta.last_access,
            ..before
        } == meta;
        if !only_accessed || force {
            // A slide alone is not written now (`record_accesses` is), so
            // there is nothing of it to undo.
            self.keep_session(id);
        }
        if let Some(session) = self.sessions.get_mut(id) {
            session.meta = meta;
        }
        self.expiry
            .reschedule(before.deadline(), meta.deadline(), id);
        if let Some(idle) = &mut self.idle {
            idle.reschedule(before.last_access, meta.last_access, id);
        }
        if only_accessed && !force {
            self.accessed.insert(id.clone());
        } else {
            self.outbox.push(Mutation::PutMeta {
                id: id.clone(),
                meta,
            });
            self.accessed.remove(id);
        }
    }
}

/// What creating an empty session under `id` adds to the accounted memory.
fn new_session_cost(id: &SessionId) -> u64 {
    memory::SESSION_OVERHEAD + memory::id_cost(id)
}

/// Parses a strict decimal i64: an optional `-`, then digits, nothing else.
pub fn parse_i64(raw: &[u8]) -> Option<i64> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}
