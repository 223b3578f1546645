//! The group APIs as blocking calls on a [`Connection`] to the group's coordinator:
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch.
//! Each turns the version differences of its API into one shape and a non-zero error code into
//! a [`ClientError::Kafka`]; what to do about an error is the caller's call (the consumer's
//! membership rejoins, retries or gives up; the admin client reports).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::assignor::TopicPartition;
use super::connection::{response_of, Connection};
use super::error::ClientError;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Who is asking: a group member, or (generation -1, empty member id) a client outside the
/// group, such as an `assign()` consumer or the admin client committing for an empty group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// `group.id`.
    pub group_id: &'a str,
    /// Member id given by the coordinator ("" before the first join).
    pub member_id: &'a str,
    /// Generation of the group the member last joined (-1 outside the group).
    pub generation: i32,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<&'a str>,
}

impl Identity<'_> {
    /// A client that is not a member.
    pub fn outsider(group_id: &str) -> Identity<'_> {
        Identity {
            group_id,
            member_id: "",
            generation: -1,
            group_instance_id: None,
        }
    }

    fn instance(&self) -> Option<StrBytes> {
        self.group_instance_id.map(text)
    }
}

/// The address (`HOST:PORT`) of the broker coordinating `group_id`.
///
/// # Errors
/// COORDINATOR_NOT_AVAILABLE while the broker is loading the group, or a failed request.
pub fn find_coordinator(
    connection: &mut Connection,
    group_id: &str,
) -> Result<String, ClientError> {
    find_coordinator_of(connection, 0, group_id)
}

/// The address (`HOST:PORT`) of the coordinator of `key`: a group's (`key_type` 0) or a
/// transactional id's (1).
///
/// # Errors
/// COORDINATOR_NOT_AVAILABLE while the broker is loading it, or a failed request.
pub fn find_coordinator_of(
    connection: &mut Connection,
    key_type: i8,
    key: &str,
) -> Result<String, ClientError> {
    let version = connection.version(ApiKey::FindCoordinator)?;
    let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
    if version >= 4 {
        request.coordinator_keys = vec![text(key)];
    } else {
        request.key = text(key);
    }
    let (_, response) = connection.call(
        ApiKey::FindCoordinator,
        RequestKind::FindCoordinator(request),
    )?;
    let response = response_of!(response, FindCoordinator)?;
    let (error_code, message, host, port) = if version >= 4 {
        let coordinator = response
            .coordinators
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("FindCoordinator without an answer".into()))?;
        (
            coordinator.error_code,
            coordinator.error_message,
            coordinator.host,
            coordinator.port,
        )
    } else {
        (
            response.error_code,
            response.error_message,
            response.host,
            response.port,
        )
    };
    ClientError::check(error_code, message.map(|message| message.to_string()))?;
    Ok(format!("{host}:{port}"))
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new generation.
    pub generation: i32,
    /// The protocol (assignor) the group chose.
    pub protocol_name: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader: every member with its subscription bytes for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// For a static leader that rejoined: the group kept its assignment; do not compute one.
    pub skip_assignment: bool,
}

/// What JoinGroup sends.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// Who joins.
    pub identity: Identity<'a>,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms`.
    pub rebalance_timeout_ms: i32,
    /// Protocol names with their subscription bytes, in preference order.
    pub protocols: Vec<(&'static str, Bytes)>,
}

/// Joins (or rejoins) the group; blocks until the coordinator completes the rebalance.
///
/// # Errors
/// MEMBER_ID_REQUIRED (with the member id to rejoin with in the message), UNKNOWN_MEMBER_ID,
/// REBALANCE_IN_PROGRESS, the coordinator errors, or a failed request.
pub fn join_group(
    connection: &mut Connection,
    join: &JoinRequest<'_>,
) -> Result<Joined, ClientError> {
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(text(join.identity.group_id)))
        .with_session_timeout_ms(join.session_timeout_ms)
        .with_rebalance_timeout_ms(join.rebalance_timeout_ms)
        .with_member_id(text(join.identity.member_id))
        .with_group_instance_id(join.identity.instance())
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(
            join.protocols
                .iter()
                .map(|(name, metadata)| {
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_metadata(metadata.clone())
                })
                .collect(),
        );
    // The coordinator holds the answer until every member has rejoined, for up to the
    // rebalance timeout (Java waits that long plus 5 s).
    let wait = Duration::from_millis(u64::try_from(join.rebalance_timeout_ms).unwrap_or(0))
        + Duration::from_secs(5);
    let (_, response) =
        connection.call_waiting(ApiKey::JoinGroup, RequestKind::JoinGroup(request), wait)?;
    let response = response_of!(response, JoinGroup)?;
    if response.error_code != 0 {
        // MEMBER_ID_REQUIRED carries the id to use; say it in the message for the caller.
        return Err(ClientError::from_code(
            response.error_code,
            Some(response.member_id.to_string()),
        ));
    }
    Ok(Joined {
        generation: response.generation_id,
        protocol_name: response
            .protocol_name
            .map(|name| name.to_string())
            .unwrap_or_default(),
        leader: response.leader.to_string(),
        member_id: response.member_id.to_string(),
        members: response
            .members
            .into_iter()
            .map(|member| {
                (
                    member.member_id.to_string(),
                    member.group_instance_id.map(|id| id.to_string()),
                    member.metadata,
                )
            })
            .collect(),
        skip_assignment: response.skip_assignment,
    })
}

