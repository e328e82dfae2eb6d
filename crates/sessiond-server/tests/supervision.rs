//! The binary under a supervisor: systemd's notify protocol, secrets from
//! files, `sessiond check-config`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::ServerProcess;
use sessiond_client::{Client, Value};

/// The next datagram on `sock` that contains `want` (at most 200 read).
fn expect_message(sock: &UnixDatagram, want: &str) -> String {
    let mut buf = vec![0u8; 4096];
    for _ in 0..200 {
        let n = sock
            .recv(&mut buf)
            .expect("a notification within the timeout");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
    panic!("no {want:?} among 200 notifications");
}

#[tokio::test]
async fn tells_systemd_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let p = ServerProcess::try_start(
        &["--port", "0", "--storage", "memory"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .expect("starts");
    let ready = expect_message(&sock, "READY=1");
    assert!(
        ready.contains("STATUS=serving 0 sessions"),
        "{ready:?} carries a status"
    );
    // The server answers once it said it is ready.
    let mut c = Client::connect(p.addr).await.unwrap();
    c.commit("s", &sessiond_client::Commit::new().create().set("k", "v"))
        .await
        .unwrap();
    let ping = expect_message(&sock, "WATCHDOG=1");
    assert!(ping.contains("STATUS=serving"), "{ping:?}");
    let status = p.terminate();
    assert!(status.success(), "{status:?}");
    expect_message(&sock, "STOPPING=1");
}

#[tokio::test]
async fn the_password_comes_from_a_file_without_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pass");
    std::fs::write(&file, "s3cret\n").unwrap();
    let p = ServerProcess::try_start(
        &[
            "--port",
            "0",
            "--storage",
            "memory",
            "--requirepass-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .expect("starts");
    let connect = |password: &str| {
        Client::connect_with(
            p.addr,
            sessiond_client::ConnectOptions {
                password: Some(password.to_owned()),
                ..Default::default()
            },
        )
    };
    let wrong = connect("s3cret\n").await;
    assert!(format!("{:?}", wrong.err()).contains("WRONGPASS"));
    let mut c = connect("s3cret")
        .await
        .expect("the password without its newline");
    assert_eq!(
        c.command(&["PING"]).await.unwrap(),
        Value::Simple("PONG".into())
    );

    // Not together with --requirepass.
    let both = ServerProcess::try_start(
        &[
            "--port",
            "0",
            "--requirepass",
            "x",
            "--requirepass-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let Err((status, stderr)) = both else {
        panic!("started with two passwords")
    };
    assert!(!status.success());
    assert!(stderr.contains("--requirepass"), "{stderr}");
}

fn check_config(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SESSIOND_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.arg("check-config").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_resolved_settings_or_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "port = 7000\ndurability = \"always\"\nrequirepass = \"hunter2\"\nbind = \"0.0.0.0\"\n",
    )
    .unwrap();
    let (ok, out, err) = check_config(&["--config", good.to_str().unwrap(), "--default-ttl", "60"]);
    assert!(ok, "{err}");
    for line in [
        "port = 7000",
        "bind = \"0.0.0.0\"",
        "durability = \"always\"",
        "default_ttl = 60",
        "# requirepass: set",
        "slowlog_log_slower_than = 10000",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
    }
    assert!(!out.contains("hunter2"), "the password is not printed");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "prot = 7000\n").unwrap();
    let (ok, _, err) = check_config(&["--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("invalid config file") && err.contains("prot"),
        "{err}"
    );

    let (ok, _, err) = check_config(&["--bind", "0.0.0.0"]);
    assert!(!ok);
    assert!(err.contains("without a password"), "{err}");
}
