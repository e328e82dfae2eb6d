//! `--max-memory` against the real binary with redb storage: a client
//! creates sessions without end; under `noeviction` the server starts
//! answering `OOM` with its resident memory (VmRSS, from /proc) within 20 %
//! of the limit, and reads and deletes still work; under `allkeys-lru` it
//! keeps accepting, stays within 20 %, and the sessions it ended are the
//! idlest. The numbers each run prints are the measurement of
//! docs/benchmarks.md ("Memory limit"); `SESSIOND_MEMORY_LIMITS_MB=64,256`
//! runs it at more limits than the default 64.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::ServerProcess;

const MB: u64 = 1 << 20;
/// Longest a fill may take: a hang guard, not a speed test.
const FILL_DEADLINE: Duration = Duration::from_secs(600);
const BATCH: usize = 200;

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One connection, speaking RESP2 with pipelining.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

/// A reply, as far as these tests look at it.
#[derive(Debug)]
enum Reply {
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    Status(String),
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Self { w, r }
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.w.write_all(&resp(args)).unwrap();
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        match kind {
            "-" => Reply::Error(rest.to_owned()),
            "+" => Reply::Status(rest.to_owned()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Reply::Bulk(None);
                }
                let mut body = vec![0; usize::try_from(len).unwrap() + 2];
                self.r.read_exact(&mut body).unwrap();
                body.truncate(body.len() - 2);
                Reply::Bulk(Some(body))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..n).map(|_| self.read()).collect()))
            }
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.read()
    }

    fn info(&mut self, field: &str) -> u64 {
        let Reply::Bulk(Some(text)) = self.call(&[b"INFO", b"memory"]) else {
            panic!("INFO is a bulk string");
        };
        let text = String::from_utf8(text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

fn rss_bytes(server: &ServerProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A session's value: 200 bytes to 3 KB (PHP sessions of a few keys to a
/// cart), varied so every allocator size class is hit.
fn value(i: u64) -> Vec<u8> {
    let len = 200 + usize::try_from(i.wrapping_mul(2_654_435_761) % 2_800).unwrap();
    vec![b'a' + u8::try_from(i % 26).unwrap(); len]
}

/// What a fill reached.
#[derive(Debug, Default)]
struct Fill {
    accepted: u64,
    refused: u64,
    bytes_accepted: u64,
    max_rss: u64,
}

/// Creates sessions `m0`, `m1`, … in pipelined batches until `stop` says
/// so (given the batch's refusals), sampling VmRSS after each batch.
fn fill(server: &ServerProcess, limit: u64, stop: impl Fn(&Fill, u64) -> bool) -> Fill {
    let mut c = Conn::open(server.addr);
    let mut f = Fill::default();
    let started = Instant::now();
    let mut next = 0u64;
    // Bounded: far more sessions than the limit can hold at 200 bytes.
    while next < limit / 100 {
        assert!(started.elapsed() < FILL_DEADLINE, "fill hung: {f:?}");
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let v = value(next);
            c.send(&[
                b"SESSION.COMMIT",
                format!("m{next}").as_bytes(),
                b"CREATE",
                b"SET",
                b"data",
                &v,
            ]);
            batch.push(v.len() as u64);
            next += 1;
        }
        let mut refused = 0;
        for len in batch {
            match c.read() {
                Reply::Error(e) => {
                    assert!(e.starts_with("OOM "), "only OOM refusals: {e}");
                    refused += 1;
                }
                Reply::Array(Some(_)) => {
                    f.accepted += 1;
                    f.bytes_accepted += len;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        f.refused += refused;
        f.max_rss = f.max_rss.max(rss_bytes(server));
        if stop(&f, refused) {
            break;
        }
    }
    f
}

fn limits_mb() -> Vec<u64> {
    std::env::var("SESSIOND_MEMORY_LIMITS_MB").ok().map_or_else(
        || vec![64],
        |v| v.split(',').map(|m| m.trim().parse().unwrap()).collect(),
    )
}

fn start(dir: &std::path::Path, limit_mb: u64, policy: &str) -> ServerProcess {
    ServerProcess::start(
        dir,
        &[
            "--max-memory",
            &format!("{limit_mb}mb"),
            "--max-memory-policy",
            policy,
        ],
    )
}

#[test]
fn noeviction_refuses_growth_near_the_limit_and_keeps_serving_reads_and_deletes() {
    for limit_mb in limits_mb() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), limit_mb, "noeviction");
        let limit = limit_mb * MB;
        let idle_rss = rss_bytes(&server);
        // Until two whole batches in a row are refused.
        let f = fill(&server, limit, |f, refused| {
            refused == BATCH as u64 && f.refused >= 2 * BATCH as u64
        });
        let rss = rss_bytes(&server);
        let mut c = Conn::open(server.addr);
        let used = c.info("used_memory");
        eprintln!(
            "noeviction --max-memory {limit_mb}mb: idle RSS {} MiB; {} sessions ({} MiB of \
             values) accepted, then {} refused; max RSS {:.1} MiB ({:.0} % of the limit), \
             RSS at the end {:.1} MiB; used_memory {:.1} MiB",
            idle_rss / MB,
            f.accepted,
            f.bytes_accepted / MB,
            f.refused,
            f.max_rss as f64 / MB as f64,
            f.max_rss as f64 * 100.0 / limit as f64,
            rss as f64 / MB as f64,
            used as f64 / MB as f64,
        );
        assert!(f.refused > 0, "never refused: {f:?}");
        assert!(
            f.max_rss <= limit + limit / 5,
            "RSS {} over the limit {limit} + 20 %",
            f.max_rss
        );
        assert!(
            f.bytes_accepted > limit / 3,
            "the limit is not mostly spent on overhead: {f:?}"
        );
        assert!(c.info("oom_refusals") >= f.refused);
        assert_eq!(c.info("evicted_sessions"), 0);
        assert_eq!(c.info("max_memory"), limit);
        // Reads work; a delete works and makes room for a new session.
        let Reply::Array(Some(read)) = c.call(&[b"SESSION.READ", b"m0"]) else {
            panic!("m0 is readable");
        };
        assert_eq!(read.len(), 4);
        let Reply::Error(e) = c.call(&[b"SESSION.NEW"]) else {
            panic!("a new session is refused at the limit");
        };
        assert!(e.starts_with("OOM command not allowed"), "{e}");
        for i in 0..20 {
            let Reply::Int(1) = c.call(&[b"SESSION.DESTROY", format!("m{i}").as_bytes()]) else {
                panic!("destroy works at the limit");
            };
        }
        assert!(
            matches!(c.call(&[b"SESSION.NEW"]), Reply::Bulk(Some(_))),
            "room again after deletes"
        );
        assert!(matches!(c.call(&[b"PING"]), Reply::Status(s) if s == "PONG"));
    }
}

#[test]
fn allkeys_lru_keeps_accepting_near_the_limit_and_evicts_the_idlest() {
    for limit_mb in limits_mb() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), limit_mb, "allkeys-lru");
        let limit = limit_mb * MB;
        // Until values worth three times the limit were written.
        let f = fill(&server, limit, |f, _| f.bytes_accepted > 3 * limit);
        let mut c = Conn::open(server.addr);
        let evicted = c.info("evicted_sessions");
        eprintln!(
            "allkeys-lru --max-memory {limit_mb}mb: {} sessions ({} MiB of values) accepted, \
             {} refused, {evicted} evicted; max RSS {:.1} MiB ({:.0} % of the limit)",
            f.accepted,
            f.bytes_accepted / MB,
            f.refused,
            f.max_rss as f64 / MB as f64,
            f.max_rss as f64 * 100.0 / limit as f64,
        );
        assert_eq!(f.refused, 0, "every write accepted");
        assert!(evicted > 0, "sessions evicted");
        assert!(
            f.max_rss <= limit + limit / 5,
            "RSS {} over the limit {limit} + 20 %",
            f.max_rss
        );
        assert_eq!(c.info("oom_refusals"), 0);
        // The first sessions (idlest) are gone, the last one is there.
        assert!(matches!(c.call(&[b"SESSION.EXISTS", b"m0"]), Reply::Int(0)));
        let last = format!("m{}", f.accepted - 1);
        assert!(matches!(
            c.call(&[b"SESSION.EXISTS", last.as_bytes()]),
            Reply::Int(1)
        ));
    }
}

