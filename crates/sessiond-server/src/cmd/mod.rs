//! Commands: parse the arguments of a request into a command, apply it,
//! return a [`Reply`].
//!
//! Every command is parsed completely (extra arguments are a syntax error)
//! before anything is applied, and returns a reply value instead of writing
//! to a socket, so each is testable without one. [`error_reply`] is the one
//! place where errors become RESP error codes.

mod args;
mod conn;
pub mod lock;
mod session;

#[cfg(test)]
mod model_tests;

use bytes::Bytes;
use sessiond_core::StoreError;

pub use args::{Args, CmdError};
pub use conn::{ConnCommand, allowed_unauthenticated as conn_allowed_unauthenticated};
pub use lock::LockCommand;
pub use session::SessionCommand;

use crate::protocol::Reply;

/// A parsed request.
#[derive(Debug)]
pub enum Command {
    /// PING, HELLO, AUTH, CLIENT, INFO, …
    Conn(ConnCommand),
    /// SESSION.*
    Session(SessionCommand),
    /// LOCK.*
    Lock(LockCommand),
}

impl Command {
    /// Parses a request. The name is case-insensitive.
    ///
    /// # Errors
    /// [`CmdError`] for an unknown command, wrong arity or a bad argument.
    pub fn parse(argv: Vec<Bytes>) -> Result<Command, CmdError> {
        let mut args = Args::new(argv)?;
        let name = args.name().to_owned();
        let cmd = if let Some(c) = SessionCommand::parse(&name, &mut args)? {
            Command::Session(c)
        } else if let Some(c) = LockCommand::parse(&name, &mut args)? {
            Command::Lock(c)
        } else if let Some(c) = ConnCommand::parse(&name, &mut args)? {
            Command::Conn(c)
        } else {
            return Err(CmdError::Unknown(args.original_name().to_owned()));
        };
        args.finish()?;
        Ok(cmd)
    }

    /// The command's name, upper-case, for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Conn(c) => c.name(),
            Command::Session(c) => c.name(),
            Command::Lock(c) => c.name(),
        }
    }
}

/// The RESP error for `err`.
pub fn error_reply(err: &CmdError) -> Reply {
    match err {
        CmdError::Core(e) => store_error_reply(e),
        CmdError::Unknown(name) => {
            Reply::error("ERR", format!("unknown command '{}'", sanitize(name)))
        }
        CmdError::Arity(name) => Reply::error(
            "ERR",
            format!("wrong number of arguments for '{name}' command"),
        ),
        CmdError::NotInteger => Reply::error("ERR", "value is not an integer or out of range"),
        CmdError::Syntax(msg) => Reply::error("ERR", format!("syntax error: {msg}")),
        CmdError::Other(code, msg) => Reply::error(code, msg),
    }
}

/// The RESP error for a core error.
pub fn store_error_reply(e: &StoreError) -> Reply {
    let code = match e {
        StoreError::BadId => "BADID",
        StoreError::NoSession(_) => "NOSESSION",
        StoreError::Conflict(_) => "CONFLICT",
        StoreError::NotInteger(_) | StoreError::Overflow(_) => "NOTINT",
        StoreError::ValueTooLarge { .. } | StoreError::TooManyKeys { .. } => "LIMIT",
        StoreError::Exists(_) => "EXISTS",
        StoreError::Fenced { .. } | StoreError::OutsideLock { .. } => "FENCED",
        StoreError::Deadlock(_) => "DEADLOCK",
        StoreError::Timeout(_) => "TIMEOUT",
        StoreError::NotHeld => "NOTHELD",
    };
    Reply::error(code, e.to_string())
}

fn sanitize(name: &str) -> String {
    name.chars().take(64).filter(|c| !c.is_control()).collect()
}
