//! The cluster: every input of the engine goes through a Raft log
//! (openraft) and every node applies the committed log to its own engine.
//!
//! - [`log_store`]: the log and the vote, in segment files.
//! - [`state_machine`]: applies committed entries to the engine (through
//!   [`Shared::apply_replicated`]), builds and installs snapshots (the
//!   engine's image).
//! - [`network`]: peer RPC over TCP (length-prefixed postcard frames): Raft's
//!   own messages, and proposals forwarded from followers to the leader.
//!
//! Time: the leader stamps its clock on every proposal; the state machine
//! applies `max(stamp, last applied stamp)`, so the engine's time never goes
//! back, across leader changes and restarts (the last stamp is in every
//! snapshot). Ids and random values are chosen before proposing.
//!
//! Reads: the leader answers pure reads (`SESSION.READ` without `CREATE`
//! or `TTL`, `EXISTS`, `TTL`) from its own engine once a majority confirmed
//! that it still leads and it applied everything committed before the read
//! arrived (Raft's ReadIndex, openraft's `get_read_log_id`), so a read
//! reflects every write acknowledged before it and no node answers from a
//! state a failover could take back. The expiry slide of such reads goes
//! into the log in bulk, about once a second and before every tick
//! (`Input::ReadsServed`), so every node slides alike. Other commands, and
//! reads on a follower, go through the log.

// openraft's storage and network traits return its error types, which are
// large; the openraft examples allow this too.
#![allow(clippy::result_large_err)]

pub mod log_store;
mod membership;
pub mod network;
pub mod state_machine;

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use sessiond_core::engine::{Input, InputResult};
use sessiond_core::{Clock, Millis, SessionId};
use tokio::sync::{oneshot, watch};

pub use crate::config::ClusterConfig;
use crate::state::{BoxFuture, MembershipChange, Replication, ReplicationError, Shared};

/// A node's id (`--node-id`).
pub type NodeId = u64;

/// What the log carries: an engine input and the leader's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The leader's clock when it accepted the proposal (ms).
    pub now: Millis,
    /// The input.
    pub input: Input,
}

/// What applying an entry answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The engine's result (`Done` for Raft's own entries).
    pub result: InputResult,
}

openraft::declare_raft_types!(
    /// sessiond's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
);

/// A running cluster node: the Raft instance and what the shell needs.
pub struct Cluster {
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    clock: Arc<dyn Clock>,
    applied: watch::Receiver<u64>,
    // The latest engine time applied (reads never go behind it).
    applied_now: Arc<AtomicU64>,
    peers: network::PeerPool,
    // Reads served here since the last `flush_reads`: each session read
    // and the latest time it was.
    reads: parking_lot::Mutex<HashMap<SessionId, Millis>>,
    // Reads waiting for the next leadership confirmation (ReadIndex), all
    // served by one round of heartbeats (see `confirm_reads`).
    read_waiters: parking_lot::Mutex<Vec<oneshot::Sender<Option<u64>>>>,
    read_wanted: tokio::sync::Notify,
    // A stopping leader hands leadership over: it takes no new entries
    // meanwhile, so that its successor's log can be complete.
    handing_off: std::sync::atomic::AtomicBool,
    // When this node last became leader (seen in its metrics), and the
    // leader lease openraft keeps (the longest election timeout): a leader
    // votes for a successor only once that long after its election.
    leader_since: parking_lot::Mutex<Option<tokio::time::Instant>>,
    lease: Duration,
}

