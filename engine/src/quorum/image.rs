//! [`MetadataImage`]: the cluster's metadata as the applied records of the metadata log make
//! it, the same on every broker that applied the same records.
//!
//! Applying is a pure function of the image and the record (no clock, no randomness, ordered
//! maps only). A record that does not fit the image (a change to an unknown partition, an old
//! broker epoch) is ignored and reported, never applied halfway: the controller only proposes
//! records that fit, so such a record means it raced with another change, and the log stays
//! the one source of truth. [`MetadataImage::to_records`] writes the image as records that
//! rebuild it, which is what a snapshot holds.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::records::{
    decode_versioned, encode_versioned, MetadataRecord, RecordError, PRODUCER_ID_BLOCK_SIZE,
};
use crate::replication::{BrokerId, PartitionState};

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    /// `node.id`.
    pub broker_id: BrokerId,
    /// The log index of its registration: fences out requests of an earlier incarnation.
    pub broker_epoch: i64,
    /// Random per process start.
    pub incarnation_id: Uuid,
    /// Where clients reach it.
    pub host: String,
    /// Its Kafka port.
    pub port: i32,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Silent too long, or not caught up yet: it leads nothing and joins no ISR.
    pub fenced: bool,
    /// Shutting down: it gives up leadership and joins no ISR.
    pub in_controlled_shutdown: bool,
}

impl BrokerRegistration {
    /// Whether it may lead partitions and be in ISRs.
    pub fn is_eligible(&self) -> bool {
        !self.fenced && !self.in_controlled_shutdown
    }
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    /// Its name.
    pub name: String,
    /// Its partitions by index.
    pub partitions: BTreeMap<i32, PartitionState>,
}

/// Why a record was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The record names a broker, topic or partition the image does not have.
    #[error("unknown {0}")]
    Unknown(String),
    /// The record is about an earlier registration of the broker.
    #[error("stale broker epoch {found} for broker {broker_id} (registered at {current})")]
    StaleBrokerEpoch {
        /// The broker.
        broker_id: BrokerId,
        /// The record's epoch.
        found: i64,
        /// The registration's.
        current: i64,
    },
    /// The record would break an invariant (a name taken twice, a leader outside the ISR).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// A client quota entity's names as stored: (user, client id), each if the entity names it.
pub type QuotaEntityNames = (Option<String>, Option<String>);

/// The cluster's metadata. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    brokers: BTreeMap<BrokerId, BrokerRegistration>,
    topics: BTreeMap<Uuid, TopicImage>,
    topic_ids: BTreeMap<String, Uuid>,
    configs: BTreeMap<(i8, String), BTreeMap<String, String>>,
    /// Client quotas: (user, client id) as stored, to key to value as text.
    client_quotas: BTreeMap<QuotaEntityNames, BTreeMap<String, String>>,
    /// The log index of the last record applied.
    last_applied_index: u64,
    /// The first producer id no broker has been given.
    next_producer_id: i64,
    /// Each broker's latest producer id block: (its request id, first id).
    producer_id_blocks: BTreeMap<BrokerId, (u64, i64)>,
    /// Partitions' eligible leader replicas (KIP-966), where there are any.
    elr: BTreeMap<(Uuid, i32), Vec<BrokerId>>,
}

impl MetadataImage {
    /// An empty cluster.
    pub fn new() -> MetadataImage {
        MetadataImage::default()
    }

    /// The log index of the last record applied.
    pub fn last_applied_index(&self) -> u64 {
        self.last_applied_index
    }

    /// Registered brokers by id.
    pub fn brokers(&self) -> &BTreeMap<BrokerId, BrokerRegistration> {
        &self.brokers
    }

