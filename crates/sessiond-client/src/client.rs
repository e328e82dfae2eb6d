//! The connection and the typed command methods.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::cmd::{Cmd, ms_ceil};
use crate::error::{Error, Result};
use crate::reply;
use crate::types::{
    CasResult, Commit, CommitResult, IncrOptions, LockGrant, LockInfo, LockOptions, NewOptions,
    OnceResult, ReadOptions, SessionData,
};
use crate::value::{Decoded, Value, decode};

/// How to set up a connection; see [`Client::connect_with`] and
/// [`Client::connect_any`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The user to log in as with `password` (`default` when `None`).
    pub user: Option<String>,
    /// Password for the user (`HELLO 3 AUTH user …` or `AUTH user …`).
    pub password: Option<String>,
    /// Connect over TLS (to the server's `--tls-port`).
    pub tls: Option<TlsOptions>,
    /// Client name (`HELLO 3 … SETNAME` or `CLIENT SETNAME`).
    pub client_name: Option<String>,
    /// Switch the connection to RESP3 with `HELLO 3` (default `true`); with
    /// `false` it stays RESP2. Replies decode to the same types either way.
    pub resp3: bool,
    /// With a node list: how long one TCP connect and handshake may take
    /// before the next node is tried (default 2 s).
    pub connect_timeout: Duration,
    /// With a node list: the total time one call may spend on retries
    /// (reconnecting, `TRYAGAIN`) before its last error is returned
    /// (default 10 s, a few elections).
    pub failover_timeout: Duration,
    /// With a node list: the most times one call is sent or its connection
    /// attempted (default 20).
    pub max_attempts: u32,
}

/// TLS settings of a connection: the CA the server's certificate must be
/// signed by, and a client certificate for servers that require one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The CA certificates (PEM) that sign the server's certificate.
    pub ca_file: PathBuf,
    /// The client certificate chain (PEM), for `--tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry; the server's IP
    /// address when `None`.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Verifies the server against the CAs of `ca_file`.
    pub fn with_ca(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca_file: ca_file.into(),
            cert_file: None,
            key_file: None,
            server_name: None,
        }
    }

    fn connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("TLS {what}: {e}"),
            ))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca_file).map_err(|e| bad("CA file", &e))? {
            roots
                .add(c.map_err(|e| bad("CA file", &e))?)
                .map_err(|e| bad("CA file", &e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("versions", &e))?
        .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("certificate file", &e))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("certificate file", &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key file", &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad("client certificate", &e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(bad(
                    "client certificate",
                    &"give both cert_file and key_file, or neither",
                ));
            }
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            user: None,
            password: None,
            tls: None,
            client_name: None,
            resp3: true,
            connect_timeout: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(10),
            max_attempts: 20,
        }
    }
}

/// Plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Plain",
            Stream::Tls(_) => "Tls",
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    async fn open(addr: impl ToSocketAddrs, tls: Option<&TlsOptions>) -> Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(t) => {
                let name = match &t.server_name {
                    Some(n) => ServerName::try_from(n.clone()).map_err(|e| {
                        Error::Io(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("TLS server name {n:?}: {e}"),
                        ))
                    })?,
                    None => ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
                };
                Stream::Tls(Box::new(t.connector()?.connect(name, tcp).await?))
            }
        };
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
        })
    }

    /// True when the peer already closed (or reset) this idle connection:
    /// a request sent on it would be lost, so it is safe to reconnect
    /// first. Bytes that arrived meanwhile (pushes) stay in the buffer.
    fn peer_gone(&mut self) -> bool {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match &mut self.stream {
            Stream::Plain(s) => match s.try_read_buf(&mut self.rbuf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
            // One poll that does not wait: TLS records have to go through
            // rustls, so the socket is not read around it.
            Stream::Tls(s) => {
                let mut chunk = [0u8; 4096];
                let mut buf = ReadBuf::new(&mut chunk);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => true,
                    Poll::Ready(Ok(())) => {
                        self.rbuf.extend_from_slice(buf.filled());
                        false
                    }
                    Poll::Ready(Err(_)) => true,
                    Poll::Pending => false,
                }
            }
        }
    }
}

