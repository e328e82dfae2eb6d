//! # sessiond-server
//!
//! The session store server: RESP2/RESP3 over TCP in front of
//! [`sessiond_core`], with durable storage in redb.
//!
//! ## Layout
//! - [`protocol`]: bytes → request arguments ([`protocol::RequestParser`]),
//!   [`protocol::Reply`] → bytes.
//! - [`cmd`]: arguments → [`cmd::Command`]; the engine's responses → replies;
//!   one module per command family, one place mapping errors to RESP codes.
//! - [`state`]: [`state::Shared`], the engine ([`sessiond_core::Engine`])
//!   behind one lock, and the shell around it: the effects of each input
//!   carried out (replies handed to waiters, changes queued for the disk).
//! - [`connection`]: one client: read, parse, run in order, write; lock waits.
//! - [`server`]: listeners, the connection limit, the timekeeper (expiry and
//!   lock leases), shutdown in order.
//! - [`storage`]: the [`storage::Storage`] trait, redb and memory backends.
//! - [`persist`]: the writer thread: group commit, durability policies,
//!   storage faults (refuse writes, retry, resume).
//! - [`write_gate`]: which commands are writes, refused while storage fails.
//! - [`cluster`]: replication through Raft (openraft).
//! - [`reload`]: SIGHUP puts changed settings in force where it can.
//! - [`tls`]: the TLS listener's rustls configuration, handshakes, reloads.
//! - [`users`]: users, their passwords and classes; [`cmd::acl`] decides
//!   what each class may run.
//! - [`config`], [`metrics`], [`http`] (metrics, health and readiness),
//!   [`slowlog`], [`notify`] (systemd's sd_notify), [`backup`], [`info`],
//!   [`ids`], [`process`].
//!
//! Modules point one way: `users`, `metrics` → `tls` → `protocol`,
//! `config`, `slowlog`, `notify`, `process`,
//! `storage` → `persist` → `state` (`write_gate`, `cluster`, `reload` after it) → `info`, `backup` → `cmd` → `connection` →
//! `http`, `server` (checked by `../shared/tools/module-cycles`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backup;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod http;
pub mod ids;
pub mod info;
pub mod inspect;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod process;
pub mod protocol;
pub mod record;
pub mod reload;
pub mod server;
pub mod slowlog;
pub mod state;
pub mod storage;
pub mod tls;
pub mod users;
pub mod write_gate;

#[doc(hidden)]
pub mod fuzzing;

pub use config::Config;
pub use server::Server;
