//! Round trip, session cycle, locked cycle and contended hand-off.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::driver::{self, Lat, OpErr, Rng, drive, new_hist};
use crate::report::{CycleRow, HandoffRow, PingRow};
use crate::store::{self, Acquired, Client, Kind, Polling, Shape};
use crate::wire::{Resp, Value};

/// `PING` on one connection for `dur`.
#[allow(clippy::unnecessary_wraps)] // fallible like every other bench
pub fn ping(name: &str, addr: SocketAddr, dur: Duration) -> Result<PingRow> {
    let m = drive(
        &format!("ping {name}"),
        1,
        Duration::from_millis(200),
        dur,
        |_| {
            let mut c = Resp::connect(addr)?;
            Ok(move |_: &mut Rng| -> driver::OpResult {
                match c.call(&[b"PING"])? {
                    Value::Status(_) => Ok(()),
                    v => Err(OpErr::App(format!("PING: {v:?}"))),
                }
            })
        },
    );
    eprintln!(
        "  ping {name}: p50 {:.1} µs, p99 {:.1} µs",
        m.hist.value_at_quantile(0.5) as f64 / 1e3,
        m.hist.value_at_quantile(0.99) as f64 / 1e3
    );
    Ok(PingRow {
        store: name.into(),
        lat: Lat::of(&m.hist),
    })
}

/// PING from a client that was idle for 1 ms before each one: the round
/// trip a lock waiter makes, whose thread (and the server's worker) slept
/// while the holder worked. Back-to-back PINGs keep every thread and CPU
/// awake, so they are the faster, best-case round trip.
pub fn ping_after_idle(name: &str, addr: SocketAddr, dur: Duration) -> Result<PingRow> {
    let mut c = Resp::connect(addr)?;
    let mut hist = new_hist();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
        let t = Instant::now();
        match c.call(&[b"PING"])? {
            Value::Status(_) => {}
            v => anyhow::bail!("PING: {v:?}"),
        }
        hist.saturating_record(t.elapsed().as_nanos() as u64);
    }
    eprintln!(
        "  ping {name} after 1 ms idle: p50 {:.1} µs, p99 {:.1} µs",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3
    );
    Ok(PingRow {
        store: format!("{name} (after 1 ms idle)"),
        lat: Lat::of(&hist),
    })
}

/// A store taking part in the cycle benchmarks.
pub struct Target<'a> {
    pub name: &'a str,
    pub durability: &'a str,
    pub kind: Kind,
    pub addr: SocketAddr,
}

fn row(t: &Target, sh: &Shape, conns: usize, m: &driver::Measured) -> CycleRow {
    CycleRow {
        store: t.name.into(),
        durability: t.durability.into(),
        size: sh.size,
        conns,
        secs: m.secs,
        ops: m.ops,
        ops_per_sec: m.ops_per_sec(),
        errors: m.errors,
        first_error: m.first_error.clone(),
        lat: Lat::of(&m.hist),
        lost_updates: None,
        ran_unlocked: None,
    }
}

