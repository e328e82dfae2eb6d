//! Crash consistency beyond `kill -9`: power loss. redb runs on a simulated
//! disk ([`storage_support::PowerLossDisk`]) that, at a random operation,
//! drops everything written since the last `sync_data` except a prefix of
//! it, the last write of which is torn. Over many crash points and several
//! boots in a row it shows:
//!
//! - the file always opens again and loads (redb's recovery runs);
//! - what is on disk is always the state after some *prefix* of the
//!   batches the server sent, in order (no holes, nothing reordered);
//! - under `always`, that prefix holds every acknowledged batch;
//! - under `everysec`, every batch up to the last completed periodic sync
//!   (so at most the changes of one sync interval are lost; the server
//!   syncs every second, the test every few milliseconds);
//! - the fencing epoch recorded at each start never goes back.
//!
//! `CRASH_POINTS=n` runs n scenarios per policy (default 60, three boots
//! each); a failure prints the seed to run it again (`CRASH_SEED=`).

mod storage_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use sessiond_core::{Field, Mutation, SessionId, SessionMeta};
use sessiond_server::config::Durability;
use sessiond_server::persist::{Persistence, WriterOptions};
use sessiond_server::storage::Storage;
use storage_support::{PowerLossDisk, power_loss_redb};

const SESSIONS: u64 = 12;
const BATCHES_PER_BOOT: u64 = 120;
const BOOTS: usize = 3;

/// session number → value (a global batch number), absent when deleted.
type Model = BTreeMap<u64, u64>;

fn sid(n: u64) -> SessionId {
    SessionId::parse(format!("s{n:02}").as_bytes()).unwrap()
}

/// Batch `g`: every 7th deletes its session, the others set its value to g.
fn batch(g: u64) -> (u64, Option<u64>, Vec<Mutation>) {
    let n = g % SESSIONS;
    let id = sid(n);
    if g.is_multiple_of(7) {
        let m = vec![Mutation::DelSession {
            id,
            keys: vec![Bytes::from_static(b"v")],
        }];
        (n, None, m)
    } else {
        let meta = SessionMeta {
            version: g,
            created: 1,
            last_access: 1,
            ttl_ms: 3_600_000,
            lifetime_deadline: None,
        };
        let m = vec![
            Mutation::PutMeta {
                id: id.clone(),
                meta,
            },
            Mutation::PutField {
                id,
                key: Bytes::from_static(b"v"),
                field: Field {
                    value: Bytes::from(g.to_string()),
                    version: g,
                },
            },
        ];
        (n, Some(g), m)
    }
}

fn apply(model: &mut Model, g: u64) {
    match batch(g) {
        (n, Some(v), _) => {
            model.insert(n, v);
        }
        (n, None, _) => {
            model.remove(&n);
        }
    }
}

fn model_of(loaded: &sessiond_server::storage::Loaded) -> Result<Model, String> {
    let mut m = Model::new();
    for (id, s) in &loaded.sessions {
        let n: u64 = id.as_str()[1..].parse().map_err(|e| format!("{id}: {e}"))?;
        let (_, f) = s
            .fields
            .iter()
            .find(|(k, _)| k.as_ref() == b"v")
            .ok_or_else(|| format!("session {id} without its field"))?;
        let v: u64 = std::str::from_utf8(&f.value)
            .map_err(|e| e.to_string())?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if v != s.meta.version || f.version != v {
            return Err(format!(
                "session {id}: field {v} of version {}, meta version {}",
                f.version, s.meta.version
            ));
        }
        m.insert(n, v);
    }
    Ok(m)
}

const CRASHED_OPENING: &str = "crashed while opening";

struct Boot {
    /// The batches sent, by global number, in order.
    sent: Vec<u64>,
    /// How many of them must survive.
    must_survive: usize,
    /// The fencing epoch this boot recorded (if recording it succeeded).
    epoch: Option<u64>,
}

