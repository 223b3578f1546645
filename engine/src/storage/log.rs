//! [`PartitionLog`]: one partition's durable, segmented log.
//!
//! # Calling protocol
//! Open with [`PartitionLog::open`], which recovers the directory. Then, in any order, from the
//! one task that owns the partition (methods take `&mut self`; [`super::SharedLog`] adds group
//! commit for many concurrent callers):
//! - [`append`](PartitionLog::append) validates batches, assigns offsets, writes them; the
//!   returned [`AppendInfo::sync_due`] says when the flush policy wants a sync.
//! - [`flush`](PartitionLog::flush), or [`begin_sync`](PartitionLog::begin_sync) /
//!   [`SyncTicket::run`] / [`complete_sync`](PartitionLog::complete_sync) when the fsync should
//!   run without holding the log, make appended batches durable.
//! - [`read`](PartitionLog::read), [`offset_for_timestamp`](PartitionLog::offset_for_timestamp).
//! - [`checkpoint`](PartitionLog::checkpoint) now and then (writes the active segment's indexes
//!   and the recovery point, which bounds the work of the next recovery),
//!   [`apply_retention`](PartitionLog::apply_retention),
//!   [`delete_records`](PartitionLog::delete_records).
//! - [`close`](PartitionLog::close) at shutdown.
//!
//! Time never comes from a clock here: callers pass `now_ms`, so the simulation controls it.
//!
//! # Invariants
//! `log_start_offset <= recovery_point <= durable_offset <= log_end_offset` does not hold in
//! general (retention can move the start past the recovery point), but these do, and are
//! asserted: `log_start_offset <= log_end_offset`, `recovery_point <= durable_offset <=
//! log_end_offset`, segments are contiguous (each one's `next_offset` is the next one's base),
//! and index entries strictly increase.

use std::collections::BTreeMap;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tracing::{debug, info, warn};

use super::backend::{
    read_whole_file, write_file_atomically, OpenMode, ReadBuf, Storage, StorageFile,
};
use super::batch::{self, BatchHeader, Codec, TimestampType, BATCH_HEADER_BYTES};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use super::config::LogConfig;
use super::error::{StorageError, StorageResult};
use super::index::{OffsetIndex, TimeIndex};
use super::recovery::{relative, walk_segment, IndexBuilder, WalkStop};
use super::segment::{
    parse_file_name, SegmentMeta, SegmentPaths, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use super::tail_cache::TailCache;
use crate::limits::READ_WINDOW_EXTRA_BYTES;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset given to the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The broker's timestamp for `LogAppendTime` topics, else -1.
    pub log_append_time_ms: i64,
    /// Records appended.
    pub records_count: u64,
    /// Batches appended.
    pub batches_count: usize,
    /// The flush policy (`flush_messages`, `flush_ms`) asks for a sync now.
    pub sync_due: bool,
}

/// A run of whole batches returned by a read: either shared memory from the tail cache or a
/// zero-copy buffer from the segment file.
#[derive(Debug, Clone)]
pub enum Chunk<B> {
    /// From the tail cache.
    Memory(Bytes),
    /// From a segment file.
    Disk(B),
}

impl<B: ReadBuf> Deref for Chunk<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Memory(bytes) => bytes,
            Chunk::Disk(buffer) => buffer,
        }
    }
}

/// The result of a read: whole batches, in offset order.
#[derive(Debug, Clone)]
pub struct Fetched<B> {
    /// Whole batches, concatenated in order across chunks.
    pub chunks: Vec<Chunk<B>>,
    /// First offset of the log when the read ran.
    pub log_start_offset: i64,
    /// Offset the next record will get.
    pub log_end_offset: i64,
}

impl<B: ReadBuf> Fetched<B> {
    /// Total bytes.
    pub fn size_bytes(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.len()).sum()
    }

    /// Whether no batch was returned.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|chunk| chunk.is_empty())
    }

    /// The batches as one contiguous buffer. Copies unless there is a single memory chunk;
    /// callers that can write chunk by chunk should iterate `chunks` instead.
    pub fn to_bytes(&self) -> Bytes {
        if let [Chunk::Memory(bytes)] = self.chunks.as_slice() {
            return bytes.clone();
        }
        let mut out = BytesMut::with_capacity(self.size_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// A log tail cut during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub segment: PathBuf,
    /// Position the file was cut at.
    pub position: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Why.
    pub reason: String,
}

/// What [`PartitionLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Segments trusted below the recovery point (indexes loaded, not rebuilt).
    pub segments_trusted: usize,
    /// Index files rebuilt because they were missing or damaged.
    pub indexes_rebuilt: usize,
    /// Torn or corrupt tails cut off (above the recovery point).
    pub truncations: Vec<Truncation>,
    /// Whole segments removed because they followed a truncation.
    pub segments_removed: usize,
    /// Recovery point found in the checkpoint.
    pub recovery_point: i64,
    /// Bytes of segment files walked batch by batch; after a clean shutdown only the few bytes
    /// after the last index entry, after a crash about the data after the recovery point.
    pub bytes_scanned: u64,
}

