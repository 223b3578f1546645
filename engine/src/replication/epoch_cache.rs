//! [`LeaderEpochCache`]: which leader epoch wrote which offsets of a partition (KIP-101).
//!
//! Each replica keeps, for every leader epoch it has seen data from, the offset of that epoch's
//! first record. A new leader adds `(its epoch, its log end offset)` before it appends; a
//! follower adds an entry when it appends a batch carrying a newer epoch. The cache answers
//! [`LeaderEpochCache::end_offset_for`] ("where did epoch `e` end?"), which is how a follower
//! finds the point where its log and its leader's diverge after a failover.
//!
//! # Invariants (asserted)
//! Epochs strictly increase along the entries and start offsets never decrease; epochs and
//! offsets are non-negative.
//!
//! # File format
//! Kafka's `leader-epoch-checkpoint`, as text: a version line (`0`), a line with the number of
//! entries, then one `epoch start_offset` line per entry. See `docs/FORMAT.md`.

use thiserror::Error;

/// The epoch Kafka sends for "no epoch" (`UNDEFINED_EPOCH`).
pub const UNDEFINED_EPOCH: i32 = -1;
/// The offset Kafka sends for "no offset" (`UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// The file name of the cache in a partition directory, as Kafka names it.
pub const LEADER_EPOCH_FILE_NAME: &str = "leader-epoch-checkpoint";

/// One leader epoch and the offset of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// The offset of the first record written in that epoch.
    pub start_offset: i64,
}

/// An epoch and where it ends: the answer to OffsetForLeaderEpoch, and the diverging epoch of a
/// Fetch response. `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)` when the epoch is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The largest epoch at or below the one asked about.
    pub epoch: i32,
    /// The offset after that epoch's last record (the next epoch's start, or the log end).
    pub end_offset: i64,
}

impl EpochEnd {
    /// The "unknown epoch" answer.
    pub const UNDEFINED: EpochEnd = EpochEnd {
        epoch: UNDEFINED_EPOCH,
        end_offset: UNDEFINED_EPOCH_OFFSET,
    };

    /// Whether this is the "unknown epoch" answer.
    pub fn is_undefined(&self) -> bool {
        self.end_offset == UNDEFINED_EPOCH_OFFSET
    }
}

/// A damaged `leader-epoch-checkpoint` file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EpochCacheFileError {
    /// The file is not the text format described in the module docs.
    #[error("malformed leader epoch checkpoint: {0}")]
    Malformed(String),
    /// The entries break the cache's invariants (epochs not increasing, offsets decreasing).
    #[error("leader epoch checkpoint out of order: {0}")]
    OutOfOrder(String),
}

