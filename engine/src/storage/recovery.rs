//! Walking a segment file batch by batch: how indexes are rebuilt and torn tails found.
//!
//! Recovery policy (see `docs/FORMAT.md`):
//! - A batch that starts below the recovery point is trusted: a failed check is corruption
//!   below the recovery point, [`StorageError::Corrupt`] names the file and position and the
//!   log does not open. Its CRC32C is checked too (the walk has its bytes in memory anyway,
//!   and the CRC is what tells a misread length, which would send the walk astray, from a
//!   sound one).
//! - A batch at or after the recovery point is fully validated, CRC32C included. The first one
//!   that fails ends the log there: the walk reports the position, and the caller truncates the
//!   file and logs the truncation. An all-zero tail is direct-I/O padding and is cut quietly.

use std::path::Path;

use super::backend::{read_at_agreed, StorageFile};
use super::batch::{self, BatchHeader, BATCH_HEADER_BYTES, MAGIC_V2};
use super::epochs::observe_batch_epoch;
use super::error::{StorageError, StorageResult};
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::segment::SegmentMeta;
use crate::replication::epoch_cache::LeaderEpochCache;

/// Zero bytes after the last batch that make a tail padding rather than a torn write.
const ZERO_TAIL_PROBE_BYTES: u64 = 64 << 10;

/// Bytes read at a time while walking a segment.
const WALK_WINDOW_BYTES: usize = 1 << 20;

/// Builds a segment's sparse indexes as batches go by; shared by the append path and recovery
/// so both put entries at exactly the same batches.
#[derive(Debug, Clone)]
pub(super) struct IndexBuilder {
    pub(super) offset_index: OffsetIndex,
    pub(super) time_index: TimeIndex,
    bytes_since_entry: u64,
    interval_bytes: u64,
    max_timestamp_so_far: i64,
}

impl IndexBuilder {
    pub(super) fn new(interval_bytes: u32) -> IndexBuilder {
        IndexBuilder {
            offset_index: OffsetIndex::new(),
            time_index: TimeIndex::new(),
            bytes_since_entry: 0,
            interval_bytes: u64::from(interval_bytes),
            max_timestamp_so_far: -1,
        }
    }

    /// Resumes from indexes loaded from disk, at the offset index entry at or before
    /// `relative_offset`. Returns the position and relative offset where the walk restarts; the
    /// entry there is dropped and added again when the walk passes its batch.
    pub(super) fn resume(
        interval_bytes: u32,
        mut offset_index: OffsetIndex,
        time_index: TimeIndex,
        relative_offset: u32,
    ) -> (IndexBuilder, u64, u32) {
        let Some(start) = offset_index.floor(relative_offset) else {
            return (IndexBuilder::new(interval_bytes), 0, 0);
        };
        offset_index.truncate_to_position(u64::from(start.position));
        // Time entries up to and including the restart batch stay: each covers every batch up to
        // its own, some of which the walk will not see again.
        let mut time_index = time_index;
        time_index.retain_up_to(start.relative_offset);
        let max_timestamp_so_far = time_index.last().map_or(-1, |entry| entry.timestamp);
        let builder = IndexBuilder {
            offset_index,
            time_index,
            // Forces an entry at the restart batch, as there was one before.
            bytes_since_entry: u64::from(interval_bytes) + 1,
            interval_bytes: u64::from(interval_bytes),
            max_timestamp_so_far,
        };
        (builder, u64::from(start.position), start.relative_offset)
    }

    /// Largest timestamp seen, including entries kept by [`IndexBuilder::resume`].
    pub(super) fn max_timestamp_so_far(&self) -> i64 {
        self.max_timestamp_so_far
    }

