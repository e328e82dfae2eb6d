//! Prometheus metrics: what the server counts, and their text format. The
//! HTTP endpoint that serves them is in the `http` module.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of one command name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// The command, e.g. `SESSION.READ`.
    pub command: &'static str,
}

/// A label set of one command name and an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The command.
    pub command: &'static str,
    /// `ok` or the error code.
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs … ~20 s.
    Histogram::new(exponential_buckets(0.00001, 2.0, 22))
}

/// Every metric the server exports.
pub struct Metrics {
    /// Commands by name and outcome.
    pub commands: Family<OutcomeLabel, Counter>,
    /// Command latency by name (seconds), including waits.
    pub latency: Family<CommandLabel, Histogram, fn() -> Histogram>,
    // Calls and failed calls by command, for INFO's Commandstats (a
    // prometheus Family cannot be iterated).
    command_counts: Mutex<BTreeMap<&'static str, (u64, u64)>>,
    /// Connections accepted.
    pub connections_total: Counter,
    /// Connections refused at the limit.
    pub rejected_connections: Counter,
    /// Connections open now.
    pub connections: Gauge,
    /// Lock waits that ended in a grant (seconds).
    pub lock_wait: Histogram,
    /// Lock waits that timed out.
    pub lock_timeouts: Counter,
    /// How long locks were held, from grant to their end (seconds).
    pub lock_hold: Histogram,
    sessions: Gauge,
    sessions_expired: Gauge<u64, AtomicU64>,
    locks_held: Gauge,
    lock_waiters: Gauge,
    lock_deadlocks: Gauge<u64, AtomicU64>,
    lock_fenced: Gauge<u64, AtomicU64>,
    lock_expired: Gauge<u64, AtomicU64>,
    rss: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            commands: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            command_counts: Mutex::default(),
            connections_total: Counter::default(),
            rejected_connections: Counter::default(),
            connections: Gauge::default(),
            lock_wait: latency_histogram(),
            lock_timeouts: Counter::default(),
            // The lock table counts in whole ms: 1 ms … ~2 min.
            lock_hold: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            sessions: Gauge::default(),
            sessions_expired: Gauge::default(),
            locks_held: Gauge::default(),
            lock_waiters: Gauge::default(),
            lock_deadlocks: Gauge::default(),
            lock_fenced: Gauge::default(),
            lock_expired: Gauge::default(),
            rss: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Records one command.
    pub fn record(&self, command: &'static str, outcome: &str, took: Duration) {
        self.commands
            .get_or_create(&OutcomeLabel {
                command,
                outcome: outcome.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&CommandLabel { command })
            .observe(took.as_secs_f64());
        let mut counts = self.command_counts.lock();
        let (calls, failed) = counts.entry(command).or_default();
        *calls += 1;
        if outcome != "ok" {
            *failed += 1;
        }
    }

    /// Commands processed in all.
    pub fn commands_total(&self) -> u64 {
        self.command_counts
            .lock()
            .values()
            .map(|(calls, _)| calls)
            .sum()
    }

    /// INFO's Commandstats section.
    pub fn command_stats(&self) -> String {
        self.command_counts
            .lock()
            .iter()
            .map(|(c, (calls, failed))| {
                format!(
                    "cmdstat_{}:calls={calls},failed_calls={failed}\r\n",
                    c.to_lowercase()
                )
            })
            .collect()
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("sessiond");
        r.register(
            "commands",
            "Commands processed, by command and outcome",
            self.commands.clone(),
        );
        r.register(
            "command_duration_seconds",
            "Command latency including lock and disk waits",
            self.latency.clone(),
        );
        r.register(
            "connections_accepted",
            "Connections accepted",
            self.connections_total.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections refused at max-connections",
            self.rejected_connections.clone(),
        );
        r.register("connections", "Connections open", self.connections.clone());
        r.register("sessions", "Sessions held", self.sessions.clone());
        r.register(
            "sessions_expired",
            "Sessions removed by expiry",
            self.sessions_expired.clone(),
        );
        r.register(
            "lock_wait_seconds",
            "Time from a queued acquire to its grant",
            self.lock_wait.clone(),
        );
        r.register(
            "lock_timeouts",
            "Lock waits that ran out",
            self.lock_timeouts.clone(),
        );
        r.register(
            "lock_hold_seconds",
            "Time from a grant to its release, expiry, break or disconnect",
            self.lock_hold.clone(),
        );
        r.register("locks_held", "Locks held now", self.locks_held.clone());
        r.register(
            "lock_waiters",
            "Lock waiters queued now",
            self.lock_waiters.clone(),
        );
        r.register(
            "lock_deadlocks",
            "Waits refused for deadlock",
            self.lock_deadlocks.clone(),
        );
        r.register(
            "lock_fenced_writes",
            "Writes refused for a stale fencing token",
            self.lock_fenced.clone(),
        );
        r.register(
            "lock_expired",
            "Locks taken away by lease or max hold",
            self.lock_expired.clone(),
        );
        r.register("resident_memory_bytes", "Resident memory", self.rss.clone());
        r
    }
}

/// What the state holds right now, read by whoever renders the metrics
/// (the metrics module does not look into the state itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct StateGauges {
    /// Sessions held.
    pub sessions: usize,
    /// Sessions removed by expiry so far.
    pub sessions_expired: u64,
    /// Locks held.
    pub locks_held: usize,
    /// Lock waiters queued.
    pub lock_waiters: usize,
    /// Waits refused for deadlock so far.
    pub lock_deadlocks: u64,
    /// Fenced writes refused so far.
    pub lock_fenced: u64,
    /// Locks taken away by lease or max hold so far.
    pub lock_expired: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

impl Metrics {
    /// The metrics as Prometheus text, with `gauges` read from the state.
    pub fn render(&self, gauges: StateGauges) -> String {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.sessions.set(count(gauges.sessions));
        self.sessions_expired.set(gauges.sessions_expired);
        self.locks_held.set(count(gauges.locks_held));
        self.lock_waiters.set(count(gauges.lock_waiters));
        self.lock_deadlocks.set(gauges.lock_deadlocks);
        self.lock_fenced.set(gauges.lock_fenced);
        self.lock_expired.set(gauges.lock_expired);
        self.rss.set(gauges.rss_bytes);
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry());
        text
    }
}
