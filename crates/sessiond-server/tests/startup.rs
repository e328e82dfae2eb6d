//! Starting the real binary: the safety check on the listen address, and
//! where settings come from (file, environment, flags).

mod common;

use std::net::SocketAddr;

use common::ServerProcess;
use sessiond_client::{Client, ConnectOptions, NewOptions};

/// `--bind 0.0.0.0` without a password: the process exits non-zero before
/// listening, saying why and what to do; the same from the environment. With
/// `--requirepass` it starts, and requires the password.
#[tokio::test]
async fn a_non_loopback_bind_needs_a_password() {
    for (args, env) in [
        (&["--bind", "0.0.0.0", "--port", "0"][..], &[][..]),
        (&["--port", "0"][..], &[("SESSIOND_BIND", "0.0.0.0")][..]),
    ] {
        let Err((status, stderr)) =
            ServerProcess::try_start(&[args, &["--storage", "memory"]].concat(), env)
        else {
            panic!("sessiond started on 0.0.0.0 without a password ({args:?} {env:?})");
        };
        assert!(
            !status.success() && status.code().is_some(),
            "{status:?}\n{stderr}"
        );
        assert!(
            stderr.contains("refusing to listen on 0.0.0.0 without a password: set --requirepass"),
            "{stderr}"
        );
    }

    let p = ServerProcess::try_start(
        &[
            "--bind",
            "0.0.0.0",
            "--port",
            "0",
            "--storage",
            "memory",
            "--requirepass",
            "x",
        ],
        &[],
    )
    .unwrap_or_else(|(status, stderr)| panic!("did not start: {status:?}\n{stderr}"));
    assert!(p.addr.ip().is_unspecified(), "{}", p.addr);
    let local = SocketAddr::from(([127, 0, 0, 1], p.addr.port()));
    let (out, _) = common::raw_exchange(local, b"PING\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-NOAUTH Authentication required.\r\n"
    );
    let mut c = Client::connect_with(
        local,
        ConnectOptions {
            password: Some("x".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.ping().await.unwrap();
    assert!(p.terminate().success());
}

/// The idle TTL a new session gets on `p`, in seconds (rounded up).
async fn default_ttl_secs(p: &ServerProcess) -> i64 {
    let mut c = Client::connect(p.addr).await.unwrap();
    let id = c.new_session(NewOptions::default()).await.unwrap();
    let ms = c.ttl_ms(&id).await.unwrap();
    (ms + 999) / 1000
}

fn started(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::try_start(args, env).unwrap_or_else(|(status, stderr)| {
        panic!("{args:?} {env:?} did not start: {status:?}\n{stderr}")
    })
}

/// Later sources win: the TOML file, then `SESSIOND_*` variables, then
/// flags. Seen through two settings: the port (the file names one a
/// listener of this test holds, so the server starts only when another
/// source overrides it) and the default idle TTL of new sessions.
#[tokio::test]
async fn environment_overrides_the_file_and_flags_override_the_environment() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(
        &file,
        format!("port = {held_port}\ndefault_ttl = 100\nstorage = \"memory\"\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // The file alone: its port is taken, so the server cannot start.
    let Err((status, stderr)) = ServerProcess::try_start(&["--config", file], &[]) else {
        panic!("started on the port of the file, which is in use");
    };
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{held_port}")),
        "not refused for its port: {stderr}"
    );

    // A flag over the file; the rest from the file.
    let p = started(&["--config", file, "--port", "0"], &[]);
    assert_eq!(default_ttl_secs(&p).await, 100);
    assert!(p.terminate().success());

    // Variables over the file (the file named by a variable too).
    let env = [
        ("SESSIOND_CONFIG", file),
        ("SESSIOND_PORT", "0"),
        ("SESSIOND_DEFAULT_TTL", "200"),
    ];
    let p = started(&[], &env);
    assert_eq!(default_ttl_secs(&p).await, 200);
    assert!(p.terminate().success());

    // Flags over variables.
    let env = [
        ("SESSIOND_PORT", held_port.as_str()),
        ("SESSIOND_DEFAULT_TTL", "200"),
    ];
    let p = started(
        &["--config", file, "--port", "0", "--default-ttl", "300"],
        &env,
    );
    assert_eq!(default_ttl_secs(&p).await, 300);
    assert!(p.terminate().success());
    drop(held);
}

async fn worker_threads(p: &ServerProcess) -> usize {
    let mut c = Client::connect(p.addr).await.unwrap();
    let info = c.info(Some("server")).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("worker_threads:"))
        .unwrap_or_else(|| panic!("no worker_threads in {info}"))
        .trim()
        .parse()
        .unwrap()
}

/// `--threads` sizes the runtime before it starts, from wherever settings
/// come from (a flag before or after `serve`, a variable, the file); an
/// absurd count is refused with the reason.
#[tokio::test]
async fn threads_set_the_runtime_workers_from_every_source() {
    let base = ["--port", "0", "--storage", "memory"];
    let p = started(&[&base[..], &["--threads", "1"]].concat(), &[]);
    assert_eq!(worker_threads(&p).await, 1);
    assert!(p.terminate().success());

    let p = ServerProcess::try_start_split(&["--threads", "2"], &base, &[])
        .unwrap_or_else(|(s, e)| panic!("did not start: {s:?}\n{e}"));
    assert_eq!(worker_threads(&p).await, 2);
    assert!(p.terminate().success());

    let p = started(&base, &[("SESSIOND_THREADS", "3")]);
    assert_eq!(worker_threads(&p).await, 3);
    assert!(p.terminate().success());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(&file, "threads = 1\n").unwrap();
    let p = started(
        &[&base[..], &["--config", file.to_str().unwrap()]].concat(),
        &[],
    );
    assert_eq!(worker_threads(&p).await, 1);
    assert!(p.terminate().success());

    let Err((status, stderr)) =
        ServerProcess::try_start(&[&base[..], &["--threads", "5000"]].concat(), &[])
    else {
        panic!("started with 5000 threads");
    };
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--threads 5000: at most 1024"), "{stderr}");
}
