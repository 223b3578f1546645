//! The glommio driver of this node's metadata-quorum member ([`QuorumNode`]).
//!
//! Runs on the controller shard when `--controller-quorum` is given. One task owns the node:
//! it takes peer messages and timer ticks as events, carries the node's outputs out in order
//! (sending a message is putting it in that peer's queue; persisting is a synced write of the
//! [`QuorumLog`]; applying decodes the record into the [`MetadataImage`]) and publishes what
//! DescribeQuorum and DescribeCluster report.
//!
//! The same task is this node's broker side of the [`Controller`]: every
//! `broker_heartbeat_interval_ms` it registers (until its applied metadata shows its
//! registration) or heartbeats, to the quorum leader (itself, when it leads). The quorum
//! leader runs the [`Controller`]: it turns registrations, heartbeats and expired sessions into
//! metadata records and proposes them. A broker learns its epoch and whether it is fenced from
//! the records it applies, so requests need no replies.
//!
//! Peers talk over the controller address of the quorum list: frames of a 4-byte big-endian
//! length, a kind byte (0: a raft message in raft-rs's protobuf encoding; 1: a controller
//! request, JSON) and the payload. A message that cannot be sent (the peer is down, its queue
//! is full) is dropped: raft resends, and the next heartbeat replaces a lost one.
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
use crate::quorum::controller::{Heartbeat, Registration};
use crate::quorum::log::QuorumLog;
use crate::quorum::{
    Controller, ControllerConfig, MetadataImage, MetadataRecord, MetadataSnapshot, NodeId,
    QuorumConfig, QuorumNode, QuorumOutput,
};
use crate::storage::backend::DmaStorage;

/// Largest raft message accepted from a peer.
const PEER_FRAME_BYTES_MAX: usize = 64 << 20;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MESSAGES: usize = 1024;
/// How long a connection attempt to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Frame kind: a raft message.
const FRAME_RAFT: u8 = 0;
/// Frame kind: a broker's request to the controller.
const FRAME_CONTROLLER_REQUEST: u8 = 1;

/// A broker's request to the active controller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum ControllerRequest {
    Register {
        broker_id: i32,
        incarnation_id: uuid::Uuid,
        host: String,
        port: i32,
    },
    Heartbeat {
        broker_id: i32,
        broker_epoch: i64,
    },
}

/// A registered broker, as DescribeCluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBroker {
    /// `node.id`.
    pub broker_id: i32,
    /// Where clients reach it.
    pub host: String,
    /// Its Kafka port.
    pub port: i32,
    /// Fenced: silent too long, or not yet caught up.
    pub fenced: bool,
}

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
    /// Registered brokers, as the applied metadata says.
    pub brokers: Vec<ClusterBroker>,
}

