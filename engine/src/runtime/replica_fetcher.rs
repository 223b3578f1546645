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
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tracing::{debug, info, warn};

use super::now_ms;
use super::shard::{Partition, Shard};
use crate::replication::{EpochEnd, OutOfRangeAction};
use crate::storage::StorageError;

/// The Fetch version followers send: topic names, last fetched epoch and diverging epochs.
const FETCH_VERSION: i16 = 12;
/// The ListOffsets version followers send when their fetch offset is out of range.
const LIST_OFFSETS_VERSION: i16 = 4;
/// How long the leader may hold a follower's Fetch for new data (replica.fetch.wait.max.ms).
const FETCH_WAIT_MAX_MS: i32 = 500;
/// Bytes per partition per Fetch (replica.fetch.max.bytes).
const FETCH_PARTITION_MAX_BYTES: i32 = 1 << 20;
/// Bytes per Fetch (replica.fetch.response.max.bytes).
const FETCH_MAX_BYTES: i32 = 10 << 20;
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
        correlation_id = correlation_id.wrapping_add(1);
        let stream = connection.as_mut().expect("connected above");
        let exchanged = futures_lite::future::or(
            async {
                Some(
                    exchange::<_, FetchResponse>(
                        stream,
                        ApiKey::Fetch,
                        FETCH_VERSION,
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
        for topic in response.responses {
            for answer in topic.partitions {
                let partition = followed.iter().find(|partition| {
                    partition.topic == topic.topic.0.as_str()
                        && partition.index == answer.partition_index
                });
                let Some(partition) = partition else {
                    continue;
                };
                if answer.error_code == ResponseError::OffsetOutOfRange.code() {
                    out_of_range.push(Rc::clone(partition));
                } else if let Err(error) = take_answer(partition, leader, answer).await {
                    warn!(topic = %partition.topic, partition = partition.index, leader, %error, "replication from the leader stalled");
                    back_off = true;
                }
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

/// The Fetch for every partition in `followed`, each from its log end.
async fn fetch_request(shard: &Shard, followed: &[Rc<Partition>]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for partition in followed {
        let (log_end_offset, log_start_offset, last_epoch) = partition
            .log
            .with_log(async |log| {
                (
                    log.log_end_offset(),
                    log.log_start_offset(),
                    log.leader_epochs().latest_epoch(),
                )
            })
            .await;
        let fetch = FetchPartition::default()
            .with_partition(partition.index)
            .with_current_leader_epoch(partition.leader_epoch.get())
            .with_fetch_offset(log_end_offset)
            .with_last_fetched_epoch(last_epoch.unwrap_or(-1))
            .with_log_start_offset(log_start_offset)
            .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES);
        match topics
            .iter_mut()
            .find(|topic| topic.topic.0.as_str() == partition.topic)
        {
            Some(topic) => topic.partitions.push(fetch),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(partition.topic.clone())))
                    .with_partitions(vec![fetch]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(shard.config.node_id))
        .with_max_wait_ms(FETCH_WAIT_MAX_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// One partition's answer: append, truncate or wait.
async fn take_answer(
    partition: &Rc<Partition>,
    leader: i32,
    answer: kafka_protocol::messages::fetch_response::PartitionData,
) -> Result<(), String> {
    // The partition may have changed role while the fetch was out. Checked again with the
    // log held before anything is written: the role changes (take_role) while this awaits.
    if !follows(partition, leader) {
        return Ok(());
    }
    match ResponseError::try_from_code(answer.error_code) {
        None => {}
        Some(
            ResponseError::NotLeaderOrFollower
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch,
        ) => {
            // Newer metadata is on its way, here or at the leader.
            return Err("waiting for newer metadata".into());
        }
        Some(error) => return Err(format!("{error:?}")),
    }
    let now = now_ms();
    if answer.diverging_epoch.epoch >= 0 {
        let diverging = EpochEnd {
            epoch: answer.diverging_epoch.epoch,
            end_offset: answer.diverging_epoch.end_offset,
        };
        let (epochs, log_end_offset) = partition
            .log
            .with_log(async |log| (log.leader_epochs().clone(), log.log_end_offset()))
            .await;
        let offset = {
            let mut follower = partition.replication_follower.borrow_mut();
            let Some(follower) = follower.as_mut() else {
                return Ok(());
            };
            follower.diverged(diverging, &epochs, log_end_offset)
        };
        let truncated = partition
            .log
            .with_log(async |log| {
                if !follows(partition, leader) {
                    return Ok(None);
                }
                log.truncate_to(offset, now).await.map(Some)
            })
            .await
            .map_err(|error| error.to_string())?;
        if let Some(truncated) = truncated {
            info!(topic = %partition.topic, partition = partition.index, leader, offset = truncated, "truncated to the leader's log");
            cap_high_watermark(partition, truncated);
        }
        return Ok(());
    }
    let records: Bytes = answer.records.unwrap_or_default();
    let leader_log_start_offset = answer.log_start_offset;
    let log_end_offset = if records.is_empty() {
        partition
            .log
            .with_log(async |log| Some(log.log_end_offset()))
            .await
    } else {
        partition
            .log
            .with_log(async |log| {
                if !follows(partition, leader) {
                    return Ok(None);
                }
                // The leader's log start can fall inside a batch (DeleteRecords), so the first
                // batch an emptied log receives may start below it: the log then starts at
                // that batch, as Kafka's follower does.
                let first = crate::storage::batch::peek_base_offset_and_size(&records)
                    .map(|(base_offset, _)| base_offset);
                if let Ok(first) = first {
                    let empty = log.log_start_offset() == log.log_end_offset();
                    if empty && first < log.log_end_offset() && first >= 0 {
                        log.reset_to(first, now).await?;
                    }
                }
                log.append_replicated(BytesMut::from(records), now).await?;
                // Records the leader deleted (DeleteRecords, retention) go here too.
                let leader_log_start = leader_log_start_offset.min(log.log_end_offset());
                if leader_log_start > log.log_start_offset() {
                    log.delete_records(leader_log_start).await?;
                }
                log.flush(now).await?;
                Ok::<_, StorageError>(Some(log.log_end_offset()))
            })
            .await
            .map_err(|error| error.to_string())?
    };
    let Some(log_end_offset) = log_end_offset else {
        return Ok(());
    };
    let high_watermark = partition
        .replication_follower
        .borrow_mut()
        .as_mut()
        .map(|follower| follower.records_appended(log_end_offset, answer.high_watermark));
    if let Some(high_watermark) = high_watermark {
        partition.high_watermark.set(high_watermark);
    }
    Ok(())
}

/// Whether `partition` still follows `leader` (the replication follower is cleared the
/// moment the partition is to lead, before its new epoch opens).
fn follows(partition: &Partition, leader: i32) -> bool {
    partition
        .replication_follower
        .borrow()
        .as_ref()
        .is_some_and(|follower| follower.leader() == leader)
}

fn cap_high_watermark(partition: &Partition, log_end_offset: i64) {
    let high_watermark = partition.high_watermark.get().min(log_end_offset);
    partition.high_watermark.set(high_watermark);
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
    let mut ends = Vec::new();
    for timestamp in [-2, -1] {
        *correlation_id = correlation_id.wrapping_add(1);
        let request = list_offsets_request(shard, partitions, timestamp);
        let response: ListOffsetsResponse = exchange(
            stream,
            ApiKey::ListOffsets,
            LIST_OFFSETS_VERSION,
            *correlation_id,
            &request,
        )
        .await?;
        ends.push(response);
    }
    let offset_of = |response: &ListOffsetsResponse, partition: &Partition| {
        response
            .topics
            .iter()
            .filter(|topic| topic.name.0.as_str() == partition.topic)
            .flat_map(|topic| &topic.partitions)
            .find(|answer| answer.partition_index == partition.index && answer.error_code == 0)
            .map(|answer| answer.offset)
    };
    for partition in partitions {
        let (Some(leader_start), Some(leader_end)) = (
            offset_of(&ends[0], partition),
            offset_of(&ends[1], partition),
        ) else {
            debug!(topic = %partition.topic, partition = partition.index, "the leader did not say where its log starts and ends");
            continue;
        };
        let now = now_ms();
        let done = partition
            .log
            .with_log(async |log| {
                if !follows(partition, leader) {
                    return Ok(None);
                }
                let action = partition
                    .replication_follower
                    .borrow_mut()
                    .as_mut()
                    .map(|follower| {
                        follower.out_of_range(log.log_end_offset(), leader_start, leader_end)
                    });
                match action {
                    Some(OutOfRangeAction::TruncateTo(offset)) => {
                        log.truncate_to(offset, now).await?;
                        Ok(action)
                    }
                    Some(OutOfRangeAction::StartAt(offset)) => {
                        log.reset_to(offset, now).await?;
                        Ok(action)
                    }
                    Some(OutOfRangeAction::Retry) | None => Ok(None),
                }
            })
            .await
            .map_err(|error: StorageError| error.to_string())?;
        if let Some(action) = done {
            info!(topic = %partition.topic, partition = partition.index, leader, leader_start, leader_end, ?action, "fetch offset out of the leader's range");
            let high_watermark = partition
                .replication_follower
                .borrow()
                .as_ref()
                .map(|follower| follower.high_watermark());
            if let Some(high_watermark) = high_watermark {
                partition.high_watermark.set(high_watermark);
            }
        }
    }
    Ok(())
}

/// ListOffsets at `timestamp` (-2 earliest, -1 latest: the log end, for a replica) for every
/// partition in `partitions`.
fn list_offsets_request(
    shard: &Shard,
    partitions: &[Rc<Partition>],
    timestamp: i64,
) -> ListOffsetsRequest {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for partition in partitions {
        let wanted = ListOffsetsPartition::default()
            .with_partition_index(partition.index)
            .with_current_leader_epoch(partition.leader_epoch.get())
            .with_timestamp(timestamp);
        match topics
            .iter_mut()
            .find(|topic| topic.name.0.as_str() == partition.topic)
        {
            Some(topic) => topic.partitions.push(wanted),
            None => topics.push(
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(partition.topic.clone())))
                    .with_partitions(vec![wanted]),
            ),
        }
    }
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(shard.config.node_id))
        .with_topics(topics)
}

/// Sends one request and reads its response.
async fn exchange<Request: Encodable, Response: Decodable>(
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
