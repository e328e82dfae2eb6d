//! A three-node cluster of real server processes on loopback: it forms,
//! serves from every node, keeps every acknowledged write when its leader
//! is killed with SIGKILL, and its clients' history (increments and reads
//! of one key through every node, across the kills) is linearizable.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ServerProcess, free_port};
use sessiond_client::{Client, Value};
use sessiond_lincheck::{Operation, Register, RegisterOp, RegisterRet, check};

struct Node {
    id: u64,
    dir: std::path::PathBuf,
    raft: String,
    process: Option<ServerProcess>,
}

struct TestCluster {
    tmp: tempfile::TempDir,
    initial: String,
    nodes: Vec<Node>,
    durability: &'static str,
}

impl TestCluster {
    fn start(n: u64) -> Self {
        Self::start_with(n, "always")
    }

    fn start_with(n: u64, durability: &'static str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raft: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial = raft
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| Node {
                id,
                dir: tmp.path().join(format!("n{id}")),
                raft: raft[(id - 1) as usize].clone(),
                process: None,
            })
            .collect();
        let mut c = Self {
            tmp,
            initial,
            nodes,
            durability,
        };
        for i in 0..c.nodes.len() {
            c.start_node(i);
        }
        c
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let id = node.id.to_string();
        let process = ServerProcess::start(
            &node.dir,
            &[
                "--durability",
                self.durability,
                "--node-id",
                &id,
                "--raft-addr",
                &node.raft,
                "--initial-cluster",
                &self.initial,
                "--node-down-after",
                "2",
            ],
        );
        node.process = Some(process);
    }

    /// Starts one more node, with no --initial-cluster: it waits to be
    /// added. Returns its index.
    fn start_joining_node(&mut self) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let raft = format!("127.0.0.1:{}", free_port());
        let dir = self.tmp.path().join(format!("n{id}"));
        let process = ServerProcess::start(
            &dir,
            &[
                "--durability",
                self.durability,
                "--node-id",
                &id.to_string(),
                "--raft-addr",
                &raft,
                "--node-down-after",
                "2",
            ],
        );
        self.nodes.push(Node {
            id,
            dir,
            raft,
            process: Some(process),
        });
        self.nodes.len() - 1
    }

    fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.nodes[i].process.as_ref().map(|p| p.addr)
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    /// The index of the leader, once every live node agrees on it (bounded):
    /// right after an election some nodes may not have heard of it yet.
    async fn stable_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let leader = self.leader().await;
            let mut agreed = true;
            for i in 0..self.nodes.len() {
                let Some(addr) = self.addr(i) else { continue };
                let info = cluster_info(addr).await.unwrap_or_default();
                if !info.contains(&format!("leader_id:{}\r\n", leader + 1)) {
                    agreed = false;
                }
            }
            if agreed {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the nodes did not agree on a leader within 30 s");
    }

    /// The index of the node that says it leads, once one does (bounded).
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for i in 0..self.nodes.len() {
                let Some(addr) = self.addr(i) else { continue };
                if let Ok(info) = cluster_info(addr).await
                    && info.contains("role:leader")
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 20 s");
    }
}

async fn cluster_info(addr: SocketAddr) -> anyhow::Result<String> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr)).await??;
    match tokio::time::timeout(Duration::from_secs(2), c.command(&["CLUSTER.INFO"])).await?? {
        Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => anyhow::bail!("CLUSTER.INFO answered {other:?}"),
    }
}

/// How a call ended.
#[derive(Debug)]
enum Outcome {
    /// Answered.
    Done(Value),
    /// Refused, or never sent: nothing was applied.
    NotApplied(#[allow(dead_code)] String),
    /// Sent, and no answer (or `UNKNOWN`): it may or may not have been
    /// applied.
    Unknown(#[allow(dead_code)] String),
}

/// Runs `args` on `addr`, retrying `TRYAGAIN` (nothing applied) for up to
/// 10 s.
async fn call_outcome(addr: SocketAddr, args: &[&str]) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = match Client::connect(addr).await {
            Ok(c) => c,
            Err(e) => return Outcome::NotApplied(format!("connect: {e}")),
        };
        match tokio::time::timeout(Duration::from_secs(8), client.command(args)).await {
            Ok(Err(e)) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Ok(v)) => return Outcome::Done(v),
            Ok(Err(e)) if e.code() == Some("TRYAGAIN") => {
                return Outcome::NotApplied(e.to_string());
            }
            Ok(Err(e)) if e.is_server_error() && e.code() != Some("UNKNOWN") => {
                return Outcome::NotApplied(e.to_string());
            }
            Ok(Err(e)) => return Outcome::Unknown(e.to_string()),
            Err(_) => return Outcome::Unknown("timeout".into()),
        }
    }
}

