//! The metadata side of a broker-only node (`--process-roles broker`): it is no voter of the
//! quorum, so instead of running raft it fetches the metadata from the controllers, as a
//! Kafka broker fetches the `__cluster_metadata` log.
//!
//! One task on the controller shard owns one connection to a controller (the quorum leader
//! once known, else each voter in turn) and every 50 ms sends a [`MetadataFetch`] with the
//! last index it applied; the controller answers on the same connection with the records
//! applied since, or its whole image when it no longer holds them all
//! ([`MetadataUpdate`]), with the quorum leader and the answers to this node's topic requests.
//! Over the same connection go this node's registration and heartbeats and its topic requests
//! (CreateTopics, AlterIsr, ...), as a combined node sends them to the quorum leader. The
//! applied image is handed to the shards exactly as a quorum member's is: the same layout,
//! and only once this process's registration is applied and unfenced. The image is kept in
//! memory only: a restarted broker fetches it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use tracing::{debug, info, warn};

use super::quorum::{
    frame, image_from_snapshot, ClusterBroker, ControllerRequest, Event, MetadataFetch,
    MetadataUpdate, QuorumStatus, FRAME_CONTROLLER_REQUEST, FRAME_METADATA_FETCH,
    FRAME_METADATA_UPDATE, TOPIC_REQUEST_TIMEOUT_MS,
};
use super::shard::Shard;
use crate::quorum::admin::{self as cluster_admin, ItemResult, TopicAdmin};
use crate::quorum::member::{
    broker_request, heartbeat_interval_ms, BrokerEndpoint, ControlledShutdown,
};
use crate::quorum::{MetadataImage, MetadataRecord, NodeId};

/// How often the metadata is fetched.
const FETCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long connecting or one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest update accepted.
const UPDATE_FRAME_BYTES_MAX: usize = 256 << 20;
/// Local events queued (topic requests from the shards).
const EVENT_QUEUE: usize = 1024;

/// A shard's topic request sent to the controller, waiting for its answer.
struct Forwarded {
    reply: futures_channel::oneshot::Sender<(Vec<ItemResult>, u64)>,
    deadline_ms: i64,
    /// Items in the request, each of which is answered.
    items: usize,
}

/// Starts the metadata observer of this broker-only node on the current (controller) shard.
pub fn spawn(shard: &Rc<Shard>, voters: Vec<(NodeId, SocketAddr)>) {
    let (events, incoming) = local_channel::new_bounded(EVENT_QUEUE);
    shard.set_quorum_events(Rc::new(events));
    glommio::spawn_local(Rc::clone(shard).publish_cluster_metadata()).detach();
    glommio::spawn_local(run(Rc::clone(shard), voters, incoming)).detach();
}

