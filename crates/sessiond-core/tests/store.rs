//! The store with a fake clock: expiry boundaries, sliding TTL, absolute
//! lifetime, regenerate grace, conditions and limits.

use bytes::Bytes;
use sessiond_core::{
    Clock, CommitRequest, Limits, ManualClock, Mutation, Op, ReadOptions, SessionId, Store,
    StoreConfig, StoreError,
};

fn id(s: &str) -> SessionId {
    SessionId::parse(s.as_bytes()).unwrap()
}

fn set(k: &str, v: &str) -> Op {
    Op::Set {
        key: Bytes::from(k.to_owned()),
        value: Bytes::from(v.to_owned()),
        if_version: None,
    }
}

fn store() -> Store {
    Store::new(StoreConfig {
        default_ttl_ms: 1_000,
        regenerate_grace_ms: 500,
        limits: Limits::default(),
        memory: sessiond_core::MemoryLimit::default(),
    })
}

fn create(s: &mut Store, now: u64, name: &str, ttl: Option<u64>, lifetime: Option<u64>) {
    s.read(
        now,
        &id(name),
        ReadOptions {
            create: true,
            ttl_ms: ttl,
            lifetime_ms: lifetime,
            keys: None,
        },
    )
    .unwrap();
}

#[test]
fn a_session_lives_until_the_millisecond_before_its_deadline() {
    let clock = ManualClock::new(10_000);
    let mut s = store();
    create(&mut s, clock.now(), "a", None, None);
    clock.advance(999);
    assert!(
        s.exists(clock.now(), &id("a")),
        "alive 1 ms before the deadline"
    );
    clock.advance(1);
    assert!(!s.exists(clock.now(), &id("a")), "gone at the deadline");
    assert!(
        s.read(clock.now(), &id("a"), ReadOptions::default())
            .unwrap()
            .is_none()
    );
    let late = CommitRequest {
        ops: vec![set("k", "v")],
        ..Default::default()
    };
    assert!(matches!(
        s.commit(clock.now(), &id("a"), late),
        Err(StoreError::NoSession(_))
    ));
}

