//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455): moving a partition's
//! replicas onto other brokers. In a cluster the active controller carries them out (see
//! `Controller::reassign`); a single node has one replica of everything and nowhere to move it.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

use super::{counted, str_bytes};
use crate::broker::errors::KafkaError;
use crate::quorum::admin::{Reassignment, TopicAdmin};
use crate::runtime::shard::{AdminOp, Shard};

pub(super) async fn alter_partition_reassignments(
    shard: &Rc<Shard>,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let catalog = shard.catalog();
    let node_id = shard.config.node_id;
    // Per partition in request order: an answer found here, or `None` for the controller's.
    let mut early: Vec<Option<Result<(), KafkaError>>> = Vec::new();
    let mut asked = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        for partition in &topic.partitions {
            let index = partition.partition_index;
            let found = catalog
                .topic(&name)
                .filter(|topic| (0..topic.partitions).contains(&index));
            let target: Option<Vec<i32>> = partition
                .replicas
                .as_ref()
                .map(|replicas| replicas.iter().map(|broker| broker.0).collect());
            let Some(topic) = found else {
                early.push(Some(Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                ))));
                continue;
            };
            let current = catalog.partition_state(topic.id, index).map_or(1, |state| {
                state.replicas.len() - state.adding_replicas.len()
            });
            if !shard.in_cluster() {
                early.push(Some(match &target {
                    Some(target) if target == &[node_id] => Ok(()),
                    Some(_) => Err(KafkaError::with_message(
                        ResponseError::InvalidReplicaAssignment,
                        format!("a single node holds one replica, on broker {node_id}"),
                    )),
                    None => Err(KafkaError::new(ResponseError::NoReassignmentInProgress)),
                }));
                continue;
            }
            if !request.allow_replication_factor_change
                && target
                    .as_ref()
                    .is_some_and(|target| target.len() != current)
            {
                early.push(Some(Err(KafkaError::with_message(
                    ResponseError::InvalidReplicationFactor,
                    "the reassignment changes the replication factor, which the request forbids",
                ))));
                continue;
            }
            early.push(None);
            asked.push(Reassignment {
                topic: name.clone(),
                partition: index,
                target,
            });
        }
    }
    let mut made = if asked.is_empty() {
        Vec::new()
    } else {
        shard
            .admin(AdminOp::Controller(TopicAdmin::Reassign(asked)))
            .await
    }
    .into_iter();
    let mut early = early.into_iter();
    let mut response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(request.allow_replication_factor_change);
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            let outcome = early.next().flatten().unwrap_or_else(|| {
                made.next()
                    .unwrap_or_else(|| Err(KafkaError::new(ResponseError::UnknownServerError)))
            });
            let mut answer = ReassignablePartitionResponse::default()
                .with_partition_index(partition.partition_index);
            if let Err(error) = outcome {
                answer.error_code = counted(shard, &error);
                answer.error_message = error.message.map(str_bytes);
            }
            partitions.push(answer);
        }
        response.responses.push(
            ReassignableTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    response
}

pub(super) fn list_partition_reassignments(
    shard: &Shard,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let catalog = shard.catalog();
    let mut response = ListPartitionReassignmentsResponse::default();
    for topic in catalog.topics() {
        let wanted: Option<&Vec<i32>> = match &request.topics {
            None => None,
            Some(topics) => match topics
                .iter()
                .find(|asked| asked.name.0.as_str() == topic.name)
            {
                Some(asked) => Some(&asked.partition_indexes),
                None => continue,
            },
        };
        let mut partitions = Vec::new();
        for index in 0..topic.partitions {
            if wanted.is_some_and(|wanted| !wanted.contains(&index)) {
                continue;
            }
            let Some(state) = catalog.partition_state(topic.id, index) else {
                continue;
            };
            if state.adding_replicas.is_empty() && state.removing_replicas.is_empty() {
                continue;
            }
            let brokers = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect::<Vec<_>>();
            partitions.push(
                OngoingPartitionReassignment::default()
                    .with_partition_index(index)
                    .with_replicas(brokers(&state.replicas))
                    .with_adding_replicas(brokers(&state.adding_replicas))
                    .with_removing_replicas(brokers(&state.removing_replicas)),
            );
        }
        if !partitions.is_empty() {
            response.topics.push(
                OngoingTopicReassignment::default()
                    .with_name(kafka_protocol::messages::TopicName(str_bytes(
                        topic.name.clone(),
                    )))
                    .with_partitions(partitions),
            );
        }
    }
    response
}
