//! The glommio driver of this node's metadata-quorum member ([`QuorumNode`]).
//!
//! Runs on the controller shard when `--controller-quorum` is given. One task owns the node:
//! it takes peer messages and timer ticks as events, carries the node's outputs out in order
//! (sending a message is putting it in that peer's queue; persisting is a synced write of the
//! [`QuorumLog`]; applying decodes the record into the [`MetadataImage`]) and publishes what
//! DescribeQuorum reports. Peers talk over the controller address of the quorum list: frames
//! of a 4-byte big-endian length and a raft message in raft-rs's protobuf encoding. A message
//! that cannot be sent (the peer is down, its queue is full) is dropped; raft resends.
//!
//! The controller port has no authentication: keep it on a network only the cluster's nodes
//! reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tracing::{debug, error, info, warn};

use super::shard::Shard;
use crate::quorum::log::QuorumLog;
use crate::quorum::{
    MetadataImage, MetadataRecord, NodeId, QuorumConfig, QuorumNode, QuorumOutput,
};
use crate::storage::backend::DmaStorage;

/// Largest raft message accepted from a peer.
const PEER_FRAME_BYTES_MAX: usize = 64 << 20;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MESSAGES: usize = 1024;
/// How long a connection attempt to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What DescribeQuorum reports: this node's view of the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    /// This node.
    pub node_id: NodeId,
    /// The voters.
    pub voters: Vec<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The current term (the quorum's epoch).
    pub term: u64,
    /// The last metadata record this node applied.
    pub applied_index: u64,
}

enum Event {
    Peer(Message),
}

/// Starts the quorum member of this node on the current (controller) shard.
pub fn spawn(
    shard: &Rc<Shard>,
    voters: Vec<(NodeId, SocketAddr)>,
    listener: glommio::net::TcpListener,
) {
    let node_id = u64::try_from(shard.config.node_id).expect("validated as a voter id");
    let (events, incoming) = local_channel::new_bounded(PEER_QUEUE_MESSAGES);
    glommio::spawn_local(accept_peers(Rc::clone(shard), listener, events)).detach();
    let mut queues = BTreeMap::new();
    for &(peer, address) in voters.iter().filter(|(id, _)| *id != node_id) {
        let (sender, receiver) = local_channel::new_bounded(PEER_QUEUE_MESSAGES);
        glommio::spawn_local(send_to_peer(Rc::clone(shard), peer, address, receiver)).detach();
        queues.insert(peer, sender);
    }
    let ids: Vec<NodeId> = voters.iter().map(|(id, _)| *id).collect();
    glommio::spawn_local(run(Rc::clone(shard), node_id, ids, queues, incoming)).detach();
}