/// Sends the leader's assignments (empty from followers) and returns this member's.
///
/// # Errors
/// REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, coordinator errors, or a failed
/// request.
pub fn sync_group(
    connection: &mut Connection,
    identity: Identity<'_>,
    protocol_name: &str,
    assignments: Vec<(String, Bytes)>,
    wait: Duration,
) -> Result<Bytes, ClientError> {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(text(identity.group_id)))
        .with_generation_id(identity.generation)
        .with_member_id(text(identity.member_id))
        .with_group_instance_id(identity.instance())
        .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
        .with_protocol_name(Some(text(protocol_name)))
        .with_assignments(
            assignments
                .into_iter()
                .map(|(member_id, assignment)| {
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(text(&member_id))
                        .with_assignment(assignment)
                })
                .collect(),
        );
    let (_, response) =
        connection.call_waiting(ApiKey::SyncGroup, RequestKind::SyncGroup(request), wait)?;
    let response = response_of!(response, SyncGroup)?;
    ClientError::check(response.error_code, None)?;
    Ok(response.assignment)
}

/// One heartbeat.
///
/// # Errors
/// REBALANCE_IN_PROGRESS when the member must rejoin, UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
/// FENCED_INSTANCE_ID, coordinator errors, or a failed request.
pub fn heartbeat(connection: &mut Connection, identity: Identity<'_>) -> Result<(), ClientError> {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(text(identity.group_id)))
        .with_generation_id(identity.generation)
        .with_member_id(text(identity.member_id))
        .with_group_instance_id(identity.instance());
    let (_, response) = connection.call(ApiKey::Heartbeat, RequestKind::Heartbeat(request))?;
    let response = response_of!(response, Heartbeat)?;
    ClientError::check(response.error_code, None)
}

/// Leaves the group, so that it rebalances now rather than after the session timeout.
///
/// # Errors
/// The coordinator's error for the group or the member, or a failed request.
pub fn leave_group(connection: &mut Connection, identity: Identity<'_>) -> Result<(), ClientError> {
    let version = connection.version(ApiKey::LeaveGroup)?;
    let mut request = LeaveGroupRequest::default().with_group_id(GroupId(text(identity.group_id)));
    if version >= 3 {
        request.members = vec![leave_group_request::MemberIdentity::default()
            .with_member_id(text(identity.member_id))
            .with_group_instance_id(identity.instance())];
    } else {
        request.member_id = text(identity.member_id);
    }
    let (_, response) = connection.call(ApiKey::LeaveGroup, RequestKind::LeaveGroup(request))?;
    let response = response_of!(response, LeaveGroup)?;
    ClientError::check(response.error_code, None)?;
    for member in response.members {
        ClientError::check(member.error_code, Some(member.member_id.to_string()))?;
    }
    Ok(())
}

/// Commits `offsets` (the next offset to read of each partition).
///
/// # Errors
/// The first partition's error (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS,
/// OFFSET_METADATA_TOO_LARGE, ...), a coordinator error, or a failed request.
pub fn commit_offsets(
    connection: &mut Connection,
    identity: Identity<'_>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), ClientError> {
    let mut topics: BTreeMap<&str, Vec<offset_commit_request::OffsetCommitRequestPartition>> =
        BTreeMap::new();
    for ((topic, partition), offset) in offsets {
        topics.entry(topic).or_default().push(
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(identity.group_id)))
        .with_generation_id_or_member_epoch(identity.generation)
        .with_member_id(text(identity.member_id))
        .with_group_instance_id(identity.instance())
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let (_, response) =
        connection.call(ApiKey::OffsetCommit, RequestKind::OffsetCommit(request))?;
    let response = response_of!(response, OffsetCommit)?;
    for topic in response.topics {
        for partition in topic.partitions {
            ClientError::check(
                partition.error_code,
                Some(format!("{}-{}", topic.name.0, partition.partition_index)),
            )?;
        }
    }
    Ok(())
}

/// The group's committed offsets: of `partitions`, or of every partition with one (`None`).
/// Partitions without a committed offset are left out.
///
/// # Errors
/// The group's error (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR, ...) or a failed request.
pub fn fetch_committed(
    connection: &mut Connection,
    group_id: &str,
    partitions: Option<&[TopicPartition]>,
    require_stable: bool,
) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
    let version = connection.version(ApiKey::OffsetFetch)?;
    let wanted: Option<BTreeMap<&str, Vec<i32>>> = partitions.map(|partitions| {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            topics.entry(topic).or_default().push(*partition);
        }
        topics
    });
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        request.groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(text(group_id)))
            .with_topics(wanted.map(|topics| {
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(TopicName(text(topic)))
                            .with_partition_indexes(partitions)
                    })
                    .collect()
            }))];
    } else {
        request.group_id = GroupId(text(group_id));
        request.topics = wanted.map(|topics| {
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partition_indexes(partitions)
                })
                .collect()
        });
    }
    // KIP-447: UNSTABLE_OFFSET_COMMIT while an open transaction committed an offset of these
    // partitions (v7+), which the caller retries.
    request.require_stable = require_stable && version >= 7;
    let (_, response) = connection.call(ApiKey::OffsetFetch, RequestKind::OffsetFetch(request))?;
    let response = response_of!(response, OffsetFetch)?;
    let context = || Some(format!("group {group_id}"));
    let mut committed = BTreeMap::new();
    if version >= 8 {
        for group in response.groups {
            ClientError::check(group.error_code, context())?;
            for topic in group.topics {
                for partition in topic.partitions {
                    ClientError::check(partition.error_code, context())?;
                    committed.insert(
                        (topic.name.0.to_string(), partition.partition_index),
                        partition.committed_offset,
                    );
                }
            }
        }
    } else {
        ClientError::check(response.error_code, context())?;
        for topic in response.topics {
            for partition in topic.partitions {
                ClientError::check(partition.error_code, context())?;
                committed.insert(
                    (topic.name.0.to_string(), partition.partition_index),
                    partition.committed_offset,
                );
            }
        }
    }
    committed.retain(|_, offset| *offset >= 0);
    Ok(committed)
}
