//! racelab: PHP session races, measured on every handler in one run.
//!
//! ```text
//! racelab [--iterations N] [--handlers a,b] [--scenarios x,y] [--url URL] [--check]
//! ```
//!
//! Layout:
//! - `supervisor`: starts sessiond, redis-server, memcached, php-fpm + nginx
//!   (or `php -S`) in a temp dir on free ports, and stops them.
//! - `http`: the minimal HTTP/1.1 client.
//! - `scenario`: the seeds' scenarios: the requests' plan and the evaluation
//!   of what the session kept.
//! - `run`: the driver: one scenario on one handler, timed.
//! - `handlers`: the handler list and sessiond's claims (for `--check`).
//! - `cluster`: the cluster run: three sessiond nodes, one killed and
//!   restarted every few seconds while the `cluster-…` rows run.
//! - `report` / `svg`: verdicts, tables, JSON, timelines.

mod cluster;
mod handlers;
mod http;
mod record;
mod report;
mod run;
mod scenario;
mod supervisor;
mod svg;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::http::BaseUrl;
use crate::report::CellBuilder;
use crate::scenario::{Rng, Scenario};
use crate::supervisor::Supervisor;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs the seeds' session races against every PHP session handler and reports what each kept"
)]
struct Cli {
    /// Runs of each scenario per handler (each on a fresh session).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// Handlers to run, comma-separated (default: every one the app can run).
    #[arg(long, value_delimiter = ',')]
    handlers: Vec<String>,
    /// Scenarios to run, comma-separated: counter, parallel, search, payment, oauth, readonly.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Drive an app that is already running (e.g. http://127.0.0.1:8080/) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Directory for racelab.json, table.md and the SVG timelines.
    #[arg(long, default_value = "racelab-out")]
    out: PathBuf,
    /// Exit with status 1 if a sessiond row contradicts sessiond's claims or a sessiond request failed.
    #[arg(long)]
    check: bool,
    /// The sessiond binary (default: next to this binary, then target/release, target/debug).
    #[arg(long)]
    sessiond: Option<PathBuf>,
    /// The PHP app (default: examples/php-demo of this repository).
    #[arg(long)]
    app: Option<PathBuf>,
    /// Serve the app with `php -S` even if nginx and php-fpm are installed.
    #[arg(long)]
    builtin_server: bool,
    /// Keep the temp dir with configs and logs of the started processes.
    #[arg(long)]
    keep: bool,
    /// Skip the cluster rows (the sessiond handlers against a three-node
    /// cluster whose nodes are killed and restarted while they run).
    #[arg(long)]
    no_cluster: bool,
    /// In the cluster run: milliseconds of cluster rows between node kills.
    #[arg(long, default_value_t = 2500)]
    cluster_kill_every: u64,
    /// Seed of the request timings.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// This repository (racelab runs from its build tree). Canonical: php-fpm
/// refuses script paths with `..` in them ("Primary script unknown").
fn repo_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn default_sessiond() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("sessiond"));
    }
    candidates.push(repo_root().join("target/release/sessiond"));
    candidates.push(repo_root().join("target/debug/sessiond"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
}

impl Progress {
    fn show(&self, msg: &str) {
        let mut e = std::io::stderr();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{msg}");
        } else {
            let _ = writeln!(e, "{msg}");
        }
        let _ = e.flush();
    }
    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut sup = None;
    let mut cluster_sup = None;
    let outcome = tokio::select! {
        r = lab(&cli, &mut sup, &mut cluster_sup) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    for s in [sup.as_mut(), cluster_sup.as_mut()].into_iter().flatten() {
        eprintln!("racelab: stopping what it started");
        s.stop().await;
    }
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("racelab: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The cluster run while it goes: the app in front of the cluster, and
/// the fault loop (which owns the nodes).
struct ClusterRun {
    base: BaseUrl,
    started: supervisor::Started,
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    faults: tokio::task::JoinHandle<(cluster::Nodes, cluster::FaultLog)>,
}

async fn start_cluster_run(
    cli: &Cli,
    opts: &supervisor::Options,
    slot: &mut Option<Supervisor>,
) -> Result<ClusterRun> {
    let sup = slot.insert(Supervisor::new(cli.keep)?);
    let nodes = cluster::Nodes::start(&opts.sessiond, sup.dir()).await?;
    let started = sup
        .start_app_for(opts, &nodes.url(), nodes.describe())
        .await?;
    let active = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let faults = tokio::spawn(nodes.fault_loop(
        std::time::Duration::from_millis(cli.cluster_kill_every.max(500)),
        active.clone(),
        stop.clone(),
    ));
    Ok(ClusterRun {
        base: BaseUrl::parse(&started.base_url)?,
        started,
        active,
        stop,
        faults,
    })
}

async fn lab(
    cli: &Cli,
    sup_slot: &mut Option<Supervisor>,
    cluster_slot: &mut Option<Supervisor>,
) -> Result<ExitCode> {
    let scenarios: Vec<Scenario> = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios
            .iter()
            .map(|s| Scenario::parse(s).with_context(|| format!("unknown scenario {s:?}")))
            .collect::<Result<_>>()?
    };
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
    };

    let mut cluster_run = None;
    let (base, started) = match &cli.url {
        Some(url) => (BaseUrl::parse(url)?, None),
        None => {
            progress.show("racelab: starting sessiond, peers and the PHP app…");
            let app = cli
                .app
                .clone()
                .unwrap_or_else(|| repo_root().join("examples/php-demo"));
            let app = std::fs::canonicalize(&app)
                .with_context(|| format!("app directory {}", app.display()))?;
            let opts = supervisor::Options {
                sessiond: cli.sessiond.clone().unwrap_or_else(default_sessiond),
                php_client_src: repo_root().join("clients/php/src"),
                app_dir: app,
                builtin_server: cli.builtin_server,
            };
            let sup = sup_slot.insert(Supervisor::new(cli.keep)?);
            let started = sup.start(&opts).await?;
            if !cli.no_cluster {
                progress.show("racelab: starting a three-node sessiond cluster and its PHP app…");
                cluster_run = Some(start_cluster_run(cli, &opts, cluster_slot).await?);
            }
            (BaseUrl::parse(&started.base_url)?, Some(started))
        }
    };

    let info = run::info(&base).await?;
    let available: Vec<String> = info["handlers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let wanted: Vec<String> = if cli.handlers.is_empty() {
        handlers::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        cli.handlers.clone()
    };
    let mut hs = Vec::new();
    for h in &wanted {
        if available.contains(h) {
            hs.push(h.clone());
        } else {
            let why = info["missing"][h.as_str()]
                .as_str()
                .unwrap_or("unknown to the app");
            eprintln!("racelab: skipping handler {h}: {why}");
        }
    }
    if hs.is_empty() {
        bail!("no handler to run");
    }

    let server_desc = match &started {
        Some(s) => s.php_server.clone(),
        None => format!("{} at {base}", info["server"].as_str().unwrap_or("app")),
    };
    eprintln!(
        "racelab: PHP {} ({}) served by {server_desc}",
        info["php"].as_str().unwrap_or("?"),
        info["sapi"].as_str().unwrap_or("?")
    );
    if let Some(s) = &started {
        eprintln!("racelab: peers: {}", s.peers.join(", "));
        if !s.missing.is_empty() {
            eprintln!("racelab: not installed: {}", s.missing.join(", "));
        }
    }

    let cluster_hs: Vec<String> = match &cluster_run {
        Some(run) => {
            eprintln!(
                "racelab: cluster rows against {} (PHP served by {}), a node killed every {} ms",
                run.started.peers.join(", "),
                run.started.php_server,
                cli.cluster_kill_every
            );
            hs.iter()
                .filter(|h| handlers::CLUSTER.contains(&h.as_str()))
                .cloned()
                .collect()
        }
        None => Vec::new(),
    };
    let total = scenarios.len() * (hs.len() + cluster_hs.len()) * cli.iterations as usize;
    let mut done = 0;
    let mut cells = Vec::new();
    let mut rng = Rng::new(cli.seed);
    let t_all = std::time::Instant::now();
    for &sc in &scenarios {
        // One plan per iteration, shared by every handler: each handler
        // meets exactly the same requests at the same times.
        let plans: Vec<_> = (0..cli.iterations).map(|_| sc.plan(&mut rng)).collect();
        for h in &hs {
            let mut b = CellBuilder::new(h, sc);
            for (i, plan) in plans.iter().enumerate() {
                done += 1;
                progress.show(&format!(
                    "racelab: [{done}/{total}] {} on {h}, iteration {}/{} ({:.0} s)",
                    sc.name(),
                    i + 1,
                    cli.iterations,
                    t_all.elapsed().as_secs_f64()
                ));
                b.add(run::run_once(&base, h, sc, plan).await);
            }
            cells.push(b.finish());
        }
        if let Some(run) = &cluster_run {
            // Nodes die only while the cluster rows run.
            run.active.store(true, Ordering::Relaxed);
            for h in &cluster_hs {
                let name = format!("cluster-{h}");
                let mut b = CellBuilder::new(&name, sc);
                for (i, plan) in plans.iter().enumerate() {
                    done += 1;
                    progress.show(&format!(
                        "racelab: [{done}/{total}] {} on {name}, iteration {}/{} ({:.0} s)",
                        sc.name(),
                        i + 1,
                        cli.iterations,
                        t_all.elapsed().as_secs_f64()
                    ));
                    b.add(run::run_once(&run.base, h, sc, plan).await);
                }
                cells.push(b.finish());
            }
            run.active.store(false, Ordering::Relaxed);
        }
    }
    progress.done();
    let cluster_json = match cluster_run {
        Some(run) => {
            run.stop.store(true, Ordering::Relaxed);
            let (mut nodes, faults) = run.faults.await.context("the fault loop panicked")?;
            nodes.stop().await;
            let mut ms = faults.failover_ms.clone();
            ms.sort_by(f64::total_cmp);
            let pct = |p: usize| ms.get((ms.len() * p / 100).min(ms.len().saturating_sub(1)));
            eprintln!(
                "racelab: cluster run: {} kill(s); kill to first acknowledged write p50 {} ms, max {} ms",
                faults.kills.len(),
                pct(50).map_or("-".into(), |v| format!("{v:.0}")),
                ms.last().map_or("-".into(), |v| format!("{v:.0}")),
            );
            serde_json::json!({"nodes": run.started.peers, "php_server": run.started.php_server, "faults": faults})
        }
        None => serde_json::Value::Null,
    };

    println!(
        "racelab: {} iteration(s), PHP served by {server_desc}; lost/kept/dup/relogin summed over iterations, times in ms",
        cli.iterations
    );
    print!("{}", report::terminal_table(&cells, &scenarios));

    std::fs::create_dir_all(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    let json = serde_json::json!({
        "iterations": cli.iterations,
        "seed": cli.seed,
        "php": info,
        "php_server": server_desc,
        "started": started,
        "cluster": cluster_json,
        "scenarios": scenarios.iter().map(|s| serde_json::json!({"name": s.name(), "description": s.describe()})).collect::<Vec<_>>(),
        "cells": cells,
    });
    std::fs::write(cli.out.join("racelab.json"), serde_json::to_vec(&json)?)?;
    std::fs::write(
        cli.out.join("table.md"),
        report::markdown_table(&cells, &scenarios),
    )?;
    for &sc in &scenarios {
        let these: Vec<_> = cells.iter().filter(|c| c.scenario == sc).collect();
        std::fs::write(
            cli.out.join(format!("{}.svg", sc.name())),
            svg::timeline(sc, &these),
        )?;
    }
    eprintln!(
        "racelab: wrote {0}/racelab.json, {0}/table.md and one SVG timeline per scenario in {0}/ ({1:.0} s)",
        cli.out.display(),
        t_all.elapsed().as_secs_f64()
    );

    if cli.check {
        let failures = report::claim_failures(&cells);
        if !failures.is_empty() {
            eprintln!("racelab --check: sessiond contradicts its claims:");
            for f in &failures {
                eprintln!("  {f}");
            }
            return Ok(ExitCode::from(1));
        }
        eprintln!("racelab --check: every sessiond row holds its claims");
    }
    Ok(ExitCode::SUCCESS)
}
