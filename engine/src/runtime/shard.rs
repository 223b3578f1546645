//! A shard: one glommio executor on one core, the partitions it owns, and its view of the
//! catalog.
//!
//! Each partition belongs to exactly one shard ([`shard_of`]); only that shard touches its log.
//! A request that needs a partition of another shard sends a [`ShardMessage`] over the glommio
//! channel mesh and awaits the reply: no locks, no shared mutable state on the data path. The
//! catalog is an immutable snapshot each shard holds; shard 0 is the controller, which alone
//! changes it (one admin operation at a time), persists it and hands the new snapshot to every
//! shard before answering.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::LocalSender;
use glommio::{GlommioError, ResourceType, Task};
use kafka_protocol::error::ResponseError;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::broker::catalog::{
    shard_of, Catalog, CatalogError, ClusterLayout, CreateContext, MetadataTopic, NewTopic,
};
use crate::broker::config::BrokerConfig;
use crate::broker::errors::KafkaError;
use crate::broker::metrics::ShardMetrics;
use crate::broker::quotas::{
    self, EntityName, QuotaChanges, QuotaEntity, QuotaKind, QuotaTracker, SensorKey,
};
use crate::group::{offsets_partition_for, Call, Reply, OFFSETS_TOPIC};
use crate::limits::{READ_AHEAD_BYTES_MAX, READ_AHEAD_TRIGGER_BYTES};
use crate::rng::SplitMix64;
use crate::storage::backend::DmaStorage;
use crate::storage::producers::AbortedTxn;
use crate::storage::{LogConfig, Marker, PartitionLog, SharedLog, StorageError, Verification};
use crate::txn::TRANSACTION_TOPIC;

use super::groups::{self, CoordinatorHost, GlommioClock};
use super::now_ms;
use super::producer_ids::{claim_local_block, ProducerIdAllocator};
use crate::quorum::admin::{IsrChange, ItemResult, QuotaChange, TopicAdmin, TopicToCreate};
use crate::replication::{
    EpochEnd, FollowerFetch, IsrChangeAsk, IsrChangeError, Replica, ReplicationConfig, RoleTaken,
};

/// The leader epoch of every partition of a single-node broker: one broker, one epoch. In a
/// cluster the metadata gives each partition its own.
pub const LEADER_EPOCH: i32 = 0;
/// How long a shard waits for its catalog to show a topic change the controller made.
const METADATA_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// An operation on one partition, run by the shard that owns it.
#[derive(Debug)]
pub enum PartitionOp {
    /// Append record batches.
    Produce {
        /// The batches as the producer sent them.
        records: Bytes,
        /// In a cluster, for `acks=all`: wait until the in-sync replicas have the records.
        acks_all: Option<AcksAll>,
        /// For transactional batches: what to verify with the transaction coordinator.
        verify: Option<TxnVerification>,
        /// A coordinator's state append: only while the partition is led at this epoch
        /// (NOT_LEADER_OR_FOLLOWER otherwise).
        leader_epoch: Option<i32>,
    },
    /// WriteTxnMarkers: append a transaction marker as the partition's leader.
    WriteMarker {
        /// The marker.
        marker: Marker,
        /// In a cluster: wait until the in-sync replicas have it, as Kafka writes markers
        /// with `acks=all`.
        acks_all: Option<AcksAll>,
    },
    /// A follower's Fetch (replica id set): read up to the log end, or answer with a
    /// diverging epoch.
    ReplicaFetch {
        /// The follower's broker id.
        replica: i32,
        /// Its log end offset.
        offset: i64,
        /// Most bytes.
        max_bytes: usize,
        /// The leader epoch it follows, or -1.
        current_leader_epoch: i32,
        /// The epoch of its last batch, or -1.
        last_fetched_epoch: i32,
    },
    /// Read whole batches from `offset`.
    Fetch {
        /// Read up to the log end instead of the high watermark: a group coordinator loading
        /// its partition after becoming its leader, which has every acknowledged commit in its
        /// log but may not know the high watermark its predecessor reached yet.
        to_log_end: bool,
        /// First offset wanted.
        offset: i64,
        /// Most bytes (at least one whole batch is returned anyway).
        max_bytes: usize,
        /// The client's idea of the leader epoch, or -1.
        current_leader_epoch: i32,
        /// `read_committed`: up to the last stable offset only, with the aborted transactions
        /// among what is read.
        read_committed: bool,
    },
    /// Wait until the readable end (the log end for a replica, else the high watermark)
    /// passes `offset`, or `timeout_ms` passes.
    WaitForData {
        /// The offset the consumer waits beyond.
        offset: i64,
        /// Longest wait.
        timeout_ms: u64,
        /// A follower waits for the log end, a consumer for the high watermark.
        replica: bool,
    },
    /// ListOffsets: -2 earliest, -1 latest, -3 max timestamp, else by timestamp.
    ListOffset {
        /// The timestamp or special value.
        timestamp: i64,
        /// `read_committed`: offsets below the last stable offset only.
        read_committed: bool,
        /// The client's idea of the leader epoch, or -1.
        current_leader_epoch: i32,
        /// Asked by a follower (a replica id): the latest offset is the log end, not the high
        /// watermark, as Kafka answers replicas.
        replica: bool,
    },
    /// DeleteRecords: move the log start up to `before_offset` (-1: the high watermark).
    DeleteRecords {
        /// New log start offset.
        before_offset: i64,
    },
    /// OffsetForLeaderEpoch.
    EndOffsetForEpoch {
        /// Epoch asked about.
        leader_epoch: i32,
        /// The client's idea of the leader epoch, or -1.
        current_leader_epoch: i32,
    },
}

/// An `acks=all` produce's conditions.
#[derive(Debug, Clone, Copy)]
pub struct AcksAll {
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// How long to wait for the replicas (the request's timeout).
    pub timeout_ms: u64,
}

/// What a [`PartitionOp`] gives back.
#[derive(Debug)]
pub enum PartitionOutcome {
    /// Appended.
    Produced {
        /// Offset of the first record.
        base_offset: i64,
        /// The broker's timestamp for LogAppendTime topics, else -1.
        log_append_time_ms: i64,
        /// Log start offset after the append.
        log_start_offset: i64,
    },
    /// Read.
    Fetched {
        /// Whole batches.
        records: Bytes,
        /// High watermark.
        high_watermark: i64,
        /// Last stable offset: the high watermark, or the first offset of the oldest open
        /// transaction below it.
        last_stable_offset: i64,
        /// Log start offset.
        log_start_offset: i64,
        /// For `read_committed`: the aborted transactions among the records.
        aborted: Vec<AbortedTxn>,
    },
    /// Read for a follower.
    ReplicaFetched {
        /// Whole batches, up to the log end.
        records: Bytes,
        /// High watermark.
        high_watermark: i64,
        /// Log start offset.
        log_start_offset: i64,
        /// Set when the follower's log diverges: truncate to here and fetch again.
        diverging: Option<EpochEnd>,
    },
    /// Whether data arrived before the timeout.
    Waited(bool),
    /// An offset, with its timestamp (-1 when none).
    Offset {
        /// The offset, -1 when none matches.
        offset: i64,
        /// Its timestamp, or -1.
        timestamp: i64,
    },
    /// The log start offset after DeleteRecords.
    LowWatermark(i64),
    /// The end offset of a leader epoch.
    EpochEnd {
        /// Epoch, or -1 when unknown.
        leader_epoch: i32,
        /// End offset, or -1.
        end_offset: i64,
    },
}

/// Result of a [`PartitionOp`].
pub type PartitionResult = Result<PartitionOutcome, KafkaError>;

/// A catalog change, run by the controller shard.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// CreateTopics.
    CreateTopics {
        /// The topics.
        topics: Vec<NewTopic>,
        /// Check only.
        validate_only: bool,
    },
    /// DeleteTopics.
    DeleteTopics {
        /// Names.
        names: Vec<String>,
    },
    /// CreatePartitions.
    CreatePartitions {
        /// Topic and new count.
        topics: Vec<(String, i32)>,
        /// Check only.
        validate_only: bool,
    },
    /// AlterConfigs / IncrementalAlterConfigs on a topic.
    AlterTopicConfigs {
        /// Topic.
        topic: String,
        /// Name and value; `None` deletes the override.
        changes: Vec<(String, Option<String>)>,
        /// Replace all overrides (AlterConfigs) instead of changing the named ones.
        replace_all: bool,
        /// Check only.
        validate_only: bool,
    },
    /// A change only the cluster's active controller makes (an ISR change).
    Controller(TopicAdmin),
    /// AlterClientQuotas: for each entity, values set (`Some`) or removed (`None`).
    AlterClientQuotas {
        /// The entities and their changes.
        entries: Vec<(QuotaEntity, QuotaChanges)>,
        /// Check only.
        validate_only: bool,
    },
    /// AlterConfigs / IncrementalAlterConfigs on the broker (dynamic topic defaults).
    AlterBrokerConfigs {
        /// Broker-level name and value; `None` deletes the override.
        changes: Vec<(String, Option<String>)>,
        /// Replace all overrides.
        replace_all: bool,
        /// Check only.
        validate_only: bool,
    },
}

/// What a transactional produce verifies with the producer's transaction coordinator before
/// a batch that would open a transaction in the partition is appended (KIP-890; see
/// `storage::verification`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnVerification {
    /// The request's transactional id.
    pub transactional_id: String,
    /// The batch's producer id.
    pub producer_id: i64,
    /// The batch's producer epoch.
    pub producer_epoch: i16,
    /// The partition's topic.
    pub topic: String,
}

