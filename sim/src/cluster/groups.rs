//! The turmoil driver of one node's group coordinators: the engine's runtime-agnostic
//! [`CoordinatorHost`] (`spate_engine::group::host`, which the broker runs with glommio) over
//! [`SimStatePartition`], the node's replica of a `__consumer_offsets` partition it leads (the
//! transaction coordinators of [`super::txns`] run over it too).
//!
//! - A node asks the controller for `__consumer_offsets` on the first group request, as a
//!   broker does.
//! - A coordinator starts when the node becomes the leader of an offsets partition (it loads
//!   the partition to its log end, as Kafka's does) and stops when the leadership moves;
//!   commits are appended with `acks=all` and `min.insync.replicas` 1, as the broker appends
//!   them.
//! - Simulated consumers reach it on the data port with [`GroupRequest`]s (JSON): the node
//!   picks the group's partition as Kafka does ([`offsets_partition_for`]), turns the request
//!   into the coordinator's [`Call`] (with a member id of its choosing: randomness is the
//!   driver's) and its [`Reply`] into a [`GroupAnswer`].

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use spate_engine::group::calls::{CommitRequest, JoinRequest, MemberRef, SyncRequest};
use spate_engine::group::host::{
    self, CoordinatorHost, HostClock, OffsetsPartition, COMMIT_REPLICATION_TIMEOUT_MS,
};
use spate_engine::group::{offsets_partition_for, Call, CoordinatorConfig, Reply, OFFSETS_TOPIC};

use super::node::sim_ms;
use super::replicas::{wait_acks_all, Replicas, SimReplica};

/// `__consumer_offsets` partitions in the simulation (Kafka's default is 50).
pub(crate) const OFFSETS_PARTITIONS: i32 = 2;

/// The coordinators' settings: Kafka's defaults, with sessions and the first rebalance's
/// delay short enough for runs of a minute.
fn coordinator_config() -> CoordinatorConfig {
    CoordinatorConfig {
        group_min_session_timeout_ms: 1_000,
        group_initial_rebalance_delay_ms: 500,
        ..CoordinatorConfig::default()
    }
}

/// A consumer's request to the coordinator of its group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum GroupRequest {
    /// JoinGroup (v5 rules: a new member first gets MEMBER_ID_REQUIRED and its id).
    Join {
        group: String,
        member_id: String,
        session_timeout_ms: i32,
        rebalance_timeout_ms: i32,
        /// The consumer protocol subscription.
        metadata: Vec<u8>,
    },
    /// SyncGroup; the leader sends every member's assignment.
    Sync {
        group: String,
        member_id: String,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    },
    Heartbeat {
        group: String,
        member_id: String,
        generation: i32,
    },
    /// OffsetCommit of `(topic, partition, offset)`.
    Commit {
        group: String,
        member_id: String,
        generation: i32,
        offsets: Vec<(String, i32, i64)>,
    },
    /// OffsetFetch of `(topic, partition)`.
    FetchOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    /// DescribeGroups, for the checker.
    Describe { group: String },
}

impl GroupRequest {
    fn group(&self) -> &str {
        match self {
            GroupRequest::Join { group, .. }
            | GroupRequest::Sync { group, .. }
            | GroupRequest::Heartbeat { group, .. }
            | GroupRequest::Commit { group, .. }
            | GroupRequest::FetchOffsets { group, .. }
            | GroupRequest::Describe { group } => group,
        }
    }

    /// The coordinator's call; `new_member_id` names a new member.
    fn into_call(self, node: i32, new_member_id: String) -> Call {
        let member = |group_id: String, member_id: String, generation_id: i32| MemberRef {
            group_id,
            member_id,
            group_instance_id: None,
            generation_id,
        };
        match self {
            GroupRequest::Join {
                group,
                member_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                metadata,
            } => Call::Join(JoinRequest {
                group_id: group,
                member_id,
                group_instance_id: None,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type: "consumer".to_owned(),
                protocols: vec![("range".to_owned(), Bytes::from(metadata))],
                client_id: "sim-consumer".to_owned(),
                client_host: format!("/consumers-via-{node}"),
                require_known_member_id: true,
                new_member_id,
            }),
            GroupRequest::Sync {
                group,
                member_id,
                generation,
                assignments,
            } => Call::Sync(SyncRequest {
                member: member(group, member_id, generation),
                protocol_type: Some("consumer".to_owned()),
                protocol_name: Some("range".to_owned()),
                assignments: assignments
                    .into_iter()
                    .map(|(member, assignment)| (member, Bytes::from(assignment)))
                    .collect(),
            }),
            GroupRequest::Heartbeat {
                group,
                member_id,
                generation,
            } => Call::Heartbeat(member(group, member_id, generation)),
            GroupRequest::Commit {
                group,
                member_id,
                generation,
                offsets,
            } => Call::Commit(CommitRequest {
                member: member(group, member_id, generation),
                offsets: offsets
                    .into_iter()
                    .map(|(topic, partition, offset)| (topic, partition, offset, -1, None))
                    .collect(),
                retention_ms: -1,
            }),
            GroupRequest::FetchOffsets { group, partitions } => Call::FetchOffsets {
                group_id: group,
                partitions: Some(partitions),
            },
            GroupRequest::Describe { group } => Call::Describe { group_id: group },
        }
    }
}

