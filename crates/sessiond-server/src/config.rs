//! Settings: defaults, then an optional TOML file, then environment
//! variables, then flags; later sources win.
//!
//! Each default is declared once, in [`defaults`]; [`ServeArgs::resolve`]
//! takes it from there, [`show_defaults`] puts it in `--help`, and a test
//! checks the settings table of docs/operations.md against both.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// The default of every setting that has one, declared once.
///
/// The defaults that are the core's own (TTL, grace, limits) are the core's
/// constants, so [`sessiond_core::StoreConfig::default`] agrees with them.
pub mod defaults {
    use super::{Durability, IpAddr, Ipv4Addr, MaxMemoryPolicy, SocketAddr, StorageKind};

    pub use sessiond_core::store::config::{
        DEFAULT_MAX_KEYS_PER_SESSION as MAX_KEYS_PER_SESSION,
        DEFAULT_MAX_VALUE_BYTES as MAX_VALUE_BYTES,
        DEFAULT_REGENERATE_GRACE_SECS as REGENERATE_GRACE_SECS, DEFAULT_TTL_SECS as TTL_SECS,
    };

    /// `--bind`.
    pub const BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// `--port`.
    pub const PORT: u16 = 6380;
    /// `--data-dir`.
    pub const DATA_DIR: &str = "./data";
    /// `--storage`.
    pub const STORAGE: StorageKind = StorageKind::Redb;
    /// `--durability`.
    pub const DURABILITY: Durability = Durability::Everysec;
    /// `--storage-cache-mb` (with a `--max-memory`, at most an eighth of
    /// it when not given).
    pub const STORAGE_CACHE_MB: usize = 64;
    /// `--max-memory`: no limit.
    pub const MAX_MEMORY: &str = "0";
    /// `--max-memory-policy`.
    pub const MAX_MEMORY_POLICY: MaxMemoryPolicy = MaxMemoryPolicy::Noeviction;
    /// `--allow-remote-without-password`.
    pub const ALLOW_REMOTE_WITHOUT_PASSWORD: bool = false;
    /// `--metrics-addr`.
    pub const METRICS_ADDR: SocketAddr = SocketAddr::new(BIND, 9380);
    /// `--max-request-bytes`.
    pub const MAX_REQUEST_BYTES: usize = 16 << 20;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// `--lock-max-hold`, in seconds.
    pub const LOCK_MAX_HOLD_SECS: u64 = 300;
    /// `--tcp-keepalive`, in seconds.
    pub const TCP_KEEPALIVE_SECS: u64 = 30;
    /// `--shutdown-timeout`, in seconds.
    pub const SHUTDOWN_TIMEOUT_SECS: u64 = 10;
    /// `--threads`: one per CPU core.
    pub const THREADS: usize = 0;
    /// `--slowlog-log-slower-than`, in microseconds (Redis's default).
    pub const SLOWLOG_LOG_SLOWER_THAN: i64 = 10_000;
    /// `--slowlog-max-len` (Redis's default).
    pub const SLOWLOG_MAX_LEN: usize = 128;
    /// `--node-down-after`, in seconds.
    pub const NODE_DOWN_AFTER_SECS: u64 = 10;
    /// `--raft-snapshot-logs`.
    pub const RAFT_SNAPSHOT_LOGS: u64 = 20_000;
    /// `--raft-heartbeat`, in ms.
    pub const RAFT_HEARTBEAT_MS: u64 = 50;
    /// `--raft-election-timeout`, in ms (the shortest; the longest is
    /// twice it).
    pub const RAFT_ELECTION_TIMEOUT_MS: u64 = 200;
    /// `--log-level` (a `tracing` env-filter directive).
    pub const LOG_LEVEL: &str = "info";
    /// `--plaintext`.
    pub const PLAINTEXT: bool = true;
    /// `--tls-cluster`.
    pub const TLS_CLUSTER: bool = false;
    /// `--tls-auth-clients` (Redis's default).
    pub const TLS_AUTH_CLIENTS: crate::tls::AuthClients = crate::tls::AuthClients::Yes;
}

/// Each flag of [`ServeArgs`] that has a default, by its id, with the
/// default as `--help` and docs/operations.md show it.
pub fn shown_defaults() -> Vec<(&'static str, String)> {
    use defaults as d;
    let name = |v: Option<clap::builder::PossibleValue>| {
        v.map(|v| v.get_name().to_owned()).unwrap_or_default()
    };
    vec![
        ("bind", d::BIND.to_string()),
        ("port", d::PORT.to_string()),
        ("data_dir", d::DATA_DIR.to_owned()),
        ("storage", name(d::STORAGE.to_possible_value())),
        ("durability", name(d::DURABILITY.to_possible_value())),
        ("storage_cache_mb", d::STORAGE_CACHE_MB.to_string()),
        ("max_memory", d::MAX_MEMORY.to_owned()),
        (
            "max_memory_policy",
            name(d::MAX_MEMORY_POLICY.to_possible_value()),
        ),
        (
            "allow_remote_without_password",
            d::ALLOW_REMOTE_WITHOUT_PASSWORD.to_string(),
        ),
        ("metrics_addr", d::METRICS_ADDR.to_string()),
        ("default_ttl", d::TTL_SECS.to_string()),
        ("regenerate_grace", d::REGENERATE_GRACE_SECS.to_string()),
        ("max_value_bytes", d::MAX_VALUE_BYTES.to_string()),
        ("max_keys_per_session", d::MAX_KEYS_PER_SESSION.to_string()),
        ("max_request_bytes", d::MAX_REQUEST_BYTES.to_string()),
        ("max_connections", d::MAX_CONNECTIONS.to_string()),
        ("lock_max_hold", d::LOCK_MAX_HOLD_SECS.to_string()),
        ("tcp_keepalive", d::TCP_KEEPALIVE_SECS.to_string()),
        ("shutdown_timeout", d::SHUTDOWN_TIMEOUT_SECS.to_string()),
        ("threads", d::THREADS.to_string()),
        ("node_down_after", d::NODE_DOWN_AFTER_SECS.to_string()),
        ("raft_snapshot_logs", d::RAFT_SNAPSHOT_LOGS.to_string()),
        ("raft_heartbeat", d::RAFT_HEARTBEAT_MS.to_string()),
        (
            "raft_election_timeout",
            d::RAFT_ELECTION_TIMEOUT_MS.to_string(),
        ),
        (
            "slowlog_log_slower_than",
            d::SLOWLOG_LOG_SLOWER_THAN.to_string(),
        ),
        ("slowlog_max_len", d::SLOWLOG_MAX_LEN.to_string()),
        ("log_level", d::LOG_LEVEL.to_owned()),
        (
            "plaintext",
            if d::PLAINTEXT { "yes" } else { "no" }.to_owned(),
        ),
        (
            "tls_auth_clients",
            name(d::TLS_AUTH_CLIENTS.to_possible_value()),
        ),
        (
            "tls_cluster",
            if d::TLS_CLUSTER { "yes" } else { "no" }.to_owned(),
        ),
    ]
}

