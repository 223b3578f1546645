//! One cleaning pass over a partition log, in three steps so that appends and reads go on
//! while the cleaner reads and writes:
//!
//! 1. [`PartitionLog::plan_clean`] (holding the log): which closed segments, which part of
//!    them is dirty, what the producer state says about aborted transactions and batches it
//!    still needs.
//! 2. [`CleanPlan::execute`] (not holding the log): builds the key-to-latest-offset map over
//!    the dirty segments, then writes each group of segments, cleaned, to a new
//!    `<base>.log.cleaned` file.
//! 3. [`PartitionLog::finish_clean`] (holding the log): if no segment of the plan changed
//!    meanwhile, swaps the cleaned files in, crash-safely (see `docs/FORMAT.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::checkpoint::CleanerCheckpoint;
use super::filter::{self, CleanedBatch, TombstonePolicy};
use super::offset_map::OffsetMap;
use super::records::{parse_records, record_section};
use crate::replication::epoch_cache::LeaderEpochCache;
use crate::storage::backend::{OpenMode, ReadBuf, Storage, StorageFile};
use crate::storage::batch::{self, BatchHeader};
use crate::storage::error::{StorageError, StorageResult};
use crate::storage::log::{io_error, remove_if_present, write_index_files, PartitionLog};
use crate::storage::recovery::{relative, IndexBuilder};
use crate::storage::segment::{SegmentMeta, SegmentPaths, LOG_SUFFIX};

/// Suffix of a cleaned segment being written; removed at open.
pub(crate) const CLEANED_SUFFIX: &str = ".log.cleaned";
/// Suffix of a cleaned segment that replaces the segments it covers; completed at open.
pub(crate) const SWAP_SUFFIX: &str = ".log.swap";
/// File holding the first offset not yet cleaned (Kafka's cleaner offset checkpoint).
pub const CLEANER_CHECKPOINT_FILE_NAME: &str = "cleaner-offset-checkpoint";

/// Bytes read from a segment at a time when the pacer does not say.
const READ_WINDOW_BYTES: usize = 4 << 20;
/// Bytes of cleaned output gathered before a write.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// What the caller allows one pass.
#[derive(Debug, Clone, Copy)]
pub struct CleanRequest {
    /// The cleaner's time.
    pub now_ms: i64,
    /// Records at or above this offset are not cleaned: the last stable offset, which is at
    /// most the high watermark (the leader's records above it may still be truncated, and
    /// open transactions are not decided yet).
    pub upper_bound_offset: i64,
    /// Bytes the key-to-offset map may take (`log.cleaner.dedupe.buffer.size`); at least one
    /// dirty segment is always taken, even when its keys need more.
    pub offset_map_bytes_max: usize,
    /// Clean even when the dirty ratio is below `min.cleanable.dirty.ratio`.
    pub force: bool,
}

/// How dirty a log is: what a pass would clean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dirtiness {
    /// First offset not cleaned yet.
    pub first_dirty_offset: i64,
    /// End of what may be cleaned now (a segment base).
    pub end_offset: i64,
    /// Bytes of segments already cleaned.
    pub clean_bytes: u64,
    /// Bytes of dirty segments below `end_offset`.
    pub dirty_bytes: u64,
    /// Whether `max.compaction.lag.ms` forces a pass regardless of the ratio.
    pub overdue: bool,
    /// Whether a tombstone kept in the cleaned part has passed its delete horizon: a pass is
    /// due to remove it even when nothing is dirty (a topic no longer written to).
    pub tombstones_due: bool,
}

impl Dirtiness {
    /// Dirty bytes over all bytes the pass would read.
    pub fn ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// First dirty offset before the pass.
    pub first_dirty_offset: i64,
    /// First dirty offset after it.
    pub end_offset: i64,
    /// Segments read and replaced.
    pub segments_before: usize,
    /// Segments written in their place.
    pub segments_after: usize,
    /// Bytes of the replaced segments.
    pub bytes_before: u64,
    /// Bytes of the segments written.
    pub bytes_after: u64,
    /// Records removed.
    pub records_removed: u64,
    /// The log changed under the pass (a truncation, or a retention deletion of part of a
    /// group): the first dirty offset did not move, and the next pass starts again (groups
    /// before the one the change touched may have been swapped in).
    pub abandoned: bool,
}

/// Paces the cleaner's I/O (`log.cleaner.io.max.bytes.per.second`).
#[allow(async_fn_in_trait)] // thread-per-core: the cleaner's futures never leave their core.
pub trait Pacer {
    /// Called after `bytes` were read or written; waits as long as the rate requires.
    async fn pace(&mut self, bytes: u64);

    /// Bytes to read at a time: large reads are faster, small ones keep the disk free for
    /// appends sooner.
    fn read_window_bytes(&self) -> usize {
        READ_WINDOW_BYTES
    }
}

/// No pacing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpaced;

impl Pacer for Unpaced {
    async fn pace(&mut self, _bytes: u64) {}
}

#[derive(Debug, Clone)]
struct PlannedSegment<F> {
    meta: SegmentMeta,
    file: F,
    path: PathBuf,
}

impl<F: StorageFile> PlannedSegment<F> {
    fn corrupt_at(&self, position: u64, reason: String) -> StorageError {
        StorageError::Corrupt {
            segment: self.path.clone(),
            position,
            reason,
        }
    }

    /// `want` bytes from `position`, reported to the pacer; a short read is corruption (the
    /// segment's size was recorded when it closed).
    async fn read_paced(
        &self,
        position: u64,
        want: usize,
        pacer: &mut impl Pacer,
    ) -> StorageResult<F::Buf> {
        let read = self
            .file
            .read_at(position, want)
            .await
            .map_err(io_error(|| format!("reading {}", self.path.display())))?;
        pacer.pace(read.len() as u64).await;
        if read.len() < want {
            return Err(self.corrupt_at(position, "the segment is shorter than recorded".into()));
        }
        Ok(read)
    }
}

