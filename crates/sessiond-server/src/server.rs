//! The server: load state, listen, run connections and background work,
//! shut down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sessiond_core::{Clock, Engine, LockTable, Store, SystemClock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Durability, StorageKind};
use crate::persist::Persistence;
use crate::state::Shared;
use crate::storage::{AbsorbPolicy, LoggedStorage, MemoryStorage, Storage};

/// Sessions removed per turn of the expiry loop: the state lock is released
/// between turns, so a mass expiry never stalls requests for long.
const PURGE_BATCH: usize = 1_000;

/// A bound server, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    // The plaintext port; none with `--plaintext no`.
    listener: Option<TcpListener>,
    // The TLS port and its rustls configuration.
    tls: Option<(TcpListener, Arc<crate::tls::Tls>)>,
    metrics: Option<TcpListener>,
    // Stops the cluster node's background work (peer listener, Raft's
    // helpers) when the server stops.
    cluster_shutdown: CancellationToken,
}

impl Server {
    /// Opens storage, loads every session, and binds the listeners.
    ///
    /// # Errors
    /// Storage that cannot be opened or read; addresses that cannot be bound.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        // A cluster node keeps its data in the Raft log and snapshots
        // (`Cluster::start`), not in the single-server store.
        let storage: Box<dyn Storage> = match config.storage {
            _ if import_single_server_data(&config)? => open_single_server_storage(&config)?,
            _ if config.cluster.is_some() => Box::new(MemoryStorage::default()),
            StorageKind::Redb => {
                std::fs::create_dir_all(&config.data_dir).with_context(|| {
                    format!("creating data directory {}", config.data_dir.display())
                })?;
                open_single_server_storage(&config)?
            }
            StorageKind::Memory => Box::new(MemoryStorage::default()),
        };
        Self::bind_with(config, storage, Arc::new(SystemClock::new())).await
    }

    /// Like [`Server::bind`] with a given storage and clock (tests).
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub async fn bind_with(
        mut config: Config,
        mut storage: Box<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Server> {
        let started = std::time::Instant::now();
        config.users =
            crate::users::Users::new(config.requirepass.as_deref(), &config.user_entries)
                .map_err(|e| anyhow::anyhow!(e))?;
        let loaded = storage.load().context("loading sessions")?;
        // A new epoch per start, on disk before the first grant: fencing
        // tokens never go backwards across restarts.
        let epoch = loaded.fence_epoch + 1;
        storage
            .set_fence_epoch(epoch)
            .context("recording the fencing epoch")?;
        let mut store = Store::new(config.store_config());
        let count = loaded.sessions.len();
        store.restore_sessions(loaded.sessions);
        for (old, alias) in loaded.aliases {
            store.restore_alias(old, alias);
        }
        store.raise_version_floor(loaded.version_floor);
        let engine = Engine::new(store, LockTable::new(epoch, config.lock_max_hold_ms()));
        tracing::info!(
            sessions = count,
            took_ms = started.elapsed().as_millis() as u64,
            "loaded"
        );
        let listener = if config.plaintext {
            Some(
                TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?,
            )
        } else {
            None
        };
        let tls = match &config.tls {
            Some(settings) => {
                let tls = crate::tls::Tls::new(settings.clone()).context("TLS")?;
                let addr = SocketAddr::new(config.listen.ip(), settings.port);
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding TLS {addr}"))?;
                Some((l, Arc::new(tls)))
            }
            None => None,
        };
        for name in config.users.plaintext_passwords() {
            tracing::warn!(
                user = %name,
                "password given in clear in the settings: write it as \"#<sha256 hex>\" (sessiond hash-password)"
            );
        }
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics {addr}"))?,
            ),
            None => None,
        };
        let node_id = config.cluster.as_ref().map_or(0, |c| c.node_id);
        // Which run of this node this is: connection ids carry it, so the
        // close of a previous run's connections spares this run's.
        let incarnation = match &config.cluster {
            Some(_) => next_incarnation(&config.data_dir)?,
            None => 0,
        };
        let persist = match config.cluster {
            Some(_) => None,
            None => Some(Persistence::start_with_options(
                storage,
                config.durability,
                crate::persist::WriterOptions {
                    max_pending_bytes: config.max_pending_bytes(),
                    ..crate::persist::WriterOptions::for_policy(config.durability)
                },
            )),
        };
        let shared = Arc::new(Shared::new(
            config,
            clock,
            engine,
            persist,
            node_id,
            incarnation,
        ));
        let cluster_shutdown = CancellationToken::new();
        let import = import_single_server_data(&shared.config)?;
        if let Some(cluster_config) = shared.config.cluster.clone() {
            let cluster = crate::cluster::Cluster::start(
                cluster_config,
                shared.clone(),
                &shared.config.data_dir,
                cluster_shutdown.clone(),
            )
            .await
            .context("starting the cluster node")?;
            if import {
                cluster
                    .seal_import()
                    .await
                    .context("making the single server's sessions the cluster's")?;
                let from = shared.config.data_dir.join("sessions.redb");
                let to = shared.config.data_dir.join("sessions.redb.imported");
                std::fs::rename(&from, &to)
                    .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
                // Its change log was absorbed when it was opened (empty now).
                let log = LoggedStorage::log_path(&from);
                if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(&log);
                }
                tracing::info!(
                    sessions = shared.read(|engine, _| engine.store().len()),
                    "a single server's sessions are now this cluster's (sessions.redb renamed sessions.redb.imported)"
                );
            }
            shared.set_replication(cluster);
        }
        Ok(Server {
            shared,
            listener,
            tls,
            metrics,
            cluster_shutdown,
        })
    }

    /// The plaintext RESP address actually bound (useful with port 0).
    ///
    /// # Errors
    /// `NotFound` with `--plaintext no`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no plaintext listener (--plaintext no)",
            )),
        }
    }

    /// The TLS address actually bound, if there is a TLS listener.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The TLS configuration (to reload its certificates).
    pub fn tls(&self) -> Option<Arc<crate::tls::Tls>> {
        self.tls.as_ref().map(|(_, t)| t.clone())
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (tests and benchmarks look inside).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets
    /// in-flight commands finish (up to the shutdown timeout), and flushes
    /// storage.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_reporting(shutdown).await;
    }

    /// [`Server::run`], returning what the final flush could and could not
    /// write to storage.
    pub async fn run_reporting(self, shutdown: CancellationToken) -> crate::persist::FlushReport {
        let Server {
            shared,
            listener,
            tls,
            metrics,
            cluster_shutdown,
        } = self;
        let tracker = TaskTracker::new();
        {
            let (shutdown, cluster_shutdown) = (shutdown.clone(), cluster_shutdown.clone());
            let replication = shared.replication().cloned();
            // Tracked: the stop waits for the hand-over (bounded).
            tracker.spawn(async move {
                shutdown.cancelled().await;
                // A leader hands over before its peer traffic stops.
                if let Some(replication) = replication {
                    replication.hand_off().await;
                }
                cluster_shutdown.cancel();
            });
        }
        if shared.replication().is_some() {
            // Connections of this node's previous run are gone: their locks
            // go to the next waiters.
            tracker.spawn(close_previous_connections(shared.clone(), shutdown.clone()));
        }
        if let Some(m) = metrics {
            tracker.spawn(crate::http::serve(m, shared.clone(), shutdown.clone()));
        }
        tracker.spawn(timekeeper(shared.clone(), shutdown.clone()));
        if shared.undoes_failed_writes() {
            tracker.spawn(undo_failed_batches(shared.clone(), shutdown.clone()));
        }
        // Open client connections, against a limit SIGHUP may change (a
        // lower one closes none: new ones wait until enough have left).
        let open = Arc::new(AtomicUsize::new(0));
        let (tls_listener, tls) = match tls {
            Some((l, t)) => (Some(l), Some(t)),
            None => (None, None),
        };
        loop {
            let (accepted, over_tls) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = accept(listener.as_ref()) => (r, false),
                r = accept(tls_listener.as_ref()) => (r, true),
            };
            let (stream, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            shared.metrics.connections_total.inc();
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(shared.config.tcp_keepalive)
                .with_interval(Duration::from_secs(5))
                .with_retries(3);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let Some(slot) = ConnSlot::take(&open, shared.max_connections()) else {
                shared.metrics.rejected_connections.inc();
                tracker.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"-LIMIT max number of clients reached\r\n")
                        .await;
                });
                continue;
            };
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            match (over_tls, &tls) {
                (true, Some(tls)) => {
                    let tls = tls.clone();
                    tracker.spawn(async move {
                        // The handshake runs in the connection's task, so a
                        // slow client holds up no other.
                        if let Some(stream) =
                            tls.accept(stream, addr, &shared.metrics, &shutdown).await
                        {
                            crate::connection::run(stream, addr, shared, shutdown).await;
                        }
                        drop(slot);
                    });
                }
                _ => {
                    tracker.spawn(async move {
                        crate::connection::run(stream, addr, shared, shutdown).await;
                        drop(slot);
                    });
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(shared.config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within the shutdown timeout");
        }
        if shared.replication().is_none() {
            shared.run(|e, now| e.record_accesses(now));
        }
        let report = shared.shutdown_persistence();
        if report.flushed() && report.undone_batches == 0 {
            tracing::info!("stopped; {report}");
        } else if report.flushed() {
            tracing::warn!("stopped; {report}");
        } else {
            tracing::error!("stopped; {report}");
        }
        report
    }
}