/// `cmd` (a command with [`ServeArgs`] flattened in) with `[default: …]`
/// added to the help of every flag that has a default.
///
/// The flags have no clap `default_value`: a default there would hide the
/// TOML file's value (flags win over the file), so the defaults are applied
/// in [`ServeArgs::resolve`] and only shown here.
pub fn show_defaults(cmd: clap::Command) -> clap::Command {
    shown_defaults().into_iter().fold(cmd, |cmd, (id, value)| {
        cmd.mut_arg(id, |arg| {
            let suffix = format!(" [default: {value}]");
            let help = arg.get_help().map(|h| format!("{h}{suffix}"));
            let long = arg.get_long_help().map(|h| format!("{h}{suffix}"));
            let arg = match help {
                Some(h) => arg.help(h),
                None => arg,
            };
            match long {
                Some(h) => arg.long_help(h),
                None => arg,
            }
        })
    })
}

/// When an acknowledged write is on disk; the names are Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Reply only after the write is on disk. Concurrent writes share one
    /// fsync (group commit).
    Always,
    /// Reply at once; what was written is on disk within about a second.
    Everysec,
    /// Reply at once; sync every 30 s and at shutdown.
    No,
}

/// What a write that needs memory over `--max-memory` gets; the names are
/// Redis's `maxmemory-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaxMemoryPolicy {
    /// Refuse it with `OOM`; reads, deletes and shrinking writes go on.
    Noeviction,
    /// End the sessions idle the longest (never one with a lock held or
    /// awaited) to make room.
    AllkeysLru,
}

impl MaxMemoryPolicy {
    /// The core's policy.
    pub fn eviction(self) -> sessiond_core::EvictionPolicy {
        match self {
            MaxMemoryPolicy::Noeviction => sessiond_core::EvictionPolicy::NoEviction,
            MaxMemoryPolicy::AllkeysLru => sessiond_core::EvictionPolicy::AllkeysLru,
        }
    }
}

/// Parses a memory size as Redis does: bytes, or a number with `k`, `kb`,
/// `m`, `mb`, `g` or `gb` (any case; `k`/`m`/`g` are powers of 1000,
/// `kb`/`mb`/`gb` of 1024).
///
/// # Errors
/// A message naming the bad size.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit_bytes: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size like 512mb or 2gb")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("{text:?} is not a size like 512mb or 2gb"))
}

/// What the process needs besides the sessions, held back from
/// `--max-memory` (docs/operations.md, "Memory"): its resident memory with
/// no session (runtime, threads, the binary: measured about 10 MiB, see
/// docs/benchmarks.md).
pub const BASELINE_BYTES: u64 = 12 << 20;
/// Connection buffers held back from `--max-memory`: the read and write
/// buffers (16 KiB each) and the task of up to this many connections.
pub const RESERVED_CONNECTIONS: u64 = 128;
/// What one idle connection costs: two 16 KiB buffers and its task.
pub const CONNECTION_BYTES: u64 = 40 << 10;

/// The most `--threads` accepted (more is a typo, not a machine).
pub const MAX_THREADS: usize = 1024;

/// A `1/FRAGMENTATION_DIVISOR` share of what `--max-memory` leaves after
/// the reserves is held back for the allocator's fragmentation.
pub const FRAGMENTATION_DIVISOR: u64 = 5;

/// The same share under an evicting policy (`allkeys-lru`), whose constant
/// churn of sessions (one evicted for each created) leaves more freed
/// memory between live blocks: measured at 110–122 % of the limit with a
/// fifth held back (docs/benchmarks.md, "Memory limit").
pub const EVICTING_FRAGMENTATION_DIVISOR: u64 = 3;

/// How `--max-memory` is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// `--max-memory` (0: no limit).
    pub max_memory: u64,
    /// Held back for the rest of the process: the baseline, the storage
    /// cache, connection buffers.
    pub reserved: u64,
    /// What the sessions may take, as the core accounts them (0: no
    /// limit).
    pub data_limit: u64,
}

/// Where sessions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// redb, an embedded ACID B-tree store, in `data_dir/sessions.redb`.
    Redb,
    /// Memory only: nothing survives a restart. For tests and benchmarks.
    Memory,
}

