//! Runs the bench's quick mode against real servers (sessiond, redis-server,
//! memcached, which `scripts/test.sh` installs) and checks that the results
//! are sane. No timing assertions: only that work was done, nothing failed,
//! the locked cycle lost no update, and the JSON parses.

use std::process::Command;

#[test]
fn quick_mode_measures_every_store_without_errors() {
    let dir = std::env::temp_dir().join(format!("sessiond-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond-bench"))
        .args([
            "--quick",
            "ping",
            "cycle",
            "locked",
            "handoff",
            "--stores",
            "sessiond-everysec,sessiond-always,redis-off,memcached",
            "--conns",
            "1,4",
            "--handoff-clients",
            "3",
            "--duration",
            "0.3",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run sessiond-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sessiond-bench failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("### Session cycle"),
        "no table on stdout:\n{stdout}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("JSON parses");
    std::fs::remove_dir_all(&dir).ok();

    let rows = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let stores = |k: &str| {
        let mut s: Vec<String> = rows(k)
            .iter()
            .map(|r| r["store"].as_str().unwrap().to_string())
            .collect();
        s.dedup();
        s
    };
    assert_eq!(
        stores("cycle"),
        [
            "sessiond-always",
            "sessiond-everysec",
            "redis-off",
            "memcached"
        ]
    );
    assert_eq!(
        stores("locked"),
        ["sessiond-always", "sessiond-everysec", "redis-off"]
    );
    for r in rows("cycle").iter().chain(rows("locked").iter()) {
        assert!(r["ops"].as_u64().unwrap() > 0, "no work done: {r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "errors: {r}");
        assert!(r["lat"]["p50_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in rows("locked") {
        assert_eq!(r["lost_updates"].as_u64(), Some(0), "lost updates: {r}");
    }
    let ping = rows("ping");
    // Back to back and after 1 ms idle, for sessiond and Redis.
    assert_eq!(ping.len(), 4);
    assert_eq!(
        ping.iter()
            .filter(|r| r["store"].as_str().unwrap().contains("after 1 ms idle"))
            .count(),
        2
    );
    for r in &ping {
        assert!(r["lat"]["p50_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    let handoff = rows("handoff");
    let names: Vec<&str> = handoff
        .iter()
        .map(|r| r["contender"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sessiond",
            "phpredis-6 recipe",
            "phpredis-5.3.7 recipe",
            "flock"
        ]
    );
    for r in &handoff {
        assert!(r["cycles"].as_u64().unwrap() > 0, "no lock cycles: {r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "errors: {r}");
    }
    // sessiond's FIFO hand-off never gives up and never runs unlocked.
    assert_eq!(handoff[0]["gave_up"].as_u64(), Some(0));
    assert!(handoff[0]["handoff"]["count"].as_u64().unwrap() > 0);
}

/// The cluster benchmark in quick mode: a three-node sessiond cluster, one
/// node, Redis with a replica and `WAIT`, three etcd members (Debian's
/// etcd-server, which `scripts/test.sh` installs), and two leader kills.
#[test]
fn quick_cluster_mode_measures_every_store_and_a_failover() {
    let dir = std::env::temp_dir().join(format!("sessiond-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond-bench"))
        .args([
            "--quick",
            "cluster",
            "--kills",
            "2",
            // Long enough that one election on this busy machine (a few
            // hundred ms without a leader) cannot leave a cell empty.
            "--duration",
            "1",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run sessiond-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sessiond-bench failed:\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("JSON parses");
    std::fs::remove_dir_all(&dir).ok();
    for key in ["cluster_cycle", "cluster_locked"] {
        let rows = v[key].as_array().cloned().unwrap_or_default();
        let mut stores: Vec<&str> = rows.iter().map(|r| r["store"].as_str().unwrap()).collect();
        stores.dedup();
        assert_eq!(
            stores,
            [
                "sessiond-1node",
                "sessiond-cluster3",
                "sessiond-cluster3-always",
                "redis-wait",
                "etcd3"
            ],
            "{key}: {stderr}"
        );
        for r in &rows {
            assert!(r["ops"].as_u64().unwrap() > 0, "{key}: no work: {r}");
            assert_eq!(r["errors"].as_u64(), Some(0), "{key}: {r}");
            if key == "cluster_locked" {
                assert_eq!(r["lost_updates"].as_u64(), Some(0), "{key}: {r}");
            }
        }
    }
    let f = &v["failover"];
    assert_eq!(f["kills"].as_u64(), Some(2), "{f}");
    assert_eq!(f["samples_ms"].as_array().map(Vec::len), Some(2), "{f}");
    // Every acknowledged increment counted once: none lost, none repeated.
    assert_eq!(
        f["increments_acknowledged"].as_i64(),
        f["final_value"].as_i64(),
        "{f}"
    );
}
