//! Peer RPC: Raft's messages between nodes, and proposals a follower
//! forwards to the leader. One request, one response, each a frame of a
//! 4-byte big-endian length and a postcard body, over a TCP connection kept
//! open and reused (one call at a time per connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use sessiond_core::engine::{Input, InputResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::tls::PeerTls;
use tokio_util::sync::CancellationToken;

use super::{Cluster, NodeId, ProposeError, TypeConfig};
use crate::state::MembershipChange;

/// The largest frame accepted from a peer (snapshots come in chunks).
const MAX_FRAME: usize = 256 << 20;

/// How long one RPC may take when openraft sets no deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    Propose(Input),
    Ping,
    // New variants go last: the encoding numbers them in order.
    Membership(MembershipChange),
    /// How far the answering leader knows node N's log to reach.
    Matched(NodeId),
    /// From a leader that is stopping: stand for election now.
    TakeOver,
}

#[derive(Debug, Serialize, Deserialize)]
enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Propose(Result<(InputResult, u64), ForwardRefused>),
    Pong,
    Membership(Result<(), ChangeRefused>),
    /// The index of the last entry node N acknowledged to this leader;
    /// `None` from a node that does not lead or has no such record.
    Matched(Option<u64>),
    /// The election was started (or could not be).
    TakeOver(bool),
}

/// Why a leader refused a forwarded membership change.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefused {
    /// It is not the leader (any more).
    #[error("the leader changed; retry")]
    NotLeader,
    /// Refused or failed.
    #[error("{0}")]
    Failed(String),
}

/// Why a leader refused a forwarded proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRefused {
    /// It is not the leader (any more): nothing was applied.
    NotLeader,
    /// It failed to commit it: it may or may not have been applied.
    Failed(String),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing reached the peer (connect failed).
    #[error("peer unreachable: {0}")]
    BeforeSend(String),
    /// The request may have reached the peer; no answer came.
    #[error("no answer from peer: {0}")]
    AfterSend(String),
}

/// A connection to or from a peer: TCP, or TLS over it (`--tls-cluster`).
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerIo for T {}

async fn write_frame<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn read_frame<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("peer frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// One reusable connection to a peer address.
#[derive(Default)]
struct Channel {
    stream: Option<Box<dyn PeerIo>>,
    // TLS to peers, when the cluster uses it.
    tls: Option<Arc<PeerTls>>,
}

impl Channel {
    async fn call(
        &mut self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let body = postcard::to_stdvec(req).map_err(|e| CallError::BeforeSend(e.to_string()))?;
        // A kept connection whose peer went away (a killed leader) is
        // readable with EOF before anything is sent on it: drop it and
        // connect afresh, so a request is never reported as possibly applied
        // when it could not have reached anyone.
        if let Some(stream) = &mut self.stream {
            // One poll that does not wait (TLS records must go through
            // rustls, so the socket is not read around it).
            let mut probe = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut probe);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if !std::pin::Pin::new(stream)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
            {
                self.stream = None;
            }
        }
        if self.stream.is_none() {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| CallError::BeforeSend(format!("connect to {addr} timed out")))?
                .map_err(|e| CallError::BeforeSend(format!("connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(match &self.tls {
                None => Box::new(stream),
                Some(tls) => {
                    let name = PeerTls::server_name(addr).map_err(CallError::BeforeSend)?;
                    let tls = tokio::time::timeout(timeout, tls.connector.connect(name, stream))
                        .await
                        .map_err(|_| {
                            CallError::BeforeSend(format!("TLS handshake with {addr} timed out"))
                        })?
                        .map_err(|e| {
                            CallError::BeforeSend(format!("TLS handshake with {addr}: {e}"))
                        })?;
                    Box::new(tls)
                }
            });
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(CallError::BeforeSend("no connection".into()));
        };
        let exchange = async {
            write_frame(stream, &body).await?;
            read_frame(stream).await
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.stream = None;
                return Err(CallError::AfterSend(e.to_string()));
            }
            Err(_) => {
                self.stream = None;
                return Err(CallError::AfterSend(format!(
                    "{addr} did not answer in time"
                )));
            }
        };
        postcard::from_bytes(&answer).map_err(|e| {
            self.stream = None;
            CallError::AfterSend(format!("undecodable answer from {addr}: {e}"))
        })
    }
}

