//! The cluster run: three sessiond nodes (Raft, `--durability always`) on
//! fixed loopback ports, so the PHP app's node list
//! (`tcp://a,b,c`) stays valid when a node comes back; and the faults: while
//! the cluster rows run, a node is killed with SIGKILL every few seconds
//! (the leader every other time) and restarted on its data directory.
//! After each kill, the time until a surviving node acknowledges a write is
//! measured and printed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// One node: its fixed addresses, and its process while it runs.
struct Node {
    id: usize,
    port: u16,
    raft: String,
    child: Option<Child>,
}

/// The three nodes of the cluster run.
pub struct Nodes {
    bin: PathBuf,
    dir: PathBuf,
    initial: String,
    nodes: Vec<Node>,
}

/// What the fault loop did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FaultLog {
    /// One line per kill.
    pub kills: Vec<String>,
    /// Kill to first acknowledged write, ms.
    pub failover_ms: Vec<f64>,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Nodes {
    /// Starts three nodes with their data under `dir`.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        if !bin.is_file() {
            bail!("sessiond binary not found at {}", bin.display());
        }
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(Node {
                id,
                port: free_port()?,
                raft: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let initial = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft))
            .collect::<Vec<_>>()
            .join(",");
        let mut set = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            initial,
            nodes,
        };
        for i in 0..3 {
            set.start_node(i).await?;
        }
        Ok(set)
    }

    /// The node list for the PHP handler: `tcp://a,b,c`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("tcp://{}", addrs.join(","))
    }

    /// The nodes' client addresses, for the report.
    pub fn describe(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "sessiond node {} 127.0.0.1:{} (raft {})",
                    n.id, n.port, n.raft
                )
            })
            .collect()
    }

    async fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let data = self.dir.join(format!("sessiond-n{}", node.id));
        std::fs::create_dir_all(&data)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("sessiond-n{}.log", node.id)))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--port", &node.port.to_string()])
            .args(["--metrics-addr", "off", "--durability", "always"])
            .args(["--node-id", &node.id.to_string(), "--raft-addr", &node.raft])
            .args(["--initial-cluster", &self.initial, "--node-down-after", "2"])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Own process group: a terminal's Ctrl-C is the lab's to handle.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("start a sessiond node")?;
        let stdout = child.stdout.take().context("sessiond stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("sessiond ready:") {
                    return Ok::<_, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await
        .context("a sessiond node did not print its ready line within 15 s")??;
        if !ready {
            bail!(
                "sessiond node {} exited before it was ready (see {}/sessiond-n{}.log)",
                node.id,
                self.dir.display(),
                node.id
            );
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        node.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill().await;
        }
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// The index of the node that says it leads, if one does.
    async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            if let Ok(info) = resp(&self.addr(i), &["CLUSTER.INFO"]).await
                && info.contains("role:leader")
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits (at most 30 s) until one of the nodes but `except`
    /// acknowledges a write; the time since `since`.
    async fn first_ack(&self, except: usize, since: Instant) -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for i in (0..self.nodes.len()).filter(|i| *i != except) {
                if let Ok(r) = resp(
                    &self.addr(i),
                    &["SESSION.INCR", "racelab-probe", "n", "1", "CREATE"],
                )
                .await
                    && r.starts_with('*')
                {
                    return Some(since.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Kills a node after every `every` spent with `active` set (the leader
    /// every other time, else the next node round), restarts it 1.5 s
    /// later, until `stop`. At most 10 000 kills.
    pub async fn fault_loop(
        mut self,
        every: Duration,
        active: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> (Self, FaultLog) {
        let mut log = FaultLog::default();
        let mut round = 0usize;
        let tick = Duration::from_millis(100);
        let mut active_for = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) && round < 10_000 {
            // `every` of time while the cluster rows run (not wall time).
            tokio::time::sleep(tick).await;
            if active.load(Ordering::Relaxed) {
                active_for += tick;
            }
            if active_for < every || stop.load(Ordering::Relaxed) {
                continue;
            }
            active_for = Duration::ZERO;
            round += 1;
            let leader = self.leader().await;
            let victim = match leader {
                Some(l) if round % 2 == 1 => l,
                _ => round % 3,
            };
            let role = if Some(victim) == leader {
                "leader"
            } else {
                "follower"
            };
            self.kill(victim).await;
            let at = Instant::now();
            let ack = self.first_ack(victim, at).await;
            let line = match ack {
                Some(d) => {
                    log.failover_ms.push(d.as_secs_f64() * 1000.0);
                    format!(
                        "killed node {} ({role}); first acknowledged write after {:.0} ms",
                        victim + 1,
                        d.as_secs_f64() * 1000.0
                    )
                }
                None => format!(
                    "killed node {} ({role}); no write acknowledged within 30 s",
                    victim + 1
                ),
            };
            eprintln!("racelab cluster: {line}");
            log.kills.push(line);
            tokio::time::sleep(Duration::from_millis(1500).saturating_sub(at.elapsed())).await;
            if let Err(e) = self.start_node(victim).await {
                let line = format!("restarting node {} failed: {e:#}", victim + 1);
                eprintln!("racelab cluster: {line}");
                log.kills.push(line);
            }
        }
        (self, log)
    }

    /// Stops every node (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) on the pid of a child we spawned and
                    // have not reaped.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
                if tokio::time::timeout(Duration::from_secs(5), c.wait())
                    .await
                    .is_err()
                {
                    let _ = c.kill().await;
                }
            }
        }
    }
}

/// One command on a new connection (2 s to connect, 5 s to answer): a
/// simple string, an error line, or a bulk string's text; for an array, its
/// first line (`*N`).
pub async fn resp(addr: &str, args: &[&str]) -> Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    s.write_all(req.as_bytes()).await?;
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                continue;
            };
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            if let Some(len) = line.strip_prefix('$') {
                let len: usize = len.parse().unwrap_or(0);
                if buf.len() >= end + 2 + len {
                    return Ok(String::from_utf8_lossy(&buf[end + 2..end + 2 + len]).into_owned());
                }
                continue;
            }
            return Ok(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .context("no answer in 5 s")?
}