/// A pass planned by [`PartitionLog::plan_clean`]; run it with [`CleanPlan::execute`].
#[derive(Debug)]
pub struct CleanPlan<S: Storage> {
    storage: S,
    dir: PathBuf,
    generation: u64,
    /// Closed segments from the first one to `end_offset`, oldest first.
    segments: Vec<PlannedSegment<S::File>>,
    /// Index in `segments` of the first dirty segment.
    first_dirty_segment: usize,
    first_dirty_offset: i64,
    tombstones: TombstonePolicy,
    offset_map_bytes_max: usize,
    segment_bytes_max: u64,
    index_interval_bytes: u32,
    index_entries_max: usize,
    /// Aborted transactions by producer: (first offset, marker offset).
    aborted: BTreeMap<i64, Vec<(i64, i64)>>,
    /// First offsets of the batches producers' sequence state remembers.
    remembered_batches: BTreeSet<i64>,
    /// Each known producer's last batch or marker offset.
    producer_last_offsets: BTreeSet<i64>,
    /// The leader epoch cache when the pass was planned, for checking the epochs read.
    epochs: LeaderEpochCache,
}

/// Cleaned segments written by [`CleanPlan::execute`], ready to swap in.
#[derive(Debug)]
pub struct CleanOutput {
    groups: Vec<CleanedGroup>,
    end_offset: i64,
    records_removed: u64,
    /// The earliest delete horizon still ahead among the batches written.
    tombstone_horizon_ms: Option<i64>,
}

#[derive(Debug)]
struct CleanedGroup {
    /// Base offsets of the segments it replaces, oldest first (the first is its own).
    replaced: Vec<SegmentMeta>,
    meta: SegmentMeta,
    index: IndexBuilder,
    cleaned_path: PathBuf,
}

impl<S: Storage> PartitionLog<S> {
    /// The first offset not cleaned yet.
    pub fn first_dirty_offset(&self) -> i64 {
        self.cleaner_checkpoint
            .first_dirty_offset
            .max(self.log_start_offset)
    }

    /// The earliest delete horizon of a tombstone kept in the cleaned part, if any.
    pub fn tombstone_horizon_ms(&self) -> Option<i64> {
        self.cleaner_checkpoint.tombstone_horizon_ms
    }

    /// What a pass would clean now, or `None` when the log is not compacted or nothing is
    /// dirty below the bounds.
    pub fn dirtiness(&self, request: &CleanRequest) -> Option<Dirtiness> {
        if !self.config.cleanup_policy.compact {
            return None;
        }
        let first_dirty_offset = self.first_dirty_offset();
        let limit = request
            .upper_bound_offset
            .min(self.first_unstable_offset().unwrap_or(i64::MAX))
            .min(self.recovery_point)
            .min(self.first_unfinished_base());
        let lag_cutoff = request
            .now_ms
            .saturating_sub(self.config.min_compaction_lag_ms);
        let mut end_offset = None;
        let mut clean_bytes = 0;
        let mut dirty_bytes = 0;
        let mut first_dirty_timestamp = None;
        for meta in self.closed.values() {
            if meta.next_offset <= self.log_start_offset {
                continue;
            }
            let too_young =
                self.config.min_compaction_lag_ms > 0 && meta.max_timestamp > lag_cutoff;
            if meta.next_offset > limit || too_young {
                break;
            }
            end_offset = Some(meta.next_offset);
            if meta.next_offset <= first_dirty_offset {
                clean_bytes += meta.size_bytes;
            } else {
                dirty_bytes += meta.size_bytes;
                // A segment opened below the recovery point does not know its first
                // batch's timestamp; its largest is a later bound, so overdue comes later,
                // never early.
                let timestamp = if meta.first_batch_timestamp >= 0 {
                    meta.first_batch_timestamp
                } else {
                    meta.max_timestamp
                };
                first_dirty_timestamp.get_or_insert(timestamp);
            }
        }
        let end_offset = end_offset?;
        let tombstones_due = clean_bytes > 0
            && self
                .tombstone_horizon_ms()
                .is_some_and(|horizon| horizon <= request.now_ms);
        if (end_offset <= first_dirty_offset || dirty_bytes == 0) && !tombstones_due {
            return None;
        }
        let overdue = first_dirty_timestamp.is_some_and(|timestamp| {
            timestamp >= 0
                && request.now_ms.saturating_sub(timestamp) > self.config.max_compaction_lag_ms
        });
        Some(Dirtiness {
            first_dirty_offset,
            end_offset,
            clean_bytes,
            dirty_bytes,
            overdue,
            tombstones_due,
        })
    }

    /// Plans a pass, or `None` when there is nothing to clean or the log is not dirty enough
    /// (below `min.cleanable.dirty.ratio`, unless forced or overdue).
    ///
    /// # Errors
    /// [`StorageError::Poisoned`], or an I/O error opening a segment.
    pub async fn plan_clean(
        &mut self,
        request: &CleanRequest,
    ) -> StorageResult<Option<CleanPlan<S>>> {
        self.check_poison()?;
        let Some(dirtiness) = self.dirtiness(request) else {
            return Ok(None);
        };
        if !request.force
            && !dirtiness.overdue
            && !dirtiness.tombstones_due
            && dirtiness.ratio() < self.config.min_cleanable_dirty_ratio.0
        {
            return Ok(None);
        }
        let metas: Vec<SegmentMeta> = self
            .closed
            .values()
            .filter(|meta| {
                meta.next_offset > self.log_start_offset && meta.next_offset <= dirtiness.end_offset
            })
            .copied()
            .collect();
        let mut segments = Vec::with_capacity(metas.len());
        for meta in metas {
            let path = SegmentPaths::new(&self.dir, meta.base_offset).log;
            // An open handle if there is one; otherwise the file alone (the cleaner needs no
            // index, and loading one would hold the log longer and evict readers' handles).
            let cached = self
                .closed_handles
                .iter()
                .find(|handle| handle.base_offset == meta.base_offset)
                .map(|handle| handle.file.clone());
            let file = match cached {
                Some(file) => file,
                None => self
                    .storage
                    .open(&path, OpenMode::Existing)
                    .await
                    .map_err(io_error(|| format!("opening {}", path.display())))?,
            };
            segments.push(PlannedSegment { meta, file, path });
        }
        // None dirty when the pass is only for tombstones past their horizon.
        let first_dirty_segment = segments
            .iter()
            .position(|segment| segment.meta.next_offset > dirtiness.first_dirty_offset)
            .unwrap_or(segments.len());
        let mut aborted: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
        for txn in self.producers.aborted_transactions() {
            aborted
                .entry(txn.producer_id)
                .or_default()
                .push((txn.first_offset, txn.last_offset));
        }
        let remembered_batches = self
            .producers
            .remembered_batch_offsets()
            .filter(|&offset| offset < dirtiness.end_offset)
            .collect();
        let producer_last_offsets = self.producers.last_offsets().collect();
        Ok(Some(CleanPlan {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            generation: self.generation,
            segments,
            first_dirty_segment,
            first_dirty_offset: dirtiness.first_dirty_offset,
            tombstones: TombstonePolicy {
                now_ms: request.now_ms,
                delete_retention_ms: self.config.delete_retention_ms,
            },
            offset_map_bytes_max: request.offset_map_bytes_max,
            segment_bytes_max: u64::from(self.config.segment_bytes),
            index_interval_bytes: self.config.index_interval_bytes,
            index_entries_max: self.config.index_entries_max(),
            aborted,
            remembered_batches,
            producer_last_offsets,
            epochs: self.epochs.clone(),
        }))
    }

