//! Redis admin commands operators reach for: CLIENT LIST, CLIENT KILL,
//! SLOWLOG.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use sessiond_client::{Client, Value};

async fn cmd(c: &mut Client, args: &[&str]) -> Value {
    c.command(args).await.expect("command")
}

/// CLIENT LIST parsed as redis-py's `client_list()` does: lines, then
/// `key=value` words, split at the first `=` (each word must have one).
async fn client_list(c: &mut Client) -> Vec<BTreeMap<String, String>> {
    let v = cmd(c, &["CLIENT", "LIST"]).await;
    let text = v.as_str().expect("CLIENT LIST is text").to_owned();
    text.lines()
        .map(|line| {
            line.split(' ')
                .map(|w| {
                    let (k, v) = w
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{w:?} in {line:?}"));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .collect()
}

/// Polls CLIENT LIST (bounded) until `pred` holds for the entry of `id`
/// (or, with `None`, for the absence of `id`).
async fn wait_for_client(
    c: &mut Client,
    id: i64,
    pred: impl Fn(Option<&BTreeMap<String, String>>) -> bool,
) -> Vec<BTreeMap<String, String>> {
    for _ in 0..200 {
        let list = client_list(c).await;
        if pred(list.iter().find(|e| e["id"] == id.to_string())) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("client {id} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_locks_held_and_awaited_and_kill_frees_them() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let mut holder = server.client().await;
    let holder_id = holder.client_id().await.unwrap();
    cmd(&mut holder, &["CLIENT", "SETNAME", "web1"]).await;
    let grant = cmd(&mut holder, &["LOCK.ACQUIRE", "s1", "CREATE"]).await;
    assert!(matches!(grant, Value::Array(_)), "{grant:?}");
    let key = cmd(&mut holder, &["LOCK.ACQUIRE", "s3", "KEY", "a b", "CREATE"]).await;
    assert!(matches!(key, Value::Array(_)), "{key:?}");

    // The waiter queues behind a third lock of the holder.
    cmd(&mut holder, &["LOCK.ACQUIRE", "s2", "CREATE"]).await;
    let mut waiter = server.client().await;
    let waiter_id = waiter.client_id().await.unwrap();
    let waiting = tokio::spawn(async move {
        let v = waiter
            .command(&["LOCK.ACQUIRE", "s2", "CREATE", "WAIT", "60000"])
            .await;
        (waiter, v)
    });
    let list = wait_for_client(&mut admin, waiter_id, |e| {
        e.is_some_and(|e| e["waits"] == "s2")
    })
    .await;
    let h = list
        .iter()
        .find(|e| e["id"] == holder_id.to_string())
        .expect("holder listed");
    assert_eq!(h["name"], "web1");
    assert!(h["addr"].starts_with("127.0.0.1:"), "{h:?}");
    assert!(h["age"].parse::<u64>().is_ok(), "{h:?}");
    let mut locks: Vec<&str> = h["locks"].split(',').collect();
    locks.sort_unstable();
    assert_eq!(locks, ["s1", "s2", "s3/a\\x20b"]);
    assert_eq!(h["waits"], "");

    // Killing the holder hands its lock to the waiter.
    let killed = cmd(
        &mut admin,
        &["CLIENT", "KILL", "ID", &holder_id.to_string()],
    )
    .await;
    assert_eq!(killed, Value::Int(1));
    let (mut waiter, granted) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiter is served")
        .unwrap();
    assert!(matches!(granted, Ok(Value::Array(_))), "{granted:?}");
    assert!(
        holder.command(&["PING"]).await.is_err(),
        "the holder's connection is closed"
    );
    wait_for_client(&mut admin, holder_id, |e| e.is_none()).await;

    // By address; the asking connection is spared unless SKIPME no.
    let list = client_list(&mut admin).await;
    let waiter_addr = list
        .iter()
        .find(|e| e["id"] == waiter_id.to_string())
        .expect("waiter listed")["addr"]
        .clone();
    let by_addr = cmd(&mut admin, &["CLIENT", "KILL", "ADDR", &waiter_addr]).await;
    assert_eq!(by_addr, Value::Int(1));
    assert!(waiter.command(&["PING"]).await.is_err());
    let admin_id = admin.client_id().await.unwrap().to_string();
    assert_eq!(
        cmd(&mut admin, &["CLIENT", "KILL", "ID", &admin_id]).await,
        Value::Int(0)
    );
    assert_eq!(
        cmd(&mut admin, &["CLIENT", "KILL", "ID", "999999"]).await,
        Value::Int(0)
    );
    let old_form = admin.command(&["CLIENT", "KILL", "192.0.2.1:1"]).await;
    assert!(
        format!("{old_form:?}").contains("No such client"),
        "{old_form:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowlog_keeps_the_newest_slow_commands_in_redis_shape() {
    let mut config = sessiond_server::Config::for_tests();
    config.slowlog_log_slower_than = 0;
    config.slowlog_max_len = 3;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    cmd(&mut c, &["CLIENT", "SETNAME", "app"]).await;
    for i in 0..5 {
        cmd(&mut c, &["ECHO", &format!("m{i}")]).await;
    }
    assert_eq!(cmd(&mut c, &["SLOWLOG", "LEN"]).await, Value::Int(3));
    let Value::Array(entries) = cmd(&mut c, &["SLOWLOG", "GET", "2"]).await else {
        panic!("SLOWLOG GET is an array");
    };
    assert_eq!(entries.len(), 2);
    // [id, unix time, µs, [args], addr, name], newest first. The newest is
    // the SLOWLOG LEN before.
    let Value::Array(first) = &entries[0] else {
        panic!("an entry is an array")
    };
    assert_eq!(first.len(), 6);
    assert!(first[1].as_int().is_some_and(|t| t > 1_600_000_000));
    assert!(first[2].as_int().is_some_and(|us| us >= 0));
    assert_eq!(
        first[3],
        Value::Array(vec![
            Value::Bulk("SLOWLOG".into()),
            Value::Bulk("LEN".into())
        ])
    );
    assert!(
        first[4]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert_eq!(first[5].as_str(), Some("app"));
    let Value::Array(second) = &entries[1] else {
        panic!("an entry is an array")
    };
    assert_eq!(
        second[3],
        Value::Array(vec![Value::Bulk("ECHO".into()), Value::Bulk("m4".into())])
    );
    assert_eq!(
        first[0].as_int().unwrap(),
        second[0].as_int().unwrap() + 1,
        "ids grow"
    );
    assert_eq!(
        cmd(&mut c, &["SLOWLOG", "RESET"]).await,
        Value::Simple("OK".into())
    );
    // Only the RESET itself, logged after it ran.
    let Value::Array(after) = cmd(&mut c, &["SLOWLOG", "GET", "-1"]).await else {
        panic!("array");
    };
    assert_eq!(after.len(), 1, "{after:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_queued_for_a_lock_is_not_slow() {
    let mut config = sessiond_server::Config::for_tests();
    config.slowlog_log_slower_than = 500_000; // 0.5 s
    let server = TestServer::start_with(config).await;
    let mut holder = server.client().await;
    cmd(&mut holder, &["LOCK.ACQUIRE", "s", "CREATE"]).await;
    let mut c = server.client().await;
    // Waits 0.7 s, then times out: all of it queued.
    let r = c.command(&["LOCK.ACQUIRE", "s", "WAIT", "700"]).await;
    assert!(format!("{r:?}").contains("TIMEOUT") || r.is_err(), "{r:?}");
    assert_eq!(cmd(&mut c, &["SLOWLOG", "LEN"]).await, Value::Int(0));
    server.stop().await;
}
