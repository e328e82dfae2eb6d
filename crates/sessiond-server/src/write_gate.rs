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
//! waits for the disk (backpressure) it gets an error instead. Under
//! `always` such a write is undone and told so (see the `persist` module).

use sessiond_core::engine::Command as EngineCommand;

use crate::cmd::Command;
use crate::protocol::Reply;
use crate::state::Shared;

/// Whether `cmd` may change what storage holds (see the module docs).
pub fn is_write(cmd: &Command) -> bool {
    match cmd {
        Command::Conn(_) | Command::Cluster(_) => false,
        Command::Engine(c) => engine_writes(c),
    }
}

/// Whether the engine command `c` may change what storage holds.
pub fn engine_writes(c: &EngineCommand) -> bool {
    match c {
        EngineCommand::Read { opts, .. } => opts.create || opts.ttl_ms.is_some(),
        EngineCommand::Exists { .. } | EngineCommand::Ttl { .. } => false,
        EngineCommand::New { .. }
        | EngineCommand::Commit { .. }
        | EngineCommand::Destroy { .. }
        | EngineCommand::Touch { .. }
        | EngineCommand::Incr { .. }
        | EngineCommand::Cas { .. }
        | EngineCommand::Regenerate { .. } => true,
        EngineCommand::Acquire(a) | EngineCommand::Once { args: a, .. } => a.create,
        EngineCommand::Release { .. }
        | EngineCommand::Renew { .. }
        | EngineCommand::LockInfo { .. }
        | EngineCommand::Break { .. } => false,
        EngineCommand::Idempotent { cmd, .. } => engine_writes(cmd),
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
    Some(crate::cmd::storage_fault_reply(&fault))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::is_write;
    use crate::cmd::Command;

    fn write(line: &str) -> bool {
        let argv = line
            .split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        is_write(&Command::parse(argv).unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    #[test]
    fn writes_are_what_may_change_stored_sessions() {
        let id = "0123456789abcdef0123456789abcdef";
        for line in [
            "SESSION.NEW".to_owned(),
            format!("SESSION.COMMIT {id} SET k v"),
            format!("SESSION.DESTROY {id}"),
            format!("SESSION.TOUCH {id}"),
            format!("SESSION.INCR {id} k 1"),
            format!("SESSION.CAS {id} k a b"),
            format!("SESSION.REGENERATE {id}"),
            format!("SESSION.READ {id} CREATE"),
            format!("SESSION.READ {id} TTL 10"),
            format!("LOCK.ACQUIRE {id} CREATE"),
            format!("LOCK.ONCE {id} job CREATE"),
        ] {
            assert!(write(&line), "{line} is a write");
        }
        for line in [
            format!("SESSION.READ {id}"),
            format!("SESSION.READ {id} KEYS a"),
            format!("SESSION.EXISTS {id}"),
            format!("SESSION.TTL {id}"),
            format!("LOCK.ACQUIRE {id}"),
            format!("LOCK.ONCE {id} job"),
            format!("LOCK.RELEASE {id} 1"),
            format!("LOCK.RENEW {id} 1 LEASE 1000"),
            format!("LOCK.BREAK {id}"),
            "LOCK.INFO".to_owned(),
            "INFO persistence".to_owned(),
            "PING".to_owned(),
        ] {
            assert!(!write(&line), "{line} is no write");
        }
    }
}