    /// Swaps a pass's cleaned segments in: every group whose segments are unchanged (a
    /// truncation abandons all of them; see [`CleanReport::abandoned`]). Moves the first
    /// dirty offset to the end of what was cleaned when nothing was left out.
    ///
    /// # Errors
    /// An I/O error, which poisons the log: the next open completes or undoes the swap.
    pub async fn finish_clean(
        &mut self,
        plan: CleanPlan<S>,
        output: CleanOutput,
    ) -> StorageResult<CleanReport> {
        let mut report = CleanReport {
            first_dirty_offset: plan.first_dirty_offset,
            end_offset: output.end_offset,
            records_removed: output.records_removed,
            ..CleanReport::default()
        };
        let usable = self.check_poison().is_ok() && !self.retired;
        let log_intact = usable && self.generation == plan.generation;
        if !log_intact {
            // Truncated, poisoned or deleted: nothing is swapped in. A poisoned (or deleted)
            // log's directory is left alone: the next open removes the cleaned files.
            if usable {
                for group in &output.groups {
                    remove_if_present(&self.storage, &group.cleaned_path).await?;
                }
            }
            report.abandoned = true;
            info!(dir = %self.dir.display(), "the log changed while it was cleaned; cleaning again later");
            return Ok(report);
        }
        // Retention may have deleted segments meanwhile (always the oldest): a group whose
        // segments are all gone is dropped, one with some gone is left for the next pass with
        // every group after it, and the others are swapped in (what they dropped is
        // superseded by records in later segments, which retention has not reached).
        let mut every_group_done = true;
        for group in output.groups {
            let unchanged = group
                .replaced
                .iter()
                .all(|meta| self.closed.get(&meta.base_offset) == Some(meta));
            if !unchanged || !every_group_done {
                let all_gone = group.replaced.iter().all(|meta| {
                    !self.closed.contains_key(&meta.base_offset)
                        && meta.next_offset <= self.log_start_offset
                });
                // After a group left as it was, none is swapped in: a later group may have
                // dropped the marker of a transaction whose records that one still holds.
                every_group_done &= all_gone;
                remove_if_present(&self.storage, &group.cleaned_path).await?;
                continue;
            }
            report.segments_before += group.replaced.len();
            report.segments_after += 1;
            report.bytes_before += group
                .replaced
                .iter()
                .map(|meta| meta.size_bytes)
                .sum::<u64>();
            report.bytes_after += group.meta.size_bytes;
            if let Err(error) = self.swap_in(&group).await {
                return Err(self.poison(error));
            }
        }
        if !every_group_done {
            report.abandoned = true;
            info!(dir = %self.dir.display(), "retention deleted part of a pass's segments; cleaning again later");
            return Ok(report);
        }
        self.tail_cache.forget_below(output.end_offset);
        self.cleaner_checkpoint = CleanerCheckpoint {
            first_dirty_offset: output.end_offset,
            tombstone_horizon_ms: output.tombstone_horizon_ms,
        };
        self.write_cleaner_checkpoint().await?;
        info!(
            dir = %self.dir.display(),
            first_dirty_offset = report.first_dirty_offset,
            end_offset = report.end_offset,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            records_removed = report.records_removed,
            "log cleaned"
        );
        Ok(report)
    }

    /// Writes the cleaner checkpoint file (atomically).
    pub(crate) async fn write_cleaner_checkpoint(&self) -> StorageResult<()> {
        let path = self.dir.join(CLEANER_CHECKPOINT_FILE_NAME);
        crate::storage::backend::write_file_atomically(
            &self.storage,
            &path,
            self.cleaner_checkpoint.encode().as_bytes(),
        )
        .await
        .map_err(io_error(|| format!("writing {}", path.display())))
    }

    /// Cleans the log in one pass, holding it throughout (tests and tools; the broker runs
    /// the three steps so that the log stays free while the cleaner works).
    ///
    /// # Errors
    /// As the three steps.
    pub async fn clean(
        &mut self,
        request: &CleanRequest,
        pacer: &mut impl Pacer,
    ) -> StorageResult<Option<CleanReport>> {
        let Some(plan) = self.plan_clean(request).await? else {
            return Ok(None);
        };
        let output = plan.execute(pacer).await?;
        self.finish_clean(plan, output).await.map(Some)
    }

