//! The memory limit: what the store's data costs in memory (an estimate
//! kept incrementally), the limit on it, and eviction of the idlest
//! sessions to stay under it.
//!
//! The estimate counts what the store allocates for each session and alias:
//! its slot in the session map, its entries in the expiry and idle indexes,
//! the shared id, the packed field buffer, each rounded up the way the
//! allocator rounds it. It is a function of the data alone (never of the
//! process's resident memory), so whether a command is refused for memory,
//! or which sessions it evicts, is the same on every replica that applies
//! it. The server turns `--max-memory` into this limit by subtracting what
//! the rest of the process uses (docs/operations.md, "Memory").

use serde::{Deserialize, Serialize};

use super::{ExpiryIndex, Store};
use crate::fields::PackedFields;
use crate::session::Session;
use crate::{Millis, SessionId, StoreError};

/// What happens when a write needs memory over the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionPolicy {
    /// Refuse the write (`OOM`); reads, deletes and writes that shrink a
    /// session keep working. Redis's `noeviction`.
    #[default]
    NoEviction,
    /// End the sessions idle the longest (oldest last access first) until
    /// the write fits; sessions with a lock held or awaited, and sessions
    /// accessed at the current millisecond, are never evicted. Redis's
    /// `allkeys-lru`, with an exact order instead of sampling.
    AllkeysLru,
}

impl EvictionPolicy {
    /// The name the settings use: `noeviction` or `allkeys-lru`.
    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::NoEviction => "noeviction",
            EvictionPolicy::AllkeysLru => "allkeys-lru",
        }
    }
}

/// The limit on the store's accounted memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimit {
    /// Most bytes the store's data may take; 0: no limit.
    pub max_bytes: u64,
    /// What to do at the limit.
    pub policy: EvictionPolicy,
}

impl MemoryLimit {
    /// Whether the idle index is kept: only an evicting limit needs it,
    /// so without one reads do not pay for it.
    fn evicts(self) -> bool {
        self.max_bytes > 0 && self.policy == EvictionPolicy::AllkeysLru
    }
}

/// Bytes an allocation of `n` bytes takes from glibc's malloc: an 8-byte
/// header, rounded up to 16, at least 32.
pub fn alloc_size(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    ((n as u64 + 8 + 15) & !15).max(32)
}

/// Per session, besides its id and fields: its slot in the session map
/// (id and session, 104 bytes, at the map's average load of about 70 %
/// with a control byte), its entry in the expiry index and in the idle
/// index (24 bytes each in B-tree nodes about half full when filled in
/// time order), and the shared header a field buffer gets once a read
/// hands out slices of it. Calibrated against resident memory
/// (docs/benchmarks.md, "Memory limit").
pub const SESSION_OVERHEAD: u64 = 150 + 48 + 48 + 32;

/// Per regenerate alias, besides its old id: its slot in the alias map,
/// its entry in the alias expiry index and in the target's list of
/// sources.
pub const ALIAS_OVERHEAD: u64 = 80 + 48 + 48;

/// What an id costs: the shared `Arc<str>` (two counters and the bytes).
pub fn id_cost(id: &SessionId) -> u64 {
    alloc_size(16 + id.as_str().len())
}

/// What a field buffer costs.
pub fn fields_cost(fields: &PackedFields) -> u64 {
    alloc_size(fields.packed_size())
}

/// What a session costs, all in.
pub fn session_cost(id: &SessionId, session: &Session) -> u64 {
    SESSION_OVERHEAD + id_cost(id) + fields_cost(&session.fields)
}

/// What an alias costs (its target's id is the session's, shared).
pub fn alias_cost(old: &SessionId) -> u64 {
    ALIAS_OVERHEAD + id_cost(old)
}

/// Counters of the memory limit, for INFO and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// The store's accounted memory now.
    pub used_bytes: u64,
    /// The limit (0: none).
    pub max_bytes: u64,
    /// Sessions evicted to make room.
    pub evicted: u64,
    /// Writes refused for memory.
    pub oom_refusals: u64,
}

