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
//! The task also runs topic administration for the node's shards ([`super::cluster_admin`]):
//! a shard's CreateTopics or DeleteTopics goes to the active controller (here, or forwarded to
//! the quorum leader with a request id), which proposes the records and answers once they are
//! applied; the asking node answers its shard once it applied them too. After every change of
//! the applied topics, partitions or brokers it publishes them to the shards as a new catalog.
//!
//! Peers talk over the controller address of the quorum list: frames of a 4-byte big-endian
//! length, a kind byte (0: a raft message in raft-rs's protobuf encoding; 1: a controller
//! request, JSON; 2: the controller's reply to a topic request, JSON) and the payload. A message that cannot be sent (the peer is down, its queue
//! is full) is dropped: raft resends, and the next heartbeat replaces a lost one.
//!
//! The controller port has no authentication: keep it on a network only the cluster's nodes
//! reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tracing::{debug, error, info, warn};

use super::shard::Shard;
use crate::quorum::admin::{self as cluster_admin, ItemResult, TopicAdmin};
use crate::quorum::log::QuorumLog;
pub(crate) use crate::quorum::member::{
    image_from_snapshot, ControllerReply, ControllerRequest, MetadataFetch, MetadataUpdate,
    TOPIC_REQUEST_TIMEOUT_MS,
};
use crate::quorum::member::{
    BrokerEndpoint, MemberConfig, MemberInput, MemberOutput, QuorumMember,
};
use crate::quorum::{ControllerConfig, MetadataImage, NodeId, QuorumConfig};
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
pub(super) const FRAME_CONTROLLER_REQUEST: u8 = 1;
/// Frame kind: the controller's reply to a topic request.
pub(super) const FRAME_CONTROLLER_REPLY: u8 = 2;
/// Frame kind: a broker-only node asks for the metadata records after an index.
pub(super) const FRAME_METADATA_FETCH: u8 = 3;
/// Frame kind: the answer, on the same connection.
pub(super) const FRAME_METADATA_UPDATE: u8 = 4;

/// Where a shard waits for a topic request's results and the log index they hold at.
type AdminReply = oneshot::Sender<(Vec<ItemResult>, u64)>;

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