    /// Replaces a group's segments by its cleaned file; see `docs/FORMAT.md` for why each
    /// step is where it is. The segment map changes only once every step is durable: a
    /// failure half-way poisons the log and leaves its map as it was (the next open
    /// completes the swap from the files).
    async fn swap_in(&mut self, group: &CleanedGroup) -> StorageResult<()> {
        let base_offset = group.meta.base_offset;
        let paths = SegmentPaths::new(&self.dir, base_offset);
        let swap_path = swap_path(&self.dir, base_offset);
        rename(&self.storage, &group.cleaned_path, &swap_path).await?;
        sync_dir(&self.storage, &self.dir).await?;
        // From here on the swap file is the segment: an open completes the swap.
        for meta in &group.replaced {
            let replaced = SegmentPaths::new(&self.dir, meta.base_offset);
            if meta.base_offset != base_offset {
                remove_if_present(&self.storage, &replaced.log).await?;
            }
            remove_if_present(&self.storage, &replaced.index).await?;
            remove_if_present(&self.storage, &replaced.time_index).await?;
        }
        sync_dir(&self.storage, &self.dir).await?;
        rename(&self.storage, &swap_path, &paths.log).await?;
        sync_dir(&self.storage, &self.dir).await?;
        write_index_files(&self.storage, &paths, &group.index, &group.meta).await?;
        for meta in &group.replaced {
            self.closed.remove(&meta.base_offset);
            if let Some(found) = self
                .closed_handles
                .iter()
                .position(|handle| handle.base_offset == meta.base_offset)
            {
                let handle = self.closed_handles.swap_remove(found);
                if let Err(error) = handle.file.close().await {
                    warn!(%error, "closing a replaced segment failed");
                }
            }
        }
        self.closed.insert(base_offset, group.meta);
        debug!(
            base_offset,
            replaced = group.replaced.len(),
            "cleaned segment swapped in"
        );
        Ok(())
    }

    /// Stops every cleaner pass and roll finish on this log from swapping or installing
    /// anything: the partition is being deleted (or moved away), and its directory may soon
    /// hold another log.
    pub fn retire(&mut self) {
        self.retired = true;
    }
}

impl<S: Storage> CleanPlan<S> {
    /// Builds the offset map and writes the cleaned segments. Holds no log: appends and reads
    /// go on meanwhile (the segments read are closed, so they do not change).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a batch that fails its checks (nothing is swapped in),
    /// or an I/O error.
    pub async fn execute(&self, pacer: &mut impl Pacer) -> StorageResult<CleanOutput> {
        let mut map = OffsetMap::default();
        let mut dirty_batches: Vec<Vec<DirtyBatch>> = Vec::new();
        let mut dirty_batches_bytes = 0;
        let mut end_segment = self.segments.len();
        for index in self.first_dirty_segment..self.segments.len() {
            let mut batches = Vec::new();
            self.add_to_map(&mut map, &self.segments[index], Some(&mut batches), pacer)
                .await?;
            dirty_batches_bytes += batches.len() * DIRTY_BATCH_BYTES;
            dirty_batches.push(batches);
            let size_bytes = map.size_bytes() + dirty_batches_bytes;
            if size_bytes > self.offset_map_bytes_max && index > self.first_dirty_segment {
                // This segment did not fit: the pass ends before it. The map is built again
                // without it (at most once a pass), which costs less than journaling every
                // insert for an undo.
                end_segment = index;
                dirty_batches.pop();
                map = OffsetMap::default();
                for segment in &self.segments[self.first_dirty_segment..end_segment] {
                    self.add_to_map(&mut map, segment, None, pacer).await?;
                }
                break;
            }
        }
        let survivors = Survivors {
            offsets: map.latest_offsets_sorted(),
        };
        let end_offset = self.segments[end_segment - 1].meta.next_offset;
        let mut groups = Vec::new();
        let mut records_removed = 0;
        let mut tombstone_horizon_ms = None;
        let mut transactions = Transactions::default();
        let mut start = 0;
        while start < end_segment {
            let end = self.group_end(start, end_segment);
            let noted = NotedDirtyBatches {
                survivors: &survivors,
                batches: &dirty_batches,
            };
            let (group, removed, horizon) = self
                .clean_group(start..end, &map, noted, &mut transactions, pacer)
                .await?;
            groups.push(group);
            records_removed += removed;
            tombstone_horizon_ms = earliest(tombstone_horizon_ms, horizon);
            start = end;
        }
        Ok(CleanOutput {
            groups,
            end_offset,
            records_removed,
            tombstone_horizon_ms,
        })
    }

