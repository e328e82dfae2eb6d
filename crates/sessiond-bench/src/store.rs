//! The session workload, spoken to each store.
//!
//! A session is 10 keys (`k0`…`k9`) whose values add up to the session size.
//! `k0` starts with a 20-digit counter that every cycle increments, so lost
//! updates can be counted afterwards. sessiond keeps the keys as fields; Redis
//! and memcached keep the whole session as one blob (what phpredis and
//! php-memcached do): `k0|<value>k1|<value>…`, the counter at bytes 3..23.

use std::io;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use crate::driver::{OpErr, OpResult, Rng};
use crate::etcd::Etcd;
use crate::wire::{Memc, Resp, Value};

pub const FIELDS: usize = 10;
pub const TTL_SECS: u32 = 1440;
const COUNTER_LEN: usize = 20;

/// Which protocol a store speaks and how sessions are laid out in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sessiond,
    Redis,
    /// Redis with a replica: every write is followed by `WAIT 1 0` (the
    /// write reached the replica before the cycle goes on).
    RedisWait,
    /// etcd v3: a session is one key; a write is a compare-and-put
    /// transaction on the revision read.
    Etcd,
    Memcached,
}

/// A session size class: the id prefix and the value length of each field.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub prefix: &'static str,
    pub size: usize,
}

impl Shape {
    pub fn vlen(&self) -> usize {
        (self.size / FIELDS).max(COUNTER_LEN)
    }

    pub fn id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    pub fn label(&self) -> String {
        if self.size >= 1024 && self.size.is_multiple_of(1024) {
            format!("{}KB", self.size / 1024)
        } else {
            format!("{}B", self.size)
        }
    }
}

/// The shape for a session size in bytes (one prefix per size).
pub fn shape(size: usize) -> Shape {
    let prefix: &'static str = Box::leak(format!("s{size}x").into_boxed_str());
    Shape { prefix, size }
}

pub fn field_value(i: usize, counter: u64, vlen: usize) -> Vec<u8> {
    if i == 0 {
        let mut v = format!("{counter:020}").into_bytes();
        v.resize(vlen, b'x');
        v
    } else {
        vec![b'a' + i as u8; vlen]
    }
}

pub fn blob(counter: u64, vlen: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIELDS * (vlen + 3));
    for i in 0..FIELDS {
        b.extend_from_slice(format!("k{i}|").as_bytes());
        b.extend_from_slice(&field_value(i, counter, vlen));
    }
    b
}

fn parse_counter(b: &[u8]) -> Result<u64, String> {
    b.get(..COUNTER_LEN)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "session without a counter".to_string())
}

fn blob_counter(b: &[u8]) -> Result<u64, String> {
    parse_counter(b.get(3..).unwrap_or_default())
}

fn blob_with(b: &[u8], counter: u64) -> Vec<u8> {
    let mut n = b.to_vec();
    n[3..3 + COUNTER_LEN].copy_from_slice(format!("{counter:020}").as_bytes());
    n
}

pub fn redis_key(id: &str) -> String {
    format!("PHPREDIS_SESSION:{id}")
}

/// `[id, version, created, [k, v, value, …]]` → the counter in `k0`.
fn sessiond_counter(read: &Value) -> Result<u64, String> {
    let a = read
        .array()
        .ok_or_else(|| format!("no such session ({read:?})"))?;
    let fields = a
        .get(3)
        .and_then(Value::array)
        .ok_or("read reply without fields")?;
    for t in fields.chunks(3) {
        if t[0].bulk() == Some(b"k0") {
            return parse_counter(t.get(2).and_then(Value::bulk).ok_or("k0 without value")?);
        }
    }
    Err("session without k0".into())
}

/// The phpredis unlock script (owner-checked delete).
pub const UNLOCK_LUA: &str = "if redis.call(\"get\",KEYS[1]) == ARGV[1] then return redis.call(\"del\",KEYS[1]) else return 0 end";

/// How the phpredis recipe polls for its lock.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    pub wait: Duration,
    pub retries: u32,
    /// phpredis 5.3.x: after the last retry, go on without the lock.
    pub proceed_unlocked: bool,
}

/// phpredis 6.x defaults: every 20 ms, 100 tries.
pub const PHPREDIS6: Polling = Polling {
    wait: Duration::from_millis(20),
    retries: 100,
    proceed_unlocked: false,
};

