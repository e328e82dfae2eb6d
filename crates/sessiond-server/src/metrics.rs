//! Prometheus metrics: what the server counts, and their text format. The
//! HTTP endpoint that serves them is in the `http` module.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of one command name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// The command, e.g. `SESSION.READ`.
    pub command: &'static str,
}

/// A label set of a cluster role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// `leader`, `follower`, `learner`, `candidate`, `shutdown`.
    pub role: String,
}

/// A label set of a cluster node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's id.
    pub node: String,
}

/// A cluster node's Raft state, for the metrics: read from the same
/// `key:value` lines `CLUSTER.INFO` answers, so the two always agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterGauges {
    /// `role`.
    pub role: String,
    /// `leader_id` (0: none known).
    pub leader_id: u64,
    /// `term`.
    pub term: u64,
    /// `commit_index`.
    pub commit_index: u64,
    /// `applied_index`.
    pub applied_index: u64,
    /// `last_log_index`.
    pub last_log_index: u64,
    /// `snapshot_index`.
    pub snapshot_index: u64,
    /// How many ids `voters` lists.
    pub voters: u64,
    /// How many ids `learners` lists.
    pub learners: u64,
    /// `follower_N_lag`, on the leader: (N, entries behind).
    pub follower_lag: Vec<(u64, u64)>,
}

impl ClusterGauges {
    /// Reads `CLUSTER.INFO` text.
    pub fn from_info(text: &str) -> ClusterGauges {
        let mut g = ClusterGauges::default();
        let count = |v: &str| v.split(',').filter(|p| !p.is_empty()).count() as u64;
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let n = v.parse::<u64>().unwrap_or(0);
            match k {
                "role" => g.role = v.to_owned(),
                "leader_id" => g.leader_id = n,
                "term" => g.term = n,
                "commit_index" => g.commit_index = n,
                "applied_index" => g.applied_index = n,
                "last_log_index" => g.last_log_index = n,
                "snapshot_index" => g.snapshot_index = n,
                "voters" => g.voters = count(v),
                "learners" => g.learners = count(v),
                other => {
                    if let Some(node) = other
                        .strip_prefix("follower_")
                        .and_then(|r| r.strip_suffix("_lag"))
                        .and_then(|id| id.parse().ok())
                    {
                        g.follower_lag.push((node, n));
                    }
                }
            }
        }
        g
    }
}

/// A label set of one command name and an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The command.
    pub command: &'static str,
    /// `ok` or the error code.
    pub outcome: String,
}

