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
//! - [`finish_rolls`](PartitionLog::finish_rolls) after appends that rolled segments, or its
//!   split form ([`begin_roll_finish`](PartitionLog::begin_roll_finish), [`super::RollFinish`],
//!   [`install_roll_finish`](PartitionLog::install_roll_finish)) that
//!   [`super::SharedLog::finish_rolls`] runs without holding the log (see
//!   [`super::roll_finish`]).
//! - [`checkpoint`](PartitionLog::checkpoint) now and then (finishes rolls, writes the active
//!   segment's indexes and the recovery point, which bounds the work of the next recovery),
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tracing::{debug, info, warn};

use super::backend::{
    read_whole_file, write_file_atomically, OpenMode, ReadBuf, Storage, StorageFile,
};
use super::batch::{self, Codec, TimestampType, BATCH_HEADER_BYTES};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use super::compaction;
use super::compaction::checkpoint::CleanerCheckpoint;
use super::config::LogConfig;
use super::epochs::observe_batch_epoch;
use super::error::{StorageError, StorageResult};
use super::index::OffsetIndex;
use super::producers::{
    CompletedTxn, MarkerAppend, ProducerAppend, ProducerBatch, ProducerError, ProducerStates,
    StagedProducers, Verdict,
};
use super::recovery::{relative, walk_segment, IndexBuilder};
use super::roll_finish::UnfinishedRoll;
use super::segment::{SegmentMeta, SegmentPaths};
use super::tail_cache::TailCache;
use super::verification::{Verification, VerificationGuard, VerificationGuards};
use crate::replication::epoch_cache::LeaderEpochCache;

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
    /// First offset of the log after the append.
    pub log_start_offset: i64,
    /// The flush policy (`flush_messages`, `flush_ms`) asks for a sync now.
    pub sync_due: bool,
    /// Bytes appended that no completed sync covered, this append's included: what a
    /// background sync policy looks at.
    pub unsynced_bytes: u64,
    /// A producer's retry of a batch already in the log: nothing was written, and the offsets
    /// are the ones the batch got first.
    pub duplicate: bool,
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

/// Whose batches an append writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendMode {
    /// A producer's, on the leader: offsets and the leader epoch are stamped in.
    Leader {
        partition_leader_epoch: i32,
        verification: Verification,
    },
    /// A transaction marker the coordinator asked for, on the leader: stamped as a producer's.
    Marker { partition_leader_epoch: i32 },
    /// The leader's, on a follower: kept as they are.
    Replicated,
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

/// A pending sync: the files to sync and the offset that will be durable after it.
///
/// Besides the active segment it seals the rolls not sealed yet (see [`super::roll_finish`]):
/// their closed segments are synced, then the directory, so that the files the rolls created
/// are there after a crash too.
#[derive(Debug, Clone)]
pub struct SyncTicket<S: Storage> {
    storage: S,
    dir: PathBuf,
    /// Base offsets and files of the closed segments of the rolls this sync seals.
    seals: Vec<(i64, S::File)>,
    file: S::File,
    target_offset: i64,
    /// The log's appended record and byte counts when the ticket was taken.
    appended_records: u64,
    appended_bytes: u64,
    generation: u64,
}

impl<S: Storage> SyncTicket<S> {
    /// Runs the fsyncs. Does not need the log, so appends can go on meanwhile.
    ///
    /// # Errors
    /// The first fsync's I/O error; pass it to [`PartitionLog::complete_sync`], which poisons
    /// the log.
    pub async fn run(&self) -> io::Result<()> {
        for (_, file) in &self.seals {
            file.sync().await?;
        }
        if !self.seals.is_empty() {
            self.storage.sync_dir(&self.dir).await?;
        }
        self.file.sync().await
    }

    /// The offset below which everything is durable once this sync completes.
    pub fn target_offset(&self) -> i64 {
        self.target_offset
    }
}

