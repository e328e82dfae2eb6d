//! The engine against a reference model.
//!
//! `tests/model/` holds a small model of sessiond written for clarity, from
//! docs/protocol.md and docs/design.md: plain maps, lists and queues, expiry
//! by looking at every deadline, deadlock by a plain search of the wait-for
//! graph. It never calls `Store`, `LockTable` or `Engine`; it shares only
//! plain data types with them.
//!
//! Both are given the same generated logs (`workload::generate`: commands
//! from many connections, time moving, waits cancelled, connections
//! closing, ticks, regenerate chains), shaped by the harness: the clock is
//! also steered onto the millisecond before, at and after deadlines the
//! model knows (session expiry, alias ends, leases, maximum holds); some
//! regenerates move the session the previous one moved (chains); some reads
//! and lock requests go through ids regenerates left behind; some lock
//! requests retry an earlier one with the same REQID. After every input the test
//! compares everything the input answered: the step (`Done` with the exact
//! `Response` or `EngineError`, or `Wait` with the waiter id), every
//! delivery (which waiter, which connection, which token, which reply,
//! whether it wrote), the hold times of the locks that ended, the next
//! deadline; and the whole visible state (sessions with their metadata and
//! fields, aliases, holders, queues).

mod model {
    pub mod engine;
    pub mod locks;
    pub mod sessions;
}

use std::collections::BTreeMap;

use proptest::prelude::*;
use sessiond_core::engine::{AcquireArgs, Command, ConnId, Delivery, Fence, Response, Step};
use sessiond_core::locks::WaiterId;
use sessiond_core::workload::{
    BOGUS_TOKEN, Input, LogStep, Rng, Shape, Template, TokenRef, generate,
};
use sessiond_core::{Engine, LockTable, Millis, Store, StoreConfig};

use model::engine::{Model, Out};
use model::sessions::{Config, Durable};

const DEFAULT_TTL_MS: u64 = 2_000;
const GRACE_MS: u64 = 500;
const MAX_KEYS: usize = 3;
/// Generated values are `v0` to `v999`: with a limit of 3 bytes most
/// writes are refused (the limit path), with 4 all fit (the data paths).
/// Each seed picks one.
fn max_value_bytes(seed: u64) -> usize {
    if seed.is_multiple_of(4) { 3 } else { 4 }
}
const EPOCH: u64 = 1;
const MAX_HOLD_MS: u64 = 3_000;
const PURGE_PER_TICK: usize = 3;

fn engine(max_value_bytes: usize) -> Engine {
    let mut config = StoreConfig {
        default_ttl_ms: DEFAULT_TTL_MS,
        regenerate_grace_ms: GRACE_MS,
        ..StoreConfig::default()
    };
    config.limits.max_keys_per_session = MAX_KEYS;
    config.limits.max_value_bytes = max_value_bytes;
    Engine::new(Store::new(config), LockTable::new(EPOCH, MAX_HOLD_MS))
}

fn model(max_value_bytes: usize) -> Model {
    Model::new(
        Config {
            default_ttl_ms: DEFAULT_TTL_MS,
            grace_ms: GRACE_MS,
            max_value_bytes,
            max_keys: MAX_KEYS,
        },
        EPOCH,
        MAX_HOLD_MS,
    )
}

/// The order of a session's holders in `LOCK.INFO` is not a promise (the
/// engine's changes as locks come and go); compare them by token.
fn normalize(
    mut r: Result<Response, sessiond_core::EngineError>,
) -> Result<Response, sessiond_core::EngineError> {
    if let Ok(Response::LockInfo { sessions, .. }) = &mut r {
        for s in sessions {
            s.holders.sort_by_key(|g| g.token);
        }
    }
    r
}

fn normalize_step(s: Step) -> Step {
    match s {
        Step::Done(r) => Step::Done(normalize(r)),
        w @ Step::Wait(_) => w,
    }
}

fn normalize_deliveries(ds: Vec<Delivery>) -> Vec<Delivery> {
    ds.into_iter()
        .map(|d| Delivery {
            reply: normalize(d.reply),
            ..d
        })
        .collect()
}

/// Counts of what the runs reached, to show the comparison is not vacuous.
#[derive(Debug, Default)]
struct Reached {
    compared: u64,
    on_deadline: u64,
    deliveries: u64,
    waits: u64,
    /// Lookups that went through two aliases or more (regenerate chains).
    alias_chains: u64,
    /// Lookups that found a session past its deadline, not purged yet.
    expired_lookups: u64,
    /// Grants or waits taken over by a retry with the same REQID.
    reqid_takeovers: u64,
    /// Writes repeated with a REQID and answered from the engine's memory.
    replayed_answers: usize,
    by_variant: BTreeMap<String, u64>,
}

