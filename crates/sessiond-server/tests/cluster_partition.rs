//! Partitions of a three-node cluster of real processes, each node in its
//! own network namespace (created by the test; see `common/netns.rs`): the
//! leader cut off from the other two, and a follower cut off (a 1/2 split),
//! then healed. Under a load of increments and reads from a client on every
//! node, with a lock held by a client of the node that is cut off:
//!
//! - the majority elects a leader (if it lost it) and acknowledges writes;
//! - the cut-off node refuses writes and reads with an error (`TRYAGAIN` or
//!   `UNKNOWN`), never with data;
//! - the lock of the cut-off node's client passes to a waiter on the
//!   majority once the node is declared down, and the old holder's fenced
//!   writes are refused, during the partition and after it heals;
//! - on heal the cut-off node follows the majority's leader;
//! - no acknowledged increment is lost, and the histories of the counter
//!   (a register) and of the lock are linearizable (sessiond-lincheck).
//!
//! And a leader cut off long enough to declare the others down, healed
//! while that declaration is in flight: the locks held through the others
//! stay theirs.
//!
//! The time from the cut to the first acknowledged write is printed.
//! Needs root (network namespaces); without it the test fails, loudly.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{
    Outcome, Recorded, TestCluster, call, call_on, call_once, default_args, fenced_write,
    field_text, field_value, first_ack, grant_token, info_field, load_client, micros_since,
    register_history,
};
use common::netns::NetLab;
use sessiond_client::{Client, Value};
use sessiond_lincheck::{Lock, LockOp, LockRet, Operation, Register, check};

/// A cluster of three, node `i` in namespace `i` of `lab`.
fn start_in_namespaces(lab: &NetLab) -> TestCluster {
    let specs = (0..3)
        .map(|i| {
            (
                format!("{}:7000", lab.peer_ip(i)),
                lab.wrapper(i),
                vec![
                    "--bind".to_owned(),
                    lab.client_ip(i),
                    "--allow-remote-without-password".to_owned(),
                    "true".to_owned(),
                ],
            )
        })
        .collect();
    TestCluster::start(specs, default_args())
}

