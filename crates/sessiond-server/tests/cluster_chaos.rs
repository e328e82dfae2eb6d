//! A randomized fault run over three nodes (`scripts/chaos.sh --minutes N`
//! runs it; it is `#[ignore]`d in the plain test run). For
//! `CHAOS_SECONDS` (default 60) it injects one fault at a time, chosen at
//! random (`CHAOS_SEED` repeats a run): SIGKILL and restart, SIGSTOP then
//! SIGCONT, SIGTERM and restart, and, when run as root, a node cut off from
//! its peers in network namespaces then healed. Meanwhile:
//!
//! - lockers increment a counter under a lock: acquire (the grant carries
//!   the value), then `SESSION.COMMIT … FENCE token UNLOCK SET n v+1`. Two
//!   holders passing the fence with one value would lose an increment;
//! - payers make once-only payments: every payer tries every payment with
//!   `SET p<k> <payer> IFVER 0`; no payment may be acknowledged twice.
//!
//! At the end every node is back and healed, and: the counter equals the
//! acknowledged increments plus some of the unknown ones, no payment was
//! acknowledged twice and each acknowledged one holds its payer, and the
//! counter's history (grant reads and fenced writes) is linearizable.
//! The time from each fault to the first acknowledged write is printed.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{
    Outcome, TestCluster, call, call_on, default_args, field_text, field_value, first_ack,
    micros_since,
};
use common::netns::NetLab;
use sessiond_client::{Client, Value};
use sessiond_lincheck::{Operation, Register, RegisterOp, RegisterRet, check};

/// The nodes' current client addresses (a restarted node gets a new port).
type Addrs = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// xorshift64*: enough randomness for choosing faults, repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn addr_of(addrs: &Addrs, i: usize) -> Option<SocketAddr> {
    addrs.lock().expect("addrs")[i]
}

fn publish(cluster: &TestCluster, addrs: &Addrs) {
    let mut a = addrs.lock().expect("addrs");
    for (i, slot) in a.iter_mut().enumerate() {
        *slot = cluster.addr(i);
    }
}

/// A connection to the first node that answers, from `from` on.
async fn connect(addrs: &Addrs, from: usize) -> Option<(Client, usize)> {
    for k in 0..3 {
        let i = (from + k) % 3;
        let Some(addr) = addr_of(addrs, i) else {
            continue;
        };
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr)).await
        {
            return Some((c, i));
        }
    }
    None
}

#[derive(Default)]
struct LockerLog {
    history: Vec<Operation<RegisterOp, RegisterRet>>,
    acked: i64,
    unknown: i64,
}