/// A label set of one reason (a failed TLS handshake).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why, e.g. `unknown_ca`, `plaintext`, `timeout`.
    pub reason: &'static str,
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
    /// TLS handshakes that failed, by reason.
    pub tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// AUTH and HELLO AUTH attempts refused.
    pub auth_failures: Counter,
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
            tls_handshake_failures: Family::default(),
            auth_failures: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

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

    // A registry per scrape: the metrics of this struct are shared handles,
    // the state's values are constants read under the state lock just
    // before (counts the engine keeps are counters, not gauges).
    fn registry(&self, g: &StateGauges) -> Registry {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
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
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "auth_failures",
            "AUTH and HELLO AUTH attempts refused",
            self.auth_failures.clone(),
        );
        r.register(
            "sessions",
            "Sessions held",
            ConstGauge::new(count(g.sessions)),
        );
        r.register(
            "sessions_expired",
            "Sessions removed by expiry",
            ConstCounter::new(g.sessions_expired),
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
        r.register(
            "locks_held",
            "Locks held now",
            ConstGauge::new(count(g.locks_held)),
        );
        r.register(
            "lock_waiters",
            "Lock waiters queued now",
            ConstGauge::new(count(g.lock_waiters)),
        );
        r.register(
            "lock_deadlocks",
            "Waits refused for deadlock",
            ConstCounter::new(g.lock_deadlocks),
        );
        r.register(
            "lock_fenced_writes",
            "Writes refused for a stale fencing token",
            ConstCounter::new(g.lock_fenced),
        );
        r.register(
            "lock_expired",
            "Locks taken away by lease or max hold",
            ConstCounter::new(g.lock_expired),
        );
        r.register(
            "storage_transactions",
            "Storage transactions applied by the writer",
            ConstCounter::new(g.storage_transactions),
        );
        r.register(
            "storage_syncs",
            "Syncs of the data file to disk",
            ConstCounter::new(g.storage_syncs),
        );
        r.register(
            "storage_failed",
            "1 while storage fails and write commands are refused (MISCONF)",
            ConstGauge::new(i64::from(g.storage_failed)),
        );
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        r.register(
            "storage_failing_since_seconds",
            "Unix time of the first failure of the current storage fault (0 when none)",
            gauge(g.storage_failing_since),
        );
        r.register(
            "storage_failures",
            "Failed storage writes, syncs and reopens",
            ConstCounter::new(g.storage_failures),
        );
        r.register(
            "storage_recoveries",
            "Times storage came back after failing",
            ConstCounter::new(g.storage_recoveries),
        );
        r.register(
            "storage_refused_writes",
            "Write commands refused because storage was failing",
            ConstCounter::new(g.storage_refused_writes),
        );
        r.register(
            "storage_undone_batches",
            "Batches of changes storage failed to sync under durability always, undone (their writes were answered with an error)",
            ConstCounter::new(g.storage_undone_batches),
        );
        r.register(
            "storage_queued_batches",
            "Batches of changes not yet on disk",
            gauge(g.storage_queued_batches),
        );
        r.register(
            "storage_queued_changes",
            "Changes not yet on disk",
            gauge(g.storage_queued_changes),
        );
        r.register(
            "storage_change_log_bytes",
            "Bytes in the change log sessions.log (0 when writes go to the data file directly)",
            gauge(g.change_log_bytes),
        );
        r.register(
            "storage_change_log_absorbing_rows",
            "Rows of the change log being absorbed not yet written into the data file",
            gauge(g.change_log_absorbing_rows),
        );
        r.register(
            "storage_change_log_absorbed",
            "Change logs absorbed into the data file since start",
            ConstCounter::new(g.change_log_absorbed),
        );
        r.register(
            "memory_used_bytes",
            "Memory the sessions take as accounted, plus what --max-memory holds back for the rest of the process",
            gauge(g.memory_used),
        );
        r.register(
            "memory_limit_bytes",
            "--max-memory (0: no limit)",
            gauge(g.memory_limit),
        );
        r.register(
            "evicted_sessions",
            "Sessions evicted to stay under --max-memory",
            ConstCounter::new(g.evicted_sessions),
        );
        r.register(
            "oom_refusals",
            "Writes refused with OOM at --max-memory",
            ConstCounter::new(g.oom_refusals),
        );
        r.register(
            "resident_memory_bytes",
            "Resident memory of the process",
            ConstGauge::new(i64::try_from(g.rss_bytes).unwrap_or(i64::MAX)),
        );
        if let Some(c) = &g.cluster {
            register_cluster(&mut r, c);
        }
        r
    }
}

/// A cluster node's gauges (see [`ClusterGauges`]).
fn register_cluster(r: &mut Registry, c: &ClusterGauges) {
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let role: Family<RoleLabel, Gauge> = Family::default();
    role.get_or_create(&RoleLabel {
        role: c.role.clone(),
    })
    .set(1);
    r.register(
        "cluster_role",
        "1 for this node's Raft role (leader, follower, learner, candidate)",
        role,
    );
    for (name, help, v) in [
        (
            "cluster_leader_id",
            "The leader this node knows (0: none)",
            c.leader_id,
        ),
        ("cluster_term", "The current Raft term", c.term),
        (
            "cluster_commit_index",
            "The last log index known committed",
            c.commit_index,
        ),
        (
            "cluster_applied_index",
            "The last log index applied to the engine",
            c.applied_index,
        ),
        (
            "cluster_last_log_index",
            "The last log index this node holds",
            c.last_log_index,
        ),
        (
            "cluster_snapshot_index",
            "The log index of the last snapshot",
            c.snapshot_index,
        ),
        ("cluster_voters", "Voting members", c.voters),
        ("cluster_learners", "Non-voting members", c.learners),
    ] {
        r.register(name, help, gauge(v));
    }
    if !c.follower_lag.is_empty() {
        let lag: Family<NodeLabel, Gauge> = Family::default();
        for (node, entries) in &c.follower_lag {
            lag.get_or_create(&NodeLabel {
                node: node.to_string(),
            })
            .set(i64::try_from(*entries).unwrap_or(i64::MAX));
        }
        r.register(
            "cluster_follower_lag_entries",
            "On the leader: log entries each follower is behind",
            lag,
        );
    }
}

