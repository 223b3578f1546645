//! Request handling, one module per group of APIs. Each handler takes the decoded request and
//! the shard it arrived on and returns the response body; partitions are reached through
//! [`Shard::start_partition_call`], catalog changes through [`Shard::admin`], groups through
//! [`Shard::group_call`].

mod cluster;
mod configs;
mod fetch;
mod groups;
mod offsets;
mod produce;
mod producers;
mod quorum;
mod quotas;
mod reassignments;
mod topics;
mod txns;

use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::broker::quotas::{QuotaKind, SensorKey};
use crate::protocol::Request;
use crate::runtime::shard::Shard;

pub use cluster::api_versions_response;

/// What handling a request gave.
#[derive(Debug)]
pub struct Handled {
    /// The response; `None` when the request gets none (Produce with acks=0).
    pub response: Option<ResponseKind>,
    /// How long the client is over its quota (ms): the response says so, and the connection
    /// reads no further request for that long.
    pub throttle_ms: i32,
    /// A request between brokers (a follower's Fetch, markers, verification), which no
    /// request-time quota counts, as in Kafka.
    pub between_brokers: bool,
    /// A consumer's Fetch (not a follower's), answered empty if the request-time quota
    /// throttles it.
    pub consumer_fetch: bool,
    /// The fetch quota sensor a consumer's fetch bytes were recorded in, and how many, to
    /// take back if the request-time quota throttles it.
    pub fetch_recorded: Option<(SensorKey, usize)>,
}

