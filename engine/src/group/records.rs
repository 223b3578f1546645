//! The records of `__consumer_offsets`, in Kafka's own formats, so that the topic reads the same
//! as a Kafka broker's (`kafka-console-consumer --formatter` and other tools understand it).
//!
//! Kafka defines these schemas in its group coordinator (`OffsetCommitKey`, `OffsetCommitValue`,
//! `GroupMetadataKey`, `GroupMetadataValue`), not in the client protocol, so the `kafka-protocol`
//! crate has no codec for them; they are small fixed layouts, written here:
//!
//! ```text
//! key   = version:i16 (1 = offset commit, 2 = group metadata) ...
//! offset commit key   v1: group:string topic:string partition:i32
//! offset commit value v3: offset:i64 leader_epoch:i32 metadata:string commit_timestamp:i64
//! group metadata key  v2: group:string
//! group metadata value v3: protocol_type:string generation:i32 protocol:nullable_string
//!     leader:nullable_string current_state_timestamp:i64 members:[member_id:string
//!     group_instance_id:nullable_string client_id:string client_host:string
//!     rebalance_timeout:i32 session_timeout:i32 subscription:bytes assignment:bytes]
//! ```
//!
//! A `None` value is a tombstone: the offset or the group is gone (compaction drops both).

use bytes::{BufMut, Bytes, BytesMut};

/// Key version of an offset commit (Kafka writes 1; 0 is the same layout).
const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Key version of group metadata.
const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value version of an offset commit written here (with leader epoch).
const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Value version of an offset commit with its own expire timestamp (Kafka writes this one
/// then, without the leader epoch).
const OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRY: i16 = 1;
/// Value version of group metadata written here (with static members).
const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// A committed offset, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will read.
    pub offset: i64,
    /// Leader epoch of the record before `offset`, or -1.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// When the coordinator accepted the commit.
    pub commit_timestamp_ms: i64,
    /// When it expires, for commits that gave a retention of their own (OffsetCommit v2-v4);
    /// `None` for the broker's rule.
    pub expire_timestamp_ms: Option<i64>,
}

/// One member as stored in group metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// `max.poll.interval.ms`.
    pub rebalance_timeout_ms: i32,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// The member's metadata for the selected protocol.
    pub subscription: Bytes,
    /// What the leader assigned it.
    pub assignment: Bytes,
}

/// A group's membership, as stored after each rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    /// Generation.
    pub generation_id: i32,
    /// The selected assignor.
    pub protocol_name: Option<String>,
    /// Leader member id.
    pub leader_id: Option<String>,
    /// When the group entered its state.
    pub state_timestamp_ms: i64,
    /// Members with their assignments.
    pub members: Vec<StoredMember>,
}

/// One record of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A committed offset, or its deletion.
    Offset {
        /// Group id.
        group_id: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// `None`: deleted.
        value: Option<CommittedOffset>,
    },
    /// A group's metadata, or its deletion.
    Group {
        /// Group id.
        group_id: String,
        /// `None`: deleted.
        value: Option<StoredGroup>,
    },
}

/// Why a record of `__consumer_offsets` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Ends early or has a bad length.
    #[error("truncated or malformed {0}")]
    Malformed(&'static str),
    /// A version this broker does not read.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// Key or value.
        what: &'static str,
        /// The version found.
        version: i16,
    },
    /// A record without a key.
    #[error("record has no key")]
    NoKey,
}

impl OffsetsRecord {
    /// The group the record belongs to.
    pub fn group_id(&self) -> &str {
        match self {
            OffsetsRecord::Offset { group_id, .. } | OffsetsRecord::Group { group_id, .. } => {
                group_id
            }
        }
    }