#[derive(Debug)]
pub(super) struct ActiveSegment<F> {
    pub(super) meta: SegmentMeta,
    pub(super) paths: SegmentPaths,
    pub(super) file: F,
    pub(super) index: IndexBuilder,
    /// When the segment was created or opened; `segment_ms` falls back to it when batches carry
    /// no timestamps.
    pub(super) created_ms: i64,
}

#[derive(Debug)]
pub(super) struct ClosedHandle<F> {
    pub(super) base_offset: i64,
    pub(super) file: F,
    pub(super) index: OffsetIndex,
    pub(super) last_used: u64,
}

/// One partition's log. See the module docs for the calling protocol.
#[derive(Debug)]
pub struct PartitionLog<S: Storage> {
    pub(super) storage: S,
    pub(super) dir: PathBuf,
    pub(super) config: LogConfig,
    pub(super) closed: BTreeMap<i64, SegmentMeta>,
    pub(super) active: ActiveSegment<S::File>,
    pub(super) closed_handles: Vec<ClosedHandle<S::File>>,
    pub(super) use_counter: u64,
    pub(super) tail_cache: TailCache,
    pub(super) log_start_offset: i64,
    pub(super) recovery_point: i64,
    pub(super) durable_offset: i64,
    /// Records and bytes appended since the log was opened.
    pub(super) appended_records: u64,
    pub(super) appended_bytes: u64,
    /// Of those, the records and bytes a completed sync covered.
    pub(super) synced_records: u64,
    pub(super) synced_bytes: u64,
    pub(super) last_sync_ms: i64,
    pub(super) poisoned: Option<String>,
    /// Which leader epoch wrote which offsets; see [`super::epochs`].
    pub(super) epochs: LeaderEpochCache,
    /// Whether `epochs` changed since it was last written.
    pub(super) epochs_dirty: bool,
    /// KIP-890 verifications under way (see [`super::verification`]).
    pub(super) verification_guards: VerificationGuards,
    /// How many times the log was truncated since it was opened: a [`SyncTicket`] taken before
    /// a truncation covers files and offsets that are gone.
    pub(super) generation: u64,
    /// Idempotent producers' sequence state; see [`super::producers`].
    pub(super) producers: ProducerStates,
    /// Offsets of the producer state snapshots on disk.
    pub(super) producer_snapshots: BTreeSet<i64>,
    /// Snapshots found unusable at open, removed once a new one is written.
    pub(super) stale_producer_snapshots: Vec<i64>,
    /// The cleaner's first dirty offset (records below it were cleaned) and the next delete
    /// horizon of the cleaned part (see [`super::compaction`]).
    pub(super) cleaner_checkpoint: CleanerCheckpoint,
    /// The partition is being deleted: no cleaner pass swaps anything in, and no roll finish
    /// installs anything, any more.
    pub(super) retired: bool,
    /// Rolls whose closed segments are not finished yet, oldest first: the newest closed
    /// segments (see [`super::roll_finish`]).
    pub(super) unfinished_rolls: VecDeque<UnfinishedRoll<S::File>>,
    /// Writes of the checkpoint, the epoch cache or producer snapshots made while holding the
    /// log: a background roll finish staged before one of them must not install its files.
    pub(super) metadata_writes: u64,
}

pub(super) fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::io(context(), source)
}

impl<S: Storage> PartitionLog<S> {
    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings (a topic config change). Segment sizes and index intervals apply
    /// from the next roll; flush and retention settings at once.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`]; the old settings stay.
    pub fn set_config(&mut self, config: LogConfig) -> StorageResult<()> {
        config.validate().map_err(StorageError::InvalidConfig)?;
        self.config = config;
        Ok(())
    }

    /// The largest batch max timestamp in the log and the base offset of its batch (Kafka's
    /// ListOffsets with MAX_TIMESTAMP), or `None` when the log holds no record.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.closed
            .values()
            .chain(std::iter::once(&self.active.meta))
            .filter(|meta| meta.next_offset > self.log_start_offset && meta.max_timestamp >= 0)
            .map(|meta| {
                (
                    meta.max_timestamp,
                    meta.offset_of_max_timestamp.max(self.log_start_offset),
                )
            })
            .max_by_key(|&(timestamp, offset)| (timestamp, std::cmp::Reverse(offset)))
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

