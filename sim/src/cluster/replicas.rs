//! The turmoil driver of one node's partition replicas: the same
//! [`Replica`](spate_engine::replication::Replica) the broker's shards run
//! (`spate_engine::runtime::shard`, `runtime::replica_fetcher`), with its log on the node's
//! simulated disk and `turmoil::net` between leaders and followers.
//!
//! - The member's loop hands over the metadata image whenever the broker would publish it
//!   (registered and unfenced: [`QuorumMember::layout_update`](spate_engine::quorum::member::QuorumMember::layout_update)).
//!   Each partition with a replica here opens its log and takes its role.
//! - A follower's fetcher per leader sends the leader Kafka Fetch (v12) requests built by
//!   `replication::wire`, and ListOffsets (v4) when its offset is out of range, encoded with
//!   the `kafka-protocol` crate as brokers send them.
//! - Leaders answer those on the data port, long-polling as brokers do, and take produce
//!   requests from the simulated producers (`acks=1`, or `acks=all` with
//!   `min.insync.replicas` 2), each one record in a real v2 batch.
//! - A tick shrinks lagging ISRs; ISR changes go to the controller through the member, as the
//!   broker's shards send them through its quorum driver.
//! - Leaders answer the simulated consumers' reads up to the high watermark
//!   ([`ConsumeRequest`]) and pass their group requests to the node's coordinators
//!   (`super::groups`).
//! - A replica the metadata moves away (a reassignment) is dropped; one moved back reopens
//!   its old log once the old incarnation is released.
//! - After healing the checker asks every node for its replicas' records ([`ReplicaDump`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_listener::EventListener;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProducerId,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spate_engine::client::AbortedFilter;
use spate_engine::group::host::CoordinatorHost;
use spate_engine::group::OFFSETS_TOPIC;
use spate_engine::quorum::admin::{IsrChange, TopicAdmin, TopicToCreate};
use spate_engine::quorum::MetadataImage;
use spate_engine::replication::wire::{self, FollowedPartition};
use spate_engine::replication::{
    FetchTaken, FollowerFetch, IsrChangeAsk, IsrChangeError, PartitionState, Replica,
    ReplicationConfig, RoleTaken,
};
use spate_engine::storage::batch::build::{batch, producer_batch, transactional_batch, NewRecord};
use spate_engine::storage::batch::BatchHeader;
use spate_engine::storage::{LogConfig, PartitionLog, SharedLog, Verification};
use spate_engine::txn::host::TxnHost;
use spate_engine::txn::TRANSACTION_TOPIC;
use tokio::sync::{mpsc, oneshot, watch};

use super::disk::SimDisk;
use super::groups::{self, GroupRequest};
use super::node::{host_name, sim_ms, Event};
use super::txn_producer;
use super::txns::{self, MarkerRequest, TxnRequest};
use super::wire as frames;
use super::world::{fnv1a, World, FNV_OFFSET};

/// Where a node keeps its partitions (on a disk of their own: see the disk-loss fault).
pub(crate) const DATA_DIR: &str = "/spate/data";
/// The port followers fetch from and producers produce to.
pub(crate) const DATA_PORT: u16 = 9094;
/// The topics' `min.insync.replicas` for `acks=all`.
pub(crate) const MIN_INSYNC_REPLICAS: usize = 2;
/// `replica.lag.time.max.ms`, short so that runs shrink and grow ISRs.
const REPLICA_LAG_TIME_MAX_MS: i64 = 3_000;
/// How often leaders tick (the broker ticks at a quarter of the lag time).
const TICK: Duration = Duration::from_millis(750);
/// How often a node looks for segment rolls to finish.
const ROLL_FINISH_CHECK: Duration = Duration::from_millis(100);
/// How long an `acks=all` produce waits for the replicas (the request timeout).
pub(crate) const ACKS_ALL_TIMEOUT_MS: i64 = 5_000;
/// How long one exchange with a leader may take before the connection is given up.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed exchange (replica.fetch.backoff.ms).
const BACKOFF: Duration = Duration::from_millis(200);
/// Longest a replica moved back to a node waits for the tasks still holding its old
/// incarnation (produce waits end after `ACKS_ALL_TIMEOUT_MS`, long polls sooner).
const RETIRED_WAIT_MS: u64 = 15_000;
/// How long the controller may take to answer an ISR change.
const ISR_CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica's contents, as the checker collects them after healing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplicaDump {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) leading: bool,
    pub(crate) leader_epoch: i32,
    pub(crate) high_watermark: i64,
    pub(crate) log_start_offset: i64,
    pub(crate) log_end_offset: i64,
    /// `(offset, value)` of every record.
    pub(crate) records: Vec<(i64, String)>,
    /// `(base offset, last offset, FNV-1a of its bytes)` of every batch: replicas are
    /// byte-identical below the high watermark, leader epochs and all.
    pub(crate) batches: Vec<(i64, i64, u64)>,
    /// The transactional producers' topic only: every record's producer and, for a
    /// transaction marker, whether it commits.
    #[serde(default)]
    pub(crate) producers: Vec<LoggedProducer>,
    /// The transactional producers' topic only: what a `read_committed` consumer reads from
    /// the log start, up to the last stable offset.
    #[serde(default)]
    pub(crate) read_committed: Vec<(i64, String)>,
    /// The last stable offset (the transactional producers' topic only).
    #[serde(default)]
    pub(crate) last_stable_offset: i64,
}

/// A record's producer, as the transaction checker reads the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoggedProducer {
    pub(crate) offset: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) transactional: bool,
    /// `Some(commit)` for a transaction marker.
    pub(crate) marker: Option<bool>,
}

/// A produce request from a simulated producer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProduceRequest {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) acks_all: bool,
    pub(crate) value: String,
    /// An idempotent producer's (producer id, epoch, sequence) for the record.
    #[serde(default)]
    pub(crate) idempotent: Option<(i64, i16, i32)>,
    /// A transactional producer's id: the record goes in a transactional batch (with
    /// `idempotent`'s fields), verified with the coordinator first.
    #[serde(default)]
    pub(crate) transactional_id: Option<String>,
}