/// phpredis 5.3.7 (Debian 12) defaults: every 2 ms, 10 tries, then unlocked.
pub const PHPREDIS5: Polling = Polling {
    wait: Duration::from_millis(2),
    retries: 10,
    proceed_unlocked: true,
};

/// One connection to a store.
pub enum Client {
    Sessiond(Resp),
    Redis {
        c: Resp,
        sha: Vec<u8>,
        tag: u64,
        seq: u64,
        /// `WAIT 1 0` after every write.
        wait: bool,
    },
    Etcd(Etcd),
    Memcached(Memc),
}

/// `WAIT 1 0` on `c`: blocks until the write before it reached a replica.
fn wait_replica(c: &mut Resp) -> OpResult {
    match c.call(&[b"WAIT", b"1", b"0"])? {
        Value::Int(n) if n >= 1 => Ok(()),
        other => Err(OpErr::App(format!("WAIT 1 0: {other:?}"))),
    }
}

/// One etcd cycle: read the session, then put it back changed if nobody
/// wrote it since (compare-and-put on its revision); again from the read
/// when someone did. Returns how many attempts it took.
fn etcd_cycle(c: &mut Etcd, key: &str) -> Result<u32, OpErr> {
    for attempt in 1..=1000 {
        let v = c.get(key)?.ok_or_else(|| format!("etcd {key}: missing"))?;
        let nb = blob_with(&v.value, blob_counter(&v.value)? + 1);
        if c.cas(key, v.mod_revision, &nb)? {
            return Ok(attempt);
        }
    }
    Err(OpErr::App(format!("etcd {key}: 1000 conflicts in a row")))
}

/// What acquiring the phpredis lock came to.
pub enum Acquired {
    Locked(Vec<u8>),
    GaveUp,
    Stopped,
}

impl Client {
    pub fn connect(kind: Kind, addr: SocketAddr, tag: u64) -> io::Result<Client> {
        Ok(match kind {
            Kind::Sessiond => Client::Sessiond(Resp::connect(addr)?),
            Kind::Etcd => Client::Etcd(Etcd::connect(addr)?),
            Kind::Redis | Kind::RedisWait => {
                let mut c = Resp::connect(addr)?;
                let sha = c
                    .call(&[b"SCRIPT", b"LOAD", UNLOCK_LUA.as_bytes()])?
                    .bulk()
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                Client::Redis {
                    c,
                    sha,
                    tag,
                    seq: 0,
                    wait: kind == Kind::RedisWait,
                }
            }
            Kind::Memcached => Client::Memcached(Memc::connect(addr)?),
        })
    }

    /// The session cycle: read the whole session, write back the one
    /// changed key (sessiond) or the whole blob (Redis, memcached).
    pub fn cycle(&mut self, sh: &Shape, id: &str) -> OpResult {
        match self {
            Client::Sessiond(c) => {
                let read = c.call(&[b"SESSION.READ", id.as_bytes()])?;
                let n = sessiond_counter(&read)?;
                let v = field_value(0, n + 1, sh.vlen());
                c.call(&[b"SESSION.COMMIT", id.as_bytes(), b"SET", b"k0", &v])?
                    .check()?;
            }
            Client::Redis { c, wait, .. } => {
                let key = redis_key(id);
                let b = c.call(&[b"GET", key.as_bytes()])?;
                let b = b.bulk().ok_or_else(|| format!("GET {key}: {b:?}"))?;
                let nb = blob_with(b, blob_counter(b)? + 1);
                c.call(&[b"SETEX", key.as_bytes(), b"1440", &nb])?.check()?;
                if *wait {
                    wait_replica(c)?;
                }
            }
            Client::Etcd(c) => {
                etcd_cycle(c, &redis_key(id))?;
            }
            Client::Memcached(c) => {
                let key = redis_key(id);
                let b = c
                    .get(key.as_bytes())?
                    .ok_or_else(|| format!("get {key}: miss"))?;
                let nb = blob_with(&b, blob_counter(&b)? + 1);
                c.set(key.as_bytes(), TTL_SECS, &nb)?;
            }
        }
        Ok(())
    }

