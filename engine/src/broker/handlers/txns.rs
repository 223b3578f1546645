//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn and EndTxn, answered by the
//! transactional id's coordinator (`crate::txn`, run by `runtime::txns`); TxnOffsetCommit,
//! answered by the group's coordinator; and WriteTxnMarkers, which transaction coordinators
//! send the leaders of the partitions a transaction wrote to.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::*;

use super::count_error;
use crate::group::calls::{MemberRef, TxnCommitRequest};
use crate::group::{offsets_partition_for, Call, Reply, OFFSETS_TOPIC};
use crate::runtime::shard::Shard;
use crate::storage::Marker;
use crate::txn::{TxnCall, TxnReply};

fn error_code(shard: &Shard, error: Option<ResponseError>) -> i16 {
    match error {
        Some(error) => {
            count_error(shard, error.code());
            error.code()
        }
        None => 0,
    }
}

fn done(reply: TxnReply) -> Option<ResponseError> {
    match reply {
        TxnReply::Done(error) => error,
        TxnReply::ProducerId { error, .. } => error.or(Some(ResponseError::UnknownServerError)),
    }
}

/// AddPartitionsToTxn (v0-3, a client's): every partition gets the coordinator's answer; when
/// one is unknown nothing is added, it gets UNKNOWN_TOPIC_OR_PARTITION and the others
/// OPERATION_NOT_ATTEMPTED, as Kafka answers.
pub(super) async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version >= 4 {
        return add_partitions_batched(shard, request).await;
    }
    let catalog = shard.catalog();
    let mut partitions = Vec::new();
    let mut unknown = Vec::new();
    for topic in &request.v3_and_below_topics {
        let name = topic.name.0.to_string();
        let count = catalog.topic(&name).map_or(0, |entry| entry.partitions);
        for &index in &topic.partitions {
            if index >= 0 && index < count {
                partitions.push((name.clone(), index));
            } else {
                unknown.push((name.clone(), index));
            }
        }
    }
    let outcome = |topic: &str, index: i32| -> Option<ResponseError> {
        if unknown
            .iter()
            .any(|(name, unknown_index)| name == topic && *unknown_index == index)
        {
            Some(ResponseError::UnknownTopicOrPartition)
        } else {
            Some(ResponseError::OperationNotAttempted)
        }
    };
    let answer = if unknown.is_empty() {
        let reply = shard
            .txn_call(
                &request.v3_and_below_transactional_id.0,
                TxnCall::AddPartitions {
                    transactional_id: request.v3_and_below_transactional_id.0.to_string(),
                    producer_id: request.v3_and_below_producer_id.0,
                    producer_epoch: request.v3_and_below_producer_epoch,
                    partitions,
                },
            )
            .await;
        Some(done(reply))
    } else {
        None
    };
    let results = request
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(
                    topic
                        .partitions
                        .iter()
                        .map(|&index| {
                            let error = match answer {
                                Some(error) => error,
                                None => outcome(&topic.name.0, index),
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(index)
                                .with_partition_error_code(error_code(shard, error))
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

/// AddPartitionsToTxn v4+ (a broker's): several transactions at once, each either added
/// or, with `verify_only`, checked (KIP-890 part 1: a partition leader asks before appending
/// a transactional batch whether its partition is in the producer's ongoing transaction).
async fn add_partitions_batched(
    shard: &Rc<Shard>,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in request.transactions {
        let partitions: Vec<(String, i32)> = transaction
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(|&index| (topic.name.0.to_string(), index))
            })
            .collect();
        let transactional_id = transaction.transactional_id.0.to_string();
        let call = if transaction.verify_only {
            TxnCall::Verify {
                transactional_id: transactional_id.clone(),
                producer_id: transaction.producer_id.0,
                producer_epoch: transaction.producer_epoch,
                partitions,
            }
        } else {
            TxnCall::AddPartitions {
                transactional_id: transactional_id.clone(),
                producer_id: transaction.producer_id.0,
                producer_epoch: transaction.producer_epoch,
                partitions,
            }
        };
        let error = done(shard.txn_call(&transactional_id, call).await);
        let topic_results = transaction
            .topics
            .iter()
            .map(|topic| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_results_by_partition(
                        topic
                            .partitions
                            .iter()
                            .map(|&index| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(index)
                                    .with_partition_error_code(error_code(shard, error))
                            })
                            .collect(),
                    )
            })
            .collect();
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(transaction.transactional_id)
                .with_topic_results(topic_results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// AddOffsetsToTxn: adds the group's `__consumer_offsets` partition to the transaction, so
/// that its markers end the offsets TxnOffsetCommit writes there.
pub(super) async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let error = match shard.ensure_offsets_topic().await {
        Err(_) => Some(ResponseError::CoordinatorNotAvailable),
        Ok(()) => match shard.catalog().topic(OFFSETS_TOPIC).cloned() {
            None => Some(ResponseError::CoordinatorNotAvailable),
            Some(topic) => {
                let partition = offsets_partition_for(&request.group_id.0, topic.partitions);
                let reply = shard
                    .txn_call(
                        &request.transactional_id.0,
                        TxnCall::AddPartitions {
                            transactional_id: request.transactional_id.0.to_string(),
                            producer_id: request.producer_id.0,
                            producer_epoch: request.producer_epoch,
                            partitions: vec![(OFFSETS_TOPIC.to_owned(), partition)],
                        },
                    )
                    .await;
                done(reply)
            }
        },
    };
    AddOffsetsToTxnResponse::default().with_error_code(error_code(shard, error))
}

/// EndTxn: commits or aborts the transaction (answered once its outcome is stored; the
/// markers follow). From version 5 on (KIP-890's transaction version 2) the transaction ends
/// at the producer's next epoch, which the answer carries (with a fresh producer id when the
/// epoch is exhausted).
pub(super) async fn end_txn(
    shard: &Rc<Shard>,
    request: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let bump_epoch = version >= 5;
    let fresh_producer_id = if bump_epoch && request.producer_epoch >= i16::MAX - 1 {
        match shard.allocate_producer_id().await {
            Ok(producer_id) => Some(producer_id),
            Err(error) => {
                return EndTxnResponse::default()
                    .with_error_code(error_code(shard, Some(error.code)))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    } else {
        None
    };
    let reply = shard
        .txn_call(
            &request.transactional_id.0,
            TxnCall::EndTxn {
                transactional_id: request.transactional_id.0.to_string(),
                producer_id: request.producer_id.0,
                producer_epoch: request.producer_epoch,
                commit: request.committed,
                bump_epoch,
                fresh_producer_id,
            },
        )
        .await;
    match reply {
        TxnReply::ProducerId {
            error,
            producer_id,
            producer_epoch,
        } if bump_epoch => EndTxnResponse::default()
            .with_error_code(error_code(shard, error))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
        reply => EndTxnResponse::default().with_error_code(error_code(shard, done(reply))),
    }
}

/// WriteTxnMarkers (from a transaction coordinator): appends each marker to each of its
/// partitions this broker leads.
pub(super) async fn write_txn_markers(
    shard: &Rc<Shard>,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let appended = Marker {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            coordinator_epoch: marker.coordinator_epoch,
            commit: marker.transaction_result,
        };
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for index in topic.partition_indexes {
                let written = shard.write_marker(&topic.name.0, index, appended).await;
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(error_code(shard, written.err().map(|error| error.code))),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

/// TxnOffsetCommit: the group's coordinator writes the offsets in the producer's transaction;
/// they become the group's committed offsets when its commit marker is written. Unknown
/// partitions get UNKNOWN_TOPIC_OR_PARTITION, as for OffsetCommit.
pub(super) async fn txn_offset_commit(
    shard: &Rc<Shard>,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    use kafka_protocol::messages::txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
    };
    let group_id = request.group_id.0.to_string();
    let catalog = shard.catalog();
    // (topic, partition, error when refused before reaching the coordinator)
    let mut slots: Vec<(TopicName, i32, Option<ResponseError>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let known = catalog.topic(topic.name.0.as_str());
        for partition in &topic.partitions {
            let index = partition.partition_index;
            if known.is_none_or(|known| index < 0 || index >= known.partitions) {
                slots.push((
                    topic.name.clone(),
                    index,
                    Some(ResponseError::UnknownTopicOrPartition),
                ));
                continue;
            }
            slots.push((topic.name.clone(), index, None));
            offsets.push((
                topic.name.0.to_string(),
                index,
                partition.committed_offset,
                partition.committed_leader_epoch,
                partition
                    .committed_metadata
                    .as_ref()
                    .map(|text| text.to_string()),
            ));
        }
    }
    let mut results = Vec::new().into_iter();
    if !offsets.is_empty() {
        let call = Call::TxnCommit(TxnCommitRequest {
            member: MemberRef {
                group_id: group_id.clone(),
                member_id: request.member_id.to_string(),
                group_instance_id: request.group_instance_id.as_ref().map(|id| id.to_string()),
                generation_id: request.generation_id,
            },
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
            offsets,
        });
        let Reply::Commit(errors) = shard.group_call(&group_id, call).await else {
            unreachable!("TxnOffsetCommit gets a Commit reply")
        };
        results = errors.into_iter();
    }
    let mut response = TxnOffsetCommitResponse::default();
    for (name, index, refused) in slots {
        let error = refused.or_else(|| results.next().flatten());
        let partition = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(index)
            .with_error_code(error_code(shard, error));
        match response
            .topics
            .last_mut()
            .filter(|topic| topic.name == name)
        {
            Some(topic) => topic.partitions.push(partition),
            None => response.topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(vec![partition]),
            ),
        }
    }
    response
}
