//! The producer: records are gathered per partition into batches (`batch.size`, `linger.ms`),
//! compressed, and sent by a background thread the producer owns, so that `send` returns at
//! once and the caller needs no executor.
//!
//! ```text
//!  send() ── partitioner ──> open batch of (topic, partition) ──full/lingered/flush──> ready
//!                                                                                       │
//!  sender thread: ready batches ── Produce per leader, up to max.in.flight per connection ─┘
//!  reader thread per connection: responses in order ── deliveries
//!        retriable error: metadata refreshed, the batch retried first, after
//!        retry.backoff.ms, until retries or delivery.timeout.ms run out
//! ```
//!
//! Order within a partition: batches are sent in order, and a batch queued for retry holds
//! back the partition's later batches not yet sent. With idempotence (`enable.idempotence`,
//! on by default with `acks=all`, as in the Java client) each batch carries a producer id and
//! sequence numbers (see [`super::sequencer`]): a retried batch is stored once, batches in
//! flight behind a failed one are refused by the broker until it is retried, and a partition's
//! batches go to one leader at a time (after a leader change, new ones wait until those in
//! flight to the old leader are answered), so order holds with up to five in flight. Without it a batch in flight behind a failed one may land before
//! the retry, as in Kafka; `max.in.flight.requests.per.connection=1` then keeps order.
//!
//! Each record's result arrives through its [`Delivery`] (wait for it like a future) or a
//! callback. Memory waiting to be sent is bounded by `buffer.memory`: `send` blocks for room.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as WireCompression, Record as WireRecord, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};

use super::config::{Acks, Compression, ProducerConfig};
use super::connection::{Connection, InFlight, RequestSender, ResponseReader};
use super::error::ClientError;
use super::partitioner::Partitioner;
use super::sequencer::{Assignment, ProducerIdentity, Sequenced, Sequencer};
use super::transaction::{GroupMetadata, Transactions};
use crate::storage::producers::last_sequence;

/// How long `send` waits for metadata or for room in `buffer.memory` (Kafka's `max.block.ms`).
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(60);

/// A record to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: String,
    /// Partition, or `None` for the partitioner's choice.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (`None`: a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time; `None` for now.
    pub timestamp_ms: Option<i64>,
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset; -1 with acks=0, which gets no answer.
    pub offset: i64,
    /// Timestamp: the create time, or the broker's for LogAppendTime topics.
    pub timestamp_ms: i64,
}

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// The broker's Kafka error code, when the broker refused the record.
    pub code: Option<i16>,
    /// What went wrong.
    pub message: String,
}

/// A record's delivery result.
pub type DeliveryResult = Result<RecordMetadata, DeliveryError>;

type Callback = Box<dyn FnOnce(DeliveryResult) + Send>;

/// A record's result, to wait for.
#[derive(Clone, Default)]
pub struct Delivery {
    slot: Arc<(Mutex<Option<DeliveryResult>>, Condvar)>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

impl Delivery {
    fn complete(&self, result: DeliveryResult) {
        let (slot, ready) = &*self.slot;
        *slot.lock().expect("not poisoned") = Some(result);
        ready.notify_all();
    }

    /// The result, waiting up to `timeout` (forever for `None`); `None` if not known by then.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<DeliveryResult> {
        let (slot, ready) = &*self.slot;
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut result = slot.lock().expect("not poisoned");
        loop {
            if let Some(result) = result.as_ref() {
                return Some(result.clone());
            }
            match deadline {
                None => result = ready.wait(result).expect("not poisoned"),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    result = ready.wait_timeout(result, left).expect("not poisoned").0;
                }
            }
        }
    }

    /// The result if known.
    pub fn try_result(&self) -> Option<DeliveryResult> {
        self.slot.0.lock().expect("not poisoned").clone()
    }
}

/// Who hears about a record's delivery.
enum Notify {
    Delivery(Delivery),
    Callback(Callback),
}

impl Notify {
    fn send(self, result: DeliveryResult) {
        match self {
            Notify::Delivery(delivery) => delivery.complete(result),
            Notify::Callback(callback) => callback(result),
        }
    }
}

struct PendingRecord {
    record: WireRecord,
    notify: Notify,
}

struct Batch {
    topic: String,
    partition: i32,
    records: Vec<PendingRecord>,
    bytes: usize,
    created: Instant,
    attempts: u32,
    /// A retried batch waits out `retry.backoff.ms` until then.
    retry_at: Option<Instant>,
    /// Order of creation, producer-wide: a partition's batches are sent in this order.
    sequence: u64,
    /// With idempotence: the producer id and sequence numbers, given at the first send and
    /// kept through every retry.
    sequenced: Option<Sequenced>,
}

/// Topics' partition counts and leaders, and the brokers' addresses.
#[derive(Default)]
struct Metadata {
    partitions: BTreeMap<String, Vec<i32>>,
    brokers: BTreeMap<i32, String>,
}

#[derive(Default)]
struct State {
    open: BTreeMap<(String, i32), Batch>,
    ready: VecDeque<Batch>,
    buffered_bytes: usize,
    /// Records sent but not yet answered, plus those buffered.
    outstanding: usize,
    flushing: bool,
    closing: bool,
    partitioner: Partitioner,
    metadata: Metadata,
    random: u64,
    /// Requests in flight per leader.
    in_flight: BTreeMap<i32, usize>,
    /// Topics of batches queued for retry, whose metadata the sender refreshes first.
    stale_topics: BTreeSet<String>,
    /// The next batch's `sequence`.
    next_batch_sequence: u64,
    /// With idempotence: producer ids and each partition's sequence numbers.
    sequencer: Sequencer,
    /// With idempotence: why no producer id can be had (the broker does not support
    /// InitProducerId, or refuses it for good); batches waiting for one fail with it.
    producer_id_refused: Option<DeliveryError>,
    /// With idempotence: why the last InitProducerId failed, for batches that time out
    /// waiting for a producer id.
    producer_id_last_error: Option<String>,
    /// Transactional: why a record of the open transaction failed (it can only abort).
    transaction_failed: Option<String>,
}

