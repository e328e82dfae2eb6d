//! A failing disk never turns into acknowledged-then-lost sessions: while
//! storage fails, writes are refused with `MISCONF` and reads work; when it
//! accepts writes again the server resumes by itself; after a restart every
//! acknowledged write is there. Driven over TCP against a server whose redb
//! file fails writes (ENOSPC) on command.

mod storage_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sessiond_client::{Client, Commit, Error, LockOptions};
use sessiond_core::SystemClock;
use sessiond_server::config::Durability;
use sessiond_server::persist::FlushReport;
use sessiond_server::storage::RedbStorage;
use sessiond_server::{Config, Server};
use storage_support::{FaultSwitch, faulty_redb};
use tokio_util::sync::CancellationToken;

struct Running {
    addr: std::net::SocketAddr,
    shared: Arc<sessiond_server::state::Shared>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<FlushReport>,
}

async fn start(config: Config, storage: RedbStorage) -> Running {
    let server = Server::bind_with(config, Box::new(storage), Arc::new(SystemClock::new()))
        .await
        .expect("bind");
    let addr = server.local_addr().unwrap();
    let shared = server.shared();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run_reporting(shutdown.clone()));
    Running {
        addr,
        shared,
        shutdown,
        handle,
    }
}

impl Running {
    async fn stop(self) -> FlushReport {
        self.shutdown.cancel();
        self.handle.await.expect("server task")
    }
}

fn config(durability: Durability) -> Config {
    let mut c = Config::for_tests();
    c.durability = durability;
    c
}

fn is_misconf(e: &Error) -> bool {
    matches!(e, Error::Server { code, .. } if code == "MISCONF")
}