    /// A broker's registration.
    pub fn broker(&self, broker_id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&broker_id)
    }

    /// Whether `broker_id` is registered and may lead and be in ISRs.
    pub fn is_eligible(&self, broker_id: BrokerId) -> bool {
        self.brokers
            .get(&broker_id)
            .is_some_and(BrokerRegistration::is_eligible)
    }

    /// Topics by id.
    pub fn topics(&self) -> &BTreeMap<Uuid, TopicImage> {
        &self.topics
    }

    /// A topic's id by name.
    pub fn topic_id(&self, name: &str) -> Option<Uuid> {
        self.topic_ids.get(name).copied()
    }

    /// A partition's state.
    pub fn partition(&self, topic_id: Uuid, partition: i32) -> Option<&PartitionState> {
        self.topics.get(&topic_id)?.partitions.get(&partition)
    }

    /// Client quotas: (user, client id) as stored, to key to value as text.
    pub fn client_quotas(&self) -> &BTreeMap<QuotaEntityNames, BTreeMap<String, String>> {
        &self.client_quotas
    }

    /// A resource's dynamic configs.
    pub fn configs(
        &self,
        resource_type: i8,
        resource_name: &str,
    ) -> Option<&BTreeMap<String, String>> {
        self.configs
            .get(&(resource_type, resource_name.to_string()))
    }

    /// The topic's `min.insync.replicas`: its own setting, else the cluster default, else 1.
    /// The controller keeps eligible leader replicas by it, and partition leaders hold their
    /// high watermark by it.
    pub fn min_insync_replicas(&self, topic: &str) -> usize {
        let setting = |resource_type: i8, name: &str| {
            self.configs(resource_type, name)
                .and_then(|configs| configs.get("min.insync.replicas"))
                .and_then(|value| value.parse::<usize>().ok())
        };
        setting(2, topic)
            .or_else(|| setting(4, ""))
            .unwrap_or(1)
            .max(1)
    }

    /// A partition's eligible leader replicas: out of its ISR, yet holding every committed
    /// record (see [`MetadataRecord::PartitionElr`]).
    pub fn elr(&self, topic_id: Uuid, partition: i32) -> &[BrokerId] {
        self.elr
            .get(&(topic_id, partition))
            .map_or(&[], |elr| elr.as_slice())
    }

    /// The latest producer id block of `broker_id`: the request it answered and its first id.
    pub fn producer_id_block(&self, broker_id: BrokerId) -> Option<(u64, i64)> {
        self.producer_id_blocks.get(&broker_id).copied()
    }

    /// Applies the record at log `index`.
    ///
    /// # Errors
    /// [`ApplyError`] when the record does not fit the image; the image is then unchanged
    /// (but for `last_applied_index`, which moves either way).
    ///
    /// # Panics
    /// When `index` does not increase: records are applied once, in log order.
    pub fn apply(&mut self, index: u64, record: &MetadataRecord) -> Result<(), ApplyError> {
        self.apply_entry(index, std::slice::from_ref(record))
    }

    /// Applies the records of the log entry at `index`, in order (a change's records, which
    /// commit together). Each is applied even when one before it fails; the first failure
    /// is returned.
    ///
    /// # Errors
    /// As [`MetadataImage::apply`].
    ///
    /// # Panics
    /// When `index` is not above the last applied one.
    pub fn apply_entry(
        &mut self,
        index: u64,
        records: &[MetadataRecord],
    ) -> Result<(), ApplyError> {
        assert!(
            index > self.last_applied_index,
            "metadata record {index} applied after {}",
            self.last_applied_index
        );
        self.last_applied_index = index;
        let mut first_error = None;
        for record in records {
            if let Err(error) = self.apply_record(index, record) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn apply_record(&mut self, index: u64, record: &MetadataRecord) -> Result<(), ApplyError> {
        match record {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                host,
                port,
                rack,
            } => {
                self.brokers.insert(
                    *broker_id,
                    BrokerRegistration {
                        broker_id: *broker_id,
                        broker_epoch: index as i64,
                        incarnation_id: *incarnation_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                        fenced: true,
                        in_controlled_shutdown: false,
                    },
                );
            }
            MetadataRecord::BrokerRegistrationChange {
                broker_id,
                broker_epoch,
                fenced,
                in_controlled_shutdown,
            } => {
                let broker = self
                    .brokers
                    .get_mut(broker_id)
                    .ok_or_else(|| ApplyError::Unknown(format!("broker {broker_id}")))?;
                if broker.broker_epoch != *broker_epoch {
                    return Err(ApplyError::StaleBrokerEpoch {
                        broker_id: *broker_id,
                        found: *broker_epoch,
                        current: broker.broker_epoch,
                    });
                }
                if let Some(fenced) = fenced {
                    broker.fenced = *fenced;
                }
                if let Some(shutdown) = in_controlled_shutdown {
                    broker.in_controlled_shutdown = *shutdown;
                }
            }
            MetadataRecord::Topic { name, topic_id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(topic_id) {
                    return Err(ApplyError::Invalid(format!("topic {name} exists")));
                }
                self.topic_ids.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        partitions: BTreeMap::new(),
                    },
                );
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                let topic = self
                    .topics
                    .remove(topic_id)
                    .ok_or_else(|| ApplyError::Unknown(format!("topic {topic_id}")))?;
                self.topic_ids.remove(&topic.name);
                self.configs.remove(&(2, topic.name));
                self.elr.retain(|(topic, _), _| topic != topic_id);
            }
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
            } => {
                let state = PartitionState {
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: *partition_epoch,
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    adding_replicas: Vec::new(),
                    removing_replicas: Vec::new(),
                };
                check_partition(&state)?;
                self.topics
                    .get_mut(topic_id)
                    .ok_or_else(|| ApplyError::Unknown(format!("topic {topic_id}")))?
                    .partitions
                    .insert(*partition, state);
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                isr,
                leader,
                replicas,
            } => {
                let current = self.partition(*topic_id, *partition).ok_or_else(|| {
                    ApplyError::Unknown(format!("partition {topic_id}-{partition}"))
                })?;
                let mut next = current.clone();
                if let Some(isr) = isr {
                    next.isr = isr.clone();
                }
                if let Some(replicas) = replicas {
                    next.replicas = replicas.clone();
                }
                if let Some(leader) = leader {
                    if *leader != current.leader {
                        next.leader = *leader;
                        next.leader_epoch += 1;
                    }
                }
                next.partition_epoch += 1;
                check_partition(&next)?;
                if replicas.is_some() {
                    // A replica moved away deletes its copy: added back later, it starts empty.
                    let key = (*topic_id, *partition);
                    if let Some(elr) = self.elr.get_mut(&key) {
                        elr.retain(|broker| next.replicas.contains(broker));
                        if elr.is_empty() {
                            self.elr.remove(&key);
                        }
                    }
                }
                self.topics
                    .get_mut(topic_id)
                    .expect("found above")
                    .partitions
                    .insert(*partition, next);
            }
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                adding,
                removing,
            } => {
                let current = self.partition(*topic_id, *partition).ok_or_else(|| {
                    ApplyError::Unknown(format!("partition {topic_id}-{partition}"))
                })?;
                let mut next = current.clone();
                next.adding_replicas = adding.clone();
                next.removing_replicas = removing.clone();
                check_partition(&next)?;
                self.topics
                    .get_mut(topic_id)
                    .expect("found above")
                    .partitions
                    .insert(*partition, next);
            }
            MetadataRecord::PartitionElr {
                topic_id,
                partition,
                elr,
            } => {
                if self.partition(*topic_id, *partition).is_none() {
                    return Err(ApplyError::Unknown(format!(
                        "partition {topic_id}-{partition}"
                    )));
                }
                if elr.is_empty() {
                    self.elr.remove(&(*topic_id, *partition));
                } else {
                    self.elr.insert((*topic_id, *partition), elr.clone());
                }
            }
            MetadataRecord::AllocateProducerIds {
                broker_id,
                request_id,
            } => {
                let start = self.next_producer_id;
                self.next_producer_id = start
                    .checked_add(PRODUCER_ID_BLOCK_SIZE)
                    .ok_or_else(|| ApplyError::Invalid("producer ids exhausted".into()))?;
                self.producer_id_blocks
                    .insert(*broker_id, (*request_id, start));
            }
            MetadataRecord::ProducerIds {
                next_producer_id,
                blocks,
            } => {
                self.next_producer_id = self.next_producer_id.max(*next_producer_id);
                for &(broker_id, request_id, start) in blocks {
                    self.producer_id_blocks
                        .insert(broker_id, (request_id, start));
                }
            }
            MetadataRecord::ClientQuota {
                user,
                client_id,
                key,
                value,
            } => {
                let entity = (user.clone(), client_id.clone());
                let values = self.client_quotas.entry(entity.clone()).or_default();
                match value {
                    Some(value) => {
                        values.insert(key.clone(), value.clone());
                    }
                    None => {
                        values.remove(key);
                    }
                }
                if values.is_empty() {
                    self.client_quotas.remove(&entity);
                }
            }
            MetadataRecord::Config {
                resource_type,
                resource_name,
                key,
                value,
            } => {
                let configs = self
                    .configs
                    .entry((*resource_type, resource_name.clone()))
                    .or_default();
                match value {
                    Some(value) => {
                        configs.insert(key.clone(), value.clone());
                    }
                    None => {
                        configs.remove(key);
                    }
                }
                if configs.is_empty() {
                    self.configs
                        .remove(&(*resource_type, resource_name.clone()));
                }
                if key == "min.insync.replicas" {
                    // Under a lower setting, records may be committed without the eligible
                    // leader replicas: they are no longer known to hold every one (KIP-966
                    // clears them too).
                    match (*resource_type, self.topic_ids.get(resource_name)) {
                        (2, Some(&topic_id)) => self.elr.retain(|(topic, _), _| *topic != topic_id),
                        (2, None) => {}
                        _ => self.elr.clear(),
                    }
                }
            }
        }
        Ok(())
    }

    /// The image written down, for a snapshot: its brokers as registrations (a broker's epoch
    /// is the log index of its registration record, which a replayed record would not keep)
    /// and everything else as records that rebuild it; see [`MetadataImage::from_snapshot`].
    pub fn to_snapshot(&self) -> MetadataSnapshot {
        let mut records = Vec::new();
        for (topic_id, topic) in &self.topics {
            records.push(MetadataRecord::Topic {
                name: topic.name.clone(),
                topic_id: *topic_id,
            });
            for (partition, state) in &topic.partitions {
                records.push(MetadataRecord::Partition {
                    topic_id: *topic_id,
                    partition: *partition,
                    replicas: state.replicas.clone(),
                    isr: state.isr.clone(),
                    leader: state.leader,
                    leader_epoch: state.leader_epoch,
                    partition_epoch: state.partition_epoch,
                });
                if !state.adding_replicas.is_empty() || !state.removing_replicas.is_empty() {
                    records.push(MetadataRecord::PartitionReassignment {
                        topic_id: *topic_id,
                        partition: *partition,
                        adding: state.adding_replicas.clone(),
                        removing: state.removing_replicas.clone(),
                    });
                }
            }
        }
        for ((resource_type, resource_name), configs) in &self.configs {
            for (key, value) in configs {
                records.push(MetadataRecord::Config {
                    resource_type: *resource_type,
                    resource_name: resource_name.clone(),
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for ((user, client_id), values) in &self.client_quotas {
            for (key, value) in values {
                records.push(MetadataRecord::ClientQuota {
                    user: user.clone(),
                    client_id: client_id.clone(),
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for (&(topic_id, partition), elr) in &self.elr {
            records.push(MetadataRecord::PartitionElr {
                topic_id,
                partition,
                elr: elr.clone(),
            });
        }
        if self.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIds {
                next_producer_id: self.next_producer_id,
                blocks: self
                    .producer_id_blocks
                    .iter()
                    .map(|(&broker_id, &(request_id, start))| (broker_id, request_id, start))
                    .collect(),
            });
        }
        MetadataSnapshot {
            last_applied_index: self.last_applied_index,
            brokers: self.brokers.values().cloned().collect(),
            records,
        }
    }

    /// The image a snapshot holds.
    ///
    /// # Errors
    /// [`ApplyError`] when the snapshot's records do not rebuild an image.
    pub fn from_snapshot(snapshot: &MetadataSnapshot) -> Result<MetadataImage, ApplyError> {
        let mut image = MetadataImage::new();
        for (position, record) in snapshot.records.iter().enumerate() {
            image.apply(position as u64 + 1, record)?;
        }
        image.brokers = snapshot
            .brokers
            .iter()
            .map(|broker| (broker.broker_id, broker.clone()))
            .collect();
        image.last_applied_index = snapshot.last_applied_index;
        Ok(image)
    }
}

/// An image written down: its brokers (with their epochs) and the records of everything else.
/// Stored (in the quorum's snapshot file, and sent to lagging members) as versioned JSON, as
/// the records are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetadataSnapshot {
    /// The log index the image is at.
    pub last_applied_index: u64,
    /// Registered brokers.
    pub brokers: Vec<BrokerRegistration>,
    /// Topics, partitions and configs, as records.
    pub records: Vec<MetadataRecord>,
}

impl MetadataSnapshot {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Reads a snapshot.
    ///
    /// # Errors
    /// [`RecordError`] for bytes that are not a snapshot of a known version.
    pub fn decode(bytes: &[u8]) -> Result<MetadataSnapshot, RecordError> {
        decode_versioned(bytes)
    }
}

fn check_partition(state: &PartitionState) -> Result<(), ApplyError> {
    let invalid = |what: String| Err(ApplyError::Invalid(what));
    if state.replicas.is_empty() {
        return invalid(format!("no replicas: {state:?}"));
    }
    if state.isr.is_empty() || state.isr.iter().any(|isr| !state.replicas.contains(isr)) {
        return invalid(format!("ISR outside the replicas: {state:?}"));
    }
    if state.leader != -1 && !state.isr.contains(&state.leader) {
        return invalid(format!("leader outside the ISR: {state:?}"));
    }
    let mut sorted = state.replicas.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != state.replicas.len() {
        return invalid(format!("a replica twice: {state:?}"));
    }
    let moving = state.adding_replicas.iter().chain(&state.removing_replicas);
    if moving
        .clone()
        .any(|replica| !state.replicas.contains(replica))
        || state
            .adding_replicas
            .iter()
            .any(|replica| state.removing_replicas.contains(replica))
    {
        return invalid(format!("a reassignment outside the replicas: {state:?}"));
    }
    Ok(())
}
