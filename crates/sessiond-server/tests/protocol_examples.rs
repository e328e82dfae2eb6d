//! Runs every ```redis example of docs/protocol.md with the real
//! `redis-cli` against a real server, and compares the output.

mod common;

use std::process::Command;

fn redis_cli_available() -> bool {
    Command::new("redis-cli").arg("--version").output().is_ok()
}

/// `…` in an expected line matches any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let mut rest = actual;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part) && !rest.is_empty();
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_runs_as_documented() {
    assert!(
        redis_cli_available(),
        "redis-cli is needed (Debian package redis-tools)"
    );
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md");
    let server = common::TestServer::start().await;
    let port = server.addr.port().to_string();

    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```redis") {
            in_block = true;
            continue;
        }
        if in_block && line.trim_start().starts_with("```") {
            in_block = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("> ") {
            examples.push((cmd.to_owned(), Vec::new()));
        } else if let Some((_, out)) = examples.last_mut() {
            out.push(line.to_owned());
        }
    }
    assert!(
        examples.len() >= 30,
        "found only {} examples",
        examples.len()
    );

    for (cmd, expected) in &examples {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let port = port.clone();
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--no-raw", "-p", &port])
                .args(&argv)
                .output()
        })
        .await
        .expect("join")
        .expect("redis-cli runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let actual: Vec<&str> = stdout.lines().collect();
        let ok = actual.len() == expected.len()
            && expected
                .iter()
                .zip(&actual)
                .all(|(e, a)| line_matches(e, a));
        assert!(
            ok,
            "example `{cmd}`:\nexpected:\n{}\nactual:\n{}",
            expected.join("\n"),
            actual.join("\n")
        );
    }
    server.stop().await;
}
