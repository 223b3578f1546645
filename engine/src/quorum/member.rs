//! [`QuorumMember`]: everything a node of the metadata quorum decides, as one sans-IO state
//! machine around the raft [`QuorumNode`].
//!
//! A member is the node's raft replica of the metadata log, the [`MetadataImage`] it applies,
//! the [`Controller`] while it leads the quorum, this node's broker side of the controller
//! (registration and heartbeats), and the routing of topic requests (CreateTopics, ISR changes,
//! reassignments) to the active controller and of their answers back. It owns no socket, file,
//! clock or random source: the glommio driver (`runtime::quorum`) and the simulation's turmoil
//! driver feed it the same inputs and carry out the same outputs.
//!
//! # Calling protocol
//! Every turn of the driver:
//!
//! 1. [`QuorumMember::handle`] with the time and what happened ([`MemberInput`]: a peer's raft
//!    message or controller request or reply, a closed connection, a local topic request, or
//!    just the passing of time);
//! 2. [`QuorumMember::poll_output`] until `None`, carrying each [`MemberOutput`] out **in
//!    order**: a [`MemberOutput::Persist`] must be durable before the next output is taken
//!    (raft's rule: no vote or acknowledgement leaves before its entries are on disk);
//! 3. [`QuorumMember::layout_update`] says whether the brokers, topics or partitions the node
//!    serves changed.
//!
//! A local topic request carries a reply token `R` (the glommio driver's oneshot sender, the
//! simulation's request id) that comes back in [`MemberOutput::Answer`] once its outcome is
//! applied on this node, so that whoever asked sees the change in its own metadata.
//!
//! # What a member decides
//! - The active controller exists while the node leads the quorum and acts once it applied an
//!   entry of its own term, so it plans on everything earlier controllers committed.
//! - A new controller fences the previous quorum leader after two heartbeat intervals, or at
//!   once when that leader's raft connection to this node closed.
//! - This node, as a broker, registers until its applied metadata shows this incarnation, then
//!   heartbeats; its shards get no metadata until this incarnation is registered and unfenced
//!   (the replayed log may name it leader at an epoch its previous incarnation led).
//! - Broker-only nodes (not voters) fetch the records they lack ([`QuorumMember::metadata_fetch`]):
//!   a window of recent records, or the whole image when they are further behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kafka_protocol::error::ResponseError;
use raft::eraftpb::{Entry, HardState, Message, Snapshot};
use serde::{Deserialize, Serialize};

use super::admin::{self, Expected, ItemResult, TopicAdmin};
use super::controller::{Heartbeat, Registration};
use super::{
    Controller, ControllerConfig, DurableState, MetadataImage, MetadataRecord, MetadataSnapshot,
    NodeId, PlanningImage, QuorumConfig, QuorumNode, QuorumOutput,
};
use crate::broker::catalog::{ClusterLayout, MetadataTopic};
use crate::rng::SplitMix64;

/// How long a node waits for the controller's answer to a topic request.
pub const TOPIC_REQUEST_TIMEOUT_MS: i64 = 15_000;
/// Heartbeat interval during a controlled shutdown.
const CONTROLLED_SHUTDOWN_HEARTBEAT_MS: i64 = 100;
/// How long a stopping broker waits for a controller to appear before it gives up moving
/// its leaderships (the quorum may have lost its majority).
const CONTROLLED_SHUTDOWN_NO_CONTROLLER_MS: i64 = 1_500;
/// Answers kept for a broker-only node until its next fetch.
const OBSERVER_REPLIES_MAX: usize = 1024;

/// A broker's request to the active controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// A new incarnation of a broker.
    Register {
        /// `node.id`.
        broker_id: i32,
        /// This process.
        incarnation_id: uuid::Uuid,
        /// Where clients reach it.
        host: String,
        /// Its Kafka port.
        port: i32,
        /// It found none of its partition data (see `Registration::data_lost`).
        #[serde(default)]
        data_lost: bool,
    },
    /// A registered broker is alive.
    Heartbeat {
        /// `node.id`.
        broker_id: i32,
        /// Its registration.
        broker_epoch: i64,
        /// The broker is stopping: move its leaderships away (controlled shutdown).
        #[serde(default)]
        want_shut_down: bool,
    },
    /// A topic request forwarded by another node.
    Topics {
        /// The asker's number for it.
        request_id: u64,
        /// The asker.
        from: NodeId,
        /// What it asks.
        admin: TopicAdmin,
    },
}

