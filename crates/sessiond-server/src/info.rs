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
    let (sessions, aliases, store_stats, (held, waiting), lock_stats, memory) =
        shared.read(|e, _| {
            (
                e.store().len(),
                e.store().alias_count(),
                e.store().stats(),
                e.locks().counts(),
                e.locks().stats(),
                e.store().memory_stats(),
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
            "sessiond_version:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nworker_threads:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            shared.config.listen.port(),
            shared.started.elapsed().as_secs(),
            // The runtime serving this command (`--threads`).
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers())
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
    section_text("Memory", memory_text(shared, memory));
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

/// INFO's Memory section. `used_memory` is what the sessions take as the
/// core accounts them plus what `--max-memory` holds back for the rest of
/// the process (storage cache, connection buffers, baseline), so it reaches
/// `max_memory` when writes start to be refused or to evict.
fn memory_text(shared: &Shared, memory: sessiond_core::MemoryStats) -> String {
    let settings = shared.settings();
    let budget = settings.memory_budget();
    format!(
        "used_memory:{}\r\nused_memory_rss:{}\r\nused_memory_dataset:{}\r\n\
         max_memory:{}\r\nmax_memory_dataset:{}\r\nmax_memory_reserved:{}\r\n\
         max_memory_policy:{}\r\nevicted_sessions:{}\r\noom_refusals:{}\r\n",
        memory.used_bytes + budget.reserved,
        crate::process::rss_bytes(),
        memory.used_bytes,
        budget.max_memory,
        budget.data_limit,
        budget.reserved,
        settings.max_memory_policy.eviction().name(),
        memory.evicted,
        memory.oom_refusals,
    )
}