/// [`call_outcome`] for calls that must succeed.
async fn call(addr: SocketAddr, args: &[&str]) -> Result<Value, String> {
    match call_outcome(addr, args).await {
        Outcome::Done(v) => Ok(v),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_serve_from_every_node() {
    let cluster = TestCluster::start(3);
    let leader = cluster.stable_leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let info = cluster_info(cluster.addr(follower).unwrap()).await.unwrap();
    // (A follower, unless an election on this busy machine just began.)
    assert!(
        info.contains("role:follower") || info.contains("role:candidate"),
        "{info}"
    );
    assert!(
        info.contains(&format!("leader_id:{}", leader + 1)),
        "{info}"
    );
    assert!(
        info.contains("members:1=") && info.contains(",3="),
        "{info}"
    );

    // A write through a follower is read through the other one.
    let created = call(
        cluster.addr(follower).unwrap(),
        &["SESSION.COMMIT", "s1", "CREATE", "SET", "user", "alice"],
    )
    .await
    .expect("commit through a follower");
    assert!(matches!(created, Value::Array(_)), "{created:?}");
    let read = call(cluster.addr(other).unwrap(), &["SESSION.READ", "s1"])
        .await
        .expect("read");
    assert!(format!("{read:?}").contains("alice"), "{read:?}");

    // A lock taken through one node excludes a taker on another; the
    // release hands it over, and the waiter on its own node gets it.
    let a = cluster.addr(follower).unwrap();
    let b = cluster.addr(other).unwrap();
    let mut holder = Client::connect(a).await.unwrap();
    let grant = holder
        .command(&["LOCK.ACQUIRE", "s1", "WAIT", "5000"])
        .await
        .unwrap();
    let token = match &grant {
        Value::Array(v) => match &v[0] {
            Value::Int(t) => *t,
            other => panic!("token {other:?}"),
        },
        other => panic!("grant {other:?}"),
    };
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect(b).await.unwrap();
        c.command(&["LOCK.ACQUIRE", "s1", "WAIT", "10000"])
            .await
            .unwrap()
    });
    // The waiter is queued (seen through the leader) before the release.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = call(cluster.addr(leader).unwrap(), &["LOCK.INFO", "s1"])
            .await
            .unwrap();
        if format!("{info:?}").matches("Int").count() >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "waiter never queued: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released = holder
        .command(&["LOCK.RELEASE", "s1", &token.to_string()])
        .await
        .unwrap();
    assert_eq!(released, Value::Int(1));
    let second = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("hand-off within 10 s")
        .unwrap();
    match second {
        Value::Array(v) => match &v[0] {
            Value::Int(t) => assert!(*t > token, "tokens grow across nodes: {t} after {token}"),
            other => panic!("token {other:?}"),
        },
        other => panic!("second grant {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_increment_and_the_history_is_linearizable() {
    let mut cluster = TestCluster::start(3);
    call(
        cluster.addr(0).unwrap(),
        &["SESSION.COMMIT", "ctr", "CREATE", "TTL", "600"],
    )
    .await
    .expect("create");
    let started = Instant::now();
    let now = move || u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut history: Vec<Operation<RegisterOp, RegisterRet>> = Vec::new();
    let mut acknowledged = 0i64;
    let mut kills = Vec::new();
    for round in 0..3 {
        // Three clients, one per node, increment and read for a while.
        let mut tasks = Vec::new();
        for i in 0..3 {
            let Some(addr) = cluster.addr(i) else {
                continue;
            };
            tasks.push(tokio::spawn(async move {
                let mut ops = Vec::new();
                for k in 0..15 {
                    let is_read = k % 3 == 2;
                    let call_at = now();
                    let args: &[&str] = if is_read {
                        &["SESSION.READ", "ctr", "KEYS", "n"]
                    } else {
                        &["SESSION.INCR", "ctr", "n", "1"]
                    };
                    let result = call_outcome(addr, args).await;
                    let ret_at = now();
                    let refused = matches!(result, Outcome::NotApplied(_));
                    ops.push((i as u64, call_at, ret_at, is_read, result));
                    if refused {
                        // This client's node is down: it stops here, as
                        // an app server would move to another node.
                        break;
                    }
                }
                ops
            }));
        }
        if round < 2 {
            // Kill the leader while the clients run.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let leader = cluster.leader().await;
            cluster.kill(leader);
            let killed_at = Instant::now();
            // Failover: from the kill to the first write acknowledged by a
            // surviving node.
            let survivor = cluster.addr((leader + 1) % 3).unwrap();
            let mut first_ack = None;
            for _ in 0..200 {
                if let Outcome::Done(_) =
                    call_outcome(survivor, &["SESSION.INCR", "probe", "n", "1", "CREATE"]).await
                {
                    first_ack = Some(killed_at.elapsed());
                    break;
                }
            }
            let first_ack = first_ack.expect("a write acknowledged after the kill");
            eprintln!("kill {round}: first acknowledged write after {first_ack:?}");
            kills.push((leader, killed_at));
        }
        for t in tasks {
            for (client, call_at, ret_at, is_read, result) in t.await.unwrap() {
                let (op, out, ret) = match (is_read, result) {
                    (_, Outcome::NotApplied(_)) => continue,
                    (false, Outcome::Done(Value::Array(v))) => match &v[0] {
                        Value::Int(n) => {
                            acknowledged += 1;
                            (RegisterOp::Add(1), RegisterRet::Value(*n), Some(ret_at))
                        }
                        other => panic!("INCR answered {other:?}"),
                    },
                    (true, Outcome::Done(v)) => {
                        let text = format!("{v:?}");
                        let n = field_value(&v).unwrap_or_else(|| panic!("read {text}"));
                        (RegisterOp::Read, RegisterRet::Value(n), Some(ret_at))
                    }
                    // Unknown outcome: it may or may not have happened.
                    (false, Outcome::Unknown(_)) => {
                        (RegisterOp::Add(1), RegisterRet::Value(0), None)
                    }
                    (true, Outcome::Unknown(_)) => continue,
                    (false, Outcome::Done(other)) => panic!("INCR answered {other:?}"),
                };
                history.push(Operation {
                    client,
                    call: call_at,
                    ret,
                    op,
                    out,
                });
            }
        }
        if round < 2 {
            // Bring the killed node back on its data directory.
            let (killed, at) = kills[round];
            let leader = cluster.leader().await;
            eprintln!(
                "round {round}: node {} killed, node {} leads {:?} later",
                killed + 1,
                leader + 1,
                at.elapsed()
            );
            cluster.start_node(killed);
        }
    }
    // Every acknowledged increment is there, read through every node.
    let leader = cluster.leader().await;
    let final_read = call(
        cluster.addr(leader).unwrap(),
        &["SESSION.READ", "ctr", "KEYS", "n"],
    )
    .await
    .expect("final read");
    let total = field_value(&final_read).expect("counter");
    let unknown = history.iter().filter(|o| o.ret.is_none()).count() as i64;
    assert!(
        total >= acknowledged && total <= acknowledged + unknown,
        "counter {total}: {acknowledged} acknowledged, {unknown} unknown"
    );
    assert!(
        acknowledged > 30,
        "too few increments got through: {acknowledged}"
    );
    let unknown_texts: Vec<&Operation<RegisterOp, RegisterRet>> =
        history.iter().filter(|o| o.ret.is_none()).collect();
    eprintln!(
        "{} operations checked: {acknowledged} increments acknowledged, {} with unknown outcome",
        history.len(),
        unknown_texts.len()
    );
    let verdict = check(&Register::default(), &history);
    assert!(verdict.is_linearizable(), "{verdict:?}\n{history:#?}");
}

/// The integer value of the one field of a `SESSION.READ … KEYS n` reply
/// (0 when absent).
fn field_value(v: &Value) -> Option<i64> {
    let Value::Array(parts) = v else { return None };
    let Value::Array(fields) = parts.get(3)? else {
        return None;
    };
    match fields.get(2)? {
        Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Nil => Some(0),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locks_of_a_dead_node_go_to_the_next_waiter() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.stable_leader().await;
    let doomed = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    let mut holder = Client::connect(cluster.addr(doomed).unwrap())
        .await
        .unwrap();
    let grant = holder
        .command(&["LOCK.ACQUIRE", "s9", "CREATE", "WAIT", "5000"])
        .await
        .unwrap();
    let Value::Array(parts) = &grant else {
        panic!("grant {grant:?}")
    };
    let Value::Int(first_token) = parts[0] else {
        panic!("token {grant:?}")
    };
    let waiter_addr = cluster.addr(survivor).unwrap();
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect(waiter_addr).await.unwrap();
        let asked = Instant::now();
        let got = c.command(&["LOCK.ACQUIRE", "s9", "WAIT", "30000"]).await;
        (got, asked.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The holder's node dies; its client can no longer release anything.
    cluster.kill(doomed);
    let (got, waited) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was served")
        .unwrap();
    let got = got.expect("granted");
    let Value::Array(parts) = &got else {
        panic!("grant {got:?}")
    };
    let Value::Int(token) = parts[0] else {
        panic!("token {got:?}")
    };
    assert!(token > first_token, "{token} after {first_token}");
    eprintln!("the waiter got the dead node's lock after {waited:?}");
    // The old token is fenced.
    let fenced = call_outcome(
        cluster.addr(leader).unwrap(),
        &[
            "SESSION.COMMIT",
            "s9",
            "FENCE",
            &first_token.to_string(),
            "SET",
            "k",
            "v",
        ],
    )
    .await;
    assert!(format!("{fenced:?}").contains("FENCED"), "{fenced:?}");
}

/// The value of `key:` in CLUSTER.INFO text.
fn info_field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or("")
        .trim()
}

/// Waits (bounded) until `check` holds for node `i`'s CLUSTER.INFO.
async fn await_info(cluster: &TestCluster, i: usize, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(info) = cluster_info(cluster.addr(i).unwrap()).await {
            if check(&info) {
                return;
            }
            last = info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {} never reached {what}: {last}", i + 1);
}

/// Replacing a dead node at run time: a new node joins as a learner (the
/// command sent to a follower, which forwards it), catches up, is promoted
/// to a voter, the dead node is removed, and the cluster of {the two
/// survivors, the new node} keeps serving — with the data written before,
/// and surviving the loss of one more of its original nodes. A write
/// repeated with its request id on another node is not applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_at_run_time_and_request_ids_hold_across_nodes() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.stable_leader().await;
    let a = cluster.addr(leader).unwrap();
    call(
        a,
        &["SESSION.COMMIT", "m1", "CREATE", "SET", "user", "alice"],
    )
    .await
    .expect("commit");

    // One increment with a request id through one node, repeated through
    // another (a client that lost its connection and retries there): both
    // answers are the first's, and the value moved once.
    let follower = (leader + 1) % 3;
    let incr = ["SESSION.INCR", "m1", "n", "7", "REQID", "retry-1"];
    let first = call(a, &incr).await.expect("incr");
    let again = call(cluster.addr(follower).unwrap(), &incr)
        .await
        .expect("incr again");
    assert_eq!(first, again);
    let read = call(a, &["SESSION.READ", "m1", "KEYS", "n"]).await.unwrap();
    assert_eq!(field_value(&read), Some(7), "{read:?}");

    // Node 3 (or whichever is not the leader) dies for good.
    let dead = (leader + 2) % 3;
    let dead_id = cluster.nodes[dead].id;
    cluster.kill(dead);

    // A new node, added through a follower (forwarded to the leader).
    let new = cluster.start_joining_node();
    let new_id = cluster.nodes[new].id;
    let new_raft = cluster.nodes[new].raft.clone();
    let via = cluster.addr(follower).unwrap();
    let added = call(via, &["CLUSTER.ADDLEARNER", &new_id.to_string(), &new_raft]).await;
    assert_eq!(added, Ok(Value::Simple("OK".into())), "{added:?}");
    await_info(&cluster, new, "the learner role with the log", |info| {
        info_field(info, "role") == "learner"
            && info_field(info, "applied_index")
                .parse::<u64>()
                .unwrap_or(0)
                > 0
    })
    .await;
    // Promoting something that is not a node is refused and changes nothing.
    let bogus = call_outcome(via, &["CLUSTER.PROMOTE", "999"]).await;
    assert!(matches!(bogus, Outcome::NotApplied(_)), "{bogus:?}");
    let promoted = call(via, &["CLUSTER.PROMOTE", &new_id.to_string()]).await;
    assert_eq!(promoted, Ok(Value::Simple("OK".into())), "{promoted:?}");
    let removed = call(a, &["CLUSTER.REMOVE", &dead_id.to_string()]).await;
    assert_eq!(removed, Ok(Value::Simple("OK".into())), "{removed:?}");
    let expected_voters = {
        let mut v = [cluster.nodes[leader].id, cluster.nodes[follower].id, new_id];
        v.sort_unstable();
        v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    };
    await_info(&cluster, new, "the new voters", |info| {
        info_field(info, "voters") == expected_voters && info_field(info, "learners").is_empty()
    })
    .await;

    // The new node serves what was written before it joined.
    let read = call(
        cluster.addr(new).unwrap(),
        &["SESSION.READ", "m1", "KEYS", "user"],
    )
    .await
    .expect("read on the new node");
    assert!(format!("{read:?}").contains("alice"), "{read:?}");

    // Now one of the original nodes dies too: the new node is one of the
    // two of three that still make a majority.
    cluster.kill(follower);
    let done = call(
        cluster.addr(new).unwrap(),
        &["SESSION.INCR", "m1", "n", "1", "REQID", "retry-2"],
    )
    .await
    .expect("a write with the original leader and the new node");
    assert!(matches!(done, Value::Array(_)), "{done:?}");
    let read = call(
        cluster.addr(leader).unwrap(),
        &["SESSION.READ", "m1", "KEYS", "n"],
    )
    .await
    .unwrap();
    assert_eq!(field_value(&read), Some(8), "{read:?}");
}

/// Under the default durability (`everysec`), the leader killed again and
/// again, each time restarted on its data once a new leader served a write:
/// every acknowledged increment stays (each answer is the one before plus
/// one). A node's log must be on disk before it acknowledges an entry,
/// whatever `--durability` says: when appends were synced once a second,
/// a restarted node came back without entries it had acknowledged and this
/// lost increments within a few kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_leader_kills_under_everysec_lose_no_acknowledged_increment() {
    let mut cluster = TestCluster::start_with(3, "everysec");
    let mut last = 0;
    for round in 0..6 {
        let leader = cluster.stable_leader().await;
        if round > 0 {
            cluster.kill(leader);
        }
        let rid = format!("seq-{round}");
        let args = [
            "SESSION.INCR",
            "seq",
            "n",
            "1",
            "CREATE",
            "REQID",
            rid.as_str(),
        ];
        let mut value = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while value.is_none() && Instant::now() < deadline {
            for i in 0..cluster.nodes.len() {
                let Some(addr) = cluster.addr(i) else {
                    continue;
                };
                if let Outcome::Done(Value::Array(a)) = call_outcome(addr, &args).await {
                    value = a.first().and_then(|v| match v {
                        Value::Int(n) => Some(*n),
                        _ => None,
                    });
                    break;
                }
            }
        }
        let value = value.unwrap_or_else(|| panic!("round {round}: no node acknowledged"));
        assert_eq!(
            value,
            last + 1,
            "round {round}: an acknowledged increment was lost"
        );
        last = value;
        if round > 0 {
            cluster.start_node(leader);
        }
    }
}

/// The leader answers reads from its own state once a majority confirmed
/// it leads (ReadIndex), with no log entry per read; the expiry slides of
/// those reads still reach every node in bulk: a session last read well
/// before its deadline (so the read was served without the log) outlives
/// its first deadline, also on the node that leads after that leader is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_the_leader_need_no_log_entry_and_still_slide_every_node() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.stable_leader().await;
    let addr = cluster.addr(leader).unwrap();
    let created = Instant::now();
    call(
        addr,
        &[
            "SESSION.COMMIT",
            "r1",
            "CREATE",
            "TTL",
            "20",
            "SET",
            "k",
            "v",
        ],
    )
    .await
    .expect("create");
    let applied = |info: &str| {
        info_field(info, "applied_index")
            .parse::<u64>()
            .unwrap_or(0)
    };
    let before = applied(&cluster_info(addr).await.unwrap());
    let mut client = Client::connect(addr).await.unwrap();
    for _ in 0..100 {
        let read = client.command(&["SESSION.READ", "r1"]).await.unwrap();
        assert!(format!("{read:?}").contains('v'), "{read:?}");
    }
    let after = applied(&cluster_info(addr).await.unwrap());
    // Far fewer entries than reads: only the bulk records of their slides
    // (every 500 ms) and ticks, however long the reads took (a loaded CI
    // machine once needed 21 entries' worth of time); through the log
    // each read would be an entry.
    assert!(
        after - before < 50,
        "100 reads made {} log entries",
        after - before
    );
    // One read 8 s in (12 s before the deadline: served without the log),
    // then none until past the first deadline (20 s).
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(created.elapsed())).await;
    let read = client.command(&["SESSION.READ", "r1"]).await.unwrap();
    assert!(format!("{read:?}").contains('v'), "{read:?}");
    drop(client);
    tokio::time::sleep(Duration::from_secs(21).saturating_sub(created.elapsed())).await;
    let ttl = call(addr, &["SESSION.TTL", "r1"]).await.expect("TTL");
    assert!(
        matches!(ttl, Value::Int(ms) if ms > 0),
        "expired at its first deadline although read 8 s in: {ttl:?}"
    );
    cluster.kill(leader);
    let next = cluster.stable_leader().await;
    let ttl = call(cluster.addr(next).unwrap(), &["SESSION.TTL", "r1"])
        .await
        .expect("TTL on the new leader");
    // The read's slide moved the deadline to 28 s.
    assert!(
        created.elapsed() >= Duration::from_secs(27) || matches!(ttl, Value::Int(ms) if ms > 0),
        "the slide did not reach the other nodes: {ttl:?} after {:?}",
        created.elapsed()
    );
}