/// The answer: a Kafka error code, the offset when appended, and who this node thinks leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProduceAnswer {
    pub(crate) error_code: i16,
    pub(crate) offset: i64,
    pub(crate) leader_hint: i32,
}

pub(crate) type SimReplica = Replica<SimDisk>;

/// One node's replicas. See the module docs.
pub(crate) struct Replicas {
    pub(crate) node: i32,
    disk: SimDisk,
    pub(crate) world: Rc<RefCell<World>>,
    /// The member's loop, for ISR changes.
    events: mpsc::UnboundedSender<Event>,
    pub(crate) image: RefCell<MetadataImage>,
    replicas: RefCell<BTreeMap<(String, i32), Rc<SimReplica>>>,
    fetchers: RefCell<BTreeSet<i32>>,
    /// The group coordinators of the offsets partitions this node leads, by partition.
    pub(crate) coordinators: RefCell<BTreeMap<i32, Rc<CoordinatorHost>>>,
    /// The transaction coordinators of the transaction state partitions this node leads, by
    /// partition.
    pub(crate) txn_hosts: RefCell<BTreeMap<i32, Rc<TxnHost>>>,
    /// Numbers the member ids this node hands out.
    pub(crate) next_member_serial: Cell<u64>,
    /// When this node last asked the controller to create `__consumer_offsets`.
    offsets_topic_asked_ms: Cell<Option<u64>>,
    /// When this node last asked the controller to create `__transaction_state`.
    txn_topic_asked_ms: Cell<Option<u64>>,
    /// Replicas moved away from this node, until every task let go of them.
    retired: RefCell<BTreeMap<(String, i32), Weak<SimReplica>>>,
}

/// A consumer's read of one partition, up to its high watermark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConsumeRequest {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Up to the last stable offset, without aborted transactions' records, else up to the
    /// high watermark.
    #[serde(default)]
    pub(crate) read_committed: bool,
}

/// The answer: a Kafka error code, `(offset, value)` of the records read, and who this node
/// thinks leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConsumeAnswer {
    pub(crate) error_code: i16,
    pub(crate) records: Vec<(i64, String)>,
    pub(crate) high_watermark: i64,
    pub(crate) leader_hint: i32,
    /// A `read_committed` read: the offset it read up to (records, and aborted or control
    /// ones skipped); where the next read starts.
    #[serde(default)]
    pub(crate) read_to: i64,
}

/// Runs the node's replicas until the node's software ends: applies every image `images`
/// brings, serves the data port, ticks leaders.
pub(crate) async fn run(
    node: i32,
    disk: SimDisk,
    world: Rc<RefCell<World>>,
    events: mpsc::UnboundedSender<Event>,
    mut images: watch::Receiver<Option<MetadataImage>>,
) {
    let replicas = Rc::new(Replicas {
        node,
        disk,
        world,
        events,
        image: RefCell::new(MetadataImage::new()),
        replicas: RefCell::new(BTreeMap::new()),
        fetchers: RefCell::new(BTreeSet::new()),
        coordinators: RefCell::new(BTreeMap::new()),
        txn_hosts: RefCell::new(BTreeMap::new()),
        next_member_serial: Cell::new(0),
        offsets_topic_asked_ms: Cell::new(None),
        txn_topic_asked_ms: Cell::new(None),
        retired: RefCell::new(BTreeMap::new()),
    });
    match turmoil::net::TcpListener::bind(("0.0.0.0", DATA_PORT)).await {
        Ok(listener) => {
            tokio::task::spawn_local(accept(listener, Rc::clone(&replicas)));
        }
        Err(error) => {
            replicas.world.borrow_mut().violation(format!(
                "node {node} cannot listen on its data port: {error}"
            ));
            return;
        }
    }
    tokio::task::spawn_local(tick(Rc::clone(&replicas)));
    tokio::task::spawn_local(finish_rolls(Rc::clone(&replicas)));
    while images.changed().await.is_ok() {
        let image = images.borrow_and_update().clone();
        if let Some(image) = image {
            replicas.apply(image).await;
        }
    }
}

impl Replicas {
    pub(crate) fn now_ms(&self) -> i64 {
        self.world
            .borrow()
            .node_clock_ms(self.node as u64, sim_ms())
    }

    pub(crate) fn replica(&self, topic: &str, partition: i32) -> Option<Rc<SimReplica>> {
        self.replicas
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// The leader of a partition in this node's metadata, -1 when unknown.
    pub(crate) fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let image = self.image.borrow();
        image
            .topic_id(topic)
            .and_then(|id| image.partition(id, partition))
            .map_or(-1, |state| state.leader)
    }

    fn all(&self) -> Vec<Rc<SimReplica>> {
        self.replicas.borrow().values().cloned().collect()
    }

