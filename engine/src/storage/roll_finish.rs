//! Finishing a segment roll without holding the log.
//!
//! A roll ([`PartitionLog::roll`]) does on the append path only what the next append needs:
//! it cuts the closed segment's reserved space and creates the next segment's file. The rest
//! would take about ten fsyncs, 100 to 330 ms on a cloud disk, during which every append to
//! the partition would wait. It is done later, by [`RollFinish`], holding the log only for
//! short checks and renames:
//!
//! 1. **Seal** (unless a sync for a durability waiter did it first, see
//!    [`SyncTicket`](super::SyncTicket)): fsync the closed segment, then the directory, so the
//!    new segment's file is there after a crash. Only then may offsets past the closed segment
//!    be counted durable.
//! 2. **Stage** the closed segment's offset and time indexes, a producer state snapshot taken at
//!    the roll, and the leader epoch cache if it changed: each written to `<name>.roll.tmp`
//!    and synced.
//! 3. Under the log, **install** them by renaming, if the log was neither truncated nor had its
//!    checkpoint, epoch cache or producer snapshots written meanwhile (else the staged files
//!    are dropped and the finish starts over); sync the directory.
//! 4. Stage the checkpoint with the roll's end as the recovery point, install it the same way,
//!    and sync the directory.
//!
//! Until then the roll is *unfinished*: its segment's index lives in memory, retention and the
//! cleaner leave it alone (it is above the recovery point), and a crash recovers it as any
//! segment above the recovery point, walked batch by batch, its lost tail cut together with
//! the segments after it. [`PartitionLog::checkpoint`] finishes every unfinished roll while
//! holding the log.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::debug;

use super::backend::{OpenMode, Storage, StorageFile};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use super::error::{StorageError, StorageResult};
use super::log::{remove_if_present, PartitionLog};
use super::producer_snapshots::snapshot_name;
use super::recovery::IndexBuilder;
use super::segment::{SegmentMeta, SegmentPaths};
use crate::replication::epoch_cache::{LeaderEpochCache, LEADER_EPOCH_FILE_NAME};

/// Suffix of the files a roll finish stages; recovery removes every `.tmp` file.
const STAGED_SUFFIX: &str = ".roll.tmp";

/// A closed segment whose roll is not finished. See the module docs.
#[derive(Debug)]
pub(super) struct UnfinishedRoll<F> {
    pub(super) meta: SegmentMeta,
    pub(super) paths: SegmentPaths,
    /// The closed segment's file.
    pub(super) file: F,
    /// Its indexes.
    pub(super) index: IndexBuilder,
    /// The producer state at the roll, encoded as a snapshot at the roll's end offset;
    /// `None` when the log has no producer state and no snapshot file.
    pub(super) producer_snapshot: Option<Bytes>,
    /// The segment and then the directory were synced after the roll.
    pub(super) sealed: bool,
}

/// Where a [`RollFinish`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Seal, stage and install the index files, producer snapshot and epoch cache.
    Files,
    /// Stage and install the checkpoint.
    Checkpoint,
}

/// What [`PartitionLog::install_roll_finish`] did.
#[derive(Debug)]
pub enum Installed<S: Storage> {
    /// A step remains: [`RollFinish::stage`] it, then install it.
    Next(RollFinish<S>),
    /// The roll is finished; [`RollFinish::settle`] makes the last rename durable.
    Finished(RollFinish<S>),
    /// The log changed while the files were staged; they were dropped, and the finish starts
    /// over from [`PartitionLog::begin_roll_finish`].
    Stale,
}