/// A leader stopped with SIGTERM (a rolling restart) hands leadership to
/// an up-to-date node before it exits: once its process is gone, the
/// other two already follow a new leader among them (without the
/// hand-over they would still be waiting out its lease and an election
/// timeout, about 0.6–0.8 s), and nothing acknowledged is lost. Three
/// rounds, each stopping whichever node leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_before_it_exits() {
    let mut cluster = TestCluster::start(3);
    let mut expected = 0;
    for round in 0..3 {
        let leader = cluster.stable_leader().await;
        // A little history first: the successor must hold all of it.
        for _ in 0..10 {
            let addr = cluster.addr(leader).unwrap();
            let v = call(addr, &["SESSION.INCR", "rolling", "n", "1", "CREATE"])
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            expected += 1;
            assert!(
                matches!(&v, Value::Array(a) if a.first().and_then(|x| match x { Value::Int(n) => Some(*n), _ => None }) == Some(expected)),
                "{v:?}"
            );
        }
        let old_id = cluster.nodes[leader].id;
        let process = cluster.nodes[leader].process.take().unwrap();
        let status = process.terminate();
        assert!(status.success(), "round {round}: the stop failed: {status}");
        // The moment it is gone, the others follow another leader.
        for i in 0..cluster.nodes.len() {
            let Some(addr) = cluster.addr(i) else {
                continue;
            };
            let info = cluster_info(addr).await.unwrap();
            let now_leading = info_field(&info, "leader_id");
            assert!(
                !now_leading.is_empty() && now_leading != old_id.to_string(),
                "round {round}: node {} follows {now_leading:?} right after leader {old_id} stopped: {info}",
                i + 1
            );
        }
        // And the history is all there.
        let survivor = (0..cluster.nodes.len())
            .find(|&i| cluster.addr(i).is_some())
            .unwrap();
        let v = call(
            cluster.addr(survivor).unwrap(),
            &["SESSION.INCR", "rolling", "n", "1", "CREATE"],
        )
        .await
        .unwrap();
        expected += 1;
        assert!(
            matches!(&v, Value::Array(a) if a.first().and_then(|x| match x { Value::Int(n) => Some(*n), _ => None }) == Some(expected)),
            "round {round}: {v:?}"
        );
        cluster.start_node(leader);
    }
}
