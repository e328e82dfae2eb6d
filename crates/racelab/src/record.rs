//! What a run recorded: each request's role, reply and timing, and the
//! run as a whole. Shared by the driver (`run`), which fills it in, and the
//! scenarios (`scenario`), which judge it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a request stands for in the picture and in the latency columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The slow request the others should not have to wait for.
    Slow,
    /// Short requests: their latency is the "fast p50/p99" column.
    Fast,
    /// Everything else (all requests alike: counter, payment, OAuth).
    Normal,
}

/// What the PHP app reports about itself (see examples/php-demo/lib/app.php).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Reply {
    pub ok: bool,
    pub dur_ms: f64,
    /// Where PHP waited for the session, ms from its own start.
    pub waits: Vec<[f64; 2]>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    pub conflicts: u64,
    pub result: Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReqResult {
    pub lane: usize,
    pub ep: &'static str,
    pub role: Role,
    pub params: Vec<(&'static str, String)>,
    /// Send and receive times, ms since the scenario's start (driver clock).
    pub start_ms: f64,
    pub end_ms: f64,
    pub status: Option<u16>,
    pub reply: Option<Reply>,
    /// Transport failure or unreadable reply.
    pub error: Option<String>,
}

impl ReqResult {
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.status == Some(200)
            && self.reply.as_ref().is_some_and(|r| r.ok)
    }

    pub fn duration_ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }

    /// Time PHP spent waiting for the session.
    pub fn wait_ms(&self) -> Option<f64> {
        self.reply
            .as_ref()
            .map(|r| r.waits.iter().map(|w| (w[1] - w[0]).max(0.0)).sum())
    }

    /// The waits on the driver's clock. PHP's timeline is aligned to the
    /// request's end (its reply is the last thing it does), so the two
    /// clocks never need to agree: this also works for a remote app.
    pub fn waits_on_driver_clock(&self) -> Vec<[f64; 2]> {
        let Some(r) = &self.reply else { return vec![] };
        let php_start = self.end_ms - r.dur_ms;
        r.waits
            .iter()
            .map(|w| {
                [
                    (php_start + w[0]).max(self.start_ms),
                    (php_start + w[1]).min(self.end_ms),
                ]
            })
            .collect()
    }

    /// Whether it failed with sessiond's word that a failover was under way
    /// (its outcome unknown, or no leader reachable): such a request may or
    /// may not have been applied.
    pub fn failed_in_failover(&self) -> bool {
        if self.ok() {
            return false;
        }
        let notes = self
            .reply
            .iter()
            .flat_map(|r| r.notes.iter().chain(&r.errors));
        self.error_text()
            .iter()
            .chain(notes)
            .any(|t| is_failover_error(t))
    }

    /// First error message, for the report.
    pub fn error_text(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        match &self.reply {
            Some(r) if !r.ok => Some(r.errors.join("; ")),
            _ if self.status != Some(200) => Some(format!("HTTP {}", self.status.unwrap_or(0))),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub results: Vec<ReqResult>,
    /// `?ep=inspect`'s result: the session, the ledger, the provider.
    pub inspect: Value,
    pub wall_ms: f64,
    pub sid: String,
}

impl ReqResult {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a failure text is sessiond's word that a failover was under way.
pub fn is_failover_error(text: &str) -> bool {
    text.contains("UNKNOWN")
        || text.contains("TRYAGAIN")
        || text.contains("may or may not have been applied")
}
