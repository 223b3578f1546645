//! The consumer: partitions either assigned by the caller (Kafka's `assign()`) or shared out
//! by a consumer group (`subscribe()`, with the `range`, `roundrobin` or `cooperative-sticky`
//! assignor), read from positions set by `seek`, by the group's committed offsets or by
//! `auto.offset.reset`.
//!
//! Each partition is read from its leader, found in metadata (and again when a partition says
//! its leader moved), over one connection per leader. Fetching is pipelined: when `poll` hands
//! records out, the next Fetch to each leader, for the partitions with nothing left in the
//! buffer, is already on the wire, so the brokers work while the application does. A response that arrives for a partition sought, revoked or reset in the meantime is
//! dropped: data is taken only at the offset it was asked for.
//!
//! Positions move only as `poll` returns records, so a commit (automatic every
//! `auto.commit.interval.ms`, or by `commit`/`commit_async`) never covers a record the
//! application has not been given: at-least-once unless the application commits before it
//! processes.
//!
//! Group membership (joins, heartbeats, commits) is in [`super::membership`]; joining happens
//! inside `poll`, which may then block past its timeout while the group rebalances (at most the
//! rebalance timeout, `max.poll.interval.ms`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::aborted::AbortedFilter;
use super::assignor::{self, Subscription, TopicPartition};
use super::config::{Assignor, ConsumerConfig, OffsetReset};
use super::connection::{response_of, Connection, InFlight};
use super::error::ClientError;
use super::group::{self, Identity};
use super::membership::{is_coordinator_error, CommitCallback, Generation, Membership};
use super::transaction::GroupMetadata;
use crate::storage::batch::BatchHeader;

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// An offset.
    Offset(i64),
    /// The log start.
    Beginning,
    /// The log end: only records produced from now on.
    End,
    /// The first record at or after a timestamp (ms).
    Timestamp(i64),
}

/// Told when the group moves partitions to or from this consumer. Each method runs inside
/// `poll` (or `close`) on the application's thread and may use the consumer: commit, seek,
/// read positions.
pub trait RebalanceListener: Send {
    /// Partitions about to be taken away, while their offsets can still be committed.
    fn on_partitions_revoked(&mut self, consumer: &mut Consumer, partitions: &[TopicPartition]) {
        let _ = (consumer, partitions);
    }

    /// Partitions just given to this consumer (with the eager assignors, all of them; with
    /// `cooperative-sticky`, the new ones), before their positions are looked up.
    fn on_partitions_assigned(&mut self, consumer: &mut Consumer, partitions: &[TopicPartition]) {
        let _ = (consumer, partitions);
    }

    /// Partitions this consumer lost without a rebalance (it was removed from the group):
    /// another member may own them already, so committing them fails. By default, the same
    /// as a revocation.
    fn on_partitions_lost(&mut self, consumer: &mut Consumer, partitions: &[TopicPartition]) {
        self.on_partitions_revoked(consumer, partitions);
    }
}

/// One assigned partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset `poll` returns; `None` until found.
    position: Option<i64>,
    /// The next offset to fetch: past the buffered records.
    fetch_offset: Option<i64>,
    /// A seek to apply at the next poll.
    pending_seek: Option<StartAt>,
    /// OFFSET_OUT_OF_RANGE was met: start over by `auto.offset.reset`, not the committed offset.
    reset: bool,
    high_watermark: Option<i64>,
    paused: bool,
    buffered: VecDeque<ConsumerRecord>,
}

impl PartitionState {
    fn clear_position(&mut self) {
        self.position = None;
        self.fetch_offset = None;
        self.buffered.clear();
    }
}

/// Partition leaders and broker addresses, from metadata.
#[derive(Debug, Default)]
struct Leaders {
    brokers: BTreeMap<i32, String>,
    leader_of: BTreeMap<TopicPartition, i32>,
    /// A partition answered NOT_LEADER_OR_FOLLOWER (or the like): ask again.
    stale: bool,
}

/// A Fetch on the wire, with the offset asked for each partition.
#[derive(Debug)]
struct FetchInFlight {
    request: InFlight,
    offsets: BTreeMap<TopicPartition, i64>,
}

/// The consumer's state in its group.
#[derive(Debug)]
struct GroupState {
    membership: Membership,
    /// This thread's connection to the coordinator (joins, syncs, committed offsets).
    coordinator: Option<Connection>,
    /// Subscribed topics, sorted; empty when not subscribed.
    subscription: Vec<String>,
    generation: Generation,
    /// In a generation whose assignment this consumer holds.
    joined: bool,
    /// A rejoin asked for by this side (new subscription, partitions revoked cooperatively,
    /// partition counts changed).
    rejoin: bool,
    /// Partition counts of the subscribed topics at the last join.
    partition_counts: BTreeMap<String, i32>,
    next_metadata_check: Instant,
    next_auto_commit: Instant,
}

