//! RESET against the real server binary: a connection that is reused for
//! another request (a persistent PHP socket, a pool) sends it first, and
//! nothing the previous request held (a lock, a wait) may survive it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use sessiond_client::{Client, ConnectOptions, Error, LockOptions, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn lock(ms: u64) -> LockOptions {
    LockOptions {
        wait: Duration::from_millis(ms),
        create: true,
        ..Default::default()
    }
}

async fn resp2(addr: SocketAddr) -> Client {
    Client::connect_with(
        addr,
        ConnectOptions {
            resp3: false,
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

fn start() -> (tempfile::TempDir, common::ServerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::ServerProcess::start(dir.path(), &[]);
    (dir, server)
}

/// Reads from `s` until `want` replies (lines starting with `+` or `-`)
/// came, within 10 s (the waits below are 60 s: only a cancelled wait
/// answers in time).
async fn read_replies(s: &mut TcpStream, want: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for _ in 0..1000 {
        let text = String::from_utf8_lossy(&buf).into_owned();
        let lines: Vec<String> = text
            .split("\r\n")
            .filter(|l| l.starts_with('+') || l.starts_with('-'))
            .map(str::to_owned)
            .collect();
        if lines.len() >= want {
            return lines;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no {want} replies (connection: {other:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    panic!("no {want} replies in 1000 reads");
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

#[tokio::test]
async fn reset_releases_the_locks_of_the_connection_and_gives_it_a_new_id() {
    let (_dir, server) = start();
    let mut a = resp2(server.addr).await;
    let grant = a.lock("s1", &lock(0)).await.expect("a locks");
    a.lock(
        "s1",
        &LockOptions {
            key: Some("cart".into()),
            ..lock(0)
        },
    )
    .await
    .expect_err("the session lock covers the key");
    let id_before = a.client_id().await.expect("id");

    let mut b = resp2(server.addr).await;
    let refused = b.lock("s1", &lock(0)).await;
    assert!(matches!(refused, Err(Error::Timeout(_))), "{refused:?}");

    let r = a.command(&["RESET"]).await.expect("reset");
    assert_eq!(r, Value::Simple("RESET".into()));
    // Released before the reply: B gets it without waiting.
    let g = b
        .lock("s1", &lock(0))
        .await
        .expect("b locks after the reset");
    assert_ne!(g.token, grant.token);
    let id_after = a.client_id().await.expect("id");
    assert_ne!(id_before, id_after, "RESET gives the connection a new id");
    // A's old token no longer releases anything; the connection works on.
    assert!(!a.unlock("s1", None, grant.token).await.unwrap_or(false));
    a.ping().await.expect("ping after reset");
    let list = a.command(&["CLIENT", "LIST"]).await.expect("client list");
    let Value::Bulk(list) = list else {
        panic!("{list:?}")
    };
    let list = String::from_utf8_lossy(&list).into_owned();
    assert!(list.contains(&format!("id={id_after} ")), "{list}");
    assert!(!list.contains(&format!("id={id_before} ")), "{list}");
}

#[tokio::test]
async fn a_reset_behind_a_lock_wait_cancels_the_wait() {
    let (_dir, server) = start();
    let mut holder = resp2(server.addr).await;
    let held = holder.lock("s2", &lock(0)).await.expect("holder locks");

    // A waits 60 s for the lock, with a RESET right behind the wait (as a
    // reused connection whose previous request gave up sends it).
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(&resp(&["LOCK.ACQUIRE", "s2", "WAIT", "60000"]))
        .await
        .expect("write");
    // Queued first, then the RESET comes on its own.
    let mut watcher = resp2(server.addr).await;
    let mut queued = false;
    for _ in 0..500 {
        let info = watcher.lock_info(Some("s2")).await.expect("lock info");
        if info.iter().any(|l| !l.waiters.is_empty()) {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued, "the acquire never queued");
    s.write_all(&resp(&["RESET"])).await.expect("write");
    let replies = read_replies(&mut s, 2).await;
    assert!(replies[0].starts_with("-RESET "), "{replies:?}");
    assert_eq!(replies[1], "+RESET");

    // The wait is gone: releasing hands the lock to nobody, and a third
    // client gets it at once.
    assert!(
        holder
            .unlock("s2", None, held.token)
            .await
            .expect("release")
    );
    let mut c = resp2(server.addr).await;
    c.lock("s2", &lock(0))
        .await
        .expect("free after the cancelled wait");

    // The same holds when the RESET arrives in the same write as the acquire.
    let mut s2 = TcpStream::connect(server.addr).await.expect("connect");
    let mut both = resp(&["LOCK.ACQUIRE", "s2", "WAIT", "60000"]);
    both.extend_from_slice(&resp(&["RESET"]));
    s2.write_all(&both).await.expect("write");
    let replies = read_replies(&mut s2, 2).await;
    assert!(replies[0].starts_with("-RESET "), "{replies:?}");
    assert_eq!(replies[1], "+RESET");
}

#[tokio::test]
async fn reset_asks_for_auth_again_when_a_password_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::ServerProcess::start(dir.path(), &["--requirepass", "sekret"]);
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut req = resp(&["AUTH", "sekret"]);
    req.extend_from_slice(&resp(&["PING"]));
    req.extend_from_slice(&resp(&["RESET"]));
    req.extend_from_slice(&resp(&["PING"]));
    req.extend_from_slice(&resp(&["AUTH", "sekret"]));
    req.extend_from_slice(&resp(&["PING"]));
    s.write_all(&req).await.expect("write");
    let replies = read_replies(&mut s, 6).await;
    assert_eq!(replies[0], "+OK");
    assert_eq!(replies[1], "+PONG");
    assert_eq!(replies[2], "+RESET");
    assert!(replies[3].starts_with("-NOAUTH"), "{replies:?}");
    assert_eq!(replies[4], "+OK");
    assert_eq!(replies[5], "+PONG");
}
