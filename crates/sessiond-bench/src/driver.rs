//! Running N connections (one OS thread each, blocking I/O) for a fixed time
//! and collecting throughput and latency, with a progress line on stderr.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A small fast PRNG (xorshift64*), one per thread.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Why one operation failed.
#[derive(Debug)]
pub enum OpErr {
    /// The connection is unusable; the worker is rebuilt.
    Io(std::io::Error),
    /// The store answered with an error or something unexpected.
    App(String),
}

impl From<std::io::Error> for OpErr {
    fn from(e: std::io::Error) -> OpErr {
        OpErr::Io(e)
    }
}

impl From<&str> for OpErr {
    fn from(e: &str) -> OpErr {
        OpErr::App(e.into())
    }
}

impl From<String> for OpErr {
    fn from(e: String) -> OpErr {
        OpErr::App(e)
    }
}

pub type OpResult = Result<(), OpErr>;

pub fn new_hist() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Lat {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        let us = |v: u64| v as f64 / 1000.0;
        Lat {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// What one timed run produced.
pub struct Measured {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub hist: Histogram<u64>,
}

impl Measured {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
}

/// Live counters shared by the workers and the progress printer.
#[derive(Default)]
pub struct Live {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// Prints `label` with a live rate until `stop`; returns its thread.
pub fn progress<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    label: String,
    live: &'s Live,
    stop: &'s AtomicBool,
    total: Duration,
) -> std::thread::ScopedJoinHandle<'s, ()> {
    scope.spawn(move || {
        let tty = std::io::stderr().is_terminal();
        let t0 = Instant::now();
        let mut last = (t0, 0u64);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if tty {
                let now = Instant::now();
                let ops = live.ops.load(Ordering::Relaxed);
                let rate = (ops - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                last = (now, ops);
                eprint!(
                    "\r\x1b[K  {label}: {:>4.1}/{:.0}s  {ops} ops  {rate:>9.0}/s  errors {}",
                    t0.elapsed().as_secs_f64(),
                    total.as_secs_f64(),
                    live.errors.load(Ordering::Relaxed)
                );
            }
        }
        if tty {
            eprint!("\r\x1b[K");
        }
    })
}

/// Runs `conns` threads for `duration` (after `warmup`, not counted). Each
/// thread builds its worker with `make(thread_index)` and calls it in a loop;
/// a worker whose connection broke is rebuilt.
pub fn drive<W, F>(
    label: &str,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    make: F,
) -> Measured
where
    F: Fn(usize) -> std::io::Result<W> + Sync,
    W: FnMut(&mut Rng) -> OpResult,
{
    let live = Live::default();
    let stop = AtomicBool::new(false);
    let recording = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let note = |e: &OpErr| {
        if let Ok(mut f) = first_error.lock()
            && f.is_none()
        {
            *f = Some(match e {
                OpErr::Io(e) => format!("io: {e}"),
                OpErr::App(s) => s.clone(),
            });
        }
    };
    let barrier = std::sync::Barrier::new(conns + 1);
    let mut hist = new_hist();
    let mut secs = 0.0;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                let (live, stop, recording, barrier, make, note) =
                    (&live, &stop, &recording, &barrier, &make, &note);
                s.spawn(move || {
                    let mut h = new_hist();
                    let mut rng = Rng::new(i as u64 + 1 + std::process::id() as u64 * 7919);
                    let mut w = make(i);
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let worker = match &mut w {
                            Ok(w) => w,
                            Err(e) => {
                                note(&OpErr::App(format!("connect: {e}")));
                                live.errors.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(100));
                                w = make(i);
                                continue;
                            }
                        };
                        let t = Instant::now();
                        let r = worker(&mut rng);
                        let ns = t.elapsed().as_nanos() as u64;
                        let rec = recording.load(Ordering::Relaxed);
                        match r {
                            Ok(()) => {
                                if rec {
                                    h.saturating_record(ns.max(1));
                                    live.ops.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(e) => {
                                if rec {
                                    live.errors.fetch_add(1, Ordering::Relaxed);
                                }
                                note(&e);
                                if matches!(e, OpErr::Io(_)) {
                                    w = make(i);
                                }
                            }
                        }
                    }
                    h
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(warmup);
        live.ops.store(0, Ordering::Relaxed);
        live.errors.store(0, Ordering::Relaxed);
        recording.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let pstop = AtomicBool::new(false);
        std::thread::scope(|ps| {
            let p = progress(ps, label.to_string(), &live, &pstop, duration);
            std::thread::sleep(duration);
            recording.store(false, Ordering::SeqCst);
            secs = t0.elapsed().as_secs_f64();
            pstop.store(true, Ordering::Relaxed);
            let _ = p.join();
        });
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            if let Ok(th) = h.join() {
                let _ = hist.add(th);
            }
        }
    });
    Measured {
        ops: hist.len(),
        errors: live.errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().ok().flatten(),
        secs,
        hist,
    }
}
