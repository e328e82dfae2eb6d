//! Limits and malformed input over real TCP against a real server.

mod common;

use sessiond_client::{Commit, ReadOptions};

/// `--max-keys-per-session`: a commit that would leave the session with more
/// keys is refused with `LIMIT` and applies nothing; one that reaches the
/// limit exactly, or replaces keys without adding any, is applied.
#[tokio::test]
async fn a_commit_over_the_keys_per_session_limit_applies_nothing() {
    let mut config = sessiond_server::Config::for_tests();
    config.max_keys_per_session = 3;
    let server = common::TestServer::start_with(config).await;
    let mut c = server.client().await;

    // Exactly at the limit: applied.
    let at_limit = c
        .commit(
            "lim",
            &Commit::new()
                .create()
                .set("a", "1")
                .set("b", "2")
                .set("c", "3"),
        )
        .await
        .expect("a commit reaching the limit exactly is applied");
    let before = server.session("lim").await;
    assert_eq!(before.fields.len(), 3);
    assert_eq!(before.version, at_limit.version);

    // One key too many: LIMIT, and neither the new key nor the change to an
    // existing key in the same commit is applied.
    let err = c
        .commit("lim", &Commit::new().set("a", "changed").set("d", "4"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("LIMIT"), "{err}");
    assert_eq!(
        err.to_string(),
        "LIMIT session would have 4 keys, more than the limit of 3"
    );
    assert_eq!(
        server.session("lim").await,
        before,
        "the refused commit changed the session"
    );

    // The count is the session's after the commit: deleting one key and
    // adding another stays at the limit, and so does replacing a value.
    c.commit("lim", &Commit::new().del("b").set("d", "4"))
        .await
        .expect("a commit that keeps the key count at the limit is applied");
    c.commit("lim", &Commit::new().set("a", "x"))
        .await
        .expect("replacing a value adds no key");
    let s = server.session("lim").await;
    let mut keys: Vec<&[u8]> = s.fields.iter().map(|f| f.key.as_ref()).collect();
    keys.sort();
    assert_eq!(keys, [&b"a"[..], b"c", b"d"]);

    // A commit that would create a session over the limit creates nothing.
    let err = c
        .commit(
            "lim2",
            &Commit::new()
                .create()
                .set("a", "1")
                .set("b", "2")
                .set("c", "3")
                .set("d", "4"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("LIMIT"), "{err}");
    assert!(!c.exists("lim2").await.unwrap());
    assert!(
        c.read("lim2", &ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    server.stop().await;
}

/// A negative bulk length cannot be framed: the server replies with a
/// protocol error and closes the connection, as Redis does; the requests
/// before it in the same write are answered first, and the server goes on
/// serving other connections.
#[tokio::test]
async fn a_negative_bulk_length_is_a_protocol_error_that_closes_the_connection() {
    let server = common::TestServer::start().await;
    for input in [
        &b"*1\r\n$-5\r\n"[..],
        // A nil bulk string is no argument either.
        b"*2\r\n$4\r\nECHO\r\n$-1\r\n",
    ] {
        let (out, closed) = common::raw_exchange(server.addr, input).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            "-ERR Protocol error: invalid bulk length\r\n",
            "{input:?}"
        );
        assert!(closed, "{input:?} should close the connection");
    }

    let (out, closed) = common::raw_exchange(server.addr, b"PING\r\n*1\r\n$-5\r\nPING\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(closed);

    let mut c = server.client().await;
    c.ping().await.unwrap();
    server.stop().await;
}