/// A pending sync: the file to sync and the offset that will be durable after it.
#[derive(Debug, Clone)]
pub struct SyncTicket<F> {
    file: F,
    target_offset: i64,
}

impl<F: StorageFile> SyncTicket<F> {
    /// Runs the fsync. Does not need the log, so appends can go on meanwhile.
    ///
    /// # Errors
    /// The fsync's I/O error; pass it to [`PartitionLog::complete_sync`], which poisons the log.
    pub async fn run(&self) -> io::Result<()> {
        self.file.sync().await
    }

    /// The offset below which everything is durable once this sync completes.
    pub fn target_offset(&self) -> i64 {
        self.target_offset
    }
}

#[derive(Debug)]
struct ActiveSegment<F> {
    meta: SegmentMeta,
    paths: SegmentPaths,
    file: F,
    index: IndexBuilder,
    /// When the segment was created or opened; `segment_ms` falls back to it when batches carry
    /// no timestamps.
    created_ms: i64,
}

#[derive(Debug)]
struct ClosedHandle<F> {
    base_offset: i64,
    file: F,
    index: OffsetIndex,
    last_used: u64,
}

/// One partition's log. See the module docs for the calling protocol.
#[derive(Debug)]
pub struct PartitionLog<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    closed: BTreeMap<i64, SegmentMeta>,
    active: ActiveSegment<S::File>,
    closed_handles: Vec<ClosedHandle<S::File>>,
    use_counter: u64,
    tail_cache: TailCache,
    log_start_offset: i64,
    recovery_point: i64,
    durable_offset: i64,
    unsynced_records: u64,
    last_sync_ms: i64,
    poisoned: Option<String>,
}

fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::io(context(), source)
}

