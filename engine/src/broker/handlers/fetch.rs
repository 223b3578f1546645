//! Fetch, with long polling.
//!
//! Every partition is read on its owning shard, all at once. When the bytes found are fewer
//! than `min_bytes` and `max_wait_ms` has not passed, the owners are asked to report the next
//! append to any of the partitions; the first report (or the deadline) ends the wait and the
//! partitions are read again. Fetch sessions (KIP-227) are answered sessionless: the response
//! carries session id 0, which tells clients to keep sending full fetch requests, as Kafka
//! does when its session cache is full; an incremental request for a session id gets
//! FETCH_SESSION_ID_NOT_FOUND.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use uuid::Uuid;

use super::produce::count_records;
use super::{count_error, counted};
use crate::broker::errors::KafkaError;
use crate::runtime::shard::{PartitionOp, PartitionOutcome, Shard};

/// One partition of the request, resolved against the catalog.
struct Wanted {
    topic_index: usize,
    topic_name: String,
    topic_id: Option<Uuid>,
    partition: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    /// A follower's fetch: its broker id.
    replica: Option<i32>,
    /// `read_committed`.
    read_committed: bool,
}

/// Whether a Fetch comes from a consumer (not a follower replica): only consumers have
/// client quotas.
pub(super) fn from_consumer(request: &FetchRequest, version: i16) -> bool {
    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    replica_id < 0
}

/// Bytes of records a Fetch response carries.
pub(super) fn records_bytes(response: &FetchResponse) -> usize {
    response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .filter_map(|partition| partition.records.as_ref())
        .map(|records| records.len())
        .sum()
}

pub(super) async fn fetch(shard: &Rc<Shard>, request: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    if version >= 7 && request.session_id != 0 {
        count_error(shard, ResponseError::FetchSessionIdNotFound.code());
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return response;
    }
    let catalog = shard.catalog();
    // A follower's Fetch names it (v15+ in the replica state), and only in a cluster.
    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let replica = (replica_id >= 0 && catalog.layout().is_some()).then_some(replica_id);
    // READ_COMMITTED (1, v4+): up to the last stable offset, with the aborted transactions.
    let read_committed = version >= 4 && request.isolation_level == 1;
    let mut wanted = Vec::new();
    let mut topics = Vec::new();
    for (topic_index, topic) in request.topics.into_iter().enumerate() {
        let (found, name) = if version >= 13 {
            let found = catalog.topic_by_id(topic.topic_id).cloned();
            let name = found.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            (found, name)
        } else {
            let name = topic.topic.0.to_string();
            (catalog.topic(&name).cloned(), name)
        };
        for partition in topic.partitions {
            let topic_id = found
                .as_ref()
                .filter(|t| partition.partition >= 0 && partition.partition < t.partitions)
                .map(|t| t.id);
            wanted.push(Wanted {
                topic_index,
                topic_name: name.clone(),
                topic_id,
                partition: partition.partition,
                fetch_offset: partition.fetch_offset,
                partition_max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
                current_leader_epoch: partition.current_leader_epoch,
                last_fetched_epoch: partition.last_fetched_epoch,
                replica,
                read_committed,
            });
        }
        let mut result = FetchableTopicResponse::default();
        if version >= 13 {
            result.topic_id = topic.topic_id;
        } else {
            result.topic = topic.topic;
        }
        topics.push(result);
    }
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let deadline =
        Instant::now() + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));

    let results = loop {
        let results = read_all(shard, &wanted).await;
        let found_bytes: usize = results
            .iter()
            .map(|result| match result {
                Ok(PartitionOutcome::Fetched { records, .. })
                | Ok(PartitionOutcome::ReplicaFetched { records, .. }) => records.len(),
                _ => 0,
            })
            .sum();
        // A diverging epoch is an answer of its own: the follower truncates at once.
        let diverged = results.iter().any(|result| {
            matches!(
                result,
                Ok(PartitionOutcome::ReplicaFetched {
                    diverging: Some(_),
                    ..
                })
            )
        });
        let any_error = results.iter().any(Result::is_err);
        let now = Instant::now();
        if found_bytes >= min_bytes
            || any_error
            || diverged
            || now >= deadline
            || shard.shutting_down.get()
        {
            break results;
        }
        // Wait for appends past what this read saw, not past the fetch offset: with data
        // there but fewer than min_bytes, waiting from the fetch offset would return at once,
        // again and again until the deadline (a shard spinning for max_wait_ms).
        let seen_ends: Vec<i64> = wanted
            .iter()
            .zip(&results)
            .map(|(want, result)| match result {
                Ok(PartitionOutcome::Fetched { high_watermark, .. }) => {
                    want.fetch_offset.max(*high_watermark)
                }
                // A follower reads to the log end, which it already asked from.
                Ok(PartitionOutcome::ReplicaFetched { .. }) => want.fetch_offset,
                _ => want.fetch_offset,
            })
            .collect();
        wait_for_data(shard, &wanted, &seen_ends, deadline - now).await;
        if Instant::now() >= deadline {
            // One last read below picks up what arrived just before the deadline.
            break read_all(shard, &wanted).await;
        }
    };

    let mut bytes_left = max_bytes;
    let mut first_records = true;
    for (want, result) in wanted.iter().zip(results) {
        let mut partition = PartitionData::default().with_partition_index(want.partition);
        if version >= 11 {
            partition.preferred_read_replica = BrokerId(-1);
        }
        let result = match result {
            Ok(PartitionOutcome::ReplicaFetched {
                records,
                high_watermark,
                log_start_offset,
                diverging,
            }) => {
                if let (Some(end), true) = (diverging, version >= 12) {
                    partition.diverging_epoch.epoch = end.epoch;
                    partition.diverging_epoch.end_offset = end.end_offset;
                }
                Ok(PartitionOutcome::Fetched {
                    records,
                    high_watermark,
                    last_stable_offset: high_watermark,
                    log_start_offset,
                    aborted: Vec::new(),
                })
            }
            other => other,
        };
        match result {
            Ok(PartitionOutcome::Fetched {
                records,
                high_watermark,
                last_stable_offset,
                log_start_offset,
                aborted,
            }) => {
                partition.high_watermark = high_watermark;
                partition.last_stable_offset = last_stable_offset;
                partition.log_start_offset = log_start_offset;
                // Kafka sends the list (maybe empty) to read_committed fetches, null to the
                // others.
                partition.aborted_transactions = want.read_committed.then(|| {
                    aborted
                        .iter()
                        .map(|txn| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(txn.producer_id))
                                .with_first_offset(txn.first_offset)
                        })
                        .collect()
                });
                // Kafka fills partitions in order until max_bytes, but always returns the
                // first non-empty partition's batches whole.
                let records = if records.is_empty() || first_records || records.len() <= bytes_left
                {
                    if !records.is_empty() {
                        first_records = false;
                    }
                    bytes_left = bytes_left.saturating_sub(records.len());
                    records
                } else {
                    Bytes::new()
                };
                if !records.is_empty() {
                    let mut metrics = shard.metrics.borrow_mut();
                    let stats = metrics.topic(&want.topic_name);
                    stats.bytes_out += records.len() as u64;
                    stats.records_out += count_records(&records);
                }
                partition.records = Some(records);
            }
            Ok(other) => unreachable!("fetch gave {other:?}"),
            Err(error) => {
                partition.error_code = counted(shard, &error);
                partition.high_watermark = -1;
                partition.last_stable_offset = -1;
                partition.log_start_offset = -1;
                partition.records = Some(Bytes::new());
            }
        }
        topics[want.topic_index].partitions.push(partition);
    }
    response.responses = topics;
    response
}

