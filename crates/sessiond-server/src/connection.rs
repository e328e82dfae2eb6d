//! One client connection: read requests, run them in order, write replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::cmd::lock::{self, LockStep, LockWait};
use crate::cmd::{CmdError, Command, error_reply};
use crate::protocol::{Protocol, Reply, RequestLimits, RequestParser, encode};
use crate::state::{ClientInfo, Shared};

/// What a connection knows about itself.
#[derive(Debug)]
pub struct ConnState {
    /// CLIENT ID; also the owner id of its locks.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// RESP version.
    pub proto: Protocol,
    /// Whether AUTH succeeded (or no password is set).
    pub authed: bool,
    /// CLIENT SETNAME.
    pub name: Option<String>,
    /// CLIENT SETINFO lib-name/lib-ver.
    pub lib: Option<String>,
    /// QUIT was received.
    pub quit: bool,
}

impl ConnState {
    /// Sets the name here and in the shared registry.
    pub fn set_name(&mut self, shared: &Shared, name: Option<String>) {
        self.name = name.clone();
        if let Some(c) = shared.clients.lock().get_mut(&self.id) {
            c.name = name;
        }
    }

    /// Records CLIENT SETINFO.
    pub fn set_lib(&mut self, shared: &Shared, attr: &str, value: String) {
        let lib = match (attr, self.lib.take()) {
            ("lib-ver", Some(name)) => format!("{name} {value}"),
            (_, _) => value,
        };
        self.lib = Some(lib.clone());
        if let Some(c) = shared.clients.lock().get_mut(&self.id) {
            c.lib = Some(lib);
        }
    }
}

/// Replies are written once this many bytes are waiting, even in the middle
/// of a pipeline.
const FLUSH_REPLIES_AT: usize = 64 * 1024;

/// Before AUTH, a client may send only small requests (as Redis 7.2 limits
/// unauthenticated clients), so unauthenticated sockets cannot make the
/// server buffer the full request size each.
const MAX_UNAUTHENTICATED_REQUEST_BYTES: usize = 16 * 1024;

/// The name under which requests that are not a valid command (unknown
/// name, wrong arity, bad arguments) are counted in metrics and INFO.
pub const INVALID_COMMAND: &str = "(invalid)";