/// Every flag of `sessiond serve`. Each may also come from an environment
/// variable (`SESSIOND_<NAME>`) or the TOML file given by `--config`, whose
/// keys are the flag names with `_` for `-`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with settings (flags and environment variables override it).
    #[arg(long, env = "SESSIOND_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SESSIOND_BIND")]
    pub bind: Option<IpAddr>,
    /// Port for RESP clients; 0 picks a free one.
    #[arg(long, env = "SESSIOND_PORT")]
    pub port: Option<u16>,
    /// Directory for the data file.
    #[arg(long, env = "SESSIOND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage engine.
    #[arg(long, env = "SESSIOND_STORAGE")]
    pub storage: Option<StorageKind>,
    /// When writes reach the disk.
    #[arg(long, env = "SESSIOND_DURABILITY")]
    pub durability: Option<Durability>,
    /// redb's page cache, in MiB. Every session is also held
    /// in memory, so the cache only speeds the writer's B-tree updates.
    #[arg(long, env = "SESSIOND_STORAGE_CACHE_MB")]
    pub storage_cache_mb: Option<usize>,
    /// Most memory the process should use, like Redis's maxmemory: bytes,
    /// or with kb, mb, gb; 0 for no limit. Sessions get what is left after
    /// the storage cache and the server's own needs; at the limit, writes
    /// that grow memory get OOM or evict (--max-memory-policy).
    #[arg(long, env = "SESSIOND_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// What a write that needs memory over --max-memory gets.
    #[arg(long, env = "SESSIOND_MAX_MEMORY_POLICY")]
    pub max_memory_policy: Option<MaxMemoryPolicy>,
    /// Password clients must give with AUTH or HELLO (Redis's requirepass).
    #[arg(long, env = "SESSIOND_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,
    /// File holding the password (one line; a trailing newline is not part
    /// of it), so it stays out of the process list and the environment.
    /// Not together with --requirepass.
    #[arg(
        long,
        env = "SESSIOND_REQUIREPASS_FILE",
        conflicts_with = "requirepass"
    )]
    pub requirepass_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a password. Sessions hold
    /// login tokens: only for networks you trust completely.
    #[arg(
        long,
        env = "SESSIOND_ALLOW_REMOTE_WITHOUT_PASSWORD",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_remote_without_password: Option<bool>,
    /// Address for Prometheus metrics over HTTP; "off" disables.
    #[arg(long, env = "SESSIOND_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Idle TTL of a session created without one, in seconds.
    #[arg(long, env = "SESSIOND_DEFAULT_TTL")]
    pub default_ttl: Option<u64>,
    /// How long an old id answers after SESSION.REGENERATE, in seconds.
    #[arg(long, env = "SESSIOND_REGENERATE_GRACE")]
    pub regenerate_grace: Option<u64>,
    /// Largest value, in bytes.
    #[arg(long, env = "SESSIOND_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Most keys in one session.
    #[arg(long, env = "SESSIOND_MAX_KEYS_PER_SESSION")]
    pub max_keys_per_session: Option<usize>,
    /// Largest request, in bytes.
    #[arg(long, env = "SESSIOND_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most client connections at once.
    #[arg(long, env = "SESSIOND_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest any lock may be held, in seconds.
    #[arg(long, env = "SESSIOND_LOCK_MAX_HOLD")]
    pub lock_max_hold: Option<u64>,
    /// TCP keepalive idle time, in seconds, to find dead peers.
    #[arg(long, env = "SESSIOND_TCP_KEEPALIVE")]
    pub tcp_keepalive: Option<u64>,
    /// How long shutdown waits for in-flight commands, in seconds.
    #[arg(long, env = "SESSIOND_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Threads that serve clients (the async runtime's workers); 0: one
    /// per CPU core. On a machine shared with PHP and a web server, 1
    /// costs less CPU per request.
    #[arg(long, env = "SESSIOND_THREADS")]
    pub threads: Option<usize>,
    /// This node's id in a cluster (1–65535). With --raft-addr (and
    /// --initial-cluster to form a new cluster; without it the node waits
    /// to be added with CLUSTER.ADDLEARNER); without them sessiond runs as
    /// a single server.
    #[arg(long, env = "SESSIOND_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address this node listens on for its peers (Raft traffic).
    #[arg(long, env = "SESSIOND_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    /// Every initial member: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT (peer
    /// addresses). Every node is started with the same list.
    #[arg(long, env = "SESSIOND_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// In a cluster: after how many seconds without an answer the leader
    /// declares a node dead and releases its connections' locks (the
    /// lock-delay of Chubby and Consul).
    #[arg(long, env = "SESSIOND_NODE_DOWN_AFTER")]
    pub node_down_after: Option<u64>,
    /// In a cluster: a snapshot is taken after this many log entries since
    /// the last one, and the log before it is compacted (lagging or new
    /// nodes then catch up from the snapshot).
    #[arg(long, env = "SESSIOND_RAFT_SNAPSHOT_LOGS")]
    pub raft_snapshot_logs: Option<u64>,
    /// In a cluster: how often the leader sends heartbeats, in ms.
    #[arg(long, env = "SESSIOND_RAFT_HEARTBEAT")]
    pub raft_heartbeat: Option<u64>,
    /// In a cluster: a follower that heard nothing from the leader for this
    /// long (ms; a random value between it and twice it, after the
    /// leader's lease of twice it) starts an election. Lower fails over
    /// faster; too low for the machine's scheduling delays causes needless
    /// elections. At least 3 heartbeats.
    #[arg(long, env = "SESSIOND_RAFT_ELECTION_TIMEOUT")]
    pub raft_election_timeout: Option<u64>,
    /// Commands slower than this, in microseconds, go to the SLOWLOG; a
    /// negative value turns it off, 0 logs every command.
    #[arg(
        long,
        env = "SESSIOND_SLOWLOG_LOG_SLOWER_THAN",
        allow_negative_numbers = true
    )]
    pub slowlog_log_slower_than: Option<i64>,
    /// Entries the SLOWLOG keeps; older ones go.
    #[arg(long, env = "SESSIOND_SLOWLOG_MAX_LEN")]
    pub slowlog_max_len: Option<usize>,
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `tracing` env-filter directives (`info,sessiond_server::cluster=debug`).
    #[arg(long, env = "SESSIOND_LOG")]
    pub log_level: Option<String>,
    /// Serve the plaintext port (--port): `no` leaves only the TLS port.
    #[arg(long, env = "SESSIOND_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
    pub plaintext: Option<bool>,
    /// Port for RESP clients over TLS (on --bind); 0 picks a free one.
    /// Without it there is no TLS listener.
    #[arg(long, env = "SESSIOND_TLS_PORT")]
    pub tls_port: Option<u16>,
    /// The server's certificate chain (PEM), for --tls-port. Read again on
    /// SIGHUP.
    #[arg(long, env = "SESSIOND_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The server's private key (PEM), for --tls-port. Read again on SIGHUP.
    #[arg(long, env = "SESSIOND_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must be signed by.
    /// Read again on SIGHUP.
    #[arg(long, env = "SESSIOND_TLS_CA_CERT_FILE")]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// Client certificates: `yes` requires one signed by --tls-ca-cert-file,
    /// `optional` checks one if given, `no` does not ask.
    #[arg(long, env = "SESSIOND_TLS_AUTH_CLIENTS")]
    pub tls_auth_clients: Option<crate::tls::AuthClients>,
    /// Cluster traffic over TLS, with the --tls-cert-file, --tls-key-file
    /// and --tls-ca-cert-file of the client port; each node checks the
    /// other's certificate (mutual authentication).
    #[arg(long, env = "SESSIOND_TLS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_cluster: Option<bool>,
    /// TOML file of `[[user]]` tables (name, password as `#<sha256 hex>`,
    /// class read|readwrite|admin, optional prefix), added to those of
    /// --config.
    #[arg(long, env = "SESSIOND_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// `[[user]]` tables of the config file.
    #[arg(skip)]
    #[serde(default)]
    pub user: Vec<crate::users::UserEntry>,
}