impl<S: Storage> PartitionLog<S> {
    /// Opens the partition in `dir`, creating it if needed, and recovers it: segments below the
    /// recovery point are trusted and their indexes loaded; from the recovery point on every
    /// batch is CRC-checked and a torn or corrupt tail is cut. Ends with a checkpoint, so the
    /// next open has nothing to recover.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when data below the recovery point is damaged,
    /// [`StorageError::InvalidConfig`], or an I/O error.
    pub async fn open(
        storage: S,
        dir: impl Into<PathBuf>,
        config: LogConfig,
        now_ms: i64,
    ) -> StorageResult<(PartitionLog<S>, OpenReport)> {
        config.validate().map_err(StorageError::InvalidConfig)?;
        let dir = dir.into();
        storage
            .create_dir_all(&dir)
            .await
            .map_err(io_error(|| format!("creating {}", dir.display())))?;
        let names = storage
            .list(&dir)
            .await
            .map_err(io_error(|| format!("listing {}", dir.display())))?;
        for name in names.iter().filter(|name| name.ends_with(".tmp")) {
            let path = dir.join(name);
            storage
                .remove(&path)
                .await
                .map_err(io_error(|| format!("removing {}", path.display())))?;
        }
        let checkpoint = read_checkpoint(&storage, &dir).await?;
        let recovery_point = checkpoint.recovery_point;
        let bases: Vec<i64> = names
            .iter()
            .filter_map(|name| parse_file_name(name, LOG_SUFFIX))
            .collect();
        for name in &names {
            let base = parse_file_name(name, INDEX_SUFFIX)
                .or_else(|| parse_file_name(name, TIME_INDEX_SUFFIX));
            if let Some(base) = base {
                if bases.binary_search(&base).is_err() {
                    let path = dir.join(name);
                    info!(path = %path.display(), "removing index without a segment");
                    storage
                        .remove(&path)
                        .await
                        .map_err(io_error(|| format!("removing {}", path.display())))?;
                }
            }
        }

        let mut report = OpenReport {
            recovery_point,
            ..OpenReport::default()
        };
        let mut closed = BTreeMap::new();
        let mut active = None;
        let mut index = 0;
        while index < bases.len() {
            let base = bases[index];
            let next_base = bases.get(index + 1).copied();
            let paths = SegmentPaths::new(&dir, base);
            let file = storage
                .open(&paths.log, OpenMode::Existing)
                .await
                .map_err(io_error(|| format!("opening {}", paths.log.display())))?;
            if let Some(next_base) = next_base.filter(|&next_base| next_base <= recovery_point) {
                let meta = open_trusted_segment(
                    &storage,
                    &config,
                    &paths,
                    &file,
                    next_base,
                    recovery_point,
                    &mut report,
                )
                .await?;
                file.close()
                    .await
                    .map_err(io_error(|| format!("closing {}", paths.log.display())))?;
                closed.insert(base, meta);
                report.segments_trusted += 1;
                index += 1;
                continue;
            }
            let (mut builder, mut meta) =
                resume_point(&storage, &config, &paths, &file, base, recovery_point).await;
            let start_position = meta.size_bytes;
            if start_position == 0 {
                meta = SegmentMeta::empty(base);
            }
            let stop = walk_segment(
                &file,
                &paths.log,
                start_position,
                recovery_point,
                &mut builder,
                &mut meta,
            )
            .await?;
            report.bytes_scanned += meta.size_bytes - start_position;
            let mut truncated = false;
            match stop {
                WalkStop::CleanEnd => {}
                WalkStop::ZeroPadding { position } => {
                    debug!(segment = %paths.log.display(), position, "cutting zero padding");
                    truncate_file(&file, &paths.log, position).await?;
                }
                WalkStop::Torn { position, reason } => {
                    let bytes_removed = file.len() - position;
                    warn!(
                        segment = %paths.log.display(),
                        position,
                        bytes_removed,
                        reason = %reason,
                        "truncating torn or corrupt log tail"
                    );
                    truncate_file(&file, &paths.log, position).await?;
                    report.truncations.push(Truncation {
                        segment: paths.log.clone(),
                        position,
                        bytes_removed,
                        reason,
                    });
                    truncated = true;
                }
            }
            let is_last = next_base.is_none() || truncated;
            if is_last {
                if let Some(next_base) = next_base {
                    // Segments after a cut tail would leave a gap in the offsets: remove them.
                    for &later in &bases[index + 1..] {
                        remove_segment_files(&storage, &SegmentPaths::new(&dir, later)).await?;
                        report.segments_removed += 1;
                    }
                    warn!(
                        from_base_offset = next_base,
                        "removed segments after a truncated tail"
                    );
                }
                meta.first_batch_timestamp =
                    first_batch_timestamp(&file, &paths.log, &meta).await?;
                file.expect_appends();
                active = Some(ActiveSegment {
                    meta,
                    paths,
                    file,
                    index: builder,
                    created_ms: now_ms,
                });
                break;
            }
            let next_base = next_base.expect("not the last segment");
            if meta.next_offset != next_base {
                return Err(StorageError::Corrupt {
                    segment: paths.log.clone(),
                    position: meta.size_bytes,
                    reason: format!(
                        "segment ends at offset {} but the next segment starts at {next_base}",
                        meta.next_offset
                    ),
                });
            }
            write_index_files(&storage, &paths, &builder, &meta).await?;
            report.indexes_rebuilt += 1;
            file.close()
                .await
                .map_err(io_error(|| format!("closing {}", paths.log.display())))?;
            closed.insert(base, meta);
            index += 1;
        }

        let active = match active {
            Some(active) => active,
            None => {
                let base = checkpoint.log_start_offset;
                let paths = SegmentPaths::new(&dir, base);
                let file = storage
                    .open(&paths.log, OpenMode::CreateNew)
                    .await
                    .map_err(io_error(|| format!("creating {}", paths.log.display())))?;
                file.expect_appends();
                storage
                    .sync_dir(&dir)
                    .await
                    .map_err(io_error(|| format!("syncing {}", dir.display())))?;
                ActiveSegment {
                    meta: SegmentMeta::empty(base),
                    paths,
                    file,
                    index: IndexBuilder::new(config.index_interval_bytes),
                    created_ms: now_ms,
                }
            }
        };
        let log_end_offset = active.meta.next_offset;
        if recovery_point > log_end_offset {
            return Err(StorageError::Corrupt {
                segment: active.paths.log.clone(),
                position: active.meta.size_bytes,
                reason: format!(
                    "the log ends at offset {log_end_offset} but offsets up to {recovery_point} \
                     were checkpointed as durable"
                ),
            });
        }
        let first_base = closed
            .keys()
            .next()
            .copied()
            .unwrap_or(active.meta.base_offset);
        let log_start_offset = checkpoint
            .log_start_offset
            .max(first_base)
            .min(log_end_offset);
        report.segments = closed.len() + 1;
        let mut log = PartitionLog {
            tail_cache: TailCache::new(config.tail_cache_bytes),
            storage,
            dir,
            config,
            closed,
            active,
            closed_handles: Vec::new(),
            use_counter: 0,
            log_start_offset,
            recovery_point,
            durable_offset: recovery_point,
            unsynced_records: 0,
            last_sync_ms: now_ms,
            poisoned: None,
        };
        log.checkpoint(now_ms).await?;
        info!(
            dir = %log.dir.display(),
            log_start_offset = log.log_start_offset,
            log_end_offset = log.log_end_offset(),
            segments = report.segments,
            truncations = report.truncations.len(),
            "partition log opened"
        );
        Ok((log, report))
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First readable offset.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.active.meta.next_offset
    }

