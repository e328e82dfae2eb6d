//! The memory limit: what the store accounts, what `noeviction` refuses and
//! lets through, and whom `allkeys-lru` evicts.

use bytes::Bytes;
use sessiond_core::engine::{AcquireArgs, Command, Fence, Response, Step};
use sessiond_core::locks::Scope;
use sessiond_core::store::memory::session_cost;
use sessiond_core::{
    CommitRequest, Engine, EngineError, EvictionPolicy, LockTable, MemoryLimit, Mutation, Op,
    ReadOptions, SessionId, Store, StoreConfig, StoreError,
};

fn id(s: &str) -> SessionId {
    SessionId::parse(s.as_bytes()).unwrap()
}

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        if_version: None,
    }
}

fn create_with(ops: Vec<Op>) -> CommitRequest {
    CommitRequest {
        create: true,
        ops,
        ..Default::default()
    }
}

fn store(max_bytes: u64, policy: EvictionPolicy) -> Store {
    Store::new(StoreConfig {
        memory: MemoryLimit { max_bytes, policy },
        ..StoreConfig::default()
    })
}

fn engine(max_bytes: u64, policy: EvictionPolicy) -> Engine {
    Engine::new(store(max_bytes, policy), LockTable::new(1, 60_000))
}

fn commit(e: &mut Engine, now: u64, s: &str, ops: Vec<Op>) -> Result<Response, EngineError> {
    match e
        .apply(
            now,
            1,
            Command::Commit {
                id: id(s),
                request: create_with(ops),
                fence: Fence::default(),
            },
        )
        .result
    {
        Step::Done(r) => r,
        Step::Wait(_) => panic!("a commit does not wait"),
    }
}

fn is_oom(r: &Result<Response, EngineError>) -> bool {
    matches!(r, Err(EngineError::Session(StoreError::OutOfMemory { .. })))
}

#[test]
fn accounting_follows_every_change_and_equals_a_recount() {
    let mut s = store(0, EvictionPolicy::NoEviction);
    assert_eq!(s.used_memory(), 0);
    s.commit(1, &id("a"), create_with(vec![set("k", "v")]))
        .unwrap();
    let one = s.used_memory();
    assert_eq!(
        one,
        session_cost(&id("a"), s.get(1, &id("a")).unwrap()),
        "one session costs what session_cost says"
    );
    s.commit(2, &id("a"), create_with(vec![set("k2", &"x".repeat(1000))]))
        .unwrap();
    assert!(s.used_memory() > one + 1000, "a value of 1000 bytes counts");
    assert_eq!(s.used_memory(), s.recount_memory());
    s.regenerate(3, &id("a"), &id("b"), Some(10_000)).unwrap();
    assert_eq!(s.used_memory(), s.recount_memory(), "after a regenerate");
    s.destroy(4, &id("b"));
    assert_eq!(
        s.used_memory(),
        0,
        "destroying drops the session and its alias"
    );
    s.create(5, &id("c"), Some(10), None).unwrap();
    s.purge_expired(100, 10);
    assert_eq!(s.used_memory(), 0, "expiry frees");
}

#[test]
fn noeviction_refuses_growth_and_lets_reads_deletes_and_shrinking_writes_through() {
    let mut e = engine(3_000, EvictionPolicy::NoEviction);
    let big = "x".repeat(600);
    let mut stored = 0;
    for i in 0..20 {
        if is_oom(&commit(
            &mut e,
            10 + i,
            &format!("s{i}"),
            vec![set("v", &big)],
        )) {
            break;
        }
        stored += 1;
    }
    assert!(
        (2..20).contains(&stored),
        "some sessions fit, then OOM: {stored}"
    );
    let used = e.store().used_memory();
    assert!(used <= 3_000, "never over the limit: {used}");
    // A new session is refused, and so is growing one.
    let refused = e.apply(
        100,
        1,
        Command::New {
            id: id("fresh"),
            ttl_ms: None,
            lifetime_ms: None,
        },
    );
    assert!(matches!(refused.result, Step::Done(ref r) if is_oom(r)));
    assert!(
        refused.effects.mutations.is_empty(),
        "a refusal changes nothing"
    );
    assert!(is_oom(&commit(&mut e, 101, "s0", vec![set("more", &big)])));
    // Reads, shrinking writes and deletes work.
    let read = e.apply(
        102,
        1,
        Command::Read {
            id: id("s0"),
            opts: ReadOptions::default(),
        },
    );
    assert!(matches!(
        read.result,
        Step::Done(Ok(Response::Read(Some(_))))
    ));
    assert!(commit(&mut e, 103, "s0", vec![set("v", "small")]).is_ok());
    assert!(e.store().used_memory() < used, "the shrink freed memory");
    let destroyed = e.apply(104, 1, Command::Destroy { id: id("s1") });
    assert!(matches!(
        destroyed.result,
        Step::Done(Ok(Response::Flag(true)))
    ));
    // With the room freed, a new session fits again.
    assert!(commit(&mut e, 105, "fresh", vec![set("v", "1")]).is_ok());
    assert!(e.store().memory_stats().oom_refusals >= 2);
    assert_eq!(e.store().memory_stats().evicted, 0);
    assert_eq!(e.store().used_memory(), e.store().recount_memory());
}

