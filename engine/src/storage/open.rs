//! [`PartitionLog::open`]: opening a partition directory, with recovery.
//!
//! The policy is drawn in `docs/FORMAT.md`: segments wholly below the recovery point are
//! trusted and their indexes loaded; the segment holding the recovery point is walked from the
//! index entry before it; everything from the recovery point on is CRC-checked, and a torn or
//! corrupt tail is cut and reported; damage below the recovery point refuses to open.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::backend::{read_whole_file, read_whole_file_agreed, OpenMode, Storage, StorageFile};
use super::batch::{BatchHeader, BATCH_HEADER_BYTES};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use super::compaction::checkpoint::CleanerCheckpoint;
use super::compaction::{self, CLEANER_CHECKPOINT_FILE_NAME};
use super::config::LogConfig;
use super::epochs::{load_epochs, LoadedEpochs};
use super::error::{StorageError, StorageResult};
use super::index::{OffsetIndex, TimeIndex};
use super::log::{
    io_error, remove_segment_files, write_index_files, ActiveSegment, OpenReport, PartitionLog,
    Truncation,
};
use super::producers::ProducerStates;
use super::recovery::{walk_segment, IndexBuilder, WalkStop};
use super::segment::{
    parse_file_name, SegmentMeta, SegmentPaths, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use super::tail_cache::TailCache;
use super::verification::VerificationGuards;
use crate::replication::epoch_cache::LeaderEpochCache;

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
        let mut names = storage
            .list(&dir)
            .await
            .map_err(io_error(|| format!("listing {}", dir.display())))?;
        if compaction::clean::complete_interrupted(&storage, &dir, &names).await? {
            names = storage
                .list(&dir)
                .await
                .map_err(io_error(|| format!("listing {}", dir.display())))?;
        }
        for name in names.iter().filter(|name| name.ends_with(".tmp")) {
            let path = dir.join(name);
            storage
                .remove(&path)
                .await
                .map_err(io_error(|| format!("removing {}", path.display())))?;
        }
        let checkpoint = read_checkpoint(&storage, &dir).await?;
        let loaded_epochs = load_epochs(&storage, &dir).await;
        let (mut epochs, rebuild_epochs) = match loaded_epochs {
            LoadedEpochs::Loaded(epochs) => (epochs, false),
            LoadedEpochs::Rebuild => (LeaderEpochCache::new(), true),
        };
        let epochs_as_loaded = epochs.clone();
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
                Some(&mut epochs),
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
                    // The later segments go first, newest first and durably: cutting this
                    // tail while they remain would leave a gap in the offsets, which the next
                    // open refuses, if a crash came in between.
                    remove_later_segments(&storage, &dir, &bases[index + 1..], &mut report).await?;
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
            let lost_tail = |next_base: &i64| {
                !truncated && meta.next_offset < *next_base && meta.next_offset >= recovery_point
            };
            if let Some(next_base) = next_base.filter(lost_tail) {
                // A segment above the recovery point that lost its tail in a crash: a roll
                // created the next segment before this one was synced (see
                // `super::roll_finish`), so nothing from here on was durable.
                remove_later_segments(&storage, &dir, &bases[index + 1..], &mut report).await?;
                report.truncations.push(Truncation {
                    segment: paths.log.clone(),
                    position: meta.size_bytes,
                    bytes_removed: 0,
                    reason: format!(
                        "the segment ends at offset {} but the next one started at {next_base}",
                        meta.next_offset
                    ),
                });
                truncated = true;
            }
            let is_last = next_base.is_none() || truncated;
            if is_last {
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
            // A closed segment above the recovery point may never have been synced (a roll
            // seals it later, see `super::roll_finish`): what this walk read may still sit in
            // the page cache only, and the checkpoint that ends the open will count it durable.
            file.sync()
                .await
                .map_err(io_error(|| format!("syncing {}", paths.log.display())))?;
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
        let mut cleaner_checkpoint = read_cleaner_checkpoint(&storage, &dir).await;
        cleaner_checkpoint.first_dirty_offset = cleaner_checkpoint
            .first_dirty_offset
            .min(active.meta.next_offset);
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
            appended_records: 0,
            appended_bytes: 0,
            synced_records: 0,
            synced_bytes: 0,
            last_sync_ms: now_ms,
            poisoned: None,
            epochs,
            epochs_dirty: false,
            generation: 0,
            verification_guards: VerificationGuards::default(),
            producers: ProducerStates::new(),
            producer_snapshots: BTreeSet::new(),
            stale_producer_snapshots: Vec::new(),
            cleaner_checkpoint,
            retired: false,
            unfinished_rolls: VecDeque::new(),
            metadata_writes: 0,
        };
        if rebuild_epochs && log.log_end_offset() > log.log_start_offset {
            log.rebuild_epochs().await?;
        }
        let log_end_offset = log.log_end_offset();
        let log_start_offset = log.log_start_offset;
        log.epochs.truncate_from_end(log_end_offset);
        log.epochs.truncate_from_start(log_start_offset);
        // A rebuilt cache is written even when it came out empty, so the next open reads it
        // instead of scanning the log again.
        log.epochs_dirty = rebuild_epochs || log.epochs != epochs_as_loaded;
        log.load_producers(&names).await?;
        log.producers
            .expire(now_ms, log.config.producer_id_expiration_ms);
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
}

/// Removes the segments `later` (which follow a cut tail), newest first, and syncs the
/// directory.
async fn remove_later_segments<S: Storage>(
    storage: &S,
    dir: &Path,
    later: &[i64],
    report: &mut OpenReport,
) -> StorageResult<()> {
    let Some(&first) = later.first() else {
        return Ok(());
    };
    for &base in later.iter().rev() {
        remove_segment_files(storage, &SegmentPaths::new(dir, base)).await?;
        report.segments_removed += 1;
    }
    storage
        .sync_dir(dir)
        .await
        .map_err(io_error(|| format!("syncing {}", dir.display())))?;
    warn!(
        from_base_offset = first,
        "removed segments after a torn, corrupt or lost tail"
    );
    Ok(())
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
    let bytes = read_whole_file_agreed(storage, &path)
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
    let stop = walk_segment(
        file,
        &paths.log,
        0,
        recovery_point,
        &mut builder,
        &mut meta,
        None,
    )
    .await?;
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

/// The cleaner's checkpoint as last written; everything dirty (which is safe) when the file
/// is missing or unreadable.
async fn read_cleaner_checkpoint<S: Storage>(storage: &S, dir: &Path) -> CleanerCheckpoint {
    let path = dir.join(CLEANER_CHECKPOINT_FILE_NAME);
    match read_whole_file_agreed(storage, &path).await {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(CleanerCheckpoint::decode)
            .unwrap_or_else(|| {
                warn!(path = %path.display(), "cleaner checkpoint unreadable; the log is all dirty");
                CleanerCheckpoint::NONE
            }),
        Err(_) => CleanerCheckpoint::NONE,
    }
}
