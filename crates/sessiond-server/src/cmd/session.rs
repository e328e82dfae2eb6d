//! SESSION.* commands: arguments → [`Command`] for the engine.

use sessiond_core::engine::{Command, Fence};
use sessiond_core::{CommitRequest, Op, ReadOptions};

use super::{Args, CmdError};

/// Parses `name` if it is a SESSION.* command. Ids the command needs (a new
/// session's, a regenerate's when the client names none) are chosen here.
///
/// # Errors
/// Arity, numbers, unknown options.
pub fn parse(name: &str, a: &mut Args, prefix: Option<&str>) -> Result<Option<Command>, CmdError> {
    let cmd = match name {
        "SESSION.NEW" => {
            let (mut ttl_ms, mut lifetime_ms) = (None, None);
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "TTL" => ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                    "LIFETIME" => lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                    other => return Err(unknown_option(other)),
                }
            }
            Command::New {
                id: crate::ids::new_session_id_with_prefix(prefix),
                ttl_ms,
                lifetime_ms,
            }
        }
        "SESSION.READ" => {
            let id = a.id()?;
            let mut opts = ReadOptions::default();
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "CREATE" => opts.create = true,
                    "TTL" => opts.ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                    "LIFETIME" => opts.lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                    "KEYS" => {
                        let mut keys = Vec::with_capacity(a.remaining());
                        while let Some(k) = a.maybe_bytes() {
                            keys.push(k);
                        }
                        if keys.is_empty() {
                            return Err(CmdError::Syntax("KEYS needs at least one key".into()));
                        }
                        opts.keys = Some(keys);
                    }
                    other => return Err(unknown_option(other)),
                }
            }
            Command::Read { id, opts }
        }
        "SESSION.COMMIT" => {
            let id = a.id()?;
            let mut req = CommitRequest::default();
            let mut fence = Fence::default();
            let mut reqid = None;
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "CREATE" => req.create = true,
                    "TTL" => req.ttl_ms = Some(a.lifetime_as_ms("TTL")?),
                    "LIFETIME" => req.lifetime_ms = Some(a.lifetime_as_ms("LIFETIME")?),
                    "FENCE" => fence.token = Some(a.u64()?),
                    "UNLOCK" => fence.unlock = true,
                    "REQID" => reqid = Some(a.reqid()?),
                    "SET" => {
                        let key = a.bytes()?;
                        let value = a.bytes()?;
                        let if_version = if a.eat("IFVER") { Some(a.u64()?) } else { None };
                        req.ops.push(Op::Set {
                            key,
                            value,
                            if_version,
                        });
                    }
                    "DEL" => {
                        let key = a.bytes()?;
                        let if_version = if a.eat("IFVER") { Some(a.u64()?) } else { None };
                        req.ops.push(Op::Del { key, if_version });
                    }
                    other => return Err(unknown_option(other)),
                }
            }
            if fence.unlock && fence.token.is_none() {
                return Err(CmdError::Syntax("UNLOCK needs FENCE token".into()));
            }
            idempotent(
                reqid,
                Command::Commit {
                    id,
                    request: req,
                    fence,
                },
            )
        }
        "SESSION.DESTROY" => {
            let id = a.id()?;
            let mut reqid = None;
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "REQID" => reqid = Some(a.reqid()?),
                    other => return Err(unknown_option(other)),
                }
            }
            idempotent(reqid, Command::Destroy { id })
        }
        "SESSION.EXISTS" => Command::Exists { id: a.id()? },
        "SESSION.TTL" => Command::Ttl { id: a.id()? },
        "SESSION.TOUCH" => {
            let id = a.id()?;
            let ttl = if a.eat("TTL") {
                Some(a.lifetime_as_ms("TTL")?)
            } else {
                None
            };
            Command::Touch { id, ttl_ms: ttl }
        }
        "SESSION.INCR" => {
            let id = a.id()?;
            let key = a.bytes()?;
            let delta = a.i64()?;
            let mut create = false;
            let mut fence = Fence::default();
            let mut reqid = None;
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "CREATE" => create = true,
                    "FENCE" => fence.token = Some(a.u64()?),
                    "REQID" => reqid = Some(a.reqid()?),
                    other => return Err(unknown_option(other)),
                }
            }
            idempotent(
                reqid,
                Command::Incr {
                    id,
                    key,
                    delta,
                    create,
                    fence,
                },
            )
        }
        "SESSION.CAS" => {
            let id = a.id()?;
            let key = a.bytes()?;
            let expected = a.bytes()?;
            let new = a.bytes()?;
            let mut fence = Fence::default();
            let mut reqid = None;
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "FENCE" => fence.token = Some(a.u64()?),
                    "REQID" => reqid = Some(a.reqid()?),
                    other => return Err(unknown_option(other)),
                }
            }
            idempotent(
                reqid,
                Command::Cas {
                    id,
                    key,
                    expected,
                    new,
                    fence,
                },
            )
        }
        "SESSION.REGENERATE" => {
            let id = a.id()?;
            let (mut grace_ms, mut to, mut reqid) = (None, None, None);
            while let Some(kw) = a.keyword() {
                match kw.as_str() {
                    "GRACE" => grace_ms = Some(a.seconds_as_ms()?),
                    "TO" => to = Some(a.id()?),
                    "REQID" => reqid = Some(a.reqid()?),
                    other => return Err(unknown_option(other)),
                }
            }
            idempotent(
                reqid,
                Command::Regenerate {
                    id,
                    grace_ms,
                    // Chosen here, before the engine runs: it stays
                    // deterministic. A retry with the same REQID gets the
                    // id the first attempt chose, not this one.
                    new_id: to.unwrap_or_else(|| crate::ids::new_session_id_with_prefix(prefix)),
                },
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// A write with a request id, or the write as it is.
fn idempotent(reqid: Option<String>, cmd: Command) -> Command {
    match reqid {
        Some(reqid) => Command::Idempotent {
            reqid,
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}

fn unknown_option(kw: &str) -> CmdError {
    CmdError::Syntax(format!("unknown option {kw:?}"))
}
