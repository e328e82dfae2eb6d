//! Random workloads for the [`Engine`]: a log of inputs from many
//! connections with time moving, and a [`Driver`] that applies it the way
//! the server would (a connection waiting for a lock sends nothing else; a
//! fencing token is one the connection was granted). For tests that check
//! what must hold of every run: determinism, snapshots, a reference model,
//! and later replication.
//!
//! A log is generated from a seed by a small PRNG of its own (SplitMix64),
//! so the same seed gives the same log on every platform and build.

use bytes::Bytes;

use crate::engine::{
    AcquireArgs, Command, ConnId, Delivery, Engine, Fence, Outcome, Response, Step,
};
use crate::locks::{Scope, WaiterId};
use crate::{CommitRequest, Millis, Mutation, Op, ReadOptions, SessionId};

/// One generated step: move the clock, then give the engine one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStep {
    /// Milliseconds the clock moves before the input.
    pub advance_ms: u64,
    /// The input.
    pub input: Input,
}

/// An input of a log. Tokens are given symbolically ([`TokenRef`]) and
/// resolved by the [`Driver`] from what the connection was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A command from a connection (skipped while it waits for a lock).
    Command(ConnId, Template),
    /// The connection closes (it may reconnect later under the same id:
    /// ids are reused on purpose, to reach more states).
    Close(ConnId),
    /// The connection gives up its wait, if it has one.
    CancelWait(ConnId),
    /// The clock reached a deadline.
    Tick,
}

/// A token a command presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRef {
    /// The newest token the connection was granted (a bogus one if none).
    Latest,
    /// A token nobody was granted.
    Bogus,
}

/// A command before its tokens are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// A command as it is.
    Plain(Command),
    /// `SESSION.COMMIT` fenced by a token.
    FencedCommit {
        /// Session.
        id: SessionId,
        /// The delta.
        request: CommitRequest,
        /// Which token.
        token: TokenRef,
        /// Release after.
        unlock: bool,
    },
    /// `SESSION.INCR` fenced by a token.
    FencedIncr {
        /// Session.
        id: SessionId,
        /// Key.
        key: Bytes,
        /// Amount.
        delta: i64,
        /// Which token.
        token: TokenRef,
    },
    /// `LOCK.RELEASE`.
    Release {
        /// Session.
        id: SessionId,
        /// Scope.
        scope: Scope,
        /// Which token.
        token: TokenRef,
    },
    /// `LOCK.RENEW`.
    Renew {
        /// Session.
        id: SessionId,
        /// Scope.
        scope: Scope,
        /// Which token.
        token: TokenRef,
        /// New lease.
        lease_ms: u64,
    },
    /// A write with a request id (`REQID`).
    Idempotent {
        /// The request id (from a small pool, so ids repeat: as a retry of
        /// the same write, or reused for another).
        reqid: String,
        /// The write.
        inner: Box<Template>,
    },
}

impl Template {
    /// Whether the command may carry a request id.
    fn takes_reqid(&self) -> bool {
        matches!(
            self,
            Template::FencedCommit { .. }
                | Template::FencedIncr { .. }
                | Template::Plain(
                    Command::Commit { .. }
                        | Command::Incr { .. }
                        | Command::Cas { .. }
                        | Command::Regenerate { .. }
                        | Command::Destroy { .. }
                )
        )
    }
}

/// What the driver saw for one step: the command it resolved (if any) and
/// the outcome, for comparison between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The time of the input.
    pub now: Millis,
    /// The command given, after resolving tokens; `None` for other inputs
    /// and for skipped commands.
    pub command: Option<(ConnId, Command)>,
    /// The outcome, rendered with `{:?}` (results and effects).
    pub outcome: String,
    /// The storage mutations among its effects (also in `outcome`), for
    /// tests that keep a model of the disk.
    pub mutations: Vec<Mutation>,
}

/// SplitMix64: a tiny, well-known PRNG, stable across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The shape of a generated log.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Connections (ids 1..=conns).
    pub conns: u64,
    /// Distinct session ids used (`s0`, `s1`, …): few, so requests collide.
    pub sessions: u64,
    /// Distinct keys (`k0`, `k1`, …).
    pub keys: u64,
    /// Steps.
    pub steps: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            conns: 6,
            sessions: 5,
            keys: 4,
            steps: 2_000,
        }
    }
}