    /// Base offset of the oldest segment not closed for good: the oldest unfinished roll's
    /// (see [`super::roll_finish`]), else the active segment's.
    pub(super) fn first_unfinished_base(&self) -> i64 {
        self.unfinished_rolls
            .front()
            .map_or(self.active.meta.base_offset, |roll| roll.meta.base_offset)
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

    pub(super) fn check_poison(&self) -> StorageResult<()> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn poison(&mut self, error: StorageError) -> StorageError {
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
    /// [`StorageError::InvalidBatch`], [`StorageError::BatchTooLarge`] or
    /// [`StorageError::RecordsTooLarge`] for refused input (the log
    /// is unchanged), [`StorageError::Poisoned`] after an earlier failure, or an I/O error (which
    /// poisons the log).
    pub async fn append(
        &mut self,
        records: BytesMut,
        partition_leader_epoch: i32,
        now_ms: i64,
    ) -> StorageResult<AppendInfo> {
        self.append_verified(
            records,
            partition_leader_epoch,
            now_ms,
            Verification::Unchecked,
        )
        .await
    }

    /// As [`PartitionLog::append`], and a transactional batch that would open a transaction
    /// must bring a guard from [`PartitionLog::start_verification`] that no marker voided
    /// since (see [`super::verification`]).
    ///
    /// # Errors
    /// As [`PartitionLog::append`]; [`ProducerError::Unverified`] (as
    /// [`StorageError::Producer`]) for a batch whose verification a marker overtook.
    pub async fn append_verified(
        &mut self,
        records: BytesMut,
        partition_leader_epoch: i32,
        now_ms: i64,
        verification: Verification,
    ) -> StorageResult<AppendInfo> {
        self.append_batches(
            records,
            AppendMode::Leader {
                partition_leader_epoch,
                verification,
            },
            now_ms,
        )
        .await
    }

    /// Starts the verification of a transactional batch of `producer_id` at
    /// `producer_epoch`, before the coordinator is asked whether the partition is in its
    /// ongoing transaction: the guard to append with, or `None` when the producer's
    /// transaction is open in this partition at that epoch, and the coordinator need not be
    /// asked. See [`super::verification`].
    pub fn start_verification(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        if self.transaction_open(producer_id, producer_epoch) {
            return None;
        }
        Some(
            self.verification_guards
                .start(producer_id, self.generation, now_ms),
        )
    }

    fn transaction_open(&self, producer_id: i64, producer_epoch: i16) -> bool {
        self.producers
            .get(producer_id)
            .is_some_and(|entry| entry.epoch == producer_epoch && entry.txn_first_offset.is_some())
    }

    /// Appends a transaction marker (a control batch) for `producer_id` at `producer_epoch`,
    /// as the transaction coordinator of epoch `coordinator_epoch` asks (WriteTxnMarkers):
    /// the producer's open transaction ends, committed or aborted. Returns the append and
    /// the transaction it ended, if one was open.
    ///
    /// # Errors
    /// [`ProducerError::InvalidProducerEpoch`] or [`ProducerError::CoordinatorFenced`] (as
    /// [`StorageError::Producer`]) for a fenced marker, else as [`PartitionLog::append`].
    pub async fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        partition_leader_epoch: i32,
        now_ms: i64,
    ) -> StorageResult<(AppendInfo, Option<CompletedTxn>)> {
        let marker = MarkerAppend {
            producer_id,
            epoch: producer_epoch,
            coordinator_epoch,
            offset: self.log_end_offset(),
            timestamp: now_ms,
            commit,
        };
        self.producers
            .check_marker(&marker)
            .map_err(StorageError::Producer)?;
        let records = batch::build::marker_batch(
            producer_id,
            producer_epoch,
            coordinator_epoch,
            commit,
            now_ms,
        );
        let open_before = self
            .producers
            .get(producer_id)
            .and_then(|entry| entry.txn_first_offset);
        let info = self
            .append_batches(
                records,
                AppendMode::Marker {
                    partition_leader_epoch,
                },
                now_ms,
            )
            .await?;
        let completed = open_before.map(|first_offset| CompletedTxn {
            producer_id,
            first_offset,
            last_offset: info.base_offset,
            aborted: !commit,
        });
        Ok((info, completed))
    }

    /// The first offset of the oldest open transaction, at or above the log start: records
    /// from there on are not stable yet (the last stable offset is the lower of it and the
    /// high watermark). `None` when no transaction is open.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.producers
            .first_unstable_offset()
            .map(|offset| offset.max(self.log_start_offset))
    }

