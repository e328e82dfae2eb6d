//! The real binary as a process: restarts, kills, signals.

mod common;

use common::ServerProcess;
use sessiond_client::{Client, Commit, LockOptions, ReadOptions};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--durability", "always"]);
    let mut c = Client::connect(p.addr).await.unwrap();
    for i in 0..50 {
        c.commit(
            &format!("s{i}"),
            &Commit::new().create().set("n", i.to_string()),
        )
        .await
        .unwrap();
    }
    c.destroy("s7").await.unwrap();
    p.kill();

    let p = ServerProcess::start(dir.path(), &["--durability", "always"]);
    let mut c = Client::connect(p.addr).await.unwrap();
    for i in 0..50 {
        let s = c
            .read(&format!("s{i}"), &ReadOptions::default())
            .await
            .unwrap();
        if i == 7 {
            assert!(s.is_none(), "a destroyed session stays destroyed");
        } else {
            assert_eq!(
                s.unwrap().get(b"n").unwrap().as_ref(),
                i.to_string().as_bytes()
            );
        }
    }
    // Versions keep growing across the restart.
    let before = c
        .read("s1", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap()
        .version;
    let after = c
        .commit("s1", &Commit::new().set("n", "x"))
        .await
        .unwrap()
        .version;
    assert!(after > before);
}

#[tokio::test]
async fn sigterm_flushes_everything_even_under_no() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--durability", "no"]);
    let mut c = Client::connect(p.addr).await.unwrap();
    for i in 0..20 {
        c.commit("flush", &Commit::new().create().set(format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let status = p.terminate();
    assert!(status.success(), "{status:?}");
    let p = ServerProcess::start(dir.path(), &[]);
    let mut c = Client::connect(p.addr).await.unwrap();
    let s = c
        .read("flush", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.fields.len(), 20);
}

#[tokio::test]
async fn a_restarted_server_never_issues_a_lower_fencing_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &[]);
    let mut c = Client::connect(p.addr).await.unwrap();
    let mut last = 0;
    for _ in 0..5 {
        let g = c
            .lock(
                "f",
                &LockOptions {
                    create: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(g.token > last);
        last = g.token;
        c.unlock("f", None, g.token).await.unwrap();
    }
    p.kill();
    let p = ServerProcess::start(dir.path(), &[]);
    let mut c = Client::connect(p.addr).await.unwrap();
    let g = c.lock("f", &LockOptions::default()).await.unwrap();
    assert!(g.token > last, "{} after {}", g.token, last);
}

/// Lock activity shows up on the Prometheus endpoint: waits, hold times,
/// timeouts, deadlocks, fenced writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_metrics_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let mut a = Client::connect(p.addr).await.unwrap();
    let mut b = Client::connect(p.addr).await.unwrap();
    let g = a.lock("m", &opts(0)).await.unwrap();
    // b times out; then b waits and is handed the lock by a's release.
    assert_eq!(
        b.lock("m", &opts(1)).await.unwrap_err().code(),
        Some("TIMEOUT")
    );
    let waiting = tokio::spawn(async move { (b.lock("m", &opts(30_000)).await, b) });
    while a.lock_info(Some("m")).await.unwrap()[0].waiters.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    a.unlock("m", None, g.token).await.unwrap();
    let (granted, mut b) = waiting.await.unwrap();
    let g2 = granted.unwrap();
    // a's stale token is fenced; b asking for its own lock again deadlocks.
    let stale = a
        .commit("m", &Commit::new().fence(g.token).set("k", "v"))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some("FENCED"));
    assert_eq!(
        b.lock("m", &opts(1_000)).await.unwrap_err().code(),
        Some("DEADLOCK")
    );
    b.unlock("m", None, g2.token).await.unwrap();

    let text = scrape(p.metrics.expect("metrics address"));
    for (metric, want) in [
        ("sessiond_lock_wait_seconds_count", 1.0),
        ("sessiond_lock_hold_seconds_count", 2.0),
        ("sessiond_lock_timeouts_total", 1.0),
        ("sessiond_lock_deadlocks_total", 1.0),
        ("sessiond_lock_fenced_writes_total", 1.0),
        ("sessiond_locks_held", 0.0),
        ("sessiond_lock_waiters", 0.0),
    ] {
        assert_eq!(sample(&text, metric), Some(want), "{metric} in\n{text}");
    }
}

