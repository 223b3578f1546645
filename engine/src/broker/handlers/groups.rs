//! The consumer group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups and OffsetDelete.
//!
//! Each translates the Kafka message of its version to a [`Call`] of the sans-IO coordinator
//! (`crate::group`), runs it on the shard owning the group's `__consumer_offsets` partition,
//! and translates the [`Reply`] back.

use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{count_error, str_bytes};
use crate::broker::errors::KafkaError;
use crate::group::calls::*;
use crate::group::{offsets_partition_for, Reply, OFFSETS_TOPIC};
use crate::runtime::random_uuid;
use crate::runtime::shard::Shard;
use crate::txn::TRANSACTION_TOPIC;

/// Kafka's key type for a group coordinator.
const KEY_TYPE_GROUP: i8 = 0;
/// Kafka's key type for a transaction coordinator.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Most characters of the client id that go into a member id.
const MEMBER_ID_PREFIX_CHARS_MAX: usize = 200;
/// `group_type` of every group Spate has: the classic protocol.
const GROUP_TYPE_CLASSIC: &str = "classic";

fn code(shard: &Shard, error: ErrorCode) -> i16 {
    match error {
        Some(error) => {
            count_error(shard, error.code());
            error.code()
        }
        None => 0,
    }
}

fn optional(text: Option<StrBytes>) -> Option<String> {
    text.map(|text| text.to_string())
}

pub(super) async fn find_coordinator(
    shard: &Rc<Shard>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let (topic_name, created) = match request.key_type {
        KEY_TYPE_GROUP => (OFFSETS_TOPIC, shard.ensure_offsets_topic().await),
        KEY_TYPE_TRANSACTION => (TRANSACTION_TOPIC, shard.ensure_transaction_topic().await),
        _ => (
            OFFSETS_TOPIC,
            Err(KafkaError::new(ResponseError::InvalidRequest)),
        ),
    };
    let outcome = match created {
        Ok(()) => Ok(()),
        Err(error) if error.code == ResponseError::InvalidRequest => Err((
            ResponseError::InvalidRequest,
            "unknown coordinator key type",
        )),
        Err(_) => Err((
            ResponseError::CoordinatorNotAvailable,
            "cannot create the coordinators' internal topic",
        )),
    };
    let catalog = shard.catalog();
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            let coordinator = Coordinator::default().with_key(key.clone());
            // In a cluster, the coordinator is the leader of the key's partition of the
            // internal topic (a group's and a transactional id's are picked alike).
            let outcome = outcome.and_then(|()| match catalog.layout() {
                None => Ok((
                    shard.config.node_id,
                    shard.config.advertised_host.clone(),
                    shard.config.advertised_port,
                )),
                Some(layout) => catalog
                    .topic(topic_name)
                    .and_then(|topic| {
                        let partition = offsets_partition_for(&key, topic.partitions);
                        let leader = layout.partitions.get(&(topic.id, partition))?.leader;
                        let broker = layout.brokers.get(&leader)?;
                        Some((leader, broker.host.clone(), broker.port))
                    })
                    .ok_or((
                        ResponseError::CoordinatorNotAvailable,
                        "the coordinator is not available",
                    )),
            });
            match outcome {
                Ok((node_id, host, port)) => coordinator
                    .with_node_id(BrokerId(node_id))
                    .with_host(str_bytes(host))
                    .with_port(port),
                Err((error, message)) => coordinator
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code(shard, Some(error)))
                    .with_error_message(Some(StrBytes::from_static_str(message))),
            }
        })
        .collect();
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = coordinators;
    } else if let Some(only) = coordinators.into_iter().next() {
        response.error_code = only.error_code;
        response.error_message = only.error_message;
        response.node_id = only.node_id;
        response.host = only.host;
        response.port = only.port;
    }
    response
}

