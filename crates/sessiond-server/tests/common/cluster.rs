//! A cluster of real `sessiond` processes for the fault tests: on loopback,
//! or each node in its own network namespace (see [`super::netns`]); and
//! what the tests need to talk to it: calls whose outcome is recorded as
//! done, not applied, or unknown, and `CLUSTER.INFO` fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sessiond_client::{Client, Value};
use sessiond_lincheck::{LockOp, LockRet, Operation, RegisterOp, RegisterRet};

use super::{ServerProcess, free_port};

/// One node: how to start it, and its process while it runs.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    /// Its peer address (`--raft-addr`).
    pub raft: String,
    /// A command that execs the server (`ip netns exec NS`), or none.
    pub wrapper: Vec<String>,
    /// Flags of this node only (`--bind IP` in a namespace).
    pub extra: Vec<String>,
    pub process: Option<ServerProcess>,
    /// Stopped with SIGSTOP (and not continued yet).
    pub stopped: bool,
}

/// A cluster of real server processes; dropping it kills them all.
pub struct TestCluster {
    pub tmp: tempfile::TempDir,
    pub initial: String,
    pub nodes: Vec<Node>,
    /// Flags every node gets.
    pub args: Vec<String>,
}

/// Flags the fault tests give every node: `always` (an acknowledgement
/// means fsynced on a majority) and a short lock-delay.
pub fn default_args() -> Vec<String> {
    [
        "--durability",
        "always",
        "--node-down-after",
        "2",
        "--log-level",
        "warn,openraft=error",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl TestCluster {
    /// `n` nodes on loopback, started.
    pub fn loopback(n: u64, args: Vec<String>) -> Self {
        let raft: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let specs = raft
            .into_iter()
            .map(|r| (r, Vec::new(), Vec::new()))
            .collect();
        Self::start(specs, args)
    }

    /// One node per `(raft address, wrapper, extra flags)`, started.
    pub fn start(specs: Vec<(String, Vec<String>, Vec<String>)>, args: Vec<String>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let initial = specs
            .iter()
            .enumerate()
            .map(|(i, (a, _, _))| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, (raft, wrapper, extra))| Node {
                id: i as u64 + 1,
                dir: tmp.path().join(format!("n{}", i + 1)),
                raft,
                wrapper,
                extra,
                process: None,
                stopped: false,
            })
            .collect();
        let mut c = Self {
            tmp,
            initial,
            nodes,
            args,
        };
        for i in 0..c.nodes.len() {
            c.start_node(i);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// (Re)starts node `i` on its data directory.
    pub fn start_node(&mut self, i: usize) {
        self.start_node_with(i, true);
    }

    /// Starts node `i` with no `--initial-cluster`: on an empty data
    /// directory it waits to be added (`CLUSTER.ADDLEARNER`).
    pub fn start_joining(&mut self, i: usize) {
        self.start_node_with(i, false);
    }

    fn start_node_with(&mut self, i: usize, initial: bool) {
        let node = &mut self.nodes[i];
        let id = node.id.to_string();
        let mut flags: Vec<&str> = vec!["--node-id", &id, "--raft-addr", &node.raft];
        if initial {
            flags.extend(["--initial-cluster", self.initial.as_str()]);
        }
        flags.extend(self.args.iter().map(String::as_str));
        flags.extend(node.extra.iter().map(String::as_str));
        let wrapper: Vec<&str> = node.wrapper.iter().map(String::as_str).collect();
        node.process = Some(ServerProcess::start_in(&wrapper, &node.dir, &flags));
        node.stopped = false;
    }

    /// Starts node `i` as [`TestCluster::start_node`] does, but returns the
    /// exit status and stderr when it exits instead of becoming ready.
    pub fn try_start_node(&mut self, i: usize) -> Result<(), (std::process::ExitStatus, String)> {
        let node = &mut self.nodes[i];
        let id = node.id.to_string();
        let dir = node.dir.display().to_string();
        let mut flags: Vec<&str> = vec![
            "--port",
            "0",
            "--data-dir",
            &dir,
            "--node-id",
            &id,
            "--raft-addr",
            &node.raft,
            "--initial-cluster",
            self.initial.as_str(),
        ];
        flags.extend(self.args.iter().map(String::as_str));
        flags.extend(node.extra.iter().map(String::as_str));
        node.process = Some(ServerProcess::try_start(&flags, &[])?);
        node.stopped = false;
        Ok(())
    }

    /// The client address of node `i`, if it runs.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.nodes[i].process.as_ref().map(|p| p.addr)
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.kill();
        }
        self.nodes[i].stopped = false;
    }

    /// Kills node `i` and deletes its data directory.
    pub fn wipe(&mut self, i: usize) {
        self.kill(i);
        std::fs::remove_dir_all(&self.nodes[i].dir).expect("wipe the data dir");
    }

    /// SIGSTOP to node `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(p) = &self.nodes[i].process {
            p.signal("STOP");
            self.nodes[i].stopped = true;
        }
    }

    /// SIGCONT to node `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(p) = &self.nodes[i].process {
            p.signal("CONT");
            self.nodes[i].stopped = false;
        }
    }

    /// The nodes that run and are not stopped.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|i| self.nodes[*i].process.is_some() && !self.nodes[*i].stopped)
            .collect()
    }

    /// The index of the leader once every node of `among` reports it as
    /// leader and it says it leads (bounded: 30 s). Right after an election
    /// some nodes may not have heard of it yet.
    pub async fn stable_leader_among(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last.clear();
            for &i in among {
                let Some(addr) = self.addr(i) else { continue };
                last.push(cluster_info(addr).await.unwrap_or_default());
            }
            let leaders: Vec<Option<String>> = last
                .iter()
                .map(|info| info_field(info, "leader_id"))
                .collect();
            if let Some(Some(first)) = leaders.first()
                && !first.is_empty()
                && leaders.iter().all(|l| l.as_ref() == Some(first))
                && let Ok(id) = first.parse::<u64>()
                && let Some(pos) = among.iter().position(|&i| self.nodes[i].id == id)
                && info_field(&last[pos], "role").as_deref() == Some("leader")
            {
                return among[pos];
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the nodes {among:?} did not agree on a leader among them within 30 s: {last:#?}");
    }

    /// [`TestCluster::stable_leader_among`] every live node.
    pub async fn stable_leader(&self) -> usize {
        self.stable_leader_among(&self.live()).await
    }
}

/// `CLUSTER.INFO` of the node at `addr` (2 s to connect, 2 s to answer).
pub async fn cluster_info(addr: SocketAddr) -> anyhow::Result<String> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr)).await??;
    match tokio::time::timeout(Duration::from_secs(2), c.command(&["CLUSTER.INFO"])).await?? {
        Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => anyhow::bail!("CLUSTER.INFO answered {other:?}"),
    }
}

