//! The admin commands through redis-py (Debian package python3-redis), as
//! operators' scripts call them: `client_list()`, `client_kill_filter()`,
//! `slowlog_get()`, `slowlog_len()`, `slowlog_reset()`.

mod common;

use std::process::Command;

const SCRIPT: &str = r#"
import sys, redis
port = int(sys.argv[1])
r = redis.Redis(port=port, decode_responses=True)
other = redis.Redis(port=port, decode_responses=True)
other.client_setname("victim")
other.execute_command("LOCK.ACQUIRE", "py1", "CREATE")
clients = r.client_list()
victim = [c for c in clients if c["name"] == "victim"]
assert len(victim) == 1, clients
assert victim[0]["locks"] == "py1", victim
assert int(victim[0]["age"]) >= 0
assert r.slowlog_len() >= 1
entries = r.slowlog_get(5)
assert entries and all({"id", "start_time", "duration", "command"} <= set(e) for e in entries), entries
text = lambda c: c.decode() if isinstance(c, bytes) else c
assert any(text(e["command"]).startswith("LOCK.ACQUIRE py1") for e in entries), entries
assert r.slowlog_reset()
assert r.client_kill_filter(_id=victim[0]["id"]) == 1
# Its lock went with it: another client gets it at once.
got = r.execute_command("LOCK.ACQUIRE", "py1", "WAIT", "5000")
assert got, got
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_reads_client_list_and_slowlog() {
    let mut config = sessiond_server::Config::for_tests();
    config.slowlog_log_slower_than = 0;
    let server = common::TestServer::start_with(config).await;
    let port = server.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("/usr/bin/python3")
            .args(["-c", SCRIPT, &port])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
