//! `sessiond locks`: the lock inspector on the command line.

use std::time::Duration;

use sessiond_client::{Client, ConnectOptions};

/// Prints the locks of one session or all, as a table. `opts`: user,
/// password, TLS (a `read` user is enough).
///
/// # Errors
/// Connection and protocol errors.
pub async fn print_locks(
    addr: &str,
    session: Option<&str>,
    opts: ConnectOptions,
) -> anyhow::Result<()> {
    let mut client = Client::connect_with(
        addr,
        ConnectOptions {
            client_name: Some("sessiond-locks".into()),
            ..opts
        },
    )
    .await?;
    let locks = client.lock_info(session).await?;
    if locks.is_empty() {
        println!("no locks held");
        return Ok(());
    }
    println!(
        "{:<42} {:<20} {:>22} {:<28} {:>10} {:>10}",
        "SESSION", "SCOPE", "TOKEN", "HOLDER", "HELD", "LEASE"
    );
    for l in locks {
        let scope = match &l.key {
            Some(k) => format!("key {}", String::from_utf8_lossy(k)),
            None => "session".to_owned(),
        };
        let holder = format!(
            "#{} {} {}",
            l.holder_client_id,
            l.holder_name.as_deref().unwrap_or("-"),
            l.holder_addr
        );
        let lease = if l.lease_left_ms < 0 {
            "-".to_owned()
        } else {
            fmt_ms(l.lease_left_ms as u64)
        };
        println!(
            "{:<42} {:<20} {:>22} {:<28} {:>10} {:>10}",
            l.session,
            scope,
            l.token,
            holder,
            fmt_ms(l.held_ms),
            lease
        );
        for (i, w) in l.waiters.iter().enumerate() {
            println!(
                "    waiter {}: #{} {} {} waiting {}",
                i + 1,
                w.client_id,
                w.name.as_deref().unwrap_or("-"),
                w.addr,
                fmt_ms(w.waited_ms)
            );
        }
    }
    Ok(())
}

fn fmt_ms(ms: u64) -> String {
    format!("{:.3}s", Duration::from_millis(ms).as_secs_f64())
}
