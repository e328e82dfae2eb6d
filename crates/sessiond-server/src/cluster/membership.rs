//! Membership changes at run time, through openraft's joint consensus: add
//! a learner (it receives the log, or a snapshot, and votes on nothing),
//! promote it to a voter, remove a node. An operator replaces a dead node
//! by adding a new one as a learner, promoting it once it caught up (its
//! lag in `CLUSTER.INFO`), then removing the dead one.
//!
//! Changes run on the leader; a follower forwards them, as it forwards
//! proposals.

use std::collections::BTreeSet;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use sessiond_core::engine::Input;

use super::{Cluster, NodeId, PROPOSE_TIMEOUT, network};
use crate::state::MembershipChange;

/// Why a change was not made here.
#[derive(Debug)]
pub(super) enum ChangeError {
    /// This node does not lead; the leader, if known.
    NotLeader(Option<(NodeId, String)>),
    /// Refused or failed, with the reason.
    Failed(String),
}

impl Cluster {
    /// Makes `change` if this node leads.
    pub(super) async fn change_here(&self, change: &MembershipChange) -> Result<(), ChangeError> {
        let call = async {
            match change {
                MembershipChange::AddLearner { node, addr } => {
                    if self.voters().contains(node) {
                        return Err(ChangeError::Failed(format!(
                            "node {node} is already a voter"
                        )));
                    }
                    // Not blocking: the learner catches up in the
                    // background; CLUSTER.INFO shows its lag.
                    self.raft
                        .add_learner(*node, BasicNode::new(addr), false)
                        .await
                }
                MembershipChange::Promote { node } => {
                    self.raft
                        .change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([*node])),
                            false,
                        )
                        .await
                }
                MembershipChange::Remove { node } => {
                    let changes = if self.voters().contains(node) {
                        ChangeMembers::RemoveVoters(BTreeSet::from([*node]))
                    } else {
                        ChangeMembers::RemoveNodes(BTreeSet::from([*node]))
                    };
                    self.raft.change_membership(changes, false).await
                }
            }
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ChangeError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
                }
                e => ChangeError::Failed(e.to_string()),
            })
        };
        tokio::time::timeout(PROPOSE_TIMEOUT, call)
            .await
            .map_err(|_| ChangeError::Failed("not committed in time (no majority?)".into()))??;
        Ok(())
    }

    /// Makes `change` here if this node leads, else through the leader.
    /// A removed node's connections are closed through the log, so its
    /// clients' locks go to their waiters.
    pub(super) async fn change_anywhere(&self, change: MembershipChange) -> Result<(), String> {
        match self.change_here(&change).await {
            Ok(()) => {}
            Err(ChangeError::NotLeader(Some((leader, addr)))) if leader != self.node_id => {
                self.peers
                    .change_membership(&addr, change.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            Err(ChangeError::NotLeader(_)) => {
                return Err("no leader reachable from this node; retry".into());
            }
            Err(ChangeError::Failed(e)) => return Err(e),
        }
        if let MembershipChange::Remove { node } = change {
            self.propose_anywhere(Input::CloseNode {
                node,
                except_incarnation: None,
            })
            .await
            .map_err(|e| format!("node {node} removed, closing its connections failed: {e}"))?;
        }
        Ok(())
    }

    /// The voters of the current membership.
    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}

/// What a leader answers a forwarded change.
pub(super) fn answer_forwarded(
    result: Result<(), ChangeError>,
) -> Result<(), network::ChangeRefused> {
    result.map_err(|e| match e {
        ChangeError::NotLeader(_) => network::ChangeRefused::NotLeader,
        ChangeError::Failed(e) => network::ChangeRefused::Failed(e),
    })
}
