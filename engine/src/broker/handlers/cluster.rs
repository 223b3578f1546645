//! ApiVersions, Metadata and DescribeCluster.

use std::collections::BTreeSet;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, DescribeClusterRequest, DescribeClusterResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use uuid::Uuid;

use super::{count_error, str_bytes};
use crate::broker::catalog::{NewTopic, Topic};
use crate::broker::names::{is_internal, validate_topic_name};
use crate::protocol::versions;
use crate::runtime::shard::{AdminOp, Shard, LEADER_EPOCH};

/// The ApiVersions response: every implemented API with its versions.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = versions::all()
        .map(|(key, range)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect();
    response
}

pub(super) async fn metadata(
    shard: &Rc<Shard>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut catalog = shard.catalog();
    // Which topics: `None` for all (v0 sends an empty list for all).
    let wanted: Option<Vec<(Option<String>, Uuid)>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|topic| (topic.name.map(|name| name.0.to_string()), topic.topic_id))
                .collect(),
        ),
    };
    let auto_create =
        shard.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    if let (Some(wanted), true) = (&wanted, auto_create) {
        let missing: BTreeSet<&String> = wanted
            .iter()
            .filter_map(|(name, _)| name.as_ref())
            .filter(|name| catalog.topic(name).is_none() && validate_topic_name(name).is_ok())
            .collect();
        if missing.contains(&crate::group::OFFSETS_TOPIC.to_owned()) {
            // Created with its own settings, as on the first FindCoordinator.
            let _ = shard.ensure_offsets_topic().await;
        }
        let missing: BTreeSet<&String> = missing
            .into_iter()
            .filter(|name| !is_internal(name))
            .collect();
        if !missing.is_empty() {
            let topics = missing
                .into_iter()
                .map(|name| NewTopic {
                    name: name.clone(),
                    partitions: -1,
                    replication_factor: -1,
                    assignments: Vec::new(),
                    configs: Default::default(),
                })
                .collect();
            let _ = shard
                .admin(AdminOp::CreateTopics {
                    topics,
                    validate_only: false,
                })
                .await;
            catalog = shard.catalog();
        }
    }
    let mut response = MetadataResponse::default();
    let layout = catalog.layout();
    response.brokers = match layout {
        None => vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(shard.config.node_id))
            .with_host(str_bytes(shard.config.advertised_host.clone()))
            .with_port(shard.config.advertised_port)],
        Some(layout) => layout
            .brokers
            .iter()
            .map(|(&broker_id, broker)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(broker_id))
                    .with_host(str_bytes(broker.host.clone()))
                    .with_port(broker.port)
            })
            .collect(),
    };
    if version >= 2 {
        response.cluster_id = Some(str_bytes(catalog.cluster_id()));
    }
    if version >= 1 {
        response.controller_id =
            BrokerId(layout.map_or(shard.config.node_id, |layout| layout.controller_id));
    }
    let describe = |topic: &Topic| {
        let partitions = (0..topic.partitions)
            .map(|index| {
                let mut partition =
                    MetadataResponsePartition::default().with_partition_index(index);
                let (leader, leader_epoch, replicas, isr) = match layout {
                    None => {
                        let node = shard.config.node_id;
                        (node, LEADER_EPOCH, vec![node], vec![node])
                    }
                    Some(layout) => match layout.partitions.get(&(topic.id, index)) {
                        Some(state) => (
                            state.leader,
                            state.leader_epoch,
                            state.replicas.clone(),
                            state.isr.clone(),
                        ),
                        None => (-1, -1, Vec::new(), Vec::new()),
                    },
                };
                if leader == -1 {
                    partition.error_code = ResponseError::LeaderNotAvailable.code();
                }
                partition.leader_id = BrokerId(leader);
                if version >= 5 {
                    partition.offline_replicas = replicas
                        .iter()
                        .filter(|replica| {
                            layout.is_some_and(|layout| !layout.brokers.contains_key(replica))
                        })
                        .map(|&replica| BrokerId(replica))
                        .collect();
                }
                partition.replica_nodes = replicas.into_iter().map(BrokerId).collect();
                partition.isr_nodes = isr.into_iter().map(BrokerId).collect();
                if version >= 7 {
                    partition.leader_epoch = leader_epoch;
                }
                partition
            })
            .collect();
        let mut result = MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
            .with_partitions(partitions);
        if version >= 1 {
            result.is_internal = is_internal(&topic.name);
        }
        if version >= 10 {
            result.topic_id = topic.id;
        }
        result
    };
    response.topics = match wanted {
        None => catalog.topics().map(|topic| describe(topic)).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(name) => catalog.topic(name),
                    None => catalog.topic_by_id(id),
                };
                if let Some(topic) = found {
                    return describe(topic);
                }
                let code = match &name {
                    Some(name) if validate_topic_name(name).is_err() => {
                        ResponseError::InvalidTopicException
                    }
                    Some(_) => ResponseError::UnknownTopicOrPartition,
                    None => ResponseError::UnknownTopicId,
                };
                count_error(shard, code.code());
                let mut result = MetadataResponseTopic::default()
                    .with_error_code(code.code())
                    .with_name(name.map(|name| TopicName(str_bytes(name))));
                if version >= 10 {
                    result.topic_id = id;
                }
                result
            })
            .collect(),
    };
    response
}

pub(super) fn describe_cluster(
    shard: &Rc<Shard>,
    _request: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let catalog = shard.catalog();
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = str_bytes(catalog.cluster_id());
    response.controller_id = BrokerId(shard.config.node_id);
    response.brokers = vec![DescribeClusterBroker::default()
        .with_broker_id(BrokerId(shard.config.node_id))
        .with_host(str_bytes(shard.config.advertised_host.clone()))
        .with_port(shard.config.advertised_port)];
    // In a cluster: the registered, unfenced brokers and the active controller, as the
    // applied metadata says.
    let quorum = shard
        .process
        .quorum
        .lock()
        .ok()
        .and_then(|status| status.clone());
    if let Some(status) = quorum {
        response.controller_id = BrokerId(
            status
                .leader
                .and_then(|leader| i32::try_from(leader).ok())
                .unwrap_or(-1),
        );
        response.brokers = status
            .brokers
            .iter()
            .filter(|broker| !broker.fenced)
            .map(|broker| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(broker.broker_id))
                    .with_host(str_bytes(broker.host.clone()))
                    .with_port(broker.port)
            })
            .collect();
    }
    response
}