/// What the state holds right now, read by whoever renders the metrics
/// (the metrics module does not look into the state itself).
#[derive(Debug, Clone, Default)]
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
    /// Storage transactions applied so far.
    pub storage_transactions: u64,
    /// Syncs to disk so far.
    pub storage_syncs: u64,
    /// Whether storage is failing now (writes refused).
    pub storage_failed: bool,
    /// Unix time the current storage fault began (0: none).
    pub storage_failing_since: u64,
    /// Failed storage writes, syncs and reopens so far.
    pub storage_failures: u64,
    /// Times storage came back after failing.
    pub storage_recoveries: u64,
    /// Write commands refused while storage failed.
    pub storage_refused_writes: u64,
    /// Batches undone after storage failures (`always`).
    pub storage_undone_batches: u64,
    /// Batches of changes not yet on disk.
    pub storage_queued_batches: u64,
    /// Changes not yet on disk.
    pub storage_queued_changes: u64,
    /// Bytes in the change log (0 without one).
    pub change_log_bytes: u64,
    /// Rows of the log being absorbed not yet in the data file.
    pub change_log_absorbing_rows: u64,
    /// Logs absorbed into the data file since start.
    pub change_log_absorbed: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// On a cluster node: its Raft state.
    pub cluster: Option<ClusterGauges>,
    /// Accounted memory (INFO's `used_memory`).
    pub memory_used: u64,
    /// `--max-memory`.
    pub memory_limit: u64,
    /// Sessions evicted so far.
    pub evicted_sessions: u64,
    /// Writes refused for memory so far.
    pub oom_refusals: u64,
}

/// The two text formats of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`): counter families
    /// named without `_total`, ends with `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`): what Prometheus
    /// reads when it did not ask for OpenMetrics.
    Prometheus,
}

impl Format {
    /// The format a scraper's `Accept` header asks for: OpenMetrics when it
    /// names it, the Prometheus text format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family's
/// HELP and TYPE lines name its samples (`x_total`), and there are no `# UNIT`
/// or `# EOF` lines. Samples are written the same way in both.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Metrics {
    /// The metrics in `format`, with `gauges` read from the state.
    pub fn render(&self, gauges: StateGauges, format: Format) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry(&gauges));
        match format {
            Format::OpenMetrics => text,
            Format::Prometheus => openmetrics_to_prometheus(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_gauges_come_from_the_cluster_info_lines() {
        let info = "node_id:1\r\nrole:leader\r\nleader_id:1\r\nterm:7\r\ncommit_index:42\r\napplied_index:42\r\nlast_log_index:43\r\nsnapshot_index:20\r\nmembers:1=a,2=b,3=c,4=d\r\nvoters:1,2,3\r\nlearners:4\r\nfollower_2_lag:0\r\nfollower_3_lag:5\r\n";
        let c = ClusterGauges::from_info(info);
        assert_eq!(c.role, "leader");
        assert_eq!(
            (c.leader_id, c.term, c.commit_index, c.last_log_index),
            (1, 7, 42, 43)
        );
        assert_eq!((c.voters, c.learners), (3, 1));
        assert_eq!(c.follower_lag, vec![(2, 0), (3, 5)]);
        let text = Metrics::default().render(
            StateGauges {
                cluster: Some(c),
                ..StateGauges::default()
            },
            Format::Prometheus,
        );
        for line in [
            "sessiond_cluster_role{role=\"leader\"} 1",
            "sessiond_cluster_term 7",
            "sessiond_cluster_voters 3",
            "sessiond_cluster_follower_lag_entries{node=\"3\"} 5",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        // No learners line for a single server.
        let single = Metrics::default().render(StateGauges::default(), Format::Prometheus);
        assert!(!single.contains("sessiond_cluster_"), "{single}");
    }

    #[test]
    fn prometheus_format_names_counter_families_by_their_samples() {
        let m = Metrics::default();
        m.record("PING", "ok", Duration::from_millis(1));
        let gauges = StateGauges {
            sessions_expired: 7,
            ..Default::default()
        };
        let om = m.render(gauges.clone(), Format::OpenMetrics);
        assert!(
            om.contains("# TYPE sessiond_sessions_expired counter\n"),
            "{om}"
        );
        assert!(om.contains("sessiond_sessions_expired_total 7\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let prom = m.render(gauges, Format::Prometheus);
        assert!(
            prom.contains("# TYPE sessiond_sessions_expired_total counter\n"),
            "{prom}"
        );
        assert!(
            prom.contains("# HELP sessiond_commands_total Commands"),
            "{prom}"
        );
        assert!(prom.contains("# TYPE sessiond_sessions gauge\n"), "{prom}");
        for name in [
            "sessiond_memory_used_bytes ",
            "sessiond_memory_limit_bytes ",
            "sessiond_evicted_sessions_total ",
            "sessiond_oom_refusals_total ",
        ] {
            assert!(prom.contains(name), "{name} in {prom}");
        }
        assert!(!prom.contains("# EOF"));
    }

    #[test]
    fn accept_header_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    }
}