    /// Appends a leader's batches on a follower: offsets, leader epochs and timestamps are
    /// kept as the leader wrote them, and the first batch must start at the log end. A batch
    /// of a newer leader epoch adds it to the leader epoch cache. A fetch response may hold
    /// more than a segment: it is appended in runs of whole batches that each fit one.
    ///
    /// # Errors
    /// As [`PartitionLog::append`], and [`StorageError::NotContiguous`] when the batches do
    /// not continue the log. Runs appended before an error stay appended.
    pub async fn append_replicated(
        &mut self,
        mut records: BytesMut,
        now_ms: i64,
    ) -> StorageResult<AppendInfo> {
        let run_bytes_max = self.config.segment_bytes as usize;
        let mut appended: Option<AppendInfo> = None;
        while !records.is_empty() {
            let mut run_bytes = 0;
            while run_bytes < records.len() {
                let size = batch::peek_base_offset_and_size(&records[run_bytes..])
                    .map(|(_, size)| size)
                    .unwrap_or(records.len() - run_bytes);
                if run_bytes > 0 && run_bytes + size > run_bytes_max {
                    break;
                }
                run_bytes += size;
            }
            let run = records.split_to(run_bytes.min(records.len()));
            let info = self
                .append_batches(run, AppendMode::Replicated, now_ms)
                .await?;
            appended = Some(match appended {
                None => info,
                Some(before) => AppendInfo {
                    base_offset: before.base_offset,
                    records_count: before.records_count + info.records_count,
                    batches_count: before.batches_count + info.batches_count,
                    ..info
                },
            });
        }
        match appended {
            Some(info) => Ok(info),
            // Nothing to append: let validation say so, as for a producer's empty append.
            None => {
                self.append_batches(records, AppendMode::Replicated, now_ms)
                    .await
            }
        }
    }