/// One field of `key:value` lines.
pub fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// A numeric field of `INFO`/`CLUSTER.INFO` of the node at `addr`.
pub async fn info_number(addr: SocketAddr, command: &str, name: &str) -> Option<u64> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr))
        .await
        .ok()?
        .ok()?;
    let v = tokio::time::timeout(Duration::from_secs(2), c.command(&[command]))
        .await
        .ok()?
        .ok()?;
    let Value::Bulk(b) = v else { return None };
    info_field(&String::from_utf8_lossy(&b), name)?.parse().ok()
}

/// How a call ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Answered.
    Done(Value),
    /// Refused, or never sent: nothing was applied. The error text.
    NotApplied(String),
    /// Sent, and no answer (or `UNKNOWN`): it may or may not have been
    /// applied.
    Unknown(String),
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }

    /// The error text, if it failed.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Done(_) => None,
            Outcome::NotApplied(e) | Outcome::Unknown(e) => Some(e),
        }
    }
}

/// Runs `args` once on a new connection to `addr`, giving it `wait` to
/// answer.
pub async fn call_once(addr: SocketAddr, args: &[&str], wait: Duration) -> Outcome {
    let mut client = match tokio::time::timeout(Duration::from_secs(3), Client::connect(addr)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::NotApplied(format!("connect: {e}")),
        Err(_) => return Outcome::NotApplied("connect: timeout".into()),
    };
    call_on(&mut client, args, wait).await
}

/// Runs `args` on `client`, giving it `wait` to answer.
pub async fn call_on(client: &mut Client, args: &[&str], wait: Duration) -> Outcome {
    match tokio::time::timeout(wait, client.command(args)).await {
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(e)) if e.is_server_error() && e.code() != Some("UNKNOWN") => {
            Outcome::NotApplied(e.to_string())
        }
        Ok(Err(e)) => Outcome::Unknown(e.to_string()),
        Err(_) => Outcome::Unknown("timeout".into()),
    }
}

