//! The session store: every session, its expiry, and regenerate aliases.
//!
//! [`Store`] is a plain state machine. Every operation takes `now` from the
//! caller and returns a result; changes that must reach disk are appended to
//! an outbox of [`Mutation`]s that the server drains, in order, under the same
//! lock that guards the store, so the disk sees changes in the order they
//! were made.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryIndex;
use crate::fields::PackedFields;
use crate::session::{Field, Session, SessionMeta};
use crate::{Millis, SessionId, StoreError};

/// How many alias hops a lookup follows. A session regenerated twice within
/// one grace period leaves a chain `a → b → c`; longer chains need many
/// regenerates inside one grace period and end at this bound.
const MAX_ALIAS_HOPS: usize = 8;

/// Limits on what clients may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest value in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one session.
    pub max_keys_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 1024 * 1024,
            max_keys_per_session: 10_000,
        }
    }
}

/// Store-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Idle TTL of a session created without one (PHP's default
    /// `session.gc_maxlifetime`, 1440 s).
    pub default_ttl_ms: u64,
    /// How long an old id keeps answering after a regenerate, by default.
    pub regenerate_grace_ms: u64,
    /// Limits on values and keys.
    pub limits: Limits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            default_ttl_ms: 1_440_000,
            regenerate_grace_ms: 30_000,
            limits: Limits::default(),
        }
    }
}

/// A change the storage must make, in the order the store made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Write the session's metadata (creates it on disk if new).
    PutMeta {
        /// The session.
        id: SessionId,
        /// Its metadata now.
        meta: SessionMeta,
    },
    /// Write one field.
    PutField {
        /// The session.
        id: SessionId,
        /// The key.
        key: Bytes,
        /// The field.
        field: Field,
    },
    /// Delete one field.
    DelField {
        /// The session.
        id: SessionId,
        /// The key.
        key: Bytes,
    },
    /// Delete the session's metadata and the listed fields (all it had).
    DelSession {
        /// The session.
        id: SessionId,
        /// Every key it had.
        keys: Vec<Bytes>,
    },
    /// Record that `old` answers for `new` until `until`.
    PutAlias {
        /// The old id.
        old: SessionId,
        /// The new id.
        new: SessionId,
        /// End of the grace period.
        until: Millis,
    },
    /// Forget an alias.
    DelAlias {
        /// The old id.
        old: SessionId,
    },
}

/// An old id answering for a regenerated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// Where the session went.
    pub target: SessionId,
    /// When the old id stops answering.
    pub until: Millis,
}

/// Options of [`Store::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Create the session empty when it does not exist.
    pub create: bool,
    /// Set the idle TTL (ms).
    pub ttl_ms: Option<u64>,
    /// Absolute lifetime (ms), for a session created here.
    pub lifetime_ms: Option<u64>,
    /// Only these keys (all when `None`).
    pub keys: Option<Vec<Bytes>>,
}

/// A field as a read returns it; `value` is `None` for an absent key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadField {
    /// The key.
    pub key: Bytes,
    /// Its version, 0 when absent.
    pub version: u64,
    /// Its value, `None` when absent.
    pub value: Option<Bytes>,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// The session's current id (the new one when read through an alias).
    pub id: SessionId,
    /// The session version.
    pub version: u64,
    /// Whether this read created the session.
    pub created: bool,
    /// The fields asked for, sorted by key when all were asked for.
    pub fields: Vec<ReadField>,
}

/// One operation of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`, if its version is `if_version` when given.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The version the key must have (0: absent).
        if_version: Option<u64>,
    },
    /// Delete `key`, if its version is `if_version` when given.
    Del {
        /// The key.
        key: Bytes,
        /// The version the key must have (0: absent).
        if_version: Option<u64>,
    },
}

impl Op {
    /// The key the op touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Set { key, .. } | Op::Del { key, .. } => key,
        }
    }

    fn if_version(&self) -> Option<u64> {
        match self {
            Op::Set { if_version, .. } | Op::Del { if_version, .. } => *if_version,
        }
    }
}

/// A delta to apply atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// Create the session if it does not exist.
    pub create: bool,
    /// Set the idle TTL (ms).
    pub ttl_ms: Option<u64>,
    /// Absolute lifetime (ms), for a session created here.
    pub lifetime_ms: Option<u64>,
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