async fn run(shard: Rc<Shard>, voters: Vec<(NodeId, SocketAddr)>, incoming: LocalReceiver<Event>) {
    let node_id = shard.config.node_id;
    let own_id = NodeId::try_from(node_id).unwrap_or_default();
    let incarnation_id = super::random_uuid();
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as i64;
    let cluster_id = cluster_admin::cluster_id_of(&shard.config.controller_quorum);
    info!(
        node_id,
        voters = ?voters.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        "broker-only node: fetching the metadata from the controllers"
    );
    let mut image = MetadataImage::new();
    let mut connection: Option<(NodeId, TcpStream)> = None;
    let mut leader: Option<NodeId> = None;
    let mut term = 0;
    let mut next_voter = 0_usize;
    let mut next_fetch_ms = 0;
    let mut next_heartbeat_ms = 0;
    let mut shutdown = ControlledShutdown::default();
    let endpoint = BrokerEndpoint {
        host: shard.config.advertised_host.clone(),
        port: shard.config.advertised_port,
        data_lost: super::quorum::holds_no_partitions(&shard.config.data_dir),
    };
    let mut forwarded: BTreeMap<u64, Forwarded> = BTreeMap::new();
    let mut next_request_id = 0_u64;
    let mut answered: Vec<(u64, Vec<ItemResult>, Forwarded)> = Vec::new();
    let mut registered_once = false;
    let mut published_layout = None;
    while !shard.shutting_down.get() {
        let wait = Duration::from_millis((next_fetch_ms - now_ms()).clamp(0, 50) as u64);
        let event = futures_lite::future::or(async { incoming.recv().await }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        if connection.is_none() {
            connection = connect(&voters, leader, &mut next_voter).await;
            if connection.is_none() {
                // The leader known may be gone: try the voters in turn until one names the
                // new one.
                leader = None;
            }
        }
        let mut outgoing: Vec<Vec<u8>> = Vec::new();
        if let Some(Event::Admin { mut admin, reply }) = event {
            if let TopicAdmin::AlterIsr(change) = &mut admin {
                change.broker_id = node_id;
                change.broker_epoch = image
                    .broker(node_id)
                    .filter(|broker| broker.incarnation_id == incarnation_id)
                    .map_or(-1, |broker| broker.broker_epoch);
            }
            let request_id = next_request_id;
            next_request_id += 1;
            let request = ControllerRequest::Topics {
                request_id,
                from: own_id,
                admin: admin.clone(),
            };
            match serde_json::to_vec(&request) {
                Ok(payload) if connection.is_some() => {
                    outgoing.push(frame(FRAME_CONTROLLER_REQUEST, &payload));
                    forwarded.insert(
                        request_id,
                        Forwarded {
                            reply,
                            deadline_ms: now_ms() + TOPIC_REQUEST_TIMEOUT_MS,
                            items: admin.len(),
                        },
                    );
                }
                _ => {
                    let results = cluster_admin::all_failed(
                        &admin,
                        ResponseError::NotController,
                        "no controller is reachable yet; retry",
                    );
                    let _ = reply.send((results, 0));
                }
            }
        }
        // Controlled shutdown, as on a combined node.
        shutdown.requested |= shard.process.shutdown_requested.load(Ordering::SeqCst);
        let stopping = shutdown.turn(
            leader.is_some(),
            &image,
            node_id,
            incarnation_id,
            shard.config.broker_session_timeout_ms,
            &mut next_heartbeat_ms,
            now_ms(),
        );
        if shutdown.done {
            shard
                .process
                .controlled_shutdown_done
                .store(true, Ordering::SeqCst);
        }
        if now_ms() >= next_heartbeat_ms && connection.is_some() {
            next_heartbeat_ms = now_ms()
                + heartbeat_interval_ms(shard.config.broker_heartbeat_interval_ms, stopping);
            let request = broker_request(&image, node_id, incarnation_id, &endpoint, stopping);
            if let Ok(payload) = serde_json::to_vec(&request) {
                outgoing.push(frame(FRAME_CONTROLLER_REQUEST, &payload));
            }
        }
        let fetch_due = now_ms() >= next_fetch_ms;
        if let Some((controller_id, stream)) = connection.as_mut() {
            let exchanged = futures_lite::future::or(
                async { Some(exchange(stream, own_id, &image, &outgoing, fetch_due).await) },
                async {
                    glommio::timer::sleep(EXCHANGE_TIMEOUT).await;
                    None
                },
            )
            .await;
            match exchanged {
                Some(Ok(Some(update))) => {
                    next_fetch_ms = now_ms() + FETCH_INTERVAL.as_millis() as i64;
                    term = update.term;
                    let moved = update.leader.is_some_and(|known| known != *controller_id);
                    leader = update.leader.or(leader);
                    for reply in update.replies.iter().cloned() {
                        if let Some(waiting) = forwarded.remove(&reply.request_id) {
                            answered.push((reply.applied_index, reply.results, waiting));
                        }
                    }
                    if let Err(error) = apply(&mut image, update) {
                        warn!(%error, "unusable metadata update; fetching again");
                    }
                    if moved {
                        // Requests go to the quorum leader.
                        connection = None;
                    }
                }
                Some(Ok(None)) => {}
                Some(Err(error)) => {
                    debug!(controller = *controller_id, %error, "metadata fetch failed");
                    connection = None;
                    leader = None;
                    next_voter += 1;
                }
                None => {
                    connection = None;
                    leader = None;
                    next_voter += 1;
                }
            }
        }
        let applied = image.last_applied_index();
        let (ready, held): (Vec<_>, Vec<_>) = answered
            .into_iter()
            .partition(|(index, _, _)| applied >= *index);
        answered = held;
        for (index, results, waiting) in ready {
            let _ = waiting.reply.send((results, index));
        }
        let now = now_ms();
        let expired: Vec<u64> = forwarded
            .iter()
            .filter(|(_, waiting)| waiting.deadline_ms <= now)
            .map(|(&request_id, _)| request_id)
            .collect();
        for request_id in expired {
            if let Some(waiting) = forwarded.remove(&request_id) {
                let timed_out = Err((
                    ResponseError::RequestTimedOut.code(),
                    "the controller did not answer in time".to_owned(),
                ));
                let _ = waiting.reply.send((vec![timed_out; waiting.items], 0));
            }
        }
        publish_status(&shard, own_id, &voters, leader, term, &image);
        registered_once = registered_once
            || image
                .broker(node_id)
                .is_some_and(|broker| broker.incarnation_id == incarnation_id && !broker.fenced);
        let layout = cluster_admin::layout_of(&image, leader);
        if registered_once && published_layout.as_ref() != Some(&layout) {
            shard.queue_cluster_metadata(applied, &cluster_id, layout.0.clone(), layout.1.clone());
            published_layout = Some(layout);
        }
    }
}

/// Connects to the quorum leader if known, else to the next voter.
async fn connect(
    voters: &[(NodeId, SocketAddr)],
    leader: Option<NodeId>,
    next_voter: &mut usize,
) -> Option<(NodeId, TcpStream)> {
    if voters.is_empty() {
        return None;
    }
    let (id, address) = leader
        .and_then(|leader| voters.iter().find(|(id, _)| *id == leader))
        .copied()
        .unwrap_or_else(|| voters[*next_voter % voters.len()]);
    let connected =
        futures_lite::future::or(async { TcpStream::connect(address).await.ok() }, async {
            glommio::timer::sleep(EXCHANGE_TIMEOUT).await;
            None
        })
        .await;
    match connected {
        Some(stream) => {
            let _ = stream.set_nodelay(true);
            Some((id, stream))
        }
        None => {
            *next_voter += 1;
            None
        }
    }
}

/// Sends `outgoing` frames, then, when `fetch` is due, a fetch, and reads its update.
async fn exchange(
    stream: &mut TcpStream,
    node_id: NodeId,
    image: &MetadataImage,
    outgoing: &[Vec<u8>],
    fetch: bool,
) -> Result<Option<MetadataUpdate>, String> {
    for frame in outgoing {
        stream
            .write_all(frame)
            .await
            .map_err(|error| error.to_string())?;
    }
    if !fetch {
        return Ok(None);
    }
    let request = MetadataFetch {
        node_id,
        applied_index: image.last_applied_index(),
    };
    let payload = serde_json::to_vec(&request).map_err(|error| error.to_string())?;
    stream
        .write_all(&frame(FRAME_METADATA_FETCH, &payload))
        .await
        .map_err(|error| error.to_string())?;
    let mut length = [0_u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|error| error.to_string())?;
    let length = u32::from_be_bytes(length) as usize;
    if length == 0 || length > UPDATE_FRAME_BYTES_MAX {
        return Err(format!("a {length}-byte metadata frame"));
    }
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    match body.split_first() {
        Some((&FRAME_METADATA_UPDATE, payload)) => serde_json::from_slice(payload)
            .map(Some)
            .map_err(|error| error.to_string()),
        _ => Err("not a metadata update".into()),
    }
}

/// Applies an update: its snapshot, then its records after the image's index.
fn apply(image: &mut MetadataImage, update: MetadataUpdate) -> Result<(), String> {
    if let Some(snapshot) = update.snapshot {
        let fetched = image_from_snapshot(snapshot.as_bytes())?;
        // A controller behind this node (it just switched to a lagging one) is not followed
        // backwards.
        if fetched.last_applied_index() >= image.last_applied_index() {
            *image = fetched;
            info!(
                index = image.last_applied_index(),
                "metadata image fetched whole"
            );
        }
    }
    for (index, record) in update.records {
        if index <= image.last_applied_index() {
            continue;
        }
        let records =
            MetadataRecord::decode_entry(record.as_bytes()).map_err(|error| error.to_string())?;
        if let Err(error) = image.apply_entry(index, &records) {
            warn!(index, %error, "metadata record not applied");
        }
    }
    Ok(())
}

/// DescribeQuorum and DescribeCluster on this node: what it learned.
fn publish_status(
    shard: &Shard,
    node_id: NodeId,
    voters: &[(NodeId, SocketAddr)],
    leader: Option<NodeId>,
    term: u64,
    image: &MetadataImage,
) {
    let status = QuorumStatus {
        node_id,
        voters: voters.iter().map(|(id, _)| *id).collect(),
        leader,
        term,
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
}
