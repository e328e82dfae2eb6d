//! SIGHUP: the settings read again the way the server started (the flags
//! given at start, the `SESSIOND_*` environment, the `--config` file read
//! again from disk), and what can change at run time put in force.
//!
//! What changes at run time: the limits (`max_value_bytes`,
//! `max_keys_per_session`, `max_request_bytes`, `max_connections`), the
//! memory limit and its policy (`max_memory`, `max_memory_policy`: from the
//! next write on; the storage cache keeps its size until a restart), the TTL
//! defaults (`default_ttl`, `regenerate_grace`), `lock_max_hold` (for locks
//! granted from then on), the SLOWLOG settings and the log level. Everything
//! else (addresses, storage, durability, the password, cluster membership,
//! …) needs a restart: a change to it is reported and left as it is. Settings
//! that do not resolve (a file that does not parse, a bad value) change
//! nothing. The TLS certificate, key and CA files are read again on every
//! SIGHUP (by the server, see `server.rs`); their paths, the TLS port and
//! the users need a restart.
//!
//! [`diff`] says what changed; [`Reloader::reload`] puts it in force.

use std::fmt;
use std::time::Duration;

use crate::config::{Config, ConfigError, ServeArgs};
use crate::state::Shared;

/// Sets the log filter (`tracing` env-filter directives) of the process's
/// subscriber; the binary builds it around `tracing_subscriber::reload`.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// One setting whose value differs, as `check-config` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The setting (the TOML key).
    pub name: &'static str,
    /// Its value in force.
    pub from: String,
    /// Its value as read again.
    pub to: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.name, self.from, self.to)
    }
}

/// What a reload found: the changes put in force and those that need a
/// restart (and were left as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Changed now.
    pub applied: Vec<Change>,
    /// Not changed: they take effect at the next start.
    pub needs_restart: Vec<Change>,
}

impl Report {
    /// The one-line summary that ends a reload in the log.
    pub fn summary(&self) -> String {
        let names = |changes: &[Change]| {
            changes
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.applied.len(), self.needs_restart.len()) {
            (0, 0) => "settings reloaded: nothing changed".to_owned(),
            (n, 0) => format!("settings reloaded: {n} changed ({})", names(&self.applied)),
            (0, r) => format!(
                "settings reloaded: nothing changed now; {r} need a restart ({})",
                names(&self.needs_restart)
            ),
            (n, r) => format!(
                "settings reloaded: {n} changed ({}); {r} need a restart ({})",
                names(&self.applied),
                names(&self.needs_restart)
            ),
        }
    }
}