/// The next connection of `listener`; never, without one.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One open client connection, counted until dropped.
struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    /// A slot, if fewer than `max` are taken.
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<ConnSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnSlot(open.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Removes expired sessions, takes away locks whose lease or maximum hold
/// ran out, and about once a second sends the last-access times that reads
/// moved to the storage. Sleeps until the earliest deadline (at most a
/// second), or until woken because an earlier one appeared.
/// Under `always`: as soon as the writer reports a failed sync, undoes the
/// changes it dropped (see the `persist` module), whether or not a client
/// is waiting for one of them.
async fn undo_failed_batches(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(mut progress) = shared.watch_persistence() else {
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let epoch = progress.borrow_and_update().undo_epoch;
        if epoch > seen {
            seen = epoch;
            shared.undo_unconfirmed();
        }
    }
}

async fn timekeeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    if shared.replication().is_some() {
        return cluster_timekeeper(shared, shutdown).await;
    }
    let mut accesses_recorded = Instant::now();
    loop {
        let next = shared.read(|e, _| e.next_deadline());
        let now = shared.clock.now();
        let sleep = next.map_or(1_000, |d| d.saturating_sub(now)).min(1_000);
        shared.set_timer_at(Some(now.saturating_add(sleep)));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.timer.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
        }
        loop {
            let (removed, seq) = shared.run(|e, now| e.tick(now, PURGE_BATCH));
            if removed < PURGE_BATCH {
                break;
            }
            // Removes go no faster than the writer deletes them from
            // storage, so a mass expiry never queues a backlog that would
            // hold clients' writes back. Expired sessions are unreachable
            // from their deadline on; only their memory waits.
            if shared.applied(seq).await.is_err() {
                tokio::task::yield_now().await;
            }
        }
        if accesses_recorded.elapsed() >= Duration::from_secs(1) {
            shared.run(|e, now| e.record_accesses(now));
            accesses_recorded = Instant::now();
        }
    }
}

