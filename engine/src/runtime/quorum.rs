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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tracing::{debug, error, info, warn};

use super::cluster_admin::{self, Expected, ItemResult, TopicAdmin};
use super::shard::Shard;
use crate::quorum::controller::{Heartbeat, Registration};
use crate::quorum::log::QuorumLog;
use crate::quorum::{
    Controller, ControllerConfig, MetadataImage, MetadataRecord, MetadataSnapshot, NodeId,
    PlanningImage, QuorumConfig, QuorumNode, QuorumOutput,
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
pub(super) const FRAME_CONTROLLER_REQUEST: u8 = 1;
/// Frame kind: the controller's reply to a topic request.
pub(super) const FRAME_CONTROLLER_REPLY: u8 = 2;
/// Frame kind: a broker-only node asks for the metadata records after an index.
pub(super) const FRAME_METADATA_FETCH: u8 = 3;
/// Frame kind: the answer, on the same connection.
pub(super) const FRAME_METADATA_UPDATE: u8 = 4;
/// Heartbeat interval during a controlled shutdown.
const CONTROLLED_SHUTDOWN_HEARTBEAT_MS: i64 = 100;
/// How long a stopping broker waits for a controller to appear before it gives up moving
/// its leaderships (the quorum may have lost its majority).
const CONTROLLED_SHUTDOWN_NO_CONTROLLER_MS: i64 = 1_500;
/// Answers kept for a broker-only node until its next fetch.
const OBSERVER_REPLIES_MAX: usize = 1024;
/// How long a node waits for the controller's answer to a topic request.
pub(super) const TOPIC_REQUEST_TIMEOUT_MS: i64 = 15_000;

/// A broker's request to the active controller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum ControllerRequest {
    Register {
        broker_id: i32,
        incarnation_id: uuid::Uuid,
        host: String,
        port: i32,
    },
    Heartbeat {
        broker_id: i32,
        broker_epoch: i64,
        /// The broker is stopping: move its leaderships away (controlled shutdown).
        #[serde(default)]
        want_shut_down: bool,
    },
    Topics {
        request_id: u64,
        from: NodeId,
        admin: TopicAdmin,
    },
}

/// The controller's answer to [`ControllerRequest::Topics`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ControllerReply {
    pub(super) request_id: u64,
    pub(super) results: Vec<ItemResult>,
    /// The log index the results hold at: the asking node answers once it applied that far.
    pub(super) applied_index: u64,
}

/// A broker-only node's request for the metadata it lacks ([`FRAME_METADATA_FETCH`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct MetadataFetch {
    /// The node asking.
    pub(super) node_id: NodeId,
    /// The last record it applied.
    pub(super) applied_index: u64,
}

/// A controller's answer ([`FRAME_METADATA_UPDATE`]): what it applied after the asker's index,
/// as records, or as a snapshot when its recent records do not reach back that far; and the
/// answers to the asker's topic requests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct MetadataUpdate {
    /// The quorum leader this controller knows of.
    pub(super) leader: Option<NodeId>,
    /// Its term.
    pub(super) term: u64,
    /// The whole image (a `MetadataSnapshot`'s JSON), to replace the asker's.
    pub(super) snapshot: Option<String>,
    /// `(index, record JSON)` of every record applied after the asker's index (after the
    /// snapshot, with one).
    pub(super) records: Vec<(u64, String)>,
    /// Answers to the asker's topic requests.
    pub(super) replies: Vec<ControllerReply>,
}

/// Where a shard waits for a topic request's results and the log index they hold at.
type AdminReply = oneshot::Sender<(Vec<ItemResult>, u64)>;

/// Who waits for a topic request's results.
enum Responder {
    /// A shard of this node.
    Local(AdminReply),
    /// Another node, by request id.
    Remote { to: NodeId, request_id: u64 },
}

/// A topic request the active controller proposed and answers once applied.
struct ProposedAdmin {
    wait_index: u64,
    term: u64,
    expected: Vec<Expected>,
    responder: Responder,
}