/// Each setting of `c` that a reload compares: its name, whether it can
/// change at run time, and its value as shown (seconds for durations, as
/// the flags take them). The password is compared apart, never shown.
fn settings(c: &Config) -> Vec<(&'static str, bool, String)> {
    let secs = |d: Duration| d.as_secs().to_string();
    let lower = |v: &dyn fmt::Debug| format!("{v:?}").to_lowercase();
    let cluster = c.cluster.as_ref();
    let none = || "none".to_owned();
    vec![
        ("bind", false, c.listen.ip().to_string()),
        ("port", false, c.listen.port().to_string()),
        ("data_dir", false, c.data_dir.display().to_string()),
        ("storage", false, lower(&c.storage)),
        ("durability", false, lower(&c.durability)),
        (
            "storage_cache_mb",
            false,
            (c.storage_cache_bytes >> 20).to_string(),
        ),
        (
            "metrics_addr",
            false,
            c.metrics_addr.map_or("off".to_owned(), |a| a.to_string()),
        ),
        ("max_memory", true, c.max_memory.to_string()),
        (
            "max_memory_policy",
            true,
            c.max_memory_policy.eviction().name().to_owned(),
        ),
        ("default_ttl", true, secs(c.default_ttl)),
        ("regenerate_grace", true, secs(c.regenerate_grace)),
        ("max_value_bytes", true, c.max_value_bytes.to_string()),
        (
            "max_keys_per_session",
            true,
            c.max_keys_per_session.to_string(),
        ),
        ("max_request_bytes", true, c.max_request_bytes.to_string()),
        ("max_connections", true, c.max_connections.to_string()),
        ("lock_max_hold", true, secs(c.lock_max_hold)),
        ("tcp_keepalive", false, secs(c.tcp_keepalive)),
        ("shutdown_timeout", false, secs(c.shutdown_timeout)),
        ("threads", false, c.threads.to_string()),
        (
            "node_id",
            false,
            cluster.map_or_else(none, |c| c.node_id.to_string()),
        ),
        (
            "raft_addr",
            false,
            cluster.map_or_else(none, |c| c.raft_addr.clone()),
        ),
        (
            "initial_cluster",
            false,
            cluster.map_or_else(none, |c| {
                c.initial
                    .iter()
                    .map(|(id, a)| format!("{id}={a}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        ),
        (
            "node_down_after",
            false,
            cluster.map_or_else(none, |c| secs(c.node_down_after)),
        ),
        (
            "raft_snapshot_logs",
            false,
            cluster.map_or_else(none, |c| c.snapshot_logs.to_string()),
        ),
        (
            "raft_heartbeat",
            false,
            cluster.map_or_else(none, |c| c.heartbeat_ms.to_string()),
        ),
        (
            "raft_election_timeout",
            false,
            cluster.map_or_else(none, |c| c.election_timeout_ms.to_string()),
        ),
        (
            "slowlog_log_slower_than",
            true,
            c.slowlog_log_slower_than.to_string(),
        ),
        ("slowlog_max_len", true, c.slowlog_max_len.to_string()),
        ("log_level", true, c.log_level.clone()),
        ("plaintext", false, c.plaintext.to_string()),
        (
            "tls_port",
            false,
            c.tls.as_ref().map_or_else(none, |t| t.port.to_string()),
        ),
        (
            "tls_cert_file",
            false,
            c.tls
                .as_ref()
                .map_or_else(none, |t| t.cert_file.display().to_string()),
        ),
        (
            "tls_key_file",
            false,
            c.tls
                .as_ref()
                .map_or_else(none, |t| t.key_file.display().to_string()),
        ),
        (
            "tls_ca_cert_file",
            false,
            c.tls
                .as_ref()
                .and_then(|t| t.ca_cert_file.as_ref())
                .map_or_else(none, |p| p.display().to_string()),
        ),
        (
            "tls_auth_clients",
            false,
            c.tls.as_ref().map_or_else(none, |t| lower(&t.auth_clients)),
        ),
        // The users' names, classes and prefixes (never their passwords).
        (
            "users",
            false,
            c.users
                .iter()
                .map(|u| u.rule())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    ]
}

/// What differs between the settings in force (`old`) and those read again
/// (`new`), split into what can change now and what needs a restart.
pub fn diff(old: &Config, new: &Config) -> Report {
    let mut report = Report::default();
    for ((name, runtime, from), (_, _, to)) in settings(old).into_iter().zip(settings(new)) {
        if from != to {
            let change = Change { name, from, to };
            if runtime {
                report.applied.push(change);
            } else {
                report.needs_restart.push(change);
            }
        }
    }
    if old.requirepass != new.requirepass {
        let shown = |p: &Option<String>| if p.is_some() { "set" } else { "not set" };
        let to = match (&old.requirepass, &new.requirepass) {
            (Some(_), Some(_)) => "set (another)",
            (_, p) => shown(p),
        };
        report.needs_restart.push(Change {
            name: "requirepass",
            from: shown(&old.requirepass).to_owned(),
            to: to.to_owned(),
        });
    }
    report
}

/// The settings to run with after a reload: `new`'s for what can change at
/// run time, `old`'s for the rest.
pub fn in_force(old: &Config, new: &Config) -> Config {
    Config {
        max_memory: new.max_memory,
        max_memory_policy: new.max_memory_policy,
        default_ttl: new.default_ttl,
        regenerate_grace: new.regenerate_grace,
        max_value_bytes: new.max_value_bytes,
        max_keys_per_session: new.max_keys_per_session,
        max_request_bytes: new.max_request_bytes,
        max_connections: new.max_connections,
        lock_max_hold: new.lock_max_hold,
        slowlog_log_slower_than: new.slowlog_log_slower_than,
        slowlog_max_len: new.slowlog_max_len,
        log_level: new.log_level.clone(),
        ..old.clone()
    }
}

/// Reads the settings again the way the server started and applies them.
pub struct Reloader {
    args: ServeArgs,
    set_log: Option<SetLogFilter>,
}

impl Reloader {
    /// A reloader from the settings as given at start (flags and
    /// environment; the `--config` file is read again at each reload) and
    /// the way to change the log filter (none: a log level change needs a
    /// restart).
    pub fn new(args: ServeArgs, set_log: Option<SetLogFilter>) -> Self {
        Self { args, set_log }
    }

    /// Reads the settings again and puts in force what can change at run
    /// time; returns what changed and what needs a restart.
    ///
    /// # Errors
    /// [`ConfigError`] when the settings do not resolve: nothing changed.
    pub fn reload(&self, shared: &Shared) -> Result<Report, ConfigError> {
        let new = self.args.clone().resolve()?;
        let old = shared.settings();
        let mut report = diff(&old, &new);
        let mut next = in_force(&old, &new);
        if next.log_level != old.log_level {
            let set = match &self.set_log {
                Some(set) => set(&next.log_level),
                None => Err("this server's log filter is fixed".to_owned()),
            };
            if let Err(e) = set {
                tracing::warn!("log_level not changed: {e}");
                next.log_level.clone_from(&old.log_level);
                if let Some(at) = report.applied.iter().position(|c| c.name == "log_level") {
                    let change = report.applied.remove(at);
                    report.needs_restart.push(change);
                }
            }
        }
        let budget = next.memory_budget();
        if budget.max_memory > 0 && budget.data_limit < 1 << 20 {
            tracing::warn!(
                max_memory = budget.max_memory,
                reserved = budget.reserved,
                "max_memory leaves less than 1 MiB for sessions (the storage cache keeps the \
                 size it started with): writes that grow memory will be refused or evict"
            );
        }
        shared.apply_settings(next);
        Ok(report)
    }

    /// [`Reloader::reload`], saying in the log what it did: one line per
    /// changed setting, one per setting that needs a restart, a summary;
    /// or the error.
    pub fn reload_and_log(&self, shared: &Shared) {
        match self.reload(shared) {
            Ok(report) => {
                for c in &report.applied {
                    tracing::info!("reloaded {c}");
                }
                for c in &report.needs_restart {
                    tracing::warn!("not reloaded {c}: needs a restart; still {}", c.from);
                }
                tracing::info!("{}", report.summary());
            }
            Err(e) => tracing::error!("reload failed, settings unchanged: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(edit: impl FnOnce(&mut ServeArgs)) -> Config {
        let mut args = ServeArgs {
            port: Some(0),
            storage: Some(crate::config::StorageKind::Memory),
            metrics_addr: Some("off".into()),
            ..Default::default()
        };
        edit(&mut args);
        args.resolve().unwrap()
    }

    #[test]
    fn the_same_settings_change_nothing() {
        let c = config(|_| {});
        let report = diff(&c, &c);
        assert_eq!(report, Report::default());
        assert_eq!(report.summary(), "settings reloaded: nothing changed");
    }

    #[test]
    fn run_time_settings_are_applied_and_the_others_need_a_restart() {
        let old = config(|a| a.requirepass = Some("one".into()));
        let new = config(|a| {
            a.max_value_bytes = Some(2048);
            a.default_ttl = Some(60);
            a.log_level = Some("debug".into());
            a.port = Some(7000);
            a.durability = Some(crate::config::Durability::Always);
            a.requirepass = Some("two".into());
        });
        let report = diff(&old, &new);
        let shown: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "default_ttl: 1440 -> 60",
                "max_value_bytes: 1048576 -> 2048",
                "log_level: info -> debug",
            ]
        );
        let restart: Vec<String> = report
            .needs_restart
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            restart,
            [
                "port: 0 -> 7000",
                "durability: everysec -> always",
                "requirepass: set -> set (another)",
            ]
        );
        assert!(
            !restart.concat().contains("two"),
            "the password is not shown"
        );
        assert_eq!(
            report.summary(),
            "settings reloaded: 3 changed (default_ttl, max_value_bytes, log_level); \
             3 need a restart (port, durability, requirepass)"
        );
        // What is put in force: the run-time changes only.
        let next = in_force(&old, &new);
        assert_eq!(next.max_value_bytes, 2048);
        assert_eq!(next.listen.port(), 0);
        assert_eq!(next.requirepass.as_deref(), Some("one"));
        let left = diff(&old, &next);
        assert_eq!(left.applied, report.applied);
        assert!(left.needs_restart.is_empty());
        assert_eq!(diff(&next, &new).applied, []);
    }

    #[test]
    fn the_memory_limit_and_policy_change_at_run_time() {
        let old = config(|a| a.storage_cache_mb = Some(8));
        let new = config(|a| {
            a.storage_cache_mb = Some(8);
            a.max_memory = Some("64mb".into());
            a.max_memory_policy = Some(crate::config::MaxMemoryPolicy::AllkeysLru);
        });
        let report = diff(&old, &new);
        let shown: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "max_memory: 0 -> 67108864",
                "max_memory_policy: noeviction -> allkeys-lru",
            ]
        );
        assert!(report.needs_restart.is_empty());
        let next = in_force(&old, &new);
        let memory = next.store_config().memory;
        assert_eq!(memory.policy, sessiond_core::EvictionPolicy::AllkeysLru);
        assert_eq!(memory.max_bytes, new.memory_budget().data_limit);
        assert!(memory.max_bytes > 0);
    }
}