#[test]
fn every_access_slides_the_idle_deadline() {
    let clock = ManualClock::new(0);
    let mut s = store();
    create(&mut s, 0, "a", None, None);
    for _ in 0..5 {
        clock.advance(900);
        assert!(
            s.read(clock.now(), &id("a"), ReadOptions::default())
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(s.ttl(clock.now(), &id("a")), Some(1_000));
    clock.advance(999);
    assert!(s.touch(clock.now(), &id("a"), None));
    clock.advance(999);
    assert!(s.exists(clock.now(), &id("a")));
    // EXISTS and TTL do not slide.
    clock.advance(1);
    assert!(!s.exists(clock.now(), &id("a")));
}

#[test]
fn the_absolute_lifetime_ends_a_session_however_active() {
    let clock = ManualClock::new(0);
    let mut s = store();
    create(&mut s, 0, "a", Some(1_000), Some(2_500));
    for _ in 0..4 {
        clock.advance(600);
        assert!(s.touch(clock.now(), &id("a"), None));
    }
    clock.set(2_499);
    assert!(s.exists(clock.now(), &id("a")));
    clock.set(2_500);
    assert!(!s.exists(clock.now(), &id("a")));
}

#[test]
fn purge_removes_only_what_expired_and_records_it_for_disk() {
    let mut s = store();
    create(&mut s, 0, "early", Some(100), None);
    create(&mut s, 0, "late", Some(10_000), None);
    s.take_mutations();
    assert_eq!(s.purge_expired(99, 100), 0);
    assert_eq!(s.purge_expired(100, 100), 1);
    assert_eq!(s.len(), 1);
    assert!(
        matches!(&s.take_mutations()[..], [Mutation::DelSession { id, .. }] if id.as_str() == "early")
    );
    assert_eq!(s.stats().expired, 1);
    assert_eq!(s.next_deadline(), Some(10_000));
}

#[test]
fn regenerate_grace_ends_on_the_millisecond() {
    let clock = ManualClock::new(0);
    let mut s = store();
    s.commit(
        0,
        &id("old"),
        CommitRequest {
            create: true,
            ops: vec![set("u", "bob")],
            ..Default::default()
        },
    )
    .unwrap();
    s.regenerate(100, &id("old"), &id("new"), None).unwrap();
    clock.set(599);
    let r = s
        .read(clock.now(), &id("old"), ReadOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(r.id, id("new"));
    // Writes through the old id land in the new session.
    s.commit(
        clock.now(),
        &id("old"),
        CommitRequest {
            ops: vec![set("cart", "1")],
            ..Default::default()
        },
    )
    .unwrap();
    clock.set(600);
    assert!(
        s.read(clock.now(), &id("old"), ReadOptions::default())
            .unwrap()
            .is_none()
    );
    let r = s
        .read(clock.now(), &id("new"), ReadOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(r.fields.len(), 2);
    // The target must be free.
    create(&mut s, 600, "other", None, None);
    assert!(matches!(
        s.regenerate(600, &id("new"), &id("other"), None),
        Err(StoreError::Exists(_))
    ));
}

#[test]
fn conditions_check_versions_and_versions_never_repeat() {
    let mut s = store();
    let a = id("a");
    let v1 = s
        .commit(
            0,
            &a,
            CommitRequest {
                create: true,
                ops: vec![set("k", "1")],
                ..Default::default()
            },
        )
        .unwrap();
    s.commit(
        1,
        &a,
        CommitRequest {
            ops: vec![Op::Del {
                key: Bytes::from("k"),
                if_version: None,
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let v3 = s
        .commit(
            2,
            &a,
            CommitRequest {
                ops: vec![set("k", "1")],
                ..Default::default()
            },
        )
        .unwrap();
    assert!(v3.version > v1.version);
    // A client that read v1 cannot overwrite: same value, but not the same write.
    let stale = CommitRequest {
        ops: vec![Op::Set {
            key: Bytes::from("k"),
            value: Bytes::from("2"),
            if_version: Some(v1.version),
        }],
        ..Default::default()
    };
    assert_eq!(
        s.commit(3, &a, stale),
        Err(StoreError::Conflict(vec![Bytes::from("k")]))
    );
}

#[test]
fn limits_refuse_the_whole_commit() {
    let mut s = Store::new(StoreConfig {
        limits: Limits {
            max_value_bytes: 4,
            max_keys_per_session: 2,
        },
        ..StoreConfig::default()
    });
    let a = id("a");
    let too_big = CommitRequest {
        create: true,
        ops: vec![set("x", "1"), set("k", "12345")],
        ..Default::default()
    };
    assert!(matches!(
        s.commit(0, &a, too_big),
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert!(!s.exists(0, &a), "nothing applied, not even the create");
    let too_many = CommitRequest {
        create: true,
        ops: vec![set("a", "1"), set("b", "1"), set("c", "1")],
        ..Default::default()
    };
    assert!(matches!(
        s.commit(0, &a, too_many),
        Err(StoreError::TooManyKeys { count: 3, limit: 2 })
    ));
    let ok = CommitRequest {
        create: true,
        ops: vec![
            set("a", "1"),
            set("b", "1"),
            Op::Del {
                key: Bytes::from("a"),
                if_version: None,
            },
            set("c", "1"),
        ],
        ..Default::default()
    };
    assert!(s.commit(0, &a, ok).is_ok());
}

#[test]
fn incr_and_cas() {
    let mut s = store();
    let a = id("a");
    assert!(matches!(
        s.incr(0, &a, &Bytes::from("n"), 1, false),
        Err(StoreError::NoSession(_))
    ));
    assert_eq!(s.incr(0, &a, &Bytes::from("n"), 5, true).unwrap().0, 5);
    assert_eq!(s.incr(0, &a, &Bytes::from("n"), -7, false).unwrap().0, -2);
    s.commit(
        0,
        &a,
        CommitRequest {
            ops: vec![set("s", "abc")],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.incr(0, &a, &Bytes::from("s"), 1, false),
        Err(StoreError::NotInteger(_))
    ));
    s.commit(
        0,
        &a,
        CommitRequest {
            ops: vec![set("m", &i64::MAX.to_string())],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.incr(0, &a, &Bytes::from("m"), 1, false),
        Err(StoreError::Overflow(_))
    ));
    assert!(matches!(
        s.cas(0, &a, &Bytes::from("s"), b"abc", Bytes::from("xyz"))
            .unwrap(),
        sessiond_core::CasOutcome::Swapped { .. }
    ));
    assert!(matches!(
        s.cas(0, &a, &Bytes::from("s"), b"abc", Bytes::from("q"))
            .unwrap(),
        sessiond_core::CasOutcome::Mismatch { .. }
    ));
}

#[test]
fn reads_slide_expiry_at_once_but_reach_storage_in_bulk() {
    let mut s = store();
    create(&mut s, 0, "a", None, None);
    create(&mut s, 0, "b", None, None);
    s.take_mutations();
    // Reads and a touch: no storage write yet, but the expiry moved.
    s.read(400, &id("a"), ReadOptions::default()).unwrap();
    s.read(600, &id("a"), ReadOptions::default()).unwrap();
    assert!(s.touch(700, &id("b"), None));
    assert!(s.take_mutations().is_empty());
    assert!(
        s.read(1_500, &id("a"), ReadOptions::default())
            .unwrap()
            .is_some()
    );
    // One record per session, with the latest access.
    assert_eq!(s.record_accesses(), 2);
    let mut metas: Vec<(String, u64)> = s
        .take_mutations()
        .into_iter()
        .map(|m| match m {
            Mutation::PutMeta { id, meta } => (id.to_string(), meta.last_access),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    metas.sort();
    assert_eq!(metas, vec![("a".into(), 1_500), ("b".into(), 700)]);
    assert_eq!(s.record_accesses(), 0, "nothing new");
    // A write records its metadata itself; a destroyed session is skipped.
    s.read(1_600, &id("a"), ReadOptions::default()).unwrap();
    s.commit(
        1_700,
        &id("a"),
        CommitRequest {
            ops: vec![set("k", "v")],
            ..Default::default()
        },
    )
    .unwrap();
    s.read(1_650, &id("b"), ReadOptions::default()).unwrap();
    s.destroy(1_700, &id("b"));
    s.take_mutations();
    assert_eq!(s.record_accesses(), 0);
}

#[test]
fn regenerate_onto_an_expired_unpurged_id_replaces_it_entirely() {
    let mut s = store();
    create(&mut s, 0, "old", Some(10_000), None);
    s.commit(
        0,
        &id("old"),
        CommitRequest {
            ops: vec![set("user", "bob")],
            ..Default::default()
        },
    )
    .unwrap();
    create(&mut s, 0, "dead", Some(100), None);
    s.commit(
        0,
        &id("dead"),
        CommitRequest {
            ops: vec![set("stale", "x")],
            ..Default::default()
        },
    )
    .unwrap();
    s.take_mutations();
    // "dead" expired at 100 but nothing purged it yet.
    s.regenerate(200, &id("old"), &id("dead"), Some(0)).unwrap();
    let muts = s.take_mutations();
    assert!(
        muts.iter()
            .any(|m| matches!(m, Mutation::DelSession { id, keys }
            if id.as_str() == "dead" && keys.len() == 1)),
        "the dead session's stored fields are deleted: {muts:?}"
    );
    // The purge at the old deadline must not take the regenerated session.
    s.purge_expired(300, usize::MAX);
    let read = s
        .read(300, &id("dead"), ReadOptions::default())
        .unwrap()
        .unwrap();
    let keys: Vec<&[u8]> = read.fields.iter().map(|f| f.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"user"[..]], "only the moved data");
    // And it expires by its own deadline (the read at 300 slid it), once.
    assert_eq!(s.purge_expired(300 + 10_000 - 1, usize::MAX), 0);
    assert_eq!(s.purge_expired(300 + 10_000, usize::MAX), 1);
}

/// Destroying (or expiring) a regenerated session takes its old ids with
/// it: none of them may later answer for another session that happens to
/// take the same id.
#[test]
fn aliases_go_with_the_session_they_lead_to() {
    let clock = ManualClock::new(10_000);
    let mut s = Store::new(StoreConfig {
        default_ttl_ms: 1_000,
        regenerate_grace_ms: 60_000,
        limits: Limits::default(),
        memory: sessiond_core::MemoryLimit::default(),
    });
    let commit = |s: &mut Store, now, name: &str, v: &str, create| {
        s.commit(
            now,
            &id(name),
            CommitRequest {
                create,
                ops: vec![set("who", v)],
                ..Default::default()
            },
        )
    };
    let who = |s: &mut Store, now, name: &str| {
        s.read(now, &id(name), ReadOptions::default())
            .unwrap()
            .map(|r| r.fields[0].value.clone().unwrap())
    };

    // A chain: r1 → r2 → r3, then destroy through the newest id.
    commit(&mut s, clock.now(), "r1", "alice", true).unwrap();
    s.regenerate(clock.now(), &id("r1"), &id("r2"), None)
        .unwrap();
    s.regenerate(clock.now(), &id("r2"), &id("r3"), None)
        .unwrap();
    assert_eq!(
        who(&mut s, clock.now(), "r1").as_deref(),
        Some(&b"alice"[..])
    );
    assert_eq!(s.alias_count(), 2);
    s.take_mutations();
    assert!(s.destroy(clock.now(), &id("r3")));
    assert_eq!(s.alias_count(), 0);
    let deleted: Vec<String> = s
        .take_mutations()
        .into_iter()
        .filter_map(|m| match m {
            Mutation::DelAlias { old } => Some(old.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted.len(),
        2,
        "both aliases deleted on disk: {deleted:?}"
    );

    // Someone else's session takes the id r3: the old ids stay dead.
    commit(&mut s, clock.now(), "r3", "mallory", true).unwrap();
    assert_eq!(who(&mut s, clock.now(), "r1"), None);
    assert_eq!(who(&mut s, clock.now(), "r2"), None);
    assert!(!s.exists(clock.now(), &id("r1")));
    // And the old ids are free again.
    s.regenerate(clock.now(), &id("r3"), &id("r1"), Some(0))
        .unwrap();

    // Expiry does the same: a1 → a2, a2 expires before the alias would.
    commit(&mut s, clock.now(), "a1", "bob", true).unwrap();
    s.regenerate(clock.now(), &id("a1"), &id("a2"), None)
        .unwrap();
    clock.advance(1_000);
    s.purge_expired(clock.now(), 100);
    assert_eq!(s.alias_count(), 0);
    commit(&mut s, clock.now(), "a2", "eve", true).unwrap();
    assert_eq!(who(&mut s, clock.now(), "a1"), None);
}

/// An alias that leads to an id the session has moved away from (a second
/// regenerate with `GRACE 0`, or one whose own grace ended first) answers
/// nothing; when a later, unrelated session takes that id, the old alias
/// must not start answering for it. Found by the model test
/// (`tests/model.rs`): the store kept such aliases, so `r1` below read
/// mallory's session.
#[test]
fn an_alias_left_behind_by_a_later_move_never_answers_for_a_new_session() {
    let mut s = Store::new(StoreConfig {
        default_ttl_ms: 1_000,
        regenerate_grace_ms: 60_000,
        limits: Limits::default(),
        memory: sessiond_core::MemoryLimit::default(),
    });
    let commit = |s: &mut Store, now, name: &str, v: &str| {
        s.commit(
            now,
            &id(name),
            CommitRequest {
                create: true,
                ops: vec![set("who", v)],
                ..Default::default()
            },
        )
        .unwrap();
    };
    // r1 → r2 (grace), then r2 → r3 with GRACE 0: r1 leads nowhere.
    commit(&mut s, 100, "r1", "alice");
    s.regenerate(100, &id("r1"), &id("r2"), None).unwrap();
    s.regenerate(110, &id("r2"), &id("r3"), Some(0)).unwrap();
    assert!(!s.exists(120, &id("r1")));
    // Someone else's session takes r2: r1 stays dead.
    commit(&mut s, 130, "r2", "mallory");
    assert!(!s.exists(140, &id("r1")));
    assert_eq!(s.read(140, &id("r1"), ReadOptions::default()), Ok(None));
    assert!(s.regenerate(150, &id("r1"), &id("x"), None).is_err());

    // The same when the middle alias ends before the first: a1 → a2 (60 s),
    // a2 → a3 (100 ms); after 100 ms a2 is free, a1 must not follow it.
    commit(&mut s, 1_000, "a1", "bob");
    s.regenerate(1_000, &id("a1"), &id("a2"), None).unwrap();
    s.regenerate(1_010, &id("a2"), &id("a3"), Some(100))
        .unwrap();
    assert!(s.exists(1_109, &id("a1")), "a1 → a2 → a3 in the grace");
    assert!(!s.exists(1_110, &id("a1")));
    commit(&mut s, 1_120, "a2", "eve");
    assert!(!s.exists(1_130, &id("a1")));
}

/// Conditions and named-key reads on a big session, through the one-pass
/// lookups: every condition is checked against its own key, conflicts are
/// named in the order the ops gave them, and nothing is applied on conflict.
#[test]
fn many_conditions_on_a_big_session() {
    let mut s = store();
    let ops: Vec<Op> = (0..2_000).map(|i| set(&format!("k{i:04}"), "v")).collect();
    s.commit(
        1,
        &id("big"),
        CommitRequest {
            create: true,
            ops,
            ..Default::default()
        },
    )
    .unwrap();
    let v1 = s.snapshot(&id("big"), false, None).unwrap().version;
    let cond = |key: String, if_version| Op::Set {
        key: Bytes::from(key),
        value: Bytes::from("w"),
        if_version: Some(if_version),
    };
    // Conditions given in descending key order, two of them stale.
    let mut ops: Vec<Op> = (0..2_000)
        .rev()
        .map(|i| cond(format!("k{i:04}"), v1))
        .collect();
    ops.push(cond("k0007".into(), v1 - 1));
    ops.push(cond("absent".into(), 3));
    let err = s
        .commit(
            2,
            &id("big"),
            CommitRequest {
                ops,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict(vec![Bytes::from("k0007"), Bytes::from("absent")])
    );
    let keys: Vec<Bytes> = ["k1999", "nope", "k0000"].map(Bytes::from).to_vec();
    let read = s.snapshot(&id("big"), false, Some(&keys)).unwrap();
    assert_eq!(read.version, v1, "nothing applied");
    let got: Vec<(u64, Option<Bytes>)> = read
        .fields
        .into_iter()
        .map(|f| (f.version, f.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (v1, Some(Bytes::from("v"))),
            (0, None),
            (v1, Some(Bytes::from("v")))
        ]
    );
    // All conditions right: applied.
    let ops: Vec<Op> = (0..2_000).map(|i| cond(format!("k{i:04}"), v1)).collect();
    s.commit(
        3,
        &id("big"),
        CommitRequest {
            ops,
            ..Default::default()
        },
    )
    .unwrap();
}