fn id(s: &str) -> SessionId {
    // Every generated id is in the alphabet; a failure here is a bug in the
    // generator, not input.
    SessionId::parse(s.as_bytes()).unwrap_or_else(|_| unreachable!("generated id {s:?}"))
}

/// Generates a log. Time mostly moves a few ms per step, sometimes by
/// seconds (so sessions, aliases and leases expire), and sometimes lands
/// exactly on the millisecond before or at a deadline the generator set
/// (TTLs and leases are multiples of 100 ms).
pub fn generate(seed: u64, shape: Shape) -> Vec<LogStep> {
    let mut rng = Rng::new(seed);
    let mut fresh = 0u64;
    let mut steps = Vec::with_capacity(shape.steps);
    for _ in 0..shape.steps {
        let advance_ms = match rng.below(100) {
            0..=59 => rng.below(5),
            60..=89 => rng.below(60),
            90..=97 => 100 * rng.below(12),
            _ => 1_000 + rng.below(3_000),
        };
        let conn = 1 + rng.below(shape.conns);
        let session = id(&format!("s{}", rng.below(shape.sessions)));
        let key = Bytes::from(format!("k{}", rng.below(shape.keys)));
        let scope = if rng.chance(50) {
            Scope::Session
        } else {
            Scope::Key(key.clone())
        };
        let token = if rng.chance(90) {
            TokenRef::Latest
        } else {
            TokenRef::Bogus
        };
        let ttl = (rng.chance(30)).then(|| 100 * (1 + rng.below(30)));
        let input = match rng.below(100) {
            0..=2 => Input::Close(conn),
            3..=5 => Input::CancelWait(conn),
            6..=9 => Input::Tick,
            10..=13 => Input::Command(
                conn,
                Template::Plain(Command::New {
                    id: {
                        fresh += 1;
                        if rng.chance(50) {
                            session
                        } else {
                            id(&format!("n{fresh}"))
                        }
                    },
                    ttl_ms: ttl,
                    lifetime_ms: (rng.chance(20)).then(|| 100 * (1 + rng.below(40))),
                }),
            ),
            14..=23 => Input::Command(
                conn,
                Template::Plain(Command::Read {
                    id: session,
                    opts: ReadOptions {
                        create: rng.chance(40),
                        ttl_ms: ttl,
                        lifetime_ms: None,
                        keys: (rng.chance(40)).then(|| vec![key.clone()]),
                    },
                }),
            ),
            24..=37 => {
                let mut ops = Vec::new();
                for _ in 0..=rng.below(3) {
                    let k = Bytes::from(format!("k{}", rng.below(shape.keys)));
                    let if_version = (rng.chance(30)).then(|| rng.below(8));
                    if rng.chance(80) {
                        ops.push(Op::Set {
                            key: k,
                            value: Bytes::from(format!("v{}", rng.below(1_000))),
                            if_version,
                        });
                    } else {
                        ops.push(Op::Del { key: k, if_version });
                    }
                }
                let request = CommitRequest {
                    create: rng.chance(50),
                    ttl_ms: ttl,
                    lifetime_ms: None,
                    ops,
                };
                if rng.chance(40) {
                    Input::Command(
                        conn,
                        Template::FencedCommit {
                            id: session,
                            request,
                            token,
                            unlock: rng.chance(60),
                        },
                    )
                } else {
                    Input::Command(
                        conn,
                        Template::Plain(Command::Commit {
                            id: session,
                            request,
                            fence: Fence::default(),
                        }),
                    )
                }
            }
            38..=39 => Input::Command(conn, Template::Plain(Command::Destroy { id: session })),
            40..=41 => Input::Command(conn, Template::Plain(Command::Exists { id: session })),
            42..=43 => Input::Command(
                conn,
                Template::Plain(Command::Touch {
                    id: session,
                    ttl_ms: ttl,
                }),
            ),
            44..=45 => Input::Command(conn, Template::Plain(Command::Ttl { id: session })),
            46..=51 => {
                let delta = i64::try_from(rng.below(7)).unwrap_or(0) - 3;
                if rng.chance(30) {
                    Input::Command(
                        conn,
                        Template::FencedIncr {
                            id: session,
                            key,
                            delta,
                            token,
                        },
                    )
                } else {
                    Input::Command(
                        conn,
                        Template::Plain(Command::Incr {
                            id: session,
                            key,
                            delta,
                            create: rng.chance(50),
                            fence: Fence::default(),
                        }),
                    )
                }
            }
            52..=54 => Input::Command(
                conn,
                Template::Plain(Command::Cas {
                    id: session,
                    key,
                    expected: Bytes::from(format!("v{}", rng.below(4))),
                    new: Bytes::from(format!("v{}", rng.below(4))),
                    fence: Fence::default(),
                }),
            ),
            55..=58 => Input::Command(
                conn,
                Template::Plain(Command::Regenerate {
                    id: session,
                    grace_ms: match rng.below(3) {
                        0 => Some(0),
                        1 => Some(100 * (1 + rng.below(20))),
                        _ => None,
                    },
                    new_id: {
                        fresh += 1;
                        if rng.chance(30) {
                            id(&format!("s{}", rng.below(shape.sessions)))
                        } else {
                            id(&format!("r{fresh}"))
                        }
                    },
                }),
            ),
            59..=74 => {
                let args = AcquireArgs {
                    id: session,
                    scope: scope.clone(),
                    wait_ms: if rng.chance(70) {
                        1 + rng.below(5_000)
                    } else {
                        0
                    },
                    lease_ms: (rng.chance(40)).then(|| 100 * (1 + rng.below(20))),
                    reqid: (rng.chance(10)).then(|| format!("q{}", rng.below(4))),
                    create: rng.chance(30),
                };
                if rng.chance(25) {
                    let args = AcquireArgs {
                        scope: Scope::Key(key),
                        ..args
                    };
                    Input::Command(
                        conn,
                        Template::Plain(Command::Once {
                            args,
                            if_version: rng.below(6),
                        }),
                    )
                } else {
                    Input::Command(conn, Template::Plain(Command::Acquire(args)))
                }
            }
            75..=86 => Input::Command(
                conn,
                Template::Release {
                    id: session,
                    scope,
                    token,
                },
            ),
            87..=91 => Input::Command(
                conn,
                Template::Renew {
                    id: session,
                    scope,
                    token,
                    lease_ms: 100 * (1 + rng.below(20)),
                },
            ),
            92..=94 => Input::Command(
                conn,
                Template::Plain(Command::LockInfo {
                    id: (rng.chance(50)).then_some(session),
                }),
            ),
            95..=96 => Input::Command(conn, Template::Plain(Command::Break { id: session, scope })),
            _ => Input::Command(
                conn,
                Template::Plain(Command::Commit {
                    id: session,
                    request: CommitRequest::default(),
                    fence: Fence::default(),
                }),
            ),
        };
        let input = match input {
            Input::Command(conn, t) if t.takes_reqid() && rng.chance(20) => Input::Command(
                conn,
                Template::Idempotent {
                    reqid: format!("i{}", rng.below(8)),
                    inner: Box::new(t),
                },
            ),
            other => other,
        };
        steps.push(LogStep { advance_ms, input });
    }
    steps
}

