//! Connection and server commands: PING, ECHO, HELLO, AUTH, CLIENT, INFO,
//! SLOWLOG, BACKUP.SNAPSHOT, SELECT, COMMAND, RESET, QUIT, ACL.

use bytes::Bytes;

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Args, CmdError};
use crate::protocol::{Protocol, Reply};
use crate::state::Shared;

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
    /// The user logged in as (with `authed`).
    pub user: Option<Arc<crate::users::User>>,
    /// AUTH and HELLO AUTH attempts refused on this connection: each next
    /// refusal is answered later (see `connection.rs`).
    pub auth_failures: u32,
    /// CLIENT SETNAME.
    pub name: Option<String>,
    /// CLIENT SETINFO lib-name/lib-ver.
    pub lib: Option<String>,
    /// QUIT was received.
    pub quit: bool,
}

impl ConnState {
    /// Logs the connection in as `user` (CLIENT LIST shows it).
    pub fn log_in(&mut self, shared: &Shared, user: Arc<crate::users::User>) {
        if let Some(c) = shared.clients.lock().get_mut(&self.id) {
            c.user = Some(user.name.clone());
        }
        self.authed = true;
        self.user = Some(user);
    }

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

/// A connection or server command.
#[derive(Debug)]
pub enum ConnCommand {
    /// PING [msg]
    Ping(Option<Bytes>),
    /// ECHO msg
    Echo(Bytes),
    /// HELLO [ver [AUTH user pass] [SETNAME name]]
    Hello {
        /// Protocol version.
        version: Option<i64>,
        /// Credentials.
        auth: Option<(Bytes, Bytes)>,
        /// Client name.
        name: Option<String>,
    },
    /// AUTH [user] pass
    Auth(Option<Bytes>, Bytes),
    /// INFO [section]
    Info(Option<String>),
    /// CLIENT subcommand
    Client(ClientSub),
    /// SLOWLOG subcommand
    SlowLog(SlowLogSub),
    /// BACKUP.SNAPSHOT: the whole state, encoded (see [`crate::backup`]).
    BackupSnapshot,
    /// SELECT db
    Select(i64),
    /// COMMAND [sub …]
    Command(Option<String>),
    /// RESET: the connection as if new. Its locks are released and its
    /// waits cancelled (that part runs in the connection's task, through the
    /// cluster's log when there is one, before [`ConnCommand::execute`]); it
    /// gets a fresh CLIENT ID, goes back to RESP2 and, when a password is
    /// set, must AUTH again. Keeps its name. For pooled and persistent
    /// connections: nothing of one request reaches the next.
    Reset,
    /// QUIT
    Quit,
    /// CLUSTER.INFO (also `CLUSTER INFO`)
    ClusterInfo,
    /// ACL subcommand
    Acl(AclSub),
}

/// ACL subcommands.
#[derive(Debug)]
pub enum AclSub {
    /// ACL WHOAMI: the user logged in as.
    WhoAmI,
    /// ACL LIST: every user as a rule string, without secrets.
    List,
}

/// CLIENT subcommands.
#[derive(Debug)]
pub enum ClientSub {
    /// CLIENT ID
    Id,
    /// CLIENT SETNAME
    SetName(String),
    /// CLIENT GETNAME
    GetName,
    /// CLIENT SETINFO attr value
    SetInfo(String, String),
    /// CLIENT INFO
    Info,
    /// CLIENT LIST
    List,
    /// CLIENT KILL ip:port (the old form: OK or an error)
    KillAddr(String),
    /// CLIENT KILL [ID id] [ADDR ip:port] [SKIPME yes|no] (the number killed)
    Kill {
        /// Only this connection id.
        id: Option<u64>,
        /// Only this peer address.
        addr: Option<String>,
        /// Spare the connection that asks (default yes).
        skip_me: bool,
    },
}

/// SLOWLOG subcommands.
#[derive(Debug)]
pub enum SlowLogSub {
    /// SLOWLOG GET [count]: the newest `count` (10; -1: all).
    Get(Option<usize>),
    /// SLOWLOG LEN
    Len,
    /// SLOWLOG RESET
    Reset,
}

/// Whether the command named `name` (any case) is allowed before AUTH.
pub fn allowed_unauthenticated(name: &[u8]) -> bool {
    [&b"AUTH"[..], b"HELLO", b"QUIT", b"RESET"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

impl ConnCommand {
    /// Parses `name` if it is a connection command.
    ///
    /// # Errors
    /// Arity and syntax.
    pub fn parse(name: &str, a: &mut Args) -> Result<Option<Self>, CmdError> {
        Ok(Some(match name {
            "PING" => ConnCommand::Ping(a.maybe_bytes()),
            "ECHO" => ConnCommand::Echo(a.bytes()?),
            "HELLO" => {
                let version = if a.remaining() > 0 {
                    Some(a.i64()?)
                } else {
                    None
                };
                let (mut auth, mut name) = (None, None);
                while let Some(kw) = a.keyword() {
                    match kw.as_str() {
                        "AUTH" => auth = Some((a.bytes()?, a.bytes()?)),
                        "SETNAME" => name = Some(client_name(a)?),
                        other => {
                            return Err(CmdError::Syntax(format!(
                                "unknown option {other:?} for HELLO"
                            )));
                        }
                    }
                }
                ConnCommand::Hello {
                    version,
                    auth,
                    name,
                }
            }
            "AUTH" => match a.remaining() {
                1 => ConnCommand::Auth(None, a.bytes()?),
                2 => ConnCommand::Auth(Some(a.bytes()?), a.bytes()?),
                _ => return Err(CmdError::Arity("AUTH".into())),
            },
            "INFO" => ConnCommand::Info(a.keyword()),
            "CLIENT" => ConnCommand::Client(match a.keyword().as_deref() {
                Some("ID") => ClientSub::Id,
                Some("SETNAME") => ClientSub::SetName(client_name(a)?),
                Some("GETNAME") => ClientSub::GetName,
                Some("SETINFO") => {
                    ClientSub::SetInfo(a.string()?.to_ascii_lowercase(), a.string()?)
                }
                Some("INFO") => ClientSub::Info,
                Some("LIST") => ClientSub::List,
                Some("KILL") if a.remaining() == 1 => ClientSub::KillAddr(a.string()?),
                Some("KILL") => {
                    let (mut id, mut addr, mut skip_me) = (None, None, true);
                    while let Some(kw) = a.keyword() {
                        match kw.as_str() {
                            "ID" => id = Some(a.u64()?),
                            "ADDR" => addr = Some(a.string()?),
                            "SKIPME" => {
                                skip_me = match a.keyword().as_deref() {
                                    Some("YES") => true,
                                    Some("NO") => false,
                                    _ => return Err(CmdError::Syntax("SKIPME yes or no".into())),
                                }
                            }
                            other => {
                                return Err(CmdError::Syntax(format!(
                                    "unknown filter {other:?} for CLIENT KILL (ID, ADDR, SKIPME)"
                                )));
                            }
                        }
                    }
                    if id.is_none() && addr.is_none() {
                        return Err(CmdError::Arity("CLIENT KILL".into()));
                    }
                    ClientSub::Kill { id, addr, skip_me }
                }
                Some(other) => {
                    return Err(CmdError::Syntax(format!(
                        "unknown CLIENT subcommand {other:?}"
                    )));
                }
                None => return Err(CmdError::Arity("CLIENT".into())),
            }),
            "SLOWLOG" => ConnCommand::SlowLog(match a.keyword().as_deref() {
                Some("GET") => SlowLogSub::Get(match a.maybe_bytes() {
                    None => Some(10),
                    Some(n) => {
                        let n: i64 = std::str::from_utf8(&n)
                            .ok()
                            .and_then(|n| n.parse().ok())
                            .ok_or(CmdError::NotInteger)?;
                        match n {
                            -1 => None,
                            n => Some(usize::try_from(n).map_err(|_| {
                                CmdError::Other(
                                    "ERR",
                                    "count should be greater than or equal to -1".into(),
                                )
                            })?),
                        }
                    }
                }),
                Some("LEN") => SlowLogSub::Len,
                Some("RESET") => SlowLogSub::Reset,
                Some(other) => {
                    return Err(CmdError::Syntax(format!(
                        "unknown SLOWLOG subcommand {other:?}"
                    )));
                }
                None => return Err(CmdError::Arity("SLOWLOG".into())),
            }),
            "BACKUP.SNAPSHOT" => ConnCommand::BackupSnapshot,
            "SELECT" => ConnCommand::Select(a.i64()?),
            "COMMAND" => {
                let sub = a.keyword();
                while a.maybe_bytes().is_some() {}
                ConnCommand::Command(sub)
            }
            "QUIT" => ConnCommand::Quit,
            "RESET" => ConnCommand::Reset,
            "CLUSTER.INFO" => ConnCommand::ClusterInfo,
            "CLUSTER" => match a.keyword().as_deref() {
                Some("INFO") => ConnCommand::ClusterInfo,
                Some(other) => {
                    return Err(CmdError::Syntax(format!(
                        "unknown CLUSTER subcommand {other:?} (sessiond has CLUSTER INFO)"
                    )));
                }
                None => return Err(CmdError::Arity("CLUSTER".into())),
            },
            "ACL" => ConnCommand::Acl(match a.keyword().as_deref() {
                Some("WHOAMI") => AclSub::WhoAmI,
                Some("LIST") => AclSub::List,
                Some(other) => {
                    return Err(CmdError::Syntax(format!(
                        "unknown ACL subcommand {other:?} (sessiond has ACL WHOAMI and ACL LIST)"
                    )));
                }
                None => return Err(CmdError::Arity("ACL".into())),
            }),
            _ => return Ok(None),
        }))
    }

    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            ConnCommand::Ping(_) => "PING",
            ConnCommand::Echo(_) => "ECHO",
            ConnCommand::Hello { .. } => "HELLO",
            ConnCommand::Auth(..) => "AUTH",
            ConnCommand::Info(_) => "INFO",
            ConnCommand::Client(_) => "CLIENT",
            ConnCommand::SlowLog(_) => "SLOWLOG",
            ConnCommand::BackupSnapshot => "BACKUP.SNAPSHOT",
            ConnCommand::Select(_) => "SELECT",
            ConnCommand::Command(_) => "COMMAND",
            ConnCommand::Quit => "QUIT",
            ConnCommand::Reset => "RESET",
            ConnCommand::ClusterInfo => "CLUSTER.INFO",
            ConnCommand::Acl(_) => "ACL",
        }
    }

    /// Applies the command to the connection.
    pub fn execute(self, shared: &Shared, conn: &mut ConnState) -> Reply {
        match self {
            ConnCommand::Ping(None) => Reply::Simple("PONG".into()),
            ConnCommand::Ping(Some(m)) | ConnCommand::Echo(m) => Reply::Bulk(m),
            ConnCommand::Hello {
                version,
                auth,
                name,
            } => {
                let proto = match version {
                    None => conn.proto,
                    Some(2) => Protocol::Resp2,
                    Some(3) => Protocol::Resp3,
                    Some(_) => return Reply::error("NOPROTO", "unsupported protocol version"),
                };
                if let Some((user, pass)) = auth {
                    match authenticate(shared, conn, Some(&user), &pass) {
                        Ok(u) => conn.log_in(shared, u),
                        Err(e) => return e,
                    }
                }
                if !conn.authed {
                    return Reply::error(
                        "NOAUTH",
                        "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    );
                }
                conn.proto = proto;
                if let Some(n) = name {
                    conn.set_name(shared, Some(n));
                }
                Reply::Map(vec![
                    (Reply::bulk("server"), Reply::bulk("sessiond")),
                    (
                        Reply::bulk("version"),
                        Reply::bulk(env!("CARGO_PKG_VERSION")),
                    ),
                    (
                        Reply::bulk("proto"),
                        Reply::Int(if proto == Protocol::Resp3 { 3 } else { 2 }),
                    ),
                    (Reply::bulk("id"), Reply::uint(conn.id)),
                    (Reply::bulk("mode"), Reply::bulk("standalone")),
                    (Reply::bulk("role"), Reply::bulk("master")),
                    (Reply::bulk("modules"), Reply::Array(vec![])),
                ])
            }
            ConnCommand::Auth(user, pass) => {
                match authenticate(shared, conn, user.as_ref(), &pass) {
                    Ok(u) => {
                        conn.log_in(shared, u);
                        Reply::ok()
                    }
                    Err(e) => e,
                }
            }
            ConnCommand::Acl(AclSub::WhoAmI) => conn
                .user
                .as_ref()
                .map_or(Reply::Nil, |u| Reply::bulk(u.name.clone())),
            ConnCommand::Acl(AclSub::List) => Reply::Array(
                shared
                    .config
                    .users
                    .iter()
                    .map(|u| Reply::bulk(u.rule()))
                    .collect(),
            ),
            ConnCommand::Info(section) => {
                Reply::bulk(crate::info::render(shared, section.as_deref()))
            }
            ConnCommand::Client(sub) => match sub {
                ClientSub::Id => Reply::uint(conn.id),
                ClientSub::SetName(n) => {
                    conn.set_name(shared, (!n.is_empty()).then_some(n));
                    Reply::ok()
                }
                ClientSub::GetName => conn.name.clone().map_or(Reply::Nil, Reply::bulk),
                ClientSub::SetInfo(attr, value) => match attr.as_str() {
                    "lib-name" | "lib-ver" => {
                        conn.set_lib(shared, &attr, value);
                        Reply::ok()
                    }
                    _ => Reply::error("ERR", format!("Unrecognized option '{attr}'")),
                },
                ClientSub::Info => Reply::bulk(format!(
                    "id={} addr={} name={} lib={}\n",
                    conn.id,
                    conn.addr,
                    conn.name.as_deref().unwrap_or(""),
                    conn.lib.as_deref().unwrap_or("")
                )),
                ClientSub::List => Reply::bulk(client_list(shared)),
                ClientSub::KillAddr(addr) => {
                    if kill_clients(shared, conn.id, None, Some(&addr), false) > 0 {
                        Reply::ok()
                    } else {
                        Reply::error("ERR", "No such client")
                    }
                }
                ClientSub::Kill { id, addr, skip_me } => {
                    Reply::uint(kill_clients(shared, conn.id, id, addr.as_deref(), skip_me))
                }
            },
            ConnCommand::SlowLog(SlowLogSub::Get(n)) => Reply::Array(
                shared
                    .slowlog
                    .get(n)
                    .into_iter()
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::uint(e.id),
                            Reply::uint(e.unix_time),
                            Reply::uint(e.micros),
                            Reply::Array(e.args.into_iter().map(Reply::Bulk).collect()),
                            Reply::bulk(e.addr.to_string()),
                            Reply::bulk(e.name),
                        ])
                    })
                    .collect(),
            ),
            ConnCommand::SlowLog(SlowLogSub::Len) => Reply::uint(shared.slowlog.len() as u64),
            ConnCommand::SlowLog(SlowLogSub::Reset) => {
                shared.slowlog.reset();
                Reply::ok()
            }
            ConnCommand::BackupSnapshot => {
                Reply::Bulk(Bytes::from(crate::backup::snapshot(shared)))
            }
            ConnCommand::Select(0) => Reply::ok(),
            ConnCommand::Select(_) => Reply::error(
                "ERR",
                "DB index is out of range (sessiond has one database)",
            ),
            ConnCommand::Command(Some(sub)) if sub == "COUNT" => Reply::Int(0),
            ConnCommand::Command(Some(sub)) if sub == "DOCS" => Reply::Map(vec![]),
            ConnCommand::Command(_) => Reply::Array(vec![]),
            ConnCommand::Quit => {
                conn.quit = true;
                Reply::ok()
            }
            ConnCommand::Reset => {
                // The locks, waits and id were dealt with by the caller.
                conn.proto = Protocol::Resp2;
                conn.authed = shared.config.requirepass.is_none();
                Reply::Simple("RESET".into())
            }
            ConnCommand::ClusterInfo => Reply::bulk(match shared.replication() {
                Some(r) => r.info(),
                None => "node_id:0\r\nrole:standalone\r\n".to_owned(),
            }),
        }
    }
}

