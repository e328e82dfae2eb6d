//! Request ids: what makes a retried write safe.
//!
//! A client that loses its connection in the middle of a write does not
//! know whether the write was applied (in a cluster, the leader may have
//! committed it and died before answering). Sent again on another node, a
//! commit, an increment or a regenerate would apply twice. So such a write
//! may carry a request id (`REQID`, the client's id and a sequence number);
//! the engine remembers the answer it gave to each id for a while and
//! answers a repeat from memory without applying anything.
//!
//! The table is part of the engine's state, so it is in every snapshot and
//! every replica builds the same one from the log. Entries are kept for
//! [`RETENTION_MS`] of engine time and at most [`MAX_ENTRIES`] at once
//! (oldest dropped first): a retry comes within seconds of the failure
//! (clients retry after an election, which takes about a second), and
//! without a bound a busy server would grow the table without end.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::Response;
use crate::{EngineError, Millis};

/// How long an answer is remembered (engine time).
pub const RETENTION_MS: Millis = 120_000;

/// How many answers are remembered at most.
pub const MAX_ENTRIES: usize = 200_000;

/// Longest request id accepted (bytes).
pub const MAX_REQID_BYTES: usize = 128;

/// One remembered answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeEntry {
    /// The request id.
    pub reqid: String,
    /// The command it came with (a reused id with another command is
    /// refused rather than answered with someone else's result).
    pub command: String,
    /// When it was applied.
    pub at: Millis,
    /// What it answered.
    pub result: Result<Response, EngineError>,
}

/// The remembered answers, oldest first.
#[derive(Debug, Default)]
pub(super) struct DedupeTable {
    by_id: HashMap<String, DedupeEntry>,
    // Ids in the order they were recorded (their `at` never decreases: the
    // engine's time does not go back), for pruning from the front.
    order: VecDeque<String>,
}

impl DedupeTable {
    /// Drops what is older than the retention, and the oldest beyond the
    /// count limit.
    pub(super) fn prune(&mut self, now: Millis) {
        while let Some(first) = self.order.front() {
            let expired = self
                .by_id
                .get(first)
                .is_none_or(|e| e.at.saturating_add(RETENTION_MS) <= now);
            if !expired && self.order.len() <= MAX_ENTRIES {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }

    /// The answer remembered for `reqid`.
    pub(super) fn get(&self, reqid: &str) -> Option<&DedupeEntry> {
        self.by_id.get(reqid)
    }

    /// Remembers an answer.
    pub(super) fn insert(&mut self, entry: DedupeEntry) {
        let id = entry.reqid.clone();
        if self.by_id.insert(id.clone(), entry).is_none() {
            self.order.push_back(id);
        }
    }

    /// Forgets the answers to `reqids` (their writes were undone: a retry
    /// must apply again).
    pub(super) fn forget(&mut self, reqids: &[String]) {
        let mut gone = 0;
        for id in reqids {
            if self.by_id.remove(id).is_some() {
                gone += 1;
            }
        }
        if gone > 0 {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
    }

    /// How many answers are remembered.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every entry, oldest first (for the image).
    pub(super) fn entries(&self) -> Vec<DedupeEntry> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect()
    }

    /// The table an image's entries describe.
    pub(super) fn from_entries(entries: Vec<DedupeEntry>) -> Self {
        let mut table = Self::default();
        for e in entries {
            table.insert(e);
        }
        table
    }
}
