//! Typed options and results: what the client's methods take and return.

use std::time::Duration;

use bytes::Bytes;

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
    /// The holder's address; empty when the server sent nil (as for
    /// [`LockWaiter::addr`]).
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
    /// The waiter's address; empty when the server sent nil (a cluster
    /// node answers nil for a connection on another node).
    pub addr: String,
    /// What it waits for.
    pub scope: LockScope,
    /// The key it waits for (`None` for a session lock).
    pub key: Option<Bytes>,
    /// How long it has waited.
    pub waited_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