/// How long a proposal may take before the client gets an error.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Starts the node: opens the log in `data_dir`, loads the last
    /// snapshot into `shared`'s engine, starts Raft and the peer listener,
    /// and initializes the cluster from `config.initial` if it never was.
    ///
    /// # Errors
    /// Storage that cannot be opened, a peer address that cannot be bound.
    pub async fn start(
        config: ClusterConfig,
        shared: Arc<Shared>,
        data_dir: &std::path::Path,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Arc<Cluster>> {
        use anyhow::Context;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut log = log_store::LogStore::open(data_dir, config.durability)
            .context("opening the raft log")?;
        let (sm, applied) = state_machine::StateMachine::open(shared.clone(), data_dir)
            .context("loading the last snapshot")?;
        let applied_now = sm.applied_now();
        let raft_config = openraft::Config {
            cluster_name: "sessiond".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: 2 * config.election_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            // Entries kept behind a snapshot (for followers just behind
            // it); never more than the snapshot interval, so a low
            // interval compacts the log soon.
            max_in_snapshot_log_to_keep: config.snapshot_logs.min(1_000),
            ..Default::default()
        }
        .validate()
        .context("raft settings")?;
        let peer_tls = match &config.tls {
            Some(settings) => Some(Arc::new(
                crate::tls::PeerTls::new(settings).context("cluster TLS")?,
            )),
            None => None,
        };
        let peers = network::PeerPool::new(peer_tls.clone());
        // What this node kept: nothing at all (a first start, or a lost
        // disk), or a log (a restart).
        let (restarting, kept_nothing) = {
            use openraft::storage::RaftLogStorage;
            let state = log
                .get_log_state()
                .await
                .map_err(|e| anyhow::anyhow!("reading the raft log: {e}"))?;
            let vote = log
                .read_vote()
                .await
                .map_err(|e| anyhow::anyhow!("reading the vote: {e}"))?;
            let restarting = state.last_log_id.is_some();
            (
                restarting,
                !restarting && vote.is_none() && !data_dir.join("raft-snapshot.bin").exists(),
            )
        };
        if kept_nothing {
            refuse_forgotten_voter(&config, data_dir, &peers).await?;
        }
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network::Network {
                peers: peers.clone(),
            },
            log,
            sm,
        )
        .await
        .context("starting raft")?;
        // Only with other voters to wait for: a cluster of one elects
        // itself at once.
        let voters = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if restarting && voters > 1 {
            hold_elections_after_restart(
                &raft,
                Duration::from_millis(5 * config.election_timeout_ms),
            );
        }
        let cluster = Arc::new(Cluster {
            raft: raft.clone(),
            node_id: config.node_id,
            clock: shared.clock.clone(),
            applied,
            applied_now,
            peers,
            reads: parking_lot::Mutex::new(HashMap::new()),
            read_waiters: parking_lot::Mutex::new(Vec::new()),
            read_wanted: tokio::sync::Notify::new(),
            handing_off: std::sync::atomic::AtomicBool::new(false),
            leader_since: parking_lot::Mutex::new(None),
            lease: Duration::from_millis(2 * config.election_timeout_ms),
        });
        let listener = tokio::net::TcpListener::bind(&config.raft_addr)
            .await
            .with_context(|| format!("binding --raft-addr {}", config.raft_addr))?;
        tokio::spawn(network::serve(
            listener,
            cluster.clone(),
            peer_tls,
            shutdown.clone(),
        ));
        tokio::spawn(confirm_reads(cluster.clone(), shutdown.clone()));
        tokio::spawn(note_leadership(cluster.clone(), shutdown.clone()));
        tokio::spawn(watch_nodes(
            cluster.clone(),
            config.node_down_after,
            shutdown.clone(),
        ));
        // A node started without --initial-cluster waits to be added
        // (CLUSTER.ADDLEARNER on a member).
        if !config.initial.is_empty() && !raft.is_initialized().await.unwrap_or(false) {
            let members: BTreeMap<NodeId, BasicNode> = config
                .initial
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            // Every initial member may do this; the first to be elected
            // wins and the others' attempts are refused harmlessly.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "initialize");
            }
        }
        tracing::info!(node_id = config.node_id, raft_addr = %config.raft_addr, "cluster node started");
        Ok(cluster)
    }

    /// Makes the state this node's engine was loaded with from a single
    /// server's data directory (outside the log) part of the replicated
    /// state: once this node leads its cluster of one, a snapshot that holds
    /// it is taken and the log before it purged, so every node added later
    /// starts from that snapshot, never from an empty state. Clients are
    /// not served before this returns.
    ///
    /// # Errors
    /// No leadership, snapshot or purge within the time allowed.
    pub async fn seal_import(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let wait = || self.raft.wait(Some(Duration::from_secs(30)));
        wait()
            .state(openraft::ServerState::Leader, "leading the cluster of one")
            .await
            .context("becoming the leader of the new cluster")?;
        // Everything before this entry is applied once it is.
        let (_, index) = self
            .propose_here(Input::RecordAccesses)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("committing the first entry")?;
        self.raft
            .trigger()
            .snapshot()
            .await
            .context("starting the snapshot")?;
        let m = wait()
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "the snapshot holding the imported sessions",
            )
            .await
            .context("taking the snapshot")?;
        let upto = m.snapshot.map_or(index, |s| s.index);
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .context("purging the log")?;
        wait()
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= upto),
                "the log before the snapshot purged",
            )
            .await
            .context("purging the log")?;
        Ok(())
    }

    /// Proposes on this node if it leads; the leader's clock stamps it.
    /// Returns the result and the log index.
    async fn propose_here(&self, input: Input) -> Result<(InputResult, u64), ProposeError> {
        if self.handing_off.load(std::sync::atomic::Ordering::Acquire) {
            // As if no leader were known: the caller retries until the
            // successor leads.
            return Err(ProposeError::Forward(None, None));
        }
        let proposal = Proposal {
            now: self.clock.now(),
            input,
        };
        // A leader cut off from the majority cannot commit: it would wait
        // forever; the client gets an error instead (the entry may still be
        // committed later by a new leader, so the outcome is unknown).
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(proposal))
            .await
            .map_err(|_| ProposeError::Failed("not committed in time (no majority?)".into()))?;
        match written {
            Ok(resp) => Ok((resp.data.result, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(
                ProposeError::Forward(f.leader_id, f.leader_node.map(|n| n.addr)),
            ),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Proposes anywhere: here if this node leads, else through the leader.
    async fn propose_anywhere(&self, input: Input) -> Result<(InputResult, u64), ReplicationError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        loop {
            let attempt = match self.propose_here(input.clone()).await {
                Ok(done) => return Ok(done),
                Err(ProposeError::Forward(Some(leader), Some(addr))) if leader != self.node_id => {
                    // A leader that stops answering (paused, cut off) is
                    // replaced by an election: once another leader is
                    // known, its answer is not worth waiting for (the
                    // client's retry, with its request id, goes to the new
                    // one).
                    let mut metrics = self.raft.metrics();
                    let deposed =
                        metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != leader));
                    let forwarded = tokio::select! {
                        answer = self.peers.forward(&addr, input.clone()) => answer,
                        _ = deposed => Err(network::CallError::AfterSend(format!(
                            "node {leader} stopped leading during the request"
                        ))),
                    };
                    match forwarded {
                        Ok(Ok(done)) => return Ok(done),
                        // The leader answered but could not commit (it was
                        // deposed meanwhile): nothing applied; retry.
                        Ok(Err(network::ForwardRefused::NotLeader)) => None,
                        Ok(Err(network::ForwardRefused::Failed(e))) => {
                            return Err(ReplicationError::Unknown(e));
                        }
                        // Sent, and no answer: it may have been applied.
                        Err(network::CallError::AfterSend(e)) => {
                            return Err(ReplicationError::Unknown(e));
                        }
                        Err(network::CallError::BeforeSend(_)) => None,
                    }
                }
                Err(ProposeError::Forward(..)) => None,
                Err(ProposeError::Failed(e)) => Some(e),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(match attempt {
                    Some(e) => ReplicationError::Unknown(e),
                    None => ReplicationError::NoLeader,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Asked by a leader that is stopping: starts an election at once
    /// (the leader, which votes for an up-to-date candidate once it led
    /// longer than its lease, makes it win in one round trip instead of
    /// the followers waiting out lease and election timeout).
    async fn stand_for_election(&self) -> bool {
        let voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node_id);
        voter && self.raft.trigger().elect().await.is_ok()
    }

    /// On a graceful stop of the leader: takes no new entries, asks a
    /// voter whose log is complete to stand for election (this leader
    /// votes for it, which makes a majority of three), and waits for it to
    /// lead; up to two attempts in 1 s (one that does not win at once
    /// seldom wins on retry, and writes wait meanwhile). A rolling restart then costs
    /// writes a few round trips instead of the followers waiting out the
    /// leader's lease and an election timeout. Nothing to do on a
    /// follower.
    pub async fn hand_off_leadership(&self) {
        use std::sync::atomic::Ordering;
        {
            let m = self.raft.metrics().borrow().clone();
            let others = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v != self.node_id);
            if m.current_leader != Some(self.node_id) || !others {
                return;
            }
        }
        // No new entries from now on: the successor's log must hold every
        // one this leader has, or this leader refuses it its vote.
        self.handing_off.store(true, Ordering::Release);
        // A leader elected less than its lease ago refuses every vote:
        // wait that out first (only right after an election).
        let since = *self.leader_since.lock();
        if let Some(since) = since {
            tokio::time::sleep_until(since + self.lease + Duration::from_millis(20)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut attempts = 0;
        while tokio::time::Instant::now() < deadline && attempts < 2 {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader.is_some_and(|l| l != self.node_id) {
                // Proposals made here from now on go to the new leader
                // (while the flag is up they would wait for one to appear,
                // and hold up this node's stop for their full timeout).
                self.handing_off.store(false, Ordering::Release);
                return;
            }
            let last = m.last_log_index;
            let membership = m.membership_config.membership();
            let successor = m.replication.as_ref().and_then(|r| {
                membership
                    .voter_ids()
                    .filter(|v| *v != self.node_id)
                    .find(|v| {
                        last.is_some() && r.get(v).copied().flatten().map(|l| l.index) == last
                    })
                    .and_then(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
            });
            let Some((node, addr)) = successor else {
                // Entries still on their way to the followers.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            attempts += 1;
            if !self
                .peers
                .take_over(&addr, Duration::from_millis(300))
                .await
            {
                continue;
            }
            let handed = self
                .raft
                .wait(Some(Duration::from_millis(300)))
                // Another node leads (not merely: this one stepped down),
                // so this node's vote reached the successor before its
                // peer traffic stops.
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != self.node_id),
                    "another leader",
                )
                .await
                .is_ok();
            tracing::info!(
                node,
                handed,
                attempts,
                "stopping as leader: handing leadership over"
            );
            if handed {
                self.handing_off.store(false, Ordering::Release);
                return;
            }
        }
        if self.raft.metrics().borrow().current_leader == Some(self.node_id) {
            // Not handed over: lead on until the stop, as without it.
            tracing::warn!("stopping as leader: could not hand leadership over");
            self.handing_off.store(false, Ordering::Release);
        }
    }

    /// On the leader: the index of the last entry `node` acknowledged.
    fn matched(&self, node: NodeId) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.node_id) {
            return None;
        }
        m.replication?
            .get(&node)
            .copied()
            .flatten()
            .map(|l| l.index)
    }

    /// Raft's ReadIndex (see [`Replication::read_barrier`]).
    async fn read_barrier_here(&self) -> Option<Millis> {
        if !Replication::is_leader(self) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.read_waiters.lock().push(tx);
        self.read_wanted.notify_one();
        let index = rx.await.ok()??;
        let mut applied = self.applied.clone();
        tokio::time::timeout(PROPOSE_TIMEOUT, applied.wait_for(|a| *a >= index))
            .await
            .ok()?
            .ok()?;
        Some(
            self.clock
                .now()
                .max(self.applied_now.load(Ordering::Acquire)),
        )
    }

    async fn flush_reads_here(&self) {
        let accesses: Vec<(SessionId, Millis)> = {
            let mut reads = self.reads.lock();
            if reads.is_empty() {
                return;
            }
            let mut all: Vec<_> = reads.drain().collect();
            all.sort_unstable();
            all
        };
        // Lost if no leader takes it: those sessions then expire as if
        // last read before these reads (documented in docs/design.md).
        if let Err(e) = self.propose_anywhere(Input::ReadsServed { accesses }).await {
            tracing::debug!(error = %e, "recording served reads");
        }
    }

    /// This node's Raft state, as `key:value` lines.
    pub fn info_text(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let members: Vec<String> = membership
            .nodes()
            .map(|(id, n)| format!("{id}={}", n.addr))
            .collect();
        let voters: Vec<String> = membership.voter_ids().map(|id| id.to_string()).collect();
        let learners: Vec<String> = membership.learner_ids().map(|id| id.to_string()).collect();
        // openraft 0.9 does not report the commit index; what this node has
        // applied is committed, and is what it serves.
        let applied = m.last_applied.map_or(0, |l| l.index);
        let mut out = format!(
            "node_id:{}\r\nrole:{role}\r\nleader_id:{}\r\nterm:{}\r\ncommit_index:{applied}\r\napplied_index:{applied}\r\nlast_log_index:{}\r\nsnapshot_index:{}\r\nmembers:{}\r\nvoters:{}\r\nlearners:{}\r\n",
            self.node_id,
            m.current_leader.map_or(String::new(), |l| l.to_string()),
            m.current_term,
            m.last_log_index.unwrap_or(0),
            m.snapshot.map_or(0, |l| l.index),
            members.join(","),
            voters.join(","),
            learners.join(","),
        );
        if let Some(repl) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            for (id, matched) in repl {
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                out.push_str(&format!("follower_{id}_lag:{lag}\r\n"));
            }
        }
        out
    }
}

/// A node restarted on its data does not stand for election during its
/// first `hold` (it still votes): it is likely behind the leader, which
/// retries a node it could not reach only every 500 ms. Standing with a
/// shorter log is refused, and openraft 0.9 then remembers having seen a
/// greater log (`seen_greater_log`) until this node's next election, which
/// it delays by twice the longest election timeout: at the next failover,
/// when this node may be the one to win, that cost 0.8 s (failovers of
/// 1.5–2.1 s instead of 0.7–0.9 s in the benchmark). If every node
/// restarted, elections start once the hold is over.
fn hold_elections_after_restart(raft: &Raft<TypeConfig>, hold: Duration) {
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        raft.runtime_config().elect(true);
    });
}

