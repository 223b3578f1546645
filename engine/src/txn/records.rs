//! The records of `__transaction_state`: one per transactional id, the key its id and the
//! value its [`TxnMetadata`] (a tombstone when the id expired), in Kafka's
//! `TransactionLogKey` layout and `TransactionLogValue` layouts: version 0, and the flexible
//! version 1 (compact strings and arrays, tagged fields) whose tagged fields hold transaction
//! version 2's previous and next producer ids and the client's transaction version. As Kafka,
//! version 1 is written only when one of those differs from its default.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{TxnMetadata, TxnState};

/// Why a record of `__transaction_state` does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable __transaction_state record: {0}")]
pub struct TxnRecordError(pub String);

/// One record of `__transaction_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// The transactional id (the record's key).
    pub transactional_id: String,
    /// Its state, or `None` for a tombstone.
    pub metadata: Option<TxnMetadata>,
}

fn put_string(bytes: &mut BytesMut, text: &str) {
    let length = i16::try_from(text.len()).expect("strings of __transaction_state fit i16");
    bytes.put_i16(length);
    bytes.put_slice(text.as_bytes());
}

fn get_string(bytes: &mut &[u8]) -> Result<String, TxnRecordError> {
    let length = get_i16(bytes)?;
    let length =
        usize::try_from(length).map_err(|_| TxnRecordError(format!("string length {length}")))?;
    if bytes.remaining() < length {
        return Err(TxnRecordError("truncated string".into()));
    }
    let text = std::str::from_utf8(&bytes[..length])
        .map_err(|_| TxnRecordError("a string that is not UTF-8".into()))?
        .to_owned();
    bytes.advance(length);
    Ok(text)
}

/// Tagged fields of `TransactionLogValue` version 1.
const TAG_PREVIOUS_PRODUCER_ID: u64 = 0;
const TAG_NEXT_PRODUCER_ID: u64 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u64 = 2;

fn put_varint(bytes: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        bytes.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    bytes.put_u8(value as u8);
}

/// A compact length: the length plus one, as an unsigned varint.
fn put_length(bytes: &mut BytesMut, length: usize) {
    put_varint(bytes, length as u64 + 1);
}

fn get_varint(bytes: &mut &[u8]) -> Result<u64, TxnRecordError> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let byte = get_u8(bytes)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TxnRecordError("a varint longer than 10 bytes".into()))
}

/// A compact length (`None` for a null array), bounded by the bytes left so that a garbled
/// length cannot ask for a huge allocation.
fn get_length(bytes: &mut &[u8]) -> Result<Option<usize>, TxnRecordError> {
    let encoded = get_varint(bytes)?;
    let Some(length) = encoded.checked_sub(1) else {
        return Ok(None);
    };
    match usize::try_from(length) {
        Ok(length) if length <= bytes.remaining() => Ok(Some(length)),
        _ => Err(TxnRecordError(format!(
            "length {length} past the record's end"
        ))),
    }
}

fn get_compact_string(bytes: &mut &[u8]) -> Result<String, TxnRecordError> {
    let length = get_length(bytes)?.ok_or_else(|| TxnRecordError("a null topic".into()))?;
    let text = std::str::from_utf8(&bytes[..length])
        .map_err(|_| TxnRecordError("a string that is not UTF-8".into()))?
        .to_owned();
    bytes.advance(length);
    Ok(text)
}

/// Skips `count` tagged fields, keeping the ones of `TransactionLogValue` in `known`.
fn get_tagged(
    bytes: &mut &[u8],
    mut known: impl FnMut(u64, &[u8]) -> Result<(), TxnRecordError>,
) -> Result<(), TxnRecordError> {
    let count = get_varint(bytes)?;
    for _ in 0..count {
        let tag = get_varint(bytes)?;
        let size = get_varint(bytes)?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= bytes.remaining())
            .ok_or_else(|| TxnRecordError(format!("tagged field of {size} bytes")))?;
        known(tag, &bytes[..size])?;
        bytes.advance(size);
    }
    Ok(())
}

macro_rules! getter {
    ($name:ident, $type:ty, $get:ident) => {
        fn $name(bytes: &mut &[u8]) -> Result<$type, TxnRecordError> {
            if bytes.remaining() < std::mem::size_of::<$type>() {
                return Err(TxnRecordError("truncated".into()));
            }
            Ok(bytes.$get())
        }
    };
}
getter!(get_u8, u8, get_u8);
getter!(get_i8, i8, get_i8);
getter!(get_i16, i16, get_i16);
getter!(get_i32, i32, get_i32);
getter!(get_i64, i64, get_i64);

