//! Store-wide settings and their defaults.
//!
//! Each default is declared once, here, as a constant: the [`Default`]s
//! below, the server's flags (their `--help`), its settings resolution and
//! the settings table of docs/operations.md (checked by a test in the
//! server) all take it from here.

use serde::{Deserialize, Serialize};

use super::memory::MemoryLimit;

/// Idle TTL, in seconds, of a session created without one: PHP's default
/// `session.gc_maxlifetime`.
pub const DEFAULT_TTL_SECS: u64 = 1440;
/// How long, in seconds, an old id answers after a regenerate by default.
pub const DEFAULT_REGENERATE_GRACE_SECS: u64 = 30;
/// Largest value, in bytes, by default.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys in one session, by default.
pub const DEFAULT_MAX_KEYS_PER_SESSION: usize = 10_000;

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
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_keys_per_session: DEFAULT_MAX_KEYS_PER_SESSION,
        }
    }
}

/// Store-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Idle TTL of a session created without one (default
    /// [`DEFAULT_TTL_SECS`]).
    pub default_ttl_ms: u64,
    /// How long an old id keeps answering after a regenerate, by default.
    pub regenerate_grace_ms: u64,
    /// Limits on values and keys.
    pub limits: Limits,
    /// The limit on the store's accounted memory and what happens at it
    /// (none by default). A setting of the node, like the others, but not
    /// part of an image: a replica restored from a snapshot keeps its own
    /// (so images of the previous format still load).
    #[serde(skip)]
    pub memory: MemoryLimit,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            default_ttl_ms: DEFAULT_TTL_SECS * 1000,
            regenerate_grace_ms: DEFAULT_REGENERATE_GRACE_SECS * 1000,
            limits: Limits::default(),
            memory: MemoryLimit::default(),
        }
    }
}
