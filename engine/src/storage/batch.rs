//! Kafka v2 record batches (magic 2), read and patched in place.
//!
//! Spate stores batches exactly as producers send them. This module reads the fixed 61-byte
//! header, validates a batch (length, magic, CRC32C, dense offset deltas, timestamps) and patches
//! the fields the log owns (base offset, partition leader epoch and, for `LogAppendTime` topics,
//! the max timestamp). Records are walked, never decoded into values and never re-encoded.
//!
//! ```text
//!  offset  size  field                   CRC covers
//!       0     8  base_offset             no
//!       8     4  batch_length            no   (bytes after this field)
//!      12     4  partition_leader_epoch  no
//!      16     1  magic (= 2)             no
//!      17     4  crc (CRC32C)            no
//!      21     2  attributes              yes  (from here to the end of the batch)
//!      23     4  last_offset_delta       yes
//!      27     8  base_timestamp          yes
//!      35     8  max_timestamp           yes
//!      43     8  producer_id             yes
//!      51     2  producer_epoch          yes
//!      53     4  base_sequence           yes
//!      57     4  records_count           yes
//!      61     …  records                 yes
//! ```
//! All integers are big-endian, as on the wire.

use std::fmt;

/// Bytes in the fixed v2 batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `partition_leader_epoch`: base offset and batch length. `batch_length` counts
/// every byte after these twelve.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// The only record batch format Spate stores.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_POSITION: usize = 0;
const BATCH_LENGTH_POSITION: usize = 8;
const LEADER_EPOCH_POSITION: usize = 12;
const MAGIC_POSITION: usize = 16;
const CRC_POSITION: usize = 17;
const ATTRIBUTES_POSITION: usize = 21;
const LAST_OFFSET_DELTA_POSITION: usize = 23;
const BASE_TIMESTAMP_POSITION: usize = 27;
const MAX_TIMESTAMP_POSITION: usize = 35;
const PRODUCER_ID_POSITION: usize = 43;
const PRODUCER_EPOCH_POSITION: usize = 51;
const BASE_SEQUENCE_POSITION: usize = 53;
const RECORDS_COUNT_POSITION: usize = 57;

const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;
const ATTRIBUTE_DELETE_HORIZON: i16 = 0x40;

/// A timestamp that Kafka uses for "none".
pub const NO_TIMESTAMP: i64 = -1;