/// Polls INFO until `field` is `want` (a reload is asynchronous to the
/// signal). Bounded: a hang guard, not a timing assertion.
fn await_info(c: &mut Conn, field: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.info(field) != want {
        assert!(Instant::now() < deadline, "{field} never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_sets_the_limit_and_then_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(&file, "storage_cache_mb = 4\n").unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", file.to_str().unwrap()],
    );
    let mut c = Conn::open(server.addr);
    assert_eq!(c.info("max_memory"), 0);
    let limit = 32 * MB;
    std::fs::write(&file, "storage_cache_mb = 4\nmax_memory = \"32mb\"\n").unwrap();
    server.signal("HUP");
    await_info(&mut c, "max_memory", limit);
    // Refusals once the sessions' share is spent.
    let f = fill(&server, limit, |_, refused| refused > 0);
    assert!(f.refused > 0 && f.accepted > 0, "{f:?}");
    assert!(c.info("oom_refusals") > 0);
    // Switched to eviction: the same writes are accepted.
    std::fs::write(
        &file,
        "storage_cache_mb = 4\nmax_memory = \"32mb\"\nmax_memory_policy = \"allkeys-lru\"\n",
    )
    .unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Reply::Bulk(Some(text)) = c.call(&[b"INFO", b"memory"]) else {
            panic!("INFO is a bulk string");
        };
        if String::from_utf8(text)
            .unwrap()
            .contains("max_memory_policy:allkeys-lru")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the policy never changed");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..200u64 {
        let reply = c.call(&[
            b"SESSION.COMMIT",
            format!("after{i}").as_bytes(),
            b"CREATE",
            b"SET",
            b"data",
            &value(i),
        ]);
        assert!(
            matches!(reply, Reply::Array(Some(_))),
            "accepted: {reply:?}"
        );
    }
    assert!(c.info("evicted_sessions") > 0);
}
