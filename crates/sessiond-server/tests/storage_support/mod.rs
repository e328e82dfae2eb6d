//! Storage backends for tests: one that fails writes on command, one that
//! simulates power loss.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use redb::backends::FileBackend;
use redb::{Builder, StorageBackend};
use sessiond_server::storage::RedbStorage;

/// A switch shared by a test and the backends it opened.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    failing: Arc<AtomicBool>,
    /// Writes, set_len and syncs refused so far.
    pub refused: Arc<AtomicU64>,
    // While true, syncs wait (a slow disk); the count of syncs waiting.
    held: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    /// Syncs waiting now.
    pub syncs_waiting: Arc<AtomicU64>,
}

impl FaultSwitch {
    /// From now on every write, resize and sync fails with ENOSPC (`true`),
    /// or works again (`false`). Reads always work.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// While `on`, every sync waits (a disk that takes its time); `false`
    /// lets them go on (to succeed or fail as the switch says then).
    pub fn hold_syncs(&self, on: bool) {
        let (held, cvar) = &*self.held;
        *held.lock() = on;
        cvar.notify_all();
    }

    fn wait_while_held(&self) {
        let (held, cvar) = &*self.held;
        let mut held = held.lock();
        if *held {
            self.syncs_waiting.fetch_add(1, Ordering::SeqCst);
            // Bounded: a test that forgets to let go fails instead of hanging.
            for _ in 0..600 {
                if !*held {
                    break;
                }
                cvar.wait_for(&mut held, std::time::Duration::from_millis(100));
            }
            self.syncs_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            // ENOSPC, as a full disk reports it.
            Err(io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

/// redb's file backend, failing writes while its switch is on.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    switch: FaultSwitch,
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.switch.wait_while_held();
        self.switch.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.switch.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

/// redb storage in the file at `path` whose writes fail while `switch` is
/// on; reopening (after a failure) opens the file again, through a new
/// backend on the same switch.
pub fn faulty_redb(path: &Path, switch: &FaultSwitch) -> RedbStorage {
    let path: PathBuf = path.to_owned();
    let switch = switch.clone();
    RedbStorage::open_with(move || {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        Builder::new().create_with_backend(FaultyBackend {
            inner: FileBackend::new(file)?,
            switch: switch.clone(),
        })
    })
    .expect("open faulty redb")
}

/// A disk that loses power: writes land in a volatile image; `sync_data`
/// makes the volatile image durable. At the chosen operation the power goes
/// out: the durable image gets a prefix of the writes since the last sync,
/// the last of them torn (a random prefix of its bytes), and every later
/// operation fails.
#[derive(Debug, Clone)]
pub struct PowerLossDisk(Arc<Mutex<Disk>>);

#[derive(Debug)]
struct Disk {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    // Since the last sync, in order: (offset, bytes) or a resize.
    unsynced: Vec<Op>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    rng: u64,
    syncs: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply_op(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(offset, data) => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => image.resize(*len as usize, 0),
    }
}

impl Disk {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Counts one operation; at the crash point, loses power.
    fn step(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other("power lost"));
        }
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops >= at) {
            self.lose_power();
            return Err(io::Error::other("power lost"));
        }
        Ok(())
    }

    fn lose_power(&mut self) {
        self.crashed = true;
        let n = self.unsynced.len();
        let kept = if n == 0 {
            0
        } else {
            (self.next() % (n as u64 + 1)) as usize
        };
        let unsynced = std::mem::take(&mut self.unsynced);
        let mut image = std::mem::take(&mut self.durable);
        for (i, op) in unsynced.iter().take(kept).enumerate() {
            match op {
                // The last write that reached the platter did so partly.
                Op::Write(offset, data) if i + 1 == kept && !data.is_empty() => {
                    let torn = (self.next() % data.len() as u64) as usize;
                    apply_op(&mut image, &Op::Write(*offset, data[..torn].to_vec()));
                }
                op => apply_op(&mut image, op),
            }
        }
        self.durable = image;
    }
}

impl PowerLossDisk {
    /// An empty disk that loses power at operation `crash_at` (writes,
    /// resizes and syncs counted), or never.
    pub fn new(crash_at: Option<u64>, seed: u64) -> Self {
        Self::from_image(Vec::new(), crash_at, seed)
    }

    /// A disk holding `image` (what survived a previous power loss).
    pub fn from_image(image: Vec<u8>, crash_at: Option<u64>, seed: u64) -> Self {
        Self(Arc::new(Mutex::new(Disk {
            durable: image.clone(),
            volatile: image,
            unsynced: Vec::new(),
            ops: 0,
            crash_at,
            crashed: false,
            rng: seed | 1,
            syncs: 0,
        })))
    }

    /// Loses power now (if it has not yet).
    pub fn crash(&self) {
        let mut d = self.0.lock();
        if !d.crashed {
            d.lose_power();
        }
    }

    /// Whether power was lost.
    pub fn crashed(&self) -> bool {
        self.0.lock().crashed
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.0.lock().ops
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.0.lock().syncs
    }

    /// What is on the platter: after a crash, what survived it.
    pub fn durable_image(&self) -> Vec<u8> {
        self.0.lock().durable.clone()
    }

    /// A redb backend on this disk.
    pub fn backend(&self) -> PowerLossBackend {
        PowerLossBackend(self.clone())
    }
}

/// A redb backend on a [`PowerLossDisk`].
#[derive(Debug)]
pub struct PowerLossBackend(PowerLossDisk);

impl StorageBackend for PowerLossBackend {
    fn len(&self) -> io::Result<u64> {
        let d = self.0.0.lock();
        if d.crashed {
            return Err(io::Error::other("power lost"));
        }
        Ok(d.volatile.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.0.0.lock();
        if d.crashed {
            return Err(io::Error::other("power lost"));
        }
        let start = offset as usize;
        let src = d
            .volatile
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.0.0.lock();
        d.step()?;
        let op = Op::SetLen(len);
        apply_op(&mut d.volatile, &op);
        d.unsynced.push(op);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.0.0.lock();
        d.step()?;
        d.durable = d.volatile.clone();
        d.unsynced.clear();
        d.syncs += 1;
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.0.lock();
        d.step()?;
        let op = Op::Write(offset, data.to_vec());
        apply_op(&mut d.volatile, &op);
        d.unsynced.push(op);
        Ok(())
    }
}

/// redb storage on `disk`; reopening after a failure opens the same disk.
pub fn power_loss_redb(
    disk: &PowerLossDisk,
) -> Result<RedbStorage, sessiond_server::storage::StorageError> {
    let disk = disk.clone();
    RedbStorage::open_with(move || Builder::new().create_with_backend(disk.backend()))
}