    /// Takes the phpredis lock on `key`, polling as `p` says; checks `stop`
    /// between polls.
    pub fn redis_lock(
        &mut self,
        key: &str,
        p: Polling,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Acquired, OpErr> {
        let Client::Redis { c, tag, seq, .. } = self else {
            return Err(OpErr::App("not redis".into()));
        };
        *seq += 1;
        let secret = format!("bench|{tag}|{seq}").into_bytes();
        let lk = format!("{key}_LOCK");
        for attempt in 0..p.retries.max(1) {
            let r = c.call(&[b"SET", lk.as_bytes(), &secret, b"NX", b"PX", b"30000"])?;
            match r {
                Value::Status(_) => return Ok(Acquired::Locked(secret)),
                Value::Nil => {}
                other => return Err(OpErr::App(format!("SET NX: {other:?}"))),
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(Acquired::Stopped);
            }
            if attempt + 1 < p.retries {
                thread::sleep(p.wait);
            }
        }
        Ok(Acquired::GaveUp)
    }

    /// The owner-checked unlock (EVALSHA, EVAL when the script is unknown).
    pub fn redis_unlock(&mut self, key: &str, secret: &[u8]) -> OpResult {
        let Client::Redis { c, sha, .. } = self else {
            return Err(OpErr::App("not redis".into()));
        };
        let lk = format!("{key}_LOCK");
        let r = c.call(&[b"EVALSHA", sha, b"1", lk.as_bytes(), secret])?;
        if let Value::Error(e) = &r
            && e.starts_with("NOSCRIPT")
        {
            c.call(&[b"EVAL", UNLOCK_LUA.as_bytes(), b"1", lk.as_bytes(), secret])?
                .check()?;
            return Ok(());
        }
        r.check()?;
        Ok(())
    }

    /// The locked cycle: sessiond lock-and-read → commit-and-unlock (2 round
    /// trips); the phpredis recipe SET NX PX → GET → SETEX → EVALSHA (4 round
    /// trips, more while polling). Returns whether the cycle ran under the lock.
    pub fn locked_cycle(
        &mut self,
        sh: &Shape,
        id: &str,
        p: Polling,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, OpErr> {
        match self {
            Client::Sessiond(c) => {
                let r = c
                    .call(&[b"LOCK.ACQUIRE", id.as_bytes(), b"WAIT", b"30000"])?
                    .check()?;
                let a = r.array().ok_or("LOCK.ACQUIRE reply not an array")?;
                let token = a
                    .first()
                    .and_then(Value::int)
                    .ok_or("LOCK.ACQUIRE without token")?;
                let n = sessiond_counter(a.get(1).ok_or("LOCK.ACQUIRE without read")?)?;
                let v = field_value(0, n + 1, sh.vlen());
                let t = token.to_string();
                c.call(&[
                    b"SESSION.COMMIT",
                    id.as_bytes(),
                    b"FENCE",
                    t.as_bytes(),
                    b"UNLOCK",
                    b"SET",
                    b"k0",
                    &v,
                ])?
                .check()?;
                Ok(true)
            }
            Client::Redis { .. } => {
                let key = redis_key(id);
                let secret = match self.redis_lock(&key, p, stop)? {
                    Acquired::Locked(s) => Some(s),
                    Acquired::GaveUp if p.proceed_unlocked => None,
                    Acquired::GaveUp => return Err(OpErr::App("lock: gave up polling".into())),
                    Acquired::Stopped => return Err(OpErr::App("stopped while polling".into())),
                };
                let Client::Redis { c, wait, .. } = self else {
                    unreachable!()
                };
                let b = c.call(&[b"GET", key.as_bytes()])?;
                let b = b.bulk().ok_or_else(|| format!("GET {key}: {b:?}"))?;
                let nb = blob_with(b, blob_counter(b)? + 1);
                c.call(&[b"SETEX", key.as_bytes(), b"1440", &nb])?.check()?;
                if *wait {
                    wait_replica(c)?;
                }
                match secret {
                    Some(s) => {
                        self.redis_unlock(&key, &s)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            // etcd's transaction is its concurrency control: the same cycle.
            Client::Etcd(c) => {
                etcd_cycle(c, &redis_key(id))?;
                Ok(true)
            }
            Client::Memcached(_) => Err(OpErr::App("no locked cycle for memcached".into())),
        }
    }
}

/// Loads `n` sessions of shape `sh` (counter 0) with pipelined writes on
/// `conns` connections.
pub fn preload(
    kind: Kind,
    addr: SocketAddr,
    sh: &Shape,
    range: std::ops::Range<u64>,
    ttl: u32,
    conns: usize,
) -> anyhow::Result<()> {
    let vlen = sh.vlen();
    let per = (range.end - range.start).div_ceil(conns as u64);
    let ttl_s = ttl.to_string();
    let results: Vec<anyhow::Result<()>> = thread::scope(|s| {
        let hs: Vec<_> = (0..conns as u64)
            .map(|t| {
                let lo = range.start + t * per;
                let hi = (lo + per).min(range.end);
                let ttl_s = &ttl_s;
                s.spawn(move || -> anyhow::Result<()> {
                    let batch = 256u64;
                    match kind {
                        Kind::Etcd => {
                            let mut c = Etcd::connect(addr)?;
                            for n in lo..hi {
                                c.put(&redis_key(&sh.id(n)), &blob(0, vlen))?;
                            }
                        }
                        Kind::Memcached => {
                            let mut c = Memc::connect(addr)?;
                            let mut lo = lo;
                            while lo < hi {
                                let items: Vec<_> = (lo..(lo + batch).min(hi))
                                    .map(|n| (redis_key(&sh.id(n)).into_bytes(), blob(0, vlen)))
                                    .collect();
                                c.set_many(&items, ttl)?;
                                lo += batch;
                            }
                        }
                        _ => {
                            let mut c = Resp::connect(addr)?;
                            let mut lo = lo;
                            while lo < hi {
                                let cmds: Vec<Vec<Vec<u8>>> = (lo..(lo + batch).min(hi))
                                    .map(|n| load_cmd(kind, sh, n, ttl_s))
                                    .collect();
                                for r in c.pipeline(&cmds)? {
                                    if let Value::Error(e) = r {
                                        anyhow::bail!("preload: {e}");
                                    }
                                }
                                lo += batch;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("loader panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn load_cmd(kind: Kind, sh: &Shape, n: u64, ttl: &str) -> Vec<Vec<u8>> {
    let id = sh.id(n);
    match kind {
        Kind::Sessiond => {
            let mut c: Vec<Vec<u8>> = vec![
                b"SESSION.COMMIT".to_vec(),
                id.into_bytes(),
                b"CREATE".to_vec(),
                b"TTL".to_vec(),
                ttl.as_bytes().to_vec(),
            ];
            for i in 0..FIELDS {
                c.push(b"SET".to_vec());
                c.push(format!("k{i}").into_bytes());
                c.push(field_value(i, 0, sh.vlen()));
            }
            c
        }
        _ => vec![
            b"SETEX".to_vec(),
            redis_key(&id).into_bytes(),
            ttl.as_bytes().to_vec(),
            blob(0, sh.vlen()),
        ],
    }
}

/// Reads the counter of every session in `0..n` (pipelined); `None` for a
/// missing session.
pub fn counters(
    kind: Kind,
    addr: SocketAddr,
    sh: &Shape,
    n: u64,
) -> anyhow::Result<Vec<Option<u64>>> {
    if kind == Kind::Etcd {
        let mut c = Etcd::connect(addr)?;
        return (0..n)
            .map(|i| {
                Ok(c.get(&redis_key(&sh.id(i)))?
                    .and_then(|v| blob_counter(&v.value).ok()))
            })
            .collect();
    }
    let mut c = Resp::connect(addr)?;
    let mut out = Vec::with_capacity(n as usize);
    let batch = 512u64;
    let mut lo = 0;
    while lo < n {
        let cmds: Vec<Vec<Vec<u8>>> = (lo..(lo + batch).min(n))
            .map(|i| match kind {
                Kind::Sessiond => vec![
                    b"SESSION.READ".to_vec(),
                    sh.id(i).into_bytes(),
                    b"KEYS".to_vec(),
                    b"k0".to_vec(),
                ],
                _ => vec![b"GET".to_vec(), redis_key(&sh.id(i)).into_bytes()],
            })
            .collect();
        for r in c.pipeline(&cmds)? {
            out.push(match kind {
                Kind::Sessiond => sessiond_counter(&r).ok(),
                _ => r.bulk().and_then(|b| blob_counter(b).ok()),
            });
        }
        lo += batch;
    }
    Ok(out)
}

/// Picks a session uniformly.
pub fn pick(rng: &mut Rng, n: u64) -> u64 {
    rng.below(n)
}