/// Why a batch was refused. Each reason maps to Kafka's `CORRUPT_MESSAGE`, `INVALID_RECORD` or
/// `UNSUPPORTED_VERSION` in the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a batch header.
    #[error("truncated batch: {available} bytes, need at least {needed}")]
    Truncated {
        /// Bytes present.
        available: usize,
        /// Bytes the header or the declared length requires.
        needed: usize,
    },
    /// `batch_length` is smaller than a header or larger than the limit.
    #[error("invalid batch length {batch_length}")]
    InvalidLength {
        /// The declared length.
        batch_length: i32,
    },
    /// Magic other than 2 (message format v0/v1 or garbage).
    #[error("unsupported record batch magic {magic} (only v2 is stored)")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// The stored CRC32C does not match the bytes.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Compression codec bits name no known codec.
    #[error("unknown compression codec {codec}")]
    UnknownCodec {
        /// The codec bits.
        codec: i16,
    },
    /// `records_count` or `last_offset_delta` are inconsistent, or offsets are not dense.
    #[error("invalid offsets: {reason}")]
    InvalidOffsets {
        /// What is wrong.
        reason: &'static str,
    },
    /// A record inside an uncompressed batch does not parse.
    #[error("malformed record {index}: {reason}")]
    MalformedRecord {
        /// Record index in the batch.
        index: i32,
        /// What is wrong.
        reason: &'static str,
    },
    /// Timestamps are inconsistent (max below base, or a negative timestamp other than -1).
    #[error("invalid timestamps: {reason}")]
    InvalidTimestamp {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Compression codec of a batch, from the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// snappy (xerial framing).
    Snappy,
    /// lz4 frame.
    Lz4,
    /// zstd.
    Zstd,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

/// How a batch's timestamps are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

/// The fixed header of a v2 batch, parsed. Cheap to copy; borrowed bytes stay where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    /// Leader epoch of the partition leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; 2 for every stored batch.
    pub magic: i8,
    /// CRC32C over attributes to the end of the batch.
    pub crc: u32,
    /// Codec, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header at the start of `bytes`, checking only that the bytes are there.
    ///
    /// # Errors
    /// [`BatchError::Truncated`] when fewer than 61 bytes are given.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                available: bytes.len(),
                needed: BATCH_HEADER_BYTES,
            });
        }
        Ok(BatchHeader {
            base_offset: read_i64(bytes, BASE_OFFSET_POSITION),
            batch_length: read_i32(bytes, BATCH_LENGTH_POSITION),
            partition_leader_epoch: read_i32(bytes, LEADER_EPOCH_POSITION),
            magic: bytes[MAGIC_POSITION] as i8,
            crc: read_u32(bytes, CRC_POSITION),
            attributes: read_i16(bytes, ATTRIBUTES_POSITION),
            last_offset_delta: read_i32(bytes, LAST_OFFSET_DELTA_POSITION),
            base_timestamp: read_i64(bytes, BASE_TIMESTAMP_POSITION),
            max_timestamp: read_i64(bytes, MAX_TIMESTAMP_POSITION),
            producer_id: read_i64(bytes, PRODUCER_ID_POSITION),
            producer_epoch: read_i16(bytes, PRODUCER_EPOCH_POSITION),
            base_sequence: read_i32(bytes, BASE_SEQUENCE_POSITION),
            records_count: read_i32(bytes, RECORDS_COUNT_POSITION),
        })
    }

    /// Total bytes of the batch, header included.
    pub fn size_bytes(&self) -> usize {
        BATCH_LENGTH_PREFIX_BYTES + self.batch_length.max(0) as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec.
    ///
    /// # Errors
    /// [`BatchError::UnknownCodec`] for codec bits 5 to 7.
    pub fn codec(&self) -> Result<Codec, BatchError> {
        match self.attributes & ATTRIBUTE_COMPRESSION_MASK {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            codec => Err(BatchError::UnknownCodec { codec }),
        }
    }

    /// Timestamp type bit.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// A control batch (transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// The time after which compaction may remove the batch's tombstones (KIP-534): set when
    /// a cleaner first kept them, and then held in the base timestamp field.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & ATTRIBUTE_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// A copy with the delete horizon set: the base timestamp becomes `horizon_ms` (record
    /// timestamp deltas must then be relative to it).
    pub fn with_delete_horizon(mut self, horizon_ms: i64) -> BatchHeader {
        self.attributes |= ATTRIBUTE_DELETE_HORIZON;
        self.base_timestamp = horizon_ms;
        self
    }

    /// Writes the 61 header bytes; `batch_length` and `crc` are whatever the header holds
    /// ([`seal`] sets them once the records follow).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&self.batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(self.magic as u8);
        out.extend_from_slice(&self.crc.to_be_bytes());
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&self.last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.records_count.to_be_bytes());
    }
}

/// Reads only the first twelve bytes: base offset and total batch size. Used to walk a segment.
///
/// # Errors
/// [`BatchError::Truncated`] for fewer than twelve bytes, [`BatchError::InvalidLength`] for a
/// length that cannot hold a header.
pub fn peek_base_offset_and_size(bytes: &[u8]) -> Result<(i64, usize), BatchError> {
    if bytes.len() < BATCH_LENGTH_PREFIX_BYTES {
        return Err(BatchError::Truncated {
            available: bytes.len(),
            needed: BATCH_LENGTH_PREFIX_BYTES,
        });
    }
    let batch_length = read_i32(bytes, BATCH_LENGTH_POSITION);
    if (batch_length as i64) < (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i64 {
        return Err(BatchError::InvalidLength { batch_length });
    }
    Ok((
        read_i64(bytes, BASE_OFFSET_POSITION),
        BATCH_LENGTH_PREFIX_BYTES + batch_length as usize,
    ))
}

/// The CRC32C that a batch's `crc` field must hold.
pub fn compute_crc(batch: &[u8]) -> u32 {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES);
    crc32c::crc32c(&batch[ATTRIBUTES_POSITION..])
}

