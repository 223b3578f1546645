//! ListOffsets, OffsetForLeaderEpoch and DeleteRecords.

use std::collections::BTreeSet;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::counted;
use crate::broker::errors::KafkaError;
use crate::runtime::shard::{PartitionOp, PartitionOutcome, PendingCall, Shard, LEADER_EPOCH};

/// Starts `op` on a partition of the named topic, or fails with UNKNOWN_TOPIC_OR_PARTITION.
fn start(shard: &Rc<Shard>, topic: &str, partition: i32, op: PartitionOp) -> PendingCall {
    match shard.catalog().topic(topic) {
        Some(found) if partition >= 0 && partition < found.partitions => {
            shard.start_partition_call(found.id, partition, op)
        }
        _ => PendingCall::Failed(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
    }
}

pub(super) async fn list_offsets(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // A follower (replica id set) is answered with the log end as the latest offset.
    let replica = request.replica_id.0 >= 0;
    // READ_COMMITTED (1, v2+): the latest offset is the last stable offset.
    let read_committed = version >= 2 && request.isolation_level == 1;
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut seen = BTreeSet::new();
        let calls: Vec<_> = topic
            .partitions
            .iter()
            .map(|partition| {
                if !seen.insert(partition.partition_index) {
                    return PendingCall::Failed(KafkaError::with_message(
                        ResponseError::InvalidRequest,
                        "partition listed twice",
                    ));
                }
                if partition.timestamp == -3 && version < 7 {
                    return PendingCall::Failed(KafkaError::new(ResponseError::UnsupportedVersion));
                }
                start(
                    shard,
                    &name,
                    partition.partition_index,
                    PartitionOp::ListOffset {
                        timestamp: partition.timestamp,
                        read_committed,
                        current_leader_epoch: partition.current_leader_epoch,
                        replica,
                    },
                )
            })
            .collect();
        let mut partitions = Vec::new();
        for (partition, call) in topic.partitions.iter().zip(calls) {
            let mut result = ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index);
            match call.result().await {
                Ok(PartitionOutcome::Offset { offset, timestamp }) => {
                    result.offset = offset;
                    result.timestamp = timestamp;
                    if version >= 4 {
                        let catalog = shard.catalog();
                        let leader_epoch = catalog
                            .topic(&name)
                            .and_then(|found| {
                                catalog.partition_state(found.id, partition.partition_index)
                            })
                            .map_or(LEADER_EPOCH, |state| state.leader_epoch);
                        result.leader_epoch = if offset >= 0 { leader_epoch } else { -1 };
                    }
                }
                Ok(other) => unreachable!("list offsets gave {other:?}"),
                Err(error) => {
                    result.error_code = counted(shard, &error);
                    result.offset = -1;
                    result.timestamp = -1;
                    if version >= 4 {
                        result.leader_epoch = -1;
                    }
                }
            }
            partitions.push(result);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

pub(super) async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.topic.0.to_string();
        let calls: Vec<_> = topic
            .partitions
            .iter()
            .map(|partition| {
                start(
                    shard,
                    &name,
                    partition.partition,
                    PartitionOp::EndOffsetForEpoch {
                        leader_epoch: partition.leader_epoch,
                        current_leader_epoch: partition.current_leader_epoch,
                    },
                )
            })
            .collect();
        let mut partitions = Vec::new();
        for (partition, call) in topic.partitions.iter().zip(calls) {
            let mut result = EpochEndOffset::default().with_partition(partition.partition);
            match call.result().await {
                Ok(PartitionOutcome::EpochEnd {
                    leader_epoch,
                    end_offset,
                }) => {
                    result.leader_epoch = leader_epoch;
                    result.end_offset = end_offset;
                }
                Ok(other) => unreachable!("offset for leader epoch gave {other:?}"),
                Err(error) => {
                    result.error_code = counted(shard, &error);
                    result.leader_epoch = -1;
                    result.end_offset = -1;
                }
            }
            partitions.push(result);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub(super) async fn delete_records(
    shard: &Rc<Shard>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let calls: Vec<_> = topic
            .partitions
            .iter()
            .map(|partition| {
                start(
                    shard,
                    &name,
                    partition.partition_index,
                    PartitionOp::DeleteRecords {
                        before_offset: partition.offset,
                    },
                )
            })
            .collect();
        let mut partitions = Vec::new();
        for (partition, call) in topic.partitions.iter().zip(calls) {
            let mut result = DeleteRecordsPartitionResult::default()
                .with_partition_index(partition.partition_index);
            match call.result().await {
                Ok(PartitionOutcome::LowWatermark(low_watermark)) => {
                    result.low_watermark = low_watermark
                }
                Ok(other) => unreachable!("delete records gave {other:?}"),
                Err(error) => {
                    result.error_code = counted(shard, &error);
                    result.low_watermark = -1;
                }
            }
            partitions.push(result);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