/// In a cluster the leader proposes the ticks (with its time, like every
/// proposal), and every half second the slides of the reads it served
/// without a log entry; every node applies them. Followers only watch for becoming
/// leader. Lease and expiry deadlines are also checked by every command at
/// the time stamped on it, so a tick only makes them happen without one.
async fn cluster_timekeeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(replication) = shared.replication().cloned() else {
        return;
    };
    let mut reads_flushed = Instant::now();
    loop {
        let next = shared.read(|e, _| e.next_deadline());
        let now = shared.clock.now();
        let sleep = next.map_or(200, |d| d.saturating_sub(now)).clamp(5, 200);
        shared.set_timer_at(Some(now.saturating_add(sleep)));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.timer.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
        }
        let due = shared
            .read(|e, _| e.next_deadline())
            .is_some_and(|d| d <= shared.clock.now());
        // The slides of reads served without a log entry go in first, so
        // that no tick expires a session read since.
        if due || reads_flushed.elapsed() >= Duration::from_millis(500) {
            replication.flush_reads().await;
            reads_flushed = Instant::now();
        }
        if due && replication.is_leader() {
            let _ = replication
                .propose(sessiond_core::engine::Input::Tick {
                    max_purge: PURGE_BATCH,
                })
                .await;
        }
    }
}

