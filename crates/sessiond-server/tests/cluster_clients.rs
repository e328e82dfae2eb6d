//! The Rust client with a node list against a three-node cluster of real
//! server processes: it connects to the first live node, rides through a
//! SIGKILL of the leader (nothing acknowledged lost, nothing applied twice
//! behind the caller's back), and reports a request whose connection died
//! after it was sent as `UNKNOWN`. And `RESET` on a follower releases the
//! connection's locks through the log before it answers.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{ServerProcess, free_port};
use sessiond_client::{Client, ConnectOptions, Error, IncrOptions, LockOptions, Value};

struct TestCluster {
    _tmp: tempfile::TempDir,
    nodes: Vec<Option<ServerProcess>>,
}

impl TestCluster {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raft: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial = raft
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..3)
            .map(|i| {
                let id = (i + 1).to_string();
                Some(ServerProcess::start(
                    &tmp.path().join(format!("n{id}")),
                    &[
                        "--node-id",
                        &id,
                        "--raft-addr",
                        &raft[i],
                        "--initial-cluster",
                        &initial,
                        "--node-down-after",
                        "2",
                    ],
                ))
            })
            .collect();
        Self { _tmp: tmp, nodes }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node running").addr
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].take() {
            p.kill();
        }
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(p) = n else { continue };
                if let Ok(Ok(mut c)) =
                    tokio::time::timeout(Duration::from_secs(2), Client::connect(p.addr)).await
                    && let Ok(Ok(Value::Bulk(b))) =
                        tokio::time::timeout(Duration::from_secs(2), c.command(&["CLUSTER.INFO"]))
                            .await
                    && String::from_utf8_lossy(&b).contains("role:leader")
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 20 s");
    }
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_node_list_rides_through_a_leader_kill() {
    let mut cluster = TestCluster::start();
    let leader = cluster.leader().await;
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    // A dead address first, then the leader: the client skips the dead one
    // and sits on the leader, which is then killed under it.
    let nodes = [
        dead_addr(),
        cluster.addr(leader),
        cluster.addr(others[0]),
        cluster.addr(others[1]),
    ];
    let mut client = Client::connect_any(&nodes, ConnectOptions::default())
        .await
        .expect("connect_any");
    assert_eq!(client.node(), Some(nodes[1].to_string().as_str()));
    let create = IncrOptions {
        create: true,
        ..Default::default()
    };

    let total = 40;
    let kill_at = 10;
    let (mut acked, mut unknown, mut refused) = (0i64, 0i64, 0i64);
    let mut acked_after_kill = 0;
    let mut last_failure = None;
    let mut killed_at = None;
    let mut first_ack_after_kill = None;
    for i in 0..total {
        if i == kill_at {
            cluster.kill(leader);
            killed_at = Some(Instant::now());
        }
        let r = tokio::time::timeout(Duration::from_secs(20), client.incr("ctr", "n", 1, &create))
            .await
            .expect("every call ends within its failover bounds");
        match r {
            Ok(_) => {
                acked += 1;
                if let Some(at) = killed_at {
                    acked_after_kill += 1;
                    first_ack_after_kill.get_or_insert_with(|| at.elapsed());
                }
            }
            Err(e) if e.is_outcome_unknown() => {
                eprintln!("request {i}: {e}");
                unknown += 1;
                last_failure = Some(i);
            }
            Err(e) => {
                eprintln!("request {i}: not applied: {e}");
                refused += 1;
                last_failure = Some(i);
            }
        }
    }
    eprintln!(
        "acked {acked}, unknown {unknown}, refused {refused}; first ack after the kill after {first_ack_after_kill:?}"
    );
    assert_ne!(client.node(), Some(nodes[1].to_string().as_str()));
    // Once the cluster has a new leader, every request succeeds (the
    // failures, if any, are right after the kill).
    assert!(acked_after_kill > 0);
    assert!(
        last_failure.is_none_or(|i| i < kill_at + 10),
        "request {last_failure:?} failed long after the kill"
    );

    // Reads through a fresh client on the survivors.
    let survivors = [cluster.addr(others[0]), cluster.addr(others[1])];
    let mut reader = Client::connect_any(&survivors, ConnectOptions::default())
        .await
        .expect("connect to the survivors");
    let s = reader
        .read("ctr", &Default::default())
        .await
        .expect("read")
        .expect("ctr exists");
    let n: i64 = std::str::from_utf8(s.get("n").expect("n"))
        .expect("utf8")
        .parse()
        .expect("int");
    // Every acknowledged increment is there; an unknown one may be; a
    // refused one is not.
    assert!(
        acked <= n && n <= acked + unknown,
        "value {n}, acked {acked}, unknown {unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_cut_by_its_node_dying_is_unknown_and_the_client_moves_on() {
    let mut cluster = TestCluster::start();
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut holder = Client::connect(cluster.addr(leader))
        .await
        .expect("connect");
    holder
        .lock(
            "s",
            &LockOptions {
                create: true,
                ..Default::default()
            },
        )
        .await
        .expect("lock");
    let nodes = [
        cluster.addr(follower),
        cluster.addr(other),
        cluster.addr(leader),
    ];
    let mut waiter = Client::connect_any(&nodes, ConnectOptions::default())
        .await
        .expect("connect_any");
    let wait = tokio::spawn(async move {
        let r = waiter
            .lock(
                "s",
                &LockOptions {
                    wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await;
        (waiter, r)
    });
    // The waiter is queued (LOCK.INFO through the leader shows it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // (A waiter on another node has a nil address: the typed LOCK.INFO
        // takes that as empty.)
        let info = holder.lock_info(Some("s")).await.expect("LOCK.INFO");
        if info.iter().any(|l| !l.waiters.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(follower);
    let (mut waiter, r) = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the wait ends when its node dies")
        .expect("task");
    match r {
        Err(Error::Unknown(m)) => assert!(m.contains("may or may not"), "{m}"),
        other => panic!("expected UNKNOWN, got {other:?}"),
    }
    // The next call goes to a live node.
    waiter.ping().await.expect("ping after failover");
    assert_eq!(waiter.node(), Some(nodes[1].to_string().as_str()));
    assert!(waiter.exists("s").await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_follower_releases_the_locks_through_the_log() {
    let cluster = TestCluster::start();
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let resp2 = ConnectOptions {
        resp3: false,
        ..Default::default()
    };
    let mut holder = Client::connect_with(cluster.addr(follower), resp2.clone())
        .await
        .expect("connect");
    let lock = |wait_ms: u64| LockOptions {
        wait: Duration::from_millis(wait_ms),
        create: true,
        ..Default::default()
    };
    holder.lock("r", &lock(0)).await.expect("holder locks");
    let mut other_client = Client::connect_with(cluster.addr(other), resp2)
        .await
        .expect("connect");
    assert!(
        matches!(
            other_client.lock("r", &lock(0)).await,
            Err(Error::Timeout(_))
        ),
        "held by the follower's client"
    );
    let r = holder.command(&["RESET"]).await.expect("reset");
    assert_eq!(r, Value::Simple("RESET".into()));
    // Applied before the reply: a client on a third node gets the lock
    // without waiting.
    other_client
        .lock("r", &lock(0))
        .await
        .expect("free after RESET");
}
