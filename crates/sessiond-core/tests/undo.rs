//! Undo of batches storage could not confirm (a single server under
//! `--durability always`; see `sessiond_core::store::undo`).
//!
//! Generated logs run on an engine with undo on, as the server drives it:
//! each input whose mutations went out is sealed as the next batch, and a
//! model of the disk receives the batches that "synced". At a random batch
//! the sync fails: a random part of the failed batches reaches the disk
//! anyway (a failed fsync leaves unknown what got there), and the engine
//! undoes everything after the last durable batch. Then:
//! - the sessions and aliases in memory are exactly those of an engine that
//!   ran the log only up to the last durable batch (last-access times
//!   aside: reads after it may have slid sessions, which is no write);
//! - the disk, after the undo's own mutations, holds exactly what memory
//!   holds, whatever part of the failed batches had reached it;
//! - the memory accounting matches a recount, and the engine runs on
//!   (expiry, eviction) with memory and disk still agreeing.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use sessiond_core::engine::Command;
use sessiond_core::store::{EvictionPolicy, MemoryLimit};
use sessiond_core::workload::{Driver, LogStep, Rng, Shape, generate};
use sessiond_core::{
    CommitRequest, Engine, Field, LockTable, Millis, Mutation, Op, SessionId, SessionMeta, Store,
    StoreConfig,
};

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

fn engine(memory: MemoryLimit, undo: bool) -> Engine {
    let mut engine = Engine::new(Store::new(config(memory)), LockTable::new(1, 3_000));
    engine.keep_undo(undo);
    engine
}

/// A session as the tests compare it: its metadata without the last
/// access (`None` when storage has fields but no metadata, which must
/// never happen) and its fields.
type SessionView = (
    Option<(u64, Millis, u64, Option<Millis>)>,
    Vec<(Bytes, Field)>,
);
type View = (
    BTreeMap<SessionId, SessionView>,
    BTreeMap<SessionId, (SessionId, Millis)>,
);

fn meta_view(m: &SessionMeta) -> (u64, Millis, u64, Option<Millis>) {
    (m.version, m.created, m.ttl_ms, m.lifetime_deadline)
}

fn memory_view(engine: &Engine) -> View {
    let image = engine.store().image();
    let sessions = image
        .sessions
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                (Some(meta_view(&s.meta)), s.fields.iter().collect()),
            )
        })
        .collect();
    let aliases = image
        .aliases
        .iter()
        .map(|(old, a)| (old.clone(), (a.target.clone(), a.until)))
        .collect();
    (sessions, aliases)
}

/// What redb holds, as the storage applies mutations.
#[derive(Debug, Default)]
struct Disk {
    meta: BTreeMap<SessionId, SessionMeta>,
    fields: BTreeMap<(SessionId, Bytes), Field>,
    aliases: BTreeMap<SessionId, (SessionId, Millis)>,
}

impl Disk {
    fn apply(&mut self, m: &Mutation) {
        match m {
            Mutation::PutMeta { id, meta } => {
                self.meta.insert(id.clone(), *meta);
            }
            Mutation::PutField { id, key, field } => {
                self.fields.insert((id.clone(), key.clone()), field.clone());
            }
            Mutation::DelField { id, key } => {
                self.fields.remove(&(id.clone(), key.clone()));
            }
            Mutation::DelSession { id, keys } => {
                self.meta.remove(id);
                for key in keys {
                    self.fields.remove(&(id.clone(), key.clone()));
                }
            }
            Mutation::PutAlias { old, new, until } => {
                self.aliases.insert(old.clone(), (new.clone(), *until));
            }
            Mutation::DelAlias { old } => {
                self.aliases.remove(old);
            }
        }
    }

    fn view(&self) -> View {
        let mut sessions: BTreeMap<SessionId, SessionView> = self
            .meta
            .iter()
            .map(|(id, m)| (id.clone(), (Some(meta_view(m)), Vec::new())))
            .collect();
        for ((id, key), field) in &self.fields {
            sessions
                .entry(id.clone())
                .or_insert((None, Vec::new()))
                .1
                .push((key.clone(), field.clone()));
        }
        (sessions, self.aliases.clone())
    }
}

