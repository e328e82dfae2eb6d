//! The engine is deterministic: the property a replicated log relies on.
//! A generated log of thousands of inputs from many connections, with time
//! moving, applied twice gives identical outcomes (replies and effects) and
//! identical final states; applied once more with the state serialized and
//! restored into a fresh engine at a random point, it gives the same again.

use proptest::prelude::*;
use sessiond_core::engine::EngineImage;
use sessiond_core::store::{EvictionPolicy, MemoryLimit};
use sessiond_core::workload::{Driver, LogStep, Rng, Shape, generate};
use sessiond_core::{Engine, LockTable, Store, StoreConfig};

fn config(memory: MemoryLimit) -> StoreConfig {
    let mut config = StoreConfig {
        default_ttl_ms: 2_000,
        regenerate_grace_ms: 500,
        ..StoreConfig::default()
    };
    config.limits.max_keys_per_session = 3;
    config.limits.max_value_bytes = 3;
    config.memory = memory;
    config
}

fn fresh_engine(memory: MemoryLimit) -> Engine {
    Engine::new(Store::new(config(memory)), LockTable::new(1, 3_000))
}

/// What a snapshot does: the image through its byte encoding, and the
/// node's own settings put back (the memory limit is not in an image), as
/// the server does when it installs one.
fn through_bytes(engine: &Engine) -> Engine {
    let bytes = engine.image().encode();
    let mut restored = Engine::from_image(EngineImage::decode(&bytes).expect("an image decodes"));
    restored.set_settings(*engine.store().config(), engine.locks().max_hold_ms());
    restored
}

/// A limit that holds about `sessions` small sessions, evicting or not.
fn limit(sessions: u64, policy: EvictionPolicy) -> MemoryLimit {
    MemoryLimit {
        max_bytes: sessions * 400,
        policy,
    }
}

/// Runs `log`, swapping the engine for `restore(engine)` before step
/// `split` (if any). Returns the records and the final engine.
fn run(
    log: &[LogStep],
    split: Option<usize>,
    memory: MemoryLimit,
    restore: impl Fn(&Engine) -> Engine,
) -> (Vec<sessiond_core::workload::Record>, Engine) {
    let mut engine = fresh_engine(memory);
    let mut driver = Driver::new(1_000);
    let mut records = Vec::with_capacity(log.len());
    for (i, step) in log.iter().enumerate() {
        if split == Some(i) {
            let restored = restore(&engine);
            assert_eq!(restored.image(), engine.image(), "restored state differs");
            assert_eq!(restored.digest(), engine.digest());
            engine = restored;
        }
        records.push(driver.step(&mut engine, step));
        assert_eq!(
            engine.store().used_memory(),
            engine.store().recount_memory(),
            "step {i}: the memory kept incrementally differs from a recount"
        );
    }
    (records, engine)
}

fn check(seed: u64, steps: usize) {
    check_with(seed, steps, MemoryLimit::default());
}

fn check_with(seed: u64, steps: usize, memory: MemoryLimit) {
    let log = generate(
        seed,
        Shape {
            steps,
            ..Shape::default()
        },
    );
    let (first, a) = run(&log, None, memory, through_bytes);
    let (second, b) = run(&log, None, memory, through_bytes);
    for (i, (x, y)) in first.iter().zip(&second).enumerate() {
        assert_eq!(x, y, "seed {seed}: step {i} differs between two runs");
    }
    assert_eq!(a.digest(), b.digest(), "seed {seed}: final states differ");
    let split = usize::try_from(Rng::new(seed ^ 0x5eed).below(steps as u64)).unwrap();
    let (third, c) = run(&log, Some(split), memory, through_bytes);
    for (i, (x, y)) in first.iter().zip(&third).enumerate() {
        assert_eq!(
            x, y,
            "seed {seed}: step {i} differs after a restore at {split}"
        );
    }
    assert_eq!(
        a.image(),
        c.image(),
        "seed {seed}: final state differs after a restore"
    );
    assert_eq!(a.digest(), c.digest());
}