    /// Opens the replicas `image` gives this node and brings each to its role.
    async fn apply(self: &Rc<Self>, image: MetadataImage) {
        let mut assigned = Vec::new();
        for topic in image.topics().values() {
            for (&partition, state) in &topic.partitions {
                if state.replicas.contains(&self.node) {
                    assigned.push((topic.name.clone(), partition, state.clone()));
                }
            }
        }
        *self.image.borrow_mut() = image;
        self.retire_unassigned(&assigned);
        for (topic, partition, state) in assigned {
            let replica = match self.replica(&topic, partition) {
                Some(replica) => replica,
                None => match self.open(&topic, partition).await {
                    Some(replica) => replica,
                    None => return,
                },
            };
            let min_insync_replicas = self.image.borrow().min_insync_replicas(&topic);
            replica.set_min_insync_replicas(min_insync_replicas);
            let taken = replica.take_role(&state, self.now_ms()).await;
            // Fenced or shutting-down brokers are not asked into the ISR.
            let ineligible = state
                .replicas
                .iter()
                .copied()
                .filter(|&broker| !self.image.borrow().is_eligible(broker))
                .collect();
            replica.set_ineligible(ineligible);
            let took_lead = matches!(taken, RoleTaken::Leading { .. });
            if topic == OFFSETS_TOPIC {
                groups::place_coordinator(self, &replica, took_lead);
            } else if topic == TRANSACTION_TOPIC {
                txns::place_coordinator(self, &replica, took_lead);
            }
            match taken {
                RoleTaken::Unchanged | RoleTaken::Leaderless => {}
                RoleTaken::Leading { log_end_offset } => self.world.borrow_mut().event(format!(
                    "node {}: leads {topic}-{partition} at epoch {} from offset {log_end_offset}",
                    self.node, state.leader_epoch
                )),
                RoleTaken::Following { leader, .. } => {
                    self.world.borrow_mut().event(format!(
                        "node {}: follows {leader} for {topic}-{partition} at epoch {}",
                        self.node, state.leader_epoch
                    ));
                    self.ensure_fetcher(leader);
                }
                RoleTaken::NotLeading(error) => self.world.borrow_mut().violation(format!(
                    "node {}: cannot open leader epoch {} of {topic}-{partition}: {error}",
                    self.node, state.leader_epoch
                )),
            }
            self.send_isr_changes(&replica);
        }
    }

    /// Drops the replicas the metadata no longer gives this node (moved away by a
    /// reassignment): they stop leading, answering and fetching. Their logs stay on the disk,
    /// so a replica moved back opens its old log and truncates it as a follower must (the
    /// broker deletes the directory; a broker that was down while the replica moved away and
    /// back opens its old log the same way).
    fn retire_unassigned(self: &Rc<Self>, assigned: &[(String, i32, PartitionState)]) {
        let kept: BTreeSet<(String, i32)> = assigned
            .iter()
            .map(|(topic, partition, _)| (topic.clone(), *partition))
            .collect();
        let gone: Vec<(String, i32)> = self
            .replicas
            .borrow()
            .keys()
            .filter(|key| !kept.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            let Some(replica) = self.replicas.borrow_mut().remove(&key) else {
                continue;
            };
            if key.0 == OFFSETS_TOPIC {
                groups::stop_coordinator(self, key.1);
            } else if key.0 == TRANSACTION_TOPIC {
                txns::stop_coordinator(self, key.1);
            }
            replica.retire();
            self.world.borrow_mut().event(format!(
                "node {}: no longer a replica of {}-{}",
                self.node, key.0, key.1
            ));
            self.retired
                .borrow_mut()
                .insert(key, Rc::downgrade(&replica));
        }
    }

