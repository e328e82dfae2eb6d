//! Starting real servers for tests: in-process on port 0, or as a child
//! process of the built binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sessiond_server::{Config, Server};
use tokio_util::sync::CancellationToken;

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

    pub async fn start_with(config: Config) -> Self {
        let server = Server::bind(config).await.expect("bind");
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
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
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
        };
        let addr = field("resp=").unwrap_or_else(|| panic!("no address in {line:?}"));
        let metrics = field("metrics=");
        Self {
            child,
            addr,
            metrics,
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

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
