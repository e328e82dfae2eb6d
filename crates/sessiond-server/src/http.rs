//! The HTTP endpoint on the metrics address: `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::StateGauges;
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
            rss_bytes: 0,
        }
    });
    gauges.rss_bytes = crate::process::rss_bytes();
    gauges
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
                ("200 OK", shared.metrics.render(state_gauges(&shared)))
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
