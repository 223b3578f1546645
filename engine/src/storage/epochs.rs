//! The log's side of replication: its leader epoch cache, appends of a leader's batches with
//! their offsets unchanged, and truncation to an offset.
//!
//! # The cache on disk
//! The cache lives in `leader-epoch-checkpoint` beside the segments (see `docs/FORMAT.md`). It
//! is written, atomically, whenever the log writes its checkpoint and the cache changed since
//! (and at once when the leader opens a new epoch), so the file always covers every epoch that
//! starts below the recovery point. Recovery then repairs it from the batches it walks: an
//! epoch newer than the cache's newest is added at the batch that carries it, and entries past
//! the recovered log end are dropped. A missing or damaged file is rebuilt from every batch
//! header in the log.

use std::io;

use tracing::{info, warn};

use super::backend::{
    read_at_agreed, read_whole_file_agreed, write_file_atomically, Storage, StorageFile,
};
use super::batch::{BatchHeader, BATCH_HEADER_BYTES};
use super::error::{StorageError, StorageResult};
use super::log::{io_error, remove_if_present, remove_segment_files, PartitionLog};
use super::recovery::relative;
use super::segment::{SegmentMeta, SegmentPaths};
use crate::replication::epoch_cache::{LeaderEpochCache, LEADER_EPOCH_FILE_NAME};

/// Reads in a row showing the same wrong bytes of a batch that make a truncation's cut point
/// walk take it for damage (a flipped byte in transit does not repeat itself).
const SAME_WRONG_READS_FOR_DAMAGE: u32 = 3;
/// Most reads of one batch the cut point walk makes before taking it for damage even when
/// no reads agreed.
const CUT_POINT_READS_MAX: u32 = 64;
/// How much of a segment the epoch rebuild reads at a time.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

/// What one read of a batch in a truncation's cut point walk found.
enum Looked {
    /// The batch, its CRC checked.
    Sound(BatchHeader),
    /// Something wrong (why, and the bytes read).
    Wrong(String, Vec<u8>),
}

/// What [`load_epochs`] found.
pub(super) enum LoadedEpochs {
    /// The file, as written.
    Loaded(LeaderEpochCache),
    /// No usable file: rebuild from the log once it is open.
    Rebuild,
}