/// A `--users-file`: only `[[user]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<crate::users::UserEntry>,
}

/// The settings of a cluster node (`--node-id`, `--raft-addr`,
/// `--initial-cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node.
    pub node_id: u64,
    /// Where this node listens for peers.
    pub raft_addr: String,
    /// Every initial member and its peer address.
    pub initial: std::collections::BTreeMap<u64, String>,
    /// After how long without an answer a node is declared dead.
    pub node_down_after: Duration,
    /// Log entries since the last snapshot that trigger the next one.
    pub snapshot_logs: u64,
    /// How often the leader sends heartbeats, in ms.
    pub heartbeat_ms: u64,
    /// The shortest election timeout, in ms (the longest is twice it).
    pub election_timeout_ms: u64,
    /// TLS between nodes (`--tls-cluster yes`): the TLS files of the
    /// client port, with mutual authentication.
    pub tls: Option<crate::tls::TlsSettings>,
    /// `--durability`: when the Raft log is synced (cluster::log_store).
    pub durability: Durability,
}

impl ClusterConfig {
    /// Parses `1=host:port,2=host:port,…`.
    ///
    /// # Errors
    /// A message naming the bad part.
    pub fn parse_members(list: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
        let mut out = std::collections::BTreeMap::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("{id:?} is not a node id"))?;
            if id == 0 || id >= 1 << 16 {
                return Err(format!("node id {id} must be between 1 and 65535"));
            }
            out.insert(id, addr.trim().to_owned());
        }
        if out.is_empty() {
            return Err("--initial-cluster names no node".into());
        }
        Ok(out)
    }
}