impl Store {
    /// The store's accounted memory, in bytes.
    pub fn used_memory(&self) -> u64 {
        self.used_memory
    }

    /// Whether an evicting memory limit is set ([`Store::make_room`] does
    /// something).
    pub fn evicts(&self) -> bool {
        self.idle.is_some()
    }

    /// The memory counters.
    pub fn memory_stats(&self) -> MemoryStats {
        MemoryStats {
            used_bytes: self.used_memory,
            max_bytes: self.config.memory.max_bytes,
            evicted: self.evicted,
            oom_refusals: self.oom_refusals,
        }
    }

    /// The accounted memory computed from scratch; equals
    /// [`Store::used_memory`] (what the tests check after any sequence of
    /// operations).
    pub fn recount_memory(&self) -> u64 {
        let sessions: u64 = self
            .sessions
            .iter()
            .map(|(id, s)| session_cost(id, s))
            .sum();
        let aliases: u64 = self.aliases.keys().map(alias_cost).sum();
        sessions + aliases
    }

    /// Refuses a change that allocates `adds` bytes and frees `frees` when
    /// that passes the limit. A change that adds nothing net (a read, a
    /// delete, a write that shrinks or keeps the size) always passes.
    pub(super) fn check_room(&mut self, adds: u64, frees: u64) -> Result<(), StoreError> {
        let limit = self.config.memory.max_bytes;
        let growth = adds.saturating_sub(frees);
        if limit == 0 || growth == 0 || self.used_memory.saturating_add(growth) <= limit {
            return Ok(());
        }
        self.oom_refusals += 1;
        Err(StoreError::OutOfMemory {
            used: self.used_memory,
            limit,
        })
    }

    /// Under an evicting policy, ends the idlest sessions until `need`
    /// more bytes fit under the limit: oldest last access first, never
    /// `keep`, a session `pinned` says is pinned (its lock held or
    /// awaited), or one accessed at `now` or later (touched by the command
    /// making room, or by another in the same millisecond). Returns how
    /// many were evicted; fewer than needed leaves the check to
    /// [`Store::check_room`].
    pub fn make_room(
        &mut self,
        now: Millis,
        need: u64,
        keep: Option<&SessionId>,
        pinned: &dyn Fn(&SessionId) -> bool,
    ) -> usize {
        let limit = self.config.memory.max_bytes;
        let Some(idle) = &self.idle else {
            return 0;
        };
        if limit == 0 || self.used_memory.saturating_add(need) <= limit {
            return 0;
        }
        let mut left = self.used_memory.saturating_add(need);
        let mut victims = Vec::new();
        for (last_access, id) in idle.iter() {
            if left <= limit || *last_access >= now {
                break;
            }
            if Some(id) == keep || pinned(id) {
                continue;
            }
            if let Some(s) = self.sessions.get(id) {
                left = left.saturating_sub(session_cost(id, s));
                victims.push(id.clone());
            }
        }
        for id in &victims {
            self.remove_session(id);
            self.evicted += 1;
        }
        victims.len()
    }

    /// Builds or drops the idle index after the limit changed.
    pub(super) fn sync_idle_index(&mut self) {
        match (self.config.memory.evicts(), self.idle.is_some()) {
            (true, false) => {
                let mut index = ExpiryIndex::default();
                index.extend(
                    self.sessions
                        .iter()
                        .map(|(id, s)| (s.meta.last_access, id.clone()))
                        .collect(),
                );
                self.idle = Some(index);
            }
            (false, true) => self.idle = None,
            _ => {}
        }
    }

    /// Accounts a session that joins the store.
    pub(super) fn account_insert(&mut self, id: &SessionId, session: &Session) {
        self.used_memory += session_cost(id, session);
        if let Some(idle) = &mut self.idle {
            idle.insert(session.meta.last_access, id.clone());
        }
    }

    /// Accounts a session that leaves the store.
    pub(super) fn account_remove(&mut self, id: &SessionId, session: &Session) {
        self.used_memory = self.used_memory.saturating_sub(session_cost(id, session));
        if let Some(idle) = &mut self.idle {
            idle.remove(session.meta.last_access, id);
        }
    }
}
