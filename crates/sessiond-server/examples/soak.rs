//! Soak: a mixed session load against a real `sessiond` binary for a set
//! time, reporting resident memory over time, errors and lost updates.
//!
//! ```text
//! cargo build -p sessiond-server && \
//! cargo run -p sessiond-server --example soak -- --seconds 60
//! scripts/soak.sh --minutes 30
//! ```
//!
//! The load, from `--workers` connections at once: create sessions, read
//! and check them against what this worker wrote, commit, lock + fenced
//! commit + unlock, regenerate (and read through the new id), destroy,
//! sessions with a 1 s TTL that must be gone after 3 s, SESSION.INCR on
//! shared counters and lock-protected read-modify-write on shared
//! sessions (every acknowledged increment must be in the final value).
//! Each worker keeps at most `MAX_OWNED` sessions alive, so a healthy
//! server's memory levels off.
//!
//! Exits non-zero when any request failed unexpectedly, any update was
//! lost, or resident memory in the last quarter of the run grew by more
//! than `--max-rss-growth` percent over the level after the first quarter.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sessiond_client::{Client, Commit, IncrOptions, LockOptions, NewOptions};

const MAX_OWNED: usize = 20;
const SHARED_COUNTERS: usize = 4;

struct Args {
    seconds: u64,
    workers: usize,
    server: PathBuf,
    durability: String,
    max_rss_growth: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        workers: 16,
        server: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/debug/sessiond"
        )),
        durability: "everysec".into(),
        max_rss_growth: 50.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
            }
            "--minutes" => {
                let m: f64 = value()?.parse().map_err(|e| format!("--minutes: {e}"))?;
                args.seconds = (m * 60.0).round() as u64;
            }
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
            }
            "--server" => args.server = PathBuf::from(value()?),
            "--durability" => args.durability = value()?,
            "--max-rss-growth" => {
                args.max_rss_growth = value()?
                    .parse()
                    .map_err(|e| format!("--max-rss-growth: {e}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "soak [--seconds N | --minutes N] [--workers N] [--server PATH] [--durability always|everysec|no] [--max-rss-growth PCT]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.seconds == 0 || args.workers == 0 {
        return Err("--seconds and --workers must be positive".into());
    }
    Ok(args)
}

/// The server process; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(args: &Args) -> Result<Server, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = Command::new(&args.server)
            .args([
                "serve",
                "--port",
                "0",
                "--metrics-addr",
                "off",
                "--storage",
                "redb",
            ])
            .args(["--durability", &args.durability])
            .arg("--data-dir")
            .arg(data.path())
            .env("SESSIOND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", args.server.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("resp="))
            .and_then(|a| a.parse().ok())
            .ok_or(format!("no ready line from the server: {line:?}"))?;
        Ok(Server {
            child,
            addr,
            _data: data,
        })
    }

    fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    expired_checked: AtomicU64,
}

impl Counts {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("error: {what}: {e}");
        }
    }
    fn lost(&self, what: String) {
        if self.lost.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("LOST UPDATE: {what}");
        }
    }
}

/// A small deterministic generator (no dependency needed).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A shared session's counter: the acknowledged increments, summed over
/// workers.
struct Shared {
    incr_ids: Vec<String>,
    locked_ids: Vec<String>,
    incr_acked: Vec<AtomicU64>,
    locked_acked: Vec<AtomicU64>,
}

