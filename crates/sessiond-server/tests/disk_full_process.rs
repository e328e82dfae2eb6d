//! The disk-full run of issue 12 on a real filesystem: the `sessiond`
//! binary with its data on a small tmpfs. Writes are refused (`MISCONF`)
//! while the filesystem is full, accepted again without a restart once
//! space is freed, nothing acknowledged is missing after a restart, and a
//! shutdown that cannot flush exits non-zero and says so. Under `always`,
//! the writes that got an error when the disk filled are not there after
//! the restart either.
//!
//! Mounting needs root (CI runs as root); elsewhere the test prints why it
//! is skipped and passes. The mount is removed even when the test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sessiond_client::{Client, Commit, Error};

/// A tmpfs mounted for the test; unmounted (and its directory removed) on
/// drop, whatever happened.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_owned();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount { path, _dir: dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a server that did not exit): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// The server binary; killed on drop if still running.
struct Sessiond {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Sessiond {
    fn start(data_dir: &Path, stderr: PathBuf, durability: &str) -> Sessiond {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["serve", "--port", "0", "--metrics-addr", "off"])
            .args(["--durability", durability, "--storage-cache-mb", "4"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("SESSIOND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn sessiond");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("resp="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no ready line ({line:?}); stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Sessiond {
            child,
            addr,
            stderr,
        }
    }

    /// SIGTERM, then the exit status (bounded wait) and stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let mut status = None;
        for _ in 0..300 {
            if let Some(s) = self.child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = status.expect("sessiond did not exit within 30 s of SIGTERM");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Sessiond {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_misconf(e: &Error) -> bool {
    matches!(e, Error::Server { code, .. } if code == "MISCONF")
}

/// Writes 40 KB sessions until one is refused with MISCONF (at most
/// `max`); records the acknowledged ones, and (under `always`) those told
/// their write was not made; returns whether a refusal came.
async fn fill(
    c: &mut Client,
    prefix: &str,
    max: usize,
    acked: &mut BTreeMap<String, u8>,
    not_made: &mut Vec<String>,
) -> bool {
    for i in 0..max {
        let id = format!("{prefix}{i:05}");
        let fill = (i % 250) as u8;
        let value = vec![b'a' + fill % 26; 40 * 1024];
        match c
            .commit(&id, &Commit::new().create().set("data", value))
            .await
        {
            Ok(_) => {
                acked.insert(id, b'a' + fill % 26);
            }
            Err(e) if is_misconf(&e) => return true,
            Err(Error::Server { code, message })
                if code == "ERR" && message.contains("not made") =>
            {
                not_made.push(id);
            }
            Err(e) => panic!("unexpected error after {i} writes: {e}"),
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_refuses_writes_resumes_when_freed_and_loses_nothing() {
    full_filesystem_run("everysec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_under_always_keeps_no_write_that_got_an_error() {
    full_filesystem_run("always").await;
}

// One run at a time: the runs size their free space for one server
// writing on an otherwise idle machine (what a second server next to it
// queues under `everysec` while the writer lags can refill the space
// freed for the recovery).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn full_filesystem_run(durability: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mount = match Mount::tmpfs("64m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED a_full_filesystem_…: needs a tmpfs mount (root): {why}");
            return;
        }
    };
    let logs = tempfile::tempdir().unwrap();
    let data = mount.path.join("data");
    // Space to free later: more than what can be queued when the disk
    // fills (about a second of writes under everysec, 20 MB of 40 KB
    // sessions on a fast machine) plus redb's copy-on-write pages, or the
    // recovery fills the freed space again (seen with 16 MB).
    let ballast = mount.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 40 << 20]).unwrap();

    let server = Sessiond::start(&data, logs.path().join("1.log"), durability);
    let mut c = Client::connect(server.addr).await.unwrap();
    let mut acked = BTreeMap::new();
    let mut not_made = Vec::new();
    assert!(
        fill(&mut c, "s", 2_000, &mut acked, &mut not_made).await,
        "2,000 writes of 40 KB on a 64 MB filesystem were never refused"
    );
    assert!(!acked.is_empty());
    // Reads work while writes are refused.
    let (first, byte) = acked.iter().next().map(|(k, v)| (k.clone(), *v)).unwrap();
    let s = c.read(&first, &Default::default()).await.unwrap().unwrap();
    assert_eq!(s.get("data").unwrap()[0], byte);
    for id in &not_made {
        assert!(
            !c.exists(id).await.unwrap(),
            "{id}: a write that got an error is visible"
        );
    }
    let info = c.info(Some("persistence")).await.unwrap();
    assert!(info.contains("storage_failed:1"), "{info}");
    assert!(info.contains("storage_failed_kind:disk-full"), "{info}");

    // Free space: writes are accepted again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let mut resumed = false;
    for _ in 0..300 {
        match c.commit(&first, &Commit::new().set("after", "yes")).await {
            Ok(_) => {
                resumed = true;
                break;
            }
            Err(e) if is_misconf(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        resumed,
        "writes still refused 30 s after space was freed; df: {}; log: {}",
        String::from_utf8_lossy(&Command::new("df").arg(&mount.path).output().unwrap().stdout),
        std::fs::read_to_string(&server.stderr).unwrap_or_default()
    );
    drop(c);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("storage write failed"),
        "the failure is logged: {stderr}"
    );
    assert!(
        stderr.contains("storage recovered"),
        "the recovery is logged: {stderr}"
    );

    // Restart: everything acknowledged is there.
    let server = Sessiond::start(&data, logs.path().join("2.log"), durability);
    let mut c = Client::connect(server.addr).await.unwrap();
    for (id, byte) in &acked {
        let s = c
            .read(id, &Default::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged session {id} lost"));
        let data = s.get("data").unwrap();
        assert!(
            data.len() == 40 * 1024 && data.iter().all(|b| b == byte),
            "{id}"
        );
    }
    let s = c.read(&first, &Default::default()).await.unwrap().unwrap();
    assert_eq!(s.get("after").unwrap().as_ref(), b"yes");
    if durability == "always" {
        assert!(
            !not_made.is_empty(),
            "under always the write that met the full disk is told it was not made"
        );
    } else {
        assert!(not_made.is_empty(), "{not_made:?}");
    }
    for id in &not_made {
        assert!(
            !c.exists(id).await.unwrap(),
            "{id} was answered 'not made' but exists after the restart"
        );
    }

    // Fill it again and stop while it is full. Under `everysec` what is
    // queued cannot be written: the exit is not clean, and the log says
    // what was not written. Under `always` nothing unacknowledged is kept
    // (the write that met the full disk was undone), so there is nothing
    // left to flush: the exit is clean and says what was undone.
    let more = fill(&mut c, "t", 2_000, &mut BTreeMap::new(), &mut Vec::new()).await;
    assert!(more, "the second fill was never refused");
    drop(c);
    let (status, stderr) = server.terminate();
    if durability == "always" {
        assert!(status.success(), "{status}: {stderr}");
        assert!(stderr.contains("were undone"), "{stderr}");
    } else {
        assert!(
            !status.success(),
            "a shutdown that could not flush exited 0: {stderr}"
        );
        assert!(stderr.contains("NOT flushed"), "{stderr}");
    }
    drop(mount);
}