/// Runs `args` on `addr`, retrying `TRYAGAIN` (nothing applied) and
/// failed connections for up to `retry_for`.
pub async fn call_retrying(addr: SocketAddr, args: &[&str], retry_for: Duration) -> Outcome {
    let deadline = Instant::now() + retry_for;
    loop {
        let out = call_once(addr, args, Duration::from_secs(8)).await;
        let retry = match &out {
            Outcome::NotApplied(e) => e.starts_with("connect") || e.contains("TRYAGAIN"),
            _ => false,
        };
        if !retry || Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`call_retrying`] for 10 s, for calls that must succeed.
pub async fn call(addr: SocketAddr, args: &[&str]) -> Result<Value, String> {
    match call_retrying(addr, args, Duration::from_secs(10)).await {
        Outcome::Done(v) => Ok(v),
        other => Err(format!("{other:?}")),
    }
}

/// The first write acknowledged through any of `nodes` (bounded: 60 s),
/// as the time since `since`: failover as a client sees it.
pub async fn first_ack(nodes: &[SocketAddr], since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for addr in nodes {
            let out = call_once(
                *addr,
                &["SESSION.INCR", "probe", "n", "1", "CREATE"],
                Duration::from_secs(8),
            )
            .await;
            if out.is_done() {
                return since.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no write acknowledged within 60 s");
}

/// The integer value of the one field of a `SESSION.READ … KEYS n` reply
/// (0 when absent).
pub fn field_value(v: &Value) -> Option<i64> {
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

/// The text value of the one field of a `SESSION.READ … KEYS k` reply
/// (None when absent).
pub fn field_text(v: &Value) -> Option<String> {
    let Value::Array(parts) = v else { return None };
    let Value::Array(fields) = parts.get(3)? else {
        return None;
    };
    match fields.get(2)? {
        Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The token of a `LOCK.ACQUIRE` grant.
pub fn grant_token(v: &Value) -> Option<u64> {
    let Value::Array(parts) = v else { return None };
    match parts.first()? {
        Value::Int(t) => u64::try_from(*t).ok(),
        _ => None,
    }
}

/// Microseconds since `start`: the clock the recorded histories share.
pub fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One recorded call of a load client.
pub struct Recorded {
    pub client: u64,
    pub call: u64,
    pub ret: u64,
    pub is_read: bool,
    pub outcome: Outcome,
}

/// A client on the node at `addr` that increments and reads `ctr`/`n`
/// until `stop` (at most 400 calls).
pub fn load_client(
    client: u64,
    addr: SocketAddr,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Recorded>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        for k in 0..400 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let is_read = k % 3 == 2;
            let args: &[&str] = if is_read {
                &["SESSION.READ", "ctr", "KEYS", "n"]
            } else {
                &["SESSION.INCR", "ctr", "n", "1"]
            };
            let call = micros_since(start);
            let outcome = call_once(addr, args, Duration::from_secs(10)).await;
            let ret = micros_since(start);
            let refused = !outcome.is_done();
            out.push(Recorded {
                client,
                call,
                ret,
                is_read,
                outcome,
            });
            if refused {
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        out
    })
}

/// The register history of the load clients, with the number of
/// acknowledged and unknown increments.
pub fn register_history(
    recorded: Vec<Recorded>,
) -> (Vec<Operation<RegisterOp, RegisterRet>>, i64, i64) {
    let mut history = Vec::new();
    let (mut acked, mut unknown) = (0, 0);
    for r in recorded {
        let (op, out, ret) = match (r.is_read, r.outcome) {
            (_, Outcome::NotApplied(_)) | (true, Outcome::Unknown(_)) => continue,
            (false, Outcome::Done(v)) => match &v {
                Value::Array(parts) => match parts.first() {
                    Some(Value::Int(n)) => {
                        acked += 1;
                        (RegisterOp::Add(1), RegisterRet::Value(*n), Some(r.ret))
                    }
                    _ => panic!("INCR answered {v:?}"),
                },
                _ => panic!("INCR answered {v:?}"),
            },
            (true, Outcome::Done(v)) => {
                let n = field_value(&v).unwrap_or_else(|| panic!("read answered {v:?}"));
                (RegisterOp::Read, RegisterRet::Value(n), Some(r.ret))
            }
            (false, Outcome::Unknown(_)) => {
                unknown += 1;
                (RegisterOp::Add(1), RegisterRet::Value(0), None)
            }
        };
        history.push(Operation {
            client: r.client,
            call: r.call,
            ret,
            op,
            out,
        });
    }
    (history, acked, unknown)
}

/// A fenced write's outcome as the lock model sees it: `None` when nothing
/// was applied (`TRYAGAIN`: leave it out).
pub fn fenced_write(
    history: &mut Vec<Operation<LockOp, LockRet>>,
    client: u64,
    call: u64,
    ret: u64,
    token: u64,
    outcome: &Outcome,
) {
    let (ret, out) = match outcome {
        Outcome::Done(_) => (Some(ret), LockRet::Ok),
        Outcome::NotApplied(e) if e.starts_with("FENCED") => (Some(ret), LockRet::Fenced),
        Outcome::NotApplied(_) => return,
        Outcome::Unknown(_) => (None, LockRet::Ok),
    };
    history.push(Operation {
        client,
        call,
        ret,
        op: LockOp::FencedWrite(token),
        out,
    });
}