impl State {
    /// Moves the open batch of `key` to the ready queue when a record of `size` bytes would
    /// take it past `batch_size`; says whether it did.
    fn close_if_overflowing(
        &mut self,
        key: &(String, i32),
        size: usize,
        batch_size: usize,
    ) -> bool {
        let overflows = self
            .open
            .get(key)
            .is_some_and(|batch| batch.bytes > 0 && batch.bytes + size > batch_size);
        if overflows {
            let batch = self.open.remove(key).expect("just found");
            self.ready.push_back(batch);
        }
        overflows
    }

    /// Puts a batch that was taken from `ready` (for a retry, or held back) back in, ahead of
    /// its partition's newer batches, so that each partition's batches stay in creation order.
    fn requeue(&mut self, batch: Batch) {
        let position = self
            .ready
            .iter()
            .position(|queued| {
                queued.topic == batch.topic
                    && queued.partition == batch.partition
                    && queued.sequence > batch.sequence
            })
            .unwrap_or(self.ready.len());
        self.ready.insert(position, batch);
    }

    /// Whether an older batch of `batch`'s partition waits in `ready` (a retry): then `batch`
    /// must wait too.
    fn has_older(&self, batch: &Batch) -> bool {
        self.ready.iter().any(|queued| {
            queued.topic == batch.topic
                && queued.partition == batch.partition
                && queued.sequence < batch.sequence
        })
    }
}

struct Shared {
    config: ProducerConfig,
    state: Mutex<State>,
    /// Wakes the sender: a batch is ready, a flush or close was asked.
    work: Condvar,
    /// Wakes senders waiting for room, and flushers waiting for the end.
    progress: Condvar,
    /// Used by `send` to fetch metadata of a new topic.
    metadata_connection: Mutex<Option<Connection>>,
    /// Transactional: where the transactions stand, and the coordinators' connections. Never
    /// taken while `state` is held.
    transactions: Mutex<Transactions>,
}

