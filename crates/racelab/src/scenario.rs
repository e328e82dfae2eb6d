//! The seeds' scenarios: how many requests, when, doing what (the plan),
//! and how to tell from what was measured whether the session kept what
//! those requests imply (the evaluation).
//!
//! The evaluation only looks at the requests' replies, the session as it
//! ended (`?ep=inspect`) and the app's ledger of side effects. It never looks
//! at which handler ran: a verdict is a property of the measurement.

use serde::Serialize;
use serde_json::Value;

use crate::record::RunResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Counter,
    Parallel,
    Search,
    Payment,
    Oauth,
    Readonly,
}

pub use crate::record::Role;

#[derive(Clone, Debug)]
pub struct Req {
    pub ep: &'static str,
    pub role: Role,
    pub params: Vec<(&'static str, String)>,
}

/// Requests sent one after the other (like one browser loop), starting at
/// `start_ms` after the scenario's start, `gap_ms` apart.
#[derive(Clone, Debug)]
pub struct Lane {
    pub start_ms: u64,
    pub gap_ms: u64,
    pub reqs: Vec<Req>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub lanes: Vec<Lane>,
}

/// Counts of one run (or summed over iterations).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub requests: u64,
    /// Requests that failed: HTTP error, session_start() or write failure, exception.
    pub errors: u64,
    /// Updates the requests made (and reported as done) that the session lost.
    pub lost_updates: u64,
    pub keys_expected: u64,
    pub keys_kept: u64,
    /// Side effects that happened more often than the requests imply
    /// (money sent twice, a refresh token spent again).
    pub duplicates: u64,
    /// Users logged out because a refresh token was refused.
    pub relogins: u64,
    /// Calls to the fake identity provider (OAuth) or the bank (payment).
    pub side_effects: u64,
    /// Readers that saw something the session never held.
    pub wrong_reads: u64,
    /// Conflicts the handler reported (sessiond's none mode says so).
    pub conflicts: u64,
}

impl Metrics {
    pub fn add(&mut self, o: &Metrics) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.lost_updates += o.lost_updates;
        self.keys_expected += o.keys_expected;
        self.keys_kept += o.keys_kept;
        self.duplicates += o.duplicates;
        self.relogins += o.relogins;
        self.side_effects += o.side_effects;
        self.wrong_reads += o.wrong_reads;
        self.conflicts += o.conflicts;
    }

    /// Data correct: nothing lost, duplicated or misread, nobody logged out.
    pub fn data_correct(&self) -> bool {
        self.lost_updates == 0
            && self.duplicates == 0
            && self.relogins == 0
            && self.wrong_reads == 0
    }
}

/// Deterministic xorshift64*: the same `--seed` gives the same plans.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn p(k: &'static str, v: impl ToString) -> (&'static str, String) {
    (k, v.to_string())
}

fn lane(start_ms: u64, gap_ms: u64, reqs: Vec<Req>) -> Lane {
    Lane {
        start_ms,
        gap_ms,
        reqs,
    }
}

fn req(ep: &'static str, role: Role, params: Vec<(&'static str, String)>) -> Req {
    Req { ep, role, params }
}

