//! Lock holders that are real, separate client processes: one killed with
//! SIGKILL while it holds a lock, one paused with SIGSTOP past its lease.
//!
//! The client process is this test binary run again with `--ignored` and the
//! name of [`lock_holder_process`]: it takes a lock, prints its token, then
//! does whatever its parent writes on its stdin. A real process, so that the
//! kernel (not the test) closes its socket when it dies, and a stopped process
//! really sends nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use sessiond_client::{Client, Commit, LockOptions};

const ADDR_ENV: &str = "SESSIOND_TEST_CHILD_ADDR";
const LEASE_ENV: &str = "SESSIOND_TEST_CHILD_LEASE_MS";

/// The client process. Does nothing when run by a plain `cargo test`.
#[tokio::test]
#[ignore = "run as a child process by the tests below"]
async fn lock_holder_process() {
    let Ok(addr) = std::env::var(ADDR_ENV) else {
        return;
    };
    let lease = std::env::var(LEASE_ENV)
        .ok()
        .map(|ms| Duration::from_millis(ms.parse().expect("lease ms")));
    let mut c = Client::connect(addr.as_str()).await.expect("connect");
    let g = c
        .lock(
            "shared",
            &LockOptions {
                wait: Duration::from_secs(30),
                lease,
                create: true,
                ..Default::default()
            },
        )
        .await
        .expect("lock");
    println!("@granted {}", g.token);
    // Commands from the parent, one per line. Blocking stdin is fine: this
    // runtime has nothing else to run while it waits.
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        if line == "commit" {
            let reply = c
                .commit(
                    "shared",
                    &Commit::new().fence(g.token).unlock().set("by", "child"),
                )
                .await;
            match reply {
                Ok(_) => println!("@reply ok"),
                Err(e) => println!("@reply error {}", e.code().unwrap_or("?")),
            }
        }
    }
}

struct ChildClient {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ChildClient {
    fn start(addr: std::net::SocketAddr, lease_ms: Option<u64>) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--ignored",
            "--exact",
            "lock_holder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADDR_ENV, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if let Some(ms) = lease_ms {
            cmd.env(LEASE_ENV, ms.to_string());
        }
        let mut child = cmd.spawn().expect("spawn client process");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// What follows `tag` on the next line that has it. libtest prints its
    /// own text around ours, even on the same line (`test name ... `).
    fn expect_line(&mut self, tag: &str) -> String {
        let tag = format!("@{tag} ");
        for line in self.lines.by_ref() {
            let line = line.expect("child stdout");
            if let Some((_, rest)) = line.split_once(&tag) {
                return rest.trim().to_owned();
            }
        }
        panic!("client process ended before printing {tag:?}");
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to child");
        self.stdin.flush().expect("flush");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for ChildClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn waiting(secs: u64) -> LockOptions {
    LockOptions {
        wait: Duration::from_secs(secs),
        create: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_process_releases_its_lock_to_the_next_waiter() {
    let server = common::TestServer::start().await;
    let mut holder = ChildClient::start(server.addr, None);
    let child_token: u64 = holder.expect_line("granted").parse().unwrap();

    // Queue behind the child; nothing else will ever release its lock.
    let addr = server.addr;
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        c.lock("shared", &waiting(60)).await
    });
    let mut admin = server.client().await;
    wait_for_waiters(&mut admin, 1).await;

    holder.signal("KILL");
    let _ = holder.child.wait();

    // The 60 s wait is a hang guard: the grant comes from the server noticing
    // the closed socket, long before any timeout.
    let g = waiter.await.unwrap().expect("the waiter gets the lock");
    assert!(g.token > child_token, "a newer fencing token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_process_paused_past_its_lease_is_fenced_when_it_resumes() {
    let server = common::TestServer::start().await;
    let mut holder = ChildClient::start(server.addr, Some(300));
    let child_token: u64 = holder.expect_line("granted").parse().unwrap();

    // Freeze the holder: its connection stays open, it just says nothing.
    holder.signal("STOP");
    let mut c = server.client().await;
    let g = c
        .lock("shared", &waiting(60))
        .await
        .expect("the lease runs out and the lock passes on");
    assert!(g.token > child_token);
    c.commit(
        "shared",
        &Commit::new().fence(g.token).unlock().set("by", "parent"),
    )
    .await
    .unwrap();

    // The holder wakes up and writes as if it still held the lock.
    holder.signal("CONT");
    holder.send("commit");
    assert_eq!(holder.expect_line("reply"), "error FENCED");

    let data = c
        .read("shared", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        data.get(b"by").unwrap().as_ref(),
        b"parent",
        "nothing changed"
    );
    let stats = c.info(Some("locks")).await.unwrap();
    assert!(stats.contains("lock_expired:1\r\n"), "{stats}");
    assert!(stats.contains("lock_fenced:1\r\n"), "{stats}");
    server.stop().await;
}

async fn wait_for_waiters(c: &mut Client, n: usize) {
    for _ in 0..6000 {
        let info = c.lock_info(Some("shared")).await.unwrap();
        if info.iter().map(|l| l.waiters.len()).sum::<usize>() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no waiter queued");
}