/// CLIENT LIST: one line per connection, `key=value` fields separated by
/// spaces as Redis writes them (redis-py's `client_list()` reads them), plus
/// `locks=` (the locks it holds) and `waits=` (those it is queued for), each
/// a comma-separated list of `session` or `session/key` (bytes outside
/// printable ASCII, and ` `, `,`, `\`, written `\xHH`).
fn client_list(shared: &Shared) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut holds: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut waits: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    shared.read(|e, _| {
        for (session, holders, waiters) in e.locks().inspect(None) {
            for g in holders {
                holds
                    .entry(g.owner)
                    .or_default()
                    .push(lock_name(session.as_str(), &g.scope));
            }
            for w in waiters {
                waits
                    .entry(w.owner)
                    .or_default()
                    .push(lock_name(session.as_str(), &w.scope));
            }
        }
    });
    let mut clients: Vec<_> = shared.clients.lock().values().cloned().collect();
    clients.sort_by_key(|c| c.id);
    let mut out = String::new();
    for c in clients {
        let (lib_name, lib_ver) = match c.lib.as_deref() {
            Some(l) => l.split_once(' ').unwrap_or((l, "")),
            None => ("", ""),
        };
        let list =
            |m: &BTreeMap<u64, Vec<String>>| m.get(&c.id).map_or(String::new(), |v| v.join(","));
        let _ = writeln!(
            out,
            "id={} addr={} name={} age={} db=0 user={} lib-name={} lib-ver={} locks={} waits={}",
            c.id,
            c.addr,
            c.name.as_deref().unwrap_or(""),
            c.connected.elapsed().as_secs(),
            c.user.as_deref().unwrap_or(""),
            lib_name,
            lib_ver,
            list(&holds),
            list(&waits),
        );
    }
    out
}

