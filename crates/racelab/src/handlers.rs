//! The handlers the lab knows (their PHP side is
//! examples/php-demo/lib/handlers.php), and what sessiond promises for its
//! own rows.
//!
//! The promises are used by `--check` only, to fail CI when a measurement
//! contradicts them. Verdicts never look at them: a promised row is marked
//! wrong as soon as its counts are wrong.

use serde::Serialize;

use crate::scenario::Scenario;

/// Table order: the PHP baseline, the peers, then sessiond; then the same
/// scenarios inside Symfony and Laravel (their own session classes), each
/// with the framework's stock Redis handler and with sessiond.
pub const ALL: [&str; 17] = [
    "files",
    "redis",
    "redis-lock",
    "memcached",
    "memcached-lock",
    "sessiond-session",
    "sessiond-none",
    "sessiond-readonly",
    "sessiond-api",
    "symfony-redis",
    "symfony-sessiond-session",
    "symfony-sessiond-none",
    "symfony-sessiond-api",
    "laravel-redis",
    "laravel-sessiond-session",
    "laravel-sessiond-none",
    "laravel-sessiond-api",
];

/// The handlers that also run against a three-node cluster while its nodes
/// are killed (rows named `cluster-<handler>`).
pub const CLUSTER: [&str; 4] = [
    "sessiond-session",
    "sessiond-none",
    "sessiond-readonly",
    "sessiond-api",
];

pub fn is_sessiond(h: &str) -> bool {
    h.starts_with("sessiond") || h.contains("-sessiond-")
}

/// The handler without its framework prefix: `symfony-sessiond-none` makes
/// the same claims as `sessiond-none`.
fn base(h: &str) -> &str {
    h.strip_prefix("symfony-")
        .or_else(|| h.strip_prefix("laravel-"))
        .unwrap_or(h)
}

/// What sessiond promises for a (handler, scenario) cell.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Claim {
    /// Nothing lost, duplicated or misread, no errors.
    pub correct: bool,
    /// The fast requests are not held up by the slow one.
    pub unblocked: bool,
}

pub fn claim(handler: &str, scenario: Scenario) -> Claim {
    // A cluster row (`cluster-sessiond-api`) makes its single node's
    // correctness claims. Not the timing one: a leader killed while the slow
    // request runs holds every request up for the election, lock or not.
    if let Some(single) = handler.strip_prefix("cluster-") {
        return Claim {
            unblocked: false,
            ..claim(single, scenario)
        };
    }
    use Scenario::*;
    // Scenarios with a slow request whose fast neighbours only write their
    // own keys or only read: no lock needed, so none mode must not wait.
    let independent = matches!(scenario, Parallel | Search | Readonly);
    match base(handler) {
        // The whole-session lock: the files handler's guarantees, any scenario.
        "sessiond-session" => Claim {
            correct: true,
            unblocked: false,
        },
        // Writers lock the session; readers never wait.
        "sessiond-readonly" => Claim {
            correct: true,
            unblocked: scenario == Readonly,
        },
        // No lock, per-key deltas: right when requests touch different keys;
        // read-modify-write of one key (counter, payment, OAuth) is reported
        // as a conflict, not made correct (that is what the API is for).
        "sessiond-none" => Claim {
            correct: independent,
            unblocked: independent,
        },
        // none mode plus increment/synchronized/once where it matters.
        "sessiond-api" => Claim {
            correct: true,
            unblocked: independent,
        },
        _ => Claim::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_rows_make_the_plain_rows_claims() {
        for sc in Scenario::ALL {
            for h in ["sessiond-session", "sessiond-none", "sessiond-api"] {
                for fw in ["symfony", "laravel"] {
                    let f = format!("{fw}-{h}");
                    assert!(is_sessiond(&f));
                    let (a, b) = (claim(h, sc), claim(&f, sc));
                    assert_eq!(
                        (a.correct, a.unblocked),
                        (b.correct, b.unblocked),
                        "{f} {sc:?}"
                    );
                }
            }
        }
        for h in CLUSTER {
            let c = format!("cluster-{h}");
            assert!(is_sessiond(&c));
            for sc in Scenario::ALL {
                let (a, b) = (claim(h, sc), claim(&c, sc));
                assert_eq!(a.correct, b.correct, "{c}");
                assert!(!b.unblocked, "{c}");
            }
        }
        assert!(!is_sessiond("symfony-redis"));
        assert!(!is_sessiond("laravel-redis"));
        assert!(!claim("laravel-redis", Scenario::Counter).correct);
    }
}