/// Connections for forwarded proposals, by leader address: a small pool,
/// so concurrent client requests on a follower do not queue behind one
/// another.
#[derive(Clone, Default)]
pub struct PeerPool {
    idle: Arc<parking_lot::Mutex<HashMap<String, Vec<Channel>>>>,
    tls: Option<Arc<PeerTls>>,
}

impl PeerPool {
    /// A pool whose connections use `tls` (none: plain TCP).
    pub fn new(tls: Option<Arc<PeerTls>>) -> PeerPool {
        PeerPool {
            idle: Arc::default(),
            tls,
        }
    }

    fn channel(&self) -> Channel {
        Channel {
            stream: None,
            tls: self.tls.clone(),
        }
    }

    /// An idle connection to `addr`, or a new (unconnected) one.
    fn checkout(&self, addr: &str) -> Channel {
        self.idle
            .lock()
            .get_mut(addr)
            .and_then(Vec::pop)
            .unwrap_or_else(|| self.channel())
    }

    /// Keeps `channel` for the next call to `addr`, if it is still connected
    /// (at most 16 per address).
    fn checkin(&self, addr: &str, channel: Channel) {
        if channel.stream.is_some() {
            let mut idle = self.idle.lock();
            let list = idle.entry(addr.to_owned()).or_default();
            if list.len() < 16 {
                list.push(channel);
            }
        }
    }

    /// Forwards `input` to the leader at `addr`.
    ///
    /// # Errors
    /// [`CallError`] when the call failed.
    pub async fn forward(
        &self,
        addr: &str,
        input: Input,
    ) -> Result<Result<(InputResult, u64), ForwardRefused>, CallError> {
        let mut channel = self.checkout(addr);
        let answer = channel
            .call(addr, &PeerRequest::Propose(input), CALL_TIMEOUT)
            .await;
        self.checkin(addr, channel);
        match answer? {
            PeerResponse::Propose(r) => Ok(r),
            other => Err(CallError::AfterSend(format!("unexpected answer {other:?}"))),
        }
    }
}

impl PeerPool {
    /// Forwards a membership change to the leader at `addr`.
    ///
    /// # Errors
    /// [`CallError`] when the call failed.
    pub async fn change_membership(
        &self,
        addr: &str,
        change: MembershipChange,
    ) -> Result<Result<(), ChangeRefused>, CallError> {
        let mut channel = self.checkout(addr);
        let answer = channel
            .call(addr, &PeerRequest::Membership(change), CALL_TIMEOUT)
            .await;
        self.checkin(addr, channel);
        match answer? {
            PeerResponse::Membership(r) => Ok(r),
            other => Err(CallError::AfterSend(format!("unexpected answer {other:?}"))),
        }
    }

    /// Asks the node at `addr`, if it leads, up to which index node `node`
    /// acknowledged its log; `None` when it does not lead, does not know,
    /// or does not answer within `timeout`.
    pub async fn matched(&self, addr: &str, node: NodeId, timeout: Duration) -> Option<u64> {
        let mut channel = self.checkout(addr);
        let answer = channel
            .call(addr, &PeerRequest::Matched(node), timeout)
            .await;
        self.checkin(addr, channel);
        match answer {
            Ok(PeerResponse::Matched(m)) => m,
            _ => None,
        }
    }

    /// Asks the node at `addr` to stand for election now (a stopping
    /// leader hands over); whether it started one.
    pub async fn take_over(&self, addr: &str, timeout: Duration) -> bool {
        let mut channel = self.checkout(addr);
        let answer = channel.call(addr, &PeerRequest::TakeOver, timeout).await;
        self.checkin(addr, channel);
        matches!(answer, Ok(PeerResponse::TakeOver(true)))
    }

