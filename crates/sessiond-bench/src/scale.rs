//! Scale: memory per idle session against Redis, restart with every session
//! kept, and expiring them all while serving load.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::driver::{Lat, Rng, new_hist};
use crate::report::{ClusterNodeRestart, Expiry, Scale};
use crate::servers::{Server, SessiondCmd};
use crate::store::{self, Client, FIELDS, Kind, Shape};
use crate::wire::{Resp, Value};

pub struct Opts<'a> {
    pub sessions: u64,
    pub live_sessions: u64,
    pub load_conns: usize,
    pub sessiond: &'a SessiondCmd,
    pub redis_bin: &'a str,
    pub expiry: bool,
    pub quick: bool,
}

/// Waits until the RSS of `s` stops growing (at most `max`).
fn settle(s: &Server, max: Duration) -> u64 {
    let t0 = Instant::now();
    let mut last = s.rss_bytes().unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = s.rss_bytes().unwrap_or(0);
        if now <= last + (last / 1000) || t0.elapsed() > max {
            return now;
        }
        last = now;
    }
}

fn info_sessions(c: &mut Resp) -> Result<u64> {
    let v = c.call(&[b"INFO", b"sessions"])?;
    let text = String::from_utf8_lossy(v.bulk().unwrap_or_default()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("sessions:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no sessions: line in {text:?}"))
}

/// Reads every session back and checks all 10 fields. Returns (good, bad).
fn verify(addr: SocketAddr, sh: &Shape, n: u64, conns: u64) -> Result<(u64, u64)> {
    let per = n.div_ceil(conns);
    let res: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..conns)
            .map(|t| {
                s.spawn(move || -> Result<(u64, u64)> {
                    let mut c = Resp::connect(addr)?;
                    let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                    let want: Vec<Vec<u8>> = (0..FIELDS)
                        .map(|i| store::field_value(i, 0, sh.vlen()))
                        .collect();
                    let (mut good, mut bad) = (0, 0);
                    let mut i = lo;
                    while i < hi {
                        let cmds: Vec<Vec<Vec<u8>>> = (i..(i + 256).min(hi))
                            .map(|k| vec![b"SESSION.READ".to_vec(), sh.id(k).into_bytes()])
                            .collect();
                        for r in c.pipeline(&cmds)? {
                            let ok = r
                                .array()
                                .and_then(|a| a.get(3))
                                .and_then(Value::array)
                                .is_some_and(|f| {
                                    f.len() == FIELDS * 3
                                        && f.chunks(3).all(|t| {
                                            let k = t[0].bulk().unwrap_or_default();
                                            let idx = k
                                                .get(1..)
                                                .and_then(|d| std::str::from_utf8(d).ok())
                                                .and_then(|d| d.parse::<usize>().ok());
                                            idx.is_some_and(|x| {
                                                x < FIELDS
                                                    && t[2].bulk() == Some(want[x].as_slice())
                                            })
                                        })
                                });
                            if ok { good += 1 } else { bad += 1 }
                        }
                        i += 256;
                    }
                    Ok((good, bad))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("verifier panicked")))
            .collect()
    });
    let mut tot = (0, 0);
    for r in res {
        let (g, b) = r?;
        tot.0 += g;
        tot.1 += b;
    }
    Ok(tot)
}