/// What validation learned about a batch, beyond its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedBatch {
    /// The header as sent.
    pub header: BatchHeader,
    /// The codec.
    pub codec: Codec,
    /// For uncompressed batches, the largest record timestamp (absolute); otherwise the header's.
    pub max_timestamp_of_records: i64,
}

/// Checks one whole batch: `bytes` must be exactly the batch.
///
/// Checks the length, magic, CRC32C, codec, `records_count == last_offset_delta + 1` and
/// timestamps; for uncompressed batches it also walks every record and checks that offset
/// deltas are dense (0, 1, 2, …) and that each record ends where its length says.
///
/// # Errors
/// A [`BatchError`] naming the first problem found.
pub fn validate(bytes: &[u8]) -> Result<ValidatedBatch, BatchError> {
    validate_with(bytes, Density::Dense)
}

/// Checks one whole batch as [`validate`] does, but accepts what log compaction leaves (a
/// leader's cleaned batches reaching a follower): fewer records than the offset span, none
/// at all, and increasing rather than dense record offset deltas.
///
/// # Errors
/// A [`BatchError`] naming the first problem found.
pub fn validate_compacted(bytes: &[u8]) -> Result<ValidatedBatch, BatchError> {
    validate_with(bytes, Density::Compacted)
}

/// Whether a batch's records must cover every offset of its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Density {
    /// As producers send them: one record per offset.
    Dense,
    /// As compaction leaves them: increasing offsets, possibly none.
    Compacted,
}

fn validate_with(bytes: &[u8], density: Density) -> Result<ValidatedBatch, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.size_bytes() != bytes.len()
        || (header.batch_length as usize) < BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES
    {
        return Err(BatchError::InvalidLength {
            batch_length: header.batch_length,
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let codec = header.codec()?;
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidOffsets {
            reason: "negative last offset delta",
        });
    }
    if header.records_count < 0 || (density == Density::Dense && header.records_count == 0) {
        return Err(BatchError::InvalidOffsets {
            reason: "a batch must hold at least one record",
        });
    }
    // Producers always send dense batches; compaction leaves fewer records than the span.
    let span = i64::from(header.last_offset_delta) + 1;
    let count = i64::from(header.records_count);
    if (density == Density::Dense && count != span) || count > span {
        return Err(BatchError::InvalidOffsets {
            reason: "records count does not match last offset delta + 1",
        });
    }
    check_timestamp(header.base_timestamp, "negative base timestamp")?;
    check_timestamp(header.max_timestamp, "negative max timestamp")?;
    // With a delete horizon (set by compaction) the base timestamp is the horizon.
    if header.max_timestamp != NO_TIMESTAMP
        && header.base_timestamp != NO_TIMESTAMP
        && header.delete_horizon_ms().is_none()
        && header.max_timestamp < header.base_timestamp
    {
        return Err(BatchError::InvalidTimestamp {
            reason: "max timestamp below base timestamp",
        });
    }
    let max_timestamp_of_records = if codec == Codec::None {
        walk_records(&header, &bytes[BATCH_HEADER_BYTES..], density)?
    } else {
        header.max_timestamp
    };
    Ok(ValidatedBatch {
        header,
        codec,
        max_timestamp_of_records,
    })
}

