//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

use super::batch::BatchError;
use super::producers::ProducerError;

/// What went wrong in a partition log. Three kinds, handled three ways: operating errors (`Io`,
/// `OffsetOutOfRange`, refused input) are returned; corruption (`Corrupt`) names the file and
/// position and is never passed over; a failed sync or write poisons the log (`Poisoned`) so
/// that no later write can pretend to succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A batch handed to `append` is invalid; nothing of the append was written.
    #[error("invalid record batch at byte {position} of the request: {source}")]
    InvalidBatch {
        /// Byte position of the batch within the appended records.
        position: usize,
        /// Why it was refused.
        #[source]
        source: BatchError,
    },
    /// A batch is larger than `max.message.bytes` or than a segment.
    #[error("record batch of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        size_bytes: usize,
        /// The limit it exceeds.
        limit_bytes: usize,
    },
    /// The records of one append are larger than a segment (Kafka's RECORD_LIST_TOO_LARGE).
    #[error("{size_bytes} bytes of records in one append exceed the segment size of {limit_bytes} bytes")]
    RecordsTooLarge {
        /// Size of the records.
        size_bytes: usize,
        /// The segment size.
        limit_bytes: usize,
    },
    /// Data below the recovery point, or an index the log depends on, is corrupt.
    #[error("corrupt data in {} at byte {position}: {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position in that file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A write or sync failed earlier; the log refuses writes until it is reopened, since a
    /// retried fsync can report success for data the kernel already dropped.
    #[error("partition log {} is poisoned by an earlier failure: {cause}", dir.display())]
    Poisoned {
        /// The partition directory.
        dir: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },
    /// The requested offset is outside the log.
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// First offset in the log.
        log_start_offset: i64,
        /// Offset the next record will get.
        log_end_offset: i64,
    },
    /// A replicated batch does not start where the log ends: a follower may only append its
    /// leader's batches in order, with no gap and no overlap.
    #[error("replicated batch starts at offset {found}, where {expected} was expected")]
    NotContiguous {
        /// The log end offset (or the previous batch's end).
        expected: i64,
        /// The batch's base offset.
        found: i64,
    },
    /// Records waited for were cut from the log by a truncation (the replica stopped leading
    /// the partition and its log was cut back to the new leader's).
    #[error("offsets below {offset} were truncated; the log now ends at {log_end_offset}")]
    Truncated {
        /// The offset waited for.
        offset: i64,
        /// The log end offset after the truncation.
        log_end_offset: i64,
    },
    /// An idempotent producer's batch is out of sequence or of a fenced epoch; nothing of the
    /// append was written.
    #[error(transparent)]
    Producer(ProducerError),
    /// A record without a key for a compacted topic, or records whose keys cannot be read
    /// (Kafka's `INVALID_RECORD`).
    #[error("{reason}")]
    KeylessRecord {
        /// What is wrong.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StorageError {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of the storage layer.
pub type StorageResult<T> = Result<T, StorageError>;