/// A producer. See the module docs.
pub struct Producer {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

impl Producer {
    /// A producer connected to the first reachable bootstrap server.
    ///
    /// # Errors
    /// When no bootstrap server answers.
    pub fn new(config: ProducerConfig) -> Result<Producer, ClientError> {
        let connection = connect_any(&config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                random: seed(),
                ..State::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            metadata_connection: Mutex::new(Some(connection)),
            transactions: Mutex::new(Transactions::default()),
            config,
        });
        let sender = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("spate-producer".into())
                .spawn(move || run_sender(&shared))
                .map_err(|error| {
                    ClientError::Protocol(format!("cannot start the sender thread: {error}"))
                })?
        };
        Ok(Producer {
            shared,
            sender: Some(sender),
        })
    }

    /// Queues a record; its result arrives through the returned [`Delivery`].
    ///
    /// # Errors
    /// When the topic's metadata cannot be had, the partition does not exist, or no room frees
    /// up in `buffer.memory` within a minute.
    pub fn send(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let delivery = Delivery::default();
        self.enqueue(record, Notify::Delivery(delivery.clone()))?;
        Ok(delivery)
    }

    /// Queues a record; `callback` gets its result on the producer's thread.
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(DeliveryResult) + Send + 'static,
    ) -> Result<(), ClientError> {
        self.enqueue(record, Notify::Callback(Box::new(callback)))
    }

    fn enqueue(&self, mut record: ProducerRecord, notify: Notify) -> Result<(), ClientError> {
        let partitions = self.partitions_of(&record.topic)?;
        let config = &self.shared.config;
        let transactional = config.transactional_id.is_some();
        if transactional {
            // The partition is chosen first and added to the transaction before the record
            // is queued (the coordinator must know it before its first batch arrives).
            self.transactions().check_open()?;
            let partition = {
                let mut state = self.lock();
                state.random = state
                    .random
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let random = state.random >> 16;
                state.partitioner.partition(
                    &record.topic,
                    record.partition,
                    record.key.as_deref(),
                    partitions,
                    random,
                )
            };
            if (0..partitions).contains(&partition) {
                self.transactions()
                    .add_partition(config, &(record.topic.clone(), partition))?;
                record.partition = Some(partition);
            }
        }
        let mut state = self.lock();
        if state.closing {
            return Err(ClientError::InvalidState("the producer is closed".into()));
        }
        state.random = state
            .random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let random = state.random >> 16;
        let mut partition = state.partitioner.partition(
            &record.topic,
            record.partition,
            record.key.as_deref(),
            partitions,
            random,
        );
        if partition < 0 || partition >= partitions {
            return Err(ClientError::from_code(
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!(
                    "partition {partition} of {} ({partitions} partitions)",
                    record.topic
                )),
            ));
        }
        let size = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|(key, value)| key.len() + value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
            + 32;
        if size > config.max_request_size {
            // As the Java client's RecordTooLargeException: refused before it is queued.
            return Err(ClientError::from_code(
                ResponseError::MessageTooLarge.code(),
                Some(format!(
                    "a record of about {size} bytes is larger than max.request.size ({})",
                    config.max_request_size
                )),
            ));
        }
        let deadline = Instant::now() + MAX_BLOCK;
        while state.buffered_bytes > 0 && state.buffered_bytes + size > config.buffer_memory {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| {
                    ClientError::Timeout(
                        "buffer.memory stayed full for 60 s: is the broker reachable?".into(),
                    )
                })?;
            state = self
                .shared
                .progress
                .wait_timeout(state, left)
                .expect("not poisoned")
                .0;
        }
        let mut key = (record.topic.clone(), partition);
        // A record that would take its partition's batch past batch.size starts the next
        // batch instead, so that a batch stays within batch.size (and the broker's
        // message.max.bytes) unless one record alone is larger.
        if state.close_if_overflowing(&key, size, config.batch_size)
            && record.partition.is_none()
            && record.key.is_none()
        {
            // A full batch moves keyless records to another partition (the sticky
            // partitioner, KIP-480), this one included.
            let random = state.random >> 20;
            state
                .partitioner
                .batch_closed(&key.0, key.1, partitions, random);
            partition =
                state
                    .partitioner
                    .partition(&record.topic, None, None, partitions, random >> 4);
            key.1 = partition;
            state.close_if_overflowing(&key, size, config.batch_size);
        }
        let sequence = state.next_batch_sequence;
        let opened = !state.open.contains_key(&key);
        if opened {
            state.next_batch_sequence += 1;
        }
        let batch = state.open.entry(key.clone()).or_insert_with(|| Batch {
            topic: record.topic.clone(),
            partition,
            records: Vec::new(),
            bytes: 0,
            created: Instant::now(),
            attempts: 0,
            retry_at: None,
            sequence,
            sequenced: None,
        });
        let offset = batch.records.len() as i64;
        batch.records.push(PendingRecord {
            record: WireRecord {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                // The encoder starts a new batch where `offset - sequence` changes: -1 for the
                // first record keeps one batch with the base sequence -1 of a producer
                // without idempotence; with it, `stamp` sets real ones at the first send.
                sequence: offset as i32 - 1,
                timestamp: record.timestamp_ms.unwrap_or_else(now_ms),
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(key, value)| (StrBytes::from_string(key), value))
                    .collect(),
            },
            notify,
        });
        batch.bytes += size;
        let full = batch.bytes >= config.batch_size;
        state.buffered_bytes += size;
        state.outstanding += 1;
        if full {
            let batch = state.open.remove(&key).expect("just filled");
            let random = state.random >> 20;
            state
                .partitioner
                .batch_closed(&key.0, key.1, partitions, random);
            state.ready.push_back(batch);
        }
        drop(state);
        // The sender needs waking only for a new batch (to start its linger timer) or a full
        // one; waking it for every record costs a context switch per record.
        if opened || full {
            self.shared.work.notify_all();
        }
        Ok(())
    }

    fn transactions(&self) -> MutexGuard<'_, Transactions> {
        self.shared.transactions.lock().expect("not poisoned")
    }

    /// Registers the producer's `transactional.id` with its transaction coordinator (Kafka's
    /// `initTransactions`): gets its producer id at a new epoch, which fences any earlier
    /// producer of the id and aborts its open transaction. Call once, before the first
    /// transaction.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] without `transactional.id`; the coordinator's refusal.
    pub fn init_transactions(&self) -> Result<(), ClientError> {
        let identity = self.transactions().init(&self.shared.config)?;
        self.adopt_transactional_identity(identity);
        Ok(())
    }

    /// Goes on under `identity` (a new epoch): sequences start again at 0.
    fn adopt_transactional_identity(&self, identity: ProducerIdentity) {
        let mut state = self.lock();
        state.sequencer = Sequencer::default();
        state.sequencer.adopt(identity);
        state.transaction_failed = None;
        drop(state);
        self.shared.work.notify_all();
    }

    /// EndTxn, then the epoch it bumped to, if it did (transaction version 2), adopted
    /// before the transactions lock is let go: a transaction another thread begins right
    /// after must not send under the old epoch. (Locks in this order only: transactions,
    /// then the sender state.)
    fn end_transaction(&self, commit: bool) -> Result<(), ClientError> {
        let mut transactions = self.transactions();
        let bumped = transactions.end(&self.shared.config, commit)?;
        if let Some(identity) = bumped {
            self.adopt_transactional_identity(identity);
        }
        drop(transactions);
        Ok(())
    }

    /// Opens a transaction: the records sent until its commit or abort belong to it.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] before `init_transactions`, inside a transaction, or
    /// once fenced.
    pub fn begin_transaction(&self) -> Result<(), ClientError> {
        self.transactions().begin()
    }

    /// Commits `offsets` (`(topic, partition, next offset to read)`) of the consumer `group`
    /// inside the open transaction: they become the group's committed offsets when the
    /// transaction commits, and never if it aborts (consume-transform-produce, exactly once).
    ///
    /// # Errors
    /// The coordinators' refusals; then the transaction must abort.
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &[(String, i32, i64)],
        group: &GroupMetadata,
    ) -> Result<(), ClientError> {
        self.transactions()
            .send_offsets(&self.shared.config, offsets, group)
    }

    /// Sends the transaction's records, waits for them, and commits it: its records become
    /// visible to `read_committed` consumers, its offsets committed.
    ///
    /// # Errors
    /// When one of its records failed (the transaction must then abort) or the coordinator
    /// refuses.
    pub fn commit_transaction(&self) -> Result<(), ClientError> {
        self.transactions().check_open()?;
        self.flush();
        if let Some(failure) = self.lock().transaction_failed.clone() {
            return Err(ClientError::InvalidState(format!(
                "a record of the transaction failed ({failure}): abort it"
            )));
        }
        self.end_transaction(true)
    }

    /// Waits for the transaction's records to be answered, then aborts it: `read_committed`
    /// consumers never see them, and its offsets are dropped.
    ///
    /// # Errors
    /// The coordinator's refusal.
    pub fn abort_transaction(&self) -> Result<(), ClientError> {
        self.transactions().check_open()?;
        self.flush();
        self.lock().transaction_failed = None;
        self.end_transaction(false)
    }

    /// Sends everything queued and waits for every result.
    pub fn flush(&self) {
        let mut state = self.lock();
        state.flushing = true;
        self.shared.work.notify_all();
        while state.outstanding > 0 {
            state = self.shared.progress.wait(state).expect("not poisoned");
        }
        state.flushing = false;
    }

    /// Sends everything queued and waits up to `timeout` for every result; returns how many
    /// records still have none (0: all delivered or failed). Records queued meanwhile by
    /// other threads are waited for too.
    pub fn flush_within(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        state.flushing = true;
        self.shared.work.notify_all();
        while state.outstanding > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = self
                .shared
                .progress
                .wait_timeout(state, left)
                .expect("not poisoned")
                .0;
        }
        // Batches still open go out after `linger.ms` as usual (another thread's `flush`
        // still waiting for them only waits up to that longer).
        state.flushing = false;
        state.outstanding
    }

    /// Records sent or queued whose result is not known yet.
    pub fn outstanding(&self) -> usize {
        self.lock().outstanding
    }

    /// Flushes, then stops the sender thread.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.flush();
            self.lock().closing = true;
            self.shared.work.notify_all();
            let _ = sender.join();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("not poisoned")
    }

    /// The partition count of `topic`, from metadata fetched (and the topic created, as
    /// producers do, where the broker allows it) when not known yet.
    fn partitions_of(&self, topic: &str) -> Result<i32, ClientError> {
        if let Some(leaders) = self.lock().metadata.partitions.get(topic) {
            return Ok(leaders.len() as i32);
        }
        let deadline = Instant::now() + MAX_BLOCK;
        loop {
            let fetched = {
                let mut connection = self
                    .shared
                    .metadata_connection
                    .lock()
                    .expect("not poisoned");
                let connected = match connection.take() {
                    Some(connection) => Ok(connection),
                    None => connect_any(&self.shared.config),
                };
                let result = connected.and_then(|connected| {
                    let connection = connection.insert(connected);
                    fetch_metadata(connection, topic)
                });
                if result.is_err() {
                    *connection = None;
                }
                result
            };
            match fetched {
                Ok(metadata) => {
                    let mut state = self.lock();
                    state.metadata.brokers.extend(metadata.brokers);
                    let count = metadata.partitions.get(topic).map(Vec::len);
                    state.metadata.partitions.extend(metadata.partitions);
                    if let Some(count) = count {
                        return Ok(count as i32);
                    }
                }
                Err(ClientError::Kafka { code, .. })
                    if ResponseError::try_from_code(code)
                        .is_some_and(|error| error.is_retriable()) => {}
                // The cluster, reached when the producer was made, went away (a broker
                // restarting): wait for it, as the Java client waits up to max.block.ms.
                Err(error) if error.is_disconnect() => {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                return Err(ClientError::from_code(
                    ResponseError::UnknownTopicOrPartition.code(),
                    Some(format!("no metadata for topic {topic} after 60 s")),
                ));
            }
            std::thread::sleep(Duration::from_millis(
                self.shared.config.common.retry_backoff_ms.max(10),
            ));
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn connect_any(config: &ProducerConfig) -> Result<Connection, ClientError> {
    Connection::open_any(&config.common)
}

/// Metadata of `topic`, asking the broker to create it if it may.
fn fetch_metadata(connection: &mut Connection, topic: &str) -> Result<Metadata, ClientError> {
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(StrBytes::from_string(topic.to_owned()))))]));
    let (_, response) = connection.call(ApiKey::Metadata, RequestKind::Metadata(request))?;
    let ResponseKind::Metadata(response) = response else {
        return Err(ClientError::Protocol(
            "Metadata answered with another API".into(),
        ));
    };
    let mut metadata = Metadata::default();
    for broker in &response.brokers {
        metadata
            .brokers
            .insert(broker.node_id.0, format!("{}:{}", broker.host, broker.port));
    }
    for found in &response.topics {
        let name = found
            .name
            .as_ref()
            .map(|name| name.0.to_string())
            .unwrap_or_default();
        if found.error_code != 0 {
            return Err(ClientError::from_code(
                found.error_code,
                Some(format!("topic {name}")),
            ));
        }
        let mut leaders: Vec<(i32, i32)> = found
            .partitions
            .iter()
            .map(|partition| (partition.partition_index, partition.leader_id.0))
            .collect();
        leaders.sort_unstable();
        metadata.partitions.insert(
            name,
            leaders.into_iter().map(|(_, leader)| leader).collect(),
        );
    }
    Ok(metadata)
}