/// Reads, increments and durably records the node's incarnation (kept in
/// `data_dir/node-incarnation`), modulo 2^16.
/// Whether a cluster node starts on a single server's data directory (its
/// `sessions.redb`, and no cluster snapshot yet): then it imports those
/// sessions as the first member of a new cluster. Only a node whose
/// `--initial-cluster` names itself alone may: other initial members would
/// start from an empty state and diverge from it.
///
/// # Errors
/// Such a directory given to a node that is not alone in its initial
/// cluster.
/// The single server's storage: redb with its change log in front
/// (`storage::logged`) under `everysec` and `no`. Under `always` each write
/// waits for its own sync anyway, and on a full disk the writes that undo a
/// failed one must still go through, which redb's free pages allow and an
/// append to the log may not. With `--max-memory`, the log took the
/// memory-limit test over its margin (RSS 123–126 % of the limit under
/// `allkeys-lru`, against 120 %; 103–113 % without the log; the cause is
/// not pinned down: the absorption's allocations on the writer thread, or
/// redb's dirty pages between its synced commits). In both cases the log is only absorbed at open (a data directory last run
/// otherwise) and redb takes the writes.
fn open_single_server_storage(config: &Config) -> anyhow::Result<Box<dyn Storage>> {
    let path = config.data_dir.join("sessions.redb");
    let logged = LoggedStorage::open(&path, config.storage_cache_bytes, AbsorbPolicy::default())
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(
        if config.durability == Durability::Always || config.max_memory > 0 {
            Box::new(
                logged
                    .into_redb()
                    .with_context(|| format!("opening {}", path.display()))?,
            )
        } else {
            Box::new(logged)
        },
    )
}

fn import_single_server_data(config: &Config) -> anyhow::Result<bool> {
    let Some(cluster) = &config.cluster else {
        return Ok(false);
    };
    let dir = &config.data_dir;
    if !dir.join("sessions.redb").exists() || dir.join("raft-snapshot.bin").exists() {
        return Ok(false);
    }
    let alone = cluster.initial.len() == 1 && cluster.initial.contains_key(&cluster.node_id);
    if !alone {
        anyhow::bail!(
            "{} holds a single server's sessions (sessions.redb). To make them a cluster's, start this node first as a cluster of one (--initial-cluster {}={}), then add the other nodes with CLUSTER.ADDLEARNER and CLUSTER.PROMOTE (docs/operations.md, \"From one server to a cluster\"); or move sessions.redb away to start this node empty",
            dir.display(),
            cluster.node_id,
            cluster.raft_addr
        );
    }
    Ok(true)
}

fn next_incarnation(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("node-incarnation");
    let previous: u64 = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(_) => 0,
    };
    let next = (previous + 1) & 0xffff;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{next}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(next)
}