#[test]
fn allkeys_lru_evicts_the_idlest_sessions_first_and_reports_them_for_storage() {
    let mut e = engine(4_000, EvictionPolicy::AllkeysLru);
    let big = "x".repeat(600);
    for i in 0..4u64 {
        commit(&mut e, 10 * (i + 1), &format!("s{i}"), vec![set("v", &big)]).unwrap();
    }
    // s0 was read last, so s1 is now the idlest, then s2.
    e.apply(
        100,
        1,
        Command::Read {
            id: id("s0"),
            opts: ReadOptions::default(),
        },
    );
    let mut gone = Vec::new();
    for i in 4..8u64 {
        let out = e.apply(
            200 + i,
            1,
            Command::Commit {
                id: id(&format!("s{i}")),
                request: create_with(vec![set("v", &big)]),
                fence: Fence::default(),
            },
        );
        assert!(
            matches!(out.result, Step::Done(Ok(_))),
            "accepted: {:?}",
            out.result
        );
        for m in out.effects.mutations {
            if let Mutation::DelSession { id, .. } = m {
                gone.push(id.to_string());
            }
        }
        assert!(
            e.store().used_memory() <= 4_000,
            "under the limit after each write"
        );
    }
    assert!(!gone.is_empty(), "something was evicted");
    let order = ["s1", "s2", "s3", "s0", "s4", "s5", "s6"];
    assert_eq!(gone, order[..gone.len()], "idlest first");
    assert_eq!(e.store().memory_stats().evicted, gone.len() as u64);
    assert!(
        e.store().exists(300, &id("s7")),
        "the writer's session stays"
    );
    assert_eq!(e.store().used_memory(), e.store().recount_memory());
}

#[test]
fn allkeys_lru_never_evicts_a_locked_session() {
    let mut e = engine(2_500, EvictionPolicy::AllkeysLru);
    let big = "x".repeat(600);
    commit(&mut e, 10, "locked", vec![set("v", &big)]).unwrap();
    commit(&mut e, 20, "idle", vec![set("v", &big)]).unwrap();
    let grant = e.apply(
        30,
        7,
        Command::Acquire(AcquireArgs {
            id: id("locked"),
            scope: Scope::Session,
            wait_ms: 0,
            lease_ms: None,
            reqid: None,
            create: false,
        }),
    );
    assert!(matches!(
        grant.result,
        Step::Done(Ok(Response::Granted { .. }))
    ));
    commit(&mut e, 40, "new", vec![set("v", &big)]).unwrap();
    assert!(
        e.store().exists(41, &id("locked")),
        "the locked session stays"
    );
    assert!(!e.store().exists(41, &id("idle")), "the unlocked one went");
    // With only the locked session left besides it, a write that cannot
    // fit next to it is refused; the locked session stays.
    commit(&mut e, 50, "another", vec![set("v", &big)]).unwrap();
    assert!(!e.store().exists(51, &id("new")), "evicted in turn");
    let r = commit(&mut e, 60, "another", vec![set("w", &big.repeat(2))]);
    assert!(is_oom(&r), "{r:?}");
    assert!(e.store().exists(61, &id("locked")));
    assert!(
        e.store().exists(61, &id("another")),
        "the writer's own session is never evicted"
    );
}

#[test]
fn lowering_the_limit_at_run_time_takes_effect_at_the_next_write() {
    let mut e = engine(0, EvictionPolicy::NoEviction);
    let big = "x".repeat(600);
    for i in 0..5u64 {
        commit(&mut e, 10 + i, &format!("s{i}"), vec![set("v", &big)]).unwrap();
    }
    let mut config = *e.store().config();
    config.memory = MemoryLimit {
        max_bytes: 2_000,
        policy: EvictionPolicy::AllkeysLru,
    };
    e.set_settings(config, 60_000);
    commit(&mut e, 100, "s9", vec![set("v", "1")]).unwrap();
    assert!(e.store().used_memory() <= 2_000);
    assert!(e.store().exists(101, &id("s9")));
    assert!(!e.store().exists(101, &id("s0")), "the idlest went");
}
