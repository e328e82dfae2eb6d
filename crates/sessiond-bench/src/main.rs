//! `sessiond-bench`: sessiond against Redis, memcached, flock and PHP's
//! session handlers, on the work a web request does with its session.
//!
//! ## Layout
//! - `wire`: the blocking RESP2 and memcached clients every benchmark uses.
//! - `driver`: N threads for a fixed time, latency histograms, progress.
//! - `store`: the session workload in each store (cycle, locked cycle,
//!   preload, lost-update counters).
//! - `benches`: PING, session cycle, locked cycle, contended hand-off.
//! - `scale`: memory per session, restart, mass expiry under load.
//! - `php`: a session page on `php -S` with each session handler.
//! - `servers`: starting and always stopping the servers under test.
//! - `report`: the JSON document and its Markdown tables.
//! - `verdict`: the notes and each target's pass/fail, from the report.
//!
//! See docs/benchmarks.md for what is measured and the latest numbers.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod benches;
mod cluster;
mod driver;
mod etcd;
mod php;
mod report;
mod scale;
mod servers;
mod store;
mod verdict;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::benches::{Contender, Target};
use crate::report::Report;
use crate::servers::{Server, SessiondCmd};
use crate::store::{Kind, PHPREDIS5, PHPREDIS6};

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Runs the sessiond server from this binary (used when no `sessiond`
    /// binary is found next to it).
    #[command(hide = true)]
    ServeSessiond(sessiond_server::config::ServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    Ping,
    Cycle,
    Locked,
    Handoff,
    Scale,
    Php,
    /// Three-node cluster against one node, Redis+WAIT and etcd; failover.
    Cluster,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// Benchmarks to run [default: all].
    #[arg(value_enum)]
    benches: Vec<Bench>,
    /// Everything small and short (well under a minute): a smoke test, not
    /// numbers to quote.
    #[arg(long)]
    quick: bool,
    /// Seconds per measured cell [default: 5, quick 0.4].
    #[arg(long)]
    duration: Option<f64>,
    /// Distinct sessions per size for the cycle benchmarks [default: 100000,
    /// quick 1000].
    #[arg(long)]
    sessions: Option<u64>,
    /// Sessions for the scale benchmark [default: 1000000, quick 20000].
    #[arg(long)]
    scale_sessions: Option<u64>,
    /// Skip the mass-expiry part of the scale benchmark.
    #[arg(long)]
    no_expiry: bool,
    /// Connection counts for the cycle benchmarks [default: 1,8,64; quick 1,8].
    #[arg(long, value_delimiter = ',')]
    conns: Vec<usize>,
    /// Session sizes in bytes (10 keys) [default: 1024,16384; quick 1024].
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Client counts for the hand-off benchmark [default: 2,8,64; quick 2,8].
    #[arg(long, value_delimiter = ',')]
    handoff_clients: Vec<usize>,
    /// Only these stores in the cycle benchmarks (sessiond-always,
    /// sessiond-everysec, sessiond-no, redis-always, redis-everysec,
    /// redis-off, memcached) [default: all].
    #[arg(long, value_delimiter = ',')]
    stores: Vec<String>,
    /// The sessiond binary [default: `sessiond` next to this binary, else
    /// this binary's embedded copy of the server].
    #[arg(long)]
    sessiond_bin: Option<PathBuf>,
    #[arg(long, default_value = "redis-server")]
    redis_bin: String,
    #[arg(long, default_value = "memcached")]
    memcached_bin: String,
    /// etcd (3.4, Debian's etcd-server) for the cluster benchmark.
    #[arg(long, default_value = "etcd")]
    etcd_bin: String,
    /// Leader kills in the cluster benchmark's failover part [default: 20,
    /// quick 2].
    #[arg(long)]
    kills: Option<usize>,
    /// How the failover part stops the leader: `kill` (SIGKILL, a crash)
    /// or `term` (SIGTERM, a graceful stop as in a rolling restart).
    #[arg(long, default_value = "kill", value_parser = ["kill", "term"])]
    failover_signal: String,
    /// In the cluster benchmark, only the failover part.
    #[arg(long)]
    failover_only: bool,
    /// Use a running sessiond instead of starting one (cycle, locked, ping,
    /// hand-off; scale and php always start their own).
    #[arg(long)]
    sessiond_addr: Option<SocketAddr>,
    /// Use a running Redis instead of starting them.
    #[arg(long)]
    redis_addr: Option<SocketAddr>,
    /// Use a running memcached instead of starting one.
    #[arg(long)]
    memcached_addr: Option<SocketAddr>,
    /// `PHP_CLI_SERVER_WORKERS` for the PHP benchmark.
    #[arg(long, default_value_t = 4)]
    php_workers: usize,
    /// Concurrent HTTP connections for the PHP benchmark.
    #[arg(long, default_value_t = 8)]
    php_conns: usize,
    /// Distinct sessions for the PHP benchmark [default: 2000, quick 100].
    #[arg(long)]
    php_sessions: Option<usize>,
    /// The PHP client (`clients/php`) [default: found from the current
    /// directory or the source tree].
    #[arg(long)]
    php_client_dir: Option<PathBuf>,
    /// Only these PHP rows, by handler name (e.g. `sessiond session,phpredis
    /// (locking on)`) [default: all].
    #[arg(long, value_delimiter = ',')]
    php_handlers: Vec<String>,
    /// Extra php.ini settings for every PHP row (`key=value`, repeatable),
    /// e.g. `auto_prepend_file=clients/php/tools/excimer-prepend.php` to
    /// profile (see docs/benchmarks.md).
    #[arg(long)]
    php_ini: Vec<String>,
    /// The handler's optional C extension (`clients/php/ext/sessiond`), for
    /// the "(ext + persistent + preload)" and "(native)" rows [default:
    /// target/php-ext/sessiond.so in the repository the PHP client is in,
    /// where `clients/php/ext/build.sh` puts it; the rows are left out when
    /// it is missing].
    #[arg(long)]
    php_ext: Option<PathBuf>,
    /// Measure every PHP row this many times, the rows taking turns (each
    /// row's first round, then each row's second, …), and report each row's
    /// median round (the range goes to the notes). On a shared machine
    /// whose load changes during the run, rows measured minutes apart are
    /// hardly comparable; interleaved rounds see the same load.
    #[arg(long, default_value_t = 1)]
    php_rounds: usize,
    /// Worker threads of the sessiond behind the PHP rows (its
    /// `--threads`; 0: one per CPU core). It shares the machine with nginx,
    /// php-fpm and this load generator, as Redis does with its one thread.
    #[arg(long, default_value_t = 1)]
    php_sessiond_threads: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "sessiond-bench.json")]
    json: PathBuf,
    /// Also write the tables as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::ServeSessiond(args)) = cli.sub {
        return serve_embedded(args);
    }
    servers::install_cleanup();
    let r = run(cli.run);
    servers::cleanup_all();
    r
}

