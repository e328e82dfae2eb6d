//! Runs every ```redis example of docs/protocol.md with the real
//! `redis-cli` against a real server and compares the output, and checks
//! that every command the server accepts has such an example.
//!
//! A block's fence may carry settings after `redis`, separated by spaces:
//! - `requirepass=PASSWORD`: the block runs against a second server that
//!   requires that password;
//! - `resp3`: `redis-cli` runs with `-3`, so each connection starts with
//!   `HELLO 3` and replies come in RESP3.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use sessiond_server::cmd::{CmdError, Command as ServerCommand};

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

/// The settings of a ```redis block (see the module comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Settings {
    resp3: bool,
    requirepass: Option<String>,
}

impl Settings {
    fn parse(words: &str, line: usize) -> Settings {
        let mut s = Settings::default();
        for word in words.split_whitespace() {
            if word == "resp3" {
                s.resp3 = true;
            } else if let Some(pass) = word.strip_prefix("requirepass=") {
                s.requirepass = Some(pass.to_owned());
            } else {
                panic!("docs/protocol.md:{line}: unknown block setting {word:?}");
            }
        }
        // redis-cli -3 sends HELLO 3 before anything else; without the
        // password that fails, and the connection silently stays RESP2.
        assert!(
            !(s.resp3 && s.requirepass.is_some()),
            "docs/protocol.md:{line}: `resp3` cannot be combined with `requirepass=`"
        );
        s
    }
}

/// One `> command` line of a block and the output lines after it.
#[derive(Debug)]
struct Example {
    /// Line number in docs/protocol.md, for messages.
    line: usize,
    settings: Settings,
    cmd: String,
    expected: Vec<String>,
}

impl Example {
    fn words(&self) -> Vec<&str> {
        self.cmd.split_whitespace().collect()
    }

    /// Whether the example shows the command working, as opposed to a
    /// generic usage error (unknown command, arity, syntax, bad number).
    fn shows_the_command(&self) -> bool {
        !self
            .expected
            .first()
            .is_some_and(|l| l.starts_with("(error) ERR"))
    }
}

fn protocol_doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md")
}

fn parse_examples(doc: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut block: Option<Settings> = None;
    for (i, line) in doc.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim_start();
        if block.is_none() {
            if let Some(rest) = trimmed.strip_prefix("```redis") {
                block = Some(Settings::parse(rest, line_no));
            }
            continue;
        }
        if trimmed.starts_with("```") {
            block = None;
            continue;
        }
        if let Some(cmd) = line.strip_prefix("> ") {
            examples.push(Example {
                line: line_no,
                settings: block.clone().unwrap_or_default(),
                cmd: cmd.to_owned(),
                expected: Vec::new(),
            });
        } else if let Some(ex) = examples.last_mut() {
            ex.expected.push(line.to_owned());
        }
    }
    assert!(block.is_none(), "docs/protocol.md: unclosed ```redis block");
    examples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_runs_as_documented() {
    assert!(
        redis_cli_available(),
        "redis-cli is needed (Debian package redis-tools)"
    );
    let examples = parse_examples(&protocol_doc());
    assert!(
        examples.len() >= 30,
        "found only {} examples",
        examples.len()
    );

    // One server per password (None: no password), started when a block
    // first needs it.
    let mut servers: BTreeMap<Option<String>, common::TestServer> = BTreeMap::new();
    for ex in &examples {
        let pass = ex.settings.requirepass.clone();
        if !servers.contains_key(&pass) {
            let mut config = sessiond_server::Config::for_tests();
            config.requirepass = pass.clone();
            servers.insert(pass.clone(), common::TestServer::start_with(config).await);
        }
        let port = servers[&pass].addr.port().to_string();
        let mut argv: Vec<String> = vec!["--no-raw".into(), "-p".into(), port];
        if ex.settings.resp3 {
            argv.push("-3".into());
        }
        argv.extend(ex.words().iter().map(|s| s.to_string()));
        let output =
            tokio::task::spawn_blocking(move || Command::new("redis-cli").args(&argv).output())
                .await
                .expect("join")
                .expect("redis-cli runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let actual: Vec<&str> = stdout.lines().collect();
        let ok = actual.len() == ex.expected.len()
            && ex
                .expected
                .iter()
                .zip(&actual)
                .all(|(e, a)| line_matches(e, a));
        assert!(
            ok,
            "docs/protocol.md:{}: example `{}` ({:?}):\nexpected:\n{}\nactual:\n{}\nstderr:\n{}",
            ex.line,
            ex.cmd,
            ex.settings,
            ex.expected.join("\n"),
            actual.join("\n"),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (_, server) in servers {
        server.stop().await;
    }
}

/// Every upper-case word in the server's source (`[A-Z][A-Z0-9._-]*`,
/// without trailing dots). Requests are matched on their upper-cased name,
/// so every command and subcommand name the server accepts is among them.
fn source_words() -> BTreeSet<String> {
    fn walk(dir: &Path, words: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, words);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                let is_word = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
                for w in text.split(|c: char| !is_word(c)) {
                    let w = w.trim_end_matches('.');
                    if w.starts_with(|c: char| c.is_ascii_uppercase())
                        && !w.contains(|c: char| c.is_ascii_lowercase())
                    {
                        words.insert(w.to_owned());
                    }
                }
            }
        }
    }
    let mut words = BTreeSet::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut words,
    );
    words
}

