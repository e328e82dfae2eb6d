//! Typed options, results, and the reply-shape parsers that build them.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::value::Value;

/// Options for [`Client::new_session`](crate::Client::new_session).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewOptions {
    /// Idle TTL (`TTL`, whole seconds, rounded up); server default when `None`.
    pub ttl: Option<Duration>,
    /// Absolute lifetime from creation (`LIFETIME`, whole seconds, rounded up).
    pub lifetime: Option<Duration>,
}

/// Options for [`Client::read`](crate::Client::read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Create the session empty if it does not exist (`CREATE`).
    pub create: bool,
    /// `TTL` (whole seconds, rounded up).
    pub ttl: Option<Duration>,
    /// `LIFETIME` (whole seconds, rounded up).
    pub lifetime: Option<Duration>,
    /// `KEYS …`: only return these keys (absent ones come back with version 0
    /// and no value). `None` returns every field. `Some(vec![])` is sent as a
    /// bare `KEYS`, which the server is free to reject.
    pub keys: Option<Vec<Bytes>>,
}

/// A session as returned by `SESSION.READ` (and inside lock grants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionData {
    /// The session's current id (differs from the id asked for when that was
    /// an alias left by `SESSION.REGENERATE`).
    pub id: String,
    /// The session version (version of its latest change).
    pub version: u64,
    /// True if this command created the session.
    pub created: bool,
    /// The fields, in the order the server sent them.
    pub fields: Vec<Field>,
}

impl SessionData {
    /// The value of `key`, if the field is present with a value.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&Bytes> {
        self.field(key).and_then(|f| f.value.as_ref())
    }

    /// The field named `key`, if it is in the reply (with `KEYS`, absent keys
    /// are in the reply with version 0 and no value).
    pub fn field(&self, key: impl AsRef<[u8]>) -> Option<&Field> {
        let key = key.as_ref();
        self.fields.iter().find(|f| f.key.as_ref() == key)
    }

    /// The version of `key`: 0 when absent.
    pub fn version_of(&self, key: impl AsRef<[u8]>) -> u64 {
        self.field(key).map_or(0, |f| f.version)
    }
}

/// One field of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Field {
    /// The key.
    pub key: Bytes,
    /// The version of the commit that last wrote it; 0 when absent.
    pub version: u64,
    /// The value; `None` when absent.
    pub value: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Set {
        key: Bytes,
        value: Bytes,
        if_version: Option<u64>,
    },
    Del {
        key: Bytes,
        if_version: Option<u64>,
    },
}

/// A delta for [`Client::commit`](crate::Client::commit), built with chained
/// calls:
///
/// ```
/// use sessiond_client::Commit;
/// let commit = Commit::new().create().set("user", "alice").del_if("cart", 17);
/// # let _ = commit;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    create: bool,
    ttl: Option<Duration>,
    lifetime: Option<Duration>,
    fence: Option<u64>,
    unlock: bool,
    ops: Vec<Op>,
}

impl Commit {
    /// An empty commit.
    pub fn new() -> Commit {
        Commit::default()
    }

    /// `CREATE`: create the session if it does not exist.
    pub fn create(mut self) -> Commit {
        self.create = true;
        self
    }

    /// `TTL` (whole seconds, rounded up).
    pub fn ttl(mut self, ttl: Duration) -> Commit {
        self.ttl = Some(ttl);
        self
    }

    /// `LIFETIME` (whole seconds, rounded up).
    pub fn lifetime(mut self, lifetime: Duration) -> Commit {
        self.lifetime = Some(lifetime);
        self
    }

    /// `FENCE token`: only valid while `token` is the current lock grant.
    pub fn fence(mut self, token: u64) -> Commit {
        self.fence = Some(token);
        self
    }

    /// `UNLOCK`: release the fenced lock if the commit succeeds.
    pub fn unlock(mut self) -> Commit {
        self.unlock = true;
        self
    }

