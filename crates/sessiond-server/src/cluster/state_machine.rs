//! Applies committed entries to the engine; snapshots are the engine's
//! image, kept in `data_dir/raft-snapshot.bin` (written to a temporary file,
//! synced, then renamed, so a crash leaves the old or the new one whole).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sessiond_core::Millis;
use sessiond_core::engine::{EngineImage, InputResult};
use tokio::sync::watch;

use super::{Applied, NodeId, TypeConfig};
use crate::state::Shared;

/// What the snapshot file holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    last_now: Millis,
    image: Vec<u8>,
}

/// A [`SnapshotFile`] read without copying its image (a GB with a million
/// sessions): postcard writes a `Vec<u8>` and a `&[u8]` alike.
#[derive(Debug, Deserialize)]
struct SnapshotFileView<'a> {
    meta: SnapshotMeta<NodeId, BasicNode>,
    last_now: Millis,
    #[serde(borrow)]
    image: &'a [u8],
}

#[derive(Debug, Default)]
struct Progress {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    // The latest time applied: the engine's time never goes back.
    last_now: Millis,
    snapshot_seq: u64,
}

/// The state machine: the engine lives in [`Shared`]; this tracks what of
/// the log it has applied.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    progress: Arc<Mutex<Progress>>,
    path: PathBuf,
    applied_tx: Arc<watch::Sender<u64>>,
    // `Progress::last_now`, readable without the lock (reads served by the
    // leader never read at a time behind what was applied).
    applied_now: Arc<AtomicU64>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    /// Opens the state machine of `data_dir`, restoring the engine from the
    /// last snapshot there if any. Also returns a receiver of the applied
    /// index.
    ///
    /// # Errors
    /// A snapshot file that cannot be read or decoded.
    pub fn open(
        shared: Arc<Shared>,
        data_dir: &Path,
    ) -> anyhow::Result<(Self, watch::Receiver<u64>)> {
        let path = data_dir.join("raft-snapshot.bin");
        let mut progress = Progress::default();
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            let file: SnapshotFileView<'_> = postcard::from_bytes(&bytes)?;
            shared.install_image(EngineImage::decode(file.image)?);
            progress.last_applied = file.meta.last_log_id;
            progress.membership = file.meta.last_membership.clone();
            progress.last_now = file.last_now;
        }
        let index = progress.last_applied.map_or(0, |l| l.index);
        let (tx, rx) = watch::channel(index);
        let applied_now = Arc::new(AtomicU64::new(progress.last_now));
        Ok((
            Self {
                shared,
                progress: Arc::new(Mutex::new(progress)),
                path,
                applied_tx: Arc::new(tx),
                applied_now,
            },
            rx,
        ))
    }

    /// The latest engine time applied, kept up to date as entries apply.
    pub fn applied_now(&self) -> Arc<AtomicU64> {
        self.applied_now.clone()
    }

    fn write_file(&self, file: &SnapshotFile) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_stdvec(file).map_err(sm_err)?;
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(sm_err)?;
            f.write_all(&bytes).map_err(sm_err)?;
            f.sync_all().map_err(sm_err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(sm_err)?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // The image and the applied position are taken together: apply
        // holds the progress lock while it runs the engine.
        let (meta, last_now, image) = {
            let mut p = self.progress.lock();
            let image = self.shared.engine_image().encode();
            p.snapshot_seq += 1;
            let id = match p.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, p.snapshot_seq),
                None => format!("--{}", p.snapshot_seq),
            };
            (
                SnapshotMeta {
                    last_log_id: p.last_applied,
                    last_membership: p.membership.clone(),
                    snapshot_id: id,
                },
                p.last_now,
                image,
            )
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            last_now,
            image,
        };
        self.write_file(&file)?;
        let data = postcard::to_stdvec(&file).map_err(sm_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let p = self.progress.lock();
        Ok((p.last_applied, p.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let mut out = Vec::new();
        let mut last = None;
        for entry in entries {
            let mut p = self.progress.lock();
            p.last_applied = Some(entry.log_id);
            last = Some(entry.log_id.index);
            let result = match entry.payload {
                EntryPayload::Blank => InputResult::Done,
                EntryPayload::Normal(proposal) => {
                    let now = proposal.now.max(p.last_now);
                    p.last_now = now;
                    self.applied_now.store(now, Ordering::Release);
                    self.shared.apply_replicated(now, proposal.input)
                }
                EntryPayload::Membership(m) => {
                    p.membership = StoredMembership::new(Some(entry.log_id), m);
                    InputResult::Done
                }
            };
            out.push(Applied { result });
        }
        if let Some(index) = last {
            self.applied_tx.send_replace(index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let file: SnapshotFile = postcard::from_bytes(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let image = EngineImage::decode(&file.image).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        self.write_file(&file)?;
        {
            let mut p = self.progress.lock();
            self.shared.install_image(image);
            p.last_applied = meta.last_log_id;
            p.membership = meta.last_membership.clone();
            p.last_now = p.last_now.max(file.last_now);
            self.applied_now.store(p.last_now, Ordering::Release);
        }
        self.applied_tx
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let data = std::fs::read(&self.path).map_err(sm_err)?;
        let meta = postcard::from_bytes::<SnapshotFileView<'_>>(&data)
            .map_err(sm_err)?
            .meta;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_reads_back_through_the_view() {
        let file = SnapshotFile {
            meta: SnapshotMeta::default(),
            last_now: 1_234,
            image: (0..=255u8).cycle().take(1_000).collect(),
        };
        let bytes = postcard::to_stdvec(&file).unwrap();
        let view: SnapshotFileView<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(view.last_now, 1_234);
        assert_eq!(view.image, file.image.as_slice());
        assert_eq!(view.meta, file.meta);
    }
}
