//! The verdict of a run: the notes and the pass/fail of each target
//! (docs/benchmarks.md), computed from the report's rows.

use crate::report::{CycleRow, Report, Target as Goal, redis_peer};
use crate::store;

/// Adds the notes every report carries.
pub fn notes(rep: &mut Report) {
    rep.notes.push(
        "Every store is driven by the same code: blocking sockets, one thread per connection, one request in flight (no pipelining except when preloading), a small hand-written RESP2 (sessiond, Redis) or memcached text client."
            .into(),
    );
    if let Some(s) = &rep.scale
        && s.sessions < 1_000_000
    {
        rep.notes.push(format!(
            "The scale benchmark ran with {} sessions, not 1,000,000.",
            s.sessions
        ));
    }
}

/// Compares every sessiond row of `rows` with its Redis peer (same size,
/// connections and durability): the lowest throughput ratio, and whether it
/// is at least `min_ratio` (and, with `check_p99`, whether p99 was never
/// worse). `None` when no row has a peer.
pub fn ratio_goal(rows: &[CycleRow], min_ratio: f64, check_p99: bool) -> Option<(String, bool)> {
    let mut worst: Option<(f64, String)> = None;
    let mut p99_bad = Vec::new();
    let mut cells = 0;
    for r in rows.iter().filter(|r| r.store.starts_with("sessiond")) {
        let Some(p) = rows.iter().find(|p| {
            p.store == redis_peer(&r.durability) && p.size == r.size && p.conns == r.conns
        }) else {
            continue;
        };
        if p.ops_per_sec <= 0.0 {
            continue;
        }
        cells += 1;
        let x = r.ops_per_sec / p.ops_per_sec;
        let label = format!(
            "{} vs {} {} c={}",
            r.store,
            p.store,
            store::shape(r.size).label(),
            r.conns
        );
        if worst.as_ref().is_none_or(|w| x < w.0) {
            worst = Some((x, label.clone()));
        }
        if check_p99 && r.lat.p99_us > p.lat.p99_us {
            p99_bad.push(format!(
                "{label}: p99 {:.0} µs vs {:.0} µs",
                r.lat.p99_us, p.lat.p99_us
            ));
        }
    }
    let (w, label) = worst?;
    let mut m = format!("{cells} cells; lowest ratio {w:.2}× ({label})");
    if check_p99 {
        if p99_bad.is_empty() {
            m.push_str("; p99 never worse");
        } else {
            m.push_str(&format!(
                "; p99 worse in {} cells, e.g. {}",
                p99_bad.len(),
                p99_bad[0]
            ));
        }
    }
    Some((m, w >= min_ratio && p99_bad.is_empty()))
}

/// Every target of docs/benchmarks.md with what was measured against it.
/// The lowest ratio of `store` to `peer` over the cluster benchmark's cells
/// (both workloads, every connection count), and whether it is at least
/// `min`.
fn cluster_goal(rep: &Report, store: &str, peer: &str, min: f64) -> Option<(String, bool)> {
    let mut cells = Vec::new();
    for (label, rows) in [
        ("cycle", &rep.cluster_cycle),
        ("locked", &rep.cluster_locked),
    ] {
        let mut conns: Vec<usize> = rows.iter().map(|r| r.conns).collect();
        conns.sort_unstable();
        conns.dedup();
        for c in conns {
            if let Some(x) = crate::report::cluster_ratio(rows, c, store, peer) {
                cells.push((x, format!("{label} c={c} {x:.2}×")));
            }
        }
    }
    let worst = cells.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
    (!cells.is_empty()).then(|| {
        let each: Vec<String> = cells.into_iter().map(|c| c.1).collect();
        (
            format!("{store} ÷ {peer}: lowest {worst:.2}× ({})", each.join(", ")),
            worst >= min,
        )
    })
}