/// Called for a node whose data directory holds nothing (no vote, no log,
/// no snapshot): refuses to start it as an initial member while the
/// cluster's leader says this node once acknowledged entries: its disk was
/// lost or wiped. Raft counts every
/// acknowledgement as a promise to keep the entry; a voter that comes back
/// without them can vote a candidate that lacks committed writes into
/// office, and openraft's leader asserts against a follower's log going
/// back. Such a node must leave the cluster and come back as a new member
/// (`CLUSTER.REMOVE`, then `CLUSTER.ADDLEARNER` and `CLUSTER.PROMOTE`).
/// An initial member that never ran (its first start, late) has nothing
/// acknowledged and starts as usual. Best effort: with no leader reachable,
/// or a leader elected since this node last answered (it knows nothing of
/// its past), the node starts.
async fn refuse_forgotten_voter(
    config: &ClusterConfig,
    data_dir: &std::path::Path,
    peers: &network::PeerPool,
) -> anyhow::Result<()> {
    let others = config
        .initial
        .iter()
        .filter(|(id, _)| **id != config.node_id)
        .map(|(_, addr)| addr);
    for addr in others {
        if let Some(index) = peers
            .matched(addr, config.node_id, Duration::from_secs(1))
            .await
            && index > 0
        {
            anyhow::bail!(
                "node {id} starts with an empty data directory ({dir}), but the cluster's leader ({addr}) says this node acknowledged its log up to entry {index}: its data was lost. \
                 It cannot rejoin as the same voter (it would forget entries it promised to keep). \
                 On a member: CLUSTER.REMOVE {id}; then start this node without --initial-cluster and add it back with CLUSTER.ADDLEARNER {id} {raft} and CLUSTER.PROMOTE {id} (docs/operations.md, \"Changing members, replacing a dead node\")",
                id = config.node_id,
                dir = data_dir.display(),
                raft = config.raft_addr,
            );
        }
    }
    Ok(())
}