fn check_memory(engine: &Engine, what: &str) {
    assert_eq!(
        engine.store().used_memory(),
        engine.store().recount_memory(),
        "{what}: the memory kept incrementally differs from a recount"
    );
}

/// One failure: the log runs until `durable + failed` batches went out
/// (batches up to `durable` synced), then the sync fails.
fn check(seed: u64, memory: MemoryLimit) {
    let log: Vec<LogStep> = generate(
        seed,
        Shape {
            steps: 1_500,
            ..Shape::default()
        },
    );
    let mut rng = Rng::new(seed ^ 0x0dd0);
    let durable = 5 + rng.below(60);
    let failed = 1 + rng.below(6);

    let mut a = engine(memory, true);
    let mut driver = Driver::new(1_000);
    let mut disk = Disk::default();
    let mut batches: Vec<Vec<Mutation>> = Vec::new();
    // The index of the step that made batch `durable`.
    let mut durable_step = None;
    let mut steps = log.iter().enumerate();
    for (i, step) in steps.by_ref() {
        let record = driver.step(&mut a, step);
        if record.mutations.is_empty() {
            a.seal_undo(None);
            continue;
        }
        batches.push(record.mutations);
        let seq = batches.len() as u64;
        a.seal_undo(Some(seq));
        if seq <= durable {
            for m in &batches[batches.len() - 1] {
                disk.apply(m);
            }
            // The writer reports durability a little behind.
            a.forget_undo_through(seq.saturating_sub(2));
            if seq == durable {
                durable_step = Some(i);
            }
        }
        if seq == durable + failed {
            break;
        }
    }
    let Some(durable_step) = durable_step else {
        return; // a log too quiet to reach the failure point
    };
    check_memory(&a, "before the failure");
    assert_eq!(
        a.store()
            .unconfirmed_mark(&SessionId::parse(b"nothing-here").unwrap()),
        None
    );

    // Part of what failed reached the disk anyway: whole batches, then part
    // of one.
    let unsynced = &batches[durable as usize..];
    let landed = rng.below(unsynced.len() as u64 + 1) as usize;
    for batch in &unsynced[..landed] {
        for m in batch {
            disk.apply(m);
        }
    }
    if let Some(batch) = unsynced.get(landed) {
        let part = rng.below(batch.len() as u64 + 1) as usize;
        for m in &batch[..part] {
            disk.apply(m);
        }
    }

    let undone = a.undo_after(driver.now, durable);
    assert_eq!(
        undone.result.batches as u64, failed,
        "seed {seed}: every batch after the durable one is undone"
    );
    for m in &undone.effects.mutations {
        disk.apply(m);
    }
    check_memory(&a, "after the undo");

    // Memory is what it was when the last durable batch was made.
    let mut b = engine(memory, false);
    let mut replay = Driver::new(1_000);
    for step in &log[..=durable_step] {
        replay.step(&mut b, step);
    }
    assert_eq!(
        memory_view(&a),
        memory_view(&b),
        "seed {seed}: memory after undoing batches {}..={} differs from the state at batch {durable}",
        durable + 1,
        durable + failed
    );
    assert!(
        a.last_version() >= b.last_version(),
        "versions never go back"
    );
    // And storage holds exactly that, whatever of the failure reached it.
    assert_eq!(
        disk.view(),
        memory_view(&a),
        "seed {seed}: disk and memory differ after the undo ({landed} failed batches had landed)"
    );

    // The engine goes on (expiry, eviction, the indexes), disk in step.
    for (_, step) in steps.take(300) {
        let record = driver.step(&mut a, step);
        for m in &record.mutations {
            disk.apply(m);
        }
        a.seal_undo(None);
        check_memory(&a, "after the undo, running on");
    }
    assert_eq!(
        disk.view(),
        memory_view(&a),
        "seed {seed}: disk and memory drift apart after the undo"
    );
}