pub(super) async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client_id: Option<StrBytes>,
    peer: SocketAddr,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let client_id = optional(client_id).unwrap_or_default();
    // Kafka's form, `client.id-UUID`, with the client id cut so that the id stays a short
    // string (client ids may be up to 32767 bytes).
    let prefix: String = client_id.chars().take(MEMBER_ID_PREFIX_CHARS_MAX).collect();
    let new_member_id = format!("{prefix}-{}", random_uuid().hyphenated());
    let call = Call::Join(JoinRequest {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        group_instance_id: optional(request.group_instance_id),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
        client_id,
        client_host: format!("/{}", peer.ip()),
        require_known_member_id: version >= 4,
        new_member_id,
    });
    let Reply::Join(answer) = shard.group_call(&group_id, call).await else {
        unreachable!("JoinGroup gets a Join reply")
    };
    let mut response = JoinGroupResponse::default()
        .with_error_code(code(shard, answer.error))
        .with_generation_id(answer.generation_id)
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(answer.protocol_name.map(str_bytes))
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(
            answer
                .members
                .into_iter()
                .map(|member| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(member.member_id))
                        .with_group_instance_id(member.group_instance_id.map(str_bytes))
                        .with_metadata(member.metadata)
                })
                .collect(),
        );
    if version >= 9 {
        response.skip_assignment = answer.skip_assignment;
    }
    if version < 7 && response.protocol_name.is_none() {
        response.protocol_name = Some(StrBytes::default());
    }
    response
}

pub(super) async fn sync_group(shard: &Rc<Shard>, request: SyncGroupRequest) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    let call = Call::Sync(SyncRequest {
        member: MemberRef {
            group_id: group_id.clone(),
            member_id: request.member_id.to_string(),
            group_instance_id: optional(request.group_instance_id),
            generation_id: request.generation_id,
        },
        protocol_type: optional(request.protocol_type),
        protocol_name: optional(request.protocol_name),
        assignments: request
            .assignments
            .into_iter()
            .map(|assignment| (assignment.member_id.to_string(), assignment.assignment))
            .collect(),
    });
    let Reply::Sync(answer) = shard.group_call(&group_id, call).await else {
        unreachable!("SyncGroup gets a Sync reply")
    };
    SyncGroupResponse::default()
        .with_error_code(code(shard, answer.error))
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(answer.protocol_name.map(str_bytes))
        .with_assignment(answer.assignment)
}

pub(super) async fn heartbeat(shard: &Rc<Shard>, request: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let call = Call::Heartbeat(MemberRef {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        group_instance_id: optional(request.group_instance_id),
        generation_id: request.generation_id,
    });
    let Reply::Heartbeat(error) = shard.group_call(&group_id, call).await else {
        unreachable!("Heartbeat gets a Heartbeat reply")
    };
    HeartbeatResponse::default().with_error_code(code(shard, error))
}

pub(super) async fn leave_group(
    shard: &Rc<Shard>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .into_iter()
            .map(|member| {
                (
                    member.member_id.to_string(),
                    optional(member.group_instance_id),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let call = Call::Leave {
        group_id: group_id.clone(),
        members: members.clone(),
    };
    let Reply::Leave(group_error, errors) = shard.group_call(&group_id, call).await else {
        unreachable!("LeaveGroup gets a Leave reply")
    };
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.error_code = code(shard, group_error);
        response.members = members
            .into_iter()
            .zip(errors)
            .map(|((member_id, instance), error)| {
                leave_group_response::MemberResponse::default()
                    .with_member_id(str_bytes(member_id))
                    .with_group_instance_id(instance.map(str_bytes))
                    .with_error_code(code(shard, error))
            })
            .collect();
    } else {
        let error = group_error.or_else(|| errors.into_iter().next().flatten());
        response.error_code = code(shard, error);
    }
    response
}

pub(super) async fn offset_commit(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let catalog = shard.catalog();
    // (topic, partition, error if refused before reaching the coordinator)
    let mut slots: Vec<(TopicName, i32, Option<ErrorCode>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let known = catalog.topic(topic.name.0.as_str());
        for partition in &topic.partitions {
            let index = partition.partition_index;
            if known.is_none_or(|known| index < 0 || index >= known.partitions) {
                slots.push((
                    topic.name.clone(),
                    index,
                    Some(Some(ResponseError::UnknownTopicOrPartition)),
                ));
                continue;
            }
            slots.push((topic.name.clone(), index, None));
            offsets.push((
                topic.name.0.to_string(),
                index,
                partition.committed_offset,
                partition.committed_leader_epoch,
                optional(partition.committed_metadata.clone()),
            ));
        }
    }
    let mut results = Vec::new().into_iter();
    if !offsets.is_empty() {
        let call = Call::Commit(CommitRequest {
            member: MemberRef {
                group_id: group_id.clone(),
                member_id: request.member_id.to_string(),
                group_instance_id: optional(request.group_instance_id),
                generation_id: request.generation_id_or_member_epoch,
            },
            offsets,
            retention_ms: if version <= 4 {
                request.retention_time_ms
            } else {
                -1
            },
        });
        let Reply::Commit(errors) = shard.group_call(&group_id, call).await else {
            unreachable!("OffsetCommit gets a Commit reply")
        };
        results = errors.into_iter();
    }
    let mut response = OffsetCommitResponse::default();
    for (name, index, refused) in slots {
        let error = refused.unwrap_or_else(|| results.next().flatten());
        let partition = offset_commit_response::OffsetCommitResponsePartition::default()
            .with_partition_index(index)
            .with_error_code(code(shard, error));
        match response
            .topics
            .last_mut()
            .filter(|topic| topic.name == name)
        {
            Some(topic) => topic.partitions.push(partition),
            None => response.topics.push(
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(vec![partition]),
            ),
        }
    }
    response
}

/// The offsets of one group, grouped by topic.
async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    group_id: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> (ErrorCode, Vec<(String, Vec<FetchedOffset>)>) {
    let partitions = wanted.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(|partition| (topic.clone(), *partition))
            })
            .collect()
    });
    let call = Call::FetchOffsets {
        group_id: group_id.to_owned(),
        partitions,
    };
    let Reply::FetchOffsets(error, offsets) = shard.group_call(group_id, call).await else {
        unreachable!("OffsetFetch gets a FetchOffsets reply")
    };
    let mut topics: Vec<(String, Vec<FetchedOffset>)> = Vec::new();
    match (error, wanted) {
        (Some(_), Some(wanted)) => {
            // The group-level error also goes on each partition, for versions without one.
            for (topic, partitions) in wanted {
                let fetched = partitions
                    .into_iter()
                    .map(|partition| FetchedOffset {
                        topic: topic.clone(),
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        pending_transaction: false,
                    })
                    .collect();
                topics.push((topic, fetched));
            }
        }
        _ => {
            for offset in offsets {
                match topics
                    .last_mut()
                    .filter(|(topic, _)| *topic == offset.topic)
                {
                    Some((_, list)) => list.push(offset),
                    None => topics.push((offset.topic.clone(), vec![offset])),
                }
            }
        }
    }
    (error, topics)
}