/// Confirms leadership for waiting reads in rounds: each round takes every
/// read waiting when it starts, asks a majority once (openraft's
/// `get_read_log_id`: a heartbeat to every follower) and gives them all the
/// same read index. A read arriving during a round waits for the next: the
/// confirmation must come after the read arrived. Under load, one round
/// serves many reads instead of one heartbeat per read.
async fn confirm_reads(cluster: Arc<Cluster>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = cluster.read_wanted.notified() => {}
        }
        loop {
            let waiting = std::mem::take(&mut *cluster.read_waiters.lock());
            if waiting.is_empty() {
                break;
            }
            let index =
                match tokio::time::timeout(PROPOSE_TIMEOUT, cluster.raft.get_read_log_id()).await {
                    Ok(Ok((read_log_id, _))) => Some(read_log_id.map_or(0, |l| l.index)),
                    _ => None,
                };
            for tx in waiting {
                let _ = tx.send(index);
            }
        }
    }
}

/// On the leader: pings every other member; one that has not answered for
/// `down_after` is declared dead, and its connections' locks are released
/// through the log (their waiters get them). Its clients cannot notice in
/// time, but cannot do harm either: their fencing tokens are no longer
/// current. A node that comes back closes its old connections itself.
/// Records when this node becomes leader (see `Cluster::leader_since`).
async fn note_leadership(cluster: Arc<Cluster>, shutdown: tokio_util::sync::CancellationToken) {
    let mut metrics = cluster.raft.metrics();
    let mut leading = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let now_leading = metrics.borrow_and_update().current_leader == Some(cluster.node_id);
        if now_leading && !leading {
            *cluster.leader_since.lock() = Some(tokio::time::Instant::now());
        }
        leading = now_leading;
    }
}