/// Drops the connection unless the exchange completed: a request that failed
/// mid-flight or whose future was dropped (e.g. by `tokio::time::timeout`)
/// leaves an unread or half-written frame on the stream, so the stream cannot
/// be reused. Dropping it also makes the server release this connection's
/// locks.
struct Exchange<'a> {
    conn: &'a mut Option<Conn>,
    done: bool,
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.conn = None;
        }
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// The node list of a client made by [`Client::connect_any`].
#[derive(Debug)]
struct Nodes {
    addrs: Vec<String>,
    /// The node connected to (or to try first).
    current: usize,
    opts: ConnectOptions,
    /// This client's part of every request id it sends (random), and the
    /// sequence number of the last one.
    reqid_prefix: u64,
    reqid_seq: u64,
}

impl Nodes {
    /// A request id no other client sends: this client's random prefix and
    /// a sequence number.
    fn next_reqid(&mut self) -> String {
        self.reqid_seq += 1;
        format!("rs-{:016x}-{}", self.reqid_prefix, self.reqid_seq)
    }
}

/// 64 random bits from the standard library's per-process hash keys and
/// the clock (no random-number crate for this one value).
fn random_prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// An async connection to a sessiond server, or to one node of a cluster.
///
/// One request is in flight at a time (methods take `&mut self`); use one
/// `Client` per task, or a pool. Locks are owned by the connection: dropping
/// the `Client` closes it, and the server releases its locks.
///
/// # Node lists and failover
///
/// [`Client::connect_any`] (or [`Client::connect_nodes`] with
/// `"host:port,host:port"`) takes the nodes of a cluster and connects to the
/// first that answers. Every node serves every command (a follower forwards
/// to the leader), so the client stays where it is until something fails:
///
/// - the connection is gone **before** a request is sent (the node died
///   while the connection was idle, or a connect fails): it connects to the
///   next node and sends there — nothing was sent, nothing can apply twice;
/// - `TRYAGAIN` (no leader reachable from that node, nothing applied): it
///   sends the request again on the next node, after a short backoff;
/// - the connection is lost **after** the request was sent, or the server
///   answers `UNKNOWN`: the request may have been applied. Reads
///   (`SESSION.READ`, `SESSION.EXISTS`, `SESSION.TTL`, `LOCK.INFO`, `PING`,
///   `INFO`, `CLUSTER.INFO`), `LOCK.ACQUIRE` with a request id
///   ([`LockOptions::reqid`](crate::LockOptions::reqid): the retry adopts
///   the grant or wait already made), and the writes that carry a request
///   id — with a node list the client gives every `SESSION.COMMIT`,
///   `SESSION.INCR`, `SESSION.CAS`, `SESSION.REGENERATE` and
///   `SESSION.DESTROY` one (`REQID`), and the server answers a repeat with
///   the first answer without applying it again — are sent again; anything
///   else returns [`Error::Unknown`] (never retried silently), and the next
///   call reconnects.
///
/// Retries of one call are bounded by [`ConnectOptions::max_attempts`] and
/// [`ConnectOptions::failover_timeout`]; then the last error is returned.
/// Locks belong to the connection that took them: after the client moved to
/// another node its old locks are gone (released by the cluster once it sees
/// the old connection, or its node, go), and a commit fenced with their
/// token fails with [`Error::Fenced`] once another holder got them.
/// [`Client::node`] says which node the client talks to.
///
/// A client made by [`Client::connect`] or [`Client::connect_with`] has no
/// node list: a lost connection stays lost ([`Error::Closed`]).
#[derive(Debug)]
pub struct Client {
    conn: Option<Conn>,
    resp3: bool,
    nodes: Option<Nodes>,
}