async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
) -> Vec<Result<PartitionOutcome, KafkaError>> {
    let calls: Vec<_> = wanted
        .iter()
        .map(|want| {
            want.topic_id.map(|topic_id| {
                let op = match want.replica {
                    Some(replica) => PartitionOp::ReplicaFetch {
                        replica,
                        offset: want.fetch_offset,
                        max_bytes: want.partition_max_bytes,
                        current_leader_epoch: want.current_leader_epoch,
                        last_fetched_epoch: want.last_fetched_epoch,
                    },
                    None => PartitionOp::Fetch {
                        to_log_end: false,
                        offset: want.fetch_offset,
                        max_bytes: want.partition_max_bytes,
                        current_leader_epoch: want.current_leader_epoch,
                        read_committed: want.read_committed,
                    },
                };
                shard.start_partition_call(topic_id, want.partition, op)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(calls.len());
    for (want, call) in wanted.iter().zip(calls) {
        results.push(match call {
            Some(call) => call.result().await,
            None if want.topic_name.is_empty() => {
                Err(KafkaError::new(ResponseError::UnknownTopicId))
            }
            None => Err(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
        });
    }
    results
}

/// Returns when any of the partitions gets an append past its offset in `seen_ends`, or
/// after `timeout`.
async fn wait_for_data(shard: &Rc<Shard>, wanted: &[Wanted], seen_ends: &[i64], timeout: Duration) {
    let arrived = Rc::new((Event::new(), Cell::new(false)));
    let listener = arrived.0.listen();
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut waiters = Vec::new();
    for (want, seen_end) in wanted.iter().zip(seen_ends) {
        let Some(topic_id) = want.topic_id else {
            continue;
        };
        let call = shard.start_partition_call(
            topic_id,
            want.partition,
            PartitionOp::WaitForData {
                offset: *seen_end,
                timeout_ms,
                replica: want.replica.is_some(),
            },
        );
        let arrived = Rc::clone(&arrived);
        waiters.push(glommio::spawn_local(async move {
            if let Ok(PartitionOutcome::Waited(true)) = call.result().await {
                arrived.1.set(true);
                arrived.0.notify(usize::MAX);
            }
        }));
    }
    if waiters.is_empty() || arrived.1.get() {
        return;
    }
    let shutdown = shard.shutdown_event.listen();
    futures_lite::future::or(
        async {
            listener.await;
        },
        futures_lite::future::or(
            async {
                glommio::timer::sleep(timeout).await;
            },
            async {
                if !shard.shutting_down.get() {
                    shutdown.await;
                }
            },
        ),
    )
    .await;
    // Dropping the waiter tasks cancels them; owners' waits end at their own timeout.
    drop(waiters);
}
