//! Making room under an evicting memory limit before a command that may
//! grow the store: the engine's part, since only it knows which sessions
//! have locks (never evicted).

use super::{Command, Engine};
use crate::store::memory::{SESSION_OVERHEAD, alias_cost, id_cost};
use crate::{Millis, Op, SessionId};

/// A field entry's header in a packed buffer, plus the allocator's rounding.
const FIELD_SLACK: u64 = 16 + 32;

/// The session `cmd` writes and an upper bound of the bytes it may add to
/// the accounted memory; `None` for commands that add nothing.
fn room_needed(cmd: &Command) -> Option<(&SessionId, u64)> {
    let new_session = |id: &SessionId, create: bool| {
        if create {
            SESSION_OVERHEAD + id_cost(id)
        } else {
            0
        }
    };
    let field = |key: &[u8], value: usize| FIELD_SLACK + key.len() as u64 + value as u64;
    match cmd {
        Command::New { id, .. } => Some((id, new_session(id, true))),
        Command::Read { id, opts } => opts.create.then(|| (id, new_session(id, true))),
        Command::Commit { id, request, .. } => {
            let sets: u64 = request
                .ops
                .iter()
                .map(|op| match op {
                    Op::Set { key, value, .. } => field(key, value.len()),
                    Op::Del { .. } => 0,
                })
                .sum();
            Some((id, sets + new_session(id, request.create)))
        }
        // An i64 is at most 20 digits.
        Command::Incr {
            id, key, create, ..
        } => Some((id, field(key, 20) + new_session(id, *create))),
        Command::Cas { id, key, new, .. } => Some((id, field(key, new.len()))),
        Command::Regenerate { id, new_id, .. } => Some((id, alias_cost(id) + id_cost(new_id))),
        Command::Acquire(args) | Command::Once { args, .. } => {
            args.create.then(|| (&args.id, new_session(&args.id, true)))
        }
        // A write with a request id needs what the write needs (a repeat
        // needs nothing, but making room for it harms no one).
        Command::Idempotent { cmd, .. } => room_needed(cmd),
        _ => None,
    }
}

impl Engine {
    /// Under an evicting memory limit, evicts the idlest sessions so what
    /// `cmd` may add fits: never the session it writes, nor a session with
    /// a lock held or awaited. A function of the state and the command
    /// only, so every replica evicts the same sessions. The evictions stay
    /// even if the command is then refused for another reason (as in
    /// Redis, which evicts before it runs a command).
    pub(super) fn make_room(&mut self, now: Millis, cmd: &Command) {
        // Without an evicting limit, commands pay nothing here.
        if !self.store.evicts() {
            return;
        }
        let Some((id, need)) = room_needed(cmd) else {
            return;
        };
        if need == 0 {
            return;
        }
        let keep = self.store.resolve(now, id).unwrap_or_else(|| id.clone());
        let locks = &self.locks;
        self.store
            .make_room(now, need, Some(&keep), &|s| locks.is_locked(s));
    }
}