/// The background finish of the oldest unfinished roll, taken from the log by
/// [`PartitionLog::begin_roll_finish`]. Run [`RollFinish::stage`] without the log, then
/// [`PartitionLog::install_roll_finish`] with it; repeat while it hands the finish back.
#[derive(Debug)]
pub struct RollFinish<S: Storage> {
    storage: S,
    dir: PathBuf,
    step: Step,
    /// Base offset of the closed segment.
    base_offset: i64,
    /// Its end: the recovery point once finished.
    end_offset: i64,
    /// The log's generation and metadata write count when the finish began: if either moved
    /// the staged files describe a log that is gone.
    generation: u64,
    metadata_writes: u64,
    /// The closed segment's file, when the roll is not sealed yet.
    seal: Option<S::File>,
    /// Final paths and contents of the files of the current step.
    files: Vec<(PathBuf, Bytes)>,
    /// Whether `files` holds a producer snapshot.
    writes_producer_snapshot: bool,
    /// The epoch cache `files` holds, if it holds one.
    epochs: Option<LeaderEpochCache>,
    /// The checkpoint to write at the second step.
    checkpoint: Checkpoint,
}

fn staged_path(path: &Path) -> PathBuf {
    let mut staged = PathBuf::from(path);
    staged.as_mut_os_string().push(STAGED_SUFFIX);
    staged
}

impl<S: Storage> RollFinish<S> {
    /// Runs the current step's I/O: seals the roll if needed, syncs the directory after the
    /// previous step's renames, and writes and syncs the staged files.
    ///
    /// # Errors
    /// An I/O error; pass it to [`PartitionLog::install_roll_finish`], which poisons the log.
    pub async fn stage(&self) -> io::Result<()> {
        if let Some(file) = &self.seal {
            file.sync().await?;
        }
        if self.seal.is_some() || self.step == Step::Checkpoint {
            self.storage.sync_dir(&self.dir).await?;
        }
        for (path, data) in &self.files {
            let file = self
                .storage
                .open(&staged_path(path), OpenMode::CreateNew)
                .await?;
            file.write_at(0, data).await?;
            file.sync().await?;
            file.close().await?;
        }
        Ok(())
    }