/// The controller's answer to [`ControllerRequest::Topics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerReply {
    /// The asker's number for the request.
    pub request_id: u64,
    /// One result per item.
    pub results: Vec<ItemResult>,
    /// The log index the results hold at: the asking node answers once it applied that far.
    pub applied_index: u64,
}

/// A broker-only node's request for the metadata it lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataFetch {
    /// The node asking.
    pub node_id: NodeId,
    /// The last record it applied.
    pub applied_index: u64,
}

/// The answer to a [`MetadataFetch`]: what the controller applied after the asker's index, as
/// records, or as a snapshot when its recent records do not reach back that far; and the
/// answers to the asker's topic requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataUpdate {
    /// The quorum leader this controller knows of.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// The whole image (a `MetadataSnapshot`'s JSON), to replace the asker's.
    pub snapshot: Option<String>,
    /// `(index, record JSON)` of every record applied after the asker's index (after the
    /// snapshot, with one).
    pub records: Vec<(u64, String)>,
    /// Answers to the asker's topic requests.
    pub replies: Vec<ControllerReply>,
}

/// Where this node is reached as a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// Advertised host.
    pub host: String,
    /// Advertised Kafka port.
    pub port: i32,
    /// This process found none of its partition data (a new or lost disk): it registers so,
    /// and the controller stops counting it as a copy of what it held.
    pub data_lost: bool,
}

/// A member's settings.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This node.
    pub node_id: NodeId,
    /// Every voter, this node included.
    pub voters: Vec<NodeId>,
    /// Set when this node is also a broker (registers and heartbeats).
    pub broker: Option<BrokerEndpoint>,
    /// Raft timing.
    pub quorum: QuorumConfig,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// How often this node heartbeats as a broker.
    pub broker_heartbeat_interval_ms: i64,
    /// How often the controller moves leadership back to preferred replicas.
    pub leader_imbalance_check_interval_ms: i64,
    /// Records applied between metadata snapshots.
    pub snapshot_interval_records: u64,
}

/// What happened, for [`QuorumMember::handle`].
#[derive(Debug)]
pub enum MemberInput<R> {
    /// Time passed (a timer fired).
    Tick,
    /// A raft message from a peer voter.
    Raft(Message),
    /// A broker's request to the controller (a peer's, or a broker-only node's).
    Request(ControllerRequest),
    /// The controller's answer to a topic request this node forwarded.
    Reply(ControllerReply),
    /// A connection that carried this broker's heartbeats (at this broker epoch) closed.
    HeartbeatsGone {
        /// The broker.
        broker_id: i32,
        /// Its registration the heartbeats were for.
        broker_epoch: i64,
    },
    /// A connection that carried this voter's raft messages closed.
    VoterGone {
        /// The voter.
        voter: NodeId,
    },
    /// A [`MemberOutput::Request`] carrying this node's forwarded topic request could not be
    /// sent (the connection to the controller is down or its queue full): answer at once.
    RequestLost {
        /// The forwarded request's number.
        request_id: u64,
    },
    /// A topic request of this node's own; answered with [`MemberOutput::Answer`].
    Admin {
        /// What it asks.
        admin: TopicAdmin,
        /// Handed back with the answer.
        reply: R,
    },
}

/// What the member asks its driver to do, in order.
#[derive(Debug)]
pub enum MemberOutput<R> {
    /// Send a raft message to its `to` voter (it may be lost).
    Raft(Message),
    /// Send a request to a voter, the active controller (it may be lost: the asker times out).
    Request {
        /// The voter.
        to: NodeId,
        /// The request.
        request: ControllerRequest,
    },
    /// Send a topic request's answer to the voter that forwarded it (it may be lost).
    Reply {
        /// The voter.
        to: NodeId,
        /// The answer.
        reply: ControllerReply,
    },
    /// Make these durable before carrying out anything after this output.
    Persist {
        /// Entries to append to the log (replacing any from their first index on).
        entries: Vec<Entry>,
        /// The term, vote and commit index to record, if they changed.
        hard_state: Option<HardState>,
        /// A snapshot that replaces the log up to its index, if one arrived.
        snapshot: Option<Snapshot>,
    },
    /// Keep this snapshot and drop the log entries it covers.
    Compact(Snapshot),
    /// A local topic request's outcome, applied here up to `applied_index`.
    Answer {
        /// The request's token.
        reply: R,
        /// One result per item.
        results: Vec<ItemResult>,
        /// The log index the results hold at.
        applied_index: u64,
    },
    /// The member cannot go on (its state would be wrong); it has left the quorum.
    Failed(String),
}

