//! Bytes ↔ requests and replies.
//!
//! Requests are parsed by [`RequestParser`], which accepts only what a Redis
//! server accepts as a request (an array of bulk strings, or an inline line)
//! and enforces the size limits while parsing, before allocating. Replies are
//! values of [`Reply`] encoded for RESP2 or RESP3.

mod reply;
mod request;

pub use reply::{Reply, encode};
pub use request::{ParseError, RequestLimits, RequestParser};

/// The RESP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, the default.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}
