//! Aggregation of runs into table cells, the verdicts, the terminal and
//! Markdown tables, the JSON report, and the `--check` of sessiond's claims.

use std::fmt::Write as _;

use serde::Serialize;

use crate::handlers::{self, Claim};
use crate::run::RunResult;
use crate::scenario::{Metrics, Role, Scenario};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Every count matches what the requests imply, no request failed.
    #[serde(rename = "correct")]
    Correct,
    /// Something was lost, duplicated or misread.
    #[serde(rename = "wrong")]
    Wrong,
    /// The data is right but requests failed (a lock given up, a timeout).
    #[serde(rename = "errors")]
    Errors,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Correct => "ok",
            Verdict::Wrong => "WRONG",
            Verdict::Errors => "ERRORS",
        }
    }
}

/// One handler × scenario: every iteration summed.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub handler: String,
    pub scenario: Scenario,
    pub iterations: u32,
    /// Runs that could not be set up or inspected.
    pub runs_failed: u32,
    pub metrics: Metrics,
    pub verdict: Verdict,
    pub wall_ms_mean: f64,
    pub fast_ms: Percentiles,
    pub wait_ms: Percentiles,
    /// Fast requests sent in the first half of the slow request's run, and
    /// how many of them waited for the session for at least half of what it
    /// still had to run (scenarios with a slow request).
    pub held_up: Option<HeldUp>,
    /// Failed requests whose failure says a failover was under way: the
    /// outcome is unknown (`UNKNOWN`) or no leader was reachable
    /// (`TRYAGAIN`). A cluster row may have a few (see [`claim_failures`]).
    pub failed_cleanly: u64,
    pub claim: Claim,
    /// A few distinct error messages and handler warnings, for the reader.
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    /// The first iteration, request by request (the timeline's data).
    pub first_run: Option<RunResult>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HeldUp {
    pub held: u64,
    pub overlapping: u64,
}

impl HeldUp {
    /// Most of them waited. A lock holds up all of them; without one, a
    /// stall of the machine may hold up one, which must not count as "blocked".
    pub fn blocked(self) -> bool {
        self.held * 2 >= self.overlapping
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank: p99 of ten samples is the slowest one.
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: Some(at(0.50)),
        p99: Some(at(0.99)),
    }
}

fn push_distinct(list: &mut Vec<String>, msg: &str) {
    const KEEP: usize = 4;
    let msg: String = msg.chars().take(240).collect();
    if list.len() < KEEP && !list.contains(&msg) {
        list.push(msg);
    }
}

/// Accumulates one cell's runs.
pub struct CellBuilder {
    cell: Cell,
    fast: Vec<f64>,
    waits: Vec<f64>,
    walls: Vec<f64>,
}

impl CellBuilder {
    pub fn new(handler: &str, scenario: Scenario) -> Self {
        Self {
            cell: Cell {
                handler: handler.to_string(),
                scenario,
                iterations: 0,
                runs_failed: 0,
                metrics: Metrics::default(),
                verdict: Verdict::Correct,
                wall_ms_mean: 0.0,
                fast_ms: Percentiles::default(),
                wait_ms: Percentiles::default(),
                held_up: None,
                failed_cleanly: 0,
                claim: handlers::claim(handler, scenario),
                errors: Vec::new(),
                notes: Vec::new(),
                first_run: None,
            },
            fast: Vec::new(),
            waits: Vec::new(),
            walls: Vec::new(),
        }
    }

