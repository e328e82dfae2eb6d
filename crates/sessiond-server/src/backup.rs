//! Backup and restore: `sessiond backup` asks a running server for its whole
//! state (`BACKUP.SNAPSHOT`: the engine's image, taken in one step under the
//! state lock, so it is consistent and holds every write acknowledged before
//! it) and writes it to a file; `sessiond restore` writes a fresh data
//! directory from such a file through the [`Storage`] trait.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use sessiond_client::{Client, ConnectOptions, Value};
use sessiond_core::engine::EngineImage;
use sessiond_core::store::Mutation;

use crate::storage::{LoggedStorage, RedbStorage, Storage, StorageError};

/// Mutations per storage transaction when restoring.
const RESTORE_BATCH: usize = 10_000;

/// The state now, encoded ([`EngineImage::encode`]): the reply of
/// `BACKUP.SNAPSHOT`.
pub fn snapshot(shared: &crate::state::Shared) -> Vec<u8> {
    // The copy is made under the state lock; the encoding outside it.
    let image = shared.read(|e, _| e.image());
    image.encode()
}

/// Copies the state of the server at `addr` into `to` (written to a
/// temporary file, synced, then renamed: `to` is whole or absent). Returns
/// the number of sessions. `opts`: user, password, TLS (an admin user is
/// needed where there are users).
///
/// # Errors
/// Connection, an unreadable reply, the file.
pub async fn backup(addr: &str, opts: ConnectOptions, to: &Path) -> anyhow::Result<usize> {
    let mut client = Client::connect_with(
        addr,
        ConnectOptions {
            client_name: Some("sessiond-backup".into()),
            ..opts
        },
    )
    .await
    .with_context(|| format!("connecting to {addr}"))?;
    let bytes = match client.command(&["BACKUP.SNAPSHOT"]).await? {
        Value::Bulk(b) => b,
        other => bail!("unexpected reply to BACKUP.SNAPSHOT: {other:?}"),
    };
    let image = EngineImage::decode(&bytes).context("the snapshot does not decode")?;
    let tmp = to.with_extension("partial");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))?;
    Ok(image.store.sessions.len())
}

/// Writes the sessions and aliases of `image` into `storage` (expected
/// empty), with its version floor and fencing epoch, so versions and tokens
/// never go backwards. Returns the number of sessions.
///
/// # Errors
/// Storage failures.
pub fn restore_into(image: &EngineImage, storage: &mut dyn Storage) -> Result<usize, StorageError> {
    let floor = image.store.last_version;
    let mut batch = Vec::with_capacity(RESTORE_BATCH);
    for s in &image.store.sessions {
        batch.push(Mutation::PutMeta {
            id: s.id.clone(),
            meta: s.meta,
        });
        for (key, field) in s.fields.iter() {
            batch.push(Mutation::PutField {
                id: s.id.clone(),
                key,
                field,
            });
        }
        if batch.len() >= RESTORE_BATCH {
            storage.apply(&batch, floor, false)?;
            batch.clear();
        }
    }
    for (old, alias) in &image.store.aliases {
        batch.push(Mutation::PutAlias {
            old: old.clone(),
            new: alias.target.clone(),
            until: alias.until,
        });
    }
    storage.apply(&batch, floor, true)?;
    storage.set_fence_epoch(image.locks.epoch)?;
    Ok(image.store.sessions.len())
}

/// Writes a new data directory `data_dir` from the backup file `from`.
/// Refuses to write over an existing data file.
///
/// # Errors
/// An unreadable backup, an existing data file, storage failures.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<usize> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let image = EngineImage::decode(&bytes)
        .with_context(|| format!("{} is not a sessiond backup", from.display()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("sessions.redb");
    if path.exists() {
        bail!(
            "{} exists: restore into an empty data directory",
            path.display()
        );
    }
    crate::storage::refuse_orphan_log(&LoggedStorage::log_path(&path), &path)
        .context("restore into an empty data directory")?;
    let mut storage =
        RedbStorage::open(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(restore_into(&image, &mut storage)?)
}
