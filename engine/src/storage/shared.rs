//! [`SharedLog`]: a partition log used by many tasks of one core at once, with group commit.
//!
//! Appends take the log for the time of their write only. A caller that needs durability then
//! waits in [`SharedLog::wait_durable`]: one waiter at a time runs the fsync, without holding
//! the log, while others keep appending; when it completes, every waiter whose records it
//! covered returns without an fsync of its own. Sixteen concurrent appenders thus share a
//! handful of fsyncs instead of paying sixteen.

use async_lock::Mutex;
use bytes::BytesMut;

use super::backend::{Storage, StorageFile};
use super::compaction::{CleanReport, CleanRequest, Pacer};
use super::error::{StorageError, StorageResult};
use super::log::{AppendInfo, Fetched, PartitionLog};
use super::roll_finish::Installed;
use super::verification::Verification;

/// Most times [`SharedLog::finish_rolls`] starts a finish over in one call.
pub const ROLL_FINISH_ATTEMPTS: u32 = 3;

/// Whether an append returns before or after its records are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Return once written; the flush policy decides when to sync.
    Written,
    /// Return once synced (group commit).
    Synced,
}

/// What [`SharedLog::append_if`] appends.
#[derive(Debug)]
pub enum Appended {
    /// A producer's batches ([`PartitionLog::append_verified`]), with what to check of
    /// KIP-890 verification.
    Records(BytesMut, Verification),
    /// A transaction marker ([`PartitionLog::append_marker`]).
    Marker(Marker),
}

/// A transaction marker to append: the end of a producer's transaction, written for its
/// coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The producer whose transaction ends.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
    /// The epoch of the coordinator writing it.
    pub coordinator_epoch: i32,
    /// Commit (else abort).
    pub commit: bool,
}

/// A [`PartitionLog`] shared by the tasks of one core. See the module docs.
#[derive(Debug)]
pub struct SharedLog<S: Storage> {
    log: Mutex<PartitionLog<S>>,
    sync_turn: Mutex<()>,
    finish_turn: Mutex<()>,
}

impl<S: Storage> SharedLog<S> {
    /// Wraps an open log.
    pub fn new(log: PartitionLog<S>) -> SharedLog<S> {
        SharedLog {
            log: Mutex::new(log),
            sync_turn: Mutex::new(()),
            finish_turn: Mutex::new(()),
        }
    }

    /// Appends, then waits for durability if asked or if the flush policy calls for a sync.
    ///
    /// # Errors
    /// As [`PartitionLog::append`] and [`PartitionLog::complete_sync`].
    pub async fn append(
        &self,
        records: BytesMut,
        partition_leader_epoch: i32,
        now_ms: i64,
        durability: Durability,
    ) -> StorageResult<AppendInfo> {
        let appended = self
            .append_if(
                Appended::Records(records, Verification::Unchecked),
                now_ms,
                durability,
                || Some(partition_leader_epoch),
                |_| {},
            )
            .await?;
        Ok(appended.expect("the condition always holds"))
    }

    /// As [`SharedLog::append`], on a condition checked while the log is held, so that no
    /// truncation or change of leadership can come between the check and the write:
    /// `leader_epoch_if_allowed` gives the leader epoch to stamp the batches with, or `None`
    /// to append nothing (the result is then `Ok(None)`). `on_appended` sees the append
    /// before the log is released, so that what it records follows the log's order.
    ///
    /// # Errors
    /// As [`SharedLog::append`].
    pub async fn append_if(
        &self,
        appended: Appended,
        now_ms: i64,
        durability: Durability,
        leader_epoch_if_allowed: impl FnOnce() -> Option<i32>,
        on_appended: impl FnOnce(&AppendInfo),
    ) -> StorageResult<Option<AppendInfo>> {
        let (info, generation) = {
            let mut log = self.log.lock().await;
            let Some(partition_leader_epoch) = leader_epoch_if_allowed() else {
                return Ok(None);
            };
            let info = match appended {
                Appended::Records(records, verification) => {
                    log.append_verified(records, partition_leader_epoch, now_ms, verification)
                        .await?
                }
                Appended::Marker(marker) => {
                    log.append_marker(
                        marker.producer_id,
                        marker.producer_epoch,
                        marker.coordinator_epoch,
                        marker.commit,
                        partition_leader_epoch,
                        now_ms,
                    )
                    .await?
                    .0
                }
            };
            on_appended(&info);
            (info, log.generation)
        };
        if durability == Durability::Synced || info.sync_due {
            self.wait_until_durable(info.last_offset + 1, Some(generation), now_ms)
                .await?;
        }
        Ok(Some(info))
    }