/// Proposes that every connection of this node's previous run closed, once
/// a leader is there to take it.
async fn close_previous_connections(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(replication) = shared.replication().cloned() else {
        return;
    };
    let input = sessiond_core::engine::Input::CloseNode {
        node: shared.node_id,
        except_incarnation: Some(shared.incarnation),
    };
    for _ in 0..600 {
        if shutdown.is_cancelled() {
            return;
        }
        if replication.propose(input.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("could not record that this node's previous connections closed");
}

/// Runs a server the way the `sessiond` binary does: binds, prints the one
/// machine-readable line `sessiond ready: resp=ADDR metrics=ADDR|off` on
/// stdout for scripts and tests, tells systemd (`READY=1`, then
/// `WATCHDOG=1` and a status line, `STOPPING=1`; see [`crate::notify`]),
/// and serves until SIGTERM or Ctrl-C, then shuts down cleanly. With
/// nothing to read the settings from again, SIGHUP changes nothing (see
/// [`serve_reloadable`]).
///
/// # Errors
/// When the server cannot start (bad settings, port taken, storage).
pub async fn serve_until_signal(config: Config) -> anyhow::Result<()> {
    serve(config, None).await
}

/// [`serve_until_signal`] with the settings resolved from `args`, read
/// again on SIGHUP (the `--config` file from disk) to put in force what can
/// change at run time (see [`crate::reload`]); `set_log` sets the log
/// filter, at start and on SIGHUP.
///
/// # Errors
/// As [`serve_until_signal`], and when the log filter cannot be set.
pub async fn serve_reloadable(
    args: crate::config::ServeArgs,
    set_log: Option<crate::reload::SetLogFilter>,
) -> anyhow::Result<()> {
    let config = args.clone().resolve()?;
    if let Some(set) = &set_log {
        set(&config.log_level).map_err(|e| anyhow::anyhow!("setting the log level: {e}"))?;
    }
    serve(config, Some(crate::reload::Reloader::new(args, set_log))).await
}

async fn serve(config: Config, reloader: Option<crate::reload::Reloader>) -> anyhow::Result<()> {
    let server = Server::bind(config.clone()).await?;
    // Listening for SIGHUP before the ready line: from then on a SIGHUP
    // reloads instead of ending the process (its default action).
    let hangup = hangup_signal();
    let addr = server
        .local_addr()
        .map_or("off".to_owned(), |a| a.to_string());
    let tls_addr = server.tls_addr();
    // `tls=` only with a TLS listener; `resp=off` with `--plaintext no`.
    println!(
        "sessiond ready: resp={addr} metrics={}{}",
        server
            .metrics_addr()
            .map_or("off".to_owned(), |a| a.to_string()),
        tls_addr.map_or(String::new(), |a| format!(" tls={a}"))
    );
    tracing::info!(%addr, tls = ?tls_addr, durability = ?config.durability, storage = ?config.storage, data_dir = %config.data_dir.display(), "listening");
    let shutdown = CancellationToken::new();
    let notifier = crate::notify::Notifier::from_env();
    if let Some(n) = notifier.clone() {
        // Loaded and listening: bind did both.
        n.send(&format!("READY=1\nSTATUS={}", status_text(&server.shared)));
        tokio::spawn(supervisor_pings(n, server.shared(), shutdown.clone()));
    }
    tokio::spawn(reload_on_hangup(
        hangup,
        reloader,
        server.shared(),
        server.tls(),
        shutdown.clone(),
    ));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Some(n) = notifier {
            n.send("STOPPING=1\nSTATUS=stopping: draining connections, flushing storage");
        }
        signal.cancel();
    });
    // Exits non-zero when changes could not be written to storage.
    server.run_reporting(shutdown).await.into_result()?;
    Ok(())
}

/// The status line systemd shows (`systemctl status`).
fn status_text(shared: &Shared) -> String {
    let sessions = shared.read(|e, _| e.store().len());
    let clients = shared.clients.lock().len();
    format!("serving {sessions} sessions to {clients} clients")
}

/// Until shutdown: `WATCHDOG=1` at half the watchdog interval when systemd
/// set one, and the status line (every 10 s without a watchdog). Both read
/// the state, so a server stuck on its state lock stops pinging and the
/// watchdog restarts it.
async fn supervisor_pings(
    n: crate::notify::Notifier,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let watchdog = crate::notify::watchdog_interval();
    let every = watchdog.unwrap_or(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let status = status_text(&shared);
        if watchdog.is_some() {
            n.send(&format!("WATCHDOG=1\nSTATUS={status}"));
        } else {
            n.send(&format!("STATUS={status}"));
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP: no reloads"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

/// Until shutdown: each SIGHUP reloads the settings (when there is
/// something to read them from) and logs what it did.
#[cfg(unix)]
async fn reload_on_hangup(
    hangup: Hangup,
    reloader: Option<crate::reload::Reloader>,
    shared: Arc<Shared>,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: CancellationToken,
) {
    let Some(mut hangup) = hangup else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        match &reloader {
            Some(r) => r.reload_and_log(&shared),
            None => {
                tracing::warn!("SIGHUP: started without settings to read again; nothing changed");
            }
        }
        // The certificate files are read again whatever the settings say:
        // rotating them needs no other change.
        if let Some(tls) = &tls {
            tls.reload_and_log();
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(
    _hangup: Hangup,
    _reloader: Option<crate::reload::Reloader>,
    _shared: Arc<Shared>,
    _tls: Option<Arc<crate::tls::Tls>>,
    _shutdown: CancellationToken,
) {
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
