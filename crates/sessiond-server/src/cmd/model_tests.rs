//! Random command sequences from several connections, applied to the real
//! state the way the connection loop applies them, with time moving, waits
//! cancelled and connections closing in between. Whatever the input, nothing
//! panics and the lock table stays sound.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use proptest::prelude::*;
use sessiond_core::{LockTable, Store, StoreConfig};

use super::Command;
use super::lock::{self, LockStep, LockWait};
use crate::state::State;

// Small spaces of ids, keys and tokens, so that commands meet each other.
fn id() -> impl Strategy<Value = String> {
    proptest::sample::select(&["a", "b", "c"][..]).prop_map(str::to_owned)
}

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(&["k", "j"][..]).prop_map(str::to_owned)
}

fn num() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (0..6u64).prop_map(|n| n.to_string()),
        2 => Just("1000".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("18446744073709551615".to_owned()),
    ]
}

// How long a lock command waits; the model never times a wait out, so
// any non-zero wait lasts until a grant, a cancel or a close.
fn wait() -> impl Strategy<Value = String> {
    prop_oneof![Just("0".to_owned()), Just("1000".to_owned())]
}

// Tokens of the first epoch (1 << 32 | n), as the tables below issue them.
fn token() -> impl Strategy<Value = String> {
    (1..12u64).prop_map(|n| ((1u64 << 32) | n).to_string())
}

fn opt(flag: &'static str) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![Just(vec![]), Just(vec![flag.to_owned()])]
}

fn opt_with(
    flag: &'static str,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = Vec<String>> {
    proptest::option::of(value).prop_map(move |v| v.map_or(vec![], |v| vec![flag.to_owned(), v]))
}

fn op() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        (key(), num(), opt_with("IFVER", num())).prop_map(|(k, v, c)| [
            vec!["SET".to_owned(), k, v],
            c
        ]
        .concat()),
        (key(), opt_with("IFVER", num()))
            .prop_map(|(k, c)| [vec!["DEL".to_owned(), k], c].concat()),
    ]
}

fn cmd(name: &str, parts: Vec<Vec<String>>) -> Vec<String> {
    let mut v = vec![name.to_owned()];
    v.extend(parts.into_iter().flatten());
    v
}

/// A well-formed command most of the time.
fn well_formed() -> impl Strategy<Value = Vec<String>> {
    let one = |s: String| vec![s];
    prop_oneof![
        (id(), opt("CREATE"), proptest::collection::vec(key(), 0..3)).prop_map(
            move |(i, c, ks)| {
                let keys = if ks.is_empty() {
                    vec![]
                } else {
                    [vec!["KEYS".to_owned()], ks].concat()
                };
                cmd("SESSION.READ", vec![vec![i], c, keys])
            }
        ),
        (
            id(),
            opt("CREATE"),
            opt_with("TTL", num()),
            opt_with("FENCE", token()),
            opt("UNLOCK"),
            proptest::collection::vec(op(), 1..3)
        )
            .prop_map(move |(i, c, t, f, u, ops)| {
                cmd("SESSION.COMMIT", [vec![vec![i], c, t, f, u], ops].concat())
            }),
        (
            id(),
            key(),
            num(),
            opt("CREATE"),
            opt_with("FENCE", token())
        )
            .prop_map(move |(i, k, n, c, f)| cmd("SESSION.INCR", vec![vec![i, k, n], c, f])),
        (id(), key(), num(), num(), opt_with("FENCE", token()))
            .prop_map(move |(i, k, e, n, f)| cmd("SESSION.CAS", vec![vec![i, k, e, n], f])),
        (
            proptest::sample::select(
                &[
                    "SESSION.DESTROY",
                    "SESSION.EXISTS",
                    "SESSION.TTL",
                    "SESSION.TOUCH"
                ][..]
            ),
            id()
        )
            .prop_map(move |(n, i)| cmd(n, vec![one(i)])),
        (id(), opt_with("GRACE", num()), opt_with("TO", id()))
            .prop_map(|(i, g, t)| cmd("SESSION.REGENERATE", vec![vec![i], g, t])),
        (
            id(),
            opt_with("KEY", key()),
            wait().prop_map(|w| vec!["WAIT".to_owned(), w]),
            opt_with("LEASE", num()),
            opt_with("REQID", id()),
            opt("CREATE")
        )
            .prop_map(|(i, k, w, l, r, c)| cmd("LOCK.ACQUIRE", vec![vec![i], k, w, l, r, c])),
        (
            id(),
            key(),
            opt_with("IFVER", num()),
            opt_with("WAIT", wait())
        )
            .prop_map(|(i, k, v, w)| cmd("LOCK.ONCE", vec![vec![i, k], v, w])),
        (id(), opt_with("KEY", key()), token())
            .prop_map(|(i, k, t)| cmd("LOCK.RELEASE", vec![vec![i], k, vec![t]])),
        (id(), opt_with("KEY", key()), token(), num()).prop_map(|(i, k, t, n)| {
            cmd(
                "LOCK.RENEW",
                vec![vec![i], k, vec![t, "LEASE".to_owned(), n]],
            )
        }),
        (id(), opt_with("KEY", key())).prop_map(|(i, k)| cmd("LOCK.BREAK", vec![vec![i], k])),
        proptest::option::of(id()).prop_map(|i| cmd("LOCK.INFO", vec![i.into_iter().collect()])),
    ]
}