#[test]
fn undo_puts_back_the_durable_state_in_memory_and_on_disk() {
    for seed in 0..40 {
        check(seed, MemoryLimit::default());
    }
}

#[test]
fn undo_puts_back_sessions_evicted_by_an_undone_write() {
    for seed in 100..130 {
        check(
            seed,
            MemoryLimit {
                max_bytes: 4 * 400,
                policy: EvictionPolicy::AllkeysLru,
            },
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn undo_after_any_failure_point(seed in any::<u64>()) {
        check(seed, MemoryLimit::default());
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s.as_bytes()).unwrap()
}

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        if_version: None,
    }
}

#[test]
fn an_undone_write_with_a_request_id_applies_again_when_retried() {
    let mut e = engine(MemoryLimit::default(), true);
    let id = sid("s1");
    let commit = |reqid: &str, value: &str| Command::Idempotent {
        reqid: reqid.into(),
        cmd: Box::new(Command::Commit {
            id: id.clone(),
            request: CommitRequest {
                create: true,
                ops: vec![set("n", value)],
                ..Default::default()
            },
            fence: Default::default(),
        }),
    };
    assert!(e.apply(1_000, 7, commit("c7-1", "1")).effects.wrote());
    e.seal_undo(Some(1));
    e.forget_undo_through(1);
    assert!(e.apply(1_010, 7, commit("c7-2", "2")).effects.wrote());
    e.seal_undo(Some(2));
    // Batch 2 is not durable: a read of s1 must wait for it.
    let read = Command::Read {
        id: id.clone(),
        opts: Default::default(),
    };
    assert_eq!(e.unconfirmed_mark(1_011, &read), Some(2));

    e.undo_after(1_020, 1);
    assert_eq!(e.unconfirmed_mark(1_021, &read), None);
    let value = |e: &Engine| e.store().get(1_030, &id).unwrap().fields.get(b"n").unwrap();
    assert_eq!(value(&e).value, "1", "the undone write is gone");
    // The retry is applied, not answered from memory.
    let retried = e.apply(1_030, 7, commit("c7-2", "2"));
    assert!(
        retried.effects.wrote(),
        "a retry of an undone write applies"
    );
    assert_eq!(value(&e).value, "2");
    // The durable one is still remembered.
    let repeat = e.apply(1_040, 7, commit("c7-1", "1"));
    assert!(!repeat.effects.wrote());
    assert_eq!(value(&e).value, "2");
}

#[test]
fn reads_through_an_alias_wait_for_an_unconfirmed_regenerate() {
    let mut e = engine(MemoryLimit::default(), true);
    let (old, new) = (sid("old"), sid("new"));
    e.apply(
        1_000,
        1,
        Command::Commit {
            id: old.clone(),
            request: CommitRequest {
                create: true,
                ops: vec![set("u", "a")],
                ..Default::default()
            },
            fence: Default::default(),
        },
    );
    e.seal_undo(Some(1));
    e.forget_undo_through(1);
    let regenerated = e.apply(
        1_010,
        1,
        Command::Regenerate {
            id: old.clone(),
            grace_ms: Some(5_000),
            new_id: new.clone(),
        },
    );
    assert!(regenerated.effects.wrote());
    e.seal_undo(Some(2));
    let exists = |id: &SessionId| Command::Exists { id: id.clone() };
    assert_eq!(e.unconfirmed_mark(1_011, &exists(&old)), Some(2));
    assert_eq!(e.unconfirmed_mark(1_011, &exists(&new)), Some(2));

    let undone = e.undo_after(1_020, 1);
    assert_eq!(undone.result.sessions, 2);
    assert_eq!(undone.result.aliases, 1);
    assert!(e.store().get(1_021, &old).is_some(), "the old id is back");
    assert!(e.store().get(1_021, &new).is_none(), "the new id is gone");
    assert_eq!(e.store().alias_count(), 0);
    assert_eq!(e.store().used_memory(), e.store().recount_memory());
}