pub(super) async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in request.groups {
            let wanted = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|topic| (topic.name.0.to_string(), topic.partition_indexes))
                    .collect()
            });
            let (error, topics) =
                fetch_group_offsets(shard, group.group_id.0.as_str(), wanted).await;
            let error_code = code(shard, error);
            response.groups.push(
                offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id)
                    .with_error_code(error_code)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(topic, offsets)| {
                                offset_fetch_response::OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(str_bytes(topic)))
                                    .with_partitions(
                                        offsets
                                            .into_iter()
                                            .map(|offset| {
                                                let unstable = request.require_stable && offset.pending_transaction;
                                                offset_fetch_response::OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(offset.partition)
                                                    .with_committed_offset(if unstable { -1 } else { offset.offset })
                                                    .with_committed_leader_epoch(offset.leader_epoch)
                                                    .with_metadata(Some(str_bytes(offset.metadata)))
                                                    .with_error_code(if unstable { unstable_code(shard) } else { 0 })
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
            );
        }
        return response;
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|topic| (topic.name.0.to_string(), topic.partition_indexes))
            .collect()
    });
    let (error, topics) = fetch_group_offsets(shard, request.group_id.0.as_str(), wanted).await;
    let error_code = code(shard, error);
    response.error_code = error_code;
    response.topics = topics
        .into_iter()
        .map(|(topic, offsets)| {
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(
                    offsets
                        .into_iter()
                        .map(|offset| {
                            // KIP-447: a consumer asking for stable offsets is told to retry
                            // while an open transaction committed one.
                            let unstable = version >= 7
                                && request.require_stable
                                && offset.pending_transaction;
                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(offset.partition)
                                .with_committed_offset(if unstable { -1 } else { offset.offset })
                                .with_committed_leader_epoch(offset.leader_epoch)
                                .with_metadata(Some(str_bytes(offset.metadata)))
                                // v1 has no group-level error: each partition carries it.
                                .with_error_code(if unstable {
                                    unstable_code(shard)
                                } else if version < 2 {
                                    error_code
                                } else {
                                    0
                                })
                        })
                        .collect(),
                )
        })
        .collect();
    response
}

fn unstable_code(shard: &Shard) -> i16 {
    code(shard, Some(ResponseError::UnstableOffsetCommit))
}