/// A consumer. See the module docs.
pub struct Consumer {
    config: ConsumerConfig,
    /// To a bootstrap server: metadata.
    connection: Connection,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Where each partition is read from, and the brokers' addresses.
    leaders: Leaders,
    /// Per leader: the connection that fetches (and lists offsets) there.
    links: BTreeMap<i32, Connection>,
    /// Per leader: its Fetch on the wire.
    fetches: BTreeMap<i32, FetchInFlight>,
    /// Where the next drain of buffered records starts, so partitions take turns.
    drain_from: usize,
    group: Option<GroupState>,
    listener: Option<Box<dyn RebalanceListener>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Consumer")
            .field("partitions", &self.partitions.keys().collect::<Vec<_>>())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Partition errors after which the partition is fetched again later rather than failing
/// `poll`: leadership moving, a topic being created.
fn is_retriable_partition_error(code: i16) -> bool {
    [
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::UnknownTopicOrPartition,
        ResponseError::ReplicaNotAvailable,
        ResponseError::KafkaStorageError,
        ResponseError::FencedLeaderEpoch,
        ResponseError::UnknownLeaderEpoch,
    ]
    .iter()
    .any(|error| error.code() == code)
}

impl Consumer {
    /// A consumer connected to the first reachable bootstrap server; with a `group.id`, its
    /// coordinator worker starts too (it joins at the first poll after `subscribe`).
    ///
    /// # Errors
    /// When no bootstrap server answers.
    pub fn new(config: ConsumerConfig) -> Result<Consumer, ClientError> {
        let connection = Connection::open_any(&config.common)?;
        let group = config.group_id.as_ref().map(|_| GroupState {
            membership: Membership::start(&config),
            coordinator: None,
            subscription: Vec::new(),
            generation: Generation::none(),
            joined: false,
            rejoin: false,
            partition_counts: BTreeMap::new(),
            next_metadata_check: Instant::now(),
            next_auto_commit: Instant::now()
                + Duration::from_millis(config.auto_commit_interval_ms),
        });
        Ok(Consumer {
            config,
            connection,
            partitions: BTreeMap::new(),
            leaders: Leaders::default(),
            links: BTreeMap::new(),
            fetches: BTreeMap::new(),
            drain_from: 0,
            group,
            listener: None,
        })
    }

    /// Sets the listener told of partitions assigned, revoked and lost.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// Every partition of `topic`, from metadata.
    ///
    /// # Errors
    /// The topic's error (UNKNOWN_TOPIC_OR_PARTITION when it does not exist).
    pub fn partitions_of(&mut self, topic: &str) -> Result<Vec<i32>, ClientError> {
        let counts = self.partition_counts(&[topic.to_owned()], true)?;
        Ok((0..counts.get(topic).copied().unwrap_or(0)).collect())
    }