/// Reads the partition's `leader-epoch-checkpoint`.
pub(super) async fn load_epochs<S: Storage>(storage: &S, dir: &std::path::Path) -> LoadedEpochs {
    let path = dir.join(LEADER_EPOCH_FILE_NAME);
    match read_whole_file_agreed(storage, &path).await {
        Ok(bytes) => match LeaderEpochCache::decode(&bytes) {
            Ok(cache) => LoadedEpochs::Loaded(cache),
            Err(error) => {
                warn!(path = %path.display(), %error, "rebuilding the leader epoch cache");
                LoadedEpochs::Rebuild
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => LoadedEpochs::Rebuild,
        Err(error) => {
            warn!(path = %path.display(), %error, "rebuilding the leader epoch cache");
            LoadedEpochs::Rebuild
        }
    }
}

/// Adds a batch's epoch to `epochs` when it is newer than the newest there (Kafka's rule
/// during recovery and follower appends). Returns whether the cache changed.
pub(super) fn observe_batch_epoch(
    epochs: &mut LeaderEpochCache,
    partition_leader_epoch: i32,
    base_offset: i64,
) -> bool {
    partition_leader_epoch >= 0
        && epochs
            .latest_epoch()
            .is_none_or(|latest| partition_leader_epoch > latest)
        && epochs.assign(partition_leader_epoch, base_offset)
}

impl<S: Storage> PartitionLog<S> {
    /// The leader epoch cache: which epoch wrote which offsets.
    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// Opens leader epoch `epoch` at the log end: this replica becomes the partition's leader.
    /// Written to disk before it returns, as Kafka does, since followers truncate by it.
    ///
    /// # Errors
    /// An I/O error writing the cache, which poisons the log.
    pub async fn open_leader_epoch(&mut self, epoch: i32) -> StorageResult<()> {
        self.check_poison()?;
        if self.epochs.assign(epoch, self.log_end_offset()) {
            self.epochs_dirty = true;
            if let Err(error) = self.write_epochs().await {
                return Err(self.poison(error));
            }
        }
        Ok(())
    }

    /// Writes the epoch cache if it changed since it was last written.
    pub(super) async fn write_epochs(&mut self) -> StorageResult<()> {
        if !self.epochs_dirty {
            return Ok(());
        }
        let path = self.dir.join(LEADER_EPOCH_FILE_NAME);
        self.metadata_writes += 1;
        write_file_atomically(&self.storage, &path, &self.epochs.encode())
            .await
            .map_err(io_error(|| format!("writing {}", path.display())))?;
        self.epochs_dirty = false;
        Ok(())
    }

    /// Rebuilds the epoch cache from every batch header in the log (the file was missing or
    /// damaged).
    pub(super) async fn rebuild_epochs(&mut self) -> StorageResult<()> {
        let mut epochs = LeaderEpochCache::new();
        let mut segments: Vec<SegmentMeta> = self.closed.values().copied().collect();
        segments.push(self.active.meta);
        for SegmentMeta {
            base_offset,
            next_offset,
            size_bytes,
            ..
        } in segments
        {
            let file = if base_offset == self.active.meta.base_offset {
                self.active.file.clone()
            } else {
                self.closed_handle(base_offset).await?.file.clone()
            };
            let path = SegmentPaths::new(&self.dir, base_offset).log;
            let mut position = 0;
            let mut expected_offset = base_offset;
            while position < size_bytes {
                // The partition leader epoch is outside the batch CRC: reads must agree.
                let window = read_at_agreed(&file, position, SCAN_WINDOW_BYTES)
                    .await
                    .map_err(io_error(|| format!("reading {}", path.display())))?;
                let mut cursor = 0;
                while cursor + BATCH_HEADER_BYTES <= window.len() {
                    let header = BatchHeader::parse(&window[cursor..]).map_err(|error| {
                        StorageError::Corrupt {
                            segment: path.clone(),
                            position: position + cursor as u64,
                            reason: error.to_string(),
                        }
                    })?;
                    // These headers were not CRC-checked on open (only the tail past the
                    // recovery point is): refuse nonsense rather than feed it to the cache.
                    let position = position + cursor as u64;
                    let fits = header.base_offset >= expected_offset
                        && header.last_offset_delta >= 0
                        && header.next_offset() <= next_offset
                        && header.size_bytes() >= BATCH_HEADER_BYTES;
                    if !fits {
                        return Err(StorageError::Corrupt {
                            segment: path.clone(),
                            position,
                            reason: format!(
                                "batch header at offsets {}..={} does not fit the segment's \
                                 offsets {expected_offset}..{next_offset}",
                                header.base_offset,
                                header.last_offset(),
                            ),
                        });
                    }
                    expected_offset = header.next_offset();
                    observe_batch_epoch(
                        &mut epochs,
                        header.partition_leader_epoch,
                        header.base_offset,
                    );
                    cursor += header.size_bytes();
                }
                if cursor == 0 {
                    return Err(StorageError::Corrupt {
                        segment: path.clone(),
                        position,
                        reason: "a batch header does not fit before the end of the file".into(),
                    });
                }
                position += cursor as u64;
            }
        }
        epochs.truncate_from_start(self.log_start_offset);
        info!(dir = %self.dir.display(), epochs = epochs.entries().len(), "leader epoch cache rebuilt");
        self.epochs = epochs;
        self.epochs_dirty = true;
        Ok(())
    }

    /// Cuts the log so that it ends at or before `offset`: the batch holding `offset` and every
    /// later one are removed (a batch is never split), durably, and the leader epoch cache
    /// forgets the epochs that started in what was cut. A follower does this when its log
    /// diverges from its leader's. Returns the new log end offset.
    ///
    /// The cut is made on disk and the log reopened from there, through the same recovery
    /// that runs after a crash, so a crash during truncation leaves a log recovery accepts.
    ///
    /// # Errors
    /// [`StorageError::OffsetOutOfRange`] below the log start offset, or an I/O error (which
    /// poisons the log).
    pub async fn truncate_to(&mut self, offset: i64, now_ms: i64) -> StorageResult<i64> {
        self.check_poison()?;
        if offset >= self.log_end_offset() {
            // Nothing to cut, but the cache may still hold an epoch opened at the log end
            // (a leader that wrote nothing in it): a follower that truncates must forget it,
            // or it would keep sending it as its last fetched epoch.
            let log_end_offset = self.log_end_offset();
            if self.epochs.truncate_from_end(log_end_offset) {
                self.epochs_dirty = true;
                if let Err(error) = self.write_epochs().await {
                    return Err(self.poison(error));
                }
            }
            return Ok(log_end_offset);
        }
        if offset < self.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset(),
            });
        }
        match self.truncate_on_disk(offset, now_ms).await {
            Ok(log_end_offset) => Ok(log_end_offset),
            Err(error) => Err(self.poison(error)),
        }
    }

    async fn truncate_on_disk(&mut self, offset: i64, now_ms: i64) -> StorageResult<i64> {
        self.flush(now_ms).await?;
        let (base_offset, position, cut_offset) = self.cut_point(offset).await?;
        // The order makes every crash point recoverable:
        // 1. the checkpoint (with the cache as it was, which covers every epoch below the
        //    recovery point): once it says the log is durable only up to the cut, recovery
        //    walks what follows the cut, and a crash at any later point recovers to a log that
        //    ends at or after the cut, whose epochs recovery re-observes;
        // 2. the cache without the epochs that started in what is cut;
        // 3. the later segments, newest first, and the directory synced, so the log stays
        //    one run of offsets whichever of them a crash leaves;
        // 4. the cut segment's tail, synced, and its index files, which recovery rebuilds.
        self.write_checkpoint(self.recovery_point.min(cut_offset))
            .await?;
        self.epochs_dirty |= self.epochs.truncate_from_end(cut_offset);
        self.write_epochs().await?;
        let mut later: Vec<i64> = self
            .closed
            .keys()
            .copied()
            .chain(std::iter::once(self.active.meta.base_offset))
            .filter(|&later| later > base_offset)
            .collect();
        later.reverse();
        for later in later {
            remove_segment_files(&self.storage, &SegmentPaths::new(&self.dir, later)).await?;
        }
        self.sync_dir().await?;
        let paths = SegmentPaths::new(&self.dir, base_offset);
        let file = if base_offset == self.active.meta.base_offset {
            self.active.file.clone()
        } else {
            self.closed_handle(base_offset).await?.file.clone()
        };
        file.truncate(position)
            .await
            .map_err(io_error(|| format!("truncating {}", paths.log.display())))?;
        file.sync()
            .await
            .map_err(io_error(|| format!("syncing {}", paths.log.display())))?;
        for path in [&paths.index, &paths.time_index] {
            remove_if_present(&self.storage, path).await?;
        }
        self.sync_dir().await?;
        let (reopened, _report) = PartitionLog::open(
            self.storage.clone(),
            self.dir.clone(),
            self.config.clone(),
            now_ms,
        )
        .await?;
        let old = std::mem::replace(self, reopened);
        self.generation = old.generation + 1;
        let old_cleaner_checkpoint = old.cleaner_checkpoint;
        old.release_handles().await;
        if self.cleaner_checkpoint != old_cleaner_checkpoint {
            // Opening capped the first dirty offset at the new log end; the file must say so
            // too before anything is appended, or a restart would count the offsets written
            // again as cleaned.
            self.write_cleaner_checkpoint().await?;
        }
        if self.log_end_offset() != cut_offset {
            return Err(StorageError::Corrupt {
                segment: paths.log,
                position,
                reason: format!(
                    "the log was cut at offset {cut_offset} but reopened ending at {}",
                    self.log_end_offset()
                ),
            });
        }
        info!(dir = %self.dir.display(), offset, log_end_offset = cut_offset, "log truncated");
        Ok(cut_offset)
    }

    /// Empties the log and starts it again at `offset`: every segment is removed, the log
    /// start and end become `offset` and the leader epoch cache is emptied (Kafka's
    /// `truncateFullyAndStartAt`). A follower does this when its log ends before its leader's
    /// starts (retention removed what it still lacked), so that it fetches from there.
    ///
    /// The new start is checkpointed first; a crash before the segments are gone reopens a
    /// log that starts at its end, which a follower answers the same way again.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn reset_to(&mut self, offset: i64, now_ms: i64) -> StorageResult<()> {
        self.check_poison()?;
        assert!(offset >= 0, "a log starts at a non-negative offset");
        match self.reset_on_disk(offset, now_ms).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.poison(error)),
        }
    }

    async fn reset_on_disk(&mut self, offset: i64, now_ms: i64) -> StorageResult<()> {
        self.flush(now_ms).await?;
        self.log_start_offset = offset;
        self.epochs = LeaderEpochCache::new();
        self.epochs_dirty = true;
        self.write_checkpoint(self.recovery_point.min(offset))
            .await?;
        let segments: Vec<i64> = self
            .closed
            .keys()
            .copied()
            .chain(std::iter::once(self.active.meta.base_offset))
            .collect();
        for base_offset in segments {
            remove_segment_files(&self.storage, &SegmentPaths::new(&self.dir, base_offset)).await?;
        }
        self.sync_dir().await?;
        let (reopened, _report) = PartitionLog::open(
            self.storage.clone(),
            self.dir.clone(),
            self.config.clone(),
            now_ms,
        )
        .await?;
        let old = std::mem::replace(self, reopened);
        self.generation = old.generation + 1;
        old.release_handles().await;
        if (self.log_start_offset, self.log_end_offset()) != (offset, offset) {
            return Err(StorageError::Corrupt {
                segment: self.dir.clone(),
                position: 0,
                reason: format!(
                    "the log was reset to start at {offset} but reopened with offsets {}..{}",
                    self.log_start_offset,
                    self.log_end_offset()
                ),
            });
        }
        info!(dir = %self.dir.display(), offset, "log emptied and restarted");
        Ok(())
    }

    async fn sync_dir(&self) -> StorageResult<()> {
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(io_error(|| format!("syncing {}", self.dir.display())))
    }

    /// The segment, position and first offset of the batch holding `offset`, where a
    /// truncation to `offset` cuts.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when reads keep showing a damaged batch; an I/O error.
    async fn cut_point(&mut self, offset: i64) -> StorageResult<(i64, u64, i64)> {
        let (base_offset, meta_size_bytes, index_floor) = if offset >= self.active.meta.base_offset
        {
            let meta = &self.active.meta;
            let floor = self.active.index.offset_index.floor(relative(meta, offset));
            (meta.base_offset, meta.size_bytes, floor)
        } else {
            let (&base_offset, meta) = self
                .closed
                .range(..=offset)
                .next_back()
                .expect("a closed segment holds every offset below the active one");
            let (base_offset, size_bytes) = (base_offset, meta.size_bytes);
            let meta = *meta;
            let handle = self.closed_handle(base_offset).await?;
            let floor = handle.index.floor(relative(&meta, offset));
            (base_offset, size_bytes, floor)
        };
        let file = if base_offset == self.active.meta.base_offset {
            self.active.file.clone()
        } else {
            self.closed_handle(base_offset).await?.file.clone()
        };
        let path = SegmentPaths::new(&self.dir, base_offset).log;
        let start = index_floor.map_or(0, |entry| u64::from(entry.position));
        // The headers are checked as they are walked (each batch follows the last, within the
        // segment) and each batch's CRC, which makes a good read of it self-evident: a batch
        // that looks wrong is read again, at its own position, until a read passes, and is
        // damage only when reads keep showing the same wrong bytes (a byte flipped on the way
        // from the disk does not show the same way three times in a row), so the walk neither
        // poisons a sound log nor cuts in a wrong place. (It once walked again from the start
        // after each bad read; over a long segment most walks met another bad read, and now
        // and then one saw the same bad read twice and took it for damage: cluster simulation
        // seeds 1310 and 1639.)
        let look = async |position: u64, expected: Option<i64>| -> StorageResult<Looked> {
            let read = async |len: usize| {
                file.read_at(position, len)
                    .await
                    .map_err(io_error(|| format!("reading {}", path.display())))
            };
            let bytes = read(BATCH_HEADER_BYTES).await?;
            let header = match BatchHeader::parse(&bytes) {
                Ok(header) => header,
                Err(error) => return Ok(Looked::Wrong(error.to_string(), bytes.to_vec())),
            };
            if header.size_bytes() as u64 > meta_size_bytes - position {
                let reason = format!(
                    "a batch of {} bytes past the segment's end",
                    header.size_bytes()
                );
                return Ok(Looked::Wrong(reason, bytes.to_vec()));
            }
            // Every batch walked starts at or below `offset` (the walk starts at the index
            // floor of `offset` and stops at the batch holding it): a base offset above it
            // is a bad read of the first batch, whose base the walk cannot check against a
            // predecessor (cluster simulation seed 2035 cut "at" offset 386547056753).
            if header.base_offset < base_offset
                || header.base_offset > offset
                || expected.is_some_and(|next| header.base_offset != next)
                || header.last_offset_delta < 0
            {
                let reason = format!("base offset {} out of sequence", header.base_offset);
                return Ok(Looked::Wrong(reason, bytes.to_vec()));
            }
            // The whole batch, for its CRC: damage to its last offset delta would move the
            // cut. The CRC leaves the base offset and length out: both reads must agree on
            // them.
            let whole = read(header.size_bytes()).await?;
            if let Err(error) = super::batch::validate_stored(&whole) {
                return Ok(Looked::Wrong(error.to_string(), whole.to_vec()));
            }
            match BatchHeader::parse(&whole) {
                Ok(checked)
                    if (checked.base_offset, checked.batch_length)
                        == (header.base_offset, header.batch_length) =>
                {
                    Ok(Looked::Sound(checked))
                }
                _ => Ok(Looked::Wrong(
                    "two reads of a batch header disagree".to_owned(),
                    whole.to_vec(),
                )),
            }
        };
        let mut position = start;
        let mut expected: Option<i64> = None;
        while position < meta_size_bytes {
            let mut reads = 0;
            let mut last_wrong: Option<(Vec<u8>, u32)> = None;
            let header = loop {
                reads += 1;
                match look(position, expected).await? {
                    Looked::Sound(header) => break header,
                    Looked::Wrong(reason, view) => {
                        let in_a_row = match &last_wrong {
                            Some((seen, times)) if *seen == view => times + 1,
                            _ => 1,
                        };
                        if in_a_row >= SAME_WRONG_READS_FOR_DAMAGE || reads >= CUT_POINT_READS_MAX {
                            return Err(StorageError::Corrupt {
                                segment: path.clone(),
                                position,
                                reason,
                            });
                        }
                        last_wrong = Some((view, in_a_row));
                    }
                }
            };
            if header.next_offset() > offset {
                return Ok((base_offset, position, header.base_offset));
            }
            expected = Some(header.next_offset());
            position += header.size_bytes() as u64;
        }
        Err(StorageError::Corrupt {
            segment: path.clone(),
            position,
            reason: format!("no batch holds offset {offset}, below the log end"),
        })
    }

    /// Closes the file handles of a log replaced by a reopened one.
    async fn release_handles(self) {
        for handle in self.closed_handles {
            let _ = handle.file.close().await;
        }
        let _ = self.active.file.close().await;
    }
}
