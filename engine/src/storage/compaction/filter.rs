//! Cleaning one batch: which of its records stay, and the bytes of what stays.
//!
//! A cleaned batch keeps its base offset, last offset delta, producer fields and leader
//! epoch, as Kafka's cleaner does, so that offsets are preserved (with gaps inside the batch)
//! and producer state rebuilt from the log still sees the batch. Records that stay are copied
//! byte for byte, except when the batch gets a delete horizon (KIP-534): then the base
//! timestamp becomes the horizon and each record's timestamp delta is rewritten against it.

use super::records::{compress_section, parse_records, record_section, RecordView};
use crate::storage::batch::{
    self, write_varint, write_varlong, BatchHeader, TimestampType, NO_TIMESTAMP,
};

/// One record as the retention decision sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordFacts<'a> {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: &'a [u8],
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CleanedBatch {
    /// Every record stays and nothing changes: the stored bytes are kept as they are.
    Unchanged,
    /// Some records stay: the new bytes of the batch.
    Rewritten(Vec<u8>),
    /// No record stays.
    Emptied,
}

/// How tombstones are treated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TombstonePolicy {
    /// The cleaner's time.
    pub now_ms: i64,
    /// `delete.retention.ms`: how long a tombstone stays after it was first cleaned.
    pub delete_retention_ms: i64,
}

