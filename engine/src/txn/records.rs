//! The records of `__transaction_state`: one per transactional id, the key its id and the
//! value its [`TxnMetadata`] (a tombstone when the id expired), in Kafka's
//! `TransactionLogKey` and `TransactionLogValue` version 0 layouts.

use std::collections::BTreeSet;

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
        let mut bytes = BytesMut::with_capacity(64);
        bytes.put_i16(0);
        bytes.put_i64(metadata.producer_id);
        bytes.put_i16(metadata.producer_epoch);
        bytes.put_i32(metadata.timeout_ms);
        bytes.put_i8(metadata.state.code());
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, partition) in &metadata.partitions {
            match topics.last_mut() {
                Some((last, partitions)) if last == topic => partitions.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        bytes.put_i32(i32::try_from(topics.len()).expect("topics fit i32"));
        for (topic, partitions) in topics {
            put_string(&mut bytes, topic);
            bytes.put_i32(i32::try_from(partitions.len()).expect("partitions fit i32"));
            for partition in partitions {
                bytes.put_i32(partition);
            }
        }
        bytes.put_i64(metadata.last_update_ms);
        bytes.put_i64(metadata.start_ms);
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
        if version != 0 {
            return Err(TxnRecordError(format!("value version {version}")));
        }
        let producer_id = get_i64(&mut value)?;
        let producer_epoch = get_i16(&mut value)?;
        let timeout_ms = get_i32(&mut value)?;
        let code = get_i8(&mut value)?;
        let state = TxnState::from_code(code)
            .ok_or_else(|| TxnRecordError(format!("transaction state {code}")))?;
        let mut partitions = BTreeSet::new();
        let topics = get_i32(&mut value)?;
        for _ in 0..topics.max(0) {
            let topic = get_string(&mut value)?;
            let count = get_i32(&mut value)?;
            for _ in 0..count.max(0) {
                partitions.insert((topic.clone(), get_i32(&mut value)?));
            }
        }
        let last_update_ms = get_i64(&mut value)?;
        let start_ms = get_i64(&mut value)?;
        Ok(TxnRecord {
            transactional_id: transactional_id.clone(),
            metadata: Some(TxnMetadata {
                transactional_id,
                producer_id,
                producer_epoch,
                timeout_ms,
                state,
                partitions,
                start_ms,
                last_update_ms,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_kafkas_layout() {
        let metadata = TxnMetadata {
            transactional_id: "orders-app".into(),
            producer_id: 4_000,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: BTreeSet::from([
                ("a".to_owned(), 0),
                ("a".to_owned(), 2),
                ("b".to_owned(), 1),
            ]),
            start_ms: 10,
            last_update_ms: 20,
        };
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
}
