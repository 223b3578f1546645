//! The turmoil driver of one node: the same [`QuorumMember`] the broker's glommio driver runs
//! (`spate_engine::runtime::quorum`), with `turmoil::net` for its peers and its metadata log
//! ([`QuorumLog`]) on [`SimulatedStorage`], whose unsynced writes a crash loses.
//!
//! Like the glommio driver it keeps one outgoing connection per peer (a message that cannot
//! be sent is dropped: raft resends and heartbeats repeat), reads what peers send on the
//! connections they opened, and tells the member when a connection that carried a peer's raft
//! messages or heartbeats closed. Clients create topics through a port of their own.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use spate_engine::quorum::admin::{ItemResult, Reassignment, TopicAdmin, TopicToCreate};
use spate_engine::quorum::log::QuorumLog;
use spate_engine::quorum::member::{
    image_from_snapshot, BrokerEndpoint, ControllerReply, ControllerRequest, MemberConfig,
    MemberInput, MemberOutput, QuorumMember,
};
use spate_engine::quorum::{ControllerConfig, MetadataImage, NodeId, QuorumConfig};
use tokio::sync::{mpsc, oneshot, watch};

use super::disk::SimDisk;
use super::replicas;
use super::wire;
use super::world::{fnv1a, World, FNV_OFFSET};

/// The port peers talk to.
pub(crate) const PEER_PORT: u16 = 9093;
/// The port clients create topics through.
pub(crate) const CLIENT_PORT: u16 = 9092;
/// How long one write to a peer may take before the connection is given up.
const PEER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MESSAGES: usize = 1024;

/// A node's host name in the simulation.
pub(crate) fn host_name(node: NodeId) -> String {
    format!("node-{node}")
}

/// What a node is started with, every time it (re)starts.
#[derive(Clone)]
pub(crate) struct NodeSetup {
    pub(crate) node: NodeId,
    pub(crate) voters: Vec<NodeId>,
    /// Its disk: outlives the process.
    pub(crate) disk: SimDisk,
    pub(crate) world: Rc<RefCell<World>>,
    pub(crate) seed: u64,
    /// Starts so far, for a new seed every incarnation.
    pub(crate) starts: Rc<std::cell::Cell<u64>>,
}

/// What the member's loop takes in.
pub(crate) enum Event {
    Input(MemberInput<u64>),
    /// A topic request for the controller (a client's creation or reassignment, a leader's
    /// ISR change); answered with a Kafka error code.
    Admin {
        admin: TopicAdmin,
        answer: oneshot::Sender<i16>,
    },
}

/// `data_lost`: the node's partition disk holds nothing (new, or lost), so it registers so.
fn member_config(setup: &NodeSetup, data_lost: bool) -> MemberConfig {
    MemberConfig {
        node_id: setup.node,
        voters: setup.voters.clone(),
        broker: Some(BrokerEndpoint {
            host: host_name(setup.node),
            port: i32::from(CLIENT_PORT),
            data_lost,
        }),
        quorum: QuorumConfig::default(),
        controller: ControllerConfig {
            broker_session_timeout_ms: 9_000,
            ..ControllerConfig::default()
        },
        broker_heartbeat_interval_ms: 500,
        leader_imbalance_check_interval_ms: 30_000,
        // Small, so that runs take and install snapshots.
        snapshot_interval_records: 50,
    }
}