    /// Offsets below this are synced to disk.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset
    }

    /// Offsets below this are synced and recorded in the checkpoint file.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.closed
            .values()
            .map(|meta| meta.size_bytes)
            .sum::<u64>()
            + self.active.meta.size_bytes
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.closed
            .keys()
            .copied()
            .chain(std::iter::once(self.active.meta.base_offset))
            .collect()
    }

    /// Whether an earlier write or sync failure poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poison(&self) -> StorageResult<()> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: StorageError) -> StorageError {
        warn!(dir = %self.dir.display(), error = %error, "partition log poisoned");
        if self.poisoned.is_none() {
            self.poisoned = Some(error.to_string());
        }
        error
    }

    /// Appends `records`, one or more whole v2 batches as a producer sent them. Every batch is
    /// validated first (nothing is written if one is refused); then base offsets and the leader
    /// epoch are patched in (and the max timestamp for `LogAppendTime` topics, or for an
    /// uncompressed batch whose header disagrees with its records) and the bytes are written
    /// with one write. Not durable until a sync; see [`AppendInfo::sync_due`].
    ///
    /// # Errors
    /// [`StorageError::InvalidBatch`] or [`StorageError::BatchTooLarge`] for refused input (the log
    /// is unchanged), [`StorageError::Poisoned`] after an earlier failure, or an I/O error (which
    /// poisons the log).
    pub async fn append(
        &mut self,
        mut records: BytesMut,
        partition_leader_epoch: i32,
        now_ms: i64,
    ) -> StorageResult<AppendInfo> {
        self.check_poison()?;
        let batches = self.validate_batches(&records)?;
        let records_count: u64 = batches
            .iter()
            .map(|batch| batch.validated.header.records_count as u64)
            .sum();
        let incoming_max_timestamp = batches
            .iter()
            .map(|batch| batch.validated.header.max_timestamp)
            .max()
            .unwrap_or(-1);
        self.maybe_roll(
            now_ms,
            records.len() as u64,
            records_count,
            incoming_max_timestamp,
        )
        .await?;

        let base_offset = self.active.meta.next_offset;
        let log_append_time_ms = match self.config.message_timestamp_type {
            TimestampType::LogAppendTime => now_ms,
            TimestampType::CreateTime => -1,
        };
        let mut next_offset = base_offset;
        let mut max_timestamps = Vec::with_capacity(batches.len());
        for batch in &batches {
            let bytes = &mut records[batch.position..batch.position + batch.size];
            batch::set_base_offset(bytes, next_offset);
            batch::set_partition_leader_epoch(bytes, partition_leader_epoch);
            let header = &batch.validated.header;
            let max_timestamp = match self.config.message_timestamp_type {
                TimestampType::LogAppendTime => {
                    batch::set_max_timestamp(bytes, TimestampType::LogAppendTime, now_ms);
                    now_ms
                }
                TimestampType::CreateTime => {
                    let of_records = batch.validated.max_timestamp_of_records;
                    if batch.validated.codec == Codec::None && of_records != header.max_timestamp {
                        batch::set_max_timestamp(bytes, TimestampType::CreateTime, of_records);
                    }
                    if batch.validated.codec == Codec::None {
                        of_records
                    } else {
                        header.max_timestamp
                    }
                }
            };
            max_timestamps.push(max_timestamp);
            next_offset += i64::from(header.last_offset_delta) + 1;
        }
        let records = records.freeze();

        let position = self.active.meta.size_bytes;
        if let Err(source) = self.active.file.write_at(position, &records).await {
            let error = StorageError::io(
                format!(
                    "writing {} at byte {position}",
                    self.active.paths.log.display()
                ),
                source,
            );
            return Err(self.poison(error));
        }
        for (batch, max_timestamp) in batches.iter().zip(max_timestamps) {
            let header = &batch.validated.header;
            let batch_base = self.active.meta.next_offset;
            let batch_next = batch_base + i64::from(header.last_offset_delta) + 1;
            let batch_position = position + batch.position as u64;
            self.active.index.observe(
                relative(&self.active.meta, batch_base),
                u32::try_from(batch_position).expect("segment positions fit in u32"),
                max_timestamp,
                batch.size as u64,
            );
            self.active.meta.observe_batch(
                batch_base,
                batch_next,
                max_timestamp,
                batch.size as u64,
            );
            self.tail_cache.push(
                batch_base,
                batch_next,
                records.slice(batch.position..batch.position + batch.size),
            );
        }
        assert_eq!(
            self.active.meta.next_offset, next_offset,
            "offsets assigned densely"
        );
        self.unsynced_records += records_count;
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            log_append_time_ms,
            records_count,
            batches_count: batches.len(),
            sync_due: self.sync_due(now_ms),
        })
    }

    fn validate_batches(&self, records: &[u8]) -> StorageResult<Vec<IncomingBatch>> {
        let mut batches = Vec::new();
        let mut position = 0;
        let invalid = |position, source| StorageError::InvalidBatch { position, source };
        if records.is_empty() {
            return Err(invalid(
                0,
                batch::BatchError::Truncated {
                    available: 0,
                    needed: BATCH_HEADER_BYTES,
                },
            ));
        }
        let limit_bytes =
            (self.config.max_message_bytes as usize).min(self.config.segment_bytes as usize);
        while position < records.len() {
            let (_, size) = batch::peek_base_offset_and_size(&records[position..])
                .map_err(|source| invalid(position, source))?;
            if size > limit_bytes {
                return Err(StorageError::BatchTooLarge {
                    size_bytes: size,
                    limit_bytes,
                });
            }
            if position + size > records.len() {
                return Err(invalid(
                    position,
                    batch::BatchError::Truncated {
                        available: records.len() - position,
                        needed: size,
                    },
                ));
            }
            let validated = batch::validate(&records[position..position + size])
                .map_err(|source| invalid(position, source))?;
            batches.push(IncomingBatch {
                position,
                size,
                validated,
            });
            position += size;
        }
        if records.len() > self.config.segment_bytes as usize {
            return Err(StorageError::BatchTooLarge {
                size_bytes: records.len(),
                limit_bytes: self.config.segment_bytes as usize,
            });
        }
        Ok(batches)
    }

    /// Whether the flush policy wants a sync now.
    pub fn sync_due(&self, now_ms: i64) -> bool {
        self.unsynced_records > 0
            && (self.unsynced_records >= self.config.flush_messages
                || now_ms.saturating_sub(self.last_sync_ms) >= self.config.flush_ms)
    }

    async fn maybe_roll(
        &mut self,
        now_ms: i64,
        incoming_bytes: u64,
        incoming_records: u64,
        incoming_max_timestamp: i64,
    ) -> StorageResult<()> {
        let meta = &self.active.meta;
        if meta.is_empty() {
            return Ok(());
        }
        let too_big = meta.size_bytes + incoming_bytes > u64::from(self.config.segment_bytes);
        let index_full = self.active.index.is_full(self.config.index_entries_max());
        let age_ms = if meta.first_batch_timestamp >= 0 && incoming_max_timestamp >= 0 {
            incoming_max_timestamp - meta.first_batch_timestamp
        } else {
            now_ms - self.active.created_ms
        };
        let too_old = age_ms >= self.config.segment_ms;
        let offsets_overflow =
            meta.next_offset + incoming_records as i64 - meta.base_offset > i64::from(u32::MAX);
        if too_big || index_full || too_old || offsets_overflow {
            self.roll(now_ms).await?;
        }
        Ok(())
    }

    /// Closes the active segment and starts a new one at the log end offset: syncs the segment,
    /// writes its indexes, creates the new file and checkpoints. Does nothing when the active
    /// segment is empty.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn roll(&mut self, now_ms: i64) -> StorageResult<()> {
        self.check_poison()?;
        if self.active.meta.is_empty() {
            return Ok(());
        }
        match self.roll_inner(now_ms).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.poison(error)),
        }
    }

    async fn roll_inner(&mut self, now_ms: i64) -> StorageResult<()> {
        // Cut the space the backend reserved ahead of appends; the flush makes the cut durable
        // with the data, so closed segments end exactly at their last batch.
        let active_path = self.active.paths.log.clone();
        self.active
            .file
            .truncate(self.active.meta.size_bytes)
            .await
            .map_err(io_error(|| format!("truncating {}", active_path.display())))?;
        self.active
            .file
            .sync()
            .await
            .map_err(io_error(|| format!("syncing {}", active_path.display())))?;
        self.flush(now_ms).await?;
        write_index_files(
            &self.storage,
            &self.active.paths,
            &self.active.index,
            &self.active.meta,
        )
        .await?;
        let new_base = self.active.meta.next_offset;
        let paths = SegmentPaths::new(&self.dir, new_base);
        let file = self
            .storage
            .open(&paths.log, OpenMode::CreateNew)
            .await
            .map_err(io_error(|| format!("creating {}", paths.log.display())))?;
        file.expect_appends();
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(io_error(|| format!("syncing {}", self.dir.display())))?;
        let old = std::mem::replace(
            &mut self.active,
            ActiveSegment {
                meta: SegmentMeta::empty(new_base),
                paths,
                file,
                index: IndexBuilder::new(self.config.index_interval_bytes),
                created_ms: now_ms,
            },
        );
        debug!(
            base_offset = old.meta.base_offset,
            next_offset = new_base,
            "segment rolled"
        );
        self.closed.insert(old.meta.base_offset, old.meta);
        let handle = ClosedHandle {
            base_offset: old.meta.base_offset,
            file: old.file,
            index: old.index.offset_index,
            last_used: 0,
        };
        self.insert_closed_handle(handle).await;
        self.write_checkpoint(new_base).await?;
        Ok(())
    }

    /// Starts a sync of everything appended so far. Run the ticket, then pass its result to
    /// [`PartitionLog::complete_sync`].
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after an earlier failure.
    pub fn begin_sync(&self) -> StorageResult<SyncTicket<S::File>> {
        self.check_poison()?;
        Ok(SyncTicket {
            file: self.active.file.clone(),
            target_offset: self.log_end_offset(),
        })
    }

    /// Records the outcome of a sync. A failed sync poisons the log.
    ///
    /// # Errors
    /// The sync's error, as [`StorageError::Io`]; later calls get [`StorageError::Poisoned`].
    pub fn complete_sync(
        &mut self,
        ticket: SyncTicket<S::File>,
        result: io::Result<()>,
        now_ms: i64,
    ) -> StorageResult<()> {
        if let Err(source) = result {
            let error = StorageError::io(format!("syncing {}", self.dir.display()), source);
            return Err(self.poison(error));
        }
        self.check_poison()?;
        assert!(ticket.target_offset <= self.log_end_offset());
        if ticket.target_offset > self.durable_offset {
            self.durable_offset = ticket.target_offset;
        }
        if self.durable_offset == self.log_end_offset() {
            self.unsynced_records = 0;
        }
        self.last_sync_ms = now_ms;
        Ok(())
    }

    /// Makes everything appended so far durable.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn flush(&mut self, now_ms: i64) -> StorageResult<()> {
        let ticket = self.begin_sync()?;
        if ticket.target_offset == self.durable_offset {
            return Ok(());
        }
        let result = ticket.run().await;
        self.complete_sync(ticket, result, now_ms)
    }

    /// Syncs, writes the active segment's indexes and records the log end as the recovery point,
    /// so that the next open trusts everything up to here.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn checkpoint(&mut self, now_ms: i64) -> StorageResult<()> {
        self.check_poison()?;
        let result = async {
            self.flush(now_ms).await?;
            write_index_files(
                &self.storage,
                &self.active.paths,
                &self.active.index,
                &self.active.meta,
            )
            .await?;
            self.write_checkpoint(self.log_end_offset()).await
        }
        .await;
        result.map_err(|error| self.poison(error))
    }

    async fn write_checkpoint(&mut self, recovery_point: i64) -> StorageResult<()> {
        assert!(
            recovery_point <= self.durable_offset,
            "checkpoint only durable data"
        );
        let checkpoint = Checkpoint {
            recovery_point,
            log_start_offset: self.log_start_offset,
        };
        let path = self.dir.join(CHECKPOINT_FILE_NAME);
        write_file_atomically(&self.storage, &path, &checkpoint.encode())
            .await
            .map_err(io_error(|| format!("writing {}", path.display())))?;
        self.recovery_point = recovery_point;
        Ok(())
    }

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

    /// Deletes closed segments that retention no longer keeps: those whose newest record is
    /// older than `retention_ms`, then the oldest while the partition is over
    /// `retention_bytes`, and any that lie wholly below the log start offset. The active segment
    /// is never deleted. Returns the number of segments deleted.
    ///
    /// # Errors
    /// An I/O error removing files.
    pub async fn apply_retention(&mut self, now_ms: i64) -> StorageResult<usize> {
        self.check_poison()?;
        let mut size_bytes = self.size_bytes();
        let mut deleted = 0;
        while let Some((&base_offset, &meta)) = self.closed.first_key_value() {
            let expired = self.config.retention_ms >= 0
                && meta.max_timestamp >= 0
                && now_ms - meta.max_timestamp > self.config.retention_ms;
            let over_size = self.config.retention_bytes >= 0
                && size_bytes - meta.size_bytes >= self.config.retention_bytes as u64;
            let below_start = meta.next_offset <= self.log_start_offset;
            if !(expired || over_size || below_start) {
                break;
            }
            self.closed.remove(&base_offset);
            self.closed_handles
                .retain(|handle| handle.base_offset != base_offset);
            self.log_start_offset = self.log_start_offset.max(meta.next_offset);
            size_bytes -= meta.size_bytes;
            remove_segment_files(&self.storage, &SegmentPaths::new(&self.dir, base_offset)).await?;
            info!(
                base_offset,
                expired, over_size, "segment deleted by retention"
            );
            deleted += 1;
        }
        assert!(self.log_start_offset <= self.log_end_offset());
        Ok(deleted)
    }

    /// Moves the log start offset up to `before_offset` (Kafka's DeleteRecords): records below it
    /// are no longer readable, the new start is made durable, and closed segments wholly below
    /// it are deleted. Returns the new log start offset.
    ///
    /// # Errors
    /// [`StorageError::OffsetOutOfRange`] past the log end, or an I/O error.
    pub async fn delete_records(&mut self, before_offset: i64) -> StorageResult<i64> {
        self.check_poison()?;
        let log_end_offset = self.log_end_offset();
        if before_offset > log_end_offset || before_offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset: before_offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if before_offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        self.log_start_offset = before_offset;
        if let Err(error) = self.write_checkpoint(self.recovery_point).await {
            return Err(self.poison(error));
        }
        // Retention deletes exactly the closed segments below the new start; `i64::MIN` as now
        // keeps time- and size-based retention out of it.
        let config = self.config.clone();
        self.config.retention_ms = -1;
        self.config.retention_bytes = -1;
        let deleted = self.apply_retention(i64::MIN).await;
        self.config = config;
        deleted?;
        Ok(self.log_start_offset)
    }

    /// Checkpoints and closes the log, so that the next open trusts all of it.
    ///
    /// # Errors
    /// An I/O error; the data is then recovered at the next open.
    pub async fn close(mut self, now_ms: i64) -> StorageResult<()> {
        self.checkpoint(now_ms).await?;
        for handle in self.closed_handles.drain(..) {
            handle
                .file
                .close()
                .await
                .map_err(io_error(|| "closing a segment".to_string()))?;
        }
        let path = self.active.paths.log.clone();
        self.active
            .file
            .close()
            .await
            .map_err(io_error(|| format!("closing {}", path.display())))
    }

    async fn closed_handle(&mut self, base_offset: i64) -> StorageResult<&ClosedHandle<S::File>> {
        self.use_counter += 1;
        let use_counter = self.use_counter;
        if let Some(found) = self
            .closed_handles
            .iter()
            .position(|handle| handle.base_offset == base_offset)
        {
            self.closed_handles[found].last_used = use_counter;
            return Ok(&self.closed_handles[found]);
        }
        let paths = SegmentPaths::new(&self.dir, base_offset);
        let file = self
            .storage
            .open(&paths.log, OpenMode::Existing)
            .await
            .map_err(io_error(|| format!("opening {}", paths.log.display())))?;
        let index = match read_whole_file(&self.storage, &paths.index).await {
            Ok(bytes) => OffsetIndex::decode(&bytes).ok(),
            Err(_) => None,
        };
        let index = match index {
            Some(index) => index,
            None => {
                warn!(index = %paths.index.display(), "offset index unreadable; rebuilding it");
                let meta = self.closed[&base_offset];
                let mut builder = IndexBuilder::new(self.config.index_interval_bytes);
                let mut rebuilt = SegmentMeta::empty(base_offset);
                walk_segment(
                    &file,
                    &paths.log,
                    0,
                    self.recovery_point,
                    &mut builder,
                    &mut rebuilt,
                )
                .await?;
                write_index_files(&self.storage, &paths, &builder, &meta).await?;
                builder.offset_index
            }
        };
        self.insert_closed_handle(ClosedHandle {
            base_offset,
            file,
            index,
            last_used: use_counter,
        })
        .await;
        Ok(self
            .closed_handles
            .iter()
            .find(|handle| handle.base_offset == base_offset)
            .expect("just inserted"))
    }

    async fn insert_closed_handle(&mut self, mut handle: ClosedHandle<S::File>) {
        self.use_counter += 1;
        handle.last_used = self.use_counter;
        if self.closed_handles.len() >= self.config.closed_segment_handles_max {
            let oldest = self
                .closed_handles
                .iter()
                .enumerate()
                .min_by_key(|(_, handle)| handle.last_used)
                .map(|(position, _)| position)
                .expect("not empty");
            let evicted = self.closed_handles.swap_remove(oldest);
            if let Err(error) = evicted.file.close().await {
                warn!(error = %error, "closing an evicted segment handle failed");
            }
        }
        self.closed_handles.push(handle);
    }
}