async fn watch_nodes(
    cluster: Arc<Cluster>,
    down_after: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut last_seen: BTreeMap<NodeId, tokio::time::Instant> = BTreeMap::new();
    let mut declared: std::collections::BTreeSet<NodeId> = std::collections::BTreeSet::new();
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let metrics = cluster.raft.metrics().borrow().clone();
        let leading = metrics.current_leader == Some(cluster.node_id);
        if !leading {
            was_leader = false;
            continue;
        }
        let now = tokio::time::Instant::now();
        let members: Vec<(NodeId, String)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != cluster.node_id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        if !was_leader {
            // A new leader gives every node the full time from now.
            for (id, _) in &members {
                last_seen.insert(*id, now);
            }
            was_leader = true;
        }
        for (id, addr) in members {
            if cluster.peers.ping(&addr, Duration::from_millis(300)).await {
                last_seen.insert(id, now);
                declared.remove(&id);
                continue;
            }
            let seen = *last_seen.entry(id).or_insert(now);
            if now.duration_since(seen) >= down_after && !declared.contains(&id) {
                tracing::warn!(
                    node = id,
                    "node not answering: releasing its connections' locks"
                );
                // Only as the leader, never forwarded: a leader cut off
                // from the others sees none of them answer, and its
                // proposal, still in flight when the cut heals, would be
                // forwarded to the new leader and release the locks of
                // nodes that never went away.
                if cluster
                    .propose_here(Input::CloseNode {
                        node: id,
                        except_incarnation: None,
                    })
                    .await
                    .is_ok()
                {
                    declared.insert(id);
                }
            }
        }
    }
}

#[derive(Debug)]
enum ProposeError {
    Forward(Option<NodeId>, Option<String>),
    Failed(String),
}

impl Replication for Cluster {
    fn hand_off(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.hand_off_leadership())
    }

    fn propose(&self, input: Input) -> BoxFuture<'_, Result<(InputResult, u64), ReplicationError>> {
        Box::pin(self.propose_anywhere(input))
    }

    fn applied(
        &self,
        index: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut rx = self.applied.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(PROPOSE_TIMEOUT, rx.wait_for(|a| *a >= index)).await;
        })
    }

    fn info(&self) -> String {
        self.info_text()
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    fn leader_known(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    fn change_membership(&self, change: MembershipChange) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.change_anywhere(change))
    }

    fn read_barrier(&self) -> BoxFuture<'_, Option<Millis>> {
        Box::pin(self.read_barrier_here())
    }

    fn note_read(&self, id: SessionId, at: Millis) {
        let mut reads = self.reads.lock();
        let latest = reads.entry(id).or_insert(at);
        *latest = (*latest).max(at);
    }

    fn flush_reads(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flush_reads_here())
    }
}