// Timings, in ms. Short enough that the whole lab runs in minutes, long
// enough that the races and the waits stand out of scheduling noise.
const COUNTER_LOOPS: usize = 2; // producer loops, and as many consumer loops
const COUNTER_STEPS: usize = 5; // requests per loop
const PARALLEL_SLOW_MS: u64 = 600;
const PARALLEL_FAST_MS: u64 = 30;
const SEARCH_MS: u64 = 800;
const POSITIONS: usize = 5;
const PAYMENTS: usize = 8;
const BANK_MS: u64 = 100;
const OAUTH_REQUESTS: usize = 6;
const PROVIDER_MS: u64 = 150;
const WRITER_MS: u64 = 600;
const READERS: usize = 5;

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Counter,
        Scenario::Parallel,
        Scenario::Search,
        Scenario::Payment,
        Scenario::Oauth,
        Scenario::Readonly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Counter => "counter",
            Scenario::Parallel => "parallel",
            Scenario::Search => "search",
            Scenario::Payment => "payment",
            Scenario::Oauth => "oauth",
            Scenario::Readonly => "readonly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// One line for the report: what runs and what "correct" means.
    pub fn describe(self) -> String {
        match self {
            Scenario::Counter => format!(
                "seed 003: {COUNTER_LOOPS} producer and {COUNTER_LOOPS} consumer loops of {COUNTER_STEPS} requests read count, work 20-60 ms, write count±1; correct: every increment and decrement kept"
            ),
            Scenario::Parallel => format!(
                "seeds 001/002: 10 concurrent requests of one session, one slow ({PARALLEL_SLOW_MS} ms) then nine fast ({PARALLEL_FAST_MS} ms), each writes its own key; correct: 10 keys kept"
            ),
            Scenario::Search => format!(
                "seed 003: a {SEARCH_MS} ms search stores its result while {POSITIONS} popup drags store positions; correct: result and last positions kept"
            ),
            Scenario::Payment => format!(
                "seed 001: {PAYMENTS} concurrent `if not paid: mark paid; send money ({BANK_MS} ms)`; correct: money sent once"
            ),
            Scenario::Oauth => format!(
                "seed 000: {OAUTH_REQUESTS} concurrent requests find the access token expired; refresh tokens work once ({PROVIDER_MS} ms); correct: one provider call, no re-login"
            ),
            Scenario::Readonly => format!(
                "seed 002: {READERS} readers (read_and_close) while a {WRITER_MS} ms writer holds the session; correct: readers see the user, the write is kept"
            ),
        }
    }

    pub fn plan(self, rng: &mut Rng) -> Plan {
        match self {
            Scenario::Counter => {
                let mut lanes = Vec::new();
                for op in ["incr", "decr"] {
                    for _ in 0..COUNTER_LOOPS {
                        let reqs = (0..COUNTER_STEPS)
                            .map(|_| {
                                req(
                                    "counter",
                                    Role::Normal,
                                    vec![p("op", op), p("ms", 20 + rng.below(41))],
                                )
                            })
                            .collect();
                        lanes.push(lane(rng.below(10), 0, reqs));
                    }
                }
                Plan { lanes }
            }
            Scenario::Parallel => {
                // The slow request goes first, as in seed 002: the user
                // waits for it before seeing any of the fast results.
                let mut lanes = vec![lane(
                    0,
                    0,
                    vec![req(
                        "parallel",
                        Role::Slow,
                        vec![p("i", 0), p("ms", PARALLEL_SLOW_MS)],
                    )],
                )];
                for i in 1..10 {
                    lanes.push(lane(
                        20 + rng.below(5),
                        0,
                        vec![req(
                            "parallel",
                            Role::Fast,
                            vec![p("i", i), p("ms", PARALLEL_FAST_MS)],
                        )],
                    ));
                }
                Plan { lanes }
            }
            Scenario::Search => {
                let search = lane(
                    0,
                    0,
                    vec![req("search", Role::Slow, vec![p("ms", SEARCH_MS)])],
                );
                let drags = (0..POSITIONS)
                    .map(|n| {
                        req(
                            "position",
                            Role::Fast,
                            vec![
                                p("popup", format!("p{}", n % 3)),
                                p("xy", format!("{},{}", 10 * n, 7 * n)),
                                p("ms", 5),
                            ],
                        )
                    })
                    .collect();
                Plan {
                    lanes: vec![search, lane(100, 80, drags)],
                }
            }
            Scenario::Payment => Plan {
                lanes: (0..PAYMENTS)
                    .map(|_| {
                        lane(
                            rng.below(6),
                            0,
                            vec![req("pay", Role::Normal, vec![p("ms", BANK_MS)])],
                        )
                    })
                    .collect(),
            },
            Scenario::Oauth => Plan {
                lanes: (0..OAUTH_REQUESTS)
                    .map(|_| {
                        lane(
                            rng.below(11),
                            0,
                            vec![req("oauth", Role::Normal, vec![p("ms", PROVIDER_MS)])],
                        )
                    })
                    .collect(),
            },
            Scenario::Readonly => {
                let value = format!("updated-{}", rng.below(1_000_000));
                let mut lanes = vec![lane(
                    0,
                    0,
                    vec![req(
                        "write",
                        Role::Slow,
                        vec![p("ms", WRITER_MS), p("value", value)],
                    )],
                )];
                for k in 0..READERS as u64 {
                    lanes.push(lane(50 + k * 100, 0, vec![req("read", Role::Fast, vec![])]));
                }
                Plan { lanes }
            }
        }
    }

    /// Compares what the run's successful requests imply with what the
    /// session and the ledger hold at the end.
    pub fn evaluate(self, run: &RunResult) -> Metrics {
        let rs = &run.results;
        let mut m = Metrics {
            requests: rs.len() as u64,
            errors: rs.iter().filter(|r| !r.ok()).count() as u64,
            conflicts: rs
                .iter()
                .filter_map(|r| r.reply.as_ref())
                .map(|r| r.conflicts)
                .sum(),
            ..Metrics::default()
        };
        let ins = &run.inspect;
        let session = &ins["session"];
        let ok = |ep: &'static str| rs.iter().filter(move |r| r.ok() && r.ep == ep);
        match self {
            Scenario::Counter => {
                // Each request adds 1 to count and to its own tally
                // (produced/consumed). The tallies only grow, so a lost
                // increment cannot hide behind a lost decrement.
                let incr = ok("counter")
                    .filter(|r| r.param("op") == Some("incr"))
                    .count() as i64;
                let decr = ok("counter")
                    .filter(|r| r.param("op") == Some("decr"))
                    .count() as i64;
                // A request that failed with its outcome unknown (a cluster
                // whose leader died under it) may or may not have counted.
                let unknown = |op: &str| {
                    rs.iter()
                        .filter(|r| r.ep == "counter" && r.param("op") == Some(op))
                        .filter(|r| r.failed_in_failover())
                        .count() as i64
                };
                let (unk_incr, unk_decr) = (unknown("incr"), unknown("decr"));
                // How far `v` lies outside `lo..=hi`.
                let outside = |v: i64, lo: i64, hi: i64| (lo - v).max(v - hi).max(0);
                let produced = int(&session["produced"]);
                let consumed = int(&session["consumed"]);
                let count = int(&session["count"]);
                let tally_lost = outside(produced, incr, incr + unk_incr)
                    + outside(consumed, decr, decr + unk_decr);
                let drift = outside(count, incr - decr - unk_decr, incr + unk_incr - decr);
                m.lost_updates = tally_lost.max(drift) as u64;
                m.keys_expected = (incr + decr) as u64;
                m.keys_kept = m.keys_expected.saturating_sub(m.lost_updates);
            }
            Scenario::Parallel => {
                for r in ok("parallel") {
                    m.keys_expected += 1;
                    let key = format!("k{}", r.param("i").unwrap_or_default());
                    if session.get(&key).is_some_and(|v| !v.is_null()) {
                        m.keys_kept += 1;
                    }
                }
                m.lost_updates = m.keys_expected - m.keys_kept;
            }
            Scenario::Search => {
                if ok("search").next().is_some() {
                    m.keys_expected += 1;
                    if session["searchresult"].is_array() {
                        m.keys_kept += 1;
                    }
                }
                // Drags run one after the other: the last one per popup wins.
                let mut last: Vec<(String, String)> = Vec::new();
                for r in ok("position") {
                    let (pop, xy) = (
                        r.param("popup").unwrap_or_default(),
                        r.param("xy").unwrap_or_default(),
                    );
                    last.retain(|(p, _)| p != pop);
                    last.push((pop.to_string(), xy.to_string()));
                }
                for (pop, xy) in &last {
                    m.keys_expected += 1;
                    if session["popup-position"][pop].as_str() == Some(xy) {
                        m.keys_kept += 1;
                    }
                }
                m.lost_updates = m.keys_expected - m.keys_kept;
            }
            Scenario::Payment => {
                let sends = int(&ins["ledger"]["send"]).max(0) as u64;
                m.side_effects = sends;
                m.duplicates = sends.saturating_sub(1);
                if ok("pay").next().is_some() {
                    m.keys_expected = 1;
                    let paid = session["paid"].as_bool() == Some(true);
                    // Paid with no money sent, or sent and not marked paid: lost.
                    if paid && sends > 0 {
                        m.keys_kept = 1;
                    } else {
                        m.lost_updates = 1;
                    }
                }
            }
            Scenario::Oauth => {
                let calls = int(&ins["idp"]["calls"]).max(0) as u64;
                m.side_effects = calls;
                m.duplicates = calls.saturating_sub(1);
                let logged_out = int(&ins["ledger"]["relogin"]).max(0) as u64;
                // A session left holding a refresh token the provider no
                // longer accepts logs the user out at the next refresh.
                let stale =
                    session["oauth"].is_object() && ins["refresh_valid"].as_bool() != Some(true);
                m.relogins = logged_out + u64::from(stale);
                m.keys_expected = 1;
                m.keys_kept = u64::from(session["oauth"].is_object() && !stale);
                m.lost_updates = m.keys_expected - m.keys_kept;
            }
            Scenario::Readonly => {
                for r in ok("read") {
                    let user = r.reply.as_ref().map(|x| &x.result["user"]);
                    if user.and_then(Value::as_str) != Some("alice") {
                        m.wrong_reads += 1;
                    }
                }
                if let Some(w) = ok("write").next() {
                    m.keys_expected = 1;
                    if session["profile"].as_str() == w.param("value") {
                        m.keys_kept = 1;
                    }
                    m.lost_updates = 1 - m.keys_kept;
                }
            }
        }
        m
    }
}