    /// A batch's partition leader epoch is outside its CRC: a read the leader epoch cache
    /// contradicts is a bad read (or damage), and its epoch never goes into a cleaned segment
    /// (a follower fetching it would take it into its own cache). The pass fails, and is
    /// tried again later.
    fn check_epoch(
        &self,
        segment: &PlannedSegment<S::File>,
        header: &BatchHeader,
    ) -> StorageResult<()> {
        match self.epochs.epoch_at(header.base_offset) {
            Some(expected) if expected != header.partition_leader_epoch => Err(corrupt(
                segment,
                header,
                format!(
                    "partition leader epoch {} where the leader epoch cache has {expected}",
                    header.partition_leader_epoch
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Adds the keys of a dirty segment's records to the map: each key's latest offset.
    /// Markers and aborted transactions' records count for nothing. Notes every batch in
    /// `batches`, when given, so that the rewrite can drop a batch without reading it again.
    async fn add_to_map(
        &self,
        map: &mut OffsetMap,
        segment: &PlannedSegment<S::File>,
        mut batches: Option<&mut Vec<DirtyBatch>>,
        pacer: &mut impl Pacer,
    ) -> StorageResult<()> {
        let mut reader = SegmentBatches::new(segment);
        loop {
            let position = reader.position;
            let Some((header, batch)) = reader.next(pacer).await? else {
                break;
            };
            self.check_epoch(segment, &header)?;
            if let Some(batches) = batches.as_deref_mut() {
                batches.push(DirtyBatch {
                    position: u32::try_from(position).expect("a segment under 4 GiB"),
                    size_bytes: u32::try_from(batch.len()).expect("a batch under 4 GiB"),
                    base_offset: header.base_offset,
                    last_offset_delta: header.last_offset_delta,
                    partition_leader_epoch: header.partition_leader_epoch,
                    records_count: header.records_count,
                    // Markers are kept whole, and a remembered batch keeps its header.
                    must_read: header.is_control() || self.is_remembered(&header),
                });
            }
            if header.is_control() || self.is_aborted(&header) {
                continue;
            }
            let section = record_section(&batch, &header)
                .map_err(|reason| corrupt(segment, &header, reason))?;
            let records = parse_records(&section, header.records_count)
                .map_err(|reason| corrupt(segment, &header, reason))?;
            for record in records {
                if let Some((start, end)) = record.key {
                    map.insert(
                        &section[start..end],
                        header.base_offset + i64::from(record.offset_delta),
                    );
                }
            }
        }
        Ok(())
    }

    /// The end of the group of segments starting at `start`: as many as fit one segment
    /// (size, offset span and index entries).
    fn group_end(&self, start: usize, limit: usize) -> usize {
        let base_offset = self.segments[start].meta.base_offset;
        let mut size_bytes = 0;
        let mut end = start;
        while end < limit {
            let meta = &self.segments[end].meta;
            let grown = size_bytes + meta.size_bytes;
            let entries = grown / u64::from(self.index_interval_bytes) + (end - start + 1) as u64;
            let fits = grown <= self.segment_bytes_max
                && meta.next_offset - base_offset <= i64::from(u32::MAX)
                && entries <= self.index_entries_max as u64;
            if end > start && !fits {
                break;
            }
            size_bytes = grown;
            end += 1;
        }
        end
    }

    /// Whether producers' sequence state still remembers the batch `header` starts.
    fn is_remembered(&self, header: &BatchHeader) -> bool {
        header.producer_id >= 0 && self.remembered_batches.contains(&header.base_offset)
    }

    /// Whether `header` is a batch of an aborted transaction.
    fn is_aborted(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && self.aborted.get(&header.producer_id).is_some_and(|txns| {
                txns.iter()
                    .any(|&(first, last)| first <= header.base_offset && header.base_offset < last)
            })
    }

    async fn clean_group(
        &self,
        group: std::ops::Range<usize>,
        map: &OffsetMap,
        noted: NotedDirtyBatches<'_>,
        transactions: &mut Transactions,
        pacer: &mut impl Pacer,
    ) -> StorageResult<(CleanedGroup, u64, Option<i64>)> {
        let segments = &self.segments[group.clone()];
        let base_offset = segments[0].meta.base_offset;
        let cleaned_path = self.dir.join(format!("{base_offset:020}{CLEANED_SUFFIX}"));
        let file = self
            .storage
            .open(&cleaned_path, OpenMode::CreateNew)
            .await
            .map_err(io_error(|| format!("creating {}", cleaned_path.display())))?;
        let mut writer = GroupWriter {
            file,
            path: cleaned_path.clone(),
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            written: 0,
            meta: SegmentMeta::empty(base_offset),
            index: IndexBuilder::new(self.index_interval_bytes),
            filler: None,
            now_ms: self.tombstones.now_ms,
            tombstone_horizon_ms: None,
        };
        let mut removed = 0;
        for (index, segment) in group.zip(segments) {
            let batches = index
                .checked_sub(self.first_dirty_segment)
                .and_then(|dirty| noted.batches.get(dirty));
            let mut source = match batches {
                // A dirty segment: only batches that keep something are read again.
                Some(batches) => {
                    let needed = batches
                        .iter()
                        .map(|batch| batch.must_read || noted.survivors.any_in(batch))
                        .collect();
                    RewriteSource::Noted(NotedBatches::new(segment, batches, needed))
                }
                None => RewriteSource::Whole(SegmentBatches::new(segment)),
            };
            while let Some(next) = source.next(pacer).await? {
                match next {
                    NextBatch::Read(header, batch) => {
                        self.check_epoch(segment, &header)?;
                        removed += self
                            .clean_batch_into(
                                &mut writer,
                                segment,
                                map,
                                transactions,
                                &header,
                                &batch,
                                pacer,
                            )
                            .await?;
                    }
                    NextBatch::Superseded(noted) => {
                        // Every record of it is superseded (or aborted): dropped unread.
                        removed += u64::from(noted.records_count.unsigned_abs());
                        writer.remove(noted.offsets(), pacer).await?;
                    }
                }
            }
        }
        writer.flush_filler(pacer).await?;
        writer.finish(pacer).await?;
        let last = &segments[segments.len() - 1].meta;
        assert_eq!(
            writer.meta.next_offset, last.next_offset,
            "a cleaned group covers the offsets of the segments it replaces"
        );
        Ok((
            CleanedGroup {
                replaced: segments.iter().map(|segment| segment.meta).collect(),
                meta: writer.meta,
                index: writer.index,
                cleaned_path,
            },
            removed,
            writer.tombstone_horizon_ms,
        ))
    }

    /// Writes what stays of one batch; returns how many records went.
    #[allow(clippy::too_many_arguments)] // the pass's state, threaded through one batch
    async fn clean_batch_into(
        &self,
        writer: &mut GroupWriter<S::File>,
        segment: &PlannedSegment<S::File>,
        map: &OffsetMap,
        transactions: &mut Transactions,
        header: &BatchHeader,
        batch: &[u8],
        pacer: &mut impl Pacer,
    ) -> StorageResult<u64> {
        if header.is_control() {
            self.clean_marker_into(writer, segment, transactions, header, batch, pacer)
                .await?;
            return Ok(0);
        }
        let discard_all = self.is_aborted(header);
        let cleaned = filter::clean_batch(batch, self.tombstones, |facts| {
            !discard_all
                && map
                    .get(facts.key)
                    .is_none_or(|latest| latest <= facts.offset)
        })
        .map_err(|reason| corrupt(segment, header, reason))?;
        let (removed, kept) = match cleaned {
            CleanedBatch::Unchanged => {
                writer.push(batch, pacer).await?;
                (0, true)
            }
            CleanedBatch::Rewritten(bytes) => {
                let kept = BatchHeader::parse(&bytes)
                    .expect("a built batch")
                    .records_count;
                writer.push(&bytes, pacer).await?;
                (
                    u64::from((header.records_count - kept).unsigned_abs()),
                    true,
                )
            }
            CleanedBatch::Emptied => {
                let remembered = self.is_remembered(header);
                if remembered {
                    writer.push(&filter::header_only(header), pacer).await?;
                } else {
                    writer.remove(BatchOffsets::of(header), pacer).await?;
                }
                (u64::from(header.records_count.unsigned_abs()), remembered)
            }
        };
        if header.is_transactional() && kept {
            transactions.kept_batch_of.insert(header.producer_id);
        }
        Ok(removed)
    }

    /// Writes a transaction marker, or what stays of it. A commit marker whose transaction
    /// keeps no batch here, and that is not its producer's last batch or marker, is no longer
    /// needed (nothing is left for it to close): it gets a delete horizon, and after that
    /// horizon it goes, as Kafka's cleaner does. Abort markers stay: `read_committed` readers
    /// are told of aborted transactions from the producer state, and one listed without its
    /// marker would make them skip the producer's later transactions.
    async fn clean_marker_into(
        &self,
        writer: &mut GroupWriter<S::File>,
        segment: &PlannedSegment<S::File>,
        transactions: &mut Transactions,
        header: &BatchHeader,
        batch: &[u8],
        pacer: &mut impl Pacer,
    ) -> StorageResult<()> {
        let kept_batches = transactions.kept_batch_of.remove(&header.producer_id);
        let commit = batch::control_marker(batch).is_ok_and(|marker| marker.commit);
        let needed =
            !commit || kept_batches || self.producer_last_offsets.contains(&header.base_offset);
        if needed {
            return writer.push(batch, pacer).await;
        }
        match header.delete_horizon_ms() {
            Some(horizon) if horizon <= self.tombstones.now_ms => {
                writer.remove(BatchOffsets::of(header), pacer).await
            }
            Some(_) => writer.push(batch, pacer).await,
            None => {
                let horizon = self
                    .tombstones
                    .now_ms
                    .saturating_add(self.tombstones.delete_retention_ms);
                let marked = filter::with_delete_horizon(batch, horizon)
                    .map_err(|reason| corrupt(segment, header, reason))?;
                writer.push(&marked, pacer).await
            }
        }
    }
}

/// What the map pass noted of the dirty segments.
#[derive(Clone, Copy)]
struct NotedDirtyBatches<'a> {
    survivors: &'a Survivors,
    /// Each dirty segment's batches, from the first dirty segment.
    batches: &'a [Vec<DirtyBatch>],
}

/// Producers whose transaction, ended by their next marker, keeps a batch in the output so
/// far (their marker stays).
#[derive(Debug, Default)]
struct Transactions {
    kept_batch_of: BTreeSet<i64>,
}

/// A dirty batch as the map pass saw it: enough to drop it in the rewrite without reading it
/// again when none of its records stays.
#[derive(Debug, Clone, Copy)]
struct DirtyBatch {
    /// Where it starts in its segment.
    position: u32,
    size_bytes: u32,
    base_offset: i64,
    last_offset_delta: i32,
    partition_leader_epoch: i32,
    records_count: i32,
    /// Kept in some form whatever the map says (a marker, or a batch producers remember).
    must_read: bool,
}

/// Bytes a noted batch takes, counted with the map against `log.cleaner.dedupe.buffer.size`.
const DIRTY_BATCH_BYTES: usize = std::mem::size_of::<DirtyBatch>();

impl DirtyBatch {
    fn offsets(&self) -> BatchOffsets {
        BatchOffsets {
            base_offset: self.base_offset,
            next_offset: self.base_offset + i64::from(self.last_offset_delta) + 1,
            partition_leader_epoch: self.partition_leader_epoch,
        }
    }

    fn end_position(&self) -> u64 {
        u64::from(self.position) + u64::from(self.size_bytes)
    }
}

/// The offsets of a batch that goes, and the leader epoch its filler keeps.
#[derive(Debug, Clone, Copy)]
struct BatchOffsets {
    base_offset: i64,
    next_offset: i64,
    partition_leader_epoch: i32,
}

impl BatchOffsets {
    fn of(header: &BatchHeader) -> Self {
        BatchOffsets {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            partition_leader_epoch: header.partition_leader_epoch,
        }
    }
}

/// The offsets the map holds, sorted: every record of a dirty batch that stays is the latest
/// of its key, so a dirty batch holding none of them keeps nothing.
#[derive(Debug)]
struct Survivors {
    offsets: Vec<i64>,
}

impl Survivors {
    fn any_in(&self, batch: &DirtyBatch) -> bool {
        let offsets = batch.offsets();
        let first_at_or_above = self
            .offsets
            .partition_point(|&offset| offset < offsets.base_offset);
        self.offsets
            .get(first_at_or_above)
            .is_some_and(|&offset| offset < offsets.next_offset)
    }
}

/// Gaps between batches to read that are read through rather than skipped: one larger read
/// costs less than two.
const READ_THROUGH_GAP_BYTES: u64 = 128 << 10;

/// What the rewrite does with a segment's next batch.
enum NextBatch<B> {
    /// Read (and checked): clean it.
    Read(BatchHeader, B),
    /// A dirty batch holding no record that stays: it goes unread.
    Superseded(DirtyBatch),
}

/// A segment's batches as the rewrite takes them.
enum RewriteSource<'a, F: StorageFile> {
    /// Every batch read (a segment cleaned before).
    Whole(SegmentBatches<'a, F>),
    /// A dirty segment whose batches the map pass noted.
    Noted(NotedBatches<'a, F>),
}

impl<F: StorageFile> RewriteSource<'_, F> {
    async fn next(&mut self, pacer: &mut impl Pacer) -> StorageResult<Option<NextBatch<F::Buf>>> {
        match self {
            RewriteSource::Whole(batches) => Ok(batches
                .next(pacer)
                .await?
                .map(|(header, batch)| NextBatch::Read(header, batch))),
            RewriteSource::Noted(batches) => batches.next(pacer).await,
        }
    }
}

/// The batches of a dirty segment the map pass noted: those that keep something read again,
/// each read covering as many of the following ones to read as fit a window; the others
/// passed over unread.
struct NotedBatches<'a, F: StorageFile> {
    segment: &'a PlannedSegment<F>,
    batches: &'a [DirtyBatch],
    /// Whether each batch is read.
    needed: Vec<bool>,
    /// The next batch.
    at: usize,
    window: Option<F::Buf>,
    window_start: u64,
}

impl<'a, F: StorageFile> NotedBatches<'a, F> {
    fn new(segment: &'a PlannedSegment<F>, batches: &'a [DirtyBatch], needed: Vec<bool>) -> Self {
        NotedBatches {
            segment,
            batches,
            needed,
            at: 0,
            window: None,
            window_start: 0,
        }
    }

    async fn next(&mut self, pacer: &mut impl Pacer) -> StorageResult<Option<NextBatch<F::Buf>>> {
        let at = self.at;
        let Some(&noted) = self.batches.get(at) else {
            return Ok(None);
        };
        self.at += 1;
        if !self.needed[at] {
            return Ok(Some(NextBatch::Superseded(noted)));
        }
        let (header, batch) = self.read(at, pacer).await?;
        Ok(Some(NextBatch::Read(header, batch)))
    }

    /// Batch `at`, CRC-checked again (it was read before; the disk may not return the same).
    async fn read(
        &mut self,
        at: usize,
        pacer: &mut impl Pacer,
    ) -> StorageResult<(BatchHeader, F::Buf)> {
        let noted = self.batches[at];
        let start = u64::from(noted.position);
        let window_end = self.window_start + self.window.as_ref().map_or(0, |w| w.len() as u64);
        if self.window.is_none() || start < self.window_start || noted.end_position() > window_end {
            let window_bytes = pacer.read_window_bytes() as u64;
            let mut end = noted.end_position();
            for (next, needed) in self.batches[at + 1..].iter().zip(&self.needed[at + 1..]) {
                if next.end_position() - start > window_bytes {
                    break;
                }
                if *needed {
                    if u64::from(next.position) - end > READ_THROUGH_GAP_BYTES {
                        break;
                    }
                    end = next.end_position();
                }
            }
            let read = self
                .segment
                .read_paced(start, (end - start) as usize, pacer)
                .await?;
            self.window = Some(read);
            self.window_start = start;
        }
        let at_in_window = (start - self.window_start) as usize;
        let bytes = self
            .window
            .as_ref()
            .expect("a window")
            .slice(at_in_window, noted.size_bytes as usize);
        let header = batch::validate_stored(&bytes)
            .map_err(|error| self.segment.corrupt_at(start, error.to_string()))?;
        if header.base_offset != noted.base_offset
            || header.last_offset_delta != noted.last_offset_delta
        {
            return Err(self.segment.corrupt_at(
                start,
                format!(
                    "batch at offset {} read back as offset {}",
                    noted.base_offset, header.base_offset
                ),
            ));
        }
        Ok((header, bytes))
    }
}

/// Writes a cleaned group: whole batches, with runs of emptied batches folded into fillers.
struct GroupWriter<F> {
    file: F,
    path: PathBuf,
    buffer: Vec<u8>,
    written: u64,
    meta: SegmentMeta,
    index: IndexBuilder,
    /// An open run of emptied batches: base offset, next offset, leader epoch.
    filler: Option<(i64, i64, i32)>,
    /// The pass's time.
    now_ms: i64,
    /// The earliest delete horizon after `now_ms` among the batches written: a horizon at or
    /// before it was acted on in this pass (its tombstones went).
    tombstone_horizon_ms: Option<i64>,
}

impl<F: StorageFile> GroupWriter<F> {
    async fn push(&mut self, batch: &[u8], pacer: &mut impl Pacer) -> StorageResult<()> {
        self.flush_filler(pacer).await?;
        self.append(batch, pacer).await
    }

    async fn remove(&mut self, batch: BatchOffsets, pacer: &mut impl Pacer) -> StorageResult<()> {
        if let Some((base, next, epoch)) = &mut self.filler {
            let joins = *next == batch.base_offset
                && *epoch == batch.partition_leader_epoch
                && batch.next_offset - *base <= i64::from(i32::MAX);
            if joins {
                *next = batch.next_offset;
                return Ok(());
            }
        }
        self.flush_filler(pacer).await?;
        self.filler = Some((
            batch.base_offset,
            batch.next_offset,
            batch.partition_leader_epoch,
        ));
        Ok(())
    }

    async fn flush_filler(&mut self, pacer: &mut impl Pacer) -> StorageResult<()> {
        if let Some((base, next, epoch)) = self.filler.take() {
            self.append(&filter::filler(base, next, epoch), pacer)
                .await?;
        }
        Ok(())
    }

    async fn append(&mut self, batch: &[u8], pacer: &mut impl Pacer) -> StorageResult<()> {
        let header = BatchHeader::parse(batch).expect("whole batches");
        if let Some(horizon) = header.delete_horizon_ms() {
            if horizon > self.now_ms {
                self.tombstone_horizon_ms = earliest(self.tombstone_horizon_ms, Some(horizon));
            }
        }
        let position = self.written + self.buffer.len() as u64;
        self.index.observe(
            relative(&self.meta, header.base_offset),
            u32::try_from(position).expect("a group fits one segment"),
            header.max_timestamp,
            batch.len() as u64,
        );
        self.meta.observe_batch(
            header.base_offset,
            header.next_offset(),
            header.max_timestamp,
            batch.len() as u64,
        );
        self.buffer.extend_from_slice(batch);
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.write_out(pacer).await?;
        }
        Ok(())
    }

    async fn write_out(&mut self, pacer: &mut impl Pacer) -> StorageResult<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_at(self.written, &self.buffer)
            .await
            .map_err(io_error(|| format!("writing {}", self.path.display())))?;
        self.written += self.buffer.len() as u64;
        pacer.pace(self.buffer.len() as u64).await;
        self.buffer.clear();
        Ok(())
    }

    async fn finish(&mut self, pacer: &mut impl Pacer) -> StorageResult<()> {
        self.write_out(pacer).await?;
        let path = self.path.clone();
        self.file
            .truncate(self.written)
            .await
            .map_err(io_error(|| format!("truncating {}", path.display())))?;
        self.file
            .sync()
            .await
            .map_err(io_error(|| format!("syncing {}", path.display())))?;
        assert_eq!(self.written, self.meta.size_bytes);
        self.file
            .clone()
            .close()
            .await
            .map_err(io_error(|| format!("closing {}", path.display())))
    }
}

fn corrupt<F>(segment: &PlannedSegment<F>, header: &BatchHeader, reason: String) -> StorageError {
    StorageError::Corrupt {
        segment: segment.path.clone(),
        position: 0,
        reason: format!("batch at offset {}: {reason}", header.base_offset),
    }
}

/// The batches of one segment, CRC-checked, in order: each must start where the previous
/// ended, from the segment's base offset.
struct SegmentBatches<'a, F: StorageFile> {
    segment: &'a PlannedSegment<F>,
    position: u64,
    expected_offset: i64,
    /// The bytes read last, from `window_start`; batches are slices of it, not copies.
    window: Option<F::Buf>,
    window_start: u64,
}

