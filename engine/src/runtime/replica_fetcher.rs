//! A shard's replica fetcher from one leader broker: the glommio driver of the
//! [`PartitionFollower`](crate::replication::PartitionFollower)s of its partitions that follow
//! that leader.
//!
//! One task per (shard, leader). Each turn it sends the leader one Fetch (v12, replica id set,
//! long-polled) for all those partitions, each from its log end with its newest leader epoch,
//! and then, per partition: appends the leader's batches unchanged (offsets and epochs kept)
//! and syncs them before the next Fetch reports the new log end (the leader counts what a
//! follower reports toward `acks=all`, and Spate's writes bypass the page cache, so unsynced
//! data would not survive the process); truncates where the leader says the logs diverge
//! (KIP-101/KIP-279); takes the leader's high watermark, capped at its own log end. When the
//! leader answers OFFSET_OUT_OF_RANGE it asks the leader's log start and end (ListOffsets with
//! its replica id) and, as Kafka's fetcher does, cuts its log to the leader's end, or empties
//! it and starts at the leader's start (retention removed what it lacked), or fetches again. A
//! partition whose leader moved is left to the metadata: it follows the new leader through
//! another fetcher. The task ends when nothing on its shard follows its leader.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tracing::{debug, info, warn};

use super::now_ms;
use super::shard::{Partition, Shard};
use crate::replication::wire::{self, FollowedPartition};

/// Largest response frame accepted.
const RESPONSE_FRAME_BYTES_MAX: usize = 64 << 20;
/// Pause after a failed connection or request (replica.fetch.backoff.ms).
const BACKOFF: Duration = Duration::from_millis(200);
/// How long connecting or one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs this shard's fetcher from `leader` until nothing here follows it.
pub(crate) async fn run(shard: Rc<Shard>, leader: i32) {
    info!(leader, shard = shard.id, "replica fetcher started");
    let mut connection: Option<TcpStream> = None;
    let mut correlation_id = 0_i32;
    while !shard.shutting_down.get() {
        let followed = shard.partitions_following(leader);
        if followed.is_empty() {
            break;
        }
        let address = shard
            .catalog()
            .layout()
            .and_then(|layout| layout.brokers.get(&leader).cloned());
        let Some(address) = address else {
            // The leader is fenced or unknown: new metadata will name another.
            glommio::timer::sleep(BACKOFF).await;
            continue;
        };
        if connection.is_none() {
            let target = format!("{}:{}", address.host, address.port);
            let connected = futures_lite::future::or(
                async { TcpStream::connect(target.as_str()).await.ok() },
                async {
                    glommio::timer::sleep(EXCHANGE_TIMEOUT).await;
                    None
                },
            )
            .await;
            match connected {
                Some(stream) => {
                    let _ = stream.set_nodelay(true);
                    connection = Some(stream);
                }
                None => {
                    debug!(leader, %target, "cannot reach the leader");
                    glommio::timer::sleep(BACKOFF).await;
                    continue;
                }
            }
        }
        let request = fetch_request(&shard, &followed).await;
        let Some(request) = request else {
            // Nothing to fetch now (a poisoned log, or a role changing).
            glommio::timer::sleep(BACKOFF).await;
            continue;
        };
        correlation_id = correlation_id.wrapping_add(1);
        let stream = connection.as_mut().expect("connected above");
        let exchanged = futures_lite::future::or(
            async {
                Some(
                    exchange::<_, FetchResponse>(
                        stream,
                        ApiKey::Fetch,
                        wire::FETCH_VERSION,
                        correlation_id,
                        &request,
                    )
                    .await,
                )
            },
            async {
                glommio::timer::sleep(EXCHANGE_TIMEOUT).await;
                None
            },
        )
        .await;
        let response = match exchanged {
            Some(Ok(response)) => response,
            Some(Err(error)) => {
                debug!(leader, %error, "fetch from the leader failed");
                connection = None;
                glommio::timer::sleep(BACKOFF).await;
                continue;
            }
            None => {
                connection = None;
                continue;
            }
        };
        if response.error_code != 0 {
            warn!(
                leader,
                code = response.error_code,
                "the leader refused the fetch"
            );
            glommio::timer::sleep(BACKOFF).await;
            continue;
        }
        let mut back_off = false;
        let mut out_of_range = Vec::new();
        for (followed_partition, answer) in wire::fetched_partitions(response) {
            let partition = followed.iter().find(|partition| {
                partition.replica.topic() == followed_partition.topic
                    && partition.replica.index() == followed_partition.index
            });
            let Some(partition) = partition else {
                continue;
            };
            if answer.error_code == ResponseError::OffsetOutOfRange.code() {
                out_of_range.push(Rc::clone(partition));
                continue;
            }
            let replica = &partition.replica;
            // A truncation is logged by the replica itself.
            if let Err(error) = replica.take_fetched(leader, answer, now_ms()).await {
                warn!(topic = %replica.topic(), partition = replica.index(), leader, %error, "replication from the leader stalled");
                back_off = true;
            }
        }
        if !out_of_range.is_empty() {
            let stream = connection.as_mut().expect("connected above");
            let recovered = futures_lite::future::or(
                async {
                    Some(
                        recover_out_of_range(
                            &shard,
                            stream,
                            &mut correlation_id,
                            leader,
                            &out_of_range,
                        )
                        .await,
                    )
                },
                async {
                    glommio::timer::sleep(EXCHANGE_TIMEOUT).await;
                    None
                },
            )
            .await;
            if !matches!(recovered, Some(Ok(()))) {
                warn!(leader, error = ?recovered, "cannot recover out-of-range partitions");
                connection = None;
                back_off = true;
            }
        }
        if back_off {
            glommio::timer::sleep(BACKOFF).await;
        }
    }
    shard.fetcher_stopped(leader);
    info!(leader, shard = shard.id, "replica fetcher stopped");
}

