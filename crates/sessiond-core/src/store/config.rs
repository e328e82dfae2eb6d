//! Store-wide settings and their defaults.

use serde::{Deserialize, Serialize};

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