/// What a successful commit returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// The session version after the commit.
    pub version: u64,
    /// Per op, the key's version after it (0 for a delete).
    pub op_versions: Vec<u64>,
}

/// What a compare-and-set returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasOutcome {
    /// The value matched and was replaced; the key's new version.
    Swapped {
        /// The new version.
        version: u64,
    },
    /// The value did not match; the key's current version and value.
    Mismatch {
        /// Current version (0: absent).
        version: u64,
        /// Current value.
        value: Option<Bytes>,
    },
}

/// Counters the server exports as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Sessions removed because they expired.
    pub expired: u64,
    /// Sessions created.
    pub created: u64,
    /// Sessions destroyed by clients.
    pub destroyed: u64,
}

/// One session in a [`StoreImage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionImage {
    /// Its id.
    pub id: SessionId,
    /// Versions and timing.
    pub meta: SessionMeta,
    /// Its fields, sorted by key.
    pub fields: Vec<(Bytes, Field)>,
}

/// A [`Store`] as plain data, sorted: see [`Store::image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImage {
    /// The settings.
    pub config: StoreConfig,
    /// Every session held (expired ones not purged yet included), by id.
    pub sessions: Vec<SessionImage>,
    /// Every alias, by old id.
    pub aliases: Vec<(SessionId, Alias)>,
    /// The last version handed out.
    pub last_version: u64,
    /// Sessions whose last access is not recorded in storage yet, by id.
    pub accessed: Vec<SessionId>,
    /// Counters.
    pub stats: StoreStats,
}

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
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
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
        }
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
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

    /// Number of regenerate aliases held.
    pub fn alias_count(&self) -> usize {
        self.aliases.len()
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

    // ---- image ---------------------------------------------------------

    /// The whole state as plain, sorted data: equal stores give equal
    /// images, and [`Store::from_image`] rebuilds an equal store. What a
    /// snapshot of a replica holds.
    pub fn image(&self) -> StoreImage {
        let mut sessions: Vec<SessionImage> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionImage {
                id: id.clone(),
                meta: s.meta,
                fields: s.fields.iter().collect(),
            })
            .collect();
        sessions.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut aliases: Vec<(SessionId, Alias)> = self
            .aliases
            .iter()
            .map(|(old, a)| (old.clone(), a.clone()))
            .collect();
        aliases.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut accessed: Vec<SessionId> = self.accessed.iter().cloned().collect();
        accessed.sort_unstable();
        StoreImage {
            config: self.config,
            sessions,
            aliases,
            last_version: self.last_version,
            accessed,
            stats: self.stats,
        }
    }

    /// The store an [`image`](Store::image) was taken of (with an empty
    /// outbox).
    pub fn from_image(image: StoreImage) -> Self {
        let mut store = Store::new(image.config);
        store.restore_sessions(
            image
                .sessions
                .into_iter()
                .map(|s| {
                    (
                        s.id,
                        Session {
                            meta: s.meta,
                            fields: PackedFields::from_entries(s.fields),
                        },
                    )
                })
                .collect(),
        );
        for (old, alias) in image.aliases {
            store.link_alias(old, alias);
        }
        store.last_version = image.last_version;
        store.accessed = image.accessed.into_iter().collect();
        store.stats = image.stats;
        store
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
            if let Some(old) = self.sessions.insert(id.clone(), session) {
                self.expiry.remove(old.meta.deadline(), &id);
            }
        }
        self.expiry.extend(deadlines);
    }

    /// Puts an alias loaded from storage back. Used only at startup.
    pub fn restore_alias(&mut self, old: SessionId, alias: Alias) {
        self.link_alias(old, alias);
    }

    /// Raises the version counter to at least `floor` (the high-water mark
    /// kept by the storage, which covers versions of destroyed sessions).
    pub fn raise_version_floor(&mut self, floor: u64) {
        self.last_version = self.last_version.max(floor);
    }

    // ---- lookups -------------------------------------------------------

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

    /// Whether `id` (or an alias of it) names a live session at `now`.
    pub fn exists(&self, now: Millis, id: &SessionId) -> bool {
        self.resolve(now, id).is_some()
    }

    /// Whether `id` is taken at `now`, as a session or as a live alias.
    fn id_taken(&self, now: Millis, id: &SessionId) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| !s.meta.is_expired(now))
            || self.aliases.get(id).is_some_and(|a| now < a.until)
    }

    /// Milliseconds until `id` expires, without sliding it.
    pub fn ttl(&self, now: Millis, id: &SessionId) -> Option<u64> {
        let id = self.resolve(now, id)?;
        self.sessions
            .get(&id)
            .map(|s| s.meta.deadline().saturating_sub(now))
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
        let Some(mut session) = self.sessions.remove(&old) else {
            return Err(StoreError::NoSession(id.to_string()));
        };
        self.expiry.remove(session.meta.deadline(), &old);
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
        self.sessions.insert(new_id.clone(), session);

        let grace = grace_ms.unwrap_or(self.config.regenerate_grace_ms);
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

    // ---- expiry --------------------------------------------------------

    /// Removes up to `max` sessions and aliases that are due at `now`.
    /// Returns how many were removed. Costs O(removed · log n).
    pub fn purge_expired(&mut self, now: Millis, max: usize) -> usize {
        let mut removed = 0;
        for (deadline, id) in self.expiry.pop_due(now, max) {
            // The index holds exactly the session's deadline (invariant), so
            // a due entry is an expired session.
            if let Some(session) = self.sessions.remove(&id) {
                debug_assert_eq!(session.meta.deadline(), deadline);
                self.outbox.push(Mutation::DelSession {
                    id: id.clone(),
                    keys: session.fields.keys().collect(),
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
        self.clear_dead(id);
        let meta = self.new_meta(now, ttl_ms, lifetime_ms);
        self.expiry.insert(meta.deadline(), id.clone());
        self.sessions.insert(
            id.clone(),
            Session {
                meta,
                fields: PackedFields::new(),
            },
        );
        self.outbox.push(Mutation::PutMeta {
            id: id.clone(),
            meta,
        });
        self.stats.created += 1;
    }

    /// Removes the session `id` and every alias leading to it.
    fn remove_session(&mut self, id: &SessionId) {
        if let Some(session) = self.sessions.remove(id) {
            self.expiry.remove(session.meta.deadline(), id);
            self.outbox.push(Mutation::DelSession {
                id: id.clone(),
                keys: session.fields.keys().collect(),
            });
            self.drop_aliases_to(id);
        }
    }

    /// Records `old → alias.target` (replacing any alias of `old`).
    fn link_alias(&mut self, old: SessionId, alias: Alias) {
        self.unlink_alias(&old);
        self.alias_expiry.insert(alias.until, old.clone());
        self.alias_sources
            .entry(alias.target.clone())
            .or_default()
            .push(old.clone());
        self.aliases.insert(old, alias);
    }

    /// Forgets the alias of `old` in memory (the caller records the
    /// deletion for the storage); returns it.
    fn unlink_alias(&mut self, old: &SessionId) -> Option<Alias> {
        let alias = self.aliases.remove(old)?;
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
    fn drop_aliases_to(&mut self, target: &SessionId) {
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

    /// Marks an access at `now`: moves the deadline and records the new
    /// metadata for the storage.
    fn slide(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>) {
        self.slide_and_record(now, id, ttl_ms, false);
    }

    /// [`Self::slide`], recording the metadata for the storage when it
    /// changed or when `force` (a commit changed the version in place).
    fn slide_and_record(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>, force: bool) {
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        let before = session.meta;
        // `max`: a clock step backwards must never shorten a session.
        session.meta.last_access = before.last_access.max(now);
        if let Some(ttl) = ttl_ms {
            session.meta.ttl_ms = ttl;
        }
        if session.meta == before && !force {
            return;
        }
        self.expiry
            .reschedule(before.deadline(), session.meta.deadline(), id);
        let only_accessed = SessionMeta {
            last_access: session.meta.last_access,
            ..before
        } == session.meta;
        if only_accessed && !force {
            self.accessed.insert(id.clone());
        } else {
            self.outbox.push(Mutation::PutMeta {
                id: id.clone(),
                meta: session.meta,
            });
            self.accessed.remove(id);
        }
    }
}

/// Parses a strict decimal i64: an optional `-`, then digits, nothing else.
pub fn parse_i64(raw: &[u8]) -> Option<i64> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}