impl Client {
    /// Connects with default [`ConnectOptions`] (RESP3, no auth, no name).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects, sets `TCP_NODELAY`, and performs the handshake: `HELLO 3
    /// [AUTH default password] [SETNAME name]` when `opts.resp3`, else
    /// `AUTH default password` and `CLIENT SETNAME name` as needed.
    pub async fn connect_with(addr: impl ToSocketAddrs, opts: ConnectOptions) -> Result<Client> {
        let mut client = Client {
            conn: Some(Conn::open(addr, opts.tls.as_ref()).await?),
            resp3: opts.resp3,
            nodes: None,
        };
        client.handshake(&opts).await?;
        Ok(client)
    }

    /// Connects to the first node of `nodes` (each `host:port`) that accepts
    /// the connection and the handshake, trying them in order, and keeps the
    /// list to fail over to (see [Node lists and
    /// failover](Client#node-lists-and-failover)). Fails with the last node's
    /// error when none does, and at once on [`Error::Auth`] or an empty list.
    pub async fn connect_any<A: ToString>(nodes: &[A], opts: ConnectOptions) -> Result<Client> {
        let addrs: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        if addrs.is_empty() {
            return Err(Error::Protocol("connect_any: no nodes given".into()));
        }
        let mut client = Client {
            conn: None,
            resp3: opts.resp3,
            nodes: Some(Nodes {
                addrs,
                current: 0,
                opts,
                reqid_prefix: random_prefix(),
                reqid_seq: 0,
            }),
        };
        client.reconnect().await?;
        Ok(client)
    }

    /// [`Client::connect_any`] with the nodes as one string,
    /// `"host:port,host:port,host:port"` (spaces around commas allowed).
    pub async fn connect_nodes(nodes: &str, opts: ConnectOptions) -> Result<Client> {
        let list: Vec<&str> = nodes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        Client::connect_any(&list, opts).await
    }

    /// The node this client talks to (`host:port` as given), when it was
    /// made with a node list and is connected.
    pub fn node(&self) -> Option<&str> {
        let nodes = self.nodes.as_ref()?;
        self.conn.as_ref()?;
        nodes.addrs.get(nodes.current).map(String::as_str)
    }

    async fn handshake(&mut self, opts: &ConnectOptions) -> Result<()> {
        if opts.resp3 {
            let mut cmd = Cmd::new("HELLO");
            cmd.arg("3");
            if let Some(password) = &opts.password {
                cmd.arg("AUTH")
                    .arg(opts.user.as_deref().unwrap_or("default"))
                    .arg(password);
            }
            if let Some(name) = &opts.client_name {
                cmd.arg("SETNAME").arg(name);
            }
            self.exchange(&cmd).await?;
        } else {
            if let Some(password) = &opts.password {
                let mut cmd = Cmd::new("AUTH");
                cmd.arg(opts.user.as_deref().unwrap_or("default"))
                    .arg(password);
                reply::ok(self.exchange(&cmd).await?, "AUTH")?;
            }
            if let Some(name) = &opts.client_name {
                let mut cmd = Cmd::new("CLIENT");
                cmd.arg("SETNAME").arg(name);
                reply::ok(self.exchange(&cmd).await?, "CLIENT SETNAME")?;
            }
        }
        Ok(())
    }