/// The coordinator's answer, the fields of every kind of reply flattened (unused ones empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GroupAnswer {
    /// Kafka error code of the request (the first partition's, for a commit).
    pub(crate) error: i16,
    /// The node this node believes coordinates the group, -1 when unknown.
    pub(crate) coordinator_hint: i32,
    pub(crate) generation: i32,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// The leader's JoinGroup answer: every member's subscription.
    pub(crate) members: Vec<(String, Vec<u8>)>,
    /// SyncGroup: this member's assignment.
    pub(crate) assignment: Vec<u8>,
    /// OffsetFetch: `(topic, partition, offset)`, -1 when none is committed.
    pub(crate) offsets: Vec<(String, i32, i64)>,
    /// DescribeGroups: the group's state and members.
    pub(crate) state: String,
}

fn code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |error| error.code())
}

impl GroupAnswer {
    fn failed(error: ResponseError, coordinator_hint: i32) -> GroupAnswer {
        GroupAnswer {
            error: error.code(),
            coordinator_hint,
            generation: -1,
            ..GroupAnswer::default()
        }
    }

    fn from_reply(reply: Reply, coordinator_hint: i32) -> GroupAnswer {
        let mut answer = GroupAnswer {
            coordinator_hint,
            generation: -1,
            ..GroupAnswer::default()
        };
        match reply {
            Reply::Join(join) => {
                answer.error = code(join.error);
                answer.generation = join.generation_id;
                answer.leader = join.leader;
                answer.member_id = join.member_id;
                answer.members = join
                    .members
                    .into_iter()
                    .map(|member| (member.member_id, member.metadata.to_vec()))
                    .collect();
            }
            Reply::Sync(sync) => {
                answer.error = code(sync.error);
                answer.assignment = sync.assignment.to_vec();
            }
            Reply::Heartbeat(error) | Reply::Delete(error) | Reply::TxnCompleted(error) => {
                answer.error = code(error);
            }
            Reply::Commit(errors) => {
                answer.error = errors
                    .into_iter()
                    .find_map(|error| error)
                    .map_or(0, |e| e.code());
            }
            Reply::FetchOffsets(error, offsets) => {
                answer.error = code(error);
                answer.offsets = offsets
                    .into_iter()
                    .map(|offset| (offset.topic, offset.partition, offset.offset))
                    .collect();
            }
            Reply::Describe(description) => {
                answer.error = code(description.error);
                answer.state = description.state.to_owned();
                answer.members = description
                    .members
                    .into_iter()
                    .map(|member| (member.member_id, member.assignment.to_vec()))
                    .collect();
            }
            Reply::Leave(error, _) | Reply::List(error, _) | Reply::DeleteOffsets(error, _) => {
                answer.error = code(error);
            }
        }
        answer
    }
}

/// A consumer's group request on this node: answered by the coordinator of the group's
/// partition if this node runs it, else NOT_COORDINATOR with the leader this node knows.
pub(crate) async fn answer(replicas: &Rc<Replicas>, request: GroupRequest) -> GroupAnswer {
    let (partition, hint) = {
        let image = replicas.image.borrow();
        let Some(topic_id) = image.topic_id(OFFSETS_TOPIC) else {
            drop(image);
            replicas.ensure_offsets_topic();
            return GroupAnswer::failed(ResponseError::CoordinatorNotAvailable, -1);
        };
        let partitions = image
            .topics()
            .get(&topic_id)
            .map_or(0, |topic| topic.partitions.len());
        if partitions == 0 {
            return GroupAnswer::failed(ResponseError::CoordinatorNotAvailable, -1);
        }
        let partition = offsets_partition_for(request.group(), partitions as i32);
        (partition, replicas.leader_of(OFFSETS_TOPIC, partition))
    };
    let host = replicas.coordinators.borrow().get(&partition).cloned();
    let Some(host) = host.filter(|host| !host.is_stopped()) else {
        return GroupAnswer::failed(ResponseError::NotCoordinator, hint);
    };
    let serial = replicas.next_member_serial.get();
    replicas.next_member_serial.set(serial + 1);
    let new_member_id = format!("member-{}-{}-{serial}", replicas.node, sim_ms());
    let reply = host
        .call(
            replicas.as_ref(),
            request.into_call(replicas.node, new_member_id),
        )
        .await;
    if let Reply::Join(join) = &reply {
        replicas.world.borrow_mut().event(format!(
            "node {}: coordinator of {OFFSETS_TOPIC}-{partition} answers JoinGroup of {}: \
             generation {}, error {:?}",
            replicas.node, join.member_id, join.generation_id, join.error
        ));
    }
    GroupAnswer::from_reply(reply, hint)
}

