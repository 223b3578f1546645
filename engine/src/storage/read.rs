//! Reads: [`PartitionLog::read`] and [`PartitionLog::offset_for_timestamp`].
//!
//! Recent batches come from the tail cache; older ones are found through the segment map, the
//! offset index and a short scan, and returned as zero-copy slices of one read. Every batch read
//! from disk has its header and CRC checked before it is served, and its partition leader
//! epoch (outside the CRC) against the leader epoch cache: a follower stores the epoch it is
//! served, so a misread one would enter its cache and stall it for good.

use std::path::Path;

use super::backend::{read_whole_file, ReadBuf, Storage, StorageFile};
use super::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use super::error::{StorageError, StorageResult};
use super::index::TimeIndex;
use super::log::{io_error, Chunk, Fetched, PartitionLog};
use super::recovery::relative;
use super::segment::{SegmentMeta, SegmentPaths};
use crate::limits::READ_WINDOW_EXTRA_BYTES;
use crate::replication::epoch_cache::LeaderEpochCache;

impl<S: Storage> PartitionLog<S> {
    /// Reads whole batches starting with the one that holds `offset`: at most `max_bytes`, but
    /// always at least one whole batch (as Kafka's fetch does), never a batch that ends at or
    /// after `limit_offset` (the high watermark; `None` for the log end), and only from one
    /// segment. Recent batches come from memory; older ones are read from disk without copying.
    ///
    /// # Errors
    /// [`StorageError::OffsetOutOfRange`] outside `[log_start_offset, log_end_offset]`, or an
    /// I/O error.
    pub async fn read(
        &mut self,
        offset: i64,
        max_bytes: usize,
        limit_offset: Option<i64>,
    ) -> StorageResult<Fetched<<S::File as StorageFile>::Buf>> {
        let log_end_offset = self.log_end_offset();
        if offset < self.log_start_offset || offset > log_end_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        let limit_offset = limit_offset.unwrap_or(log_end_offset).min(log_end_offset);
        let mut fetched = Fetched {
            chunks: Vec::new(),
            log_start_offset: self.log_start_offset,
            log_end_offset,
        };
        if offset >= limit_offset {
            return Ok(fetched);
        }
        if let Some(batches) = self.tail_cache.read(offset, limit_offset, max_bytes) {
            fetched.chunks = batches.into_iter().map(Chunk::Memory).collect();
            return Ok(fetched);
        }
        let (file, path, start, segment_end) = if offset >= self.active.meta.base_offset {
            let meta = &self.active.meta;
            let entry = self.active.index.offset_index.floor(relative(meta, offset));
            (
                self.active.file.clone(),
                self.active.paths.log.clone(),
                ScanStart::from_entry(meta.base_offset, entry),
                meta.size_bytes,
            )
        } else {
            let meta = *self
                .closed
                .range(..=offset)
                .next_back()
                .map(|(_, meta)| meta)
                .expect("offsets at or after the log start lie in a segment");
            let handle = self.closed_handle(meta.base_offset).await?;
            let entry = handle.index.floor(relative(&meta, offset));
            (
                handle.file.clone(),
                SegmentPaths::new(&self.dir, meta.base_offset).log,
                ScanStart::from_entry(meta.base_offset, entry),
                meta.size_bytes,
            )
        };
        if let Some(buffer) = scan_for_read(
            &file,
            &path,
            start,
            segment_end,
            offset,
            limit_offset,
            max_bytes,
            self.config.index_interval_bytes as usize,
            &self.epochs,
        )
        .await?
        {
            fetched.chunks.push(Chunk::Disk(buffer));
        }
        Ok(fetched)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, with that
    /// timestamp (Kafka's ListOffsets by time). For compressed batches, the batch's base offset
    /// and max timestamp. `None` when no record is that new.
    ///
    /// # Errors
    /// An I/O error.
    pub async fn offset_for_timestamp(
        &mut self,
        timestamp_ms: i64,
    ) -> StorageResult<Option<(i64, i64)>> {
        let candidates: Vec<SegmentMeta> = self
            .closed
            .values()
            .chain(std::iter::once(&self.active.meta))
            .filter(|meta| {
                meta.max_timestamp >= timestamp_ms && meta.next_offset > self.log_start_offset
            })
            .copied()
            .collect();
        for meta in candidates {
            if let Some(found) = self.offset_for_timestamp_in(meta, timestamp_ms).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    async fn offset_for_timestamp_in(
        &mut self,
        meta: SegmentMeta,
        timestamp_ms: i64,
    ) -> StorageResult<Option<(i64, i64)>> {
        let paths = SegmentPaths::new(&self.dir, meta.base_offset);
        let (file, offset_index, time_index) = if meta.base_offset == self.active.meta.base_offset {
            (
                self.active.file.clone(),
                self.active.index.offset_index.clone(),
                self.active.index.time_index.clone(),
            )
        } else {
            let time_index = match read_whole_file(&self.storage, &paths.time_index).await {
                Ok(bytes) => TimeIndex::decode(&bytes).unwrap_or_default(),
                Err(_) => TimeIndex::new(),
            };
            let handle = self.closed_handle(meta.base_offset).await?;
            (handle.file.clone(), handle.index.clone(), time_index)
        };
        let start_relative = time_index
            .last_below(timestamp_ms)
            .map_or(0, |entry| entry.relative_offset);
        let mut position = offset_index
            .floor(start_relative)
            .map_or(0, |entry| u64::from(entry.position));
        while position < meta.size_bytes {
            let header_bytes = file
                .read_at(position, BATCH_HEADER_BYTES)
                .await
                .map_err(io_error(|| format!("reading {}", paths.log.display())))?;
            let header =
                BatchHeader::parse(&header_bytes).map_err(|error| StorageError::Corrupt {
                    segment: paths.log.clone(),
                    position,
                    reason: error.to_string(),
                })?;
            let size = header.size_bytes();
            if header.max_timestamp >= timestamp_ms && header.last_offset() >= self.log_start_offset
            {
                let bytes = file
                    .read_at(position, size)
                    .await
                    .map_err(io_error(|| format!("reading {}", paths.log.display())))?;
                let found =
                    batch::first_offset_at_or_after(&bytes, timestamp_ms, self.log_start_offset);
                if found.is_some() {
                    return Ok(found);
                }
            }
            position += size as u64;
        }
        Ok(None)
    }
}

/// Where a scan starts: a batch start position and the offset that batch must have.
#[derive(Debug, Clone, Copy)]
struct ScanStart {
    position: u64,
    offset: i64,
}

impl ScanStart {
    fn from_entry(base_offset: i64, entry: Option<super::index::OffsetEntry>) -> ScanStart {
        match entry {
            Some(entry) => ScanStart {
                position: u64::from(entry.position),
                offset: base_offset + i64::from(entry.relative_offset),
            },
            None => ScanStart {
                position: 0,
                offset: base_offset,
            },
        }
    }
}

/// Finds the batch holding `offset` at or after `start_position` and returns the whole batches
/// from there, as one zero-copy buffer. See [`PartitionLog::read`] for the limits.
#[allow(clippy::too_many_arguments)]
async fn scan_for_read<F: StorageFile>(
    file: &F,
    path: &Path,
    start: ScanStart,
    segment_end: u64,
    offset: i64,
    limit_offset: i64,
    max_bytes: usize,
    index_interval_bytes: usize,
    epochs: &LeaderEpochCache,
) -> StorageResult<Option<F::Buf>> {
    let window_bytes = index_interval_bytes + max_bytes.max(READ_WINDOW_EXTRA_BYTES);
    let read = |position: u64, len: usize| {
        let len = len.min((segment_end - position) as usize);
        async move {
            file.read_at(position, len)
                .await
                .map_err(io_error(|| format!("reading {}", path.display())))
        }
    };
    let corrupt = |position: u64, reason: String| StorageError::Corrupt {
        segment: path.to_path_buf(),
        position,
        reason,
    };
    let mut window_start = start.position;
    let mut window = read(window_start, window_bytes).await?;
    let mut position = start.position;
    let mut expected_offset = start.offset;
    // The CRC does not cover the base offset and length, so check them against the offsets the
    // index and the walk expect: a damaged header is reported, never skipped silently.
    let check_header = |header: &BatchHeader, position: u64, expected_offset: i64| {
        if header.base_offset != expected_offset {
            return Err(corrupt(
                position,
                format!(
                    "base offset {} where {expected_offset} was expected",
                    header.base_offset
                ),
            ));
        }
        if header.size_bytes() < BATCH_HEADER_BYTES || header.last_offset_delta < 0 {
            return Err(corrupt(
                position,
                "invalid batch length or offset delta".into(),
            ));
        }
        if position + header.size_bytes() as u64 > segment_end {
            return Err(corrupt(
                position,
                "batch runs past the end of the segment".into(),
            ));
        }
        Ok(())
    };
    // Skip batches that end before `offset`.
    loop {
        if position >= segment_end {
            return Ok(None);
        }
        let cursor = (position - window_start) as usize;
        if window.len() < cursor + BATCH_HEADER_BYTES {
            window_start = position;
            window = read(position, window_bytes).await?;
            continue;
        }
        let header = BatchHeader::parse(&window[cursor..])
            .map_err(|error| corrupt(position, error.to_string()))?;
        check_header(&header, position, expected_offset)?;
        if header.last_offset() >= offset {
            break;
        }
        position += header.size_bytes() as u64;
        expected_offset = header.next_offset();
    }
    // Take whole batches from here.
    let first_position = position;
    let mut total = 0usize;
    loop {
        if position >= segment_end {
            break;
        }
        let cursor = (position - window_start) as usize;
        if window.len() < cursor + BATCH_HEADER_BYTES {
            if total > 0 {
                break;
            }
            window_start = position;
            window = read(position, window_bytes).await?;
            continue;
        }
        let header = BatchHeader::parse(&window[cursor..])
            .map_err(|error| corrupt(position, error.to_string()))?;
        check_header(&header, position, expected_offset)?;
        let size = header.size_bytes();
        if total > 0 && total + size > max_bytes {
            break;
        }
        if window.len() < cursor + size {
            if total > 0 {
                break;
            }
            window_start = position;
            window = read(position, size.max(window_bytes)).await?;
            if window.len() < size {
                return Err(corrupt(
                    position,
                    "batch runs past the end of the segment".into(),
                ));
            }
            continue;
        }
        // Batches were validated on append, but the disk may have damaged them since: a batch
        // whose CRC fails is reported, never served (nor trusted for its offsets).
        batch::validate_stored(&window[cursor..cursor + size])
            .map_err(|error| corrupt(position, error.to_string()))?;
        // The epoch is outside the CRC: every batch carries the epoch that wrote it, which is
        // the cache's for its base offset (where the cache covers it).
        if let Some(expected) = epochs.epoch_at(header.base_offset) {
            if header.partition_leader_epoch != expected {
                return Err(corrupt(
                    position,
                    format!(
                        "partition leader epoch {} where the leader epoch cache has {expected}",
                        header.partition_leader_epoch
                    ),
                ));
            }
        }
        if header.next_offset() > limit_offset {
            break;
        }
        total += size;
        position += size as u64;
        expected_offset = header.next_offset();
    }
    if total == 0 {
        return Ok(None);
    }
    let cursor = (first_position - window_start) as usize;
    Ok(Some(window.slice(cursor, total)))
}