/// Locked increments until `stop` (at most 100 000).
async fn locker(id: u64, addrs: Addrs, start: Instant, stop: Arc<AtomicBool>) -> LockerLog {
    let mut log = LockerLog::default();
    let mut node = usize::try_from(id).unwrap_or(0) % 3;
    let mut conn: Option<Client> = None;
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&addrs, node).await {
                Some((c, i)) => {
                    node = i;
                    c
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let call_at = micros_since(start);
        let grant = call_on(
            &mut c,
            &["LOCK.ACQUIRE", "ctrl", "WAIT", "3000", "LEASE", "4000"],
            Duration::from_secs(10),
        )
        .await;
        let ret_at = micros_since(start);
        let parts = match grant {
            Outcome::Done(Value::Array(parts)) => parts,
            Outcome::NotApplied(e) if e.starts_with("TIMEOUT") => {
                conn = Some(c);
                continue;
            }
            _ => {
                // The node may be gone: drop the connection (and any lock it
                // got), try the next node.
                node = (node + 1) % 3;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(Value::Int(token)) = parts.first() else {
            panic!("grant {parts:?}")
        };
        // The grant's data: the session, with every field (or nil).
        let v = match parts.get(1) {
            Some(Value::Array(read)) => read_field(read, "n"),
            _ => 0,
        };
        log.history.push(Operation {
            client: id,
            call: call_at,
            ret: Some(ret_at),
            op: RegisterOp::Read,
            out: RegisterRet::Value(v),
        });
        let token = token.to_string();
        let next = (v + 1).to_string();
        let call_at = micros_since(start);
        let out = call_on(
            &mut c,
            &[
                "SESSION.COMMIT",
                "ctrl",
                "CREATE",
                "FENCE",
                &token,
                "UNLOCK",
                "SET",
                "n",
                &next,
            ],
            Duration::from_secs(10),
        )
        .await;
        let ret_at = micros_since(start);
        match out {
            Outcome::Done(_) => {
                log.acked += 1;
                log.history.push(Operation {
                    client: id,
                    call: call_at,
                    ret: Some(ret_at),
                    op: RegisterOp::Write(v + 1),
                    out: RegisterRet::Ok,
                });
                conn = Some(c);
            }
            Outcome::Unknown(_) => {
                log.unknown += 1;
                log.history.push(Operation {
                    client: id,
                    call: call_at,
                    ret: None,
                    op: RegisterOp::Write(v + 1),
                    out: RegisterRet::Ok,
                });
                node = (node + 1) % 3;
            }
            // FENCED (the lease ran out, or the node was declared down),
            // TRYAGAIN: nothing applied. A new connection drops the lock.
            Outcome::NotApplied(_) => node = (node + 1) % 3,
        }
    }
    log
}

/// The value of field `name` in a `SESSION.READ` reply's parts (0 if
/// absent or not a number).
fn read_field(read: &[Value], name: &str) -> i64 {
    let Some(Value::Array(fields)) = read.get(3) else {
        return 0;
    };
    for f in fields.chunks(3) {
        if let [Value::Bulk(k), _, Value::Bulk(v)] = f
            && k[..] == *name.as_bytes()
        {
            return std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// Once-only payments until `stop`: payment k is tried until it is
/// acknowledged (to this payer or, seen as CONFLICT, to another) or known
/// refused; returns the payments this payer was acknowledged.
async fn payer(id: u64, addrs: Addrs, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut paid = Vec::new();
    let mut node = usize::try_from(id).unwrap_or(0) % 3;
    let me = format!("c{id}");
    'payments: for k in 0..100_000u64 {
        let key = format!("p{k}");
        for _attempt in 0..50 {
            if stop.load(Ordering::Relaxed) {
                break 'payments;
            }
            let Some(addr) = addr_of(&addrs, node) else {
                node = (node + 1) % 3;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let out = common::cluster::call_once(
                addr,
                &[
                    "SESSION.COMMIT",
                    "pay",
                    "CREATE",
                    "TTL",
                    "3600",
                    "SET",
                    &key,
                    &me,
                    "IFVER",
                    "0",
                ],
                Duration::from_secs(10),
            )
            .await;
            match out {
                Outcome::Done(_) => {
                    paid.push(k);
                    continue 'payments;
                }
                Outcome::NotApplied(e) if e.starts_with("CONFLICT") => continue 'payments,
                _ => {
                    node = (node + 1) % 3;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    paid
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Stop,
    Restart,
    Cut,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos.sh"]
async fn chaos() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::from(d.subsec_nanos()) | 1)
        });
    let mut rng = Rng(seed | 1);
    let lab = match NetLab::check_available() {
        Ok(()) => Some(NetLab::create(3)),
        Err(e) => {
            eprintln!("!!! CHAOS WITHOUT PARTITIONS: {e} !!!");
            None
        }
    };
    eprintln!(
        "chaos: {seconds} s, seed {seed} (CHAOS_SEED={seed} repeats it), partitions {}",
        if lab.is_some() { "on" } else { "off" }
    );
    let mut cluster = match &lab {
        Some(lab) => TestCluster::start(
            (0..3)
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
                .collect(),
            default_args(),
        ),
        None => TestCluster::loopback(3, default_args()),
    };
    let addrs: Addrs = Arc::new(Mutex::new(vec![None; 3]));
    publish(&cluster, &addrs);
    let leader = cluster.stable_leader().await;
    let laddr = cluster.addr(leader).expect("runs");
    call(laddr, &["SESSION.COMMIT", "ctrl", "CREATE", "TTL", "3600"])
        .await
        .expect("create ctrl");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let lockers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(locker(i, addrs.clone(), start, stop.clone())))
        .collect();
    let payers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(payer(10 + i, addrs.clone(), stop.clone())))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut failovers = Vec::new();
    let mut faults = 0u32;
    while Instant::now() < deadline && faults < 10_000 {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        let victim = usize::try_from(rng.below(3)).unwrap_or(0);
        let kinds: &[Fault] = if lab.is_some() {
            &[Fault::Kill, Fault::Stop, Fault::Restart, Fault::Cut]
        } else {
            &[Fault::Kill, Fault::Stop, Fault::Restart]
        };
        let fault = kinds[usize::try_from(rng.below(kinds.len() as u64)).unwrap_or(0)];
        let hold = Duration::from_millis(1000 + rng.below(3000));
        faults += 1;
        let at = Instant::now();
        match fault {
            Fault::Kill => cluster.kill(victim),
            Fault::Stop => cluster.pause(victim),
            Fault::Restart => {
                if let Some(p) = cluster.nodes[victim].process.take() {
                    let _ = p.terminate();
                }
            }
            Fault::Cut => {
                if let Some(lab) = &lab {
                    lab.cut(victim);
                }
            }
        }
        publish(&cluster, &addrs);
        let others: Vec<SocketAddr> = (0..3)
            .filter(|i| *i != victim)
            .filter_map(|i| cluster.addr(i))
            .collect();
        let failover = first_ack(&others, at).await;
        eprintln!(
            "fault {faults}: {fault:?} node {} for {hold:?}; first acknowledged write after {failover:?}",
            victim + 1
        );
        failovers.push(failover);
        tokio::time::sleep(hold.saturating_sub(at.elapsed())).await;
        match fault {
            Fault::Kill | Fault::Restart => cluster.start_node(victim),
            Fault::Stop => cluster.resume(victim),
            Fault::Cut => {
                if let Some(lab) = &lab {
                    lab.heal(victim);
                }
            }
        }
        publish(&cluster, &addrs);
    }
    // Let the load run on a whole cluster for a moment, then stop it.
    let _ = cluster.stable_leader().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut history = Vec::new();
    let (mut acked, mut unknown) = (0, 0);
    for l in lockers {
        let log = l.await.expect("locker");
        history.extend(log.history);
        acked += log.acked;
        unknown += log.unknown;
    }
    let mut paid: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (i, p) in payers.into_iter().enumerate() {
        for k in p.await.expect("payer") {
            paid.entry(k).or_default().push(10 + i as u64);
        }
    }

    let leader = cluster.stable_leader().await;
    let laddr = cluster.addr(leader).expect("runs");
    let v = call(laddr, &["SESSION.READ", "ctrl", "KEYS", "n"])
        .await
        .expect("read ctrl");
    let total = field_value(&v).expect("counter");
    failovers.sort();
    let pct = |p: usize| failovers[(failovers.len() * p / 100).min(failovers.len() - 1)];
    eprintln!(
        "chaos done: {faults} faults; failover (fault to first acknowledged write) p50 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(99),
        failovers.last().copied().unwrap_or_default()
    );
    eprintln!(
        "locked increments: counter {total}, {acked} acknowledged, {unknown} unknown; payments acknowledged: {}",
        paid.len()
    );
    assert!(
        total >= acked && total <= acked + unknown,
        "lost or invented increments: counter {total}, {acked} acknowledged, {unknown} unknown"
    );
    for (k, payers) in &paid {
        assert_eq!(payers.len(), 1, "payment p{k} acknowledged to {payers:?}");
        let v = call(laddr, &["SESSION.READ", "pay", "KEYS", &format!("p{k}")])
            .await
            .expect("read pay");
        assert_eq!(
            field_text(&v),
            Some(format!("c{}", payers[0])),
            "payment p{k}"
        );
    }
    assert!(acked > 0 && !paid.is_empty(), "no progress at all");
    let verdict = check(&Register::default(), &history);
    assert!(
        verdict.is_linearizable(),
        "the counter's history ({} operations) is not shown linearizable: {verdict:?}",
        history.len()
    );
    eprintln!("{} operations checked: linearizable", history.len());
    drop(cluster);
    drop(lab);
}
