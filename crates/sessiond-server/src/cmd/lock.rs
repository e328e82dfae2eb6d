//! LOCK.* commands: arguments → [`Command`] for the engine. Waiting for a
//! lock happens in the connection (`connection.rs`); the engine hands the
//! lock over with the reply built.

use sessiond_core::SessionId;
use sessiond_core::engine::{AcquireArgs, Command};
use sessiond_core::locks::Scope;

use super::{Args, CmdError};

fn scope_arg(a: &mut Args) -> Result<Scope, CmdError> {
    Ok(if a.eat("KEY") {
        Scope::Key(a.bytes()?)
    } else {
        Scope::Session
    })
}

fn acquire_args(a: &mut Args, id: SessionId, scope: Scope) -> Result<(AcquireArgs, u64), CmdError> {
    let mut args = AcquireArgs {
        id,
        scope,
        wait_ms: 0,
        lease_ms: None,
        reqid: None,
        create: false,
    };
    let mut if_version = 0;
    while let Some(kw) = a.keyword() {
        match kw.as_str() {
            "KEY" => args.scope = Scope::Key(a.bytes()?),
            "WAIT" => args.wait_ms = a.u64()?,
            "LEASE" => args.lease_ms = Some(a.u64()?.max(1)),
            "REQID" => args.reqid = Some(a.reqid()?),
            "CREATE" => args.create = true,
            "IFVER" => if_version = a.u64()?,
            other => return Err(CmdError::Syntax(format!("unknown option {other:?}"))),
        }
    }
    Ok((args, if_version))
}

/// Parses `name` if it is a LOCK.* command.
///
/// # Errors
/// Arity, numbers, unknown options.
pub fn parse(name: &str, a: &mut Args) -> Result<Option<Command>, CmdError> {
    Ok(Some(match name {
        "LOCK.ACQUIRE" => {
            let id = a.id()?;
            Command::Acquire(acquire_args(a, id, Scope::Session)?.0)
        }
        "LOCK.ONCE" => {
            let id = a.id()?;
            let key = a.bytes()?;
            let (args, if_version) = acquire_args(a, id, Scope::Key(key))?;
            if !matches!(args.scope, Scope::Key(_)) {
                return Err(CmdError::Syntax("LOCK.ONCE locks a key".into()));
            }
            Command::Once { args, if_version }
        }
        "LOCK.RELEASE" => {
            let id = a.id()?;
            let scope = scope_arg(a)?;
            Command::Release {
                id,
                scope,
                token: a.u64()?,
            }
        }
        "LOCK.RENEW" => {
            let id = a.id()?;
            let scope = scope_arg(a)?;
            let token = a.u64()?;
            if !a.eat("LEASE") {
                return Err(CmdError::Syntax("LOCK.RENEW needs LEASE ms".into()));
            }
            Command::Renew {
                id,
                scope,
                token,
                lease_ms: a.u64()?.max(1),
            }
        }
        "LOCK.INFO" => Command::LockInfo {
            id: if a.remaining() > 0 {
                Some(a.id()?)
            } else {
                None
            },
        },
        "LOCK.BREAK" => {
            let id = a.id()?;
            Command::Break {
                id,
                scope: scope_arg(a)?,
            }
        }
        _ => return Ok(None),
    }))
}