/// A topic request the active controller proposed and answers once applied.
struct ProposedAdmin<R> {
    wait_index: u64,
    term: u64,
    expected: Vec<Expected>,
    responder: Responder<R>,
}

/// Who waits for a topic request's results.
enum Responder<R> {
    /// This node.
    Local(R),
    /// Another node, by request id.
    Remote { to: NodeId, request_id: u64 },
}

/// A topic request forwarded to the controller.
struct ForwardedAdmin<R> {
    reply: R,
    deadline_ms: i64,
    /// Items in the request, each of which is answered.
    items: usize,
}

/// One node's metadata-quorum member. See the module docs.
pub struct QuorumMember<R> {
    config: MemberConfig,
    node: QuorumNode,
    image: MetadataImage,
    random: SplitMix64,
    incarnation_id: uuid::Uuid,
    now_ms: i64,
    /// Whether the last `handle` left work for the end of the turn.
    turn_open: bool,
    failed: bool,
    pending: VecDeque<MemberOutput<R>>,
    controller: Option<Controller>,
    planning: PlanningImage,
    /// The last leader known, kept through elections.
    last_known_leader: Option<NodeId>,
    /// Voters whose raft connection to this node closed and sent nothing since: most likely
    /// dead (the kernel closes a dead process's sockets).
    voters_gone: BTreeSet<NodeId>,
    next_heartbeat_ms: i64,
    next_rebalance_ms: i64,
    shutdown: ControlledShutdown,
    /// A controller-only node never registers; it serves the metadata at once.
    registered_once: bool,
    published_layout: Option<(Vec<MetadataTopic>, ClusterLayout)>,
    /// The applied index and quorum leader the published layout was computed from: the layout
    /// is a function of the two, so it is computed again only when one changed.
    layout_inputs: Option<(u64, Option<NodeId>)>,
    /// Every record applied after `recent_after`, for broker-only nodes' fetches.
    recent_records: VecDeque<(u64, String)>,
    recent_after: u64,
    /// Answers to broker-only nodes' topic requests, sent with their next fetch.
    observer_replies: BTreeMap<NodeId, Vec<ControllerReply>>,
    proposed_admins: Vec<ProposedAdmin<R>>,
    forwarded_admins: BTreeMap<u64, ForwardedAdmin<R>>,
    next_request_id: u64,
    /// Results the controller gave, held until this node applied as far.
    answered_admins: Vec<(u64, Vec<ItemResult>, R)>,
}

impl<R> QuorumMember<R> {
    /// A member from what its disk holds: the raft state and the image of its snapshot (empty
    /// without one). `seed` drives election jitter, topic ids and this incarnation's id.
    pub fn new(
        config: MemberConfig,
        durable: DurableState,
        image: MetadataImage,
        seed: u64,
    ) -> QuorumMember<R> {
        let mut random = SplitMix64::new(seed);
        let node = QuorumNode::new(
            config.node_id,
            &config.voters,
            durable,
            config.quorum,
            random.next_u64(),
        );
        let incarnation_id = uuid::Builder::from_random_bytes(
            [
                random.next_u64().to_le_bytes(),
                random.next_u64().to_le_bytes(),
            ]
            .concat()
            .try_into()
            .expect("16 bytes"),
        )
        .into_uuid();
        let recent_after = image.last_applied_index();
        QuorumMember {
            registered_once: config.broker.is_none(),
            next_rebalance_ms: config.leader_imbalance_check_interval_ms,
            config,
            node,
            image,
            random,
            incarnation_id,
            now_ms: 0,
            turn_open: false,
            failed: false,
            pending: VecDeque::new(),
            controller: None,
            planning: PlanningImage::new(),
            last_known_leader: None,
            voters_gone: BTreeSet::new(),
            next_heartbeat_ms: 0,
            shutdown: ControlledShutdown::default(),
            published_layout: None,
            layout_inputs: None,
            recent_records: VecDeque::new(),
            recent_after,
            observer_replies: BTreeMap::new(),
            proposed_admins: Vec::new(),
            forwarded_admins: BTreeMap::new(),
            next_request_id: 0,
            answered_admins: Vec::new(),
        }
    }

    /// The raft node.
    pub fn node(&self) -> &QuorumNode {
        &self.node
    }

    /// The applied metadata.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// This process's incarnation of its broker.
    pub fn incarnation_id(&self) -> uuid::Uuid {
        self.incarnation_id
    }