fn serve_embedded(args: sessiond_server::config::ServeArgs) -> Result<()> {
    let config = args.resolve()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        rt.worker_threads(config.threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(sessiond_server::server::serve_until_signal(config))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> report::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        mem_gb: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1048576.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn find_php_client(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p);
    }
    let mut cands = vec![PathBuf::from("clients/php")];
    cands.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/php"));
    cands
        .into_iter()
        .find(|p| p.join("src/autoload.php").is_file())
        .and_then(|p| p.canonicalize().ok())
}

#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    durability: &'static str,
    kind: Kind,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "sessiond-always",
        durability: "always",
        kind: Kind::Sessiond,
    },
    Spec {
        name: "sessiond-everysec",
        durability: "everysec",
        kind: Kind::Sessiond,
    },
    Spec {
        name: "sessiond-no",
        durability: "no",
        kind: Kind::Sessiond,
    },
    Spec {
        name: "redis-always",
        durability: "always",
        kind: Kind::Redis,
    },
    Spec {
        name: "redis-everysec",
        durability: "everysec",
        kind: Kind::Redis,
    },
    Spec {
        name: "redis-off",
        durability: "no",
        kind: Kind::Redis,
    },
    Spec {
        name: "memcached",
        durability: "no",
        kind: Kind::Memcached,
    },
];