/// Starts a coordinator for an offsets partition `replica` now leads (a new leader epoch:
/// the log may differ from the last time), or stops the one of a partition it no longer
/// leads.
pub(crate) fn place_coordinator(
    replicas: &Rc<Replicas>,
    replica: &Rc<SimReplica>,
    took_lead: bool,
) {
    let index = replica.index();
    if took_lead || !replica.is_leading() {
        stop_coordinator(replicas, index);
    }
    if took_lead {
        let host = Rc::new(CoordinatorHost::new(index, coordinator_config()));
        replicas
            .coordinators
            .borrow_mut()
            .insert(index, Rc::clone(&host));
        replicas.world.borrow_mut().event(format!(
            "node {}: group coordinator of {OFFSETS_TOPIC}-{index} starts at leader epoch {}",
            replicas.node,
            replica.leader_epoch()
        ));
        let partition = SimStatePartition {
            replicas: Rc::clone(replicas),
            replica: Rc::clone(replica),
            leader_epoch: replica.leader_epoch(),
        };
        tokio::task::spawn_local(host::drive(host, partition));
    }
}

/// Stops the coordinator of offsets partition `index`, if this node runs one.
pub(crate) fn stop_coordinator(replicas: &Replicas, index: i32) {
    if let Some(old) = replicas.coordinators.borrow_mut().remove(&index) {
        old.stop("its partition's leadership moved");
        replicas.world.borrow_mut().event(format!(
            "node {}: group coordinator of {OFFSETS_TOPIC}-{index} stopped",
            replicas.node
        ));
    }
}

impl HostClock for Replicas {
    fn now_ms(&self) -> i64 {
        Replicas::now_ms(self)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A node's replica of a partition of `__consumer_offsets` or `__transaction_state` it leads,
/// as its coordinator sees it.
pub(crate) struct SimStatePartition {
    pub(crate) replicas: Rc<Replicas>,
    pub(crate) replica: Rc<SimReplica>,
    /// The leader epoch its coordinator was loaded at: each leader epoch gets a coordinator
    /// of its own here, and a stopped one's appends never reach a later epoch's log.
    pub(crate) leader_epoch: i32,
}

impl HostClock for SimStatePartition {
    fn now_ms(&self) -> i64 {
        self.replicas.now_ms()
    }

    async fn sleep(&self, duration: Duration) {
        HostClock::sleep(self.replicas.as_ref(), duration).await;
    }
}

impl OffsetsPartition for SimStatePartition {
    async fn log_start_offset(&self) -> Result<i64, String> {
        Ok(self
            .replica
            .log
            .with_log(async |log| log.log_start_offset())
            .await)
    }

    async fn read(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, i64), String> {
        let end = self
            .replica
            .log
            .with_log(async |log| log.log_end_offset())
            .await;
        if offset >= end {
            return Ok((Bytes::new(), end));
        }
        let fetched = self
            .replica
            .log
            .read(offset, max_bytes, Some(end))
            .await
            .map_err(|error| error.to_string())?;
        Ok((fetched.to_bytes(), end))
    }

    async fn append(&self, records: BytesMut) -> Result<(), (ResponseError, String)> {
        let now_ms = self.replicas.now_ms();
        let info = self
            .replica
            .append_as_leader_at_epoch(records, now_ms, self.leader_epoch)
            .await
            .map_err(|error| (error.code, format!("{:?}", error.message)))?;
        self.replicas.send_isr_changes(&self.replica);
        self.replicas.world.borrow_mut().event(format!(
            "node {}: coordinator appended {}-{} {}..={}",
            self.replicas.node,
            self.replica.topic(),
            self.replica.index(),
            info.base_offset,
            info.last_offset
        ));
        wait_acks_all(
            &self.replicas,
            &self.replica,
            info.last_offset + 1,
            1,
            COMMIT_REPLICATION_TIMEOUT_MS,
        )
        .await
        .map_err(|code| (code, "waiting for the in-sync replicas".to_owned()))
    }

    async fn wait_committed(&self, offset: i64, timeout: Duration) -> bool {
        let listener = self.replica.data_arrived.listen();
        if self.replica.high_watermark() >= offset {
            return true;
        }
        let _ = tokio::time::timeout(timeout, listener).await;
        self.replica.high_watermark() >= offset
    }

    fn shutting_down(&self) -> bool {
        false
    }

    async fn shutdown(&self) {
        // A node's software ends by crashing or by its driver stopping the coordinator.
        std::future::pending::<()>().await;
    }
}