fn lock_name(session: &str, scope: &sessiond_core::locks::Scope) -> String {
    match scope {
        sessiond_core::locks::Scope::Session => session.to_owned(),
        sessiond_core::locks::Scope::Key(k) => {
            let mut s = format!("{session}/");
            for &b in k {
                if b.is_ascii_graphic() && b != b',' && b != b'\\' {
                    s.push(char::from(b));
                } else {
                    s.push_str(&format!("\\x{b:02x}"));
                }
            }
            s
        }
    }
}

/// Closes the connections that match every filter given (`skip_me`: not
/// the one asking, `me`); returns how many.
fn kill_clients(
    shared: &Shared,
    me: u64,
    id: Option<u64>,
    addr: Option<&str>,
    skip_me: bool,
) -> u64 {
    let clients = shared.clients.lock();
    let mut killed = 0;
    for c in clients.values() {
        let matches = id.is_none_or(|id| c.id == id)
            && addr.is_none_or(|a| c.addr.to_string() == a)
            && !(skip_me && c.id == me);
        if matches && !c.kill.is_cancelled() {
            c.kill.cancel();
            killed += 1;
        }
    }
    killed
}

fn client_name(a: &mut Args) -> Result<String, CmdError> {
    let name = a.string()?;
    if name.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
        return Err(CmdError::Other(
            "ERR",
            "Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    Ok(name)
}

/// The user `user` (or `default`) if `pass` is its password (compared as
/// hashes in constant time). A refusal is logged with the peer address and
/// counted.
fn authenticate(
    shared: &Shared,
    conn: &mut ConnState,
    user: Option<&Bytes>,
    pass: &[u8],
) -> Result<Arc<crate::users::User>, Reply> {
    let users = &shared.config.users;
    let name = match user {
        Some(u) => String::from_utf8_lossy(u).into_owned(),
        None => crate::users::DEFAULT_USER.to_owned(),
    };
    let found = users.get(&name);
    if user.is_none() && found.is_some_and(|u| u.nopass()) {
        return Err(Reply::error(
            "ERR",
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    match found {
        Some(u) if u.accepts(pass) => Ok(u.clone()),
        _ => {
            conn.auth_failures = conn.auth_failures.saturating_add(1);
            shared.metrics.auth_failures.inc();
            tracing::warn!(
                addr = %conn.addr,
                user = %name,
                failures = conn.auth_failures,
                "authentication failed"
            );
            Err(Reply::error(
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            ))
        }
    }
}