struct Ctx {
    a: RunArgs,
    sessiond: SessiondCmd,
    dur: Duration,
    warmup: Duration,
}

impl Ctx {
    /// Starts the store `spec` (or wraps the external one); `None` when an
    /// external address replaces this policy.
    fn start(&self, spec: &Spec) -> Result<Option<Server>> {
        Ok(Some(match spec.kind {
            Kind::Sessiond => match self.a.sessiond_addr {
                Some(a) if spec.durability == "everysec" => Server::external("sessiond", a),
                Some(_) => return Ok(None),
                None => Server::sessiond(&self.sessiond, spec.name, spec.durability)?,
            },
            Kind::Redis => match self.a.redis_addr {
                Some(a) if spec.durability == "no" => Server::external("redis", a),
                Some(_) => return Ok(None),
                None => Server::redis(
                    &self.a.redis_bin,
                    spec.name,
                    match spec.durability {
                        "always" => Some("always"),
                        "everysec" => Some("everysec"),
                        _ => None,
                    },
                )?,
            },
            // Only the cluster benchmark starts these (cluster.rs).
            Kind::RedisWait | Kind::Etcd => return Ok(None),
            Kind::Memcached => match self.a.memcached_addr {
                Some(a) => Server::external("memcached", a),
                None => Server::memcached(&self.a.memcached_bin, spec.name)?,
            },
        }))
    }
}

