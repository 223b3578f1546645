//! DescribeQuorum (KIP-595): this node's view of the metadata quorum, as
//! `kafka-metadata-quorum.sh describe --status` asks for it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{PartitionData, ReplicaState, TopicData};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};

use super::str_bytes;
use crate::runtime::shard::Shard;

/// The metadata log's topic name, as Kafka names it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

pub(super) fn describe_quorum(
    shard: &Shard,
    request: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let status = shard
        .process
        .quorum
        .lock()
        .ok()
        .and_then(|status| status.clone());
    let mut response = DescribeQuorumResponse::default();
    let asked_for_metadata_log = request.topics.iter().any(|topic| {
        topic.topic_name.as_str() == METADATA_TOPIC
            && topic
                .partitions
                .iter()
                .any(|partition| partition.partition_index == 0)
    });
    if !asked_for_metadata_log {
        response.error_code = ResponseError::UnknownTopicOrPartition.code();
        response.error_message = Some(str_bytes(format!(
            "DescribeQuorum describes {METADATA_TOPIC} partition 0"
        )));
        return response;
    }
    let Some(status) = status else {
        response.error_code = ResponseError::InvalidRequest.code();
        response.error_message = Some(str_bytes(
            "this broker runs without a metadata quorum (no --controller-quorum)",
        ));
        return response;
    };
    let voters = status
        .voters
        .iter()
        .map(|&voter| {
            ReplicaState::default()
                .with_replica_id(BrokerId(i32::try_from(voter).unwrap_or(i32::MAX)))
                .with_log_end_offset(-1)
                .with_last_fetch_timestamp(-1)
                .with_last_caught_up_timestamp(-1)
        })
        .collect();
    let leader_id = status
        .leader
        .and_then(|leader| i32::try_from(leader).ok())
        .unwrap_or(-1);
    response.topics = vec![TopicData::default()
        .with_topic_name(TopicName(str_bytes(METADATA_TOPIC)))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_leader_id(BrokerId(leader_id))
            .with_leader_epoch(i32::try_from(status.term).unwrap_or(i32::MAX))
            .with_high_watermark(i64::try_from(status.applied_index).unwrap_or(i64::MAX))
            .with_current_voters(voters)])];
    response
}