#[derive(Debug)]
struct IncomingBatch {
    position: usize,
    size: usize,
    validated: batch::ValidatedBatch,
}

async fn read_checkpoint<S: Storage>(storage: &S, dir: &Path) -> StorageResult<Checkpoint> {
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let empty = Checkpoint {
        recovery_point: 0,
        log_start_offset: 0,
    };
    if !storage.exists(&path).await {
        return Ok(empty);
    }
    let bytes = read_whole_file(storage, &path)
        .await
        .map_err(io_error(|| format!("reading {}", path.display())))?;
    match Checkpoint::decode(&bytes) {
        Some(checkpoint) => Ok(checkpoint),
        None => {
            warn!(path = %path.display(), "checkpoint damaged; recovering the whole log");
            Ok(empty)
        }
    }
}

/// Loads a segment wholly below the recovery point: its indexes are trusted, or rebuilt when
/// missing or damaged.
async fn open_trusted_segment<S: Storage>(
    storage: &S,
    config: &LogConfig,
    paths: &SegmentPaths,
    file: &S::File,
    next_base: i64,
    recovery_point: i64,
    report: &mut OpenReport,
) -> StorageResult<SegmentMeta> {
    let base = parse_base(paths);
    let loaded = load_indexes(storage, paths).await;
    if let Some((offset_index, time_index)) = loaded {
        let fits = offset_index
            .last()
            .is_none_or(|entry| u64::from(entry.position) < file.len());
        if fits {
            let (max_timestamp, offset_of_max_timestamp) =
                time_index.last().map_or((-1, base), |entry| {
                    (entry.timestamp, base + i64::from(entry.relative_offset))
                });
            return Ok(SegmentMeta {
                base_offset: base,
                next_offset: next_base,
                size_bytes: file.len(),
                max_timestamp,
                offset_of_max_timestamp,
                first_batch_timestamp: -1,
            });
        }
    }
    warn!(segment = %paths.log.display(), "index missing or damaged; rebuilding it from the log");
    let mut builder = IndexBuilder::new(config.index_interval_bytes);
    let mut meta = SegmentMeta::empty(base);
    let stop = walk_segment(file, &paths.log, 0, recovery_point, &mut builder, &mut meta).await?;
    if stop != WalkStop::CleanEnd || meta.next_offset != next_base {
        return Err(StorageError::Corrupt {
            segment: paths.log.clone(),
            position: meta.size_bytes,
            reason: format!(
                "segment below the recovery point ends at offset {} ({stop:?}), the next segment \
                 starts at {next_base}",
                meta.next_offset
            ),
        });
    }
    write_index_files(storage, paths, &builder, &meta).await?;
    report.indexes_rebuilt += 1;
    Ok(meta)
}