    pub fn add(&mut self, run: anyhow::Result<RunResult>) {
        self.cell.iterations += 1;
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                self.cell.runs_failed += 1;
                self.cell.metrics.errors += 1;
                push_distinct(&mut self.cell.errors, &format!("run failed: {e:#}"));
                return;
            }
        };
        self.cell.metrics.add(&self.cell.scenario.evaluate(&run));
        let any_fast = run.results.iter().any(|r| r.role == Role::Fast);
        for r in &run.results {
            if r.role == Role::Fast || (!any_fast && r.role == Role::Normal) {
                self.fast.push(r.duration_ms());
            }
            if let Some(w) = r.wait_ms() {
                self.waits.push(w);
            }
            if let Some(e) = r.error_text() {
                if r.failed_in_failover() {
                    self.cell.failed_cleanly += 1;
                }
                push_distinct(&mut self.cell.errors, &e);
            }
            for n in r.reply.iter().flat_map(|x| &x.notes) {
                push_distinct(&mut self.cell.notes, n);
            }
        }
        if let Some(slow) = run.results.iter().find(|r| r.role == Role::Slow) {
            let h = self.cell.held_up.get_or_insert_with(HeldUp::default);
            // Fast requests sent in the first half of the slow request's run
            // (so it still had a while to go) are held up if they waited for
            // the session at least half of what it still had to run. Without
            // a lock they wait a few ms; with one, all of it. PHP's own
            // measure of the wait, not the request's duration: on a loaded
            // machine a request can also queue in nginx or in this driver,
            // which is not the session's doing.
            let mid = (slow.start_ms + slow.end_ms) / 2.0;
            for r in run
                .results
                .iter()
                .filter(|r| r.role == Role::Fast && r.start_ms < mid)
            {
                h.overlapping += 1;
                let waited = r.wait_ms().unwrap_or_else(|| r.duration_ms());
                h.held += u64::from(waited >= (slow.end_ms - r.start_ms) / 2.0);
            }
        }
        self.walls.push(run.wall_ms);
        if self.cell.first_run.is_none() {
            self.cell.first_run = Some(run);
        }
    }

    pub fn finish(mut self) -> Cell {
        let c = &mut self.cell;
        c.fast_ms = percentiles(self.fast.clone());
        c.wait_ms = percentiles(self.waits);
        if !self.walls.is_empty() {
            c.wall_ms_mean = self.walls.iter().sum::<f64>() / self.walls.len() as f64;
        }
        c.verdict = if !c.metrics.data_correct() {
            Verdict::Wrong
        } else if c.metrics.errors > 0 || c.runs_failed > 0 || c.iterations == c.runs_failed {
            Verdict::Errors
        } else {
            Verdict::Correct
        };
        self.cell
    }
}