/// Checks a batch read back from a segment: length, magic and CRC32C. Records are not walked;
/// the CRC covers them.
///
/// # Errors
/// A [`BatchError`] naming the first problem found.
pub fn validate_stored(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.size_bytes() != bytes.len() {
        return Err(BatchError::InvalidLength {
            batch_length: header.batch_length,
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

fn check_timestamp(timestamp: i64, reason: &'static str) -> Result<(), BatchError> {
    if timestamp < NO_TIMESTAMP {
        return Err(BatchError::InvalidTimestamp { reason });
    }
    Ok(())
}

/// Walks the records of an uncompressed batch; returns the largest absolute timestamp.
fn walk_records(
    header: &BatchHeader,
    mut records: &[u8],
    density: Density,
) -> Result<i64, BatchError> {
    let mut max_timestamp = NO_TIMESTAMP;
    let mut previous_offset_delta = -1;
    for index in 0..header.records_count {
        let malformed = |reason| BatchError::MalformedRecord { index, reason };
        let length = read_varint(&mut records).ok_or_else(|| malformed("bad length varint"))?;
        if length < 0 || length as usize > records.len() {
            return Err(malformed("record length out of bounds"));
        }
        let (mut record, rest) = records.split_at(length as usize);
        records = rest;
        if record.is_empty() {
            return Err(malformed("empty record"));
        }
        record = &record[1..]; // attributes, unused in v2
        let timestamp_delta =
            read_varlong(&mut record).ok_or_else(|| malformed("bad timestamp delta"))?;
        let offset_delta = read_varint(&mut record).ok_or_else(|| malformed("bad offset delta"))?;
        let in_order = match density {
            Density::Dense => offset_delta == index,
            Density::Compacted => {
                offset_delta > previous_offset_delta && offset_delta <= header.last_offset_delta
            }
        };
        if !in_order {
            return Err(BatchError::InvalidOffsets {
                reason: "record offset deltas are not dense",
            });
        }
        previous_offset_delta = offset_delta;
        skip_bytes_field(&mut record).ok_or_else(|| malformed("bad key"))?;
        skip_bytes_field(&mut record).ok_or_else(|| malformed("bad value"))?;
        let header_count = read_varint(&mut record).ok_or_else(|| malformed("bad header count"))?;
        if header_count < 0 {
            return Err(malformed("negative header count"));
        }
        for _ in 0..header_count {
            let key_length = read_varint(&mut record).ok_or_else(|| malformed("bad header key"))?;
            if key_length < 0 || key_length as usize > record.len() {
                return Err(malformed("header key out of bounds"));
            }
            record = &record[key_length as usize..];
            skip_bytes_field(&mut record).ok_or_else(|| malformed("bad header value"))?;
        }
        if !record.is_empty() {
            return Err(malformed("trailing bytes in record"));
        }
        if header.base_timestamp != NO_TIMESTAMP {
            let timestamp = header.base_timestamp.saturating_add(timestamp_delta);
            max_timestamp = max_timestamp.max(timestamp);
        }
    }
    if !records.is_empty() {
        return Err(BatchError::MalformedRecord {
            index: header.records_count,
            reason: "bytes after the last record",
        });
    }
    Ok(max_timestamp)
}

fn skip_bytes_field(bytes: &mut &[u8]) -> Option<()> {
    let length = read_varint(bytes)?;
    if length < -1 {
        return None;
    }
    if length > 0 {
        let length = length as usize;
        if length > bytes.len() {
            return None;
        }
        *bytes = &bytes[length..];
    }
    Some(())
}

/// Reads a zigzag varint (at most 5 bytes).
pub(crate) fn read_varint(bytes: &mut &[u8]) -> Option<i32> {
    let value = read_unsigned_varint(bytes, 5)?;
    let value = u32::try_from(value).ok()?;
    Some(((value >> 1) as i32) ^ -((value & 1) as i32))
}

/// Reads a zigzag varlong (at most 10 bytes).
pub(crate) fn read_varlong(bytes: &mut &[u8]) -> Option<i64> {
    let value = read_unsigned_varint(bytes, 10)?;
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// Writes a zigzag varint, as [`read_varint`] reads it.
pub(crate) fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned_varint(out, u64::from(((value << 1) ^ (value >> 31)) as u32));
}

/// Writes a zigzag varlong, as [`read_varlong`] reads it.
pub(crate) fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn write_unsigned_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_unsigned_varint(bytes: &mut &[u8], max_bytes: usize) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(max_bytes) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Sets a whole batch's `batch_length` from its size and recomputes its CRC.
///
/// # Panics
/// If `batch` is shorter than a header.
pub fn seal(batch: &mut [u8]) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    let length = i32::try_from(batch.len() - BATCH_LENGTH_PREFIX_BYTES).expect("batch under 2 GiB");
    batch[BATCH_LENGTH_POSITION..BATCH_LENGTH_POSITION + 4].copy_from_slice(&length.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Sets the base offset. Not covered by the CRC, so the CRC stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POSITION..BASE_OFFSET_POSITION + 8]
        .copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the partition leader epoch. Not covered by the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[LEADER_EPOCH_POSITION..LEADER_EPOCH_POSITION + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Sets the timestamp type to `LogAppendTime` with `timestamp` as max timestamp, or sets a
/// `CreateTime` max timestamp, then rewrites the CRC (both fields are covered by it).
pub fn set_max_timestamp(batch: &mut [u8], timestamp_type: TimestampType, timestamp: i64) {
    let mut attributes = read_i16(batch, ATTRIBUTES_POSITION);
    match timestamp_type {
        TimestampType::LogAppendTime => attributes |= ATTRIBUTE_LOG_APPEND_TIME,
        TimestampType::CreateTime => attributes &= !ATTRIBUTE_LOG_APPEND_TIME,
    }
    batch[ATTRIBUTES_POSITION..ATTRIBUTES_POSITION + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_POSITION..MAX_TIMESTAMP_POSITION + 8]
        .copy_from_slice(&timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Finds the first record at or after `min_offset` with timestamp at or after
/// `target_timestamp` in a stored batch and returns its offset and timestamp. Records of
/// uncompressed batches are walked; for compressed and `LogAppendTime` batches the answer is the
/// batch's first offset at or after `min_offset` and its max timestamp (records are not
/// decompressed on the broker). `None` when no record qualifies.
pub fn first_offset_at_or_after(
    batch: &[u8],
    target_timestamp: i64,
    min_offset: i64,
) -> Option<(i64, i64)> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.last_offset() < min_offset {
        return None;
    }
    if header.timestamp_type() == TimestampType::LogAppendTime || header.codec() != Ok(Codec::None)
    {
        return (header.max_timestamp >= target_timestamp)
            .then_some((header.base_offset.max(min_offset), header.max_timestamp));
    }
    let mut records = &batch[BATCH_HEADER_BYTES..];
    for _ in 0..header.records_count {
        let length = read_varint(&mut records)?;
        let (mut record, rest) = records.split_at(usize::try_from(length).ok()?.min(records.len()));
        records = rest;
        record = record.get(1..)?;
        let timestamp_delta = read_varlong(&mut record)?;
        let offset_delta = read_varint(&mut record)?;
        let timestamp = header.base_timestamp.saturating_add(timestamp_delta);
        let offset = header.base_offset + i64::from(offset_delta);
        if timestamp >= target_timestamp && offset >= min_offset {
            return Some((offset, timestamp));
        }
    }
    None
}

fn read_i16(bytes: &[u8], position: usize) -> i16 {
    i16::from_be_bytes([bytes[position], bytes[position + 1]])
}

fn read_i32(bytes: &[u8], position: usize) -> i32 {
    i32::from_be_bytes(bytes[position..position + 4].try_into().expect("4 bytes"))
}

fn read_u32(bytes: &[u8], position: usize) -> u32 {
    u32::from_be_bytes(bytes[position..position + 4].try_into().expect("4 bytes"))
}

fn read_i64(bytes: &[u8], position: usize) -> i64 {
    i64::from_be_bytes(bytes[position..position + 8].try_into().expect("8 bytes"))
}

/// A transaction marker's control record (Kafka's `EndTransactionMarker`): key version 0 and
/// type (0 abort, 1 commit), value version 0 and the coordinator epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    /// Commit (else abort).
    pub commit: bool,
    /// The epoch of the coordinator that wrote it.
    pub coordinator_epoch: i32,
}

/// The transaction marker of a whole, checked control batch (uncompressed, one record).
///
/// # Errors
/// [`BatchError::MalformedRecord`] when its record is not a transaction marker.
pub fn control_marker(batch: &[u8]) -> Result<ControlMarker, BatchError> {
    let malformed = |reason| BatchError::MalformedRecord { index: 0, reason };
    let mut bytes = bytes::Bytes::copy_from_slice(batch);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes)
        .map_err(|_| malformed("a control batch that does not decode"))?;
    let record = set
        .records
        .first()
        .ok_or_else(|| malformed("a control batch without a record"))?;
    let key = record.key.as_deref().unwrap_or_default();
    let value = record.value.as_deref().unwrap_or_default();
    if key.len() < 4 || value.len() < 6 {
        return Err(malformed(
            "a control record too short for a transaction marker",
        ));
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        0 => false,
        1 => true,
        _ => {
            return Err(malformed(
                "a control record that is not a transaction marker",
            ))
        }
    };
    Ok(ControlMarker {
        commit,
        coordinator_epoch: i32::from_be_bytes([value[2], value[3], value[4], value[5]]),
    })
}

/// Builds uncompressed v2 batches with the `kafka-protocol` crate's encoder, for tools, tests
/// and benchmarks. The broker never builds batches: it stores what clients send.
pub mod build {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// One record to put into a batch.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NewRecord {
        /// Optional key.
        pub key: Option<Bytes>,
        /// Optional value (`None` is a tombstone).
        pub value: Option<Bytes>,
        /// Create time in ms.
        pub timestamp_ms: i64,
        /// Headers as (key, value).
        pub headers: Vec<(String, Option<Bytes>)>,
    }

    impl NewRecord {
        /// A record with a value and timestamp, no key and no headers.
        pub fn value(value: impl Into<Bytes>, timestamp_ms: i64) -> NewRecord {
            NewRecord {
                key: None,
                value: Some(value.into()),
                timestamp_ms,
                headers: Vec::new(),
            }
        }
    }

    /// Encodes `records` as one uncompressed v2 batch with base offset 0.
    ///
    /// # Panics
    /// If `records` is empty (a batch holds at least one record).
    pub fn batch(records: &[NewRecord]) -> BytesMut {
        encode(records, -1, -1, -1)
    }

    /// Encodes `records` as one uncompressed v2 batch of an idempotent producer: producer id,
    /// epoch and the sequence number of its first record (the others follow it).
    ///
    /// # Panics
    /// If `records` is empty, or `producer_id`, `producer_epoch` or `base_sequence` is
    /// negative.
    pub fn producer_batch(
        records: &[NewRecord],
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> BytesMut {
        assert!(producer_id >= 0 && producer_epoch >= 0 && base_sequence >= 0);
        encode(records, producer_id, producer_epoch, base_sequence)
    }

    /// Encodes a transaction marker: a control batch of `producer_id` at `producer_epoch`
    /// holding one control record (commit or abort, and the coordinator's epoch).
    pub fn marker_batch(
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        timestamp_ms: i64,
    ) -> BytesMut {
        let mut key = Vec::with_capacity(4);
        key.extend_from_slice(&0_i16.to_be_bytes());
        key.extend_from_slice(&i16::from(commit).to_be_bytes());
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0_i16.to_be_bytes());
        value.extend_from_slice(&coordinator_epoch.to_be_bytes());
        let record = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: timestamp_ms,
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value)),
            headers: Default::default(),
        };
        encode_uncompressed(std::slice::from_ref(&record))
    }

    /// Encodes `records` as one uncompressed transactional batch of `producer_id`.
    ///
    /// # Panics
    /// As [`producer_batch`].
    pub fn transactional_batch(
        records: &[NewRecord],
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> BytesMut {
        assert!(producer_id >= 0 && producer_epoch >= 0 && base_sequence >= 0);
        let mut batch = encode(records, producer_id, producer_epoch, base_sequence);
        // Attributes (bytes 21..23): bit 4 marks a transactional batch; the CRC covers them.
        batch[22] |= 0x10;
        let crc = super::compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    fn encode(
        records: &[NewRecord],
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> BytesMut {
        assert!(!records.is_empty(), "a batch holds at least one record");
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(index, record)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                // The encoder starts a new batch where `offset - sequence` changes, and takes
                // the first record's sequence as the base: -1 for a producer without
                // idempotence (then `-1 + index`, as the encoder wants the difference kept).
                sequence: if base_sequence < 0 {
                    index as i32 - 1
                } else {
                    super::super::producers::last_sequence(base_sequence, index as i32)
                },
                timestamp: record.timestamp_ms,
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record
                    .headers
                    .iter()
                    .map(|(key, value)| (key.clone().into(), value.clone()))
                    .collect(),
            })
            .collect();
        encode_uncompressed(&records)
    }

    fn encode_uncompressed(records: &[Record]) -> BytesMut {
        let mut buffer = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buffer,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encoding an uncompressed batch into memory cannot fail");
        buffer
    }
}

#[cfg(test)]
mod tests {
    use super::build::{batch, NewRecord};
    use super::*;

    fn sample() -> Vec<u8> {
        batch(&[
            NewRecord::value("a", 1_000),
            NewRecord::value("bb", 1_005),
            NewRecord::value("ccc", 1_002),
        ])
        .to_vec()
    }

    #[test]
    fn validates_encoder_output() {
        let bytes = sample();
        let validated = validate(&bytes).expect("valid");
        assert_eq!(validated.header.base_sequence, -1);
        assert_eq!(validated.header.producer_id, -1);
        assert_eq!(validated.header.records_count, 3);
        assert_eq!(validated.header.last_offset_delta, 2);
        assert_eq!(validated.codec, Codec::None);
        assert_eq!(validated.max_timestamp_of_records, 1_005);
    }

    #[test]
    fn rejects_each_corruption() {
        let good = sample();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            validate(&flipped),
            Err(BatchError::CrcMismatch { .. })
        ));
        assert!(matches!(
            validate(&good[..good.len() - 1]),
            Err(BatchError::InvalidLength { .. })
        ));
        let mut magic = good.clone();
        magic[MAGIC_POSITION] = 1;
        assert_eq!(
            validate(&magic),
            Err(BatchError::UnsupportedMagic { magic: 1 })
        );
        assert!(matches!(
            validate(&good[..10]),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn patches_keep_crc_valid() {
        let mut bytes = sample();
        set_base_offset(&mut bytes, 1234);
        set_partition_leader_epoch(&mut bytes, 7);
        validate(&bytes).expect("base offset and epoch are outside the CRC");
        set_max_timestamp(&mut bytes, TimestampType::LogAppendTime, 99_999);
        let validated = validate(&bytes).expect("CRC rewritten");
        assert_eq!(validated.header.base_offset, 1234);
        assert_eq!(validated.header.partition_leader_epoch, 7);
        assert_eq!(validated.header.max_timestamp, 99_999);
        assert_eq!(
            validated.header.timestamp_type(),
            TimestampType::LogAppendTime
        );
    }

    #[test]
    fn finds_first_record_at_or_after_a_timestamp() {
        let mut bytes = sample();
        set_base_offset(&mut bytes, 10);
        assert_eq!(first_offset_at_or_after(&bytes, 0, 0), Some((10, 1_000)));
        assert_eq!(
            first_offset_at_or_after(&bytes, 1_001, 0),
            Some((11, 1_005))
        );
        assert_eq!(
            first_offset_at_or_after(&bytes, 1_005, 0),
            Some((11, 1_005))
        );
        assert_eq!(first_offset_at_or_after(&bytes, 1_006, 0), None);
        assert_eq!(first_offset_at_or_after(&bytes, 0, 12), Some((12, 1_002)));
        assert_eq!(first_offset_at_or_after(&bytes, 1_003, 12), None);
    }

    #[test]
    fn varints_round_trip_kafka_examples() {
        for (encoded, expected) in [
            (&[0x00][..], 0),
            (&[0x01][..], -1),
            (&[0x02][..], 1),
            (&[0x96, 0x01][..], 75),
        ] {
            let mut slice = encoded;
            assert_eq!(read_varint(&mut slice), Some(expected));
            assert!(slice.is_empty());
        }
        let mut unterminated: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(read_varint(&mut unterminated), None);
    }
}
