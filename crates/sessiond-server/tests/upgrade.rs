//! Upgrades: a data directory written by an earlier release (the committed
//! fixture `tests/fixtures/datadir-format1`, written before the storage
//! format was versioned) opens in this one as a single server, and becomes
//! the first member of a cluster without losing a session; a file of an
//! unknown, newer format is refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ServerProcess, free_port};
use sessiond_client::{Client, ReadOptions, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-format1")
}

/// A copy of the fixture directory (tests never write to the fixture).
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("sessions.redb"),
        dir.path().join("sessions.redb"),
    )
    .unwrap();
    dir
}

/// Checks what the fixture holds, through `addr`.
async fn assert_fixture_sessions(addr: std::net::SocketAddr) {
    let mut c = Client::connect(addr).await.unwrap();
    let alice = c
        .read("fx-alice", &ReadOptions::default())
        .await
        .unwrap()
        .expect("fx-alice survived");
    assert_eq!(alice.get(b"user").map(|v| v.as_ref()), Some(&b"alice"[..]));
    assert_eq!(
        alice.get(b"cart").map(|v| v.as_ref()),
        Some(&b"3 items"[..])
    );
    assert_eq!(alice.get(b"bin").map(|v| v.as_ref()), Some(&b"a\tb"[..]));
    assert_eq!(alice.get(b"visits").map(|v| v.as_ref()), Some(&b"42"[..]));
    // The alias of the regenerated session leads to it.
    let bob = c
        .read("fx-bob", &ReadOptions::default())
        .await
        .unwrap()
        .expect("fx-bob (an alias) survived");
    assert_eq!(bob.get(b"user").map(|v| v.as_ref()), Some(&b"bob"[..]));
    // Versions go on from where they were: a new write gets a higher one.
    let before = alice.version;
    let after = c
        .commit("fx-alice", &sessiond_client::Commit::new().set("k", "v"))
        .await
        .unwrap()
        .version;
    assert!(after > before, "version {after} after {before}");
    // Fencing tokens never go back: the fixture's epoch was 1.
    let Value::Array(grant) = c.command(&["LOCK.ACQUIRE", "fx-bob2"]).await.unwrap() else {
        panic!("LOCK.ACQUIRE answers an array");
    };
    let token = grant[0].as_int().unwrap();
    assert!(
        token >> 32 >= 2,
        "token {token:#x} is of an epoch before the fixture's"
    );
}

#[tokio::test]
async fn a_data_directory_of_format_1_opens_as_a_single_server() {
    let dir = copy_of_fixture();
    let server = ServerProcess::start(dir.path(), &[]);
    assert_fixture_sessions(server.addr).await;
    assert!(server.terminate().success());
    // Opened once, the file says its format; it opens again.
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = Client::connect(server.addr).await.unwrap();
    assert!(c.exists("fx-alice").await.unwrap());
    server.kill();
}

#[tokio::test]
async fn a_data_file_of_a_newer_format_is_refused() {
    let dir = copy_of_fixture();
    {
        let db = redb::Database::open(dir.path().join("sessions.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let data_dir = dir.path().to_str().unwrap();
    let Err((status, stderr)) =
        ServerProcess::try_start(&["--port", "0", "--data-dir", data_dir], &[])
    else {
        panic!("a format-99 file was opened");
    };
    assert!(!status.success());
    assert!(
        stderr.contains("storage format 99, newer than this build's (1)"),
        "{stderr}"
    );
}

/// CLUSTER.INFO of `addr`.
async fn cluster_info(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(addr).await.unwrap();
    match c.command(&["CLUSTER.INFO"]).await.unwrap() {
        Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLUSTER.INFO answered {other:?}"),
    }
}

/// Runs `args` on `addr` until it succeeds (an election may be running:
/// `TRYAGAIN`), for up to 20 s.
async fn call(addr: std::net::SocketAddr, args: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = match Client::connect(addr).await {
            Ok(mut c) => c.command(args).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{args:?} on {addr}: {e}"),
        }
    }
}

fn cluster_node(dir: &Path, id: u64, raft: &str, initial: Option<&str>) -> ServerProcess {
    let id = id.to_string();
    let mut args = vec![
        "--durability",
        "always",
        "--node-id",
        &id,
        "--raft-addr",
        raft,
    ];
    if let Some(initial) = initial {
        args.extend(["--initial-cluster", initial]);
    }
    ServerProcess::start(dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_becomes_the_first_member_of_a_cluster() {
    let n1 = copy_of_fixture();
    let raft: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();

    // Node 1 on the single server's directory, as a cluster of one.
    let alone = format!("1={}", raft[0]);
    let node1 = cluster_node(n1.path(), 1, &raft[0], Some(&alone));
    assert!(!n1.path().join("sessions.redb").exists());
    assert!(n1.path().join("sessions.redb.imported").exists());
    assert_fixture_sessions(node1.addr).await;

    // Two new nodes join, catch up from the snapshot, become voters.
    let others: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let node2 = cluster_node(others[0].path(), 2, &raft[1], None);
    let node3 = cluster_node(others[1].path(), 3, &raft[2], None);
    for (id, addr) in [(2, &raft[1]), (3, &raft[2])] {
        let ok = call(node1.addr, &["CLUSTER.ADDLEARNER", &id.to_string(), addr]).await;
        assert_eq!(ok, Value::Simple("OK".into()));
    }
    for id in [2, 3] {
        let ok = call(node1.addr, &["CLUSTER.PROMOTE", &id.to_string()]).await;
        assert_eq!(ok, Value::Simple("OK".into()));
    }
    let info = cluster_info(node1.addr).await;
    assert!(info.contains("voters:1,2,3\r\n"), "{info}");

    // The imported sessions are on the new nodes too: with node 1 gone, the
    // two of them still serve them.
    node1.kill();
    let read = call(node3.addr, &["SESSION.READ", "fx-alice", "KEYS", "user"]).await;
    assert!(format!("{read:?}").contains("alice"), "{read:?}");
    let read = call(node2.addr, &["SESSION.READ", "fx-bob", "KEYS", "user"]).await;
    assert!(format!("{read:?}").contains("bob"), "{read:?}");

    // Node 1 restarted on its directory rejoins from its own snapshot and
    // log (the single server's file is not imported again).
    let node1 = cluster_node(n1.path(), 1, &raft[0], Some(&alone));
    let read = call(node1.addr, &["SESSION.READ", "fx-alice", "KEYS", "k"]).await;
    assert!(format!("{read:?}").contains('v'), "{read:?}");
    node1.kill();
    node2.kill();
    node3.kill();
}

#[tokio::test]
async fn a_single_servers_directory_is_refused_to_a_node_of_a_larger_initial_cluster() {
    let dir = copy_of_fixture();
    let raft = format!("127.0.0.1:{}", free_port());
    let initial = format!(
        "1={raft},2=127.0.0.1:{},3=127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let data_dir = dir.path().to_str().unwrap();
    let Err((status, stderr)) = ServerProcess::try_start(
        &[
            "--port",
            "0",
            "--data-dir",
            data_dir,
            "--node-id",
            "1",
            "--raft-addr",
            &raft,
            "--initial-cluster",
            &initial,
        ],
        &[],
    ) else {
        panic!("a node of a three-node initial cluster imported a single server's sessions");
    };
    assert!(!status.success());
    assert!(
        stderr.contains("start this node first as a cluster of one"),
        "{stderr}"
    );
    // Nothing was touched.
    assert!(dir.path().join("sessions.redb").exists());
}