    /// `SET key value`.
    pub fn set(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Commit {
        self.ops.push(Op::Set {
            key: key.into(),
            value: value.into(),
            if_version: None,
        });
        self
    }

    /// `SET key value IFVER version` (`version` 0: the key must be absent).
    pub fn set_if(
        mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        version: u64,
    ) -> Commit {
        self.ops.push(Op::Set {
            key: key.into(),
            value: value.into(),
            if_version: Some(version),
        });
        self
    }

    /// `DEL key`.
    pub fn del(mut self, key: impl Into<Bytes>) -> Commit {
        self.ops.push(Op::Del {
            key: key.into(),
            if_version: None,
        });
        self
    }

    /// `DEL key IFVER version`.
    pub fn del_if(mut self, key: impl Into<Bytes>, version: u64) -> Commit {
        self.ops.push(Op::Del {
            key: key.into(),
            if_version: Some(version),
        });
        self
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there are no ops (the server rejects such a commit).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn write_args(&self, cmd: &mut crate::cmd::Cmd) {
        cmd.flag("CREATE", self.create)
            .opt_secs("TTL", self.ttl)
            .opt_secs("LIFETIME", self.lifetime)
            .opt_fence(self.fence)
            .flag("UNLOCK", self.unlock);
        for op in &self.ops {
            let if_version = match op {
                Op::Set {
                    key,
                    value,
                    if_version,
                } => {
                    cmd.arg("SET").arg(key).arg(value);
                    if_version
                }
                Op::Del { key, if_version } => {
                    cmd.arg("DEL").arg(key);
                    if_version
                }
            };
            if let Some(v) = if_version {
                cmd.arg("IFVER").arg_u64(*v);
            }
        }
    }
}

/// Reply of [`Client::commit`](crate::Client::commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitResult {
    /// The session version after the commit.
    pub version: u64,
    /// The version each op wrote, in op order (0 for `DEL`).
    pub op_versions: Vec<u64>,
}

/// Options for [`Client::incr`](crate::Client::incr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncrOptions {
    /// `CREATE`: create the session if it does not exist.
    pub create: bool,
    /// `FENCE token`.
    pub fence: Option<u64>,
}

/// Reply of [`Client::cas`](crate::Client::cas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasResult {
    /// The value was swapped; `version` is the key's new version.
    Swapped {
        /// The key's new version.
        version: u64,
    },
    /// The current value did not match; nothing changed.
    Mismatch {
        /// The key's current version (0 when absent).
        version: u64,
        /// The key's current value (`None` when absent).
        current: Option<Bytes>,
    },
}

impl CasResult {
    /// True for [`CasResult::Swapped`].
    pub fn is_swapped(&self) -> bool {
        matches!(self, CasResult::Swapped { .. })
    }

    /// The version in either variant.
    pub fn version(&self) -> u64 {
        match self {
            CasResult::Swapped { version } | CasResult::Mismatch { version, .. } => *version,
        }
    }
}

/// Options for [`Client::lock`](crate::Client::lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// `KEY key`: lock one key instead of the whole session.
    pub key: Option<Bytes>,
    /// `WAIT ms` (rounded up): how long to wait; zero tries once.
    pub wait: Duration,
    /// `LEASE ms` (rounded up).
    pub lease: Option<Duration>,
    /// `REQID rid`: makes the acquire idempotent across retries.
    pub reqid: Option<String>,
    /// `CREATE`: create the session if it does not exist.
    pub create: bool,
}

/// A granted lock: reply of [`Client::lock`](crate::Client::lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGrant {
    /// The fencing token.
    pub token: u64,
    /// What `SESSION.READ` would return for the locked data (all fields for a
    /// session lock, the one key for a key lock); `None` when the session does
    /// not exist and `CREATE` was not given.
    pub data: Option<SessionData>,
}

/// Reply of [`Client::once`](crate::Client::once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnceResult {
    /// Someone already computed the value (token 0); no lock was taken.
    Computed {
        /// The key's version.
        version: u64,
        /// The key's value (`None` if it is now absent).
        value: Option<Bytes>,
    },
    /// This caller holds the key lock and must compute, then commit with
    /// `Commit::new().fence(token).unlock().set(key, …)`.
    MustCompute {
        /// The fencing token of the key lock.
        token: u64,
        /// The key's current version.
        version: u64,
        /// The key's current value.
        value: Option<Bytes>,
    },
}

