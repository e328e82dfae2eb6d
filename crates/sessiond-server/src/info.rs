//! The text of INFO.

use std::fmt::Write;

use crate::state::Shared;

/// INFO's text for `section` (all sections when `None`, `ALL` or `EVERYTHING`).
pub fn render(shared: &Shared, section: Option<&str>) -> String {
    let want = |name: &str| {
        section.is_none_or(|s| {
            s.eq_ignore_ascii_case(name)
                || s.eq_ignore_ascii_case("all")
                || s.eq_ignore_ascii_case("everything")
                || s.eq_ignore_ascii_case("default")
        })
    };
    let (sessions, aliases, store_stats, (held, waiting), lock_stats) = shared.read(|e, _| {
        (
            e.store().len(),
            e.store().alias_count(),
            e.store().stats(),
            e.locks().counts(),
            e.locks().stats(),
        )
    });
    let (policy, progress) = shared.persistence();
    let m = &shared.metrics;
    let mut out = String::new();
    let mut section_text = |name: &str, body: String| {
        if want(name) {
            let _ = write!(out, "# {name}\r\n{body}\r\n");
        }
    };
    section_text(
        "Server",
        format!(
            "sessiond_version:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            shared.config.listen.port(),
            shared.started.elapsed().as_secs()
        ),
    );
    section_text(
        "Clients",
        format!(
            "connected_clients:{}\r\nmaxclients:{}\r\n",
            shared.clients.lock().len(),
            shared.max_connections()
        ),
    );
    section_text(
        "Memory",
        format!("used_memory_rss:{}\r\n", crate::process::rss_bytes()),
    );
    section_text(
        "Sessions",
        format!(
            "sessions:{sessions}\r\naliases:{aliases}\r\nsessions_created:{}\r\nsessions_destroyed:{}\r\nsessions_expired:{}\r\n",
            store_stats.created, store_stats.destroyed, store_stats.expired
        ),
    );
    section_text(
        "Locks",
        format!(
            "locks_held:{held}\r\nlock_waiters:{waiting}\r\nlock_grants:{}\r\nlock_deadlocks:{}\r\nlock_expired:{}\r\nlock_fenced:{}\r\nlock_broken:{}\r\n",
            lock_stats.grants,
            lock_stats.deadlocks,
            lock_stats.expired,
            lock_stats.fenced,
            lock_stats.broken
        ),
    );
    section_text(
        "Persistence",
        crate::persist::info_text(
            &format!("{:?}", shared.config.storage),
            policy,
            &progress,
            &shared.storage_health(),
        ),
    );
    section_text(
        "Stats",
        format!(
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n",
            m.connections_total.get(),
            m.commands_total(),
            m.rejected_connections.get()
        ),
    );
    section_text(
        "Cluster",
        match shared.replication() {
            Some(r) => r.info(),
            None => "node_id:0\r\nrole:standalone\r\n".to_owned(),
        },
    );
    section_text("Commandstats", m.command_stats());
    out
}
