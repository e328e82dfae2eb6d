//! Starting real servers for tests: in-process on port 0, or as a child
//! process of the built binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sessiond_server::{Config, Server};
use tokio_util::sync::CancellationToken;

pub mod cluster;
pub mod netns;

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Config::for_tests()).await
    }

    /// A server whose clock is `clock`: expiry and leases move only when
    /// the test advances it.
    pub async fn start_with_clock(clock: sessiond_core::ManualClock) -> Self {
        let server = Server::bind_with(
            Config::for_tests(),
            Box::new(sessiond_server::storage::MemoryStorage::default()),
            std::sync::Arc::new(clock),
        )
        .await
        .expect("bind");
        Self::running(server)
    }

    pub async fn start_with(config: Config) -> Self {
        let server = Server::bind(config).await.expect("bind");
        Self::running(server)
    }

    fn running(server: Server) -> Self {
        let addr = server.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> sessiond_client::Client {
        sessiond_client::Client::connect(self.addr)
            .await
            .expect("connect")
    }

    /// Runs `f(i, client)` for `i` in `0..n`, each on its own connection
    /// and task, all at once; returns when every one finished (a panic in
    /// one fails the test).
    pub async fn concurrently<F, Fut>(&self, n: usize, f: F)
    where
        F: Fn(usize, sessiond_client::Client) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(f(i, self.client().await)));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    }

    /// Returns once `n` connections wait for locks of session `id`, as
    /// LOCK.INFO shows: ordering evidence for a test that must act only
    /// after a wait is queued. Bounded: a hang guard, not a speed test.
    pub async fn await_waiters(&self, id: &str, n: usize) {
        let mut c = self.client().await;
        for _ in 0..2000 {
            let info = c.lock_info(Some(id)).await.expect("LOCK.INFO");
            if info.iter().map(|l| l.waiters.len()).sum::<usize>() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("never saw {n} waiters on {id}");
    }

    /// The whole session `id`, which must exist.
    pub async fn session(&self, id: &str) -> sessiond_client::SessionData {
        self.client()
            .await
            .read(id, &Default::default())
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("session {id} does not exist"))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// The `sessiond` binary as a child process.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The metrics endpoint, when `extra` turned it on.
    pub metrics: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts the binary on port 0 with its data in `data_dir`; metrics are
    /// off unless `extra` sets `--metrics-addr`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_in(&[], data_dir, extra)
    }

    /// [`ServerProcess::start`] through a wrapper command that execs the
    /// binary in the end (`ip netns exec NS`), so the child's pid is the
    /// server's and signals reach it.
    pub fn start_in(wrapper: &[&str], data_dir: &Path, extra: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_sessiond");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--port", "0", "--data-dir"])
            .arg(data_dir);
        if !extra.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "off"]);
        }
        let mut child = cmd
            .args(extra)
            .env("SESSIOND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sessiond");
        let line = ready_line(&mut child);
        let (addr, metrics) =
            parse_ready_line(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
        Self {
            child,
            addr,
            metrics,
        }
    }

    /// Starts the binary with `serve`, `args` and the variables `env`. No
    /// `SESSIOND_*` variable of the test's own environment is passed on and,
    /// unlike [`ServerProcess::start`], no `--port` or `--data-dir` is added;
    /// metrics are off unless `args` or `env` set them. When the process
    /// exits instead of becoming ready: its exit status and its stderr.
    pub fn try_start(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (std::process::ExitStatus, String)> {
        Self::try_start_split(&[], args, env)
    }

    /// [`ServerProcess::try_start`] with flags given both before the `serve`
    /// subcommand (`before`) and after it (`args`).
    pub fn try_start_split(
        before: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (std::process::ExitStatus, String)> {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIOND_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(before).arg("serve").args(args);
        if !args.contains(&"--metrics-addr")
            && !before.contains(&"--metrics-addr")
            && !env.iter().any(|(k, _)| *k == "SESSIOND_METRICS_ADDR")
        {
            cmd.args(["--metrics-addr", "off"]);
        }
        let mut child = cmd
            .env("SESSIOND_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr file"))
            .spawn()
            .expect("spawn sessiond");
        let line = ready_line(&mut child);
        match parse_ready_line(&line) {
            Some((addr, metrics)) => Ok(Self {
                child,
                addr,
                metrics,
            }),
            None => {
                // No ready line: stdout closed, so the process is exiting.
                let status = child.wait().expect("wait");
                let text = std::fs::read_to_string(stderr.path()).expect("read stderr");
                Err((status, text))
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().expect("wait")
    }
}

/// The first line the server prints on stdout (empty if it exits first).
fn ready_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    line
}

/// The RESP and metrics addresses of `sessiond ready: resp=… metrics=…`.
fn parse_ready_line(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.parse().ok())
    };
    Some((field("resp=")?, field("metrics=")))
}

/// Writes `input` on a new connection to `addr` and reads until the server
/// closes it or, once it has answered, stays silent for 300 ms (it gets 5 s
/// for its first byte). Returns what was read and whether the server closed
/// the connection.
pub async fn raw_exchange(addr: SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(input).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let wait = if out.is_empty() { 5_000 } else { 300 };
        match tokio::time::timeout(std::time::Duration::from_millis(wait), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, closed)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then released for a server process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
