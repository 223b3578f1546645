//! The records of the metadata log: what the quorum replicates and every broker applies to its
//! [`super::image::MetadataImage`].
//!
//! Kafka's KRaft records (KIP-631) are not in the `kafka-protocol` crate, and no Kafka tool
//! reads Spate's metadata log, so they are Spate's own: JSON through serde, the records of one
//! change in one raft entry (so that they commit together, as Kafka's atomic batches), with a
//! format version so that a later Spate can read an older log. JSON keeps the log readable
//! with `jq`; metadata changes are rare and small, so its size does not matter.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::replication::BrokerId;

/// The format version written in every record.
pub const METADATA_RECORD_VERSION: u16 = 0;

/// One change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// A broker joined (or rejoined, with a new incarnation). Its broker epoch is the log index
    /// of this record; it starts fenced, until its heartbeats show it caught up.
    RegisterBroker {
        /// `node.id`.
        broker_id: BrokerId,
        /// Random per process start: tells a restart from a duplicate registration.
        incarnation_id: Uuid,
        /// Where clients reach it.
        host: String,
        /// Its Kafka port.
        port: i32,
        /// `broker.rack`.
        rack: Option<String>,
    },
    /// A broker's registration changed: fenced (silent too long) or unfenced, entering or
    /// leaving controlled shutdown.
    BrokerRegistrationChange {
        /// `node.id`.
        broker_id: BrokerId,
        /// The registration this applies to; older epochs are ignored.
        broker_epoch: i64,
        /// New fenced state, if it changed.
        fenced: Option<bool>,
        /// New controlled-shutdown state, if it changed.
        in_controlled_shutdown: Option<bool>,
    },
    /// A topic was created.
    Topic {
        /// Its name.
        name: String,
        /// Its id.
        topic_id: Uuid,
    },
    /// A topic was deleted, with its partitions.
    RemoveTopic {
        /// Its id.
        topic_id: Uuid,
    },
    /// A partition was created, or its state replaced whole (snapshots).
    Partition {
        /// Its topic.
        topic_id: Uuid,
        /// Its index.
        partition: i32,
        /// Assigned replicas, preferred leader first.
        replicas: Vec<BrokerId>,
        /// In-sync replicas.
        isr: Vec<BrokerId>,
        /// Leader, or -1.
        leader: BrokerId,
        /// Leader epoch.
        leader_epoch: i32,
        /// Partition epoch.
        partition_epoch: i32,
    },
    /// Part of a partition's state changed. A new leader bumps the leader epoch; any change
    /// bumps the partition epoch.
    PartitionChange {
        /// Its topic.
        topic_id: Uuid,
        /// Its index.
        partition: i32,
        /// New ISR.
        isr: Option<Vec<BrokerId>>,
        /// New leader (-1 for none).
        leader: Option<BrokerId>,
        /// New replica assignment.
        replicas: Option<Vec<BrokerId>>,
    },
    /// A partition's reassignment (KIP-455) began, changed, or ended (both lists empty): the
    /// replicas being added and removed. The replica set itself changes by
    /// [`MetadataRecord::PartitionChange`]; this changes no epoch.
    PartitionReassignment {
        /// Its topic.
        topic_id: Uuid,
        /// Its index.
        partition: i32,
        /// Replicas being added (already among the replicas).
        adding: Vec<BrokerId>,
        /// Replicas to remove once the target replicas are all in sync.
        removing: Vec<BrokerId>,
    },
    /// A dynamic config was set (`Some`) or removed (`None`).
    Config {
        /// Kafka's resource type: 2 topic, 4 broker.
        resource_type: i8,
        /// The topic name or broker id ("" for the cluster default).
        resource_name: String,
        /// The config key.
        key: String,
        /// The value.
        value: Option<String>,
    },
    /// A client quota value was set (`Some`) or removed (`None`), as Kafka's
    /// `ClientQuotaRecord`. An entity names a user, a client id or both; a name is as the
    /// catalog stores it (`<default>` for the default entity).
    ClientQuota {
        /// The user, if the entity names one.
        user: Option<String>,
        /// The client id, if the entity names one.
        client_id: Option<String>,
        /// `producer_byte_rate`, `consumer_byte_rate` or `request_percentage`.
        key: String,
        /// The value, as decimal text (the broker that asked checked it).
        value: Option<String>,
    },
    /// A partition's eligible leader replicas (KIP-966's ELR) were replaced: replicas out of
    /// the ISR that still hold every committed record, since they left an ISR already below
    /// `min.insync.replicas` (so nothing was committed without them). When no in-sync replica
    /// can lead, a leader is elected from them.
    PartitionElr {
        /// Its topic.
        topic_id: Uuid,
        /// Its index.
        partition: i32,
        /// The eligible leader replicas (empty: none).
        elr: Vec<BrokerId>,
    },
    /// A broker asked for producer ids (Kafka's `ProducerIdsRecord`): applying the record
    /// gives it the next [`PRODUCER_ID_BLOCK_SIZE`] ids. The block is chosen when the record
    /// applies, not when it is proposed, so two allocations in flight never get the same one.
    AllocateProducerIds {
        /// The broker.
        broker_id: BrokerId,
        /// The broker's request, which it finds its block by.
        request_id: u64,
    },
    /// Producer id allocation as a snapshot writes it: the next free id and each broker's
    /// latest block.
    ProducerIds {
        /// The first id no broker has.
        next_producer_id: i64,
        /// (broker, request id, first id of its block).
        blocks: Vec<(BrokerId, u64, i64)>,
    },
}