/// The Fetch for every partition in `followed` that still follows, each from its log end;
/// `None` when none does.
async fn fetch_request(shard: &Shard, followed: &[Rc<Partition>]) -> Option<FetchRequest> {
    let mut partitions = Vec::new();
    for partition in followed {
        if let Some(from) = partition.replica.fetch_from().await {
            partitions.push((followed_partition(partition), from));
        }
    }
    (!partitions.is_empty()).then(|| wire::fetch_request(shard.config.node_id, &partitions))
}

fn followed_partition(partition: &Partition) -> FollowedPartition {
    FollowedPartition {
        topic: partition.replica.topic().to_string(),
        index: partition.replica.index(),
    }
}

/// Partitions whose fetch offset the leader refused as out of range: asks the leader where its
/// log starts and ends, and cuts, empties or keeps each local log as
/// [`crate::replication::PartitionFollower::out_of_range`] decides.
async fn recover_out_of_range(
    shard: &Shard,
    stream: &mut TcpStream,
    correlation_id: &mut i32,
    leader: i32,
    partitions: &[Rc<Partition>],
) -> Result<(), String> {
    let asked: Vec<(FollowedPartition, i32)> = partitions
        .iter()
        .map(|partition| {
            (
                followed_partition(partition),
                partition.replica.leader_epoch(),
            )
        })
        .collect();
    let mut ends = Vec::new();
    for timestamp in [wire::EARLIEST, wire::LATEST] {
        *correlation_id = correlation_id.wrapping_add(1);
        let request = wire::list_offsets_request(shard.config.node_id, &asked, timestamp);
        let response: ListOffsetsResponse = exchange(
            stream,
            ApiKey::ListOffsets,
            wire::LIST_OFFSETS_VERSION,
            *correlation_id,
            &request,
        )
        .await?;
        ends.push(response);
    }
    for (partition, (followed, _)) in partitions.iter().zip(&asked) {
        let replica = &partition.replica;
        let (Some(leader_start), Some(leader_end)) = (
            wire::listed_offset(&ends[0], followed),
            wire::listed_offset(&ends[1], followed),
        ) else {
            debug!(topic = %replica.topic(), partition = replica.index(), "the leader did not say where its log starts and ends");
            continue;
        };
        let done = replica
            .recover_out_of_range(leader, leader_start, leader_end, now_ms())
            .await
            .map_err(|error| error.to_string())?;
        if let Some(action) = done {
            info!(topic = %replica.topic(), partition = replica.index(), leader, leader_start, leader_end, ?action, "fetch offset out of the leader's range");
        }
    }
    Ok(())
}

/// Sends one request and reads its response.
/// Sends one request over `stream` and reads its response (another broker's Kafka port).
///
/// # Errors
/// A sentence when the exchange fails or the response does not decode.
pub(super) async fn exchange<Request: Encodable, Response: Decodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Request,
) -> Result<Response, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("spate-replica-fetcher")));
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    header
        .encode(&mut frame, api_key.request_header_version(version))
        .map_err(|error| error.to_string())?;
    request
        .encode(&mut frame, version)
        .map_err(|error| error.to_string())?;
    let size = u32::try_from(frame.len() - 4).map_err(|_| "request too large".to_string())?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    stream
        .write_all(&frame)
        .await
        .map_err(|error| error.to_string())?;
    let mut length = [0_u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|error| error.to_string())?;
    let length = u32::from_be_bytes(length) as usize;
    if length > RESPONSE_FRAME_BYTES_MAX {
        return Err(format!("a {length}-byte response"));
    }
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
        .map_err(|error| error.to_string())?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "response {} to request {correlation_id}",
            header.correlation_id
        ));
    }
    Response::decode(&mut body, version).map_err(|error| error.to_string())
}
