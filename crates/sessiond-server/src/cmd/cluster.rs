//! Cluster membership commands: `CLUSTER.ADDLEARNER node addr`,
//! `CLUSTER.PROMOTE node`, `CLUSTER.REMOVE node`. They run on the leader
//! (a follower forwards them) and answer once the change is committed.

use crate::protocol::Reply;
use crate::state::{MembershipChange, Shared};

use super::{Args, CmdError};

/// A membership command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCommand(pub MembershipChange);

impl ClusterCommand {
    /// Parses `name` if it is a membership command.
    ///
    /// # Errors
    /// Arity, a bad node id.
    pub fn parse(name: &str, a: &mut Args) -> Result<Option<ClusterCommand>, CmdError> {
        let change = match name {
            "CLUSTER.ADDLEARNER" => MembershipChange::AddLearner {
                node: node_id(a)?,
                addr: a.string()?,
            },
            "CLUSTER.PROMOTE" => MembershipChange::Promote { node: node_id(a)? },
            "CLUSTER.REMOVE" => MembershipChange::Remove { node: node_id(a)? },
            _ => return Ok(None),
        };
        Ok(Some(ClusterCommand(change)))
    }

    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self.0 {
            MembershipChange::AddLearner { .. } => "CLUSTER.ADDLEARNER",
            MembershipChange::Promote { .. } => "CLUSTER.PROMOTE",
            MembershipChange::Remove { .. } => "CLUSTER.REMOVE",
        }
    }

    /// Makes the change; `+OK` once committed.
    pub async fn execute(self, shared: &Shared) -> Reply {
        let Some(replication) = shared.replication().cloned() else {
            return Reply::error(
                "NOCLUSTER",
                "this server is not a cluster node (start it with --node-id and --raft-addr)",
            );
        };
        match replication.change_membership(self.0).await {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error("ERR", format!("membership not changed: {e}")),
        }
    }
}

/// A node id: 1 to 65535 (it is part of every connection id).
fn node_id(a: &mut Args) -> Result<u64, CmdError> {
    let id = a.u64()?;
    if id == 0 || id >= 1 << 16 {
        return Err(CmdError::Syntax(format!(
            "node id {id} must be between 1 and 65535"
        )));
    }
    Ok(id)
}