/// A topic request forwarded to the controller.
struct ForwardedAdmin {
    reply: AdminReply,
    deadline_ms: i64,
    /// Items in the request, each of which is answered.
    items: usize,
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
    // The last leader known, kept through elections.
    let mut last_known_leader = None;
    // Voters whose raft connection to this node closed and sent nothing since: most likely
    // dead (the kernel closes a dead process's sockets).
    let mut voters_gone: BTreeSet<NodeId> = BTreeSet::new();
    let incarnation_id = super::random_uuid();
    let controller_config = ControllerConfig {
        broker_session_timeout_ms: shard.config.broker_session_timeout_ms,
    };
    let mut controller: Option<Controller> = None;
    let mut planning = PlanningImage::new();
    let mut next_heartbeat_ms = 0;
    let mut stopping_since_ms: Option<i64> = None;
    let mut next_rebalance_ms = shard.config.leader_imbalance_check_interval_ms;
    let cluster_id = cluster_admin::cluster_id_of(&shard.config.controller_quorum);
    let mut published_layout = None;
    // A controller-only node never registers; it serves the metadata at once.
    let mut registered_once = !shard.config.roles.broker;
    // Every record applied after `recent_after`, for broker-only nodes' fetches.
    let mut recent_records: VecDeque<(u64, String)> = VecDeque::new();
    let mut recent_after = image.last_applied_index();
    // Answers to broker-only nodes' topic requests, sent with their next fetch.
    let mut observer_replies: BTreeMap<NodeId, Vec<ControllerReply>> = BTreeMap::new();
    let mut proposed_admins: Vec<ProposedAdmin> = Vec::new();
    let mut forwarded_admins: BTreeMap<u64, ForwardedAdmin> = BTreeMap::new();
    let mut next_request_id = 0_u64;
    // Results the controller gave, held until this node applied as far.
    let mut answered_admins: Vec<(u64, Vec<ItemResult>, AdminReply)> = Vec::new();
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
        // A new controller acts once it applied the log up to the start of its leadership
        // (every output of the last turn was carried out), so that it plans on everything
        // earlier controllers committed.
        let controller_ready = node.is_leader() && node.applied_in_current_term();
        // Ticks run on every turn: a steady stream of events must not starve raft's timers.
        node.tick(now_ms());
        match event {
            Some(Event::Peer(message)) => {
                voters_gone.remove(&message.from);
                node.step(message)
            }
            Some(Event::VoterGone { voter }) => {
                voters_gone.insert(voter);
            }
            Some(Event::Request(ControllerRequest::Topics {
                request_id,
                from,
                admin,
            })) => {
                let responder = Responder::Remote {
                    to: from,
                    request_id,
                };
                let proposed = propose_admin(
                    &mut node,
                    controller.as_ref().filter(|_| controller_ready),
                    &mut planning,
                    &image,
                    admin,
                    &proposed_admins,
                    responder,
                );
                match proposed {
                    Ok(proposed) => proposed_admins.push(proposed),
                    Err((responder, results)) => respond(
                        responder,
                        results,
                        image.last_applied_index(),
                        &queues,
                        &mut observer_replies,
                    ),
                }
            }
            Some(Event::MetadataFetch { fetch, reply }) => {
                let update = metadata_update(
                    &node,
                    &image,
                    &recent_records,
                    recent_after,
                    fetch.applied_index,
                    observer_replies.remove(&fetch.node_id).unwrap_or_default(),
                );
                if let Ok(bytes) = serde_json::to_vec(&update) {
                    let _ = reply.send(bytes);
                }
            }
            Some(Event::Request(request)) => {
                if let Some(controller) = controller.as_mut().filter(|_| controller_ready) {
                    let records =
                        handle_request(controller, planning.view(&image), now_ms(), request);
                    propose_records(&mut node, &mut planning, &image, records);
                }
            }
            Some(Event::PeerGone {
                broker_id,
                broker_epoch,
            }) => {
                if let Some(controller) = controller.as_mut() {
                    info!(
                        broker_id,
                        "a broker's heartbeat connection closed; ending its session"
                    );
                    controller.connection_lost(&image, broker_id, broker_epoch, now_ms());
                }
            }
            Some(Event::Reply(reply)) => {
                if let Some(forwarded) = forwarded_admins.remove(&reply.request_id) {
                    answered_admins.push((reply.applied_index, reply.results, forwarded.reply));
                }
            }
            Some(Event::Admin { mut admin, reply }) => {
                if let TopicAdmin::AlterIsr(change) = &mut admin {
                    // The leader's registration, as this node's applied metadata has it.
                    change.broker_id = shard.config.node_id;
                    change.broker_epoch = image
                        .broker(shard.config.node_id)
                        .filter(|broker| broker.incarnation_id == incarnation_id)
                        .map_or(-1, |broker| broker.broker_epoch);
                }
                if node.is_leader() {
                    let proposed = propose_admin(
                        &mut node,
                        controller.as_ref().filter(|_| controller_ready),
                        &mut planning,
                        &image,
                        admin,
                        &proposed_admins,
                        Responder::Local(reply),
                    );
                    match proposed {
                        Ok(proposed) => proposed_admins.push(proposed),
                        Err((responder, results)) => respond(
                            responder,
                            results,
                            image.last_applied_index(),
                            &queues,
                            &mut observer_replies,
                        ),
                    }
                } else {
                    let leader_queue = node.leader().and_then(|leader| queues.get(&leader));
                    let request_id = next_request_id;
                    next_request_id += 1;
                    let request = ControllerRequest::Topics {
                        request_id,
                        from: node_id,
                        admin: admin.clone(),
                    };
                    let sent = match (leader_queue, serde_json::to_vec(&request)) {
                        (Some(queue), Ok(payload)) => queue
                            .try_send(frame(FRAME_CONTROLLER_REQUEST, &payload))
                            .is_ok(),
                        _ => false,
                    };
                    if sent {
                        forwarded_admins.insert(
                            request_id,
                            ForwardedAdmin {
                                reply,
                                deadline_ms: now_ms() + TOPIC_REQUEST_TIMEOUT_MS,
                                items: admin.len(),
                            },
                        );
                    } else {
                        let results = cluster_admin::all_failed(
                            &admin,
                            ResponseError::NotController,
                            "no active controller is known yet; retry",
                        );
                        let _ = reply.send((results, 0));
                    }
                }
            }
            None => {}
        }
        // The active controller: created when this node becomes the quorum leader, with
        // fresh sessions for every broker.
        if node.is_leader() != controller.is_some() {
            controller = node.is_leader().then(|| Controller::new(controller_config));
            planning.reset();
            // The previous quorum leader most likely died (pre-vote and check-quorum keep a
            // live one in place), and it never heartbeated here: rather than a full session,
            // it gets two heartbeat intervals to show up before it is fenced, or none when
            // its raft connection to this node closed (its process is gone).
            let previous = last_known_leader.filter(|&previous| previous != node_id);
            if let (Some(controller), Some(previous)) = (controller.as_mut(), previous) {
                let grace_ms = if voters_gone.contains(&previous) {
                    0
                } else {
                    2 * shard.config.broker_heartbeat_interval_ms
                };
                let previous = i32::try_from(previous).unwrap_or(-1);
                if let Some(broker) = image.broker(previous) {
                    controller.connection_lost(
                        &image,
                        previous,
                        broker.broker_epoch,
                        now_ms() + grace_ms,
                    );
                }
            }
        }
        if let Some(controller) = controller.as_mut().filter(|_| controller_ready) {
            let records = controller.tick(planning.view(&image), now_ms());
            propose_records(&mut node, &mut planning, &image, records);
            // Kafka's auto.leader.rebalance: leadership goes back to preferred replicas that
            // are in sync again.
            if now_ms() >= next_rebalance_ms {
                next_rebalance_ms = now_ms() + shard.config.leader_imbalance_check_interval_ms;
                let records = controller.preferred_leader_elections(planning.view(&image));
                propose_records(&mut node, &mut planning, &image, records);
            }
        }
        // Controlled shutdown: once the process is asked to stop, heartbeats ask the
        // controller to move this broker's leaderships away, and the shards stop once it leads
        // nothing (or the controller cannot be reached: see `controlled_shutdown_finished`).
        let stopping = controlled_shutdown_turn(
            &shard,
            node.leader().is_some(),
            &image,
            incarnation_id,
            &mut stopping_since_ms,
            &mut next_heartbeat_ms,
            now_ms(),
        );
        if shard.config.roles.broker && now_ms() >= next_heartbeat_ms {
            next_heartbeat_ms = now_ms() + heartbeat_interval_ms(&shard, stopping);
            let request = broker_request(&shard, &image, incarnation_id, stopping);
            match (controller.as_mut(), node.leader()) {
                (Some(controller), _) => {
                    if controller_ready {
                        let records =
                            handle_request(controller, planning.view(&image), now_ms(), request);
                        propose_records(&mut node, &mut planning, &image, records);
                    }
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
                        recent_records.clear();
                        recent_after = image.last_applied_index();
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
                        if let Ok(text) = String::from_utf8(data) {
                            recent_records.push_back((index, text));
                        }
                        while recent_records.len() as u64 > snapshot_interval_records {
                            if let Some((dropped, _)) = recent_records.pop_front() {
                                recent_after = dropped;
                            }
                        }
                    }
                    Err(error) => error!(index, %error, "unreadable metadata record"),
                },
            }
        }
        if node.leader().is_some() {
            last_known_leader = node.leader();
        }
        if node.leader() != last_leader {
            last_leader = node.leader();
            info!(leader = ?last_leader, term = node.term(), "metadata quorum leader");
        }
        planning.caught_up(&image);
        publish(&node, &image);
        // Topic requests whose records applied (or whose controller lost its place).
        let applied = image.last_applied_index();
        let (done, waiting): (Vec<_>, Vec<_>) = proposed_admins.into_iter().partition(|proposed| {
            applied >= proposed.wait_index || !node.is_leader() || node.term() != proposed.term
        });
        proposed_admins = waiting;
        for proposed in done {
            let results = if applied >= proposed.wait_index {
                cluster_admin::outcome(&image, &proposed.expected)
            } else {
                proposed
                    .expected
                    .iter()
                    .map(|_| {
                        Err((
                            ResponseError::NotController.code(),
                            "the controller changed before the change was committed; retry"
                                .to_owned(),
                        ))
                    })
                    .collect()
            };
            respond(
                proposed.responder,
                results,
                applied,
                &queues,
                &mut observer_replies,
            );
        }
        let (ready, held): (Vec<_>, Vec<_>) = answered_admins
            .into_iter()
            .partition(|(index, _, _)| applied >= *index);
        answered_admins = held;
        for (index, results, reply) in ready {
            let _ = reply.send((results, index));
        }
        let now = now_ms();
        let expired: Vec<u64> = forwarded_admins
            .iter()
            .filter(|(_, forwarded)| forwarded.deadline_ms <= now)
            .map(|(&request_id, _)| request_id)
            .collect();
        for request_id in expired {
            if let Some(forwarded) = forwarded_admins.remove(&request_id) {
                let timed_out = Err((
                    ResponseError::RequestTimedOut.code(),
                    "the controller did not answer in time".to_owned(),
                ));
                let _ = forwarded.reply.send((vec![timed_out; forwarded.items], 0));
            }
        }
        // The shards serve the applied topics, partitions and brokers.
        let layout = cluster_admin::layout_of(&image, node.leader());
        // Not before this process is registered and unfenced: the metadata replayed from the
        // local log may name this broker leader at an epoch its previous incarnation led, and
        // leading it again would put different records at the same offsets and epoch as the
        // ones the other replicas took from that incarnation (no epoch check could tell them
        // apart). Registering moves the old incarnation's leaderships away (new epochs), so
        // whatever this one leads it leads at an epoch of its own.
        registered_once = registered_once
            || image
                .broker(shard.config.node_id)
                .is_some_and(|broker| broker.incarnation_id == incarnation_id && !broker.fenced);
        if registered_once && published_layout.as_ref() != Some(&layout) {
            shard.queue_cluster_metadata(applied, &cluster_id, layout.0.clone(), layout.1.clone());
            published_layout = Some(layout);
        }
    }
}

