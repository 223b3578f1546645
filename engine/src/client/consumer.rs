//! The consumer, for now without a group: partitions are assigned by the caller (Kafka's
//! `assign()`), read from a position set by `seek` or by `auto.offset.reset`, with fetches of
//! all assigned partitions of a broker in one long-polling Fetch. Group membership
//! (`subscribe`, commits) comes next (issue 5).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::config::{ConsumerConfig, OffsetReset};
use super::connection::Connection;
use super::error::ClientError;

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

/// A consumer. See the module docs.
#[derive(Debug)]
pub struct Consumer {
    config: ConsumerConfig,
    connection: Connection,
    /// Assigned partitions: `(topic, partition)` to the next offset to read (`None`: to be
    /// found from `auto.offset.reset` or a pending seek).
    positions: BTreeMap<(String, i32), Option<i64>>,
    pending_seeks: BTreeMap<(String, i32), StartAt>,
    buffered: VecDeque<ConsumerRecord>,
    /// The high watermark each partition's last fetch reported.
    high_watermarks: BTreeMap<(String, i32), i64>,
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

impl Consumer {
    /// A consumer connected to the first reachable bootstrap server.
    ///
    /// # Errors
    /// When no bootstrap server answers.
    pub fn new(config: ConsumerConfig) -> Result<Consumer, ClientError> {
        Ok(Consumer {
            connection: Connection::open_any(&config.common)?,
            config,
            positions: BTreeMap::new(),
            pending_seeks: BTreeMap::new(),
            buffered: VecDeque::new(),
            high_watermarks: BTreeMap::new(),
        })
    }