/// The settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// RESP listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Storage engine.
    pub storage: StorageKind,
    /// Durability policy.
    pub durability: Durability,
    /// redb page cache size in bytes.
    pub storage_cache_bytes: usize,
    /// `--max-memory` in bytes (0: no limit).
    pub max_memory: u64,
    /// `--max-memory-policy`.
    pub max_memory_policy: MaxMemoryPolicy,
    /// Password, if any.
    pub requirepass: Option<String>,
    /// Metrics listen address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Default idle TTL.
    pub default_ttl: Duration,
    /// Default regenerate grace.
    pub regenerate_grace: Duration,
    /// Value size limit.
    pub max_value_bytes: usize,
    /// Keys per session limit.
    pub max_keys_per_session: usize,
    /// Request size limit.
    pub max_request_bytes: usize,
    /// Connection limit.
    pub max_connections: usize,
    /// Longest lock hold.
    pub lock_max_hold: Duration,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// Shutdown drain deadline.
    pub shutdown_timeout: Duration,
    /// Worker threads of the runtime (0: one per CPU core).
    pub threads: usize,
    /// Cluster membership, when this node is part of a cluster.
    pub cluster: Option<ClusterConfig>,
    /// SLOWLOG threshold in µs; negative: off.
    pub slowlog_log_slower_than: i64,
    /// SLOWLOG length.
    pub slowlog_max_len: usize,
    /// The log filter (`tracing` env-filter directives), checked valid.
    pub log_level: String,
    /// Whether the plaintext port (`listen`) is served.
    pub plaintext: bool,
    /// The TLS listener's settings, when there is one.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The `[[user]]` tables (of the config file and `--users-file`).
    pub user_entries: Vec<crate::users::UserEntry>,
    /// The users: `default` (from `requirepass`) and `user_entries`; made
    /// again from both when the server binds, so a test may set
    /// `requirepass` on a resolved `Config`.
    pub users: crate::users::Users,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A setting has a bad value.
    #[error("{0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Resolves flags, environment and the TOML file into a [`Config`].
    ///
    /// # Errors
    /// [`ConfigError`] for an unreadable file or an unsafe combination (a
    /// non-loopback address without a password).
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<ServeArgs>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => ServeArgs::default(),
        };
        let s = self.merge(file);
        let bind = s.bind.unwrap_or(defaults::BIND);
        let tls = tls_settings(&s)?;
        let requirepass = match (s.requirepass, &s.requirepass_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give the password with --requirepass or --requirepass-file, not both".into(),
                ));
            }
            (None, Some(path)) => Some(read_password_file(path)?),
            (pass, None) => pass.filter(|p| !p.is_empty()),
        };
        let mut entries = s.user.clone();
        if let Some(path) = &s.users_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: UsersFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source: Box::new(source),
            })?;
            entries.extend(file.user);
        }
        let users = crate::users::Users::new(requirepass.as_deref(), &entries)
            .map_err(ConfigError::Invalid)?;
        let plaintext = s.plaintext.unwrap_or(defaults::PLAINTEXT);
        let cluster_tls = if s.tls_cluster.unwrap_or(defaults::TLS_CLUSTER) {
            match &tls {
                Some(t) if t.ca_cert_file.is_some() && s.node_id.is_some() => Some(t.clone()),
                _ => {
                    return Err(ConfigError::Invalid(
                        "--tls-cluster yes needs a cluster node (--node-id …) and --tls-port, \
                         --tls-cert-file, --tls-key-file and --tls-ca-cert-file"
                            .into(),
                    ));
                }
            }
        } else {
            None
        };
        if !plaintext && tls.is_none() {
            return Err(ConfigError::Invalid(
                "--plaintext no needs --tls-port: nothing would be served".into(),
            ));
        }
        // Only clients with a certificate of our CA reach a TLS-only server
        // that requires one: that is authentication enough.
        let certificate_required = !plaintext
            && tls
                .as_ref()
                .is_some_and(|t| t.auth_clients == crate::tls::AuthClients::Yes);
        if !bind.is_loopback()
            && !users.password_required()
            && !certificate_required
            && !s
                .allow_remote_without_password
                .unwrap_or(defaults::ALLOW_REMOTE_WITHOUT_PASSWORD)
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {bind} without a password: set --requirepass or users \
                 (or --allow-remote-without-password true on a network you trust)"
            )));
        }
        let metrics_addr = match s.metrics_addr.as_deref() {
            Some("off" | "") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "--metrics-addr {a:?} is not an address like 127.0.0.1:9380"
                ))
            })?),
            None => Some(defaults::METRICS_ADDR),
        };
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid(format!("--{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        let max_memory = parse_memory_size(s.max_memory.as_deref().unwrap_or(defaults::MAX_MEMORY))
            .map_err(|e| ConfigError::Invalid(format!("--max-memory: {e}")))?;
        // With a memory limit and no cache size given, the cache takes at
        // most an eighth of the limit.
        let cache_mb = s.storage_cache_mb.unwrap_or(if max_memory > 0 {
            usize::try_from(max_memory >> 23)
                .unwrap_or(usize::MAX)
                .clamp(1, defaults::STORAGE_CACHE_MB)
        } else {
            defaults::STORAGE_CACHE_MB
        });
        let config = Config {
            listen: SocketAddr::new(bind, s.port.unwrap_or(defaults::PORT)),
            data_dir: s
                .data_dir
                .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            storage: s.storage.unwrap_or(defaults::STORAGE),
            durability: s.durability.unwrap_or(defaults::DURABILITY),
            storage_cache_bytes: positive("storage-cache-mb", cache_mb)?.saturating_mul(1 << 20),
            max_memory,
            max_memory_policy: s.max_memory_policy.unwrap_or(defaults::MAX_MEMORY_POLICY),
            requirepass,
            metrics_addr,
            default_ttl: Duration::from_secs(s.default_ttl.unwrap_or(defaults::TTL_SECS)),
            regenerate_grace: Duration::from_secs(
                s.regenerate_grace
                    .unwrap_or(defaults::REGENERATE_GRACE_SECS),
            ),
            max_value_bytes: positive(
                "max-value-bytes",
                s.max_value_bytes.unwrap_or(defaults::MAX_VALUE_BYTES),
            )?,
            max_keys_per_session: positive(
                "max-keys-per-session",
                s.max_keys_per_session
                    .unwrap_or(defaults::MAX_KEYS_PER_SESSION),
            )?,
            max_request_bytes: positive(
                "max-request-bytes",
                s.max_request_bytes.unwrap_or(defaults::MAX_REQUEST_BYTES),
            )?,
            max_connections: positive(
                "max-connections",
                s.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
            )?,
            lock_max_hold: Duration::from_secs(
                s.lock_max_hold.unwrap_or(defaults::LOCK_MAX_HOLD_SECS),
            ),
            tcp_keepalive: Duration::from_secs(
                s.tcp_keepalive
                    .unwrap_or(defaults::TCP_KEEPALIVE_SECS)
                    .max(1),
            ),
            shutdown_timeout: Duration::from_secs(
                s.shutdown_timeout
                    .unwrap_or(defaults::SHUTDOWN_TIMEOUT_SECS),
            ),
            threads: match s.threads.unwrap_or(defaults::THREADS) {
                n @ 0..=MAX_THREADS => n,
                n => {
                    return Err(ConfigError::Invalid(format!(
                        "--threads {n}: at most {MAX_THREADS}"
                    )));
                }
            },
            cluster: cluster_config(s.node_id, s.raft_addr, s.initial_cluster)?.map(|c| {
                let heartbeat_ms = s
                    .raft_heartbeat
                    .unwrap_or(defaults::RAFT_HEARTBEAT_MS)
                    .max(10);
                ClusterConfig {
                    node_down_after: Duration::from_secs(
                        s.node_down_after
                            .unwrap_or(defaults::NODE_DOWN_AFTER_SECS)
                            .max(1),
                    ),
                    snapshot_logs: s
                        .raft_snapshot_logs
                        .unwrap_or(defaults::RAFT_SNAPSHOT_LOGS)
                        .max(1),
                    heartbeat_ms,
                    election_timeout_ms: s
                        .raft_election_timeout
                        .unwrap_or(defaults::RAFT_ELECTION_TIMEOUT_MS)
                        .max(3 * heartbeat_ms),
                    tls: cluster_tls.clone(),
                    durability: s.durability.unwrap_or(defaults::DURABILITY),
                    ..c
                }
            }),
            slowlog_log_slower_than: s
                .slowlog_log_slower_than
                .unwrap_or(defaults::SLOWLOG_LOG_SLOWER_THAN),
            slowlog_max_len: s.slowlog_max_len.unwrap_or(defaults::SLOWLOG_MAX_LEN),
            log_level: log_filter(s.log_level.as_deref().unwrap_or(defaults::LOG_LEVEL))?,
            plaintext,
            tls,
            users,
            user_entries: entries,
        };
        let budget = config.memory_budget();
        if budget.max_memory > 0 && budget.data_limit < 1 << 20 {
            return Err(ConfigError::Invalid(format!(
                "--max-memory {} leaves less than 1 MiB for sessions: the server holds back {} \
                 MiB (storage cache {} MiB, baseline and connection buffers); raise it or lower \
                 --storage-cache-mb",
                budget.max_memory,
                budget.reserved >> 20,
                config.storage_cache_bytes >> 20
            )));
        }
        Ok(config)
    }

    /// These settings, with `other`'s where these have none.
    pub fn merge(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(file.config),
            bind: self.bind.or(file.bind),
            port: self.port.or(file.port),
            data_dir: self.data_dir.or(file.data_dir),
            storage: self.storage.or(file.storage),
            durability: self.durability.or(file.durability),
            storage_cache_mb: self.storage_cache_mb.or(file.storage_cache_mb),
            max_memory: self.max_memory.or(file.max_memory),
            max_memory_policy: self.max_memory_policy.or(file.max_memory_policy),
            requirepass: self.requirepass.or(file.requirepass),
            requirepass_file: self.requirepass_file.or(file.requirepass_file),
            allow_remote_without_password: self
                .allow_remote_without_password
                .or(file.allow_remote_without_password),
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            default_ttl: self.default_ttl.or(file.default_ttl),
            regenerate_grace: self.regenerate_grace.or(file.regenerate_grace),
            max_value_bytes: self.max_value_bytes.or(file.max_value_bytes),
            max_keys_per_session: self.max_keys_per_session.or(file.max_keys_per_session),
            max_request_bytes: self.max_request_bytes.or(file.max_request_bytes),
            max_connections: self.max_connections.or(file.max_connections),
            lock_max_hold: self.lock_max_hold.or(file.lock_max_hold),
            tcp_keepalive: self.tcp_keepalive.or(file.tcp_keepalive),
            shutdown_timeout: self.shutdown_timeout.or(file.shutdown_timeout),
            threads: self.threads.or(file.threads),
            node_id: self.node_id.or(file.node_id),
            raft_addr: self.raft_addr.or(file.raft_addr),
            initial_cluster: self.initial_cluster.or(file.initial_cluster),
            node_down_after: self.node_down_after.or(file.node_down_after),
            raft_snapshot_logs: self.raft_snapshot_logs.or(file.raft_snapshot_logs),
            raft_heartbeat: self.raft_heartbeat.or(file.raft_heartbeat),
            raft_election_timeout: self.raft_election_timeout.or(file.raft_election_timeout),
            slowlog_log_slower_than: self
                .slowlog_log_slower_than
                .or(file.slowlog_log_slower_than),
            slowlog_max_len: self.slowlog_max_len.or(file.slowlog_max_len),
            log_level: self.log_level.or(file.log_level),
            plaintext: self.plaintext.or(file.plaintext),
            tls_port: self.tls_port.or(file.tls_port),
            tls_cert_file: self.tls_cert_file.or(file.tls_cert_file),
            tls_key_file: self.tls_key_file.or(file.tls_key_file),
            tls_ca_cert_file: self.tls_ca_cert_file.or(file.tls_ca_cert_file),
            tls_auth_clients: self.tls_auth_clients.or(file.tls_auth_clients),
            tls_cluster: self.tls_cluster.or(file.tls_cluster),
            users_file: self.users_file.or(file.users_file),
            // The file's users, and any given programmatically.
            user: if self.user.is_empty() {
                file.user
            } else {
                self.user
            },
        }
    }
}