/// Where the walk of a segment at or after the recovery point starts: at the offset index entry
/// at or before the recovery point when the index files check out, else at the beginning.
async fn resume_point<S: Storage>(
    storage: &S,
    config: &LogConfig,
    paths: &SegmentPaths,
    file: &S::File,
    base: i64,
    recovery_point: i64,
) -> (IndexBuilder, SegmentMeta) {
    let fresh = (
        IndexBuilder::new(config.index_interval_bytes),
        SegmentMeta::empty(base),
    );
    if recovery_point <= base {
        return fresh;
    }
    let Some((mut offset_index, time_index)) = load_indexes(storage, paths).await else {
        return fresh;
    };
    offset_index.truncate_to_position(file.len());
    let target = u32::try_from(recovery_point - base).unwrap_or(u32::MAX);
    let (builder, position, start_relative) = IndexBuilder::resume(
        config.index_interval_bytes,
        offset_index,
        time_index,
        target,
    );
    let max_timestamp = builder.max_timestamp_so_far();
    let offset_of_max_timestamp = builder
        .time_index
        .last()
        .map_or(base, |entry| base + i64::from(entry.relative_offset));
    let meta = SegmentMeta {
        base_offset: base,
        next_offset: base + i64::from(start_relative),
        size_bytes: position,
        max_timestamp,
        offset_of_max_timestamp,
        first_batch_timestamp: -1,
    };
    (builder, meta)
}

