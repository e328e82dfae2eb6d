//! Results: the JSON document and the tables printed from it.

use serde::{Deserialize, Serialize};

use crate::driver::Lat;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub date_utc: String,
    pub command: String,
    pub quick: bool,
    pub machine: Machine,
    pub sessiond: String,
    pub versions: Vec<String>,
    pub ping: Vec<PingRow>,
    pub cycle: Vec<CycleRow>,
    pub locked: Vec<CycleRow>,
    pub handoff: Vec<HandoffRow>,
    pub scale: Option<Scale>,
    pub php: Vec<PhpRow>,
    /// The cluster benchmark: session cycle and locked cycle rows.
    #[serde(default)]
    pub cluster_cycle: Vec<CycleRow>,
    #[serde(default)]
    pub cluster_locked: Vec<CycleRow>,
    #[serde(default)]
    pub failover: Option<Failover>,
    pub notes: Vec<String>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gb: f64,
    pub kernel: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PingRow {
    pub store: String,
    pub lat: Lat,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CycleRow {
    pub store: String,
    pub durability: String,
    pub size: usize,
    pub conns: usize,
    pub secs: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub lat: Lat,
    /// Locked cycle only: increments that did not survive.
    pub lost_updates: Option<u64>,
    /// Locked cycle, phpredis recipe: cycles that ran without the lock.
    pub ran_unlocked: Option<u64>,
}

/// Leader kills: from each SIGKILL (or SIGTERM) to the first acknowledged
/// write.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Failover {
    pub kills: usize,
    /// How the leader was stopped ("SIGKILL" when absent: older runs).
    #[serde(default)]
    pub signal: String,
    pub samples_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Increments acknowledged (one per kill, one before); the counter's
    /// final value must equal it (no retry applied twice).
    pub increments_acknowledged: u64,
    pub final_value: i64,
}