/// Handles one request.
///
/// # Errors
/// A sentence when the request is of an API the dispatcher does not know, which the decoder
/// should have refused; the connection is then closed.
pub async fn handle(
    shard: &Rc<Shard>,
    request: Request,
    peer: SocketAddr,
) -> Result<Handled, String> {
    let version = request.version;
    let client_id = request.header.client_id;
    let quota_client_id = client_id.clone();
    let quota_client_id = quota_client_id.as_deref().unwrap_or_default();
    let mut throttle_ms = 0;
    let mut fetch_recorded = None;
    let consumer_fetch = match &request.body {
        RequestKind::Fetch(body) => fetch::from_consumer(body, version),
        _ => false,
    };
    let between_brokers = match &request.body {
        RequestKind::Fetch(_) => !consumer_fetch,
        RequestKind::WriteTxnMarkers(_) | RequestKind::OffsetForLeaderEpoch(_) => true,
        RequestKind::AddPartitionsToTxn(_) => version >= 4,
        _ => false,
    };
    let response = match request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions_response(0)),
        RequestKind::Metadata(body) => {
            ResponseKind::Metadata(cluster::metadata(shard, body, version).await)
        }
        RequestKind::DescribeCluster(body) => {
            ResponseKind::DescribeCluster(cluster::describe_cluster(shard, body, version))
        }
        RequestKind::DescribeQuorum(body) => {
            ResponseKind::DescribeQuorum(quorum::describe_quorum(shard, body))
        }
        RequestKind::Produce(body) => {
            let bytes = produce::records_bytes(&body);
            let response = produce::produce(shard, body, version).await;
            throttle_ms = shard
                .record_quota(quota_client_id, QuotaKind::Produce, bytes)
                .0;
            match response {
                Some(mut response) => {
                    response.throttle_time_ms = throttle_ms;
                    ResponseKind::Produce(response)
                }
                None => {
                    return Ok(Handled {
                        response: None,
                        throttle_ms,
                        between_brokers,
                        consumer_fetch: false,
                        fetch_recorded,
                    })
                }
            }
        }
        RequestKind::Fetch(body) => {
            let mut response = fetch::fetch(shard, body, version).await;
            if consumer_fetch {
                let bytes = fetch::records_bytes(&response);
                let (throttle, sensor) =
                    shard.record_quota(quota_client_id, QuotaKind::Fetch, bytes);
                match (throttle > 0, sensor) {
                    (true, Some(sensor)) => {
                        // As Kafka: a throttled fetch is answered empty, and its bytes do not
                        // count.
                        shard.unrecord_quota(&sensor, bytes);
                        response.responses.clear();
                        response.throttle_time_ms = throttle;
                        throttle_ms = throttle;
                    }
                    (false, Some(sensor)) => fetch_recorded = Some((sensor, bytes)),
                    (_, None) => {}
                }
            }
            ResponseKind::Fetch(response)
        }
        RequestKind::ListOffsets(body) => {
            ResponseKind::ListOffsets(offsets::list_offsets(shard, body, version).await)
        }
        RequestKind::OffsetForLeaderEpoch(body) => {
            ResponseKind::OffsetForLeaderEpoch(offsets::offset_for_leader_epoch(shard, body).await)
        }
        RequestKind::DeleteRecords(body) => {
            ResponseKind::DeleteRecords(offsets::delete_records(shard, body).await)
        }
        RequestKind::CreateTopics(body) => {
            ResponseKind::CreateTopics(topics::create_topics(shard, body, version).await)
        }
        RequestKind::DeleteTopics(body) => {
            ResponseKind::DeleteTopics(topics::delete_topics(shard, body, version).await)
        }
        RequestKind::CreatePartitions(body) => {
            ResponseKind::CreatePartitions(topics::create_partitions(shard, body).await)
        }
        RequestKind::AlterPartitionReassignments(body) => {
            ResponseKind::AlterPartitionReassignments(
                reassignments::alter_partition_reassignments(shard, body).await,
            )
        }
        RequestKind::ListPartitionReassignments(body) => ResponseKind::ListPartitionReassignments(
            reassignments::list_partition_reassignments(shard, body),
        ),
        RequestKind::DescribeConfigs(body) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(shard, body, version))
        }
        RequestKind::AlterConfigs(body) => {
            ResponseKind::AlterConfigs(configs::alter_configs(shard, body).await)
        }
        RequestKind::IncrementalAlterConfigs(body) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(shard, body).await,
        ),
        RequestKind::FindCoordinator(body) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(shard, body, version).await)
        }
        RequestKind::JoinGroup(body) => {
            ResponseKind::JoinGroup(groups::join_group(shard, body, version, client_id, peer).await)
        }
        RequestKind::SyncGroup(body) => {
            ResponseKind::SyncGroup(groups::sync_group(shard, body).await)
        }
        RequestKind::Heartbeat(body) => {
            ResponseKind::Heartbeat(groups::heartbeat(shard, body).await)
        }
        RequestKind::LeaveGroup(body) => {
            ResponseKind::LeaveGroup(groups::leave_group(shard, body, version).await)
        }
        RequestKind::OffsetCommit(body) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, body, version).await)
        }
        RequestKind::OffsetFetch(body) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, body, version).await)
        }
        RequestKind::DescribeGroups(body) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, body).await)
        }
        RequestKind::ListGroups(body) => {
            ResponseKind::ListGroups(groups::list_groups(shard, body).await)
        }
        RequestKind::DeleteGroups(body) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, body).await)
        }
        RequestKind::InitProducerId(body) => {
            ResponseKind::InitProducerId(producers::init_producer_id(shard, body).await)
        }
        RequestKind::AddPartitionsToTxn(body) => ResponseKind::AddPartitionsToTxn(
            txns::add_partitions_to_txn(shard, body, version).await,
        ),
        RequestKind::AddOffsetsToTxn(body) => {
            ResponseKind::AddOffsetsToTxn(txns::add_offsets_to_txn(shard, body).await)
        }
        RequestKind::EndTxn(body) => {
            ResponseKind::EndTxn(txns::end_txn(shard, body, version).await)
        }
        RequestKind::TxnOffsetCommit(body) => {
            ResponseKind::TxnOffsetCommit(txns::txn_offset_commit(shard, body).await)
        }
        RequestKind::WriteTxnMarkers(body) => {
            ResponseKind::WriteTxnMarkers(txns::write_txn_markers(shard, body).await)
        }
        RequestKind::OffsetDelete(body) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, body).await)
        }
        RequestKind::DescribeClientQuotas(body) => {
            ResponseKind::DescribeClientQuotas(quotas::describe_client_quotas(shard, body))
        }
        RequestKind::AlterClientQuotas(body) => {
            ResponseKind::AlterClientQuotas(quotas::alter_client_quotas(shard, body).await)
        }
        other => return Err(format!("no handler for {other:?}")),
    };
    Ok(Handled {
        response: Some(response),
        throttle_ms,
        between_brokers,
        consumer_fetch,
        fetch_recorded,
    })
}

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Counts an error code in the shard's metrics.
fn count_error(shard: &Shard, code: i16) {
    shard.metrics.borrow_mut().observe_error(code);
}

/// Counts `error` in the shard's metrics and returns its wire code.
fn counted(shard: &Shard, error: &crate::broker::errors::KafkaError) -> i16 {
    count_error(shard, error.code());
    error.code()
}