/// A broker's side of a controlled shutdown, once per driver turn: whether the process is
/// stopping. When it starts, the next heartbeat (which asks the controller to move this
/// broker's leaderships) is due at once; once [`controlled_shutdown_finished`], the shards may
/// stop.
pub(super) fn controlled_shutdown_turn(
    shard: &Shard,
    leader_known: bool,
    image: &MetadataImage,
    incarnation_id: uuid::Uuid,
    stopping_since_ms: &mut Option<i64>,
    next_heartbeat_ms: &mut i64,
    now_ms: i64,
) -> bool {
    let stopping = shard.process.shutdown_requested.load(Ordering::SeqCst);
    if !stopping
        || shard
            .process
            .controlled_shutdown_done
            .load(Ordering::SeqCst)
    {
        return stopping;
    }
    let began = *stopping_since_ms.get_or_insert_with(|| {
        info!("controlled shutdown: moving leaderships away");
        *next_heartbeat_ms = 0;
        now_ms
    });
    if controlled_shutdown_finished(shard, leader_known, image, incarnation_id, now_ms - began) {
        info!(elapsed_ms = now_ms - began, "controlled shutdown: done");
        shard
            .process
            .controlled_shutdown_done
            .store(true, Ordering::SeqCst);
    }
    stopping
}

