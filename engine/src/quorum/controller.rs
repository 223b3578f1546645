//! [`Controller`]: the active controller's decisions, as a sans-IO state machine over the
//! [`MetadataImage`].
//!
//! # Calling protocol
//! The driver of the quorum leader (the active controller) hands the controller each broker
//! request with the current image and time, and proposes the [`MetadataRecord`]s it returns
//! through the quorum; they take effect when applied, on every node alike. The controller keeps
//! only what is not in the log: each broker's session deadline (heartbeats are not logged, as
//! in Kafka). A new active controller starts every broker's session afresh.
//!
//! - [`Controller::register_broker`], [`Controller::heartbeat`]: brokers join, stay alive, are
//!   unfenced once they heartbeat, and ask for controlled shutdown;
//! - [`Controller::tick`]: brokers silent for `broker_session_timeout_ms` are fenced, and their
//!   partitions get new ISRs and leaders;
//! - [`Controller::create_topic`], [`Controller::alter_partition`] (a leader's ISR change),
//!   [`Controller::preferred_leader_elections`].
//!
//! # Rules (Kafka's `ReplicationControlManager` and `PartitionChangeBuilder`)
//! A leader is elected from the ISR, first eligible replica in assignment order. A fenced or
//! shutting-down broker leaves every ISR, except that an ISR never becomes empty: its last
//! member stays (it holds every committed record) and the partition waits, leaderless, for it
//! to come back, unless the topic allows unclean leader election, in which case any eligible
//! replica leads with itself as the ISR.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use super::image::MetadataImage;
use super::records::MetadataRecord;
use crate::replication::{BrokerId, PartitionState};

/// The config key that allows unclean leader election, per topic or cluster-wide.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// Settings, Kafka's controller settings of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: i64,
    /// The most partition replicas a broker may hold (`max_partitions_per_broker`): new
    /// topics and partitions that would put more on a broker are refused.
    pub partitions_per_broker_max: usize,
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            broker_session_timeout_ms: 9_000,
            partitions_per_broker_max: crate::limits::PARTITIONS_PER_BROKER_MAX_DEFAULT,
        }
    }
}

/// A broker's registration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `node.id`.
    pub broker_id: BrokerId,
    /// Random per process start.
    pub incarnation_id: Uuid,
    /// Where clients reach it.
    pub host: String,
    /// Its Kafka port.
    pub port: i32,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// It found none of its partition data (a lost or new disk): it holds nothing it held
    /// before, so it leaves every ISR, even as the last member, where an eligible leader
    /// replica can take its place, and every ELR.
    pub data_lost: bool,
}

/// A broker's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// `node.id`.
    pub broker_id: BrokerId,
    /// Its registration's epoch.
    pub broker_epoch: i64,
    /// It is shutting down and wants its leaderships moved first.
    pub want_shut_down: bool,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// It is fenced (leads nothing, in no ISR) as far as the applied metadata says.
    pub is_fenced: bool,
    /// Its controlled shutdown is done: it leads nothing and may exit.
    pub should_shut_down: bool,
}

/// A leader's request to change a partition's ISR (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartition {
    /// The leader asking.
    pub broker_id: BrokerId,
    /// Its registration's epoch.
    pub broker_epoch: i64,
    /// The partition's topic.
    pub topic_id: Uuid,
    /// The partition.
    pub partition: i32,
    /// The leader epoch it leads at.
    pub leader_epoch: i32,
    /// The partition epoch its request is based on.
    pub partition_epoch: i32,
    /// The ISR it wants.
    pub isr: Vec<BrokerId>,
}

