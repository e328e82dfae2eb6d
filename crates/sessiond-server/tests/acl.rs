//! Users over TCP against the real binary: every command × every class
//! (the table of docs/protocol.md), tenant prefixes, AUTH and HELLO with a
//! user name, ACL WHOAMI and ACL LIST, refused logins counted.

mod common;
mod tls_support;

use common::ServerProcess;
use sessiond_client::{Client, ConnectOptions, Error};

/// `echo -n rw-pass | sha256sum`, as the config file keeps it.
fn hashed(pass: &str) -> String {
    sessiond_server::users::hash_password(pass)
}

/// A server with users `ro` (read), `rw` (readwrite, hashed password), `adm`
/// (admin), `tenant` (readwrite, prefix `tenantA:`) and the metrics on.
fn start(dir: &std::path::Path) -> ServerProcess {
    let config = dir.join("sessiond.toml");
    std::fs::write(
        &config,
        format!(
            r#"storage = "memory"
[[user]]
name = "ro"
password = "ro-pass"
class = "read"

[[user]]
name = "rw"
password = "{}"
class = "readwrite"

[[user]]
name = "adm"
password = "{}"
class = "admin"

[[user]]
name = "tenant"
password = "{}"
class = "readwrite"
prefix = "tenantA:"
"#,
            hashed("rw-pass"),
            hashed("adm-pass"),
            hashed("t-pass"),
        ),
    )
    .unwrap();
    ServerProcess::start(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
}

async fn login(server: &ServerProcess, user: &str, pass: &str) -> Result<Client, Error> {
    Client::connect_with(
        server.addr,
        ConnectOptions {
            user: Some(user.into()),
            password: Some(pass.into()),
            ..Default::default()
        },
    )
    .await
}

/// Rows `(command, class)` of the permissions table of docs/protocol.md.
fn documented_table() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    let start = doc.find("<!-- acl-table -->").unwrap();
    doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim).skip(1);
            let form = cols.next()?.trim_matches('`').to_owned();
            let class = cols.next()?.to_owned();
            (form.contains(|c: char| c.is_ascii_uppercase())).then_some((form, class))
        })
        .collect()
}

