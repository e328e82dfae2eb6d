//! Prometheus metrics, and the HTTP endpoint that serves them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

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

/// The metrics as Prometheus text, with gauges read from the state now.
pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let (sessions, store_stats, (held, waiting), lock_stats) = shared.read(|st, _| {
        (
            st.store.len(),
            st.store.stats(),
            st.locks.counts(),
            st.locks.stats(),
        )
    });
    m.sessions.set(i64::try_from(sessions).unwrap_or(i64::MAX));
    m.sessions_expired.set(store_stats.expired);
    m.locks_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    m.lock_waiters
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    m.lock_deadlocks.set(lock_stats.deadlocks);
    m.lock_fenced.set(lock_stats.fenced);
    m.lock_expired.set(lock_stats.expired);
    m.rss.set(crate::info::rss_bytes());
    let mut text = String::new();
    let mut registry = m.registry();
    crate::persist::register_metrics(&mut registry, &shared.storage_health());
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Serves `GET /metrics` on `listener` until `shutdown`. A deliberately
/// small HTTP/1.0 responder: one request per connection, read up to 8 KiB.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                ("200 OK", render(&shared))
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