    /// Every partition of `topic`, from metadata.
    ///
    /// # Errors
    /// The topic's error (UNKNOWN_TOPIC_OR_PARTITION when it does not exist).
    pub fn partitions_of(&mut self, topic: &str) -> Result<Vec<i32>, ClientError> {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(text(topic))))]));
        let (_, response) = self
            .connection
            .call(ApiKey::Metadata, RequestKind::Metadata(request))?;
        let ResponseKind::Metadata(response) = response else {
            return Err(ClientError::Protocol(
                "Metadata answered with another API".into(),
            ));
        };
        let found = response
            .topics
            .first()
            .ok_or_else(|| ClientError::Protocol("no metadata for the topic".into()))?;
        ClientError::check(found.error_code, Some(format!("topic {topic}")))?;
        let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// Reads exactly these partitions from now on (Kafka's `assign`).
    pub fn assign(&mut self, partitions: &[(String, i32)]) {
        self.positions = partitions.iter().map(|key| (key.clone(), None)).collect();
        self.pending_seeks.retain(|key, _| partitions.contains(key));
        self.buffered.clear();
    }

    /// Moves a partition's position; applied at the next poll.
    pub fn seek(&mut self, topic: &str, partition: i32, start: StartAt) {
        let key = (topic.to_owned(), partition);
        self.buffered
            .retain(|record| (record.topic.as_str(), record.partition) != (topic, partition));
        self.positions.insert(key.clone(), None);
        self.pending_seeks.insert(key, start);
    }

    /// The next offset to read of a partition, once known.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions
            .get(&(topic.to_owned(), partition))
            .copied()
            .flatten()
    }

    /// Whether every assigned partition has been read up to the high watermark its last
    /// fetch reported, and nothing read is waiting to be polled (kcat's `-e`).
    pub fn at_end(&self) -> bool {
        self.buffered.is_empty()
            && self.positions.iter().all(|(key, position)| {
                matches!((position, self.high_watermarks.get(key)), (Some(position), Some(high)) if position >= high)
            })
    }

    /// Records, waiting up to `timeout` for some; empty when none arrived.
    ///
    /// # Errors
    /// A failed request, or OFFSET_OUT_OF_RANGE with `auto.offset.reset=none`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        match self.poll_until(deadline) {
            // The broker went away (a restart, say): reconnect and carry on from the positions,
            // which only ever move past records handed out.
            Err(ClientError::Io { .. }) => {
                self.reconnect(deadline)?;
                self.poll_until(deadline)
            }
            other => other,
        }
    }

    /// A new connection to any bootstrap server, retried until `deadline`.
    fn reconnect(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let backoff = Duration::from_millis(self.config.common.retry_backoff_ms.max(10));
        loop {
            match Connection::open_any(&self.config.common) {
                Ok(connection) => {
                    self.connection = connection;
                    return Ok(());
                }
                Err(error) if Instant::now() + backoff >= deadline => return Err(error),
                Err(_) => std::thread::sleep(backoff),
            }
        }
    }

    fn poll_until(&mut self, deadline: Instant) -> Result<Vec<ConsumerRecord>, ClientError> {
        self.resolve_positions()?;
        loop {
            if !self.buffered.is_empty() {
                let count = self.buffered.len().min(self.config.max_poll_records);
                return Ok(self.buffered.drain(..count).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.positions.is_empty() {
                std::thread::sleep(left);
                return Ok(Vec::new());
            }
            self.fetch(left)?;
            if self.buffered.is_empty() && Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Turns pending seeks and unknown positions into offsets with ListOffsets.
    fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let unknown: Vec<(String, i32)> = self
            .positions
            .iter()
            .filter(|(_, position)| position.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        for key in unknown {
            let start = match self.pending_seeks.remove(&key) {
                Some(start) => start,
                None => match self.config.auto_offset_reset {
                    OffsetReset::Earliest => StartAt::Beginning,
                    OffsetReset::Latest => StartAt::End,
                    OffsetReset::None => {
                        return Err(ClientError::Protocol(format!(
                            "no position for {}-{} and auto.offset.reset=none",
                            key.0, key.1
                        )))
                    }
                },
            };
            let offset = match start {
                StartAt::Offset(offset) => offset,
                StartAt::Beginning => self.list_offset(&key, -2)?,
                StartAt::End => self.list_offset(&key, -1)?,
                StartAt::Timestamp(timestamp) => match self.list_offset(&key, timestamp)? {
                    -1 => self.list_offset(&key, -1)?,
                    offset => offset,
                },
            };
            self.positions.insert(key, Some(offset));
        }
        Ok(())
    }

    fn list_offset(
        &mut self,
        (topic, partition): &(String, i32),
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        self.connection.list_offset(topic, *partition, timestamp)
    }

    /// One Fetch of every assigned partition, waiting up to `wait` for data.
    fn fetch(&mut self, wait: Duration) -> Result<(), ClientError> {
        let mut topics: Vec<fetch_request::FetchTopic> = Vec::new();
        for ((topic, partition), position) in &self.positions {
            let Some(offset) = position else { continue };
            let wanted = fetch_request::FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(*offset)
                .with_partition_max_bytes(self.config.max_partition_fetch_bytes);
            match topics
                .iter_mut()
                .find(|entry| entry.topic.0.as_str() == topic)
            {
                Some(entry) => entry.partitions.push(wanted),
                None => topics.push(
                    fetch_request::FetchTopic::default()
                        .with_topic(TopicName(text(topic)))
                        .with_partitions(vec![wanted]),
                ),
            }
        }
        let wait_ms = i32::try_from(wait.as_millis())
            .unwrap_or(i32::MAX)
            .min(self.config.fetch_max_wait_ms);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(wait_ms)
            .with_min_bytes(self.config.fetch_min_bytes)
            .with_max_bytes(self.config.fetch_max_bytes)
            .with_session_epoch(-1)
            .with_topics(topics);
        let (_, response) = self
            .connection
            .call(ApiKey::Fetch, RequestKind::Fetch(request))?;
        let ResponseKind::Fetch(response) = response else {
            return Err(ClientError::Protocol(
                "Fetch answered with another API".into(),
            ));
        };
        ClientError::check(response.error_code, None)?;
        for topic in response.responses {
            let name = topic.topic.0.to_string();
            for partition in topic.partitions {
                let key = (name.clone(), partition.partition_index);
                let Some(Some(position)) = self.positions.get(&key).copied() else {
                    continue;
                };
                if partition.error_code == ResponseError::OffsetOutOfRange.code() {
                    if self.config.auto_offset_reset == OffsetReset::None {
                        return Err(ClientError::from_code(
                            partition.error_code,
                            Some(format!("{name}-{}", key.1)),
                        ));
                    }
                    self.positions.insert(key, None);
                    continue;
                }
                ClientError::check(partition.error_code, Some(format!("{name}-{}", key.1)))?;
                self.high_watermarks
                    .insert(key.clone(), partition.high_watermark);
                let Some(mut records) = partition.records else {
                    continue;
                };
                let mut next = position;
                while !records.is_empty() {
                    // A partial batch at the end of a response is cut off by max bytes.
                    let Ok(set) = RecordBatchDecoder::decode(&mut records) else {
                        break;
                    };
                    for record in set.records {
                        if record.control || record.offset < position {
                            next = next.max(record.offset + 1);
                            continue;
                        }
                        next = record.offset + 1;
                        self.buffered.push_back(ConsumerRecord {
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
                }
                self.positions.insert(key, Some(next));
            }
        }
        Ok(())
    }
}