/// With one worker thread (`--threads 1`), a client waiting for a lock
/// holds no thread: other clients are served meanwhile, and the waiter is
/// handed the lock when it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_serves_everyone_while_a_client_waits_for_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--threads", "1"]);
    let mut a = Client::connect(p.addr).await.unwrap();
    let info = a.info(Some("server")).await.unwrap();
    assert!(info.contains("worker_threads:1\r\n"), "{info}");
    let g = a.lock("t", &opts(0)).await.unwrap();
    let mut b = Client::connect(p.addr).await.unwrap();
    let waiting = tokio::spawn(async move { b.lock("t", &opts(30_000)).await });
    while a.lock_info(Some("t")).await.unwrap()[0].waiters.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut c = Client::connect(p.addr).await.unwrap();
    for i in 0..50 {
        let id = format!("other{i}");
        c.commit(&id, &Commit::new().create().set("n", i.to_string()))
            .await
            .unwrap();
        let s = c.read(&id, &ReadOptions::default()).await.unwrap().unwrap();
        assert_eq!(s.get(b"n").unwrap().as_ref(), i.to_string().as_bytes());
    }
    assert!(
        !waiting.is_finished(),
        "the waiter got the lock while a held it"
    );
    a.commit("t", &Commit::new().fence(g.token).set("k", "a").unlock())
        .await
        .unwrap();
    let g2 = waiting.await.unwrap().unwrap();
    assert!(g2.token > g.token);
    assert_eq!(
        g2.data
            .as_ref()
            .and_then(|d| d.get(b"k"))
            .map(|v| v.as_ref()),
        Some(&b"a"[..])
    );
}

async fn persistence_field(c: &mut Client, name: &str) -> Option<u64> {
    let info = c.info(Some("persistence")).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().parse().unwrap())
}

/// INFO and the metrics show the change log: its size grows with writes, a
/// log over its size limit is absorbed into redb; `always` writes redb
/// directly and says so.
#[tokio::test]
async fn info_shows_the_change_log_fill_and_absorb() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(
        dir.path(),
        &["--durability", "everysec", "--metrics-addr", "127.0.0.1:0"],
    );
    let mut c = Client::connect(p.addr).await.unwrap();
    assert_eq!(persistence_field(&mut c, "change_log").await, Some(1));
    assert_eq!(
        persistence_field(&mut c, "change_log_absorbed").await,
        Some(0)
    );
    // 600 KB values: the 4 MiB log rotates after about seven commits; each
    // later write absorbs part of it. Bounded: 200 commits, about 120 MB.
    let big = "x".repeat(600 * 1024);
    let mut grew = false;
    let mut absorbed = false;
    for i in 0..200 {
        c.commit(
            &format!("big{}", i % 10),
            &Commit::new().create().set("v", big.clone()),
        )
        .await
        .unwrap();
        // The writer gathers for up to 50 ms before it writes.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        grew |= persistence_field(&mut c, "change_log_bytes").await.unwrap() > 0;
        if persistence_field(&mut c, "change_log_absorbed")
            .await
            .unwrap()
            >= 1
        {
            absorbed = true;
            break;
        }
    }
    assert!(grew, "the log never held a change");
    assert!(absorbed, "no log was absorbed after 120 MB of writes");
    let text = scrape(p.metrics.expect("metrics address"));
    let absorbed_metric = sample(&text, "sessiond_storage_change_log_absorbed_total");
    assert!(absorbed_metric >= Some(1.0), "{text}");
    assert!(
        sample(&text, "sessiond_storage_change_log_bytes").is_some(),
        "{text}"
    );
    drop(c);
    assert!(p.terminate().success());

    // A clean stop absorbed everything; `always` has no log.
    assert_eq!(
        std::fs::metadata(dir.path().join("sessions.log"))
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );
    let p = ServerProcess::start(dir.path(), &["--durability", "always"]);
    let mut c = Client::connect(p.addr).await.unwrap();
    assert_eq!(persistence_field(&mut c, "change_log").await, Some(0));
    assert_eq!(persistence_field(&mut c, "change_log_bytes").await, None);
    let s = c
        .read("big3", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get(b"v").unwrap().len(), big.len());
}

/// A session lock that creates the session and waits up to `wait_ms`.
fn opts(wait_ms: u64) -> LockOptions {
    LockOptions {
        wait: std::time::Duration::from_millis(wait_ms),
        create: true,
        ..Default::default()
    }
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.") && out.contains(" 200 "), "{out}");
    out
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A read slides the expiry without a storage write of its own; the new
/// last-access time still reaches the disk (here: at shutdown), so a
/// restart does not expire the session by its old deadline.
#[tokio::test]
async fn last_access_moved_by_reads_reaches_the_disk() {
    use sessiond_server::storage::{RedbStorage, Storage};
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--durability", "always"]);
    let mut c = Client::connect(p.addr).await.unwrap();
    c.commit("reader", &Commit::new().create().set("k", "v"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let read_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.read("reader", &ReadOptions::default()).await.unwrap();
    assert!(p.terminate().success());

    let mut storage = RedbStorage::open(&dir.path().join("sessions.redb")).unwrap();
    let loaded = storage.load().unwrap();
    let meta = loaded
        .session(&sessiond_core::SessionId::parse(b"reader").unwrap())
        .expect("the session is stored")
        .meta;
    // The server's clock may trail the test's by the ms it rounds off.
    assert!(
        meta.last_access + 1 >= read_at,
        "last access {} on disk is from before the read at {read_at}",
        meta.last_access
    );
}