    /// Whether the member failed ([`MemberOutput::Failed`]) and takes no more input.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// This node's broker epoch, once its incarnation is registered.
    pub fn broker_epoch(&self) -> Option<i64> {
        let broker_id = self.broker_id();
        self.image
            .broker(broker_id)
            .filter(|broker| broker.incarnation_id == self.incarnation_id)
            .map(|broker| broker.broker_epoch)
    }

    fn broker_id(&self) -> i32 {
        i32::try_from(self.config.node_id).unwrap_or(-1)
    }

    /// Asks for a controlled shutdown: heartbeats ask the controller to move this broker's
    /// leaderships away, until [`QuorumMember::controlled_shutdown_done`].
    pub fn request_shutdown(&mut self) {
        self.shutdown.requested = true;
    }

    /// Whether a requested controlled shutdown is over (see [`ControlledShutdown`]).
    pub fn controlled_shutdown_done(&self) -> bool {
        self.shutdown.done
    }

    /// When the member next needs a [`MemberInput::Tick`] if nothing else happens.
    pub fn next_tick_ms(&self) -> i64 {
        self.now_ms + self.config.quorum.tick_ms
    }

    /// Takes one input at `now_ms`. Then drain [`QuorumMember::poll_output`].
    pub fn handle(&mut self, now_ms: i64, input: MemberInput<R>) {
        if self.failed {
            return;
        }
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        self.turn_open = true;
        // A new controller acts once it applied the log up to the start of its leadership
        // (every output of the last turn was carried out), so that it plans on everything
        // earlier controllers committed.
        let controller_ready = self.node.is_leader() && self.node.applied_in_current_term();
        // Ticks run on every turn: a steady stream of events must not starve raft's timers.
        self.node.tick(now_ms);
        match input {
            MemberInput::Tick => {}
            MemberInput::Raft(message) => {
                self.voters_gone.remove(&message.from);
                self.node.step(message);
            }
            MemberInput::VoterGone { voter } => {
                self.voters_gone.insert(voter);
            }
            MemberInput::Request(ControllerRequest::Topics {
                request_id,
                from,
                admin,
            }) => {
                let responder = Responder::Remote {
                    to: from,
                    request_id,
                };
                self.propose_admin(controller_ready, admin, responder);
            }
            MemberInput::Request(request) => {
                if controller_ready {
                    self.handle_broker_request(request);
                }
            }
            MemberInput::HeartbeatsGone {
                broker_id,
                broker_epoch,
            } => {
                if let Some(controller) = self.controller.as_mut() {
                    tracing::info!(
                        broker_id,
                        "a broker's heartbeat connection closed; ending its session"
                    );
                    controller.connection_lost(&self.image, broker_id, broker_epoch, now_ms);
                }
            }
            MemberInput::RequestLost { request_id } => {
                if let Some(forwarded) = self.forwarded_admins.remove(&request_id) {
                    let results = vec![
                        Err((
                            ResponseError::NotController.code(),
                            "the active controller could not be reached; retry".to_owned(),
                        ));
                        forwarded.items
                    ];
                    self.pending.push_back(MemberOutput::Answer {
                        reply: forwarded.reply,
                        results,
                        applied_index: 0,
                    });
                }
            }
            MemberInput::Reply(reply) => {
                if let Some(forwarded) = self.forwarded_admins.remove(&reply.request_id) {
                    self.answered_admins.push((
                        reply.applied_index,
                        reply.results,
                        forwarded.reply,
                    ));
                }
            }
            MemberInput::Admin { mut admin, reply } => {
                if let TopicAdmin::AlterIsr(change) = &mut admin {
                    // The leader's registration, as this node's applied metadata has it.
                    change.broker_id = self.broker_id();
                    change.broker_epoch = self.broker_epoch().unwrap_or(-1);
                }
                if self.node.is_leader() {
                    self.propose_admin(controller_ready, admin, Responder::Local(reply));
                } else {
                    self.forward_admin(admin, reply);
                }
            }
        }
        self.follow_leadership();
        if controller_ready {
            if let Some(controller) = self.controller.as_mut() {
                let records = controller.tick(planning_view(&self.planning, &self.image), now_ms);
                self.propose_records(records);
                // Kafka's auto.leader.rebalance: leadership goes back to preferred replicas
                // that are in sync again.
                if now_ms >= self.next_rebalance_ms {
                    self.next_rebalance_ms =
                        now_ms + self.config.leader_imbalance_check_interval_ms;
                    let controller = self.controller.as_ref().expect("checked above");
                    let records = controller
                        .preferred_leader_elections(planning_view(&self.planning, &self.image));
                    self.propose_records(records);
                }
            }
        }
        self.heartbeat_as_broker(controller_ready);
    }