pub fn targets(rep: &Report) -> Vec<Goal> {
    let mut g = Vec::new();
    let push = |g: &mut Vec<Goal>, t: &str, m: Option<(String, bool)>| {
        g.push(match m {
            Some((measured, met)) => Goal {
                target: t.into(),
                measured,
                met: Some(met),
            },
            None => Goal {
                target: t.into(),
                measured: "not measured".into(),
                met: None,
            },
        });
    };
    for (target, store, peer, min) in [
        (
            "Cluster (3 nodes) ≥ 0.5× one node, session and locked cycle",
            "sessiond-cluster3",
            "sessiond-1node",
            0.5,
        ),
        (
            "Cluster (3 nodes) ≥ 1.0× Redis with a replica and WAIT 1 0",
            "sessiond-cluster3",
            "redis-wait",
            1.0,
        ),
        (
            "Cluster (3 nodes, `always`) ≥ 5× etcd 3.4 (both fsync the log before acknowledging)",
            "sessiond-cluster3-always",
            "etcd3",
            5.0,
        ),
    ] {
        push(&mut g, target, cluster_goal(rep, store, peer, min));
    }
    push(
        &mut g,
        "Failover p99 ≤ 1 s (leader SIGKILL → first acknowledged write)",
        // The goal is about a crash; a run with SIGTERM (a rolling
        // restart, `--failover-signal term`) is reported on its own.
        rep.failover.as_ref().filter(|f| f.signal_name() == "SIGKILL").map(|f| {
            (
                format!(
                    "{} × {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} increments acknowledged, counter {}",
                    f.kills,
                    f.signal_name(),
                    f.p50_ms,
                    f.p99_ms,
                    f.max_ms,
                    f.increments_acknowledged,
                    f.final_value
                ),
                f.p99_ms <= 1000.0
                    && i64::try_from(f.increments_acknowledged).ok() == Some(f.final_value),
            )
        }),
    );
    push(
        &mut g,
        "Session cycle throughput ≥ 1.0× Redis at equal durability, p99 no worse",
        ratio_goal(&rep.cycle, 1.0, true),
    );
    push(
        &mut g,
        "Locked cycle throughput ≥ 1.5× the phpredis recipe",
        ratio_goal(&rep.locked, 1.5, false),
    );
    let ping = rep
        .ping
        .iter()
        .find(|p| p.store.starts_with("sessiond") && !p.store.contains("idle"))
        .map(|p| p.lat.p50_us);
    let sd: Vec<_> = rep
        .handoff
        .iter()
        .filter(|h| h.contender == "sessiond")
        .collect();
    push(
        &mut g,
        "Hand-off p50 within 2× of one loopback round trip",
        ping.filter(|_| !sd.is_empty()).map(|rtt| {
            let worst = sd
                .iter()
                .map(|h| h.handoff.p50_us / rtt)
                .fold(0.0, f64::max);
            let each: Vec<String> = sd
                .iter()
                .map(|h| {
                    format!(
                        "{} clients {:.0} µs = {:.1}×",
                        h.clients,
                        h.handoff.p50_us,
                        h.handoff.p50_us / rtt
                    )
                })
                .collect();
            (
                format!("PING p50 {rtt:.0} µs; {}", each.join(", ")),
                worst <= 2.0,
            )
        }),
    );
    let polling: Vec<_> = rep
        .handoff
        .iter()
        .filter(|h| h.contender == "phpredis-6 recipe")
        .collect();
    push(
        &mut g,
        "Hand-off ≥ 100× faster than the phpredis recipe's polling (p50)",
        (!sd.is_empty() && !polling.is_empty()).then(|| {
            let mut worst = f64::INFINITY;
            let mut each = Vec::new();
            for h in &sd {
                if let Some(p) = polling.iter().find(|p| p.clients == h.clients) {
                    let x = p.handoff.p50_us / h.handoff.p50_us.max(1e-3);
                    worst = worst.min(x);
                    each.push(format!("{} clients {:.0}×", h.clients, x));
                }
            }
            (each.join(", "), worst >= 100.0)
        }),
    );
    push(
        &mut g,
        "Memory per idle 1 KB session ≤ 1.5× Redis's",
        rep.scale.as_ref().map(|s| {
            let x = s.sessiond_bytes_per_session / s.redis_bytes_per_session.max(1.0);
            let y = s.sessiond_bytes_per_session_after_restart / s.redis_bytes_per_session.max(1.0);
            (
                format!(
                    "{} sessions: {:.0} B vs {:.0} B = {x:.2}× (after restart {:.0} B = {y:.2}×)",
                    s.sessions,
                    s.sessiond_bytes_per_session,
                    s.redis_bytes_per_session,
                    s.sessiond_bytes_per_session_after_restart
                ),
                x <= 1.5,
            )
        }),
    );
    push(
        &mut g,
        "Expiring 1M sessions costs < 10% of throughput while it runs",
        rep.scale.as_ref().and_then(|s| {
            s.expiry.as_ref().map(|e| {
                (
                    format!(
                        "{} sessions in {:.1} s: {:.1}% dip ({:.0} → {:.0} ops/s)",
                        e.expired,
                        e.expiry_secs,
                        e.dip_pct,
                        e.ops_per_sec_before,
                        e.ops_per_sec_during
                    ),
                    e.dip_pct < 10.0,
                )
            })
        }),
    );
    push(
        &mut g,
        "Restart with 1M sessions serving in ≤ 5 s",
        rep.scale.as_ref().map(|s| {
            (
                format!(
                    "{} sessions: serving after {:.2} s, {} of {} intact",
                    s.sessions, s.restart_serving_secs, s.restart_sessions_verified, s.sessions
                ),
                s.restart_serving_secs <= 5.0 && s.restart_sessions_verified == s.sessions,
            )
        }),
    );
    push(
        &mut g,
        "Cluster node restart with 1M sessions serving in ≤ 5 s",
        rep.scale
            .as_ref()
            .and_then(|s| s.cluster_node.as_ref().map(|c| (s, c)))
            .map(|(s, c)| {
                (
                    format!(
                        "{} sessions: first read after {:.2} s, {} of {} intact",
                        s.sessions, c.restart_serving_secs, c.sessions_verified, s.sessions
                    ),
                    c.restart_serving_secs <= 5.0 && c.sessions_verified == s.sessions,
                )
            }),
    );
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Lat;
    use crate::report::{HandoffRow, PingRow, Scale};

    fn row(store: &str, durability: &str, conns: usize, ops: f64, p99: f64) -> CycleRow {
        CycleRow {
            store: store.into(),
            durability: durability.into(),
            size: 1024,
            conns,
            ops_per_sec: ops,
            lat: Lat {
                p99_us: p99,
                ..Lat::default()
            },
            ..CycleRow::default()
        }
    }

    fn p50(us: f64) -> Lat {
        Lat {
            p50_us: us,
            ..Lat::default()
        }
    }

    fn handoff(contender: &str, clients: usize, p50_us: f64) -> HandoffRow {
        HandoffRow {
            contender: contender.into(),
            clients,
            handoff: p50(p50_us),
            ..HandoffRow::default()
        }
    }

    fn goal<'a>(goals: &'a [Goal], prefix: &str) -> &'a Goal {
        goals
            .iter()
            .find(|g| g.target.starts_with(prefix))
            .unwrap_or_else(|| panic!("no target {prefix:?}"))
    }

    #[test]
    fn the_ratio_goal_takes_the_lowest_ratio_over_all_cells() {
        let rows = [
            row("sessiond", "everysec", 8, 150.0, 10.0),
            row("redis-everysec", "everysec", 8, 100.0, 10.0),
            row("sessiond", "everysec", 1, 90.0, 10.0),
            row("redis-everysec", "everysec", 1, 100.0, 10.0),
        ];
        let (measured, met) = ratio_goal(&rows, 1.0, false).unwrap();
        assert!(!met, "0.9× is below 1.0×: {measured}");
        assert!(
            measured
                .starts_with("2 cells; lowest ratio 0.90× (sessiond vs redis-everysec 1KB c=1)"),
            "{measured}"
        );
        assert!(ratio_goal(&rows, 0.9, false).unwrap().1, "0.9× meets 0.9×");
    }

    #[test]
    fn a_worse_p99_fails_the_goal_only_when_p99_is_checked() {
        let rows = [
            row("sessiond", "always", 8, 200.0, 11.0),
            row("redis-always", "always", 8, 100.0, 10.0),
        ];
        let (measured, met) = ratio_goal(&rows, 1.0, true).unwrap();
        assert!(!met, "{measured}");
        assert!(measured.contains("p99 worse in 1 cells"), "{measured}");
        let (measured, met) = ratio_goal(&rows, 1.0, false).unwrap();
        assert!(met, "{measured}");
        assert!(!measured.contains("p99"), "{measured}");
        let better = [
            row("sessiond", "always", 8, 200.0, 9.0),
            row("redis-always", "always", 8, 100.0, 10.0),
        ];
        let (measured, met) = ratio_goal(&better, 1.0, true).unwrap();
        assert!(met && measured.ends_with("; p99 never worse"), "{measured}");
    }

    #[test]
    fn only_the_redis_peer_at_equal_durability_counts() {
        // sessiond under `always` against Redis with `everysec` is no cell.
        let rows = [
            row("sessiond", "always", 8, 50.0, 10.0),
            row("redis-everysec", "everysec", 8, 100.0, 10.0),
        ];
        assert_eq!(ratio_goal(&rows, 1.0, false), None);
        // A peer that measured nothing is no cell either.
        let rows = [
            row("sessiond", "everysec", 8, 50.0, 10.0),
            row("redis-everysec", "everysec", 8, 0.0, 10.0),
        ];
        assert_eq!(ratio_goal(&rows, 1.0, false), None);
    }

    #[test]
    fn the_cluster_is_judged_by_its_lowest_ratio_and_the_failover_by_p99_and_its_count() {
        let rep = Report {
            cluster_cycle: vec![
                row("sessiond-1node", "everysec", 1, 1000.0, 10.0),
                row("sessiond-cluster3", "log in the OS of 2", 1, 600.0, 10.0),
                row("sessiond-1node", "everysec", 8, 1000.0, 10.0),
                row("sessiond-cluster3", "log in the OS of 2", 8, 400.0, 10.0),
            ],
            failover: Some(crate::report::Failover {
                kills: 2,
                samples_ms: vec![700.0, 900.0],
                p50_ms: 700.0,
                p99_ms: 900.0,
                max_ms: 900.0,
                increments_acknowledged: 3,
                final_value: 3,
                signal: String::new(),
            }),
            ..Report::default()
        };
        let goals = targets(&rep);
        let one_node = goal(&goals, "Cluster (3 nodes) ≥ 0.5× one node");
        assert_eq!(one_node.met, Some(false), "{}", one_node.measured);
        assert!(
            one_node.measured.contains("lowest 0.40×"),
            "{}",
            one_node.measured
        );
        assert_eq!(goal(&goals, "Failover p99").met, Some(true));
        // A lost increment fails the failover goal whatever the times.
        let mut lost = rep;
        if let Some(f) = &mut lost.failover {
            f.final_value = 2;
        }
        assert_eq!(goal(&targets(&lost), "Failover p99").met, Some(false));
    }

    #[test]
    fn nothing_measured_means_no_verdict() {
        let goals = targets(&Report::default());
        assert_eq!(goals.len(), 12);
        for g in &goals {
            assert_eq!(g.met, None, "{}", g.target);
            assert_eq!(g.measured, "not measured");
        }
    }

    #[test]
    fn hand_off_is_judged_against_the_round_trip_and_the_polling_recipe() {
        let mut rep = Report {
            ping: vec![PingRow {
                store: "sessiond".into(),
                lat: p50(50.0),
            }],
            handoff: vec![
                handoff("sessiond", 2, 100.0),
                handoff("phpredis-6 recipe", 2, 10_000.0),
            ],
            ..Report::default()
        };
        let goals = targets(&rep);
        assert_eq!(goal(&goals, "Hand-off p50 within 2×").met, Some(true));
        assert_eq!(goal(&goals, "Hand-off ≥ 100×").met, Some(true));
        rep.handoff[0].handoff.p50_us = 101.0;
        let goals = targets(&rep);
        assert_eq!(goal(&goals, "Hand-off p50 within 2×").met, Some(false));
        assert_eq!(goal(&goals, "Hand-off ≥ 100×").met, Some(false));
    }

    #[test]
    fn memory_and_restart_are_judged_from_the_scale_run() {
        let mut rep = Report {
            scale: Some(Scale {
                sessions: 1000,
                sessiond_bytes_per_session: 1500.0,
                redis_bytes_per_session: 1000.0,
                restart_serving_secs: 5.0,
                restart_sessions_verified: 1000,
                ..Scale::default()
            }),
            ..Report::default()
        };
        let goals = targets(&rep);
        assert_eq!(goal(&goals, "Memory per idle").met, Some(true));
        assert_eq!(goal(&goals, "Restart with 1M").met, Some(true));
        assert_eq!(goal(&goals, "Expiring 1M").met, None);
        if let Some(s) = rep.scale.as_mut() {
            s.sessiond_bytes_per_session = 1501.0;
            s.restart_sessions_verified = 999;
        }
        let goals = targets(&rep);
        assert_eq!(goal(&goals, "Memory per idle").met, Some(false));
        assert_eq!(goal(&goals, "Restart with 1M").met, Some(false));
    }

    #[test]
    fn a_small_scale_run_is_noted() {
        let mut rep = Report {
            scale: Some(Scale {
                sessions: 1000,
                ..Scale::default()
            }),
            ..Report::default()
        };
        notes(&mut rep);
        assert_eq!(rep.notes.len(), 2);
        assert!(rep.notes[1].contains("1000 sessions, not 1,000,000"));
    }
}
