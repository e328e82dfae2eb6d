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