pub fn run(o: &Opts) -> Result<Scale> {
    let sh = Shape {
        prefix: "m",
        size: 1024,
    };
    let n = o.sessions;
    let mut out = Scale {
        sessions: n,
        session_bytes: sh.size,
        ..Default::default()
    };

    eprintln!("scale: sessiond (everysec, redb), loading {n} sessions");
    let mut sd = Server::sessiond(o.sessiond, "sessiond-everysec", "everysec")?;
    std::thread::sleep(Duration::from_millis(500));
    out.sessiond_rss_base = sd.rss_bytes().unwrap_or(0);
    let t = Instant::now();
    store::preload(Kind::Sessiond, sd.addr, &sh, 0..n, 3600, 2)?;
    out.sessiond_load_secs = t.elapsed().as_secs_f64();
    out.sessiond_rss_loaded = settle(&sd, Duration::from_secs(if o.quick { 3 } else { 30 }));
    out.sessiond_bytes_per_session = out
        .sessiond_rss_loaded
        .saturating_sub(out.sessiond_rss_base) as f64
        / n as f64;
    eprintln!(
        "  sessiond: loaded in {:.1} s, RSS {:.1} → {:.1} MB, {:.0} B/session",
        out.sessiond_load_secs,
        out.sessiond_rss_base as f64 / 1e6,
        out.sessiond_rss_loaded as f64 / 1e6,
        out.sessiond_bytes_per_session
    );

    eprintln!("scale: redis (appendonly off), loading {n} sessions");
    {
        let rd = Server::redis(o.redis_bin, "redis-off", None)?;
        std::thread::sleep(Duration::from_millis(300));
        out.redis_rss_base = rd.rss_bytes().unwrap_or(0);
        let t = Instant::now();
        store::preload(Kind::Redis, rd.addr, &sh, 0..n, 3600, 2)?;
        out.redis_load_secs = t.elapsed().as_secs_f64();
        out.redis_rss_loaded = settle(&rd, Duration::from_secs(10));
        out.redis_bytes_per_session =
            out.redis_rss_loaded.saturating_sub(out.redis_rss_base) as f64 / n as f64;
        eprintln!(
            "  redis: loaded in {:.1} s, RSS {:.1} → {:.1} MB, {:.0} B/session",
            out.redis_load_secs,
            out.redis_rss_base as f64 / 1e6,
            out.redis_rss_loaded as f64 / 1e6,
            out.redis_bytes_per_session
        );
    }

    eprintln!("scale: restarting sessiond with {n} sessions");
    out.shutdown_secs = sd.stop().as_secs_f64();
    if let Some(d) = &sd.dir {
        out.data_file_bytes = std::fs::metadata(d.path().join("data/sessions.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    let t = Instant::now();
    out.restart_ready_secs = sd.start_sessiond()?.as_secs_f64();
    loop {
        if let Ok(mut c) = Resp::connect(sd.addr)
            && matches!(c.call(&[b"PING"]), Ok(Value::Status(_)))
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("sessiond did not answer PING within 300 s of restart");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    out.restart_serving_secs = t.elapsed().as_secs_f64();
    let mut admin = Resp::connect(sd.addr)?;
    out.restart_sessions_counted = info_sessions(&mut admin)?;
    let (good, bad) = verify(sd.addr, &sh, n, 2)?;
    out.restart_sessions_verified = good;
    out.restart_sessions_bad = bad;
    out.sessiond_rss_after_restart = settle(&sd, Duration::from_secs(if o.quick { 2 } else { 10 }));
    out.sessiond_bytes_per_session_after_restart =
        out.sessiond_rss_after_restart
            .saturating_sub(out.sessiond_rss_base) as f64
            / n as f64;
    eprintln!(
        "  shutdown {:.2} s; restart: ready line {:.2} s, serving {:.2} s; {} sessions counted, {good} intact, {bad} bad; RSS {:.1} MB",
        out.shutdown_secs,
        out.restart_ready_secs,
        out.restart_serving_secs,
        out.restart_sessions_counted,
        out.sessiond_rss_after_restart as f64 / 1e6
    );

    out.cluster_node = Some(cluster_node(o, &mut sd, &sh)?);
    let mut admin = Resp::connect(sd.addr)?;

    if o.expiry {
        out.expiry = Some(expiry(o, &sd, &sh, &mut admin)?);
    }
    // Dropping `sd` kills it: a clean shutdown would first write the backlog
    // of removals to disk, which measures nothing here.
    Ok(out)
}

/// The single server's data as a cluster node's: a copy of the data
/// directory started as a cluster of one (it imports the sessions and takes
/// its first snapshot before its ready line), then killed with SIGKILL and
/// started again: the time until it answers a read, and every session
/// checked. `sd` is stopped for the copy and started again after.
fn cluster_node(o: &Opts, sd: &mut Server, sh: &Shape) -> Result<ClusterNodeRestart> {
    let n = o.sessions;
    eprintln!("scale: the same {n} sessions as a cluster node");
    sd.stop();
    let data = sd
        .dir
        .as_ref()
        .map(|d| d.path().join("data/sessions.redb"))
        .ok_or_else(|| anyhow::anyhow!("no data dir"))?;
    let mut node = Server::sessiond_cluster_of_one(o.sessiond, "sessiond-cluster-node", &data)?;
    sd.start_sessiond()?;
    let mut out = ClusterNodeRestart::default();
    let t = Instant::now();
    node.start_sessiond()?;
    first_read(node.addr, sh)?;
    out.import_secs = t.elapsed().as_secs_f64();
    if let Some(d) = &node.dir {
        out.snapshot_bytes = std::fs::metadata(d.path().join("data/raft-snapshot.bin"))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    node.kill9();
    let t = Instant::now();
    out.restart_ready_secs = node.start_sessiond()?.as_secs_f64();
    first_read(node.addr, sh)?;
    out.restart_serving_secs = t.elapsed().as_secs_f64();
    let (good, bad) = verify(node.addr, sh, n, 2)?;
    out.sessions_verified = good;
    out.sessions_bad = bad;
    eprintln!(
        "  import {:.2} s (snapshot {:.0} MB); after SIGKILL: ready line {:.2} s, first read {:.2} s; {good} intact, {bad} bad",
        out.import_secs,
        out.snapshot_bytes as f64 / 1e6,
        out.restart_ready_secs,
        out.restart_serving_secs
    );
    Ok(out)
}

/// Waits (at most 300 s) until the first session reads back.
fn first_read(addr: SocketAddr, sh: &Shape) -> Result<()> {
    let key = sh.id(0);
    let t = Instant::now();
    loop {
        if let Ok(mut c) = Resp::connect(addr)
            && let Ok(Value::Array(reply)) = c.call(&[b"SESSION.READ", key.as_bytes()])
            && !reply.is_empty()
        {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("{addr} did not answer SESSION.READ {key} within 300 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn expiry(o: &Opts, sd: &Server, sh: &Shape, admin: &mut Resp) -> Result<Expiry> {
    let n = o.sessions;
    let live = Shape {
        prefix: "live",
        size: 1024,
    };
    store::preload(Kind::Sessiond, sd.addr, &live, 0..o.live_sessions, 3600, 2)?;
    // Set the TTL so that the first sessions expire only after every touch
    // is done and a baseline has been measured.
    let touch_ttl = (n as f64 / 40_000.0).ceil() as u64 + if o.quick { 3 } else { 8 };
    eprintln!(
        "scale: expiry: {} conns cycling over {} live sessions; giving the {n} sessions a TTL of {touch_ttl} s",
        o.load_conns, o.live_sessions
    );
    let ops = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let phase = AtomicU8::new(0);
    let hists = Mutex::new([new_hist(), new_hist(), new_hist()]);
    let addr = sd.addr;
    let pid = sd.pid().unwrap_or(0);
    let result = std::thread::scope(|s| -> Result<Expiry> {
        for i in 0..o.load_conns {
            let (ops, stop, phase, hists, live) = (&ops, &stop, &phase, &hists, &live);
            let ln = o.live_sessions;
            s.spawn(move || {
                let mut hs = [new_hist(), new_hist(), new_hist()];
                let mut rng = Rng::new(i as u64 + 99);
                if let Ok(mut c) = Client::connect(Kind::Sessiond, addr, i as u64) {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if c.cycle(live, &live.id(rng.below(ln))).is_ok() {
                            let p = phase.load(Ordering::Relaxed) as usize;
                            hs[p.min(2)].saturating_record(t.elapsed().as_nanos() as u64);
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut h) = hists.lock() {
                    for (a, b) in h.iter_mut().zip(hs) {
                        let _ = a.add(b);
                    }
                }
            });
        }
        let r = (|| -> Result<Expiry> {
            // Touch every session with the short TTL (pipelined).
            let t_touch = Instant::now();
            let mut c = Resp::connect(addr)?;
            let ttl = touch_ttl.to_string();
            let mut i = 0;
            while i < n {
                let cmds: Vec<Vec<Vec<u8>>> = (i..(i + 512).min(n))
                    .map(|k| {
                        vec![
                            b"SESSION.TOUCH".to_vec(),
                            sh.id(k).into_bytes(),
                            b"TTL".to_vec(),
                            ttl.clone().into_bytes(),
                        ]
                    })
                    .collect();
                for r in c.pipeline(&cmds)? {
                    if r != Value::Int(1) {
                        bail!("SESSION.TOUCH: {r:?}");
                    }
                }
                i += 512;
            }
            let touch_secs = t_touch.elapsed().as_secs_f64();
            eprintln!("  touched {n} sessions in {touch_secs:.1} s");
            // Sample every 100 ms: (time, ops, sessions, cpu).
            let total = n + o.live_sessions;
            let t0 = Instant::now();
            let mut samples: Vec<(f64, u64, u64, f64)> = Vec::new();
            let mut first_drop: Option<usize> = None;
            let mut floor: Option<usize> = None;
            let deadline = Duration::from_secs(touch_ttl + 300);
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let sess = info_sessions(admin)?;
                let cpu = crate::servers::cpu_of(pid).unwrap_or(0.0);
                samples.push((
                    t0.elapsed().as_secs_f64(),
                    ops.load(Ordering::Relaxed),
                    sess,
                    cpu,
                ));
                let k = samples.len() - 1;
                if first_drop.is_none() && sess < total {
                    first_drop = Some(k.saturating_sub(1));
                    phase.store(1, Ordering::Relaxed);
                }
                if first_drop.is_some() && floor.is_none() && sess <= o.live_sessions {
                    floor = Some(k);
                    phase.store(2, Ordering::Relaxed);
                }
                if let Some(f) = floor
                    && samples[k].0 - samples[f].0 >= 3.0
                {
                    break;
                }
                if t0.elapsed() > deadline {
                    bail!(
                        "the sessions did not expire within {} s",
                        deadline.as_secs()
                    );
                }
                if show_progress(k) {
                    let (_, _, se, _) = samples[k];
                    eprint!("\r\x1b[K  expiry: {:.1} s, {se} sessions", samples[k].0);
                }
            }
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!("\r\x1b[K");
            }
            let (fd, fl) = (first_drop.unwrap_or(0), floor.unwrap_or(0));
            let rate = |a: usize, b: usize| -> (f64, f64) {
                let (ta, oa, _, ca) = samples[a];
                let (tb, ob, _, cb) = samples[b];
                let dt = (tb - ta).max(1e-9);
                ((ob - oa) as f64 / dt, (cb - ca) / dt)
            };
            // Baseline: up to 3 s before the first drop.
            let b0 = samples
                .iter()
                .position(|s| s.0 >= samples[fd].0 - 3.0)
                .unwrap_or(0);
            let (before, cpu_before) = rate(b0, fd.max(b0 + 1).min(samples.len() - 1));
            let (during, cpu_during) = rate(fd, fl.max(fd + 1).min(samples.len() - 1));
            let (after, _) = rate(fl, samples.len() - 1);
            let worst = (fd..fl.max(fd + 1))
                .filter(|&k| k + 1 < samples.len())
                .map(|k| rate(k, k + 1).0)
                .fold(f64::INFINITY, f64::min);
            let expiry_secs = samples[fl].0 - samples[fd].0;
            let timeline = samples
                .windows(2)
                .map(|w| {
                    (
                        (w[1].0 * 10.0).round() / 10.0,
                        ((w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0)).round(),
                        w[1].2,
                    )
                })
                .collect();
            Ok(Expiry {
                expired: n,
                load_conns: o.load_conns,
                expiry_secs,
                ops_per_sec_before: before,
                ops_per_sec_during: during,
                ops_per_sec_after: after,
                worst_100ms_ops_per_sec: if worst.is_finite() { worst } else { 0.0 },
                dip_pct: if before > 0.0 {
                    (1.0 - during / before) * 100.0
                } else {
                    0.0
                },
                cpu_before,
                cpu_during,
                expiry_cpu_secs: ((cpu_during - cpu_before) * expiry_secs).max(0.0),
                timeline,
                ..Default::default()
            })
        })();
        stop.store(true, Ordering::SeqCst);
        r
    });
    let mut e = result?;
    let h = hists.into_inner().unwrap_or_else(|e| e.into_inner());
    e.lat_before = Lat::of(&h[0]);
    e.lat_during = Lat::of(&h[1]);
    eprintln!(
        "  expired {n} in {:.1} s: {:.0} ops/s before, {:.0} during ({:.1}% dip), {:.0} after; CPU {:.2} → {:.2} cores",
        e.expiry_secs,
        e.ops_per_sec_before,
        e.ops_per_sec_during,
        e.dip_pct,
        e.ops_per_sec_after,
        e.cpu_before,
        e.cpu_during
    );
    Ok(e)
}

/// Every fifth sample, when stderr is a terminal.
fn show_progress(k: usize) -> bool {
    use std::io::IsTerminal;
    k.is_multiple_of(5) && std::io::stderr().is_terminal()
}
