//! [`PartitionFollower`]: the follower side of one partition's replication, as a sans-IO state
//! machine.
//!
//! # Calling protocol
//! The driver creates a follower when the metadata names another broker as the partition's
//! leader, then loops:
//!
//! 1. [`PartitionFollower::next_fetch`] says what to put in the Fetch it sends the leader (the
//!    fetch offset is the local log end, the last fetched epoch the newest in the local leader
//!    epoch cache);
//! 2. it hands the leader's answer to one of [`PartitionFollower::records_appended`] (after
//!    appending the records, offsets unchanged, to the local log),
//!    [`PartitionFollower::diverged`] (which returns the offset to truncate the local log to)
//!    or [`PartitionFollower::out_of_range`];
//! 3. a leader error that means the metadata is stale (`FENCED_LEADER_EPOCH`,
//!    `NOT_LEADER_OR_FOLLOWER`) waits for newer metadata: a new leader or leader epoch makes a
//!    new `PartitionFollower`.
//!
//! A follower writes its log out (syncs it) before it reports a log end offset to the leader
//! in its next Fetch: Spate's writes go around the page cache, so unsynced data would not
//! survive the process, and the leader counts what a follower reports toward `acks=all`.
//!
//! # Truncation (KIP-101, KIP-279)
//! The leader compares the follower's last fetched epoch with its own epoch cache and, when
//! the logs diverge, answers with the largest epoch it has at or below that one and where it
//! ends. The follower cuts its log there, or, when its own log ends that epoch earlier, or the
//! leader's epoch is one the follower never had, at the end of its own matching epoch; the
//! next Fetch then carries an older last fetched epoch and the leader checks again, until the
//! two logs agree up to the fetch offset.

use super::epoch_cache::{EpochEnd, LeaderEpochCache};
use super::BrokerId;

/// What to send in the next Fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPosition {
    /// The local log end offset.
    pub fetch_offset: i64,
    /// The newest epoch in the local log, if any.
    pub last_fetched_epoch: Option<i32>,
    /// The leader epoch this follower follows.
    pub current_leader_epoch: i32,
}

/// What to do with the local log after the leader said its offsets are out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRangeAction {
    /// Cut the log to this offset (the leader's log is shorter: only after an unclean
    /// election).
    TruncateTo(i64),
    /// Empty the log and start it at this offset (the leader's log starts later: retention
    /// removed what the follower still needs).
    StartAt(i64),
    /// Keep the log and fetch again from its end: it lies within the leader's log after all
    /// (the leader's log moved between its answer and its range, as Kafka's
    /// `fetchOffsetAndTruncate` allows for).
    Retry,
}

/// The follower of one partition. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFollower {
    leader: BrokerId,
    leader_epoch: i32,
    high_watermark: i64,
}

impl PartitionFollower {
    /// Follows `leader` at `leader_epoch`, with the local high watermark at `high_watermark`.
    pub fn new(leader: BrokerId, leader_epoch: i32, high_watermark: i64) -> PartitionFollower {
        PartitionFollower {
            leader,
            leader_epoch,
            high_watermark,
        }
    }

    /// The broker it fetches from.
    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    /// The leader epoch it follows.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// The local high watermark: the leader's, capped at the local log end.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// What to send in the next Fetch.
    pub fn next_fetch(&self, log_end_offset: i64, epochs: &LeaderEpochCache) -> FetchPosition {
        FetchPosition {
            fetch_offset: log_end_offset,
            last_fetched_epoch: epochs.latest_epoch(),
            current_leader_epoch: self.leader_epoch,
        }
    }

    /// The leader's records were appended (or there were none): the local log now ends at
    /// `log_end_offset` and the leader's high watermark is `leader_high_watermark`. Returns the
    /// new local high watermark.
    pub fn records_appended(&mut self, log_end_offset: i64, leader_high_watermark: i64) -> i64 {
        self.high_watermark = leader_high_watermark.min(log_end_offset);
        self.high_watermark
    }

    /// The leader answered with a diverging epoch. Returns the offset to truncate the local log
    /// to (at most `log_end_offset`); the local high watermark drops with it if needed.
    pub fn diverged(
        &mut self,
        diverging: EpochEnd,
        epochs: &LeaderEpochCache,
        log_end_offset: i64,
    ) -> i64 {
        let offset = truncation_offset(diverging, epochs, log_end_offset, self.high_watermark);
        self.high_watermark = self.high_watermark.min(offset);
        offset
    }

    /// The leader refused the fetch offset as out of range; its log spans
    /// `leader_log_start_offset..leader_log_end_offset`.
    pub fn out_of_range(
        &mut self,
        log_end_offset: i64,
        leader_log_start_offset: i64,
        leader_log_end_offset: i64,
    ) -> OutOfRangeAction {
        if log_end_offset > leader_log_end_offset {
            self.high_watermark = self.high_watermark.min(leader_log_end_offset);
            OutOfRangeAction::TruncateTo(leader_log_end_offset)
        } else if log_end_offset < leader_log_start_offset {
            self.high_watermark = self.high_watermark.max(leader_log_start_offset);
            OutOfRangeAction::StartAt(leader_log_start_offset)
        } else {
            OutOfRangeAction::Retry
        }
    }
}

/// Where a follower whose log ends at `log_end_offset` cuts it, given the leader's
/// `diverging` answer (Kafka's `AbstractFetcherThread.getOffsetTruncationState`):
/// - the leader knows no epoch at or below ours: fall back to the high watermark (everything
///   below it was replicated to the ISR the leader came from);
/// - we know no epoch at or below the leader's answer: cut at the leader's end offset;
/// - our largest epoch at or below the leader's is another one: cut at its end, and the next
///   fetch asks again with it (KIP-279);
/// - the same epoch: cut where the shorter of the two ends.
pub fn truncation_offset(
    diverging: EpochEnd,
    epochs: &LeaderEpochCache,
    log_end_offset: i64,
    high_watermark: i64,
) -> i64 {
    if diverging.is_undefined() {
        return high_watermark.min(log_end_offset);
    }
    let local = epochs.end_offset_for(diverging.epoch, log_end_offset);
    let offset = if local.is_undefined() {
        diverging.end_offset
    } else if local.epoch != diverging.epoch {
        local.end_offset
    } else {
        diverging.end_offset.min(local.end_offset)
    };
    offset.min(log_end_offset)
}
