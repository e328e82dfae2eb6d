//! One client connection: read requests, run them in order, write replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use sessiond_core::LockError;
use sessiond_core::engine::{Delivery, Input, InputResult, Step};
use sessiond_core::locks::WaiterId;
use tokio::sync::oneshot;

use crate::cmd::{
    CmdError, Command, ConnCommand, ConnState, durability_error_reply, engine_error_reply,
    error_reply, parse_error_reply, replication_error_reply, response_reply,
};
use crate::protocol::{Protocol, Reply, RequestLimits, RequestParser, encode};
use crate::state::{BoxFuture, ClientInfo, Executed, Replication, Shared};

/// Replies are written once this many bytes are waiting, even in the middle
/// of a pipeline.
const FLUSH_REPLIES_AT: usize = 64 * 1024;

/// Before AUTH, a client may send only small requests (as Redis 7.2 limits
/// unauthenticated clients), so unauthenticated sockets cannot make the
/// server buffer the full request size each.
const MAX_UNAUTHENTICATED_REQUEST_BYTES: usize = 16 * 1024;

/// A client's byte stream: plain TCP or TLS over it. The connection code is
/// generic over it (monomorphized: plain TCP pays nothing for TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// How long a refused AUTH waits before its answer: 100 ms after the first
/// refusal on a connection, doubling, at most 2 s.
fn auth_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(2))
}

/// Writes `out` and flushes it (TLS keeps what the socket did not take
/// until flushed; for plain TCP the flush does nothing).
async fn send<S: Stream>(stream: &mut S, out: &[u8]) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// The name under which requests that are not a valid command (unknown
/// name, wrong arity, bad arguments) are counted in metrics and INFO.
pub const INVALID_COMMAND: &str = "(invalid)";

fn request_limits(conn: &ConnState, shared: &Shared) -> RequestLimits {
    let max = shared.max_request_bytes();
    RequestLimits {
        max_request_bytes: if conn.authed {
            max
        } else {
            max.min(MAX_UNAUTHENTICATED_REQUEST_BYTES)
        },
    }
}

/// Runs a connection until the client leaves, sends QUIT, breaks the
/// protocol, or the server shuts down; then releases its locks.
pub async fn run<S: Stream>(
    mut stream: S,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let id = shared.next_client_id();
    // Shutdown or CLIENT KILL: either ends this connection the same way.
    let kill = shutdown.child_token();
    let initial_user = shared.config.users.initial();
    shared.clients.lock().insert(
        id,
        ClientInfo {
            id,
            addr,
            name: None,
            lib: None,
            user: initial_user.as_ref().map(|u| u.name.clone()),
            connected: Instant::now(),
            kill: kill.clone(),
        },
    );
    shared.metrics.connections.inc();
    let mut conn = ConnState {
        id,
        addr,
        proto: Protocol::Resp2,
        authed: initial_user.is_some(),
        user: initial_user,
        auth_failures: 0,
        name: None,
        lib: None,
        quit: false,
    };
    if let Err(e) = serve(&mut stream, &mut conn, &shared, &kill).await {
        tracing::debug!(client = id, %addr, error = %e, "connection ended");
    }
    // Whatever ended the connection, its locks go now and its wait is
    // cancelled; waiters queued behind it are handed the locks. (Its id is
    // a new one after a RESET.)
    shared.connection_closed(conn.id);
    shared.clients.lock().remove(&conn.id);
    shared.metrics.connections.dec();
}