fn cluster_config(
    node_id: Option<u64>,
    raft_addr: Option<String>,
    initial: Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    match (node_id, raft_addr, initial) {
        (None, None, None) => Ok(None),
        // Without --initial-cluster: a node that waits to be added to a
        // running cluster (CLUSTER.ADDLEARNER), or one restarted on its data
        // directory (it knows its cluster from its log).
        (Some(node_id), Some(raft_addr), initial) => {
            if node_id == 0 || node_id >= 1 << 16 {
                return Err(ConfigError::Invalid(format!(
                    "--node-id {node_id} must be between 1 and 65535"
                )));
            }
            let initial = match initial {
                Some(list) => ClusterConfig::parse_members(&list).map_err(ConfigError::Invalid)?,
                None => std::collections::BTreeMap::new(),
            };
            if !initial.is_empty() && !initial.contains_key(&node_id) {
                return Err(ConfigError::Invalid(format!(
                    "--node-id {node_id} is not in --initial-cluster"
                )));
            }
            Ok(Some(ClusterConfig {
                node_id,
                raft_addr,
                initial,
                node_down_after: Duration::from_secs(defaults::NODE_DOWN_AFTER_SECS),
                snapshot_logs: defaults::RAFT_SNAPSHOT_LOGS,
                heartbeat_ms: defaults::RAFT_HEARTBEAT_MS,
                election_timeout_ms: defaults::RAFT_ELECTION_TIMEOUT_MS,
                tls: None,
                durability: defaults::DURABILITY,
            }))
        }
        _ => Err(ConfigError::Invalid(
            "a cluster node needs --node-id and --raft-addr (and --initial-cluster to form a new cluster)".into(),
        )),
    }
}

/// The TLS listener's settings: none without `--tls-port`.
fn tls_settings(s: &ServeArgs) -> Result<Option<crate::tls::TlsSettings>, ConfigError> {
    let Some(port) = s.tls_port else {
        if s.tls_cert_file.is_some() || s.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "--tls-cert-file and --tls-key-file are for --tls-port, which is not set".into(),
            ));
        }
        return Ok(None);
    };
    let (Some(cert_file), Some(key_file)) = (s.tls_cert_file.clone(), s.tls_key_file.clone())
    else {
        return Err(ConfigError::Invalid(
            "--tls-port needs --tls-cert-file and --tls-key-file".into(),
        ));
    };
    let auth_clients = s.tls_auth_clients.unwrap_or(defaults::TLS_AUTH_CLIENTS);
    if auth_clients != crate::tls::AuthClients::No && s.tls_ca_cert_file.is_none() {
        return Err(ConfigError::Invalid(
            "--tls-auth-clients yes or optional (yes is the default) needs --tls-ca-cert-file; \
             or set --tls-auth-clients no"
                .into(),
        ));
    }
    if port != 0 && s.port == Some(port) && s.plaintext != Some(false) {
        return Err(ConfigError::Invalid(format!(
            "--tls-port {port} is also --port"
        )));
    }
    Ok(Some(crate::tls::TlsSettings {
        port,
        cert_file,
        key_file,
        ca_cert_file: s.tls_ca_cert_file.clone(),
        auth_clients,
    }))
}

/// `directives` if they are a valid `tracing` env filter.
fn log_filter(directives: &str) -> Result<String, ConfigError> {
    let directives = directives.trim();
    tracing_subscriber::EnvFilter::builder()
        .parse(directives)
        .map_err(|e| ConfigError::Invalid(format!("--log-level {directives:?}: {e}")))?;
    Ok(directives.to_owned())
}

/// The password in `path`: its first line, without the line end.
fn read_password_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pass = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if pass.is_empty() || pass.contains('\n') {
        return Err(ConfigError::Invalid(format!(
            "--requirepass-file {}: the file must hold the password on one line",
            path.display()
        )));
    }
    Ok(pass.to_owned())
}

impl Config {
    /// The engine's store settings: default TTL and grace, value and key
    /// limits.
    pub fn store_config(&self) -> sessiond_core::StoreConfig {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        sessiond_core::StoreConfig {
            default_ttl_ms: ms(self.default_ttl),
            regenerate_grace_ms: ms(self.regenerate_grace),
            limits: sessiond_core::Limits {
                max_value_bytes: self.max_value_bytes,
                max_keys_per_session: self.max_keys_per_session,
            },
            memory: sessiond_core::MemoryLimit {
                max_bytes: self.memory_budget().data_limit,
                policy: self.max_memory_policy.eviction(),
            },
        }
    }

    /// With `--max-memory`, the most bytes of changes that may wait for
    /// the disk (a thirty-second of the limit, 1 to 64 MiB); without it
    /// only the time bound of the persistence applies.
    pub fn max_pending_bytes(&self) -> Option<usize> {
        (self.max_memory > 0).then(|| {
            usize::try_from(self.max_memory / 32)
                .unwrap_or(usize::MAX)
                .clamp(1 << 20, 64 << 20)
        })
    }