impl Failover {
    /// The signal the leader got.
    pub fn signal_name(&self) -> &str {
        if self.signal.is_empty() {
            "SIGKILL"
        } else {
            &self.signal
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HandoffRow {
    pub contender: String,
    pub clients: usize,
    pub secs: f64,
    pub cycles: u64,
    pub cycles_per_sec: f64,
    /// Release by one client → grant seen by the next waiter.
    pub handoff: Lat,
    /// Request → grant, for every acquire.
    pub acquire: Lat,
    pub gave_up: u64,
    pub ran_unlocked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Scale {
    pub sessions: u64,
    pub session_bytes: usize,
    pub sessiond_load_secs: f64,
    pub sessiond_rss_base: u64,
    pub sessiond_rss_loaded: u64,
    pub sessiond_rss_after_restart: u64,
    pub sessiond_bytes_per_session: f64,
    pub sessiond_bytes_per_session_after_restart: f64,
    pub redis_load_secs: f64,
    pub redis_rss_base: u64,
    pub redis_rss_loaded: u64,
    pub redis_bytes_per_session: f64,
    pub data_file_bytes: u64,
    pub shutdown_secs: f64,
    pub restart_ready_secs: f64,
    pub restart_serving_secs: f64,
    pub restart_sessions_counted: u64,
    pub restart_sessions_verified: u64,
    pub restart_sessions_bad: u64,
    /// The same data as a cluster node's (imported, then restarted).
    #[serde(default)]
    pub cluster_node: Option<ClusterNodeRestart>,
    pub expiry: Option<Expiry>,
}

/// A cluster node's restart with every session: the single server's data
/// imported into a cluster of one (taking its first snapshot), then that
/// node killed with SIGKILL and started again (snapshot loaded, log
/// replayed, elected).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ClusterNodeRestart {
    pub import_secs: f64,
    pub snapshot_bytes: u64,
    pub restart_ready_secs: f64,
    pub restart_serving_secs: f64,
    pub sessions_verified: u64,
    pub sessions_bad: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Expiry {
    pub expired: u64,
    pub load_conns: usize,
    pub expiry_secs: f64,
    pub ops_per_sec_before: f64,
    pub ops_per_sec_during: f64,
    pub ops_per_sec_after: f64,
    pub worst_100ms_ops_per_sec: f64,
    pub dip_pct: f64,
    pub cpu_before: f64,
    pub cpu_during: f64,
    pub expiry_cpu_secs: f64,
    pub lat_before: Lat,
    pub lat_during: Lat,
    pub timeline: Vec<(f64, f64, u64)>,
}

/// The names of the phpredis rows of the PHP benchmark.
pub const PHPREDIS_LOCKING: &str = "phpredis (locking on)";
/// See [`PHPREDIS_LOCKING`].
pub const PHPREDIS_NO_LOCKING: &str = "phpredis (no locking)";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PhpRow {
    /// `php -S` or `php-fpm + nginx`.
    #[serde(default)]
    pub front: String,
    pub handler: String,
    pub server: String,
    pub workers: usize,
    pub conns: usize,
    pub sessions: usize,
    pub secs: f64,
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub lat: Lat,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn fmt_ops(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Which peer a sessiond policy is held against: Redis at equal durability.
pub fn redis_peer(durability: &str) -> &'static str {
    match durability {
        "always" => "redis-always",
        "everysec" => "redis-everysec",
        _ => "redis-off",
    }
}

fn find<'a>(rows: &'a [CycleRow], store: &str, size: usize, conns: usize) -> Option<&'a CycleRow> {
    rows.iter()
        .find(|r| r.store == store && r.size == size && r.conns == conns)
}

fn cycle_table(out: &mut String, rows: &[CycleRow], locked: bool) {
    let mut stores: Vec<&str> = Vec::new();
    for r in rows {
        if !stores.contains(&r.store.as_str()) {
            stores.push(&r.store);
        }
    }
    let mut cells: Vec<(usize, usize)> = Vec::new();
    for r in rows {
        if !cells.contains(&(r.size, r.conns)) {
            cells.push((r.size, r.conns));
        }
    }
    // Throughput: one row per (size, conns), one column per store, then the
    // ratio of each sessiond policy to Redis at equal durability and to the
    // best peer.
    let sd: Vec<&str> = stores
        .iter()
        .copied()
        .filter(|s| s.starts_with("sessiond"))
        .collect();
    let peers: Vec<&str> = stores
        .iter()
        .copied()
        .filter(|s| !s.starts_with("sessiond"))
        .collect();
    out.push_str("| size | conns |");
    for s in &stores {
        out.push_str(&format!(" {s} |"));
    }
    for s in &sd {
        out.push_str(&format!(" {s} ÷ eq. Redis |"));
    }
    out.push_str(" best sessiond ÷ best peer |\n|---|---|");
    for _ in 0..=(stores.len() + sd.len()) {
        out.push_str("---|");
    }
    out.push('\n');
    for &(size, conns) in &cells {
        out.push_str(&format!(
            "| {} | {conns} |",
            crate::store::shape(size).label()
        ));
        for s in &stores {
            match find(rows, s, size, conns) {
                Some(r) => out.push_str(&format!(" {} |", fmt_ops(r.ops_per_sec))),
                None => out.push_str(" – |"),
            }
        }
        for s in &sd {
            let r = find(rows, s, size, conns);
            let peer = r.and_then(|r| find(rows, redis_peer(&r.durability), size, conns));
            match (r, peer) {
                (Some(r), Some(p)) if p.ops_per_sec > 0.0 => {
                    out.push_str(&format!(" {:.2}× |", r.ops_per_sec / p.ops_per_sec));
                }
                _ => out.push_str(" – |"),
            }
        }
        let best = |names: &[&str]| {
            names
                .iter()
                .filter_map(|s| find(rows, s, size, conns))
                .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
        };
        match (best(&sd), best(&peers)) {
            (Some(a), Some(b)) if b.ops_per_sec > 0.0 => out.push_str(&format!(
                " {:.2}× ({} vs {}) |\n",
                a.ops_per_sec / b.ops_per_sec,
                a.store,
                b.store
            )),
            _ => out.push_str(" – |\n"),
        }
    }
    out.push_str("\nLatency per cycle (p50 / p99 / p99.9)");
    if locked {
        out.push_str(", errors, lost updates");
    }
    out.push_str(":\n\n| store | size | conns | ops/s | p50 | p99 | p99.9 | errors |");
    if locked {
        out.push_str(" lost updates | ran unlocked |");
    }
    out.push_str("\n|---|---|---|---|---|---|---|---|");
    if locked {
        out.push_str("---|---|");
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            crate::store::shape(r.size).label(),
            r.conns,
            fmt_ops(r.ops_per_sec),
            us(r.lat.p50_us),
            us(r.lat.p99_us),
            us(r.lat.p999_us),
            r.errors
        ));
        if locked {
            out.push_str(&format!(
                " {} | {} |",
                r.lost_updates.map_or("–".into(), |v| v.to_string()),
                r.ran_unlocked.map_or("–".into(), |v| v.to_string())
            ));
        }
        out.push('\n');
    }
}

/// The cluster's ratios, per workload and connection count: against one
/// node, Redis with a replica and `WAIT`, and etcd.
pub fn cluster_ratio(rows: &[CycleRow], conns: usize, store: &str, peer: &str) -> Option<f64> {
    let size = rows.first()?.size;
    let a = find(rows, store, size, conns)?;
    let b = find(rows, peer, size, conns)?;
    (b.ops_per_sec > 0.0).then(|| a.ops_per_sec / b.ops_per_sec)
}

fn cluster_ratio_table(out: &mut String, cycle: &[CycleRow], locked: &[CycleRow]) {
    out.push_str("| workload | conns | sessiond-1node | sessiond-cluster3 | sessiond-cluster3-always | redis-wait | etcd3 | cluster ÷ 1 node | cluster ÷ Redis+WAIT | cluster-always ÷ etcd |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (label, rows) in [("session cycle", cycle), ("locked cycle", locked)] {
        let mut conns: Vec<usize> = rows.iter().map(|r| r.conns).collect();
        conns.sort_unstable();
        conns.dedup();
        for c in conns {
            let size = rows.first().map_or(0, |r| r.size);
            let ops =
                |s: &str| find(rows, s, size, c).map_or("–".into(), |r| fmt_ops(r.ops_per_sec));
            let ratio = |a: &str, b: &str| {
                cluster_ratio(rows, c, a, b).map_or("–".into(), |x| format!("{x:.2}×"))
            };
            out.push_str(&format!(
                "| {label} | {c} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                ops("sessiond-1node"),
                ops("sessiond-cluster3"),
                ops("sessiond-cluster3-always"),
                ops("redis-wait"),
                ops("etcd3"),
                ratio("sessiond-cluster3", "sessiond-1node"),
                ratio("sessiond-cluster3", "redis-wait"),
                ratio("sessiond-cluster3-always", "etcd3"),
            ));
        }
    }
    out.push('\n');
}

impl Report {
    /// The whole report as Markdown tables (also what the terminal shows).
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "Run {} on {} cores ({}), {:.0} GB RAM, Linux {}; `{}`{}.\n\n",
            self.date_utc,
            self.machine.cores,
            self.machine.cpu,
            self.machine.mem_gb,
            self.machine.kernel,
            self.command,
            if self.quick {
                " (quick mode: small and short, not for conclusions)"
            } else {
                ""
            }
        ));
        if !self.ping.is_empty() {
            o.push_str("### Loopback round trip (PING, 1 connection)\n\n| server | p50 | p99 | p99.9 |\n|---|---|---|---|\n");
            for p in &self.ping {
                o.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    p.store,
                    us(p.lat.p50_us),
                    us(p.lat.p99_us),
                    us(p.lat.p999_us)
                ));
            }
            o.push('\n');
        }
        if !self.cycle.is_empty() {
            o.push_str("### Session cycle (read whole session → write one key), ops/s\n\n");
            cycle_table(&mut o, &self.cycle, false);
            o.push('\n');
        }
        if !self.locked.is_empty() {
            o.push_str("### Locked cycle (lock+read → write+unlock), ops/s\n\n");
            cycle_table(&mut o, &self.locked, true);
            o.push('\n');
        }
        if !self.handoff.is_empty() {
            o.push_str("### Contended hand-off (N clients, one lock, 1 ms of work each)\n\n");
            o.push_str("| contender | clients | cycles/s | hand-off p50 | hand-off p99 | acquire p50 | acquire p99 | gave up | ran unlocked | errors |\n|---|---|---|---|---|---|---|---|---|---|\n");
            for r in &self.handoff {
                o.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    r.contender,
                    r.clients,
                    fmt_ops(r.cycles_per_sec),
                    us(r.handoff.p50_us),
                    us(r.handoff.p99_us),
                    us(r.acquire.p50_us),
                    us(r.acquire.p99_us),
                    r.gave_up,
                    r.ran_unlocked,
                    r.errors
                ));
            }
            o.push('\n');
        }
        if let Some(s) = &self.scale {
            o.push_str(&format!(
                "### Scale: {} sessions of 10 keys, {} B\n\n| measure | sessiond | Redis |\n|---|---|---|\n",
                s.sessions, s.session_bytes
            ));
            o.push_str(&format!(
                "| load time (pipelined) | {:.1} s | {:.1} s |\n",
                s.sessiond_load_secs, s.redis_load_secs
            ));
            o.push_str(&format!(
                "| RSS empty → loaded | {} → {} | {} → {} |\n",
                mb(s.sessiond_rss_base),
                mb(s.sessiond_rss_loaded),
                mb(s.redis_rss_base),
                mb(s.redis_rss_loaded)
            ));
            o.push_str(&format!(
                "| bytes per session (right after loading) | {:.0} | {:.0} |\n",
                s.sessiond_bytes_per_session, s.redis_bytes_per_session
            ));
            o.push_str(&format!(
                "| bytes per session (after restart) | {:.0} | – |\n",
                s.sessiond_bytes_per_session_after_restart
            ));
            o.push_str(&format!("| data file | {} | – |\n", mb(s.data_file_bytes)));
            o.push_str(&format!(
                "| clean shutdown | {:.2} s | – |\n| restart: ready line / first PING answered | {:.2} s / {:.2} s | – |\n",
                s.shutdown_secs, s.restart_ready_secs, s.restart_serving_secs
            ));
            o.push_str(&format!(
                "| after restart: sessions counted / verified intact / bad | {} / {} / {} | – |\n\n",
                s.restart_sessions_counted, s.restart_sessions_verified, s.restart_sessions_bad
            ));
            if let Some(c) = &s.cluster_node {
                o.push_str(&format!(
                    "As a cluster node (`--initial-cluster` of one on a copy of that data directory): import and first snapshot {:.2} s (snapshot file {}); \
                     after SIGKILL, restart: ready line {:.2} s, first read answered {:.2} s; {} sessions intact, {} bad.\n\n",
                    c.import_secs,
                    mb(c.snapshot_bytes),
                    c.restart_ready_secs,
                    c.restart_serving_secs,
                    c.sessions_verified,
                    c.sessions_bad
                ));
            }
            if let Some(e) = &s.expiry {
                o.push_str(&format!(
                    "Expiring {} sessions while {} connections run the session cycle on other sessions: expiry took {:.1} s; \
                     throughput before {} ops/s, during {} ops/s (dip {:.1}%), after {} ops/s, worst 100 ms window {} ops/s; \
                     server CPU {:.2} cores before, {:.2} during, so expiry cost ≈ {:.1} CPU-s; cycle p99 {} before, {} during.\n\n",
                    e.expired,
                    e.load_conns,
                    e.expiry_secs,
                    fmt_ops(e.ops_per_sec_before),
                    fmt_ops(e.ops_per_sec_during),
                    e.dip_pct,
                    fmt_ops(e.ops_per_sec_after),
                    fmt_ops(e.worst_100ms_ops_per_sec),
                    e.cpu_before,
                    e.cpu_during,
                    e.expiry_cpu_secs,
                    us(e.lat_before.p99_us),
                    us(e.lat_during.p99_us)
                ));
            }
        }
        if !self.php.is_empty() {
            o.push_str("### Through PHP (session page: read, change one key, write)\n\nRatios are to the phpredis rows behind the same front, in the same run.\n\n| front | handler | server | workers | conns | sessions | req/s | × phpredis no locking | × phpredis locking | p50 | p99 | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
            let peer = |front: &str, name: &str| {
                self.php
                    .iter()
                    .find(|r| r.front == front && r.handler == name)
                    .map_or(0.0, |r| r.rps)
            };
            for r in &self.php {
                let ratio = |name: &str| {
                    let p = peer(&r.front, name);
                    if p > 0.0 && r.handler.starts_with("sessiond") {
                        format!("{:.2}×", r.rps / p)
                    } else {
                        String::new()
                    }
                };
                o.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    r.front,
                    r.handler,
                    r.server,
                    r.workers,
                    r.conns,
                    r.sessions,
                    fmt_ops(r.rps),
                    ratio(PHPREDIS_NO_LOCKING),
                    ratio(PHPREDIS_LOCKING),
                    us(r.lat.p50_us),
                    us(r.lat.p99_us),
                    r.errors
                ));
            }
            o.push('\n');
        }
        if !self.cluster_cycle.is_empty() || !self.cluster_locked.is_empty() {
            o.push_str("### Cluster: three nodes on loopback, ops/s (clients on the leader or primary)\n\n");
            cluster_ratio_table(&mut o, &self.cluster_cycle, &self.cluster_locked);
            o.push_str("Session cycle, each store:\n\n");
            cycle_table(&mut o, &self.cluster_cycle, false);
            o.push_str("\nLocked cycle (etcd: the same compare-and-put transaction; Redis: the phpredis lock recipe, then `WAIT 1 0` after the write), each store:\n\n");
            cycle_table(&mut o, &self.cluster_locked, true);
            o.push('\n');
        }
        if let Some(f) = &self.failover {
            o.push_str(&format!(
                "### Failover: the leader of three nodes stopped with {} {} times\n\nFrom each stop to the first write acknowledged by the cluster (a client retrying every 10 ms on the surviving nodes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms. Every sample, ms: {}. Increments acknowledged {}, final counter {} (equal: no retry applied twice, none lost).\n\n",
                f.signal_name(),
                f.kills,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.samples_ms
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                f.increments_acknowledged,
                f.final_value
            ));
        }
        if !self.targets.is_empty() {
            o.push_str("### Targets\n\n| target | measured | met |\n|---|---|---|\n");
            for t in &self.targets {
                o.push_str(&format!(
                    "| {} | {} | {} |\n",
                    t.target,
                    t.measured,
                    match t.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "not measured",
                    }
                ));
            }
            o.push('\n');
        }
        for n in &self.notes {
            o.push_str(&format!("- {n}\n"));
        }
        o
    }
}