async fn serve<S: Stream>(
    stream: &mut S,
    conn: &mut ConnState,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut parser = RequestParser::new();
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        // Run every complete request in the buffer, then write all replies
        // at once (pipelining).
        loop {
            match parser.parse(&mut inbuf, request_limits(conn, shared)) {
                Ok(Some(argv)) => {
                    // Kept for the slow log (cheap: the arguments are
                    // reference-counted).
                    let logged = shared.slowlog.enabled().then(|| argv.clone());
                    // Before AUTH, only AUTH, HELLO and QUIT may say why
                    // they are malformed; other requests learn nothing but
                    // NOAUTH, unless the command is unknown or its argument
                    // count is wrong (as in Redis).
                    let may_explain = conn.authed
                        || argv
                            .first()
                            .is_some_and(|n| crate::cmd::conn_allowed_unauthenticated(n));
                    let prefix = conn.user.as_ref().and_then(|u| u.prefix.as_deref());
                    let reply = match Command::parse_with_prefix(argv, prefix) {
                        Ok(cmd) => {
                            let started = Instant::now();
                            let name = cmd.name();
                            let mut waited = Duration::ZERO;
                            let reply = execute(
                                cmd,
                                conn,
                                shared,
                                stream,
                                &mut inbuf,
                                shutdown,
                                &mut waited,
                            )
                            .await;
                            let took = started.elapsed();
                            let outcome = match &reply {
                                Some(r) => r.error_code().unwrap_or("ok"),
                                None => "disconnected",
                            };
                            shared.metrics.record(name, outcome, took);
                            if let Some(argv) = &logged {
                                // As Redis: time blocked (here: queued for
                                // a lock) is not counted.
                                shared.slowlog.record(
                                    argv,
                                    took.saturating_sub(waited),
                                    conn.addr,
                                    conn.name.as_deref().unwrap_or(""),
                                );
                            }
                            match reply {
                                Some(r) => r,
                                // The client left during a wait.
                                None => return Ok(()),
                            }
                        }
                        Err(e) => {
                            // Unknown commands, wrong arity, bad arguments:
                            // counted too, under one name.
                            shared
                                .metrics
                                .record(INVALID_COMMAND, "ERR", Duration::ZERO);
                            if may_explain || matches!(e, CmdError::Unknown(_) | CmdError::Arity(_))
                            {
                                error_reply(&e)
                            } else {
                                Reply::error("NOAUTH", "Authentication required.")
                            }
                        }
                    };
                    encode(&reply, conn.proto, &mut out);
                    if conn.quit {
                        send(stream, &out).await?;
                        return Ok(());
                    }
                    // A client may pipeline many requests with big replies
                    // and read none of them: write as we go, so TCP's flow
                    // control holds it back instead of our memory growing.
                    if out.len() >= FLUSH_REPLIES_AT {
                        send(stream, &out).await?;
                        out.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be framed any more: say why, close.
                    encode(&parse_error_reply(&e), conn.proto, &mut out);
                    send(stream, &out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            send(stream, &out).await?;
            out.clear();
        }
        tokio::select! {
            // Shutdown lets the command in flight finish (we only get here
            // between commands), then closes.
            _ = shutdown.cancelled() => return Ok(()),
            n = stream.read_buf(&mut inbuf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs one command. `None` means the client disconnected while it waited.
/// `waited` is set to the time spent queued for a lock.
async fn execute<S: Stream>(
    cmd: Command,
    conn: &mut ConnState,
    shared: &Shared,
    stream: &mut S,
    inbuf: &mut BytesMut,
    shutdown: &CancellationToken,
    waited: &mut Duration,
) -> Option<Reply> {
    if !conn.authed && !crate::cmd::conn_allowed_unauthenticated(cmd.name().as_bytes()) {
        return Some(Reply::error("NOAUTH", "Authentication required."));
    }
    if let Some(user) = &conn.user
        && let Err(e) = crate::cmd::acl::authorize(user, &cmd)
    {
        return Some(crate::cmd::acl_error_reply(&e));
    }
    // Storage failing: write commands are refused before anything is applied.
    if let Some(refusal) = crate::write_gate::refuse(shared, &cmd) {
        return Some(refusal);
    }
    let cmd = match cmd {
        Command::Conn(ConnCommand::Reset) => {
            if let Err(e) = reset(conn, shared).await {
                return Some(e);
            }
            return Some(ConnCommand::Reset.execute(shared, conn));
        }
        Command::Conn(c) => {
            let failures = conn.auth_failures;
            let reply = c.execute(shared, conn);
            if conn.auth_failures > failures {
                // Guessing passwords gets slower on each connection.
                tokio::time::sleep(auth_delay(conn.auth_failures)).await;
            }
            return Some(reply);
        }
        Command::Cluster(c) => return Some(c.execute(shared).await),
        Command::Engine(c) => c,
    };
    let wait_ms = match &cmd {
        sessiond_core::engine::Command::Acquire(a)
        | sessiond_core::engine::Command::Once { args: a, .. } => a.wait_ms,
        _ => 0,
    };
    if let Some(replication) = shared.replication().cloned() {
        return execute_replicated(
            cmd,
            wait_ms,
            conn,
            shared,
            &*replication,
            stream,
            inbuf,
            shutdown,
            waited,
        )
        .await;
    }
    let mut cmd = cmd;
    // Under `always`, a command that changed nothing is answered again if
    // what it saw is undone (below): it keeps a copy to run again, once.
    let mut again = shared.undoes_failed_writes() && !crate::write_gate::engine_writes(&cmd);
    let executed = loop {
        let copy = again.then(|| cmd.clone());
        let (executed, seq, unconfirmed) = shared.execute(conn.id, cmd);
        let Executed::Done(Ok(response)) = executed else {
            break executed;
        };
        // Under `always`, a command that changed anything (a write, a
        // create, a new TTL, a grant that created its session) waits until
        // that is on disk; one that changed nothing waits only when it
        // shows a change that is not on disk yet (which a failed sync
        // would undo), until that change is.
        match shared.durable(seq.max(unconfirmed)).await {
            Ok(()) => {
                return Some(response_reply(response, &|id| {
                    shared.clients.lock().get(&id).cloned()
                }));
            }
            Err(e) => {
                // Nothing of a failed command is kept, a lock it was
                // granted included.
                release_grant(shared, &response);
                shared.undo_unconfirmed();
                match copy {
                    Some(c) if seq.is_none() => {
                        cmd = c;
                        again = false;
                    }
                    _ => return Some(durability_error_reply(&e)),
                }
            }
        }
    };
    match executed {
        Executed::Done(Ok(_)) => unreachable!("answered in the loop above"),
        Executed::Done(Err(e)) => Some(engine_error_reply(&e)),
        Executed::Wait(waiter, rx) => {
            let cancel = CancelLocal {
                conn: conn.id,
                waiter,
            };
            let queued = Instant::now();
            let reply = wait_for_grant(&cancel, rx, wait_ms, shared, stream, inbuf, shutdown).await;
            *waited = queued.elapsed();
            reply
        }
    }
}

/// RESET's part in the engine: everything the connection holds is released
/// and its waits cancelled, as when it closes (through the cluster's log
/// when there is one, answered once applied here, so a client told `+RESET`
/// may count on the locks being free); then the connection goes on under a
/// fresh id, so nothing addressed to the old one (a late grant) can reach
/// it. On a cluster error nothing changes: the connection keeps its id and
/// whatever it holds (closing it releases them).
async fn reset(conn: &mut ConnState, shared: &Shared) -> Result<(), Reply> {
    let old = conn.id;
    match shared.replication().cloned() {
        None => shared.connection_closed(old),
        Some(replication) => {
            shared.unregister_waiter(old);
            let (_, index) = replication
                .propose(Input::ConnectionClosed { conn: old })
                .await
                .map_err(|e| replication_error_reply(&e))?;
            replication.applied(index).await;
        }
    }
    let new = shared.next_client_id();
    let mut clients = shared.clients.lock();
    if let Some(mut info) = clients.remove(&old) {
        info.id = new;
        clients.insert(new, info);
    }
    conn.id = new;
    Ok(())
}

/// Runs an engine command through the cluster's log.
#[allow(clippy::too_many_arguments)]
async fn execute_replicated<S: Stream>(
    cmd: sessiond_core::engine::Command,
    wait_ms: u64,
    conn: &mut ConnState,
    shared: &Shared,
    replication: &dyn Replication,
    stream: &mut S,
    inbuf: &mut BytesMut,
    shutdown: &CancellationToken,
    waited: &mut Duration,
) -> Option<Reply> {
    if let Some(reply) = read_on_leader(&cmd, shared, replication).await {
        return Some(reply);
    }
    // The grant of a wait may be applied on this node before the proposal's
    // answer comes back: register where it goes first.
    let rx = (wait_ms > 0).then(|| shared.register_waiter(conn.id));
    let proposed = replication
        .propose(Input::Command { conn: conn.id, cmd })
        .await;
    let clients = |id: u64| shared.clients.lock().get(&id).cloned();
    match proposed {
        Ok((InputResult::Step(Step::Wait(waiter)), _)) => match rx {
            Some(rx) => {
                let cancel = CancelReplicated {
                    conn: conn.id,
                    waiter,
                    replication,
                };
                let queued = Instant::now();
                let reply =
                    wait_for_grant(&cancel, rx, wait_ms, shared, stream, inbuf, shutdown).await;
                *waited = queued.elapsed();
                reply
            }
            None => Some(Reply::error(
                "ERR",
                "internal: a wait without a registration",
            )),
        },
        Ok((result, _)) => {
            if rx.is_some() {
                shared.unregister_waiter(conn.id);
            }
            Some(match result {
                InputResult::Step(Step::Done(Ok(r))) => response_reply(r, &clients),
                InputResult::Step(Step::Done(Err(e))) => engine_error_reply(&e),
                _ => Reply::error("ERR", "internal: unexpected result"),
            })
        }
        Err(e) => {
            if rx.is_some() {
                shared.unregister_waiter(conn.id);
            }
            Some(replication_error_reply(&e))
        }
    }
}

/// A read whose session expires sooner than this goes through the log,
/// which slides it at once: the slides of reads served by the leader reach
/// the log in bulk (every half second, see `server::cluster_timekeeper`),
/// and a write coming after such a read must not find the session expired
/// in between.
const SLIDE_HORIZON_MS: u64 = 2_000;

/// A pure read (see `Command::is_pure_read`) on the leader, answered from
/// this node's engine once the ReadIndex barrier passed, with no log entry;
/// its expiry slide is noted for the next bulk record. `None` when the read
/// must go through the log: not a pure read, this node does not lead (or
/// lost the majority), or the session is about to expire.
async fn read_on_leader(
    cmd: &sessiond_core::engine::Command,
    shared: &Shared,
    replication: &dyn Replication,
) -> Option<Reply> {
    if !cmd.is_pure_read() || !replication.is_leader() {
        return None;
    }
    let now = replication.read_barrier().await?;
    let peek = shared.read(|engine, _| {
        let peek = engine.peek(now, cmd)?;
        if let Some(id) = &peek.accessed
            && engine
                .store()
                .ttl(now, id)
                .is_some_and(|ttl| ttl < SLIDE_HORIZON_MS)
        {
            return None;
        }
        Some(peek)
    })?;
    if let Some(id) = peek.accessed {
        replication.note_read(id, now);
    }
    Some(response_reply(peek.response, &|id| {
        shared.clients.lock().get(&id).cloned()
    }))
}

/// How a wait ends when it is given up: locally, or through the log.
trait CancelWait {
    /// Ends the wait; returns the grant if it came meanwhile.
    fn cancel<'a>(
        &'a self,
        shared: &'a Shared,
        rx: &'a mut oneshot::Receiver<Delivery>,
    ) -> BoxFuture<'a, Option<Delivery>>;
}

struct CancelLocal {
    conn: u64,
    waiter: WaiterId,
}

impl CancelWait for CancelLocal {
    fn cancel<'a>(
        &'a self,
        shared: &'a Shared,
        rx: &'a mut oneshot::Receiver<Delivery>,
    ) -> BoxFuture<'a, Option<Delivery>> {
        Box::pin(async move { shared.cancel_wait(self.conn, self.waiter, rx) })
    }
}

struct CancelReplicated<'r> {
    conn: u64,
    waiter: WaiterId,
    replication: &'r dyn Replication,
}

impl CancelWait for CancelReplicated<'_> {
    fn cancel<'a>(
        &'a self,
        shared: &'a Shared,
        rx: &'a mut oneshot::Receiver<Delivery>,
    ) -> BoxFuture<'a, Option<Delivery>> {
        Box::pin(async move {
            // Once this node applied the cancel, a grant made before it has
            // been delivered here (the log is applied in order).
            let cancelled = self
                .replication
                .propose(Input::CancelWait {
                    waiter: self.waiter,
                })
                .await;
            if let Ok((_, index)) = cancelled {
                self.replication.applied(index).await;
            }
            shared.unregister_waiter(self.conn);
            rx.try_recv().ok()
        })
    }
}