impl Reached {
    fn note(&mut self, what: String) {
        *self.by_variant.entry(what).or_default() += 1;
    }
}

/// Applies each input to the engine and the model, the way the server
/// would (a waiting connection sends nothing; tokens are the ones the
/// connection was granted), and compares.
struct Harness {
    engine: Engine,
    model: Model,
    now: Millis,
    waiting: BTreeMap<ConnId, WaiterId>,
    latest: BTreeMap<ConnId, u64>,
    steer: Rng,
    reached: Reached,
    /// The last acquire sent with a REQID, to retry it (as a client does
    /// after a lost reply, from the same or another connection).
    with_reqid: Option<Command>,
    /// The id the last regenerate moved a session to.
    last_moved_to: Option<sessiond_core::SessionId>,
    /// The ids the last regenerates moved sessions away from.
    moved_from: Vec<sessiond_core::SessionId>,
}

impl Harness {
    fn new(seed: u64) -> Self {
        Self {
            engine: engine(max_value_bytes(seed)),
            model: model(max_value_bytes(seed)),
            now: 1_000,
            waiting: BTreeMap::new(),
            latest: BTreeMap::new(),
            steer: Rng::new(seed ^ 0x0b0d_a7e5),
            reached: Reached::default(),
            with_reqid: None,
            last_moved_to: None,
            moved_from: Vec::new(),
        }
    }

    /// How far the clock moves: the log's step, or (one step in five, when
    /// a deadline is near) onto 1 ms before, at, or 1 ms after one of the
    /// next deadlines. Only near ones, so time keeps the log's pace and
    /// sessions and locks live long enough to meet.
    fn advance(&mut self, planned: u64) -> u64 {
        if !self.steer.chance(20) {
            return planned;
        }
        let mut ahead: Vec<Millis> = self
            .model
            .deadlines()
            .into_iter()
            .filter(|d| *d > self.now && *d <= self.now + 300)
            .collect();
        ahead.sort_unstable();
        ahead.dedup();
        ahead.truncate(3);
        if ahead.is_empty() {
            return planned;
        }
        let d = ahead[usize::try_from(self.steer.below(ahead.len() as u64)).unwrap()];
        self.reached.on_deadline += 1;
        (d + self.steer.below(3))
            .saturating_sub(1)
            .saturating_sub(self.now)
    }

    /// Shapes the log's commands. A quarter of the lock requests become a retry of the last one made with
    /// a REQID (the log alone rarely repeats one while its grant or wait is
    /// still there); the others are remembered when they carry one.
    fn retry(&mut self, cmd: Command) -> Command {
        // Regenerate chains: half of the regenerates move the session that
        // the previous one moved, again (its old ids chain: a → b → c).
        if let Command::Regenerate {
            id,
            grace_ms,
            new_id,
        } = cmd
        {
            let id = match &self.last_moved_to {
                Some(last) if self.steer.chance(50) => last.clone(),
                _ => id,
            };
            self.last_moved_to = Some(new_id.clone());
            self.moved_from.push(id.clone());
            if self.moved_from.len() > 4 {
                self.moved_from.remove(0);
            }
            return Command::Regenerate {
                id,
                grace_ms,
                new_id,
            };
        }
        // Old ids: a fifth of the reads and lock requests go through one
        // of the ids the last regenerates left behind (an alias, a chain of
        // them, or one that ended).
        let cmd = match (cmd, self.moved_from.is_empty() || !self.steer.chance(20)) {
            (cmd, true) => cmd,
            (Command::Read { opts, .. }, false) => Command::Read {
                id: self.old_id(),
                opts,
            },
            (Command::Acquire(args), false) => Command::Acquire(AcquireArgs {
                id: self.old_id(),
                ..args
            }),
            (cmd, false) => cmd,
        };
        let (Command::Acquire(args) | Command::Once { args, .. }) = &cmd else {
            return cmd;
        };
        if let Some(earlier) = &self.with_reqid
            && self.steer.chance(25)
        {
            return earlier.clone();
        }
        if args.reqid.is_some() {
            self.with_reqid = Some(cmd.clone());
        }
        cmd
    }

    fn old_id(&mut self) -> sessiond_core::SessionId {
        let i = self.steer.below(self.moved_from.len() as u64);
        self.moved_from[usize::try_from(i).unwrap()].clone()
    }

    fn token(&self, conn: ConnId, r: TokenRef) -> u64 {
        match r {
            TokenRef::Latest => self.latest.get(&conn).copied().unwrap_or(BOGUS_TOKEN),
            TokenRef::Bogus => BOGUS_TOKEN,
        }
    }