/// How often a broker heartbeats: faster while it stops, so its leaderships move soon.
pub(super) fn heartbeat_interval_ms(shard: &Shard, stopping: bool) -> i64 {
    if stopping {
        CONTROLLED_SHUTDOWN_HEARTBEAT_MS.min(shard.config.broker_heartbeat_interval_ms)
    } else {
        shard.config.broker_heartbeat_interval_ms
    }
}

/// Whether this broker's controlled shutdown is over: the controller marked it shutting down
/// and it leads no partition any more; or it never registered; or no controller is known
/// for a while (the quorum may be gone); or it took longer than a broker session.
fn controlled_shutdown_finished(
    shard: &Shard,
    leader_known: bool,
    image: &MetadataImage,
    incarnation_id: uuid::Uuid,
    elapsed_ms: i64,
) -> bool {
    let broker_id = shard.config.node_id;
    let Some(broker) = image
        .broker(broker_id)
        .filter(|broker| broker.incarnation_id == incarnation_id)
    else {
        return true;
    };
    let leads_something = image.topics().values().any(|topic| {
        topic
            .partitions
            .values()
            .any(|state| state.leader == broker_id)
    });
    (broker.in_controlled_shutdown && !leads_something)
        || (!leader_known && elapsed_ms >= CONTROLLED_SHUTDOWN_NO_CONTROLLER_MS)
        || elapsed_ms >= shard.config.broker_session_timeout_ms
}