/// Waits for a lock hand-off, the wait's end, the client leaving, or
/// shutdown. Bytes the client pipelines meanwhile are kept for later.
async fn wait_for_grant<S: Stream>(
    cancel: &(dyn CancelWait + Sync),
    mut rx: oneshot::Receiver<Delivery>,
    wait_ms: u64,
    shared: &Shared,
    stream: &mut S,
    inbuf: &mut BytesMut,
    shutdown: &CancellationToken,
) -> Option<Reply> {
    let started = Instant::now();
    let max_buffered = shared.max_request_bytes();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut client_gone = false;
    // A RESET may have come in the same read as the request that waits.
    let mut reset = reset_queued(inbuf, max_buffered);
    let outcome = if reset {
        None
    } else {
        loop {
            tokio::select! {
                grant = &mut rx => break grant.ok(),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = shutdown.cancelled() => break None,
                // Pipelined bytes are kept for later, up to the request limit;
                // beyond that the socket is left unread (TCP holds the client
                // back) until the wait ends.
                n = stream.read_buf(inbuf), if !client_gone && inbuf.len() < max_buffered => {
                    if matches!(n, Ok(0) | Err(_)) {
                        client_gone = true;
                        break None;
                    }
                    // A RESET queued behind the wait ends it now: the client
                    // gave up on it (RESET then releases whatever it holds).
                    if reset_queued(inbuf, max_buffered) {
                        reset = true;
                        break None;
                    }
                }
            }
        }
    };
    // The usual way: the reply came built with the grant; the engine is not
    // asked again. Otherwise the wait ends here, unless a grant raced with
    // the timeout: it then counts.
    let delivered = match outcome {
        Some(d) => Some(d),
        None => cancel.cancel(shared, &mut rx).await,
    };
    if client_gone {
        // Whatever it was granted goes with the connection (closed next).
        return None;
    }
    let Some(delivery) = delivered else {
        if shutdown.is_cancelled() {
            return Some(Reply::error("ERR", "server shutting down"));
        }
        if reset {
            return Some(Reply::error(
                "RESET",
                "lock wait cancelled by the RESET sent behind it",
            ));
        }
        shared.metrics.lock_timeouts.inc();
        return Some(engine_error_reply(&LockError::Timeout(wait_ms).into()));
    };
    shared
        .metrics
        .lock_wait
        .observe(started.elapsed().as_secs_f64());
    let response = match delivery.reply {
        Ok(r) => r,
        Err(e) => return Some(engine_error_reply(&e)),
    };
    // A grant's reply may show changes not on disk yet (the holder before
    // committed and released): under `always` it waits for them, as any
    // read of them does.
    if (delivery.wrote || shared.undoes_failed_writes())
        && let Err(e) = shared.durable_so_far().await
    {
        release_grant(shared, &response);
        shared.undo_unconfirmed();
        return Some(durability_error_reply(&e));
    }
    Some(response_reply(response, &|id| {
        shared.clients.lock().get(&id).cloned()
    }))
}

/// Releases the lock `response` granted, if it granted one: its command
/// failed, and a client told so must not be left holding it.
fn release_grant(shared: &Shared, response: &sessiond_core::engine::Response) {
    use sessiond_core::engine::Response;
    if let Response::Granted { token, .. } | Response::OnceGranted { token, .. } = response {
        let token = *token;
        shared.run(|e, now| e.abandon(now, token));
    }
}

/// Whether the requests pipelined in `inbuf` (which starts at a request's
/// first byte: the one waiting was taken out whole) include a `RESET`. Looks
/// at a copy, at most 64 requests deep; `inbuf` itself is parsed later, as
/// usual.
fn reset_queued(inbuf: &BytesMut, max_request_bytes: usize) -> bool {
    let mut copy = inbuf.clone();
    let mut parser = RequestParser::new();
    let limits = RequestLimits { max_request_bytes };
    for _ in 0..64 {
        match parser.parse(&mut copy, limits) {
            Ok(Some(argv)) => {
                if argv.len() == 1 && argv[0].eq_ignore_ascii_case(b"RESET") {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
    false
}