/// Mostly well-formed commands; some with one word replaced by noise.
fn arb_argv() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        6 => well_formed(),
        1 => (well_formed(), any::<prop::sample::Index>(), "[ -~]{0,6}").prop_map(|(mut v, i, w)| {
            let at = i.index(v.len());
            v[at] = w;
            v
        }),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Run(u64, Vec<String>),
    Tick(u64),
    Cancel(u64),
    Close(u64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (1..4u64, arb_argv()).prop_map(|(o, a)| Step::Run(o, a)),
        2 => (0..2_000u64).prop_map(Step::Tick),
        1 => (1..4u64).prop_map(Step::Cancel),
        1 => (1..4u64).prop_map(Step::Close),
    ]
}

fn fresh_state() -> State {
    State {
        store: Store::new(StoreConfig {
            default_ttl_ms: 5_000,
            regenerate_grace_ms: 1_000,
            ..StoreConfig::default()
        }),
        locks: LockTable::new(1, 3_000),
        waiters: HashMap::new(),
    }
}

/// Holders never conflict, every queued waiter can still be handed its lock,
/// and every token not seen before is higher than every token seen at an
/// earlier step (one step may grant several, in any order).
fn check_locks(state: &State, seen: &mut HashSet<u64>, max_seen: &mut u64) {
    let mut new_tokens = Vec::new();
    for (session, holders, queue) in state.locks.inspect(None) {
        for (i, a) in holders.iter().enumerate() {
            for b in &holders[i + 1..] {
                assert!(
                    !a.scope.conflicts(&b.scope),
                    "{session}: {a:?} and {b:?} held at once"
                );
            }
            if seen.insert(a.token) {
                new_tokens.push(a.token);
            }
        }
        for w in &queue {
            assert!(
                state.waiters.contains_key(&w.id),
                "{session}: waiter {} queued with nobody to hand the lock to",
                w.id
            );
        }
    }
    for &t in &new_tokens {
        assert!(t > *max_seen, "token {t} after {max_seen}");
    }
    *max_seen = new_tokens.into_iter().fold(*max_seen, u64::max);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_state_sound(
        steps in proptest::collection::vec(arb_step(), 1..60)
    ) {
        let mut state = fresh_state();
        let mut now = 1_000_000u64;
        let mut waits: HashMap<u64, LockWait> = HashMap::new();
        let mut seen = HashSet::new();
        let mut max_seen = 0;
        let no_clients = |_: u64| None;
        for step in steps {
            match step {
                Step::Run(owner, argv) => {
                    // A connection runs one command at a time: a waiting one
                    // first collects its grant, if any arrived.
                    if let Some(mut w) = waits.remove(&owner)
                        && w.rx.try_recv().is_err()
                    {
                        waits.insert(owner, w);
                        continue;
                    }
                    let argv = argv.into_iter().map(Bytes::from).collect();
                    match Command::parse(argv) {
                        Ok(Command::Session(c)) => {
                            let _ = c.apply(&mut state, now);
                        }
                        Ok(Command::Lock(c)) => {
                            if let Ok(LockStep::Wait(w)) =
                                c.apply(&mut state, now, owner, &no_clients)
                            {
                                waits.insert(owner, w);
                            }
                        }
                        Ok(Command::Conn(_)) | Err(_) => {}
                    }
                }
                Step::Tick(ms) => {
                    now += ms;
                    lock::expire_due(&mut state, now);
                    state.store.purge_expired(now, 1_000);
                }
                Step::Cancel(owner) => {
                    if let Some(mut w) = waits.remove(&owner) {
                        let _ = lock::cancel_wait(&mut state, now, &mut w);
                    }
                }
                Step::Close(owner) => {
                    waits.remove(&owner);
                    let h = state.locks.release_owner(now, owner);
                    lock::deliver(&mut state, now, h);
                }
            }
            // What the server does after every operation.
            let _ = state.store.take_mutations();
            let _ = state.locks.take_ended_holds();
            check_locks(&state, &mut seen, &mut max_seen);
        }
    }
}