/// Proposes the records of a topic request on the active controller, or says why not.
#[allow(clippy::too_many_arguments)]
fn propose_admin(
    node: &mut QuorumNode,
    controller: Option<&Controller>,
    planning: &mut PlanningImage,
    image: &MetadataImage,
    admin: TopicAdmin,
    proposed: &[ProposedAdmin],
    responder: Responder,
) -> Result<ProposedAdmin, (Responder, Vec<ItemResult>)> {
    let Some(controller) = controller.filter(|_| node.is_leader()) else {
        let results = cluster_admin::all_failed(
            &admin,
            ResponseError::NotController,
            "this node is no longer the active controller; retry",
        );
        return Err((responder, results));
    };
    let in_flight: BTreeSet<String> = proposed
        .iter()
        .flat_map(|proposed| proposed.expected.iter())
        .filter_map(|expected| match expected {
            Expected::Created { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let (records, expected) = cluster_admin::plan(
        controller,
        planning.view(image),
        admin,
        &in_flight,
        super::random_u64,
    );
    if !propose_records(node, planning, image, records) {
        let results = expected
            .iter()
            .map(|_| {
                Err((
                    ResponseError::NotController.code(),
                    "this node is no longer the active controller; retry".to_owned(),
                ))
            })
            .collect();
        return Err((responder, results));
    }
    Ok(ProposedAdmin {
        wait_index: node.last_index(),
        term: node.term(),
        expected,
        responder,
    })
}

/// Proposes `records` in order and puts each on top of the planning image; false when this
/// node no longer leads the quorum (the rest is dropped: whoever asked asks again).
fn propose_records(
    node: &mut QuorumNode,
    planning: &mut PlanningImage,
    image: &MetadataImage,
    records: Vec<MetadataRecord>,
) -> bool {
    for record in records {
        if node.propose(record.encode()).is_err() {
            return false;
        }
        planning.proposed(image, node.last_index(), &record);
    }
    true
}

/// Answers a topic request, to a shard here or to the node that forwarded it.
fn respond(
    responder: Responder,
    results: Vec<ItemResult>,
    applied_index: u64,
    queues: &BTreeMap<NodeId, LocalSender<Vec<u8>>>,
    observer_replies: &mut BTreeMap<NodeId, Vec<ControllerReply>>,
) {
    match responder {
        Responder::Local(reply) => {
            let _ = reply.send((results, applied_index));
        }
        Responder::Remote { to, request_id } => {
            let reply = ControllerReply {
                request_id,
                results,
                applied_index,
            };
            match queues.get(&to) {
                Some(queue) => {
                    if let Ok(payload) = serde_json::to_vec(&reply) {
                        // Lost with a full queue or a dropped connection: the asker times out.
                        drop(queue.try_send(frame(FRAME_CONTROLLER_REPLY, &payload)));
                    }
                }
                // Not a voter: a broker-only node, which takes it with its next fetch. One
                // that stopped fetching (gone, or asking another controller) does not make
                // them pile up: the oldest go, and their askers time out.
                None => {
                    let waiting = observer_replies.entry(to).or_default();
                    if waiting.len() >= OBSERVER_REPLIES_MAX {
                        waiting.remove(0);
                    }
                    waiting.push(reply);
                }
            }
        }
    }
}

/// What a broker-only node that applied up to `applied_index` is sent: the records applied
/// since, when `recent` (every record applied after `recent_after`) reaches back that far, or
/// else the whole image.
fn metadata_update(
    node: &QuorumNode,
    image: &MetadataImage,
    recent: &VecDeque<(u64, String)>,
    recent_after: u64,
    applied_index: u64,
    replies: Vec<ControllerReply>,
) -> MetadataUpdate {
    let (snapshot, records) = if applied_index >= recent_after {
        let records = recent
            .iter()
            .filter(|(index, _)| *index > applied_index)
            .cloned()
            .collect();
        (None, records)
    } else {
        let snapshot = String::from_utf8(image.to_snapshot().encode()).ok();
        (snapshot, Vec::new())
    };
    MetadataUpdate {
        leader: node.leader(),
        term: node.term(),
        snapshot,
        records,
        replies,
    }
}

/// The image a snapshot's data holds.
pub(super) fn image_from_snapshot(data: &[u8]) -> Result<MetadataImage, String> {
    let snapshot = MetadataSnapshot::decode(data).map_err(|error| error.to_string())?;
    MetadataImage::from_snapshot(&snapshot).map_err(|error| error.to_string())
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

/// This node's request as a broker: register until the applied metadata shows this
/// incarnation registered, then heartbeat with its epoch.
pub(super) fn broker_request(
    shard: &Shard,
    image: &MetadataImage,
    incarnation_id: uuid::Uuid,
    stopping: bool,
) -> ControllerRequest {
    let broker_id = shard.config.node_id;
    match image
        .broker(broker_id)
        .filter(|broker| broker.incarnation_id == incarnation_id)
    {
        Some(broker) => ControllerRequest::Heartbeat {
            broker_id,
            broker_epoch: broker.broker_epoch,
            want_shut_down: stopping,
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
        // Proposed by the driver itself, which tracks their answers.
        ControllerRequest::Topics { .. } => Vec::new(),
        ControllerRequest::Heartbeat {
            broker_id,
            broker_epoch,
            want_shut_down,
        } => controller
            .heartbeat(
                image,
                now_ms,
                Heartbeat {
                    broker_id,
                    broker_epoch,
                    want_shut_down,
                },
            )
            .map(|(_, records)| records)
            // A stale epoch: the broker registers again once its metadata shows it.
            .unwrap_or_default(),
    }
}