    /// Returns once every offset below `offset` is durable, running an fsync if no other
    /// waiter's fsync covers it.
    ///
    /// # Errors
    /// The fsync's error, after which the log is poisoned; [`StorageError::Truncated`] when
    /// the log was cut below `offset` meanwhile.
    pub async fn wait_durable(&self, offset: i64, now_ms: i64) -> StorageResult<()> {
        self.wait_until_durable(offset, None, now_ms).await
    }

    /// As [`SharedLog::wait_durable`]; with `generation`, the records waited for were
    /// appended in that generation of the log, and a truncation since means they are gone
    /// even if the log has grown past `offset` again.
    async fn wait_until_durable(
        &self,
        offset: i64,
        generation: Option<u64>,
        now_ms: i64,
    ) -> StorageResult<()> {
        let reached = |log: &PartitionLog<S>| -> StorageResult<bool> {
            let truncated = generation.is_some_and(|generation| generation != log.generation);
            if truncated || offset > log.log_end_offset() {
                return Err(StorageError::Truncated {
                    offset,
                    log_end_offset: log.log_end_offset(),
                });
            }
            Ok(log.durable_offset() >= offset)
        };
        loop {
            if reached(&*self.log.lock().await)? {
                return Ok(());
            }
            let _turn = self.sync_turn.lock().await;
            // The previous holder's fsync may have covered this offset.
            let ticket = {
                let log = self.log.lock().await;
                if reached(&log)? {
                    return Ok(());
                }
                log.begin_sync()?
            };
            let result = ticket.run().await;
            self.log
                .lock()
                .await
                .complete_sync(ticket, result, now_ms)?;
        }
    }

    /// Whether [`SharedLog::finish_rolls`] has work: some roll is unfinished and the log is
    /// not poisoned (a poisoned log reports its failure to every append already).
    pub async fn has_rolls_to_finish(&self) -> bool {
        let log = self.log.lock().await;
        log.has_unfinished_rolls() && !log.is_poisoned()
    }

    /// Finishes the unfinished segment rolls (see [`super::roll_finish`]), holding the log
    /// only to check and rename: appends and reads go on during the fsyncs. One caller at a
    /// time; a finish that the log outran (a truncation, a checkpoint written meanwhile) is
    /// started over, at most [`ROLL_FINISH_ATTEMPTS`] times per call.
    ///
    /// # Errors
    /// An I/O error, which poisons the log.
    pub async fn finish_rolls(&self) -> StorageResult<()> {
        let _turn = self.finish_turn.lock().await;
        let mut attempts = 0;
        while attempts < ROLL_FINISH_ATTEMPTS {
            let Some(mut finish) = self.log.lock().await.begin_roll_finish()? else {
                return Ok(());
            };
            loop {
                let staged = finish.stage().await;
                let installed = self
                    .log
                    .lock()
                    .await
                    .install_roll_finish(finish, staged)
                    .await?;
                match installed {
                    Installed::Next(next) => finish = next,
                    Installed::Finished(finished) => {
                        if let Err(source) = finished.settle().await {
                            let mut log = self.log.lock().await;
                            let error = StorageError::io(
                                format!("syncing {}", log.dir().display()),
                                source,
                            );
                            return Err(log.poison(error));
                        }
                        break;
                    }
                    Installed::Stale => {
                        attempts += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads, as [`PartitionLog::read`].
    ///
    /// # Errors
    /// As [`PartitionLog::read`].
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        limit_offset: Option<i64>,
    ) -> StorageResult<Fetched<<S::File as StorageFile>::Buf>> {
        self.log
            .lock()
            .await
            .read(offset, max_bytes, limit_offset)
            .await
    }

    /// Runs one cleaner pass ([`PartitionLog::clean`]) holding the log only to plan it and to
    /// swap the cleaned segments in: appends and reads go on while it reads and writes.
    ///
    /// # Errors
    /// As [`PartitionLog::clean`].
    pub async fn clean(
        &self,
        request: &CleanRequest,
        pacer: &mut impl Pacer,
    ) -> StorageResult<Option<CleanReport>> {
        let plan = self.log.lock().await.plan_clean(request).await?;
        let Some(plan) = plan else {
            return Ok(None);
        };
        let output = plan.execute(pacer).await?;
        self.log
            .lock()
            .await
            .finish_clean(plan, output)
            .await
            .map(Some)
    }

    /// Runs `f` with exclusive access to the log, for everything else.
    pub async fn with_log<T>(&self, f: impl AsyncFnOnce(&mut PartitionLog<S>) -> T) -> T {
        let mut log = self.log.lock().await;
        f(&mut log).await
    }

    /// Unwraps the log, for closing it.
    pub fn into_inner(self) -> PartitionLog<S> {
        self.log.into_inner()
    }
}