/// Cuts node `victim` (the leader, or a follower) off from its peers under
/// load, checks what each side answers, heals, and checks the histories.
async fn partition_and_heal(cut_the_leader: bool) {
    // Dropped last: the processes (in `cluster`) go before the namespaces.
    let lab = NetLab::create(3);
    let cluster = start_in_namespaces(&lab);
    let leader = cluster.stable_leader().await;
    let victim = if cut_the_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let majority: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let addr = |i: usize| cluster.addr(i).expect("node runs");
    call(
        addr(leader),
        &["SESSION.COMMIT", "ctr", "CREATE", "TTL", "600"],
    )
    .await
    .expect("create ctr");
    call(
        addr(leader),
        &[
            "SESSION.COMMIT",
            "lk",
            "CREATE",
            "TTL",
            "600",
            "SET",
            "k",
            "init",
        ],
    )
    .await
    .expect("create lk");
    let start = Instant::now();
    let mut lock_history: Vec<Operation<LockOp, LockRet>> = Vec::new();
    let mut minority_calls = Vec::new();

    // A client of the node to be cut off holds the lock, and writes under it.
    let mut holder = Client::connect(addr(victim)).await.expect("connect");
    let at = micros_since(start);
    let grant = holder
        .command(&["LOCK.ACQUIRE", "lk", "WAIT", "5000"])
        .await
        .expect("the holder's grant");
    let t1 = grant_token(&grant).expect("token");
    lock_history.push(Operation {
        client: 1,
        call: at,
        ret: Some(micros_since(start)),
        op: LockOp::Acquire,
        out: LockRet::Granted(t1),
    });
    let t1s = t1.to_string();
    let at = micros_since(start);
    let first_write = call_on(
        &mut holder,
        &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "holder"],
        Duration::from_secs(10),
    )
    .await;
    assert!(first_write.is_done(), "{first_write:?}");
    fenced_write(
        &mut lock_history,
        1,
        at,
        micros_since(start),
        t1,
        &first_write,
    );

    // Load from a client on every node.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| load_client(10 + i as u64, addr(i), start, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The cut.
    lab.cut(victim);
    let cut_at = Instant::now();
    // Once cut off, the holder's lock may end at any time (the majority
    // declares its node down): a release with an unknown outcome.
    lock_history.push(Operation {
        client: 1,
        call: micros_since(start),
        ret: None,
        op: LockOp::Release(t1),
        out: LockRet::Ok,
    });
    let new_leader = cluster.stable_leader_among(&majority).await;
    let elected = cut_at.elapsed();
    let majority_addrs: Vec<SocketAddr> = majority.iter().map(|i| addr(*i)).collect();
    let acked_after = first_ack(&majority_addrs, cut_at).await;
    eprintln!(
        "node {} cut off (it {}): node {} leads after {elected:?}; first acknowledged write {acked_after:?} after the cut",
        victim + 1,
        if cut_the_leader { "led" } else { "followed" },
        new_leader + 1,
    );
    if !cut_the_leader {
        assert_eq!(new_leader, leader, "a follower's cut needs no election");
    }

    // The cut-off node refuses writes and reads: an error, never data. (A
    // write it forwarded on a connection the cut left open answers
    // UNKNOWN, rightly: TCP may still deliver it after the heal.)
    let call_at = micros_since(start);
    let write = call_once(
        addr(victim),
        &["SESSION.INCR", "ctr", "n", "1"],
        Duration::from_secs(15),
    )
    .await;
    let ret_at = micros_since(start);
    let read = call_once(
        addr(victim),
        &["SESSION.READ", "ctr", "KEYS", "n"],
        Duration::from_secs(15),
    )
    .await;
    minority_calls.push(Recorded {
        client: 3,
        call: call_at,
        ret: ret_at,
        is_read: false,
        outcome: write.clone(),
    });
    eprintln!("the cut-off node answered a write: {write:?}; a read: {read:?}");
    for (what, out) in [("write", &write), ("read", &read)] {
        let e = out
            .error()
            .unwrap_or_else(|| panic!("the cut-off node answered a {what}: {out:?}"));
        assert!(
            e.starts_with("TRYAGAIN") || e.starts_with("UNKNOWN") || e == "timeout",
            "a {what} on the cut-off node: {e}"
        );
    }

    // A waiter on the majority gets the lock once the cut-off node is
    // declared down (--node-down-after 2), with a greater token.
    let mut waiter = Client::connect(addr(majority[0])).await.expect("connect");
    let asked = Instant::now();
    let at = micros_since(start);
    let grant = call_on(
        &mut waiter,
        &["LOCK.ACQUIRE", "lk", "WAIT", "30000"],
        Duration::from_secs(40),
    )
    .await;
    let Outcome::Done(grant) = grant else {
        panic!("the waiter on the majority was not granted: {grant:?}")
    };
    let t2 = grant_token(&grant).expect("token");
    eprintln!(
        "node {}: the waiter's node is node {}",
        victim + 1,
        majority[0] + 1
    );
    lock_history.push(Operation {
        client: 2,
        call: at,
        ret: Some(micros_since(start)),
        op: LockOp::Acquire,
        out: LockRet::Granted(t2),
    });
    assert!(t2 > t1, "token {t2} after {t1}");
    eprintln!(
        "the waiter on the majority got the lock after waiting {:?} ({:?} after the cut)",
        asked.elapsed(),
        cut_at.elapsed()
    );
    let t2s = t2.to_string();
    let at = micros_since(start);
    let w = call_on(
        &mut waiter,
        &["SESSION.COMMIT", "lk", "FENCE", &t2s, "SET", "k", "waiter"],
        Duration::from_secs(10),
    )
    .await;
    assert!(w.is_done(), "the new holder's fenced write: {w:?}");
    fenced_write(&mut lock_history, 2, at, micros_since(start), t2, &w);

    // The old holder, still cut off, writes under its old token: refused.
    let at = micros_since(start);
    let stale = call_on(
        &mut holder,
        &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "stale"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        !stale.is_done(),
        "a deposed holder's write passed: {stale:?}"
    );
    fenced_write(&mut lock_history, 1, at, micros_since(start), t1, &stale);

    // Heal: the cut-off node follows the majority's leader.
    lab.heal(victim);
    let healed_at = Instant::now();
    let leader_after = cluster.stable_leader_among(&[0, 1, 2]).await;
    eprintln!(
        "healed: all three follow node {} {:?} after the heal",
        leader_after + 1,
        healed_at.elapsed()
    );
    if cut_the_leader {
        // It lacks the majority's writes, so it cannot win an election.
        assert_ne!(leader_after, victim, "the old leader leads again");
    }
    let info = common::cluster::cluster_info(addr(victim))
        .await
        .expect("info");
    assert_ne!(
        info_field(&info, "role").as_deref(),
        Some("leader"),
        "{info}"
    );

    // The old token stays refused after the heal, through the healed node.
    let at = micros_since(start);
    let stale = call_once(
        addr(victim),
        &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "stale2"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        stale.error().is_some_and(|e| e.starts_with("FENCED")),
        "a deposed holder's write after the heal: {stale:?}"
    );
    fenced_write(&mut lock_history, 1, at, micros_since(start), t1, &stale);
    let at = micros_since(start);
    let released = call_on(
        &mut waiter,
        &["LOCK.RELEASE", "lk", &t2s],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        matches!(released, Outcome::Done(Value::Int(1))),
        "{released:?}"
    );
    lock_history.push(Operation {
        client: 2,
        call: at,
        ret: Some(micros_since(start)),
        op: LockOp::Release(t2),
        out: LockRet::Ok,
    });

    // Some more load after the heal, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut recorded = minority_calls;
    for w in workers {
        recorded.extend(w.await.expect("load client"));
    }
    let (history, acked, unknown) = register_history(recorded);

    // Every acknowledged increment is there, the same through every node;
    // only the new holder's write under the lock is.
    let mut totals = Vec::new();
    for i in 0..3 {
        let v = call(addr(i), &["SESSION.READ", "ctr", "KEYS", "n"])
            .await
            .expect("final read");
        totals.push(field_value(&v).expect("counter"));
        let k = call(addr(i), &["SESSION.READ", "lk", "KEYS", "k"])
            .await
            .expect("read lk");
        assert_eq!(field_text(&k).as_deref(), Some("waiter"), "node {}", i + 1);
    }
    eprintln!(
        "counter {totals:?}: {acked} increments acknowledged, {unknown} unknown; {} operations checked",
        history.len()
    );
    assert!(totals.iter().all(|t| *t == totals[0]), "{totals:?}");
    let total = totals[0];
    assert!(
        total >= acked && total <= acked + unknown,
        "counter {total}: {acked} acknowledged, {unknown} unknown"
    );
    assert!(acked > 20, "too few increments got through: {acked}");
    let verdict = check(&Register::default(), &history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{history:#?}");
    let verdict = check(&Lock::default(), &lock_history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{lock_history:#?}");
    drop(cluster);
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_cut_off_is_replaced_refuses_its_clients_and_rejoins() {
    partition_and_heal(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_refuses_its_clients_and_catches_up_on_heal() {
    partition_and_heal(false).await;
}

/// A leader cut off from the others sees none of them answer and, after
/// `--node-down-after`, proposes to release their connections' locks. It
/// cannot commit that; but when the cut heals while the proposal is still
/// in flight, it must not be carried out by the new leader either: the
/// others were alive all along, and so are their clients' locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_does_not_release_the_locks_of_the_nodes_it_could_not_see() {
    let lab = NetLab::create(3);
    let cluster = start_in_namespaces(&lab);
    let leader = cluster.stable_leader().await;
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    let addr = |i: usize| cluster.addr(i).expect("node runs");
    // A lock held through each of the other two nodes.
    let mut holders = Vec::new();
    for (k, &i) in others.iter().enumerate() {
        let mut c = Client::connect(addr(i)).await.expect("connect");
        let id = format!("held{k}");
        let grant = c
            .command(&["LOCK.ACQUIRE", &id, "CREATE", "WAIT", "5000"])
            .await
            .expect("grant");
        holders.push((c, id, grant_token(&grant).expect("token")));
    }
    lab.cut(leader);
    let cut_at = Instant::now();
    // Past --node-down-after (2 s): the cut-off leader proposes to release
    // the locks of the nodes it cannot reach, and waits up to 5 s for a
    // commit that cannot come. Heal while it waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    lab.heal(leader);
    let new_leader = cluster.stable_leader_among(&[0, 1, 2]).await;
    eprintln!(
        "node {} cut off for {:?}; node {} leads after the heal",
        leader + 1,
        cut_at.elapsed(),
        new_leader + 1
    );
    // Let anything in flight land (the old leader's proposals time out
    // after 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (mut c, id, token) in holders {
        let released = call_on(
            &mut c,
            &["LOCK.RELEASE", &id, &token.to_string()],
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(released, Outcome::Done(Value::Int(1))),
            "the lock on {id}, held through a node that never went away, was lost: {released:?}"
        );
    }
    drop(cluster);
    drop(lab);
}
