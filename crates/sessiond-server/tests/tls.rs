//! TLS on the client port, against the real binary, with certificates made
//! here: handshakes that work (with and without client certificates,
//! through the Rust client and redis-cli), handshakes that must fail
//! (another CA, expired certificates, no client certificate, plaintext and
//! garbage on the TLS port), each logged and counted; a stalled handshake
//! holding up no one; certificates replaced on SIGHUP while a connection
//! stays open; the plaintext port switched off.

mod tls_support;

use std::path::Path;

use sessiond_client::{Client, ConnectOptions, TlsOptions};
use tls_support::{Ca, Issued, TlsServer};

fn tls(ca: &Path, client: Option<&Issued>) -> ConnectOptions {
    ConnectOptions {
        tls: Some(TlsOptions {
            cert_file: client.map(|c| c.cert.clone()),
            key_file: client.map(|c| c.key.clone()),
            ..TlsOptions::with_ca(ca)
        }),
        ..Default::default()
    }
}

/// Connects and runs PING: the handshake's outcome (with TLS 1.3 a refused
/// client certificate shows only at the first read).
async fn ping(addr: std::net::SocketAddr, opts: ConnectOptions) -> Result<(), String> {
    let mut c = Client::connect_with(addr, opts)
        .await
        .map_err(|e| e.to_string())?;
    c.command(&["PING"]).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_locks_over_tls_and_plaintext_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server_cert = ca.server("server");
    let server = TlsServer::start(dir.path(), &server_cert, &["--tls-auth-clients", "no"]);

    let mut c = Client::connect_with(server.tls, tls(&ca.cert, None))
        .await
        .unwrap();
    c.command(&["SESSION.COMMIT", "u1", "CREATE", "SET", "user", "alice"])
        .await
        .unwrap();
    let big = "x".repeat(200_000);
    c.command(&["SESSION.COMMIT", "u1", "SET", "big", &big])
        .await
        .unwrap();
    let read = c.command(&["SESSION.READ", "u1"]).await.unwrap();
    assert!(format!("{read:?}").contains("alice"));
    assert!(
        format!("{read:?}").len() > 200_000,
        "the big value came back whole"
    );
    c.command(&["LOCK.ACQUIRE", "u1", "WAIT", "1000"])
        .await
        .unwrap();

    // The plaintext port serves the same data.
    let mut plain = Client::connect(server.resp.unwrap()).await.unwrap();
    let read = plain.command(&["SESSION.READ", "u1"]).await.unwrap();
    assert!(format!("{read:?}").contains("alice"));

    // A client that trusts another CA refuses the server: logged, counted.
    let other = Ca::new(dir.path(), "other-ca");
    let refused = ping(server.tls, tls(&other.cert, None)).await;
    assert!(refused.is_err());
    assert!(server.handshake_failures("peer_alert_unknown_ca", 1) >= 1);
    assert!(
        server.logged().contains("TLS handshake failed") && server.logged().contains("127.0.0.1:"),
        "{}",
        server.logged()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let server_cert = ca.server("server");
    let ca_file = ca.cert.to_str().unwrap().to_owned();
    let server = TlsServer::start(
        dir.path(),
        &server_cert,
        &["--tls-ca-cert-file", &ca_file, "--tls-auth-clients", "yes"],
    );
    let good = ca.client("app");
    ping(server.tls, tls(&ca.cert, Some(&good))).await.unwrap();

    // No certificate.
    assert!(ping(server.tls, tls(&ca.cert, None)).await.is_err());
    assert_eq!(server.handshake_failures("no_client_certificate", 1), 1);
    // A certificate of another CA.
    let foreign = other.client("intruder");
    assert!(
        ping(server.tls, tls(&ca.cert, Some(&foreign)))
            .await
            .is_err()
    );
    assert_eq!(server.handshake_failures("unknown_ca", 1), 1);
    // An expired certificate of the right CA.
    let expired = ca.expired_client("old");
    assert!(
        ping(server.tls, tls(&ca.cert, Some(&expired)))
            .await
            .is_err()
    );
    assert_eq!(server.handshake_failures("expired_certificate", 1), 1);
    // And the good one still works.
    ping(server.tls, tls(&ca.cert, Some(&good))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_optional() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let ca_file = ca.cert.to_str().unwrap().to_owned();
    let server = TlsServer::start(
        dir.path(),
        &ca.server("server"),
        &[
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "optional",
        ],
    );
    ping(server.tls, tls(&ca.cert, None)).await.unwrap();
    ping(server.tls, tls(&ca.cert, Some(&ca.client("app"))))
        .await
        .unwrap();
    // Given, a certificate must be valid.
    let foreign = other.client("intruder");
    assert!(
        ping(server.tls, tls(&ca.cert, Some(&foreign)))
            .await
            .is_err()
    );
    assert_eq!(server.handshake_failures("unknown_ca", 1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = TlsServer::start(
        dir.path(),
        &ca.expired_server("server"),
        &["--tls-auth-clients", "no"],
    );
    let err = ping(server.tls, tls(&ca.cert, None)).await.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert_eq!(
        server.handshake_failures("peer_alert_certificate_expired", 1),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_garbage_and_stalled_clients_on_the_tls_port() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = TlsServer::start(
        dir.path(),
        &ca.server("server"),
        &["--tls-auth-clients", "no"],
    );

    // A client that connects and says nothing holds up no one.
    let _stalled = tokio::net::TcpStream::connect(server.tls).await.unwrap();
    // Half a handshake record, then silence: the same.
    let mut half = tokio::net::TcpStream::connect(server.tls).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    // Plaintext RESP: the connection is closed without a reply.
    let (out, closed) = tls_support_raw(server.tls, b"*1\r\n$4\r\nPING\r\n").await;
    assert!(out.is_empty() && closed, "{out:?}");
    assert_eq!(server.handshake_failures("plaintext", 1), 1);
    // An inline command.
    let (out, closed) = tls_support_raw(server.tls, b"PING\r\n").await;
    assert!(out.is_empty() && closed, "{out:?}");
    assert_eq!(server.handshake_failures("plaintext", 2), 2);
    // Bytes that are neither.
    let (_, closed) = tls_support_raw(server.tls, &[0x00, 0xff, 0x13, 0x37]).await;
    assert!(closed);
    assert_eq!(server.handshake_failures("not_tls", 1), 1);
    // A handshake record with garbage inside.
    let (_, closed) =
        tls_support_raw(server.tls, &[0x16, 0x03, 0x01, 0x00, 0x04, 1, 2, 3, 4]).await;
    assert!(closed);

    // Meanwhile real clients are served.
    ping(server.tls, tls(&ca.cert, None)).await.unwrap();
    let logged = server.logged();
    assert!(
        logged.contains("plaintext RESP sent to the TLS port"),
        "{logged}"
    );
    // The server is alive and well.
    let mut plain = Client::connect(server.resp.unwrap()).await.unwrap();
    plain.command(&["PING"]).await.unwrap();
}

/// Writes `input` on a new TCP connection and reads until the server closes
/// it (or 5 s pass): what came back, and whether it closed.
async fn tls_support_raw(addr: std::net::SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old-ca");
    let new_ca = Ca::new(dir.path(), "new-ca");
    let live = Issued {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
    };
    let first = old_ca.server("first");
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let server = TlsServer::start(dir.path(), &live, &["--tls-auth-clients", "no"]);

    let mut open = Client::connect_with(server.tls, tls(&old_ca.cert, None))
        .await
        .unwrap();
    open.command(&["SESSION.COMMIT", "s", "CREATE", "SET", "n", "1"])
        .await
        .unwrap();

    // Rotate: the new CA's certificate in place of the old, then SIGHUP.
    let second = new_ca.server("second");
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    server.signal("HUP");
    let mut rotated = false;
    for _ in 0..100 {
        if ping(server.tls, tls(&new_ca.cert, None)).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(rotated, "new handshakes never used the new certificate");
    assert!(ping(server.tls, tls(&old_ca.cert, None)).await.is_err());

    // The connection opened before keeps working.
    open.command(&["SESSION.INCR", "s", "n", "1"])
        .await
        .unwrap();
    let read = open.command(&["SESSION.READ", "s"]).await.unwrap();
    assert!(format!("{read:?}").contains('2'), "{read:?}");

    // A broken file on the next SIGHUP: the certificate in force stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    server.signal("HUP");
    let mut logged = false;
    for _ in 0..100 {
        if server.logged().contains("TLS certificates not reloaded") {
            logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", server.logged());
    ping(server.tls, tls(&new_ca.cert, None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_and_settings_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.server("server");
    let server = TlsServer::start(
        dir.path(),
        &cert,
        &["--tls-auth-clients", "no", "--plaintext", "no"],
    );
    assert_eq!(server.resp, None, "no plaintext port");
    ping(server.tls, tls(&ca.cert, None)).await.unwrap();
    drop(server);

    // A CA file is needed for client certificates (yes is the default).
    let err = TlsServer::try_start(dir.path(), &cert, &[]).err().unwrap();
    assert!(err.contains("--tls-ca-cert-file"), "{err}");
    // A key that is not the certificate's.
    let other = ca.server("other");
    let mismatched = Issued {
        cert: cert.cert.clone(),
        key: other.key.clone(),
    };
    let err = TlsServer::try_start(dir.path(), &mismatched, &["--tls-auth-clients", "no"])
        .err()
        .unwrap();
    assert!(err.contains("certificate and key"), "{err}");
    // A remote TLS-only listener without a password needs client
    // certificates.
    let err = TlsServer::try_start(
        dir.path(),
        &cert,
        &[
            "--tls-auth-clients",
            "no",
            "--plaintext",
            "no",
            "--bind",
            "0.0.0.0",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("without a password"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let ca_file = ca.cert.to_str().unwrap().to_owned();
    let server = TlsServer::start(
        dir.path(),
        &ca.server("server"),
        &["--tls-ca-cert-file", &ca_file],
    );
    let client = ca.client("cli");
    let port = server.tls.port().to_string();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &ca_file,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(extra)
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let cert = client.cert.to_str().unwrap();
    let key = client.key.to_str().unwrap();
    let out = run(&[
        "--cert",
        cert,
        "--key",
        key,
        "SESSION.INCR",
        "s",
        "n",
        "5",
        "CREATE",
    ]);
    assert!(out.contains('5'), "{out}");
    assert_eq!(run(&["--cert", cert, "--key", key, "PING"]).trim(), "PONG");
    // Without a client certificate: refused.
    assert_ne!(run(&["PING"]).trim(), "PONG");
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_over_mutual_tls_and_refuses_plain_peers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let ca_file = ca.cert.to_str().unwrap().to_owned();
    let raft: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let initial = raft
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<TlsServer> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            let node_dir = dir.path().join(format!("n{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            TlsServer::start(
                &node_dir,
                &ca.node(&format!("node{id}")),
                &[
                    "--tls-ca-cert-file",
                    &ca_file,
                    "--tls-cluster",
                    "yes",
                    "--node-id",
                    &id,
                    "--raft-addr",
                    &raft[i],
                    "--initial-cluster",
                    &initial,
                ],
            )
        })
        .collect();

    // A write through any node (followers forward it to the leader) is
    // applied on every node: the peers talk to each other over TLS.
    let client = ca.client("app");
    let mut written = false;
    for _ in 0..400 {
        let mut c = Client::connect_with(nodes[0].tls, tls(&ca.cert, Some(&client)))
            .await
            .unwrap();
        if c.command(&["SESSION.COMMIT", "s", "CREATE", "SET", "k", "over-tls"])
            .await
            .is_ok()
        {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Bounded (20 s, as the other cluster tests): a hang guard.
    assert!(written, "no leader elected over TLS");
    for node in &nodes {
        let mut seen = false;
        for _ in 0..400 {
            let mut c = Client::connect(node.resp.unwrap()).await.unwrap();
            let read = c.command(&["SESSION.READ", "s"]).await;
            if format!("{read:?}").contains("over-tls") {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(seen, "node {} never applied the write", node.tls);
    }

    // A peer speaking plain TCP to a node's peer port is refused there.
    let (_, closed) = tls_support_raw(raft[1].parse().unwrap(), &[0, 0, 0, 1, 4]).await;
    assert!(closed);
    let mut logged = false;
    for _ in 0..100 {
        if nodes[1].logged().contains("peer TLS handshake failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", nodes[1].logged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_locks_log_in_over_tls_with_their_users() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ops\"\npassword = \"{}\"\nclass = \"admin\"\n\
             [[user]]\nname = \"dash\"\npassword = \"{}\"\nclass = \"read\"\n",
            sessiond_server::users::hash_password("ops-pw"),
            sessiond_server::users::hash_password("dash-pw"),
        ),
    )
    .unwrap();
    let server = TlsServer::start(
        dir.path(),
        &ca.server("server"),
        &[
            "--tls-auth-clients",
            "no",
            "--plaintext",
            "no",
            "--users-file",
            users.to_str().unwrap(),
        ],
    );
    let tool = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(args)
            .args(["--addr", &server.tls.to_string(), "--cacert"])
            .arg(&ca.cert)
            .env_remove("SESSIOND_REQUIREPASS")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = tool(&["locks", "--user", "dash", "--password", "dash-pw"]);
    assert!(ok && out.contains("no locks held"), "{out}");
    let file = dir.path().join("backup.bin");
    let to = file.to_str().unwrap();
    let (ok, out) = tool(&[
        "backup",
        "--to",
        to,
        "--user",
        "ops",
        "--password",
        "ops-pw",
    ]);
    assert!(ok, "{out}");
    assert!(file.exists());
    // A read-only user may not take backups.
    let (ok, out) = tool(&[
        "backup",
        "--to",
        to,
        "--user",
        "dash",
        "--password",
        "dash-pw",
    ]);
    assert!(!ok && out.contains("NOPERM"), "{out}");
}

#[test]
fn check_config_reads_the_tls_files_and_hash_password_hashes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.server("server");
    let check = |cert_file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args([
                "check-config",
                "--tls-port",
                "0",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(cert_file)
            .arg("--tls-key-file")
            .arg(&cert.key)
            .output()
            .unwrap()
    };
    let good = check(&cert.cert);
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("tls_auth_clients = \"no\""));
    let missing = check(&dir.path().join("nope.crt"));
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("--tls-cert-file") && err.contains("nope.crt"),
        "{err}"
    );

    let mut hash = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hash.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = hash.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        // echo -n abc | sha256sum
        "#ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
