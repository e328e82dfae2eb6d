//! The HTTP endpoint on the metrics address: `GET /metrics` (Prometheus or
//! OpenMetrics text, as the `Accept` header asks), `GET /healthz` (the
//! process answers) and `GET /readyz` (it should get traffic).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Format, StateGauges};
use crate::persist::Progress;
use crate::state::Shared;

/// The gauges of the state now.
pub fn state_gauges(shared: &Shared) -> StateGauges {
    let mut gauges = shared.read(|e, _| {
        let (store, locks) = (e.store(), e.locks());
        let (held, waiting) = locks.counts();
        let lock_stats = locks.stats();
        StateGauges {
            sessions: store.len(),
            sessions_expired: store.stats().expired,
            locks_held: held,
            lock_waiters: waiting,
            lock_deadlocks: lock_stats.deadlocks,
            lock_fenced: lock_stats.fenced,
            lock_expired: lock_stats.expired,
            evicted_sessions: store.memory_stats().evicted,
            oom_refusals: store.memory_stats().oom_refusals,
            memory_used: store.used_memory(),
            ..StateGauges::default()
        }
    });
    let (_, progress) = shared.persistence();
    gauges.storage_transactions = progress.transactions;
    gauges.storage_syncs = progress.syncs;
    let health = shared.storage_health();
    let fault = health.fault();
    gauges.storage_failed = progress.failed || fault.is_some();
    gauges.storage_failing_since = fault
        .as_ref()
        .map_or(0, crate::persist::StorageFault::since_unix_secs);
    gauges.storage_failures = health.failures();
    gauges.storage_recoveries = health.recoveries();
    gauges.storage_refused_writes = health.refused_writes();
    gauges.storage_undone_batches = health.undone_batches();
    (gauges.storage_queued_batches, gauges.storage_queued_changes) = health.queued();
    if let Some(log) = health.change_log() {
        gauges.change_log_bytes = log.bytes;
        gauges.change_log_absorbing_rows = log.absorbing_rows;
        gauges.change_log_absorbed = log.absorbed_logs;
    }
    gauges.rss_bytes = crate::process::rss_bytes();
    gauges.cluster = shared
        .replication()
        .map(|r| crate::metrics::ClusterGauges::from_info(&r.info()));
    let budget = shared.settings().memory_budget();
    gauges.memory_used += budget.reserved;
    gauges.memory_limit = budget.max_memory;
    gauges
}

/// Whether the server should get traffic, for `/readyz`: `Ok` with a word,
/// or why not. Loaded and listening are given whenever this endpoint
/// answers (it is served once the data is loaded and both listeners are
/// bound, and stops at shutdown); what is left to check is the storage
/// and, in a cluster, that a leader is known (without one no command that
/// changes anything can get through).
pub fn readiness(shared: &Shared) -> Result<&'static str, String> {
    let (_, progress) = shared.persistence();
    storage_writable(&progress)?;
    if let Some(replication) = shared.replication() {
        leader_known(replication.leader_known())?;
    }
    Ok("ready")
}

/// Whether a cluster node can get commands through.
fn leader_known(known: bool) -> Result<(), String> {
    if known {
        Ok(())
    } else {
        Err("no leader".to_owned())
    }
}

/// Whether writes still reach the disk.
// The one place that reads the writer's failure state: storage fault
// handling is growing, and this check should follow it.
fn storage_writable(progress: &Progress) -> Result<(), String> {
    if progress.failed {
        return Err("storage failed: writes no longer reach the disk".to_owned());
    }
    Ok(())
}

/// One parsed request head: method, path (without the query) and the
/// `Accept` header.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    accept: Option<&'a str>,
}

fn parse_head(head: &str) -> Option<Head<'_>> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?;
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or(target);
    let accept = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim());
    Some(Head {
        method,
        path,
        accept,
    })
}

/// Status line, content type and body for one request.
fn respond(shared: &Shared, head: Option<Head<'_>>) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(head) = head else {
        return ("400 Bad Request", TEXT, "bad request\n".to_owned());
    };
    if head.method != "GET" && head.method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "only GET and HEAD\n".to_owned(),
        );
    }
    match head.path {
        "/metrics" | "/" => {
            let format = Format::from_accept(head.accept);
            (
                "200 OK",
                format.content_type(),
                shared.metrics.render(state_gauges(shared), format),
            )
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" => match readiness(shared) {
            Ok(word) => ("200 OK", TEXT, format!("{word}\n")),
            Err(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Serves the endpoints on `listener` until `shutdown`. A deliberately
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
            let text = String::from_utf8_lossy(&buf[..n]);
            let head = parse_head(&text);
            let is_head = head.as_ref().is_some_and(|h| h.method == "HEAD");
            let (status, content_type, body) = respond(&shared, head);
            let mut resp = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !is_head {
                resp.push_str(&body);
            }
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_request_head() {
        let h = parse_head(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                method: "GET",
                path: "/metrics",
                accept: Some("application/openmetrics-text"),
            }
        );
        assert_eq!(parse_head("GET\r\n\r\n"), None);
        assert_eq!(
            parse_head("GET /readyz HTTP/1.0\r\n\r\n").unwrap().accept,
            None
        );
    }

    #[test]
    fn a_failed_writer_is_not_ready() {
        let mut p = Progress::default();
        assert!(storage_writable(&p).is_ok());
        p.failed = true;
        assert!(storage_writable(&p).unwrap_err().contains("storage failed"));
    }

    #[test]
    fn a_cluster_node_without_a_leader_is_not_ready() {
        assert!(leader_known(true).is_ok());
        assert_eq!(leader_known(false).unwrap_err(), "no leader");
    }
}
