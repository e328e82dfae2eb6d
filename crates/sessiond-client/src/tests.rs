//! Framing and round-trip tests against a scripted fake server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::*;

type Captured = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Reads one RESP array of bulk strings.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Vec<String> {
    async fn line(sock: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        while !out.ends_with(b"\r\n") {
            out.push(sock.read_u8().await.unwrap());
        }
        String::from_utf8(out[..out.len() - 2].to_vec()).unwrap()
    }
    let head = line(sock).await;
    let n: usize = head.strip_prefix('*').unwrap().parse().unwrap();
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len: usize = line(sock).await.strip_prefix('$').unwrap().parse().unwrap();
        let mut data = vec![0; len + 2];
        sock.read_exact(&mut data).await.unwrap();
        data.truncate(len);
        args.push(String::from_utf8(data).unwrap());
    }
    args
}

enum Step {
    /// Read exactly this request.
    Expect(Vec<u8>),
    /// Read a request with these arguments, `*` matching any; what the
    /// wildcards matched is pushed to the list.
    ExpectLike(Vec<&'static str>, Captured),
    /// Write these bytes.
    Reply(&'static [u8]),
    /// Write these bytes one at a time.
    Dribble(&'static [u8]),
    /// Expect the client to close the connection.
    ExpectEof,
    /// Close the connection.
    Close,
}
use Step::*;

fn req(args: &[&str]) -> Step {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    Expect(out)
}

async fn fake(steps: Vec<Step>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        for step in steps {
            match step {
                Expect(want) => {
                    let mut got = vec![0; want.len()];
                    sock.read_exact(&mut got).await.unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want)
                    );
                }
                ExpectLike(want, captured) => {
                    let got = read_request(&mut sock).await;
                    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
                    for (g, w) in got.iter().zip(&want) {
                        if *w == "*" {
                            captured.lock().unwrap().push(g.clone());
                        } else {
                            assert_eq!(g, w, "{got:?} vs {want:?}");
                        }
                    }
                }
                Reply(bytes) => sock.write_all(bytes).await.unwrap(),
                Dribble(bytes) => {
                    for b in bytes {
                        sock.write_all(&[*b]).await.unwrap();
                        sock.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                ExpectEof => {
                    let mut rest = Vec::new();
                    sock.read_to_end(&mut rest).await.unwrap();
                    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
                }
                Close => return,
            }
        }
    });
    (addr, handle)
}

async fn finish(handle: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("fake server timed out")
        .expect("fake server failed");
}

fn plain() -> ConnectOptions {
    ConnectOptions {
        resp3: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn resp3_handshake_and_every_command() {
    let (addr, server) = fake(vec![
        req(&["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "web1"]),
        Reply(b"%2\r\n+server\r\n$8\r\nsessiond\r\n+proto\r\n:3\r\n"),
        req(&["PING"]),
        Reply(b"+PONG\r\n"),
        req(&["SESSION.NEW", "TTL", "600", "LIFETIME", "2"]),
        Reply(b"$40\r\n0123456789abcdef0123456789abcdef01234567\r\n"),
        req(&["SESSION.READ", "demo1", "CREATE", "TTL", "1", "KEYS", "user", "missing"]),
        Reply(b"*4\r\n$5\r\ndemo1\r\n:7\r\n#f\r\n*6\r\n$4\r\nuser\r\n:7\r\n$5\r\nalice\r\n$7\r\nmissing\r\n:0\r\n_\r\n"),
        req(&["SESSION.READ", "nosuch"]),
        Reply(b"_\r\n"),
        req(&["SESSION.COMMIT", "demo2", "SET", "a", "5", "IFVER", "1", "DEL", "b"]),
        Reply(b"-CONFLICT version mismatch on keys: \"a\"\r\n"),
        req(&["SESSION.COMMIT", "demo2", "CREATE", "FENCE", "3", "UNLOCK", "SET", "c", "1", "IFVER", "0", "DEL", "b"]),
        Reply(b"*2\r\n:12\r\n*2\r\n:12\r\n:0\r\n"),
        req(&["SESSION.DESTROY", "demo3"]),
        Reply(b":1\r\n"),
        req(&["SESSION.EXISTS", "demo3"]),
        Reply(b"#f\r\n"),
        req(&["SESSION.TOUCH", "demo1", "TTL", "3600"]),
        Reply(b":1\r\n"),
        req(&["SESSION.TTL", "nosuch"]),
        Reply(b":-2\r\n"),
        req(&["SESSION.INCR", "demo1", "visits", "-41", "CREATE", "FENCE", "9"]),
        Reply(b"*2\r\n:1\r\n:13\r\n"),
        req(&["SESSION.INCR", "demo1", "user", "1"]),
        Reply(b"-NOTINT value of \"user\" is not an integer\r\n"),
        req(&["SESSION.CAS", "demo1", "visits", "42", "43"]),
        Reply(b"*2\r\n:1\r\n:14\r\n"),
        req(&["SESSION.CAS", "demo1", "visits", "42", "44", "FENCE", "2"]),
        Reply(b"*3\r\n:0\r\n:14\r\n$2\r\n43\r\n"),
        req(&["SESSION.REGENERATE", "demo4", "GRACE", "0", "TO", "demo4b"]),
        Reply(b"$6\r\ndemo4b\r\n"),
        req(&["SESSION.REGENERATE", "demo4b"]),
        Reply(b"+fresh\r\n"),
        req(&["LOCK.ACQUIRE", "demo1", "KEY", "visits", "WAIT", "1000", "LEASE", "5000", "REQID", "r1", "CREATE"]),
        Reply(b"*2\r\n:21\r\n*4\r\n$5\r\ndemo1\r\n:14\r\n:0\r\n*3\r\n$6\r\nvisits\r\n:14\r\n$2\r\n43\r\n"),
        req(&["LOCK.ACQUIRE", "demo9"]),
        Reply(b"*2\r\n:22\r\n_\r\n"),
        req(&["LOCK.ACQUIRE", "demo1", "WAIT", "1"]),
        Reply(b"-TIMEOUT lock wait ran out\r\n"),
        req(&["LOCK.RELEASE", "demo1", "KEY", "visits", "21"]),
        Reply(b":1\r\n"),
        req(&["LOCK.RELEASE", "demo9", "22"]),
        Reply(b":0\r\n"),
        req(&["LOCK.RENEW", "demo9", "22", "LEASE", "100"]),
        Reply(b":1\r\n"),
        req(&["LOCK.RENEW", "demo9", "KEY", "k", "22", "LEASE", "2"]),
        Reply(b"-FENCED token 22 is not the current grant\r\n"),
        req(&["LOCK.ONCE", "demo1", "token", "IFVER", "5", "WAIT", "250", "LEASE", "1000"]),
        Reply(b"*3\r\n:0\r\n:6\r\n$3\r\nnew\r\n"),
        req(&["LOCK.ONCE", "demo1", "token"]),
        Reply(b"*3\r\n:30\r\n:0\r\n_\r\n"),
        req(&["LOCK.INFO"]),
        Reply(b"*1\r\n*10\r\n$5\r\ndemo1\r\n$7\r\nsession\r\n_\r\n:30\r\n:4\r\n$4\r\nweb1\r\n$9\r\n127.0.0.1\r\n:5\r\n:-1\r\n*1\r\n*6\r\n:5\r\n_\r\n$3\r\n::1\r\n$3\r\nkey\r\n$1\r\nk\r\n:2\r\n"),
        req(&["LOCK.INFO", "nolocks"]),
        Reply(b"*0\r\n"),
        req(&["LOCK.BREAK", "demo1", "KEY", "k"]),
        Reply(b":0\r\n"),
        req(&["INFO", "sessions"]),
        Reply(b"=26\r\ntxt:# Sessions\r\nsessions:3\r\n"),
        req(&["CLIENT", "ID"]),
        Reply(b":4\r\n"),
        req(&["CLIENT", "GETNAME"]),
        Reply(b"$4\r\nweb1\r\n"),
        req(&["QUIT"]),
        Reply(b"+OK\r\n"),
        ExpectEof,
    ])
    .await;

    let mut c = Client::connect_with(
        addr,
        ConnectOptions {
            password: Some("pw".into()),
            client_name: Some("web1".into()),
            resp3: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c.is_resp3());
    c.ping().await.unwrap();
    let id = c
        .new_session(NewOptions {
            ttl: Some(Duration::from_secs(600)),
            lifetime: Some(Duration::from_millis(1001)),
        })
        .await
        .unwrap();
    assert_eq!(id.len(), 40);

    let s = c
        .read(
            "demo1",
            &ReadOptions {
                create: true,
                ttl: Some(Duration::from_millis(1)),
                keys: Some(vec![Bytes::from("user"), Bytes::from("missing")]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.id, "demo1");
    assert_eq!(s.version, 7);
    assert!(!s.created);
    assert_eq!(s.get("user").unwrap(), "alice");
    assert_eq!(
        s.field("missing"),
        Some(&Field {
            key: Bytes::from("missing"),
            version: 0,
            value: None
        })
    );
    assert_eq!(
        c.read("nosuch", &ReadOptions::default()).await.unwrap(),
        None
    );

    let err = c
        .commit("demo2", &Commit::new().set_if("a", "5", 1).del("b"))
        .await
        .unwrap_err();
    match &err {
        Error::Conflict { keys, .. } => assert_eq!(keys, &["a"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), Some("CONFLICT"));
    let r = c
        .commit(
            "demo2",
            &Commit::new()
                .create()
                .fence(3)
                .unlock()
                .set_if("c", "1", 0)
                .del("b"),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        CommitResult {
            version: 12,
            op_versions: vec![12, 0]
        }
    );
    assert!(c.destroy("demo3").await.unwrap());
    assert!(!c.exists("demo3").await.unwrap());
    assert!(
        c.touch("demo1", Some(Duration::from_secs(3600)))
            .await
            .unwrap()
    );
    assert_eq!(c.ttl_ms("nosuch").await.unwrap(), -2);
    let opts = IncrOptions {
        create: true,
        fence: Some(9),
    };
    assert_eq!(
        c.incr("demo1", "visits", -41, &opts).await.unwrap(),
        (1, 13)
    );
    assert!(matches!(
        c.incr("demo1", "user", 1, &IncrOptions::default()).await,
        Err(Error::NotInt(_))
    ));
    assert_eq!(
        c.cas("demo1", "visits", "42", "43", None).await.unwrap(),
        CasResult::Swapped { version: 14 }
    );
    assert_eq!(
        c.cas("demo1", b"visits", b"42", b"44", Some(2))
            .await
            .unwrap(),
        CasResult::Mismatch {
            version: 14,
            current: Some(Bytes::from("43"))
        }
    );
    assert_eq!(
        c.regenerate("demo4", Some(Duration::ZERO), Some("demo4b"))
            .await
            .unwrap(),
        "demo4b"
    );
    assert_eq!(c.regenerate("demo4b", None, None).await.unwrap(), "fresh");

    let g = c
        .lock(
            "demo1",
            &LockOptions {
                key: Some(Bytes::from("visits")),
                wait: Duration::from_secs(1),
                lease: Some(Duration::from_secs(5)),
                reqid: Some("r1".into()),
                create: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(g.token, 21);
    assert_eq!(g.data.unwrap().get("visits").unwrap(), "43");
    let g = c.lock("demo9", &LockOptions::default()).await.unwrap();
    assert_eq!(
        g,
        LockGrant {
            token: 22,
            data: None
        }
    );
    let e = c
        .lock(
            "demo1",
            &LockOptions {
                wait: Duration::from_micros(10),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    assert!(c.unlock("demo1", Some(b"visits"), 21).await.unwrap());
    assert!(!c.unlock("demo9", None, 22).await.unwrap());
    c.renew("demo9", None, 22, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(matches!(
        c.renew("demo9", Some(b"k"), 22, Duration::from_micros(1500))
            .await,
        Err(Error::Fenced(_))
    ));
    assert_eq!(
        c.once(
            "demo1",
            "token",
            5,
            Duration::from_millis(250),
            Some(Duration::from_secs(1))
        )
        .await
        .unwrap(),
        OnceResult::Computed {
            version: 6,
            value: Some(Bytes::from("new"))
        }
    );
    assert_eq!(
        c.once("demo1", "token", 0, Duration::ZERO, None)
            .await
            .unwrap(),
        OnceResult::MustCompute {
            token: 30,
            version: 0,
            value: None
        }
    );
    let infos = c.lock_info(None).await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].scope, LockScope::Session);
    assert_eq!(infos[0].holder_name.as_deref(), Some("web1"));
    assert_eq!(infos[0].waiters[0].addr, "::1");
    assert_eq!(infos[0].waiters[0].key.as_deref(), Some(&b"k"[..]));
    assert!(c.lock_info(Some("nolocks")).await.unwrap().is_empty());
    assert!(!c.break_lock("demo1", Some(b"k")).await.unwrap());
    assert_eq!(
        c.info(Some("sessions")).await.unwrap(),
        "# Sessions\r\nsessions:3"
    );
    assert_eq!(c.client_id().await.unwrap(), 4);
    assert_eq!(
        c.command(&["CLIENT", "GETNAME"]).await.unwrap(),
        Value::Bulk(Bytes::from("web1"))
    );
    c.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn resp2_handshake_nil_forms_and_dribbled_replies() {
    let (addr, server) = fake(vec![
        req(&["AUTH", "default", "secret"]),
        Reply(b"+OK\r\n"),
        req(&["CLIENT", "SETNAME", "n1"]),
        Reply(b"+OK\r\n"),
        req(&["SESSION.READ", "a"]),
        Reply(b"$-1\r\n"),
        req(&["SESSION.READ", "b"]),
        Reply(b"*-1\r\n"),
        req(&["SESSION.READ", "c"]),
        Dribble(b"*4\r\n$1\r\nc\r\n:3\r\n:1\r\n*3\r\n$1\r\nk\r\n:0\r\n$-1\r\n"),
        req(&["SESSION.READ", "d"]),
        // Two replies in one segment: the second one must wait in the buffer.
        Reply(b"*4\r\n$1\r\nd\r\n:0\r\n:0\r\n*0\r\n+PONG\r\n"),
        req(&["PING"]),
        Close,
    ])
    .await;
    let mut c = Client::connect_with(
        addr,
        ConnectOptions {
            password: Some("secret".into()),
            client_name: Some("n1".into()),
            resp3: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!c.is_resp3());
    let none = ReadOptions::default();
    assert_eq!(c.read("a", &none).await.unwrap(), None);
    assert_eq!(c.read("b", &none).await.unwrap(), None);
    let s = c.read("c", &none).await.unwrap().unwrap();
    assert!(s.created);
    assert_eq!(s.fields[0].value, None);
    assert_eq!(s.get("k"), None);
    let s = c.read("d", &none).await.unwrap().unwrap();
    assert!(s.fields.is_empty());
    c.ping().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn wrong_password_fails_connect() {
    let (addr, server) = fake(vec![
        req(&["HELLO", "3", "AUTH", "default", "nope"]),
        Reply(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        Close,
    ])
    .await;
    let err = Client::connect_with(
        addr,
        ConnectOptions {
            password: Some("nope".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert_eq!(err.code(), Some("WRONGPASS"));
    finish(server).await;

    let (addr, server) = fake(vec![
        req(&["AUTH", "default", "nope"]),
        Reply(b"-WRONGPASS bad\r\n"),
        Close,
    ])
    .await;
    let opts = ConnectOptions {
        password: Some("nope".into()),
        ..plain()
    };
    let err = Client::connect_with(addr, opts).await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    finish(server).await;
}

#[tokio::test]
async fn server_errors_and_bad_shapes_keep_the_connection() {
    let (addr, server) = fake(vec![
        req(&["SESSION.COMMIT", "x", "SET", "a", "1"]),
        Reply(b"-NOSESSION session \"x\" does not exist\r\n"),
        req(&["SESSION.EXISTS", "x"]),
        Reply(b"+maybe\r\n"),
        req(&["SESSION.TTL", "x"]),
        Reply(b"*1\r\n-ERR nested\r\n"),
        // Out-of-band push before the reply is skipped.
        req(&["SESSION.DESTROY", "x"]),
        Reply(b">2\r\n+invalidate\r\n$1\r\nx\r\n:0\r\n"),
        req(&["NOSUCHCOMMAND"]),
        Reply(b"-ERR unknown command 'NOSUCHCOMMAND'\r\n"),
        req(&["PING"]),
        Reply(b"+PONG\r\n"),
        Close,
    ])
    .await;
    let mut c = Client::connect_with(addr, plain()).await.unwrap();
    let e = c
        .commit("x", &Commit::new().set("a", "1"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoSession(_)), "{e:?}");
    assert_eq!(e.to_string(), "NOSESSION session \"x\" does not exist");
    assert!(matches!(c.exists("x").await, Err(Error::Protocol(_))));
    assert!(matches!(
        c.ttl_ms("x").await,
        Err(Error::Server { code, .. }) if code == "ERR"
    ));
    assert!(!c.destroy("x").await.unwrap());
    let e = c.command(&[b"NOSUCHCOMMAND".as_slice()]).await.unwrap_err();
    assert_eq!(e.code(), Some("ERR"));
    assert!(!c.is_closed());
    c.ping().await.unwrap();
    assert!(matches!(
        c.command::<&str>(&[]).await,
        Err(Error::Protocol(_))
    ));
    finish(server).await;
}

#[tokio::test]
async fn close_mid_reply_and_garbage_drop_the_connection() {
    let (addr, server) = fake(vec![req(&["PING"]), Reply(b"*2\r\n:1\r\n"), Close]).await;
    let mut c = Client::connect_with(addr, plain()).await.unwrap();
    assert!(matches!(c.ping().await, Err(Error::Closed)));
    assert!(c.is_closed());
    assert!(matches!(c.ping().await, Err(Error::Closed)));
    c.close().await.unwrap();
    finish(server).await;

    let (addr, server) = fake(vec![req(&["PING"]), Reply(b"?garbage\r\n"), ExpectEof]).await;
    let mut c = Client::connect_with(addr, plain()).await.unwrap();
    assert!(matches!(c.ping().await, Err(Error::Protocol(_))));
    assert!(c.is_closed(), "the stream cannot be framed any more");
    finish(server).await;
}

#[tokio::test]
async fn cancelled_request_drops_the_connection() {
    let (addr, server) = fake(vec![
        req(&["LOCK.ACQUIRE", "s", "WAIT", "60000"]),
        // Never answer; the client gives up and must close the socket so the
        // server releases the wait (and any locks).
        ExpectEof,
    ])
    .await;
    let mut c = Client::connect_with(addr, plain()).await.unwrap();
    let opts = LockOptions {
        wait: Duration::from_secs(60),
        ..Default::default()
    };
    let r = tokio::time::timeout(Duration::from_millis(50), c.lock("s", &opts)).await;
    assert!(r.is_err(), "should time out");
    assert!(c.is_closed());
    assert!(matches!(c.ping().await, Err(Error::Closed)));
    finish(server).await;
}

#[tokio::test]
async fn connect_refused_is_io() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(matches!(Client::connect(addr).await, Err(Error::Io(_))));
}

#[test]
fn client_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let fut = async {
        let mut c = Client::connect("127.0.0.1:1").await?;
        c.read("x", &ReadOptions::default()).await?;
        c.commit("x", &Commit::new().set("k", "v")).await?;
        c.lock("x", &LockOptions::default()).await?;
        c.command(&["PING"]).await?;
        c.close().await
    };
    send(&fut);
}

// ---------------------------------------------------------------------------
// Node lists and failover (fake nodes).
// ---------------------------------------------------------------------------

/// An address nobody listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn fast() -> ConnectOptions {
    ConnectOptions {
        resp3: false,
        failover_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

#[tokio::test]
async fn connect_any_takes_the_first_live_node() {
    let dead = dead_addr().await;
    let (b, hb) = fake(vec![req(&["PING"]), Reply(b"+PONG\r\n")]).await;
    let mut c = Client::connect_any(&[dead, b], fast()).await.unwrap();
    assert_eq!(c.node(), Some(b.to_string().as_str()));
    c.ping().await.unwrap();
    finish(hb).await;

    let err = Client::connect_any(&[dead], fast()).await.unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    let none: [&str; 0] = [];
    assert!(Client::connect_any(&none, fast()).await.is_err());
}

#[tokio::test]
async fn connect_nodes_parses_a_comma_list() {
    let dead = dead_addr().await;
    let (b, hb) = fake(vec![req(&["PING"]), Reply(b"+PONG\r\n")]).await;
    let mut c = Client::connect_nodes(&format!("{dead}, {b},"), fast())
        .await
        .unwrap();
    c.ping().await.unwrap();
    finish(hb).await;
}

#[tokio::test]
async fn tryagain_is_sent_again_on_the_next_node() {
    let (a, ha) = fake(vec![
        req(&["SESSION.TOUCH", "x"]),
        Reply(b"-TRYAGAIN no leader reachable\r\n"),
        ExpectEof,
    ])
    .await;
    let (b, hb) = fake(vec![req(&["SESSION.TOUCH", "x"]), Reply(b":1\r\n")]).await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    assert!(c.touch("x", None).await.unwrap());
    assert_eq!(c.node(), Some(b.to_string().as_str()));
    finish(ha).await;
    finish(hb).await;
}

#[tokio::test]
async fn tryagain_everywhere_gives_up_within_the_bounds() {
    // A node that answers every request of every connection with TRYAGAIN.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = sock.write_all(b"-TRYAGAIN no leader reachable\r\n").await;
                }
            });
        }
    });
    let opts = ConnectOptions {
        max_attempts: 3,
        ..fast()
    };
    let mut c = Client::connect_any(&[a], opts).await.unwrap();
    let err = c.destroy("x").await.unwrap_err();
    assert!(matches!(err, Error::TryAgain(_)), "{err:?}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);

    // The total time bounds it too.
    let opts = ConnectOptions {
        max_attempts: 1000,
        failover_timeout: Duration::from_millis(300),
        ..fast()
    };
    let mut c = Client::connect_any(&[a], opts).await.unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(c.destroy("x").await, Err(Error::TryAgain(_))));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.abort();
}

#[tokio::test]
async fn a_write_lost_after_sending_is_unknown_and_not_sent_again() {
    // SESSION.TOUCH carries no request id: it is not sent again.
    let (a, ha) = fake(vec![req(&["SESSION.TOUCH", "x"]), Close]).await;
    let (b, hb) = fake(vec![req(&["PING"]), Reply(b"+PONG\r\n")]).await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    let err = c.touch("x", None).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.code(), Some("UNKNOWN"));
    assert!(err.to_string().contains("may or may not"), "{err}");
    // The next call reconnects, to the next node.
    c.ping().await.unwrap();
    finish(ha).await;
    finish(hb).await;
}

#[tokio::test]
async fn unknown_from_the_server_is_returned_for_writes() {
    let (a, ha) = fake(vec![
        req(&["SESSION.TOUCH", "x"]),
        Reply(b"-UNKNOWN the leader failed during the request\r\n"),
    ])
    .await;
    let mut c = Client::connect_any(&[a], fast()).await.unwrap();
    let err = c.touch("x", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Unknown(ref m) if m.starts_with("UNKNOWN the leader")),
        "{err:?}"
    );
    finish(ha).await;
}

#[tokio::test]
async fn a_read_lost_after_sending_is_sent_again() {
    let (a, ha) = fake(vec![req(&["SESSION.EXISTS", "x"]), Close]).await;
    let (b, hb) = fake(vec![req(&["SESSION.EXISTS", "x"]), Reply(b":1\r\n")]).await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    assert!(c.exists("x").await.unwrap());
    finish(ha).await;
    finish(hb).await;
}

#[tokio::test]
async fn a_node_that_died_while_idle_is_left_before_sending() {
    let (a, ha) = fake(vec![req(&["PING"]), Reply(b"+PONG\r\n"), Close]).await;
    let (b, hb) = fake(vec![req(&["SESSION.TOUCH", "x"]), Reply(b":1\r\n")]).await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    c.ping().await.unwrap();
    finish(ha).await; // node a closed the idle connection
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not an UNKNOWN: nothing was sent to the dead node.
    assert!(c.touch("x", None).await.unwrap());
    finish(hb).await;
}

#[tokio::test]
async fn a_client_without_a_node_list_does_not_reconnect() {
    let (a, ha) = fake(vec![req(&["SESSION.DESTROY", "x"]), Close]).await;
    let mut c = Client::connect_with(a, plain()).await.unwrap();
    let err = c.destroy("x").await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(matches!(c.ping().await, Err(Error::Closed)));
    assert_eq!(c.node(), None);
    finish(ha).await;
}

#[tokio::test]
async fn lock_info_takes_a_nil_address_as_empty() {
    // A cluster node answers nil for the address of a connection on another
    // node.
    let (a, ha) = fake(vec![
        req(&["LOCK.INFO", "s"]),
        Reply(b"*1\r\n*10\r\n$1\r\ns\r\n$7\r\nsession\r\n_\r\n:1\r\n:4\r\n_\r\n_\r\n:5\r\n:-1\r\n*1\r\n*6\r\n:5\r\n_\r\n_\r\n$7\r\nsession\r\n_\r\n:2\r\n"),
    ])
    .await;
    let mut c = Client::connect_with(a, plain()).await.unwrap();
    let info = c.lock_info(Some("s")).await.unwrap();
    assert_eq!(info[0].holder_addr, "");
    assert_eq!(info[0].waiters[0].addr, "");
    assert_eq!(info[0].waiters[0].client_id, 5);
    finish(ha).await;
}

#[tokio::test]
async fn an_acquire_with_a_request_id_is_sent_again() {
    let (a, ha) = fake(vec![
        req(&["LOCK.ACQUIRE", "s", "REQID", "r1"]),
        Reply(b"-UNKNOWN the leader failed during the request\r\n"),
        req(&["LOCK.ACQUIRE", "s", "REQID", "r1"]),
        Close,
    ])
    .await;
    let (b, hb) = fake(vec![
        req(&["LOCK.ACQUIRE", "s", "REQID", "r1"]),
        Reply(b"*2\r\n:7\r\n_\r\n"),
    ])
    .await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    let opts = LockOptions {
        reqid: Some("r1".into()),
        ..Default::default()
    };
    assert_eq!(c.lock("s", &opts).await.unwrap().token, 7);
    finish(ha).await;
    finish(hb).await;
    // Without a request id, an acquire is not sent again.
    let (a, ha) = fake(vec![req(&["LOCK.ACQUIRE", "s"]), Close]).await;
    let mut c = Client::connect_any(&[a], fast()).await.unwrap();
    assert!(
        c.lock("s", &LockOptions::default())
            .await
            .unwrap_err()
            .is_outcome_unknown()
    );
    finish(ha).await;
}

#[tokio::test]
async fn writes_with_a_node_list_carry_request_ids_and_are_sent_again_with_the_same_one() {
    let seen = Captured::default();
    let (a, ha) = fake(vec![
        ExpectLike(
            vec!["SESSION.INCR", "s", "n", "1", "REQID", "*"],
            seen.clone(),
        ),
        Close,
    ])
    .await;
    let (b, hb) = fake(vec![
        ExpectLike(
            vec!["SESSION.INCR", "s", "n", "1", "REQID", "*"],
            seen.clone(),
        ),
        Reply(b"*2\r\n:5\r\n:9\r\n"),
        ExpectLike(
            vec!["SESSION.COMMIT", "s", "SET", "k", "v", "REQID", "*"],
            seen.clone(),
        ),
        Reply(b"-UNKNOWN the leader failed during the request\r\n"),
        ExpectLike(
            vec!["SESSION.COMMIT", "s", "SET", "k", "v", "REQID", "*"],
            seen.clone(),
        ),
        Reply(b"*2\r\n:10\r\n*1\r\n:10\r\n"),
    ])
    .await;
    let mut c = Client::connect_any(&[a, b], fast()).await.unwrap();
    assert_eq!(
        c.incr("s", "n", 1, &IncrOptions::default()).await.unwrap(),
        (5, 9)
    );
    c.commit("s", &Commit::default().set("k", "v"))
        .await
        .unwrap();
    let ids = seen.lock().unwrap().clone();
    assert_eq!(ids.len(), 4, "{ids:?}");
    // The lost INCR went again with its id; the COMMIT got its own, twice.
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2]);
    finish(ha).await;
    finish(hb).await;
    // Another client picks other ids.
    let other = Captured::default();
    let (d, hd) = fake(vec![
        ExpectLike(vec!["SESSION.DESTROY", "s", "REQID", "*"], other.clone()),
        Reply(b":1\r\n"),
    ])
    .await;
    let mut c2 = Client::connect_any(&[d], fast()).await.unwrap();
    assert!(c2.destroy("s").await.unwrap());
    assert!(!ids.contains(&other.lock().unwrap()[0]));
    finish(hd).await;
    // A client without a node list sends none.
    let (e, he) = fake(vec![req(&["SESSION.DESTROY", "s"]), Reply(b":0\r\n")]).await;
    let mut c3 = Client::connect_with(e, plain()).await.unwrap();
    assert!(!c3.destroy("s").await.unwrap());
    finish(he).await;
}