fn parse(args: &[&str]) -> Result<ServerCommand, CmdError> {
    ServerCommand::parse(args.iter().map(|a| Bytes::from(a.to_string())).collect())
}

/// Whether `err` says the subcommand is unknown (`CLIENT NOPE`).
fn unknown_subcommand(r: &Result<ServerCommand, CmdError>) -> bool {
    matches!(r, Err(CmdError::Syntax(m)) if m.contains("subcommand"))
}

/// The reply to `args` (RESP3), as text to compare.
async fn reply(client: &mut sessiond_client::Client, args: &[&str]) -> String {
    format!("{:?}", client.command(args).await)
}

/// Commands that take any argument and choose their reply by it, so their
/// subcommands are found by asking the server rather than the parser.
const DISPATCHED_BY_REPLY: &[&str] = &["COMMAND"];

/// Every command the server accepts, named as an example must start:
/// `SESSION.READ`, and for a command with subcommands one entry per
/// subcommand (`CLIENT ID`) plus the bare name when that works alone
/// (`COMMAND`). Derived from the server itself: each upper-case word of its
/// source is tried as a command name with the real parser, and each as a
/// subcommand of every command that has them.
async fn implemented_commands(server: &common::TestServer) -> (BTreeSet<String>, BTreeSet<String>) {
    let words = source_words();
    let top: Vec<&String> = words
        .iter()
        .filter(|w| !matches!(parse(&[w.as_str()]), Err(CmdError::Unknown(_))))
        .collect();
    for must in ["PING", "HELLO", "SESSION.READ", "LOCK.ACQUIRE", "CLIENT"] {
        assert!(
            top.iter().any(|w| *w == must),
            "the source scan missed {must}: found only {top:?}"
        );
    }

    let mut client = server.client().await;

    let mut commands = BTreeSet::new();
    let mut containers = BTreeSet::new();
    for name in top {
        let by_parser = unknown_subcommand(&parse(&[name, "NO-SUCH-SUBCOMMAND"]));
        let by_reply = DISPATCHED_BY_REPLY.contains(&name.as_str());
        if !by_parser && !by_reply {
            commands.insert(name.clone());
            continue;
        }
        containers.insert(name.clone());
        if parse(&[name]).is_ok() {
            commands.insert(name.clone());
        }
        let bare = reply(&mut client, &[name]).await;
        let mut subs = 0;
        for sub in &words {
            let known = if by_parser {
                !unknown_subcommand(&parse(&[name, sub]))
            } else {
                reply(&mut client, &[name, sub]).await != bare
            };
            if known {
                commands.insert(format!("{name} {sub}"));
                subs += 1;
            }
        }
        assert!(subs > 0, "{name} has subcommands, but none was found");
    }
    for c in DISPATCHED_BY_REPLY {
        assert!(
            containers.contains(*c),
            "{c} is not a command any more: update DISPATCHED_BY_REPLY"
        );
    }
    (commands, containers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_server_accepts_has_a_documented_example() {
    let server = common::TestServer::start().await;
    let (implemented, containers) = implemented_commands(&server).await;
    server.stop().await;

    let examples = parse_examples(&protocol_doc());
    let documented: BTreeSet<String> = examples
        .iter()
        .filter(|ex| ex.shows_the_command())
        .map(|ex| {
            let words = ex.words();
            let name = words[0].to_ascii_uppercase();
            match words.get(1) {
                Some(sub) if containers.contains(&name) => {
                    format!("{name} {}", sub.to_ascii_uppercase())
                }
                _ => name,
            }
        })
        .collect();
    let missing: Vec<&String> = implemented.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "commands the server accepts without an example in docs/protocol.md \
         (one that does not just show an ERR usage error): {missing:?}\n\
         implemented: {implemented:?}"
    );
}
