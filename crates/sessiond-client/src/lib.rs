//! Async Rust client for sessiond, a session store that speaks RESP2/RESP3.
//!
//! [`Client`] wraps one TCP connection and offers one typed method per
//! command of `docs/protocol.md`, plus [`Client::command`] for anything else.
//! Every method takes `&mut self`: one request is in flight at a time.
//!
//! ```no_run
//! use std::time::Duration;
//! use sessiond_client::{Client, Commit, ConnectOptions, LockOptions, ReadOptions};
//!
//! # async fn demo() -> sessiond_client::Result<()> {
//! let mut client = Client::connect_with(
//!     "127.0.0.1:6380",
//!     ConnectOptions { client_name: Some("web1".into()), ..Default::default() },
//! )
//! .await?;
//!
//! // Read (creating it if needed), then write conditionally on the version read.
//! let id = "demo1";
//! let session = client
//!     .read(id, &ReadOptions { create: true, ..Default::default() })
//!     .await?;
//! let seen = session.map_or(0, |s| s.version_of("user"));
//! match client.commit(id, &Commit::new().set_if("user", "alice", seen)).await {
//!     Ok(done) => println!("committed at version {}", done.version),
//!     Err(sessiond_client::Error::Conflict { keys, .. }) => println!("lost race on {keys:?}"),
//!     Err(e) => return Err(e),
//! }
//!
//! // Read-modify-write of one key under a key lock, fenced.
//! let grant = client
//!     .lock(id, &LockOptions {
//!         key: Some("visits".into()),
//!         wait: Duration::from_secs(1),
//!         lease: Some(Duration::from_secs(5)),
//!         ..Default::default()
//!     })
//!     .await?;
//! let visits: i64 = grant
//!     .data
//!     .as_ref()
//!     .and_then(|d| d.get("visits"))
//!     .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
//!     .unwrap_or(0);
//! client
//!     .commit(id, &Commit::new().fence(grant.token).unlock().set("visits", (visits + 1).to_string()))
//!     .await?;
//!
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Clusters: [`Client::connect_any`] (or [`Client::connect_nodes`] with
//! `"n1:6380,n2:6380,n3:6380"`) takes every node, connects to the first that
//! answers, and fails over where that cannot apply anything twice: a failed
//! connect, an idle connection found closed before sending, and `TRYAGAIN`
//! go to the next node (bounded by [`ConnectOptions::max_attempts`] and
//! [`ConnectOptions::failover_timeout`]); a connection lost after sending, or
//! `UNKNOWN`, is returned as [`Error::Unknown`] (reads are sent again). See
//! [Node lists and failover](Client#node-lists-and-failover).
//!
//! ```no_run
//! # async fn demo() -> sessiond_client::Result<()> {
//! use sessiond_client::{Client, ConnectOptions, Error, IncrOptions};
//! let mut client =
//!     Client::connect_nodes("10.0.0.1:6380,10.0.0.2:6380,10.0.0.3:6380", ConnectOptions::default())
//!         .await?;
//! match client.incr("cart1", "items", 1, &IncrOptions::default()).await {
//!     Ok((n, _)) => println!("now {n}"),
//!     // Maybe applied, maybe not: read it back before trying again.
//!     Err(Error::Unknown(why)) => eprintln!("{why}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Errors: server error replies are classified by their code word into
//! [`Error`] variants ([`Error::NoSession`], [`Error::Conflict`], …; see
//! [`Error::code`]). A reply of an unexpected shape is [`Error::Protocol`];
//! the client never panics on what the server sends.
//!
//! Durations go on the wire rounded up: whole seconds for `TTL`, `LIFETIME`
//! and `GRACE`, milliseconds for `WAIT` and `LEASE`.
//!
//! Cancellation: dropping a request's future before it completes (for example
//! with `tokio::time::timeout`) leaves the stream unframed, so the client
//! drops the connection (releasing its locks on the server); later calls fail
//! with [`Error::Closed`] and [`Client::is_closed`] is true.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

mod client;
mod cmd;
mod error;
mod reply;
mod types;
mod value;

pub use bytes::Bytes;
pub use client::{Client, ConnectOptions, TlsOptions};
pub use error::{Error, Result};
pub use types::{
    CasResult, Commit, CommitResult, Field, IncrOptions, LockGrant, LockInfo, LockOptions,
    LockScope, LockWaiter, NewOptions, OnceResult, ReadOptions, SessionData,
};
pub use value::Value;

#[cfg(test)]
mod tests;