fn done(kind: &str, r: &CycleRow) {
    eprintln!(
        "  {kind} {:<16} {:>5} c={:<3} {:>9.0} ops/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  errors {}{}",
        r.store,
        store::shape(r.size).label(),
        r.conns,
        r.ops_per_sec,
        r.lat.p50_us,
        r.lat.p99_us,
        r.lat.p999_us,
        r.errors,
        r.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
}

/// Session cycle on `n` preloaded sessions of shape `sh`.
pub fn cycle(
    t: &Target,
    sh: &Shape,
    n: u64,
    conns: usize,
    warmup: Duration,
    dur: Duration,
) -> CycleRow {
    let m = drive(
        &format!("cycle {} {} c={conns}", t.name, sh.label()),
        conns,
        warmup,
        dur,
        |i| {
            let mut c = Client::connect(t.kind, t.addr, i as u64)?;
            Ok(move |rng: &mut Rng| c.cycle(sh, &sh.id(store::pick(rng, n))))
        },
    );
    let r = row(t, sh, conns, &m);
    done("cycle ", &r);
    r
}

/// Locked cycle for each of `conn_counts`, then counts lost updates over
/// all of them (counters read before and after).
pub fn locked(
    t: &Target,
    sh: &Shape,
    n: u64,
    conn_counts: &[usize],
    polling: Polling,
    warmup: Duration,
    dur: Duration,
) -> Result<Vec<CycleRow>> {
    let before = store::counters(t.kind, t.addr, sh, n)?;
    let expected: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let unlocked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut rows = Vec::new();
    for &conns in conn_counts {
        unlocked.store(0, Ordering::Relaxed);
        let m = drive(
            &format!("locked {} {} c={conns}", t.name, sh.label()),
            conns,
            warmup,
            dur,
            |i| {
                let mut c = Client::connect(t.kind, t.addr, i as u64)?;
                let (expected, unlocked, stop) = (&expected, &unlocked, &stop);
                Ok(move |rng: &mut Rng| {
                    let k = store::pick(rng, n);
                    let under_lock = c.locked_cycle(sh, &sh.id(k), polling, stop)?;
                    expected[k as usize].fetch_add(1, Ordering::Relaxed);
                    if !under_lock {
                        unlocked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            },
        );
        let mut r = row(t, sh, conns, &m);
        if matches!(t.kind, Kind::Redis | Kind::RedisWait) {
            r.ran_unlocked = Some(unlocked.load(Ordering::Relaxed));
        }
        done("locked", &r);
        rows.push(r);
    }
    let after = store::counters(t.kind, t.addr, sh, n)?;
    let mut lost = 0u64;
    for i in 0..n as usize {
        let exp = expected[i].load(Ordering::Relaxed);
        let got = match (before[i], after[i]) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        };
        lost += exp.saturating_sub(got);
    }
    eprintln!("  locked {}: {lost} lost updates over all runs", t.name);
    for r in &mut rows {
        r.lost_updates = Some(lost);
    }
    Ok(rows)
}

/// A contender in the hand-off benchmark.
pub enum Contender<'a> {
    Sessiond(SocketAddr),
    Redis(SocketAddr, Polling),
    Flock(&'a std::path::Path),
}

/// A shared clock for timestamps across threads.
fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64 + 1
}

/// `clients` threads on one lock: lock → 1 ms of work → unlock, for `dur`.
/// The hand-off latency is, for each release made while another client was
/// waiting, the time until a client that was waiting at that release gets
/// the lock (a lock re-taken by the releaser does not count as handed off).
#[allow(clippy::unnecessary_wraps)] // fallible like every other bench
pub fn handoff(name: &str, who: &Contender, clients: usize, dur: Duration) -> Result<HandoffRow> {
    let base = Instant::now();
    // Releases made while another client was waiting, not yet followed by a
    // grant to a client that was waiting at that release.
    let releases: Mutex<Vec<u64>> = Mutex::new(Vec::with_capacity(1 << 10));
    // When each client started waiting; 0 while it is not waiting.
    let waiting: Vec<AtomicU64> = (0..clients).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let cycles = AtomicU64::new(0);
    let gave_up = AtomicU64::new(0);
    let ran_unlocked = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let hand = Mutex::new(new_hist());
    let acq = Mutex::new(new_hist());
    let session = "handoff-lock";
    let rkey = store::redis_key(session);
    let live = driver::Live::default();
    let work = Duration::from_millis(1);
    let mut secs = 0.0;
    let barrier = std::sync::Barrier::new(clients + 1);
    std::thread::scope(|s| {
        for i in 0..clients {
            let (
                releases,
                waiting,
                stop,
                cycles,
                gave_up,
                ran_unlocked,
                errors,
                first_error,
                hand,
                acq,
                rkey,
                live,
                barrier,
            ) = (
                &releases,
                &waiting,
                &stop,
                &cycles,
                &gave_up,
                &ran_unlocked,
                &errors,
                &first_error,
                &hand,
                &acq,
                &rkey,
                &live,
                &barrier,
            );
            s.spawn(move || {
                let fail = |e: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = first_error.lock()
                        && f.is_none()
                    {
                        *f = Some(e);
                    }
                };
                let mut hh = new_hist();
                let mut ah = new_hist();
                // Each client has its own connection or its own open file.
                enum C {
                    S(Resp),
                    R(Client),
                    F(std::fs::File),
                }
                let conn = match who {
                    Contender::Sessiond(a) => Resp::connect(*a).map(C::S),
                    Contender::Redis(a, _) => Client::connect(Kind::Redis, *a, i as u64).map(C::R),
                    Contender::Flock(p) => std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(p)
                        .map(C::F),
                };
                barrier.wait();
                let mut conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        fail(format!("connect: {e}"));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let t_req = now_ns(base);
                    waiting[i].store(t_req, Ordering::SeqCst);
                    // Acquire.
                    let held: Result<Option<Vec<u8>>, String> = match &mut conn {
                        C::S(c) => {
                            match c.call(&[b"LOCK.ACQUIRE", session.as_bytes(), b"WAIT", b"30000"])
                            {
                                Ok(Value::Array(a)) => match a.first().and_then(Value::int) {
                                    Some(t) => Ok(Some(t.to_string().into_bytes())),
                                    None => Err("LOCK.ACQUIRE without token".into()),
                                },
                                Ok(v) => Err(format!("LOCK.ACQUIRE: {v:?}")),
                                Err(e) => Err(format!("io: {e}")),
                            }
                        }
                        C::R(c) => {
                            let Contender::Redis(_, p) = who else {
                                unreachable!()
                            };
                            match c.redis_lock(rkey, *p, stop) {
                                Ok(Acquired::Locked(secret)) => Ok(Some(secret)),
                                Ok(Acquired::GaveUp) => {
                                    gave_up.fetch_add(1, Ordering::Relaxed);
                                    if p.proceed_unlocked {
                                        ran_unlocked.fetch_add(1, Ordering::Relaxed);
                                        std::thread::sleep(work);
                                        cycles.fetch_add(1, Ordering::Relaxed);
                                        live.ops.fetch_add(1, Ordering::Relaxed);
                                    }
                                    continue;
                                }
                                Ok(Acquired::Stopped) => break,
                                Err(OpErr::Io(e)) => Err(format!("io: {e}")),
                                Err(OpErr::App(e)) => Err(e),
                            }
                        }
                        C::F(f) => {
                            // SAFETY: flock on a file descriptor we own.
                            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                                Ok(None)
                            } else {
                                Err(format!("flock: {}", std::io::Error::last_os_error()))
                            }
                        }
                    };
                    let token = match held {
                        Ok(t) => t,
                        Err(e) => {
                            fail(e);
                            break;
                        }
                    };
                    let t_grant = now_ns(base);
                    waiting[i].store(0, Ordering::SeqCst);
                    ah.saturating_record(t_grant - t_req);
                    // Every release we were already waiting at is served by
                    // this grant: its hand-off took from that release to now.
                    // (A release re-taken by its own client, or by one that
                    // came later, is not served until a waiter gets the lock.)
                    if let Ok(mut r) = releases.lock() {
                        r.retain(|&rel| {
                            if rel > t_req {
                                hh.saturating_record(t_grant.saturating_sub(rel).max(1));
                                false
                            } else {
                                true
                            }
                        });
                    }
                    std::thread::sleep(work);
                    let rel = now_ns(base);
                    let someone_waits = waiting
                        .iter()
                        .enumerate()
                        .any(|(k, w)| k != i && w.load(Ordering::SeqCst) != 0);
                    if someone_waits && let Ok(mut r) = releases.lock() {
                        r.push(rel);
                    }
                    let r = match (&mut conn, token) {
                        (C::S(c), Some(t)) => c
                            .call(&[b"LOCK.RELEASE", session.as_bytes(), &t])
                            .map_err(|e| format!("io: {e}"))
                            .and_then(|v| match v {
                                Value::Int(1) => Ok(()),
                                v => Err(format!("LOCK.RELEASE: {v:?}")),
                            }),
                        (C::R(c), Some(secret)) => {
                            c.redis_unlock(rkey, &secret).map_err(|e| format!("{e:?}"))
                        }
                        (C::F(f), _) => {
                            // SAFETY: as above.
                            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) } == 0 {
                                Ok(())
                            } else {
                                Err(format!("flock: {}", std::io::Error::last_os_error()))
                            }
                        }
                        _ => Err("no token".into()),
                    };
                    if let Err(e) = r {
                        fail(e);
                        break;
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                    live.ops.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut h) = hand.lock() {
                    let _ = h.add(hh);
                }
                if let Ok(mut h) = acq.lock() {
                    let _ = h.add(ah);
                }
            });
        }
        barrier.wait();
        let t_start = Instant::now();
        let pstop = AtomicBool::new(false);
        std::thread::scope(|ps| {
            let p = driver::progress(
                ps,
                format!("handoff {name} n={clients}"),
                &live,
                &pstop,
                dur,
            );
            std::thread::sleep(dur);
            pstop.store(true, Ordering::Relaxed);
            let _ = p.join();
        });
        secs = t_start.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
    });
    let hand = hand.into_inner().unwrap_or_else(|e| e.into_inner());
    let acq = acq.into_inner().unwrap_or_else(|e| e.into_inner());
    let n = cycles.load(Ordering::Relaxed);
    let r = HandoffRow {
        contender: name.into(),
        clients,
        secs,
        cycles: n,
        cycles_per_sec: n as f64 / secs.max(1e-9),
        handoff: Lat::of(&hand),
        acquire: Lat::of(&acq),
        gave_up: gave_up.load(Ordering::Relaxed),
        ran_unlocked: ran_unlocked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().ok().flatten(),
    };
    eprintln!(
        "  handoff {name:<20} n={clients:<3} {:>7.0} cycles/s  hand-off p50 {:>9.1} µs p99 {:>9.1} µs  gave up {}  unlocked {}  errors {}",
        r.cycles_per_sec, r.handoff.p50_us, r.handoff.p99_us, r.gave_up, r.ran_unlocked, r.errors
    );
    Ok(r)
}