/// One boot: open (maybe crashing already), load, record the epoch, write
/// until the power goes or the batches run out.
async fn boot(
    disk: &PowerLossDisk,
    policy: Durability,
    first_g: u64,
) -> Result<(Model, u64, Boot), String> {
    let nothing = Boot {
        sent: Vec::new(),
        must_survive: 0,
        epoch: None,
    };
    let mut storage = match power_loss_redb(disk) {
        Ok(s) => s,
        // The power went while opening: nothing was acknowledged.
        Err(_) if disk.crashed() => return Err(CRASHED_OPENING.into()),
        Err(e) => return Err(format!("open failed: {e}")),
    };
    let loaded = storage.load().map_err(|e| format!("load failed: {e}"))?;
    let model = model_of(&loaded)?;
    let epoch = loaded.fence_epoch + 1;
    if storage.set_fence_epoch(epoch).is_err() {
        return Ok((model, loaded.fence_epoch, nothing));
    }
    let options = WriterOptions {
        sync_every: match policy {
            Durability::Always => Duration::ZERO,
            _ => Duration::from_millis(3),
        },
        gather: Duration::ZERO,
        retry_min: Duration::from_millis(1),
        retry_max: Duration::from_millis(2),
        ..WriterOptions::for_policy(policy)
    };
    let mut p = Persistence::start_with_options(Box::new(storage), policy, options);
    let mut sent = Vec::new();
    let mut acked = 0usize;
    let mut pending = Vec::new();
    for i in 0..BATCHES_PER_BOOT {
        if disk.crashed() {
            break;
        }
        let g = first_g + i;
        let (_, _, m) = batch(g);
        let seq = p.submit(m, g).expect("a batch");
        sent.push(g);
        pending.push((seq, sent.len()));
        // Under `always`, groups of four wait together (group commit).
        if policy == Durability::Always && (pending.len() == 4 || i + 1 == BATCHES_PER_BOOT) {
            for (seq, n) in pending.drain(..) {
                if p.waiter(Some(seq)).unwrap().wait().await.is_ok() {
                    acked = acked.max(n);
                }
            }
        } else if policy != Durability::Always && i % 6 == 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if policy != Durability::Always {
        // Whatever the last completed sync covered must survive.
        acked = usize::try_from(p.progress().durable).unwrap();
    }
    disk.crash();
    let must_survive = if policy == Durability::Always {
        acked
    } else {
        // Read after the crash: no sync completes after it.
        acked.max(usize::try_from(p.progress().durable).unwrap())
    };
    let _ = p.shutdown();
    Ok((
        model,
        loaded.fence_epoch,
        Boot {
            sent,
            must_survive,
            epoch: Some(epoch),
        },
    ))
}

/// Whether `after` is `before` with some prefix of `sent` of at least
/// `must_survive` batches applied.
fn is_prefix_state(
    before: &Model,
    sent: &[u64],
    must_survive: usize,
    after: &Model,
) -> Result<usize, String> {
    let mut m = before.clone();
    for g in &sent[..must_survive] {
        apply(&mut m, *g);
    }
    for p in must_survive..=sent.len() {
        if &m == after {
            return Ok(p);
        }
        if p < sent.len() {
            apply(&mut m, sent[p]);
        }
    }
    Err(format!(
        "the state on disk is no prefix of at least {must_survive} of the {} batches sent: before {before:?}, after {after:?}, sent {sent:?}",
        sent.len()
    ))
}

/// Ops a boot of `policy` takes without a crash (to spread crash points).
async fn ops_of_a_boot(policy: Durability) -> u64 {
    let disk = PowerLossDisk::new(None, 1);
    let (_, _, b) = boot(&disk, policy, 1).await.unwrap();
    assert_eq!(b.sent.len() as u64, BATCHES_PER_BOOT);
    disk.ops()
}

/// Runs `BOOTS` boots, each crashing at a random operation; returns how
/// many crashed in the middle of writing (not before, not after).
async fn scenario(policy: Durability, seed: u64, ops_per_boot: u64) -> Result<u64, String> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut image = Vec::new();
    let mut g = 1;
    let mut last_epoch = 0;
    let mut prev: Option<(Model, Boot)> = None;
    let mut mid_write = 0;
    for b in 0..BOOTS {
        let crash_at = 1 + next() % (ops_per_boot + 10);
        let disk = PowerLossDisk::from_image(image.clone(), Some(crash_at), next());
        let result = boot(&disk, policy, g).await;
        let (model, epoch_on_disk, this) = match result {
            Ok(r) => r,
            Err(e) if e == CRASHED_OPENING => {
                // A new file is created under a temporary name and renamed
                // into place once its header is synced (RedbStorage::open):
                // a crash while creating it leaves no file.
                if !image.is_empty() {
                    image = disk.durable_image();
                }
                continue;
            }
            Err(e) => return Err(format!("boot {b} (crash at op {crash_at}): {e}")),
        };
        if epoch_on_disk < last_epoch {
            return Err(format!(
                "boot {b}: the fencing epoch went back from {last_epoch} to {epoch_on_disk}"
            ));
        }
        if let Some((before, previous)) = &prev {
            is_prefix_state(before, &previous.sent, previous.must_survive, &model)
                .map_err(|e| format!("boot {b} (crash at op {crash_at}): {e}"))?;
        }
        if let Some(e) = this.epoch {
            last_epoch = e;
        }
        if !this.sent.is_empty() && (this.sent.len() as u64) < BATCHES_PER_BOOT {
            mid_write += 1;
        }
        g += BATCHES_PER_BOOT;
        image = disk.durable_image();
        prev = Some((model, this));
    }
    // Finally, without a crash: the file opens, and holds a prefix state.
    let disk = PowerLossDisk::from_image(image, None, 7);
    let mut storage = power_loss_redb(&disk).map_err(|e| format!("final open: {e}"))?;
    let loaded = storage.load().map_err(|e| format!("final load: {e}"))?;
    if loaded.fence_epoch < last_epoch {
        return Err(format!(
            "final: the fencing epoch went back from {last_epoch} to {}",
            loaded.fence_epoch
        ));
    }
    let model = model_of(&loaded)?;
    if let Some((before, previous)) = &prev {
        is_prefix_state(before, &previous.sent, previous.must_survive, &model)
            .map_err(|e| format!("final: {e}"))?;
    }
    Ok(mid_write)
}

async fn run(policy: Durability) {
    let points: u64 = std::env::var("CRASH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ops = ops_of_a_boot(policy).await;
    let seeds: Vec<u64> = match std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => (1..=points).collect(),
    };
    let mut failures = Vec::new();
    let (mut boots, mut mid_write) = (0, 0);
    for seed in &seeds {
        match scenario(policy, *seed, ops).await {
            Ok(n) => mid_write += n,
            Err(e) => failures.push(format!("{policy:?} CRASH_SEED={seed}: {e}")),
        }
        boots += BOOTS as u64;
    }
    eprintln!(
        "{policy:?}: {} scenarios, {boots} crash points ({mid_write} in the middle of writing), {ops} disk operations per boot",
        seeds.len()
    );
    // The crash points must mostly land while batches are being written,
    // or the test shows little.
    assert!(
        seeds.len() == 1 || mid_write * 3 >= boots,
        "only {mid_write} of {boots} crash points hit while writing"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_always_loses_no_acknowledged_write() {
    run(Durability::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_everysec_loses_only_what_the_last_sync_did_not_cover() {
    run(Durability::Everysec).await;
}