async fn info_field(c: &mut Client, name: &str) -> String {
    let info = c.info(Some("persistence")).await.expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

async fn disk_full_refuses_writes_then_resumes(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let switch = FaultSwitch::default();
    let server = start(config(durability), faulty_redb(&path, &switch)).await;
    let mut c = Client::connect(server.addr).await.unwrap();
    // What the server acknowledged: session → the value it must keep.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();

    for i in 0..20 {
        let id = c.new_session(Default::default()).await.unwrap();
        c.commit(&id, &Commit::new().set("v", format!("before-{i}")))
            .await
            .unwrap();
        acked.insert(id, format!("before-{i}"));
    }
    let (first, _) = acked
        .first_key_value()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();

    // The disk fills. Writes go on until one is refused; every write that
    // got an OK is acknowledged and must survive.
    switch.set_failing(true);
    let mut refusal = None;
    for i in 0..500 {
        let id = format!("during{i:04}");
        match c
            .commit(&id, &Commit::new().create().set("v", format!("during-{i}")))
            .await
        {
            Ok(_) => {
                acked.insert(id, format!("during-{i}"));
            }
            Err(e) if is_misconf(&e) => {
                refusal = Some(e);
                break;
            }
            // Under `always`, the write that met the failure is told so; it
            // is undone (`under_always_a_write_that_got_an_error_…` below).
            Err(Error::Server { code, .. }) if code == "ERR" => {}
            Err(e) => panic!("unexpected error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refusal = refusal.expect("writes were never refused while the disk was full");
    let text = refusal.to_string();
    assert!(text.contains("disk-full"), "{text}");
    assert!(text.contains("No space left on device"), "{text}");

    // Every kind of write is refused, and nothing of it is applied.
    let err = c.new_session(Default::default()).await.unwrap_err();
    assert!(is_misconf(&err), "{err}");
    let err = c
        .commit(&first, &Commit::new().set("v", "refused"))
        .await
        .unwrap_err();
    assert!(is_misconf(&err), "{err}");
    let err = c.destroy(&first).await.unwrap_err();
    assert!(is_misconf(&err), "{err}");
    let err = c
        .lock(
            "brand-new",
            &LockOptions {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(is_misconf(&err), "{err}");

    // Reads work, and see the last acknowledged value.
    let data = c.read(&first, &Default::default()).await.unwrap().unwrap();
    assert_eq!(data.get("v").unwrap(), acked[&first].as_bytes());
    assert!(!c.exists("brand-new").await.unwrap());
    // Locks (memory only) work: acquire and release.
    let grant = c.lock(&first, &LockOptions::default()).await.unwrap();
    assert!(c.unlock(&first, None, grant.token).await.unwrap());

    // INFO tells the state and since when.
    assert_eq!(info_field(&mut c, "storage_failed").await, "1");
    assert_eq!(info_field(&mut c, "storage_failed_kind").await, "disk-full");
    assert!(
        info_field(&mut c, "storage_failed_since")
            .await
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        info_field(&mut c, "storage_refused_writes")
            .await
            .parse::<u64>()
            .unwrap()
            >= 5
    );
    // And the metrics.
    let metrics = server.shared.metrics.render(
        sessiond_server::http::state_gauges(&server.shared),
        sessiond_server::metrics::Format::Prometheus,
    );
    assert!(
        metrics.contains("\nsessiond_storage_failed 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nsessiond_storage_failing_since_seconds "),
        "{metrics}"
    );

    // Space comes back: without a restart, writes are accepted again.
    switch.set_failing(false);
    let mut resumed = false;
    for _ in 0..500 {
        match c.commit(&first, &Commit::new().set("v", "after")).await {
            Ok(_) => {
                resumed = true;
                break;
            }
            Err(e) if is_misconf(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        resumed,
        "writes were still refused 10 s after storage came back"
    );
    acked.insert(first.clone(), "after".into());
    assert_eq!(info_field(&mut c, "storage_failed").await, "0");
    assert_eq!(info_field(&mut c, "storage_recoveries").await, "1");
    let metrics = server.shared.metrics.render(
        sessiond_server::http::state_gauges(&server.shared),
        sessiond_server::metrics::Format::Prometheus,
    );
    assert!(
        metrics.contains("\nsessiond_storage_failed 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nsessiond_storage_recoveries_total 1\n"),
        "{metrics}"
    );
    for i in 0..5 {
        let id = format!("after{i}");
        c.commit(&id, &Commit::new().create().set("v", "x"))
            .await
            .unwrap();
        acked.insert(id, "x".into());
    }
    drop(c);
    let report = server.stop().await;
    assert!(report.flushed(), "{report}");

    // After a restart (on a plain file), everything acknowledged is there.
    let server = start(config(durability), RedbStorage::open(&path).unwrap()).await;
    let mut c = Client::connect(server.addr).await.unwrap();
    for (id, value) in &acked {
        let data = c
            .read(id, &Default::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{durability:?}: acknowledged session {id} lost"));
        assert_eq!(data.get("v").unwrap(), value.as_bytes(), "{id}");
    }
    assert!(!c.exists("brand-new").await.unwrap());
    drop(c);
    assert!(server.stop().await.flushed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_everysec_refuses_writes_then_resumes_without_loss() {
    disk_full_refuses_writes_then_resumes(Durability::Everysec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_always_refuses_writes_then_resumes_without_loss() {
    disk_full_refuses_writes_then_resumes(Durability::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_no_refuses_writes_then_resumes_without_loss() {
    disk_full_refuses_writes_then_resumes(Durability::No).await;
}

/// A shutdown while the disk is still full says so: not flushed, how much,
/// and why; what was written before the failure is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_disk_is_full_reports_what_was_not_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let switch = FaultSwitch::default();
    let server = start(config(Durability::Always), faulty_redb(&path, &switch)).await;
    let mut c = Client::connect(server.addr).await.unwrap();
    c.commit("kept", &Commit::new().create().set("v", "1"))
        .await
        .unwrap();
    switch.set_failing(true);
    // Under `always` this write is not acknowledged: the reply is an error.
    let err = c
        .commit("unacked", &Commit::new().create().set("v", "1"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Server { .. }), "{err}");
    drop(c);
    let report = server.stop().await;
    assert!(!report.flushed());
    assert!(report.unflushed_batches >= 1, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("NOT flushed") && text.contains("disk-full"),
        "{text}"
    );

    let server = start(
        config(Durability::Always),
        RedbStorage::open(&path).unwrap(),
    )
    .await;
    let mut c = Client::connect(server.addr).await.unwrap();
    assert!(c.exists("kept").await.unwrap());
    drop(c);
    server.stop().await;
}

/// Under `always` a write that got an error was never made: while its sync
/// is in flight a read of its session on another connection waits for it,
/// and once the sync fails both the reader and everyone after see the state
/// before it; it is not on disk after storage recovers and the server
/// restarts; a session it created does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_always_a_write_that_got_an_error_is_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let switch = FaultSwitch::default();
    let server = start(config(Durability::Always), faulty_redb(&path, &switch)).await;
    let mut writer = Client::connect(server.addr).await.unwrap();
    let mut reader = Client::connect(server.addr).await.unwrap();
    let mut creator = Client::connect(server.addr).await.unwrap();
    writer
        .commit("s", &Commit::new().create().set("v", "1"))
        .await
        .unwrap();

    // The disk is slow: the next syncs wait. Two writes go in: a change of
    // `s` and a new session.
    switch.hold_syncs(true);
    let change = tokio::spawn(async move {
        let r = writer
            .commit("s", &Commit::new().set("v", "2").set("w", "new"))
            .await;
        (writer, r)
    });
    let create = tokio::spawn(async move {
        let r = creator
            .commit("fresh", &Commit::new().create().set("v", "x"))
            .await;
        (creator, r)
    });
    for _ in 0..500 {
        if switch
            .syncs_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        switch
            .syncs_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the write never reached the disk"
    );
    // Give the second write time to be applied in memory too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reads of what they changed wait for the disk instead of showing it.
    let read = tokio::spawn(async move {
        let r = reader.read("s", &Default::default()).await;
        let e = reader.exists("fresh").await;
        (reader, r, e)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !read.is_finished(),
        "a read answered with a change that was not on disk yet"
    );

    // The sync fails.
    switch.set_failing(true);
    switch.hold_syncs(false);
    let (mut writer, changed) = change.await.unwrap();
    let err = changed.expect_err("a write whose sync failed was acknowledged");
    assert!(
        matches!(&err, Error::Server { code, message } if code == "ERR" && message.contains("not made")),
        "{err}"
    );
    let (_creator, created) = create.await.unwrap();
    // Refused at the gate (MISCONF) or undone (ERR): never acknowledged.
    assert!(created.is_err(), "{created:?}");
    let (mut reader, r, e) = read.await.unwrap();
    let data = r.unwrap().unwrap();
    assert_eq!(
        data.get("v").unwrap().as_ref(),
        b"1",
        "the reader saw an undone write"
    );
    assert!(data.get("w").is_none(), "the reader saw an undone write");
    assert!(!e.unwrap(), "the reader saw an undone create");
    // Everyone sees the state before, while storage is still failing.
    let data = writer
        .read("s", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data.get("v").unwrap().as_ref(), b"1");
    assert!(!reader.exists("fresh").await.unwrap());
    assert!(
        info_field(&mut reader, "storage_undone_batches")
            .await
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    // Storage comes back: writes resume, and nothing undone comes back.
    switch.set_failing(false);
    let mut resumed = false;
    for _ in 0..500 {
        match writer
            .commit("other", &Commit::new().create().set("v", "ok"))
            .await
        {
            Ok(_) => {
                resumed = true;
                break;
            }
            Err(e) if is_misconf(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(resumed, "writes were still refused after storage came back");
    let data = reader
        .read("s", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data.get("v").unwrap().as_ref(), b"1");
    drop((writer, reader));
    let report = server.stop().await;
    assert!(report.flushed(), "{report}");
    assert!(report.undone_batches >= 1, "{report}");

    let server = start(
        config(Durability::Always),
        RedbStorage::open(&path).unwrap(),
    )
    .await;
    let mut c = Client::connect(server.addr).await.unwrap();
    let data = c.read("s", &Default::default()).await.unwrap().unwrap();
    assert_eq!(
        data.get("v").unwrap().as_ref(),
        b"1",
        "an undone write is on disk"
    );
    assert!(data.get("w").is_none(), "an undone write is on disk");
    assert!(
        !c.exists("fresh").await.unwrap(),
        "an undone create is on disk"
    );
    assert!(c.exists("other").await.unwrap());
    drop(c);
    assert!(server.stop().await.flushed());
}
