//! Session commands over real TCP against a real server.

mod common;

use std::time::Duration;

use sessiond_client::{Bytes, Client, Commit, Error, ReadOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn create() -> ReadOptions {
    ReadOptions {
        create: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn read_commit_round_trip_with_versions() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    let s = c.read("rt", &create()).await.unwrap().unwrap();
    assert!(s.created);
    let out = c
        .commit(
            "rt",
            &Commit::new()
                .set("a", "1")
                .set("b", Bytes::from_static(b"\x00\xff")),
        )
        .await
        .unwrap();
    let s = c
        .read("rt", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.version, out.version);
    assert_eq!(s.get(b"a").map(|v| v.as_ref()), Some(&b"1"[..]));
    assert_eq!(s.get(b"b").map(|v| v.as_ref()), Some(&b"\x00\xff"[..]));
    assert_eq!(s.version_of(b"a"), out.version);
    server.stop().await;
}

#[tokio::test]
async fn a_failed_condition_applies_nothing_and_names_every_conflicting_key() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    let v = c
        .commit("cc", &Commit::new().create().set("a", "1").set("b", "1"))
        .await
        .unwrap()
        .version;
    c.commit("cc", &Commit::new().set("a", "2")).await.unwrap();
    c.commit("cc", &Commit::new().set("b", "2")).await.unwrap();
    let err = c
        .commit(
            "cc",
            &Commit::new()
                .set_if("a", "x", v)
                .set_if("b", "x", v)
                .set("c", "new"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Conflict { keys, .. } => assert_eq!(keys, vec!["a".to_owned(), "b".to_owned()]),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let s = c
        .read("cc", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get(b"a").unwrap().as_ref(), b"2");
    assert!(
        s.get(b"c").is_none(),
        "nothing of a failed commit is applied"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_delta_commits_to_different_keys_all_survive() {
    let server = common::TestServer::start().await;
    server.client().await.read("par", &create()).await.unwrap();
    server
        .concurrently(20, |i, mut c| async move {
            // Each "request" reads everything, then writes back only its key.
            let _ = c.read("par", &ReadOptions::default()).await.unwrap();
            c.commit("par", &Commit::new().set(format!("k{i}"), format!("v{i}")))
                .await
                .unwrap();
        })
        .await;
    assert_eq!(server.session("par").await.fields.len(), 20);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_50_concurrent_clients_lose_nothing() {
    let server = common::TestServer::start().await;
    server
        .concurrently(50, |_, mut c| async move {
            for _ in 0..10 {
                let create = sessiond_client::IncrOptions {
                    create: true,
                    fence: None,
                };
                c.incr("ctr", "n", 1, &create).await.unwrap();
            }
        })
        .await;
    let s = server.session("ctr").await;
    assert_eq!(s.get(b"n").unwrap().as_ref(), b"500");
    server.stop().await;
}

#[tokio::test]
async fn a_late_write_after_destroy_does_not_resurrect_the_session() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    c.commit("gone", &Commit::new().create().set("token", "t"))
        .await
        .unwrap();
    assert!(c.destroy("gone").await.unwrap());
    let err = c
        .commit("gone", &Commit::new().set("token", "late"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSession(_)), "{err:?}");
    assert!(c.incr("gone", "n", 1, &Default::default()).await.is_err());
    assert!(
        c.read("gone", &ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!c.exists("gone").await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_session_expires_after_its_idle_ttl_and_touch_slides_it() {
    let clock = sessiond_core::ManualClock::new(1_000_000);
    let server = common::TestServer::start_with_clock(clock.clone()).await;
    let mut c = server.client().await;
    c.read(
        "short",
        &ReadOptions {
            create: true,
            ttl: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ttl = c.ttl_ms("short").await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "{ttl}");
    assert_eq!(ttl, 1000, "no time passed on the test clock");
    clock.advance(600);
    assert!(c.touch("short", None).await.unwrap());
    clock.advance(600);
    assert!(c.exists("short").await.unwrap(), "touch slid the deadline");
    assert_eq!(c.ttl_ms("short").await.unwrap(), 400);
    clock.advance(400);
    assert!(!c.exists("short").await.unwrap(), "gone at its deadline");
    assert_eq!(c.ttl_ms("short").await.unwrap(), -2);
    server.stop().await;
}

#[tokio::test]
async fn regenerate_keeps_the_old_id_answering_during_grace() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    c.commit("old", &Commit::new().create().set("user", "bob"))
        .await
        .unwrap();
    let new = c
        .regenerate("old", Some(Duration::from_secs(30)), None)
        .await
        .unwrap();
    assert_eq!(new.len(), 40);
    // An in-flight request still using the old id reads and writes the session.
    let s = c
        .read("old", &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.id, new);
    c.commit("old", &Commit::new().set("cart", "1"))
        .await
        .unwrap();
    let s = c
        .read(&new, &ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get(b"cart").unwrap().as_ref(), b"1");
    assert_eq!(s.get(b"user").unwrap().as_ref(), b"bob");
    // With no grace the old id is gone at once.
    let newer = c
        .regenerate(&new, Some(Duration::ZERO), None)
        .await
        .unwrap();
    assert!(
        c.read(&new, &ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(c.exists(&newer).await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn auth_is_required_when_a_password_is_set() {
    let mut config = sessiond_server::Config::for_tests();
    config.requirepass = Some("s3cret".into());
    let server = common::TestServer::start_with(config).await;
    let mut raw = Client::connect_with(
        server.addr,
        sessiond_client::ConnectOptions {
            resp3: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = raw.read("x", &ReadOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(raw.command(&["AUTH", "wrong"]).await.is_err());
    raw.command(&["AUTH", "s3cret"]).await.unwrap();
    assert!(
        raw.read("x", &ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    let mut c = Client::connect_with(
        server.addr,
        sessiond_client::ConnectOptions {
            password: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.ping().await.unwrap();
    server.stop().await;
}

async fn raw_exchange(addr: std::net::SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (out, closed)
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_survives_where_it_can() {
    let mut config = sessiond_server::Config::for_tests();
    config.max_value_bytes = 100;
    config.max_request_bytes = 4096;
    let server = common::TestServer::start_with(config).await;
    let a = server.addr;

    // Unknown command, wrong arity, bad number, bad id, unknown option: error, then PING still works.
    let (out, closed) = raw_exchange(
        a,
        b"NOPE\r\n*1\r\n$12\r\nSESSION.READ\r\n*4\r\n$12\r\nSESSION.INCR\r\n$1\r\ns\r\n$1\r\nk\r\n$3\r\nabc\r\nSESSION.READ bad/id\r\nSESSION.READ s FROB\r\nPING\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(!closed, "{text}");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR unknown command"), "{text}");
    assert!(
        lines[1].starts_with("-ERR wrong number of arguments"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("-ERR value is not an integer"),
        "{text}"
    );
    assert!(lines[3].starts_with("-BADID"), "{text}");
    assert!(lines[4].starts_with("-ERR syntax error"), "{text}");
    assert_eq!(lines[5], "+PONG");

    // An oversized value: LIMIT, nothing stored, connection open.
    let big = "x".repeat(200);
    let (out, closed) = raw_exchange(
        a,
        format!("SESSION.COMMIT big CREATE SET k {big}\r\nSESSION.EXISTS big\r\n").as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("-LIMIT"), "{text}");
    assert!(text.ends_with(":0\r\n"), "{text}");
    assert!(!closed);

    // Hostile length prefixes and broken framing: an error, then the connection closes.
    for input in [
        &b"*1\r\n$999999999999\r\n"[..],
        b"*99999999\r\n",
        b"*1\r\n*1\r\n*1\r\n",
        b"*1\r\n$4\r\nPINGxx",
        b"*x\r\n",
    ] {
        let (out, closed) = raw_exchange(a, input).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("-LIMIT") || text.starts_with("-ERR Protocol error"),
            "{input:?} → {text}"
        );
        assert!(closed, "{input:?} should close the connection");
    }

    // A client that dies mid-request loses nothing and harms nobody.
    {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"*5\r\n$14\r\nSESSION.COMMIT\r\n$4\r\nhalf\r\n$6\r\nCREATE\r\n$3\r\nSET")
            .await
            .unwrap();
    }
    let mut c = server.client().await;
    assert!(!c.exists("half").await.unwrap());
    c.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn resp3_after_hello_and_resp2_by_default() {
    let server = common::TestServer::start().await;
    let (out, _) = raw_exchange(
        server.addr,
        b"SESSION.READ nope\r\nHELLO 3\r\nSESSION.READ nope\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("$-1\r\n%7\r\n"), "{text}");
    assert!(text.ends_with("_\r\n"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_with_an_error() {
    let mut config = sessiond_server::Config::for_tests();
    config.max_connections = 2;
    let server = common::TestServer::start_with(config).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    let (out, closed) = raw_exchange(server.addr, b"PING\r\n").await;
    assert!(String::from_utf8_lossy(&out).starts_with("-LIMIT max number of clients"));
    assert!(closed);
    drop(a);
    // Until the server has noticed the close, a new connection may still be
    // refused; poll (bounded) until one is served.
    let mut out = Vec::new();
    for _ in 0..500 {
        out = raw_exchange(server.addr, b"PING\r\n").await.0;
        if out == b"+PONG\r\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(&out, b"+PONG\r\n");
    server.stop().await;
}

#[tokio::test]
async fn info_counts_commands_and_failed_calls() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    let processed = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total in {info}"))
    };
    let before = processed(c.info(Some("stats")).await.unwrap());
    c.ping().await.unwrap();
    c.ping().await.unwrap();
    let err = c.commit("nobody", &Commit::new().set("a", "1")).await;
    assert_eq!(err.unwrap_err().code(), Some("NOSESSION"));
    let info = c.info(Some("commandstats")).await.unwrap();
    assert!(
        info.contains("cmdstat_ping:calls=2,failed_calls=0\r\n"),
        "{info}"
    );
    assert!(
        info.contains("cmdstat_session.commit:calls=1,failed_calls=1\r\n"),
        "{info}"
    );
    // The first INFO, two PINGs, the commit and the second INFO.
    let after = processed(c.info(Some("stats")).await.unwrap());
    assert_eq!(after - before, 5);
    server.stop().await;
}

/// A write sent again with its request id (a client retrying after a lost
/// connection, possibly on another node) is answered as the first time and
/// applied once, whatever happened in between.
#[tokio::test]
async fn a_write_repeated_with_its_request_id_applies_once() {
    let server = common::TestServer::start().await;
    let mut c = server.client().await;
    let incr = ["SESSION.INCR", "rq", "n", "5", "CREATE", "REQID", "c1-1"];
    let first = c.command(&incr).await.unwrap();
    // Someone else writes the same key meanwhile.
    let mut other = server.client().await;
    other
        .command(&["SESSION.INCR", "rq", "n", "100"])
        .await
        .unwrap();
    // The repeat gets the first answer (value 5), not 110, and adds nothing.
    assert_eq!(c.command(&incr).await.unwrap(), first);
    let s = server.session("rq").await;
    assert_eq!(s.get(b"n").map(|v| v.as_ref()), Some(&b"105"[..]));

    // A fenced commit that unlocked: its repeat is not told its token is
    // stale, it gets the success it already had.
    let sessiond_client::Value::Array(grant) = c.command(&["LOCK.ACQUIRE", "rq"]).await.unwrap()
    else {
        panic!("LOCK.ACQUIRE answers an array");
    };
    let token = grant[0].as_int().unwrap().to_string();
    let commit = [
        "SESSION.COMMIT",
        "rq",
        "FENCE",
        &token,
        "UNLOCK",
        "SET",
        "k",
        "v",
        "REQID",
        "c1-2",
    ];
    let first = c.command(&commit).await.unwrap();
    assert_eq!(c.command(&commit).await.unwrap(), first);
    // A regenerate's repeat names the id the first one chose.
    let regen = ["SESSION.REGENERATE", "rq", "REQID", "c1-3"];
    let new_id = c.command(&regen).await.unwrap();
    assert_eq!(c.command(&regen).await.unwrap(), new_id);
    // A destroy's repeat says the session existed, as the first did.
    let new_id = new_id.as_str().unwrap().to_owned();
    let destroy = ["SESSION.DESTROY", new_id.as_str(), "REQID", "c1-4"];
    assert_eq!(c.command(&destroy).await.unwrap().as_int(), Some(1));
    assert_eq!(c.command(&destroy).await.unwrap().as_int(), Some(1));
    // An id reused for another command is refused, not answered with the
    // other command's result.
    let err = c
        .command(&["SESSION.CAS", "x", "k", "a", "b", "REQID", "c1-1"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already used for SESSION.INCR"),
        "{err}"
    );
    // Request ids are bounded and printable.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "", "a b"] {
        let err = c
            .command(&["SESSION.DESTROY", "y", "REQID", bad])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("REQID must be"), "{err}");
    }
    server.stop().await;
}