/// Whether a lock covers a whole session or one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockScope {
    /// A session lock.
    Session,
    /// A key lock.
    Key,
}

/// One lock, from [`Client::lock_info`](crate::Client::lock_info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The session id.
    pub session: String,
    /// Session or key lock.
    pub scope: LockScope,
    /// The key of a key lock; `None` for a session lock.
    pub key: Option<Bytes>,
    /// The current fencing token.
    pub token: u64,
    /// The holder's `CLIENT ID`.
    pub holder_client_id: i64,
    /// The holder's client name (`None` when nil or empty).
    pub holder_name: Option<String>,
    /// The holder's address.
    pub holder_addr: String,
    /// How long the lock has been held.
    pub held_ms: u64,
    /// Lease left in ms, -1 without a lease.
    pub lease_left_ms: i64,
    /// Waiters, in queue order.
    pub waiters: Vec<LockWaiter>,
}

/// A connection waiting for a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockWaiter {
    /// The waiter's `CLIENT ID`.
    pub client_id: i64,
    /// The waiter's client name (`None` when nil or empty).
    pub name: Option<String>,
    /// The waiter's address.
    pub addr: String,
    /// What it waits for.
    pub scope: LockScope,
    /// The key it waits for (`None` for a session lock).
    pub key: Option<Bytes>,
    /// How long it has waited.
    pub waited_ms: u64,
}

// ---------------------------------------------------------------------------
// Reply-shape parsers. They never panic: a reply of the wrong shape is an
// `Error::Protocol` naming the command and what was expected.

fn bad(what: &str, expected: &str, got: &Value) -> Error {
    Error::Protocol(format!(
        "{what}: expected {expected}, got {} {got:?}",
        got.kind()
    ))
}

/// An array of at least `min` elements (extra trailing elements are ignored
/// so that the server may append fields later).
pub(crate) fn array(v: Value, min: usize, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) if a.len() >= min => Ok(a),
        other => Err(bad(what, &format!("an array of {min}+ elements"), &other)),
    }
}

/// An integer; RESP3 booleans count as 0/1 and decimal strings are accepted.
pub(crate) fn int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Bulk(_) | Value::Simple(_) => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(what, "an integer", v)),
        other => Err(bad(what, "an integer", other)),
    }
}

/// A non-negative integer.
pub(crate) fn uint(v: &Value, what: &str) -> Result<u64> {
    u64::try_from(int(v, what)?).map_err(|_| bad(what, "a non-negative integer", v))
}

/// `0`/`1` (or a RESP3 boolean).
pub(crate) fn flag(v: &Value, what: &str) -> Result<bool> {
    match int(v, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(what, "0 or 1", v)),
    }
}

/// A bulk or simple string, as bytes.
pub(crate) fn bytes(v: Value, what: &str) -> Result<Bytes> {
    match v {
        Value::Bulk(b) => Ok(b),
        Value::Simple(s) => Ok(Bytes::from(s)),
        other => Err(bad(what, "a string", &other)),
    }
}

/// A string or nil.
pub(crate) fn opt_bytes(v: Value, what: &str) -> Result<Option<Bytes>> {
    match v {
        Value::Nil => Ok(None),
        v => bytes(v, what).map(Some),
    }
}

/// A UTF-8 string.
pub(crate) fn string(v: Value, what: &str) -> Result<String> {
    match v {
        Value::Simple(s) => Ok(s),
        Value::Bulk(b) => String::from_utf8(b.to_vec())
            .map_err(|_| Error::Protocol(format!("{what}: expected UTF-8 text"))),
        other => Err(bad(what, "a string", &other)),
    }
}