    /// Connects to a node of the list: the current one first, then the
    /// others in order, each once. Returns the last error when none
    /// answers; an authentication error at once.
    async fn reconnect(&mut self) -> Result<()> {
        self.conn = None;
        let Some(nodes) = &self.nodes else {
            return Err(Error::Closed);
        };
        let n = nodes.addrs.len();
        let first = nodes.current;
        let opts = nodes.opts.clone();
        let mut last = Error::Closed;
        for i in 0..n {
            let idx = (first + i) % n;
            let addr = self
                .nodes
                .as_ref()
                .and_then(|nodes| nodes.addrs.get(idx))
                .cloned()
                .unwrap_or_default();
            let attempt = async {
                self.conn = Some(Conn::open(addr.as_str(), opts.tls.as_ref()).await?);
                self.handshake(&opts).await
            };
            match tokio::time::timeout(opts.connect_timeout, attempt).await {
                Ok(Ok(())) => {
                    if let Some(nodes) = &mut self.nodes {
                        nodes.current = idx;
                    }
                    return Ok(());
                }
                Ok(Err(e @ Error::Auth(_))) => {
                    self.conn = None;
                    return Err(e);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    ));
                }
            }
            self.conn = None;
        }
        Err(last)
    }

    /// Moves to the next node of the list (the connection is dropped).
    fn next_node(&mut self) {
        self.conn = None;
        if let Some(nodes) = &mut self.nodes {
            nodes.current = (nodes.current + 1) % nodes.addrs.len().max(1);
        }
    }

    /// True when the connection was switched to RESP3 at connect.
    pub fn is_resp3(&self) -> bool {
        self.resp3
    }

    /// True once the connection is gone (closed by the server, or dropped
    /// after an I/O error, a framing error, or a cancelled request). Every
    /// call then returns [`Error::Closed`] — except on a client with a node
    /// list, whose next call reconnects.
    pub fn is_closed(&self) -> bool {
        self.conn.is_none()
    }

    /// Sends `QUIT`, waits for its reply (or for the server to close), and
    /// closes the connection.
    pub async fn close(mut self) -> Result<()> {
        if self.conn.is_none() {
            return Ok(());
        }
        match self.exchange(&Cmd::new("QUIT")).await {
            Ok(_) | Err(Error::Closed) => {}
            Err(e) => return Err(e),
        }
        if let Some(mut conn) = self.conn.take() {
            // The server closes its side after `OK`; a failed shutdown of ours
            // changes nothing.
            let _ = conn.stream.shutdown().await;
        }
        Ok(())
    }

    /// With a node list: gives a write a request id, so it can be sent again
    /// after a failure without applying twice.
    fn idempotent(&mut self, cmd: &mut Cmd) {
        if let Some(nodes) = &mut self.nodes {
            cmd.arg("REQID").arg(nodes.next_reqid()).mark_retryable();
        }
    }

    /// Sends one request and reads its reply, failing over along the node
    /// list when there is one (see [Node lists and
    /// failover](Client#node-lists-and-failover)).
    async fn request(&mut self, cmd: &Cmd) -> Result<Value> {
        let Some(nodes) = &self.nodes else {
            return self.exchange(cmd).await;
        };
        let max_attempts = nodes.opts.max_attempts.max(1);
        let deadline = Instant::now() + nodes.opts.failover_timeout;
        let mut backoff = Duration::from_millis(25);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last_try = attempt >= max_attempts || Instant::now() >= deadline;
            if self.conn.as_mut().is_some_and(Conn::peer_gone) {
                // Died while idle: nothing of this request was sent.
                self.next_node();
            }
            if self.conn.is_none()
                && let Err(e) = self.reconnect().await
            {
                if last_try || matches!(e, Error::Auth(_)) {
                    return Err(e);
                }
                backoff = pause(backoff, deadline).await;
                continue;
            }
            let node = self.node().unwrap_or_default().to_owned();
            match self.exchange(cmd).await {
                Err(Error::TryAgain(m)) => {
                    if last_try {
                        return Err(Error::TryAgain(m));
                    }
                    self.next_node();
                    backoff = pause(backoff, deadline).await;
                }
                Err(e @ (Error::Unknown(_) | Error::Io(_) | Error::Closed)) => {
                    if !matches!(e, Error::Unknown(_)) {
                        self.next_node();
                    }
                    if cmd.is_retryable() {
                        if last_try {
                            // A read applies nothing: its own error says it.
                            return Err(e);
                        }
                        backoff = pause(backoff, deadline).await;
                        continue;
                    }
                    return Err(match e {
                        Error::Unknown(m) => Error::Unknown(m),
                        e => Error::Unknown(format!(
                            "UNKNOWN connection to {node} lost after the request was sent ({e}): \
                             it may or may not have been applied"
                        )),
                    });
                }
                r => return r,
            }
        }
    }

    /// Sends one request on the current connection and reads its reply.
    /// Server errors become `Err`; the connection is dropped on anything
    /// that breaks framing.
    async fn exchange(&mut self, cmd: &Cmd) -> Result<Value> {
        let mut ex = Exchange {
            conn: &mut self.conn,
            done: false,
        };
        let conn = ex.conn.as_mut().ok_or(Error::Closed)?;
        conn.wbuf.clear();
        cmd.encode_into(&mut conn.wbuf);
        conn.stream.write_all(&conn.wbuf).await?;
        // TLS keeps what it could not send yet until flushed.
        conn.stream.flush().await?;
        if conn.wbuf.capacity() > 1 << 20 {
            conn.wbuf = BytesMut::with_capacity(1024);
        }
        let reply = loop {
            match decode(&mut conn.rbuf)? {
                Some(Decoded::Reply(reply)) => break reply,
                Some(Decoded::Push) => continue,
                None => {}
            }
            if conn.rbuf.capacity() - conn.rbuf.len() < READ_CHUNK / 4 {
                conn.rbuf.reserve(READ_CHUNK);
            }
            if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
                return Err(Error::Closed);
            }
        };
        ex.done = true;
        reply
    }

    /// Sends any command and returns its raw reply, e.g.
    /// `client.command(&["CLIENT", "GETNAME"])`. Server errors are returned
    /// as [`Error`]s.
    pub async fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value> {
        let mut it = args.iter();
        let Some(name) = it.next() else {
            return Err(Error::Protocol("empty command".into()));
        };
        let mut cmd = Cmd::default();
        cmd.arg(name);
        for a in it {
            cmd.arg(a);
        }
        self.request(&cmd).await
    }

    /// `PING`; succeeds on `PONG`.
    pub async fn ping(&mut self) -> Result<()> {
        let v = self.request(&Cmd::new("PING")).await?;
        match v.as_bytes() {
            Some(b"PONG") => Ok(()),
            _ => Err(Error::Protocol(format!("PING: expected PONG, got {v:?}"))),
        }
    }

    /// `SESSION.NEW [TTL s] [LIFETIME s]`: creates an empty session, returns
    /// its fresh id.
    pub async fn new_session(&mut self, opts: NewOptions) -> Result<String> {
        let mut cmd = Cmd::new("SESSION.NEW");
        cmd.opt_secs("TTL", opts.ttl)
            .opt_secs("LIFETIME", opts.lifetime);
        reply::string(self.request(&cmd).await?, "SESSION.NEW")
    }

    /// `SESSION.READ id [CREATE] [TTL s] [LIFETIME s] [KEYS k …]`: the
    /// session, or `None` if it does not exist (and `create` is false).
    pub async fn read(&mut self, id: &str, opts: &ReadOptions) -> Result<Option<SessionData>> {
        let mut cmd = Cmd::new("SESSION.READ");
        cmd.arg(id)
            .flag("CREATE", opts.create)
            .opt_secs("TTL", opts.ttl)
            .opt_secs("LIFETIME", opts.lifetime);
        if let Some(keys) = &opts.keys {
            cmd.arg("KEYS");
            for k in keys {
                cmd.arg(k);
            }
        }
        reply::session(self.request(&cmd).await?, "SESSION.READ")
    }

    /// `SESSION.COMMIT id …`: applies the delta atomically.
    ///
    /// Fails with [`Error::NoSession`] (no `create`), [`Error::Conflict`] (an
    /// `IFVER` condition failed; nothing applied) or [`Error::Fenced`].
    pub async fn commit(&mut self, id: &str, commit: &Commit) -> Result<CommitResult> {
        let mut cmd = Cmd::new("SESSION.COMMIT");
        cmd.arg(id);
        commit.write_args(&mut cmd);
        self.idempotent(&mut cmd);
        reply::commit_result(self.request(&cmd).await?)
    }

    /// `SESSION.DESTROY id`: true if the session existed.
    pub async fn destroy(&mut self, id: &str) -> Result<bool> {
        let mut cmd = Cmd::new("SESSION.DESTROY");
        cmd.arg(id);
        self.idempotent(&mut cmd);
        reply::flag(&self.request(&cmd).await?, "SESSION.DESTROY")
    }

    /// `SESSION.EXISTS id` (does not slide the expiry).
    pub async fn exists(&mut self, id: &str) -> Result<bool> {
        let mut cmd = Cmd::new("SESSION.EXISTS");
        cmd.arg(id);
        reply::flag(&self.request(&cmd).await?, "SESSION.EXISTS")
    }

    /// `SESSION.TOUCH id [TTL s]`: slides the idle expiry (and sets a new idle
    /// TTL if given); false if the session does not exist.
    pub async fn touch(&mut self, id: &str, ttl: Option<Duration>) -> Result<bool> {
        let mut cmd = Cmd::new("SESSION.TOUCH");
        cmd.arg(id).opt_secs("TTL", ttl);
        reply::flag(&self.request(&cmd).await?, "SESSION.TOUCH")
    }

    /// `SESSION.TTL id`: milliseconds until expiry, -2 if the session does not
    /// exist.
    pub async fn ttl_ms(&mut self, id: &str) -> Result<i64> {
        let mut cmd = Cmd::new("SESSION.TTL");
        cmd.arg(id);
        reply::int(&self.request(&cmd).await?, "SESSION.TTL")
    }

    /// `SESSION.INCR id key delta [CREATE] [FENCE t]`: returns
    /// `(new_value, version)`.
    pub async fn incr(
        &mut self,
        id: &str,
        key: impl AsRef<[u8]>,
        delta: i64,
        opts: &IncrOptions,
    ) -> Result<(i64, u64)> {
        let mut cmd = Cmd::new("SESSION.INCR");
        cmd.arg(id)
            .arg(key)
            .arg_i64(delta)
            .flag("CREATE", opts.create)
            .opt_fence(opts.fence);
        self.idempotent(&mut cmd);
        reply::incr_result(self.request(&cmd).await?)
    }

    /// `SESSION.CAS id key expected new [FENCE t]`.
    pub async fn cas(
        &mut self,
        id: &str,
        key: impl AsRef<[u8]>,
        expected: impl AsRef<[u8]>,
        new: impl AsRef<[u8]>,
        fence: Option<u64>,
    ) -> Result<CasResult> {
        let mut cmd = Cmd::new("SESSION.CAS");
        cmd.arg(id).arg(key).arg(expected).arg(new).opt_fence(fence);
        self.idempotent(&mut cmd);
        reply::cas_result(self.request(&cmd).await?)
    }

    /// `SESSION.REGENERATE id [GRACE s] [TO newid]`: returns the new id.
    pub async fn regenerate(
        &mut self,
        id: &str,
        grace: Option<Duration>,
        to: Option<&str>,
    ) -> Result<String> {
        let mut cmd = Cmd::new("SESSION.REGENERATE");
        cmd.arg(id).opt_secs("GRACE", grace);
        if let Some(to) = to {
            cmd.arg("TO").arg(to);
        }
        self.idempotent(&mut cmd);
        reply::string(self.request(&cmd).await?, "SESSION.REGENERATE")
    }

    /// `LOCK.ACQUIRE id [KEY k] [WAIT ms] [LEASE ms] [REQID rid] [CREATE]`.
    ///
    /// Fails with [`Error::Timeout`] when the wait runs out and
    /// [`Error::Deadlock`] when waiting would deadlock. `WAIT` is sent only
    /// when `opts.wait` is non-zero (zero is the server default: try once).
    ///
    /// The call blocks for up to `opts.wait`. Wrapping it in a client-side
    /// timeout that fires first drops the connection (see [`Error::Closed`]).
    pub async fn lock(&mut self, id: &str, opts: &LockOptions) -> Result<LockGrant> {
        let mut cmd = Cmd::new("LOCK.ACQUIRE");
        cmd.arg(id).opt_key(opts.key.as_deref());
        if !opts.wait.is_zero() {
            cmd.arg("WAIT").arg_u64(ms_ceil(opts.wait));
        }
        cmd.opt_ms("LEASE", opts.lease);
        if let Some(reqid) = &opts.reqid {
            // A retry with the same id adopts the grant (or the wait)
            // already made, never a second one: safe to fail over.
            cmd.arg("REQID").arg(reqid).mark_retryable();
        }
        cmd.flag("CREATE", opts.create);
        reply::lock_grant(self.request(&cmd).await?)
    }

    /// `LOCK.RELEASE id [KEY k] token`: true if released, false if `token` was
    /// no longer current.
    pub async fn unlock(&mut self, id: &str, key: Option<&[u8]>, token: u64) -> Result<bool> {
        let mut cmd = Cmd::new("LOCK.RELEASE");
        cmd.arg(id).opt_key(key).arg_u64(token);
        reply::flag(&self.request(&cmd).await?, "LOCK.RELEASE")
    }

    /// `LOCK.RENEW id [KEY k] token LEASE ms`: extends the lease. Fails with
    /// [`Error::Fenced`] when `token` is no longer current.
    pub async fn renew(
        &mut self,
        id: &str,
        key: Option<&[u8]>,
        token: u64,
        lease: Duration,
    ) -> Result<()> {
        let mut cmd = Cmd::new("LOCK.RENEW");
        cmd.arg(id)
            .opt_key(key)
            .arg_u64(token)
            .arg("LEASE")
            .arg_u64(ms_ceil(lease));
        let v = self.request(&cmd).await?;
        if reply::flag(&v, "LOCK.RENEW")? {
            Ok(())
        } else {
            Err(Error::Protocol(
                "LOCK.RENEW: replied 0 instead of 1 or FENCED".into(),
            ))
        }
    }

    /// `LOCK.ONCE id key [IFVER v] [WAIT ms] [LEASE ms]`: single-flight
    /// computation of one value. `if_version` 0 (the server default, not
    /// sent) means "compute if the key is absent"; `wait` zero is not sent.
    pub async fn once(
        &mut self,
        id: &str,
        key: impl AsRef<[u8]>,
        if_version: u64,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<OnceResult> {
        let mut cmd = Cmd::new("LOCK.ONCE");
        cmd.arg(id).arg(key);
        if if_version != 0 {
            cmd.arg("IFVER").arg_u64(if_version);
        }
        if !wait.is_zero() {
            cmd.arg("WAIT").arg_u64(ms_ceil(wait));
        }
        cmd.opt_ms("LEASE", lease);
        reply::once_result(self.request(&cmd).await?)
    }

    /// `LOCK.INFO [id]`: the locks of one session, or of all sessions.
    pub async fn lock_info(&mut self, id: Option<&str>) -> Result<Vec<LockInfo>> {
        let mut cmd = Cmd::new("LOCK.INFO");
        if let Some(id) = id {
            cmd.arg(id);
        }
        reply::lock_infos(self.request(&cmd).await?)
    }

    /// `LOCK.BREAK id [KEY k]` (admin): true if a lock was held and is now
    /// released; its holder is fenced.
    pub async fn break_lock(&mut self, id: &str, key: Option<&[u8]>) -> Result<bool> {
        let mut cmd = Cmd::new("LOCK.BREAK");
        cmd.arg(id).opt_key(key);
        reply::flag(&self.request(&cmd).await?, "LOCK.BREAK")
    }

    /// `INFO [section]`: the server's text report.
    pub async fn info(&mut self, section: Option<&str>) -> Result<String> {
        let mut cmd = Cmd::new("INFO");
        if let Some(section) = section {
            cmd.arg(section);
        }
        let b = reply::bytes(self.request(&cmd).await?, "INFO")?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// `CLIENT ID`.
    pub async fn client_id(&mut self) -> Result<i64> {
        let mut cmd = Cmd::new("CLIENT");
        cmd.arg("ID");
        reply::int(&self.request(&cmd).await?, "CLIENT ID")
    }
}

/// Sleeps `backoff` (never past `deadline`) and returns the next, doubled
/// up to 500 ms.
async fn pause(backoff: Duration, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(backoff.min(left)).await;
    (backoff * 2).min(Duration::from_millis(500))
}