pub(crate) fn sim_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The node's software, from its start to its crash.
pub(crate) async fn run(setup: NodeSetup) -> turmoil::Result {
    let node = setup.node;
    let starts = setup.starts.get();
    setup.starts.set(starts + 1);
    setup.world.borrow_mut().node_started(node);
    let opened = QuorumLog::open(setup.disk.clone(), Path::new("/spate")).await;
    let (mut log, restored) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            setup
                .world
                .borrow_mut()
                .violation(format!("node {node} cannot open its metadata log: {error}"));
            return Ok(());
        }
    };
    let image = match &restored.snapshot {
        None => MetadataImage::new(),
        Some(snapshot) => match image_from_snapshot(&snapshot.data) {
            Ok(image) => image,
            Err(error) => {
                setup.world.borrow_mut().violation(format!(
                    "node {node} cannot read its metadata snapshot: {error}"
                ));
                return Ok(());
            }
        },
    };
    // Hashed, not combined arithmetically: SplitMix64 generators whose seeds differ by a
    // multiple of its increment produce shifted copies of one sequence (equal topic ids).
    let seed = [setup.seed, node, starts]
        .iter()
        .fold(FNV_OFFSET, |hash, part| fnv1a(hash, &part.to_le_bytes()));
    // The partition disk is read before anything opens a partition on it.
    let data_lost = !setup
        .disk
        .holds_files_under(Path::new(super::replicas::DATA_DIR));
    let config = member_config(&setup, data_lost);
    let tick = Duration::from_millis(config.quorum.tick_ms as u64);
    let mut member: QuorumMember<u64> =
        QuorumMember::new(config, restored.into_durable(), image, seed);

    let (events, mut incoming) = mpsc::unbounded_channel();
    let peer_listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
    tokio::task::spawn_local(accept_peers(peer_listener, events.clone()));
    let client_listener = turmoil::net::TcpListener::bind(("0.0.0.0", CLIENT_PORT)).await?;
    tokio::task::spawn_local(accept_clients(client_listener, events.clone()));
    let (images, published) = watch::channel(None);
    tokio::task::spawn_local(replicas::run(
        node as i32,
        setup.disk.clone(),
        Rc::clone(&setup.world),
        events.clone(),
        published,
    ));
    let mut queues = BTreeMap::new();
    for &peer in setup.voters.iter().filter(|&&peer| peer != node) {
        let (sender, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES);
        tokio::task::spawn_local(send_to_peer(node, peer, receiver, Rc::clone(&setup.world)));
        queues.insert(peer, sender);
    }

    let mut answers: BTreeMap<u64, oneshot::Sender<i16>> = BTreeMap::new();
    let mut next_answer = 0_u64;
    loop {
        let event = tokio::select! {
            biased;
            event = incoming.recv() => event,
            () = tokio::time::sleep(tick) => None,
        };
        let input = match event {
            Some(Event::Input(input)) => input,
            Some(Event::Admin { admin, answer }) => {
                next_answer += 1;
                answers.insert(next_answer, answer);
                MemberInput::Admin {
                    admin,
                    reply: next_answer,
                }
            }
            None => MemberInput::Tick,
        };
        let (now_ms, stop_requested) = {
            let world = setup.world.borrow();
            (
                world.node_clock_ms(node, sim_ms()),
                world.stop_requests.contains(&node),
            )
        };
        if stop_requested {
            member.request_shutdown();
        }
        member.handle(now_ms, input);
        while let Some(output) = member.poll_output() {
            match output {
                MemberOutput::Raft(message) => {
                    if let (Some(queue), Ok(bytes)) =
                        (queues.get(&message.to), message.write_to_bytes())
                    {
                        drop(queue.try_send(wire::frame(wire::RAFT, &bytes)));
                    }
                }
                MemberOutput::Request { to, request } => {
                    let queued = match (queues.get(&to), serde_json::to_vec(&request)) {
                        (Some(queue), Ok(bytes)) => {
                            queue.try_send(wire::frame(wire::REQUEST, &bytes)).is_ok()
                        }
                        _ => false,
                    };
                    if let (false, ControllerRequest::Topics { request_id, .. }) =
                        (queued, &request)
                    {
                        let request_id = *request_id;
                        member.handle(now_ms, MemberInput::RequestLost { request_id });
                    }
                }
                MemberOutput::Reply { to, reply } => {
                    if let (Some(queue), Ok(bytes)) = (queues.get(&to), serde_json::to_vec(&reply))
                    {
                        drop(queue.try_send(wire::frame(wire::REPLY, &bytes)));
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
                        setup
                            .world
                            .borrow_mut()
                            .violation(format!("node {node}: metadata log write failed: {error}"));
                        return Ok(());
                    }
                }
                MemberOutput::Compact(snapshot) => {
                    if let Err(error) = log.compact(&snapshot).await {
                        setup
                            .world
                            .borrow_mut()
                            .violation(format!("node {node}: metadata snapshot failed: {error}"));
                        return Ok(());
                    }
                }
                MemberOutput::Answer { reply, results, .. } => {
                    if let Some(answer) = answers.remove(&reply) {
                        let _ = answer.send(error_code(&results));
                    }
                }
                MemberOutput::Failed(reason) => {
                    setup
                        .world
                        .borrow_mut()
                        .violation(format!("node {node} left the quorum: {reason}"));
                    return Ok(());
                }
            }
        }
        // The replicas get metadata when the broker's shards would (the gate is part of what
        // runs): registered and unfenced.
        if member.layout_update().is_some() {
            images.send_replace(Some(member.image().clone()));
        }
        setup.world.borrow_mut().observe(node, &member);
        if member.controlled_shutdown_done() {
            // As the broker does: its shards stop once the controlled shutdown is over.
            setup.world.borrow_mut().node_stopped(node, &member);
            return Ok(());
        }
    }
}

/// One topic's result as a Kafka error code.
fn error_code(results: &[ItemResult]) -> i16 {
    match results.first() {
        Some(Ok(())) => 0,
        Some(Err((code, _))) => *code,
        None => -1,
    }
}

async fn accept_peers(listener: turmoil::net::TcpListener, events: mpsc::UnboundedSender<Event>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::task::spawn_local(read_peer(stream, events.clone()));
    }
}