/// A string, lossily decoded; `None` when nil or empty.
fn opt_name(v: Value, what: &str) -> Result<Option<String>> {
    Ok(opt_bytes(v, what)?
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A simple `OK` (or any string: some servers answer `+OK` as bulk).
pub(crate) fn ok(v: Value, what: &str) -> Result<()> {
    match &v {
        Value::Simple(_) | Value::Bulk(_) if v.as_bytes() == Some(b"OK") => Ok(()),
        other => Err(bad(what, "OK", other)),
    }
}

/// `SESSION.READ` reply (also the `read` part of lock grants).
pub(crate) fn session(v: Value, what: &str) -> Result<Option<SessionData>> {
    if v.is_nil() {
        return Ok(None);
    }
    let mut it = array(v, 4, what)?.into_iter();
    let (Some(id), Some(version), Some(created), Some(fields)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Error::Protocol(format!("{what}: short array")));
    };
    let raw = match fields {
        Value::Array(a) if a.len() % 3 == 0 => a,
        other => {
            return Err(bad(
                what,
                "a flat array of key, version, value triples",
                &other,
            ));
        }
    };
    let mut fields = Vec::with_capacity(raw.len() / 3);
    let mut raw = raw.into_iter();
    while let (Some(key), Some(version), Some(value)) = (raw.next(), raw.next(), raw.next()) {
        fields.push(Field {
            key: bytes(key, what)?,
            version: uint(&version, what)?,
            value: opt_bytes(value, what)?,
        });
    }
    Ok(Some(SessionData {
        id: string(id, what)?,
        version: uint(&version, what)?,
        created: flag(&created, what)?,
        fields,
    }))
}

/// `SESSION.COMMIT` reply.
pub(crate) fn commit_result(v: Value) -> Result<CommitResult> {
    const WHAT: &str = "SESSION.COMMIT";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(version), Some(ops)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let op_versions = array(ops, 0, WHAT)?
        .iter()
        .map(|v| uint(v, WHAT))
        .collect::<Result<_>>()?;
    Ok(CommitResult {
        version: uint(&version, WHAT)?,
        op_versions,
    })
}

/// `SESSION.INCR` reply.
pub(crate) fn incr_result(v: Value) -> Result<(i64, u64)> {
    const WHAT: &str = "SESSION.INCR";
    let a = array(v, 2, WHAT)?;
    Ok((int(&a[0], WHAT)?, uint(&a[1], WHAT)?))
}

/// `SESSION.CAS` reply.
pub(crate) fn cas_result(v: Value) -> Result<CasResult> {
    const WHAT: &str = "SESSION.CAS";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(swapped), Some(version)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let version = uint(&version, WHAT)?;
    if flag(&swapped, WHAT)? {
        Ok(CasResult::Swapped { version })
    } else {
        let current = match it.next() {
            Some(v) => opt_bytes(v, WHAT)?,
            None => return Err(Error::Protocol(format!("{WHAT}: mismatch without value"))),
        };
        Ok(CasResult::Mismatch { version, current })
    }
}

/// `LOCK.ACQUIRE` reply.
pub(crate) fn lock_grant(v: Value) -> Result<LockGrant> {
    const WHAT: &str = "LOCK.ACQUIRE";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(token), Some(read)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    Ok(LockGrant {
        token: uint(&token, WHAT)?,
        data: session(read, WHAT)?,
    })
}

/// `LOCK.ONCE` reply.
pub(crate) fn once_result(v: Value) -> Result<OnceResult> {
    const WHAT: &str = "LOCK.ONCE";
    let mut it = array(v, 3, WHAT)?.into_iter();
    let (Some(token), Some(version), Some(value)) = (it.next(), it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let token = uint(&token, WHAT)?;
    let version = uint(&version, WHAT)?;
    let value = opt_bytes(value, WHAT)?;
    Ok(if token == 0 {
        OnceResult::Computed { version, value }
    } else {
        OnceResult::MustCompute {
            token,
            version,
            value,
        }
    })
}

fn scope(v: Value, what: &str) -> Result<LockScope> {
    let s = bytes(v, what)?;
    if s.eq_ignore_ascii_case(b"session") {
        Ok(LockScope::Session)
    } else if s.eq_ignore_ascii_case(b"key") {
        Ok(LockScope::Key)
    } else {
        Err(Error::Protocol(format!(
            "{what}: unknown lock scope {:?}",
            String::from_utf8_lossy(&s)
        )))
    }
}

/// `LOCK.INFO` reply.
pub(crate) fn lock_infos(v: Value) -> Result<Vec<LockInfo>> {
    const WHAT: &str = "LOCK.INFO";
    if v.is_nil() {
        return Ok(Vec::new());
    }
    array(v, 0, WHAT)?
        .into_iter()
        .map(|entry| {
            let a: [Value; 10] = take_n(array(entry, 10, WHAT)?);
            let [
                session,
                scope_v,
                key,
                token,
                client_id,
                name,
                addr,
                held,
                lease,
                waiters,
            ] = a;
            let waiters = array(waiters, 0, WHAT)?
                .into_iter()
                .map(|w| {
                    let [client_id, name, addr, scope_v, key, waited] = take_n(array(w, 6, WHAT)?);
                    Ok(LockWaiter {
                        client_id: int(&client_id, WHAT)?,
                        name: opt_name(name, WHAT)?,
                        addr: string(addr, WHAT)?,
                        scope: scope(scope_v, WHAT)?,
                        key: opt_bytes(key, WHAT)?,
                        waited_ms: uint(&waited, WHAT)?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(LockInfo {
                session: string(session, WHAT)?,
                scope: scope(scope_v, WHAT)?,
                key: opt_bytes(key, WHAT)?,
                token: uint(&token, WHAT)?,
                holder_client_id: int(&client_id, WHAT)?,
                holder_name: opt_name(name, WHAT)?,
                holder_addr: string(addr, WHAT)?,
                held_ms: uint(&held, WHAT)?,
                lease_left_ms: int(&lease, WHAT)?,
                waiters,
            })
        })
        .collect()
}

/// The first `N` elements of `v` (which the caller checked has at least `N`);
/// missing ones are filled with nil, which then fails the shape checks.
fn take_n<const N: usize>(v: Vec<Value>) -> [Value; N] {
    let mut it = v.into_iter();
    std::array::from_fn(|_| it.next().unwrap_or(Value::Nil))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn i(n: i64) -> Value {
        Value::Int(n)
    }
    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }

    #[test]
    fn session_reply() {
        assert_eq!(session(Value::Nil, "t").ok(), Some(None));
        let v = arr(vec![
            b("demo1"),
            i(12),
            i(0),
            arr(vec![
                b("user"),
                i(10),
                b("alice"),
                b("missing"),
                i(0),
                Value::Nil,
            ]),
        ]);
        let s = session(v, "t").ok().flatten().expect("session");
        assert_eq!(s.id, "demo1");
        assert_eq!(s.version, 12);
        assert!(!s.created);
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.get("user").map(|v| &v[..]), Some(&b"alice"[..]));
        assert_eq!(s.get("missing"), None);
        assert_eq!(s.field("missing").map(|f| f.version), Some(0));
        assert_eq!(s.version_of("user"), 10);
        assert_eq!(s.version_of("nope"), 0);
        assert_eq!(s.get(b"nope"), None);

        // RESP3 boolean for `created`, empty fields.
        let v = arr(vec![b("x"), i(0), Value::Bool(true), arr(vec![])]);
        let s = session(v, "t").ok().flatten().expect("session");
        assert!(s.created);
        assert!(s.fields.is_empty());
    }

    #[test]
    fn bad_session_replies_are_protocol_errors() {
        let bad_replies = vec![
            i(1),
            arr(vec![]),
            arr(vec![b("x"), i(0), i(0)]),
            arr(vec![b("x"), i(0), i(0), arr(vec![b("k"), i(1)])]),
            arr(vec![b("x"), i(-1), i(0), arr(vec![])]),
            arr(vec![b("x"), i(0), i(2), arr(vec![])]),
            arr(vec![i(5), i(0), i(0), arr(vec![])]),
            arr(vec![b("x"), i(0), i(0), b("fields")]),
            arr(vec![b("x"), i(0), i(0), arr(vec![i(1), i(1), Value::Nil])]),
            arr(vec![
                b("x"),
                i(0),
                i(0),
                arr(vec![b("k"), b("v"), Value::Nil]),
            ]),
            arr(vec![b("x"), i(0), i(0), arr(vec![b("k"), i(1), i(3)])]),
            arr(vec![
                Value::Bulk(Bytes::from_static(b"\xff")),
                i(0),
                i(0),
                arr(vec![]),
            ]),
        ];
        for v in bad_replies {
            assert!(
                matches!(session(v.clone(), "t"), Err(Error::Protocol(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn commit_incr_cas() {
        let r = commit_result(arr(vec![i(9), arr(vec![i(9), i(0)])]));
        assert_eq!(
            r.ok(),
            Some(CommitResult {
                version: 9,
                op_versions: vec![9, 0]
            })
        );
        assert!(commit_result(arr(vec![i(9)])).is_err());
        assert!(commit_result(arr(vec![i(9), i(9)])).is_err());
        assert!(commit_result(Value::Nil).is_err());

        assert_eq!(incr_result(arr(vec![i(-5), i(3)])).ok(), Some((-5, 3)));
        assert!(incr_result(arr(vec![i(1)])).is_err());

        assert_eq!(
            cas_result(arr(vec![i(1), i(7)])).ok(),
            Some(CasResult::Swapped { version: 7 })
        );
        let m = cas_result(arr(vec![i(0), i(7), b("43")]));
        assert_eq!(
            m.ok(),
            Some(CasResult::Mismatch {
                version: 7,
                current: Some(Bytes::from_static(b"43"))
            })
        );
        assert_eq!(
            cas_result(arr(vec![i(0), i(0), Value::Nil])).ok(),
            Some(CasResult::Mismatch {
                version: 0,
                current: None
            })
        );
        assert!(cas_result(arr(vec![i(0), i(0)])).is_err());
        assert!(cas_result(arr(vec![i(2), i(0)])).is_err());
        assert!(CasResult::Swapped { version: 1 }.is_swapped());
        assert_eq!(
            CasResult::Mismatch {
                version: 4,
                current: None
            }
            .version(),
            4
        );
    }

    #[test]
    fn lock_and_once() {
        let g = lock_grant(arr(vec![
            i(17),
            arr(vec![
                b("demo1"),
                i(3),
                i(0),
                arr(vec![b("visits"), i(3), b("43")]),
            ]),
        ]))
        .expect("grant");
        assert_eq!(g.token, 17);
        assert_eq!(
            g.data
                .as_ref()
                .and_then(|d| d.get("visits"))
                .map(|v| &v[..]),
            Some(&b"43"[..])
        );
        let g = lock_grant(arr(vec![i(18), Value::Nil])).expect("grant");
        assert_eq!(g.data, None);
        assert!(lock_grant(arr(vec![i(-1), Value::Nil])).is_err());
        assert!(lock_grant(i(1)).is_err());

        assert_eq!(
            once_result(arr(vec![i(0), i(5), b("tok")])).ok(),
            Some(OnceResult::Computed {
                version: 5,
                value: Some(Bytes::from_static(b"tok"))
            })
        );
        assert_eq!(
            once_result(arr(vec![i(21), i(0), Value::Nil])).ok(),
            Some(OnceResult::MustCompute {
                token: 21,
                version: 0,
                value: None
            })
        );
        assert!(once_result(arr(vec![i(21), i(0)])).is_err());
    }

    #[test]
    fn lock_info_reply() {
        let waiter = arr(vec![
            i(8),
            b(""),
            b("127.0.0.1:5000"),
            b("key"),
            b("k"),
            i(12),
        ]);
        let v = arr(vec![
            arr(vec![
                b("s1"),
                Value::Simple("session".into()),
                Value::Nil,
                i(40),
                i(7),
                b("web1"),
                b("127.0.0.1:4000"),
                i(100),
                i(-1),
                arr(vec![waiter]),
            ]),
            arr(vec![
                b("s2"),
                b("key"),
                b("k"),
                i(41),
                i(9),
                Value::Nil,
                b("[::1]:1"),
                i(0),
                i(250),
                arr(vec![]),
            ]),
        ]);
        let infos = lock_infos(v).expect("infos");
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].session, "s1");
        assert_eq!(infos[0].scope, LockScope::Session);
        assert_eq!(infos[0].key, None);
        assert_eq!(infos[0].token, 40);
        assert_eq!(infos[0].holder_client_id, 7);
        assert_eq!(infos[0].holder_name.as_deref(), Some("web1"));
        assert_eq!(infos[0].lease_left_ms, -1);
        assert_eq!(
            infos[0].waiters,
            vec![LockWaiter {
                client_id: 8,
                name: None,
                addr: "127.0.0.1:5000".into(),
                scope: LockScope::Key,
                key: Some(Bytes::from_static(b"k")),
                waited_ms: 12,
            }]
        );
        assert_eq!(infos[1].scope, LockScope::Key);
        assert_eq!(infos[1].holder_name, None);
        assert_eq!(infos[1].lease_left_ms, 250);

        assert_eq!(lock_infos(arr(vec![])).ok(), Some(vec![]));
        assert!(lock_infos(arr(vec![arr(vec![b("s1")])])).is_err());
        assert!(lock_infos(b("x")).is_err());
        let bad_scope = arr(vec![arr(vec![
            b("s"),
            b("row"),
            Value::Nil,
            i(1),
            i(1),
            Value::Nil,
            b("a"),
            i(0),
            i(-1),
            arr(vec![]),
        ])]);
        assert!(matches!(lock_infos(bad_scope), Err(Error::Protocol(_))));
    }

    #[test]
    fn scalars() {
        assert_eq!(int(&b("12"), "t").ok(), Some(12));
        assert!(int(&b("x"), "t").is_err());
        assert!(int(&Value::Double(1.0), "t").is_err());
        assert_eq!(flag(&Value::Bool(false), "t").ok(), Some(false));
        assert!(flag(&i(2), "t").is_err());
        assert!(ok(Value::Simple("OK".into()), "t").is_ok());
        assert!(ok(b("OK"), "t").is_ok());
        assert!(ok(b("NO"), "t").is_err());
        assert_eq!(
            string(Value::Simple("s".into()), "t").ok(),
            Some("s".into())
        );
        assert!(bytes(i(1), "t").is_err());
    }

    #[test]
    fn commit_builder_args() {
        let mut cmd = crate::cmd::Cmd::new("SESSION.COMMIT");
        cmd.arg("id");
        let c = Commit::new()
            .create()
            .ttl(Duration::from_secs(60))
            .lifetime(Duration::from_millis(1))
            .fence(5)
            .unlock()
            .set("a", "1")
            .set_if("b", "2", 0)
            .del("c")
            .del_if("d", 9);
        assert_eq!(c.len(), 4);
        assert!(!c.is_empty());
        assert!(Commit::new().is_empty());
        c.write_args(&mut cmd);
        let mut out = bytes::BytesMut::new();
        cmd.encode_into(&mut out);
        let words: Vec<&[u8]> = out[..]
            .split(|&c| c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty() && !l.starts_with(b"$") && !l.starts_with(b"*"))
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"SESSION.COMMIT",
            b"id",
            b"CREATE",
            b"TTL",
            b"60",
            b"LIFETIME",
            b"1",
            b"FENCE",
            b"5",
            b"UNLOCK",
            b"SET",
            b"a",
            b"1",
            b"SET",
            b"b",
            b"2",
            b"IFVER",
            b"0",
            b"DEL",
            b"c",
            b"DEL",
            b"d",
            b"IFVER",
            b"9",
        ];
        assert_eq!(words, expected);
    }
}
