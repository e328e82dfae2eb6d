//! The Grafana dashboard (docs/grafana/sessiond.json) and the Prometheus
//! alerting rules (docs/prometheus/alerts.yml) query only metrics the real
//! binary exports.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::ServerProcess;

fn doc(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../docs/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("docs/{path}: {e}"))
}

/// The string values of every `"expr": "…"` in JSON text.
fn json_exprs(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in json.split("\"expr\": \"").skip(1) {
        let mut expr = String::new();
        let mut chars = part.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => expr.extend(chars.next()),
                '"' => break,
                c => expr.push(c),
            }
        }
        out.push(expr);
    }
    out
}

/// The `expr:` values of the rules file (one line each).
fn rule_exprs(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// The metric names of `sessiond_…` an expression reads.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("sessiond_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_panel_and_rule_queries_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    // A command, so the per-command families have samples.
    let mut c = sessiond_client::Client::connect(p.addr).await.unwrap();
    c.commit("s", &sessiond_client::Commit::new().create().set("k", "v"))
        .await
        .unwrap();
    let mut s = TcpStream::connect(p.metrics.unwrap()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut scrape = String::new();
    s.read_to_string(&mut scrape).unwrap();
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.is_empty()
                && !l.starts_with("HTTP/")
                && l.starts_with("sessiond_")
        })
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    assert!(exported.contains("sessiond_commands_total"), "{exported:?}");

    let dashboard = doc("grafana/sessiond.json");
    let status = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import json,sys; json.load(open(sys.argv[1]))"])
        .arg(format!(
            "{}/../../docs/grafana/sessiond.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .status()
        .expect("python3 runs");
    assert!(status.success(), "the dashboard is valid JSON");
    let panels = json_exprs(&dashboard);
    let rules = rule_exprs(&doc("prometheus/alerts.yml"));
    assert!(panels.len() >= 20, "{} panel queries", panels.len());
    assert!(rules.len() >= 5, "{} rules", rules.len());
    let mut missing = Vec::new();
    for expr in panels.iter().chain(&rules) {
        let used = metrics_in(expr);
        assert!(
            !used.is_empty() || expr.contains("up{"),
            "{expr:?} queries no sessiond metric"
        );
        missing.extend(
            used.into_iter()
                .filter(|m| !exported.contains(m))
                .map(|m| format!("{m} (in {expr})")),
        );
    }
    assert!(missing.is_empty(), "not exported: {missing:#?}");
}

#[test]
fn the_expression_scanner_finds_metric_names() {
    let exprs =
        json_exprs(r#"{"expr": "rate(sessiond_a_total{x=\"y\"}[5m]) / sessiond_b", "x": 1}"#);
    assert_eq!(exprs, ["rate(sessiond_a_total{x=\"y\"}[5m]) / sessiond_b"]);
    let names: Vec<String> = metrics_in(&exprs[0]).into_iter().collect();
    assert_eq!(names, ["sessiond_a_total", "sessiond_b"]);
}