    /// The active controller: created when this node becomes the quorum leader, with fresh
    /// sessions for every broker.
    fn follow_leadership(&mut self) {
        if self.node.is_leader() == self.controller.is_some() {
            return;
        }
        self.controller = self
            .node
            .is_leader()
            .then(|| Controller::new(self.config.controller));
        self.planning.reset();
        // The previous quorum leader most likely died (pre-vote and check-quorum keep a live
        // one in place), and it never heartbeated here: rather than a full session, it gets
        // two heartbeat intervals to show up before it is fenced, or none when its raft
        // connection to this node closed (its process is gone).
        let previous = self
            .last_known_leader
            .filter(|&previous| previous != self.config.node_id);
        if let (Some(controller), Some(previous)) = (self.controller.as_mut(), previous) {
            let grace_ms = if self.voters_gone.contains(&previous) {
                0
            } else {
                2 * self.config.broker_heartbeat_interval_ms
            };
            let previous = i32::try_from(previous).unwrap_or(-1);
            if let Some(broker) = self.image.broker(previous) {
                controller.connection_lost(
                    &self.image,
                    previous,
                    broker.broker_epoch,
                    self.now_ms + grace_ms,
                );
            }
        }
    }

    /// This node's registration or heartbeat, when due: handled here when it leads, else sent
    /// to the quorum leader.
    fn heartbeat_as_broker(&mut self, controller_ready: bool) {
        let now_ms = self.now_ms;
        let broker_id = self.broker_id();
        // A controller-only node has no registration: its shutdown is over at once.
        let stopping = self.shutdown.turn(
            self.node.leader().is_some(),
            &self.image,
            broker_id,
            self.incarnation_id,
            self.config.controller.broker_session_timeout_ms,
            &mut self.next_heartbeat_ms,
            now_ms,
        );
        let Some(endpoint) = self.config.broker.clone() else {
            return;
        };
        if now_ms < self.next_heartbeat_ms {
            return;
        }
        self.next_heartbeat_ms =
            now_ms + heartbeat_interval_ms(self.config.broker_heartbeat_interval_ms, stopping);
        let request = broker_request(
            &self.image,
            broker_id,
            self.incarnation_id,
            &endpoint,
            stopping,
        );
        if self.controller.is_some() {
            if controller_ready {
                self.handle_broker_request(request);
            }
        } else if let Some(leader) = self.node.leader() {
            self.pending.push_back(MemberOutput::Request {
                to: leader,
                request,
            });
        }
    }