/// What the driver task takes in.
pub(crate) enum Event {
    Peer(Message),
    Request(ControllerRequest),
    Reply(ControllerReply),
    /// A connection that carried this broker's heartbeats (at this broker epoch) closed.
    PeerGone {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// A connection that carried this voter's raft messages closed.
    VoterGone {
        voter: NodeId,
    },
    /// A shard's topic request; answered with the results and the log index they hold at.
    Admin {
        admin: TopicAdmin,
        reply: AdminReply,
    },
    /// A broker-only node's [`MetadataFetch`], answered with the encoded [`MetadataUpdate`].
    MetadataFetch {
        fetch: MetadataFetch,
        reply: oneshot::Sender<Vec<u8>>,
    },
}

/// Starts the quorum member of this node on the current (controller) shard.
pub fn spawn(
    shard: &Rc<Shard>,
    voters: Vec<(NodeId, SocketAddr)>,
    listener: glommio::net::TcpListener,
) {
    let node_id = u64::try_from(shard.config.node_id).expect("validated as a voter id");
    let (events, incoming) = local_channel::new_bounded(PEER_QUEUE_MESSAGES);
    let events = Rc::new(events);
    shard.set_quorum_events(Rc::clone(&events));
    glommio::spawn_local(Rc::clone(shard).publish_cluster_metadata()).detach();
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
    let image = match &restored.snapshot {
        None => MetadataImage::new(),
        Some(snapshot) => match image_from_snapshot(&snapshot.data) {
            Ok(image) => image,
            Err(error) => {
                error!(%error, "cannot read the metadata snapshot; this node stays out of the quorum");
                return;
            }
        },
    };
    let config = MemberConfig {
        node_id,
        voters: voters.clone(),
        broker: shard.config.roles.broker.then(|| BrokerEndpoint {
            host: shard.config.advertised_host.clone(),
            port: shard.config.advertised_port,
            data_lost: holds_no_partitions(&shard.config.data_dir),
        }),
        quorum: QuorumConfig::default(),
        controller: ControllerConfig {
            broker_session_timeout_ms: shard.config.broker_session_timeout_ms,
            partitions_per_broker_max: shard.config.max_partitions_per_broker,
        },
        broker_heartbeat_interval_ms: shard.config.broker_heartbeat_interval_ms,
        leader_imbalance_check_interval_ms: shard.config.leader_imbalance_check_interval_ms,
        snapshot_interval_records: shard.config.metadata_snapshot_interval_records,
    };
    let tick = Duration::from_millis(config.quorum.tick_ms as u64);
    let mut member: QuorumMember<AdminReply> =
        QuorumMember::new(config, restored.into_durable(), image, super::random_u64());
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as i64;
    let cluster_id = cluster_admin::cluster_id_of(&shard.config.controller_quorum);
    let mut last_leader = None;
    let publish = |member: &QuorumMember<AdminReply>| {
        let image = member.image();
        let status = QuorumStatus {
            node_id,
            voters: voters.clone(),
            leader: member.node().leader(),
            term: member.node().term(),
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
    publish(&member);
    while !shard.shutting_down.get() {
        let event = futures_lite::future::or(async { incoming.recv().await }, async {
            glommio::timer::sleep(tick).await;
            None
        })
        .await;
        if shard.process.shutdown_requested.load(Ordering::SeqCst) {
            member.request_shutdown();
        }
        let input = match event {
            Some(Event::Peer(message)) => MemberInput::Raft(message),
            Some(Event::Request(request)) => MemberInput::Request(request),
            Some(Event::Reply(reply)) => MemberInput::Reply(reply),
            Some(Event::PeerGone {
                broker_id,
                broker_epoch,
            }) => MemberInput::HeartbeatsGone {
                broker_id,
                broker_epoch,
            },
            Some(Event::VoterGone { voter }) => MemberInput::VoterGone { voter },
            Some(Event::Admin { admin, reply }) => MemberInput::Admin { admin, reply },
            Some(Event::MetadataFetch { fetch, reply }) => {
                let update = member.metadata_fetch(&fetch);
                if let Ok(bytes) = serde_json::to_vec(&update) {
                    let _ = reply.send(bytes);
                }
                MemberInput::Tick
            }
            None => MemberInput::Tick,
        };
        member.handle(now_ms(), input);
        while let Some(output) = member.poll_output() {
            match output {
                MemberOutput::Raft(message) => {
                    let Some(queue) = queues.get(&message.to) else {
                        continue;
                    };
                    match message.write_to_bytes() {
                        // A full queue drops the message: raft resends what matters.
                        Ok(bytes) => drop(queue.try_send(frame(FRAME_RAFT, &bytes))),
                        Err(error) => warn!(%error, "a raft message does not encode"),
                    }
                }
                MemberOutput::Request { to, request } => {
                    // A heartbeat that cannot be queued is replaced by the next; a topic
                    // request is answered at once (NOT_CONTROLLER: the asker retries).
                    let queued = match (queues.get(&to), serde_json::to_vec(&request)) {
                        (Some(queue), Ok(payload)) => queue
                            .try_send(frame(FRAME_CONTROLLER_REQUEST, &payload))
                            .is_ok(),
                        _ => false,
                    };
                    if let (false, ControllerRequest::Topics { request_id, .. }) =
                        (queued, &request)
                    {
                        member.handle(
                            now_ms(),
                            MemberInput::RequestLost {
                                request_id: *request_id,
                            },
                        );
                    }
                }
                MemberOutput::Reply { to, reply } => {
                    if let (Some(queue), Ok(payload)) =
                        (queues.get(&to), serde_json::to_vec(&reply))
                    {
                        drop(queue.try_send(frame(FRAME_CONTROLLER_REPLY, &payload)));
                    }
                }
                MemberOutput::Persist {
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
                MemberOutput::Compact(snapshot) => {
                    if let Err(error) = log.compact(&snapshot).await {
                        error!(%error, "metadata snapshot write failed; leaving the quorum");
                        return;
                    }
                    info!(
                        index = snapshot.get_metadata().index,
                        "metadata snapshot taken, log truncated"
                    );
                }
                MemberOutput::Answer {
                    reply,
                    results,
                    applied_index,
                } => {
                    let _ = reply.send((results, applied_index));
                }
                MemberOutput::Failed(reason) => {
                    error!(%reason, "leaving the quorum");
                    return;
                }
            }
        }
        if member.controlled_shutdown_done() {
            shard
                .process
                .controlled_shutdown_done
                .store(true, Ordering::SeqCst);
        }
        if member.node().leader() != last_leader {
            last_leader = member.node().leader();
            info!(leader = ?last_leader, term = member.node().term(), "metadata quorum leader");
        }
        publish(&member);
        // The shards serve the applied topics, partitions and brokers (once this incarnation
        // is registered and unfenced: see `QuorumMember`).
        if let Some((applied, topics, layout)) = member.layout_update() {
            shard.queue_cluster_metadata(applied, &cluster_id, topics, layout);
        }
    }
}

async fn accept_peers(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    events: Rc<LocalSender<Event>>,
) {
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
    // The broker whose heartbeats this connection carries, and at which registration.
    let mut heartbeats_of: Option<(i32, i64)> = None;
    // The voter whose raft messages it carries.
    let mut raft_of: Option<NodeId> = None;
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
            Some((&FRAME_CONTROLLER_REPLY, payload)) => serde_json::from_slice(payload)
                .map(Event::Reply)
                .map_err(|error| error.to_string()),
            Some((&FRAME_METADATA_FETCH, payload)) => {
                // Answered on this connection, in order: the asker waits for it.
                let fetch: MetadataFetch = match serde_json::from_slice(payload) {
                    Ok(fetch) => fetch,
                    Err(error) => {
                        warn!(?peer, %error, "unreadable metadata fetch; closing");
                        break;
                    }
                };
                let (reply, answer) = oneshot::channel();
                if events
                    .send(Event::MetadataFetch { fetch, reply })
                    .await
                    .is_err()
                {
                    break;
                }
                let Ok(update) = answer.await else {
                    break;
                };
                if stream
                    .write_all(&frame(FRAME_METADATA_UPDATE, &update))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            _ => Err("unknown frame kind".to_string()),
        };
        if let Ok(Event::Request(ControllerRequest::Heartbeat {
            broker_id,
            broker_epoch,
            ..
        })) = &event
        {
            heartbeats_of = Some((*broker_id, *broker_epoch));
        }
        if let Ok(Event::Peer(message)) = &event {
            raft_of = Some(message.from);
        }
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
    if let (Some((broker_id, broker_epoch)), false) = (heartbeats_of, shard.shutting_down.get()) {
        let _ = events
            .send(Event::PeerGone {
                broker_id,
                broker_epoch,
            })
            .await;
    }
    if let (Some(voter), false) = (raft_of, shard.shutting_down.get()) {
        let _ = events.send(Event::VoterGone { voter }).await;
    }
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
pub(super) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    frame
}

/// Whether the data directory holds no partition directory (a new or replaced disk): such a
/// broker registers as having lost its data, so that the controller does not elect it as the
/// last copy of what it held. Read when the node starts, before it opens any partition.
pub(crate) fn holds_no_partitions(data_dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return true;
    };
    !entries.flatten().any(|entry| {
        let name = entry.file_name();
        entry.file_type().is_ok_and(|kind| kind.is_dir())
            && name != crate::quorum::log::QUORUM_DIR_NAME
            // A new ext4 file system mounted at the data directory has one.
            && name != "lost+found"
    })
}

#[cfg(test)]
mod tests {
    use super::holds_no_partitions;
    use crate::quorum::log::QUORUM_DIR_NAME;

    #[test]
    fn a_data_dir_without_partition_directories_holds_no_partitions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(holds_no_partitions(&dir.path().join("missing")));
        assert!(holds_no_partitions(dir.path()));
        std::fs::create_dir(dir.path().join(QUORUM_DIR_NAME)).unwrap();
        std::fs::create_dir(dir.path().join("lost+found")).unwrap();
        std::fs::write(dir.path().join("meta.properties"), b"").unwrap();
        assert!(
            holds_no_partitions(dir.path()),
            "the metadata log and files are not partitions"
        );
        std::fs::create_dir(dir.path().join("orders-0")).unwrap();
        assert!(!holds_no_partitions(dir.path()));
    }
}
