//! The reference model of sessions and regenerate aliases, written from
//! docs/protocol.md and docs/design.md for clarity, not speed: plain
//! `BTreeMap`s, expiry found by looking at every deadline, alias chains
//! followed one hop at a time. It shares only plain data types with the
//! engine (ids, bytes, the request and reply structs, the error enum).

use std::collections::BTreeMap;

use bytes::Bytes;
use sessiond_core::{
    CasOutcome, CommitOutcome, CommitRequest, Millis, Op, ReadField, ReadOptions, ReadResult,
    SessionId, StoreError,
};

/// The settings the model needs (the same numbers the engine is built with).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub default_ttl_ms: u64,
    pub grace_ms: u64,
    pub max_value_bytes: usize,
    pub max_keys: usize,
}

/// One session. Sessions past their deadline stay in the map until the
/// purge (a tick) removes them, because the tick's reply counts them and the
/// next deadline the engine reports still includes them; every lookup
/// treats them as gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sess {
    pub version: u64,
    pub created: Millis,
    pub last_access: Millis,
    pub ttl_ms: u64,
    pub lifetime_deadline: Option<Millis>,
    /// key → (version, value).
    pub fields: BTreeMap<Bytes, (u64, Bytes)>,
}

impl Sess {
    /// `min(last_access + ttl, created + lifetime)`.
    pub fn deadline(&self) -> Millis {
        let idle = self.last_access.saturating_add(self.ttl_ms);
        self.lifetime_deadline.map_or(idle, |l| l.min(idle))
    }

    /// Alive strictly before its deadline.
    pub fn alive(&self, now: Millis) -> bool {
        now < self.deadline()
    }
}

/// What storage keeps of the sessions: see [`Sessions::durable`].
pub type Durable = (
    Vec<(
        SessionId,
        u64,
        Millis,
        u64,
        Option<Millis>,
        BTreeMap<Bytes, (u64, Bytes)>,
    )>,
    BTreeMap<SessionId, Alias>,
);

/// An old id answering for a regenerated session until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub target: SessionId,
    pub until: Millis,
}

/// The engine follows at most this many alias hops (docs/design.md: "longer
/// chains need many regenerates inside one grace period and end at this
/// bound"; the protocol does not say). A chain longer than this resolves to
/// nothing, in the engine and here.
const MAX_HOPS: usize = 8;

/// Coverage counters, so the test can show it reached the states it claims.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    pub alias_hops_2_plus: u64,
    pub expired_lookups: u64,
}

#[derive(Debug)]
pub struct Sessions {
    pub cfg: Config,
    pub sessions: BTreeMap<SessionId, Sess>,
    pub aliases: BTreeMap<SessionId, Alias>,
    pub last_version: u64,
    pub coverage: std::cell::Cell<Coverage>,
}