    /// How `--max-memory` is divided between the sessions and the rest of
    /// the process: the baseline, the storage cache (redb), and the
    /// buffers of [`RESERVED_CONNECTIONS`] connections are held back; with
    /// memory storage (tests) every session is held twice, so the sessions
    /// get half of what is left.
    pub fn memory_budget(&self) -> MemoryBudget {
        let cache = match self.storage {
            StorageKind::Redb => self.storage_cache_bytes as u64,
            StorageKind::Memory => 0,
        };
        let connections = RESERVED_CONNECTIONS.min(self.max_connections as u64) * CONNECTION_BYTES;
        // Changes waiting for the disk: the mutations and the request
        // buffers their values still share.
        let pending = 2 * self.max_pending_bytes().unwrap_or(0) as u64;
        let reserved = BASELINE_BYTES + cache + connections + pending;
        let left = self.max_memory.saturating_sub(reserved);
        // What the allocator holds beyond what the sessions use once
        // sessions come and go (evicted, expired, rewritten at other
        // sizes): freed memory between live blocks. A fifth of what is
        // left, a third under eviction, from measurements
        // (docs/benchmarks.md).
        let divisor = match self.max_memory_policy {
            MaxMemoryPolicy::Noeviction => FRAGMENTATION_DIVISOR,
            MaxMemoryPolicy::AllkeysLru => EVICTING_FRAGMENTATION_DIVISOR,
        };
        let left = left - left / divisor;
        // With a limit, at least 1 byte: 0 would mean none (a reload can
        // set a limit below what is held back; every growth is refused).
        let data_limit = match (self.max_memory, self.storage) {
            (0, _) => 0,
            (_, StorageKind::Redb) => left.max(1),
            (_, StorageKind::Memory) => (left / 2).max(1),
        };
        let reserved = self.max_memory.saturating_sub(data_limit).max(reserved);
        MemoryBudget {
            max_memory: self.max_memory,
            reserved,
            data_limit,
        }
    }

    /// The longest lock hold, in ms, for the lock table.
    pub fn lock_max_hold_ms(&self) -> u64 {
        u64::try_from(self.lock_max_hold.as_millis()).unwrap_or(u64::MAX)
    }

    /// The settings as `name = value` lines (TOML, the file's key names),
    /// the password shown only as set or not: what `sessiond check-config`
    /// prints.
    pub fn describe(&self) -> String {
        let secs = |d: Duration| d.as_secs();
        let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        let lines = [
            format!("bind = \"{}\"", self.listen.ip()),
            format!("port = {}", self.listen.port()),
            format!("data_dir = {:?}", self.data_dir.display().to_string()),
            format!("storage = \"{}\"", lower(&self.storage)),
            format!("durability = \"{}\"", lower(&self.durability)),
            format!("storage_cache_mb = {}", self.storage_cache_bytes >> 20),
            format!("max_memory = \"{}\"", self.max_memory),
            format!(
                "max_memory_policy = \"{}\"",
                self.max_memory_policy.eviction().name()
            ),
            format!(
                "# requirepass: {}",
                if self.requirepass.is_some() {
                    "set"
                } else {
                    "not set"
                }
            ),
            format!(
                "metrics_addr = \"{}\"",
                self.metrics_addr
                    .map_or("off".to_owned(), |a| a.to_string())
            ),
            format!("default_ttl = {}", secs(self.default_ttl)),
            format!("regenerate_grace = {}", secs(self.regenerate_grace)),
            format!("max_value_bytes = {}", self.max_value_bytes),
            format!("max_keys_per_session = {}", self.max_keys_per_session),
            format!("max_request_bytes = {}", self.max_request_bytes),
            format!("max_connections = {}", self.max_connections),
            format!("lock_max_hold = {}", secs(self.lock_max_hold)),
            format!("tcp_keepalive = {}", secs(self.tcp_keepalive)),
            format!("shutdown_timeout = {}", secs(self.shutdown_timeout)),
            format!("threads = {}", self.threads),
            format!("slowlog_log_slower_than = {}", self.slowlog_log_slower_than),
            format!("slowlog_max_len = {}", self.slowlog_max_len),
            format!("log_level = {:?}", self.log_level),
            format!("plaintext = {}", self.plaintext),
        ];
        let mut lines = lines.to_vec();
        if let Some(c) = &self.cluster {
            let members: Vec<String> = c
                .initial
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect();
            lines.push(format!("node_id = {}", c.node_id));
            lines.push(format!("raft_addr = {:?}", c.raft_addr));
            lines.push(format!("initial_cluster = {:?}", members.join(",")));
            lines.push(format!("node_down_after = {}", secs(c.node_down_after)));
            lines.push(format!("raft_snapshot_logs = {}", c.snapshot_logs));
            lines.push(format!("raft_heartbeat = {}", c.heartbeat_ms));
            lines.push(format!("raft_election_timeout = {}", c.election_timeout_ms));
        }
        if let Some(t) = &self.tls {
            lines.push(format!("tls_port = {}", t.port));
            lines.push(format!(
                "tls_cert_file = {:?}",
                t.cert_file.display().to_string()
            ));
            lines.push(format!(
                "tls_key_file = {:?}",
                t.key_file.display().to_string()
            ));
            if let Some(ca) = &t.ca_cert_file {
                lines.push(format!("tls_ca_cert_file = {:?}", ca.display().to_string()));
            }
            let auth = format!("{:?}", t.auth_clients).to_lowercase();
            lines.push(format!("tls_auth_clients = \"{auth}\""));
        }
        for u in self.users.iter() {
            lines.push(format!("# {}", u.rule()));
        }
        lines.join("\n") + "\n"
    }