/// A connection to a leader as the sender thread holds it: it writes requests, and a reader
/// thread of the link's own reads their responses in order and delivers the results, so that
/// up to `max.in.flight.requests.per.connection` requests are on the wire at once.
struct Link {
    sender: RequestSender,
    jobs: mpsc::Sender<Job>,
    reader: JoinHandle<()>,
    /// Set by the reader when the connection failed: the sender opens a new link.
    broken: Arc<AtomicBool>,
}

impl Link {
    fn open(shared: &Arc<Shared>, leader: i32, address: &str) -> Result<Link, ClientError> {
        let config = &shared.config;
        let timeout = Duration::from_millis(config.common.request_timeout_ms);
        let (sender, reader) =
            Connection::open(address, &config.common.client_id, timeout)?.split()?;
        let (jobs, queue) = mpsc::channel();
        let broken = Arc::new(AtomicBool::new(false));
        let reader = {
            let shared = Arc::clone(shared);
            let broken = Arc::clone(&broken);
            std::thread::Builder::new()
                .name(format!("spate-producer-{leader}"))
                .spawn(move || run_reader(&shared, leader, reader, &queue, &broken))
                .map_err(|error| {
                    ClientError::Protocol(format!("cannot start a reader thread: {error}"))
                })?
        };
        Ok(Link {
            sender,
            jobs,
            reader,
            broken,
        })
    }

