//! SIGHUP on the real binary: the `--config` file is read again, a lowered
//! value limit is in force over TCP, a setting that needs a restart is
//! reported and kept, the log says what happened, and a file that does not
//! parse changes nothing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sessiond_client::{Client, Commit};

/// The binary, its RESP address and its log lines as they come.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `sessiond serve --config FILE` with no `SESSIOND_*` variable,
    /// so the file decides (the log level too).
    fn start(config: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIOND_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sessiond");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("resp="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self { child, addr, log }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (at most 10 s) for a log line containing each of `wanted`, in
    /// order; returns the lines read.
    fn expect_log(&self, wanted: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        for want in wanted {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.log.recv_timeout(left) {
                    Ok(line) => {
                        seen.push(line.clone());
                        if line.contains(want) {
                            break;
                        }
                    }
                    Err(e) => panic!(
                        "no log line with {want:?} ({e}); read:\n{}",
                        seen.join("\n")
                    ),
                }
            }
        }
        seen
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &Path, data: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "port = 0\nmetrics_addr = \"off\"\nstorage = \"memory\"\ndata_dir = {:?}\n\
             log_level = \"info\"\n{extra}",
            data.display().to_string()
        ),
    )
    .expect("write config");
}

#[tokio::test]
async fn sighup_applies_a_lower_value_limit_and_an_invalid_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, data) = (dir.path().join("sessiond.toml"), dir.path().join("data"));
    write_config(&file, &data, "max_value_bytes = 1048576\n");
    let p = Process::start(&file);
    let mut c = Client::connect(p.addr).await.expect("connect");
    let big = "x".repeat(4096);
    c.commit("s", &Commit::new().create().set("k", big.clone()))
        .await
        .expect("4 KiB is under the first limit");

    // Lower the limit, and change a setting that needs a restart.
    write_config(
        &file,
        &data,
        "max_value_bytes = 2048\nshutdown_timeout = 3\n",
    );
    p.hangup();
    let lines = p.expect_log(&[
        "reloaded max_value_bytes: 1048576 -> 2048",
        "not reloaded shutdown_timeout: 10 -> 3: needs a restart; still 10",
        "settings reloaded: 1 changed (max_value_bytes); 1 need a restart (shutdown_timeout)",
    ]);
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("reloaded ") && !l.contains("not reloaded"))
            .count()
            == 1,
        "one line per changed setting: {lines:?}"
    );
    // The log line comes after the change is in force; still, poll
    // (bounded) rather than rely on it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.commit("s", &Commit::new().set("k", big.clone())).await {
            Err(e) if e.code() == Some("LIMIT") => break,
            Ok(_) => assert!(Instant::now() < deadline, "4 KiB still accepted"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    c.commit("s", &Commit::new().set("k", "x".repeat(2048)))
        .await
        .expect("at the new limit");

    // A file that does not parse: an error in the log, nothing changes
    // (not even the settings it names correctly).
    std::fs::write(
        &file,
        "max_value_bytes = 1048576\nmax_connections = \"many\"\n",
    )
    .expect("write config");
    p.hangup();
    p.expect_log(&["reload failed, settings unchanged: invalid config file"]);
    let err = c
        .commit("s", &Commit::new().set("k", big.clone()))
        .await
        .expect_err("the limit of the last good file holds");
    assert_eq!(err.code(), Some("LIMIT"), "{err}");

    // Back to a good file: in force again.
    write_config(
        &file,
        &data,
        "max_value_bytes = 1048576\nshutdown_timeout = 3\n",
    );
    p.hangup();
    p.expect_log(&["reloaded max_value_bytes: 2048 -> 1048576"]);
    c.commit("s", &Commit::new().set("k", big.clone()))
        .await
        .expect("4 KiB is under the restored limit");

    // The connection limit too: with this client connected, a second
    // connection is one too many.
    write_config(&file, &data, "max_connections = 1\nshutdown_timeout = 3\n");
    p.hangup();
    p.expect_log(&["reloaded max_connections: 10000 -> 1"]);
    let (refused, closed) = raw_exchange(p.addr, b"PING\r\n").await;
    assert!(closed, "the refused connection is closed");
    assert_eq!(refused, b"-LIMIT max number of clients reached\r\n");
    c.ping().await.expect("the connected client stays");
}

/// What the server writes on a new connection after `input`, until it
/// closes it (at most 10 s).
async fn raw_exchange(addr: SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(input).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (out, read.is_ok())
}