/// Cleans one whole, CRC-checked, non-control batch. `retain` decides for each record with a
/// key whether it is the latest of its key (records without a key never stay, as in Kafka);
/// tombstones whose batch's delete horizon has passed go too.
///
/// # Errors
/// A sentence when the records do not decompress or parse.
pub(crate) fn clean_batch(
    batch: &[u8],
    tombstones: TombstonePolicy,
    mut retain: impl FnMut(RecordFacts<'_>) -> bool,
) -> Result<CleanedBatch, String> {
    let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
    debug_assert!(!header.is_control(), "control batches are kept whole");
    let section = record_section(batch, &header)?;
    let records = parse_records(&section, header.records_count)?;
    let horizon = header.delete_horizon_ms();
    let tombstones_expired = horizon.is_some_and(|horizon| tombstones.now_ms >= horizon);
    let kept: Vec<&RecordView> = records
        .iter()
        .filter(|record| {
            let Some((start, end)) = record.key else {
                return false;
            };
            if record.is_tombstone && tombstones_expired {
                return false;
            }
            retain(RecordFacts {
                offset: header.base_offset + i64::from(record.offset_delta),
                key: &section[start..end],
            })
        })
        .collect();
    if kept.is_empty() {
        return Ok(CleanedBatch::Emptied);
    }
    let set_horizon = horizon.is_none() && kept.iter().any(|record| record.is_tombstone);
    if kept.len() == records.len() && !set_horizon {
        return Ok(CleanedBatch::Unchanged);
    }
    let horizon = set_horizon.then(|| {
        tombstones
            .now_ms
            .saturating_add(tombstones.delete_retention_ms)
    });
    rebuild(&header, &section, &kept, horizon).map(CleanedBatch::Rewritten)
}

/// A control batch (a transaction marker) with a delete horizon: the marker goes in a pass
/// after `horizon_ms`, as a tombstone would (Kafka delays a marker's removal the same way).
///
/// # Errors
/// A sentence when the records do not parse.
pub(crate) fn with_delete_horizon(batch: &[u8], horizon_ms: i64) -> Result<Vec<u8>, String> {
    let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
    let section = record_section(batch, &header)?;
    let records = parse_records(&section, header.records_count)?;
    let all: Vec<&RecordView> = records.iter().collect();
    rebuild(&header, &section, &all, Some(horizon_ms))
}

/// The bytes of a batch holding `kept` of `header`'s records (from its decompressed record
/// `section`), with a delete horizon set when `horizon` is given: the base timestamp becomes
/// the horizon and each record's timestamp delta is rewritten against it.
fn rebuild(
    header: &BatchHeader,
    section: &[u8],
    kept: &[&RecordView],
    horizon: Option<i64>,
) -> Result<Vec<u8>, String> {
    let header = *header;
    let mut new_header = header;
    if let Some(horizon) = horizon {
        new_header = new_header.with_delete_horizon(horizon);
    }
    let mut new_section = Vec::with_capacity(section.len());
    let mut max_timestamp = NO_TIMESTAMP;
    for record in kept {
        let timestamp = header.base_timestamp.saturating_add(record.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        if new_header.base_timestamp == header.base_timestamp {
            new_section.extend_from_slice(&section[record.start..record.end]);
            continue;
        }
        let mut body = Vec::with_capacity(record.end - record.body_start + 8);
        body.push(section[record.body_start]);
        write_varlong(
            &mut body,
            timestamp.saturating_sub(new_header.base_timestamp),
        );
        body.extend_from_slice(&section[record.after_timestamp..record.end]);
        write_varint(
            &mut new_section,
            i32::try_from(body.len()).expect("a record under 2 GiB"),
        );
        new_section.extend_from_slice(&body);
    }
    new_header.records_count = i32::try_from(kept.len()).expect("fewer records than before");
    if header.timestamp_type() == TimestampType::CreateTime && header.base_timestamp != NO_TIMESTAMP
    {
        new_header.max_timestamp = max_timestamp;
    }
    let codec = header.codec().map_err(|error| error.to_string())?;
    let records_bytes = compress_section(codec, &new_section)?;
    let mut out = Vec::with_capacity(batch::BATCH_HEADER_BYTES + records_bytes.len());
    new_header.write_to(&mut out);
    out.extend_from_slice(&records_bytes);
    batch::seal(&mut out);
    Ok(out)
}

/// A batch with no records that keeps `header`'s offsets and producer fields: what stays of
/// a producer's emptied batch that its sequence state still remembers, as Kafka keeps the
/// last batches of each producer. Uncompressed, since there is nothing to compress.
pub(crate) fn header_only(header: &BatchHeader) -> Vec<u8> {
    let mut kept = *header;
    kept.records_count = 0;
    if header.delete_horizon_ms().is_some() {
        // The base timestamp held the horizon; with no record left it takes the batch's
        // largest timestamp, so that the header stays valid without the horizon bit.
        kept.base_timestamp = header.max_timestamp;
    }
    kept.attributes &= !0x07 & !0x40;
    let mut out = Vec::with_capacity(batch::BATCH_HEADER_BYTES);
    kept.write_to(&mut out);
    batch::seal(&mut out);
    out
}

/// A batch with no records and no producer that covers the offsets `[base_offset,
/// next_offset)`: what stays of a run of emptied batches, so that a segment's batches still
/// follow each other with no gap between them (each batch starts where the previous ended).
///
/// # Panics
/// If the run is empty or spans more offsets than a batch can.
pub(crate) fn filler(base_offset: i64, next_offset: i64, partition_leader_epoch: i32) -> Vec<u8> {
    let last_offset_delta =
        i32::try_from(next_offset - base_offset - 1).expect("a run fits one batch");
    assert!(
        last_offset_delta >= 0,
        "a filler covers at least one offset"
    );
    let header = BatchHeader {
        base_offset,
        batch_length: 0,
        partition_leader_epoch,
        magic: batch::MAGIC_V2,
        crc: 0,
        attributes: 0,
        last_offset_delta,
        base_timestamp: NO_TIMESTAMP,
        max_timestamp: NO_TIMESTAMP,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: 0,
    };
    let mut out = Vec::with_capacity(batch::BATCH_HEADER_BYTES);
    header.write_to(&mut out);
    batch::seal(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::build::{self, NewRecord};
    use crate::storage::batch::Codec;
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;

    fn record(key: &str, value: Option<&str>, timestamp_ms: i64) -> NewRecord {
        NewRecord {
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
            timestamp_ms,
            headers: Vec::new(),
        }
    }

    fn at(mut batch: bytes::BytesMut, base_offset: i64) -> Bytes {
        batch::set_base_offset(&mut batch, base_offset);
        batch.freeze()
    }

    const KEEP_TOMBSTONES: TombstonePolicy = TombstonePolicy {
        now_ms: 1_000,
        delete_retention_ms: 500,
    };

    #[test]
    fn keeps_offsets_and_the_chosen_records() {
        let batch = at(
            build::producer_batch(
                &[
                    record("a", Some("1"), 10),
                    record("b", Some("2"), 20),
                    record("a", Some("3"), 30),
                ],
                7,
                1,
                40,
            ),
            100,
        );
        let cleaned = clean_batch(&batch, KEEP_TOMBSTONES, |facts| facts.offset != 100).unwrap();
        let CleanedBatch::Rewritten(bytes) = cleaned else {
            panic!("{cleaned:?}")
        };
        let header = batch::validate_compacted(&bytes).unwrap().header;
        assert_eq!(
            (
                header.base_offset,
                header.last_offset_delta,
                header.records_count
            ),
            (100, 2, 2)
        );
        assert_eq!((header.producer_id, header.base_sequence), (7, 40));
        assert_eq!(header.max_timestamp, 30);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).unwrap();
        let kept: Vec<_> = set
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp, r.value.clone().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [
                (101, 20, Bytes::from_static(b"2")),
                (102, 30, Bytes::from_static(b"3"))
            ]
        );
    }

    #[test]
    fn an_untouched_batch_is_kept_and_an_empty_one_reported() {
        let batch = at(build::batch(&[record("a", Some("1"), 10)]), 5);
        assert_eq!(
            clean_batch(&batch, KEEP_TOMBSTONES, |_| true).unwrap(),
            CleanedBatch::Unchanged
        );
        assert_eq!(
            clean_batch(&batch, KEEP_TOMBSTONES, |_| false).unwrap(),
            CleanedBatch::Emptied
        );
        let keyless = at(build::batch(&[NewRecord::value("v", 10)]), 5);
        assert_eq!(
            clean_batch(&keyless, KEEP_TOMBSTONES, |_| true).unwrap(),
            CleanedBatch::Emptied
        );
    }

    #[test]
    fn tombstones_get_a_horizon_then_go_once_it_passed() {
        let batch = at(
            build::batch(&[record("a", None, 10), record("b", Some("2"), 20)]),
            0,
        );
        let CleanedBatch::Rewritten(first) =
            clean_batch(&batch, KEEP_TOMBSTONES, |_| true).unwrap()
        else {
            panic!("the horizon is set")
        };
        let header = batch::validate_compacted(&first).unwrap().header;
        assert_eq!(header.delete_horizon_ms(), Some(1_500));
        let set = RecordBatchDecoder::decode(&mut Bytes::from(first.clone())).unwrap();
        let timestamps: Vec<_> = set.records.iter().map(|r| r.timestamp).collect();
        assert_eq!(timestamps, [10, 20], "timestamps survive the new base");
        let first = Bytes::from(first);
        assert_eq!(
            clean_batch(&first, KEEP_TOMBSTONES, |_| true).unwrap(),
            CleanedBatch::Unchanged,
            "before the horizon the tombstone stays"
        );
        let later = TombstonePolicy {
            now_ms: 1_500,
            ..KEEP_TOMBSTONES
        };
        let CleanedBatch::Rewritten(second) = clean_batch(&first, later, |_| true).unwrap() else {
            panic!("the tombstone goes")
        };
        let set = RecordBatchDecoder::decode(&mut Bytes::from(second)).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.records[0].offset, 1);
        assert_eq!(set.records[0].timestamp, 20);
    }

    #[test]
    fn compressed_batches_are_cleaned_and_stay_compressed() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 100 + i,
                key: Some(Bytes::from(format!("k{}", i % 2))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Default::default(),
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Zstd,
            },
        )
        .unwrap();
        let batch = out.freeze();
        let CleanedBatch::Rewritten(bytes) =
            clean_batch(&batch, KEEP_TOMBSTONES, |facts| facts.offset != 0).unwrap()
        else {
            panic!("one record goes")
        };
        let header = batch::validate_compacted(&bytes).unwrap().header;
        assert_eq!(header.codec(), Ok(Codec::Zstd));
        let set = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).unwrap();
        let offsets: Vec<_> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [1, 2]);
    }

    #[test]
    fn header_only_and_filler_batches_are_valid_compacted_batches() {
        let batch = at(
            build::producer_batch(&[record("a", Some("1"), 10)], 3, 0, 9),
            42,
        );
        let header = BatchHeader::parse(&batch).unwrap();
        let kept = batch::validate_compacted(&header_only(&header))
            .unwrap()
            .header;
        assert_eq!(
            (
                kept.base_offset,
                kept.records_count,
                kept.producer_id,
                kept.base_sequence
            ),
            (42, 0, 3, 9)
        );
        // A batch whose tombstones got a horizon, then emptied, is still a valid batch.
        let with_horizon = header.with_delete_horizon(1_000_000);
        let kept = batch::validate_compacted(&header_only(&with_horizon))
            .unwrap()
            .header;
        assert_eq!(kept.delete_horizon_ms(), None);
        assert_eq!(kept.base_timestamp, header.max_timestamp);
        let filler = batch::validate_compacted(&filler(10, 20, 4))
            .unwrap()
            .header;
        assert_eq!(
            (
                filler.base_offset,
                filler.next_offset(),
                filler.partition_leader_epoch
            ),
            (10, 20, 4)
        );
        assert!(batch::validate(&super::filler(10, 20, 4)).is_err());
    }
}