/// Why the controller refused a request; each is a Kafka error code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The broker is not registered, or at another epoch: `STALE_BROKER_EPOCH`.
    #[error("stale broker epoch")]
    StaleBrokerEpoch,
    /// No such topic or partition: `UNKNOWN_TOPIC_OR_PARTITION`.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// The topic exists: `TOPIC_ALREADY_EXISTS`.
    #[error("topic already exists")]
    TopicAlreadyExists,
    /// Not enough eligible brokers: `INVALID_REPLICATION_FACTOR`.
    #[error("replication factor larger than the eligible brokers")]
    InvalidReplicationFactor,
    /// Zero or negative partitions: `INVALID_PARTITIONS`.
    #[error("invalid partition count")]
    InvalidPartitions,
    /// The sender does not lead the partition: `NOT_LEADER_OR_FOLLOWER`.
    #[error("not the leader")]
    NotLeader,
    /// The sender's leader epoch is old: `FENCED_LEADER_EPOCH`.
    #[error("fenced leader epoch")]
    FencedLeaderEpoch,
    /// The request is based on an older partition state: `INVALID_UPDATE_VERSION`.
    #[error("invalid update version")]
    InvalidUpdateVersion,
    /// A replica added to the ISR is fenced, shutting down or not assigned:
    /// `INELIGIBLE_REPLICA`.
    #[error("ineligible replica")]
    IneligibleReplica,
    /// The ISR asked for leaves out the leader or is empty: `INVALID_REQUEST`.
    #[error("invalid ISR")]
    InvalidIsr,
    /// A reassignment's target is empty, names a broker twice or an unknown broker:
    /// `INVALID_REPLICA_ASSIGNMENT`.
    #[error("invalid replica assignment")]
    InvalidReplicaAssignment,
    /// A cancellation where no reassignment is in progress: `NO_REASSIGNMENT_IN_PROGRESS`.
    #[error("no reassignment in progress")]
    NoReassignmentInProgress,
    /// New partitions would put more replicas on a broker than `max_partitions_per_broker`:
    /// `INVALID_PARTITIONS`.
    #[error(
        "broker {broker_id} would hold {count} partitions, over its limit of {limit} \
         (max_partitions_per_broker)"
    )]
    PartitionLimit {
        /// The broker.
        broker_id: BrokerId,
        /// The replicas it would hold.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

impl ControllerError {
    /// The Kafka error for the wire.
    pub fn response_error(self) -> ResponseError {
        match self {
            ControllerError::StaleBrokerEpoch => ResponseError::StaleBrokerEpoch,
            ControllerError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            ControllerError::TopicAlreadyExists => ResponseError::TopicAlreadyExists,
            ControllerError::InvalidReplicationFactor => ResponseError::InvalidReplicationFactor,
            ControllerError::InvalidPartitions => ResponseError::InvalidPartitions,
            ControllerError::NotLeader => ResponseError::NotLeaderOrFollower,
            ControllerError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
            ControllerError::InvalidUpdateVersion => ResponseError::InvalidUpdateVersion,
            ControllerError::IneligibleReplica => ResponseError::IneligibleReplica,
            ControllerError::InvalidIsr => ResponseError::InvalidRequest,
            ControllerError::InvalidReplicaAssignment => ResponseError::InvalidReplicaAssignment,
            ControllerError::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress,
            ControllerError::PartitionLimit { .. } => ResponseError::InvalidPartitions,
        }
    }
}

/// The active controller. See the module docs.
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    /// When each unfenced broker's session ends, unless it heartbeats.
    session_deadlines_ms: BTreeMap<BrokerId, i64>,
}

impl Controller {
    /// A controller that just became active.
    pub fn new(config: ControllerConfig) -> Controller {
        Controller {
            config,
            session_deadlines_ms: BTreeMap::new(),
        }
    }

