//! The cluster benchmark: the session cycle and the locked cycle on a
//! three-node sessiond cluster, against one sessiond node, Redis with one
//! replica doing `WAIT 1 0` after each write (its nearest equivalent of a
//! write acknowledged by two machines), and a three-member etcd 3.4 cluster
//! doing the same work as a transaction (read, then compare-and-put); then
//! failover: the leader killed with SIGKILL again and again, each time
//! measuring from the kill to the first acknowledged write.
//!
//! Clients talk to the leader (sessiond, etcd) or the primary (Redis), each
//! with the same blocking one-request-in-flight driver as every other
//! benchmark.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::benches::{self, Target};
use crate::report::{CycleRow, Failover};
use crate::servers::{Server, SessiondCmd, free_port};
use crate::store::{self, Kind, PHPREDIS6};
use crate::wire::{Resp, Value};

/// What to run.
pub struct Opts<'a> {
    pub sessions: u64,
    pub size: usize,
    pub conns: Vec<usize>,
    pub warmup: Duration,
    pub dur: Duration,
    pub kills: usize,
    /// Stop the leader with SIGTERM instead of SIGKILL.
    pub graceful: bool,
    /// Only the failover part.
    pub failover_only: bool,
    pub redis_bin: &'a str,
    pub etcd_bin: &'a str,
}

/// The cycle and locked rows, and the failover measurement.
pub struct Results {
    pub cycle: Vec<CycleRow>,
    pub locked: Vec<CycleRow>,
    pub failover: Option<Failover>,
}

