//! Locks over real TCP against a real server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sessiond_client::{Bytes, Client, Commit, Error, LockOptions, OnceResult};

fn wait(ms: u64) -> LockOptions {
    LockOptions {
        wait: Duration::from_millis(ms),
        create: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_read_increment_commit_unlock_from_32_clients_loses_nothing() {
    let server = common::TestServer::start().await;
    server
        .concurrently(32, |_, mut c| async move {
            for _ in 0..5 {
                let g = c.lock("counter", &wait(30_000)).await.unwrap();
                let n: i64 = g
                    .data
                    .as_ref()
                    .and_then(|d| d.get(b"n"))
                    .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
                    .unwrap_or(0);
                c.commit(
                    "counter",
                    &Commit::new()
                        .fence(g.token)
                        .unlock()
                        .set("n", (n + 1).to_string()),
                )
                .await
                .unwrap();
            }
        })
        .await;
    let s = server.session("counter").await;
    assert_eq!(s.get(b"n").unwrap().as_ref(), b"160");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_dies_releases_its_lock_at_once() {
    let server = common::TestServer::start().await;
    let mut holder = server.client().await;
    holder.lock("dies", &wait(0)).await.unwrap();
    let mut waiter = server.client().await;
    let w = tokio::spawn(async move { waiter.lock("dies", &wait(10_000)).await });
    server.await_waiters("dies", 1).await;
    drop(holder); // the socket closes, as when a PHP worker is killed
    let g = tokio::time::timeout(Duration::from_secs(5), w)
        .await
        .expect("handed off")
        .unwrap()
        .unwrap();
    assert!(g.token > 0);
    server.stop().await;
}

#[tokio::test]
async fn key_locks_on_different_keys_run_in_parallel_and_a_session_lock_excludes_them() {
    let server = common::TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut s = server.client().await;
    a.commit("keys", &Commit::new().create().set("x", "1"))
        .await
        .unwrap();
    let ga = a
        .lock(
            "keys",
            &LockOptions {
                key: Some(Bytes::from("x")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let gb = b
        .lock(
            "keys",
            &LockOptions {
                key: Some(Bytes::from("y")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ga.data.unwrap().fields.len(),
        1,
        "a key lock returns its key"
    );
    let err = s.lock("keys", &wait(0)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    a.unlock("keys", Some(b"x"), ga.token).await.unwrap();
    b.unlock("keys", Some(b"y"), gb.token).await.unwrap();
    let gs = s.lock("keys", &wait(0)).await.unwrap();
    let err = a
        .lock(
            "keys",
            &LockOptions {
                key: Some(Bytes::from("z")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)));
    s.unlock("keys", None, gs.token).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_computes_exactly_once_under_50_callers() {
    let server = common::TestServer::start().await;
    let computed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, computed) = (server.addr, computed.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            c.read(
                "oauth",
                &sessiond_client::ReadOptions {
                    create: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            match c
                .once("oauth", "token", 0, Duration::from_secs(30), None)
                .await
                .unwrap()
            {
                OnceResult::MustCompute { token, .. } => {
                    computed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await; // the identity provider
                    c.commit(
                        "oauth",
                        &Commit::new().fence(token).unlock().set("token", "fresh"),
                    )
                    .await
                    .unwrap();
                    Bytes::from("fresh")
                }
                OnceResult::Computed { value, .. } => value.expect("a computed value"),
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_ref(), b"fresh");
    }
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_holder_past_its_lease_is_fenced() {
    let server = common::TestServer::start().await;
    let mut slow = server.client().await;
    let g = slow
        .lock(
            "lease",
            &LockOptions {
                lease: Some(Duration::from_millis(100)),
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut next = server.client().await;
    let g2 = next.lock("lease", &wait(5_000)).await.unwrap();
    assert!(g2.token > g.token);
    next.commit("lease", &Commit::new().fence(g2.token).set("k", "new"))
        .await
        .unwrap();
    let err = slow
        .commit("lease", &Commit::new().fence(g.token).set("k", "stale"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err:?}");
    let s = next
        .read("lease", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get(b"k").unwrap().as_ref(), b"new");
    server.stop().await;
}

#[tokio::test]
async fn a_wait_that_closes_a_cycle_fails_with_deadlock() {
    let server = common::TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.lock("d1", &wait(0)).await.unwrap();
    b.lock("d2", &wait(0)).await.unwrap();
    let wa = tokio::spawn(async move {
        let r = a.lock("d2", &wait(10_000)).await;
        (a, r)
    });
    server.await_waiters("d2", 1).await;
    let err = b.lock("d1", &wait(10_000)).await.unwrap_err();
    assert!(matches!(err, Error::Deadlock(_)), "{err:?}");
    drop(b);
    let (_a, r) = wa.await.unwrap();
    r.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_inspector_shows_holder_and_waiters_and_break_fences() {
    let server = common::TestServer::start().await;
    let mut holder = sessiond_client::Client::connect_with(
        server.addr,
        sessiond_client::ConnectOptions {
            client_name: Some("web1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let g = holder.lock("insp", &wait(0)).await.unwrap();
    let mut waiter = server.client().await;
    let w = tokio::spawn(async move { waiter.lock("insp", &wait(10_000)).await });
    server.await_waiters("insp", 1).await;
    let mut admin = server.client().await;
    let info = admin.lock_info(Some("insp")).await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].holder_name.as_deref(), Some("web1"));
    assert_eq!(info[0].token, g.token);
    assert_eq!(info[0].waiters.len(), 1);
    assert!(admin.break_lock("insp", None).await.unwrap());
    w.await.unwrap().unwrap();
    let err = holder
        .commit("insp", &Commit::new().fence(g.token).set("k", "v"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced(_)));
    server.stop().await;
}

#[tokio::test]
async fn a_retried_acquire_with_the_same_request_id_gets_the_same_grant() {
    let server = common::TestServer::start().await;
    let opts = LockOptions {
        reqid: Some("req-42".into()),
        create: true,
        ..Default::default()
    };
    let mut first = server.client().await;
    let g1 = first.lock("idem", &opts).await.unwrap();
    let mut retry = server.client().await;
    let g2 = retry.lock("idem", &opts).await.unwrap();
    assert_eq!(g1.token, g2.token);
    server.stop().await;
}