fn parse_base(paths: &SegmentPaths) -> i64 {
    paths
        .log
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| parse_file_name(name, LOG_SUFFIX))
        .expect("segment paths are built from base offsets")
}

async fn load_indexes<S: Storage>(
    storage: &S,
    paths: &SegmentPaths,
) -> Option<(OffsetIndex, TimeIndex)> {
    let offset_bytes = read_whole_file(storage, &paths.index).await.ok()?;
    let time_bytes = read_whole_file(storage, &paths.time_index).await.ok()?;
    let offset_index = OffsetIndex::decode(&offset_bytes).ok()?;
    let time_index = TimeIndex::decode(&time_bytes).ok()?;
    Some((offset_index, time_index))
}

async fn write_index_files<S: Storage>(
    storage: &S,
    paths: &SegmentPaths,
    builder: &IndexBuilder,
    meta: &SegmentMeta,
) -> StorageResult<()> {
    write_file_atomically(storage, &paths.index, &builder.offset_index.encode())
        .await
        .map_err(io_error(|| format!("writing {}", paths.index.display())))?;
    write_file_atomically(
        storage,
        &paths.time_index,
        &builder.final_time_index(meta).encode(),
    )
    .await
    .map_err(io_error(|| {
        format!("writing {}", paths.time_index.display())
    }))
}

async fn remove_segment_files<S: Storage>(storage: &S, paths: &SegmentPaths) -> StorageResult<()> {
    for path in [&paths.log, &paths.index, &paths.time_index] {
        match storage.remove(path).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::io(
                    format!("removing {}", path.display()),
                    source,
                ));
            }
        }
    }
    Ok(())
}

async fn truncate_file<F: StorageFile>(file: &F, path: &Path, position: u64) -> StorageResult<()> {
    file.truncate(position)
        .await
        .map_err(io_error(|| format!("truncating {}", path.display())))?;
    file.sync()
        .await
        .map_err(io_error(|| format!("syncing {}", path.display())))
}

async fn first_batch_timestamp<F: StorageFile>(
    file: &F,
    path: &Path,
    meta: &SegmentMeta,
) -> StorageResult<i64> {
    if meta.is_empty() {
        return Ok(-1);
    }
    let bytes = file
        .read_at(0, BATCH_HEADER_BYTES)
        .await
        .map_err(io_error(|| format!("reading {}", path.display())))?;
    Ok(BatchHeader::parse(&bytes).map_or(-1, |header| header.max_timestamp))
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