/// `CLUSTER.INFO` of a sessiond node, or empty when it does not answer.
fn cluster_info(addr: SocketAddr) -> String {
    let Ok(mut c) = Resp::connect(addr) else {
        return String::new();
    };
    let _ = c.set_timeout(Some(Duration::from_secs(2)));
    match c.call(&[b"CLUSTER.INFO"]) {
        Ok(Value::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

/// The index of the node that says it leads, once one does (30 s at most).
fn sessiond_leader(nodes: &[Option<Server>]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n
                && cluster_info(n.addr).contains("role:leader\r\n")
            {
                return Ok(i);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no sessiond leader within 30 s")
}

/// A three-node sessiond cluster with fixed client and peer ports (so a
/// node restarts where it was).
fn sessiond_cluster(cmd: &SessiondCmd, name: &str, durability: &str) -> Result<Vec<Server>> {
    let raft: Vec<String> = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let initial = raft
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, r) in raft.iter().enumerate() {
        let extra: Vec<String> = [
            "--port",
            &free_port()?.to_string(),
            "--node-id",
            &(i + 1).to_string(),
            "--raft-addr",
            r,
            "--initial-cluster",
            &initial,
        ]
        .map(String::from)
        .to_vec();
        nodes.push(
            Server::sessiond_with(cmd, &format!("{name}-n{}", i + 1), durability, &extra)
                .with_context(|| format!("starting {name} node {}", i + 1))?,
        );
    }
    Ok(nodes)
}

/// A three-member etcd cluster; returns the members and the leader's index.
/// Tried three times: the six free ports are picked before etcd binds
/// them, and another process may take one meanwhile.
fn etcd_cluster(bin: &str) -> Result<(Vec<Server>, usize)> {
    let mut last = None;
    for _ in 0..3 {
        match etcd_cluster_once(bin) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
}

fn etcd_cluster_once(bin: &str) -> Result<(Vec<Server>, usize)> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Server> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            Server::etcd_member(bin, &format!("e{}", i + 1), *client, *peer, &initial)
        })
        .collect::<Result<_>>()?;
    // The leader: the member whose own id is the leader its status names.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for (i, m) in members.iter().enumerate() {
            if let Ok(mut c) = crate::etcd::Etcd::connect(m.addr)
                && let Ok(true) = c.is_leader()
            {
                return Ok((members, i));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no etcd leader within 30 s")
}

/// Redis with one replica, once the replica is in sync.
fn redis_with_replica(bin: &str) -> Result<(Server, Server)> {
    let primary = Server::redis(bin, "redis-wait", None)?;
    let replica = Server::redis_replica(bin, "redis-replica", primary.addr)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = Resp::connect(primary.addr)?;
    loop {
        c.call(&[b"SET", b"bench:sync", b"1"])?;
        if c.call(&[b"WAIT", b"1", b"1000"])?.int() == Some(1) {
            return Ok((primary, replica));
        }
        if Instant::now() > deadline {
            bail!("the Redis replica did not sync within 30 s");
        }
    }
}

/// Preloads, then runs the cycle and the locked cycle on `addr`.
fn measure(
    o: &Opts,
    name: &str,
    durability: &str,
    kind: Kind,
    addr: SocketAddr,
    out: &mut Results,
) -> Result<()> {
    let sh = store::shape(o.size);
    let t0 = Instant::now();
    store::preload(kind, addr, &sh, 0..o.sessions, store::TTL_SECS, 4)
        .with_context(|| format!("preloading {name}"))?;
    eprintln!(
        "  {name}: loaded {} sessions of {} in {:.1} s",
        o.sessions,
        sh.label(),
        t0.elapsed().as_secs_f64()
    );
    let t = Target {
        name,
        durability,
        kind,
        addr,
    };
    for &conns in &o.conns {
        out.cycle
            .push(benches::cycle(&t, &sh, o.sessions, conns, o.warmup, o.dur));
    }
    out.locked.extend(benches::locked(
        &t, &sh, o.sessions, &o.conns, PHPREDIS6, o.warmup, o.dur,
    )?);
    Ok(())
}

/// Runs the whole cluster benchmark.
pub fn run(cmd: &SessiondCmd, o: &Opts) -> Result<Results> {
    let mut out = Results {
        cycle: Vec::new(),
        locked: Vec::new(),
        failover: None,
    };
    if o.failover_only {
        out.failover = Some(failover(cmd, o.kills, o.graceful)?);
        return Ok(out);
    }
    {
        let one = Server::sessiond(cmd, "sessiond-1node", "everysec")?;
        measure(
            o,
            "sessiond-1node",
            "everysec",
            Kind::Sessiond,
            one.addr,
            &mut out,
        )?;
    }
    // `everysec`: an entry is acknowledged once it is in the OS of a
    // majority (the log synced about once a second), which is what one
    // node's `everysec` and Redis's WAIT promise at most; `always`: once it
    // is fsynced on a majority, as etcd does (see cluster/log_store.rs).
    for (name, durability, label) in [
        ("sessiond-cluster3", "everysec", "log in the OS of 2"),
        ("sessiond-cluster3-always", "always", "log fsynced on 2"),
    ] {
        let nodes: Vec<Option<Server>> = sessiond_cluster(cmd, name, durability)?
            .into_iter()
            .map(Some)
            .collect();
        let leader = sessiond_leader(&nodes)?;
        let addr = nodes[leader]
            .as_ref()
            .map(|n| n.addr)
            .context("leader gone")?;
        measure(o, name, label, Kind::Sessiond, addr, &mut out)?;
    }
    {
        let (primary, _replica) = redis_with_replica(o.redis_bin)?;
        measure(
            o,
            "redis-wait",
            "replica",
            Kind::RedisWait,
            primary.addr,
            &mut out,
        )?;
    }
    match etcd_cluster(o.etcd_bin) {
        Ok((members, leader)) => {
            measure(
                o,
                "etcd3",
                "always",
                Kind::Etcd,
                members[leader].addr,
                &mut out,
            )?;
        }
        Err(e) => eprintln!("  etcd3: skipped ({e:#})"),
    }
    if o.kills > 0 {
        out.failover = Some(failover(cmd, o.kills, o.graceful)?);
    }
    Ok(out)
}

/// Sends `SESSION.INCR fo n 1 REQID rid` to the live nodes in turn until
/// one acknowledges it (20 s at most); the value it answered.
fn acknowledged_increment(nodes: &[Option<Server>], rid: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        for n in nodes.iter().flatten() {
            let Ok(mut c) = Resp::connect(n.addr) else {
                continue;
            };
            let _ = c.set_timeout(Some(Duration::from_secs(6)));
            match c.call(&[
                b"SESSION.INCR",
                b"fo",
                b"n",
                b"1",
                b"CREATE",
                b"REQID",
                rid.as_bytes(),
            ]) {
                Ok(Value::Array(a)) => {
                    if let Some(v) = a.first().and_then(Value::int) {
                        return Ok(v);
                    }
                }
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("no node acknowledged a write within 20 s (last: {last})")
}

/// Whether the leader reports every other node's log as caught up
/// (`follower_N_lag:0` for each; the list includes the leader itself).
fn followers_caught_up(nodes: &[Option<Server>]) -> bool {
    nodes.iter().flatten().any(|n| {
        let info = cluster_info(n.addr);
        let lags: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("follower_"))
            .filter_map(|l| l.split(':').nth(1))
            .map(str::trim)
            .collect();
        info.contains("role:leader")
            && lags.len() + 1 >= nodes.len()
            && lags.iter().all(|l| *l == "0")
    })
}

/// Kills the leader of a three-node cluster `kills` times (restarting it
/// each time on its data once a new leader served a write); with
/// `graceful`, stops it with SIGTERM instead (a rolling restart).
fn failover(cmd: &SessiondCmd, kills: usize, graceful: bool) -> Result<Failover> {
    let signal = if graceful { "SIGTERM" } else { "SIGKILL" };
    eprintln!("== failover: the leader stopped with {signal} {kills} times");
    let mut nodes: Vec<Option<Server>> = sessiond_cluster(cmd, "failover", "everysec")?
        .into_iter()
        .map(Some)
        .collect();
    let mut acked = 0i64;
    let mut value = acknowledged_increment(&nodes, "fo-warm")?;
    acked += 1;
    let mut samples = Vec::with_capacity(kills);
    for k in 0..kills {
        let leader = sessiond_leader(&nodes)?;
        let mut dead = nodes[leader].take().context("leader vanished")?;
        let t0 = Instant::now();
        if graceful {
            dead.sigterm();
        } else {
            dead.kill9();
        }
        value = acknowledged_increment(&nodes, &format!("fo-{k}"))?;
        let took = t0.elapsed();
        if graceful {
            let exited = dead.stop();
            eprintln!(
                "  (the stopped leader exited {:.0} ms after its SIGTERM)",
                (took + exited).as_secs_f64() * 1000.0
            );
        }
        acked += 1;
        samples.push(took.as_secs_f64() * 1000.0);
        eprintln!(
            "  kill {}: node {} → first acknowledged write after {:.0} ms",
            k + 1,
            leader + 1,
            took.as_secs_f64() * 1000.0
        );
        dead.start_sessiond()?;
        nodes[leader] = Some(dead);
        // Back to three live nodes that agree on a leader before the next.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.iter().flatten().all(|n| {
            let info = cluster_info(n.addr);
            info.contains("leader_id:") && !info.contains("leader_id:\r\n")
        }) {
            if Instant::now() > deadline {
                bail!("the restarted node did not rejoin within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // And the restarted node caught up: the next failover is measured
        // on a healthy cluster. (Killing the leader while a restarted node
        // is still behind, which the leader retries only every 500 ms after
        // it was unreachable, takes up to about 2 s: the node behind
        // campaigns first and is refused, and the other waits out a longer
        // timeout; seen while writing this.)
        while !followers_caught_up(&nodes) {
            if Instant::now() > deadline {
                bail!("the restarted node did not catch up within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    };
    Ok(Failover {
        kills,
        signal: signal.into(),
        samples_ms: samples,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        increments_acknowledged: u64::try_from(acked).unwrap_or(0),
        final_value: value,
    })
}
