//! # sessiond-core
//!
//! The state machine of sessiond, with no I/O: sessions with per-key
//! versions ([`Store`]), their expiry ([`ExpiryIndex`]), and the lock table
//! ([`LockTable`]). Time comes in as an argument (milliseconds, read by the
//! caller from a [`Clock`]), so every behaviour here is tested with a fake
//! clock and no sleeping.
//!
//! ## Layout
//! - [`clock`]: [`Clock`], [`SystemClock`], [`ManualClock`].
//! - [`id`]: [`SessionId`], validated ids.
//! - [`session`]: [`Session`], [`Field`], [`SessionMeta`] and the deadline rule.
//! - [`fields`]: [`PackedFields`], a session's fields in one buffer.
//! - [`expiry`]: [`ExpiryIndex`], deadlines ordered by time.
//! - [`store`]: [`Store`], every operation on sessions, and the outbox of
//!   [`Mutation`]s the server persists.
//! - [`locks`]: [`LockTable`], session and key locks with FIFO hand-off,
//!   leases, fencing tokens and deadlock detection.
//! - [`engine`]: [`Engine`], the one state machine the server drives: it
//!   owns the store and the lock table and every rule combining them;
//!   commands in, replies and effects out.
//! - [`workload`]: random logs of inputs and a driver that applies them as
//!   the server would, for determinism, snapshot and model tests.
//! - [`error`]: [`StoreError`] (sessions), [`LockError`] (locks) and
//!   [`EngineError`] (either), which the server maps to RESP error codes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod clock;
pub mod engine;
pub mod error;
pub mod expiry;
pub mod fields;
pub mod id;
pub mod locks;
pub mod session;
pub mod store;
pub mod workload;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use engine::Engine;
pub use error::{EngineError, LockError, StoreError};
pub use expiry::ExpiryIndex;
pub use fields::{PackedFields, PackedFieldsBuilder};
pub use id::SessionId;
pub use locks::LockTable;
pub use session::{Field, Session, SessionMeta};
pub use store::{
    Alias, CasOutcome, CommitOutcome, CommitRequest, EvictionPolicy, Limits, MemoryLimit,
    MemoryStats, Mutation, Op, ReadField, ReadOptions, ReadResult, Store, StoreConfig, StoreStats,
};
