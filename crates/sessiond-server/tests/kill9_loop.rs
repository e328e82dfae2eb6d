//! `kill -9` in a loop, in the middle of a write load: under `always`,
//! every acknowledged write survives every kill, and fencing tokens keep
//! growing across the restarts. (Power loss, which drops what the OS had
//! not synced, is tests/crash_consistency.rs.)

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::ServerProcess;
use parking_lot::Mutex;
use sessiond_client::{Client, Commit, LockOptions};

const ROUNDS: u64 = 5;
const WRITERS: usize = 4;
const SESSIONS_PER_WRITER: u64 = 5;

/// Each writer counts up its own sessions; `acked` holds the highest value
/// the server acknowledged per session.
async fn write_until_killed(
    addr: std::net::SocketAddr,
    w: usize,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    start: u64,
) {
    let Ok(mut c) = Client::connect(addr).await else {
        return;
    };
    for n in start.. {
        let id = format!("w{w}s{}", n % SESSIONS_PER_WRITER);
        match c
            .commit(&id, &Commit::new().create().set("n", n.to_string()))
            .await
        {
            Ok(_) => {
                acked.lock().insert(id, n);
            }
            // The kill: the connection is gone.
            Err(_) => return,
        }
        if n > start + 100_000 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_kill_9_mid_load_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut last_token = 0;
    for round in 0..ROUNDS {
        let p = ServerProcess::start(dir.path(), &["--durability", "always"]);
        let mut c = Client::connect(p.addr).await.unwrap();
        // Everything acknowledged in earlier rounds is there.
        let snapshot = acked.lock().clone();
        for (id, n) in snapshot {
            let s = c.read(&id, &Default::default()).await.unwrap();
            let got: u64 = s
                .unwrap_or_else(|| panic!("round {round}: {id} lost"))
                .get("n")
                .map(|v| String::from_utf8_lossy(v).parse().unwrap())
                .unwrap();
            // A write in flight at the kill may have made it too.
            assert!(
                got >= n,
                "round {round}: {id} is {got}, {n} was acknowledged"
            );
        }
        // Fencing tokens never go back across restarts.
        let grant = c
            .lock(
                "fence",
                &LockOptions {
                    create: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            grant.token > last_token,
            "round {round}: token {} after {last_token}",
            grant.token
        );
        last_token = grant.token;
        assert!(c.unlock("fence", None, grant.token).await.unwrap());

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(write_until_killed(
                    p.addr,
                    w,
                    acked.clone(),
                    (round + 1) * 1_000_000,
                ))
            })
            .collect();
        // Kill at a different point of the load each round.
        tokio::time::sleep(Duration::from_millis(50 + 70 * round)).await;
        p.kill();
        for w in writers {
            w.await.unwrap();
        }
    }
    assert!(
        acked.lock().len() as u64 >= SESSIONS_PER_WRITER,
        "the load wrote little"
    );
}