/// The leader epoch cache of one partition replica. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// An empty cache.
    pub fn new() -> LeaderEpochCache {
        LeaderEpochCache::default()
    }

    /// A cache holding `entries`, which must be in order.
    ///
    /// # Errors
    /// [`EpochCacheFileError::OutOfOrder`] when epochs do not strictly increase, start offsets
    /// decrease, or a value is negative.
    pub fn from_entries(entries: Vec<EpochEntry>) -> Result<LeaderEpochCache, EpochCacheFileError> {
        for (index, entry) in entries.iter().enumerate() {
            if entry.epoch < 0 || entry.start_offset < 0 {
                return Err(EpochCacheFileError::OutOfOrder(format!(
                    "negative entry {entry:?}"
                )));
            }
            if let Some(previous) = index.checked_sub(1).map(|index| entries[index]) {
                if entry.epoch <= previous.epoch || entry.start_offset < previous.start_offset {
                    return Err(EpochCacheFileError::OutOfOrder(format!(
                        "{entry:?} follows {previous:?}"
                    )));
                }
            }
        }
        Ok(LeaderEpochCache { entries })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest entry.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// The newest epoch, if any data was written under one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|entry| entry.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the cache changed.
    ///
    /// As Kafka's `LeaderEpochFileCache.assign`: an entry for the latest epoch at or after its
    /// recorded start changes nothing; otherwise every entry with an epoch at or above `epoch`,
    /// or a start offset at or above `start_offset`, is dropped (they were written by a replica
    /// whose log has since been truncated) and the new entry is added.
    ///
    /// # Panics
    /// When `epoch` or `start_offset` is negative.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        assert!(
            epoch >= 0 && start_offset >= 0,
            "leader epoch {epoch} at {start_offset}"
        );
        if let Some(latest) = self.latest() {
            if latest.epoch == epoch && start_offset >= latest.start_offset {
                return false;
            }
        }
        self.entries
            .retain(|entry| entry.epoch < epoch && entry.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.check_invariants();
        true
    }

    /// Where `requested_epoch` ended in a log whose end is `log_end_offset`, as Kafka's
    /// `LeaderEpochFileCache.endOffsetFor`:
    /// - the latest epoch ends at the log end;
    /// - an older epoch ends where the next newer epoch starts, and is reported as the largest
    ///   epoch at or below it (a replica may have skipped epochs);
    /// - an epoch older than every entry ends at the first entry's start;
    /// - an epoch newer than every entry, or [`UNDEFINED_EPOCH`], is unknown.
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> EpochEnd {
        if requested_epoch == UNDEFINED_EPOCH {
            return EpochEnd::UNDEFINED;
        }
        if self.latest_epoch() == Some(requested_epoch) {
            return EpochEnd {
                epoch: requested_epoch,
                end_offset: log_end_offset,
            };
        }
        let Some(higher) = self
            .entries
            .iter()
            .find(|entry| entry.epoch > requested_epoch)
        else {
            return EpochEnd::UNDEFINED;
        };
        let floor = self
            .entries
            .iter()
            .rev()
            .find(|entry| entry.epoch <= requested_epoch);
        EpochEnd {
            epoch: floor.map_or(requested_epoch, |floor| floor.epoch),
            end_offset: higher.start_offset,
        }
    }

    /// The epoch that wrote `offset`: the entry starting last at or before it; `None` before
    /// the first entry (offsets the cache does not cover).
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        let after = self
            .entries
            .partition_point(|entry| entry.start_offset <= offset);
        after.checked_sub(1).map(|index| self.entries[index].epoch)
    }

    /// Drops the entries of epochs that start at or after `end_offset`: the log was cut there.
    /// Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < end_offset);
        before != self.entries.len()
    }

    /// Forgets what lies before `start_offset` (retention or DeleteRecords moved the log
    /// start): the last epoch starting at or before it now starts there, older ones are
    /// dropped. Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let Some(last_before) = self
            .entries
            .iter()
            .rposition(|entry| entry.start_offset <= start_offset)
        else {
            return false;
        };
        let changed = last_before > 0 || self.entries[0].start_offset != start_offset;
        self.entries.drain(..last_before);
        self.entries[0].start_offset = start_offset;
        self.check_invariants();
        changed
    }

    /// The file's bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        text.into_bytes()
    }

    /// Parses the file's bytes.
    ///
    /// # Errors
    /// [`EpochCacheFileError`] when the file is damaged: the caller rebuilds the cache from
    /// the log's batches instead.
    pub fn decode(bytes: &[u8]) -> Result<LeaderEpochCache, EpochCacheFileError> {
        let malformed = |what: &str| EpochCacheFileError::Malformed(what.to_string());
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(malformed("unknown version"));
        }
        let count: usize = lines
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| malformed("no entry count"))?;
        let mut entries = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| malformed("fewer entries than counted"))?;
            let mut fields = line.split_whitespace();
            let (Some(epoch), Some(start_offset), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed(&format!("bad entry {line:?}")));
            };
            entries.push(EpochEntry {
                epoch: epoch
                    .parse()
                    .map_err(|_| malformed(&format!("bad epoch {epoch:?}")))?,
                start_offset: start_offset
                    .parse()
                    .map_err(|_| malformed(&format!("bad offset {start_offset:?}")))?,
            });
        }
        if lines.any(|line| !line.trim().is_empty()) {
            return Err(malformed("more entries than counted"));
        }
        LeaderEpochCache::from_entries(entries)
    }

    fn check_invariants(&self) {
        for pair in self.entries.windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch && pair[0].start_offset <= pair[1].start_offset,
                "leader epoch cache out of order: {:?}",
                self.entries
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        LeaderEpochCache::from_entries(
            entries
                .iter()
                .map(|&(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect(),
        )
        .unwrap()
    }

    fn end(epoch: i32, end_offset: i64) -> EpochEnd {
        EpochEnd { epoch, end_offset }
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let cache = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(
            cache.end_offset_for(4, 40),
            end(4, 40),
            "latest ends at the LEO"
        );
        assert_eq!(cache.end_offset_for(3, 40), end(3, 25));
        assert_eq!(
            cache.end_offset_for(2, 40),
            end(1, 10),
            "skipped epoch: its floor"
        );
        assert_eq!(cache.end_offset_for(1, 40), end(1, 10));
        assert_eq!(
            cache.end_offset_for(0, 40),
            end(0, 0),
            "older than all: first start"
        );
        assert_eq!(
            cache.end_offset_for(5, 40),
            EpochEnd::UNDEFINED,
            "newer than all"
        );
        assert_eq!(
            cache.end_offset_for(UNDEFINED_EPOCH, 40),
            EpochEnd::UNDEFINED
        );
        assert_eq!(
            LeaderEpochCache::new().end_offset_for(0, 0),
            EpochEnd::UNDEFINED
        );
    }

    #[test]
    fn the_epoch_at_an_offset_is_the_last_to_start_at_or_before_it() {
        let cache = cache(&[(1, 5), (3, 10), (4, 25)]);
        assert_eq!(cache.epoch_at(4), None, "before the first entry");
        assert_eq!(cache.epoch_at(5), Some(1));
        assert_eq!(cache.epoch_at(9), Some(1));
        assert_eq!(cache.epoch_at(10), Some(3));
        assert_eq!(cache.epoch_at(1_000), Some(4));
        assert_eq!(LeaderEpochCache::new().epoch_at(0), None);
    }

    #[test]
    fn assign_ignores_repeats_and_replaces_conflicting_entries() {
        let mut epochs = cache(&[(1, 0), (2, 10)]);
        assert!(!epochs.assign(2, 15), "same epoch later: nothing new");
        assert!(epochs.assign(3, 20));
        assert_eq!(epochs, cache(&[(1, 0), (2, 10), (3, 20)]));
        // A replica whose log was cut at 12 and then hears of epoch 4 starting there.
        assert!(epochs.assign(4, 12));
        assert_eq!(epochs, cache(&[(1, 0), (2, 10), (4, 12)]));
        // An older epoch at a lower offset wipes what came after it.
        assert!(epochs.assign(2, 5));
        assert_eq!(epochs, cache(&[(1, 0), (2, 5)]));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut epochs = cache(&[(1, 0), (2, 10), (3, 20)]);
        assert!(!epochs.truncate_from_end(25));
        assert!(epochs.truncate_from_end(20));
        assert_eq!(epochs, cache(&[(1, 0), (2, 10)]));
        assert!(epochs.truncate_from_start(12));
        assert_eq!(epochs, cache(&[(2, 12)]));
        assert!(!epochs.truncate_from_start(12));
        assert!(
            !epochs.truncate_from_start(3),
            "before the first entry: nothing to drop"
        );
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let epochs = cache(&[(0, 0), (7, 1234)]);
        let bytes = epochs.encode();
        assert_eq!(bytes, b"0\n2\n0 0\n7 1234\n");
        assert_eq!(LeaderEpochCache::decode(&bytes).unwrap(), epochs);
        for damaged in [
            &b"1\n0\n"[..],
            b"0\n2\n0 0\n",
            b"0\n1\n0 0\n5 5\n",
            b"0\n1\nx 0\n",
            b"0\n2\n3 0\n2 5\n",
            b"0\n1\n1 -4\n",
            b"\xff",
        ] {
            assert!(LeaderEpochCache::decode(damaged).is_err(), "{damaged:?}");
        }
    }
}