/// A cluster leader answers pure reads from its own state
/// (`Engine::peek`) and records their accesses later
/// (`Engine::reads_served`): recorded at once, that must be exactly what
/// applying the read does — same answers, same effects, same final state.
#[test]
fn peeked_reads_answer_and_slide_exactly_as_applied_reads() {
    for seed in 0..12 {
        let log = generate(
            seed,
            Shape {
                steps: 3_000,
                ..Shape::default()
            },
        );
        let memory = MemoryLimit::default();
        let (applied, a) = run(&log, None, memory, through_bytes);
        let mut b = fresh_engine(memory);
        let mut driver = Driver::new(1_000);
        let mut peeked = 0;
        for (i, step) in log.iter().enumerate() {
            let record = driver.step_peeking(&mut b, step);
            if let Some((_, cmd)) = &record.command
                && b.peek(record.now, cmd).is_some()
            {
                peeked += 1;
            }
            assert_eq!(
                record, applied[i],
                "seed {seed}: step {i} differs when peeked"
            );
        }
        assert!(peeked > 100, "seed {seed}: only {peeked} reads peeked");
        assert_eq!(a.digest(), b.digest(), "seed {seed}: final states differ");
    }
}

/// Accesses recorded late slide a session to the read's time, not the
/// record's, never shorten one, and skip sessions gone meanwhile.
#[test]
fn reads_served_slide_to_the_read_time() {
    use sessiond_core::SessionId;
    use sessiond_core::engine::{Command, Input};
    let mut engine = fresh_engine(MemoryLimit::default());
    let id = SessionId::parse(b"s1").expect("an id");
    let gone = SessionId::parse(b"s2").expect("an id");
    for s in [&id, &gone] {
        let new = Command::New {
            id: s.clone(),
            ttl_ms: Some(1_000),
            lifetime_ms: None,
        };
        engine.apply(10_000, 1, new);
    }
    let ttl = |e: &Engine, now| match e.peek(now, &Command::Ttl { id: id.clone() }) {
        Some(p) => p.response,
        None => panic!("TTL is a pure read"),
    };
    // Read at 10,600 (peeked: nothing moves), recorded at 10,900.
    let read = Command::Read {
        id: id.clone(),
        opts: sessiond_core::ReadOptions::default(),
    };
    let peek = engine.peek(10_600, &read).expect("a pure read");
    assert_eq!(peek.accessed.as_ref(), Some(&id));
    assert_eq!(
        ttl(&engine, 10_600),
        sessiond_core::engine::Response::Ttl(Some(400))
    );
    engine.apply(10_950, 1, Command::Destroy { id: gone.clone() });
    let out = engine.input(
        10_900,
        Input::ReadsServed {
            accesses: vec![(id.clone(), 10_600), (gone, 10_600)],
        },
    );
    assert_eq!(out.result, sessiond_core::engine::InputResult::Count(1));
    // Slid to 10,600 + 1,000, not to 10,900 + 1,000.
    assert_eq!(
        ttl(&engine, 10_900),
        sessiond_core::engine::Response::Ttl(Some(700))
    );
    // An older access changes nothing.
    engine.reads_served(10_950, &[(id.clone(), 10_100)]);
    assert_eq!(
        ttl(&engine, 10_950),
        sessiond_core::engine::Response::Ttl(Some(650))
    );
    // A read recorded with a time past the entry's is held to the entry's.
    engine.reads_served(11_000, &[(id.clone(), 99_000)]);
    assert_eq!(
        ttl(&engine, 11_000),
        sessiond_core::engine::Response::Ttl(Some(1_000))
    );
    // A write is not a pure read.
    assert!(engine.peek(11_000, &Command::Destroy { id }).is_none());
}

#[test]
fn the_log_reaches_the_interesting_states() {
    // Guard against a generator that only produces refusals: over one long
    // log, grants, hand-offs, conflicts, fenced writes and expiries happen.
    let log = generate(
        7,
        Shape {
            steps: 5_000,
            ..Shape::default()
        },
    );
    let (records, engine) = run(&log, None, MemoryLimit::default(), through_bytes);
    let text: String = records.iter().map(|r| r.outcome.as_str()).collect();
    for needle in [
        "Granted",
        "deliveries: [Delivery",
        "Conflict",
        "Fenced",
        "OnceDone",
        "Regenerated",
        "Deadlock",
        "Timeout",
        "DelSession",
    ] {
        assert!(text.contains(needle), "no {needle} in 5,000 steps");
    }
    let stats = engine.store().stats();
    assert!(stats.expired > 0, "nothing expired");
    assert!(engine.locks().stats().expired > 0, "no lease ran out");
}