    /// Closes the connection and waits for the reader, which fails what is still in flight.
    fn close(self) {
        self.sender.shutdown();
        drop(self.jobs);
        // A reader that panicked has already printed why; its batches stay counted, and a
        // flush reports them as not delivered when its caller gives up.
        let _ = self.reader.join();
    }
}

/// A Produce request on the wire, with its batches.
struct Job {
    request: InFlight,
    batches: Vec<Batch>,
}

/// The sender thread: waits for ready (or lingered) batches and sends them; the links' reader
/// threads deliver the results.
fn run_sender(shared: &Arc<Shared>) {
    let config = &shared.config;
    let linger = Duration::from_millis(config.linger_ms);
    let mut links: BTreeMap<i32, Link> = BTreeMap::new();
    loop {
        let (batches, stale) = {
            let mut state = shared.state.lock().expect("not poisoned");
            loop {
                // Batches that lingered long enough, or all of them when flushing or closing.
                let now = Instant::now();
                let everything = state.flushing || state.closing;
                let lingered: Vec<(String, i32)> = state
                    .open
                    .iter()
                    .filter(|(_, batch)| everything || now.duration_since(batch.created) >= linger)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in lingered {
                    let batch = state.open.remove(&key).expect("listed");
                    let partitions =
                        state.metadata.partitions.get(&key.0).map_or(1, Vec::len) as i32;
                    let random = state.random >> 24;
                    state
                        .partitioner
                        .batch_closed(&key.0, key.1, partitions, random);
                    state.ready.push_back(batch);
                }
                // A batch waiting out its retry backoff holds back the batches behind it.
                let due = state
                    .ready
                    .iter()
                    .take_while(|batch| batch.retry_at.is_none_or(|at| at <= now))
                    .count();
                if due > 0 {
                    let batches: Vec<Batch> = state.ready.drain(..due).collect();
                    break (batches, std::mem::take(&mut state.stale_topics));
                }
                if state.closing
                    && state.ready.is_empty()
                    && state.open.is_empty()
                    && state.in_flight.values().all(|count| *count == 0)
                {
                    drop(state);
                    for (_, link) in std::mem::take(&mut links) {
                        link.close();
                    }
                    return;
                }
                let retry_wait = state
                    .ready
                    .front()
                    .and_then(|batch| batch.retry_at)
                    .map(|at| at.saturating_duration_since(now));
                let wait = state
                    .open
                    .values()
                    .map(|batch| (batch.created + linger).saturating_duration_since(now))
                    .chain(retry_wait)
                    .min()
                    .unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_millis(1));
                state = shared
                    .work
                    .wait_timeout(state, wait)
                    .expect("not poisoned")
                    .0;
            }
        };
        if !stale.is_empty() {
            refresh_metadata(shared, &stale);
        }
        // A transactional producer gets its id from `init_transactions`.
        let wants_producer_id = config.enable_idempotence && config.transactional_id.is_none() && {
            let state = shared.state.lock().expect("not poisoned");
            state.sequencer.wants_new_producer() && state.producer_id_refused.is_none()
        };
        if wants_producer_id {
            // Without one the batches are held (retried after retry.backoff.ms).
            init_producer_id(shared);
        }
        send_batches(shared, &mut links, batches);
        shared.progress.notify_all();
    }
}

