//! The Kafka requests a follower sends its leader, and what it takes from the answers: one
//! Fetch (v12: topic names, last fetched epoch, diverging epochs) for every partition it
//! follows from that leader, and, when the leader says a fetch offset is out of range,
//! ListOffsets with its replica id for the leader's log start and end. Both drivers build and
//! read them here, so the simulation's followers speak to its leaders exactly as brokers do.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::epoch_cache::EpochEnd;
use super::replica::{FetchFrom, FetchedPartition};

/// The Fetch version followers send: topic names, last fetched epoch and diverging epochs.
pub const FETCH_VERSION: i16 = 12;
/// The ListOffsets version followers send when their fetch offset is out of range.
pub const LIST_OFFSETS_VERSION: i16 = 4;
/// How long the leader may hold a follower's Fetch for new data (replica.fetch.wait.max.ms).
pub const FETCH_WAIT_MAX_MS: i32 = 500;
/// Bytes per partition per Fetch (replica.fetch.max.bytes).
pub const FETCH_PARTITION_MAX_BYTES: i32 = 1 << 20;
/// Bytes per Fetch (replica.fetch.response.max.bytes).
pub const FETCH_MAX_BYTES: i32 = 10 << 20;
/// ListOffsets' timestamp for the log start.
pub const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the log end (for a replica; the high watermark for consumers).
pub const LATEST: i64 = -1;

/// A partition a follower fetches, by topic name and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedPartition {
    /// The topic.
    pub topic: String,
    /// The partition index.
    pub index: i32,
}

/// The Fetch `node_id` sends its leader for `partitions`, each from where its replica says.
pub fn fetch_request(node_id: i32, partitions: &[(FollowedPartition, FetchFrom)]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (partition, from) in partitions {
        let fetch = FetchPartition::default()
            .with_partition(partition.index)
            .with_current_leader_epoch(from.current_leader_epoch)
            .with_fetch_offset(from.fetch_offset)
            .with_last_fetched_epoch(from.last_fetched_epoch)
            .with_log_start_offset(from.log_start_offset)
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
        .with_replica_id(BrokerId(node_id))
        .with_max_wait_ms(FETCH_WAIT_MAX_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// The answers of a Fetch response, per partition, in the response's order.
pub fn fetched_partitions(response: FetchResponse) -> Vec<(FollowedPartition, FetchedPartition)> {
    let mut answers = Vec::new();
    for topic in response.responses {
        let name = topic.topic.0.to_string();
        for answer in topic.partitions {
            let partition = FollowedPartition {
                topic: name.clone(),
                index: answer.partition_index,
            };
            answers.push((partition, fetched_partition(answer)));
        }
    }
    answers
}

/// One partition's answer as a follower takes it.
pub fn fetched_partition(answer: PartitionData) -> FetchedPartition {
    FetchedPartition {
        error_code: answer.error_code,
        diverging: (answer.diverging_epoch.epoch >= 0).then_some(EpochEnd {
            epoch: answer.diverging_epoch.epoch,
            end_offset: answer.diverging_epoch.end_offset,
        }),
        records: answer.records.unwrap_or_default(),
        log_start_offset: answer.log_start_offset,
        high_watermark: answer.high_watermark,
    }
}

/// ListOffsets at `timestamp` ([`EARLIEST`] or [`LATEST`]) for every partition, each with
/// the leader epoch its replica follows, asked by replica `node_id`.
pub fn list_offsets_request(
    node_id: i32,
    partitions: &[(FollowedPartition, i32)],
    timestamp: i64,
) -> ListOffsetsRequest {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for (partition, leader_epoch) in partitions {
        let wanted = ListOffsetsPartition::default()
            .with_partition_index(partition.index)
            .with_current_leader_epoch(*leader_epoch)
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
        .with_replica_id(BrokerId(node_id))
        .with_topics(topics)
}

/// The offset a ListOffsets response gives `partition`, if it gave one without error.
pub fn listed_offset(response: &ListOffsetsResponse, partition: &FollowedPartition) -> Option<i64> {
    response
        .topics
        .iter()
        .filter(|topic| topic.name.0.as_str() == partition.topic)
        .flat_map(|topic| &topic.partitions)
        .find(|answer| answer.partition_index == partition.index && answer.error_code == 0)
        .map(|answer| answer.offset)
}
