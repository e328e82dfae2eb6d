//! # sessiond-server
//!
//! The session store server: RESP2/RESP3 over TCP in front of
//! [`sessiond_core`], with durable storage in redb.
//!
//! ## Layout
//! - [`protocol`]: bytes → request arguments ([`protocol::RequestParser`]),
//!   [`protocol::Reply`] → bytes.
//! - [`cmd`]: arguments → [`cmd::Command`] → apply → reply; one module per
//!   command family, one place mapping errors to RESP error codes.
//! - [`state`]: [`state::Shared`], the core state behind one lock.
//! - [`connection`]: one client: read, run in order, write; lock waits.
//! - [`server`]: listeners, the connection limit, the timekeeper (expiry and
//!   lock leases), shutdown in order.
//! - [`storage`]: the [`storage::Storage`] trait, redb and memory backends.
//! - [`persist`]: the writer thread: group commit, durability policies,
//!   storage faults (refuse writes, retry, resume).
//! - [`write_gate`]: which commands are writes, refused while storage fails.
//! - [`config`], [`metrics`], [`info`], [`ids`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cmd;
pub mod config;
pub mod connection;
pub mod ids;
pub mod info;
pub mod inspect;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod server;
pub mod state;
pub mod storage;
pub mod write_gate;

#[doc(hidden)]
pub mod fuzzing;

pub use config::Config;
pub use server::Server;