#[test]
fn a_long_log_is_deterministic_and_survives_a_snapshot() {
    check(42, 10_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_log_is_deterministic_and_survives_a_snapshot(seed in any::<u64>()) {
        check(seed, 2_000);
    }

    /// With a memory limit that a few sessions fill, evicting or refusing:
    /// which sessions go and which writes are refused is the same on every
    /// run and after a restore.
    #[test]
    fn logs_under_a_memory_limit_are_deterministic(seed in any::<u64>(), lru in any::<bool>()) {
        let policy = if lru { EvictionPolicy::AllkeysLru } else { EvictionPolicy::NoEviction };
        check_with(seed, 2_000, limit(4, policy));
    }
}

#[test]
fn a_memory_limit_evicts_and_refuses_in_a_long_log() {
    for policy in [EvictionPolicy::AllkeysLru, EvictionPolicy::NoEviction] {
        let log = generate(
            11,
            Shape {
                steps: 5_000,
                ..Shape::default()
            },
        );
        let (_, engine) = run(&log, None, limit(4, policy), through_bytes);
        let stats = engine.store().memory_stats();
        match policy {
            EvictionPolicy::AllkeysLru => assert!(stats.evicted > 0, "nothing evicted"),
            EvictionPolicy::NoEviction => {
                assert!(stats.oom_refusals > 0, "nothing refused");
                assert_eq!(stats.evicted, 0);
            }
        }
        check_with(11, 5_000, limit(4, policy));
    }
}

/// `SESSION.REGENERATE … TO newid` onto an id that has locks (locks name
/// ids, not stored sessions, so a fresh id can be locked) is refused with
/// `EXISTS`: moving the session's locks there used to replace the locks
/// already on `newid`, fencing their holder without a word and leaving its
/// waiters queued nowhere. Found by the model test (`tests/model.rs`).
#[test]
fn regenerate_onto_a_locked_id_is_refused_and_keeps_its_locks() {
    use sessiond_core::engine::{AcquireArgs, Command, Fence, Response, Step};
    use sessiond_core::locks::Scope;
    use sessiond_core::{CommitRequest, EngineError, ReadOptions, SessionId, StoreError};
    let id = |s: &str| SessionId::parse(s.as_bytes()).unwrap();
    let lock = |s: &str, wait_ms| {
        Command::Acquire(AcquireArgs {
            id: id(s),
            scope: Scope::Session,
            wait_ms,
            lease_ms: None,
            reqid: None,
            create: false,
        })
    };
    let token = |step: Step| match step {
        Step::Done(Ok(Response::Granted { token, .. })) => token,
        other => panic!("expected a grant, got {other:?}"),
    };
    let mut e = fresh_engine(MemoryLimit::default());
    // Connection 1 locks the fresh id "fresh"; connection 3 queues for it.
    let t1 = token(e.apply(10, 1, lock("fresh", 0)).result);
    assert!(matches!(
        e.apply(11, 3, lock("fresh", 1_000)).result,
        Step::Wait(_)
    ));
    // Connection 2 holds the lock of session "s" and regenerates it to "fresh".
    let read = ReadOptions {
        create: true,
        ..Default::default()
    };
    e.apply(
        12,
        2,
        Command::Read {
            id: id("s"),
            opts: read,
        },
    );
    let t2 = token(e.apply(13, 2, lock("s", 0)).result);
    let regen = |to: &str| Command::Regenerate {
        id: id("s"),
        grace_ms: Some(0),
        new_id: id(to),
    };
    assert_eq!(
        e.apply(14, 2, regen("fresh")).result,
        Step::Done(Err(EngineError::Session(StoreError::Exists(
            "fresh".into()
        ))))
    );
    // Nothing moved: connection 1 still holds "fresh", and its release
    // hands the lock to connection 3.
    let fenced = |token| Command::Commit {
        id: id("fresh"),
        request: CommitRequest {
            create: true,
            ..Default::default()
        },
        fence: Fence {
            token: Some(token),
            unlock: true,
        },
    };
    let out = e.apply(15, 1, fenced(t1));
    assert!(
        matches!(out.result, Step::Done(Ok(Response::Committed(_)))),
        "{out:?}"
    );
    assert_eq!(out.effects.deliveries.len(), 1);
    assert_eq!(out.effects.deliveries[0].conn, 3);
    // To an id without locks, the session and its lock move as before.
    assert_eq!(
        e.apply(16, 2, regen("other")).result,
        Step::Done(Ok(Response::Regenerated(id("other"))))
    );
    let moved = Command::Commit {
        id: id("other"),
        request: CommitRequest::default(),
        fence: Fence {
            token: Some(t2),
            unlock: true,
        },
    };
    assert!(matches!(e.apply(17, 2, moved).result, Step::Done(Ok(_))));
}

#[test]
fn an_image_from_a_newer_format_is_refused() {
    let mut image = fresh_engine(MemoryLimit::default()).image();
    image.format += 1;
    let bytes = image.encode();
    assert!(EngineImage::decode(&bytes).is_err());
    assert!(EngineImage::decode(b"\xff\xff garbage").is_err());
}

#[test]
fn closing_a_node_spares_the_connections_of_its_current_run() {
    use sessiond_core::engine::{AcquireArgs, Command, Input, InputResult, Step};
    use sessiond_core::locks::Scope;
    let mut engine = fresh_engine(MemoryLimit::default());
    let conn = |node: u64, incarnation: u64, n: u64| (node << 48) | (incarnation << 32) | n;
    let old = conn(1, 1, 7);
    let current = conn(1, 2, 7);
    let other_node = conn(2, 1, 7);
    let take = |e: &mut Engine, c: u64, id: &str| {
        let args = AcquireArgs {
            id: sessiond_core::SessionId::parse(id.as_bytes()).unwrap(),
            scope: Scope::Session,
            wait_ms: 0,
            lease_ms: None,
            reqid: None,
            create: true,
        };
        let out = e.input(
            10,
            Input::Command {
                conn: c,
                cmd: Command::Acquire(args),
            },
        );
        assert!(
            matches!(out.result, InputResult::Step(Step::Done(Ok(_)))),
            "{out:?}"
        );
    };
    take(&mut engine, old, "a");
    take(&mut engine, current, "b");
    take(&mut engine, other_node, "c");
    engine.input(
        20,
        Input::CloseNode {
            node: 1,
            except_incarnation: Some(2),
        },
    );
    let owners = engine.locks().owners();
    assert!(
        !owners.contains(&old),
        "the previous run's lock is released"
    );
    assert!(owners.contains(&current) && owners.contains(&other_node));
    // A node declared dead loses every connection.
    engine.input(
        30,
        Input::CloseNode {
            node: 1,
            except_incarnation: None,
        },
    );
    let owners = engine.locks().owners();
    assert!(!owners.contains(&current) && owners.contains(&other_node));
}

#[test]
fn an_image_of_format_2_still_loads() {
    // Format 2 is format 3 with each session's fields one by one.
    #[derive(serde::Serialize)]
    struct V2 {
        format: u32,
        store: sessiond_core::store::StoreImageV2,
        locks: sessiond_core::locks::LockTableImage,
        pending: Vec<(
            sessiond_core::locks::WaiterId,
            sessiond_core::engine::PendingGrant,
        )>,
        dedupe: Vec<sessiond_core::engine::dedupe::DedupeEntry>,
    }
    let log = generate(4, Shape::default());
    let (_, engine) = run(&log, None, MemoryLimit::default(), through_bytes);
    let image = engine.image();
    assert!(
        image.store.sessions.iter().any(|s| !s.fields.is_empty()),
        "sessions with fields"
    );
    let v2 = postcard::to_stdvec(&V2 {
        format: 2,
        store: (&image.store).into(),
        locks: image.locks.clone(),
        pending: image.pending.clone(),
        dedupe: image.dedupe.clone(),
    })
    .unwrap();
    let loaded = EngineImage::decode(&v2).unwrap();
    assert_eq!(loaded, image);
    assert_eq!(Engine::from_image(loaded).digest(), engine.digest());
}

#[test]
fn an_image_of_format_1_still_loads_without_remembered_requests() {
    // Format 1 is format 2 without the request-id table at the end.
    #[derive(serde::Serialize)]
    struct V1 {
        format: u32,
        store: sessiond_core::store::StoreImageV2,
        locks: sessiond_core::locks::LockTableImage,
        pending: Vec<(
            sessiond_core::locks::WaiterId,
            sessiond_core::engine::PendingGrant,
        )>,
    }
    let log = generate(3, Shape::default());
    let (_, engine) = run(&log, None, MemoryLimit::default(), through_bytes);
    let image = engine.image();
    assert!(!image.dedupe.is_empty(), "the log remembers some answers");
    let v1 = postcard::to_stdvec(&V1 {
        format: 1,
        store: (&image.store).into(),
        locks: image.locks.clone(),
        pending: image.pending.clone(),
    })
    .unwrap();
    let loaded = EngineImage::decode(&v1).unwrap();
    assert_eq!(loaded.format, sessiond_core::engine::IMAGE_FORMAT);
    assert!(loaded.dedupe.is_empty());
    assert_eq!(loaded.store, image.store);
    assert_eq!(loaded.locks, image.locks);
    assert_eq!(loaded.pending, image.pending);
}
