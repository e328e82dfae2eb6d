//! The engine's whole state as data: what a snapshot holds, and what the
//! determinism tests compare.

use serde::{Deserialize, Serialize};

use super::dedupe::{DedupeEntry, DedupeTable};
use super::{Engine, PendingGrant};
use crate::locks::{LockTableImage, WaiterId};
use crate::store::{StoreImage, StoreImageV2};
use crate::{LockTable, Store};

/// An [`Engine`] as plain, sorted data: equal engines give equal images
/// (and equal bytes from [`EngineImage::encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineImage {
    /// Format version of the encoding: a reader refuses versions it does
    /// not know instead of misreading them.
    pub format: u32,
    /// Sessions and aliases.
    pub store: StoreImage,
    /// Locks and their queues.
    pub locks: LockTableImage,
    /// What each queued waiter asked for, by waiter id.
    pub pending: Vec<(WaiterId, PendingGrant)>,
    /// Remembered answers to request ids, oldest first.
    pub dedupe: Vec<DedupeEntry>,
}

/// Format 1: before request ids were remembered (fields one by one).
#[derive(Deserialize)]
struct EngineImageV1 {
    store: StoreImageV2,
    locks: LockTableImage,
    pending: Vec<(WaiterId, PendingGrant)>,
}

/// Format 2: each session's fields one by one.
#[derive(Deserialize)]
struct EngineImageV2 {
    _format: u32,
    store: StoreImageV2,
    locks: LockTableImage,
    pending: Vec<(WaiterId, PendingGrant)>,
    dedupe: Vec<DedupeEntry>,
}

/// Why an encoded image could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The bytes do not decode.
    #[error("engine image does not decode")]
    Decode(#[from] postcard::Error),
    /// Written by a format this build does not know.
    #[error("engine image format {0} is not supported (this build reads {FORMAT})")]
    Format(u32),
}

/// The current image format: 3, each session's fields in their packed
/// buffer (2: fields one by one; 1: also without request ids).
pub const FORMAT: u32 = 3;

impl EngineImage {
    /// The image as bytes (postcard).
    ///
    /// # Panics
    /// Never: every field serializes (postcard fails only on types it
    /// cannot represent, and the image has none).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        postcard::to_stdvec(self).expect("an engine image always serializes")
    }

    /// Reads bytes from [`EngineImage::encode`].
    ///
    /// # Errors
    /// [`ImageError`] when they do not decode or carry an unknown format.
    pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
        // The format comes first in every version.
        let (format, rest): (u32, &[u8]) = postcard::take_from_bytes(bytes)?;
        match format {
            FORMAT => postcard::from_bytes(bytes).map_err(ImageError::from),
            2 => {
                let v2: EngineImageV2 = postcard::from_bytes(bytes)?;
                Ok(EngineImage {
                    format: FORMAT,
                    store: v2.store.into(),
                    locks: v2.locks,
                    pending: v2.pending,
                    dedupe: v2.dedupe,
                })
            }
            1 => {
                let v1: EngineImageV1 = postcard::from_bytes(rest)?;
                Ok(EngineImage {
                    format: FORMAT,
                    store: v1.store.into(),
                    locks: v1.locks,
                    pending: v1.pending,
                    dedupe: Vec::new(),
                })
            }
            other => Err(ImageError::Format(other)),
        }
    }
}

impl Engine {
    /// The whole state as data.
    pub fn image(&self) -> EngineImage {
        let mut pending: Vec<(WaiterId, PendingGrant)> =
            self.pending.iter().map(|(w, p)| (*w, p.clone())).collect();
        pending.sort_unstable_by_key(|(w, _)| *w);
        EngineImage {
            format: FORMAT,
            store: self.store.image(),
            locks: self.locks.image(),
            pending,
            dedupe: self.dedupe.entries(),
        }
    }

    /// The engine an [`image`](Engine::image) was taken of.
    pub fn from_image(image: EngineImage) -> Self {
        Self {
            store: Store::from_image(image.store),
            locks: LockTable::from_image(image.locks),
            pending: image.pending.into_iter().collect(),
            dedupe: DedupeTable::from_entries(image.dedupe),
            dedupe_undo: None,
        }
    }

    /// A 64-bit digest of the whole state (FNV-1a over the encoded image):
    /// equal engines give equal digests. For tests and for replicas to
    /// compare notes; not a cryptographic hash.
    pub fn digest(&self) -> u64 {
        self.image()
            .encode()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            })
    }
}