    async fn append_batches(
        &mut self,
        mut records: BytesMut,
        mode: AppendMode,
        now_ms: i64,
    ) -> StorageResult<AppendInfo> {
        self.check_poison()?;
        let batches = self.validate_batches(&records, mode)?;
        if mode == AppendMode::Replicated {
            let mut expected = self.log_end_offset();
            for batch in &batches {
                let header = &batch.validated.header;
                if header.base_offset != expected {
                    return Err(StorageError::NotContiguous {
                        expected,
                        found: header.base_offset,
                    });
                }
                expected = header.next_offset();
            }
        }
        let records_count: u64 = batches
            .iter()
            .map(|batch| batch.validated.header.records_count as u64)
            .sum();
        let max_timestamps: Vec<i64> = batches
            .iter()
            .map(|batch| self.stored_max_timestamp(batch, mode, now_ms))
            .collect();
        let mut staged_producers = StagedProducers::new();
        if let AppendMode::Leader { .. } = mode {
            let control = batches
                .iter()
                .map(|batch| &batch.validated.header)
                .find(|header| header.is_control());
            if let Some(header) = control {
                return Err(StorageError::Producer(
                    ProducerError::ControlBatchFromClient {
                        producer_id: header.producer_id,
                    },
                ));
            }
            let producer_batch = batches
                .iter()
                .map(|batch| batch.validated.header.producer_id)
                .find(|producer_id| *producer_id >= 0);
            if let (Some(producer_id), true) = (producer_batch, batches.len() > 1) {
                return Err(StorageError::Producer(ProducerError::SeveralBatches {
                    producer_id,
                    batches: batches.len(),
                }));
            }
            if let AppendMode::Leader {
                verification: Verification::Guard(guard),
                ..
            } = mode
            {
                self.check_verification(&batches, guard)?;
            }
            let mut next_offset = self.log_end_offset();
            for (batch, &max_timestamp) in batches.iter().zip(&max_timestamps) {
                let header = &batch.validated.header;
                if let Some(append) = ProducerAppend::of(header, next_offset, max_timestamp) {
                    let verdict = self
                        .producers
                        .check(&mut staged_producers, &append)
                        .map_err(StorageError::Producer)?;
                    let verdict = match verdict {
                        Verdict::Duplicate(_) if mutated!(ProducerRetryAppended) => Verdict::New,
                        verdict => verdict,
                    };
                    if let Verdict::Duplicate(original) = verdict {
                        // As Kafka: the append is answered as the retry of that batch.
                        return Ok(self.duplicate_info(original, now_ms));
                    }
                }
                next_offset += i64::from(header.last_offset_delta) + 1;
            }
        }
        let incoming_max_timestamp = max_timestamps.iter().copied().max().unwrap_or(-1);
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
        for (batch, &max_timestamp) in batches.iter().zip(&max_timestamps) {
            let header = &batch.validated.header;
            let (AppendMode::Leader {
                partition_leader_epoch,
                ..
            }
            | AppendMode::Marker {
                partition_leader_epoch,
            }) = mode
            else {
                // The leader already stamped offsets, epochs and timestamps.
                next_offset += i64::from(header.last_offset_delta) + 1;
                continue;
            };
            let bytes = &mut records[batch.position..batch.position + batch.size];
            batch::set_base_offset(bytes, next_offset);
            batch::set_partition_leader_epoch(bytes, partition_leader_epoch);
            if max_timestamp != header.max_timestamp
                || self.config.message_timestamp_type == TimestampType::LogAppendTime
            {
                batch::set_max_timestamp(bytes, self.config.message_timestamp_type, max_timestamp);
            }
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
            let epoch = match mode {
                AppendMode::Leader {
                    partition_leader_epoch,
                    ..
                }
                | AppendMode::Marker {
                    partition_leader_epoch,
                } => partition_leader_epoch,
                AppendMode::Replicated => header.partition_leader_epoch,
            };
            self.epochs_dirty |= observe_batch_epoch(&mut self.epochs, epoch, batch_base);
            if header.is_control() {
                // A marker (the coordinator's, or replicated): the transaction ends. A control
                // batch that is no marker (a follower's copy of a leader's) changes nothing.
                let bytes = &records[batch.position..batch.position + batch.size];
                if let Ok(marker) = batch::control_marker(bytes) {
                    self.verification_guards.clear(header.producer_id);
                    self.producers.complete(&MarkerAppend {
                        producer_id: header.producer_id,
                        epoch: header.producer_epoch,
                        coordinator_epoch: marker.coordinator_epoch,
                        offset: batch_base,
                        timestamp: max_timestamp,
                        commit: marker.commit,
                    });
                }
            } else if mode == AppendMode::Replicated {
                if let Some(append) = ProducerAppend::of(header, batch_base, max_timestamp) {
                    self.producers.observe(&append);
                }
            }
        }
        self.producers.apply(staged_producers);
        assert_eq!(
            self.active.meta.next_offset, next_offset,
            "offsets assigned densely"
        );
        self.appended_records += records_count;
        self.appended_bytes += records.len() as u64;
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            log_append_time_ms,
            records_count,
            batches_count: batches.len(),
            log_start_offset: self.log_start_offset,
            sync_due: self.sync_due(now_ms),
            unsynced_bytes: self.unsynced_bytes(),
            duplicate: false,
        })
    }

    /// Refuses a transactional batch that would open a transaction in the partition unless
    /// it brings its producer's guard, not voided by a marker since (see
    /// [`super::verification`]).
    fn check_verification(
        &self,
        batches: &[IncomingBatch],
        guard: Option<VerificationGuard>,
    ) -> StorageResult<()> {
        for batch in batches {
            let header = &batch.validated.header;
            if !header.is_transactional() || header.is_control() {
                continue;
            }
            let producer_id = header.producer_id;
            if self.transaction_open(producer_id, header.producer_epoch) {
                continue;
            }
            let held = guard.is_some_and(|guard| {
                self.verification_guards
                    .holds(producer_id, self.generation, guard)
            });
            if !held {
                return Err(StorageError::Producer(ProducerError::Unverified {
                    producer_id,
                }));
            }
        }
        Ok(())
    }

    /// The max timestamp a batch has once appended: the broker's time for `LogAppendTime`
    /// topics, else the producer's, taken from the records of an uncompressed batch whose
    /// header disagrees with them. A follower keeps the leader's.
    fn stored_max_timestamp(&self, batch: &IncomingBatch, mode: AppendMode, now_ms: i64) -> i64 {
        let header = &batch.validated.header;
        if mode == AppendMode::Replicated {
            return header.max_timestamp;
        }
        match self.config.message_timestamp_type {
            TimestampType::LogAppendTime => now_ms,
            TimestampType::CreateTime if batch.validated.codec == Codec::None => {
                batch.validated.max_timestamp_of_records
            }
            TimestampType::CreateTime => header.max_timestamp,
        }
    }

    /// What an append that retries `original` answers.
    fn duplicate_info(&self, original: ProducerBatch, now_ms: i64) -> AppendInfo {
        AppendInfo {
            base_offset: original.first_offset,
            last_offset: original.last_offset,
            log_append_time_ms: match self.config.message_timestamp_type {
                TimestampType::LogAppendTime => original.max_timestamp,
                TimestampType::CreateTime => -1,
            },
            records_count: 0,
            batches_count: 0,
            log_start_offset: self.log_start_offset,
            sync_due: self.sync_due(now_ms),
            unsynced_bytes: self.unsynced_bytes(),
            duplicate: true,
        }
    }

    fn validate_batches(
        &self,
        records: &BytesMut,
        mode: AppendMode,
    ) -> StorageResult<Vec<IncomingBatch>> {
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
            let bytes = &records[position..position + size];
            let validated = match mode {
                // A leader's log may hold what its cleaner left.
                AppendMode::Replicated => batch::validate_compacted(bytes),
                AppendMode::Leader { .. } | AppendMode::Marker { .. } => batch::validate(bytes),
            }
            .map_err(|source| invalid(position, source))?;
            let needs_keys = self.config.cleanup_policy.compact
                && matches!(mode, AppendMode::Leader { .. })
                && !validated.header.is_control();
            if needs_keys {
                let keyless = compaction::records::has_keyless_record(bytes)
                    .map_err(|reason| StorageError::KeylessRecord { reason })?;
                if keyless {
                    return Err(StorageError::KeylessRecord {
                        reason: "a compacted topic cannot take a record without a key".into(),
                    });
                }
            }
            batches.push(IncomingBatch {
                position,
                size,
                validated,
            });
            position += size;
        }
        if records.len() > self.config.segment_bytes as usize {
            return Err(StorageError::RecordsTooLarge {
                size_bytes: records.len(),
                limit_bytes: self.config.segment_bytes as usize,
            });
        }
        Ok(batches)
    }

    /// Bytes appended that no completed sync covered yet.
    pub fn unsynced_bytes(&self) -> u64 {
        self.appended_bytes - self.synced_bytes
    }

    /// Records appended that no completed sync covered yet.
    pub fn unsynced_records(&self) -> u64 {
        self.appended_records - self.synced_records
    }

    /// Whether the flush policy wants a sync now.
    pub fn sync_due(&self, now_ms: i64) -> bool {
        let unsynced_records = self.unsynced_records();
        unsynced_records > 0
            && (unsynced_records >= self.config.flush_messages
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

    /// Closes the active segment and starts a new one at the log end offset. Does nothing when
    /// the active segment is empty.
    ///
    /// Only what the next append needs happens here: the closed segment's reserved space is
    /// cut and the new segment's file created. Syncing the closed segment, its index files, a
    /// producer snapshot and the checkpoint come later, without holding the log
    /// ([`SharedLog::finish_rolls`](super::SharedLog::finish_rolls)), or at the next
    /// [`checkpoint`](PartitionLog::checkpoint); see [`super::roll_finish`].
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
        // Cut the space the backend reserved ahead of appends, so the closed segment ends
        // exactly at its last batch once synced. No sync here: until the roll is sealed,
        // recovery walks this segment and cuts what a crash left of it.
        let active_path = self.active.paths.log.clone();
        self.active
            .file
            .truncate(self.active.meta.size_bytes)
            .await
            .map_err(io_error(|| format!("truncating {}", active_path.display())))?;
        let new_base = self.active.meta.next_offset;
        let paths = SegmentPaths::new(&self.dir, new_base);
        let file = self
            .storage
            .open(&paths.log, OpenMode::CreateNew)
            .await
            .map_err(io_error(|| format!("creating {}", paths.log.display())))?;
        file.expect_appends();
        let producer_snapshot = self
            .producer_snapshot_due()
            .then(|| self.producers.encode_snapshot(new_base).freeze());
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
            file: old.file.clone(),
            index: old.index.offset_index.clone(),
            last_used: 0,
        };
        self.insert_closed_handle(handle).await;
        self.unfinished_rolls.push_back(UnfinishedRoll {
            meta: old.meta,
            paths: old.paths,
            file: old.file,
            index: old.index,
            producer_snapshot,
            sealed: false,
        });
        Ok(())
    }

    /// Starts a sync of everything appended so far. Run the ticket, then pass its result to
    /// [`PartitionLog::complete_sync`].
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after an earlier failure.
    pub fn begin_sync(&self) -> StorageResult<SyncTicket<S>> {
        self.check_poison()?;
        Ok(SyncTicket {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            seals: self
                .unfinished_rolls
                .iter()
                .filter(|roll| !roll.sealed)
                .map(|roll| (roll.meta.base_offset, roll.file.clone()))
                .collect(),
            file: self.active.file.clone(),
            target_offset: self.log_end_offset(),
            appended_records: self.appended_records,
            appended_bytes: self.appended_bytes,
            generation: self.generation,
        })
    }

    /// Records the outcome of a sync. A failed sync poisons the log.
    ///
    /// # Errors
    /// The sync's error, as [`StorageError::Io`]; later calls get [`StorageError::Poisoned`].
    pub fn complete_sync(
        &mut self,
        ticket: SyncTicket<S>,
        result: io::Result<()>,
        now_ms: i64,
    ) -> StorageResult<()> {
        if let Err(source) = result {
            let error = StorageError::io(format!("syncing {}", self.dir.display()), source);
            return Err(self.poison(error));
        }
        self.check_poison()?;
        if ticket.generation != self.generation {
            // The log was truncated while the ticket's fsync ran: it synced a file that is no
            // longer the log, and proves nothing about the log as it is now (which truncation
            // already synced).
            return Ok(());
        }
        assert!(ticket.target_offset <= self.log_end_offset());
        for roll in &mut self.unfinished_rolls {
            if ticket
                .seals
                .iter()
                .any(|&(base_offset, _)| base_offset == roll.meta.base_offset)
            {
                roll.sealed = true;
            }
        }
        if ticket.target_offset > self.durable_offset {
            self.durable_offset = ticket.target_offset;
        }
        self.synced_records = self.synced_records.max(ticket.appended_records);
        self.synced_bytes = self.synced_bytes.max(ticket.appended_bytes);
        self.last_sync_ms = now_ms;
        Ok(())
    }

    /// Makes everything appended so far durable.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn flush(&mut self, now_ms: i64) -> StorageResult<()> {
        let ticket = self.begin_sync()?;
        if ticket.target_offset == self.durable_offset && ticket.seals.is_empty() {
            return Ok(());
        }
        let result = ticket.run().await;
        self.complete_sync(ticket, result, now_ms)
    }

    /// Syncs, finishes the unfinished rolls, writes the active segment's indexes and records
    /// the log end as the recovery point, so that the next open trusts everything up to here.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn checkpoint(&mut self, now_ms: i64) -> StorageResult<()> {
        self.check_poison()?;
        let result = async {
            self.flush(now_ms).await?;
            while let Some(roll) = self.unfinished_rolls.front() {
                write_index_files(&self.storage, &roll.paths, &roll.index, &roll.meta).await?;
                self.unfinished_rolls.pop_front();
            }
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

    pub(super) async fn write_checkpoint(&mut self, recovery_point: i64) -> StorageResult<()> {
        assert!(
            recovery_point <= self.durable_offset,
            "checkpoint only durable data"
        );
        assert!(
            self.unfinished_rolls
                .front()
                .is_none_or(|roll| recovery_point <= roll.meta.next_offset),
            "an unfinished roll ends at or above the recovery point"
        );
        self.metadata_writes += 1;
        // The epoch cache first, so that it covers every epoch below the recovery point.
        self.write_epochs().await?;
        if recovery_point == self.log_end_offset() {
            self.write_producer_snapshot().await?;
        }
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
        let deletes = self.config.cleanup_policy.delete;
        while let Some((&base_offset, &meta)) = self.closed.first_key_value() {
            let expired = deletes
                && self.config.retention_ms >= 0
                && meta.max_timestamp >= 0
                && now_ms - meta.max_timestamp > self.config.retention_ms;
            let over_size = deletes
                && self.config.retention_bytes >= 0
                && size_bytes - meta.size_bytes >= self.config.retention_bytes as u64;
            let below_start = meta.next_offset <= self.log_start_offset;
            if !(expired || over_size || below_start) || self.is_unfinished(base_offset) {
                // An unfinished roll's segment waits for its finish (the newest closed
                // segments are the unfinished ones, so nothing older is left behind).
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
        self.epochs_dirty |= self.epochs.truncate_from_start(self.log_start_offset);
        self.producers.evict_below(self.log_start_offset);
        if now_ms != i64::MIN {
            self.producers
                .expire(now_ms, self.config.producer_id_expiration_ms);
            self.verification_guards.expire(now_ms);
        }
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
        self.epochs_dirty |= self.epochs.truncate_from_start(before_offset);
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

    pub(super) async fn closed_handle(
        &mut self,
        base_offset: i64,
    ) -> StorageResult<&ClosedHandle<S::File>> {
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
        let unfinished = self
            .unfinished_rolls
            .iter()
            .find(|roll| roll.meta.base_offset == base_offset);
        let (file, index) = match unfinished {
            // Its index files are not written yet, but the index is in memory.
            Some(roll) => (roll.file.clone(), roll.index.offset_index.clone()),
            None => self.open_closed_segment(base_offset).await?,
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

    /// Opens a closed segment's file and loads its offset index, rebuilding the index (and
    /// its files) when it is unreadable.
    async fn open_closed_segment(
        &mut self,
        base_offset: i64,
    ) -> StorageResult<(S::File, OffsetIndex)> {
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
                    None,
                )
                .await?;
                write_index_files(&self.storage, &paths, &builder, &meta).await?;
                builder.offset_index
            }
        };
        Ok((file, index))
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

pub(super) async fn write_index_files<S: Storage>(
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

pub(super) async fn remove_segment_files<S: Storage>(
    storage: &S,
    paths: &SegmentPaths,
) -> StorageResult<()> {
    for path in [&paths.log, &paths.index, &paths.time_index] {
        remove_if_present(storage, path).await?;
    }
    Ok(())
}

/// Removes `path`; one that is not there is fine.
pub(super) async fn remove_if_present<S: Storage>(storage: &S, path: &Path) -> StorageResult<()> {
    match storage.remove(path).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::io(
            format!("removing {}", path.display()),
            source,
        )),
    }
}
