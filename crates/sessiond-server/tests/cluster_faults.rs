//! Process faults of a three-node cluster of real processes on loopback
//! (`--durability always`):
//!
//! - the leader stopped with SIGSTOP past the election timeout and the
//!   lock-delay, then resumed: the others elect a leader and serve, the
//!   lock of the stopped leader's client passes to a waiter, the old
//!   holder's fenced write (sent while it was stopped) is refused, it steps
//!   down, and nothing acknowledged is lost;
//! - every node killed at once under load and restarted: everything
//!   acknowledged is there;
//! - a follower's disk lost: it is removed (`CLUSTER.REMOVE`), its data
//!   directory deleted, the log compacted behind snapshots meanwhile
//!   (`--raft-snapshot-logs 20`); started again empty and added back
//!   (`CLUSTER.ADDLEARNER`, `CLUSTER.PROMOTE`), it catches up from a
//!   snapshot and its own engine holds the data. (Restarting a wiped voter
//!   without removing it first makes openraft's leader panic in debug
//!   builds, "follower log reversion is not allowed": Raft cannot take
//!   back a voter that forgot what it acknowledged.)
//!
//! Histories are checked with sessiond-lincheck. Times from each fault to
//! the first acknowledged write are printed, never asserted.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{
    Outcome, TestCluster, call, call_on, call_once, cluster_info, default_args, fenced_write,
    field_text, field_value, first_ack, grant_token, info_field, info_number, load_client,
    micros_since, register_history,
};
use sessiond_client::{Client, Value};
use sessiond_lincheck::{Lock, LockOp, LockRet, Operation, Register, check};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_steps_down_and_its_stale_holder_is_fenced() {
    let mut cluster = TestCluster::loopback(3, default_args());
    let leader = cluster.stable_leader().await;
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i).expect("runs")).collect();
    let old_term: u64 = info_number(addrs[leader], "CLUSTER.INFO", "term")
        .await
        .expect("term");
    call(
        addrs[leader],
        &["SESSION.COMMIT", "ctr", "CREATE", "TTL", "600"],
    )
    .await
    .expect("create ctr");
    call(
        addrs[leader],
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

    // A client of the leader holds the lock and writes under it.
    let mut holder = Client::connect(addrs[leader]).await.expect("connect");
    let at = micros_since(start);
    let grant = holder
        .command(&["LOCK.ACQUIRE", "lk", "WAIT", "5000"])
        .await
        .expect("grant");
    let t1 = grant_token(&grant).expect("token");
    lock_history.push(Operation {
        client: 1,
        call: at,
        ret: Some(micros_since(start)),
        op: LockOp::Acquire,
        out: LockRet::Granted(t1),
    });
    let t1s = t1.to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| load_client(10 + i as u64, addrs[i], start, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // SIGSTOP: the leader's process freezes, its sockets stay open.
    cluster.pause(leader);
    let paused_at = Instant::now();
    lock_history.push(Operation {
        client: 1,
        call: micros_since(start),
        ret: None,
        op: LockOp::Release(t1),
        out: LockRet::Ok,
    });
    let new_leader = cluster.stable_leader_among(&others).await;
    let acked = first_ack(&[addrs[others[0]], addrs[others[1]]], paused_at).await;
    eprintln!(
        "leader (node {}) stopped: node {} leads; first acknowledged write {acked:?} after the stop",
        leader + 1,
        new_leader + 1
    );

    // A waiter on another node gets the lock (lock-delay: 2 s).
    let mut waiter = Client::connect(addrs[others[0]]).await.expect("connect");
    let asked = Instant::now();
    let at = micros_since(start);
    let grant = call_on(
        &mut waiter,
        &["LOCK.ACQUIRE", "lk", "WAIT", "30000"],
        Duration::from_secs(40),
    )
    .await;
    let Outcome::Done(grant) = grant else {
        panic!("the waiter was not granted: {grant:?}")
    };
    let t2 = grant_token(&grant).expect("token");
    assert!(t2 > t1, "token {t2} after {t1}");
    lock_history.push(Operation {
        client: 2,
        call: at,
        ret: Some(micros_since(start)),
        op: LockOp::Acquire,
        out: LockRet::Granted(t2),
    });
    eprintln!(
        "the waiter got the stopped leader's client's lock after {:?}",
        asked.elapsed()
    );
    let t2s = t2.to_string();
    let at = micros_since(start);
    let w = call_on(
        &mut waiter,
        &["SESSION.COMMIT", "lk", "FENCE", &t2s, "SET", "k", "waiter"],
        Duration::from_secs(10),
    )
    .await;
    assert!(w.is_done(), "{w:?}");
    fenced_write(&mut lock_history, 2, at, micros_since(start), t2, &w);

    // The old holder writes under its old token to its stopped node, which
    // reads it only when it resumes, still believing it leads.
    let stale_at = micros_since(start);
    let stale = tokio::spawn(async move {
        let out = call_on(
            &mut holder,
            &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "stale"],
            Duration::from_secs(20),
        )
        .await;
        (out, holder)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.resume(leader);
    let resumed_at = Instant::now();
    let (stale, mut holder) = stale.await.expect("stale write");
    eprintln!("the stale holder's write, sent while its node was stopped: {stale:?}");
    assert!(!stale.is_done(), "a stale holder's write passed: {stale:?}");
    fenced_write(
        &mut lock_history,
        1,
        stale_at,
        micros_since(start),
        t1,
        &stale,
    );
    let all = cluster.stable_leader().await;
    eprintln!(
        "resumed: all follow node {} {:?} after the resume",
        all + 1,
        resumed_at.elapsed()
    );
    assert_ne!(all, leader, "the stopped leader lacks the new writes");
    let info = cluster_info(addrs[leader]).await.expect("info");
    assert_ne!(
        info_field(&info, "role").as_deref(),
        Some("leader"),
        "{info}"
    );
    let term: u64 = info_field(&info, "term")
        .and_then(|t| t.parse().ok())
        .expect("term");
    assert!(term > old_term, "term {term} after {old_term}");

    // Again after the resume, on the same connection: FENCED.
    let t1s = t1.to_string();
    let at = micros_since(start);
    let again = call_on(
        &mut holder,
        &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "stale2"],
        Duration::from_secs(15),
    )
    .await;
    let again = match again {
        // The node may have closed the connection of its old run.
        Outcome::NotApplied(e) | Outcome::Unknown(e) if e.contains("closed") => {
            call_once(
                addrs[leader],
                &["SESSION.COMMIT", "lk", "FENCE", &t1s, "SET", "k", "stale2"],
                Duration::from_secs(15),
            )
            .await
        }
        other => other,
    };
    assert!(
        again.error().is_some_and(|e| e.starts_with("FENCED")),
        "{again:?}"
    );
    fenced_write(&mut lock_history, 1, at, micros_since(start), t1, &again);

    stop.store(true, Ordering::Relaxed);
    let mut recorded = Vec::new();
    for w in workers {
        recorded.extend(w.await.expect("load client"));
    }
    let (history, acked, unknown) = register_history(recorded);
    for addr in &addrs {
        let k = call(*addr, &["SESSION.READ", "lk", "KEYS", "k"])
            .await
            .expect("read");
        assert_eq!(field_text(&k).as_deref(), Some("waiter"));
    }
    let v = call(addrs[all], &["SESSION.READ", "ctr", "KEYS", "n"])
        .await
        .expect("read");
    let total = field_value(&v).expect("counter");
    eprintln!("counter {total}: {acked} acknowledged, {unknown} unknown");
    assert!(
        total >= acked && total <= acked + unknown,
        "counter {total}: {acked} acknowledged, {unknown} unknown"
    );
    assert!(acked > 20, "too few increments: {acked}");
    let verdict = check(&Register::default(), &history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{history:#?}");
    let verdict = check(&Lock::default(), &lock_history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{lock_history:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_keeps_everything_acknowledged() {
    let mut cluster = TestCluster::loopback(3, default_args());
    let leader = cluster.stable_leader().await;
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i).expect("runs")).collect();
    call(
        addrs[leader],
        &["SESSION.COMMIT", "ctr", "CREATE", "TTL", "600"],
    )
    .await
    .expect("create ctr");
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| load_client(10 + i as u64, addrs[i], start, stop.clone()))
        .collect();
    // Sessions written through every node, each acknowledged one noted.
    let mut written = Vec::new();
    for i in 0..60 {
        let id = format!("s{i}");
        let value = format!("v{i}");
        let out = call_once(
            addrs[i % 3],
            &[
                "SESSION.COMMIT",
                &id,
                "CREATE",
                "TTL",
                "600",
                "SET",
                "f",
                &value,
            ],
            Duration::from_secs(10),
        )
        .await;
        if out.is_done() {
            written.push((id, value));
        }
    }
    assert!(
        written.len() > 50,
        "only {} commits acknowledged",
        written.len()
    );
    // All three at once, with the load still running.
    for i in 0..3 {
        cluster.kill(i);
    }
    let killed_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut recorded = Vec::new();
    for w in workers {
        recorded.extend(w.await.expect("load client"));
    }
    for i in 0..3 {
        cluster.start_node(i);
    }
    let leader = cluster.stable_leader().await;
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i).expect("runs")).collect();
    let acked_after = first_ack(&addrs, killed_at).await;
    eprintln!(
        "all three killed and restarted: node {} leads; first acknowledged write {acked_after:?} after the kill",
        leader + 1
    );
    for (id, value) in &written {
        for addr in &addrs {
            let v = call(*addr, &["SESSION.READ", id, "KEYS", "f"])
                .await
                .expect("read");
            assert_eq!(field_text(&v).as_deref(), Some(value.as_str()), "{id}");
        }
    }
    let (history, acked, unknown) = register_history(recorded);
    let v = call(addrs[leader], &["SESSION.READ", "ctr", "KEYS", "n"])
        .await
        .expect("read");
    let total = field_value(&v).expect("counter");
    eprintln!(
        "{} sessions and counter {total} ({acked} acknowledged, {unknown} unknown) kept",
        written.len()
    );
    assert!(
        total >= acked && total <= acked + unknown,
        "counter {total}: {acked} acknowledged, {unknown} unknown"
    );
    let verdict = check(&Register::default(), &history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{history:#?}");
}

/// A voter whose data directory was lost must not come back as the same
/// voter (it would forget entries it acknowledged): started again on an
/// empty directory with the same flags, it exits naming the way out
/// (removed and added again: the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_data_is_refused_with_the_way_out() {
    let mut cluster = TestCluster::loopback(3, default_args());
    let leader = cluster.stable_leader().await;
    let victim = (leader + 1) % 3;
    let laddr = cluster.addr(leader).expect("runs");
    for i in 0..20 {
        let id = format!("v{i}");
        call(laddr, &["SESSION.COMMIT", &id, "CREATE", "SET", "f", &id])
            .await
            .unwrap_or_else(|e| panic!("commit {id}: {e}"));
    }
    // Its log reached the leader's last entries (it acknowledged them).
    let last = info_number(laddr, "CLUSTER.INFO", "last_log_index")
        .await
        .expect("last_log_index");
    let vaddr = cluster.addr(victim).expect("runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while info_number(vaddr, "CLUSTER.INFO", "last_log_index")
        .await
        .unwrap_or(0)
        < last
    {
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill(victim);
    std::fs::remove_dir_all(&cluster.nodes[victim].dir).expect("wipe the data dir");
    let (status, stderr) = cluster
        .try_start_node(victim)
        .expect_err("a voter that lost its data is refused");
    assert!(!status.success());
    assert!(
        stderr.contains("empty data directory") && stderr.contains("CLUSTER.REMOVE"),
        "{stderr}"
    );
    // The cluster kept serving meanwhile.
    call(
        laddr,
        &["SESSION.COMMIT", "after", "CREATE", "SET", "f", "x"],
    )
    .await
    .expect("the two others still commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_removed_and_added_again_catches_up_from_a_snapshot() {
    let mut args = default_args();
    args.extend(["--raft-snapshot-logs".to_owned(), "20".to_owned()]);
    let mut cluster = TestCluster::loopback(3, args);
    let leader = cluster.stable_leader().await;
    let victim = (leader + 1) % 3;
    let write = |addr: SocketAddr, from: usize, to: usize| async move {
        for i in from..to {
            let id = format!("w{i}");
            call(
                addr,
                &[
                    "SESSION.COMMIT",
                    &id,
                    "CREATE",
                    "TTL",
                    "600",
                    "SET",
                    "f",
                    &id,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("commit {id}: {e}"));
        }
    };
    let laddr = cluster.addr(leader).expect("runs");
    write(laddr, 0, 100).await;
    // The node's disk is lost: it leaves the cluster (Raft cannot take a
    // voter back that forgot what it acknowledged), its data is deleted,
    // and the others go on.
    cluster.kill(victim);
    let vid = cluster.nodes[victim].id.to_string();
    call(laddr, &["CLUSTER.REMOVE", &vid])
        .await
        .expect("remove the lost node");
    std::fs::remove_dir_all(&cluster.nodes[victim].dir).expect("wipe the data dir");
    write(laddr, 100, 160).await;
    let snapshot = info_number(laddr, "CLUSTER.INFO", "snapshot_index")
        .await
        .expect("snapshot_index");
    // With 20 entries per snapshot and at most 20 kept behind it, the
    // leader's log no longer starts at 1: only a snapshot brings a new
    // node up to date.
    assert!(snapshot > 100, "the leader's snapshot is at {snapshot}");
    let sessions = info_number(laddr, "INFO", "sessions")
        .await
        .expect("sessions");
    assert!(sessions >= 160, "{sessions}");

    // Started again, empty, and added back: a learner, then a voter.
    cluster.start_joining(victim);
    let started = Instant::now();
    let vaddr = cluster.addr(victim).expect("runs");
    let raft = cluster.nodes[victim].raft.clone();
    call(laddr, &["CLUSTER.ADDLEARNER", &vid, &raft])
        .await
        .expect("add the wiped node as a learner");
    let target = info_number(laddr, "CLUSTER.INFO", "applied_index")
        .await
        .expect("applied_index");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = info_number(vaddr, "CLUSTER.INFO", "applied_index").await;
        let own = info_number(vaddr, "INFO", "sessions").await;
        if applied.is_some_and(|a| a >= target) && own == Some(sessions) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped node did not catch up in 60 s: applied {applied:?} of {target}, {own:?} of {sessions} sessions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the wiped node caught up (applied index {target}, {sessions} sessions in its own engine) {:?} after it started",
        started.elapsed()
    );
    let info = cluster_info(vaddr).await.expect("info");
    let installed: u64 = info_field(&info, "snapshot_index")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(installed > 0, "no snapshot on the wiped node: {info}");
    call(laddr, &["CLUSTER.PROMOTE", &vid])
        .await
        .expect("promote");
    // Its data, read through it, and it serves writes.
    for i in [0, 99, 159] {
        let id = format!("w{i}");
        let v = call(vaddr, &["SESSION.READ", &id, "KEYS", "f"])
            .await
            .expect("read");
        assert_eq!(field_text(&v).as_deref(), Some(id.as_str()));
    }
    let v = call(vaddr, &["SESSION.INCR", "w0", "n", "1"])
        .await
        .expect("incr through the wiped node");
    assert!(
        matches!(&v, Value::Array(p) if p.first() == Some(&Value::Int(1))),
        "{v:?}"
    );
    // A voter again: the cluster keeps a majority without the old leader.
    let info = cluster_info(vaddr).await.expect("info");
    assert!(
        info_field(&info, "voters").is_some_and(|v| v.contains(&vid)),
        "{info}"
    );
}