/// An integer from the session (PHP may hand back ints or numeric strings).
fn int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Reply, ReqResult};
    use serde_json::json;

    fn done(ep: &'static str, params: Vec<(&'static str, String)>, result: Value) -> ReqResult {
        ReqResult {
            lane: 0,
            ep,
            role: Role::Normal,
            params,
            start_ms: 0.0,
            end_ms: 1.0,
            status: Some(200),
            reply: Some(Reply {
                ok: true,
                dur_ms: 1.0,
                waits: vec![],
                errors: vec![],
                notes: vec![],
                conflicts: 0,
                result,
            }),
            error: None,
        }
    }

    #[test]
    fn counter_counts_lost_increments_even_when_they_cancel_out() {
        let r = |op: &str| done("counter", vec![p("op", op)], json!({}));
        let run = RunResult {
            results: vec![r("incr"), r("incr"), r("decr")],
            // one increment and the decrement lost: count looks right (1)
            inspect: json!({"session": {"count": 1, "produced": 1, "consumed": 0}}),
            wall_ms: 1.0,
            sid: String::new(),
        };
        let m = Scenario::Counter.evaluate(&run);
        assert_eq!(m.lost_updates, 2);
        assert!(!m.data_correct());
    }

    #[test]
    fn a_counter_request_of_unknown_outcome_may_have_counted_or_not() {
        let r = |op: &str| done("counter", vec![p("op", op)], json!({}));
        let unknown = |op: &str| {
            let mut x = r(op);
            x.status = Some(500);
            if let Some(reply) = x.reply.as_mut() {
                reply.ok = false;
                reply.errors = vec!["UNKNOWN the leader failed during the request".into()];
            }
            x
        };
        for (produced, count, lost) in [(1, 1, 0), (2, 2, 0), (3, 3, 1), (0, 0, 1)] {
            let run = RunResult {
                results: vec![r("incr"), unknown("incr")],
                inspect: json!({"session": {"count": count, "produced": produced, "consumed": 0}}),
                wall_ms: 1.0,
                sid: String::new(),
            };
            let m = Scenario::Counter.evaluate(&run);
            assert_eq!(m.lost_updates, lost, "produced {produced}");
        }
        // A plain failure is not of unknown outcome: it counted nothing.
        let mut failed = r("incr");
        failed.status = Some(500);
        let run = RunResult {
            results: vec![r("incr"), failed],
            inspect: json!({"session": {"count": 2, "produced": 2, "consumed": 0}}),
            wall_ms: 1.0,
            sid: String::new(),
        };
        assert_eq!(Scenario::Counter.evaluate(&run).lost_updates, 1);
    }

    #[test]
    fn payment_and_oauth_count_side_effects() {
        let run = RunResult {
            results: vec![
                done("pay", vec![], json!({})),
                done("pay", vec![], json!({})),
            ],
            inspect: json!({"session": {"paid": true}, "ledger": {"send": 2, "relogin": 0}}),
            wall_ms: 1.0,
            sid: String::new(),
        };
        let m = Scenario::Payment.evaluate(&run);
        assert_eq!((m.duplicates, m.lost_updates), (1, 0));

        let run = RunResult {
            results: vec![done("oauth", vec![], json!({}))],
            inspect: json!({"session": {"oauth": {"refresh": "x"}}, "ledger": {"send": 0, "relogin": 0},
                            "idp": {"calls": 1}, "refresh_valid": true}),
            wall_ms: 1.0,
            sid: String::new(),
        };
        assert!(Scenario::Oauth.evaluate(&run).data_correct());
    }
}