impl TxnRecord {
    /// The record's key bytes.
    pub fn encode_key(&self) -> Bytes {
        let mut bytes = BytesMut::with_capacity(4 + self.transactional_id.len());
        bytes.put_i16(0);
        put_string(&mut bytes, &self.transactional_id);
        bytes.freeze()
    }

    /// The record's value bytes, `None` for a tombstone.
    pub fn encode_value(&self) -> Option<Bytes> {
        let metadata = self.metadata.as_ref()?;
        let flexible = metadata.previous_producer_id != -1
            || metadata.next_producer_id != -1
            || metadata.client_transaction_version != 0;
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, partition) in &metadata.partitions {
            match topics.last_mut() {
                Some((last, partitions)) if last == topic => partitions.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        let mut bytes = BytesMut::with_capacity(64);
        bytes.put_i16(i16::from(flexible));
        bytes.put_i64(metadata.producer_id);
        bytes.put_i16(metadata.producer_epoch);
        bytes.put_i32(metadata.timeout_ms);
        bytes.put_i8(metadata.state.code());
        if flexible {
            put_length(&mut bytes, topics.len());
            for (topic, partitions) in topics {
                put_length(&mut bytes, topic.len());
                bytes.put_slice(topic.as_bytes());
                put_length(&mut bytes, partitions.len());
                for partition in partitions {
                    bytes.put_i32(partition);
                }
                put_varint(&mut bytes, 0); // no tagged fields
            }
        } else {
            bytes.put_i32(i32::try_from(topics.len()).expect("topics fit i32"));
            for (topic, partitions) in topics {
                put_string(&mut bytes, topic);
                bytes.put_i32(i32::try_from(partitions.len()).expect("partitions fit i32"));
                for partition in partitions {
                    bytes.put_i32(partition);
                }
            }
        }
        bytes.put_i64(metadata.last_update_ms);
        bytes.put_i64(metadata.start_ms);
        if flexible {
            let mut tagged: Vec<(u64, Vec<u8>)> = Vec::new();
            if metadata.previous_producer_id != -1 {
                tagged.push((
                    TAG_PREVIOUS_PRODUCER_ID,
                    metadata.previous_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if metadata.next_producer_id != -1 {
                tagged.push((
                    TAG_NEXT_PRODUCER_ID,
                    metadata.next_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if metadata.client_transaction_version != 0 {
                tagged.push((
                    TAG_CLIENT_TRANSACTION_VERSION,
                    metadata.client_transaction_version.to_be_bytes().to_vec(),
                ));
            }
            put_varint(&mut bytes, tagged.len() as u64);
            for (tag, data) in tagged {
                put_varint(&mut bytes, tag);
                put_varint(&mut bytes, data.len() as u64);
                bytes.put_slice(&data);
            }
        }
        Some(bytes.freeze())
    }

    /// Decodes a record from its key and value.
    ///
    /// # Errors
    /// [`TxnRecordError`] for an unknown version or bytes that do not fit the layout.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<TxnRecord, TxnRecordError> {
        let mut key = key;
        let version = get_i16(&mut key)?;
        if version != 0 {
            return Err(TxnRecordError(format!("key version {version}")));
        }
        let transactional_id = get_string(&mut key)?;
        let Some(mut value) = value else {
            return Ok(TxnRecord {
                transactional_id,
                metadata: None,
            });
        };
        let version = get_i16(&mut value)?;
        if !(0..=1).contains(&version) {
            return Err(TxnRecordError(format!("value version {version}")));
        }
        let flexible = version == 1;
        let producer_id = get_i64(&mut value)?;
        let producer_epoch = get_i16(&mut value)?;
        let timeout_ms = get_i32(&mut value)?;
        let code = get_i8(&mut value)?;
        let state = TxnState::from_code(code)
            .ok_or_else(|| TxnRecordError(format!("transaction state {code}")))?;
        let mut metadata = TxnMetadata::new(
            transactional_id.clone(),
            producer_id,
            producer_epoch,
            timeout_ms,
            state,
        );
        if flexible {
            let topics = get_length(&mut value)?.unwrap_or(0);
            for _ in 0..topics {
                let topic = get_compact_string(&mut value)?;
                let count = get_length(&mut value)?.unwrap_or(0);
                for _ in 0..count {
                    metadata
                        .partitions
                        .insert((topic.clone(), get_i32(&mut value)?));
                }
                get_tagged(&mut value, |_, _| Ok(()))?;
            }
        } else {
            let topics = get_i32(&mut value)?;
            for _ in 0..topics.max(0) {
                let topic = get_string(&mut value)?;
                let count = get_i32(&mut value)?;
                for _ in 0..count.max(0) {
                    metadata
                        .partitions
                        .insert((topic.clone(), get_i32(&mut value)?));
                }
            }
        }
        metadata.last_update_ms = get_i64(&mut value)?;
        metadata.start_ms = get_i64(&mut value)?;
        if flexible {
            get_tagged(&mut value, |tag, mut data| {
                match tag {
                    TAG_PREVIOUS_PRODUCER_ID => metadata.previous_producer_id = get_i64(&mut data)?,
                    TAG_NEXT_PRODUCER_ID => metadata.next_producer_id = get_i64(&mut data)?,
                    TAG_CLIENT_TRANSACTION_VERSION => {
                        metadata.client_transaction_version = get_i16(&mut data)?;
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
        Ok(TxnRecord {
            transactional_id,
            metadata: Some(metadata),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn records_round_trip_in_kafkas_layout() {
        let mut metadata =
            TxnMetadata::new("orders-app".into(), 4_000, 3, 60_000, TxnState::Ongoing);
        metadata.partitions = BTreeSet::from([
            ("a".to_owned(), 0),
            ("a".to_owned(), 2),
            ("b".to_owned(), 1),
        ]);
        metadata.start_ms = 10;
        metadata.last_update_ms = 20;
        let record = TxnRecord {
            transactional_id: "orders-app".into(),
            metadata: Some(metadata),
        };
        let key = record.encode_key();
        assert_eq!(&key[..], b"\x00\x00\x00\x0aorders-app");
        let value = record.encode_value().unwrap();
        // Version, producer id, epoch, timeout, state 1 (Ongoing), two topics.
        assert_eq!(
            &value[..17],
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x0f\xa0\x00\x03\x00\x00\xea\x60\x01"
        );
        assert_eq!(TxnRecord::decode(&key, Some(&value)), Ok(record.clone()));
        let tombstone = TxnRecord {
            metadata: None,
            ..record
        };
        assert_eq!(tombstone.encode_value(), None);
        assert_eq!(TxnRecord::decode(&key, None), Ok(tombstone));
        for cut in 0..value.len() {
            assert!(
                TxnRecord::decode(&key, Some(&value[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        assert!(TxnRecord::decode(b"\x00\x01\x00\x00", None).is_err());
    }

    #[test]
    fn transaction_version_2_fields_use_the_flexible_version_1() {
        let mut metadata = TxnMetadata::new(
            "orders-app".into(),
            4_000,
            32_767,
            60_000,
            TxnState::PrepareCommit,
        );
        metadata.partitions = BTreeSet::from([("a".to_owned(), 0), ("a".to_owned(), 2)]);
        metadata.start_ms = 10;
        metadata.last_update_ms = 20;
        metadata.next_producer_id = 5_000;
        metadata.client_transaction_version = 2;
        let record = TxnRecord {
            transactional_id: "orders-app".into(),
            metadata: Some(metadata.clone()),
        };
        let key = record.encode_key();
        let value = record.encode_value().unwrap();
        let mut expected = vec![0, 1]; // version 1
        expected.extend(4_000_i64.to_be_bytes());
        expected.extend(32_767_i16.to_be_bytes());
        expected.extend(60_000_i32.to_be_bytes());
        expected.push(2); // PrepareCommit
        expected.extend([2, 2, b'a', 3, 0, 0, 0, 0, 0, 0, 0, 2, 0]); // one topic, two partitions
        expected.extend(20_i64.to_be_bytes());
        expected.extend(10_i64.to_be_bytes());
        expected.extend([2, 1, 8]); // two tagged fields: NextProducerId,
        expected.extend(5_000_i64.to_be_bytes());
        expected.extend([2, 2, 0, 2]); // ClientTransactionVersion 2
        assert_eq!(&value[..], &expected[..]);
        assert_eq!(TxnRecord::decode(&key, Some(&value)), Ok(record));
        for cut in 0..value.len() {
            assert!(
                TxnRecord::decode(&key, Some(&value[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        // Unknown tagged fields are skipped, as a reader of a newer version must.
        let mut with_unknown = value[..value.len() - 15].to_vec();
        with_unknown.extend([3, 1, 8]);
        with_unknown.extend(5_000_i64.to_be_bytes());
        with_unknown.extend([2, 2, 0, 2, 9, 1, 7]);
        assert_eq!(
            TxnRecord::decode(&key, Some(&with_unknown))
                .unwrap()
                .metadata
                .unwrap(),
            metadata
        );
        // At their defaults the fields of version 1 leave the record at version 0.
        metadata.next_producer_id = -1;
        metadata.client_transaction_version = 0;
        let record = TxnRecord {
            transactional_id: "orders-app".into(),
            metadata: Some(metadata),
        };
        assert_eq!(&record.encode_value().unwrap()[..2], &[0, 0]);
    }
}