    /// Syncs the directory after the last step's rename. Without it the checkpoint could
    /// be found older after a crash, which only makes recovery walk more.
    ///
    /// # Errors
    /// An I/O error.
    pub async fn settle(&self) -> io::Result<()> {
        self.storage.sync_dir(&self.dir).await
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Whether some roll is not finished yet.
    pub fn has_unfinished_rolls(&self) -> bool {
        !self.unfinished_rolls.is_empty()
    }

    pub(super) fn is_unfinished(&self, base_offset: i64) -> bool {
        self.unfinished_rolls
            .iter()
            .any(|roll| roll.meta.base_offset == base_offset)
    }

    /// Finishes every unfinished roll, holding the log throughout: the steps of
    /// [`SharedLog::finish_rolls`](super::SharedLog::finish_rolls), for a caller that has the
    /// log to itself (tests, tools).
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn finish_rolls(&mut self) -> StorageResult<()> {
        while let Some(mut finish) = self.begin_roll_finish()? {
            loop {
                let staged = finish.stage().await;
                match self.install_roll_finish(finish, staged).await? {
                    Installed::Next(next) => finish = next,
                    Installed::Finished(finished) => {
                        if let Err(source) = finished.settle().await {
                            let error =
                                StorageError::io(format!("syncing {}", self.dir.display()), source);
                            return Err(self.poison(error));
                        }
                        break;
                    }
                    Installed::Stale => unreachable!("nothing changes a log held throughout"),
                }
            }
        }
        Ok(())
    }

    /// Starts finishing the oldest unfinished roll, or returns `None` when every roll is
    /// finished. See the module docs.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after an earlier failure.
    pub fn begin_roll_finish(&self) -> StorageResult<Option<RollFinish<S>>> {
        self.check_poison()?;
        if self.retired {
            // The partition is being deleted; its directory may soon hold another log.
            return Ok(None);
        }
        let Some(roll) = self.unfinished_rolls.front() else {
            return Ok(None);
        };
        let end_offset = roll.meta.next_offset;
        let mut files: Vec<(PathBuf, Bytes)> = vec![
            (
                roll.paths.index.clone(),
                roll.index.offset_index.encode().freeze(),
            ),
            (
                roll.paths.time_index.clone(),
                roll.index.final_time_index(&roll.meta).encode().freeze(),
            ),
        ];
        if let Some(snapshot) = &roll.producer_snapshot {
            files.push((self.dir.join(snapshot_name(end_offset)), snapshot.clone()));
        }
        let epochs = self.epochs_dirty.then(|| self.epochs.clone());
        if let Some(epochs) = &epochs {
            files.push((
                self.dir.join(LEADER_EPOCH_FILE_NAME),
                Bytes::from(epochs.encode()),
            ));
        }
        Ok(Some(RollFinish {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            step: Step::Files,
            base_offset: roll.meta.base_offset,
            end_offset,
            generation: self.generation,
            metadata_writes: self.metadata_writes,
            seal: (!roll.sealed).then(|| roll.file.clone()),
            files,
            writes_producer_snapshot: roll.producer_snapshot.is_some(),
            epochs,
            checkpoint: Checkpoint {
                recovery_point: end_offset,
                log_start_offset: self.log_start_offset,
            },
        }))
    }

    /// Installs what `finish` staged, if the log is still the one it was staged for (not
    /// truncated, no metadata written meanwhile, not retired); see [`Installed`] for what
    /// comes next.
    ///
    /// # Errors
    /// The staging's I/O error, or an I/O error renaming, which poison the log.
    pub async fn install_roll_finish(
        &mut self,
        mut finish: RollFinish<S>,
        staged: io::Result<()>,
    ) -> StorageResult<Installed<S>> {
        if self.retired {
            // The partition is being deleted and its directory renamed away: whatever the
            // staging did there no longer matters, and nothing is installed.
            return Ok(Installed::Stale);
        }
        if let Err(source) = staged {
            let error = StorageError::io(
                format!("finishing the roll at offset {}", finish.end_offset),
                source,
            );
            return Err(self.poison(error));
        }
        self.check_poison()?;
        let current = finish.generation == self.generation
            && finish.metadata_writes == self.metadata_writes
            && self
                .unfinished_rolls
                .front()
                .is_some_and(|roll| roll.meta.base_offset == finish.base_offset);
        if !current {
            debug!(
                base_offset = finish.base_offset,
                "the log changed while a roll finish was staged; starting over"
            );
            for (path, _) in &finish.files {
                remove_if_present(&self.storage, &staged_path(path)).await?;
            }
            return Ok(Installed::Stale);
        }
        for (path, _) in &finish.files {
            if let Err(source) = self.storage.rename(&staged_path(path), path).await {
                let error = StorageError::io(format!("installing {}", path.display()), source);
                return Err(self.poison(error));
            }
        }
        match finish.step {
            Step::Files => {
                let roll = self.unfinished_rolls.front_mut().expect("checked current");
                if finish.seal.is_some() {
                    roll.sealed = true;
                }
                assert!(roll.sealed, "a finish seals the roll first");
                // The closed segment and every one before it are synced.
                if finish.end_offset > self.durable_offset {
                    self.durable_offset = finish.end_offset;
                    if self.durable_offset == self.log_end_offset() {
                        self.synced_records = self.appended_records;
                        self.synced_bytes = self.appended_bytes;
                    }
                }
                if let Some(epochs) = &finish.epochs {
                    self.epochs_dirty = self.epochs != *epochs;
                }
                if finish.writes_producer_snapshot {
                    if let Err(error) = self.producer_snapshot_written(finish.end_offset).await {
                        return Err(self.poison(error));
                    }
                }
                let checkpoint_path = self.dir.join(CHECKPOINT_FILE_NAME);
                finish.step = Step::Checkpoint;
                finish.seal = None;
                finish.epochs = None;
                finish.writes_producer_snapshot = false;
                finish.files = vec![(checkpoint_path, finish.checkpoint.encode().freeze())];
                Ok(Installed::Next(finish))
            }
            Step::Checkpoint => {
                assert!(self.recovery_point <= finish.end_offset);
                assert!(finish.end_offset <= self.durable_offset);
                self.recovery_point = finish.end_offset;
                self.unfinished_rolls.pop_front();
                debug!(
                    base_offset = finish.base_offset,
                    recovery_point = finish.end_offset,
                    "segment roll finished"
                );
                Ok(Installed::Finished(finish))
            }
        }
    }
}