    /// A broker registers (at start-up). It starts fenced; the records register it and, when
    /// an earlier incarnation of it was unfenced, move that one's leaderships away first.
    pub fn register_broker(
        &mut self,
        image: &MetadataImage,
        now_ms: i64,
        registration: Registration,
    ) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if registration.data_lost {
            records.extend(forget_lost_replica(image, registration.broker_id));
        } else if image.is_eligible(registration.broker_id) {
            // Restarted before its old session ran out: its old incarnation is gone.
            records.extend(self.remove_from_partitions(image, registration.broker_id));
        }
        records.push(MetadataRecord::RegisterBroker {
            broker_id: registration.broker_id,
            incarnation_id: registration.incarnation_id,
            host: registration.host,
            port: registration.port,
            rack: registration.rack,
        });
        self.session_deadlines_ms.insert(
            registration.broker_id,
            now_ms + self.config.broker_session_timeout_ms,
        );
        records
    }

    /// A broker's heartbeat: keeps its session, unfences it (electing it where a partition
    /// waits for it), or begins its controlled shutdown.
    ///
    /// # Errors
    /// [`ControllerError::StaleBrokerEpoch`] for an unknown broker or an old registration: it
    /// must register again.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        now_ms: i64,
        heartbeat: Heartbeat,
    ) -> Result<(HeartbeatReply, Vec<MetadataRecord>), ControllerError> {
        let broker = image
            .broker(heartbeat.broker_id)
            .filter(|broker| broker.broker_epoch == heartbeat.broker_epoch)
            .ok_or(ControllerError::StaleBrokerEpoch)?;
        self.session_deadlines_ms.insert(
            heartbeat.broker_id,
            now_ms + self.config.broker_session_timeout_ms,
        );
        let mut records = Vec::new();
        if heartbeat.want_shut_down {
            if !broker.in_controlled_shutdown {
                records.push(MetadataRecord::BrokerRegistrationChange {
                    broker_id: broker.broker_id,
                    broker_epoch: broker.broker_epoch,
                    fenced: None,
                    in_controlled_shutdown: Some(true),
                });
                records.extend(self.remove_from_partitions(image, broker.broker_id));
            }
        } else if broker.fenced {
            records.push(MetadataRecord::BrokerRegistrationChange {
                broker_id: broker.broker_id,
                broker_epoch: broker.broker_epoch,
                fenced: Some(false),
                in_controlled_shutdown: None,
            });
            records.extend(self.elect_returning(image, broker.broker_id));
        }
        let leads_something = image.topics().values().any(|topic| {
            topic
                .partitions
                .values()
                .any(|state| state.leader == broker.broker_id)
        });
        Ok((
            HeartbeatReply {
                is_fenced: broker.fenced,
                should_shut_down: broker.in_controlled_shutdown && !leads_something,
            },
            records,
        ))
    }

    /// The connection that carried `broker_id`'s heartbeats (at `broker_epoch`) closed: its
    /// process most likely died (the kernel closes a dead process's sockets), so its session
    /// ends at `session_end_ms` (now, or after a short grace) instead of after
    /// `broker_session_timeout_ms`, and a [`Controller::tick`] from then fences it. A newer registration of the broker is left alone, and a
    /// live broker whose connection merely broke is unfenced by its next heartbeat.
    pub fn connection_lost(
        &mut self,
        image: &MetadataImage,
        broker_id: BrokerId,
        broker_epoch: i64,
        session_end_ms: i64,
    ) {
        let current = image
            .broker(broker_id)
            .is_some_and(|broker| broker.broker_epoch == broker_epoch && !broker.fenced);
        if current {
            self.session_deadlines_ms.insert(broker_id, session_end_ms);
        }
    }

    /// Time passed: brokers whose session ran out are fenced, and leave their partitions.
    pub fn tick(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<MetadataRecord> {
        let expired: Vec<BrokerId> = self
            .session_deadlines_ms
            .iter()
            .filter(|(_, &deadline)| deadline <= now_ms)
            .map(|(&broker_id, _)| broker_id)
            .collect();
        let mut records = Vec::new();
        // With several brokers fenced at once, each is planned on the image the changes for
        // the ones before it make: else each change would put the other back.
        let mut planned: Option<MetadataImage> = None;
        for broker_id in expired {
            self.session_deadlines_ms.remove(&broker_id);
            let view = planned.as_ref().unwrap_or(image);
            let Some(broker) = view.broker(broker_id) else {
                continue;
            };
            if broker.fenced {
                continue;
            }
            let mut fencing = vec![MetadataRecord::BrokerRegistrationChange {
                broker_id,
                broker_epoch: broker.broker_epoch,
                fenced: Some(true),
                in_controlled_shutdown: None,
            }];
            fencing.extend(self.remove_from_partitions(view, broker_id));
            let next = planned.get_or_insert_with(|| image.clone());
            for record in &fencing {
                // Only a scratch copy: the index merely has to increase.
                let _ = next.apply(next.last_applied_index() + 1, record);
            }
            records.extend(fencing);
        }
        // Decisions only partly committed are finished (see `finish_partial_decisions`).
        let view = planned.as_ref().unwrap_or(image);
        records.extend(self.finish_partial_decisions(view));
        // A broker registered before this controller became active gets a session now.
        for (&broker_id, broker) in image.brokers() {
            if !broker.fenced {
                self.session_deadlines_ms
                    .entry(broker_id)
                    .or_insert(now_ms + self.config.broker_session_timeout_ms);
            }
        }
        records
    }

    /// The earliest session deadline: when [`Controller::tick`] next has work.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.session_deadlines_ms.values().min().copied()
    }

    /// Creates a topic: `partitions` partitions of `replication_factor` replicas each, spread
    /// over the eligible brokers round-robin from `start` (randomness, as an input), preferred
    /// leaders spread the same way.
    ///
    /// # Errors
    /// [`ControllerError`] for a taken name, a bad count or too few eligible brokers.
    pub fn create_topic(
        &self,
        image: &MetadataImage,
        name: &str,
        topic_id: Uuid,
        partitions: i32,
        replication_factor: usize,
        start: usize,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        if image.topic_id(name).is_some() {
            return Err(ControllerError::TopicAlreadyExists);
        }
        if partitions <= 0 {
            return Err(ControllerError::InvalidPartitions);
        }
        let mut records = vec![MetadataRecord::Topic {
            name: name.to_string(),
            topic_id,
        }];
        records.extend(place_partitions(
            image,
            topic_id,
            0..partitions,
            replication_factor,
            start,
        )?);
        Ok(records)
    }

    /// Replicas each broker holds in `image`, for [`Controller::check_partition_limit`].
    pub fn replicas_per_broker(image: &MetadataImage) -> BTreeMap<BrokerId, usize> {
        let mut counts = BTreeMap::new();
        for topic in image.topics().values() {
            for state in topic.partitions.values() {
                for &replica in &state.replicas {
                    *counts.entry(replica).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Adds the replicas of the partitions `records` create to `counts` (what the brokers
    /// hold, with what was planned before), unless a broker would then hold more than
    /// `max_partitions_per_broker`; `counts` is unchanged then.
    ///
    /// # Errors
    /// [`ControllerError::PartitionLimit`] for the first broker over the limit.
    pub fn check_partition_limit(
        &self,
        counts: &mut BTreeMap<BrokerId, usize>,
        records: &[MetadataRecord],
    ) -> Result<(), ControllerError> {
        let mut added: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for record in records {
            if let MetadataRecord::Partition { replicas, .. } = record {
                for &replica in replicas {
                    *added.entry(replica).or_insert(0) += 1;
                }
            }
        }
        let limit = self.config.partitions_per_broker_max;
        for (&broker_id, &more) in &added {
            let count = counts.get(&broker_id).copied().unwrap_or(0) + more;
            if count > limit {
                return Err(ControllerError::PartitionLimit {
                    broker_id,
                    count,
                    limit,
                });
            }
        }
        for (broker_id, more) in added {
            *counts.entry(broker_id).or_insert(0) += more;
        }
        Ok(())
    }

    /// Grows topic `topic_id` to `partitions` partitions (CreatePartitions): the new ones get
    /// as many replicas as its first partition, spread over the eligible brokers round-robin
    /// from `start`, as [`Controller::create_topic`] spreads them.
    ///
    /// # Errors
    /// [`ControllerError::UnknownTopicOrPartition`], [`ControllerError::InvalidPartitions`]
    /// for a count not above today's, [`ControllerError::InvalidReplicationFactor`] when fewer
    /// brokers are eligible than a partition has replicas.
    pub fn add_partitions(
        &self,
        image: &MetadataImage,
        topic_id: Uuid,
        partitions: i32,
        start: usize,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let topic = image
            .topics()
            .get(&topic_id)
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        let existing = topic.partitions.len() as i32;
        if partitions <= existing {
            return Err(ControllerError::InvalidPartitions);
        }
        let replication_factor = topic.partitions.values().next().map_or(1, |state| {
            state.replicas.len() - state.adding_replicas.len()
        });
        place_partitions(
            image,
            topic_id,
            existing..partitions,
            replication_factor,
            start,
        )
    }

    /// A leader's ISR change (AlterPartition, KIP-497), checked against the current state.
    ///
    /// # Errors
    /// [`ControllerError`] as Kafka answers each case; nothing is proposed then.
    pub fn alter_partition(
        &self,
        image: &MetadataImage,
        request: &AlterPartition,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        image
            .broker(request.broker_id)
            .filter(|broker| broker.broker_epoch == request.broker_epoch)
            .ok_or(ControllerError::StaleBrokerEpoch)?;
        let state = image
            .partition(request.topic_id, request.partition)
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        if request.leader_epoch < state.leader_epoch {
            return Err(ControllerError::FencedLeaderEpoch);
        }
        if state.leader != request.broker_id || request.leader_epoch != state.leader_epoch {
            return Err(ControllerError::NotLeader);
        }
        if request.partition_epoch != state.partition_epoch {
            return Err(ControllerError::InvalidUpdateVersion);
        }
        let mut isr = request.isr.clone();
        isr.sort_unstable();
        isr.dedup();
        if !isr.contains(&request.broker_id) {
            return Err(ControllerError::InvalidIsr);
        }
        let added_ineligible = isr.iter().any(|&replica| {
            !state.isr.contains(&replica)
                && (!state.replicas.contains(&replica) || !image.is_eligible(replica))
        });
        if added_ineligible {
            return Err(ControllerError::IneligibleReplica);
        }
        let mut current = state.isr.clone();
        current.sort_unstable();
        if isr == current {
            return Ok(Vec::new());
        }
        let mut records = vec![MetadataRecord::PartitionChange {
            topic_id: request.topic_id,
            partition: request.partition,
            isr: Some(isr.clone()),
            leader: None,
            replicas: None,
        }];
        // Replicas leaving an ISR already below min.insync.replicas hold every committed
        // record (none was committed without them): they stay electable. An ISR back at
        // min.insync.replicas commits without them, so the ELR empties.
        let min_isr = image
            .topics()
            .get(&request.topic_id)
            .map_or(1, |topic| image.min_insync_replicas(&topic.name));
        let old_elr = image.elr(request.topic_id, request.partition);
        let elr = if isr.len() >= min_isr {
            Vec::new()
        } else {
            let mut elr: Vec<BrokerId> = old_elr
                .iter()
                .copied()
                .filter(|broker| !isr.contains(broker))
                .collect();
            for &left in &state.isr {
                if !isr.contains(&left) && !elr.contains(&left) {
                    elr.push(left);
                }
            }
            elr
        };
        records.extend(elr_change(
            request.topic_id,
            request.partition,
            old_elr,
            elr,
        ));
        // The last target replica of a reassignment caught up: the reassignment completes.
        let after = PartitionState {
            isr,
            ..state.clone()
        };
        if is_reassigning(&after) {
            let target = reassignment_target(&after);
            if target.iter().all(|replica| after.isr.contains(replica)) {
                records.extend(complete_reassignment(
                    image,
                    request.topic_id,
                    request.partition,
                    &after,
                    &target,
                ));
            }
        }
        Ok(records)
    }

    /// AlterPartitionReassignments for one partition (KIP-455): move its replicas to `target`
    /// (preferred leader first), or with `None` cancel the reassignment in progress. While the
    /// new replicas catch up, the partition's replicas are the target followed by those
    /// leaving, with the adding and removing ones recorded; once every target replica is in
    /// the ISR (now, or at the ISR expansion that gets it there, see
    /// [`Controller::alter_partition`]) the replicas become the target, the ISR loses the
    /// leaving ones, and leadership moves to the first target replica in sync if the leader
    /// leaves. A new target replaces one in progress, from the replicas before it.
    ///
    /// # Errors
    /// [`ControllerError::UnknownTopicOrPartition`], [`ControllerError::InvalidReplicaAssignment`]
    /// (empty, a broker twice, an unregistered broker) or
    /// [`ControllerError::NoReassignmentInProgress`] for a cancellation with none.
    pub fn reassign(
        &self,
        image: &MetadataImage,
        topic_id: Uuid,
        partition: i32,
        target: Option<&[BrokerId]>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let state = image
            .partition(topic_id, partition)
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        let original: Vec<BrokerId> = state
            .replicas
            .iter()
            .copied()
            .filter(|replica| !state.adding_replicas.contains(replica))
            .collect();
        let target: Vec<BrokerId> = match target {
            None if !is_reassigning(state) => {
                return Err(ControllerError::NoReassignmentInProgress)
            }
            None => original.clone(),
            Some(target) => {
                let mut sorted = target.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                if target.is_empty()
                    || sorted.len() != target.len()
                    || target.iter().any(|&broker| image.broker(broker).is_none())
                {
                    return Err(ControllerError::InvalidReplicaAssignment);
                }
                target.to_vec()
            }
        };
        if target.iter().all(|replica| state.isr.contains(replica)) {
            return Ok(complete_reassignment(
                image, topic_id, partition, state, &target,
            ));
        }
        let removing: Vec<BrokerId> = original
            .iter()
            .copied()
            .filter(|replica| !target.contains(replica))
            .collect();
        let adding: Vec<BrokerId> = target
            .iter()
            .copied()
            .filter(|replica| !original.contains(replica))
            .collect();
        let replicas: Vec<BrokerId> = target.iter().chain(&removing).copied().collect();
        let mut records = Vec::new();
        if is_reassigning(state) {
            // A reassignment replaced: its adding replicas may leave the replica set.
            records.push(reassignment_record(
                topic_id,
                partition,
                Vec::new(),
                Vec::new(),
            ));
        }
        records.extend(replica_change(
            image, topic_id, partition, state, &replicas, &target,
        ));
        records.push(reassignment_record(topic_id, partition, adding, removing));
        Ok(records)
    }

    /// Moves leadership back to each partition's preferred replica (the first assigned) where
    /// it is in the ISR and eligible.
    pub fn preferred_leader_elections(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for (&topic_id, topic) in image.topics() {
            for (&partition, state) in &topic.partitions {
                let preferred = state.replicas[0];
                if state.leader != preferred
                    && state.isr.contains(&preferred)
                    && image.is_eligible(preferred)
                {
                    records.push(MetadataRecord::PartitionChange {
                        topic_id,
                        partition,
                        isr: None,
                        leader: Some(preferred),
                        replicas: None,
                    });
                }
            }
        }
        records
    }

    /// Partition changes that take `gone` out of every ISR and leadership.
    fn remove_from_partitions(&self, image: &MetadataImage, gone: BrokerId) -> Vec<MetadataRecord> {
        let eligible = |broker: BrokerId| broker != gone && image.is_eligible(broker);
        let mut records = Vec::new();
        for (&topic_id, topic) in image.topics() {
            let unclean = unclean_election_allowed(image, &topic.name);
            let min_isr = image.min_insync_replicas(&topic.name);
            for (&partition, state) in &topic.partitions {
                if !state.isr.contains(&gone) && state.leader != gone {
                    continue;
                }
                let old_elr = image.elr(topic_id, partition);
                let mut elr = old_elr.to_vec();
                let mut isr: Vec<BrokerId> =
                    state.isr.iter().copied().filter(|&b| b != gone).collect();
                if isr.is_empty() {
                    // The last in-sync replica stays in the ISR: it has every committed record.
                    isr = state.isr.clone();
                } else if state.isr.contains(&gone) && isr.len() < min_isr && !elr.contains(&gone) {
                    // Nothing can be committed without it from now on: it stays electable.
                    elr.push(gone);
                }
                let (leader, elr) = if state.leader == gone || state.leader == -1 {
                    elect_with_elr(state, &isr, &elr, eligible, unclean)
                } else {
                    ((state.leader, None), elr)
                };
                records.extend(change(topic_id, partition, state, leader, isr));
                records.extend(elr_change(topic_id, partition, old_elr, elr));
            }
        }
        records
    }

    /// What an earlier decision left undone. A controller proposes a decision's records as
    /// separate raft entries, and a change of quorum leader can commit a prefix of them: a
    /// broker fenced (or shutting down) but still leading or in an ISR, a broker unfenced
    /// without the elections that wait for it. Every tick finishes them from the image: such a
    /// broker leaves its partitions, and a partition without a leader gets its first eligible
    /// in-sync replica. Idempotent: once done (or proposed, in the planning image) there is
    /// nothing to change.
    fn finish_partial_decisions(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        let mut planned: Option<MetadataImage> = None;
        let leaving: Vec<BrokerId> = image
            .brokers()
            .values()
            .filter(|broker| broker.fenced || broker.in_controlled_shutdown)
            .map(|broker| broker.broker_id)
            .collect();
        for broker_id in leaving {
            let view = planned.as_ref().unwrap_or(image);
            let changes = self.remove_from_partitions(view, broker_id);
            if changes.is_empty() {
                continue;
            }
            let next = planned.get_or_insert_with(|| image.clone());
            for record in &changes {
                // Only a scratch copy: the index merely has to increase.
                let _ = next.apply(next.last_applied_index() + 1, record);
            }
            records.extend(changes);
        }
        let view = planned.as_ref().unwrap_or(image);
        records.extend(elect_leaderless(
            view,
            |_| true,
            |broker| view.is_eligible(broker),
        ));
        records
    }

    /// Partition changes that elect `returning` (just unfenced) where a partition waits for it.
    fn elect_returning(&self, image: &MetadataImage, returning: BrokerId) -> Vec<MetadataRecord> {
        elect_leaderless(
            image,
            |state| state.replicas.contains(&returning),
            |broker| broker == returning || image.is_eligible(broker),
        )
    }
}

/// Partition changes that give a leader to every leaderless partition `wanted` picks, from
/// its in-sync replicas that are `eligible` (any eligible replica where unclean election is
/// allowed).
fn elect_leaderless(
    image: &MetadataImage,
    wanted: impl Fn(&PartitionState) -> bool,
    eligible: impl Fn(BrokerId) -> bool,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (&topic_id, topic) in image.topics() {
        let unclean = unclean_election_allowed(image, &topic.name);
        for (&partition, state) in &topic.partitions {
            if state.leader != -1 || !wanted(state) {
                continue;
            }
            let old_elr = image.elr(topic_id, partition);
            let (leader, elr) = elect_with_elr(state, &state.isr, old_elr, &eligible, unclean);
            if leader.0 != -1 {
                records.extend(change(
                    topic_id,
                    partition,
                    state,
                    leader,
                    state.isr.clone(),
                ));
                records.extend(elr_change(topic_id, partition, old_elr, elr));
            }
        }
    }
    records
}

/// New partitions `indexes` of `replication_factor` replicas each, spread over the eligible
/// brokers round-robin from `start`, the first replica preferred leader.
fn place_partitions(
    image: &MetadataImage,
    topic_id: Uuid,
    indexes: std::ops::Range<i32>,
    replication_factor: usize,
    start: usize,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let eligible: Vec<BrokerId> = image
        .brokers()
        .values()
        .filter(|broker| broker.is_eligible())
        .map(|broker| broker.broker_id)
        .collect();
    if replication_factor == 0 || replication_factor > eligible.len() {
        return Err(ControllerError::InvalidReplicationFactor);
    }
    Ok(indexes
        .map(|partition| {
            let first = start + partition as usize;
            let replicas: Vec<BrokerId> = (0..replication_factor)
                .map(|replica| eligible[(first + replica) % eligible.len()])
                .collect();
            MetadataRecord::Partition {
                topic_id,
                partition,
                isr: replicas.clone(),
                leader: replicas[0],
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
            }
        })
        .collect())
}

/// Whether a reassignment is in progress.
fn is_reassigning(state: &PartitionState) -> bool {
    !state.adding_replicas.is_empty() || !state.removing_replicas.is_empty()
}

/// The replicas a reassignment in progress moves to: all but the removing ones.
fn reassignment_target(state: &PartitionState) -> Vec<BrokerId> {
    state
        .replicas
        .iter()
        .copied()
        .filter(|replica| !state.removing_replicas.contains(replica))
        .collect()
}

fn reassignment_record(
    topic_id: Uuid,
    partition: i32,
    adding: Vec<BrokerId>,
    removing: Vec<BrokerId>,
) -> MetadataRecord {
    MetadataRecord::PartitionReassignment {
        topic_id,
        partition,
        adding,
        removing,
    }
}

/// The first of `candidates` in `isr` and eligible, or -1.
fn first_eligible(image: &MetadataImage, candidates: &[BrokerId], isr: &[BrokerId]) -> BrokerId {
    candidates
        .iter()
        .copied()
        .find(|&replica| isr.contains(&replica) && image.is_eligible(replica))
        .unwrap_or(-1)
}

/// The records that make `state`'s replicas `target`, every one of which is in its ISR: the
/// reassignment's lists cleared, the leaving replicas out of the replicas and the ISR, and a
/// new leader from the target if the leader leaves.
fn complete_reassignment(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: i32,
    state: &PartitionState,
    target: &[BrokerId],
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    if is_reassigning(state) {
        records.push(reassignment_record(
            topic_id,
            partition,
            Vec::new(),
            Vec::new(),
        ));
    }
    records.extend(replica_change(
        image, topic_id, partition, state, target, target,
    ));
    records
}

/// The change that makes `state`'s replicas `replicas`: the ISR keeps only those, and a
/// leader that leaves is replaced by the first of `candidates` in the ISR (or none); `None`
/// when nothing changes.
fn replica_change(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: i32,
    state: &PartitionState,
    replicas: &[BrokerId],
    candidates: &[BrokerId],
) -> Option<MetadataRecord> {
    let isr: Vec<BrokerId> = state
        .isr
        .iter()
        .copied()
        .filter(|replica| replicas.contains(replica))
        .collect();
    let leader =
        (!replicas.contains(&state.leader)).then(|| first_eligible(image, candidates, &isr));
    (replicas != state.replicas || isr != state.isr || leader.is_some()).then(|| {
        MetadataRecord::PartitionChange {
            topic_id,
            partition,
            isr: (isr != state.isr).then_some(isr),
            leader,
            replicas: (replicas != state.replicas.as_slice()).then(|| replicas.to_vec()),
        }
    })
}

/// Whether `topic` (or the cluster default) allows unclean leader election.
fn unclean_election_allowed(image: &MetadataImage, topic: &str) -> bool {
    let setting = |resource_type: i8, name: &str| {
        image
            .configs(resource_type, name)
            .and_then(|configs| configs.get(UNCLEAN_LEADER_ELECTION))
            .map(|value| value == "true")
    };
    setting(2, topic)
        .or_else(|| setting(4, ""))
        .unwrap_or(false)
}

/// The record replacing a partition's ELR `old` by `new`, when they differ.
fn elr_change(
    topic_id: Uuid,
    partition: i32,
    old: &[BrokerId],
    new: Vec<BrokerId>,
) -> Option<MetadataRecord> {
    (old != new.as_slice()).then_some(MetadataRecord::PartitionElr {
        topic_id,
        partition,
        elr: new,
    })
}

/// As [`elect`], and when no in-sync replica can lead, the first eligible replica of the ELR
/// (KIP-966), which then forms the ISR alone and leaves the ELR, where the old in-sync
/// replicas take its place. Returns the election and the ELR after it (emptied by an unclean
/// election).
fn elect_with_elr(
    state: &PartitionState,
    isr: &[BrokerId],
    elr: &[BrokerId],
    eligible: impl Fn(BrokerId) -> bool,
    unclean: bool,
) -> ((BrokerId, Option<Vec<BrokerId>>), Vec<BrokerId>) {
    let clean = elect(state, isr, &eligible, false);
    if clean.0 != -1 {
        return (clean, elr.to_vec());
    }
    let from_elr = state
        .replicas
        .iter()
        .find(|&&replica| elr.contains(&replica) && eligible(replica));
    if let Some(&leader) = from_elr {
        let mut rest: Vec<BrokerId> = elr.iter().copied().filter(|&b| b != leader).collect();
        // The in-sync replicas that cannot lead now hold every committed record too.
        for &member in isr {
            if member != leader && !rest.contains(&member) {
                rest.push(member);
            }
        }
        return ((leader, Some(vec![leader])), rest);
    }
    let unclean_choice = elect(state, isr, &eligible, unclean);
    let elr = if unclean_choice.1.is_some() {
        Vec::new()
    } else {
        elr.to_vec()
    };
    (unclean_choice, elr)
}

/// A broker registering without its data (see [`Registration::data_lost`]) leaves every ISR
/// and ELR: where it was the last in-sync replica, an ELR member takes its place (leading if
/// eligible); with none, it stays, as there is no better copy known.
fn forget_lost_replica(image: &MetadataImage, lost: BrokerId) -> Vec<MetadataRecord> {
    let eligible = |broker: BrokerId| broker != lost && image.is_eligible(broker);
    let mut records = Vec::new();
    for (&topic_id, topic) in image.topics() {
        let unclean = unclean_election_allowed(image, &topic.name);
        for (&partition, state) in &topic.partitions {
            let old_elr = image.elr(topic_id, partition);
            if !state.isr.contains(&lost) && state.leader != lost && !old_elr.contains(&lost) {
                continue;
            }
            let mut elr: Vec<BrokerId> = old_elr.iter().copied().filter(|&b| b != lost).collect();
            let mut isr: Vec<BrokerId> = state.isr.iter().copied().filter(|&b| b != lost).collect();
            if isr.is_empty() {
                match state.replicas.iter().find(|replica| elr.contains(replica)) {
                    Some(&holder) => {
                        isr = vec![holder];
                        elr.retain(|&b| b != holder);
                    }
                    None => isr = state.isr.clone(),
                }
            }
            let (leader, elr) =
                if state.leader == lost || state.leader == -1 || !isr.contains(&state.leader) {
                    elect_with_elr(state, &isr, &elr, eligible, unclean)
                } else {
                    ((state.leader, None), elr)
                };
            records.extend(change(topic_id, partition, state, leader, isr));
            records.extend(elr_change(topic_id, partition, old_elr, elr));
        }
    }
    records
}

/// The leader for a partition whose ISR is `isr`: the first eligible ISR member in assignment
/// order; failing that, with `unclean`, the first eligible replica, which then forms the ISR
/// alone (returned as the second value); else none (-1).
fn elect(
    state: &PartitionState,
    isr: &[BrokerId],
    eligible: impl Fn(BrokerId) -> bool,
    unclean: bool,
) -> (BrokerId, Option<Vec<BrokerId>>) {
    if let Some(&leader) = state
        .replicas
        .iter()
        .find(|&&replica| isr.contains(&replica) && eligible(replica))
    {
        return (leader, None);
    }
    if unclean {
        if let Some(&leader) = state.replicas.iter().find(|&&replica| eligible(replica)) {
            return (leader, Some(vec![leader]));
        }
    }
    (-1, None)
}

/// The change from `state` to `leader` and `isr` (or the unclean ISR `leader` came with), if
/// anything changes.
fn change(
    topic_id: Uuid,
    partition: i32,
    state: &PartitionState,
    (leader, unclean_isr): (BrokerId, Option<Vec<BrokerId>>),
    isr: Vec<BrokerId>,
) -> Option<MetadataRecord> {
    let isr = unclean_isr.unwrap_or(isr);
    let isr = (isr != state.isr).then_some(isr);
    let leader = (leader != state.leader).then_some(leader);
    (isr.is_some() || leader.is_some()).then_some(MetadataRecord::PartitionChange {
        topic_id,
        partition,
        isr,
        leader,
        replicas: None,
    })
}