fn run(mut a: RunArgs) -> Result<()> {
    let q = a.quick;
    if a.benches.is_empty() {
        a.benches = vec![
            Bench::Ping,
            Bench::Cycle,
            Bench::Locked,
            Bench::Handoff,
            Bench::Scale,
            Bench::Php,
            Bench::Cluster,
        ];
    }
    if a.conns.is_empty() {
        a.conns = if q { vec![1, 8] } else { vec![1, 8, 64] };
    }
    if a.sizes.is_empty() {
        a.sizes = if q { vec![1024] } else { vec![1024, 16384] };
    }
    if a.handoff_clients.is_empty() {
        a.handoff_clients = if q { vec![2, 8] } else { vec![2, 8, 64] };
    }
    let dur = Duration::from_secs_f64(a.duration.unwrap_or(if q { 0.4 } else { 5.0 }));
    let warmup = if q {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    };
    let load_start = loadavg();
    let sessiond = SessiondCmd::find(a.sessiond_bin.clone())?;
    let mut rep = Report {
        date_utc: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: q,
        machine: machine(),
        sessiond: sessiond.description.clone(),
        versions: vec![
            sh(&a.redis_bin, &["--version"]),
            sh(&a.memcached_bin, &["-V"]),
            sh("php", &["-v"]),
            format!(
                "phpredis {}",
                sh("php", &["-r", "echo phpversion('redis');"])
            ),
        ],
        ..Default::default()
    };
    eprintln!(
        "sessiond-bench: {}; sessiond = {}",
        rep.machine.cpu, rep.sessiond
    );
    let ctx = Ctx {
        a,
        sessiond,
        dur,
        warmup,
    };
    let a = &ctx.a;
    let has = |b: Bench| a.benches.contains(&b);
    let n = a.sessions.unwrap_or(if q { 1000 } else { 100_000 });

    if has(Bench::Ping) {
        eprintln!("== loopback round trip (PING)");
        for spec in [&SPECS[1], &SPECS[5]] {
            if let Some(s) = ctx.start(spec)? {
                let d = if q {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(2)
                };
                rep.ping.push(benches::ping(&s.name, s.addr, d)?);
                rep.ping.push(benches::ping_after_idle(&s.name, s.addr, d)?);
            }
        }
    }

    if has(Bench::Cycle) || has(Bench::Locked) {
        eprintln!(
            "== session cycle / locked cycle: {n} sessions per size, sizes {:?}, conns {:?}, {:.1} s per cell",
            a.sizes,
            a.conns,
            dur.as_secs_f64()
        );
        for spec in SPECS {
            if !a.stores.is_empty() && !a.stores.iter().any(|s| s == spec.name) {
                continue;
            }
            // sessiond with `always` is loaded with `no`, then restarted
            // with `always` on the same data: loading 100k sessions one
            // fsync group at a time takes minutes and measures nothing.
            let fast_load = spec.kind == Kind::Sessiond
                && spec.durability == "always"
                && a.sessiond_addr.is_none();
            let load_spec = Spec {
                durability: if fast_load { "no" } else { spec.durability },
                ..*spec
            };
            let Some(mut server) = ctx.start(&load_spec)? else {
                continue;
            };
            let shapes: Vec<_> = a.sizes.iter().map(|&s| store::shape(s)).collect();
            for shp in &shapes {
                let t0 = std::time::Instant::now();
                store::preload(spec.kind, server.addr, shp, 0..n, store::TTL_SECS, 4)
                    .with_context(|| format!("preloading {}", spec.name))?;
                eprintln!(
                    "  {}: loaded {n} sessions of {} in {:.1} s",
                    spec.name,
                    shp.label(),
                    t0.elapsed().as_secs_f64()
                );
            }
            if fast_load {
                server.restart_with_durability(spec.durability)?;
            }
            let t = Target {
                name: if server.started_here() {
                    spec.name
                } else {
                    &server.name
                },
                durability: if server.started_here() {
                    spec.durability
                } else {
                    "external"
                },
                kind: spec.kind,
                addr: server.addr,
            };
            if has(Bench::Cycle) {
                for shp in &shapes {
                    for &c in &a.conns {
                        rep.cycle
                            .push(benches::cycle(&t, shp, n, c, ctx.warmup, ctx.dur));
                    }
                }
            }
            if has(Bench::Locked) && spec.kind != Kind::Memcached {
                for shp in &shapes {
                    rep.locked.extend(benches::locked(
                        &t, shp, n, &a.conns, PHPREDIS6, ctx.warmup, ctx.dur,
                    )?);
                }
            }
        }
    }

    if has(Bench::Handoff) {
        eprintln!(
            "== contended hand-off: clients {:?}, {:.1} s each",
            a.handoff_clients,
            dur.as_secs_f64()
        );
        let sd = ctx.start(&SPECS[1])?;
        let rd = ctx.start(&SPECS[5])?;
        let dir = servers::TempDir::new("flock")?;
        let lockfile = dir.path().join("sess_handoff");
        let mut contenders: Vec<(&str, Contender)> = Vec::new();
        if let Some(s) = &sd {
            contenders.push(("sessiond", Contender::Sessiond(s.addr)));
        }
        if let Some(r) = &rd {
            contenders.push(("phpredis-6 recipe", Contender::Redis(r.addr, PHPREDIS6)));
            contenders.push(("phpredis-5.3.7 recipe", Contender::Redis(r.addr, PHPREDIS5)));
        }
        contenders.push(("flock", Contender::Flock(&lockfile)));
        for (name, c) in &contenders {
            for &k in &a.handoff_clients {
                rep.handoff.push(benches::handoff(name, c, k, dur)?);
            }
        }
    }

    if has(Bench::Scale) {
        let sn = a
            .scale_sessions
            .unwrap_or(if q { 20_000 } else { 1_000_000 });
        eprintln!("== scale: {sn} sessions");
        rep.scale = Some(scale::run(&scale::Opts {
            sessions: sn,
            live_sessions: if q { 1000 } else { 10_000 },
            load_conns: 8,
            sessiond: &ctx.sessiond,
            redis_bin: &a.redis_bin,
            expiry: !a.no_expiry,
            quick: q,
        })?);
    }

    if has(Bench::Php) {
        eprintln!("== through PHP");
        match find_php_client(a.php_client_dir.clone()) {
            None => rep
                .notes
                .push("PHP benchmark skipped: clients/php not found (use --php-client-dir)".into()),
            Some(client_dir) => {
                let sd = Server::sessiond_with(
                    &ctx.sessiond,
                    "sessiond-everysec",
                    "everysec",
                    &["--threads".into(), a.php_sessiond_threads.to_string()],
                )?;
                rep.notes.push(format!(
                    "PHP rows: sessiond runs with `--threads {}` (0: one per core; `--php-sessiond-threads`), Redis with its one thread.",
                    a.php_sessiond_threads
                ));
                let rd = Server::redis(&a.redis_bin, "redis-everysec", Some("everysec"))?;
                let mut handlers = vec![
                    php::Handler {
                        name: "files".into(),
                        server: String::new(),
                        ini: vec![
                            "session.save_handler=files".into(),
                            "session.save_path={SESSDIR}".into(),
                        ],
                        env: vec![],
                    },
                    php::Handler {
                        name: report::PHPREDIS_LOCKING.into(),
                        server: rd.name.clone(),
                        ini: vec![
                            "session.save_handler=redis".into(),
                            format!("session.save_path=tcp://{}", rd.addr),
                            "redis.session.locking_enabled=1".into(),
                        ],
                        env: vec![],
                    },
                    php::Handler {
                        name: report::PHPREDIS_NO_LOCKING.into(),
                        server: rd.name.clone(),
                        ini: vec![
                            "session.save_handler=redis".into(),
                            format!("session.save_path=tcp://{}", rd.addr),
                            "redis.session.locking_enabled=0".into(),
                        ],
                        env: vec![],
                    },
                ];
                // sessiond in each mode; then the same with a persistent
                // socket per worker and the classes preloaded into opcache;
                // then that with the handler's C extension loaded (the same
                // PHP code, its hot parts done in C); then the extension's
                // native save handler (no PHP class at all).
                let preload = client_dir.join("preload.php");
                let ext = a
                    .php_ext
                    .clone()
                    .unwrap_or_else(|| client_dir.join("../../target/php-ext/sessiond.so"));
                let mut tunings = vec![(false, false), (true, false)];
                if ext.is_file() {
                    tunings.push((true, true));
                } else {
                    rep.notes.push(format!(
                        "PHP benchmark: no sessiond extension at {} (clients/php/ext/build.sh builds it); its rows are left out",
                        ext.display()
                    ));
                }
                let native = tunings.contains(&(true, true)) && php::has_native_handler(&ext);
                if tunings.contains(&(true, true)) && !native {
                    rep.notes.push(format!(
                        "PHP benchmark: {} has no native save handler (sessiond_native_info() missing); the \"(native)\" rows are left out",
                        ext.display()
                    ));
                }
                for (tuned, with_ext) in tunings {
                    for mode in ["session", "readonly", "none"] {
                        let mut uri = format!("tcp://{}?lock_mode={mode}", sd.addr);
                        let mut ini = vec![];
                        if tuned {
                            uri.push_str("&persistent=1");
                            ini.push(format!("opcache.preload={}", preload.display()));
                            // SAFETY: getuid has no preconditions.
                            if unsafe { libc::getuid() } == 0 {
                                ini.push("opcache.preload_user=root".into());
                            }
                        }
                        if with_ext {
                            let abs = ext.canonicalize().unwrap_or_else(|_| ext.clone());
                            ini.push(format!("extension={}", abs.display()));
                        }
                        handlers.push(php::Handler {
                            name: match (tuned, with_ext) {
                                (true, true) => {
                                    format!("sessiond {mode} (ext + persistent + preload)")
                                }
                                (true, false) => format!("sessiond {mode} (persistent + preload)"),
                                _ => format!("sessiond {mode}"),
                            },
                            server: sd.name.clone(),
                            ini,
                            env: vec![("BENCH_SESSIOND_URI".into(), uri)],
                        });
                    }
                }
                if native {
                    let abs = ext.canonicalize().unwrap_or_else(|_| ext.clone());
                    for mode in ["session", "readonly", "none"] {
                        handlers.push(php::Handler {
                            name: format!("sessiond {mode} (native)"),
                            server: sd.name.clone(),
                            ini: vec![
                                format!("extension={}", abs.display()),
                                "session.save_handler=sessiond".into(),
                                // quoted: the ini parser cuts an unquoted value at its '='
                                format!(
                                    "session.save_path=\"tcp://{}?lock_mode={mode}&persistent=1\"",
                                    sd.addr
                                ),
                            ],
                            env: vec![("BENCH_HANDLER".into(), "native".into())],
                        });
                    }
                }
                if !a.php_handlers.is_empty() {
                    handlers.retain(|h| a.php_handlers.contains(&h.name));
                }
                for h in &mut handlers {
                    h.ini.extend(a.php_ini.iter().cloned());
                }
                let mut fronts = vec![php::Front::BuiltIn];
                if php::fpm_programs().is_some() {
                    fronts.push(php::Front::Fpm);
                } else {
                    rep.notes
                        .push("PHP benchmark: php-fpm or nginx not installed; php -S only".into());
                }
                for front in fronts {
                    let o = php::Opts {
                        workers: a.php_workers,
                        conns: a.php_conns,
                        sessions: a.php_sessions.unwrap_or(if q { 100 } else { 2000 }),
                        dur: if q {
                            Duration::from_millis(500)
                        } else {
                            dur * 2
                        },
                        php_client_dir: &client_dir,
                        front,
                    };
                    let mut rounds: Vec<Vec<report::PhpRow>> = vec![Vec::new(); handlers.len()];
                    for _ in 0..a.php_rounds.max(1) {
                        for (i, h) in handlers.iter().enumerate() {
                            rounds[i].push(php::run(h, &o)?);
                        }
                    }
                    for mut rs in rounds {
                        rs.sort_by(|x, y| x.rps.total_cmp(&y.rps));
                        let median = rs.remove(rs.len() / 2);
                        if a.php_rounds > 1 {
                            let lo = rs.first().map_or(median.rps, |r| r.rps.min(median.rps));
                            let hi = rs.last().map_or(median.rps, |r| r.rps.max(median.rps));
                            rep.notes.push(format!(
                                "PHP {} / {}: {} rounds, {lo:.0}–{hi:.0} req/s (the median round, {:.0}, is in the table)",
                                median.front, median.handler, a.php_rounds, median.rps
                            ));
                        }
                        rep.php.push(median);
                    }
                }
            }
        }
    }

    if has(Bench::Cluster) {
        let o = cluster::Opts {
            sessions: if q { 200 } else { 10_000 },
            size: 1024,
            conns: if q { vec![1, 8] } else { vec![1, 8, 64] },
            warmup,
            dur,
            kills: a.kills.unwrap_or(if q { 2 } else { 20 }),
            graceful: a.failover_signal == "term",
            failover_only: a.failover_only,
            redis_bin: &a.redis_bin,
            etcd_bin: &a.etcd_bin,
        };
        eprintln!(
            "== cluster: {} sessions of 1 KB, conns {:?}, {:.1} s per cell",
            o.sessions,
            o.conns,
            dur.as_secs_f64()
        );
        let r = cluster::run(&ctx.sessiond, &o)?;
        rep.cluster_cycle = r.cycle;
        rep.cluster_locked = r.locked;
        rep.failover = r.failover;
        rep.versions.push(sh(&a.etcd_bin, &["--version"]));
    }

    rep.notes.push(format!(
        "Load average (1, 5, 15 min) at the start: {load_start}; at the end: {}. The machine is shared: other builds and tests may run during a measurement.",
        loadavg()
    ));
    rep.targets = verdict::targets(&rep);
    verdict::notes(&mut rep);
    let json = serde_json::to_string_pretty(&rep)?;
    std::fs::write(&a.json, json).with_context(|| format!("write {}", a.json.display()))?;
    let md = rep.markdown();
    println!("{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md)?;
    }
    eprintln!("results: {}", a.json.display());
    let errors: u64 = rep.cycle.iter().chain(&rep.locked).map(|r| r.errors).sum();
    if errors > 0 {
        eprintln!("note: {errors} operations failed (see first_error in the JSON)");
    }
    if rep.cycle.is_empty()
        && rep.locked.is_empty()
        && rep.handoff.is_empty()
        && rep.scale.is_none()
        && rep.php.is_empty()
        && rep.ping.is_empty()
        && rep.cluster_cycle.is_empty()
    {
        bail!("nothing was measured");
    }
    Ok(())
}
