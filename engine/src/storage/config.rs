//! Per-partition log settings, with Kafka's names and defaults.

use super::batch::TimestampType;
use crate::limits;

/// Settings of one partition log. Field names follow Kafka's topic configs with units last;
/// defaults are Kafka's unless noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// What happens to old segments (`cleanup.policy`).
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone stays once the cleaner first kept it (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Clean once dirty bytes are at least this share of the cleanable log
    /// (`min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_ratio: Ratio,
    /// Records younger than this are not cleaned (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: i64,
    /// Records older than this are cleaned whatever the dirty ratio (`max.compaction.lag.ms`).
    pub max_compaction_lag_ms: i64,
    /// Roll the active segment before it would exceed this many bytes (`segment.bytes`).
    pub segment_bytes: u32,
    /// Roll the active segment once its first batch is this old (`segment.ms`).
    pub segment_ms: i64,
    /// Roll the active segment when its offset index would exceed this many bytes
    /// (`segment.index.bytes`).
    pub segment_index_bytes: u32,
    /// Bytes of log between two offset index entries (`index.interval.bytes`).
    pub index_interval_bytes: u32,
    /// Sync after this many records appended since the last sync (`flush.messages`);
    /// `u64::MAX` never, 1 on every append.
    pub flush_messages: u64,
    /// Sync when the last sync is this old (`flush.ms`); `i64::MAX` never.
    pub flush_ms: i64,
    /// Delete closed segments whose newest record is older than this (`retention.ms`); -1 keeps
    /// them forever.
    pub retention_ms: i64,
    /// Delete the oldest closed segments while the partition is larger than this
    /// (`retention.bytes`); -1 for no limit.
    pub retention_bytes: i64,
    /// Largest batch accepted (`max.message.bytes`).
    pub max_message_bytes: u32,
    /// Whose clock timestamps come from (`message.timestamp.type`).
    pub message_timestamp_type: TimestampType,
    /// Bytes of the newest batches kept in memory for tailing consumers (Spate only).
    pub tail_cache_bytes: usize,
    /// Closed segments kept open with their offset index loaded (Spate only).
    pub closed_segment_handles_max: usize,
    /// Forget an idempotent producer whose last batch is this old (Kafka's broker setting
    /// `producer.id.expiration.ms`); its next batch may then start at any sequence.
    pub producer_id_expiration_ms: i64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: limits::DELETE_RETENTION_MS_DEFAULT,
            min_cleanable_dirty_ratio: Ratio(0.5),
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segment_ms: limits::SEGMENT_MS_DEFAULT,
            segment_index_bytes: limits::SEGMENT_INDEX_BYTES_DEFAULT,
            index_interval_bytes: limits::INDEX_INTERVAL_BYTES_DEFAULT,
            flush_messages: u64::MAX,
            flush_ms: i64::MAX,
            retention_ms: limits::RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            max_message_bytes: limits::MAX_MESSAGE_BYTES_DEFAULT,
            message_timestamp_type: TimestampType::CreateTime,
            tail_cache_bytes: limits::TAIL_CACHE_BYTES_DEFAULT,
            closed_segment_handles_max: limits::CLOSED_SEGMENT_HANDLES_DEFAULT,
            producer_id_expiration_ms: limits::PRODUCER_ID_EXPIRATION_MS_DEFAULT,
        }
    }
}

/// A share between 0 and 1, compared bit for bit (so that settings have an equality).
#[derive(Debug, Clone, Copy)]
pub struct Ratio(pub f64);

impl PartialEq for Ratio {
    fn eq(&self, other: &Ratio) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Ratio {}

/// Kafka's `cleanup.policy`: `delete`, `compact` or both (`compact,delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Retention deletes old segments (by `retention.ms` and `retention.bytes`).
    pub delete: bool,
    /// The cleaner keeps the latest record of each key.
    pub compact: bool,
}

impl CleanupPolicy {
    /// `delete`, Kafka's default.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    /// `compact`.
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };

    /// Parses Kafka's list form: `delete`, `compact`, `compact,delete` (either order).
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for word in value.split(',').map(str::trim) {
            match word {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        (policy.delete || policy.compact).then_some(policy)
    }
}

impl LogConfig {
    /// Checks the settings against each other and against the format's limits.
    ///
    /// # Errors
    /// A sentence naming the first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < limits::SEGMENT_BYTES_MIN {
            return Err(format!(
                "segment_bytes {} is below the minimum {}",
                self.segment_bytes,
                limits::SEGMENT_BYTES_MIN
            ));
        }
        if u64::from(self.segment_bytes) > limits::SEGMENT_BYTES_MAX {
            return Err(format!(
                "segment_bytes {} is above the maximum {}",
                self.segment_bytes,
                limits::SEGMENT_BYTES_MAX
            ));
        }
        if self.segment_ms <= 0 {
            return Err("segment_ms must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be positive".into());
        }
        if (self.segment_index_bytes as usize) < 2 * super::index::OFFSET_ENTRY_BYTES {
            return Err("segment_index_bytes must hold at least two entries".into());
        }
        if self.flush_messages == 0 {
            return Err("flush_messages must be at least 1".into());
        }
        if self.flush_ms < 0 {
            return Err("flush_ms must not be negative".into());
        }
        if self.retention_ms < -1 || self.retention_bytes < -1 {
            return Err("retention_ms and retention_bytes take -1 (forever) or a size".into());
        }
        if self.max_message_bytes as usize <= super::batch::BATCH_HEADER_BYTES {
            return Err("max_message_bytes must exceed a batch header".into());
        }
        if self.producer_id_expiration_ms <= 0 {
            return Err("producer_id_expiration_ms must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio.0) {
            return Err("min_cleanable_dirty_ratio must be between 0 and 1".into());
        }
        if self.delete_retention_ms < 0
            || self.min_compaction_lag_ms < 0
            || self.max_compaction_lag_ms < 1
        {
            return Err(
                "delete_retention_ms and min_compaction_lag_ms must not be negative, \
                 max_compaction_lag_ms must be positive"
                    .into(),
            );
        }
        if !self.cleanup_policy.delete && !self.cleanup_policy.compact {
            return Err("cleanup_policy must delete, compact or both".into());
        }
        if self.closed_segment_handles_max == 0 {
            return Err("closed_segment_handles_max must be at least 1".into());
        }
        Ok(())
    }

    /// Most entries the offset index of one segment may hold.
    pub fn index_entries_max(&self) -> usize {
        self.segment_index_bytes as usize / super::index::OFFSET_ENTRY_BYTES
    }
}
