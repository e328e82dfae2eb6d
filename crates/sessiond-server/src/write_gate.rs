//! The one gate that refuses write commands while storage is failing.
//!
//! A command is a *write* when applying it may change what storage holds
//! (sessions, fields, TTLs, aliases): everything that creates, changes or
//! ends a session, and the read and lock commands given `CREATE` (or, for
//! SESSION.READ, a new `TTL`). Lock commands without `CREATE`, reads,
//! EXISTS, TTL, INFO and the connection commands only read the store or
//! change memory-only state (the lock table), so they keep working — a
//! client can still release its locks while storage fails.
//!
//! A plain SESSION.READ moves the session's last-access time, which reaches
//! storage later in bulk; it is not refused: reads must keep working, and
//! those records stay queued like everything else until storage is back.
//!
//! The check runs before the command is applied, outside the state lock: a
//! write that passed the gate just before storage failed is applied and
//! queued like the writes before it (nothing is dropped); if its reply
//! waits for the disk (`always`, backpressure) it gets an error instead.

use crate::cmd::{Command, LockCommand, SessionCommand};
use crate::protocol::Reply;
use crate::state::Shared;

/// Whether `cmd` may change what storage holds (see the module docs).
pub fn is_write(cmd: &Command) -> bool {
    match cmd {
        Command::Conn(_) => false,
        Command::Session(c) => match c {
            SessionCommand::Read(_, opts) => opts.create || opts.ttl_ms.is_some(),
            SessionCommand::Exists(_) | SessionCommand::Ttl(_) => false,
            SessionCommand::New { .. }
            | SessionCommand::Commit(..)
            | SessionCommand::Destroy(_)
            | SessionCommand::Touch(..)
            | SessionCommand::Incr { .. }
            | SessionCommand::Cas { .. }
            | SessionCommand::Regenerate { .. } => true,
        },
        Command::Lock(c) => match c {
            LockCommand::Acquire(a) | LockCommand::Once(a, _) => a.create,
            LockCommand::Release(..)
            | LockCommand::Renew(..)
            | LockCommand::Info(_)
            | LockCommand::Break(..) => false,
        },
    }
}

/// The `-MISCONF` reply refusing `cmd`, when it is a write and storage is
/// failing; `None` when it may run.
pub fn refuse(shared: &Shared, cmd: &Command) -> Option<Reply> {
    if !is_write(cmd) {
        return None;
    }
    let fault = shared.write_refusal()?;
    shared.storage_health().count_refused_write();
    Some(fault.reply())
}