fn rank(class: &str) -> u8 {
    match class {
        "read" => 0,
        "readwrite" => 1,
        "admin" => 2,
        other => panic!("unknown class {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_for_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let table = documented_table();
    assert!(table.len() > 30, "{table:?}");
    let users = [
        ("ro", "ro-pass", "read"),
        ("rw", "rw-pass", "readwrite"),
        ("adm", "adm-pass", "admin"),
    ];
    let mut checked = 0;
    for (user, pass, class) in users {
        for (form, needed) in &table {
            // A new connection each: QUIT closes it, CLIENT SETNAME marks it.
            let mut c = login(&server, user, pass).await.expect("login");
            let words: Vec<&str> = form.split_whitespace().collect();
            let reply = c.command(&words).await;
            let refused = matches!(&reply, Err(e) if e.code() == Some("NOPERM"));
            let allowed = rank(class) >= rank(needed);
            assert_eq!(
                !refused, allowed,
                "{user} ({class}) running `{form}` (needs {needed}): {reply:?}"
            );
            if refused {
                let message = reply.as_ref().unwrap_err().to_string();
                assert!(
                    message.starts_with(&format!(
                        "NOPERM User {user} has no permissions to run the '"
                    )),
                    "{message}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, table.len() * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_touches_only_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut adm = login(&server, "adm", "adm-pass").await.unwrap();
    adm.command(&[
        "SESSION.COMMIT",
        "tenantB:1",
        "CREATE",
        "SET",
        "secret",
        "b",
    ])
    .await
    .unwrap();
    let mut t = login(&server, "tenant", "t-pass").await.unwrap();

    // Ids the server makes for it carry its prefix.
    let made = t.command(&["SESSION.NEW"]).await.unwrap();
    assert!(format!("{made:?}").contains("tenantA:"), "{made:?}");
    t.command(&["SESSION.COMMIT", "tenantA:x", "CREATE", "SET", "k", "v"])
        .await
        .unwrap();
    let moved = t.command(&["SESSION.REGENERATE", "tenantA:x"]).await;
    assert!(moved.is_ok(), "{moved:?}");
    assert!(format!("{moved:?}").contains("tenantA:"), "{moved:?}");

    t.command(&["SESSION.COMMIT", "tenantA:1", "CREATE", "SET", "k", "v"])
        .await
        .unwrap();
    t.command(&["LOCK.ACQUIRE", "tenantA:1"]).await.unwrap();
    t.command(&["LOCK.INFO", "tenantA:1"]).await.unwrap();
    for refused in [
        vec!["SESSION.READ", "tenantB:1"],
        vec!["SESSION.COMMIT", "tenantB:1", "SET", "secret", "stolen"],
        vec!["SESSION.DESTROY", "tenantB:1"],
        vec!["SESSION.REGENERATE", "tenantA:1", "TO", "tenantB:2"],
        vec!["LOCK.ACQUIRE", "tenantB:1"],
        vec!["LOCK.INFO"],
        vec!["LOCK.INFO", "tenantB:1"],
        vec!["SESSION.READ", "tenantA"],
    ] {
        match t.command(&refused).await {
            Err(e) if e.code() == Some("NOPERM") => {}
            other => panic!("{refused:?}: {other:?}"),
        }
    }
    // Tenant B's session is as it was.
    let b = adm.command(&["SESSION.READ", "tenantB:1"]).await.unwrap();
    assert!(
        format!("{b:?}").contains("\"b\"") || format!("{b:?}").contains("b\""),
        "{b:?}"
    );
    assert!(!format!("{b:?}").contains("stolen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_users_whoami_list_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    // Nothing works before AUTH: there is no password-less default user.
    let mut anon = Client::connect_with(
        server.addr,
        ConnectOptions {
            resp3: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match anon.command(&["PING"]).await {
        Err(e) => assert_eq!(e.code(), Some("NOAUTH")),
        other => panic!("{other:?}"),
    }
    // AUTH user pass, then ACL WHOAMI.
    anon.command(&["AUTH", "ro", "ro-pass"]).await.unwrap();
    let who = anon.command(&["ACL", "WHOAMI"]).await.unwrap();
    assert!(format!("{who:?}").contains("ro"), "{who:?}");

    // HELLO 3 AUTH (the client's handshake) with a hashed password.
    let mut rw = login(&server, "rw", "rw-pass").await.unwrap();
    let who = rw.command(&["ACL", "WHOAMI"]).await.unwrap();
    assert!(format!("{who:?}").contains("rw"), "{who:?}");

    // Refused logins: wrong password, unknown user, `default` (none here).
    for (user, pass) in [("rw", "nope"), ("nobody", "x"), ("default", "x")] {
        match login(&server, user, pass).await {
            Err(Error::Auth(_)) => {}
            other => panic!("{user}: {other:?}"),
        }
    }
    let metrics = tls_support::scrape(server.metrics.unwrap());
    assert!(
        metrics.contains("sessiond_auth_failures_total 3"),
        "{metrics}"
    );

    // ACL LIST: admin only, every user, no secret.
    let mut adm = login(&server, "adm", "adm-pass").await.unwrap();
    let list = format!("{:?}", adm.command(&["ACL", "LIST"]).await.unwrap());
    for rule in [
        "user adm on haspass ~* +@admin",
        "user ro on haspass ~* +@read",
        "user rw on haspass ~* +@readwrite",
        "user tenant on haspass ~tenantA:* +@readwrite",
    ] {
        assert!(list.contains(rule), "{rule} in {list}");
    }
    for secret in ["ro-pass", "rw-pass", &hashed("rw-pass")[1..]] {
        assert!(!list.contains(secret), "{list}");
    }
    // CLIENT LIST names each connection's user.
    let clients = format!("{:?}", adm.command(&["CLIENT", "LIST"]).await.unwrap());
    for user in ["user=adm ", "user=rw ", "user=ro "] {
        assert!(clients.contains(user), "{user} in {clients}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_is_still_the_default_admin_beside_users() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"dash\"\npassword = \"{}\"\nclass = \"read\"\n",
            hashed("d")
        ),
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--storage",
            "memory",
            "--requirepass",
            "s3cret",
            "--users-file",
            users.to_str().unwrap(),
        ],
    );
    let mut d = Client::connect_with(
        server.addr,
        ConnectOptions {
            password: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    d.command(&["LOCK.BREAK", "x"]).await.unwrap();
    let mut dash = login(&server, "dash", "d").await.unwrap();
    dash.command(&["SESSION.EXISTS", "x"]).await.unwrap();
    match dash
        .command(&["SESSION.COMMIT", "x", "CREATE", "SET", "a", "b"])
        .await
    {
        Err(e) => assert_eq!(
            e.to_string(),
            "NOPERM User dash has no permissions to run the 'session.commit' command"
        ),
        other => panic!("{other:?}"),
    }
}

/// Every command of an example in docs/protocol.md (every command the
/// server accepts has one, see protocol_examples.rs) has a row in the
/// permissions table, so a new command cannot go without its class being
/// documented (and `cmd/acl.rs` does not compile without one).
#[test]
fn every_documented_command_has_a_row_in_the_permissions_table() {
    let containers = ["CLIENT", "SLOWLOG", "ACL", "CLUSTER"];
    let key = |words: &[&str]| {
        let name = words[0].to_ascii_uppercase();
        match words.get(1) {
            Some(sub) if containers.contains(&name.as_str()) => {
                format!("{name} {}", sub.to_ascii_uppercase())
            }
            _ => name,
        }
    };
    let table: std::collections::BTreeSet<String> = documented_table()
        .iter()
        .map(|(form, _)| key(&form.split_whitespace().collect::<Vec<_>>()))
        .collect();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    let mut checked = 0;
    for line in doc.lines().filter_map(|l| l.strip_prefix("> ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let argv = words
            .iter()
            .map(|w| bytes::Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        if sessiond_server::cmd::Command::parse(argv).is_err() {
            continue; // an example of an error
        }
        assert!(
            table.contains(&key(&words)),
            "`{line}`: {} has no row in the permissions table of docs/protocol.md",
            key(&words)
        );
        checked += 1;
    }
    assert!(checked > 40, "only {checked} examples");
}