/// Sends `batches`, grouped by leader, each request once its link has room in flight.
fn send_batches(shared: &Arc<Shared>, links: &mut BTreeMap<i32, Link>, batches: Vec<Batch>) {
    let config = &shared.config;
    // A request carries at most one batch per partition (a Produce response answers each
    // partition once), so a partition's second batch goes in the next request to that leader,
    // keeping the partition's order.
    let mut requests: BTreeMap<(usize, i32), Vec<Batch>> = BTreeMap::new();
    let mut orphaned = Vec::new();
    {
        let mut state = shared.state.lock().expect("not poisoned");
        let mut seen: BTreeMap<(String, i32), usize> = BTreeMap::new();
        let mut held = Vec::new();
        for mut batch in batches {
            let key = (batch.topic.clone(), batch.partition);
            let leader = state
                .metadata
                .partitions
                .get(&batch.topic)
                .and_then(|leaders| leaders.get(batch.partition as usize))
                .copied()
                .unwrap_or(-1);
            if config.enable_idempotence {
                if !state.sequencer.may_send_to(&key, leader) {
                    held.push(batch);
                    continue;
                }
                match batch.sequenced {
                    None => match state.sequencer.assign(&key, batch.records.len()) {
                        Assignment::Assigned(sequenced) => stamp(&mut batch, sequenced),
                        Assignment::Hold => {
                            let waited = batch.created.elapsed();
                            if let Some(refused) = &state.producer_id_refused {
                                orphaned.push((batch, refused.clone()));
                            } else if waited >= Duration::from_millis(config.delivery_timeout_ms) {
                                let last = state.producer_id_last_error.as_deref();
                                let failure = DeliveryError {
                                    code: Some(ResponseError::RequestTimedOut.code()),
                                    message: format!(
                                        "no producer id for idempotence within \
                                         delivery.timeout.ms ({} ms){}",
                                        config.delivery_timeout_ms,
                                        last.map(|last| format!(": {last}")).unwrap_or_default()
                                    ),
                                };
                                orphaned.push((batch, failure));
                            } else {
                                held.push(batch);
                            }
                            continue;
                        }
                    },
                    Some(sequenced) if state.sequencer.is_broken(&key) => {
                        // An earlier batch of its partition failed for good: the broker would
                        // refuse this one's sequence.
                        state.sequencer.resolved(&key, &sequenced, false);
                        let failure = DeliveryError {
                            code: Some(ResponseError::OutOfOrderSequenceNumber.code()),
                            message: "an earlier batch of this partition failed, so this one \
                                      was not sent again (it may or may not have been written)"
                                .into(),
                        };
                        orphaned.push((batch, failure));
                        continue;
                    }
                    Some(_) => {}
                }
                state.sequencer.sent(&key, leader);
            }
            let round = seen
                .entry((batch.topic.clone(), batch.partition))
                .or_default();
            requests.entry((*round, leader)).or_default().push(batch);
            *round += 1;
        }
        let retry_at = Instant::now() + Duration::from_millis(config.common.retry_backoff_ms);
        for mut batch in held {
            batch.retry_at = Some(retry_at);
            state.requeue(batch);
        }
    }
    for (batch, failure) in orphaned {
        deliver(shared, batch, |_, _| Err(failure.clone()));
    }
    for ((_, leader), batches) in requests {
        let batches = wait_for_room(shared, leader, batches);
        if batches.is_empty() {
            continue;
        }
        if links
            .get(&leader)
            .is_some_and(|link| link.broken.load(Ordering::Acquire))
        {
            links.remove(&leader).expect("checked").close();
        }
        let address = shared
            .state
            .lock()
            .expect("not poisoned")
            .metadata
            .brokers
            .get(&leader)
            .cloned();
        let link = match (links.contains_key(&leader), address) {
            (true, _) => Ok(links.get_mut(&leader).expect("checked")),
            (false, Some(address)) => {
                Link::open(shared, leader, &address).map(|link| links.entry(leader).or_insert(link))
            }
            (false, None) => Err(ClientError::from_code(
                ResponseError::LeaderNotAvailable.code(),
                None,
            )),
        };
        let sent = link.and_then(|link| {
            let request = produce_request(config, &batches)?;
            if config.acks == Acks::None {
                link.sender
                    .send_only(ApiKey::Produce, RequestKind::Produce(request))?;
                return Ok(None);
            }
            let in_flight = link
                .sender
                .send(ApiKey::Produce, &RequestKind::Produce(request))?;
            Ok(Some(in_flight))
        });
        match sent {
            Ok(None) => {
                // acks=0: no answer will come; delivered as sent.
                for batch in batches {
                    deliver(shared, batch, |_, record| {
                        Ok(RecordMetadata {
                            topic: String::new(),
                            partition: 0,
                            offset: -1,
                            timestamp_ms: record.timestamp,
                        })
                    });
                }
            }
            Ok(Some(request)) => {
                *shared
                    .state
                    .lock()
                    .expect("not poisoned")
                    .in_flight
                    .entry(leader)
                    .or_default() += 1;
                let link = links.get(&leader).expect("just used");
                if let Err(mpsc::SendError(job)) = link.jobs.send(Job { request, batches }) {
                    // The reader is gone (it only stops when the link is dropped): fail over.
                    finish_request(shared, leader, job.batches, Err(reader_gone()));
                }
            }
            Err(error) => {
                if let Some(link) = links.remove(&leader) {
                    link.close();
                }
                let failed = batches
                    .into_iter()
                    .map(|batch| (batch, Err(send_failed(&error))))
                    .collect();
                complete_batches(shared, failed);
            }
        }
    }
}

fn reader_gone() -> ClientError {
    ClientError::Io {
        address: String::new(),
        source: std::io::Error::other("the connection's reader stopped"),
    }
}

/// What a batch that could not be sent is failed (or retried) with.
fn send_failed(error: &ClientError) -> ClientError {
    let retriable = error.is_disconnect()
        || matches!(error, ClientError::Kafka { code, .. } if is_retriable(*code));
    ClientError::Kafka {
        code: if retriable {
            ResponseError::NetworkException.code()
        } else {
            -1
        },
        name: "SEND_FAILED".into(),
        message: Some(error.to_string()),
    }
}

/// Waits until `leader` has room for another request in flight. Batches of a partition with an
/// older batch queued (a retry) go back behind it instead, so that the partition's order holds.
fn wait_for_room(shared: &Shared, leader: i32, batches: Vec<Batch>) -> Vec<Batch> {
    let limit = shared.config.max_in_flight_requests_per_connection;
    let mut state = shared.state.lock().expect("not poisoned");
    while state.in_flight.get(&leader).copied().unwrap_or(0) >= limit {
        state = shared.progress.wait(state).expect("not poisoned");
    }
    let (held, go): (Vec<Batch>, Vec<Batch>) = batches
        .into_iter()
        .partition(|batch| state.has_older(batch));
    for batch in held {
        if batch.sequenced.is_some() {
            // Counted as sent to its leader when the requests were formed.
            state
                .sequencer
                .returned(&(batch.topic.clone(), batch.partition));
        }
        state.requeue(batch);
    }
    go
}

/// A link's reader thread: reads each request's response in order and delivers its results.
fn run_reader(
    shared: &Shared,
    leader: i32,
    mut reader: ResponseReader,
    jobs: &mpsc::Receiver<Job>,
    broken: &AtomicBool,
) {
    while let Ok(job) = jobs.recv() {
        let response = if broken.load(Ordering::Acquire) {
            Err(reader_gone())
        } else {
            reader.receive(job.request)
        };
        if response.is_err() {
            broken.store(true, Ordering::Release);
        }
        finish_request(shared, leader, job.batches, response);
    }
}