    /// The active controller's records for a broker's request, proposed.
    fn handle_broker_request(&mut self, request: ControllerRequest) {
        let Some(controller) = self.controller.as_mut() else {
            return;
        };
        let image = planning_view(&self.planning, &self.image);
        let now_ms = self.now_ms;
        let records = match request {
            ControllerRequest::Register {
                broker_id,
                incarnation_id,
                host,
                port,
                data_lost,
            } => {
                let already = image
                    .broker(broker_id)
                    .is_some_and(|broker| broker.incarnation_id == incarnation_id);
                if already {
                    return;
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
                        data_lost,
                    },
                )
            }
            // Proposed through `propose_admin`, which tracks their answers.
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
        };
        self.propose_records(records);
    }

    /// Proposes the records of a topic request on the active controller, or answers why not.
    fn propose_admin(
        &mut self,
        controller_ready: bool,
        admin: TopicAdmin,
        responder: Responder<R>,
    ) {
        let controller = self
            .controller
            .as_ref()
            .filter(|_| controller_ready && self.node.is_leader());
        let Some(controller) = controller else {
            let results = admin::all_failed(
                &admin,
                ResponseError::NotController,
                "this node is no longer the active controller; retry",
            );
            self.respond(responder, results);
            return;
        };
        let in_flight: BTreeSet<String> = self
            .proposed_admins
            .iter()
            .flat_map(|proposed| proposed.expected.iter())
            .filter_map(|expected| match expected {
                Expected::Created { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let random = &mut self.random;
        let (records, expected) = admin::plan(
            controller,
            planning_view(&self.planning, &self.image),
            admin,
            &in_flight,
            || random.next_u64(),
        );
        if !self.propose_records(records) {
            let results = expected
                .iter()
                .map(|_| {
                    Err((
                        ResponseError::NotController.code(),
                        "this node is no longer the active controller; retry".to_owned(),
                    ))
                })
                .collect();
            self.respond(responder, results);
            return;
        }
        self.proposed_admins.push(ProposedAdmin {
            wait_index: self.node.last_index(),
            term: self.node.term(),
            expected,
            responder,
        });
    }

    /// Sends a local topic request to the quorum leader, or answers NOT_CONTROLLER when none
    /// is known.
    fn forward_admin(&mut self, admin: TopicAdmin, reply: R) {
        let Some(leader) = self.node.leader() else {
            let results = admin::all_failed(
                &admin,
                ResponseError::NotController,
                "no active controller is known yet; retry",
            );
            self.pending.push_back(MemberOutput::Answer {
                reply,
                results,
                applied_index: 0,
            });
            return;
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.forwarded_admins.insert(
            request_id,
            ForwardedAdmin {
                reply,
                deadline_ms: self.now_ms + TOPIC_REQUEST_TIMEOUT_MS,
                items: admin.len(),
            },
        );
        self.pending.push_back(MemberOutput::Request {
            to: leader,
            request: ControllerRequest::Topics {
                request_id,
                from: self.config.node_id,
                admin,
            },
        });
    }

    /// Proposes `records` as one log entry, so that they commit (or are lost) together, and
    /// puts them on top of the planning image; false when this node no longer leads the
    /// quorum (nothing is proposed: whoever asked asks again).
    fn propose_records(&mut self, records: Vec<MetadataRecord>) -> bool {
        if records.is_empty() {
            return true;
        }
        if self
            .node
            .propose(MetadataRecord::encode_entry(&records))
            .is_err()
        {
            return false;
        }
        self.planning
            .proposed(&self.image, self.node.last_index(), &records);
        true
    }

    /// Answers a topic request: to this node, or to the node that forwarded it (a voter by
    /// message, a broker-only node with its next fetch).
    fn respond(&mut self, responder: Responder<R>, results: Vec<ItemResult>) {
        let applied_index = self.image.last_applied_index();
        match responder {
            Responder::Local(reply) => self.pending.push_back(MemberOutput::Answer {
                reply,
                results,
                applied_index,
            }),
            Responder::Remote { to, request_id } => {
                let reply = ControllerReply {
                    request_id,
                    results,
                    applied_index,
                };
                if self.config.voters.contains(&to) {
                    self.pending.push_back(MemberOutput::Reply { to, reply });
                } else {
                    // A broker-only node that stopped fetching (gone, or asking another
                    // controller) does not make them pile up: the oldest go, and their
                    // askers time out.
                    let waiting = self.observer_replies.entry(to).or_default();
                    if waiting.len() >= OBSERVER_REPLIES_MAX {
                        waiting.remove(0);
                    }
                    waiting.push(reply);
                }
            }
        }
    }

    /// The next thing to carry out, in order; `None` once the turn is over.
    pub fn poll_output(&mut self) -> Option<MemberOutput<R>> {
        loop {
            if self.failed {
                return self.pending.pop_front();
            }
            if let Some(output) = self.pending.pop_front() {
                return Some(output);
            }
            if let Some(output) = self.node.poll_output() {
                match output {
                    QuorumOutput::Send(message) => return Some(MemberOutput::Raft(message)),
                    QuorumOutput::Persist {
                        entries,
                        hard_state,
                        snapshot,
                    } => {
                        return Some(MemberOutput::Persist {
                            entries,
                            hard_state,
                            snapshot,
                        })
                    }
                    QuorumOutput::Compact(snapshot) => {
                        return Some(MemberOutput::Compact(snapshot))
                    }
                    QuorumOutput::Install { index, data } => self.install(index, &data),
                    QuorumOutput::Apply { index, data } => self.apply(index, data),
                }
                continue;
            }
            // Everything applied: time for a snapshot?
            let applied = self.image.last_applied_index();
            if applied >= self.node.snapshot_index() + self.config.snapshot_interval_records {
                self.node
                    .compact(applied, self.image.to_snapshot().encode());
                continue;
            }
            if !self.turn_open {
                return None;
            }
            self.turn_open = false;
            self.finish_turn();
        }
    }

    fn install(&mut self, index: u64, data: &[u8]) {
        match image_from_snapshot(data) {
            Ok(installed) => {
                tracing::info!(index, "metadata snapshot installed from the leader");
                self.image = installed;
                self.recent_records.clear();
                self.recent_after = self.image.last_applied_index();
            }
            Err(error) => {
                // Going on without it would answer from a wrong image.
                self.failed = true;
                self.pending.push_back(MemberOutput::Failed(format!(
                    "unreadable metadata snapshot at index {index}: {error}"
                )));
            }
        }
    }

    fn apply(&mut self, index: u64, data: Vec<u8>) {
        match MetadataRecord::decode_entry(&data) {
            Ok(records) => {
                if let Err(error) = self.image.apply_entry(index, &records) {
                    tracing::warn!(index, %error, "metadata record not applied");
                }
                if let Ok(text) = String::from_utf8(data) {
                    self.recent_records.push_back((index, text));
                }
                while self.recent_records.len() as u64 > self.config.snapshot_interval_records {
                    if let Some((dropped, _)) = self.recent_records.pop_front() {
                        self.recent_after = dropped;
                    }
                }
            }
            Err(error) => tracing::error!(index, %error, "unreadable metadata record"),
        }
    }

    /// After the node's outputs: answers whose records applied, answers that expired.
    fn finish_turn(&mut self) {
        if self.node.leader().is_some() {
            self.last_known_leader = self.node.leader();
        }
        self.planning.caught_up(&self.image);
        let applied = self.image.last_applied_index();
        let leading_term = self.node.is_leader().then(|| self.node.term());
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.proposed_admins)
            .into_iter()
            .partition(|proposed| {
                applied >= proposed.wait_index || leading_term != Some(proposed.term)
            });
        self.proposed_admins = waiting;
        for proposed in done {
            let results = if applied >= proposed.wait_index {
                admin::outcome(&self.image, &proposed.expected)
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
            self.respond(proposed.responder, results);
        }
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.answered_admins)
            .into_iter()
            .partition(|(index, _, _)| applied >= *index);
        self.answered_admins = held;
        for (applied_index, results, reply) in ready {
            self.pending.push_back(MemberOutput::Answer {
                reply,
                results,
                applied_index,
            });
        }
        let now_ms = self.now_ms;
        let expired: Vec<u64> = self
            .forwarded_admins
            .iter()
            .filter(|(_, forwarded)| forwarded.deadline_ms <= now_ms)
            .map(|(&request_id, _)| request_id)
            .collect();
        for request_id in expired {
            if let Some(forwarded) = self.forwarded_admins.remove(&request_id) {
                let timed_out = Err((
                    ResponseError::RequestTimedOut.code(),
                    "the controller did not answer in time".to_owned(),
                ));
                self.pending.push_back(MemberOutput::Answer {
                    reply: forwarded.reply,
                    results: vec![timed_out; forwarded.items],
                    applied_index: 0,
                });
            }
        }
        // Not before this process is registered and unfenced: the metadata replayed from the
        // local log may name this broker leader at an epoch its previous incarnation led, and
        // leading it again would put different records at the same offsets and epoch as the
        // ones the other replicas took from that incarnation (no epoch check could tell them
        // apart). Registering moves the old incarnation's leaderships away (new epochs), so
        // whatever this one leads it leads at an epoch of its own.
        let broker_id = self.broker_id();
        self.registered_once = self.registered_once
            || self.image.broker(broker_id).is_some_and(|broker| {
                broker.incarnation_id == self.incarnation_id && !broker.fenced
            });
    }

    /// The topics and layout this node's shards should serve, when they changed since the last
    /// call and this incarnation may serve (see the module docs), with the applied index.
    pub fn layout_update(&mut self) -> Option<(u64, Vec<MetadataTopic>, ClusterLayout)> {
        if !self.registered_once {
            return None;
        }
        let inputs = (self.image.last_applied_index(), self.node.leader());
        if self.layout_inputs == Some(inputs) {
            return None;
        }
        self.layout_inputs = Some(inputs);
        let layout = admin::layout_of(&self.image, self.node.leader());
        if self.published_layout.as_ref() == Some(&layout) {
            return None;
        }
        self.published_layout = Some(layout.clone());
        Some((self.image.last_applied_index(), layout.0, layout.1))
    }

    /// The records (encoded) applied after `index`, when the recent ones reach back that far
    /// (for observers, such as the simulation's checker); `None` when a snapshot or the
    /// ring's limit dropped some of them.
    pub fn records_applied_after(&self, index: u64) -> Option<impl Iterator<Item = &str>> {
        (index >= self.recent_after).then(|| {
            self.recent_records
                .iter()
                .filter(move |(applied, _)| *applied > index)
                .map(|(_, text)| text.as_str())
        })
    }

    /// What a broker-only node that applied up to `fetch.applied_index` is sent: the records
    /// applied since, when the recent ones reach back that far, or else the whole image; and
    /// the answers waiting for it.
    pub fn metadata_fetch(&mut self, fetch: &MetadataFetch) -> MetadataUpdate {
        let replies = self
            .observer_replies
            .remove(&fetch.node_id)
            .unwrap_or_default();
        let (snapshot, records) = if fetch.applied_index >= self.recent_after {
            let records = self
                .recent_records
                .iter()
                .filter(|(index, _)| *index > fetch.applied_index)
                .cloned()
                .collect();
            (None, records)
        } else {
            let snapshot = String::from_utf8(self.image.to_snapshot().encode()).ok();
            (snapshot, Vec::new())
        };
        MetadataUpdate {
            leader: self.node.leader(),
            term: self.node.term(),
            snapshot,
            records,
            replies,
        }
    }
}

/// What the controller plans against: the applied image with its own proposed records on top
/// (see [`PlanningImage`]).
fn planning_view<'a>(planning: &'a PlanningImage, image: &'a MetadataImage) -> &'a MetadataImage {
    #[cfg(feature = "mutations")]
    if crate::mutation::is_enabled(crate::mutation::Mutation::PlanOnAppliedImage) {
        return image;
    }
    planning.view(image)
}

/// A broker's controlled shutdown, as a state machine its driver turns every heartbeat
/// round: requested, then heartbeats ask the controller to move the broker's leaderships
/// away, until it is done.
#[derive(Debug, Default, Clone)]
pub struct ControlledShutdown {
    /// The process was asked to stop.
    pub requested: bool,
    since_ms: Option<i64>,
    /// Over: the shards may stop.
    pub done: bool,
}

impl ControlledShutdown {
    /// One turn: whether the broker is stopping. When it starts, the next heartbeat (which
    /// asks the controller to move this broker's leaderships) is due at once.
    #[allow(clippy::too_many_arguments)]
    pub fn turn(
        &mut self,
        leader_known: bool,
        image: &MetadataImage,
        broker_id: i32,
        incarnation_id: uuid::Uuid,
        broker_session_timeout_ms: i64,
        next_heartbeat_ms: &mut i64,
        now_ms: i64,
    ) -> bool {
        if !self.requested || self.done {
            return self.requested;
        }
        let began = *self.since_ms.get_or_insert_with(|| {
            tracing::info!("controlled shutdown: moving leaderships away");
            *next_heartbeat_ms = 0;
            now_ms
        });
        let elapsed_ms = now_ms - began;
        if controlled_shutdown_finished(
            leader_known,
            image,
            broker_id,
            incarnation_id,
            broker_session_timeout_ms,
            elapsed_ms,
        ) {
            tracing::info!(elapsed_ms, "controlled shutdown: done");
            self.done = true;
        }
        true
    }
}

/// How often a broker heartbeats: faster while it stops, so its leaderships move soon.
pub fn heartbeat_interval_ms(broker_heartbeat_interval_ms: i64, stopping: bool) -> i64 {
    if stopping {
        CONTROLLED_SHUTDOWN_HEARTBEAT_MS.min(broker_heartbeat_interval_ms)
    } else {
        broker_heartbeat_interval_ms
    }
}

/// Whether a broker's controlled shutdown is over: the controller marked it shutting down and
/// it leads no partition any more; or it never registered; or no controller is known for a
/// while (the quorum may be gone); or it took longer than a broker session.
fn controlled_shutdown_finished(
    leader_known: bool,
    image: &MetadataImage,
    broker_id: i32,
    incarnation_id: uuid::Uuid,
    broker_session_timeout_ms: i64,
    elapsed_ms: i64,
) -> bool {
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
        || elapsed_ms >= broker_session_timeout_ms
}

/// A broker's request: register until the applied metadata shows this incarnation
/// registered, then heartbeat with its epoch.
pub fn broker_request(
    image: &MetadataImage,
    broker_id: i32,
    incarnation_id: uuid::Uuid,
    endpoint: &BrokerEndpoint,
    stopping: bool,
) -> ControllerRequest {
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
            host: endpoint.host.clone(),
            port: endpoint.port,
            data_lost: endpoint.data_lost,
        },
    }
}

/// The image a snapshot's data holds.
///
/// # Errors
/// A description of what is wrong with the data.
pub fn image_from_snapshot(data: &[u8]) -> Result<MetadataImage, String> {
    let snapshot = MetadataSnapshot::decode(data).map_err(|error| error.to_string())?;
    MetadataImage::from_snapshot(&snapshot).map_err(|error| error.to_string())
}