/// Applies a log to an engine the way the server would, and remembers what
/// each connection holds and waits for.
#[derive(Debug, Clone, Default)]
pub struct Driver {
    /// The clock.
    pub now: Millis,
    // Per connection: the wait in progress and the newest token granted.
    waiting: std::collections::BTreeMap<ConnId, WaiterId>,
    latest: std::collections::BTreeMap<ConnId, u64>,
}

/// A token no grant ever has (the epoch part is huge).
pub const BOGUS_TOKEN: u64 = u64::MAX - 7;

impl Driver {
    /// A driver starting at time `now`.
    pub fn new(now: Millis) -> Self {
        Self {
            now,
            ..Self::default()
        }
    }

    /// Whether connection `conn` waits for a lock.
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        self.waiting.contains_key(&conn)
    }

    fn token(&self, conn: ConnId, r: TokenRef) -> u64 {
        match r {
            TokenRef::Latest => self.latest.get(&conn).copied().unwrap_or(BOGUS_TOKEN),
            TokenRef::Bogus => BOGUS_TOKEN,
        }
    }

    /// Resolves a template's tokens for connection `conn`.
    pub fn resolve(&self, conn: ConnId, t: &Template) -> Command {
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

    /// Applies one step to `engine`.
    pub fn step(&mut self, engine: &mut Engine, step: &LogStep) -> Record {
        self.now += step.advance_ms;
        let now = self.now;
        let mut command = None;
        let outcome = match &step.input {
            Input::Command(conn, template) => {
                if self.is_waiting(*conn) {
                    // A connection runs one command at a time.
                    None
                } else {
                    let cmd = self.resolve(*conn, template);
                    command = Some((*conn, cmd.clone()));
                    let out = engine.apply(now, *conn, cmd);
                    match &out.result {
                        Step::Wait(w) => {
                            self.waiting.insert(*conn, *w);
                        }
                        Step::Done(Ok(r)) => self.note_response(*conn, r),
                        Step::Done(Err(_)) => {}
                    }
                    self.note_deliveries(&out.effects.deliveries);
                    Some((format!("{out:?}"), out.effects.mutations))
                }
            }
            Input::Close(conn) => {
                self.waiting.remove(conn);
                self.latest.remove(conn);
                let out = engine.connection_closed(now, *conn);
                self.note_deliveries(&out.effects.deliveries);
                Some((format!("{out:?}"), out.effects.mutations))
            }
            Input::CancelWait(conn) => match self.waiting.remove(conn) {
                Some(w) => {
                    let out = engine.cancel_wait(now, w);
                    self.note_deliveries(&out.effects.deliveries);
                    Some((format!("{out:?}"), out.effects.mutations))
                }
                None => None,
            },
            Input::Tick => {
                let out: Outcome<usize> = engine.tick(now, 3);
                self.note_deliveries(&out.effects.deliveries);
                Some((format!("{out:?}"), out.effects.mutations))
            }
        };
        let (outcome, mutations) = outcome.unwrap_or_default();
        Record {
            now,
            command,
            outcome,
            mutations,
        }
    }

    fn note_response(&mut self, conn: ConnId, r: &Response) {
        match r {
            Response::Granted { token, .. } | Response::OnceGranted { token, .. } => {
                self.latest.insert(conn, *token);
            }
            _ => {}
        }
    }

    fn note_deliveries(&mut self, deliveries: &[Delivery]) {
        for d in deliveries {
            if self.waiting.get(&d.conn) == Some(&d.waiter) {
                self.waiting.remove(&d.conn);
            }
            if let Ok(r) = &d.reply {
                self.note_response(d.conn, r);
            }
        }
    }

    /// Applies one step as a cluster leader serves it: a pure read is
    /// answered by [`Engine::peek`] and its access recorded at once with
    /// [`Engine::reads_served`] (the server batches them; at once, the
    /// record must equal [`Driver::step`]'s); any other step as `step`.
    pub fn step_peeking(&mut self, engine: &mut Engine, step: &LogStep) -> Record {
        if let Input::Command(conn, template) = &step.input
            && !self.is_waiting(*conn)
        {
            let now = self.now + step.advance_ms;
            let cmd = self.resolve(*conn, template);
            if let Some(peek) = engine.peek(now, &cmd) {
                self.now = now;
                let accesses: Vec<_> = peek.accessed.into_iter().map(|id| (id, now)).collect();
                let served = engine.reads_served(now, &accesses);
                self.note_deliveries(&served.effects.deliveries);
                let out = Outcome {
                    result: Step::Done(Ok(peek.response)),
                    effects: served.effects,
                };
                return Record {
                    now,
                    command: Some((*conn, cmd)),
                    outcome: format!("{out:?}"),
                    mutations: out.effects.mutations,
                };
            }
        }
        self.step(engine, step)
    }

    /// Applies a whole log; returns every record.
    pub fn run(&mut self, engine: &mut Engine, log: &[LogStep]) -> Vec<Record> {
        log.iter().map(|s| self.step(engine, s)).collect()
    }
}