enum Event {
    Peer(Message),
    Request(ControllerRequest),
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
    let snapshot_index = restored
        .snapshot
        .as_ref()
        .map_or(0, |snapshot| snapshot.get_metadata().index);
    info!(
        node_id,
        ?voters,
        snapshot_index,
        entries = restored.entries.len(),
        term = restored.hard_state.term,
        "metadata quorum member starting"
    );
    let mut image = match &restored.snapshot {
        None => MetadataImage::new(),
        Some(snapshot) => match image_from_snapshot(&snapshot.data) {
            Ok(image) => image,
            Err(error) => {
                error!(%error, "cannot read the metadata snapshot; this node stays out of the quorum");
                return;
            }
        },
    };
    let config = QuorumConfig::default();
    let mut node = QuorumNode::new(
        node_id,
        &voters,
        restored.into_durable(),
        config,
        super::random_u64(),
    );
    let snapshot_interval_records = shard.config.metadata_snapshot_interval_records;
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as i64;
    let tick = Duration::from_millis(config.tick_ms as u64);
    let mut last_leader = None;
    let incarnation_id = super::random_uuid();
    let controller_config = ControllerConfig {
        broker_session_timeout_ms: shard.config.broker_session_timeout_ms,
    };
    let mut controller: Option<Controller> = None;
    let mut next_heartbeat_ms = 0;
    let publish = |node: &QuorumNode, image: &MetadataImage| {
        let status = QuorumStatus {
            node_id,
            voters: voters.clone(),
            leader: node.leader(),
            term: node.term(),
            applied_index: image.last_applied_index(),
            brokers: image
                .brokers()
                .values()
                .map(|broker| ClusterBroker {
                    broker_id: broker.broker_id,
                    host: broker.host.clone(),
                    port: broker.port,
                    fenced: broker.fenced,
                })
                .collect(),
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
        let mut proposals = Vec::new();
        match event {
            Some(Event::Peer(message)) => node.step(message),
            Some(Event::Request(request)) => {
                if let Some(controller) = controller.as_mut() {
                    proposals.extend(handle_request(controller, &image, now_ms(), request));
                }
            }
            None => node.tick(now_ms()),
        }
        // The active controller: created when this node becomes the quorum leader, with
        // fresh sessions for every broker.
        if node.is_leader() != controller.is_some() {
            controller = node.is_leader().then(|| Controller::new(controller_config));
        }
        if let Some(controller) = controller.as_mut() {
            proposals.extend(controller.tick(&image, now_ms()));
        }
        if now_ms() >= next_heartbeat_ms {
            next_heartbeat_ms = now_ms() + shard.config.broker_heartbeat_interval_ms;
            let request = broker_request(&shard, &image, incarnation_id);
            match (controller.as_mut(), node.leader()) {
                (Some(controller), _) => {
                    proposals.extend(handle_request(controller, &image, now_ms(), request));
                }
                (None, Some(leader)) => {
                    if let (Some(queue), Ok(payload)) =
                        (queues.get(&leader), serde_json::to_vec(&request))
                    {
                        drop(queue.try_send(frame(FRAME_CONTROLLER_REQUEST, &payload)));
                    }
                }
                (None, None) => {}
            }
        }
        for record in proposals {
            // Dropped when leadership moved meanwhile: the broker asks again.
            let _ = node.propose(record.encode());
        }
        loop {
            let Some(output) = node.poll_output() else {
                // Everything applied: time for a snapshot?
                let applied = image.last_applied_index();
                if applied >= node.snapshot_index() + snapshot_interval_records {
                    node.compact(applied, image.to_snapshot().encode());
                    continue;
                }
                break;
            };
            match output {
                QuorumOutput::Send(message) => {
                    let Some(queue) = queues.get(&message.to) else {
                        continue;
                    };
                    match message.write_to_bytes() {
                        // A full queue drops the message: raft resends what matters.
                        Ok(bytes) => drop(queue.try_send(frame(FRAME_RAFT, &bytes))),
                        Err(error) => warn!(%error, "a raft message does not encode"),
                    }
                }
                QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                } => {
                    let persisted = log
                        .persist(&entries, hard_state.as_ref(), snapshot.as_ref())
                        .await;
                    if let Err(error) = persisted {
                        // Raft cannot go on without its writes: acknowledging anything after a
                        // failed write could lose a committed entry.
                        error!(%error, "metadata log write failed; leaving the quorum");
                        return;
                    }
                }
                QuorumOutput::Compact(snapshot) => {
                    if let Err(error) = log.compact(&snapshot).await {
                        error!(%error, "metadata snapshot write failed; leaving the quorum");
                        return;
                    }
                    info!(
                        index = snapshot.get_metadata().index,
                        "metadata snapshot taken, log truncated"
                    );
                }
                QuorumOutput::Install { index, data } => match image_from_snapshot(&data) {
                    Ok(installed) => {
                        info!(index, "metadata snapshot installed from the leader");
                        image = installed;
                    }
                    Err(error) => {
                        // Going on without it would answer from a wrong image.
                        error!(index, %error, "unreadable metadata snapshot; leaving the quorum");
                        return;
                    }
                },
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

/// The image a snapshot's data holds.
fn image_from_snapshot(data: &[u8]) -> Result<MetadataImage, String> {
    let snapshot = MetadataSnapshot::decode(data).map_err(|error| error.to_string())?;
    MetadataImage::from_snapshot(&snapshot).map_err(|error| error.to_string())
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
        let event = match body.split_first() {
            Some((&FRAME_RAFT, payload)) => Message::parse_from_bytes(payload)
                .map(Event::Peer)
                .map_err(|error| error.to_string()),
            Some((&FRAME_CONTROLLER_REQUEST, payload)) => serde_json::from_slice(payload)
                .map(Event::Request)
                .map_err(|error| error.to_string()),
            _ => Err("unknown frame kind".to_string()),
        };
        match event {
            Ok(event) => {
                if events.send(event).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                warn!(?peer, %error, "unreadable quorum peer frame; closing");
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
        if connected.write_all(&message).await.is_err() {
            stream = None;
        }
    }
}

/// A peer frame: length (of kind and payload), kind, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    frame
}

/// This node's request as a broker: register until the applied metadata shows this
/// incarnation registered, then heartbeat with its epoch.
fn broker_request(
    shard: &Shard,
    image: &MetadataImage,
    incarnation_id: uuid::Uuid,
) -> ControllerRequest {
    let broker_id = shard.config.node_id;
    match image
        .broker(broker_id)
        .filter(|broker| broker.incarnation_id == incarnation_id)
    {
        Some(broker) => ControllerRequest::Heartbeat {
            broker_id,
            broker_epoch: broker.broker_epoch,
        },
        None => ControllerRequest::Register {
            broker_id,
            incarnation_id,
            host: shard.config.advertised_host.clone(),
            port: shard.config.advertised_port,
        },
    }
}

/// The active controller's records for a broker's request.
fn handle_request(
    controller: &mut Controller,
    image: &MetadataImage,
    now_ms: i64,
    request: ControllerRequest,
) -> Vec<MetadataRecord> {
    match request {
        ControllerRequest::Register {
            broker_id,
            incarnation_id,
            host,
            port,
        } => {
            let already = image
                .broker(broker_id)
                .is_some_and(|broker| broker.incarnation_id == incarnation_id);
            if already {
                return Vec::new();
            }
            controller.register_broker(
                image,
                now_ms,
                Registration {
                    broker_id,
                    incarnation_id,
                    host,
                    port,
                    rack: None,
                },
            )
        }
        ControllerRequest::Heartbeat {
            broker_id,
            broker_epoch,
        } => controller
            .heartbeat(
                image,
                now_ms,
                Heartbeat {
                    broker_id,
                    broker_epoch,
                    want_shut_down: false,
                },
            )
            .map(|(_, records)| records)
            // A stale epoch: the broker registers again once its metadata shows it.
            .unwrap_or_default(),
    }
}
