//! Clients that try to make the server hold memory or accept nonsense: the
//! real binary as a child process, spoken to over plain TCP sockets, so the
//! server's own memory (VmRSS) can be read from /proc.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::ServerProcess;

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends one command and reads one reply line (enough for the simple
/// replies used here; bulk bodies are read by the caller).
fn line(s: &mut TcpStream, args: &[&[u8]]) -> String {
    s.write_all(&resp(args)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim_end().to_owned()
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

/// `calls=` of one command in INFO commandstats.
fn calls(addr: SocketAddr, command: &str) -> u64 {
    let mut s = connect(addr);
    s.write_all(&resp(&[b"INFO", b"commandstats"])).unwrap();
    let mut r = BufReader::new(s);
    let mut header = String::new();
    r.read_line(&mut header).unwrap();
    let len: usize = header.trim_end()[1..].parse().unwrap();
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body).unwrap();
    let text = String::from_utf8(body).unwrap();
    let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until `f` stops changing for a while (the server did all it will
/// do for now), and returns its last value.
fn settled(mut f: impl FnMut() -> u64) -> u64 {
    let mut last = f();
    let mut since = Instant::now();
    let start = Instant::now();
    while since.elapsed() < Duration::from_millis(500) && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

const MB: usize = 1 << 20;

/// A client pipelines 300 reads of a 1 MB session and reads no reply. The
/// server must not encode 300 MB of replies for it: it writes as it goes,
/// and TCP's flow control stops it after a few. Once the client reads,
/// every reply arrives whole.
#[test]
fn unread_pipelined_replies_do_not_pile_up_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory"]);
    let mut c = connect(server.addr);
    let big = vec![b'x'; MB];
    assert_eq!(
        line(
            &mut c,
            &[b"SESSION.COMMIT", b"big", b"CREATE", b"SET", b"v", &big]
        ),
        "*2"
    );
    drop(c);
    let before = rss_bytes(&server);

    let mut hog = connect(server.addr);
    let n = 300;
    let mut pipeline = Vec::new();
    for _ in 0..n {
        pipeline.extend_from_slice(&resp(&[b"SESSION.READ", b"big", b"KEYS", b"v"]));
    }
    hog.write_all(&pipeline).unwrap();
    let done = settled(|| calls(server.addr, "SESSION.READ"));
    let grown = rss_bytes(&server).saturating_sub(before);
    assert!(
        done < n,
        "the server ran all {n} reads for a client that read nothing"
    );
    assert!(
        grown < 64 * MB as u64,
        "server memory grew by {} MB for {done} unread replies",
        grown / MB as u64
    );

    // Now read: every reply is complete (each holds the 1 MB value).
    let mut r = BufReader::new(hog);
    let mut got = 0;
    let mut l = String::new();
    while got < n {
        l.clear();
        r.read_line(&mut l).unwrap();
        if let Some(len) = l.strip_prefix('$') {
            let len: usize = len.trim_end().parse().unwrap();
            if len == MB {
                let mut body = vec![0; len + 2];
                r.read_exact(&mut body).unwrap();
                assert!(body[..len].iter().all(|&b| b == b'x'));
                got += 1;
            }
        }
    }
    assert_eq!(got, n);
}

/// While a client waits for a lock, bytes it pipelines behind the wait are
/// buffered up to the request limit only; the rest waits in TCP. Nothing
/// is lost: after the grant the pipelined commands run in order.
#[test]
fn a_waiting_client_cannot_make_the_server_buffer_without_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--storage", "memory", "--max-request-bytes", "2097152"],
    );
    let mut holder = connect(server.addr);
    let held = line(&mut holder, &[b"LOCK.ACQUIRE", b"s", b"CREATE"]);
    assert_eq!(held, "*2", "the first client holds the lock");
    let before = rss_bytes(&server);

    let waiter = connect(server.addr);
    let mut w = waiter.try_clone().unwrap();
    // Behind the wait: 200 PINGs with a 1 MB argument each (200 MB).
    let sender = std::thread::spawn(move || {
        w.write_all(&resp(&[b"LOCK.ACQUIRE", b"s", b"WAIT", b"60000"]))
            .unwrap();
        let ping = resp(&[b"PING", &vec![b'p'; MB]]);
        for _ in 0..200 {
            if w.write_all(&ping).is_err() {
                return false;
            }
        }
        true
    });
    std::thread::sleep(Duration::from_millis(200));
    let _ = settled(|| rss_bytes(&server) / MB as u64);
    let grown = rss_bytes(&server).saturating_sub(before);
    assert!(
        grown < 64 * MB as u64,
        "server memory grew by {} MB while the client waited",
        grown / MB as u64
    );
    assert!(
        !sender.is_finished(),
        "200 MB were taken in during the wait"
    );

    // The holder leaves, which releases its lock: the waiter gets its
    // grant, then the 200 echoes.
    drop(holder);
    let mut r = BufReader::new(waiter);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert_eq!(l.trim_end(), "*2", "the waiter is granted the lock");
    let mut echoes = 0;
    while echoes < 200 {
        l.clear();
        r.read_line(&mut l).unwrap();
        if l.trim_end() == format!("${MB}") {
            let mut body = vec![0; MB + 2];
            r.read_exact(&mut body).unwrap();
            echoes += 1;
        }
    }
    assert!(sender.join().unwrap(), "every ping was sent");
    assert_eq!(echoes, 200);
}

/// Before AUTH only small requests are read (16 KiB, as Redis 7.2 limits
/// unauthenticated clients); after AUTH the configured limit applies.
#[test]
fn unauthenticated_clients_may_send_only_small_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory", "--requirepass", "pw"]);
    let value = vec![b'v'; 100 * 1024];

    let mut stranger = connect(server.addr);
    let reply = line(&mut stranger, &[b"PING", &value]);
    assert!(reply.starts_with("-LIMIT"), "{reply}");
    // Closed after the error: end of stream, or a reset because the rest of
    // the request was never read.
    let mut rest = Vec::new();
    match stranger.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after the error"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }

    let mut member = connect(server.addr);
    assert_eq!(line(&mut member, &[b"AUTH", b"pw"]), "+OK");
    assert_eq!(
        line(&mut member, &[b"PING", &value]),
        format!("${}", value.len())
    );
}

/// TTL and LIFETIME of 0 are refused (a session that ends as it is made is a
/// mistake); the session a refused TOUCH named is left as it was.
#[test]
fn zero_ttls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory"]);
    let mut c = connect(server.addr);
    for cmd in [
        &[&b"SESSION.NEW"[..], b"TTL", b"0"][..],
        &[b"SESSION.NEW", b"LIFETIME", b"0"],
        &[b"SESSION.READ", b"a", b"CREATE", b"TTL", b"0"],
        &[
            b"SESSION.COMMIT",
            b"a",
            b"CREATE",
            b"TTL",
            b"0",
            b"SET",
            b"k",
            b"v",
        ],
    ] {
        let reply = line(&mut c, cmd);
        assert!(reply.contains("at least 1 second"), "{reply}");
    }
    assert_eq!(
        line(&mut c, &[b"SESSION.EXISTS", b"a"]),
        ":0",
        "nothing created"
    );
    assert_eq!(
        line(
            &mut c,
            &[b"SESSION.COMMIT", b"a", b"CREATE", b"SET", b"k", b"v"]
        ),
        "*2"
    );
    let reply = line(&mut c, &[b"SESSION.TOUCH", b"a", b"TTL", b"0"]);
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert_eq!(line(&mut c, &[b"SESSION.EXISTS", b"a"]), ":1");
}