impl Sessions {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            sessions: BTreeMap::new(),
            aliases: BTreeMap::new(),
            last_version: 0,
            coverage: std::cell::Cell::default(),
        }
    }

    /// The live session `id` answers for: itself, or through live aliases.
    pub fn resolve(&self, now: Millis, id: &SessionId) -> Option<SessionId> {
        let mut current = id.clone();
        for hop in 0..=MAX_HOPS {
            if let Some(s) = self.sessions.get(&current) {
                let mut c = self.coverage.get();
                if hop >= 2 {
                    c.alias_hops_2_plus += 1;
                }
                if !s.alive(now) {
                    c.expired_lookups += 1;
                }
                self.coverage.set(c);
                return s.alive(now).then_some(current);
            }
            match self.aliases.get(&current) {
                Some(a) if now < a.until => current = a.target.clone(),
                _ => return None,
            }
        }
        None
    }

    /// Taken: a live session or a live alias.
    pub fn id_taken(&self, now: Millis, id: &SessionId) -> bool {
        self.sessions.get(id).is_some_and(|s| s.alive(now))
            || self.aliases.get(id).is_some_and(|a| now < a.until)
    }

    /// Removes every alias leading to `target`, directly or through a chain.
    fn drop_aliases_to(&mut self, target: &SessionId) {
        let mut work = vec![target.clone()];
        while let Some(t) = work.pop() {
            let olds: Vec<SessionId> = self
                .aliases
                .iter()
                .filter(|(_, a)| a.target == t)
                .map(|(old, _)| old.clone())
                .collect();
            for old in olds {
                self.aliases.remove(&old);
                work.push(old);
            }
        }
    }

    /// A session goes (destroy, expiry): every alias of it goes too.
    fn remove_session(&mut self, id: &SessionId) {
        if self.sessions.remove(id).is_some() {
            self.drop_aliases_to(id);
        }
    }

    /// Before a new session takes `id`: whatever dead session or alias had
    /// that id goes, and so does every alias still leading to `id` (from a
    /// session that moved away, or through an alias that ended): "an old id
    /// can never answer for a later session that takes the same id".
    fn clear_for_new(&mut self, id: &SessionId) {
        self.remove_session(id);
        self.aliases.remove(id);
        self.drop_aliases_to(id);
    }

    fn insert_new(
        &mut self,
        now: Millis,
        id: &SessionId,
        ttl_ms: Option<u64>,
        lifetime_ms: Option<u64>,
    ) {
        self.clear_for_new(id);
        self.sessions.insert(
            id.clone(),
            Sess {
                version: 0,
                created: now,
                last_access: now,
                ttl_ms: ttl_ms.unwrap_or(self.cfg.default_ttl_ms),
                lifetime_deadline: lifetime_ms.map(|l| now.saturating_add(l)),
                fields: BTreeMap::new(),
            },
        );
    }

    /// An access: the idle expiry slides from now (never backwards).
    fn slide(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>) {
        if let Some(s) = self.sessions.get_mut(id) {
            s.last_access = s.last_access.max(now);
            if let Some(t) = ttl_ms {
                s.ttl_ms = t;
            }
        }
    }

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

    pub fn read(
        &mut self,
        now: Millis,
        id: &SessionId,
        opts: &ReadOptions,
    ) -> (Option<ReadResult>, bool) {
        let (canonical, created) = match self.resolve(now, id) {
            Some(c) => {
                self.slide(now, &c, opts.ttl_ms);
                (c, false)
            }
            None if opts.create => {
                self.insert_new(now, id, opts.ttl_ms, opts.lifetime_ms);
                (id.clone(), true)
            }
            None => return (None, false),
        };
        let s = &self.sessions[&canonical];
        let fields = match &opts.keys {
            // The keys asked for, in the order asked (repeats repeated).
            Some(keys) => keys
                .iter()
                .map(|k| match s.fields.get(k) {
                    Some((v, val)) => ReadField {
                        key: k.clone(),
                        version: *v,
                        value: Some(val.clone()),
                    },
                    None => ReadField {
                        key: k.clone(),
                        version: 0,
                        value: None,
                    },
                })
                .collect(),
            None => s
                .fields
                .iter()
                .map(|(k, (v, val))| ReadField {
                    key: k.clone(),
                    version: *v,
                    value: Some(val.clone()),
                })
                .collect(),
        };
        (
            Some(ReadResult {
                id: canonical,
                version: s.version,
                created,
                fields,
            }),
            created,
        )
    }

    pub fn commit(
        &mut self,
        now: Millis,
        id: &SessionId,
        req: &CommitRequest,
    ) -> Result<CommitOutcome, StoreError> {
        let existing = self.resolve(now, id);
        let mut fields = match &existing {
            Some(c) => self.sessions[c].fields.clone(),
            None if req.create => BTreeMap::new(),
            None => return Err(StoreError::NoSession(id.to_string())),
        };
        let key_of = |op: &Op| match op {
            Op::Set { key, .. } | Op::Del { key, .. } => key.clone(),
        };
        let cond_of = |op: &Op| match op {
            Op::Set { if_version, .. } | Op::Del { if_version, .. } => *if_version,
        };
        // Every condition is checked against the versions before the commit;
        // each conflicting key is listed once, in the order of the ops.
        let mut conflicts: Vec<Bytes> = Vec::new();
        for op in &req.ops {
            let key = key_of(op);
            if let Some(want) = cond_of(op) {
                let have = fields.get(&key).map_or(0, |f| f.0);
                if have != want && !conflicts.contains(&key) {
                    conflicts.push(key);
                }
            }
        }
        // Unspecified which error wins when a commit both conflicts and
        // exceeds a limit. The engine checks value sizes first (the first
        // op whose value is too large), then the conditions, then the key
        // count: the model does the same.
        for op in &req.ops {
            if let Op::Set { key, value, .. } = op
                && value.len() > self.cfg.max_value_bytes
            {
                return Err(StoreError::ValueTooLarge {
                    key: key.clone(),
                    size: value.len(),
                    limit: self.cfg.max_value_bytes,
                });
            }
        }
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict(conflicts));
        }
        let version = self.last_version + 1;
        for op in &req.ops {
            match op {
                Op::Set { key, value, .. } => {
                    fields.insert(key.clone(), (version, value.clone()));
                }
                Op::Del { key, .. } => {
                    fields.remove(key);
                }
            }
        }
        if fields.len() > self.cfg.max_keys {
            return Err(StoreError::TooManyKeys {
                count: fields.len(),
                limit: self.cfg.max_keys,
            });
        }
        let canonical = match existing {
            Some(c) => c,
            None => {
                self.insert_new(now, id, req.ttl_ms, req.lifetime_ms);
                id.clone()
            }
        };
        self.last_version = version;
        let s = self.sessions.get_mut(&canonical).expect("live session");
        s.fields = fields;
        s.version = version;
        self.slide(now, &canonical, req.ttl_ms);
        Ok(CommitOutcome {
            version,
            op_versions: req
                .ops
                .iter()
                .map(|op| match op {
                    Op::Set { .. } => version,
                    Op::Del { .. } => 0,
                })
                .collect(),
        })
    }

    /// The value of `key` in the live session `id` answers for.
    pub fn field(&self, now: Millis, id: &SessionId, key: &Bytes) -> Option<(u64, Bytes)> {
        let c = self.resolve(now, id)?;
        self.sessions[&c].fields.get(key).cloned()
    }

    pub fn incr(
        &mut self,
        now: Millis,
        id: &SessionId,
        key: &Bytes,
        delta: i64,
        create: bool,
    ) -> Result<(i64, u64), StoreError> {
        if self.resolve(now, id).is_none() && !create {
            return Err(StoreError::NoSession(id.to_string()));
        }
        let base = match self.field(now, id, key) {
            Some((_, v)) => strict_i64(&v).ok_or_else(|| StoreError::NotInteger(key.clone()))?,
            None => 0,
        };
        let value = base
            .checked_add(delta)
            .ok_or_else(|| StoreError::Overflow(key.clone()))?;
        let out = self.commit(
            now,
            id,
            &CommitRequest {
                create,
                ops: vec![Op::Set {
                    key: key.clone(),
                    value: Bytes::from(value.to_string()),
                    if_version: None,
                }],
                ..Default::default()
            },
        )?;
        Ok((value, out.version))
    }

    pub fn cas(
        &mut self,
        now: Millis,
        id: &SessionId,
        key: &Bytes,
        expected: &Bytes,
        new: &Bytes,
    ) -> Result<CasOutcome, StoreError> {
        let c = self
            .resolve(now, id)
            .ok_or_else(|| StoreError::NoSession(id.to_string()))?;
        match self.sessions[&c].fields.get(key).cloned() {
            Some((version, value)) if value == expected => {
                let out = self.commit(
                    now,
                    &c,
                    &CommitRequest {
                        ops: vec![Op::Set {
                            key: key.clone(),
                            value: new.clone(),
                            if_version: Some(version),
                        }],
                        ..Default::default()
                    },
                )?;
                Ok(CasOutcome::Swapped {
                    version: out.version,
                })
            }
            other => {
                // A mismatch is an access too.
                self.slide(now, &c, None);
                Ok(CasOutcome::Mismatch {
                    version: other.as_ref().map_or(0, |f| f.0),
                    value: other.map(|f| f.1),
                })
            }
        }
    }

    pub fn touch(&mut self, now: Millis, id: &SessionId, ttl_ms: Option<u64>) -> bool {
        match self.resolve(now, id) {
            Some(c) => {
                self.slide(now, &c, ttl_ms);
                true
            }
            None => false,
        }
    }

    pub fn destroy(&mut self, now: Millis, id: &SessionId) -> bool {
        match self.resolve(now, id) {
            Some(c) => {
                self.remove_session(&c);
                true
            }
            None => false,
        }
    }

    pub fn ttl(&self, now: Millis, id: &SessionId) -> Option<u64> {
        let c = self.resolve(now, id)?;
        Some(self.sessions[&c].deadline() - now)
    }

    /// Moves the session `old` (a live canonical id) to `new_id`, which the
    /// caller checked is free; `old` answers for the grace period.
    pub fn regenerate(
        &mut self,
        now: Millis,
        old: &SessionId,
        new_id: &SessionId,
        grace: Option<u64>,
    ) {
        let mut s = self.sessions.remove(old).expect("live session");
        self.clear_for_new(new_id);
        // The move counts as an access.
        s.last_access = now;
        self.sessions.insert(new_id.clone(), s);
        let grace = grace.unwrap_or(self.cfg.grace_ms);
        if grace > 0 {
            // Aliases that led to `old` now lead on through it (a chain).
            self.aliases.insert(
                old.clone(),
                Alias {
                    target: new_id.clone(),
                    until: now + grace,
                },
            );
        }
        // With GRACE 0 the aliases that led to `old` lead nowhere: they
        // answer nothing (and are dropped when a session takes `old`).
    }

    /// The purge of a tick: up to `max` dead sessions, earliest deadline
    /// first (ties by id), each with its aliases; then, within what is left
    /// of `max`, ended aliases, earliest first. Returns how many went.
    pub fn purge(&mut self, now: Millis, max: usize) -> usize {
        let mut dead: Vec<(Millis, SessionId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.alive(now))
            .map(|(id, s)| (s.deadline(), id.clone()))
            .collect();
        dead.sort();
        dead.truncate(max);
        let mut removed = dead.len();
        for (_, id) in dead {
            self.remove_session(&id);
        }
        let mut ended: Vec<(Millis, SessionId)> = self
            .aliases
            .iter()
            .filter(|(_, a)| a.until <= now)
            .map(|(old, a)| (a.until, old.clone()))
            .collect();
        ended.sort();
        ended.truncate(max - removed);
        removed += ended.len();
        for (_, old) in ended {
            self.aliases.remove(&old);
        }
        removed
    }

    /// What storage must keep: every session but its last access (reads
    /// and touches move that in memory and reach storage in bulk later),
    /// and every alias. An input that changes this must wait for the disk
    /// under `--durability always`; one that does not, never waits
    /// (docs/design.md, Durability).
    pub fn durable(&self) -> Durable {
        let sessions = self
            .sessions
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.version,
                    s.created,
                    s.ttl_ms,
                    s.lifetime_deadline,
                    s.fields.clone(),
                )
            })
            .collect();
        (sessions, self.aliases.clone())
    }

    /// Every deadline still held (dead sessions and ended aliases not purged
    /// yet included): what the engine reports as its next deadline.
    pub fn deadlines(&self) -> impl Iterator<Item = Millis> + '_ {
        self.sessions
            .values()
            .map(Sess::deadline)
            .chain(self.aliases.values().map(|a| a.until))
    }
}

/// A strict decimal i64: an optional `-`, then digits only.
fn strict_i64(raw: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(raw).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