async fn run(
    shard: Rc<Shard>,
    node_id: NodeId,
    voters: Vec<NodeId>,
    queues: BTreeMap<NodeId, LocalSender<Vec<u8>>>,
    incoming: LocalReceiver<Event>,
) {
    let (mut log, restored) = match QuorumLog::open(DmaStorage, &shard.config.data_dir).await {
        Ok(opened) => opened,
        Err(error) => {
            error!(%error, "cannot open the metadata log; this node stays out of the quorum");
            return;
        }
    };
    info!(
        node_id,
        ?voters,
        entries = restored.entries.len(),
        term = restored.hard_state.term,
        "metadata quorum member starting"
    );
    let config = QuorumConfig::default();
    let mut node = QuorumNode::new(
        node_id,
        &voters,
        restored.hard_state,
        &restored.entries,
        config,
        super::random_u64(),
    );
    let mut image = MetadataImage::new();
    let started = Instant::now();
    let tick = Duration::from_millis(config.tick_ms as u64);
    let mut last_leader = None;
    let publish = |node: &QuorumNode, image: &MetadataImage| {
        let status = QuorumStatus {
            node_id,
            voters: voters.clone(),
            leader: node.leader(),
            term: node.term(),
            applied_index: image.last_applied_index(),
        };
        if let Ok(mut published) = shard.process.quorum.lock() {
            *published = Some(status);
        }
    };
    publish(&node, &image);
    while !shard.shutting_down.get() {
        let event = futures_lite::future::or(async { incoming.recv().await }, async {
            glommio::timer::sleep(tick).await;
            None
        })
        .await;
        match event {
            Some(Event::Peer(message)) => node.step(message),
            None => node.tick(started.elapsed().as_millis() as i64),
        }
        while let Some(output) = node.poll_output() {
            match output {
                QuorumOutput::Send(message) => {
                    let Some(queue) = queues.get(&message.to) else {
                        continue;
                    };
                    match message.write_to_bytes() {
                        // A full queue drops the message: raft resends what matters.
                        Ok(bytes) => drop(queue.try_send(bytes)),
                        Err(error) => warn!(%error, "a raft message does not encode"),
                    }
                }
                QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                } => {
                    if snapshot.is_some() {
                        error!("metadata snapshots are not supported yet; leaving the quorum");
                        return;
                    }
                    if let Err(error) = log.persist(&entries, hard_state.as_ref()).await {
                        // Raft cannot go on without its writes: acknowledging anything after a
                        // failed write could lose a committed entry.
                        error!(%error, "metadata log write failed; leaving the quorum");
                        return;
                    }
                }
                QuorumOutput::Apply { index, data } => match MetadataRecord::decode(&data) {
                    Ok(record) => {
                        if let Err(error) = image.apply(index, &record) {
                            warn!(index, %error, "metadata record not applied");
                        }
                    }
                    Err(error) => error!(index, %error, "unreadable metadata record"),
                },
            }
        }
        if node.leader() != last_leader {
            last_leader = node.leader();
            info!(leader = ?last_leader, term = node.term(), "metadata quorum leader");
        }
        publish(&node, &image);
    }
}

async fn accept_peers(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    events: LocalSender<Event>,
) {
    let events = Rc::new(events);
    while !shard.shutting_down.get() {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            None
        })
        .await;
        match accepted {
            None => continue,
            Some(Ok(stream)) => {
                let events = Rc::clone(&events);
                let shard = Rc::clone(&shard);
                glommio::spawn_local(async move { read_peer(shard, stream, events).await })
                    .detach();
            }
            Some(Err(error)) => {
                warn!(%error, "accepting a quorum peer failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn read_peer(shard: Rc<Shard>, mut stream: TcpStream, events: Rc<LocalSender<Event>>) {
    let peer = stream.peer_addr().ok();
    let mut length = [0_u8; 4];
    while !shard.shutting_down.get() {
        if stream.read_exact(&mut length).await.is_err() {
            break;
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > PEER_FRAME_BYTES_MAX {
            warn!(?peer, length, "quorum peer frame too large; closing");
            break;
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            break;
        }
        match Message::parse_from_bytes(&body) {
            Ok(message) => {
                if events.send(Event::Peer(message)).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                warn!(?peer, %error, "unreadable raft message; closing");
                break;
            }
        }
    }
    debug!(?peer, "quorum peer connection closed");
}

async fn send_to_peer(
    shard: Rc<Shard>,
    peer: NodeId,
    address: SocketAddr,
    queue: LocalReceiver<Vec<u8>>,
) {
    let mut stream: Option<TcpStream> = None;
    while let Some(message) = queue.recv().await {
        if shard.shutting_down.get() {
            return;
        }
        if stream.is_none() {
            let connect =
                futures_lite::future::or(async { TcpStream::connect(address).await.ok() }, async {
                    glommio::timer::sleep(PEER_CONNECT_TIMEOUT).await;
                    None
                });
            stream = connect.await;
            if let Some(connected) = &stream {
                let _ = connected.set_nodelay(true);
                debug!(peer, %address, "connected to quorum peer");
            }
        }
        let Some(connected) = stream.as_mut() else {
            continue;
        };
        let mut frame = Vec::with_capacity(4 + message.len());
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        if connected.write_all(&frame).await.is_err() {
            stream = None;
        }
    }
}