/// Producer ids a broker gets at a time (Kafka's block size).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// How a record is stored: its format version and the record.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<R> {
    version: u16,
    record: R,
}

/// How the records of one change are stored in one log entry, so that they commit together
/// (Kafka's atomic record batches): a new controller never finds half of a change, such as
/// a topic without its partitions.
#[derive(Debug, Serialize, Deserialize)]
struct BatchEnvelope<R> {
    version: u16,
    records: R,
}

/// A metadata log entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not a record of any version this Spate knows.
    #[error("malformed metadata record: {0}")]
    Malformed(String),
    /// Written by a newer Spate.
    #[error("metadata record version {0} is newer than this broker reads")]
    UnknownVersion(u16),
}

impl MetadataRecord {
    /// The record's bytes in the metadata log.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Reads a record from the metadata log.
    ///
    /// # Errors
    /// [`RecordError`] for bytes that are not a record of a known version.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, RecordError> {
        decode_versioned(bytes)
    }

    /// The bytes of one log entry holding `records`, which commit and apply together: one
    /// record as [`MetadataRecord::encode`] writes it, several as `{"version":0,"records":[...]}`.
    pub fn encode_entry(records: &[MetadataRecord]) -> Vec<u8> {
        match records {
            [record] => record.encode(),
            _ => serde_json::to_vec(&BatchEnvelope {
                version: METADATA_RECORD_VERSION,
                records,
            })
            .expect("metadata always serializes"),
        }
    }

    /// The records of one log entry, in order.
    ///
    /// # Errors
    /// [`RecordError`] for bytes that are not an entry of a known version.
    pub fn decode_entry(bytes: &[u8]) -> Result<Vec<MetadataRecord>, RecordError> {
        let malformed = |error: serde_json::Error| RecordError::Malformed(error.to_string());
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        if value.get("records").is_none() {
            return decode_versioned(bytes).map(|record| vec![record]);
        }
        check_version(&value)?;
        serde_json::from_value::<BatchEnvelope<Vec<MetadataRecord>>>(value)
            .map(|envelope| envelope.records)
            .map_err(malformed)
    }
}

/// Refuses a format version newer than this Spate's.
fn check_version(value: &serde_json::Value) -> Result<(), RecordError> {
    let version = value
        .as_object()
        .and_then(|object| object.get("version"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| RecordError::Malformed("no format version".into()))?;
    if version > u64::from(METADATA_RECORD_VERSION) {
        return Err(RecordError::UnknownVersion(
            u16::try_from(version).unwrap_or(u16::MAX),
        ));
    }
    Ok(())
}

/// `value` as JSON in an envelope with the format version.
pub(super) fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        version: METADATA_RECORD_VERSION,
        record: value,
    })
    .expect("metadata always serializes")
}

/// Reads what [`encode_versioned`] wrote, refusing a newer format version.
pub(super) fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, RecordError> {
    let malformed = |error: serde_json::Error| RecordError::Malformed(error.to_string());
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
    check_version(&value)?;
    serde_json::from_value::<Envelope<T>>(value)
        .map(|envelope| envelope.record)
        .map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        let records = [
            MetadataRecord::RegisterBroker {
                broker_id: 2,
                incarnation_id: Uuid::from_u128(7),
                host: "127.0.0.1".into(),
                port: 9093,
                rack: None,
            },
            MetadataRecord::PartitionChange {
                topic_id: Uuid::from_u128(9),
                partition: 3,
                isr: Some(vec![1, 2]),
                leader: None,
                replicas: None,
            },
            MetadataRecord::Config {
                resource_type: 2,
                resource_name: "orders".into(),
                key: "retention.ms".into(),
                value: None,
            },
            MetadataRecord::ClientQuota {
                user: None,
                client_id: Some("<default>".into()),
                key: "producer_byte_rate".into(),
                value: Some("1048576".into()),
            },
        ];
        for record in records.clone() {
            assert_eq!(MetadataRecord::decode(&record.encode()).unwrap(), record);
        }
        // Entries: one record as ever, several in one batch.
        for entry in [&records[..1], &records[..]] {
            let bytes = MetadataRecord::encode_entry(entry);
            assert_eq!(MetadataRecord::decode_entry(&bytes).unwrap(), entry);
        }
        assert_eq!(
            MetadataRecord::decode_entry(br#"{"version":9,"records":[]}"#),
            Err(RecordError::UnknownVersion(9))
        );
        assert_eq!(
            MetadataRecord::decode(br#"{"version":9,"record":{}}"#),
            Err(RecordError::UnknownVersion(9))
        );
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"version":0,"record":{"type":"nope"}}"#,
        ] {
            assert!(
                matches!(MetadataRecord::decode(bad), Err(RecordError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