/// Delivers (or queues for retry) the batches of an answered request and frees its place in
/// flight.
fn finish_request(
    shared: &Shared,
    leader: i32,
    batches: Vec<Batch>,
    response: Result<ResponseKind, ClientError>,
) {
    let outcomes: Vec<(Batch, PartitionOutcome)> =
        match response.and_then(|response| match response {
            ResponseKind::Produce(response) => Ok(response),
            _ => Err(ClientError::Protocol(
                "Produce answered with another API".into(),
            )),
        }) {
            Ok(response) => batches
                .into_iter()
                .map(|batch| {
                    let outcome = partition_outcome(&response, &batch);
                    (batch, outcome)
                })
                .collect(),
            Err(error) => batches
                .into_iter()
                .map(|batch| (batch, Err(send_failed(&error))))
                .collect(),
        };
    complete_batches(shared, outcomes);
    let mut state = shared.state.lock().expect("not poisoned");
    let count = state.in_flight.entry(leader).or_default();
    assert!(*count > 0, "a request finished that was not in flight");
    *count -= 1;
    drop(state);
    shared.progress.notify_all();
    shared.work.notify_all();
}

/// A batch's end: its (base offset, log-append time), or why it failed.
type Finished = Result<(i64, i64), DeliveryError>;

/// Delivers successes; queues retriable failures at the front of the ready queue (after
/// `retry.backoff.ms`, with their topics' metadata to refresh); fails the rest. With
/// idempotence, tells the sequencer which batches are resolved.
fn complete_batches(shared: &Shared, outcomes: Vec<(Batch, PartitionOutcome)>) {
    let config = &shared.config;
    let mut retry = Vec::new();
    let mut finished: Vec<(Batch, Finished)> = Vec::new();
    {
        let mut state = shared.state.lock().expect("not poisoned");
        for (mut batch, outcome) in outcomes {
            let key = (batch.topic.clone(), batch.partition);
            if batch.sequenced.is_some() {
                state.sequencer.returned(&key);
            }
            match outcome {
                Ok(answer) => {
                    if let Some(sequenced) = batch.sequenced {
                        state.sequencer.resolved(&key, &sequenced, true);
                    }
                    finished.push((batch, Ok(answer)));
                }
                Err(error) => {
                    let mut retriable =
                        matches!(&error, ClientError::Kafka { code, .. } if is_retriable(*code));
                    if let Some(sequenced) = batch.sequenced {
                        // Refused only because an earlier batch is missing, which goes first.
                        retriable |= error.is(ResponseError::OutOfOrderSequenceNumber)
                            && state.sequencer.out_of_order_is_transient(&key, &sequenced);
                        retriable &= !state.sequencer.is_broken(&key);
                    }
                    let within_time =
                        batch.created.elapsed() < Duration::from_millis(config.delivery_timeout_ms);
                    if retriable && batch.attempts < config.retries && within_time {
                        batch.attempts += 1;
                        batch.retry_at = Some(
                            Instant::now() + Duration::from_millis(config.common.retry_backoff_ms),
                        );
                        retry.push(batch);
                    } else {
                        if let Some(sequenced) = batch.sequenced {
                            state.sequencer.resolved(&key, &sequenced, false);
                        }
                        let failure = DeliveryError {
                            code: error.code(),
                            message: error.to_string(),
                        };
                        finished.push((batch, Err(failure)));
                    }
                }
            }
        }
        for batch in &retry {
            state.stale_topics.insert(batch.topic.clone());
        }
        for batch in retry {
            state.requeue(batch);
        }
    }
    shared.work.notify_all();
    for (batch, result) in finished {
        match result {
            Ok((base_offset, timestamp)) => deliver(shared, batch, |index, record| {
                Ok(RecordMetadata {
                    topic: String::new(),
                    partition: 0,
                    offset: if base_offset < 0 {
                        -1
                    } else {
                        base_offset + index as i64
                    },
                    timestamp_ms: if timestamp >= 0 {
                        timestamp
                    } else {
                        record.timestamp
                    },
                })
            }),
            Err(failure) => deliver(shared, batch, |_, _| Err(failure.clone())),
        }
    }
}

/// Gives `batch`'s records the producer id, epoch and consecutive sequence numbers.
fn stamp(batch: &mut Batch, sequenced: Sequenced) {
    for (index, pending) in batch.records.iter_mut().enumerate() {
        pending.record.producer_id = sequenced.identity.producer_id;
        pending.record.producer_epoch = sequenced.identity.epoch;
        pending.record.sequence = last_sequence(sequenced.base_sequence, index as i32);
    }
    batch.sequenced = Some(sequenced);
}

