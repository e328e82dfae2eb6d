//! `sessiond backup` of a running server under writes, and `sessiond
//! restore` into a fresh data directory: every session acknowledged before
//! the backup started is in the restored server.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::ServerProcess;
use parking_lot::Mutex;
use sessiond_client::{Client, Commit, ReadOptions};

fn sessiond(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SESSIOND_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args).output().expect("run sessiond")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_every_acknowledged_session() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("a"), &[]);
    let addr = source.addr;

    // Writers: each creates its own sessions, one after another, and
    // records each one the server acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (id, value) = (format!("w{w}-{i}"), format!("v{i}"));
                c.commit(&id, &Commit::new().create().set("n", value.clone()))
                    .await
                    .unwrap();
                acked.lock().push((id, value));
            }
        }));
    }
    // Some writes first, so the backup has something to copy.
    for _ in 0..500 {
        if acked.lock().len() >= 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let before: Vec<(String, String)> = acked.lock().clone();
    assert!(before.len() >= 200, "the writers got going");

    let file = dir.path().join("backup.bin");
    let args = [
        "backup".to_owned(),
        "--to".to_owned(),
        file.to_string_lossy().into_owned(),
        "--addr".to_owned(),
        addr.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        sessiond(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        acked.lock().len() > before.len(),
        "writes went on during the backup"
    );
    drop(source);

    let restored = dir.path().join("b");
    let out = sessiond(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over an existing data file.
    let again = sessiond(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let p = ServerProcess::start(&restored, &[]);
    let mut c = Client::connect(p.addr).await.unwrap();
    for (id, value) in &before {
        let s = c
            .read(id, &ReadOptions::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} was acknowledged before the backup, but is missing"));
        assert_eq!(s.get(b"n").unwrap().as_ref(), value.as_bytes());
    }
    // Versions go on from the backup's, not from zero.
    let last = c
        .read(&before[0].0, &ReadOptions::default())
        .await
        .unwrap()
        .unwrap()
        .version;
    let next = c
        .commit("after-restore", &Commit::new().create().set("n", "1"))
        .await
        .unwrap()
        .version;
    assert!(next > last, "{next} > {last}");
}

#[test]
fn restore_refuses_a_file_that_is_no_backup() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus");
    std::fs::write(&bogus, b"not a backup").unwrap();
    let out = sessiond(&[
        "restore",
        "--from",
        bogus.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a sessiond backup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