    async fn open(&self, topic: &str, partition: i32) -> Option<Rc<SimReplica>> {
        let key = (topic.to_owned(), partition);
        // A replica moved away and back: its old log is opened once every request that held
        // the old one let go (a produce waits for its replicas at most its timeout).
        let retired = self.retired.borrow_mut().remove(&key);
        if let Some(retired) = retired {
            let deadline = sim_ms() + RETIRED_WAIT_MS;
            while retired.strong_count() > 0 {
                if sim_ms() >= deadline {
                    self.world.borrow_mut().violation(format!(
                        "node {}: the retired replica of {topic}-{partition} is still in use \
                         after {RETIRED_WAIT_MS} ms",
                        self.node
                    ));
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let dir = PathBuf::from(format!("{DATA_DIR}/{topic}-{partition}"));
        let config = LogConfig {
            // Small, so that runs roll segments.
            segment_bytes: 16 << 10,
            ..LogConfig::default()
        };
        match PartitionLog::open(self.disk.clone(), dir, config, self.now_ms()).await {
            Ok((log, report)) => {
                if !report.truncations.is_empty() {
                    self.world.borrow_mut().event(format!(
                        "node {}: {topic}-{partition} cut {} torn or corrupt tails",
                        self.node,
                        report.truncations.len()
                    ));
                }
                let replica = Rc::new(Replica::in_cluster(
                    topic.to_owned(),
                    partition,
                    SharedLog::new(log),
                    self.node,
                    ReplicationConfig {
                        replica_lag_time_max_ms: REPLICA_LAG_TIME_MAX_MS,
                        // The topic's own is set before the replica takes a role.
                        ..ReplicationConfig::default()
                    },
                ));
                self.replicas
                    .borrow_mut()
                    .insert((topic.to_owned(), partition), Rc::clone(&replica));
                Some(replica)
            }
            Err(error) => {
                self.world.borrow_mut().violation(format!(
                    "node {}: cannot open {topic}-{partition}: {error}",
                    self.node
                ));
                None
            }
        }
    }

    /// Asks the controller to create `__consumer_offsets`, as a broker does on the first
    /// group request (`Shard::ensure_offsets_topic`), at most once a second; the group request
    /// itself is answered COORDINATOR_NOT_AVAILABLE and retried.
    pub(crate) fn ensure_offsets_topic(&self) {
        self.ask_at_most_every_second(
            &self.offsets_topic_asked_ms,
            TopicAdmin::Create(vec![TopicToCreate {
                name: OFFSETS_TOPIC.to_owned(),
                partitions: groups::OFFSETS_PARTITIONS,
                // Kafka's offsets.topic.replication.factor.
                replication_factor: 3,
                configs: BTreeMap::new(),
            }]),
        );
    }

    /// Asks the controller to create `__transaction_state`, as a broker does on the first
    /// transactional request, at most once a second.
    pub(crate) fn ensure_transaction_topic(&self) {
        self.ask_at_most_every_second(&self.txn_topic_asked_ms, txns::transaction_topic());
    }

    /// Sends `admin` to the controller unless `asked_ms` says it was sent less than a second
    /// ago; its answer is not awaited.
    fn ask_at_most_every_second(&self, asked_ms: &Cell<Option<u64>>, admin: TopicAdmin) {
        let now_ms = sim_ms();
        if asked_ms
            .get()
            .is_some_and(|asked_ms| now_ms < asked_ms + 1_000)
        {
            return;
        }
        asked_ms.set(Some(now_ms));
        let (answer, _) = oneshot::channel();
        let _ = self.events.send(Event::Admin { admin, answer });
    }

    fn ensure_fetcher(self: &Rc<Self>, leader: i32) {
        if self.fetchers.borrow_mut().insert(leader) {
            tokio::task::spawn_local(fetch_from(Rc::clone(self), leader));
        }
    }

    /// Sends the ISR changes `replica`'s leader asks for to the controller, through the
    /// member.
    pub(crate) fn send_isr_changes(self: &Rc<Self>, replica: &Rc<SimReplica>) {
        while let Some(ask) = replica.next_isr_change() {
            let topic_id = self.image.borrow().topic_id(replica.topic());
            let Some(topic_id) = topic_id else {
                continue;
            };
            self.world.borrow_mut().isr_asked(
                self.node,
                topic_id,
                replica.index(),
                ask.partition_epoch,
                &ask.isr,
            );
            tokio::task::spawn_local(alter_isr(
                Rc::clone(self),
                Rc::clone(replica),
                topic_id,
                ask,
            ));
        }
    }
}

async fn alter_isr(
    replicas: Rc<Replicas>,
    replica: Rc<SimReplica>,
    topic_id: uuid::Uuid,
    ask: IsrChangeAsk,
) {
    let change = IsrChange {
        broker_id: replicas.node,
        broker_epoch: -1,
        topic_id,
        partition: replica.index(),
        leader_epoch: ask.leader_epoch,
        partition_epoch: ask.partition_epoch,
        isr: ask.isr.clone(),
    };
    let (answer, answered) = oneshot::channel();
    let outcome = if replicas
        .events
        .send(Event::Admin {
            admin: TopicAdmin::AlterIsr(change),
            answer,
        })
        .is_err()
    {
        Err(IsrChangeError::Unknown)
    } else {
        match tokio::time::timeout(ISR_CHANGE_TIMEOUT, answered).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(code)) => Err(ResponseError::try_from_code(code).map_or(
                IsrChangeError::Unknown,
                IsrChangeError::from_controller_error,
            )),
            _ => Err(IsrChangeError::Unknown),
        }
    };
    replicas.world.borrow_mut().event(format!(
        "node {}: ISR change of {}-{} to {:?} at partition epoch {}: {outcome:?}",
        replicas.node,
        replica.topic(),
        replica.index(),
        ask.isr,
        ask.partition_epoch
    ));
    replica.isr_change_completed(&ask, outcome, replicas.now_ms());
    replicas.send_isr_changes(&replica);
}

/// Ticks leaders (lagging followers leave the ISR) and reports their high watermarks.
async fn tick(replicas: Rc<Replicas>) {
    loop {
        tokio::time::sleep(TICK).await;
        let now_ms = replicas.now_ms();
        for replica in replicas.all() {
            replica.tick(now_ms);
            replicas.send_isr_changes(&replica);
            if replica.is_leading() {
                replicas.world.borrow_mut().leader_high_watermark(
                    replicas.node,
                    replica.topic(),
                    replica.index(),
                    replica.leader_epoch(),
                    replica.high_watermark(),
                );
            }
        }
    }
}

/// Finishes segment rolls in the background, as the broker's shards do
/// (`Shard::finish_rolls`), so that appends race the finishes.
async fn finish_rolls(replicas: Rc<Replicas>) {
    loop {
        tokio::time::sleep(ROLL_FINISH_CHECK).await;
        for replica in replicas.all() {
            let log = &replica.log;
            if !log.has_rolls_to_finish().await {
                continue;
            }
            if let Err(error) = log.finish_rolls().await {
                replicas.world.borrow_mut().event(format!(
                    "node {}: finishing a roll of {}-{} failed: {error}",
                    replicas.node,
                    replica.topic(),
                    replica.index()
                ));
            }
        }
    }
}

/// A follower's fetcher from `leader`, as `runtime::replica_fetcher` runs it: one Fetch for
/// every partition following that leader, its answers taken per partition, offsets out of
/// range recovered through ListOffsets. Ends when nothing here follows `leader`.
async fn fetch_from(replicas: Rc<Replicas>, leader: i32) {
    let node = replicas.node;
    let mut connection: Option<(turmoil::net::TcpStream, u64)> = None;
    loop {
        let followed: Vec<Rc<SimReplica>> = replicas
            .all()
            .into_iter()
            .filter(|replica| replica.follows(leader))
            .collect();
        if followed.is_empty() {
            break;
        }
        let breaks = replicas
            .world
            .borrow()
            .link_breaks(node as u64, leader as u64);
        if connection.as_ref().is_some_and(|(_, made)| *made != breaks) {
            connection = None;
        }
        if connection.is_none() {
            let connect = turmoil::net::TcpStream::connect((host_name(leader as u64), DATA_PORT));
            connection = tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
                .await
                .ok()
                .and_then(Result::ok)
                .map(|stream| (stream, breaks));
            if connection.is_none() {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        let mut partitions = Vec::new();
        for replica in &followed {
            if let Some(from) = replica.fetch_from().await {
                partitions.push((followed_partition(replica), from));
            }
        }
        if partitions.is_empty() {
            // Nothing to fetch now (a poisoned log, or a role changing).
            tokio::time::sleep(BACKOFF).await;
            continue;
        }
        let request = wire::fetch_request(node, &partitions);
        let stream = &mut connection.as_mut().expect("connected above").0;
        let response: Option<FetchResponse> = exchange(
            stream,
            frames::FETCH,
            &request,
            wire::FETCH_VERSION,
            frames::FETCH_ANSWER,
        )
        .await;
        let Some(response) = response else {
            connection = None;
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let mut back_off = false;
        let mut out_of_range = Vec::new();
        for (partition, answer) in wire::fetched_partitions(response) {
            let Some(replica) = followed.iter().find(|replica| {
                replica.topic() == partition.topic && replica.index() == partition.index
            }) else {
                continue;
            };
            if answer.error_code == ResponseError::OffsetOutOfRange.code() {
                out_of_range.push(Rc::clone(replica));
                continue;
            }
            match replica
                .take_fetched(leader, answer, replicas.now_ms())
                .await
            {
                Ok(FetchTaken::Truncated(offset)) => replicas.world.borrow_mut().event(format!(
                    "node {node}: {}-{} truncated to {offset} (leader {leader})",
                    replica.topic(),
                    replica.index()
                )),
                Ok(FetchTaken::Appended { .. } | FetchTaken::Dropped) => {}
                Err(error) => {
                    replicas.world.borrow_mut().event(format!(
                        "node {node}: {}-{} stalled fetching from {leader}: {error}",
                        replica.topic(),
                        replica.index()
                    ));
                    back_off = true;
                }
            }
        }
        if !out_of_range.is_empty() {
            let stream = &mut connection.as_mut().expect("connected above").0;
            if !recover_out_of_range(&replicas, stream, leader, &out_of_range).await {
                connection = None;
                back_off = true;
            }
        }
        if back_off {
            tokio::time::sleep(BACKOFF).await;
        }
    }
    replicas.fetchers.borrow_mut().remove(&leader);
}

fn followed_partition(replica: &SimReplica) -> FollowedPartition {
    FollowedPartition {
        topic: replica.topic().to_owned(),
        index: replica.index(),
    }
}

/// Asks `leader` where its logs start and end, and cuts, empties or keeps each replica as
/// its follower decides. `false` when the exchange failed.
async fn recover_out_of_range(
    replicas: &Replicas,
    stream: &mut turmoil::net::TcpStream,
    leader: i32,
    out_of_range: &[Rc<SimReplica>],
) -> bool {
    let asked: Vec<(FollowedPartition, i32)> = out_of_range
        .iter()
        .map(|replica| (followed_partition(replica), replica.leader_epoch()))
        .collect();
    let mut ends = Vec::new();
    for timestamp in [wire::EARLIEST, wire::LATEST] {
        let request = wire::list_offsets_request(replicas.node, &asked, timestamp);
        let response: Option<ListOffsetsResponse> = exchange(
            stream,
            frames::LIST_OFFSETS,
            &request,
            wire::LIST_OFFSETS_VERSION,
            frames::LIST_OFFSETS_ANSWER,
        )
        .await;
        let Some(response) = response else {
            return false;
        };
        ends.push(response);
    }
    for (replica, (partition, _)) in out_of_range.iter().zip(&asked) {
        let (Some(start), Some(end)) = (
            wire::listed_offset(&ends[0], partition),
            wire::listed_offset(&ends[1], partition),
        ) else {
            continue;
        };
        match replica
            .recover_out_of_range(leader, start, end, replicas.now_ms())
            .await
        {
            Ok(Some(action)) => replicas.world.borrow_mut().event(format!(
                "node {}: {}-{} out of leader {leader}'s range {start}..{end}: {action:?}",
                replicas.node,
                replica.topic(),
                replica.index()
            )),
            Ok(None) => {}
            Err(error) => replicas.world.borrow_mut().event(format!(
                "node {}: {}-{} cannot recover its range: {error}",
                replicas.node,
                replica.topic(),
                replica.index()
            )),
        }
    }
    true
}

/// Sends one Kafka request as a frame of `kind` and reads the answer of kind `answer_kind`.
async fn exchange<Request: Encodable, Response: Decodable>(
    stream: &mut turmoil::net::TcpStream,
    kind: u8,
    request: &Request,
    version: i16,
    answer_kind: u8,
) -> Option<Response> {
    let mut body = BytesMut::new();
    request.encode(&mut body, version).ok()?;
    let exchanged = async {
        frames::write_frame(stream, kind, &body).await.ok()?;
        frames::read_frame(stream).await
    };
    let (kind, payload) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchanged)
        .await
        .ok()??;
    if kind != answer_kind {
        return None;
    }
    Response::decode(&mut Bytes::from(payload), version).ok()
}

async fn accept(listener: turmoil::net::TcpListener, replicas: Rc<Replicas>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::task::spawn_local(serve(stream, Rc::clone(&replicas)));
    }
}

/// One connection to the data port: a follower's fetcher, a producer or the checker.
async fn serve(mut stream: turmoil::net::TcpStream, replicas: Rc<Replicas>) {
    while let Some((kind, payload)) = frames::read_frame(&mut stream).await {
        let answer = match kind {
            frames::FETCH => {
                let Ok(request) =
                    FetchRequest::decode(&mut Bytes::from(payload), wire::FETCH_VERSION)
                else {
                    return;
                };
                let response = answer_fetch(&replicas, request).await;
                encoded(frames::FETCH_ANSWER, &response, wire::FETCH_VERSION)
            }
            frames::LIST_OFFSETS => {
                let Ok(request) = ListOffsetsRequest::decode(
                    &mut Bytes::from(payload),
                    wire::LIST_OFFSETS_VERSION,
                ) else {
                    return;
                };
                let response = answer_list_offsets(&replicas, request).await;
                encoded(
                    frames::LIST_OFFSETS_ANSWER,
                    &response,
                    wire::LIST_OFFSETS_VERSION,
                )
            }
            frames::PRODUCE => {
                json_exchange(
                    &payload,
                    frames::PRODUCE_ANSWER,
                    |request: ProduceRequest| produce(&replicas, request),
                )
                .await
            }
            frames::CONSUME => {
                json_exchange(
                    &payload,
                    frames::CONSUME_ANSWER,
                    |request: ConsumeRequest| consume(&replicas, request),
                )
                .await
            }
            frames::GROUP_CALL => {
                json_exchange(&payload, frames::GROUP_ANSWER, |request: GroupRequest| {
                    groups::answer(&replicas, request)
                })
                .await
            }
            frames::TXN_CALL => {
                json_exchange(&payload, frames::TXN_ANSWER, |request: TxnRequest| {
                    txns::answer(&replicas, request)
                })
                .await
            }
            frames::MARKER => {
                let Ok(request) = serde_json::from_slice::<MarkerRequest>(&payload) else {
                    return;
                };
                let code = txns::write_marker_here(&replicas, &request).await;
                Some((frames::MARKER_ANSWER, code.to_be_bytes().to_vec()))
            }
            frames::DUMP => {
                let dump = dump(&replicas).await;
                serde_json::to_vec(&dump)
                    .ok()
                    .map(|body| (frames::DUMP_ANSWER, body))
            }
            _ => return,
        };
        let Some((kind, body)) = answer else {
            return;
        };
        if frames::write_frame(&mut stream, kind, &body).await.is_err() {
            return;
        }
    }
}

/// A JSON request's answer as a frame of `answer_kind`: `handle`'s answer to `payload`
/// decoded; `None` when it does not decode (the connection is closed).
async fn json_exchange<Request: DeserializeOwned, Answer: Serialize, Handled>(
    payload: &[u8],
    answer_kind: u8,
    handle: impl FnOnce(Request) -> Handled,
) -> Option<(u8, Vec<u8>)>
where
    Handled: Future<Output = Answer>,
{
    let request = serde_json::from_slice(payload).ok()?;
    let answer = handle(request).await;
    serde_json::to_vec(&answer)
        .ok()
        .map(|body| (answer_kind, body))
}

fn encoded<Message: Encodable>(kind: u8, message: &Message, version: i16) -> Option<(u8, Vec<u8>)> {
    let mut body = BytesMut::new();
    message.encode(&mut body, version).ok()?;
    Some((kind, body.to_vec()))
}

/// A follower's Fetch on this node: each partition answered by its replica
/// ([`Replica::answer_replica_fetch`]), held until data arrives or `max_wait_ms` passes when
/// nothing is there yet, as brokers long-poll.
async fn answer_fetch(replicas: &Rc<Replicas>, request: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut listeners = Vec::new();
        let mut anything = false;
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for asked in &topic.partitions {
                let mut data = PartitionData::default()
                    .with_partition_index(asked.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1);
                match replicas.replica(topic.topic.0.as_str(), asked.partition) {
                    None => {
                        data.error_code = ResponseError::NotLeaderOrFollower.code();
                        anything = true;
                    }
                    Some(replica) => {
                        listeners.push(replica.data_arrived.listen());
                        let fetch = FollowerFetch {
                            replica: request.replica_id.0,
                            fetch_offset: asked.fetch_offset,
                            last_fetched_epoch: (asked.last_fetched_epoch >= 0)
                                .then_some(asked.last_fetched_epoch),
                            current_leader_epoch: (asked.current_leader_epoch >= 0)
                                .then_some(asked.current_leader_epoch),
                        };
                        let max_bytes = usize::try_from(asked.partition_max_bytes).unwrap_or(0);
                        let answered = replica
                            .answer_replica_fetch(fetch, max_bytes, replicas.now_ms())
                            .await;
                        replicas.send_isr_changes(&replica);
                        match answered {
                            Ok(answer) => {
                                data.high_watermark = answer.high_watermark;
                                data.last_stable_offset = answer.high_watermark;
                                data.log_start_offset = answer.log_start_offset;
                                if let Some(end) = answer.diverging {
                                    data.diverging_epoch = EpochEndOffset::default()
                                        .with_epoch(end.epoch)
                                        .with_end_offset(end.end_offset);
                                    anything = true;
                                }
                                if let Some(records) =
                                    answer.records.filter(|records| !records.is_empty())
                                {
                                    data.records = Some(records.to_bytes());
                                    anything = true;
                                }
                            }
                            Err(Ok(error)) => {
                                data.error_code = error.code.code();
                                anything = true;
                            }
                            Err(Err(error)) => {
                                data.error_code = ResponseError::KafkaStorageError.code();
                                replicas.world.borrow_mut().event(format!(
                                    "node {}: {}-{} read failed: {error}",
                                    replicas.node,
                                    replica.topic(),
                                    replica.index()
                                ));
                                anything = true;
                            }
                        }
                    }
                }
                partitions.push(data);
            }
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic.topic.clone())
                    .with_partitions(partitions),
            );
        }
        if anything || tokio::time::Instant::now() >= deadline {
            return FetchResponse::default().with_responses(topics);
        }
        let _ = tokio::time::timeout_at(deadline, AnyListener(listeners)).await;
    }
}