    /// The partition count of each of `topics` that exists; with `strict`, a topic's error
    /// fails the call instead of leaving the topic out.
    fn partition_counts(
        &mut self,
        topics: &[String],
        strict: bool,
    ) -> Result<BTreeMap<String, i32>, ClientError> {
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(
                topics
                    .iter()
                    .map(|topic| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(text(topic))))
                    })
                    .collect(),
            ));
        let (_, response) = self
            .connection
            .call(ApiKey::Metadata, RequestKind::Metadata(request))?;
        let response = response_of!(response, Metadata)?;
        let mut counts = BTreeMap::new();
        for topic in response.topics {
            let name = topic
                .name
                .map(|name| name.0.to_string())
                .unwrap_or_default();
            if topic.error_code != 0 {
                if strict {
                    ClientError::check(topic.error_code, Some(format!("topic {name}")))?;
                }
                continue;
            }
            let count = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
            for partition in &topic.partitions {
                self.leaders.leader_of.insert(
                    (name.clone(), partition.partition_index),
                    partition.leader_id.0,
                );
            }
            counts.insert(name, count);
        }
        for broker in response.brokers {
            self.leaders
                .brokers
                .insert(broker.node_id.0, format!("{}:{}", broker.host, broker.port));
        }
        Ok(counts)
    }

    /// Reads exactly these partitions from now on (Kafka's `assign`), ending any subscription.
    /// Partitions kept keep their positions.
    pub fn assign(&mut self, partitions: &[TopicPartition]) {
        if self
            .group
            .as_ref()
            .is_some_and(|group| !group.subscription.is_empty())
        {
            self.unsubscribe();
        }
        self.set_assignment(partitions);
    }

    fn set_assignment(&mut self, partitions: &[TopicPartition]) {
        let wanted: BTreeSet<&TopicPartition> = partitions.iter().collect();
        self.partitions.retain(|key, _| wanted.contains(key));
        for partition in partitions {
            self.partitions.entry(partition.clone()).or_default();
        }
    }

    /// Joins the group to share the partitions of `topics` with its other members. The join
    /// happens at the next poll.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without a `group.id`.
    pub fn subscribe(&mut self, topics: &[String]) -> Result<(), ClientError> {
        let Some(group) = self.group.as_mut() else {
            return Err(ClientError::InvalidState(
                "subscribe needs a group.id; use assign to read without a group".into(),
            ));
        };
        let mut topics = topics.to_vec();
        topics.sort();
        topics.dedup();
        if group.subscription.is_empty() {
            // From assign() to subscribe(): the group decides the partitions now.
            self.partitions.clear();
        }
        if group.subscription != topics {
            group.subscription = topics;
            group.rejoin = true;
        }
        Ok(())
    }

    /// The subscribed topics.
    pub fn subscription(&self) -> Vec<String> {
        self.group
            .as_ref()
            .map(|group| group.subscription.clone())
            .unwrap_or_default()
    }

    /// Leaves the group (after revoking the partitions and, with auto commit, committing
    /// their positions) and reads nothing until the next `subscribe` or `assign`.
    pub fn unsubscribe(&mut self) {
        self.revoke_all_and_leave();
        if let Some(group) = self.group.as_mut() {
            group.subscription.clear();
            group.rejoin = false;
        }
        self.partitions.clear();
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// This member's id and generation in its group (`None` before it joined).
    pub fn group_generation(&self) -> Option<Generation> {
        self.group
            .as_ref()
            .filter(|group| group.joined)
            .map(|group| group.generation.clone())
    }

    fn state(&mut self, topic: &str, partition: i32) -> Result<&mut PartitionState, ClientError> {
        self.partitions
            .get_mut(&(topic.to_owned(), partition))
            .ok_or_else(|| {
                ClientError::InvalidState(format!(
                    "{topic}-{partition} is not assigned to this consumer"
                ))
            })
    }

    /// Moves a partition's position; applied at the next poll.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] for a partition not assigned.
    pub fn seek(&mut self, topic: &str, partition: i32, start: StartAt) -> Result<(), ClientError> {
        let state = self.state(topic, partition)?;
        state.clear_position();
        state.pending_seek = Some(start);
        state.reset = false;
        Ok(())
    }

    /// The next offset `poll` returns for a partition, once known.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|state| state.position)
    }

    /// The high watermark of a partition as its last fetch reported it.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|state| state.high_watermark)
    }

    /// Records of a partition not yet returned by `poll`: the high watermark of its last fetch
    /// less its position.
    pub fn lag(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&(topic.to_owned(), partition))?;
        Some((state.high_watermark? - state.position?).max(0))
    }

    /// Stops returning and fetching records of these partitions until `resume`.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] for a partition not assigned.
    pub fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        for (topic, partition) in partitions {
            self.state(topic, *partition)?.paused = true;
        }
        Ok(())
    }

    /// Undoes `pause`.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] for a partition not assigned.
    pub fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        for (topic, partition) in partitions {
            self.state(topic, *partition)?.paused = false;
        }
        Ok(())
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.partitions
            .iter()
            .filter(|(_, state)| state.paused)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Whether every assigned partition has been read up to the high watermark its last
    /// fetch reported, and nothing read is waiting to be polled (kcat's `-e`).
    pub fn at_end(&self) -> bool {
        !self.partitions.is_empty()
            && self.partitions.values().all(|state| {
                state.buffered.is_empty()
                    && matches!((state.position, state.high_watermark), (Some(position), Some(high)) if position >= high)
            })
    }

    /// For each partition, the first offset at or after a timestamp (ms), or `None` when no
    /// record is that recent.
    ///
    /// # Errors
    /// A failed request or a partition's error.
    pub fn offsets_for_times(
        &mut self,
        timestamps: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, ClientError> {
        let mut offsets = BTreeMap::new();
        for ((topic, partition), timestamp) in timestamps {
            let offset = self
                .leader_link(topic, *partition)?
                .list_offset(topic, *partition, *timestamp)?;
            offsets.insert((topic.clone(), *partition), (offset >= 0).then_some(offset));
        }
        Ok(offsets)
    }

    /// The log start (`beginning`) or end of each partition.
    ///
    /// # Errors
    /// A failed request or a partition's error.
    pub fn watermarks(&mut self, topic: &str, partition: i32) -> Result<(i64, i64), ClientError> {
        let connection = self.leader_link(topic, partition)?;
        let start = connection.list_offset(topic, partition, -2)?;
        let end = connection.list_offset(topic, partition, -1)?;
        Ok((start, end))
    }

    /// The positions of the assigned partitions that have one: what `commit` commits.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.partitions
            .iter()
            .filter_map(|(key, state)| Some((key.clone(), state.position?)))
            .collect()
    }

    fn commit_generation(&self) -> Generation {
        match &self.group {
            Some(group) if !group.subscription.is_empty() => group.generation.clone(),
            _ => Generation::none(),
        }
    }

    /// The group, member and generation this consumer commits as, for a transactional
    /// producer's [`send_offsets_to_transaction`](super::producer::Producer::send_offsets_to_transaction)
    /// (Kafka's `groupMetadata`).
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without a `group.id`.
    pub fn group_metadata(&self) -> Result<GroupMetadata, ClientError> {
        let group_id = self.membership()?.group_id().to_owned();
        let generation = self.commit_generation();
        Ok(GroupMetadata {
            group_id,
            generation_id: generation.generation,
            member_id: generation.member_id,
            group_instance_id: self.config.group_instance_id.clone(),
        })
    }

    fn membership(&self) -> Result<&Membership, ClientError> {
        self.group
            .as_ref()
            .map(|group| &group.membership)
            .ok_or_else(|| ClientError::InvalidState("committing needs a group.id".into()))
    }

    /// Commits `offsets` (the next offset to read of each partition), or the positions of
    /// every assigned partition, and waits for the coordinator's answer.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without a `group.id`; REBALANCE_IN_PROGRESS,
    /// ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID when the group moved on (the partitions may
    /// belong to another member now); a coordinator that stayed unreachable.
    pub fn commit(
        &mut self,
        offsets: Option<BTreeMap<TopicPartition, i64>>,
    ) -> Result<(), ClientError> {
        self.membership()?;
        let offsets = offsets.unwrap_or_else(|| self.positions());
        if offsets.is_empty() {
            return Ok(());
        }
        let generation = self.commit_generation();
        self.membership()?.commit_sync(offsets, generation)
    }

    /// Queues a commit like [`Consumer::commit`] without waiting; commits are sent in the order
    /// they are made. `callback` gets the outcome on the coordinator worker's thread.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without a `group.id`.
    pub fn commit_async(
        &mut self,
        offsets: Option<BTreeMap<TopicPartition, i64>>,
        callback: Option<CommitCallback>,
    ) -> Result<(), ClientError> {
        let offsets = offsets.unwrap_or_else(|| self.positions());
        let generation = self.commit_generation();
        let membership = self.membership()?;
        if offsets.is_empty() {
            if let Some(callback) = callback {
                callback(Ok(()));
            }
            return Ok(());
        }
        membership.commit_async(offsets, generation, callback);
        Ok(())
    }

    /// The group's committed offsets for `partitions` (those without one are left out).
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without a `group.id`, or a failed request.
    pub fn committed(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let group_id =
            self.config.group_id.clone().ok_or_else(|| {
                ClientError::InvalidState("committed offsets need a group.id".into())
            })?;
        // A read_committed consumer waits for offsets an open transaction committed (the
        // Java client's `requireStable`).
        let require_stable = self.config.read_committed;
        self.on_coordinator(|connection| {
            group::fetch_committed(connection, &group_id, Some(partitions), require_stable)
        })
    }

    /// Runs `call` on this thread's coordinator connection, finding the coordinator again and
    /// retrying after coordinator errors until `request.timeout.ms`.
    fn on_coordinator<T>(
        &mut self,
        mut call: impl FnMut(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.config.common.request_timeout_ms);
        let backoff = Duration::from_millis(self.config.common.retry_backoff_ms.max(10));
        let group = self
            .group
            .as_mut()
            .ok_or_else(|| ClientError::InvalidState("no group.id".into()))?;
        loop {
            let mut connection = match group.coordinator.take() {
                Some(connection) => connection,
                None => group.membership.connect_coordinator()?,
            };
            match call(&mut connection) {
                Err(error)
                    if is_coordinator_error(&error)
                        || error.is(ResponseError::UnstableOffsetCommit) =>
                {
                    if Instant::now() + backoff >= deadline {
                        return Err(error);
                    }
                    std::thread::sleep(backoff);
                }
                result => {
                    group.coordinator = Some(connection);
                    return result;
                }
            }
        }
    }

    /// Records, waiting up to `timeout` for some; empty when none arrived. In a group, this is
    /// also where the consumer joins and rebalances.
    ///
    /// # Errors
    /// A failed request, a group error this consumer cannot recover from (FENCED_INSTANCE_ID,
    /// GROUP_MAX_SIZE_REACHED, INCONSISTENT_GROUP_PROTOCOL, ...), or OFFSET_OUT_OF_RANGE with
    /// `auto.offset.reset=none`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        self.poll_at_most(timeout, self.config.max_poll_records)
    }

    /// As [`Consumer::poll`], returning at most `max_records` records (at least one is asked
    /// for) instead of `max.poll.records`.
    ///
    /// # Errors
    /// As [`Consumer::poll`].
    pub fn poll_at_most(
        &mut self,
        timeout: Duration,
        max_records: usize,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        let max_records = max_records.max(1);
        let deadline = Instant::now() + timeout;
        if let Some(group) = &self.group {
            group.membership.polled();
        }
        let backoff = Duration::from_millis(self.config.common.retry_backoff_ms.max(10));
        loop {
            match self.poll_until(deadline, max_records) {
                // A broker went away (a restart, say): carry on from the positions, which only
                // ever move past records handed out, once it or another is back; until then
                // the poll comes back empty at its deadline.
                Err(error) if error.is_disconnect() => {
                    tracing::debug!(%error, "a connection failed; reconnecting");
                    self.forget_links();
                    if Instant::now() + backoff >= deadline {
                        return Ok(Vec::new());
                    }
                    std::thread::sleep(backoff);
                    if let Ok(connection) = Connection::open_any(&self.config.common) {
                        self.connection = connection;
                    }
                }
                other => return other,
            }
        }
    }

    /// Drops every leader connection with its fetch (the partitions are still at the offsets
    /// those fetches asked for, so the next ones ask again) and the leaders they went to.
    fn forget_links(&mut self) {
        self.fetches.clear();
        self.links.clear();
        self.leaders.stale = true;
    }

    fn poll_until(
        &mut self,
        deadline: Instant,
        max_records: usize,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        loop {
            self.maintain_group()?;
            self.refresh_leaders()?;
            self.resolve_positions()?;
            let records = self.drain(max_records);
            if !records.is_empty() {
                let wait_ms = self.config.fetch_max_wait_ms;
                self.send_fetches(wait_ms)?;
                return Ok(records);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_ms = i32::try_from(left.as_millis())
                .unwrap_or(i32::MAX)
                .min(self.config.fetch_max_wait_ms);
            self.send_fetches(wait_ms)?;
            if self.fetches.is_empty() {
                // Nothing to fetch (no partitions yet, all paused, leaders unknown): wait a
                // little, with an eye on the group.
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
                continue;
            }
            // Wait for a response until the deadline; fetches still out then stay in flight
            // for the next poll.
            let ready = self.wait_for_fetches(left)?;
            if ready.is_empty() {
                return Ok(Vec::new());
            }
            for leader in ready {
                self.complete_fetch(leader)?;
            }
            if Instant::now() >= deadline
                && self
                    .partitions
                    .values()
                    .all(|state| state.paused || state.buffered.is_empty())
            {
                return Ok(Vec::new());
            }
        }
    }

    /// Learns the leaders of assigned partitions that have none known, or of all after a
    /// partition said its leader moved.
    fn refresh_leaders(&mut self) -> Result<(), ClientError> {
        let unknown = self
            .partitions
            .keys()
            .any(|key| !self.leaders.leader_of.contains_key(key));
        if !unknown && !self.leaders.stale {
            return Ok(());
        }
        let topics: BTreeSet<String> = self
            .partitions
            .keys()
            .map(|(topic, _)| topic.clone())
            .collect();
        let topics: Vec<String> = topics.into_iter().collect();
        self.partition_counts(&topics, false)?;
        self.leaders.stale = false;
        Ok(())
    }

    /// The connection to the leader of a partition, with no Fetch in flight on it (one that is
    /// is read first, its records kept for partitions still at the offsets it asked).
    fn leader_link(&mut self, topic: &str, partition: i32) -> Result<&mut Connection, ClientError> {
        let key = (topic.to_owned(), partition);
        if !self.leaders.leader_of.contains_key(&key) {
            self.partition_counts(&[topic.to_owned()], false)?;
        }
        let leader = self.leaders.leader_of.get(&key).copied().ok_or_else(|| {
            ClientError::from_code(
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!("{topic}-{partition}")),
            )
        })?;
        if self.fetches.contains_key(&leader) {
            self.complete_fetch(leader)?;
        }
        self.link(leader)
    }

    /// The connection to broker `leader`, opened when needed.
    fn link(&mut self, leader: i32) -> Result<&mut Connection, ClientError> {
        if !self.links.contains_key(&leader) {
            let address = self.leaders.brokers.get(&leader).cloned().ok_or_else(|| {
                ClientError::from_code(ResponseError::LeaderNotAvailable.code(), None)
            })?;
            let timeout = Duration::from_millis(self.config.common.request_timeout_ms);
            let connection = Connection::open(&address, &self.config.common.client_id, timeout)?;
            self.links.insert(leader, connection);
        }
        Ok(self.links.get_mut(&leader).expect("just opened"))
    }

    /// The leaders whose Fetch response has started to arrive, waiting up to `timeout` for one.
    fn wait_for_fetches(&mut self, timeout: Duration) -> Result<Vec<i32>, ClientError> {
        let leaders: Vec<i32> = self.fetches.keys().copied().collect();
        let mut fds: Vec<libc::pollfd> = leaders
            .iter()
            .map(|leader| libc::pollfd {
                fd: self.links[leader].raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout_ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        let count = libc::nfds_t::try_from(fds.len()).expect("few connections");
        // SAFETY: `fds` is a valid array of `count` pollfd entries for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(ClientError::Io {
                address: "poll(2)".into(),
                source: error,
            });
        }
        Ok(leaders
            .into_iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents != 0)
            .map(|(leader, _)| leader)
            .collect())
    }

    /// Reads the response of `leader`'s Fetch and buffers its records.
    fn complete_fetch(&mut self, leader: i32) -> Result<(), ClientError> {
        let Some(fetch) = self.fetches.remove(&leader) else {
            return Ok(());
        };
        let link = self.links.get_mut(&leader).expect("a fetch has its link");
        let response = link.receive(fetch.request)?;
        self.fetch_completed(&fetch.offsets, response)
    }

    /// Up to `max_records` buffered records, partitions taking turns; moves positions.
    fn drain(&mut self, max_records: usize) -> Vec<ConsumerRecord> {
        let mut records = Vec::new();
        let count = self.partitions.len();
        if count == 0 {
            return records;
        }
        let start = self.drain_from % count;
        self.drain_from = self.drain_from.wrapping_add(1);
        let keys: Vec<TopicPartition> = self
            .partitions
            .keys()
            .cycle()
            .skip(start)
            .take(count)
            .cloned()
            .collect();
        for key in keys {
            let state = self.partitions.get_mut(&key).expect("key from the map");
            if state.paused {
                continue;
            }
            while records.len() < max_records {
                let Some(record) = state.buffered.pop_front() else {
                    break;
                };
                state.position = Some(record.offset + 1);
                records.push(record);
            }
            if state.buffered.is_empty() && state.fetch_offset.is_some() {
                // Past control records and compacted gaps too.
                state.position = state.fetch_offset;
            }
            if records.len() >= self.config.max_poll_records {
                break;
            }
        }
        records
    }

    /// Turns pending seeks and unknown positions into offsets: a seek, else the group's
    /// committed offset, else `auto.offset.reset`.
    fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let unknown: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.position.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let from_group: Vec<TopicPartition> = unknown
            .iter()
            .filter(|key| {
                let state = &self.partitions[*key];
                state.pending_seek.is_none() && !state.reset
            })
            .cloned()
            .collect();
        let committed = if self.group.is_some() && !from_group.is_empty() {
            self.committed(&from_group)?
        } else {
            BTreeMap::new()
        };
        for key in unknown {
            let state = self.partitions.get_mut(&key).expect("key from the map");
            let start = match (state.pending_seek.take(), committed.get(&key)) {
                (Some(start), _) => start,
                (None, Some(offset)) if !state.reset => StartAt::Offset(*offset),
                _ => match self.config.auto_offset_reset {
                    OffsetReset::Earliest => StartAt::Beginning,
                    OffsetReset::Latest => StartAt::End,
                    OffsetReset::None => {
                        return Err(ClientError::InvalidState(format!(
                            "no position for {}-{} and auto.offset.reset=none",
                            key.0, key.1
                        )))
                    }
                },
            };
            let (topic, partition) = (&key.0, key.1);
            let offset = match start {
                StartAt::Offset(offset) => offset,
                StartAt::Beginning => self
                    .leader_link(topic, partition)?
                    .list_offset(topic, partition, -2)?,
                StartAt::End => self
                    .leader_link(topic, partition)?
                    .list_offset(topic, partition, -1)?,
                StartAt::Timestamp(timestamp) => {
                    let connection = self.leader_link(topic, partition)?;
                    match connection.list_offset(topic, partition, timestamp)? {
                        -1 => connection.list_offset(topic, partition, -1)?,
                        offset => offset,
                    }
                }
            };
            let state = self.partitions.get_mut(&key).expect("key from the map");
            state.position = Some(offset);
            state.fetch_offset = Some(offset);
            state.reset = false;
        }
        Ok(())
    }

    /// Sends a Fetch to each leader without one in flight, for its partitions with a known
    /// offset, nothing buffered and not paused.
    fn send_fetches(&mut self, wait_ms: i32) -> Result<(), ClientError> {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (key, state) in &self.partitions {
            let Some(offset) = state.fetch_offset else {
                continue;
            };
            if state.paused || !state.buffered.is_empty() {
                continue;
            }
            match self.leaders.leader_of.get(key) {
                Some(&leader) if leader >= 0 => {
                    by_leader
                        .entry(leader)
                        .or_default()
                        .push((key.clone(), offset));
                }
                _ => self.leaders.stale = true,
            }
        }
        for (leader, wanted) in by_leader {
            if self.fetches.contains_key(&leader) {
                continue;
            }
            let mut topics: Vec<fetch_request::FetchTopic> = Vec::new();
            for ((topic, partition), offset) in &wanted {
                let partition = fetch_request::FetchPartition::default()
                    .with_partition(*partition)
                    .with_fetch_offset(*offset)
                    .with_partition_max_bytes(self.config.max_partition_fetch_bytes);
                match topics.last_mut() {
                    Some(entry) if entry.topic.0.as_str() == topic => {
                        entry.partitions.push(partition);
                    }
                    _ => topics.push(
                        fetch_request::FetchTopic::default()
                            .with_topic(TopicName(text(topic)))
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(wait_ms.max(0))
                .with_min_bytes(self.config.fetch_min_bytes)
                .with_max_bytes(self.config.fetch_max_bytes)
                .with_isolation_level(i8::from(self.config.read_committed))
                .with_session_epoch(-1)
                .with_topics(topics);
            let request = self
                .link(leader)?
                .send(ApiKey::Fetch, &RequestKind::Fetch(request))?;
            self.fetches.insert(
                leader,
                FetchInFlight {
                    request,
                    offsets: wanted.into_iter().collect(),
                },
            );
        }
        Ok(())
    }

    /// Buffers the records of a Fetch response, for partitions still at the offset asked.
    fn fetch_completed(
        &mut self,
        asked: &BTreeMap<TopicPartition, i64>,
        response: ResponseKind,
    ) -> Result<(), ClientError> {
        let response = response_of!(response, Fetch)?;
        ClientError::check(response.error_code, None)?;
        let mut backoff = false;
        for topic in response.responses {
            let name = topic.topic.0.to_string();
            for partition in topic.partitions {
                let key = (name.clone(), partition.partition_index);
                let Some(&offset) = asked.get(&key) else {
                    continue;
                };
                let Some(state) = self.partitions.get_mut(&key) else {
                    continue; // revoked meanwhile
                };
                if state.fetch_offset != Some(offset) || !state.buffered.is_empty() {
                    continue; // sought meanwhile
                }
                let code = partition.error_code;
                if code == ResponseError::OffsetOutOfRange.code() {
                    if self.config.auto_offset_reset == OffsetReset::None {
                        return Err(ClientError::from_code(
                            code,
                            Some(format!("{name}-{}", key.1)),
                        ));
                    }
                    state.clear_position();
                    state.reset = true;
                    continue;
                }
                if is_retriable_partition_error(code) {
                    backoff = true;
                    self.leaders.stale = true;
                    continue;
                }
                ClientError::check(code, Some(format!("{name}-{}", key.1)))?;
                state.high_watermark = Some(partition.high_watermark);
                let Some(mut records) = partition.records else {
                    continue;
                };
                let mut next = offset;
                let mut aborted = AbortedFilter::new(partition.aborted_transactions);
                while !records.is_empty() {
                    // A partial batch at the end of a response is cut off by max bytes.
                    let batch_end = BatchHeader::parse(&records).map(|header| header.next_offset());
                    let Ok(set) = RecordBatchDecoder::decode(&mut records) else {
                        break;
                    };
                    let skip_batch = aborted.skips(&set.records);
                    for record in set.records {
                        if skip_batch || record.control || record.offset < offset {
                            next = next.max(record.offset + 1);
                            continue;
                        }
                        next = record.offset + 1;
                        state.buffered.push_back(ConsumerRecord {
                            topic: name.clone(),
                            partition: key.1,
                            offset: record.offset,
                            timestamp_ms: record.timestamp,
                            key: record.key,
                            value: record.value,
                            headers: record
                                .headers
                                .into_iter()
                                .map(|(key, value)| (key.to_string(), value))
                                .collect(),
                        });
                    }
                    // A compacted batch may end past its last record, or hold none.
                    if let Ok(batch_end) = batch_end {
                        next = next.max(batch_end);
                    }
                }
                state.fetch_offset = Some(next);
            }
        }
        if backoff {
            std::thread::sleep(Duration::from_millis(self.config.common.retry_backoff_ms));
        }
        Ok(())
    }

    /// The group's part of a poll: rejoin when the group or this consumer asks for it, and
    /// commit automatically when due.
    fn maintain_group(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        if group.subscription.is_empty() {
            return self.auto_commit();
        }
        let signals = group.membership.take_signals();
        if signals.lost && group.joined {
            group.joined = false;
            group.generation = Generation::none();
            let lost = self.assignment();
            tracing::info!(group = %self.membership()?.group_id(), "lost partitions {lost:?}: no longer in the group");
            self.partitions.clear();
            self.call_listener(|listener, consumer| listener.on_partitions_lost(consumer, &lost));
        }
        let group = self.group.as_mut().expect("checked above");
        if signals.rejoin {
            group.rejoin = true;
        }
        if group.joined && Instant::now() >= group.next_metadata_check {
            group.next_metadata_check =
                Instant::now() + Duration::from_millis(self.config.common.metadata_max_age_ms);
            let topics = group.subscription.clone();
            let counts = self.partition_counts(&topics, false)?;
            let group = self.group.as_mut().expect("checked above");
            if counts != group.partition_counts {
                tracing::info!("partition counts of the subscription changed; rejoining");
                group.rejoin = true;
            }
        }
        let group = self.group.as_ref().expect("checked above");
        if !group.joined || group.rejoin {
            self.join()?;
        }
        self.auto_commit()
    }

    fn auto_commit(&mut self) -> Result<(), ClientError> {
        if !self.config.enable_auto_commit {
            return Ok(());
        }
        let interval = Duration::from_millis(self.config.auto_commit_interval_ms);
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        if Instant::now() < group.next_auto_commit {
            return Ok(());
        }
        group.next_auto_commit = Instant::now() + interval;
        self.commit_async(None, None)
    }

    /// Runs the listener, if any, with this consumer.
    fn call_listener(&mut self, call: impl FnOnce(&mut dyn RebalanceListener, &mut Consumer)) {
        if let Some(mut listener) = self.listener.take() {
            call(listener.as_mut(), self);
            // A listener that set another listener wins.
            if self.listener.is_none() {
                self.listener = Some(listener);
            }
        }
    }

    fn cooperative(&self) -> bool {
        self.config
            .assignors
            .iter()
            .all(|assignor| *assignor == Assignor::CooperativeSticky)
    }

    /// Revokes partitions: commits their positions (with auto commit) and tells the listener.
    fn revoke(&mut self, partitions: &[TopicPartition]) {
        if partitions.is_empty() {
            return;
        }
        if self.config.enable_auto_commit {
            let offsets: BTreeMap<TopicPartition, i64> = self
                .positions()
                .into_iter()
                .filter(|(key, _)| partitions.contains(key))
                .collect();
            if let Err(error) = self.commit(Some(offsets)) {
                tracing::warn!(%error, "committing revoked partitions failed");
            }
        }
        self.call_listener(|listener, consumer| {
            listener.on_partitions_revoked(consumer, partitions)
        });
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }

    /// Joins the group and takes the assignment of the new generation.
    fn join(&mut self) -> Result<(), ClientError> {
        let cooperative = self.cooperative();
        if !cooperative {
            // Eager protocols give everything back before joining.
            let owned = self.assignment();
            self.revoke(&owned);
        }
        let group = self.group.as_mut().expect("joining needs a group");
        group.membership.set_generation(None);
        group.joined = false;
        group.rejoin = false;
        let (generation, assigned) = self.join_and_sync(cooperative)?;
        let group = self.group.as_mut().expect("joining needs a group");
        group.generation = generation.clone();
        group.joined = true;
        group.membership.set_generation(Some(generation));
        tracing::debug!(group = %group.membership.group_id(), generation = group.generation.generation, "assigned {assigned:?}");

        let owned = self.assignment();
        let revoked: Vec<TopicPartition> = owned
            .iter()
            .filter(|key| !assigned.contains(key))
            .cloned()
            .collect();
        let added: Vec<TopicPartition> = assigned
            .iter()
            .filter(|key| !owned.contains(key))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            // Cooperative: give these up, then rejoin so that the group can hand them on.
            self.revoke(&revoked);
            self.group.as_mut().expect("in a group").rejoin = true;
        }
        for partition in &added {
            self.partitions.entry(partition.clone()).or_default();
        }
        let told = if cooperative { added } else { assigned };
        self.call_listener(|listener, consumer| listener.on_partitions_assigned(consumer, &told));
        let topics = self.subscription();
        let counts = self.partition_counts(&topics, false)?;
        let group = self.group.as_mut().expect("in a group");
        group.partition_counts = counts;
        group.next_metadata_check =
            Instant::now() + Duration::from_millis(self.config.common.metadata_max_age_ms);
        Ok(())
    }

    /// JoinGroup and SyncGroup until one generation completes; the leader computes the
    /// assignment. Returns the generation and this member's partitions.
    fn join_and_sync(
        &mut self,
        cooperative: bool,
    ) -> Result<(Generation, Vec<TopicPartition>), ClientError> {
        let backoff = Duration::from_millis(self.config.common.retry_backoff_ms.max(10));
        loop {
            let group = self.group.as_ref().expect("joining needs a group");
            let group_id = group.membership.group_id().to_owned();
            let member_id = group.generation.member_id.clone();
            let subscription = Subscription {
                topics: group.subscription.clone(),
                owned: if cooperative {
                    self.assignment()
                } else {
                    Vec::new()
                },
                generation: if cooperative {
                    group.generation.generation
                } else {
                    -1
                },
            };
            let metadata = assignor::encode_subscription(&subscription);
            let protocols: Vec<(&'static str, Bytes)> = self
                .config
                .assignors
                .iter()
                .map(|assignor| (assignor.protocol_name(), metadata.clone()))
                .collect();
            let instance = self.config.group_instance_id.clone();
            let session_timeout_ms = self.config.session_timeout_ms;
            let rebalance_timeout_ms = self.config.max_poll_interval_ms;
            let joined = self.on_coordinator(|connection| {
                group::join_group(
                    connection,
                    &group::JoinRequest {
                        identity: Identity {
                            group_id: &group_id,
                            member_id: &member_id,
                            generation: -1,
                            group_instance_id: instance.as_deref(),
                        },
                        session_timeout_ms,
                        rebalance_timeout_ms,
                        protocols: protocols.clone(),
                    },
                )
            });
            let joined = match joined {
                Ok(joined) => joined,
                Err(ClientError::Kafka { code, message, .. })
                    if code == ResponseError::MemberIdRequired.code() =>
                {
                    // KIP-394: rejoin at once with the id the coordinator gave.
                    self.group
                        .as_mut()
                        .expect("in a group")
                        .generation
                        .member_id = message.unwrap_or_default();
                    continue;
                }
                Err(error)
                    if error.is(ResponseError::UnknownMemberId)
                        || error.is(ResponseError::IllegalGeneration) =>
                {
                    self.group.as_mut().expect("in a group").generation = Generation::none();
                    continue;
                }
                Err(error) if error.is(ResponseError::RebalanceInProgress) => {
                    std::thread::sleep(backoff);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let generation = Generation {
                member_id: joined.member_id.clone(),
                generation: joined.generation,
            };
            self.group.as_mut().expect("in a group").generation = generation.clone();
            let assignments = if joined.leader == joined.member_id && !joined.skip_assignment {
                self.lead(&joined)?
            } else {
                Vec::new()
            };
            let wait = Duration::from_millis(u64::try_from(rebalance_timeout_ms).unwrap_or(0));
            let protocol_name = joined.protocol_name.clone();
            let synced = self.on_coordinator(|connection| {
                group::sync_group(
                    connection,
                    generation.identity(&group_id, instance.as_deref()),
                    &protocol_name,
                    assignments.clone(),
                    wait,
                )
            });
            match synced {
                Ok(bytes) => return Ok((generation, assignor::decode_assignment(&bytes)?)),
                Err(error)
                    if error.is(ResponseError::UnknownMemberId)
                        || error.is(ResponseError::IllegalGeneration) =>
                {
                    self.group.as_mut().expect("in a group").generation = Generation::none();
                }
                Err(error) if error.is(ResponseError::RebalanceInProgress) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The leader's work: every member's partitions under the chosen assignor.
    fn lead(&mut self, joined: &group::Joined) -> Result<Vec<(String, Bytes)>, ClientError> {
        let chosen = self
            .config
            .assignors
            .iter()
            .copied()
            .find(|assignor| assignor.protocol_name() == joined.protocol_name)
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the group chose assignor {:?}, which this consumer did not offer",
                    joined.protocol_name
                ))
            })?;
        let mut members = Vec::with_capacity(joined.members.len());
        for (member_id, group_instance_id, metadata) in &joined.members {
            members.push(assignor::Member {
                member_id: member_id.clone(),
                group_instance_id: group_instance_id.clone(),
                subscription: assignor::decode_subscription(metadata)?,
            });
        }
        let topics: BTreeSet<String> = members
            .iter()
            .flat_map(|member| member.subscription.topics.iter().cloned())
            .collect();
        let topics: Vec<String> = topics.into_iter().collect();
        let counts = self.partition_counts(&topics, false)?;
        let assignment = assignor::assign(chosen, &members, &counts);
        Ok(assignment
            .into_iter()
            .map(|(member_id, partitions)| (member_id, assignor::encode_assignment(&partitions)))
            .collect())
    }

    /// Revokes everything (committing with auto commit) and leaves the group; a static member
    /// only stops heartbeating, keeping its place until its session times out.
    fn revoke_all_and_leave(&mut self) {
        let Some(group) = self.group.as_ref() else {
            return;
        };
        if group.subscription.is_empty() {
            return;
        }
        let was_joined = group.joined;
        let owned = self.assignment();
        if was_joined {
            self.revoke(&owned);
        }
        let group = self.group.as_mut().expect("checked above");
        group.membership.set_generation(None);
        group.joined = false;
        let generation = std::mem::replace(&mut group.generation, Generation::none());
        if generation.member_id.is_empty() || self.config.group_instance_id.is_some() {
            return;
        }
        let group_id = group.membership.group_id().to_owned();
        if let Err(error) = self.on_coordinator(|connection| {
            group::leave_group(connection, generation.identity(&group_id, None))
        }) {
            tracing::debug!(%error, "leaving the group failed; the session timeout will remove the member");
        }
    }

    /// Commits (with auto commit) and leaves the group, then stops the coordinator worker
    /// after it has sent every queued commit. Dropping a consumer does the same.
    pub fn close(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if self.group.is_none() {
            return;
        }
        let subscribed = !self.subscription().is_empty();
        if subscribed {
            self.revoke_all_and_leave();
        } else if self.config.enable_auto_commit {
            if let Err(error) = self.commit(None) {
                tracing::warn!(%error, "the final commit failed");
            }
        }
        if let Some(mut group) = self.group.take() {
            group.membership.stop();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shut_down();
    }
}