/// Asks a broker for a producer id (InitProducerId) and hands it to the sequencer; on failure
/// the batches wait and the next round asks again.
fn init_producer_id(shared: &Shared) {
    let mut connection = shared.metadata_connection.lock().expect("not poisoned");
    if connection.is_none() {
        match connect_any(&shared.config) {
            Ok(fresh) => *connection = Some(fresh),
            Err(_) => return,
        }
    }
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let answer = connection
        .as_mut()
        .expect("connected")
        .call(ApiKey::InitProducerId, RequestKind::InitProducerId(request));
    /// What the answer leaves the producer with.
    enum Outcome {
        Adopted(ProducerIdentity),
        Refused(DeliveryError),
        Failed(String),
    }
    let outcome = match answer {
        Ok((_, ResponseKind::InitProducerId(response))) if response.error_code == 0 => {
            Outcome::Adopted(ProducerIdentity {
                producer_id: response.producer_id.0,
                epoch: response.producer_epoch,
            })
        }
        Ok((_, ResponseKind::InitProducerId(response))) => {
            let error = ClientError::from_code(response.error_code, None);
            if is_retriable(response.error_code) {
                Outcome::Failed(error.to_string())
            } else {
                Outcome::Refused(DeliveryError {
                    code: error.code(),
                    message: format!("no producer id for idempotence: {error}"),
                })
            }
        }
        Ok(_) => return,
        Err(error @ ClientError::Unsupported(_)) => Outcome::Refused(DeliveryError {
            code: None,
            message: format!(
                "the broker has no idempotent producer ({error}): set enable.idempotence=false"
            ),
        }),
        Err(error) => {
            *connection = None;
            Outcome::Failed(error.to_string())
        }
    };
    drop(connection);
    let mut state = shared.state.lock().expect("not poisoned");
    match outcome {
        Outcome::Adopted(identity) => state.sequencer.adopt(identity),
        Outcome::Refused(refused) => state.producer_id_refused = Some(refused),
        Outcome::Failed(error) => state.producer_id_last_error = Some(error),
    }
}

fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable())
}

/// Hands each record of `batch` its result and frees its memory.
fn deliver(shared: &Shared, batch: Batch, result: impl Fn(usize, &WireRecord) -> DeliveryResult) {
    let count = batch.records.len();
    let bytes = batch.bytes;
    let mut failure = None;
    for (index, pending) in batch.records.into_iter().enumerate() {
        let outcome = result(index, &pending.record).map(|mut metadata| {
            metadata.topic = batch.topic.clone();
            metadata.partition = batch.partition;
            metadata
        });
        if let Err(error) = &outcome {
            failure.get_or_insert_with(|| error.message.clone());
        }
        pending.notify.send(outcome);
    }
    let mut state = shared.state.lock().expect("not poisoned");
    state.buffered_bytes -= bytes;
    state.outstanding -= count;
    if let Some(failure) = failure.filter(|_| shared.config.transactional_id.is_some()) {
        state.transaction_failed.get_or_insert(failure);
    }
    drop(state);
    shared.progress.notify_all();
}

/// A partition's answer to a Produce: its base offset and log-append time, or its error.
type PartitionOutcome = Result<(i64, i64), ClientError>;

/// The Produce request carrying `batches`, encoded and compressed.
fn produce_request(
    config: &ProducerConfig,
    batches: &[Batch],
) -> Result<ProduceRequest, ClientError> {
    let compression = match config.compression {
        Compression::None => WireCompression::None,
        Compression::Gzip => WireCompression::Gzip,
        Compression::Snappy => WireCompression::Snappy,
        Compression::Lz4 => WireCompression::Lz4,
        Compression::Zstd => WireCompression::Zstd,
    };
    let mut topics: Vec<produce_request::TopicProduceData> = Vec::new();
    for batch in batches {
        // The batch header, and per record at most 20 bytes of varints and attributes besides
        // what `bytes` counted: no growth, so no copy, for an uncompressed batch.
        let mut encoded = BytesMut::with_capacity(61 + batch.bytes + 20 * batch.records.len());
        RecordBatchEncoder::encode(
            &mut encoded,
            batch.records.iter().map(|pending| &pending.record),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .map_err(|error| ClientError::Protocol(format!("encoding a batch: {error}")))?;
        let data = produce_request::PartitionProduceData::default()
            .with_index(batch.partition)
            .with_records(Some(encoded.freeze()));
        match topics
            .iter_mut()
            .find(|topic| topic.name.0.as_str() == batch.topic)
        {
            Some(topic) => topic.partition_data.push(data),
            None => topics.push(
                produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(batch.topic.clone())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    Ok(ProduceRequest::default()
        .with_transactional_id(
            config
                .transactional_id
                .as_deref()
                .map(|id| TransactionalId(StrBytes::from_string(id.to_owned()))),
        )
        .with_acks(config.acks.wire())
        .with_timeout_ms(i32::try_from(config.common.request_timeout_ms).unwrap_or(i32::MAX))
        .with_topic_data(topics))
}

/// `batch`'s partition's answer in a Produce response.
fn partition_outcome(response: &ProduceResponse, batch: &Batch) -> PartitionOutcome {
    let answer = response
        .responses
        .iter()
        .filter(|topic| topic.name.0.as_str() == batch.topic)
        .flat_map(|topic| &topic.partition_responses)
        .find(|partition| partition.index == batch.partition);
    match answer {
        Some(answer) if answer.error_code == 0 => {
            Ok((answer.base_offset, answer.log_append_time_ms))
        }
        Some(answer) => Err(ClientError::from_code(
            answer.error_code,
            answer.error_message.as_ref().map(ToString::to_string),
        )),
        None => Err(ClientError::Protocol(format!(
            "no answer for {}-{}",
            batch.topic, batch.partition
        ))),
    }
}

/// New metadata for topics whose batches are retried (their leader may have moved).
fn refresh_metadata(shared: &Shared, topics: &BTreeSet<String>) {
    let mut connection = shared.metadata_connection.lock().expect("not poisoned");
    for topic in topics {
        if connection.is_none() {
            match connect_any(&shared.config) {
                Ok(fresh) => *connection = Some(fresh),
                Err(_) => return,
            }
        }
        match fetch_metadata(connection.as_mut().expect("connected"), topic) {
            Ok(metadata) => {
                let mut state = shared.state.lock().expect("not poisoned");
                state.metadata.brokers.extend(metadata.brokers);
                state.metadata.partitions.extend(metadata.partitions);
            }
            Err(_) => *connection = None,
        }
    }
}
