//! Produce.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{counted, str_bytes};
use crate::broker::errors::KafkaError;
use crate::broker::names::is_internal;
use crate::runtime::shard::{
    AcksAll, PartitionOp, PartitionOutcome, PendingCall, Shard, TxnVerification,
};
use crate::storage::batch::BatchHeader;

/// A partition's append, started, with the bytes and records it carries.
struct PendingPartition {
    topic_index: usize,
    index: i32,
    traffic: (u64, u64),
    call: Result<PendingCall, KafkaError>,
}

/// In-sync replicas of every partition of a single-node broker: the leader alone.
const IN_SYNC_REPLICAS: usize = 1;

/// Bytes of records a Produce request carries.
pub(super) fn records_bytes(request: &ProduceRequest) -> usize {
    request
        .topic_data
        .iter()
        .flat_map(|topic| &topic.partition_data)
        .filter_map(|partition| partition.records.as_ref())
        .map(|records| records.len())
        .sum()
}

/// Appends each partition's batches on the shard that owns it, all partitions at once, and
/// answers when every append is done. `None` for acks=0, which gets no response.
pub(super) async fn produce(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|id| id.to_string());
    let catalog = shard.catalog();
    let mut pending: Vec<PendingPartition> = Vec::new();
    let mut responses = Vec::new();
    for (topic_index, topic_data) in request.topic_data.into_iter().enumerate() {
        let name = topic_data.name.0.to_string();
        let topic = catalog.topic(&name);
        let min_insync_replicas = topic.map_or(1, |topic| catalog.min_insync_replicas(topic));
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let mut traffic = (0, 0);
            let verify = transactional_need(
                transactional_id.as_deref(),
                &name,
                partition_data.records.as_deref(),
            );
            let call = if !matches!(acks, -1..=1) {
                Err(KafkaError::new(ResponseError::InvalidRequiredAcks))
            } else if let Err(refusal) = verify {
                Err(refusal)
            } else if is_internal(&name) {
                Err(KafkaError::with_message(
                    ResponseError::InvalidTopicException,
                    format!("cannot produce to internal topic {name}"),
                ))
            } else {
                match (topic, partition_data.records) {
                    (Some(topic), Some(_))
                        if acks == -1
                            && catalog.layout().is_none()
                            && index >= 0
                            && index < topic.partitions
                            && min_insync_replicas > IN_SYNC_REPLICAS =>
                    {
                        Err(KafkaError::with_message(
                            ResponseError::NotEnoughReplicas,
                            format!(
                                "min.insync.replicas of {name} is {min_insync_replicas}; \
                                 the partition has {IN_SYNC_REPLICAS} in-sync replica"
                            ),
                        ))
                    }
                    (Some(topic), Some(records)) if index >= 0 && index < topic.partitions => {
                        traffic = (records.len() as u64, count_records(&records));
                        // In a cluster the leader checks and waits for its in-sync replicas.
                        let acks_all =
                            (acks == -1 && catalog.layout().is_some()).then(|| AcksAll {
                                min_insync_replicas,
                                timeout_ms: u64::try_from(request.timeout_ms).unwrap_or(0),
                            });
                        Ok(shard.start_partition_call(
                            topic.id,
                            index,
                            PartitionOp::Produce {
                                records,
                                acks_all,
                                verify: verify.ok().flatten(),
                                leader_epoch: None,
                            },
                        ))
                    }
                    (Some(_), None) => Err(KafkaError::with_message(
                        ResponseError::CorruptMessage,
                        "no records",
                    )),
                    _ => Err(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
                }
            };
            pending.push(PendingPartition {
                topic_index,
                index,
                traffic,
                call,
            });
        }
        responses.push(TopicProduceResponse::default().with_name(topic_data.name));
    }
    for PendingPartition {
        topic_index,
        index,
        traffic: (bytes_in, records_in),
        call,
    } in pending
    {
        let result = match call {
            Ok(call) => call.result().await,
            Err(error) => Err(error),
        };
        let mut partition = PartitionProduceResponse::default().with_index(index);
        match result {
            Ok(PartitionOutcome::Produced {
                base_offset,
                log_append_time_ms,
                log_start_offset,
            }) => {
                let topic = responses[topic_index].name.0.to_string();
                let mut metrics = shard.metrics.borrow_mut();
                let stats = metrics.topic(&topic);
                stats.bytes_in += bytes_in;
                stats.records_in += records_in;
                partition.base_offset = base_offset;
                partition.log_append_time_ms = log_append_time_ms;
                if version >= 5 {
                    partition.log_start_offset = log_start_offset;
                }
            }
            Ok(other) => unreachable!("produce gave {other:?}"),
            Err(error) => {
                partition.error_code = counted(shard, &error);
                partition.base_offset = -1;
                partition.log_append_time_ms = -1;
                partition.log_start_offset = -1;
                if version >= 8 {
                    partition.error_message = error.message.map(str_bytes);
                }
            }
        }
        responses[topic_index].partition_responses.push(partition);
    }
    if acks == 0 {
        return None;
    }
    Some(ProduceResponse::default().with_responses(responses))
}

/// Records in whole batches, from their headers; stops at the first unreadable header.
pub(super) fn count_records(mut records: &[u8]) -> u64 {
    let mut count = 0;
    while let Ok(header) = BatchHeader::parse(records) {
        count += u64::try_from(header.records_count).unwrap_or(0);
        let size = header.size_bytes();
        if size > records.len() {
            break;
        }
        records = &records[size..];
    }
    count
}

/// The producer id and epoch of the first transactional batch in `records`, if any (a
/// malformed batch is left to validation).
fn transactional_producer(mut records: &[u8]) -> Option<(i64, i16)> {
    while let Ok(header) = BatchHeader::parse(records) {
        if header.is_transactional() {
            return Some((header.producer_id, header.producer_epoch));
        }
        records = records.get(header.size_bytes()..)?;
    }
    None
}

/// What a partition's records need when they hold a transactional batch: without a
/// transactional id, a refusal (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, as Kafka answers);
/// otherwise the verification with the producer's transaction coordinator (KIP-890) that the
/// partition's owner runs before appending, so that no batch of an ended transaction, or for
/// a partition the transaction never added, can open a transaction no marker will ever end.
/// Worked out for each partition entry of the request, duplicates included.
fn transactional_need(
    transactional_id: Option<&str>,
    topic: &str,
    records: Option<&[u8]>,
) -> Result<Option<TxnVerification>, KafkaError> {
    let Some((producer_id, producer_epoch)) = records.and_then(transactional_producer) else {
        return Ok(None);
    };
    match transactional_id {
        None => Err(KafkaError::with_message(
            ResponseError::TransactionalIdAuthorizationFailed,
            "a transactional batch in a request without a transactional id",
        )),
        Some(transactional_id) => Ok(Some(TxnVerification {
            transactional_id: transactional_id.to_owned(),
            producer_id,
            producer_epoch,
            topic: topic.to_owned(),
        })),
    }
}
