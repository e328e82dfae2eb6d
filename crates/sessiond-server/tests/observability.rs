//! The metrics address of the real binary: health and readiness, and
//! scrapes in both text formats read by the reference parsers (Python's
//! prometheus_client, Debian package python3-prometheus-client).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::ServerProcess;

/// The Python the parsers are installed for (not a pyenv or venv one).
const PYTHON: &str = "/usr/bin/python3";

/// Status code, headers (lower-case names) and body of `GET path`.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{accept}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status.parse().unwrap(), headers, body.to_owned())
}

/// Parses `text` with prometheus_client's parser for `format` (`text` or
/// `openmetrics`); returns each family's name and type, or the parser's
/// error.
fn parse_with_python(format: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    let module = match format {
        "openmetrics" => "prometheus_client.openmetrics.parser",
        _ => "prometheus_client.parser",
    };
    let script = format!(
        "import sys\nfrom {module} import text_string_to_metric_families as p\n\
         for f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect())
}

fn start() -> (tempfile::TempDir, ServerProcess, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let m = p.metrics.expect("metrics address");
    (dir, p, m)
}

#[test]
fn health_and_readiness_answer() {
    let (_dir, _p, m) = start();
    let (status, _, body) = http_get(m, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = http_get(m, "/readyz", None);
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, _) = http_get(m, "/nope", None);
    assert_eq!(status, 404);
}

/// A cluster node whose two peers do not exist has no majority, so no
/// leader: it answers, but is not ready.
#[test]
fn a_cluster_node_without_a_leader_is_not_ready() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string()
    };
    let (own, a, b) = (free(), free(), free());
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(
        dir.path(),
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--raft-addr",
            &own,
            "--initial-cluster",
            &format!("1={own},2={a},3={b}"),
            // Its vote requests to the missing peers fail: not news here.
            "--log-level",
            "off",
        ],
    );
    let m = p.metrics.expect("metrics address");
    let (status, _, body) = http_get(m, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Through a few election timeouts: still no leader.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        let (status, _, body) = http_get(m, "/readyz", None);
        assert_eq!((status, body.as_str()), (503, "no leader\n"));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[tokio::test]
async fn scrapes_parse_in_both_formats_with_counters_as_counters() {
    let (_dir, p, m) = start();
    // Something to count.
    let mut c = sessiond_client::Client::connect(p.addr).await.unwrap();
    c.commit("s", &sessiond_client::Commit::new().create().set("k", "v"))
        .await
        .unwrap();

    let (status, headers, text) = http_get(m, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    assert!(!text.contains("# EOF"));
    // Prometheus reads the TYPE line of a counter under its sample name.
    for counter in [
        "sessiond_sessions_expired_total",
        "sessiond_lock_deadlocks_total",
        "sessiond_lock_fenced_writes_total",
        "sessiond_lock_expired_total",
        "sessiond_commands_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {counter} counter\n")),
            "{counter} is not a counter:\n{text}"
        );
    }
    let families = parse_with_python("text", &text).expect("the Prometheus text parses");
    for (name, kind) in [
        ("sessiond_sessions_expired", "counter"),
        ("sessiond_lock_deadlocks", "counter"),
        ("sessiond_lock_fenced_writes", "counter"),
        ("sessiond_lock_expired", "counter"),
        ("sessiond_commands", "counter"),
        ("sessiond_sessions", "gauge"),
        ("sessiond_resident_memory_bytes", "gauge"),
        ("sessiond_command_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(kind),
            "{name} in {families:?}"
        );
    }

    let (status, headers, om) = http_get(
        m,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text; version=1.0.0"),
        "{headers:?}"
    );
    let families = parse_with_python("openmetrics", &om).expect("the OpenMetrics text parses");
    assert_eq!(
        families
            .get("sessiond_sessions_expired")
            .map(String::as_str),
        Some("counter")
    );
}

#[test]
fn resident_memory_counts_pages_of_the_kernels_size() {
    let (_dir, _p, m) = start();
    let page: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("PAGESIZE")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let (_, _, text) = http_get(m, "/metrics", None);
    let rss: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sessiond_resident_memory_bytes "))
        .expect("resident memory sample")
        .parse()
        .unwrap();
    assert!(
        rss > 0 && rss.is_multiple_of(page),
        "{rss} with pages of {page}"
    );
}
