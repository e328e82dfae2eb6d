//! Authentication over real TCP against a real server with a password.

mod common;

use sessiond_client::{Client, ConnectOptions};

async fn server_with_password() -> common::TestServer {
    let mut config = sessiond_server::Config::for_tests();
    config.requirepass = Some("s3cret".into());
    common::TestServer::start_with(config).await
}

/// `HELLO 3 AUTH default <wrong>` is refused with `WRONGPASS` and changes
/// nothing: the connection stays unauthenticated (the next command gets
/// `NOAUTH`) and on RESP2. The right password authenticates and switches.
#[tokio::test]
async fn hello_with_a_wrong_password_is_refused_and_leaves_the_connection_unauthenticated() {
    let server = server_with_password().await;
    const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";

    let (out, closed) = common::raw_exchange(
        server.addr,
        b"HELLO 3 AUTH default wrong\r\nSESSION.EXISTS x\r\nHELLO 3 AUTH nobody s3cret\r\nSESSION.EXISTS x\r\nAUTH s3cret\r\nSESSION.READ x\r\n",
    )
    .await;
    assert!(!closed);
    assert_eq!(
        String::from_utf8_lossy(&out),
        // After the refused HELLOs, AUTH works and nil is RESP2's: the
        // protocol was not switched either.
        format!("{WRONGPASS}{NOAUTH}{WRONGPASS}{NOAUTH}+OK\r\n$-1\r\n")
    );

    let (out, closed) = common::raw_exchange(
        server.addr,
        b"HELLO 3 AUTH default s3cret\r\nSESSION.EXISTS x\r\nSESSION.READ x\r\n",
    )
    .await;
    assert!(!closed);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("%7\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(text.ends_with("\r\n:0\r\n_\r\n"), "{text}");

    // The client's own handshake: a wrong password fails the connect.
    let err = Client::connect_with(
        server.addr,
        ConnectOptions {
            password: Some("wrong".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
    let mut c = Client::connect_with(
        server.addr,
        ConnectOptions {
            password: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c.is_resp3());
    assert!(!c.exists("x").await.unwrap());
    server.stop().await;
}