/// A message between shards.
#[derive(Debug)]
pub enum ShardMessage {
    /// Run a partition operation on its owner.
    Partition {
        /// Topic.
        topic_id: Uuid,
        /// Partition index.
        partition: i32,
        /// The operation.
        op: PartitionOp,
        /// Where the result goes.
        reply: oneshot::Sender<PartitionResult>,
    },
    /// Take a new catalog: open, close and reconfigure partitions to match.
    ApplyCatalog {
        /// The snapshot.
        catalog: Arc<Catalog>,
        /// Acknowledged once applied.
        reply: oneshot::Sender<()>,
    },
    /// Run an admin operation (sent to the controller shard).
    Admin {
        /// The operation.
        op: AdminOp,
        /// One result per item of the operation.
        reply: oneshot::Sender<Vec<Result<(), KafkaError>>>,
    },
    /// Run a group coordinator call on the shard owning the `__consumer_offsets` partition.
    Group {
        /// The `__consumer_offsets` partition.
        partition: i32,
        /// The call.
        call: Call,
        /// Where the reply goes.
        reply: oneshot::Sender<Reply>,
    },
    /// Run a transaction coordinator call on the shard owning the `__transaction_state`
    /// partition.
    Txn {
        /// The `__transaction_state` partition.
        partition: i32,
        /// The call.
        call: crate::txn::TxnCall,
        /// Where the reply goes.
        reply: oneshot::Sender<crate::txn::TxnReply>,
    },
    /// Send a copy of the shard's metrics.
    Metrics {
        /// Where the copy goes.
        reply: oneshot::Sender<ShardMetrics>,
    },
    /// Give out a producer id (sent to shard 0, which holds the block).
    ProducerId {
        /// Where the id goes.
        reply: oneshot::Sender<Result<i64, KafkaError>>,
    },
}

/// The user every client is on a broker without authentication (Kafka's principal name for
/// PLAINTEXT listeners).
pub const ANONYMOUS_USER: &str = "ANONYMOUS";

/// State shared by all shards of the process: counters and flags touched when connections
/// open and close and at shutdown, and the client quotas' rates, touched on the data path
/// only by clients that have a quota.
#[derive(Debug, Default)]
pub struct ProcessShared {
    /// The measured rates of clients with a quota, shared so that a quota holds across all
    /// cores.
    pub quota_tracker: Mutex<QuotaTracker>,
    /// Set by SIGINT or SIGTERM, or by [`super::server::RunningBroker::stop`].
    pub shutdown_requested: AtomicBool,
    /// In a cluster: the broker's leaderships moved away (or could not), so its shards may
    /// stop (set by the quorum driver).
    pub controlled_shutdown_done: AtomicBool,
    /// Shards whose connections have all closed.
    pub shards_drained: AtomicUsize,
    /// Shards listening for connections.
    pub shards_ready: AtomicUsize,
    /// Shards that stopped with an error.
    pub shards_failed: AtomicUsize,
    /// Client connections open, per IP (the total is their sum).
    pub connections_per_ip: Mutex<BTreeMap<std::net::IpAddr, usize>>,
    /// The metadata quorum as this node last saw it, for DescribeQuorum; `None` without a
    /// quorum.
    pub quorum: Mutex<Option<super::quorum::QuorumStatus>>,
}

/// A partition owned by this shard: its replica, and what the shard keeps beside it.
#[derive(Debug)]
pub struct Partition {
    /// The topic's id.
    pub topic_id: Uuid,
    /// The replica: its log and its part in replication.
    pub replica: Replica<DmaStorage>,
    /// The read of what a sequential consumer will fetch next, started when it fetched this.
    read_ahead: RefCell<Option<ReadAhead>>,
    /// The last background sync started by [`Shard::sync_in_background`].
    background_sync: RefCell<Option<Task<()>>>,
    /// Whether that sync still runs.
    background_sync_running: Cell<bool>,
    /// Set by [`Partition::quiesce`]: no more background syncs start.
    quiescing: Cell<bool>,
}

impl Partition {
    fn new(topic_id: Uuid, replica: Replica<DmaStorage>) -> Partition {
        Partition {
            topic_id,
            replica,
            read_ahead: RefCell::new(None),
            background_sync: RefCell::new(None),
            background_sync_running: Cell::new(false),
            quiescing: Cell::new(false),
        }
    }

    /// Cancels a read-ahead, waits for a background sync and starts no more, so that nothing
    /// but the owner holds the partition.
    async fn quiesce(&self) {
        self.quiescing.set(true);
        let ahead = self.read_ahead.borrow_mut().take();
        if let Some(ahead) = ahead {
            ahead.task.cancel().await;
        }
        loop {
            let sync = self.background_sync.borrow_mut().take();
            let Some(sync) = sync else {
                break;
            };
            sync.await;
        }
    }
}

/// A read started ahead of a consumer: O_DIRECT reads get no read-ahead from the kernel, so a
/// consumer reading history would otherwise wait for the disk on every fetch.
#[derive(Debug)]
struct ReadAhead {
    offset: i64,
    max_bytes: usize,
    task: Task<Result<Bytes, StorageError>>,
}

/// A partition call started on this or another shard.
pub enum PendingCall {
    /// Running on this shard.
    Local(Task<PartitionResult>),
    /// Sent to another shard.
    Remote(oneshot::Receiver<PartitionResult>),
    /// Failed before it started.
    Failed(KafkaError),
}

impl PendingCall {
    /// Waits for the result.
    pub async fn result(self) -> PartitionResult {
        match self {
            PendingCall::Local(task) => task.await,
            PendingCall::Remote(receiver) => receiver.await.unwrap_or_else(|_| {
                Err(KafkaError::with_message(
                    ResponseError::NotLeaderOrFollower,
                    "the shard owning the partition stopped",
                ))
            }),
            PendingCall::Failed(error) => Err(error),
        }
    }
}

/// One shard. See the module docs.
pub struct Shard {
    /// This shard's index (its peer id in the channel mesh).
    pub id: usize,
    /// Number of shards.
    pub shards: usize,
    /// Broker settings.
    pub config: Arc<BrokerConfig>,
    /// Process-wide flags and counters.
    pub process: Arc<ProcessShared>,
    /// This shard's counters.
    pub metrics: RefCell<ShardMetrics>,
    /// Set once this shard starts shutting down; `shutdown_event` wakes waiters.
    pub shutting_down: Cell<bool>,
    /// Notified when shutdown starts.
    pub shutdown_event: Event,
    catalog: RefCell<Arc<Catalog>>,
    partitions: RefCell<BTreeMap<(Uuid, i32), Rc<Partition>>>,
    failed_partitions: RefCell<BTreeMap<(Uuid, i32), String>>,
    pub(super) peers: Senders<ShardMessage>,
    admin_turn: async_lock::Mutex<()>,
    coordinators: RefCell<BTreeMap<i32, Rc<CoordinatorHost>>>,
    /// The transaction coordinators of the `__transaction_state` partitions this shard leads.
    pub(super) txn_coordinators: RefCell<BTreeMap<i32, Rc<super::txns::TxnHost>>>,
    /// Idle connections to other brokers for verifications and transaction markers.
    pub(super) broker_connections: super::broker_connections::BrokerConnections,
    /// In a cluster, on the controller shard: the quorum driver's inbox.
    quorum_events: RefCell<Option<Rc<LocalSender<super::quorum::Event>>>>,
    /// In a cluster: the newest applied metadata not yet handed to the shards.
    metadata_to_publish: RefCell<Option<ClusterMetadata>>,
    metadata_queued: Event,
    /// In a cluster: the log index of the metadata every shard has applied.
    published_metadata_index: Cell<u64>,
    metadata_published: Event,
    /// Leaders this shard runs a replica fetcher for.
    fetchers: RefCell<BTreeSet<i32>>,
    /// On shard 0: the producer id block InitProducerId takes from.
    producer_ids: ProducerIdAllocator,
}

/// Applied cluster metadata, as the quorum driver hands it to the shards.
#[derive(Debug)]
struct ClusterMetadata {
    index: u64,
    cluster_id: String,
    topics: Vec<MetadataTopic>,
    layout: ClusterLayout,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The directory of a partition.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

impl Shard {
    /// A shard with no partitions yet; [`Shard::apply_catalog`] opens them.
    pub fn new(
        config: Arc<BrokerConfig>,
        process: Arc<ProcessShared>,
        peers: Senders<ShardMessage>,
    ) -> Shard {
        Shard {
            id: peers.peer_id(),
            shards: peers.nr_consumers(),
            config,
            process,
            metrics: RefCell::new(ShardMetrics::default()),
            shutting_down: Cell::new(false),
            shutdown_event: Event::new(),
            catalog: RefCell::new(Arc::new(Catalog::default())),
            partitions: RefCell::new(BTreeMap::new()),
            failed_partitions: RefCell::new(BTreeMap::new()),
            peers,
            admin_turn: async_lock::Mutex::new(()),
            coordinators: RefCell::new(BTreeMap::new()),
            txn_coordinators: RefCell::new(BTreeMap::new()),
            broker_connections: super::broker_connections::BrokerConnections::default(),
            quorum_events: RefCell::new(None),
            metadata_to_publish: RefCell::new(None),
            metadata_queued: Event::new(),
            published_metadata_index: Cell::new(0),
            metadata_published: Event::new(),
            fetchers: RefCell::new(BTreeSet::new()),
            producer_ids: ProducerIdAllocator::default(),
        }
    }

    /// This shard's catalog snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.borrow())
    }

    /// Whether this shard is the controller.
    pub fn is_controller(&self) -> bool {
        self.id == 0
    }

    /// The shard owning a partition.
    pub fn owner_of(&self, topic_id: Uuid, partition: i32) -> usize {
        shard_of(topic_id, partition, self.shards)
    }

    /// Starts a partition operation on the owning shard.
    pub fn start_partition_call(
        self: &Rc<Self>,
        topic_id: Uuid,
        partition: i32,
        op: PartitionOp,
    ) -> PendingCall {
        let owner = self.owner_of(topic_id, partition);
        if owner == self.id {
            let shard = Rc::clone(self);
            return PendingCall::Local(glommio::spawn_local(async move {
                shard.execute(topic_id, partition, op).await
            }));
        }
        let (reply, receiver) = oneshot::channel();
        let message = ShardMessage::Partition {
            topic_id,
            partition,
            op,
            reply,
        };
        match self.peers.try_send_to(owner, message) {
            Ok(()) => PendingCall::Remote(receiver),
            Err(GlommioError::WouldBlock(ResourceType::Channel(message))) => {
                // The channel is full: wait for room in a task, so the caller still gets a
                // call it can await.
                let shard = Rc::clone(self);
                glommio::spawn_local(async move {
                    if shard.peers.send_to(owner, message).await.is_err() {
                        warn!(owner, "could not reach a shard");
                    }
                })
                .detach();
                PendingCall::Remote(receiver)
            }
            Err(error) => PendingCall::Failed(KafkaError::with_message(
                ResponseError::NotLeaderOrFollower,
                format!("cannot reach shard {owner}: {error}"),
            )),
        }
    }

