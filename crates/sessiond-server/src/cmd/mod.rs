//! Commands: parse the arguments of a request into a [`Command`]; render
//! what the engine answers as a [`Reply`].
//!
//! Every command is parsed completely (extra arguments are a syntax error)
//! before anything is applied. Session and lock commands become
//! [`sessiond_core::engine::Command`]s, applied by the engine; connection
//! commands (PING, AUTH, CLIENT, INFO, …) are applied here, to the
//! connection. [`render`] is the one place where errors become RESP error
//! codes.

pub mod acl;
mod args;
pub mod cluster;
pub mod conn;
mod lock;
pub mod render;
mod session;

use bytes::Bytes;

pub use args::{Args, CmdError};
pub use conn::{ConnCommand, ConnState, allowed_unauthenticated as conn_allowed_unauthenticated};
pub use render::{
    acl_error_reply, durability_error_reply, engine_error_reply, error_reply, parse_error_reply,
    replication_error_reply, response_reply, storage_fault_reply,
};

/// A parsed request.
#[derive(Debug)]
pub enum Command {
    /// PING, HELLO, AUTH, CLIENT, INFO, …: applied to the connection.
    Conn(ConnCommand),
    /// SESSION.* and LOCK.*: applied by the engine.
    Engine(sessiond_core::engine::Command),
    /// CLUSTER.ADDLEARNER, CLUSTER.PROMOTE, CLUSTER.REMOVE: applied by the
    /// cluster.
    Cluster(cluster::ClusterCommand),
}

impl Command {
    /// Parses a request. The name is case-insensitive.
    ///
    /// # Errors
    /// [`CmdError`] for an unknown command, wrong arity or a bad argument.
    pub fn parse(argv: Vec<Bytes>) -> Result<Command, CmdError> {
        Self::parse_with_prefix(argv, None)
    }

    /// [`Command::parse`] for a user confined to session ids starting with
    /// `prefix`: the ids the server makes (SESSION.NEW, SESSION.REGENERATE
    /// without TO) start with it.
    ///
    /// # Errors
    /// As [`Command::parse`].
    pub fn parse_with_prefix(argv: Vec<Bytes>, prefix: Option<&str>) -> Result<Command, CmdError> {
        let mut args = Args::new(argv)?;
        let name = args.name().to_owned();
        let cmd = if let Some(c) = session::parse(&name, &mut args, prefix)? {
            Command::Engine(c)
        } else if let Some(c) = lock::parse(&name, &mut args)? {
            Command::Engine(c)
        } else if let Some(c) = ConnCommand::parse(&name, &mut args)? {
            Command::Conn(c)
        } else if let Some(c) = cluster::ClusterCommand::parse(&name, &mut args)? {
            Command::Cluster(c)
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
            Command::Engine(c) => c.name(),
            Command::Cluster(c) => c.name(),
        }
    }
}