fn request_limits(conn: &ConnState, shared: &Shared) -> RequestLimits {
    let max = shared.config.max_request_bytes;
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
pub async fn run(
    mut stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let id = shared.next_client_id();
    shared.clients.lock().insert(
        id,
        ClientInfo {
            id,
            addr,
            name: None,
            lib: None,
            connected: Instant::now(),
        },
    );
    shared.metrics.connections.inc();
    let mut conn = ConnState {
        id,
        addr,
        proto: Protocol::Resp2,
        authed: shared.config.requirepass.is_none(),
        name: None,
        lib: None,
        quit: false,
    };
    if let Err(e) = serve(&mut stream, &mut conn, &shared, &shutdown).await {
        tracing::debug!(client = id, %addr, error = %e, "connection ended");
    }
    // Whatever ended the connection, its locks go now and its wait is
    // cancelled; waiters queued behind it are handed the locks.
    shared.apply(|st, now| {
        let h = st.locks.release_owner(now, id);
        lock::deliver(st, now, h);
    });
    shared.clients.lock().remove(&id);
    shared.metrics.connections.dec();
}

async fn serve(
    stream: &mut TcpStream,
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
                    // Before AUTH, only AUTH, HELLO and QUIT may say why
                    // they are malformed; other requests learn nothing but
                    // NOAUTH, unless the command is unknown or its argument
                    // count is wrong (as in Redis).
                    let may_explain = conn.authed
                        || argv
                            .first()
                            .is_some_and(|n| crate::cmd::conn_allowed_unauthenticated(n));
                    let reply = match Command::parse(argv) {
                        Ok(cmd) => {
                            let started = Instant::now();
                            let name = cmd.name();
                            let reply =
                                execute(cmd, conn, shared, stream, &mut inbuf, shutdown).await;
                            let outcome = match &reply {
                                Some(Reply::Error(e)) => {
                                    e.split(' ').next().unwrap_or("ERR").to_owned()
                                }
                                Some(_) => "ok".to_owned(),
                                None => "disconnected".to_owned(),
                            };
                            shared.metrics.record(name, &outcome, started.elapsed());
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
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                    // A client may pipeline many requests with big replies
                    // and read none of them: write as we go, so TCP's flow
                    // control holds it back instead of our memory growing.
                    if out.len() >= FLUSH_REPLIES_AT {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be framed any more: say why, close.
                    let code = match e {
                        crate::protocol::ParseError::TooLarge { .. } => "LIMIT",
                        crate::protocol::ParseError::Protocol(_) => "ERR",
                    };
                    encode(&Reply::error(code, e.to_string()), conn.proto, &mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
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
async fn execute(
    cmd: Command,
    conn: &mut ConnState,
    shared: &Shared,
    stream: &mut TcpStream,
    inbuf: &mut BytesMut,
    shutdown: &CancellationToken,
) -> Option<Reply> {
    if !conn.authed && !crate::cmd::conn_allowed_unauthenticated(cmd.name().as_bytes()) {
        return Some(Reply::error("NOAUTH", "Authentication required."));
    }
    // Storage failing: write commands are refused before anything is applied.
    if let Some(refusal) = crate::write_gate::refuse(shared, &cmd) {
        return Some(refusal);
    }
    match cmd {
        Command::Conn(c) => Some(c.execute(shared, conn)),
        Command::Session(c) => Some(c.execute(shared).await),
        Command::Lock(c) => {
            let owner = conn.id;
            let lookup = |id: u64| shared.clients.lock().get(&id).cloned();
            let (step, seq) = shared.apply(|st, now| c.apply(st, now, owner, &lookup));
            shared.timer.notify_one();
            match step {
                // A grant with CREATE may have created the session: under
                // `always` its reply waits for the disk like a write's.
                Ok(LockStep::Reply(r)) => Some(match shared.durable(seq).await {
                    Ok(()) => r,
                    Err(e) => Reply::error("ERR", e.to_string()),
                }),
                Ok(LockStep::Wait(wait)) => {
                    wait_for_grant(wait, shared, stream, inbuf, shutdown).await
                }
                Err(e) => Some(error_reply(&e)),
            }
        }
    }
}

/// Waits for a lock hand-off, the wait's end, the client leaving, or
/// shutdown. Bytes the client pipelines meanwhile are kept for later.
async fn wait_for_grant(
    mut wait: LockWait,
    shared: &Shared,
    stream: &mut TcpStream,
    inbuf: &mut BytesMut,
    shutdown: &CancellationToken,
) -> Option<Reply> {
    let started = Instant::now();
    let max_buffered = shared.config.max_request_bytes;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait.wait_ms);
    let mut client_gone = false;
    let outcome = loop {
        tokio::select! {
            grant = &mut wait.rx => break grant.ok(),
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
            }
        }
    };
    let handed = match outcome {
        // The usual way: the reply came built with the grant; the state is
        // not touched again.
        Some(handed) if !client_gone => Some(handed),
        _ => {
            shared
                .apply(|st, now| {
                    // A grant may have raced with the timeout; it then counts.
                    let handed = outcome.or_else(|| lock::cancel_wait(st, now, &mut wait));
                    match handed {
                        Some(h) if client_gone => {
                            lock::release_token(st, now, h.grant.token);
                            None
                        }
                        other => other,
                    }
                })
                .0
        }
    };
    if client_gone {
        return None;
    }
    let reply = match handed {
        Some(h) if h.wrote => match shared.durable_so_far().await {
            Ok(()) => Some(h.reply),
            Err(e) => Some(Reply::error("ERR", e.to_string())),
        },
        Some(h) => Some(h.reply),
        None => None,
    };
    Some(match reply {
        Some(r) => {
            shared
                .metrics
                .lock_wait
                .observe(started.elapsed().as_secs_f64());
            r
        }
        None if shutdown.is_cancelled() => Reply::error("ERR", "server shutting down"),
        None => {
            shared.metrics.lock_timeouts.inc();
            error_reply(&CmdError::Core(sessiond_core::StoreError::Timeout(
                wait.wait_ms,
            )))
        }
    })
}