    /// Whether the node at `addr` answers within `timeout`.
    pub async fn ping(&self, addr: &str, timeout: Duration) -> bool {
        let mut channel = self.checkout(addr);
        let ok = matches!(
            channel.call(addr, &PeerRequest::Ping, timeout).await,
            Ok(PeerResponse::Pong)
        );
        self.checkin(addr, channel);
        ok
    }
}

/// Makes Raft's connections to peers.
pub struct Network {
    /// Shared with the forwarding path (not used by Raft's own calls).
    pub peers: PeerPool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            channel: self.peers.channel(),
        }
    }
}

/// Raft's connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    channel: Channel,
}

impl PeerConnection {
    async fn call<E: std::error::Error>(
        &mut self,
        req: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, BasicNode, E>> {
        let timeout = option.hard_ttl().min(CALL_TIMEOUT);
        self.channel
            .call(&self.addr, &req, timeout)
            .await
            .map_err(|e| match e {
                CallError::BeforeSend(m) => {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m)))
                }
                CallError::AfterSend(m) => {
                    RPCError::Network(NetworkError::new(&std::io::Error::other(m)))
                }
            })
    }
}

fn unexpected<E: std::error::Error>(
    target: NodeId,
    got: &PeerResponse,
) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "node {target} answered {got:?}"
    ))))
}

fn remote<E: std::error::Error>(
    target: NodeId,
    e: RaftError<NodeId, E>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::RemoteError(openraft::error::RemoteError::new(target, e))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Append(req), &option).await? {
            PeerResponse::Append(r) => r.map_err(|e| remote(self.target, e)),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(PeerRequest::Snapshot(req), &option).await? {
            PeerResponse::Snapshot(r) => r.map_err(|e| remote(self.target, e)),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(req), &option).await? {
            PeerResponse::Vote(r) => r.map_err(|e| remote(self.target, e)),
            other => Err(unexpected(self.target, &other)),
        }
    }
}

/// Serves peers on `listener` until `shutdown`, over TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    tls: Option<Arc<PeerTls>>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (cluster, shutdown, tls) = (cluster.clone(), shutdown.clone(), tls.clone());
        tokio::spawn(async move {
            let served = async {
                match tls {
                    None => serve_peer(stream, &cluster).await,
                    Some(tls) => {
                        let handshake = tokio::time::timeout(
                            crate::tls::HANDSHAKE_TIMEOUT,
                            tls.acceptor.accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(stream)) => serve_peer(stream, &cluster).await,
                            Ok(Err(e)) => {
                                tracing::warn!(%addr, error = %e, "peer TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::warn!(%addr, "peer TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = served => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "peer connection ended");
                    }
                }
            }
        });
    }
}

async fn serve_peer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    cluster: &Cluster,
) -> std::io::Result<()> {
    loop {
        let body = read_frame(&mut stream).await?;
        let req: PeerRequest = postcard::from_bytes(&body)
            .map_err(|e| std::io::Error::other(format!("undecodable peer request: {e}")))?;
        let resp = match req {
            PeerRequest::Append(r) => PeerResponse::Append(cluster.raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerResponse::Vote(cluster.raft.vote(r).await),
            PeerRequest::Snapshot(r) => {
                PeerResponse::Snapshot(cluster.raft.install_snapshot(r).await)
            }
            PeerRequest::Ping => PeerResponse::Pong,
            PeerRequest::Propose(input) => {
                PeerResponse::Propose(match cluster.propose_here(input).await {
                    Ok(done) => Ok(done),
                    Err(ProposeError::Forward(..)) => Err(ForwardRefused::NotLeader),
                    Err(ProposeError::Failed(e)) => Err(ForwardRefused::Failed(e)),
                })
            }
            PeerRequest::Membership(change) => PeerResponse::Membership(
                super::membership::answer_forwarded(cluster.change_here(&change).await),
            ),
            PeerRequest::Matched(node) => PeerResponse::Matched(cluster.matched(node)),
            PeerRequest::TakeOver => PeerResponse::TakeOver(cluster.stand_for_election().await),
        };
        let bytes = postcard::to_stdvec(&resp)
            .map_err(|e| std::io::Error::other(format!("encoding an answer: {e}")))?;
        write_frame(&mut stream, &bytes).await?;
    }
}