    /// Encodes the record's key.
    pub fn key(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group_id,
                topic,
                partition,
                ..
            } => {
                out.put_i16(OFFSET_COMMIT_KEY_VERSION);
                put_string(&mut out, group_id);
                put_string(&mut out, topic);
                out.put_i32(*partition);
            }
            OffsetsRecord::Group { group_id, .. } => {
                out.put_i16(GROUP_METADATA_KEY_VERSION);
                put_string(&mut out, group_id);
            }
        }
        out.freeze()
    }

    /// Encodes the record's value; `None` for a tombstone.
    pub fn value(&self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        match self {
            OffsetsRecord::Offset { value, .. } => {
                let value = value.as_ref()?;
                match value.expire_timestamp_ms {
                    None => {
                        out.put_i16(OFFSET_COMMIT_VALUE_VERSION);
                        out.put_i64(value.offset);
                        out.put_i32(value.leader_epoch);
                        put_string(&mut out, &value.metadata);
                        out.put_i64(value.commit_timestamp_ms);
                    }
                    Some(expire) => {
                        out.put_i16(OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRY);
                        out.put_i64(value.offset);
                        put_string(&mut out, &value.metadata);
                        out.put_i64(value.commit_timestamp_ms);
                        out.put_i64(expire);
                    }
                }
            }
            OffsetsRecord::Group { value, .. } => {
                let value = value.as_ref()?;
                out.put_i16(GROUP_METADATA_VALUE_VERSION);
                put_string(&mut out, &value.protocol_type);
                out.put_i32(value.generation_id);
                put_nullable_string(&mut out, value.protocol_name.as_deref());
                put_nullable_string(&mut out, value.leader_id.as_deref());
                out.put_i64(value.state_timestamp_ms);
                out.put_i32(value.members.len() as i32);
                for member in &value.members {
                    put_string(&mut out, &member.member_id);
                    put_nullable_string(&mut out, member.group_instance_id.as_deref());
                    put_string(&mut out, &member.client_id);
                    put_string(&mut out, &member.client_host);
                    out.put_i32(member.rebalance_timeout_ms);
                    out.put_i32(member.session_timeout_ms);
                    put_bytes(&mut out, &member.subscription);
                    put_bytes(&mut out, &member.assignment);
                }
            }
        }
        Some(out.freeze())
    }

    /// Decodes a record from its key and value.
    ///
    /// # Errors
    /// [`RecordError`] when either is malformed or of an unknown version.
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OffsetsRecord, RecordError> {
        let mut key = Reader(key.ok_or(RecordError::NoKey)?);
        match key.i16("key version")? {
            0 | 1 => {
                let group_id = key.string("group id")?;
                let topic = key.string("topic")?;
                let partition = key.i32("partition")?;
                let value = value.map(decode_offset_value).transpose()?;
                Ok(OffsetsRecord::Offset {
                    group_id,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group_id = key.string("group id")?;
                let value = value.map(decode_group_value).transpose()?;
                Ok(OffsetsRecord::Group { group_id, value })
            }
            version => Err(RecordError::UnknownVersion {
                what: "key",
                version,
            }),
        }
    }
}

fn decode_offset_value(bytes: &[u8]) -> Result<CommittedOffset, RecordError> {
    let mut value = Reader(bytes);
    let version = value.i16("offset value version")?;
    let offset = value.i64("offset")?;
    let leader_epoch = if version >= 3 {
        value.i32("leader epoch")?
    } else {
        -1
    };
    let metadata = value.string("metadata")?;
    let commit_timestamp_ms = value.i64("commit timestamp")?;
    let mut expire_timestamp_ms = None;
    match version {
        0 | 2 | 3 => {}
        1 => {
            expire_timestamp_ms = Some(value.i64("expire timestamp")?);
        }
        version => {
            return Err(RecordError::UnknownVersion {
                what: "offset value",
                version,
            })
        }
    }
    Ok(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

fn decode_group_value(bytes: &[u8]) -> Result<StoredGroup, RecordError> {
    let mut value = Reader(bytes);
    let version = value.i16("group value version")?;
    if !(0..=GROUP_METADATA_VALUE_VERSION).contains(&version) {
        return Err(RecordError::UnknownVersion {
            what: "group value",
            version,
        });
    }
    let protocol_type = value.string("protocol type")?;
    let generation_id = value.i32("generation")?;
    let protocol_name = value.nullable_string("protocol")?;
    let leader_id = value.nullable_string("leader")?;
    let state_timestamp_ms = if version >= 2 {
        value.i64("state timestamp")?
    } else {
        -1
    };
    let count = value.i32("member count")?;
    if count < 0 {
        return Err(RecordError::Malformed("member count"));
    }
    let mut members = Vec::new();
    for _ in 0..count {
        let member_id = value.string("member id")?;
        let group_instance_id = if version >= 3 {
            value.nullable_string("group instance id")?
        } else {
            None
        };
        let client_id = value.string("client id")?;
        let client_host = value.string("client host")?;
        let rebalance_timeout_ms = if version >= 1 {
            value.i32("rebalance timeout")?
        } else {
            -1
        };
        let session_timeout_ms = value.i32("session timeout")?;
        let subscription = value.bytes("subscription")?;
        let assignment = value.bytes("assignment")?;
        members.push(StoredMember {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            // v0 had no separate rebalance timeout: it was the session timeout.
            rebalance_timeout_ms: if version == 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(StoredGroup {
        protocol_type,
        generation_id,
        protocol_name,
        leader_id,
        state_timestamp_ms,
        members,
    })
}

fn put_string(out: &mut BytesMut, text: &str) {
    let length = i16::try_from(text.len()).expect("strings in group records are short");
    out.put_i16(length);
    out.put_slice(text.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

/// A bounds-checked reader over a record's bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, length: usize, what: &'static str) -> Result<&[u8], RecordError> {
        if self.0.len() < length {
            return Err(RecordError::Malformed(what));
        }
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(taken)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, RecordError> {
        Ok(i16::from_be_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn nullable_string(&mut self, what: &'static str) -> Result<Option<String>, RecordError> {
        let length = self.i16(what)?;
        if length < 0 {
            return Ok(None);
        }
        let bytes = self.take(length as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| RecordError::Malformed(what))
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        self.nullable_string(what)?
            .ok_or(RecordError::Malformed(what))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, RecordError> {
        let length = self.i32(what)?;
        if length < 0 {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(self.take(length as usize, what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: OffsetsRecord) {
        let key = record.key();
        let value = record.value();
        assert_eq!(
            OffsetsRecord::decode(Some(&key), value.as_deref()),
            Ok(record)
        );
    }

    #[test]
    fn offsets_and_groups_round_trip() {
        round_trip(OffsetsRecord::Offset {
            group_id: "billing".into(),
            topic: "orders".into(),
            partition: 7,
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: 3,
                metadata: "m".into(),
                commit_timestamp_ms: 1_700_000_000_000,
                expire_timestamp_ms: None,
            }),
        });
        round_trip(OffsetsRecord::Offset {
            group_id: "billing".into(),
            topic: "orders".into(),
            partition: 7,
            value: None,
        });
        // With its own expiry: Kafka's value version 1, which has no leader epoch.
        round_trip(OffsetsRecord::Offset {
            group_id: "billing".into(),
            topic: "orders".into(),
            partition: 7,
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 5,
                expire_timestamp_ms: Some(65),
            }),
        });
        round_trip(OffsetsRecord::Group {
            group_id: "billing".into(),
            value: Some(StoredGroup {
                protocol_type: "consumer".into(),
                generation_id: 5,
                protocol_name: Some("range".into()),
                leader_id: Some("a-1".into()),
                state_timestamp_ms: 9,
                members: vec![StoredMember {
                    member_id: "a-1".into(),
                    group_instance_id: Some("host-a".into()),
                    client_id: "a".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                }],
            }),
        });
        round_trip(OffsetsRecord::Group {
            group_id: "billing".into(),
            value: None,
        });
    }

    #[test]
    fn matches_kafkas_offset_commit_layout() {
        // Kafka 3.x writes this key and value for group "g", topic "t", partition 1, offset 5.
        let record = OffsetsRecord::Offset {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 1,
            value: Some(CommittedOffset {
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 2,
                expire_timestamp_ms: None,
            }),
        };
        assert_eq!(
            record.key().as_ref(),
            [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 1]
        );
        assert_eq!(
            record.value().unwrap().as_ref(),
            [0, 3, 0, 0, 0, 0, 0, 0, 0, 5, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let record = OffsetsRecord::Group {
            group_id: "g".into(),
            value: Some(StoredGroup {
                protocol_type: "consumer".into(),
                generation_id: 1,
                protocol_name: None,
                leader_id: None,
                state_timestamp_ms: 0,
                members: Vec::new(),
            }),
        };
        let key = record.key();
        let value = record.value().unwrap();
        for cut in 0..value.len() {
            assert!(OffsetsRecord::decode(Some(&key), Some(&value[..cut])).is_err());
        }
        for cut in 0..key.len() {
            assert!(OffsetsRecord::decode(Some(&key[..cut]), None).is_err());
        }
        assert_eq!(OffsetsRecord::decode(None, None), Err(RecordError::NoKey));
        assert!(matches!(
            OffsetsRecord::decode(Some(&[0, 9]), None),
            Err(RecordError::UnknownVersion { .. })
        ));
    }
}