    /// Runs an operation on a partition this shard owns.
    pub async fn execute(
        self: &Rc<Self>,
        topic_id: Uuid,
        partition: i32,
        op: PartitionOp,
    ) -> PartitionResult {
        let found = self
            .partitions
            .borrow()
            .get(&(topic_id, partition))
            .cloned();
        let Some(partition_state) = found else {
            if let Some(reason) = self.failed_partitions.borrow().get(&(topic_id, partition)) {
                return Err(KafkaError::with_message(
                    ResponseError::KafkaStorageError,
                    reason.clone(),
                ));
            }
            if let Some(state) = self.catalog().partition_state(topic_id, partition) {
                return Err(KafkaError::with_message(
                    ResponseError::NotLeaderOrFollower,
                    format!("broker {} leads this partition", state.leader),
                ));
            }
            return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition));
        };
        if !partition_state.replica.is_leading() {
            return Err(KafkaError::with_message(
                ResponseError::NotLeaderOrFollower,
                "this broker does not lead the partition",
            ));
        }
        let result = run_partition_op(self, &partition_state, op).await;
        if let Err(error) = &result {
            if error.code == ResponseError::KafkaStorageError {
                warn!(topic = %partition_state.replica.topic(), partition, error = ?error.message, "storage error");
            }
        }
        result
    }

    /// Handles a message from another shard.
    pub async fn handle_message(self: &Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Partition {
                topic_id,
                partition,
                op,
                reply,
            } => {
                let result = self.execute(topic_id, partition, op).await;
                let _ = reply.send(result);
            }
            ShardMessage::ApplyCatalog { catalog, reply } => {
                self.apply_catalog(catalog).await;
                let _ = reply.send(());
            }
            ShardMessage::Admin { op, reply } => {
                let results = self.run_admin(op).await;
                let _ = reply.send(results);
            }
            ShardMessage::Group {
                partition,
                call,
                reply,
            } => {
                let answer = self.local_group_call(partition, call).await;
                let _ = reply.send(answer);
            }
            ShardMessage::Txn {
                partition,
                call,
                reply,
            } => {
                let answer = self.local_txn_call(partition, call).await;
                let _ = reply.send(answer);
            }
            ShardMessage::Metrics { reply } => {
                let _ = reply.send(self.metrics_snapshot());
            }
            ShardMessage::ProducerId { reply } => {
                let _ = reply.send(self.allocate_producer_id().await);
            }
        }
    }

    /// A producer id never given out before, by this broker or another of its cluster
    /// (InitProducerId). Shard 0 hands them out from a block; see [`super::producer_ids`].
    ///
    /// # Errors
    /// `COORDINATOR_NOT_AVAILABLE` (which clients retry) when no block could be claimed.
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        let unavailable = |message: String| {
            KafkaError::with_message(ResponseError::CoordinatorNotAvailable, message)
        };
        if self.id != 0 {
            let (reply, receiver) = oneshot::channel();
            if self
                .peers
                .send_to(0, ShardMessage::ProducerId { reply })
                .await
                .is_err()
            {
                return Err(unavailable("shard 0 is stopping".into()));
            }
            return receiver
                .await
                .unwrap_or_else(|_| Err(unavailable("shard 0 is stopping".into())));
        }
        let _turn = self.producer_ids.turn.lock().await;
        if let Some(id) = self.producer_ids.take() {
            return Ok(id);
        }
        let start = if self.in_cluster() {
            self.cluster_producer_id_block().await?
        } else {
            claim_local_block(&self.config.data_dir).map_err(|error| {
                unavailable(format!("claiming a block of producer ids failed: {error}"))
            })?
        };
        self.producer_ids.refill(start).map_err(unavailable)?;
        Ok(self.producer_ids.take().expect("a fresh block has ids"))
    }

    /// Asks the active controller for a block of producer ids and returns its first id, once
    /// this broker's metadata holds it.
    async fn cluster_producer_id_block(self: &Rc<Self>) -> Result<i64, KafkaError> {
        let broker_id = self.config.node_id;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let request_id = SplitMix64::new(nanos ^ (broker_id as u64).rotate_left(32)).next_u64();
        let results = self
            .cluster_topic_admin(TopicAdmin::AllocateProducerIds {
                broker_id,
                request_id,
            })
            .await;
        let unavailable = |message: String| {
            KafkaError::with_message(ResponseError::CoordinatorNotAvailable, message)
        };
        match results.into_iter().next() {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                return Err(unavailable(format!(
                    "the controller gave no producer ids: {}",
                    error.message.unwrap_or_else(|| format!("{:?}", error.code))
                )))
            }
            None => return Err(unavailable("the controller gave no answer".into())),
        }
        let block = self
            .catalog()
            .layout()
            .and_then(|layout| layout.producer_id_blocks.get(&broker_id).copied());
        match block {
            Some((answered, start)) if answered == request_id => Ok(start),
            _ => Err(unavailable(
                "the producer id block is not in this broker's metadata yet".into(),
            )),
        }
    }

    /// A copy of this shard's counters, with its gauges filled in.
    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut metrics = self.metrics.borrow().clone();
        metrics.partitions = self.partitions.borrow().len() as u64;
        metrics
    }

    /// Every shard's counters, merged.
    pub async fn collect_metrics(self: &Rc<Self>) -> ShardMetrics {
        let mut merged = self.metrics_snapshot();
        for peer in (0..self.shards).filter(|peer| *peer != self.id) {
            let (reply, receiver) = oneshot::channel();
            if self
                .peers
                .send_to(peer, ShardMessage::Metrics { reply })
                .await
                .is_ok()
            {
                if let Ok(metrics) = receiver.await {
                    merged.merge(&metrics);
                }
            }
        }
        merged
    }

    /// Runs an admin operation on the controller shard, from any shard.
    pub async fn admin(self: &Rc<Self>, op: AdminOp) -> Vec<Result<(), KafkaError>> {
        if self.is_controller() {
            return self.run_admin(op).await;
        }
        let (reply, receiver) = oneshot::channel();
        if self
            .peers
            .send_to(0, ShardMessage::Admin { op, reply })
            .await
            .is_err()
        {
            return vec![Err(KafkaError::new(ResponseError::NotController))];
        }
        receiver
            .await
            .unwrap_or_else(|_| vec![Err(KafkaError::new(ResponseError::NotController))])
    }

    /// The facts topic creation is checked against.
    pub fn create_context(&self) -> CreateContext {
        let live_brokers = match self.catalog().layout() {
            Some(layout) => layout.brokers.keys().copied().collect(),
            None => vec![self.config.node_id],
        };
        CreateContext {
            live_brokers,
            default_partitions: self.config.num_partitions,
            default_replication_factor: 1,
        }
    }

    /// The log settings of `topic`'s partitions: its configs, with the broker's own settings
    /// for what is not a topic config.
    fn log_config_of(&self, topic: &crate::broker::catalog::Topic) -> LogConfig {
        LogConfig {
            producer_id_expiration_ms: self.config.producer_id_expiration_ms,
            ..topic.log_config.clone()
        }
    }

    /// Whether this broker is a node of a cluster (started with a controller quorum).
    pub fn in_cluster(&self) -> bool {
        !self.config.controller_quorum.is_empty()
    }

    /// Connects the controller shard to its quorum driver.
    pub(crate) fn set_quorum_events(&self, events: Rc<LocalSender<super::quorum::Event>>) {
        *self.quorum_events.borrow_mut() = Some(events);
    }

    /// Hands newer applied metadata to [`Shard::publish_cluster_metadata`] (only the newest
    /// waiting is kept).
    pub(crate) fn queue_cluster_metadata(
        &self,
        index: u64,
        cluster_id: &str,
        topics: Vec<MetadataTopic>,
        layout: ClusterLayout,
    ) {
        *self.metadata_to_publish.borrow_mut() = Some(ClusterMetadata {
            index,
            cluster_id: cluster_id.to_owned(),
            topics,
            layout,
        });
        self.metadata_queued.notify(usize::MAX);
    }

    /// The controller shard's task that gives every shard the applied cluster metadata as its
    /// catalog, one change at a time, so the quorum driver never waits for partitions to open.
    pub(crate) async fn publish_cluster_metadata(self: Rc<Self>) {
        while !self.shutting_down.get() {
            let listener = self.metadata_queued.listen();
            let next = self.metadata_to_publish.borrow_mut().take();
            let Some(metadata) = next else {
                futures_lite::future::or(listener, self.shutdown_event.listen()).await;
                continue;
            };
            {
                let _turn = self.admin_turn.lock().await;
                let catalog = self.catalog().with_cluster_metadata(
                    &metadata.cluster_id,
                    metadata.topics,
                    metadata.layout,
                );
                self.broadcast_catalog(Arc::new(catalog)).await;
            }
            self.published_metadata_index.set(metadata.index);
            self.metadata_published.notify(usize::MAX);
        }
    }

    /// Runs a topic change through the active controller and waits until this node's shards
    /// have it.
    async fn cluster_topic_admin(&self, admin: TopicAdmin) -> Vec<Result<(), KafkaError>> {
        let unavailable = |message: &str| {
            vec![
                Err(KafkaError::with_message(
                    ResponseError::NotController,
                    message
                ));
                admin.len()
            ]
        };
        let events = self.quorum_events.borrow().clone();
        let Some(events) = events else {
            return unavailable("the metadata quorum is not running on this node");
        };
        let (reply, receiver) = oneshot::channel();
        let items = admin.len();
        if events
            .send(super::quorum::Event::Admin { admin, reply })
            .await
            .is_err()
        {
            return vec![Err(KafkaError::new(ResponseError::NotController)); items];
        }
        let Ok((results, index)) = receiver.await else {
            return vec![Err(KafkaError::new(ResponseError::NotController)); items];
        };
        let waited = futures_lite::future::or(
            async {
                while self.published_metadata_index.get() < index {
                    let listener = self.metadata_published.listen();
                    if self.published_metadata_index.get() >= index {
                        break;
                    }
                    listener.await;
                }
                true
            },
            async {
                glommio::timer::sleep(METADATA_PUBLISH_TIMEOUT).await;
                false
            },
        )
        .await;
        if !waited {
            warn!(index, "the shards did not take the new metadata in time");
        }
        results
            .into_iter()
            .map(|result: ItemResult| {
                result.map_err(|(code, message)| {
                    KafkaError::with_message(
                        ResponseError::try_from_code(code)
                            .unwrap_or(ResponseError::UnknownServerError),
                        message,
                    )
                })
            })
            .collect()
    }

    /// CreateTopics and DeleteTopics in a cluster: checked here, made by the controller.
    /// Other catalog changes of topics are refused there for now.
    async fn run_cluster_admin(&self, op: AdminOp) -> Vec<Result<(), KafkaError>> {
        let catalog = self.catalog();
        match op {
            AdminOp::CreateTopics {
                topics,
                validate_only,
            } => {
                let context = self.create_context();
                let mut results: Vec<Option<Result<(), KafkaError>>> = Vec::new();
                let mut to_create = Vec::new();
                for topic in &topics {
                    let checked = catalog
                        .check_create(topic, &context)
                        .map_err(KafkaError::from)
                        .and_then(|checked| {
                            let replication_factor = if topic.replication_factor == -1 {
                                context.default_replication_factor
                            } else {
                                topic.replication_factor
                            };
                            if !topic.assignments.is_empty() {
                                return Err(KafkaError::with_message(
                                    ResponseError::InvalidReplicaAssignment,
                                    "manual replica assignments are not supported in a cluster yet",
                                ));
                            }
                            Ok(TopicToCreate {
                                name: topic.name.clone(),
                                partitions: checked.partitions,
                                replication_factor: replication_factor as usize,
                                configs: topic.configs.clone(),
                            })
                        });
                    match checked {
                        Ok(create) if !validate_only => {
                            to_create.push(create);
                            results.push(None);
                        }
                        Ok(_) => results.push(Some(Ok(()))),
                        Err(error) => results.push(Some(Err(error))),
                    }
                }
                let made = if to_create.is_empty() {
                    Vec::new()
                } else {
                    self.cluster_topic_admin(TopicAdmin::Create(to_create))
                        .await
                };
                merge_answers(results, made)
            }
            AdminOp::DeleteTopics { names } => {
                let mut results: Vec<Option<Result<(), KafkaError>>> = Vec::new();
                let mut to_delete = Vec::new();
                for name in &names {
                    match catalog.without_topic(name) {
                        Ok(_) => {
                            to_delete.push(name.clone());
                            results.push(None);
                        }
                        Err(error) => results.push(Some(Err(KafkaError::from(error)))),
                    }
                }
                let made = if to_delete.is_empty() {
                    Vec::new()
                } else {
                    self.cluster_topic_admin(TopicAdmin::Delete(to_delete))
                        .await
                };
                merge_answers(results, made)
            }
            AdminOp::CreatePartitions {
                topics,
                validate_only,
            } => {
                let mut results: Vec<Option<Result<(), KafkaError>>> = Vec::new();
                let mut to_add = Vec::new();
                for (name, count) in &topics {
                    match catalog.with_partitions(name, *count) {
                        Ok(_) if validate_only => results.push(Some(Ok(()))),
                        Ok(_) => {
                            to_add.push((name.clone(), *count));
                            results.push(None);
                        }
                        Err(error) => results.push(Some(Err(KafkaError::from(error)))),
                    }
                }
                let made = if to_add.is_empty() {
                    Vec::new()
                } else {
                    self.cluster_topic_admin(TopicAdmin::AddPartitions(to_add))
                        .await
                };
                merge_answers(results, made)
            }
            AdminOp::AlterTopicConfigs {
                topic,
                changes,
                replace_all,
                validate_only,
            } => {
                let checked = match catalog.topic(&topic) {
                    None => Err(CatalogError::UnknownTopic(topic.clone())),
                    Some(current) => {
                        let configs = changed(&current.configs, changes, replace_all);
                        catalog
                            .with_topic_configs(&topic, configs.clone())
                            .map(|_| configs)
                    }
                };
                match checked {
                    Err(error) => vec![Err(KafkaError::from(error))],
                    Ok(_) if validate_only => vec![Ok(())],
                    Ok(configs) => {
                        self.cluster_topic_admin(TopicAdmin::SetTopicConfigs { topic, configs })
                            .await
                    }
                }
            }
            AdminOp::Controller(admin) => self.cluster_topic_admin(admin).await,
            AdminOp::AlterBrokerConfigs { .. } => unreachable!("run locally"),
            AdminOp::AlterClientQuotas {
                entries,
                validate_only,
            } => {
                // Checked here, then written to the cluster metadata, which every broker
                // applies: a quota holds on every broker of the cluster.
                let mut results: Vec<Option<Result<(), KafkaError>>> = Vec::new();
                let mut changes = Vec::new();
                for (entity, values) in &entries {
                    match catalog.with_client_quota(entity, values) {
                        Ok(_) if validate_only => results.push(Some(Ok(()))),
                        Ok(_) => {
                            changes.push(QuotaChange {
                                entity: (
                                    entity.user.as_ref().map(EntityName::to_stored),
                                    entity.client_id.as_ref().map(EntityName::to_stored),
                                ),
                                values: values
                                    .iter()
                                    .map(|(key, value)| {
                                        (key.clone(), value.map(|value| value.to_string()))
                                    })
                                    .collect(),
                            });
                            results.push(None);
                        }
                        Err(reason) => results.push(Some(Err(KafkaError::with_message(
                            ResponseError::InvalidRequest,
                            reason,
                        )))),
                    }
                }
                let made = if changes.is_empty() {
                    Vec::new()
                } else {
                    self.cluster_topic_admin(TopicAdmin::AlterClientQuotas(changes))
                        .await
                };
                merge_answers(results, made)
            }
        }
    }

    /// `catalog`, unless it holds more partitions than `max_partitions_per_broker` (a single
    /// broker holds them all).
    fn within_partition_limit(&self, catalog: Catalog) -> Result<Catalog, KafkaError> {
        let count = catalog.partition_count();
        let limit = self.config.max_partitions_per_broker;
        if count > limit {
            return Err(KafkaError::with_message(
                ResponseError::InvalidPartitions,
                format!(
                    "the broker would hold {count} partitions, over its limit of {limit} \
                     (max_partitions_per_broker)"
                ),
            ));
        }
        Ok(catalog)
    }

    async fn run_admin(self: &Rc<Self>, op: AdminOp) -> Vec<Result<(), KafkaError>> {
        assert!(self.is_controller());
        if self.in_cluster() && !matches!(op, AdminOp::AlterBrokerConfigs { .. }) {
            return self.run_cluster_admin(op).await;
        }
        let _turn = self.admin_turn.lock().await;
        let mut catalog = Catalog::clone(&self.catalog());
        let mut results = Vec::new();
        let mut validate_only = false;
        match op {
            AdminOp::CreateTopics {
                topics,
                validate_only: only,
            } => {
                validate_only = only;
                let context = self.create_context();
                for topic in &topics {
                    let result = catalog
                        .with_topic(topic, &context, new_topic_id(&catalog))
                        .map_err(KafkaError::from)
                        .and_then(|(next, _)| self.within_partition_limit(next))
                        .map(|next| {
                            if !only {
                                catalog = next;
                            }
                        });
                    results.push(result);
                }
            }
            AdminOp::DeleteTopics { names } => {
                for name in &names {
                    let result = catalog.without_topic(name).map(|(next, _)| catalog = next);
                    results.push(result.map_err(KafkaError::from));
                }
            }
            AdminOp::CreatePartitions {
                topics,
                validate_only: only,
            } => {
                validate_only = only;
                for (name, count) in &topics {
                    let result = catalog
                        .with_partitions(name, *count)
                        .map_err(KafkaError::from)
                        .and_then(|next| self.within_partition_limit(next))
                        .map(|next| catalog = next);
                    results.push(result);
                }
            }
            AdminOp::AlterTopicConfigs {
                topic,
                changes,
                replace_all,
                validate_only: only,
            } => {
                validate_only = only;
                let result = match catalog.topic(&topic) {
                    None => Err(CatalogError::UnknownTopic(topic.clone())),
                    Some(current) => {
                        let configs = changed(&current.configs, changes, replace_all);
                        catalog
                            .with_topic_configs(&topic, configs)
                            .map(|next| catalog = next)
                    }
                };
                results.push(result.map_err(KafkaError::from));
            }
            AdminOp::Controller(_) => results.push(Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                "a single-node broker has no controller quorum",
            ))),
            AdminOp::AlterClientQuotas {
                entries,
                validate_only: only,
            } => {
                validate_only = only;
                for (entity, changes) in &entries {
                    let result = catalog
                        .with_client_quota(entity, changes)
                        .map(|next| catalog = next)
                        .map_err(|reason| {
                            KafkaError::with_message(ResponseError::InvalidRequest, reason)
                        });
                    results.push(result);
                }
            }
            AdminOp::AlterBrokerConfigs {
                changes,
                replace_all,
                validate_only: only,
            } => {
                validate_only = only;
                let configs = changed(catalog.dynamic_broker_configs(), changes, replace_all);
                let result = catalog
                    .with_broker_configs(configs)
                    .map(|next| catalog = next);
                results.push(result.map_err(KafkaError::from));
            }
        }
        if validate_only || catalog == *self.catalog() {
            return results;
        }
        if let Err(error) = persist_catalog(&self.config.data_dir, &catalog) {
            error!(%error, "could not write the catalog; the change is not applied");
            let failure = KafkaError::with_message(
                ResponseError::KafkaStorageError,
                format!("could not write the catalog: {error}"),
            );
            return results
                .into_iter()
                .map(|result| result.and(Err(failure.clone())))
                .collect();
        }
        self.broadcast_catalog(Arc::new(catalog)).await;
        results
    }

    /// Hands a catalog to every shard, this one included, and waits until all applied it.
    pub async fn broadcast_catalog(self: &Rc<Self>, catalog: Arc<Catalog>) {
        let mut acks = Vec::new();
        for peer in (0..self.shards).filter(|peer| *peer != self.id) {
            let (reply, receiver) = oneshot::channel();
            let message = ShardMessage::ApplyCatalog {
                catalog: Arc::clone(&catalog),
                reply,
            };
            if self.peers.send_to(peer, message).await.is_ok() {
                acks.push(receiver);
            }
        }
        self.apply_catalog(catalog).await;
        for ack in acks {
            let _ = ack.await;
        }
    }

    /// Makes this shard's partitions match `catalog`: opens the new ones it owns, closes and
    /// deletes those whose topic is gone, and passes config changes to the logs.
    pub async fn apply_catalog(self: &Rc<Self>, catalog: Arc<Catalog>) {
        let previous = self.catalog.replace(Arc::clone(&catalog));
        // Coordinators are registered (loading) as soon as the catalog has their partitions, so
        // that a request arriving while the partitions open waits for its coordinator instead
        // of finding none.
        self.register_coordinators(&catalog);
        self.register_txn_coordinators(&catalog);
        let owned: Vec<(Uuid, i32)> = self.partitions.borrow().keys().copied().collect();
        for key in owned {
            let (topic_id, index) = key;
            let replica_here = self.role_of(&catalog, topic_id, index).is_some();
            match catalog.topic_by_id(topic_id).filter(|_| replica_here) {
                None => {
                    let partition = self.partitions.borrow_mut().remove(&key);
                    if let Some(partition) = partition {
                        self.delete_partition(partition).await;
                    }
                }
                Some(topic) => {
                    self.take_role(&catalog, topic_id, index).await;
                    let unchanged = previous
                        .topic_by_id(topic_id)
                        .is_some_and(|old| old.log_config == topic.log_config);
                    if !unchanged {
                        let partition = self.partitions.borrow().get(&key).cloned();
                        if let Some(partition) = partition {
                            let config = self.log_config_of(topic);
                            let result = partition
                                .replica
                                .log
                                .with_log(async |log| log.set_config(config))
                                .await;
                            if let Err(error) = result {
                                warn!(topic = %topic.name, partition = index, %error, "config not applied");
                            }
                        }
                    }
                }
            }
        }
        self.failed_partitions
            .borrow_mut()
            .retain(|(topic_id, _), _| catalog.topic_by_id(*topic_id).is_some());
        let topics: Vec<_> = catalog.topics().cloned().collect();
        let mut opened_in_cluster = Vec::new();
        for topic in topics {
            for index in 0..topic.partitions {
                let key = (topic.id, index);
                if self.owner_of(topic.id, index) != self.id
                    || self.partitions.borrow().contains_key(&key)
                {
                    continue;
                }
                let Some((leading, leader_epoch)) = self.role_of(&catalog, topic.id, index) else {
                    continue;
                };
                // In a cluster the partition opens as neither leader nor follower, and
                // `take_role` below gives it its part.
                let in_cluster = catalog.layout().is_some();
                let dir = partition_dir(&self.config.data_dir, &topic.name, index);
                let opened = match PartitionLog::open(
                    DmaStorage,
                    dir.clone(),
                    self.log_config_of(&topic),
                    now_ms(),
                )
                .await
                {
                    Ok((mut log, report)) if leading && !in_cluster => log
                        .open_leader_epoch(leader_epoch)
                        .await
                        .map(|()| (log, report)),
                    other => other,
                };
                match opened {
                    Ok((log, report)) => {
                        for cut in &report.truncations {
                            warn!(
                                topic = %topic.name, partition = index,
                                segment = %cut.segment.display(), position = cut.position,
                                bytes_removed = cut.bytes_removed, reason = %cut.reason,
                                "cut a torn or corrupt log tail"
                            );
                        }
                        self.failed_partitions.borrow_mut().remove(&key);
                        opened_in_cluster.push(key);
                        let log = SharedLog::new(log);
                        let replica = if in_cluster {
                            Replica::in_cluster(
                                topic.name.clone(),
                                index,
                                log,
                                self.config.node_id,
                                self.replication_config(),
                            )
                        } else {
                            Replica::single_node(
                                topic.name.clone(),
                                index,
                                log,
                                self.config.node_id,
                                leader_epoch,
                            )
                        };
                        self.partitions
                            .borrow_mut()
                            .insert(key, Rc::new(Partition::new(topic.id, replica)));
                    }
                    Err(error) => {
                        error!(dir = %dir.display(), %error, "cannot open partition; it is offline");
                        self.failed_partitions
                            .borrow_mut()
                            .insert(key, error.to_string());
                    }
                }
            }
        }
        for (topic_id, index) in opened_in_cluster {
            self.take_role(&catalog, topic_id, index).await;
        }
        self.start_coordinators(&catalog);
        self.start_txn_coordinators(&catalog);
    }

    /// Whether this shard has `topic_id`'s partition `index` open.
    pub(super) fn holds_partition(&self, topic_id: Uuid, index: i32) -> bool {
        self.partitions.borrow().contains_key(&(topic_id, index))
    }

    /// This broker's part in a partition: `Some((leading, leader_epoch))` when it holds a
    /// replica (always, at [`LEADER_EPOCH`], on a single node), `None` when it holds none.
    pub(super) fn role_of(
        &self,
        catalog: &Catalog,
        topic_id: Uuid,
        partition: i32,
    ) -> Option<(bool, i32)> {
        if catalog.layout().is_none() {
            return Some((true, LEADER_EPOCH));
        }
        let state = catalog.partition_state(topic_id, partition)?;
        let node_id = self.config.node_id;
        state
            .replicas
            .contains(&node_id)
            .then_some((state.leader == node_id, state.leader_epoch))
    }

    /// The replication settings of this broker's replicas.
    fn replication_config(&self) -> ReplicationConfig {
        ReplicationConfig {
            replica_lag_time_max_ms: self.config.replica_lag_time_max_ms,
            // Each topic's own is set before its replicas take a role.
            ..ReplicationConfig::default()
        }
    }

    /// Brings an open partition to its part in a cluster's `catalog` ([`Replica::take_role`]):
    /// a follower gets a fetcher from its leader, a leader's ISR changes go to the controller.
    async fn take_role(self: &Rc<Self>, catalog: &Catalog, topic_id: Uuid, index: i32) {
        let Some(state) = catalog.partition_state(topic_id, index).cloned() else {
            return;
        };
        let partition = self.partitions.borrow().get(&(topic_id, index)).cloned();
        let Some(partition) = partition else {
            return;
        };
        let replica = &partition.replica;
        if let Some(topic) = catalog.topic_by_id(topic_id) {
            // The topic's own setting, as the controller reads it for the ELR (broker-level
            // defaults are not in the cluster metadata): holding the high watermark for a
            // setting the controller keeps no eligible replicas for would cost availability
            // and protect nothing.
            let min_insync_replicas = topic
                .configs
                .get("min.insync.replicas")
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            replica.set_min_insync_replicas(min_insync_replicas);
        }
        let taken = replica.take_role(&state, now_ms()).await;
        // Fenced brokers (absent from the layout) are not asked into the ISR.
        if let Some(layout) = catalog.layout() {
            let fenced = state
                .replicas
                .iter()
                .copied()
                .filter(|replica| !layout.brokers.contains_key(replica))
                .collect();
            replica.set_ineligible(fenced);
        }
        match taken {
            RoleTaken::Unchanged | RoleTaken::Leaderless => {}
            RoleTaken::Leading { log_end_offset } => {
                info!(topic = %replica.topic(), partition = index, leader_epoch = state.leader_epoch, log_end_offset, "leading");
            }
            RoleTaken::Following {
                leader,
                was_leading,
            } => {
                info!(topic = %replica.topic(), partition = index, leader, leader_epoch = state.leader_epoch, was_leading, "following");
                self.ensure_fetcher(leader);
            }
            RoleTaken::NotLeading(error) => {
                error!(topic = %replica.topic(), partition = index, %error, "cannot open the leader epoch; not leading");
            }
        }
        self.send_isr_changes(&partition);
    }

    /// Sends the ISR changes a partition's leader asks for to the controller.
    pub(crate) fn send_isr_changes(self: &Rc<Self>, partition: &Rc<Partition>) {
        while let Some(ask) = partition.replica.next_isr_change() {
            let shard = Rc::clone(self);
            let partition = Rc::clone(partition);
            glommio::spawn_local(async move {
                shard.alter_isr(&partition, ask).await;
            })
            .detach();
        }
    }

    /// Sends a leader's ISR change to the controller and reports the outcome to the leader.
    async fn alter_isr(self: &Rc<Self>, partition: &Rc<Partition>, ask: IsrChangeAsk) {
        let replica = &partition.replica;
        let change = IsrChange {
            broker_id: self.config.node_id,
            broker_epoch: -1,
            topic_id: partition.topic_id,
            partition: replica.index(),
            leader_epoch: ask.leader_epoch,
            partition_epoch: ask.partition_epoch,
            isr: ask.isr.clone(),
        };
        info!(topic = %replica.topic(), partition = replica.index(), isr = ?ask.isr, "asking for an ISR change");
        let result = self
            .admin(AdminOp::Controller(TopicAdmin::AlterIsr(change)))
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(KafkaError::new(ResponseError::UnknownServerError)));
        let outcome = result.map_err(|error| {
            let outcome = IsrChangeError::from_controller_error(error.code);
            if outcome != IsrChangeError::Stale {
                warn!(topic = %replica.topic(), partition = replica.index(), error = ?error.message, code = ?error.code, ?outcome, "ISR change not made");
            }
            outcome
        });
        replica.isr_change_completed(&ask, outcome, now_ms());
        self.send_isr_changes(partition);
    }

    /// Ticks every partition leader of this shard, so that lagging followers leave the ISR.
    pub fn tick_replication(self: &Rc<Self>) {
        let now = now_ms();
        for partition in self.owned_partitions() {
            partition.replica.tick(now);
            self.send_isr_changes(&partition);
        }
    }

    /// The partitions of this shard that follow `leader`.
    pub(crate) fn partitions_following(&self, leader: i32) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .filter(|partition| partition.replica.follows(leader))
            .cloned()
            .collect()
    }

    /// Starts this shard's fetcher from `leader` unless it runs.
    fn ensure_fetcher(self: &Rc<Self>, leader: i32) {
        if self.fetchers.borrow_mut().insert(leader) {
            glommio::spawn_local(super::replica_fetcher::run(Rc::clone(self), leader)).detach();
        }
    }

    /// A fetcher found nothing left to follow from `leader` and stops.
    pub(crate) fn fetcher_stopped(&self, leader: i32) {
        self.fetchers.borrow_mut().remove(&leader);
    }

    /// Starts a group coordinator for each `__consumer_offsets` partition this shard owns and
    /// has opened.
    fn register_coordinators(&self, catalog: &Catalog) {
        let Some(topic) = catalog.topic(OFFSETS_TOPIC) else {
            return;
        };
        // A coordinator whose partition another broker now leads stops; it is made afresh,
        // from the log, if the leadership comes back.
        let moved: Vec<i32> = self
            .coordinators
            .borrow()
            .keys()
            .copied()
            .filter(|&index| {
                !self
                    .role_of(catalog, topic.id, index)
                    .is_some_and(|(leading, _)| leading)
            })
            .collect();
        for index in moved {
            let host = self.coordinators.borrow_mut().remove(&index);
            if let Some(host) = host {
                info!(
                    partition = index,
                    "group coordinator moved to the new leader"
                );
                host.stop("its partition's leadership moved");
            }
        }
        for index in 0..topic.partitions {
            let leading = self
                .role_of(catalog, topic.id, index)
                .is_some_and(|(leading, _)| leading);
            if self.owner_of(topic.id, index) == self.id
                && leading
                && !self.coordinators.borrow().contains_key(&index)
            {
                let host = Rc::new(CoordinatorHost::new(index, self.config.groups.clone()));
                self.coordinators.borrow_mut().insert(index, host);
            }
        }
    }

    /// Starts the registered coordinators whose partitions are open; one whose partition
    /// could not be opened is stopped (COORDINATOR_NOT_AVAILABLE), as its partition is offline.
    fn start_coordinators(self: &Rc<Self>, catalog: &Catalog) {
        let Some(topic) = catalog.topic(OFFSETS_TOPIC) else {
            return;
        };
        let hosts: Vec<Rc<CoordinatorHost>> =
            self.coordinators.borrow().values().cloned().collect();
        for host in hosts {
            if !host.mark_started() {
                continue;
            }
            if self
                .partitions
                .borrow()
                .contains_key(&(topic.id, host.partition))
            {
                glommio::spawn_local(groups::drive(Rc::clone(self), topic.id, host)).detach();
            } else {
                host.stop("its partition is offline");
            }
        }
    }

    /// Runs a group call on the coordinator of `group_id`, wherever it lives.
    pub async fn group_call(self: &Rc<Self>, group_id: &str, call: Call) -> Reply {
        if let Err(error) = self.ensure_offsets_topic().await {
            warn!(error = ?error.message, "cannot create __consumer_offsets");
        }
        let Some(topic) = self.catalog().topic(OFFSETS_TOPIC).cloned() else {
            return Reply::unavailable(&call, ResponseError::CoordinatorNotAvailable);
        };
        let partition = offsets_partition_for(group_id, topic.partitions);
        self.group_call_at(partition, call).await
    }

    /// Runs a group call on the coordinator of one `__consumer_offsets` partition.
    pub async fn group_call_at(self: &Rc<Self>, partition: i32, call: Call) -> Reply {
        let catalog = self.catalog();
        let Some(topic) = catalog.topic(OFFSETS_TOPIC).cloned() else {
            return Reply::unavailable(&call, ResponseError::CoordinatorNotAvailable);
        };
        if let Some(state) = catalog.partition_state(topic.id, partition) {
            if state.leader != self.config.node_id {
                // Another broker coordinates this group: the client asks FindCoordinator again.
                return Reply::unavailable(&call, ResponseError::NotCoordinator);
            }
        }
        let owner = self.owner_of(topic.id, partition);
        if owner == self.id {
            return self.local_group_call(partition, call).await;
        }
        let lost = Reply::unavailable(&call, ResponseError::CoordinatorNotAvailable);
        let (reply, receiver) = oneshot::channel();
        let message = ShardMessage::Group {
            partition,
            call,
            reply,
        };
        if self.peers.send_to(owner, message).await.is_err() {
            return lost;
        }
        receiver.await.unwrap_or(lost)
    }

    async fn local_group_call(&self, partition: i32, call: Call) -> Reply {
        let host = self.coordinators.borrow().get(&partition).cloned();
        match host {
            Some(host) => host.call(&GlommioClock, call).await,
            // Not started yet: the catalog has the topic but the partition is still opening.
            None => Reply::unavailable(&call, ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// Creates `__consumer_offsets` if it does not exist, as Kafka does on the first
    /// FindCoordinator. Its offsets are kept until their group expires them (retention by
    /// time or size would drop live commits); it becomes compacted when compaction lands.
    /// Commits follow its flush policy, `flush.messages=1` by default: a commit is synced
    /// before it is acknowledged (commits that arrive together share the sync), so an
    /// acknowledged commit survives a crash of the broker, not only a clean restart.
    pub async fn ensure_offsets_topic(self: &Rc<Self>) -> Result<(), KafkaError> {
        self.ensure_internal_topic(OFFSETS_TOPIC).await
    }

    /// Creates the internal topic `name` (`__consumer_offsets` or `__transaction_state`) if
    /// it does not exist: `offsets_topic_num_partitions` (or
    /// `transaction_state_log_num_partitions`) partitions, up to three replicas,
    /// compacted (the latest record of each key kept forever), each write synced before it
    /// is answered.
    pub(super) async fn ensure_internal_topic(
        self: &Rc<Self>,
        name: &str,
    ) -> Result<(), KafkaError> {
        if self.catalog().topic(name).is_some() {
            return Ok(());
        }
        // Kafka's offsets.topic.replication.factor is 3; a smaller cluster gets one replica
        // per broker rather than no coordinators.
        let replication_factor = match self.catalog().layout() {
            Some(layout) => layout.brokers.len().clamp(1, 3) as i16,
            None => -1,
        };
        let configs = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "104857600"),
            ("flush.messages", "1"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let topic = NewTopic {
            name: name.to_owned(),
            partitions: if name == TRANSACTION_TOPIC {
                self.config.transaction_state_log_num_partitions
            } else {
                self.config.offsets_topic_num_partitions
            },
            replication_factor,
            assignments: Vec::new(),
            configs,
        };
        let results = self
            .admin(AdminOp::CreateTopics {
                topics: vec![topic],
                validate_only: false,
            })
            .await;
        match results.into_iter().next() {
            Some(Ok(())) => Ok(()),
            // Another shard created it first.
            Some(Err(_)) if self.catalog().topic(name).is_some() => Ok(()),
            Some(Err(error)) => Err(error),
            None => Err(KafkaError::new(ResponseError::CoordinatorNotAvailable)),
        }
    }

    async fn delete_partition(&self, partition: Rc<Partition>) {
        partition.replica.retire();
        // A cleaner pass still running on it must not swap files into a directory that may
        // soon be another log's.
        partition
            .replica
            .log
            .with_log(async |log| log.retire())
            .await;
        // Nor a roll finish: this waits for one in flight, which then installs nothing, and
        // starts none.
        if let Err(error) = partition.replica.log.finish_rolls().await {
            warn!(%error, "finishing rolls of a deleted partition");
        }
        partition.quiesce().await;
        let dir = partition
            .replica
            .log
            .with_log(async |log| log.dir().to_owned())
            .await;
        partition.replica.data_arrived.notify(usize::MAX);
        match Rc::try_unwrap(partition) {
            Ok(partition) => {
                if let Err(error) = partition.replica.log.into_inner().close(now_ms()).await {
                    warn!(dir = %dir.display(), %error, "closing a deleted partition");
                }
            }
            Err(_) => warn!(dir = %dir.display(), "deleting a partition still in use"),
        }
        let mut doomed = dir.clone().into_os_string();
        doomed.push(format!(
            ".{}-delete",
            Uuid::from_u64_pair(super::random_u64(), 0).simple()
        ));
        let doomed = PathBuf::from(doomed);
        let result = std::fs::rename(&dir, &doomed).and_then(|()| std::fs::remove_dir_all(&doomed));
        match result {
            Ok(()) => info!(dir = %dir.display(), "deleted partition"),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "could not delete partition directory")
            }
        }
    }

    /// Records `amount` of `kind` traffic (bytes, or microseconds of request time) of
    /// `client_id` against its quota, if it has one,
    /// and returns how long it must be throttled (ms) and the sensor it was recorded on. A
    /// broker without authentication sees every client as Kafka's `ANONYMOUS` user.
    pub fn record_quota(
        &self,
        client_id: &str,
        kind: QuotaKind,
        amount: usize,
    ) -> (i32, Option<SensorKey>) {
        let catalog = self.catalog();
        if catalog.client_quotas().is_empty() {
            return (0, None);
        }
        let Some((quota, sensor)) =
            quotas::resolve(catalog.client_quotas(), ANONYMOUS_USER, client_id, kind)
        else {
            return (0, None);
        };
        let mut tracker = self.process.quota_tracker.lock().expect("not poisoned");
        let throttle_ms = tracker.record(&sensor, kind.rate_of(quota), amount as f64, now_ms());
        (i32::try_from(throttle_ms).unwrap_or(i32::MAX), Some(sensor))
    }

    /// Takes back what [`Shard::record_quota`] recorded (a throttled fetch answered empty).
    pub fn unrecord_quota(&self, sensor: &SensorKey, amount: usize) {
        let mut tracker = self.process.quota_tracker.lock().expect("not poisoned");
        tracker.unrecord(sensor, amount as f64, now_ms());
    }

    /// Partitions this shard owns.
    pub fn owned_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Starts a sync of everything `partition` appended so far, unless a background sync of
    /// it still runs: the shard's answer to `log_background_sync_bytes` unsynced. Appends go
    /// on meanwhile (the sync holds the log only to begin and to complete).
    pub fn sync_in_background(self: &Rc<Self>, partition: &Rc<Partition>) {
        if partition.quiescing.get() || partition.background_sync_running.replace(true) {
            return;
        }
        self.metrics.borrow_mut().background_syncs += 1;
        let partition_held = Rc::clone(partition);
        let task = glommio::spawn_local(async move {
            let partition = partition_held;
            let log = &partition.replica.log;
            let end = log.with_log(async |log| log.log_end_offset()).await;
            if let Err(error) = log.wait_durable(end, now_ms()).await {
                error!(topic = %partition.replica.topic(), partition = partition.replica.index(), %error, "background sync failed");
            }
            partition.background_sync_running.set(false);
        });
        // The task replaced, if any, has finished: dropping its handle cancels nothing.
        *partition.background_sync.borrow_mut() = Some(task);
    }

    /// Syncs the partitions whose flush policy (`flush.messages`, `flush.ms`) asks for it, and
    /// those with `log_background_sync_bytes` appended since their last sync.
    pub async fn flush_due(self: &Rc<Self>) {
        let background_sync_bytes = self.config.log_background_sync_bytes;
        for partition in self.owned_partitions() {
            let now = now_ms();
            let (policy_due, background_due, end) = partition
                .replica
                .log
                .with_log(async |log| {
                    // A poisoned log reports its failure to every append already.
                    let healthy = !log.is_poisoned();
                    (
                        healthy && log.sync_due(now),
                        healthy && log.unsynced_bytes() >= background_sync_bytes,
                        log.log_end_offset(),
                    )
                })
                .await;
            if policy_due {
                if let Err(error) = partition.replica.log.wait_durable(end, now).await {
                    error!(topic = %partition.replica.topic(), partition = partition.replica.index(), %error, "flush failed");
                }
            } else if background_due {
                // Leaders' appends start these themselves (`run_partition_op`); this catches
                // the others: followers' appends of what they fetched.
                self.sync_in_background(&partition);
            }
        }
    }

    /// Finishes the segment rolls of every partition that rolled since the last call: syncs
    /// the closed segments, writes their indexes and checkpoints, without stalling appends
    /// (see `storage::roll_finish`).
    pub async fn finish_rolls(&self) {
        for partition in self.owned_partitions() {
            let log = &partition.replica.log;
            if !log.has_rolls_to_finish().await {
                continue;
            }
            if let Err(error) = log.finish_rolls().await {
                error!(topic = %partition.replica.topic(), partition = partition.replica.index(), %error, "finishing a segment roll failed");
            }
        }
    }

    /// Deletes segments past retention, and rolls segments past `segment.ms`; on shard 0,
    /// also forgets the quota buckets of clients idle for an hour.
    pub async fn apply_retention(&self) {
        if self.id == 0 {
            let mut tracker = self.process.quota_tracker.lock().expect("not poisoned");
            tracker.forget_idle(now_ms());
        }
        for partition in self.owned_partitions() {
            let now = now_ms();
            let result = partition
                .replica
                .log
                .with_log(async |log| log.apply_retention(now).await)
                .await;
            match result {
                Ok(0) => {}
                Ok(deleted) => {
                    info!(topic = %partition.replica.topic(), partition = partition.replica.index(), deleted, "retention deleted segments")
                }
                Err(error) => {
                    error!(topic = %partition.replica.topic(), partition = partition.replica.index(), %error, "retention failed")
                }
            }
        }
    }

    /// Closes every partition: sync, checkpoint, close files.
    pub async fn close_partitions(&self) {
        let partitions: Vec<_> = std::mem::take(&mut *self.partitions.borrow_mut())
            .into_values()
            .collect();
        for partition in partitions {
            partition.quiesce().await;
            let name = format!(
                "{}-{}",
                partition.replica.topic(),
                partition.replica.index()
            );
            let result = match Rc::try_unwrap(partition) {
                Ok(partition) => partition.replica.log.into_inner().close(now_ms()).await,
                Err(partition) => {
                    partition
                        .replica
                        .log
                        .with_log(async |log| log.checkpoint(now_ms()).await)
                        .await
                }
            };
            if let Err(error) = result {
                error!(partition = %name, %error, "closing partition");
            }
        }
    }

    /// Starts shutting this shard down.
    pub fn begin_shutdown(&self) {
        if !self.shutting_down.replace(true) {
            self.shutdown_event.notify(usize::MAX);
            // Fetch long-polls waiting on this shard's partitions end now rather than at their
            // timeout: a waiting task still asleep when the executor exits is never freed.
            for partition in self.partitions.borrow().values() {
                partition.replica.data_arrived.notify(usize::MAX);
            }
        }
    }

    /// Sleeps `duration`, returning early (with `false`) when shutdown starts.
    pub async fn sleep_unless_shutdown(&self, duration: Duration) -> bool {
        if self.shutting_down.get() {
            return false;
        }
        let listener = self.shutdown_event.listen();
        if self.shutting_down.get() {
            return false;
        }
        futures_lite::future::or(
            async {
                glommio::timer::sleep(duration).await;
                true
            },
            async {
                listener.await;
                false
            },
        )
        .await
    }
}