pub(super) async fn describe_groups(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group_id in request.groups {
        let call = Call::Describe {
            group_id: group_id.0.to_string(),
        };
        let Reply::Describe(description) = shard.group_call(group_id.0.as_str(), call).await else {
            unreachable!("DescribeGroups gets a Describe reply")
        };
        response.groups.push(
            describe_groups_response::DescribedGroup::default()
                .with_group_id(group_id)
                .with_error_code(code(shard, description.error))
                .with_group_state(StrBytes::from_static_str(description.state))
                .with_protocol_type(str_bytes(description.protocol_type))
                .with_protocol_data(str_bytes(description.protocol_name))
                .with_authorized_operations(i32::MIN)
                .with_members(
                    description
                        .members
                        .into_iter()
                        .map(|member| {
                            describe_groups_response::DescribedGroupMember::default()
                                .with_member_id(str_bytes(member.member_id))
                                .with_group_instance_id(member.group_instance_id.map(str_bytes))
                                .with_client_id(str_bytes(member.client_id))
                                .with_client_host(str_bytes(member.client_host))
                                .with_member_metadata(member.metadata)
                                .with_member_assignment(member.assignment)
                        })
                        .collect(),
                ),
        );
    }
    response
}

pub(super) async fn list_groups(
    shard: &Rc<Shard>,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    let wants_classic = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|kind| kind.eq_ignore_ascii_case(GROUP_TYPE_CLASSIC));
    let Some(topic) = shard.catalog().topic(crate::group::OFFSETS_TOPIC).cloned() else {
        return response;
    };
    if !wants_classic {
        return response;
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut error = None;
    for partition in 0..topic.partitions {
        let call = Call::List {
            states: states.clone(),
        };
        let Reply::List(partition_error, listed) = shard.group_call_at(partition, call).await
        else {
            unreachable!("ListGroups gets a List reply")
        };
        // Kafka lists what it can and reports a coordinator that is still loading.
        error = error.or(partition_error);
        for group in listed {
            response.groups.push(
                list_groups_response::ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(group.group_id)))
                    .with_protocol_type(str_bytes(group.protocol_type))
                    .with_group_state(StrBytes::from_static_str(group.state))
                    .with_group_type(StrBytes::from_static_str(GROUP_TYPE_CLASSIC)),
            );
        }
    }
    response.error_code = code(shard, error);
    response
}

pub(super) async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let call = Call::Delete {
            group_id: group_id.0.to_string(),
        };
        let Reply::Delete(error) = shard.group_call(group_id.0.as_str(), call).await else {
            unreachable!("DeleteGroups gets a Delete reply")
        };
        response.results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code(shard, error)),
        );
    }
    response
}

pub(super) async fn offset_delete(
    shard: &Rc<Shard>,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let catalog = shard.catalog();
    let mut slots: Vec<(TopicName, i32, Option<ErrorCode>)> = Vec::new();
    let mut partitions = Vec::new();
    for topic in &request.topics {
        let known = catalog.topic(topic.name.0.as_str());
        for partition in &topic.partitions {
            let index = partition.partition_index;
            if known.is_none_or(|known| index < 0 || index >= known.partitions) {
                slots.push((
                    topic.name.clone(),
                    index,
                    Some(Some(ResponseError::UnknownTopicOrPartition)),
                ));
            } else {
                slots.push((topic.name.clone(), index, None));
                partitions.push((topic.name.0.to_string(), index));
            }
        }
    }
    let call = Call::DeleteOffsets {
        group_id: group_id.clone(),
        partitions,
    };
    let Reply::DeleteOffsets(group_error, errors) = shard.group_call(&group_id, call).await else {
        unreachable!("OffsetDelete gets a DeleteOffsets reply")
    };
    let mut response = OffsetDeleteResponse::default().with_error_code(code(shard, group_error));
    if group_error.is_some() {
        return response;
    }
    let mut results = errors.into_iter();
    for (name, index, refused) in slots {
        let error = refused.unwrap_or_else(|| results.next().flatten());
        let partition = offset_delete_response::OffsetDeleteResponsePartition::default()
            .with_partition_index(index)
            .with_error_code(code(shard, error));
        match response
            .topics
            .last_mut()
            .filter(|topic| topic.name == name)
        {
            Some(topic) => topic.partitions.push(partition),
            None => response.topics.push(
                offset_delete_response::OffsetDeleteResponseTopic::default()
                    .with_name(name)
                    .with_partitions(vec![partition]),
            ),
        }
    }
    response
}
