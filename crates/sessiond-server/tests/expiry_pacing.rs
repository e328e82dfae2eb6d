//! A mass expiry runs at the storage writer's pace: the timekeeper removes
//! one batch, then waits until the writer has applied it before the next.
//! Storage here is held shut by a gate, so the pace is visible.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sessiond_client::{Client, Commit};
use sessiond_core::{ManualClock, Mutation};
use sessiond_server::storage::{Loaded, MemoryStorage, Storage, StorageError};
use sessiond_server::{Config, Server};
use tokio_util::sync::CancellationToken;

/// How many more storage transactions may run.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<u64>, Condvar)>);

impl Gate {
    fn set(&self, permits: u64) {
        *self.0.0.lock().unwrap() = permits;
        self.0.1.notify_all();
    }

    fn pass(&self) {
        let mut left = self.0.0.lock().unwrap();
        while *left == 0 {
            left = self.0.1.wait(left).unwrap();
        }
        *left -= 1;
    }
}

struct GatedStorage {
    inner: MemoryStorage,
    gate: Gate,
}

impl Storage for GatedStorage {
    fn load(&mut self) -> Result<Loaded, StorageError> {
        self.inner.load()
    }
    fn apply(&mut self, batch: &[Mutation], floor: u64, sync: bool) -> Result<(), StorageError> {
        self.gate.pass();
        self.inner.apply(batch, floor, sync)
    }
    fn set_fence_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        self.inner.set_fence_epoch(epoch)
    }
}

async fn sessions(c: &mut Client) -> u64 {
    let info = c.info(Some("sessions")).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("sessions:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {info}"))
}

async fn settle_at(c: &mut Client, want: u64) {
    // A hang guard, not a speed requirement.
    for _ in 0..3000 {
        if sessions(c).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sessions never reached {want}, at {}", sessions(c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_expiry_removes_no_faster_than_storage_applies() {
    let gate = Gate::default();
    gate.set(u64::MAX);
    let clock = ManualClock::new(1_000_000);
    let storage = GatedStorage {
        inner: MemoryStorage::default(),
        gate: gate.clone(),
    };
    let server = Server::bind_with(
        Config::for_tests(),
        Box::new(storage),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server.run(shutdown.clone()));

    let mut c = Client::connect(addr).await.unwrap();
    for i in 0..2_500 {
        c.commit(
            &format!("s{i}"),
            &Commit::new()
                .create()
                .ttl(Duration::from_secs(10))
                .set("k", "v"),
        )
        .await
        .unwrap();
    }
    assert_eq!(sessions(&mut c).await, 2_500);

    // Storage stops; every session expires.
    gate.set(0);
    clock.advance(11_000);
    // One batch of 1,000 goes, then the timekeeper waits for the writer.
    settle_at(&mut c, 1_500).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sessions(&mut c).await, 1_500, "removed ahead of storage");

    // Storage moves again: the rest goes.
    gate.set(u64::MAX);
    settle_at(&mut c, 0).await;

    shutdown.cancel();
    let _ = running.await;
}
