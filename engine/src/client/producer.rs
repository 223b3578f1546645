//! The producer: records are gathered per partition into batches (`batch.size`, `linger.ms`),
//! compressed, and sent by a background thread the producer owns, so that `send` returns at
//! once and the caller needs no executor.
//!
//! ```text
//!  send() ── partitioner ──> open batch of (topic, partition) ──full/lingered/flush──> ready
//!                                                                                       │
//!  sender thread: ready batches ── Produce per leader (one request in flight per broker) ─┘
//!        retriable error: metadata refreshed, the batch retried first (order kept), after
//!        retry.backoff.ms, until retries or delivery.timeout.ms run out
//! ```
//!
//! Each record's result arrives through its [`Delivery`] (wait for it like a future) or a
//! callback. Memory waiting to be sent is bounded by `buffer.memory`: `send` blocks for room.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
use super::connection::Connection;
use super::error::ClientError;
use super::partitioner::Partitioner;

/// How long `send` waits for metadata or for room in `buffer.memory` (Kafka's `max.block.ms`).
const MAX_BLOCK: Duration = Duration::from_secs(60);

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
#[error("{0}")]
pub struct DeliveryError(pub String);

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

    fn enqueue(&self, record: ProducerRecord, notify: Notify) -> Result<(), ClientError> {
        let partitions = self.partitions_of(&record.topic)?;
        let config = &self.shared.config;
        let mut state = self.lock();
        if state.closing {
            return Err(ClientError::Protocol("the producer is closed".into()));
        }
        state.random = state
            .random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let random = state.random >> 16;
        let partition = state.partitioner.partition(
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
        let deadline = Instant::now() + MAX_BLOCK;
        while state.buffered_bytes > 0 && state.buffered_bytes + size > config.buffer_memory {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| {
                    ClientError::Protocol(
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
        let key = (record.topic.clone(), partition);
        let batch = state.open.entry(key.clone()).or_insert_with(|| Batch {
            topic: record.topic.clone(),
            partition,
            records: Vec::new(),
            bytes: 0,
            created: Instant::now(),
            attempts: 0,
        });
        let offset = batch.records.len() as i64;
        batch.records.push(PendingRecord {
            record: WireRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                // The encoder starts a new batch where `offset - sequence` changes: -1 for the
                // first record keeps one batch with the base sequence -1 of a producer
                // without idempotence (which will set real sequences).
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
        self.shared.work.notify_all();
        Ok(())
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
                if connection.is_none() {
                    *connection = Some(connect_any(&self.shared.config)?);
                }
                let result = fetch_metadata(connection.as_mut().expect("connected"), topic);
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

/// The sender thread: waits for ready (or lingered) batches, sends them, delivers results.
fn run_sender(shared: &Shared) {
    let config = &shared.config;
    let linger = Duration::from_millis(config.linger_ms);
    let backoff = Duration::from_millis(config.common.retry_backoff_ms);
    let mut connections: BTreeMap<i32, Connection> = BTreeMap::new();
    loop {
        let batches = {
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
                if !state.ready.is_empty() {
                    break std::mem::take(&mut state.ready);
                }
                if state.closing {
                    return;
                }
                let wait = state
                    .open
                    .values()
                    .map(|batch| (batch.created + linger).saturating_duration_since(now))
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
        let retry = send_batches(shared, &mut connections, batches);
        if !retry.is_empty() {
            std::thread::sleep(backoff);
            refresh_metadata(shared, &mut connections, &retry);
            let mut state = shared.state.lock().expect("not poisoned");
            for batch in retry.into_iter().rev() {
                state.ready.push_front(batch);
            }
        }
        shared.progress.notify_all();
    }
}

/// Sends `batches`, grouped by leader; returns the batches to retry, in order.
fn send_batches(
    shared: &Shared,
    connections: &mut BTreeMap<i32, Connection>,
    batches: VecDeque<Batch>,
) -> Vec<Batch> {
    let config = &shared.config;
    // A request carries at most one batch per partition (a Produce response answers each
    // partition once), so a partition's second batch goes in the next request to that leader,
    // keeping the partition's order.
    let mut requests: BTreeMap<(usize, i32), Vec<Batch>> = BTreeMap::new();
    {
        let state = shared.state.lock().expect("not poisoned");
        let mut seen: BTreeMap<(String, i32), usize> = BTreeMap::new();
        for batch in batches {
            let leader = state
                .metadata
                .partitions
                .get(&batch.topic)
                .and_then(|leaders| leaders.get(batch.partition as usize))
                .copied()
                .unwrap_or(-1);
            let round = seen
                .entry((batch.topic.clone(), batch.partition))
                .or_default();
            requests.entry((*round, leader)).or_default().push(batch);
            *round += 1;
        }
    }
    let mut retry = Vec::new();
    for ((_, leader), batches) in requests {
        let address = shared
            .state
            .lock()
            .expect("not poisoned")
            .metadata
            .brokers
            .get(&leader)
            .cloned();
        let connection = match (connections.get_mut(&leader), address) {
            (Some(connection), _) => Ok(connection),
            (None, Some(address)) => {
                let timeout = Duration::from_millis(config.common.request_timeout_ms);
                Connection::open(&address, &config.common.client_id, timeout)
                    .map(|connection| connections.entry(leader).or_insert(connection))
            }
            (None, None) => Err(ClientError::from_code(
                ResponseError::LeaderNotAvailable.code(),
                None,
            )),
        };
        let outcome = connection.and_then(|connection| produce(config, connection, &batches));
        match outcome {
            Ok(results) => {
                for (batch, result) in batches.into_iter().zip(results) {
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
                        Err(error) => retry_or_fail(shared, batch, error, &mut retry),
                    }
                }
            }
            Err(error) => {
                connections.remove(&leader);
                let retriable =
                    matches!(error, ClientError::Io { .. } | ClientError::Connect { .. })
                        || matches!(error, ClientError::Kafka { code, .. } if is_retriable(code));
                for batch in batches {
                    let code = if retriable {
                        ResponseError::NetworkException.code()
                    } else {
                        -1
                    };
                    let error = ClientError::Kafka {
                        code,
                        name: "SEND_FAILED".into(),
                        message: Some(error.to_string()),
                    };
                    retry_or_fail(shared, batch, error, &mut retry);
                }
            }
        }
    }
    retry
}

fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable())
}

fn retry_or_fail(shared: &Shared, mut batch: Batch, error: ClientError, retry: &mut Vec<Batch>) {
    let config = &shared.config;
    let retriable = matches!(&error, ClientError::Kafka { code, .. } if is_retriable(*code));
    let within_time = batch.created.elapsed() < Duration::from_millis(config.delivery_timeout_ms);
    if retriable && batch.attempts < config.retries && within_time {
        batch.attempts += 1;
        retry.push(batch);
        return;
    }
    let message = error.to_string();
    deliver(shared, batch, |_, _| Err(DeliveryError(message.clone())));
}

/// Hands each record of `batch` its result and frees its memory.
fn deliver(shared: &Shared, batch: Batch, result: impl Fn(usize, &WireRecord) -> DeliveryResult) {
    let count = batch.records.len();
    let bytes = batch.bytes;
    for (index, pending) in batch.records.into_iter().enumerate() {
        let outcome = result(index, &pending.record).map(|mut metadata| {
            metadata.topic = batch.topic.clone();
            metadata.partition = batch.partition;
            metadata
        });
        pending.notify.send(outcome);
    }
    let mut state = shared.state.lock().expect("not poisoned");
    state.buffered_bytes -= bytes;
    state.outstanding -= count;
    drop(state);
    shared.progress.notify_all();
}

/// A partition's answer to a Produce: its base offset and log-append time, or its error.
type PartitionOutcome = Result<(i64, i64), ClientError>;

/// One Produce request with `batches`; per batch, its partition's answer.
fn produce(
    config: &ProducerConfig,
    connection: &mut Connection,
    batches: &[Batch],
) -> Result<Vec<PartitionOutcome>, ClientError> {
    let compression = match config.compression {
        Compression::None => WireCompression::None,
        Compression::Gzip => WireCompression::Gzip,
        Compression::Snappy => WireCompression::Snappy,
        Compression::Lz4 => WireCompression::Lz4,
        Compression::Zstd => WireCompression::Zstd,
    };
    let mut topics: Vec<produce_request::TopicProduceData> = Vec::new();
    for batch in batches {
        let mut encoded = BytesMut::new();
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
    let request = ProduceRequest::default()
        .with_acks(config.acks.wire())
        .with_timeout_ms(i32::try_from(config.common.request_timeout_ms).unwrap_or(i32::MAX))
        .with_topic_data(topics);
    if config.acks == Acks::None {
        connection.send_only(ApiKey::Produce, RequestKind::Produce(request))?;
        return Ok(batches.iter().map(|_| Ok((-1, -1))).collect());
    }
    let (_, response) = connection.call(ApiKey::Produce, RequestKind::Produce(request))?;
    let ResponseKind::Produce(response) = response else {
        return Err(ClientError::Protocol(
            "Produce answered with another API".into(),
        ));
    };
    Ok(batches
        .iter()
        .map(|batch| {
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
        })
        .collect())
}

/// New metadata for the topics of batches about to be retried (their leader may have moved).
fn refresh_metadata(
    shared: &Shared,
    connections: &mut BTreeMap<i32, Connection>,
    batches: &[Batch],
) {
    let mut topics: Vec<&str> = batches.iter().map(|batch| batch.topic.as_str()).collect();
    topics.dedup();
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
            Err(_) => {
                *connection = None;
                connections.clear();
            }
        }
    }
}