/// Ready when any of its listeners is notified.
struct AnyListener(Vec<EventListener>);

impl Future for AnyListener {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for listener in &mut self.0 {
            if Pin::new(listener).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// A follower's ListOffsets: the leader's log start (-2) or log end (-1).
async fn answer_list_offsets(
    replicas: &Rc<Replicas>,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for asked in &topic.partitions {
            let mut answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(asked.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let replica = replicas
                .replica(topic.name.0.as_str(), asked.partition_index)
                .filter(|replica| replica.is_leading());
            match replica {
                None => answer.error_code = ResponseError::NotLeaderOrFollower.code(),
                Some(replica) if asked.current_leader_epoch != replica.leader_epoch() => {
                    answer.error_code = if asked.current_leader_epoch < replica.leader_epoch() {
                        ResponseError::FencedLeaderEpoch.code()
                    } else {
                        ResponseError::UnknownLeaderEpoch.code()
                    };
                }
                Some(replica) => {
                    let (start, end) = replica
                        .log
                        .with_log(async |log| (log.log_start_offset(), log.log_end_offset()))
                        .await;
                    answer.offset = if asked.timestamp == wire::EARLIEST {
                        start
                    } else {
                        end
                    };
                }
            }
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// A producer's record, appended by the leader as the broker's Produce does, and for
/// `acks=all` held until the in-sync replicas have it.
async fn produce(replicas: &Rc<Replicas>, request: ProduceRequest) -> ProduceAnswer {
    let leader_hint = replicas.leader_of(&request.topic, request.partition);
    let failed = |code: ResponseError| ProduceAnswer {
        error_code: code.code(),
        offset: -1,
        leader_hint,
    };
    let Some(replica) = replicas.replica(&request.topic, request.partition) else {
        return failed(ResponseError::NotLeaderOrFollower);
    };
    if request.acks_all {
        if let Err(error) = replica.check_acks_all(MIN_INSYNC_REPLICAS) {
            return failed(error.code);
        }
    }
    let mut verification = Verification::Unchecked;
    if let (Some(transactional_id), Some((producer_id, epoch, _))) =
        (&request.transactional_id, request.idempotent)
    {
        // As the broker's Produce: the guard before the coordinator's answer, so that a
        // marker ending the transaction meanwhile makes the append refuse the batch.
        let guard = replica
            .start_verification(producer_id, epoch, replicas.now_ms())
            .await;
        if guard.is_some() {
            let partition = (request.topic.clone(), request.partition);
            if let Some(error) =
                txns::verify(replicas, transactional_id, producer_id, epoch, partition).await
            {
                return failed(error);
            }
        }
        verification = Verification::Guard(guard);
    }
    let now_ms = replicas.now_ms();
    let record = NewRecord::value(request.value.clone().into_bytes(), now_ms);
    let records = match (request.idempotent, &request.transactional_id) {
        (Some((producer_id, epoch, sequence)), Some(_)) => {
            transactional_batch(&[record], producer_id, epoch, sequence)
        }
        (Some((producer_id, epoch, sequence)), None) => {
            producer_batch(&[record], producer_id, epoch, sequence)
        }
        (None, _) => batch(&[record]),
    };
    let info = match replica
        .append_verified_as_leader(records, now_ms, verification)
        .await
    {
        Ok(info) => info,
        Err(error) => return failed(error.code),
    };
    replicas.send_isr_changes(&replica);
    if request.acks_all {
        let replicated = wait_acks_all(
            replicas,
            &replica,
            info.last_offset + 1,
            MIN_INSYNC_REPLICAS,
            ACKS_ALL_TIMEOUT_MS,
        )
        .await;
        if let Err(code) = replicated {
            return failed(code);
        }
    }
    ProduceAnswer {
        error_code: 0,
        offset: info.base_offset,
        leader_hint,
    }
}

/// Waits until the in-sync replicas (at least `min_insync_replicas`) have everything below
/// `required_offset`, as an `acks=all` produce does, for at most `timeout_ms`.
pub(crate) async fn wait_acks_all(
    replicas: &Replicas,
    replica: &SimReplica,
    required_offset: i64,
    min_insync_replicas: usize,
    timeout_ms: i64,
) -> Result<(), ResponseError> {
    let deadline = replicas.now_ms() + timeout_ms;
    loop {
        let listener = replica.data_arrived.listen();
        match replica.acks_all_outcome(required_offset, min_insync_replicas) {
            Some(Ok(())) => return Ok(()),
            Some(Err(error)) => return Err(error.code),
            None => {}
        }
        let left = deadline - replicas.now_ms();
        if left <= 0 {
            return Err(ResponseError::RequestTimedOut);
        }
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let _ = tokio::time::timeout(left, listener).await;
    }
}

/// Most records one consumer read returns.
const CONSUME_RECORDS_MAX: usize = 200;

/// A consumer's read on this node: records of a partition it leads from `offset` up to the
/// high watermark, as the broker's Fetch answers consumers.
async fn consume(replicas: &Rc<Replicas>, request: ConsumeRequest) -> ConsumeAnswer {
    let leader_hint = replicas.leader_of(&request.topic, request.partition);
    let failed = |code: ResponseError| ConsumeAnswer {
        error_code: code.code(),
        records: Vec::new(),
        high_watermark: -1,
        leader_hint,
        read_to: -1,
    };
    let Some(replica) = replicas
        .replica(&request.topic, request.partition)
        .filter(|replica| replica.is_leading())
    else {
        return failed(ResponseError::NotLeaderOrFollower);
    };
    let (start, end, unstable) = replica
        .log
        .with_log(async |log| {
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.first_unstable_offset(),
            )
        })
        .await;
    if request.offset < start || request.offset > end {
        return failed(ResponseError::OffsetOutOfRange);
    }
    let high_watermark = replica.readable_end(end);
    let mut read_to = request.offset;
    let (readable, records) = if request.read_committed {
        let stable = last_stable_offset(start, high_watermark, unstable);
        let (records, reached) =
            read_committed_values(&replica, request.offset, stable, CONSUME_RECORDS_MAX).await;
        read_to = reached;
        (stable, records)
    } else {
        let records = read_values(
            &replica,
            request.offset,
            high_watermark,
            CONSUME_RECORDS_MAX,
        )
        .await;
        (high_watermark, records)
    };
    ConsumeAnswer {
        error_code: 0,
        records,
        high_watermark: readable,
        leader_hint,
        read_to,
    }
}

/// `(offset, value)` of the records of `replica` from `from` to `end`, at most
/// `records_max` of them.
async fn read_values(
    replica: &SimReplica,
    from: i64,
    end: i64,
    records_max: usize,
) -> Vec<(i64, String)> {
    let mut records = Vec::new();
    let mut offset = from;
    while offset < end && records.len() < records_max {
        let Ok(fetched) = replica.log.read(offset, 1 << 20, Some(end)).await else {
            break;
        };
        let mut bytes = fetched.to_bytes();
        let Ok(batches) = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
        else {
            break;
        };
        let before = offset;
        for record in batches.iter().flat_map(|batch| &batch.records) {
            if record.offset >= offset && record.offset < end && records.len() < records_max {
                let value = record.value.as_deref().unwrap_or_default();
                records.push((record.offset, String::from_utf8_lossy(value).into_owned()));
                offset = record.offset + 1;
            }
        }
        if offset == before {
            break;
        }
    }
    records
}

/// The last stable offset, as the broker's Fetch computes it: the first offset of the oldest
/// open transaction (not below the log start), capped by the high watermark.
fn last_stable_offset(log_start_offset: i64, high_watermark: i64, unstable: Option<i64>) -> i64 {
    unstable.map_or(high_watermark, |unstable| {
        unstable.max(log_start_offset).min(high_watermark)
    })
}

/// `(offset, value)` of the records a `read_committed` consumer sees in `replica` from `from`
/// to `stable` (the last stable offset), at most `records_max`: the log's aborted
/// transactions, as the broker lists them in a Fetch response, filtered out by the client's
/// [`AbortedFilter`]; control records skipped. With the offset the read reached: `stable`
/// unless `records_max` or a failed read stopped it.
async fn read_committed_values(
    replica: &SimReplica,
    from: i64,
    stable: i64,
    records_max: usize,
) -> (Vec<(i64, String)>, i64) {
    let aborted: Vec<AbortedTransaction> = replica
        .log
        .with_log(async |log| log.producer_states().aborted_overlapping(from, stable))
        .await
        .into_iter()
        .map(|aborted| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(aborted.producer_id))
                .with_first_offset(aborted.first_offset)
        })
        .collect();
    let mut filter = AbortedFilter::new(Some(aborted));
    let mut records = Vec::new();
    let mut offset = from;
    while offset < stable && records.len() < records_max {
        let Ok(fetched) = replica.log.read(offset, 1 << 20, Some(stable)).await else {
            break;
        };
        let mut bytes = fetched.to_bytes();
        let before = offset;
        while !bytes.is_empty() && records.len() < records_max {
            let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes) else {
                break;
            };
            let skipped = filter.skips(&set.records);
            for record in set.records {
                if record.offset < offset || record.offset >= stable {
                    continue;
                }
                offset = record.offset + 1;
                if !skipped && !record.control {
                    let value = record.value.as_deref().unwrap_or_default();
                    records.push((record.offset, String::from_utf8_lossy(value).into_owned()));
                }
            }
        }
        if offset == before {
            break;
        }
    }
    (records, offset)
}

/// The producer of every record of `replica` from `from` to `end`.
async fn logged_producers(replica: &SimReplica, from: i64, end: i64) -> Vec<LoggedProducer> {
    let mut logged = Vec::new();
    let mut offset = from;
    while offset < end {
        let Ok(fetched) = replica.log.read(offset, 1 << 20, Some(end)).await else {
            break;
        };
        let mut bytes = fetched.to_bytes();
        let Ok(batches) = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
        else {
            break;
        };
        let before = offset;
        for record in batches.iter().flat_map(|batch| &batch.records) {
            if record.offset < offset || record.offset >= end {
                continue;
            }
            offset = record.offset + 1;
            // A control record's key: version (i16), then type (i16: 0 abort, 1 commit).
            let marker = record.control.then(|| {
                record
                    .key
                    .as_deref()
                    .is_some_and(|key| key.len() >= 4 && key[2..4] == [0, 1])
            });
            logged.push(LoggedProducer {
                offset: record.offset,
                producer_id: record.producer_id,
                producer_epoch: record.producer_epoch,
                transactional: record.transactional,
                marker,
            });
        }
        if offset == before {
            break;
        }
    }
    logged
}

/// `(base offset, last offset, FNV-1a of its bytes)` of the batches of `replica` from `from`
/// to `end`.
async fn batch_digests(replica: &SimReplica, from: i64, end: i64) -> Vec<(i64, i64, u64)> {
    let mut digests = Vec::new();
    let mut offset = from;
    while offset < end {
        let Ok(fetched) = replica.log.read(offset, 1 << 20, Some(end)).await else {
            break;
        };
        let mut bytes = fetched.to_bytes();
        let before = offset;
        while let Ok(header) = BatchHeader::parse(&bytes) {
            if header.size_bytes() > bytes.len() {
                break;
            }
            let batch = bytes.split_to(header.size_bytes());
            if header.base_offset >= offset {
                digests.push((
                    header.base_offset,
                    header.last_offset(),
                    fnv1a(FNV_OFFSET, &batch),
                ));
                offset = header.next_offset();
            }
        }
        if offset == before {
            break;
        }
    }
    digests
}

/// Every replica's records, for the checker.
async fn dump(replicas: &Rc<Replicas>) -> Vec<ReplicaDump> {
    let mut dumps = Vec::new();
    for replica in replicas.all() {
        let (start, end) = replica
            .log
            .with_log(async |log| (log.log_start_offset(), log.log_end_offset()))
            .await;
        let records = read_values(&replica, start, end, usize::MAX).await;
        let batches = batch_digests(&replica, start, end).await;
        let (producers, read_committed, last_stable_offset) =
            if replica.topic() == txn_producer::TOPIC {
                let unstable = replica
                    .log
                    .with_log(async |log| log.first_unstable_offset())
                    .await;
                let stable = last_stable_offset(start, replica.readable_end(end), unstable);
                (
                    logged_producers(&replica, start, end).await,
                    read_committed_values(&replica, start, stable, usize::MAX)
                        .await
                        .0,
                    stable,
                )
            } else {
                (Vec::new(), Vec::new(), -1)
            };
        dumps.push(ReplicaDump {
            topic: replica.topic().to_owned(),
            partition: replica.index(),
            leading: replica.is_leading(),
            leader_epoch: replica.leader_epoch(),
            high_watermark: replica.high_watermark(),
            log_start_offset: start,
            log_end_offset: end,
            records,
            batches,
            producers,
            read_committed,
            last_stable_offset,
        });
    }
    dumps
}