    fn resolve(&self, conn: ConnId, t: &Template) -> Command {
        match t.clone() {
            Template::Plain(c) => c,
            Template::FencedCommit {
                id,
                request,
                token,
                unlock,
            } => Command::Commit {
                id,
                request,
                fence: Fence {
                    token: Some(self.token(conn, token)),
                    unlock,
                },
            },
            Template::FencedIncr {
                id,
                key,
                delta,
                token,
            } => Command::Incr {
                id,
                key,
                delta,
                create: false,
                fence: Fence {
                    token: Some(self.token(conn, token)),
                    unlock: false,
                },
            },
            Template::Release { id, scope, token } => Command::Release {
                id,
                scope,
                token: self.token(conn, token),
            },
            Template::Renew {
                id,
                scope,
                token,
                lease_ms,
            } => Command::Renew {
                id,
                scope,
                token: self.token(conn, token),
                lease_ms,
            },
            Template::Idempotent { reqid, inner } => Command::Idempotent {
                reqid,
                cmd: Box::new(self.resolve(conn, &inner)),
            },
        }
    }

    fn note_reply(&mut self, conn: ConnId, r: &Result<Response, sessiond_core::EngineError>) {
        let name = match r {
            Ok(Response::Granted { token, .. } | Response::OnceGranted { token, .. }) => {
                self.latest.insert(conn, *token);
                "granted"
            }
            Ok(Response::Read(Some(_))) => "read",
            Ok(Response::Committed(_)) => "committed",
            Ok(Response::Regenerated(_)) => "regenerated",
            Ok(Response::OnceDone { .. }) => "once-done",
            Ok(Response::Cas(sessiond_core::CasOutcome::Swapped { .. })) => "cas-swapped",
            Ok(Response::Incremented { .. }) => "incremented",
            Ok(Response::Renewed) => "renewed",
            Ok(Response::LockInfo { sessions, .. }) if !sessions.is_empty() => "lock-info",
            Ok(Response::Flag(true)) => "flag-true",
            Ok(_) => "other",
            Err(e) => {
                let text = format!("{e:?}");
                let end = text.find(['(', ' ', '{']).unwrap_or(text.len());
                let kind = text[..end].to_owned();
                let inner = text[end..]
                    .trim_start_matches('(')
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_owned();
                self.reached.note(format!("err:{kind}:{inner}"));
                return;
            }
        };
        self.reached.note(name.to_owned());
    }

    fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        i: usize,
        what: &str,
        engine: sessiond_core::engine::Outcome<T>,
        mut model: Out<T>,
        before: &Durable,
        normal: impl Fn(T) -> T,
    ) -> Vec<Delivery> {
        // The engine's effects hold storage mutations; the model says only
        // whether the input changed what storage keeps.
        let wrote = engine.effects.wrote();
        let changed = self.model.sessions.durable() != *before;
        assert_eq!(
            wrote, changed,
            "step {i} at {} ms, {what}: the engine wrote to storage: {wrote}, the model's durable state changed: {changed}",
            self.now
        );
        let mut ended = engine.effects.ended_holds.clone();
        ended.sort_unstable();
        let got = Out {
            result: normal(engine.result),
            deliveries: normalize_deliveries(engine.effects.deliveries),
            ended_holds: ended,
            next_deadline: engine.effects.next_deadline,
        };
        model.result = normal(model.result);
        model.deliveries = normalize_deliveries(model.deliveries);
        assert_eq!(
            got, model,
            "step {i} at {} ms, {what}: the engine (left) and the model (right) disagree",
            self.now
        );
        self.reached.compared += 1;
        got.deliveries
    }

    fn step(&mut self, i: usize, s: &LogStep) {
        let advance = self.advance(s.advance_ms);
        self.now += advance;
        let now = self.now;
        let before = self.model.sessions.durable();
        let deliveries = match &s.input {
            Input::Command(conn, template) => {
                if self.waiting.contains_key(conn) {
                    return;
                }
                let cmd = self.retry(self.resolve(*conn, template));
                let what = format!("conn {conn}: {cmd:?}");
                let e = self.engine.apply(now, *conn, cmd.clone());
                let m = self.model.apply(now, *conn, cmd);
                let step = e.result.clone();
                let ds = self.check(i, &what, e, m, &before, normalize_step);
                match step {
                    Step::Wait(w) => {
                        self.reached.waits += 1;
                        self.waiting.insert(*conn, w);
                    }
                    Step::Done(r) => self.note_reply(*conn, &r),
                }
                ds
            }
            Input::Close(conn) => {
                self.waiting.remove(conn);
                self.latest.remove(conn);
                let e = self.engine.connection_closed(now, *conn);
                let m = self.model.connection_closed(now, *conn);
                self.check(i, &format!("conn {conn} closes"), e, m, &before, |x| x)
            }
            Input::CancelWait(conn) => {
                let Some(w) = self.waiting.remove(conn) else {
                    return;
                };
                let e = self.engine.cancel_wait(now, w);
                let m = self.model.cancel_wait(now, w);
                self.check(
                    i,
                    &format!("conn {conn} cancels wait {w}"),
                    e,
                    m,
                    &before,
                    |x| x,
                )
            }
            Input::Tick => {
                let e = self.engine.tick(now, PURGE_PER_TICK);
                let m = self.model.tick(now, PURGE_PER_TICK);
                self.check(i, "tick", e, m, &before, |x| x)
            }
        };
        for d in &deliveries {
            self.reached.deliveries += 1;
            if self.waiting.get(&d.conn) == Some(&d.waiter) {
                self.waiting.remove(&d.conn);
            }
            self.note_reply(d.conn, &d.reply);
        }
        self.check_state(i);
    }

    /// The whole visible state: sessions (dead ones not purged yet too),
    /// aliases, the version counter, holders and queues.
    fn check_state(&self, i: usize) {
        let image = self.engine.image();
        let engine_sessions: Vec<_> = image
            .store
            .sessions
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    s.meta.version,
                    s.meta.created,
                    s.meta.last_access,
                    s.meta.ttl_ms,
                    s.meta.lifetime_deadline,
                    s.fields
                        .iter()
                        .map(|(k, f)| (k.clone(), (f.version, f.value.clone())))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let model_sessions: Vec<_> = self
            .model
            .sessions
            .sessions
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.version,
                    s.created,
                    s.last_access,
                    s.ttl_ms,
                    s.lifetime_deadline,
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(engine_sessions, model_sessions, "step {i}: sessions differ");
        let engine_aliases: Vec<_> = image
            .store
            .aliases
            .iter()
            .map(|(old, a)| (old.clone(), a.target.clone(), a.until))
            .collect();
        let model_aliases: Vec<_> = self
            .model
            .sessions
            .aliases
            .iter()
            .map(|(old, a)| (old.clone(), a.target.clone(), a.until))
            .collect();
        assert_eq!(engine_aliases, model_aliases, "step {i}: aliases differ");
        assert_eq!(
            image.store.last_version, self.model.sessions.last_version,
            "step {i}: version counters differ"
        );
        let engine_locks: Vec<_> = image
            .locks
            .sessions
            .iter()
            .map(|s| {
                let mut holders = s.holders.clone();
                holders.sort_by_key(|g| g.token);
                (s.session.clone(), holders, s.queue.clone())
            })
            .collect();
        let model_locks = self.model.locks.inspect(None);
        assert_eq!(engine_locks, model_locks, "step {i}: locks differ");
    }
}

fn run(seed: u64, steps: usize) -> Reached {
    // Fewer session ids on some seeds: more contention for the locks.
    let log = generate(
        seed,
        Shape {
            steps,
            sessions: 3 + seed % 3,
            ..Shape::default()
        },
    );
    let mut h = Harness::new(seed);
    for (i, s) in log.iter().enumerate() {
        h.step(i, s);
    }
    let c = h.model.sessions.coverage.get();
    h.reached.alias_chains = c.alias_hops_2_plus;
    h.reached.expired_lookups = c.expired_lookups;
    h.reached.reqid_takeovers = h.model.locks.adopted;
    h.reached.replayed_answers = h.model.replayed;
    h.reached
}

#[test]
fn a_long_log_agrees_with_the_model_and_reaches_the_interesting_states() {
    let reached = run(8, 6_000);
    let seen = |k: &str| reached.by_variant.get(k).copied().unwrap_or(0);
    eprintln!("{reached:#?}");
    for k in [
        "granted",
        "once-done",
        "regenerated",
        "committed",
        "renewed",
        "flag-true",
        "lock-info",
        "err:Lock:Deadlock",
        "err:Lock:Fenced",
        "err:Lock:Timeout",
        "err:Session:Conflict",
        "err:Session:NoSession",
        "err:Session:Exists",
        "err:Lock:OutsideLock",
        "err:RequestIdReused:",
    ] {
        assert!(seen(k) > 0, "no {k} in 6,000 steps: {reached:#?}");
    }
    assert!(reached.deliveries > 50, "{reached:#?}");
    assert!(reached.on_deadline > 100, "{reached:#?}");
    assert!(reached.alias_chains > 0, "{reached:#?}");
    assert!(reached.expired_lookups > 0, "{reached:#?}");
    assert!(reached.reqid_takeovers > 0, "{reached:#?}");
    assert!(reached.replayed_answers > 0, "{reached:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_log_agrees_with_the_model(seed in any::<u64>()) {
        run(seed, 3_000);
    }
}