/// On a server without a password, `AUTH default <anything>` succeeds (as
/// Redis's `nopass` default user), so clients configured with credentials
/// still connect; AUTH with a password alone says no password is set.
#[test]
fn auth_on_a_server_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory"]);
    let mut c = connect(server.addr);
    assert_eq!(line(&mut c, &[b"AUTH", b"default", b"whatever"]), "+OK");
    assert!(line(&mut c, &[b"AUTH", b"someone", b"whatever"]).starts_with("-WRONGPASS"));
    assert!(
        line(&mut c, &[b"AUTH", b"whatever"]).starts_with("-ERR AUTH <password> called without")
    );
    assert_eq!(
        line(&mut c, &[b"HELLO", b"2", b"AUTH", b"default", b"x"]),
        "*14"
    );
}

/// Requests that are no command (unknown name, wrong arity) are counted,
/// so a client sending garbage shows in INFO and the metrics.
#[test]
fn invalid_requests_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory"]);
    let mut c = connect(server.addr);
    assert!(line(&mut c, &[b"NOSUCHCOMMAND"]).starts_with("-ERR unknown command"));
    assert!(line(&mut c, &[b"SESSION.READ"]).starts_with("-ERR wrong number"));
    assert_eq!(calls(server.addr, "(invalid)"), 2);
}

/// Flags given before the `serve` subcommand count as well as those after.
#[test]
fn flags_before_the_serve_subcommand_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = ServerProcess::try_start_split(
        &["--port", "0", "--metrics-addr", "off", "--data-dir", data],
        &["--durability", "always"],
        &[],
    )
    .unwrap_or_else(|(status, stderr)| panic!("{status}: {stderr}"));
    assert_ne!(server.addr.port(), 6380, "--port 0 was ignored");
    assert!(
        dir.path().join("sessions.redb").exists(),
        "--data-dir was ignored"
    );
}

/// Before AUTH a malformed request learns nothing but NOAUTH, except that
/// the command is unknown or has the wrong number of arguments (as Redis);
/// AUTH and HELLO explain their own mistakes.
#[test]
fn unauthenticated_requests_get_noauth_before_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--storage", "memory", "--requirepass", "pw"]);
    let mut c = connect(server.addr);
    for (cmd, want) in [
        (&[&b"SESSION.READ"[..], b"bad/id"][..], "-NOAUTH"),
        (&[b"SESSION.INCR", b"a", b"k", b"x"], "-NOAUTH"),
        (&[b"SESSION.READ", b"a", b"BOGUS"], "-NOAUTH"),
        (&[b"NOSUCHCOMMAND"], "-ERR unknown command"),
        (&[b"SESSION.READ"], "-ERR wrong number"),
        (&[b"HELLO", b"x"], "-ERR"),
    ] {
        let reply = line(&mut c, cmd);
        assert!(reply.starts_with(want), "{cmd:?}: {reply}");
    }
    assert_eq!(line(&mut c, &[b"AUTH", b"pw"]), "+OK");
    assert!(line(&mut c, &[b"SESSION.READ", b"bad/id"]).starts_with("-BADID"));
}