impl<'a, F: StorageFile> SegmentBatches<'a, F> {
    fn new(segment: &'a PlannedSegment<F>) -> Self {
        SegmentBatches {
            segment,
            position: 0,
            expected_offset: segment.meta.base_offset,
            window: None,
            window_start: 0,
        }
    }

    fn corrupt_at(&self, position: u64, reason: String) -> StorageError {
        self.segment.corrupt_at(position, reason)
    }

    /// The next batch, or `None` at the end of the segment's bytes.
    async fn next(
        &mut self,
        pacer: &mut impl Pacer,
    ) -> StorageResult<Option<(BatchHeader, F::Buf)>> {
        let end = self.segment.meta.size_bytes;
        while self.position < end {
            let position = self.position;
            let at = (position - self.window_start) as usize;
            let rest = self
                .window
                .as_deref()
                .and_then(|window| window.get(at..))
                .unwrap_or_default();
            let size = match batch::peek_base_offset_and_size(rest) {
                Ok((_, size)) if size as u64 > end - position => {
                    return Err(self.corrupt_at(
                        position,
                        format!("a batch of {size} bytes runs past the segment's end"),
                    ))
                }
                Ok((_, size)) if size <= rest.len() => size,
                Err(batch::BatchError::InvalidLength { batch_length }) => {
                    return Err(
                        self.corrupt_at(position, format!("invalid batch length {batch_length}"))
                    )
                }
                result => {
                    // The batch is not all in the window: read from its start.
                    let size = result.map_or(0, |(_, size)| size);
                    let want = size
                        .max(pacer.read_window_bytes())
                        .max(batch::BATCH_HEADER_BYTES)
                        .min((end - position) as usize);
                    if rest.len() >= want {
                        return Err(self.corrupt_at(
                            position,
                            "a batch header runs past the segment's end".into(),
                        ));
                    }
                    let read = self.segment.read_paced(position, want, pacer).await?;
                    self.window = Some(read);
                    self.window_start = position;
                    continue;
                }
            };
            let bytes = self.window.as_ref().expect("a window").slice(at, size);
            let header = batch::validate_stored(&bytes)
                .map_err(|error| self.corrupt_at(position, error.to_string()))?;
            if header.base_offset != self.expected_offset || header.last_offset_delta < 0 {
                return Err(self.corrupt_at(
                    position,
                    format!(
                        "base offset {} where {} was expected",
                        header.base_offset, self.expected_offset
                    ),
                ));
            }
            self.expected_offset = header.next_offset();
            self.position += size as u64;
            return Ok(Some((header, bytes)));
        }
        if self.segment.meta.next_offset > self.segment.meta.base_offset
            && self.expected_offset != self.segment.meta.next_offset
        {
            return Err(self.corrupt_at(
                end,
                format!(
                    "the segment ends at offset {}, not {}",
                    self.expected_offset, self.segment.meta.next_offset
                ),
            ));
        }
        Ok(None)
    }
}