/// Where a sessiond cell contradicts sessiond's claims (`--check`).
///
/// A cluster row (`cluster-…`) runs while nodes are killed: a request in
/// flight when its leader dies may fail, cleanly (issue 13: it completes
/// correctly or fails with `UNKNOWN`/`TRYAGAIN`, never proceeds without its
/// lock or loses a write silently). Such failures are allowed there, up to
/// half of the cell's requests (a leader killed while four lanes run fails
/// up to four of the counter's twenty; two kills may land in one cell);
/// every other failure, and any wrong data, fails the check as on a single
/// node.
pub fn claim_failures(cells: &[Cell]) -> Vec<String> {
    let mut out = Vec::new();
    for c in cells.iter().filter(|c| handlers::is_sessiond(&c.handler)) {
        let at = format!("{} / {}", c.handler, c.scenario.name());
        let cluster = c.handler.starts_with("cluster-");
        let clean = if cluster { c.failed_cleanly } else { 0 };
        if c.metrics.errors > clean || c.runs_failed > 0 {
            out.push(format!(
                "{at}: {} failed request(s): {}",
                c.metrics.errors,
                c.errors.join(" | ")
            ));
        } else if clean * 2 > c.metrics.requests.max(1) {
            out.push(format!(
                "{at}: {clean} of {} requests failed during failovers (more than half)",
                c.metrics.requests
            ));
        }
        if c.claim.correct && c.verdict == Verdict::Wrong {
            let m = &c.metrics;
            out.push(format!(
                "{at}: claimed correct, measured lost={} duplicates={} relogins={} wrong_reads={}",
                m.lost_updates, m.duplicates, m.relogins, m.wrong_reads
            ));
        }
        // No fast request sent while the slow one ran (a stalled driver
        // sends them late) proves nothing either way: only a measured
        // majority of held-up requests contradicts the claim.
        match c.held_up {
            Some(h) if c.claim.unblocked && h.overlapping > 0 && h.blocked() => out.push(format!(
                "{at}: claimed not to wait for the slow request, measured {} of {} fast requests held up by it",
                h.held, h.overlapping
            )),
            _ => {}
        }
    }
    out
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

const HEADER: [&str; 12] = [
    "handler",
    "verdict",
    "lost",
    "kept",
    "dup",
    "relogin",
    "errors",
    "conflicts",
    "wall ms",
    "fast p50/p99 ms",
    "wait p50/p99 ms",
    "held up",
];

fn row(c: &Cell) -> [String; 12] {
    let m = &c.metrics;
    [
        c.handler.clone(),
        c.verdict.label().to_string(),
        m.lost_updates.to_string(),
        format!("{}/{}", m.keys_kept, m.keys_expected),
        m.duplicates.to_string(),
        m.relogins.to_string(),
        m.errors.to_string(),
        m.conflicts.to_string(),
        format!("{:.0}", c.wall_ms_mean),
        format!("{}/{}", fmt_ms(c.fast_ms.p50), fmt_ms(c.fast_ms.p99)),
        format!("{}/{}", fmt_ms(c.wait_ms.p50), fmt_ms(c.wait_ms.p99)),
        c.held_up
            .map_or("-".into(), |h| format!("{}/{}", h.held, h.overlapping)),
    ]
}

/// The terminal table: one block per scenario, one row per handler.
pub fn terminal_table(cells: &[Cell], scenarios: &[Scenario]) -> String {
    let rows: Vec<[String; 12]> = cells.iter().map(row).collect();
    let mut width = HEADER.map(str::len);
    for r in &rows {
        for (w, s) in width.iter_mut().zip(r) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("  ");
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if i < 2 {
                let _ = write!(s, "{c:<w$}  ");
            } else {
                let _ = write!(s, "{c:>w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = String::new();
    for sc in scenarios {
        let _ = writeln!(out, "\n{} — {}", sc.name(), sc.describe());
        out.push_str(&line(&HEADER.map(String::from)));
        for (c, r) in cells.iter().zip(&rows) {
            if c.scenario == *sc {
                out.push_str(&line(r));
            }
        }
    }
    out
}

/// The same table in Markdown, for docs/racelab.md.
pub fn markdown_table(cells: &[Cell], scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    for sc in scenarios {
        let _ = writeln!(out, "\n**{}** — {}\n", sc.name(), sc.describe());
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
        for c in cells.iter().filter(|c| c.scenario == *sc) {
            let mut r = row(c);
            if c.verdict != Verdict::Correct {
                r[1] = format!("**{}**", r[1]);
            }
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_row_may_fail_a_few_requests_cleanly_and_nothing_else() {
        let cell = |handler: &str, errors: u64, clean: u64| {
            let mut c = CellBuilder::new(handler, Scenario::Counter).finish();
            c.metrics.requests = 20;
            c.metrics.errors = errors;
            c.failed_cleanly = clean;
            c
        };
        // One UNKNOWN during a failover: allowed on a cluster row only.
        assert!(claim_failures(&[cell("cluster-sessiond-api", 1, 1)]).is_empty());
        assert_eq!(claim_failures(&[cell("sessiond-api", 1, 1)]).len(), 1);
        // Any other failure, or too many, fails.
        assert_eq!(
            claim_failures(&[cell("cluster-sessiond-api", 2, 1)]).len(),
            1
        );
        assert!(claim_failures(&[cell("cluster-sessiond-api", 10, 10)]).is_empty());
        assert_eq!(
            claim_failures(&[cell("cluster-sessiond-api", 11, 11)]).len(),
            1
        );
        assert!(crate::record::is_failover_error(
            "Sessiond\\Exception\\ServerException: UNKNOWN the leader failed"
        ));
        assert!(!crate::record::is_failover_error("session_start() failed"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=10).map(f64::from).collect());
        assert_eq!((p.p50, p.p99), (Some(5.0), Some(10.0)));
        assert!(percentiles(vec![]).p50.is_none());
    }

    #[test]
    fn one_stalled_request_is_not_blocking() {
        assert!(
            HeldUp {
                held: 9,
                overlapping: 9
            }
            .blocked()
        );
        assert!(
            !HeldUp {
                held: 1,
                overlapping: 9
            }
            .blocked()
        );
    }
}