async fn worker(
    n: usize,
    addr: SocketAddr,
    deadline: Instant,
    counts: Arc<Counts>,
    shared: Arc<Shared>,
) {
    let mut c = match Client::connect(addr).await {
        Ok(c) => c,
        Err(e) => return counts.error("connect", e),
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1));
    // Sessions this worker owns: id → the value of `v` it last wrote.
    let mut owned: BTreeMap<String, u64> = BTreeMap::new();
    let mut order: VecDeque<String> = VecDeque::new();
    // Short-TTL sessions and when they must be gone.
    let mut expiring: VecDeque<(String, Instant)> = VecDeque::new();
    let mut next_value = 1u64;
    while Instant::now() < deadline {
        counts.ops.fetch_add(1, Ordering::Relaxed);
        let pick = rng.below(100);
        if owned.is_empty() || (pick < 10 && owned.len() < MAX_OWNED) {
            match c
                .new_session(NewOptions {
                    ttl: Some(Duration::from_secs(3600)),
                    lifetime: None,
                })
                .await
            {
                Ok(id) => {
                    owned.insert(id.clone(), 0);
                    order.push_back(id);
                }
                Err(e) => counts.error("SESSION.NEW", e),
            }
            continue;
        }
        let id = order[rng.below(order.len() as u64) as usize].clone();
        let expected = owned[&id];
        match pick {
            // Read and check.
            10..=39 => match c.read(&id, &Default::default()).await {
                Ok(Some(s)) => {
                    let got = s.get("v").map(|v| {
                        String::from_utf8_lossy(v)
                            .parse::<u64>()
                            .unwrap_or(u64::MAX)
                    });
                    if got.unwrap_or(0) != expected {
                        counts.lost(format!("{id}: read {got:?}, wrote {expected}"));
                    }
                }
                Ok(None) => counts.lost(format!("{id}: gone")),
                Err(e) => counts.error("SESSION.READ", e),
            },
            // Commit.
            40..=59 => {
                let v = next_value;
                next_value += 1;
                let payload = vec![b'p'; 200 + rng.below(2_000) as usize];
                match c
                    .commit(
                        &id,
                        &Commit::new()
                            .set("v", v.to_string())
                            .set("payload", payload),
                    )
                    .await
                {
                    Ok(_) => {
                        owned.insert(id, v);
                    }
                    Err(e) => counts.error("SESSION.COMMIT", e),
                }
            }
            // Lock, fenced commit, unlock.
            60..=69 => {
                let opts = LockOptions {
                    wait: Duration::from_millis(500),
                    ..Default::default()
                };
                match c.lock(&id, &opts).await {
                    Ok(grant) => {
                        let v = next_value;
                        next_value += 1;
                        match c
                            .commit(
                                &id,
                                &Commit::new()
                                    .set("v", v.to_string())
                                    .fence(grant.token)
                                    .unlock(),
                            )
                            .await
                        {
                            Ok(_) => {
                                owned.insert(id, v);
                            }
                            Err(e) => counts.error("fenced SESSION.COMMIT", e),
                        }
                    }
                    Err(e) => counts.error("LOCK.ACQUIRE", e),
                }
            }
            // Regenerate: the data moves to the new id.
            70..=74 => match c.regenerate(&id, Some(Duration::from_secs(1)), None).await {
                Ok(new) => {
                    owned.remove(&id);
                    order.retain(|o| o != &id);
                    match c.read(&new, &Default::default()).await {
                        Ok(Some(s)) => {
                            let got = s.get("v").map(|v| {
                                String::from_utf8_lossy(v)
                                    .parse::<u64>()
                                    .unwrap_or(u64::MAX)
                            });
                            if got.unwrap_or(0) != expected {
                                counts
                                    .lost(format!("{id} → {new}: read {got:?}, wrote {expected}"));
                            }
                        }
                        Ok(None) => counts.lost(format!("{id} → {new}: new id gone")),
                        Err(e) => counts.error("read after SESSION.REGENERATE", e),
                    }
                    owned.insert(new.clone(), expected);
                    order.push_back(new);
                }
                Err(e) => counts.error("SESSION.REGENERATE", e),
            },
            // Destroy (the oldest), and check it is gone.
            75..=79 => {
                let Some(old) = order.pop_front() else {
                    continue;
                };
                owned.remove(&old);
                match c.destroy(&old).await {
                    Ok(true) => {}
                    Ok(false) => counts.lost(format!("{old}: missing at destroy")),
                    Err(e) => counts.error("SESSION.DESTROY", e),
                }
                match c.exists(&old).await {
                    Ok(false) => {}
                    Ok(true) => {
                        counts.error("SESSION.EXISTS", format!("{old} exists after destroy"));
                    }
                    Err(e) => counts.error("SESSION.EXISTS", e),
                }
            }
            // A short-TTL session, checked once it must have expired.
            80..=84 => {
                if let Some((old, due)) = expiring.front().cloned()
                    && Instant::now() >= due
                {
                    expiring.pop_front();
                    match c.exists(&old).await {
                        Ok(false) => {
                            counts.expired_checked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(true) => {
                            counts.error("expiry", format!("{old} outlived its 1 s TTL by 2 s"));
                        }
                        Err(e) => counts.error("SESSION.EXISTS", e),
                    }
                } else if expiring.len() < 50 {
                    match c
                        .new_session(NewOptions {
                            ttl: Some(Duration::from_secs(1)),
                            lifetime: None,
                        })
                        .await
                    {
                        Ok(short) => {
                            if let Err(e) = c.commit(&short, &Commit::new().set("v", "short")).await
                            {
                                counts.error("commit to a short-TTL session", e);
                            }
                            expiring.push_back((short, Instant::now() + Duration::from_secs(3)));
                        }
                        Err(e) => counts.error("SESSION.NEW TTL 1", e),
                    }
                }
            }
            // INCR on a shared counter.
            85..=92 => {
                let k = rng.below(SHARED_COUNTERS as u64) as usize;
                match c
                    .incr(
                        &shared.incr_ids[k],
                        "n",
                        1,
                        &IncrOptions {
                            create: true,
                            fence: None,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        shared.incr_acked[k].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => counts.error("SESSION.INCR", e),
                }
            }
            // Lock-protected read-modify-write on a shared session.
            _ => {
                let k = rng.below(SHARED_COUNTERS as u64) as usize;
                let sid = &shared.locked_ids[k];
                let opts = LockOptions {
                    wait: Duration::from_secs(2),
                    create: true,
                    ..Default::default()
                };
                match c.lock(sid, &opts).await {
                    Ok(grant) => {
                        let cur = grant
                            .data
                            .as_ref()
                            .and_then(|d| d.get("n"))
                            .and_then(|v| String::from_utf8_lossy(v).parse::<u64>().ok())
                            .unwrap_or(0);
                        let commit = Commit::new()
                            .set("n", (cur + 1).to_string())
                            .fence(grant.token)
                            .unlock();
                        match c.commit(sid, &commit).await {
                            Ok(_) => {
                                shared.locked_acked[k].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => counts.error("locked read-modify-write", e),
                        }
                    }
                    Err(e) => counts.error("LOCK.ACQUIRE (shared)", e),
                }
            }
        }
        // Keep the live set bounded.
        while owned.len() > MAX_OWNED {
            let Some(old) = order.pop_front() else { break };
            owned.remove(&old);
            if let Err(e) = c.destroy(&old).await {
                counts.error("SESSION.DESTROY", e);
            }
        }
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let server = match Server::start(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "soak: {} s, {} workers, durability {}, server {} (pid {})",
        args.seconds,
        args.workers,
        args.durability,
        server.addr,
        server.child.id()
    );
    let counts = Arc::new(Counts::default());
    let shared = Arc::new(Shared {
        incr_ids: (0..SHARED_COUNTERS)
            .map(|k| format!("soakincr{k:04}"))
            .collect(),
        locked_ids: (0..SHARED_COUNTERS)
            .map(|k| format!("soaklock{k:04}"))
            .collect(),
        incr_acked: (0..SHARED_COUNTERS).map(|_| AtomicU64::new(0)).collect(),
        locked_acked: (0..SHARED_COUNTERS).map(|_| AtomicU64::new(0)).collect(),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.workers)
        .map(|n| {
            tokio::spawn(worker(
                n,
                server.addr,
                deadline,
                counts.clone(),
                shared.clone(),
            ))
        })
        .collect();

    // Resident memory over time: about 20 samples, at least one per 30 s.
    let every = Duration::from_secs((args.seconds / 20).clamp(1, 30));
    let mut samples: Vec<(u64, u64)> = Vec::new();
    println!(
        "{:>8} {:>10} {:>8} {:>6} {:>10}",
        "time_s", "ops", "errors", "lost", "rss_mb"
    );
    while Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let t = started.elapsed().as_secs();
        let rss = server.rss_bytes();
        samples.push((t, rss));
        println!(
            "{t:>8} {:>10} {:>8} {:>6} {:>10.1}",
            counts.ops.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
            counts.lost.load(Ordering::Relaxed),
            mb(rss)
        );
    }
    for t in tasks {
        if t.await.is_err() {
            counts.error("worker", "panicked");
        }
    }

    // Every acknowledged increment is in the shared counters.
    match Client::connect(server.addr).await {
        Ok(mut c) => {
            for k in 0..SHARED_COUNTERS {
                for (ids, acked, key) in [
                    (&shared.incr_ids, &shared.incr_acked, "incr"),
                    (&shared.locked_ids, &shared.locked_acked, "locked"),
                ] {
                    let want = acked[k].load(Ordering::Relaxed);
                    let got = match c.read(&ids[k], &Default::default()).await {
                        Ok(Some(s)) => s
                            .get("n")
                            .and_then(|v| String::from_utf8_lossy(v).parse::<u64>().ok())
                            .unwrap_or(0),
                        Ok(None) => 0,
                        Err(e) => {
                            counts.error("final read", e);
                            continue;
                        }
                    };
                    if got != want {
                        counts.lost(format!(
                            "{key} counter {}: {got}, acknowledged {want}",
                            ids[k]
                        ));
                    }
                }
            }
        }
        Err(e) => counts.error("final connect", e),
    }

    let (errors, lost) = (
        counts.errors.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
    );
    // Flat: the last quarter's peak against the level after the first quarter.
    let quarter = samples.len() / 4;
    let baseline = samples.get(quarter).map_or(0, |s| s.1);
    let late_peak = samples[samples.len().saturating_sub(quarter.max(1))..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let growth = if baseline > 0 {
        (late_peak as f64 / baseline as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    println!(
        "soak: {} ops in {} s, {errors} errors, {lost} lost updates, {} expiries checked; rss {:.1} MB after the first quarter, {:.1} MB peak in the last quarter ({growth:+.1}%)",
        counts.ops.load(Ordering::Relaxed),
        started.elapsed().as_secs(),
        counts.expired_checked.load(Ordering::Relaxed),
        mb(baseline),
        mb(late_peak)
    );
    let mut failed = false;
    if errors > 0 || lost > 0 {
        println!("soak: FAILED: {errors} errors, {lost} lost updates");
        failed = true;
    }
    if growth > args.max_rss_growth {
        println!(
            "soak: FAILED: resident memory grew {growth:.1}% (limit {}%)",
            args.max_rss_growth
        );
        failed = true;
    }
    drop(server);
    if failed {
        std::process::exit(1);
    }
    println!("soak: ok");
}