/// The earlier of two optional times, `None` meaning none.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn swap_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}{SWAP_SUFFIX}"))
}

async fn rename<S: Storage>(storage: &S, from: &Path, to: &Path) -> StorageResult<()> {
    storage.rename(from, to).await.map_err(io_error(|| {
        format!("renaming {} to {}", from.display(), to.display())
    }))
}

async fn sync_dir<S: Storage>(storage: &S, dir: &Path) -> StorageResult<()> {
    storage
        .sync_dir(dir)
        .await
        .map_err(io_error(|| format!("syncing {}", dir.display())))
}

/// Finishes or undoes a pass a crash interrupted, before the log is opened: removes
/// `.log.cleaned` files (never swapped in), and completes each `.log.swap` (the cleaned
/// segment replaces every segment whose base offset it covers). Returns whether anything was
/// done.
///
/// # Errors
/// [`StorageError::Corrupt`] for a swap file that does not read back whole (it was synced
/// before it was named), or an I/O error.
pub(crate) async fn complete_interrupted<S: Storage>(
    storage: &S,
    dir: &Path,
    names: &[String],
) -> StorageResult<bool> {
    let mut changed = false;
    for name in names.iter().filter(|name| name.ends_with(CLEANED_SUFFIX)) {
        remove_if_present(storage, &dir.join(name)).await?;
        changed = true;
    }
    for name in names.iter().filter(|name| name.ends_with(SWAP_SUFFIX)) {
        let Some(base_offset) = name
            .strip_suffix(SWAP_SUFFIX)
            .and_then(|stem| stem.parse::<i64>().ok())
        else {
            continue;
        };
        let path = dir.join(name);
        let file = storage
            .open(&path, OpenMode::Existing)
            .await
            .map_err(io_error(|| format!("opening {}", path.display())))?;
        let size_bytes = file.len();
        let end_offset = swap_end_offset(&file, &path, base_offset, size_bytes).await?;
        file.close()
            .await
            .map_err(io_error(|| format!("closing {}", path.display())))?;
        for other in names {
            let Some(other_base) = other
                .strip_suffix(LOG_SUFFIX)
                .and_then(|stem| stem.parse::<i64>().ok())
            else {
                continue;
            };
            if other_base > base_offset && other_base < end_offset {
                let replaced = SegmentPaths::new(dir, other_base);
                remove_if_present(storage, &replaced.log).await?;
                remove_if_present(storage, &replaced.index).await?;
                remove_if_present(storage, &replaced.time_index).await?;
            }
        }
        let paths = SegmentPaths::new(dir, base_offset);
        remove_if_present(storage, &paths.index).await?;
        remove_if_present(storage, &paths.time_index).await?;
        sync_dir(storage, dir).await?;
        rename(storage, &path, &paths.log).await?;
        sync_dir(storage, dir).await?;
        info!(segment = %paths.log.display(), end_offset, "completed a cleaned segment's swap");
        changed = true;
    }
    Ok(changed)
}

async fn swap_end_offset<F: StorageFile>(
    file: &F,
    path: &Path,
    base_offset: i64,
    size_bytes: u64,
) -> StorageResult<i64> {
    let segment = PlannedSegment {
        meta: SegmentMeta {
            size_bytes,
            ..SegmentMeta::empty(base_offset)
        },
        file: file.clone(),
        path: path.to_path_buf(),
    };
    let mut batches = SegmentBatches::new(&segment);
    while batches.next(&mut Unpaced).await?.is_some() {}
    Ok(batches.expected_offset)
}