    /// Settings for tests: loopback port 0, memory storage, no metrics.
    pub fn for_tests() -> Self {
        ServeArgs {
            port: Some(0),
            storage: Some(StorageKind::Memory),
            metrics_addr: Some("off".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_or_else(|e| unreachable!("test defaults are valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Command;

    /// The settings table of docs/operations.md: flag → default column.
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/operations.md");
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `--"))
            .map(|l| {
                let mut cols = l.split('|').map(str::trim);
                let flag = cols.next().unwrap_or("").trim_end_matches('`').to_owned();
                (flag, cols.next().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn the_settings_table_of_operations_md_matches_the_flags_and_their_defaults() {
        let cmd = ServeArgs::augment_args(Command::new("serve"));
        let defaults = shown_defaults();
        let table = documented();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        let rows: Vec<&String> = table.iter().map(|(f, _)| f).collect();
        assert_eq!(
            rows,
            flags.iter().collect::<Vec<_>>(),
            "the table lists every flag, in order"
        );
        for arg in cmd.get_arguments() {
            let long = arg.get_long().unwrap();
            let documented = &table.iter().find(|(f, _)| f == long).unwrap().1;
            let declared = defaults
                .iter()
                .find(|(id, _)| *id == arg.get_id().as_str())
                .map_or("none", |(_, v)| v.as_str());
            assert_eq!(documented, declared, "default of --{long}");
        }
    }

    #[test]
    fn help_shows_each_declared_default() {
        let mut cmd = show_defaults(ServeArgs::augment_args(Command::new("serve")));
        let help = cmd.render_help().to_string();
        for (id, value) in shown_defaults() {
            let long = format!("--{} ", id.replace('_', "-"));
            let at = help
                .find(&long)
                .unwrap_or_else(|| panic!("{long}not in\n{help}"));
            let entry = &help[at..];
            let entry = &entry[..entry.find("\n      --").unwrap_or(entry.len())];
            assert!(
                entry.contains(&format!("[default: {value}]")),
                "{long}: no [default: {value}] in {entry:?}"
            );
        }
    }

    #[test]
    fn resolve_applies_the_declared_defaults() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.listen, SocketAddr::new(defaults::BIND, defaults::PORT));
        assert_eq!(cfg.data_dir, PathBuf::from(defaults::DATA_DIR));
        assert_eq!(cfg.storage, defaults::STORAGE);
        assert_eq!(cfg.durability, defaults::DURABILITY);
        assert_eq!(cfg.storage_cache_bytes, defaults::STORAGE_CACHE_MB << 20);
        assert_eq!(cfg.metrics_addr, Some(defaults::METRICS_ADDR));
        assert_eq!(cfg.max_request_bytes, defaults::MAX_REQUEST_BYTES);
        assert_eq!(cfg.max_connections, defaults::MAX_CONNECTIONS);
        assert_eq!(
            cfg.lock_max_hold,
            Duration::from_secs(defaults::LOCK_MAX_HOLD_SECS)
        );
        assert_eq!(
            cfg.tcp_keepalive,
            Duration::from_secs(defaults::TCP_KEEPALIVE_SECS)
        );
        assert_eq!(
            cfg.shutdown_timeout,
            Duration::from_secs(defaults::SHUTDOWN_TIMEOUT_SECS)
        );
        assert_eq!(cfg.threads, defaults::THREADS);
        // The core's own defaults are the same constants.
        let core = sessiond_core::StoreConfig::default();
        assert_eq!(cfg.default_ttl.as_millis(), u128::from(core.default_ttl_ms));
        assert_eq!(
            cfg.regenerate_grace.as_millis(),
            u128::from(core.regenerate_grace_ms)
        );
        assert_eq!(cfg.max_value_bytes, core.limits.max_value_bytes);
        assert_eq!(cfg.max_keys_per_session, core.limits.max_keys_per_session);
    }

    #[test]
    fn refuses_remote_without_password() {
        let args = ServeArgs {
            bind: Some("0.0.0.0".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Invalid(_))));
        let with_pass = ServeArgs {
            bind: Some("0.0.0.0".parse().unwrap()),
            requirepass: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(with_pass.resolve().is_ok());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiond.toml");
        std::fs::write(
            &path,
            "port = 7000\ndurability = \"always\"\ndefault_ttl = 60\n",
        )
        .unwrap();
        let cfg = ServeArgs {
            config: Some(path),
            port: Some(7001),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.listen.port(), 7001);
        assert_eq!(cfg.durability, Durability::Always);
        assert_eq!(cfg.default_ttl, Duration::from_secs(60));
    }

    #[test]
    fn the_password_file_loses_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        for (text, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("a b\r\n", "a b"),
        ] {
            std::fs::write(&path, text).unwrap();
            let cfg = ServeArgs {
                requirepass_file: Some(path.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap();
            assert_eq!(cfg.requirepass.as_deref(), Some(want));
        }
        for bad in ["", "\n", "two\nlines\n"] {
            std::fs::write(&path, bad).unwrap();
            let err = ServeArgs {
                requirepass_file: Some(path.clone()),
                ..Default::default()
            }
            .resolve();
            assert!(matches!(err, Err(ConfigError::Invalid(_))), "{bad:?}");
        }
        let both = ServeArgs {
            requirepass: Some("x".into()),
            requirepass_file: Some(path),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(both, Err(ConfigError::Invalid(m)) if m.contains("not both")));
    }

    #[test]
    fn memory_sizes_read_like_redis() {
        assert_eq!(parse_memory_size("0"), Ok(0));
        assert_eq!(parse_memory_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_memory_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_memory_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_memory_size("512kb"), Ok(512 << 10));
        assert_eq!(parse_memory_size("1k"), Ok(1000));
        assert_eq!(parse_memory_size("3g"), Ok(3_000_000_000));
        for bad in [
            "",
            "mb",
            "-1mb",
            "1.5gb",
            "12 parsecs",
            "99999999999999999999gb",
        ] {
            assert!(parse_memory_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn max_memory_holds_back_the_cache_and_the_baseline() {
        let cfg = ServeArgs {
            max_memory: Some("256mb".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            cfg.storage_cache_bytes,
            32 << 20,
            "an eighth when not given"
        );
        let budget = cfg.memory_budget();
        assert_eq!(budget.max_memory, 256 << 20);
        assert_eq!(budget.reserved + budget.data_limit, 256 << 20);
        assert!(budget.reserved >= (32 << 20) + BASELINE_BYTES);
        assert_eq!(cfg.store_config().memory.max_bytes, budget.data_limit);
        let unlimited = ServeArgs::default().resolve().unwrap();
        assert_eq!(unlimited.store_config().memory.max_bytes, 0);
        assert_eq!(unlimited.storage_cache_bytes, 64 << 20);
        let too_small = ServeArgs {
            max_memory: Some("16mb".into()),
            storage_cache_mb: Some(8),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(too_small, Err(ConfigError::Invalid(m)) if m.contains("less than 1 MiB")),);
        let bad = ServeArgs {
            max_memory: Some("lots".into()),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(bad, Err(ConfigError::Invalid(m)) if m.contains("--max-memory")));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(err, Err(ConfigError::Parse { .. })));
    }
}