fn changed(
    current: &BTreeMap<String, String>,
    changes: Vec<(String, Option<String>)>,
    replace_all: bool,
) -> BTreeMap<String, String> {
    let mut configs = if replace_all {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for (name, value) in changes {
        match value {
            Some(value) => configs.insert(name, value),
            None => configs.remove(&name),
        };
    }
    configs
}

fn new_topic_id(catalog: &Catalog) -> Uuid {
    loop {
        let id = super::random_uuid();
        if catalog.topic_by_id(id).is_none() && !id.is_nil() {
            return id;
        }
    }
}

/// Writes the catalog file atomically: a temporary file, synced, renamed over the old one,
/// and the directory synced.
///
/// # Errors
/// Any I/O error of the steps.
pub fn persist_catalog(data_dir: &Path, catalog: &Catalog) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = data_dir.join(crate::broker::catalog::CATALOG_FILE_NAME);
    let temporary = data_dir.join(format!("{}.tmp", crate::broker::catalog::CATALOG_FILE_NAME));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(catalog.to_toml().as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

async fn run_partition_op(
    shard: &Rc<Shard>,
    partition: &Rc<Partition>,
    op: PartitionOp,
) -> PartitionResult {
    match op {
        PartitionOp::Produce {
            records,
            acks_all,
            verify,
            leader_epoch,
        } => {
            let replica = &partition.replica;
            if let Some(acks_all) = acks_all {
                replica.check_acks_all(acks_all.min_insync_replicas)?;
            }
            let verification = match verify {
                None => Verification::Unchecked,
                Some(verify) => {
                    // The guard first: a marker that ends the transaction while the
                    // coordinator answers voids it, and the append is refused.
                    let guard = replica
                        .start_verification(verify.producer_id, verify.producer_epoch, now_ms())
                        .await;
                    if guard.is_some() {
                        shard
                            .verify_in_transaction(&verify, replica.index())
                            .await?;
                    }
                    Verification::Guard(guard)
                }
            };
            let records = BytesMut::from(records);
            let info = match leader_epoch {
                Some(epoch) => {
                    debug_assert!(matches!(verification, Verification::Unchecked));
                    replica
                        .append_as_leader_at_epoch(records, now_ms(), epoch)
                        .await?
                }
                None => {
                    replica
                        .append_verified_as_leader(records, now_ms(), verification)
                        .await?
                }
            };
            if info.unsynced_bytes >= shard.config.log_background_sync_bytes {
                shard.sync_in_background(partition);
            }
            shard.send_isr_changes(partition);
            if let Some(acks_all) = acks_all {
                wait_for_replicas(replica, info.last_offset + 1, acks_all).await?;
            }
            Ok(PartitionOutcome::Produced {
                base_offset: info.base_offset,
                log_append_time_ms: info.log_append_time_ms,
                log_start_offset: info.log_start_offset,
            })
        }
        PartitionOp::WriteMarker { marker, acks_all } => {
            let replica = &partition.replica;
            if let Some(acks_all) = acks_all {
                replica.check_acks_all(acks_all.min_insync_replicas)?;
            }
            let info = replica.append_marker_as_leader(marker, now_ms()).await?;
            if info.unsynced_bytes >= shard.config.log_background_sync_bytes {
                shard.sync_in_background(partition);
            }
            shard.send_isr_changes(partition);
            if let Some(acks_all) = acks_all {
                wait_for_replicas(replica, info.last_offset + 1, acks_all).await?;
            }
            Ok(PartitionOutcome::Produced {
                base_offset: info.base_offset,
                log_append_time_ms: info.log_append_time_ms,
                log_start_offset: info.log_start_offset,
            })
        }
        PartitionOp::ReplicaFetch {
            replica,
            offset,
            max_bytes,
            current_leader_epoch,
            last_fetched_epoch,
        } => replica_fetch(
            shard,
            partition,
            FollowerFetch {
                replica,
                fetch_offset: offset,
                last_fetched_epoch: (last_fetched_epoch >= 0).then_some(last_fetched_epoch),
                current_leader_epoch: (current_leader_epoch >= 0).then_some(current_leader_epoch),
            },
            max_bytes,
        )
        .await
        .map_err(|error| error.unwrap_or_else(|storage| KafkaError::from(&storage))),
        PartitionOp::Fetch {
            to_log_end,
            offset,
            max_bytes,
            current_leader_epoch,
            read_committed,
        } => {
            check_epoch(current_leader_epoch, partition.replica.leader_epoch())?;
            fetch(partition, offset, max_bytes, to_log_end, read_committed)
                .await
                .map_err(|error: StorageError| KafkaError::from(&error))
        }
        PartitionOp::WaitForData {
            offset,
            timeout_ms,
            replica,
        } => {
            let listener = partition.replica.data_arrived.listen();
            let log_end_offset = partition
                .replica
                .log
                .with_log(async |log| log.log_end_offset())
                .await;
            let end = if replica {
                log_end_offset
            } else {
                partition.replica.readable_end(log_end_offset)
            };
            if end > offset {
                return Ok(PartitionOutcome::Waited(true));
            }
            let arrived = futures_lite::future::or(
                async {
                    listener.await;
                    true
                },
                async {
                    glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
                    false
                },
            )
            .await;
            Ok(PartitionOutcome::Waited(arrived))
        }
        PartitionOp::ListOffset {
            timestamp,
            read_committed,
            current_leader_epoch,
            replica,
        } => {
            check_epoch(current_leader_epoch, partition.replica.leader_epoch())?;
            partition
                .replica
                .log
                .with_log(async |log| {
                    // Consumers see offsets below the high watermark only (Kafka's
                    // `lastFetchableOffset`): the latest offset is it, and a lookup by time
                    // finds nothing above it.
                    let readable_end = if replica {
                        log.log_end_offset()
                    } else {
                        partition.replica.readable_end(log.log_end_offset())
                    };
                    // read_committed sees the last stable offset as the end (Kafka's
                    // `lastStableOffset` for READ_COMMITTED ListOffsets).
                    let readable_end = match log.first_unstable_offset() {
                        Some(unstable) if read_committed => readable_end.min(unstable),
                        _ => readable_end,
                    };
                    let readable = |(offset, timestamp): (i64, i64)| {
                        if offset < readable_end {
                            (offset, timestamp)
                        } else {
                            (-1, -1)
                        }
                    };
                    let (offset, timestamp) = match timestamp {
                        -2 | -4 => (log.log_start_offset(), -1),
                        -1 => (readable_end, -1),
                        -3 => log.max_timestamp().map_or((-1, -1), |(timestamp, offset)| {
                            readable((offset, timestamp))
                        }),
                        t if t >= 0 => log
                            .offset_for_timestamp(t)
                            .await?
                            .map_or((-1, -1), readable),
                        _ => {
                            return Ok(Err(KafkaError::with_message(
                                ResponseError::InvalidRequest,
                                format!("unsupported ListOffsets timestamp {timestamp}"),
                            )))
                        }
                    };
                    Ok(Ok(PartitionOutcome::Offset { offset, timestamp }))
                })
                .await
                .map_err(|error: StorageError| KafkaError::from(&error))?
        }
        PartitionOp::DeleteRecords { before_offset } => partition
            .replica
            .log
            .with_log(async |log| {
                // As Kafka: -1 is the high watermark, and nothing above it may go (records
                // the in-sync replicas may not have yet; on a single node it is the log end).
                let high_watermark = partition.replica.readable_end(log.log_end_offset());
                let before = if before_offset == -1 {
                    high_watermark
                } else {
                    before_offset
                };
                if before > high_watermark {
                    return Err(StorageError::OffsetOutOfRange {
                        offset: before,
                        log_start_offset: log.log_start_offset(),
                        log_end_offset: high_watermark,
                    });
                }
                log.delete_records(before).await
            })
            .await
            .map(PartitionOutcome::LowWatermark)
            .map_err(|error| KafkaError::from(&error)),
        PartitionOp::EndOffsetForEpoch {
            leader_epoch,
            current_leader_epoch,
        } => {
            check_epoch(current_leader_epoch, partition.replica.leader_epoch())?;
            let end = partition
                .replica
                .log
                .with_log(async |log| {
                    log.leader_epochs()
                        .end_offset_for(leader_epoch, log.log_end_offset())
                })
                .await;
            Ok(PartitionOutcome::EpochEnd {
                leader_epoch: end.epoch,
                end_offset: end.end_offset,
            })
        }
    }
}

async fn fetch(
    partition: &Rc<Partition>,
    offset: i64,
    max_bytes: usize,
    to_log_end: bool,
    read_committed: bool,
) -> Result<PartitionOutcome, StorageError> {
    let (log_end_offset, log_start_offset, first_unstable_offset) = partition
        .replica
        .log
        .with_log(async |log| {
            (
                log.log_end_offset(),
                log.log_start_offset(),
                log.first_unstable_offset(),
            )
        })
        .await;
    let high_watermark = if to_log_end {
        log_end_offset
    } else {
        partition.replica.readable_end(log_end_offset)
    };
    // (Not `clamp`: retention and DeleteRecords can move the log start past the high
    // watermark.)
    let last_stable_offset = first_unstable_offset.map_or(high_watermark, |unstable| {
        unstable.max(log_start_offset).min(high_watermark)
    });
    // What this fetch may read up to.
    let readable_end = if read_committed {
        last_stable_offset
    } else {
        high_watermark
    };
    let fetched = |records: Bytes, aborted| PartitionOutcome::Fetched {
        records,
        high_watermark,
        last_stable_offset,
        log_start_offset,
        aborted,
    };
    if offset < log_start_offset || offset > log_end_offset {
        return Err(StorageError::OffsetOutOfRange {
            offset,
            log_start_offset,
            log_end_offset,
        });
    }
    // Between the readable end and the log end: in the log, not yet readable (Kafka
    // answers with no records, not an error).
    if offset >= readable_end {
        return Ok(fetched(Bytes::new(), Vec::new()));
    }
    // The read-ahead reads up to the high watermark: a read_committed fetch held below it
    // by an open transaction neither takes nor starts one.
    let read_ahead_fits = readable_end == high_watermark;
    // Taking the read-ahead out of the partition cancels it (by dropping it) unless it is the
    // one this fetch wants.
    let ahead = if read_ahead_fits {
        partition.read_ahead.borrow_mut().take()
    } else {
        None
    };
    let prefetched = match ahead {
        Some(ahead) if ahead.offset == offset && ahead.max_bytes == max_bytes => {
            ahead.task.await.ok().filter(|records| !records.is_empty())
        }
        _ => None,
    };
    let records = match prefetched {
        Some(records) => records,
        None => partition
            .replica
            .log
            .read(offset, max_bytes, Some(readable_end))
            .await?
            .to_bytes(),
    };
    let aborted = match next_offset_after(&records) {
        Some(upper_bound) if read_committed => {
            partition
                .replica
                .log
                .with_log(async |log| {
                    log.producer_states()
                        .aborted_overlapping(offset, upper_bound)
                })
                .await
        }
        _ => Vec::new(),
    };
    // A read-ahead serves consumers only, so it stops at what they may read.
    if !to_log_end
        && read_ahead_fits
        && records.len() >= READ_AHEAD_TRIGGER_BYTES
        && max_bytes <= READ_AHEAD_BYTES_MAX
    {
        if let Some(next) = next_offset_after(&records).filter(|next| *next < high_watermark) {
            let reader = Rc::clone(partition);
            let task = glommio::spawn_local(async move {
                let limit = reader
                    .replica
                    .log
                    .with_log(async |log| reader.replica.readable_end(log.log_end_offset()))
                    .await;
                Ok(reader
                    .replica
                    .log
                    .read(next, max_bytes, Some(limit))
                    .await?
                    .to_bytes())
            });
            *partition.read_ahead.borrow_mut() = Some(ReadAhead {
                offset: next,
                max_bytes,
                task,
            });
        }
    }
    Ok(fetched(records, aborted))
}

/// Waits until the in-sync replicas have every offset below `required_offset` (the high
/// watermark reached it), as `acks=all` asks.
async fn wait_for_replicas(
    replica: &Replica<DmaStorage>,
    required_offset: i64,
    acks_all: AcksAll,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + Duration::from_millis(acks_all.timeout_ms);
    loop {
        let listener = replica.data_arrived.listen();
        if let Some(outcome) =
            replica.acks_all_outcome(required_offset, acks_all.min_insync_replicas)
        {
            return outcome;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(KafkaError::with_message(
                ResponseError::RequestTimedOut,
                "the in-sync replicas did not have the records in time",
            ));
        }
        futures_lite::future::or(listener, async {
            glommio::timer::sleep(left).await;
        })
        .await;
    }
}

/// A follower's Fetch on the leader ([`Replica::answer_replica_fetch`]); an ISR change it
/// brings goes to the controller.
async fn replica_fetch(
    shard: &Rc<Shard>,
    partition: &Rc<Partition>,
    fetch: FollowerFetch,
    max_bytes: usize,
) -> Result<PartitionOutcome, Result<KafkaError, StorageError>> {
    let answered = partition
        .replica
        .answer_replica_fetch(fetch, max_bytes, now_ms())
        .await;
    shard.send_isr_changes(partition);
    let answer = answered?;
    Ok(PartitionOutcome::ReplicaFetched {
        records: answer
            .records
            .map_or_else(Bytes::new, |records| records.to_bytes()),
        high_watermark: answer.high_watermark,
        log_start_offset: answer.log_start_offset,
        diverging: answer.diverging,
    })
}

/// The offset after the last whole batch of `records`.
fn next_offset_after(mut records: &[u8]) -> Option<i64> {
    let mut next = None;
    while let Ok(header) = crate::storage::batch::BatchHeader::parse(records) {
        let size = header.size_bytes();
        if size > records.len() {
            break;
        }
        next = Some(header.next_offset());
        records = &records[size..];
    }
    next
}

/// Kafka's leader epoch fencing: a client that knows a newer epoch than the leader gets
/// UNKNOWN_LEADER_EPOCH, an older one FENCED_LEADER_EPOCH.
fn check_epoch(current_leader_epoch: i32, leader_epoch: i32) -> Result<(), KafkaError> {
    match current_leader_epoch {
        -1 => Ok(()),
        epoch if epoch > leader_epoch => Err(KafkaError::new(ResponseError::UnknownLeaderEpoch)),
        epoch if epoch < leader_epoch => Err(KafkaError::new(ResponseError::FencedLeaderEpoch)),
        _ => Ok(()),
    }
}

/// Per item in request order: the answer found before asking the controller, or else the
/// next of the controller's answers (`made`, for the items that were asked, in order).
fn merge_answers(
    early: Vec<Option<Result<(), KafkaError>>>,
    made: Vec<Result<(), KafkaError>>,
) -> Vec<Result<(), KafkaError>> {
    let mut made = made.into_iter();
    early
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                made.next()
                    .unwrap_or_else(|| Err(KafkaError::new(ResponseError::UnknownServerError)))
            })
        })
        .collect()
}