    /// Accounts one batch at `position`.
    pub(super) fn observe(
        &mut self,
        relative_offset: u32,
        position: u32,
        max_timestamp: i64,
        size: u64,
    ) {
        self.max_timestamp_so_far = self.max_timestamp_so_far.max(max_timestamp);
        if self.bytes_since_entry > self.interval_bytes {
            self.offset_index.push(OffsetEntry {
                relative_offset,
                position,
            });
            self.time_index.maybe_push(TimeEntry {
                timestamp: self.max_timestamp_so_far,
                relative_offset,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += size;
    }

    /// Whether the offset index has reached `entries_max`.
    pub(super) fn is_full(&self, entries_max: usize) -> bool {
        self.offset_index.len() >= entries_max
    }

    /// The time index with a final entry for the segment's largest timestamp, as written when a
    /// segment is rolled, checkpointed or closed.
    pub(super) fn final_time_index(&self, meta: &SegmentMeta) -> TimeIndex {
        let mut time_index = self.time_index.clone();
        if meta.max_timestamp >= 0 {
            time_index.maybe_push(TimeEntry {
                timestamp: meta.max_timestamp,
                relative_offset: relative(meta, meta.offset_of_max_timestamp),
            });
        }
        time_index
    }
}

/// Offset relative to the segment base, as stored in indexes.
pub(super) fn relative(meta: &SegmentMeta, offset: i64) -> u32 {
    u32::try_from(offset - meta.base_offset).expect("relative offsets fit in u32")
}

/// Where and why a walk stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WalkStop {
    /// The file ends exactly after the last batch.
    CleanEnd,
    /// Only zero bytes follow the last batch: direct-I/O padding.
    ZeroPadding { position: u64 },
    /// A batch at or after the recovery point is torn or corrupt.
    Torn { position: u64, reason: String },
}

/// Walks `file` from `start_position`, where a batch with offset `expected_offset` must start,
/// to its end, feeding `builder` and `meta`. See the module docs for the policy.
///
/// # Errors
/// [`StorageError::Corrupt`] for a bad batch below `recovery_point`, or an I/O error.
pub(super) async fn walk_segment<F: StorageFile>(
    file: &F,
    path: &Path,
    start_position: u64,
    recovery_point: i64,
    builder: &mut IndexBuilder,
    meta: &mut SegmentMeta,
    mut epochs: Option<&mut LeaderEpochCache>,
) -> StorageResult<WalkStop> {
    let file_len = file.len();
    let mut position = start_position;
    // What a read showed at a position where it found a problem, and how many reads looked:
    // a problem is damage only when two reads in a row show the same bytes (a flipped bit in
    // transit shows once), or after READS_BEFORE_DAMAGE_MAX reads.
    let mut bad_view: Option<(u64, Vec<u8>, u32)> = None;
    let mut window_start = position;
    let mut window = file
        .read_at(position, WALK_WINDOW_BYTES)
        .await
        .map_err(|source| StorageError::io(format!("reading {}", path.display()), source))?;
    loop {
        if position == file_len {
            return Ok(WalkStop::CleanEnd);
        }
        let remaining = file_len - position;
        let cursor = (position - window_start) as usize;
        let wanted = (BATCH_HEADER_BYTES as u64).min(remaining) as usize;
        if window.len() < cursor + wanted {
            window_start = position;
            window = read(file, path, position, WALK_WINDOW_BYTES).await?;
            continue;
        }
        let expected_offset = meta.next_offset;
        let trusted = expected_offset < recovery_point;
        // A problem at `position`: read it again until two reads agree before taking it for
        // damage.
        macro_rules! look_again_or_stop {
            ($reason:expr) => {{
                let view = window[cursor..].to_vec();
                let (reads, agree) = match &bad_view {
                    Some((at, seen, reads)) if *at == position => (reads + 1, *seen == view),
                    _ => (1, false),
                };
                if !agree && reads < READS_BEFORE_DAMAGE_MAX {
                    bad_view = Some((position, view, reads));
                    window_start = position;
                    window = read(file, path, position, WALK_WINDOW_BYTES).await?;
                    continue;
                }
                return stop_or_corrupt(file, path, position, trusted, $reason).await;
            }};
        }
        let header = match BatchHeader::parse(&window[cursor..]) {
            Ok(header) => header,
            Err(error) => look_again_or_stop!(error.to_string()),
        };
        let size = header.size_bytes() as u64;
        let header_problem = if header.batch_length < (BATCH_HEADER_BYTES - 12) as i32 {
            Some("batch length smaller than a header".to_string())
        } else if size > remaining {
            Some(format!(
                "batch of {size} bytes runs past the end of the file"
            ))
        } else if header.magic != MAGIC_V2 {
            Some(format!("magic {} is not 2", header.magic))
        } else if header.base_offset != expected_offset {
            Some(format!(
                "base offset {} where {expected_offset} was expected",
                header.base_offset
            ))
        } else if header.last_offset_delta < 0 {
            Some("negative last offset delta".to_string())
        } else if trusted && header.next_offset() > recovery_point {
            // The recovery point always falls between batches.
            Some(format!(
                "batch ends at offset {}, across the recovery point {recovery_point}",
                header.next_offset()
            ))
        } else if header.next_offset() - meta.base_offset > i64::from(u32::MAX) {
            Some("offset too far from the segment base".to_string())
        } else {
            None
        };
        if let Some(reason) = header_problem {
            look_again_or_stop!(reason);
        }
        if window.len() < cursor + size as usize {
            window_start = position;
            window = read(file, path, position, WALK_WINDOW_BYTES.max(size as usize)).await?;
            continue;
        }
        if let Err(error) = batch::validate_stored(&window[cursor..cursor + size as usize]) {
            look_again_or_stop!(error.to_string());
        }
        // The partition leader epoch is outside the batch CRC: one other than the latest in
        // the cache (a new epoch, or a bad read of one) is taken only when reads of the
        // header agree on it, so that a bad read neither opens an epoch nobody wrote nor
        // hides the batch that opens one.
        let other_epoch = epochs
            .as_deref()
            .is_some_and(|epochs| epochs.latest_epoch() != Some(header.partition_leader_epoch));
        let partition_leader_epoch = if other_epoch {
            let again = read_at_agreed(file, position, BATCH_HEADER_BYTES)
                .await
                .map_err(|source| {
                    StorageError::io(format!("reading {}", path.display()), source)
                })?;
            match BatchHeader::parse(&again) {
                Ok(again) if again.base_offset == header.base_offset => {
                    again.partition_leader_epoch
                }
                _ => look_again_or_stop!("two reads of a batch header disagree".to_string()),
            }
        } else {
            header.partition_leader_epoch
        };
        builder.observe(
            relative(meta, header.base_offset),
            u32::try_from(position).expect("segment positions fit in u32"),
            header.max_timestamp,
            size,
        );
        meta.observe_batch(
            header.base_offset,
            header.next_offset(),
            header.max_timestamp,
            size,
        );
        if let Some(epochs) = epochs.as_deref_mut() {
            observe_batch_epoch(epochs, partition_leader_epoch, header.base_offset);
        }
        position += size;
    }
}

/// Most reads of a batch with a problem before it is taken for damage (a torn tail cut away,
/// or corruption reported) even when no two of them agreed.
const READS_BEFORE_DAMAGE_MAX: u32 = 16;

async fn read<F: StorageFile>(
    file: &F,
    path: &Path,
    position: u64,
    len: usize,
) -> StorageResult<F::Buf> {
    file.read_at(position, len)
        .await
        .map_err(|source| StorageError::io(format!("reading {}", path.display()), source))
}

async fn stop_or_corrupt<F: StorageFile>(
    file: &F,
    path: &Path,
    position: u64,
    trusted: bool,
    reason: String,
) -> StorageResult<WalkStop> {
    if trusted {
        return Err(StorageError::Corrupt {
            segment: path.to_path_buf(),
            position,
            reason: format!("{reason} (below the recovery point)"),
        });
    }
    // Space reserved ahead of appends, and direct-I/O padding, read as zeros: a zero run where
    // the next batch would start is the end of the data, not damage.
    let probe_len = (file.len() - position).min(ZERO_TAIL_PROBE_BYTES);
    let probe = read(file, path, position, probe_len as usize).await?;
    if probe.iter().all(|&byte| byte == 0) {
        return Ok(WalkStop::ZeroPadding { position });
    }
    Ok(WalkStop::Torn { position, reason })
}