/// Reads one peer connection until it closes, then says whose messages it carried.
async fn read_peer(mut stream: turmoil::net::TcpStream, events: mpsc::UnboundedSender<Event>) {
    let mut heartbeats_of: Option<(i32, i64)> = None;
    let mut raft_of: Option<NodeId> = None;
    while let Some((kind, payload)) = wire::read_frame(&mut stream).await {
        let input = match kind {
            wire::RAFT => match Message::parse_from_bytes(&payload) {
                Ok(message) => {
                    raft_of = Some(message.from);
                    MemberInput::Raft(message)
                }
                Err(_) => break,
            },
            wire::REQUEST => match serde_json::from_slice::<ControllerRequest>(&payload) {
                Ok(request) => {
                    if let ControllerRequest::Heartbeat {
                        broker_id,
                        broker_epoch,
                        ..
                    } = &request
                    {
                        heartbeats_of = Some((*broker_id, *broker_epoch));
                    }
                    MemberInput::Request(request)
                }
                Err(_) => break,
            },
            wire::REPLY => match serde_json::from_slice::<ControllerReply>(&payload) {
                Ok(reply) => MemberInput::Reply(reply),
                Err(_) => break,
            },
            _ => break,
        };
        if events.send(Event::Input(input)).is_err() {
            return;
        }
    }
    if let Some((broker_id, broker_epoch)) = heartbeats_of {
        drop(events.send(Event::Input(MemberInput::HeartbeatsGone {
            broker_id,
            broker_epoch,
        })));
    }
    if let Some(voter) = raft_of {
        drop(events.send(Event::Input(MemberInput::VoterGone { voter })));
    }
}

/// Sends a peer its frames over one connection, made when needed, and made again after the
/// network between the two broke (see [`World::break_link`]).
async fn send_to_peer(
    node: NodeId,
    peer: NodeId,
    mut queue: mpsc::Receiver<Vec<u8>>,
    world: Rc<RefCell<World>>,
) {
    use tokio::io::AsyncWriteExt;
    let address = (host_name(peer), PEER_PORT);
    let mut stream: Option<(turmoil::net::TcpStream, u64)> = None;
    while let Some(frame) = queue.recv().await {
        let breaks = world.borrow().link_breaks(node, peer);
        if stream
            .as_ref()
            .is_some_and(|(_, made_at)| *made_at != breaks)
        {
            stream = None;
        }
        if stream.is_none() {
            let connect = turmoil::net::TcpStream::connect(address.clone());
            stream = tokio::time::timeout(Duration::from_millis(500), connect)
                .await
                .ok()
                .and_then(Result::ok)
                .map(|connected| (connected, breaks));
        }
        let Some((connected, _)) = stream.as_mut() else {
            continue;
        };
        // A write that cannot complete (the peer reads nothing: gone, or its end of the
        // connection stalled) ends the connection, as TCP gives up on an unacknowledged one.
        let written = tokio::time::timeout(PEER_WRITE_TIMEOUT, connected.write_all(&frame)).await;
        if !matches!(written, Ok(Ok(()))) {
            stream = None;
        }
    }
}

async fn accept_clients(listener: turmoil::net::TcpListener, events: mpsc::UnboundedSender<Event>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::task::spawn_local(serve_client(stream, events.clone()));
    }
}

/// A client's topic creations and reassignments, one at a time.
async fn serve_client(mut stream: turmoil::net::TcpStream, events: mpsc::UnboundedSender<Event>) {
    while let Some((kind, payload)) = wire::read_frame(&mut stream).await {
        let admin = match kind {
            wire::CREATE_TOPIC => {
                let [partitions, replication_factor, name @ ..] = payload.as_slice() else {
                    return;
                };
                let Ok(name) = String::from_utf8(name.to_vec()) else {
                    return;
                };
                TopicAdmin::Create(vec![TopicToCreate {
                    name,
                    partitions: i32::from(*partitions),
                    replication_factor: usize::from(*replication_factor),
                    // What the producers' acks=all is held to, known to the controller too
                    // (its eligible leader replicas depend on it).
                    configs: BTreeMap::from([(
                        "min.insync.replicas".to_owned(),
                        super::replicas::MIN_INSYNC_REPLICAS.to_string(),
                    )]),
                }])
            }
            wire::REASSIGN => {
                let Ok(reassignment) = serde_json::from_slice::<Reassignment>(&payload) else {
                    return;
                };
                TopicAdmin::Reassign(vec![reassignment])
            }
            _ => return,
        };
        let (answer, answered) = oneshot::channel();
        if events.send(Event::Admin { admin, answer }).is_err() {
            return;
        }
        let Ok(code) = answered.await else {
            return;
        };
        let written = wire::write_frame(&mut stream, wire::ADMIN_ANSWER, &code.to_be_bytes()).await;
        if written.is_err() {
            return;
        }
    }
}
